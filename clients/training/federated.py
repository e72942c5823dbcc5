"""Federated averaging across banks, each bank a separate party with its own key, data and ledger.

The consortium agrees a :class:`FederatedPlan` (model, rounds, DP-SGD parameters, the
public seed of the initial model) and a :class:`~clients.training.tabular.TabularSchema`. A
bank then runs :func:`run_bank` (``secagg train``, and every bank process of
``secagg demo``), which:

1. **Standardisation statistics** (only if the schema carries no means and scales):
   joins the first round, whose vector is its :func:`~clients.training.tabular.moment_sums`
   (row count, sums and sums of squares of its clipped values rescaled to [0, 1]),
   encoded with the round's fixed-point encoding and masked. The server learns only
   the consortium's totals, from which every bank derives the same means and scales
   (:func:`~clients.training.tabular.statistics_from_sums`). This release is exact, not DP.
2. **Training rounds**, ``plan.rounds`` of them. For each round the server opens
   (discovered with ``GET /v1/work``):

   a. check the round's dimension and declared privacy (``dp_policy``) are exactly
      what the plan prescribes for this cohort (else refuse, :class:`PlanMismatch`),
      and the round's parameters against the bank's :class:`~clients.runtime.policy.ClientPolicy`;
   b. charge the bank's signed privacy ledger (:class:`dp.budget.BudgetGuard`) for
      every declared unit —
      refused, with a recorded refusal, if it would exceed the budget; nothing has
      been trained or sent yet;
   c. train locally from the current global model with Opacus DP-SGD
      (:class:`dp.training.BankTrainer`, accountant persisted in the bank's work
      directory);
   d. clip the update's L2 norm to ``plan.update_clip`` (post-processing), encode it
      into the ring (:class:`~clients.runtime.inputs.RealVectorInput`, stochastic fixed-point
      rounding; or the participant-level pipeline below), and run the
      secure-aggregation protocol over HTTP
      (:func:`clients.runtime.runner.run_round`);
   e. decode the sum of the survivors' updates and take their mean: the new global
      model is ``global + server_learning_rate * mean``. Every bank computes the same
      global model from the same public result, so no one distributes it.

The plan, its privacy units and its defaults are described in :mod:`clients.training.plan`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from clients.runtime.errors import ServerUnavailable
from clients.runtime.inputs import ClientInput, RealVectorInput, RingVectorInput
from clients.runtime.policy import ClientPolicy
from clients.runtime.retry import PollSchedule, RetryPolicy
from clients.runtime.transport import Pending, RoundAborted, RoundDescription, RoundResult, RoundTransport
from clients.training.plan import (
    STATISTICS_CLIP,
    FederatedError,
    FederatedPlan,
    PlanMismatch,
    apply_mean_update,
    clip_l2,
    rotation_seed,
    statistics_dim,
)
from clients.training.tabular import (
    MomentSums,
    Preprocessor,
    TabularSchema,
    moment_sums,
    read_csv,
    statistics_from_sums,
)
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import SystemRandom
from secagg.http_contract import NONCE_BYTES, ProblemType, problem_suffix, sign_request

PROGRESS_FILE = "progress.jsonl"
MODEL_FILE = "global-model.npy"
LEDGER_FILE = "privacy-ledger.jsonl"
ACCOUNTANT_FILE = "accountant.json"
DEFAULT_SERVER_TIMEOUT = 30.0
"""Seconds of consecutive connection failures before a bank gives up on the server."""
POLL = PollSchedule(initial_interval=0.2, multiplier=1.3, max_interval=1.0, timeout=1800.0)
"""Polls for the next stage: start at 0.2 s, never wait more than 1 s (a consortium of a handful of banks)."""
_NOT_ENROLLED_YET = frozenset({ProblemType.UNKNOWN_KEY.suffix, ProblemType.BAD_REQUEST_SIGNATURE.suffix})


def _problem_type(response: httpx.Response) -> str:
    try:
        value = response.json()
    except ValueError:
        return ""
    problem = value.get("type", "") if isinstance(value, dict) else ""
    return problem_suffix(str(problem)) or ""


class WorkPoller:
    """Finds the next round this bank must join: signed ``GET /v1/work`` (docs/API.md section 5)."""

    def __init__(
        self, base_url: str, *, key_id: str, identity: SigningKey, unreachable_timeout: float = DEFAULT_SERVER_TIMEOUT
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._key_id = key_id
        self._identity = identity
        self._client = httpx.Client(timeout=30.0)
        self._source = SystemRandom()
        self._unreachable_timeout = unreachable_timeout
        self._unreachable_since: float | None = None

    def close(self) -> None:
        self._client.close()

    def pending(self) -> list[dict[str, Any]]:
        headers = sign_request(
            self._identity, "GET", "/v1/work", b"", key_id=self._key_id, now=int(time.time()),
            nonce=self._source.random_bytes(NONCE_BYTES).hex(),
        )  # fmt: skip
        try:
            response = self._client.get(self._base_url + "/v1/work", headers=headers)
        except httpx.TransportError as error:
            return self._unavailable(f"cannot reach {self._base_url}: {type(error).__name__}: {error}")
        if response.status_code == 401 and _problem_type(response) in _NOT_ENROLLED_YET:
            # Not enrolled yet (the administrator enrols the public key after the bank made it): wait, within the same window.
            # The server answers an unknown id like a wrong signature, so that strangers cannot probe for ids.
            return self._unavailable("this bank's key is not enrolled on the server (or under another key)")
        self._unreachable_since = None
        if response.status_code != 200:
            raise FederatedError(f"GET /v1/work: HTTP {response.status_code}: {response.text[:200]}")
        return list(response.json().get("items", []))

    def _unavailable(self, reason: str) -> list[dict[str, Any]]:
        """No work for now; give up once the server has been unavailable for ``unreachable_timeout`` seconds."""
        now = time.monotonic()
        if self._unreachable_since is None:
            self._unreachable_since = now
        if now - self._unreachable_since >= self._unreachable_timeout:
            raise FederatedError(f"{reason} (for {self._unreachable_timeout:g} s); giving up")
        return []

    def next_round(self, seen: set[str], *, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.pending():
                if item.get("action") == "advertise-keys" and item.get("round_id") not in seen:
                    return str(item["round_id"])
            time.sleep(0.2)
        raise FederatedError(f"no new round opened within {timeout:g} s")


# --------------------------------------------------------------------------- one bank


@dataclass(frozen=True)
class BankJob:
    """Everything a bank process needs: its own data, the agreed files, its key and server."""

    participant_id: str
    data: Path
    target: str
    positive: str
    schema: Path
    plan: Path
    work_dir: Path
    server: str | None = None
    key: Path | None = None
    policy: Path | None = None
    round_timeout: float = 600.0
    server_timeout: float = DEFAULT_SERVER_TIMEOUT

    def to_dict(self) -> dict[str, Any]:
        return {key: (str(item) if isinstance(item, Path) else item) for key, item in asdict(self).items()}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> BankJob:
        paths = {"data", "schema", "plan", "work_dir", "key", "policy"}
        items: dict[str, Any] = {key: (Path(item) if key in paths and item is not None else item) for key, item in value.items()}
        return cls(**items)


class ProgressLog:
    """The bank's progress, one JSON object per line (no vectors, no secrets): what the operator and the demo see."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "time": time.time(), **fields}, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

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


def declared_privacy(description: RoundDescription) -> list[dict[str, Any]]:
    """The round's ``dp_policy.privacy`` list as declared (empty when it declares none)."""
    privacy = (description.dp_policy or {}).get("privacy", [])
    if not isinstance(privacy, list) or not all(isinstance(item, dict) for item in privacy):
        raise PlanMismatch(f"round {description.round_id} declares a malformed privacy policy")
    return privacy


def _await_result(transport: RoundTransport, round_id: str, timeout: float) -> RoundResult:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        delivery = transport.fetch_result(round_id)
        if isinstance(delivery, RoundResult):
            return delivery
        if isinstance(delivery, RoundAborted):
            raise FederatedError(f"round {round_id} aborted: {delivery.reason}")
        assert isinstance(delivery, Pending)
        time.sleep(0.3)
    raise FederatedError(f"no result for round {round_id} within {timeout:g} s")


@dataclass
class _BankContext:
    job: BankJob
    plan: FederatedPlan
    identity: SigningKey
    transport: Any
    poller: WorkPoller
    policy: ClientPolicy
    progress: ProgressLog
    seen_rounds: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Contribution:
    """What a bank sends in one round, and how the round's ring sum is read back.

    ``decode(ring_sum, survivors)`` returns the real-valued sum of the survivors' vectors.
    """

    client_input: ClientInput
    decode: Callable[[np.ndarray, int], np.ndarray]


def real_contribution(vector: np.ndarray, *, clip: float, config: Any) -> Contribution:
    """Fixed-point encoding (stochastic rounding, :mod:`secagg.encoding`); every |coordinate| must be <= ``clip``."""
    if not np.all(np.abs(vector) <= clip):
        raise FederatedError(f"a coordinate of this bank's vector exceeds the agreed bound {clip:g}; refusing to send it")
    client_input = RealVectorInput(np.asarray(vector, dtype=np.float64), clip=clip)
    encoding = client_input.encoding_for(config)
    return Contribution(client_input, lambda ring_sum, survivors: encoding.decode_sum(ring_sum))


def skellam_contribution(update: np.ndarray, config: Any, seed: bytes) -> Contribution:
    """Participant-level distributed DP (:func:`dp.mechanisms.distributed.encode_update`, noise from the OS CSPRNG)."""
    from dp.mechanisms.distributed import Reduction, decode_aggregate, encode_update

    encoded = encode_update(update, config, rotation_seed=seed, source=SystemRandom())

    def decode(ring_sum: np.ndarray, survivors: int) -> np.ndarray:
        return decode_aggregate(ring_sum, config, rotation_seed=seed, survivors=survivors, reduction=Reduction.SUM)

    return Contribution(RingVectorInput(encoded.values), decode)


def _secure_round(
    context: _BankContext,
    *,
    expected: Callable[[RoundDescription], tuple[int, list[dict[str, Any]]]],
    prepare: Callable[[RoundDescription], Contribution],
) -> tuple[str, np.ndarray, tuple[int, ...], bool]:
    """Join the next round the server opens and contribute what ``prepare`` returns.

    ``expected(description)`` gives the dimension and the declared privacy the plan
    prescribes for that round; a round that differs is refused (:class:`PlanMismatch`)
    before ``prepare`` runs, so nothing is spent or trained for it. Returns the round id,
    the decoded sum of the survivors' vectors, the survivors and whether this bank's
    vector is in the sum.
    """
    from clients.runtime.runner import run_round

    round_id = context.poller.next_round(context.seen_rounds, timeout=context.job.round_timeout)
    context.seen_rounds.add(round_id)
    description = context.transport.describe_round(round_id)
    dimension, privacy = expected(description)
    if description.config.dim != dimension:
        raise PlanMismatch(f"round {round_id} has dim {description.config.dim}, the plan needs {dimension}")
    declared = declared_privacy(description)
    if declared != privacy:
        raise PlanMismatch(f"round {round_id} declares privacy {declared}, the plan prescribes {privacy}; refusing to spend")
    contribution = prepare(description)
    transport = context.transport
    contributed = True
    try:
        outcome = run_round(
            transport=transport,
            round_id=round_id,
            identity=context.identity,
            client_input=contribution.client_input,
            policy=context.policy,
            state_dir=context.job.work_dir / "rounds",
            participant_id=context.job.participant_id,
            poll=POLL,
        )
        result = (
            outcome.result
            if outcome.result is not None
            else _await_result(context.transport, round_id, context.job.round_timeout)
        )
    except ServerUnavailable as lost:
        # This bank could not finish its part (its network went away); the round goes on
        # with the others if at least t remain, and its public result is fetched as usual.
        contributed = False
        context.progress.write("dropped-out", round_id=round_id, reason=str(lost))
        result = _await_result(context.transport, round_id, context.job.round_timeout)
    survivors = tuple(result.survivors)
    return round_id, contribution.decode(result.vector, len(survivors)), survivors, contributed


def run_bank(
    job: BankJob,
    *,
    identity: SigningKey | None = None,
    wrap_transport: Callable[[RoundTransport], RoundTransport] | None = None,
) -> dict[str, Any]:
    """One bank's whole federated run (see the module docstring). Returns its final figures.

    ``wrap_transport`` wraps the HTTP transport before the rounds use it (the demo and
    the tests inject faults this way, :mod:`clients.harness.faults`).
    """
    from clients.runtime.http_transport import HttpTransport
    from clients.runtime.keyfile import load_identity_key
    from dp.audit.privacy_ledger import PrivacyLedger, PrivacyUnit
    from dp.budget import BudgetGuard, BudgetPolicy, UnitBudget

    job.work_dir.mkdir(parents=True, exist_ok=True)
    progress = ProgressLog(job.work_dir / PROGRESS_FILE)
    plan = FederatedPlan.load(job.plan)
    schema = TabularSchema.load(job.schema)
    if schema.target != job.target or schema.positive != job.positive:
        raise FederatedError(
            f"the agreed schema predicts {schema.target} == {schema.positive!r}, not {job.target} == {job.positive!r}"
        )
    table = read_csv(job.data)
    if job.server is None or job.key is None:
        raise FederatedError("a federated run needs --server and --key")
    key = identity if identity is not None else load_identity_key(job.key)
    policy = ClientPolicy.load(job.policy) if job.policy is not None else ClientPolicy(required_mode=plan.mode)
    budgets = {PrivacyUnit.EXAMPLE: UnitBudget(plan.target_epsilon, plan.delta)}
    if plan.participant_epsilon is not None:
        budgets[PrivacyUnit.PARTICIPANT] = UnitBudget(plan.participant_epsilon, plan.participant_delta)
    with HttpTransport(job.server, key_id=job.participant_id, identity=key, retry=RetryPolicy(max_attempts=10)) as http:
        poller = WorkPoller(job.server, key_id=job.participant_id, identity=key, unreachable_timeout=job.server_timeout)
        transport: RoundTransport = http if wrap_transport is None else wrap_transport(http)
        context = _BankContext(job, plan, key, transport, poller, policy, progress)
        try:
            if not schema.is_standardized:
                sums = moment_sums(table, schema)
                round_id, total, survivors, _ = _secure_round(
                    context,
                    expected=lambda description: (statistics_dim(schema), []),
                    prepare=lambda description: real_contribution(
                        sums.to_vector(), clip=STATISTICS_CLIP, config=description.config
                    ),
                )
                names = [column.name for column in schema.numeric_columns]
                schema = schema.with_statistics(statistics_from_sums(schema, MomentSums.from_vector(names, total)))
                schema.save(job.work_dir / "schema-standardized.json")
                progress.write("statistics", round_id=round_id, survivors=len(survivors))
            dataset = Preprocessor(schema).transform(table)
            # Only now: a bank that cannot reach the server or agree the statistics never loads torch.
            from dp.training import BankTrainer, use_threads

            use_threads(1)
            spec = plan.model_spec(schema.num_features)
            parameters = spec.parameter_count
            trainer = BankTrainer(spec, plan.dpsgd_config(), accountant_path=job.work_dir / ACCOUNTANT_FILE)
            global_model = plan.initial_model(schema.num_features)
            with PrivacyLedger.open(job.work_dir / LEDGER_FILE, party_id=job.participant_id, signing_key=key) as ledger:
                guard = BudgetGuard(BudgetPolicy(budgets, job.participant_id), ledger)

                def expected(description: RoundDescription) -> tuple[int, list[dict[str, Any]]]:
                    cohort = {"min_survivors": description.config.threshold, "max_clients": description.config.participant_count}
                    return plan.round_dim(parameters, **cohort), plan.round_privacy(parameters, **cohort)

                def train(description: RoundDescription) -> Contribution:
                    """Charge the ledger for every declared unit, then train, clip and encode."""
                    from dp.audit.round_records import RoundPrivacy

                    declared = [RoundPrivacy.from_dict(item) for item in declared_privacy(description)]
                    guard.charge_round(round_id=description.round_id, contributions={item.unit: item.event for item in declared})
                    update = trainer.train_round(global_model, dataset.features, dataset.labels)
                    clipped = clip_l2(update.model_update.astype(np.float64), plan.update_clip)
                    distributed = plan.distributed_config(
                        parameters, min_survivors=description.config.threshold, max_clients=description.config.participant_count
                    )
                    if distributed is None:
                        return real_contribution(clipped, clip=plan.update_clip, config=description.config)
                    return skellam_contribution(clipped, distributed, rotation_seed(description.round_id))

                for round_index in range(plan.rounds):
                    started = time.monotonic()
                    round_id, total, survivors, contributed = _secure_round(context, expected=expected, prepare=train)
                    global_model = apply_mean_update(global_model, total / len(survivors), plan)
                    np.save(job.work_dir / MODEL_FILE, global_model, allow_pickle=False)
                    progress.write(
                        "round",
                        round=round_index + 1,
                        round_id=round_id,
                        survivors=len(survivors),
                        contributed=contributed,
                        epsilon=guard.spent(PrivacyUnit.EXAMPLE),
                        participant_epsilon=guard.spent(PrivacyUnit.PARTICIPANT) if PrivacyUnit.PARTICIPANT in budgets else None,
                        delta=plan.delta,
                        model_sha256=hashlib.sha256(global_model.tobytes()).hexdigest(),
                        seconds=time.monotonic() - started,
                    )
                final = {
                    "epsilon": guard.spent(PrivacyUnit.EXAMPLE),
                    "delta": plan.delta,
                    "participant_epsilon": guard.spent(PrivacyUnit.PARTICIPANT) if PrivacyUnit.PARTICIPANT in budgets else None,
                    "rounds": plan.rounds,
                }
        finally:
            poller.close()
    progress.write("finished", **final)
    return final
