"""Our numpy-only analyses agree with Opacus 1.6's accountants where Opacus is installed.

Opacus (and with it torch and scipy) is imported inside the tests only: the module
under test must never need it. Opacus warns when the optimal RDP order sits at the end
of its grid; that warning is irrelevant to the comparison and is silenced.
"""

from __future__ import annotations

import itertools
import warnings

import pytest

from dp.accounting import AccountantKind, SampledGaussian, compute_epsilon, noise_multiplier_for_epsilon

pytestmark = pytest.mark.torch

DELTA = 1e-5
GRID = list(itertools.product([0.01, 0.1, 1.0], [0.8, 2.0], [1, 50]))


def _opacus_epsilon(kind: AccountantKind, history: list[tuple[float, float, int]]) -> float:
    accountants = pytest.importorskip("opacus.accountants")
    reference = {AccountantKind.RDP: accountants.RDPAccountant, AccountantKind.PRV: accountants.PRVAccountant}[kind]()
    reference.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(reference.get_epsilon(delta=DELTA))


@pytest.mark.parametrize("kind", list(AccountantKind))
@pytest.mark.parametrize(("sample_rate", "noise_multiplier", "steps"), GRID)
def test_epsilon_agrees_with_opacus(kind, sample_rate, noise_multiplier, steps) -> None:
    expected = _opacus_epsilon(kind, [(noise_multiplier, sample_rate, steps)])
    event = SampledGaussian(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
    assert compute_epsilon([event], delta=DELTA, accountant=kind) == pytest.approx(expected, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("kind", list(AccountantKind))
def test_heterogeneous_history_agrees_with_opacus(kind) -> None:
    history = [(1.0, 0.1, 30), (1.4, 0.02, 200), (0.9, 0.1, 10)]
    expected = _opacus_epsilon(kind, history)
    events = [SampledGaussian(noise_multiplier=z, sample_rate=q, steps=t) for z, q, t in history]
    assert compute_epsilon(events, delta=DELTA, accountant=kind) == pytest.approx(expected, rel=1e-6)


def test_noise_multiplier_calibration_agrees_with_opacus() -> None:
    """RDP only: the PRV search runs the same bisection over epsilons checked above, and
    Opacus's PRV search alone takes seconds."""
    kind = AccountantKind.RDP
    utils = pytest.importorskip("opacus.accountants.utils")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = utils.get_noise_multiplier(
            target_epsilon=3.0, target_delta=DELTA, sample_rate=0.05, steps=200, accountant=kind.value
        )
    ours = noise_multiplier_for_epsilon(target_epsilon=3.0, delta=DELTA, sample_rate=0.05, steps=200, accountant=kind)
    assert ours == pytest.approx(expected, rel=1e-9)
