"""Meters: search, the meter page (facts, register and daily-use charts, readings, events, commands), the
work done on site — install (装表), replace (换表), suspend (报停), resume, remove (拆表) — and `/api/v1/meters`.

People limited to areas see and act on meters of their areas only (meter → account → community → area).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from billing.reading_books import BookError, replace_meter_in
from dashboards import charts, i18n
from dashboards.security import Principal
from dashboards.web import (
    ActionError,
    Forbidden,
    language_of,
    note_object,
    redirect,
    render,
    require,
    settings_of,
    store_of,
)
from meterhub import meters
from meterhub.meters import MeterDetail, MeterError

router = APIRouter()

PAGE_SIZE = 50
WINDOWS = (30, 90, 365)
DONE = ("install", "replace", "suspend", "resume", "remove")
STATUS_BADGE = {"installed": "ok", "suspended": "warn", "removed": "", "in_stock": "info"}
VALVE_BADGE = {"open": "ok", "closed": "bad", "armed": "warn", "abnormal": "bad", "unknown": ""}


# -- shared helpers ------------------------------------------------------------------------------------
def _exact(value: Decimal | None) -> str | None:
    """A decimal as a plain string with all its digits (no exponent)."""
    return None if value is None else format(value, "f")


def _zone(request: Request) -> ZoneInfo:
    return ZoneInfo(settings_of(request).timezone)


def _meter(conn: psycopg.Connection[Any], meter_no: str, user: Principal) -> MeterDetail:
    meter = meters.get(conn, meter_no)
    if meter is None:
        raise ActionError("no_meter", f"no meter {meter_no}", 404)
    if not user.covers_area(meter.area_id):
        raise Forbidden("area")
    return meter


def _refused(exc: MeterError | BookError) -> Exception:
    """A service refusal as the console's exception (area → 403 page or JSON, others → ActionError)."""
    if isinstance(exc, BookError):
        return ActionError("refused", str(exc), 409)
    if exc.code == "area":
        return Forbidden("area")
    return ActionError(exc.code, exc.message, exc.status)


def _message(request: Request, exc: MeterError | BookError) -> str:
    language = language_of(request)
    if isinstance(exc, MeterError) and f"meters_error.{exc.code}" in i18n.catalogue():
        params = dict(exc.params)
        if "status" in params:
            params["status"] = i18n.translate(language, f"meters_status.{params['status']}")
        return i18n.translate(language, f"meters_error.{exc.code}", **params)
    return str(exc)


def _local(value: datetime, zone: ZoneInfo) -> datetime:
    """A moment entered without a zone is local time of the utility."""
    return value.replace(tzinfo=zone) if value.tzinfo is None else value


def _parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise MeterError("invalid_date", f"{text!r} is not a date (YYYY-MM-DD)", value=text) from None


def _parse_moment(text: str, zone: ZoneInfo) -> datetime:
    try:
        return _local(datetime.fromisoformat(text.strip()), zone)
    except ValueError:
        raise MeterError("invalid_date", f"{text!r} is not a date and time", value=text) from None


def _replace(
    request: Request,
    user: Principal,
    old_meter_no: str,
    new_meter_no: str,
    at: datetime,
    old_final: Decimal | str,
    new_first: Decimal | str,
    reason: str,
) -> None:
    """换表 in one transaction: check and lock both meters, `replace_meter_in`, record the actions."""
    store, timezone = store_of(request), settings_of(request).timezone
    with store.transaction(actor=user.username) as conn:
        plan = meters.check_replacement(
            conn, timezone, old_meter_no, new_meter_no, at, old_final, new_first, areas=user.area_ids
        )
        replace_meter_in(
            conn,
            timezone,
            plan.account_id,
            plan.old_meter_no,
            plan.new_meter_no,
            plan.at,
            old_final_value=plan.old_final_value,
            new_first_value=plan.new_first_value,
            note=reason.strip(),
        )
        meters.record_replacement(conn, plan, reason)


# -- pages ---------------------------------------------------------------------------------------------
def _list_page(
    request: Request,
    user: Principal,
    *,
    q: str = "",
    status: str = "",
    valve: str = "",
    driver: str = "",
    page: int = 1,
    status_code: int = 200,
    message_error: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    page = max(page, 1)
    with store_of(request).connection() as conn:
        rows = meters.search(
            conn,
            q=q,
            status=status if status in meters.STATUSES else None,
            valve_state=valve if valve in meters.VALVE_STATES else None,
            driver_key=driver or None,
            areas=user.area_ids,
            offset=(page - 1) * PAGE_SIZE,
            limit=PAGE_SIZE + 1,
        )
        drivers = meters.driver_keys(conn)
    filters = {k: v for k, v in {"q": q, "status": status, "valve": valve, "driver": driver}.items() if v}

    def page_url(n: int) -> str:
        return "/meters?" + urlencode({**filters, "page": n})

    return render(
        request,
        "meters/list.html",
        status_code,
        rows=rows[:PAGE_SIZE],
        f={"q": q, "status": status, "valve": valve, "driver": driver},
        statuses=meters.STATUSES,
        valves=meters.VALVE_STATES,
        drivers=drivers,
        page=page,
        prev_url=page_url(page - 1) if page > 1 else None,
        next_url=page_url(page + 1) if len(rows) > PAGE_SIZE else None,
        status_badge=STATUS_BADGE,
        valve_badge=VALVE_BADGE,
        today=datetime.now(_zone(request)).date().isoformat(),
        form=form or {},
        message_error=message_error,
    )


@router.get("/meters", include_in_schema=False)
def meter_list(
    request: Request,
    user: Annotated[Principal, Depends(require("meters.view"))],
    q: Annotated[str, Query(max_length=100)] = "",
    status: str = "",
    valve: str = "",
    driver: Annotated[str, Query(max_length=64)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    return _list_page(request, user, q=q, status=status, valve=valve, driver=driver, page=page)


def _detail_page(
    request: Request,
    user: Principal,
    meter_no: str,
    days: int = 30,
    *,
    status_code: int = 200,
    message_ok: str | None = None,
    message_error: str | None = None,
    failed: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    timezone = settings_of(request).timezone
    zone = ZoneInfo(timezone)
    days = days if days in WINDOWS else WINDOWS[0]
    now = datetime.now(zone)
    today = now.date()
    first_day = today - timedelta(days=days - 1)
    since = meters.local_midnight(first_day, timezone)
    with store_of(request).connection() as conn:
        meter = _meter(conn, meter_no, user)
        series = meters.register_series(conn, meter.id, since, now)
        daily = meters.daily_use(conn, meter.id, first_day, today, timezone)
        latest = meters.latest_readings(conn, meter.id)
        events = meters.events(conn, meter.id)
        commands = meters.commands(conn, meter.id)
        actions = meters.actions(conn, meter.id)
        assignments = meters.assignments(conn, meter.id)
    language = language_of(request)
    register_chart = charts.line_chart(
        series,
        start=since,
        end=now,
        timezone=timezone,
        title=i18n.translate(language, "meters.chart_register", days=days),
        unit="m³",
        chart_id="register-chart",
    )
    daily_chart = charts.bar_chart(
        [(d.day, d.consumption_m3) for d in daily],
        first_day=first_day,
        last_day=today,
        title=i18n.translate(language, "meters.chart_daily", days=days),
        unit="m³",
        chart_id="daily-chart",
    )
    total = sum((d.consumption_m3 for d in daily), Decimal(0))
    return render(
        request,
        "meters/detail.html",
        status_code,
        meter=meter,
        days=days,
        windows=WINDOWS,
        series=series,
        daily=daily,
        daily_total=total,
        register_chart=register_chart,
        daily_chart=daily_chart,
        latest=latest,
        events=events,
        commands=commands,
        actions=actions,
        assignments=assignments,
        status_badge=STATUS_BADGE,
        valve_badge=VALVE_BADGE,
        exact=_exact,
        today=today.isoformat(),
        now_local=now.strftime("%Y-%m-%dT%H:%M"),
        message_ok=message_ok,
        message_error=message_error,
        failed=failed,
        form=form or {},
    )


@router.get("/meters/{meter_no}", include_in_schema=False)
def meter_page(
    request: Request,
    meter_no: str,
    user: Annotated[Principal, Depends(require("meters.view"))],
    days: int = 30,
    done: str = "",
) -> Response:
    message_ok = i18n.translate(language_of(request), f"meters.done_{done}") if done in DONE else None
    return _detail_page(request, user, meter_no, days, message_ok=message_ok)


def _after(request: Request, meter_no: str, done: str) -> Response:
    return redirect(f"/meters/{quote(meter_no, safe='')}?done={done}")


def _page_failure(
    request: Request, user: Principal, meter_no: str, action: str, exc: MeterError | BookError, form: dict[str, str]
) -> Response:
    if isinstance(exc, MeterError) and exc.code == "area":
        raise Forbidden("area")
    status = exc.status if isinstance(exc, MeterError) else 409
    return _detail_page(
        request, user, meter_no, status_code=status, message_error=_message(request, exc), failed=action, form=form
    )


@router.post("/meters/install", include_in_schema=False)
def install_page(
    request: Request,
    user: Annotated[Principal, Depends(require("meters.edit"))],
    meter_no: Annotated[str, Form(max_length=64)],
    account_no: Annotated[str, Form(max_length=64)],
    install_date: Annotated[str, Form(max_length=32)],
    initial_reading: Annotated[str, Form(max_length=32)] = "0",
    note: Annotated[str, Form(max_length=500)] = "",
    back: Annotated[str, Form()] = "",
) -> Response:
    meter_no, account_no = meter_no.strip(), account_no.strip()
    note_object(request, "meter", meter_no)
    form = {
        "meter_no": meter_no,
        "account_no": account_no,
        "install_date": install_date,
        "initial_reading": initial_reading,
        "note": note,
    }
    try:
        meters.install(
            store_of(request),
            meter_no,
            account_no,
            _parse_date(install_date),
            initial_reading,
            actor=user.username,
            areas=user.area_ids,
            note=note,
        )
    except MeterError as exc:
        if exc.code == "area":
            raise Forbidden("area") from None
        if back == "meter":
            with store_of(request).connection() as conn:
                visible = meters.get(conn, meter_no)
            if visible is not None and user.covers_area(visible.area_id):
                return _page_failure(request, user, meter_no, "install", exc, form)
        return _list_page(request, user, status_code=exc.status, message_error=_message(request, exc), form=form)
    return _after(request, meter_no, "install")


@router.post("/meters/{meter_no}/replace", include_in_schema=False)
def replace_page(
    request: Request,
    meter_no: str,
    user: Annotated[Principal, Depends(require("meters.edit"))],
    new_meter_no: Annotated[str, Form(max_length=64)],
    at: Annotated[str, Form(max_length=32)],
    old_final_reading: Annotated[str, Form(max_length=32)],
    new_first_reading: Annotated[str, Form(max_length=32)] = "0",
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    note_object(request, "meter", meter_no)
    with store_of(request).connection() as conn:
        _meter(conn, meter_no, user)
    new_meter_no = new_meter_no.strip()
    form = {
        "new_meter_no": new_meter_no,
        "at": at,
        "old_final_reading": old_final_reading,
        "new_first_reading": new_first_reading,
        "reason": reason,
    }
    try:
        moment = _parse_moment(at, _zone(request))
        _replace(request, user, meter_no, new_meter_no, moment, old_final_reading, new_first_reading, reason)
    except (MeterError, BookError) as exc:
        return _page_failure(request, user, meter_no, "replace", exc, form)
    return _after(request, new_meter_no, "replace")


@router.post("/meters/{meter_no}/suspend", include_in_schema=False)
def suspend_page(
    request: Request,
    meter_no: str,
    user: Annotated[Principal, Depends(require("meters.edit"))],
    on: Annotated[str, Form(max_length=32)],
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    return _status_page(request, user, meter_no, "suspend", on, reason)


@router.post("/meters/{meter_no}/resume", include_in_schema=False)
def resume_page(
    request: Request,
    meter_no: str,
    user: Annotated[Principal, Depends(require("meters.edit"))],
    on: Annotated[str, Form(max_length=32)],
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    return _status_page(request, user, meter_no, "resume", on, reason)


def _status_page(request: Request, user: Principal, meter_no: str, action: str, on: str, reason: str) -> Response:
    note_object(request, "meter", meter_no)
    with store_of(request).connection() as conn:
        _meter(conn, meter_no, user)
    change = meters.suspend if action == "suspend" else meters.resume
    try:
        change(store_of(request), meter_no, _parse_date(on), reason, actor=user.username, areas=user.area_ids)
    except MeterError as exc:
        return _page_failure(request, user, meter_no, action, exc, {"on": on, "reason": reason})
    return _after(request, meter_no, action)


@router.post("/meters/{meter_no}/remove", include_in_schema=False)
def remove_page(
    request: Request,
    meter_no: str,
    user: Annotated[Principal, Depends(require("meters.edit"))],
    at: Annotated[str, Form(max_length=32)],
    final_reading: Annotated[str, Form(max_length=32)],
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    note_object(request, "meter", meter_no)
    with store_of(request).connection() as conn:
        _meter(conn, meter_no, user)
    try:
        meters.remove(
            store_of(request),
            meter_no,
            _parse_moment(at, _zone(request)),
            final_reading,
            reason,
            actor=user.username,
            areas=user.area_ids,
        )
    except MeterError as exc:
        form = {"at": at, "final_reading": final_reading, "reason": reason}
        return _page_failure(request, user, meter_no, "remove", exc, form)
    return _after(request, meter_no, "remove")


# -- API -------------------------------------------------------------------------------------------------
class MeterItem(BaseModel):
    meter_no: str
    driver: str
    protocol_address: str
    status: str
    valve_state: str
    model: str | None
    account_no: str | None
    customer_name: str | None
    community: str | None
    last_seen_at: datetime | None
    last_volume_m3: str | None = Field(description="Last register reported, m³ (exact decimal)")


class MeterPage(BaseModel):
    items: list[MeterItem]
    page: int
    limit: int
    more: bool = Field(description="Whether the next page has meters")


class AccountRef(BaseModel):
    account_no: str
    status: str | None
    customer_no: str | None
    customer_name: str | None
    address: str | None


class LiveState(BaseModel):
    last_seen_at: datetime
    last_reading_at: datetime | None
    last_volume_m3: str | None
    valve_reported: str | None
    valve_reported_at: datetime | None
    battery_v: str | None
    rssi_dbm: int | None


class AssignmentOut(BaseModel):
    account_no: str
    valid_from: datetime
    valid_to: datetime | None
    first_value: str | None
    final_value: str | None
    note: str


class MeterOut(BaseModel):
    meter_no: str
    model: str | None
    manufacturer: str | None
    driver: str
    protocol_address: str
    status: str
    valve_state: str = Field(description="Valve state in the master data")
    has_valve: bool | None
    prepaid: bool
    sleepy: bool
    usage_type: str | None
    install_date: date | None
    remove_date: date | None
    initial_reading: str
    register_max: str | None
    account: AccountRef | None
    community: str | None
    area: str | None
    state: LiveState | None = Field(description="What the meter last reported")
    assignments: list[AssignmentOut]


class ReplaceOut(BaseModel):
    old: MeterOut
    new: MeterOut


class ReadingOut(BaseModel):
    ts: datetime
    channel: str
    value: str = Field(description="Exact decimal as the meter reported it")
    quality: str
    source: str
    received_at: datetime


class ReadingList(BaseModel):
    meter_no: str
    from_: datetime = Field(serialization_alias="from")
    to: datetime
    readings: list[ReadingOut]
    next_from: datetime | None = Field(description="Where the next page starts when the limit cut the list")


class DailyOut(BaseModel):
    day: date
    consumption_m3: str
    register_m3: str
    readings: int


class DailyList(BaseModel):
    meter_no: str
    from_: date = Field(serialization_alias="from")
    to: date
    days: list[DailyOut]


class EventOut(BaseModel):
    id: int
    ts: datetime
    kind: str
    severity: str
    detail: dict[str, Any]
    source: str
    received_at: datetime
    cleared_at: datetime | None


class EventList(BaseModel):
    meter_no: str
    events: list[EventOut]


ReadingValue = Annotated[
    Decimal | str, Field(description="Register in m³: a non-negative decimal with at most 3 places; send a string")
]


class InstallIn(BaseModel):
    account_no: str = Field(max_length=64)
    install_date: date
    initial_reading: ReadingValue = "0"
    note: str = Field("", max_length=500)


class ReplaceIn(BaseModel):
    new_meter_no: str = Field(max_length=64)
    at: datetime = Field(description="When the meters were exchanged; without an offset: the utility's local time")
    old_final_reading: ReadingValue
    new_first_reading: ReadingValue = "0"
    reason: str = Field("", max_length=500)


class StatusIn(BaseModel):
    date: date
    reason: str = Field(min_length=1, max_length=500)


class RemoveIn(BaseModel):
    at: datetime = Field(description="When the meter came off; without an offset: the utility's local time")
    final_reading: ReadingValue
    reason: str = Field(min_length=1, max_length=500)


def _meter_out(conn: psycopg.Connection[Any], meter: MeterDetail) -> MeterOut:
    account = (
        AccountRef(
            account_no=meter.account_no,
            status=meter.account_status,
            customer_no=meter.customer_no,
            customer_name=meter.customer_name,
            address=meter.address,
        )
        if meter.account_no is not None
        else None
    )
    state = (
        LiveState(
            last_seen_at=meter.last_seen_at,
            last_reading_at=meter.last_reading_at,
            last_volume_m3=_exact(meter.last_volume_m3),
            valve_reported=meter.valve_reported,
            valve_reported_at=meter.valve_reported_at,
            battery_v=_exact(meter.battery_v),
            rssi_dbm=meter.rssi_dbm,
        )
        if meter.last_seen_at is not None
        else None
    )
    return MeterOut(
        meter_no=meter.meter_no,
        model=meter.model,
        manufacturer=meter.manufacturer,
        driver=meter.driver_key,
        protocol_address=meter.protocol_address,
        status=meter.status,
        valve_state=meter.valve_state,
        has_valve=meter.has_valve,
        prepaid=meter.prepaid,
        sleepy=meter.sleepy,
        usage_type=meter.usage_type,
        install_date=meter.install_date,
        remove_date=meter.remove_date,
        initial_reading=format(meter.initial_reading, "f"),
        register_max=_exact(meter.register_max),
        account=account,
        community=meter.community,
        area=meter.area,
        state=state,
        assignments=[
            AssignmentOut(
                account_no=a.account_no,
                valid_from=a.valid_from,
                valid_to=a.valid_to,
                first_value=_exact(a.first_value),
                final_value=_exact(a.final_value),
                note=a.note,
            )
            for a in meters.assignments(conn, meter.id)
        ],
    )


def _read_meter(request: Request, user: Principal, meter_no: str) -> MeterOut:
    with store_of(request).connection() as conn:
        return _meter_out(conn, _meter(conn, meter_no, user))


@router.get("/api/v1/meters", tags=["meters"], response_model=MeterPage)
def api_search(
    request: Request,
    user: Annotated[Principal, Depends(require("meters.view"))],
    q: Annotated[str, Query(max_length=100, description="Part of a meter number, protocol address or account")] = "",
    status: Literal["in_stock", "installed", "suspended", "removed"] | None = None,
    valve_state: Literal["unknown", "open", "closed", "armed", "abnormal"] | None = None,
    driver: Annotated[str | None, Query(max_length=64)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> MeterPage:
    """Search meters by number, protocol address or account number, status, valve state and driver, in
    meter number order. People limited to areas get the meters of their areas only."""
    with store_of(request).connection() as conn:
        rows = meters.search(
            conn,
            q=q,
            status=status,
            valve_state=valve_state,
            driver_key=driver,
            areas=user.area_ids,
            offset=(page - 1) * limit,
            limit=limit + 1,
        )
    items = [
        MeterItem(
            meter_no=r.meter_no,
            driver=r.driver_key,
            protocol_address=r.protocol_address,
            status=r.status,
            valve_state=r.valve_state,
            model=r.model,
            account_no=r.account_no,
            customer_name=r.customer_name,
            community=r.community,
            last_seen_at=r.last_seen_at,
            last_volume_m3=_exact(r.last_volume_m3),
        )
        for r in rows[:limit]
    ]
    return MeterPage(items=items, page=page, limit=limit, more=len(rows) > limit)


@router.get("/api/v1/meters/{meter_no}", tags=["meters"], response_model=MeterOut)
def api_meter(request: Request, meter_no: str, user: Annotated[Principal, Depends(require("meters.view"))]) -> MeterOut:
    """A meter: master data, its account, what it last reported, and its assignments to accounts."""
    return _read_meter(request, user, meter_no)


@router.get("/api/v1/meters/{meter_no}/readings", tags=["meters"], response_model=ReadingList)
def api_readings(
    request: Request,
    meter_no: str,
    user: Annotated[Principal, Depends(require("meters.view"))],
    from_: Annotated[
        datetime | None, Query(alias="from", description="Inclusive; default: 30 days before `to`")
    ] = None,
    to: Annotated[datetime | None, Query(description="Exclusive; default: now")] = None,
    channel: Annotated[str | None, Query(max_length=64, description="e.g. volume_m3; default: all")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> ReadingList:
    """Readings with `from <= ts < to`, oldest first, values as exact decimal strings. Times without an
    offset are the utility's local time. When `limit` cuts the list, `next_from` is where to go on."""
    zone = _zone(request)
    until = _local(to, zone) if to is not None else datetime.now(zone)
    since = _local(from_, zone) if from_ is not None else until - timedelta(days=30)
    if since >= until:
        raise ActionError("invalid", "`from` must be before `to`", 400)
    with store_of(request).connection() as conn:
        meter = _meter(conn, meter_no, user)
        rows = meters.readings(conn, meter.id, since, until, channel=channel, limit=limit + 1)
    return ReadingList(
        meter_no=meter.meter_no,
        from_=since,
        to=until,
        readings=[
            ReadingOut(
                ts=r.ts,
                channel=r.channel,
                value=format(r.value, "f"),
                quality=r.quality,
                source=r.source,
                received_at=r.received_at,
            )
            for r in rows[:limit]
        ],
        next_from=rows[limit].ts if len(rows) > limit else None,
    )


@router.get("/api/v1/meters/{meter_no}/daily", tags=["meters"], response_model=DailyList)
def api_daily(
    request: Request,
    meter_no: str,
    user: Annotated[Principal, Depends(require("meters.view"))],
    from_: Annotated[
        date | None, Query(alias="from", description="First local day; default: 29 days before `to`")
    ] = None,
    to: Annotated[date | None, Query(description="Last local day (inclusive); default: today")] = None,
) -> DailyList:
    """Daily gas use per local day with register readings: the day's last register minus the last
    register before the day (the meter's first day from its first reading), as exact decimal strings."""
    timezone = settings_of(request).timezone
    last = to or datetime.now(ZoneInfo(timezone)).date()
    first = from_ or last - timedelta(days=29)
    if first > last:
        raise ActionError("invalid", "`from` must not be after `to`", 400)
    if (last - first).days > 3660:
        raise ActionError("invalid", "at most ten years at once", 400)
    with store_of(request).connection() as conn:
        meter = _meter(conn, meter_no, user)
        rows = meters.daily_use(conn, meter.id, first, last, timezone)
    return DailyList(
        meter_no=meter.meter_no,
        from_=first,
        to=last,
        days=[
            DailyOut(
                day=d.day,
                consumption_m3=format(d.consumption_m3, "f"),
                register_m3=format(d.register_m3, "f"),
                readings=d.readings,
            )
            for d in rows
        ],
    )


@router.get("/api/v1/meters/{meter_no}/events", tags=["meters"], response_model=EventList)
def api_events(
    request: Request,
    meter_no: str,
    user: Annotated[Principal, Depends(require("meters.view"))],
    open_only: Annotated[bool, Query(alias="open", description="Only events not cleared")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventList:
    """The meter's events (alarms and status changes), newest first, open and cleared."""
    with store_of(request).connection() as conn:
        meter = _meter(conn, meter_no, user)
        rows = meters.events(conn, meter.id, open_only=open_only, limit=limit)
    return EventList(
        meter_no=meter.meter_no,
        events=[
            EventOut(
                id=e.id,
                ts=e.ts,
                kind=e.kind,
                severity=e.severity,
                detail=e.detail,
                source=e.source,
                received_at=e.received_at,
                cleared_at=e.cleared_at,
            )
            for e in rows
        ],
    )


@router.post("/api/v1/meters/{meter_no}/install", tags=["meters"], response_model=MeterOut)
def api_install(
    request: Request, meter_no: str, body: InstallIn, user: Annotated[Principal, Depends(require("meters.edit"))]
) -> MeterOut:
    """装表: install a meter in stock on an account from the start of `install_date` with `initial_reading`;
    an assignment of the meter to the account opens."""
    note_object(request, "meter", meter_no)
    try:
        meters.install(
            store_of(request),
            meter_no,
            body.account_no.strip(),
            body.install_date,
            body.initial_reading,
            actor=user.username,
            areas=user.area_ids,
            note=body.note,
        )
    except MeterError as exc:
        raise _refused(exc) from None
    return _read_meter(request, user, meter_no)


@router.post("/api/v1/meters/{meter_no}/replace", tags=["meters"], response_model=ReplaceOut)
def api_replace(
    request: Request, meter_no: str, body: ReplaceIn, user: Annotated[Principal, Depends(require("meters.edit"))]
) -> ReplaceOut:
    """换表: the old meter comes off its account at `at` with its final register, the new meter (in stock)
    goes on with its first register; the old assignment closes and the new one opens."""
    note_object(request, "meter", meter_no)
    with store_of(request).connection() as conn:
        _meter(conn, meter_no, user)
    try:
        at = _local(body.at, _zone(request))
        _replace(
            request,
            user,
            meter_no,
            body.new_meter_no.strip(),
            at,
            body.old_final_reading,
            body.new_first_reading,
            body.reason,
        )
    except (MeterError, BookError) as exc:
        raise _refused(exc) from None
    return ReplaceOut(
        old=_read_meter(request, user, meter_no), new=_read_meter(request, user, body.new_meter_no.strip())
    )


@router.post("/api/v1/meters/{meter_no}/suspend", tags=["meters"], response_model=MeterOut)
def api_suspend(
    request: Request, meter_no: str, body: StatusIn, user: Annotated[Principal, Depends(require("meters.edit"))]
) -> MeterOut:
    """报停: an installed meter is suspended from `date`, with the reason; it stays on its account."""
    note_object(request, "meter", meter_no)
    try:
        meters.suspend(store_of(request), meter_no, body.date, body.reason, actor=user.username, areas=user.area_ids)
    except MeterError as exc:
        raise _refused(exc) from None
    return _read_meter(request, user, meter_no)


@router.post("/api/v1/meters/{meter_no}/resume", tags=["meters"], response_model=MeterOut)
def api_resume(
    request: Request, meter_no: str, body: StatusIn, user: Annotated[Principal, Depends(require("meters.edit"))]
) -> MeterOut:
    """恢复用气: a suspended meter is installed again from `date`, with the reason."""
    note_object(request, "meter", meter_no)
    try:
        meters.resume(store_of(request), meter_no, body.date, body.reason, actor=user.username, areas=user.area_ids)
    except MeterError as exc:
        raise _refused(exc) from None
    return _read_meter(request, user, meter_no)


@router.post("/api/v1/meters/{meter_no}/remove", tags=["meters"], response_model=MeterOut)
def api_remove(
    request: Request, meter_no: str, body: RemoveIn, user: Annotated[Principal, Depends(require("meters.edit"))]
) -> MeterOut:
    """拆表: the meter comes off its account at `at` with `final_reading`, which closes its assignment."""
    note_object(request, "meter", meter_no)
    try:
        meters.remove(
            store_of(request),
            meter_no,
            _local(body.at, _zone(request)),
            body.final_reading,
            body.reason,
            actor=user.username,
            areas=user.area_ids,
        )
    except MeterError as exc:
        raise _refused(exc) from None
    return _read_meter(request, user, meter_no)
