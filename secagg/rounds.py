"""The protocol's five rounds: the one definition of their names.

Bonawitz et al. 2017 (Figure 4) number the rounds 0 to 4; SecAgg+ (Bell et al. 2020,
section 3) keeps them. Every other vocabulary in this repository is derived from
:class:`Round`: the server's and the client's stages (:mod:`secagg.server.stages`,
:mod:`secagg.client.stages`), the client message that belongs to each round
(:data:`secagg.messages.ROUND_OF_CLIENT_MESSAGE`), the deadline keys of the HTTP API
(``"R0"`` … ``"R4"``, :attr:`Round.key`), the stages recorded in the server's signed
round records, the transports' round arguments, and the labels of logs, metrics,
benchmarks and reports. A new name therefore appears in one place only.

The values are the stable stage names of the wire and storage formats (HTTP
responses, the server's database, the server ledger): never rename one.
"""

from __future__ import annotations

from enum import Enum


class Round(str, Enum):
    """One protocol round, valued by its stage name (``"R2-masked-input-collection"``)."""

    ADVERTISE_KEYS = "R0-advertise-keys"
    SHARE_KEYS = "R1-share-keys"
    MASKED_INPUT_COLLECTION = "R2-masked-input-collection"
    CONSISTENCY_CHECK = "R3-consistency-check"
    UNMASKING = "R4-unmasking"

    @property
    def key(self) -> str:
        """The short name, ``"R0"`` … ``"R4"`` (deadline keys, CLI choices, labels)."""
        return self.value[:2]

    @property
    def number(self) -> int:
        """The round's number in Bonawitz et al. 2017, 0 … 4."""
        return int(self.value[1])

    @property
    def paper_name(self) -> str:
        """The round's name in CamelCase, as in the paper and the message classes (``"ShareKeys"``)."""
        return "".join(part.capitalize() for part in self.value[3:].split("-"))

    @classmethod
    def from_key(cls, key: str) -> Round:
        """The round whose short name is ``key`` (``"R2"``); :class:`ValueError` otherwise."""
        for item in cls:
            if item.key == key:
                return item
        raise ValueError(f"no protocol round {key!r}; expected one of {', '.join(KEYS)}")


KEYS: tuple[str, ...] = tuple(item.key for item in Round)
"""``("R0", "R1", "R2", "R3", "R4")``."""

STAGE_NAMES: tuple[str, ...] = tuple(item.value for item in Round)
"""The five stage names in protocol order."""
