"""The local policy refuses a round before anything is sent; the policy file is strict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.runtime.errors import PolicyFileError, PolicyViolation, PolicyViolationReason
from clients.runtime.policy import ClientPolicy, DPRequirements
from secagg.config import GraphKind, ProtocolMode
from tests.clients.conftest import run_against
from tests.clients.fake_server import FakeRoundServer

SKELLAM_PARTICIPANT_LEVEL = {
    "privacy": [
        {
            "unit": "participant",
            "mechanism": "skellam",
            "parameters": {
                "mechanism": "skellam",
                "l1_sensitivity": 400.0,
                "l2_sensitivity": 20.0,
                "variance": 400.0,
                "steps": 1,
            },
        }
    ]
}
"""sqrt(variance) / l2 = 20 / 20: a noise multiplier of exactly 1."""


@pytest.mark.parametrize(
    ("server_kwargs", "policy", "reason"),
    [
        ({"n": 5}, ClientPolicy(min_cohort_size=6), PolicyViolationReason.COHORT_TOO_SMALL),
        ({"n": 6, "threshold": 5}, ClientPolicy(min_threshold_fraction=0.9), PolicyViolationReason.THRESHOLD_TOO_LOW),
        ({"mode": ProtocolMode.HONEST_BUT_CURIOUS}, ClientPolicy(), PolicyViolationReason.MODE_NOT_ALLOWED),
        (
            {"n": 8, "graph": GraphKind.HARARY, "degree": 6},
            ClientPolicy(allowed_graphs=frozenset({GraphKind.FULL})),
            PolicyViolationReason.GRAPH_NOT_ALLOWED,
        ),
        ({"dim": 32}, ClientPolicy(max_dim=31), PolicyViolationReason.DIM_TOO_LARGE),
        ({"bits": 16}, ClientPolicy(allowed_bits=frozenset({32, 64})), PolicyViolationReason.BITS_NOT_ALLOWED),
        ({}, ClientPolicy(server_identity="the-real-aggregator"), PolicyViolationReason.SERVER_IDENTITY_MISMATCH),
        ({}, ClientPolicy(dp=DPRequirements(required=True)), PolicyViolationReason.DP_POLICY_REQUIRED),
        (
            {"dp_policy": SKELLAM_PARTICIPANT_LEVEL},
            ClientPolicy(dp=DPRequirements(min_noise_multiplier=1.5)),
            PolicyViolationReason.DP_NOISE_TOO_LOW,
        ),
        (
            {"dp_policy": SKELLAM_PARTICIPANT_LEVEL},
            ClientPolicy(dp=DPRequirements(max_epsilon_per_round=0.5)),
            PolicyViolationReason.DP_EPSILON_TOO_HIGH,
        ),
        (
            {"dp_policy": {"privacy": [{"unit": "participant", "mechanism": "skellam", "parameters": {}}]}},
            ClientPolicy(),
            PolicyViolationReason.DP_POLICY_MALFORMED,
        ),
    ],
)
def test_policy_violation_refuses_before_anything_is_sent(server_kwargs, policy, reason, state_dir: Path) -> None:
    server = FakeRoundServer(**server_kwargs)
    with pytest.raises(PolicyViolation) as refused:
        run_against(server, state_dir, policy=policy)
    assert refused.value.reason is reason
    assert server.calls == ["describe"]
    assert not state_dir.exists()


def test_identity_key_not_in_cohort_is_refused_before_sending(state_dir: Path) -> None:
    server = FakeRoundServer()
    stranger = FakeRoundServer(seed=99).identity
    from clients.runtime.inputs import RingVectorInput
    from clients.runtime.runner import run_round

    with pytest.raises(PolicyViolation) as refused:
        run_round(
            transport=server,
            round_id=server.round_id,
            identity=stranger,
            client_input=RingVectorInput(server.inputs[0]),
            policy=ClientPolicy(),
            state_dir=state_dir,
            sleep=lambda s: None,
        )
    assert refused.value.reason is PolicyViolationReason.NOT_IN_COHORT
    assert server.calls == ["describe"]


def test_claimed_participant_id_at_another_position_is_refused(state_dir: Path) -> None:
    server = FakeRoundServer(member=2)
    with pytest.raises(PolicyViolation) as refused:
        run_against(server, state_dir, participant_id="bank-3")
    assert refused.value.reason is PolicyViolationReason.WRONG_POSITION
    assert server.calls == ["describe"]


def test_round_meeting_dp_minimums_runs_to_the_exact_sum(state_dir: Path) -> None:
    server = FakeRoundServer(dp_policy=SKELLAM_PARTICIPANT_LEVEL)
    policy = ClientPolicy(dp=DPRequirements(required=True, min_noise_multiplier=1.0, max_epsilon_per_round=50.0))
    outcome = run_against(server, state_dir, policy=policy, participant_id="bank-2")
    assert outcome.result is not None
    assert (outcome.result.vector == server.expected_sum()).all()


def test_policy_loads_from_toml_and_json_alike(tmp_path: Path) -> None:
    toml_path = tmp_path / "policy.toml"
    toml_path.write_text(
        'min_cohort_size = 7\nmin_threshold_fraction = 0.75\nrequired_mode = "active"\nallowed_graphs = ["full"]\n'
        "max_dim = 1000\nallowed_bits = [32]\n[dp]\nrequired = true\nmin_noise_multiplier = 0.8\n"
    )
    json_path = tmp_path / "policy.json"
    json_path.write_text(
        json.dumps(
            {
                "min_cohort_size": 7,
                "min_threshold_fraction": 0.75,
                "required_mode": "active",
                "allowed_graphs": ["full"],
                "max_dim": 1000,
                "allowed_bits": [32],
                "dp": {"required": True, "min_noise_multiplier": 0.8},
            }
        )
    )
    from_toml = ClientPolicy.load(toml_path)
    assert from_toml == ClientPolicy.load(json_path)
    assert from_toml.allowed_graphs == frozenset({GraphKind.FULL})
    assert from_toml.dp.min_noise_multiplier == 0.8


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"min_cohort_size": 3, "max_dimm": 5}', "unknown policy keys: max_dimm"),
        ('{"dp": {"max_epsilon": 1}}', "unknown dp policy keys: max_epsilon"),
        ('{"required_mode": "paranoid"}', "paranoid"),
        ('{"min_cohort_size": 1}', "at least 2"),
        ('{"allowed_bits": [7]}', "allowed_bits"),
        ('{"dp": {"min_noise_multiplier": -1}}', "positive finite"),
        ("[1, 2]", "one object"),
        ("{not json", "cannot parse"),
    ],
)
def test_malformed_policy_file_is_refused_with_a_specific_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(content)
    with pytest.raises(PolicyFileError, match=message):
        ClientPolicy.load(path)
