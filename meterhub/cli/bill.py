"""`meterhub bill`: bill runs; `meterhub bill invoice …`: invoice stock, voids, settlement and reconciliation."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, NoReturn

import typer
from rich.table import Table

from meterhub.cli.base import actor_name, app, console, errors, load

bill_app = typer.Typer(no_args_is_help=True, help="Bill runs and invoices (billing).")
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

    with Store(load()) as store:
        store.migrate()
        try:
            with console.status(f"billing {period} ({scope})"):
                result = run_bills(store, period, scope, actor=actor_name(actor))
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


invoice_app = typer.Typer(
    no_args_is_help=True,
    help="Invoice stock (领用), voiding (作废), a cashier's daily settlement (结账) and reconciliation (核销).",
)
bill_app.add_typer(invoice_app, name="invoice")
UserOption = Annotated[
    str, typer.Option("--user", "-u", help="Your staff username: permissions are checked and it is recorded.")
]


def _day(text: str | None) -> dt.date:
    if text is None:
        return dt.date.today()
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        errors.print(f"[red]error:[/red] not a day (YYYY-MM-DD): {text}", highlight=False)
        raise typer.Exit(2) from None


def _refused(exc: Exception) -> NoReturn:
    errors.print(f"[red]refused:[/red] {exc}", highlight=False)
    raise typer.Exit(2) from None


@invoice_app.command("issue-range")
def invoice_issue_range(
    cashier: Annotated[str, typer.Option(help="The cashier who gets the numbers (staff username).")],
    first: Annotated[int, typer.Option(min=0, help="First invoice number.")],
    last: Annotated[int, typer.Option(min=0, help="Last invoice number (inclusive).")],
    user: UserOption,
    prefix: Annotated[str, typer.Option(help="Prefix of the numbers; ranges of one prefix never overlap.")] = "",
) -> None:
    """领用: issue a range of invoice numbers to a cashier (needs billing.invoice_stock)."""
    from billing.invoices import format_number, issue_range
    from billing.ledger import LedgerError
    from meterhub.store import Store

    with Store(load()) as store:
        store.migrate()
        try:
            issued = issue_range(store, cashier, first, last, user, prefix=prefix)
        except LedgerError as exc:
            _refused(exc)
        console.print(
            f"range {issued.id}: {format_number(prefix, first)}-{format_number(prefix, last)} "
            f"({issued.size} numbers) issued to {cashier}",
            highlight=False,
        )


@invoice_app.command("stock")
def invoice_stock(
    cashier: Annotated[str | None, typer.Option(help="One cashier; every cashier when left out.")] = None,
) -> None:
    """Show invoice stock: ranges issued, numbers used (voided ones included) and left."""
    from billing.invoices import stock
    from meterhub.store import Store

    with Store(load()) as store:
        store.migrate()
        ranges = stock(store, cashier)
    table = Table()
    for column in ("cashier", "numbers", "used", "void", "left", "next"):
        table.add_column(column, justify="right" if column in ("used", "void", "left") else "left", no_wrap=True)
    for r in ranges:
        table.add_row(
            r.cashier, f"{r.number(r.first_no)}-{r.number(r.last_no)}", str(r.used), str(r.voided), str(r.remaining),
            r.number(r.next_no) if r.remaining else "-",
        )  # fmt: skip
    console.print(table)
    console.print(f"{len(ranges)} ranges, {sum(r.remaining for r in ranges)} numbers left")


@invoice_app.command("void")
def invoice_void(
    invoice_no: Annotated[str, typer.Argument(help="The invoice number.")],
    user: UserOption,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why it is voided (kept with the invoice).")],
    day: Annotated[str | None, typer.Option(help="The day of the void, YYYY-MM-DD (default: today).")] = None,
) -> None:
    """作废: void an invoice with a reason (its cashier, or a user with billing.invoice_void)."""
    from billing.invoices import void_invoice
    from billing.ledger import LedgerError
    from meterhub.store import Store

    when = _day(day)
    with Store(load()) as store:
        store.migrate()
        try:
            voided = void_invoice(store, invoice_no, user, reason, voided_on=when)
        except LedgerError as exc:
            _refused(exc)
    console.print(f"invoice {voided.invoice_no} ({voided.amount} yuan, {voided.cashier}) is void", highlight=False)


@invoice_app.command("settle")
def invoice_settle(
    cashier: Annotated[str, typer.Option(help="The cashier whose day is settled.")],
    user: UserOption,
    day: Annotated[str | None, typer.Option(help="The day, YYYY-MM-DD (default: today).")] = None,
) -> None:
    """结账: settle a cashier's day; afterwards it takes no more payments, invoices or voids of that cashier."""
    from billing.invoices import settle_day
    from billing.ledger import LedgerError
    from meterhub.store import Store

    when = _day(day)
    with Store(load()) as store:
        store.migrate()
        try:
            settled = settle_day(store, cashier, when, user)
        except LedgerError as exc:
            _refused(exc)
    t = settled.totals
    console.print(
        f"{cashier} settled for {when} (settlement {settled.id}): {t.payments} payments {t.payment_amount} yuan, "
        f"{t.reversals} reversed {t.reversal_amount} yuan, {t.invoices_issued} invoices {t.invoice_amount} yuan, "
        f"{t.invoices_void} void {t.void_amount} yuan",
        highlight=False,
    )


@invoice_app.command("reconcile")
def invoice_reconcile(
    first: Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD.")],
    last: Annotated[str | None, typer.Option("--to", help="Last day, YYYY-MM-DD (default: the first day).")] = None,
    cashier: Annotated[str | None, typer.Option(help="One cashier; every cashier when left out.")] = None,
    actor: Annotated[str | None, typer.Option(help="Who reconciles (recorded on the days marked).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check only: mark nothing.")] = False,
) -> None:
    """核销: check settled days against the ledger and mark the clean ones reconciled; exit 1 on differences."""
    from billing.invoices import reconcile
    from billing.ledger import LedgerError
    from meterhub.store import Store

    first_day = _day(first)
    last_day = _day(last) if last else first_day
    with Store(load()) as store:
        store.migrate()
        try:
            results = reconcile(store, actor_name(actor), first_day, last_day, cashier, mark=not dry_run)
        except LedgerError as exc:
            _refused(exc)
    for r in results:
        state = "differences" if not r.clean else "reconciled" if r.reconciled else "clean"
        console.print(
            f"{r.day} {r.cashier}: ledger {r.ledger_amount}, invoices {r.invoice_amount} — {state}", highlight=False
        )
        for d in r.differences:
            what = f"payment {d.payment_id}" if d.kind == "payment" else d.item
            console.print(f"  {what}: ledger {d.actual}, expected {d.expected} ({d.note})", highlight=False)
    if not results:
        console.print(f"no settled days from {first_day} to {last_day}")
    if any(not r.clean for r in results):
        raise typer.Exit(1)
