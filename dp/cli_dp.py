"""``secagg dp``: privacy accounting from the command line."""

from __future__ import annotations

import typer

dp_app = typer.Typer(help="Privacy accounting: epsilon for a mechanism, and noise for a target epsilon.", no_args_is_help=True)
