"""`meterhub demo`: the whole platform on one machine, with embedded defaults.

First the store (embedded PostgreSQL unless `database.url` is set) gets a gas utility: estates, customers,
accounts and meters on four transports, staff with demo passwords, tariffs, a year of daily readings, the
months of that year validated, reviewed, billed and (mostly) paid, alarms and commands. Then it runs live:
broker, simulated meters, collector, console. Ctrl-C (or SIGTERM) stops everything and releases the
embedded server; the next start resumes the same utility and adds only what is missing.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from meterhub import demo_billing, demo_data
from meterhub.settings import Settings
from meterhub.store import Store

STATUS_EVERY_S = 60.0
QUIET_LOGGERS = ("billing",)  # bill runs log each run; the demo prints its own summary


class DemoStopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM arrived while the demo was being prepared. A KeyboardInterrupt, so that a query in
    progress is cancelled on the server (psycopg does that for it) and its transaction rolls back."""


@dataclass
class DemoOptions:
    meters: int = 3000
    days: int | None = None  # days of history; None: back to the start of the month a year ago
    live: bool = True
    port: int | None = None  # console port; None: console.port
    interval_s: float = 300.0
    poll_s: float = 60.0
    run_for: float | None = None  # stop by itself after this many seconds of live running


@dataclass
class Timings:
    steps: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - started

    def text(self) -> str:
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.steps.items())


class Stopper:
    """SIGINT and SIGTERM ask the demo to stop. While the data is prepared they interrupt the step in progress
    (every step is one transaction and idempotent, so the next start does it again); once live they set
    `event`, and the platform stops in order."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.event = threading.Event()
        self.interrupting = True
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Stopper:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.event.is_set():
            self.console.print("[yellow]stopping…[/yellow]")
        self.event.set()
        if self.interrupting:
            self.interrupting = False  # once: a second Ctrl-C must not break the clean-up
            raise DemoStopped

    def check(self) -> None:
        if self.event.is_set():
            raise DemoStopped


class DemoError(RuntimeError):
    """The demo cannot start; the message says why."""


def run_demo(settings: Settings, console: Console, options: DemoOptions) -> None:
    """Prepare the demo utility (or resume it), then run it live until stopped."""
    settings = _demo_settings(settings)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    with Stopper(console) as stopper:
        console_socket = None
        if options.live:
            from meterhub.demo_live import bind_console

            host = settings.console.host
            port = settings.console.port if options.port is None else options.port
            try:
                console_socket = bind_console(host, port)
            except OSError as exc:
                raise DemoError(f"the console cannot listen on {host}:{port} ({exc.strerror}); try --port") from None
        try:
            with Store(settings) as store:
                _prepare(store, settings, console, options, stopper)
                if console_socket is not None:
                    _run_live(store, settings, console, options, stopper, console_socket)
                else:
                    store.maintain()
                    console.print(
                        "\nThe data stays in "
                        f"[bold]{store.embedded.pgdata if store.embedded else store.describe()}[/bold]; "
                        "[bold]meterhub demo[/bold] runs it live, [bold]meterhub serve[/bold] serves the console."
                    )
        except DemoStopped:
            console.print("stopped; [bold]meterhub demo[/bold] resumes where this one stopped")
        finally:
            if console_socket is not None:
                console_socket.close()


def _demo_settings(settings: Settings) -> Settings:
    """The console, the collector and the status queries share the pool: give it room unless configured."""
    if "pool_max" in settings.database.model_fields_set:
        return settings
    database = settings.database.model_copy(update={"pool_max": max(settings.database.pool_max, 20)})
    return settings.model_copy(update={"database": database})


def history_start(today: date, days: int | None) -> date:
    """The day before the first day of history: twelve complete months by default."""
    return today - timedelta(days=days) if days else demo_data.month_start(today, 12) - timedelta(days=1)


def _prepare(store: Store, settings: Settings, console: Console, options: DemoOptions, stopper: Stopper) -> None:
    timings = Timings()
    console.print(f"[bold]meterhub demo[/bold] — {store.describe()}")
    with timings.step("schema"):
        applied = store.migrate()
    console.print(f"schema: {', '.join(applied) if applied else 'up to date'}")
    stopper.check()
    today = datetime.now(ZoneInfo(settings.timezone)).date()
    first_day = history_start(today, options.days)
    with timings.step("master data"), store.transaction(actor="demo") as conn:
        staff = demo_data.seed_staff(conn)
        created = demo_data.seed_master_data(conn, options.meters)
    console.print(f"master data: {created} new meters with customers and accounts; {staff} staff logins set")
    stopper.check()
    with timings.step("history"), console.status("daily readings…"):
        stored = demo_data.seed_history(store, today, first_day)
    console.print(f"history: {stored} new daily register readings")
    stopper.check()
    months = demo_billing.billing_months(today, first_day)
    columns = (TextColumn("billing {task.description}"), BarColumn(), TimeElapsedColumn())
    with timings.step("billing"), Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("", total=len(months))

        def tick(period: str) -> None:
            stopper.check()
            progress.update(task, description=period, completed=months.index(period))

        billed = demo_billing.seed_billing(store, today, first_day, tick)
    console.print(
        f"billing: {len(billed.periods)} month(s) validated, reviewed and billed ({billed.bills} bills); "
        f"{billed.payments} payments on time, {billed.late_payments} late"
    )
    stopper.check()
    from meterhub.demo_activity import seed_activity

    with timings.step("alarms and commands"):
        events, commands = seed_activity(store)
    console.print(f"alarms: {events} new; commands: {commands} new")
    with timings.step("modules"):
        seeded = _seed_modules(store)
    console.print(f"modules: {', '.join(seeded)}")
    console.print(f"prepared in {sum(timings.steps.values()):.1f} s ({timings.text()})")
    with store.connection() as conn:
        _summary(conn, console, today)
    _logins(console)


def _seed_modules(store: Store) -> list[str]:
    """A few records in each of the utility's other modules (each seed adds nothing the second time)."""
    from meterhub import facilities, masterdata, office, repairs, sms, system_settings, warehouse

    seeds = [
        ("master data", masterdata.seed_demo),
        ("system settings", system_settings.seed_demo),
        ("valve wells and regulator boxes", facilities.seed_demo),  # after the history: box meters from it
        ("warehouse", warehouse.seed_demo),
        ("repairs", repairs.seed_demo),  # draws materials from the warehouse
        ("SMS", sms.seed_demo),
        ("office", office.seed_demo),
    ]
    for _, seed in seeds:
        with store.transaction(actor="demo") as conn:
            seed(conn)
    return [name for name, _ in seeds]


def _summary(conn: psycopg.Connection[Any], console: Console, today: date) -> None:
    from billing.ledger import positions

    counts = conn.execute(
        """SELECT (SELECT count(*) FROM community), (SELECT count(*) FROM account), (SELECT count(*) FROM meter),
                  (SELECT count(*) FROM reading), (SELECT count(*) FROM bill), (SELECT count(*) FROM payment),
                  (SELECT count(*) FROM reading_review WHERE status = 'pending'),
                  (SELECT count(*) FROM meter_event WHERE cleared_at IS NULL),
                  (SELECT count(*) FROM meter_command)"""
    ).fetchone()
    assert counts is not None
    table = Table(title="what is in the store", show_header=False)
    table.add_column("what")
    table.add_column("how many", justify="right")
    names = ("estates", "accounts", "meters", "readings", "bills", "payments", "readings waiting for review",
             "open alarms", "commands")  # fmt: skip
    for name, count in zip(names, counts, strict=True):
        table.add_row(name, str(count))
    console.print(table)
    ids = [r[0] for r in conn.execute("SELECT account_id FROM ledger_entry GROUP BY 1 HAVING sum(amount) > 0")]
    owed = [p for p in positions(conn, ids, today).values() if p.arrears > 0]
    if owed:
        arrears = sum((p.arrears for p in owed), Decimal(0))
        fees = sum((p.unposted_fee for p in owed), Decimal(0))
        console.print(f"arrears: {len(owed)} accounts owe {arrears} yuan overdue, {fees} yuan late fees accruing")
    transports = conn.execute(
        """SELECT CASE WHEN driver_key = 'modbus' THEN 'Modbus TCP'
                       WHEN protocol_address LIKE '%:%' THEN 'serial CJ/T 188'
                       WHEN driver_key = 'cjt188' THEN 'CJ/T 188 over MQTT' ELSE 'native JSON over MQTT' END, count(*)
             FROM meter GROUP BY 1 ORDER BY 2 DESC"""
    ).fetchall()
    console.print("meters: " + ", ".join(f"{n} {kind}" for kind, n in transports))


def _logins(console: Console) -> None:
    table = Table(title="demo logins")
    for column in ("role", "user", "password", "limited to"):
        table.add_column(column)
    for member in demo_data.STAFF:
        table.add_row(member.role, member.username, member.password, member.area or "")
    console.print(table)


def _run_live(
    store: Store, settings: Settings, console: Console, options: DemoOptions, stopper: Stopper, sock: Any
) -> None:
    from meterhub.demo_live import LiveOptions, LivePlatform

    stopper.check()
    stopper.interrupting = False
    live = LivePlatform(settings, store, LiveOptions(options.port, options.interval_s, options.poll_s), sock)
    try:
        with console.status("starting broker, meters, collector and console…"):
            live.start()
    except (RuntimeError, OSError) as exc:  # what started was stopped again
        raise DemoError(f"the live platform did not start: {exc}") from None
    try:
        assert live.broker is not None
        where = settings.mqtt.url or f"embedded broker on {live.broker.host}:{live.broker.port}"
        console.print(f"MQTT: {where}; meters report every {options.interval_s:g} s, field buses polled every "
                      f"{options.poll_s:g} s")  # fmt: skip
        console.print(f"\n[bold green]console: {live.url}[/bold green]  (sign in with a demo login; Ctrl-C stops)")
        deadline = time.monotonic() + options.run_for if options.run_for is not None else None
        next_status = time.monotonic() + STATUS_EVERY_S
        while not stopper.event.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wake = min(next_status, deadline if deadline is not None else next_status)
            stopper.event.wait(max(0.0, wake - now))
            if time.monotonic() >= next_status and not stopper.event.is_set():
                next_status += STATUS_EVERY_S
                _status(console, store, live.started_at)
    finally:
        with console.status("stopping…"):
            live.stop()
        # The collector's upkeep thread may still be refreshing the daily view; stopping the embedded server
        # ends that query, which is expected here and not worth a warning.
        logging.getLogger("collector.service").setLevel(logging.ERROR)
    _status(console, store, live.started_at, final=True)


def _status(console: Console, store: Store, since: datetime, final: bool = False) -> None:
    from meterhub.demo_live import live_counts

    try:
        counts = live_counts(store, since)
        with store.connection() as conn:
            states = dict(
                conn.execute(
                    "SELECT state, count(*) FROM meter_command WHERE updated_at >= %s GROUP BY 1", [since]
                ).fetchall()
            )
    except psycopg.Error as exc:
        console.print(f"[yellow]status unavailable: {exc}[/yellow]")
        return
    running = datetime.now(UTC) - since
    readings = (f"native JSON {counts['native_mqtt']}, CJ/T 188 over MQTT {counts['cjt188_mqtt']}, "
                f"Modbus {counts['modbus']}, serial {counts['serial']}")  # fmt: skip
    done = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none"
    prefix = "stopped after" if final else "running for"
    console.print(f"{prefix} {str(running).split('.')[0]}: readings received — {readings}; commands — {done}")
