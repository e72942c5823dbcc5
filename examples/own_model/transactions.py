"""A bank's own model, defined outside secagg: a GRU over each customer's last transactions.

This module is what a bank's ML team writes. secagg imports it by name on the banks'
machines only (the plan says ``transactions:fraud_gru``; the coordinator, the server and the
auditor receive the model's layout, never this code), so it must be importable there: put
this directory on ``PYTHONPATH`` or install it.

The data (:mod:`generate`) hold one row per customer: the amount and whether the merchant is
abroad for each of the customer's last ``STEPS`` card transactions, oldest first, in columns
``t0_amount, t0_foreign, t1_amount, ...``, and the label ``fraud`` or ``ok``. The agreed
schema turns them into ``num_features`` standardised features; because the merged schema
orders its columns by name and each column's features are contiguous, the features of one
transaction are one contiguous block, so the data adapter only reshapes the N x F matrix into
N x STEPS x (F / STEPS), the sequence the recurrent layer reads.

``opacus.layers.DPGRU`` is Opacus's DP-compatible GRU (``torch.nn.GRU`` has no per-example
gradients); its hidden state after the last transaction feeds one logit (binary
cross-entropy: fraud or not).
"""

from __future__ import annotations

import numpy as np
import torch
from opacus.layers import DPGRU

from dp.training import ModelDefinition

STEPS = 8
"""Transactions per customer (the sequence length)."""
HIDDEN = 8


class TransactionGRU(torch.nn.Module):
    """DPGRU over a customer's transactions, then a linear layer on the last hidden state."""

    def __init__(self, per_step: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.gru = DPGRU(per_step, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.gru(sequences)
        return self.head(outputs[:, -1, :])


def as_sequences(features: np.ndarray) -> np.ndarray:
    """The data adapter: N x (STEPS * per_step) tabular features to N x STEPS x per_step, oldest transaction first."""
    rows, width = features.shape
    return features.reshape(rows, STEPS, width // STEPS)


def fraud_gru(num_features: int) -> ModelDefinition:
    """The model factory the plan names: the module, its loss and its data adapter."""
    if num_features % STEPS:
        raise ValueError(f"{num_features} features do not split into {STEPS} transactions")
    return ModelDefinition(TransactionGRU(num_features // STEPS), "binary-cross-entropy", as_sequences)
