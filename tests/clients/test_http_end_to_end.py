"""The bank client's HTTP transport against the server's app, whole rounds with crashes and refusals.

The app runs in process (:class:`tests.service.harness.InProcessServer`: its lifespan,
background task and long polls included, fresh SQLite) and each bank's
:class:`~clients.runtime.http_transport.HttpTransport` reaches it through an httpx client
of its own. The crashes here are the client's; the same transport over a real socket
and a server subprocess is exercised by ``test_cli_over_http.py``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from clients.runtime.errors import PolicyViolation, PolicyViolationReason, ResumeRefused
from clients.runtime.http_transport import HttpTransport
from clients.runtime.inputs import RingVectorInput
from clients.runtime.policy import ClientPolicy
from clients.runtime.retry import PollSchedule
from clients.runtime.runner import Outcome, RoundOutcome, run_round
from secagg.encoding import Ring
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom
from secagg.rounds import Round
from tests.service.harness import Api, InProcessServer, Party

N = 5
DIM = 64
POLL = PollSchedule(initial_interval=0.02, max_interval=0.5, timeout=120.0)


class SimulatedCrash(Exception):
    pass


class CrashAfterSubmit:
    """Forwards to the HTTP transport; dies right after the server accepted ``round_``'s message."""

    def __init__(self, inner: HttpTransport, round_: Round) -> None:
        self.inner = inner
        self.round_ = round_
        self.endpoint = inner.endpoint

    def describe_round(self, round_id):
        return self.inner.describe_round(round_id)

    def submit(self, round_id, protocol_round, payload):
        outcome = self.inner.submit(round_id, protocol_round, payload)
        if protocol_round is self.round_:
            raise SimulatedCrash(protocol_round.key)
        return outcome

    def fetch(self, round_id, protocol_round):
        return self.inner.fetch(round_id, protocol_round)

    def fetch_result(self, round_id):
        return self.inner.fetch_result(round_id)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with InProcessServer(directory=tmp_path_factory.mktemp("server"), dev=True) as handle:
        yield handle


class Cohort:
    def __init__(self, server: InProcessServer, tag: str, seed: int) -> None:
        source = DeterministicRandom.from_int(seed)
        self.server = server
        self.names = [f"{tag}-{index}" for index in range(N)]
        self.identities = [SigningKey.generate(source) for _ in range(N)]
        ring = Ring(32)
        self.inputs = []
        for _ in range(N):
            vector = np.empty(DIM, dtype=ring.dtype)
            source.fill(vector)
            self.inputs.append(vector)
        parties = [Party(name, identity) for name, identity in zip(self.names, self.identities, strict=True)]
        admin = Api(server)
        try:
            for party in parties:
                admin.enroll(party)
            self.round_id = admin.create_round(parties, threshold=4, mode="active", graph="full", degree=None, dim=DIM, bits=32)
        finally:
            admin.close()

    def run(self, member: int, state_dir: Path, *, transport=None, client_input=None, policy=None) -> RoundOutcome:
        client = self.server.client()
        http = HttpTransport(self.server.base_url, key_id=self.names[member], identity=self.identities[member], client=client)
        try:
            return run_round(
                transport=transport(http) if transport else http,
                round_id=self.round_id,
                identity=self.identities[member],
                client_input=client_input or RingVectorInput(self.inputs[member]),
                policy=policy or ClientPolicy(),
                state_dir=state_dir / self.names[member],
                participant_id=self.names[member],
                poll=POLL,
            )
        finally:
            http.close()
            client.close()

    def status(self) -> dict:
        admin = Api(self.server)
        try:
            return admin.status(self.round_id)
        finally:
            admin.close()

    def expected_sum(self) -> np.ndarray:
        return np.sum(np.stack(self.inputs), axis=0, dtype=np.uint32)


def _run_others_in_threads(cohort: Cohort, state_dir: Path, skip: int) -> tuple[list[threading.Thread], dict[int, RoundOutcome]]:
    outcomes: dict[int, RoundOutcome] = {}

    def work(member: int) -> None:
        outcomes[member] = cohort.run(member, state_dir)

    threads = [threading.Thread(target=work, args=(member,)) for member in range(N) if member != skip]
    for thread in threads:
        thread.start()
    return threads, outcomes


@pytest.mark.parametrize("crash_after", [Round.SHARE_KEYS, Round.MASKED_INPUT_COLLECTION], ids=["after-R1", "after-R2"])
def test_client_crash_and_resume_over_http_gives_the_exact_sum(server, tmp_path: Path, crash_after: Round) -> None:
    cohort = Cohort(server, f"crash-{crash_after.key.lower()}", seed=crash_after.number)
    threads, outcomes = _run_others_in_threads(cohort, tmp_path, skip=0)
    with pytest.raises(SimulatedCrash):
        cohort.run(0, tmp_path, transport=lambda http: CrashAfterSubmit(http, crash_after))
    resumed = cohort.run(0, tmp_path)
    for thread in threads:
        thread.join(timeout=120)
    assert resumed.resumed and resumed.outcome is Outcome.COMPLETED
    assert resumed.result is not None and resumed.result.survivors == tuple(range(N))
    assert np.array_equal(resumed.result.vector, cohort.expected_sum())
    assert all(np.array_equal(o.result.vector, resumed.result.vector) for o in outcomes.values())
    assert cohort.status()["outcome"] == "completed"


def test_changed_input_after_a_crash_is_refused_over_http(server, tmp_path: Path) -> None:
    cohort = Cohort(server, "changed", seed=10)
    threads, _ = _run_others_in_threads(cohort, tmp_path, skip=1)
    with pytest.raises(SimulatedCrash):
        cohort.run(1, tmp_path, transport=lambda http: CrashAfterSubmit(http, Round.SHARE_KEYS))
    changed = cohort.inputs[1].copy()
    changed[3] += np.uint32(1)
    with pytest.raises(ResumeRefused, match="input changed"):
        cohort.run(1, tmp_path, client_input=RingVectorInput(changed))
    resumed = cohort.run(1, tmp_path)
    for thread in threads:
        thread.join(timeout=120)
    assert np.array_equal(resumed.result.vector, cohort.expected_sum())


def test_policy_refusal_over_http_leaves_the_server_untouched(server, tmp_path: Path) -> None:
    cohort = Cohort(server, "policy", seed=20)
    with pytest.raises(PolicyViolation) as refused:
        cohort.run(2, tmp_path, policy=ClientPolicy(min_cohort_size=N + 1))
    assert refused.value.reason is PolicyViolationReason.COHORT_TOO_SMALL
    status = cohort.status()
    assert status["stage"] == "R0-advertise-keys" and status["responded"] == []
    assert not (tmp_path / cohort.names[2]).exists()
