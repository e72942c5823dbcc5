"""Several workers on one PostgreSQL database: no request replays the round because another worker
committed, and one scrape of ``/metrics`` counts every worker.

Every request opens its own connection (``Connection: close``), so the kernel hands each
one to whichever worker accepts first: consecutive messages of a round land on different
workers, and each worker's cached session is routinely behind the database.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from clients.harness.local_server import metric_samples
from tests.service.harness import Api, RoundDriver, make_parties

N = 10
DIM = 300
WORKERS = 2


@pytest.mark.postgres
def test_a_round_on_two_workers_over_postgresql_replays_nothing_and_one_scrape_counts_both(server_factory) -> None:
    server = server_factory("postgres", workers=WORKERS)
    api = Api(server)
    api.http.close()
    api.http = httpx.Client(base_url=server.base_url, timeout=60.0, headers={"Connection": "close"})
    parties = make_parties(N, prefix="wk", seed=870)
    for party in parties:
        api.enroll(party)
    round_id = api.create_round(parties, threshold=7, mode="active", dim=DIM, bits=32)
    driver = RoundDriver(api, parties, round_id, seed=870)
    everyone = range(N)
    driver.send(everyone)
    for stage in ("R1-share-keys", "R2-masked-input-collection", "R3-consistency-check", "R4-unmasking"):
        driver.wait_for_stage(stage)
        driver.fetch(everyone)
        driver.send(everyone)
    driver.wait_for_stage("completed", timeout=120)
    result, survivors = driver.result()
    assert survivors == list(everyone)
    np.testing.assert_array_equal(result, driver.expected_sum(everyone))

    replays = metric_samples(server, "secagg_session_replays_total")
    assert replays.get('{kind="stale"}', 0.0) == 0.0, replays
    assert replays.get('{kind="cold"}', 0.0) <= WORKERS, replays  # each worker's first sight of the round
    assert replays.get('{kind="catch-up"}', 0.0) > 0, "both workers served the round and caught up on each other"
    accepted = metric_samples(server, "secagg_messages_accepted_total")
    assert sum(accepted.values()) == 5 * N, accepted  # every worker's count in one scrape
    api.close()
