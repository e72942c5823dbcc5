"""Stateful privacy accountants, their registry, and crash-safe persistence.

The interface follows Opacus's ``IAccountant`` (keyword-only ``step``,
``get_epsilon(delta)``, ``state_dict``) without its weak spots: the history is a
tuple of typed, validated events rather than untyped tuples; modes are enums; an
accountant refuses an event it cannot analyse at ``step`` time, before storing it;
``load_state_dict`` validates the whole state before replacing anything.

A bank's accountant must survive restarts so that epsilon composes over every local
step of every round: :func:`save_accountant` writes the state atomically (temporary
file, fsync, ``os.replace``, directory fsync) with mode 0600, and
:func:`load_accountant` reads it back and refuses anything malformed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from dp.accounting.epsilon import compute_epsilon, validate_accountant_kind
from dp.accounting.errors import (
    AccountantStateError,
    AccountingError,
    InvalidParameterError,
    UnsupportedMechanismError,
)
from dp.accounting.events import AccountantKind, MechanismEvent, SampledGaussian, Skellam, event_from_dict
from dp.accounting.rdp import rdp_epsilon
from dp.atomic_files import write_atomic

STATE_FORMAT = "secagg.dp.accountant"
"""Value of the ``"format"`` field of every saved accountant state."""

STATE_VERSION = 1
"""Version of the saved state layout; :meth:`PrivacyAccountant.load_state_dict` refuses others."""

STATE_FILE_MODE = 0o600
"""Saved accountant states are readable by their owner only."""

_STATE_FIELDS = frozenset({"format", "version", "accountant", "history"})


def _same_mechanism(left: MechanismEvent, right: MechanismEvent) -> bool:
    """True if the two events differ at most in their number of steps."""
    return type(left) is type(right) and dataclasses.replace(left, steps=1) == dataclasses.replace(right, steps=1)


class PrivacyAccountant(ABC):
    """Composes a history of mechanism events into epsilon(delta).

    Invariant: every event in :attr:`history` is valid and supported by this
    accountant's analysis, so :meth:`get_epsilon` never fails on the history itself.
    """

    kind: ClassVar[AccountantKind]

    def __init__(self) -> None:
        self._history: list[MechanismEvent] = []

    @property
    def history(self) -> tuple[MechanismEvent, ...]:
        """Every event accounted so far (consecutive identical mechanisms merged)."""
        return tuple(self._history)

    def __len__(self) -> int:
        return len(self._history)

    @abstractmethod
    def supports(self, event: MechanismEvent) -> bool:
        """Whether this accountant has an analysis for ``event``'s mechanism."""

    def _check_event(self, event: object) -> MechanismEvent:
        if not isinstance(event, (SampledGaussian, Skellam)):
            raise InvalidParameterError(f"event must be SampledGaussian or Skellam, got {type(event).__name__}")
        if not self.supports(event):
            raise UnsupportedMechanismError(
                f"the {self.kind.value} accountant cannot account for the {event.mechanism.value} mechanism"
                + ("; use the rdp accountant" if self.kind is not AccountantKind.RDP else "")
            )
        return event

    def step(self, *, event: MechanismEvent) -> None:
        """Record ``event``. An event of the same mechanism and parameters as the last
        one is merged into it by adding the step counts (composition is unchanged)."""
        checked = self._check_event(event)
        if self._history and _same_mechanism(self._history[-1], checked):
            last = self._history[-1]
            self._history[-1] = dataclasses.replace(last, steps=last.steps + checked.steps)
        else:
            self._history.append(checked)

    def get_epsilon(self, *, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0.0 before any step)."""
        return compute_epsilon(self._history, delta=delta, accountant=self.kind)

    def epsilon_with(self, *, event: MechanismEvent, delta: float) -> float:
        """Epsilon at ``delta`` if ``event`` were recorded next; records nothing.

        Lets a budget refuse a contribution before anything is spent.
        """
        checked = self._check_event(event)
        return compute_epsilon([*self._history, checked], delta=delta, accountant=self.kind)

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable, versioned snapshot of the accountant."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "accountant": self.kind.value,
            "history": [event.to_dict() for event in self._history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the history by the one in ``state``, after validating all of it.

        Raises :class:`AccountantStateError` (and changes nothing) for a state that is
        not a mapping, has missing or extra fields, another format, version or
        accountant kind, or any invalid or unsupported event.
        """
        if not isinstance(state, Mapping):
            raise AccountantStateError(f"accountant state must be a JSON object, got {type(state).__name__}")
        missing = sorted(_STATE_FIELDS - set(state))
        unexpected = sorted(set(state) - _STATE_FIELDS)
        if missing or unexpected:
            raise AccountantStateError(f"accountant state has missing fields {missing} and unexpected fields {unexpected}")
        if state["format"] != STATE_FORMAT:
            raise AccountantStateError(f"not an accountant state: format {state['format']!r}")
        if isinstance(state["version"], bool) or state["version"] != STATE_VERSION:
            raise AccountantStateError(
                f"unsupported accountant state version {state['version']!r} (this code reads {STATE_VERSION})"
            )
        if state["accountant"] != self.kind.value:
            raise AccountantStateError(
                f"state of a {state['accountant']!r} accountant cannot be loaded into a {self.kind.value!r} accountant"
            )
        raw_history = state["history"]
        if not isinstance(raw_history, list):
            raise AccountantStateError(f"history must be a JSON array, got {type(raw_history).__name__}")
        history: list[MechanismEvent] = []
        for index, raw_event in enumerate(raw_history):
            try:
                history.append(self._check_event(event_from_dict(raw_event)))
            except AccountingError as error:
                raise AccountantStateError(f"history entry {index} is invalid: {error}") from error
        self._history = history


class RDPAccountant(PrivacyAccountant):
    """Rényi DP accountant (Mironov 2017; Mironov, Talwar, Zhang 2019; Agarwal et al. 2021).

    Gaussian and Skellam events; conversion by Balle et al. 2020 as in Opacus 1.6.
    """

    kind: ClassVar[AccountantKind] = AccountantKind.RDP

    def supports(self, event: MechanismEvent) -> bool:
        return isinstance(event, (SampledGaussian, Skellam))

    def get_privacy_spent(self, *, delta: float) -> tuple[float, float]:
        """(epsilon, the RDP order that attains it); the order is nan for an empty history."""
        if not self._history:
            return 0.0, math.nan
        return rdp_epsilon(self._history, delta=delta)


class PRVAccountant(PrivacyAccountant):
    """PRV accountant (Gopi, Lee, Wutschitz 2021), as Opacus 1.6's; Gaussian events only."""

    kind: ClassVar[AccountantKind] = AccountantKind.PRV

    def supports(self, event: MechanismEvent) -> bool:
        return isinstance(event, SampledGaussian)


_REGISTRY: dict[AccountantKind, type[PrivacyAccountant]] = {
    AccountantKind.RDP: RDPAccountant,
    AccountantKind.PRV: PRVAccountant,
}


def make_accountant(kind: AccountantKind) -> PrivacyAccountant:
    """A new, empty accountant of the given kind."""
    return _REGISTRY[validate_accountant_kind(kind)]()


def _refuse_non_finite(constant: str) -> float:
    raise AccountantStateError(f"accountant state contains the non-JSON number {constant}")


def save_accountant(path: str | os.PathLike[str], accountant: PrivacyAccountant) -> None:
    """Write ``accountant``'s state to ``path`` atomically, readable by the owner only.

    The state goes to a temporary file in the same directory (created 0600), is
    flushed and fsynced, then renamed over ``path`` with :func:`os.replace`, and the
    directory is fsynced: after a crash ``path`` holds either the old or the new
    state, never a mixture. On any failure the temporary file is removed.
    """
    if not isinstance(accountant, PrivacyAccountant):
        raise InvalidParameterError(f"expected a PrivacyAccountant, got {type(accountant).__name__}")
    payload = (json.dumps(accountant.state_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    write_atomic(path, payload, mode=STATE_FILE_MODE)


def load_accountant(path: str | os.PathLike[str]) -> PrivacyAccountant:
    """Read an accountant saved by :func:`save_accountant`.

    Raises :class:`FileNotFoundError` if there is no file (a first run) and
    :class:`AccountantStateError` if the file is not a valid accountant state.
    """
    raw = Path(path).read_bytes()
    try:
        state = json.loads(raw.decode("utf-8"), parse_constant=_refuse_non_finite)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AccountantStateError(f"{path}: not a JSON accountant state ({error})") from error
    if not isinstance(state, dict):
        raise AccountantStateError(f"{path}: accountant state must be a JSON object")
    try:
        kind = AccountantKind(state.get("accountant"))
    except ValueError as error:
        raise AccountantStateError(f"{path}: unknown accountant kind {state.get('accountant')!r}") from error
    accountant = make_accountant(kind)
    accountant.load_state_dict(state)
    return accountant
