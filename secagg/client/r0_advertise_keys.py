"""Client round R0 AdvertiseKeys (Bonawitz et al. 2017, Figure 4, Round 0).

The client generates two X25519 key pairs: (c_pk, c_sk) to encrypt shares and
(s_pk, s_sk) to agree pairwise masks, and signs both public keys with its identity
key. It then waits for the server's :class:`~secagg.messages.KeyList` of U1 and
checks it before deriving anything from it: the right round, no unknown or repeated
participant, its own keys unchanged, at least t entries, every signature valid, no
malformed or small-order public key among its neighbours' (RFC 7748, section 6.1: a
colluding client can sign one, and agreement with it yields zero; a client agrees only
with its neighbours, and each member's keys are checked by that member's neighbours),
and no public key used twice (a server
reflecting a client's own key back would make a pairwise mask cancel against itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from secagg.client.context import ClientContext, require
from secagg.client.r1_share_keys import AwaitingMaskedInputRequest, share_keys
from secagg.client.stages import ClientStage
from secagg.config import session_id as derive_session_id
from secagg.errors import AbortReason
from secagg.graph import neighbours
from secagg.hazmat.keys import AgreementKeyPair, verify_signature
from secagg.messages import AdvertiseKeys, KeyList, ShareKeys
from secagg.protocol import advertise_statement, is_usable_x25519_public_key


@dataclass(frozen=True, slots=True)
class RoundKeys:
    """The client's two key pairs for this round."""

    encryption: AgreementKeyPair
    masking: AgreementKeyPair


def advertise_keys(context: ClientContext) -> tuple[AwaitingKeyList, AdvertiseKeys]:
    """Generate and sign the round keys; the first message of the round."""
    keys = RoundKeys(
        encryption=AgreementKeyPair.generate(context.source),
        masking=AgreementKeyPair.generate(context.source),
    )
    digest = context.config.digest()
    statement = advertise_statement(digest, context.participant_id, keys.encryption.public_bytes, keys.masking.public_bytes)
    message = AdvertiseKeys(
        config_digest=digest,
        sender=context.participant_id,
        encryption_public_key=keys.encryption.public_bytes,
        masking_public_key=keys.masking.public_bytes,
        signature=context.identity_key.sign(statement),
    )
    return AwaitingKeyList(keys=keys, advertised=message), message


@dataclass(frozen=True, slots=True)
class AwaitingKeyList:
    """Sent AdvertiseKeys; expects the server's KeyList of U1."""

    stage: ClassVar[ClientStage] = ClientStage.ADVERTISE_KEYS
    keys: RoundKeys
    advertised: AdvertiseKeys

    def on_key_list(self, context: ClientContext, message: KeyList) -> tuple[AwaitingMaskedInputRequest, ShareKeys]:
        config = context.config
        digest = config.digest()
        require(message.config_digest == digest, AbortReason.WRONG_SESSION, "key list is for another round")
        senders = [entry.sender for entry in message.entries]
        require(len(set(senders)) == len(senders), AbortReason.DUPLICATE_PARTICIPANT, "key list names a participant twice")
        require(
            all(sender in config.participant_ids for sender in senders),
            AbortReason.UNKNOWN_PARTICIPANT,
            "key list names a participant outside the cohort",
        )
        require(
            len(senders) >= config.threshold,
            AbortReason.TOO_FEW_PARTICIPANTS,
            f"key list has {len(senders)} participants, the threshold is {config.threshold}",
        )
        own = [entry for entry in message.entries if entry.sender == context.participant_id]
        require(len(own) == 1, AbortReason.EXCLUDED, "key list omits this client")
        require(own[0] == self.advertised, AbortReason.OWN_KEYS_ALTERED, "key list altered this client's keys")
        for entry in message.entries:
            require(entry.config_digest == digest, AbortReason.WRONG_SESSION, f"entry of {entry.sender} is for another round")
            statement = advertise_statement(digest, entry.sender, entry.encryption_public_key, entry.masking_public_key)
            require(
                verify_signature(config.identity_keys[entry.sender], entry.signature, statement),
                AbortReason.INVALID_SIGNATURE,
                f"keys of participant {entry.sender} are not signed by its identity key",
            )
        public_keys = [key for entry in message.entries for key in (entry.encryption_public_key, entry.masking_public_key)]
        require(len(set(public_keys)) == len(public_keys), AbortReason.DUPLICATE_PUBLIC_KEY, "a public key appears twice")

        advertised = {entry.sender: entry for entry in message.entries}
        session = derive_session_id(digest, [(e.sender, e.encryption_public_key, e.masking_public_key) for e in message.entries])
        graph = neighbours(config, advertised, session)
        # Only a neighbour's keys enter this client's agreements; every member's keys are
        # checked by that member's own neighbours, and the server refuses them on arrival.
        for peer in sorted(graph[context.participant_id]):
            entry = advertised[peer]
            require(
                is_usable_x25519_public_key(entry.encryption_public_key)
                and is_usable_x25519_public_key(entry.masking_public_key),
                AbortReason.INVALID_PUBLIC_KEY,
                f"a public key of participant {entry.sender} is malformed or of small order",
            )
        return share_keys(context, self.keys, advertised, session, graph)
