"""What the round runner needs from a server, independent of HTTP.

:class:`RoundTransport` is the whole surface: describe a round, submit this
client's message for one protocol round, and fetch the server's answer to it. The
HTTP implementation is :class:`clients.runtime.http_transport.HttpTransport`; tests use an
in-memory transport over :class:`secagg.server.ServerSession`. Keeping the runner
behind this protocol is what lets the crash-and-resume logic be tested exhaustively
without sockets (the sans-I/O design of python-hyper/h2).

Contract every implementation keeps:

* :meth:`RoundTransport.submit` is idempotent for identical bytes: resubmitting the
  exact payload the server already accepted succeeds (the runner resubmits after a
  crash or a lost acknowledgement, and only ever byte-identical payloads);
* :meth:`RoundTransport.fetch` never blocks for long: it returns :class:`Pending`
  until the server has closed the stage, then the server's message for this client
  (:class:`Delivered`), or the round's terminal outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from secagg.config import RoundConfig
from secagg.rounds import Round


@dataclass(frozen=True, slots=True)
class TrainingBinding:
    """The consortium training a round belongs to (``docs/CONSORTIUM.md``), as the round declares it.

    The manifest hash and the step are in the round's config digest
    (:attr:`secagg.config.RoundConfig.manifest_hash`), so every R0 signature covers them.
    """

    training_id: str
    manifest_hash: bytes
    step: int


@dataclass(frozen=True, slots=True)
class RoundDescription:
    """A round as the server describes it, before this client sends anything.

    ``member_ids`` are the enrolled ids of the cohort in protocol order (index i is
    ``config.identity_keys[i]``). ``dp_policy`` is the round's declaration verbatim
    (``{"privacy": [{"unit", "mechanism", "parameters"}, ...]}``, docs/API.md
    section 4); the client recomputes everything it checks from it.
    """

    round_id: str
    config: RoundConfig
    status: str
    is_open: bool
    member_ids: tuple[str, ...] | None = None
    dp_policy: Mapping[str, object] | None = field(default=None, compare=False)
    server_identity: str | None = None
    chunk_bytes: int | None = None
    """The round's chunk size (``docs/API.md``): a masked input larger than one chunk is uploaded in chunks."""
    training: TrainingBinding | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """The server has not closed the stage yet; ask again (after ``retry_after`` seconds if given).

    ``long_polled`` is True when the server already held the request open for the whole
    long-poll wait (``docs/API.md``, ``?wait=S``) and asked to be called again at once
    (``Retry-After: 0``): the waiting has been done, the next request goes out without a
    pause.
    """

    retry_after: float | None = None
    long_polled: bool = False


@dataclass(frozen=True, slots=True)
class Delivered:
    """The server's message to this client, in the core's binary encoding."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class RoundAborted:
    """The round ended without a result; ``reason`` is the server's stable reason string."""

    reason: str


@dataclass(frozen=True, slots=True)
class Excluded:
    """The server left this client out of the current stage (it missed an earlier one)."""


@dataclass(frozen=True, slots=True)
class RoundCompleted:
    """The round completed; this client has nothing more to receive."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """The server durably accepted the message (or already had exactly these bytes)."""

    already_accepted: bool = False
    closed_stage: bool = False
    """The server says this message completed its stage."""


@dataclass(frozen=True, slots=True)
class StageClosed:
    """The server is no longer in the message's stage (``wrong-stage``).

    Only meaningful for a message re-sent after a crash: the server may hold it
    already; polling tells (the next request if it does, ``excluded`` if not).
    """


@dataclass(frozen=True, slots=True)
class RoundResult:
    """The round's sum in Z_2^b and U3, the protocol indices whose inputs it contains."""

    vector: np.ndarray = field(repr=False)
    survivors: tuple[int, ...]


Delivery = Pending | Delivered | Excluded | RoundAborted | RoundCompleted
SubmitOutcome = Accepted | StageClosed | Excluded | RoundAborted
ResultDelivery = Pending | RoundResult | RoundAborted


class RoundTransport(Protocol):
    """The server, as the round runner sees it."""

    @property
    def endpoint(self) -> str:
        """Which server this is (its base URL); recorded in the state file."""
        ...

    def describe_round(self, round_id: str) -> RoundDescription:
        """The round's parameters and cohort (``GET /v1/rounds/{id}`` over HTTP)."""
        ...

    def submit(self, round_id: str, protocol_round: Round, payload: bytes) -> SubmitOutcome:
        """Deliver this client's message for ``protocol_round``; idempotent for identical bytes.

        Any other refusal raises :class:`~clients.runtime.errors.ServerRefused`.
        """
        ...

    def fetch(self, round_id: str, protocol_round: Round) -> Delivery:
        """The server's answer to this client's ``protocol_round`` message, if ready."""
        ...

    def fetch_result(self, round_id: str) -> ResultDelivery:
        """The round's sum once it completed."""
        ...
