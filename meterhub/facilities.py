"""Valve wells (阀井), pressure regulator boxes (调压箱) and relief stacks (放散桩): records, relations, maintenance
history and the supply balance (供销差) of a box.

- A facility has a kind (`well`, `box`, `stack`), a unique code and what a gas company records of it: name,
  address, community and area, coordinates, model and manufacturer, nominal diameter, inlet and outlet
  pressure ratings, rated flow (boxes), install date, status and notes. Edits are in `change_history`
  (table `facility`) with the person as `meterhub.actor`.
- Relations: a box links to wells and relief stacks (`facility_link`) and to the accounts it feeds
  (`facility_account`, an account is fed by at most one box).
- Maintenance, repair and replacement records (`facility_maintenance`) are append-only. A facility is due
  on the last record's next due date, else its last record's date (or its install date) plus the default
  interval; `overdue` lists those in service whose due date has passed.
- Supply balance: a box with its own meter (`facility.meter_id`, e.g. a volume corrector) is compared day
  by day with the meters of the accounts it feeds (see `balance`).

`areas` (ids of the areas a person is limited to, sub-areas included; None when not limited) restricts
every function to facilities whose area lies in those areas; a facility without an area is outside every
limited person's areas. A refused action raises `FacilityError` before anything is written, or inside the
transaction, which then rolls back.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import class_row, dict_row

from meterhub.store import Store

KINDS = ("well", "box", "stack")
STATUSES = ("in_service", "out_of_service", "removed")
MAINTENANCE_KINDS = ("inspection", "maintenance", "repair", "replacement")
# Used when the settings row is missing (the migration and `meterhub_facility_defaults()` create it).
DEFAULT_THRESHOLD_PCT = Decimal("5.00")
DEFAULT_INTERVAL_DAYS = 180
MAX_NAME = 100
MAX_ADDRESS = 200
MAX_TEXT = 1000
MAX_DAYS = 400  # the longest supply-balance window
VOLUME_CHANNEL = "volume_m3"
# How a drop of a register is read (as billing.consumption.RegisterParams reads it): a wrapped use of at most
# this share of the register's range is a rollover; else a drop of at most NEGATIVE_TOLERANCE m3 is negative
# use; a larger drop is a reset, whose day has unknown use.
ROLLOVER_FRACTION = Decimal("0.1")
NEGATIVE_TOLERANCE = Decimal("1.000")
RESOLUTION = Decimal("0.001")

_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_LIKE_ESCAPE = str.maketrans({"\\": "\\\\", "%": "\\%", "_": "\\_"})

# The fields of a facility given by a person, in form order.
FIELDS = (
    "code", "name", "kind", "address", "community", "area", "latitude", "longitude", "model", "manufacturer", "dn",
    "pressure_in_mpa", "pressure_out_mpa", "flow_m3h", "install_date", "status", "note", "meter_no",
    "loss_threshold_pct",
)  # fmt: skip
EDITABLE = tuple(f for f in FIELDS if f not in ("code", "kind"))
BOX_ONLY = ("flow_m3h", "meter_no", "loss_threshold_pct")
# Codes that would clash with the console's own pages under /facilities.
RESERVED_CODES = frozenset({"new", "maintenance", "overdue", "settings"})


class FacilityError(ValueError):
    """A refused action; `field` names the input at fault, `params` fill the message's placeholders."""

    def __init__(self, code: str, message: str, *, field: str | None = None, status: int = 400, **params: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status
        self.params = params


def _invalid(field: str, code: str, message: str, **params: Any) -> FacilityError:
    return FacilityError(code, message, field=field, status=422, **params)


def _outside() -> FacilityError:
    return FacilityError("area", "this facility is outside your areas", status=403)


def _covers(areas: frozenset[int] | None, area_id: int | None) -> bool:
    return areas is None or (area_id is not None and area_id in areas)


def _like(text: str) -> str:
    return "%" + text.translate(_LIKE_ESCAPE) + "%"


# -- views ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FacilityRow:
    code: str
    kind: str
    name: str
    status: str
    address: str
    community: str | None
    community_name: str | None
    area: str | None
    area_name: str | None
    model: str
    install_date: date | None
    meter_no: str | None
    accounts: int
    links: int


@dataclass(frozen=True)
class SearchResult:
    rows: list[FacilityRow]
    page: int
    size: int
    has_more: bool


@dataclass(frozen=True)
class LinkView:
    code: str
    kind: str
    name: str
    status: str
    linked_by: str
    linked_at: datetime


@dataclass(frozen=True)
class FedAccount:
    account_no: str
    name: str
    address: str
    community: str | None
    status: str
    meters: list[str]
    linked_by: str
    linked_at: datetime


@dataclass(frozen=True)
class MaintenanceRecord:
    id: int
    facility_code: str
    facility_kind: str
    facility_name: str
    done_on: date
    kind: str
    person: str
    findings: str
    parts: str
    next_due: date | None
    recorded_by: str
    recorded_at: datetime


@dataclass(frozen=True)
class FacilityView:
    id: int
    code: str
    kind: str
    name: str
    address: str
    area_id: int | None
    area: str | None
    area_name: str | None
    community: str | None
    community_name: str | None
    latitude: Decimal | None
    longitude: Decimal | None
    model: str
    manufacturer: str
    dn: int | None
    pressure_in_mpa: Decimal | None
    pressure_out_mpa: Decimal | None
    flow_m3h: Decimal | None
    install_date: date | None
    status: str
    note: str
    meter_no: str | None
    loss_threshold_pct: Decimal | None
    threshold_pct: Decimal  # in force: the box's own, else the default
    created_at: datetime
    updated_at: datetime
    links: list[LinkView] = field(default_factory=list)
    accounts: list[FedAccount] = field(default_factory=list)
    maintenance: list[MaintenanceRecord] = field(default_factory=list)
    next_due: date | None = None

    def form(self) -> dict[str, str]:
        """The facility's values as the edit form shows them."""

        def text(value: Any) -> str:
            return "" if value is None else value.isoformat() if isinstance(value, date) else str(value)

        return {
            "code": self.code, "name": self.name, "kind": self.kind, "address": self.address,
            "community": self.community or "", "area": self.area or "", "latitude": text(self.latitude),
            "longitude": text(self.longitude), "model": self.model, "manufacturer": self.manufacturer,
            "dn": text(self.dn), "pressure_in_mpa": text(self.pressure_in_mpa),
            "pressure_out_mpa": text(self.pressure_out_mpa), "flow_m3h": text(self.flow_m3h),
            "install_date": text(self.install_date), "status": self.status, "note": self.note,
            "meter_no": self.meter_no or "", "loss_threshold_pct": text(self.loss_threshold_pct),
        }  # fmt: skip


@dataclass(frozen=True)
class OverdueRow:
    code: str
    kind: str
    name: str
    area_name: str | None
    community_name: str | None
    last_done_on: date | None
    last_kind: str | None
    due_on: date
    days_overdue: int


@dataclass(frozen=True)
class FacilitySettings:
    loss_threshold_pct: Decimal
    maintenance_interval_days: int


# -- reference data -------------------------------------------------------------------------------------
def settings(conn: psycopg.Connection[Any]) -> FacilitySettings:
    """The default loss threshold and maintenance interval."""
    row = conn.execute("SELECT loss_threshold_pct, maintenance_interval_days FROM facility_setting").fetchone()
    if row is None:
        return FacilitySettings(DEFAULT_THRESHOLD_PCT, DEFAULT_INTERVAL_DAYS)
    return FacilitySettings(Decimal(row[0]), int(row[1]))


def set_settings(
    store: Store, actor: str, *, loss_threshold_pct: Any, maintenance_interval_days: Any
) -> FacilitySettings:
    """Change the defaults (a person not limited to areas; the route checks facilities.edit)."""
    threshold = _decimal(loss_threshold_pct, "loss_threshold_pct", places=2, low=Decimal(0), high=Decimal(100))
    if threshold is None:
        raise _invalid("loss_threshold_pct", "required", "loss_threshold_pct is required")
    interval = _whole(maintenance_interval_days, "maintenance_interval_days", low=1, high=3650)
    if interval is None:
        raise _invalid("maintenance_interval_days", "required", "maintenance_interval_days is required")
    with store.transaction(actor=actor) as conn:
        conn.execute(
            """INSERT INTO facility_setting (id, loss_threshold_pct, maintenance_interval_days, updated_by)
               VALUES (true, %s, %s, meterhub_actor())
               ON CONFLICT (id) DO UPDATE SET loss_threshold_pct = EXCLUDED.loss_threshold_pct,
                   maintenance_interval_days = EXCLUDED.maintenance_interval_days, updated_by = meterhub_actor()""",
            [threshold, interval],
        )
    return FacilitySettings(threshold.quantize(Decimal("0.01")), interval)


def areas_of(conn: psycopg.Connection[Any], areas: frozenset[int] | None = None) -> list[tuple[str, str]]:
    """(code, name) of the areas within `areas`, by name."""
    rows = conn.execute(
        """SELECT code, name FROM area WHERE %(areas)s::bigint[] IS NULL OR id = ANY(%(areas)s::bigint[])
            ORDER BY name, code""",
        {"areas": None if areas is None else sorted(areas)},
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def communities_of(conn: psycopg.Connection[Any], areas: frozenset[int] | None = None) -> list[tuple[str, str, str]]:
    """(code, name, area name) of the communities within `areas`."""
    rows = conn.execute(
        """SELECT co.code, co.name, ar.name FROM community co JOIN area ar ON ar.id = co.area_id
            WHERE %(areas)s::bigint[] IS NULL OR co.area_id = ANY(%(areas)s::bigint[])
            ORDER BY ar.name, co.name, co.code""",
        {"areas": None if areas is None else sorted(areas)},
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


# -- validation -----------------------------------------------------------------------------------------
def _text(value: Any, field: str, limit: int, *, required: bool = False) -> str:
    text = "" if value is None else str(value).strip()
    if required and not text:
        raise _invalid(field, "required", f"{field} is required")
    if len(text) > limit:
        raise _invalid(field, "too_long", f"{field} is longer than {limit} characters", limit=limit)
    return text


def _decimal(
    value: Any, field: str, *, places: int, low: Decimal | None = None, high: Decimal | None = None
) -> Decimal | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float | bool):
        raise _invalid(field, "bad_number", f"{field}: give the number as a decimal string")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise _invalid(field, "bad_number", f"{field}: {value!r} is not a number") from None
    if not number.is_finite():
        raise _invalid(field, "bad_number", f"{field}: {value!r} is not a number")
    if number != number.quantize(Decimal(1).scaleb(-places)):
        raise _invalid(field, "too_precise", f"{field}: at most {places} decimal places", places=places)
    if (low is not None and number < low) or (high is not None and number > high):
        raise _invalid(field, "out_of_range", f"{field}: between {low} and {high}", low=low, high=high)
    return number


def _whole(value: Any, field: str, *, low: int, high: int) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise _invalid(field, "bad_whole", f"{field}: a whole number") from None
    if not low <= number <= high:
        raise _invalid(field, "out_of_range", f"{field}: between {low} and {high}", low=low, high=high)
    return number


def _date(value: Any, field: str) -> date | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise _invalid(field, "bad_date", f"{field}: a date YYYY-MM-DD") from None


def _choice(value: Any, field: str, choices: Sequence[str]) -> str:
    text = "" if value is None else str(value).strip()
    if text not in choices:
        raise _invalid(field, "bad_choice", f"{field}: one of {', '.join(choices)}", choices=", ".join(choices))
    return text


def _code(value: Any, field: str = "code") -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise _invalid(field, "required", f"{field} is required")
    if not _CODE.match(text):
        raise _invalid(field, "bad_code", f"{field} {text!r}: letters, digits, '-' and '_', at most 32")
    return text


def _clean(values: Mapping[str, Any], kind: str, today: date | None) -> dict[str, Any]:
    """Checked values of the given fields (all of EDITABLE that are present)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "name":
            out[key] = _text(value, "name", MAX_NAME, required=True)
        elif key == "address":
            out[key] = _text(value, "address", MAX_ADDRESS)
        elif key in ("model", "manufacturer"):
            out[key] = _text(value, key, MAX_NAME)
        elif key == "note":
            out[key] = _text(value, "note", MAX_TEXT)
        elif key in ("community", "area", "meter_no"):
            out[key] = _text(value, key, 32)
        elif key == "latitude":
            out[key] = _decimal(value, key, places=6, low=Decimal(-90), high=Decimal(90))
        elif key == "longitude":
            out[key] = _decimal(value, key, places=6, low=Decimal(-180), high=Decimal(180))
        elif key == "dn":
            out[key] = _whole(value, key, low=1, high=5000)
        elif key in ("pressure_in_mpa", "pressure_out_mpa"):
            out[key] = _decimal(value, key, places=4, low=Decimal(0), high=Decimal(100))
        elif key == "flow_m3h":
            out[key] = _decimal(value, key, places=2, low=Decimal(0), high=Decimal(10_000_000))
        elif key == "loss_threshold_pct":
            out[key] = _decimal(value, key, places=2, low=Decimal(0), high=Decimal(100))
        elif key == "install_date":
            out[key] = _date(value, key)
            if out[key] is not None and today is not None and out[key] > today:
                raise _invalid(key, "future_date", f"{key}: after today")
        elif key == "status":
            out[key] = _choice(value or "in_service", key, STATUSES)
        elif key in ("code", "kind"):
            continue
        else:
            raise _invalid(key, "not_editable", f"{key} cannot be set here")
    if kind != "box":
        for key in BOX_ONLY:
            if out.get(key) not in (None, ""):
                raise _invalid(key, "box_only", f"{key}: only a regulator box has it")
            out.pop(key, None)
    pin, pout = out.get("pressure_in_mpa"), out.get("pressure_out_mpa")
    if pin is not None and pout is not None and pout > pin:
        raise _invalid("pressure_out_mpa", "pressure_order", "the outlet pressure is above the inlet pressure")
    return out


def _place(
    conn: psycopg.Connection[Any], community: str, area: str, areas: frozenset[int] | None
) -> tuple[int | None, int | None]:
    """(community id, area id) of a facility: the community's area, else the area given."""
    if community:
        row = conn.execute("SELECT id, area_id FROM community WHERE code = %s", [community]).fetchone()
        if row is None:
            raise _invalid("community", "no_community", f"no community {community!r}", value=community)
        community_id, area_id = int(row[0]), int(row[1])
        if area:
            given = conn.execute("SELECT id FROM area WHERE code = %s", [area]).fetchone()
            if given is None:
                raise _invalid("area", "no_area", f"no area {area!r}", value=area)
            if int(given[0]) != area_id:
                raise _invalid(
                    "area",
                    "area_mismatch",
                    f"community {community} is not in area {area}",
                    community=community,
                    area=area,
                )
    elif area:
        row = conn.execute("SELECT id FROM area WHERE code = %s", [area]).fetchone()
        if row is None:
            raise _invalid("area", "no_area", f"no area {area!r}", value=area)
        community_id, area_id = None, int(row[0])
    else:
        if areas is not None:
            raise _invalid("area", "area_required", "an area or a community is required")
        return None, None
    if not _covers(areas, area_id):
        raise FacilityError(
            "area", "that place is outside your areas", field="community" if community else "area", status=403
        )
    return community_id, area_id


def _meter(conn: psycopg.Connection[Any], meter_no: str, box_id: int | None) -> int | None:
    if not meter_no:
        return None
    row = conn.execute("SELECT id, status FROM meter WHERE meter_no = %s", [meter_no]).fetchone()
    if row is None:
        raise _invalid("meter_no", "no_meter", f"no meter {meter_no!r}", value=meter_no)
    other = conn.execute(
        "SELECT code FROM facility WHERE meter_id = %s AND id IS DISTINCT FROM %s", [row[0], box_id]
    ).fetchone()
    if other is not None:
        raise FacilityError(
            "meter_taken",
            f"meter {meter_no} is already the meter of box {other[0]}",
            field="meter_no",
            status=409,
            value=meter_no,
            box=other[0],
        )
    return int(row[0])


def _lock(conn: psycopg.Connection[Any], code: str, areas: frozenset[int] | None) -> dict[str, Any]:
    row = conn.execute(
        "SELECT id, kind, code, area_id, status FROM facility WHERE code = %s FOR UPDATE", [code]
    ).fetchone()
    if row is None:
        raise FacilityError("not_found", f"no facility {code!r}", status=404, value=code)
    if not _covers(areas, row[3]):
        raise _outside()
    return {"id": int(row[0]), "kind": row[1], "code": row[2], "area_id": row[3], "status": row[4]}


# -- create and edit ------------------------------------------------------------------------------------
def create(
    store: Store,
    actor: str,
    values: Mapping[str, Any],
    *,
    areas: frozenset[int] | None = None,
    today: date | None = None,
) -> str:
    """A new well, box or stack; its code."""
    code = _code(values.get("code"))
    if code.lower() in RESERVED_CODES:
        raise _invalid("code", "reserved_code", f"code {code!r} is reserved", value=code)
    kind = _choice(values.get("kind"), "kind", KINDS)
    given = {k: v for k, v in values.items() if k in EDITABLE}
    given.setdefault("name", "")
    clean = _clean(given, kind, today)
    try:
        with store.transaction(actor=actor) as conn:
            community_id, area_id = _place(conn, clean.pop("community", ""), clean.pop("area", ""), areas)
            meter_id = _meter(conn, clean.pop("meter_no", ""), None) if kind == "box" else None
            columns = {
                "kind": kind,
                "code": code,
                "community_id": community_id,
                "area_id": area_id,
                "meter_id": meter_id,
                **clean,
            }
            conn.execute(
                f"INSERT INTO facility ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
                list(columns.values()),
            )
    except psycopg.errors.UniqueViolation:
        raise FacilityError(
            "duplicate", f"code {code} is already in use", field="code", status=409, value=code
        ) from None
    return code


def update(
    store: Store,
    actor: str,
    code: str,
    values: Mapping[str, Any],
    *,
    areas: frozenset[int] | None = None,
    today: date | None = None,
) -> list[str]:
    """Change the given fields (of EDITABLE); the names of the columns that changed (none: nothing written)."""
    unknown = sorted(set(values) - set(EDITABLE))
    if unknown:
        raise _invalid(unknown[0], "not_editable", f"{unknown[0]} cannot be edited")
    with store.transaction(actor=actor) as conn:
        current = _lock(conn, code, areas)
        clean = _clean(values, current["kind"], today)
        before = (
            conn.cursor(row_factory=dict_row)
            .execute(
                """SELECT f.*, co.code AS community_code, ar.code AS area_code FROM facility f
                 LEFT JOIN community co ON co.id = f.community_id LEFT JOIN area ar ON ar.id = f.area_id
                WHERE f.id = %s""",
                [current["id"]],
            )
            .fetchone()
        )
        assert before is not None
        changes: dict[str, Any] = {}
        if "community" in clean or "area" in clean:
            community = clean.pop("community", before["community_code"] or "")
            area = clean.pop("area", None)
            if area is None:
                area = "" if community else before["area_code"] or ""
            changes["community_id"], changes["area_id"] = _place(conn, community, area, areas)
        if "meter_no" in clean:
            changes["meter_id"] = _meter(conn, clean.pop("meter_no"), current["id"])
        changes.update(clean)
        changed = {k: v for k, v in changes.items() if v != before[k]}
        if not changed:
            return []
        conn.execute(
            f"UPDATE facility SET {', '.join(f'{k} = %s' for k in changed)} WHERE id = %s",
            [*changed.values(), current["id"]],
        )
    return [{"community_id": "community", "area_id": "area", "meter_id": "meter_no"}.get(k, k) for k in changed]


# -- relations --------------------------------------------------------------------------------------------
def _pair(first: dict[str, Any], second: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(box, well or stack) of two facilities, whichever order they were named in."""
    if first["kind"] == "box" and second["kind"] in ("well", "stack"):
        return first, second
    if second["kind"] == "box" and first["kind"] in ("well", "stack"):
        return second, first
    raise _invalid("other", "bad_link", "a link joins a regulator box and a valve well or relief stack")


def link(store: Store, actor: str, code: str, other: str, *, areas: frozenset[int] | None = None) -> None:
    """Link a box and a well or relief stack (named in either order)."""
    other = _code(other, "other")
    with store.transaction(actor=actor) as conn:
        box, part = _pair(_lock(conn, code, areas), _lock_other(conn, other, areas))
        if conn.execute(
            "SELECT 1 FROM facility_link WHERE box_id = %s AND other_id = %s", [box["id"], part["id"]]
        ).fetchone():
            raise FacilityError(
                "already_linked",
                f"{box['code']} and {part['code']} are already linked",
                field="other",
                status=409,
                box=box["code"],
                other=part["code"],
            )
        conn.execute("INSERT INTO facility_link (box_id, other_id) VALUES (%s, %s)", [box["id"], part["id"]])


def _lock_other(conn: psycopg.Connection[Any], other: str, areas: frozenset[int] | None) -> dict[str, Any]:
    try:
        return _lock(conn, other, areas)
    except FacilityError as exc:
        if exc.code == "not_found":
            raise _invalid("other", "no_facility", f"no facility {other!r}", value=other) from None
        raise


def unlink(store: Store, actor: str, code: str, other: str, *, areas: frozenset[int] | None = None) -> None:
    """Remove the link between a box and a well or relief stack."""
    with store.transaction(actor=actor) as conn:
        box, part = _pair(_lock(conn, code, areas), _lock_other(conn, other, areas))
        gone = conn.execute(
            "DELETE FROM facility_link WHERE box_id = %s AND other_id = %s RETURNING id", [box["id"], part["id"]]
        ).fetchone()
        if gone is None:
            raise FacilityError(
                "not_linked",
                f"{box['code']} and {part['code']} are not linked",
                status=404,
                box=box["code"],
                other=part["code"],
            )


def _account(conn: psycopg.Connection[Any], account_no: str, areas: frozenset[int] | None) -> int:
    row = conn.execute(
        """SELECT a.id, co.area_id FROM account a LEFT JOIN community co ON co.id = a.community_id
            WHERE a.account_no = %s FOR UPDATE OF a""",
        [account_no],
    ).fetchone()
    if row is None:
        raise _invalid("account_no", "no_account", f"no account {account_no!r}", value=account_no)
    if not _covers(areas, row[1]):
        raise FacilityError("area", f"account {account_no} is outside your areas", field="account_no", status=403)
    return int(row[0])


def attach_accounts(
    store: Store, actor: str, code: str, account_nos: Iterable[str], *, areas: frozenset[int] | None = None
) -> list[str]:
    """The box feeds these accounts (all or none: an account fed by another box is refused)."""
    wanted = [n.strip() for n in account_nos if n and n.strip()]
    if not wanted:
        raise _invalid("account_no", "required", "account_no is required")
    with store.transaction(actor=actor) as conn:
        box = _lock(conn, code, areas)
        if box["kind"] != "box":
            raise _invalid("account_no", "not_a_box", "only a regulator box feeds accounts")
        for account_no in dict.fromkeys(wanted):
            account_id = _account(conn, account_no, areas)
            fed = conn.execute(
                "SELECT f.code FROM facility_account x JOIN facility f ON f.id = x.box_id WHERE x.account_id = %s",
                [account_id],
            ).fetchone()
            if fed is not None:
                raise FacilityError(
                    "already_fed",
                    f"account {account_no} is already fed by box {fed[0]}",
                    field="account_no",
                    status=409,
                    value=account_no,
                    box=fed[0],
                )
            conn.execute("INSERT INTO facility_account (box_id, account_id) VALUES (%s, %s)", [box["id"], account_id])
    return list(dict.fromkeys(wanted))


def detach_account(
    store: Store, actor: str, code: str, account_no: str, *, areas: frozenset[int] | None = None
) -> None:
    """The box no longer feeds the account."""
    with store.transaction(actor=actor) as conn:
        box = _lock(conn, code, areas)
        gone = conn.execute(
            """DELETE FROM facility_account x USING account a
                WHERE x.box_id = %s AND a.id = x.account_id AND a.account_no = %s RETURNING x.id""",
            [box["id"], account_no],
        ).fetchone()
        if gone is None:
            raise FacilityError(
                "not_fed", f"box {code} does not feed account {account_no}", status=404, box=code, value=account_no
            )


# -- maintenance ------------------------------------------------------------------------------------------
def record_maintenance(
    store: Store,
    actor: str,
    code: str,
    values: Mapping[str, Any],
    *,
    areas: frozenset[int] | None = None,
    today: date | None = None,
) -> int:
    """An inspection, maintenance, repair or replacement record of a facility; its id. Records are never
    changed: a correction is a new record."""
    today = today or date.today()
    done_on = _date(values.get("done_on"), "done_on")
    if done_on is None:
        raise _invalid("done_on", "required", "done_on is required")
    if done_on > today:
        raise _invalid("done_on", "future_date", "done_on: after today")
    kind = _choice(values.get("kind"), "kind", MAINTENANCE_KINDS)
    person = _text(values.get("person"), "person", MAX_NAME, required=True)
    findings = _text(values.get("findings"), "findings", MAX_TEXT)
    parts = _text(values.get("parts"), "parts", MAX_TEXT)
    next_due = _date(values.get("next_due"), "next_due")
    if next_due is not None and next_due <= done_on:
        raise _invalid("next_due", "due_before_done", "next_due: after the day of the work")
    with store.transaction(actor=actor) as conn:
        facility = _lock(conn, code, areas)
        row = conn.execute(
            """INSERT INTO facility_maintenance (facility_id, done_on, kind, person, findings, parts, next_due)
               VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            [facility["id"], done_on, kind, person, findings, parts, next_due],
        ).fetchone()
        assert row is not None
    return int(row[0])


_MAINTENANCE_SELECT = """
SELECT m.id, f.code AS facility_code, f.kind AS facility_kind, f.name AS facility_name, m.done_on, m.kind,
       m.person, m.findings, m.parts, m.next_due, m.recorded_by, m.recorded_at
  FROM facility_maintenance m JOIN facility f ON f.id = m.facility_id"""


def maintenance(
    conn: psycopg.Connection[Any],
    q: str = "",
    *,
    kind: str = "",
    facility_kind: str = "",
    since: date | None = None,
    until: date | None = None,
    areas: frozenset[int] | None = None,
    page: int = 1,
    size: int = 50,
) -> tuple[list[MaintenanceRecord], bool]:
    """Maintenance records, newest first, matching `q` in the facility's code or name, the person, findings
    or parts; (records of the page, whether more follow)."""
    if kind and kind not in MAINTENANCE_KINDS:
        raise _invalid(
            "kind", "bad_choice", f"kind: one of {', '.join(MAINTENANCE_KINDS)}", choices=", ".join(MAINTENANCE_KINDS)
        )
    if facility_kind and facility_kind not in KINDS:
        raise _invalid(
            "facility_kind", "bad_choice", f"facility_kind: one of {', '.join(KINDS)}", choices=", ".join(KINDS)
        )
    size = max(1, min(size, 200_000))
    page = max(1, page)
    rows = (
        conn.cursor(row_factory=class_row(MaintenanceRecord))
        .execute(
            _MAINTENANCE_SELECT
            + """ WHERE (%(q)s = '' OR f.code ILIKE %(p)s OR f.name ILIKE %(p)s OR m.person ILIKE %(p)s
                         OR m.findings ILIKE %(p)s OR m.parts ILIKE %(p)s)
                    AND (%(kind)s = '' OR m.kind = %(kind)s) AND (%(fk)s = '' OR f.kind = %(fk)s)
                    AND (%(since)s::date IS NULL OR m.done_on >= %(since)s::date)
                    AND (%(until)s::date IS NULL OR m.done_on <= %(until)s::date)
                    AND (%(areas)s::bigint[] IS NULL OR f.area_id = ANY(%(areas)s::bigint[]))
                  ORDER BY m.done_on DESC, m.id DESC LIMIT %(limit)s OFFSET %(offset)s""",
            {
                "q": q.strip(),
                "p": _like(q.strip()),
                "kind": kind,
                "fk": facility_kind,
                "since": since,
                "until": until,
                "areas": None if areas is None else sorted(areas),
                "limit": size + 1,
                "offset": (page - 1) * size,
            },
        )
        .fetchall()
    )
    return rows[:size], len(rows) > size


_DUE = """
WITH last AS (
    SELECT DISTINCT ON (facility_id) facility_id, done_on, kind, next_due
      FROM facility_maintenance ORDER BY facility_id, done_on DESC, id DESC)
SELECT f.id, f.code, f.kind, f.name, ar.name AS area_name, co.name AS community_name, l.done_on, l.kind AS last_kind,
       coalesce(l.next_due, l.done_on + %(interval)s::int, f.install_date + %(interval)s::int) AS due_on
  FROM facility f
  LEFT JOIN last l ON l.facility_id = f.id
  LEFT JOIN area ar ON ar.id = f.area_id
  LEFT JOIN community co ON co.id = f.community_id"""


def overdue(
    conn: psycopg.Connection[Any],
    today: date,
    *,
    kind: str = "",
    areas: frozenset[int] | None = None,
    within_days: int = 0,
) -> list[OverdueRow]:
    """Facilities in service whose maintenance is due on or before `today` + `within_days` (most overdue first):
    due on the last record's next due date, else the last record's date (or the install date, when there is
    no record) plus the default interval. A facility with neither records nor install date is due today."""
    if kind and kind not in KINDS:
        raise _invalid("kind", "bad_choice", f"kind: one of {', '.join(KINDS)}", choices=", ".join(KINDS))
    interval = settings(conn).maintenance_interval_days
    rows = conn.execute(
        f"""SELECT * FROM ({_DUE}) d
             WHERE coalesce(d.due_on, %(today)s) <= %(limit)s
               AND (%(kind)s = '' OR d.kind = %(kind)s)
               AND d.id IN (SELECT id FROM facility WHERE status = 'in_service'
                              AND (%(areas)s::bigint[] IS NULL OR area_id = ANY(%(areas)s::bigint[])))
             ORDER BY coalesce(d.due_on, %(today)s), d.code""",
        {
            "interval": interval,
            "today": today,
            "limit": today + timedelta(days=within_days),
            "kind": kind,
            "areas": None if areas is None else sorted(areas),
        },
    ).fetchall()
    return [
        OverdueRow(
            code=r[1],
            kind=r[2],
            name=r[3],
            area_name=r[4],
            community_name=r[5],
            last_done_on=r[6],
            last_kind=r[7],
            due_on=r[8] or today,
            days_overdue=(today - (r[8] or today)).days,
        )
        for r in rows
    ]


# -- search and the facility ------------------------------------------------------------------------------
def search(
    conn: psycopg.Connection[Any],
    q: str = "",
    *,
    kind: str = "",
    status: str = "",
    area: str = "",
    areas: frozenset[int] | None = None,
    page: int = 1,
    size: int = 50,
) -> SearchResult:
    """Facilities whose code, name, address, model, community or area contains `q`, by kind and code."""
    if kind and kind not in KINDS:
        raise _invalid("kind", "bad_choice", f"kind: one of {', '.join(KINDS)}", choices=", ".join(KINDS))
    if status and status not in STATUSES:
        raise _invalid("status", "bad_choice", f"status: one of {', '.join(STATUSES)}", choices=", ".join(STATUSES))
    size = max(1, min(size, 200_000))
    page = max(1, page)
    text = q.strip()
    rows = (
        conn.cursor(row_factory=class_row(FacilityRow))
        .execute(
            """SELECT f.code, f.kind, f.name, f.status, f.address, co.code AS community, co.name AS community_name,
                      ar.code AS area, ar.name AS area_name, f.model, f.install_date, m.meter_no,
                      (SELECT count(*) FROM facility_account x WHERE x.box_id = f.id)::int AS accounts,
                      (SELECT count(*) FROM facility_link l WHERE l.box_id = f.id OR l.other_id = f.id)::int AS links
                 FROM facility f
                 LEFT JOIN community co ON co.id = f.community_id
                 LEFT JOIN area ar ON ar.id = f.area_id
                 LEFT JOIN meter m ON m.id = f.meter_id
                WHERE (%(q)s = '' OR f.code ILIKE %(p)s OR f.name ILIKE %(p)s OR f.address ILIKE %(p)s
                       OR f.model ILIKE %(p)s OR co.name ILIKE %(p)s OR co.code ILIKE %(p)s OR ar.name ILIKE %(p)s)
                  AND (%(kind)s = '' OR f.kind = %(kind)s) AND (%(status)s = '' OR f.status = %(status)s)
                  AND (%(area)s = '' OR ar.code = %(area)s)
                  AND (%(areas)s::bigint[] IS NULL OR f.area_id = ANY(%(areas)s::bigint[]))
                ORDER BY array_position(ARRAY['box', 'well', 'stack'], f.kind), f.code
                LIMIT %(limit)s OFFSET %(offset)s""",
            {
                "q": text,
                "p": _like(text),
                "kind": kind,
                "status": status,
                "area": area.strip(),
                "areas": None if areas is None else sorted(areas),
                "limit": size + 1,
                "offset": (page - 1) * size,
            },
        )
        .fetchall()
    )
    return SearchResult(rows[:size], page, size, len(rows) > size)


def get(conn: psycopg.Connection[Any], code: str, *, areas: frozenset[int] | None = None) -> FacilityView:
    """A facility with its links, the accounts it feeds (boxes), its maintenance history and next due date."""
    row = conn.execute(
        """SELECT f.id, f.code, f.kind, f.name, f.address, f.area_id, ar.code, ar.name, co.code, co.name, f.latitude,
                  f.longitude, f.model, f.manufacturer, f.dn, f.pressure_in_mpa, f.pressure_out_mpa, f.flow_m3h,
                  f.install_date, f.status, f.note, m.meter_no, f.loss_threshold_pct, f.created_at, f.updated_at
             FROM facility f
             LEFT JOIN area ar ON ar.id = f.area_id
             LEFT JOIN community co ON co.id = f.community_id
             LEFT JOIN meter m ON m.id = f.meter_id
            WHERE f.code = %s""",
        [code],
    ).fetchone()
    if row is None:
        raise FacilityError("not_found", f"no facility {code!r}", status=404, value=code)
    if not _covers(areas, row[5]):
        raise _outside()
    facility_id = int(row[0])
    defaults = settings(conn)
    links = [
        LinkView(*r)
        for r in conn.execute(
            """SELECT o.code, o.kind, o.name, o.status, l.linked_by, l.linked_at
                 FROM facility_link l JOIN facility o ON o.id = CASE WHEN l.box_id = %(id)s THEN l.other_id
                                                                    ELSE l.box_id END
                WHERE l.box_id = %(id)s OR l.other_id = %(id)s
                ORDER BY array_position(ARRAY['box', 'well', 'stack'], o.kind), o.code""",
            {"id": facility_id},
        ).fetchall()
    ]
    accounts = [
        FedAccount(r[0], r[1], r[2], r[3], r[4], list(r[5]), r[6], r[7])
        for r in conn.execute(
            """SELECT a.account_no, cu.name, a.address, co.name, a.status,
                      coalesce((SELECT array_agg(m.meter_no ORDER BY m.meter_no) FROM meter m
                                 WHERE m.account_id = a.id AND m.status IN ('installed', 'suspended')), '{}'),
                      x.linked_by, x.linked_at
                 FROM facility_account x JOIN account a ON a.id = x.account_id
                 JOIN customer cu ON cu.id = a.customer_id
                 LEFT JOIN community co ON co.id = a.community_id
                WHERE x.box_id = %s ORDER BY a.account_no""",
            [facility_id],
        ).fetchall()
    ]
    records = (
        conn.cursor(row_factory=class_row(MaintenanceRecord))
        .execute(_MAINTENANCE_SELECT + " WHERE m.facility_id = %s ORDER BY m.done_on DESC, m.id DESC", [facility_id])
        .fetchall()
    )
    due = conn.execute(
        f"SELECT due_on FROM ({_DUE}) d WHERE d.id = %(id)s",
        {"interval": defaults.maintenance_interval_days, "id": facility_id},
    ).fetchone()
    return FacilityView(
        id=facility_id, code=row[1], kind=row[2], name=row[3], address=row[4], area_id=row[5], area=row[6],
        area_name=row[7], community=row[8], community_name=row[9], latitude=row[10], longitude=row[11],
        model=row[12], manufacturer=row[13], dn=row[14], pressure_in_mpa=row[15], pressure_out_mpa=row[16],
        flow_m3h=row[17], install_date=row[18], status=row[19], note=row[20], meter_no=row[21],
        loss_threshold_pct=row[22],
        threshold_pct=row[22] if row[22] is not None else defaults.loss_threshold_pct,
        created_at=row[23], updated_at=row[24], links=links, accounts=accounts, maintenance=records,
        next_due=due[0] if due else None,
    )  # fmt: skip


def box_of_account(conn: psycopg.Connection[Any], account_no: str) -> str | None:
    """The code of the box that feeds an account, if any."""
    row = conn.execute(
        """SELECT f.code FROM facility_account x JOIN facility f ON f.id = x.box_id
             JOIN account a ON a.id = x.account_id WHERE a.account_no = %s""",
        [account_no],
    ).fetchone()
    return None if row is None else str(row[0])


# -- supply balance (供销差) --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gap:
    """Why a day is incomplete: a meter (of the box, or of a fed account) without a whole day of use."""

    meter_no: str
    side: str  # box, fed
    status: str  # missing: no reading closed the day; catch_up: the use spans earlier days; reset: unknown use


@dataclass(frozen=True)
class BalanceDay:
    day: date
    box_m3: Decimal | None  # None: the box meter's day is incomplete
    fed_m3: Decimal | None  # None: a fed meter's day is incomplete
    meters: int  # fed meters that measured on the day
    complete: bool
    loss_m3: Decimal | None  # box - fed, for complete days
    loss_pct: Decimal | None  # loss / box x 100, two places; None when incomplete or the box used nothing
    flagged: bool
    gaps: list[Gap]


@dataclass(frozen=True)
class BalanceMonth:
    month: str  # YYYY-MM
    days: int  # days of the month inside the window
    complete_days: int
    box_m3: Decimal  # over the complete days
    fed_m3: Decimal
    loss_m3: Decimal
    loss_pct: Decimal | None
    complete: bool  # every day of the month inside the window is complete
    flagged: bool
    flagged_days: int


@dataclass(frozen=True)
class Balance:
    code: str
    name: str
    meter_no: str | None
    threshold_pct: Decimal
    first_day: date
    last_day: date
    accounts: int
    days: list[BalanceDay]
    months: list[BalanceMonth]


@dataclass(frozen=True)
class _Series:
    """A stretch of one meter measuring for one side: the box's meter, or a meter of a fed account while it was
    assigned to the account (meter_assignment; a replacement's settlement readings open and close it)."""

    side: str
    meter_id: int
    meter_no: str
    valid_from: datetime | None
    valid_to: datetime | None
    first_value: Decimal | None
    final_value: Decimal | None
    modulus: Decimal | None  # register_max + one resolution step: where the register wraps


def _pct(loss: Decimal, box: Decimal) -> Decimal | None:
    if box <= 0:
        return None
    return (loss * 100 / box).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _series(conn: psycopg.Connection[Any], box_id: int, meter_id: int | None) -> list[_Series]:
    out: list[_Series] = []
    if meter_id is not None:
        row = conn.execute(
            """SELECT m.meter_no, coalesce(m.register_max, mm.register_max) FROM meter m
                 LEFT JOIN meter_model mm ON mm.id = m.model_id WHERE m.id = %s""",
            [meter_id],
        ).fetchone()
        assert row is not None
        out.append(
            _Series(
                "box",
                meter_id,
                row[0],
                None,
                None,
                None,
                None,
                None if row[1] is None else Decimal(row[1]) + RESOLUTION,
            )
        )
    rows = conn.execute(
        """WITH fed AS (SELECT account_id FROM facility_account WHERE box_id = %(box)s)
           SELECT x.meter_id, m.meter_no, x.valid_from, x.valid_to, x.first_value, x.final_value,
                  coalesce(m.register_max, mm.register_max)
             FROM meter_assignment x JOIN meter m ON m.id = x.meter_id LEFT JOIN meter_model mm ON mm.id = m.model_id
            WHERE x.account_id IN (SELECT account_id FROM fed)
           UNION ALL
           SELECT m.id, m.meter_no, NULL, NULL, NULL, NULL, coalesce(m.register_max, mm.register_max)
             FROM meter m LEFT JOIN meter_model mm ON mm.id = m.model_id
            WHERE m.account_id IN (SELECT account_id FROM fed) AND m.status IN ('installed', 'suspended')
              AND NOT EXISTS (SELECT 1 FROM meter_assignment x WHERE x.meter_id = m.id AND x.account_id = m.account_id)
           ORDER BY 2, 3 NULLS FIRST""",
        {"box": box_id},
    ).fetchall()
    for r in rows:
        if meter_id is not None and r[0] == meter_id:
            continue  # the box's own meter never counts as a fed meter too
        out.append(
            _Series("fed", r[0], r[1], r[2], r[3], r[4], r[5], None if r[6] is None else Decimal(r[6]) + RESOLUTION)
        )
    return out


# Daily use per series. Telemetry at the instant of a settlement reading gives way to it. Each local day (of
# ts - 1 microsecond: a reading at midnight closes the day before) is reduced to its first and last points: the use
# between them is their difference read as one interval (rollover, negative use or reset as below), the use
# from the previous day's last point to the day's first point another. This equals the sum over every reading
# interval as long as a register drops at most once between two points kept, and reads 2 points a day instead of
# every reading (a meter reporting every 15 minutes sends 96).
_DAILY = """
WITH s AS (
    SELECT * FROM unnest(%(sid)s::int[], %(meter)s::bigint[], %(vfrom)s::timestamptz[], %(vto)s::timestamptz[],
                         %(first)s::numeric[], %(final)s::numeric[], %(modulus)s::numeric[])
           AS s (sid, meter_id, valid_from, valid_to, first_value, final_value, modulus)),
pts AS (
    SELECT s.sid, r.ts, r.value
      FROM s JOIN reading r ON r.meter_id = s.meter_id AND r.channel = %(channel)s
     WHERE r.ts > %(since)s AND r.ts <= %(until)s
       AND (s.valid_from IS NULL OR r.ts > s.valid_from OR (r.ts = s.valid_from AND s.first_value IS NULL))
       AND (s.valid_to IS NULL OR r.ts < s.valid_to OR (r.ts = s.valid_to AND s.final_value IS NULL))
    UNION ALL
    SELECT s.sid, p.ts, p.value
      FROM s CROSS JOIN LATERAL (
            SELECT r.ts, r.value FROM reading r
             WHERE r.meter_id = s.meter_id AND r.channel = %(channel)s AND r.ts <= %(since)s
               AND (s.valid_from IS NULL OR r.ts > s.valid_from OR (r.ts = s.valid_from AND s.first_value IS NULL))
               AND (s.valid_to IS NULL OR r.ts < s.valid_to OR (r.ts = s.valid_to AND s.final_value IS NULL))
             ORDER BY r.ts DESC LIMIT 1) p
    UNION ALL
    SELECT sid, valid_from, first_value FROM s WHERE first_value IS NOT NULL AND valid_from <= %(until)s
    UNION ALL
    SELECT sid, valid_to, final_value FROM s WHERE final_value IS NOT NULL AND valid_to <= %(until)s),
daily AS (
    SELECT sid, ((ts - interval '1 microsecond') AT TIME ZONE %(tz)s)::date AS day,
           min(ARRAY[extract(epoch FROM ts), value]) AS f, max(ARRAY[extract(epoch FROM ts), value]) AS l
      FROM pts GROUP BY 1, 2),
kept AS (
    SELECT sid, day, f[1] AS at, f[2] AS value FROM daily
    UNION
    SELECT sid, day, l[1], l[2] FROM daily),
iv AS (
    SELECT kept.sid, kept.day, kept.value, s.modulus,
           lag(kept.day) OVER w AS prev_day, lag(kept.value) OVER w AS prev_value
      FROM kept JOIN s ON s.sid = kept.sid
    WINDOW w AS (PARTITION BY kept.sid ORDER BY kept.at)),
uses AS (
    SELECT sid, day, prev_day,
           CASE WHEN value >= prev_value THEN value - prev_value
                WHEN modulus IS NOT NULL AND value + modulus - prev_value <= modulus * %(rollover)s
                     THEN value + modulus - prev_value
                WHEN prev_value - value <= %(negative)s THEN value - prev_value
           END AS use_m3
      FROM iv WHERE prev_day IS NOT NULL AND day >= %(first_day)s)
SELECT sid, day, sum(use_m3), bool_or(use_m3 IS NULL), min(prev_day)
  FROM uses GROUP BY sid, day"""


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone)


def balance(
    conn: psycopg.Connection[Any],
    code: str,
    first_day: date,
    last_day: date,
    *,
    timezone: str,
    areas: frozenset[int] | None = None,
) -> Balance:
    """The supply balance of a box over the local days `first_day..last_day`: per day and per month, the use
    of the box's own meter against the summed use of the meters of the accounts it feeds.

    Use is counted from the volume registers in `reading` as billing counts it (billing.consumption): each
    reading closes the interval since the one before (a reading at midnight closes the day before); a day's use
    is that of the intervals it closes; a register that drops is a rollover (within a tenth of its range), a
    small negative use (at most 1 m³) or a reset. A fed account's meters are those assigned to it
    (`meter_assignment`), each only while assigned, with a replacement's settlement readings closing the old
    meter and opening the new one; meters of a fed account with no assignment rows count while installed.

    A side's day is complete when every meter measuring for it that day has intervals closing the day, the
    first of them starting no earlier than the day before, and no reset. A day incomplete on either side has
    no loss and is never flagged; it lists the meters at fault. loss = box - fed; loss % = loss / box x 100
    (two places); flagged when the loss % is above the box's threshold (its own, else the default). A month
    sums its complete days and is flagged when that sum's loss % is above the threshold."""
    if last_day < first_day:
        raise _invalid("last_day", "bad_window", "last_day is before first_day")
    if (last_day - first_day).days + 1 > MAX_DAYS:
        raise _invalid("last_day", "window_too_long", f"at most {MAX_DAYS} days", days=MAX_DAYS)
    facility = get(conn, code, areas=areas)
    if facility.kind != "box":
        raise _invalid("code", "not_a_box", "only a regulator box has a supply balance")
    meter_row = conn.execute("SELECT meter_id FROM facility WHERE id = %s", [facility.id]).fetchone()
    meter_id = meter_row[0] if meter_row else None
    series = _series(conn, facility.id, meter_id)
    zone = ZoneInfo(timezone)
    since, until = _local_midnight(first_day, zone), _local_midnight(last_day + timedelta(days=1), zone)
    used: dict[tuple[int, date], tuple[Decimal | None, bool, date | None]] = {}
    if series:
        for sid, day, use, reset, prev_day in conn.execute(
            _DAILY,
            {
                "sid": list(range(len(series))),
                "meter": [s.meter_id for s in series],
                "vfrom": [s.valid_from for s in series],
                "vto": [s.valid_to for s in series],
                "first": [s.first_value for s in series],
                "final": [s.final_value for s in series],
                "modulus": [s.modulus for s in series],
                "channel": VOLUME_CHANNEL,
                "since": since,
                "until": until,
                "first_day": first_day,
                "tz": timezone,
                "rollover": ROLLOVER_FRACTION,
                "negative": NEGATIVE_TOLERANCE,
            },
        ).fetchall():
            used[(sid, day)] = (use, bool(reset), prev_day)
    threshold = facility.threshold_pct
    days: list[BalanceDay] = []
    day = first_day
    while day <= last_day:
        totals = {"box": Decimal(0), "fed": Decimal(0)}
        measuring = {"box": 0, "fed": 0}
        gaps: list[Gap] = []
        for sid, s in enumerate(series):
            if not _measures(s, day, zone):
                continue
            measuring[s.side] += 1
            use, reset, prev_day = used.get((sid, day), (None, False, None))
            if prev_day is None:
                gaps.append(Gap(s.meter_no, s.side, "missing"))
            elif reset or use is None:
                gaps.append(Gap(s.meter_no, s.side, "reset"))
            elif prev_day < day - timedelta(days=1):
                gaps.append(Gap(s.meter_no, s.side, "catch_up"))
            else:
                totals[s.side] += use
        if measuring["box"] == 0:
            gaps.insert(0, Gap("", "box", "no_meter"))
        if measuring["fed"] == 0:
            gaps.append(Gap("", "fed", "no_meter"))
        box_ok = not any(g.side == "box" for g in gaps)
        fed_ok = not any(g.side == "fed" for g in gaps)
        complete = box_ok and fed_ok
        loss = totals["box"] - totals["fed"] if complete else None
        pct = _pct(loss, totals["box"]) if loss is not None else None
        days.append(
            BalanceDay(
                day=day, box_m3=totals["box"] if box_ok else None, fed_m3=totals["fed"] if fed_ok else None,
                meters=measuring["fed"], complete=complete, loss_m3=loss, loss_pct=pct,
                flagged=pct is not None and pct > threshold, gaps=gaps,
            )
        )  # fmt: skip
        day += timedelta(days=1)
    return Balance(
        code=facility.code, name=facility.name, meter_no=facility.meter_no, threshold_pct=threshold,
        first_day=first_day, last_day=last_day, accounts=len(facility.accounts), days=days,
        months=_months(days, threshold),
    )  # fmt: skip


def _measures(s: _Series, day: date, zone: ZoneInfo) -> bool:
    """Whether the series measures on the local `day` (an assignment from its start to its end)."""
    start, end = _local_midnight(day, zone), _local_midnight(day + timedelta(days=1), zone)
    if s.valid_from is not None and s.valid_from >= end:
        return False
    return not (s.valid_to is not None and s.valid_to <= start)


def _months(days: Sequence[BalanceDay], threshold: Decimal) -> list[BalanceMonth]:
    grouped: dict[str, list[BalanceDay]] = defaultdict(list)
    for d in days:
        grouped[d.day.strftime("%Y-%m")].append(d)
    out = []
    for month, members in grouped.items():
        whole = [d for d in members if d.complete]
        box = sum((d.box_m3 or Decimal(0) for d in whole), Decimal(0))
        fed = sum((d.fed_m3 or Decimal(0) for d in whole), Decimal(0))
        loss = box - fed
        pct = _pct(loss, box) if whole else None
        out.append(
            BalanceMonth(
                month=month, days=len(members), complete_days=len(whole), box_m3=box, fed_m3=fed, loss_m3=loss,
                loss_pct=pct, complete=len(whole) == len(members), flagged=pct is not None and pct > threshold,
                flagged_days=sum(1 for d in members if d.flagged),
            )
        )  # fmt: skip
    return out


def flagged_boxes(
    conn: psycopg.Connection[Any],
    first_day: date,
    last_day: date,
    *,
    timezone: str,
    areas: frozenset[int] | None = None,
) -> list[tuple[str, str, int, int]]:
    """(code, name, flagged days, complete days) of the boxes with a meter, over a window."""
    codes = conn.execute(
        """SELECT code FROM facility WHERE kind = 'box' AND meter_id IS NOT NULL
              AND (%(areas)s::bigint[] IS NULL OR area_id = ANY(%(areas)s::bigint[])) ORDER BY code""",
        {"areas": None if areas is None else sorted(areas)},
    ).fetchall()
    out = []
    for (code,) in codes:
        b = balance(conn, code, first_day, last_day, timezone=timezone, areas=areas)
        out.append((b.code, b.name, sum(1 for d in b.days if d.flagged), sum(1 for d in b.days if d.complete)))
    return out


# -- demo --------------------------------------------------------------------------------------------------
def seed_demo(conn: psycopg.Connection[Any]) -> None:
    """A few realistic facilities on top of the demo's data: for the first two communities, a regulator box with
    its own meter feeding a dozen of the community's accounts (the box meter's daily readings made from theirs over
    the last 120 days, with 2-4 % lost and a leak on the 11th and 12th of each month), its inlet valve well and
    relief stack, and maintenance records (the box's is overdue). The box meters (driver `manual`) stay out of the
    live simulated fleet. Idempotent: a second call adds nothing."""
    if conn.execute("SELECT 1 FROM facility WHERE code = 'TYX-001'").fetchone():
        return
    communities = conn.execute(
        """SELECT co.id, co.name, co.area_id FROM community co
            WHERE EXISTS (SELECT 1 FROM account a WHERE a.community_id = co.id) ORDER BY co.code LIMIT 2"""
    ).fetchall()
    if not communities:
        return
    for n, (community_id, community_name, area_id) in enumerate(communities, start=1):
        box_code, well_code, stack_code = f"TYX-{n:03d}", f"FJ-{n:03d}", f"FS-{n:03d}"
        meter_no = f"TYX-M{n:03d}"
        meter = conn.execute(
            """INSERT INTO meter (meter_no, driver_key, status, install_date, register_max)
               VALUES (%s, 'manual', 'installed', current_date - 400, 99999999.999)
               ON CONFLICT (meter_no) DO UPDATE SET meter_no = EXCLUDED.meter_no RETURNING id""",
            [meter_no],
        ).fetchone()
        assert meter is not None
        common = {
            "address": f"{community_name} 东门绿地",
            "area_id": area_id,
            "community_id": community_id,
            "install_date": date.today() - timedelta(days=900 + 30 * n),
        }
        rows = [
            (
                box_code,
                "box",
                f"{community_name} 1 号调压箱",
                "RTZ-31/0.4FQ",
                "0.4000",
                "0.0030",
                "300.00",
                meter[0],
                100,
            ),
            (well_code, "well", f"{community_name} 进站阀井", "Q41F-16 球阀", "0.4000", None, None, None, 150),
            (stack_code, "stack", f"{community_name} 放散桩", "DN50 放散管", None, None, None, None, 50),
        ]
        ids = {}
        for code, kind, name, model_name, pin, pout, flow, box_meter, dn in rows:
            got = conn.execute(
                """INSERT INTO facility (kind, code, name, address, area_id, community_id, latitude, longitude, model,
                                         manufacturer, dn, pressure_in_mpa, pressure_out_mpa, flow_m3h, install_date,
                                         meter_id, note)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, '成都凯能', %s, %s, %s, %s, %s, %s, '')
                   RETURNING id""",
                [
                    kind,
                    code,
                    name,
                    common["address"],
                    area_id,
                    community_id,
                    Decimal("39.9") + Decimal(n) / 100,
                    Decimal("116.3") + Decimal(n) / 100,
                    model_name,
                    dn,
                    pin,
                    pout,
                    flow,
                    common["install_date"],
                    box_meter,
                ],
            ).fetchone()
            assert got is not None
            ids[kind] = got[0]
        conn.execute(
            "INSERT INTO facility_link (box_id, other_id) VALUES (%s, %s), (%s, %s)",
            [ids["box"], ids["well"], ids["box"], ids["stack"]],
        )
        conn.execute(
            """INSERT INTO facility_account (box_id, account_id)
               SELECT %s, a.id FROM account a WHERE a.community_id = %s
                  AND NOT EXISTS (SELECT 1 FROM facility_account x WHERE x.account_id = a.id)
                ORDER BY a.account_no LIMIT 12""",
            [ids["box"], community_id],
        )
        conn.execute(
            """INSERT INTO facility_maintenance (facility_id, done_on, kind, person, findings, parts, next_due,
                                                recorded_by)
               VALUES (%(box)s, current_date - 200, 'maintenance', '维修工程师 赵磊',
                       '切断阀动作正常，出口压力 3.0 kPa，过滤器压差偏高', '过滤网 1 个', current_date - 20,
                       'engineer'),
                      (%(well)s, current_date - 90, 'inspection', '巡检员 孙强', '井内无积水，阀门启闭灵活，无泄漏',
                       '', current_date + 90, 'engineer'),
                      (%(stack)s, current_date - 60, 'repair', '维修工程师 赵磊', '放散管防雨帽锈蚀', '防雨帽 DN50',
                       current_date + 300, 'engineer')""",
            {"box": ids["box"], "well": ids["well"], "stack": ids["stack"]},
        )
        # The box meter reads what its accounts' meters read, plus 2-4 % lost on the way and a leak on two days.
        conn.execute(
            """WITH fed AS (
                   SELECT m.id FROM meter m JOIN facility_account x ON x.account_id = m.account_id
                    WHERE x.box_id = %(box)s),
               daily AS (
                   SELECT (r.ts AT TIME ZONE %(tz)s)::date AS day, r.meter_id, max(r.value) AS top
                     FROM reading r
                    WHERE r.meter_id IN (SELECT id FROM fed) AND r.channel = 'volume_m3'
                      AND r.ts > now() - interval '120 days'
                    GROUP BY 1, 2),
               use AS (
                   SELECT day, top - lag(top) OVER (PARTITION BY meter_id ORDER BY day) AS m3 FROM daily),
               per_day AS (SELECT day, sum(greatest(m3, 0)) AS m3 FROM use WHERE m3 IS NOT NULL GROUP BY day),
               grown AS (
                   SELECT day, round(m3 * (1.02 + (extract(doy FROM day)::int %% 3) / 100.0
                                          + CASE WHEN extract(day FROM day) IN (11, 12) THEN 0.09 ELSE 0 END), 3) AS m3
                     FROM per_day)
               INSERT INTO reading (meter_id, channel, ts, value, source)
               SELECT %(meter)s, 'volume_m3', (day + time '23:59') AT TIME ZONE %(tz)s,
                      1000 + sum(m3) OVER (ORDER BY day), 'modbus:demo'
                 FROM grown
               ON CONFLICT DO NOTHING""",
            {"box": ids["box"], "meter": meter[0], "tz": _timezone(conn)},
        )


def _timezone(conn: psycopg.Connection[Any]) -> str:
    """The utility's time zone, as the migrations were given it."""
    row = conn.execute("SELECT meterhub_facility_timezone()").fetchone()
    return str(row[0]) if row else "UTC"
