"""``secagg simulate``: N in-process clients and the server through one whole round.

The driver is the reference for how a transport uses the sans-I/O sessions: every
message really goes through its binary encoding in both directions, clients that
"drop out" simply stop answering at the chosen round, and the unmasked result is
compared with the exact sum of the survivors' inputs. Timings are wall-clock
``perf_counter`` around each party's own computation (encoding included), so the
figures are what each party would spend, with no network.

The server unmasks as the service does: its session stops in the mask-expansion stage
and the masks are removed chunk by chunk (``--chunk-bytes``) by chunk tasks, on threads
of this process (``--engine local``) or on a Ray cluster (``--engine ray``, where the
clients run as Ray actors too: :mod:`clients.harness.ray_simulation`).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Annotated, Any

import numpy as np
import typer

from clients.runtime.errors import ClientError
from secagg.chunks import DEFAULT_CHUNK_BYTES, ChunkLayout
from secagg.client import ClientSession
from secagg.config import GraphKind, ProtocolMode, RoundConfig, minimum_threshold
from secagg.errors import ProtocolAbort
from secagg.graph import recommended_harary_degree
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom, RandomSource, SystemRandom
from secagg.messages import MaskedInput, encode
from secagg.rounds import KEYS, Round
from secagg.server import ServerSession, ServerStage
from secagg.server.chunk_tasks import MaskChunkTask, chunk_tasks, run_mask_chunk_task, unmask_chunk, unmasking_masks

DropoutRound = Enum("DropoutRound", {key: key for key in KEYS}, type=str)  # type: ignore[misc]
"""The round in which the dropped clients stop answering (a CLI choice: ``R0`` … ``R4``)."""
DEFAULT_DROPOUT_ROUND = DropoutRound(Round.MASKED_INPUT_COLLECTION.key)


class SimulationEngine(str, Enum):
    """Where the clients and the server's chunk tasks run."""

    LOCAL = "local"
    RAY = "ray"


class SimulationTransport(str, Enum):
    """How messages travel: function calls, or HTTP to a real server subprocess (clients/harness/http_simulation.py)."""

    IN_PROCESS = "in-process"
    HTTP = "http"


@dataclass(frozen=True, slots=True)
class SimulationParameters:
    clients: int
    dim: int
    dropout: float = 0.0
    dropout_round: DropoutRound = DEFAULT_DROPOUT_ROUND
    graph: GraphKind = GraphKind.FULL
    degree: int | None = None
    mode: ProtocolMode = ProtocolMode.ACTIVE
    bits: int = 32
    threshold: int | None = None
    seed: int | None = None
    mask_threads: int = 1
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    engine: SimulationEngine = SimulationEngine.LOCAL
    silence_seconds: float = 10.0
    """HTTP only: the deadlines' silence window of the stages where clients drop. The
    simulated banks take turns on the cores (:class:`clients.harness.http_simulation.TakingTurns`),
    so the silence a stage sees is one bank's computation, not all of theirs: the window
    must exceed one bank's longest computation in a stage, whatever the number of banks."""
    ray_address: str | None = None

    @property
    def dropped_count(self) -> int:
        return round(self.dropout * self.clients)


@dataclass(slots=True)
class SimulationReport:
    verified: bool
    outcome: str
    abort_reason: str | None
    clients: int
    dim: int
    bits: int
    mode: str
    graph: str
    degree: int | None
    threshold: int
    dropped: int
    dropout_round: str
    survivors: int
    client_aborts: dict[str, int]
    client_seconds_median: float
    client_seconds_max: float
    server_seconds: float
    server_unmask_seconds: float
    bytes_up_per_client: int
    upload_expansion: float
    client_round_seconds_median: dict[str, float] = field(default_factory=dict)
    server_round_seconds: dict[str, float] = field(default_factory=dict)
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    engine: str = SimulationEngine.LOCAL.value
    unmask_tasks: int = 0
    server_peak_rss_bytes: int | None = None
    """The server's own process: the server subprocess over HTTP; with clients in Ray workers, the driver;
    None in process with ``--engine local`` (the clients share the process)."""
    r4_completing_request_seconds: float | None = None
    """HTTP only: latency of the upload that completed R4."""
    wall_seconds: float = 0.0


def chunked_unmasking(
    server: ServerSession, masked_sum: np.ndarray, chunk_bytes: int, run_tasks: Callable[[list[MaskChunkTask]], list[np.ndarray]]
) -> tuple[np.ndarray, int]:
    """The result of a session stopped in the mask-expansion stage, unmasked chunk by chunk; and the task count."""
    config = server.config
    layout = ChunkLayout(config.dim, config.bits, chunk_bytes)
    tasks = chunk_tasks(layout, unmasking_masks(server.unmasking_plan))
    result = np.empty(config.dim, dtype=config.ring.dtype)
    for task, total in zip(tasks, run_tasks(tasks), strict=True):
        result[task.start : task.stop] = unmask_chunk(masked_sum[task.start : task.stop], total, config.bits)
    return result, len(tasks)


def thread_tasks(threads: int) -> Callable[[list[MaskChunkTask]], list[np.ndarray]]:
    """Chunk tasks on a thread pool of this process (AES-CTR and numpy release the GIL)."""

    def run(tasks: list[MaskChunkTask]) -> list[np.ndarray]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            return list(pool.map(run_mask_chunk_task, tasks))

    return run


def _round_key(stage: ServerStage) -> str:
    """The short round name (``"R2"``) of a running server stage."""
    protocol_round = stage.round
    assert protocol_round is not None, f"{stage.value} is not a running stage"
    return protocol_round.key


def run_simulation(
    params: SimulationParameters,
    *,
    on_step: Callable[[str], None] | None = None,
    recorder: Callable[[bytes | None], None] | None = None,
    on_config: Callable[[RoundConfig], None] | None = None,
) -> SimulationReport:
    """Run one round in process and check the result against the survivors' exact sum.

    ``recorder``, if given, sees every client message the server receives (as bytes)
    and ``None`` at every stage close, in order: enough to replay the server alone
    (the server is deterministic), which is how the benchmark measures its memory.
    """
    source, identities, config, dropped = simulated_round(params)
    n, threshold = params.clients, config.threshold
    if on_config:
        on_config(config)
    ring = config.ring
    drop_at = Round.from_key(params.dropout_round.value).number

    client_seconds: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    server_seconds: dict[str, float] = defaultdict(float)
    bytes_up: dict[int, int] = defaultdict(int)
    sessions: dict[int, ClientSession] = {}
    input_seeds = {member: source.random_bytes(32) for member in range(n)}
    server = ServerSession(config, sum_masked_inputs=False, expand_masks=False)
    masked_sum = ring.zeros(params.dim)
    client_aborts: dict[int, str] = {}

    def client_input(member: int) -> np.ndarray:
        vector = np.empty(params.dim, dtype=ring.dtype)
        DeterministicRandom(input_seeds[member]).fill(vector)
        return ring.reduce(vector)

    def deliver(member: int, payload: bytes, round_name: str) -> None:
        if recorder:
            recorder(payload)
        started = time.perf_counter()
        message = server.receive_bytes(payload)
        if isinstance(message, MaskedInput):
            np.add(masked_sum, message.masked_vector, out=masked_sum)
        server_seconds[round_name] += time.perf_counter() - started
        bytes_up[member] += len(payload)
        if on_step:
            on_step(round_name)

    for member in range(n):
        vector = client_input(member)
        started = time.perf_counter()
        sessions[member] = ClientSession(config, member, identities[member], vector, source=source)
        payload = encode(sessions[member].start())
        client_seconds[member][Round.ADVERTISE_KEYS.key] += time.perf_counter() - started
        del vector
        if not (member in dropped and drop_at == 0):
            deliver(member, payload, Round.ADVERTISE_KEYS.key)

    abort_reason: str | None = None
    result: np.ndarray | None = None
    tasks_run = 0
    try:
        while server.stage is not ServerStage.MASK_EXPANSION:
            stage_name = _round_key(server.stage)
            if recorder:
                recorder(None)
            started = time.perf_counter()
            outbox = server.advance()
            if server.stage is ServerStage.MASK_EXPANSION:
                result, tasks_run = chunked_unmasking(server, masked_sum, params.chunk_bytes, thread_tasks(params.mask_threads))
            server_seconds[stage_name] += time.perf_counter() - started
            if server.stage is ServerStage.MASK_EXPANSION:
                break
            next_round = _round_key(server.stage)
            for member, message in sorted(outbox.items()):
                payload = encode(message)
                started = time.perf_counter()
                try:
                    reply_bytes = encode(sessions[member].receive_bytes(payload))
                except ProtocolAbort as refusal:
                    client_aborts[member] = refusal.reason.value
                    continue
                finally:
                    client_seconds[member][next_round] += time.perf_counter() - started
                if member in dropped and int(next_round[1]) >= drop_at:
                    continue
                deliver(member, reply_bytes, next_round)
    except ProtocolAbort as exc:
        abort_reason = exc.reason.value

    verified = False
    if result is not None:
        expected_sum = ring.zeros(params.dim)
        for member in server.survivors:
            np.add(expected_sum, client_input(member), out=expected_sum)
        ring.reduce(expected_sum)
        verified = bool(np.array_equal(result, expected_sum))

    return simulation_report(
        params, server=server, result=result, abort_reason=abort_reason, verified=verified, threshold=threshold,
        dropped=dropped, client_aborts=client_aborts, client_seconds=client_seconds, server_seconds=server_seconds,
        bytes_up=bytes_up, unmask_tasks=tasks_run,
    )  # fmt: skip


def simulated_round(params: SimulationParameters) -> tuple[RandomSource, list[SigningKey], RoundConfig, frozenset[int]]:
    """The round's randomness, identities, config and dropped clients, drawn in this order from
    ``params.seed`` (or the OS CSPRNG), so that every engine simulates the same round for a seed."""
    source: RandomSource = DeterministicRandom.from_int(params.seed) if params.seed is not None else SystemRandom()
    n = params.clients
    threshold = params.threshold if params.threshold is not None else minimum_threshold(params.mode, n)
    identities = [SigningKey.generate(source) for _ in range(n)]
    config = RoundConfig(
        round_id=source.random_bytes(16),
        identity_keys=tuple(key.public_bytes for key in identities),
        threshold=threshold,
        dim=params.dim,
        bits=params.bits,
        mode=params.mode,
        graph=params.graph,
        degree=params.degree,
    )
    order = np.argsort(np.frombuffer(source.random_bytes(8 * n), dtype=np.uint64), kind="stable")
    return source, identities, config, frozenset(int(i) for i in order[: params.dropped_count])


def simulation_report(
    params: SimulationParameters,
    *,
    server: ServerSession,
    result: np.ndarray | None,
    abort_reason: str | None,
    verified: bool,
    threshold: int,
    dropped: frozenset[int],
    client_aborts: Mapping[int, str],
    client_seconds: Mapping[int, Mapping[str, float]],
    server_seconds: Mapping[str, float],
    bytes_up: Mapping[int, int] | Sequence[int],
    unmask_tasks: int,
    **engine_fields: Any,
) -> SimulationReport:
    """The report of one simulated round, from what each engine measured the same way."""
    n = params.clients
    totals = [sum(rounds.values()) for rounds in client_seconds.values()] or [0.0]
    rounds = sorted({name for per_client in client_seconds.values() for name in per_client})
    vector_bytes = params.dim * params.bits / 8
    upload = max((bytes_up[m] for m in range(n) if m not in dropped), default=0)
    return SimulationReport(
        verified=verified,
        outcome=ServerStage.COMPLETED.value if result is not None else server.stage.value,
        abort_reason=abort_reason,
        clients=n,
        dim=params.dim,
        bits=params.bits,
        mode=params.mode.value,
        graph=params.graph.value,
        degree=params.degree,
        threshold=threshold,
        dropped=len(dropped),
        dropout_round=params.dropout_round.value,
        survivors=len(server.survivors),
        client_aborts={reason: list(client_aborts.values()).count(reason) for reason in sorted(set(client_aborts.values()))},
        client_seconds_median=statistics.median(totals),
        client_seconds_max=max(totals),
        server_seconds=sum(server_seconds.values()),
        server_unmask_seconds=server_seconds.get(Round.UNMASKING.key, 0.0),
        bytes_up_per_client=upload,
        upload_expansion=upload / vector_bytes if vector_bytes else 0.0,
        client_round_seconds_median={
            name: statistics.median(per_client.get(name, 0.0) for per_client in client_seconds.values()) for name in rounds
        },
        server_round_seconds=dict(server_seconds),
        chunk_bytes=params.chunk_bytes,
        unmask_tasks=unmask_tasks,
        **engine_fields,
    )


def simulate_command(
    clients: Annotated[int, typer.Option("--clients", min=2, help="Number of clients N.")] = 10,
    dim: Annotated[int, typer.Option("--dim", min=1, help="Vector length D.")] = 1000,
    dropout: Annotated[float, typer.Option("--dropout", min=0.0, max=1.0, help="Fraction of clients that drop out.")] = 0.0,
    dropout_round: Annotated[
        DropoutRound, typer.Option("--dropout-round", help="Round in which the dropped clients stop answering.")
    ] = DEFAULT_DROPOUT_ROUND,
    graph: Annotated[GraphKind, typer.Option("--graph", help="Neighbour graph.")] = GraphKind.FULL,
    degree: Annotated[int | None, typer.Option("--degree", help="Harary degree k (even; default about 2 log2 N).")] = None,
    mode: Annotated[ProtocolMode, typer.Option("--mode", help="Adversary model.")] = ProtocolMode.ACTIVE,
    bits: Annotated[int, typer.Option("--bits", min=8, max=64, help="Ring Z_2^b.")] = 32,
    threshold: Annotated[int | None, typer.Option("--threshold", help="Threshold t (default: the mode's minimum).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Deterministic run (tests only; default: OS CSPRNG).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on the last line.")] = False,
    transport: Annotated[
        SimulationTransport, typer.Option("--transport", help="in-process, or http: a real server subprocess on loopback.")
    ] = SimulationTransport.IN_PROCESS,
    engine: Annotated[
        SimulationEngine,
        typer.Option("--engine", help="local, or ray: clients as Ray actors and the server's chunk tasks on Ray."),
    ] = SimulationEngine.LOCAL,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Ray cluster to use with --engine ray (default: start one here).")
    ] = None,
    chunk_bytes: Annotated[
        int, typer.Option("--chunk-bytes", min=1024, help="Bytes per chunk of the vectors (upload, storage, unmasking).")
    ] = DEFAULT_CHUNK_BYTES,
    silence_seconds: Annotated[
        float,
        typer.Option(
            "--silence-seconds",
            min=0.1,
            help="HTTP: a stage closes after this long without progress (dropped clients); must exceed one bank's computation in a stage (the simulated banks take turns on the cores).",
        ),
    ] = 10.0,
) -> None:
    """Run N in-process clients and the server through one whole round and verify the sum."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    if graph is GraphKind.HARARY and degree is None:
        degree = recommended_harary_degree(clients, mode, dropout_rate=min(dropout, 0.99), corrupt_fraction=0.0)
        if degree is None:
            errors_console = Console(stderr=True)
            errors_console.print("no Harary degree below N - 1 tolerates this dropout rate; using the full graph")
            graph = GraphKind.FULL
    params = SimulationParameters(
        clients=clients,
        dim=dim,
        dropout=dropout,
        dropout_round=dropout_round,
        graph=graph,
        degree=degree if graph is GraphKind.HARARY else None,
        mode=mode,
        bits=bits,
        threshold=threshold,
        seed=seed,
        mask_threads=os.cpu_count() or 1,
        chunk_bytes=chunk_bytes,
        engine=engine,
        silence_seconds=silence_seconds,
        ray_address=ray_address,
    )
    errors = Console(stderr=True)
    long_run = clients * dim >= 10_000_000
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=errors, transient=True, disable=not long_run
    ) as progress:
        task = progress.add_task("simulating", total=clients * 5)

        def step(round_name: str) -> None:
            progress.update(task, advance=1, description=f"round {round_name}")

        report: SimulationReport
        try:
            started = time.perf_counter()
            if transport is SimulationTransport.HTTP:
                from clients.harness.http_simulation import run_http_simulation

                report = run_http_simulation(params, on_step=step)
            elif engine is SimulationEngine.RAY:
                from clients.harness.ray_simulation import run_ray_simulation

                report = run_ray_simulation(params, on_step=step)
            else:
                report = run_simulation(params, on_step=step)
            report.wall_seconds = report.wall_seconds or time.perf_counter() - started
        except ValueError as exc:
            errors.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(code=2) from None
        except ClientError as exc:
            errors.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(code=exc.exit_code) from None

    out = Console(file=sys.stdout, width=100)
    table = Table(title=f"secagg simulate: N={clients} D={dim} b={bits} {mode.value} {graph.value}")
    table.add_column("round")
    table.add_column("client median (s)", justify="right")
    table.add_column("server (s)", justify="right")
    for name in KEYS:
        if name in report.client_round_seconds_median or name in report.server_round_seconds:
            table.add_row(
                name,
                f"{report.client_round_seconds_median.get(name, 0.0):.4f}",
                f"{report.server_round_seconds.get(name, 0.0):.4f}",
            )
    table.add_row("total", f"{report.client_seconds_median:.4f}", f"{report.server_seconds:.4f}")
    out.print(table)
    verdict = (
        "[green]verified[/green]" if report.verified else f"[red]NOT verified[/red] ({report.outcome}, {report.abort_reason})"
    )
    out.print(
        f"{verdict}: {report.survivors} survivors, {report.dropped} dropped at {report.dropout_round}; "
        f"{report.bytes_up_per_client} bytes up per client (expansion {report.upload_expansion:.4f})"
    )
    if as_json:
        print(json.dumps(asdict(report), sort_keys=True))
    if not report.verified:
        raise typer.Exit(code=1)
