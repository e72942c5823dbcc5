"""A bank's side of a consortium's training: ``secagg train --manifest``.

The consortium's signed manifest (:mod:`secagg.consortium`, docs/CONSORTIUM.md) fixes the
members, the schema, the plan and the protocol; :class:`~clients.training.rules.TrainingRules`
derives from it what every round must be. :func:`train_federated` then, in order:

1. checks the manifest is signed by every member and holds this bank's key as a bank;
   checks the rounds it implies against the bank's policy (:class:`~clients.runtime.policy.ClientPolicy`)
   and the plan's whole spend against the bank's own budget (the policy's ``[budget]``,
   :mod:`clients.training.budget_store`): a stricter budget than the plan's is refused
   here, before anything is trained or sent; for a bank's own model, builds the module with
   this bank's factory and refuses (:class:`ModelDiffers`) unless its parameter names and
   shapes are the manifest's layout and Opacus can train it;
2. for each step (0: the statistics round when the schema has no standardisation; 1..R:
   the training rounds), finds its round in the training's round list
   (``GET /v1/trainings/{id}``; a bank sees only its own training), and checks it
   (:meth:`TrainingRules.check_round`): bound to this manifest's hash, cohort exactly the
   manifest's banks and keys, mode, threshold, step, dimension, ring and declared
   privacy as the manifest prescribes. A round that differs is **refused and skipped**:
   logged in the progress log, remembered so it is never taken again, nothing trained,
   spent or sent; the bank waits for the next round of the step;
3. for a training round: checks the budget (a refusal is recorded and ends the run,
   exit code 3), trains with Opacus DP-SGD from the current global model, clips and
   encodes the update and keeps it (mode 0600) so a restart sends the very same input;
   runs the protocol (:func:`clients.runtime.runner.run_round`), and **charges the
   privacy ledger at the point of release**: just before its masked input leaves (R2),
   the first message that depends on its data. A round that ends before that (aborted,
   or continued without this bank) costs nothing and is recorded as ``unreleased``
   (docs/LEDGER.md section 9.3). Once the masked input has left, the spend stands
   whatever follows: the other survivors' shares suffice to unmask it;
4. applies the round's public result (the mean of the survivors' updates) to the global
   model, which every bank computes identically, and records the step as completed.

**Resuming.** Everything a restart needs is in the work directory: the training state
(``training-state.json``: completed steps, the round in progress, refused rounds), the
standardised schema, the global model after the last completed step, the kept update of
the round in progress and the protocol state files (``rounds/``, :mod:`clients.runtime.state`).
Rerunning the same command after a crash resumes the round in progress if it is still
running (byte-identical messages), applies its result if it completed meanwhile, and
applies the public result of any step completed while the bank was away, so every bank
ends with the same model. The budget spent before the crash stays spent.

The plan's privacy units and defaults are described in :mod:`clients.training.plan`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from clients.runtime.errors import (
    ClientError,
    ClientRefusedRound,
    ExcludedFromRound,
    ExitCode,
    PolicyViolation,
    ResumeRefused,
    RoundAbortedByServer,
    ServerRefused,
    ServerUnavailable,
)
from clients.runtime.inputs import ClientInput, RealVectorInput, RingVectorInput
from clients.runtime.policy import ClientPolicy
from clients.runtime.retry import PollSchedule, RetryPolicy
from clients.runtime.transport import (
    Pending,
    RoundAborted,
    RoundDescription,
    RoundResult,
    RoundTransport,
    TrainingBinding,
)
from clients.training.budget_store import BudgetAccount, BudgetStore
from clients.training.model_file import parameters_sha256
from clients.training.plan import (
    STATISTICS_CLIP,
    FederatedError,
    apply_mean_update,
    clip_l2,
    labels_for,
    rotation_seed,
)
from clients.training.rules import STATISTICS_STEP, RefusalReason, RoundRefused, TrainingRules
from clients.training.tabular import (
    Dataset,
    MomentSums,
    Preprocessor,
    RawTable,
    TabularSchema,
    moment_sums,
    read_csv,
    statistics_from_sums,
)
from dp.atomic_files import PUBLIC_MODE, read_private_file, remove_file, write_atomic, write_private_file
from secagg.config import RoundConfig
from secagg.consortium import Manifest, ManifestError, MemberRole, SignedManifest
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import SystemRandom
from secagg.http_contract import ProblemType, problem_suffix
from secagg.rounds import Round

PROGRESS_FILE = "progress.jsonl"
MODEL_FILE = "global-model.npy"
STATE_FILE = "training-state.json"
ACCOUNTANT_FILE = "accountant.json"
STANDARDIZED_SCHEMA_FILE = "schema-standardized.json"
UPDATES_DIR = "updates"
ROUND_STATES_DIR = "rounds"
STATE_FORMAT = "secagg-bank-training/1"
DEFAULT_SERVER_TIMEOUT = 30.0
"""Seconds of consecutive connection failures before a bank gives up on the server."""
POLL = PollSchedule(initial_interval=0.2, multiplier=1.3, max_interval=1.0, timeout=1800.0)
"""Polls for the next stage: start at 0.2 s, never wait more than 1 s (a consortium of a handful of banks)."""
LIST_INTERVAL_SECONDS = 0.3
"""How often a bank waiting for its next round reads the training's round list."""
LIST_MAX_BYTES = 4 << 20
"""The largest answer to the round list a bank reads (a training's rounds and manifest)."""
_NOT_ENROLLED_YET = frozenset({ProblemType.UNKNOWN_KEY.suffix, ProblemType.BAD_REQUEST_SIGNATURE.suffix})


class TrainingIncomplete(FederatedError):
    """No round of the next step opened (or completed) within the bank's round timeout."""

    exit_code = ExitCode.TRAINING_INCOMPLETE


class BudgetRefused(FederatedError):
    """This bank's own budget refuses the training (or its next round); nothing was sent for it."""

    exit_code = ExitCode.POLICY_REFUSED


# --------------------------------------------------------------------------- the job and its state


@dataclass(frozen=True)
class BankJob:
    """Everything a bank needs: its data, the manifest it signed, its key, policy and server."""

    data: Path
    manifest: Path
    work_dir: Path
    server: str
    key: Path
    policy: Path
    participant_id: str | None = None
    passphrase: bytes | None = field(default=None, repr=False)
    ca_bundle: Path | None = None
    target: str | None = None
    positive: str | None = None
    round_timeout: float = 600.0
    server_timeout: float = DEFAULT_SERVER_TIMEOUT


@dataclass
class TrainingState:
    """The bank's progress through one training (``training-state.json``; no secrets)."""

    training_id: str
    manifest_hash: str
    participant_id: str
    budget_id: str
    completed: list[dict[str, Any]] = field(default_factory=list)
    current: dict[str, Any] | None = None
    refused: list[str] = field(default_factory=list)

    @property
    def completed_steps(self) -> set[int]:
        return {int(item["step"]) for item in self.completed}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "training_id": self.training_id,
            "manifest_hash": self.manifest_hash,
            "participant_id": self.participant_id,
            "budget_id": self.budget_id,
            "completed": self.completed,
            "current": self.current,
            "refused": self.refused,
        }

    def save(self, work_dir: Path) -> None:
        write_atomic(
            work_dir / STATE_FILE, (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode(), mode=PUBLIC_MODE
        )

    @classmethod
    def load(cls, work_dir: Path) -> TrainingState | None:
        path = work_dir / STATE_FILE
        if not path.exists():
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
            if value.get("format") != STATE_FORMAT:
                raise ValueError(f"not a {STATE_FORMAT} file")
            return cls(
                training_id=str(value["training_id"]),
                manifest_hash=str(value["manifest_hash"]),
                participant_id=str(value["participant_id"]),
                budget_id=str(value["budget_id"]),
                completed=list(value["completed"]),
                current=value["current"],
                refused=list(value["refused"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ResumeRefused(f"{path} cannot be read ({exc}); refusing to resume") from None


class ProgressLog:
    """The bank's progress, one JSON object per line (no vectors, no secrets): what the operator and the demo see."""

    def __init__(self, path: Path, on_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.path = path
        self.on_event = on_event

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "time": time.time(), **fields}, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self.on_event is not None:
            self.on_event(event, fields)

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        events = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line being written
        return events


# --------------------------------------------------------------------------- the training's round list


def _problem_type(response: Any) -> str:
    try:
        value = response.json()
    except ValueError:
        return ""
    problem = value.get("type", "") if isinstance(value, dict) else ""
    return problem_suffix(str(problem)) or ""


class TrainingRounds:
    """The rounds of this bank's training: signed ``GET /v1/trainings/{id}`` (docs/API.md section 5).

    Read through the bank's :class:`~clients.runtime.http_transport.HttpTransport` (signed,
    retried, the answer bounded like every other). A bank not enrolled yet, or a training
    not registered yet, is waited for like a round that has not opened (``--round-timeout``);
    a server unreachable past ``unreachable_timeout`` ends the run.
    """

    def __init__(self, http: Any, training_id: str, *, unreachable_timeout: float = DEFAULT_SERVER_TIMEOUT) -> None:
        self._http = http
        self._path = f"/v1/trainings/{training_id}"
        self._unreachable_timeout = unreachable_timeout
        self._unreachable_since: float | None = None
        self.waiting_for_registration = False

    def list(self) -> list[dict[str, Any]] | None:
        """The training's rounds (step, outcome, stage), or None while the server or the training is not there yet."""
        try:
            answer = self._http.signed_get(self._path, max_bytes=LIST_MAX_BYTES)
        except ServerUnavailable as unavailable:
            self._unavailable(f"cannot reach the server: {unavailable}")
            return None
        self._unreachable_since = None
        if answer.status_code != 200:
            problem = _problem_type(answer)
            if (answer.status_code == 401 and problem in _NOT_ENROLLED_YET) or (
                answer.status_code == 404 and problem == ProblemType.TRAINING_NOT_FOUND.suffix
            ):
                # Not enrolled, or the training not registered, yet: the coordinator does both;
                # the bank waits for its round as long as for any other (--round-timeout). The
                # server answers an unknown id like a wrong signature, so strangers cannot probe ids.
                self.waiting_for_registration = True
                return None
            self._http.refuse(answer)
        self.waiting_for_registration = False
        return list(answer.json().get("rounds", []))

    def _unavailable(self, reason: str) -> None:
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
        if now - self._unreachable_since >= self._unreachable_timeout:
            raise ServerUnavailable(f"{reason} (for {self._unreachable_timeout:g} s); giving up")


# --------------------------------------------------------------------------- contributions


@dataclass(frozen=True)
class Contribution:
    """What a bank sends in one round."""

    client_input: ClientInput
    kind: str


def real_contribution(vector: np.ndarray, *, clip: float) -> Contribution:
    """Fixed-point encoding (stochastic rounding, :mod:`secagg.encoding`); every |coordinate| must be <= ``clip``."""
    if not np.all(np.abs(vector) <= clip):
        raise FederatedError(f"a coordinate of this bank's vector exceeds the agreed bound {clip:g}; refusing to send it")
    return Contribution(RealVectorInput(np.asarray(vector, dtype=np.float64), clip=clip), "real")


def decode_sum(
    rules: TrainingRules, step: int, config: RoundConfig, ring_sum: np.ndarray, survivors: int, round_id: str
) -> np.ndarray:
    """The real-valued sum of the survivors' vectors from the round's ring sum (any bank can decode it)."""
    if step == STATISTICS_STEP:
        encoding = RealVectorInput(np.zeros(config.dim), clip=STATISTICS_CLIP).encoding_for(config)
        return encoding.decode_sum(ring_sum)
    distributed = rules.plan.distributed_config(
        rules.parameter_count, min_survivors=config.threshold, max_clients=config.participant_count
    )
    if distributed is None:
        encoding = RealVectorInput(np.zeros(config.dim), clip=rules.plan.update_clip).encoding_for(config)
        return encoding.decode_sum(ring_sum)
    from dp.mechanisms.distributed import Reduction, decode_aggregate

    return decode_aggregate(
        ring_sum, distributed, rotation_seed=rotation_seed(round_id), survivors=survivors, reduction=Reduction.SUM
    )


class StepEnd(str, Enum):
    APPLIED = "applied"
    ABORTED = "aborted"
    REFUSED = "refused"


@dataclass
class _Bank:
    """One bank's run: its job, identity, rules, budget and connections."""

    job: BankJob
    participant_id: str
    identity: SigningKey
    manifest: Manifest
    rules: TrainingRules
    policy: ClientPolicy
    table: RawTable
    progress: ProgressLog
    state: TrainingState
    transport: RoundTransport
    rounds: TrainingRounds
    guard: Any
    schema: TabularSchema
    global_model: np.ndarray | None = None
    trainer: Any = None
    dataset: Any = None

    @property
    def work_dir(self) -> Path:
        return self.job.work_dir

    def save_state(self) -> None:
        self.state.save(self.work_dir)


# --------------------------------------------------------------------------- one step


def _update_path(bank: _Bank, step: int, round_id: str) -> Path:
    return bank.work_dir / UPDATES_DIR / f"step-{step}-{round_id}.npy"


def _save_vector(path: Path, vector: np.ndarray) -> None:
    import io

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, vector, allow_pickle=False)
    write_private_file(path, buffer.getvalue(), overwrite=True)


def _load_vector(path: Path) -> np.ndarray | None:
    import io

    try:
        return np.load(io.BytesIO(read_private_file(path)), allow_pickle=False)
    except FileNotFoundError:
        return None


def _contributions(description: RoundDescription) -> dict[Any, Any]:
    from dp.audit.round_records import RoundPrivacy

    declared: Any = (description.dp_policy or {}).get("privacy", [])
    return {item.unit: item.event for item in (RoundPrivacy.from_dict(x) for x in declared)}


def _prepare(bank: _Bank, step: int, description: RoundDescription) -> Contribution:
    """This bank's input for the round: the same bytes again after a restart (kept, mode 0600)."""
    path = _update_path(bank, step, description.round_id)
    if step == STATISTICS_STEP:
        return real_contribution(moment_sums(bank.table, bank.schema).to_vector(), clip=STATISTICS_CLIP)
    plan = bank.rules.plan
    config = description.config
    distributed = plan.distributed_config(
        bank.rules.parameter_count, min_survivors=config.threshold, max_clients=config.participant_count
    )
    kept = _load_vector(path)
    if kept is None:
        assert bank.global_model is not None
        update = bank.trainer.train_round(bank.global_model, bank.dataset.features, bank.dataset.labels)
        clipped = clip_l2(update.model_update.astype(np.float64), plan.update_clip)
        if distributed is None:
            kept = clipped
        else:
            from dp.mechanisms.distributed import encode_update

            kept = encode_update(
                clipped, distributed, rotation_seed=rotation_seed(description.round_id), source=SystemRandom()
            ).values
        _save_vector(path, kept)
    if distributed is None:
        return real_contribution(kept, clip=plan.update_clip)
    return Contribution(RingVectorInput(kept), "skellam")


def _await_result(transport: RoundTransport, round_id: str, timeout: float) -> RoundResult | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        delivery = transport.fetch_result(round_id)
        if isinstance(delivery, RoundResult):
            return delivery
        if isinstance(delivery, RoundAborted):
            return None
        assert isinstance(delivery, Pending)
        if not delivery.long_polled:
            time.sleep(0.3)
    raise TrainingIncomplete(f"no result for round {round_id} within {timeout:g} s")


def _refuse(bank: _Bank, round_id: str, refusal: RoundRefused) -> StepEnd:
    bank.progress.write("refused", round_id=round_id, reason=refusal.reason.value, detail=refusal.detail)
    if round_id not in bank.state.refused:
        bank.state.refused.append(round_id)
    if bank.state.current is not None and bank.state.current.get("round_id") == round_id:
        bank.state.current = None
    bank.save_state()
    return StepEnd.REFUSED


def _apply(bank: _Bank, step: int, description: RoundDescription, result: RoundResult, *, contributed: bool) -> None:
    round_id = description.round_id
    survivors = tuple(result.survivors)
    total = decode_sum(bank.rules, step, description.config, result.vector, len(survivors), round_id)
    fields: dict[str, Any] = {"step": step, "round_id": round_id, "survivors": len(survivors), "contributed": contributed}
    if step == STATISTICS_STEP:
        names = [column.name for column in bank.schema.numeric_columns]
        bank.schema = bank.schema.with_statistics(statistics_from_sums(bank.schema, MomentSums.from_vector(names, total)))
        bank.schema.save(bank.work_dir / STANDARDIZED_SCHEMA_FILE)
        fields["schema_sha256"] = hashlib.sha256((bank.work_dir / STANDARDIZED_SCHEMA_FILE).read_bytes()).hexdigest()
    else:
        assert bank.global_model is not None
        bank.global_model = apply_mean_update(bank.global_model, total / len(survivors), bank.rules.plan)
        buffer = _npy_bytes(bank.global_model)
        write_atomic(bank.work_dir / MODEL_FILE, buffer, mode=PUBLIC_MODE)
        fields["model_sha256"] = parameters_sha256(bank.global_model)
    bank.state.completed.append(fields)
    bank.state.current = None
    bank.save_state()
    remove_file(_update_path(bank, step, round_id))
    from dp.audit.privacy_ledger import PrivacyUnit

    bank.progress.write(
        "statistics" if step == STATISTICS_STEP else "round",
        **fields,
        round=step,
        of=bank.rules.plan.rounds,
        epsilon=bank.guard.spent(PrivacyUnit.EXAMPLE),
        participant_epsilon=_participant_spent(bank),
        delta=bank.rules.plan.delta,
    )


def _npy_bytes(vector: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, vector, allow_pickle=False)
    return buffer.getvalue()


def _participant_spent(bank: _Bank) -> float | None:
    from dp.audit.privacy_ledger import PrivacyUnit

    if PrivacyUnit.PARTICIPANT not in bank.guard.policy.budgets:
        return None
    return float(bank.guard.spent(PrivacyUnit.PARTICIPANT))


def _catch_up(bank: _Bank, step: int, round_id: str) -> StepEnd:
    """Apply the public result of a step's round that completed without this bank (it was away)."""
    try:
        description = bank.transport.describe_round(round_id)
    except (PolicyViolation, ServerRefused) as unusable:
        return _refuse(bank, round_id, RoundRefused(RefusalReason.POLICY, str(unusable)))
    try:
        bank.rules.check_round(description, step=step)
    except RoundRefused as refusal:
        return _refuse(bank, round_id, refusal)
    result = _await_result(bank.transport, round_id, bank.job.round_timeout)
    if result is None:
        return StepEnd.ABORTED
    index = list(description.member_ids or ()).index(bank.participant_id)
    _apply(bank, step, description, result, contributed=index in result.survivors)
    return StepEnd.APPLIED


def _join(bank: _Bank, step: int, round_id: str) -> StepEnd:
    """Take part in ``round_id`` as step ``step`` (or resume it); see the module docstring."""
    from clients.runtime.runner import Outcome, run_round
    from dp.audit.privacy_ledger import UnreleasedReason

    transport = bank.transport
    try:
        description = transport.describe_round(round_id)
    except (PolicyViolation, ServerRefused) as unusable:  # a digest that does not match, a description it cannot use
        return _refuse(bank, round_id, RoundRefused(RefusalReason.POLICY, str(unusable)))
    resuming = bank.state.current is not None and bank.state.current.get("round_id") == round_id
    try:
        bank.rules.check_round(description, step=step)
        if not description.is_open and not resuming:
            raise RoundRefused(RefusalReason.NOT_OPEN, f"round {round_id} is {description.status}")
        bank.policy.check(description, identity_public_key=bank.identity.public_bytes, participant_id=bank.participant_id)
    except RoundRefused as refusal:
        return _refuse(bank, round_id, refusal)
    except PolicyViolation as violation:
        return _refuse(bank, round_id, RoundRefused(RefusalReason.POLICY, str(violation)))
    contributions = _contributions(description)
    if contributions and not resuming:
        from dp.budget import BudgetExceeded

        try:
            bank.guard.check_round(round_id=round_id, contributions=contributions)
        except BudgetExceeded as exceeded:
            bank.progress.write("budget-refused", round_id=round_id, detail=str(exceeded))
            raise BudgetRefused(str(exceeded)) from None
    bank.state.current = {"step": step, "round_id": round_id}
    bank.save_state()
    contribution = _prepare(bank, step, description)

    def release() -> None:
        if contributions and not bank.guard.spent_in(round_id):
            bank.guard.charge_round(round_id=round_id, contributions=contributions)
            bank.progress.write("released", round_id=round_id, step=step)

    result: RoundResult | None = None
    contributed = False
    try:
        outcome = run_round(
            transport=transport,
            round_id=round_id,
            identity=bank.identity,
            client_input=contribution.client_input,
            policy=bank.policy,
            state_dir=bank.work_dir / ROUND_STATES_DIR,
            participant_id=bank.participant_id,
            poll=POLL,
            before_release=release,
        )
        result = outcome.result if outcome.result is not None else _await_result(transport, round_id, bank.job.round_timeout)
        contributed = outcome.outcome is Outcome.COMPLETED
    except (ExcludedFromRound, ServerUnavailable, ResumeRefused, PolicyViolation) as left:
        # Left out of a stage, network lost mid-round, the round's state file already closed
        # before a crash, or the round closed before this (restarted) bank had started it:
        # the round goes on (or went on) without this bank's next message; its public result
        # tells whether this bank's input is in it.
        bank.progress.write("left-out", round_id=round_id, reason=f"{type(left).__name__}: {left}")
        result = _await_result(transport, round_id, bank.job.round_timeout)
        if result is not None:
            index = list(description.member_ids or ()).index(bank.participant_id)
            contributed = index in result.survivors
    except RoundAbortedByServer as aborted:
        bank.progress.write("aborted", round_id=round_id, reason=aborted.reason)
    except ClientRefusedRound as refusal:
        bank.progress.write("protocol-refused", round_id=round_id, reason=refusal.reason, detail=refusal.detail)
        if round_id not in bank.state.refused:
            bank.state.refused.append(round_id)
    released = bool(contributions) and bool(bank.guard.spent_in(round_id))
    if result is None:
        if contributions and not released:
            bank.guard.record_unreleased(round_id=round_id, contributions=contributions, reason=UnreleasedReason.ROUND_ABORTED)
        bank.state.current = None
        bank.save_state()
        remove_file(_update_path(bank, step, round_id))
        return StepEnd.ABORTED
    if contributions and not released:
        bank.guard.record_unreleased(round_id=round_id, contributions=contributions, reason=UnreleasedReason.LEFT_OUT)
    _apply(bank, step, description, result, contributed=contributed)
    return StepEnd.APPLIED


def _run_step(bank: _Bank, step: int) -> None:
    """Wait for a round of ``step`` and take part in it until one completes."""
    deadline = time.monotonic() + bank.job.round_timeout
    while True:
        current = bank.state.current
        if current is not None and int(current["step"]) == step:
            end = _join(bank, step, str(current["round_id"]))
            if end is StepEnd.APPLIED:
                return
            deadline = time.monotonic() + bank.job.round_timeout
            continue
        listed = bank.rounds.list()
        if listed is not None:
            of_step = [item for item in listed if int(item["round"]) == step and item["round_id"] not in bank.state.refused]
            completed = [item for item in of_step if item["outcome"] == "completed"]
            fresh = [item for item in of_step if item["outcome"] is None and item["stage"] == Round.ADVERTISE_KEYS.value]
            if completed:
                if _catch_up(bank, step, completed[0]["round_id"]) is StepEnd.APPLIED:
                    return
                continue
            if fresh:
                if _join(bank, step, fresh[0]["round_id"]) is StepEnd.APPLIED:
                    return
                deadline = time.monotonic() + bank.job.round_timeout
                continue
        if time.monotonic() > deadline:
            why = " (the server does not know this bank or the training yet)" if bank.rounds.waiting_for_registration else ""
            raise TrainingIncomplete(
                f"no round of step {step} of training {bank.manifest.training_id} opened within {bank.job.round_timeout:g} s{why}"
            )
        time.sleep(LIST_INTERVAL_SECONDS)


# --------------------------------------------------------------------------- the whole training


def load_signed_manifest(path: Path) -> SignedManifest:
    try:
        signed = SignedManifest.from_bytes(Path(path).read_bytes())
    except OSError as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc.strerror}") from None
    signed.require_complete()
    return signed


def check_manifest_against_policy(rules: TrainingRules, policy: ClientPolicy, identity: SigningKey, participant_id: str) -> None:
    """Refuse, before anything else, a training whose every round this bank's policy would refuse."""
    manifest = rules.manifest
    for step in rules.steps[:1] + rules.steps[-1:]:
        parameters = rules.step_parameters(step)
        config = RoundConfig(
            round_id=bytes(16),
            identity_keys=tuple(bank.public_key for bank in rules.banks),
            threshold=rules.threshold,
            dim=parameters.dim,
            bits=parameters.bits,
            mode=manifest.protocol.mode,
            graph=manifest.protocol.graph,
            degree=manifest.protocol.degree,
            manifest_hash=manifest.hash,
            training_round=step,
        )
        description = RoundDescription(
            round_id="manifest",
            config=config,
            status=Round.ADVERTISE_KEYS.value,
            is_open=True,
            member_ids=tuple(bank.id for bank in rules.banks),
            dp_policy={"privacy": parameters.privacy},
            training=TrainingBinding(manifest.training_id, manifest.hash, step),
        )
        try:
            policy.check(description, identity_public_key=identity.public_bytes, participant_id=participant_id)
        except PolicyViolation as violation:
            raise PolicyViolation(
                violation.reason, f"the manifest's step {step} is refused by this bank's policy: {violation.detail}"
            ) from None


def check_plan_budget(rules: TrainingRules, guard: Any, remaining_steps: int) -> None:
    """Refuse a training whose remaining rounds would take any unit past this bank's budget."""
    from dp.audit.round_records import RoundPrivacy
    from dp.budget import BudgetPolicyError

    if remaining_steps <= 0:
        return
    for item in rules.step_parameters(rules.steps[-1]).privacy:
        declared = RoundPrivacy.from_dict(item)
        whole = replace(declared.event, steps=declared.event.steps * remaining_steps)
        try:
            authorization = guard.authorize(round_id="plan", unit=declared.unit, event=whole)
        except BudgetPolicyError as exc:
            raise BudgetRefused(str(exc)) from None
        if not authorization.allowed:
            raise BudgetRefused(
                f"the plan's {remaining_steps} remaining round(s) would take this bank's {declared.unit.value}-level epsilon "
                f"to {authorization.would_reach:.4g} at delta {authorization.budget.delta:g}, over its budget "
                f"{authorization.budget.max_epsilon:g} (spent so far on these customers: {authorization.spent:.4g}); "
                "nothing was trained or sent"
            )


class ModelDiffers(FederatedError):
    """This bank's own model is not the manifest's (a parameter's name or shape differs); nothing was trained or sent."""


def check_own_model(rules: TrainingRules) -> None:
    """For a bank's own model: build it with this bank's factory and refuse unless its parameter
    names, shapes (the manifest's ``shapes_sha256``) and loss are the manifest's, and Opacus can
    train it. Checked once, before the bank joins any round (the statistics round included)."""
    from dp.models import ModelLayout

    if not isinstance(rules.model, ModelLayout):
        return
    from dp.training import ModelDiffers as LayoutDiffers
    from dp.training import ModelRefused, define_checked_model, module_problems

    try:
        problems = module_problems(define_checked_model(rules.model).module)
    except (LayoutDiffers, ModelRefused) as refused:
        raise ModelDiffers(f"{refused}; nothing was trained or sent") from None
    if problems:
        raise ModelDiffers(f"Opacus cannot train this bank's {rules.model.factory}: {'; '.join(problems)}")


def train_federated(
    job: BankJob,
    *,
    identity: SigningKey | None = None,
    data: RawTable | None = None,
    signed: SignedManifest | None = None,
    wrap_transport: Callable[[RoundTransport], RoundTransport] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One bank's whole federated training (see the module docstring); returns its final figures.

    ``identity`` is the bank's key when already loaded (else ``job.key`` is read with
    ``job.passphrase``), ``data`` its table when already read (else ``job.data`` is read),
    ``signed`` the manifest when already loaded (else ``job.manifest`` is read); either way
    it must be complete.
    ``wrap_transport`` wraps the HTTP transport before the rounds use it (tests inject
    faults this way, :mod:`clients.harness.faults`). ``on_event`` sees every progress-log
    event (name and fields) as it is written. A bank's own model that differs from the
    manifest's is refused (:class:`ModelDiffers`) before anything is trained or sent.
    """
    from clients.runtime.http_transport import HttpTransport
    from clients.runtime.keyfile import load_identity_key
    from dp.audit.privacy_ledger import PrivacyLedger, PrivacyUnit
    from dp.budget import BudgetGuard

    if signed is None:
        signed = load_signed_manifest(job.manifest)
    signed.require_complete()
    manifest = signed.manifest
    key = identity if identity is not None else load_identity_key(job.key, passphrase=job.passphrase)
    member = manifest.member_with_key(key.public_bytes)
    if member is None or member.role is not MemberRole.BANK:
        raise ManifestError(
            f"this bank's key ({key.public_bytes.hex()[:16]}…) is no bank's key in the manifest of {manifest.training_id}"
        )
    if job.participant_id is not None and job.participant_id != member.id:
        raise ManifestError(f"the manifest lists this key as {member.id!r}, not {job.participant_id!r}")
    rules = TrainingRules(manifest)
    schema = rules.schema
    if (job.target is not None and job.target != schema.target) or (job.positive is not None and job.positive != schema.positive):
        raise FederatedError(
            f"the agreed schema predicts {schema.target} == {schema.positive!r}, not {job.target} == {job.positive!r}"
        )
    policy = ClientPolicy.load(job.policy)
    if policy.budget is None:
        raise FederatedError(f"the policy {job.policy} has no [budget] table: a bank's training spends its own budget")
    check_manifest_against_policy(rules, policy, key, member.id)
    check_own_model(rules)
    table = read_csv(job.data) if data is None else data
    labels_for(rules.model, schema, table)

    work_dir = job.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    progress = ProgressLog(work_dir / PROGRESS_FILE, on_event)
    account: BudgetAccount = BudgetStore(policy.budget).account_for(table)
    state = TrainingState.load(work_dir)
    if state is None:
        state = TrainingState(manifest.training_id, manifest.hash.hex(), member.id, account.budget_id)
    elif state.manifest_hash != manifest.hash.hex() or state.participant_id != member.id:
        raise ResumeRefused(
            f"{work_dir} holds the training {state.training_id} (manifest {state.manifest_hash[:16]}…); "
            "give each training its own work directory"
        )
    elif state.budget_id != account.budget_id:
        raise ResumeRefused(f"{work_dir} was trained on other data (budget {state.budget_id}, this data {account.budget_id})")
    state.save(work_dir)
    progress.write(
        "started",
        participant_id=member.id,
        training_id=manifest.training_id,
        manifest_hash=manifest.hash.hex(),
        budget_id=account.budget_id,
        customers=account.data_customers,
        new_customers=account.new_customers,
        resumed_after=sorted(state.completed_steps),
    )

    with PrivacyLedger.open(account.ledger_path, party_id=member.id, signing_key=key) as ledger:
        guard = BudgetGuard(policy.budget.units, ledger)
        remaining = [step for step in rules.steps if step != STATISTICS_STEP and step not in state.completed_steps]
        charged_already = state.current is not None and bool(guard.spent_in(str(state.current["round_id"])))
        check_plan_budget(rules, guard, len(remaining) - int(charged_already))
        verify = str(job.ca_bundle) if job.ca_bundle is not None else True
        with (
            HttpTransport(job.server, key_id=member.id, identity=key, retry=RetryPolicy(max_attempts=10), verify=verify) as http,
            # The round list is read again and again while waiting: one attempt each, the waiting is the loop's.
            HttpTransport(job.server, key_id=member.id, identity=key, retry=RetryPolicy(max_attempts=1), verify=verify) as lister,
        ):
            transport: RoundTransport = http if wrap_transport is None else wrap_transport(http)
            listing = TrainingRounds(lister, manifest.training_id, unreachable_timeout=job.server_timeout)
            bank = _Bank(job, member.id, key, manifest, rules, policy, table, progress, state, transport, listing, guard, schema)
            _train(bank)
        final = {
            "training_id": manifest.training_id,
            "participant_id": member.id,
            "manifest_hash": manifest.hash.hex(),
            "rounds": rules.plan.rounds,
            "rounds_completed": len([s for s in bank.state.completed_steps if s != STATISTICS_STEP]),
            "epsilon": guard.spent(PrivacyUnit.EXAMPLE),
            "delta": rules.plan.delta,
            "participant_epsilon": _participant_spent(bank),
            "budget_epsilon": policy.budget.units.budget_for(PrivacyUnit.EXAMPLE).max_epsilon,
            "budget_id": account.budget_id,
            "ledger": str(account.ledger_path),
            "model": str(work_dir / MODEL_ARTEFACT),
            "model_sha256": parameters_sha256(bank.global_model) if bank.global_model is not None else None,
        }
    progress.write("finished", **final)
    return final


MODEL_ARTEFACT = "model.json"


def _train(bank: _Bank) -> None:
    from dp.training import BankTrainer, DPSGDConfig, FixedNoise, use_threads

    rules = bank.rules
    work_dir = bank.work_dir
    if rules.needs_statistics and STATISTICS_STEP in bank.state.completed_steps:
        bank.schema = TabularSchema.load(work_dir / STANDARDIZED_SCHEMA_FILE)
    if rules.needs_statistics and STATISTICS_STEP not in bank.state.completed_steps:
        _run_step(bank, STATISTICS_STEP)
    preprocessor = Preprocessor(bank.schema)
    spec = rules.model
    bank.dataset = Dataset(
        preprocessor.features(bank.table), labels_for(spec, bank.schema, bank.table), bank.schema.feature_names
    )
    use_threads(1)
    plan = rules.plan
    event = plan.round_event()
    config = DPSGDConfig(
        max_grad_norm=plan.max_grad_norm,
        sample_rate=plan.sample_rate,
        local_steps=plan.local_steps,
        learning_rate=plan.learning_rate,
        noise=FixedNoise(event.noise_multiplier),
        delta=plan.delta,
    )
    bank.trainer = BankTrainer(spec, config, accountant_path=work_dir / ACCOUNTANT_FILE)
    training_steps = [step for step in rules.steps if step != STATISTICS_STEP]
    done = [item for item in bank.state.completed if int(item["step"]) != STATISTICS_STEP]
    if done:
        bank.global_model = np.load(work_dir / MODEL_FILE, allow_pickle=False)
        if parameters_sha256(bank.global_model) != done[-1]["model_sha256"]:
            raise ResumeRefused(f"{work_dir / MODEL_FILE} is not the model of step {done[-1]['step']} recorded in the state")
    else:
        bank.global_model = plan.initial_model(spec)
    for step in training_steps:
        if step not in bank.state.completed_steps:
            _run_step(bank, step)
    from clients.training.model_file import ModelArtefact

    artefact = ModelArtefact.trained(
        schema=bank.schema,
        spec=spec,
        parameters=bank.global_model,
        manifest_hash=bank.manifest.hash.hex(),
        training_id=bank.manifest.training_id,
        rounds=plan.rounds,
        threshold_data=bank.dataset,
    )
    artefact.save(work_dir / MODEL_ARTEFACT)


def exit_code_of(error: BaseException) -> int:
    """The documented exit code of an error ``secagg train`` stops with (docs/CLIENT.md)."""
    from dp.budget import BudgetExceeded, BudgetPolicyError

    if isinstance(error, (BudgetExceeded, BudgetPolicyError)):
        return int(ExitCode.POLICY_REFUSED)
    if isinstance(error, ClientError):
        return int(error.exit_code)
    return int(ExitCode.USAGE)


__all__ = [
    "MODEL_ARTEFACT",
    "BankJob",
    "BudgetRefused",
    "ModelDiffers",
    "ProgressLog",
    "TrainingIncomplete",
    "TrainingState",
    "exit_code_of",
    "train_federated",
]
