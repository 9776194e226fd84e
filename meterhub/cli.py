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
def collect(
    status: Annotated[bool, typer.Option("--status", help="Show the counters of running collectors and exit.")] = False,
) -> None:
    """Run a collector: subscribe, decode, store; acknowledge only what is committed."""
    from collector.service import CollectorService, collector_status
    from meterhub.broker import BrokerAddress
    from meterhub.store import Store

    settings = _settings()
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


simulate_app = typer.Typer(no_args_is_help=True, help="Virtual meters speaking the real protocols.")
app.add_typer(simulate_app, name="simulate")


@simulate_app.command("mqtt")
def simulate_mqtt(
    meters: Annotated[int, typer.Option(min=1, help="Fleet size.")] = 100,
    protocol: Annotated[str, typer.Option(help="native, huawei, cjt188")] = "native",
    interval_s: Annotated[float, typer.Option(min=1, help="Simulated seconds between readings.")] = 900,
    per_message: Annotated[int, typer.Option(min=1, help="Readings per message (NB-IoT batches: 96).")] = 1,
    speed: Annotated[float, typer.Option(min=0.001, help="Simulated time per real time.")] = 1.0,
    ticks: Annotated[int | None, typer.Option(help="Stop after this many intervals.")] = None,
    duplicates: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    out_of_order: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    late: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    garbage: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    clock_skew_s: Annotated[float, typer.Option(min=0)] = 0.0,
    rollover: Annotated[float, typer.Option(min=0, max=1, help="Share of meters about to roll over.")] = 0.0,
    outage: Annotated[float, typer.Option(min=0, max=1, help="Share of meters that go silent, then burst.")] = 0.0,
    seed: Annotated[int, typer.Option()] = 1,
) -> None:
    """Publish a fleet of virtual meters to the broker at mqtt.url."""
    from datetime import timedelta

    from meterhub.broker import BrokerAddress
    from simulators.mqtt_fleet import Faults, Fleet, FleetRunner, cjt188_push, huawei_json, native_json

    settings = _settings()
    if not settings.mqtt.url:
        errors.print("[red]error:[/red] mqtt.url (METERHUB_MQTT_URL) is not set: which broker?")
        raise typer.Exit(2)
    encoders = {"native": native_json(), "huawei": huawei_json(), "cjt188": cjt188_push()}
    if protocol not in encoders:
        errors.print(f"[red]error:[/red] --protocol must be one of {', '.join(encoders)}")
        raise typer.Exit(2)
    faults = Faults(
        duplicate=duplicates,
        out_of_order=out_of_order,
        late=late,
        garbage=garbage,
        clock_skew_s=clock_skew_s,
        rollover_share=rollover,
        outage_share=outage,
        outage_intervals=8 if outage else 0,
    )
    fleet = Fleet(meters, encoders[protocol], timedelta(seconds=interval_s), per_message, faults, seed)
    broker = BrokerAddress.parse(settings.mqtt.url)
    runner = FleetRunner(fleet, broker.host, broker.port, speed=speed, mqtt5=broker.mqtt5)
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    console.print(f"{meters} meters publishing {protocol} to {settings.mqtt.url} (Ctrl-C stops)")
    sent = runner.run(ticks)
    console.print(f"sent {sent} messages")


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
