"""A bank that reveals a wrong share in R4 is named by its id; the honest owner is not, and the round completes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from secagg.hazmat.shamir import SHARE_BYTES
from secagg.messages import RevealedShare, UnmaskingShares, decode, encode
from secagg.rounds import Round
from tests.service.harness import Api, RoundDriver, make_parties

N = 5
THRESHOLD = 4
LIAR = 1
VICTIM = 2


def _wrong(share: bytes) -> bytes:
    return (int.from_bytes(share, "big") + 1).to_bytes(SHARE_BYTES, "big")


def test_a_wrong_share_of_another_banks_seed_names_its_holder_and_the_round_completes(shared_api: Api) -> None:
    parties = make_parties(N, prefix="wrongshare", seed=910)
    for party in parties:
        shared_api.enroll(party)
    round_id = shared_api.create_round(parties, threshold=THRESHOLD, mode="active", dim=64, bits=32, deadlines={})
    driver = RoundDriver(shared_api, parties, round_id, seed=910)
    everyone = range(N)
    driver.send(everyone)
    for stage in (Round.SHARE_KEYS, Round.MASKED_INPUT_COLLECTION, Round.CONSISTENCY_CHECK, Round.UNMASKING):
        driver.expect_stage(stage.value)
        driver.fetch(everyone)
        if stage is Round.UNMASKING:
            honest: UnmaskingShares = decode(driver.pending[LIAR])
            shares = tuple(
                RevealedShare(owner=item.owner, share=_wrong(item.share)) if item.owner == VICTIM else item
                for item in honest.self_mask_shares
            )
            assert any(item.owner == VICTIM for item in honest.self_mask_shares)
            driver.pending[LIAR] = encode(replace(honest, self_mask_shares=shares))
        driver.send(everyone)
    status = driver.wait_for_stage("completed")
    assert status["outcome"] == "completed"
    unmasking = next(entry for entry in status["history"] if entry["stage"] == Round.UNMASKING.value)
    assert unmasking["inconsistent_share_holders"] == [LIAR]
    result, survivors = driver.result()
    np.testing.assert_array_equal(result, driver.expected_sum(survivors))
