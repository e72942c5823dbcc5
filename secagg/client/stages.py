"""The client's protocol stages, named as in DESIGN.md section 2."""

from __future__ import annotations

from enum import Enum


class ClientStage(str, Enum):
    """The round a client is in: it has sent that round's message and awaits the server's answer."""

    NOT_STARTED = "not-started"
    ADVERTISE_KEYS = "R0-advertise-keys"
    SHARE_KEYS = "R1-share-keys"
    MASKED_INPUT_COLLECTION = "R2-masked-input-collection"
    CONSISTENCY_CHECK = "R3-consistency-check"
    COMPLETED = "completed"
    ABORTED = "aborted"
