"""`meterhub sms`: the automatic notice scan and the sender (hand queued messages to the gateway)."""

from __future__ import annotations

import threading
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any

import typer

from meterhub.cli.base import app, console, errors, load

if TYPE_CHECKING:
    import psycopg

    from meterhub.settings import Settings
    from meterhub.sms import ArrearsInfo
    from meterhub.store import Store

sms_app = typer.Typer(no_args_is_help=True, help="SMS: automatic notices and the sender.")
app.add_typer(sms_app, name="sms")


def ledger_arrears(conn: psycopg.Connection[Any], account_ids: Any, as_of: date) -> dict[int, ArrearsInfo]:
    """Arrears from the billing ledger's positions (late fees accrued but not yet posted included)."""
    from billing.ledger import positions
    from meterhub.sms import ArrearsInfo

    out: dict[int, ArrearsInfo] = {}
    for account_id, held in positions(conn, account_ids, as_of).items():
        overdue = [b for b in held.bills if b.due > 0 and b.due_date < as_of]
        oldest = overdue[0] if overdue else None
        out[account_id] = ArrearsInfo(
            held.arrears, oldest.bill_id if oldest else None, oldest.due_date if oldest else None
        )
    return out


def start_sender(store: Store, settings: Settings) -> tuple[threading.Thread, threading.Event] | None:
    """The SMS sender with the notice scan in a daemon thread (for `meterhub serve`): set the event to stop
    it. None when `sms.sender` is off."""
    from meterhub import notices, sms

    if not settings.sms.sender:
        return None
    stop = threading.Event()
    worker = threading.Thread(
        target=sms.run_sender,
        args=(store, settings.sms, stop, lambda: notices.scan(store, arrears=ledger_arrears)),
        name="sms-sender",
        daemon=True,
    )
    worker.start()
    return worker, stop


@sms_app.command("notify")
def notify() -> None:
    """Scan for events (bills, arrears, bank results, planned stops, low credit, closed valves) and queue
    their notices; running it again adds nothing for the same events."""
    from meterhub import notices
    from meterhub.store import Store

    with Store(load()) as store:
        added = notices.scan(store, arrears=ledger_arrears)
    for kind, n in added.items():
        console.print(f"{kind}: {'template error (see log)' if n < 0 else n}", highlight=False)
    if not added:
        console.print("no notice is switched on", highlight=False)


@sms_app.command("send")
def send(
    loop: Annotated[bool, typer.Option("--loop", help="Keep sending and scanning for notices.")] = False,
) -> None:
    """Hand queued messages to the gateway (setting sms.gateway: the outbox table, or the HTTP provider)."""
    from meterhub import sms
    from meterhub.store import Store

    settings = load()
    with Store(settings) as store:
        try:
            gateway = sms.gateway_for(settings.sms)
        except sms.SmsError as exc:
            errors.print(f"[red]error:[/red] {exc.message}", highlight=False)
            raise typer.Exit(2) from None
        if not loop:
            done = sms.send_all(store, settings.sms, gateway)
            reports = sms.poll_reports(store, settings.sms)
            console.print(
                f"sent {done['sent']}, to retry {done['retry']}, failed {done['failed']}, reports {reports}",
                highlight=False,
            )
            return
        started = start_sender(
            store, settings.model_copy(update={"sms": settings.sms.model_copy(update={"sender": True})})
        )
        assert started is not None
        worker, stop = started
        console.print(f"sending through {gateway.name}; Ctrl-C stops", highlight=False)
        try:
            while worker.is_alive():
                worker.join(1.0)
        except KeyboardInterrupt:
            stop.set()
            worker.join(10.0)
