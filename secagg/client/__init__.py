"""The client side of the protocol: :class:`ClientSession`, one state class per round."""

from secagg.client.session import ClientSession
from secagg.client.stages import ClientStage

__all__ = ["ClientSession", "ClientStage"]
