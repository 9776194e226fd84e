"""Warehouse (仓库管理): stock levels, stock-in and stock-out documents, movement history, items with their
stock and serial numbers, warehouses, item categories and suppliers. Pages and `/api/v1/warehouse/...`.

The work is done by `meterhub.warehouse` (one transaction per document; stock never goes negative). Viewing
needs warehouse.view, every change warehouse.edit. Every list takes `?format=xlsx` (or csv) for its search.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from dashboards import i18n
from dashboards.export import table_response
from dashboards.security import Principal
from dashboards.web import (
    ActionError,
    FormData,
    note_object,
    redirect,
    render,
    require,
    settings_of,
    store_of,
)
from dashboards.web import text as _t
from meterhub import warehouse
from meterhub.warehouse import DocInput, ItemInput, LineInput, Page, WarehouseError

router = APIRouter()

TAGS: list[Any] = ["warehouse"]
PAGE_SIZE = 50
FORM_LINES = 8
MAX_LINES = warehouse.MAX_LINES
Format = Literal["html", "xlsx", "csv"]
VIEW = require("warehouse.view")
EDIT = require("warehouse.edit")


# -- shared helpers -----------------------------------------------------------------------------------
def _tz(request: Request) -> str:
    return settings_of(request).timezone


def today_of(request: Request) -> date:
    return datetime.now(ZoneInfo(_tz(request))).date()


def plain(value: Any) -> Any:
    """Rows as JSON: decimals as exact strings, dates and times in ISO 8601."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def page_json(found: Page) -> dict[str, Any]:
    return {"items": plain(found.rows), "page": found.page, "size": found.size, "has_more": found.has_more}


def field_label(request: Request, name: str) -> str:
    """`lines.3.quantity` → "Line 3 · Quantity"; other fields by their text."""
    match = re.match(r"^lines\.(\d+)\.(\w+)$", name)
    if match:
        return _t(
            request, "warehouse.line_field", line=match.group(1), field=_t(request, f"warehouse.field.{match.group(2)}")
        )
    key = f"warehouse.field.{name}"
    return _t(request, key) if key in i18n.catalogue() else name


def message_of(request: Request, exc: WarehouseError) -> str:
    key = f"warehouse.error.{exc.code}"
    text = _t(request, key, **{k: str(v) for k, v in exc.params.items()}) if key in i18n.catalogue() else exc.message
    return f"{field_label(request, exc.field)}: {text}" if exc.field else text


def refused(exc: WarehouseError) -> ActionError:
    return ActionError(exc.code, f"{exc.field}: {exc.message}" if exc.field else exc.message, exc.status)


def _pager(request: Request, base: str, query: dict[str, Any], found: Page) -> dict[str, Any]:
    def url(page: int) -> str:
        return f"{base}?{urlencode({**query, 'page': page})}"

    return {
        "prev_url": url(found.page - 1) if found.page > 1 else None,
        "next_url": url(found.page + 1) if found.has_more else None,
        "export_url": f"{base}?{urlencode({**query, 'format': 'xlsx'})}",
    }


def _export(request: Request, name: str, headers: list[str], rows: list[list[Any]], fmt: str) -> Response:
    return table_response(name, [_t(request, h) for h in headers], rows, fmt, timezone=_tz(request))


def _day(text: str, what: str) -> date | None:
    text = text.strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise WarehouseError("bad_date", "a date YYYY-MM-DD", field=what) from None


def qty(value: Decimal | int | None) -> str:
    """A quantity as people read it: exact, without trailing zeros (4.500 → 4.5, 2.000 → 2)."""
    if value is None:
        return ""
    text = format(Decimal(value), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    return render(request, template, status_code, qty=qty, **context)


def kind_text(request: Request, kind: str) -> str:
    return _t(request, f"warehouse.kind.{kind}")


# -- stock levels ---------------------------------------------------------------------------------------
@router.get("/warehouse", include_in_schema=False)
def levels_page(
    request: Request,
    user: Annotated[Principal, Depends(VIEW)],
    q: Annotated[str, Query(max_length=100)] = "",
    wh: Annotated[str, Query(max_length=32)] = "",
    zero: bool = False,
    page: Annotated[int, Query(ge=1)] = 1,
    format: Format = "html",
) -> Response:
    with store_of(request).connection() as conn:
        found = warehouse.levels(
            conn, q, wh, include_zero=zero, page=page, size=None if format != "html" else PAGE_SIZE
        )
        options = warehouse.choices(conn)
    if format != "html":
        return _export(
            request, "stock",
            ["warehouse.field.warehouse", "warehouse.field.item", "warehouse.field.name", "warehouse.field.spec",
             "warehouse.field.unit", "warehouse.field.category", "warehouse.field.quantity"],
            [[r["warehouse"], r["item"], r["item_name"], r["spec"], r["unit"], r["category"], r["quantity"]]
             for r in found.rows],
            format,
        )  # fmt: skip
    query = {"q": q, "wh": wh, **({"zero": "true"} if zero else {})}
    return _render(
        request,
        "warehouse/levels.html",
        found=found,
        q=q,
        wh=wh,
        zero=zero,
        options=options,
        **_pager(request, "/warehouse", query, found),
    )


# -- documents ------------------------------------------------------------------------------------------
DOC_HEADERS = [
    "warehouse.field.doc_no",
    "warehouse.field.doc_date",
    "warehouse.field.direction",
    "warehouse.field.kind",
    "warehouse.field.warehouse",
    "warehouse.field.to_warehouse",
    "warehouse.field.supplier",
    "warehouse.field.account_no",
    "warehouse.field.repair_no",
    "warehouse.field.reference",
    "warehouse.field.lines",
    "warehouse.field.amount",
    "warehouse.field.created_by",
    "warehouse.field.created_at",
]


@router.get("/warehouse/documents", include_in_schema=False)
def documents_page(
    request: Request,
    user: Annotated[Principal, Depends(VIEW)],
    q: Annotated[str, Query(max_length=100)] = "",
    direction: Literal["", "in", "out"] = "",
    kind: Literal["", "purchase", "return", "install", "repair", "transfer", "scrap"] = "",
    wh: Annotated[str, Query(max_length=32)] = "",
    date_from: Annotated[str, Query(max_length=10)] = "",
    date_to: Annotated[str, Query(max_length=10)] = "",
    page: Annotated[int, Query(ge=1)] = 1,
    format: Format = "html",
) -> Response:
    error = None
    found = Page([], page, PAGE_SIZE, False)
    with store_of(request).connection() as conn:
        options = warehouse.choices(conn)
        try:
            found = warehouse.documents(
                conn, q, direction=direction, kind=kind, warehouse=wh, date_from=_day(date_from, "date_from"),
                date_to=_day(date_to, "date_to"), page=page, size=None if format != "html" else PAGE_SIZE,
            )  # fmt: skip
        except WarehouseError as exc:
            if format != "html":
                raise refused(exc) from exc
            error = message_of(request, exc)
    if format != "html":
        return _export(
            request, "stock_documents", DOC_HEADERS,
            [[r["doc_no"], r["doc_date"], _t(request, f"warehouse.direction.{r['direction']}"),
              kind_text(request, r["kind"]), r["warehouse"], r["to_warehouse"], r["supplier"], r["account_no"],
              r["repair_no"], r["reference"], r["lines"], r["amount"], r["created_by"], r["created_at"]]
             for r in found.rows],
            format,
        )  # fmt: skip
    query: dict[str, Any] = {
        "q": q, "direction": direction, "kind": kind, "wh": wh, "date_from": date_from, "date_to": date_to,
    }  # fmt: skip
    return _render(
        request,
        "warehouse/documents.html",
        400 if error else 200,
        found=found,
        options=options,
        message_error=error,
        kinds=warehouse.KINDS,
        **query,
        **_pager(request, "/warehouse/documents", query, found),
    )


def _doc_form(request: Request, form: dict[str, Any], status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        options = warehouse.choices(conn)
    return _render(
        request,
        "warehouse/new_document.html",
        status,
        form=form,
        options=options,
        in_kinds=warehouse.IN_KINDS,
        out_kinds=[k for k in warehouse.OUT_KINDS if k != "install"],
        line_count=FORM_LINES,
        **extra,
    )


@router.get("/warehouse/documents/new", include_in_schema=False)
def new_document_page(
    request: Request,
    user: Annotated[Principal, Depends(EDIT)],
    kind: Literal["purchase", "return", "repair", "transfer", "scrap", "install"] = "purchase",
) -> Response:
    return _doc_form(request, {"kind": kind, "doc_date": today_of(request).isoformat()})


def lines_of_form(form: dict[str, str]) -> list[LineInput]:
    """Lines of the document form: item_N, quantity_N, serial_N, price_N; several serial numbers in one
    line (separated by spaces, commas or new lines) become one line each."""
    lines: list[LineInput] = []
    for n in range(1, FORM_LINES + 1):
        item = form.get(f"item_{n}", "").strip()
        if not item:
            continue
        serials = [s for s in re.split(r"[\s,，;；]+", form.get(f"serial_{n}", "")) if s]
        price = form.get(f"price_{n}", "").strip() or None
        if len(serials) > 1:
            lines += [LineInput(item, "1", s, price) for s in serials]
        else:
            lines.append(
                LineInput(item, form.get(f"quantity_{n}", "").strip() or "1", serials[0] if serials else "", price)
            )
    return lines


@router.post("/warehouse/documents", include_in_schema=False)
def new_document_submit(request: Request, user: Annotated[Principal, Depends(EDIT)], form: FormData) -> Response:
    note_object(request, "stock_doc", None)
    try:
        doc = DocInput(
            kind=form.get("kind", ""),
            warehouse=form.get("warehouse", ""),
            to_warehouse=form.get("to_warehouse", ""),
            supplier=form.get("supplier", ""),
            account_no=form.get("account_no", ""),
            doc_date=_day(form.get("doc_date", ""), "doc_date"),
            reference=form.get("reference", ""),
            note=form.get("note", ""),
            lines=lines_of_form(form),
        )
        if doc.kind == "install":
            raise WarehouseError(
                "install_from_meters", "installations draw meters through the meter pages", field="kind"
            )
        posted = warehouse.post_document(store_of(request), user.username, doc)
    except WarehouseError as exc:
        return _doc_form(request, form, exc.status, message_error=message_of(request, exc), error_field=exc.field)
    note_object(request, "stock_doc", posted.doc_no)
    return redirect(f"/warehouse/documents/{quote(posted.doc_no, safe='')}?done=1")


@router.get("/warehouse/documents/{doc_no}", include_in_schema=False)
def document_page(request: Request, doc_no: str, user: Annotated[Principal, Depends(VIEW)], done: str = "") -> Response:
    with store_of(request).connection() as conn:
        doc = warehouse.document(conn, doc_no)
    if doc is None:
        raise ActionError("not_found", _t(request, "warehouse.error.no_document"), 404)
    return _render(
        request, "warehouse/document.html", doc=doc, message_ok=_t(request, "warehouse.posted") if done else None
    )


# -- movements --------------------------------------------------------------------------------------------
@router.get("/warehouse/movements", include_in_schema=False)
def movements_page(
    request: Request,
    user: Annotated[Principal, Depends(VIEW)],
    q: Annotated[str, Query(max_length=100)] = "",
    item: Annotated[str, Query(max_length=32)] = "",
    serial: Annotated[str, Query(max_length=64)] = "",
    wh: Annotated[str, Query(max_length=32)] = "",
    page: Annotated[int, Query(ge=1)] = 1,
    format: Format = "html",
) -> Response:
    with store_of(request).connection() as conn:
        found = warehouse.movements(
            conn, q, item=item, serial_no=serial, warehouse=wh, page=page, size=None if format != "html" else PAGE_SIZE
        )
        options = warehouse.choices(conn)
    if format != "html":
        return _export(
            request, "stock_movements",
            ["common.time", "warehouse.field.doc_no", "warehouse.field.kind", "warehouse.field.warehouse",
             "warehouse.field.item", "warehouse.field.name", "warehouse.field.serial_no", "warehouse.field.quantity",
             "warehouse.field.balance", "warehouse.field.created_by"],
            [[r["at"], r["doc_no"], kind_text(request, r["kind"]), r["warehouse"], r["item"], r["item_name"],
              r["serial_no"], r["quantity"], r["balance_after"], r["actor"]] for r in found.rows],
            format,
        )  # fmt: skip
    query: dict[str, Any] = {"q": q, "item": item, "serial": serial, "wh": wh}
    return _render(
        request,
        "warehouse/movements.html",
        found=found,
        options=options,
        **query,
        **_pager(request, "/warehouse/movements", query, found),
    )


# -- items ------------------------------------------------------------------------------------------------
def _item_input(form: dict[str, str]) -> ItemInput:
    return ItemInput(
        code=form.get("code", ""),
        name=form.get("name", ""),
        unit=form.get("unit", "") or "个",
        spec=form.get("spec", ""),
        category=form.get("category", ""),
        serial_tracked=form.get("serial_tracked") in ("1", "on", "true"),
        meter_model=form.get("meter_model", ""),
        price=form.get("price", ""),
        active=form.get("inactive") not in ("1", "on", "true"),
    )


def _items_page(request: Request, q: str, category: str, page: int, status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        found = warehouse.items(conn, q, category, page=page, size=PAGE_SIZE)
        options = warehouse.choices(conn)
        models = warehouse.meter_models(conn)
    query = {"q": q, "category": category}
    return _render(
        request,
        "warehouse/items.html",
        status,
        found=found,
        options=options,
        models=models,
        q=q,
        category=category,
        **_pager(request, "/warehouse/items", query, found),
        **extra,
    )


@router.get("/warehouse/items", include_in_schema=False)
def items_page(
    request: Request,
    user: Annotated[Principal, Depends(VIEW)],
    q: Annotated[str, Query(max_length=100)] = "",
    category: Annotated[str, Query(max_length=32)] = "",
    page: Annotated[int, Query(ge=1)] = 1,
    format: Format = "html",
) -> Response:
    if format != "html":
        with store_of(request).connection() as conn:
            found = warehouse.items(conn, q, category, size=None)
        return _export(
            request, "items",
            ["warehouse.field.item", "warehouse.field.name", "warehouse.field.category", "warehouse.field.unit",
             "warehouse.field.spec", "warehouse.field.serial_tracked", "warehouse.field.meter_model",
             "warehouse.field.price", "warehouse.field.quantity"],
            [[r["code"], r["name"], r["category_name"], r["unit"], r["spec"], r["serial_tracked"], r["meter_model"],
              r["price"], r["quantity"]] for r in found.rows],
            format,
        )  # fmt: skip
    return _items_page(request, q, category, page, form={})


@router.post("/warehouse/items", include_in_schema=False)
def items_submit(request: Request, user: Annotated[Principal, Depends(EDIT)], form: FormData) -> Response:
    note_object(request, "item", form.get("code") or None)
    try:
        code = warehouse.save_item(store_of(request), user.username, _item_input(form))
    except WarehouseError as exc:
        return _items_page(request, "", "", 1, exc.status, form=form, message_error=message_of(request, exc))
    return redirect(f"/warehouse/items/{quote(code, safe='')}?done=1")


@router.get("/warehouse/items/{code}", include_in_schema=False)
def item_page(request: Request, code: str, user: Annotated[Principal, Depends(VIEW)], done: str = "") -> Response:
    with store_of(request).connection() as conn:
        item = warehouse.item_detail(conn, code)
    if item is None:
        raise ActionError("not_found", _t(request, "warehouse.error.no_item"), 404)
    return _render(request, "warehouse/item.html", item=item, message_ok=_t(request, "common.saved") if done else None)


@router.get("/warehouse/serials/{serial_no}", include_in_schema=False)
def serial_page(request: Request, serial_no: str, user: Annotated[Principal, Depends(VIEW)]) -> Response:
    with store_of(request).connection() as conn:
        serial = warehouse.serial_detail(conn, serial_no)
    if serial is None:
        raise ActionError("not_found", _t(request, "warehouse.error.no_serial"), 404)
    return _render(request, "warehouse/serial.html", serial=serial)


# -- warehouses, categories, suppliers --------------------------------------------------------------------
MASTER: dict[str, dict[str, Any]] = {
    "warehouses": {
        "lister": warehouse.warehouses,
        "columns": ["code", "name", "address", "keeper", "active", "items"],
        "inputs": ["code", "name", "address", "keeper"],
    },
    "categories": {"lister": warehouse.categories, "columns": ["code", "name", "items"], "inputs": ["code", "name"]},
    "suppliers": {
        "lister": warehouse.suppliers,
        "columns": ["code", "name", "contact", "phone", "address"],
        "inputs": ["code", "name", "contact", "phone", "address"],
    },
}


def _master_page(request: Request, what: str, q: str, page: int, fmt: str, status: int = 200, **extra: Any) -> Response:
    spec = MASTER[what]
    with store_of(request).connection() as conn:
        found = spec["lister"](conn, q, page=page, size=None if fmt != "html" else PAGE_SIZE)
    if fmt != "html":
        return _export(
            request,
            what,
            [f"warehouse.field.{c}" for c in spec["columns"]],
            [[r[c] for c in spec["columns"]] for r in found.rows],
            fmt,
        )
    return _render(
        request,
        "warehouse/master.html",
        status,
        what=what,
        found=found,
        q=q,
        columns=spec["columns"],
        inputs=spec["inputs"],
        form=extra.pop("form", {}),
        **_pager(request, f"/warehouse/{what}", {"q": q}, found),
        **extra,
    )


def _master_save(request: Request, what: str, user: Principal, form: dict[str, str]) -> None:
    store = store_of(request)
    if what == "warehouses":
        warehouse.save_warehouse(
            store,
            user.username,
            code=form.get("code", ""),
            name=form.get("name", ""),
            address=form.get("address", ""),
            keeper=form.get("keeper", ""),
            active=form.get("inactive") not in ("1", "on", "true"),
        )
    elif what == "categories":
        warehouse.save_category(store, user.username, code=form.get("code", ""), name=form.get("name", ""))
    else:
        warehouse.save_supplier(
            store,
            user.username,
            code=form.get("code", ""),
            name=form.get("name", ""),
            contact=form.get("contact", ""),
            phone=form.get("phone", ""),
            address=form.get("address", ""),
        )


def _master_routes(what: str) -> None:
    def page_route(
        request: Request,
        user: Annotated[Principal, Depends(VIEW)],
        q: Annotated[str, Query(max_length=100)] = "",
        page: Annotated[int, Query(ge=1)] = 1,
        format: Format = "html",
    ) -> Response:
        return _master_page(request, what, q, page, format)

    def save_route(request: Request, user: Annotated[Principal, Depends(EDIT)], form: FormData) -> Response:
        note_object(request, what[:-1] if what != "categories" else "item_category", form.get("code") or None)
        try:
            _master_save(request, what, user, form)
        except WarehouseError as exc:
            return _master_page(
                request, what, "", 1, "html", exc.status, form=form, message_error=message_of(request, exc)
            )
        return redirect(f"/warehouse/{what}?done=1")

    page_route.__name__ = f"{what}_page"
    save_route.__name__ = f"{what}_save"
    router.add_api_route(f"/warehouse/{what}", page_route, methods=["GET"], include_in_schema=False)
    router.add_api_route(f"/warehouse/{what}", save_route, methods=["POST"], include_in_schema=False)


for _what in MASTER:
    _master_routes(_what)


# -- API --------------------------------------------------------------------------------------------------
class LineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: str = Field(description="Item code")
    quantity: Decimal | str = Field("1", description="Exact, up to 3 decimals; 1 for a serial number")
    serial_no: str = Field("", description="Required for items tracked by serial number")
    unit_price: Decimal | str | None = Field(None, description="Price per unit, up to 2 decimals")


class DocumentIn(BaseModel):
    """A stock-in (purchase, return) or stock-out (repair, transfer, scrap) document."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["purchase", "return", "repair", "transfer", "scrap"]
    warehouse: str = Field(description="Warehouse code")
    lines: list[LineIn] = Field(min_length=1, max_length=MAX_LINES)
    doc_date: date | None = Field(None, description="Default: today")
    supplier: str = Field("", description="Supplier code (purchase)")
    to_warehouse: str = Field("", description="Receiving warehouse code (transfer)")
    account_no: str = ""
    reference: str = Field("", max_length=100)
    note: str = Field("", max_length=500)


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    name: str
    unit: str = "个"
    spec: str = ""
    category: str = Field("", description="Category code")
    serial_tracked: bool = False
    meter_model: str = Field("", description="'<manufacturer code>/<model name>': new serials create meters")
    price: Decimal | str | None = None
    active: bool = True


class WarehouseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    name: str
    address: str = ""
    keeper: str = ""
    active: bool = True


class CategoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    name: str


class SupplierIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    name: str
    contact: str = ""
    phone: str = ""
    address: str = ""


@router.get("/api/v1/warehouse/stock", tags=TAGS)
def api_stock(
    request: Request,
    user: Annotated[Principal, Depends(VIEW)],
    q: str = "",
    warehouse_code: Annotated[str, Query(alias="warehouse")] = "",
    include_zero: bool = False,
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE,
) -> dict[str, Any]:
    """Stock levels per warehouse and item (quantities as exact decimal strings)."""
    with store_of(request).connection() as conn:
        return page_json(warehouse.levels(conn, q, warehouse_code, include_zero=include_zero, page=page, size=size))


@router.get("/api/v1/warehouse/documents", tags=TAGS)
def api_documents(
    request: Request,
    user: Annotated[Principal, Depends(VIEW)],
    q: str = "",
    direction: Literal["", "in", "out"] = "",
    kind: str = "",
    warehouse_code: Annotated[str, Query(alias="warehouse")] = "",
    date_from: date | None = None,
    date_to: date | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE,
) -> dict[str, Any]:
    """Stock documents, newest first; `q` searches number, reference, note, supplier, account, item, serial."""
    with store_of(request).connection() as conn:
        return page_json(
            warehouse.documents(
                conn,
                q,
                direction=direction,
                kind=kind,
                warehouse=warehouse_code,
                date_from=date_from,
                date_to=date_to,
                page=page,
                size=size,
            )
        )


@router.get("/api/v1/warehouse/documents/{doc_no}", tags=TAGS)
def api_document(request: Request, doc_no: str, user: Annotated[Principal, Depends(VIEW)]) -> dict[str, Any]:
    """A stock document with its lines."""
    with store_of(request).connection() as conn:
        doc = warehouse.document(conn, doc_no)
    if doc is None:
        raise ActionError("not_found", "no such document", 404)
    out: dict[str, Any] = plain(doc)
    return out


@router.post("/api/v1/warehouse/documents", tags=TAGS, status_code=201)
def api_post_document(request: Request, body: DocumentIn, user: Annotated[Principal, Depends(EDIT)]) -> Response:
    """Post a document in one transaction: stock levels, serial numbers and movements. A line short of stock
    (or any bad line) refuses the whole document with 409/400 and `detail` naming the line."""
    note_object(request, "stock_doc", None)
    try:
        posted = warehouse.post_document(
            store_of(request), user.username,
            DocInput(kind=body.kind, warehouse=body.warehouse, doc_date=body.doc_date, supplier=body.supplier,
                     to_warehouse=body.to_warehouse, account_no=body.account_no, reference=body.reference,
                     note=body.note,
                     lines=[LineInput(x.item, x.quantity, x.serial_no, x.unit_price) for x in body.lines]),
        )  # fmt: skip
    except WarehouseError as exc:
        raise refused(exc) from exc
    note_object(request, "stock_doc", posted.doc_no)
    with store_of(request).connection() as conn:
        doc = warehouse.document(conn, posted.doc_no)
    return JSONResponse(
        plain(doc),
        status_code=201,
        headers={"Location": f"/api/v1/warehouse/documents/{quote(posted.doc_no, safe='')}"},
    )


@router.get("/api/v1/warehouse/movements", tags=TAGS)
def api_movements(
    request: Request,
    user: Annotated[Principal, Depends(VIEW)],
    q: str = "",
    item: str = "",
    serial_no: str = "",
    warehouse_code: Annotated[str, Query(alias="warehouse")] = "",
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE,
) -> dict[str, Any]:
    """The movement history (signed quantities and the level after each), newest first."""
    with store_of(request).connection() as conn:
        return page_json(
            warehouse.movements(conn, q, item=item, serial_no=serial_no, warehouse=warehouse_code, page=page, size=size)
        )


@router.get("/api/v1/warehouse/items", tags=TAGS)
def api_items(
    request: Request,
    user: Annotated[Principal, Depends(VIEW)],
    q: str = "",
    category: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE,
) -> dict[str, Any]:
    """Items with their total stock."""
    with store_of(request).connection() as conn:
        return page_json(warehouse.items(conn, q, category, page=page, size=size))


@router.get("/api/v1/warehouse/items/{code}", tags=TAGS)
def api_item(request: Request, code: str, user: Annotated[Principal, Depends(VIEW)]) -> dict[str, Any]:
    """An item: stock per warehouse, its serial numbers and latest movements."""
    with store_of(request).connection() as conn:
        item = warehouse.item_detail(conn, code)
    if item is None:
        raise ActionError("not_found", "no such item", 404)
    out: dict[str, Any] = plain(item)
    return out


@router.get("/api/v1/warehouse/serials/{serial_no}", tags=TAGS)
def api_serial(request: Request, serial_no: str, user: Annotated[Principal, Depends(VIEW)]) -> dict[str, Any]:
    """A serial number: its item, where it is, every movement."""
    with store_of(request).connection() as conn:
        serial = warehouse.serial_detail(conn, serial_no)
    if serial is None:
        raise ActionError("not_found", "no such serial number", 404)
    out: dict[str, Any] = plain(serial)
    return out


def _api_save(request: Request, kind: str, code: str, call: Any) -> dict[str, Any]:
    note_object(request, kind, code)
    try:
        saved = call()
    except WarehouseError as exc:
        raise refused(exc) from exc
    return {"code": saved}


@router.post("/api/v1/warehouse/items", tags=TAGS)
def api_save_item(request: Request, body: ItemIn, user: Annotated[Principal, Depends(EDIT)]) -> dict[str, Any]:
    """A new item, or the one with this code changed."""
    return _api_save(
        request,
        "item",
        body.code,
        lambda: warehouse.save_item(store_of(request), user.username, ItemInput(**body.model_dump())),
    )


@router.get("/api/v1/warehouse/warehouses", tags=TAGS)
def api_warehouses(request: Request, user: Annotated[Principal, Depends(VIEW)], q: str = "") -> dict[str, Any]:
    """Warehouses."""
    with store_of(request).connection() as conn:
        return page_json(warehouse.warehouses(conn, q, size=None))


@router.post("/api/v1/warehouse/warehouses", tags=TAGS)
def api_save_warehouse(
    request: Request, body: WarehouseIn, user: Annotated[Principal, Depends(EDIT)]
) -> dict[str, Any]:
    """A new warehouse, or the one with this code changed."""
    return _api_save(
        request,
        "warehouse",
        body.code,
        lambda: warehouse.save_warehouse(store_of(request), user.username, **body.model_dump()),
    )


@router.get("/api/v1/warehouse/categories", tags=TAGS)
def api_categories(request: Request, user: Annotated[Principal, Depends(VIEW)], q: str = "") -> dict[str, Any]:
    """Item categories."""
    with store_of(request).connection() as conn:
        return page_json(warehouse.categories(conn, q, size=None))


@router.post("/api/v1/warehouse/categories", tags=TAGS)
def api_save_category(request: Request, body: CategoryIn, user: Annotated[Principal, Depends(EDIT)]) -> dict[str, Any]:
    """A new item category, or the one with this code renamed."""
    return _api_save(
        request,
        "item_category",
        body.code,
        lambda: warehouse.save_category(store_of(request), user.username, **body.model_dump()),
    )


@router.get("/api/v1/warehouse/suppliers", tags=TAGS)
def api_suppliers(request: Request, user: Annotated[Principal, Depends(VIEW)], q: str = "") -> dict[str, Any]:
    """Suppliers."""
    with store_of(request).connection() as conn:
        return page_json(warehouse.suppliers(conn, q, size=None))


@router.post("/api/v1/warehouse/suppliers", tags=TAGS)
def api_save_supplier(request: Request, body: SupplierIn, user: Annotated[Principal, Depends(EDIT)]) -> dict[str, Any]:
    """A new supplier, or the one with this code changed."""
    return _api_save(
        request,
        "supplier",
        body.code,
        lambda: warehouse.save_supplier(store_of(request), user.username, **body.model_dump()),
    )
