"""An in-memory server for the client's tests: a real ServerSession, the other members simulated.

:class:`FakeRoundServer` implements :class:`clients.runtime.transport.RoundTransport` for one
member (the client under test); the other members are real
:class:`~secagg.client.ClientSession` objects that answer as soon as a stage opens.
It records every request and every payload the client under test submitted, so tests
can assert that nothing was sent, and that no two different messages were ever sent
for one protocol round. It behaves as API.md section 5 prescribes: byte-identical
resubmission is ``already-accepted``, a different one ``duplicate-submission``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from clients.runtime.errors import ServerRefused
from clients.runtime.transport import (
    Accepted,
    Delivered,
    Delivery,
    Excluded,
    Pending,
    ResultDelivery,
    RoundAborted,
    RoundCompleted,
    RoundDescription,
    RoundResult,
    StageClosed,
    SubmitOutcome,
)
from secagg.client import ClientSession
from secagg.config import GraphKind, ProtocolMode, RoundConfig, minimum_threshold
from secagg.errors import MessageRejected, ProtocolAbort
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom
from secagg.messages import encode
from secagg.rounds import Round
from secagg.server import ServerSession, ServerStage

STAGE_OF_ROUND = {
    Round.ADVERTISE_KEYS: ServerStage.ADVERTISE_KEYS,
    Round.SHARE_KEYS: ServerStage.SHARE_KEYS,
    Round.MASKED_INPUT_COLLECTION: ServerStage.MASKED_INPUT_COLLECTION,
    Round.CONSISTENCY_CHECK: ServerStage.CONSISTENCY_CHECK,
    Round.UNMASKING: ServerStage.UNMASKING,
}


@dataclass
class FakeRoundServer:
    """One round with ``n`` members; ``member`` is the client under test (its key is ``identity``)."""

    n: int = 5
    dim: int = 16
    bits: int = 32
    mode: ProtocolMode = ProtocolMode.ACTIVE
    graph: GraphKind = GraphKind.FULL
    degree: int | None = None
    threshold: int | None = None
    member: int = 2
    seed: int = 7
    dp_policy: dict | None = None
    given_inputs: list[np.ndarray] | None = None
    endpoint: str = "memory://fake"
    calls: list[str] = field(default_factory=list)
    submissions: dict[Round, list[bytes]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        source = DeterministicRandom.from_int(self.seed)
        self.identities = [SigningKey.generate(source) for _ in range(self.n)]
        self.config = RoundConfig(
            round_id=source.random_bytes(16),
            identity_keys=tuple(key.public_bytes for key in self.identities),
            threshold=self.threshold if self.threshold is not None else minimum_threshold(self.mode, self.n),
            dim=self.dim,
            bits=self.bits,
            mode=self.mode,
            graph=self.graph,
            degree=self.degree,
        )
        self.round_id = self.config.round_id.hex()
        ring = self.config.ring
        self.inputs = []
        for _ in range(self.n):
            vector = np.empty(self.dim, dtype=ring.dtype)
            source.fill(vector)
            self.inputs.append(ring.reduce(vector))
        if self.given_inputs is not None:
            self.inputs = [np.asarray(vector) for vector in self.given_inputs]
        self.server = ServerSession(self.config)
        self.others = {
            index: ClientSession(
                self.config,
                index,
                self.identities[index],
                self.inputs[index],
                source=DeterministicRandom.from_int(self.seed * 100 + index),
            )
            for index in range(self.n)
            if index != self.member
        }
        for client in self.others.values():
            self.server.receive_bytes(encode(client.start()))
        self.accepted: dict[Round, bytes] = {}
        self.waiting_message: bytes | None = None
        self.tampered_next: bytes | None = None

    # ---------------------------------------------------------- transport
    @property
    def identity(self) -> SigningKey:
        return self.identities[self.member]

    def describe_round(self, round_id: str) -> RoundDescription:
        self.calls.append("describe")
        return RoundDescription(
            round_id=round_id,
            config=self.config,
            status=self.server.stage.value,
            is_open=self.server.stage not in (ServerStage.COMPLETED, ServerStage.ABORTED),
            member_ids=tuple(f"bank-{index}" for index in range(self.n)),
            dp_policy=self.dp_policy,
            server_identity="fake-server",
        )

    def submit(self, round_id: str, protocol_round: Round, payload: bytes) -> SubmitOutcome:
        self.calls.append(f"submit {protocol_round.key}")
        self.submissions[protocol_round].append(bytes(payload))
        if protocol_round in self.accepted:
            if self.accepted[protocol_round] == payload:
                return Accepted(already_accepted=True)
            raise ServerRefused(409, "duplicate-submission", "a different message for a stage already answered")
        if self.server.stage is ServerStage.ABORTED:
            return RoundAborted(str(self.server.abort_reason.value))
        if self.server.stage is not STAGE_OF_ROUND[protocol_round]:
            return StageClosed()
        if self.member not in self.server.expected_senders:
            return Excluded()
        try:
            self.server.receive_bytes(payload)
        except MessageRejected as exc:
            raise ServerRefused(422, exc.reason.value, exc.detail) from None
        self.accepted[protocol_round] = bytes(payload)
        self.waiting_message = None
        self._pump()
        return Accepted()

    def fetch(self, round_id: str, protocol_round: Round) -> Delivery:
        self.calls.append(f"fetch {protocol_round.key}")
        if self.server.stage is ServerStage.ABORTED:
            return RoundAborted(str(self.server.abort_reason.value))
        if self.server.stage is ServerStage.COMPLETED:
            return RoundCompleted()
        if self.waiting_message is not None:
            if self.tampered_next is not None:
                return Delivered(self.tampered_next)
            return Delivered(self.waiting_message)
        if self.member not in self.server.expected_senders and self.server.stage is not ServerStage.ADVERTISE_KEYS:
            return Excluded()
        return Pending(retry_after=0.0)

    def fetch_result(self, round_id: str) -> ResultDelivery:
        self.calls.append("result")
        if self.server.stage is ServerStage.COMPLETED:
            return RoundResult(vector=self.server.result, survivors=tuple(sorted(self.server.survivors)))
        if self.server.stage is ServerStage.ABORTED:
            return RoundAborted(str(self.server.abort_reason.value))
        return Pending(retry_after=0.0)

    # ------------------------------------------------------------- server
    def _pump(self) -> None:
        """Close every complete stage; the simulated members answer at once."""
        while self.server.stage_complete:
            try:
                outbox = self.server.advance()
            except ProtocolAbort:
                return
            for index, message in sorted(outbox.items()):
                if index == self.member:
                    self.waiting_message = encode(message)
                    continue
                reply = self.others[index].receive_bytes(encode(message))
                self.server.receive_bytes(encode(reply))

    def expected_sum(self) -> np.ndarray:
        ring = self.config.ring
        total = ring.zeros(self.dim)
        for index in sorted(self.server.survivors):
            np.add(total, self.inputs[index], out=total)
        return ring.reduce(total)
