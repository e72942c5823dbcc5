"""Client round R2 MaskedInputCollection (Bonawitz et al. 2017, Figure 4, Round 2).

The client sends y_u = x_u + PRG(b_u) + sum over neighbours v in U2 of
sign(u, v) * PRG(s_uv), in Z_2^b, where sign is +1 if u < v and -1 otherwise, so
every pairwise mask cancels in the sum of two surviving neighbours. The masks are
expanded block by block straight into the output buffer (see
:func:`secagg.hazmat.prg.accumulate_masks`). The self-mask seed b_u is then
forgotten; only its shares remain.

It then waits for the survivors U3: in active mode a
:class:`~secagg.messages.ConsistencyCheckRequest` (R3 follows; the client signs U3
only if it induces a connected neighbour graph, see
:func:`~secagg.client.context.require_connected_survivors`); in honest-but-curious
mode the :class:`~secagg.messages.UnmaskingRequest` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from secagg.client.context import ClientContext, agreement_with, check_id_list, require, require_connected_survivors
from secagg.client.stages import ClientStage
from secagg.config import ProtocolMode
from secagg.errors import AbortReason
from secagg.graph import NeighbourMap
from secagg.hazmat.prg import SignedSeed, accumulate_masks
from secagg.messages import (
    AdvertiseKeys,
    ConsistencyCheck,
    ConsistencyCheckRequest,
    MaskedInput,
    UnmaskingRequest,
    UnmaskingShares,
)
from secagg.protocol import SharePair, pairwise_mask_sign, pairwise_prg_seed, self_mask_prg_seed, survivors_statement

if TYPE_CHECKING:
    from secagg.client.r0_advertise_keys import RoundKeys
    from secagg.client.r3_consistency_check import AwaitingUnmaskingRequest
    from secagg.client.r4_unmasking import Completed


def masked_input(context: ClientContext, state: AwaitingSurvivors, self_mask_seed: bytes) -> MaskedInput:
    """y_u for this client's input, masked with its self-mask and its pairwise masks in U2."""
    me = context.participant_id
    masks = [SignedSeed(self_mask_prg_seed(state.session_id, me, self_mask_seed), 1)]
    for peer in sorted(state.graph[me] & state.share_keys_survivors):
        with agreement_with(peer):
            seed = pairwise_prg_seed(
                state.session_id, state.keys.masking.private_key, state.advertised[peer].masking_public_key, me, peer
            )
        masks.append(SignedSeed(seed, pairwise_mask_sign(me, peer)))
    ring = context.config.ring
    masked = context.input_vector.copy()
    accumulate_masks(masked, masks)
    ring.reduce(masked)
    return MaskedInput(session_id=state.session_id, sender=me, bits=ring.bits, masked_vector=masked)


@dataclass(frozen=True, slots=True)
class AwaitingSurvivors:
    """Sent MaskedInput; expects U3 (a consistency check in active mode, else the unmasking request)."""

    stage: ClassVar[ClientStage] = ClientStage.MASKED_INPUT_COLLECTION
    keys: RoundKeys
    advertised: dict[int, AdvertiseKeys]
    session_id: bytes
    graph: NeighbourMap
    share_keys_survivors: frozenset[int]
    received_shares: dict[int, SharePair]

    def on_consistency_check_request(
        self, context: ClientContext, message: ConsistencyCheckRequest
    ) -> tuple[AwaitingUnmaskingRequest, ConsistencyCheck]:
        from secagg.client.r3_consistency_check import AwaitingUnmaskingRequest

        require(
            context.config.mode is ProtocolMode.ACTIVE,
            AbortReason.UNEXPECTED_MESSAGE,
            "consistency check requested in honest-but-curious mode",
        )
        require(message.session_id == self.session_id, AbortReason.WRONG_SESSION, "message is for another session")
        survivors = check_id_list(message.survivors, "U3", within=self.share_keys_survivors, minimum=context.config.threshold)
        me = context.participant_id
        require(me in survivors, AbortReason.PREMATURE_UNMASK_REQUEST, "U3 omits this client: its masked input was not accepted")
        require_connected_survivors(self.graph, survivors)
        signature = context.identity_key.sign(survivors_statement(self.session_id, me, survivors))
        state = AwaitingUnmaskingRequest(survivors_state=self, signed_survivors=survivors)
        return state, ConsistencyCheck(session_id=self.session_id, sender=me, signature=signature)

    def on_unmasking_request(self, context: ClientContext, message: UnmaskingRequest) -> tuple[Completed, UnmaskingShares]:
        from secagg.client.r4_unmasking import unmasking_shares

        require(
            context.config.mode is ProtocolMode.HONEST_BUT_CURIOUS,
            AbortReason.UNEXPECTED_MESSAGE,
            "unmasking requested without the consistency check that active mode requires",
        )
        return unmasking_shares(context, self, message, signed_survivors=None)
