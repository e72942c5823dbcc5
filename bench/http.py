"""Benchmark of the HTTP path: ``python -m bench http [--quick]``.

1. **Round overhead.** N = 100, D = 1e5, active mode, full graph, no dropout: one
   whole round over HTTP on loopback (``secagg simulate --transport http``: a real
   server subprocess, SQLite, signed requests, one thread per client) against the
   in-process simulation of the same configuration, both in this run. Figure: the
   ratio of the HTTP round's wall time (first client start to the last client
   holding the result; server start-up and enrolment excluded) to the in-process
   simulation's wall time. Target <= 3.
2. **Upload throughput.** N = 20, D = 1e6: the R2 masked-input uploads of a real
   HTTP round (each POST ends when the server has durably committed the message),
   against a raw loopback copy of the same byte counts measured in the same run: 20
   concurrent TCP streams into a separate sink process that reads every byte and
   acknowledges. Throughput = bytes / time during which at least one upload was in
   flight. Target >= 50 % of the raw copy. A second baseline, the standard
   library's threading HTTP server in another process reading the same bodies from
   concurrent httpx clients, separates the cost of HTTP in Python from the cost of
   the service's own request path (authentication, validation, durable commit).

On a shared 2-core machine absolute seconds are noisy; the ratios are the figures.
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from secagg.rounds import Round

RESULTS = Path(__file__).resolve().parent / "results"


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total = 0.0
    current_start, current_end = None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


# ------------------------------------------------------------- raw loopback
def _sink(port_queue, streams: int) -> None:
    """Accept ``streams`` connections; read each length-prefixed payload fully; acknowledge."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(streams)
    port_queue.put(listener.getsockname()[1])

    def serve(connection: socket.socket) -> None:
        with connection:
            header = b""
            while len(header) < 8:
                header += connection.recv(8 - len(header))
            (length,) = struct.unpack(">Q", header)
            buffer = bytearray(1 << 20)
            view = memoryview(buffer)
            remaining = length
            while remaining:
                received = connection.recv_into(view, min(remaining, len(buffer)))
                if not received:
                    return
                remaining -= received
            connection.sendall(b"k")

    workers = []
    for _ in range(streams):
        connection, _ = listener.accept()
        worker = threading.Thread(target=serve, args=(connection,))
        worker.start()
        workers.append(worker)
    for worker in workers:
        worker.join()
    listener.close()


def raw_loopback_copy(sizes: list[int]) -> tuple[float, float]:
    """(aggregate bytes/s over the busy time, wall seconds) for concurrent streams of ``sizes`` bytes."""
    context = multiprocessing.get_context("spawn")
    port_queue = context.Queue()
    sink = context.Process(target=_sink, args=(port_queue, len(sizes)))
    sink.start()
    port = port_queue.get(timeout=60)
    payloads = [bytes(size) for size in sizes]
    intervals: list[tuple[float, float]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(sizes))

    def send(payload: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port)) as connection:
            barrier.wait()
            started = time.perf_counter()
            connection.sendall(struct.pack(">Q", len(payload)))
            connection.sendall(payload)
            connection.recv(1)
            finished = time.perf_counter()
        with lock:
            intervals.append((started, finished))

    threads = [threading.Thread(target=send, args=(payload,)) for payload in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sink.join(timeout=60)
    busy = _union_seconds(intervals)
    return sum(sizes) / busy, busy


def _minimal_http_server(port_queue) -> None:
    """The standard library's threading HTTP server: read the body, answer 204."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            remaining = int(self.headers["Content-Length"])
            while remaining:
                remaining -= len(self.rfile.read(min(remaining, 1 << 20)))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    class Server(ThreadingHTTPServer):
        request_queue_size = 128
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Sink)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def minimal_http_copy(sizes: list[int]) -> float:
    """Aggregate bytes/s of concurrent httpx POSTs of ``sizes`` bytes to a minimal HTTP server in another process."""
    import httpx

    context = multiprocessing.get_context("spawn")
    port_queue = context.Queue()
    sink = context.Process(target=_minimal_http_server, args=(port_queue,), daemon=True)
    sink.start()
    port = port_queue.get(timeout=60)
    intervals: list[tuple[float, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(sizes))

    def post(size: int) -> None:
        payload = bytes(size)
        with httpx.Client(timeout=120.0) as client:
            barrier.wait()
            started = time.perf_counter()
            try:
                response = client.post(
                    f"http://127.0.0.1:{port}/upload", content=payload, headers={"Content-Type": "application/octet-stream"}
                )
                response.raise_for_status()
            except httpx.HTTPError as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                return
            finished = time.perf_counter()
        with lock:
            intervals.append((started, finished))

    threads = [threading.Thread(target=post, args=(size,)) for size in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sink.terminate()
    sink.join(timeout=10)
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(sizes)} uploads to the minimal HTTP server failed: {errors[0]}")
    return sum(sizes) / _union_seconds(intervals)


# ------------------------------------------------------------------- suites
def round_overhead(clients: int, dim: int) -> dict:
    from clients.harness.http_simulation import run_http_simulation
    from clients.harness.simulation import SimulationParameters, run_simulation

    params = SimulationParameters(clients=clients, dim=dim, dropout=0.0)
    started = time.perf_counter()
    in_process = run_simulation(params)
    in_process_seconds = time.perf_counter() - started
    over_http = run_http_simulation(params)
    return {
        "clients": clients,
        "dim": dim,
        "in_process_seconds": in_process_seconds,
        "in_process_verified": in_process.verified,
        "http_round_seconds": over_http.round_wall_seconds,
        "http_verified": over_http.verified,
        "http_server_start_seconds": over_http.server_start_seconds,
        "http_setup_seconds": over_http.setup_seconds,
        "http_server_stage_seconds": over_http.server_round_seconds,
        "http_client_compute_seconds_median": over_http.client_seconds_median,
        "http_server_cpu_seconds": over_http.server_cpu_seconds,
        "http_requests": over_http.http_requests,
        "http_clients_cpu_seconds": over_http.clients_cpu_seconds,
        "overhead_ratio": over_http.round_wall_seconds / in_process_seconds,
        "target_ratio": 3.0,
    }


def upload_throughput(clients: int, dim: int) -> dict:
    from clients.harness.http_simulation import run_http_simulation
    from clients.harness.simulation import SimulationParameters

    uploads: list[tuple[int, float, float]] = []
    lock = threading.Lock()

    def observe(protocol_round: Round, size: int, started: float, finished: float, closed: bool) -> None:
        if protocol_round is Round.MASKED_INPUT_COLLECTION:
            with lock:
                uploads.append((size, started, finished))

    report = run_http_simulation(SimulationParameters(clients=clients, dim=dim, dropout=0.0), on_submit=observe)
    sizes = [size for size, _, _ in uploads]
    http_busy = _union_seconds([(start, end) for _, start, end in uploads])
    http_rate = sum(sizes) / http_busy
    per_request = sorted(size / (end - start) for size, start, end in uploads)
    raw_rate, raw_busy = raw_loopback_copy(sizes)
    minimal_http_rate = minimal_http_copy(sizes)
    return {
        "clients": clients,
        "dim": dim,
        "http_verified": report.verified,
        "uploads": len(uploads),
        "bytes_per_upload": max(sizes),
        "http_busy_seconds": http_busy,
        "http_bytes_per_second": http_rate,
        "http_per_request_bytes_per_second_median": per_request[len(per_request) // 2],
        "raw_busy_seconds": raw_busy,
        "raw_loopback_bytes_per_second": raw_rate,
        "fraction_of_raw": http_rate / raw_rate,
        "minimal_http_bytes_per_second": minimal_http_rate,
        "fraction_of_minimal_http": http_rate / minimal_http_rate,
        "target_fraction": 0.5,
    }


def run(argv: list[str] | None = None) -> dict:
    arguments = sys.argv[2:] if argv is None else argv
    quick = "--quick" in arguments
    overhead_config = (20, 100_000) if quick else (100, 100_000)
    upload_config = (10, 1_000_000) if quick else (20, 1_000_000)
    overhead = round_overhead(*overhead_config)
    print(
        f"http round N={overhead['clients']} D={overhead['dim']}: {overhead['http_round_seconds']:.2f} s over HTTP vs "
        f"{overhead['in_process_seconds']:.2f} s in process -> overhead {overhead['overhead_ratio']:.2f}x (target <= 3x); "
        f"verified {overhead['http_verified'] and overhead['in_process_verified']}; CPU server "
        f"{overhead['http_server_cpu_seconds'] or 0.0:.1f} s, clients {overhead['http_clients_cpu_seconds']:.1f} s"
    )
    upload = upload_throughput(*upload_config)
    print(
        f"http upload N={upload['clients']} D={upload['dim']}: {upload['http_bytes_per_second'] / 1e6:.1f} MB/s over HTTP vs "
        f"{upload['raw_loopback_bytes_per_second'] / 1e6:.1f} MB/s raw loopback -> {100 * upload['fraction_of_raw']:.0f}% "
        f"(target >= 50%); a minimal stdlib HTTP server takes {upload['minimal_http_bytes_per_second'] / 1e6:.1f} MB/s "
        f"({100 * upload['fraction_of_minimal_http']:.0f}% of it)"
    )
    results = {
        "suite": "http",
        "quick": quick,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": multiprocessing.cpu_count()},
        "round_overhead": overhead,
        "upload_throughput": upload,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "http.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (RESULTS / "http.md").write_text(_markdown(results))
    return results


def _markdown(results: dict) -> str:
    overhead = results["round_overhead"]
    upload = results["upload_throughput"]
    return "\n".join(
        [
            "# HTTP benchmark (`python -m bench http`)",
            "",
            f"Machine: {results['machine']['platform']}, Python {results['machine']['python']}, {results['machine']['cpus']} CPUs.",
            "",
            "## One round over HTTP vs in process",
            "",
            "| N | D | in process (s) | over HTTP (s) | overhead | target | verified |",
            "|---|---|---|---|---|---|---|",
            f"| {overhead['clients']} | {overhead['dim']} | {overhead['in_process_seconds']:.2f} | {overhead['http_round_seconds']:.2f} "
            f"| {overhead['overhead_ratio']:.2f}x | <= 3x | {overhead['http_verified'] and overhead['in_process_verified']} |",
            "",
            "Server stage durations over HTTP (s): "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(overhead["http_server_stage_seconds"].items()))
            + f". CPU during the HTTP round: server process {overhead['http_server_cpu_seconds'] or 0.0:.1f} s, "
            f"client process (all {overhead['clients']} clients) {overhead['http_clients_cpu_seconds']:.1f} s; "
            f"{overhead['http_requests']} signed requests.",
            "",
            "## R2 upload throughput vs a raw loopback copy",
            "",
            "| N | D | bytes/upload | HTTP (MB/s) | raw loopback (MB/s) | fraction | target | minimal HTTP server (MB/s) | fraction |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {upload['clients']} | {upload['dim']} | {upload['bytes_per_upload']} | {upload['http_bytes_per_second'] / 1e6:.1f} "
            f"| {upload['raw_loopback_bytes_per_second'] / 1e6:.1f} | {100 * upload['fraction_of_raw']:.0f}% | >= 50% "
            f"| {upload['minimal_http_bytes_per_second'] / 1e6:.1f} | {100 * upload['fraction_of_minimal_http']:.0f}% |",
            "",
            "Throughput is bytes over the time at least one upload was in flight; an HTTP upload ends when the server "
            "has durably committed the message.",
            "",
        ]
    )


if __name__ == "__main__":
    run()
