"""The bank's side of secure aggregation in a Flower ``ClientApp``: a mod that replaces ``secaggplus_mod``.

::

    from clients.flower import SecAggMod
    app = ClientApp(client_fn=client_fn, mods=[SecAggMod()])

:class:`SecAggMod` sits between Flower and the app's ``fit``. For every ``train``
message it runs this bank's :class:`secagg.client.ClientSession` over Flower's message
channel (the stages and records of :mod:`clients.flower.records`); other messages
(``evaluate``, ``query``) pass through untouched. In order, for one round:

1. ``identify``: the node names its participant id and identity public key (public
   information only, so the coordinator can bind Flower's node ids to the roster).
2. R0: the round's setup arrives with the strategy's ``FitIns``. Before anything is
   trained or sent, the mod refuses, by name, a round that breaks the bank's
   :class:`~clients.runtime.policy.ClientPolicy` (cohort size, threshold rule of the
   required mode, graph, dimension, ring, DP minimums, its own position), a cohort
   member not on the bank's copy of the :class:`~clients.flower.roster.Roster`, and a
   round it has already run. When the round declares DP mechanisms, the bank's signed
   privacy ledger is charged for them (:class:`dp.budget.BudgetGuard`; a refusal is
   recorded and the round refused when a budget would be exceeded). Only then is the
   app's ``fit`` called. Its arrays must have the round's layout; they are clipped,
   weighted and encoded into the ring (:class:`~clients.flower.records.UpdateEncoding`),
   and the session's R0 message (keys signed with the bank's identity key) is the reply.
   The reply carries nothing else: no arrays, no ``num_examples``, no metrics.
3. R1 to R4: each server message is handed to the session, which checks it completely
   (signatures, key lists, survivor sets, the R3 consistency signatures, that it never
   reveals both secrets of one owner) and answers, or refuses with its
   :class:`~secagg.errors.AbortReason`.

Every refusal is an error reply whose reason names it
(:func:`~clients.flower.records.refusal_text`), and the round is closed for this node.

Between messages the round lives in the node's ``Context`` (``context.state``, kept by
the bank's own SuperNode, never sent to the SuperLink): the setup, a 256-bit seed from
the OS CSPRNG, the encoded input, the server messages received and the SHA-256 of every
message sent. A message that reaches a process without the node's live session (Flower
may run each message in another worker or process) rebuilds it over
``DeterministicRandom(seed)`` and replays the recorded server messages, checking that
each regenerated message is the one sent (as :mod:`clients.runtime.runner` does after a
crash): a node never sends two different messages, in particular two different masked
inputs, for one round. When the
round ends the seed, the input and the messages are erased; the round id stays, so the
round is never run twice on this node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import Code, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.compat.common import recorddict_compat as compat

from clients.flower.errors import FlowerRefusal, FlowerRefusalReason
from clients.flower.records import (
    IDENTIFY,
    RECORD_KEY,
    MalformedRecord,
    RoundSetup,
    refusal_text,
)
from clients.flower.roster import Roster
from clients.runtime.errors import ClientError, InputFileError, PolicyViolation
from clients.runtime.inputs import RealVectorInput
from clients.runtime.keyfile import load_identity_key, read_passphrase
from clients.runtime.policy import ClientPolicy
from dp.budget import BudgetExceeded, BudgetGuard, BudgetPolicy
from secagg.client import ClientSession
from secagg.errors import EncodingError, ProtocolAbort, SessionAborted
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import SEED_BYTES, DeterministicRandom, RandomSource, SystemRandom
from secagg.messages import ROUND_OF_CLIENT_MESSAGE, encode, peek_type
from secagg.rounds import Round

MAX_LIVE_SESSIONS = 64
"""Live sessions a process keeps in memory between a node's messages (it replays the round without one)."""
_LIVE_SESSIONS: dict[tuple[int, int, str], tuple[ClientSession, int, bytes]] = {}
STATE_RECORD = "secagg.round"
"""The ConfigRecord in ``context.state`` holding the round in progress."""
FINISHED_RECORD = "secagg.finished"
"""The ConfigRecord in ``context.state`` listing the rounds this node has finished or refused."""

NODE_CONFIG_KEYS = {
    "participant_id": "secagg-participant-id",
    "key": "secagg-key",
    "passphrase_file": "secagg-passphrase-file",
    "policy": "secagg-policy",
    "roster": "secagg-roster",
    "ledger": "secagg-ledger",
    "budget": "secagg-budget",
}
"""The SuperNode ``--node-config`` keys :meth:`BankSettings.from_node_config` reads."""


@dataclass(frozen=True, slots=True)
class BankSettings:
    """Who this node is and what it agrees to: everything the mod needs from the bank.

    ``roster`` pins the consortium's identities (strongly recommended: without it a
    coordinator could fill a cohort with identities of its own). ``ledger_path`` and
    ``budget`` are required for rounds that declare DP mechanisms. ``seed_source``
    draws the round seeds (the OS CSPRNG unless a test injects one).
    """

    participant_id: str
    identity: SigningKey = field(repr=False)
    policy: ClientPolicy = field(default_factory=ClientPolicy)
    roster: Roster | None = None
    ledger_path: Path | None = None
    budget: BudgetPolicy | None = None
    seed_source: RandomSource | None = field(default=None, repr=False)

    @classmethod
    def from_node_config(cls, context: Context) -> BankSettings:
        """Read the settings from the SuperNode's ``--node-config`` (keys in :data:`NODE_CONFIG_KEYS`)."""
        config = context.node_config

        def value(name: str) -> str | None:
            raw = config.get(NODE_CONFIG_KEYS[name])
            return None if raw is None or raw == "" else str(raw)

        participant_id = value("participant_id")
        key_path = value("key")
        if participant_id is None or key_path is None:
            raise FlowerRefusal(
                FlowerRefusalReason.MALFORMED_REQUEST.value,
                f"the node config needs {NODE_CONFIG_KEYS['participant_id']} and {NODE_CONFIG_KEYS['key']}",
            )
        passphrase_file = value("passphrase_file")
        passphrase = read_passphrase(passphrase_file=Path(passphrase_file)) if passphrase_file else None
        policy_path, roster_path, ledger, budget = value("policy"), value("roster"), value("ledger"), value("budget")
        return cls(
            participant_id=participant_id,
            identity=load_identity_key(Path(key_path), passphrase=passphrase),
            policy=ClientPolicy.load(Path(policy_path)) if policy_path else ClientPolicy(),
            roster=Roster.load(Path(roster_path)) if roster_path else None,
            ledger_path=Path(ledger) if ledger else None,
            budget=BudgetPolicy.load(Path(budget)) if budget else None,
        )


@dataclass(slots=True)
class _Progress:
    """The round in progress on this node, as kept in ``context.state``."""

    round_id: str
    setup: str
    position: int
    seed: bytes
    encoded_input: bytes
    received: list[bytes]
    sent_sha256: list[bytes]

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "round": self.round_id,
                "setup": self.setup,
                "position": self.position,
                "seed": self.seed,
                "input": self.encoded_input,
                "received": list(self.received),
                "sent": list(self.sent_sha256),
            }
        )

    @classmethod
    def from_record(cls, record: ConfigRecord) -> _Progress:
        return cls(
            round_id=cast(str, record["round"]),
            setup=cast(str, record["setup"]),
            position=cast(int, record["position"]),
            seed=cast(bytes, record["seed"]),
            encoded_input=cast(bytes, record["input"]),
            received=list(cast(list[bytes], record.get("received", []))),
            sent_sha256=list(cast(list[bytes], record.get("sent", []))),
        )


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _field(record: ConfigRecord, name: str, kind: type) -> object:
    value = record.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise FlowerRefusal(FlowerRefusalReason.MALFORMED_REQUEST.value, f"the secagg record's {name!r} is not a {kind.__name__}")
    return value


def _protocol_reply(round_id: str, payload: bytes) -> RecordDict:
    stage = ROUND_OF_CLIENT_MESSAGE[peek_type(payload)].value
    return RecordDict({RECORD_KEY: ConfigRecord({"stage": stage, "round": round_id, "payload": payload})})


class SecAggMod:
    """A Flower client mod running this project's secure aggregation (see the module docstring).

    ``bank`` maps the node's ``Context`` to its :class:`BankSettings`; the default reads
    the SuperNode's node config. A simulation passes a function of the partition id.
    """

    def __init__(self, bank: Callable[[Context], BankSettings] = BankSettings.from_node_config) -> None:
        self._bank = bank
        # Per process, not per mod: Flower's simulation engine unpickles the ClientApp (and
        # so this mod) for every message, while a worker process lives for the whole run.
        self._sessions = _LIVE_SESSIONS

    def __call__(self, msg: Message, ctxt: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        try:
            record = msg.content.config_records.get(RECORD_KEY)
            if record is None:
                raise FlowerRefusal(
                    FlowerRefusalReason.SECURE_AGGREGATION_REQUIRED.value,
                    "a train message without secure aggregation; this node never sends its update in the clear",
                )
            stage = cast(str, _field(record, "stage", str))
            settings = self._bank(ctxt)
            if stage == IDENTIFY:
                content = ConfigRecord(
                    {"stage": IDENTIFY, "participant": settings.participant_id, "public-key": settings.identity.public_bytes}
                )
                return Message(RecordDict({RECORD_KEY: content}), reply_to=msg)
            round_id = cast(str, _field(record, "round", str))
            if stage == Round.ADVERTISE_KEYS.value:
                return self._start(msg, ctxt, call_next, record, round_id, settings)
            return Message(self._continue(ctxt, record, round_id, stage, settings), reply_to=msg)
        except FlowerRefusal as refusal:
            return self._refuse(msg, ctxt, refusal.reason, refusal.detail)
        except ProtocolAbort as abort:
            return self._refuse(msg, ctxt, abort.reason.value, abort.detail)
        except SessionAborted as aborted:
            return self._refuse(msg, ctxt, aborted.reason.value, "the session had already aborted")
        except PolicyViolation as violation:
            return self._refuse(msg, ctxt, violation.reason.value, str(violation))
        except ClientError as error:
            return self._refuse(msg, ctxt, FlowerRefusalReason.MALFORMED_REQUEST.value, str(error))

    # ------------------------------------------------------------------ R0
    def _start(
        self,
        msg: Message,
        ctxt: Context,
        call_next: Callable[[Message, Context], Message],
        record: ConfigRecord,
        round_id: str,
        settings: BankSettings,
    ) -> Message:
        stored = ctxt.state.config_records.get(STATE_RECORD)
        if round_id in _finished_rounds(ctxt) or (stored is not None and stored["round"] == round_id):
            raise FlowerRefusal(FlowerRefusalReason.ROUND_ALREADY_RUN.value, f"round {round_id} was already started on this node")
        if stored is not None:
            # The coordinator abandoned that round (it never asked for R4): close it for good.
            _finish(ctxt, cast(str, stored["round"]))
        setup_json = cast(str, _field(record, "setup", str))
        try:
            setup = RoundSetup.from_json(setup_json)
        except MalformedRecord as exc:
            raise FlowerRefusal(FlowerRefusalReason.MALFORMED_REQUEST.value, str(exc)) from None
        description = setup.description
        if description.round_id != round_id:
            raise FlowerRefusal(FlowerRefusalReason.MALFORMED_REQUEST.value, "the setup is for another round")
        position = settings.policy.check(
            description, identity_public_key=settings.identity.public_bytes, participant_id=settings.participant_id
        )
        if settings.roster is not None:
            members = description.member_ids or ()
            for member, key in zip(members, description.config.identity_keys, strict=True):
                if not settings.roster.admits(member, key):
                    raise FlowerRefusal(
                        FlowerRefusalReason.UNKNOWN_COHORT_MEMBER.value,
                        f"cohort member {member!r} is not on this bank's roster with that identity key",
                    )
        self._charge_ledger(round_id, description.dp_policy, settings)

        out = call_next(msg, ctxt)
        if out.has_error():
            return out
        fit_result = compat.recorddict_to_fitres(out.content, keep_input=False)
        if fit_result.status.code != Code.OK:
            raise FlowerRefusal(FlowerRefusalReason.TRAINING_FAILED.value, f"fit returned {fit_result.status.message!r}")
        arrays = parameters_to_ndarrays(fit_result.parameters)
        if not setup.layout.matches(arrays):
            raise FlowerRefusal(
                FlowerRefusalReason.LAYOUT_MISMATCH.value,
                f"fit returned shapes {[tuple(a.shape) for a in arrays]}, the round's model has {list(setup.layout.shapes)}",
            )
        try:
            vector, _ = setup.encoding.client_vector(setup.layout.flatten(arrays), fit_result.num_examples)
            client_input = RealVectorInput(vector, clip=setup.encoding.clip, scale=setup.encoding.scale)
            seeds = settings.seed_source if settings.seed_source is not None else SystemRandom()
            seed, encoding_seed = seeds.random_bytes(SEED_BYTES), seeds.random_bytes(SEED_BYTES)
            encoded = client_input.encode(description.config, DeterministicRandom(encoding_seed))
        except (EncodingError, InputFileError) as exc:
            raise FlowerRefusal(FlowerRefusalReason.UPDATE_REFUSED.value, str(exc)) from None
        session = ClientSession(description.config, position, settings.identity, encoded, source=DeterministicRandom(seed))
        first = encode(session.start())
        progress = _Progress(
            round_id=round_id,
            setup=setup_json,
            position=position,
            seed=seed,
            encoded_input=encoded.tobytes(),
            received=[],
            sent_sha256=[_sha256(first)],
        )
        ctxt.state.config_records[STATE_RECORD] = progress.to_record()
        return Message(_protocol_reply(round_id, first), reply_to=msg)

    @staticmethod
    def _charge_ledger(round_id: str, dp_policy: Mapping[str, object] | None, settings: BankSettings) -> None:
        """Charge the bank's ledger for every mechanism the round declares, before training."""
        privacy = (dp_policy or {}).get("privacy") or []
        if not privacy:
            return
        from dp.audit.privacy_ledger import PrivacyLedger
        from dp.audit.round_records import RoundPrivacy

        if settings.ledger_path is None or settings.budget is None:
            raise FlowerRefusal(
                FlowerRefusalReason.LEDGER_REQUIRED.value,
                "the round declares DP mechanisms; this bank needs a ledger and a budget policy to record them",
            )
        declared = [RoundPrivacy.from_dict(item) for item in cast(list[dict[str, object]], privacy)]
        with PrivacyLedger.open(settings.ledger_path, party_id=settings.participant_id, signing_key=settings.identity) as ledger:
            try:
                BudgetGuard(settings.budget, ledger).charge_round(
                    round_id=round_id, contributions={item.unit: item.event for item in declared}
                )
            except BudgetExceeded as exc:
                raise FlowerRefusal(FlowerRefusalReason.BUDGET_EXCEEDED.value, str(exc)) from None

    # ------------------------------------------------------------ R1 .. R4
    def _continue(self, ctxt: Context, record: ConfigRecord, round_id: str, stage: str, settings: BankSettings) -> RecordDict:
        stored = ctxt.state.config_records.get(STATE_RECORD)
        if stored is None:
            raise FlowerRefusal(FlowerRefusalReason.NO_ROUND_IN_PROGRESS.value, f"no round in progress for {stage}")
        progress = _Progress.from_record(stored)
        if progress.round_id != round_id:
            raise FlowerRefusal(
                FlowerRefusalReason.NO_ROUND_IN_PROGRESS.value, f"round {round_id} is not the round in progress on this node"
            )
        payload = cast(bytes, _field(record, "payload", bytes))
        key = (ctxt.run_id, ctxt.node_id, round_id)
        cached = self._sessions.pop(key, None)
        if cached is not None and cached[1] == len(progress.received) and cached[2] == progress.sent_sha256[-1]:
            session = cached[0]
        else:
            session = self._replay(progress, settings)
        reply = encode(session.receive_bytes(payload))
        reply_round = ROUND_OF_CLIENT_MESSAGE[peek_type(reply)]
        if reply_round.value != stage:
            raise FlowerRefusal(
                FlowerRefusalReason.MALFORMED_REQUEST.value, f"the request was labelled {stage}, it asks for {reply_round.value}"
            )
        if reply_round is Round.UNMASKING:
            _finish(ctxt, round_id)
        else:
            progress.received.append(payload)
            progress.sent_sha256.append(_sha256(reply))
            ctxt.state.config_records[STATE_RECORD] = progress.to_record()
            self._keep(key, session, len(progress.received), progress.sent_sha256[-1])
        return _protocol_reply(round_id, reply)

    @staticmethod
    def _replay(progress: _Progress, settings: BankSettings) -> ClientSession:
        """Rebuild the session from the recorded round, checking every regenerated message against its hash."""
        setup = RoundSetup.from_json(progress.setup)
        config = setup.description.config
        encoded = np.frombuffer(progress.encoded_input, dtype=config.ring.dtype).copy()
        session = ClientSession(config, progress.position, settings.identity, encoded, source=DeterministicRandom(progress.seed))
        outgoing = encode(session.start())
        for index, received in enumerate(progress.received):
            if _sha256(outgoing) != progress.sent_sha256[index]:
                raise FlowerRefusal(FlowerRefusalReason.RESUME_REFUSED.value, "a regenerated message differs from the one sent")
            outgoing = encode(session.receive_bytes(received))
        if _sha256(outgoing) != progress.sent_sha256[-1]:
            raise FlowerRefusal(
                FlowerRefusalReason.RESUME_REFUSED.value, "the regenerated last message differs from the one sent"
            )
        return session

    def _keep(self, key: tuple[int, int, str], session: ClientSession, received: int, last_sent: bytes) -> None:
        """Keep the live session for this node's next message, a few rounds at most."""
        while len(self._sessions) >= MAX_LIVE_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        self._sessions[key] = (session, received, last_sent)

    # -------------------------------------------------------------- refusal
    def _refuse(self, msg: Message, ctxt: Context, reason: str, detail: str) -> Message:
        stored = ctxt.state.config_records.get(STATE_RECORD)
        if stored is not None:
            self._sessions.pop((ctxt.run_id, ctxt.node_id, cast(str, stored["round"])), None)
            _finish(ctxt, cast(str, stored["round"]))
        return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=refusal_text(reason, detail)), reply_to=msg)


def _finished_rounds(ctxt: Context) -> list[str]:
    record = ctxt.state.config_records.get(FINISHED_RECORD)
    return list(cast(list[str], record["rounds"])) if record is not None else []


def _finish(ctxt: Context, round_id: str) -> None:
    """Erase the round's secrets and messages; remember only that it was run."""
    rounds = _finished_rounds(ctxt)
    if round_id not in rounds:
        rounds.append(round_id)
    ctxt.state.config_records[FINISHED_RECORD] = ConfigRecord({"rounds": rounds})
    if STATE_RECORD in ctxt.state.config_records:
        del ctxt.state.config_records[STATE_RECORD]
