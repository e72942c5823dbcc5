"""The bank's mod and the coordinator's workflow against hostile or broken peers, by name.

These run Flower's ClientApps and the workflow in one process (:mod:`tests.flower.loopback`):
the refusals are decided by the mod and the core, not by Flower's transport.
"""

from __future__ import annotations

import pytest

from tests.flower.conftest import FLOWER_MISSING

pytest.importorskip("flwr", reason=FLOWER_MISSING)

import dataclasses
import math
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Message
from flwr.app.message_type import MessageType
from flwr.client import ClientApp
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity

from clients.flower import BankSettings, FlowerRefusalReason, Roster, SecAggMod, SecAggWorkflow
from clients.flower.records import RECORD_KEY, refusal_reason
from clients.runtime.policy import ClientPolicy
from dp.accounting.events import SampledGaussian
from dp.audit.privacy_ledger import EntryKind, PrivacyUnit, verify_ledger
from dp.audit.round_records import RoundPrivacy
from dp.budget import BudgetPolicy, UnitBudget
from secagg.errors import AbortReason
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import SystemRandom
from secagg.messages import KeyList, UnmaskingRequest, decode, encode
from secagg.rounds import Round
from tests.flower.apps import MAX_WEIGHT, SHAPES, KnownUpdateClient, participant, update_of
from tests.flower.loopback import LoopbackGrid, node_contexts, run_rounds

CLIENTS = 5
CLIP = 1.5
INITIAL = [np.zeros(shape, dtype=np.float32) for shape in SHAPES]


@dataclasses.dataclass
class Banks:
    """Five banks in one process; ``fits`` counts every call of a bank's own fit."""

    keys: tuple[SigningKey, ...]
    settings: dict[int, BankSettings]
    fits: list[int]

    @property
    def roster(self) -> Roster:
        return Roster({participant(i): key.public_bytes for i, key in enumerate(self.keys)})

    def app(self) -> ClientApp:
        fits = self.fits

        class CountingClient(KnownUpdateClient):
            def fit(self, parameters, config):  # type: ignore[no-untyped-def]
                fits.append(self.partition)
                return super().fit(parameters, config)

        def client_fn(context):  # type: ignore[no-untyped-def]
            return CountingClient(int(context.node_config["partition-id"])).to_client()

        return ClientApp(
            client_fn=client_fn, mods=[SecAggMod(lambda context: self.settings[int(context.node_config["partition-id"])])]
        )


def make_banks(count: int = CLIENTS, **overrides) -> Banks:
    keys = tuple(SigningKey.generate(SystemRandom()) for _ in range(count))
    roster = Roster({participant(i): key.public_bytes for i, key in enumerate(keys)})
    settings = {
        i: BankSettings(
            participant_id=participant(i), identity=keys[i], policy=ClientPolicy(min_cohort_size=3), roster=roster, **overrides
        )
        for i in range(count)
    }
    return Banks(keys, settings, [])


def replace_payload(message: Message, transform) -> Message:  # type: ignore[no-untyped-def]
    record = message.content.config_records[RECORD_KEY]
    message.content.config_records[RECORD_KEY] = ConfigRecord(
        {**dict(record), "payload": encode(transform(decode(record["payload"])))}
    )
    return message


def stage_of(message: Message) -> str | None:
    record = message.content.config_records.get(RECORD_KEY)
    return None if record is None else str(record.get("stage"))


def survivors_sum(partitions: list[int], server_round: int = 1) -> np.ndarray:
    rows = []
    for partition in partitions:
        weight = 10 * (partition + 1) / MAX_WEIGHT if server_round > 1 else 1.0
        flat = np.concatenate([a.astype(np.float64).reshape(-1) for a in update_of(partition, server_round)])
        rows.append(np.append(np.clip(flat, -CLIP, CLIP) * weight, weight * CLIP))
    matrix = np.array(rows)
    return np.array([math.fsum(matrix[:, j]) for j in range(matrix.shape[1])])


def test_a_train_message_without_secure_aggregation_is_refused_and_fit_never_runs() -> None:
    banks = make_banks()
    grid = LoopbackGrid(banks.app(), node_contexts(CLIENTS))
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    plain = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(INITIAL), {"server-round": 1}), True)
    replies = grid.send_and_receive([Message(plain, dst_node_id=100, message_type=MessageType.TRAIN, group_id="1")])
    assert len(replies) == 1 and replies[0].has_error()
    assert refusal_reason(replies[0].error.reason) == FlowerRefusalReason.SECURE_AGGREGATION_REQUIRED.value
    assert banks.fits == []


def test_a_key_list_with_a_forged_signature_is_refused_by_name_and_the_round_completes_without_that_bank() -> None:
    banks = make_banks()

    def forge_for_bank_0(message: Message) -> Message:
        if message.metadata.dst_node_id == 100 and stage_of(message) == Round.SHARE_KEYS.value:

            def forge(key_list: KeyList) -> KeyList:
                entries = list(key_list.entries)
                victim = entries[1]
                entries[1] = dataclasses.replace(victim, signature=bytes([victim.signature[0] ^ 1]) + victim.signature[1:])
                return dataclasses.replace(key_list, entries=tuple(entries))

            return replace_payload(message, forge)
        return message

    workflow = SecAggWorkflow(banks.roster, clip=CLIP, max_weight=MAX_WEIGHT)
    [report] = run_rounds(workflow, LoopbackGrid(banks.app(), node_contexts(CLIENTS), tamper=forge_for_bank_0), INITIAL)
    assert report.refusals == {participant(0): f"R1: {AbortReason.INVALID_SIGNATURE.value}"}
    assert report.outcome == "completed"
    assert report.final_survivors == tuple(participant(i) for i in range(1, CLIENTS))
    assert float(np.abs(report.decoded_sum - survivors_sum(list(range(1, CLIENTS)))).max()) <= report.error_bound


def test_a_coordinator_claiming_a_live_bank_dropped_gets_no_share_from_a_bank_that_signed_otherwise() -> None:
    banks = make_banks()

    def lie_to_bank_1(message: Message) -> Message:
        if message.metadata.dst_node_id == 101 and stage_of(message) == Round.UNMASKING.value:

            def move_bank_2_to_dropped(request: UnmaskingRequest) -> UnmaskingRequest:
                return dataclasses.replace(
                    request,
                    survivors=tuple(i for i in request.survivors if i != 2),
                    dropped=tuple(sorted((*request.dropped, 2))),
                )

            return replace_payload(message, move_bank_2_to_dropped)
        return message

    grid = LoopbackGrid(banks.app(), node_contexts(CLIENTS), tamper=lie_to_bank_1)
    workflow = SecAggWorkflow(banks.roster, clip=CLIP, max_weight=MAX_WEIGHT)
    [report] = run_rounds(workflow, grid, INITIAL)
    assert report.refusals == {participant(1): f"R4: {AbortReason.INCONSISTENT_DROPOUT_LISTS.value}"}
    assert participant(1) not in report.survivors[Round.UNMASKING.key]
    # The honest banks' shares suffice: every input stays in the sum.
    assert report.outcome == "completed"
    assert float(np.abs(report.decoded_sum - survivors_sum(list(range(CLIENTS)))).max()) <= report.error_bound


def test_a_cohort_member_missing_from_the_bank_roster_is_refused_before_training() -> None:
    banks = make_banks()
    stranger = SigningKey.generate(SystemRandom())
    banks.settings[CLIENTS] = BankSettings(participant_id="coordinator-sybil", identity=stranger)
    coordinator_roster = Roster({**banks.roster.participants, "coordinator-sybil": stranger.public_bytes})
    workflow = SecAggWorkflow(coordinator_roster, clip=CLIP, max_weight=MAX_WEIGHT)
    [report] = run_rounds(workflow, LoopbackGrid(banks.app(), node_contexts(CLIENTS + 1)), INITIAL)
    for i in range(CLIENTS):
        assert report.refusals[participant(i)] == f"R0: {FlowerRefusalReason.UNKNOWN_COHORT_MEMBER.value}"
    assert report.outcome == "aborted" and report.abort_reason == AbortReason.TOO_FEW_PARTICIPANTS.value
    assert set(banks.fits) <= {CLIENTS}, "no bank of the roster trained for a cohort it refused"


def test_each_bank_charges_its_signed_ledger_before_training_and_refuses_a_round_over_budget(tmp_path: Path) -> None:
    event = SampledGaussian(noise_multiplier=1.0, sample_rate=0.1, steps=100)
    budget = BudgetPolicy({PrivacyUnit.EXAMPLE: UnitBudget(max_epsilon=10.0, delta=1e-5)})
    banks = make_banks(budget=budget)
    for i, settings in banks.settings.items():
        banks.settings[i] = dataclasses.replace(settings, ledger_path=tmp_path / f"{participant(i)}.jsonl")
    workflow = SecAggWorkflow(banks.roster, clip=CLIP, max_weight=MAX_WEIGHT, privacy=[RoundPrivacy(PrivacyUnit.EXAMPLE, event)])
    first, second = run_rounds(workflow, LoopbackGrid(banks.app(), node_contexts(CLIENTS)), INITIAL, rounds=2)
    assert first.outcome == "completed"
    assert second.outcome == "aborted"
    assert set(second.refusals.values()) == {f"R0: {FlowerRefusalReason.BUDGET_EXCEEDED.value}"}
    assert sorted(banks.fits) == list(range(CLIENTS)), "each bank trained once: the refused round trained nothing"
    for i, key in enumerate(banks.keys):
        verification = verify_ledger(tmp_path / f"{participant(i)}.jsonl", public_key=key.public_bytes)
        assert verification.findings == ()
        kinds = [entry.kind for entry in verification.entries]
        assert kinds == [EntryKind.SPEND, EntryKind.REFUSAL]
        assert [entry.round_id for entry in verification.entries] == [first.round_id, second.round_id]
        assert verification.entries[0].epsilon_cumulative <= 10.0 < verification.entries[1].epsilon_would_reach


def test_a_bank_never_runs_the_same_round_twice() -> None:
    banks = make_banks()
    grid = LoopbackGrid(banks.app(), node_contexts(CLIENTS))
    workflow = SecAggWorkflow(banks.roster, clip=CLIP, max_weight=MAX_WEIGHT)
    [report] = run_rounds(workflow, grid, INITIAL)
    assert report.outcome == "completed"
    setup = next(m for m in grid.delivered if m.metadata.dst_node_id == 102 and stage_of(m) == Round.ADVERTISE_KEYS.value)
    [reply] = grid.send_and_receive([setup])
    assert reply.has_error()
    assert refusal_reason(reply.error.reason) == FlowerRefusalReason.ROUND_ALREADY_RUN.value
    assert banks.fits.count(2) == 1


@pytest.mark.parametrize("weight", [0, int(MAX_WEIGHT) + 1])
def test_a_weight_outside_the_round_range_is_refused_and_nothing_is_sent(weight: int, monkeypatch) -> None:
    import tests.flower.apps as apps

    honest = apps.examples_of
    monkeypatch.setattr(apps, "examples_of", lambda partition, rnd: weight if partition == 4 else honest(partition, rnd))
    banks = make_banks()
    workflow = SecAggWorkflow(banks.roster, clip=CLIP, max_weight=MAX_WEIGHT)
    grid = LoopbackGrid(banks.app(), node_contexts(CLIENTS))
    [report] = run_rounds(workflow, grid, INITIAL)
    assert report.refusals == {participant(4): f"R0: {FlowerRefusalReason.UPDATE_REFUSED.value}"}
    assert report.final_survivors == tuple(participant(i) for i in range(4))
    assert not any(m.metadata.dst_node_id == 104 and stage_of(m) == Round.SHARE_KEYS.value for m in grid.delivered)
