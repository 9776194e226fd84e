"""Repairs (维修管理): the list of repair requests, registering one from a customer's call or from a meter
alarm, the repair page (dispatch to an engineer, start, completion with the materials drawn from the
warehouse, cancellation, scanned documents and photos), repair kinds with their commission, and the
commission report by engineer and month. Pages and `/api/v1/repairs/...`.

The work is done by `meterhub.repairs`. Viewing needs repairs.view; registering, starting, completing,
cancelling and attaching repairs.edit; dispatching and the kinds' commissions repairs.dispatch.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from dashboards import i18n
from dashboards.export import table_response
from dashboards.routes.warehouse import lines_of_form, page_json, plain, qty
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
from dashboards.web import text as _t
from meterhub import repairs, warehouse
from meterhub.repairs import CallInput, Completion, RepairError
from meterhub.warehouse import LineInput

router = APIRouter()

TAGS: list[Any] = ["repairs"]
PAGE_SIZE = 50
MATERIAL_LINES = 5
MAX_LINES = warehouse.MAX_LINES
Format = Literal["html", "xlsx", "csv"]
VIEW = require("repairs.view")
EDIT = require("repairs.edit")
DISPATCH = require("repairs.dispatch")
STATUS_BADGE = {"registered": "info", "dispatched": "warn", "in_progress": "warn", "completed": "ok", "cancelled": ""}


def _tz(request: Request) -> str:
    return settings_of(request).timezone


def repair_url(repair_no: str, **query: str) -> str:
    url = f"/repairs/{quote(repair_no, safe='')}"
    return f"{url}?{urlencode(query)}" if query else url


def message_of(request: Request, exc: RepairError) -> str:
    code = exc.code
    params = {k: str(v) for k, v in exc.params.items()}
    if code.startswith("stock_"):
        key = f"warehouse.error.{code[6:]}"
        from dashboards.routes.warehouse import field_label as stock_field

        label = stock_field(request, exc.field) if exc.field else ""
    else:
        key = f"repairs.error.{code}"
        fkey = f"repairs.field.{exc.field}"
        label = _t(request, fkey) if fkey in i18n.catalogue() else exc.field
    if "status_now" in params:
        params["status_now"] = _t(request, f"repairs.status.{params['status_now']}")
    text = _t(request, key, **params) if key in i18n.catalogue() else exc.message
    return f"{label}: {text}" if label else text


def refused(exc: RepairError) -> ActionError:
    return ActionError(exc.code, f"{exc.field}: {exc.message}" if exc.field else exc.message, exc.status)


def kind_name(request: Request, row: dict[str, Any]) -> str:
    return str(row["kind_en"] if language_of(request) == "en" else row["kind_zh"])


# -- the list ---------------------------------------------------------------------------------------------
LIST_HEADERS = [
    "repairs.field.repair_no",
    "repairs.field.source",
    "repairs.field.kind",
    "common.status",
    "repairs.field.account_no",
    "repairs.field.meter_no",
    "repairs.field.caller",
    "repairs.field.phone",
    "repairs.field.address",
    "repairs.field.description",
    "repairs.field.engineer",
    "repairs.field.commission",
    "repairs.field.registered_at",
    "repairs.field.completed_at",
    "repairs.field.stock_doc",
]


@router.get("/repairs", include_in_schema=False)
def list_page(
    request: Request,
    user: Annotated[Principal, Depends(VIEW)],
    q: Annotated[str, Query(max_length=100)] = "",
    status: Literal["", "registered", "dispatched", "in_progress", "completed", "cancelled"] = "",
    engineer: Annotated[str, Query(max_length=64)] = "",
    source: Literal["", "call", "alarm"] = "",
    page: Annotated[int, Query(ge=1)] = 1,
    format: Format = "html",
) -> Response:
    with store_of(request).connection() as conn:
        found = repairs.search(
            conn,
            q,
            status=status,
            engineer=engineer,
            source=source,
            page=page,
            size=None if format != "html" else PAGE_SIZE,
        )
        engineers = repairs.engineers(conn)
    if format != "html":
        rows = [
            [
                r["repair_no"],
                _t(request, f"repairs.source.{r['source']}"),
                kind_name(request, r),
                _t(request, f"repairs.status.{r['status']}"),
                r["account_no"],
                r["meter_no"],
                r["caller"],
                r["phone"],
                r["address"],
                r["description"],
                r["engineer_name"],
                r["commission"],
                r["registered_at"],
                r["completed_at"],
                r["stock_doc"],
            ]
            for r in found.rows
        ]
        return table_response("repairs", [_t(request, h) for h in LIST_HEADERS], rows, format, timezone=_tz(request))
    query: dict[str, Any] = {"q": q, "status": status, "engineer": engineer, "source": source}

    def url(n: int) -> str:
        return f"/repairs?{urlencode({**query, 'page': n})}"

    return render(
        request, "repairs/list.html", found=found, engineers=engineers, statuses=repairs.STATUSES,
        badge=STATUS_BADGE, kind_name=lambda r: kind_name(request, r), repair_url=repair_url,
        prev_url=url(page - 1) if page > 1 else None, next_url=url(page + 1) if found.has_more else None,
        export_url=f"/repairs?{urlencode({**query, 'format': 'xlsx'})}", **query,
    )  # fmt: skip


# -- registering ------------------------------------------------------------------------------------------
def _new_form(request: Request, form: dict[str, str], status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        kinds = repairs.kinds(conn)
    return render(
        request, "repairs/new.html", status, form=form, kinds=kinds, english=language_of(request) == "en", **extra
    )


@router.get("/repairs/new", include_in_schema=False)
def new_page(request: Request, user: Annotated[Principal, Depends(EDIT)], account_no: str = "") -> Response:
    return _new_form(request, {"account_no": account_no, "kind": "other"})


@router.post("/repairs/new", include_in_schema=False)
def new_submit(request: Request, user: Annotated[Principal, Depends(EDIT)], form: FormData) -> Response:
    note_object(request, "repair", None)
    try:
        repair_no = repairs.register_call(store_of(request), user.username, _call(form))
    except RepairError as exc:
        return _new_form(request, form, exc.status, message_error=message_of(request, exc), error_field=exc.field)
    note_object(request, "repair", repair_no)
    return redirect(repair_url(repair_no, done="register"))


def _call(form: dict[str, str]) -> CallInput:
    return CallInput(
        description=form.get("description", ""), kind=form.get("kind", "other"), account_no=form.get("account_no", ""),
        meter_no=form.get("meter_no", ""), caller=form.get("caller", ""), phone=form.get("phone", ""),
        address=form.get("address", ""),
    )  # fmt: skip


@router.get("/repairs/alarms", include_in_schema=False)
def alarms_page(
    request: Request,
    user: Annotated[Principal, Depends(VIEW)],
    q: Annotated[str, Query(max_length=100)] = "",
    page: Annotated[int, Query(ge=1)] = 1,
    format: Format = "html",
) -> Response:
    with store_of(request).connection() as conn:
        found = repairs.open_alarms(conn, q, page=page, size=None if format != "html" else PAGE_SIZE)
    if format != "html":
        return table_response(
            "alarms",
            [_t(request, k) for k in ("common.time", "repairs.field.alarm", "repairs.field.meter_no",
                                      "repairs.field.account_no", "repairs.field.caller", "repairs.field.address")],
            [[r["ts"], r["kind"], r["meter_no"], r["account_no"], r["customer"], r["address"]] for r in found.rows],
            format, timezone=_tz(request),
        )  # fmt: skip

    def url(n: int) -> str:
        return f"/repairs/alarms?{urlencode({'q': q, 'page': n})}"

    return render(
        request,
        "repairs/alarms.html",
        found=found,
        q=q,
        prev_url=url(page - 1) if page > 1 else None,
        next_url=url(page + 1) if found.has_more else None,
        export_url=f"/repairs/alarms?{urlencode({'q': q, 'format': 'xlsx'})}",
    )


@router.post("/repairs/alarms/{event_id}", include_in_schema=False)
def alarm_submit(
    request: Request, event_id: int, user: Annotated[Principal, Depends(EDIT)], form: FormData
) -> Response:
    note_object(request, "meter_event", event_id)
    try:
        repair_no = repairs.register_alarm(
            store_of(request), user.username, event_id, description=form.get("description", "")
        )
    except RepairError as exc:
        raise ActionError(exc.code, message_of(request, exc), exc.status) from exc
    note_object(request, "repair", repair_no)
    return redirect(repair_url(repair_no, done="register"))


# -- commissions and kinds ----------------------------------------------------------------------------------
@router.get("/repairs/commissions", include_in_schema=False)
def commissions_page(
    request: Request,
    user: Annotated[Principal, Depends(VIEW)],
    month_from: Annotated[str, Query(max_length=7)] = "",
    month_to: Annotated[str, Query(max_length=7)] = "",
    engineer: Annotated[str, Query(max_length=64)] = "",
    format: Format = "html",
) -> Response:
    error = None
    rows: list[dict[str, Any]] = []
    with store_of(request).connection() as conn:
        try:
            rows = repairs.commissions(conn, _tz(request), month_from=month_from, month_to=month_to, engineer=engineer)
        except RepairError as exc:
            if format != "html":
                raise refused(exc) from exc
            error = message_of(request, exc)
        engineers = repairs.engineers(conn)
    if format != "html":
        return table_response(
            "commissions",
            [_t(request, k) for k in ("repairs.field.month", "repairs.field.engineer", "repairs.field.engineer_name",
                                      "repairs.field.repairs", "repairs.field.commission")],
            [[r["month"], r["engineer"], r["engineer_name"], r["repairs"], r["commission"]] for r in rows],
            format, timezone=_tz(request),
        )  # fmt: skip
    query = {"month_from": month_from, "month_to": month_to, "engineer": engineer}
    total = sum((r["commission"] for r in rows), Decimal("0.00"))
    return render(
        request,
        "repairs/commissions.html",
        400 if error else 200,
        rows=rows,
        total=total,
        engineers=engineers,
        message_error=error,
        export_url=f"/repairs/commissions?{urlencode({**query, 'format': 'xlsx'})}",
        **query,
    )


def _kinds_page(request: Request, status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        kinds = repairs.kinds(conn)
    return render(request, "repairs/kinds.html", status, kinds=kinds, form=extra.pop("form", {}), **extra)


@router.get("/repairs/kinds", include_in_schema=False)
def kinds_page(request: Request, user: Annotated[Principal, Depends(VIEW)], done: str = "") -> Response:
    return _kinds_page(request, message_ok=_t(request, "common.saved") if done else None)


@router.post("/repairs/kinds", include_in_schema=False)
def kinds_submit(request: Request, user: Annotated[Principal, Depends(DISPATCH)], form: FormData) -> Response:
    note_object(request, "repair_kind", form.get("code") or None)
    try:
        repairs.save_kind(
            store_of(request),
            user.username,
            code=form.get("code", ""),
            name_zh=form.get("name_zh", ""),
            name_en=form.get("name_en", ""),
            commission=form.get("commission", ""),
            active=form.get("inactive") not in ("1", "on", "true"),
        )
    except RepairError as exc:
        return _kinds_page(request, exc.status, form=form, message_error=message_of(request, exc))
    return redirect("/repairs/kinds?done=1")


# -- one repair -------------------------------------------------------------------------------------------
DONE = ("register", "dispatch", "start", "complete", "cancel", "attach")


def _repair_page(request: Request, repair_no: str, status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        repair = repairs.get(conn, repair_no)
        if repair is None:
            raise ActionError("not_found", _t(request, "repairs.error.no_repair"), 404)
        engineers = repairs.engineers(conn)
        kinds = repairs.kinds(conn)
        options = warehouse.choices(conn)
    return render(
        request,
        "repairs/detail.html",
        status,
        qty=qty,
        r=repair,
        engineers=engineers,
        kinds=kinds,
        options=options,
        badge=STATUS_BADGE,
        kind_name=kind_name(request, repair),
        english=language_of(request) == "en",
        line_count=MATERIAL_LINES,
        form=extra.pop("form", {}),
        failed=extra.pop("failed", ""),
        max_mb=repairs.MAX_ATTACHMENT // (1024 * 1024),
        **extra,
    )


@router.get("/repairs/{repair_no}", include_in_schema=False)
def repair_page(
    request: Request, repair_no: str, user: Annotated[Principal, Depends(VIEW)], done: str = ""
) -> Response:
    message_ok = _t(request, f"repairs.done.{done}") if done in DONE else None
    return _repair_page(request, repair_no, message_ok=message_ok)


def _act(request: Request, repair_no: str, action: str, form: dict[str, str], call: Any) -> Response:
    note_object(request, "repair", repair_no)
    try:
        call()
    except RepairError as exc:
        if exc.code == "not_found" and not exc.field:
            raise ActionError("not_found", _t(request, "repairs.error.no_repair"), 404) from exc
        return _repair_page(
            request, repair_no, exc.status, message_error=message_of(request, exc), form=form, failed=action
        )
    return redirect(repair_url(repair_no, done=action))


@router.post("/repairs/{repair_no}/dispatch", include_in_schema=False)
def dispatch_submit(
    request: Request, repair_no: str, user: Annotated[Principal, Depends(DISPATCH)], form: FormData
) -> Response:
    commission = form.get("commission", "").strip() or None
    return _act(
        request,
        repair_no,
        "dispatch",
        form,
        lambda: repairs.dispatch(
            store_of(request),
            user.username,
            repair_no,
            form.get("engineer", ""),
            commission=commission,
            kind=form.get("kind", ""),
            note=form.get("note", ""),
        ),
    )


@router.post("/repairs/{repair_no}/start", include_in_schema=False)
def start_submit(
    request: Request, repair_no: str, user: Annotated[Principal, Depends(EDIT)], form: FormData
) -> Response:
    return _act(
        request,
        repair_no,
        "start",
        form,
        lambda: repairs.start(store_of(request), user.username, repair_no, form.get("note", "")),
    )


@router.post("/repairs/{repair_no}/complete", include_in_schema=False)
def complete_submit(
    request: Request, repair_no: str, user: Annotated[Principal, Depends(EDIT)], form: FormData
) -> Response:
    done = Completion(result=form.get("result", ""), warehouse=form.get("warehouse", ""), materials=lines_of_form(form))
    return _act(
        request,
        repair_no,
        "complete",
        form,
        lambda: repairs.complete(store_of(request), user.username, repair_no, done),
    )


@router.post("/repairs/{repair_no}/cancel", include_in_schema=False)
def cancel_submit(
    request: Request, repair_no: str, user: Annotated[Principal, Depends(EDIT)], form: FormData
) -> Response:
    return _act(
        request,
        repair_no,
        "cancel",
        form,
        lambda: repairs.cancel(store_of(request), user.username, repair_no, form.get("reason", "")),
    )


async def _read_upload(file: UploadFile) -> bytes:
    data = await file.read(repairs.MAX_ATTACHMENT + 1)
    return bytes(data)


@router.post("/repairs/{repair_no}/attachments", include_in_schema=False)
async def attach_submit(
    request: Request, repair_no: str, user: Annotated[Principal, Depends(EDIT)], file: Annotated[UploadFile, File()]
) -> Response:
    data = await _read_upload(file)
    return await run_in_threadpool(
        _act,
        request,
        repair_no,
        "attach",
        {},
        lambda: repairs.attach(
            store_of(request), user.username, repair_no, file.filename or "file", data, file.content_type or ""
        ),
    )


def _file_response(request: Request, repair_no: str, attachment_id: int, download: bool) -> Response:
    with store_of(request).connection() as conn:
        found = repairs.attachment(conn, repair_no, attachment_id)
    if found is None:
        raise ActionError("not_found", "no such attachment", 404)
    filename, content_type, data = found
    disposition = "attachment" if download else "inline"
    return Response(data, media_type=content_type, headers={
        "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(filename)}",
        "Content-Security-Policy": "default-src 'none'; img-src 'self'; sandbox",
        "Cache-Control": "private, max-age=3600",
    })  # fmt: skip


@router.get("/repairs/{repair_no}/attachments/{attachment_id}", include_in_schema=False)
def attachment_file(
    request: Request,
    repair_no: str,
    attachment_id: int,
    user: Annotated[Principal, Depends(VIEW)],
    download: bool = False,
) -> Response:
    return _file_response(request, repair_no, attachment_id, download)


# -- API --------------------------------------------------------------------------------------------------
class CallIn(BaseModel):
    """A repair request from a customer's call: an account (or at least a phone number) and what is wrong."""

    model_config = ConfigDict(extra="forbid")
    description: str = Field(min_length=1, max_length=repairs.MAX_DESCRIPTION)
    kind: str = Field("other", description="Repair kind code")
    account_no: str = ""
    meter_no: str = ""
    caller: str = ""
    phone: str = ""
    address: str = ""


class AlarmIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: int = Field(description="The meter_event id of the alarm")
    description: str = ""
    kind: str = Field("", description="Default: from the alarm (leak → leak, valve_abnormal → valve, else meter)")


class DispatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engineer: str = Field(description="Username of a user who may carry out repairs")
    commission: Decimal | str | None = Field(None, description="Default: the repair kind's commission")
    kind: str = ""
    note: str = ""


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = ""


class MaterialIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: str
    quantity: Decimal | str = "1"
    serial_no: str = ""


class CompleteIn(BaseModel):
    """Completion; `materials` are drawn from `warehouse` by one stock-out document (all or nothing)."""

    model_config = ConfigDict(extra="forbid")
    result: str = Field(min_length=1, max_length=repairs.MAX_DESCRIPTION)
    warehouse: str = ""
    materials: list[MaterialIn] = Field(default_factory=list, max_length=MAX_LINES)


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=500)


class KindIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    name_zh: str
    name_en: str
    commission: Decimal | str
    active: bool = True


def _repair_json(request: Request, repair_no: str) -> dict[str, Any]:
    with store_of(request).connection() as conn:
        repair = repairs.get(conn, repair_no)
    if repair is None:
        raise ActionError("not_found", "no such repair", 404)
    for a in repair["attachments"]:
        a["url"] = f"/api/v1/repairs/{quote(repair_no, safe='')}/attachments/{a['id']}"
    out: dict[str, Any] = plain(repair)
    for a, src in zip(out["attachments"], repair["attachments"], strict=True):
        a["attachment_id"] = src["id"]
    return out


def _api_act(request: Request, repair_no: str, call: Any) -> dict[str, Any]:
    note_object(request, "repair", repair_no)
    try:
        call()
    except RepairError as exc:
        raise refused(exc) from exc
    return _repair_json(request, repair_no)


@router.get("/api/v1/repairs", tags=TAGS)
def api_list(
    request: Request,
    user: Annotated[Principal, Depends(VIEW)],
    q: str = "",
    status: Literal["", "registered", "dispatched", "in_progress", "completed", "cancelled"] = "",
    engineer: str = "",
    source: Literal["", "call", "alarm"] = "",
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE,
) -> dict[str, Any]:
    """Repairs, newest first; `q` searches number, account, meter, caller, phone, address, description."""
    with store_of(request).connection() as conn:
        return page_json(repairs.search(conn, q, status=status, engineer=engineer, source=source, page=page, size=size))


@router.post("/api/v1/repairs", tags=TAGS, status_code=201)
def api_register(request: Request, body: CallIn, user: Annotated[Principal, Depends(EDIT)]) -> Response:
    """Register a repair request from a customer's call."""
    note_object(request, "repair", None)
    try:
        repair_no = repairs.register_call(store_of(request), user.username, CallInput(**body.model_dump()))
    except RepairError as exc:
        raise refused(exc) from exc
    note_object(request, "repair", repair_no)
    return JSONResponse(
        _repair_json(request, repair_no),
        status_code=201,
        headers={"Location": f"/api/v1/repairs/{quote(repair_no, safe='')}"},
    )


@router.post("/api/v1/repairs/from-alarm", tags=TAGS, status_code=201)
def api_register_alarm(request: Request, body: AlarmIn, user: Annotated[Principal, Depends(EDIT)]) -> Response:
    """Register a repair request from a meter alarm (one per alarm)."""
    note_object(request, "meter_event", body.event_id)
    try:
        repair_no = repairs.register_alarm(
            store_of(request), user.username, body.event_id, description=body.description, kind=body.kind
        )
    except RepairError as exc:
        raise refused(exc) from exc
    note_object(request, "repair", repair_no)
    return JSONResponse(
        _repair_json(request, repair_no),
        status_code=201,
        headers={"Location": f"/api/v1/repairs/{quote(repair_no, safe='')}"},
    )


@router.get("/api/v1/repairs/alarms", tags=TAGS)
def api_alarms(
    request: Request,
    user: Annotated[Principal, Depends(VIEW)],
    q: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE,
) -> dict[str, Any]:
    """Open meter alarms with no repair yet (id = event_id for registering one)."""
    with store_of(request).connection() as conn:
        found = repairs.open_alarms(conn, q, page=page, size=size)
    out = page_json(found)
    for item, row in zip(out["items"], found.rows, strict=True):
        item["event_id"] = row["id"]
    return out


@router.get("/api/v1/repairs/commissions", tags=TAGS)
def api_commissions(
    request: Request,
    user: Annotated[Principal, Depends(VIEW)],
    month_from: str = "",
    month_to: str = "",
    engineer: str = "",
) -> dict[str, Any]:
    """Commission per engineer and month of completion (months YYYY-MM; amounts exact decimal strings)."""
    with store_of(request).connection() as conn:
        try:
            rows = repairs.commissions(conn, _tz(request), month_from=month_from, month_to=month_to, engineer=engineer)
        except RepairError as exc:
            raise refused(exc) from exc
    return {"items": plain(rows)}


@router.get("/api/v1/repairs/kinds", tags=TAGS)
def api_kinds(request: Request, user: Annotated[Principal, Depends(VIEW)]) -> dict[str, Any]:
    """Repair kinds and their commission."""
    with store_of(request).connection() as conn:
        return {"items": plain(repairs.kinds(conn))}


@router.post("/api/v1/repairs/kinds", tags=TAGS)
def api_save_kind(request: Request, body: KindIn, user: Annotated[Principal, Depends(DISPATCH)]) -> dict[str, Any]:
    """A new repair kind, or the one with this code changed (repairs dispatched already keep their amount)."""
    note_object(request, "repair_kind", body.code)
    try:
        code = repairs.save_kind(store_of(request), user.username, **body.model_dump())
    except RepairError as exc:
        raise refused(exc) from exc
    return {"code": code}


@router.get("/api/v1/repairs/{repair_no}", tags=TAGS)
def api_repair(request: Request, repair_no: str, user: Annotated[Principal, Depends(VIEW)]) -> dict[str, Any]:
    """A repair with its log, attachments and the materials drawn for it."""
    return _repair_json(request, repair_no)


@router.post("/api/v1/repairs/{repair_no}/dispatch", tags=TAGS)
def api_dispatch(
    request: Request, repair_no: str, body: DispatchIn, user: Annotated[Principal, Depends(DISPATCH)]
) -> dict[str, Any]:
    """派工 to an engineer, with the commission given or the kind's."""
    return _api_act(
        request,
        repair_no,
        lambda: repairs.dispatch(
            store_of(request),
            user.username,
            repair_no,
            body.engineer,
            commission=body.commission,
            kind=body.kind,
            note=body.note,
        ),
    )


@router.post("/api/v1/repairs/{repair_no}/start", tags=TAGS)
def api_start(
    request: Request, repair_no: str, body: NoteIn, user: Annotated[Principal, Depends(EDIT)]
) -> dict[str, Any]:
    """The engineer is on site: in progress."""
    return _api_act(request, repair_no, lambda: repairs.start(store_of(request), user.username, repair_no, body.note))


@router.post("/api/v1/repairs/{repair_no}/complete", tags=TAGS)
def api_complete(
    request: Request, repair_no: str, body: CompleteIn, user: Annotated[Principal, Depends(EDIT)]
) -> dict[str, Any]:
    """Complete, drawing the materials from the warehouse in the same transaction (refused whole if short)."""
    done = Completion(
        result=body.result,
        warehouse=body.warehouse,
        materials=[LineInput(m.item, m.quantity, m.serial_no) for m in body.materials],
    )
    return _api_act(request, repair_no, lambda: repairs.complete(store_of(request), user.username, repair_no, done))


@router.post("/api/v1/repairs/{repair_no}/cancel", tags=TAGS)
def api_cancel(
    request: Request, repair_no: str, body: CancelIn, user: Annotated[Principal, Depends(EDIT)]
) -> dict[str, Any]:
    """Cancel a repair that is not completed, with a reason."""
    return _api_act(
        request, repair_no, lambda: repairs.cancel(store_of(request), user.username, repair_no, body.reason)
    )


@router.post("/api/v1/repairs/{repair_no}/attachments", tags=TAGS, status_code=201)
async def api_attach(
    request: Request,
    repair_no: str,
    user: Annotated[Principal, Depends(EDIT)],
    file: Annotated[UploadFile, File(description="JPEG, PNG, GIF, WebP or PDF, at most 5 MiB")],
) -> dict[str, Any]:
    """Attach a scanned document or photo (multipart `file`); the type is told from the content."""
    data = await _read_upload(file)
    note_object(request, "repair", repair_no)
    try:
        attachment_id = await run_in_threadpool(
            repairs.attach,
            store_of(request),
            user.username,
            repair_no,
            file.filename or "file",
            data,
            file.content_type or "",
        )
    except RepairError as exc:
        raise refused(exc) from exc
    return {
        "attachment_id": attachment_id,
        "url": f"/api/v1/repairs/{quote(repair_no, safe='')}/attachments/{attachment_id}",
    }


@router.get("/api/v1/repairs/{repair_no}/attachments/{attachment_id}", tags=TAGS)
def api_attachment(
    request: Request, repair_no: str, attachment_id: int, user: Annotated[Principal, Depends(VIEW)]
) -> Response:
    """The attachment's bytes with its content type."""
    return _file_response(request, repair_no, attachment_id, download=True)
