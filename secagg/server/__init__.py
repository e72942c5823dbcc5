"""The server side of the protocol: :class:`ServerSession`."""

from secagg.server.session import ServerSession, StageRecord
from secagg.server.stages import ServerStage

__all__ = ["ServerSession", "ServerStage", "StageRecord"]
