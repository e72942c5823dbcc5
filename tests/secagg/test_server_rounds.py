"""Server stages R0-R4 against malicious or confused clients: every bad message is refused
with a named reason and changes nothing; one client cannot disturb the round."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from secagg.config import ProtocolMode
from secagg.errors import AbortReason, MessageRejected, ProtocolAbort, RejectReason, SessionAborted
from secagg.hazmat.keys import AgreementKeyPair
from secagg.hazmat.randomness import DeterministicRandom
from secagg.messages import MaskedInput, RevealedShare, encode
from secagg.protocol import advertise_statement
from secagg.server import InconsistentShare, SecretKind, ServerSession, ServerStage
from tests.secagg.harness import advance_to, collect, deliver, make_round, start


def _snapshot(server: ServerSession):
    return (server.stage, server.responded, server.expected_senders, len(server.history))


def _assert_rejected(server: ServerSession, message, reason: RejectReason):
    before = _snapshot(server)
    with pytest.raises(MessageRejected) as caught:
        server.receive(message)
    assert caught.value.reason is reason, caught.value
    assert _snapshot(server) == before


def _in_stage(stage_number: int, participants: int = 7, mode=ProtocolMode.ACTIVE, drop=None):
    """A round whose server is collecting round ``stage_number``, with every reply pending."""
    round_ = make_round(participants, mode=mode)
    if stage_number == 0:
        start(round_)
        return round_
    outbox = advance_to(round_, stage_number, drop=drop)
    deliver(round_, outbox)
    return round_


# ---------------------------------------------------------------- R0
def test_r0_refuses_keys_signed_by_another_identity():
    round_ = _in_stage(0)
    message = round_.pending[1]
    forged = replace(
        message,
        signature=round_.identities[2].sign(
            advertise_statement(round_.config.digest(), 1, message.encryption_public_key, message.masking_public_key)
        ),
    )
    _assert_rejected(round_.server, forged, RejectReason.INVALID_SIGNATURE)


def test_r0_refuses_keys_for_another_round():
    round_ = _in_stage(0)
    _assert_rejected(round_.server, replace(round_.pending[1], config_digest=bytes(32)), RejectReason.WRONG_SESSION)


def test_r0_refuses_an_unknown_sender():
    round_ = _in_stage(0)
    _assert_rejected(round_.server, replace(round_.pending[1], sender=42), RejectReason.UNKNOWN_SENDER)


def test_r0_refuses_a_duplicate_submission():
    round_ = _in_stage(0)
    round_.server.receive(round_.pending[1])
    _assert_rejected(round_.server, round_.pending[1], RejectReason.DUPLICATE_SUBMISSION)


@pytest.mark.parametrize("low_order_point", [bytes(32), bytes([1]) + bytes(31)], ids=["zero", "one"])
def test_r0_refuses_a_small_order_public_key(low_order_point):
    round_ = _in_stage(0)
    identity = round_.identities[1]
    encryption = AgreementKeyPair.generate(DeterministicRandom.from_int(5)).public_bytes
    statement = advertise_statement(round_.config.digest(), 1, encryption, low_order_point)
    message = replace(
        round_.pending[1],
        encryption_public_key=encryption,
        masking_public_key=low_order_point,
        signature=identity.sign(statement),
    )
    _assert_rejected(round_.server, message, RejectReason.INVALID_PUBLIC_KEY)


def test_r0_refuses_a_public_key_already_advertised_by_another_client():
    round_ = _in_stage(0)
    round_.server.receive(round_.pending[0])
    stolen = round_.pending[0].masking_public_key
    statement = advertise_statement(round_.config.digest(), 1, round_.pending[1].encryption_public_key, stolen)
    copied = replace(round_.pending[1], masking_public_key=stolen, signature=round_.identities[1].sign(statement))
    _assert_rejected(round_.server, copied, RejectReason.DUPLICATE_PUBLIC_KEY)


def test_r0_refuses_a_later_rounds_message():
    round_ = _in_stage(2)
    masked = round_.pending[1]
    fresh = make_round(7)
    start(fresh)
    _assert_rejected(fresh.server, masked, RejectReason.WRONG_STAGE)


# ---------------------------------------------------------------- R1
def test_r1_refuses_a_sender_that_did_not_advertise():
    round_ = _in_stage(1, drop={0: {6}})
    share_keys = round_.clients[6]  # never advertised, so has no reply
    assert 6 not in round_.pending
    forged = replace(round_.pending[5], sender=6)
    _assert_rejected(round_.server, forged, RejectReason.NOT_IN_ROUND)
    assert share_keys.stage.value == "R0-advertise-keys"


def test_r1_refuses_ciphertexts_for_the_wrong_recipients():
    round_ = _in_stage(1)
    message = round_.pending[2]
    _assert_rejected(
        round_.server, replace(message, encrypted_shares=message.encrypted_shares[1:]), RejectReason.WRONG_RECIPIENTS
    )


def test_r1_refuses_a_ciphertext_of_the_wrong_length():
    round_ = _in_stage(1)
    message = round_.pending[2]
    short = replace(message.encrypted_shares[0], ciphertext=message.encrypted_shares[0].ciphertext[:-1])
    _assert_rejected(
        round_.server, replace(message, encrypted_shares=(short,) + message.encrypted_shares[1:]), RejectReason.WRONG_LENGTH
    )


def test_r1_refuses_a_message_for_another_session():
    round_ = _in_stage(1)
    _assert_rejected(round_.server, replace(round_.pending[2], session_id=bytes(32)), RejectReason.WRONG_SESSION)


# ---------------------------------------------------------------- R2
def test_r2_refuses_a_masked_input_of_the_wrong_length():
    round_ = _in_stage(2)
    message = round_.pending[3]
    _assert_rejected(round_.server, replace(message, masked_vector=message.masked_vector[:-1]), RejectReason.WRONG_LENGTH)


def test_r2_refuses_a_masked_input_in_another_ring():
    round_ = _in_stage(2)
    message = round_.pending[3]
    wide = MaskedInput(session_id=message.session_id, sender=3, bits=64, masked_vector=message.masked_vector.astype(np.uint64))
    _assert_rejected(round_.server, wide, RejectReason.WRONG_LENGTH)


def test_r2_refuses_a_replayed_masked_input_and_keeps_the_first():
    round_ = _in_stage(2)
    first = round_.pending.pop(3)
    round_.server.receive_bytes(encode(first))
    replay = replace(first, masked_vector=first.masked_vector + np.uint32(1))
    _assert_rejected(round_.server, replay, RejectReason.DUPLICATE_SUBMISSION)
    outbox = collect(round_)
    deliver(round_, outbox)
    deliver(round_, collect(round_))
    collect(round_)
    np.testing.assert_array_equal(round_.server.result, round_.expected_sum(range(7)))


def test_r2_refuses_malformed_bytes_without_changing_state():
    round_ = _in_stage(2)
    data = encode(round_.pending[3])
    before = _snapshot(round_.server)
    for bad in (data[:-1], data + b"\x00", b"XYZ" + data[3:], data[:4] + b"\x63" + data[5:]):
        with pytest.raises(MessageRejected) as caught:
            round_.server.receive_bytes(bad)
        assert caught.value.reason is RejectReason.MALFORMED
    assert _snapshot(round_.server) == before


# ---------------------------------------------------------------- R3
def test_r3_refuses_a_signature_over_another_survivor_set():
    round_ = _in_stage(3)
    message = round_.pending[1]
    _assert_rejected(round_.server, replace(message, signature=bytes(64)), RejectReason.INVALID_SIGNATURE)


def test_r3_refuses_a_client_outside_u3():
    round_ = _in_stage(3, drop={2: {6}})
    _assert_rejected(round_.server, replace(round_.pending[1], sender=6), RejectReason.NOT_IN_ROUND)


# ---------------------------------------------------------------- R4
def test_r4_refuses_shares_for_both_secrets_of_one_owner():
    round_ = _in_stage(4, drop={2: {6}})
    message = round_.pending[1]
    extra = RevealedShare(owner=2, share=message.self_mask_shares[0].share)
    forged = replace(message, masking_key_shares=message.masking_key_shares + (extra,))
    _assert_rejected(round_.server, forged, RejectReason.WRONG_SHARES)


def test_r4_refuses_a_share_that_is_not_a_field_element():
    round_ = _in_stage(4)
    message = round_.pending[1]
    huge = replace(message.self_mask_shares[0], share=b"\xff" * 33)
    forged = replace(message, self_mask_shares=(huge,) + message.self_mask_shares[1:])
    _assert_rejected(round_.server, forged, RejectReason.WRONG_SHARES)


def test_r4_detects_a_corrupted_self_mask_share_and_names_its_holder_not_its_owner():
    round_ = _in_stage(4)
    message = round_.pending[0]
    item = next(share for share in message.self_mask_shares if share.owner == 1)
    corrupted = replace(item, share=(int.from_bytes(item.share, "big") ^ 1).to_bytes(33, "big"))
    round_.pending[0] = replace(
        message, self_mask_shares=tuple(corrupted if share.owner == 1 else share for share in message.self_mask_shares)
    )
    collect(round_)
    assert round_.server.stage is ServerStage.COMPLETED
    np.testing.assert_array_equal(round_.server.result, round_.expected_sum(range(7)))
    assert round_.server.inconsistent_shares == (InconsistentShare(holder=0, owner=1, secret=SecretKind.SELF_MASK_SEED),)


def test_r4_detects_a_corrupted_masking_key_share_and_names_its_holder_not_its_owner():
    round_ = _in_stage(4, drop={2: {6}})
    message = round_.pending[0]
    first = message.masking_key_shares[0]
    corrupted = replace(first, share=(int.from_bytes(first.share, "big") + 1).to_bytes(33, "big"))
    round_.pending[0] = replace(message, masking_key_shares=(corrupted,))
    collect(round_)
    assert round_.server.stage is ServerStage.COMPLETED
    np.testing.assert_array_equal(round_.server.result, round_.expected_sum(range(6)))
    assert round_.server.inconsistent_shares == (InconsistentShare(holder=0, owner=6, secret=SecretKind.MASKING_KEY),)


def test_r4_aborts_naming_the_holders_when_no_consistent_set_of_shares_exists():
    """Exactly t answer R4 and one share is wrong: no spare share to single it out."""
    round_ = _in_stage(4)
    for member in range(round_.config.threshold, 7):
        del round_.pending[member]
    message = round_.pending[0]
    item = next(share for share in message.self_mask_shares if share.owner == 1)
    corrupted = replace(item, share=(int.from_bytes(item.share, "big") + 1).to_bytes(33, "big"))
    round_.pending[0] = replace(
        message, self_mask_shares=tuple(corrupted if share.owner == 1 else share for share in message.self_mask_shares)
    )
    with pytest.raises(ProtocolAbort) as caught:
        collect(round_)
    assert caught.value.reason is AbortReason.INCONSISTENT_SHARES
    assert caught.value.participants == frozenset({0, 2, 3, 4})
    assert "self-mask seed of participant 1" in caught.value.detail
    assert round_.server.stage is ServerStage.ABORTED
    assert round_.server.abort_participants == frozenset({0, 2, 3, 4})


# ---------------------------------------------------------------- lifecycle
def test_server_aborts_and_refuses_everything_after_too_few_answers():
    round_ = _in_stage(2)
    for member in range(round_.config.threshold - 1):
        round_.server.receive(round_.pending[member])
    with pytest.raises(ProtocolAbort) as caught:
        round_.server.advance()
    assert caught.value.reason is AbortReason.TOO_FEW_PARTICIPANTS
    with pytest.raises(SessionAborted):
        round_.server.receive(round_.pending[6])
    with pytest.raises(SessionAborted):
        round_.server.advance()
    with pytest.raises(SessionAborted):
        _ = round_.server.result


def test_stage_completes_when_every_expected_client_answered():
    round_ = _in_stage(0)
    for member in range(6):
        round_.server.receive(round_.pending[member])
        assert not round_.server.stage_complete
    round_.server.receive(round_.pending[6])
    assert round_.server.stage_complete


def test_server_with_external_sum_gives_the_same_result():
    reference = make_round(6, seed=9)
    start(reference)
    external = make_round(6, seed=9)
    external.server = ServerSession(external.config, sum_masked_inputs=False)
    start(external)
    results = []
    for round_ in (reference, external):
        deliver(round_, collect(round_))
        deliver(round_, collect(round_))
        masked = dict(round_.pending)
        deliver(round_, collect(round_))
        if round_ is external:
            total = round_.config.ring.zeros(round_.config.dim)
            for message in masked.values():
                np.add(total, message.masked_vector, out=total)
            round_.server.provide_masked_sum(total)
        deliver(round_, collect(round_))
        collect(round_)
        results.append(round_.server.result)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], reference.expected_sum(range(6)))


def test_history_records_expected_and_responders_of_every_stage():
    round_ = make_round(7)
    advance_to(round_, 3, drop={1: {6}, 2: {5}})
    stages = [(record.stage, len(record.expected), len(record.responded)) for record in round_.server.history]
    assert stages == [
        (ServerStage.ADVERTISE_KEYS, 7, 7),
        (ServerStage.SHARE_KEYS, 7, 6),
        (ServerStage.MASKED_INPUT_COLLECTION, 6, 5),
    ]
