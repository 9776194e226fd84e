"""`meterhub demo`: the whole platform on one machine."""

from __future__ import annotations

from typing import Annotated

import typer

from meterhub.cli.base import app, console, errors, load


@app.command()
def demo(
    meters: Annotated[
        int, typer.Option(min=1, max=100_000, help="Meters on MQTT (besides 6 Modbus and 8 serial ones).")
    ] = 3000,
    days: Annotated[
        int | None, typer.Option(min=1, max=1000, help="Days of history (default: back to this month a year ago).")
    ] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Console port (0: any free one).")] = None,
    interval_s: Annotated[float, typer.Option(min=1, help="Seconds between two readings of an MQTT meter.")] = 300,
    poll_s: Annotated[float, typer.Option(min=1, help="Seconds between two polls of a Modbus or serial meter.")] = 60,
    run_for: Annotated[float | None, typer.Option(min=0, help="Stop by itself after this many seconds live.")] = None,
    live: Annotated[bool, typer.Option("--live/--no-live", help="Run the platform, or only prepare the data.")] = True,
) -> None:
    """Embedded PostgreSQL and MQTT broker, a simulated utility with a year of history and bills, the collector
    and the console with demo logins. Ctrl-C stops everything; the next start resumes."""
    from meterhub.demo import DemoError, DemoOptions, run_demo

    options = DemoOptions(
        meters=meters, days=days, live=live, port=port, interval_s=interval_s, poll_s=poll_s, run_for=run_for
    )
    try:
        run_demo(load(), console, options)
    except DemoError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
