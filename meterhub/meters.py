"""Meters as staff see and handle them: search, facts, readings, daily use, events, and the work done on
site — install (装表), replace (换表), suspend (报停), resume (恢复用气) and remove (拆表).

Every change runs in one transaction under `Store.transaction(actor=...)`, so that the change history
names the person, and leaves a `meter_action` row with the day or moment, the register read on site and
the reason. An assignment (`meter_assignment`) says which meter measured an account's gas when: install
opens one, remove closes one, a replacement does both (`billing.reading_books.replace_meter_in`, with
`check_replacement` before and `record_replacement` after it in the same transaction).

`areas` arguments are the area ids a person is limited to (None: not limited); a meter's area is the
area of its account's community, and a meter without an account is outside every limited person's areas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import class_row

from meterhub import warehouse
from meterhub.store import Store

STATUSES = ("in_stock", "installed", "suspended", "removed")
VALVE_STATES = ("unknown", "open", "closed", "armed", "abnormal")
ACTIONS = ("install", "replace_out", "replace_in", "suspend", "resume", "remove")
REGISTER_CHANNEL = "volume_m3"
MAX_READING = Decimal("99999999999.999")  # numeric(14, 3)
# A moment entered on site may run ahead of the server's clock by this much.
CLOCK_SLACK = timedelta(minutes=10)


_ERROR_STATUS = {"no_meter": 404, "no_account": 404, "area": 403, "invalid": 400, "invalid_reading": 400}


class MeterError(Exception):
    """A refused request on meters. `code` is a short machine code, `params` fill its message text;
    `status` is the HTTP status it deserves (409 for a conflict with the meter's state)."""

    def __init__(self, code: str, message: str, **params: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.params = params

    @property
    def status(self) -> int:
        return _ERROR_STATUS.get(self.code, 409)


# -- what is read ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeterRow:
    meter_no: str
    driver_key: str
    protocol_address: str
    status: str
    valve_state: str
    model: str | None
    account_no: str | None
    customer_name: str | None
    community: str | None
    last_seen_at: datetime | None
    last_volume_m3: Decimal | None


@dataclass(frozen=True)
class MeterDetail:
    id: int
    meter_no: str
    driver_key: str
    protocol_address: str
    status: str
    valve_state: str
    prepaid: bool
    sleepy: bool
    install_date: date | None
    remove_date: date | None
    initial_reading: Decimal
    register_max: Decimal | None
    model: str | None
    manufacturer: str | None
    has_valve: bool | None
    usage_type: str | None
    account_id: int | None
    account_no: str | None
    account_status: str | None
    customer_no: str | None
    customer_name: str | None
    address: str | None
    community: str | None
    area_id: int | None
    area: str | None
    last_seen_at: datetime | None
    last_reading_at: datetime | None
    last_volume_m3: Decimal | None
    valve_reported: str | None
    valve_reported_at: datetime | None
    battery_v: Decimal | None
    rssi_dbm: int | None


@dataclass(frozen=True)
class Reading:
    ts: datetime
    channel: str
    value: Decimal
    quality: str
    source: str
    received_at: datetime


@dataclass(frozen=True)
class DailyUse:
    day: date
    consumption_m3: Decimal
    register_m3: Decimal
    readings: int


@dataclass(frozen=True)
class Event:
    id: int
    ts: datetime
    kind: str
    severity: str
    detail: dict[str, Any]
    source: str
    received_at: datetime
    cleared_at: datetime | None


@dataclass(frozen=True)
class Action:
    id: int
    action: str
    at: datetime
    reading: Decimal | None
    account_no: str | None
    other_meter_no: str | None
    reason: str
    done_by: str
    recorded_at: datetime


@dataclass(frozen=True)
class Assignment:
    id: int
    account_no: str
    valid_from: datetime
    valid_to: datetime | None
    first_value: Decimal | None
    final_value: Decimal | None
    note: str


@dataclass(frozen=True)
class CommandRow:
    id: int
    kind: str
    state: str
    reason_code: str | None
    purpose: str
    amount: Decimal | None
    requested_by: str
    approved_by: str | None
    emergency: bool
    requested_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None


def _like(text: str) -> str:
    return "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"


def search(
    conn: psycopg.Connection[Any],
    *,
    q: str | None = None,
    status: str | None = None,
    valve_state: str | None = None,
    driver_key: str | None = None,
    areas: frozenset[int] | None = None,
    offset: int = 0,
    limit: int = 50,
) -> list[MeterRow]:
    """Meters whose number, protocol address or account number contains `q`, with the other filters,
    in meter number order; only meters in `areas` when given."""
    query = """
        SELECT m.meter_no, m.driver_key, m.protocol_address, m.status, m.valve_state, mm.name AS model,
               a.account_no, cu.name AS customer_name, co.name AS community, s.last_seen_at, s.last_volume_m3
          FROM meter m
          LEFT JOIN meter_model mm ON mm.id = m.model_id
          LEFT JOIN account a ON a.id = m.account_id
          LEFT JOIN customer cu ON cu.id = a.customer_id
          LEFT JOIN community co ON co.id = a.community_id
          LEFT JOIN meter_state s ON s.meter_id = m.id
         WHERE (%(q)s::text IS NULL
                OR m.meter_no ILIKE %(like)s OR m.protocol_address ILIKE %(like)s OR a.account_no ILIKE %(like)s)
           AND (%(status)s::text IS NULL OR m.status = %(status)s)
           AND (%(valve)s::text IS NULL OR m.valve_state = %(valve)s)
           AND (%(driver)s::text IS NULL OR m.driver_key = %(driver)s)
           AND (%(areas)s::bigint[] IS NULL OR co.area_id = ANY(%(areas)s::bigint[]))
         ORDER BY m.meter_no
         LIMIT %(limit)s OFFSET %(offset)s"""
    q = (q or "").strip() or None
    params = {
        "q": q,
        "like": _like(q) if q else None,
        "status": status or None,
        "valve": valve_state or None,
        "driver": driver_key or None,
        "areas": None if areas is None else sorted(areas),
        "limit": limit,
        "offset": offset,
    }
    return conn.cursor(row_factory=class_row(MeterRow)).execute(query, params).fetchall()


def driver_keys(conn: psycopg.Connection[Any]) -> list[str]:
    """The drivers meters are registered with (for a search filter)."""
    return [r[0] for r in conn.execute("SELECT DISTINCT driver_key FROM meter ORDER BY 1")]


_DETAIL = """
    SELECT m.id, m.meter_no, m.driver_key, m.protocol_address, m.status, m.valve_state, m.prepaid, m.sleepy,
           m.install_date, m.remove_date, m.initial_reading, coalesce(m.register_max, mm.register_max) AS register_max,
           mm.name AS model, mf.name AS manufacturer, mm.has_valve, ut.name AS usage_type,
           a.id AS account_id, a.account_no, a.status AS account_status, cu.customer_no, cu.name AS customer_name,
           coalesce(nullif(a.address, ''), cu.address) AS address, co.name AS community, co.area_id, ar.name AS area,
           s.last_seen_at, s.last_reading_at, s.last_volume_m3, s.valve_reported, s.valve_reported_at,
           s.battery_v, s.rssi_dbm
      FROM meter m
      LEFT JOIN meter_model mm ON mm.id = m.model_id
      LEFT JOIN manufacturer mf ON mf.id = mm.manufacturer_id
      LEFT JOIN usage_type ut ON ut.id = m.usage_type_id
      LEFT JOIN account a ON a.id = m.account_id
      LEFT JOIN customer cu ON cu.id = a.customer_id
      LEFT JOIN community co ON co.id = a.community_id
      LEFT JOIN area ar ON ar.id = co.area_id
      LEFT JOIN meter_state s ON s.meter_id = m.id
     WHERE m.meter_no = %s"""


def get(conn: psycopg.Connection[Any], meter_no: str) -> MeterDetail | None:
    return conn.cursor(row_factory=class_row(MeterDetail)).execute(_DETAIL, [meter_no]).fetchone()


def latest_readings(conn: psycopg.Connection[Any], meter_id: int, limit: int = 20) -> list[Reading]:
    """The meter's last `limit` readings of every channel, newest first."""
    return (
        conn.cursor(row_factory=class_row(Reading))
        .execute(
            """SELECT ts, channel, value, quality, source, received_at FROM reading
                WHERE meter_id = %s ORDER BY ts DESC, channel LIMIT %s""",
            [meter_id, limit],
        )
        .fetchall()
    )


def readings(
    conn: psycopg.Connection[Any],
    meter_id: int,
    since: datetime,
    until: datetime,
    *,
    channel: str | None = None,
    limit: int = 10_000,
) -> list[Reading]:
    """Readings with `since <= ts < until` (of one channel when given), oldest first, at most `limit`."""
    return (
        conn.cursor(row_factory=class_row(Reading))
        .execute(
            """SELECT ts, channel, value, quality, source, received_at FROM reading
                WHERE meter_id = %(m)s AND ts >= %(since)s AND ts < %(until)s
                  AND (%(channel)s::text IS NULL OR channel = %(channel)s)
                ORDER BY ts, channel LIMIT %(limit)s""",
            {"m": meter_id, "since": since, "until": until, "channel": channel, "limit": limit},
        )
        .fetchall()
    )


def register_series(
    conn: psycopg.Connection[Any], meter_id: int, since: datetime, until: datetime, max_points: int = 720
) -> list[tuple[datetime, Decimal]]:
    """The volume register over `since <= ts < until` for a chart: every reading when there are at most
    `max_points`, else the last reading of each of `max_points` equal time buckets."""
    where = "meter_id = %(m)s AND channel = %(c)s AND ts >= %(since)s AND ts < %(until)s"
    params = {"m": meter_id, "c": REGISTER_CHANNEL, "since": since, "until": until}
    count = conn.execute(f"SELECT count(*) FROM reading WHERE {where}", params).fetchone()
    if count is None or count[0] <= max_points:
        rows = conn.execute(f"SELECT ts, value FROM reading WHERE {where} ORDER BY ts", params).fetchall()
    else:
        bucket = (until - since) / max_points
        rows = conn.execute(
            f"""SELECT max(ts), (array_agg(value ORDER BY ts DESC))[1] FROM reading WHERE {where}
                 GROUP BY date_bin(%(bucket)s, ts, %(since)s) ORDER BY 1""",
            {**params, "bucket": bucket},
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def local_midnight(day: date, timezone: str) -> datetime:
    return datetime.combine(day, time(), tzinfo=ZoneInfo(timezone))


def daily_use(
    conn: psycopg.Connection[Any], meter_id: int, first_day: date, last_day: date, timezone: str
) -> list[DailyUse]:
    """Daily use on the local days `first_day..last_day` that have register readings, counted as the
    `daily_consumption` view counts it (last register of the day minus the last register before the day;
    the meter's first day from its first reading), but from `reading` itself so that today is included
    without waiting for the daily view's refresh."""
    since, until = local_midnight(first_day, timezone), local_midnight(last_day + timedelta(days=1), timezone)
    rows = conn.execute(
        """WITH days AS (
               SELECT (ts AT TIME ZONE %(tz)s)::date AS day,
                      (array_agg(value ORDER BY ts))[1] AS first_value,
                      (array_agg(value ORDER BY ts DESC))[1] AS last_value,
                      count(*) AS readings
                 FROM reading
                WHERE meter_id = %(m)s AND channel = %(c)s AND ts >= %(since)s AND ts < %(until)s
                GROUP BY 1),
           before AS (
               SELECT value FROM reading
                WHERE meter_id = %(m)s AND channel = %(c)s AND ts < %(since)s
                ORDER BY ts DESC LIMIT 1)
           SELECT day,
                  last_value - coalesce(lag(last_value) OVER (ORDER BY day), (SELECT value FROM before), first_value),
                  last_value, readings
             FROM days ORDER BY day""",
        {"tz": timezone, "m": meter_id, "c": REGISTER_CHANNEL, "since": since, "until": until},
    ).fetchall()
    return [DailyUse(r[0], r[1], r[2], int(r[3])) for r in rows]


def events(conn: psycopg.Connection[Any], meter_id: int, *, open_only: bool = False, limit: int = 50) -> list[Event]:
    """The meter's events, newest first; only those not cleared when `open_only`."""
    return (
        conn.cursor(row_factory=class_row(Event))
        .execute(
            """SELECT id, ts, kind, severity, detail, source, received_at, cleared_at FROM meter_event
                WHERE meter_id = %s AND (NOT %s OR cleared_at IS NULL) ORDER BY ts DESC, id DESC LIMIT %s""",
            [meter_id, open_only, limit],
        )
        .fetchall()
    )


def commands(conn: psycopg.Connection[Any], meter_id: int, limit: int = 20) -> list[CommandRow]:
    """The meter's valve and credit commands, newest first."""
    return (
        conn.cursor(row_factory=class_row(CommandRow))
        .execute(
            """SELECT id, kind, state, reason_code, purpose, amount, requested_by, approved_by, emergency,
                      requested_at, sent_at, finished_at
                 FROM meter_command WHERE meter_id = %s ORDER BY id DESC LIMIT %s""",
            [meter_id, limit],
        )
        .fetchall()
    )


def actions(conn: psycopg.Connection[Any], meter_id: int, limit: int = 50) -> list[Action]:
    """Work done on the meter (install, replace, suspend, resume, remove), newest first."""
    return (
        conn.cursor(row_factory=class_row(Action))
        .execute(
            """SELECT x.id, x.action, x.at, x.reading, a.account_no, o.meter_no AS other_meter_no, x.reason,
                      x.done_by, x.recorded_at
                 FROM meter_action x
                 LEFT JOIN account a ON a.id = x.account_id
                 LEFT JOIN meter o ON o.id = x.other_meter_id
                WHERE x.meter_id = %s ORDER BY x.at DESC, x.id DESC LIMIT %s""",
            [meter_id, limit],
        )
        .fetchall()
    )


def assignments(conn: psycopg.Connection[Any], meter_id: int) -> list[Assignment]:
    """The recorded assignments of the meter to accounts, newest first."""
    return (
        conn.cursor(row_factory=class_row(Assignment))
        .execute(
            """SELECT x.id, a.account_no, x.valid_from, x.valid_to, x.first_value, x.final_value, x.note
                 FROM meter_assignment x JOIN account a ON a.id = x.account_id
                WHERE x.meter_id = %s ORDER BY x.valid_from DESC, x.id DESC""",
            [meter_id],
        )
        .fetchall()
    )


# -- checks shared by the changes ----------------------------------------------------------------------
def parse_reading(value: Decimal | str | int, what: str = "reading") -> Decimal:
    """A register value as entered: a non-negative number with at most 3 decimals."""
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise MeterError("invalid_reading", f"{what} {value!r} is not a number", value=str(value)) from None
    exponent = number.as_tuple().exponent
    if not number.is_finite() or not isinstance(exponent, int) or exponent < -3 or number < 0 or number > MAX_READING:
        raise MeterError(
            "invalid_reading", f"{what} must be a non-negative number with at most 3 decimals", value=str(value)
        )
    return number


def _not_future(at: datetime, now: datetime | None) -> None:
    if at > (now or datetime.now(UTC)) + CLOCK_SLACK:
        raise MeterError("future", "the date or time is in the future")


def _locked(conn: psycopg.Connection[Any], meter_no: str) -> dict[str, Any]:
    row = conn.execute(
        """SELECT m.id, m.status, m.account_id, m.install_date, m.initial_reading, m.usage_type_id, co.area_id
             FROM meter m LEFT JOIN account a ON a.id = m.account_id LEFT JOIN community co ON co.id = a.community_id
            WHERE m.meter_no = %s FOR UPDATE OF m""",
        [meter_no],
    ).fetchone()
    if row is None:
        raise MeterError("no_meter", f"no meter {meter_no}", meter_no=meter_no)
    keys = ("id", "status", "account_id", "install_date", "initial_reading", "usage_type_id", "area_id")
    return dict(zip(keys, row, strict=True))


def _check_area(areas: frozenset[int] | None, area_id: int | None) -> None:
    if areas is not None and (area_id is None or area_id not in areas):
        raise MeterError("area", "outside your areas")


def _in_use(meter: dict[str, Any], meter_no: str) -> None:
    if meter["status"] not in ("installed", "suspended") or meter["account_id"] is None:
        raise MeterError(
            "not_installed",
            f"meter {meter_no} is {meter['status']}, not installed",
            meter_no=meter_no,
            status=meter["status"],
        )


def _not_before_install(meter: dict[str, Any], at: datetime, timezone: str, *, strict: bool = False) -> None:
    """`at` is not before the install day (strictly after its start for a removal or replacement)."""
    installed = meter["install_date"]
    start = local_midnight(installed, timezone) if installed is not None else None
    if start is not None and (at <= start if strict else at < start):
        raise MeterError("before_install", f"that is before the install date {installed}", day=str(installed))


def _record(
    conn: psycopg.Connection[Any],
    meter_id: int,
    account_id: int | None,
    action: str,
    at: datetime,
    *,
    reading: Decimal | None = None,
    other_meter_id: int | None = None,
    reason: str = "",
) -> None:
    conn.execute(
        """INSERT INTO meter_action (meter_id, account_id, action, at, reading, other_meter_id, reason)
           VALUES (%s, %s, %s, %s, %s, %s, %s)""",
        [meter_id, account_id, action, at, reading, other_meter_id, reason.strip()],
    )


def _close_assignment(
    conn: psycopg.Connection[Any], meter: dict[str, Any], at: datetime, final_value: Decimal, note: str, timezone: str
) -> None:
    """End the meter's open assignment to its account at `at` with the final register; a meter that was
    never assigned explicitly gets its implicit assignment (since installation) written out and closed."""
    open_row = conn.execute(
        "SELECT id, valid_from FROM meter_assignment WHERE meter_id = %s AND account_id = %s AND valid_to IS NULL",
        [meter["id"], meter["account_id"]],
    ).fetchone()
    if open_row is not None:
        if open_row[1] >= at:
            raise MeterError(
                "before_install",
                "that is before the meter's assignment began",
                day=str(open_row[1].astimezone(ZoneInfo(timezone)).date()),
            )
        conn.execute(
            "UPDATE meter_assignment SET valid_to = %s, final_value = %s WHERE id = %s",
            [at, final_value, open_row[0]],
        )
        return
    installed = meter["install_date"]
    since = local_midnight(installed, timezone) if installed else datetime(1970, 1, 1, tzinfo=UTC)
    conn.execute(
        """INSERT INTO meter_assignment (account_id, meter_id, valid_from, valid_to, first_value, final_value, note)
           VALUES (%s, %s, %s, %s, %s, %s, %s)""",
        [
            meter["account_id"],
            meter["id"],
            since,
            at,
            meter["initial_reading"] if installed else None,
            final_value,
            note,
        ],
    )


# -- changes ---------------------------------------------------------------------------------------------
def install(
    store: Store,
    meter_no: str,
    account_no: str,
    install_date: date,
    initial_reading: Decimal | str,
    *,
    actor: str,
    areas: frozenset[int] | None = None,
    note: str = "",
    now: datetime | None = None,
) -> None:
    """装表: a meter in stock goes onto an account from the start of `install_date` with `initial_reading`
    on its register; an assignment of the meter to the account opens. When the warehouse knows the meter's
    serial number, the meter is drawn from stock in the same transaction (a stock-out document of kind
    `install`); a serial number that left stock already is refused. Meters unknown to the warehouse (an
    existing fleet) are installed without it."""
    first_value = parse_reading(initial_reading, "initial reading")
    tz = store.settings.timezone
    at = local_midnight(install_date, tz)
    _not_future(at, now)
    with store.transaction(actor=actor) as conn:
        meter = _locked(conn, meter_no)
        account = conn.execute(
            """SELECT a.id, a.status, co.area_id FROM account a
                 LEFT JOIN community co ON co.id = a.community_id WHERE a.account_no = %s FOR SHARE OF a""",
            [account_no],
        ).fetchone()
        if account is None:
            raise MeterError("no_account", f"no account {account_no}", account_no=account_no)
        _check_area(areas, account[2])
        if meter["status"] != "in_stock" or meter["account_id"] is not None:
            raise MeterError(
                "not_in_stock",
                f"meter {meter_no} is {meter['status']}, not in stock",
                meter_no=meter_no,
                status=meter["status"],
            )
        if account[1] == "closed":
            raise MeterError("account_closed", f"account {account_no} is closed", account_no=account_no)
        overlap = conn.execute(
            """SELECT 1 FROM meter_assignment WHERE meter_id = %s AND (valid_to IS NULL OR valid_to > %s)""",
            [meter["id"], at],
        ).fetchone()
        if overlap:
            raise MeterError("overlap", f"meter {meter_no} is assigned elsewhere at that time", meter_no=meter_no)
        conn.execute(
            """UPDATE meter SET account_id = %s, status = 'installed', install_date = %s, remove_date = NULL,
                      initial_reading = %s
                WHERE id = %s""",
            [account[0], install_date, first_value, meter["id"]],
        )
        conn.execute(
            """INSERT INTO meter_assignment (account_id, meter_id, valid_from, first_value, note)
               VALUES (%s, %s, %s, %s, %s)""",
            [account[0], meter["id"], at, first_value, note.strip()],
        )
        _record(conn, meter["id"], account[0], "install", at, reading=first_value, reason=note)
        # A meter whose serial number is in the warehouse leaves stock with this installation.
        try:
            warehouse.draw_for_install(
                conn, meter_no, account_no=account_no, day=install_date,
                today=(now or datetime.now(UTC)).astimezone(ZoneInfo(tz)).date(), note=note.strip(),
            )  # fmt: skip
        except warehouse.WarehouseError as exc:
            raise MeterError(
                "not_in_warehouse",
                f"meter {meter_no} is not in stock in the warehouse: {exc.message}",
                meter_no=meter_no,
            ) from exc


@dataclass(frozen=True)
class Replacement:
    """A replacement checked and locked in a transaction, ready for `replace_meter_in`."""

    account_id: int
    old_meter_id: int
    new_meter_id: int
    old_meter_no: str
    new_meter_no: str
    at: datetime
    old_final_value: Decimal
    new_first_value: Decimal


def check_replacement(
    conn: psycopg.Connection[Any],
    timezone: str,
    old_meter_no: str,
    new_meter_no: str,
    at: datetime,
    old_final_value: Decimal | str,
    new_first_value: Decimal | str,
    *,
    areas: frozenset[int] | None = None,
    now: datetime | None = None,
) -> Replacement:
    """换表, before the change: the old meter is in use on an account in `areas`, the new one is in stock,
    the moment lies after the old meter's installation and not in the future. Both meters stay locked to
    the end of the transaction."""
    old_final = parse_reading(old_final_value, "old meter's final reading")
    new_first = parse_reading(new_first_value, "new meter's first reading")
    if at.tzinfo is None:
        raise MeterError("invalid", "the time needs a time zone")
    _not_future(at, now)
    if old_meter_no == new_meter_no:
        raise MeterError("same_meter", "the new meter must be another meter")
    first, second = sorted([old_meter_no, new_meter_no])  # one lock order for every replacement
    locked = {first: _locked(conn, first), second: _locked(conn, second)}
    old, new = locked[old_meter_no], locked[new_meter_no]
    _check_area(areas, old["area_id"])
    _in_use(old, old_meter_no)
    if new["status"] != "in_stock" or new["account_id"] is not None:
        raise MeterError(
            "not_in_stock",
            f"meter {new_meter_no} is {new['status']}, not in stock",
            meter_no=new_meter_no,
            status=new["status"],
        )
    _not_before_install(old, at, timezone, strict=True)
    opened = conn.execute(
        "SELECT valid_from FROM meter_assignment WHERE meter_id = %s AND account_id = %s AND valid_to IS NULL",
        [old["id"], old["account_id"]],
    ).fetchone()
    if opened is not None and opened[0] >= at:
        raise MeterError(
            "before_install",
            "that is before the meter's assignment began",
            day=str(opened[0].astimezone(ZoneInfo(timezone)).date()),
        )
    busy = conn.execute(
        "SELECT 1 FROM meter_assignment WHERE meter_id = %s AND (valid_to IS NULL OR valid_to > %s)",
        [new["id"], at],
    ).fetchone()
    if busy:
        raise MeterError("overlap", f"meter {new_meter_no} is assigned elsewhere at that time", meter_no=new_meter_no)
    return Replacement(
        account_id=int(old["account_id"]),
        old_meter_id=int(old["id"]),
        new_meter_id=int(new["id"]),
        old_meter_no=old_meter_no,
        new_meter_no=new_meter_no,
        at=at,
        old_final_value=old_final,
        new_first_value=new_first,
    )


def record_replacement(conn: psycopg.Connection[Any], replacement: Replacement, reason: str = "") -> None:
    """换表, after `replace_meter_in`: a new meter without a usage type of its own takes the old meter's
    (a meter without one is billed with its account's), and both meters get their action rows."""
    r = replacement
    conn.execute(
        """UPDATE meter n SET usage_type_id = o.usage_type_id FROM meter o
            WHERE n.id = %s AND o.id = %s AND n.usage_type_id IS NULL AND o.usage_type_id IS NOT NULL""",
        [r.new_meter_id, r.old_meter_id],
    )
    _record(
        conn,
        r.old_meter_id,
        r.account_id,
        "replace_out",
        r.at,
        reading=r.old_final_value,
        other_meter_id=r.new_meter_id,
        reason=reason,
    )
    _record(
        conn,
        r.new_meter_id,
        r.account_id,
        "replace_in",
        r.at,
        reading=r.new_first_value,
        other_meter_id=r.old_meter_id,
        reason=reason,
    )


def _last_action_at(conn: psycopg.Connection[Any], meter_id: int, action: str) -> datetime | None:
    row = conn.execute(
        "SELECT max(at) FROM meter_action WHERE meter_id = %s AND action = %s", [meter_id, action]
    ).fetchone()
    return row[0] if row else None


def suspend(
    store: Store,
    meter_no: str,
    on: date,
    reason: str,
    *,
    actor: str,
    areas: frozenset[int] | None = None,
    now: datetime | None = None,
) -> None:
    """报停: an installed meter is suspended from `on` (the customer stops using gas for a while); it stays
    on its account."""
    _change_status(store, meter_no, on, reason, "installed", "suspended", "suspend", actor, areas, now)


def resume(
    store: Store,
    meter_no: str,
    on: date,
    reason: str,
    *,
    actor: str,
    areas: frozenset[int] | None = None,
    now: datetime | None = None,
) -> None:
    """恢复用气: a suspended meter is in use again from `on`."""
    _change_status(store, meter_no, on, reason, "suspended", "installed", "resume", actor, areas, now)


def _change_status(
    store: Store,
    meter_no: str,
    on: date,
    reason: str,
    from_status: str,
    to_status: str,
    action: str,
    actor: str,
    areas: frozenset[int] | None,
    now: datetime | None,
) -> None:
    if not reason.strip():
        raise MeterError("reason_required", "a reason is required")
    tz = store.settings.timezone
    at = local_midnight(on, tz)
    _not_future(at, now)
    with store.transaction(actor=actor) as conn:
        meter = _locked(conn, meter_no)
        _check_area(areas, meter["area_id"])
        if meter["status"] != from_status or meter["account_id"] is None:
            code = "not_installed" if from_status == "installed" else "not_suspended"
            raise MeterError(
                code,
                f"meter {meter_no} is {meter['status']}, not {from_status}",
                meter_no=meter_no,
                status=meter["status"],
            )
        _not_before_install(meter, at, tz)
        if action == "resume":
            suspended = _last_action_at(conn, meter["id"], "suspend")
            if suspended is not None and at < suspended:
                raise MeterError(
                    "before_suspend",
                    "that is before the suspension began",
                    day=str(suspended.astimezone(ZoneInfo(tz)).date()),
                )
        conn.execute("UPDATE meter SET status = %s WHERE id = %s", [to_status, meter["id"]])
        _record(conn, meter["id"], meter["account_id"], action, at, reason=reason)


def remove(
    store: Store,
    meter_no: str,
    at: datetime,
    final_reading: Decimal | str,
    reason: str,
    *,
    actor: str,
    areas: frozenset[int] | None = None,
    now: datetime | None = None,
) -> None:
    """拆表: the meter comes off its account at `at` with `final_reading` on its register; its assignment
    closes with that value. The meter keeps its account for the record (status removed)."""
    final = parse_reading(final_reading, "final reading")
    if at.tzinfo is None:
        raise MeterError("invalid", "the time needs a time zone")
    if not reason.strip():
        raise MeterError("reason_required", "a reason is required")
    _not_future(at, now)
    tz = store.settings.timezone
    with store.transaction(actor=actor) as conn:
        meter = _locked(conn, meter_no)
        _check_area(areas, meter["area_id"])
        _in_use(meter, meter_no)
        _not_before_install(meter, at, tz, strict=True)
        _close_assignment(conn, meter, at, final, reason.strip(), tz)
        conn.execute(
            "UPDATE meter SET status = 'removed', remove_date = (%s AT TIME ZONE %s)::date WHERE id = %s",
            [at, tz, meter["id"]],
        )
        _record(conn, meter["id"], meter["account_id"], "remove", at, reading=final, reason=reason)
