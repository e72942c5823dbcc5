"""``secagg train``: a bank trains on its own CSV, alone (``--local``) or in the consortium's rounds.

::

    secagg train --data loans.csv --target Class --positive bad --work-dir bank-a/ \\
        --schema consortium-schema.json --plan plan.json \\
        --server https://secagg.example --key bank-a.key --participant-id bank-a [--policy policy.toml]

    secagg train --data loans.csv --target Class --positive bad --work-dir trial/ --local

The data are prepared by :mod:`clients.training.tabular` (numeric and categorical columns
detected, missing values, unseen categories, one-hot with a cap, clipping and
standardisation; the rules are in that module's docstring):

* **Federated** (default): the schema is the consortium's agreed file (``--schema``,
  required). If it carries no means and scales, they are computed with a secure
  aggregation round before training, never by pooling rows. The bank then joins
  ``plan.rounds`` rounds as the server opens them (:func:`clients.training.federated.run_bank`;
  the same code every bank process of ``secagg demo`` runs).
* **Local** (``--local``): nothing leaves the machine. Without ``--schema`` one is
  drafted from this file (:func:`clients.training.tabular.draft_schema`) and standardised with
  this file's own statistics. A stratified 20% of the rows is held out for
  validation; the model is trained on the rest with the plan's DP-SGD (every round
  charged to the signed privacy ledger in ``--work-dir``, with a local identity key
  created there if ``--key`` is not given), and the validation AUC is printed.

``--positive`` names the target value that counts as 1; it may be left out when the
target column holds only 0 and 1. ``--draft-schema FILE`` writes the draft schema of
this file and exits (for the consortium to review; it reveals this file's categories
and quantiles).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

PositiveHelp = "The target value that counts as positive (1); optional if the target holds only 0/1."


def resolve_positive(values: np.ndarray, positive: str | None, target: str) -> str:
    """``positive`` if given (and present), else "1" for a 0/1 target; otherwise a clear error."""
    from clients.training.tabular import TabularError, missing_mask

    present = sorted(set(values[~missing_mask(values)].tolist()))
    if positive is None:
        if set(present) <= {"0", "1"}:
            return "1"
        shown = ", ".join(present[:10]) + (", ..." if len(present) > 10 else "")
        raise TabularError(f"the target {target!r} holds {shown}: say which value is positive with --positive")
    if positive not in present:
        raise TabularError(f"no row has {target} == {positive!r} (values: {', '.join(present[:10])})")
    return positive


def train_locally(
    *,
    data: Path,
    target: str,
    positive: str | None,
    work_dir: Path,
    schema_path: Path | None,
    plan_path: Path | None,
    key_path: Path | None,
    participant_id: str,
) -> dict[str, Any]:
    """``--local``: prepare, split, DP-train for the plan's rounds with a signed ledger; nothing is sent."""
    from clients.runtime.keyfile import generate_key_file, load_identity_key
    from clients.training.datasets import stratified_holdout
    from clients.training.federated import ACCOUNTANT_FILE, LEDGER_FILE
    from clients.training.metrics import roc_auc
    from clients.training.plan import FederatedPlan, predict_logits
    from clients.training.tabular import (
        Preprocessor,
        TabularError,
        TabularSchema,
        draft_schema,
        moment_sums,
        read_csv,
        statistics_from_sums,
    )
    from dp.audit.privacy_ledger import PrivacyLedger, PrivacyUnit
    from dp.budget import BudgetGuard, BudgetPolicy, UnitBudget
    from dp.training import BankTrainer, use_threads

    use_threads(1)
    table = read_csv(data)
    positive = resolve_positive(table.column(target), positive, target)
    plan = FederatedPlan.load(plan_path) if plan_path is not None else FederatedPlan()
    schema = TabularSchema.load(schema_path) if schema_path is not None else draft_schema(table, target=target, positive=positive)
    if schema.target != target or schema.positive != positive:
        raise TabularError(f"the schema predicts {schema.target} == {schema.positive!r}, not {target} == {positive!r}")
    labels = (table.column(target) == positive).astype(np.int8)
    held_out = stratified_holdout(labels, 0.2, hashlib.sha256(b"secagg/train/local-validation/v1").digest())
    training, validation = table.take(np.flatnonzero(~held_out)), table.take(np.flatnonzero(held_out))
    if not schema.is_standardized:
        schema = schema.with_statistics(statistics_from_sums(schema, moment_sums(training, schema)))
    work_dir.mkdir(parents=True, exist_ok=True)
    schema.save(work_dir / "schema-standardized.json")
    preprocessor = Preprocessor(schema)
    train_set, validation_set = preprocessor.transform(training), preprocessor.transform(validation)
    if key_path is None:
        key_path = work_dir / "local-identity.key"
        if not key_path.exists():
            generate_key_file(key_path)
    identity = load_identity_key(key_path)
    spec = plan.model_spec(schema.num_features)
    trainer = BankTrainer(spec, plan.dpsgd_config(), accountant_path=work_dir / ACCOUNTANT_FILE)
    event = plan.round_event()
    budget = BudgetPolicy({PrivacyUnit.EXAMPLE: UnitBudget(plan.target_epsilon, plan.delta)}, participant_id)
    model = plan.initial_model(schema.num_features)
    with PrivacyLedger.open(work_dir / LEDGER_FILE, party_id=participant_id, signing_key=identity) as ledger:
        guard = BudgetGuard(budget, ledger)
        run_tag = hashlib.sha256(ledger.path.read_bytes() if ledger.path.exists() else b"").hexdigest()[:8]
        for round_index in range(plan.rounds):
            guard.charge_round(round_id=f"local-{run_tag}-{round_index + 1}", contributions={PrivacyUnit.EXAMPLE: event})
            model = (model + trainer.train_round(model, train_set.features, train_set.labels).model_update).astype(np.float32)
        epsilon = guard.spent(PrivacyUnit.EXAMPLE)
    np.save(work_dir / "model.npy", model, allow_pickle=False)
    validation_auc = None
    if 0 < validation_set.labels.sum() < validation_set.rows:
        validation_auc = roc_auc(validation_set.labels, predict_logits(spec, model, validation_set.features))
    return {
        "mode": "local",
        "rows_train": train_set.rows,
        "rows_validation": validation_set.rows,
        "features": schema.num_features,
        "feature_names": list(schema.feature_names),
        "rounds": plan.rounds,
        "epsilon": epsilon,
        "delta": plan.delta,
        "validation_auc": validation_auc,
        "model": str(work_dir / "model.npy"),
        "ledger": str(work_dir / LEDGER_FILE),
    }


def train_command(
    data: Annotated[Path, typer.Option("--data", help="This bank's CSV (.csv or .csv.gz) with a header row.")],
    target: Annotated[str, typer.Option("--target", help="The column to predict.")],
    work_dir: Annotated[Path, typer.Option("--work-dir", help="Where the model, ledger, accountant and round states go.")],
    positive: Annotated[str | None, typer.Option("--positive", help=PositiveHelp)] = None,
    schema: Annotated[Path | None, typer.Option("--schema", help="The consortium's agreed schema (JSON).")] = None,
    plan: Annotated[
        Path | None, typer.Option("--plan", help="The consortium's training plan (JSON); defaults if absent.")
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="Train on this file only; send nothing.")] = False,
    server: Annotated[str | None, typer.Option("--server", help="Aggregation server URL.")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="This bank's identity key (secagg client keygen).")] = None,
    participant_id: Annotated[str | None, typer.Option("--participant-id", help="This bank's enrolled id.")] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="Local round policy (JSON or TOML).")] = None,
    round_timeout: Annotated[
        float, typer.Option("--round-timeout", min=1, help="Seconds to wait for the server to open each round.")
    ] = 600.0,
    server_timeout: Annotated[
        float, typer.Option("--server-timeout", min=0, help="Seconds of connection failures before giving up.")
    ] = 30.0,
    draft: Annotated[Path | None, typer.Option("--draft-schema", help="Write a schema drafted from --data and exit.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object on the last line.")] = False,
) -> None:
    """Train on this bank's own tabular data: alone (--local) or in the consortium's federated rounds."""
    from clients.runtime.errors import ClientError
    from clients.training.federated import BankJob, run_bank
    from clients.training.plan import FederatedError, FederatedPlan
    from clients.training.tabular import TabularError, TabularSchema, draft_schema, read_csv
    from dp.errors import DPError

    try:
        if draft is not None:
            table = read_csv(data)
            drafted = draft_schema(table, target=target, positive=resolve_positive(table.column(target), positive, target))
            drafted.save(draft)
            typer.echo(f"wrote a draft schema of {len(drafted.columns)} columns ({drafted.num_features} features) to {draft}")
            return
        if local:
            result = train_locally(
                data=data, target=target, positive=positive, work_dir=work_dir, schema_path=schema, plan_path=plan,
                key_path=key, participant_id=participant_id or "local",
            )  # fmt: skip
        else:
            missing = [
                name
                for name, value in (
                    ("--schema", schema),
                    ("--server", server),
                    ("--key", key),
                    ("--participant-id", participant_id),
                )
                if value is None
            ]
            if missing:
                raise typer.BadParameter(f"a federated run needs {', '.join(missing)} (or use --local)")
            assert schema is not None
            agreed = TabularSchema.load(schema)
            if plan is None:
                plan = work_dir / "plan.json"
                work_dir.mkdir(parents=True, exist_ok=True)
                FederatedPlan().save(plan)
            job = BankJob(
                participant_id=str(participant_id), data=data, target=target, positive=positive or agreed.positive,
                schema=schema, plan=plan, work_dir=work_dir, server=server, key=key, policy=policy,
                round_timeout=round_timeout, server_timeout=server_timeout,
            )  # fmt: skip
            result = {"mode": "federated", **run_bank(job)}
    except (TabularError, FederatedError, ClientError, DPError) as error:
        typer.echo(f"secagg train: {error}", err=True)
        raise typer.Exit(code=1) from None
    if json_output:
        typer.echo(json.dumps(result, sort_keys=True))
    else:
        shown = {key: value for key, value in result.items() if key != "feature_names"}
        for name, value in shown.items():
            typer.echo(f"{name}: {value}")
