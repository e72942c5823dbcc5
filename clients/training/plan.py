"""The consortium's training plan: what every bank agreed about training, and what it implies.

A :class:`FederatedPlan` (a JSON file, ``secagg-federated-plan/1``) fixes the model,
the number of rounds, the DP-SGD parameters and the public seed of the initial model.
From it and the agreed schema, every party derives the same round parameters: the
statistics round's length (:func:`statistics_dim`), each training round's length
(:meth:`FederatedPlan.round_dim`) and the privacy it declares
(:meth:`FederatedPlan.round_privacy`). A bank refuses a round whose parameters do not
follow from the plan.

Privacy units and parameters (docs/DESIGN.md, section 3):

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

Default plan (chosen by measurement on the demo's data): logistic regression, sample rate 0.05, one local epoch (20 DP-SGD steps) per round,
learning rate 1.0, per-example clip 1.0, ten rounds; ``update_clip`` 10 only bounds the
ring encoding (the demo's update norms stay well below it, so it does not bind) and is not a
privacy parameter when participant-level DP is off.

Global model initialisation: ``dp.training.initial_parameters`` drawn from
``DeterministicRandom(plan.initial_model_seed)``, a public seed in the plan, so every
bank starts from the same model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clients.runtime.errors import ClientError
from clients.training.tabular import (
    RawTable,
    TabularError,
    TabularSchema,
    category_indices,
    parse_numeric,
    target_labels,
)
from dp.accounting import SampledGaussian
from dp.atomic_files import PUBLIC_MODE, write_atomic
from dp.models import LossKind, ModelKind, ModelLayout, ModelSpec, loss_of
from secagg.config import ProtocolMode
from secagg.hazmat.randomness import SEED_BYTES, DeterministicRandom

PLAN_FORMAT = "secagg-federated-plan/1"
STATISTICS_CLIP = float(1 << 24)
"""Bound on every coordinate of a statistics vector (row counts and sums of values in [0, 1]): 16.7 million rows per bank."""
STATISTICS_BITS = 64


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
        """The built-in model of this plan; a ``custom`` plan's model is the manifest's layout (:class:`TrainingRules`)."""
        if self.model is ModelKind.CUSTOM:
            raise FederatedError("a custom model is described by the manifest's model (its layout), not by the plan")
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

    def initial_model(self, spec: ModelSpec | ModelLayout) -> np.ndarray:
        """The global model every bank starts from, drawn from the plan's public seed."""
        from dp.training import initial_parameters

        return initial_parameters(spec, DeterministicRandom(bytes.fromhex(self.initial_model_seed)))

    def to_dict(self) -> dict[str, Any]:
        value = asdict(self)
        value["model"] = self.model.value
        value["mode"] = self.mode.value
        return {"format": PLAN_FORMAT, **value}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> FederatedPlan:
        if value.get("format") != PLAN_FORMAT:
            raise FederatedError(f"not a {PLAN_FORMAT} plan")
        known = set(cls.__dataclass_fields__)
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


def model_outputs(spec: ModelSpec | ModelLayout, parameters: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The model's raw outputs: logits (N, or N x classes) or a regression's predictions.

    The built-in models are scored in numpy; a bank's own model through its factory's module
    (:func:`dp.training.predict_outputs`, which imports torch and the bank's code).
    """
    if isinstance(spec, ModelLayout):
        from dp.training import predict_outputs

        return predict_outputs(spec, parameters, features)
    return predict_logits(spec, parameters, features)


def labels_for(spec: ModelSpec | ModelLayout, schema: TabularSchema, table: RawTable) -> np.ndarray:
    """The labels the model's loss takes, from the target column (each refusal names its data row).

    Binary cross-entropy: the schema's target rule (0/1); cross-entropy: the index of each
    row's target value in the layout's ``classes`` (a value not listed is refused);
    mean squared error: the target column's numbers (missing or non-numeric refused).
    """
    loss = loss_of(spec)
    if loss is LossKind.BINARY_CROSS_ENTROPY:
        return target_labels(schema, table)
    values = table.column(schema.target)
    rows = table.data_row_numbers()
    if loss is LossKind.MEAN_SQUARED_ERROR:
        numbers, missing = parse_numeric(values, column=schema.target, rows=rows)
        if np.any(missing):
            first = int(np.flatnonzero(missing)[0])
            raise TabularError(f"data row {int(rows[first])}: the regression target {schema.target!r} is missing")
        return numbers.astype(np.float32)
    assert isinstance(spec, ModelLayout) and spec.classes is not None
    index = category_indices(values, spec.classes)
    stray = np.flatnonzero(index == len(spec.classes))
    if stray.size:
        first = int(stray[0])
        raise TabularError(
            f"data row {int(rows[first])}: the target {schema.target!r} is {str(values[first])!r}, not one of the model's "
            f"classes ({', '.join(map(repr, spec.classes))})"
        )
    return index.astype(np.int64)


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
