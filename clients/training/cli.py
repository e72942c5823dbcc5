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
    from clients.training.plan import FederatedPlan, predict_logits
    from clients.training.rules import TrainingRules
    from clients.training.tabular import (
        Preprocessor,
        TabularError,
        TabularSchema,
        draft_schema,
        moment_sums,
        read_csv,
        statistics_from_sums,
        target_labels,
    )
    from dp.audit.privacy_ledger import PrivacyLedger, PrivacyUnit
    from dp.budget import BudgetGuard, BudgetPolicy, UnitBudget
    from dp.training import BankTrainer, use_threads

    use_threads(1)
    table = read_csv(data)
    manifest_hash = training_id = None
    if manifest_path is not None:
        manifest = load_signed_manifest(manifest_path).manifest
        rules = TrainingRules(manifest)
        schema, plan = rules.schema, rules.plan
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
    labels = target_labels(schema, table)
    if holdout > 0:
        held_out = stratified_holdout(labels, holdout, hashlib.sha256(b"secagg/train/local-validation/v1").digest())
    else:
        held_out = np.zeros(labels.size, dtype=bool)
    training, validation = table.take(np.flatnonzero(~held_out)), table.take(np.flatnonzero(held_out))
    if not schema.is_standardized:
        schema = schema.with_statistics(statistics_from_sums(schema, moment_sums(training, schema)))
    work_dir.mkdir(parents=True, exist_ok=True)
    schema.save(work_dir / "schema-standardized.json")
    preprocessor = Preprocessor(schema)
    train_set = preprocessor.transform(training)
    validation_set = preprocessor.transform(validation) if validation.rows else None
    if key_path is None:
        key_path = work_dir / "local-identity.key"
        if not key_path.exists():
            generate_key_file(key_path)
        passphrase = None
    identity = load_identity_key(key_path, passphrase=passphrase)
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
    threshold_data, source = train_set, "the training rows"
    if validation_set is not None and 0 < validation_set.labels.sum() < validation_set.rows:
        validation_auc = roc_auc(validation_set.labels, predict_logits(spec, model, validation_set.features))
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
    from clients.training.federated import BankJob, exit_code_of, train_federated
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
            job = BankJob(
                data=data, manifest=manifest, work_dir=work_dir, server=server, key=key, policy=policy,
                participant_id=participant_id, passphrase=passphrase, ca_bundle=ca_bundle, target=target, positive=positive,
                round_timeout=round_timeout, server_timeout=server_timeout,
            )  # fmt: skip
            result = {"mode": "federated", **train_federated(job, on_event=_show_event)}
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
    """Score a CSV with a trained model: the probability of the positive class, and 1/0 at the model's threshold."""
    import csv
    import io

    from clients.training.model_file import ModelArtefact
    from clients.training.tabular import TabularError
    from dp.atomic_files import PUBLIC_MODE, write_atomic

    try:
        artefact = ModelArtefact.load(model)
        table, features = _features(artefact, data)
        scores = artefact.predict(features)
        ids = table.column(id_column) if id_column is not None else None
    except (TabularError, OSError) as error:
        typer.echo(f"secagg predict: {error}", err=True)
        raise typer.Exit(code=2) from None
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(([id_column] if id_column else []) + ["row", "probability", "predicted"])
    rows = table.data_row_numbers()
    for index, score in enumerate(scores.tolist()):
        predicted = 1 if score >= artefact.threshold else 0
        writer.writerow(([str(ids[index])] if ids is not None else []) + [int(rows[index]), repr(float(score)), predicted])
    write_atomic(out, text.getvalue().encode("utf-8"), mode=PUBLIC_MODE)
    typer.echo(f"scored {len(scores)} rows with threshold {artefact.threshold:.4g} into {out}", err=True)


def evaluate_command(
    model: Annotated[Path, typer.Option("--model", help="A model file (model.json) written by secagg train.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled rows (CSV with the schema's target column).")],
    validation: Annotated[
        Path | None,
        typer.Option("--validation", help="Labelled rows to choose the threshold on (default: the model's own threshold)."),
    ] = None,
    metric: Annotated[
        str | None, typer.Option("--metric", help="Print only this figure (auc, accuracy, balanced_accuracy, threshold).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Report a model's AUC, and its accuracy at a threshold chosen on validation data (not 0.5)."""
    from clients.training.metrics import MetricError, accuracy, balanced_accuracy, roc_auc, youden_threshold
    from clients.training.model_file import ModelArtefact
    from clients.training.tabular import TabularError, target_labels

    try:
        artefact = ModelArtefact.load(model)
        if validation is not None:
            table, features = _features(artefact, validation)
            threshold = youden_threshold(target_labels(artefact.schema, table), artefact.predict(features))
            artefact = artefact.with_threshold(threshold, f"{validation} (Youden's J)")
        table, features = _features(artefact, data)
        labels = target_labels(artefact.schema, table)
        scores = artefact.predict(features)
        figures: dict[str, Any] = {
            "auc": roc_auc(labels, scores),
            "accuracy": accuracy(labels, scores, artefact.threshold),
            "balanced_accuracy": balanced_accuracy(labels, scores, artefact.threshold),
            "threshold": artefact.threshold,
            "threshold_source": artefact.threshold_source,
            "rows": int(labels.size),
            "positives": int(labels.sum()),
            "training_id": artefact.training_id,
            "manifest_hash": artefact.manifest_hash,
        }
    except (TabularError, MetricError, OSError) as error:
        typer.echo(f"secagg evaluate: {error}", err=True)
        raise typer.Exit(code=2) from None
    if metric is not None:
        if metric not in ("auc", "accuracy", "balanced_accuracy", "threshold"):
            raise typer.BadParameter("one of auc, accuracy, balanced_accuracy, threshold", param_hint="--metric")
        typer.echo(repr(float(figures[metric])))
    elif json_output:
        typer.echo(json.dumps(figures, sort_keys=True))
    else:
        typer.echo(f"AUC {figures['auc']:.4f} on {figures['rows']} rows ({figures['positives']} positive)")
        typer.echo(
            f"accuracy {figures['accuracy']:.4f}, balanced accuracy {figures['balanced_accuracy']:.4f} at threshold "
            f"{figures['threshold']:.4g} (chosen on {figures['threshold_source']})"
        )
