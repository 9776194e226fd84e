"""`meterhub demo`: the whole platform on one machine."""

from __future__ import annotations

from typing import Annotated

import typer

from meterhub.cli.base import app, console, load


@app.command()
def demo(
    meters: Annotated[int, typer.Option(min=1, max=100_000, help="How many demo meters to create.")] = 240,
    days: Annotated[int, typer.Option(min=1, max=400, help="Days of history per meter.")] = 60,
) -> None:
    """Start the embedded store, migrate, seed demo data and show what is there."""
    from meterhub.demo import run_demo

    run_demo(load(), console, meters=meters, days=days)
