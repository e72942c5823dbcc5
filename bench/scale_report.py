"""``bench/results/scale.md`` from the ``scale_<part>.json`` files that exist (``python -m bench scale``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def _load(results: Path, part: str) -> dict | None:
    path = results / f"scale_{part}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:.0f} MB"


def _ok(value: bool) -> str:
    return "met" if value else "MISSED"


def write_markdown(results: Path) -> None:
    lines = ["# Scale benchmarks (`python -m bench scale`)", ""]
    machine = next(
        (data["machine"] for part in ("big", "unmask", "round", "load", "ray", "replays") if (data := _load(results, part))), None
    )
    if machine:
        lines += [f"Machine: {machine['platform']}, Python {machine['python']}, {machine['cpus']} CPUs (shared).", ""]
        loads = {
            part: data["load_average_before"][0]
            for part in ("big", "unmask", "round", "load", "ray", "replays")
            if (data := _load(results, part)) and "load_average_before" in data
        }
        if loads:
            lines += [
                "One-minute load average when each part started (other work on the machine competes for its 2 cores): "
                + ", ".join(f"{part} {value:.1f}" for part, value in loads.items())
                + ".",
                "",
            ]
    big = _load(results, "big")
    if big:
        lines += [
            "## Big vectors over HTTP (N = 10, 10% dropout, b = 32, loopback)",
            "",
            "| D | exact | server peak RSS (target 1.5 GB) | R2 upload / raw loopback (target 25%) | expansion / AES time of its masks on its cores (target 1.5x) | R4-completing request (target 100 ms) |",
            "|---|---|---|---|---|---|",
        ]
        for row in big["rounds"]:
            ratio = row["expansion_ratio_to_aes"]
            lines.append(
                f"| {row['dim']:.0e} ({row['chunk_bytes'] >> 20} MiB chunks) | {row['verified']} | {_mb(row['server_peak_rss_bytes'])} "
                f"({_ok((row['server_peak_rss_bytes'] or 0) <= row['rss_target_bytes'])}) "
                f"| {row['r2_http_bytes_per_second'] / 1e6:.0f} / {row['raw_loopback_bytes_per_second'] / 1e6:.0f} MB/s = "
                f"{100 * row['r2_fraction_of_raw']:.1f}% ({_ok(row['r2_fraction_of_raw'] >= row['r2_target_fraction'])}) "
                f"| {row['expansion_seconds'] or 0:.1f} s / {row['expansion_aes_floor_seconds']:.1f} s = "
                f"{ratio or 0:.2f}x ({_ok(ratio is not None and ratio <= row['expansion_target_ratio'])}) "
                f"| {1000 * (row['r4_completing_request_seconds'] or 0):.0f} ms "
                f"({_ok((row['r4_completing_request_seconds'] or 1) <= row['r4_target_seconds'])}) |"
            )
        lines += [
            "",
            "AES-256-CTR measured in the same run, per core; the expansion ran on the process pool (one worker per core).",
            "The uploads start once every honest client has computed its masked input (the ten clients share this",
            "machine's two cores in one process), so their time is the transfer and the server's work; the R4 message",
            "that completes the stage is sent once the other survivors' have been acknowledged, so its latency is its own.",
            "",
            "What limits R2 and the expansion, measured in the same run (the same bytes, the same chunks):",
            "",
            "| D | R2 upload | bare web stack (uvicorn + Starlette, same requests) | SQLite durable chunk store (same chunks, one commit each) | R2 / storage limit | cores used during the uploads: server / clients | expansion | storage floor of the expansion (read the sums, store the result) | expansion / max(AES, storage) | other R4 requests (median) | R2 silence window / longest honest silence |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in big["rounds"]:
            if "sqlite_durable_chunk_bytes_per_second" not in row:
                continue
            lines.append(
                f"| {row['dim']:.0e} ({row['chunk_bytes'] >> 20} MiB chunks) | {row['r2_http_bytes_per_second'] / 1e6:.0f} MB/s "
                f"| {row['asgi_stack_bytes_per_second'] / 1e6:.0f} MB/s "
                f"({100 * row['asgi_stack_bytes_per_second'] / row['raw_loopback_bytes_per_second']:.0f}% of raw) "
                f"| {row['sqlite_durable_chunk_bytes_per_second'] / 1e6:.0f} MB/s "
                f"({100 * row['sqlite_durable_chunk_bytes_per_second'] / row['raw_loopback_bytes_per_second']:.0f}% of raw) "
                f"| {100 * row['r2_fraction_of_storage_limit']:.0f}% "
                f"| {row.get('r2_server_cores') or 0:.2f} / {row.get('r2_clients_cores') or 0:.2f} "
                f"| {row['expansion_seconds'] or 0:.2f} s | {row['expansion_storage_floor_seconds']:.2f} s "
                f"| {row['expansion_ratio_to_aes_and_storage'] or 0:.1f}x "
                f"| {1000 * (row['r4_other_requests_seconds_median'] or 0):.0f} ms "
                f"| {row['r2_silence_window_seconds']:.0f} s / {row['r2_longest_honest_silence_seconds'] or 0:.1f} s |"
            )
        lines.append("")
        accounts = [(row["dim"], row["round_cpu_account"]) for row in big["rounds"] if "round_cpu_account" in row]
        if accounts:
            lines += [
                "The machine during each round (`/proc/stat`): "
                + "; ".join(
                    f"D = {dim:.0e}: other jobs {account['others_cores']:.2f} cores, "
                    f"{account['steal_seconds']:.0f} s of CPU stolen by the hypervisor in {account['wall_seconds']:.0f} s"
                    for dim, account in accounts
                )
                + ".",
                "",
            ]
    unmask = _load(results, "unmask")
    if unmask:
        lines += [
            f"## Unmasking scaling (N = {unmask['clients']}, D = {unmask['dim']:.0e}, {int(100 * unmask['dropout'])}% dropout, "
            f"{unmask['masks']} masks, {unmask['tasks']} chunk tasks of {unmask['chunk_bytes'] >> 20} MiB)",
            "",
            "| engine | 1 worker (s, median) | 2 workers (s, median) | speedup, median (target 1.7x) | speedup of each run "
            "| per task (s) | projected 16 cores (s) | projected 64 cores (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, times in unmask["seconds"].items():
            projection = unmask["projection"][name]
            each = ", ".join(f"{value:.2f}x" for value in unmask.get("speedup_at_2_runs", {}).get(name, []))
            lines.append(
                f"| {name} | {times['1']:.1f} | {times['2']:.1f} | {unmask['speedup_at_2'][name]:.2f}x "
                f"({_ok(unmask['speedup_at_2'][name] >= unmask['speedup_target'])}) | {each or 'n/a'} "
                f"| {unmask['per_task_seconds'][name]:.3f} "
                f"| {projection['16']['seconds']:.1f} | {projection['64']['seconds']:.1f} |"
            )
        lines += [
            "",
            f"AES-CTR floor on one core for these masks: {unmask['aes_floor_one_core_seconds']:.1f} s "
            f"({unmask['aes_bytes_per_second_per_core'] / 1e9:.2f} GB/s). Projection: ceil(tasks / cores) x the measured "
            "per-task cost (docs/SCALING.md).",
            "",
        ]
        if "cpu" in unmask:
            before = unmask["kernel_speedup_two_processes_before"]
            after = unmask["kernel_speedup_two_processes_after"]
            lines += [
                "The cores the workers got, in the last repetition: CPU in the benchmark's process tree and in "
                "every other process on the machine during each run (`/proc`), in cores (CPU seconds / wall seconds):",
                "",
                "| engine | workers | wall (s) | cores used by the benchmark | cores used by other jobs | steal (s) |",
                "|---|---|---|---|---|---|",
            ]
            for name, by_workers in unmask["cpu"].items():
                for workers, account in by_workers.items():
                    lines.append(
                        f"| {name} | {workers} | {account['wall_seconds']:.1f} | {account['ours_cores']:.2f} "
                        f"| {account['others_cores']:.2f} | {account['steal_seconds']:.1f} |"
                    )
            one_worker_cpu = {
                name: by_workers["1"]["ours_cpu_seconds"] / unmask["tasks"] for name, by_workers in unmask["cpu"].items()
            }
            lines += [
                "",
                "CPU seconds per task with one worker (what a free core takes; the AES-CTR floor per task is "
                f"{unmask['aes_floor_one_core_seconds'] / unmask['tasks']:.2f} s): "
                + ", ".join(f"{name} {value:.2f} s" for name, value in one_worker_cpu.items())
                + ". Projected from it, ceil(tasks / cores) x CPU per task: "
                + ", ".join(
                    f"{name} {-(-unmask['tasks'] // 16) * value:.1f} s on 16 cores, {-(-unmask['tasks'] // 64) * value:.1f} s on 64"
                    for name, value in one_worker_cpu.items()
                )
                + ".",
                "",
                "The chunk-task kernel alone, one task in one process and then two at once in two processes (no engine): "
                f"speedup {before['speedup_median']:.2f}x before the runs and {after['speedup_median']:.2f}x after "
                f"(median of {len(before['alone_seconds'])}; best {max(before['speedup_best'], after['speedup_best']):.2f}x). "
                f"That is the most two workers could give at that moment. A task is {unmask['task_pickle_bytes'] / 1e3:.0f} kB "
                f"pickled and returns {unmask['result_bytes_per_task'] >> 20} MiB; pickling every task took "
                f"{unmask['pickling_seconds_all_tasks'] * 1000:.0f} ms in all. Affinity: {unmask['affinity_cpus']} CPUs.",
                "",
            ]
    ray = _load(results, "ray")
    if ray:
        lines += [
            "## Ray simulation",
            "",
            f"`secagg {ray['command']}`: verified {ray['verified']}, {ray['survivors']} survivors, {ray['dropped']} dropped, "
            f"degree {ray['degree']}, client aborts {ray['client_aborts']}; wall time {ray['wall_seconds']:.0f} s "
            f"(server {ray['server_seconds']:.0f} s, median client {ray['client_seconds_median']:.1f} s).",
            "",
        ]
    round_ = _load(results, "round")
    if round_:
        lines += [
            "## One round over HTTP vs in process",
            "",
            f"N = {round_['clients']}, D = {round_['dim']:.0e}: {round_['http_round_seconds']:.1f} s over HTTP vs "
            f"{round_['in_process_seconds']:.1f} s in process = {round_['overhead_ratio']:.2f}x "
            f"(target 2x: {_ok(round_['overhead_ratio'] <= round_['target_ratio'])}); verified "
            f"{round_['http_verified'] and round_['in_process_verified']}; {round_['http_requests']} signed requests; CPU "
            f"server {round_['http_server_cpu_seconds'] or 0:.1f} s, clients {round_['http_clients_cpu_seconds']:.1f} s.",
            "",
        ]
    load = _load(results, "load")
    if load:
        lines += [
            "## Load over HTTP (D = 1e4, 10% dropout)",
            "",
            "| N | graph | silence window (s) | runs completed exactly | honest clients excluded | server CPU per client per stage (ms, median) | requests/s (median) | round wall (s, median) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        groups: dict[tuple[int, str, float], list[dict]] = {}
        for row in load["results"]:
            groups.setdefault((row["clients"], row["graph"], row.get("silence_seconds", 10.0)), []).append(row)
        for (clients, graph, silence), rows in groups.items():
            exact = sum(1 for row in rows if row["verified"] and row["honest_excluded"] == 0)
            cpu = [row["server_cpu_per_client_per_stage_ms"] for row in rows if row["server_cpu_per_client_per_stage_ms"]]
            rate = [row["requests_per_second"] for row in rows if row["requests_per_second"]]
            wall = [row["round_wall_seconds"] for row in rows]
            lines.append(
                f"| {clients} | {graph} | {silence:g} | {exact}/{len(rows)} | {sum(row['honest_excluded'] for row in rows)} "
                f"| {statistics.median(cpu) if cpu else 0:.1f} | {statistics.median(rate) if rate else 0:.0f} "
                f"| {statistics.median(wall):.1f} |"
            )
        lines += [
            "",
            "The simulated banks share this machine's two cores in one process and take turns on them (as many "
            "compute at once as there are cores), so a stage makes progress every one bank's computation, as when "
            "each bank computes on its own machine; the silence window is the simulation's default.",
            "",
        ]
    replays = _load(results, "replays")
    if replays and "before" in replays:
        lines += [
            "## Full replays per round on two workers (PostgreSQL)",
            "",
            f"N = {replays['clients']}, {replays['workers']} workers, every request on a new connection: "
            f"{replays['before']['full_replays']} full replays per round before (commit {replays['baseline_ref']}), "
            f"{replays['after']['full_replays']} after (catch-up; a worker replays only a round it has never seen).",
            "",
        ]
    (results / "scale.md").write_text("\n".join(lines))
