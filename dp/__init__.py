"""Differential privacy for secagg: example-level DP-SGD at each bank, participant-level
discrete noise in the ring, privacy accounting, the signed privacy ledger and the
auditor's report (docs/DESIGN.md, section 3).

Nothing imported by ``import dp`` pulls in torch: the server and the auditor's machine
do not install it. Training lives in :mod:`dp.training`, imported explicitly.
"""
