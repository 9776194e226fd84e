"""`meterhub db`: schema and upkeep."""

from __future__ import annotations

import typer
from rich.table import Table

from meterhub.cli.base import app, console, load

db_app = typer.Typer(no_args_is_help=True, help="Database schema and upkeep.")
app.add_typer(db_app, name="db")


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending schema migrations (a no-op when up to date)."""
    from meterhub.store import Store

    with Store(load()) as store:
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

    with Store(load()) as store:
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

    with Store(load()) as store:
        result = store.maintain()
        console.print(
            f"partitions created: {result['partitions_created']}, daily view refreshed: {result['daily_refreshed']}"
        )
