"""Warehouse (仓库管理): warehouses, item categories, suppliers and items; stock-in documents (purchase from a
supplier, return) and stock-out documents (to an installation, a repair, a transfer to another warehouse,
scrapping) with their lines; stock levels, the serial numbers in stock, and the movement history.

Meters are items too (`serial_tracked`): each serial number is one unit, known in `stock_serial` with the
warehouse it is in. An item linked to a meter model creates the meter (status in stock) when a new serial
is taken in, so that installing it through the meter pages draws it from stock (`draw_for_install`).

Stock never goes negative. A document is posted in one transaction: its stock rows are changed in a fixed
order (warehouse, item) by conditional UPDATEs that take the row's lock and re-check the quantity after
waiting for a concurrent document, and `stock.quantity` carries a CHECK (quantity >= 0) besides. A line
that would take more than there is refuses the whole document; nothing of it is written.
Quantities are exact decimals (3 places), prices Decimal (2 places).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

from meterhub.store import Store

IN_KINDS = ("purchase", "return")
OUT_KINDS = ("install", "repair", "transfer", "scrap")
KINDS = IN_KINDS + OUT_KINDS
MAX_QUANTITY = Decimal("99999999999.999")
MAX_PRICE = Decimal("999999999999.99")
MAX_LINES = 200
CODE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
SERIAL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

_STATUS = {
    "not_found": 404,
    "short": 409,
    "serial_not_in_stock": 409,
    "serial_in_stock": 409,
    "serial_known": 409,
    "serial_scrapped": 409,
    "meter_in_use": 409,
    "duplicate": 409,
}


class WarehouseError(Exception):
    """A refused request. `code` is a short machine code, `field` the input at fault (e.g. `lines.2.quantity`),
    `params` the values its message names; `status` the HTTP status it deserves."""

    def __init__(self, code: str, message: str, *, field: str = "", **params: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.params = params

    @property
    def status(self) -> int:
        return _STATUS.get(self.code, 400)


# -- parsing ---------------------------------------------------------------------------------------------
def parse_quantity(value: Decimal | str | int, what: str = "quantity") -> Decimal:
    """A positive quantity with at most 3 decimals."""
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise WarehouseError("bad_quantity", f"{value!r} is not a number", field=what, value=str(value)) from None
    exponent = number.as_tuple().exponent
    if not number.is_finite() or not isinstance(exponent, int) or exponent < -3 or number <= 0 or number > MAX_QUANTITY:
        raise WarehouseError("bad_quantity", "a positive number with at most 3 decimals", field=what, value=str(value))
    return number


def parse_price(value: Decimal | str | int | None, what: str = "price") -> Decimal | None:
    """A non-negative amount of money with at most 2 decimals; blank: none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise WarehouseError("bad_price", f"{value!r} is not an amount", field=what, value=str(value)) from None
    exponent = number.as_tuple().exponent
    if not number.is_finite() or not isinstance(exponent, int) or exponent < -2 or number < 0 or number > MAX_PRICE:
        raise WarehouseError("bad_price", "a non-negative amount with at most 2 decimals", field=what, value=str(value))
    return number


def _code(value: str, what: str = "code") -> str:
    value = value.strip()
    if not CODE_RE.match(value):
        raise WarehouseError("bad_code", "1–32 letters, digits, _ . -", field=what, value=value)
    return value


def _text(value: str, what: str, limit: int, required: bool = False) -> str:
    value = value.strip()
    if required and not value:
        raise WarehouseError("required", "required", field=what)
    if len(value) > limit:
        raise WarehouseError("too_long", f"at most {limit} characters", field=what, limit=limit)
    return value


def _like(text: str) -> str:
    return "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    page: int
    size: int
    has_more: bool


def _paged(conn: psycopg.Connection[Any], query: str, params: dict[str, Any], page: int, size: int | None) -> Page:
    """Rows of `query` (which ends before LIMIT); size None: all rows (exports)."""
    cur = conn.cursor(row_factory=dict_row)
    if size is None:
        return Page(cur.execute(query, params).fetchall(), 1, 0, False)
    rows = cur.execute(
        query + " LIMIT %(lim)s OFFSET %(off)s", {**params, "lim": size + 1, "off": (page - 1) * size}
    ).fetchall()
    return Page(rows[:size], page, size, len(rows) > size)


# -- master data -----------------------------------------------------------------------------------------
def save_warehouse(
    store: Store, actor: str, *, code: str, name: str, address: str = "", keeper: str = "", active: bool = True
) -> str:
    """A new warehouse, or the one with this code changed."""
    code = _code(code)
    name = _text(name, "name", 100, required=True)
    with store.transaction(actor=actor) as conn:
        conn.execute(
            """INSERT INTO warehouse (code, name, address, keeper, active) VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, address = EXCLUDED.address,
                   keeper = EXCLUDED.keeper, active = EXCLUDED.active""",
            [code, name, _text(address, "address", 200), _text(keeper, "keeper", 100), active],
        )
    return code


def save_category(store: Store, actor: str, *, code: str, name: str) -> str:
    code = _code(code)
    name = _text(name, "name", 100, required=True)
    with store.transaction(actor=actor) as conn:
        conn.execute(
            """INSERT INTO item_category (code, name) VALUES (%s, %s)
               ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name""",
            [code, name],
        )
    return code


def save_supplier(
    store: Store, actor: str, *, code: str, name: str, contact: str = "", phone: str = "", address: str = ""
) -> str:
    code = _code(code)
    name = _text(name, "name", 200, required=True)
    with store.transaction(actor=actor) as conn:
        conn.execute(
            """INSERT INTO supplier (code, name, contact, phone, address) VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, contact = EXCLUDED.contact,
                   phone = EXCLUDED.phone, address = EXCLUDED.address""",
            [code, name, _text(contact, "contact", 100), _text(phone, "phone", 30), _text(address, "address", 200)],
        )
    return code


@dataclass
class ItemInput:
    code: str
    name: str
    unit: str = "个"
    spec: str = ""
    category: str = ""
    serial_tracked: bool = False
    meter_model: str = ""  # "<manufacturer code>/<model name>" or a model id
    price: Decimal | str | None = None
    active: bool = True


def save_item(store: Store, actor: str, item: ItemInput) -> str:
    """A new item, or the one with this code changed. Whether an item is tracked by serial number cannot
    change once it has been in stock."""
    code = _code(item.code)
    name = _text(item.name, "name", 200, required=True)
    unit = _text(item.unit, "unit", 16, required=True)
    spec = _text(item.spec, "spec", 200)
    price = parse_price(item.price)
    with store.transaction(actor=actor) as conn:
        category_id = None
        if item.category.strip():
            row = conn.execute("SELECT id FROM item_category WHERE code = %s", [item.category.strip()]).fetchone()
            if row is None:
                raise WarehouseError("not_found", "no such category", field="category", value=item.category)
            category_id = row[0]
        model_id = _meter_model(conn, item.meter_model) if item.meter_model.strip() else None
        tracked = item.serial_tracked or model_id is not None
        old = conn.execute("SELECT id, serial_tracked FROM item WHERE code = %s FOR UPDATE", [code]).fetchone()
        if old is not None and old[1] != tracked:
            used = conn.execute("SELECT 1 FROM stock_doc_line WHERE item_id = %s LIMIT 1", [old[0]]).fetchone()
            if used:
                raise WarehouseError(
                    "tracked_fixed", "serial tracking cannot change after stock movements", field="serial_tracked"
                )
        conn.execute(
            """INSERT INTO item (code, name, category_id, unit, spec, serial_tracked, meter_model_id, price, active)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, category_id = EXCLUDED.category_id,
                   unit = EXCLUDED.unit, spec = EXCLUDED.spec, serial_tracked = EXCLUDED.serial_tracked,
                   meter_model_id = EXCLUDED.meter_model_id, price = EXCLUDED.price, active = EXCLUDED.active""",
            [code, name, category_id, unit, spec, tracked, model_id, price, item.active],
        )
    return code


def _meter_model(conn: psycopg.Connection[Any], text: str) -> int:
    text = text.strip()
    if text.isdigit():
        row = conn.execute("SELECT id FROM meter_model WHERE id = %s", [int(text)]).fetchone()
    else:
        maker, _, name = text.partition("/")
        row = conn.execute(
            """SELECT mm.id FROM meter_model mm JOIN manufacturer mf ON mf.id = mm.manufacturer_id
                WHERE mf.code = %s AND mm.name = %s""",
            [maker.strip(), name.strip()],
        ).fetchone()
    if row is None:
        raise WarehouseError("not_found", "no such meter model", field="meter_model", value=text)
    return int(row[0])


def meter_models(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(value, label) of every meter model, for the item form."""
    rows = conn.execute(
        """SELECT mf.code || '/' || mm.name, mf.name || ' ' || mm.name FROM meter_model mm
             JOIN manufacturer mf ON mf.id = mm.manufacturer_id ORDER BY 1"""
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def warehouses(conn: psycopg.Connection[Any], q: str = "", page: int = 1, size: int | None = 50) -> Page:
    q = q.strip()
    return _paged(
        conn,
        """SELECT w.code, w.name, w.address, w.keeper, w.active,
                  (SELECT count(*) FROM stock s WHERE s.warehouse_id = w.id AND s.quantity > 0) AS items
             FROM warehouse w
            WHERE %(q)s = '' OR w.code ILIKE %(like)s OR w.name ILIKE %(like)s OR w.address ILIKE %(like)s
            ORDER BY w.code""",
        {"q": q, "like": _like(q)}, page, size,
    )  # fmt: skip


def categories(conn: psycopg.Connection[Any], q: str = "", page: int = 1, size: int | None = 50) -> Page:
    q = q.strip()
    return _paged(
        conn,
        """SELECT c.code, c.name, (SELECT count(*) FROM item i WHERE i.category_id = c.id) AS items
             FROM item_category c
            WHERE %(q)s = '' OR c.code ILIKE %(like)s OR c.name ILIKE %(like)s
            ORDER BY c.code""",
        {"q": q, "like": _like(q)}, page, size,
    )  # fmt: skip


def suppliers(conn: psycopg.Connection[Any], q: str = "", page: int = 1, size: int | None = 50) -> Page:
    q = q.strip()
    return _paged(
        conn,
        """SELECT code, name, contact, phone, address FROM supplier
            WHERE %(q)s = '' OR code ILIKE %(like)s OR name ILIKE %(like)s OR contact ILIKE %(like)s
               OR phone ILIKE %(like)s
            ORDER BY code""",
        {"q": q, "like": _like(q)}, page, size,
    )  # fmt: skip


def items(conn: psycopg.Connection[Any], q: str = "", category: str = "", page: int = 1, size: int | None = 50) -> Page:
    """Items whose code, name or spec contains `q`, with their total stock."""
    q = q.strip()
    return _paged(
        conn,
        """SELECT i.code, i.name, i.unit, i.spec, i.serial_tracked, i.price, i.active, c.code AS category,
                  c.name AS category_name, mf.code || '/' || mm.name AS meter_model,
                  coalesce((SELECT sum(s.quantity) FROM stock s WHERE s.item_id = i.id), 0) AS quantity
             FROM item i LEFT JOIN item_category c ON c.id = i.category_id
             LEFT JOIN meter_model mm ON mm.id = i.meter_model_id
             LEFT JOIN manufacturer mf ON mf.id = mm.manufacturer_id
            WHERE (%(q)s = '' OR i.code ILIKE %(like)s OR i.name ILIKE %(like)s OR i.spec ILIKE %(like)s)
              AND (%(cat)s = '' OR c.code = %(cat)s)
            ORDER BY i.code""",
        {"q": q, "like": _like(q), "cat": category.strip()}, page, size,
    )  # fmt: skip


def choices(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[str, str]]]:
    """(code, label) lists for the forms: active warehouses, categories, suppliers, active items."""

    def pairs(sql: str) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in conn.execute(sql).fetchall()]

    return {
        "warehouses": pairs("SELECT code, name FROM warehouse WHERE active ORDER BY code"),
        "categories": pairs("SELECT code, name FROM item_category ORDER BY code"),
        "suppliers": pairs("SELECT code, name FROM supplier ORDER BY code"),
        "items": pairs("SELECT code, name || ' ' || spec || ' (' || unit || ')' FROM item WHERE active ORDER BY code"),
    }


# -- documents -------------------------------------------------------------------------------------------
@dataclass
class LineInput:
    item: str
    quantity: Decimal | str = "1"
    serial_no: str = ""
    unit_price: Decimal | str | None = None


@dataclass
class DocInput:
    kind: str
    warehouse: str
    lines: list[LineInput]
    doc_date: date | None = None
    supplier: str = ""
    to_warehouse: str = ""
    reference: str = ""
    note: str = ""
    account_no: str = ""
    meter_no: str = ""
    repair_id: int | None = None


@dataclass(frozen=True)
class Posted:
    id: int
    doc_no: str
    direction: str
    kind: str


@dataclass
class _Line:
    no: int
    item_id: int
    tracked: bool
    meter_model_id: int | None
    serial: str | None
    quantity: Decimal
    unit_price: Decimal | None
    line_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def today_in(timezone: str) -> date:
    return datetime.now(UTC).astimezone(ZoneInfo(timezone)).date()


def post_document(store: Store, actor: str, doc: DocInput) -> Posted:
    """Post a stock-in or stock-out document in one transaction (see `post_in`)."""
    with store.transaction(actor=actor) as conn:
        return post_in(conn, doc, today=today_in(store.settings.timezone))


def post_in(conn: psycopg.Connection[Any], doc: DocInput, *, today: date) -> Posted:
    """Post `doc` inside the caller's transaction: the document, its lines, the stock levels, the serial
    numbers and the movements. Raises WarehouseError (and the caller's transaction must then roll back)
    when anything is wrong: an unknown code, a bad quantity, a serial out of place, too little stock."""
    if doc.kind not in KINDS:
        raise WarehouseError("bad_kind", "unknown document kind", field="kind", value=doc.kind)
    direction = "in" if doc.kind in IN_KINDS else "out"
    day = doc.doc_date or today
    if day > today:
        raise WarehouseError("future", "the date is in the future", field="doc_date")
    if not doc.lines:
        raise WarehouseError("no_lines", "a document needs at least one line", field="lines")
    if len(doc.lines) > MAX_LINES:
        raise WarehouseError("too_many_lines", f"at most {MAX_LINES} lines", field="lines")
    wh = conn.execute("SELECT id, active FROM warehouse WHERE code = %s", [doc.warehouse.strip()]).fetchone()
    if wh is None or not wh[1]:
        raise WarehouseError("not_found", "no such active warehouse", field="warehouse", value=doc.warehouse)
    warehouse_id = int(wh[0])
    to_id = supplier_id = account_id = meter_id = None
    if doc.kind == "transfer":
        to = conn.execute("SELECT id, active FROM warehouse WHERE code = %s", [doc.to_warehouse.strip()]).fetchone()
        if to is None or not to[1]:
            raise WarehouseError("not_found", "no such active warehouse", field="to_warehouse", value=doc.to_warehouse)
        if to[0] == warehouse_id:
            raise WarehouseError("same_warehouse", "a transfer goes to another warehouse", field="to_warehouse")
        to_id = int(to[0])
    if doc.kind == "purchase":
        row = conn.execute("SELECT id FROM supplier WHERE code = %s", [doc.supplier.strip()]).fetchone()
        if row is None:
            raise WarehouseError("not_found", "no such supplier", field="supplier", value=doc.supplier)
        supplier_id = int(row[0])
    if doc.account_no.strip():
        row = conn.execute("SELECT id FROM account WHERE account_no = %s", [doc.account_no.strip()]).fetchone()
        if row is None:
            raise WarehouseError("not_found", "no such account", field="account_no", value=doc.account_no)
        account_id = int(row[0])
    if doc.meter_no.strip():
        row = conn.execute("SELECT id FROM meter WHERE meter_no = %s", [doc.meter_no.strip()]).fetchone()
        if row is None:
            raise WarehouseError("not_found", "no such meter", field="meter_no", value=doc.meter_no)
        meter_id = int(row[0])
    lines = _resolve_lines(conn, doc.lines)
    prefix = "RK" if direction == "in" else "CK"
    number = conn.execute("SELECT nextval('stock_doc_no_seq')").fetchone()
    assert number is not None
    doc_no = f"{prefix}{day:%Y%m%d}-{int(number[0]):06d}"
    row = conn.execute(
        """INSERT INTO stock_doc (doc_no, direction, kind, warehouse_id, to_warehouse_id, supplier_id, account_id,
                                  meter_id, repair_id, doc_date, reference, note)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        [
            doc_no,
            direction,
            doc.kind,
            warehouse_id,
            to_id,
            supplier_id,
            account_id,
            meter_id,
            doc.repair_id,
            day,
            _text(doc.reference, "reference", 100),
            _text(doc.note, "note", 500),
        ],
    ).fetchone()
    assert row is not None
    doc_id = int(row[0])
    for line in lines:
        amount = None
        if line.unit_price is not None:
            amount = (line.unit_price * line.quantity).quantize(Decimal("0.01"), ROUND_HALF_UP)
        inserted = conn.execute(
            """INSERT INTO stock_doc_line (doc_id, line_no, item_id, serial_no, quantity, unit_price, amount)
               VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            [doc_id, line.no, line.item_id, line.serial, line.quantity, line.unit_price, amount],
        ).fetchone()
        assert inserted is not None
        line.line_id = int(inserted[0])
    # Serial numbers first (each its own row lock), then the stock rows in (warehouse, item) order.
    for line in sorted((x for x in lines if x.serial), key=lambda x: x.serial or ""):
        _move_serial(conn, doc.kind, doc_id, warehouse_id, to_id, line)
    changes: list[tuple[int, int, _Line, Decimal]] = []
    for line in lines:
        if direction == "in":
            changes.append((warehouse_id, line.item_id, line, line.quantity))
        else:
            changes.append((warehouse_id, line.item_id, line, -line.quantity))
            if to_id is not None:
                changes.append((to_id, line.item_id, line, line.quantity))
    changes.sort(key=lambda c: (c[0], c[1], c[2].no, c[3]))
    for wid, item_id, line, delta in changes:
        balance = _change_stock(conn, wid, item_id, delta, line)
        conn.execute(
            """INSERT INTO stock_movement (doc_id, line_id, warehouse_id, item_id, serial_no, quantity, balance_after)
               VALUES (%s, %s, %s, %s, %s, %s, %s)""",
            [doc_id, line.line_id, wid, item_id, line.serial, delta, balance],
        )
    return Posted(doc_id, doc_no, direction, doc.kind)


def _resolve_lines(conn: psycopg.Connection[Any], given: list[LineInput]) -> list[_Line]:
    out: list[_Line] = []
    serials: set[str] = set()
    for no, line in enumerate(given, start=1):
        where = f"lines.{no}"
        code = line.item.strip()
        row = conn.execute(
            "SELECT id, serial_tracked, meter_model_id, active, price FROM item WHERE code = %s", [code]
        ).fetchone()
        if row is None or not row[3]:
            raise WarehouseError("not_found", "no such active item", field=f"{where}.item", value=code, line=no)
        quantity = parse_quantity(line.quantity if str(line.quantity).strip() else "1", f"{where}.quantity")
        serial = line.serial_no.strip() or None
        if row[1]:
            if serial is None:
                raise WarehouseError(
                    "serial_required", "this item is tracked by serial number", field=f"{where}.serial_no", line=no
                )
            if not SERIAL_RE.match(serial):
                raise WarehouseError("bad_serial", "1–64 letters, digits, _ . -", field=f"{where}.serial_no", line=no)
            if quantity != 1:
                raise WarehouseError("serial_one", "a serial number is one unit", field=f"{where}.quantity", line=no)
            if serial in serials:
                raise WarehouseError(
                    "duplicate",
                    "serial number twice in the document",
                    field=f"{where}.serial_no",
                    serial_no=serial,
                    line=no,
                )
            serials.add(serial)
        elif serial is not None:
            raise WarehouseError("not_tracked", "this item has no serial numbers", field=f"{where}.serial_no", line=no)
        price = parse_price(line.unit_price, f"{where}.unit_price")
        out.append(_Line(no, int(row[0]), bool(row[1]), row[2], serial, quantity, price))
    return out


def _meter_back_in_stock(conn: psycopg.Connection[Any], serial: str, doc_id: int, where: str, line_no: int) -> None:
    """A meter returned to the warehouse: a removed one is in stock again (off its old account, which keeps
    it in its history), so that it can be installed elsewhere; one still on an account cannot come back."""
    meter = conn.execute(
        "SELECT id, status, account_id FROM meter WHERE meter_no = %s FOR UPDATE", [serial]
    ).fetchone()
    if meter is None or meter[1] == "in_stock":
        return
    if meter[1] != "removed":
        raise WarehouseError(
            "meter_in_use",
            f"meter {serial} is {meter[1]} on an account: remove it there first",
            field=where,
            serial_no=serial,
            line=line_no,
        )
    conn.execute(
        """UPDATE meter SET status = 'in_stock', account_id = NULL, install_date = NULL, remove_date = NULL
            WHERE id = %s""",
        [meter[0]],
    )
    doc_no = conn.execute("SELECT doc_no FROM stock_doc WHERE id = %s", [doc_id]).fetchone()
    conn.execute(
        """INSERT INTO meter_action (meter_id, account_id, action, at, reason)
           VALUES (%s, %s, 'return', now(), %s)""",
        [meter[0], meter[2], f"warehouse {doc_no[0] if doc_no else doc_id}"],
    )


def _move_serial(
    conn: psycopg.Connection[Any], kind: str, doc_id: int, warehouse_id: int, to_id: int | None, line: _Line
) -> None:
    serial = line.serial
    where = f"lines.{line.no}.serial_no"
    if kind in IN_KINDS:
        known = conn.execute(
            "SELECT item_id, status FROM stock_serial WHERE serial_no = %s FOR UPDATE", [serial]
        ).fetchone()
        if known is None:
            conn.execute(
                """INSERT INTO stock_serial (serial_no, item_id, warehouse_id, status, last_doc_id)
                   VALUES (%s, %s, %s, 'in_stock', %s)""",
                [serial, line.item_id, warehouse_id, doc_id],
            )
            if line.meter_model_id is not None:
                conn.execute(
                    """INSERT INTO meter (meter_no, model_id, driver_key, register_max)
                       SELECT %s, id, driver_key, register_max FROM meter_model WHERE id = %s
                       ON CONFLICT (meter_no) DO NOTHING""",
                    [serial, line.meter_model_id],
                )
            return
        if known[0] != line.item_id:
            raise WarehouseError(
                "serial_item", "the serial number belongs to another item", field=where, serial_no=serial, line=line.no
            )
        if known[1] == "in_stock":
            raise WarehouseError(
                "serial_in_stock", "the serial number is in stock already", field=where, serial_no=serial, line=line.no
            )
        if known[1] == "scrapped":
            raise WarehouseError(
                "serial_scrapped", "the serial number was scrapped", field=where, serial_no=serial, line=line.no
            )
        if kind == "purchase":
            raise WarehouseError(
                "serial_known",
                "the serial number was in stock before: take it back as a return",
                field=where,
                serial_no=serial,
                line=line.no,
            )
        assert serial is not None  # a serial-tracked line (checked when the document was read)
        _meter_back_in_stock(conn, serial, doc_id, where, line.no)
        conn.execute(
            """UPDATE stock_serial SET status = 'in_stock', warehouse_id = %s, last_doc_id = %s, updated_at = now()
                WHERE serial_no = %s""",
            [warehouse_id, doc_id, serial],
        )
        return
    if kind == "transfer":
        moved = conn.execute(
            """UPDATE stock_serial SET warehouse_id = %s, last_doc_id = %s, updated_at = now()
                WHERE serial_no = %s AND item_id = %s AND warehouse_id = %s AND status = 'in_stock' RETURNING 1""",
            [to_id, doc_id, serial, line.item_id, warehouse_id],
        ).fetchone()
    else:
        moved = conn.execute(
            """UPDATE stock_serial SET status = %s, warehouse_id = NULL, last_doc_id = %s, updated_at = now()
                WHERE serial_no = %s AND item_id = %s AND warehouse_id = %s AND status = 'in_stock' RETURNING 1""",
            ["scrapped" if kind == "scrap" else "issued", doc_id, serial, line.item_id, warehouse_id],
        ).fetchone()
    if moved is None:
        raise WarehouseError(
            "serial_not_in_stock",
            "the serial number is not in stock in this warehouse",
            field=where,
            serial_no=serial,
            line=line.no,
        )


def _change_stock(
    conn: psycopg.Connection[Any], warehouse_id: int, item_id: int, delta: Decimal, line: _Line
) -> Decimal:
    """Add `delta` to a stock level; a decrease only where enough is left (row lock, re-checked after a
    concurrent document commits). Returns the level after the change."""
    if delta > 0:
        row = conn.execute(
            """INSERT INTO stock (warehouse_id, item_id, quantity) VALUES (%s, %s, %s)
               ON CONFLICT (warehouse_id, item_id) DO UPDATE
                   SET quantity = stock.quantity + EXCLUDED.quantity, updated_at = now()
               RETURNING quantity""",
            [warehouse_id, item_id, delta],
        ).fetchone()
    else:
        row = conn.execute(
            """UPDATE stock SET quantity = quantity - %s, updated_at = now()
                WHERE warehouse_id = %s AND item_id = %s AND quantity >= %s RETURNING quantity""",
            [-delta, warehouse_id, item_id, -delta],
        ).fetchone()
        if row is None:
            have = conn.execute(
                "SELECT quantity FROM stock WHERE warehouse_id = %s AND item_id = %s", [warehouse_id, item_id]
            ).fetchone()
            code = conn.execute("SELECT code FROM item WHERE id = %s", [item_id]).fetchone()
            available = Decimal(have[0]) if have else Decimal(0)
            raise WarehouseError(
                "short",
                f"not enough in stock: {available.normalize():f} left, {(-delta).normalize():f} wanted",
                field=f"lines.{line.no}.quantity",
                item=code[0] if code else "",
                available=f"{available.normalize():f}",
                wanted=f"{(-delta).normalize():f}",
                line=line.no,
            )
    assert row is not None
    return Decimal(row[0])


def draw_for_install(
    conn: psycopg.Connection[Any], meter_no: str, *, account_no: str, day: date, today: date, note: str = ""
) -> Posted | None:
    """Take a meter being installed out of stock, in the installation's transaction: a stock-out document of
    kind `install` from the warehouse that holds its serial number. None when the serial number is not
    known to the warehouse (a meter of a fleet that was never in stock). A serial that left stock already
    is refused (`serial_not_in_stock`)."""
    row = conn.execute(
        """SELECT s.status, w.code, i.code FROM stock_serial s JOIN item i ON i.id = s.item_id
             LEFT JOIN warehouse w ON w.id = s.warehouse_id WHERE s.serial_no = %s FOR UPDATE OF s""",
        [meter_no],
    ).fetchone()
    if row is None:
        return None
    if row[0] != "in_stock":
        raise WarehouseError(
            "serial_not_in_stock",
            "the serial number is not in stock",
            field="meter_no",
            serial_no=meter_no,
            status=row[0],
        )
    return post_in(
        conn,
        DocInput(
            kind="install",
            warehouse=row[1],
            lines=[LineInput(item=row[2], quantity="1", serial_no=meter_no)],
            doc_date=min(day, today),
            account_no=account_no,
            meter_no=meter_no,
            note=note,
        ),
        today=today,
    )


# -- what is read ----------------------------------------------------------------------------------------
def levels(
    conn: psycopg.Connection[Any],
    q: str = "",
    warehouse: str = "",
    *,
    include_zero: bool = False,
    page: int = 1,
    size: int | None = 50,
) -> Page:
    """Stock per warehouse and item whose code, name or spec contains `q`."""
    q = q.strip()
    return _paged(
        conn,
        """SELECT w.code AS warehouse, w.name AS warehouse_name, i.code AS item, i.name AS item_name, i.spec,
                  i.unit, i.serial_tracked, c.name AS category, s.quantity, s.updated_at
             FROM stock s JOIN warehouse w ON w.id = s.warehouse_id JOIN item i ON i.id = s.item_id
             LEFT JOIN item_category c ON c.id = i.category_id
            WHERE (%(q)s = '' OR i.code ILIKE %(like)s OR i.name ILIKE %(like)s OR i.spec ILIKE %(like)s)
              AND (%(wh)s = '' OR w.code = %(wh)s)
              AND (%(zero)s OR s.quantity > 0)
            ORDER BY w.code, i.code""",
        {"q": q, "like": _like(q), "wh": warehouse.strip(), "zero": include_zero}, page, size,
    )  # fmt: skip


def documents(
    conn: psycopg.Connection[Any],
    q: str = "",
    *,
    direction: str = "",
    kind: str = "",
    warehouse: str = "",
    date_from: date | None = None,
    date_to: date | None = None,
    page: int = 1,
    size: int | None = 50,
) -> Page:
    """Documents, newest first, whose number, reference, note, supplier, item or serial contains `q`."""
    q = q.strip()
    return _paged(
        conn,
        """SELECT d.doc_no, d.direction, d.kind, d.doc_date, w.code AS warehouse, tw.code AS to_warehouse,
                  sp.name AS supplier, a.account_no, m.meter_no, r.repair_no, d.reference, d.note, d.created_by,
                  d.created_at,
                  (SELECT count(*) FROM stock_doc_line l WHERE l.doc_id = d.id) AS lines,
                  (SELECT sum(l.amount) FROM stock_doc_line l WHERE l.doc_id = d.id) AS amount
             FROM stock_doc d JOIN warehouse w ON w.id = d.warehouse_id
             LEFT JOIN warehouse tw ON tw.id = d.to_warehouse_id
             LEFT JOIN supplier sp ON sp.id = d.supplier_id
             LEFT JOIN account a ON a.id = d.account_id
             LEFT JOIN meter m ON m.id = d.meter_id
             LEFT JOIN repair r ON r.id = d.repair_id
            WHERE (%(q)s = '' OR d.doc_no ILIKE %(like)s OR d.reference ILIKE %(like)s OR d.note ILIKE %(like)s
                   OR sp.name ILIKE %(like)s OR a.account_no ILIKE %(like)s
                   OR EXISTS (SELECT 1 FROM stock_doc_line l JOIN item i ON i.id = l.item_id
                               WHERE l.doc_id = d.id AND (i.code ILIKE %(like)s OR i.name ILIKE %(like)s
                                                          OR l.serial_no ILIKE %(like)s)))
              AND (%(dir)s = '' OR d.direction = %(dir)s)
              AND (%(kind)s = '' OR d.kind = %(kind)s)
              AND (%(wh)s = '' OR w.code = %(wh)s OR tw.code = %(wh)s)
              AND (%(from)s::date IS NULL OR d.doc_date >= %(from)s::date)
              AND (%(to)s::date IS NULL OR d.doc_date <= %(to)s::date)
            ORDER BY d.doc_date DESC, d.id DESC""",
        {"q": q, "like": _like(q), "dir": direction, "kind": kind, "wh": warehouse.strip(), "from": date_from,
         "to": date_to},
        page, size,
    )  # fmt: skip


def document(conn: psycopg.Connection[Any], doc_no: str) -> dict[str, Any] | None:
    """A document with its lines."""
    head = (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT d.id, d.doc_no, d.direction, d.kind, d.doc_date, w.code AS warehouse, w.name AS warehouse_name,
                  tw.code AS to_warehouse, tw.name AS to_warehouse_name, sp.code AS supplier_code,
                  sp.name AS supplier, a.account_no, m.meter_no, r.repair_no, d.reference, d.note, d.created_by,
                  d.created_at
             FROM stock_doc d JOIN warehouse w ON w.id = d.warehouse_id
             LEFT JOIN warehouse tw ON tw.id = d.to_warehouse_id
             LEFT JOIN supplier sp ON sp.id = d.supplier_id
             LEFT JOIN account a ON a.id = d.account_id
             LEFT JOIN meter m ON m.id = d.meter_id
             LEFT JOIN repair r ON r.id = d.repair_id
            WHERE d.doc_no = %s""",
            [doc_no],
        )
        .fetchone()
    )
    if head is None:
        return None
    head["lines"] = (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT l.line_no, i.code AS item, i.name AS item_name, i.spec, i.unit, l.serial_no, l.quantity,
                  l.unit_price, l.amount
             FROM stock_doc_line l JOIN item i ON i.id = l.item_id WHERE l.doc_id = %s ORDER BY l.line_no""",
            [head["id"]],
        )
        .fetchall()
    )
    head["amount"] = sum((r["amount"] for r in head["lines"] if r["amount"] is not None), Decimal("0.00"))
    return head


def movements(
    conn: psycopg.Connection[Any],
    q: str = "",
    *,
    item: str = "",
    serial_no: str = "",
    warehouse: str = "",
    page: int = 1,
    size: int | None = 50,
) -> Page:
    """The movement history, newest first."""
    q = q.strip()
    return _paged(
        conn,
        """SELECT mv.id, mv.at, d.doc_no, d.kind, d.direction, w.code AS warehouse, i.code AS item,
                  i.name AS item_name, i.unit, mv.serial_no, mv.quantity, mv.balance_after, mv.actor
             FROM stock_movement mv JOIN stock_doc d ON d.id = mv.doc_id
             JOIN warehouse w ON w.id = mv.warehouse_id JOIN item i ON i.id = mv.item_id
            WHERE (%(q)s = '' OR d.doc_no ILIKE %(like)s OR i.code ILIKE %(like)s OR i.name ILIKE %(like)s
                   OR mv.serial_no ILIKE %(like)s)
              AND (%(item)s = '' OR i.code = %(item)s)
              AND (%(serial)s = '' OR mv.serial_no = %(serial)s)
              AND (%(wh)s = '' OR w.code = %(wh)s)
            ORDER BY mv.id DESC""",
        {"q": q, "like": _like(q), "item": item.strip(), "serial": serial_no.strip(), "wh": warehouse.strip()},
        page, size,
    )  # fmt: skip


def item_detail(conn: psycopg.Connection[Any], code: str) -> dict[str, Any] | None:
    """An item: its facts, its stock per warehouse, the serial numbers in stock, its latest movements."""
    item = next((r for r in items(conn, code, size=None).rows if r["code"] == code), None)
    if item is None:
        return None
    item["levels"] = [r for r in levels(conn, code, include_zero=True, size=None).rows if r["item"] == code]
    item["serials"] = (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT s.serial_no, s.status, w.code AS warehouse, d.doc_no AS last_doc, s.updated_at
             FROM stock_serial s JOIN item i ON i.id = s.item_id LEFT JOIN warehouse w ON w.id = s.warehouse_id
             JOIN stock_doc d ON d.id = s.last_doc_id
            WHERE i.code = %s ORDER BY s.status, s.serial_no LIMIT 500""",
            [code],
        )
        .fetchall()
    )
    item["movements"] = movements(conn, item=code, size=100).rows
    return item


def serial_detail(conn: psycopg.Connection[Any], serial_no: str) -> dict[str, Any] | None:
    """A serial number: its item, where it is, every movement of it."""
    head = (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT s.serial_no, s.status, i.code AS item, i.name AS item_name, w.code AS warehouse,
                  w.name AS warehouse_name, d.doc_no AS last_doc, s.updated_at,
                  m.meter_no, m.status AS meter_status
             FROM stock_serial s JOIN item i ON i.id = s.item_id LEFT JOIN warehouse w ON w.id = s.warehouse_id
             JOIN stock_doc d ON d.id = s.last_doc_id LEFT JOIN meter m ON m.meter_no = s.serial_no
            WHERE s.serial_no = %s""",
            [serial_no],
        )
        .fetchone()
    )
    if head is None:
        return None
    head["movements"] = movements(conn, serial_no=serial_no, size=None).rows
    return head


# -- demo ------------------------------------------------------------------------------------------------
def seed_demo(conn: psycopg.Connection[Any]) -> None:
    """A central warehouse and a district store, suppliers, materials and a meter item, a purchase, a transfer
    and a scrapping, on top of the demo's data. A second call adds nothing."""
    if conn.execute("SELECT 1 FROM warehouse WHERE code = 'ZK'").fetchone():
        return
    actor = conn.execute("SELECT current_setting('meterhub.actor', true)").fetchone()
    conn.execute("SELECT set_config('meterhub.actor', 'storekeeper', true)")
    conn.execute(
        """INSERT INTO warehouse (code, name, address, keeper) VALUES
               ('ZK', '总库', '城东工业园 8 号', '孙丽'), ('HD', '河东分库', '河东区建设路 12 号', '孙丽')"""
    )
    conn.execute(
        """INSERT INTO item_category (code, name) VALUES ('METER', '燃气表'), ('PIPE', '管材管件'),
               ('VALVE', '阀门'), ('PART', '配件')"""
    )
    conn.execute(
        """INSERT INTO supplier (code, name, contact, phone, address) VALUES
               ('GOLDCARD', '金卡智能集团股份有限公司', '陈经理', '0571-56633333', '杭州市余杭区'),
               ('HUAYANG', '华阳燃气设备有限公司', '刘经理', '0755-28881234', '深圳市龙岗区')"""
    )
    model = conn.execute("SELECT id FROM meter_model ORDER BY id LIMIT 1").fetchone()
    conn.execute(
        """INSERT INTO item (code, name, category_id, unit, spec, serial_tracked, meter_model_id, price) VALUES
               ('M-G25', 'NB-IoT 物联网燃气表', (SELECT id FROM item_category WHERE code = 'METER'), '台', 'G2.5',
                true, %s, 420.00),
               ('PE-20', 'PE 燃气管', (SELECT id FROM item_category WHERE code = 'PIPE'), '米', 'DN20', false, NULL,
                12.50),
               ('BV-15', '球阀', (SELECT id FROM item_category WHERE code = 'VALVE'), '个', 'DN15', false, NULL, 35.00),
               ('HOSE-15', '不锈钢波纹管', (SELECT id FROM item_category WHERE code = 'PART'), '根', '1.5 m', false,
                NULL, 28.00),
               ('SEAL', '密封垫', (SELECT id FROM item_category WHERE code = 'PART'), '个', 'DN20', false, NULL,
                0.80)""",
        [model[0] if model else None],
    )
    today = today_in("Asia/Shanghai")
    post_in(conn, DocInput(
        kind="purchase", warehouse="ZK", supplier="GOLDCARD", reference="JK-2026-118",
        lines=[LineInput("M-G25", "1", f"WH{n:08d}", "420.00") for n in range(1, 6)]
        + [LineInput("PE-20", "500", "", "12.50"), LineInput("BV-15", "120", "", "35.00"),
           LineInput("HOSE-15", "80", "", "28.00"), LineInput("SEAL", "1000", "", "0.80")],
    ), today=today)  # fmt: skip
    post_in(conn, DocInput(
        kind="transfer", warehouse="ZK", to_warehouse="HD", note="河东片区维修备料",
        lines=[LineInput("BV-15", "20"), LineInput("HOSE-15", "15"), LineInput("SEAL", "200"),
               LineInput("M-G25", "1", "WH00000005")],
    ), today=today)  # fmt: skip
    post_in(
        conn, DocInput(kind="scrap", warehouse="ZK", note="运输破损", lines=[LineInput("HOSE-15", "2")]), today=today
    )
    conn.execute("SELECT set_config('meterhub.actor', %s, true)", [actor[0] if actor and actor[0] else ""])
