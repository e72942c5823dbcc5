"""``secagg train``, ``secagg predict``, ``secagg evaluate``: a bank's model, trained and used.

::

    secagg train --data loans.csv --work-dir bank-a/ --manifest manifest.json \\
        --server https://secagg.example --key bank-a.key --passphrase-file pass.txt --policy policy.toml

    secagg train --data loans.csv --target Class --positive bad --work-dir trial/ --local [--manifest M | --schema S --plan P]
    secagg train --data loans.csv --target Class --positive bad --draft-schema draft.json
    secagg predict --model bank-a/model.json --data new-loans.csv --out scores.csv
    secagg evaluate --model bank-a/model.json --data test.csv [--validation validation.csv]

The data are prepared by :mod:`clients.training.tabular` (numeric and categorical columns,
missing values, unseen categories, one-hot with a cap, clipping and standardisation; the
rules are in that module's docstring):

* **Federated** (default): the consortium's signed manifest (``--manifest``) gives the
  schema, the plan and the members; the bank takes part in its training's rounds as the
  coordinator opens them (:func:`clients.training.federated.train_federated`), charging
  its own budget (the policy's ``[budget]``), and resumes where it stopped when run
  again with the same work directory. The bank's participant id is the one the manifest
  lists for its key.
  The command is a thin layer over the Python API, :func:`clients.training.api.train`.
  A bank's own model (the plan's ``model`` is ``custom``) is imported from the factory the
  manifest's layout names, which must be importable here (``PYTHONPATH``).
* **Local** (``--local``): nothing leaves the machine. The schema and plan are the
  manifest's (``--manifest``), or ``--schema`` and ``--plan``, or drafted from this file
  and the default plan; the model is trained with the plan's DP-SGD, every round charged
  to a signed privacy ledger in ``--work-dir`` (a local identity key is created there if
  ``--key`` is not given). ``--holdout F`` keeps a stratified fraction of the rows out
  of training to report a validation AUC and choose the decision threshold.
* ``--draft-schema FILE`` writes the draft schema of this file and exits, after printing
  what the draft reveals about the file (``secagg consortium schema show`` prints it again).

Exit codes (docs/CLIENT.md): 0 done; 2 usage or input (bad data, manifest, schema, plan);
3 refused by this bank's policy or budget before anything was sent; 6 the work directory
belongs to another training or data set; 7 the server refused a request; 8 the server
stayed unreachable; 9 key file; 11 no round of the next step opened within
``--round-timeout``.
"""

from __future__ import annotations

import hashlib
import json
import sys
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
    target: str | None,
    positive: str | None,
    work_dir: Path,
    schema_path: Path | None,
    plan_path: Path | None,
    manifest_path: Path | None,
    key_path: Path | None,
    passphrase: bytes | None,
    participant_id: str,
    holdout: float,
) -> dict[str, Any]:
    """``--local``: prepare, optionally hold out, DP-train for the plan's rounds with a signed ledger; nothing is sent."""
    from clients.runtime.keyfile import generate_key_file, load_identity_key
    from clients.training.budget_store import LEDGER_FILE
    from clients.training.datasets import stratified_holdout
    from clients.training.federated import ACCOUNTANT_FILE, MODEL_ARTEFACT, load_signed_manifest
    from clients.training.metrics import roc_auc
    from clients.training.model_file import ModelArtefact
    from clients.training.plan import FederatedPlan, labels_for, model_outputs
    from clients.training.rules import TrainingRules
    from clients.training.tabular import (
        Dataset,
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
    from dp.models import LossKind, loss_of
    from dp.training import BankTrainer, use_threads

    use_threads(1)
    table = read_csv(data)
    manifest_hash = training_id = None
    spec: Any = None
    if manifest_path is not None:
        manifest = load_signed_manifest(manifest_path).manifest
        rules = TrainingRules(manifest)
        schema, plan, spec = rules.schema, rules.plan, rules.model
        manifest_hash, training_id = manifest.hash.hex(), manifest.training_id
    else:
        plan = FederatedPlan.load(plan_path) if plan_path is not None else FederatedPlan()
        if schema_path is not None:
            schema = TabularSchema.load(schema_path)
        else:
            if target is None:
                raise TabularError("--local without --schema or --manifest drafts a schema: give --target")
            schema = draft_schema(table, target=target, positive=resolve_positive(table.column(target), positive, target))
    if (target is not None and schema.target != target) or (positive is not None and schema.positive != positive):
        raise TabularError(f"the schema predicts {schema.target} == {schema.positive!r}, not {target} == {positive!r}")
    if spec is None:
        spec = plan.model_spec(schema.num_features)
    binary = loss_of(spec) is LossKind.BINARY_CROSS_ENTROPY
    labels = labels_for(spec, schema, table)
    if holdout > 0:
        strata = labels if loss_of(spec) is not LossKind.MEAN_SQUARED_ERROR else np.zeros(labels.size)
        held_out = stratified_holdout(strata, holdout, hashlib.sha256(b"secagg/train/local-validation/v1").digest())
    else:
        held_out = np.zeros(labels.size, dtype=bool)
    training, validation = table.take(np.flatnonzero(~held_out)), table.take(np.flatnonzero(held_out))
    if not schema.is_standardized:
        schema = schema.with_statistics(statistics_from_sums(schema, moment_sums(training, schema)))
    work_dir.mkdir(parents=True, exist_ok=True)
    schema.save(work_dir / "schema-standardized.json")
    preprocessor = Preprocessor(schema)

    def dataset(part: Any) -> Dataset:
        return Dataset(preprocessor.features(part), labels_for(spec, schema, part), schema.feature_names)

    train_set = dataset(training)
    validation_set = dataset(validation) if validation.rows else None
    if key_path is None:
        key_path = work_dir / "local-identity.key"
        if not key_path.exists():
            generate_key_file(key_path)
        passphrase = None
    identity = load_identity_key(key_path, passphrase=passphrase)
    trainer = BankTrainer(spec, plan.dpsgd_config(), accountant_path=work_dir / ACCOUNTANT_FILE)
    event = plan.round_event()
    budget = BudgetPolicy({PrivacyUnit.EXAMPLE: UnitBudget(plan.target_epsilon, plan.delta)}, participant_id)
    model = plan.initial_model(spec)
    with PrivacyLedger.open(work_dir / LEDGER_FILE, party_id=participant_id, signing_key=identity) as ledger:
        guard = BudgetGuard(budget, ledger)
        run_tag = hashlib.sha256(ledger.path.read_bytes() if ledger.path.exists() else b"").hexdigest()[:8]
        for round_index in range(plan.rounds):
            guard.charge_round(round_id=f"local-{run_tag}-{round_index + 1}", contributions={PrivacyUnit.EXAMPLE: event})
            model = (model + trainer.train_round(model, train_set.features, train_set.labels).model_update).astype(np.float32)
        epsilon = guard.spent(PrivacyUnit.EXAMPLE)
    np.save(work_dir / "model.npy", model, allow_pickle=False)
    validation_auc = None
    threshold_data, source = train_set, "the training rows"
    if binary and validation_set is not None and 0 < validation_set.labels.sum() < validation_set.rows:
        validation_auc = roc_auc(validation_set.labels, model_outputs(spec, model, validation_set.features))
        threshold_data, source = validation_set, f"a stratified {holdout:g} hold-out of the rows"
    artefact = ModelArtefact.trained(
        schema=schema, spec=spec, parameters=model, training_id=training_id, manifest_hash=manifest_hash,
        rounds=plan.rounds, threshold_data=threshold_data, threshold_source=source,
    )  # fmt: skip
    artefact.save(work_dir / MODEL_ARTEFACT)
    return {
        "mode": "local",
        "rows_train": train_set.rows,
        "rows_validation": 0 if validation_set is None else validation_set.rows,
        "features": schema.num_features,
        "feature_names": list(schema.feature_names),
        "rounds": plan.rounds,
        "epsilon": epsilon,
        "delta": plan.delta,
        "validation_auc": validation_auc,
        "model": str(work_dir / MODEL_ARTEFACT),
        "ledger": str(work_dir / LEDGER_FILE),
    }


def _show_event(event: str, fields: dict[str, Any]) -> None:
    """One line on stderr per event of a federated run (no secrets, no vectors)."""
    short = str(fields.get("round_id", ""))[:8]
    if event == "started":
        resumed = fields.get("resumed_after") or []
        note = f", resuming after steps {resumed}" if resumed else ""
        line = (f"{fields['participant_id']} joins training {fields['training_id']} (manifest {fields['manifest_hash'][:16]}…); "
                f"budget {fields['budget_id'][:8]} covers {fields['customers']} customers of this file{note}")  # fmt: skip
    elif event == "statistics":
        line = f"statistics round {short}: {fields['survivors']} banks in the sum (exact column sums, not DP)"
    elif event == "round":
        line = (f"round {fields['round']}/{fields['of']} {short}: {fields['survivors']} banks in the sum"
                f"{'' if fields['contributed'] else ' (without this bank)'}; epsilon {fields['epsilon']:.3f}")  # fmt: skip
    elif event == "refused":
        line = f"refused round {short}: {fields['reason']}: {fields['detail']}"
    elif event in ("aborted", "left-out", "protocol-refused"):
        line = f"round {short}: {event} ({fields.get('reason', '')})"
    elif event == "released":
        line = f"round {short}: masked input sent; privacy charged"
    else:
        return
    print(f"secagg train: {line}", file=sys.stderr, flush=True)


def train_command(
    data: Annotated[Path, typer.Option("--data", help="This bank's CSV (.csv or .csv.gz) with a header row.")],
    work_dir: Annotated[
        Path | None, typer.Option("--work-dir", help="Where the model, the training state and the round states go.")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="The consortium's signed manifest (this bank signed it).")
    ] = None,
    server: Annotated[str | None, typer.Option("--server", help="Aggregation server URL.")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="This bank's identity key (secagg client keygen).")] = None,
    passphrase_file: Annotated[Path | None, typer.Option("--passphrase-file", help="Passphrase of the key file.")] = None,
    passphrase_env: Annotated[
        str | None, typer.Option("--passphrase-env", help="Environment variable holding the key's passphrase.")
    ] = None,
    ca_bundle: Annotated[
        Path | None, typer.Option("--ca-bundle", help="CA bundle to verify the server's TLS certificate.")
    ] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="This bank's policy (JSON or TOML) with its [budget].")] = None,
    participant_id: Annotated[
        str | None, typer.Option("--participant-id", help="This bank's id (default: the manifest's id for this key).")
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="The column to predict (checked against the schema).")] = None,
    positive: Annotated[str | None, typer.Option("--positive", help=PositiveHelp)] = None,
    negative: Annotated[
        list[str] | None, typer.Option("--negative", help="--draft-schema: a target value that counts as 0 (repeatable).")
    ] = None,
    local: Annotated[bool, typer.Option("--local", help="Train on this file only; send nothing.")] = False,
    schema: Annotated[Path | None, typer.Option("--schema", help="--local: a schema (JSON) instead of the manifest's.")] = None,
    plan: Annotated[
        Path | None, typer.Option("--plan", help="--local: a training plan (JSON) instead of the manifest's.")
    ] = None,
    holdout: Annotated[
        float, typer.Option("--holdout", min=0.0, max=0.9, help="--local: fraction of rows held out for validation.")
    ] = 0.2,
    round_timeout: Annotated[
        float, typer.Option("--round-timeout", min=1, help="Seconds to wait for the consortium to open each step's round.")
    ] = 600.0,
    server_timeout: Annotated[
        float, typer.Option("--server-timeout", min=0, help="Seconds of connection failures before giving up.")
    ] = 30.0,
    draft: Annotated[Path | None, typer.Option("--draft-schema", help="Write a schema drafted from --data and exit.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object on the last line.")] = False,
) -> None:
    """Train on this bank's own tabular data: in the consortium's rounds, or alone (--local)."""
    from clients.runtime.errors import ClientError
    from clients.runtime.keyfile import read_passphrase
    from clients.training import api
    from clients.training.federated import exit_code_of
    from clients.training.tabular import TabularError, draft_schema, read_csv
    from dp.errors import DPError
    from secagg.consortium import ManifestError

    try:
        if draft is not None:
            if target is None:
                raise TabularError("--draft-schema needs --target")
            table = read_csv(data)
            drafted = draft_schema(
                table, target=target, positive=resolve_positive(table.column(target), positive, target), negative=negative
            )
            drafted.save(draft)
            from clients.training.schema_agreement import describe_draft

            typer.echo(describe_draft(drafted, source=str(data)), err=True)
            typer.echo(f"wrote a draft schema of {len(drafted.columns)} columns ({drafted.num_features} features) to {draft}")
            return
        if work_dir is None:
            raise typer.BadParameter("--work-dir is needed to train")
        passphrase = read_passphrase(passphrase_file=passphrase_file, passphrase_env=passphrase_env)
        if local:
            result = train_locally(
                data=data, target=target, positive=positive, work_dir=work_dir, schema_path=schema, plan_path=plan,
                manifest_path=manifest, key_path=key, passphrase=passphrase, participant_id=participant_id or "local",
                holdout=holdout,
            )  # fmt: skip
        else:
            missing = [
                name
                for name, value in (("--manifest", manifest), ("--server", server), ("--key", key), ("--policy", policy))
                if value is None
            ]
            if missing:
                raise typer.BadParameter(f"a federated run needs {', '.join(missing)} (or use --local)")
            if schema is not None or plan is not None:
                raise typer.BadParameter("a federated run takes its schema and plan from --manifest only")
            assert manifest is not None and server is not None and key is not None and policy is not None
            trained = api.train(
                manifest=api.load_manifest(manifest), key=api.load_key(key, passphrase=passphrase), data=api.load_data(data),
                server=server, policy=policy, work_dir=work_dir, participant_id=participant_id, ca_bundle=ca_bundle,
                target=target, positive=positive,
                round_timeout=round_timeout, server_timeout=server_timeout, on_event=_show_event,
            )  # fmt: skip
            result = {"mode": "federated", **trained.summary}
    except (TabularError, ManifestError, DPError, ClientError, ValueError, OSError) as error:
        typer.echo(f"secagg train: {error}", err=True)
        raise typer.Exit(code=exit_code_of(error)) from None
    if json_output:
        typer.echo(json.dumps(result, sort_keys=True))
    else:
        for name, value in result.items():
            if name != "feature_names":
                typer.echo(f"{name}: {value}")


def _features(artefact: Any, data: Path) -> tuple[Any, Any]:
    from clients.training.tabular import Preprocessor, read_csv

    table = read_csv(data)
    return table, Preprocessor(artefact.schema).features(table)


def predict_command(
    model: Annotated[Path, typer.Option("--model", help="A model file (model.json) written by secagg train.")],
    data: Annotated[Path, typer.Option("--data", help="The rows to score (CSV with the schema's columns).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the scores (CSV).")],
    id_column: Annotated[
        str | None, typer.Option("--id-column", help="Copy this column of --data into the output, to join on.")
    ] = None,
) -> None:
    """Score a CSV with a trained model: binary, P(positive) and 1/0 at the model's threshold; multi-class, the most
    probable class and its probability; regression, the prediction."""
    import csv
    import io

    from clients.training.model_file import ModelArtefact
    from clients.training.tabular import TabularError
    from dp.atomic_files import PUBLIC_MODE, write_atomic

    try:
        artefact = ModelArtefact.load(model)
        table, features = _features(artefact, data)
        columns, scored = artefact.scores(features)
        ids = table.column(id_column) if id_column is not None else None
    except (TabularError, OSError) as error:
        typer.echo(f"secagg predict: {error}", err=True)
        raise typer.Exit(code=2) from None
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(([id_column] if id_column else []) + ["row", *columns])
    rows = table.data_row_numbers()
    for index, values in enumerate(scored):
        writer.writerow(([str(ids[index])] if ids is not None else []) + [int(rows[index]), *values])
    write_atomic(out, text.getvalue().encode("utf-8"), mode=PUBLIC_MODE)
    how = f"with threshold {artefact.threshold:.4g}" if artefact.threshold is not None else f"({artefact.loss.value})"
    typer.echo(f"scored {len(scored)} rows {how} into {out}", err=True)


def evaluate_command(
    model: Annotated[Path, typer.Option("--model", help="A model file (model.json) written by secagg train.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled rows (CSV with the schema's target column).")],
    validation: Annotated[
        Path | None,
        typer.Option("--validation", help="Labelled rows to choose the threshold on (default: the model's own threshold)."),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric", help="Print only this figure (auc, accuracy, balanced_accuracy, threshold, log_loss, rmse, mae, r2)."
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Report a model's figures: binary, AUC and accuracy at a threshold chosen on validation data (not 0.5);
    multi-class, accuracy, balanced accuracy and log loss; regression, RMSE, MAE and R²."""
    from clients.training.metrics import MetricError, youden_threshold
    from clients.training.model_file import ModelArtefact
    from clients.training.plan import labels_for
    from clients.training.tabular import TabularError
    from dp.models import LossKind

    try:
        artefact = ModelArtefact.load(model)
        if validation is not None:
            if not artefact.binary:
                raise TabularError(f"--validation chooses a binary model's threshold; this model is {artefact.loss.value}")
            table, features = _features(artefact, validation)
            threshold = youden_threshold(labels_for(artefact.spec, artefact.schema, table), artefact.predict(features))
            artefact = artefact.with_threshold(threshold, f"{validation} (Youden's J)")
        table, features = _features(artefact, data)
        figures = artefact.evaluate(features, labels_for(artefact.spec, artefact.schema, table))
        figures.update(training_id=artefact.training_id, manifest_hash=artefact.manifest_hash)
    except (TabularError, MetricError, OSError) as error:
        typer.echo(f"secagg evaluate: {error}", err=True)
        raise typer.Exit(code=2) from None
    if metric is not None:
        numeric = sorted(name for name, value in figures.items() if isinstance(value, float))
        if metric not in numeric:
            raise typer.BadParameter(f"one of {', '.join(numeric)} for this model", param_hint="--metric")
        typer.echo(repr(float(figures[metric])))
    elif json_output:
        typer.echo(json.dumps(figures, sort_keys=True))
    elif artefact.binary:
        typer.echo(f"AUC {figures['auc']:.4f} on {figures['rows']} rows ({figures['positives']} positive)")
        typer.echo(
            f"accuracy {figures['accuracy']:.4f}, balanced accuracy {figures['balanced_accuracy']:.4f} at threshold "
            f"{figures['threshold']:.4g} (chosen on {figures['threshold_source']})"
        )
    elif artefact.loss is LossKind.CROSS_ENTROPY:
        typer.echo(
            f"accuracy {figures['accuracy']:.4f}, balanced accuracy {figures['balanced_accuracy']:.4f}, "
            f"log loss {figures['log_loss']:.4f} on {figures['rows']} rows"
        )
    else:
        typer.echo(f"RMSE {figures['rmse']:.4g}, MAE {figures['mae']:.4g}, R² {figures['r2']:.4f} on {figures['rows']} rows")
