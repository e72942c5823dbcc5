"""``secagg simulate --engine ray``: thousands of SecAgg+ clients as Ray actors, the server's chunk tasks on Ray.

The same experiment as :func:`clients.harness.simulation.run_simulation`, spread over a
Ray cluster (``--ray-address``, or a local one started here). The cohort is split into
one shard per CPU of the cluster; each shard is a Ray actor that holds its clients'
:class:`~secagg.client.ClientSession` objects and answers, in each round, every server
message addressed to its clients (in the clients' binary encoding both ways, as over a
network). The server runs in this process, exactly as in process: its session stops in
the mask-expansion stage and the masks are removed by chunk tasks that run as Ray remote
functions (the seeds put once in the object store). Clients that drop stop answering at
the chosen round.

Every client's identity key, input and randomness come from one seed per client, drawn
by this process from its source, so a run with ``--seed`` is reproducible. The report's
``server_peak_rss_bytes`` is this process's peak: the server's, since no client lives in it.
"""

from __future__ import annotations

import resource
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from clients.harness.simulation import (
    SimulationEngine,
    SimulationParameters,
    SimulationReport,
    chunked_unmasking,
    simulated_round,
    simulation_report,
)
from secagg.client import ClientSession
from secagg.config import RoundConfig
from secagg.encoding import Ring
from secagg.errors import ProtocolAbort
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom
from secagg.messages import MaskedInput, encode
from secagg.rounds import Round
from secagg.server import ServerSession, ServerStage
from secagg.server.chunk_tasks import MaskChunkTask, run_mask_chunk_task


def client_vector(seed: bytes, dim: int, bits: int) -> np.ndarray:
    ring = Ring(bits)
    vector = np.empty(dim, dtype=ring.dtype)
    DeterministicRandom(seed).fill(vector)
    return ring.reduce(vector)


class ClientShard:
    """A Ray actor holding some of the cohort's client sessions (one shard per CPU)."""

    def __init__(self, config: RoundConfig, members: dict[int, tuple[bytes, bytes, bytes]]) -> None:
        self.sessions: dict[int, ClientSession] = {}
        self.seconds: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.first: dict[int, bytes] = {}
        for member, (identity, input_seed, session_seed) in members.items():
            started = time.perf_counter()
            vector = client_vector(input_seed, config.dim, config.bits)
            session = ClientSession(
                config, member, SigningKey.from_private_bytes(identity), vector, source=DeterministicRandom(session_seed)
            )
            self.first[member] = encode(session.start())
            self.sessions[member] = session
            self.seconds[member][Round.ADVERTISE_KEYS.key] += time.perf_counter() - started

    def start(self) -> dict[int, bytes]:
        return self.first

    def answer(self, round_key: str, messages: dict[int, bytes]) -> tuple[dict[int, bytes], dict[int, str]]:
        """Each addressed client's reply, and the clients that refused (by reason)."""
        replies: dict[int, bytes] = {}
        refused: dict[int, str] = {}
        for member, payload in sorted(messages.items()):
            started = time.perf_counter()
            try:
                replies[member] = encode(self.sessions[member].receive_bytes(payload))
            except ProtocolAbort as refusal:
                refused[member] = refusal.reason.value
            self.seconds[member][round_key] += time.perf_counter() - started
        return replies, refused

    def timings(self) -> dict[int, dict[str, float]]:
        return {member: dict(rounds) for member, rounds in self.seconds.items()}


def _ray_mask_chunk(bits: int, start: int, stop: int, masks: Any) -> np.ndarray:
    return run_mask_chunk_task(MaskChunkTask(bits=bits, start=start, stop=stop, masks=tuple(masks)))


def run_ray_simulation(params: SimulationParameters, *, on_step: Callable[[str], None] | None = None) -> SimulationReport:
    """Run one round with the clients as Ray actors and the unmasking as Ray tasks; verify the sum."""
    try:
        import ray
    except ImportError:
        raise ValueError("--engine ray needs the optional extra: pip install 'secagg[ray]'") from None
    wall_started = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=params.ray_address, include_dashboard=False, log_to_driver=False)
    try:
        return _run(ray, params, on_step, wall_started)
    finally:
        if started_here:
            ray.shutdown()


def _run(ray: Any, params: SimulationParameters, on_step: Callable[[str], None] | None, wall_started: float) -> SimulationReport:
    source, identities, config, dropped = simulated_round(params)
    n, threshold = params.clients, config.threshold
    drop_at = Round.from_key(params.dropout_round.value).number
    input_seeds = [source.random_bytes(32) for _ in range(n)]
    session_seeds = [source.random_bytes(32) for _ in range(n)]

    shards_count = max(1, min(n, int(ray.cluster_resources().get("CPU", 1))))
    actor = ray.remote(num_cpus=0)(ClientShard)  # no CPU reserved: the chunk tasks need them all after R4
    membership = {member: member % shards_count for member in range(n)}
    shards = [
        actor.remote(
            config,
            {
                member: (identities[member].private_bytes, input_seeds[member], session_seeds[member])
                for member in range(n)
                if membership[member] == shard
            },
        )
        for shard in range(shards_count)
    ]
    ring = config.ring
    server = ServerSession(config, sum_masked_inputs=False, expand_masks=False)
    masked_sum = ring.zeros(params.dim)
    server_seconds: dict[str, float] = defaultdict(float)
    bytes_up: dict[int, int] = defaultdict(int)
    client_aborts: dict[int, str] = {}

    def deliver(member: int, payload: bytes, round_key: str) -> None:
        started = time.perf_counter()
        message = server.receive_bytes(payload)
        if isinstance(message, MaskedInput):
            np.add(masked_sum, message.masked_vector, out=masked_sum)
        server_seconds[round_key] += time.perf_counter() - started
        bytes_up[member] += len(payload)

    for first in ray.get([shard.start.remote() for shard in shards]):
        for member, payload in sorted(first.items()):
            if not (member in dropped and drop_at == 0):
                deliver(member, payload, Round.ADVERTISE_KEYS.key)
    if on_step:
        on_step(Round.ADVERTISE_KEYS.key)

    def remote_tasks(tasks: list[MaskChunkTask]) -> list[np.ndarray]:
        if not tasks:
            return []
        seeds = ray.put(tasks[0].masks)
        remote = ray.remote(num_cpus=1)(_ray_mask_chunk)
        return list(ray.get([remote.remote(task.bits, task.start, task.stop, seeds) for task in tasks]))

    abort_reason: str | None = None
    result: np.ndarray | None = None
    tasks_run = 0
    try:
        while server.stage is not ServerStage.MASK_EXPANSION:
            stage_round = server.stage.round
            assert stage_round is not None
            started = time.perf_counter()
            outbox = server.advance()
            if server.stage is ServerStage.MASK_EXPANSION:
                result, tasks_run = chunked_unmasking(server, masked_sum, params.chunk_bytes, remote_tasks)
            server_seconds[stage_round.key] += time.perf_counter() - started
            if server.stage is ServerStage.MASK_EXPANSION:
                break
            next_round = server.stage.round
            assert next_round is not None
            per_shard: list[dict[int, bytes]] = [{} for _ in shards]
            for member, message in outbox.items():
                per_shard[membership[member]][member] = encode(message)
            answers = ray.get(
                [shard.answer.remote(next_round.key, messages) for shard, messages in zip(shards, per_shard, strict=True)]
            )
            for replies, refused in answers:
                client_aborts.update(refused)
                for member, reply in sorted(replies.items()):
                    if member in dropped and next_round.number >= drop_at:
                        continue
                    deliver(member, reply, next_round.key)
            if on_step:
                on_step(next_round.key)
    except ProtocolAbort as exc:
        abort_reason = exc.reason.value

    verified = False
    if result is not None:
        expected = ring.zeros(params.dim)
        for member in server.survivors:
            np.add(expected, client_vector(input_seeds[member], params.dim, params.bits), out=expected)
        ring.reduce(expected)
        verified = bool(np.array_equal(result, expected))
    timings: dict[int, dict[str, float]] = {}
    for shard_timings in ray.get([shard.timings.remote() for shard in shards]):
        timings.update(shard_timings)
    return simulation_report(
        params, server=server, result=result, abort_reason=abort_reason, verified=verified, threshold=threshold,
        dropped=dropped, client_aborts=client_aborts, client_seconds=timings, server_seconds=server_seconds,
        bytes_up=bytes_up, unmask_tasks=tasks_run, engine=SimulationEngine.RAY.value,
        server_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        wall_seconds=time.perf_counter() - wall_started,
    )  # fmt: skip
