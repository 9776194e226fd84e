"""The `meterhub` command line."""

from __future__ import annotations

import signal
import sys
from decimal import Decimal
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


@simulate_app.command("modbus")
def simulate_modbus(
    profile: Annotated[list[str], typer.Option(help="Device profile per unit (repeat); units count from 1.")] = [  # noqa: B006
        "generic_residential"
    ],
    port: Annotated[int, typer.Option(help="TCP port (Modbus TCP, or RTU over TCP with --framer rtu).")] = 5020,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    framer: Annotated[str, typer.Option(help="socket or rtu")] = "socket",
    serial: Annotated[str | None, typer.Option(help="Serve Modbus RTU on this serial port instead.")] = None,
    baudrate: Annotated[int, typer.Option()] = 9600,
    speed: Annotated[float, typer.Option(min=0, help="Simulated time per real time (0 freezes values).")] = 1.0,
) -> None:
    """Modbus slaves built from device profiles; the valve coil or register drives the valve."""
    from simulators.modbus_slave import ModbusSlave, SimulatedDevice

    devices = [SimulatedDevice.shipped(name, unit=i + 1, seed=i + 1, speed=speed) for i, name in enumerate(profile)]
    slave = ModbusSlave(devices, host=host, port=port, serial_device=serial, framer=framer, baudrate=baudrate)  # type: ignore[arg-type]
    slave.start()
    where = serial or f"{host}:{port} ({framer})"
    console.print(f"{len(devices)} Modbus devices on {where}, units 1–{len(devices)} (Ctrl-C stops)")
    _wait_for_signal()
    slave.stop()


@simulate_app.command("cjt188-serial")
def simulate_cjt188_serial(
    meters: Annotated[int, typer.Option(min=1, max=250, help="Meters on the line.")] = 4,
    baudrate: Annotated[int | None, typer.Option(help="Emulate wire time at this baud rate (8E1).")] = None,
    faults: Annotated[float, typer.Option(min=0, max=1, help="Share of answers with a fault of any kind.")] = 0.0,
) -> None:
    """CJ/T 188 gas meters on a pseudo-terminal; prints the port to open (addresses 00000000000001…)."""
    from simulators.serial_meters import Cjt188Bus, Cjt188Meter, Faults

    share = faults / 5
    line = [
        Cjt188Meter(f"{n:014d}", flow_m3h=Decimal("0.5"), faults=Faults(share, share, share, share, share))
        for n in range(1, meters + 1)
    ]
    bus = Cjt188Bus(line, baudrate=baudrate).start()
    console.print(f"{meters} CJ/T 188 meters on {bus.path} (Ctrl-C stops)")
    _wait_for_signal()
    bus.stop()


@simulate_app.command("mbus-serial")
def simulate_mbus_serial(
    meters: Annotated[int, typer.Option(min=1, max=250, help="Slaves on the segment.")] = 4,
    baudrate: Annotated[int | None, typer.Option(help="Emulate wire time at this baud rate (8E1).")] = None,
    telegrams: Annotated[int, typer.Option(min=1, max=4, help="Telegrams per answer (multi-telegram).")] = 1,
    faults: Annotated[float, typer.Option(min=0, max=1, help="Share of answers with a fault of any kind.")] = 0.0,
) -> None:
    """M-Bus gas meters on a pseudo-terminal: primary addresses 1…n, secondary 10000001…"""
    from simulators.serial_meters import Faults, MbusMeter, MbusSegment

    share = faults / 5
    segment = [
        MbusMeter(n, f"{10_000_000 + n:08d}", telegrams=telegrams, faults=Faults(share, share, share, share, share))
        for n in range(1, meters + 1)
    ]
    bus = MbusSegment(segment, baudrate=baudrate).start()
    console.print(f"{meters} M-Bus meters on {bus.path} (Ctrl-C stops)")
    _wait_for_signal()
    bus.stop()


def _wait_for_signal() -> None:
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


@app.command()
def demo(
    meters: Annotated[int, typer.Option(min=1, max=100_000, help="How many demo meters to create.")] = 240,
    days: Annotated[int, typer.Option(min=1, max=400, help="Days of history per meter.")] = 60,
) -> None:
    """Start the embedded store, migrate, seed demo data and show what is there."""
    from meterhub.demo import run_demo

    run_demo(_settings(), console, meters=meters, days=days)


readings_app = typer.Typer(no_args_is_help=True, help="Reading validation, review and handheld files (抄表).")
app.add_typer(readings_app, name="readings")


def _actor(actor: str | None) -> str:
    import getpass

    return actor or f"cli:{getpass.getuser()}"


@readings_app.command("validate")
def readings_validate(
    period: Annotated[str, typer.Option(help="Reading period, YYYY-MM.")],
    rules: Annotated[Path | None, typer.Option(help="Validation rule set (TOML); default: the built-in one.")] = None,
    actor: Annotated[str | None, typer.Option(help="Who runs it (for the audit trail).")] = None,
) -> None:
    """Validate a period's readings and refresh its review queue."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from billing.reading_store import parse_period
    from billing.review_run import DEFAULT_RULES, validate_period
    from billing.validation import RuleSet
    from meterhub.store import Store

    try:
        parse_period(period)
        rule_set = RuleSet.from_toml(rules.read_text(encoding="utf-8")) if rules else DEFAULT_RULES
    except (ValueError, OSError) as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    with Store(_settings()) as store:
        store.migrate()
        steps = ["load", "compute", "estimate", "write"]
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(f"validating {period}", total=len(steps))

            def step(name: str) -> None:
                progress.update(task, description=f"validating {period}: {name}", completed=steps.index(name))

            result = validate_period(store, period, rules=rule_set, actor=_actor(actor), progress=step)
        table = Table(title=f"flags by rule — {period}, run {result.run_id} ({rule_set.rule_set_version})")
        table.add_column("rule")
        table.add_column("flags", justify="right")
        for rule_id, count in result.flags_by_rule.items():
            table.add_row(rule_id, str(count))
        console.print(table)
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
        console.print(
            f"{result.readings} readings of {result.meters} meters; {result.flags} flags; "
            f"review queue: {result.pending} pending of {result.queue_rows} ({timings})"
        )


@readings_app.command("import")
def readings_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Handheld result file (.csv or .xlsx).")],
    actor: Annotated[str | None, typer.Option(help="Who imports it (for the audit trail).")] = None,
) -> None:
    """Import handheld reading results; a file with any bad row is refused whole."""
    from billing.handheld import ReadingFileError, import_readings
    from meterhub.store import Store

    with Store(_settings()) as store:
        store.migrate()
        try:
            result = import_readings(store, file.read_bytes(), file.name, actor=_actor(actor))
        except ReadingFileError as exc:
            errors.print(f"[red]refused:[/red] {file.name}: {len(exc.errors)} bad row(s), nothing imported")
            for error in exc.errors:
                errors.print(f"  {error}", highlight=False)
            raise typer.Exit(1) from None
        console.print(
            f"imported {result.readings} readings from {file.name} ({result.not_read} rows not read), "
            f"import {result.import_id}"
        )


@readings_app.command("export")
def readings_export(
    book: Annotated[str, typer.Option(help="Reading book code.")],
    period: Annotated[str, typer.Option(help="Reading period, YYYY-MM.")],
    file_format: Annotated[str, typer.Option("--format", help="csv or xlsx")] = "csv",
    output: Annotated[Path | None, typer.Option(help="File to write (default: BOOK_PERIOD.FORMAT).")] = None,
) -> None:
    """Export a book's to-read list for a handheld (template: see billing/handheld.py)."""
    from billing.handheld import export_book
    from billing.reading_books import BookError
    from billing.reading_store import parse_period
    from meterhub.store import Store

    if file_format not in ("csv", "xlsx"):
        errors.print("[red]error:[/red] --format must be csv or xlsx")
        raise typer.Exit(2)
    with Store(_settings()) as store:
        store.migrate()
        try:
            parse_period(period)
            data = export_book(store, book, period, file_format)
        except (BookError, ValueError) as exc:
            errors.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        target = output or Path(f"{book}_{period}.{file_format}")
        target.write_bytes(data)
        console.print(f"wrote {target}")


bill_app = typer.Typer(no_args_is_help=True, help="Bill runs (billing).")
app.add_typer(bill_app, name="bill")


@bill_app.command("run")
def bill_run(
    period: Annotated[str, typer.Option(help="Billing period, YYYY-MM.")],
    scope: Annotated[str, typer.Option(help="all, area:CODE, book:CODE or account:NO.")] = "all",
    actor: Annotated[str | None, typer.Option(help="Who runs it (for the audit trail).")] = None,
) -> None:
    """Bill every account in scope with approved readings for the period; a re-run bills nothing twice."""
    from billing.bill_run import BillRunError, run_bills, run_problems_text
    from meterhub.store import Store

    with Store(_settings()) as store:
        store.migrate()
        try:
            with console.status(f"billing {period} ({scope})"):
                result = run_bills(store, period, scope, actor=_actor(actor))
        except BillRunError as exc:
            errors.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
        console.print(
            f"{period} {result.scope}: {result.bills_created} bills created ({result.amount_created} yuan); "
            f"{result.bills} bills in scope, {result.amount} yuan ({timings})"
        )
        if result.problems.height:
            errors.print(f"[yellow]{result.problems['account_id'].n_unique()} account(s) left unbilled:[/yellow]")
            for line in run_problems_text(result.problems):
                errors.print(f"  {line}", highlight=False)
            raise typer.Exit(1)


command_app = typer.Typer(no_args_is_help=True, help="Valve and credit commands (for engineers without the console).")
app.add_typer(command_app, name="command")
UserOption = Annotated[str, typer.Option("--user", "-u", help="Your staff username: it goes into the audit log.")]
ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="Why (kept with the command and in the audit log).")]


def _print_command(view: object) -> None:
    from meterhub.commands import CommandView

    assert isinstance(view, CommandView)
    code = f" ({view.reason_code})" if view.reason_code else ""
    console.print(f"command {view.id}: {view.kind} {view.meter_no} → {view.state}{code}", highlight=False)
    if view.state == "refused":
        raise typer.Exit(1)


def _command_call(call: object) -> None:
    from meterhub.commands import CommandError
    from meterhub.store import Store

    with Store(_settings()) as store:
        try:
            _print_command(call(store))  # type: ignore[operator]
        except CommandError as exc:
            errors.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None


@command_app.command("close")
def command_close(
    meter_no: str,
    user: UserOption,
    reason: ReasonOption,
    purpose: Annotated[
        str, typer.Option(help="arrears, planned_stop, construction, customer_request, other")
    ] = "other",
    emergency: Annotated[bool, typer.Option("--emergency", help="One step, no rules (needs the permission).")] = False,
    key: Annotated[str | None, typer.Option(help="Idempotency key: the same key never makes a second command.")] = None,
) -> None:
    """Shut a meter's valve."""
    from meterhub import commands

    if emergency:
        _command_call(lambda store: commands.emergency_close(store, meter_no, user=user, reason=reason))
    else:
        _command_call(
            lambda store: commands.request_command(
                store, meter_no, "valve_close", user=user, reason=reason, purpose=purpose, idempotency_key=key
            )
        )


@command_app.command("open")
def command_open(
    meter_no: str, user: UserOption, reason: ReasonOption, key: Annotated[str | None, typer.Option()] = None
) -> None:
    """Re-open (arm, where the meter supports it: the customer restores supply on site)."""
    from meterhub import commands

    _command_call(
        lambda store: commands.request_command(
            store, meter_no, "valve_open", user=user, reason=reason, idempotency_key=key
        )
    )


@command_app.command("credit")
def command_credit(
    meter_no: str,
    amount: Annotated[Decimal, typer.Option(help="Top-up in CNY, e.g. 50.00")],
    user: UserOption,
    reason: ReasonOption,
    key: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Write a top-up to a prepaid meter (with the next purchase sequence)."""
    from meterhub import commands

    _command_call(
        lambda store: commands.request_command(
            store, meter_no, "credit", user=user, reason=reason, amount=amount, idempotency_key=key
        )
    )


@command_app.command("approve")
def command_approve(
    target: Annotated[int, typer.Argument(help="Command id, or bulk id with --bulk.")],
    user: UserOption,
    bulk: Annotated[bool, typer.Option("--bulk")] = False,
) -> None:
    """Approve a command or bulk request someone else asked for."""
    from meterhub import commands
    from meterhub.store import Store

    if not bulk:
        _command_call(lambda store: commands.approve(store, target, user=user))
        return
    with Store(_settings()) as store:
        try:
            view = commands.approve_bulk(store, target, user=user)
        except commands.CommandError as exc:
            errors.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        console.print(f"bulk {view.id}: {view.state}, {len(view.commands)} commands")


@command_app.command("status")
def command_status(
    target: Annotated[str | None, typer.Argument(help="Command id or meter number; empty: the latest.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 20,
) -> None:
    """Show commands and where they are in their life."""
    from meterhub import commands
    from meterhub.store import Store

    with Store(_settings()) as store:
        if target is not None and target.isdigit():
            views = [commands.get_command(store, int(target))]
        else:
            views = commands.list_commands(store, target, limit=limit)
        table = Table()
        for column in ("id", "meter", "kind", "state", "reason code", "by", "attempts", "requested"):
            table.add_column(column)
        for v in views:
            table.add_row(
                str(v.id), v.meter_no, v.sent_kind or v.kind, v.state, v.reason_code or "", v.requested_by,
                str(v.attempts), v.requested_at.isoformat(timespec="seconds"),
            )  # fmt: skip
        console.print(table)


def main() -> None:
    app()
