"""The server's protocol stages, named as in DESIGN.md section 2."""

from __future__ import annotations

from enum import Enum


class ServerStage(str, Enum):
    """The round whose client messages the server is collecting."""

    ADVERTISE_KEYS = "R0-advertise-keys"
    SHARE_KEYS = "R1-share-keys"
    MASKED_INPUT_COLLECTION = "R2-masked-input-collection"
    CONSISTENCY_CHECK = "R3-consistency-check"
    UNMASKING = "R4-unmasking"
    COMPLETED = "completed"
    ABORTED = "aborted"
