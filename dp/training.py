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

A bank's own model (:class:`dp.models.ModelLayout`): a factory ``package.module:function``,
called as ``factory(num_features=F)``, returns a :class:`ModelDefinition` (or a tuple
``(module, loss[, adapter])``): any ``torch.nn.Module`` Opacus can train with DP-SGD, the
loss it is trained with (:class:`dp.models.LossKind`) and optionally a data adapter that maps
the tabular feature matrix (N x F, from the agreed schema) to the module's input (N x ...).
:func:`describe_model` checks a module with Opacus's validators layer by layer (refusals name
the layer) and records its parameter names and shapes; :func:`define_checked_model` refuses a
module whose parameters differ from the recorded layout. Importing a factory runs the bank's
own code: only a bank does it (threat_model.md), never the server, the coordinator or the auditor.

This is the only module of :mod:`dp` that imports torch and opacus.
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from dp.models import LossKind, ModelKind, ModelLayout, ModelSpec, ModelSpecError, ParameterShape, loss_of
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


AnyModel = ModelSpec | ModelLayout
"""A built-in model specification or the layout of a bank's own model."""
Adapter = Callable[[np.ndarray], np.ndarray]


class ModelRefused(TrainingError):
    """A bank's own model that cannot be federated: a factory that cannot be imported or returns
    something else than a module and its loss, or a module Opacus cannot train (the layer is named)."""


class ModelDiffers(TrainingError):
    """This bank's module does not have the parameter names and shapes the manifest records."""


@dataclass(frozen=True)
class ModelDefinition:
    """What a model factory returns: the module, its loss and (optionally) its data adapter.

    ``adapter`` maps the float32 tabular feature matrix (N x ``num_features``) to the
    module's input, keeping the N rows first (for example reshaping a customer's
    transaction history into N x T x F for a recurrent layer); without one the module
    takes the feature matrix itself.
    """

    module: torch.nn.Module
    loss: LossKind
    adapter: Adapter | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.module, torch.nn.Module):
            raise ModelRefused(f"a model factory returns a torch.nn.Module, got {type(self.module).__name__}")
        try:
            object.__setattr__(self, "loss", LossKind(self.loss))
        except ValueError:
            raise ModelRefused(f"unknown loss {self.loss!r} (one of {[kind.value for kind in LossKind]})") from None
        if self.adapter is not None and not callable(self.adapter):
            raise ModelRefused("a model's data adapter must be callable")

    def inputs(self, features: np.ndarray) -> torch.Tensor:
        """The module's input for a tabular feature matrix (through the adapter, if any), float32."""
        values = np.asarray(features, dtype=np.float32)
        adapted = values if self.adapter is None else np.asarray(self.adapter(values), dtype=np.float32)
        if adapted.ndim < 1 or adapted.shape[0] != values.shape[0]:
            raise ModelRefused(f"the data adapter must keep the {values.shape[0]} rows first, returned shape {adapted.shape}")
        return torch.from_numpy(np.ascontiguousarray(adapted))


def load_factory(reference: str) -> Callable[..., Any]:
    """The function ``package.module:function`` names. Imports (so runs) that module: a bank's own code."""
    from dp.models import FACTORY_REFERENCE

    if not isinstance(reference, str) or not FACTORY_REFERENCE.fullmatch(reference):
        raise ModelRefused(f"a model factory is written package.module:function, got {reference!r}")
    module_name, _, function_name = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error the bank's module raises while it is imported
        raise ModelRefused(f"cannot import the model factory's module {module_name!r}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ModelRefused(f"{module_name} has no function {function_name!r}")
    return factory


def define_model(reference: str, num_features: int) -> ModelDefinition:
    """Call the factory ``reference`` with ``num_features=num_features``; its module in float32, training mode."""
    factory = load_factory(reference)
    try:
        produced = factory(num_features=num_features)
    except Exception as exc:  # the bank's own code: any failure is a refusal of its model, with its message
        raise ModelRefused(f"{reference}(num_features={num_features}) raised {type(exc).__name__}: {exc}") from None
    if isinstance(produced, tuple) and len(produced) in (2, 3):
        produced = ModelDefinition(*produced)
    if not isinstance(produced, ModelDefinition):
        raise ModelRefused(
            f"{reference} must return a ModelDefinition or (module, loss[, adapter]), got {type(produced).__name__}"
        )
    produced.module.float().train()
    return produced


def module_parameters(module: torch.nn.Module) -> tuple[ParameterShape, ...]:
    """The module's parameters in ``named_parameters()`` order (the flat vector's order)."""
    return tuple(ParameterShape(name, tuple(int(d) for d in parameter.shape)) for name, parameter in module.named_parameters())


def module_problems(module: torch.nn.Module) -> list[str]:
    """Why Opacus cannot train ``module`` with DP-SGD, one line per problem, each naming its layer.

    Opacus's own validators (``ModuleValidator.VALIDATORS``: BatchNorm, unsupported LSTM/GRU/
    multi-head attention, instance norm with running statistics, ...) are applied to every
    trainable layer by name; a trainable layer with buffers (running statistics mix rows, so
    per-example clipping would not bound one row's influence) and a frozen parameter (it
    would not be in the federated vector) are refused as well.
    """
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    problems: list[str] = []
    for name, layer in trainable_modules(module):
        label = name or "the model"
        validator = ModuleValidator.VALIDATORS.get(type(layer))
        if validator is not None:
            problems.extend(f"layer {label} ({type(layer).__name__}): {error}" for error in validator(layer))
        elif any(True for _ in layer.buffers(recurse=False)):
            problems.append(f"layer {label} ({type(layer).__name__}): a trainable layer with buffers mixes rows")
    frozen = [name for name, parameter in module.named_parameters() if not parameter.requires_grad]
    if frozen:
        problems.append(f"parameter {frozen[0]} is frozen (requires_grad=False): every parameter is federated")
    return problems


def describe_model(reference: str, num_features: int, *, classes: tuple[str, ...] | None = None) -> ModelLayout:
    """The layout of the factory's module, after Opacus's checks; :class:`ModelRefused` names every refused layer.

    The module is run once on two rows of zeros (through its adapter) to check that its
    output fits its loss: one value per row, or one per class for cross-entropy.
    """
    definition = define_model(reference, num_features)
    problems = module_problems(definition.module)
    if problems:
        raise ModelRefused(f"Opacus cannot train {reference} with DP-SGD: " + "; ".join(problems))
    with torch.no_grad():
        outputs = definition.module(definition.inputs(np.zeros((2, num_features), dtype=np.float32)))
    shape: tuple[int, ...] | None = tuple(int(d) for d in outputs.shape) if isinstance(outputs, torch.Tensor) else None
    count = 1
    if definition.loss is LossKind.CROSS_ENTROPY:
        if shape is None or len(shape) != 2 or shape[0] != 2:
            raise ModelRefused(f"a cross-entropy model returns N x classes outputs, {reference} returned {shape}")
        count = shape[1]
        if classes is not None and len(classes) != count:
            raise ModelRefused(f"{reference} has {count} outputs for {len(classes)} classes")
    elif shape not in ((2,), (2, 1)):
        raise ModelRefused(f"a {definition.loss.value} model returns one output per row, {reference} returned {shape}")
    try:
        return ModelLayout(
            factory=reference,
            num_features=num_features,
            loss=definition.loss,
            outputs=count,
            parameters=module_parameters(definition.module),
            classes=classes,
        )
    except ModelSpecError as exc:
        raise ModelRefused(str(exc)) from None


def define_checked_model(layout: ModelLayout) -> ModelDefinition:
    """This bank's module for ``layout``; :class:`ModelDiffers` unless its names and shapes are the layout's."""
    definition = define_model(layout.factory, layout.num_features)
    difference = layout.first_difference(module_parameters(definition.module))
    if difference is not None:
        raise ModelDiffers(
            f"this bank's {layout.factory} is not the manifest's model (shapes {layout.shapes_sha256[:16]}…): {difference}"
        )
    if definition.loss is not layout.loss:
        raise ModelDiffers(
            f"this bank's {layout.factory} trains with {definition.loss.value}, the manifest's with {layout.loss.value}"
        )
    return definition


def _definition(spec: AnyModel) -> ModelDefinition:
    if isinstance(spec, ModelLayout):
        return define_checked_model(spec)
    return ModelDefinition(build_model(spec), LossKind.BINARY_CROSS_ENTROPY)


def _summed_loss(loss: LossKind, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The sum over the batch of each row's own loss (per-example gradients are each row's)."""
    if loss is LossKind.CROSS_ENTROPY:
        return torch.nn.functional.cross_entropy(outputs, labels, reduction="sum")
    values = outputs.squeeze(-1) if outputs.ndim == 2 else outputs
    if loss is LossKind.MEAN_SQUARED_ERROR:
        return torch.nn.functional.mse_loss(values, labels, reduction="sum")
    return torch.nn.functional.binary_cross_entropy_with_logits(values, labels, reduction="sum")


def predict_outputs(spec: ModelLayout, parameters: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The raw outputs of a bank's own model (logits, or predictions for regression): N, or N x classes."""
    definition = define_checked_model(spec)
    load_parameters(definition.module, check_parameters(spec, parameters))
    definition.module.eval()
    with torch.no_grad():
        outputs = definition.module(definition.inputs(features)).double().numpy()
    return outputs if spec.loss is LossKind.CROSS_ENTROPY else outputs.reshape(-1)


def build_model(spec: ModelSpec) -> torch.nn.Module:
    """The torch module of a built-in ``spec`` (float32); its parameters are overwritten before use."""
    if spec.kind is ModelKind.LOGISTIC_REGRESSION:
        return torch.nn.Sequential(torch.nn.Linear(spec.num_features, 1))
    return torch.nn.Sequential(
        torch.nn.Linear(spec.num_features, spec.hidden_units),
        torch.nn.ReLU(),
        torch.nn.Linear(spec.hidden_units, 1),
    )


def initial_parameters(spec: AnyModel, source: RandomSource) -> np.ndarray:
    """A flat float32 initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) per layer
    (PyTorch's default ``nn.Linear`` bounds), drawn from ``source``.

    For a bank's own model, per parameter in order: fan_in is the product of its dimensions
    after the first, and a one-dimensional parameter (a bias) takes the fan_in of the last
    multi-dimensional parameter before it (1 if none). Drawn from the plan's public seed, not
    by the factory, so every bank starts from the same vector whatever its torch does.
    """
    if isinstance(spec, ModelLayout):
        fan_in = 1
        drawn = []
        for item in spec.parameters:
            if len(item.shape) > 1:
                fan_in = math.prod(item.shape[1:])
            drawn.append((uniform_floats(source, item.size) * 2.0 - 1.0) / math.sqrt(fan_in))
        return np.concatenate(drawn).astype(np.float32)
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


def check_parameters(spec: AnyModel, parameters: np.ndarray) -> np.ndarray:
    """``parameters`` as a float32 vector of ``spec.parameter_count`` finite values, or an error."""
    vector = np.asarray(parameters)
    if vector.ndim != 1 or vector.size != spec.parameter_count or vector.dtype.kind != "f":
        raise TrainingError(
            f"expected {spec.parameter_count} floating-point model parameters, got shape {vector.shape} dtype {vector.dtype}"
        )
    if not np.all(np.isfinite(vector)):
        raise TrainingError("the model parameters contain NaN or infinity")
    return vector.astype(np.float32)


def check_dataset(spec: AnyModel, features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Features (N x num_features, finite, float32) and the labels the model's loss takes, or an error.

    Binary cross-entropy: 0/1 (float32); cross-entropy: class indices 0..classes-1 (int64);
    mean squared error: finite numbers (float32).
    """
    x = np.asarray(features)
    y = np.asarray(labels)
    if x.ndim != 2 or x.shape[1] != spec.num_features or x.shape[0] < 1:
        raise TrainingError(f"features must be an N x {spec.num_features} array with N >= 1, got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise TrainingError(f"labels must be a vector of length {x.shape[0]}, got shape {y.shape}")
    if x.dtype.kind not in "fiu" or not np.all(np.isfinite(x)):
        raise TrainingError("features must be finite numbers")
    loss = loss_of(spec)
    if loss is LossKind.CROSS_ENTROPY:
        assert isinstance(spec, ModelLayout)
        if y.dtype.kind not in "fiu" or not np.all((y >= 0) & (y < spec.outputs) & (y == np.floor(y))):
            raise TrainingError(f"labels must be class indices 0..{spec.outputs - 1}")
        return x.astype(np.float32), torch.from_numpy(y.astype(np.int64))
    if loss is LossKind.MEAN_SQUARED_ERROR:
        if y.dtype.kind not in "fiu" or not np.all(np.isfinite(y)):
            raise TrainingError("regression labels must be finite numbers")
    elif not np.all((y == 0) | (y == 1)):
        raise TrainingError("labels must be 0 or 1")
    return x.astype(np.float32), torch.from_numpy(y.astype(np.float32))


def mean_loss(spec: AnyModel, parameters: np.ndarray, features: np.ndarray, labels: np.ndarray) -> float:
    """Mean loss (the model's own: binary cross-entropy for the built-in models) on a dataset.

    A local diagnostic, not differentially private: never send or log it outside the bank.
    """
    definition = _definition(spec)
    load_parameters(definition.module, check_parameters(spec, parameters))
    x, y = check_dataset(spec, features, labels)
    with torch.no_grad():
        return float(_summed_loss(definition.loss, definition.module(definition.inputs(x)), y)) / y.shape[0]


class BankTrainer:
    """A bank's DP-SGD trainer with its privacy accountant persisted at ``accountant_path``.

    ``source`` supplies Poisson sampling and noise (``SystemRandom()`` by default; tests
    inject ``DeterministicRandom``). A new trainer object over the same path continues
    the same privacy history: that is what a restarted bank process does.
    """

    def __init__(
        self,
        spec: AnyModel,
        config: DPSGDConfig,
        *,
        accountant_path: Path,
        source: RandomSource | None = None,
    ) -> None:
        if not isinstance(spec, (ModelSpec, ModelLayout)) or not isinstance(config, DPSGDConfig):
            raise TrainingError("spec must be a ModelSpec or a ModelLayout and config a DPSGDConfig")
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
        features, y = check_dataset(self.spec, features, labels)
        definition = _definition(self.spec)
        x = definition.inputs(features)
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

        model = definition.module
        load_parameters(model, start)
        trained = _run_dp_sgd(model, definition.loss, x, y, config, event.noise_multiplier, self.source)
        update = trained - start
        return LocalUpdate(model_update=update.astype(np.float32), event=event, epsilon=epsilon, delta=config.delta)


def _run_dp_sgd(
    model: torch.nn.Module,
    loss_kind: LossKind,
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
                loss = _summed_loss(loss_kind, grad_sample_module(x[batch]), y[batch])
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
    features, y = check_dataset(spec, features, labels)
    x = torch.from_numpy(features)
    for _ in range(iterations):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
        loss = loss + l2_penalty * sum((parameter**2).sum() for parameter in model.parameters())
        loss.backward()
        optimizer.step()
    return flatten_parameters(model)
