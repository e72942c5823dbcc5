"""Errors of :mod:`dp`: one base class for the whole package.

Every error the differential-privacy code raises on purpose derives from
:class:`DPError`, so a caller (the bank client, the server's report endpoint, the
auditor's CLI) can catch the package's refusals in one place without also
swallowing programming errors. Submodules define their specific subclasses
(for example :class:`dp.accounting.AccountingError`).
"""

from __future__ import annotations


class DPError(Exception):
    """Base class of every error raised on purpose by :mod:`dp`."""
