"""A test harness that drives real client and server sessions in process.

It is deliberately separate from ``clients/harness/simulation.py`` so that tests can stop
at any point, tamper with any message and deliver it to any party.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from secagg.client import ClientSession
from secagg.config import GraphKind, ProtocolMode, RoundConfig, minimum_threshold
from secagg.errors import ProtocolAbort
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom
from secagg.messages import ClientMessage, ServerMessage, decode, encode
from secagg.server import ServerSession, ServerStage


@dataclass
class Round:
    config: RoundConfig
    identities: list[SigningKey]
    inputs: list[np.ndarray]
    clients: list[ClientSession]
    server: ServerSession
    pending: dict[int, ClientMessage] = field(default_factory=dict)

    def expected_sum(self, members: Iterable[int]) -> np.ndarray:
        ring = self.config.ring
        total = ring.zeros(self.config.dim)
        for member in members:
            np.add(total, self.inputs[member], out=total)
        return ring.reduce(total)


def make_round(
    participants: int,
    *,
    dim: int = 8,
    bits: int = 32,
    mode: ProtocolMode = ProtocolMode.ACTIVE,
    graph: GraphKind = GraphKind.FULL,
    degree: int | None = None,
    threshold: int | None = None,
    seed: int = 0,
) -> Round:
    source = DeterministicRandom.from_int(seed)
    identities = [SigningKey.generate(source) for _ in range(participants)]
    config = RoundConfig(
        round_id=source.random_bytes(16),
        identity_keys=tuple(key.public_bytes for key in identities),
        threshold=threshold if threshold is not None else minimum_threshold(mode, participants),
        dim=dim,
        bits=bits,
        mode=mode,
        graph=graph,
        degree=degree,
    )
    ring = config.ring
    inputs = []
    for _ in range(participants):
        vector = np.empty(dim, dtype=ring.dtype)
        source.fill(vector)
        inputs.append(ring.reduce(vector))
    clients = [
        ClientSession(
            config, member, identities[member], inputs[member], source=DeterministicRandom.from_int(seed * 1000 + member + 1)
        )
        for member in range(participants)
    ]
    return Round(config=config, identities=identities, inputs=inputs, clients=clients, server=ServerSession(config))


def start(round_: Round, *, skip: Iterable[int] = ()) -> None:
    """R0: every client not in ``skip`` produces AdvertiseKeys."""
    skipped = set(skip)
    for member, client in enumerate(round_.clients):
        message = client.start()
        if member not in skipped:
            round_.pending[member] = message


def collect(round_: Round) -> dict[int, ServerMessage]:
    """The server receives every pending message (through the wire encoding) and closes the stage."""
    for _member, message in sorted(round_.pending.items()):
        round_.server.receive_bytes(encode(message))
    round_.pending = {}
    return round_.server.advance()


def deliver(round_: Round, outbox: dict[int, ServerMessage], *, skip: Iterable[int] = ()) -> None:
    """Each addressed client not in ``skip`` processes its message; replies become pending."""
    skipped = set(skip)
    for member, message in sorted(outbox.items()):
        if member in skipped:
            continue
        round_.pending[member] = round_.clients[member].receive(decode(encode(message)))


ROUND_NUMBER = {
    ServerStage.ADVERTISE_KEYS: 0,
    ServerStage.SHARE_KEYS: 1,
    ServerStage.MASKED_INPUT_COLLECTION: 2,
    ServerStage.CONSISTENCY_CHECK: 3,
    ServerStage.UNMASKING: 4,
}


@dataclass
class Outcome:
    completed: bool
    abort: ProtocolAbort | None
    survivors: frozenset[int]
    result: np.ndarray | None


def run(round_: Round, *, drop: dict[int, Iterable[int]] | None = None) -> Outcome:
    """Run a whole round; ``drop[r]`` is the set of clients that stop answering in round r.

    A client that drops in round r sends nothing from round r on. Client-side aborts
    count as dropouts (an aborting client stops answering).
    """
    schedule = {r: set(members) for r, members in (drop or {}).items()}
    gone: set[int] = set(schedule.get(0, ()))
    start(round_, skip=gone)
    try:
        while True:
            outbox = collect(round_)
            if round_.server.stage is ServerStage.COMPLETED:
                return Outcome(True, None, round_.server.survivors, round_.server.result)
            gone |= schedule.get(ROUND_NUMBER[round_.server.stage], set())
            for member, message in sorted(outbox.items()):
                if member in gone:
                    continue
                try:
                    round_.pending[member] = round_.clients[member].receive(decode(encode(message)))
                except ProtocolAbort:
                    gone.add(member)
    except ProtocolAbort as abort:
        return Outcome(False, abort, frozenset(), None)


def advance_to(round_: Round, server_messages: int, *, drop: dict[int, Iterable[int]] | None = None) -> dict[int, ServerMessage]:
    """Run until the server has produced its ``server_messages``-th outbox (1 = KeyList), undelivered.

    ``drop[r]`` are clients that do not answer in round r (0 = never advertise).
    """
    schedule = {r: set(members) for r, members in (drop or {}).items()}
    gone = set(schedule.get(0, ()))
    start(round_, skip=gone)
    outbox = collect(round_)
    for _ in range(server_messages - 1):
        gone |= schedule.get(ROUND_NUMBER[round_.server.stage], set())
        deliver(round_, outbox, skip=gone)
        outbox = collect(round_)
    return outbox
