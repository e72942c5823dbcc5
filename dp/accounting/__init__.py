"""Privacy accounting for secagg, in numpy and math only (no torch, no opacus, no scipy).

The server and the auditor's machine install neither torch nor scipy, yet must
recompute every epsilon a party claims. So the analyses are implemented here from
their papers, and a test checks them against Opacus 1.6 where Opacus is installed:

* Poisson-subsampled Gaussian, RDP: Mironov, Talwar, Zhang 2019 (arXiv:1908.10530);
  Abadi et al. 2016. Conversion to (epsilon, delta): Balle et al. 2020, Theorem 21.
* Poisson-subsampled Gaussian, PRV: Gopi, Lee, Wutschitz 2021 (arXiv:2106.02848).
* Skellam, RDP: Agarwal, Kairouz, Liu 2021 (arXiv:2110.04995v2, Corollary 3.6).

Layout: :mod:`~dp.accounting.events` (typed events), :mod:`~dp.accounting.rdp` and
:mod:`~dp.accounting.prv` (pure analyses), :mod:`~dp.accounting.epsilon`
(:func:`compute_epsilon`), :mod:`~dp.accounting.calibration` (noise for a target),
:mod:`~dp.accounting.accountant` (stateful accountants and their persistence).
"""

from __future__ import annotations

from dp.accounting.accountant import (
    PrivacyAccountant,
    PRVAccountant,
    RDPAccountant,
    load_accountant,
    make_accountant,
    save_accountant,
)
from dp.accounting.calibration import BudgetTooSmallError, noise_multiplier_for_epsilon, skellam_variance_for_epsilon
from dp.accounting.epsilon import compute_epsilon
from dp.accounting.errors import (
    AccountantStateError,
    AccountingError,
    InvalidParameterError,
    NumericalAccuracyError,
    UnsupportedMechanismError,
)
from dp.accounting.events import (
    AccountantKind,
    MechanismEvent,
    MechanismKind,
    SampledGaussian,
    Skellam,
    event_from_dict,
)

__all__ = [
    "AccountantKind",
    "AccountantStateError",
    "AccountingError",
    "BudgetTooSmallError",
    "InvalidParameterError",
    "MechanismEvent",
    "MechanismKind",
    "NumericalAccuracyError",
    "PRVAccountant",
    "PrivacyAccountant",
    "RDPAccountant",
    "SampledGaussian",
    "Skellam",
    "UnsupportedMechanismError",
    "compute_epsilon",
    "event_from_dict",
    "load_accountant",
    "make_accountant",
    "noise_multiplier_for_epsilon",
    "save_accountant",
    "skellam_variance_for_epsilon",
]
