"""The operation log (操作日志): every state-changing action, searchable, with its hash chain checked."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from psycopg import sql
from pydantic import BaseModel

from dashboards.security import Principal
from dashboards.web import render, require, settings_of, store_of
from meterhub.commands import verify_audit

router = APIRouter()


class LogQuery(BaseModel):
    actor: str | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    ip: str | None = None
    text: str | None = None
    day_from: date | None = None
    day_to: date | None = None
    before_seq: int | None = None  # paging: entries older than this


class LogEntry(BaseModel):
    seq: int
    at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str | None
    ip: str | None
    page: str | None
    status: int | None
    detail: dict[str, Any]


def search(conn: psycopg.Connection[Any], q: LogQuery, timezone: str, limit: int) -> list[LogEntry]:
    zone = ZoneInfo(timezone)
    where: list[sql.Composable] = []
    params: list[Any] = []

    def add(clause: str, value: Any) -> None:
        where.append(sql.SQL(clause))
        params.append(value)

    if q.actor:
        add("actor = %s", q.actor)
    if q.action:
        add("action LIKE %s", q.action.replace("%", r"\%") + "%")
    if q.object_type:
        add("object_type = %s", q.object_type)
    if q.object_id:
        add("object_id = %s", q.object_id)
    if q.ip:
        add("host(ip) = %s", q.ip)
    if q.text:
        add("detail::text ILIKE %s", "%" + q.text.replace("%", r"\%") + "%")
    if q.day_from:
        add("at >= %s", datetime.combine(q.day_from, time(), zone))
    if q.day_to:
        add("at < %s", datetime.combine(q.day_to + timedelta(days=1), time(), zone))
    if q.before_seq:
        add("seq < %s", q.before_seq)
    query = sql.SQL(
        "SELECT seq, at, actor, action, object_type, object_id, host(ip), detail FROM audit_log {} "
        "ORDER BY seq DESC LIMIT {}"
    ).format(
        sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
        sql.Literal(limit),
    )
    entries = []
    for row in conn.execute(query, params):
        detail = row[7] or {}
        status = detail.get("status")
        entries.append(
            LogEntry(
                seq=row[0], at=row[1], actor=row[2], action=row[3], object_type=row[4], object_id=row[5],
                ip=row[6], page=detail.get("page") or detail.get("path"),
                status=status if isinstance(status, int) else None, detail=detail,
            )
        )
    return entries


@router.get("/oplog", include_in_schema=False)
def oplog_page(
    request: Request,
    user: Annotated[Principal, Depends(require("oplog.view"))],
    q: Annotated[LogQuery, Query()],
) -> Response:
    size = settings_of(request).console.page_size
    with store_of(request).connection() as conn:
        entries = search(conn, q, settings_of(request).timezone, size + 1)
    more = len(entries) > size
    entries = entries[:size]
    params = {k: v for k, v in q.model_dump(exclude_none=True).items() if k != "before_seq"}
    return render(request, "oplog.html", entries=entries, q=q, more=more, params=params,
                  next_seq=entries[-1].seq if entries else None)


@router.get("/oplog/verify", include_in_schema=False)
def oplog_verify_page(request: Request, user: Annotated[Principal, Depends(require("oplog.view"))]) -> Response:
    with store_of(request).connection() as conn:
        problems = verify_audit(conn)
        count = conn.execute("SELECT count(*), max(seq) FROM audit_log").fetchone()
    return render(request, "oplog_verify.html", problems=problems, count=count)


class VerifyResult(BaseModel):
    intact: bool
    entries: int
    problems: list[dict[str, Any]]


@router.get("/api/v1/oplog", tags=["operation log"])
def api_oplog(
    request: Request,
    user: Annotated[Principal, Depends(require("oplog.view"))],
    q: Annotated[LogQuery, Query()],
    limit: int = Query(100, ge=1, le=1000),
) -> list[LogEntry]:
    """Search the operation log, newest first; page with `before_seq` = the last `seq` received."""
    with store_of(request).connection() as conn:
        return search(conn, q, settings_of(request).timezone, limit)


@router.get("/api/v1/oplog/verify", tags=["operation log"])
def api_oplog_verify(request: Request, user: Annotated[Principal, Depends(require("oplog.view"))]) -> VerifyResult:
    """Recompute the hash chain: every entry whose hash or link does not add up, and gaps."""
    with store_of(request).connection() as conn:
        problems = verify_audit(conn)
        row = conn.execute("SELECT count(*) FROM audit_log").fetchone()
    return VerifyResult(
        intact=not problems,
        entries=int(row[0]) if row else 0,
        problems=[{"seq": p[0], "id": p[1], "problem": p[2]} for p in problems],
    )
