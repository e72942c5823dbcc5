"""The client state machine: typed messages in, typed messages out, no I/O.

Legal transitions live in one table keyed by (state, message type), in the manner
of h2. Anything not in the table aborts the session: a message in a state that does
not expect it is refused (an unmasking request that arrives before this client's
masked input was accepted is named as such). A refusal moves the session to its
terminal :class:`Aborted` state and raises :class:`~secagg.errors.ProtocolAbort`;
every later input raises :class:`~secagg.errors.SessionAborted`. Nothing secret is
in any error.

Typical use, with the transport left to the caller::

    session = ClientSession(config, participant_id, identity_key, encoded_input)
    send(session.start())                      # AdvertiseKeys
    while not session.finished:
        reply = session.receive(fetch())       # ShareKeys, MaskedInput, ...
        send(reply)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

import numpy as np

from secagg.client.context import ClientContext
from secagg.client.r0_advertise_keys import AwaitingKeyList, advertise_keys
from secagg.client.r1_share_keys import AwaitingMaskedInputRequest
from secagg.client.r2_masked_input import AwaitingSurvivors
from secagg.client.r3_consistency_check import AwaitingUnmaskingRequest
from secagg.client.r4_unmasking import Completed
from secagg.client.stages import ClientStage
from secagg.config import ProtocolMode, RoundConfig
from secagg.errors import AbortReason, MalformedMessage, ProtocolAbort, SessionAborted
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import RandomSource, SystemRandom
from secagg.messages import (
    ClientMessage,
    ConsistencyCheckRequest,
    KeyList,
    MaskedInputRequest,
    ServerMessage,
    UnmaskingRequest,
    decode,
)


@dataclass(frozen=True, slots=True)
class NotStarted:
    stage: ClassVar[ClientStage] = ClientStage.NOT_STARTED


@dataclass(frozen=True, slots=True)
class Aborted:
    stage: ClassVar[ClientStage] = ClientStage.ABORTED
    reason: AbortReason
    detail: str


Handler = Callable[[Any, ClientContext, Any], tuple[Any, ClientMessage]]

_COMMON: dict[tuple[type, type], Handler] = {
    (AwaitingKeyList, KeyList): AwaitingKeyList.on_key_list,
    (AwaitingMaskedInputRequest, MaskedInputRequest): AwaitingMaskedInputRequest.on_masked_input_request,
}
TRANSITIONS: dict[ProtocolMode, dict[tuple[type, type], Handler]] = {
    ProtocolMode.ACTIVE: {
        **_COMMON,
        (AwaitingSurvivors, ConsistencyCheckRequest): AwaitingSurvivors.on_consistency_check_request,
        (AwaitingUnmaskingRequest, UnmaskingRequest): AwaitingUnmaskingRequest.on_unmasking_request,
    },
    ProtocolMode.HONEST_BUT_CURIOUS: {
        **_COMMON,
        (AwaitingSurvivors, UnmaskingRequest): AwaitingSurvivors.on_unmasking_request,
    },
}
"""Every legal (state, server message) pair, per mode. Anything else aborts."""

_BEFORE_OWN_MASKED_INPUT = (NotStarted, AwaitingKeyList, AwaitingMaskedInputRequest)


class ClientSession:
    """One client's side of one round of secure aggregation.

    ``encoded_input`` is the client's vector already in Z_2^b (container dtype of
    ``config.ring``); see :mod:`secagg.encoding` and :mod:`dp.mechanisms.distributed`.
    ``source`` defaults to the operating system's CSPRNG.
    """

    def __init__(
        self,
        config: RoundConfig,
        participant_id: int,
        identity_key: SigningKey,
        encoded_input: np.ndarray,
        *,
        source: RandomSource | None = None,
    ) -> None:
        self._context = ClientContext(
            config=config,
            participant_id=participant_id,
            identity_key=identity_key,
            source=source if source is not None else SystemRandom(),
            input_vector=encoded_input,
        )
        self._state: Any = NotStarted()

    @property
    def participant_id(self) -> int:
        return self._context.participant_id

    @property
    def config(self) -> RoundConfig:
        return self._context.config

    @property
    def stage(self) -> ClientStage:
        stage: ClientStage = self._state.stage
        return stage

    @property
    def finished(self) -> bool:
        return isinstance(self._state, (Completed, Aborted))

    @property
    def abort_reason(self) -> AbortReason | None:
        return self._state.reason if isinstance(self._state, Aborted) else None

    @property
    def session_id(self) -> bytes | None:
        return getattr(self._state, "session_id", None) or getattr(
            getattr(self._state, "survivors_state", None), "session_id", None
        )

    def start(self) -> ClientMessage:
        """R0: generate and sign this round's keys; returns :class:`~secagg.messages.AdvertiseKeys`."""
        self._refuse_if_aborted()
        if not isinstance(self._state, NotStarted):
            self._abort(AbortReason.UNEXPECTED_MESSAGE, "start() called twice")
        self._state, message = advertise_keys(self._context)
        return message

    def receive(self, message: ServerMessage) -> ClientMessage:
        """Process one server message; return the reply or abort."""
        self._refuse_if_aborted()
        handler = TRANSITIONS[self._context.config.mode].get((type(self._state), type(message)))
        if handler is None:
            if isinstance(message, UnmaskingRequest) and isinstance(self._state, _BEFORE_OWN_MASKED_INPUT):
                self._abort(AbortReason.PREMATURE_UNMASK_REQUEST, "unmasking requested before this client's masked input")
            self._abort(
                AbortReason.UNEXPECTED_MESSAGE,
                f"{type(message).__name__} is not expected in stage {self._state.stage.value}",
            )
        try:
            next_state, reply = handler(self._state, self._context, message)
        except ProtocolAbort as refusal:
            self._state = Aborted(refusal.reason, refusal.detail)
            raise
        self._state = next_state
        return reply

    def receive_bytes(self, data: bytes) -> ClientMessage:
        """Decode and process one server message; malformed bytes abort the session."""
        self._refuse_if_aborted()
        try:
            message: object = decode(data)
        except MalformedMessage as exc:
            self._abort(AbortReason.MALFORMED_MESSAGE, str(exc))
        if not isinstance(message, (KeyList, MaskedInputRequest, ConsistencyCheckRequest, UnmaskingRequest)):
            self._abort(AbortReason.UNEXPECTED_MESSAGE, f"{type(message).__name__} is a client message")
        return self.receive(message)

    def abort(self, reason: AbortReason = AbortReason.ABORTED_BY_SERVER, detail: str = "round aborted") -> None:
        """Move to the aborted state on the caller's decision (e.g. the server announced an abort)."""
        if not isinstance(self._state, Aborted):
            self._state = Aborted(reason, detail)

    def _refuse_if_aborted(self) -> None:
        if isinstance(self._state, Aborted):
            raise SessionAborted(self._state.reason)

    def _abort(self, reason: AbortReason, detail: str) -> NoReturn:
        self._state = Aborted(reason, detail)
        raise ProtocolAbort(reason, detail)
