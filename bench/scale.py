"""Benchmarks of big vectors, heavy load and several workers: ``python -m bench scale [part ...] [--quick]``.

Parts (each writes ``bench/results/scale_<part>.json``; ``scale.md`` is rebuilt from all):

* ``big``: N = 10, 10% dropout, over HTTP on loopback, at D = 10^7 and D = 10^8 (b = 32):
  exact sum; the server's peak RSS; R2 upload throughput against a raw loopback copy of
  the same bytes measured in the same run; the mask expansion against the AES-CTR time
  of its masks on the cores it used (AES measured in the same run); the latency of the
  R4-completing request.
* ``unmask``: the mask expansion of N = 100, D = 10^7, 30% dropout (full graph), with 1
  and 2 workers, on the local process pool and on a local Ray cluster: speedup at 2
  workers, and the per-task cost that the projection to more cores uses.
* ``ray``: ``secagg simulate --engine ray --clients 2000 --graph harary --dim 10000 --dropout 0.1``.
* ``round``: N = 100, D = 10^5 over HTTP against the in-process simulation.
* ``load``: N = 200 (full, Harary) and N = 1000 (Harary), D = 10^4, 10% dropout over HTTP,
  ten runs each: every run must complete with exactly the dropped clients missing; the
  server's CPU per client per stage and the requests per second it sustained.
* ``replays``: N = 100 on two workers over PostgreSQL (``SECAGG_TEST_POSTGRES_URL``):
  full replays per round with this code and with the code before catch-up (the commit
  named by ``BASELINE_REF``, run from ``git archive``).

The machine is a shared 2-core one; ratios against limits measured in the same run are
the figures.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import pickle
import platform
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE_REF = "c17dea4"
"""The main branch before vectors in chunks and catch-up replays (for the ``replays`` baseline)."""


# ----------------------------------------------------------------------------- limits
def aes_ctr_bytes_per_second(total_bytes: int = 1 << 30) -> float:
    from bench.core import aes_ctr_bytes_per_second as measure

    return measure(total_bytes=total_bytes)


def raw_loopback_copy(sizes: list[int]) -> float:
    """Aggregate bytes/s of concurrent TCP streams of ``sizes`` bytes into a sink process (one shared zero buffer)."""
    from bench.http import _sink, _union_seconds

    context = multiprocessing.get_context("spawn")
    port_queue = context.Queue()
    sink = context.Process(target=_sink, args=(port_queue, len(sizes)))
    sink.start()
    port = port_queue.get(timeout=60)
    zeros = memoryview(bytes(min(max(sizes), 64 << 20)))
    intervals: list[tuple[float, float]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(sizes))

    def send(size: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as connection:
            barrier.wait()
            started = time.perf_counter()
            connection.sendall(struct.pack(">Q", size))
            remaining = size
            while remaining:
                piece = zeros[: min(remaining, len(zeros))]
                connection.sendall(piece)
                remaining -= len(piece)
            connection.recv(1)
            finished = time.perf_counter()
        with lock:
            intervals.append((started, finished))

    threads = [threading.Thread(target=send, args=(size,)) for size in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sink.join(timeout=120)
    return sum(sizes) / _union_seconds(intervals)


def _asgi_sink(port_queue) -> None:
    """A bare ASGI stack (uvicorn with httptools, Starlette) whose PUT handler reads the body and answers 202."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def put(request: Request) -> JSONResponse:
        received = bytearray()
        async for piece in request.stream():
            received += piece
        return JSONResponse({"bytes": len(received)}, status_code=202)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port_queue.put(listener.getsockname()[1])
    app = Starlette(routes=[Route("/chunk", put, methods=["PUT"])])
    uvicorn.Server(uvicorn.Config(app, http="httptools", log_level="warning")).run(sockets=[listener])


def asgi_stack_rate(uploads: int, upload_bytes: int, chunk_bytes: int) -> float:
    """Aggregate bytes/s of ``uploads`` concurrent clients each PUTting ``upload_bytes`` in
    ``chunk_bytes`` requests (httpx, one client per thread, as the simulation's banks) to the
    bare ASGI stack the service runs on, in another process: the web stack's own limit."""
    import httpx

    from bench.http import _union_seconds

    context = multiprocessing.get_context("spawn")
    port_queue = context.Queue()
    server = context.Process(target=_asgi_sink, args=(port_queue,), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{port_queue.get(timeout=60)}/chunk"
        body = bytes(chunk_bytes)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.put(url, content=b"")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        intervals: list[tuple[float, float]] = []
        lock = threading.Lock()
        barrier = threading.Barrier(uploads)

        def upload() -> None:
            with httpx.Client(timeout=120) as client:
                client.put(url, content=body[:64])
                barrier.wait()
                started = time.perf_counter()
                remaining = upload_bytes
                while remaining:
                    size = min(chunk_bytes, remaining)
                    client.put(url, content=body[:size] if size < chunk_bytes else body).raise_for_status()
                    remaining -= size
                finished = time.perf_counter()
            with lock:
                intervals.append((started, finished))

        threads = [threading.Thread(target=upload) for _ in range(uploads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return uploads * upload_bytes / _union_seconds(intervals)
    finally:
        server.terminate()
        server.join(timeout=30)


def sqlite_chunk_rates(total_bytes: int, chunk_bytes: int) -> tuple[float, float]:
    """Bytes/s of storing ``total_bytes`` as ``chunk_bytes`` blobs in SQLite with the service's
    settings (page size, WAL, ``synchronous=FULL``, one commit per chunk, the WAL checkpointed
    into the main file at the server's threshold), and of reading them back: what "durable
    when acknowledged" costs on this disk before any protocol work (the storage's limit for
    R2), and what the expansion's reading of the running sums and writing of the result cost."""
    import sqlite3

    from service.db import SQLITE_PAGE_BYTES, WAL_CHECKPOINT_BYTES

    body = os.urandom(chunk_bytes)
    with tempfile.TemporaryDirectory(prefix="secagg-sqlite-") as directory:
        connection = sqlite3.connect(Path(directory) / "chunks.db", isolation_level=None)
        connection.execute(f"PRAGMA page_size={SQLITE_PAGE_BYTES}")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA wal_autocheckpoint=0")
        connection.execute("CREATE TABLE chunks (chunk INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        started = time.perf_counter()
        written = since_checkpoint = 0
        index = 0
        while written < total_bytes:
            size = min(chunk_bytes, total_bytes - written)
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO chunks VALUES (?, ?)", (index, body[:size]))
            connection.execute("COMMIT")
            written += size
            since_checkpoint += size
            index += 1
            if since_checkpoint >= WAL_CHECKPOINT_BYTES:
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                since_checkpoint = 0
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        write_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for (chunk,) in connection.execute("SELECT chunk FROM chunks").fetchall():
            connection.execute("SELECT body FROM chunks WHERE chunk = ?", (chunk,)).fetchone()
        read_seconds = time.perf_counter() - started
        connection.close()
    return total_bytes / write_seconds, total_bytes / read_seconds


def disk_write_bytes_per_second(size: int) -> float:
    """Sequential write of ``size`` bytes (at most 1 GiB) with fsync, in the temporary directory: the disk's limit."""
    size = min(size, 1 << 30)
    block = bytes(4 << 20)
    with tempfile.NamedTemporaryFile(prefix="secagg-disk-") as handle:
        started = time.perf_counter()
        written = 0
        while written < size:
            handle.write(block)
            written += len(block)
        handle.flush()
        os.fsync(handle.fileno())
        return written / (time.perf_counter() - started)


class CpuAccount:
    """CPU time on the whole machine (``/proc/stat``) and in this process tree, over an interval.

    ``others_cpu_seconds`` is what processes outside this benchmark's tree used meanwhile
    (another job on the shared machine), ``steal_seconds`` what the hypervisor gave to other
    guests; both take cores away from the workers being measured. Linux only.
    """

    def __init__(self) -> None:
        self._start = self._snapshot()
        self._started = time.perf_counter()

    @staticmethod
    def _tree_cpu_seconds(root: int) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        parents: dict[int, int] = {}
        cpu: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
        total = 0.0
        for pid in cpu:
            ancestor = pid
            while ancestor not in (0, 1, root) and ancestor in parents:
                ancestor = parents[ancestor]
            if ancestor == root:
                total += cpu[pid]
        return total

    @classmethod
    def _snapshot(cls) -> tuple[float, float, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = values
        return (user + nice + system + irq + softirq) / ticks, steal / ticks, cls._tree_cpu_seconds(os.getpid())

    def finish(self) -> dict:
        busy, steal, ours = self._snapshot()
        wall = time.perf_counter() - self._started
        ours_used = ours - self._start[2]
        others = max(0.0, busy - self._start[0] - ours_used)
        return {
            "wall_seconds": wall,
            "ours_cpu_seconds": ours_used,
            "others_cpu_seconds": others,
            "steal_seconds": steal - self._start[1],
            "ours_cores": ours_used / wall,
            "others_cores": others / wall,
        }


class ServerCpuSampler:
    """CPU seconds of the simulation's server (:meth:`LocalServer.cpu_seconds`, once
    :meth:`attach` has been given it) and of this process, sampled every 50 ms with
    ``perf_counter`` times, to tell how many cores each used during an interval of the run."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float | None, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server = None

    def attach(self, server) -> None:
        """The simulation's server, as ``run_http_simulation(on_server=...)`` hands it over."""
        self._server = server

    def _run(self) -> None:
        while not self._stop.is_set():
            server = self._server.cpu_seconds() if self._server is not None else None
            self.samples.append((time.perf_counter(), server, time.process_time()))
            time.sleep(0.05)

    def __enter__(self) -> ServerCpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def cores(self, start: float, end: float) -> dict[str, float | None]:
        """Cores used by the server and by this process (the clients) between ``start`` and ``end``."""
        inside = [sample for sample in self.samples if start <= sample[0] <= end and sample[1] is not None]
        if len(inside) < 2:
            return {"server": None, "clients": None}
        (t0, s0, c0), (t1, s1, c1) = inside[0], inside[-1]
        assert s0 is not None and s1 is not None
        return {"server": (s1 - s0) / (t1 - t0), "clients": (c1 - c0) / (t1 - t0)}


def _one_task_seconds(task) -> float:
    from secagg.server.chunk_tasks import run_mask_chunk_task

    started = time.perf_counter()
    run_mask_chunk_task(task)
    return time.perf_counter() - started


def parallel_task_capacity(task, repeats: int = 3) -> dict:
    """The machine's speedup on the chunk-task kernel itself: one task alone, then two at once in two processes.

    ``2 * alone / together`` is 2.0 on two free cores; it is the limit the engines' speedup
    at two workers can reach at that moment (no engine, no scheduling, no transport).
    """
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    alone: list[float] = []
    together: list[float] = []
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        list(pool.map(_one_task_seconds, [type(task)(bits=task.bits, start=0, stop=0, masks=())] * 2))
        for _ in range(repeats):
            alone.append(pool.submit(_one_task_seconds, task).result())
            started = time.perf_counter()
            list(pool.map(_one_task_seconds, [task, task]))
            together.append(time.perf_counter() - started)

    speedups = sorted(2 * one / two for one, two in zip(alone, together, strict=True))
    return {
        "alone_seconds": alone,
        "two_at_once_seconds": together,
        "speedup_median": statistics.median(speedups),
        "speedup_best": speedups[-1],
    }


# -------------------------------------------------------------------------------- big
R2_SILENCE_FLOOR_SECONDS = 30.0
R2_SILENCE_FACTOR = 20.0


def r2_silence_window(clients: int, dim: int, aes_bytes_per_second: float, cores: int) -> float:
    """The R2 silence window for ``clients`` simulated banks sharing this machine's cores.

    An honest bank is silent in R2 while it computes its masked input; here every bank of
    the round runs in one process on ``cores`` cores, so the last one starts its upload once
    all have expanded their ``clients`` masks of ``dim`` 32-bit elements (plus its input,
    encoding and state files). The window is :data:`R2_SILENCE_FACTOR` times the AES-CTR time
    of those masks on these cores (at least :data:`R2_SILENCE_FLOOR_SECONDS`); the benchmark
    reports the longest honest silence it then measured next to it.
    """
    mask_seconds = clients * clients * dim * 4 / (aes_bytes_per_second * cores)
    return max(R2_SILENCE_FLOOR_SECONDS, R2_SILENCE_FACTOR * mask_seconds)


def big_round(dim: int, clients: int = 10, dropout: float = 0.1, chunk_bytes: int | None = None) -> dict:
    from bench.http import _union_seconds
    from clients.harness.http_simulation import run_http_simulation
    from clients.harness.simulation import SimulationParameters
    from secagg.rounds import Round

    uploads: list[tuple[int, float, float]] = []
    r1_finished: list[float] = []
    lock = threading.Lock()
    workers = os.cpu_count() or 1
    aes_before = aes_ctr_bytes_per_second(256 << 20)
    disk = disk_write_bytes_per_second(dim * 4)
    silence = r2_silence_window(clients, dim, aes_before, workers)
    params = SimulationParameters(clients=clients, dim=dim, dropout=dropout, silence_seconds=silence)
    if chunk_bytes is not None:
        params = dataclasses.replace(params, chunk_bytes=chunk_bytes)
    # Every honest client computes its masked input before any upload starts, so the uploads'
    # time measures the transfer and the server, not the other clients' computation on the
    # same two cores (they all run in this one process).
    honest = clients - params.dropped_count
    computed = threading.Barrier(honest)
    # The R4 message that completes the stage is sent once every other survivor's has been
    # acknowledged, so its latency is its own (authentication, acceptance, closing R4 and
    # opening the mask expansion), not its wait behind the others in the server's queue;
    # the R4 latencies of the other survivors are reported next to it.
    unmasking = threading.Condition()
    r4_arrived: list[int] = []
    r4_latencies: list[float] = []

    def before(protocol_round: Round) -> None:
        if protocol_round is Round.MASKED_INPUT_COLLECTION:
            computed.wait()
        elif protocol_round is Round.UNMASKING:
            with unmasking:
                r4_arrived.append(1)
                if len(r4_arrived) == honest:
                    unmasking.wait_for(lambda: len(r4_latencies) == honest - 1, timeout=600)

    def observe(protocol_round: Round, size: int, started: float, finished: float, closed: bool) -> None:
        with lock:
            if protocol_round is Round.MASKED_INPUT_COLLECTION:
                uploads.append((size, started, finished))
            elif protocol_round is Round.SHARE_KEYS:
                r1_finished.append(finished)
        if protocol_round is Round.UNMASKING and not closed:
            with unmasking:
                r4_latencies.append(finished - started)
                unmasking.notify_all()

    account = CpuAccount()
    with ServerCpuSampler() as sampler:
        report = run_http_simulation(params, on_submit=observe, before_submit=before, on_server=sampler.attach)
    machine = account.finish()
    aes = max(aes_before, aes_ctr_bytes_per_second(256 << 20))
    sizes = [size for size, _, _ in uploads]
    busy = _union_seconds([(start, end) for _, start, end in uploads])
    honest_silence = min(start for _, start, _ in uploads) - max(r1_finished) if uploads and r1_finished else None
    r2_cores = sampler.cores(min(start for _, start, _ in uploads), max(end for _, _, end in uploads))
    http_rate = sum(sizes) / busy
    raw_rate = raw_loopback_copy(sizes)
    asgi_rate = asgi_stack_rate(len(sizes), max(sizes), report.chunk_bytes)
    storage_rate, storage_read_rate = sqlite_chunk_rates(sum(sizes), report.chunk_bytes)
    survivors = report.survivors
    dropped = clients - survivors
    masks = survivors + dropped * survivors  # self-masks of U3, pairwise masks of each dropped client with U3 (full graph)
    mask_bytes = masks * dim * 4
    expansion_seconds = report.server_round_seconds.get("expansion")
    aes_floor = mask_bytes / (aes * workers)
    io_floor = 2 * dim * 4 / disk  # the result written once and the running sum's pages rewritten (WAL, then checkpoint)
    storage_floor = dim * 4 / storage_read_rate + dim * 4 / storage_rate  # the running sums read, the result stored
    return {
        "clients": clients,
        "dim": dim,
        "dropout": dropout,
        "verified": report.verified,
        "survivors": survivors,
        "client_aborts": report.client_aborts,
        "chunk_bytes": report.chunk_bytes,
        "unmask_tasks": report.unmask_tasks,
        "server_peak_rss_bytes": report.server_peak_rss_bytes,
        "rss_target_bytes": 1_500_000_000,
        "r2_bytes": sum(sizes),
        "r2_busy_seconds": busy,
        "r2_http_bytes_per_second": http_rate,
        "raw_loopback_bytes_per_second": raw_rate,
        "r2_fraction_of_raw": http_rate / raw_rate,
        "r2_target_fraction": 0.25,
        "asgi_stack_bytes_per_second": asgi_rate,
        "round_cpu_account": machine,
        "r2_server_cores": r2_cores["server"],
        "r2_clients_cores": r2_cores["clients"],
        "sqlite_durable_chunk_bytes_per_second": storage_rate,
        "r2_fraction_of_storage_limit": http_rate / storage_rate,
        "r2_fraction_of_asgi_stack": http_rate / asgi_rate,
        "aes_bytes_per_second_per_core": aes,
        "cores": workers,
        "masks": masks,
        "expansion_seconds": expansion_seconds,
        "expansion_aes_floor_seconds": aes_floor,
        "expansion_ratio_to_aes": (expansion_seconds / aes_floor) if expansion_seconds else None,
        "disk_write_bytes_per_second": disk,
        "expansion_io_floor_seconds": io_floor,
        "expansion_ratio_to_aes_and_io": (expansion_seconds / max(aes_floor, io_floor)) if expansion_seconds else None,
        "sqlite_chunk_read_bytes_per_second": storage_read_rate,
        "expansion_storage_floor_seconds": storage_floor,
        "expansion_ratio_to_aes_and_storage": (expansion_seconds / max(aes_floor, storage_floor)) if expansion_seconds else None,
        "expansion_target_ratio": 1.5,
        "r2_silence_window_seconds": silence,
        "r2_longest_honest_silence_seconds": honest_silence,
        "r4_completing_request_seconds": report.r4_completing_request_seconds,
        "r4_other_requests_seconds_median": statistics.median(r4_latencies) if r4_latencies else None,
        "r4_target_seconds": 0.1,
        "round_wall_seconds": report.round_wall_seconds,
        "server_round_seconds": report.server_round_seconds,
        "server_cpu_seconds": report.server_cpu_seconds,
    }


# ----------------------------------------------------------------------------- unmask
def _plan_masks(clients: int, dropout: float, seed: int):
    from clients.harness.simulation import DropoutRound, SimulationParameters, run_simulation
    from secagg.server import ServerSession

    captured: list = []
    original = ServerSession.__init__

    def capture(self, *args, **kwargs):  # the simulation's server: keep it to read its plan
        original(self, *args, **kwargs)
        captured.append(self)

    ServerSession.__init__ = capture  # type: ignore[method-assign]
    try:
        report = run_simulation(
            SimulationParameters(clients=clients, dim=64, dropout=dropout, dropout_round=DropoutRound("R2"), seed=seed)
        )
    finally:
        ServerSession.__init__ = original  # type: ignore[method-assign]
    assert report.verified
    from secagg.server.chunk_tasks import unmasking_masks

    return unmasking_masks(captured[-1].unmasking_plan)


UNMASK_REPETITIONS = 3


def _timed_expansion(engine, tasks: list, workers: int) -> tuple[float, dict]:
    """Seconds for ``engine`` to run every task, and the machine's CPU account meanwhile
    (the engine is started on ``workers`` tasks first, outside the timing)."""
    list(engine.run(tasks[:workers]))
    account = CpuAccount()
    started = time.perf_counter()
    count = sum(1 for _ in engine.run(tasks))
    seconds = time.perf_counter() - started
    assert count == len(tasks)
    return seconds, account.finish()


def unmask_scaling(clients: int = 100, dim: int = 10_000_000, dropout: float = 0.3, chunk_bytes: int = 1 << 20) -> dict:
    from secagg.chunks import ChunkLayout
    from secagg.server.chunk_tasks import chunk_tasks
    from service.rounds.engines import EngineKind, RayEngine, make_engine

    masks = _plan_masks(clients, dropout, seed=5)
    layout = ChunkLayout(dim, 32, chunk_bytes)
    tasks = chunk_tasks(layout, masks)
    aes = aes_ctr_bytes_per_second(256 << 20)
    mask_bytes = len(masks) * layout.vector_bytes
    pickled = pickle.dumps(tasks[0])
    started = time.perf_counter()
    for task in tasks:
        pickle.loads(pickle.dumps(task))
    pickling_seconds = time.perf_counter() - started
    capacity_before = parallel_task_capacity(tasks[0])
    # Each engine at 1 and 2 workers, three times over (the machine is shared and noisy): the
    # speedup of each repetition, and the medians.
    repetitions: list[dict[str, dict[int, float]]] = []
    accounts: dict[str, dict[int, dict]] = {"process": {}, "ray": {}}
    try:
        import ray
    except ImportError:
        ray = None
    for _ in range(UNMASK_REPETITIONS):
        runs: dict[str, dict[int, float]] = {"process": {}, "ray": {}} if ray is not None else {"process": {}}
        for workers in (1, 2):
            engine = make_engine(EngineKind.PROCESS, workers=workers)
            runs["process"][workers], accounts["process"][workers] = _timed_expansion(engine, tasks, workers)
            engine.close()
        if ray is not None:
            for workers in (1, 2):
                # A local cluster of exactly ``workers`` CPUs: Ray runs as many tasks at once as the
                # cluster has CPUs, whatever the engine keeps in flight.
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
                engine = RayEngine(None, workers=workers)
                runs["ray"][workers], accounts["ray"][workers] = _timed_expansion(engine, tasks, workers)
                ray.shutdown()
        repetitions.append(runs)
    runs = {
        name: {workers: statistics.median(rep[name][workers] for rep in repetitions) for workers in (1, 2)}
        for name in repetitions[0]
    }
    speedups = {name: [rep[name][1] / rep[name][2] for rep in repetitions] for name in runs}
    capacity_after = parallel_task_capacity(tasks[0])
    per_task = {name: times[1] / len(tasks) for name, times in runs.items()}
    projection = {
        name: {
            str(cores): {
                "tasks_per_core": -(-len(tasks) // cores),
                "seconds": -(-len(tasks) // cores) * per_task[name],
                "chunks_needed_for_full_use": 4 * cores,
            }
            for cores in (16, 64)
        }
        for name in runs
    }
    return {
        "clients": clients,
        "dim": dim,
        "dropout": dropout,
        "chunk_bytes": chunk_bytes,
        "tasks": len(tasks),
        "masks": len(masks),
        "mask_bytes": mask_bytes,
        "aes_bytes_per_second_per_core": aes,
        "aes_floor_one_core_seconds": mask_bytes / aes,
        "seconds": {name: {str(k): v for k, v in times.items()} for name, times in runs.items()},
        "speedup_at_2": {name: statistics.median(values) for name, values in speedups.items()},
        "speedup_at_2_runs": speedups,
        "seconds_runs": [{name: {str(k): v for k, v in times.items()} for name, times in rep.items()} for rep in repetitions],
        "cpu": {name: {str(k): v for k, v in by_workers.items()} for name, by_workers in accounts.items()},
        "kernel_speedup_two_processes_before": capacity_before,
        "kernel_speedup_two_processes_after": capacity_after,
        "task_pickle_bytes": len(pickled),
        "pickling_seconds_all_tasks": pickling_seconds,
        "result_bytes_per_task": layout.chunk_bytes,
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "speedup_target": 1.7,
        "per_task_seconds": per_task,
        "projection": projection,
    }


# -------------------------------------------------------------------------------- ray
def ray_simulation(clients: int = 2000, dim: int = 10_000, dropout: float = 0.1) -> dict:
    command = [
        sys.executable, "-m", "secagg_cli", "simulate", "--engine", "ray", "--clients", str(clients), "--graph", "harary",
        "--dim", str(dim), "--dropout", str(dropout), "--json",
    ]  # fmt: skip
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    keys = ("verified", "survivors", "dropped", "degree", "client_aborts", "unmask_tasks", "server_seconds", "server_round_seconds",
            "client_seconds_median", "server_peak_rss_bytes", "wall_seconds")  # fmt: skip
    return {"command": " ".join(command[2:]), "process_wall_seconds": wall, **{key: report[key] for key in keys}}


# ------------------------------------------------------------------------------ round
def http_round(clients: int = 100, dim: int = 100_000) -> dict:
    from bench.http import round_overhead

    result = round_overhead(clients, dim)
    result["target_ratio"] = 2.0
    return result


# ------------------------------------------------------------------------------- load
def load_run(clients: int, graph: str, dim: int = 10_000, dropout: float = 0.1, seed: int = 0, silence: float = 10.0) -> dict:
    from clients.harness.http_simulation import run_http_simulation
    from clients.harness.simulation import SimulationParameters
    from secagg.config import GraphKind, ProtocolMode
    from secagg.graph import recommended_harary_degree

    degree = None
    if graph == "harary":
        degree = recommended_harary_degree(clients, ProtocolMode.ACTIVE, dropout_rate=dropout, corrupt_fraction=0.0)
    params = SimulationParameters(
        clients=clients,
        dim=dim,
        dropout=dropout,
        graph=GraphKind(graph if degree is not None or graph == "full" else "full"),
        degree=degree,
        silence_seconds=silence,
        seed=seed,
    )
    report = run_http_simulation(params)
    dropped = params.dropped_count
    stages = report.server_round_seconds
    return {
        "clients": clients,
        "graph": report.graph,
        "degree": report.degree,
        "verified": report.verified,
        "survivors": report.survivors,
        "expected_survivors": clients - dropped,
        "honest_excluded": clients - dropped - report.survivors,
        "client_aborts": report.client_aborts,
        "round_wall_seconds": report.round_wall_seconds,
        "http_requests": report.http_requests,
        "requests_per_second": report.http_requests / report.round_wall_seconds if report.round_wall_seconds else None,
        "server_cpu_seconds": report.server_cpu_seconds,
        "server_cpu_per_client_per_stage_ms": (
            1000 * report.server_cpu_seconds / clients / max(1, len(stages)) if report.server_cpu_seconds else None
        ),
        "stage_seconds": stages,
        "silence_seconds": silence,
    }


def load(runs: int = 10, configurations: list[tuple[int, str, int | None]] | None = None, silence: float = 10.0) -> dict:
    """``runs`` runs of each (clients, graph) configuration, or the configuration's own count when it names one."""
    configurations = configurations or [(200, "full", None), (200, "harary", None), (1000, "harary", None)]
    partial = RESULTS / "scale_load.partial.json"
    # An interrupted load benchmark resumes: the runs its partial file holds are kept, not run again.
    results = json.loads(partial.read_text())["results"] if partial.exists() else []
    counts = {f"{clients}:{graph}": count or runs for clients, graph, count in configurations}
    for clients, graph, count in configurations:
        total = count or runs
        done = sum(
            1 for row in results if row["clients"] == clients and row["graph"] == graph and row.get("silence_seconds") == silence
        )
        for run in range(done, total):
            result = load_run(clients, graph, seed=1000 * clients + run, silence=silence)
            print(
                f"load N={clients} {graph} run {run + 1}/{total}: verified={result['verified']} "
                f"excluded={result['honest_excluded']} {result['round_wall_seconds']:.1f}s "
                f"{result['requests_per_second'] or 0:.0f} req/s",
                flush=True,
            )
            results.append(result)
            partial.write_text(json.dumps({"runs_per_configuration": counts, "results": results}, indent=2) + "\n")
    partial.unlink(missing_ok=True)
    return {"runs_per_configuration": counts, "results": results}


# ---------------------------------------------------------------------------- replays
def _replay_round(source: Path | None, database_url: str, clients: int, workers: int) -> dict:
    """One round of ``clients`` on ``workers`` workers; the full replays the server logged."""
    import httpx

    from clients.harness.local_server import LocalServer
    from secagg.rounds import Round
    from tests.service.harness import Api, RoundDriver, make_parties

    environment = {"PYTHONPATH": str(source)} if source is not None else {}
    with tempfile.TemporaryDirectory(prefix="secagg-bench-replays-") as scratch:
        server = LocalServer(
            directory=Path(scratch), database_url=database_url, workers=workers, dev=False, extra_env=environment, cwd=source
        )
        with server:
            api = Api(server)
            api.http.close()
            api.http = httpx.Client(base_url=server.base_url, timeout=120.0, headers={"Connection": "close"})
            parties = make_parties(clients, prefix="rp", seed=clients)
            for party in parties:
                api.enroll(party)
            round_id = api.create_round(parties, threshold=clients * 2 // 3 + 1, mode="active", dim=1000, bits=32)
            driver = RoundDriver(api, parties, round_id, seed=3)
            everyone = range(clients)
            driver.send(everyone)
            for protocol_round in list(Round)[1:]:
                driver.wait_for_stage(protocol_round.value, timeout=300)
                driver.fetch(everyone)
                driver.send(everyone)
            driver.wait_for_stage("completed", timeout=300)
            log = server.log_tail(200_000_000)
            api.close()
    replays = 0
    for line in log.splitlines():
        if line.startswith("{") and '"session_replayed"' in line:
            replays += json.loads(line).get("round_id") == round_id
    return {"full_replays": replays, "messages": 5 * clients}


def replays(clients: int = 100, workers: int = 2) -> dict:
    from tests.service.conftest import fresh_postgres_database

    base = os.environ.get("SECAGG_TEST_POSTGRES_URL")
    if not base:
        return {"skipped": "needs SECAGG_TEST_POSTGRES_URL (a PostgreSQL server)"}
    after = _replay_round(None, fresh_postgres_database(base), clients, workers)
    with tempfile.TemporaryDirectory(prefix="secagg-baseline-") as scratch:
        archive = subprocess.run(["git", "archive", BASELINE_REF], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", scratch], input=archive, check=True)
        before = _replay_round(Path(scratch), fresh_postgres_database(base), clients, workers)
    return {"clients": clients, "workers": workers, "baseline_ref": BASELINE_REF, "before": before, "after": after}


# ------------------------------------------------------------------------------ driver
PARTS = {
    "unmask": lambda quick, options: unmask_scaling(dim=int(options.get("unmask-dim", 2_000_000 if quick else 10_000_000))),
    "big": lambda quick, options: {
        "rounds": [
            big_round(int(dim), chunk_bytes=int(chunk) if chunk else None)
            for dim in options.get("big-dims", "1000000" if quick else "10000000,100000000").split(",")
            for chunk in options.get("big-chunk-bytes", "").split(",")
        ]
    },
    "round": lambda quick, options: http_round(20 if quick else 100),
    "replays": lambda quick, options: replays(clients=20 if quick else 100),
    "ray": lambda quick, options: ray_simulation(clients=int(options.get("ray-clients", 200 if quick else 2000))),
    "load": lambda quick, options: load(
        runs=int(options.get("load-runs", 1 if quick else 10)),
        configurations=[
            (int(fields[0]), fields[1], int(fields[2]) if len(fields) > 2 else None)
            for fields in (item.split(":") for item in options["load-configs"].split(","))
        ]
        if "load-configs" in options
        else None,
        silence=float(options.get("load-silence", 10.0)),
    ),
}
"""Each part's function of ``--quick`` and the ``--name=value`` options (``--big-dims=10000000``, ``--big-chunk-bytes=4194304,16777216``,
``--unmask-dim``, ``--ray-clients``, ``--load-runs``, ``--load-configs=200:full,1000:harary:2`` (clients, graph
and optionally that configuration's own number of runs), ``--load-silence``): sizes this machine can run in the time it has."""


def run(argv: list[str] | None = None) -> dict:
    arguments = sys.argv[2:] if argv is None else argv
    quick = "--quick" in arguments
    options = dict(argument[2:].split("=", 1) for argument in arguments if argument.startswith("--") and "=" in argument)
    chosen = [name for name in arguments if not name.startswith("-")] or list(PARTS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": multiprocessing.cpu_count()}
    for name in chosen:
        started = time.perf_counter()
        load_before = os.getloadavg()
        result = PARTS[name](quick, options)
        result = {
            **result,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "part": name,
            "quick": quick,
            "options": options,
            "machine": machine,
            "bench_seconds": time.perf_counter() - started,
        }
        (RESULTS / f"scale_{name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(f"scale {name}: done in {result['bench_seconds']:.0f} s", flush=True)
    from bench.scale_report import write_markdown

    write_markdown(RESULTS)
    return {}


if __name__ == "__main__":
    run()
