"""``secagg audit``: verify privacy ledgers and build the auditor's report."""

from __future__ import annotations

import typer

audit_app = typer.Typer(help="Verify privacy ledgers and build the auditor's report.", no_args_is_help=True)
