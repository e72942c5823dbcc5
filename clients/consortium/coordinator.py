"""The coordinator: ``secagg consortium run``, from a signed manifest to a completed training.

What it does, over the server's admin API only (:class:`~clients.consortium.admin.AdminClient`):

1. reads the signed manifest and refuses it unless every member signed it;
2. enrols every member with its role and key (a member already enrolled with the same
   key and role is left as it is; with another key, the run stops: the server's roster
   must be the manifest's);
3. registers the training (the server checks the signatures and the enrolments again);
4. for every step (:class:`~clients.training.rules.TrainingRules`: the statistics round
   when the schema needs one, then the plan's rounds) opens a round with exactly the
   parameters the manifest implies, waits for it to finish, and reopens a round that
   aborted, at most ``max_attempts`` times per step, logging the abort reason; a step
   whose round already completed (a restarted coordinator) is not opened again, and a
   running one is waited for;
5. shows progress in a live table (one row per step) and ends with the training's outcome.

The coordinator never sees a bank's data, key or update; the banks check every round
against the manifest themselves, so a coordinator (or a server) that opens a different
round only gets it refused.

Exit codes: 0 every step completed; 2 the manifest or an option is unusable; 5 a step
aborted ``max_attempts`` times; 7 the server refused a request (enrolment, registration,
round); 8 the server stayed unreachable.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clients.consortium.admin import AdminClient
from clients.runtime.errors import ClientError, ExitCode, ServerRefused
from clients.training.rules import STATISTICS_STEP, TrainingRules
from secagg.consortium import SignedManifest
from secagg.rounds import Round

DEFAULT_DEADLINES: dict[str, float] = {item.key: 600.0 if item is Round.ADVERTISE_KEYS else 120.0 for item in Round}
"""Seconds per stage: R0 covers the banks' local training (DP-SGD runs before a bank advertises its keys)."""
DEFAULT_MAX_ATTEMPTS = 3
STATUS_INTERVAL_SECONDS = 0.25


class CoordinatorError(ClientError):
    """The training could not be completed as the manifest says (the reason is in the message)."""

    exit_code = ExitCode.ROUND_ABORTED_BY_SERVER


@dataclass
class StepProgress:
    """One step of the training as the coordinator sees it (the live table's row)."""

    step: int
    kind: str
    round_id: str | None = None
    stage: str = "waiting"
    responded: int = 0
    expected: int = 0
    attempts: int = 0
    outcome: str | None = None
    survivors: int | None = None
    started: float | None = None
    seconds: float | None = None
    aborts: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "kind": self.kind,
            "round_id": self.round_id,
            "attempts": self.attempts,
            "outcome": self.outcome,
            "survivors": self.survivors,
            "seconds": self.seconds,
            "aborts": self.aborts,
        }


def _survivors(status: dict[str, Any]) -> int | None:
    survivors = status.get("survivors")
    return None if survivors is None else len(survivors)


def enrol_members(admin: AdminClient, signed: SignedManifest) -> list[str]:
    """Enrol every member the server does not know yet; returns the ids newly enrolled."""
    known = {participant["id"]: participant for participant in admin.participants()}
    enrolled = []
    for member in signed.manifest.members:
        existing = known.get(member.id)
        if existing is None:
            try:
                admin.enroll(member.id, member.public_key, role=member.role.value)
                enrolled.append(member.id)
                continue
            except ServerRefused as refused:
                if refused.problem_type != "participant-exists":
                    raise
                # Enrolled meanwhile (another coordinator of another training): compare below.
                existing = next((p for p in admin.participants() if p["id"] == member.id), None)
                if existing is None:
                    raise
        if base64.b64decode(existing["public_key"]) != member.public_key or existing["role"] != member.role.value:
            raise ServerRefused(
                409, "participant-exists", f"{member.id} is enrolled with another key or role than the manifest lists"
            )
        if existing["status"] != "active":
            raise ServerRefused(409, "revoked-key", f"{member.id} is revoked on the server")
    return enrolled


def run_training(
    admin: AdminClient,
    signed: SignedManifest,
    *,
    deadlines: dict[str, float] | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    on_progress: Callable[[list[StepProgress]], None] | None = None,
    log: Callable[[str], None] = lambda line: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Run the whole training (module docstring); returns the summary, raises :class:`CoordinatorError` on failure."""
    signed.require_complete()
    manifest = signed.manifest
    rules = TrainingRules(manifest)
    stage_deadlines = {**DEFAULT_DEADLINES, **(deadlines or {})}
    enrolled = enrol_members(admin, signed)
    if enrolled:
        log(f"enrolled {', '.join(enrolled)}")
    registered = admin.register_training(signed.to_dict())
    log(f"training {manifest.training_id} registered (manifest {registered['manifest_hash'][:16]}…)")
    progress = [StepProgress(step, "statistics" if step == STATISTICS_STEP else "training") for step in rules.steps]
    show = on_progress or (lambda rows: None)
    started = clock()
    for row in progress:
        _complete_step(admin, rules, row, stage_deadlines, max_attempts, progress, show, log, clock, sleep)
    show(progress)
    return {
        "training_id": manifest.training_id,
        "manifest_hash": manifest.hash.hex(),
        "banks": [bank.id for bank in rules.banks],
        "threshold": rules.threshold,
        "rounds_completed": sum(1 for row in progress if row.kind == "training" and row.outcome == "completed"),
        "rounds_planned": rules.plan.rounds,
        "aborted_rounds": sum(len(row.aborts) for row in progress),
        "seconds": clock() - started,
        "steps": [row.to_dict() for row in progress],
    }


def _complete_step(
    admin: AdminClient,
    rules: TrainingRules,
    row: StepProgress,
    deadlines: dict[str, float],
    max_attempts: int,
    progress: list[StepProgress],
    show: Callable[[list[StepProgress]], None],
    log: Callable[[str], None],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    training_id = rules.manifest.training_id
    existing = [item for item in admin.training(training_id)["rounds"] if item["round"] == row.step]
    completed = [item for item in existing if item["outcome"] == "completed"]
    if completed:
        status = admin.round_status(completed[0]["round_id"])
        row.round_id, row.outcome, row.stage, row.survivors = status["round_id"], "completed", status["stage"], _survivors(status)
        row.attempts = len(existing)
        return
    row.attempts = len([item for item in existing if item["outcome"] == "aborted"])
    running = [item for item in existing if item["outcome"] is None]
    round_id = running[0]["round_id"] if running else None
    notes = f"training {training_id}, step {row.step} ({row.kind})"
    while True:
        if round_id is None:
            if row.attempts >= max_attempts:
                row.outcome = "aborted"
                show(progress)
                reasons = (
                    "; ".join(f"{abort['round_id'][:8]}: {abort['reason']}" for abort in row.aborts) or "earlier attempts aborted"
                )
                raise CoordinatorError(f"step {row.step} aborted {row.attempts} times ({reasons}); giving up")
            created = admin.create_round(rules.round_request(row.step, deadlines=deadlines, notes=notes))
            round_id = created["round_id"]
            row.attempts += 1
            log(f"step {row.step}: opened round {round_id} (attempt {row.attempts} of {max_attempts})")
        row.round_id, row.started, row.outcome = round_id, clock(), None
        status = _wait(admin, row, progress, show, clock, sleep)
        row.seconds = clock() - row.started
        if status["outcome"] == "completed":
            row.outcome, row.survivors = "completed", _survivors(status)
            log(f"step {row.step}: round {round_id} completed with {row.survivors} banks in the sum")
            show(progress)
            return
        reason = f"{status.get('abort_reason')}: {status.get('abort_detail') or ''}".rstrip(": ")
        row.aborts.append({"round_id": round_id, "reason": reason})
        log(f"step {row.step}: round {round_id} aborted ({reason}); reopening")
        round_id = None


def _wait(
    admin: AdminClient,
    row: StepProgress,
    progress: list[StepProgress],
    show: Callable[[list[StepProgress]], None],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> dict[str, Any]:
    assert row.round_id is not None
    while True:
        status = admin.round_status(row.round_id)
        row.stage = status["stage"]
        row.expected, row.responded = len(status["expected"]), len(status["responded"])
        row.seconds = clock() - (row.started or clock())
        show(progress)
        if status["outcome"] is not None:
            return dict(status)
        sleep(STATUS_INTERVAL_SECONDS)


def progress_table(rows: list[StepProgress], title: str) -> Any:
    """The live table: one row per step."""
    from rich import box
    from rich.table import Table

    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        caption="step 0: statistics (exact sums, not DP); answered: banks that answered the current stage; "
        "attempts: rounds opened for the step (an aborted one is reopened)",
    )
    for header in ("step", "kind", "round", "stage", "answered", "attempts", "outcome", "in sum", "s"):
        table.add_column(
            header, justify="right" if header in ("step", "answered", "attempts", "in sum", "s") else "left", no_wrap=True
        )
    for row in rows:
        table.add_row(
            str(row.step),
            row.kind,
            (row.round_id or "")[:8],
            row.stage if row.round_id else "waiting",
            f"{row.responded}/{row.expected}" if row.round_id and row.outcome is None else "",
            str(row.attempts),
            row.outcome or "",
            "" if row.survivors is None else str(row.survivors),
            "" if row.seconds is None else f"{row.seconds:.1f}",
        )
    return table
