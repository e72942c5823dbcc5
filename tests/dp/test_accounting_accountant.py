"""Stateful accountants: stepping, refusals, state dicts, and crash-safe persistence."""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path

import pytest

from dp.accounting import (
    AccountantKind,
    AccountantStateError,
    InvalidParameterError,
    PrivacyAccountant,
    PRVAccountant,
    RDPAccountant,
    SampledGaussian,
    Skellam,
    UnsupportedMechanismError,
    compute_epsilon,
    load_accountant,
    make_accountant,
    save_accountant,
)
from dp.accounting import accountant as accountant_module

DELTA = 1e-5
GAUSSIAN_STEP = SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=1)
SKELLAM_ROUND = Skellam(l1_sensitivity=100.0, l2_sensitivity=10.0, variance=1e4, steps=1)


@pytest.mark.parametrize(("kind", "expected_type"), [(AccountantKind.RDP, RDPAccountant), (AccountantKind.PRV, PRVAccountant)])
def test_registry_makes_an_empty_accountant_of_each_kind(kind, expected_type) -> None:
    accountant = make_accountant(kind)
    assert type(accountant) is expected_type
    assert accountant.kind is kind
    assert accountant.history == ()
    assert accountant.get_epsilon(delta=DELTA) == 0.0


def test_registry_refuses_an_unknown_kind() -> None:
    with pytest.raises(InvalidParameterError):
        make_accountant("gdp")  # type: ignore[arg-type]


def test_accountant_interface_is_abstract() -> None:
    with pytest.raises(TypeError):
        PrivacyAccountant()  # type: ignore[abstract]


def test_one_hundred_single_steps_give_the_pinned_rdp_epsilon_and_one_merged_event() -> None:
    accountant = make_accountant(AccountantKind.RDP)
    for _ in range(100):
        accountant.step(event=GAUSSIAN_STEP)
    assert accountant.history == (SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=100),)
    assert accountant.get_epsilon(delta=DELTA) == pytest.approx(7.899, abs=5e-4)


def test_step_is_keyword_only() -> None:
    accountant = make_accountant(AccountantKind.RDP)
    with pytest.raises(TypeError):
        accountant.step(GAUSSIAN_STEP)  # type: ignore[misc]


def test_different_consecutive_events_are_kept_apart_and_compose() -> None:
    accountant = make_accountant(AccountantKind.RDP)
    rounds = [
        SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=30),
        SKELLAM_ROUND,
        SampledGaussian(noise_multiplier=1.2, sample_rate=0.1, steps=30),
        SKELLAM_ROUND,
    ]
    for event in rounds:
        accountant.step(event=event)
    assert accountant.history == tuple(rounds)
    assert accountant.get_epsilon(delta=DELTA) == pytest.approx(compute_epsilon(rounds, delta=DELTA), rel=1e-12)


def test_rdp_accountant_reports_the_optimal_order() -> None:
    accountant = make_accountant(AccountantKind.RDP)
    accountant.step(event=SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=100))
    epsilon, order = accountant.get_privacy_spent(delta=DELTA)
    assert epsilon == accountant.get_epsilon(delta=DELTA)
    assert order == pytest.approx(3.2)


def test_prv_accountant_refuses_a_skellam_step_and_keeps_its_history() -> None:
    accountant = make_accountant(AccountantKind.PRV)
    accountant.step(event=GAUSSIAN_STEP)
    with pytest.raises(UnsupportedMechanismError, match="skellam"):
        accountant.step(event=SKELLAM_ROUND)
    assert accountant.history == (GAUSSIAN_STEP,)


def test_step_refuses_something_that_is_not_an_event() -> None:
    accountant = make_accountant(AccountantKind.RDP)
    with pytest.raises(InvalidParameterError):
        accountant.step(event=(1.0, 0.1, 1))  # type: ignore[arg-type]
    assert accountant.history == ()


def test_epsilon_with_a_candidate_event_records_nothing() -> None:
    accountant = make_accountant(AccountantKind.RDP)
    accountant.step(event=SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=50))
    before = accountant.get_epsilon(delta=DELTA)
    candidate = SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=50)
    projected = accountant.epsilon_with(event=candidate, delta=DELTA)
    assert accountant.get_epsilon(delta=DELTA) == before
    assert projected > before
    accountant.step(event=candidate)
    assert accountant.get_epsilon(delta=DELTA) == pytest.approx(projected, rel=1e-12)


def test_history_cannot_be_mutated_from_outside() -> None:
    accountant = make_accountant(AccountantKind.RDP)
    accountant.step(event=GAUSSIAN_STEP)
    history = accountant.history
    assert isinstance(history, tuple)
    with pytest.raises(AttributeError):
        accountant.history = ()  # type: ignore[misc]


def _stepped(kind: AccountantKind) -> PrivacyAccountant:
    accountant = make_accountant(kind)
    accountant.step(event=SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=60))
    accountant.step(event=SampledGaussian(noise_multiplier=1.1, sample_rate=0.05, steps=40))
    if kind is AccountantKind.RDP:
        accountant.step(event=SKELLAM_ROUND)
    return accountant


@pytest.mark.parametrize("kind", list(AccountantKind))
def test_state_dict_is_json_and_restores_the_same_epsilon(kind) -> None:
    original = _stepped(kind)
    state = json.loads(json.dumps(original.state_dict()))
    assert state["format"] == "secagg.dp.accountant"
    assert state["version"] == 1
    assert state["accountant"] == kind.value
    restored = make_accountant(kind)
    restored.load_state_dict(state)
    assert restored.history == original.history
    assert restored.get_epsilon(delta=DELTA) == original.get_epsilon(delta=DELTA)


def _garbage_states() -> list[tuple[str, object]]:
    good = _stepped(AccountantKind.RDP).state_dict()

    def changed(**fields: object) -> dict:
        state = copy.deepcopy(good)
        state.update(fields)
        return state

    without_history = copy.deepcopy(good)
    del without_history["history"]
    bad_event = copy.deepcopy(good)
    bad_event["history"][1]["sample_rate"] = 1.5
    unknown_mechanism = copy.deepcopy(good)
    unknown_mechanism["history"][0]["mechanism"] = "laplace"
    return [
        ("not a mapping", [1, 2, 3]),
        ("missing field", without_history),
        ("extra field", changed(comment="hi")),
        ("other format", changed(format="opacus")),
        ("future version", changed(version=2)),
        ("boolean version", changed(version=True)),
        ("other kind", changed(accountant="prv")),
        ("history not a list", changed(history={"0": good["history"][0]})),
        ("invalid event", bad_event),
        ("unknown mechanism", unknown_mechanism),
        ("untyped tuple event", changed(history=[[1.0, 0.1, 100]])),
    ]


@pytest.mark.parametrize(("reason", "state"), _garbage_states(), ids=[reason for reason, _ in _garbage_states()])
def test_load_state_dict_refuses_garbage_and_changes_nothing(reason, state) -> None:
    accountant = make_accountant(AccountantKind.RDP)
    accountant.step(event=GAUSSIAN_STEP)
    with pytest.raises(AccountantStateError):
        accountant.load_state_dict(state)  # type: ignore[arg-type]
    assert accountant.history == (GAUSSIAN_STEP,)


def test_prv_accountant_refuses_a_state_holding_a_skellam_event() -> None:
    state = make_accountant(AccountantKind.PRV).state_dict()
    state["history"] = [SKELLAM_ROUND.to_dict()]
    with pytest.raises(AccountantStateError, match="entry 0"):
        make_accountant(AccountantKind.PRV).load_state_dict(state)


@pytest.mark.parametrize("kind", list(AccountantKind))
def test_accountant_survives_a_restart_through_save_and_load(tmp_path: Path, kind) -> None:
    path = tmp_path / "bank-a.accountant.json"
    original = _stepped(kind)
    save_accountant(path, original)
    restored = load_accountant(path)
    assert type(restored) is type(original)
    assert restored.history == original.history
    assert restored.get_epsilon(delta=DELTA) == original.get_epsilon(delta=DELTA)
    restored.step(event=GAUSSIAN_STEP)
    save_accountant(path, restored)
    assert load_accountant(path).history == restored.history


def test_saved_state_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_accountant(path, _stepped(AccountantKind.RDP))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_overwriting_a_world_readable_file_leaves_it_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{}")
    path.chmod(0o644)
    save_accountant(path, _stepped(AccountantKind.RDP))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failed_save_keeps_the_previous_state_and_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "state.json"
    first = _stepped(AccountantKind.RDP)
    save_accountant(path, first)
    before = path.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(accountant_module.os, "replace", crash)
    later = _stepped(AccountantKind.RDP)
    later.step(event=GAUSSIAN_STEP)
    with pytest.raises(OSError, match="disk full"):
        save_accountant(path, later)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_save_refuses_something_that_is_not_an_accountant(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError):
        save_accountant(tmp_path / "x.json", {"history": []})  # type: ignore[arg-type]
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"\xff\xfe garbage",
        b"[]",
        b'{"format": "secagg.dp.accountant", "version": 1, "accountant": "moments", "history": []}',
        b'{"format": "secagg.dp.accountant", "version": 1, "accountant": "rdp", "history": '
        b'[{"mechanism": "gaussian", "noise_multiplier": NaN, "sample_rate": 0.1, "steps": 1}]}',
    ],
)
def test_load_refuses_a_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(AccountantStateError):
        load_accountant(path)


def test_load_of_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_accountant(tmp_path / "absent.json")
