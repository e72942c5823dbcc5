"""A round's fixed parameters as the service stores them, and the limits a round must respect.

A round's parameters never change once it is created: the cohort (enrolled ids and their
identity keys, in protocol order), the threshold, mode, neighbour graph, dimension and
ring, the per-stage deadlines, the declared DP policy and, for a round of a consortium's
training, the training it belongs to (id, manifest hash, step). They are stored as canonical
JSON in ``rounds.parameters`` and rebuild the core's :class:`~secagg.config.RoundConfig`
(whose digest the clients sign in R0). The body limit of a round's uploads follows from
them through the shared contract (:func:`secagg.http_contract.max_client_message_bytes`).

``chunk_bytes`` cuts the round's vectors into chunks (:class:`secagg.chunks.ChunkLayout`):
the unit of masked-input upload, of the running sum's storage, of the unmasking and of
the result's download. It is a transport parameter, not part of the config digest. A
masked input whose vector fits in one chunk may still be sent as one message body; a
larger one travels as a declared, chunked upload (``docs/API.md``, section 5).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from secagg.chunks import DEFAULT_CHUNK_BYTES, ChunkLayout
from secagg.config import MAX_DIM as CORE_MAX_DIM
from secagg.config import PROTOCOL_VERSION, GraphKind, ProtocolMode, RoundConfig
from secagg.http_contract import max_client_message_bytes
from secagg.messages import masked_input_size
from secagg.server import ServerStage
from service.db import RoundRow

ROUND_ID_BYTES = 16
"""Round ids: 128 random bits from the server's CSPRNG, in hex."""

MAX_DIM = CORE_MAX_DIM
"""The largest vector a round may use: the core's 2^30 elements. Vectors travel, are stored
and are unmasked in chunks, so no request and no task holds more than a chunk of one."""


@dataclass(frozen=True, slots=True)
class StoredParameters:
    """A round's fixed parameters as stored (canonical JSON in ``rounds.parameters``)."""

    round_id: str
    cohort_ids: tuple[str, ...]
    identity_keys: tuple[bytes, ...]
    threshold: int
    mode: ProtocolMode
    graph: GraphKind
    degree: int | None
    dim: int
    bits: int
    deadlines: dict[str, float]
    dp_policy: dict[str, Any]
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    training: dict[str, Any] | None = None
    """``{"id", "manifest_hash" (hex), "round"}`` for a round of a training, else None."""

    def config(self) -> RoundConfig:
        return RoundConfig(
            round_id=bytes.fromhex(self.round_id),
            identity_keys=self.identity_keys,
            threshold=self.threshold,
            dim=self.dim,
            bits=self.bits,
            mode=self.mode,
            graph=self.graph,
            degree=self.degree,
            manifest_hash=None if self.training is None else bytes.fromhex(self.training["manifest_hash"]),
            training_round=None if self.training is None else int(self.training["round"]),
        )

    @property
    def layout(self) -> ChunkLayout:
        return ChunkLayout(self.dim, self.bits, self.chunk_bytes)

    @property
    def masked_input_fits_one_body(self) -> bool:
        """True iff a masked input may be sent whole to ``POST messages`` (its vector fits one chunk)."""
        return self.layout.count == 1

    @property
    def max_message_bytes(self) -> int:
        """The largest body ``POST messages`` accepts: every message, a masked input only if it fits one chunk."""
        others = max_client_message_bytes(len(self.cohort_ids), 1, self.bits)
        if self.masked_input_fits_one_body:
            return max(others, masked_input_size(self.dim, self.bits))
        return others

    def index_of(self, participant_id: str) -> int | None:
        """The participant's protocol index in this round, or None if not in the cohort."""
        try:
            return self.cohort_ids.index(participant_id)
        except ValueError:
            return None

    def deadline_for(self, stage: ServerStage) -> float:
        """Seconds of silence after which a running ``stage`` closes (keyed ``"R0"`` … ``"R4"`` in the API)."""
        stage_round = stage.round
        if stage_round is None:
            raise ValueError(f"{stage.value} has no deadline")
        return float(self.deadlines[stage_round.key])

    def to_json(self) -> str:
        return json.dumps(
            {
                "round_id": self.round_id,
                "cohort": [
                    {"id": pid, "public_key": key.hex()} for pid, key in zip(self.cohort_ids, self.identity_keys, strict=True)
                ],
                "threshold": self.threshold,
                "mode": self.mode.value,
                "graph": self.graph.value,
                "degree": self.degree,
                "dim": self.dim,
                "bits": self.bits,
                "deadlines": self.deadlines,
                "dp_policy": self.dp_policy,
                "chunk_bytes": self.chunk_bytes,
                **({} if self.training is None else {"training": self.training}),
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> StoredParameters:
        raw = json.loads(text)
        return cls(
            round_id=raw["round_id"],
            cohort_ids=tuple(member["id"] for member in raw["cohort"]),
            identity_keys=tuple(bytes.fromhex(member["public_key"]) for member in raw["cohort"]),
            threshold=raw["threshold"],
            mode=ProtocolMode(raw["mode"]),
            graph=GraphKind(raw["graph"]),
            degree=raw["degree"],
            dim=raw["dim"],
            bits=raw["bits"],
            deadlines=raw["deadlines"],
            dp_policy=raw["dp_policy"],
            chunk_bytes=raw.get("chunk_bytes", DEFAULT_CHUNK_BYTES),
            training=raw.get("training"),
        )

    def public_dict(self, row: RoundRow) -> dict[str, Any]:
        """The ``RoundParameters`` response body."""
        return {
            "round_id": self.round_id,
            "protocol_version": PROTOCOL_VERSION,
            "cohort": [
                {"index": index, "id": pid, "public_key": base64.b64encode(key).decode("ascii")}
                for index, (pid, key) in enumerate(zip(self.cohort_ids, self.identity_keys, strict=True))
            ],
            "threshold": self.threshold,
            "mode": self.mode,
            "graph": self.graph,
            "degree": self.degree,
            "dim": self.dim,
            "bits": self.bits,
            "dp_policy": self.dp_policy,
            "deadlines": self.deadlines,
            "training": self.training,
            "config_digest": self.config().digest().hex(),
            "max_message_bytes": self.max_message_bytes,
            "chunk_bytes": self.chunk_bytes,
            "chunks": self.layout.count,
            "stage": row.stage,
            "stage_deadline": row.stage_deadline,
            "created_at": row.created_at,
        }
