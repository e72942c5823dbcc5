"""Model factories defined outside the package, as a bank's own code would define them.

Imported by name (``tests.clients.own_models:small_net``) through the plan's factory, like
any bank's module. ``HIDDEN`` is the hidden width ``small_net`` builds with: a test that
changes it plays a bank whose copy of the model differs from the manifest's.
"""

from __future__ import annotations

import torch

from dp.training import ModelDefinition

HIDDEN = 4


def small_net(num_features: int) -> ModelDefinition:
    """Two linear layers with a tanh between them: a binary classifier (one logit)."""
    module = torch.nn.Sequential(torch.nn.Linear(num_features, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1))
    return ModelDefinition(module, "binary-cross-entropy")


def with_batch_norm(num_features: int) -> tuple[torch.nn.Module, str]:
    """BatchNorm mixes the rows of a batch: Opacus cannot bound one row's influence."""
    module = torch.nn.Sequential(torch.nn.Linear(num_features, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    return module, "binary-cross-entropy"


def three_classes(num_features: int) -> tuple[torch.nn.Module, str]:
    """A multi-class (softmax) classifier of three classes."""
    return torch.nn.Sequential(torch.nn.Linear(num_features, 3)), "cross-entropy"


def regression(num_features: int) -> tuple[torch.nn.Module, str]:
    """A linear regression of one value."""
    return torch.nn.Sequential(torch.nn.Linear(num_features, 1)), "mean-squared-error"
