"""Repairs (维修管理): requests registered from a customer's call (account, phone, description) or from a
meter alarm (a `meter_event` of an alarm kind), dispatched to an engineer, started, and completed with the
materials drawn from the warehouse — or cancelled.

Life of a repair: registered → dispatched → in_progress → completed, or cancelled before completion; a
dispatched repair may be dispatched again to another engineer. Completion writes a stock-out document of
kind `repair` (`meterhub.warehouse.post_in`) in the same transaction: a line short of stock refuses the
whole completion and the repair stays as it was. The engineer's commission is fixed at dispatch: the
amount given, or the repair kind's. Each change is one transaction with a row in the append-only
`repair_log`. Scanned documents and photos are kept in the database (images and PDF, recognised by their
content, at most MAX_ATTACHMENT bytes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from meterhub import warehouse
from meterhub.store import Store
from meterhub.warehouse import DocInput, LineInput, Page, WarehouseError, parse_price

STATUSES = ("registered", "dispatched", "in_progress", "completed", "cancelled")
OPEN_STATUSES = ("registered", "dispatched", "in_progress")
SOURCES = ("call", "alarm")
ALARM_KINDS = ("leak", "tamper", "valve_abnormal", "magnetic", "overflow", "device_alarm", "battery_low", "offline")
# The repair kind an alarm suggests.
ALARM_REPAIR_KIND = {"leak": "leak", "valve_abnormal": "valve"}
MAX_ATTACHMENT = 5 * 1024 * 1024
MAX_DESCRIPTION = 2000
CONTENT_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp", "application/pdf")

_STATUS = {"not_found": 404, "state": 409, "duplicate": 409, "too_large": 413, "bad_type": 415}


class RepairError(Exception):
    """A refused request; `field` names the input at fault, `params` the values the message names."""

    def __init__(self, code: str, message: str, *, field: str = "", status: int | None = None, **params: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.params = params
        self._status = status

    @property
    def status(self) -> int:
        return self._status or _STATUS.get(self.code, 400)

    @classmethod
    def of(cls, exc: WarehouseError) -> RepairError:
        """A warehouse refusal of a completion's materials."""
        return cls(f"stock_{exc.code}", exc.message, field=exc.field, status=exc.status, **exc.params)


def _price(value: Decimal | str | None, what: str) -> Decimal | None:
    try:
        return parse_price(value, what)
    except WarehouseError as exc:
        raise RepairError("bad_price", exc.message, field=what) from None


def _today(tz: str) -> date:
    return datetime.now(UTC).astimezone(ZoneInfo(tz)).date()


def _text(value: str, what: str, limit: int, required: bool = False) -> str:
    value = value.strip()
    if required and not value:
        raise RepairError("required", "required", field=what)
    if len(value) > limit:
        raise RepairError("too_long", f"at most {limit} characters", field=what, limit=limit)
    return value


def _like(text: str) -> str:
    return "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"


def _log(
    conn: psycopg.Connection[Any],
    repair_id: int,
    action: str,
    before: str | None,
    after: str,
    note: str = "",
    **detail: Any,
) -> None:
    conn.execute(
        """INSERT INTO repair_log (repair_id, action, from_status, to_status, note, detail)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        [repair_id, action, before, after, note, Jsonb(detail)],
    )


def _new_no(conn: psycopg.Connection[Any], tz: str) -> str:
    row = conn.execute("SELECT nextval('repair_no_seq')").fetchone()
    assert row is not None
    return f"WX{_today(tz):%Y%m%d}-{int(row[0]):05d}"


def _kind(conn: psycopg.Connection[Any], code: str) -> str:
    row = conn.execute("SELECT code FROM repair_kind WHERE code = %s AND active", [code.strip()]).fetchone()
    if row is None:
        raise RepairError("not_found", "no such repair kind", field="kind", value=code)
    return str(row[0])


# -- registering -----------------------------------------------------------------------------------------
@dataclass
class CallInput:
    description: str
    kind: str = "other"
    account_no: str = ""
    meter_no: str = ""
    caller: str = ""
    phone: str = ""
    address: str = ""


def register_call(store: Store, actor: str, call: CallInput) -> str:
    """A repair request from a customer's call; the account fills in the name, phone and address not given."""
    description = _text(call.description, "description", MAX_DESCRIPTION, required=True)
    caller = _text(call.caller, "caller", 100)
    phone = _text(call.phone, "phone", 30)
    address = _text(call.address, "address", 200)
    with store.transaction(actor=actor) as conn:
        kind = _kind(conn, call.kind or "other")
        account_id = meter_id = None
        if call.account_no.strip():
            row = conn.execute(
                """SELECT a.id, cu.name, cu.phone, a.address FROM account a JOIN customer cu ON cu.id = a.customer_id
                    WHERE a.account_no = %s""",
                [call.account_no.strip()],
            ).fetchone()
            if row is None:
                raise RepairError("not_found", "no such account", field="account_no", value=call.account_no)
            account_id = row[0]
            caller = caller or row[1]
            phone = phone or (row[2] or "")
            address = address or row[3]
        if call.meter_no.strip():
            row = conn.execute(
                "SELECT id, account_id FROM meter WHERE meter_no = %s", [call.meter_no.strip()]
            ).fetchone()
            if row is None:
                raise RepairError("not_found", "no such meter", field="meter_no", value=call.meter_no)
            meter_id = row[0]
            account_id = account_id or row[1]
        if account_id is None and not phone:
            raise RepairError("contact", "an account or a phone number is needed", field="phone")
        repair_no = _new_no(conn, store.settings.timezone)
        created = conn.execute(
            """INSERT INTO repair (repair_no, source, kind, account_id, meter_id, caller, phone, address, description)
               VALUES (%s, 'call', %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            [repair_no, kind, account_id, meter_id, caller, phone, address, description],
        ).fetchone()
        assert created is not None
        _log(conn, created[0], "register", None, "registered", source="call")
    return repair_no


def register_alarm(store: Store, actor: str, event_id: int, *, description: str = "", kind: str = "") -> str:
    """A repair request from a meter alarm: the meter, its account, customer and address come from the
    event; one repair per alarm."""
    with store.transaction(actor=actor) as conn:
        row = conn.execute(
            """SELECT e.id, e.kind, e.ts, m.id, m.meter_no, a.id, cu.name, cu.phone, a.address
                 FROM meter_event e JOIN meter m ON m.id = e.meter_id
                 LEFT JOIN account a ON a.id = m.account_id LEFT JOIN customer cu ON cu.id = a.customer_id
                WHERE e.id = %s""",
            [event_id],
        ).fetchone()
        if row is None or row[1] not in ALARM_KINDS:
            raise RepairError("not_found", "no such alarm", field="event", value=str(event_id))
        taken = conn.execute("SELECT repair_no FROM repair WHERE meter_event_id = %s", [event_id]).fetchone()
        if taken is not None:
            raise RepairError(
                "duplicate", "a repair was registered for this alarm already", field="event", repair_no=taken[0]
            )
        repair_kind = _kind(conn, kind or ALARM_REPAIR_KIND.get(row[1], "meter"))
        text = _text(description, "description", MAX_DESCRIPTION) or f"{row[1]} @ {row[4]}"
        repair_no = _new_no(conn, store.settings.timezone)
        try:
            with conn.transaction():
                created = conn.execute(
                    """INSERT INTO repair (repair_no, source, kind, account_id, meter_id, meter_event_id, caller, phone,
                                           address, description)
                       VALUES (%s, 'alarm', %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                    [repair_no, repair_kind, row[5], row[3], row[0], row[6] or "", row[7] or "", row[8] or "", text],
                ).fetchone()
        except psycopg.errors.UniqueViolation:
            raise RepairError("duplicate", "a repair was registered for this alarm already", field="event") from None
        assert created is not None
        _log(conn, created[0], "register", None, "registered", source="alarm", event_kind=row[1])
    return repair_no


def open_alarms(conn: psycopg.Connection[Any], q: str = "", page: int = 1, size: int | None = 50) -> Page:
    """Uncleared alarms of alarm kinds with no repair yet, newest first."""
    q = q.strip()
    return warehouse._paged(
        conn,
        """SELECT e.id, e.ts, e.kind, e.severity, m.meter_no, a.account_no, cu.name AS customer, a.address
             FROM meter_event e JOIN meter m ON m.id = e.meter_id
             LEFT JOIN account a ON a.id = m.account_id LEFT JOIN customer cu ON cu.id = a.customer_id
            WHERE e.kind = ANY(%(kinds)s) AND e.cleared_at IS NULL
              AND NOT EXISTS (SELECT 1 FROM repair r WHERE r.meter_event_id = e.id)
              AND (%(q)s = '' OR m.meter_no ILIKE %(like)s OR a.account_no ILIKE %(like)s OR cu.name ILIKE %(like)s
                   OR a.address ILIKE %(like)s)
            ORDER BY e.ts DESC, e.id DESC""",
        {"kinds": list(ALARM_KINDS), "q": q, "like": _like(q)}, page, size,
    )  # fmt: skip


# -- the life of a repair ----------------------------------------------------------------------------------
def _locked(conn: psycopg.Connection[Any], repair_no: str) -> dict[str, Any]:
    row = (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT r.id, r.status, r.kind, r.engineer_id, r.account_id, r.meter_id, r.commission
             FROM repair r WHERE r.repair_no = %s FOR UPDATE""",
            [repair_no],
        )
        .fetchone()
    )
    if row is None:
        raise RepairError("not_found", "no such repair", value=repair_no)
    return row


def _state(repair: dict[str, Any], allowed: tuple[str, ...], action: str) -> None:
    if repair["status"] not in allowed:
        raise RepairError("state", f"a {repair['status']} repair cannot be {action}", status_now=repair["status"])


def engineers(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(username, display name) of active staff whose role may carry out repairs (repairs.edit)."""
    rows = conn.execute(
        """SELECT u.username, u.display_name FROM staff_user u
            WHERE u.active AND EXISTS (SELECT 1 FROM role_permission rp WHERE rp.role = u.role
                                        AND rp.permission = 'repairs.edit')
            ORDER BY (u.role = 'engineer') DESC, u.username"""
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def dispatch(
    store: Store,
    actor: str,
    repair_no: str,
    engineer: str,
    *,
    commission: Decimal | str | None = None,
    kind: str = "",
    note: str = "",
) -> None:
    """派工: the repair goes to `engineer` with the commission given or that of its kind."""
    amount = _price(commission, "commission") if commission is not None else None
    with store.transaction(actor=actor) as conn:
        repair = _locked(conn, repair_no)
        _state(repair, ("registered", "dispatched"), "dispatched")
        user = conn.execute(
            """SELECT u.id FROM staff_user u WHERE u.username = %s AND u.active
                  AND EXISTS (SELECT 1 FROM role_permission rp
                               WHERE rp.role = u.role AND rp.permission = 'repairs.edit')""",
            [engineer.strip()],
        ).fetchone()
        if user is None:
            raise RepairError("not_found", "no such engineer", field="engineer", value=engineer)
        new_kind = _kind(conn, kind) if kind.strip() else repair["kind"]
        if amount is None:
            row = conn.execute("SELECT commission FROM repair_kind WHERE code = %s", [new_kind]).fetchone()
            assert row is not None
            amount = Decimal(row[0])
        conn.execute(
            """UPDATE repair SET status = 'dispatched', engineer_id = %s, commission = %s, kind = %s,
                      dispatched_at = now(), dispatched_by = meterhub_actor() WHERE id = %s""",
            [user[0], amount, new_kind, repair["id"]],
        )
        _log(
            conn,
            repair["id"],
            "dispatch",
            repair["status"],
            "dispatched",
            _text(note, "note", 500),
            engineer=engineer.strip(),
            commission=str(amount),
            kind=new_kind,
        )


def start(store: Store, actor: str, repair_no: str, note: str = "") -> None:
    """The engineer is on site: in progress."""
    with store.transaction(actor=actor) as conn:
        repair = _locked(conn, repair_no)
        _state(repair, ("dispatched",), "started")
        conn.execute("UPDATE repair SET status = 'in_progress', started_at = now() WHERE id = %s", [repair["id"]])
        _log(conn, repair["id"], "start", repair["status"], "in_progress", _text(note, "note", 500))


@dataclass
class Completion:
    result: str
    warehouse: str = ""
    materials: list[LineInput] | None = None


def complete(store: Store, actor: str, repair_no: str, done: Completion) -> str | None:
    """Completed, with the materials used drawn from `done.warehouse` by a stock-out document in the same
    transaction; returns the document's number (None without materials). Short stock refuses it whole."""
    result = _text(done.result, "result", MAX_DESCRIPTION, required=True)
    materials = [m for m in (done.materials or []) if m.item.strip()]
    tz = store.settings.timezone
    with store.transaction(actor=actor) as conn:
        repair = _locked(conn, repair_no)
        _state(repair, ("dispatched", "in_progress"), "completed")
        doc_id = None
        doc_no = None
        if materials:
            if not done.warehouse.strip():
                raise RepairError("required", "the warehouse the materials come from", field="warehouse")
            account = conn.execute("SELECT account_no FROM account WHERE id = %s", [repair["account_id"]]).fetchone()
            meter = conn.execute("SELECT meter_no FROM meter WHERE id = %s", [repair["meter_id"]]).fetchone()
            try:
                posted = warehouse.post_in(
                    conn,
                    DocInput(
                        kind="repair",
                        warehouse=done.warehouse,
                        lines=materials,
                        repair_id=repair["id"],
                        account_no=account[0] if account else "",
                        meter_no=meter[0] if meter else "",
                        reference=repair_no,
                    ),
                    today=_today(tz),
                )
            except WarehouseError as exc:
                raise RepairError.of(exc) from exc
            doc_id, doc_no = posted.id, posted.doc_no
        conn.execute(
            """UPDATE repair SET status = 'completed', completed_at = now(), completed_by = meterhub_actor(),
                      started_at = coalesce(started_at, now()), result = %s, stock_doc_id = %s WHERE id = %s""",
            [result, doc_id, repair["id"]],
        )
        _log(conn, repair["id"], "complete", repair["status"], "completed", result, stock_doc=doc_no)
    return doc_no


def cancel(store: Store, actor: str, repair_no: str, reason: str) -> None:
    text = _text(reason, "reason", 500, required=True)
    with store.transaction(actor=actor) as conn:
        repair = _locked(conn, repair_no)
        _state(repair, OPEN_STATUSES, "cancelled")
        conn.execute(
            "UPDATE repair SET status = 'cancelled', cancelled_at = now(), cancel_reason = %s WHERE id = %s",
            [text, repair["id"]],
        )
        _log(conn, repair["id"], "cancel", repair["status"], "cancelled", text)


# -- attachments -------------------------------------------------------------------------------------------
def sniff(data: bytes) -> str | None:
    """The content type of an image or PDF, told from its first bytes (None: neither)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def attach(store: Store, actor: str, repair_no: str, filename: str, data: bytes, declared: str = "") -> int:
    """Keep a scanned document or photo with the repair. Its type is told from its content and must agree
    with the declared one (when given)."""
    name = re.sub(r"[\x00-\x1f/\\]+", "_", filename.strip())[-200:] or "file"
    if not data:
        raise RepairError("empty", "the file is empty", field="file")
    if len(data) > MAX_ATTACHMENT:
        raise RepairError(
            "too_large",
            f"at most {MAX_ATTACHMENT // (1024 * 1024)} MiB",
            field="file",
            limit_mb=MAX_ATTACHMENT // (1024 * 1024),
        )
    kind = sniff(data)
    declared = declared.split(";")[0].strip().lower()
    if kind is None or (declared and declared not in ("application/octet-stream", kind)):
        raise RepairError("bad_type", "images (JPEG, PNG, GIF, WebP) or PDF only", field="file")
    with store.transaction(actor=actor) as conn:
        repair = _locked(conn, repair_no)
        row = conn.execute(
            """INSERT INTO repair_attachment (repair_id, filename, content_type, size, data)
               VALUES (%s, %s, %s, %s, %s) RETURNING id""",
            [repair["id"], name, kind, len(data), data],
        ).fetchone()
        assert row is not None
        _log(
            conn,
            repair["id"],
            "attach",
            repair["status"],
            repair["status"],
            name,
            attachment=row[0],
            content_type=kind,
            size=len(data),
        )
    return int(row[0])


def attachment(conn: psycopg.Connection[Any], repair_no: str, attachment_id: int) -> tuple[str, str, bytes] | None:
    """(filename, content type, bytes) of an attachment of the repair."""
    row = conn.execute(
        """SELECT f.filename, f.content_type, f.data FROM repair_attachment f JOIN repair r ON r.id = f.repair_id
            WHERE r.repair_no = %s AND f.id = %s""",
        [repair_no, attachment_id],
    ).fetchone()
    return None if row is None else (row[0], row[1], bytes(row[2]))


# -- what is read ----------------------------------------------------------------------------------------
_LIST = """
    SELECT r.repair_no, r.source, r.kind, k.name_zh AS kind_zh, k.name_en AS kind_en, r.status, a.account_no,
           m.meter_no, r.caller, r.phone, r.address, r.description, u.username AS engineer,
           u.display_name AS engineer_name, r.commission, r.registered_at, r.registered_by, r.dispatched_at,
           r.started_at, r.completed_at, r.cancelled_at, r.result, r.cancel_reason, d.doc_no AS stock_doc,
           r.meter_event_id
      FROM repair r JOIN repair_kind k ON k.code = r.kind
      LEFT JOIN account a ON a.id = r.account_id LEFT JOIN meter m ON m.id = r.meter_id
      LEFT JOIN staff_user u ON u.id = r.engineer_id LEFT JOIN stock_doc d ON d.id = r.stock_doc_id"""


def search(
    conn: psycopg.Connection[Any],
    q: str = "",
    *,
    status: str = "",
    engineer: str = "",
    source: str = "",
    page: int = 1,
    size: int | None = 50,
) -> Page:
    """Repairs, newest first, whose number, account, meter, caller, phone, address or description contains `q`."""
    q = q.strip()
    return warehouse._paged(
        conn,
        _LIST + """
         WHERE (%(q)s = '' OR r.repair_no ILIKE %(like)s OR a.account_no ILIKE %(like)s OR m.meter_no ILIKE %(like)s
                OR r.caller ILIKE %(like)s OR r.phone ILIKE %(like)s OR r.address ILIKE %(like)s
                OR r.description ILIKE %(like)s)
           AND (%(status)s = '' OR r.status = %(status)s)
           AND (%(engineer)s = '' OR u.username = %(engineer)s)
           AND (%(source)s = '' OR r.source = %(source)s)
         ORDER BY r.registered_at DESC, r.id DESC""",
        {"q": q, "like": _like(q), "status": status, "engineer": engineer.strip(), "source": source},
        page, size,
    )  # fmt: skip


def get(conn: psycopg.Connection[Any], repair_no: str) -> dict[str, Any] | None:
    """A repair with its log, attachments (without their bytes) and materials."""
    row = conn.cursor(row_factory=dict_row).execute(_LIST + " WHERE r.repair_no = %s", [repair_no]).fetchone()
    if row is None:
        return None
    row["log"] = (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT l.at, l.actor, l.action, l.from_status, l.to_status, l.note, l.detail FROM repair_log l
             JOIN repair r ON r.id = l.repair_id WHERE r.repair_no = %s ORDER BY l.id""",
            [repair_no],
        )
        .fetchall()
    )
    row["attachments"] = (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT f.id, f.filename, f.content_type, f.size, f.uploaded_by, f.uploaded_at FROM repair_attachment f
             JOIN repair r ON r.id = f.repair_id WHERE r.repair_no = %s ORDER BY f.id""",
            [repair_no],
        )
        .fetchall()
    )
    row["materials"] = (warehouse.document(conn, row["stock_doc"]) or {}).get("lines", []) if row["stock_doc"] else []
    return row


def kinds(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return (
        conn.cursor(row_factory=dict_row)
        .execute("SELECT code, name_zh, name_en, commission, active FROM repair_kind ORDER BY code")
        .fetchall()
    )


def save_kind(
    store: Store, actor: str, *, code: str, name_zh: str, name_en: str, commission: Decimal | str, active: bool = True
) -> str:
    """A repair kind and its commission (new or changed); repairs already dispatched keep theirs."""
    code = code.strip()
    if not re.match(r"^[A-Za-z0-9_.-]{1,32}$", code):
        raise RepairError("bad_code", "1–32 letters, digits, _ . -", field="code", value=code)
    amount = _price(commission, "commission")
    if amount is None:
        raise RepairError("required", "required", field="commission")
    zh = _text(name_zh, "name_zh", 100, required=True)
    en = _text(name_en, "name_en", 100, required=True)
    with store.transaction(actor=actor) as conn:
        conn.execute(
            """INSERT INTO repair_kind (code, name_zh, name_en, commission, active) VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (code) DO UPDATE SET name_zh = EXCLUDED.name_zh, name_en = EXCLUDED.name_en,
                   commission = EXCLUDED.commission, active = EXCLUDED.active""",
            [code, zh, en, amount, active],
        )
    return code


def commissions(
    conn: psycopg.Connection[Any], timezone: str, *, month_from: str = "", month_to: str = "", engineer: str = ""
) -> list[dict[str, Any]]:
    """提成: completed repairs per engineer and month (of completion, in the utility's time zone): how many,
    and the commission in total. Months as YYYY-MM."""
    for value, what in ((month_from, "month_from"), (month_to, "month_to")):
        if value and not re.match(r"^\d{4}-(0[1-9]|1[0-2])$", value):
            raise RepairError("bad_month", "a month YYYY-MM", field=what, value=value)
    return (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT to_char(r.completed_at AT TIME ZONE %(tz)s, 'YYYY-MM') AS month, u.username AS engineer,
                  u.display_name AS engineer_name, count(*) AS repairs,
                  sum(coalesce(r.commission, 0)) AS commission
             FROM repair r JOIN staff_user u ON u.id = r.engineer_id
            WHERE r.status = 'completed'
              AND (%(from)s = '' OR to_char(r.completed_at AT TIME ZONE %(tz)s, 'YYYY-MM') >= %(from)s)
              AND (%(to)s = '' OR to_char(r.completed_at AT TIME ZONE %(tz)s, 'YYYY-MM') <= %(to)s)
              AND (%(eng)s = '' OR u.username = %(eng)s)
            GROUP BY 1, 2, 3 ORDER BY 1 DESC, 2""",
            {"tz": timezone, "from": month_from, "to": month_to, "eng": engineer.strip()},
        )
        .fetchall()
    )


# -- demo ------------------------------------------------------------------------------------------------
def seed_demo(conn: psycopg.Connection[Any]) -> None:
    """A few repairs on the demo's accounts — one from a call completed with materials, one from an alarm
    dispatched to the engineer, one waiting — after `meterhub.warehouse.seed_demo`. A second call adds nothing."""
    if conn.execute("SELECT 1 FROM repair LIMIT 1").fetchone():
        return
    conn.execute("SELECT meterhub_repair_defaults()")
    engineer = conn.execute("SELECT id FROM staff_user WHERE username = 'engineer'").fetchone()
    accounts = conn.execute(
        """SELECT a.id, cu.name, cu.phone, a.address, m.id FROM account a JOIN customer cu ON cu.id = a.customer_id
             LEFT JOIN meter m ON m.account_id = a.id ORDER BY a.id LIMIT 3"""
    ).fetchall()
    if engineer is None or len(accounts) < 3:
        return
    actor = conn.execute("SELECT current_setting('meterhub.actor', true)").fetchone()
    conn.execute("SELECT set_config('meterhub.actor', 'clerk', true)")
    tz = "Asia/Shanghai"

    def add(n: int, source: str, kind: str, account: tuple[Any, ...], text: str, event: int | None = None) -> int:
        row = conn.execute(
            """INSERT INTO repair (repair_no, source, kind, account_id, meter_id, meter_event_id, caller, phone,
                                   address, description)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            [
                _new_no(conn, tz),
                source,
                kind,
                account[0],
                account[4],
                event,
                account[1],
                account[2] or "",
                account[3],
                text,
            ],
        ).fetchone()
        assert row is not None
        _log(conn, row[0], "register", None, "registered", source=source)
        return int(row[0])

    done = add(1, "call", "leak", accounts[0], "用户来电：厨房有燃气味，表前阀处疑似漏气")
    conn.execute(
        """UPDATE repair SET status = 'dispatched', engineer_id = %s, commission = 80.00, dispatched_at = now(),
                  dispatched_by = 'supervisor' WHERE id = %s""",
        [engineer[0], done],
    )
    _log(conn, done, "dispatch", "registered", "dispatched", engineer="engineer", commission="80.00")
    materials: list[LineInput] = []
    if conn.execute(
        "SELECT 1 FROM stock s JOIN item i ON i.id = s.item_id JOIN warehouse w ON w.id = s.warehouse_id "
        "WHERE w.code = 'HD' AND i.code = 'BV-15' AND s.quantity >= 1"
    ).fetchone():
        materials = [LineInput("BV-15", "1"), LineInput("SEAL", "2")]
    doc_id = None
    if materials:
        posted = warehouse.post_in(
            conn, DocInput(kind="repair", warehouse="HD", lines=materials, repair_id=done), today=_today(tz)
        )
        doc_id = posted.id
    conn.execute(
        """UPDATE repair SET status = 'completed', started_at = now(), completed_at = now(), completed_by = 'engineer',
                  result = '更换表前球阀及密封垫，检漏合格', stock_doc_id = %s WHERE id = %s""",
        [doc_id, done],
    )
    _log(conn, done, "complete", "dispatched", "completed", "更换表前球阀及密封垫，检漏合格")
    alarm = conn.execute(
        """SELECT e.id, m.account_id FROM meter_event e JOIN meter m ON m.id = e.meter_id
            WHERE e.kind = ANY(%s) AND e.cleared_at IS NULL AND m.account_id IS NOT NULL ORDER BY e.ts DESC LIMIT 1""",
        [list(ALARM_KINDS)],
    ).fetchone()
    if alarm is not None:
        acc = conn.execute(
            """SELECT a.id, cu.name, cu.phone, a.address, m.id FROM account a JOIN customer cu ON cu.id = a.customer_id
                 JOIN meter m ON m.account_id = a.id WHERE a.id = %s LIMIT 1""",
            [alarm[1]],
        ).fetchone()
        assert acc is not None
        second = add(2, "alarm", "meter", acc, "表具告警，需上门检查", alarm[0])
        conn.execute(
            """UPDATE repair SET status = 'dispatched', engineer_id = %s, commission = 50.00, dispatched_at = now(),
                      dispatched_by = 'supervisor' WHERE id = %s""",
            [engineer[0], second],
        )
        _log(conn, second, "dispatch", "registered", "dispatched", engineer="engineer", commission="50.00")
    add(3, "call", "appliance", accounts[2], "用户来电：燃气灶点火困难，希望上门检修")
    conn.execute("SELECT set_config('meterhub.actor', %s, true)", [actor[0] if actor and actor[0] else ""])
