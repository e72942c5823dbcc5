"""The server's protocol stages: the five rounds of :mod:`secagg.rounds`, the mask expansion, two terminal states."""

from __future__ import annotations

from enum import Enum

from secagg.rounds import Round


class ServerStage(str, Enum):
    """The round whose client messages the server is collecting, or how the round ended."""

    ADVERTISE_KEYS = Round.ADVERTISE_KEYS.value
    SHARE_KEYS = Round.SHARE_KEYS.value
    MASKED_INPUT_COLLECTION = Round.MASKED_INPUT_COLLECTION.value
    CONSISTENCY_CHECK = Round.CONSISTENCY_CHECK.value
    UNMASKING = Round.UNMASKING.value
    MASK_EXPANSION = "mask-expansion"
    """R4 has closed and every secret is reconstructed and verified; the masks are being
    expanded and removed chunk by chunk outside the session (fcp's PRNG-running state).
    Only sessions built with ``expand_masks=False`` enter it; no client message belongs to it."""
    COMPLETED = "completed"
    ABORTED = "aborted"

    @property
    def round(self) -> Round | None:
        """The protocol round this stage collects, or None (mask expansion, or the round has ended)."""
        return Round(self.value) if self.value in _ROUND_VALUES else None


_ROUND_VALUES = frozenset(item.value for item in Round)
