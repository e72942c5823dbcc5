"""Client round R3 ConsistencyCheck, active mode (Bonawitz et al. 2017, Figure 4, Round 3).

The client signs (session id, U3) after checking that U3 is a subset of U2 of at
least t members that includes itself: a client whose own masked input was not
accepted never takes part in unmasking. It then waits for the unmasking request,
which must repeat the same U3 and carry at least t valid signatures over it from
members of U3. This is what stops a lying server from telling different clients
different survivor sets and so collecting both shares of one client's secrets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from secagg.client.context import ClientContext
from secagg.client.r2_masked_input import AwaitingSurvivors
from secagg.client.stages import ClientStage
from secagg.messages import UnmaskingRequest, UnmaskingShares

if TYPE_CHECKING:
    from secagg.client.r4_unmasking import Completed


@dataclass(frozen=True, slots=True)
class AwaitingUnmaskingRequest:
    """Signed U3; expects the unmasking request with the signatures of U4."""

    stage: ClassVar[ClientStage] = ClientStage.CONSISTENCY_CHECK
    survivors_state: AwaitingSurvivors
    signed_survivors: frozenset[int]

    def on_unmasking_request(self, context: ClientContext, message: UnmaskingRequest) -> tuple[Completed, UnmaskingShares]:
        from secagg.client.r4_unmasking import unmasking_shares

        return unmasking_shares(context, self.survivors_state, message, signed_survivors=self.signed_survivors)
