"""Master data (基础信息): areas (a tree), communities, buildings, usage types, meter categories,
manufacturers, meter models (with the driver and profile they speak), installers and meter readers; gas
prices by period (the price periods of the tariffs); installation dispatch (分配安装派工); payment groups
of related accounts (关联用户).

Reference rows are created, edited and deactivated (never deleted) through one description per kind
(`KINDS`); each change runs in one transaction with the person as `meterhub.actor`, so that the
change_history rows the triggers write name them. A refused change raises `MasterError` before anything
is written, or inside the transaction, which then rolls back.

Price periods are checked by a `validate` callable the caller passes (billing.tariff builds the tariff from
the new definition), since meterhub does not import billing.

`areas` (the area ids a person is limited to, sub-areas included; None when not limited) restricts the
accounts seen and acted on by dispatch and payment groups to those whose community lies in those areas.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from meterhub.store import Store

# The in-tree drivers (drivers.registry.BUILTIN); third-party drivers join through the entry point group.
DRIVER_KEYS = ("native_json", "json_mapping", "cjt188", "modbus", "mbus")
DRIVER_ENTRY_POINTS = "meterhub.drivers"
MODBUS_PROFILES = Path(__file__).resolve().parents[1] / "drivers" / "modbus" / "profiles"
USAGE_CATEGORIES = ("residential", "commercial", "industrial", "public", "heating")
ORDER_STATUSES = ("assigned", "installed", "cancelled")
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_PHONE = re.compile(r"^[0-9+][0-9 ()+-]{0,29}$")
_DRIVER = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_NAME = 100
MAX_TEXT = 200
MAX_NOTE = 500
PAGE_SIZE = 50


class MasterError(ValueError):
    """A refused change; `field` names the input at fault, `params` fill the message's placeholders."""

    def __init__(self, code: str, message: str, *, field: str | None = None, status: int = 400, **params: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status
        self.params = params


def _invalid(field: str, code: str, message: str, **params: Any) -> MasterError:
    return MasterError(code, message, field=field, status=422, **params)


# -- the kinds of reference rows ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """A field of a kind: `name` in forms and the API, `db` the column. A `ref` field is given by the code
    (`ref_key`) of a row of `ref`; `choices` limit a text field."""

    name: str
    kind: str = "text"  # text, code, phone, int, decimal, bool, ref, choice
    required: bool = False
    limit: int = MAX_NAME
    db: str = ""
    ref: str = ""
    ref_key: str = "code"
    choices: tuple[str, ...] = ()
    low: int = 0
    high: int = 0

    @property
    def column(self) -> str:
        return self.db or self.name


@dataclass(frozen=True)
class Kind:
    key: str  # the URL segment
    table: str
    columns: tuple[Column, ...]
    search: tuple[str, ...]  # columns of the table searched by q
    order: str = "t.code"
    label: str = "t.name"  # how a row is named elsewhere


def _ref(name: str, table: str, *, required: bool = False, key: str = "code") -> Column:
    return Column(name, "ref", required, db=f"{name}_id", ref=table, ref_key=key)


KINDS: dict[str, Kind] = {
    k.key: k
    for k in (
        Kind(
            "areas",
            "area",
            (
                Column("code", "code", True),
                Column("name", required=True),
                Column("parent", "ref", db="parent_id", ref="area"),
            ),
            ("code", "name"),
        ),
        Kind(
            "communities",
            "community",
            (
                _ref("area", "area", required=True),
                Column("code", "code", True),
                Column("name", required=True),
                Column("address", limit=MAX_TEXT),
            ),
            ("code", "name", "address"),
        ),
        Kind(
            "buildings",
            "building",
            (
                _ref("community", "community", required=True),
                Column("code", "code", True),
                Column("name", required=True),
                Column("floors", "int", low=1, high=200),
                Column("units", "int", low=1, high=100),
            ),
            ("code", "name"),
            order="r0.code, t.code",
        ),
        Kind(
            "usage-types",
            "usage_type",
            (
                Column("code", "code", True),
                Column("name", required=True),
                Column("name_en"),
                Column("category", "choice", True, choices=USAGE_CATEGORIES),
            ),
            ("code", "name", "name_en"),
        ),
        Kind(
            "categories",
            "meter_category",
            (Column("code", "code", True), Column("name", required=True)),
            ("code", "name"),
        ),
        Kind(
            "manufacturers",
            "manufacturer",
            (Column("code", "code", True), Column("name", required=True), Column("contact", limit=MAX_TEXT)),
            ("code", "name", "contact"),
        ),
        Kind(
            "models",
            "meter_model",
            (
                _ref("manufacturer", "manufacturer", required=True),
                Column("name", required=True),
                _ref("category", "meter_category"),
                Column("driver_key", "driver", True),
                Column("profile", limit=MAX_TEXT),
                Column("has_valve", "bool"),
                Column("prepaid_capable", "bool"),
                Column("register_max", "decimal"),
            ),
            ("name", "driver_key", "profile"),
            order="r0.code, t.name",
            label="r0.code || '/' || t.name",
        ),
        Kind(
            "installers",
            "installer",
            (
                Column("code", "code", True),
                Column("name", required=True),
                Column("phone", "phone"),
                Column("company", limit=MAX_TEXT),
                _ref("staff_user", "staff_user", key="username"),
            ),
            ("code", "name", "phone", "company"),
        ),
        Kind(
            "readers",
            "meter_reader",
            (
                Column("code", "code", True),
                Column("name", required=True),
                Column("phone", "phone"),
                _ref("staff_user", "staff_user", key="username"),
            ),
            ("code", "name", "phone"),
        ),
    )
}


def kind_of(key: str) -> Kind:
    kind = KINDS.get(key)
    if kind is None:
        raise MasterError("no_kind", f"no master data {key!r}", status=404, kind=key)
    return kind


# -- views ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ListResult:
    rows: list[dict[str, Any]]  # the fields of the kind (refs as codes), id, active, and *_label for refs
    page: int
    size: int
    has_more: bool


@dataclass(frozen=True)
class Change:
    field: str
    old: Any
    new: Any


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    actor: str
    op: str
    changes: list[Change]


# -- cleaning input ------------------------------------------------------------------------------------------
def _text(value: Any, name: str, limit: int, *, required: bool = False) -> str:
    text = "" if value is None else str(value).strip()
    if required and not text:
        raise _invalid(name, "required", f"{name} is required")
    if len(text) > limit:
        raise _invalid(name, "too_long", f"{name} is longer than {limit} characters", limit=limit)
    return text


def clean_code(value: Any, name: str = "code", *, required: bool = True) -> str:
    text = _text(value, name, 32, required=required)
    if text and not _CODE.match(text):
        raise _invalid(name, "bad_code", f"{name} {text!r}: letters, digits, '-', '_' and '.', at most 32", value=text)
    return text


def _phone(value: Any, name: str) -> str:
    text = _text(value, name, 30)
    if text and not _PHONE.match(text):
        raise _invalid(name, "bad_phone", f"{name} {text!r}: digits, spaces, + - ( ), at most 30", value=text)
    return text


def _int(value: Any, name: str, low: int, high: int) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise _invalid(name, "bad_int", f"{name}: a whole number from {low} to {high}", low=low, high=high) from None
    if not low <= number <= high:
        raise _invalid(name, "bad_int", f"{name}: a whole number from {low} to {high}", low=low, high=high)
    return number


def _decimal(value: Any, name: str, places: int = 3) -> Decimal | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise _invalid(name, "bad_number", f"{name}: a number with at most {places} decimals", places=places) from None
    exponent = number.as_tuple().exponent
    if not number.is_finite() or not isinstance(exponent, int) or exponent < -places or number <= 0:
        raise _invalid(name, "bad_number", f"{name}: a number with at most {places} decimals", places=places)
    if number >= Decimal(10) ** (14 - places):
        raise _invalid(name, "bad_number", f"{name}: a number with at most {places} decimals", places=places)
    return number


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("", "0", "false", "off", "no"):
        return False
    raise _invalid(name, "bad_bool", f"{name}: true or false")


def known_drivers(conn: psycopg.Connection[Any] | None = None) -> list[str]:
    """The driver keys a model may name: the in-tree drivers, installed third-party drivers, and the keys
    meters and models already use."""
    keys = set(DRIVER_KEYS) | {ep.name for ep in entry_points(group=DRIVER_ENTRY_POINTS)}
    if conn is not None:
        keys |= {r[0] for r in conn.execute("SELECT driver_key FROM meter_model UNION SELECT driver_key FROM meter")}
    return sorted(keys)


def modbus_profiles() -> list[str]:
    """The names of the Modbus device profiles shipped with the drivers."""
    if not MODBUS_PROFILES.is_dir():
        return []
    return sorted(p.stem for p in MODBUS_PROFILES.glob("*.toml"))


def _clean(kind: Kind, values: Mapping[str, Any], *, partial: bool) -> dict[str, Any]:
    """The given fields of `kind`, checked and typed (refs still as codes). `partial`: only the fields given."""
    unknown = sorted(set(values) - {c.name for c in kind.columns})
    if unknown:
        raise _invalid(unknown[0], "unknown_field", f"{unknown[0]} is not a field of {kind.key}")
    out: dict[str, Any] = {}
    for col in kind.columns:
        if partial and col.name not in values:
            continue
        value = values.get(col.name)
        if col.kind == "code":
            out[col.name] = clean_code(value, col.name, required=col.required)
        elif col.kind == "phone":
            out[col.name] = _phone(value, col.name)
        elif col.kind == "int":
            out[col.name] = _int(value, col.name, col.low, col.high)
        elif col.kind == "decimal":
            out[col.name] = _decimal(value, col.name)
        elif col.kind == "bool":
            out[col.name] = _bool(value, col.name)
        elif col.kind == "choice":
            text = _text(value, col.name, 40, required=col.required)
            if text and text not in col.choices:
                raise _invalid(
                    col.name,
                    "bad_choice",
                    f"{col.name}: one of {', '.join(col.choices)}",
                    choices=", ".join(col.choices),
                )
            out[col.name] = text
        elif col.kind == "driver":
            text = _text(value, col.name, 40, required=col.required)
            if text and not _DRIVER.match(text):
                raise _invalid(col.name, "bad_driver", f"no driver {text!r}", value=text)
            out[col.name] = text
        elif col.kind == "ref":
            out[col.name] = _text(value, col.name, 64, required=col.required) or None
        else:
            out[col.name] = _text(value, col.name, col.limit, required=col.required)
    return out


def _resolve(conn: psycopg.Connection[Any], col: Column, code: str | None) -> int | None:
    if code is None:
        return None
    query = sql.SQL("SELECT id FROM {} WHERE {} = %s").format(sql.Identifier(col.ref), sql.Identifier(col.ref_key))
    row = conn.execute(query, [code]).fetchone()
    if row is None:
        raise _invalid(col.name, "no_ref", f"no {col.name} {code!r}", value=code)
    return int(row[0])


def _check_kind(conn: psycopg.Connection[Any], kind: Kind, row_id: int | None, stored: dict[str, Any]) -> None:
    """What a kind needs beyond its columns: an area tree without cycles; a model's known driver and its
    profile."""
    if kind.table == "area" and row_id is not None and stored.get("parent_id") is not None:
        loop = conn.execute(
            """WITH RECURSIVE up AS (SELECT id, parent_id FROM area WHERE id = %s
                                     UNION SELECT a.id, a.parent_id FROM area a JOIN up ON a.id = up.parent_id)
               SELECT 1 FROM up WHERE id = %s""",
            [stored["parent_id"], row_id],
        ).fetchone()
        if loop:
            raise _invalid("parent", "area_cycle", "an area cannot lie inside itself")
    if kind.table == "meter_model":
        driver = stored.get("driver_key")
        if driver is not None and driver not in known_drivers(conn):
            raise _invalid("driver_key", "bad_driver", f"no driver {driver!r}", value=driver)
        profile = stored.get("profile") or ""
        if driver == "modbus":
            shipped = modbus_profiles()
            if not profile:
                raise _invalid("profile", "profile_required", "a Modbus model names its device profile")
            if not profile.endswith(".toml") and shipped and profile not in shipped:
                raise _invalid(
                    "profile",
                    "bad_profile",
                    f"no Modbus profile {profile!r}",
                    value=profile,
                    choices=", ".join(shipped),
                )


def _unique(exc: psycopg.errors.UniqueViolation, kind: Kind, values: Mapping[str, Any]) -> MasterError:
    name = "name" if kind.table == "meter_model" else "code"
    return MasterError(
        "duplicate",
        f"{name} {values.get(name, '')} is already in use",
        field=name,
        status=409,
        value=str(values.get(name, "")),
    )


def save(store: Store, actor: str, kind_key: str, values: Mapping[str, Any], row_id: int | None = None) -> int:
    """Create a row of a kind (`row_id` None) or change the given fields of one; the row's id. Fields equal
    to the stored ones are no change; nothing changed writes nothing."""
    kind = kind_of(kind_key)
    clean = _clean(kind, values, partial=row_id is not None)
    by_name = {c.name: c for c in kind.columns}
    try:
        with store.transaction(actor=actor) as conn:
            stored: dict[str, Any] = {}
            for name, value in clean.items():
                col = by_name[name]
                stored[col.column] = _resolve(conn, col, value) if col.kind == "ref" else value
            if row_id is None:
                _check_kind(conn, kind, None, stored)
                query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
                    sql.Identifier(kind.table),
                    sql.SQL(", ").join(sql.Identifier(k) for k in stored),
                    sql.SQL(", ").join(sql.Placeholder() for _ in stored),
                )
                row = conn.execute(query, list(stored.values())).fetchone()
                assert row is not None
                return int(row[0])
            current = (
                conn.cursor(row_factory=dict_row)
                .execute(
                    sql.SQL("SELECT * FROM {} WHERE id = %s FOR UPDATE").format(sql.Identifier(kind.table)), [row_id]
                )
                .fetchone()
            )
            if current is None:
                raise MasterError("not_found", f"no {kind.key} #{row_id}", status=404, id=row_id)
            if kind.table == "area" and stored.get("parent_id") == row_id:
                raise _invalid("parent", "area_cycle", "an area cannot lie inside itself")
            changed = {k: v for k, v in stored.items() if current.get(k) != v}
            _check_kind(conn, kind, row_id, {**current, **stored})
            if changed:
                conn.execute(
                    sql.SQL("UPDATE {} SET {} WHERE id = %s").format(
                        sql.Identifier(kind.table),
                        sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in changed),
                    ),
                    [*changed.values(), row_id],
                )
            return row_id
    except psycopg.errors.UniqueViolation as exc:
        raise _unique(exc, kind, clean) from None


def set_active(store: Store, actor: str, kind_key: str, row_id: int, active: bool) -> None:
    """Deactivate a row (no longer offered for new records; the records that name it keep it) or activate
    it again."""
    kind = kind_of(kind_key)
    with store.transaction(actor=actor) as conn:
        row = conn.execute(
            sql.SQL("SELECT active FROM {} WHERE id = %s FOR UPDATE").format(sql.Identifier(kind.table)), [row_id]
        ).fetchone()
        if row is None:
            raise MasterError("not_found", f"no {kind.key} #{row_id}", status=404, id=row_id)
        if row[0] == active:
            raise MasterError("already_active" if active else "already_inactive", "nothing to change", status=409)
        conn.execute(
            sql.SQL("UPDATE {} SET active = %s WHERE id = %s").format(sql.Identifier(kind.table)), [active, row_id]
        )


def _select(kind: Kind) -> tuple[sql.Composable, sql.Composable]:
    """The select list and joins of a kind's rows: its own columns, refs as codes and labels."""
    fields: list[sql.Composable] = [sql.SQL("t.id"), sql.SQL("t.active")]
    joins: list[sql.Composable] = []
    refs = [c for c in kind.columns if c.kind == "ref"]
    for col in kind.columns:
        if col.kind != "ref":
            fields.append(sql.SQL("t.{} AS {}").format(sql.Identifier(col.column), sql.Identifier(col.name)))
    for n, col in enumerate(refs):
        alias = sql.Identifier(f"r{n}")
        label = "display_name" if col.ref == "staff_user" else "name"
        fields.append(sql.SQL("{}.{} AS {}").format(alias, sql.Identifier(col.ref_key), sql.Identifier(col.name)))
        fields.append(sql.SQL("{}.{} AS {}").format(alias, sql.Identifier(label), sql.Identifier(col.name + "_label")))
        joins.append(
            sql.SQL("LEFT JOIN {} {} ON {}.id = t.{}").format(
                sql.Identifier(col.ref), alias, alias, sql.Identifier(col.column)
            )
        )
    return sql.SQL(", ").join(fields), sql.SQL(" ").join(joins)


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def list_rows(
    conn: psycopg.Connection[Any],
    kind_key: str,
    q: str = "",
    *,
    active: str = "active",
    page: int = 1,
    size: int = PAGE_SIZE,
) -> ListResult:
    """Rows of a kind whose searched columns (or the codes of the rows they refer to) contain `q`; `active`:
    active, inactive or all. Areas come as a tree (each row has `depth`); `size` 0: every row."""
    kind = kind_of(kind_key)
    if active not in ("active", "inactive", "all"):
        raise _invalid("active", "bad_choice", "active: active, inactive or all", choices="active, inactive, all")
    page = max(1, page)
    select, joins = _select(kind)
    where: list[sql.Composable] = []
    params: dict[str, Any] = {"p": _like(q.strip())}
    if q.strip():
        columns = [sql.SQL("t.{}::text ILIKE %(p)s").format(sql.Identifier(c)) for c in kind.search]
        columns += [
            sql.SQL("{}.{} ILIKE %(p)s").format(sql.Identifier(f"r{n}"), sql.Identifier(c.ref_key))
            for n, c in enumerate(c for c in kind.columns if c.kind == "ref")
        ]
        where.append(sql.SQL("({})").format(sql.SQL(" OR ").join(columns)))
    if active != "all":
        where.append(sql.SQL("t.active = %(active)s"))
        params["active"] = active == "active"
    prefix: sql.Composable = sql.SQL("")
    order: sql.Composable = sql.SQL(kind.order + ", t.id")
    depth: sql.Composable = sql.SQL("0 AS depth")
    if kind.table == "area":
        prefix = sql.SQL(
            """WITH RECURSIVE tree AS (
                   SELECT id, ARRAY[code] AS path, 0 AS depth FROM area WHERE parent_id IS NULL
                   UNION ALL SELECT a.id, tree.path || a.code, tree.depth + 1
                     FROM area a JOIN tree ON a.parent_id = tree.id)
            """
        )
        joins = sql.SQL("{} LEFT JOIN tree ON tree.id = t.id").format(joins)
        order = sql.SQL("tree.path, t.id")
        depth = sql.SQL("coalesce(tree.depth, 0) AS depth")
    limit = sql.SQL("LIMIT %(limit)s OFFSET %(offset)s") if size > 0 else sql.SQL("")
    if size > 0:
        params.update(limit=size + 1, offset=(page - 1) * size)
    query = sql.SQL(
        "{prefix} SELECT {select}, {depth} FROM {table} t {joins} WHERE {where} ORDER BY {order} {limit}"
    ).format(
        prefix=prefix,
        select=select,
        depth=depth,
        table=sql.Identifier(kind.table),
        joins=joins,
        where=sql.SQL(" AND ").join(where) if where else sql.SQL("true"),
        order=order,
        limit=limit,
    )
    rows = conn.cursor(row_factory=dict_row).execute(query, params).fetchall()
    if size <= 0:
        return ListResult(rows, 1, len(rows), False)
    return ListResult(rows[:size], page, size, len(rows) > size)


def get_row(conn: psycopg.Connection[Any], kind_key: str, row_id: int) -> dict[str, Any]:
    kind = kind_of(kind_key)
    select, joins = _select(kind)
    row = (
        conn.cursor(row_factory=dict_row)
        .execute(
            sql.SQL("SELECT {}, 0 AS depth FROM {} t {} WHERE t.id = %s").format(
                select, sql.Identifier(kind.table), joins
            ),
            [row_id],
        )
        .fetchone()
    )
    if row is None:
        raise MasterError("not_found", f"no {kind.key} #{row_id}", status=404, id=row_id)
    return row


def options(conn: psycopg.Connection[Any], kind_key: str, *, include: Iterable[int] = ()) -> list[tuple[str, str]]:
    """(code, label) of the active rows of a kind (and of the rows `include` names), for a select list."""
    kind = kind_of(kind_key)
    key = kind.label if kind.table == "meter_model" else "t.code"
    query = sql.SQL("SELECT {key}, {label} FROM {table} t {joins} WHERE t.active OR t.id = ANY(%s) ORDER BY {order}")
    refs = [c for c in kind.columns if c.kind == "ref"]
    joins = sql.SQL(" ").join(
        sql.SQL("LEFT JOIN {} {} ON {}.id = t.{}").format(
            sql.Identifier(c.ref), sql.Identifier(f"r{n}"), sql.Identifier(f"r{n}"), sql.Identifier(c.column)
        )
        for n, c in enumerate(refs)
    )
    rows = conn.execute(
        query.format(
            key=sql.SQL(key),
            label=sql.SQL(kind.label),
            table=sql.Identifier(kind.table),
            joins=joins,
            order=sql.SQL(kind.order),
        ),
        [list(include)],
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def staff_options(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in conn.execute("SELECT username, display_name FROM staff_user WHERE active ORDER BY username")
    ]


# The table (and its key column) a reference column of the change history points to.
_REF_COLUMNS = {
    "parent_id": ("area", "code"),
    "area_id": ("area", "code"),
    "community_id": ("community", "code"),
    "manufacturer_id": ("manufacturer", "code"),
    "category_id": ("meter_category", "code"),
    "staff_user_id": ("staff_user", "username"),
}


def history(conn: psycopg.Connection[Any], table: str, row_id: int, limit: int = 200) -> list[HistoryEntry]:
    """The change_history of one row, newest first (only the columns a person cares about); ids of the rows
    it refers to are given as their codes."""
    rows = conn.execute(
        """SELECT changed_at, changed_by, op, old_values, new_values FROM change_history
            WHERE table_name = %s AND row_id = %s ORDER BY changed_at DESC, id DESC LIMIT %s""",
        [table, row_id, limit],
    ).fetchall()
    wanted: dict[str, set[int]] = {}
    for *_, old, new in rows:
        for doc in (old or {}, new or {}):
            for key, value in doc.items():
                if key in _REF_COLUMNS and isinstance(value, int):
                    wanted.setdefault(key, set()).add(value)
    names: dict[tuple[str, int], str] = {}
    for key, ids in wanted.items():
        ref, column = _REF_COLUMNS[key]
        query = sql.SQL("SELECT id, {} FROM {} WHERE id = ANY(%s)").format(sql.Identifier(column), sql.Identifier(ref))
        for found_id, code in conn.execute(query, [sorted(ids)]):
            names[(key, int(found_id))] = str(code)

    def shown(key: str, value: Any) -> Any:
        return names.get((key, value), value) if isinstance(value, int) and key in _REF_COLUMNS else value

    out = []
    for at, actor, op, old, new in rows:
        old, new = old or {}, new or {}
        keys = sorted(k for k in (set(old) | set(new)) if k not in ("id", "updated_at", "created_at"))
        if op == "insert":
            keys = [k for k in keys if new.get(k) not in (None, "", False)]
        out.append(HistoryEntry(at, actor, op, [Change(k, shown(k, old.get(k)), shown(k, new.get(k))) for k in keys]))
    return out


# -- gas prices by period --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TariffView:
    usage_type: str
    usage_type_name: str
    tariff_id: int | None
    cycle: str
    periods: list[dict[str, Any]]  # as stored, oldest first
    updated_at: datetime | None
    billed_until: date | None  # the latest end (exclusive) of a bill of the usage type


def tariffs(conn: psycopg.Connection[Any]) -> list[TariffView]:
    """Every usage type with its tariff's price periods (None tariff: no prices yet)."""
    rows = conn.execute(
        """SELECT u.code, u.name, t.id, t.definition, t.updated_at,
                  (SELECT max(b.period_end) FROM bill b WHERE b.usage_type_id = u.id)
             FROM usage_type u LEFT JOIN tariff t ON t.usage_type_id = u.id ORDER BY u.code"""
    ).fetchall()
    out = []
    for code, name, tariff_id, definition, updated_at, billed in rows:
        definition = definition or {}
        periods = sorted(definition.get("periods", []), key=lambda p: str(p.get("effective_from", "")))
        out.append(
            TariffView(
                code, name, tariff_id, str(definition.get("cycle", "calendar_year")), periods, updated_at, billed
            )
        )
    return out


def tariff_of(conn: psycopg.Connection[Any], usage_type: str) -> TariffView:
    for view in tariffs(conn):
        if view.usage_type == usage_type:
            return view
    raise MasterError("no_usage_type", f"no usage type {usage_type!r}", status=404, value=usage_type)


def add_price_period(
    store: Store,
    actor: str,
    usage_type: str,
    period: Mapping[str, Any],
    validate: Callable[[str, Mapping[str, Any]], None],
    *,
    cycle: str = "calendar_year",
) -> dict[str, Any]:
    """A new price period of a usage type's tariff from its `effective_from` on (a new tariff with `cycle`
    when the usage type has none). The date must lie after the tariff's last period and not inside a
    period already billed for the usage type; `validate(usage_type, definition)` checks the whole new
    definition and raises ValueError when it cannot be priced with. Returns the new definition."""
    raw = period.get("effective_from")
    try:
        start = raw if isinstance(raw, date) else date.fromisoformat(str(raw or "").strip())
    except ValueError:
        raise _invalid("effective_from", "bad_date", "effective_from: a date YYYY-MM-DD") from None
    entry = {k: v for k, v in period.items() if v is not None}
    entry["effective_from"] = start.isoformat()
    with store.transaction(actor=actor) as conn:
        ut = conn.execute("SELECT id FROM usage_type WHERE code = %s", [usage_type]).fetchone()
        if ut is None:
            raise MasterError("no_usage_type", f"no usage type {usage_type!r}", status=404, value=usage_type)
        row = conn.execute("SELECT id, definition FROM tariff WHERE usage_type_id = %s FOR UPDATE", [ut[0]]).fetchone()
        definition: dict[str, Any] = dict(row[1]) if row else {"cycle": cycle}
        periods = list(definition.get("periods", []))
        last = max((str(p.get("effective_from", "")) for p in periods), default="")
        if last and start.isoformat() <= last:
            raise _invalid(
                "effective_from",
                "not_after_last",
                f"effective from {start}: the tariff's last period starts on {last}; a new period starts after it",
                date=last,
            )
        billed = conn.execute("SELECT max(period_end) FROM bill WHERE usage_type_id = %s", [ut[0]]).fetchone()
        if billed and billed[0] is not None and start < billed[0]:
            raise _invalid(
                "effective_from",
                "already_billed",
                f"effective from {start}: bills of this usage type run until {billed[0]}",
                date=billed[0],
            )
        definition["periods"] = [*periods, entry]
        try:
            validate(usage_type, definition)
        except ValueError as exc:
            raise _invalid("period", "bad_tariff", str(exc), detail=str(exc)) from None
        if row:
            conn.execute("UPDATE tariff SET definition = %s WHERE id = %s", [Jsonb(definition), row[0]])
        else:
            conn.execute("INSERT INTO tariff (usage_type_id, definition) VALUES (%s, %s)", [ut[0], Jsonb(definition)])
    return definition


# -- installation dispatch (分配安装派工) ---------------------------------------------------------------------
@dataclass(frozen=True)
class Waiting:
    """An account without a meter in use and without an open installation order."""

    account_no: str
    customer_name: str
    phone: str
    address: str
    community: str | None
    building: str | None
    opened_on: date


@dataclass(frozen=True)
class OrderRow:
    id: int
    account_no: str
    customer_name: str
    phone: str
    address: str
    community: str | None
    installer_code: str
    installer_name: str
    status: str
    planned_on: date | None
    note: str
    meter_no: str | None
    created_by: str
    created_at: datetime
    closed_at: datetime | None
    cancel_reason: str


@dataclass(frozen=True)
class OrderEvent:
    kind: str
    from_installer: str | None
    to_installer: str | None
    note: str
    actor: str
    at: datetime


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    page: int
    size: int
    has_more: bool


_AREA_FILTER = "(%(areas)s::bigint[] IS NULL OR co.area_id = ANY(%(areas)s::bigint[]))"


def waiting_accounts(
    conn: psycopg.Connection[Any],
    q: str = "",
    *,
    areas: frozenset[int] | None = None,
    page: int = 1,
    size: int = PAGE_SIZE,
) -> Page:
    """Accounts open for gas (not closed) with no installed or suspended meter and no open order, newest
    first (`size` 0: all); `q` in the account number, customer name, phone, address or community."""
    page = max(1, page)
    limit = "LIMIT %(limit)s OFFSET %(offset)s" if size > 0 else ""
    rows = conn.execute(
        f"""SELECT a.account_no, cu.name, cu.phone, coalesce(nullif(a.address, ''), cu.address), co.name, b.name,
                   a.opened_on
              FROM account a JOIN customer cu ON cu.id = a.customer_id
              LEFT JOIN community co ON co.id = a.community_id LEFT JOIN building b ON b.id = a.building_id
             WHERE a.status <> 'closed'
               AND NOT EXISTS (SELECT 1 FROM meter m WHERE m.account_id = a.id
                                  AND m.status IN ('installed', 'suspended'))
               AND NOT EXISTS (SELECT 1 FROM install_order o WHERE o.account_id = a.id AND o.status = 'assigned')
               AND {_AREA_FILTER}
               AND (%(q)s = '' OR a.account_no ILIKE %(p)s OR cu.name ILIKE %(p)s OR cu.phone ILIKE %(p)s
                    OR a.address ILIKE %(p)s OR co.name ILIKE %(p)s)
             ORDER BY a.opened_on DESC, a.account_no {limit}""",
        {
            "q": q.strip(),
            "p": _like(q.strip()),
            "areas": None if areas is None else sorted(areas),
            "limit": size + 1,
            "offset": (page - 1) * size,
        },
    ).fetchall()
    items = [Waiting(*r) for r in rows]
    if size <= 0:
        return Page(items, 1, len(items), False)
    return Page(items[:size], page, size, len(items) > size)


_ORDER_SELECT = """
    SELECT o.id, a.account_no, cu.name AS customer_name, cu.phone,
           coalesce(nullif(a.address, ''), cu.address) AS address,
           co.name AS community, i.code AS installer_code, i.name AS installer_name, o.status, o.planned_on, o.note,
           m.meter_no, o.created_by, o.created_at, o.closed_at, o.cancel_reason
      FROM install_order o JOIN account a ON a.id = o.account_id JOIN customer cu ON cu.id = a.customer_id
      JOIN installer i ON i.id = o.installer_id LEFT JOIN community co ON co.id = a.community_id
      LEFT JOIN meter m ON m.id = o.meter_id"""


def orders(
    conn: psycopg.Connection[Any],
    *,
    installer: str = "",
    status: str = "",
    q: str = "",
    areas: frozenset[int] | None = None,
    page: int = 1,
    size: int = PAGE_SIZE,
) -> Page:
    """Installation orders by installer and status, newest first."""
    if status and status not in ORDER_STATUSES:
        raise _invalid(
            "status", "bad_choice", f"status: one of {', '.join(ORDER_STATUSES)}", choices=", ".join(ORDER_STATUSES)
        )
    page = max(1, page)
    limit = "LIMIT %(limit)s OFFSET %(offset)s" if size > 0 else ""
    rows = conn.execute(
        f"""{_ORDER_SELECT}
             WHERE (%(installer)s = '' OR i.code = %(installer)s) AND (%(status)s = '' OR o.status = %(status)s)
               AND {_AREA_FILTER}
               AND (%(q)s = '' OR a.account_no ILIKE %(p)s OR cu.name ILIKE %(p)s OR cu.phone ILIKE %(p)s
                    OR a.address ILIKE %(p)s OR m.meter_no ILIKE %(p)s)
             ORDER BY o.created_at DESC, o.id DESC {limit}""",
        {
            "installer": installer.strip(),
            "status": status,
            "q": q.strip(),
            "p": _like(q.strip()),
            "areas": None if areas is None else sorted(areas),
            "limit": size + 1,
            "offset": (page - 1) * size,
        },
    ).fetchall()
    items = [OrderRow(*r) for r in rows]
    if size <= 0:
        return Page(items, 1, len(items), False)
    return Page(items[:size], page, size, len(items) > size)


def order_counts(
    conn: psycopg.Connection[Any], areas: frozenset[int] | None = None
) -> list[tuple[str, str, dict[str, int]]]:
    """(installer code, name, {status: count}) of every installer with orders or active."""
    rows = conn.execute(
        f"""SELECT i.code, i.name, o.status, count(o.id)
              FROM installer i LEFT JOIN install_order o ON o.installer_id = i.id
              LEFT JOIN account a ON a.id = o.account_id LEFT JOIN community co ON co.id = a.community_id
             WHERE (o.id IS NULL AND i.active) OR (o.id IS NOT NULL AND {_AREA_FILTER})
             GROUP BY i.code, i.name, o.status ORDER BY i.code""",
        {"areas": None if areas is None else sorted(areas)},
    ).fetchall()
    out: dict[str, tuple[str, dict[str, int]]] = {}
    for code, name, status, count in rows:
        entry = out.setdefault(code, (name, {s: 0 for s in ORDER_STATUSES}))
        if status:
            entry[1][status] = int(count)
    return [(code, name, counts) for code, (name, counts) in out.items()]


def get_order(
    conn: psycopg.Connection[Any], order_id: int, areas: frozenset[int] | None = None
) -> tuple[OrderRow, list[OrderEvent]]:
    row = conn.execute(
        f"{_ORDER_SELECT} WHERE o.id = %(id)s AND {_AREA_FILTER}",
        {"id": order_id, "areas": None if areas is None else sorted(areas)},
    ).fetchone()
    if row is None:
        raise MasterError("no_order", f"no installation order #{order_id}", status=404, id=order_id)
    events = [
        OrderEvent(*r)
        for r in conn.execute(
            """SELECT e.kind, f.code, t.code, e.note, e.actor, e.at FROM install_order_event e
                 LEFT JOIN installer f ON f.id = e.from_installer_id LEFT JOIN installer t ON t.id = e.to_installer_id
                WHERE e.order_id = %s ORDER BY e.at, e.id""",
            [order_id],
        )
    ]
    return OrderRow(*row), events


def _installer(conn: psycopg.Connection[Any], code: str) -> int:
    code = (code or "").strip()
    if not code:
        raise _invalid("installer", "required", "installer is required")
    row = conn.execute("SELECT id, active FROM installer WHERE code = %s", [code]).fetchone()
    if row is None:
        raise _invalid("installer", "no_ref", f"no installer {code!r}", value=code)
    if not row[1]:
        raise _invalid("installer", "inactive", f"installer {code} is inactive", value=code)
    return int(row[0])


def _planned(value: date | str | None) -> date | None:
    if value is None or isinstance(value, date):
        return value
    text = value.strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise _invalid("planned_on", "bad_date", "planned_on: a date YYYY-MM-DD") from None


def assign(
    store: Store,
    actor: str,
    account_nos: Sequence[str],
    installer: str,
    *,
    planned_on: date | str | None = None,
    note: str = "",
    areas: frozenset[int] | None = None,
) -> list[int]:
    """Give accounts waiting for a meter to an installer: one order each, all or none. The order ids."""
    wanted = sorted({a.strip() for a in account_nos if a and a.strip()})
    if not wanted:
        raise _invalid("account_no", "required", "choose at least one account")
    planned = _planned(planned_on)
    note = _text(note, "note", MAX_NOTE)
    ids: list[int] = []
    with store.transaction(actor=actor) as conn:
        installer_id = _installer(conn, installer)
        found = {
            r[0]: r
            for r in conn.execute(
                """SELECT a.account_no, a.id, a.status, co.area_id,
                          EXISTS (SELECT 1 FROM meter m WHERE m.account_id = a.id
                                     AND m.status IN ('installed', 'suspended'))
                     FROM account a LEFT JOIN community co ON co.id = a.community_id
                    WHERE a.account_no = ANY(%s) FOR UPDATE OF a""",
                [wanted],
            )
        }
        for account_no in wanted:
            row = found.get(account_no)
            if row is None:
                raise _invalid("account_no", "no_account", f"no account {account_no}", value=account_no)
            if areas is not None and (row[3] is None or row[3] not in areas):
                raise MasterError("area", f"account {account_no} is outside your areas", status=403)
            if row[2] == "closed":
                raise MasterError(
                    "closed", f"account {account_no} is closed", field="account_no", status=409, value=account_no
                )
            if row[4]:
                raise MasterError(
                    "has_meter",
                    f"account {account_no} already has a meter",
                    field="account_no",
                    status=409,
                    value=account_no,
                )
            try:
                with conn.transaction():
                    order = conn.execute(
                        """INSERT INTO install_order (account_id, installer_id, planned_on, note)
                           VALUES (%s, %s, %s, %s) RETURNING id""",
                        [row[1], installer_id, planned, note],
                    ).fetchone()
            except psycopg.errors.UniqueViolation:
                raise MasterError(
                    "has_order",
                    f"account {account_no} already has an open order",
                    field="account_no",
                    status=409,
                    value=account_no,
                ) from None
            assert order is not None
            conn.execute(
                "INSERT INTO install_order_event (order_id, kind, to_installer_id, note) VALUES (%s, 'assign', %s, %s)",
                [order[0], installer_id, note],
            )
            ids.append(int(order[0]))
    return ids


def _lock_order(conn: psycopg.Connection[Any], order_id: int, areas: frozenset[int] | None) -> dict[str, Any]:
    row = (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT o.id, o.status, o.installer_id, co.area_id FROM install_order o
                 JOIN account a ON a.id = o.account_id LEFT JOIN community co ON co.id = a.community_id
                WHERE o.id = %s FOR UPDATE OF o""",
            [order_id],
        )
        .fetchone()
    )
    if row is None:
        raise MasterError("no_order", f"no installation order #{order_id}", status=404, id=order_id)
    if areas is not None and (row["area_id"] is None or row["area_id"] not in areas):
        raise MasterError("area", "this order is outside your areas", status=403)
    if row["status"] != "assigned":
        raise MasterError(
            "not_assigned", f"the order is {row['status']}, not assigned", status=409, status_now=row["status"]
        )
    return row


def reassign(
    store: Store, actor: str, order_id: int, installer: str, *, note: str = "", areas: frozenset[int] | None = None
) -> None:
    """An assigned order goes to another installer."""
    note = _text(note, "note", MAX_NOTE)
    with store.transaction(actor=actor) as conn:
        order = _lock_order(conn, order_id, areas)
        installer_id = _installer(conn, installer)
        if installer_id == order["installer_id"]:
            raise _invalid("installer", "same_installer", "the order is already with this installer")
        conn.execute("UPDATE install_order SET installer_id = %s WHERE id = %s", [installer_id, order_id])
        conn.execute(
            """INSERT INTO install_order_event (order_id, kind, from_installer_id, to_installer_id, note)
               VALUES (%s, 'reassign', %s, %s, %s)""",
            [order_id, order["installer_id"], installer_id, note],
        )


def cancel_order(store: Store, actor: str, order_id: int, *, reason: str, areas: frozenset[int] | None = None) -> None:
    """An assigned order is cancelled, with a reason; the account waits for dispatch again."""
    reason = _text(reason, "reason", MAX_NOTE, required=True)
    with store.transaction(actor=actor) as conn:
        _lock_order(conn, order_id, areas)
        conn.execute(
            "UPDATE install_order SET status = 'cancelled', closed_at = now(), cancel_reason = %s WHERE id = %s",
            [reason, order_id],
        )
        conn.execute(
            "INSERT INTO install_order_event (order_id, kind, note) VALUES (%s, 'cancel', %s)", [order_id, reason]
        )


# -- payment groups (关联用户) -------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupRow:
    id: int
    name: str
    note: str
    members: int
    accounts: list[str]
    created_at: datetime


@dataclass(frozen=True)
class Member:
    account_no: str
    customer_name: str
    address: str
    status: str
    community: str | None


def groups(conn: psycopg.Connection[Any], q: str = "", *, page: int = 1, size: int = PAGE_SIZE) -> Page:
    """Payment groups whose name or one of whose account numbers or customer names contains `q`."""
    page = max(1, page)
    limit = "LIMIT %(limit)s OFFSET %(offset)s" if size > 0 else ""
    rows = conn.execute(
        f"""SELECT g.id, g.name, g.note, count(m.account_id),
                   coalesce(array_agg(a.account_no ORDER BY a.account_no) FILTER (WHERE a.id IS NOT NULL), '{{}}'),
                   g.created_at
              FROM account_group g LEFT JOIN account_group_member m ON m.group_id = g.id
              LEFT JOIN account a ON a.id = m.account_id
             WHERE %(q)s = '' OR g.name ILIKE %(p)s OR EXISTS (
                       SELECT 1 FROM account_group_member x JOIN account y ON y.id = x.account_id
                         JOIN customer c ON c.id = y.customer_id
                        WHERE x.group_id = g.id AND (y.account_no ILIKE %(p)s OR c.name ILIKE %(p)s))
             GROUP BY g.id ORDER BY g.name, g.id {limit}""",
        {"q": q.strip(), "p": _like(q.strip()), "limit": size + 1, "offset": (page - 1) * size},
    ).fetchall()
    items = [GroupRow(r[0], r[1], r[2], int(r[3]), list(r[4]), r[5]) for r in rows]
    if size <= 0:
        return Page(items, 1, len(items), False)
    return Page(items[:size], page, size, len(items) > size)


def get_group(conn: psycopg.Connection[Any], group_id: int) -> tuple[GroupRow, list[Member]]:
    row = conn.execute("SELECT id, name, note, created_at FROM account_group WHERE id = %s", [group_id]).fetchone()
    if row is None:
        raise MasterError("no_group", f"no payment group #{group_id}", status=404, id=group_id)
    members = [
        Member(*r)
        for r in conn.execute(
            """SELECT a.account_no, cu.name, coalesce(nullif(a.address, ''), cu.address), a.status, co.name
                 FROM account_group_member m JOIN account a ON a.id = m.account_id
                 JOIN customer cu ON cu.id = a.customer_id LEFT JOIN community co ON co.id = a.community_id
                WHERE m.group_id = %s ORDER BY a.account_no""",
            [group_id],
        )
    ]
    return GroupRow(row[0], row[1], row[2], len(members), [m.account_no for m in members], row[3]), members


def _member_account(conn: psycopg.Connection[Any], account_no: str, areas: frozenset[int] | None) -> int:
    account_no = (account_no or "").strip()
    row = conn.execute(
        """SELECT a.id, a.status, co.area_id, g.name FROM account a LEFT JOIN community co ON co.id = a.community_id
             LEFT JOIN account_group_member m ON m.account_id = a.id LEFT JOIN account_group g ON g.id = m.group_id
            WHERE a.account_no = %s FOR UPDATE OF a""",
        [account_no],
    ).fetchone()
    if row is None:
        raise _invalid("account_no", "no_account", f"no account {account_no}", value=account_no)
    if areas is not None and (row[2] is None or row[2] not in areas):
        raise MasterError("area", f"account {account_no} is outside your areas", status=403)
    if row[1] == "closed":
        raise MasterError("closed", f"account {account_no} is closed", field="account_no", status=409, value=account_no)
    if row[3] is not None:
        raise MasterError(
            "in_group",
            f"account {account_no} is already in group {row[3]}",
            field="account_no",
            status=409,
            value=account_no,
            group=row[3],
        )
    return int(row[0])


def create_group(
    store: Store,
    actor: str,
    name: str,
    account_nos: Sequence[str] = (),
    *,
    note: str = "",
    areas: frozenset[int] | None = None,
) -> int:
    """A payment group with its first accounts (each in no other group)."""
    name = _text(name, "name", MAX_NAME, required=True)
    note = _text(note, "note", MAX_NOTE)
    wanted = list(dict.fromkeys(a.strip() for a in account_nos if a and a.strip()))
    with store.transaction(actor=actor) as conn:
        row = conn.execute(
            "INSERT INTO account_group (name, note) VALUES (%s, %s) RETURNING id", [name, note]
        ).fetchone()
        assert row is not None
        for account_no in wanted:
            account_id = _member_account(conn, account_no, areas)
            conn.execute(
                "INSERT INTO account_group_member (group_id, account_id) VALUES (%s, %s)", [row[0], account_id]
            )
    return int(row[0])


def edit_group(store: Store, actor: str, group_id: int, *, name: str, note: str = "") -> None:
    name = _text(name, "name", MAX_NAME, required=True)
    note = _text(note, "note", MAX_NOTE)
    with store.transaction(actor=actor) as conn:
        done = conn.execute(
            "UPDATE account_group SET name = %s, note = %s WHERE id = %s AND (name, note) IS DISTINCT FROM (%s, %s)",
            [name, note, group_id, name, note],
        ).rowcount
        if not done and conn.execute("SELECT 1 FROM account_group WHERE id = %s", [group_id]).fetchone() is None:
            raise MasterError("no_group", f"no payment group #{group_id}", status=404, id=group_id)


def add_member(
    store: Store, actor: str, group_id: int, account_no: str, *, areas: frozenset[int] | None = None
) -> None:
    with store.transaction(actor=actor) as conn:
        if conn.execute("SELECT 1 FROM account_group WHERE id = %s FOR UPDATE", [group_id]).fetchone() is None:
            raise MasterError("no_group", f"no payment group #{group_id}", status=404, id=group_id)
        account_id = _member_account(conn, account_no, areas)
        conn.execute("INSERT INTO account_group_member (group_id, account_id) VALUES (%s, %s)", [group_id, account_id])


def remove_member(
    store: Store, actor: str, group_id: int, account_no: str, *, areas: frozenset[int] | None = None
) -> None:
    with store.transaction(actor=actor) as conn:
        row = conn.execute(
            """SELECT a.id, co.area_id FROM account_group_member m JOIN account a ON a.id = m.account_id
                 LEFT JOIN community co ON co.id = a.community_id
                WHERE m.group_id = %s AND a.account_no = %s""",
            [group_id, (account_no or "").strip()],
        ).fetchone()
        if row is None:
            raise _invalid("account_no", "not_member", f"account {account_no} is not in this group", value=account_no)
        if areas is not None and (row[1] is None or row[1] not in areas):
            raise MasterError("area", f"account {account_no} is outside your areas", status=403)
        conn.execute("DELETE FROM account_group_member WHERE group_id = %s AND account_id = %s", [group_id, row[0]])


def group_history(conn: psycopg.Connection[Any], group_id: int) -> list[HistoryEntry]:
    """Changes of the group and of its members (account ids named by their numbers), newest first."""
    rows = conn.execute(
        """SELECT h.changed_at, h.changed_by, h.op, h.table_name, h.old_values, h.new_values FROM change_history h
            WHERE h.table_name IN ('account_group', 'account_group_member') AND h.row_id = %s
            ORDER BY h.changed_at DESC, h.id DESC""",
        [group_id],
    ).fetchall()
    ids = {
        int(v)
        for r in rows
        for doc in (r[4], r[5])
        for k, v in (doc or {}).items()
        if k == "account_id" and isinstance(v, int)
    }
    names = dict(conn.execute("SELECT id, account_no FROM account WHERE id = ANY(%s)", [sorted(ids)]).fetchall())
    out = []
    for at, actor, op, table, old, new in rows:
        old, new = old or {}, new or {}
        if table == "account_group_member":
            out.append(
                HistoryEntry(
                    at,
                    actor,
                    "add" if op == "insert" else "remove" if op == "delete" else op,
                    [Change("account_no", names.get(old.get("account_id")), names.get(new.get("account_id")))],
                )
            )
        else:
            keys = sorted(k for k in set(old) | set(new) if k not in ("id", "created_at"))
            out.append(HistoryEntry(at, actor, op, [Change(k, old.get(k), new.get(k)) for k in keys]))
    return out


# -- demo ------------------------------------------------------------------------------------------------------
DEMO_CATEGORIES = [
    ("DIAPHRAGM", "民用膜式表"),
    ("IC", "IC 卡预付费表"),
    ("IOT", "物联网远传表"),
    ("FLOW", "工业流量计"),
]
DEMO_INSTALLERS = [
    ("I01", "安装一班 马刚", "13900000101", "城建燃气安装公司"),
    ("I02", "安装二班 胡军", "13900000102", "城建燃气安装公司"),
]
DEMO_WAITING = [
    ("C9000001", "DEMO-NEW-0001", "郭秀兰", "13600000001", "1", "101"),
    ("C9000002", "DEMO-NEW-0002", "林志明", "13600000002", "1", "102"),
    ("C9000003", "DEMO-NEW-0003", "何丽娟", "13600000003", "2", "201"),
]


def seed_demo(conn: psycopg.Connection[Any]) -> None:
    """A few master-data records on top of the demo's: meter categories on the models, buildings in the first
    estate, two installers, three newly opened accounts waiting for their meters (two dispatched), and a
    payment group of two accounts. Idempotent: a second call adds nothing."""
    conn.execute("SELECT set_config('meterhub.actor', 'demo', true)")
    for code, name in DEMO_CATEGORIES:
        conn.execute(
            "INSERT INTO meter_category (code, name) VALUES (%s, %s) ON CONFLICT (code) DO NOTHING", [code, name]
        )
    conn.execute(
        """UPDATE meter_model mm SET category_id = c.id FROM meter_category c
            WHERE mm.category_id IS NULL
              AND c.code = CASE WHEN mm.driver_key = 'modbus' THEN 'FLOW' WHEN mm.prepaid_capable THEN 'IOT'
                                ELSE 'DIAPHRAGM' END"""
    )
    community = conn.execute("SELECT id, code, name FROM community ORDER BY code LIMIT 1").fetchone()
    if community is not None:
        for n in (1, 2, 3):
            conn.execute(
                """INSERT INTO building (community_id, code, name, floors, units) VALUES (%s, %s, %s, 18, 2)
                   ON CONFLICT (community_id, code) DO NOTHING""",
                [community[0], str(n), f"{n}号楼"],
            )
    for code, name, phone, company in DEMO_INSTALLERS:
        conn.execute(
            "INSERT INTO installer (code, name, phone, company) VALUES (%s, %s, %s, %s) ON CONFLICT (code) DO NOTHING",
            [code, name, phone, company],
        )
    usage = conn.execute("SELECT id FROM usage_type WHERE code = 'RES'").fetchone()
    if community is not None and usage is not None:
        for customer_no, account_no, name, phone, building, room in DEMO_WAITING:
            if conn.execute("SELECT 1 FROM account WHERE account_no = %s", [account_no]).fetchone():
                continue
            address = f"{community[2]} {building}号楼 {room}室"
            customer = conn.execute(
                """INSERT INTO customer (customer_no, name, phone, address) VALUES (%s, %s, %s, %s)
                   ON CONFLICT (customer_no) DO UPDATE SET name = customer.name RETURNING id""",
                [customer_no, name, phone, address],
            ).fetchone()
            assert customer is not None
            account = conn.execute(
                """INSERT INTO account (account_no, customer_id, community_id, building_id, address, usage_type_id)
                   VALUES (%s, %s, %s, (SELECT id FROM building WHERE community_id = %s AND code = %s), %s, %s)
                   RETURNING id""",
                [account_no, customer[0], community[0], community[0], building, address, usage[0]],
            ).fetchone()
            assert account is not None
            conn.execute(
                """INSERT INTO account_action (account_id, customer_id, kind, effective_on, detail)
                   VALUES (%s, %s, 'open', current_date, %s)""",
                [account[0], customer[0], Jsonb({"customer_no": customer_no, "new_customer": True})],
            )
        for account_no, installer in (("DEMO-NEW-0001", "I01"), ("DEMO-NEW-0002", "I02")):
            order = conn.execute(
                """INSERT INTO install_order (account_id, installer_id, planned_on, note)
                   SELECT a.id, i.id, current_date + 3, '上午安装'
                     FROM account a, installer i
                    WHERE a.account_no = %s AND i.code = %s
                      AND NOT EXISTS (SELECT 1 FROM install_order o WHERE o.account_id = a.id)
                   RETURNING id, installer_id""",
                [account_no, installer],
            ).fetchone()
            if order is not None:
                conn.execute(
                    "INSERT INTO install_order_event (order_id, kind, to_installer_id) VALUES (%s, 'assign', %s)",
                    [order[0], order[1]],
                )
    if not conn.execute("SELECT 1 FROM account_group WHERE name = '京西热力集团 (关联缴费)'").fetchone():
        members = conn.execute(
            """SELECT a.id FROM account a WHERE a.account_no IN ('IND-0001', 'IND-0003')
                  AND NOT EXISTS (SELECT 1 FROM account_group_member m WHERE m.account_id = a.id)"""
        ).fetchall()
        if len(members) == 2:
            group = conn.execute(
                "INSERT INTO account_group (name, note) VALUES ('京西热力集团 (关联缴费)', '集团统一缴费') RETURNING id"
            ).fetchone()
            assert group is not None
            for (account_id,) in members:
                conn.execute(
                    "INSERT INTO account_group_member (group_id, account_id) VALUES (%s, %s)", [group[0], account_id]
                )
