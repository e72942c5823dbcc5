"""Fault injection for the simulations, the demo and the tests: a transport that drops out.

Faults are injected by wrapping the transport a caller passes to the bank's code
(:func:`clients.runtime.runner.run_round`, :func:`clients.training.federated.train_federated`),
never by flags inside that code: the production runtime and training loop know nothing
about simulated failures. A dropped client looks to them exactly like a bank whose
network went away: :class:`SimulatedDropout` is a :class:`~clients.runtime.errors.ServerUnavailable`.
"""

from __future__ import annotations

from clients.runtime.errors import ServerUnavailable
from clients.runtime.transport import Delivery, ResultDelivery, RoundDescription, RoundTransport, SubmitOutcome
from secagg.rounds import Round


class SimulatedDropout(ServerUnavailable):
    """A simulated client that stops answering (its messages never leave)."""


class DroppingTransport:
    """Forwards to a transport, but never sends a message of ``drop_at`` or a later round.

    With ``in_round`` set, only the ``in_round``-th distinct round described through
    this transport (0-based, in the order the caller first asks about each) is affected;
    every other round passes through untouched.
    """

    def __init__(self, inner: RoundTransport, drop_at: Round | int, *, in_round: int | None = None) -> None:
        self._inner = inner
        self._drop_at = drop_at.number if isinstance(drop_at, Round) else int(drop_at)
        self._in_round = in_round
        self._rounds_seen: list[str] = []
        self.endpoint = inner.endpoint

    def _affected(self, round_id: str) -> bool:
        if self._in_round is None:
            return True
        return round_id in self._rounds_seen and self._rounds_seen.index(round_id) == self._in_round

    def describe_round(self, round_id: str) -> RoundDescription:
        if round_id not in self._rounds_seen:
            self._rounds_seen.append(round_id)
        return self._inner.describe_round(round_id)

    def submit(self, round_id: str, protocol_round: Round, payload: bytes) -> SubmitOutcome:
        if protocol_round.number >= self._drop_at and self._affected(round_id):
            raise SimulatedDropout(f"simulated dropout before sending {protocol_round.key}")
        return self._inner.submit(round_id, protocol_round, payload)

    def fetch(self, round_id: str, protocol_round: Round) -> Delivery:
        return self._inner.fetch(round_id, protocol_round)

    def fetch_result(self, round_id: str) -> ResultDelivery:
        return self._inner.fetch_result(round_id)
