"""Example-level DP-SGD at a bank (dp.training): tiny models, few steps, fixed seeds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("opacus")
import torch

from dp.accounting import AccountantKind, SampledGaussian, compute_epsilon, load_accountant
from dp.mechanisms.noise import gaussian_noise
from dp.models import ModelKind, ModelSpec
from dp.training import (
    BankTrainer,
    CsprngDPOptimizer,
    DPSGDConfig,
    EpsilonTarget,
    FixedNoise,
    PlannedRunExceeded,
    TrainingError,
    build_model,
    flatten_parameters,
    initial_parameters,
    load_parameters,
    mean_loss,
)
from secagg.hazmat.randomness import DeterministicRandom

pytestmark = pytest.mark.torch

FEATURES = 4
ROWS = 400
DELTA = 1e-5


def _source(seed: int) -> DeterministicRandom:
    return DeterministicRandom.from_int(seed)


@pytest.fixture(scope="module")
def dataset() -> tuple[np.ndarray, np.ndarray]:
    """Linearly separable synthetic rows (features uniform in [-1, 1), label = sign of w.x)."""
    raw = np.empty(ROWS * FEATURES, dtype=np.uint64)
    _source(1000).fill(raw)
    features = ((raw >> np.uint64(11)).astype(np.float64) / 2.0**53 * 2.0 - 1.0).reshape(ROWS, FEATURES)
    labels = (features @ np.array([2.0, -1.5, 1.0, 0.0]) > 0).astype(np.float64)
    return features, labels


def _config(**overrides) -> DPSGDConfig:
    parameters = {
        "max_grad_norm": 1.0,
        "sample_rate": 0.1,
        "local_steps": 25,
        "learning_rate": 1.0,
        "noise": FixedNoise(0.8),
        "delta": DELTA,
        "accountant": AccountantKind.RDP,
    }
    parameters.update(overrides)
    return DPSGDConfig(**parameters)


LOGISTIC = ModelSpec(ModelKind.LOGISTIC_REGRESSION, FEATURES)
MLP = ModelSpec(ModelKind.MLP, FEATURES, hidden_units=8)


@pytest.mark.parametrize("spec", [LOGISTIC, MLP], ids=["logistic", "mlp"])
def test_dp_sgd_rounds_lower_the_loss_and_report_the_composed_epsilon(spec, dataset, tmp_path):
    features, labels = dataset
    config = _config()
    trainer = BankTrainer(spec, config, accountant_path=tmp_path / "accountant.json", source=_source(1))
    parameters = initial_parameters(spec, _source(2))
    before = mean_loss(spec, parameters, features, labels)
    for round_index in range(2):
        result = trainer.train_round(parameters, features, labels)
        assert result.model_update.dtype == np.float32 and result.model_update.shape == (spec.parameter_count,)
        parameters = parameters + result.model_update
        assert result.event == SampledGaussian(noise_multiplier=0.8, sample_rate=0.1, steps=25)
        expected = compute_epsilon([result.event] * (round_index + 1), delta=DELTA, accountant=AccountantKind.RDP)
        assert math.isclose(result.epsilon, expected, rel_tol=1e-12)
        assert result.delta == DELTA
    after = mean_loss(spec, parameters, features, labels)
    assert after < 0.7 * before


def test_accountant_state_survives_a_restart_and_composes(dataset, tmp_path):
    features, labels = dataset
    path = tmp_path / "bank-a" / "accountant.json"
    path.parent.mkdir()
    config = _config(local_steps=5)
    parameters = initial_parameters(LOGISTIC, _source(3))
    first = BankTrainer(LOGISTIC, config, accountant_path=path, source=_source(4)).train_round(parameters, features, labels)
    saved = path.read_bytes()
    # A restarted bank: new objects, nothing shared but the file on disk.
    restarted = BankTrainer(LOGISTIC, config, accountant_path=Path(str(path)), source=_source(5))
    assert restarted.epsilon_spent() == first.epsilon
    second = restarted.train_round(parameters, features, labels)
    assert path.read_bytes() != saved
    history = load_accountant(path).history
    assert sum(event.steps for event in history) == 10
    expected = compute_epsilon([first.event, second.event], delta=DELTA, accountant=AccountantKind.RDP)
    assert math.isclose(second.epsilon, expected, rel_tol=1e-12)
    assert second.epsilon > first.epsilon


def test_prv_accountant_is_used_when_configured(dataset, tmp_path):
    features, labels = dataset
    config = _config(local_steps=5, accountant=AccountantKind.PRV)
    trainer = BankTrainer(LOGISTIC, config, accountant_path=tmp_path / "a.json", source=_source(6))
    result = trainer.train_round(initial_parameters(LOGISTIC, _source(7)), features, labels)
    expected = compute_epsilon([result.event], delta=DELTA, accountant=AccountantKind.PRV)
    assert math.isclose(result.epsilon, expected, rel_tol=1e-12)


def test_target_epsilon_calibration_lands_at_or_below_the_target_over_the_planned_run(dataset, tmp_path):
    features, labels = dataset
    target = 3.0
    config = _config(local_steps=10, noise=EpsilonTarget(target_epsilon=target, planned_rounds=2))
    trainer = BankTrainer(LOGISTIC, config, accountant_path=tmp_path / "a.json", source=_source(8))
    parameters = initial_parameters(LOGISTIC, _source(9))
    for _ in range(2):
        result = trainer.train_round(parameters, features, labels)
    assert result.epsilon <= target
    assert result.epsilon >= 0.95 * target  # calibration tolerance is 1 %; 5 % leaves slack
    planned = compute_epsilon(
        [SampledGaussian(noise_multiplier=config.noise_multiplier, sample_rate=0.1, steps=20)],
        delta=DELTA,
        accountant=AccountantKind.RDP,
    )
    assert math.isclose(result.epsilon, planned, rel_tol=1e-12)


def test_a_round_beyond_the_planned_run_is_refused_before_anything_is_spent(dataset, tmp_path):
    features, labels = dataset
    path = tmp_path / "a.json"
    config = _config(local_steps=5, noise=EpsilonTarget(target_epsilon=2.0, planned_rounds=1))
    trainer = BankTrainer(LOGISTIC, config, accountant_path=path, source=_source(10))
    parameters = initial_parameters(LOGISTIC, _source(11))
    trainer.train_round(parameters, features, labels)
    saved = path.read_bytes()
    with pytest.raises(PlannedRunExceeded):
        trainer.train_round(parameters, features, labels)
    assert path.read_bytes() == saved


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p, x, y: (p[:-1], x, y),
        lambda p, x, y: (np.full_like(p, np.nan), x, y),
        lambda p, x, y: (p, x[:, :-1], y),
        lambda p, x, y: (p, np.where(x > 0.9, np.inf, x), y),
        lambda p, x, y: (p, x, y * 2),
        lambda p, x, y: (p, x, y[:-1]),
    ],
    ids=["short-parameters", "nan-parameters", "narrow-features", "infinite-features", "non-binary-labels", "short-labels"],
)
def test_bad_input_is_refused_and_spends_nothing(mutate, dataset, tmp_path):
    features, labels = dataset
    path = tmp_path / "a.json"
    trainer = BankTrainer(LOGISTIC, _config(), accountant_path=path, source=_source(12))
    parameters, x, y = mutate(initial_parameters(LOGISTIC, _source(13)), features, labels)
    with pytest.raises(TrainingError):
        trainer.train_round(parameters, x, y)
    assert not path.exists()


def test_training_is_reproducible_from_the_injected_randomness(dataset, tmp_path):
    features, labels = dataset
    parameters = initial_parameters(MLP, _source(14))
    config = _config(local_steps=5)

    def run(seed: int, name: str) -> np.ndarray:
        trainer = BankTrainer(MLP, config, accountant_path=tmp_path / name, source=_source(seed))
        return trainer.train_round(parameters, features, labels).model_update

    np.testing.assert_array_equal(run(15, "a.json"), run(15, "b.json"))
    assert not np.array_equal(run(15, "c.json"), run(16, "d.json"))


def test_optimizer_noise_comes_from_the_injected_csprng():
    model = torch.nn.Linear(3, 2)
    optimizer = CsprngDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        source=_source(17),
        noise_multiplier=1.3,
        max_grad_norm=0.5,
        expected_batch_size=4,
    )
    for parameter in model.parameters():
        parameter.summed_grad = torch.ones_like(parameter)
    optimizer.add_noise()
    expected_source = _source(17)
    for parameter in model.parameters():
        expected = gaussian_noise(expected_source, parameter.numel(), std=1.3 * 0.5)
        np.testing.assert_allclose(parameter.grad.detach().numpy().ravel(), (1.0 + expected).astype(np.float32), rtol=1e-6)


def test_empty_poisson_batches_still_take_a_noisy_step(tmp_path):
    features, labels = np.zeros((3, FEATURES)), np.zeros(3)
    config = _config(sample_rate=1e-9, local_steps=3)
    trainer = BankTrainer(LOGISTIC, config, accountant_path=tmp_path / "a.json", source=_source(18))
    update = trainer.train_round(np.zeros(LOGISTIC.parameter_count, dtype=np.float32), features, labels).model_update
    assert np.all(np.isfinite(update)) and np.any(update != 0)


def test_model_parameter_count_and_flat_round_trip_match_the_spec():
    for spec in (LOGISTIC, MLP):
        model = build_model(spec)
        assert sum(p.numel() for p in model.parameters()) == spec.parameter_count
        vector = initial_parameters(spec, _source(19))
        load_parameters(model, vector)
        np.testing.assert_array_equal(flatten_parameters(model), vector)
    bound = 1 / math.sqrt(FEATURES)
    assert np.all(np.abs(initial_parameters(LOGISTIC, _source(20))) <= bound)


def test_steps_for_epochs_covers_the_epochs_in_expectation():
    assert DPSGDConfig.steps_for_epochs(3, 0.1) == 30
    assert DPSGDConfig.steps_for_epochs(1, 0.3) == 4
    with pytest.raises(TrainingError):
        DPSGDConfig.steps_for_epochs(0, 0.1)


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_grad_norm": 0.0},
        {"sample_rate": 1.5},
        {"local_steps": 0},
        {"learning_rate": -1.0},
        {"noise": 1.0},
        {"delta": 1.0},
        {"accountant": "rdp"},
    ],
)
def test_invalid_training_configuration_is_refused(overrides):
    with pytest.raises(TrainingError):
        _config(**overrides)
