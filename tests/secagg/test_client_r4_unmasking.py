"""Client R4 Unmasking: the alive and dropped lists are checked, and a client never
reveals both secrets of one owner."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.config import GraphKind, ProtocolMode
from secagg.errors import AbortReason
from secagg.messages import SignedSurvivors, UnmaskingShares
from secagg.protocol import survivors_statement
from tests.secagg.harness import advance_to, make_round

VICTIM = 0
HBC = ProtocolMode.HONEST_BUT_CURIOUS


def _request(participants: int = 7, drop=None, mode=HBC, **kwargs):
    round_ = make_round(participants, mode=mode, **kwargs)
    outbox = advance_to(round_, 3 if mode is HBC else 4, drop=drop)
    return round_, outbox[VICTIM]


def test_client_aborts_when_a_client_is_listed_alive_and_dropped(expect_abort):
    round_, request = _request(drop={2: {5}})
    forged = replace(request, dropped=request.dropped + (3,))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.ALIVE_DEAD_OVERLAP)


def test_client_aborts_when_a_client_is_listed_alive_and_dropped_in_active_mode(expect_abort):
    round_, request = _request(drop={2: {5}}, mode=ProtocolMode.ACTIVE)
    forged = replace(request, dropped=request.dropped + (2,))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.ALIVE_DEAD_OVERLAP)


def test_client_aborts_when_the_dead_list_would_leave_fewer_than_t(expect_abort):
    round_, request = _request()
    t = round_.config.threshold
    forged = replace(request, survivors=request.survivors[: t - 1], dropped=request.survivors[t - 1 :])
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.TOO_FEW_PARTICIPANTS)


def test_client_aborts_when_the_lists_do_not_cover_u2(expect_abort):
    round_, request = _request(drop={2: {5}})
    forged = replace(request, dropped=())
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.INCONSISTENT_DROPOUT_LISTS)


def test_client_aborts_when_the_dead_list_is_not_a_subset_of_u2(expect_abort):
    round_, request = _request(drop={1: {6}, 2: {5}})
    forged = replace(request, dropped=request.dropped + (6,))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.NOT_A_SUBSET)


def test_client_aborts_when_the_dead_list_names_a_client_twice(expect_abort):
    round_, request = _request(drop={2: {5}})
    forged = replace(request, dropped=(5, 5))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.DUPLICATE_PARTICIPANT)


def test_client_aborts_when_honest_but_curious_request_carries_signatures(expect_abort):
    round_, request = _request()
    signature = round_.identities[1].sign(survivors_statement(request.session_id, 1, request.survivors))
    forged = replace(request, signatures=(SignedSurvivors(1, signature),))
    expect_abort(round_.clients[VICTIM], lambda: round_.clients[VICTIM].receive(forged), AbortReason.UNEXPECTED_MESSAGE)


def test_sparse_graph_client_refuses_when_too_few_neighbours_survive(expect_abort):
    """Revealing b_u with no surviving neighbour would expose x_u; the client refuses."""
    round_ = make_round(12, mode=HBC, graph=GraphKind.HARARY, degree=4, threshold=7)
    outbox = advance_to(round_, 3)
    victim = VICTIM
    request = outbox[victim]
    neighbours = set(round_.clients[victim]._state.graph[victim])
    survivors = tuple(m for m in request.survivors if m not in neighbours)
    forged = replace(request, survivors=survivors, dropped=tuple(sorted(neighbours)))
    expect_abort(round_.clients[victim], lambda: round_.clients[victim].receive(forged), AbortReason.TOO_FEW_PARTICIPANTS)


@settings(max_examples=10, deadline=None)
@given(st.sets(st.integers(min_value=1, max_value=8), max_size=2), st.sampled_from(list(ProtocolMode)))
def test_client_reveals_exactly_one_secret_per_owner(dropped, mode):
    round_ = make_round(9, mode=mode)
    outbox = advance_to(round_, 3 if mode is HBC else 4, drop={2: dropped})
    reply = round_.clients[VICTIM].receive(outbox[VICTIM])
    assert isinstance(reply, UnmaskingShares)
    masking_owners = {item.owner for item in reply.masking_key_shares}
    self_mask_owners = {item.owner for item in reply.self_mask_shares}
    assert masking_owners == set(dropped)
    assert self_mask_owners == set(range(9)) - set(dropped)
    assert masking_owners.isdisjoint(self_mask_owners)
