"""Model specifications for local training, without torch.

The server, the auditor and the round configuration need a model's parameter count
(the length of every update vector) but never import torch; the torch modules are
built from these specifications in :mod:`dp.training`.

The built-in models are binary classifiers for tabular bank data (for example default /
no default): logistic regression and a one-hidden-layer MLP with ReLU. Both output one
logit; the loss is binary cross-entropy on the logit. The flat parameter order is
PyTorch's ``module.parameters()`` order: for each linear layer its weight (row-major,
``out x in``) then its bias.

A bank's own model (:class:`ModelLayout`) is any Opacus-compatible ``torch.nn.Module`` a
factory builds; what the torch-free parties need of it is its ordered parameter names and
shapes (so its parameter count) and its loss, recorded in the manifest with a hash of the
names and shapes.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from dp.errors import DPError
from secagg.consortium import canonical_json


class ModelSpecError(DPError, ValueError):
    """A model specification with invalid sizes."""


class ModelKind(str, Enum):
    """The supported tabular models."""

    LOGISTIC_REGRESSION = "logistic-regression"
    MLP = "mlp"
    CUSTOM = "custom"
    """A bank's own module, built by a factory the manifest's ``model`` names (:class:`ModelLayout`)."""


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of the shared model: ``kind``, input width and (MLP) hidden width."""

    kind: ModelKind
    num_features: int
    hidden_units: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ModelKind) or self.kind is ModelKind.CUSTOM:
            raise ModelSpecError(f"kind must be a built-in ModelKind (a custom model is a ModelLayout), got {self.kind!r}")
        for name in ("num_features", "hidden_units"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelSpecError(f"{name} must be a positive integer, got {value!r}")

    @property
    def layer_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(in, out)`` of each linear layer, input to output."""
        if self.kind is ModelKind.LOGISTIC_REGRESSION:
            return ((self.num_features, 1),)
        return ((self.num_features, self.hidden_units), (self.hidden_units, 1))

    @property
    def parameter_count(self) -> int:
        """Length of the flat parameter (and update) vector."""
        return sum(fan_in * fan_out + fan_out for fan_in, fan_out in self.layer_shapes)


# --------------------------------------------------------------------------- a bank's own model

LAYOUT_FORMAT = "secagg-model-layout/1"
FACTORY_REFERENCE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
"""``package.module:function``: where a bank's own model factory is imported from."""


class LossKind(str, Enum):
    """The loss a model is trained with; it fixes the task, the labels and the evaluation metrics.

    * ``binary-cross-entropy``: binary classification, one logit per row, labels 0/1 (the
      schema's target rule);
    * ``cross-entropy``: multi-class classification, one logit per class, labels the index of
      the row's target value in the layout's ``classes``;
    * ``mean-squared-error``: regression, one output per row, labels the target column's numbers.
    """

    BINARY_CROSS_ENTROPY = "binary-cross-entropy"
    CROSS_ENTROPY = "cross-entropy"
    MEAN_SQUARED_ERROR = "mean-squared-error"


@dataclass(frozen=True)
class ParameterShape:
    """One named parameter tensor of a module, as ``module.named_parameters()`` lists it."""

    name: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ModelSpecError(f"a parameter name must be a non-empty string, got {self.name!r}")
        shape = tuple(self.shape)
        if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
            raise ModelSpecError(f"parameter {self.name}: a shape is a non-empty list of positive integers, got {self.shape!r}")
        object.__setattr__(self, "shape", shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def shapes_sha256(parameters: tuple[ParameterShape, ...]) -> str:
    """SHA-256 of the canonical JSON (docs/LEDGER.md section 2) of ``[[name, [dims...]], ...]`` in order.

    Two modules with the same hash have the same parameters, in the same order, with the
    same shapes: their flat parameter vectors mean the same thing coordinate by coordinate.
    """
    return hashlib.sha256(canonical_json([[item.name, list(item.shape)] for item in parameters])).hexdigest()


@dataclass(frozen=True)
class ModelLayout:
    """What the torch-free parties know of a bank's own model (the manifest's ``model`` member).

    ``factory`` is the ``package.module:function`` every bank imports to build the module;
    ``parameters`` its trainable parameters in ``named_parameters()`` order (the flat vector
    is their row-major concatenation, PyTorch's ``parameters_to_vector``); ``loss`` the
    task; ``outputs`` the module's outputs per row (1, or the number of ``classes`` for
    cross-entropy). The server, the coordinator and the auditor read only the parameter
    count; a bank refuses to train unless its own module has exactly these names and
    shapes (:func:`shapes_sha256`).
    """

    factory: str
    num_features: int
    loss: LossKind
    outputs: int
    parameters: tuple[ParameterShape, ...]
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not FACTORY_REFERENCE.fullmatch(self.factory):
            raise ModelSpecError(f"a model factory is written package.module:function, got {self.factory!r}")
        try:
            object.__setattr__(self, "loss", LossKind(self.loss))
        except ValueError:
            raise ModelSpecError(f"unknown loss {self.loss!r} (one of {[kind.value for kind in LossKind]})") from None
        for name in ("num_features", "outputs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelSpecError(f"{name} must be a positive integer, got {value!r}")
        parameters = tuple(self.parameters)
        if not parameters or not all(isinstance(item, ParameterShape) for item in parameters):
            raise ModelSpecError("a model has at least one parameter, each a ParameterShape")
        names = [item.name for item in parameters]
        if len(set(names)) != len(names):
            raise ModelSpecError("a parameter name is listed twice")
        object.__setattr__(self, "parameters", parameters)
        if self.loss is LossKind.CROSS_ENTROPY:
            classes = tuple(self.classes or ())
            if len(classes) < 2 or len(set(classes)) != len(classes) or not all(isinstance(c, str) for c in classes):
                raise ModelSpecError("a cross-entropy model names at least two distinct classes (the target's values)")
            if self.outputs != len(classes):
                raise ModelSpecError(f"a cross-entropy model has one output per class: {len(classes)}, not {self.outputs}")
            object.__setattr__(self, "classes", classes)
        else:
            if self.classes is not None:
                raise ModelSpecError(f"classes apply only to cross-entropy, not {self.loss.value}")
            if self.outputs != 1:
                raise ModelSpecError(f"a {self.loss.value} model has one output per row, not {self.outputs}")

    @property
    def kind(self) -> ModelKind:
        return ModelKind.CUSTOM

    @property
    def parameter_count(self) -> int:
        """Length of the flat parameter (and update) vector."""
        return sum(item.size for item in self.parameters)

    @property
    def shapes_sha256(self) -> str:
        return shapes_sha256(self.parameters)

    def first_difference(self, parameters: tuple[ParameterShape, ...]) -> str | None:
        """How ``parameters`` (a bank's own module) differ from this layout, naming the first parameter; None if equal."""
        mine = {item.name: item.shape for item in parameters}
        for index, expected in enumerate(self.parameters):
            if expected.name not in mine:
                return f"the module has no parameter {expected.name!r} (the manifest's parameter {index})"
            if mine[expected.name] != expected.shape:
                return (
                    f"parameter {expected.name!r} has shape {list(mine[expected.name])}, "
                    f"the manifest's model has {list(expected.shape)}"
                )
        extra = [item.name for item in parameters if item.name not in {p.name for p in self.parameters}]
        if extra:
            return f"the module has parameter {extra[0]!r}, which the manifest's model does not"
        if [item.name for item in parameters] != [item.name for item in self.parameters]:
            return "the module lists its parameters in another order than the manifest's model"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LAYOUT_FORMAT,
            "factory": self.factory,
            "num_features": self.num_features,
            "loss": self.loss.value,
            "outputs": self.outputs,
            "classes": None if self.classes is None else list(self.classes),
            "parameters": [{"name": item.name, "shape": list(item.shape)} for item in self.parameters],
            "parameter_count": self.parameter_count,
            "shapes_sha256": self.shapes_sha256,
        }

    @classmethod
    def from_dict(cls, value: Any) -> ModelLayout:
        """The layout of a ``secagg-model-layout/1`` object; its count and hash must match its parameters."""
        members = {"format", "factory", "num_features", "loss", "outputs", "classes", "parameters", "parameter_count",
                   "shapes_sha256"}  # fmt: skip
        if not isinstance(value, Mapping) or value.get("format") != LAYOUT_FORMAT or set(value) != members:
            raise ModelSpecError(f"not a {LAYOUT_FORMAT} object with exactly {sorted(members)}")
        items = value["parameters"]
        if not isinstance(items, list) or not all(isinstance(i, Mapping) and set(i) == {"name", "shape"} for i in items):
            raise ModelSpecError("parameters is a list of {name, shape}")
        try:
            layout = cls(
                factory=value["factory"],
                num_features=value["num_features"],
                loss=value["loss"],
                outputs=value["outputs"],
                parameters=tuple(ParameterShape(item["name"], tuple(item["shape"])) for item in items),
                classes=None if value["classes"] is None else tuple(value["classes"]),
            )
        except TypeError as exc:
            raise ModelSpecError(f"invalid model layout: {exc}") from None
        if value["parameter_count"] != layout.parameter_count:
            raise ModelSpecError(f"parameter_count {value['parameter_count']!r} is not the parameters' {layout.parameter_count}")
        if value["shapes_sha256"] != layout.shapes_sha256:
            raise ModelSpecError("shapes_sha256 is not the hash of the listed parameter names and shapes")
        return layout


def loss_of(spec: ModelSpec | ModelLayout) -> LossKind:
    """The loss (and so the task) of a model: the built-in models are binary classifiers."""
    return spec.loss if isinstance(spec, ModelLayout) else LossKind.BINARY_CROSS_ENTROPY
