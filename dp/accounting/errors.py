"""Errors of :mod:`dp.accounting`.

All of them derive from :class:`dp.errors.DPError` through :class:`AccountingError`,
so callers can catch every refusal of the accountant in one place. Invalid
parameters are also :class:`ValueError`, so generic input handling keeps working.
"""

from __future__ import annotations

from dp.errors import DPError


class AccountingError(DPError):
    """Base class of every error raised by :mod:`dp.accounting`."""


class InvalidParameterError(AccountingError, ValueError):
    """A mechanism, accountant or target parameter outside its valid range.

    Raised before anything is computed or stored: a refused call changes nothing.
    """


class UnsupportedMechanismError(AccountingError):
    """An accountant asked to analyse a mechanism it has no sound analysis for.

    The PRV accountant (Gopi, Lee, Wutschitz 2021) is implemented for the
    Poisson-subsampled Gaussian only; the Skellam mechanism has an RDP bound
    (Agarwal, Kairouz, Liu 2021) and must be accounted with the RDP accountant.
    """


class AccountantStateError(AccountingError):
    """A saved accountant state that is malformed, of an unknown version or of another kind."""


class NumericalAccuracyError(AccountingError):
    """The numerical analysis cannot certify an epsilon for these parameters.

    For example a delta so small that floating-point rounding over the PRV
    discretisation grid would dominate it.
    """
