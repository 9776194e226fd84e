"""Automatic SMS notices (自动通知): a scan finds the events below and queues one message per event, with an
idempotency key per notice, so running the scan again adds nothing.

| kind          | event                                                     | key                         |
|---------------|-----------------------------------------------------------|-----------------------------|
| reading       | a bill issued (抄表通知: volume, amount, due date)          | reading:<bill id>           |
| arrears       | arrears ≥ min_amount, oldest overdue bill ≥ min_days late | arrears:<account>:<bill>[:n]|
| bank_success  | a bank withholding result with outcome success            | bank:<bank_result id>       |
| bank_failure  | …with outcome failure (the bank's message is {reason})    | bank:<bank_result id>       |
| supply_stop   | a planned-stop notice served (command_notice)             | supply_stop:<notice id>     |
| low_credit    | a low_credit meter event (prepaid)                        | low_credit:<event id>       |
| valve_closed  | a valve_close command confirmed                           | valve_closed:<command id>   |

A planned-stop notice tells the customer the earliest time the valve may be closed: served_at plus the hours
of the command rule `notice_period` (the notice period the command rules demand before a planned close).

Each notice kind has a row in `sms_notice_rule`: on or off, its template and its knobs (`lookback_days`:
events older than this are not notified — so switching a notice on does not message years of history;
arrears: `min_amount`, `min_days_overdue`, `repeat_days` — 0: once per overdue bill, n: again every n days).
A kind without a row is off. Bank results get `notified_at` set when their notice is queued.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from meterhub import sms
from meterhub.sms import ArrearsFn, SmsError, sql_arrears
from meterhub.store import Store

log = logging.getLogger(__name__)

KINDS = ("reading", "arrears", "bank_success", "bank_failure", "supply_stop", "low_credit", "valve_closed")
_BASE = ("customer_name", "customer_no", "account_no", "address", "community", "phone")
VALUES: dict[str, tuple[str, ...]] = {
    "reading": (*_BASE, "period", "volume", "amount", "due_date"),
    "arrears": (*_BASE, "amount", "due_date", "days_overdue"),
    "bank_success": (*_BASE, "amount", "reason", "period"),
    "bank_failure": (*_BASE, "amount", "reason", "period"),
    "supply_stop": (*_BASE, "reason", "stop_after"),
    "low_credit": (*_BASE, "meter_no", "balance"),
    "valve_closed": (*_BASE, "meter_no", "closed_at"),
}
_CUSTOMER = """a.account_no, a.address, cu.customer_no, cu.name AS customer_name, cu.phone,
               coalesce(co.name, '') AS community"""
_JOIN = """JOIN customer cu ON cu.id = a.customer_id LEFT JOIN community co ON co.id = a.community_id"""


@dataclass(frozen=True)
class NoticeRule:
    kind: str
    enabled: bool
    template_code: str
    template_id: int
    template_body: str
    template_active: bool
    params: dict[str, Any]
    updated_at: datetime


def rules(conn: psycopg.Connection[Any]) -> dict[str, NoticeRule]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT r.kind, r.enabled, r.template_code, t.id AS template_id, t.body AS template_body,
                      t.active AS template_active, r.params, r.updated_at
                 FROM sms_notice_rule r JOIN sms_template t ON t.code = r.template_code ORDER BY r.id"""
        ).fetchall()
    found = {r["kind"]: NoticeRule(**r) for r in rows}
    return {k: found[k] for k in KINDS if k in found}


def _int(params: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = params.get(name, 7 if name == "lookback_days" else 0)
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SmsError("bad_param", f"{name}: a whole number {low}–{high}", field=name, detail=name) from None
    if not low <= number <= high:
        raise SmsError("bad_param", f"{name}: a whole number {low}–{high}", field=name, detail=name)
    return number


def clean_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The knobs of a notice kind, checked (money as a decimal string)."""
    if kind == "arrears":
        return {
            "min_amount": str(sms.parse_money(str(params.get("min_amount", "0")), "min_amount")),
            "min_days_overdue": _int(params, "min_days_overdue", 0, 3650),
            "repeat_days": _int(params, "repeat_days", 0, 365),
        }
    return {"lookback_days": _int(params, "lookback_days", 1, 365)}


def save_rule(
    conn: psycopg.Connection[Any], kind: str, *, enabled: bool, template_code: str, params: Mapping[str, Any]
) -> NoticeRule:
    """Switch a notice on or off, choose its template, set its knobs. A template using a placeholder the
    notice cannot fill is refused."""
    if kind not in KINDS:
        raise SmsError("bad_kind", f"unknown notice {kind!r}", field="kind", status=404)
    template = sms.get_template(conn, template_code.strip())
    unfit = [p for p in template.placeholders if p not in VALUES[kind]]
    if unfit:
        raise SmsError(
            "unfit_template",
            f"template {template.code!r} uses {', '.join('{' + p + '}' for p in unfit)}, which this notice cannot fill",
            field="template",
            detail=", ".join("{" + p + "}" for p in unfit),
        )
    clean = clean_params(kind, params)
    conn.execute(
        """INSERT INTO sms_notice_rule (kind, enabled, template_code, params) VALUES (%s, %s, %s, %s)
           ON CONFLICT (kind) DO UPDATE SET enabled = EXCLUDED.enabled, template_code = EXCLUDED.template_code,
                  params = EXCLUDED.params""",
        [kind, enabled, template.code, Jsonb(clean)],
    )
    return rules(conn)[kind]


# -- the scan ---------------------------------------------------------------------------------------------
def scan(
    store: Store,
    *,
    arrears: ArrearsFn = sql_arrears,
    now: datetime | None = None,
    kinds: Iterable[str] | None = None,
) -> dict[str, int]:
    """Queue the notices of every enabled kind (one transaction per kind); messages added per kind. A kind
    whose template cannot be rendered is reported (-1) and logged; the others go on."""
    now = now or datetime.now(UTC)
    zone = ZoneInfo(store.settings.timezone)
    wanted = set(kinds) if kinds is not None else set(KINDS)
    added: dict[str, int] = {}
    with store.connection() as conn:
        active = rules(conn)
    for kind in KINDS:
        rule = active.get(kind)
        if kind not in wanted or rule is None or not rule.enabled or not rule.template_active:
            continue
        try:
            with store.transaction(actor=sms.ACTOR) as conn:
                added[kind] = _SCANS[kind](conn, rule, now, zone, arrears)
        except SmsError as exc:
            log.error("SMS notice %s not sent: %s", kind, exc.message)
            added[kind] = -1
    return added


def _queue(
    conn: psycopg.Connection[Any],
    rule: NoticeRule,
    key: str,
    row: Mapping[str, Any],
    extra: Mapping[str, Any],
    zone: ZoneInfo,
) -> int:
    values = {name: row[name] for name in _BASE if name in row}
    values.update(extra)
    text = sms.render(rule.template_body, values, zone)
    added = sms.queue_notice(
        conn,
        kind=rule.kind,
        key=key,
        template_id=rule.template_id,
        text=text,
        account_id=row["account_id"],
        phone=row["phone"],
        name=row["customer_name"],
    )
    return int(added)


def _since(rule: NoticeRule, now: datetime) -> datetime:
    return now - timedelta(days=int(rule.params.get("lookback_days", 7)))


def _fresh(conn: psycopg.Connection[Any], query: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def _reading(conn: psycopg.Connection[Any], rule: NoticeRule, now: datetime, zone: ZoneInfo, _a: ArrearsFn) -> int:
    rows = _fresh(
        conn,
        f"""SELECT b.id, b.account_id, b.period, b.volume_m3, b.amount, b.due_date, {_CUSTOMER}
              FROM bill b JOIN account a ON a.id = b.account_id {_JOIN}
             WHERE b.issued_on >= %(since)s
               AND NOT EXISTS (SELECT 1 FROM sms_message s WHERE s.idempotency_key = 'reading:' || b.id)
             ORDER BY b.id""",
        {"since": _since(rule, now).astimezone(zone).date()},
    )
    extra = ("period", "amount", "due_date")
    return sum(
        _queue(conn, rule, f"reading:{r['id']}", r, {**{k: r[k] for k in extra}, "volume": str(r["volume_m3"])}, zone)
        for r in rows
    )


def _arrears(conn: psycopg.Connection[Any], rule: NoticeRule, now: datetime, zone: ZoneInfo, fn: ArrearsFn) -> int:
    today = now.astimezone(zone).date()
    minimum = Decimal(str(rule.params.get("min_amount", "0")))
    min_days = int(rule.params.get("min_days_overdue", 0))
    repeat = int(rule.params.get("repeat_days", 0))
    held = fn(conn, sms.debtor_ids(conn, today), today)
    due = {
        i: a
        for i, a in held.items()
        if a.amount > 0 and a.amount >= minimum and a.oldest_due is not None and (today - a.oldest_due).days >= min_days
    }
    if not due:
        return 0
    rows = _fresh(
        conn,
        f"SELECT a.id AS account_id, {_CUSTOMER} FROM account a {_JOIN} WHERE a.id = ANY(%(ids)s) "
        "AND a.status <> 'closed' ORDER BY a.id",
        {"ids": sorted(due)},
    )
    added = 0
    for r in rows:
        info = due[r["account_id"]]
        assert info.oldest_due is not None
        days = (today - info.oldest_due).days
        key = f"arrears:{r['account_id']}:{info.oldest_bill_id}"
        if repeat > 0:
            key += f":{(days - min_days) // repeat}"
        extra = {"amount": info.amount, "due_date": info.oldest_due, "days_overdue": days}
        added += _queue(conn, rule, key, r, extra, zone)
    return added


def _bank(outcome: str) -> Any:
    def scan_bank(conn: psycopg.Connection[Any], rule: NoticeRule, now: datetime, zone: ZoneInfo, _a: ArrearsFn) -> int:
        rows = _fresh(
            conn,
            f"""SELECT r.id, r.amount, r.message, b.period, a.id AS account_id, {_CUSTOMER}
                  FROM bank_result r JOIN bank_export_row er ON er.reference = r.reference
                  JOIN account a ON a.id = er.account_ids[1] {_JOIN}
                  LEFT JOIN bill b ON b.id = er.bill_id
                 WHERE r.outcome = %(outcome)s AND r.created_at >= %(since)s
                   AND NOT EXISTS (SELECT 1 FROM sms_message s WHERE s.idempotency_key = 'bank:' || r.id)
                 ORDER BY r.id""",
            {"outcome": outcome, "since": _since(rule, now)},
        )
        added = 0
        for r in rows:
            extra = {"amount": r["amount"], "reason": r["message"] or "—", "period": r["period"] or ""}
            added += _queue(conn, rule, f"bank:{r['id']}", r, extra, zone)
            conn.execute(
                "UPDATE bank_result SET notified_at = %s WHERE id = %s AND notified_at IS NULL", [now, r["id"]]
            )
        return added

    return scan_bank


def notice_hours(conn: psycopg.Connection[Any]) -> int:
    """The notice period of the command rules (rule notice_period, hours; 48 when absent)."""
    row = conn.execute("SELECT params ->> 'hours' FROM command_rule WHERE code = 'notice_period'").fetchone()
    try:
        return int(row[0]) if row and row[0] is not None else 48
    except ValueError:
        return 48


def _supply_stop(conn: psycopg.Connection[Any], rule: NoticeRule, now: datetime, zone: ZoneInfo, _a: ArrearsFn) -> int:
    hours = notice_hours(conn)
    rows = _fresh(
        conn,
        f"""SELECT n.id, n.served_at, n.note, a.id AS account_id, {_CUSTOMER}
              FROM command_notice n JOIN account a ON a.id = n.account_id {_JOIN}
             WHERE n.served_at >= %(since)s
               AND NOT EXISTS (SELECT 1 FROM sms_message s WHERE s.idempotency_key = 'supply_stop:' || n.id)
             ORDER BY n.id""",
        {"since": _since(rule, now)},
    )
    added = 0
    for r in rows:
        extra = {"reason": r["note"] or "计划作业", "stop_after": r["served_at"] + timedelta(hours=hours)}
        added += _queue(conn, rule, f"supply_stop:{r['id']}", r, extra, zone)
    return added


def _low_credit(conn: psycopg.Connection[Any], rule: NoticeRule, now: datetime, zone: ZoneInfo, _a: ArrearsFn) -> int:
    rows = _fresh(
        conn,
        f"""SELECT e.id, m.meter_no, a.id AS account_id,
                   coalesce(e.detail ->> 'balance_cny', e.detail ->> 'credit_cny', e.detail ->> 'balance') AS reported,
                   (SELECT -sum(l.amount) FROM ledger_entry l WHERE l.account_id = a.id) AS ledger_credit,
                   {_CUSTOMER}
              FROM meter_event e JOIN meter m ON m.id = e.meter_id JOIN account a ON a.id = m.account_id {_JOIN}
             WHERE e.kind = 'low_credit' AND e.ts >= %(since)s
               AND NOT EXISTS (SELECT 1 FROM sms_message s WHERE s.idempotency_key = 'low_credit:' || e.id)
             ORDER BY e.id""",
        {"since": _since(rule, now)},
    )
    added = 0
    for r in rows:
        try:
            balance: Decimal | str = Decimal(r["reported"]) if r["reported"] is not None else r["ledger_credit"]
        except ArithmeticError:
            balance = r["ledger_credit"]
        extra = {"meter_no": r["meter_no"], "balance": balance if balance is not None else "—"}
        added += _queue(conn, rule, f"low_credit:{r['id']}", r, extra, zone)
    return added


def _valve_closed(conn: psycopg.Connection[Any], rule: NoticeRule, now: datetime, zone: ZoneInfo, _a: ArrearsFn) -> int:
    rows = _fresh(
        conn,
        f"""SELECT c.id, m.meter_no, coalesce(c.finished_at, c.updated_at) AS closed_at, a.id AS account_id,
                   {_CUSTOMER}
              FROM meter_command c JOIN meter m ON m.id = c.meter_id JOIN account a ON a.id = m.account_id {_JOIN}
             WHERE c.kind = 'valve_close' AND c.state = 'confirmed'
               AND coalesce(c.finished_at, c.updated_at) >= %(since)s
               AND NOT EXISTS (SELECT 1 FROM sms_message s WHERE s.idempotency_key = 'valve_closed:' || c.id)
             ORDER BY c.id""",
        {"since": _since(rule, now)},
    )
    return sum(
        _queue(conn, rule, f"valve_closed:{r['id']}", r, {"meter_no": r["meter_no"], "closed_at": r["closed_at"]}, zone)
        for r in rows
    )


_SCANS = {
    "reading": _reading,
    "arrears": _arrears,
    "bank_success": _bank("success"),
    "bank_failure": _bank("failure"),
    "supply_stop": _supply_stop,
    "low_credit": _low_credit,
    "valve_closed": _valve_closed,
}


def today_in(store: Store) -> date:
    return datetime.now(ZoneInfo(store.settings.timezone)).date()
