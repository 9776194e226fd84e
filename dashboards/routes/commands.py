"""Valve and credit commands (阀控与充值指令): the list, issuing a command with the rule check shown first,
emergency close, bulk requests that wait for a second person, a command's life followed live, and the same
under `/api/v1/commands`.

The console never talks to meters. It writes command rows through `meterhub.commands`; the collector sends
them and writes the outcome back, which the command page follows (`data-refresh`) until the state is final.
Users limited to areas see and act on commands of meters in their areas only: the meter's area (through its
account's community) is checked before the service is called.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Depends, Form, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from dashboards import i18n
from dashboards.security import Principal
from dashboards.web import (
    ActionError,
    Forbidden,
    client_ip,
    is_api,
    language_of,
    note_object,
    redirect,
    render,
    require,
    settings_of,
    store_of,
)
from meterhub import commands as service

router = APIRouter()

STATES = (
    "requested", "awaiting_approval", "queued", "sent", "confirmed", "failed", "unknown", "reconciled",
    "cancelled", "superseded", "refused",
)  # fmt: skip
# The groups the home page links to (`/commands?state=…`) and a few more; any single state works too.
GROUPS: dict[str, tuple[str, ...]] = {
    "active": ("requested", "queued", "sent", "unknown"),
    "awaiting_approval": ("awaiting_approval",),
    "failed": ("failed",),
    "done": ("confirmed", "reconciled"),
    "stopped": ("cancelled", "superseded", "refused"),
}
KINDS = ("valve_close", "valve_open", "credit")
BULK_KINDS = ("valve_close", "valve_open")
PURPOSES = ("arrears", "planned_stop", "construction", "customer_request", "prepaid_exhausted", "leak", "other")
BADGE = {
    "confirmed": "ok", "reconciled": "ok", "failed": "bad", "refused": "bad", "unknown": "warn",
    "awaiting_approval": "warn", "requested": "info", "queued": "info", "sent": "info", "approved": "ok",
    "released": "info", "rejected": "bad",
}  # fmt: skip
CONFLICT = frozenset({"not_pending", "not_awaiting_approval", "bulk_member", "idempotency_key_reused"})
MAX_BULK = 10_000  # meters in one bulk request
BULK_CHECK_LIMIT = 300  # meters whose rule check is shown before a bulk request is sent
KEY_MAX = 200


# -- words ------------------------------------------------------------------------------------------
def words(language: str, section: str, code: str | None) -> str:
    """A code (state, kind, purpose, reason, error) in words; an unknown code is shown as it is."""
    if code is None:
        return ""
    key = f"commands.{section}.{code}"
    return i18n.translate(language, key) if key in i18n.catalogue() else code


def _page(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    language = language_of(request)

    def cw(section: str, code: str | None) -> str:
        return words(language, section, code)

    return render(
        request, template, status_code, cw=cw, badge=BADGE, kinds=KINDS, bulk_kinds=BULK_KINDS, purposes=PURPOSES,
        groups=GROUPS, states=STATES, **context,
    )  # fmt: skip


def _refused(request: Request, exc: service.CommandError) -> ActionError:
    """A service refusal as an ActionError: the code, a message (in words on pages), a fitting status."""
    if isinstance(exc, service.NotFound):
        status = 404
    elif isinstance(exc, service.PermissionDenied):
        status = 403
    elif exc.code in CONFLICT:
        status = 409
    else:
        status = 400
    message = str(exc).split(": ", 1)[-1]
    if not is_api(request):
        translated = words(language_of(request), "error", exc.code)
        message = translated if translated != exc.code else message
    return ActionError(exc.code, message, status)


# -- reading the store -----------------------------------------------------------------------------
_METER = """
SELECT m.id, m.meter_no, m.status, m.valve_state, m.prepaid, m.sleepy, mm.has_valve, mm.name AS model,
       a.account_no, a.bill_disputed, cu.name AS customer, coalesce(cu.protected, false) AS protected,
       co.id AS community_id, co.name AS community, co.area_id, ar.name AS area
  FROM meter m LEFT JOIN meter_model mm ON mm.id = m.model_id
  LEFT JOIN account a ON a.id = m.account_id LEFT JOIN customer cu ON cu.id = a.customer_id
  LEFT JOIN community co ON co.id = a.community_id LEFT JOIN area ar ON ar.id = co.area_id
 WHERE m.meter_no = %s"""

_COLUMNS = """c.id, m.meter_no, c.kind, c.sent_kind, c.state, c.reason_code, c.purpose, c.reason, c.requested_by,
              c.approved_by, c.emergency, c.bulk_id, c.amount, c.purchase_seq, c.attempts, c.requested_at,
              c.queued_at, c.sent_at, c.deadline_at, c.finished_at, c.updated_at, c.superseded_by, c.reply,
              c.audit_id, co.area_id"""
_FROM = """FROM meter_command c JOIN meter m ON m.id = c.meter_id
           LEFT JOIN account a ON a.id = m.account_id LEFT JOIN community co ON co.id = a.community_id"""


def meter_info(conn: psycopg.Connection[Any], meter_no: str) -> dict[str, Any] | None:
    """A meter with what a person deciding on a command looks at: valve, account, customer flags, area."""
    return conn.cursor(row_factory=dict_row).execute(_METER, [meter_no]).fetchone()


def _areas(user: Principal) -> list[int] | None:
    return None if user.area_ids is None else sorted(user.area_ids)


class CommandQuery(BaseModel):
    """Filters of the command list; `state` is a state or a group (active, awaiting_approval, failed, done,
    stopped); dates are local days of requesting; `before_id` pages back (the last id received)."""

    state: str | None = None
    meter_no: str | None = None
    kind: str | None = None
    requested_by: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    bulk_id: int | None = None
    before_id: int | None = None


def _clean(q: CommandQuery) -> CommandQuery:
    values = {k: (v.strip() or None) if isinstance(v, str) else v for k, v in q.model_dump().items()}
    q = CommandQuery.model_validate(values)
    if q.state is not None and q.state not in GROUPS and q.state not in STATES:
        raise ActionError("bad_state", f"state must be one of {', '.join([*GROUPS, *STATES])}")
    if q.kind is not None and q.kind not in (*KINDS, "read"):
        raise ActionError("bad_kind", f"kind must be one of {', '.join(KINDS)}")
    return q


def search_commands(
    conn: psycopg.Connection[Any], q: CommandQuery, areas: Sequence[int] | None, timezone: str, limit: int
) -> list[dict[str, Any]]:
    """Commands matching `q`, newest first, of meters in `areas` (all when None)."""
    zone = ZoneInfo(timezone)
    where: list[sql.Composable] = []
    params: list[Any] = []

    def add(clause: str, *values: Any) -> None:
        where.append(sql.SQL(clause))
        params.extend(values)

    if q.state:
        add("c.state = ANY(%s)", list(GROUPS.get(q.state, (q.state,))))
    if q.meter_no:
        add("m.meter_no LIKE %s", re.sub(r"([\\%_])", r"\\\1", q.meter_no) + "%")
    if q.kind:
        add("c.kind = %s", q.kind)
    if q.requested_by:
        add("c.requested_by = %s", q.requested_by)
    if q.date_from:
        add("c.requested_at >= %s", datetime.combine(q.date_from, time(), zone))
    if q.date_to:
        add("c.requested_at < %s", datetime.combine(q.date_to + timedelta(days=1), time(), zone))
    if q.bulk_id is not None:
        add("c.bulk_id = %s", q.bulk_id)
    if q.before_id is not None:
        add("c.id < %s", q.before_id)
    if areas is not None:
        add("co.area_id = ANY(%s)", list(areas))
    query = sql.SQL("SELECT {} {} {} ORDER BY c.id DESC LIMIT {}").format(
        sql.SQL(_COLUMNS),
        sql.SQL(_FROM),
        sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
        sql.Literal(limit),
    )
    return conn.cursor(row_factory=dict_row).execute(query, params).fetchall()


def command_row(conn: psycopg.Connection[Any], command_id: int) -> dict[str, Any] | None:
    return (
        conn.cursor(row_factory=dict_row)
        .execute(f"SELECT {_COLUMNS}, a.account_no {_FROM} WHERE c.id = %s", [command_id])
        .fetchone()
    )


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    ip: str | None
    detail: dict[str, Any]


def command_audit(conn: psycopg.Connection[Any], row: dict[str, Any]) -> list[AuditEntry]:
    """The audit entries of a command: its request (or its bulk request), approvals, cancellation."""
    rows = conn.execute(
        """SELECT at, actor, action, host(ip), detail FROM audit_log
            WHERE id = %(audit)s
               OR (object_type = 'meter_command' AND object_id = %(id)s AND action LIKE 'command.%%')
               OR (object_type = 'command_bulk' AND object_id = %(bulk)s AND action LIKE 'command.%%')
            ORDER BY seq""",
        {
            "audit": row["audit_id"],
            "id": str(row["id"]),
            "bulk": None if row["bulk_id"] is None else str(row["bulk_id"]),
        },
    ).fetchall()
    return [AuditEntry(r[0], r[1], r[2], r[3], r[4] or {}) for r in rows]


@dataclass(frozen=True)
class Step:
    """One step of a command's life: what (a state or approved/rejected), when, who or why."""

    what: str
    at: datetime | None
    who: str | None = None
    code: str | None = None
    note: str | None = None
    tone: str = "info"


def life(row: dict[str, Any], audit: Iterable[AuditEntry]) -> list[Step]:
    """requested → (awaiting approval → approved) → queued → sent → confirmed | failed | unknown → reconciled,
    or cancelled / superseded / refused: the steps this command has been through, in order."""
    audit = list(audit)
    state = row["state"]
    steps = [Step("requested", row["requested_at"], row["requested_by"], tone="info")]
    decision = next(
        (a for a in audit if a.action in ("command.approve", "command.bulk_approve", "command.bulk_reject")), None
    )
    if state == "awaiting_approval" or decision is not None or row["approved_by"]:
        steps.append(Step("awaiting_approval", row["requested_at"], tone="warn"))
    if decision is not None:
        rejected = decision.action == "command.bulk_reject"
        steps.append(Step("rejected" if rejected else "approved", decision.at, decision.actor,
                          tone="bad" if rejected else "ok"))  # fmt: skip
    if row["queued_at"] is not None:
        steps.append(Step("queued", row["queued_at"], tone="info"))
    if row["sent_at"] is not None:
        steps.append(Step("sent", row["sent_at"], note=row["sent_kind"], tone="info"))
    if state == "unknown":
        steps.append(Step("unknown", row["updated_at"], code=row["reason_code"], tone="warn"))
    if row["finished_at"] is not None:
        who = None
        if state == "cancelled":
            who = next((a.actor for a in audit if a.action == "command.cancel"), None)
        steps.append(Step(state, row["finished_at"], who, row["reason_code"], tone=BADGE.get(state, "")))
    return steps


def bulk_row(conn: psycopg.Connection[Any], bulk_id: int) -> dict[str, Any] | None:
    return (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT b.id, b.kind, b.purpose, b.reason, b.size, b.state, b.requested_by, b.approved_by,
                      b.requested_at, b.decided_at,
                      array(SELECT DISTINCT co.area_id FROM meter_command c JOIN meter m ON m.id = c.meter_id
                              LEFT JOIN account a ON a.id = m.account_id
                              LEFT JOIN community co ON co.id = a.community_id WHERE c.bulk_id = b.id) AS area_ids
                 FROM command_bulk b WHERE b.id = %s""",
            [bulk_id],
        )
        .fetchone()
    )


def search_bulks(
    conn: psycopg.Connection[Any], state: str | None, areas: Sequence[int] | None, before_id: int | None, limit: int
) -> list[dict[str, Any]]:
    """Bulk requests, newest first, with counts of their commands by state; with `areas`, only those with a
    command for a meter in them."""
    return (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT b.id, b.kind, b.purpose, b.reason, b.size, b.state, b.requested_by, b.approved_by,
                      b.requested_at, b.decided_at,
                      (SELECT jsonb_object_agg(s.state, s.n) FROM (SELECT c.state, count(*) AS n FROM meter_command c
                                WHERE c.bulk_id = b.id GROUP BY c.state) s) AS counts
                 FROM command_bulk b
                WHERE (%(state)s::text IS NULL OR b.state = %(state)s)
                  AND (%(before)s::bigint IS NULL OR b.id < %(before)s)
                  AND (%(areas)s::bigint[] IS NULL OR EXISTS (
                        SELECT 1 FROM meter_command c JOIN meter m ON m.id = c.meter_id
                          JOIN account a ON a.id = m.account_id JOIN community co ON co.id = a.community_id
                         WHERE c.bulk_id = b.id AND co.area_id = ANY(%(areas)s)))
                ORDER BY b.id DESC LIMIT %(limit)s""",
            {"state": state, "before": before_id, "areas": None if areas is None else list(areas), "limit": limit},
        )
        .fetchall()
    )


def communities(conn: psycopg.Connection[Any], areas: Sequence[int] | None) -> list[dict[str, Any]]:
    """Communities (小区) with their installed meters, within `areas` (all when None)."""
    return (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT co.id, co.code, co.name, co.area_id, ar.name AS area,
                      (SELECT count(*) FROM meter m JOIN account a ON a.id = m.account_id
                        WHERE a.community_id = co.id AND m.status = 'installed') AS meters
                 FROM community co JOIN area ar ON ar.id = co.area_id
                WHERE %(areas)s::bigint[] IS NULL OR co.area_id = ANY(%(areas)s)
                ORDER BY ar.name, co.name""",
            {"areas": None if areas is None else list(areas)},
        )
        .fetchall()
    )


# -- acting ---------------------------------------------------------------------------------------
def _check_area(user: Principal, area_id: int | None) -> None:
    if not user.covers_area(area_id):
        raise Forbidden("area")


def _meter_for(request: Request, user: Principal, meter_no: str) -> dict[str, Any]:
    with store_of(request).connection() as conn:
        meter = meter_info(conn, meter_no)
    if meter is None:
        raise _refused(request, service.NotFound("no_meter", f"no meter {meter_no}"))
    _check_area(user, meter["area_id"])
    return meter


def parse_amount(text: str | Decimal | None) -> Decimal | None:
    """An amount in CNY from a form or a JSON body (None when empty); anything else but a number is refused."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        value = text if isinstance(text, Decimal) else Decimal(text.strip().replace(",", "").replace("，", ""))
    except InvalidOperation:
        raise service.CommandError("bad_amount", f"{text!r} is not an amount") from None
    return value


def issue(
    request: Request,
    user: Principal,
    meter_no: str,
    kind: str,
    *,
    purpose: str,
    reason: str,
    amount: Decimal | None,
    key: str | None,
    emergency: bool = False,
) -> service.CommandView:
    """Ask for one command for `user` after checking the meter is in their areas. The idempotency key is the
    user's own: the same key from the same user returns the first command; a key reused for a different
    command is refused (409)."""
    meter_no = meter_no.strip()
    _meter_for(request, user, meter_no)
    if key is not None and len(key) > KEY_MAX:
        raise ActionError("bad_key", f"an idempotency key has at most {KEY_MAX} characters")
    try:
        view = service.request_command(
            store_of(request),
            meter_no,
            kind,
            user=user.username,
            reason=reason,
            purpose="emergency" if emergency else purpose,
            amount=amount,
            idempotency_key=f"{user.username}:{key}" if key else None,
            emergency=emergency,
            ip=client_ip(request),
        )
    except service.CommandError as exc:
        raise _refused(request, exc) from None
    note_object(request, "meter_command", view.id)
    if (view.meter_no, view.kind, view.emergency, view.amount) != (meter_no, kind, emergency, amount):
        raise _refused(
            request,
            service.CommandError(
                "idempotency_key_reused", f"this idempotency key was used for command {view.id}, a different request"
            ),
        )
    return view


@dataclass
class BulkTargets:
    """The meters of a bulk request, and what stands in the way of sending it."""

    meter_nos: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    community: dict[str, Any] | None = None

    @property
    def problem(self) -> str | None:
        if self.unknown:
            return "unknown_meters"
        if self.outside:
            return "outside_areas"
        if not self.meter_nos:
            return "empty"
        if len(self.meter_nos) > MAX_BULK:
            return "too_many"
        return None


def split_meter_list(text: str) -> list[str]:
    """Meter numbers pasted one a line or separated by spaces, commas or semicolons; duplicates dropped."""
    return list(dict.fromkeys(part for part in re.split(r"[\s,;，；、]+", text) if part))


def bulk_targets(
    conn: psycopg.Connection[Any], user: Principal, community_id: int | None, meter_nos: Sequence[str]
) -> BulkTargets:
    """A whole community (its installed meters) or a list of meter numbers, checked against the user's areas."""
    targets = BulkTargets()
    if community_id is not None:
        community = conn.cursor(row_factory=dict_row).execute(
            "SELECT id, code, name, area_id FROM community WHERE id = %s", [community_id]
        ).fetchone()
        if community is None:
            targets.unknown = [f"#{community_id}"]
            return targets
        _check_area(user, community["area_id"])
        targets.community = community
        targets.meter_nos = [
            r[0]
            for r in conn.execute(
                """SELECT m.meter_no FROM meter m JOIN account a ON a.id = m.account_id
                    WHERE a.community_id = %s AND m.status = 'installed' ORDER BY m.meter_no""",
                [community_id],
            )
        ]
        return targets
    found = {
        r[0]: r[1]
        for r in conn.execute(
            """SELECT m.meter_no, co.area_id FROM meter m LEFT JOIN account a ON a.id = m.account_id
                 LEFT JOIN community co ON co.id = a.community_id WHERE m.meter_no = ANY(%s)""",
            [list(meter_nos)],
        )
    }
    targets.meter_nos = list(meter_nos)
    targets.unknown = [n for n in meter_nos if n not in found]
    targets.outside = [n for n in meter_nos if n in found and not user.covers_area(found[n])]
    return targets


def rule_preview(request: Request, meter_nos: Sequence[str], kind: str, purpose: str) -> tuple[Counter[str], int]:
    """How the rules would answer now for the first meters of a bulk request: refusals by reason, and how
    many meters were checked."""
    checked = list(meter_nos[:BULK_CHECK_LIMIT])
    refusals: Counter[str] = Counter()
    for meter_no in checked:
        try:
            code = service.would_refuse(store_of(request), meter_no, kind, purpose)
        except service.NotFound:
            code = "no_meter"
        refusals[code or "allowed"] += 1
    return refusals, len(checked)


def create_bulk(
    request: Request,
    user: Principal,
    targets: BulkTargets,
    kind: str,
    purpose: str,
    reason: str,
    key: str | None = None,
) -> service.BulkView:
    """File a bulk request. The idempotency key is the user's own: the same key returns the first request."""
    if key is not None and len(key) > KEY_MAX:
        raise ActionError("bad_key", f"an idempotency key has at most {KEY_MAX} characters")
    if targets.problem == "outside_areas":
        raise Forbidden("area")
    if targets.problem:
        detail = ", ".join(targets.unknown[:20])
        raise _refused(request, service.CommandError(targets.problem, detail or targets.problem))
    if kind not in BULK_KINDS:
        raise _refused(request, service.CommandError("bad_kind", "bulk commands are valve_close or valve_open"))
    if not reason.strip():
        raise _refused(request, service.CommandError("no_reason", "say why the command is needed"))
    try:
        bulk = service.request_bulk(
            store_of(request),
            targets.meter_nos,
            kind,
            user=user.username,
            reason=reason.strip(),
            purpose=purpose,
            ip=client_ip(request),
            settings=settings_of(request).commands,
            idempotency_key=f"{user.username}:{key}" if key else None,
        )
    except service.CommandError as exc:
        raise _refused(request, exc) from None
    note_object(request, "command_bulk", bulk.id)
    return bulk


def _visible_command(request: Request, user: Principal, command_id: int) -> dict[str, Any]:
    with store_of(request).connection() as conn:
        row = command_row(conn, command_id)
    if row is None:
        raise _refused(request, service.NotFound("no_command", f"no command {command_id}"))
    _check_area(user, row["area_id"])
    return row


def _visible_bulk(request: Request, user: Principal, bulk_id: int, *, all_members: bool = False) -> dict[str, Any]:
    """A bulk request the user may see (some command in their areas) or act on (`all_members`: every one)."""
    with store_of(request).connection() as conn:
        row = bulk_row(conn, bulk_id)
    if row is None:
        raise _refused(request, service.NotFound("no_bulk", f"no bulk request {bulk_id}"))
    covered = [user.covers_area(a) for a in row["area_ids"]]
    if user.area_ids is not None and not (all(covered) if all_members else any(covered)):
        raise Forbidden("area")
    return row


def _approve_command(request: Request, user: Principal, command_id: int) -> service.CommandView:
    _visible_command(request, user, command_id)
    try:
        view = service.approve(store_of(request), command_id, user=user.username, ip=client_ip(request))
    except service.CommandError as exc:
        raise _refused(request, exc) from None
    note_object(request, "meter_command", command_id)
    return view


def _cancel_command(request: Request, user: Principal, command_id: int, reason: str) -> service.CommandView:
    _visible_command(request, user, command_id)
    if not reason.strip():
        raise _refused(request, service.CommandError("no_reason", "say why the command is cancelled"))
    try:
        view = service.cancel(store_of(request), command_id, user=user.username, reason=reason.strip(),
                              ip=client_ip(request))  # fmt: skip
    except service.CommandError as exc:
        raise _refused(request, exc) from None
    note_object(request, "meter_command", command_id)
    return view


def _decide_bulk(request: Request, user: Principal, bulk_id: int, reject: bool) -> service.BulkView:
    _visible_bulk(request, user, bulk_id, all_members=True)
    try:
        view = service.approve_bulk(store_of(request), bulk_id, user=user.username, ip=client_ip(request),
                                    reject=reject)  # fmt: skip
    except service.CommandError as exc:
        raise _refused(request, exc) from None
    note_object(request, "command_bulk", bulk_id)
    return view


# -- pages ----------------------------------------------------------------------------------------
def _query_string(values: dict[str, Any]) -> str:
    return urlencode({k: v for k, v in values.items() if v not in (None, "")})


@router.get("/commands", include_in_schema=False)
def commands_page(
    request: Request,
    user: Annotated[Principal, Depends(require("commands.view"))],
    q: Annotated[CommandQuery, Query()],
) -> Response:
    q = _clean(q)
    size = settings_of(request).console.page_size
    areas = _areas(user)
    with store_of(request).connection() as conn:
        rows = search_commands(conn, q, areas, settings_of(request).timezone, size + 1)
        bulks = search_bulks(conn, "awaiting_approval", areas, None, 50) if q.state == "awaiting_approval" else []
    more = len(rows) > size
    rows = rows[:size]
    params = q.model_dump(exclude_none=True, mode="json")
    params.pop("before_id", None)
    return _page(
        request, "commands/list.html", rows=rows, q=q, bulks=bulks,
        next_url=f"/commands?{_query_string({**params, 'before_id': rows[-1]['id']})}" if more and rows else None,
        first_url=f"/commands?{_query_string(params)}" if q.before_id is not None else None,
    )  # fmt: skip


def _new_page(
    request: Request,
    user: Principal,
    *,
    meter_no: str | None,
    kind: str | None,
    purpose: str,
    amount: str | None,
    reason: str = "",
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    meter = verdicts = recent = None
    amount_error = None
    meter_no = (meter_no or "").strip() or None
    if purpose not in PURPOSES:
        purpose = "other"
    if kind not in KINDS:
        kind = None
    if meter_no:
        store = store_of(request)
        with store.connection() as conn:
            meter = meter_info(conn, meter_no)
            if meter is not None:
                _check_area(user, meter["area_id"])
                recent = search_commands(
                    conn, CommandQuery(meter_no=meter_no), None, settings_of(request).timezone, 20
                )
                recent = [r for r in recent if r["meter_no"] == meter_no][:5]
        if meter is not None:
            verdicts = {k: service.would_refuse(store, meter_no, k, purpose) for k in KINDS}
        elif error is None:
            error = words(language_of(request), "error", "no_meter")
            status_code = 404
    if kind == "credit":
        try:
            value = parse_amount(amount)
            if value is None or value <= 0 or value != value.quantize(Decimal("0.01")):
                amount_error = words(language_of(request), "error", "bad_amount")
        except service.CommandError:
            amount_error = words(language_of(request), "error", "bad_amount")
    return _page(
        request, "commands/new.html", status_code, meter=meter, meter_no=meter_no or "", kind=kind, purpose=purpose,
        amount=amount or "", reason=reason, verdicts=verdicts, recent=recent or [], amount_error=amount_error,
        idempotency_key=uuid.uuid4().hex, message_error=error,
    )  # fmt: skip


@router.get("/commands/new", include_in_schema=False)
def new_command_page(
    request: Request,
    user: Annotated[Principal, Depends(require("command.request"))],
    meter_no: str | None = None,
    kind: str | None = None,
    purpose: str = "other",
    amount: str | None = None,
) -> Response:
    """Step one: a meter, what to do and why (the purpose); the rule check answers before anything is sent."""
    return _new_page(request, user, meter_no=meter_no, kind=kind, purpose=purpose, amount=amount)


@router.post("/commands/new", include_in_schema=False)
def new_command(
    request: Request,
    user: Annotated[Principal, Depends(require("command.request"))],
    meter_no: Annotated[str, Form(max_length=64)],
    kind: Annotated[str, Form()],
    reason: Annotated[str, Form(max_length=1000)] = "",
    purpose: Annotated[str, Form()] = "other",
    amount: Annotated[str, Form(max_length=32)] = "",
    idempotency_key: Annotated[str, Form(max_length=KEY_MAX)] = "",
) -> Response:
    try:
        value = parse_amount(amount) if kind == "credit" else None
        view = issue(request, user, meter_no, kind, purpose=purpose, reason=reason, amount=value,
                     key=idempotency_key or None)  # fmt: skip
    except service.CommandError as exc:
        return _new_page(request, user, meter_no=meter_no, kind=kind, purpose=purpose, amount=amount, reason=reason,
                         error=words(language_of(request), "error", exc.code), status_code=400)  # fmt: skip
    except ActionError as exc:
        if exc.status != 400:
            raise
        return _new_page(request, user, meter_no=meter_no, kind=kind, purpose=purpose, amount=amount, reason=reason,
                         error=exc.message, status_code=400)  # fmt: skip
    return redirect(f"/commands/{view.id}")


@router.post("/commands/emergency", include_in_schema=False)
def emergency_close_page(
    request: Request,
    user: Annotated[Principal, Depends(require("command.emergency"))],
    meter_no: Annotated[str, Form(max_length=64)],
    reason: Annotated[str, Form(max_length=1000)] = "",
    idempotency_key: Annotated[str, Form(max_length=KEY_MAX)] = "",
) -> Response:
    """One step, no rules, no approval: the valve closes as soon as the collector reaches the meter."""
    view = issue(request, user, meter_no, "valve_close", purpose="emergency", reason=reason, amount=None,
                 key=idempotency_key or None, emergency=True)  # fmt: skip
    return redirect(f"/commands/{view.id}")


@router.get("/commands/bulk", include_in_schema=False)
def bulk_list_page(
    request: Request,
    user: Annotated[Principal, Depends(require("commands.view"))],
    state: str | None = None,
    before_id: int | None = None,
) -> Response:
    state = state or None
    size = settings_of(request).console.page_size
    with store_of(request).connection() as conn:
        rows = search_bulks(conn, state, _areas(user), before_id, size + 1)
    more = len(rows) > size
    rows = rows[:size]
    return _page(
        request, "commands/bulk_list.html", bulks=rows, state=state,
        next_url=f"/commands/bulk?{_query_string({'state': state, 'before_id': rows[-1]['id']})}" if more else None,
        first_url=f"/commands/bulk?{_query_string({'state': state})}" if before_id is not None else None,
    )  # fmt: skip


def _bulk_new_page(
    request: Request,
    user: Principal,
    *,
    form: dict[str, Any],
    targets: BulkTargets | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    with store_of(request).connection() as conn:
        places = communities(conn, _areas(user))
    refusals: Counter[str] | None = None
    checked = 0
    if targets is not None and targets.problem is None:
        refusals, checked = rule_preview(request, targets.meter_nos, form["kind"], form["purpose"])
    return _page(
        request, "commands/bulk_new.html", status_code, form=form, places=places, targets=targets,
        refusals=refusals, checked=checked, approval_size=settings_of(request).commands.bulk_approval_size,
        message_error=error,
    )  # fmt: skip


@router.get("/commands/bulk/new", include_in_schema=False)
def bulk_new_page(
    request: Request,
    user: Annotated[Principal, Depends(require("command.bulk"))],
    community_id: int | None = None,
    kind: str = "valve_close",
) -> Response:
    form = {"kind": kind if kind in BULK_KINDS else "valve_close", "purpose": "other", "reason": "",
            "community_id": community_id, "meter_list": "", "idempotency_key": uuid.uuid4().hex}  # fmt: skip
    return _bulk_new_page(request, user, form=form)


@router.post("/commands/bulk", include_in_schema=False)
def bulk_submit(
    request: Request,
    user: Annotated[Principal, Depends(require("command.bulk"))],
    kind: Annotated[str, Form()],
    purpose: Annotated[str, Form()] = "other",
    reason: Annotated[str, Form(max_length=1000)] = "",
    target: Annotated[Literal["community", "list"], Form()] = "community",
    community_id: Annotated[str, Form()] = "",
    meter_list: Annotated[str, Form(max_length=400_000)] = "",
    step: Annotated[Literal["check", "send"], Form()] = "check",
    idempotency_key: Annotated[str, Form(max_length=KEY_MAX)] = "",
) -> Response:
    """`step=check` shows what the request would do (meters, unknown numbers, rule refusals, whether it waits
    for approval) and changes nothing; `step=send` files it."""
    language = language_of(request)
    purpose = purpose if purpose in PURPOSES else "other"
    community = int(community_id) if community_id.isdigit() else None
    form: dict[str, Any] = {
        "kind": kind,
        "purpose": purpose,
        "reason": reason,
        "target": target,
        "community_id": community,
        "meter_list": meter_list,
        "idempotency_key": idempotency_key or uuid.uuid4().hex,  # a second click sends the same request
    }
    if kind not in BULK_KINDS:
        return _bulk_new_page(request, user, form=form, error=words(language, "error", "bad_kind"), status_code=400)
    if target == "community" and community is None:
        return _bulk_new_page(request, user, form=form, error=words(language, "error", "empty"), status_code=400)
    with store_of(request).connection() as conn:
        targets = bulk_targets(
            conn, user, community if target == "community" else None,
            split_meter_list(meter_list) if target == "list" else [],
        )  # fmt: skip
    if targets.problem or step == "check":
        error = words(language, "error", targets.problem) if targets.problem else None
        return _bulk_new_page(request, user, form=form, targets=targets, error=error,
                              status_code=400 if targets.problem and step == "send" else 200)  # fmt: skip
    if not reason.strip():
        return _bulk_new_page(request, user, form=form, targets=targets, error=words(language, "error", "no_reason"),
                              status_code=400)  # fmt: skip
    bulk = create_bulk(request, user, targets, kind, purpose, reason, key=idempotency_key or None)
    return redirect(f"/commands/bulk/{bulk.id}")


@router.get("/commands/bulk/{bulk_id}", include_in_schema=False)
def bulk_page(
    request: Request, bulk_id: int, user: Annotated[Principal, Depends(require("commands.view"))]
) -> Response:
    bulk = _visible_bulk(request, user, bulk_id)
    with store_of(request).connection() as conn:
        members = search_commands(conn, CommandQuery(bulk_id=bulk_id), _areas(user), settings_of(request).timezone,
                                  MAX_BULK)  # fmt: skip
    members.reverse()
    counts = Counter(m["state"] for m in members)
    return _page(
        request, "commands/bulk.html", bulk=bulk, members=members, counts=counts,
        hidden=bulk["size"] - len(members), all_final=all(m["state"] in service.FINAL for m in members),
        own=bulk["requested_by"] == user.username,
    )  # fmt: skip


@router.post("/commands/bulk/{bulk_id}/approve", include_in_schema=False)
def bulk_approve_page(
    request: Request, bulk_id: int, user: Annotated[Principal, Depends(require("command.approve"))]
) -> Response:
    _decide_bulk(request, user, bulk_id, reject=False)
    return redirect(f"/commands/bulk/{bulk_id}")


@router.post("/commands/bulk/{bulk_id}/reject", include_in_schema=False)
def bulk_reject_page(
    request: Request, bulk_id: int, user: Annotated[Principal, Depends(require("command.approve"))]
) -> Response:
    _decide_bulk(request, user, bulk_id, reject=True)
    return redirect(f"/commands/bulk/{bulk_id}")


@router.get("/commands/{command_id}", include_in_schema=False)
def command_page(
    request: Request, command_id: int, user: Annotated[Principal, Depends(require("commands.view"))]
) -> Response:
    row = _visible_command(request, user, command_id)
    with store_of(request).connection() as conn:
        audit = command_audit(conn, row)
        bulk = bulk_row(conn, row["bulk_id"]) if row["bulk_id"] is not None else None
        account = None
        if user.can("customers.view"):
            account = meter_info(conn, row["meter_no"])
    return _page(
        request, "commands/detail.html", c=row, final=row["state"] in service.FINAL, steps=life(row, audit),
        audit=audit, bulk=bulk, account=account, pending=row["state"] in service.PENDING,
    )  # fmt: skip


@router.post("/commands/{command_id}/approve", include_in_schema=False)
def approve_page(
    request: Request, command_id: int, user: Annotated[Principal, Depends(require("command.approve"))]
) -> Response:
    _approve_command(request, user, command_id)
    return redirect(f"/commands/{command_id}")


@router.post("/commands/{command_id}/cancel", include_in_schema=False)
def cancel_page(
    request: Request,
    command_id: int,
    user: Annotated[Principal, Depends(require("command.cancel"))],
    reason: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    _cancel_command(request, user, command_id, reason)
    return redirect(f"/commands/{command_id}")


# -- API ------------------------------------------------------------------------------------------
class CommandOut(BaseModel):
    """A command. `state` runs requested → (awaiting_approval) → queued → sent → confirmed | failed | unknown →
    reconciled, or ends cancelled / superseded / refused; `reason_code` says why (a rule's code for a refusal)
    and `reason_text` says it in words. `amount` is an exact decimal string."""

    id: int
    meter_no: str
    kind: str
    sent_kind: str | None = Field(description="What went on the wire: valve_arm where the meter can arm.")
    state: str
    final: bool
    reason_code: str | None
    reason_text: str | None
    purpose: str
    reason: str
    requested_by: str
    approved_by: str | None
    emergency: bool
    bulk_id: int | None
    amount: str | None
    purchase_seq: int | None
    attempts: int
    requested_at: datetime
    finished_at: datetime | None


class CommandDetailOut(CommandOut):
    queued_at: datetime | None
    sent_at: datetime | None
    deadline_at: datetime | None = Field(description="When the current wait (reply or read-back) ends.")
    superseded_by: int | None
    reply: dict[str, Any] | None = Field(description="The meter's reply, as the collector stored it.")


class CommandPage(BaseModel):
    commands: list[CommandOut]
    next_before_id: int | None = Field(description="Pass as before_id for the next (older) page; null at the end.")


class BulkOut(BaseModel):
    id: int
    state: str = Field(description="awaiting_approval, approved, rejected, or released (small enough to need none).")
    size: int
    requested_by: str
    approved_by: str | None
    commands: list[CommandOut]


class CommandIn(BaseModel):
    meter_no: str = Field(min_length=1, max_length=64)
    kind: Literal["valve_close", "valve_open", "credit"]
    purpose: str = Field(default="other", description=", ".join(PURPOSES))
    reason: str = Field(min_length=1, max_length=1000, description="Why: kept with the command and in the audit log.")
    amount: Decimal | None = Field(default=None, description="CNY, for credit only; send it as a string.")


class EmergencyIn(BaseModel):
    meter_no: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=1000)


class BulkIn(BaseModel):
    kind: Literal["valve_close", "valve_open"]
    purpose: str = "other"
    reason: str = Field(min_length=1, max_length=1000)
    meter_nos: list[str] | None = Field(default=None, max_length=MAX_BULK)
    community_id: int | None = Field(default=None, description="Every installed meter of this community.")


class CancelIn(BaseModel):
    reason: str = Field(min_length=1, max_length=1000)


class CheckOut(BaseModel):
    meter_no: str
    kind: str
    purpose: str
    allowed: bool
    reason_code: str | None
    reason_text: str | None


def _out(request: Request, item: service.CommandView | dict[str, Any], detail: bool = False) -> CommandOut:
    d = item if isinstance(item, dict) else dataclasses.asdict(item)
    language = language_of(request)
    values: dict[str, Any] = {name: d.get(name) for name in CommandOut.model_fields}
    values.update(
        final=d["state"] in service.FINAL,
        amount=None if d.get("amount") is None else f"{d['amount']:.2f}",
        reason_text=words(language, "reason", d["reason_code"]) or None,
    )
    if not detail:
        return CommandOut.model_validate(values)
    extra = {name: d.get(name) for name in ("queued_at", "sent_at", "deadline_at", "superseded_by", "reply")}
    return CommandDetailOut.model_validate({**values, **extra})


def _bulk_out(request: Request, user: Principal, view: service.BulkView) -> BulkOut:
    members = list(view.commands)
    if user.area_ids is not None:
        with store_of(request).connection() as conn:
            rows = search_commands(
                conn, CommandQuery(bulk_id=view.id), _areas(user), settings_of(request).timezone, MAX_BULK
            )
        inside = {r["id"] for r in rows}
        members = [c for c in members if c.id in inside]
    return BulkOut(
        id=view.id, state=view.state, size=view.size, requested_by=view.requested_by, approved_by=view.approved_by,
        commands=[_out(request, c) for c in members],
    )  # fmt: skip


def _created(model: BaseModel) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=201)


@router.get("/api/v1/commands", tags=["commands"])
def api_commands(
    request: Request,
    user: Annotated[Principal, Depends(require("commands.view"))],
    q: Annotated[CommandQuery, Query()],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> CommandPage:
    """Commands, newest first, filtered like the console's list (`state` takes a state or a group: active,
    awaiting_approval, failed, done, stopped); only meters in the caller's areas."""
    q = _clean(q)
    with store_of(request).connection() as conn:
        rows = search_commands(conn, q, _areas(user), settings_of(request).timezone, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return CommandPage(commands=[_out(request, r) for r in rows], next_before_id=rows[-1]["id"] if more else None)


@router.get("/api/v1/commands/check", tags=["commands"])
def api_check(
    request: Request,
    user: Annotated[Principal, Depends(require("commands.view"))],
    meter_no: str,
    kind: Literal["valve_close", "valve_open", "credit"],
    purpose: str = "other",
) -> CheckOut:
    """Would a command be refused now, and why (the rule check, without creating anything)?"""
    _meter_for(request, user, meter_no)
    try:
        code = service.would_refuse(store_of(request), meter_no, kind, purpose)
    except service.CommandError as exc:
        raise _refused(request, exc) from None
    return CheckOut(meter_no=meter_no, kind=kind, purpose=purpose, allowed=code is None, reason_code=code,
                    reason_text=words(language_of(request), "reason", code) or None)  # fmt: skip


@router.post("/api/v1/commands", tags=["commands"], status_code=201, response_model=CommandOut)
def api_request(
    request: Request,
    body: CommandIn,
    user: Annotated[Principal, Depends(require("command.request"))],
    idempotency_key: Annotated[str | None, Header(max_length=KEY_MAX)] = None,
) -> Response:
    """Ask for a close, an open (armed where the meter can) or a credit top-up. The answer is the command:
    `queued`, or `refused` with the rule's `reason_code` (201 either way: the refusal is recorded). Send an
    `Idempotency-Key` header to make retries safe: the same key (per user) returns the first command (200)."""
    if body.purpose not in PURPOSES:
        raise ActionError("bad_purpose", f"purpose must be one of {', '.join(PURPOSES)}")
    key = idempotency_key or None
    replay = _replayed(request, user, key)
    view = issue(request, user, body.meter_no, body.kind, purpose=body.purpose, reason=body.reason,
                 amount=body.amount, key=key)  # fmt: skip
    out = _out(request, view)
    return JSONResponse(out.model_dump(mode="json"), status_code=200 if replay else 201)


class MeterCommandIn(BaseModel):
    kind: Literal["valve_close", "valve_open", "credit"]
    purpose: str = Field(default="other", description=", ".join(PURPOSES))
    reason: str = Field(min_length=1, max_length=1000, description="Why: kept with the command and in the audit log.")
    amount: Decimal | None = Field(default=None, description="CNY, for credit only; send it as a string.")


@router.post("/api/v1/meters/{meter_no}/commands", tags=["commands"], status_code=202, response_model=CommandOut)
def api_meter_command(
    request: Request,
    meter_no: str,
    body: MeterCommandIn,
    user: Annotated[Principal, Depends(require("command.request"))],
    idempotency_key: Annotated[str | None, Header(max_length=KEY_MAX)] = None,
) -> Response:
    """The same request addressed by meter: 202 Accepted with the command's id and state (follow it with
    `GET /api/v1/commands/{id}`); a repeated `Idempotency-Key` returns the first command."""
    if body.purpose not in PURPOSES:
        raise ActionError("bad_purpose", f"purpose must be one of {', '.join(PURPOSES)}")
    key = idempotency_key or None
    view = issue(request, user, meter_no, body.kind, purpose=body.purpose, reason=body.reason,
                 amount=body.amount, key=key)  # fmt: skip
    return JSONResponse(_out(request, view).model_dump(mode="json"), status_code=202)


def _replayed(
    request: Request,
    user: Principal,
    key: str | None,
    table: Literal["meter_command", "command_bulk"] = "meter_command",
) -> bool:
    """Whether the user's idempotency key was used already (the request then answers with the first one)."""
    if not key:
        return False
    with store_of(request).connection() as conn:
        row = conn.execute(
            f"SELECT 1 FROM {table} WHERE idempotency_key = %s", [f"{user.username}:{key}"]
        ).fetchone()
    return row is not None


@router.post("/api/v1/commands/emergency-close", tags=["commands"], status_code=201, response_model=CommandOut)
def api_emergency_close(
    request: Request,
    body: EmergencyIn,
    user: Annotated[Principal, Depends(require("command.emergency"))],
    idempotency_key: Annotated[str | None, Header(max_length=KEY_MAX)] = None,
) -> Response:
    """Close a valve now: one step, no rules, no approval (a leak, a fire). Needs `command.emergency`."""
    key = idempotency_key or None
    replay = _replayed(request, user, key)
    view = issue(request, user, body.meter_no, "valve_close", purpose="emergency", reason=body.reason, amount=None,
                 key=key, emergency=True)  # fmt: skip
    return JSONResponse(_out(request, view).model_dump(mode="json"), status_code=200 if replay else 201)


@router.post("/api/v1/commands/bulk", tags=["commands"], status_code=201, response_model=BulkOut)
def api_bulk(
    request: Request,
    body: BulkIn,
    user: Annotated[Principal, Depends(require("command.bulk"))],
    idempotency_key: Annotated[str | None, Header(max_length=KEY_MAX)] = None,
) -> Response:
    """Close or open many meters: `meter_nos`, or every installed meter of `community_id`. From
    `commands.bulk_approval_size` meters on, the request waits (`awaiting_approval`) for a second person
    with `command.approve`. Each meter's command is still checked against the rules. Send an
    `Idempotency-Key` header to make retries safe: the same key (per user) returns the first request (200);
    the key reused for another request answers 409."""
    if (body.meter_nos is None) == (body.community_id is None):
        raise ActionError("bad_target", "give either meter_nos or community_id")
    if body.purpose not in PURPOSES:
        raise ActionError("bad_purpose", f"purpose must be one of {', '.join(PURPOSES)}")
    with store_of(request).connection() as conn:
        meter_nos = list(dict.fromkeys(n.strip() for n in body.meter_nos or [] if n.strip()))
        targets = bulk_targets(conn, user, body.community_id, meter_nos)
    if targets.unknown:
        raise ActionError("unknown_meters", "unknown: " + ", ".join(targets.unknown[:50]), 404)
    key = idempotency_key or None
    replayed = _replayed(request, user, key, "command_bulk")
    view = create_bulk(request, user, targets, body.kind, body.purpose, body.reason, key=key)
    if replayed:
        return JSONResponse(_bulk_out(request, user, view).model_dump(mode="json"), status_code=200)
    return _created(_bulk_out(request, user, view))


@router.get("/api/v1/commands/bulk/{bulk_id}", tags=["commands"])
def api_bulk_get(
    request: Request, bulk_id: int, user: Annotated[Principal, Depends(require("commands.view"))]
) -> BulkOut:
    """A bulk request with its commands (those of meters in the caller's areas)."""
    _visible_bulk(request, user, bulk_id)
    return _bulk_out(request, user, service.get_bulk(store_of(request), bulk_id))


@router.post("/api/v1/commands/bulk/{bulk_id}/approve", tags=["commands"])
def api_bulk_approve(
    request: Request, bulk_id: int, user: Annotated[Principal, Depends(require("command.approve"))]
) -> BulkOut:
    """Approve a bulk request someone else asked for: its commands are queued."""
    return _bulk_out(request, user, _decide_bulk(request, user, bulk_id, reject=False))


@router.post("/api/v1/commands/bulk/{bulk_id}/reject", tags=["commands"])
def api_bulk_reject(
    request: Request, bulk_id: int, user: Annotated[Principal, Depends(require("command.approve"))]
) -> BulkOut:
    """Reject a bulk request someone else asked for: its waiting commands are cancelled (`rejected`)."""
    return _bulk_out(request, user, _decide_bulk(request, user, bulk_id, reject=True))


@router.get("/api/v1/commands/{command_id}", tags=["commands"])
def api_command(
    request: Request, command_id: int, user: Annotated[Principal, Depends(require("commands.view"))]
) -> CommandDetailOut:
    """One command with its timestamps and the meter's reply; poll it until `final` is true."""
    row = _visible_command(request, user, command_id)
    out = _out(request, row, detail=True)
    assert isinstance(out, CommandDetailOut)
    return out


@router.post("/api/v1/commands/{command_id}/approve", tags=["commands"])
def api_approve(
    request: Request, command_id: int, user: Annotated[Principal, Depends(require("command.approve"))]
) -> CommandOut:
    """Release a command awaiting approval (not one of a bulk request: approve the bulk). The requester
    cannot approve their own."""
    return _out(request, _approve_command(request, user, command_id))


@router.post("/api/v1/commands/{command_id}/cancel", tags=["commands"])
def api_cancel(
    request: Request,
    command_id: int,
    body: CancelIn,
    user: Annotated[Principal, Depends(require("command.cancel"))],
) -> CommandOut:
    """Withdraw a command that has not been sent yet (requested, awaiting approval or queued); 409 otherwise."""
    return _out(request, _cancel_command(request, user, command_id, body.reason))

