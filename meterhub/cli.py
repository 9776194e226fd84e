"""The `meterhub` command line."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from meterhub.settings import Settings, SettingsError, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Gas meter telemetry, valves and billing.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema and upkeep.")
app.add_typer(db_app, name="db")
console = Console(stderr=False)
errors = Console(stderr=True)


class State:
    config: Path | None = None


def _settings() -> Settings:
    from meterhub import logs

    try:
        settings = load_settings(State.config)
    except SettingsError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    logs.configure(settings.log)
    return settings


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into a normal exit so that atexit handlers (embedded server release) run."""

    def handler(signum: int, frame: FrameType | None) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


@app.callback()
def main_options(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML settings file (default: ./meterhub.toml when present)."),
    ] = None,
) -> None:
    State.config = config
    _exit_on_sigterm()


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending schema migrations (a no-op when up to date)."""
    from meterhub.store import Store

    with Store(_settings()) as store:
        applied = store.migrate()
        store.maintain()
        console.print(f"database: {store.describe()}")
        if applied:
            for name in applied:
                console.print(f"applied {name}")
        else:
            console.print("schema is up to date")


@db_app.command("status")
def db_status() -> None:
    """Show which migrations are applied."""
    from meterhub.store import Store

    with Store(_settings()) as store:
        rows = store.migration_status()
        table = Table(title=store.describe())
        for column in ("version", "name", "variant", "applied at", "state"):
            table.add_column(column)
        for row in rows:
            state = "changed since applied" if row.changed else ("applied" if row.applied_at else "pending")
            applied = row.applied_at.isoformat(timespec="seconds") if row.applied_at else ""
            table.add_row(f"{row.version:04d}", row.name, row.variant or "", applied, state)
        console.print(table)
        if any(r.changed for r in rows):
            raise typer.Exit(1)


@db_app.command("maintain")
def db_maintain() -> None:
    """Create reading partitions ahead and refresh the daily consumption view."""
    from meterhub.store import Store

    with Store(_settings()) as store:
        result = store.maintain()
        console.print(
            f"partitions created: {result['partitions_created']}, daily view refreshed: {result['daily_refreshed']}"
        )


@app.command()
def demo(
    meters: Annotated[int, typer.Option(min=1, max=100_000, help="How many demo meters to create.")] = 240,
    days: Annotated[int, typer.Option(min=1, max=400, help="Days of history per meter.")] = 60,
) -> None:
    """Start the embedded store, migrate, seed demo data and show what is there."""
    from meterhub.demo import run_demo

    run_demo(_settings(), console, meters=meters, days=days)


def main() -> None:
    app()
