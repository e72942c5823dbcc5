"""Benchmark of what unauthenticated and refused requests cost the server: ``python -m bench hardening``.

1. **Unauthenticated bodies.** 20 connections without an admin token each announce and
   send a 4 MiB JSON body to ``POST /v1/admin/participants``. Figure: the server
   process's peak resident memory (``VmHWM``) after them against its resident memory
   before them, in the same run. A server that reads bodies before the token check
   buffers them; one that checks the header first answers 401 and closes.
2. **Refused uploads.** N = 100, active mode: 99 members' R0 uploads are accepted, then
   20 uploads with a bad protocol signature are refused (422). Figures: the number of
   round replays they caused (from the server's log) and their mean latency against the
   accepted uploads' mean latency in the same run. Each replay rebuilds the round from
   the database under the round's lock, so it grows with the cohort.

On a shared 2-core machine absolute numbers are noisy; the ratios are the figures.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import multiprocessing
import platform
import secrets
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
UNAUTHENTICATED_CONNECTIONS = 20
BODY_BYTES = 4 * 1024 * 1024
REFUSED_UPLOADS = 20


def _memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def _send_unauthenticated_body(port: int) -> None:
    head = (
        "POST /v1/admin/participants HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {BODY_BYTES}\r\n\r\n"
    ).encode("ascii")
    body = b'{"id": "' + b"a" * (BODY_BYTES - 10) + b'"}      '
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(head + body[:BODY_BYTES])
            connection.recv(4096)
    except OSError:
        pass  # a server that answers early and closes cuts the upload short


def unauthenticated_memory() -> dict:
    from clients.harness.local_server import LocalServer

    with LocalServer(dev=False) as server:
        assert server.process is not None
        pid = server.process.pid
        time.sleep(1.0)
        before = _memory_kib(pid, "VmRSS")
        threads = [
            threading.Thread(target=_send_unauthenticated_body, args=(server.port,)) for _ in range(UNAUTHENTICATED_CONNECTIONS)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        peak = _memory_kib(pid, "VmHWM")
    return {
        "connections": UNAUTHENTICATED_CONNECTIONS,
        "body_bytes": BODY_BYTES,
        "rss_before_mib": before / 1024,
        "peak_rss_after_mib": peak / 1024,
        "increase_mib": (peak - before) / 1024,
        "peak_over_before": peak / before,
        "seconds": seconds,
    }


def _replays(log: str, round_id: str) -> int:
    count = 0
    for line in log.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            count += entry.get("event") == "session_replayed" and entry.get("round_id") == round_id
    return count


def refused_upload_replays(clients: int = 100) -> dict:
    import httpx

    from clients.harness.local_server import LocalServer
    from secagg.client import ClientSession
    from secagg.hazmat.keys import SigningKey
    from secagg.hazmat.randomness import DeterministicRandom
    from secagg.http_contract import sign_request
    from secagg.messages import decode, encode

    keys = [SigningKey.generate(DeterministicRandom.from_int(9000 + index)) for index in range(clients)]
    ids = [f"bench-{index:03d}" for index in range(clients)]
    with LocalServer(dev=False) as server, httpx.Client(base_url=server.base_url, timeout=120) as http:
        admin = {"Authorization": f"Bearer {server.admin_token}"}
        for pid, key in zip(ids, keys, strict=True):
            body = {"id": pid, "public_key": base64.b64encode(key.public_bytes).decode(), "role": "bank"}
            assert http.post("/v1/admin/participants", json=body, headers=admin).status_code == 201
        threshold = 2 * clients // 3 + 1
        round_id = http.post(
            "/v1/admin/rounds", json={"cohort": ids, "threshold": threshold, "mode": "active", "dim": 16}, headers=admin
        ).json()["round_id"]

        def signed_post(index: int, payload: bytes) -> tuple[int, float]:
            path = f"/v1/rounds/{round_id}/messages"
            headers = sign_request(
                keys[index], "POST", path, payload, key_id=ids[index], now=int(time.time()), nonce=secrets.token_hex(16)
            )
            headers["Content-Type"] = "application/octet-stream"
            started = time.perf_counter()
            status = http.post(path, content=payload, headers=headers).status_code
            return status, time.perf_counter() - started

        description = http.get(f"/v1/rounds/{round_id}", headers=_signed_get_headers(keys[0], ids[0], f"/v1/rounds/{round_id}"))
        from tests.service.harness import config_from_parameters

        config = config_from_parameters(description.json())
        advertisements = [
            encode(ClientSession(config, index, keys[index], config.ring.zeros(config.dim)).start()) for index in range(clients)
        ]
        accepted = []
        for index in range(clients - 1):
            status, seconds = signed_post(index, advertisements[index])
            assert status == 202, status
            accepted.append(seconds)
        replays_before = _replays(server.log_tail(1 << 30), round_id)
        forged = encode(dataclasses.replace(decode(advertisements[-1]), signature=b"\x01" * 64))
        refused = []
        for _ in range(REFUSED_UPLOADS):
            status, seconds = signed_post(clients - 1, forged)
            assert status == 422, status
            refused.append(seconds)
        status, last = signed_post(clients - 1, advertisements[-1])
        assert status == 202, status
        time.sleep(0.5)
        replays = _replays(server.log_tail(1 << 30), round_id) - replays_before
    return {
        "clients": clients,
        "refused_uploads": REFUSED_UPLOADS,
        "replays_caused": replays,
        "accepted_mean_seconds": statistics.mean(accepted[1:]),
        "refused_mean_seconds": statistics.mean(refused),
        "upload_after_refusals_seconds": last,
        "refused_over_accepted": statistics.mean(refused) / statistics.mean(accepted[1:]),
    }


def _signed_get_headers(key, key_id: str, path: str) -> dict[str, str]:
    from secagg.http_contract import sign_request

    return sign_request(key, "GET", path, b"", key_id=key_id, now=int(time.time()), nonce=secrets.token_hex(16))


def run(argv: list[str] | None = None) -> dict:
    arguments = sys.argv[2:] if argv is None else argv
    memory = unauthenticated_memory()
    print(
        f"hardening: {memory['connections']} token-less 4 MiB admin bodies: server RSS {memory['rss_before_mib']:.0f} MiB "
        f"before, peak {memory['peak_rss_after_mib']:.0f} MiB after ({memory['peak_over_before']:.2f}x)"
    )
    replays = refused_upload_replays(20 if "--quick" in arguments else 100)
    print(
        f"hardening: N={replays['clients']}: {replays['refused_uploads']} refused uploads caused {replays['replays_caused']} "
        f"replays; refused {1000 * replays['refused_mean_seconds']:.1f} ms vs accepted "
        f"{1000 * replays['accepted_mean_seconds']:.1f} ms per upload ({replays['refused_over_accepted']:.2f}x)"
    )
    results = {
        "suite": "hardening",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": multiprocessing.cpu_count()},
        "unauthenticated_memory": memory,
        "refused_upload_replays": replays,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hardening.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (RESULTS / "hardening.md").write_text(_markdown(results))
    return results


def _markdown(results: dict) -> str:
    memory = results["unauthenticated_memory"]
    replays = results["refused_upload_replays"]
    machine = results["machine"]
    return "\n".join(
        [
            "# Hardening benchmark (`python -m bench hardening`)",
            "",
            f"Machine: {machine['platform']}, Python {machine['python']}, {machine['cpus']} CPUs.",
            "",
            "| figure | value | baseline (same run) | ratio |",
            "|---|---|---|---|",
            f"| server peak RSS after {memory['connections']} token-less 4 MiB admin bodies | "
            f"{memory['peak_rss_after_mib']:.0f} MiB | RSS before: {memory['rss_before_mib']:.0f} MiB | "
            f"{memory['peak_over_before']:.2f}x |",
            f"| replays caused by {replays['refused_uploads']} refused R0 uploads, N={replays['clients']} | "
            f"{replays['replays_caused']} | 0 wanted | |",
            f"| mean latency of a refused upload, N={replays['clients']} | {1000 * replays['refused_mean_seconds']:.1f} ms | "
            f"accepted upload: {1000 * replays['accepted_mean_seconds']:.1f} ms | {replays['refused_over_accepted']:.2f}x |",
            "",
        ]
    )
