"""``compute_epsilon``: the one pure entry point from a privacy history to epsilon(delta).

Everything that reports an epsilon (the accountants, the ledger and its verifier,
budgets, the auditor's report, the CLI) goes through this function, so an auditor
who recomputes a ledger gets the same number the party recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

from dp.accounting.errors import InvalidParameterError
from dp.accounting.events import AccountantKind, MechanismEvent, validate_delta, validate_events
from dp.accounting.prv import prv_epsilon
from dp.accounting.rdp import rdp_epsilon


def validate_accountant_kind(accountant: object) -> AccountantKind:
    """Return ``accountant`` as an :class:`AccountantKind`, refusing unknown values."""
    try:
        return AccountantKind(accountant)
    except ValueError as error:
        choices = ", ".join(kind.value for kind in AccountantKind)
        raise InvalidParameterError(f"unknown accountant {accountant!r}; choose one of: {choices}") from error


def compute_epsilon(
    events: Sequence[MechanismEvent],
    *,
    delta: float,
    accountant: AccountantKind = AccountantKind.RDP,
) -> float:
    """Epsilon at ``delta`` of the composition of every event in ``events``.

    * ``AccountantKind.RDP``: RDP composed over all events, converted by Balle et al.
      2020 (:mod:`dp.accounting.rdp`); handles Gaussian and Skellam events.
    * ``AccountantKind.PRV``: Gopi et al. 2021 (:mod:`dp.accounting.prv`); Gaussian
      events only, otherwise :class:`~dp.accounting.errors.UnsupportedMechanismError`.

    An empty history spends nothing: 0.0. The result may be ``inf`` when no finite
    epsilon can be certified (RDP with vanishing noise).
    """
    checked_events = validate_events(events)
    checked_delta = validate_delta(delta)
    kind = validate_accountant_kind(accountant)
    if kind is AccountantKind.PRV:
        return prv_epsilon(checked_events, delta=checked_delta)
    return rdp_epsilon(checked_events, delta=checked_delta)[0]
