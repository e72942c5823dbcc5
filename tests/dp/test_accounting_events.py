"""Mechanism events: validation, canonical dict form, round trips."""

from __future__ import annotations

import json
import math

import pytest

from dp.accounting import (
    AccountingError,
    InvalidParameterError,
    MechanismKind,
    SampledGaussian,
    Skellam,
    event_from_dict,
)
from dp.errors import DPError


def test_accounting_error_is_a_dp_error_and_invalid_parameters_are_value_errors() -> None:
    assert issubclass(AccountingError, DPError)
    assert issubclass(InvalidParameterError, AccountingError)
    assert issubclass(InvalidParameterError, ValueError)


@pytest.mark.parametrize(
    ("noise_multiplier", "sample_rate", "steps"),
    [
        (0.0, 0.1, 1),
        (-1.0, 0.1, 1),
        (math.inf, 0.1, 1),
        (math.nan, 0.1, 1),
        (1.0, 0.0, 1),
        (1.0, 1.0000001, 1),
        (1.0, -0.1, 1),
        (1.0, math.nan, 1),
        (1.0, 0.1, 0),
        (1.0, 0.1, -3),
        (1.0, 0.1, 2.0),
        (True, 0.1, 1),
        ("1.0", 0.1, 1),
        (1.0, 0.1, True),
    ],
)
def test_sampled_gaussian_with_invalid_parameter_is_refused(noise_multiplier, sample_rate, steps) -> None:
    with pytest.raises(InvalidParameterError):
        SampledGaussian(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)


@pytest.mark.parametrize(
    ("l1", "l2", "variance", "steps"),
    [
        (10.0, 0.0, 100.0, 1),
        (0.0, 1.0, 100.0, 1),
        (10.0, 3.0, 0.0, 1),
        (10.0, 3.0, -5.0, 1),
        (10.0, 3.0, math.inf, 1),
        (10.0, 3.0, 100.0, 0),
        (2.0, 3.0, 100.0, 1),
    ],
)
def test_skellam_with_invalid_parameter_is_refused(l1, l2, variance, steps) -> None:
    with pytest.raises(InvalidParameterError):
        Skellam(l1_sensitivity=l1, l2_sensitivity=l2, variance=variance, steps=steps)


def test_integer_parameters_are_stored_as_floats_so_the_canonical_form_is_stable() -> None:
    event = SampledGaussian(noise_multiplier=1, sample_rate=1, steps=3)
    assert event.to_dict() == {"mechanism": "gaussian", "noise_multiplier": 1.0, "sample_rate": 1.0, "steps": 3}
    assert json.dumps(event.to_dict(), sort_keys=True) == json.dumps(
        SampledGaussian(noise_multiplier=1.0, sample_rate=1.0, steps=3).to_dict(), sort_keys=True
    )


@pytest.mark.parametrize(
    "event",
    [
        SampledGaussian(noise_multiplier=1.1, sample_rate=0.01, steps=500),
        Skellam(l1_sensitivity=400.0, l2_sensitivity=20.0, variance=1.5e4, steps=7),
    ],
)
def test_event_survives_a_json_round_trip_unchanged(event) -> None:
    encoded = json.dumps(event.to_dict())
    decoded = event_from_dict(json.loads(encoded))
    assert decoded == event
    assert type(decoded) is type(event)
    assert decoded.to_dict()["mechanism"] == event.mechanism.value


def test_event_mechanism_is_a_class_level_enum_not_a_field() -> None:
    assert SampledGaussian.mechanism is MechanismKind.GAUSSIAN
    assert Skellam.mechanism is MechanismKind.SKELLAM
    with pytest.raises(TypeError):
        SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=1, mechanism=MechanismKind.SKELLAM)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "data",
    [
        {"mechanism": "laplace", "scale": 1.0, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1},
        {"mechanism": "gaussian", "noise_multiplier": 1.0, "sample_rate": 0.1},
        {"mechanism": "gaussian", "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1, "extra": 0},
        {"mechanism": "gaussian", "noise_multiplier": "1.0", "sample_rate": 0.1, "steps": 1},
        {"mechanism": "gaussian", "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1.5},
        {"mechanism": "skellam", "l1_sensitivity": 1.0, "l2_sensitivity": 1.0, "steps": 1},
        [1, 2, 3],
        "gaussian",
    ],
)
def test_event_from_malformed_dict_is_refused(data) -> None:
    with pytest.raises(InvalidParameterError):
        event_from_dict(data)


def test_from_dict_of_one_mechanism_refuses_the_other() -> None:
    skellam = Skellam(l1_sensitivity=4.0, l2_sensitivity=2.0, variance=10.0, steps=1).to_dict()
    with pytest.raises(InvalidParameterError):
        SampledGaussian.from_dict(skellam)


def test_events_are_immutable() -> None:
    event = SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=1)
    with pytest.raises(AttributeError):
        event.steps = 2  # type: ignore[misc]
