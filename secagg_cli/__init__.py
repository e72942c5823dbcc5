"""The ``secagg`` command line.

Every subcommand lives with the package it drives and is registered here. Heavy
imports (torch, FastAPI) stay inside the subcommands, so ``secagg server`` and
``secagg audit`` run on machines without torch.
"""

from __future__ import annotations

import typer

from clients.consortium.audit_fetch import fetch_command
from clients.consortium.cli import consortium_app
from clients.harness.demo import demo_command
from clients.harness.simulation import simulate_command
from clients.runtime.cli import client_app
from clients.training.cli import evaluate_command, predict_command, train_command
from dp.audit.cli import audit_app
from dp.cli import dp_app
from service.cli import db_app, server_command

app = typer.Typer(
    name="secagg",
    help="Secure aggregation with differential privacy for federated learning between banks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command(name="simulate")(simulate_command)
app.add_typer(client_app, name="client")
app.add_typer(dp_app, name="dp")
audit_app.command(name="fetch")(fetch_command)
app.add_typer(audit_app, name="audit")
app.command(name="server")(server_command)
app.add_typer(db_app, name="db")
app.command(name="train")(train_command)
app.command(name="predict")(predict_command)
app.command(name="evaluate")(evaluate_command)
app.add_typer(consortium_app, name="consortium")
app.command(name="demo")(demo_command)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
