"""The client's protocol stages: after sending a round's message it awaits the server's answer."""

from __future__ import annotations

from enum import Enum

from secagg.rounds import Round


class ClientStage(str, Enum):
    """The round a client is in: it has sent that round's message and awaits the server's answer."""

    NOT_STARTED = "not-started"
    ADVERTISE_KEYS = Round.ADVERTISE_KEYS.value
    SHARE_KEYS = Round.SHARE_KEYS.value
    MASKED_INPUT_COLLECTION = Round.MASKED_INPUT_COLLECTION.value
    CONSISTENCY_CHECK = Round.CONSISTENCY_CHECK.value
    COMPLETED = "completed"
    ABORTED = "aborted"
