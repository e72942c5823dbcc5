"""``python -m service``: the same as ``secagg server`` (for process supervisors and tests)."""

from __future__ import annotations

import typer

from service.cli import server_command


def main() -> None:
    typer.run(server_command)


if __name__ == "__main__":
    main()
