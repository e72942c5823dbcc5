"""Hostile aggregation servers on loopback, over real sockets, for the bank client's tests.

:class:`ScriptedServer` is a raw TCP server in a thread that answers each connection with a
script (a function given the request head and the socket), so a test can trickle bytes,
send far more than announced, or play a colluding server whose messages a real client
must refuse. :class:`ColludingRoundServer` scripts the API of ``docs/API.md`` for one
round: it describes the round, accepts the client's R0 upload and answers with a key list
in which one colluding bank's signed entry carries a small-order X25519 key.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from secagg.client import ClientSession
from secagg.config import RoundConfig
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom
from secagg.messages import AdvertiseKeys, KeyList, decode, encode
from secagg.protocol import advertise_statement

SMALL_ORDER_X25519_POINT = bytes(32)
"""u = 0, the first point of Bernstein's list of small-order X25519 public keys."""

Script = Callable[[bytes, bytes, socket.socket], None]
"""(request head, request body, connection) -> answers on the connection."""


@dataclass
class ScriptedServer:
    script: Script
    sent_bytes: int = 0
    finished_sending: threading.Event = field(default_factory=threading.Event)
    requests: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)
        self._listener.close()

    def send(self, connection: socket.socket, data: bytes) -> None:
        connection.sendall(data)
        self.sent_bytes += len(data)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(30)
            try:
                while not self._stopping.is_set():
                    head, body = _read_request(connection)
                    if not head:
                        return
                    self.requests.append(head)
                    self.script(head, body, connection)
            except OSError:
                return
            finally:
                self.finished_sending.set()


def _read_request(connection: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head, rest


def response_head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def answer(server: ScriptedServer, connection: socket.socket, status: int, body: bytes, content_type: str) -> None:
    server.send(connection, response_head(status, {"Content-Type": content_type, "Content-Length": str(len(body))}) + body)


def trickle(server: ScriptedServer, connection: socket.socket, data: bytes, *, interval: float) -> None:
    """Send ``data`` one byte every ``interval`` seconds (each byte arrives before any per-read timeout)."""
    for index in range(len(data)):
        server.send(connection, data[index : index + 1])
        time.sleep(interval)


def description(config: RoundConfig, member_ids: list[str], stage: str) -> dict:
    """The ``GET /v1/rounds/{id}`` body of a round of ``config`` (``RoundParameters``)."""
    return {
        "round_id": config.round_id.hex(),
        "protocol_version": 1,
        "cohort": [
            {"index": index, "id": pid, "public_key": base64.b64encode(key).decode("ascii")}
            for index, (pid, key) in enumerate(zip(member_ids, config.identity_keys, strict=True))
        ],
        "threshold": config.threshold,
        "mode": config.mode.value,
        "graph": config.graph.value,
        "degree": config.degree,
        "dim": config.dim,
        "bits": config.bits,
        "dp_policy": {"privacy": []},
        "config_digest": config.digest().hex(),
        "stage": stage,
    }


class ColludingRoundServer:
    """A server that, with bank ``colluder``, hands the client under test (member 0) a key list
    whose entry for ``colluder`` is validly signed by it but carries a small-order X25519 key."""

    def __init__(self, client_public_key: bytes, *, n: int = 4, threshold: int = 3, dim: int = 8, colluder: int = 3) -> None:
        source = DeterministicRandom.from_int(404)
        self.identities = [SigningKey.generate(source) for _ in range(n - 1)]
        self.member_ids = ["bank-under-test", *(f"bank-{index}" for index in range(1, n))]
        self.config = RoundConfig(
            round_id=source.random_bytes(16),
            identity_keys=(client_public_key, *(key.public_bytes for key in self.identities)),
            threshold=threshold,
            dim=dim,
            bits=32,
            mode="active",
            graph="full",
        )
        self.colluder = colluder
        self.advertised: AdvertiseKeys | None = None
        self.http = ScriptedServer(self._script)

    @property
    def round_id(self) -> str:
        return self.config.round_id.hex()

    def _others(self) -> list[AdvertiseKeys]:
        entries: list[AdvertiseKeys] = []
        digest = self.config.digest()
        for member in range(1, self.config.participant_count):
            identity = self.identities[member - 1]
            session = ClientSession(
                self.config,
                member,
                identity,
                self.config.ring.zeros(self.config.dim),
                source=DeterministicRandom.from_int(member),
            )
            entry = session.start()
            assert isinstance(entry, AdvertiseKeys)
            if member == self.colluder:
                statement = advertise_statement(digest, member, SMALL_ORDER_X25519_POINT, entry.masking_public_key)
                entry = AdvertiseKeys(
                    config_digest=digest,
                    sender=member,
                    encryption_public_key=SMALL_ORDER_X25519_POINT,
                    masking_public_key=entry.masking_public_key,
                    signature=identity.sign(statement),
                )
            entries.append(entry)
        return entries

    def _script(self, head: bytes, body: bytes, connection: socket.socket) -> None:
        method, target = head.split(b" ")[:2]
        path = target.decode("latin-1")
        server = self.http
        if method == b"GET" and path == f"/v1/rounds/{self.round_id}":
            stage = "R0-advertise-keys"
            answer(
                server, connection, 200, json.dumps(description(self.config, self.member_ids, stage)).encode(), "application/json"
            )
        elif method == b"POST" and path == f"/v1/rounds/{self.round_id}/messages":
            message = decode(body)
            if isinstance(message, AdvertiseKeys):
                self.advertised = message
            answer(server, connection, 202, json.dumps({"status": "accepted"}).encode(), "application/json")
        elif method == b"GET" and path.startswith(f"/v1/rounds/{self.round_id}/messages/me") and self.advertised is not None:
            key_list = KeyList(config_digest=self.config.digest(), entries=(self.advertised, *self._others()))
            answer(server, connection, 200, encode(key_list), "application/octet-stream")
        else:
            problem = {"type": "urn:secagg:problem:not-found", "title": "x", "status": 404, "detail": path}
            answer(server, connection, 404, json.dumps(problem).encode(), "application/problem+json")
