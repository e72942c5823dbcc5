"""``python -m clients.harness.bank_process JOB.json``: one bank process of ``secagg demo``.

The job file holds a :class:`~clients.training.federated.BankJob` and, for the demo's
scripted dropout, an optional ``"dropout"`` object (``{"round_index": k,
"protocol_round": "R2"}``: stop sending from that protocol round on in the k-th
training round, 0-based). The bank's identity key is generated here and never leaves
this process; its public key is announced in the progress log for enrolment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from clients.harness.faults import DroppingTransport
from clients.runtime.keyfile import generate_key_file, load_identity_key
from clients.runtime.transport import RoundTransport
from clients.training.federated import PROGRESS_FILE, BankJob, ProgressLog, run_bank
from clients.training.tabular import TabularSchema
from secagg.rounds import Round


def main(argv: list[str]) -> int:
    value: dict[str, Any] = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    dropout = value.pop("dropout", None)
    job = BankJob.from_dict(value)
    progress = ProgressLog(job.work_dir / PROGRESS_FILE)

    def wrap(transport: RoundTransport) -> RoundTransport:
        if dropout is None:
            return transport
        # The statistics round comes first when the agreed schema has no means and scales yet.
        offset = 0 if TabularSchema.load(job.schema).is_standardized else 1
        return DroppingTransport(
            transport, Round.from_key(str(dropout["protocol_round"])), in_round=int(dropout["round_index"]) + offset
        )

    try:
        assert job.key is not None
        if not job.key.exists():
            generate_key_file(job.key)
        identity = load_identity_key(job.key)
        progress.write("ready", participant_id=job.participant_id, public_key=identity.public_bytes.hex())
        run_bank(job, identity=identity, wrap_transport=wrap)
    except Exception as error:  # reported to the operator, then the process fails
        progress.write("failed", error=f"{type(error).__name__}: {error}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
