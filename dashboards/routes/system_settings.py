"""System settings (参数配置): company name, logo and contact; the menu's display names and order per
language; print templates for receipts and invoices with a print preview. Pages under /settings and
`/api/v1/settings`, `/api/v1/print-templates`.

Everything here needs settings.edit, except the logo and a template's stylesheet, which every signed-in
user's pages load. Values are stored by `meterhub.system_settings`; each change is one transaction and
an entry of the operation log.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, NoReturn
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Body, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from dashboards import i18n
from dashboards.export import table_response
from dashboards.security import Principal
from dashboards.web import (
    NAV,
    ActionError,
    FormData,
    note_object,
    note_operation,
    redirect,
    render,
    require,
    settings_of,
    store_of,
    templates,
)
from dashboards.web import (
    text as _t,
)
from meterhub import system_settings as ss
from meterhub.system_settings import PrintTemplate, SettingsError, TemplateInput

router = APIRouter()
TAGS: list[Any] = ["settings"]
EDIT = "settings.edit"


def message_of(request: Request, exc: SettingsError) -> str:
    key = f"settings.error.{exc.code}"
    text = _t(request, key) if key in i18n.catalogue() else exc.message
    if not exc.field:
        return text
    base = exc.field.split(".")[-1] if exc.field.split(".")[0] in ss.FIELDS["receipt"] + ss.FIELDS["invoice"] else ""
    label_key = f"settings.field.{exc.field}" if not base else f"settings.field.{exc.field.split('.')[0]}"
    label = _t(request, label_key) if label_key in i18n.catalogue() else exc.field
    return f"{label}{(' · ' + base) if base else ''}: {text}"


def api_refusal(exc: SettingsError) -> NoReturn:
    raise ActionError(exc.code, f"{exc.field}: {exc.message}" if exc.field else exc.message, exc.status) from exc


def page_refusal(request: Request, exc: SettingsError) -> NoReturn:
    raise ActionError(exc.code, message_of(request, exc), exc.status) from exc


# -- the settings page: basic parameters, logo, kiosk limits ----------------------------------------------
def _index(request: Request, status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        values = ss.load(conn)
        logo = ss.logo(conn)
        counts = conn.execute("SELECT kind, count(*) FROM print_template GROUP BY kind").fetchall()
    return render(
        request,
        "settings/index.html",
        status,
        values={**values, **extra.pop("submitted", {})},
        logo=logo,
        template_counts=dict(counts),
        basic_keys=ss.BASIC_KEYS,
        kiosk_keys=ss.KIOSK_KEYS,
        definitions=ss.DEFINITIONS,
        logo_max_kib=ss.LOGO_MAX_BYTES // 1024,
        **extra,
    )


@router.get("/settings", include_in_schema=False)
def settings_page(request: Request, user: Annotated[Principal, Depends(require(EDIT))], done: str = "") -> Response:
    return _index(request, message_ok=_t(request, "common.saved") if done else None)


def _save_group(request: Request, user: Principal, form: dict[str, str], keys: tuple[str, ...]) -> Response:
    submitted: dict[str, Any] = {}
    for key in keys:
        name = key.replace(".", "__")
        if ss.DEFINITIONS[key].type == "bool":
            submitted[key] = name in form
        else:
            submitted[key] = form.get(name, "")
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            changes = ss.save(conn, submitted, user.username)
    except SettingsError as exc:
        return _index(request, 400, message_error=message_of(request, exc), submitted=submitted)
    note_operation(request, user.username, changes={k: {"old": o, "new": n} for k, (o, n) in changes.items()})
    note_object(request, "system_setting", ",".join(changes) or "-")
    return redirect("/settings?done=saved")


@router.post("/settings/basic", include_in_schema=False)
def save_basic(request: Request, user: Annotated[Principal, Depends(require(EDIT))], form: FormData) -> Response:
    return _save_group(request, user, form, ss.BASIC_KEYS)


@router.post("/settings/kiosk-limits", include_in_schema=False)
def save_kiosk_limits(request: Request, user: Annotated[Principal, Depends(require(EDIT))], form: FormData) -> Response:
    return _save_group(request, user, form, ss.KIOSK_KEYS)


async def _read_upload(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    return data


@router.post("/settings/logo", include_in_schema=False)
async def upload_logo(
    request: Request, user: Annotated[Principal, Depends(require(EDIT))], logo: Annotated[UploadFile, File()]
) -> Response:
    data = await _read_upload(logo, ss.LOGO_MAX_BYTES)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            content_type = ss.set_logo(conn, data, logo.filename or "logo", user.username)
    except SettingsError as exc:
        return _index(request, 400, message_error=message_of(request, exc))
    note_operation(request, user.username, logo={"size": len(data), "type": content_type})
    note_object(request, "system_setting", "company.logo")
    return redirect("/settings?done=logo")


@router.post("/settings/logo/delete", include_in_schema=False)
def delete_logo(request: Request, user: Annotated[Principal, Depends(require(EDIT))]) -> Response:
    with store_of(request).transaction(actor=user.username) as conn:
        removed = ss.clear_logo(conn)
    note_operation(request, user.username, removed=removed)
    note_object(request, "system_setting", "company.logo")
    return redirect("/settings?done=logo")


@router.get("/settings/logo", include_in_schema=False)
def logo_image(request: Request, user: Annotated[Principal, Depends(require())]) -> Response:
    with store_of(request).connection() as conn:
        found = ss.logo(conn)
    if found is None:
        raise ActionError("not_found", "no logo", 404)
    data, content_type, _at = found
    return Response(data, media_type=content_type, headers={"Cache-Control": "private, max-age=86400"})


# -- menu names and order -----------------------------------------------------------------------------------
def menu_keys() -> list[str]:
    """The menu's items (in shipped order), then the pages whose titles can be renamed."""
    texts = i18n.catalogue()
    pages = sorted(
        key
        for key, entry in texts.items()
        if key.endswith(".title") and "{" not in entry["en"] and key not in ("login.title",)
    )
    return [item.key for item in NAV] + pages


def _menu_page(request: Request, status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        look = ss.console_look(conn)
    nav_keys = [item.key for item in NAV]
    ordered = look.ordered(nav_keys)
    rows = [
        {
            "key": key,
            "position": (ordered.index(key) + 1) * 10 if key in nav_keys else None,
            "zh": i18n.translate("zh", key),
            "en": i18n.translate("en", key),
            "custom_zh": look.label("zh", key) or "",
            "custom_en": look.label("en", key) or "",
            "href": next((item.href for item in NAV if item.key == key), None),
        }
        for key in menu_keys()
    ]
    rows.sort(key=lambda r: (r["position"] is None, r["position"] or 0))
    return render(request, "settings/menu.html", status, rows=rows, **extra)


@router.get("/settings/menu", include_in_schema=False)
def menu_page(request: Request, user: Annotated[Principal, Depends(require(EDIT))], done: str = "") -> Response:
    return _menu_page(
        request, message_ok=_t(request, f"settings.menu.done_{done}") if done in ("saved", "reset") else None
    )


@router.post("/settings/menu", include_in_schema=False)
def save_menu(request: Request, user: Annotated[Principal, Depends(require(EDIT))], form: FormData) -> Response:
    keys = menu_keys()
    nav_keys = {item.key for item in NAV}
    order = {key: form.get(f"order__{key}", "") for key in keys if key in nav_keys}
    labels = {lang: {key: form.get(f"{lang}__{key}", "") for key in keys} for lang in ss.LANGUAGES}
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            changes = ss.save_menu(conn, keys, order, labels, user.username)
    except SettingsError as exc:
        return _menu_page(request, 400, message_error=message_of(request, exc))
    note_operation(request, user.username, changes={k: {"old": o, "new": n} for k, (o, n) in changes.items()})
    note_object(request, "system_setting", "menu")
    return redirect("/settings/menu?done=saved")


@router.post("/settings/menu/reset", include_in_schema=False)
def reset_menu(request: Request, user: Annotated[Principal, Depends(require(EDIT))]) -> Response:
    with store_of(request).transaction(actor=user.username) as conn:
        removed = ss.reset_menu(conn)
    note_operation(request, user.username, removed=removed)
    note_object(request, "system_setting", "menu")
    return redirect("/settings/menu?done=reset")


# -- print templates -------------------------------------------------------------------------------------------
def _template_url(template_id: int, suffix: str = "") -> str:
    return f"/settings/print-templates/{template_id}{suffix}"


@router.get("/settings/print-templates", include_in_schema=False)
def templates_page(
    request: Request,
    user: Annotated[Principal, Depends(require(EDIT))],
    kind: Annotated[str, Query(max_length=20)] = "",
    q: Annotated[str, Query(max_length=100)] = "",
    format: Annotated[str, Query(pattern="^(html|xlsx|csv)$")] = "html",
) -> Response:
    with store_of(request).connection() as conn:
        found = [t for t in ss.templates(conn, kind or None) if q.strip().lower() in (t.name + t.printer_name).lower()]
    if format != "html":
        headers = [
            "settings.tpl.kind",
            "settings.tpl.name",
            "settings.field.paper_width_mm",
            "settings.field.paper_height_mm",
            "settings.field.font_size_pt",
            "settings.field.printer_name",
            "settings.tpl.default",
            "settings.tpl.fields",
            "settings.tpl.updated_by",
            "settings.tpl.updated_at",
        ]
        rows = [
            [
                _t(request, f"settings.kind.{t.kind}"),
                t.name,
                t.paper_width_mm,
                t.paper_height_mm,
                t.font_size_pt,
                t.printer_name,
                t.is_default,
                len(t.fields),
                t.updated_by,
                t.updated_at,
            ]
            for t in found
        ]
        return table_response(
            "print_templates", [_t(request, h) for h in headers], rows, format, timezone=settings_of(request).timezone
        )
    query = {"kind": kind, "q": q}
    return render(
        request,
        "settings/templates.html",
        templates=found,
        kind=kind,
        q=q,
        kinds=ss.KINDS,
        export_url=f"/settings/print-templates?{urlencode({**query, 'format': 'xlsx'})}",
    )


def _placements_of(template: PrintTemplate | None, kind: str) -> dict[str, dict[str, Any]]:
    placed = {p.field: p for p in template.fields} if template else {}
    return {
        name: {
            "on": name in placed,
            "x": placed[name].x if name in placed else "",
            "y": placed[name].y if name in placed else "",
            "w": placed[name].w if name in placed else "60",
            "size": (placed[name].size or "") if name in placed else "",
        }
        for name in ss.FIELDS[kind]
    }


def _template_form(
    request: Request, template: PrintTemplate | None, kind: str, status: int = 200, **extra: Any
) -> Response:
    return render(
        request,
        "settings/template.html",
        status,
        tpl=template,
        kind=kind,
        placements=extra.pop("placements", None) or _placements_of(template, kind),
        presets=ss.PAPER_PRESETS,
        **extra,
    )


def _input_of(form: dict[str, str], kind: str) -> TemplateInput:
    fields = {
        name: {part: form.get(f"{name}__{part}", "") for part in ("x", "y", "w", "size")}
        for name in ss.FIELDS.get(kind, ())
        if form.get(f"{name}__on")
    }
    return TemplateInput(
        kind=kind,
        name=form.get("name", ""),
        paper_width_mm=form.get("paper_width_mm", ""),
        paper_height_mm=form.get("paper_height_mm", ""),
        font_size_pt=form.get("font_size_pt", ""),
        printer_name=form.get("printer_name", ""),
        fields=fields,
    )


def _submitted_placements(form: dict[str, str], kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "on": bool(form.get(f"{name}__on")),
            **{p: form.get(f"{name}__{p}", "") for p in ("x", "y", "w", "size")},
        }
        for name in ss.FIELDS.get(kind, ())
    }


@router.get("/settings/print-templates/new", include_in_schema=False)
def new_template_page(
    request: Request,
    user: Annotated[Principal, Depends(require(EDIT))],
    kind: Annotated[str, Query(pattern="^(receipt|invoice)$")] = "receipt",
) -> Response:
    with store_of(request).connection() as conn:
        base = ss.default_template(conn, kind)
    return _template_form(request, None, kind, placements=_placements_of(base, kind), base=base)


@router.post("/settings/print-templates", include_in_schema=False)
def create_template(request: Request, user: Annotated[Principal, Depends(require(EDIT))], form: FormData) -> Response:
    kind = form.get("kind", "")
    if kind not in ss.KINDS:
        raise ActionError("unknown_kind", _t(request, "settings.error.unknown_kind"))
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            template_id = ss.save_template(conn, None, _input_of(form, kind), user.username)
    except SettingsError as exc:
        return _template_form(
            request,
            None,
            kind,
            400,
            message_error=message_of(request, exc),
            values=form,
            placements=_submitted_placements(form, kind),
        )
    note_object(request, "print_template", template_id)
    return redirect(_template_url(template_id, "?done=saved"))


def _load_template(request: Request, template_id: int) -> PrintTemplate:
    with store_of(request).connection() as conn:
        try:
            return ss.get_template(conn, template_id)
        except SettingsError as exc:
            page_refusal(request, exc)


@router.get("/settings/print-templates/{template_id}", include_in_schema=False)
def template_page(
    request: Request, template_id: int, user: Annotated[Principal, Depends(require(EDIT))], done: str = ""
) -> Response:
    template = _load_template(request, template_id)
    return _template_form(request, template, template.kind, message_ok=_t(request, "common.saved") if done else None)


@router.post("/settings/print-templates/{template_id}", include_in_schema=False)
def save_template(
    request: Request, template_id: int, user: Annotated[Principal, Depends(require(EDIT))], form: FormData
) -> Response:
    template = _load_template(request, template_id)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            ss.save_template(conn, template_id, _input_of(form, template.kind), user.username)
    except SettingsError as exc:
        return _template_form(
            request,
            template,
            template.kind,
            400,
            message_error=message_of(request, exc),
            values=form,
            placements=_submitted_placements(form, template.kind),
        )
    note_object(request, "print_template", template_id)
    return redirect(_template_url(template_id, "?done=saved"))


@router.post("/settings/print-templates/{template_id}/default", include_in_schema=False)
def make_default_template(
    request: Request, template_id: int, user: Annotated[Principal, Depends(require(EDIT))]
) -> Response:
    note_object(request, "print_template", template_id)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            ss.make_default(conn, template_id, user.username)
    except SettingsError as exc:
        page_refusal(request, exc)
    return redirect(_template_url(template_id, "?done=default"))


@router.post("/settings/print-templates/{template_id}/delete", include_in_schema=False)
def delete_template(request: Request, template_id: int, user: Annotated[Principal, Depends(require(EDIT))]) -> Response:
    note_object(request, "print_template", template_id)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            ss.delete_template(conn, template_id)
    except SettingsError as exc:
        page_refusal(request, exc)
    return redirect("/settings/print-templates")


@router.get("/settings/print-templates/{template_id}/print.css", include_in_schema=False)
def template_stylesheet(request: Request, template_id: int, user: Annotated[Principal, Depends(require())]) -> Response:
    template = _load_template(request, template_id)
    return Response(
        ss.stylesheet(template), media_type="text/css; charset=utf-8", headers={"Cache-Control": "no-cache"}
    )


# -- filling a template with a real receipt or invoice ----------------------------------------------------------
def _company(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    return ss.load(conn, ss.BASIC_KEYS)


def _local(request: Request, value: dt.datetime) -> str:
    return value.astimezone(ZoneInfo(settings_of(request).timezone)).strftime("%Y-%m-%d %H:%M")


def receipt_values(request: Request, conn: psycopg.Connection[Any], user: Principal, receipt_no: str) -> dict[str, Any]:
    """What a receipt prints, from the counter's own view of it (areas and all checked there)."""
    from dashboards.routes.billing_counter import load_receipt

    receipt = load_receipt(conn, user, receipt_no)
    company = _company(conn)
    language = "zh"
    return {
        "company_name": company["company.name"],
        "hotline": company["company.hotline"],
        "company_phone": company["company.phone"],
        "company_address": company["company.address"],
        "title": i18n.translate(language, "billing.receipt.heading"),
        "receipt_no": receipt.receipt_no,
        "paid_at": _local(request, receipt.paid_at),
        "account_no": receipt.payer.account_no,
        "customer_name": receipt.payer.customer_name,
        "address": receipt.payer.address or "",
        "amount": f"{receipt.amount:,.2f}",
        "amount_words": ss.amount_in_words(receipt.amount),
        "method": i18n.translate(language, f"billing.method.{receipt.method}") if receipt.method else "",
        "channel": i18n.translate(language, f"billing.channel.{receipt.channel}"),
        "cashier": receipt.cashier,
        "note": receipt.note,
        "reprint_mark": receipt.mark,
    }


def invoice_values(conn: psycopg.Connection[Any], user: Principal, invoice_no: str) -> dict[str, Any]:
    row = conn.execute(
        """SELECT i.invoice_no, i.issued_on, i.amount, i.cashier, a.account_no, c.name, a.address, r.receipt_no,
                  co.area_id
             FROM invoice i JOIN payment p ON p.id = i.payment_id JOIN account a ON a.id = p.account_id
             JOIN customer c ON c.id = a.customer_id LEFT JOIN community co ON co.id = a.community_id
             LEFT JOIN receipt r ON r.payment_id = p.id
            WHERE i.invoice_no = %s""",
        [invoice_no],
    ).fetchone()
    if row is None:
        raise ActionError("not_found", f"no invoice {invoice_no}", 404)
    if not user.covers_area(row[8]):
        raise ActionError("area", "outside your areas", 403)
    company = _company(conn)
    amount = Decimal(row[2])
    return {
        "company_name": company["company.name"],
        "hotline": company["company.hotline"],
        "company_phone": company["company.phone"],
        "company_address": company["company.address"],
        "title": "燃气费发票",
        "invoice_no": row[0],
        "issued_on": row[1].isoformat(),
        "amount": f"{amount:,.2f}",
        "amount_words": ss.amount_in_words(amount),
        "cashier": row[3],
        "account_no": row[4],
        "customer_name": row[5],
        "address": row[6],
        "receipt_no": row[7] or "",
        "item": "管道天然气",
    }


def print_page(
    request: Request, template: PrintTemplate, values: dict[str, Any], *, back_url: str, sample: bool
) -> Response:
    """The print page of a template filled with `values`: a sheet of the paper's size with every field placed
    by the template's stylesheet (no inline styles, no outside resources)."""
    return render(
        request,
        "settings/print.html",
        tpl=template,
        filled=ss.fill(template, values),
        sample=sample,
        back_url=back_url,
        css_url=_template_url(template.id, f"/print.css?v={int(template.updated_at.timestamp())}"),
    )


@router.get("/settings/print-templates/{template_id}/preview", include_in_schema=False)
def template_preview(
    request: Request,
    template_id: int,
    user: Annotated[Principal, Depends(require(EDIT))],
    receipt_no: Annotated[str, Query(max_length=64)] = "",
    invoice_no: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    template = _load_template(request, template_id)
    with store_of(request).connection() as conn:
        if template.kind == "receipt" and receipt_no.strip():
            values = receipt_values(request, conn, user, receipt_no.strip())
        elif template.kind == "invoice" and invoice_no.strip():
            values = invoice_values(conn, user, invoice_no.strip())
        else:
            values = ss.sample_values(template.kind, _company(conn))
    sample = not (receipt_no.strip() or invoice_no.strip())
    return print_page(request, template, values, back_url=_template_url(template_id), sample=sample)


def receipt_print_page(request: Request, user: Principal, receipt_no: str) -> Response:
    """A receipt on the default receipt template (the counter's "print on the form")."""
    with store_of(request).connection() as conn:
        template = ss.default_template(conn, "receipt")
        if template is None:
            raise ActionError("no_template", _t(request, "settings.error.no_template"), 404)
        values = receipt_values(request, conn, user, receipt_no)
    return print_page(
        request, template, values, back_url=f"/counter/receipts/{quote(receipt_no, safe='')}", sample=False
    )


# -- API --------------------------------------------------------------------------------------------------------
class SettingsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    values: dict[str, str | int | bool] = Field(description="Keys of text, number and yes/no settings with new values.")


def _public_values(values: dict[str, Any]) -> dict[str, Any]:
    return {key: values[key] for key in values if ss.DEFINITIONS[key].type != "image"}


@router.get("/api/v1/settings", tags=TAGS)
def api_settings(request: Request, user: Annotated[Principal, Depends(require(EDIT))]) -> dict[str, Any]:
    """Every system setting with its value (the stored one or the default) and type; the logo as whether set."""
    with store_of(request).connection() as conn:
        values = ss.load(conn)
        logo = ss.logo(conn)
    return {
        "values": _public_values(values),
        "types": {key: d.type for key, d in ss.DEFINITIONS.items()},
        "logo": {"content_type": logo[1], "updated_at": logo[2].isoformat()} if logo else None,
    }


@router.patch("/api/v1/settings", tags=TAGS)
def api_save_settings(
    request: Request, user: Annotated[Principal, Depends(require(EDIT))], body: Annotated[SettingsBody, Body()]
) -> dict[str, Any]:
    """Change text, number and yes/no settings (company name, contact, kiosk limits): all or none."""
    editable = {k for k, d in ss.DEFINITIONS.items() if d.type in ("text", "int", "bool")}
    bad = [k for k in body.values if k not in editable]
    if bad:
        raise ActionError("not_editable", f"{bad[0]}: not a text, number or yes/no setting")
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            changes = ss.save(conn, body.values, user.username)
            values = ss.load(conn)
    except SettingsError as exc:
        api_refusal(exc)
    note_operation(request, user.username, changes={k: {"old": o, "new": n} for k, (o, n) in changes.items()})
    note_object(request, "system_setting", ",".join(changes) or "-")
    return {"changed": sorted(changes), "values": _public_values(values)}


class MenuBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order: list[str] = Field(default_factory=list, description="Menu keys (nav.*) in the order wanted.")
    labels: dict[str, dict[str, str]] = Field(
        default_factory=dict, description='Display names per language: {"zh": {"nav.customers": "用户档案"}}.'
    )


@router.get("/api/v1/settings/menu", tags=TAGS)
def api_menu(request: Request, user: Annotated[Principal, Depends(require(EDIT))]) -> dict[str, Any]:
    """The menu's items in their order, and every renameable key with its shipped and custom names."""
    with store_of(request).connection() as conn:
        look = ss.console_look(conn)
    return {
        "order": look.ordered([item.key for item in NAV]),
        "items": [
            {
                "key": key,
                "shipped": {lang: i18n.translate(lang, key) for lang in ss.LANGUAGES},
                "custom": {lang: look.label(lang, key) for lang in ss.LANGUAGES if look.label(lang, key)},
            }
            for key in menu_keys()
        ],
    }


@router.put("/api/v1/settings/menu", tags=TAGS)
def api_save_menu(
    request: Request, user: Annotated[Principal, Depends(require(EDIT))], body: Annotated[MenuBody, Body()]
) -> dict[str, Any]:
    """Replace the menu's order and custom names (keys left out: shipped order after the named ones, shipped names)."""
    keys = menu_keys()
    nav_keys = [item.key for item in NAV]
    unknown = [k for k in body.order if k not in nav_keys]
    if unknown:
        raise ActionError("unknown_key", f"{unknown[0]}: not a menu item")
    order = {key: str(index * 10) for index, key in enumerate(body.order, start=1)}
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            changes = ss.save_menu(conn, keys, order, body.labels, user.username)
    except SettingsError as exc:
        api_refusal(exc)
    note_operation(request, user.username, changes={k: {"old": o, "new": n} for k, (o, n) in changes.items()})
    note_object(request, "system_setting", "menu")
    return {"changed": sorted(changes)}


@router.delete("/api/v1/settings/menu", tags=TAGS)
def api_reset_menu(request: Request, user: Annotated[Principal, Depends(require(EDIT))]) -> dict[str, Any]:
    """Back to the shipped menu names and order."""
    with store_of(request).transaction(actor=user.username) as conn:
        removed = ss.reset_menu(conn)
    note_object(request, "system_setting", "menu")
    return {"reset": removed > 0}


def template_json(template: PrintTemplate) -> dict[str, Any]:
    return {
        "id": template.id,
        "kind": template.kind,
        "name": template.name,
        "paper_width_mm": str(template.paper_width_mm),
        "paper_height_mm": str(template.paper_height_mm),
        "font_size_pt": str(template.font_size_pt),
        "printer_name": template.printer_name,
        "is_default": template.is_default,
        "fields": [
            {
                "field": p.field,
                "x_mm": str(p.x),
                "y_mm": str(p.y),
                "width_mm": str(p.w),
                "font_size_pt": None if p.size is None else str(p.size),
            }
            for p in template.fields
        ],
        "updated_by": template.updated_by,
        "updated_at": template.updated_at.isoformat(),
    }


class PlacementBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str
    x_mm: Decimal
    y_mm: Decimal
    width_mm: Decimal = Decimal(60)
    font_size_pt: Decimal | None = None


class TemplateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(description="receipt or invoice")
    name: str
    paper_width_mm: Decimal
    paper_height_mm: Decimal
    font_size_pt: Decimal = Decimal("10.5")
    printer_name: str = ""
    fields: list[PlacementBody]

    def as_input(self) -> TemplateInput:
        return TemplateInput(
            kind=self.kind,
            name=self.name,
            paper_width_mm=str(self.paper_width_mm),
            paper_height_mm=str(self.paper_height_mm),
            font_size_pt=str(self.font_size_pt),
            printer_name=self.printer_name,
            fields={
                p.field: {
                    "x": str(p.x_mm),
                    "y": str(p.y_mm),
                    "w": str(p.width_mm),
                    "size": "" if p.font_size_pt is None else str(p.font_size_pt),
                }
                for p in self.fields
            },
        )


@router.get("/api/v1/print-templates", tags=TAGS)
def api_templates(
    request: Request,
    user: Annotated[Principal, Depends(require(EDIT))],
    kind: Annotated[str, Query(pattern="^(|receipt|invoice)$")] = "",
) -> dict[str, Any]:
    """Print templates for receipts and invoices (paper, font size, target printer, field positions in mm)."""
    with store_of(request).connection() as conn:
        return {"items": [template_json(t) for t in ss.templates(conn, kind or None)]}


@router.post("/api/v1/print-templates", tags=TAGS, status_code=201)
def api_create_template(
    request: Request, user: Annotated[Principal, Depends(require(EDIT))], body: Annotated[TemplateBody, Body()]
) -> dict[str, Any]:
    """A new print template; the first of its kind becomes the default."""
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            template_id = ss.save_template(conn, None, body.as_input(), user.username)
            template = ss.get_template(conn, template_id)
    except SettingsError as exc:
        api_refusal(exc)
    note_object(request, "print_template", template_id)
    return template_json(template)


@router.get("/api/v1/print-templates/{template_id}", tags=TAGS)
def api_template(
    request: Request, template_id: int, user: Annotated[Principal, Depends(require(EDIT))]
) -> dict[str, Any]:
    """One print template."""
    try:
        with store_of(request).connection() as conn:
            return template_json(ss.get_template(conn, template_id))
    except SettingsError as exc:
        api_refusal(exc)


@router.put("/api/v1/print-templates/{template_id}", tags=TAGS)
def api_save_template(
    request: Request,
    template_id: int,
    user: Annotated[Principal, Depends(require(EDIT))],
    body: Annotated[TemplateBody, Body()],
) -> dict[str, Any]:
    """Replace a print template (its kind stays)."""
    note_object(request, "print_template", template_id)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            ss.save_template(conn, template_id, body.as_input(), user.username)
            template = ss.get_template(conn, template_id)
    except SettingsError as exc:
        api_refusal(exc)
    return template_json(template)


@router.post("/api/v1/print-templates/{template_id}/default", tags=TAGS)
def api_default_template(
    request: Request, template_id: int, user: Annotated[Principal, Depends(require(EDIT))]
) -> dict[str, Any]:
    """Make this template the one printed for its kind."""
    note_object(request, "print_template", template_id)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            ss.make_default(conn, template_id, user.username)
            template = ss.get_template(conn, template_id)
    except SettingsError as exc:
        api_refusal(exc)
    return template_json(template)


@router.delete("/api/v1/print-templates/{template_id}", tags=TAGS)
def api_delete_template(
    request: Request, template_id: int, user: Annotated[Principal, Depends(require(EDIT))]
) -> dict[str, Any]:
    """Remove a template that is not the default of its kind."""
    note_object(request, "print_template", template_id)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            ss.delete_template(conn, template_id)
    except SettingsError as exc:
        api_refusal(exc)
    return {"deleted": template_id}


__all__ = ["Form", "receipt_print_page", "router", "templates"]
