"""``secagg consortium``: the consortium's commands (docs/CONSORTIUM.md walks through them).

::

    secagg consortium schema merge bank-a.draft.json bank-b.draft.json ... --out schema.json [--drop COLUMN]
    secagg consortium schema show bank-a.draft.json
    secagg consortium plan --out plan.json [--rounds 10 --target-epsilon 3 ...]
    secagg consortium plan --out plan.json --model-factory mypackage.models:fraud_gru --schema schema.json \\
        --model-out model.json [--classes A,B,C]
    secagg consortium manifest create --training-id credit-2026 --schema schema.json --plan plan.json \\
        --bank bank-a=bank-a.key.pub --bank bank-b=bank-b.key.pub --bank bank-c=bank-c.key.pub \\
        [--auditor auditor=auditor.key.pub] [--model model.json] --out manifest.json
    secagg consortium manifest sign manifest.json --key bank-a.key [--passphrase-file F] [--out copy.json]
    secagg consortium manifest combine copy-a.json copy-b.json ... --out manifest.json
    secagg consortium manifest verify manifest.json [--expect-hash HEX]
    secagg consortium manifest show manifest.json
    secagg consortium run --manifest manifest.json --server URL --admin-token-file token [--deadline R0=600 ...]
    secagg consortium example-data --banks 3 --out data/ [--fraction 0.3]

``plan --model-factory`` imports the named factory (a bank's own code, with torch): a bank
that proposes its model runs it, never the coordinator, the server or the auditor, who
receive the plan and the model layout it writes (torch-free JSON, ``secagg-model-layout/1``).

Exit codes: 0 ok; 1 ``manifest verify``: not signed by every member; 2 usage or input
(unreadable or invalid file, schema conflicts); for ``run``, those of the coordinator
(:mod:`clients.consortium.coordinator`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from clients.runtime.errors import ClientError, ExitCode

consortium_app = typer.Typer(
    name="consortium",
    help="The consortium's tools: agree the schema, write the plan, build and sign the manifest, run the training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
schema_app = typer.Typer(help="Merge the banks' draft schemas; show what a draft discloses.", no_args_is_help=True)
manifest_app = typer.Typer(help="Build, sign, combine, verify and show the consortium manifest.", no_args_is_help=True)
consortium_app.add_typer(schema_app, name="schema")
consortium_app.add_typer(manifest_app, name="manifest")


def _fail(command: str, error: BaseException, code: int = int(ExitCode.USAGE)) -> typer.Exit:
    typer.echo(f"secagg consortium {command}: {error}", err=True)
    return typer.Exit(code=int(getattr(error, "exit_code", code)) if isinstance(error, ClientError) else code)


def _write(path: Path, data: bytes) -> None:
    from dp.atomic_files import PUBLIC_MODE, write_atomic

    write_atomic(path, data, mode=PUBLIC_MODE)


# --------------------------------------------------------------------------- schema


@schema_app.command("merge")
def schema_merge(
    drafts: Annotated[list[Path], typer.Argument(help="The banks' draft schemas (secagg train --draft-schema).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the merged schema.")],
    drop: Annotated[list[str] | None, typer.Option("--drop", help="Leave this column out of every draft (repeatable).")] = None,
) -> None:
    """Merge draft schemas into one: categories united, ranges widened, transforms reconciled, conflicts named."""
    from clients.training.schema_agreement import merge_drafts
    from clients.training.tabular import TabularError, TabularSchema

    try:
        loaded = [(path.name, TabularSchema.load(path)) for path in drafts]
        merged = merge_drafts(loaded, drop=drop or ())
    except TabularError as error:
        raise _fail("schema merge", error) from None
    merged.schema.save(out)
    for note in merged.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(
        f"merged {len(drafts)} drafts into {len(merged.schema.columns)} columns ({merged.schema.num_features} features): {out}"
    )


@schema_app.command("show")
def schema_show(draft: Annotated[Path, typer.Argument(help="A draft schema.")]) -> None:
    """Print what a draft schema discloses about the file it was drafted from."""
    from clients.training.schema_agreement import describe_draft
    from clients.training.tabular import TabularError, TabularSchema

    try:
        typer.echo(describe_draft(TabularSchema.load(draft), source=str(draft)))
    except TabularError as error:
        raise _fail("schema show", error) from None


# --------------------------------------------------------------------------- plan


@consortium_app.command("plan")
def plan_command(
    out: Annotated[Path, typer.Option("--out", help="Where to write the plan (JSON).")],
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Training rounds.")] = 10,
    target_epsilon: Annotated[
        float, typer.Option("--target-epsilon", help="Example-level epsilon of the whole run, per bank.")
    ] = 3.0,
    delta: Annotated[float, typer.Option("--delta", help="Delta of the example-level guarantee.")] = 1e-5,
    sample_rate: Annotated[float, typer.Option("--sample-rate", help="DP-SGD Poisson sampling rate.")] = 0.05,
    local_epochs: Annotated[int, typer.Option("--local-epochs", min=1, help="Local epochs per round.")] = 1,
    learning_rate: Annotated[float, typer.Option("--learning-rate", help="Local DP-SGD learning rate.")] = 1.0,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="Per-example gradient clip.")] = 1.0,
    model: Annotated[str, typer.Option("--model", help="logistic-regression or mlp.")] = "logistic-regression",
    hidden_units: Annotated[int, typer.Option("--hidden-units", min=1, help="MLP hidden width.")] = 32,
    update_clip: Annotated[float, typer.Option("--update-clip", help="L2 bound on each bank's update (encoding).")] = 10.0,
    mode: Annotated[str, typer.Option("--mode", help="active or honest-but-curious.")] = "active",
    participant_epsilon: Annotated[
        float | None, typer.Option("--participant-epsilon", help="Also participant-level Skellam noise for this epsilon.")
    ] = None,
    model_factory: Annotated[
        str | None,
        typer.Option("--model-factory", help="A bank's own model: package.module:function returning the module and its loss."),
    ] = None,
    schema: Annotated[
        Path | None, typer.Option("--schema", help="--model-factory: the agreed schema (its feature count is the input width).")
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option("--classes", help="--model-factory, cross-entropy: the target's values, comma-separated, in output order."),
    ] = None,
    model_out: Annotated[
        Path | None,
        typer.Option("--model-out", help="--model-factory: where to write the model's layout (manifest create --model)."),
    ] = None,
) -> None:
    """Write a training plan (format secagg-federated-plan/1, docs/CONSORTIUM.md); every field has a default.

    With ``--model-factory`` the plan's model is ``custom``: the factory is imported and called
    with the schema's feature count, Opacus checks its module layer by layer (a refusal names
    the layer), and its layout (ordered parameter names and shapes, their SHA-256, the loss) is
    written to ``--model-out`` for ``manifest create --model``.
    """
    from clients.training.plan import FederatedError, FederatedPlan
    from clients.training.tabular import TabularError, TabularSchema

    layout = None
    try:
        if model_factory is not None:
            if schema is None or model_out is None:
                raise FederatedError("--model-factory needs --schema (the input width) and --model-out (the layout)")
            from dp.training import ModelRefused, TrainingError, describe_model

            width = TabularSchema.load(schema).num_features
            listed = None if classes is None else tuple(item.strip() for item in classes.split(",") if item.strip())
            try:
                layout = describe_model(model_factory, width, classes=listed)
            except (ModelRefused, TrainingError) as refused:
                raise FederatedError(str(refused)) from None
            model = "custom"
        elif schema is not None or classes is not None or model_out is not None:
            raise FederatedError("--schema, --classes and --model-out describe a --model-factory")
        plan = FederatedPlan(
            rounds=rounds, target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, local_epochs=local_epochs,
            learning_rate=learning_rate, max_grad_norm=max_grad_norm, model=model, hidden_units=hidden_units,  # type: ignore[arg-type]
            update_clip=update_clip, mode=mode, participant_epsilon=participant_epsilon,  # type: ignore[arg-type]
        )  # fmt: skip
    except (FederatedError, TabularError, ValueError) as error:
        raise _fail("plan", error) from None
    plan.save(out)
    if layout is not None:
        assert model_out is not None
        _write(model_out, (json.dumps(layout.to_dict(), indent=2, sort_keys=True) + "\n").encode("ascii"))
        typer.echo(
            f"wrote {model_out}: {layout.factory}, {layout.loss.value}, {len(layout.parameters)} tensors, "
            f"{layout.parameter_count} parameters, shapes {layout.shapes_sha256}"
        )
    event = plan.round_event()
    typer.echo(
        f"wrote {out}: {plan.rounds} rounds of {plan.local_steps} DP-SGD steps (noise multiplier {event.noise_multiplier:.4g}), "
        f"epsilon {plan.target_epsilon:g} at delta {plan.delta:g} per bank over the run"
    )


# --------------------------------------------------------------------------- manifest


def _members(specs: list[str] | None, role: str) -> list[Any]:
    from clients.runtime.keyfile import load_public_key_file
    from secagg.consortium import Member

    members = []
    for spec in specs or []:
        member_id, separator, file_name = spec.partition("=")
        if not separator or not member_id or not file_name:
            raise typer.BadParameter(f"{spec!r}: write ID=PUBLIC_KEY_FILE", param_hint=f"--{role}")
        members.append(Member(member_id, role, load_public_key_file(Path(file_name))))  # type: ignore[arg-type]
    return members


def _load(path: Path) -> Any:
    from secagg.consortium import SignedManifest

    try:
        return SignedManifest.from_bytes(path.read_bytes())
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from None


@manifest_app.command("create")
def manifest_create(
    training_id: Annotated[str, typer.Option("--training-id", help="The training's id (unique on the server).")],
    schema: Annotated[Path, typer.Option("--schema", help="The agreed schema (secagg consortium schema merge).")],
    plan: Annotated[Path, typer.Option("--plan", help="The training plan (secagg consortium plan).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the (unsigned) manifest.")],
    bank: Annotated[list[str], typer.Option("--bank", help="ID=PUBLIC_KEY_FILE of a bank, in cohort order (repeatable).")],
    auditor: Annotated[list[str] | None, typer.Option("--auditor", help="ID=PUBLIC_KEY_FILE of an auditor (repeatable).")] = None,
    graph: Annotated[str, typer.Option("--graph", help="full or harary.")] = "full",
    degree: Annotated[int | None, typer.Option("--degree", help="Harary degree (even).")] = None,
    min_threshold_fraction: Annotated[
        float | None, typer.Option("--min-threshold-fraction", help="Raise the threshold to ceil(F * banks).")
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="A custom plan's model layout (secagg consortium plan --model-out).")
    ] = None,
) -> None:
    """Build the manifest every member then signs: roster, protocol, schema, plan (mode from the plan), and a
    custom plan's model layout. Torch-free: the layout is read as JSON and checked, never imported."""
    from clients.training.plan import FederatedError, FederatedPlan
    from clients.training.rules import TrainingRules
    from clients.training.tabular import TabularError, TabularSchema
    from secagg.consortium import Manifest, ManifestError, ProtocolRule, SignedManifest

    try:
        agreed = TabularSchema.load(schema)
        training_plan = FederatedPlan.load(plan)
        members = _members(bank, "bank") + _members(auditor, "auditor")
        layout = None
        if model is not None:
            try:
                layout = json.loads(model.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ClientError(f"cannot read the model layout {model}: {exc}") from None
        manifest = Manifest(
            training_id=training_id,
            members=tuple(members),
            protocol=ProtocolRule(training_plan.mode, graph, degree, min_threshold_fraction),  # type: ignore[arg-type]
            schema=agreed.to_dict(),
            plan=training_plan.to_dict(),
            model=layout,
        )
        TrainingRules(manifest)
    except (TabularError, FederatedError, ManifestError, ClientError, ValueError) as error:
        raise _fail("manifest create", error) from None
    _write(out, SignedManifest(manifest).to_bytes())
    typer.echo(f"wrote {out}: training {training_id}, {len(members)} members, manifest hash {manifest.hash.hex()}")


def _model_line(rules: Any) -> str:
    from dp.models import ModelLayout

    model = rules.model
    if not isinstance(model, ModelLayout):
        return str(model.kind.value)
    return (
        f"{model.factory} ({model.loss.value}, {model.parameter_count} parameters in {len(model.parameters)} tensors, "
        f"shapes {model.shapes_sha256[:16]}…)"
    )


def _summary(signed: Any) -> list[str]:
    from clients.training.rules import TrainingRules

    manifest = signed.manifest
    rules = TrainingRules(manifest)
    protocol = manifest.protocol
    lines = [
        f"training   {manifest.training_id}",
        f"hash       {manifest.hash.hex()}",
        f"members    {', '.join(f'{m.id} ({m.role.value}, {m.public_key.hex()[:16]}…)' for m in manifest.members)}",
        f"protocol   {protocol.mode.value}, {protocol.graph.value} graph, threshold {rules.threshold} of {len(rules.banks)}",
        f"schema     target {rules.schema.target} == {rules.schema.positive!r}; {len(rules.schema.columns)} columns, "
        f"{rules.schema.num_features} features",
        f"plan       {rules.plan.rounds} rounds of {_model_line(rules)}, epsilon {rules.plan.target_epsilon:g} at delta "
        f"{rules.plan.delta:g} per bank over the run"
        + ("" if rules.plan.participant_epsilon is None else f"; participant-level epsilon {rules.plan.participant_epsilon:g}"),
    ]
    for step in rules.steps[:2]:
        parameters = rules.step_parameters(step)
        kind = "statistics (exact, not DP)" if parameters.is_statistics else "each training round"
        lines.append(f"rounds     {kind}: dim {parameters.dim}, {parameters.bits} bits")
    lines.append(f"signed by  {', '.join(signed.signatures) or 'nobody yet'}")
    return lines


@manifest_app.command("sign")
def manifest_sign(
    manifest: Annotated[Path, typer.Argument(help="The manifest to sign.")],
    key: Annotated[Path, typer.Option("--key", help="Your identity key (its public key must be in the roster).")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the signed copy here (default: in place).")] = None,
    passphrase_file: Annotated[Path | None, typer.Option("--passphrase-file", help="Passphrase of the key file.")] = None,
    passphrase_env: Annotated[
        str | None, typer.Option("--passphrase-env", help="Environment variable with the passphrase.")
    ] = None,
) -> None:
    """Sign the manifest with your identity key, after printing what you sign."""
    from clients.runtime.keyfile import load_identity_key, read_passphrase
    from clients.training.plan import FederatedError
    from clients.training.tabular import TabularError
    from secagg.consortium import ManifestError

    try:
        signed = _load(manifest)
        for line in _summary(signed):
            typer.echo(line, err=True)
        identity = load_identity_key(
            key, passphrase=read_passphrase(passphrase_file=passphrase_file, passphrase_env=passphrase_env)
        )
        signed = signed.with_signature(identity)
    except (ManifestError, ClientError, TabularError, FederatedError) as error:
        raise _fail("manifest sign", error) from None
    member = signed.manifest.member_with_key(identity.public_bytes)
    _write(out or manifest, signed.to_bytes())
    typer.echo(f"{member.id} signed manifest {signed.hash.hex()} ({out or manifest})")


@manifest_app.command("combine")
def manifest_combine(
    copies: Annotated[list[Path], typer.Argument(help="Signed copies of one manifest.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the manifest with every signature.")],
) -> None:
    """Put the signatures of several signed copies of the same manifest together."""
    from secagg.consortium import ManifestError

    try:
        loaded = [_load(path) for path in copies]
        combined = loaded[0].combined(loaded[1:])
    except (ManifestError, ClientError) as error:
        raise _fail("manifest combine", error) from None
    _write(out, combined.to_bytes())
    verification = combined.verify()
    typer.echo(f"wrote {out}: {verification.describe()}")


@manifest_app.command("verify")
def manifest_verify(
    manifest: Annotated[Path, typer.Argument(help="The signed manifest.")],
    expect_hash: Annotated[str | None, typer.Option("--expect-hash", help="Refuse unless the manifest has this hash.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Check every member's signature; exit 1 unless every member signed and nobody else did."""
    from secagg.consortium import ManifestError, parse_manifest_hash

    try:
        signed = _load(manifest)
        verification = signed.verify()
        matches = expect_hash is None or parse_manifest_hash(expect_hash) == signed.hash
    except (ManifestError, ClientError) as error:
        raise _fail("manifest verify", error) from None
    ok = verification.complete and matches
    if as_json:
        typer.echo(json.dumps({
            "ok": ok, "manifest_hash": signed.hash.hex(), "training_id": signed.manifest.training_id,
            "missing": list(verification.missing), "invalid": list(verification.invalid), "unknown": list(verification.unknown),
            "hash_matches": matches,
        }, sort_keys=True))  # fmt: skip
    else:
        typer.echo(f"{'OK  ' if ok else 'FAIL'} {manifest}: training {signed.manifest.training_id}, hash {signed.hash.hex()}")
        typer.echo(f"     {verification.describe()}" + ("" if matches else f"; the hash is not {expect_hash}"))
    if not ok:
        raise typer.Exit(code=1)


@manifest_app.command("show")
def manifest_show(manifest: Annotated[Path, typer.Argument(help="A manifest (signed or not).")]) -> None:
    """Print the manifest's roster, protocol, schema and plan, and the round parameters they imply."""
    from clients.training.plan import FederatedError
    from clients.training.tabular import TabularError
    from secagg.consortium import ManifestError

    try:
        for line in _summary(_load(manifest)):
            typer.echo(line)
    except (ManifestError, ClientError, TabularError, FederatedError) as error:
        raise _fail("manifest show", error) from None


# --------------------------------------------------------------------------- the coordinator


def _deadlines(specs: list[str] | None) -> dict[str, float]:
    from secagg.rounds import Round

    deadlines: dict[str, float] = {}
    for spec in specs or []:
        stage, separator, seconds = spec.partition("=")
        if not separator or stage not in {item.key for item in Round}:
            raise typer.BadParameter(f"{spec!r}: write R0=SECONDS (R0..R4)", param_hint="--deadline")
        try:
            deadlines[stage] = float(seconds)
        except ValueError:
            raise typer.BadParameter(f"{spec!r}: seconds must be a number", param_hint="--deadline") from None
    return deadlines


@consortium_app.command("run")
def run_command(
    manifest: Annotated[Path, typer.Option("--manifest", help="The manifest every member signed.")],
    server: Annotated[str, typer.Option("--server", help="The aggregation server's URL.")],
    admin_token_file: Annotated[Path, typer.Option("--admin-token-file", help="The server's admin token file.")],
    ca_bundle: Annotated[
        Path | None, typer.Option("--ca-bundle", help="CA bundle to verify the server's TLS certificate.")
    ] = None,
    deadline: Annotated[
        list[str] | None,
        typer.Option("--deadline", help="A stage's deadline, R0=SECONDS (repeatable; R0 covers local training)."),
    ] = None,
    max_attempts: Annotated[int, typer.Option("--max-attempts", min=1, help="Rounds opened per step before giving up.")] = 3,
    server_timeout: Annotated[
        float, typer.Option("--server-timeout", min=0, help="Seconds to wait for an unreachable server.")
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as one JSON line on stdout.")] = False,
) -> None:
    """Coordinate the training: enrol the members, register the manifest, open every round, reopen aborted ones."""
    from rich.console import Console
    from rich.live import Live

    from clients.consortium.admin import AdminClient, read_admin_token
    from clients.consortium.coordinator import progress_table, run_training
    from clients.training.plan import FederatedError
    from clients.training.tabular import TabularError
    from secagg.consortium import ManifestError

    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=120)
    try:
        signed = _load(manifest)
        signed.require_complete()
        token = read_admin_token(admin_token_file)
        stage_deadlines = _deadlines(deadline)
        title = f"training {signed.manifest.training_id} on {server}"
        verify: bool | str = str(ca_bundle) if ca_bundle is not None else True
        with AdminClient(server, token, verify=verify, unavailable_timeout=server_timeout) as admin:
            if console.is_terminal:
                with Live(progress_table([], title), console=console, refresh_per_second=4) as live:
                    summary = run_training(
                        admin, signed, deadlines=stage_deadlines, max_attempts=max_attempts,
                        on_progress=lambda rows: live.update(progress_table(rows, title)),
                        log=lambda line: live.console.print(line, highlight=False),
                    )  # fmt: skip
            else:
                summary = run_training(
                    admin, signed, deadlines=stage_deadlines, max_attempts=max_attempts,
                    log=lambda line: print(f"secagg consortium run: {line}", file=sys.stderr, flush=True),
                )  # fmt: skip
                console.print(progress_table_from_summary(summary, title))
    except (ManifestError, TabularError, FederatedError, ClientError) as error:
        raise _fail("run", error) from None
    console.print(
        f"training {summary['training_id']}: {summary['rounds_completed']} of {summary['rounds_planned']} rounds completed, "
        f"{summary['aborted_rounds']} aborted round(s) reopened, {summary['seconds']:.0f} s"
    )
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))


def progress_table_from_summary(summary: dict[str, Any], title: str) -> Any:
    from clients.consortium.coordinator import StepProgress, progress_table

    rows = [
        StepProgress(
            step=item["step"],
            kind=item["kind"],
            round_id=item["round_id"],
            stage=str(item["outcome"]),
            attempts=item["attempts"],
            outcome=item["outcome"],
            survivors=item["survivors"],
            seconds=item["seconds"],
        )
        for item in summary["steps"]
    ]
    return progress_table(rows, title)


# --------------------------------------------------------------------------- example data


@consortium_app.command("example-data")
def example_data(
    out: Annotated[Path, typer.Option("--out", help="Directory for test.csv and one bank-<x>.csv per bank.")],
    banks: Annotated[int, typer.Option("--banks", min=2, max=5, help="How many banks (regions dealt round-robin).")] = 3,
    fraction: Annotated[
        float, typer.Option("--fraction", min=0.01, max=1.0, help="Keep this stratified share of each bank's loans.")
    ] = 1.0,
) -> None:
    """Write the shipped Lending Club loans (SHA-256 checked) as a test set and one CSV per bank, by region."""
    from clients.training.datasets import DatasetError, load_lending_club, split_regions

    try:
        split = split_regions(load_lending_club(), banks=banks, keep_fraction=fraction)
    except DatasetError as error:
        raise _fail("example-data", error) from None
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "test.csv", split.test.to_csv_bytes())
    for bank_id, table in split.banks.items():
        _write(out / f"{bank_id}.csv", table.to_csv_bytes())
        typer.echo(f"{out / f'{bank_id}.csv'}: {table.rows} loans")
    typer.echo(f"{out / 'test.csv'}: {split.test.rows} loans (target Class, positive value bad)")
