"""Reading management (抄表管理): the review queue (抄表审核), reading books (抄表本), manual and handheld
readings, and reading statistics.

Pages live under `/review` (`readings.view` to look; `readings.review` to decide, validate and keep books;
`readings.manual` to enter or import readings); the API under `/api/v1/review`, `/api/v1/books` and
`/api/v1/reading-stats`. Decisions, books and manual readings go through `billing.review`,
`billing.reading_books` and `billing.handheld`; the queries here only read. Users limited to areas see and
act on the rows of their areas only: a queue row's area is its account's estate's area, a book's area is
the book's own.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import psycopg
from anyio import to_thread
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from billing.handheld import ReadingFileError, RowError, export_book, import_readings, reading_notices_html
from billing.reading_books import (
    SOURCES,
    BookError,
    add_manual_reading,
    add_meters,
    assign_reader,
    book_meters,
    create_book,
    create_reader,
    remove_meter,
    reorder,
    schedule,
)
from billing.reading_stats import (
    Grouping,
    ReadRate,
    RuleCount,
    UnreadMeter,
    flags_by_rule,
    meters_not_read,
    read_rates,
)
from billing.reading_store import calendar_month, local_midnight, parse_period
from billing.review import (
    STATUSES,
    ReviewError,
    accept,
    accept_unflagged,
    correct,
    estimate_readings,
    review_log,
)
from billing.review_run import validate_period
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
from dashboards.web import (
    text as _t,
)
from meterhub.store import Store

router = APIRouter()

PAGE_SIZE = 50
MAX_UPLOAD = 10 * 1024 * 1024
FUTURE_TOLERANCE = timedelta(minutes=5)
SEVERITY_BADGE = {"error": "bad", "warning": "warn", "info": "info"}
FILE_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
# Flash messages a redirect may ask for (`?ok=<key>`); anything else in the query is ignored.
OK_KEYS = frozenset(
    {
        "accepted",
        "bulk_accepted",
        "bulk_estimated",
        "unflagged_accepted",
        "corrected",
        "estimated",
        "validated",
        "book_created",
        "reader_created",
        "reader_assigned",
        "scheduled",
        "meters_added",
        "meter_removed",
        "reordered",
        "manual_saved",
        "imported",
    }
)
# The rows `accept_unflagged` takes: pending, read, nothing to estimate, no flag worse than informational.
UNFLAGGED = """r.status = 'pending' AND NOT r.estimation_needed AND r.read_in_period AND r.end_value IS NOT NULL
   AND r.consumption_m3 IS NOT NULL AND (r.worst_severity IS NULL OR r.worst_severity = 'info')"""


class Invalid(Exception):
    """A form or query value that cannot be used; `key` names its text in the catalogue."""

    def __init__(self, key: str, **values: Any) -> None:
        super().__init__(key)
        self.key = key
        self.values = values


def _label(language: str) -> Any:
    def label(section: str, code: str | None) -> str:
        if code is None or code == "":
            return ""
        key = f"{section}.{code}"
        return i18n.translate(language, key) if key in i18n.catalogue() else code

    return label


def _page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    ok = request.query_params.get("ok")
    if ok in OK_KEYS and "message_ok" not in context:
        context["message_ok"] = _t(request, f"review_ok.{ok}", n=request.query_params.get("n", ""))
    return render(request, template, status_code, label=_label(language_of(request)), **context)


def _refusal(request: Request, exc: Exception) -> str:
    """The message of a refused action: our own texts translated, a service's reason after a translated lead."""
    if isinstance(exc, Invalid):
        return _t(request, exc.key, **exc.values)
    if isinstance(exc, ActionError):
        return exc.message
    return f"{_t(request, 'review.refused')}: {exc}"


def _api_error(exc: Exception) -> ActionError:
    if isinstance(exc, Invalid):
        return ActionError("invalid", i18n.translate("en", exc.key, **exc.values), 400)
    if isinstance(exc, ActionError):
        return exc
    return ActionError("refused", str(exc), 400)


def _mine(user: Principal) -> list[int] | None:
    return None if user.area_ids is None else sorted(user.area_ids)


def _check_area(user: Principal, area_id: int | None) -> None:
    if not user.covers_area(area_id):
        raise Forbidden("area")


# -- values ---------------------------------------------------------------------------------------------------------
def _period(value: str | None) -> str:
    try:
        parse_period(value or "")
    except ValueError:
        raise Invalid("review.bad_period", value=value or "") from None
    assert value is not None
    return value


def _default_period(conn: psycopg.Connection[Any], timezone: str) -> str:
    """The latest period in the queue; before any validation, last month."""
    row = conn.execute("SELECT max(period) FROM reading_review").fetchone()
    if row and row[0]:
        return str(row[0])
    last = datetime.now(ZoneInfo(timezone)).date().replace(day=1) - timedelta(days=1)
    return f"{last.year:04d}-{last.month:02d}"


def _period_or_default(request: Request, value: str | None) -> str:
    if value:
        return _period(value)
    with store_of(request).connection() as conn:
        return _default_period(conn, settings_of(request).timezone)


def _decimal(text: str | None, field: str) -> Decimal | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise Invalid("review.bad_number", field=field, value=text) from None
    if not value.is_finite() or value < 0:
        raise Invalid("review.bad_number", field=field, value=text)
    if value != value.quantize(Decimal("0.001")):
        raise Invalid("review.too_many_decimals", field=field)
    return value.quantize(Decimal("0.001"))


def _moment(text: str | None, timezone: str, field: str) -> datetime | None:
    """A `datetime-local` value (or ISO time with offset) in the utility's time zone."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Invalid("review.bad_time", field=field, value=text) from None
    return moment.replace(tzinfo=ZoneInfo(timezone)) if moment.tzinfo is None else moment


def _s(value: Any) -> Any:
    """JSON form of a value: exact decimals and times as strings."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _exact(values: dict[str, Any] | None) -> dict[str, Any] | None:
    """Logged values (jsonb) with volumes back as exact 3-decimal numbers."""
    if values is None:
        return None
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, float):
            value = Decimal(repr(value)).quantize(Decimal("0.001"))
        elif isinstance(value, int) and not isinstance(value, bool) and key.endswith(("_value", "_m3")):
            value = Decimal(value).quantize(Decimal("0.001"))
        out[key] = value
    return out


# -- the queue ------------------------------------------------------------------------------------------------------
_QUEUE_FROM = """
  FROM reading_review r
  JOIN account a ON a.id = r.account_id
  JOIN meter m ON m.id = r.meter_id
  LEFT JOIN customer c ON c.id = a.customer_id
  LEFT JOIN community co ON co.id = a.community_id
  LEFT JOIN area ar ON ar.id = co.area_id
  LEFT JOIN reading_book_meter x ON x.meter_id = r.meter_id
  LEFT JOIN reading_book b ON b.id = x.book_id
  LEFT JOIN billing_reading br ON br.id = r.billing_reading_id
"""
_QUEUE_COLUMNS = """
SELECT r.id, r.period, r.account_id, a.account_no, c.name AS customer_name, r.meter_id, m.meter_no,
       co.area_id, ar.name AS area_name, b.code AS book_code, x.seq, r.run_id, r.bound_start, r.bound_end,
       r.candidate_source, r.start_ts, r.start_value, r.end_ts, r.end_value, r.consumption_m3, r.read_in_period,
       r.rollover_count, r.reset_count, r.flag_count, r.flag_rules, r.worst_severity, r.estimation_needed,
       r.estimation_reason, r.estimate_m3, r.estimate_method, r.status, r.billing_reading_id, r.decided_by,
       r.decided_at, r.decision_reason, br.kind AS approved_kind, br.version AS approved_version,
       br.end_value AS approved_end_value, br.consumption_m3 AS approved_consumption_m3
"""
_SCOPE = "(%(mine)s::bigint[] IS NULL OR co.area_id = ANY(%(mine)s::bigint[]))"


@dataclass(frozen=True)
class QueueFilter:
    period: str
    flagged: bool = False
    status: str | None = None
    book: str | None = None
    area: int | None = None
    rule: str | None = None

    def query(self, **extra: Any) -> str:
        values: dict[str, Any] = {"period": self.period}
        if self.flagged:
            values["flagged"] = 1
        for name in ("status", "book", "area", "rule"):
            if getattr(self, name) not in (None, ""):
                values[name] = getattr(self, name)
        values.update({k: v for k, v in extra.items() if v is not None})
        return urlencode(values)


def _queue_where(f: QueueFilter, user: Principal) -> tuple[str, dict[str, Any]]:
    where = ["r.period = %(period)s", _SCOPE]
    if f.flagged:
        where.append("(r.flag_count > 0 OR r.estimation_needed)")
    if f.status:
        if f.status not in STATUSES:
            raise Invalid("review.bad_status", value=f.status)
        where.append("r.status = %(status)s")
    if f.book:
        where.append("b.code = %(book)s")
    if f.area is not None:
        where.append(
            """co.area_id IN (WITH RECURSIVE t AS (SELECT %(area)s::bigint AS id
                                 UNION SELECT s.id FROM area s JOIN t ON s.parent_id = t.id) SELECT id FROM t)"""
        )
    if f.rule:
        where.append("%(rule)s = ANY(r.flag_rules)")
    params = {
        "period": f.period,
        "status": f.status,
        "book": f.book,
        "area": f.area,
        "rule": f.rule,
        "mine": _mine(user),
    }
    return " AND ".join(where), params


def _queue(
    conn: psycopg.Connection[Any], f: QueueFilter, user: Principal, limit: int, offset: int
) -> tuple[list[dict[str, Any]], int]:
    where, params = _queue_where(f, user)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"{_QUEUE_COLUMNS} {_QUEUE_FROM} WHERE {where} ORDER BY a.account_no, m.meter_no "
            "LIMIT %(limit)s OFFSET %(offset)s",
            {**params, "limit": limit, "offset": offset},
        ).fetchall()
    total = conn.execute(f"SELECT count(*) {_QUEUE_FROM} WHERE {where}", params).fetchone()
    return rows, int(total[0]) if total else 0


def _queue_counts(conn: psycopg.Connection[Any], period: str, user: Principal) -> dict[str, int]:
    row = conn.execute(
        f"""SELECT count(*), count(*) FILTER (WHERE r.status = 'pending'),
                   count(*) FILTER (WHERE r.status = 'pending' AND (r.flag_count > 0 OR r.estimation_needed)),
                   count(*) FILTER (WHERE {UNFLAGGED}), count(*) FILTER (WHERE r.status <> 'pending')
              {_QUEUE_FROM} WHERE r.period = %(period)s AND {_SCOPE}""",
        {"period": period, "mine": _mine(user)},
    ).fetchone()
    assert row is not None
    return dict(zip(("total", "pending", "flagged", "unflagged", "decided"), (int(v) for v in row), strict=True))


FlagMap = dict[tuple[int, int], list[dict[str, Any]]]


def _flags(conn: psycopg.Connection[Any], rows: Iterable[dict[str, Any]]) -> FlagMap:
    """Every flag of each row's validation run and meter, by (run id, meter id)."""
    keys = sorted({(int(r["run_id"]), int(r["meter_id"])) for r in rows if r["flag_count"]})
    found: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    if not keys:
        return found
    with conn.cursor(row_factory=dict_row) as cur:
        flags = cur.execute(
            """SELECT f.run_id, f.meter_id, f.rule_id, f.severity, f.ts_from, f.ts_to, f.observed, f.threshold, f.unit
                 FROM reading_flag f
                 JOIN unnest(%s::bigint[], %s::bigint[]) AS k(run_id, meter_id)
                   ON k.run_id = f.run_id AND k.meter_id = f.meter_id
                ORDER BY f.ts_from NULLS FIRST, f.rule_id""",
            [[k[0] for k in keys], [k[1] for k in keys]],
        ).fetchall()
    for flag in flags:
        found[(flag["run_id"], flag["meter_id"])].append(flag)
    return found


def _rule_summary(flags: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per rule: how many flags, and the numbers of the one furthest from its threshold."""
    by_rule: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for flag in flags:
        by_rule[flag["rule_id"]].append(flag)

    def distance(flag: dict[str, Any]) -> Decimal:
        if flag["observed"] is None or flag["threshold"] is None:
            return Decimal(0)
        return abs(Decimal(flag["observed"]) - Decimal(flag["threshold"]))

    out = []
    for rule_id, items in sorted(by_rule.items()):
        worst = max(items, key=distance)
        out.append(
            {
                "rule_id": rule_id,
                "severity": worst["severity"],
                "count": len(items),
                "observed": worst["observed"],
                "threshold": worst["threshold"],
                "unit": worst["unit"],
            }
        )
    return out


def _flag_json(flag: dict[str, Any]) -> dict[str, Any]:
    return {k: _s(flag[k]) for k in ("rule_id", "severity", "ts_from", "ts_to", "observed", "threshold", "unit")}


def _row_json(row: dict[str, Any], flags: Sequence[dict[str, Any]]) -> dict[str, Any]:
    approved = None
    if row["billing_reading_id"] is not None:
        approved = {
            "billing_reading_id": row["billing_reading_id"],
            "kind": row["approved_kind"],
            "version": row["approved_version"],
            "end_value": _s(row["approved_end_value"]),
            "consumption_m3": _s(row["approved_consumption_m3"]),
        }
    return {
        "id": row["id"],
        "period": row["period"],
        "account_no": row["account_no"],
        "customer_name": row["customer_name"],
        "meter_no": row["meter_no"],
        "area": row["area_name"],
        "book_code": row["book_code"],
        "served_from": _s(row["bound_start"]),
        "served_to": _s(row["bound_end"]),
        "candidate_source": row["candidate_source"],
        "start_ts": _s(row["start_ts"]),
        "start_value": _s(row["start_value"]),
        "end_ts": _s(row["end_ts"]),
        "end_value": _s(row["end_value"]),
        "consumption_m3": _s(row["consumption_m3"]),
        "read_in_period": row["read_in_period"],
        "flag_count": row["flag_count"],
        "flag_rules": list(row["flag_rules"]),
        "worst_severity": row["worst_severity"],
        "flags": [
            {**{k: _s(v) for k, v in s.items()}, "count": s["count"]} for s in _rule_summary(flags)
        ],
        "estimation_needed": row["estimation_needed"],
        "estimation_reason": row["estimation_reason"],
        "estimate_m3": _s(row["estimate_m3"]),
        "estimate_method": row["estimate_method"],
        "status": row["status"],
        "decided_by": row["decided_by"],
        "decided_at": _s(row["decided_at"]),
        "decision_reason": row["decision_reason"],
        "approved": approved,
    }


def _review(conn: psycopg.Connection[Any], review_id: int, user: Principal) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"{_QUEUE_COLUMNS} {_QUEUE_FROM} WHERE r.id = %s", [review_id]).fetchone()
    if row is None:
        raise ActionError("not_found", f"no review row {review_id}", 404)
    _check_area(user, row["area_id"])
    return row


def _review_detail(store: Store, review_id: int, user: Principal) -> dict[str, Any]:
    with store.connection() as conn:
        row = _review(conn, review_id, user)
        flags = _flags(conn, [row]).get((row["run_id"], row["meter_id"]), [])
        with conn.cursor(row_factory=dict_row) as cur:
            versions = cur.execute(
                """SELECT id, version, kind, start_value, end_value, end_ts, consumption_m3, reason, approved_by,
                          approved_at
                     FROM billing_reading WHERE account_id = %s AND meter_id = %s AND period = %s ORDER BY version""",
                [row["account_id"], row["meter_id"], row["period"]],
            ).fetchall()
    log = [
        {**entry, "old_values": _exact(entry["old_values"]), "new_values": _exact(entry["new_values"])}
        for entry in review_log(store, review_id)
    ]
    return {"row": row, "flags": flags, "rules": _rule_summary(flags), "versions": versions, "log": log}


def _review_areas(conn: psycopg.Connection[Any], review_ids: Sequence[int], user: Principal) -> None:
    """Every row exists and lies in the user's areas."""
    rows = conn.execute(
        """SELECT r.id, co.area_id FROM reading_review r JOIN account a ON a.id = r.account_id
             LEFT JOIN community co ON co.id = a.community_id WHERE r.id = ANY(%s)""",
        [list(review_ids)],
    ).fetchall()
    missing = sorted(set(review_ids) - {int(r[0]) for r in rows})
    if missing:
        raise ActionError("not_found", f"no review row {', '.join(str(i) for i in missing)}", 404)
    for _, area_id in rows:
        _check_area(user, area_id)


def _accept_unflagged(store: Store, period: str, user: Principal, reason: str) -> int:
    """Accept the period's clean rows (all of them, or those of the user's areas); how many."""
    if user.area_ids is None:
        return accept_unflagged(store, period, actor=user.username, reason=reason)
    with store.connection() as conn:
        ids = [
            int(r[0])
            for r in conn.execute(
                f"SELECT r.id {_QUEUE_FROM} WHERE r.period = %(period)s AND {_SCOPE} AND {UNFLAGGED}",
                {"period": period, "mine": _mine(user)},
            ).fetchall()
        ]
    return len(accept(store, ids, actor=user.username, reason=reason)) if ids else 0


def _choices(conn: psycopg.Connection[Any], user: Principal) -> dict[str, Any]:
    """Books, areas and periods offered in filters (areas and books of the user's areas only)."""
    mine = _mine(user)
    books = conn.execute(
        """SELECT code, name FROM reading_book
            WHERE %(mine)s::bigint[] IS NULL OR area_id = ANY(%(mine)s::bigint[]) ORDER BY code""",
        {"mine": mine},
    ).fetchall()
    areas = conn.execute(
        "SELECT id, name FROM area WHERE %(mine)s::bigint[] IS NULL OR id = ANY(%(mine)s::bigint[]) ORDER BY code",
        {"mine": mine},
    ).fetchall()
    periods = [
        r[0]
        for r in conn.execute(
            """SELECT period FROM reading_period UNION SELECT DISTINCT period FROM reading_review
                ORDER BY 1 DESC LIMIT 36"""
        ).fetchall()
    ]
    return {"books": books, "areas": areas, "periods": periods}


def _latest_run(conn: psycopg.Connection[Any], period: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT id, run_by, started_at, finished_at, meters, readings, flags, queue_rows, flags_by_rule
                 FROM validation_run WHERE period = %s ORDER BY id DESC LIMIT 1""",
            [period],
        ).fetchone()


def _queue_filter(
    period: str, flagged: str | None, status: str | None, book: str | None, area: str | None, rule: str | None
) -> QueueFilter:
    area_id = None
    if area:
        try:
            area_id = int(area)
        except ValueError:
            raise Invalid("review.bad_area", value=area) from None
    return QueueFilter(
        period=period,
        flagged=flagged in ("1", "true", "on", "yes"),
        status=status or None,
        book=book or None,
        area=area_id,
        rule=rule or None,
    )


def _queue_page(
    request: Request, user: Principal, f: QueueFilter, page: int, *, status_code: int = 200, error: str | None = None
) -> HTMLResponse:
    page = max(page, 1)
    with store_of(request).connection() as conn:
        rows, total = _queue(conn, f, user, PAGE_SIZE, (page - 1) * PAGE_SIZE)
        flags = _flags(conn, rows)
        counts = _queue_counts(conn, f.period, user)
        run = _latest_run(conn, f.period)
        choices = _choices(conn, user)
    summaries = {r["id"]: _rule_summary(flags.get((r["run_id"], r["meter_id"]), [])) for r in rows}
    pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
    here = f"/review?{f.query(page=page if page > 1 else None)}"
    return _page(
        request,
        "review/queue.html",
        status_code,
        f=f,
        rows=rows,
        summaries=summaries,
        total=total,
        page=page,
        pages=pages,
        prev_url=f"/review?{f.query(page=page - 1)}" if page > 1 else None,
        next_url=f"/review?{f.query(page=page + 1)}" if page < pages else None,
        here=here,
        counts=counts,
        run=run,
        statuses=STATUSES,
        badge=SEVERITY_BADGE,
        message_error=error,
        **choices,
    )


@router.get("/review", include_in_schema=False)
def review_page(
    request: Request,
    user: Annotated[Principal, Depends(require("readings.view"))],
    period: str | None = None,
    flagged: str | None = None,
    status: str | None = None,
    book: str | None = None,
    area: str | None = None,
    rule: str | None = None,
    page: int = 1,
) -> Response:
    try:
        f = _queue_filter(_period_or_default(request, period), flagged, status, book, area, rule)
        return _queue_page(request, user, f, page)
    except Invalid as exc:
        raise ActionError("invalid", _refusal(request, exc), 400) from None


def _back(value: str | None, fallback: str) -> str:
    target = safe_next(value)
    return target if target.startswith("/review") else fallback


def _with_ok(url: str, key: str, **values: Any) -> str:
    """`url` with a flash message asked for (earlier ones dropped)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("ok", "n", "entry")]
    query += [("ok", key), *((k, str(v)) for k, v in values.items() if v is not None)]
    return urlunsplit(("", "", parts.path, urlencode(query), ""))


def _queue_from_back(back: str, period: str) -> QueueFilter:
    """The filter of the queue page a bulk form came from (so that a refusal shows the same page)."""
    values = dict(parse_qsl(urlsplit(back).query))
    try:
        f = _queue_filter(
            period, values.get("flagged"), values.get("status"), values.get("book"), values.get("area"),
            values.get("rule"),
        )
    except Invalid:
        return QueueFilter(period)
    return f


def _valid_period(value: str | None) -> str | None:
    try:
        return _period(value)
    except Invalid:
        return None


@router.post("/review/validate", include_in_schema=False)
def validate_page(
    request: Request,
    user: Annotated[Principal, Depends(require("readings.review"))],
    period: Annotated[str, Form()],
) -> Response:
    note_object(request, "reading_period", period)
    try:
        period = _period(period)
        result = validate_period(store_of(request), period, actor=user.username)
    except (Invalid, ValueError) as exc:
        raise ActionError("invalid", _refusal(request, exc), 400) from None
    return redirect(f"/review?{urlencode({'period': period, 'ok': 'validated', 'n': result.queue_rows})}")


@router.post("/review/accept", include_in_schema=False)
def bulk_page(
    request: Request,
    user: Annotated[Principal, Depends(require("readings.review"))],
    period: Annotated[str, Form()],
    ids: Annotated[list[int] | None, Form()] = None,
    action: Annotated[Literal["accept", "estimate"], Form()] = "accept",
    reason: Annotated[str, Form(max_length=500)] = "",
    back: Annotated[str, Form()] = "",
) -> Response:
    chosen = sorted(set(ids or []))
    note_object(request, "reading_review", ",".join(str(i) for i in chosen) or None)
    period_ok = _valid_period(period)
    back = _back(back, f"/review?{urlencode({'period': period_ok or ''})}")
    try:
        if not chosen:
            raise Invalid("review.none_selected")
        with store_of(request).connection() as conn:
            _review_areas(conn, chosen, user)
        if action == "estimate":
            done = estimate_readings(store_of(request), chosen, actor=user.username, reason=reason)
            return redirect(_with_ok(back, "bulk_estimated", n=len(done)))
        done = accept(store_of(request), chosen, actor=user.username, reason=reason)
        return redirect(_with_ok(back, "bulk_accepted", n=len(done)))
    except (Invalid, ReviewError) as exc:
        if period_ok is None:
            raise ActionError("invalid", _refusal(request, exc), 400) from None
        return _queue_page(request, user, _queue_from_back(back, period_ok), 1, status_code=400,
                           error=_refusal(request, exc))


@router.post("/review/accept-unflagged", include_in_schema=False)
def accept_unflagged_page(
    request: Request,
    user: Annotated[Principal, Depends(require("readings.review"))],
    period: Annotated[str, Form()],
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    note_object(request, "reading_period", period)
    try:
        period = _period(period)
        count = _accept_unflagged(store_of(request), period, user, reason)
    except (Invalid, ReviewError) as exc:
        raise ActionError("refused", _refusal(request, exc), 400) from None
    return redirect(f"/review?{urlencode({'period': period, 'ok': 'unflagged_accepted', 'n': count})}")


def _row_page(
    request: Request, user: Principal, review_id: int, *, status_code: int = 200, error: str | None = None,
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    detail = _review_detail(store_of(request), review_id, user)
    return _page(
        request,
        "review/row.html",
        status_code,
        badge=SEVERITY_BADGE,
        message_error=error,
        form=form or {},
        back=_back(request.query_params.get("back"), f"/review?{urlencode({'period': detail['row']['period']})}"),
        **detail,
    )


@router.get("/review/{review_id:int}", include_in_schema=False)
def row_page(
    request: Request, review_id: int, user: Annotated[Principal, Depends(require("readings.view"))]
) -> Response:
    return _row_page(request, user, review_id)


@router.post("/review/{review_id:int}/accept", include_in_schema=False)
def accept_page(
    request: Request,
    review_id: int,
    user: Annotated[Principal, Depends(require("readings.review"))],
    reason: Annotated[str, Form(max_length=500)] = "",
    back: Annotated[str, Form()] = "",
) -> Response:
    note_object(request, "reading_review", review_id)
    with store_of(request).connection() as conn:
        _review(conn, review_id, user)
    try:
        accept(store_of(request), [review_id], actor=user.username, reason=reason)
    except ReviewError as exc:
        return _row_page(request, user, review_id, status_code=400, error=_refusal(request, exc))
    return redirect(_with_ok(_back(back, f"/review/{review_id}"), "accepted", n=1))


@router.post("/review/{review_id:int}/correct", include_in_schema=False)
def correct_page(
    request: Request,
    review_id: int,
    user: Annotated[Principal, Depends(require("readings.review"))],
    end_value: Annotated[str, Form(max_length=40)] = "",
    reason: Annotated[str, Form(max_length=500)] = "",
    start_value: Annotated[str, Form(max_length=40)] = "",
    consumption_m3: Annotated[str, Form(max_length=40)] = "",
    end_ts: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    note_object(request, "reading_review", review_id)
    form = {"end_value": end_value, "reason": reason, "start_value": start_value,
            "consumption_m3": consumption_m3, "end_ts": end_ts}
    with store_of(request).connection() as conn:
        _review(conn, review_id, user)
    try:
        value = _decimal(end_value, "end_value")
        if value is None:
            raise Invalid("review.end_value_required")
        if not reason.strip():
            raise Invalid("review.need_reason")
        correct(
            store_of(request),
            review_id,
            actor=user.username,
            reason=reason,
            end_value=value,
            start_value=_decimal(start_value, "start_value"),
            consumption_m3=_decimal(consumption_m3, "consumption_m3"),
            end_ts=_moment(end_ts, settings_of(request).timezone, "end_ts"),
        )
    except (Invalid, ReviewError) as exc:
        return _row_page(request, user, review_id, status_code=400, error=_refusal(request, exc), form=form)
    return redirect(_with_ok(f"/review/{review_id}", "corrected"))


@router.post("/review/{review_id:int}/estimate", include_in_schema=False)
def estimate_page(
    request: Request,
    review_id: int,
    user: Annotated[Principal, Depends(require("readings.review"))],
    consumption_m3: Annotated[str, Form(max_length=40)] = "",
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    note_object(request, "reading_review", review_id)
    with store_of(request).connection() as conn:
        _review(conn, review_id, user)
    try:
        use = _decimal(consumption_m3, "consumption_m3")
        estimate_readings(store_of(request), [review_id], actor=user.username, reason=reason, consumption_m3=use)
    except (Invalid, ReviewError) as exc:
        form = {"estimate_m3": consumption_m3, "estimate_reason": reason}
        return _row_page(request, user, review_id, status_code=400, error=_refusal(request, exc), form=form)
    return redirect(_with_ok(f"/review/{review_id}", "estimated"))


# -- reading books ----------------------------------------------------------------------------------------------
_BOOKS = """
SELECT b.id, b.code, b.name, b.area_id, ar.name AS area_name, rd.code AS reader_code, rd.name AS reader_name,
       b.reading_day, b.active,
       (SELECT count(*) FROM reading_book_meter x WHERE x.book_id = b.id) AS meters,
       (SELECT count(DISTINCT mr.meter_id) FROM manual_reading mr
         WHERE mr.period = %(period)s AND mr.meter_id IN (SELECT x.meter_id FROM reading_book_meter x
                                                           WHERE x.book_id = b.id)) AS read_manually,
       s.planned_date, s.status AS schedule_status, srd.code AS schedule_reader_code,
       srd.name AS schedule_reader_name, s.exported_at, s.imported_at
  FROM reading_book b
  LEFT JOIN area ar ON ar.id = b.area_id
  LEFT JOIN meter_reader rd ON rd.id = b.reader_id
  LEFT JOIN reading_schedule s ON s.book_id = b.id AND s.period = %(period)s
  LEFT JOIN meter_reader srd ON srd.id = s.reader_id
"""


def _books(conn: psycopg.Connection[Any], user: Principal, period: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"{_BOOKS} WHERE %(mine)s::bigint[] IS NULL OR b.area_id = ANY(%(mine)s::bigint[]) ORDER BY b.code",
            {"period": period, "mine": _mine(user)},
        ).fetchall()


def _book(conn: psycopg.Connection[Any], code: str, user: Principal, period: str | None = None) -> dict[str, Any]:
    """The book with its schedule for `period` (none without one); 404 unknown, 403 outside the user's areas."""
    with conn.cursor(row_factory=dict_row) as cur:
        book = cur.execute(f"{_BOOKS} WHERE b.code = %(code)s", {"period": period, "code": code}).fetchone()
    if book is None:
        raise ActionError("not_found", f"no reading book {code!r}", 404)
    _check_area(user, book["area_id"])
    return book


def _readers(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT rd.code, rd.name, rd.phone, rd.active, u.username
                 FROM meter_reader rd LEFT JOIN staff_user u ON u.id = rd.staff_user_id ORDER BY rd.code"""
        ).fetchall()


def _book_meters(store: Store, code: str, period: str) -> list[dict[str, Any]]:
    """The book's meters in route order, each with its last reading up to the period's end, the period's manual
    reading and its queue row."""
    meters = book_meters(store, code)
    end = local_midnight(calendar_month(period)[1], store.settings.timezone)
    with store.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        extra = {
            r["meter_id"]: r
            for r in cur.execute(
                """SELECT m.id AS meter_id, co.area_id, prev.value AS last_value, prev.ts AS last_ts,
                          mr.value AS manual_value, mr.ts AS manual_ts, r.id AS review_id, r.status,
                          r.consumption_m3, r.read_in_period, r.flag_count, r.worst_severity
                     FROM unnest(%(ids)s::bigint[]) AS k(id)
                     JOIN meter m ON m.id = k.id
                     LEFT JOIN account a ON a.id = m.account_id
                     LEFT JOIN community co ON co.id = a.community_id
                     LEFT JOIN LATERAL (
                          SELECT u.value, u.ts FROM (
                              (SELECT value, ts FROM reading WHERE meter_id = m.id AND channel = 'volume_m3'
                                  AND ts <= %(end)s ORDER BY ts DESC LIMIT 1)
                              UNION ALL
                              (SELECT value, ts FROM manual_reading WHERE meter_id = m.id AND ts <= %(end)s
                                ORDER BY ts DESC LIMIT 1)) u ORDER BY u.ts DESC LIMIT 1) prev ON true
                     LEFT JOIN LATERAL (
                          SELECT value, ts FROM manual_reading
                           WHERE meter_id = m.id AND period = %(period)s ORDER BY entered_at DESC, id DESC LIMIT 1
                          ) mr ON true
                     LEFT JOIN LATERAL (
                          SELECT * FROM reading_review WHERE meter_id = m.id AND period = %(period)s
                           ORDER BY id LIMIT 1) r ON true""",
                {"ids": [m.meter_id for m in meters], "end": end, "period": period},
            ).fetchall()
        }
    return [{**m.__dict__, **extra.get(m.meter_id, {})} for m in meters]


def _manual_readings(conn: psycopg.Connection[Any], book_id: int, period: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT mr.id, m.meter_no, mr.ts, mr.value, mr.source, mr.note, mr.photo_ref, mr.entered_by,
                      mr.entered_at, mr.import_id, rd.name AS reader_name
                 FROM manual_reading mr
                 JOIN meter m ON m.id = mr.meter_id
                 LEFT JOIN meter_reader rd ON rd.id = mr.reader_id
                WHERE mr.period = %(period)s
                  AND (mr.book_id = %(book)s
                       OR mr.meter_id IN (SELECT meter_id FROM reading_book_meter WHERE book_id = %(book)s))
                ORDER BY mr.entered_at DESC, mr.id DESC LIMIT 500""",
            {"book": book_id, "period": period},
        ).fetchall()


def _schedules(conn: psycopg.Connection[Any], book_id: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT s.period, s.planned_date, rd.code AS reader_code, rd.name AS reader_name, s.status,
                      s.exported_at, s.imported_at
                 FROM reading_schedule s LEFT JOIN meter_reader rd ON rd.id = s.reader_id
                WHERE s.book_id = %s ORDER BY s.period DESC LIMIT 12""",
            [book_id],
        ).fetchall()


def _entry_feedback(conn: psycopg.Connection[Any], entry_id: int, book_id: int) -> dict[str, Any] | None:
    """A manual reading just entered, next to the meter's previous reading: the use it implies."""
    with conn.cursor(row_factory=dict_row) as cur:
        entry = cur.execute(
            """SELECT mr.id, mr.meter_id, m.meter_no, mr.ts, mr.value, mr.period FROM manual_reading mr
                 JOIN meter m ON m.id = mr.meter_id WHERE mr.id = %s AND mr.book_id = %s""",
            [entry_id, book_id],
        ).fetchone()
        if entry is None:
            return None
        prev = cur.execute(
            """SELECT u.value, u.ts FROM (
                   (SELECT value, ts FROM reading WHERE meter_id = %(m)s AND channel = 'volume_m3' AND ts < %(ts)s
                     ORDER BY ts DESC LIMIT 1)
                   UNION ALL
                   (SELECT value, ts FROM manual_reading WHERE meter_id = %(m)s AND ts < %(ts)s AND id <> %(id)s
                     ORDER BY ts DESC LIMIT 1)) u ORDER BY u.ts DESC LIMIT 1""",
            {"m": entry["meter_id"], "ts": entry["ts"], "id": entry_id},
        ).fetchone()
    entry["previous_value"] = prev["value"] if prev else None
    entry["previous_ts"] = prev["ts"] if prev else None
    entry["use"] = entry["value"] - prev["value"] if prev else None
    return entry


def _book_page(
    request: Request,
    user: Principal,
    code: str,
    period: str,
    *,
    status_code: int = 200,
    error: str | None = None,
    import_errors: Sequence[Any] = (),
    form: dict[str, str] | None = None,
) -> HTMLResponse:
    store = store_of(request)
    with store.connection() as conn:
        book = _book(conn, code, user, period)
    meters = _book_meters(store, code, period)
    with store.connection() as conn:
        manual = _manual_readings(conn, book["id"], period)
        schedules = _schedules(conn, book["id"])
        readers = _readers(conn)
        entry = None
        if request.query_params.get("ok") == "manual_saved" and request.query_params.get("entry", "").isdigit():
            entry = _entry_feedback(conn, int(request.query_params["entry"]), book["id"])
        periods = _choices(conn, user)["periods"]
    return _page(
        request,
        "review/book.html",
        status_code,
        book=book,
        period=period,
        periods=periods,
        meters=meters,
        manual=manual,
        schedules=schedules,
        readers=readers,
        entry=entry,
        sources=SOURCES,
        badge=SEVERITY_BADGE,
        message_error=error,
        import_errors=import_errors,
        form=form or {},
        book_url=f"/review/books/{quote(code, safe='')}",
    )


def _books_page(
    request: Request, user: Principal, period: str, *, status_code: int = 200, error: str | None = None
) -> HTMLResponse:
    with store_of(request).connection() as conn:
        books = _books(conn, user, period)
        readers = _readers(conn)
        choices = _choices(conn, user)
    return _page(
        request,
        "review/books.html",
        status_code,
        books=books,
        readers=readers,
        period=period,
        message_error=error,
        areas=choices["areas"],
        periods=choices["periods"],
    )


@router.get("/review/books", include_in_schema=False)
def books_page(
    request: Request, user: Annotated[Principal, Depends(require("readings.view"))], period: str | None = None
) -> Response:
    try:
        return _books_page(request, user, _period_or_default(request, period))
    except Invalid as exc:
        raise ActionError("invalid", _refusal(request, exc), 400) from None


@router.post("/review/books", include_in_schema=False)
def create_book_page(
    request: Request,
    user: Annotated[Principal, Depends(require("readings.review"))],
    code: Annotated[str, Form(min_length=1, max_length=40)],
    name: Annotated[str, Form(min_length=1, max_length=200)],
    area_id: Annotated[str, Form()] = "",
    reader_code: Annotated[str, Form()] = "",
    reading_day: Annotated[int, Form(ge=1, le=28)] = 1,
) -> Response:
    code = code.strip()
    note_object(request, "reading_book", code)
    store = store_of(request)
    try:
        area_code = None
        if area_id:
            with store.connection() as conn:
                row = conn.execute("SELECT code FROM area WHERE id = %s", [int(area_id)]).fetchone()
            if row is None:
                raise Invalid("review.bad_area", value=area_id)
            area_code = row[0]
        if not user.covers_area(int(area_id) if area_id else None):
            raise Forbidden("area")
        create_book(store, code, name.strip(), actor=user.username, area_code=area_code,
                    reader_code=reader_code or None, reading_day=reading_day)
    except psycopg.errors.UniqueViolation:
        with store.connection() as conn:
            period = _default_period(conn, settings_of(request).timezone)
        return _books_page(request, user, period, status_code=400, error=_t(request, "review.code_taken", code=code))
    except (Invalid, BookError, ValueError) as exc:
        with store.connection() as conn:
            period = _default_period(conn, settings_of(request).timezone)
        return _books_page(request, user, period, status_code=400, error=_refusal(request, exc))
    return redirect(f"/review/books/{quote(code, safe='')}?ok=book_created")


@router.post("/review/readers", include_in_schema=False)
def create_reader_page(
    request: Request,
    user: Annotated[Principal, Depends(require("readings.review"))],
    code: Annotated[str, Form(min_length=1, max_length=40)],
    name: Annotated[str, Form(min_length=1, max_length=200)],
    staff_username: Annotated[str, Form(max_length=64)] = "",
    phone: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    code = code.strip()
    note_object(request, "meter_reader", code)
    store = store_of(request)
    try:
        create_reader(store, code, name.strip(), actor=user.username, staff_username=staff_username.strip() or None,
                      phone=phone.strip())
    except (psycopg.errors.UniqueViolation, BookError) as exc:
        with store.connection() as conn:
            period = _default_period(conn, settings_of(request).timezone)
        error = (
            _t(request, "review.code_taken", code=code)
            if isinstance(exc, psycopg.errors.UniqueViolation)
            else _refusal(request, exc)
        )
        return _books_page(request, user, period, status_code=400, error=error)
    return redirect("/review/books?ok=reader_created")


@router.get("/review/books/{code}", include_in_schema=False)
def book_page(
    request: Request,
    code: str,
    user: Annotated[Principal, Depends(require("readings.view"))],
    period: str | None = None,
) -> Response:
    try:
        return _book_page(request, user, code, _period_or_default(request, period))
    except Invalid as exc:
        raise ActionError("invalid", _refusal(request, exc), 400) from None


def _book_for_change(request: Request, user: Principal, code: str) -> dict[str, Any]:
    with store_of(request).connection() as conn:
        return _book(conn, code, user)


def _book_url(code: str, period: str | None, ok: str, **values: Any) -> str:
    query = {"period": period} if period else {}
    return f"/review/books/{quote(code, safe='')}?{urlencode({**query, 'ok': ok, **values})}"


def _safe_period(request: Request, period: str | None) -> str:
    try:
        return _period_or_default(request, period)
    except Invalid:
        return _period_or_default(request, None)


@router.post("/review/books/{code}/reader", include_in_schema=False)
def assign_reader_page(
    request: Request,
    code: str,
    user: Annotated[Principal, Depends(require("readings.review"))],
    reader_code: Annotated[str, Form()] = "",
    period: Annotated[str, Form()] = "",
) -> Response:
    note_object(request, "reading_book", code)
    _book_for_change(request, user, code)
    try:
        assign_reader(store_of(request), code, reader_code or None, actor=user.username)
    except BookError as exc:
        return _book_page(request, user, code, _safe_period(request, period), status_code=400,
                          error=_refusal(request, exc))
    return redirect(_book_url(code, period, "reader_assigned"))


@router.post("/review/books/{code}/schedule", include_in_schema=False)
def schedule_page(
    request: Request,
    code: str,
    user: Annotated[Principal, Depends(require("readings.review"))],
    period: Annotated[str, Form()],
    planned_date: Annotated[str, Form()] = "",
    reader_code: Annotated[str, Form()] = "",
) -> Response:
    note_object(request, "reading_book", code)
    _book_for_change(request, user, code)
    try:
        period = _period(period)
        try:
            planned = date.fromisoformat(planned_date) if planned_date else None
        except ValueError:
            raise Invalid("review.bad_time", field="planned_date", value=planned_date) from None
        schedule(store_of(request), code, period, actor=user.username, planned_date=planned,
                 reader_code=reader_code or None)
    except (Invalid, BookError) as exc:
        return _book_page(request, user, code, _safe_period(request, period), status_code=400,
                          error=_refusal(request, exc))
    return redirect(_book_url(code, period, "scheduled"))


def _meter_areas(conn: psycopg.Connection[Any], meter_nos: Sequence[str]) -> dict[str, int | None]:
    rows = conn.execute(
        """SELECT m.meter_no, co.area_id FROM meter m LEFT JOIN account a ON a.id = m.account_id
             LEFT JOIN community co ON co.id = a.community_id WHERE m.meter_no = ANY(%s)""",
        [list(meter_nos)],
    ).fetchall()
    return {r[0]: r[1] for r in rows}


@router.post("/review/books/{code}/meters", include_in_schema=False)
def add_meters_page(
    request: Request,
    code: str,
    user: Annotated[Principal, Depends(require("readings.review"))],
    meter_nos: Annotated[str, Form(max_length=20000)],
    period: Annotated[str, Form()] = "",
) -> Response:
    note_object(request, "reading_book", code)
    _book_for_change(request, user, code)
    numbers = [n for n in re.split(r"[\s,，;；]+", meter_nos) if n]
    try:
        if not numbers:
            raise Invalid("review.no_meters")
        with store_of(request).connection() as conn:
            areas = _meter_areas(conn, numbers)
        for number in numbers:
            if number in areas:
                _check_area(user, areas[number])
        add_meters(store_of(request), code, numbers, actor=user.username)
    except (Invalid, BookError) as exc:
        return _book_page(request, user, code, _safe_period(request, period), status_code=400,
                          error=_refusal(request, exc))
    return redirect(_book_url(code, period, "meters_added", n=len(numbers)))


@router.post("/review/books/{code}/meters/{meter_no}/remove", include_in_schema=False)
def remove_meter_page(
    request: Request,
    code: str,
    meter_no: str,
    user: Annotated[Principal, Depends(require("readings.review"))],
    period: Annotated[str, Form()] = "",
) -> Response:
    note_object(request, "reading_book", code)
    _book_for_change(request, user, code)
    try:
        remove_meter(store_of(request), code, meter_no, actor=user.username)
    except BookError as exc:
        return _book_page(request, user, code, _safe_period(request, period), status_code=400,
                          error=_refusal(request, exc))
    return redirect(_book_url(code, period, "meter_removed"))


def _moved(order: list[str], meter_no: str, direction: str | None, position: int | None) -> list[str]:
    """The route with `meter_no` one place up or down, or at `position` (1 = first)."""
    if meter_no not in order:
        raise Invalid("review.not_in_book", meter=meter_no)
    index = order.index(meter_no)
    if position is not None:
        target = min(max(position, 1), len(order)) - 1
    elif direction == "up":
        target = max(index - 1, 0)
    elif direction == "down":
        target = min(index + 1, len(order) - 1)
    else:
        raise Invalid("review.no_position")
    order = [n for n in order if n != meter_no]
    order.insert(target, meter_no)
    return order


@router.post("/review/books/{code}/move", include_in_schema=False)
def move_page(
    request: Request,
    code: str,
    user: Annotated[Principal, Depends(require("readings.review"))],
    meter_no: Annotated[str, Form()],
    direction: Annotated[str, Form()] = "",
    position: Annotated[str, Form()] = "",
    period: Annotated[str, Form()] = "",
) -> Response:
    note_object(request, "reading_book", code)
    _book_for_change(request, user, code)
    store = store_of(request)
    try:
        place = None
        if position.strip():
            if not position.strip().isdigit():
                raise Invalid("review.no_position")
            place = int(position)
        order = _moved([m.meter_no for m in book_meters(store, code)], meter_no, direction or None, place)
        reorder(store, code, order, actor=user.username)
    except (Invalid, BookError) as exc:
        return _book_page(request, user, code, _safe_period(request, period), status_code=400,
                          error=_refusal(request, exc))
    return redirect(_book_url(code, period, "reordered"))


def _reader_for(conn: psycopg.Connection[Any], user: Principal, book_id: int, period: str) -> str | None:
    """Who read: the reader that is this user, else the book's reader for the period, else its usual reader."""
    row = conn.execute(
        """SELECT coalesce(
                  (SELECT code FROM meter_reader WHERE staff_user_id = %(user)s AND active ORDER BY id LIMIT 1),
                  (SELECT rd.code FROM reading_schedule s JOIN meter_reader rd ON rd.id = s.reader_id
                    WHERE s.book_id = %(book)s AND s.period = %(period)s),
                  (SELECT rd.code FROM reading_book b JOIN meter_reader rd ON rd.id = b.reader_id
                    WHERE b.id = %(book)s))""",
        {"user": user.user_id, "book": book_id, "period": period},
    ).fetchone()
    return row[0] if row else None


def _enter_reading(
    request: Request,
    user: Principal,
    code: str,
    *,
    meter_no: str,
    value: Decimal | None,
    read_at: datetime | None,
    period: str,
    source: str,
    note: str,
    photo_ref: str,
) -> int:
    """Check a manual reading against the book and the user's areas, then record it; its id."""
    store = store_of(request)
    period = _period(period)
    if value is None:
        raise Invalid("review.value_required")
    if read_at is None:
        raise Invalid("review.read_at_required")
    if read_at > datetime.now(UTC) + FUTURE_TOLERANCE:
        raise Invalid("review.in_future")
    with store.connection() as conn:
        book = _book(conn, code, user, period)
    if meter_no not in {m.meter_no for m in book_meters(store, code)}:
        raise Invalid("review.not_in_book", meter=meter_no)
    with store.connection() as conn:
        area = _meter_areas(conn, [meter_no]).get(meter_no)
        _check_area(user, area if area is not None else book["area_id"])
        reader = _reader_for(conn, user, book["id"], period)
    return add_manual_reading(
        store,
        meter_no,
        value,
        read_at,
        actor=user.username,
        period=period,
        source=source,
        reader_code=reader,
        book_code=code,
        photo_ref=photo_ref,
        note=note,
    )


@router.post("/review/books/{code}/readings", include_in_schema=False)
def manual_reading_page(
    request: Request,
    code: str,
    user: Annotated[Principal, Depends(require("readings.manual"))],
    meter_no: Annotated[str, Form()],
    period: Annotated[str, Form()],
    value: Annotated[str, Form(max_length=40)] = "",
    read_at: Annotated[str, Form(max_length=40)] = "",
    source: Annotated[str, Form()] = "manual",
    note: Annotated[str, Form(max_length=500)] = "",
    photo_ref: Annotated[str, Form(max_length=300)] = "",
) -> Response:
    note_object(request, "reading_book", code)
    form = {"meter_no": meter_no, "value": value, "read_at": read_at, "source": source, "note": note,
            "photo_ref": photo_ref}
    try:
        tz = settings_of(request).timezone
        entry = _enter_reading(
            request, user, code, meter_no=meter_no, value=_decimal(value, "value"),
            read_at=_moment(read_at, tz, "read_at"), period=period, source=source, note=note.strip(),
            photo_ref=photo_ref.strip(),
        )
    except (Invalid, BookError) as exc:
        return _book_page(request, user, code, _safe_period(request, period), status_code=400,
                          error=_refusal(request, exc), form=form)
    return redirect(_book_url(code, period, "manual_saved", entry=entry))


@router.post("/review/books/{code}/export", include_in_schema=False)
def export_page(
    request: Request,
    code: str,
    user: Annotated[Principal, Depends(require("readings.view"))],
    period: Annotated[str | None, Form()] = None,
    format: Annotated[Literal["csv", "xlsx"], Form()] = "csv",
) -> Response:
    return _export(request, user, code, period, format)


def _export(request: Request, user: Principal, code: str, period: str | None, fmt: str) -> Response:
    try:
        period = _period_or_default(request, period)
    except Invalid as exc:
        raise _api_error(exc) from None
    _book_for_change(request, user, code)
    data = export_book(store_of(request), code, period, fmt)
    name = f"{code}-{period}.{fmt}"
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return Response(
        data,
        media_type=FILE_TYPES[fmt],
        headers={"Content-Disposition": f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name)}"},
    )


def _file_meters(data: bytes) -> list[tuple[int, str]] | None:
    """(line, meter number) of each row of a handheld file, numbered as `billing.handheld` numbers them (the
    header is line 1); None when the file cannot be read — the import then says why."""
    try:
        if data[:4] == b"PK\x03\x04":
            from openpyxl import load_workbook

            workbook = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
            rows = list(workbook.worksheets[0].iter_rows(values_only=True))
            workbook.close()
            header = [str(v).strip() if v is not None else "" for v in (rows[0] if rows else [])]
            records = [(i, list(r)) for i, r in enumerate(rows[1:], start=2)]
        else:
            reader = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""))
            header = [h.strip() for h in next(reader, [])]
            records = [(reader.line_num, list(values)) for values in reader]
    except Exception:  # any unreadable file: the import reports it with its own words
        return None
    if "meter_no" not in header:
        return None
    column = header.index("meter_no")
    out = []
    for line, values in records:
        raw = values[column] if column < len(values) else None
        text = "" if raw is None else str(int(raw) if isinstance(raw, float) and raw.is_integer() else raw).strip()
        if text:
            out.append((line, text))
    return out


def _import(request: Request, user: Principal, code: str, data: bytes, file_name: str) -> Any:
    """Import a handheld file into a book: every meter named must be in the book; then the file is imported
    whole or not at all. Raises `ReadingFileError` (or `Invalid`)."""
    store = store_of(request)
    if not data:
        raise Invalid("review.empty_file")
    if len(data) > MAX_UPLOAD:
        raise Invalid("review.file_too_large", mb=MAX_UPLOAD // (1024 * 1024))
    with store.connection() as conn:
        _book(conn, code, user)
    in_book = {m.meter_no for m in book_meters(store, code)}
    outside = [
        RowError(line, "meter_no", f"meter {meter_no} is not in book {code}")
        for line, meter_no in (_file_meters(data) or [])
        if meter_no not in in_book
    ]
    if outside:
        raise ReadingFileError(outside)
    return import_readings(store, data, file_name, actor=user.username)


async def _read_upload(file: UploadFile) -> bytes:
    data = await file.read(MAX_UPLOAD + 1)
    await file.close()
    return data


@router.post("/review/books/{code}/import", include_in_schema=False)
async def import_page(
    request: Request,
    code: str,
    user: Annotated[Principal, Depends(require("readings.manual"))],
    file: Annotated[UploadFile, File()],
    period: Annotated[str, Form()] = "",
) -> Response:
    note_object(request, "reading_book", code)
    data = await _read_upload(file)
    def work() -> Response:
        try:
            result = _import(request, user, code, data, file.filename or "upload")
        except ReadingFileError as exc:
            return _book_page(request, user, code, _safe_period(request, period), status_code=400,
                              error=_t(request, "review.import_refused", n=len(exc.errors)),
                              import_errors=exc.errors)
        except Invalid as exc:
            return _book_page(request, user, code, _safe_period(request, period), status_code=400,
                              error=_refusal(request, exc))
        return redirect(_book_url(code, period, "imported", n=result.readings))

    return await to_thread.run_sync(work)


_STYLE = re.compile(r"<style>(.*?)</style>", re.S)


@router.get("/review/books/{code}/notices", include_in_schema=False)
def notices_page(
    request: Request,
    code: str,
    user: Annotated[Principal, Depends(require("readings.view"))],
    period: str | None = None,
) -> Response:
    """Printable reading notices (抄表通知单), as `billing.handheld` lays them out; their one style block is
    allowed by its hash."""
    try:
        period = _period_or_default(request, period)
    except Invalid as exc:
        raise ActionError("invalid", _refusal(request, exc), 400) from None
    _book_for_change(request, user, code)
    page = reading_notices_html(store_of(request), code, period)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'" for s in _STYLE.findall(page)
    )
    policy = "default-src 'none'; style-src " + (hashes or "'none'") + "; frame-ancestors 'none'"
    return HTMLResponse(page, headers={"Content-Security-Policy": policy})


# -- statistics ---------------------------------------------------------------------------------------------------
_STATS_FROM = """
  FROM reading_review r
  JOIN account a ON a.id = r.account_id
  LEFT JOIN community co ON co.id = a.community_id
  LEFT JOIN area ar ON ar.id = co.area_id
  LEFT JOIN reading_book_meter x ON x.meter_id = r.meter_id
  LEFT JOIN reading_book b ON b.id = x.book_id
  LEFT JOIN reading_schedule s ON s.book_id = b.id AND s.period = r.period
  LEFT JOIN meter_reader rd ON rd.id = coalesce(s.reader_id, b.reader_id)
"""
_STATS_GROUPS: dict[str, tuple[str, str]] = {
    "book": ("coalesce(b.code, '')", "coalesce(b.name, '(no book)')"),
    "reader": ("coalesce(rd.code, '')", "coalesce(rd.name, '(no reader)')"),
    "area": ("coalesce(ar.code, '')", "coalesce(ar.name, '(no area)')"),
    "period": ("r.period", "r.period"),
}


def _rates(store: Store, user: Principal, by: Grouping, period: str | None) -> list[ReadRate]:
    """`billing.reading_stats.read_rates`, over the user's areas when they are limited to some."""
    if user.area_ids is None:
        return read_rates(store, by, period)
    key, name = _STATS_GROUPS[by]
    where = "co.area_id = ANY(%(mine)s::bigint[])" + ("" if period is None else " AND r.period = %(period)s")
    query = f"""SELECT {key}, {name}, count(*), count(*) FILTER (WHERE r.read_in_period)
                  {_STATS_FROM} WHERE {where} GROUP BY 1, 2 ORDER BY 1"""
    with store.connection() as conn:
        rows = conn.execute(query, {"period": period, "mine": _mine(user)}).fetchall()
    return [ReadRate(*row) for row in rows]


def _unread(store: Store, user: Principal, period: str) -> list[UnreadMeter]:
    found = meters_not_read(store, period)
    if user.area_ids is None or not found:
        return found
    with store.connection() as conn:
        allowed = {
            r[0]
            for r in conn.execute(
                f"""SELECT m.meter_no {_STATS_FROM} JOIN meter m ON m.id = r.meter_id
                     WHERE r.period = %(period)s AND co.area_id = ANY(%(mine)s::bigint[])""",
                {"period": period, "mine": _mine(user)},
            ).fetchall()
        }
    return [u for u in found if u.meter_no in allowed]


def _rule_counts(store: Store, user: Principal, period: str) -> list[RuleCount]:
    if user.area_ids is None:
        return flags_by_rule(store, period)
    with store.connection() as conn:
        rows = conn.execute(
            """SELECT f.rule_id, f.severity, count(*), count(DISTINCT f.meter_id)
                 FROM reading_flag f
                WHERE f.run_id = (SELECT max(id) FROM validation_run WHERE period = %(period)s)
                  AND f.meter_id IN (SELECT r.meter_id FROM reading_review r JOIN account a ON a.id = r.account_id
                                       JOIN community co ON co.id = a.community_id
                                      WHERE r.period = %(period)s AND co.area_id = ANY(%(mine)s::bigint[]))
                GROUP BY 1, 2 ORDER BY 3 DESC, 1""",
            {"period": period, "mine": _mine(user)},
        ).fetchall()
    return [RuleCount(*row) for row in rows]


def _total(rates: Sequence[ReadRate]) -> ReadRate:
    return ReadRate("", "", sum(r.expected for r in rates), sum(r.read for r in rates))


@router.get("/review/stats", include_in_schema=False)
def stats_page(
    request: Request, user: Annotated[Principal, Depends(require("readings.view"))], period: str | None = None
) -> Response:
    try:
        period = _period_or_default(request, period)
    except Invalid as exc:
        raise ActionError("invalid", _refusal(request, exc), 400) from None
    store = store_of(request)
    rates = {by: _rates(store, user, by, period) for by in ("book", "reader", "area")}
    with store.connection() as conn:
        periods = _choices(conn, user)["periods"]
    return _page(
        request,
        "review/stats.html",
        period=period,
        periods=periods,
        rates=rates,
        total=_total(rates["area"]),
        by_period=_rates(store, user, "period", None)[-12:],
        unread=_unread(store, user, period),
        rules=_rule_counts(store, user, period),
        badge=SEVERITY_BADGE,
    )


# -- API --------------------------------------------------------------------------------------------------------------
class AcceptBody(BaseModel):
    ids: list[int] = Field(min_length=1, max_length=10000, description="review row ids; all or none are accepted")
    reason: str = Field("", max_length=500)


class PeriodBody(BaseModel):
    period: str = Field(pattern=r"^\d{4}-\d{2}$", description="reading period, YYYY-MM")
    reason: str = Field("", max_length=500)


class CorrectBody(BaseModel):
    end_value: Decimal = Field(ge=0, decimal_places=3, description="register at the end of the period, m3")
    reason: str = Field(max_length=500, description="why; required")
    start_value: Decimal | None = Field(None, ge=0, decimal_places=3)
    end_ts: datetime | None = Field(None, description="when the end value was read (default: as the candidate)")
    consumption_m3: Decimal | None = Field(
        None, ge=0, decimal_places=3, description="use, when it is not end - start (through a rollover)"
    )


class EstimateBody(BaseModel):
    consumption_m3: Decimal | None = Field(
        None, ge=0, decimal_places=3, description="use to approve; default: the row's computed estimate"
    )
    reason: str = Field("", max_length=500)


class ManualReadingBody(BaseModel):
    meter_no: str = Field(min_length=1, max_length=64)
    value: Decimal = Field(ge=0, decimal_places=3, description="register read, m3")
    read_at: datetime = Field(description="when read; without an offset, in the utility's time zone")
    period: str = Field(pattern=r"^\d{4}-\d{2}$", description="the reading period the reading closes, YYYY-MM")
    source: Literal["manual", "handheld", "photo"] = "manual"
    note: str = Field("", max_length=500)
    photo_ref: str = Field("", max_length=300)


@router.get("/api/v1/review", tags=["readings"])
def api_queue(
    request: Request,
    user: Annotated[Principal, Depends(require("readings.view"))],
    period: Annotated[str | None, Query(description="YYYY-MM; default: the latest period in the queue")] = None,
    flagged: Annotated[bool, Query(description="only rows with flags or needing an estimate")] = False,
    status: Annotated[str | None, Query(description="pending, accepted, corrected or estimated")] = None,
    book: Annotated[str | None, Query(description="reading book code")] = None,
    area: Annotated[int | None, Query(description="area id (with its sub-areas)")] = None,
    rule: Annotated[str | None, Query(description="only rows flagged by this rule")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """The review queue (抄表审核) of a period: each account's meter with its candidate reading, consumption,
    flags (per rule: count and the numbers of the worst), estimate and decision. Volumes are strings (m3)."""
    try:
        f = QueueFilter(_period_or_default(request, period), flagged, status, book, area, rule)
        with store_of(request).connection() as conn:
            rows, total = _queue(conn, f, user, limit, offset)
            flags = _flags(conn, rows)
    except Invalid as exc:
        raise _api_error(exc) from None
    return {
        "period": f.period,
        "total": total,
        "limit": limit,
        "offset": offset,
        "items": [_row_json(r, flags.get((r["run_id"], r["meter_id"]), [])) for r in rows],
    }


@router.get("/api/v1/review/{review_id}", tags=["readings"])
def api_review_row(
    request: Request, review_id: int, user: Annotated[Principal, Depends(require("readings.view"))]
) -> dict[str, Any]:
    """One queue row with every flag, the billing reading versions and the decision log (before → after)."""
    detail = _review_detail(store_of(request), review_id, user)
    return {
        **_row_json(detail["row"], detail["flags"]),
        "all_flags": [_flag_json(f) for f in detail["flags"]],
        "versions": [{k: _s(v) for k, v in v.items()} for v in detail["versions"]],
        "log": [
            {
                "action": e["action"],
                "actor": e["actor"],
                "at": _s(e["at"]),
                "reason": e["reason"],
                "billing_reading_id": e["billing_reading_id"],
                "before": {k: _s(v) for k, v in (e["old_values"] or {}).items()},
                "after": {k: _s(v) for k, v in (e["new_values"] or {}).items()},
            }
            for e in detail["log"]
        ],
    }


@router.post("/api/v1/review/accept", tags=["readings"])
def api_accept(
    request: Request, body: AcceptBody, user: Annotated[Principal, Depends(require("readings.review"))]
) -> dict[str, Any]:
    """Accept the candidate readings of pending rows as they are; all or none. Returns review id → billing
    reading id."""
    note_object(request, "reading_review", ",".join(str(i) for i in sorted(set(body.ids))))
    with store_of(request).connection() as conn:
        _review_areas(conn, sorted(set(body.ids)), user)
    try:
        done = accept(store_of(request), body.ids, actor=user.username, reason=body.reason)
    except ReviewError as exc:
        raise _api_error(exc) from None
    return {"accepted": {str(k): v for k, v in done.items()}}


@router.post("/api/v1/review/accept-unflagged", tags=["readings"])
def api_accept_unflagged(
    request: Request, body: PeriodBody, user: Annotated[Principal, Depends(require("readings.review"))]
) -> dict[str, Any]:
    """Accept every pending row of the period (of the caller's areas) that was read, needs no estimate and has
    no flag worse than informational. Returns how many."""
    note_object(request, "reading_period", body.period)
    try:
        count = _accept_unflagged(store_of(request), _period(body.period), user, body.reason)
    except (Invalid, ReviewError) as exc:
        raise _api_error(exc) from None
    return {"period": body.period, "accepted": count}


@router.post("/api/v1/review/{review_id}/correct", tags=["readings"])
def api_correct(
    request: Request,
    review_id: int,
    body: CorrectBody,
    user: Annotated[Principal, Depends(require("readings.review"))],
) -> dict[str, Any]:
    """Replace a row's reading with corrected values (a new billing reading version); a reason is required."""
    note_object(request, "reading_review", review_id)
    with store_of(request).connection() as conn:
        _review(conn, review_id, user)
    end_ts = body.end_ts
    if end_ts is not None and end_ts.tzinfo is None:
        end_ts = end_ts.replace(tzinfo=ZoneInfo(settings_of(request).timezone))
    try:
        billing_id = correct(
            store_of(request),
            review_id,
            actor=user.username,
            reason=body.reason,
            end_value=body.end_value,
            start_value=body.start_value,
            end_ts=end_ts,
            consumption_m3=body.consumption_m3,
        )
    except ReviewError as exc:
        raise _api_error(exc) from None
    return {"review_id": review_id, "billing_reading_id": billing_id}


@router.post("/api/v1/review/{review_id}/estimate", tags=["readings"])
def api_estimate(
    request: Request,
    review_id: int,
    body: EstimateBody,
    user: Annotated[Principal, Depends(require("readings.review"))],
) -> dict[str, Any]:
    """Approve an estimate for the row: its computed one, or the consumption given."""
    note_object(request, "reading_review", review_id)
    with store_of(request).connection() as conn:
        _review(conn, review_id, user)
    try:
        done = estimate_readings(
            store_of(request), [review_id], actor=user.username, reason=body.reason, consumption_m3=body.consumption_m3
        )
    except ReviewError as exc:
        raise _api_error(exc) from None
    return {"review_id": review_id, "billing_reading_id": done[review_id]}


@router.post("/api/v1/review/validate", tags=["readings"])
def api_validate(
    request: Request, body: PeriodBody, user: Annotated[Principal, Depends(require("readings.review"))]
) -> dict[str, Any]:
    """Run the validation rules over a period: flags, consumption, estimates, and fresh pending queue rows
    (decided rows keep their decision)."""
    note_object(request, "reading_period", body.period)
    try:
        result = validate_period(store_of(request), _period(body.period), actor=user.username)
    except (Invalid, ValueError) as exc:
        raise _api_error(exc) from None
    return {
        "run_id": result.run_id,
        "period": result.period,
        "meters": result.meters,
        "readings": result.readings,
        "flags": result.flags,
        "flags_by_rule": result.flags_by_rule,
        "queue_rows": result.queue_rows,
        "pending": result.pending,
    }


def _book_json(book: dict[str, Any]) -> dict[str, Any]:
    return {
        "code": book["code"],
        "name": book["name"],
        "area": book["area_name"],
        "reader": book["reader_code"],
        "reading_day": book["reading_day"],
        "active": book["active"],
        "meters": book["meters"],
        "schedule": None
        if book["planned_date"] is None
        else {
            "planned_date": _s(book["planned_date"]),
            "reader": book["schedule_reader_code"],
            "status": book["schedule_status"],
        },
    }


@router.get("/api/v1/books", tags=["readings"])
def api_books(
    request: Request,
    user: Annotated[Principal, Depends(require("readings.view"))],
    period: Annotated[str | None, Query(description="YYYY-MM: the schedule shown; default the latest")] = None,
) -> dict[str, Any]:
    """Reading books (抄表本) of the caller's areas, with their reader, size and schedule for the period."""
    try:
        period = _period_or_default(request, period)
    except Invalid as exc:
        raise _api_error(exc) from None
    with store_of(request).connection() as conn:
        books = _books(conn, user, period)
    return {"period": period, "books": [_book_json(b) for b in books]}


@router.get("/api/v1/books/{code}", tags=["readings"])
def api_book(
    request: Request,
    code: str,
    user: Annotated[Principal, Depends(require("readings.view"))],
    period: Annotated[str | None, Query(description="YYYY-MM; default the latest")] = None,
) -> dict[str, Any]:
    """A book's meters in route order, each with its last reading, the period's manual reading and queue row."""
    try:
        period = _period_or_default(request, period)
    except Invalid as exc:
        raise _api_error(exc) from None
    store = store_of(request)
    with store.connection() as conn:
        book = _book(conn, code, user, period)
    meters = _book_meters(store, code, period)
    return {
        **_book_json(book),
        "period": period,
        "route": [
            {
                "seq": m["seq"],
                "meter_no": m["meter_no"],
                "account_no": m["account_no"],
                "customer_name": m["customer_name"],
                "address": m["address"],
                "last_value": _s(m.get("last_value")),
                "last_read_at": _s(m.get("last_ts")),
                "manual_value": _s(m.get("manual_value")),
                "manual_read_at": _s(m.get("manual_ts")),
                "review_id": m.get("review_id"),
                "review_status": m.get("status"),
            }
            for m in meters
        ],
    }


@router.post("/api/v1/books/{code}/readings", tags=["readings"], status_code=201)
def api_manual_reading(
    request: Request,
    code: str,
    body: ManualReadingBody,
    user: Annotated[Principal, Depends(require("readings.manual"))],
) -> dict[str, Any]:
    """Record a reading taken by a person for a meter of the book; it becomes a candidate at the next
    validation run. Returns its id."""
    note_object(request, "reading_book", code)
    read_at = body.read_at
    if read_at.tzinfo is None:
        read_at = read_at.replace(tzinfo=ZoneInfo(settings_of(request).timezone))
    try:
        entry = _enter_reading(
            request, user, code, meter_no=body.meter_no, value=body.value, read_at=read_at, period=body.period,
            source=body.source, note=body.note, photo_ref=body.photo_ref,
        )
    except (Invalid, BookError) as exc:
        raise _api_error(exc) from None
    return {"id": entry, "meter_no": body.meter_no, "value": str(body.value), "read_at": read_at.isoformat()}


@router.post(
    "/api/v1/books/{code}/export",
    tags=["readings"],
    response_class=Response,
    responses={200: {"content": {t: {} for t in FILE_TYPES.values()}, "description": "the to-read file"}},
)
def api_export(
    request: Request,
    code: str,
    user: Annotated[Principal, Depends(require("readings.view"))],
    period: Annotated[str | None, Query(description="YYYY-MM; default the latest")] = None,
    format: Annotated[Literal["csv", "xlsx"], Query()] = "csv",
) -> Response:
    """The book's to-read list for a handheld (抄表机), in route order, as CSV (UTF-8 with BOM) or Excel. A POST
    because it marks the period's schedule exported. Fill `reading_value` and `read_at` and import it back."""
    return _export(request, user, code, period, format)


@router.post("/api/v1/books/{code}/import", tags=["readings"])
async def api_import(
    request: Request,
    code: str,
    file: Annotated[UploadFile, File(description="CSV or Excel in the export's layout")],
    user: Annotated[Principal, Depends(require("readings.manual"))],
) -> Any:
    """Import a handheld result file for the book, whole or not at all. A bad file answers 400 with
    `errors`: every bad row with its line number (the header is line 1), column and reason."""
    note_object(request, "reading_book", code)
    data = await _read_upload(file)
    def work() -> Any:
        try:
            result = _import(request, user, code, data, file.filename or "upload")
        except ReadingFileError as exc:
            return JSONResponse(
                {
                    "error": "bad_rows",
                    "detail": str(exc),
                    "errors": [{"line": e.line, "column": e.column, "reason": e.reason} for e in exc.errors],
                },
                status_code=400,
            )
        except Invalid as exc:
            raise _api_error(exc) from None
        return {
            "import_id": result.import_id,
            "rows": result.rows,
            "readings": result.readings,
            "not_read": result.not_read,
        }

    return await to_thread.run_sync(work)


@router.get("/api/v1/reading-stats", tags=["readings"])
def api_stats(
    request: Request,
    user: Annotated[Principal, Depends(require("readings.view"))],
    by: Annotated[Literal["book", "reader", "area", "period"], Query()] = "book",
    period: Annotated[str | None, Query(description="YYYY-MM; for by=period, leave out for every period")] = None,
) -> dict[str, Any]:
    """Read success rate (meters read in the period / meters expected) per book, reader, area or period; for a
    period also the meters not read and the flags of its latest validation run per rule."""
    try:
        chosen = _period(period) if period else (None if by == "period" else _period_or_default(request, None))
    except Invalid as exc:
        raise _api_error(exc) from None
    store = store_of(request)
    rates = _rates(store, user, by, chosen)
    out: dict[str, Any] = {
        "by": by,
        "period": chosen,
        "rates": [
            {"key": r.key, "name": r.name, "expected": r.expected, "read": r.read, "rate": str(r.rate)} for r in rates
        ],
    }
    if chosen is not None:
        out["not_read"] = [
            {
                "meter_no": u.meter_no,
                "account_no": u.account_no,
                "book_code": u.book_code,
                "seq": u.seq,
                "address": u.address,
                "last_reading_at": _s(u.last_reading_at),
                "estimation_reason": u.estimation_reason,
            }
            for u in _unread(store, user, chosen)
        ]
        out["flags_by_rule"] = [
            {"rule_id": c.rule_id, "severity": c.severity, "flags": c.flags, "meters": c.meters}
            for c in _rule_counts(store, user, chosen)
        ]
    return out
