"""Benchmark of the protocol core: ``python -m bench core [--quick]``.

For each (N, D) x dropout x graph it runs the in-process simulation (dropouts in R2,
active mode, b = 32), records every message the server receives, and then replays the
server alone in a fresh process, so the server's time and peak RSS are measured without
the clients' memory. Physical limits are measured in the same run:

* AES-256-CTR keystream from ``cryptography`` into a preallocated buffer
  (``update_into``), on one core: the floor for mask expansion. It is measured inside
  each measured process just before and after its work (the better of the two), so a
  ratio compares like with like even when other load comes and goes;
* numpy uint32 in-place add of two D-vectors: the floor for summing masked inputs.

Ratios against those limits are the figures to quote; absolute seconds on shared
2-core machines are noisy.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import resource
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from secagg.rounds import Round

RESULTS = Path(__file__).resolve().parent / "results"

GRID = [(10, 100_000), (100, 100_000), (100, 1_000_000), (500, 100_000)]
QUICK_GRID = [(10, 100_000), (100, 100_000)]
DROPOUTS = [0.0, 0.1, 0.3]
GRAPHS = ["full", "harary"]


# ------------------------------------------------------------------ limits
def aes_ctr_bytes_per_second(buffer_bytes: int = 4 << 20, total_bytes: int = 1 << 30) -> float:
    """Best of three: AES-256-CTR keystream into a preallocated buffer."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    zeros = np.zeros(buffer_bytes, dtype=np.uint8)
    out = np.empty(buffer_bytes, dtype=np.uint8)
    best = 0.0
    for _ in range(3):
        encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()
        repeats = max(1, total_bytes // buffer_bytes)
        started = time.perf_counter()
        for _ in range(repeats):
            encryptor.update_into(zeros, out)
        best = max(best, repeats * buffer_bytes / (time.perf_counter() - started))
    return best


def numpy_add_seconds(dim: int, repeats: int = 50) -> float:
    """Best time of one in-place uint32 add of two D-vectors."""
    a = np.zeros(dim, dtype=np.uint32)
    b = np.ones(dim, dtype=np.uint32)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.add(a, b, out=a)
        best = min(best, time.perf_counter() - started)
    return best


# ------------------------------------------------------------ child processes
def _simulate_child(params_dict: dict, record_path: str, queue) -> None:
    from clients.harness.simulation import DropoutRound, SimulationParameters, run_simulation
    from secagg.config import GraphKind, ProtocolMode

    params = SimulationParameters(
        clients=params_dict["clients"],
        dim=params_dict["dim"],
        dropout=params_dict["dropout"],
        dropout_round=DropoutRound(Round.MASKED_INPUT_COLLECTION.key),
        graph=GraphKind(params_dict["graph"]),
        degree=params_dict["degree"],
        mode=ProtocolMode.ACTIVE,
        bits=32,
    )
    configs = []
    aes_before = aes_ctr_bytes_per_second(total_bytes=256 << 20)
    with open(record_path, "wb") as sink:

        def record(payload: bytes | None) -> None:
            if payload is None:
                sink.write(struct.pack("<Q", 0))
            else:
                sink.write(struct.pack("<Q", len(payload)))
                sink.write(payload)

        report = run_simulation(params, recorder=record, on_config=configs.append)
    aes = max(aes_before, aes_ctr_bytes_per_second(total_bytes=256 << 20))
    queue.put((asdict(report), configs[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, aes))


def _server_child(config, record_path: str, queue) -> None:
    from secagg.graph import neighbours
    from secagg.server import ServerSession, ServerStage

    aes_before = aes_ctr_bytes_per_second(total_bytes=256 << 20)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    server = ServerSession(config, mask_threads=os.cpu_count() or 1)
    seconds: dict[str, float] = {}
    with open(record_path, "rb") as source:
        while server.stage not in (ServerStage.COMPLETED, ServerStage.ABORTED):
            header = source.read(8)
            if not header:
                break
            (length,) = struct.unpack("<Q", header)
            stage_round = server.stage.round
            assert stage_round is not None
            name = stage_round.key
            if length == 0:
                started = time.perf_counter()
                server.advance()
            else:
                payload = source.read(length)
                started = time.perf_counter()
                server.receive_bytes(payload)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
    history = {record.stage: record for record in server.history}
    advertised = history[ServerStage.ADVERTISE_KEYS].responded
    share_keys = history[ServerStage.SHARE_KEYS].responded
    survivors = server.survivors
    graph = neighbours(config, advertised, server.session_id)
    expansions = len(survivors) + sum(len(graph[v] & survivors) for v in share_keys - survivors)
    client_expansions = statistics.median(1 + len(graph[u] & share_keys) for u in share_keys)
    aes_after = aes_ctr_bytes_per_second(total_bytes=256 << 20)
    queue.put(
        {
            "aes_bytes_per_second": max(aes_before, aes_after),
            "server_round_seconds": seconds,
            "server_seconds": sum(seconds.values()),
            "server_unmask_seconds": seconds.get(Round.UNMASKING.key, 0.0),
            "server_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "server_start_rss_bytes": baseline_rss,
            "server_mask_expansions": expansions,
            "client_mask_expansions_median": client_expansions,
            "completed": server.stage is ServerStage.COMPLETED,
        }
    )


def _in_fresh_process(target, *args):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{target.__name__} exited with {process.exitcode}")
    return result


# ------------------------------------------------------------------- driver
def _harary_degree(clients: int, dropout: float) -> int | None:
    from secagg.config import ProtocolMode
    from secagg.graph import recommended_harary_degree

    return recommended_harary_degree(clients, ProtocolMode.ACTIVE, dropout_rate=dropout, corrupt_fraction=0.0)


def run_case(clients: int, dim: int, dropout: float, graph: str, add_seconds: float) -> dict:
    degree = None
    graph_used = graph
    if graph == "harary":
        degree = _harary_degree(clients, dropout)
        if degree is None:
            graph_used = "full"
    params = {"clients": clients, "dim": dim, "dropout": dropout, "graph": graph_used, "degree": degree}
    with tempfile.TemporaryDirectory(prefix="secagg-bench-") as scratch:
        record_path = os.path.join(scratch, "messages.bin")
        report, config, client_process_rss, client_aes = _in_fresh_process(_simulate_child, params, record_path)
        server = _in_fresh_process(_server_child, config, record_path)
    vector_bytes = dim * 4
    expansion_floor = server["server_mask_expansions"] * vector_bytes / server["aes_bytes_per_second"]
    client_floor = server["client_mask_expansions_median"] * vector_bytes / client_aes
    collection_floor = report["survivors"] * add_seconds
    return {
        "clients": clients,
        "dim": dim,
        "dropout": dropout,
        "graph_requested": graph,
        "aes_gb_per_s_server_process": server["aes_bytes_per_second"] / 1e9,
        "aes_gb_per_s_client_process": client_aes / 1e9,
        "graph": graph_used,
        "degree": degree,
        "verified": report["verified"],
        "survivors": report["survivors"],
        "client_round_seconds_median": report["client_round_seconds_median"],
        "client_seconds_median": report["client_seconds_median"],
        "client_r2_floor_seconds": client_floor,
        "client_r2_ratio_to_aes_limit": report["client_round_seconds_median"].get(Round.MASKED_INPUT_COLLECTION.key, 0.0)
        / client_floor,
        "server_round_seconds": server["server_round_seconds"],
        "server_seconds": server["server_seconds"],
        "server_unmask_seconds": server["server_unmask_seconds"],
        "server_mask_expansions": server["server_mask_expansions"],
        "server_unmask_floor_seconds": expansion_floor,
        "server_unmask_ratio_to_aes_limit": server["server_unmask_seconds"] / expansion_floor if expansion_floor else None,
        "server_total_ratio_to_aes_limit": server["server_seconds"] / expansion_floor if expansion_floor else None,
        "server_r2_ratio_to_add_limit": server["server_round_seconds"].get(Round.MASKED_INPUT_COLLECTION.key, 0.0)
        / collection_floor,
        "server_peak_rss_mb": server["server_peak_rss_bytes"] / 2**20,
        "server_extra_rss_mb": (server["server_peak_rss_bytes"] - server["server_start_rss_bytes"]) / 2**20,
        "vector_mb": vector_bytes / 2**20,
        "all_inputs_mb": clients * vector_bytes / 2**20,
        "simulation_peak_rss_mb": client_process_rss / 2**20,
        "bytes_up_per_client": report["bytes_up_per_client"],
        "upload_expansion": report["upload_expansion"],
    }


def _markdown(results: list[dict], limits: dict) -> str:
    lines = [
        "# secagg core benchmark",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.",
        f"Limits measured in this run: AES-256-CTR {limits['aes_ctr_gb_per_s']:.2f} GB/s into a preallocated buffer "
        "(at the start; each row's ratios use the AES rate re-measured inside its own processes, column 'AES GB/s'); "
        f"numpy uint32 add of two 1e6-vectors {limits['numpy_add_1e6_ms']:.3f} ms.",
        "Harary degree: the smallest even k >= 2 ceil(log2 N) for which every neighbourhood keeps t_s survivors "
        "with probability >= 1 - 2^-20 at the row's dropout rate (secagg.graph.recommended_harary_degree).",
        "Active mode, b = 32, dropouts in R2. Server figures from a server-only replay in a fresh process, "
        f"regenerating masks on {os.cpu_count()} threads (the AES limit above is one core's).",
        "",
        "| N | D | drop | graph (k) | ok | AES GB/s | client s (R2 / limit) | server s (/ limit) | unmask s (/ AES limit) | server R2 / add limit | server peak RSS MB (+extra) | vector MB | upload x |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        graph = r["graph"] if r["degree"] is None else f"harary ({r['degree']})"
        if r["graph_requested"] == "harary" and r["graph"] == "full":
            graph = "harary infeasible: full, same run as above"
        lines.append(
            f"| {r['clients']} | {r['dim']:.0e} | {r['dropout']:.1f} | {graph} | {'yes' if r['verified'] else 'NO'} "
            f"| {r['aes_gb_per_s_server_process']:.2f} "
            f"| {r['client_seconds_median']:.3f} ({r['client_r2_ratio_to_aes_limit']:.2f}x) "
            f"| {r['server_seconds']:.3f} ({(r['server_total_ratio_to_aes_limit'] or 0):.2f}x) | {r['server_unmask_seconds']:.3f} ({(r['server_unmask_ratio_to_aes_limit'] or 0):.2f}x) "
            f"| {r['server_r2_ratio_to_add_limit']:.2f}x | {r['server_peak_rss_mb']:.0f} (+{r['server_extra_rss_mb']:.0f}) "
            f"| {r['vector_mb']:.1f} | {r['upload_expansion']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def _targets(results: list[dict]) -> list[str]:
    notes = []
    for r in results:
        if (r["clients"], r["dim"], r["dropout"], r["graph"]) == (100, 1_000_000, 0.1, "full"):
            notes.append(
                f"N=100 D=1e6 10% full: server {r['server_seconds']:.2f} s (target <= 2 s), "
                f"{r['server_total_ratio_to_aes_limit']:.2f}x the AES-limit time of its {r['server_mask_expansions']} expansions "
                f"(target <= 3x); client {r['client_seconds_median']:.3f} s (target <= 0.5 s); "
                f"upload expansion {r['upload_expansion']:.4f} (target <= 1.1); server peak extra RSS "
                f"{r['server_extra_rss_mb']:.0f} MB vs {r['all_inputs_mb']:.0f} MB for all inputs"
            )
        if (r["clients"], r["dim"], r["dropout"], r["graph"]) == (500, 100_000, 0.3, "full"):
            notes.append(f"N=500 D=1e5 30% full: server {r['server_seconds']:.2f} s (target <= 10 s)")
    return notes


def run(argv: list[str] | None = None) -> None:
    quick = "--quick" in (argv if argv is not None else sys.argv[2:])
    grid = QUICK_GRID if quick else GRID
    RESULTS.mkdir(parents=True, exist_ok=True)
    aes = aes_ctr_bytes_per_second()
    add_1e6 = numpy_add_seconds(1_000_000)
    limits = {"aes_ctr_gb_per_s": aes / 1e9, "numpy_add_1e6_ms": add_1e6 * 1e3}
    print(f"limits: AES-256-CTR {aes / 1e9:.2f} GB/s; numpy add 1e6 uint32 {add_1e6 * 1e3:.3f} ms", flush=True)
    results = []
    for clients, dim in grid:
        add_seconds = numpy_add_seconds(dim)
        for dropout in DROPOUTS:
            for graph in GRAPHS:
                started = time.perf_counter()
                previous = results[-1] if results else None
                if (
                    graph == "harary"
                    and previous is not None
                    and _harary_degree(clients, dropout) is None
                    and (previous["clients"], previous["dim"], previous["dropout"], previous["graph"])
                    == (clients, dim, dropout, "full")
                ):
                    result = {**previous, "graph_requested": "harary"}
                else:
                    result = run_case(clients, dim, dropout, graph, add_seconds)
                results.append(result)
                print(
                    f"N={clients:4d} D={dim:.0e} drop={dropout:.1f} {result['graph']:6s} k={result['degree']} "
                    f"verified={result['verified']} client={result['client_seconds_median']:.3f}s "
                    f"server={result['server_seconds']:.3f}s unmask={result['server_unmask_seconds']:.3f}s "
                    f"({(result['server_unmask_ratio_to_aes_limit'] or 0):.2f}x AES limit) "
                    f"rss={result['server_peak_rss_mb']:.0f}MB [{time.perf_counter() - started:.0f}s wall]",
                    flush=True,
                )
    markdown = _markdown(results, limits)
    notes = _targets(results)
    if notes:
        markdown += "\n## Targets\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"
    (RESULTS / "core.md").write_text(markdown)
    (RESULTS / "core.json").write_text(json.dumps({"limits": limits, "results": results}, indent=2, sort_keys=True))
    print(markdown)


if __name__ == "__main__":
    run(sys.argv[1:])
