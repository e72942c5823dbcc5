"""A bank's own model: checked at plan time, described in the manifest, federated over the real server.

The factories live in tests/clients/own_models.py, outside the package, imported by name as
a bank's own module would be. The trainings run as in tests/clients/test_consortium_training.py:
banks and coordinators in threads of this process against one server subprocess.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("opacus")
pytestmark = [pytest.mark.torch]

from clients.harness.local_server import LocalServer  # noqa: E402
from clients.training.federated import ModelDiffers, ProgressLog  # noqa: E402
from clients.training.model_file import ModelArtefact, ModelFileError  # noqa: E402
from clients.training.rules import TrainingRules  # noqa: E402
from clients.training.tabular import draft_schema, moment_sums, parse_csv, statistics_from_sums  # noqa: E402
from dp.models import LossKind, ModelLayout  # noqa: E402
from dp.training import ModelRefused, describe_model  # noqa: E402
from secagg_cli import app  # noqa: E402
from tests.clients import own_models  # noqa: E402
from tests.clients.consortium_support import (  # noqa: E402
    SMALL_PLAN,
    BankRun,
    CoordinatorRun,
    bank_job,
    bank_tables,
    build_manifest,
    key_of,
    lending_club,
    standardized_schema,
    write_key_file,
)

BANKS = ["bank-a", "bank-b", "bank-c"]
SMALL_NET = "tests.clients.own_models:small_net"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with LocalServer(directory=tmp_path_factory.mktemp("server"), poll_seconds=0.1) as handle:
        yield handle


def plan_with_factory(tmp_path: Path, factory: str, *extra: str) -> Any:
    schema = tmp_path / "schema.json"
    if not schema.exists():
        standardized_schema().save(schema)
    arguments = ["consortium", "plan", "--out", str(tmp_path / "plan.json"), "--rounds", str(SMALL_PLAN.rounds),
                 "--sample-rate", str(SMALL_PLAN.sample_rate), "--target-epsilon", str(SMALL_PLAN.target_epsilon),
                 "--model-factory", factory, "--schema", str(schema), "--model-out", str(tmp_path / "model.json"), *extra]  # fmt: skip
    return CliRunner().invoke(app, arguments)


def write_manifest(path: Path, signed: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(signed.to_bytes())
    return path


def test_a_module_with_batch_norm_is_refused_at_plan_time_naming_the_layer(tmp_path: Path) -> None:
    refused = plan_with_factory(tmp_path, "tests.clients.own_models:with_batch_norm")
    assert refused.exit_code == 2, refused.output
    assert "layer 1 (BatchNorm1d)" in refused.output and "BatchNorm cannot support training with differential privacy" in (
        refused.output
    )
    assert not (tmp_path / "plan.json").exists() and not (tmp_path / "model.json").exists()
    accepted = plan_with_factory(tmp_path, SMALL_NET)
    assert accepted.exit_code == 0, accepted.output
    layout = ModelLayout.from_dict(json.loads((tmp_path / "model.json").read_text()))
    width = standardized_schema().num_features
    assert [(p.name, p.shape) for p in layout.parameters] == [("0.weight", (4, width)), ("0.bias", (4,)),
                                                            ("2.weight", (1, 4)), ("2.bias", (1,))]  # fmt: skip
    assert layout.parameter_count == 4 * width + 4 + 4 + 1 and layout.shapes_sha256 in accepted.output
    assert json.loads((tmp_path / "plan.json").read_text())["model"] == "custom"


def test_a_manifest_whose_layout_hash_does_not_match_its_shapes_is_refused(tmp_path: Path) -> None:
    assert plan_with_factory(tmp_path, SMALL_NET).exit_code == 0
    layout = json.loads((tmp_path / "model.json").read_text())
    layout["parameters"][0]["shape"] = [5, layout["parameters"][0]["shape"][1]]
    layout["parameter_count"] += layout["parameters"][0]["shape"][1]
    plan = json.loads((tmp_path / "plan.json").read_text())
    from secagg.consortium import ManifestError

    with pytest.raises(ManifestError, match="shapes_sha256 is not the hash"):
        TrainingRules(build_manifest("t-forged", BANKS, schema=standardized_schema(), plan=plan, model=layout).manifest)


def test_a_model_from_a_test_module_is_federated_over_the_real_server_and_a_bank_with_another_shape_refuses(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert plan_with_factory(tmp_path, SMALL_NET).exit_code == 0
    layout = json.loads((tmp_path / "model.json").read_text())
    plan = json.loads((tmp_path / "plan.json").read_text())
    signed = build_manifest("t-own", BANKS, schema=standardized_schema(), plan=plan, model=layout)
    manifest = write_manifest(tmp_path / "manifest.json", signed)
    rules = TrainingRules(signed.manifest)
    assert rules.step_parameters(1).dim == layout["parameter_count"]

    coordinator = CoordinatorRun(signed, server).start()
    tables = bank_tables()
    jobs = {name: bank_job(tmp_path, server, name, tables[name], manifest, budget=10.0) for name in BANKS}
    runs = [BankRun(name, job).start() for name, job in jobs.items()]
    for run in runs:
        assert run.join().error is None, repr(run.error)
    assert coordinator.join().error is None and coordinator.result["rounds_completed"] == SMALL_PLAN.rounds
    assert len({run.result["model_sha256"] for run in runs}) == 1
    artefact = ModelArtefact.load(jobs["bank-a"].work_dir / "model.json")
    assert isinstance(artefact.spec, ModelLayout) and artefact.spec.shapes_sha256 == layout["shapes_sha256"]
    assert artefact.parameters.size == layout["parameter_count"]
    test_csv = tmp_path / "test.csv"
    from clients.training.datasets import split_regions

    test_csv.write_bytes(split_regions(lending_club(), banks=3).test.to_csv_bytes())
    evaluated = CliRunner().invoke(app, ["evaluate", "--model", str(jobs["bank-a"].work_dir / "model.json"), "--data",
                                         str(test_csv), "--json"])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    figures = json.loads(evaluated.output.strip().splitlines()[-1])
    assert figures["task"] == "binary-cross-entropy" and 0.0 <= figures["auc"] <= 1.0

    monkeypatch.setattr(own_models, "HIDDEN", 5)
    other = bank_job(tmp_path / "differs", server, "bank-a", tables["bank-a"], manifest, budget=10.0, round_timeout=2.0)
    refused = BankRun("bank-a", other).start().join()
    assert isinstance(refused.error, ModelDiffers), repr(refused.error)
    width = standardized_schema().num_features
    assert f"parameter '0.weight' has shape [5, {width}], the manifest's model has [4, {width}]" in str(refused.error)
    assert not other.work_dir.exists()  # nothing trained, spent or sent
    with pytest.raises(ModelFileError, match=r"'0\.weight' has shape"):
        ModelArtefact.load(jobs["bank-a"].work_dir / "model.json")


def test_the_python_api_trains_end_to_end_and_its_progress_callback_sees_every_round(server: LocalServer, tmp_path: Path) -> None:
    """Loaded manifest, passphrase-protected keys and data; the schema has no statistics, so step 0 runs too."""
    from clients.training import api
    from clients.training.datasets import lending_club_schema

    signed = build_manifest("t-api", BANKS, schema=lending_club_schema())
    manifest = write_manifest(tmp_path / "manifest.json", signed)
    coordinator = CoordinatorRun(signed, server).start()
    tables = bank_tables()
    jobs = {name: bank_job(tmp_path, server, name, tables[name], manifest, budget=10.0) for name in BANKS}
    seen: dict[str, list[api.RoundProgress]] = {name: [] for name in BANKS}
    results: dict[str, Any] = {}

    def bank(name: str) -> None:
        key = write_key_file(tmp_path / f"{name}.key", key_of(name), b"a long passphrase")
        job = jobs[name]
        try:
            results[name] = api.train(
                manifest=api.load_manifest(manifest), key=api.load_key(key, passphrase="a long passphrase"),
                data=api.load_data(job.data), server=server.base_url, policy=job.policy, work_dir=job.work_dir,
                on_round=seen[name].append,
            )  # fmt: skip
        except BaseException as error:
            results[name] = error

    threads = [threading.Thread(target=bank, args=(name,), daemon=True) for name in BANKS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert coordinator.join().error is None
    for name in BANKS:
        result = results[name]
        assert isinstance(result, api.TrainingResult), repr(result)
        progress = seen[name]
        assert [(p.kind, p.round, p.of) for p in progress] == [("statistics", 0, 2), ("round", 1, 2), ("round", 2, 2)]
        assert all(p.survivors == 3 and p.contributed for p in progress)
        assert 0 < progress[1].epsilon < progress[2].epsilon == pytest.approx(result.epsilon)
        assert result.rounds_completed == 2 and result.delta == SMALL_PLAN.delta
        assert progress[2].model_sha256 == result.summary["model_sha256"]
        logged = [e["round_id"] for e in ProgressLog.read(jobs[name].work_dir / "progress.jsonl") if e["event"] == "round"]
        assert [p.round_id for p in progress[1:]] == logged
        assert isinstance(result.model, ModelArtefact) and result.model.threshold is not None
    assert len({results[name].summary["model_sha256"] for name in BANKS}) == 1


def test_the_api_refuses_an_incomplete_manifest_before_anything_is_sent(tmp_path: Path) -> None:
    from clients.training import api
    from secagg.consortium import ManifestError

    unsigned = build_manifest("t-unsigned", BANKS, schema=standardized_schema(), sign=False)
    with pytest.raises(ManifestError):
        api.train(manifest=unsigned, key=key_of("bank-a"), data=bank_tables()["bank-a"], server="http://127.0.0.1:9",
                  policy=tmp_path / "policy.toml", work_dir=tmp_path / "work")  # fmt: skip
    assert not (tmp_path / "work").exists()


def _three_class_table(rows: int = 240) -> Any:
    """x1 decides the class (a < -0.5 < b < 0.5 < c); x2 is noise. Deterministic."""
    grid = np.linspace(-1.5, 1.5, rows)
    noise = np.cos(np.arange(rows) * 1.7)
    label = np.where(grid < -0.5, "a", np.where(grid < 0.5, "b", "c"))
    lines = ["x1,x2,label", *(f"{x:.4f},{n:.4f},{c}" for x, n, c in zip(grid, noise, label, strict=True))]
    return parse_csv(("\n".join(lines) + "\n").encode())


def test_a_multi_class_model_trains_locally_and_is_evaluated_and_scored_by_class(tmp_path: Path) -> None:
    table = _three_class_table()
    schema = draft_schema(table, target="label", positive="c", negative=["a", "b"])
    schema = schema.with_statistics(statistics_from_sums(schema, moment_sums(table, schema)))
    with pytest.raises(ModelRefused, match="3 outputs for 2 classes"):
        describe_model("tests.clients.own_models:three_classes", schema.num_features, classes=("a", "b"))
    layout = describe_model("tests.clients.own_models:three_classes", schema.num_features, classes=("a", "b", "c"))
    assert layout.loss is LossKind.CROSS_ENTROPY and layout.outputs == 3
    from clients.training.plan import FederatedPlan

    plan = FederatedPlan(rounds=3, sample_rate=0.5, target_epsilon=8.0, model="custom", learning_rate=2.0)  # type: ignore[arg-type]
    signed = build_manifest("t-classes", BANKS, schema=schema, plan=plan, model=layout.to_dict())
    manifest = write_manifest(tmp_path / "manifest.json", signed)
    data = tmp_path / "rows.csv"
    data.write_bytes(table.to_csv_bytes())
    trained = CliRunner().invoke(app, ["train", "--local", "--manifest", str(manifest), "--data", str(data), "--work-dir",
                                       str(tmp_path / "work"), "--holdout", "0"])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    model = str(tmp_path / "work" / "model.json")
    evaluated = CliRunner().invoke(app, ["evaluate", "--model", model, "--data", str(data), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    figures = json.loads(evaluated.output.strip().splitlines()[-1])
    assert figures["task"] == "cross-entropy" and "auc" not in figures
    assert figures["accuracy"] > 0.6 and figures["balanced_accuracy"] > 0.5 and figures["log_loss"] > 0
    scored = CliRunner().invoke(app, ["predict", "--model", model, "--data", str(data), "--out", str(tmp_path / "s.csv")])
    assert scored.exit_code == 0, scored.output
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "row,probability,predicted" and {line.split(",")[2] for line in lines[1:]} <= {"a", "b", "c"}
    assert json.loads(Path(model).read_text())["threshold"] is None


def test_a_regression_model_learns_its_target_with_dp_sgd(tmp_path: Path) -> None:
    from dp.training import BankTrainer, DPSGDConfig, FixedNoise, initial_parameters, mean_loss
    from secagg.hazmat.randomness import DeterministicRandom

    layout = describe_model("tests.clients.own_models:regression", 2)
    assert layout.loss is LossKind.MEAN_SQUARED_ERROR
    features = np.stack([np.linspace(-1, 1, 200), np.cos(np.arange(200.0))], axis=1).astype(np.float32)
    targets = (0.8 * features[:, 0] - 0.3).astype(np.float32)
    config = DPSGDConfig(max_grad_norm=1.0, sample_rate=0.5, local_steps=30, learning_rate=0.5, noise=FixedNoise(0.3),
                         delta=1e-5)  # fmt: skip
    trainer = BankTrainer(layout, config, accountant_path=tmp_path / "accountant.json", source=DeterministicRandom(bytes(32)))
    start = initial_parameters(layout, DeterministicRandom(bytes(32)))
    trained = start + trainer.train_round(start, features, targets).model_update
    assert mean_loss(layout, trained, features, targets) < 0.5 * mean_loss(layout, start, features, targets)


def test_the_coordinator_reads_a_custom_models_manifest_without_torch_or_the_factory(tmp_path: Path) -> None:
    import subprocess
    import sys

    assert plan_with_factory(tmp_path, SMALL_NET).exit_code == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    layout = json.loads((tmp_path / "model.json").read_text())
    manifest = write_manifest(
        tmp_path / "manifest.json", build_manifest("t-torchless", BANKS, schema=standardized_schema(), plan=plan, model=layout)
    )
    code = (
        "import sys\n"
        "from secagg.consortium import SignedManifest\n"
        "from clients.training.rules import TrainingRules\n"
        "rules = TrainingRules(SignedManifest.from_bytes(open(sys.argv[1], 'rb').read()).manifest)\n"
        "print(rules.round_request(1)['dim'])\n"
        "assert not {'torch', 'opacus', 'dp.training', 'tests.clients.own_models'} & set(sys.modules), sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(manifest)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == layout["parameter_count"]


def test_a_factory_that_cannot_be_imported_or_that_fails_is_refused_with_its_reason(tmp_path: Path) -> None:
    missing = plan_with_factory(tmp_path, "no_such_package.models:net")
    assert missing.exit_code == 2 and "cannot import the model factory's module 'no_such_package.models'" in missing.output
    failing = plan_with_factory(tmp_path, "tests.clients.own_models:three_classes")
    assert failing.exit_code == 2 and "names at least two distinct classes" in failing.output
    assert not (tmp_path / "plan.json").exists()
