"""The counter (收费): find an account by number or card, see what it owes, take payments — one account, its
related accounts (关联用户) together, or a batch — print and reprint receipts, reverse a payment (冲账), waive a
charge or late fee, issue an invoice with a payment; an account's ledger. The pages, and the helpers the
billing API (billing_api) and the bill pages (billing_bills) share with them.

Every amount shown or paid comes from `billing.ledger.positions` as of today in the utility's time zone, so
the counter, the API and the payment services agree to the fen. What a payment pays first is the service's
allocation order: the oldest bill first, within a bill the late fee before the principal (先滞纳金后本金);
what is left over is credit (预收) for the next bills.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, NoReturn
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import Response
from psycopg.rows import dict_row

from billing.invoices import InvoiceError, issue_invoice, stock
from billing.ledger import ZERO, AccountPosition, LedgerError, positions
from billing.payments import (
    KEY_MAX,
    PAYMENT_METHODS,
    PaymentMethod,
    PaymentResult,
    PermissionDenied,
    group_members,
    pay,
    pay_batch,
    pay_related,
    reprint_receipt,
    reverse_payment,
    waive,
)
from dashboards import i18n
from dashboards.security import Principal
from dashboards.web import (
    ActionError,
    Forbidden,
    language_of,
    note_object,
    redirect,
    render,
    require,
    safe_next,
    settings_of,
    store_of,
)

router = APIRouter()

LEDGER_PAGE = 100
COUNTER_NOTICES = ("paid", "waived", "reversed", "reprinted", "invoiced")
WaiverComponent = Literal["principal", "late_fee"]


# -- shared by the billing routes ---------------------------------------------------------------------
def money(value: Decimal | int | None) -> str:
    """An amount as the API gives it: an exact decimal string with two places."""
    return f"{Decimal(value or 0):.2f}"


def today_of(request: Request) -> dt.date:
    """Today in the utility's time zone: the day payments are booked and late fees counted to."""
    return dt.datetime.now(ZoneInfo(settings_of(request).timezone)).date()


def refuse(exc: LedgerError) -> NoReturn:
    """A refused billing service call as the console reports it (nothing was written)."""
    if isinstance(exc, PermissionDenied):
        raise Forbidden("permission") from exc
    message = str(exc)
    if isinstance(exc, InvoiceError):
        raise ActionError("invoice", message, 409) from exc
    if "already" in message:
        raise ActionError("conflict", message, 409) from exc
    raise ActionError("refused", message, 400) from exc


def parse_amount(text: str) -> Decimal:
    try:
        value = Decimal(text.strip().replace(",", ""))
    except InvalidOperation:
        raise ActionError("amount", f"not an amount: {text!r}", 400) from None
    if not value.is_finite():
        raise ActionError("amount", f"not an amount: {text!r}", 400)
    return value


def parse_method(text: str) -> PaymentMethod:
    for method in PAYMENT_METHODS:
        if method == text:
            return method
    raise ActionError("method", f"payment method must be one of {', '.join(PAYMENT_METHODS)}", 400)


def notice(request: Request, done: str | None, allowed: tuple[str, ...], section: str) -> dict[str, Any]:
    """The flash text after a redirect (`?done=…`), in the request's language."""
    if done not in allowed:
        return {}
    return {"message_ok": i18n.translate(language_of(request), f"billing.{section}.done_{done}")}


@dataclass(frozen=True)
class AccountInfo:
    id: int
    account_no: str
    card_no: str | None
    customer_no: str
    customer_name: str
    phone: str
    address: str
    community: str | None
    community_code: str | None
    area_id: int | None
    area: str | None
    usage_type: str
    billing_mode: str
    status: str


_ACCOUNT_SQL = """
SELECT a.id, a.account_no, a.card_no, c.customer_no, c.name, c.phone,
       coalesce(nullif(a.address, ''), nullif(c.address, ''), cm.address, ''),
       cm.name, cm.code, cm.area_id, ar.name, u.name, a.billing_mode, a.status
  FROM account a JOIN customer c ON c.id = a.customer_id JOIN usage_type u ON u.id = a.usage_type_id
  LEFT JOIN community cm ON cm.id = a.community_id LEFT JOIN area ar ON ar.id = cm.area_id
"""


def accounts_by_id(conn: psycopg.Connection[Any], ids: list[int]) -> dict[int, AccountInfo]:
    rows = conn.execute(_ACCOUNT_SQL + " WHERE a.id = ANY(%s)", [ids]).fetchall()
    return {int(r[0]): AccountInfo(*r) for r in rows}


def find_account_info(
    conn: psycopg.Connection[Any], account_no: str | None = None, card_no: str | None = None
) -> AccountInfo | None:
    column = "a.account_no" if account_no else "a.card_no"
    row = conn.execute(_ACCOUNT_SQL + f" WHERE {column} = %s", [account_no or card_no]).fetchone()
    return AccountInfo(*row) if row else None


def account_for(
    conn: psycopg.Connection[Any], user: Principal, account_no: str | None = None, card_no: str | None = None
) -> AccountInfo:
    """The account by number or card, within the user's areas; 404 or 403 otherwise."""
    account_no, card_no = (account_no or "").strip() or None, (card_no or "").strip() or None
    if not account_no and not card_no:
        raise ActionError("account", "give an account number or a card number", 400)
    info = find_account_info(conn, account_no, card_no)
    if info is None:
        raise ActionError("not_found", f"no account with number or card {account_no or card_no}", 404)
    if not user.covers_area(info.area_id):
        raise Forbidden("area")
    return info


def position_summary(position: AccountPosition) -> dict[str, Any]:
    """What the counter shows and the API returns: open bills, what is due, late fees, credit."""
    bills = position.open_bills
    return {
        "as_of": position.as_of,
        "bills": bills,
        "principal": sum((b.principal_due for b in bills), ZERO),
        "late_fees": sum((b.fee_due for b in bills), ZERO),
        "late_fees_unposted": position.unposted_fee,
        "due": sum((b.due for b in bills), ZERO),
        "arrears": position.arrears,
        "credit": position.credit,
        "balance": position.total_due,
    }


def holds_invoice_stock(request: Request, user: Principal) -> bool:
    return any(r.remaining > 0 for r in stock(store_of(request), user.username))


# -- reads --------------------------------------------------------------------------------------------
def recent_payments(conn: psycopg.Connection[Any], account_id: int, limit: int = 10) -> list[tuple[Any, ...]]:
    """Payments by the account or applied to it (as a related account), newest first."""
    return conn.execute(
        """SELECT p.id, p.paid_on, p.amount, p.channel, p.method, p.actor, r.receipt_no, a.account_no,
                  EXISTS (SELECT 1 FROM ledger_entry e WHERE e.payment_id = p.id AND e.entry_type = 'reversal')
             FROM payment p JOIN account a ON a.id = p.account_id LEFT JOIN receipt r ON r.payment_id = p.id
            WHERE p.account_id = %(a)s
               OR EXISTS (SELECT 1 FROM ledger_entry e WHERE e.payment_id = p.id AND e.account_id = %(a)s)
            ORDER BY p.id DESC LIMIT %(n)s""",
        {"a": account_id, "n": limit},
    ).fetchall()


def ledger_entries(conn: psycopg.Connection[Any], account_id: int, limit: int, offset: int) -> list[dict[str, Any]]:
    """The account's ledger in booking order with the running balance, one page of it."""
    rows = conn.execute(
        """SELECT * FROM (
             SELECT e.id, e.booked_on, e.entry_type, e.amount,
                    sum(e.amount) OVER (ORDER BY e.booked_on, e.id) AS balance,
                    e.component, b.period, e.bill_id, e.payment_id, r.receipt_no, e.waiver_id, e.reverses_id,
                    EXISTS (SELECT 1 FROM ledger_entry x WHERE x.reverses_id = e.id) AS reversed,
                    e.note, e.actor, e.posted_at
               FROM ledger_entry e LEFT JOIN bill b ON b.id = e.bill_id
               LEFT JOIN receipt r ON r.payment_id = e.payment_id
              WHERE e.account_id = %s) ledger
            ORDER BY booked_on, id LIMIT %s OFFSET %s""",
        [account_id, limit, offset],
    )
    names = [c.name for c in rows.description or []]
    return [dict(zip(names, row, strict=True)) for row in rows.fetchall()]


def ledger_count(conn: psycopg.Connection[Any], account_id: int) -> int:
    row = conn.execute("SELECT count(*) FROM ledger_entry WHERE account_id = %s", [account_id]).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class ReceiptView:
    receipt_no: str
    payment_id: int
    issued_at: dt.datetime
    print_count: int
    amount: Decimal
    paid_on: dt.date
    paid_at: dt.datetime
    channel: str
    method: str | None
    cashier: str
    note: str
    card_no: str | None
    batch_id: int | None
    group_id: int | None
    payer: AccountInfo
    applied: list[tuple[str, str, Decimal]]  # account no, payment | prepayment, amount
    reversal: tuple[Any, ...] | None  # booked_on, actor, note, posted_at
    invoices: list[tuple[Any, ...]]  # invoice_no, status, amount

    @property
    def credit(self) -> Decimal:
        return sum((a for _, kind, a in self.applied if kind == "prepayment"), ZERO)

    @property
    def mark(self) -> str:
        """Printed on every copy after the first (as billing.payments.Receipt)."""
        return "" if self.print_count <= 1 else f"重打 REPRINT {self.print_count - 1}"

    @property
    def live_invoice(self) -> str | None:
        return next((no for no, status, _ in self.invoices if status == "issued"), None)


def load_receipt(conn: psycopg.Connection[Any], user: Principal, receipt_no: str) -> ReceiptView:
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            """SELECT r.receipt_no, r.payment_id, r.issued_at, r.print_count, p.amount, p.paid_on, p.paid_at,
                      p.channel, p.method, p.actor AS cashier, p.note, p.card_no, p.batch_id, p.group_id,
                      p.account_id AS payer_id
                 FROM receipt r JOIN payment p ON p.id = r.payment_id WHERE r.receipt_no = %s""",
            [receipt_no],
        ).fetchone()
    if row is None:
        raise ActionError("not_found", f"no receipt {receipt_no}", 404)
    payer_id = int(row.pop("payer_id"))
    applied = conn.execute(
        """SELECT a.account_no, e.entry_type, -e.amount, a.id FROM ledger_entry e JOIN account a ON a.id = e.account_id
            WHERE e.payment_id = %s AND e.entry_type IN ('payment', 'prepayment') ORDER BY e.id""",
        [row["payment_id"]],
    ).fetchall()
    infos = accounts_by_id(conn, [payer_id, *(int(a[3]) for a in applied)])
    if not all(user.covers_area(info.area_id) for info in infos.values()):
        raise Forbidden("area")
    reversal = conn.execute(
        """SELECT booked_on, actor, note, posted_at FROM ledger_entry
            WHERE payment_id = %s AND entry_type = 'reversal' ORDER BY id LIMIT 1""",
        [row["payment_id"]],
    ).fetchone()
    invoices = conn.execute(
        "SELECT invoice_no, status, amount FROM invoice WHERE payment_id = %s ORDER BY id", [row["payment_id"]]
    ).fetchall()
    return ReceiptView(
        **row,
        payer=infos[payer_id],
        applied=[(a[0], a[1], a[2]) for a in applied],
        reversal=tuple(reversal) if reversal else None,
        invoices=[tuple(i) for i in invoices],
    )


def payment_receipt(conn: psycopg.Connection[Any], payment_id: int) -> str:
    row = conn.execute("SELECT receipt_no FROM receipt WHERE payment_id = %s", [payment_id]).fetchone()
    if row is None:
        raise ActionError("not_found", f"no payment {payment_id}", 404)
    return str(row[0])


def members_in_areas(conn: psycopg.Connection[Any], user: Principal, account_id: int) -> list[AccountInfo]:
    """The account's group (关联用户), all of it within the user's areas."""
    _, members = group_members(conn, account_id)
    infos = accounts_by_id(conn, members)
    if not all(user.covers_area(infos[i].area_id) for i in members):
        raise Forbidden("area")
    return [infos[i] for i in members]


# -- the counter page ---------------------------------------------------------------------------------
@router.get("/counter", include_in_schema=False)
def counter_page(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.pay"))],
    account_no: str | None = None,
    card_no: str | None = None,
    done: str | None = None,
) -> Response:
    if not (account_no or "").strip() and not (card_no or "").strip():
        return render(request, "billing/counter.html", account=None, methods=PAYMENT_METHODS)
    today = today_of(request)
    with store_of(request).connection() as conn:
        try:
            info = account_for(conn, user, account_no, card_no)
        except ActionError as exc:
            if exc.status != 404:
                raise
            return render(
                request, "billing/counter.html", 404, account=None, methods=PAYMENT_METHODS,
                not_found=(account_no or card_no or "").strip(), account_no=account_no, card_no=card_no,
            )  # fmt: skip
        group_id, member_ids = group_members(conn, info.id)
        held = positions(conn, member_ids, today)
        members = accounts_by_id(conn, member_ids) if group_id is not None else {}
        payments = recent_payments(conn, info.id)
    related = [
        {"info": members[i], "summary": position_summary(held[i])} for i in member_ids if i in members
    ]
    group_due = sum((max(held[i].total_due, ZERO) for i in member_ids), ZERO)
    balance = held[info.id].total_due
    return render(
        request,
        "billing/counter.html",
        account=info,
        summary=position_summary(held[info.id]),
        pay_default=money(balance) if balance > 0 else "",
        related=related,
        group_due=group_due,
        group_default=money(group_due) if group_due > 0 else "",
        payments=payments,
        methods=PAYMENT_METHODS,
        idempotency_key=uuid.uuid4().hex,  # one per rendered form: a double click books once
        invoice_stock=holds_invoice_stock(request, user),
        lookup={"card_no": info.card_no} if (card_no or "").strip() and not account_no else {},
        today=today,
        **notice(request, done, COUNTER_NOTICES, "counter"),
    )


def _counter_url(account_no: str, done: str) -> str:
    return f"/counter?{urlencode({'account_no': account_no, 'done': done})}"


def _receipt_url(receipt_no: str, **query: str) -> str:
    url = f"/counter/receipts/{quote(receipt_no, safe='')}"
    return f"{url}?{urlencode(query)}" if query else url


def _with_invoice(request: Request, user: Principal, result: PaymentResult) -> str | None:
    """Issue an invoice for a payment just taken; the reason when that is refused (the payment stands)."""
    try:
        issue_invoice(store_of(request), result.payment_id, user.username)
    except InvoiceError as exc:
        return str(exc)
    return None


@router.post("/counter/payments", include_in_schema=False)
def take_payment(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.pay"))],
    amount: Annotated[str, Form(max_length=30)],
    account_no: Annotated[str, Form(max_length=64)] = "",
    card_no: Annotated[str, Form(max_length=64)] = "",
    method: Annotated[str, Form()] = "cash",
    note: Annotated[str, Form(max_length=500)] = "",
    invoice: Annotated[str, Form()] = "",
    idempotency_key: Annotated[str, Form(max_length=KEY_MAX)] = "",
) -> Response:
    value, how = parse_amount(amount), parse_method(method)
    with store_of(request).connection() as conn:
        info = account_for(conn, user, account_no, None if account_no.strip() else card_no)
    by_card = not account_no.strip()
    try:
        result = pay(
            store_of(request), value, user.username,
            account_no=None if by_card else info.account_no, card_no=info.card_no if by_card else None,
            paid_on=today_of(request), note=note.strip(), method=how, idempotency_key=idempotency_key or None,
        )  # fmt: skip
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "payment", result.payment_id)
    problem = _with_invoice(request, user, result) if invoice and not result.replayed else None
    return redirect(_receipt_url(result.receipt_no, **({"invoice_error": problem} if problem else {"done": "paid"})))


@router.post("/counter/related", include_in_schema=False)
def take_related_payment(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.pay"))],
    account_no: Annotated[str, Form(max_length=64)],
    amount: Annotated[str, Form(max_length=30)] = "",
    method: Annotated[str, Form()] = "cash",
    idempotency_key: Annotated[str, Form(max_length=KEY_MAX)] = "",
) -> Response:
    value = parse_amount(amount) if amount.strip() else None
    how = parse_method(method)
    with store_of(request).connection() as conn:
        info = account_for(conn, user, account_no)
        members_in_areas(conn, user, info.id)
    try:
        result = pay_related(
            store_of(request), info.account_no, user.username, value, today_of(request), how,
            idempotency_key=idempotency_key or None,
        )  # fmt: skip
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "payment", result.payment_id)
    return redirect(_receipt_url(result.receipt_no, done="paid"))


@router.post("/counter/waivers", include_in_schema=False)
def waive_charge(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.waive"))],
    account_no: Annotated[str, Form(max_length=64)],
    period: Annotated[str, Form(pattern=r"^\d{4}-\d{2}$")],
    component: Annotated[WaiverComponent, Form()],
    amount: Annotated[str, Form(max_length=30)],
    reason: Annotated[str, Form(max_length=500)],
    next: Annotated[str, Form()] = "",
) -> Response:
    value = parse_amount(amount)
    with store_of(request).connection() as conn:
        info = account_for(conn, user, account_no)
    try:
        waiver_id = waive(
            store_of(request), info.account_no, period, component, value, reason, user.username,
            waived_on=today_of(request),
        )  # fmt: skip
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "waiver", waiver_id)
    target = safe_next(next) if next else _counter_url(info.account_no, "waived")
    return redirect(target)


# -- receipts, reversals, invoices --------------------------------------------------------------------
@router.get("/counter/receipts/{receipt_no}", include_in_schema=False)
def receipt_page(
    request: Request,
    receipt_no: str,
    user: Annotated[Principal, Depends(require("billing.view"))],
    done: str | None = None,
    invoice_error: str | None = None,
) -> Response:
    with store_of(request).connection() as conn:
        receipt = load_receipt(conn, user, receipt_no)
    can_invoice = (
        user.can("billing.pay")
        and receipt.cashier == user.username
        and receipt.reversal is None
        and receipt.live_invoice is None
        and holds_invoice_stock(request, user)
    )
    return render(
        request,
        "billing/receipt.html",
        receipt=receipt,
        can_invoice=can_invoice,
        invoice_error=invoice_error,
        **notice(request, done, COUNTER_NOTICES, "counter"),
    )


@router.get("/counter/receipts/{receipt_no}/print", include_in_schema=False)
def receipt_print_page(
    request: Request, receipt_no: str, user: Annotated[Principal, Depends(require("billing.view"))]
) -> Response:
    """The receipt on the default receipt print template (套打): the sheet at the template's paper size."""
    from dashboards.routes.system_settings import receipt_print_page as print_on_template

    return print_on_template(request, user, receipt_no)


@router.post("/counter/receipts/{receipt_no}/reprint", include_in_schema=False)
def reprint_receipt_page(
    request: Request, receipt_no: str, user: Annotated[Principal, Depends(require("billing.pay"))]
) -> Response:
    with store_of(request).connection() as conn:
        load_receipt(conn, user, receipt_no)
    try:
        reprint_receipt(store_of(request), receipt_no, user.username)
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "receipt", receipt_no)
    return redirect(_receipt_url(receipt_no, done="reprinted"))


@router.post("/counter/receipts/{receipt_no}/invoice", include_in_schema=False)
def invoice_receipt(
    request: Request, receipt_no: str, user: Annotated[Principal, Depends(require("billing.pay"))]
) -> Response:
    with store_of(request).connection() as conn:
        receipt = load_receipt(conn, user, receipt_no)
    try:
        issued = issue_invoice(store_of(request), receipt.payment_id, user.username)
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "invoice", issued.invoice_no)
    return redirect(_receipt_url(receipt_no, done="invoiced"))


@router.post("/counter/payments/{payment_id}/reverse", include_in_schema=False)
def reverse_payment_page(
    request: Request,
    payment_id: int,
    user: Annotated[Principal, Depends(require("billing.reverse"))],
    reason: Annotated[str, Form(max_length=500)],
) -> Response:
    with store_of(request).connection() as conn:
        receipt_no = payment_receipt(conn, payment_id)
        load_receipt(conn, user, receipt_no)
    try:
        reverse_payment(store_of(request), payment_id, user.username, reason, reversed_on=today_of(request))
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "payment", payment_id)
    return redirect(_receipt_url(receipt_no, done="reversed"))


# -- batch payments -----------------------------------------------------------------------------------
def parse_account_list(text: str) -> list[str]:
    """Account numbers pasted one per line, or separated by spaces, commas or semicolons."""
    return list(dict.fromkeys(n for n in re.split(r"[\s,;，；、]+", text) if n))


def batch_accounts(
    conn: psycopg.Connection[Any], user: Principal, community: str, accounts: str
) -> tuple[list[AccountInfo], list[str]]:
    """The accounts a batch would pay (in the user's areas) and the listed numbers that do not exist."""
    if community.strip():
        rows = conn.execute(
            "SELECT a.id FROM account a JOIN community c ON c.id = a.community_id WHERE c.code = %s "
            "ORDER BY a.account_no",
            [community.strip()],
        ).fetchall()
        if not rows and conn.execute("SELECT 1 FROM community WHERE code = %s", [community.strip()]).fetchone() is None:
            raise ActionError("not_found", f"no community {community.strip()}", 404)
        missing: list[str] = []
    else:
        wanted = parse_account_list(accounts)
        if not wanted:
            raise ActionError("batch", "give a community or a list of account numbers", 400)
        rows = conn.execute(
            "SELECT id, account_no FROM account WHERE account_no = ANY(%s) ORDER BY account_no", [wanted]
        ).fetchall()
        missing = sorted(set(wanted) - {r[1] for r in rows})
    infos = accounts_by_id(conn, [int(r[0]) for r in rows])
    ordered = sorted(infos.values(), key=lambda i: i.account_no)
    if not all(user.covers_area(i.area_id) for i in ordered):
        raise Forbidden("area")
    return ordered, missing


def communities_of(conn: psycopg.Connection[Any], user: Principal) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT code, name FROM community WHERE %s::bigint[] IS NULL OR area_id = ANY(%s) ORDER BY code LIMIT 1000",
        [None if user.area_ids is None else sorted(user.area_ids)] * 2,
    ).fetchall()


@router.get("/counter/batch", include_in_schema=False)
def batch_page(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.pay"))],
    community: str = "",
    accounts: str = "",
    nothing: int = 0,
) -> Response:
    preview: list[dict[str, Any]] | None = None
    missing: list[str] = []
    total = ZERO
    with store_of(request).connection() as conn:
        choices = communities_of(conn, user)
        if community.strip() or accounts.strip():
            found, missing = batch_accounts(conn, user, community, accounts)
            held = positions(conn, [i.id for i in found], today_of(request))
            preview = [{"info": i, "due": held[i.id].total_due} for i in found]
            total = sum((max(p["due"], ZERO) for p in preview), ZERO)
    return render(
        request,
        "billing/batch.html",
        communities=choices,
        community=community,
        accounts=accounts,
        preview=preview,
        missing=missing,
        owing=sum(1 for p in preview or [] if p["due"] > 0),
        total=total,
        methods=PAYMENT_METHODS,
        nothing=bool(nothing),
    )


@router.post("/counter/batch", include_in_schema=False)
def take_batch_payment(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.pay"))],
    community: Annotated[str, Form(max_length=64)] = "",
    accounts: Annotated[str, Form(max_length=100_000)] = "",
    method: Annotated[str, Form()] = "cash",
) -> Response:
    how = parse_method(method)
    with store_of(request).connection() as conn:
        found, missing = batch_accounts(conn, user, community, accounts)
    if missing:
        raise ActionError("unknown_accounts", f"unknown account numbers: {', '.join(missing)}", 400)
    try:
        if community.strip():
            result = pay_batch(
                store_of(request), user.username, community=community.strip(), paid_on=today_of(request), method=how
            )
        else:
            result = pay_batch(
                store_of(request), user.username, account_nos=[i.account_no for i in found],
                paid_on=today_of(request), method=how,
            )  # fmt: skip
    except LedgerError as exc:
        refuse(exc)
    if result.batch_id is None:
        return redirect("/counter/batch?" + urlencode({"nothing": 1, "community": community, "accounts": accounts}))
    note_object(request, "payment_batch", result.batch_id)
    return redirect(f"/counter/batches/{result.batch_id}")


def load_batch(conn: psycopg.Connection[Any], user: Principal, batch_id: int) -> dict[str, Any]:
    batch = conn.execute(
        "SELECT id, condition, created_by, created_at, accounts, amount FROM payment_batch WHERE id = %s", [batch_id]
    ).fetchone()
    if batch is None:
        raise ActionError("not_found", f"no payment batch {batch_id}", 404)
    payments = conn.execute(
        """SELECT p.id, p.account_id, a.account_no, p.amount, p.method, r.receipt_no, p.paid_on,
                  EXISTS (SELECT 1 FROM ledger_entry e WHERE e.payment_id = p.id AND e.entry_type = 'reversal')
             FROM payment p JOIN account a ON a.id = p.account_id JOIN receipt r ON r.payment_id = p.id
            WHERE p.batch_id = %s ORDER BY a.account_no""",
        [batch_id],
    ).fetchall()
    infos = accounts_by_id(conn, [int(p[1]) for p in payments])
    if not all(user.covers_area(i.area_id) for i in infos.values()):
        raise Forbidden("area")
    return {
        "id": batch[0],
        "condition": batch[1],
        "created_by": batch[2],
        "created_at": batch[3],
        "accounts": batch[4],
        "amount": batch[5],
        "payments": [
            {"payment_id": p[0], "info": infos[int(p[1])], "amount": p[3], "method": p[4], "receipt_no": p[5],
             "paid_on": p[6], "reversed": p[7]}
            for p in payments
        ],
    }  # fmt: skip


@router.get("/counter/batches/{batch_id}", include_in_schema=False)
def batch_result_page(
    request: Request, batch_id: int, user: Annotated[Principal, Depends(require("billing.view"))]
) -> Response:
    with store_of(request).connection() as conn:
        batch = load_batch(conn, user, batch_id)
    return render(request, "billing/batch_result.html", batch=batch)


# -- the ledger page ----------------------------------------------------------------------------------
@router.get("/counter/accounts/{account_no}/ledger", include_in_schema=False)
def ledger_page(
    request: Request,
    account_no: str,
    user: Annotated[Principal, Depends(require("billing.view"))],
    page: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    today = today_of(request)
    with store_of(request).connection() as conn:
        info = account_for(conn, user, account_no)
        total = ledger_count(conn, info.id)
        pages = max(1, -(-total // LEDGER_PAGE))
        current = min(page or pages, pages)  # the newest entries unless a page is asked for
        entries = ledger_entries(conn, info.id, LEDGER_PAGE, (current - 1) * LEDGER_PAGE)
        held = positions(conn, [info.id], today)[info.id]
    return render(
        request,
        "billing/ledger.html",
        account=info,
        entries=entries,
        summary=position_summary(held),
        ledger_balance=held.ledger_balance,
        page=current,
        pages=pages,
        total=total,
    )
