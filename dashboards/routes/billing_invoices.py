"""Invoices (发票): a cashier's stock of numbers (领用: ranges issued, used, left) and issuing a range to a
cashier; one invoice with its prints, reprinted with the reprint mark, or voided with a reason (作废); a
cashier's day — its invoices, its totals and its settlement (结账), after which the day takes no more
payments, invoices or voids of that cashier; the reconciliation of settled days against the ledger (核销) with
every difference listed. The pages and `/api/v1/invoices…`, on the services of `billing.invoices`.

Who may:
- read stock, invoices, days and reconciliations: `billing.view`. A user limited to areas sees and acts on the
  invoices of accounts in those areas only; a day's totals are the cashier's, whole;
- issue a range: `billing.invoice_stock`; void: `billing.invoice_void`; reprint: `billing.pay`;
- settle a day: `billing.pay` for one's own day, and `billing.invoice_stock` as well for another cashier's
  (checked by the service); mark settled days reconciled: `billing.invoice_stock`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import psycopg
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from billing.invoices import (
    DayTotals,
    InvoiceRange,
    Reconciliation,
    Settlement,
    day_totals,
    issue_range,
    reconcile,
    reprint_invoice,
    settle_day,
    settlement_of,
    stock,
    void_invoice,
)
from billing.ledger import LedgerError
from dashboards import i18n
from dashboards.routes.billing_counter import money, refuse, today_of
from dashboards.security import Principal
from dashboards.web import ActionError, Forbidden, language_of, note_object, redirect, render, require, store_of

router = APIRouter()

TAGS: list[Any] = ["invoices"]
NOTICES = ("issued", "voided", "reprinted", "settled", "reconciled")
DAY_LIMIT = 2000  # invoices listed for one cashier's day
RECONCILE_DAYS = 7  # the reconciliation page's default: the last week
COUNT_ITEMS = frozenset({"payments", "reversals", "invoices_issued", "invoices_void"})
Prefix = Annotated[str, Field(max_length=16, pattern=r"^[A-Za-z0-9]*$", description="letters and digits")]


# -- reads --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InvoiceView:
    invoice_no: str
    status: str
    amount: Decimal
    cashier: str
    issued_on: dt.date
    issued_at: dt.datetime
    voided_on: dt.date | None
    voided_by: str | None
    voided_at: dt.datetime | None
    void_reason: str | None
    print_count: int
    payment_id: int | None
    receipt_no: str | None
    account_no: str | None
    customer_name: str | None
    address: str | None
    area_id: int | None
    settled: bool  # its issue day is settled
    void_settled: bool  # its void day is settled
    payment_reversed: bool  # its payment was reversed (冲账): the invoice is usually voided too

    @property
    def mark(self) -> str:
        """Printed on every copy after the first (as billing.invoices.Invoice)."""
        return "" if self.print_count <= 1 else f"重打 REPRINT {self.print_count - 1}"


_INVOICE_SQL = """
SELECT i.invoice_no, i.status, i.amount, i.cashier, i.issued_on, i.issued_at, i.voided_on, i.voided_by, i.voided_at,
       i.void_reason, i.print_count, i.payment_id, r.receipt_no, a.account_no, c.name,
       coalesce(nullif(a.address, ''), nullif(c.address, ''), cm.address, ''), cm.area_id,
       i.settlement_id IS NOT NULL, i.void_settlement_id IS NOT NULL,
       EXISTS (SELECT 1 FROM ledger_entry e WHERE e.payment_id = i.payment_id AND e.entry_type = 'reversal')
  FROM invoice i LEFT JOIN payment p ON p.id = i.payment_id LEFT JOIN receipt r ON r.payment_id = p.id
  LEFT JOIN account a ON a.id = p.account_id LEFT JOIN customer c ON c.id = a.customer_id
  LEFT JOIN community cm ON cm.id = a.community_id
"""


def _areas(user: Principal) -> list[int] | None:
    return None if user.area_ids is None else sorted(user.area_ids)


def load_invoice(conn: psycopg.Connection[Any], user: Principal, invoice_no: str) -> InvoiceView:
    """One invoice; 404 when there is none, 403 when its account is outside the user's areas."""
    row = conn.execute(_INVOICE_SQL + " WHERE i.invoice_no = %s", [invoice_no]).fetchone()
    if row is None:
        raise ActionError("not_found", f"no invoice {invoice_no}", 404)
    invoice = InvoiceView(*row)
    if not user.covers_area(invoice.area_id):
        raise Forbidden("area")
    return invoice


def day_invoices(conn: psycopg.Connection[Any], user: Principal, cashier: str, day: dt.date) -> list[InvoiceView]:
    """The cashier's invoices issued or voided that day, in number order, within the user's areas."""
    rows = conn.execute(
        _INVOICE_SQL + " WHERE i.cashier = %(c)s AND (i.issued_on = %(d)s OR i.voided_on = %(d)s) "
        "AND (%(areas)s::bigint[] IS NULL OR cm.area_id = ANY(%(areas)s)) ORDER BY i.invoice_no LIMIT %(n)s",
        {"c": cashier, "d": day, "areas": _areas(user), "n": DAY_LIMIT},
    ).fetchall()
    return [InvoiceView(*r) for r in rows]


def invoice_prints(conn: psycopg.Connection[Any], invoice_no: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT p.printed_at, p.printed_by, p.reprint FROM invoice_print p JOIN invoice i ON i.id = p.invoice_id "
        "WHERE i.invoice_no = %s ORDER BY p.id",
        [invoice_no],
    ).fetchall()


def cashiers(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """Active users who take payments or hold invoice numbers: who can be given a range or have a day."""
    rows = conn.execute(
        """SELECT u.username, u.display_name FROM staff_user u
            WHERE u.active AND (EXISTS (SELECT 1 FROM role_permission p WHERE p.role = u.role
                                         AND p.permission = 'billing.pay')
                                OR EXISTS (SELECT 1 FROM invoice_range r WHERE r.cashier = u.username))
            ORDER BY u.username"""
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def receipts_of(conn: psycopg.Connection[Any], payment_ids: list[int]) -> dict[int, str]:
    rows = conn.execute("SELECT payment_id, receipt_no FROM receipt WHERE payment_id = ANY(%s)", [payment_ids])
    return {int(r[0]): str(r[1]) for r in rows}


@dataclass(frozen=True)
class StockSummary:
    cashier: str
    ranges: int
    size: int
    used: int
    voided: int
    left: int


def summarize(ranges: list[InvoiceRange]) -> list[StockSummary]:
    out: dict[str, StockSummary] = {}
    for r in ranges:
        s = out.get(r.cashier, StockSummary(r.cashier, 0, 0, 0, 0, 0))
        out[r.cashier] = StockSummary(
            r.cashier, s.ranges + 1, s.size + r.size, s.used + r.used, s.voided + r.voided, s.left + r.remaining
        )
    return list(out.values())


def notice(request: Request, done: str | None) -> dict[str, Any]:
    """The flash text after a redirect (`?done=…`), in the request's language."""
    if done not in NOTICES:
        return {}
    return {"message_ok": i18n.translate(language_of(request), f"invoices.done.{done}")}


def may_settle(user: Principal, cashier: str) -> bool:
    return user.can("billing.pay") and (cashier == user.username or user.can("billing.invoice_stock"))


def _default_cashier(user: Principal, cashier: str | None) -> str:
    value = (cashier or "").strip()
    return value or user.username


def _invoice_url(invoice_no: str, **query: str) -> str:
    url = f"/invoices/{quote(invoice_no, safe='')}"
    return f"{url}?{urlencode(query)}" if query else url


def _day_url(cashier: str, day: dt.date, **query: str) -> str:
    return "/invoices/day?" + urlencode({"cashier": cashier, "day": day.isoformat(), **query})


# -- pages --------------------------------------------------------------------------------------------
@router.get("/invoices", include_in_schema=False)
def stock_page(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.view"))],
    cashier: str | None = None,
    done: str | None = None,
) -> Response:
    """A cashier's stock (the user's own by default, every cashier's with cashier="")."""
    chosen = user.username if cashier is None and user.can("billing.pay") else (cashier or "").strip()
    ranges = stock(store_of(request), chosen or None)
    with store_of(request).connection() as conn:
        people = cashiers(conn)
    return render(
        request,
        "billing/invoice_stock.html",
        cashier=chosen,
        ranges=ranges,
        summary=summarize(ranges),
        cashiers=people,
        today=today_of(request),
        **notice(request, done),
    )


@router.post("/invoices/ranges", include_in_schema=False)
def issue_range_page(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.invoice_stock"))],
    cashier: Annotated[str, Form(min_length=1, max_length=64)],
    first_no: Annotated[int, Form(ge=0)],
    last_no: Annotated[int, Form(ge=0)],
    prefix: Annotated[str, Form(max_length=16, pattern=r"^[A-Za-z0-9]*$")] = "",
) -> Response:
    try:
        issued = issue_range(store_of(request), cashier.strip(), first_no, last_no, user.username, prefix=prefix)
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "invoice_range", issued.id)
    return redirect("/invoices?" + urlencode({"cashier": issued.cashier, "done": "issued"}))


@router.get("/invoices/day", include_in_schema=False)
def day_page(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.view"))],
    cashier: str | None = None,
    day: dt.date | None = None,
    done: str | None = None,
) -> Response:
    """A cashier's day: its invoices, its totals as the ledger has them now, and its settlement (结账)."""
    today = today_of(request)
    who, when = _default_cashier(user, cashier), day or today
    with store_of(request).connection() as conn:
        totals = day_totals(conn, who, when)
        settled = settlement_of(conn, who, when)
        invoices = day_invoices(conn, user, who, when)
        people = cashiers(conn)
    return render(
        request,
        "billing/invoice_day.html",
        cashier=who,
        day=when,
        today=today,
        totals=totals,
        settlement=settled,
        invoices=invoices,
        cashiers=people,
        can_settle=settled is None and when <= today and may_settle(user, who),
        previous_day=when - dt.timedelta(days=1),
        next_day=when + dt.timedelta(days=1) if when < today else None,
        **notice(request, done),
    )


@router.post("/invoices/day/settle", include_in_schema=False)
def settle_page(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.pay"))],
    cashier: Annotated[str, Form(min_length=1, max_length=64)],
    day: Annotated[dt.date, Form()],
) -> Response:
    try:
        settled = settle_day(store_of(request), cashier.strip(), day, user.username, today=today_of(request))
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "cashier_settlement", settled.id)
    return redirect(_day_url(settled.cashier, settled.day, done="settled"))


@dataclass(frozen=True)
class ReconcileForm:
    first_day: dt.date
    last_day: dt.date
    cashier: str | None


def _reconcile_form(
    request: Request, first_day: dt.date | None, last_day: dt.date | None, cashier: str | None
) -> ReconcileForm:
    last = last_day or today_of(request)
    first = first_day or last - dt.timedelta(days=RECONCILE_DAYS - 1)
    if last < first:
        raise ActionError("days", f"the first day {first} is after the last day {last}", 400)
    if (last - first).days > 366:
        raise ActionError("days", "reconcile at most a year at a time", 400)
    return ReconcileForm(first, last, (cashier or "").strip() or None)


@router.get("/invoices/reconcile", include_in_schema=False)
def reconcile_page(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.view"))],
    first_day: dt.date | None = None,
    last_day: dt.date | None = None,
    cashier: str | None = None,
    done: str | None = None,
) -> Response:
    """核销: the settled days of the range checked against the ledger (nothing is marked on this page)."""
    form = _reconcile_form(request, first_day, last_day, cashier)
    try:
        results = reconcile(store_of(request), user.username, form.first_day, form.last_day, form.cashier, mark=False)
    except LedgerError as exc:
        refuse(exc)
    with store_of(request).connection() as conn:
        receipts = receipts_of(conn, [d.payment_id for r in results for d in r.differences if d.payment_id])
        people = cashiers(conn)
    return render(
        request,
        "billing/invoice_reconcile.html",
        form=form,
        results=results,
        receipts=receipts,
        cashiers=people,
        pending=sum(1 for r in results if r.clean and not r.reconciled),
        count_items=COUNT_ITEMS,
        **notice(request, done),
    )


@router.post("/invoices/reconcile", include_in_schema=False)
def reconcile_mark_page(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.invoice_stock"))],
    first_day: Annotated[dt.date, Form()],
    last_day: Annotated[dt.date, Form()],
    cashier: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    form = _reconcile_form(request, first_day, last_day, cashier)
    try:
        reconcile(store_of(request), user.username, form.first_day, form.last_day, form.cashier)
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "reconciliation", f"{form.first_day}..{form.last_day} {form.cashier or '*'}")
    query = {"first_day": form.first_day.isoformat(), "last_day": form.last_day.isoformat(),
             "cashier": form.cashier or "", "done": "reconciled"}  # fmt: skip
    return redirect("/invoices/reconcile?" + urlencode(query))


@router.get("/invoices/{invoice_no}", include_in_schema=False)
def invoice_page(
    request: Request,
    invoice_no: str,
    user: Annotated[Principal, Depends(require("billing.view"))],
    done: str | None = None,
) -> Response:
    today = today_of(request)
    with store_of(request).connection() as conn:
        invoice = load_invoice(conn, user, invoice_no)
        prints = invoice_prints(conn, invoice_no)
        today_settled = settlement_of(conn, invoice.cashier, today) is not None
    live = invoice.status == "issued"
    return render(
        request,
        "billing/invoice.html",
        invoice=invoice,
        prints=prints,
        can_reprint=live and user.can("billing.pay"),
        can_void=live and user.can("billing.invoice_void") and not today_settled,
        today_settled=today_settled,
        **notice(request, done),
    )


@router.post("/invoices/{invoice_no}/reprint", include_in_schema=False)
def reprint_page(
    request: Request, invoice_no: str, user: Annotated[Principal, Depends(require("billing.pay"))]
) -> Response:
    with store_of(request).connection() as conn:
        invoice = load_invoice(conn, user, invoice_no)
    try:
        reprint_invoice(store_of(request), invoice.invoice_no, user.username)
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "invoice", invoice.invoice_no)
    return redirect(_invoice_url(invoice.invoice_no, done="reprinted"))


@router.post("/invoices/{invoice_no}/void", include_in_schema=False)
def void_page(
    request: Request,
    invoice_no: str,
    user: Annotated[Principal, Depends(require("billing.invoice_void"))],
    reason: Annotated[str, Form(min_length=1, max_length=500)],
) -> Response:
    with store_of(request).connection() as conn:
        invoice = load_invoice(conn, user, invoice_no)
    try:
        void_invoice(store_of(request), invoice.invoice_no, user.username, reason, voided_on=today_of(request))
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "invoice", invoice.invoice_no)
    return redirect(_invoice_url(invoice.invoice_no, done="voided"))


# -- the API ------------------------------------------------------------------------------------------
class RangeOut(BaseModel):
    id: int
    cashier: str
    prefix: str
    first_no: int
    last_no: int
    first_invoice_no: str
    last_invoice_no: str
    next_invoice_no: str | None = Field(description="the number the next invoice takes; null when the range is used up")
    size: int
    used: int = Field(description="numbers handed out, voided ones included (a number is never reused)")
    voided: int = Field(description="of the used numbers, those whose invoice is void")
    left: int
    issued_by: str
    issued_at: dt.datetime | None


def range_out(r: InvoiceRange) -> RangeOut:
    return RangeOut(
        id=r.id, cashier=r.cashier, prefix=r.prefix, first_no=r.first_no, last_no=r.last_no,
        first_invoice_no=r.number(r.first_no), last_invoice_no=r.number(r.last_no),
        next_invoice_no=r.number(r.next_no) if r.remaining > 0 else None, size=r.size, used=r.used, voided=r.voided,
        left=r.remaining, issued_by=r.issued_by, issued_at=r.issued_at,
    )  # fmt: skip


@router.get("/api/v1/invoices/stock", tags=TAGS)
def api_stock(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.view"))],
    cashier: Annotated[str | None, Query(description="a cashier's user name; every cashier's when left out")] = None,
) -> list[RangeOut]:
    """Invoice stock (领用): the ranges of invoice numbers issued to cashiers, with what is used and left."""
    return [range_out(r) for r in stock(store_of(request), (cashier or "").strip() or None)]


class RangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cashier: str = Field(min_length=1, max_length=64, description="the user name of the cashier who gets it")
    first_no: int = Field(ge=0)
    last_no: int = Field(ge=0, description="inclusive")
    prefix: Prefix = ""


@router.post("/api/v1/invoices/ranges", tags=TAGS, status_code=201)
def api_issue_range(
    request: Request, body: RangeIn, user: Annotated[Principal, Depends(require("billing.invoice_stock"))]
) -> RangeOut:
    """领用: issue invoice numbers first_no..last_no to a cashier. Ranges of one prefix never overlap (409)."""
    try:
        issued = issue_range(
            store_of(request), body.cashier.strip(), body.first_no, body.last_no, user.username, prefix=body.prefix
        )
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "invoice_range", issued.id)
    return range_out(issued)


class InvoiceOut(BaseModel):
    invoice_no: str
    status: str = Field(description="issued or void")
    amount: str
    cashier: str
    issued_on: dt.date
    voided_on: dt.date | None
    voided_by: str | None
    void_reason: str | None
    print_count: int
    reprint_mark: str = Field(description="printed on every copy after the first")
    payment_id: int | None
    receipt_no: str | None
    account_no: str | None


def invoice_out(i: InvoiceView) -> InvoiceOut:
    return InvoiceOut(
        invoice_no=i.invoice_no, status=i.status, amount=money(i.amount), cashier=i.cashier, issued_on=i.issued_on,
        voided_on=i.voided_on, voided_by=i.voided_by, void_reason=i.void_reason, print_count=i.print_count,
        reprint_mark=i.mark, payment_id=i.payment_id, receipt_no=i.receipt_no, account_no=i.account_no,
    )  # fmt: skip


class TotalsOut(BaseModel):
    payments: int
    payment_amount: str
    reversals: int = Field(description="the cashier's payments reversed (冲账) with a reversal booked that day")
    reversal_amount: str
    invoices_issued: int
    invoice_amount: str
    invoices_void: int
    void_amount: str


def totals_out(t: DayTotals) -> TotalsOut:
    return TotalsOut(
        payments=t.payments, payment_amount=money(t.payment_amount), reversals=t.reversals,
        reversal_amount=money(t.reversal_amount), invoices_issued=t.invoices_issued,
        invoice_amount=money(t.invoice_amount), invoices_void=t.invoices_void, void_amount=money(t.void_amount),
    )  # fmt: skip


class SettlementOut(BaseModel):
    id: int
    cashier: str
    day: dt.date
    settled_by: str
    settled_at: dt.datetime | None
    totals: TotalsOut = Field(description="as settled")
    reconciled_by: str | None
    reconciled_at: dt.datetime | None


def settlement_out(s: Settlement) -> SettlementOut:
    return SettlementOut(
        id=s.id, cashier=s.cashier, day=s.day, settled_by=s.settled_by, settled_at=s.settled_at,
        totals=totals_out(s.totals), reconciled_by=s.reconciled_by, reconciled_at=s.reconciled_at,
    )  # fmt: skip


class DayOut(BaseModel):
    cashier: str
    day: dt.date
    totals: TotalsOut = Field(description="as the database has them now")
    settlement: SettlementOut | None = Field(description="null until the day is settled (结账)")
    invoices: list[InvoiceOut] = Field(description="issued or voided that day, within the caller's areas")


@router.get("/api/v1/invoices/day", tags=TAGS)
def api_day(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.view"))],
    cashier: Annotated[str | None, Query(description="default: the caller")] = None,
    day: Annotated[dt.date | None, Query(description="default: today")] = None,
) -> DayOut:
    """A cashier's day: totals of payments, reversals and invoices, the settlement if any, the invoices."""
    who, when = _default_cashier(user, cashier), day or today_of(request)
    with store_of(request).connection() as conn:
        totals = day_totals(conn, who, when)
        settled = settlement_of(conn, who, when)
        invoices = day_invoices(conn, user, who, when)
    return DayOut(
        cashier=who, day=when, totals=totals_out(totals), settlement=settlement_out(settled) if settled else None,
        invoices=[invoice_out(i) for i in invoices],
    )  # fmt: skip


class SettleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cashier: str | None = Field(None, max_length=64, description="default: the caller")
    day: dt.date


@router.post("/api/v1/invoices/settlements", tags=TAGS, status_code=201)
def api_settle(
    request: Request, body: SettleIn, user: Annotated[Principal, Depends(require("billing.pay"))]
) -> SettlementOut:
    """结账: settle a cashier's day; afterwards it takes no more payments, invoices or voids of that cashier.
    Another cashier's day needs `billing.invoice_stock` too; a settled day cannot be settled again (409)."""
    who = _default_cashier(user, body.cashier)
    try:
        settled = settle_day(store_of(request), who, body.day, user.username, today=today_of(request))
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "cashier_settlement", settled.id)
    return settlement_out(settled)


class DifferenceOut(BaseModel):
    kind: str = Field(description="payment: its ledger amount against its invoices that day; settlement: a total")
    payment_id: int | None
    receipt_no: str | None
    item: str | None = Field(description="for kind settlement: the settled total that differs")
    actual: str = Field(description="what the ledger has now")
    expected: str = Field(description="what the invoices say, or what was settled")
    note: str


class ReconciliationOut(BaseModel):
    cashier: str
    day: dt.date
    ledger_amount: str = Field(description="net payments booked that day")
    invoice_amount: str = Field(description="invoices issued less voided that day")
    clean: bool
    reconciled: bool = Field(description="marked reconciled (核销)")
    differences: list[DifferenceOut]


def _value(item: str, value: Decimal) -> str:
    return str(int(value)) if item in COUNT_ITEMS else money(value)


def reconciliation_out(results: list[Reconciliation], receipts: dict[int, str]) -> list[ReconciliationOut]:
    return [
        ReconciliationOut(
            cashier=r.cashier, day=r.day, ledger_amount=money(r.ledger_amount), invoice_amount=money(r.invoice_amount),
            clean=r.clean, reconciled=r.reconciled,
            differences=[
                DifferenceOut(
                    kind=d.kind, payment_id=d.payment_id,
                    receipt_no=receipts.get(d.payment_id) if d.payment_id is not None else None, item=d.item or None,
                    actual=_value(d.item, d.actual), expected=_value(d.item, d.expected), note=d.note,
                )
                for d in r.differences
            ],
        )
        for r in results
    ]  # fmt: skip


def _reconciled(request: Request, user: Principal, form: ReconcileForm, mark: bool) -> list[ReconciliationOut]:
    try:
        results = reconcile(store_of(request), user.username, form.first_day, form.last_day, form.cashier, mark=mark)
    except LedgerError as exc:
        refuse(exc)
    with store_of(request).connection() as conn:
        receipts = receipts_of(conn, [d.payment_id for r in results for d in r.differences if d.payment_id])
    return reconciliation_out(results, receipts)


@router.get("/api/v1/invoices/reconciliation", tags=TAGS)
def api_reconciliation(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.view"))],
    first_day: dt.date,
    last_day: dt.date,
    cashier: Annotated[str | None, Query(description="one cashier; every cashier when left out")] = None,
) -> list[ReconciliationOut]:
    """核销, checked only: the settled days in first_day..last_day against the ledger, with every difference.
    Nothing is written; `POST` marks the clean days reconciled."""
    return _reconciled(request, user, _reconcile_form(request, first_day, last_day, cashier), mark=False)


class ReconcileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    first_day: dt.date
    last_day: dt.date
    cashier: str | None = Field(None, max_length=64, description="one cashier; every cashier when left out")


@router.post("/api/v1/invoices/reconciliation", tags=TAGS)
def api_reconcile(
    request: Request, body: ReconcileIn, user: Annotated[Principal, Depends(require("billing.invoice_stock"))]
) -> list[ReconciliationOut]:
    """核销: check the settled days in first_day..last_day against the ledger and mark the clean ones
    reconciled by the caller; days with differences stay open and are listed with them."""
    form = _reconcile_form(request, body.first_day, body.last_day, body.cashier)
    out = _reconciled(request, user, form, mark=True)
    note_object(request, "reconciliation", f"{form.first_day}..{form.last_day} {form.cashier or '*'}")
    return out


@router.get("/api/v1/invoices/{invoice_no}", tags=TAGS)
def api_invoice(
    request: Request, invoice_no: str, user: Annotated[Principal, Depends(require("billing.view"))]
) -> InvoiceOut:
    """One invoice: its payment and receipt, status, prints and reprint mark."""
    with store_of(request).connection() as conn:
        return invoice_out(load_invoice(conn, user, invoice_no))


class VoidIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=500)


@router.post("/api/v1/invoices/{invoice_no}/void", tags=TAGS)
def api_void(
    request: Request,
    invoice_no: str,
    body: VoidIn,
    user: Annotated[Principal, Depends(require("billing.invoice_void"))],
) -> InvoiceOut:
    """作废: void an invoice with a reason, today. The number is never handed out again; a void invoice, or a
    day the cashier has settled, is refused (409)."""
    with store_of(request).connection() as conn:
        invoice = load_invoice(conn, user, invoice_no)
    try:
        void_invoice(store_of(request), invoice.invoice_no, user.username, body.reason, voided_on=today_of(request))
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "invoice", invoice.invoice_no)
    with store_of(request).connection() as conn:
        return invoice_out(load_invoice(conn, user, invoice_no))


@router.post("/api/v1/invoices/{invoice_no}/reprint", tags=TAGS)
def api_reprint(
    request: Request, invoice_no: str, user: Annotated[Principal, Depends(require("billing.pay"))]
) -> InvoiceOut:
    """Print a live invoice again: counted, logged, and marked as a reprint on the copy."""
    with store_of(request).connection() as conn:
        invoice = load_invoice(conn, user, invoice_no)
    try:
        reprint_invoice(store_of(request), invoice.invoice_no, user.username)
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "invoice", invoice.invoice_no)
    with store_of(request).connection() as conn:
        return invoice_out(load_invoice(conn, user, invoice_no))
