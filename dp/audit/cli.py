"""``secagg audit``: verify privacy ledgers and build the auditor's report.

``secagg audit verify LEDGER... [--public-key [PARTY=]FILE]... [--server-ledger FILE]
[--server-public-key FILE] [--json]`` checks every ledger (chain, signatures, signed head,
recomputed epsilons) and, given the server's ledger, cross-checks them. Exit status: 0
when nothing is found, 1 on any finding, 2 on a usage error (unreadable file, bad key).

``secagg audit report LEDGER... --out FILE [--format html|json|csv]`` (same key and
server options) writes the report atomically; it exits 1 if anything failed to verify,
after writing the report that says so.

``--anchor FILE`` (repeatable) gives a ``.head`` file the auditor kept from an earlier
audit; the ledger (or the server ledger) of that owner must still contain what it
covered, which catches a party rolling back or rewriting its own ledger.

``--training ID`` scopes the audit to one training of a shared server: every ledger and
the whole server ledger are still verified, but the cross-check and the report cover only
that training's rounds. ``--manifest FILE`` (the consortium's signed manifest, which the
auditor signed too) implies ``--training`` and pins every bank's key from its roster; the
manifest must be signed by every member. ``secagg audit fetch`` downloads the server's
ledger with a signed request (``clients.consortium.audit_fetch``).

A public key file holds the raw 32-byte Ed25519 key as 64 hex digits, as raw bytes, or
as PEM. ``--public-key FILE`` pins the key of the only ledger given; with several
ledgers, name the party: ``--public-key bank-a=keys/bank-a.pub``. Neither torch nor (for
``verify``) matplotlib is imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dp.audit.chain import LedgerError, atomic_write, load_public_key
from dp.audit.report_format import ReportFormat
from dp.errors import DPError

if TYPE_CHECKING:
    from dp.audit.report import Audit

audit_app = typer.Typer(help="Verify privacy ledgers and build the auditor's report.", no_args_is_help=True)

LedgerPaths = Annotated[
    list[Path],
    typer.Argument(help="Privacy ledgers (JSONL), one per party.", exists=True, dir_okay=False, readable=True),
]
PublicKeys = Annotated[
    list[str] | None,
    typer.Option("--public-key", help="Pin a party's Ed25519 key: FILE (single ledger) or PARTY=FILE. Repeatable."),
]
ServerLedgerPath = Annotated[
    Path | None,
    typer.Option(
        "--server-ledger", help="The server's signed round ledger, to cross-check against.", exists=True, dir_okay=False
    ),
]
Anchors = Annotated[
    list[Path] | None,
    typer.Option(
        "--anchor",
        help="A .head file kept from an earlier audit: the ledger must still extend it (catches roll-backs). Repeatable.",
        exists=True,
        dir_okay=False,
    ),
]
ServerPublicKey = Annotated[
    Path | None,
    typer.Option("--server-public-key", help="Pin the server's Ed25519 key.", exists=True, dir_okay=False),
]
Training = Annotated[
    str | None, typer.Option("--training", help="Scope the cross-check and the report to this training's rounds.")
]
ManifestFile = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        help="The training's signed manifest: pins the banks' keys and scopes the audit.",
        exists=True,
        dir_okay=False,
    ),
]


def _manifest_scope(manifest: Path | None, training: str | None) -> tuple[str | None, dict[str, bytes]]:
    """The training id and the banks' pinned keys a signed manifest gives (nothing without one)."""
    if manifest is None:
        return training, {}
    from secagg.consortium import ManifestError, MemberRole, SignedManifest

    try:
        signed = SignedManifest.from_bytes(manifest.read_bytes())
        signed.require_complete()
    except (ManifestError, OSError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--manifest") from exc
    if training is not None and training != signed.manifest.training_id:
        raise typer.BadParameter(f"the manifest is for {signed.manifest.training_id}, not {training}", param_hint="--training")
    keys = {member.id: member.public_key for member in signed.manifest.members if member.role is MemberRole.BANK}
    return signed.manifest.training_id, keys


def _keys(ledgers: list[Path], specs: list[str] | None) -> tuple[dict[Path, bytes], dict[str, bytes]]:
    by_path: dict[Path, bytes] = {}
    by_party: dict[str, bytes] = {}
    for spec in specs or []:
        party, separator, file_name = spec.partition("=")
        try:
            if separator:
                if not party:
                    raise typer.BadParameter(f"{spec!r}: empty party name", param_hint="--public-key")
                if party in by_party:
                    raise typer.BadParameter(f"two keys for party {party!r}", param_hint="--public-key")
                by_party[party] = load_public_key(Path(file_name))
            else:
                if len(ledgers) != 1:
                    raise typer.BadParameter("with several ledgers, write PARTY=FILE", param_hint="--public-key")
                if by_path:
                    raise typer.BadParameter("only one bare key for one ledger", param_hint="--public-key")
                by_path[ledgers[0]] = load_public_key(Path(spec))
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {exc.filename}: {exc.strerror}", param_hint="--public-key") from exc
        except DPError as exc:
            raise typer.BadParameter(str(exc), param_hint="--public-key") from exc
    return by_path, by_party


def _audit(
    ledgers: list[Path],
    public_key: list[str] | None,
    server_ledger: Path | None,
    server_public_key: Path | None,
    anchors: list[Path] | None,
    training: str | None = None,
    manifest: Path | None = None,
) -> Audit:
    from dp.audit.report import run_audit

    by_path, by_party = _keys(ledgers, public_key)
    training, from_manifest = _manifest_scope(manifest, training)
    for party, key in from_manifest.items():
        if by_party.setdefault(party, key) != key:
            raise typer.BadParameter(f"the key given for {party} is not the manifest's", param_hint="--public-key")
    server_key = None
    if server_public_key is not None:
        try:
            server_key = load_public_key(server_public_key)
        except DPError as exc:
            raise typer.BadParameter(str(exc), param_hint="--server-public-key") from exc
    try:
        return run_audit(
            ledgers,
            keys_by_path=by_path,
            keys_by_party=by_party,
            server_ledger=server_ledger,
            server_public_key=server_key,
            anchors=anchors or (),
            training=training,
        )
    except LedgerError as exc:
        raise typer.BadParameter(str(exc)) from exc


@audit_app.command("verify")
def verify_command(
    ledgers: LedgerPaths,
    public_key: PublicKeys = None,
    server_ledger: ServerLedgerPath = None,
    server_public_key: ServerPublicKey = None,
    anchor: Anchors = None,
    training: Training = None,
    manifest: ManifestFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Verify privacy ledgers: integrity, signatures, truncation and every epsilon claim."""
    audit = _audit(ledgers, public_key, server_ledger, server_public_key, anchor, training, manifest)
    if as_json:
        payload = {
            "ok": audit.ok,
            "training": audit.training,
            "ledgers": [ledger.to_dict() for ledger in audit.ledgers],
            "server_ledger": None if audit.server is None else audit.server.to_dict(),
            "cross_check": [finding.to_dict() for finding in audit.cross_findings],
            "parties_without_ledger": list(audit.parties_without_ledger),
        }
        typer.echo(json.dumps(payload, sort_keys=True))
    else:
        for ledger in audit.ledgers:
            pinned = "key pinned" if ledger.key_pinned else "key NOT pinned"
            status = "OK  " if ledger.ok else "FAIL"
            typer.echo(f"{status} {ledger.path} ({ledger.party or '?'}; {len(ledger.entries)} entries; {pinned})")
            for finding in ledger.findings:
                typer.echo(f"     {finding}")
        if audit.server is not None:
            status = "OK  " if audit.server.ok else "FAIL"
            typer.echo(f"{status} {audit.server.path} (server {audit.server.server or '?'}; {len(audit.server.entries)} rounds)")
            for finding in audit.server.findings:
                typer.echo(f"     {finding}")
            for cross in audit.cross_findings:
                typer.echo(
                    f"FAIL cross-check {cross.party}, round {cross.round_id}: {cross.finding.kind.value}: {cross.finding.detail}"
                )
            if audit.parties_without_ledger:
                typer.echo(f"note: no ledger given for {', '.join(audit.parties_without_ledger)}")
    if not audit.ok:
        raise typer.Exit(code=1)


@audit_app.command("report")
def report_command(
    ledgers: LedgerPaths,
    out: Annotated[Path, typer.Option("--out", help="Where to write the report.", dir_okay=False, writable=True)],
    report_format: Annotated[
        ReportFormat, typer.Option("--format", help="The report's format.", case_sensitive=False)
    ] = ReportFormat.HTML,
    public_key: PublicKeys = None,
    server_ledger: ServerLedgerPath = None,
    server_public_key: ServerPublicKey = None,
    anchor: Anchors = None,
    training: Training = None,
    manifest: ManifestFile = None,
) -> None:
    """Build the auditor's report (one self-contained HTML file, or JSON / CSV)."""
    from dp.audit.report import build_report, render

    if not out.parent.is_dir():
        raise typer.BadParameter(f"directory {out.parent} does not exist", param_hint="--out")
    audit = _audit(ledgers, public_key, server_ledger, server_public_key, anchor, training, manifest)
    report = build_report(audit)
    atomic_write(out, render(report, report_format).encode("utf-8"))
    typer.echo(report.verdict)
    typer.echo(f"wrote {out}")
    if not report.ok:
        raise typer.Exit(code=1)
