"""Valve wells and regulator boxes (阀井调压箱): the searchable list, a facility's page with its links, the accounts
a box feeds and its maintenance history, the maintenance records, the overdue list and a box's supply balance
(供销差) per day and month. Pages under `/facilities` and the `/api/v1/facilities` routes; lists export to Excel
(`?format=xlsx`, or csv).

The work is done by `meterhub.facilities`. Viewing needs facilities.view, changes facilities.edit; a person
limited to areas sees and changes only facilities (and attaches only accounts) in their areas.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal, NoReturn
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from dashboards import charts, i18n
from dashboards.export import table_response
from dashboards.security import Principal
from dashboards.web import (
    ActionError,
    Forbidden,
    FormData,
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
from meterhub import facilities
from meterhub.facilities import Balance, FacilityError, FacilityView

router = APIRouter()

TAGS: list[Any] = ["facilities"]
PAGE_SIZE = 50
EXPORT_ROWS = 200_000
MONTHS_SHOWN = 3  # months in the balance page's table of months (the API takes any window up to 400 days)
DONE = ("create", "edit", "unchanged", "link", "unlink", "attach", "detach", "maintenance", "settings")
Format = Literal["html", "xlsx", "csv"]


# -- shared helpers -----------------------------------------------------------------------------------
def today_of(request: Request) -> dt.date:
    return dt.datetime.now(ZoneInfo(settings_of(request).timezone)).date()


def facility_url(code: str, suffix: str = "", **query: str) -> str:
    url = f"/facilities/{quote(code, safe='')}{suffix}"
    return f"{url}?{urlencode(query)}" if query else url


def field_label(request: Request, name: str) -> str:
    key = f"facilities.field.{name}"
    return _t(request, key) if key in i18n.catalogue() else name


def message_of(request: Request, exc: FacilityError) -> str:
    key = f"facilities.error.{exc.code}"
    text = _t(request, key, **{k: str(v) for k, v in exc.params.items()}) if key in i18n.catalogue() else exc.message
    return f"{field_label(request, exc.field)}: {text}" if exc.field else text


def api_refusal(exc: FacilityError) -> NoReturn:
    if exc.code == "area" and exc.field is None:
        raise Forbidden("area") from exc
    raise ActionError(exc.code, f"{exc.field}: {exc.message}" if exc.field else exc.message, exc.status) from exc


def page_refusal(request: Request, exc: FacilityError) -> NoReturn:
    if exc.code == "area" and exc.field is None:
        raise Forbidden("area") from exc
    raise ActionError(exc.code, message_of(request, exc), exc.status) from exc


def _number(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _day(text: str, name: str) -> dt.date | None:
    if not text.strip():
        return None
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise ActionError("bad_date", f"{name}: a date YYYY-MM-DD", 422) from None


def _month(text: str, today: dt.date) -> dt.date:
    if not text.strip():
        return today.replace(day=1)
    try:
        return dt.datetime.strptime(text.strip(), "%Y-%m").date()
    except ValueError:
        raise ActionError("bad_month", "month: YYYY-MM", 422) from None


def _month_end(first: dt.date) -> dt.date:
    following = (first.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return following - dt.timedelta(days=1)


def _choices(request: Request, user: Principal) -> dict[str, Any]:
    with store_of(request).connection() as conn:
        communities = facilities.communities_of(conn, user.area_ids)
        areas = facilities.areas_of(conn, user.area_ids)
    return {
        "community_options": [(code, f"{name} · {area}") for code, name, area in communities],
        "area_options": areas,
        "kinds": facilities.KINDS,
        "statuses": facilities.STATUSES,
        "maintenance_kinds": facilities.MAINTENANCE_KINDS,
    }


def _export(request: Request, name: str, headers: list[str], rows: list[list[Any]], fmt: str) -> Response:
    return table_response(name, headers, rows, fmt, timezone=settings_of(request).timezone)


# -- the list -------------------------------------------------------------------------------------------
@router.get("/facilities", include_in_schema=False)
def list_page(
    request: Request,
    user: Annotated[Principal, Depends(require("facilities.view"))],
    q: str = "",
    kind: str = "",
    status: str = "",
    area: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
    format: Format = "html",
    done: str = "",
) -> Response:
    error = None
    result = None
    exporting = format != "html"
    with store_of(request).connection() as conn:
        try:
            result = facilities.search(
                conn,
                q,
                kind=kind,
                status=status,
                area=area,
                areas=user.area_ids,
                page=1 if exporting else page,
                size=EXPORT_ROWS if exporting else PAGE_SIZE,
            )
        except FacilityError as exc:
            if exporting:
                page_refusal(request, exc)
            error = message_of(request, exc)
        defaults = facilities.settings(conn)
    if exporting and result is not None:
        headers = [
            field_label(request, f)
            for f in (
                "code",
                "kind",
                "name",
                "status",
                "area",
                "community",
                "address",
                "model",
                "install_date",
                "meter_no",
                "accounts",
                "links",
            )
        ]
        rows = [[r.code, _t(request, f"facilities.kind.{r.kind}"), r.name, _t(request, f"facilities.status.{r.status}"),
                 r.area_name, r.community_name, r.address, r.model, r.install_date, r.meter_no, r.accounts, r.links]
                for r in result.rows]  # fmt: skip
        return _export(request, "facilities", headers, rows, format)
    query = {"q": q, "kind": kind, "status": status, "area": area}
    return render(
        request,
        "facilities/list.html",
        400 if error else 200,
        result=result,
        q=q,
        kind=kind,
        status=status,
        area=area,
        defaults=defaults,
        export_url=lambda fmt: "/facilities?" + urlencode({**query, "format": fmt}),
        prev_url=f"/facilities?{urlencode({**query, 'page': page - 1})}" if page > 1 else None,
        next_url=f"/facilities?{urlencode({**query, 'page': page + 1})}" if result and result.has_more else None,
        message_error=error,
        message_ok=_t(request, f"facilities.done.{done}") if done in DONE else None,
        facility_url=facility_url,
        **_choices(request, user),
    )


@router.post("/facilities/settings", include_in_schema=False)
def settings_submit(
    request: Request, user: Annotated[Principal, Depends(require("facilities.edit"))], form: FormData
) -> Response:
    note_object(request, "facility_setting", "default")
    if user.area_ids is not None:
        raise Forbidden("area")
    try:
        facilities.set_settings(
            store_of(request),
            user.username,
            loss_threshold_pct=form.get("loss_threshold_pct", ""),
            maintenance_interval_days=form.get("maintenance_interval_days", ""),
        )
    except FacilityError as exc:
        page_refusal(request, exc)
    return redirect("/facilities?done=settings")


# -- create -----------------------------------------------------------------------------------------------
def _form_page(
    request: Request,
    user: Principal,
    form: dict[str, str],
    status: int = 200,
    view: FacilityView | None = None,
    **extra: Any,
) -> Response:
    return render(
        request,
        "facilities/form.html",
        status,
        form=form,
        f=view,
        facility_url=facility_url,
        **_choices(request, user),
        **extra,
    )


@router.get("/facilities/new", include_in_schema=False)
def new_page(
    request: Request, user: Annotated[Principal, Depends(require("facilities.edit"))], kind: str = "box"
) -> Response:
    return _form_page(request, user, {"kind": kind if kind in facilities.KINDS else "box", "status": "in_service"})


@router.post("/facilities/new", include_in_schema=False)
def new_submit(
    request: Request, user: Annotated[Principal, Depends(require("facilities.edit"))], form: FormData
) -> Response:
    note_object(request, "facility", form.get("code") or None)
    try:
        code = facilities.create(store_of(request), user.username, form, areas=user.area_ids, today=today_of(request))
    except FacilityError as exc:
        if exc.code == "area" and exc.field is None:
            raise Forbidden("area") from exc
        return _form_page(
            request, user, form, exc.status, message_error=message_of(request, exc), error_field=exc.field
        )
    return redirect(facility_url(code, done="create"))


# -- maintenance records and the overdue list ---------------------------------------------------------------
@router.get("/facilities/maintenance", include_in_schema=False)
def maintenance_page(
    request: Request,
    user: Annotated[Principal, Depends(require("facilities.view"))],
    q: str = "",
    kind: str = "",
    facility_kind: str = "",
    since: str = "",
    until: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
    format: Format = "html",
) -> Response:
    exporting = format != "html"
    error = None
    records: list[facilities.MaintenanceRecord] = []
    more = False
    with store_of(request).connection() as conn:
        try:
            records, more = facilities.maintenance(
                conn, q, kind=kind, facility_kind=facility_kind, since=_day(since, "since"), until=_day(until, "until"),
                areas=user.area_ids, page=1 if exporting else page, size=EXPORT_ROWS if exporting else PAGE_SIZE,
            )  # fmt: skip
        except FacilityError as exc:
            if exporting:
                page_refusal(request, exc)
            error = message_of(request, exc)
    if exporting:
        headers = [
            field_label(request, f)
            for f in (
                "code",
                "kind",
                "name",
                "done_on",
                "maintenance_kind",
                "person",
                "findings",
                "parts",
                "next_due",
                "recorded_by",
                "recorded_at",
            )
        ]
        rows = [[r.facility_code, _t(request, f"facilities.kind.{r.facility_kind}"), r.facility_name, r.done_on,
                 _t(request, f"facilities.maintenance_kind.{r.kind}"), r.person, r.findings, r.parts, r.next_due,
                 r.recorded_by, r.recorded_at] for r in records]  # fmt: skip
        return _export(request, "maintenance", headers, rows, format)
    query = {"q": q, "kind": kind, "facility_kind": facility_kind, "since": since, "until": until}
    return render(
        request, "facilities/maintenance.html", 400 if error else 200, records=records, page=page, q=q, kind=kind,
        facility_kind=facility_kind, since=since, until=until, message_error=error, facility_url=facility_url,
        export_url=lambda fmt: "/facilities/maintenance?" + urlencode({**query, "format": fmt}),
        prev_url=f"/facilities/maintenance?{urlencode({**query, 'page': page - 1})}" if page > 1 else None,
        next_url=f"/facilities/maintenance?{urlencode({**query, 'page': page + 1})}" if more else None,
        **_choices(request, user),
    )  # fmt: skip


@router.get("/facilities/overdue", include_in_schema=False)
def overdue_page(
    request: Request,
    user: Annotated[Principal, Depends(require("facilities.view"))],
    kind: str = "",
    within_days: Annotated[int, Query(ge=0, le=365)] = 0,
    format: Format = "html",
) -> Response:
    today = today_of(request)
    with store_of(request).connection() as conn:
        try:
            rows = facilities.overdue(conn, today, kind=kind, areas=user.area_ids, within_days=within_days)
        except FacilityError as exc:
            page_refusal(request, exc)
        defaults = facilities.settings(conn)
    if format != "html":
        headers = [
            field_label(request, f)
            for f in (
                "code",
                "kind",
                "name",
                "area",
                "community",
                "last_done_on",
                "maintenance_kind",
                "due_on",
                "days_overdue",
            )
        ]
        data = [[r.code, _t(request, f"facilities.kind.{r.kind}"), r.name, r.area_name, r.community_name,
                 r.last_done_on, _t(request, f"facilities.maintenance_kind.{r.last_kind}") if r.last_kind else None,
                 r.due_on, r.days_overdue] for r in rows]  # fmt: skip
        return _export(request, "overdue", headers, data, format)
    query = {"kind": kind, "within_days": str(within_days)}
    return render(
        request, "facilities/overdue.html", rows=rows, kind=kind, within_days=within_days, today=today,
        defaults=defaults, facility_url=facility_url,
        export_url=lambda fmt: "/facilities/overdue?" + urlencode({**query, "format": fmt}),
        **_choices(request, user),
    )  # fmt: skip


# -- a facility -------------------------------------------------------------------------------------------
def _view(request: Request, user: Principal, code: str) -> FacilityView:
    with store_of(request).connection() as conn:
        try:
            return facilities.get(conn, code, areas=user.area_ids)
        except FacilityError as exc:
            page_refusal(request, exc)


def _detail(request: Request, user: Principal, code: str, status: int = 200, **extra: Any) -> Response:
    view = _view(request, user, code)
    today = today_of(request)
    extra.setdefault("form", {"done_on": today.isoformat(), "kind": "maintenance"})
    return render(
        request, "facilities/detail.html", status, f=view, today=today, facility_url=facility_url,
        account_url=lambda no: f"/customers/accounts/{quote(no, safe='')}", **_choices(request, user), **extra,
    )  # fmt: skip


@router.get("/facilities/{code}", include_in_schema=False)
def detail_page(
    request: Request, code: str, user: Annotated[Principal, Depends(require("facilities.view"))], done: str = ""
) -> Response:
    return _detail(request, user, code, message_ok=_t(request, f"facilities.done.{done}") if done in DONE else None)


@router.get("/facilities/{code}/edit", include_in_schema=False)
def edit_page(request: Request, code: str, user: Annotated[Principal, Depends(require("facilities.edit"))]) -> Response:
    view = _view(request, user, code)
    return _form_page(request, user, view.form(), view=view)


@router.post("/facilities/{code}/edit", include_in_schema=False)
def edit_submit(
    request: Request, code: str, user: Annotated[Principal, Depends(require("facilities.edit"))], form: FormData
) -> Response:
    note_object(request, "facility", code)
    view = _view(request, user, code)
    values = {k: v for k, v in form.items() if k in facilities.EDITABLE}
    if view.kind != "box":
        values = {k: v for k, v in values.items() if k not in facilities.BOX_ONLY}
    try:
        changed = facilities.update(
            store_of(request), user.username, code, values, areas=user.area_ids, today=today_of(request)
        )
    except FacilityError as exc:
        if (exc.code == "area" and exc.field is None) or exc.status == 404:
            page_refusal(request, exc)
        return _form_page(
            request,
            user,
            {**form, "code": view.code, "kind": view.kind},
            exc.status,
            view=view,
            message_error=message_of(request, exc),
            error_field=exc.field,
        )
    return redirect(facility_url(code, done="edit" if changed else "unchanged"))


def _act(request: Request, user: Principal, code: str, done: str, call: Any, form: dict[str, str]) -> Response:
    note_object(request, "facility", code)
    try:
        call()
    except FacilityError as exc:
        if (exc.code == "area" and exc.field is None) or exc.status == 404:
            page_refusal(request, exc)
        return _detail(
            request, user, code, exc.status, message_error=message_of(request, exc), error_field=exc.field, form=form
        )
    return redirect(facility_url(code, done=done))


@router.post("/facilities/{code}/links", include_in_schema=False)
def link_submit(
    request: Request, code: str, user: Annotated[Principal, Depends(require("facilities.edit"))], form: FormData
) -> Response:
    other = form.get("other", "")
    return _act(
        request,
        user,
        code,
        "link",
        lambda: facilities.link(store_of(request), user.username, code, other, areas=user.area_ids),
        form,
    )


@router.post("/facilities/{code}/links/{other}/remove", include_in_schema=False)
def unlink_submit(
    request: Request, code: str, other: str, user: Annotated[Principal, Depends(require("facilities.edit"))]
) -> Response:
    return _act(
        request,
        user,
        code,
        "unlink",
        lambda: facilities.unlink(store_of(request), user.username, code, other, areas=user.area_ids),
        {},
    )


@router.post("/facilities/{code}/accounts", include_in_schema=False)
def attach_submit(
    request: Request, code: str, user: Annotated[Principal, Depends(require("facilities.edit"))], form: FormData
) -> Response:
    numbers = form.get("account_no", "").replace(",", " ").replace("，", " ").split()
    return _act(request, user, code, "attach",
                lambda: facilities.attach_accounts(store_of(request), user.username, code, numbers,
                                                   areas=user.area_ids), form)  # fmt: skip


@router.post("/facilities/{code}/accounts/{account_no}/remove", include_in_schema=False)
def detach_submit(
    request: Request, code: str, account_no: str, user: Annotated[Principal, Depends(require("facilities.edit"))]
) -> Response:
    return _act(request, user, code, "detach",
                lambda: facilities.detach_account(store_of(request), user.username, code, account_no,
                                                  areas=user.area_ids), {})  # fmt: skip


@router.post("/facilities/{code}/maintenance", include_in_schema=False)
def maintenance_submit(
    request: Request, code: str, user: Annotated[Principal, Depends(require("facilities.edit"))], form: FormData
) -> Response:
    return _act(request, user, code, "maintenance",
                lambda: facilities.record_maintenance(store_of(request), user.username, code, form,
                                                      areas=user.area_ids, today=today_of(request)), form)  # fmt: skip


# -- the supply balance -----------------------------------------------------------------------------------------
def _balance(request: Request, user: Principal, code: str, first: dt.date, last: dt.date) -> Balance:
    with store_of(request).connection() as conn:
        try:
            return facilities.balance(
                conn, code, first, last, timezone=settings_of(request).timezone, areas=user.area_ids
            )
        except FacilityError as exc:
            page_refusal(request, exc)


def _gap_text(request: Request, gap: facilities.Gap) -> str:
    side = _t(request, f"facilities.side.{gap.side}")
    status = _t(request, f"facilities.gap.{gap.status}")
    return f"{side} {gap.meter_no}: {status}" if gap.meter_no else f"{side}: {status}"


@router.get("/facilities/{code}/balance", include_in_schema=False)
def balance_page(
    request: Request,
    code: str,
    user: Annotated[Principal, Depends(require("facilities.view"))],
    month: str = "",
    format: Format = "html",
) -> Response:
    today = today_of(request)
    first = _month(month, today)
    last = min(_month_end(first), today)
    if last < first:
        raise ActionError("future_month", _t(request, "facilities.error.future_month"), 422)
    # the month asked for and the MONTHS_SHOWN - 1 before it, for the table of months
    window_start = first
    for _ in range(MONTHS_SHOWN - 1):
        window_start = (window_start - dt.timedelta(days=1)).replace(day=1)
    result = _balance(request, user, code, window_start, last)
    days = [d for d in result.days if d.day >= first]
    if format != "html":
        headers = [
            field_label(request, f)
            for f in ("day", "box_m3", "fed_m3", "loss_m3", "loss_pct", "complete", "flagged", "gaps")
        ]
        yes, no = _t(request, "common.yes"), _t(request, "common.no")
        rows = [[d.day, d.box_m3, d.fed_m3, d.loss_m3, d.loss_pct, yes if d.complete else no, yes if d.flagged else no,
                 "; ".join(_gap_text(request, g) for g in d.gaps)] for d in days]  # fmt: skip
        return _export(request, f"balance-{code}-{first:%Y-%m}", headers, rows, format)
    chart = charts.bar_chart(
        [(d.day, d.loss_pct) for d in days if d.loss_pct is not None],
        first_day=first, last_day=_month_end(first), title=_t(request, "facilities.chart_title",
                                                              threshold=str(result.threshold_pct)),
        unit="%", chart_id="balance-chart", frame=charts.Frame(height=220), value_format="{:f}",
    )  # fmt: skip
    previous = (first - dt.timedelta(days=1)).replace(day=1)
    following = _month_end(first) + dt.timedelta(days=1)
    return render(
        request, "facilities/balance.html", b=result, days=days, months=list(reversed(result.months)),
        month=first.strftime("%Y-%m"), chart=chart, gap_text=lambda g: _gap_text(request, g),
        facility_url=facility_url, month_total=next((m for m in result.months if m.month == f"{first:%Y-%m}"), None),
        prev_url=facility_url(code, "/balance", month=f"{previous:%Y-%m}"),
        next_url=facility_url(code, "/balance", month=f"{following:%Y-%m}") if following <= today else None,
        export_url=lambda fmt: facility_url(code, "/balance", month=f"{first:%Y-%m}", format=fmt),
    )  # fmt: skip


# -- /api/v1 ------------------------------------------------------------------------------------------------------
Kind = Literal["well", "box", "stack"]
Status = Literal["in_service", "out_of_service", "removed"]
MaintenanceKind = Literal["inspection", "maintenance", "repair", "replacement"]
DecimalText = Annotated[str | None, Field(None, description="A decimal number as a string")]


class FacilityFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(None, max_length=facilities.MAX_ADDRESS)
    community: str | None = Field(None, description="Community code; the facility's area is the community's")
    area: str | None = Field(None, description="Area code, for a facility outside any community")
    latitude: DecimalText = None
    longitude: DecimalText = None
    model: str | None = Field(None, max_length=facilities.MAX_NAME)
    manufacturer: str | None = Field(None, max_length=facilities.MAX_NAME)
    dn: int | None = Field(None, ge=1, le=5000, description="Nominal diameter, mm")
    pressure_in_mpa: DecimalText = None
    pressure_out_mpa: DecimalText = None
    flow_m3h: DecimalText = None
    install_date: dt.date | None = None
    status: Status | None = None
    note: str | None = Field(None, max_length=facilities.MAX_TEXT)
    meter_no: str | None = Field(None, description="A box's own meter (for the supply balance); empty: none")
    loss_threshold_pct: DecimalText = None


class FacilityIn(FacilityFields):
    """A new valve well, regulator box or relief stack."""

    code: str = Field(min_length=1, max_length=32)
    kind: Kind
    name: str = Field(min_length=1, max_length=facilities.MAX_NAME)


class FacilityPatch(FacilityFields):
    """The fields to change; fields left out stay as they are."""

    name: str | None = Field(None, min_length=1, max_length=facilities.MAX_NAME)


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    other: str = Field(description="Code of the well or relief stack (or box, from a well or stack)")


class AccountsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account_nos: list[str] = Field(min_length=1, max_length=1000)


class MaintenanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    done_on: dt.date
    kind: MaintenanceKind
    person: str = Field(min_length=1, max_length=facilities.MAX_NAME)
    findings: str = Field("", max_length=facilities.MAX_TEXT)
    parts: str = Field("", max_length=facilities.MAX_TEXT)
    next_due: dt.date | None = None


class SettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loss_threshold_pct: str = Field(description="Default loss threshold of a box, percent (decimal string)")
    maintenance_interval_days: int = Field(ge=1, le=3650)


class SettingsOut(BaseModel):
    loss_threshold_pct: str
    maintenance_interval_days: int


class FacilityRowOut(BaseModel):
    code: str
    kind: str
    name: str
    status: str
    address: str
    community: str | None
    area: str | None
    model: str
    install_date: dt.date | None
    meter_no: str | None
    accounts: int
    links: int


class ListOut(BaseModel):
    items: list[FacilityRowOut]
    page: int
    size: int
    has_more: bool


class LinkOut(BaseModel):
    code: str
    kind: str
    name: str
    status: str
    linked_by: str
    linked_at: dt.datetime


class FedAccountOut(BaseModel):
    account_no: str
    name: str
    address: str
    status: str
    meters: list[str]
    linked_by: str
    linked_at: dt.datetime


class MaintenanceOut(BaseModel):
    id: int
    facility_code: str
    facility_kind: str
    done_on: dt.date
    kind: str
    person: str
    findings: str
    parts: str
    next_due: dt.date | None
    recorded_by: str
    recorded_at: dt.datetime


class FacilityOut(BaseModel):
    code: str
    kind: str
    name: str
    address: str
    area: str | None
    community: str | None
    latitude: str | None
    longitude: str | None
    model: str
    manufacturer: str
    dn: int | None
    pressure_in_mpa: str | None
    pressure_out_mpa: str | None
    flow_m3h: str | None
    install_date: dt.date | None
    status: str
    note: str
    meter_no: str | None
    loss_threshold_pct: str | None = Field(description="The box's own threshold; null: the default")
    threshold_pct: str = Field(description="The threshold in force")
    next_due: dt.date | None
    links: list[LinkOut]
    accounts: list[FedAccountOut]
    maintenance: list[MaintenanceOut]


class OverdueOut(BaseModel):
    code: str
    kind: str
    name: str
    area: str | None
    community: str | None
    last_done_on: dt.date | None
    last_kind: str | None
    due_on: dt.date
    days_overdue: int


class GapOut(BaseModel):
    meter_no: str
    side: str = Field(description="box or fed")
    status: str = Field(description="missing, catch_up, reset or no_meter")


class DayOut(BaseModel):
    day: dt.date
    box_m3: str | None
    fed_m3: str | None
    meters: int
    complete: bool
    loss_m3: str | None
    loss_pct: str | None
    flagged: bool
    gaps: list[GapOut]


class MonthOut(BaseModel):
    month: str
    days: int
    complete_days: int
    box_m3: str
    fed_m3: str
    loss_m3: str
    loss_pct: str | None
    complete: bool
    flagged: bool
    flagged_days: int


class BalanceOut(BaseModel):
    code: str
    meter_no: str | None
    threshold_pct: str
    first_day: dt.date
    last_day: dt.date
    accounts: int
    days: list[DayOut]
    months: list[MonthOut]


def _maintenance_out(r: facilities.MaintenanceRecord) -> MaintenanceOut:
    return MaintenanceOut(
        id=r.id,
        facility_code=r.facility_code,
        facility_kind=r.facility_kind,
        done_on=r.done_on,
        kind=r.kind,
        person=r.person,
        findings=r.findings,
        parts=r.parts,
        next_due=r.next_due,
        recorded_by=r.recorded_by,
        recorded_at=r.recorded_at,
    )


def _out(view: FacilityView) -> FacilityOut:
    return FacilityOut(
        code=view.code, kind=view.kind, name=view.name, address=view.address, area=view.area,
        community=view.community, latitude=_number(view.latitude), longitude=_number(view.longitude),
        model=view.model, manufacturer=view.manufacturer, dn=view.dn, pressure_in_mpa=_number(view.pressure_in_mpa),
        pressure_out_mpa=_number(view.pressure_out_mpa), flow_m3h=_number(view.flow_m3h),
        install_date=view.install_date, status=view.status, note=view.note, meter_no=view.meter_no,
        loss_threshold_pct=_number(view.loss_threshold_pct), threshold_pct=format(view.threshold_pct, "f"),
        next_due=view.next_due,
        links=[LinkOut(**vars(x)) for x in view.links],
        accounts=[FedAccountOut(account_no=a.account_no, name=a.name, address=a.address, status=a.status,
                                meters=a.meters, linked_by=a.linked_by, linked_at=a.linked_at) for a in view.accounts],
        maintenance=[_maintenance_out(r) for r in view.maintenance],
    )  # fmt: skip


def _load(request: Request, user: Principal, code: str) -> FacilityOut:
    with store_of(request).connection() as conn:
        try:
            return _out(facilities.get(conn, code, areas=user.area_ids))
        except FacilityError as exc:
            api_refusal(exc)


@router.get("/api/v1/facilities", tags=TAGS, response_model=ListOut)
def api_list(
    request: Request,
    user: Annotated[Principal, Depends(require("facilities.view"))],
    q: str = "",
    kind: Annotated[str, Query(description="well, box or stack")] = "",
    status: Annotated[str, Query(description=", ".join(facilities.STATUSES))] = "",
    area: Annotated[str, Query(description="Area code")] = "",
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE,
) -> ListOut:
    """Valve wells, regulator boxes and relief stacks whose code, name, address, model, community or area contains
    `q`; only those within the caller's areas."""
    with store_of(request).connection() as conn:
        try:
            found = facilities.search(
                conn, q, kind=kind, status=status, area=area, areas=user.area_ids, page=page, size=size
            )
        except FacilityError as exc:
            api_refusal(exc)
    return ListOut(
        items=[FacilityRowOut(code=r.code, kind=r.kind, name=r.name, status=r.status, address=r.address,
                              community=r.community, area=r.area, model=r.model, install_date=r.install_date,
                              meter_no=r.meter_no, accounts=r.accounts, links=r.links) for r in found.rows],
        page=found.page, size=found.size, has_more=found.has_more,
    )  # fmt: skip


@router.post("/api/v1/facilities", tags=TAGS, response_model=FacilityOut, status_code=201)
def api_create(
    request: Request, body: FacilityIn, user: Annotated[Principal, Depends(require("facilities.edit"))]
) -> Response:
    """A new valve well, regulator box or relief stack. Decimals (coordinates, pressures in MPa, rated flow in m³/h,
    the box's loss threshold in percent) are strings."""
    note_object(request, "facility", body.code)
    try:
        code = facilities.create(
            store_of(request),
            user.username,
            body.model_dump(exclude_none=True),
            areas=user.area_ids,
            today=today_of(request),
        )
    except FacilityError as exc:
        api_refusal(exc)
    out = _load(request, user, code)
    return JSONResponse(
        out.model_dump(mode="json"), status_code=201, headers={"Location": f"/api/v1/facilities/{quote(code, safe='')}"}
    )


@router.get("/api/v1/facilities/maintenance", tags=TAGS, response_model=list[MaintenanceOut])
def api_maintenance_list(
    request: Request,
    user: Annotated[Principal, Depends(require("facilities.view"))],
    q: str = "",
    kind: Annotated[str, Query(description=", ".join(facilities.MAINTENANCE_KINDS))] = "",
    facility_kind: Annotated[str, Query(description="well, box or stack")] = "",
    since: dt.date | None = None,
    until: dt.date | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE,
) -> list[MaintenanceOut]:
    """Maintenance, repair and replacement records, newest first, matching `q` in the facility's code or name,
    the person, findings or parts."""
    with store_of(request).connection() as conn:
        try:
            records, _ = facilities.maintenance(
                conn,
                q,
                kind=kind,
                facility_kind=facility_kind,
                since=since,
                until=until,
                areas=user.area_ids,
                page=page,
                size=size,
            )
        except FacilityError as exc:
            api_refusal(exc)
    return [_maintenance_out(r) for r in records]


@router.get("/api/v1/facilities/overdue", tags=TAGS, response_model=list[OverdueOut])
def api_overdue(
    request: Request,
    user: Annotated[Principal, Depends(require("facilities.view"))],
    kind: Annotated[str, Query(description="well, box or stack")] = "",
    within_days: Annotated[int, Query(ge=0, le=365, description="Also those due within these days")] = 0,
) -> list[OverdueOut]:
    """Facilities in service whose maintenance is due: on the last record's next due date, else the last record's
    (or the install) date plus the default interval; most overdue first."""
    with store_of(request).connection() as conn:
        try:
            rows = facilities.overdue(conn, today_of(request), kind=kind, areas=user.area_ids, within_days=within_days)
        except FacilityError as exc:
            api_refusal(exc)
    return [OverdueOut(code=r.code, kind=r.kind, name=r.name, area=r.area_name, community=r.community_name,
                       last_done_on=r.last_done_on, last_kind=r.last_kind, due_on=r.due_on,
                       days_overdue=r.days_overdue) for r in rows]  # fmt: skip


@router.get("/api/v1/facilities/settings", tags=TAGS, response_model=SettingsOut)
def api_settings(request: Request, user: Annotated[Principal, Depends(require("facilities.view"))]) -> SettingsOut:
    """The default loss threshold of a box and the default maintenance interval."""
    with store_of(request).connection() as conn:
        current = facilities.settings(conn)
    return SettingsOut(
        loss_threshold_pct=format(current.loss_threshold_pct, "f"),
        maintenance_interval_days=current.maintenance_interval_days,
    )


@router.put("/api/v1/facilities/settings", tags=TAGS, response_model=SettingsOut)
def api_set_settings(
    request: Request, body: SettingsIn, user: Annotated[Principal, Depends(require("facilities.edit"))]
) -> SettingsOut:
    """Change the defaults (people not limited to areas)."""
    note_object(request, "facility_setting", "default")
    if user.area_ids is not None:
        raise Forbidden("area")
    try:
        current = facilities.set_settings(
            store_of(request),
            user.username,
            loss_threshold_pct=body.loss_threshold_pct,
            maintenance_interval_days=body.maintenance_interval_days,
        )
    except FacilityError as exc:
        api_refusal(exc)
    return SettingsOut(
        loss_threshold_pct=format(current.loss_threshold_pct, "f"),
        maintenance_interval_days=current.maintenance_interval_days,
    )


@router.get("/api/v1/facilities/{code}", tags=TAGS, response_model=FacilityOut)
def api_get(
    request: Request, code: str, user: Annotated[Principal, Depends(require("facilities.view"))]
) -> FacilityOut:
    """A facility: its facts, the boxes, wells and stacks linked to it, the accounts a box feeds and its
    maintenance history with the next due date."""
    return _load(request, user, code)


@router.patch("/api/v1/facilities/{code}", tags=TAGS, response_model=FacilityOut)
def api_edit(
    request: Request, code: str, body: FacilityPatch, user: Annotated[Principal, Depends(require("facilities.edit"))]
) -> FacilityOut:
    """Change a facility's fields; fields left out stay as they are. Every change is in the change history."""
    note_object(request, "facility", code)
    try:
        facilities.update(
            store_of(request),
            user.username,
            code,
            body.model_dump(exclude_unset=True),
            areas=user.area_ids,
            today=today_of(request),
        )
    except FacilityError as exc:
        api_refusal(exc)
    return _load(request, user, code)


@router.post("/api/v1/facilities/{code}/links", tags=TAGS, response_model=FacilityOut)
def api_link(
    request: Request, code: str, body: LinkIn, user: Annotated[Principal, Depends(require("facilities.edit"))]
) -> FacilityOut:
    """Link a regulator box and a valve well or relief stack."""
    note_object(request, "facility", code)
    try:
        facilities.link(store_of(request), user.username, code, body.other, areas=user.area_ids)
    except FacilityError as exc:
        api_refusal(exc)
    return _load(request, user, code)


@router.delete("/api/v1/facilities/{code}/links/{other}", tags=TAGS, response_model=FacilityOut)
def api_unlink(
    request: Request, code: str, other: str, user: Annotated[Principal, Depends(require("facilities.edit"))]
) -> FacilityOut:
    """Remove the link between a regulator box and a valve well or relief stack."""
    note_object(request, "facility", code)
    try:
        facilities.unlink(store_of(request), user.username, code, other, areas=user.area_ids)
    except FacilityError as exc:
        api_refusal(exc)
    return _load(request, user, code)


@router.post("/api/v1/facilities/{code}/accounts", tags=TAGS, response_model=FacilityOut)
def api_attach(
    request: Request, code: str, body: AccountsIn, user: Annotated[Principal, Depends(require("facilities.edit"))]
) -> FacilityOut:
    """The box feeds these accounts: all of them or none (an account fed by another box is refused)."""
    note_object(request, "facility", code)
    try:
        facilities.attach_accounts(store_of(request), user.username, code, body.account_nos, areas=user.area_ids)
    except FacilityError as exc:
        api_refusal(exc)
    return _load(request, user, code)


@router.delete("/api/v1/facilities/{code}/accounts/{account_no}", tags=TAGS, response_model=FacilityOut)
def api_detach(
    request: Request, code: str, account_no: str, user: Annotated[Principal, Depends(require("facilities.edit"))]
) -> FacilityOut:
    """The box no longer feeds the account."""
    note_object(request, "facility", code)
    try:
        facilities.detach_account(store_of(request), user.username, code, account_no, areas=user.area_ids)
    except FacilityError as exc:
        api_refusal(exc)
    return _load(request, user, code)


@router.get("/api/v1/facilities/{code}/maintenance", tags=TAGS, response_model=list[MaintenanceOut])
def api_facility_maintenance(
    request: Request, code: str, user: Annotated[Principal, Depends(require("facilities.view"))]
) -> list[MaintenanceOut]:
    """A facility's maintenance, repair and replacement records, newest first."""
    return _load(request, user, code).maintenance


@router.post("/api/v1/facilities/{code}/maintenance", tags=TAGS, response_model=MaintenanceOut, status_code=201)
def api_record_maintenance(
    request: Request, code: str, body: MaintenanceIn, user: Annotated[Principal, Depends(require("facilities.edit"))]
) -> MaintenanceOut:
    """Record an inspection, maintenance, repair or replacement. Records are never changed: a correction is a new
    record."""
    note_object(request, "facility", code)
    try:
        record_id = facilities.record_maintenance(
            store_of(request), user.username, code, body.model_dump(), areas=user.area_ids, today=today_of(request)
        )
    except FacilityError as exc:
        api_refusal(exc)
    return next(r for r in _load(request, user, code).maintenance if r.id == record_id)


@router.get("/api/v1/facilities/{code}/balance", tags=TAGS, response_model=BalanceOut)
def api_balance(
    request: Request,
    code: str,
    user: Annotated[Principal, Depends(require("facilities.view"))],
    first_day: dt.date | None = None,
    last_day: dt.date | None = None,
) -> BalanceOut:
    """The supply balance (供销差) of a regulator box per local day and month: the use of the box's own meter
    against the summed use of the meters of the accounts it feeds; loss = box - fed and its percentage of the box
    use; a day incomplete on either side (`gaps` name the meters) has no loss and is never flagged. Default
    window: this month up to today; at most 400 days. Volumes are decimal strings (m³)."""
    today = today_of(request)
    last = last_day or today
    first = first_day or last.replace(day=1)
    with store_of(request).connection() as conn:
        try:
            b = facilities.balance(conn, code, first, last, timezone=settings_of(request).timezone, areas=user.area_ids)
        except FacilityError as exc:
            api_refusal(exc)
    return BalanceOut(
        code=b.code, meter_no=b.meter_no, threshold_pct=format(b.threshold_pct, "f"), first_day=b.first_day,
        last_day=b.last_day, accounts=b.accounts,
        days=[DayOut(day=d.day, box_m3=_number(d.box_m3), fed_m3=_number(d.fed_m3), meters=d.meters,
                     complete=d.complete, loss_m3=_number(d.loss_m3), loss_pct=_number(d.loss_pct),
                     flagged=d.flagged, gaps=[GapOut(**vars(g)) for g in d.gaps]) for d in b.days],
        months=[MonthOut(month=m.month, days=m.days, complete_days=m.complete_days, box_m3=format(m.box_m3, "f"),
                         fed_m3=format(m.fed_m3, "f"), loss_m3=format(m.loss_m3, "f"), loss_pct=_number(m.loss_pct),
                         complete=m.complete, flagged=m.flagged, flagged_days=m.flagged_days) for m in b.months],
    )  # fmt: skip
