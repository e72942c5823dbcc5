"""The server's round engine (:class:`RoundEngine`), split by job; see :mod:`service.rounds.engine`."""

from service.rounds.acceptance import Acceptance
from service.rounds.engine import OutboundMessage, RoundEngine
from service.rounds.parameters import MAX_DIM, ROUND_ID_BYTES, StoredParameters

__all__ = ["MAX_DIM", "ROUND_ID_BYTES", "Acceptance", "OutboundMessage", "RoundEngine", "StoredParameters"]
