"""SMS (短信平台): the history of messages with their delivery status, sending to customers or staff by a
condition after a preview of the recipients, templates, and the automatic notices (on/off, template,
thresholds, a scan on demand). Pages under /sms and the `/api/v1/sms/…` routes, including the endpoint a
provider posts its delivery reports to (with an API token of a user allowed sms.send).

The work is done by `meterhub.sms` and `meterhub.notices`; arrears come from the billing ledger's positions.
Viewing needs sms.view, sending sms.send, templates and notice settings sms.templates. A person limited to
areas reaches and sees only customers whose community lies in their areas.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Annotated, Any, Literal, NoReturn
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from billing.ledger import positions
from dashboards import i18n
from dashboards.export import table_response
from dashboards.security import Principal
from dashboards.web import (
    ActionError,
    FormData,
    language_of,
    note_object,
    redirect,
    render,
    require,
    settings_of,
    store_of,
)
from dashboards.web import (
    text as _t,
)
from meterhub import notices, sms
from meterhub.sms import ArrearsInfo, Condition, SmsError

router = APIRouter()

TAGS: list[Any] = ["sms"]
PAGE_SIZE = 50
Format = Annotated[Literal["html", "xlsx", "csv"], Query()]
HISTORY_HEADERS = (
    "sms.col.id",
    "sms.col.created_at",
    "sms.col.recipient",
    "sms.col.account_no",
    "sms.col.phone",
    "sms.col.body",
    "sms.col.state",
    "sms.col.attempts",
    "sms.col.error",
    "sms.col.kind",
    "sms.col.sent_at",
    "sms.col.finished_at",
    "sms.col.created_by",
)
TEMPLATE_HEADERS = ("sms.col.code", "sms.col.name", "sms.col.body", "sms.col.active", "sms.col.updated_at")


def ledger_arrears(conn: psycopg.Connection[Any], account_ids: Sequence[int], as_of: dt.date) -> dict[int, ArrearsInfo]:
    """Arrears from the billing ledger (late fees accrued but not yet posted included)."""
    out: dict[int, ArrearsInfo] = {}
    for account_id, held in positions(conn, account_ids, as_of).items():
        overdue = [b for b in held.bills if b.due > 0 and b.due_date < as_of]
        oldest = overdue[0] if overdue else None
        out[account_id] = ArrearsInfo(
            held.arrears, oldest.bill_id if oldest else None, oldest.due_date if oldest else None
        )
    return out


def _zone(request: Request) -> ZoneInfo:
    return ZoneInfo(settings_of(request).timezone)


def message_of(request: Request, exc: SmsError) -> str:
    """A refusal in the request's language with what it names; the service's own words when no translation
    exists."""
    key = f"sms.error.{exc.code}"
    if key not in i18n.catalogue():
        return exc.message
    text = _t(request, key)
    if exc.detail:
        text += ("：" if language_of(request) == "zh" else ": ") + exc.detail
    return text


def refuse(request: Request, exc: SmsError) -> NoReturn:
    raise ActionError(
        exc.code, message_of(request, exc) if not request.url.path.startswith("/api/") else exc.message, exc.status
    ) from exc


def _page_url(base: str, params: dict[str, Any], page: int) -> str:
    query = {k: v for k, v in {**params, "page": page}.items() if v not in ("", None)}
    return f"{base}?{urlencode(query)}"


def _history_rows(request: Request, rows: list[sms.MessageRow]) -> list[list[Any]]:
    return [
        [
            r.id,
            r.created_at,
            r.recipient_name,
            r.account_no or "",
            r.phone,
            r.body,
            _t(request, f"sms.state.{r.state}"),
            r.attempts,
            r.error,
            _t(request, f"sms.kind.{r.notice_kind or 'manual'}"),
            r.sent_at,
            r.finished_at,
            r.created_by,
        ]
        for r in rows
    ]


def _message_json(r: sms.MessageRow) -> dict[str, Any]:
    return {
        "id": r.id,
        "created_at": r.created_at.isoformat(),
        "recipient_kind": r.recipient_kind,
        "recipient_name": r.recipient_name,
        "account_no": r.account_no,
        "phone": r.phone,
        "body": r.body,
        "state": r.state,
        "attempts": r.attempts,
        "error": r.error,
        "notice_kind": r.notice_kind,
        "batch_id": r.batch_id,
        "gateway": r.gateway,
        "provider_message_id": r.provider_message_id,
        "sent_at": r.sent_at.isoformat() if r.sent_at else None,
        "finished_at": r.finished_at.isoformat() if r.finished_at else None,
        "created_by": r.created_by,
    }


def _template_json(t: sms.Template) -> dict[str, Any]:
    return {
        "code": t.code,
        "name": t.name,
        "body": t.body,
        "active": t.active,
        "placeholders": t.placeholders,
        "updated_at": t.updated_at.isoformat(),
    }


def _rule_json(r: notices.NoticeRule) -> dict[str, Any]:
    return {
        "kind": r.kind,
        "enabled": r.enabled,
        "template": r.template_code,
        "params": r.params,
        "updated_at": r.updated_at.isoformat(),
    }


# -- history --------------------------------------------------------------------------------------------
@router.get("/sms", include_in_schema=False)
def sms_page(
    request: Request,
    user: Annotated[Principal, Depends(require("sms.view"))],
    q: str = "",
    state: str = "",
    kind: str = "",
    batch: int | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    format: Format = "html",
    done: str = "",
) -> Response:
    store = store_of(request)
    with store.connection() as conn:
        try:
            if format != "html":
                rows = sms.history(
                    conn, q=q, state=state, notice_kind=kind, batch_id=batch, areas=user.area_ids, everything=True
                ).rows
                headers = [_t(request, h) for h in HISTORY_HEADERS]
                return table_response(
                    "sms", headers, _history_rows(request, rows), format, timezone=settings_of(request).timezone
                )
            result = sms.history(
                conn, q=q, state=state, notice_kind=kind, batch_id=batch, page=page, size=PAGE_SIZE, areas=user.area_ids
            )
        except SmsError as exc:
            refuse(request, exc)
        counts = sms.counts(conn)
        outbox = sms.outbox_count(conn)
    params = {"q": q, "state": state, "kind": kind, "batch": batch}
    message_ok = _t(request, f"sms.done.{done}", n=request.query_params.get("n", "")) if done in ("sent",) else None
    return render(
        request,
        "sms/index.html",
        result=result,
        counts=counts,
        outbox=outbox,
        q=q,
        state=state,
        kind=kind,
        batch=batch,
        states=sms.STATES,
        kinds=("manual", *notices.KINDS),
        message_ok=message_ok,
        prev_url=_page_url("/sms", params, page - 1) if page > 1 else None,
        next_url=_page_url("/sms", params, page + 1) if result.has_more else None,
        export_url=_page_url("/sms", {**params, "format": "xlsx"}, 1),
    )


@router.get("/sms/messages/{message_id}", include_in_schema=False)
def message_page(
    request: Request, message_id: int, user: Annotated[Principal, Depends(require("sms.view"))]
) -> Response:
    with store_of(request).connection() as conn:
        try:
            row, events = sms.message_detail(conn, message_id, user.area_ids)
        except SmsError as exc:
            refuse(request, exc)
    return render(request, "sms/message.html", m=row, events=events)


@router.get("/api/v1/sms/messages", tags=TAGS)
def api_messages(
    request: Request,
    user: Annotated[Principal, Depends(require("sms.view"))],
    q: str = "",
    state: str = "",
    kind: str = "",
    batch: int | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE,
    format: Annotated[Literal["json", "xlsx", "csv"], Query()] = "json",
) -> Any:
    """Messages, newest first: search by phone, name, account or text; filter by state (queued, sent,
    delivered, failed), notice kind (or manual) and batch. `format=xlsx|csv` exports every match."""
    with store_of(request).connection() as conn:
        try:
            if format != "json":
                rows = sms.history(
                    conn, q=q, state=state, notice_kind=kind, batch_id=batch, areas=user.area_ids, everything=True
                ).rows
                return table_response(
                    "sms",
                    [_t(request, h) for h in HISTORY_HEADERS],
                    _history_rows(request, rows),
                    format,
                    timezone=settings_of(request).timezone,
                )
            result = sms.history(
                conn, q=q, state=state, notice_kind=kind, batch_id=batch, page=page, size=size, areas=user.area_ids
            )
        except SmsError as exc:
            refuse(request, exc)
    return {
        "page": result.page,
        "size": result.size,
        "has_more": result.has_more,
        "messages": [_message_json(r) for r in result.rows],
    }


@router.get("/api/v1/sms/messages/{message_id}", tags=TAGS)
def api_message(request: Request, message_id: int, user: Annotated[Principal, Depends(require("sms.view"))]) -> Any:
    """One message with every state it went through."""
    with store_of(request).connection() as conn:
        try:
            row, events = sms.message_detail(conn, message_id, user.area_ids)
        except SmsError as exc:
            refuse(request, exc)
    return {
        **_message_json(row),
        "events": [
            {"at": e.at.isoformat(), "state": e.state, "attempts": e.attempts, "error": e.error, "actor": e.actor}
            for e in events
        ],
    }


# -- sending --------------------------------------------------------------------------------------------
def _send_choices(request: Request) -> dict[str, Any]:
    with store_of(request).connection() as conn:
        templates = sms.list_templates(conn, active_only=True)
        communities = conn.execute("SELECT code, name FROM community ORDER BY code").fetchall()
        areas = conn.execute("SELECT code, name FROM area ORDER BY code").fetchall()
        books = conn.execute("SELECT code, name FROM reading_book WHERE active ORDER BY code").fetchall()
    return {
        "templates": templates,
        "conditions": sms.CONDITIONS,
        "communities": communities,
        "areas": areas,
        "books": books,
        "placeholders": sms.PLACEHOLDERS,
    }


@router.get("/sms/send", include_in_schema=False)
def send_page(
    request: Request,
    user: Annotated[Principal, Depends(require("sms.send"))],
    kind: str = "community",
    value: str = "",
    template: str = "",
    body: str = "",
    preview: str = "",
) -> Response:
    form = {"kind": kind, "value": value, "template": template, "body": body}
    shown = None
    error = None
    status = 200
    if preview:
        with store_of(request).connection() as conn:
            try:
                shown = sms.preview(
                    conn,
                    Condition(kind, value),
                    template_code=template,
                    body=body,
                    areas=user.area_ids,
                    arrears=ledger_arrears,
                    zone=_zone(request),
                )
            except SmsError as exc:
                error, status = message_of(request, exc), exc.status
    return render(
        request, "sms/send.html", status, form=form, shown=shown, message_error=error, **_send_choices(request)
    )


@router.post("/sms/send", include_in_schema=False)
def send_submit(request: Request, form: FormData, user: Annotated[Principal, Depends(require("sms.send"))]) -> Response:
    condition = Condition(form.get("kind", ""), form.get("value", ""))
    try:
        expected = int(form.get("expected_count", "").strip() or "-1")
    except ValueError:
        expected = -1
    try:
        if expected < 0:
            raise SmsError("no_preview", "preview the recipients first", field="value")
        with store_of(request).transaction(actor=user.username) as conn:
            result = sms.send(
                conn,
                condition,
                template_code=form.get("template", ""),
                body=form.get("body", ""),
                areas=user.area_ids,
                arrears=ledger_arrears,
                zone=_zone(request),
                expected_count=expected,
            )
    except SmsError as exc:
        return render(
            request,
            "sms/send.html",
            exc.status,
            form=form,
            shown=None,
            message_error=message_of(request, exc),
            **_send_choices(request),
        )
    note_object(request, "sms_batch", result.batch_id)
    return redirect(f"/sms?{urlencode({'batch': result.batch_id, 'done': 'sent', 'n': result.queued})}")


class SendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(description="accounts, community, area, arrears, book, staff, role or phones")
    value: str = Field(default="", description="account numbers, a code, a minimum arrears amount, usernames, phones")
    template: str = Field(default="", description="a template code; or give body")
    body: str = Field(default="", description="the text with placeholders, when no template is named")
    expected_count: int | None = Field(default=None, description="the previewed count; refused when it changed")


@router.post("/api/v1/sms/preview", tags=TAGS)
def api_preview(request: Request, data: SendIn, user: Annotated[Principal, Depends(require("sms.send"))]) -> Any:
    """Who a send would reach: the count, how many lack a valid phone, the first recipients and the first text.
    Changes nothing."""
    with store_of(request).connection() as conn:
        try:
            shown = sms.preview(
                conn,
                Condition(data.kind, data.value),
                template_code=data.template,
                body=data.body,
                areas=user.area_ids,
                arrears=ledger_arrears,
                zone=_zone(request),
            )
        except SmsError as exc:
            refuse(request, exc)
    return {
        "count": shown.count,
        "without_phone": shown.without_phone,
        "sample_text": shown.sample_text,
        "sample": [
            {"kind": r.kind, "name": r.name, "phone": r.phone, "account_no": r.account_no or None} for r in shown.sample
        ],
    }


@router.post("/api/v1/sms/send", tags=TAGS, status_code=201)
def api_send(request: Request, data: SendIn, user: Annotated[Principal, Depends(require("sms.send"))]) -> Any:
    """Queue a message per recipient of the condition (one batch); recipients without a valid phone get a
    failed message (no_phone). The sender hands queued messages to the gateway."""
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            result = sms.send(
                conn,
                Condition(data.kind, data.value),
                template_code=data.template,
                body=data.body,
                areas=user.area_ids,
                arrears=ledger_arrears,
                zone=_zone(request),
                expected_count=data.expected_count,
            )
    except SmsError as exc:
        refuse(request, exc)
    note_object(request, "sms_batch", result.batch_id)
    return {"batch_id": result.batch_id, "queued": result.queued, "without_phone": result.without_phone}


@router.post("/api/v1/sms/delivery-reports", tags=TAGS)
def api_delivery_reports(
    request: Request,
    reports: list[dict[str, Any]] | dict[str, Any],
    user: Annotated[Principal, Depends(require("sms.send"))],
) -> Any:
    """Delivery reports from the SMS provider (one object or a list), read with the `[sms.http]` report
    field names: the message becomes delivered, or failed with the provider's status as the reason."""
    settings = settings_of(request).sms.http
    results = []
    with store_of(request).transaction(actor=user.username) as conn:
        for report in reports if isinstance(reports, list) else [reports]:
            message_id, outcome = sms.apply_report(conn, settings, report)
            results.append({"message_id": message_id, "outcome": outcome})
    note_object(request, "sms_report", len(results))
    return {"reports": results}


# -- templates ------------------------------------------------------------------------------------------
@router.get("/sms/templates", include_in_schema=False)
def templates_page(
    request: Request, user: Annotated[Principal, Depends(require("sms.view"))], format: Format = "html", done: str = ""
) -> Response:
    with store_of(request).connection() as conn:
        templates = sms.list_templates(conn)
    if format != "html":
        rows = [[t.code, t.name, t.body, t.active, t.updated_at] for t in templates]
        return table_response(
            "sms_templates",
            [_t(request, h) for h in TEMPLATE_HEADERS],
            rows,
            format,
            timezone=settings_of(request).timezone,
        )
    message_ok = _t(request, "sms.done.saved") if done == "saved" else None
    return render(request, "sms/templates.html", templates=templates, message_ok=message_ok)


def _template_form(
    request: Request, form: dict[str, Any], status: int = 200, error: str | None = None, new: bool = True
) -> Response:
    return render(
        request,
        "sms/template_form.html",
        status,
        form=form,
        new=new,
        placeholders=sms.PLACEHOLDERS,
        message_error=error,
    )


@router.get("/sms/templates/new", include_in_schema=False)
def template_new(request: Request, user: Annotated[Principal, Depends(require("sms.templates"))]) -> Response:
    return _template_form(request, {"code": "", "name": "", "body": "", "active": True})


@router.get("/sms/templates/{code}", include_in_schema=False)
def template_edit(
    request: Request, code: str, user: Annotated[Principal, Depends(require("sms.templates"))]
) -> Response:
    with store_of(request).connection() as conn:
        try:
            template = sms.get_template(conn, code)
        except SmsError as exc:
            refuse(request, exc)
    form = {"code": template.code, "name": template.name, "body": template.body, "active": template.active}
    return _template_form(request, form, new=False)


@router.post("/sms/templates", include_in_schema=False)
def template_save(
    request: Request, form: FormData, user: Annotated[Principal, Depends(require("sms.templates"))]
) -> Response:
    active = form.get("active") in ("1", "on", "true")
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            template, _new = sms.save_template(
                conn, form.get("code", ""), form.get("name", ""), form.get("body", ""), active
            )
    except SmsError as exc:
        values = {**form, "active": active}
        return _template_form(request, values, exc.status, message_of(request, exc), new=form.get("new") == "1")
    note_object(request, "sms_template", template.code)
    return redirect("/sms/templates?done=saved")


@router.get("/api/v1/sms/templates", tags=TAGS)
def api_templates(
    request: Request,
    user: Annotated[Principal, Depends(require("sms.view"))],
    format: Annotated[Literal["json", "xlsx", "csv"], Query()] = "json",
) -> Any:
    """The templates with the placeholders they use (`format=xlsx|csv` exports them)."""
    with store_of(request).connection() as conn:
        templates = sms.list_templates(conn)
    if format != "json":
        rows = [[t.code, t.name, t.body, t.active, t.updated_at] for t in templates]
        return table_response(
            "sms_templates",
            [_t(request, h) for h in TEMPLATE_HEADERS],
            rows,
            format,
            timezone=settings_of(request).timezone,
        )
    return {"placeholders": list(sms.PLACEHOLDERS), "templates": [_template_json(t) for t in templates]}


class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    body: str = Field(description="the text; placeholders in braces, e.g. {customer_name}")
    active: bool = True


@router.put("/api/v1/sms/templates/{code}", tags=TAGS)
def api_template_put(
    request: Request, code: str, data: TemplateIn, user: Annotated[Principal, Depends(require("sms.templates"))]
) -> Any:
    """Create or change a template; an unknown placeholder is refused (422)."""
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            template, new = sms.save_template(conn, code, data.name, data.body, data.active)
    except SmsError as exc:
        refuse(request, exc)
    note_object(request, "sms_template", template.code)
    return {**_template_json(template), "created": new}


# -- automatic notices ----------------------------------------------------------------------------------
@router.get("/sms/notices", include_in_schema=False)
def notices_page(
    request: Request, user: Annotated[Principal, Depends(require("sms.view"))], done: str = "", scanned: str = ""
) -> Response:
    with store_of(request).connection() as conn:
        rules = notices.rules(conn)
        templates = sms.list_templates(conn)
    message_ok = None
    if done in ("saved", "defaults"):
        message_ok = _t(request, f"sms.done.{done}")
    elif done == "scanned":
        message_ok = _t(request, "sms.done.scanned", n=scanned)
    return render(
        request, "sms/notices.html", rules=rules, kinds=notices.KINDS, templates=templates, message_ok=message_ok
    )


def _save_rule(
    request: Request, user: Principal, kind: str, enabled: bool, template: str, params: dict[str, Any]
) -> notices.NoticeRule:
    with store_of(request).transaction(actor=user.username) as conn:
        return notices.save_rule(conn, kind, enabled=enabled, template_code=template, params=params)


@router.post("/sms/notices/defaults", include_in_schema=False)
def notices_defaults(request: Request, user: Annotated[Principal, Depends(require("sms.templates"))]) -> Response:
    with store_of(request).transaction(actor=user.username) as conn:
        sms.restore_defaults(conn)
    note_object(request, "sms_notice_rule", "defaults")
    return redirect("/sms/notices?done=defaults")


@router.post("/sms/notices/scan", include_in_schema=False)
def notices_scan(request: Request, user: Annotated[Principal, Depends(require("sms.send"))]) -> Response:
    added = notices.scan(store_of(request), arrears=ledger_arrears)
    note_object(request, "sms_notice_scan", sum(n for n in added.values() if n > 0))
    return redirect(f"/sms/notices?done=scanned&scanned={sum(n for n in added.values() if n > 0)}")


@router.post("/sms/notices/{kind}", include_in_schema=False)
def notice_save(
    request: Request, kind: str, form: FormData, user: Annotated[Principal, Depends(require("sms.templates"))]
) -> Response:
    params = {k: v for k, v in form.items() if k in ("lookback_days", "min_amount", "min_days_overdue", "repeat_days")}
    try:
        _save_rule(request, user, kind, form.get("enabled") in ("1", "on", "true"), form.get("template", ""), params)
    except SmsError as exc:
        refuse(request, exc)
    note_object(request, "sms_notice_rule", kind)
    return redirect("/sms/notices?done=saved")


@router.get("/api/v1/sms/notices", tags=TAGS)
def api_notices(request: Request, user: Annotated[Principal, Depends(require("sms.view"))]) -> Any:
    """The automatic notices: on or off, their template and thresholds."""
    with store_of(request).connection() as conn:
        rules = notices.rules(conn)
    return {"notices": [_rule_json(r) for r in rules.values()]}


class NoticeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool
    template: str
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="lookback_days; for arrears min_amount, min_days_overdue, repeat_days",
    )


@router.put("/api/v1/sms/notices/{kind}", tags=TAGS)
def api_notice_put(
    request: Request, kind: str, data: NoticeIn, user: Annotated[Principal, Depends(require("sms.templates"))]
) -> Any:
    """Switch an automatic notice on or off, choose its template, set its thresholds."""
    try:
        rule = _save_rule(request, user, kind, data.enabled, data.template, data.params)
    except SmsError as exc:
        refuse(request, exc)
    note_object(request, "sms_notice_rule", kind)
    return _rule_json(rule)


@router.post("/api/v1/sms/notices/scan", tags=TAGS)
def api_notices_scan(request: Request, user: Annotated[Principal, Depends(require("sms.send"))]) -> Any:
    """Run the automatic notice scan now; messages queued per notice kind (-1: its template failed)."""
    added = notices.scan(store_of(request), arrears=ledger_arrears)
    note_object(request, "sms_notice_scan", sum(n for n in added.values() if n > 0))
    return {"added": added}
