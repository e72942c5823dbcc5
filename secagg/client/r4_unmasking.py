"""Client round R4 Unmasking (Bonawitz et al. 2017, Figure 4, Round 4).

The request names the survivors U3 and the dropped clients U2 minus U3. The
client refuses unless: the lists are disjoint (Flower's SecAgg+ never checked this);
together they are exactly U2; U3 has at least t members and includes this client
(its masked input was accepted); and, in active mode, U3 is the set it signed in R3
and at least t distinct members of U3 signed that same set. Only then does it reveal,
for each owner in its neighbourhood, the share of s_sk if the owner dropped or the
share of b if it survived: never both for one owner, so the server can remove the
masks of the dropped without unmasking any survivor's input.

In a sparse (Harary) graph the client also refuses when fewer than t_s members of
its neighbourhood survived: the pairwise masks with surviving neighbours are what
hide y_u once b_u is revealed (Bell et al. 2020, section 3). Finally it refuses when
U3 induces a neighbour graph of more than one connected component: no pairwise mask
joins two components, so the server could unmask the sum over each one separately.
Every client computes the whole graph from the session id, so even a client whose
own neighbourhood is intact refuses a split U3 (t_s is chosen so that the
neighbourhood checks of the clients bordering a split refuse it too:
:func:`secagg.config.neighbourhood_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from secagg.client.context import ClientContext, check_id_list, require, require_connected_survivors
from secagg.client.r2_masked_input import AwaitingSurvivors
from secagg.client.stages import ClientStage
from secagg.errors import AbortReason
from secagg.hazmat.keys import verify_signature
from secagg.messages import RevealedShare, UnmaskingRequest, UnmaskingShares
from secagg.protocol import survivors_statement


@dataclass(frozen=True, slots=True)
class Completed:
    """Sent the unmasking shares; the client's part of the round is over."""

    stage: ClassVar[ClientStage] = ClientStage.COMPLETED
    survivors: frozenset[int]
    dropped: frozenset[int]


def unmasking_shares(
    context: ClientContext,
    state: AwaitingSurvivors,
    message: UnmaskingRequest,
    *,
    signed_survivors: frozenset[int] | None,
) -> tuple[Completed, UnmaskingShares]:
    """Check the request, then reveal one share per neighbourhood owner."""
    config = context.config
    me = context.participant_id
    require(message.session_id == state.session_id, AbortReason.WRONG_SESSION, "message is for another session")
    survivor_list = message.survivors
    dropped_list = message.dropped
    require(len(set(survivor_list)) == len(survivor_list), AbortReason.DUPLICATE_PARTICIPANT, "U3 lists a participant twice")
    require(
        len(set(dropped_list)) == len(dropped_list), AbortReason.DUPLICATE_PARTICIPANT, "dropped list names a participant twice"
    )
    overlap = set(survivor_list) & set(dropped_list)
    require(not overlap, AbortReason.ALIVE_DEAD_OVERLAP, f"{len(overlap)} participant(s) listed as both alive and dropped")
    survivors = check_id_list(survivor_list, "U3", within=state.share_keys_survivors, minimum=config.threshold)
    dropped = frozenset(dropped_list)
    require(dropped <= state.share_keys_survivors, AbortReason.NOT_A_SUBSET, "dropped list is not a subset of U2")
    require(
        survivors | dropped == state.share_keys_survivors,
        AbortReason.INCONSISTENT_DROPOUT_LISTS,
        "alive and dropped lists do not partition U2",
    )
    require(me in survivors, AbortReason.PREMATURE_UNMASK_REQUEST, "U3 omits this client: its masked input was not accepted")
    if signed_survivors is None:
        require(not message.signatures, AbortReason.UNEXPECTED_MESSAGE, "signatures in an honest-but-curious round")
    else:
        require(
            survivors == signed_survivors,
            AbortReason.INCONSISTENT_DROPOUT_LISTS,
            "U3 differs from the set this client signed in the consistency check",
        )
        signers = [item.signer for item in message.signatures]
        require(len(set(signers)) == len(signers), AbortReason.DUPLICATE_PARTICIPANT, "two signatures from one signer")
        require(set(signers) <= survivors, AbortReason.NOT_A_SUBSET, "a signer is not in U3")
        require(
            len(signers) >= config.threshold,
            AbortReason.INVALID_SIGNATURE,
            f"{len(signers)} consistency signatures, the threshold is {config.threshold}",
        )
        for item in message.signatures:
            require(
                verify_signature(
                    config.identity_keys[item.signer],
                    item.signature,
                    survivors_statement(state.session_id, item.signer, survivors),
                ),
                AbortReason.INVALID_SIGNATURE,
                f"consistency signature of participant {item.signer} is invalid",
            )
    neighbourhood = (state.graph[me] | {me}) & state.share_keys_survivors
    require(
        len(neighbourhood & survivors) >= config.share_threshold,
        AbortReason.TOO_FEW_PARTICIPANTS,
        "too few neighbours survived: unmasking would expose this client's input to the server",
    )
    require_connected_survivors(state.graph, survivors)
    masking_key_shares = tuple(
        RevealedShare(owner=owner, share=state.received_shares[owner].masking_key_share)
        for owner in sorted(neighbourhood & dropped)
    )
    self_mask_shares = tuple(
        RevealedShare(owner=owner, share=state.received_shares[owner].self_mask_share)
        for owner in sorted(neighbourhood & survivors)
    )
    response = UnmaskingShares(
        session_id=state.session_id,
        sender=me,
        masking_key_shares=masking_key_shares,
        self_mask_shares=self_mask_shares,
    )
    return Completed(survivors=survivors, dropped=dropped), response
