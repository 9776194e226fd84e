"""`meterhub collect`: run a collector, or show the counters of collectors."""

from __future__ import annotations

import signal
from typing import Annotated

import typer
from rich.table import Table

from meterhub.cli.base import app, console, errors, load


@app.command()
def collect(
    status: Annotated[bool, typer.Option("--status", help="Show the counters of running collectors and exit.")] = False,
) -> None:
    """Run a collector: subscribe, decode, store; acknowledge only what is committed."""
    from collector.service import CollectorService, collector_status
    from meterhub.broker import BrokerAddress
    from meterhub.store import Store

    settings = load()
    with Store(settings) as store:
        if status:
            _print_collector_status(collector_status(store))
            return
        if not settings.mqtt.url:
            errors.print("[red]error:[/red] mqtt.url (METERHUB_MQTT_URL) is not set: which broker?")
            raise typer.Exit(2)
        store.migrate()
        service = CollectorService(settings, store, BrokerAddress.parse(settings.mqtt.url))
        service.start()
        signal.signal(signal.SIGINT, lambda *_: service._stop.set())
        signal.signal(signal.SIGTERM, lambda *_: service._stop.set())
        console.print(f"collecting from {settings.mqtt.url} into {store.describe()} (Ctrl-C stops)")
        service.wait()
        service.stop()
        snap = service.counters.snapshot()
        console.print(
            f"stopped: {snap['messages_received']} messages received, {snap['readings_stored']} readings stored, "
            f"{snap['readings_duplicate']} duplicates, {snap['messages_rejected']} rejected"
        )


def _print_collector_status(rows: list[dict[str, object]]) -> None:
    table = Table(title="collectors")
    columns = (
        "collector",
        "state",
        "received",
        "committed",
        "rejected",
        "in flight",
        "readings stored",
        "duplicates",
        "store errors",
    )
    for column in columns:
        table.add_column(column)
    for row in rows:
        c = row["counters"]
        assert isinstance(c, dict)
        state = "running" if row["alive"] else ("stopped" if row["stopped_at"] else "not responding")
        table.add_row(
            str(row["collector_id"]),
            state,
            *(
                str(c.get(k, ""))
                for k in (
                    "messages_received",
                    "messages_committed",
                    "messages_rejected",
                    "messages_in_flight",
                    "readings_stored",
                    "readings_duplicate",
                    "store_errors",
                )
            ),
        )
    console.print(table)
