"""Federated averaging across banks, each bank a separate party with its own key, data and ledger.

The consortium agrees a :class:`FederatedPlan` (model, rounds, DP-SGD parameters, the
public seed of the initial model) and a :class:`~clients.tabular.TabularSchema`. A
bank then runs :func:`run_bank` (``secagg train``, and every bank process of
``secagg demo``), which:

1. **Standardisation statistics** (only if the schema carries no means and scales):
   joins the first round, whose vector is its :func:`~clients.tabular.moment_sums`
   (row count, sums and sums of squares of its clipped values rescaled to [0, 1]),
   encoded with the round's fixed-point encoding and masked. The server learns only
   the consortium's totals, from which every bank derives the same means and scales
   (:func:`~clients.tabular.statistics_from_sums`). This release is exact, not DP.
2. **Training rounds**, ``plan.rounds`` of them. For each round the server opens
   (discovered with ``GET /v1/work``):

   a. check the round's declared privacy (``dp_policy``) is exactly this bank's own
      DP-SGD event for one round (else refuse, :class:`PlanMismatch`) and the
      round's parameters against the bank's :class:`~clients.policy.ClientPolicy`;
   b. charge the bank's signed privacy ledger (:class:`dp.budget.BudgetGuard`) —
      refused, with a recorded refusal, if it would exceed the budget; nothing has
      been trained or sent yet;
   c. train locally from the current global model with Opacus DP-SGD
      (:class:`dp.training.BankTrainer`, accountant persisted in the bank's work
      directory);
   d. clip the update's L2 norm to ``plan.update_clip`` (post-processing), encode it
      into the ring (:class:`~clients.inputs.RealVectorInput`, stochastic fixed-point
      rounding), and run the secure-aggregation protocol over HTTP
      (:func:`clients.runner.run_round`);
   e. decode the sum of the survivors' updates and take their mean: the new global
      model is ``global + server_learning_rate * mean``. Every bank computes the same
      global model from the same public result, so no one distributes it.

Privacy units and parameters (DESIGN.md section 3):

* **Example level** (a bank's customers): DP-SGD with Poisson sampling rate ``q``,
  per-example clipping ``max_grad_norm``, Gaussian noise ``z * max_grad_norm`` from a
  CSPRNG, ``ceil(local_epochs / q)`` steps per round; ``z`` is calibrated so that the
  ``plan.rounds`` rounds together spend ``target_epsilon`` at ``delta`` (RDP
  accountant; default epsilon 3 at delta 1e-5). Every bank uses the same q, steps and
  z, so the round declares one ``SampledGaussian`` event that every bank charges; the
  server records it and the auditor cross-checks every contributor's ledger against
  it (:func:`dp.ledger_server.cross_check`). A bank that drops out of a round has
  still spent that round (spend before use: conservative).
* **Participant level** is not claimed by the default plan: the banks' updates are
  aggregated exactly. (:mod:`dp.distributed` provides Skellam noise in the ring for
  deployments that need it; with five banks it costs most of the model's accuracy.)

Global model initialisation: ``dp.training.initial_parameters`` drawn from
``DeterministicRandom(plan.initial_model_seed)``, a public seed in the plan, so every
bank starts from the same model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from clients.errors import ClientError
from clients.inputs import RealVectorInput
from clients.policy import ClientPolicy
from clients.retry import PollSchedule, RetryPolicy
from clients.tabular import (
    MomentSums,
    Preprocessor,
    TabularSchema,
    moment_sums,
    read_csv,
    statistics_from_sums,
)
from clients.transport import Pending, ProtocolRound, RoundAborted, RoundResult, RoundTransport
from dp.accounting import SampledGaussian
from dp.models import ModelKind, ModelSpec
from secagg.config import ProtocolMode
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import SEED_BYTES, DeterministicRandom, SystemRandom

PLAN_FORMAT = "secagg-federated-plan/1"
STATISTICS_CLIP = float(1 << 24)
"""Bound on every coordinate of a statistics vector (row counts and sums of values in [0, 1]): 16.7 million rows per bank."""
STATISTICS_BITS = 64
PROGRESS_FILE = "progress.jsonl"
MODEL_FILE = "global-model.npy"
LEDGER_FILE = "privacy-ledger.jsonl"
ACCOUNTANT_FILE = "accountant.json"
POLL = PollSchedule(initial_interval=0.2, multiplier=1.3, max_interval=1.0, timeout=1800.0)
"""Polls for the next stage: start at 0.2 s, never wait more than 1 s (a consortium of a handful of banks)."""


class FederatedError(ClientError):
    """Base error of the federated training loop."""


class PlanMismatch(FederatedError):
    """The round the server opened does not match the agreed plan (declared privacy, dimension); refused before spending."""


class SimulatedDropout(Exception):
    """A dropout injected by the demo: the bank stops answering in the middle of a round."""


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class FederatedPlan:
    """What the consortium agreed about training (a JSON file shared by every bank)."""

    rounds: int = 10
    model: ModelKind = ModelKind.LOGISTIC_REGRESSION
    hidden_units: int = 32
    target_epsilon: float = 3.0
    delta: float = 1e-5
    sample_rate: float = 0.05
    local_epochs: int = 1
    learning_rate: float = 1.0
    max_grad_norm: float = 1.0
    update_clip: float = 10.0
    server_learning_rate: float = 1.0
    ring_bits: int = 32
    mode: ProtocolMode = ProtocolMode.ACTIVE
    initial_model_seed: str = hashlib.sha256(b"secagg/federated/initial-model/v1").hexdigest()

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", ModelKind(self.model))
        object.__setattr__(self, "mode", ProtocolMode(self.mode))
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise FederatedError(f"rounds must be a positive integer, got {self.rounds!r}")
        for name in ("target_epsilon", "learning_rate", "max_grad_norm", "update_clip", "server_learning_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise FederatedError(f"{name} must be a positive number, got {value!r}")
        if not 0 < self.delta < 1 or not 0 < self.sample_rate <= 1:
            raise FederatedError("need 0 < delta < 1 and 0 < sample_rate <= 1")
        if len(bytes.fromhex(self.initial_model_seed)) != SEED_BYTES:
            raise FederatedError(f"initial_model_seed must be {SEED_BYTES} bytes in hex")

    def model_spec(self, num_features: int) -> ModelSpec:
        return ModelSpec(self.model, num_features, self.hidden_units)

    @property
    def local_steps(self) -> int:
        return math.ceil(self.local_epochs / self.sample_rate)

    def dpsgd_config(self):
        """The example-level DP-SGD configuration of every bank (torch imported here only)."""
        from dp.training import DPSGDConfig, EpsilonTarget

        return DPSGDConfig(
            max_grad_norm=self.max_grad_norm,
            sample_rate=self.sample_rate,
            local_steps=self.local_steps,
            learning_rate=self.learning_rate,
            noise=EpsilonTarget(self.target_epsilon, self.rounds),
            delta=self.delta,
        )

    def round_event(self) -> SampledGaussian:
        """The example-level event of one round, calibrated without torch (same function as dp.training)."""
        from dp.accounting import noise_multiplier_for_epsilon

        z = float(
            noise_multiplier_for_epsilon(
                target_epsilon=self.target_epsilon,
                delta=self.delta,
                sample_rate=self.sample_rate,
                steps=self.rounds * self.local_steps,
            )
        )
        return SampledGaussian(noise_multiplier=z, sample_rate=self.sample_rate, steps=self.local_steps)

    def round_privacy(self) -> list[dict[str, Any]]:
        """The ``dp_policy.privacy`` a training round declares (and the server records)."""
        from dp.ledger import PrivacyUnit
        from dp.ledger_server import RoundPrivacy

        return [RoundPrivacy(PrivacyUnit.EXAMPLE, self.round_event()).to_dict()]

    def initial_model(self, num_features: int) -> np.ndarray:
        from dp.training import initial_parameters

        return initial_parameters(self.model_spec(num_features), DeterministicRandom(bytes.fromhex(self.initial_model_seed)))

    def to_dict(self) -> dict[str, Any]:
        value = asdict(self)
        value["model"] = self.model.value
        value["mode"] = self.mode.value
        return {"format": PLAN_FORMAT, **value}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> FederatedPlan:
        if value.get("format") != PLAN_FORMAT:
            raise FederatedError(f"not a {PLAN_FORMAT} plan")
        known = {name for name in cls.__dataclass_fields__}
        unknown = set(value) - known - {"format"}
        if unknown:
            raise FederatedError(f"unknown plan keys {sorted(unknown)}")
        try:
            return cls(**{key: item for key, item in value.items() if key != "format"})
        except (TypeError, ValueError) as exc:
            raise FederatedError(f"invalid plan: {exc}") from None

    def save(self, path: Path) -> None:
        _write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path) -> FederatedPlan:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise FederatedError(f"cannot read plan {path}: {exc}") from None


def _write_json(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    temporary.replace(path)


def statistics_dim(schema: TabularSchema) -> int:
    """Length of the statistics round's vector."""
    return 3 * len(schema.numeric_columns)


def apply_mean_update(global_model: np.ndarray, mean_update: np.ndarray, plan: FederatedPlan) -> np.ndarray:
    return (global_model.astype(np.float64) + plan.server_learning_rate * mean_update).astype(np.float32)


def clip_l2(vector: np.ndarray, bound: float) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector if norm <= bound else vector * (bound / norm)


def predict_logits(spec: ModelSpec, parameters: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The model's logits in numpy, parameters in PyTorch's ``parameters()`` order (see :mod:`dp.models`)."""
    x = np.asarray(features, dtype=np.float64)
    p = np.asarray(parameters, dtype=np.float64)
    offset = 0
    layers = []
    for fan_in, fan_out in spec.layer_shapes:
        weight = p[offset : offset + fan_in * fan_out].reshape(fan_out, fan_in)
        offset += fan_in * fan_out
        bias = p[offset : offset + fan_out]
        offset += fan_out
        layers.append((weight, bias))
    for index, (weight, bias) in enumerate(layers):
        x = x @ weight.T + bias
        if index < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x[:, 0]


# --------------------------------------------------------------------------- round discovery


class WorkPoller:
    """Finds the next round this bank must join: signed ``GET /v1/work`` (service/API.md section 5)."""

    def __init__(self, base_url: str, *, key_id: str, identity: SigningKey) -> None:
        self._base_url = base_url.rstrip("/")
        self._key_id = key_id
        self._identity = identity
        self._client = httpx.Client(timeout=30.0)
        self._source = SystemRandom()

    def close(self) -> None:
        self._client.close()

    def pending(self) -> list[dict[str, Any]]:
        from service.request_signing import NONCE_BYTES, sign_request

        headers = sign_request(
            self._identity, "GET", "/v1/work", b"", key_id=self._key_id, now=int(time.time()),
            nonce=self._source.random_bytes(NONCE_BYTES).hex(),
        )  # fmt: skip
        try:
            response = self._client.get(self._base_url + "/v1/work", headers=headers)
        except httpx.TransportError:
            return []
        if response.status_code != 200:
            raise FederatedError(f"GET /v1/work: HTTP {response.status_code}: {response.text[:200]}")
        return list(response.json().get("items", []))

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
class DropoutInjection:
    """Demo only: stop answering in training round ``round_index`` (0-based) from ``protocol_round`` on."""

    round_index: int
    protocol_round: ProtocolRound = ProtocolRound.R2


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
    dropout: DropoutInjection | None = None
    round_timeout: float = 600.0

    def to_dict(self) -> dict[str, Any]:
        value = {key: (str(item) if isinstance(item, Path) else item) for key, item in asdict(self).items()}
        if self.dropout is not None:
            value["dropout"] = {"round_index": self.dropout.round_index, "protocol_round": self.dropout.protocol_round.value}
        return value

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> BankJob:
        paths = {"data", "schema", "plan", "work_dir", "key", "policy"}
        items = {key: (Path(item) if key in paths and item is not None else item) for key, item in value.items()}
        if items.get("dropout") is not None:
            items["dropout"] = DropoutInjection(int(items["dropout"]["round_index"]), ProtocolRound(items["dropout"]["protocol_round"]))
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


class _DroppingTransport:
    """Forwards to the HTTP transport but raises :class:`SimulatedDropout` instead of sending ``drop_at`` or later."""

    def __init__(self, inner: RoundTransport, drop_at: ProtocolRound) -> None:
        self._inner = inner
        self._drop_at = int(drop_at.value[1])
        self.endpoint = inner.endpoint

    def describe_round(self, round_id: str):
        return self._inner.describe_round(round_id)

    def submit(self, round_id: str, protocol_round: ProtocolRound, payload: bytes):
        if int(protocol_round.value[1]) >= self._drop_at:
            raise SimulatedDropout(protocol_round.value)
        return self._inner.submit(round_id, protocol_round, payload)

    def fetch(self, round_id: str, protocol_round: ProtocolRound):
        return self._inner.fetch(round_id, protocol_round)

    def fetch_result(self, round_id: str):
        return self._inner.fetch_result(round_id)


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


def _secure_round(
    context: _BankContext,
    vector: np.ndarray,
    *,
    clip: float,
    expected_dim: int,
    privacy: list[dict[str, Any]],
    dropout: DropoutInjection | None,
    before_send: Callable[[str], np.ndarray] | None = None,
) -> tuple[str, np.ndarray, tuple[int, ...], bool]:
    """Join the next round the server opens and contribute ``vector`` (or what ``before_send(round_id)``
    returns, called only after the round's dimension and declared privacy were checked).

    Returns the round id, the decoded sum of the survivors' vectors, the survivors and
    whether this bank's vector is in the sum. Every coordinate must be within ``clip``.
    """
    from clients.runner import run_round

    round_id = context.poller.next_round(context.seen_rounds, timeout=context.job.round_timeout)
    context.seen_rounds.add(round_id)
    description = context.transport.describe_round(round_id)
    if description.config.dim != expected_dim:
        raise PlanMismatch(f"round {round_id} has dim {description.config.dim}, the plan needs {expected_dim}")
    declared = list((description.dp_policy or {}).get("privacy", []))
    if declared != privacy:
        raise PlanMismatch(f"round {round_id} declares privacy {declared}, the plan prescribes {privacy}; refusing to spend")
    if before_send is not None:
        vector = before_send(round_id)
    transport = context.transport if dropout is None else _DroppingTransport(context.transport, dropout.protocol_round)
    if not np.all(np.abs(vector) <= clip):
        raise FederatedError(f"a coordinate of this bank's vector exceeds the agreed bound {clip:g}; refusing to send it")
    client_input = RealVectorInput(np.asarray(vector, dtype=np.float64), clip=clip)
    contributed = True
    try:
        outcome = run_round(
            transport=transport,
            round_id=round_id,
            identity=context.identity,
            client_input=client_input,
            policy=context.policy,
            state_dir=context.job.work_dir / "rounds",
            participant_id=context.job.participant_id,
            poll=POLL,
        )
        result = outcome.result if outcome.result is not None else _await_result(context.transport, round_id, context.job.round_timeout)
    except SimulatedDropout as dropped:
        contributed = False
        context.progress.write("dropped-out", round_id=round_id, protocol_round=str(dropped))
        result = _await_result(context.transport, round_id, context.job.round_timeout)
    config = context.transport.describe_round(round_id).config
    decoded = client_input.encoding_for(config).decode_sum(result.vector)
    return round_id, decoded, tuple(result.survivors), contributed


def run_bank(job: BankJob, *, identity: SigningKey | None = None) -> dict[str, Any]:
    """One bank's whole federated run (see the module docstring). Returns its final figures."""
    import torch

    from clients.http_transport import HttpTransport
    from clients.keyfile import load_identity_key
    from dp.budget import BudgetGuard, BudgetPolicy, UnitBudget
    from dp.ledger import PrivacyLedger, PrivacyUnit
    from dp.training import BankTrainer

    torch.set_num_threads(1)
    job.work_dir.mkdir(parents=True, exist_ok=True)
    progress = ProgressLog(job.work_dir / PROGRESS_FILE)
    plan = FederatedPlan.load(job.plan)
    schema = TabularSchema.load(job.schema)
    if schema.target != job.target or schema.positive != job.positive:
        raise FederatedError(f"the agreed schema predicts {schema.target} == {schema.positive!r}, not {job.target} == {job.positive!r}")
    table = read_csv(job.data)
    if job.server is None or job.key is None:
        raise FederatedError("a federated run needs --server and --key")
    key = identity if identity is not None else load_identity_key(job.key)
    policy = ClientPolicy.load(job.policy) if job.policy is not None else ClientPolicy(required_mode=plan.mode)
    with HttpTransport(job.server, key_id=job.participant_id, identity=key, retry=RetryPolicy(max_attempts=10)) as http:
        poller = WorkPoller(job.server, key_id=job.participant_id, identity=key)
        context = _BankContext(job, plan, key, http, poller, policy, progress)
        try:
            if not schema.is_standardized:
                sums = moment_sums(table, schema)
                round_id, total, survivors, _ = _secure_round(
                    context, sums.to_vector(), clip=STATISTICS_CLIP, expected_dim=statistics_dim(schema), privacy=[], dropout=None
                )
                names = [column.name for column in schema.numeric_columns]
                schema = schema.with_statistics(statistics_from_sums(schema, MomentSums.from_vector(names, total)))
                schema.save(job.work_dir / "schema-standardized.json")
                progress.write("statistics", round_id=round_id, survivors=len(survivors))
            dataset = Preprocessor(schema).transform(table)
            spec = plan.model_spec(schema.num_features)
            trainer = BankTrainer(spec, plan.dpsgd_config(), accountant_path=job.work_dir / ACCOUNTANT_FILE)
            event = plan.round_event()
            privacy = plan.round_privacy()
            budget = BudgetPolicy({PrivacyUnit.EXAMPLE: UnitBudget(plan.target_epsilon, plan.delta)}, job.participant_id)
            global_model = plan.initial_model(schema.num_features)
            with PrivacyLedger.open(job.work_dir / LEDGER_FILE, party_id=job.participant_id, signing_key=key) as ledger:
                guard = BudgetGuard(budget, ledger)
                for round_index in range(plan.rounds):
                    started = time.monotonic()
                    state: dict[str, Any] = {}

                    def train(round_id: str) -> np.ndarray:
                        guard.charge_round(round_id=round_id, contributions={PrivacyUnit.EXAMPLE: event})
                        update = trainer.train_round(global_model, dataset.features, dataset.labels)
                        state["epsilon"] = guard.spent(PrivacyUnit.EXAMPLE)
                        return clip_l2(update.model_update.astype(np.float64), plan.update_clip)

                    dropout = job.dropout if job.dropout is not None and job.dropout.round_index == round_index else None
                    round_id, total, survivors, contributed = _secure_round(
                        context, np.zeros(spec.parameter_count), clip=plan.update_clip, expected_dim=spec.parameter_count,
                        privacy=privacy, dropout=dropout, before_send=train,
                    )  # fmt: skip
                    global_model = apply_mean_update(global_model, total / len(survivors), plan)
                    np.save(job.work_dir / MODEL_FILE, global_model, allow_pickle=False)
                    progress.write(
                        "round",
                        round=round_index + 1,
                        round_id=round_id,
                        survivors=len(survivors),
                        contributed=contributed,
                        epsilon=state.get("epsilon"),
                        delta=plan.delta,
                        model_sha256=hashlib.sha256(global_model.tobytes()).hexdigest(),
                        seconds=time.monotonic() - started,
                    )
                final = {"epsilon": guard.spent(PrivacyUnit.EXAMPLE), "delta": plan.delta, "rounds": plan.rounds}
        finally:
            poller.close()
    progress.write("finished", **final)
    return final


def bank_process_main(argv: list[str]) -> int:
    """``python -m clients.federated JOB.json``: one bank process of the demo (key generated here, never leaves)."""
    from clients.keyfile import generate_key_file, load_identity_key

    job = BankJob.from_dict(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    progress = ProgressLog(job.work_dir / PROGRESS_FILE)
    try:
        assert job.key is not None
        if not job.key.exists():
            generate_key_file(job.key)
        identity = load_identity_key(job.key)
        progress.write("ready", participant_id=job.participant_id, public_key=identity.public_bytes.hex())
        run_bank(job, identity=identity)
    except Exception as error:  # reported to the operator, then the process fails
        progress.write("failed", error=f"{type(error).__name__}: {error}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(bank_process_main(sys.argv[1:]))
