"""Model specifications for local training, without torch.

The server, the auditor and the round configuration need a model's parameter count
(the length of every update vector) but never import torch; the torch modules are
built from these specifications in :mod:`dp.training`.

The models are binary classifiers for tabular bank data (for example default /
no default): logistic regression and a one-hidden-layer MLP with ReLU. Both output one
logit; the loss is binary cross-entropy on the logit. The flat parameter order is
PyTorch's ``module.parameters()`` order: for each linear layer its weight (row-major,
``out x in``) then its bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from dp.errors import DPError


class ModelSpecError(DPError, ValueError):
    """A model specification with invalid sizes."""


class ModelKind(str, Enum):
    """The supported tabular models."""

    LOGISTIC_REGRESSION = "logistic-regression"
    MLP = "mlp"


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of the shared model: ``kind``, input width and (MLP) hidden width."""

    kind: ModelKind
    num_features: int
    hidden_units: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ModelKind):
            raise ModelSpecError(f"kind must be a ModelKind, got {self.kind!r}")
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
