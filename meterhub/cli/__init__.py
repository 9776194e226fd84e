"""The `meterhub` command line: one module per area, registered on one typer app."""

from meterhub.cli import bill, collect, command, db, demo, readings, serve, simulate  # noqa: F401  (they register)
from meterhub.cli.base import app


def main() -> None:
    app()
