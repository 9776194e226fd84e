"""System settings (参数配置): typed parameters kept in the database, the console's menu names and order,
and print templates for receipts and invoices.

Parameters live in `system_setting` (0026), one row per key that differs from its default in
`DEFINITIONS`; a key without a row has its default, so a new or emptied database works as shipped.
Each value is checked against its definition before anything is written, and a save of several values is
one transaction: all of them or none. The console records every change in the operation log.

Print templates place named fields (`FIELDS`) at positions in millimetres on a paper size; `fill()` turns
a template and the values of a receipt or an invoice into what the print page shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

LANGUAGES = ("zh", "en")
LOGO_MAX_BYTES = 512 * 1024
LOGO_TYPES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff", "image/gif": b"GIF8"}
LABEL_MAX = 40


class SettingsError(ValueError):
    """A refused change: `code` for programs, `field` names the value at fault."""

    def __init__(self, code: str, message: str, field: str = "", status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status


@dataclass(frozen=True)
class Definition:
    type: Literal["text", "int", "bool", "json", "image"]
    default: Any
    max_length: int = 200
    minimum: int | None = None
    maximum: int | None = None
    group: str = "basic"


# Every parameter meterhub knows; the settings page shows the `basic` and `kiosk` groups as forms.
DEFINITIONS: dict[str, Definition] = {
    "company.name": Definition("text", "", 100),
    "company.phone": Definition("text", "", 40),
    "company.address": Definition("text", "", 200),
    "company.hotline": Definition("text", "", 40),
    "company.logo": Definition("image", None, group="logo"),
    "menu.order": Definition("json", [], group="menu"),
    "menu.labels": Definition("json", {}, group="menu"),
    "kiosk.enabled": Definition("bool", True, group="kiosk"),
    "kiosk.lockout_failures": Definition("int", 5, minimum=1, maximum=100, group="kiosk"),
    "kiosk.lockout_min": Definition("int", 15, minimum=1, maximum=1440, group="kiosk"),
    "kiosk.ip_failures": Definition("int", 20, minimum=1, maximum=10000, group="kiosk"),
    "kiosk.readings": Definition("int", 6, minimum=1, maximum=24, group="kiosk"),
}
BASIC_KEYS = ("company.name", "company.phone", "company.address", "company.hotline")
KIOSK_KEYS = ("kiosk.enabled", "kiosk.lockout_failures", "kiosk.lockout_min", "kiosk.ip_failures", "kiosk.readings")


def _definition(key: str) -> Definition:
    try:
        return DEFINITIONS[key]
    except KeyError:
        raise SettingsError("unknown_key", f"no setting {key!r}", key) from None


def load(conn: psycopg.Connection[Any], keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The values of `keys` (default: every key), stored or default; an image is its metadata or None."""
    wanted = list(keys) if keys is not None else list(DEFINITIONS)
    values = {key: _definition(key).default for key in wanted}
    for key, value in conn.execute("SELECT key, value FROM system_setting WHERE key = ANY(%s)", [wanted]):
        if key in values:
            values[key] = value
    return values


def parse(key: str, text: str | bool | int | None) -> Any:
    """A submitted value as the type its definition says, or SettingsError."""
    definition = _definition(key)
    if definition.type == "text":
        value = "" if text is None else str(text).strip()
        if len(value) > definition.max_length:
            raise SettingsError("too_long", f"at most {definition.max_length} characters", key)
        if any(ord(c) < 32 for c in value):
            raise SettingsError("control_character", "no line breaks or control characters", key)
        return value
    if definition.type == "bool":
        if isinstance(text, bool):
            return text
        return str(text or "").lower() in ("1", "true", "on", "yes")
    if definition.type == "int":
        if isinstance(text, bool):
            raise SettingsError("not_a_number", "a whole number is needed", key)
        try:
            number = int(str(text).strip())
        except (TypeError, ValueError):
            raise SettingsError("not_a_number", "a whole number is needed", key) from None
        if (definition.minimum is not None and number < definition.minimum) or (
            definition.maximum is not None and number > definition.maximum
        ):
            raise SettingsError("out_of_range", f"between {definition.minimum} and {definition.maximum}", key)
        return number
    raise SettingsError("not_editable", f"{key} is not set this way", key)


def _write(conn: psycopg.Connection[Any], key: str, value: Any, actor: str) -> None:
    definition = _definition(key)
    conn.execute(
        """INSERT INTO system_setting (key, type, value, updated_by) VALUES (%s, %s, %s, %s)
           ON CONFLICT (key) DO UPDATE SET type = EXCLUDED.type, value = EXCLUDED.value,
                                           updated_by = EXCLUDED.updated_by, updated_at = now()""",
        [key, definition.type, Jsonb(value), actor],
    )


def save(conn: psycopg.Connection[Any], submitted: Mapping[str, Any], actor: str) -> dict[str, tuple[Any, Any]]:
    """Check every submitted value, then write those that changed; {key: (old, new)} of the changes."""
    parsed = {key: parse(key, value) for key, value in submitted.items()}
    current = load(conn, parsed)
    changes = {key: (current[key], value) for key, value in parsed.items() if current[key] != value}
    for key, (_old, new) in changes.items():
        _write(conn, key, new, actor)
    return changes


# -- the logo -----------------------------------------------------------------------------------------
def sniff_image(data: bytes) -> str | None:
    """The image type of `data` from its first bytes (PNG, JPEG, GIF), None for anything else."""
    for content_type, magic in LOGO_TYPES.items():
        if data.startswith(magic):
            return content_type
    return None


def set_logo(conn: psycopg.Connection[Any], data: bytes, filename: str, actor: str) -> str:
    """Store the company logo (PNG, JPEG or GIF up to LOGO_MAX_BYTES); returns its type."""
    if not data:
        raise SettingsError("empty_file", "choose an image file", "company.logo")
    if len(data) > LOGO_MAX_BYTES:
        raise SettingsError("too_large", f"the logo may have at most {LOGO_MAX_BYTES // 1024} KiB", "company.logo")
    content_type = sniff_image(data)
    if content_type is None:
        raise SettingsError("not_an_image", "the logo must be a PNG, JPEG or GIF image", "company.logo")
    conn.execute(
        """INSERT INTO system_setting (key, type, value, blob, content_type, updated_by)
           VALUES ('company.logo', 'image', %s, %s, %s, %s)
           ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, blob = EXCLUDED.blob,
                  content_type = EXCLUDED.content_type, updated_by = EXCLUDED.updated_by, updated_at = now()""",
        [Jsonb({"filename": filename[:255], "size": len(data)}), data, content_type, actor],
    )
    return content_type


def clear_logo(conn: psycopg.Connection[Any]) -> bool:
    return conn.execute("DELETE FROM system_setting WHERE key = 'company.logo'").rowcount > 0


def logo(conn: psycopg.Connection[Any]) -> tuple[bytes, str, datetime] | None:
    row = conn.execute(
        "SELECT blob, content_type, updated_at FROM system_setting WHERE key = 'company.logo' AND blob IS NOT NULL"
    ).fetchone()
    return (bytes(row[0]), str(row[1]), row[2]) if row else None


# -- the console's look: company, logo, menu ------------------------------------------------------------
@dataclass(frozen=True)
class ConsoleLook:
    """What every page of the console takes from the settings (read once per request)."""

    company_name: str = ""
    logo_version: int | None = None  # changes with the logo, for its URL
    hotline: str = ""
    menu_order: tuple[str, ...] = ()
    labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def label(self, language: str, key: str) -> str | None:
        return self.labels.get(language, {}).get(key)

    def ordered(self, keys: list[str]) -> list[str]:
        """`keys` in the configured order; keys the order does not name keep their place after it."""
        rank = {key: i for i, key in enumerate(self.menu_order)}
        return sorted(keys, key=lambda k: (rank.get(k, len(rank)), keys.index(k)))


def console_look(conn: psycopg.Connection[Any]) -> ConsoleLook:
    rows = conn.execute(
        """SELECT key, value, extract(epoch FROM updated_at)::bigint FROM system_setting
            WHERE key IN ('company.name', 'company.hotline', 'company.logo', 'menu.order', 'menu.labels')"""
    ).fetchall()
    found = {key: (value, version) for key, value, version in rows}
    labels = found.get("menu.labels", ({}, 0))[0]
    order = found.get("menu.order", ([], 0))[0]
    return ConsoleLook(
        company_name=str(found.get("company.name", ("", 0))[0] or ""),
        logo_version=int(found["company.logo"][1]) if "company.logo" in found else None,
        hotline=str(found.get("company.hotline", ("", 0))[0] or ""),
        menu_order=tuple(str(k) for k in order) if isinstance(order, list) else (),
        labels={
            lang: {str(k): str(v) for k, v in table.items()}
            for lang, table in (labels.items() if isinstance(labels, dict) else [])
            if lang in LANGUAGES and isinstance(table, dict)
        },
    )


def save_menu(
    conn: psycopg.Connection[Any],
    known: Iterable[str],
    order: Mapping[str, str],
    labels: Mapping[str, Mapping[str, str]],
    actor: str,
) -> dict[str, tuple[Any, Any]]:
    """Menu order (position numbers per key; the menu sorts by them) and display names per language for
    the keys in `known`; an empty name means the shipped text."""
    known_keys = list(known)
    ranks: list[tuple[Decimal, int, str]] = []
    for index, key in enumerate(known_keys):
        text = (order.get(key) or "").strip()
        if not text:
            ranks.append((Decimal(10_000 + index), index, key))
            continue
        try:
            rank = Decimal(text)
        except InvalidOperation:
            raise SettingsError("not_a_number", "a position is a number", f"order.{key}") from None
        if not rank.is_finite() or abs(rank) > 10_000:
            raise SettingsError("out_of_range", "a position between -10000 and 10000", f"order.{key}")
        ranks.append((rank, index, key))
    unknown = [k for k in list(order) + [k for table in labels.values() for k in table] if k not in known_keys]
    if unknown:
        raise SettingsError("unknown_key", f"no menu item or page {unknown[0]!r}", unknown[0])
    clean: dict[str, dict[str, str]] = {}
    for lang, table in labels.items():
        if lang not in LANGUAGES:
            raise SettingsError("unknown_language", f"no language {lang!r}", lang)
        for key, text in table.items():
            value = (text or "").strip()
            if len(value) > LABEL_MAX:
                raise SettingsError("too_long", f"at most {LABEL_MAX} characters", f"{lang}.{key}")
            if any(ord(c) < 32 for c in value):
                raise SettingsError("control_character", "no line breaks or control characters", f"{lang}.{key}")
            if value:
                clean.setdefault(lang, {})[key] = value
    new_order = [key for _rank, _index, key in sorted(ranks)]
    values = {"menu.order": new_order if new_order != known_keys else [], "menu.labels": clean}
    current = load(conn, values)
    changes = {key: (current[key], value) for key, value in values.items() if current[key] != value}
    for key, (_old, new) in changes.items():
        _write(conn, key, new, actor)
    return changes


def reset_menu(conn: psycopg.Connection[Any]) -> int:
    """Back to the shipped names and order."""
    return conn.execute("DELETE FROM system_setting WHERE key IN ('menu.order', 'menu.labels')").rowcount


# -- print templates -----------------------------------------------------------------------------------------
Kind = Literal["receipt", "invoice"]
KINDS: tuple[Kind, ...] = ("receipt", "invoice")
# The fields a template can place, per kind (their names are texts settings.field.<name>).
FIELDS: dict[str, tuple[str, ...]] = {
    "receipt": (
        "company_name",
        "title",
        "receipt_no",
        "paid_at",
        "account_no",
        "customer_name",
        "address",
        "amount",
        "amount_words",
        "method",
        "channel",
        "cashier",
        "note",
        "reprint_mark",
        "hotline",
        "company_phone",
        "company_address",
    ),
    "invoice": (
        "company_name",
        "title",
        "invoice_no",
        "issued_on",
        "account_no",
        "customer_name",
        "address",
        "item",
        "amount",
        "amount_words",
        "cashier",
        "receipt_no",
        "hotline",
        "company_phone",
        "company_address",
    ),
}
PAPER_PRESETS = {"A4": (210, 297), "A5": (148, 210), "241x140": (241, 140), "241x93": (241, 93), "80x200": (80, 200)}


@dataclass(frozen=True)
class Placement:
    field: str
    x: Decimal
    y: Decimal
    w: Decimal
    size: Decimal | None  # None: the template's font size

    def as_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "x": float(self.x),
            "y": float(self.y),
            "w": float(self.w),
            "size": None if self.size is None else float(self.size),
        }


@dataclass(frozen=True)
class PrintTemplate:
    id: int
    kind: str
    name: str
    paper_width_mm: Decimal
    paper_height_mm: Decimal
    font_size_pt: Decimal
    printer_name: str
    fields: list[Placement]
    is_default: bool
    updated_by: str
    updated_at: datetime


def _placements(raw: Any) -> list[Placement]:
    out = []
    for item in raw if isinstance(raw, list) else []:
        size = item.get("size")
        out.append(
            Placement(
                str(item["field"]),
                Decimal(str(item["x"])),
                Decimal(str(item["y"])),
                Decimal(str(item.get("w", 60))),
                None if size is None else Decimal(str(size)),
            )
        )
    return out


def _template(row: dict[str, Any]) -> PrintTemplate:
    row = dict(row)
    row["fields"] = _placements(row["fields"])
    return PrintTemplate(**row)


_TEMPLATE_COLUMNS = """id, kind, name, paper_width_mm, paper_height_mm, font_size_pt, printer_name, fields, is_default,
                       updated_by, updated_at"""


def templates(conn: psycopg.Connection[Any], kind: str | None = None) -> list[PrintTemplate]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {_TEMPLATE_COLUMNS} FROM print_template WHERE %(kind)s::text IS NULL OR kind = %(kind)s "
            "ORDER BY kind DESC, NOT is_default, name",
            {"kind": kind},
        ).fetchall()
    return [_template(r) for r in rows]


def get_template(conn: psycopg.Connection[Any], template_id: int) -> PrintTemplate:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_TEMPLATE_COLUMNS} FROM print_template WHERE id = %s", [template_id]).fetchone()
    if row is None:
        raise SettingsError("not_found", f"no print template {template_id}", status=404)
    return _template(row)


def default_template(conn: psycopg.Connection[Any], kind: str) -> PrintTemplate | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {_TEMPLATE_COLUMNS} FROM print_template WHERE kind = %s ORDER BY NOT is_default, id LIMIT 1",
            [kind],
        ).fetchone()
    return _template(row) if row else None


def _number(text: Any, name: str, low: Decimal, high: Decimal, *, blank: bool = False) -> Decimal | None:
    value = "" if text is None else str(text).strip()
    if value == "" and blank:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise SettingsError("not_a_number", "a number is needed", name) from None
    if not number.is_finite() or number < low or number > high:
        raise SettingsError("out_of_range", f"between {low} and {high}", name)
    return number.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class TemplateInput:
    """A template as submitted: texts, checked by `check_template`."""

    kind: str
    name: str
    paper_width_mm: str
    paper_height_mm: str
    font_size_pt: str
    printer_name: str = ""
    # per field: {"x": "10", "y": "20", "w": "60", "size": ""}; a field left out is not printed
    fields: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def check_template(data: TemplateInput) -> dict[str, Any]:
    """The column values of a valid template, or SettingsError naming the first problem."""
    if data.kind not in KINDS:
        raise SettingsError("unknown_kind", f"a template is for {' or '.join(KINDS)}", "kind")
    name = data.name.strip()
    if not 1 <= len(name) <= 100:
        raise SettingsError("required", "a name of 1 to 100 characters", "name")
    width = _number(data.paper_width_mm, "paper_width_mm", Decimal(20), Decimal(1000))
    height = _number(data.paper_height_mm, "paper_height_mm", Decimal(20), Decimal(1000))
    font = _number(data.font_size_pt, "font_size_pt", Decimal(4), Decimal(72))
    assert width is not None and height is not None and font is not None
    printer = data.printer_name.strip()
    if len(printer) > 200 or any(ord(c) < 32 for c in printer):
        raise SettingsError("too_long", "a printer name of at most 200 characters on one line", "printer_name")
    placements = []
    for name_, spec in data.fields.items():
        if name_ not in FIELDS[data.kind]:
            raise SettingsError("unknown_field", f"a {data.kind} has no field {name_!r}", name_)
        x = _number(spec.get("x"), f"{name_}.x", Decimal(0), width)
        y = _number(spec.get("y"), f"{name_}.y", Decimal(0), height)
        w = _number(spec.get("w") or "60", f"{name_}.w", Decimal(1), Decimal(1000))
        size = _number(spec.get("size"), f"{name_}.size", Decimal(4), Decimal(72), blank=True)
        assert x is not None and y is not None and w is not None
        if x + w > width:
            w = width - x if width - x >= 1 else Decimal(1)
        placements.append(Placement(name_, x, y, w, size))
    if not placements:
        raise SettingsError("no_fields", "place at least one field", "fields")
    return {
        "kind": data.kind,
        "name": name,
        "paper_width_mm": width,
        "paper_height_mm": height,
        "font_size_pt": font,
        "printer_name": printer,
        "fields": Jsonb([p.as_json() for p in placements]),
    }


def save_template(conn: psycopg.Connection[Any], template_id: int | None, data: TemplateInput, actor: str) -> int:
    """Create (template_id None) or change a template; returns its id."""
    values = check_template(data)
    try:
        if template_id is None:
            row = conn.execute(
                """INSERT INTO print_template (kind, name, paper_width_mm, paper_height_mm, font_size_pt,
                                               printer_name, fields, is_default, updated_by)
                   VALUES (%(kind)s, %(name)s, %(paper_width_mm)s, %(paper_height_mm)s, %(font_size_pt)s,
                           %(printer_name)s, %(fields)s,
                           NOT EXISTS (SELECT 1 FROM print_template WHERE kind = %(kind)s), %(actor)s)
                   RETURNING id""",
                {**values, "actor": actor},
            ).fetchone()
        else:
            old = get_template(conn, template_id)
            if old.kind != data.kind:
                raise SettingsError("kind_changed", "a template keeps its kind", "kind")
            row = conn.execute(
                """UPDATE print_template SET name = %(name)s, paper_width_mm = %(paper_width_mm)s,
                          paper_height_mm = %(paper_height_mm)s, font_size_pt = %(font_size_pt)s,
                          printer_name = %(printer_name)s, fields = %(fields)s, updated_by = %(actor)s,
                          updated_at = now()
                    WHERE id = %(id)s RETURNING id""",
                {**values, "actor": actor, "id": template_id},
            ).fetchone()
    except psycopg.errors.UniqueViolation:
        raise SettingsError("duplicate_name", "another template of this kind has this name", "name") from None
    assert row is not None
    return int(row[0])


def make_default(conn: psycopg.Connection[Any], template_id: int, actor: str) -> None:
    """The template printed from now on for its kind."""
    template = get_template(conn, template_id)
    conn.execute("UPDATE print_template SET is_default = false WHERE kind = %s AND is_default", [template.kind])
    conn.execute(
        "UPDATE print_template SET is_default = true, updated_by = %s, updated_at = now() WHERE id = %s",
        [actor, template_id],
    )


def delete_template(conn: psycopg.Connection[Any], template_id: int) -> None:
    template = get_template(conn, template_id)
    if template.is_default:
        raise SettingsError("is_default", "make another template the default first", "id", 409)
    conn.execute("DELETE FROM print_template WHERE id = %s", [template_id])


# -- filling a template -------------------------------------------------------------------------------------
_DIGITS = "零壹贰叁肆伍陆柒捌玖"
_UNITS = ("", "拾", "佰", "仟")
_GROUPS = ("", "万", "亿", "万亿")


def amount_in_words(amount: Decimal) -> str:
    """A sum of money in Chinese capital numerals as receipts and invoices print it (人民币大写):
    1234.50 → 壹仟贰佰叁拾肆元伍角整; 1001.05 → 壹仟零壹元零伍分."""
    value = Decimal(amount).quantize(Decimal("0.01"))
    sign = "负" if value < 0 else ""
    value = abs(value)
    yuan = int(value)
    fen_total = int((value - yuan) * 100)
    jiao, fen = divmod(fen_total, 10)
    words = ""
    if yuan:
        groups: list[int] = []
        n = yuan
        while n:
            groups.append(n % 10_000)
            n //= 10_000
        pending_zero = False
        for index in range(len(groups) - 1, -1, -1):
            group = groups[index]
            if group == 0:
                pending_zero = bool(words)
                continue
            text = ""
            digits = [group // 1000 % 10, group // 100 % 10, group // 10 % 10, group % 10]
            zero = pending_zero or (bool(words) and group < 1000)
            for place, digit in enumerate(digits):
                if digit == 0:
                    zero = zero or bool(text)
                    continue
                if zero:
                    text += "零"
                    zero = False
                text += _DIGITS[digit] + _UNITS[3 - place]
            words += text + _GROUPS[index]
            pending_zero = False
        words += "元"
    if jiao == 0 and fen == 0:
        return sign + (words or "零元") + "整"
    if jiao:
        words += _DIGITS[jiao] + "角"
    elif words:
        words += "零"
    if fen:
        words += _DIGITS[fen] + "分"
    else:
        words += "整"
    return sign + words


@dataclass(frozen=True)
class FilledField:
    field: str
    text: str
    css_class: str


def fill(template: PrintTemplate, values: Mapping[str, Any]) -> list[FilledField]:
    """The template's fields with their texts from `values` (a missing value prints as nothing)."""
    out = []
    for index, placement in enumerate(template.fields):
        value = values.get(placement.field)
        out.append(FilledField(placement.field, "" if value is None else str(value), f"f{index}"))
    return out


def _mm(value: Decimal) -> str:
    return f"{value.normalize():f}mm"


def stylesheet(template: PrintTemplate) -> str:
    """The print page's CSS: @page at the paper size, no margins, every field absolutely placed in mm."""
    width, height = _mm(template.paper_width_mm), _mm(template.paper_height_mm)
    lines = [
        f"@page {{ size: {width} {height}; margin: 0; }}",
        "html, body { margin: 0; padding: 0; background: #ddd; }",
        "body { font-family: 'Noto Sans CJK SC', 'Source Han Sans SC', 'Microsoft YaHei', SimSun, sans-serif; }",
        ".tools { padding: 8px 12px; font: 14px sans-serif; background: #f6f6f6; border-bottom: 1px solid #ccc; }",
        ".tools span { margin-right: 1em; }",
        f".sheet {{ position: relative; width: {width}; height: {height}; margin: 12px auto; background: #fff;"
        f" box-shadow: 0 0 4px #999; overflow: hidden; font-size: {template.font_size_pt.normalize():f}pt; }}",
        ".field { position: absolute; white-space: nowrap; overflow: hidden; line-height: 1.2; }",
        ".sheet.guides .field { outline: 1px dashed #9bb; }",
        "@media print { html, body { background: none; } .tools { display: none; }"
        " .sheet { margin: 0; box-shadow: none; } .sheet.guides .field { outline: none; } }",
    ]
    for index, placement in enumerate(template.fields):
        size = f" font-size: {placement.size.normalize():f}pt;" if placement.size is not None else ""
        lines.append(
            f".f{index} {{ left: {_mm(placement.x)}; top: {_mm(placement.y)}; width: {_mm(placement.w)};{size} }}"
        )
    return "\n".join(lines) + "\n"


def sample_values(kind: str, company: Mapping[str, Any]) -> dict[str, Any]:
    """Made-up values of a receipt or an invoice, for a preview without a real one."""
    amount = Decimal("268.50")
    common = {
        "company_name": company.get("company.name") or "XX 燃气有限公司",
        "hotline": company.get("company.hotline") or "",
        "company_phone": company.get("company.phone") or "",
        "company_address": company.get("company.address") or "",
        "account_no": "AC0000123",
        "customer_name": "王建国",
        "address": "幸福路 12 号 3 单元 201",
        "amount": f"{amount:,.2f}",
        "amount_words": amount_in_words(amount),
        "cashier": "cashier",
        "receipt_no": "R20250115000123",
    }
    if kind == "invoice":
        return {
            **common,
            "title": "增值税普通发票",
            "invoice_no": "04400123",
            "issued_on": "2025-01-15",
            "item": "管道天然气 · 居民生活用气",
        }
    return {
        **common,
        "title": "燃气费收据",
        "paid_at": "2025-01-15 10:32",
        "method": "现金",
        "channel": "柜台",
        "note": "",
        "reprint_mark": "",
    }


def field_names(kind: str) -> tuple[str, ...]:
    return FIELDS.get(kind, ())


DEMO_KIOSK_PIN = "2468"


def seed_demo(conn: psycopg.Connection[Any]) -> None:
    """The demo utility's name and contact, the shipped print templates, and kiosk PIN DEMO_KIOSK_PIN on the
    first open account (when no account has a PIN yet); a second call changes nothing."""
    from meterhub import kiosk

    conn.execute("SELECT meterhub_print_template_defaults()")
    if not conn.execute("SELECT 1 FROM kiosk_pin LIMIT 1").fetchone():
        first = conn.execute("SELECT account_no FROM account WHERE status = 'active' ORDER BY id LIMIT 1").fetchone()
        if first:
            kiosk.set_pin(conn, first[0], DEMO_KIOSK_PIN, "demo")
    for key, value in {
        "company.name": "城东燃气有限公司",
        "company.phone": "0571-8800 1234",
        "company.address": "幸福路 1 号城东燃气营业大厅",
        "company.hotline": "96777",
    }.items():
        if not conn.execute("SELECT 1 FROM system_setting WHERE key = %s", [key]).fetchone():
            _write(conn, key, value, "demo")
