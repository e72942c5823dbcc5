"""Request and response schemas of the HTTP API (separate models for each direction).

Requests refuse unknown members (``extra="forbid"``). Protocol messages and vectors are
never JSON: they travel as ``application/octet-stream`` (see ``docs/API.md``).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from secagg.chunks import CHUNK_ALIGNMENT_BYTES, DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES
from secagg.config import MAX_PARTICIPANTS, GraphKind, ProtocolMode

ParticipantId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
RoundId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
TrainingId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]
StageSeconds = Annotated[float, Field(gt=0, le=7 * 24 * 3600)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


class ParticipantRole(str, Enum):
    BANK = "bank"
    AUDITOR = "auditor"


class ParticipantStatus(str, Enum):
    ACTIVE = "active"
    REVOKED = "revoked"


class ParticipantCreate(_Request):
    id: ParticipantId
    public_key: Annotated[str, StringConstraints(min_length=44, max_length=44)] = Field(
        description="Standard base64 of the raw 32-byte Ed25519 public key (RFC 8032)."
    )
    role: ParticipantRole


class ParticipantOut(_Response):
    id: str
    public_key: str
    role: ParticipantRole
    status: ParticipantStatus
    enrolled_at: float
    revoked_at: float | None


class ParticipantList(_Response):
    participants: list[ParticipantOut]


class Deadlines(_Request):
    """Seconds of silence after which each stage closes with whoever answered (if >= t).

    Silence is counted from the stage's last progress: its opening, an accepted message,
    a member's first fetch of its request for the stage, a declared masked-input upload
    or an accepted chunk. A stage never closes while this server still processes an
    upload for it that arrived in time.
    """

    R0: StageSeconds = 300.0
    R1: StageSeconds = 300.0
    R2: StageSeconds = 600.0
    R3: StageSeconds = 300.0
    R4: StageSeconds = 300.0


class PrivacyItem(_Request):
    unit: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    mechanism: Annotated[str, StringConstraints(min_length=1, max_length=60)]
    parameters: dict[str, Any]


class DpPolicy(_Request):
    """The round's DP prescription, recorded verbatim in the server ledger (``dp.audit.round_records``)."""

    privacy: Annotated[list[PrivacyItem], Field(max_length=8)] = []
    notes: Annotated[str, StringConstraints(max_length=2000)] | None = None


class RoundCreate(_Request):
    cohort: Annotated[list[ParticipantId], Field(min_length=2, max_length=MAX_PARTICIPANTS)] = Field(
        description="Participant ids in protocol order: participant index i is cohort[i]."
    )
    threshold: Annotated[int, Field(ge=1, le=MAX_PARTICIPANTS)]
    mode: ProtocolMode = ProtocolMode.ACTIVE
    graph: GraphKind = GraphKind.FULL
    degree: Annotated[int, Field(ge=2, le=MAX_PARTICIPANTS)] | None = None
    dim: Annotated[int, Field(ge=1)]
    bits: Annotated[int, Field(ge=8, le=64)] = 32
    dp_policy: DpPolicy = DpPolicy()
    deadlines: Deadlines = Deadlines()
    chunk_bytes: Annotated[int, Field(ge=MIN_CHUNK_BYTES, le=MAX_CHUNK_BYTES, multiple_of=CHUNK_ALIGNMENT_BYTES)] = Field(
        default=DEFAULT_CHUNK_BYTES,
        description="Bytes per chunk of the round's vectors (upload, storage, unmasking, download); not in the config digest.",
    )
    training: TrainingRef | None = Field(
        default=None, description="The consortium training and step this round belongs to (its manifest hash is bound in)."
    )


class TrainingRef(_Request):
    """The training a new round belongs to, and its step (0 statistics, 1.. training rounds)."""

    id: TrainingId
    round: Annotated[int, Field(ge=0, le=(1 << 32) - 1)]


class SignedManifestIn(_Request):
    """A signed consortium manifest (``secagg.consortium.SignedManifest``, docs/CONSORTIUM.md)."""

    format: Literal["secagg-signed-manifest/1"]
    manifest: dict[str, Any]
    signatures: dict[str, str]


class TrainingBinding(_Response):
    id: str
    manifest_hash: str = Field(description="Hex SHA-256 of the manifest's canonical JSON (in the round's config digest).")
    round: int


class TrainingMember(_Response):
    id: str
    role: Literal["bank", "auditor"]
    public_key: str = Field(description="Standard base64 of the raw Ed25519 identity key.")


class TrainingRound(_Response):
    round_id: str
    round: int
    stage: str
    outcome: Literal["completed", "aborted"] | None
    abort_reason: str | None
    created_at: float
    finished_at: float | None


class TrainingOut(_Response):
    training_id: str
    manifest_hash: str
    members: list[TrainingMember]
    created_at: float
    rounds: list[TrainingRound]
    document: dict[str, Any] = Field(description="The signed manifest as registered (format, manifest, signatures).")


class TrainingList(_Response):
    trainings: list[TrainingOut]


class AbortRequest(_Request):
    detail: Annotated[str, StringConstraints(min_length=1, max_length=500)]


class CohortMember(_Response):
    index: int
    id: str
    public_key: str = Field(description="Standard base64 of the raw Ed25519 identity key.")


class RoundParameters(_Response):
    round_id: str
    protocol_version: int
    cohort: list[CohortMember]
    threshold: int
    mode: ProtocolMode
    graph: GraphKind
    degree: int | None
    dim: int
    bits: int
    dp_policy: dict[str, Any]
    deadlines: dict[str, float]
    training: TrainingBinding | None = None
    config_digest: str = Field(description="Hex of secagg.config.RoundConfig.digest().")
    max_message_bytes: int = Field(description="The largest body POST messages accepts for this round.")
    chunk_bytes: int = Field(description="Bytes per chunk of the round's vectors.")
    chunks: int = Field(description="Chunks per vector: ceil(dim * element width / chunk_bytes).")
    stage: str
    stage_deadline: float | None
    created_at: float


class StageRecordOut(_Response):
    stage: str
    expected: list[int]
    responded: list[int]
    closed_at: float
    inconsistent_share_holders: list[int] | None = None
    """R4 only: protocol indices of the holders that revealed a share off its owner's polynomial."""


class RoundStatus(_Response):
    round_id: str
    stage: str
    stage_started_at: float
    stage_deadline: float | None
    parameters: RoundParameters
    expected: list[int]
    responded: list[int]
    history: list[StageRecordOut]
    survivors: list[int] | None
    outcome: Literal["completed", "aborted"] | None
    abort_reason: str | None
    abort_detail: str | None
    created_at: float
    finished_at: float | None
    ledger_recorded: bool


class RoundList(_Response):
    rounds: list[RoundStatus]


class MessageAck(_Response):
    round_id: str
    stage: str
    sender: int
    status: Literal["accepted", "already-accepted"]
    message_sha256: str
    closed_stage: bool = Field(default=False, description="True iff this message completed its stage.")


class UploadDeclaration(_Request):
    """The manifest of a chunked masked-input upload: its 46-byte header and each chunk's SHA-256."""

    header: Annotated[str, StringConstraints(min_length=64, max_length=64)] = Field(
        description="Standard base64 of the MaskedInput's first 46 bytes (docs/WIRE.md, section 6.5)."
    )
    chunk_sha256: Annotated[
        list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]], Field(min_length=1, max_length=1 << 20)
    ] = Field(description="Lowercase hex SHA-256 of each chunk of the vector, in chunk order.")


class UploadStatus(_Response):
    round_id: str
    sender: int
    upload_sha256: str = Field(description="SHA-256 binding the header, chunk_bytes and every chunk digest (docs/WIRE.md).")
    chunk_bytes: int
    chunks: int
    received: list[int] = Field(description="Chunks already stored (a resumed upload sends only the others).")
    committed: bool


class ChunkAck(_Response):
    round_id: str
    sender: int
    chunk: int
    status: Literal["accepted", "already-accepted"]
    chunk_sha256: str


class WorkItem(_Response):
    round_id: str
    stage: str
    action: Literal["advertise-keys", "respond"]
    stage_deadline: float | None
    training_id: str | None = None
    training_round: int | None = None


class WorkList(_Response):
    items: list[WorkItem]


class ResultOut(_Response):
    round_id: str
    dim: int
    bits: int
    survivors: list[int]
    result_sha256: str
    vector_base64: str = Field(description="The sum as little-endian unsigned integers of the ring's container width.")


class AuditRound(_Response):
    round_id: str
    parameters: RoundParameters
    stage: str
    survivors: dict[str, list[str]] = Field(description="Per closed stage, the participant ids that answered it.")
    outcome: Literal["completed", "aborted"] | None
    abort_reason: str | None
    abort_detail: str | None
    created_at: float
    finished_at: float | None
    ledger_recorded: bool


class AuditRoundList(_Response):
    rounds: list[AuditRound]


class Health(_Response):
    status: Literal["ok", "unavailable"]
