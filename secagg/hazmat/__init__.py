"""Hazardous materials: the cryptographic building blocks of the protocol.

Everything here is easy to misuse: a reused PRG seed, an AEAD key used in both
directions, a Shamir share handed to the wrong party. The safe API is
:mod:`secagg.client` and :mod:`secagg.server`, which compose these pieces in the
order Bonawitz et al. 2017 (CCS, section 4) prescribe. Import from here only to
build or test a protocol, never to aggregate data directly.

Only :mod:`cryptography` provides primitives (X25519, Ed25519, HKDF-SHA256,
AES-CTR, AES-GCM). The protocol logic and Shamir sharing over a prime field are
this package's own.
"""
