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

Privacy units and parameters (DESIGN.md section 3):

* **Example level** (a bank's customers): DP-SGD with Poisson sampling rate ``q``,
  per-example clipping ``max_grad_norm``, Gaussian noise ``z * max_grad_norm`` from a
  CSPRNG, ``ceil(local_epochs / q)`` steps per round; ``z`` is calibrated so that the
  ``plan.rounds`` rounds together spend ``target_epsilon`` at ``delta`` (RDP
  accountant; default epsilon 3 at delta 1e-5). Every bank uses the same q, steps and
  z, so the round declares one ``SampledGaussian`` event that every bank charges; the
  server records it and the auditor cross-checks every contributor's ledger against
  it (:func:`dp.audit.round_records.cross_check`). A bank that drops out of a round has
  still spent that round (spend before use: conservative).
* **Participant level** (a bank's whole contribution), only if the plan sets
  ``participant_epsilon``: the clipped update is rotated, scaled, conditionally rounded
  and Skellam-noised in the ring (:mod:`dp.mechanisms.distributed`; Agarwal, Kairouz, Liu 2021)
  so that the sum of the worst case of t survivors spends ``participant_epsilon`` at
  ``participant_delta`` over the planned rounds; the rotation seed is public, derived
  from the round id (:func:`rotation_seed`). The round then declares both events and
  every bank charges both. Off by default: with five banks the noise that protects a
  whole bank's contribution is of the order of the update itself and costs most of the
  model's accuracy (measured in ``secagg demo --participant-epsilon``).

Default plan (chosen by measurement on the demo's data, see the closing note of issue
5): logistic regression, sample rate 0.05, one local epoch (20 DP-SGD steps) per round,
learning rate 1.0, per-example clip 1.0, ten rounds; ``update_clip`` 10 only bounds the
ring encoding (the measured update norms are 0.6 to 2.5, so it never binds) and is not a
privacy parameter when participant-level DP is off.

Global model initialisation: ``dp.training.initial_parameters`` drawn from
``DeterministicRandom(plan.initial_model_seed)``, a public seed in the plan, so every
bank starts from the same model.
"""

from __future__ import annotations

from secagg.rounds import Round

import functools
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

from clients.runtime.errors import ClientError
from clients.harness.http_simulation import DroppingTransport, SimulatedDropout
from clients.runtime.inputs import ClientInput, RealVectorInput, RingVectorInput
from clients.runtime.policy import ClientPolicy
from clients.runtime.retry import PollSchedule, RetryPolicy
from clients.training.tabular import (
    MomentSums,
    Preprocessor,
    TabularSchema,
    moment_sums,
    read_csv,
    statistics_from_sums,
)
from clients.runtime.transport import Pending, RoundAborted, RoundDescription, RoundResult, RoundTransport
from dp.accounting import SampledGaussian
from dp.atomic_files import PUBLIC_MODE, write_atomic
from dp.models import ModelKind, ModelSpec
from secagg.config import ProtocolMode
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import SEED_BYTES, DeterministicRandom, SystemRandom
from secagg.http_contract import NONCE_BYTES, ProblemType, problem_suffix, sign_request

PLAN_FORMAT = "secagg-federated-plan/1"
STATISTICS_CLIP = float(1 << 24)
"""Bound on every coordinate of a statistics vector (row counts and sums of values in [0, 1]): 16.7 million rows per bank."""
STATISTICS_BITS = 64
PROGRESS_FILE = "progress.jsonl"
MODEL_FILE = "global-model.npy"
LEDGER_FILE = "privacy-ledger.jsonl"
ACCOUNTANT_FILE = "accountant.json"
DEFAULT_SERVER_TIMEOUT = 30.0
"""Seconds of consecutive connection failures before a bank gives up on the server."""
POLL = PollSchedule(initial_interval=0.2, multiplier=1.3, max_interval=1.0, timeout=1800.0)
"""Polls for the next stage: start at 0.2 s, never wait more than 1 s (a consortium of a handful of banks)."""


class FederatedError(ClientError):
    """Base error of the federated training loop."""


class PlanMismatch(FederatedError):
    """The round the server opened does not match the agreed plan (declared privacy, dimension); refused before spending."""


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
    participant_epsilon: float | None = None
    participant_delta: float = 1e-5

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
        epsilon = self.participant_epsilon
        if epsilon is not None and not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
            raise FederatedError(f"participant_epsilon must be a positive number or null, got {epsilon!r}")
        if not 0 < self.participant_delta < 1:
            raise FederatedError("need 0 < participant_delta < 1")

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

    def distributed_config(self, parameters: int, *, min_survivors: int, max_clients: int):
        """The participant-level Skellam configuration for a cohort (``None`` without participant-level DP).

        Clip ``update_clip``, randomized Hadamard rotation, scale so that the clipped norm
        spans :data:`PARTICIPANT_SCALED_CLIP` integer units, aggregate variance calibrated
        so that ``rounds`` releases with only ``min_survivors`` survivors spend
        ``participant_epsilon`` at ``participant_delta`` (Agarwal, Kairouz, Liu 2021).
        """
        if self.participant_epsilon is None:
            return None
        return _distributed_config(self, parameters, min_survivors, max_clients)

    def round_dim(self, parameters: int, *, min_survivors: int, max_clients: int) -> int:
        """The round's vector length: the parameter count, or its padded length when rotating."""
        config = self.distributed_config(parameters, min_survivors=min_survivors, max_clients=max_clients)
        return parameters if config is None else config.padded_dimension

    def round_privacy(self, parameters: int, *, min_survivors: int, max_clients: int) -> list[dict[str, Any]]:
        """The ``dp_policy.privacy`` a training round declares (and the server records): the
        example-level DP-SGD event, and the participant-level Skellam event if planned."""
        from dp.audit.privacy_ledger import PrivacyUnit
        from dp.audit.round_records import RoundPrivacy

        items = [RoundPrivacy(PrivacyUnit.EXAMPLE, self.round_event())]
        config = self.distributed_config(parameters, min_survivors=min_survivors, max_clients=max_clients)
        if config is not None:
            items.append(RoundPrivacy(PrivacyUnit.PARTICIPANT, config.accounting_event(rounds=1)))
        return [item.to_dict() for item in items]

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


PARTICIPANT_SCALED_CLIP = float(1 << 14)
"""scale * update_clip for participant-level noise: 16,384 integer units, so rounding adds
about sqrt(d') / 16,384 of the clip norm (KLS 2021 section 4.2) while 2^31 leaves ample headroom."""


@functools.lru_cache(maxsize=16)
def _distributed_config(plan: FederatedPlan, parameters: int, min_survivors: int, max_clients: int):
    from dp.mechanisms.distributed import DistributedDPConfig

    assert plan.participant_epsilon is not None
    return DistributedDPConfig.for_target_epsilon(
        target_epsilon=plan.participant_epsilon,
        delta=plan.participant_delta,
        rounds=plan.rounds,
        dimension=parameters,
        clip_norm=plan.update_clip,
        scale=PARTICIPANT_SCALED_CLIP / plan.update_clip,
        min_survivors=min_survivors,
        max_clients=max_clients,
        ring_bits=plan.ring_bits,
    )


def rotation_seed(round_id: str) -> bytes:
    """The round's public rotation seed: SHA-256 of a label and the round id (every party derives it)."""
    return hashlib.sha256(b"secagg/federated/rotation-seed/v1\x00" + bytes.fromhex(round_id)).digest()


def _write_json(path: Path, value: Any) -> None:
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8"), mode=PUBLIC_MODE)


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


def _problem_type(response: httpx.Response) -> str:
    try:
        value = response.json()
    except ValueError:
        return ""
    problem = value.get("type", "") if isinstance(value, dict) else ""
    return problem_suffix(str(problem)) or ""


class WorkPoller:
    """Finds the next round this bank must join: signed ``GET /v1/work`` (docs/API.md section 5)."""

    def __init__(self, base_url: str, *, key_id: str, identity: SigningKey, unreachable_timeout: float = DEFAULT_SERVER_TIMEOUT) -> None:
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
        if response.status_code == 401 and _problem_type(response) == ProblemType.UNKNOWN_KEY.suffix:
            # Not enrolled yet (the administrator enrols the public key after the bank made it): wait, within the same window.
            return self._unavailable("this bank's key is not enrolled on the server")
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
class DropoutInjection:
    """Demo only: stop answering in training round ``round_index`` (0-based) from ``protocol_round`` on."""

    round_index: int
    protocol_round: Round = Round.MASKED_INPUT_COLLECTION


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
    server_timeout: float = DEFAULT_SERVER_TIMEOUT

    def to_dict(self) -> dict[str, Any]:
        value = {key: (str(item) if isinstance(item, Path) else item) for key, item in asdict(self).items()}
        if self.dropout is not None:
            value["dropout"] = {"round_index": self.dropout.round_index, "protocol_round": self.dropout.protocol_round.key}
        return value

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> BankJob:
        paths = {"data", "schema", "plan", "work_dir", "key", "policy"}
        items = {key: (Path(item) if key in paths and item is not None else item) for key, item in value.items()}
        if items.get("dropout") is not None:
            items["dropout"] = DropoutInjection(int(items["dropout"]["round_index"]), Round.from_key(items["dropout"]["protocol_round"]))
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
    dropout: DropoutInjection | None,
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
    declared = list((description.dp_policy or {}).get("privacy", []))
    if declared != privacy:
        raise PlanMismatch(f"round {round_id} declares privacy {declared}, the plan prescribes {privacy}; refusing to spend")
    contribution = prepare(description)
    transport = context.transport if dropout is None else DroppingTransport(context.transport, dropout.protocol_round.number)
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
        result = outcome.result if outcome.result is not None else _await_result(context.transport, round_id, context.job.round_timeout)
    except SimulatedDropout as dropped:
        contributed = False
        context.progress.write("dropped-out", round_id=round_id, protocol_round=str(dropped))
        result = _await_result(context.transport, round_id, context.job.round_timeout)
    survivors = tuple(result.survivors)
    return round_id, contribution.decode(result.vector, len(survivors)), survivors, contributed


def run_bank(job: BankJob, *, identity: SigningKey | None = None) -> dict[str, Any]:
    """One bank's whole federated run (see the module docstring). Returns its final figures."""
    from clients.runtime.http_transport import HttpTransport
    from clients.runtime.keyfile import load_identity_key
    from dp.budget import BudgetGuard, BudgetPolicy, UnitBudget
    from dp.audit.privacy_ledger import PrivacyLedger, PrivacyUnit

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
    budgets = {PrivacyUnit.EXAMPLE: UnitBudget(plan.target_epsilon, plan.delta)}
    if plan.participant_epsilon is not None:
        budgets[PrivacyUnit.PARTICIPANT] = UnitBudget(plan.participant_epsilon, plan.participant_delta)
    with HttpTransport(job.server, key_id=job.participant_id, identity=key, retry=RetryPolicy(max_attempts=10)) as http:
        poller = WorkPoller(job.server, key_id=job.participant_id, identity=key, unreachable_timeout=job.server_timeout)
        context = _BankContext(job, plan, key, http, poller, policy, progress)
        try:
            if not schema.is_standardized:
                sums = moment_sums(table, schema)
                round_id, total, survivors, _ = _secure_round(
                    context,
                    expected=lambda description: (statistics_dim(schema), []),
                    prepare=lambda description: real_contribution(sums.to_vector(), clip=STATISTICS_CLIP, config=description.config),
                    dropout=None,
                )
                names = [column.name for column in schema.numeric_columns]
                schema = schema.with_statistics(statistics_from_sums(schema, MomentSums.from_vector(names, total)))
                schema.save(job.work_dir / "schema-standardized.json")
                progress.write("statistics", round_id=round_id, survivors=len(survivors))
            dataset = Preprocessor(schema).transform(table)
            import torch  # only now: a bank that cannot reach the server or agree the statistics never loads it

            from dp.training import BankTrainer

            torch.set_num_threads(1)
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

                    declared = [RoundPrivacy.from_dict(item) for item in description.dp_policy["privacy"]]
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
                    dropout = job.dropout if job.dropout is not None and job.dropout.round_index == round_index else None
                    round_id, total, survivors, contributed = _secure_round(context, expected=expected, prepare=train, dropout=dropout)
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


def bank_process_main(argv: list[str]) -> int:
    """``python -m clients.training.federated JOB.json``: one bank process of the demo (key generated here, never leaves)."""
    from clients.runtime.keyfile import generate_key_file, load_identity_key

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
