"""``secagg simulate --transport http``: the simulation through a real server subprocess.

The same experiment as :func:`clients.harness.simulation.run_simulation`, with every message
going over HTTP on loopback: a :class:`~clients.harness.local_server.LocalServer` (``--dev``,
fresh SQLite file, admin token file), N participants enrolled through the admin API,
one round created, and N bank clients (:func:`clients.runtime.runner.run_round` over
:class:`~clients.runtime.http_transport.HttpTransport`, one thread each, signed requests,
state files in a temporary directory). The dropped clients stop at the chosen round
(their transport refuses to send that round's message or any later one), so that
stage closes at its deadline, as it would in production. The result fetched from the
server is compared with the exact sum of the survivors' inputs.

The report has the in-process simulation's keys plus ``transport: "http"`` and
wall-clock figures. Per-client times are each client's own computation (encoding
included, as in process); per-stage server times are the server's stage durations
from its round history (wall clock, waiting included).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.consortium.admin import AdminClient
from clients.harness.faults import DroppingTransport, SimulatedDropout
from clients.harness.local_server import LocalServer, metric_samples
from clients.harness.simulation import SimulationParameters, SimulationReport
from clients.runtime.errors import ClientError, ClientRefusedRound, ExcludedFromRound, RoundAbortedByServer
from clients.runtime.http_transport import HttpTransport
from clients.runtime.inputs import RingVectorInput
from clients.runtime.policy import ClientPolicy
from clients.runtime.retry import PollSchedule, RetryPolicy
from clients.runtime.runner import RoundOutcome, run_round
from clients.runtime.transport import Accepted, Delivered, RoundTransport
from secagg.config import minimum_threshold
from secagg.encoding import Ring
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom, RandomSource, SystemRandom
from secagg.rounds import KEYS, Round

LARGE_RESULTS_BYTES = 1 << 30
"""Above this many bytes of results in total, only one client fetches the result (this harness's memory)."""
LONG_DEADLINE_SECONDS = 3600.0
"""The silence window of the stages where nobody drops: long enough never to close one."""
POLL_SCHEDULE = PollSchedule(initial_interval=0.5, multiplier=1.5, max_interval=3.0, timeout=LONG_DEADLINE_SECONDS)
"""Polls start at the server's Retry-After (1 s by default) and back off to 3 s."""


@dataclass(slots=True)
class HttpSimulationReport(SimulationReport):
    transport: str = "http"
    server_start_seconds: float = 0.0
    setup_seconds: float = 0.0
    round_wall_seconds: float = 0.0
    dropout_deadline_seconds: float | None = None
    http_requests_retried: int = 0
    server_cpu_seconds: float | None = None
    http_requests: int = 0
    clients_cpu_seconds: float = 0.0


class TimedTransport:
    """Forwards to a transport and reports the wall-clock span of every submission (and whether it closed its stage)."""

    def __init__(
        self,
        inner: RoundTransport,
        observer: Callable[[Round, int, float, float, bool], None],
        before: Callable[[Round], None] | None = None,
    ) -> None:
        self._inner = inner
        self._observer = observer
        self._before = before
        self.endpoint = inner.endpoint

    def describe_round(self, round_id: str):
        return self._inner.describe_round(round_id)

    def submit(self, round_id: str, protocol_round: Round, payload: bytes):
        if self._before is not None:
            self._before(protocol_round)
        started = time.perf_counter()
        outcome = self._inner.submit(round_id, protocol_round, payload)
        closed = isinstance(outcome, Accepted) and outcome.closed_stage
        self._observer(protocol_round, len(payload), started, time.perf_counter(), closed)
        return outcome

    def fetch(self, round_id: str, protocol_round: Round):
        return self._inner.fetch(round_id, protocol_round)

    def fetch_result(self, round_id: str):
        return self._inner.fetch_result(round_id)


CONNECTION_MARGIN = 64
"""Connections beyond one per bank: the harness's admin client and status polls, reconnects."""


def connections_for(banks: int) -> int:
    """The server's ``--max-connections`` for ``banks`` simulated banks.

    Every waiting bank holds one connection in a long poll for the whole wait, so a cohort
    of N banks keeps about N connections open; a server whose limit is below that answers
    the last banks' requests 503 for as long as the others wait, and a bank that runs out of
    retries drops out although it is honest. At least the server's default (1000).
    """
    return max(1000, banks + CONNECTION_MARGIN)


class TakingTurns:
    """Forwards to a transport; between receiving a request and sending its answer the client
    holds one of ``slots`` compute slots (a semaphore shared by every client of the simulation).

    A bank computes on its own machine, so the silence a server sees in a stage is at most
    one bank's computation. Here every bank runs in this one process: left to the
    interpreter's scheduling, all of them would compute at once on the same cores, each
    taking the whole stage's worth of time before its first byte, and a stage's silence
    window would have to cover every bank's work. Taking turns, as many compute at once as
    the machine has cores and each answer is sent as soon as it is ready, so a stage makes
    progress every one bank's computation, as in production, and the simulation's silence
    window follows the server's rule rather than the number of simulated banks. A slot is
    taken after the round's description (the R0 message follows) and after every delivered
    request, and given back before any other call to the server.
    """

    def __init__(self, inner: RoundTransport, slots: threading.Semaphore) -> None:
        self._inner = inner
        self._slots = slots
        self._holding = False
        self.endpoint = inner.endpoint

    def _take(self) -> None:
        if not self._holding:
            self._slots.acquire()
            self._holding = True

    def release(self) -> None:
        if self._holding:
            self._holding = False
            self._slots.release()

    def describe_round(self, round_id: str):
        self.release()
        description = self._inner.describe_round(round_id)
        self._take()
        return description

    def submit(self, round_id: str, protocol_round: Round, payload: bytes):
        self.release()
        return self._inner.submit(round_id, protocol_round, payload)

    def fetch(self, round_id: str, protocol_round: Round):
        self.release()
        delivery = self._inner.fetch(round_id, protocol_round)
        if isinstance(delivery, Delivered):
            self._take()
        return delivery

    def fetch_result(self, round_id: str):
        self.release()
        return self._inner.fetch_result(round_id)


def run_http_simulation(
    params: SimulationParameters,
    *,
    on_step: Callable[[str], None] | None = None,
    on_submit: Callable[[Round, int, float, float, bool], None] | None = None,
    before_submit: Callable[[Round], None] | None = None,
    on_server: Callable[[LocalServer], None] | None = None,
    database_url: str | None = None,
    workers: int = 1,
    server_arguments: tuple[str, ...] = (),
) -> HttpSimulationReport:
    """Run one round over HTTP against a fresh local server; verify the sum.

    ``on_submit(round, bytes, started, finished, closed_stage)`` observes every message
    upload (``perf_counter`` times), for the upload benchmark; ``before_submit(round)`` is
    called by every client that is about to send a message (not by a dropped client for
    the rounds it drops), before its upload's time starts: the benchmark holds the uploads
    there until every client has computed its masked input, so that what is timed is the
    transfer, not the other clients' computation on the same cores. ``on_server(server)``
    is given the local server once it is up (the benchmark samples its CPU).
    """
    wall_started = time.perf_counter()
    source: RandomSource = DeterministicRandom.from_int(params.seed) if params.seed is not None else SystemRandom()
    n = params.clients
    threshold = params.threshold if params.threshold is not None else minimum_threshold(params.mode, n)
    identities = [SigningKey.generate(source) for _ in range(n)]
    names = [f"bank-{index:05d}" for index in range(n)]
    order = np.argsort(np.frombuffer(source.random_bytes(8 * n), dtype=np.uint64), kind="stable")
    dropped = frozenset(int(i) for i in order[: params.dropped_count])
    drop_at = Round.from_key(params.dropout_round.value).number
    input_seeds = [source.random_bytes(32) for _ in range(n)]
    deadline = params.silence_seconds if dropped else None
    deadlines = dict.fromkeys(KEYS, LONG_DEADLINE_SECONDS)
    if deadline is not None:
        for later in Round:
            if later.number >= drop_at:
                deadlines[later.key] = deadline

    def client_input(member: int) -> np.ndarray:
        ring = Ring(params.bits)
        vector = np.empty(params.dim, dtype=ring.dtype)
        DeterministicRandom(input_seeds[member]).fill(vector)
        return ring.reduce(vector)

    with tempfile.TemporaryDirectory(prefix="secagg-http-sim-") as work:
        work_dir = Path(work)
        started = time.perf_counter()
        arguments = list(server_arguments)
        if "--max-connections" not in arguments:
            arguments += ["--max-connections", str(connections_for(n))]
        if params.engine.value == "ray":
            arguments += ["--ray-address", params.ray_address or "local"]
        local_server = LocalServer(
            directory=work_dir / "server", database_url=database_url, workers=workers, extra_arguments=tuple(arguments)
        )
        with local_server as server:
            server_start_seconds = time.perf_counter() - started
            if on_server is not None:
                on_server(server)
            started = time.perf_counter()
            with AdminClient(server.base_url, server.admin_token) as admin:
                for name, identity in zip(names, identities, strict=True):
                    admin.enroll(name, identity.public_bytes)
                created = admin.create_round(
                    {
                        "cohort": names,
                        "threshold": threshold,
                        "mode": params.mode.value,
                        "graph": params.graph.value,
                        "degree": params.degree,
                        "dim": params.dim,
                        "bits": params.bits,
                        "deadlines": deadlines,
                        "chunk_bytes": params.chunk_bytes,
                    }
                )
                round_id = created["round_id"]
                setup_seconds = time.perf_counter() - started

                outcomes: dict[int, RoundOutcome] = {}
                failures: dict[int, str] = {}
                retries: Counter[int] = Counter()
                requests: dict[int, int] = {}
                policy = ClientPolicy(required_mode=params.mode, min_cohort_size=2)
                poll = POLL_SCHEDULE

                r4_closing: list[float] = []
                large = n * params.dim * Ring(params.bits).element_bytes > LARGE_RESULTS_BYTES
                fetcher = next(member for member in range(n) if member not in dropped)

                def observe(protocol_round: Round, size: int, begun: float, finished: float, closed: bool) -> None:
                    if protocol_round is Round.UNMASKING and closed:
                        r4_closing.append(finished - begun)
                    if on_submit is not None:
                        on_submit(protocol_round, size, begun, finished, closed)

                def run_client(member: int) -> None:
                    def count_retry(attempt: int, delay: float, description: str) -> None:
                        retries[member] += 1

                    with HttpTransport(
                        server.base_url, key_id=names[member], identity=identities[member],
                        retry=RetryPolicy(max_attempts=10), on_retry=count_retry,
                    ) as http:  # fmt: skip
                        turns = TakingTurns(TimedTransport(http, observe, before_submit), compute_slots)
                        transport: RoundTransport = DroppingTransport(turns, drop_at) if member in dropped else turns
                        try:
                            outcomes[member] = run_round(
                                transport=transport,
                                round_id=round_id,
                                identity=identities[member],
                                client_input=RingVectorInput(client_input(member)),
                                policy=policy,
                                state_dir=work_dir / "clients" / names[member],
                                participant_id=names[member],
                                poll=poll,
                                wait_for_result=member == fetcher or not large,
                            )
                        except SimulatedDropout:
                            failures[member] = "dropped"
                        except ClientRefusedRound as refusal:
                            failures[member] = refusal.reason
                        except ExcludedFromRound:
                            failures[member] = "excluded"
                        except RoundAbortedByServer as abort:
                            failures[member] = f"round-aborted:{abort.reason}"
                        except ClientError as error:
                            failures[member] = f"{type(error).__name__}: {error}"
                        finally:
                            turns.release()
                        requests[member] = http.requests_sent
                    if on_step:
                        on_step("done")

                compute_slots = threading.Semaphore(
                    len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
                )
                started = time.perf_counter()
                server_cpu_before = local_server.cpu_seconds()
                clients_cpu_before = time.process_time()
                threads = [threading.Thread(target=run_client, args=(member,), name=names[member]) for member in range(n)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                round_wall_seconds = time.perf_counter() - started
                clients_cpu_seconds = time.process_time() - clients_cpu_before
                server_cpu_after = local_server.cpu_seconds()
                server_cpu_seconds = (
                    server_cpu_after - server_cpu_before
                    if server_cpu_after is not None and server_cpu_before is not None
                    else None
                )
                status = admin.round_status(round_id)
                server_peak_rss = local_server.peak_rss_bytes()
                unmask_tasks = int(sum(metric_samples(local_server, "secagg_unmask_tasks_total").values()))

    survivors_result = next((o.result for o in outcomes.values() if o.result is not None), None)
    verified = False
    survivors: tuple[int, ...] = ()
    if status.get("outcome") == "completed" and survivors_result is not None:
        survivors = survivors_result.survivors
        ring = Ring(params.bits)
        expected = ring.zeros(params.dim)
        for member in survivors:
            np.add(expected, client_input(member), out=expected)
        ring.reduce(expected)
        verified = bool(np.array_equal(survivors_result.vector, expected)) and all(
            np.array_equal(o.result.vector, survivors_result.vector) for o in outcomes.values() if o.result is not None
        )

    server_round_seconds = _stage_durations(status)
    client_totals = [sum(o.compute_seconds.values()) for o in outcomes.values()] or [0.0]
    rounds = sorted({name for o in outcomes.values() for name in o.compute_seconds})
    vector_bytes = params.dim * params.bits / 8
    upload = max((o.bytes_sent for o in outcomes.values()), default=0)
    client_aborts = Counter(reason for reason in failures.values() if reason != "dropped")
    return HttpSimulationReport(
        verified=verified,
        outcome=str(status.get("outcome") or status.get("stage")),
        abort_reason=status.get("abort_reason"),
        clients=n,
        dim=params.dim,
        bits=params.bits,
        mode=params.mode.value,
        graph=params.graph.value,
        degree=params.degree,
        threshold=threshold,
        dropped=len(dropped),
        dropout_round=params.dropout_round.value,
        survivors=len(survivors),
        client_aborts=dict(sorted(client_aborts.items())),
        client_seconds_median=statistics.median(client_totals),
        client_seconds_max=max(client_totals),
        server_seconds=sum(server_round_seconds.values()),
        server_unmask_seconds=server_round_seconds.get(Round.UNMASKING.key, 0.0),
        bytes_up_per_client=upload,
        upload_expansion=upload / vector_bytes if vector_bytes else 0.0,
        client_round_seconds_median={
            name: statistics.median(o.compute_seconds.get(name, 0.0) for o in outcomes.values()) for name in rounds
        },
        server_round_seconds=server_round_seconds,
        wall_seconds=time.perf_counter() - wall_started,
        server_start_seconds=server_start_seconds,
        setup_seconds=setup_seconds,
        round_wall_seconds=round_wall_seconds,
        dropout_deadline_seconds=deadline,
        http_requests_retried=sum(retries.values()),
        server_cpu_seconds=server_cpu_seconds,
        http_requests=sum(requests.values()),
        clients_cpu_seconds=clients_cpu_seconds,
        chunk_bytes=params.chunk_bytes,
        engine=params.engine.value,
        unmask_tasks=unmask_tasks,
        server_peak_rss_bytes=server_peak_rss,
        r4_completing_request_seconds=r4_closing[0] if r4_closing else None,
    )


def _round_key_of_stage(stage: str) -> str | None:
    """``"R2"`` for ``"R2-masked-input-collection"``; None for a terminal stage."""
    try:
        return Round(stage).key
    except ValueError:
        return None


def _stage_durations(status: dict) -> dict[str, float]:
    """Wall-clock duration of each closed stage, from the server's round history; ``expansion``:
    from R4's closing to the round's completion (the mask-expansion stage)."""
    durations: dict[str, float] = {}
    previous = float(status.get("created_at") or 0.0)
    for record in status.get("history") or []:
        closed = record.get("closed_at")
        name = _round_key_of_stage(record.get("stage", ""))
        if closed is None or name is None:
            continue
        durations[name] = float(closed) - previous
        previous = float(closed)
    if status.get("outcome") == "completed" and status.get("finished_at") is not None and Round.UNMASKING.key in durations:
        durations["expansion"] = float(status["finished_at"]) - previous
    return durations
