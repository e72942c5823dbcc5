"""What every round must be (clients/training/rules.py), schema agreement, the policy's DP opt-in, and the manifest commands.

The refusals are checked on round descriptions built as the HTTP transport builds them;
tests/clients/test_consortium_training.py checks the same refusals over the real server.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from clients.runtime.policy import ClientPolicy
from clients.runtime.transport import RoundDescription, TrainingBinding
from clients.training.federated import check_manifest_against_policy
from clients.training.plan import FederatedPlan
from clients.training.rules import RefusalReason, RoundRefused, TrainingRules
from clients.training.schema_agreement import SchemaConflict, describe_draft, merge_drafts
from clients.training.tabular import CategoricalColumn, NumericColumn, TabularSchema, Transform
from secagg.config import RoundConfig
from secagg.consortium import Manifest, Member, MemberRole, ProtocolRule, SignedManifest
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom
from secagg_cli import app

KEYS = {
    name: SigningKey.generate(DeterministicRandom.from_int(index))
    for index, name in enumerate(["bank-a", "bank-b", "bank-c", "audit"])
}
SCHEMA = TabularSchema(
    "default",
    "yes",
    (NumericColumn("income", 0.0, 9.0, Transform.LOG1P), CategoricalColumn("grade", ("A", "B", "C"))),
    ("no",),
)


def manifest(*, schema: TabularSchema = SCHEMA, plan: FederatedPlan = FederatedPlan(rounds=3), training: str = "t") -> Manifest:
    members = [
        Member(name, MemberRole.AUDITOR if name == "audit" else MemberRole.BANK, key.public_bytes) for name, key in KEYS.items()
    ]
    return Manifest(training, tuple(members), ProtocolRule(plan.mode), schema.to_dict(), plan.to_dict())


def description(rules: TrainingRules, step: int, **changes: Any) -> RoundDescription:
    """The round the coordinator opens for ``step``, as a bank sees it (``changes`` alter it)."""
    body = rules.round_request(step)
    body.update(changes.pop("body", {}))
    bound = changes.pop("manifest_hash", rules.manifest.hash)
    keys = changes.pop("keys", [KEYS[name].public_bytes for name in body["cohort"]])
    config = RoundConfig(
        round_id=bytes(16), identity_keys=tuple(keys), threshold=body["threshold"], dim=body["dim"], bits=body["bits"],
        mode=body["mode"], graph=body["graph"], degree=body["degree"], manifest_hash=bound, training_round=step,
    )  # fmt: skip
    values: dict[str, Any] = {
        "round_id": "00" * 16,
        "config": config,
        "status": "R0-advertise-keys",
        "is_open": True,
        "member_ids": tuple(body["cohort"]),
        "dp_policy": body["dp_policy"],
        "training": TrainingBinding(rules.manifest.training_id, bound, step),
    }
    values.update(changes)
    return RoundDescription(**values)


def refusal(rules: TrainingRules, round_description: RoundDescription, **keywords: Any) -> str:
    with pytest.raises(RoundRefused) as refused:
        rules.check_round(round_description, **keywords)
    return refused.value.reason.value


def test_the_rounds_the_coordinator_opens_are_the_rounds_every_bank_accepts() -> None:
    rules = TrainingRules(manifest())
    assert rules.steps == (0, 1, 2, 3)  # the schema has no means: a statistics round first
    assert rules.check_round(description(rules, 0), step=0).dim == 3
    parameters = rules.check_round(description(rules, 2), step=2)
    assert parameters.dim == rules.parameter_count == SCHEMA.num_features + 1 and parameters.privacy


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"body": {"dim": 99}}, RefusalReason.DIMENSION_DIFFERS),
        ({"body": {"bits": 64}}, RefusalReason.BITS_DIFFER),
        ({"body": {"dp_policy": {"privacy": []}}}, RefusalReason.PRIVACY_DIFFERS),
        ({"manifest_hash": bytes(32)}, RefusalReason.MANIFEST_HASH_MISMATCH),
        ({"training": None}, RefusalReason.NOT_THIS_TRAINING),
        ({"training": TrainingBinding("another", bytes(32), 1)}, RefusalReason.NOT_THIS_TRAINING),
        ({"body": {"cohort": ["bank-b", "bank-a", "bank-c"]}}, RefusalReason.COHORT_DIFFERS),
        (
            {"keys": [KEYS["bank-a"].public_bytes, KEYS["bank-b"].public_bytes, KEYS["audit"].public_bytes]},
            RefusalReason.KEY_NOT_IN_MANIFEST,
        ),
        ({"body": {"mode": "honest-but-curious", "threshold": 2}}, RefusalReason.PROTOCOL_DIFFERS),
    ],
)
def test_a_round_that_does_not_follow_from_the_manifest_is_refused_by_name(change: dict[str, Any], reason: RefusalReason) -> None:
    rules = TrainingRules(manifest())
    assert refusal(rules, description(rules, 1, **change), step=1) == reason.value


def test_a_round_of_another_step_than_the_bank_expects_is_refused() -> None:
    rules = TrainingRules(manifest())
    assert refusal(rules, description(rules, 2), step=1) == "unexpected-step"


def test_a_schema_of_the_same_width_in_another_order_or_an_edited_plan_is_another_manifest() -> None:
    """The friction this closes: such a bank used to join and mix misaligned features silently."""
    agreed = TrainingRules(manifest())
    reordered = dataclasses.replace(SCHEMA, columns=(SCHEMA.columns[0], CategoricalColumn("grade", ("C", "B", "A"))))
    edited = FederatedPlan(rounds=3, learning_rate=0.5)
    for mine in (manifest(schema=reordered), manifest(plan=edited)):
        rules = TrainingRules(mine)
        assert rules.parameter_count == agreed.parameter_count  # same width, so the old dimension check passed
        assert refusal(rules, description(agreed, 1), step=1) == "manifest-hash-mismatch"


def test_the_readme_s_example_policy_runs_a_three_bank_consortium() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    policy_text = next(block for block in blocks if "[budget]" in block)
    import tomllib

    policy = ClientPolicy.from_mapping(tomllib.loads(policy_text))
    assert policy.budget is not None
    rules = TrainingRules(manifest())
    check_manifest_against_policy(rules, policy, KEYS["bank-a"], "bank-a")  # statistics and training rounds both pass


def test_a_policy_requiring_dp_joins_the_statistics_round_only_when_it_says_so() -> None:
    from clients.runtime.errors import PolicyViolation

    rules = TrainingRules(manifest())
    strict = ClientPolicy.from_mapping({"dp": {"required": True}})
    with pytest.raises(PolicyViolation, match="allow_exact_statistics"):
        check_manifest_against_policy(rules, strict, KEYS["bank-a"], "bank-a")
    opted_in = ClientPolicy.from_mapping({"dp": {"required": True, "allow_exact_statistics": True}})
    check_manifest_against_policy(rules, opted_in, KEYS["bank-a"], "bank-a")
    unbound = dataclasses.replace(description(rules, 0), training=None)
    with pytest.raises(PolicyViolation, match="declares no DP"):
        opted_in.check(unbound, identity_public_key=KEYS["bank-a"].public_bytes, participant_id="bank-a")


# --------------------------------------------------------------------------- schema agreement


def draft(**changes: Any) -> TabularSchema:
    values: dict[str, Any] = {
        "target": "default",
        "positive": "yes",
        "columns": (NumericColumn("income", 10.0, 500.0), CategoricalColumn("grade", ("B", "A"))),
        "negative": ("no",),
    }
    values.update(changes)
    return TabularSchema(**values)


def test_drafts_merge_into_one_schema_whatever_their_order() -> None:
    a = draft()
    b = draft(columns=(NumericColumn("income", 5.0, 900.0, missing_indicator=True), CategoricalColumn("grade", ("C", "A"))))
    merged = merge_drafts([("a", a), ("b", b)])
    assert merge_drafts([("b", b), ("a", a)]).schema == merged.schema
    income, grade = merged.schema.columns[1], merged.schema.columns[0]
    assert isinstance(grade, CategoricalColumn) and grade.categories == ("A", "B", "C")
    assert isinstance(income, NumericColumn) and (income.lower, income.upper, income.missing_indicator) == (5.0, 900.0, True)
    assert merged.notes == ()


def test_transforms_are_reconciled_and_reported() -> None:
    import math

    heavy = draft(
        columns=(NumericColumn("income", math.log1p(1.0), math.log1p(1e6), Transform.LOG1P), CategoricalColumn("grade", ("A",)))
    )
    merged = merge_drafts([("a", draft()), ("b", heavy)])
    income = next(c for c in merged.schema.columns if c.name == "income")
    assert isinstance(income, NumericColumn) and income.transform is Transform.LOG1P
    assert income.lower == pytest.approx(math.log1p(1.0)) and income.upper == pytest.approx(math.log1p(1e6))
    assert any("log1p" in note and "a" in note for note in merged.notes)


def test_every_conflict_is_named_and_none_is_resolved() -> None:
    import math

    negative_identity = draft(columns=(NumericColumn("income", -5.0, 10.0), CategoricalColumn("grade", ("A",))))
    heavy = draft(columns=(NumericColumn("income", 0.0, math.log1p(1e6), Transform.LOG1P), CategoricalColumn("grade", ("A",))))
    with pytest.raises(SchemaConflict) as conflict:
        merge_drafts([
            ("a", draft(positive="Yes")),
            ("b", draft(columns=(NumericColumn("grade", 0.0, 1.0), CategoricalColumn("income", ("x",))))),
            ("c", draft(columns=(NumericColumn("income", 1.0, 2.0),))),
        ])  # fmt: skip
    text = "\n".join(conflict.value.conflicts)
    assert (
        "target" in text
        and "'grade' is in a, b but not in c" in text
        and "'income' is numeric in a, c and categorical in b" in text
    )
    with pytest.raises(SchemaConflict, match="down to -5"):
        merge_drafts([("a", negative_identity), ("b", heavy)])
    assert merge_drafts([("a", draft()), ("c", draft(columns=(NumericColumn("income", 1.0, 2.0),)))], drop=["grade"]).schema


def test_a_bank_sees_what_its_draft_discloses() -> None:
    text = describe_draft(draft(), source="loans.csv")
    assert "loans.csv" in text and "'income' (numeric): its 0.5% and 99.5% quantiles" in text
    assert "listed by decreasing frequency (the order ranks them): B, A" in text and "No row, count, sum or mean" in text


# --------------------------------------------------------------------------- the manifest commands


def test_manifest_create_sign_combine_verify_with_the_shipped_commands(tmp_path: Path) -> None:
    from clients.runtime.keyfile import generate_key_file

    runner = CliRunner()
    SCHEMA.save(tmp_path / "schema.json")
    assert runner.invoke(app, ["consortium", "plan", "--out", str(tmp_path / "plan.json"), "--rounds", "2"]).exit_code == 0
    for name in ("bank-a", "bank-b", "bank-c"):
        generate_key_file(tmp_path / f"{name}.key", passphrase=b"a long passphrase")
    (tmp_path / "pass").write_text("a long passphrase\n")
    roster = [argument for name in ("bank-a", "bank-b", "bank-c") for argument in ("--bank", f"{name}={tmp_path / name}.key.pub")]
    created = runner.invoke(app, ["consortium", "manifest", "create", "--training-id", "t-cli", "--schema", str(tmp_path / "schema.json"),
                                  "--plan", str(tmp_path / "plan.json"), *roster, "--out", str(tmp_path / "m.json")])  # fmt: skip
    assert created.exit_code == 0, created.output
    unsigned = runner.invoke(app, ["consortium", "manifest", "verify", str(tmp_path / "m.json")])
    assert unsigned.exit_code == 1 and "not signed by bank-a, bank-b, bank-c" in unsigned.output
    for name in ("bank-a", "bank-b", "bank-c"):
        signed = runner.invoke(app, ["consortium", "manifest", "sign", str(tmp_path / "m.json"), "--key", str(tmp_path / f"{name}.key"),
                                     "--passphrase-file", str(tmp_path / "pass"), "--out", str(tmp_path / f"{name}.json")])  # fmt: skip
        assert signed.exit_code == 0, signed.output
        assert "threshold 3 of 3" in signed.output  # what the member signs is shown first
    combined = runner.invoke(app, ["consortium", "manifest", "combine", *[str(tmp_path / f"{n}.json") for n in ("bank-a", "bank-b", "bank-c")],
                                   "--out", str(tmp_path / "final.json")])  # fmt: skip
    assert combined.exit_code == 0 and "signed by every member" in combined.output
    final = SignedManifest.from_bytes((tmp_path / "final.json").read_bytes())
    verified = runner.invoke(
        app, ["consortium", "manifest", "verify", str(tmp_path / "final.json"), "--expect-hash", final.hash.hex(), "--json"]
    )
    assert verified.exit_code == 0 and json.loads(verified.output)["ok"]
    other = runner.invoke(app, ["consortium", "manifest", "verify", str(tmp_path / "final.json"), "--expect-hash", "00" * 32])
    assert other.exit_code == 1
    incomplete = runner.invoke(app, ["consortium", "run", "--manifest", str(tmp_path / "bank-a.json"), "--server", "http://127.0.0.1:9",
                                     "--admin-token-file", str(tmp_path / "pass")])  # fmt: skip
    assert incomplete.exit_code == 2 and "not signed by bank-b, bank-c" in incomplete.output
