"""Typed mechanism events: what an accountant composes.

An event is an immutable record of ``steps`` repetitions of one mechanism with fixed
parameters. A privacy history is a sequence of events; composition is commutative,
so the order of events never changes the epsilon they add up to.

Every field is validated on construction: an event that exists is an event that can
be accounted for. ``to_dict`` gives a canonical JSON-serialisable form (floats as
floats, the step count as an int, the mechanism named), which the privacy ledger
hashes and signs; ``from_dict`` refuses anything that ``to_dict`` would not produce.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

from dp.accounting.errors import InvalidParameterError


class AccountantKind(str, Enum):
    """How a history of events is turned into (epsilon, delta).

    * ``RDP``: Rényi DP composed by addition, converted with Balle et al. 2020
      (as Opacus's ``RDPAccountant``).
    * ``PRV``: numerical composition of privacy loss random variables
      (Gopi, Lee, Wutschitz 2021; as Opacus's ``PRVAccountant``).
    """

    RDP = "rdp"
    PRV = "prv"


class MechanismKind(str, Enum):
    """The noise mechanism an event describes."""

    GAUSSIAN = "gaussian"
    SKELLAM = "skellam"


def _positive_finite_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameterError(f"{name} must be a number, got {type(value).__name__}")
    as_float = float(value)
    if not math.isfinite(as_float) or as_float <= 0.0:
        raise InvalidParameterError(f"{name} must be finite and > 0, got {value!r}")
    return as_float


def validate_noise_multiplier(value: object) -> float:
    """Return ``value`` as a float if it is a finite noise multiplier z > 0."""
    return _positive_finite_float("noise_multiplier", value)


def validate_sample_rate(value: object) -> float:
    """Return ``value`` as a float if it is a Poisson sampling rate with 0 < q <= 1."""
    rate = _positive_finite_float("sample_rate", value)
    if rate > 1.0:
        raise InvalidParameterError(f"sample_rate must satisfy 0 < q <= 1, got {value!r}")
    return rate


def validate_steps(value: object) -> int:
    """Return ``value`` if it is an integer number of steps >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameterError(f"steps must be an integer, got {type(value).__name__}")
    if value < 1:
        raise InvalidParameterError(f"steps must be >= 1, got {value}")
    return value


def validate_delta(value: object) -> float:
    """Return ``value`` as a float if it is a target delta with 0 < delta < 1."""
    delta = _positive_finite_float("delta", value)
    if delta >= 1.0:
        raise InvalidParameterError(f"delta must satisfy 0 < delta < 1, got {value!r}")
    return delta


def validate_epsilon(value: object, *, name: str = "target_epsilon") -> float:
    """Return ``value`` as a float if it is a finite epsilon > 0."""
    return _positive_finite_float(name, value)


def _check_keys(data: Mapping[str, Any], expected: frozenset[str], what: str) -> None:
    if not isinstance(data, Mapping):
        raise InvalidParameterError(f"{what} must be a JSON object, got {type(data).__name__}")
    keys = set(data)
    missing = sorted(expected - keys)
    unexpected = sorted(keys - expected)
    if missing or unexpected:
        raise InvalidParameterError(f"{what} has missing fields {missing} and unexpected fields {unexpected}")


@dataclass(frozen=True)
class SampledGaussian:
    """``steps`` steps of the Poisson-subsampled Gaussian mechanism (DP-SGD).

    Each step samples every record independently with probability ``sample_rate``
    and adds N(0, (noise_multiplier * C)^2) noise to a sum whose L2 sensitivity is
    the clipping norm C (Abadi et al. 2016; Mironov, Talwar, Zhang 2019).
    ``sample_rate == 1`` is the plain (full-batch) Gaussian mechanism.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    mechanism: ClassVar[MechanismKind] = MechanismKind.GAUSSIAN

    _FIELDS: ClassVar[frozenset[str]] = frozenset({"mechanism", "noise_multiplier", "sample_rate", "steps"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", validate_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "sample_rate", validate_sample_rate(self.sample_rate))
        object.__setattr__(self, "steps", validate_steps(self.steps))

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON-serialisable form, including ``"mechanism": "gaussian"``."""
        return {
            "mechanism": self.mechanism.value,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampledGaussian:
        """Rebuild an event from :meth:`to_dict` output; refuses anything else."""
        _check_keys(data, cls._FIELDS, "a gaussian event")
        if data["mechanism"] != cls.mechanism.value:
            raise InvalidParameterError(f"expected mechanism 'gaussian', got {data['mechanism']!r}")
        return cls(
            noise_multiplier=data["noise_multiplier"],
            sample_rate=data["sample_rate"],
            steps=data["steps"],
        )


@dataclass(frozen=True)
class Skellam:
    """``steps`` rounds of the aggregated multi-dimensional Skellam mechanism.

    Each round releases an integer vector sum plus symmetric Skellam noise whose
    per-coordinate variance is ``variance`` (integer units, after the client-side
    scaling). ``variance`` is the variance of the *aggregate* noise in the worst
    case that only the threshold t of clients survive, since only surviving
    clients' noise shares reach the sum. The sensitivities are those of one
    participant's contribution in the same integer units (after clipping,
    rotation, scaling and conditional randomised rounding).

    Analysed with the RDP bound of Agarwal, Kairouz, Liu (NeurIPS 2021),
    Corollary 3.6 of arXiv:2110.04995v2; see :func:`dp.accounting.rdp.skellam_rdp`.
    """

    l1_sensitivity: float
    l2_sensitivity: float
    variance: float
    steps: int
    mechanism: ClassVar[MechanismKind] = MechanismKind.SKELLAM

    _FIELDS: ClassVar[frozenset[str]] = frozenset({"mechanism", "l1_sensitivity", "l2_sensitivity", "variance", "steps"})

    def __post_init__(self) -> None:
        l1 = _positive_finite_float("l1_sensitivity", self.l1_sensitivity)
        l2 = _positive_finite_float("l2_sensitivity", self.l2_sensitivity)
        if l1 < l2:
            raise InvalidParameterError(
                f"l1_sensitivity ({l1}) below l2_sensitivity ({l2}) is inconsistent: "
                "every vector has ||v||_2 <= ||v||_1 (were the two swapped?)"
            )
        object.__setattr__(self, "l1_sensitivity", l1)
        object.__setattr__(self, "l2_sensitivity", l2)
        object.__setattr__(self, "variance", _positive_finite_float("variance", self.variance))
        object.__setattr__(self, "steps", validate_steps(self.steps))

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON-serialisable form, including ``"mechanism": "skellam"``."""
        return {
            "mechanism": self.mechanism.value,
            "l1_sensitivity": self.l1_sensitivity,
            "l2_sensitivity": self.l2_sensitivity,
            "variance": self.variance,
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Skellam:
        """Rebuild an event from :meth:`to_dict` output; refuses anything else."""
        _check_keys(data, cls._FIELDS, "a skellam event")
        if data["mechanism"] != cls.mechanism.value:
            raise InvalidParameterError(f"expected mechanism 'skellam', got {data['mechanism']!r}")
        return cls(
            l1_sensitivity=data["l1_sensitivity"],
            l2_sensitivity=data["l2_sensitivity"],
            variance=data["variance"],
            steps=data["steps"],
        )


MechanismEvent = SampledGaussian | Skellam
"""One entry of a privacy history."""

_EVENT_TYPES: dict[str, type[SampledGaussian] | type[Skellam]] = {
    MechanismKind.GAUSSIAN.value: SampledGaussian,
    MechanismKind.SKELLAM.value: Skellam,
}


def event_from_dict(data: Mapping[str, Any]) -> MechanismEvent:
    """Rebuild any event from its :meth:`to_dict` form, dispatching on ``"mechanism"``."""
    if not isinstance(data, Mapping):
        raise InvalidParameterError(f"an event must be a JSON object, got {type(data).__name__}")
    mechanism = data.get("mechanism")
    event_type = _EVENT_TYPES.get(mechanism) if isinstance(mechanism, str) else None
    if event_type is None:
        known = sorted(_EVENT_TYPES)
        raise InvalidParameterError(f"unknown mechanism {mechanism!r}; known: {known}")
    return event_type.from_dict(data)


def validate_events(events: object) -> tuple[MechanismEvent, ...]:
    """Return ``events`` as a tuple after checking that each one is a mechanism event."""
    if isinstance(events, (str, bytes, Mapping)):
        raise InvalidParameterError("events must be a sequence of mechanism events")
    if not isinstance(events, Iterable):
        raise InvalidParameterError("events must be a sequence of mechanism events")
    checked: list[MechanismEvent] = []
    for index, event in enumerate(events):
        if not isinstance(event, (SampledGaussian, Skellam)):
            raise InvalidParameterError(f"event {index} is a {type(event).__name__}, not SampledGaussian or Skellam")
        checked.append(event)
    return tuple(checked)
