"""``secagg audit fetch``: the auditor downloads the server's ledger with a signed request.

The auditor is a member of the consortium (role ``auditor`` in the manifest, enrolled
with its identity key); every request is signed with that key (``docs/API.md`` section 3,
:func:`secagg.http_contract.sign_request`). It writes::

    <out>/server-ledger.jsonl         GET /v1/audit/ledger, byte for byte
    <out>/server-ledger.jsonl.head    GET /v1/audit/ledger/head
    <out>/<training>.manifest.json    GET /v1/audit/trainings/<training> (with --training):
                                      the manifest the server registered, to compare with
                                      the auditor's own signed copy

The server's ledger public key is not fetched: it must come from the operator out of band
(``<data-dir>/server-ledger.key.pub``), or the server could sign a ledger of its own
invention. Verify with ``secagg audit verify ... --server-ledger <out>/server-ledger.jsonl
--server-public-key server-ledger.key.pub``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from clients.runtime.errors import ClientError, ExitCode

MAX_LEDGER_BYTES = 1 << 30
"""The largest server ledger fetched (about two million round records); a larger answer is refused unread."""
MAX_DOCUMENT_BYTES = 4 << 20


def fetch_command(
    server: Annotated[str, typer.Option("--server", help="The aggregation server's URL.")],
    key: Annotated[Path, typer.Option("--key", help="The auditor's identity key.")],
    participant_id: Annotated[str, typer.Option("--participant-id", help="The auditor's enrolled id.")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write the ledger, its head (and the manifest) into.")],
    training: Annotated[str | None, typer.Option("--training", help="Also fetch this training's registered manifest.")] = None,
    passphrase_file: Annotated[Path | None, typer.Option("--passphrase-file", help="Passphrase of the key file.")] = None,
    passphrase_env: Annotated[
        str | None, typer.Option("--passphrase-env", help="Environment variable with the passphrase.")
    ] = None,
    ca_bundle: Annotated[
        Path | None, typer.Option("--ca-bundle", help="CA bundle to verify the server's TLS certificate.")
    ] = None,
) -> None:
    """Download the server's signed round ledger (and a training's manifest) as the auditor, with signed requests."""
    from clients.runtime.http_transport import HttpTransport
    from clients.runtime.keyfile import load_identity_key, read_passphrase
    from dp.atomic_files import PUBLIC_MODE, write_atomic

    try:
        identity = load_identity_key(
            key, passphrase=read_passphrase(passphrase_file=passphrase_file, passphrase_env=passphrase_env)
        )
        verify: bool | str = str(ca_bundle) if ca_bundle is not None else True
        with HttpTransport(server, key_id=participant_id, identity=identity, verify=verify) as transport:
            wanted = {
                "server-ledger.jsonl": ("/v1/audit/ledger", MAX_LEDGER_BYTES),
                "server-ledger.jsonl.head": ("/v1/audit/ledger/head", MAX_DOCUMENT_BYTES),
            }
            if training is not None:
                wanted[f"{training}.manifest.json"] = (f"/v1/audit/trainings/{training}", MAX_DOCUMENT_BYTES)
            fetched: dict[str, bytes] = {}
            for name, (path, cap) in wanted.items():
                response = transport.signed_get(path, max_bytes=cap)
                if response.status_code != 200:
                    transport.refuse(response)
                fetched[name] = response.content
    except ClientError as error:
        typer.echo(f"secagg audit fetch: {error}", err=True)
        raise typer.Exit(code=int(error.exit_code)) from None
    except ValueError as error:
        typer.echo(f"secagg audit fetch: {error}", err=True)
        raise typer.Exit(code=int(ExitCode.USAGE)) from None
    out.mkdir(parents=True, exist_ok=True)
    for name, content in fetched.items():
        if name.endswith(".manifest.json"):
            content = (json.dumps(json.loads(content)["document"], indent=2, sort_keys=True) + "\n").encode("ascii")
        write_atomic(out / name, content, mode=PUBLIC_MODE)
        typer.echo(f"{out / name}: {len(content)} bytes")
