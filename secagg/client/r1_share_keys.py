"""Client round R1 ShareKeys (Bonawitz et al. 2017, Figure 4, Round 1).

The client draws its self-mask seed b_u, splits b_u and its masking private key
s_sk into t_s-of-m Shamir shares over its neighbourhood (itself and its neighbours
in U1), and encrypts each neighbour's pair of shares with AES-GCM under a key that
only the two of them can derive (X25519 of their encryption keys, then HKDF bound
to the session and the direction). The associated data binds session, round,
sender and recipient. It keeps its own pair of shares, and sends a commitment to
b_u so that a corrupted reconstruction of b_u is detected in R4.

It then waits for :class:`~secagg.messages.MaskedInputRequest`: U2 and the
ciphertexts addressed to it. U2 must be a subset of U1 of at least t members that
includes this client; the ciphertexts must come from exactly its neighbours in U2,
and each must decrypt. Any failure aborts: a tampered ciphertext raises the single
opaque decryption error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from secagg.client.context import ClientContext, agreement_with, check_id_list, require
from secagg.client.r2_masked_input import AwaitingSurvivors, masked_input
from secagg.client.stages import ClientStage
from secagg.errors import AbortReason, MalformedMessage, ProtocolAbort
from secagg.graph import NeighbourMap
from secagg.hazmat import aead
from secagg.hazmat.randomness import SEED_BYTES
from secagg.hazmat.shamir import ShamirError, ShamirScheme, secret_to_int, share_from_bytes, share_to_bytes
from secagg.messages import AdvertiseKeys, EncryptedShares, MaskedInput, MaskedInputRequest, ShareKeys
from secagg.protocol import (
    ROUND_SHARE_KEYS,
    SharePair,
    pack_share_plaintext,
    self_mask_commitment,
    share_encryption_key,
    unpack_share_plaintext,
)

if TYPE_CHECKING:
    from secagg.client.r0_advertise_keys import RoundKeys

SHAMIR = ShamirScheme()


def share_keys(
    context: ClientContext,
    keys: RoundKeys,
    advertised: Mapping[int, AdvertiseKeys],
    session_id: bytes,
    graph: NeighbourMap,
) -> tuple[AwaitingMaskedInputRequest, ShareKeys]:
    """Share b_u and s_sk with the neighbourhood and encrypt each neighbour's shares."""
    config = context.config
    me = context.participant_id
    neighbourhood = sorted(graph[me] | {me})
    require(
        len(neighbourhood) >= config.share_threshold,
        AbortReason.TOO_FEW_PARTICIPANTS,
        f"neighbourhood of {len(neighbourhood)} is below the share threshold {config.share_threshold}",
    )
    self_mask_seed = context.source.random_bytes(SEED_BYTES)
    key_shares = SHAMIR.split(secret_to_int(keys.masking.private_bytes), config.share_threshold, neighbourhood, context.source)
    seed_shares = SHAMIR.split(secret_to_int(self_mask_seed), config.share_threshold, neighbourhood, context.source)
    pairs = {
        member: SharePair(share_to_bytes(key_shares[member]), share_to_bytes(seed_shares[member])) for member in neighbourhood
    }
    ciphertexts = []
    for recipient in neighbourhood:
        if recipient == me:
            continue
        with agreement_with(recipient):
            key = share_encryption_key(
                session_id, keys.encryption.private_key, advertised[recipient].encryption_public_key, me, recipient
            )
        sealed = aead.seal(
            key,
            pack_share_plaintext(me, recipient, pairs[recipient]),
            aead.associated_data(session_id, ROUND_SHARE_KEYS, me, recipient),
            context.source,
        )
        ciphertexts.append(EncryptedShares(sender=me, recipient=recipient, ciphertext=sealed))
    message = ShareKeys(
        session_id=session_id,
        sender=me,
        self_mask_commitment=self_mask_commitment(session_id, me, self_mask_seed),
        encrypted_shares=tuple(ciphertexts),
    )
    state = AwaitingMaskedInputRequest(
        keys=keys,
        advertised={member: advertised[member] for member in neighbourhood},
        session_id=session_id,
        graph=graph,
        self_mask_seed=self_mask_seed,
        own_shares=pairs[me],
    )
    return state, message


@dataclass(frozen=True, slots=True)
class AwaitingMaskedInputRequest:
    """Sent ShareKeys; expects U2 and the ciphertexts addressed to this client."""

    stage: ClassVar[ClientStage] = ClientStage.SHARE_KEYS
    keys: RoundKeys
    advertised: dict[int, AdvertiseKeys]
    session_id: bytes
    graph: NeighbourMap
    self_mask_seed: bytes
    own_shares: SharePair

    def on_masked_input_request(
        self, context: ClientContext, message: MaskedInputRequest
    ) -> tuple[AwaitingSurvivors, MaskedInput]:
        config = context.config
        me = context.participant_id
        require(message.session_id == self.session_id, AbortReason.WRONG_SESSION, "message is for another session")
        require(message.recipient == me, AbortReason.WRONG_SESSION, "message is addressed to another client")
        survivors = check_id_list(message.survivors, "U2", within=self.graph.members, minimum=config.threshold)
        require(me in survivors, AbortReason.EXCLUDED, "U2 omits this client")
        expected_senders = self.graph[me] & survivors
        require(
            len(expected_senders) + 1 >= config.share_threshold,
            AbortReason.TOO_FEW_PARTICIPANTS,
            "too few neighbours survived R1 to protect this client's secrets",
        )
        senders = [item.sender for item in message.encrypted_shares]
        require(len(set(senders)) == len(senders), AbortReason.DUPLICATE_PARTICIPANT, "two ciphertexts from one sender")
        require(
            set(senders) == expected_senders,
            AbortReason.MISSING_SHARES,
            "ciphertexts do not come from exactly this client's neighbours in U2",
        )
        received: dict[int, SharePair] = {me: self.own_shares}
        for item in message.encrypted_shares:
            received[item.sender] = self._decrypt(item, me)
        state = AwaitingSurvivors(
            keys=self.keys,
            advertised=self.advertised,
            session_id=self.session_id,
            graph=self.graph,
            share_keys_survivors=survivors,
            received_shares=received,
        )
        return state, masked_input(context, state, self.self_mask_seed)

    def _decrypt(self, item: EncryptedShares, me: int) -> SharePair:
        with agreement_with(item.sender):
            key = share_encryption_key(
                self.session_id,
                self.keys.encryption.private_key,
                self.advertised[item.sender].encryption_public_key,
                item.sender,
                me,
            )
        try:
            plaintext = aead.open_sealed(
                key, item.ciphertext, aead.associated_data(self.session_id, ROUND_SHARE_KEYS, item.sender, me)
            )
            sender, recipient, pair = unpack_share_plaintext(plaintext)
            if (sender, recipient) != (item.sender, me):
                raise aead.DecryptionError()
            share_from_bytes(pair.masking_key_share)
            share_from_bytes(pair.self_mask_share)
        except (aead.DecryptionError, MalformedMessage, ShamirError, ValueError):
            raise ProtocolAbort(AbortReason.DECRYPTION_FAILED, "decryption failed") from None
        return pair
