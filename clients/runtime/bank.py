"""The one-call library entry point for a bank: run a round over HTTP with a numpy vector.

::

    from clients.runtime.bank import run_bank_round
    outcome = run_bank_round(
        server="https://aggregator.example:8443", participant_id="bank-a",
        identity=load_identity_key(Path("bank.key")), round_id=round_id,
        update=ring_vector,                      # e.g. dp.mechanisms.distributed.encode_update(...)
        policy=ClientPolicy.load(Path("policy.toml")), state_dir=Path("/var/lib/secagg"),
    )
    outcome.result.vector                        # the round's sum in Z_2^b

An unsigned vector is taken as already encoded in the round's ring (the output of
the distributed-DP pipeline); a float vector is encoded with the stochastic
fixed-point encoder and needs ``clip`` (see :mod:`clients.runtime.inputs`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clients.runtime.errors import InputFileError
from clients.runtime.http_transport import HttpTransport
from clients.runtime.inputs import ClientInput, RealVectorInput, RingVectorInput
from clients.runtime.policy import ClientPolicy
from clients.runtime.retry import PollSchedule, RetryPolicy
from clients.runtime.runner import RoundEvent, RoundOutcome, run_round
from secagg.hazmat.keys import SigningKey


def client_input_from_vector(update: np.ndarray, *, clip: float | None = None, scale: float | None = None) -> ClientInput:
    """A ring input for unsigned vectors, a real input (needs ``clip``) for float vectors."""
    vector = np.asarray(update)
    if vector.dtype.kind == "u" and clip is None and scale is None:
        return RingVectorInput(vector)
    if vector.dtype.kind == "f":
        if clip is None:
            raise InputFileError("a float update needs clip (and optionally scale) to be encoded into the ring")
        return RealVectorInput(vector, clip=clip, scale=scale)
    raise InputFileError(f"the update must be an unsigned ring vector, or floats with clip; got {vector.dtype}")


def run_bank_round(
    *,
    server: str,
    participant_id: str,
    identity: SigningKey,
    round_id: str,
    update: np.ndarray,
    state_dir: Path,
    policy: ClientPolicy | None = None,
    clip: float | None = None,
    scale: float | None = None,
    ca_bundle: Path | None = None,
    retry: RetryPolicy = RetryPolicy(),
    poll: PollSchedule = PollSchedule(),
    on_event=None,
) -> RoundOutcome:
    """Run (or resume) this bank's side of ``round_id`` against ``server``; see :func:`clients.runtime.runner.run_round`."""
    client_input = client_input_from_vector(update, clip=clip, scale=scale)
    with HttpTransport(
        server, key_id=participant_id, identity=identity, retry=retry, verify=str(ca_bundle) if ca_bundle else True
    ) as transport:
        return run_round(
            transport=transport,
            round_id=round_id,
            identity=identity,
            client_input=client_input,
            policy=policy if policy is not None else ClientPolicy(),
            state_dir=state_dir,
            participant_id=participant_id,
            poll=poll,
            on_event=on_event,
        )


__all__ = ["RoundEvent", "RoundOutcome", "client_input_from_vector", "run_bank_round"]
