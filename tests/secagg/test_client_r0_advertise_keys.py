"""Client R0 AdvertiseKeys: a malicious server's key list is refused, each condition by name."""

from __future__ import annotations

from dataclasses import replace

from secagg.client import ClientStage
from secagg.errors import AbortReason
from secagg.hazmat.keys import verify_signature
from secagg.messages import AdvertiseKeys, KeyList
from secagg.protocol import advertise_statement
from tests.secagg.harness import advance_to, make_round

VICTIM = 0


def _key_list(participants: int = 7, **kwargs):
    round_ = make_round(participants, **kwargs)
    outbox = advance_to(round_, 1)
    return round_, outbox[VICTIM]


def test_advertised_keys_are_signed_over_the_round_digest():
    round_ = make_round(4)
    message = round_.clients[1].start()
    assert isinstance(message, AdvertiseKeys)
    statement = advertise_statement(round_.config.digest(), 1, message.encryption_public_key, message.masking_public_key)
    assert verify_signature(round_.identities[1].public_bytes, message.signature, statement)
    assert message.encryption_public_key != message.masking_public_key
    assert round_.clients[1].stage is ClientStage.ADVERTISE_KEYS


def test_client_aborts_when_started_twice(expect_abort):
    round_ = make_round(3)
    client = round_.clients[0]
    client.start()
    expect_abort(client, client.start, AbortReason.UNEXPECTED_MESSAGE)


def test_client_accepts_an_honest_key_list():
    round_, key_list = _key_list()
    reply = round_.clients[VICTIM].receive(key_list)
    assert round_.clients[VICTIM].stage is ClientStage.SHARE_KEYS
    assert {item.recipient for item in reply.encrypted_shares} == set(range(1, 7))


def test_client_aborts_when_key_list_is_for_another_round(expect_abort):
    round_, key_list = _key_list()
    forged = replace(key_list, config_digest=bytes(32))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.WRONG_SESSION)


def test_client_aborts_when_key_list_names_a_participant_twice(expect_abort):
    round_, key_list = _key_list()
    forged = replace(key_list, entries=key_list.entries + (key_list.entries[3],))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.DUPLICATE_PARTICIPANT)


def test_client_aborts_when_key_list_names_a_participant_outside_the_cohort(expect_abort):
    round_, key_list = _key_list()
    stranger = replace(key_list.entries[3], sender=99)
    forged = replace(key_list, entries=key_list.entries[:3] + (stranger,) + key_list.entries[4:])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.UNKNOWN_PARTICIPANT)


def test_client_aborts_when_key_list_is_below_threshold(expect_abort):
    round_, key_list = _key_list()
    forged = replace(key_list, entries=key_list.entries[: round_.config.threshold - 1])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.TOO_FEW_PARTICIPANTS)


def test_client_aborts_when_key_list_omits_this_client(expect_abort):
    round_, key_list = _key_list()
    forged = replace(key_list, entries=key_list.entries[1:])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.EXCLUDED)


def test_client_aborts_when_server_substitutes_this_clients_keys(expect_abort):
    round_, key_list = _key_list()
    own = key_list.entries[0]
    substituted = replace(own, masking_public_key=key_list.entries[1].masking_public_key)
    forged = replace(key_list, entries=(substituted,) + key_list.entries[1:])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.OWN_KEYS_ALTERED)


def test_client_aborts_when_a_peer_key_is_not_signed_by_its_identity(expect_abort):
    round_, key_list = _key_list()
    tampered = replace(key_list.entries[2], encryption_public_key=bytes([9]) * 32)
    forged = replace(key_list, entries=key_list.entries[:2] + (tampered,) + key_list.entries[3:])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.INVALID_SIGNATURE)


def test_client_aborts_when_a_peer_signature_is_missing(expect_abort):
    round_, key_list = _key_list()
    unsigned = replace(key_list.entries[4], signature=bytes(64))
    forged = replace(key_list, entries=key_list.entries[:4] + (unsigned,) + key_list.entries[5:])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.INVALID_SIGNATURE)


def test_client_aborts_when_a_peer_reuses_this_clients_public_key(expect_abort):
    """A colluding client signs the victim's masking key as its own: its pairwise mask would cancel."""
    round_, key_list = _key_list()
    victim_entry = key_list.entries[0]
    colluder = 3
    statement = advertise_statement(
        round_.config.digest(), colluder, key_list.entries[colluder].encryption_public_key, victim_entry.masking_public_key
    )
    copied = replace(
        key_list.entries[colluder],
        masking_public_key=victim_entry.masking_public_key,
        signature=round_.identities[colluder].sign(statement),
    )
    forged = replace(key_list, entries=key_list.entries[:colluder] + (copied,) + key_list.entries[colluder + 1 :])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.DUPLICATE_PUBLIC_KEY)


def test_client_aborts_on_a_key_list_before_starting(expect_abort):
    round_ = make_round(4)
    other = make_round(4)
    key_list = advance_to(other, 1)[0]
    assert isinstance(key_list, KeyList)
    expect_abort(round_.clients[0], lambda: round_.clients[0].receive(key_list), AbortReason.UNEXPECTED_MESSAGE)
