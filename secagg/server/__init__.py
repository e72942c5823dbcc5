"""The server side of the protocol: :class:`ServerSession`."""

from secagg.server.session import ServerSession, StageRecord
from secagg.server.stages import ServerStage
from secagg.server.unmasking import InconsistentShare, SecretKind

__all__ = ["InconsistentShare", "SecretKind", "ServerSession", "ServerStage", "StageRecord"]
