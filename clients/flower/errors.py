"""Refusals that belong to the Flower integration, by name.

The bank's side refuses with the core's :class:`~secagg.errors.AbortReason` whenever
the protocol itself is violated, and with
:class:`~clients.runtime.errors.PolicyViolationReason` whenever the round breaks the
bank's policy; these are the remaining cases, about how Flower delivers the round.
"""

from __future__ import annotations

from enum import Enum


class FlowerRefusalReason(str, Enum):
    """Why a bank's mod refused a Flower message. Stable strings (error replies, logs)."""

    SECURE_AGGREGATION_REQUIRED = "secure-aggregation-required"
    """A ``train`` message without this protocol's record: the update would leave in the clear."""
    MALFORMED_REQUEST = "malformed-request"
    """The record is missing a field, has the wrong type, or the setup does not parse."""
    UNKNOWN_COHORT_MEMBER = "unknown-cohort-member"
    """The cohort holds an (id, key) pair that is not on the bank's copy of the roster."""
    ROUND_ALREADY_RUN = "round-already-run"
    """A second R0 for a round this node already started or finished: never two masked inputs."""
    NO_ROUND_IN_PROGRESS = "no-round-in-progress"
    """A protocol message for a round this node has no state for (or another round's)."""
    LAYOUT_MISMATCH = "layout-mismatch"
    """The bank's training returned arrays of other shapes than the round's model."""
    UPDATE_REFUSED = "update-refused"
    """The update cannot be encoded as the round asks (weight outside (0, 1], NaN, a sum that could wrap)."""
    TRAINING_FAILED = "training-failed"
    """The bank's own ``fit`` returned a failure status."""
    LEDGER_REQUIRED = "ledger-required"
    """The round declares a DP mechanism but this bank configured no ledger and budget to record it."""
    BUDGET_EXCEEDED = "budget-exceeded"
    """The round would take one of the bank's privacy units over its budget (recorded in the ledger)."""
    RESUME_REFUSED = "resume-refused"
    """Replaying the recorded round did not regenerate the messages already sent."""


class FlowerRefusal(Exception):
    """A refusal by the bank's mod; becomes an error reply naming ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")
