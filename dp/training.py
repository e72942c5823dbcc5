"""Example-level DP-SGD at each bank (Abadi et al., CCS 2016), with Opacus 1.6.

A bank trains the shared model locally on its own customers' rows and sends only the
model update. Every local step is one application of the Poisson-subsampled Gaussian
mechanism: each row joins the batch independently with probability q
(:func:`dp.mechanisms.noise.poisson_subsample`), each row's gradient is clipped to L2 norm C
(Opacus's per-sample gradients), the clipped gradients are summed and Gaussian noise of
standard deviation z * C is added, then the sum is divided by the expected batch size
q * N. The update leaving the bank is therefore already (epsilon, delta)-DP for the
bank's customers; masking and aggregation are post-processing.

Noise comes from :func:`dp.mechanisms.noise.gaussian_noise` (a CSPRNG and the Holohan-Braghin sum
of four samples), wired in by :class:`CsprngDPOptimizer` in place of Opacus's
``_generate_noise``, because Opacus's own ``secure_mode`` needs torchcsprng, which no
longer installs. Poisson sampling uses the same CSPRNG; torch's generator is never used
for anything privacy-relevant.

Accounting is ours, not Opacus's: one :class:`dp.accounting.PrivacyAccountant` per bank,
loaded from and saved to disk around every round (``dp.accounting.save_accountant``),
so epsilon composes over every local step of every round and survives restarts, and the
auditor can recompute it without torch. The round's event is recorded and saved
*before* training starts (spend before use): a crash can only over-count, never
under-count.

Configuration by noise multiplier (:class:`FixedNoise`) or by a target epsilon over the
whole planned run (:class:`EpsilonTarget`): the noise multiplier is calibrated with
``dp.accounting.noise_multiplier_for_epsilon`` over the planned total steps of all
rounds (what Opacus's ``make_private_with_epsilon`` does for one run), and a round that
would take the bank past the target is refused before anything is spent.

This is the only module of :mod:`dp` that imports torch and opacus.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from dp.accounting import (
    AccountantKind,
    PrivacyAccountant,
    SampledGaussian,
    load_accountant,
    make_accountant,
    noise_multiplier_for_epsilon,
    save_accountant,
)
from dp.errors import DPError
from dp.mechanisms.noise import gaussian_noise, poisson_subsample
from dp.models import ModelKind, ModelSpec
from secagg.hazmat.randomness import RandomSource, SystemRandom, uniform_floats

_EPSILON_TOLERANCE = 1e-9
"""Relative slack when comparing a prospective epsilon with its target (float noise only)."""


class TrainingError(DPError, ValueError):
    """Invalid training configuration or data; raised before anything is spent."""


class PlannedRunExceeded(DPError):
    """A round that would take the bank past the target epsilon of its planned run.

    Raised before the accountant is stepped: nothing is spent.
    """


@dataclass(frozen=True)
class FixedNoise:
    """Use noise multiplier z (noise std = z * max_grad_norm)."""

    noise_multiplier: float

    def __post_init__(self) -> None:
        if not _is_positive_finite(self.noise_multiplier):
            raise TrainingError(f"noise_multiplier must be a positive finite number, got {self.noise_multiplier!r}")


@dataclass(frozen=True)
class EpsilonTarget:
    """Calibrate z so that ``planned_rounds`` rounds of local steps spend ``target_epsilon``."""

    target_epsilon: float
    planned_rounds: int

    def __post_init__(self) -> None:
        if not _is_positive_finite(self.target_epsilon):
            raise TrainingError(f"target_epsilon must be a positive finite number, got {self.target_epsilon!r}")
        if not _is_positive_int(self.planned_rounds):
            raise TrainingError(f"planned_rounds must be a positive integer, got {self.planned_rounds!r}")


@dataclass(frozen=True)
class DPSGDConfig:
    """DP-SGD hyper-parameters of one bank.

    ``sample_rate`` is the Poisson sampling rate q (expected batch size q * N);
    ``local_steps`` the DP-SGD steps per round (:meth:`steps_for_epochs` converts
    epochs); ``delta`` the delta at which epsilon is reported and targeted.
    """

    max_grad_norm: float
    sample_rate: float
    local_steps: int
    learning_rate: float
    noise: FixedNoise | EpsilonTarget
    delta: float
    accountant: AccountantKind = AccountantKind.RDP

    def __post_init__(self) -> None:
        if not _is_positive_finite(self.max_grad_norm):
            raise TrainingError(f"max_grad_norm must be a positive finite number, got {self.max_grad_norm!r}")
        if not (_is_positive_finite(self.sample_rate) and self.sample_rate <= 1.0):
            raise TrainingError(f"sample_rate must satisfy 0 < q <= 1, got {self.sample_rate!r}")
        if not _is_positive_int(self.local_steps):
            raise TrainingError(f"local_steps must be a positive integer, got {self.local_steps!r}")
        if not _is_positive_finite(self.learning_rate):
            raise TrainingError(f"learning_rate must be a positive finite number, got {self.learning_rate!r}")
        if not isinstance(self.noise, (FixedNoise, EpsilonTarget)):
            raise TrainingError(f"noise must be FixedNoise or EpsilonTarget, got {self.noise!r}")
        if not (_is_positive_finite(self.delta) and self.delta < 1.0):
            raise TrainingError(f"delta must satisfy 0 < delta < 1, got {self.delta!r}")
        if not isinstance(self.accountant, AccountantKind):
            raise TrainingError(f"accountant must be an AccountantKind, got {self.accountant!r}")

    @staticmethod
    def steps_for_epochs(epochs: int, sample_rate: float) -> int:
        """Local steps that cover ``epochs`` passes in expectation: ceil(epochs / q)."""
        if not _is_positive_int(epochs) or not (_is_positive_finite(sample_rate) and sample_rate <= 1.0):
            raise TrainingError("epochs must be a positive integer and 0 < sample_rate <= 1")
        return math.ceil(epochs / sample_rate)

    @property
    def noise_multiplier(self) -> float:
        """z: given, or calibrated over ``planned_rounds * local_steps`` steps."""
        if isinstance(self.noise, FixedNoise):
            return float(self.noise.noise_multiplier)
        return _calibrated_noise_multiplier(
            self.noise.target_epsilon,
            self.delta,
            self.sample_rate,
            self.noise.planned_rounds * self.local_steps,
            self.accountant,
        )

    def round_event(self) -> SampledGaussian:
        """The mechanism event of one round: ``local_steps`` subsampled Gaussian steps."""
        return SampledGaussian(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.local_steps)


@functools.lru_cache(maxsize=32)
def _calibrated_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: AccountantKind
) -> float:
    return float(
        noise_multiplier_for_epsilon(
            target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant
        )
    )


@dataclass(frozen=True)
class LocalUpdate:
    """What one round of local training produced.

    ``model_update`` (new - old parameters, float32) is the only part that leaves the
    bank; ``event`` and ``epsilon`` (cumulative over every round so far, at ``delta``)
    go to the bank's privacy ledger.
    """

    model_update: np.ndarray
    event: SampledGaussian
    epsilon: float
    delta: float


class CsprngDPOptimizer(DPOptimizer):
    """Opacus's :class:`DPOptimizer` with its Gaussian noise drawn from a CSPRNG.

    Only :meth:`add_noise` changes: the noise for each parameter is
    :func:`dp.mechanisms.noise.gaussian_noise` with std ``noise_multiplier * max_grad_norm`` from
    the injected :class:`RandomSource` (float64, cast to the parameter's dtype).
    Opacus's clipping, accumulation and scaling are used unchanged. The processed-flag
    checks mirror ``DPOptimizer.add_noise`` of Opacus 1.6.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, source: RandomSource, **kwargs: object) -> None:
        super().__init__(optimizer, **kwargs)
        self.noise_source = source

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for parameter in self.params:
            _check_processed_flag(parameter.summed_grad)
            summed = parameter.summed_grad
            noise = gaussian_noise(self.noise_source, summed.numel(), std=std)
            noise_tensor = torch.from_numpy(noise).to(dtype=summed.dtype).view_as(summed)
            parameter.grad = (summed + noise_tensor).view_as(parameter)
            _mark_as_processed(parameter.summed_grad)


def build_model(spec: ModelSpec) -> torch.nn.Module:
    """The torch module of ``spec`` (float32); its parameters are overwritten before use."""
    if spec.kind is ModelKind.LOGISTIC_REGRESSION:
        return torch.nn.Sequential(torch.nn.Linear(spec.num_features, 1))
    return torch.nn.Sequential(
        torch.nn.Linear(spec.num_features, spec.hidden_units),
        torch.nn.ReLU(),
        torch.nn.Linear(spec.hidden_units, 1),
    )


def initial_parameters(spec: ModelSpec, source: RandomSource) -> np.ndarray:
    """A flat float32 initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) per layer
    (PyTorch's default ``nn.Linear`` bounds), drawn from ``source``."""
    pieces = []
    for fan_in, fan_out in spec.layer_shapes:
        bound = 1.0 / math.sqrt(fan_in)
        count = fan_in * fan_out + fan_out
        pieces.append((uniform_floats(source, count) * 2.0 - 1.0) * bound)
    return np.concatenate(pieces).astype(np.float32)


def flatten_parameters(model: torch.nn.Module) -> np.ndarray:
    """The model's parameters as one float32 vector, in ``parameters()`` order."""
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy().astype(np.float32, copy=True)


def load_parameters(model: torch.nn.Module, parameters: np.ndarray) -> None:
    """Overwrite the model's parameters with a flat vector (as from :func:`flatten_parameters`)."""
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(torch.from_numpy(np.array(parameters, dtype=np.float32)), model.parameters())


def check_parameters(spec: ModelSpec, parameters: np.ndarray) -> np.ndarray:
    """``parameters`` as a float32 vector of ``spec.parameter_count`` finite values, or an error."""
    vector = np.asarray(parameters)
    if vector.ndim != 1 or vector.size != spec.parameter_count or vector.dtype.kind != "f":
        raise TrainingError(
            f"expected {spec.parameter_count} floating-point model parameters, got shape {vector.shape} dtype {vector.dtype}"
        )
    if not np.all(np.isfinite(vector)):
        raise TrainingError("the model parameters contain NaN or infinity")
    return vector.astype(np.float32)


def check_dataset(spec: ModelSpec, features: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N x num_features, finite) and binary labels (N) as float32 tensors, or an error."""
    x = np.asarray(features)
    y = np.asarray(labels)
    if x.ndim != 2 or x.shape[1] != spec.num_features or x.shape[0] < 1:
        raise TrainingError(f"features must be an N x {spec.num_features} array with N >= 1, got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise TrainingError(f"labels must be a vector of length {x.shape[0]}, got shape {y.shape}")
    if x.dtype.kind not in "fiu" or not np.all(np.isfinite(x)):
        raise TrainingError("features must be finite numbers")
    if not np.all((y == 0) | (y == 1)):
        raise TrainingError("labels must be 0 or 1")
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))


def mean_loss(spec: ModelSpec, parameters: np.ndarray, features: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of the model on a dataset.

    A local diagnostic, not differentially private: never send or log it outside the bank.
    """
    model = build_model(spec)
    load_parameters(model, check_parameters(spec, parameters))
    x, y = check_dataset(spec, features, labels)
    with torch.no_grad():
        return float(torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y))


class BankTrainer:
    """A bank's DP-SGD trainer with its privacy accountant persisted at ``accountant_path``.

    ``source`` supplies Poisson sampling and noise (``SystemRandom()`` by default; tests
    inject ``DeterministicRandom``). A new trainer object over the same path continues
    the same privacy history: that is what a restarted bank process does.
    """

    def __init__(
        self,
        spec: ModelSpec,
        config: DPSGDConfig,
        *,
        accountant_path: Path,
        source: RandomSource | None = None,
    ) -> None:
        if not isinstance(spec, ModelSpec) or not isinstance(config, DPSGDConfig):
            raise TrainingError("spec must be a ModelSpec and config a DPSGDConfig")
        self.spec = spec
        self.config = config
        self.accountant_path = Path(accountant_path)
        self.source: RandomSource = source if source is not None else SystemRandom()

    def load_accountant(self) -> PrivacyAccountant:
        """The persisted accountant, or a fresh one of the configured kind if none exists yet."""
        if self.accountant_path.exists():
            return load_accountant(self.accountant_path)
        return make_accountant(self.config.accountant)

    def epsilon_spent(self) -> float:
        """Cumulative epsilon at ``config.delta`` over every recorded round (0 if none)."""
        if not self.accountant_path.exists():
            return 0.0
        return float(self.load_accountant().get_epsilon(delta=self.config.delta))

    def prospective_epsilon(self) -> float:
        """The cumulative epsilon after one more round, computed without spending anything."""
        accountant = self.load_accountant()
        return float(accountant.epsilon_with(event=self.config.round_event(), delta=self.config.delta))

    def train_round(self, global_parameters: np.ndarray, features: np.ndarray, labels: np.ndarray) -> LocalUpdate:
        """One round: spend and persist, then ``local_steps`` DP-SGD steps from the global model.

        Returns the update (new - old, float32), the round's event and the cumulative
        epsilon. Bad input and a round beyond an :class:`EpsilonTarget` are refused before
        the accountant changes.
        """
        start = check_parameters(self.spec, global_parameters)
        x, y = check_dataset(self.spec, features, labels)
        config = self.config
        event = config.round_event()
        if isinstance(config.noise, EpsilonTarget):
            prospective = self.prospective_epsilon()
            if prospective > config.noise.target_epsilon * (1.0 + _EPSILON_TOLERANCE):
                raise PlannedRunExceeded(
                    f"another round would bring epsilon to {prospective:.4f} at delta {config.delta:g}, above the "
                    f"planned run's target {config.noise.target_epsilon:g} ({config.noise.planned_rounds} rounds)"
                )
        accountant = self.load_accountant()
        accountant.step(event=event)
        save_accountant(self.accountant_path, accountant)
        epsilon = float(accountant.get_epsilon(delta=config.delta))

        model = build_model(self.spec)
        load_parameters(model, start)
        trained = _run_dp_sgd(model, x, y, config, event.noise_multiplier, self.source)
        update = trained - start
        return LocalUpdate(model_update=update.astype(np.float32), event=event, epsilon=epsilon, delta=config.delta)


def _run_dp_sgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: DPSGDConfig,
    noise_multiplier: float,
    source: RandomSource,
) -> np.ndarray:
    """``config.local_steps`` DP-SGD steps in place; returns the final flat parameters.

    Per-example losses are summed (GradSampleModule ``loss_reduction="sum"``, so the
    per-sample gradients are the gradients of each example's own loss) and the noisy
    sum is divided by the *expected* batch size q * N (``DPOptimizer``
    ``loss_reduction="mean"``), as Opacus does under Poisson sampling. An empty
    Poisson batch still takes a step: the noise alone.
    """
    population = x.shape[0]
    grad_sample_module = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    optimizer = CsprngDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=config.learning_rate),
        source=source,
        noise_multiplier=noise_multiplier,
        max_grad_norm=config.max_grad_norm,
        expected_batch_size=config.sample_rate * population,
        loss_reduction="mean",
    )
    try:
        with warnings.catch_warnings():
            # Inputs never require gradients here; Opacus's hooks only need the outputs'.
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            for _ in range(config.local_steps):
                batch = torch.from_numpy(poisson_subsample(source, population, config.sample_rate))
                optimizer.zero_grad(set_to_none=True)
                logits = grad_sample_module(x[batch]).squeeze(-1)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[batch], reduction="sum")
                loss.backward()
                optimizer.step()
    finally:
        grad_sample_module._close()
    return flatten_parameters(model)


def _is_positive_finite(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _is_positive_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def use_threads(count: int) -> None:
    """Limit torch's intra-op threads in this process (a bank's training is small; one thread avoids contention)."""
    torch.set_num_threads(count)


def train_non_private(
    spec: ModelSpec,
    start: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    iterations: int,
    learning_rate: float,
    l2_penalty: float,
) -> np.ndarray:
    """A non-private reference model: full-batch Adam on the given rows with an L2 penalty.

    For baselines only (the pooled data of a demo, never a bank's production path):
    no clipping, no noise, no accountant.
    """
    model = build_model(spec)
    load_parameters(model, start)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    x, y = check_dataset(spec, features, labels)
    for _ in range(iterations):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
        loss = loss + l2_penalty * sum((parameter**2).sum() for parameter in model.parameters())
        loss.backward()
        optimizer.step()
    return flatten_parameters(model)
