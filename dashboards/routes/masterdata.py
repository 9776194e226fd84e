"""Master data (基础信息): areas, communities, buildings, usage types, meter categories, manufacturers, meter
models, installers and readers; gas prices by period; installation dispatch (分配安装派工); payment groups
(关联用户); bulk creation from an Excel template (批量建档). Pages under /master and the `/api/v1/master`,
`/api/v1/install-orders` and `/api/v1/account-groups` routes.

The work is done by `meterhub.masterdata` and `meterhub.bulk_create` (one transaction per action, the person
named in the change history); new price periods are checked by `billing.tariff`. Viewing needs
masterdata.view, changes masterdata.edit, bulk creation masterdata.bulk, dispatching install.dispatch, new
price periods billing.tariff.
Every list can be downloaded as Excel (`?format=xlsx`) or CSV (`?format=csv`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, NoReturn
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from billing.tariff import Tariff
from dashboards import i18n
from dashboards.export import table_response
from dashboards.security import Principal
from dashboards.web import (
    ActionError,
    Forbidden,
    FormData,
    FormLists,
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
from meterhub import bulk_create, masterdata
from meterhub.bulk_create import BulkRejected, Issue
from meterhub.masterdata import KINDS, MasterError

router = APIRouter()

TAGS: list[Any] = ["master data"]
EXPORTS = ("xlsx", "csv")
VIEW = "masterdata.view"
EDIT = "masterdata.edit"
BULK = "masterdata.bulk"
TARIFF = "billing.tariff"  # a new price period changes what every account of the type is billed
DISPATCH = "install.dispatch"


# -- helpers -----------------------------------------------------------------------------------------------
def _has(key: str) -> bool:
    return key in i18n.catalogue()


def field_label(request: Request, name: str) -> str:
    key = f"masterdata.field.{name}"
    return _t(request, key) if _has(key) else name


def message_of(request: Request, exc: MasterError) -> str:
    key = f"masterdata.error.{exc.code}"
    try:
        text = _t(request, key, **{k: str(v) for k, v in exc.params.items()}) if _has(key) else exc.message
    except (KeyError, IndexError):
        text = exc.message
    return f"{field_label(request, exc.field)}: {text}" if exc.field else text


def refuse(request: Request, exc: MasterError) -> NoReturn:
    """A refusal that leaves no form to show again: the error page, or the API's error."""
    if exc.code == "area":
        raise Forbidden("area") from exc
    if request.url.path.startswith("/api/"):
        raise ActionError(exc.code, f"{exc.field}: {exc.message}" if exc.field else exc.message, exc.status) from exc
    raise ActionError(exc.code, message_of(request, exc), exc.status) from exc


def _today(request: Request) -> dt.date:
    return dt.datetime.now(ZoneInfo(settings_of(request).timezone)).date()


def _export(request: Request, name: str, headers: list[str], rows: list[list[Any]], fmt: str) -> Response:
    if fmt not in EXPORTS:
        raise ActionError("bad_format", "format: xlsx or csv", 400)
    return table_response(name, headers, rows, fmt, timezone=settings_of(request).timezone)


def _pager(base: str, query: Mapping[str, Any], page: int, has_more: bool) -> tuple[str | None, str | None]:
    q = {k: v for k, v in query.items() if v not in ("", None)}
    prev_url = f"{base}?{urlencode({**q, 'page': page - 1})}" if page > 1 else None
    next_url = f"{base}?{urlencode({**q, 'page': page + 1})}" if has_more else None
    return prev_url, next_url


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def _kind(request: Request, key: str) -> masterdata.Kind:
    try:
        return masterdata.kind_of(key)
    except MasterError as exc:
        refuse(request, exc)


# -- the index ---------------------------------------------------------------------------------------------
@router.get("/master", include_in_schema=False)
def index_page(request: Request, user: Annotated[Principal, Depends(require(VIEW))]) -> Response:
    with store_of(request).connection() as conn:
        counts = {
            key: conn.execute(f"SELECT count(*) FILTER (WHERE active), count(*) FROM {kind.table}").fetchone()
            for key, kind in KINDS.items()
        }
        waiting = masterdata.waiting_accounts(conn, areas=user.area_ids, size=1000)
        open_orders = conn.execute("SELECT count(*) FROM install_order WHERE status = 'assigned'").fetchone()
        group_count = conn.execute("SELECT count(*) FROM account_group").fetchone()
    return render(
        request,
        "masterdata/index.html",
        kinds=list(KINDS),
        counts=counts,
        waiting=len(waiting.rows),
        waiting_more=waiting.has_more,
        open_orders=open_orders[0] if open_orders else 0,
        group_count=group_count[0] if group_count else 0,
        section="index",
    )


# -- gas prices by period ------------------------------------------------------------------------------------
def _validate_tariff(usage_type: str, definition: Mapping[str, Any]) -> None:
    Tariff.from_mapping(usage_type, definition)  # TariffError is a ValueError


def _period_of(form: Mapping[str, str]) -> dict[str, Any]:
    """A price period from the form: a flat price, or up to five tiers (upper bound and price; the last
    tier open)."""
    period: dict[str, Any] = {"effective_from": form.get("effective_from", "").strip()}
    tiers = []
    for n in range(1, 6):
        price = form.get(f"tier{n}_price", "").strip()
        upper = form.get(f"tier{n}_upper", "").strip()
        if price or upper:
            tiers.append({"upper_m3": upper or None, "price": price})
    flat = form.get("price", "").strip()
    if flat and tiers:
        raise MasterError("price_or_tiers", "give either a flat price or tiers", field="price", status=422)
    if flat:
        period["price"] = flat
    elif tiers:
        period["tiers"] = tiers
    else:
        raise MasterError("required", "a price is required", field="price", status=422)
    for key in ("fixed_price", "minimum_charge"):
        if form.get(key, "").strip():
            period[key] = form[key].strip()
    return period


def _carry(view: masterdata.TariffView, period: dict[str, Any]) -> dict[str, Any]:
    """Fixed charges (and the minimum charge) continue from the tariff's last period unless given."""
    if view.periods:
        last = view.periods[-1]
        if "fixed_charges" in last and "fixed_charges" not in period:
            period["fixed_charges"] = last["fixed_charges"]
        if "minimum_charge" in last and "minimum_charge" not in period:
            period["minimum_charge"] = last["minimum_charge"]
    return period


@router.get("/master/prices", include_in_schema=False)
def prices_page(request: Request, user: Annotated[Principal, Depends(require(VIEW))], format: str = "") -> Response:
    with store_of(request).connection() as conn:
        views = masterdata.tariffs(conn)
    if format:
        rows = [
            [
                v.usage_type,
                v.usage_type_name,
                v.cycle,
                p.get("effective_from"),
                _price_text(p),
                p.get("fixed_price"),
                p.get("minimum_charge"),
            ]
            for v in views
            for p in v.periods
        ]
        headers = [
            field_label(request, k)
            for k in ("usage_type", "name", "cycle", "effective_from", "price", "fixed_price", "minimum_charge")
        ]
        return _export(request, "prices", headers, rows, format)
    return render(request, "masterdata/prices.html", views=views, price_text=_price_text, section="prices")


def _price_text(period: Mapping[str, Any]) -> str:
    if "price" in period:
        return str(period["price"])
    parts = []
    lower = "0"
    for tier in period.get("tiers", []):
        upper = tier.get("upper_m3")
        parts.append(
            f"{lower}–{upper} m³: {tier.get('price')}" if upper is not None else f">{lower} m³: {tier.get('price')}"
        )
        lower = str(upper)
    return "; ".join(parts)


def _price_form(
    request: Request, usage_type: str, form: dict[str, str] | None = None, status: int = 200, **extra: Any
) -> Response:
    with store_of(request).connection() as conn:
        try:
            view = masterdata.tariff_of(conn, usage_type)
        except MasterError as exc:
            refuse(request, exc)
    if form is None:
        form = {"effective_from": _today(request).isoformat(), "cycle": view.cycle}
    return render(
        request,
        "masterdata/price.html",
        status,
        v=view,
        form=form,
        price_text=_price_text,
        cycles=("calendar_year", "annual", "month", "bill"),
        section="prices",
        **extra,
    )


@router.get("/master/prices/{usage_type}", include_in_schema=False)
def price_page(
    request: Request, usage_type: str, user: Annotated[Principal, Depends(require(VIEW))], done: str = ""
) -> Response:
    return _price_form(request, usage_type, message_ok=_t(request, "masterdata.done.price") if done else None)


@router.post("/master/prices/{usage_type}", include_in_schema=False)
def price_submit(
    request: Request, usage_type: str, user: Annotated[Principal, Depends(require(TARIFF))], form: FormData
) -> Response:
    note_object(request, "tariff", usage_type)
    try:
        with store_of(request).connection() as conn:
            view = masterdata.tariff_of(conn, usage_type)
        period = _carry(view, _period_of(form))
        masterdata.add_price_period(
            store_of(request),
            user.username,
            usage_type,
            period,
            _validate_tariff,
            cycle=form.get("cycle", "calendar_year"),
        )
    except MasterError as exc:
        if exc.status == 404:
            refuse(request, exc)
        return _price_form(
            request, usage_type, form, exc.status, message_error=message_of(request, exc), error_field=exc.field
        )
    return redirect(f"/master/prices/{usage_type}?done=1")


# -- installation dispatch ------------------------------------------------------------------------------------
def _dispatch_page(request: Request, user: Principal, q: str, page: int, status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        waiting = masterdata.waiting_accounts(conn, q, areas=user.area_ids, page=page)
        counts = masterdata.order_counts(conn, user.area_ids)
        installers = masterdata.options(conn, "installers")
    prev_url, next_url = _pager("/master/dispatch", {"q": q}, page, waiting.has_more)
    return render(
        request,
        "masterdata/dispatch.html",
        status,
        waiting=waiting,
        counts=counts,
        installers=installers,
        q=q,
        prev_url=prev_url,
        next_url=next_url,
        statuses=masterdata.ORDER_STATUSES,
        form=extra.pop("form", {}),
        section="dispatch",
        **extra,
    )


@router.get("/master/dispatch", include_in_schema=False)
def dispatch_page(
    request: Request,
    user: Annotated[Principal, Depends(require(VIEW))],
    q: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
    done: int = 0,
    format: str = "",
) -> Response:
    if format:
        with store_of(request).connection() as conn:
            waiting = masterdata.waiting_accounts(conn, q, areas=user.area_ids, size=0)
        keys = ("account_no", "customer_name", "phone", "address", "community_name", "building", "opened_on")
        rows = [
            [w.account_no, w.customer_name, w.phone, w.address, w.community, w.building, w.opened_on]
            for w in waiting.rows
        ]
        return _export(request, "waiting_accounts", [field_label(request, k) for k in keys], rows, format)
    notice = _t(request, "masterdata.done.assigned", count=done) if done else None
    return _dispatch_page(request, user, q, page, message_ok=notice)


@router.post("/master/dispatch", include_in_schema=False)
def dispatch_submit(
    request: Request, user: Annotated[Principal, Depends(require(DISPATCH))], form: FormLists
) -> Response:
    account_nos = form.get("account_no", [])
    installer = (form.get("installer") or [""])[0]
    note_object(request, "install_order", ",".join(account_nos)[:200] or None)
    try:
        ids = masterdata.assign(
            store_of(request),
            user.username,
            account_nos,
            installer,
            planned_on=(form.get("planned_on") or [""])[0],
            note=(form.get("note") or [""])[0],
            areas=user.area_ids,
        )
    except MasterError as exc:
        if exc.code == "area":
            refuse(request, exc)
        single = {k: v[0] for k, v in form.items() if v}
        return _dispatch_page(
            request,
            user,
            "",
            1,
            exc.status,
            message_error=message_of(request, exc),
            error_field=exc.field,
            form=single,
            chosen=set(account_nos),
        )
    return redirect(f"/master/dispatch?done={len(ids)}")


def _order_rows(request: Request, page: masterdata.Page) -> list[list[Any]]:
    return [
        [
            o.id,
            o.account_no,
            o.customer_name,
            o.phone,
            o.address,
            o.community,
            o.installer_code,
            o.installer_name,
            _t(request, f"masterdata.order_status.{o.status}"),
            o.planned_on,
            o.meter_no,
            o.created_by,
            o.created_at,
            o.closed_at,
            o.cancel_reason,
        ]
        for o in page.rows
    ]


ORDER_HEADERS = (
    "order",
    "account_no",
    "customer_name",
    "phone",
    "address",
    "community",
    "installer",
    "installer_name",
    "status",
    "planned_on",
    "meter_no",
    "created_by",
    "created_at",
    "closed_at",
    "reason",
)


@router.get("/master/dispatch/orders", include_in_schema=False)
def orders_page(
    request: Request,
    user: Annotated[Principal, Depends(require(VIEW))],
    installer: str = "",
    status: str = "",
    q: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
    format: str = "",
) -> Response:
    with store_of(request).connection() as conn:
        try:
            result = masterdata.orders(
                conn,
                installer=installer,
                status=status,
                q=q,
                areas=user.area_ids,
                page=page,
                size=0 if format else masterdata.PAGE_SIZE,
            )
        except MasterError as exc:
            refuse(request, exc)
        installers = masterdata.options(conn, "installers", include=[])
    if format:
        return _export(
            request,
            "install_orders",
            [field_label(request, h) for h in ORDER_HEADERS],
            _order_rows(request, result),
            format,
        )
    query = {"installer": installer, "status": status, "q": q}
    prev_url, next_url = _pager("/master/dispatch/orders", query, page, result.has_more)
    return render(
        request,
        "masterdata/orders.html",
        result=result,
        installers=installers,
        installer=installer,
        status=status,
        q=q,
        statuses=masterdata.ORDER_STATUSES,
        prev_url=prev_url,
        next_url=next_url,
        export_query=urlencode({k: v for k, v in query.items() if v}),
        section="dispatch",
    )


def _order_page(request: Request, user: Principal, order_id: int, status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        try:
            order, events = masterdata.get_order(conn, order_id, user.area_ids)
        except MasterError as exc:
            refuse(request, exc)
        installers = masterdata.options(conn, "installers")
    return render(
        request,
        "masterdata/order.html",
        status,
        o=order,
        events=events,
        installers=installers,
        form=extra.pop("form", {}),
        section="dispatch",
        **extra,
    )


@router.get("/master/dispatch/orders/{order_id}", include_in_schema=False)
def order_page(
    request: Request, order_id: int, user: Annotated[Principal, Depends(require(VIEW))], done: str = ""
) -> Response:
    notice = _t(request, f"masterdata.done.{done}") if done in ("reassigned", "cancelled") else None
    return _order_page(request, user, order_id, message_ok=notice)


@router.post("/master/dispatch/orders/{order_id}/reassign", include_in_schema=False)
def reassign_submit(
    request: Request, order_id: int, user: Annotated[Principal, Depends(require(DISPATCH))], form: FormData
) -> Response:
    note_object(request, "install_order", order_id)
    try:
        masterdata.reassign(
            store_of(request),
            user.username,
            order_id,
            form.get("installer", ""),
            note=form.get("note", ""),
            areas=user.area_ids,
        )
    except MasterError as exc:
        if exc.status in (403, 404):
            refuse(request, exc)
        return _order_page(
            request,
            user,
            order_id,
            exc.status,
            message_error=message_of(request, exc),
            error_field=exc.field,
            form=form,
        )
    return redirect(f"/master/dispatch/orders/{order_id}?done=reassigned")


@router.post("/master/dispatch/orders/{order_id}/cancel", include_in_schema=False)
def cancel_submit(
    request: Request, order_id: int, user: Annotated[Principal, Depends(require(DISPATCH))], form: FormData
) -> Response:
    note_object(request, "install_order", order_id)
    try:
        masterdata.cancel_order(
            store_of(request), user.username, order_id, reason=form.get("reason", ""), areas=user.area_ids
        )
    except MasterError as exc:
        if exc.status in (403, 404):
            refuse(request, exc)
        return _order_page(
            request,
            user,
            order_id,
            exc.status,
            message_error=message_of(request, exc),
            error_field=exc.field,
            form=form,
        )
    return redirect(f"/master/dispatch/orders/{order_id}?done=cancelled")


# -- payment groups (关联用户) ----------------------------------------------------------------------------------
def _groups_page(request: Request, q: str, page: int, status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        result = masterdata.groups(conn, q, page=page)
    prev_url, next_url = _pager("/master/groups", {"q": q}, page, result.has_more)
    return render(
        request,
        "masterdata/groups.html",
        status,
        result=result,
        q=q,
        prev_url=prev_url,
        next_url=next_url,
        form=extra.pop("form", {}),
        section="groups",
        **extra,
    )


@router.get("/master/groups", include_in_schema=False)
def groups_page(
    request: Request,
    user: Annotated[Principal, Depends(require(VIEW))],
    q: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
    format: str = "",
) -> Response:
    if format:
        with store_of(request).connection() as conn:
            result = masterdata.groups(conn, q, size=0)
        rows = [[g.id, g.name, g.members, ", ".join(g.accounts), g.note, g.created_at] for g in result.rows]
        headers = [field_label(request, k) for k in ("group", "name", "members", "accounts", "note", "created_at")]
        return _export(request, "account_groups", headers, rows, format)
    return _groups_page(request, q, page)


def _account_list(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").replace("，", " ").split() if part]


@router.post("/master/groups", include_in_schema=False)
def group_create_submit(
    request: Request, user: Annotated[Principal, Depends(require(EDIT))], form: FormData
) -> Response:
    try:
        group_id = masterdata.create_group(
            store_of(request),
            user.username,
            form.get("name", ""),
            _account_list(form.get("accounts", "")),
            note=form.get("note", ""),
            areas=user.area_ids,
        )
    except MasterError as exc:
        note_object(request, "account_group", None)
        if exc.code == "area":
            refuse(request, exc)
        return _groups_page(
            request, "", 1, exc.status, message_error=message_of(request, exc), error_field=exc.field, form=form
        )
    note_object(request, "account_group", group_id)
    return redirect(f"/master/groups/{group_id}?done=created")


def _group_page(request: Request, group_id: int, status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        try:
            group, members = masterdata.get_group(conn, group_id)
        except MasterError as exc:
            refuse(request, exc)
        entries = masterdata.group_history(conn, group_id)
    form = {"name": group.name, "note": group.note, **(extra.pop("member_form", None) or {})}
    return render(
        request,
        "masterdata/group.html",
        status,
        g=group,
        members=members,
        entries=entries,
        form=form,
        section="groups",
        **extra,
    )


@router.get("/master/groups/{group_id}", include_in_schema=False)
def group_page(
    request: Request, group_id: int, user: Annotated[Principal, Depends(require(VIEW))], done: str = ""
) -> Response:
    done_keys = ("created", "saved", "added", "removed")
    notice = _t(request, f"masterdata.done.group_{done}") if done in done_keys else None
    return _group_page(request, group_id, message_ok=notice)


def _group_action(request: Request, group_id: int, form: dict[str, str], action: Any, done: str) -> Response:
    note_object(request, "account_group", group_id)
    try:
        action()
    except MasterError as exc:
        if exc.status in (403, 404):
            refuse(request, exc)
        return _group_page(
            request,
            group_id,
            exc.status,
            message_error=message_of(request, exc),
            error_field=exc.field,
            member_form=form,
        )
    return redirect(f"/master/groups/{group_id}?done={done}")


@router.post("/master/groups/{group_id}", include_in_schema=False)
def group_edit_submit(
    request: Request, group_id: int, user: Annotated[Principal, Depends(require(EDIT))], form: FormData
) -> Response:
    return _group_action(
        request,
        group_id,
        form,
        lambda: masterdata.edit_group(
            store_of(request), user.username, group_id, name=form.get("name", ""), note=form.get("note", "")
        ),
        "saved",
    )


@router.post("/master/groups/{group_id}/members", include_in_schema=False)
def group_add_submit(
    request: Request, group_id: int, user: Annotated[Principal, Depends(require(EDIT))], form: FormData
) -> Response:
    return _group_action(
        request,
        group_id,
        form,
        lambda: masterdata.add_member(
            store_of(request), user.username, group_id, form.get("account_no", ""), areas=user.area_ids
        ),
        "added",
    )


@router.post("/master/groups/{group_id}/members/remove", include_in_schema=False)
def group_remove_submit(
    request: Request, group_id: int, user: Annotated[Principal, Depends(require(EDIT))], form: FormData
) -> Response:
    return _group_action(
        request,
        group_id,
        form,
        lambda: masterdata.remove_member(
            store_of(request), user.username, group_id, form.get("account_no", ""), areas=user.area_ids
        ),
        "removed",
    )


# -- bulk creation (批量建档) -----------------------------------------------------------------------------------
def issue_text(request: Request, issue: Issue) -> str:
    key = f"masterdata.bulk_error.{issue.code}"
    try:
        return _t(request, key, **issue.params) if _has(key) else issue.message
    except (KeyError, IndexError):
        return issue.message


def _bulk_page(request: Request, status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        recent = bulk_create.imports(conn)
    return render(
        request,
        "masterdata/bulk.html",
        status,
        recent=recent,
        fields=bulk_create.FIELDS,
        issue_text=lambda i: issue_text(request, i),
        label=lambda key: field_label(request, key),
        section="bulk",
        **extra,
    )


@router.get("/master/bulk", include_in_schema=False)
def bulk_page(request: Request, user: Annotated[Principal, Depends(require(BULK))]) -> Response:
    return _bulk_page(request)


def _template(request: Request) -> Response:
    with store_of(request).connection() as conn:
        body = bulk_create.template_bytes(conn)
    return Response(
        body,
        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        headers={"Content-Disposition": "attachment; filename*=UTF-8''bulk_create_template.xlsx"},
    )


@router.get("/master/bulk/template", include_in_schema=False)
def bulk_template(request: Request, user: Annotated[Principal, Depends(require(BULK))]) -> Response:
    return _template(request)


@router.post("/master/bulk", include_in_schema=False)
async def bulk_submit(
    request: Request,
    user: Annotated[Principal, Depends(require(BULK))],
    file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    if file is None or not file.filename:
        note_object(request, "bulk_import", None)
        return _bulk_page(request, 422, message_error=_t(request, "masterdata.bulk.no_file"))
    content = await file.read()
    note_object(request, "bulk_import", file.filename)
    from anyio import to_thread

    try:
        result = await to_thread.run_sync(
            lambda: bulk_create.create_from_file(
                store_of(request),
                user.username,
                content,
                filename=file.filename or "upload.xlsx",
                today=_today(request),
            )
        )
    except BulkRejected as exc:
        return _bulk_page(
            request,
            422,
            issues=exc.issues,
            rejected=file.filename,
            message_error=_t(request, "masterdata.bulk.rejected", count=len(exc.issues)),
        )
    note_object(request, "bulk_import", result.import_id)
    return _bulk_page(
        request,
        200,
        result=result,
        message_ok=_t(
            request, "masterdata.bulk.created", accounts=result.accounts, meters=result.meters, orders=result.orders
        ),
    )


# -- reference rows (generic) ---------------------------------------------------------------------------------
def _choices(request: Request, kind: masterdata.Kind, row: Mapping[str, Any] | None) -> dict[str, Any]:
    """Select lists of the kind's ref and choice fields."""
    out: dict[str, Any] = {}
    with store_of(request).connection() as conn:
        for col in kind.columns:
            if col.kind == "ref":
                if col.ref == "staff_user":
                    out[col.name] = masterdata.staff_options(conn)
                else:
                    ref_key = next(k for k, v in KINDS.items() if v.table == col.ref)
                    out[col.name] = masterdata.options(conn, ref_key)
            elif col.kind == "choice":
                out[col.name] = [(c, _t(request, f"masterdata.category.{c}")) for c in col.choices]
            elif col.kind == "driver":
                out[col.name] = [(d, d) for d in masterdata.known_drivers(conn)]
    return out


def _form_of_row(kind: masterdata.Kind, row: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for col in kind.columns:
        value = row.get(col.name)
        if col.kind == "bool":
            out[col.name] = "1" if value else ""
        else:
            out[col.name] = "" if value is None else str(_plain(value))
    return out


def _values_of_form(kind: masterdata.Kind, form: Mapping[str, str]) -> dict[str, Any]:
    return {
        c.name: (form.get(c.name) in ("1", "on", "true")) if c.kind == "bool" else form.get(c.name, "")
        for c in kind.columns
    }


def _row_page(
    request: Request,
    kind: masterdata.Kind,
    row_id: int | None,
    form: dict[str, str] | None = None,
    status: int = 200,
    **extra: Any,
) -> Response:
    row: dict[str, Any] | None = None
    entries: list[masterdata.HistoryEntry] = []
    if row_id is not None:
        with store_of(request).connection() as conn:
            try:
                row = masterdata.get_row(conn, kind.key, row_id)
            except MasterError as exc:
                refuse(request, exc)
            entries = masterdata.history(conn, kind.table, row_id)
    if form is None:
        form = _form_of_row(kind, row) if row else {}
    return render(
        request,
        "masterdata/row.html",
        status,
        kind=kind,
        row=row,
        form=form,
        entries=entries,
        choices=_choices(request, kind, row),
        label=lambda n: field_label(request, n),
        profiles=masterdata.modbus_profiles(),
        section=kind.key,
        **extra,
    )


def _list_rows(
    request: Request, kind: masterdata.Kind, rows: list[dict[str, Any]]
) -> tuple[list[str], list[list[Any]]]:
    headers = ["ID"] + [field_label(request, c.name) for c in kind.columns] + [field_label(request, "active")]
    out = []
    for r in rows:
        line: list[Any] = [r["id"]]
        for c in kind.columns:
            value = r.get(c.name)
            if c.kind == "ref" and value is not None:
                value = f"{value} {r.get(c.name + '_label') or ''}".strip()
            elif c.kind == "choice" and value:
                value = _t(request, f"masterdata.category.{value}")
            line.append(value)
        line.append(r["active"])
        out.append(line)
    return headers, out


@router.get("/master/{kind_key}", include_in_schema=False)
def kind_page(
    request: Request,
    kind_key: str,
    user: Annotated[Principal, Depends(require(VIEW))],
    q: str = "",
    active: str = "active",
    page: Annotated[int, Query(ge=1)] = 1,
    format: str = "",
    done: str = "",
) -> Response:
    kind = _kind(request, kind_key)
    with store_of(request).connection() as conn:
        try:
            result = masterdata.list_rows(
                conn, kind.key, q, active=active, page=page, size=0 if format else masterdata.PAGE_SIZE
            )
        except MasterError as exc:
            refuse(request, exc)
    if format:
        headers, rows = _list_rows(request, kind, result.rows)
        return _export(request, kind.table, headers, rows, format)
    query = {"q": q, "active": active}
    prev_url, next_url = _pager(f"/master/{kind.key}", query, page, result.has_more)
    return render(
        request,
        "masterdata/list.html",
        kind=kind,
        result=result,
        q=q,
        active=active,
        prev_url=prev_url,
        next_url=next_url,
        export_query=urlencode({k: v for k, v in query.items() if v}),
        label=lambda n: field_label(request, n),
        section=kind.key,
        message_ok=_t(request, "masterdata.done.deactivated") if done == "deactivated" else None,
    )


@router.get("/master/{kind_key}/new", include_in_schema=False)
def new_page(request: Request, kind_key: str, user: Annotated[Principal, Depends(require(EDIT))]) -> Response:
    kind = _kind(request, kind_key)
    defaults = {"category": "residential"} if kind.table == "usage_type" else {}
    return _row_page(request, kind, None, defaults)


@router.post("/master/{kind_key}/new", include_in_schema=False)
def new_submit(
    request: Request, kind_key: str, user: Annotated[Principal, Depends(require(EDIT))], form: FormData
) -> Response:
    kind = _kind(request, kind_key)
    note_object(request, kind.table, form.get("code") or form.get("name") or None)
    try:
        row_id = masterdata.save(store_of(request), user.username, kind.key, _values_of_form(kind, form))
    except MasterError as exc:
        return _row_page(
            request, kind, None, form, exc.status, message_error=message_of(request, exc), error_field=exc.field
        )
    note_object(request, kind.table, row_id)
    return redirect(f"/master/{kind.key}/{row_id}?done=created")


@router.get("/master/{kind_key}/{row_id:int}", include_in_schema=False)
def row_page(
    request: Request, kind_key: str, row_id: int, user: Annotated[Principal, Depends(require(VIEW))], done: str = ""
) -> Response:
    kind = _kind(request, kind_key)
    notice = _t(request, f"masterdata.done.{done}") if done in ("created", "saved", "activated") else None
    return _row_page(request, kind, row_id, message_ok=notice)


@router.post("/master/{kind_key}/{row_id:int}", include_in_schema=False)
def row_submit(
    request: Request, kind_key: str, row_id: int, user: Annotated[Principal, Depends(require(EDIT))], form: FormData
) -> Response:
    kind = _kind(request, kind_key)
    note_object(request, kind.table, row_id)
    try:
        masterdata.save(store_of(request), user.username, kind.key, _values_of_form(kind, form), row_id)
    except MasterError as exc:
        if exc.status == 404:
            refuse(request, exc)
        return _row_page(
            request, kind, row_id, form, exc.status, message_error=message_of(request, exc), error_field=exc.field
        )
    return redirect(f"/master/{kind.key}/{row_id}?done=saved")


@router.post("/master/{kind_key}/{row_id:int}/active", include_in_schema=False)
def active_submit(
    request: Request, kind_key: str, row_id: int, user: Annotated[Principal, Depends(require(EDIT))], form: FormData
) -> Response:
    kind = _kind(request, kind_key)
    note_object(request, kind.table, row_id)
    active = form.get("active") == "1"
    try:
        masterdata.set_active(store_of(request), user.username, kind.key, row_id, active)
    except MasterError as exc:
        refuse(request, exc)
    if active:
        return redirect(f"/master/{kind.key}/{row_id}?done=activated")
    return redirect(f"/master/{kind.key}?done=deactivated")


# -- API ------------------------------------------------------------------------------------------------------
class ListOut(BaseModel):
    items: list[dict[str, Any]]
    page: int
    size: int
    has_more: bool


class ChangeOut(BaseModel):
    field: str
    old: Any
    new: Any


class HistoryOut(BaseModel):
    at: dt.datetime
    actor: str
    op: str = Field(description="insert, update, delete (groups: add, remove for members)")
    changes: list[ChangeOut]


class RowOut(BaseModel):
    item: dict[str, Any]
    history: list[HistoryOut]


def _history_out(entries: list[masterdata.HistoryEntry]) -> list[HistoryOut]:
    return [
        HistoryOut(
            at=e.at, actor=e.actor, op=e.op, changes=[ChangeOut(field=c.field, old=c.old, new=c.new) for c in e.changes]
        )
        for e in entries
    ]


def _item(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in row.items()}


class PeriodIn(BaseModel):
    """A price period as billing.tariff reads it: `price` (flat) or `tiers` (upper_m3 and price; the last tier
    without upper_m3), optionally fixed_price, minimum_charge and fixed_charges (default: those of the last
    period). Prices and amounts are decimal strings."""

    model_config = ConfigDict(extra="forbid")
    effective_from: dt.date
    price: Decimal | None = None
    tiers: list[dict[str, Any]] | None = None
    fixed_price: Decimal | None = None
    minimum_charge: Decimal | None = None
    fixed_charges: list[dict[str, Any]] | None = None
    cycle: str = Field("calendar_year", description="Only for a usage type without a tariff yet")


class AssignIn(BaseModel):
    """分配安装派工: accounts waiting for a meter to an installer (all or none)."""

    model_config = ConfigDict(extra="forbid")
    account_nos: list[str] = Field(min_length=1)
    installer: str = Field(description="Installer code")
    planned_on: dt.date | None = None
    note: str = Field("", max_length=masterdata.MAX_NOTE)


class ReassignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    installer: str = Field(description="Installer code")
    note: str = Field("", max_length=masterdata.MAX_NOTE)


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=masterdata.MAX_NOTE)


class GroupIn(BaseModel):
    """关联用户: a payment group and its first accounts."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=masterdata.MAX_NAME)
    note: str = Field("", max_length=masterdata.MAX_NOTE)
    account_nos: list[str] = []


class GroupPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=masterdata.MAX_NAME)
    note: str = Field("", max_length=masterdata.MAX_NOTE)


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account_no: str = Field(min_length=1)


@router.get("/api/v1/master/prices", tags=TAGS)
def api_prices(request: Request, user: Annotated[Principal, Depends(require(VIEW))]) -> list[dict[str, Any]]:
    """Every usage type with its tariff's price periods (as stored, oldest first) and how far it is billed."""
    with store_of(request).connection() as conn:
        views = masterdata.tariffs(conn)
    return [
        {
            "usage_type": v.usage_type,
            "name": v.usage_type_name,
            "cycle": v.cycle,
            "periods": v.periods,
            "billed_until": _plain(v.billed_until),
        }
        for v in views
    ]


@router.post("/api/v1/master/prices/{usage_type}/periods", tags=TAGS, status_code=201)
def api_add_period(
    request: Request, usage_type: str, body: PeriodIn, user: Annotated[Principal, Depends(require(TARIFF))]
) -> dict[str, Any]:
    """A new price period of the usage type's tariff from `effective_from` on: after the last period, not
    inside a billed period, checked by billing.tariff. Returns the whole new definition."""
    note_object(request, "tariff", usage_type)
    period = {
        k: (format(v, "f") if isinstance(v, Decimal) else v)
        for k, v in body.model_dump(exclude={"cycle"}).items()
        if v is not None
    }
    period["effective_from"] = body.effective_from.isoformat()
    try:
        with store_of(request).connection() as conn:
            view = masterdata.tariff_of(conn, usage_type)
        definition = masterdata.add_price_period(
            store_of(request), user.username, usage_type, _carry(view, period), _validate_tariff, cycle=body.cycle
        )
    except MasterError as exc:
        refuse(request, exc)
    return {"usage_type": usage_type, "definition": definition}


@router.get("/api/v1/master/bulk/template", tags=TAGS)
def api_bulk_template(request: Request, user: Annotated[Principal, Depends(require(BULK))]) -> Response:
    """The bulk-creation template (.xlsx): the sheet to fill with its header and an example row, the valid
    codes, and help on every column."""
    return _template(request)


@router.post("/api/v1/master/bulk", tags=TAGS, status_code=201)
async def api_bulk(
    request: Request,
    user: Annotated[Principal, Depends(require(BULK))],
    file: Annotated[UploadFile, File(description="The filled template (.xlsx)")],
) -> Any:
    """批量建档: create customers, accounts and meters from a filled template in one transaction. A file with
    any problem creates nothing: 422 with `issues`, each with its row, column, code and message."""
    content = await file.read()
    note_object(request, "bulk_import", file.filename)
    from anyio import to_thread

    try:
        result = await to_thread.run_sync(
            lambda: bulk_create.create_from_file(
                store_of(request),
                user.username,
                content,
                filename=file.filename or "upload.xlsx",
                today=_today(request),
            )
        )
    except BulkRejected as exc:
        return JSONResponse(
            {
                "error": "rejected",
                "detail": str(exc),
                "issues": [
                    {
                        "row": i.row,
                        "column": i.column,
                        "cell": f"{i.letter}{i.row}" if i.letter else "",
                        "code": i.code,
                        "message": i.message,
                    }
                    for i in exc.issues
                ],
            },
            status_code=422,
        )
    note_object(request, "bulk_import", result.import_id)
    return {
        "import_id": result.import_id,
        "rows": result.rows,
        "customers": result.customers,
        "accounts": result.accounts,
        "meters": result.meters,
        "orders": result.orders,
        "account_nos": result.account_nos,
    }


@router.get("/api/v1/install-orders/waiting", tags=TAGS)
def api_waiting(
    request: Request,
    user: Annotated[Principal, Depends(require(VIEW))],
    q: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = masterdata.PAGE_SIZE,
) -> dict[str, Any]:
    """Accounts waiting for a meter: open, no meter in use, no open installation order."""
    with store_of(request).connection() as conn:
        result = masterdata.waiting_accounts(conn, q, areas=user.area_ids, page=page, size=size)
    return {
        "items": [{k: _plain(v) for k, v in w.__dict__.items()} for w in result.rows],
        "page": result.page,
        "size": result.size,
        "has_more": result.has_more,
    }


@router.get("/api/v1/install-orders", tags=TAGS)
def api_orders(
    request: Request,
    user: Annotated[Principal, Depends(require(VIEW))],
    installer: str = "",
    status: str = "",
    q: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = masterdata.PAGE_SIZE,
) -> dict[str, Any]:
    """Installation orders (分配安装派工) by installer code and status (assigned, installed, cancelled)."""
    with store_of(request).connection() as conn:
        try:
            result = masterdata.orders(
                conn, installer=installer, status=status, q=q, areas=user.area_ids, page=page, size=size
            )
        except MasterError as exc:
            refuse(request, exc)
    return {
        "items": [{k: _plain(v) for k, v in o.__dict__.items()} for o in result.rows],
        "page": result.page,
        "size": result.size,
        "has_more": result.has_more,
    }


@router.post("/api/v1/install-orders", tags=TAGS, status_code=201)
def api_assign(
    request: Request, body: AssignIn, user: Annotated[Principal, Depends(require(DISPATCH))]
) -> dict[str, Any]:
    """Give accounts waiting for a meter to an installer: one order each, all or none. Installing a meter on
    the account (meter pages, bulk creation) completes its order."""
    note_object(request, "install_order", ",".join(body.account_nos)[:200])
    try:
        ids = masterdata.assign(
            store_of(request),
            user.username,
            body.account_nos,
            body.installer,
            planned_on=body.planned_on,
            note=body.note,
            areas=user.area_ids,
        )
    except MasterError as exc:
        refuse(request, exc)
    return {"order_ids": ids}


def _order_out(request: Request, user: Principal, order_id: int) -> dict[str, Any]:
    with store_of(request).connection() as conn:
        try:
            order, events = masterdata.get_order(conn, order_id, user.area_ids)
        except MasterError as exc:
            refuse(request, exc)
    return {
        **{k: _plain(v) for k, v in order.__dict__.items()},
        "events": [{k: _plain(v) for k, v in e.__dict__.items()} for e in events],
    }


@router.get("/api/v1/install-orders/{order_id}", tags=TAGS)
def api_order(request: Request, order_id: int, user: Annotated[Principal, Depends(require(VIEW))]) -> dict[str, Any]:
    """One installation order with its events (assign, reassign, installed, cancel)."""
    return _order_out(request, user, order_id)


@router.post("/api/v1/install-orders/{order_id}/reassign", tags=TAGS)
def api_reassign(
    request: Request, order_id: int, body: ReassignIn, user: Annotated[Principal, Depends(require(DISPATCH))]
) -> dict[str, Any]:
    """An assigned order goes to another installer."""
    note_object(request, "install_order", order_id)
    try:
        masterdata.reassign(
            store_of(request), user.username, order_id, body.installer, note=body.note, areas=user.area_ids
        )
    except MasterError as exc:
        refuse(request, exc)
    return _order_out(request, user, order_id)


@router.post("/api/v1/install-orders/{order_id}/cancel", tags=TAGS)
def api_cancel(
    request: Request, order_id: int, body: CancelIn, user: Annotated[Principal, Depends(require(DISPATCH))]
) -> dict[str, Any]:
    """An assigned order is cancelled with a reason; the account waits for dispatch again."""
    note_object(request, "install_order", order_id)
    try:
        masterdata.cancel_order(store_of(request), user.username, order_id, reason=body.reason, areas=user.area_ids)
    except MasterError as exc:
        refuse(request, exc)
    return _order_out(request, user, order_id)


def _group_out(request: Request, group_id: int) -> dict[str, Any]:
    with store_of(request).connection() as conn:
        try:
            group, members = masterdata.get_group(conn, group_id)
        except MasterError as exc:
            refuse(request, exc)
        entries = masterdata.group_history(conn, group_id)
    return {
        "id": group.id,
        "name": group.name,
        "note": group.note,
        "created_at": group.created_at.isoformat(),
        "members": [m.__dict__ for m in members],
        "history": [h.model_dump(mode="json") for h in _history_out(entries)],
    }


@router.get("/api/v1/account-groups", tags=TAGS)
def api_groups(
    request: Request,
    user: Annotated[Principal, Depends(require(VIEW))],
    q: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = masterdata.PAGE_SIZE,
) -> dict[str, Any]:
    """关联用户: payment groups whose name, account numbers or customer names contain `q`."""
    with store_of(request).connection() as conn:
        result = masterdata.groups(conn, q, page=page, size=size)
    return {
        "items": [{k: _plain(v) for k, v in g.__dict__.items()} for g in result.rows],
        "page": result.page,
        "size": result.size,
        "has_more": result.has_more,
    }


@router.post("/api/v1/account-groups", tags=TAGS, status_code=201)
def api_group_create(
    request: Request, body: GroupIn, user: Annotated[Principal, Depends(require(EDIT))]
) -> dict[str, Any]:
    """A payment group with its first accounts (an account is in at most one group)."""
    try:
        group_id = masterdata.create_group(
            store_of(request), user.username, body.name, body.account_nos, note=body.note, areas=user.area_ids
        )
    except MasterError as exc:
        note_object(request, "account_group", None)
        refuse(request, exc)
    note_object(request, "account_group", group_id)
    return _group_out(request, group_id)


@router.get("/api/v1/account-groups/{group_id}", tags=TAGS)
def api_group(request: Request, group_id: int, user: Annotated[Principal, Depends(require(VIEW))]) -> dict[str, Any]:
    """A payment group with its accounts and the history of its changes."""
    return _group_out(request, group_id)


@router.patch("/api/v1/account-groups/{group_id}", tags=TAGS)
def api_group_edit(
    request: Request, group_id: int, body: GroupPatch, user: Annotated[Principal, Depends(require(EDIT))]
) -> dict[str, Any]:
    """Rename a payment group or change its note."""
    note_object(request, "account_group", group_id)
    try:
        masterdata.edit_group(store_of(request), user.username, group_id, name=body.name, note=body.note)
    except MasterError as exc:
        refuse(request, exc)
    return _group_out(request, group_id)


@router.post("/api/v1/account-groups/{group_id}/members", tags=TAGS)
def api_group_add(
    request: Request, group_id: int, body: MemberIn, user: Annotated[Principal, Depends(require(EDIT))]
) -> dict[str, Any]:
    """Add an account (in no other group) to a payment group."""
    note_object(request, "account_group", group_id)
    try:
        masterdata.add_member(store_of(request), user.username, group_id, body.account_no, areas=user.area_ids)
    except MasterError as exc:
        refuse(request, exc)
    return _group_out(request, group_id)


@router.delete("/api/v1/account-groups/{group_id}/members/{account_no}", tags=TAGS)
def api_group_remove(
    request: Request, group_id: int, account_no: str, user: Annotated[Principal, Depends(require(EDIT))]
) -> dict[str, Any]:
    """Take an account out of a payment group."""
    note_object(request, "account_group", group_id)
    try:
        masterdata.remove_member(store_of(request), user.username, group_id, account_no, areas=user.area_ids)
    except MasterError as exc:
        refuse(request, exc)
    return _group_out(request, group_id)


@router.get("/api/v1/master/{kind_key}", tags=TAGS)
def api_list(
    request: Request,
    kind_key: str,
    user: Annotated[Principal, Depends(require(VIEW))],
    q: str = "",
    active: str = "active",
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = masterdata.PAGE_SIZE,
) -> ListOut:
    """Reference rows of a kind (areas, communities, buildings, usage-types, categories, manufacturers, models,
    installers, readers) whose code, name or referenced codes contain `q`; `active`: active, inactive, all.
    References are given by code (staff users by username), with `<field>_label` naming them."""
    with store_of(request).connection() as conn:
        try:
            result = masterdata.list_rows(conn, kind_key, q, active=active, page=page, size=size)
        except MasterError as exc:
            refuse(request, exc)
    return ListOut(items=[_item(r) for r in result.rows], page=result.page, size=result.size, has_more=result.has_more)


@router.post("/api/v1/master/{kind_key}", tags=TAGS, status_code=201)
def api_create(
    request: Request, kind_key: str, body: dict[str, Any], user: Annotated[Principal, Depends(require(EDIT))]
) -> RowOut:
    """Create a reference row of a kind; the fields are those the list returns (references by code)."""
    note_object(request, _object_type(kind_key), body.get("code") or body.get("name"))
    try:
        row_id = masterdata.save(store_of(request), user.username, kind_key, body)
    except MasterError as exc:
        refuse(request, exc)
    note_object(request, _object_type(kind_key), row_id)
    return _row_out(request, kind_key, row_id)


def _object_type(kind_key: str) -> str:
    """The operation log's object type of a kind: its table."""
    kind = KINDS.get(kind_key)
    return kind.table if kind else kind_key


def _row_out(request: Request, kind_key: str, row_id: int) -> RowOut:
    with store_of(request).connection() as conn:
        try:
            row = masterdata.get_row(conn, kind_key, row_id)
        except MasterError as exc:
            refuse(request, exc)
        entries = masterdata.history(conn, masterdata.kind_of(kind_key).table, row_id)
    return RowOut(item=_item(row), history=_history_out(entries))


@router.get("/api/v1/master/{kind_key}/{row_id}", tags=TAGS)
def api_row(request: Request, kind_key: str, row_id: int, user: Annotated[Principal, Depends(require(VIEW))]) -> RowOut:
    """One reference row with the history of its changes (who, when, old → new)."""
    return _row_out(request, kind_key, row_id)


@router.patch("/api/v1/master/{kind_key}/{row_id}", tags=TAGS)
def api_edit(
    request: Request,
    kind_key: str,
    row_id: int,
    body: dict[str, Any],
    user: Annotated[Principal, Depends(require(EDIT))],
) -> RowOut:
    """Change the given fields of a reference row; fields left out stay as they are."""
    note_object(request, _object_type(kind_key), row_id)
    try:
        masterdata.save(store_of(request), user.username, kind_key, body, row_id)
    except MasterError as exc:
        refuse(request, exc)
    return _row_out(request, kind_key, row_id)


@router.post("/api/v1/master/{kind_key}/{row_id}/deactivate", tags=TAGS)
def api_deactivate(
    request: Request, kind_key: str, row_id: int, user: Annotated[Principal, Depends(require(EDIT))]
) -> RowOut:
    """Deactivate a reference row: no longer offered for new records; the records naming it keep it."""
    note_object(request, _object_type(kind_key), row_id)
    try:
        masterdata.set_active(store_of(request), user.username, kind_key, row_id, False)
    except MasterError as exc:
        refuse(request, exc)
    return _row_out(request, kind_key, row_id)


@router.post("/api/v1/master/{kind_key}/{row_id}/activate", tags=TAGS)
def api_activate(
    request: Request, kind_key: str, row_id: int, user: Annotated[Principal, Depends(require(EDIT))]
) -> RowOut:
    """Activate a deactivated reference row again."""
    note_object(request, _object_type(kind_key), row_id)
    try:
        masterdata.set_active(store_of(request), user.username, kind_key, row_id, True)
    except MasterError as exc:
        refuse(request, exc)
    return _row_out(request, kind_key, row_id)
