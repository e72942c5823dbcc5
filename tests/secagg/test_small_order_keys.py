"""Small-order X25519 public keys, signed by a colluding client (vectors/x25519_small_order.json).

A colluding bank signs a small-order point as one of its R0 keys; a server on its side puts
it in the key list. Agreement with such a point yields zero (RFC 7748, section 6.1), which
``cryptography`` refuses. The client must turn that into a named protocol abort
(``invalid-public-key``) and stay aborted, whichever round first uses the key; the server
must reject the AdvertiseKeys with a RejectReason and change nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from secagg.client import ClientStage
from secagg.config import GraphKind, ProtocolMode
from secagg.config import session_id as derive_session_id
from secagg.errors import AbortReason, MessageRejected, ProtocolAbort, RejectReason, SessionAborted
from secagg.graph import neighbours
from secagg.hazmat.keys import AgreementKeyPair
from secagg.hazmat.randomness import DeterministicRandom
from secagg.messages import KeyList
from secagg.protocol import advertise_statement
from secagg.server import ServerStage
from secagg.server.unmasking import plan_unmasking
from tests.secagg.harness import advance_to, collect, deliver, make_round, start
from tests.secagg.kat import load_vectors, vector_ids

VECTORS = load_vectors("x25519_small_order.json")
SMALL_ORDER = [vector for vector in VECTORS if vector["kind"] == "small_order"]
HIGH_BIT = [vector for vector in VECTORS if vector["kind"] == "masked_high_bit"]
VICTIM, COLLUDER = 0, 3
KEY_FIELDS = ["encryption_public_key", "masking_public_key"]


def _signed_entry(round_, entry, field: str, point: bytes):
    """``entry`` with ``field`` replaced by ``point``, signed by the entry's own identity (a colluder)."""
    keys = {"encryption_public_key": entry.encryption_public_key, "masking_public_key": entry.masking_public_key, field: point}
    statement = advertise_statement(
        round_.config.digest(), entry.sender, keys["encryption_public_key"], keys["masking_public_key"]
    )
    return replace(entry, **{field: point}, signature=round_.identities[entry.sender].sign(statement))


def _key_list_with(round_, key_list: KeyList, field: str, point: bytes) -> KeyList:
    entries = tuple(
        _signed_entry(round_, entry, field, point) if entry.sender == COLLUDER else entry for entry in key_list.entries
    )
    return replace(key_list, entries=entries)


def _assert_aborted_for_good(client, honest_message) -> None:
    assert client.stage is ClientStage.ABORTED
    assert client.abort_reason is AbortReason.INVALID_PUBLIC_KEY
    with pytest.raises(SessionAborted):
        client.receive(honest_message)


@pytest.mark.parametrize("field", KEY_FIELDS)
@pytest.mark.parametrize("vector", SMALL_ORDER, ids=vector_ids(SMALL_ORDER))
def test_client_aborts_on_a_signed_small_order_key_in_the_key_list_and_then_refuses_the_honest_one(
    vector: dict[str, Any], field: str
):
    round_ = make_round(6, seed=40)
    honest = advance_to(round_, 1)[VICTIM]
    forged = _key_list_with(round_, honest, field, bytes.fromhex(vector["u"]))
    client = round_.clients[VICTIM]
    with pytest.raises(ProtocolAbort) as caught:
        client.receive(forged)
    assert caught.value.reason is AbortReason.INVALID_PUBLIC_KEY
    assert f"participant {COLLUDER}" in caught.value.detail
    _assert_aborted_for_good(client, honest)


@pytest.mark.parametrize("field", KEY_FIELDS)
@pytest.mark.parametrize("vector", HIGH_BIT, ids=vector_ids(HIGH_BIT))
def test_a_key_with_bit_255_set_is_an_ordinary_point_and_passes_the_key_list_check(vector: dict[str, Any], field: str):
    """RFC 7748 section 5: bit 255 is masked, so these are ordinary u-coordinates, not small-order ones."""
    round_ = make_round(6, seed=41)
    honest = advance_to(round_, 1)[VICTIM]
    forged = _key_list_with(round_, honest, field, bytes.fromhex(vector["u"]))
    round_.clients[VICTIM].receive(forged)
    assert round_.clients[VICTIM].stage is ClientStage.SHARE_KEYS


def _unchecked_key_list(monkeypatch) -> None:
    """Remove the key-list check, to reach the later rounds where the key is used in an agreement."""
    monkeypatch.setattr("secagg.client.r0_advertise_keys.is_usable_x25519_public_key", lambda key: True)


@pytest.mark.parametrize("vector", SMALL_ORDER[:3], ids=vector_ids(SMALL_ORDER[:3]))
def test_an_encryption_key_used_in_r1_is_a_named_abort_even_past_the_key_list_check(monkeypatch, vector):
    _unchecked_key_list(monkeypatch)
    round_ = make_round(6, seed=42)
    honest = advance_to(round_, 1)[VICTIM]
    forged = _key_list_with(round_, honest, "encryption_public_key", bytes.fromhex(vector["u"]))
    client = round_.clients[VICTIM]
    with pytest.raises(ProtocolAbort) as caught:
        client.receive(forged)
    assert caught.value.reason is AbortReason.INVALID_PUBLIC_KEY
    _assert_aborted_for_good(client, honest)


def _victim_in_r1_with_a_bad_peer_key(field: str, point: bytes, seed: int):
    """A round where every client sent ShareKeys and the victim's record of the colluder's ``field`` is ``point``.

    Stands for a key that got past the key-list check: the checks of the later rounds must hold on their own.
    """
    round_ = make_round(6, seed=seed)
    deliver(round_, advance_to(round_, 1))
    request = collect(round_)[VICTIM]
    client = round_.clients[VICTIM]
    state = client._state
    advertised = dict(state.advertised)
    advertised[COLLUDER] = replace(advertised[COLLUDER], **{field: point})
    client._state = replace(state, advertised=advertised)
    return client, request


@pytest.mark.parametrize("vector", SMALL_ORDER[:3], ids=vector_ids(SMALL_ORDER[:3]))
def test_a_masking_key_used_in_r2_is_a_named_abort_even_past_the_key_list_check(vector):
    client, request = _victim_in_r1_with_a_bad_peer_key("masking_public_key", bytes.fromhex(vector["u"]), 43)
    with pytest.raises(ProtocolAbort) as caught:
        client.receive(request)
    assert caught.value.reason is AbortReason.INVALID_PUBLIC_KEY
    assert f"participant {COLLUDER}" in caught.value.detail
    _assert_aborted_for_good(client, request)


@pytest.mark.parametrize("vector", SMALL_ORDER[:3], ids=vector_ids(SMALL_ORDER[:3]))
def test_a_sender_key_used_to_decrypt_in_r1_is_a_named_abort_not_a_decryption_failure(vector):
    """The victim derives the key of each ciphertext it receives from the sender's encryption key."""
    client, request = _victim_in_r1_with_a_bad_peer_key("encryption_public_key", bytes.fromhex(vector["u"]), 44)
    with pytest.raises(ProtocolAbort) as caught:
        client.receive(request)
    assert caught.value.reason is AbortReason.INVALID_PUBLIC_KEY
    assert f"participant {COLLUDER}" in caught.value.detail
    _assert_aborted_for_good(client, request)


@pytest.mark.parametrize("field", KEY_FIELDS)
@pytest.mark.parametrize("vector", SMALL_ORDER, ids=vector_ids(SMALL_ORDER))
def test_server_rejects_advertised_small_order_keys_without_changing(vector: dict[str, Any], field: str):
    round_ = make_round(6, seed=45)
    start(round_)
    message = round_.pending[COLLUDER]
    other = AgreementKeyPair.generate(DeterministicRandom.from_int(9)).public_bytes
    keys = {"encryption_public_key": other, "masking_public_key": other, field: bytes.fromhex(vector["u"])}
    statement = advertise_statement(round_.config.digest(), COLLUDER, keys["encryption_public_key"], keys["masking_public_key"])
    forged = replace(message, **keys, signature=round_.identities[COLLUDER].sign(statement))
    before = (round_.server.stage, round_.server.responded)
    with pytest.raises(MessageRejected) as caught:
        round_.server.receive(forged)
    assert caught.value.reason is RejectReason.INVALID_PUBLIC_KEY
    assert (round_.server.stage, round_.server.responded) == before
    round_.server.receive(message)
    assert COLLUDER in round_.server.responded


@pytest.mark.parametrize("vector", SMALL_ORDER[:3], ids=vector_ids(SMALL_ORDER[:3]))
def test_server_mask_derivation_turns_a_small_order_survivor_key_into_a_named_abort(vector):
    """R0 refuses such keys; should one reach R4, deriving a dropped client's pairwise masks aborts by name."""
    round_ = make_round(6, seed=47)
    outbox = advance_to(round_, 4, drop={2: {5}})
    deliver(round_, outbox)
    data = round_.server._data
    plan = plan_unmasking(
        round_.config,
        data.session_id,
        data.graph,
        data.advertised,
        data.self_mask_commitments,
        data.survivors,
        data.dropped,
        round_.pending,
    )
    keys = dict(plan.masking_public_keys)
    keys[COLLUDER] = X25519PublicKey.from_public_bytes(bytes.fromhex(vector["u"]))
    with pytest.raises(ProtocolAbort) as caught:
        [mask for batch in replace(plan, masking_public_keys=keys).mask_batches() for mask in batch]
    assert caught.value.reason is AbortReason.INVALID_PUBLIC_KEY


def test_an_honest_round_passes_the_key_checks_and_gives_the_exact_sum():
    round_ = make_round(6, seed=46)
    start(round_)
    while round_.server.stage is not ServerStage.COMPLETED:
        deliver(round_, collect(round_))
    np.testing.assert_array_equal(round_.server.result, round_.expected_sum(range(6)))


def test_in_a_sparse_graph_the_colluders_neighbours_abort_and_the_others_never_use_its_key():
    """A client agrees only with its neighbours, so it checks only their keys (each member's keys are its neighbours' to check).

    The forged key list fixes the session id and with it the graph: the colluder's neighbours
    under that graph refuse the list by name; every other client goes on to R1, having used no
    key of the colluder's.
    """
    round_ = make_round(12, mode=ProtocolMode.HONEST_BUT_CURIOUS, graph=GraphKind.HARARY, degree=4, threshold=7, seed=48)
    honest = advance_to(round_, 1)
    point = bytes.fromhex(SMALL_ORDER[0]["u"])
    forged = _key_list_with(round_, honest[VICTIM], "masking_public_key", point)
    session = derive_session_id(
        round_.config.digest(), [(e.sender, e.encryption_public_key, e.masking_public_key) for e in forged.entries]
    )
    graph = neighbours(round_.config, [entry.sender for entry in forged.entries], session)
    neighbours_of_colluder = graph[COLLUDER]
    others = set(range(12)) - neighbours_of_colluder - {COLLUDER}
    assert neighbours_of_colluder and others
    for member in sorted(neighbours_of_colluder | others):
        client = round_.clients[member]
        if member in neighbours_of_colluder:
            with pytest.raises(ProtocolAbort) as caught:
                client.receive(forged)
            assert caught.value.reason is AbortReason.INVALID_PUBLIC_KEY
            assert f"participant {COLLUDER}" in caught.value.detail
        else:
            client.receive(forged)
            assert client.stage is ClientStage.SHARE_KEYS
            assert COLLUDER not in client._state.advertised


def test_after_r0_a_client_keeps_the_keys_of_its_neighbourhood_only():
    """Every client holds the whole graph but only its k neighbours' keys: O(n) state per client, not O(n * k)."""
    round_ = make_round(12, mode=ProtocolMode.HONEST_BUT_CURIOUS, graph=GraphKind.HARARY, degree=4, threshold=7, seed=49)
    deliver(round_, advance_to(round_, 1))
    for member, client in enumerate(round_.clients):
        state = client._state
        assert set(state.advertised) == state.graph[member] | {member}
        assert len(state.graph) == 12
