"""The `meterhub` command line: one module per area, registered on one typer app."""

from meterhub.cli import bill, collect, command, db, demo, readings, serve, simulate, sms, user  # noqa: F401
from meterhub.cli.base import app


def main() -> None:
    app()
