"""SMS (短信平台): templates with placeholders, messages to customers and staff (one by one or by a
condition, with a preview of the recipients), the history with each message's delivery status, the gateways
that hand messages over, and the sender loop.

A message's life: queued → sent → delivered | failed (with the reason). A failed attempt that may succeed
later (no answer, HTTP 5xx) stays queued with `next_attempt_at` moved on, until `max_attempts`; every change
of state is kept in `sms_message_event` (a trigger). A message is never deleted.

Gateways: `OutboxGateway` (the default) writes each message to `sms_outbox` in the sender's transaction, so
nothing is lost when no provider is configured; `HttpGateway` posts to a provider configured in
`[sms.http]` (URL, method, auth header or HMAC signature, field names, the success criterion read from the
JSON answer) and reads delivery reports from a callback (`apply_report`) or by polling (`poll_reports`).
An SMPP adapter is not provided.

The sender (`send_round`) claims queued messages with `FOR UPDATE SKIP LOCKED` and keeps them locked until
their outcome is committed, so two senders never send one message twice. A crash between the provider's
acceptance and the commit leaves the message queued: it is then sent again (at least once, never twice
concurrently).

Arrears (for the condition "accounts in arrears above an amount" and the arrears notice) come from an
`ArrearsFn`. `sql_arrears` computes them in SQL from the ledger — the ledger balance applied to the oldest
bills first, posted late fees included, fees not yet posted left out; the console and the CLI pass the
billing ledger's exact positions instead (meterhub may not import billing).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import string
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from meterhub.settings import SmsHttpSettings, SmsSettings
from meterhub.store import Store

log = logging.getLogger(__name__)

ACTOR = "system:sms"
STATES = ("queued", "sent", "delivered", "failed")
PLACEHOLDERS = (
    "customer_name",
    "customer_no",
    "account_no",
    "address",
    "community",
    "phone",
    "amount",
    "due_date",
    "period",
    "volume",
    "days_overdue",
    "balance",
    "reason",
    "stop_after",
    "meter_no",
    "closed_at",
    "staff_name",
)
CONDITIONS = ("accounts", "community", "area", "arrears", "book", "staff", "role", "phones")
CUSTOMER_CONDITIONS = ("accounts", "community", "area", "arrears", "book")
# Placeholders a manual send can fill, by recipient kind.
CUSTOMER_VALUES = ("customer_name", "customer_no", "account_no", "address", "community", "phone")
STAFF_VALUES = ("staff_name", "phone")
MAX_BODY = 500
MAX_RECIPIENTS = 100_000
PREVIEW_ROWS = 20
_CODE = re.compile(r"^[a-z0-9_.-]{1,40}$")
_PHONE = re.compile(r"^\+?[0-9]{5,20}$")
CENT = Decimal("0.01")


class SmsError(ValueError):
    """A refused SMS action (nothing was written); `field` names the input at fault, `detail` the values."""

    def __init__(
        self, code: str, message: str, *, field: str | None = None, status: int = 422, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status
        self.detail = detail  # what the message names (a placeholder, account numbers …), language-neutral


# -- templates --------------------------------------------------------------------------------------------
def placeholders_of(body: str) -> list[str]:
    """The placeholders of a template text in order of appearance; refuses unknown or malformed ones."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(body))
    except ValueError as exc:
        raise SmsError("bad_braces", f"unbalanced braces in the text ({exc})", field="body") from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            raise SmsError("unknown_placeholder", f"unknown placeholder {{{name}}}", field="body", detail=f"{{{name}}}")
        if spec or conversion:
            raise SmsError(
                "bad_placeholder", f"placeholder {{{name}}} takes no format", field="body", detail=f"{{{name}}}"
            )
        if name not in names:
            names.append(name)
    return names


def format_value(value: Any, zone: ZoneInfo | None = None) -> str:
    """A placeholder value as text: money exact to the fen (half up), dates ISO, times to the minute."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return str(value.quantize(CENT, rounding=ROUND_HALF_UP))
    if isinstance(value, datetime):
        local = value.astimezone(zone) if (zone and value.tzinfo) else value
        return local.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def render(body: str, values: Mapping[str, Any], zone: ZoneInfo | None = None) -> str:
    """The text of a message: every placeholder replaced by its value; a missing value is refused."""
    out: list[str] = []
    placeholders_of(body)
    for literal, name, _spec, _conv in string.Formatter().parse(body):
        out.append(literal)
        if name is None:
            continue
        if name not in values:
            raise SmsError(
                "missing_value",
                f"placeholder {{{name}}} has no value for this recipient",
                field="body",
                detail=f"{{{name}}}",
            )
        out.append(format_value(values[name], zone))
    return "".join(out)


@dataclass(frozen=True)
class Template:
    id: int
    code: str
    name: str
    body: str
    active: bool
    placeholders: list[str]
    updated_at: datetime


def _template(row: Mapping[str, Any]) -> Template:
    return Template(
        row["id"], row["code"], row["name"], row["body"], row["active"], placeholders_of(row["body"]), row["updated_at"]
    )


def list_templates(conn: psycopg.Connection[Any], *, active_only: bool = False) -> list[Template]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT * FROM sms_template WHERE (NOT %s OR active) ORDER BY code", [active_only]
        ).fetchall()
    return [_template(r) for r in rows]


def get_template(conn: psycopg.Connection[Any], code: str) -> Template:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM sms_template WHERE code = %s", [code]).fetchone()
    if row is None:
        raise SmsError("no_template", f"no template {code!r}", field="template", status=404, detail=code)
    return _template(row)


def save_template(
    conn: psycopg.Connection[Any], code: str, name: str, body: str, active: bool = True
) -> tuple[Template, bool]:
    """Create or change a template; returns it and whether it is new. Unknown placeholders are refused."""
    code, name, body = code.strip(), name.strip(), body.strip()
    if not _CODE.match(code):
        raise SmsError("bad_code", "code: 1–40 characters a-z 0-9 _ . -", field="code")
    if not name or len(name) > 100:
        raise SmsError("bad_name", "name: 1–100 characters", field="name")
    if not body or len(body) > MAX_BODY:
        raise SmsError("bad_body", f"text: 1–{MAX_BODY} characters", field="body")
    placeholders_of(body)
    row = conn.execute(
        """INSERT INTO sms_template (code, name, body, active) VALUES (%s, %s, %s, %s)
           ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, body = EXCLUDED.body, active = EXCLUDED.active
           RETURNING (xmax = 0)""",
        [code, name, body, active],
    ).fetchone()
    assert row is not None
    return get_template(conn, code), bool(row[0])


def restore_defaults(conn: psycopg.Connection[Any]) -> None:
    """Add the shipped templates and notice settings that are missing (changed ones stay as they are)."""
    conn.execute("SELECT meterhub_sms_defaults()")


# -- arrears ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArrearsInfo:
    amount: Decimal  # due on bills past their due date
    oldest_bill_id: int | None  # the oldest overdue bill not fully paid
    oldest_due: date | None


ArrearsFn = Callable[[psycopg.Connection[Any], Sequence[int], date], dict[int, ArrearsInfo]]

_SQL_ARREARS = """
WITH bal AS (
    SELECT account_id, sum(amount) AS balance FROM ledger_entry
     WHERE booked_on <= %(as_of)s AND account_id = ANY(%(ids)s)
     GROUP BY account_id HAVING sum(amount) > 0
), owed AS (
    SELECT b.id, b.account_id, b.due_date, b.period_start, bal.balance,
           b.amount + coalesce((SELECT sum(l.amount) FROM ledger_entry l
                                 WHERE l.bill_id = b.id AND l.entry_type = 'late_fee' AND l.booked_on <= %(as_of)s), 0)
               AS owed
      FROM bill b JOIN bal ON bal.account_id = b.account_id
     WHERE b.issued_on <= %(as_of)s
), placed AS (
    SELECT *, greatest(least(balance - coalesce(sum(owed) OVER (
               PARTITION BY account_id ORDER BY period_start DESC, id DESC
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0), owed), 0) AS unpaid
      FROM owed
)
SELECT account_id,
       coalesce(sum(unpaid) FILTER (WHERE due_date < %(as_of)s), 0),
       (array_agg(id ORDER BY period_start, id) FILTER (WHERE unpaid > 0 AND due_date < %(as_of)s))[1],
       min(due_date) FILTER (WHERE unpaid > 0 AND due_date < %(as_of)s)
  FROM placed GROUP BY account_id
"""


def sql_arrears(conn: psycopg.Connection[Any], account_ids: Sequence[int], as_of: date) -> dict[int, ArrearsInfo]:
    """Arrears from the ledger in SQL: the balance owed sits on the newest bills (payments settle the
    oldest first); what lies on bills past their due date is the arrears. Late fees not yet posted are not
    included (the billing ledger's positions include them)."""
    rows = conn.execute(_SQL_ARREARS, {"ids": list(account_ids), "as_of": as_of}).fetchall()
    return {r[0]: ArrearsInfo(Decimal(r[1]).quantize(CENT), r[2], r[3]) for r in rows}


def debtor_ids(conn: psycopg.Connection[Any], as_of: date) -> list[int]:
    """Accounts whose ledger balance is owed (the candidates for arrears)."""
    rows = conn.execute(
        "SELECT account_id FROM ledger_entry WHERE booked_on <= %s GROUP BY account_id HAVING sum(amount) > 0",
        [as_of],
    ).fetchall()
    return [r[0] for r in rows]


# -- recipients and sending -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    """Who receives a send: `kind` (CONDITIONS) and its value — account numbers, a community or area code,
    a minimum arrears amount, a reading book code, staff usernames ("*": all active staff), a role, or
    phone numbers. Lists are separated by commas, spaces or new lines."""

    kind: str
    value: str = ""

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind, "value": self.value}


@dataclass(frozen=True)
class Recipient:
    kind: str  # customer, staff, phone
    name: str
    phone: str
    account_id: int | None = None
    customer_id: int | None = None
    staff_user_id: int | None = None
    account_no: str = ""
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def phone_ok(self) -> bool:
        return bool(_PHONE.match(self.phone))


@dataclass(frozen=True)
class Preview:
    count: int
    without_phone: int
    sample: list[Recipient]
    sample_text: str  # the message the first recipient would get


def normalise_phone(phone: str) -> str:
    return re.sub(r"[\s()-]", "", phone or "")


def _items(value: str) -> list[str]:
    return [v for v in re.split(r"[\s,，;；]+", value.strip()) if v]


_CUSTOMER_SELECT = """
SELECT a.id, a.account_no, a.address, cu.id, cu.customer_no, cu.name, cu.phone, co.name
  FROM account a JOIN customer cu ON cu.id = a.customer_id LEFT JOIN community co ON co.id = a.community_id
 WHERE a.status <> 'closed' AND ({where})
   AND (%(areas)s::bigint[] IS NULL OR co.area_id = ANY(%(areas)s::bigint[]))
 ORDER BY a.account_no
 LIMIT %(limit)s
"""


def _customers(
    conn: psycopg.Connection[Any], where: str, params: dict[str, Any], areas: frozenset[int] | None
) -> list[Recipient]:
    query = _CUSTOMER_SELECT.format(where=where)
    rows = conn.execute(
        query, {**params, "areas": sorted(areas) if areas is not None else None, "limit": MAX_RECIPIENTS + 1}
    ).fetchall()
    if len(rows) > MAX_RECIPIENTS:
        raise SmsError("too_many", f"more than {MAX_RECIPIENTS} recipients; narrow the condition", field="value")
    out = []
    for account_id, account_no, address, customer_id, customer_no, name, phone, community in rows:
        phone = normalise_phone(phone)
        values = {
            "customer_name": name,
            "customer_no": customer_no,
            "account_no": account_no,
            "address": address,
            "community": community or "",
            "phone": phone,
        }
        out.append(Recipient("customer", name, phone, account_id, customer_id, None, account_no, values))
    return out


def recipients(
    conn: psycopg.Connection[Any],
    condition: Condition,
    *,
    areas: frozenset[int] | None = None,
    arrears: ArrearsFn = sql_arrears,
    as_of: date | None = None,
) -> list[Recipient]:
    """The recipients a condition names (accounts within `areas` when the person is limited to areas)."""
    kind, value = condition.kind, condition.value.strip()
    as_of = as_of or date.today()
    if kind not in CONDITIONS:
        raise SmsError("bad_condition", f"unknown condition {kind!r}", field="kind")
    if kind in ("accounts", "staff", "phones") and not _items(value):
        raise SmsError("empty_value", "give at least one recipient", field="value")
    if kind in ("community", "area", "book", "role") and not value:
        raise SmsError("empty_value", "give a code", field="value")
    if kind == "accounts":
        numbers = _items(value)
        found = _customers(conn, "a.account_no = ANY(%(v)s)", {"v": numbers}, areas)
        missing = sorted(set(numbers) - {r.account_no for r in found})
        if missing:
            raise SmsError(
                "unknown_account",
                f"unknown account(s): {', '.join(missing[:10])}",
                field="value",
                detail=", ".join(missing[:10]),
            )
        return found
    if kind == "community":
        _exists(conn, "SELECT 1 FROM community WHERE code = %s", value, "unknown_community", "community")
        return _customers(conn, "co.code = %(v)s", {"v": value}, areas)
    if kind == "area":
        _exists(conn, "SELECT 1 FROM area WHERE code = %s", value, "unknown_area", "area")
        return _customers(
            conn,
            """co.area_id IN (WITH RECURSIVE sub AS (SELECT id FROM area WHERE code = %(v)s
                              UNION SELECT a2.id FROM area a2 JOIN sub ON a2.parent_id = sub.id)
                              SELECT id FROM sub)""",
            {"v": value},
            areas,
        )
    if kind == "book":
        _exists(conn, "SELECT 1 FROM reading_book WHERE code = %s", value, "unknown_book", "reading book")
        return _customers(
            conn,
            """a.id IN (SELECT m.account_id FROM reading_book_meter rbm JOIN reading_book rb ON rb.id = rbm.book_id
                          JOIN meter m ON m.id = rbm.meter_id WHERE rb.code = %(v)s AND m.account_id IS NOT NULL)""",
            {"v": value},
            areas,
        )
    if kind == "arrears":
        minimum = parse_money(value or "0", "value")
        held = arrears(conn, debtor_ids(conn, as_of), as_of)
        chosen = {i: a for i, a in held.items() if a.amount > 0 and a.amount >= minimum}
        found = _customers(conn, "a.id = ANY(%(v)s)", {"v": sorted(chosen)}, areas)
        out = []
        for r in found:
            info = chosen[r.account_id or 0]
            extra: dict[str, Any] = {"amount": info.amount, "due_date": info.oldest_due}
            if info.oldest_due is not None:
                extra["days_overdue"] = (as_of - info.oldest_due).days
            out.append(
                Recipient(
                    r.kind, r.name, r.phone, r.account_id, r.customer_id, None, r.account_no, {**r.values, **extra}
                )
            )
        return out
    if kind in ("staff", "role"):
        names = _items(value)
        params: list[Any] = []
        if kind == "role":
            where, params = "role = %s", [value]
        elif names == ["*"]:
            where = "true"
        else:
            where, params = "username = ANY(%s)", [names]
        rows = conn.execute(
            f"SELECT id, username, display_name, coalesce(phone, '') FROM staff_user WHERE active AND {where} "
            "ORDER BY username",
            params,
        ).fetchall()
        if kind == "staff" and names != ["*"]:
            missing = sorted(set(names) - {r[1] for r in rows})
            if missing:
                raise SmsError(
                    "unknown_staff",
                    f"unknown staff user(s): {', '.join(missing[:10])}",
                    field="value",
                    detail=", ".join(missing[:10]),
                )
        staff = []
        for uid, _username, name, phone in rows:
            number = normalise_phone(phone)
            values = {"staff_name": name, "phone": number}
            staff.append(Recipient("staff", name, number, staff_user_id=uid, values=values))
        return staff
    phones = [normalise_phone(p) for p in _items(value)]
    bad = [p for p in phones if not _PHONE.match(p)]
    if bad:
        raise SmsError(
            "bad_phone", f"not a phone number: {', '.join(bad[:10])}", field="value", detail=", ".join(bad[:10])
        )
    return [Recipient("phone", "", p, values={"phone": p}) for p in dict.fromkeys(phones)]


def _exists(conn: psycopg.Connection[Any], query: str, value: str, code: str, what: str) -> None:
    if conn.execute(query, [value]).fetchone() is None:
        raise SmsError(code, f"unknown {what} {value!r}", field="value", detail=value)


def parse_money(text: str, field_name: str) -> Decimal:
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise SmsError("bad_amount", f"{field_name}: an amount like 100.00", field=field_name) from None
    if not amount.is_finite() or amount < 0 or amount != amount.quantize(CENT):
        raise SmsError("bad_amount", f"{field_name}: an amount ≥ 0 with at most 2 decimals", field=field_name)
    return amount


def _body_of(conn: psycopg.Connection[Any], template_code: str, body: str) -> tuple[int | None, str]:
    if template_code:
        template = get_template(conn, template_code)
        if not template.active:
            raise SmsError(
                "inactive_template",
                f"template {template_code!r} is switched off",
                field="template",
                detail=template_code,
            )
        return template.id, template.body
    body = body.strip()
    if not body or len(body) > MAX_BODY:
        raise SmsError("bad_body", f"text: 1–{MAX_BODY} characters", field="body")
    placeholders_of(body)
    return None, body


def preview(
    conn: psycopg.Connection[Any],
    condition: Condition,
    *,
    template_code: str = "",
    body: str = "",
    areas: frozenset[int] | None = None,
    arrears: ArrearsFn = sql_arrears,
    zone: ZoneInfo | None = None,
) -> Preview:
    """Who a send would reach (count, how many lack a valid phone, the first rows) and the first text.
    Refuses a text whose placeholders some recipient cannot fill."""
    _template_id, text = _body_of(conn, template_code, body)
    found = recipients(conn, condition, areas=areas, arrears=arrears)
    texts = [render(text, r.values, zone) for r in found]
    return Preview(
        count=len(found),
        without_phone=sum(1 for r in found if not r.phone_ok),
        sample=found[:PREVIEW_ROWS],
        sample_text=texts[0] if texts else "",
    )


@dataclass(frozen=True)
class SendResult:
    batch_id: int
    queued: int
    without_phone: int


def send(
    conn: psycopg.Connection[Any],
    condition: Condition,
    *,
    template_code: str = "",
    body: str = "",
    areas: frozenset[int] | None = None,
    arrears: ArrearsFn = sql_arrears,
    zone: ZoneInfo | None = None,
    expected_count: int | None = None,
) -> SendResult:
    """Queue a message per recipient of `condition` (in the caller's transaction). A recipient without a
    valid phone gets a failed message (reason no_phone) so that the history shows who was missed.
    `expected_count` (the previewed count) refuses a send whose recipients changed since the preview."""
    template_id, text = _body_of(conn, template_code, body)
    found = recipients(conn, condition, areas=areas, arrears=arrears)
    if not found:
        raise SmsError("no_recipients", "the condition names no recipient", field="value")
    if expected_count is not None and expected_count != len(found):
        raise SmsError(
            "changed",
            f"the recipients changed since the preview ({expected_count} → {len(found)}); preview again",
            field="value",
            detail=f"{expected_count} → {len(found)}",
        )
    rendered = [render(text, r.values, zone) for r in found]
    batch = conn.execute(
        "INSERT INTO sms_batch (origin, template_id, body, condition, recipients) VALUES ('manual', %s, %s, %s, %s) "
        "RETURNING id",
        [template_id, text, Jsonb(condition.as_json()), len(found)],
    ).fetchone()
    assert batch is not None
    missing = 0
    with conn.cursor() as cur:
        for r, message in zip(found, rendered, strict=True):
            missing += 0 if r.phone_ok else 1
            cur.execute(
                """INSERT INTO sms_message (batch_id, recipient_kind, account_id, customer_id, staff_user_id,
                          recipient_name, phone, body, state, error, finished_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                           CASE WHEN %s THEN NULL ELSE clock_timestamp() END)""",
                [
                    batch[0],
                    r.kind,
                    r.account_id,
                    r.customer_id,
                    r.staff_user_id,
                    r.name,
                    r.phone,
                    message,
                    "queued" if r.phone_ok else "failed",
                    "" if r.phone_ok else "no_phone",
                    r.phone_ok,
                ],
            )
    return SendResult(batch[0], len(found) - missing, missing)


def queue_notice(
    conn: psycopg.Connection[Any],
    *,
    kind: str,
    key: str,
    template_id: int | None,
    text: str,
    account_id: int | None,
    phone: str,
    name: str,
) -> bool:
    """Queue one automatic notice unless its idempotency key exists; True when a message was added."""
    phone = normalise_phone(phone)
    ok = bool(_PHONE.match(phone))
    customer = None
    if account_id is not None:
        row = conn.execute("SELECT customer_id FROM account WHERE id = %s", [account_id]).fetchone()
        customer = row[0] if row else None
    row = conn.execute(
        """INSERT INTO sms_message (notice_kind, idempotency_key, recipient_kind, account_id, customer_id,
                  recipient_name, phone, body, state, error, finished_at, created_by)
           VALUES (%s, %s, 'customer', %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN NULL ELSE clock_timestamp() END,
                   %s)
           ON CONFLICT (idempotency_key) DO NOTHING RETURNING id""",
        [
            kind,
            key,
            account_id,
            customer,
            name,
            phone,
            text,
            "queued" if ok else "failed",
            "" if ok else "no_phone",
            ok,
            ACTOR,
        ],
    ).fetchone()
    return row is not None


# -- history ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MessageRow:
    id: int
    created_at: datetime
    recipient_kind: str
    recipient_name: str
    account_no: str | None
    phone: str
    body: str
    state: str
    attempts: int
    error: str
    notice_kind: str | None
    batch_id: int | None
    gateway: str | None
    provider_message_id: str | None
    sent_at: datetime | None
    finished_at: datetime | None
    created_by: str


@dataclass(frozen=True)
class History:
    rows: list[MessageRow]
    page: int
    size: int
    has_more: bool


def history(
    conn: psycopg.Connection[Any],
    *,
    q: str = "",
    state: str = "",
    notice_kind: str = "",
    batch_id: int | None = None,
    page: int = 1,
    size: int = 50,
    areas: frozenset[int] | None = None,
    everything: bool = False,
) -> History:
    """Messages, newest first, searchable by phone, name, account number or text; `everything` for export."""
    if state and state not in STATES:
        raise SmsError("bad_state", f"unknown state {state!r}", field="state")
    page = max(page, 1)
    limit = MAX_RECIPIENTS * 2 if everything else size + 1
    offset = 0 if everything else (page - 1) * size
    pattern = f"%{q.strip()}%" if q.strip() else None
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT m.id, m.created_at, m.recipient_kind, m.recipient_name, a.account_no, m.phone, m.body, m.state,
                      m.attempts, m.error, m.notice_kind, m.batch_id, m.gateway, m.provider_message_id, m.sent_at,
                      m.finished_at, m.created_by
                 FROM sms_message m LEFT JOIN account a ON a.id = m.account_id
                 LEFT JOIN community co ON co.id = a.community_id
                WHERE (%(state)s = '' OR m.state = %(state)s)
                  AND (%(kind)s = '' OR m.notice_kind = %(kind)s OR (%(kind)s = 'manual' AND m.notice_kind IS NULL))
                  AND (%(batch)s::bigint IS NULL OR m.batch_id = %(batch)s)
                  AND (%(p)s::text IS NULL OR m.phone ILIKE %(p)s OR m.recipient_name ILIKE %(p)s
                       OR a.account_no ILIKE %(p)s OR m.body ILIKE %(p)s)
                  AND (%(areas)s::bigint[] IS NULL OR co.area_id = ANY(%(areas)s::bigint[]))
                ORDER BY m.id DESC LIMIT %(limit)s OFFSET %(offset)s""",
            {
                "state": state,
                "kind": notice_kind,
                "batch": batch_id,
                "p": pattern,
                "areas": sorted(areas) if areas is not None else None,
                "limit": limit,
                "offset": offset,
            },
        ).fetchall()
    has_more = not everything and len(rows) > size
    return History([MessageRow(**r) for r in rows[: None if everything else size]], page, size, has_more)


@dataclass(frozen=True)
class MessageEvent:
    at: datetime
    state: str
    attempts: int
    error: str
    actor: str


def message_detail(
    conn: psycopg.Connection[Any], message_id: int, areas: frozenset[int] | None = None
) -> tuple[MessageRow, list[MessageEvent]]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            """SELECT m.id, m.created_at, m.recipient_kind, m.recipient_name, a.account_no, m.phone, m.body, m.state,
                      m.attempts, m.error, m.notice_kind, m.batch_id, m.gateway, m.provider_message_id, m.sent_at,
                      m.finished_at, m.created_by, co.area_id
                 FROM sms_message m LEFT JOIN account a ON a.id = m.account_id
                 LEFT JOIN community co ON co.id = a.community_id WHERE m.id = %s""",
            [message_id],
        ).fetchone()
        if row is None or (areas is not None and row["area_id"] not in areas):
            raise SmsError("no_message", f"no message {message_id}", status=404)
        del row["area_id"]
        events = cur.execute(
            "SELECT at, state, attempts, error, actor FROM sms_message_event WHERE message_id = %s ORDER BY id",
            [message_id],
        ).fetchall()
    return MessageRow(**row), [MessageEvent(**e) for e in events]


def counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Messages per state (for the overview)."""
    rows = conn.execute("SELECT state, count(*) FROM sms_message GROUP BY state").fetchall()
    out = dict.fromkeys(STATES, 0)
    out.update({state: int(n) for state, n in rows})
    return out


def outbox_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM sms_outbox").fetchone()
    return int(row[0]) if row else 0


# -- gateways ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outgoing:
    id: int
    phone: str
    body: str
    attempts: int


@dataclass(frozen=True)
class Handover:
    """What a gateway did with a message: accepted (with the provider's id), or refused (retryable or not)."""

    accepted: bool
    provider_id: str | None = None
    error: str = ""
    retryable: bool = False


class Gateway(Protocol):
    name: str

    def send(self, conn: psycopg.Connection[Any], message: Outgoing) -> Handover: ...


class OutboxGateway:
    """Writes the message to `sms_outbox` in the sender's transaction (no provider needed)."""

    name = "outbox"

    def send(self, conn: psycopg.Connection[Any], message: Outgoing) -> Handover:
        row = conn.execute(
            "INSERT INTO sms_outbox (message_id, phone, body) VALUES (%s, %s, %s) "
            "ON CONFLICT (message_id) DO UPDATE SET message_id = EXCLUDED.message_id RETURNING id",
            [message.id, message.phone, message.body],
        ).fetchone()
        assert row is not None
        return Handover(True, f"outbox:{row[0]}")


def _dig(document: Any, path: str) -> Any:
    for part in path.split(".") if path else []:
        if isinstance(document, Mapping) and part in document:
            document = document[part]
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            return None
    return document


class HttpGateway:
    """A provider's HTTP API, as configured in `[sms.http]`."""

    name = "http"

    def __init__(self, settings: SmsHttpSettings) -> None:
        if not settings.url:
            raise SmsError("no_provider", "[sms.http] url is not set", status=500)
        self.settings = settings

    def _request(self, method: str, url: str, payload: dict[str, str] | None) -> tuple[int, Any]:
        s = self.settings
        headers = {"Accept": "application/json", **s.headers}
        data: bytes | None = None
        if payload is not None and method == "POST":
            if s.body == "json":
                data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                headers["Content-Type"] = "application/json; charset=utf-8"
            else:
                data = urllib.parse.urlencode(payload).encode("utf-8")
                headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif payload is not None:
            url = f"{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode(payload)}"
        if s.auth_value:
            headers[s.auth_header] = s.auth_value
        if s.signature_secret:
            stamp = str(int(time.time()))
            signed = stamp.encode() + (data or urllib.parse.urlsplit(url).query.encode())
            headers[s.timestamp_header] = stamp
            headers[s.signature_header] = hmac.new(s.signature_secret.encode(), signed, hashlib.sha256).hexdigest()
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=s.timeout_s) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            answer = json.loads(raw.decode("utf-8")) if raw else None
        except (ValueError, UnicodeDecodeError):
            answer = None
        return status, answer

    def send(self, conn: psycopg.Connection[Any], message: Outgoing) -> Handover:
        s = self.settings
        ours = {"phone": message.phone, "text": message.body, "reference": str(message.id)}
        payload = {**s.extra_fields, **{s.fields[k]: v for k, v in ours.items() if k in s.fields}}
        try:
            status, answer = self._request(s.method, s.url, payload)
        except (OSError, urllib.error.URLError) as exc:
            return Handover(False, error=f"provider unreachable: {exc}"[:300], retryable=True)
        if status >= 500 or status == 429:
            return Handover(False, error=f"provider answered HTTP {status}", retryable=True)
        code = _dig(answer, s.success_field)
        if 200 <= status < 300 and code is not None and str(code) in s.success_values:
            provider_id = _dig(answer, s.message_id_field)
            return Handover(True, None if provider_id is None else str(provider_id))
        error = _dig(answer, s.error_field)
        detail = f"{code}: {error}" if error is not None else f"HTTP {status}, {s.success_field}={code}"
        return Handover(False, error=f"provider refused ({detail})"[:300])

    def status_of(self, provider_id: str) -> Mapping[str, Any] | None:
        """The provider's delivery report for one message (polling); None when it cannot be read."""
        if not self.settings.status_url:
            return None
        try:
            status, answer = self._request("GET", self.settings.status_url, {"id": provider_id})
        except (OSError, urllib.error.URLError):
            return None
        return answer if status == 200 and isinstance(answer, Mapping) else None


def gateway_for(settings: SmsSettings) -> Gateway:
    return HttpGateway(settings.http) if settings.gateway == "http" else OutboxGateway()


# -- the sender -------------------------------------------------------------------------------------------
def send_round(
    store: Store, settings: SmsSettings, gateway: Gateway | None = None, now: datetime | None = None
) -> dict[str, int]:
    """Hand over up to `settings.batch` queued messages that are due; returns what happened to them."""
    gateway = gateway or gateway_for(settings)
    done = {"sent": 0, "retry": 0, "failed": 0}
    with store.transaction(actor=ACTOR) as conn:
        claimed = conn.execute(
            """SELECT id, phone, body, attempts FROM sms_message
                WHERE state = 'queued' AND next_attempt_at <= coalesce(%s, clock_timestamp())
                ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED""",
            [now, settings.batch],
        ).fetchall()
        for row in claimed:
            message = Outgoing(*row)
            try:
                outcome = gateway.send(conn, message)
            except psycopg.Error:
                raise
            except Exception as exc:  # a gateway fault must not stop the others
                log.exception("SMS gateway %s failed on message %s", gateway.name, message.id)
                outcome = Handover(False, error=f"gateway error: {exc}"[:300], retryable=True)
            attempts = message.attempts + 1
            if outcome.accepted:
                conn.execute(
                    """UPDATE sms_message SET state = 'sent', attempts = %s, gateway = %s, provider_message_id = %s,
                              error = '', sent_at = clock_timestamp() WHERE id = %s""",
                    [attempts, gateway.name, outcome.provider_id, message.id],
                )
                done["sent"] += 1
            elif outcome.retryable and attempts < settings.max_attempts:
                wait = timedelta(seconds=settings.retry_after_s * attempts)
                conn.execute(
                    """UPDATE sms_message SET attempts = %s, gateway = %s, error = %s,
                              next_attempt_at = clock_timestamp() + %s WHERE id = %s""",
                    [attempts, gateway.name, outcome.error, wait, message.id],
                )
                done["retry"] += 1
            else:
                conn.execute(
                    """UPDATE sms_message SET state = 'failed', attempts = %s, gateway = %s, error = %s,
                              finished_at = clock_timestamp() WHERE id = %s""",
                    [attempts, gateway.name, outcome.error or "refused", message.id],
                )
                done["failed"] += 1
    return done


def send_all(store: Store, settings: SmsSettings, gateway: Gateway | None = None) -> dict[str, int]:
    """Rounds until no due message is left; the totals."""
    total = {"sent": 0, "retry": 0, "failed": 0}
    while True:
        done = send_round(store, settings, gateway)
        for key, n in done.items():
            total[key] += n
        if sum(done.values()) < settings.batch:
            return total


def apply_report(
    conn: psycopg.Connection[Any], settings: SmsHttpSettings, report: Mapping[str, Any]
) -> tuple[int | None, str]:
    """A delivery report from the provider (callback or poll): the message it names becomes delivered or
    failed. Returns (message id, new state), or (None, reason) when it names no sent message."""
    provider_id = _dig(report, settings.report_id_field)
    status = _dig(report, settings.report_status_field)
    if provider_id is None or status is None:
        return None, "incomplete"
    status = str(status)
    if status in settings.delivered_values:
        state, error = "delivered", ""
    elif status in settings.failed_values:
        state, error = "failed", f"not delivered ({status})"
    else:
        return None, "pending"
    row = conn.execute(
        """UPDATE sms_message SET state = %s, error = %s, finished_at = clock_timestamp()
            WHERE provider_message_id = %s AND state = 'sent' RETURNING id""",
        [state, error, str(provider_id)],
    ).fetchone()
    return (row[0], state) if row else (None, "unknown")


def poll_reports(store: Store, settings: SmsSettings, gateway: HttpGateway | None = None) -> int:
    """Ask the provider about messages sent in the last 3 days and still without a report."""
    if settings.gateway != "http" or not settings.http.status_url:
        return 0
    gateway = gateway or HttpGateway(settings.http)
    with store.connection() as conn:
        pending = conn.execute(
            """SELECT provider_message_id FROM sms_message WHERE state = 'sent' AND gateway = 'http'
                  AND provider_message_id IS NOT NULL AND sent_at > clock_timestamp() - interval '3 days'
                ORDER BY id LIMIT 500"""
        ).fetchall()
    changed = 0
    for (provider_id,) in pending:
        report = gateway.status_of(provider_id)
        if report is None:
            continue
        merged = {settings.http.report_id_field: provider_id, **report}
        with store.transaction(actor=ACTOR) as conn:
            message_id, _state = apply_report(conn, settings.http, merged)
        changed += message_id is not None
    return changed


def run_sender(
    store: Store,
    settings: SmsSettings,
    stop: threading.Event,
    notify: Callable[[], object] | None = None,
) -> None:
    """The sender loop `meterhub serve` can run in a thread: send, poll reports, and every `notify_s` run
    `notify` (the automatic notice scan), until `stop` is set."""
    next_scan = 0.0
    while not stop.is_set():
        try:
            if notify is not None and time.monotonic() >= next_scan:
                notify()
                next_scan = time.monotonic() + settings.notify_s
            send_all(store, settings)
            poll_reports(store, settings)
        except Exception:  # keep the loop alive; the next round tries again
            log.exception("SMS sender round failed")
        stop.wait(settings.poll_s)


# -- demo -------------------------------------------------------------------------------------------------
def seed_demo(conn: psycopg.Connection[Any]) -> None:
    """A maintenance template, one send to the first community with its messages handed to the outbox and
    two delivery outcomes, on top of the demo's data. A second call adds nothing."""
    restore_defaults(conn)
    conn.execute(
        """INSERT INTO sms_template (code, name, body) VALUES ('maintenance', '管网检修通知',
           '尊敬的{customer_name}，{community}燃气管网将于本周六8:00-12:00检修，期间暂停供气，给您带来不便敬请谅解。')
           ON CONFLICT (code) DO NOTHING"""
    )
    if conn.execute("SELECT 1 FROM sms_batch WHERE condition ->> 'demo' = 'maintenance'").fetchone():
        return
    community = conn.execute(
        "SELECT co.code FROM community co JOIN account a ON a.community_id = co.id ORDER BY co.id LIMIT 1"
    ).fetchone()
    if community is None:
        return
    template = get_template(conn, "maintenance")
    found = recipients(conn, Condition("community", community[0]))[:8]
    batch = conn.execute(
        "INSERT INTO sms_batch (origin, template_id, body, condition, recipients) VALUES ('manual', %s, %s, %s, %s) "
        "RETURNING id",
        [
            template.id,
            template.body,
            Jsonb({"kind": "community", "value": community[0], "demo": "maintenance"}),
            len(found),
        ],
    ).fetchone()
    assert batch is not None
    for n, r in enumerate(found):
        phone = r.phone if r.phone_ok else f"1380000{n:04d}"
        text = render(template.body, r.values)
        row = conn.execute(
            """INSERT INTO sms_message (batch_id, recipient_kind, account_id, customer_id, recipient_name, phone,
                      body) VALUES (%s, 'customer', %s, %s, %s, %s, %s) RETURNING id""",
            [batch[0], r.account_id, r.customer_id, r.name, phone, text],
        ).fetchone()
        assert row is not None
        outcome = OutboxGateway().send(conn, Outgoing(row[0], phone, text, 0))
        state = "failed" if n == 1 else "delivered" if n % 2 == 0 else "sent"
        conn.execute(
            """UPDATE sms_message SET state = %s, attempts = 1, gateway = 'outbox', provider_message_id = %s,
                      sent_at = clock_timestamp(), error = %s,
                      finished_at = CASE WHEN %s = 'sent' THEN NULL ELSE clock_timestamp() END WHERE id = %s""",
            [state, outcome.provider_id, "not delivered (UNDELIV)" if state == "failed" else "", state, row[0]],
        )


def now_utc() -> datetime:
    return datetime.now(UTC)
