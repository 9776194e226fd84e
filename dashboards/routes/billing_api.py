"""The billing API (`/api/v1`): account positions and ledgers, payments (single, related accounts, batch),
reversals, receipts, waivers, bills and bill runs. The same services and checks as the counter and bill pages
(billing_counter, billing_bills); money and volumes go out as exact decimal strings.

Payments take an `Idempotency-Key` header (per user): a retried request with the same key books nothing and
answers 200 with the first payment (the same receipt); the same key with a different request is refused (409).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from billing.invoices import InvoiceError, ensure_invoice
from billing.ledger import ZERO, AccountPosition, LedgerError, positions
from billing.payments import (
    KEY_MAX,
    IdempotencyConflict,
    PaymentMethod,
    PaymentResult,
    pay,
    pay_batch,
    pay_related,
    reprint_receipt,
    reverse_payment,
    waive,
)
from dashboards.routes.billing_bills import (
    STATUS_LIMIT,
    BillFilter,
    BillStatus,
    list_bills,
    list_runs,
    load_bill,
    parse_scope,
    start_run,
)
from dashboards.routes.billing_counter import (
    AccountInfo,
    ReceiptView,
    WaiverComponent,
    account_for,
    accounts_by_id,
    batch_accounts,
    ledger_count,
    ledger_entries,
    load_receipt,
    members_in_areas,
    money,
    payment_receipt,
    position_summary,
    refuse,
    today_of,
)
from dashboards.security import Principal
from dashboards.web import ActionError, note_object, require, store_of

router = APIRouter()

TAGS: list[Any] = ["billing"]
Amount = Annotated[Decimal, Field(gt=0, max_digits=14, decimal_places=2, examples=["120.50"])]
IdempotencyKey = Annotated[
    str | None,
    Header(max_length=KEY_MAX, description="the same key (per user) books once; a retry gets the first payment"),
]


def refuse_payment(exc: LedgerError) -> NoReturn:
    """A refused payment; an idempotency key reused for a different request is a conflict (409)."""
    if isinstance(exc, IdempotencyConflict):
        raise ActionError("idempotency_key_reused", str(exc), 409) from exc
    refuse(exc)




class BillDueOut(BaseModel):
    bill_id: int
    period: str
    due_date: dt.date
    amount: str = Field(description="as billed")
    principal_due: str
    late_fee_due: str
    due: str


class PositionOut(BaseModel):
    account_no: str
    as_of: dt.date
    due: str = Field(description="open on bills now: principal and late fees")
    principal_due: str
    late_fees: str = Field(description="late fees open now, posted or accrued")
    late_fees_unposted: str = Field(description="accrued but not yet in the ledger; a payment posts them")
    arrears: str = Field(description="due on bills past their due date (欠费)")
    credit: str = Field(description="paid in advance (预收), waiting for the next bills")
    balance: str = Field(description="due less credit; negative when the account is in credit")
    bills: list[BillDueOut] = Field(description="open bills, oldest first (the order payments pay them)")


def position_out(info: AccountInfo, position: AccountPosition) -> PositionOut:
    s = position_summary(position)
    return PositionOut(
        account_no=info.account_no,
        as_of=position.as_of,
        due=money(s["due"]),
        principal_due=money(s["principal"]),
        late_fees=money(s["late_fees"]),
        late_fees_unposted=money(s["late_fees_unposted"]),
        arrears=money(s["arrears"]),
        credit=money(s["credit"]),
        balance=money(s["balance"]),
        bills=[
            BillDueOut(
                bill_id=b.bill_id, period=b.period, due_date=b.due_date, amount=money(b.amount),
                principal_due=money(b.principal_due), late_fee_due=money(b.fee_due), due=money(b.due),
            )
            for b in s["bills"]
        ],
    )  # fmt: skip


@router.get("/api/v1/accounts/{account_no}/position", tags=TAGS)
def api_position(
    request: Request,
    account_no: str,
    user: Annotated[Principal, Depends(require("billing.view"))],
    as_of: dt.date | None = None,
) -> PositionOut:
    """What the account owes as of a day (default today): open bills, late fees, credit. Money as strings."""
    with store_of(request).connection() as conn:
        info = account_for(conn, user, account_no)
        held = positions(conn, [info.id], as_of or today_of(request))[info.id]
    return position_out(info, held)


class EntryOut(BaseModel):
    id: int
    booked_on: dt.date
    entry_type: str = Field(description="charge, late_fee, payment, prepayment, waiver or reversal")
    amount: str = Field(description="positive: owed by the customer; negative: paid or credited")
    balance: str = Field(description="running ledger balance after this entry")
    component: str | None
    period: str | None = Field(description="the bill's period, for charges, late fees and waivers")
    bill_id: int | None
    payment_id: int | None
    receipt_no: str | None
    waiver_id: int | None
    reverses_id: int | None
    reversed: bool
    note: str
    actor: str
    posted_at: dt.datetime


class LedgerOut(BaseModel):
    account_no: str
    total: int = Field(description="entries in the ledger")
    offset: int
    entries: list[EntryOut]


@router.get("/api/v1/accounts/{account_no}/ledger", tags=TAGS)
def api_ledger(
    request: Request,
    account_no: str,
    user: Annotated[Principal, Depends(require("billing.view"))],
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> LedgerOut:
    """The account's append-only ledger in booking order, with the running balance."""
    with store_of(request).connection() as conn:
        info = account_for(conn, user, account_no)
        total = ledger_count(conn, info.id)
        rows = ledger_entries(conn, info.id, limit, offset)
    entries = [EntryOut(**{**r, "amount": money(r["amount"]), "balance": money(r["balance"])}) for r in rows]
    return LedgerOut(account_no=info.account_no, total=total, offset=offset, entries=entries)


class PaymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account_no: str | None = Field(None, max_length=64, description="the account number (户号), or give card_no")
    card_no: str | None = Field(None, max_length=64)
    amount: Amount
    method: PaymentMethod = "cash"
    note: str = Field("", max_length=500)
    issue_invoice: bool = Field(False, description="issue an invoice from the cashier's stock with the payment")


class PaymentOut(BaseModel):
    payment_id: int
    receipt_no: str
    amount: str
    applied: dict[str, str] = Field(description="account number -> paid towards what it owed")
    credit: str = Field(description="booked as prepayment (预收) on the paying account")
    late_fees_posted: str
    invoice_no: str | None = None
    invoice_error: str | None = Field(None, description="why no invoice was issued (the payment stands)")


def payment_out(
    request: Request, result: PaymentResult, invoice_no: str | None = None, invoice_error: str | None = None
) -> PaymentOut:
    with store_of(request).connection() as conn:
        numbers = {i: a.account_no for i, a in accounts_by_id(conn, list(result.applied)).items()}
    return PaymentOut(
        payment_id=result.payment_id,
        receipt_no=result.receipt_no,
        amount=money(result.amount),
        applied={numbers[i]: money(v) for i, v in result.applied.items()},
        credit=money(result.credit),
        late_fees_posted=money(result.late_fees_posted),
        invoice_no=invoice_no,
        invoice_error=invoice_error,
    )


@router.post("/api/v1/payments", tags=TAGS, status_code=201)
def api_pay(
    request: Request,
    response: Response,
    body: PaymentIn,
    user: Annotated[Principal, Depends(require("billing.pay"))],
    idempotency_key: IdempotencyKey = None,
) -> PaymentOut:
    """A counter payment for one account (by account or card number), booked today. It pays the oldest bill
    first, within a bill the late fee before the principal; an excess is credit (预收). Send an
    `Idempotency-Key` header to make retries safe: the same key (per user) books once and answers 200 with the
    first payment and its invoice; the same key with another account, amount or method is refused (409)."""
    if (body.account_no is None) == (body.card_no is None):
        raise ActionError("account", "give account_no or card_no", 422)
    with store_of(request).connection() as conn:
        account_for(conn, user, body.account_no, body.card_no)
    try:
        result = pay(
            store_of(request), body.amount, user.username, account_no=body.account_no, card_no=body.card_no,
            paid_on=today_of(request), note=body.note, method=body.method, idempotency_key=idempotency_key,
        )  # fmt: skip
    except LedgerError as exc:
        refuse_payment(exc)
    note_object(request, "payment", result.payment_id)
    if result.replayed:
        response.status_code = 200
    invoice_no = invoice_error = None
    if body.issue_invoice:
        try:
            invoice_no = ensure_invoice(store_of(request), result.payment_id, user.username).invoice_no
        except InvoiceError as exc:
            invoice_error = str(exc)
    return payment_out(request, result, invoice_no, invoice_error)


class RelatedPaymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account_no: str = Field(max_length=64, description="any account of the group; it pays and keeps any excess")
    amount: Amount | None = Field(None, description="default: exactly what the group owes")
    method: PaymentMethod = "cash"


@router.post("/api/v1/payments/related", tags=TAGS, status_code=201)
def api_pay_related(
    request: Request,
    response: Response,
    body: RelatedPaymentIn,
    user: Annotated[Principal, Depends(require("billing.pay"))],
    idempotency_key: IdempotencyKey = None,
) -> PaymentOut:
    """One payment for every account related to `account_no` (关联用户), oldest bill first across them. A
    repeated `Idempotency-Key` answers 200 with the first payment."""
    with store_of(request).connection() as conn:
        info = account_for(conn, user, body.account_no)
        members_in_areas(conn, user, info.id)
    try:
        result = pay_related(
            store_of(request), info.account_no, user.username, body.amount, today_of(request), body.method,
            idempotency_key=idempotency_key,
        )  # fmt: skip
    except LedgerError as exc:
        refuse_payment(exc)
    note_object(request, "payment", result.payment_id)
    if result.replayed:
        response.status_code = 200
    return payment_out(request, result)


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    community: str | None = Field(None, max_length=64, description="a community (小区) code, or give account_nos")
    account_nos: list[str] | None = Field(None, max_length=10_000)
    method: PaymentMethod = "cash"


class BatchOut(BaseModel):
    batch_id: int | None = Field(description="null when no account owed anything (nothing was written)")
    accounts: int
    amount: str
    payments: list[PaymentOut]


@router.post("/api/v1/payments/batch", tags=TAGS, status_code=201)
def api_pay_batch(
    request: Request,
    response: Response,
    body: BatchIn,
    user: Annotated[Principal, Depends(require("billing.pay"))],
    idempotency_key: IdempotencyKey = None,
) -> BatchOut:
    """批量收费: every account of a community or of a list pays what it owes now, one payment each; all or
    nothing (an unknown account number refuses the whole batch). A repeated `Idempotency-Key` answers 200 with
    the first batch."""
    if (body.community is None) == (body.account_nos is None):
        raise ActionError("batch", "give community or account_nos", 422)
    with store_of(request).connection() as conn:
        batch_accounts(conn, user, body.community or "", "\n".join(body.account_nos or []))
    try:
        result = pay_batch(
            store_of(request), user.username, community=body.community, account_nos=body.account_nos,
            paid_on=today_of(request), method=body.method, idempotency_key=idempotency_key,
        )  # fmt: skip
    except LedgerError as exc:
        refuse_payment(exc)
    if result.batch_id is not None:
        note_object(request, "payment_batch", result.batch_id)
    if result.replayed:
        response.status_code = 200
    payments = [payment_out(request, p) for p in result.payments]
    return BatchOut(batch_id=result.batch_id, accounts=len(payments), amount=money(result.amount), payments=payments)


class ReverseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=500)


class ReverseOut(BaseModel):
    payment_id: int
    receipt_no: str
    entries: list[int] = Field(description="the reversal ledger entries")


@router.post("/api/v1/payments/{payment_id}/reverse", tags=TAGS, status_code=201)
def api_reverse(
    request: Request,
    payment_id: int,
    body: ReverseIn,
    user: Annotated[Principal, Depends(require("billing.reverse"))],
) -> ReverseOut:
    """冲账: mirror every ledger entry of a payment, with a reason. A payment is reversed at most once (409)."""
    with store_of(request).connection() as conn:
        receipt_no = payment_receipt(conn, payment_id)
        load_receipt(conn, user, receipt_no)
    try:
        entries = reverse_payment(store_of(request), payment_id, user.username, body.reason, today_of(request))
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "payment", payment_id)
    return ReverseOut(payment_id=payment_id, receipt_no=receipt_no, entries=entries)


class ReceiptOut(BaseModel):
    receipt_no: str
    payment_id: int
    account_no: str
    customer_name: str
    amount: str
    paid_on: dt.date
    channel: str
    method: str | None
    cashier: str
    applied: dict[str, str]
    credit: str
    print_count: int
    reprint_mark: str = Field(description="printed on every copy after the first")
    reversed: bool
    invoices: list[dict[str, str]]


def receipt_out(receipt: ReceiptView) -> ReceiptOut:
    applied: dict[str, Decimal] = {}
    for account_no, kind, amount in receipt.applied:
        if kind == "payment":
            applied[account_no] = applied.get(account_no, ZERO) + amount
    return ReceiptOut(
        receipt_no=receipt.receipt_no,
        payment_id=receipt.payment_id,
        account_no=receipt.payer.account_no,
        customer_name=receipt.payer.customer_name,
        amount=money(receipt.amount),
        paid_on=receipt.paid_on,
        channel=receipt.channel,
        method=receipt.method,
        cashier=receipt.cashier,
        applied={k: money(v) for k, v in applied.items()},
        credit=money(receipt.credit),
        print_count=receipt.print_count,
        reprint_mark=receipt.mark,
        reversed=receipt.reversal is not None,
        invoices=[{"invoice_no": no, "status": state, "amount": money(value)} for no, state, value in receipt.invoices],
    )


@router.get("/api/v1/receipts/{receipt_no}", tags=TAGS)
def api_receipt(
    request: Request, receipt_no: str, user: Annotated[Principal, Depends(require("billing.view"))]
) -> ReceiptOut:
    """A receipt: the payment, what it paid per account, its prints and whether it was reversed."""
    with store_of(request).connection() as conn:
        return receipt_out(load_receipt(conn, user, receipt_no))


@router.post("/api/v1/receipts/{receipt_no}/reprint", tags=TAGS)
def api_reprint(
    request: Request, receipt_no: str, user: Annotated[Principal, Depends(require("billing.pay"))]
) -> ReceiptOut:
    """Print a receipt again: counted, logged, and marked as a reprint on the copy."""
    with store_of(request).connection() as conn:
        load_receipt(conn, user, receipt_no)
    try:
        reprint_receipt(store_of(request), receipt_no, user.username)
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "receipt", receipt_no)
    with store_of(request).connection() as conn:
        return receipt_out(load_receipt(conn, user, receipt_no))


class WaiverIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account_no: str = Field(max_length=64)
    period: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="the bill's period, YYYY-MM")
    component: WaiverComponent
    amount: Amount
    reason: str = Field(min_length=1, max_length=500)


class WaiverOut(BaseModel):
    waiver_id: int
    account_no: str
    period: str
    component: str
    amount: str
    position: PositionOut = Field(description="the account's position after the waiver")


@router.post("/api/v1/waivers", tags=TAGS, status_code=201)
def api_waive(
    request: Request, body: WaiverIn, user: Annotated[Principal, Depends(require("billing.waive"))]
) -> WaiverOut:
    """免收费 / 滞纳金减免: waive part or all of a bill's principal or late fee, with a reason."""
    with store_of(request).connection() as conn:
        info = account_for(conn, user, body.account_no)
    today = today_of(request)
    try:
        waiver_id = waive(
            store_of(request), info.account_no, body.period, body.component, body.amount, body.reason,
            user.username, waived_on=today,
        )  # fmt: skip
    except LedgerError as exc:
        refuse(exc)
    note_object(request, "waiver", waiver_id)
    with store_of(request).connection() as conn:
        held = positions(conn, [info.id], today)[info.id]
    return WaiverOut(
        waiver_id=waiver_id, account_no=info.account_no, period=body.period, component=body.component,
        amount=money(body.amount), position=position_out(info, held),
    )  # fmt: skip


# -- bills and bill runs ------------------------------------------------------------------------------
class BillOut(BaseModel):
    id: int
    account_no: str
    customer_name: str
    period: str
    period_start: dt.date
    period_end: dt.date = Field(description="exclusive")
    usage_type: str
    volume_m3: str
    amount: str
    issued_on: dt.date
    due_date: dt.date
    bill_run_id: int
    due: str = Field(description="still due on the bill now: principal and late fee")
    late_fee_due: str
    status: BillStatus = Field(description="paid, overdue (due after the due date) or open")


def bill_out(row: dict[str, Any]) -> BillOut:
    return BillOut(
        **{k: row[k] for k in ("id", "account_no", "customer_name", "period", "period_start", "period_end",
                               "usage_type", "issued_on", "due_date", "bill_run_id", "status")},
        volume_m3=f"{row['volume_m3']:.3f}", amount=money(row["amount"]), due=money(row["due"]),
        late_fee_due=money(row["late_fee"]),
    )  # fmt: skip


class BillsOut(BaseModel):
    total: int = Field(description="bills matching the filter")
    volume_m3: str
    amount: str
    due: str | None = Field(description="still due on them now; null when they are too many to work out")
    offset: int
    bills: list[BillOut]


@router.get("/api/v1/bills", tags=TAGS)
def api_bills(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.view"))],
    period: Annotated[str | None, Query(description="YYYY-MM")] = None,
    account_no: str | None = None,
    community: Annotated[str | None, Query(description="a community (小区) code")] = None,
    run_id: int | None = None,
    status: Annotated[BillStatus | None, Query(description=f"needs at most {STATUS_LIMIT} bills")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> BillsOut:
    """Bills by period, account, community, run and status, with totals (in the caller's areas)."""
    f = BillFilter.of(period, account_no, community, run_id, status)
    with store_of(request).connection() as conn:
        found = list_bills(conn, user, f, today_of(request), limit, offset)
    if not found.with_status:
        raise ActionError("too_many", f"a status filter needs at most {STATUS_LIMIT} bills: narrow the filter", 400)
    return BillsOut(
        total=found.count,
        volume_m3=f"{found.volume:.3f}",
        amount=money(found.amount),
        due=None if found.due is None else money(found.due),
        offset=offset,
        bills=[bill_out(r) for r in found.rows],
    )


class BillLineOut(BaseModel):
    line_no: int
    line_kind: str = Field(description="energy, fixed_charge or minimum_topup")
    usage_type: str = Field(description="usage type code")
    charge_code: str | None
    tier_no: int | None = Field(description="0: single price, 1..: tier; null for charges")
    price_period_start: dt.date | None
    volume_m3: str | None
    unit_price: str | None
    amount: str


class BillDetailOut(BillOut):
    lines: list[BillLineOut] = Field(description="their amounts sum to the bill's amount")
    waivers: list[dict[str, str]]


@router.get("/api/v1/bills/{bill_id}", tags=TAGS)
def api_bill(
    request: Request, bill_id: int, user: Annotated[Principal, Depends(require("billing.view"))]
) -> BillDetailOut:
    """A bill with its lines (usage type, tier, volume, unit price, amount) and waivers."""
    with store_of(request).connection() as conn:
        bill = load_bill(conn, user, bill_id, today_of(request))
    lines = [
        BillLineOut(
            line_no=line["line_no"], line_kind=line["line_kind"], usage_type=line["usage_code"],
            charge_code=line["charge_code"], tier_no=line["tier_no"], price_period_start=line["price_period_start"],
            volume_m3=None if line["volume_m3"] is None else f"{line['volume_m3']:.3f}",
            unit_price=None if line["unit_price"] is None else f"{line['unit_price']:.4f}",
            amount=money(line["amount"]),
        )
        for line in bill["lines"]
    ]  # fmt: skip
    waivers = [
        {"id": str(w["id"]), "component": w["component"], "amount": money(w["amount"]), "reason": w["reason"],
         "actor": w["actor"], "created_at": w["created_at"].isoformat()}
        for w in bill["waivers"]
    ]  # fmt: skip
    return BillDetailOut(**bill_out(bill).model_dump(), lines=lines, waivers=waivers)


class BillRunOut(BaseModel):
    id: int
    period: str
    scope: str
    started_by: str
    started_at: dt.datetime
    finished_at: dt.datetime
    status: str = Field(description="committed or failed (a failed run left no bills)")
    bills_created: int
    volume_m3: str
    amount: str
    problems: int = Field(description="accounts left unbilled because they cannot be priced")
    problem_sample: list[dict[str, Any]]
    error: str


@router.get("/api/v1/bill-runs", tags=TAGS)
def api_bill_runs(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.view"))],
    period: Annotated[str | None, Query(description="YYYY-MM")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[BillRunOut]:
    """Bill runs, newest first: every run that billed something, and every failed run."""
    with store_of(request).connection() as conn:
        runs = list_runs(conn, period, limit, offset)
    return [
        BillRunOut(**{**r, "volume_m3": f"{r['volume_m3']:.3f}", "amount": money(r["amount"])}) for r in runs
    ]


class BillRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    period: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM")
    scope: str = Field("all", max_length=80, description="all, area:CODE, book:CODE or account:NO")


class BillRunResultOut(BaseModel):
    period: str
    scope: str
    run_id: int | None = Field(description="null when nothing was left to bill (nothing was written)")
    bills_created: int
    amount_created: str
    bills: int = Field(description="the period's bills in the scope after the run (the same on every re-run)")
    amount: str
    problems: list[dict[str, Any]] = Field(description="accounts left unbilled: account_id, usage_type, reason")


@router.post("/api/v1/bill-runs", tags=TAGS)
def api_start_bill_run(
    request: Request, body: BillRunIn, user: Annotated[Principal, Depends(require("billing.run"))]
) -> JSONResponse:
    """Bill every account in scope with approved consumption for the period and no bill for it yet, issued
    today. 201 when bills were written; 200 with `run_id` null when everything was already billed."""
    result = start_run(request, user, body.period, parse_scope(body.scope))
    out = BillRunResultOut(
        period=result.period,
        scope=result.scope,
        run_id=result.run_id,
        bills_created=result.bills_created,
        amount_created=money(result.amount_created),
        bills=result.bills,
        amount=money(result.amount),
        problems=result.problems.head(100).to_dicts(),
    )
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if result.run_id is not None else 200)
