"""The server state machine: client messages in, server messages out, no I/O.

:meth:`ServerSession.receive` validates one client message completely *before*
changing anything; a refused message raises :class:`~secagg.errors.MessageRejected`
with a specific reason and leaves the session exactly as it was, so one misbehaving
client cannot disturb the round. :meth:`ServerSession.advance` closes the current
stage (the caller decides when: every expected client answered, or a deadline
passed) and returns the messages to deliver, keyed by recipient. A stage that
closes with fewer than t responders aborts the round
(:class:`~secagg.errors.ProtocolAbort`, ``too-few-participants``).

Masked inputs are added into one running sum as they arrive, so memory is O(dim),
not O(n * dim). A service that keeps masked inputs in a database and sums them
itself (for example, several server processes sharing one database) constructs the
session with ``sum_masked_inputs=False`` and hands over the sum of the accepted inputs
with :meth:`ServerSession.provide_masked_sum` before R4 closes. The session is deterministic: replaying the same accepted messages
and the same ``advance`` calls reproduces the same outputs and result, which is how
the service recovers after a restart. ``mask_threads`` spreads the regeneration of
masks in R4 over that many threads (same result; the caller chooses, typically the
number of cores).

A service that also expands the masks itself, chunk by chunk and off its request path
(:mod:`secagg.server.chunk_tasks`), builds the session with ``expand_masks=False``: closing
R4 then reconstructs and verifies every secret and stops in
:attr:`~secagg.server.stages.ServerStage.MASK_EXPANSION` with :attr:`ServerSession.unmasking_plan`;
the sum is never formed in the session. Such a session accepts a
:class:`~secagg.chunks.MaskedInputHeader` in place of a masked input whose elements
travel in chunks.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np

from secagg.chunks import MaskedInputHeader
from secagg.config import ProtocolMode, RoundConfig
from secagg.config import session_id as derive_session_id
from secagg.errors import AbortReason, MalformedMessage, MessageRejected, ProtocolAbort, RejectReason, SessionAborted
from secagg.graph import NeighbourMap, neighbours
from secagg.hazmat.keys import verify_signature
from secagg.hazmat.prg import accumulate_masks
from secagg.hazmat.shamir import FIELD_PRIME, SHARE_BYTES
from secagg.messages import (
    ROUND_OF_CLIENT_MESSAGE,
    AdvertiseKeys,
    ClientMessage,
    ConsistencyCheck,
    ConsistencyCheckRequest,
    EncryptedShares,
    KeyList,
    MaskedInput,
    MaskedInputRequest,
    MessageType,
    ServerMessage,
    ShareKeys,
    SignedSurvivors,
    UnmaskingRequest,
    UnmaskingShares,
    decode,
)
from secagg.protocol import (
    SHARE_CIPHERTEXT_BYTES,
    advertise_statement,
    is_usable_x25519_public_key,
    survivors_statement,
)
from secagg.server.stages import ServerStage
from secagg.server.unmasking import InconsistentShare, InconsistentSharesAbort, SecretKind, UnmaskingPlan, plan_unmasking

Outbox = dict[int, ServerMessage]


@dataclass(slots=True)
class StageRecord:
    """Who was expected and who answered in one stage (for logs, metrics and the ledger)."""

    stage: ServerStage
    expected: frozenset[int]
    responded: frozenset[int] = frozenset()


@dataclass(slots=True)
class _RoundData:
    advertised: dict[int, AdvertiseKeys] = field(default_factory=dict)
    advertised_public_keys: set[bytes] = field(default_factory=set)
    session_id: bytes | None = None
    graph: NeighbourMap = field(default_factory=lambda: NeighbourMap(()))
    share_keys: dict[int, ShareKeys] = field(default_factory=dict)
    share_keys_survivors: frozenset[int] = frozenset()
    self_mask_commitments: dict[int, bytes] = field(default_factory=dict)
    masked_input_senders: set[int] = field(default_factory=set)
    running_sum: np.ndarray | None = None
    survivors: frozenset[int] = frozenset()
    dropped: frozenset[int] = frozenset()
    consistency_signatures: dict[int, bytes] = field(default_factory=dict)
    unmasking_expected: frozenset[int] = frozenset()
    unmasking_shares: dict[int, UnmaskingShares] = field(default_factory=dict)


class ServerSession:
    """The server's side of one round of secure aggregation."""

    def __init__(
        self, config: RoundConfig, *, sum_masked_inputs: bool = True, mask_threads: int = 1, expand_masks: bool = True
    ) -> None:
        if mask_threads < 1:
            raise ValueError("mask_threads must be at least 1")
        if not expand_masks and sum_masked_inputs:
            raise ValueError("a session that does not expand the masks does not sum the masked inputs either")
        self._config = config
        self._sum_masked_inputs = sum_masked_inputs
        self._expand_masks = expand_masks
        self._plan: UnmaskingPlan | None = None
        self._mask_threads = mask_threads
        self._digest = config.digest()
        self._stage = ServerStage.ADVERTISE_KEYS
        self._data = _RoundData()
        self._expected: frozenset[int] = frozenset(config.participant_ids)
        self._history: list[StageRecord] = []
        self._abort: ProtocolAbort | None = None
        self._result: np.ndarray | None = None
        self._inconsistent_shares: tuple[InconsistentShare, ...] = ()
        self._unattributed_secrets: tuple[tuple[int, SecretKind], ...] = ()

    # ----------------------------------------------------------------- queries
    @property
    def config(self) -> RoundConfig:
        return self._config

    @property
    def stage(self) -> ServerStage:
        return self._stage

    @property
    def session_id(self) -> bytes | None:
        return self._data.session_id

    @property
    def unmasking_plan(self) -> UnmaskingPlan:
        """Every reconstructed, verified secret of R4 (in :attr:`ServerStage.MASK_EXPANSION` only)."""
        if self._plan is None or self._stage is not ServerStage.MASK_EXPANSION:
            raise RuntimeError("the unmasking plan exists only in the mask-expansion stage")
        return self._plan

    @property
    def expected_senders(self) -> frozenset[int]:
        """Who may still send a message in the current stage (empty once finished)."""
        if self._stage in (ServerStage.COMPLETED, ServerStage.ABORTED):
            return frozenset()
        return self._expected

    @property
    def responded(self) -> frozenset[int]:
        """Who has sent an accepted message in the current stage."""
        return frozenset(self._responders())

    @property
    def stage_complete(self) -> bool:
        """True when every expected client of the current stage has answered."""
        return bool(self.expected_senders) and self.responded == self.expected_senders

    @property
    def history(self) -> tuple[StageRecord, ...]:
        """Closed stages, in order: the survivors of each round."""
        return tuple(self._history)

    @property
    def abort_reason(self) -> AbortReason | None:
        return self._abort.reason if self._abort else None

    @property
    def abort_participants(self) -> frozenset[int]:
        """The participants the abort implicates (:attr:`~secagg.errors.ProtocolAbort.participants`)."""
        return self._abort.participants if self._abort else frozenset()

    @property
    def inconsistent_shares(self) -> tuple[InconsistentShare, ...]:
        """Shares revealed in R4 that are off the polynomial matching their owner's commitment.

        Set when R4 closes, whether the round completed (the wrong shares were outvoted by
        spare ones) or aborted (:data:`~secagg.errors.AbortReason.INCONSISTENT_SHARES`).
        Spare shares are checked only for a secret whose t lowest shares failed, so a wrong
        share that no reconstruction needed is not listed.
        """
        return self._inconsistent_shares

    @property
    def unattributed_secrets(self) -> tuple[tuple[int, SecretKind], ...]:
        """(owner, secret) pairs whose R4 shares include wrong ones that could not be pinned on holders.

        The secret itself matched its commitment, so the sum is exact; too many of its shares
        disagreed for the naming rule of
        :meth:`~secagg.hazmat.shamir.ShamirScheme.reconstruct_verified` to single out holders.
        """
        return self._unattributed_secrets

    @property
    def survivors(self) -> frozenset[int]:
        """U3: the clients whose inputs are in the sum (known after R2 closes)."""
        return self._data.survivors

    @property
    def result(self) -> np.ndarray:
        """The sum of the survivors' inputs in Z_2^b (after R4 completes)."""
        if self._result is None:
            raise SessionAborted(self._abort.reason) if self._abort else RuntimeError("the round has not completed")
        return self._result

    # ----------------------------------------------------------------- inputs
    def receive_bytes(self, data: bytes | bytearray | memoryview) -> ClientMessage:
        """Decode then :meth:`receive`; malformed bytes are rejected, changing nothing."""
        try:
            message: ClientMessage = decode(data)
        except MalformedMessage as exc:
            raise MessageRejected(RejectReason.MALFORMED, str(exc)) from None
        self.receive(message)
        return message

    def receive(self, message: ClientMessage | MaskedInputHeader) -> None:
        """Validate and accept one client message, or raise MessageRejected and change nothing."""
        if self._stage is ServerStage.ABORTED:
            raise SessionAborted(self.abort_reason or AbortReason.ABORTED_BY_SERVER)
        message_type = getattr(message, "message_type", None)
        message_round = ROUND_OF_CLIENT_MESSAGE.get(message_type) if isinstance(message_type, MessageType) else None
        if message_round is None:
            raise MessageRejected(RejectReason.MALFORMED, f"{type(message).__name__} is not a client message")
        expected_stage = ServerStage(message_round.value)
        if expected_stage is not self._stage:
            raise MessageRejected(RejectReason.WRONG_STAGE, f"{type(message).__name__} received in stage {self._stage.value}")
        sender = message.sender
        if sender not in self._config.participant_ids:
            raise MessageRejected(RejectReason.UNKNOWN_SENDER, f"participant {sender} is not in the cohort")
        if sender not in self._expected:
            raise MessageRejected(RejectReason.NOT_IN_ROUND, f"participant {sender} is not expected in {self._stage.value}")
        if sender in self._responders():
            raise MessageRejected(RejectReason.DUPLICATE_SUBMISSION, f"participant {sender} already answered {self._stage.value}")
        if isinstance(message, AdvertiseKeys):
            self._accept_advertise_keys(message)
            return
        if message.session_id != self._data.session_id:
            raise MessageRejected(RejectReason.WRONG_SESSION, "message is for another session")
        if isinstance(message, ShareKeys):
            self._accept_share_keys(message)
        elif isinstance(message, MaskedInput | MaskedInputHeader):
            self._accept_masked_input(message)
        elif isinstance(message, ConsistencyCheck):
            self._accept_consistency_check(message)
        else:
            self._accept_unmasking_shares(message)

    def advance(self) -> Outbox:
        """Close the current stage; return the next messages by recipient (empty when completed)."""
        if self._stage is ServerStage.ABORTED:
            raise SessionAborted(self.abort_reason or AbortReason.ABORTED_BY_SERVER)
        if self._stage in (ServerStage.COMPLETED, ServerStage.MASK_EXPANSION):
            raise MessageRejected(RejectReason.WRONG_STAGE, "every client message of the round has been received")
        responders = frozenset(self._responders())
        self._history.append(StageRecord(stage=self._stage, expected=self._expected, responded=responders))
        if len(responders) < self._config.threshold:
            self._fail(
                AbortReason.TOO_FEW_PARTICIPANTS,
                f"{len(responders)} of {len(self._expected)} answered {self._stage.value}; the threshold is {self._config.threshold}",
            )
        try:
            return self._close_stage(responders)
        except ProtocolAbort as exc:
            self._fail(exc.reason, exc.detail, participants=exc.participants)

    def provide_masked_sum(self, total: np.ndarray) -> None:
        """Hand over the sum (mod 2^b) of the masked inputs of U3, summed outside the session.

        Only for sessions built with ``sum_masked_inputs=False``, after R2 has closed and
        before R4 closes. The caller is responsible for summing exactly the accepted
        inputs of :attr:`survivors`; a wrong sum yields a wrong result, never a leak.
        """
        ring = self._config.ring
        if self._sum_masked_inputs:
            raise MessageRejected(RejectReason.WRONG_STAGE, "this session sums masked inputs itself")
        if self._stage not in (ServerStage.CONSISTENCY_CHECK, ServerStage.UNMASKING):
            raise MessageRejected(RejectReason.WRONG_STAGE, "the masked sum is accepted only after R2 closed")
        if total.ndim != 1 or total.size != self._config.dim or total.dtype != ring.dtype.newbyteorder("="):
            raise MessageRejected(RejectReason.WRONG_LENGTH, f"the masked sum must have {self._config.dim} {ring.dtype} elements")
        self._data.running_sum = ring.reduce(np.array(total, dtype=ring.dtype, copy=True))

    def abort(self, reason: AbortReason, detail: str) -> None:
        """Abort on the caller's decision (an operator, or a deadline policy)."""
        if self._stage not in (ServerStage.COMPLETED, ServerStage.ABORTED):
            self._abort = ProtocolAbort(reason, detail)
            self._stage = ServerStage.ABORTED
            self._data.running_sum = None
            self._plan = None

    # ------------------------------------------------------------- per stage
    def _responders(self) -> Collection[int]:
        data = self._data
        by_stage: dict[ServerStage, Collection[int]] = {
            ServerStage.ADVERTISE_KEYS: data.advertised,
            ServerStage.SHARE_KEYS: data.share_keys,
            ServerStage.MASKED_INPUT_COLLECTION: data.masked_input_senders,
            ServerStage.CONSISTENCY_CHECK: data.consistency_signatures,
            ServerStage.UNMASKING: data.unmasking_shares,
        }
        return by_stage.get(self._stage, frozenset())

    def _accept_advertise_keys(self, message: AdvertiseKeys) -> None:
        if message.config_digest != self._digest:
            raise MessageRejected(RejectReason.WRONG_SESSION, "keys advertised for another round")
        statement = advertise_statement(self._digest, message.sender, message.encryption_public_key, message.masking_public_key)
        if not verify_signature(self._config.identity_keys[message.sender], message.signature, statement):
            raise MessageRejected(RejectReason.INVALID_SIGNATURE, "advertised keys are not signed by the sender's identity key")
        keys = (message.encryption_public_key, message.masking_public_key)
        if not all(is_usable_x25519_public_key(key) for key in keys):
            raise MessageRejected(RejectReason.INVALID_PUBLIC_KEY, "a public key is malformed or of small order")
        if keys[0] == keys[1] or self._data.advertised_public_keys.intersection(keys):
            raise MessageRejected(RejectReason.DUPLICATE_PUBLIC_KEY, "a public key is already in use in this round")
        self._data.advertised[message.sender] = message
        self._data.advertised_public_keys.update(keys)

    def _accept_share_keys(self, message: ShareKeys) -> None:
        expected = self._data.graph[message.sender]
        recipients = [item.recipient for item in message.encrypted_shares]
        if len(set(recipients)) != len(recipients) or set(recipients) != expected:
            raise MessageRejected(RejectReason.WRONG_RECIPIENTS, "ciphertexts must go to exactly the sender's neighbours in U1")
        if any(len(item.ciphertext) != SHARE_CIPHERTEXT_BYTES for item in message.encrypted_shares):
            raise MessageRejected(RejectReason.WRONG_LENGTH, f"share ciphertexts are {SHARE_CIPHERTEXT_BYTES} bytes")
        self._data.share_keys[message.sender] = message

    def _accept_masked_input(self, message: MaskedInput | MaskedInputHeader) -> None:
        ring = self._config.ring
        if message.bits != ring.bits:
            raise MessageRejected(
                RejectReason.WRONG_LENGTH, f"masked input is in Z_2^{message.bits}, the round uses Z_2^{ring.bits}"
            )
        if isinstance(message, MaskedInputHeader):
            if self._sum_masked_inputs:
                raise MessageRejected(RejectReason.MALFORMED, "this session sums masked inputs and needs their elements")
            if message.dim != self._config.dim:
                raise MessageRejected(RejectReason.WRONG_LENGTH, f"masked input must have {self._config.dim} elements")
            self._data.masked_input_senders.add(message.sender)
            return
        vector = message.masked_vector
        if vector.ndim != 1 or vector.size != self._config.dim or vector.dtype != ring.dtype.newbyteorder("="):
            raise MessageRejected(RejectReason.WRONG_LENGTH, f"masked input must have {self._config.dim} elements")
        if not ring.is_reduced(vector):
            raise MessageRejected(RejectReason.NOT_REDUCED, f"masked input has elements outside Z_2^{ring.bits}")
        if self._sum_masked_inputs:
            if self._data.running_sum is None:
                self._data.running_sum = ring.zeros(self._config.dim)
            np.add(self._data.running_sum, vector, out=self._data.running_sum)
        self._data.masked_input_senders.add(message.sender)

    def _accept_consistency_check(self, message: ConsistencyCheck) -> None:
        statement = survivors_statement(self._data.session_id or b"", message.sender, self._data.survivors)
        if not verify_signature(self._config.identity_keys[message.sender], message.signature, statement):
            raise MessageRejected(RejectReason.INVALID_SIGNATURE, "consistency signature does not verify over U3")
        self._data.consistency_signatures[message.sender] = message.signature

    def _accept_unmasking_shares(self, message: UnmaskingShares) -> None:
        data = self._data
        neighbourhood = (data.graph[message.sender] | {message.sender}) & data.share_keys_survivors
        masking_owners = [item.owner for item in message.masking_key_shares]
        self_mask_owners = [item.owner for item in message.self_mask_shares]
        if (
            len(set(masking_owners)) != len(masking_owners)
            or set(masking_owners) != neighbourhood & data.dropped
            or len(set(self_mask_owners)) != len(self_mask_owners)
            or set(self_mask_owners) != neighbourhood & data.survivors
        ):
            raise MessageRejected(
                RejectReason.WRONG_SHARES,
                "shares must cover exactly the dropped (masking keys) and surviving (self-masks) neighbours",
            )
        for item in (*message.masking_key_shares, *message.self_mask_shares):
            if len(item.share) != SHARE_BYTES or int.from_bytes(item.share, "big") >= FIELD_PRIME:
                raise MessageRejected(RejectReason.WRONG_SHARES, "a share is not a field element")
        data.unmasking_shares[message.sender] = message

    # ------------------------------------------------------------ transitions
    def _close_stage(self, responders: frozenset[int]) -> Outbox:
        data = self._data
        if self._stage is ServerStage.ADVERTISE_KEYS:
            data.advertised = {sender: data.advertised[sender] for sender in sorted(data.advertised)}
            data.session_id = derive_session_id(
                self._digest,
                [(e.sender, e.encryption_public_key, e.masking_public_key) for e in data.advertised.values()],
            )
            data.graph = neighbours(self._config, data.advertised, data.session_id)
            key_list = KeyList(config_digest=self._digest, entries=tuple(data.advertised.values()))
            return self._enter(ServerStage.SHARE_KEYS, responders, dict.fromkeys(responders, key_list))

        session = data.session_id
        assert session is not None
        if self._stage is ServerStage.SHARE_KEYS:
            data.share_keys_survivors = responders
            ordered = tuple(sorted(responders))
            incoming: dict[int, list[EncryptedShares]] = {recipient: [] for recipient in ordered}
            for sender in ordered:
                for item in data.share_keys[sender].encrypted_shares:
                    if item.recipient in incoming:
                        incoming[item.recipient].append(item)
            outbox: Outbox = {
                recipient: MaskedInputRequest(
                    session_id=session, recipient=recipient, survivors=ordered, encrypted_shares=tuple(incoming[recipient])
                )
                for recipient in ordered
            }
            # Only the commitments are needed from here on; the relayed ciphertexts
            # (O(n * k) of them) leave with the outbox.
            data.self_mask_commitments = {sender: data.share_keys[sender].self_mask_commitment for sender in ordered}
            data.share_keys = {}
            return self._enter(ServerStage.MASKED_INPUT_COLLECTION, responders, outbox)

        if self._stage is ServerStage.MASKED_INPUT_COLLECTION:
            pieces = data.graph.components(responders)
            if len(pieces) > 1:
                # Every client would refuse this U3 (see secagg.client.context); asking
                # for shares would only wait for the deadline.
                raise ProtocolAbort(
                    AbortReason.SURVIVOR_GRAPH_DISCONNECTED,
                    f"U3 splits into {len(pieces)} disconnected groups of sizes {sorted(len(piece) for piece in pieces)}",
                )
            data.survivors = responders
            data.dropped = data.share_keys_survivors - responders
            ordered = tuple(sorted(responders))
            if self._config.mode is ProtocolMode.ACTIVE:
                request = ConsistencyCheckRequest(session_id=session, survivors=ordered)
                return self._enter(ServerStage.CONSISTENCY_CHECK, responders, dict.fromkeys(ordered, request))
            return self._request_unmasking(responders, signatures=())

        if self._stage is ServerStage.CONSISTENCY_CHECK:
            signatures = tuple(
                SignedSurvivors(signer=signer, signature=data.consistency_signatures[signer]) for signer in sorted(responders)
            )
            return self._request_unmasking(responders, signatures=signatures)

        return self._unmask()

    def _request_unmasking(self, recipients: frozenset[int], signatures: tuple[SignedSurvivors, ...]) -> Outbox:
        data = self._data
        request = UnmaskingRequest(
            session_id=data.session_id or b"",
            survivors=tuple(sorted(data.survivors)),
            dropped=tuple(sorted(data.dropped)),
            signatures=signatures,
        )
        data.unmasking_expected = recipients
        return self._enter(ServerStage.UNMASKING, recipients, dict.fromkeys(sorted(recipients), request))

    def _unmask(self) -> Outbox:
        data = self._data
        assert data.session_id is not None
        if data.running_sum is None and self._expand_masks:
            if self._sum_masked_inputs:
                data.running_sum = self._config.ring.zeros(self._config.dim)
            else:
                raise ProtocolAbort(AbortReason.MISSING_SHARES, "the masked sum was not provided before unmasking")
        try:
            plan = plan_unmasking(
                self._config,
                data.session_id,
                data.graph,
                data.advertised,
                data.self_mask_commitments,
                data.survivors,
                data.dropped,
                data.unmasking_shares,
            )
        except InconsistentSharesAbort as exc:
            self._inconsistent_shares = exc.inconsistent_shares
            raise
        self._inconsistent_shares = plan.inconsistent_shares
        self._unattributed_secrets = plan.unattributed
        if not self._expand_masks:
            self._plan = plan
            return self._enter(ServerStage.MASK_EXPANSION, frozenset(), {})
        total = data.running_sum
        assert total is not None
        masks = [mask for batch in plan.mask_batches() for mask in batch]
        accumulate_masks(total, masks, threads=self._mask_threads)
        self._config.ring.reduce(total)
        total.setflags(write=False)
        self._result = total
        data.running_sum = None
        self._stage = ServerStage.COMPLETED
        self._expected = frozenset()
        return {}

    def _enter(self, stage: ServerStage, expected: frozenset[int], outbox: Outbox) -> Outbox:
        self._stage = stage
        self._expected = expected
        return outbox

    def _fail(self, reason: AbortReason, detail: str, *, participants: frozenset[int] = frozenset()) -> NoReturn:
        self.abort(reason, detail)
        assert self._abort is not None
        self._abort.participants = participants
        raise self._abort
