"""Bills and bill runs: bills by period, account, run and status with totals; a bill with its lines (usage type,
tier, volume, price, amount); bill runs and the form that starts one (`billing.bill_run.run_bills`).

A bill's status and what is still due on it come from the ledger (`billing.ledger.positions`) as of today:
paid (nothing due), overdue (due after its due date) or open. Working that out replays each account's ledger,
so a status filter needs the bills narrowed to at most `STATUS_LIMIT` (by period, account, run or community).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import psycopg
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import Response
from psycopg import sql
from psycopg.rows import dict_row

from billing.bill_run import BillRunError, BillRunResult, Scope, period_bounds, run_bills, scope_accounts_sql
from billing.ledger import ZERO, positions
from dashboards.routes.billing_counter import accounts_by_id, notice, today_of
from dashboards.security import Principal
from dashboards.web import ActionError, Forbidden, note_object, redirect, render, require, store_of

router = APIRouter()

BillStatus = Literal["open", "overdue", "paid"]
BILL_STATUSES: tuple[BillStatus, ...] = ("open", "overdue", "paid")
SCOPE_KINDS = ("all", "area", "book", "account")
STATUS_LIMIT = 5000
PAGE = 50
RUN_PAGE = 50


# -- bills --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BillFilter:
    period: str | None = None
    account_no: str | None = None
    community: str | None = None
    run_id: int | None = None
    status: BillStatus | None = None

    @classmethod
    def of(
        cls, period: str | None, account_no: str | None, community: str | None, run_id: int | None, status: str | None
    ) -> BillFilter:
        def clean(text: str | None) -> str | None:
            return (text or "").strip() or None

        if clean(period) is not None:
            try:
                period_bounds(clean(period) or "")
            except BillRunError as exc:
                raise ActionError("period", str(exc), 400) from None
        wanted = next((s for s in BILL_STATUSES if s == clean(status)), None)
        if clean(status) is not None and wanted is None:
            raise ActionError("status", f"status must be one of {', '.join(BILL_STATUSES)}", 400)
        return cls(clean(period), clean(account_no), clean(community), run_id, wanted)

    def query(self) -> dict[str, str]:
        """The filter as URL parameters (for pager links)."""
        values = {"period": self.period, "account_no": self.account_no, "community": self.community,
                  "run": self.run_id, "status": self.status}  # fmt: skip
        return {k: str(v) for k, v in values.items() if v is not None}


_BILL_FROM = """
  FROM bill b JOIN account a ON a.id = b.account_id JOIN customer c ON c.id = a.customer_id
  JOIN usage_type u ON u.id = b.usage_type_id LEFT JOIN community cm ON cm.id = a.community_id
"""
_BILL_COLUMNS = """
       b.id, b.account_id, a.account_no, c.name AS customer_name, cm.name AS community, u.name AS usage_type, b.period,
       b.period_start, b.period_end, b.volume_m3, b.amount, b.issued_on, b.due_date, b.bill_run_id"""


def _where(user: Principal, f: BillFilter) -> tuple[str, dict[str, Any]]:
    conditions: list[str] = ["true"]
    params: dict[str, Any] = {}
    if f.period:
        conditions.append("b.period = %(period)s")
        params["period"] = f.period
    if f.account_no:
        conditions.append("a.account_no = %(account_no)s")
        params["account_no"] = f.account_no
    if f.community:
        conditions.append("cm.code = %(community)s")
        params["community"] = f.community
    if f.run_id is not None:
        conditions.append("b.bill_run_id = %(run)s")
        params["run"] = f.run_id
    if user.area_ids is not None:
        conditions.append("cm.area_id = ANY(%(areas)s)")
        params["areas"] = sorted(user.area_ids)
    return " WHERE " + " AND ".join(conditions), params


def _with_status(conn: psycopg.Connection[Any], rows: list[dict[str, Any]], today: dt.date) -> None:
    """Add what is due on each bill now (principal and late fee) and its status, from the ledger."""
    held = positions(conn, {r["account_id"] for r in rows}, today)
    for row in rows:
        bill = next((b for b in held[row["account_id"]].bills if b.bill_id == row["id"]), None)
        if bill is None:  # issued after today: not in the ledger's position yet
            row.update(due=row["amount"], principal_due=row["amount"], late_fee=ZERO, status="open")
            continue
        row.update(due=bill.due, principal_due=bill.principal_due, late_fee=bill.fee_due)
        row["status"] = "paid" if bill.due <= 0 else "overdue" if bill.due_date < today else "open"


@dataclass
class BillList:
    rows: list[dict[str, Any]]
    count: int
    volume: Decimal
    amount: Decimal
    due: Decimal | None  # None when the filtered bills are too many to work out
    with_status: bool  # whether the status filter could be applied


def list_bills(
    conn: psycopg.Connection[Any], user: Principal, f: BillFilter, today: dt.date, limit: int, offset: int
) -> BillList:
    where, params = _where(user, f)
    totals = conn.execute(
        f"SELECT count(*), coalesce(sum(b.volume_m3), 0), coalesce(sum(b.amount), 0) {_BILL_FROM} {where}", params
    ).fetchone()
    assert totals is not None
    count, volume, amount = int(totals[0]), Decimal(totals[1]), Decimal(totals[2])
    order = " ORDER BY b.period DESC, a.account_no, b.id"
    with conn.cursor(row_factory=dict_row) as cursor:
        if count <= STATUS_LIMIT:
            rows = cursor.execute(f"SELECT {_BILL_COLUMNS} {_BILL_FROM} {where} {order}", params).fetchall()
            _with_status(conn, rows, today)
            if f.status:
                rows = [r for r in rows if r["status"] == f.status]
            return BillList(
                rows[offset : offset + limit],
                len(rows),
                sum((r["volume_m3"] for r in rows), Decimal(0)),
                sum((r["amount"] for r in rows), ZERO),
                sum((r["due"] for r in rows), ZERO),
                True,
            )
        rows = cursor.execute(
            f"SELECT {_BILL_COLUMNS} {_BILL_FROM} {where} {order} LIMIT %(limit)s OFFSET %(offset)s",
            {**params, "limit": limit, "offset": offset},
        ).fetchall()
    _with_status(conn, rows, today)
    return BillList(rows, count, volume, amount, None, f.status is None)


def load_bill(conn: psycopg.Connection[Any], user: Principal, bill_id: int, today: dt.date) -> dict[str, Any]:
    """A bill with its account, lines, waivers, run and what is due on it now."""
    with conn.cursor(row_factory=dict_row) as cursor:
        bill = cursor.execute(f"SELECT {_BILL_COLUMNS} {_BILL_FROM} WHERE b.id = %s", [bill_id]).fetchone()
        if bill is None:
            raise ActionError("not_found", f"no bill {bill_id}", 404)
        account = accounts_by_id(conn, [bill["account_id"]])[bill["account_id"]]
        if not user.covers_area(account.area_id):
            raise Forbidden("area")
        bill["lines"] = cursor.execute(
            """SELECT l.line_no, l.line_kind, u.code AS usage_code, u.name AS usage_type, l.charge_code, l.tier_no,
                      l.price_period_start, l.volume_m3, l.unit_price, l.amount
                 FROM bill_line l JOIN usage_type u ON u.id = l.usage_type_id
                WHERE l.bill_id = %s ORDER BY l.line_no""",
            [bill_id],
        ).fetchall()
        bill["waivers"] = cursor.execute(
            "SELECT id, component, amount, reason, actor, created_at FROM waiver WHERE bill_id = %s ORDER BY id",
            [bill_id],
        ).fetchall()
    _with_status(conn, [bill], today)
    bill["account"] = account
    bill["lines_total"] = sum((line["amount"] for line in bill["lines"]), ZERO)
    return bill


@router.get("/bills", include_in_schema=False)
def bills_page(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.view"))],
    period: str | None = None,
    account_no: str | None = None,
    community: str | None = None,
    run: int | None = None,
    status: str | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
) -> Response:
    f = BillFilter.of(period, account_no, community, run, status)
    with store_of(request).connection() as conn:
        found = list_bills(conn, user, f, today_of(request), PAGE, (page - 1) * PAGE)
    return render(
        request,
        "billing/bills.html",
        f=f,
        found=found,
        statuses=BILL_STATUSES,
        page=page,
        pages=max(1, -(-found.count // PAGE)),
        page_query=urlencode(f.query()),
        status_limit=STATUS_LIMIT,
    )


@router.get("/bills/{bill_id:int}", include_in_schema=False)
def bill_page(
    request: Request,
    bill_id: int,
    user: Annotated[Principal, Depends(require("billing.view"))],
    done: str | None = None,
) -> Response:
    with store_of(request).connection() as conn:
        bill = load_bill(conn, user, bill_id, today_of(request))
    return render(request, "billing/bill.html", bill=bill, **notice(request, done, ("waived",), "counter"))


# -- bill runs ----------------------------------------------------------------------------------------
def list_runs(conn: psycopg.Connection[Any], period: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(
            """SELECT id, period, scope, started_by, started_at, finished_at, status, bills_created, volume_m3,
                      amount, problems, problem_sample, error
                 FROM bill_run WHERE %(period)s::text IS NULL OR period = %(period)s
                ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s""",
            {"period": period, "limit": limit, "offset": offset},
        ).fetchall()


def load_run(conn: psycopg.Connection[Any], run_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cursor:
        run = cursor.execute("SELECT * FROM bill_run WHERE id = %s", [run_id]).fetchone()
    if run is None:
        raise ActionError("not_found", f"no bill run {run_id}", 404)
    return run


def scope_summary(conn: psycopg.Connection[Any], period: str, scope: Scope) -> tuple[int, Decimal]:
    """The period's bills in a scope: how many, and their amount."""
    query = sql.SQL("SELECT count(*), coalesce(sum(amount), 0) FROM bill WHERE period = {} AND account_id IN ({})")
    row = conn.execute(query.format(sql.Literal(period), scope_accounts_sql(scope))).fetchone()
    assert row is not None
    return int(row[0]), Decimal(row[1])


def parse_scope(text: str) -> Scope:
    try:
        return Scope.parse(text.strip())
    except BillRunError as exc:
        raise ActionError("scope", str(exc), 400) from None


def check_scope(conn: psycopg.Connection[Any], user: Principal, scope: Scope) -> None:
    """A user limited to areas bills only an area or an account within them."""
    if user.area_ids is None:
        return
    if scope.kind == "area":
        row = conn.execute("SELECT id FROM area WHERE code = %s", [scope.code]).fetchone()
    elif scope.kind == "account":
        row = conn.execute(
            "SELECT cm.area_id FROM account a LEFT JOIN community cm ON cm.id = a.community_id WHERE a.account_no = %s",
            [scope.code],
        ).fetchone()
    else:
        raise Forbidden("area")
    if row is None or not user.covers_area(row[0]):
        raise Forbidden("area")


def start_run(request: Request, user: Principal, period: str, scope: Scope) -> BillRunResult:
    """Bill the period for the scope as the user; bills are issued today (the run's default due days)."""
    with store_of(request).connection() as conn:
        check_scope(conn, user, scope)
    try:
        result = run_bills(store_of(request), period, scope, actor=user.username, issued_on=today_of(request))
    except BillRunError as exc:
        raise ActionError("bill_run", str(exc), 400) from None
    note_object(request, "bill_run", result.run_id if result.run_id is not None else f"{period} {scope}")
    return result


def previous_period(today: dt.date) -> str:
    first = today.replace(day=1) - dt.timedelta(days=1)
    return f"{first:%Y-%m}"


@router.get("/bills/runs", include_in_schema=False)
def runs_page(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.view"))],
    period: str | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    nothing: int = 0,
    scope: str = "all",
    problems: int = 0,
) -> Response:
    period = (period or "").strip() or None
    existing: tuple[int, Decimal] | None = None
    with store_of(request).connection() as conn:
        runs = list_runs(conn, period, RUN_PAGE, (page - 1) * RUN_PAGE)
        if nothing and period:
            existing = scope_summary(conn, period, parse_scope(scope))
    return render(
        request,
        "billing/runs.html",
        runs=runs,
        period=period,
        page=page,
        more=len(runs) == RUN_PAGE,
        default_period=previous_period(today_of(request)),
        scope_kinds=SCOPE_KINDS,
        nothing=bool(nothing),
        existing=existing,
        nothing_scope=scope,
        problems=problems,
    )


@router.post("/bills/runs", include_in_schema=False)
def start_run_page(
    request: Request,
    user: Annotated[Principal, Depends(require("billing.run"))],
    period: Annotated[str, Form(max_length=7)],
    scope_kind: Annotated[str, Form()] = "all",
    scope_code: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    scope = parse_scope("all" if scope_kind == "all" else f"{scope_kind}:{scope_code.strip()}")
    result = start_run(request, user, period.strip(), scope)
    if result.run_id is None:
        query = {"nothing": 1, "period": result.period, "scope": result.scope,
                 "problems": result.problems.select("account_id").n_unique()}  # fmt: skip
        return redirect(f"/bills/runs?{urlencode(query)}")
    return redirect(f"/bills/runs/{result.run_id}?done=created")


@router.get("/bills/runs/{run_id:int}", include_in_schema=False)
def run_page(
    request: Request,
    run_id: int,
    user: Annotated[Principal, Depends(require("billing.view"))],
    done: str | None = None,
) -> Response:
    with store_of(request).connection() as conn:
        run = load_run(conn, run_id)
    return render(request, "billing/run.html", run=run, **notice(request, done, ("created",), "runs"))
