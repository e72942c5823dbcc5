"""The bank's local policy: which rounds this client agrees to join.

The client trusts nothing the server says without checking it. Before it
sends anything, :meth:`ClientPolicy.check` compares the round's parameters from
``GET /v1/rounds/{id}`` with a policy file the bank controls, and refuses with a
named :class:`~clients.runtime.errors.PolicyViolationReason`:

* cohort size at least ``min_cohort_size``;
* threshold at least the mode's minimum (honest-but-curious floor(n/2)+1, active
  floor(2n/3)+1; Bonawitz et al. 2017, section 6) and, optionally, at least
  ``ceil(min_threshold_fraction * n)``;
* the required adversary mode (default: active, the only mode that resists a
  server that lies about dropouts, Bonawitz et al. 2017, section 6.3);
* allowed neighbour graphs, a maximum vector length, allowed ring widths;
* when the round declares a DP policy (or when ``dp.required``): a minimum noise
  multiplier, a maximum per-round epsilon and delta;
* the server's identity, when the bank pins one;
* this client's identity key is in the cohort, at the position it claims.

A policy file is JSON or TOML (by suffix), with exactly these keys (unknown keys
are refused, so a typo cannot silently relax the policy)::

    min_cohort_size = 5
    min_threshold_fraction = 0.7      # optional, stricter than the mode's rule
    required_mode = "active"
    allowed_graphs = ["full", "harary"]
    max_dim = 10000000
    allowed_bits = [32, 64]
    server_identity = "..."           # optional
    [dp]
    required = true
    allow_exact_statistics = true     # also join a training's statistics round (step 0)
    min_noise_multiplier = 0.8
    max_epsilon_per_round = 2.0
    accounting_delta = 1e-5
    [budget]                          # the bank's own privacy budget (secagg train)
    state_dir = "/var/lib/bank-a/secagg-budget"   # relative to the policy file's directory
    id_column = "customer_id"         # optional: what identifies a customer in the data
    [budget.example]
    max_epsilon = 3.0
    delta = 1e-5
    accountant = "rdp"                # optional
    [budget.participant]              # optional, needed only for participant-level noise
    max_epsilon = 8.0
    delta = 1e-5

The ``[budget]`` table is what ``secagg train`` charges: per privacy unit, the largest
epsilon the bank's data may ever reach, cumulative over every training on the same data,
kept in ``state_dir`` (:mod:`clients.training.budget_store` says what counts as the same
data). A federated training needs it; ``secagg client run`` ignores it.

The DP checks never trust a number the server computed: the client rebuilds every
declared mechanism (:class:`dp.audit.round_records.RoundPrivacy`) and computes its noise
multiplier (Skellam: sqrt(variance) / L2 sensitivity, the analogue of the Gaussian
z; Agarwal et al. 2021) and its epsilon at ``accounting_delta`` with
:func:`dp.accounting.compute_epsilon` (RDP). Every declared mechanism must meet the
minimums.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from clients.runtime.errors import PolicyFileError, PolicyViolation, PolicyViolationReason
from clients.runtime.transport import RoundDescription
from secagg.config import GraphKind, ProtocolMode, minimum_threshold
from secagg.encoding import MAX_BITS, MIN_BITS

if TYPE_CHECKING:
    from dp.budget import BudgetPolicy

DEFAULT_MIN_COHORT_SIZE = 3
"""Below three parties a sum of two reveals the other's input to each of them."""

DEFAULT_MAX_DIM = 1 << 27

DEFAULT_ACCOUNTING_DELTA = 1e-5
"""delta at which the client computes a round's epsilon for ``max_epsilon_per_round``."""


@dataclass(frozen=True, slots=True)
class DPRequirements:
    """Minimums for a round's declared differential-privacy parameters."""

    required: bool = False
    allow_exact_statistics: bool = False
    """With ``required``: still join the statistics round of a consortium training (step 0), which
    releases the consortium's exact column sums for standardisation and declares no DP mechanism."""
    min_noise_multiplier: float | None = None
    max_epsilon_per_round: float | None = None
    accounting_delta: float = DEFAULT_ACCOUNTING_DELTA

    def __post_init__(self) -> None:
        for name in ("min_noise_multiplier", "max_epsilon_per_round", "accounting_delta"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0
            ):
                raise PolicyFileError(f"dp.{name} must be a positive finite number, got {value!r}")
        if self.accounting_delta >= 1:
            raise PolicyFileError("dp.accounting_delta must be below 1")
        if not isinstance(self.required, bool) or not isinstance(self.allow_exact_statistics, bool):
            raise PolicyFileError("dp.required and dp.allow_exact_statistics must be true or false")

    @property
    def constrains_anything(self) -> bool:
        return self.required or any(value is not None for value in (self.min_noise_multiplier, self.max_epsilon_per_round))


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """The bank's own privacy budget: where it is kept, what identifies a customer, the limits per unit."""

    state_dir: Path
    units: BudgetPolicy
    id_column: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], *, base_dir: Path | None) -> BudgetSettings:
        from dp.budget import BudgetPolicy, BudgetPolicyError

        known = {"state_dir", "id_column", "example", "participant"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyFileError(f"unknown budget keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        state_dir = data.get("state_dir")
        if not isinstance(state_dir, str) or not state_dir:
            raise PolicyFileError("budget.state_dir must name the directory that keeps this bank's budgets")
        id_column = data.get("id_column")
        if id_column is not None and (not isinstance(id_column, str) or not id_column):
            raise PolicyFileError("budget.id_column must be a column name")
        units = {name: data[name] for name in ("example", "participant") if name in data}
        if not units:
            raise PolicyFileError("the budget names no unit: add [budget.example] (max_epsilon, delta)")
        try:
            policy = BudgetPolicy.from_dict({"budgets": units})
        except BudgetPolicyError as exc:
            raise PolicyFileError(f"budget: {exc}") from None
        directory = Path(state_dir).expanduser()
        if not directory.is_absolute() and base_dir is not None:
            directory = base_dir / directory
        return cls(state_dir=directory, units=policy, id_column=id_column)


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """Which rounds this bank joins. The defaults are the conservative choice."""

    min_cohort_size: int = DEFAULT_MIN_COHORT_SIZE
    min_threshold_fraction: float | None = None
    required_mode: ProtocolMode = ProtocolMode.ACTIVE
    allowed_graphs: frozenset[GraphKind] = frozenset(GraphKind)
    max_dim: int = DEFAULT_MAX_DIM
    allowed_bits: frozenset[int] = frozenset(range(MIN_BITS, MAX_BITS + 1))
    server_identity: str | None = None
    dp: DPRequirements = field(default_factory=DPRequirements)
    budget: BudgetSettings | None = None

    def __post_init__(self) -> None:
        if isinstance(self.min_cohort_size, bool) or not isinstance(self.min_cohort_size, int) or self.min_cohort_size < 2:
            raise PolicyFileError("min_cohort_size must be an integer of at least 2")
        fraction = self.min_threshold_fraction
        if fraction is not None and (
            isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1
        ):
            raise PolicyFileError("min_threshold_fraction must be in (0, 1]")
        try:
            object.__setattr__(self, "required_mode", ProtocolMode(self.required_mode))
            object.__setattr__(self, "allowed_graphs", frozenset(GraphKind(g) for g in self.allowed_graphs))
        except ValueError as exc:
            raise PolicyFileError(str(exc)) from None
        if not self.allowed_graphs:
            raise PolicyFileError("allowed_graphs must name at least one graph")
        if isinstance(self.max_dim, bool) or not isinstance(self.max_dim, int) or self.max_dim < 1:
            raise PolicyFileError("max_dim must be a positive integer")
        bits = frozenset(self.allowed_bits)
        if not bits or any(isinstance(b, bool) or not isinstance(b, int) or not MIN_BITS <= b <= MAX_BITS for b in bits):
            raise PolicyFileError(f"allowed_bits must be a non-empty list of integers in {MIN_BITS}..{MAX_BITS}")
        object.__setattr__(self, "allowed_bits", bits)
        if self.server_identity is not None and (not isinstance(self.server_identity, str) or not self.server_identity):
            raise PolicyFileError("server_identity must be a non-empty string")

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], *, base_dir: Path | None = None) -> ClientPolicy:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyFileError(f"unknown policy keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values = dict(data)
        dp_values = values.pop("dp", {})
        if not isinstance(dp_values, Mapping):
            raise PolicyFileError("dp must be a table/object")
        dp_known = {f.name for f in fields(DPRequirements)}
        dp_unknown = sorted(set(dp_values) - dp_known)
        if dp_unknown:
            raise PolicyFileError(f"unknown dp policy keys: {', '.join(dp_unknown)} (known: {', '.join(sorted(dp_known))})")
        for name in ("allowed_graphs", "allowed_bits"):
            if name in values and not isinstance(values[name], list):
                raise PolicyFileError(f"{name} must be a list")
        budget_values = values.pop("budget", None)
        budget = None
        if budget_values is not None:
            if not isinstance(budget_values, Mapping):
                raise PolicyFileError("budget must be a table/object")
            budget = BudgetSettings.from_mapping(budget_values, base_dir=base_dir)
        return cls(**values, dp=DPRequirements(**dp_values), budget=budget)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> ClientPolicy:
        """Read a ``.json`` or ``.toml`` policy file."""
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise PolicyFileError(f"cannot read policy file {path}: {exc.strerror}") from None
        try:
            if path.suffix.lower() == ".toml":
                data = tomllib.loads(raw.decode("utf-8"))
            elif path.suffix.lower() == ".json":
                data = json.loads(raw)
            else:
                raise PolicyFileError(f"policy file {path} must end in .json or .toml")
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PolicyFileError(f"cannot parse policy file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise PolicyFileError(f"policy file {path} must hold one object/table")
        return cls.from_mapping(data, base_dir=path.resolve().parent)

    def check(self, round_description: RoundDescription, *, identity_public_key: bytes, participant_id: str | None) -> int:
        """Refuse the round unless it satisfies this policy; return this client's participant id."""
        config = round_description.config
        n = config.participant_count

        def refuse(reason: PolicyViolationReason, detail: str) -> None:
            raise PolicyViolation(reason, detail)

        if self.server_identity is not None and round_description.server_identity != self.server_identity:
            refuse(
                PolicyViolationReason.SERVER_IDENTITY_MISMATCH,
                f"server identifies as {round_description.server_identity!r}, the policy expects {self.server_identity!r}",
            )
        if n < self.min_cohort_size:
            refuse(PolicyViolationReason.COHORT_TOO_SMALL, f"cohort of {n}, the policy requires at least {self.min_cohort_size}")
        if config.mode is not self.required_mode:
            refuse(
                PolicyViolationReason.MODE_NOT_ALLOWED,
                f"round mode {config.mode.value}, the policy requires {self.required_mode.value}",
            )
        required_threshold = minimum_threshold(config.mode, n)
        if self.min_threshold_fraction is not None:
            required_threshold = max(required_threshold, math.ceil(self.min_threshold_fraction * n))
        if config.threshold < required_threshold:
            refuse(
                PolicyViolationReason.THRESHOLD_TOO_LOW,
                f"threshold {config.threshold} of {n}, the policy requires at least {required_threshold}",
            )
        if config.graph not in self.allowed_graphs:
            refuse(PolicyViolationReason.GRAPH_NOT_ALLOWED, f"graph {config.graph.value} is not allowed by the policy")
        if config.dim > self.max_dim:
            refuse(PolicyViolationReason.DIM_TOO_LARGE, f"dim {config.dim} exceeds the policy's maximum {self.max_dim}")
        if config.bits not in self.allowed_bits:
            refuse(PolicyViolationReason.BITS_NOT_ALLOWED, f"ring of {config.bits} bits is not allowed by the policy")
        self._check_dp(round_description)
        return _own_position(round_description, identity_public_key, participant_id)

    def _check_dp(self, round_description: RoundDescription) -> None:
        requirements = self.dp
        items = _declared_privacy(round_description.dp_policy)
        if not items:
            training = round_description.training
            statistics = training is not None and training.step == 0 and requirements.allow_exact_statistics
            if requirements.required and not statistics:
                raise PolicyViolation(
                    PolicyViolationReason.DP_POLICY_REQUIRED,
                    "the round declares no DP mechanism"
                    + (
                        " (a training's statistics round: set dp.allow_exact_statistics to join it)"
                        if training is not None
                        else ""
                    ),
                )
            return
        if not requirements.constrains_anything:
            return
        from dp.accounting import compute_epsilon
        from dp.accounting.events import SampledGaussian

        for item in items:
            event = item.event
            label = f"{item.unit.value}-level {event.mechanism.value}"
            if isinstance(event, SampledGaussian):
                noise_multiplier = event.noise_multiplier
                one_round = event
            else:
                noise_multiplier = math.sqrt(event.variance) / event.l2_sensitivity
                one_round = type(event)(
                    l1_sensitivity=event.l1_sensitivity, l2_sensitivity=event.l2_sensitivity, variance=event.variance, steps=1
                )
            if requirements.min_noise_multiplier is not None and noise_multiplier < requirements.min_noise_multiplier:
                raise PolicyViolation(
                    PolicyViolationReason.DP_NOISE_TOO_LOW,
                    f"{label}: noise multiplier {noise_multiplier:.4g}, the policy requires at least {requirements.min_noise_multiplier}",
                )
            if requirements.max_epsilon_per_round is not None:
                epsilon = compute_epsilon([one_round], delta=requirements.accounting_delta)
                if not epsilon <= requirements.max_epsilon_per_round:
                    raise PolicyViolation(
                        PolicyViolationReason.DP_EPSILON_TOO_HIGH,
                        f"{label}: epsilon {epsilon:.4g} at delta {requirements.accounting_delta:g} per round, "
                        f"the policy allows at most {requirements.max_epsilon_per_round}",
                    )


def _declared_privacy(dp_policy: Mapping[str, object] | None) -> list:
    """The round's declared mechanisms as :class:`dp.audit.round_records.RoundPrivacy`; malformed ones are refused."""
    if dp_policy is None:
        return []
    from dp.audit.round_records import RoundPrivacy

    privacy = dp_policy.get("privacy", []) if isinstance(dp_policy, Mapping) else None
    if not isinstance(privacy, list):
        raise PolicyViolation(PolicyViolationReason.DP_POLICY_MALFORMED, "dp_policy.privacy is not a list")
    try:
        return [RoundPrivacy.from_dict(item) for item in privacy]
    except (ValueError, TypeError, KeyError) as exc:
        raise PolicyViolation(PolicyViolationReason.DP_POLICY_MALFORMED, f"a declared DP mechanism is invalid: {exc}") from None


def _own_position(round_description: RoundDescription, own_key: bytes, claimed_id: str | None) -> int:
    """This client's protocol index: where its identity key is; it must be where its enrolled id is."""
    identity_keys = round_description.config.identity_keys
    positions = [index for index, key in enumerate(identity_keys) if key == own_key]
    if not positions:
        raise PolicyViolation(PolicyViolationReason.NOT_IN_COHORT, "this client's identity key is not in the round's cohort")
    if claimed_id is not None:
        members = round_description.member_ids or ()
        if claimed_id not in members:
            raise PolicyViolation(
                PolicyViolationReason.NOT_IN_COHORT, f"participant id {claimed_id!r} is not in the round's cohort"
            )
        if members.index(claimed_id) != positions[0]:
            raise PolicyViolation(
                PolicyViolationReason.WRONG_POSITION,
                f"the cohort lists {claimed_id!r} at index {members.index(claimed_id)}, "
                f"but this client's identity key is at index {positions[0]}",
            )
    return positions[0]
