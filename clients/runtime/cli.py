"""``secagg client``: the bank's command line (key generation and running a round).

Exit codes (:class:`clients.runtime.errors.ExitCode`): 0 success; 2 usage or input error;
3 the local policy refused the round (nothing was sent); 4 this client's protocol
session refused a server message (named core reason); 5 the server aborted the
round; 6 the state file forbids resuming (changed input, finished round, diverging
replay); 7 the server refused a request (4xx, by problem type); 8 the server stayed
unavailable past the retry budget; 9 key file error; 10 excluded from the round.

Progress goes to stderr with rich when stderr is a terminal, and nowhere otherwise;
``--json`` prints one JSON summary line on stdout.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from clients.runtime.errors import ClientError, ExitCode

client_app = typer.Typer(
    name="client",
    help="The bank's client: generate an identity key, run a round against a server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_STATE_DIR = Path(".secagg-client-state")


def _fail(error: ClientError) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {error}", markup=True, highlight=False)
    return typer.Exit(code=int(error.exit_code))


@client_app.command("keygen")
def keygen_command(
    out: Annotated[Path, typer.Option("--out", help="Where to write the private key (PKCS#8 PEM, mode 0600).")],
    passphrase_file: Annotated[
        Path | None, typer.Option("--passphrase-file", help="Encrypt the key with the passphrase in this file.")
    ] = None,
    passphrase_env: Annotated[
        str | None, typer.Option("--passphrase-env", help="Encrypt the key with the passphrase in this environment variable.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key file.")] = False,
) -> None:
    """Generate an Ed25519 identity key; print the public key (hex, also written to KEY.pub)."""
    from clients.runtime.keyfile import generate_key_file, read_passphrase

    try:
        passphrase = read_passphrase(passphrase_file=passphrase_file, passphrase_env=passphrase_env)
        generated = generate_key_file(out, passphrase=passphrase, overwrite=force)
    except ClientError as error:
        raise _fail(error) from None
    print(generated.public_key_hex)
    print(f"private key: {generated.key_path} (mode 0600); public key: {generated.public_key_path}", file=sys.stderr)


@client_app.command("run")
def run_command(
    server: Annotated[str, typer.Option("--server", help="Server base URL, e.g. https://aggregator.example:8443.")],
    key: Annotated[Path, typer.Option("--key", help="Identity key file (from `secagg client keygen`).")],
    round_id: Annotated[str, typer.Option("--round", help="Round id (32 hex digits).")],
    input_path: Annotated[
        Path, typer.Option("--input", help="The update: a 1-D .npy vector (unsigned = ring vector; float = needs --clip).")
    ],
    participant_id: Annotated[
        str, typer.Option("--participant-id", help="This bank's enrolled participant id (the request key id).")
    ],
    policy_path: Annotated[Path | None, typer.Option("--policy", help="Local policy file (.json or .toml).")] = None,
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Directory of round state files (secrets; mode 0700).")
    ] = DEFAULT_STATE_DIR,
    clip: Annotated[float | None, typer.Option("--clip", help="For float inputs: the bound |x| <= clip.")] = None,
    scale: Annotated[
        float | None, typer.Option("--scale", help="For float inputs: fixed-point scale (default: finest safe).")
    ] = None,
    passphrase_file: Annotated[Path | None, typer.Option("--passphrase-file", help="Passphrase of the key file.")] = None,
    passphrase_env: Annotated[
        str | None, typer.Option("--passphrase-env", help="Environment variable holding the passphrase.")
    ] = None,
    ca_bundle: Annotated[
        Path | None, typer.Option("--ca-bundle", help="CA bundle to verify the server's TLS certificate.")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Give up waiting for any one stage after this many seconds.")
    ] = 3600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
) -> None:
    """Run (or resume) this bank's side of one round over HTTP.

    Checks the round against the local policy before sending anything; keeps a state
    file (secrets, mode 0600) in --state-dir so that a crashed run resumes with
    byte-identical messages. Exit codes: 0 ok, 2 usage/input, 3 policy refused
    (nothing sent), 4 this client refused a server message, 5 round aborted by the
    server, 6 resume refused, 7 server refused a request, 8 server unavailable,
    9 key file, 10 excluded from the round.
    """
    from rich.console import Console

    from clients.runtime.http_transport import HttpTransport
    from clients.runtime.inputs import input_from_npy
    from clients.runtime.keyfile import load_identity_key, read_passphrase
    from clients.runtime.policy import ClientPolicy
    from clients.runtime.retry import PollSchedule
    from clients.runtime.runner import EventKind, RoundEvent, run_round

    errors = Console(stderr=True)
    interactive = errors.is_terminal

    def show(event: RoundEvent) -> None:
        if not interactive:
            return
        where = f"{event.protocol_round.key} " if event.protocol_round else ""
        style = {EventKind.FINISHED: "green", EventKind.RESUMED: "yellow"}.get(event.kind, "cyan")
        errors.print(f"[{style}]{event.kind.value}[/{style}] {where}{event.detail}", highlight=False)

    def show_retry(attempt: int, delay: float, description: str) -> None:
        if interactive:
            errors.print(f"[yellow]retry {attempt}[/yellow] in {delay:.2f} s: {description}", highlight=False)

    try:
        passphrase = read_passphrase(passphrase_file=passphrase_file, passphrase_env=passphrase_env)
        identity = load_identity_key(key, passphrase=passphrase)
        policy = ClientPolicy.load(policy_path) if policy_path is not None else ClientPolicy()
        client_input = input_from_npy(input_path, clip=clip, scale=scale)
        with (
            HttpTransport(
                server,
                key_id=participant_id,
                identity=identity,
                verify=str(ca_bundle) if ca_bundle is not None else True,
                on_retry=show_retry,
            ) as transport,
            errors.status("running the round", spinner="dots") if interactive else contextlib.nullcontext(),
        ):
            outcome = run_round(
                transport=transport,
                round_id=round_id,
                identity=identity,
                client_input=client_input,
                policy=policy,
                state_dir=state_dir,
                participant_id=participant_id,
                poll=PollSchedule(timeout=timeout),
                on_event=show,
            )
    except ClientError as error:
        raise _fail(error) from None
    except ValueError as error:
        errors.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(code=int(ExitCode.USAGE)) from None
    summary = {
        "round_id": outcome.round_id,
        "participant_index": outcome.participant_id,
        "outcome": outcome.outcome.value,
        "resumed": outcome.resumed,
        "messages_sent": outcome.messages_sent,
        "bytes_sent": outcome.bytes_sent,
        "survivors": list(outcome.result.survivors) if outcome.result is not None else None,
    }
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    elif interactive:
        errors.print(f"[green]{outcome.outcome.value}[/green]: round {outcome.round_id}", highlight=False)
