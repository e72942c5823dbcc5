"""Consortium trainings on the server: the signed manifests, and the rounds bound to them.

A coordinator registers a training with the manifest its members signed
(:class:`secagg.consortium.SignedManifest`, docs/CONSORTIUM.md). The server refuses one
that is not complete (a member's signature missing or wrong, a signature of a
non-member), or whose members are not enrolled exactly as listed (same id, same key,
same role, not revoked): the roster the banks signed is the roster the server knows.

Every round created for a training (``POST /v1/admin/rounds`` with ``training``) must
have the manifest's banks, in roster order, as its cohort, and the manifest's mode,
graph and threshold rule; the server then binds the manifest's hash and the step into
the round's parameters, so into its config digest and session id. The banks check the
same things themselves (the server is not trusted for this); refusing here catches an
operator's mistake before any bank sees the round. The server never reads the schema
or the plan: whether a round's dimension and declared privacy follow from them is
each bank's check.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from secagg.config import GraphKind, ProtocolMode
from secagg.consortium import CohortMismatch, ManifestError, MemberRole, SignedManifest, canonical_json
from service.db import Database, ParticipantRow, RoundRow, TrainingRoundRow, TrainingRow
from service.problems import ProblemType, ServiceProblem

LOGGER = logging.getLogger("secagg.service.trainings")


@dataclass(frozen=True, slots=True)
class RegisteredTraining:
    signed: SignedManifest
    created_at: float
    created: bool
    """False when the same manifest was already registered (registration is idempotent)."""


class TrainingRegistry:
    """The ``trainings`` and ``training_rounds`` tables (:mod:`service.db`)."""

    def __init__(self, database: Database, clock: Callable[[], float]) -> None:
        self.database = database
        self.clock = clock
        self._manifests: dict[str, SignedManifest] = {}

    def register(self, document: dict[str, Any]) -> RegisteredTraining:
        try:
            signed = SignedManifest.from_dict(document)
        except ManifestError as exc:
            raise ServiceProblem(ProblemType.INVALID_MANIFEST, str(exc)) from None
        verification = signed.verify()
        if not verification.complete:
            raise ServiceProblem(ProblemType.INVALID_MANIFEST, f"the manifest is not complete: {verification.describe()}")
        manifest = signed.manifest
        training_id = manifest.training_id
        now = self.clock()
        try:
            with self.database.write() as session:
                existing = session.get(TrainingRow, training_id)
                if existing is not None:
                    if existing.manifest_hash != signed.hash.hex():
                        raise ServiceProblem(
                            ProblemType.TRAINING_EXISTS,
                            f"training {training_id} is registered with manifest {existing.manifest_hash[:16]}…, "
                            f"not {signed.hash.hex()[:16]}…",
                        )
                    return RegisteredTraining(self._load(existing), existing.created_at, created=False)
                self._check_members(session, signed)
                session.add(
                    TrainingRow(
                        id=training_id,
                        manifest_hash=signed.hash.hex(),
                        document=canonical_json(signed.to_dict()).decode("ascii"),
                        created_at=now,
                    )
                )
        except IntegrityError:
            raise ServiceProblem(
                ProblemType.TRAINING_EXISTS, "a training with this id or manifest is already registered"
            ) from None
        LOGGER.info("training_registered", extra={"training": training_id, "manifest_hash": signed.hash.hex()})
        return RegisteredTraining(signed, now, created=True)

    @staticmethod
    def _check_members(session: Session, signed: SignedManifest) -> None:
        members = signed.manifest.members
        rows = {
            row.id: row
            for row in session.execute(select(ParticipantRow).where(ParticipantRow.id.in_([m.id for m in members]))).scalars()
        }
        for member in members:
            row = rows.get(member.id)
            if row is None:
                raise ServiceProblem(ProblemType.INVALID_MANIFEST, f"member {member.id!r} is not enrolled")
            if row.revoked_at is not None:
                raise ServiceProblem(ProblemType.INVALID_MANIFEST, f"member {member.id!r} is revoked")
            if row.public_key != member.public_key:
                raise ServiceProblem(ProblemType.INVALID_MANIFEST, f"member {member.id!r} is enrolled with another key")
            if row.role != member.role.value:
                raise ServiceProblem(
                    ProblemType.INVALID_MANIFEST,
                    f"member {member.id!r} is enrolled as {row.role}, the manifest says {member.role.value}",
                )

    def _load(self, row: TrainingRow) -> SignedManifest:
        cached = self._manifests.get(row.id)
        if cached is None:
            cached = SignedManifest.from_dict(json.loads(row.document))
            self._manifests[row.id] = cached
        return cached

    def signed_manifest(self, session: Session, training_id: str) -> SignedManifest:
        row = session.get(TrainingRow, training_id)
        if row is None:
            raise ServiceProblem(ProblemType.TRAINING_NOT_FOUND, f"no training {training_id!r}")
        return self._load(row)

    def binding_for(
        self,
        session: Session,
        training_id: str,
        step: int,
        *,
        cohort: Sequence[str],
        identity_keys: Sequence[bytes],
        mode: ProtocolMode,
        graph: GraphKind,
        degree: int | None,
        threshold: int,
    ) -> dict[str, Any]:
        """The training binding of a new round, after checking its cohort and protocol against the manifest."""
        manifest = self.signed_manifest(session, training_id).manifest
        try:
            manifest.check_cohort(cohort, identity_keys)
            manifest.check_protocol(mode=mode, graph=graph, degree=degree, threshold=threshold, cohort_size=len(cohort))
        except CohortMismatch as exc:
            raise ServiceProblem(ProblemType.UNSAFE_ROUND, f"not a round of training {training_id}: {exc}") from None
        return {"id": training_id, "manifest_hash": manifest.hash.hex(), "round": step}

    @staticmethod
    def record_round(session: Session, round_id: str, training: dict[str, Any]) -> None:
        session.add(TrainingRoundRow(round_id=round_id, training_id=training["id"], step=int(training["round"])))

    def all(self, session: Session) -> list[TrainingRow]:
        return list(session.execute(select(TrainingRow).order_by(TrainingRow.created_at)).scalars())

    def of_member(self, session: Session, participant_id: str, role: MemberRole) -> list[TrainingRow]:
        """The trainings whose manifest lists ``participant_id`` with ``role``."""
        chosen = []
        for row in self.all(session):
            member = self._load(row).manifest.member(participant_id)
            if member is not None and member.role is role:
                chosen.append(row)
        return chosen

    @staticmethod
    def rounds(session: Session, training_id: str) -> list[tuple[RoundRow, int]]:
        return [
            (row, step)
            for row, step in session.execute(
                select(RoundRow, TrainingRoundRow.step)
                .join(TrainingRoundRow, TrainingRoundRow.round_id == RoundRow.id)
                .where(TrainingRoundRow.training_id == training_id)
                .order_by(RoundRow.created_at)
            ).all()
        ]

    def view(self, session: Session, row: TrainingRow) -> dict[str, Any]:
        """The ``TrainingOut`` body."""
        signed = self._load(row)
        return {
            "training_id": row.id,
            "manifest_hash": row.manifest_hash,
            "members": [
                {"id": m.id, "role": m.role.value, "public_key": base64.b64encode(m.public_key).decode("ascii")}
                for m in signed.manifest.members
            ],
            "created_at": row.created_at,
            "rounds": [
                {
                    "round_id": round_row.id,
                    "round": step,
                    "stage": round_row.stage,
                    "outcome": round_row.outcome,
                    "abort_reason": round_row.abort_reason,
                    "created_at": round_row.created_at,
                    "finished_at": round_row.finished_at,
                }
                for round_row, step in self.rounds(session, row.id)
            ],
            "document": signed.to_dict(),
        }
