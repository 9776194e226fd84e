"""The demo utility's billing history: every complete month of readings validated, reviewed and billed,
and paid the way customers pay — most on time, some late (with late fees), a few not at all (arrears).

Month by month, as the staff would: validate the period, approve the readings (older months fully
reviewed; the last month only what raised no flag, so its flagged readings wait in the review queue),
run the bills, record the payments that have fallen due by today. Each step is skipped when it was done
before, and a payment is recorded once per account and month, so a later start only adds what has come
due since (the last month's bills get paid as their days arrive).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from meterhub.demo_data import month_start
from meterhub.store import Store

CLERK = "clerk"  # reviews readings and runs bills
CASHIER = "cashier"
DUE_DAYS = 15
TOP_UP = Decimal("300.00")  # prepaid accounts keep about this much credit
LOW_TOP_UP = Decimal("100.00")  # … except the few that let it run down


@dataclass
class BillingHistory:
    periods: list[str] = field(default_factory=list)  # billed in this start
    bills: int = 0
    payments: int = 0
    late_payments: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, step: str, since: float) -> None:
        self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - since


def share(*key: object) -> float:
    """A stable number in [0, 1) for a key: who pays late, on which day."""
    return zlib.crc32(":".join(str(k) for k in key).encode()) / 2**32


def billing_months(today: date, first_day: date) -> list[str]:
    """The complete months of the history: their start after its first day, their end before this month."""
    months = []
    month = month_start(first_day + timedelta(days=1))
    if month <= first_day:
        month = month_start(month + timedelta(days=32))
    while month < month_start(today):
        months.append(f"{month:%Y-%m}")
        month = month_start(month + timedelta(days=32))
    return months


def issue_day(period: str, today: date) -> date:
    """Bills of a month are issued on the 3rd of the next month (today at the latest)."""
    start = date.fromisoformat(f"{period}-01")
    return min(month_start(start + timedelta(days=32)) + timedelta(days=2), today)


def months_ago(period: str, today: date) -> int:
    start = date.fromisoformat(f"{period}-01")
    return (today.year * 12 + today.month) - (start.year * 12 + start.month)


def seed_billing(
    store: Store, today: date, first_day: date, tick: Callable[[str], None] = lambda _: None
) -> BillingHistory:
    """Validate, review, bill and pay every complete month of the history that is not done yet."""
    from billing.bill_run import run_bills
    from billing.review import accept_unflagged, estimate_readings
    from billing.review_run import validate_period

    done = BillingHistory()
    months = billing_months(today, first_day)
    for period in months:
        tick(period)
        with store.connection() as conn:
            billed = conn.execute(
                "SELECT 1 FROM bill_run WHERE period = %s AND status = 'committed'", [period]
            ).fetchone()
        if not billed:
            clock = time.perf_counter()
            validate_period(store, period, actor=CLERK)
            done.add_time("validate", clock)
            clock = time.perf_counter()
            if period == months[-1]:
                accept_unflagged(store, period, actor=CLERK)
            else:
                accept_unflagged(store, period, actor=CLERK, allow_severities=("info", "warning", "error"),
                                 reason="reviewed")  # fmt: skip
                with store.connection() as conn:
                    ids = [
                        r[0]
                        for r in conn.execute(
                            """SELECT id FROM reading_review WHERE period = %s AND status = 'pending'
                                  AND estimate_m3 IS NOT NULL AND start_value IS NOT NULL""",
                            [period],
                        ).fetchall()
                    ]
                if ids:
                    estimate_readings(store, ids, actor=CLERK, reason="no reading in the period: estimated")
            done.add_time("review", clock)
            clock = time.perf_counter()
            result = run_bills(store, period, actor=CLERK, issued_on=issue_day(period, today), due_days=DUE_DAYS)
            done.add_time("bill", clock)
            done.periods.append(period)
            done.bills += result.bills_created
        clock = time.perf_counter()
        paid, late = pay_period(store, period, today)
        done.add_time("pay", clock)
        done.payments += paid
        done.late_payments += late
    return done


@dataclass(frozen=True)
class Payer:
    account_id: int
    account_no: str
    billing_mode: str
    bill_amount: Decimal


def _payers(conn: psycopg.Connection[Any], period: str) -> tuple[list[Payer], set[int]]:
    rows = conn.execute(
        """SELECT b.account_id, a.account_no, a.billing_mode, b.amount FROM bill b JOIN account a ON a.id = b.account_id
            WHERE b.period = %s ORDER BY b.account_id""",
        [period],
    ).fetchall()
    paid = {r[0] for r in conn.execute("SELECT account_id FROM payment WHERE note = %s", [f"demo {period}"])}
    return [Payer(*r) for r in rows], paid


def pay_period(store: Store, period: str, today: date) -> tuple[int, int]:
    """Record the period's payments that are due by today and not recorded yet: (on time, late)."""
    from billing.ledger import position
    from billing.payments import pay

    issued = issue_day(period, today)
    due = issued + timedelta(days=DUE_DAYS)
    back = months_ago(period, today)
    with store.connection() as conn:
        payers, paid = _payers(conn, period)
    on_time: list[tuple[int, Decimal, date, str]] = []
    late: list[tuple[Payer, date]] = []
    top_ups: list[tuple[int, Decimal, date, str]] = []
    for p in payers:
        no = p.account_no
        prepaid = p.billing_mode == "prepaid_account"
        runs_low = prepaid and share(no, "low") < 0.05
        if prepaid:  # the first top-up, before the account's first bill (recorded once)
            top_ups.append((p.account_id, LOW_TOP_UP if runs_low else TOP_UP, issued - timedelta(days=5), "counter"))
        if p.account_id in paid or p.bill_amount <= 0:
            continue
        if runs_low and back <= 2:
            continue  # lets the credit run down
        if not prepaid and share(no, "stop") < 0.04 and back <= 1 + int(share(no, "months") * 3):
            continue  # stopped paying: arrears
        if not prepaid and share(no, "late") < 0.015:
            late.append((p, due + timedelta(days=5 + int(share(no, period, "day") * 40))))
            continue
        paid_on = issued + timedelta(days=1 + int(share(no, period, "day") * (DUE_DAYS - 2)))
        channel = "bank" if share(no, "bank") < 0.4 else "counter"
        on_time.append((p.account_id, p.bill_amount, paid_on, channel))
    written = _insert_payments(store, period, top_ups, "demo top-up", today)
    written += _insert_payments(store, period, on_time, f"demo {period}", today)
    late_written = 0
    for payer, paid_on in late:
        if paid_on > today:
            continue
        with store.connection() as conn:
            owed = position(conn, payer.account_id, paid_on).total_due
        if owed > 0:
            pay(store, owed, CASHIER, account_no=payer.account_no, paid_on=paid_on, note=f"demo {period}")
            late_written += 1
    return written, late_written


_PAYMENTS = """
WITH given AS (
    SELECT * FROM unnest(%(accounts)s::bigint[], %(amounts)s::numeric[], %(days)s::date[], %(channels)s::text[])
           AS g (account_id, amount, paid_on, channel)
     WHERE g.paid_on <= %(today)s
       AND NOT EXISTS (SELECT 1 FROM payment p WHERE p.account_id = g.account_id AND p.note = %(note)s)
), paid AS (
    INSERT INTO payment (account_id, channel, amount, paid_on, paid_at, actor, bank_reference, note)
    SELECT account_id, channel, amount, paid_on, (paid_on + time '10:30') AT TIME ZONE %(tz)s,
           CASE channel WHEN 'bank' THEN 'bank:ICBC' ELSE %(cashier)s END,
           CASE channel WHEN 'bank' THEN 'ICBC-' || to_char(paid_on, 'YYYYMMDD') || '-' || account_id END, %(note)s
      FROM given
    RETURNING id, account_id, amount, paid_on, actor, paid_at
), booked AS (
    INSERT INTO ledger_entry (account_id, entry_type, amount, booked_on, actor, payment_id)
    SELECT account_id, %(entry_type)s, -amount, paid_on, actor, id FROM paid
), receipts AS (
    INSERT INTO receipt (receipt_no, payment_id, issued_at)
    SELECT 'R' || to_char(paid_on, 'YYYYMMDD') || lpad(id::text, 8, '0'), id, paid_at FROM paid
    RETURNING id, payment_id, issued_at
)
INSERT INTO receipt_print (receipt_id, printed_at, printed_by, reprint)
SELECT r.id, r.issued_at, p.actor, false FROM receipts r JOIN paid p ON p.id = r.payment_id
"""


def _insert_payments(
    store: Store, period: str, rows: list[tuple[int, Decimal, date, str]], note: str, today: date
) -> int:
    """Payments of exactly the amounts given (bills paid on time, top-ups), with ledger entries and receipts."""
    if not rows:
        return 0
    params = {
        "accounts": [r[0] for r in rows],
        "amounts": [r[1] for r in rows],
        "days": [r[2] for r in rows],
        "channels": [r[3] for r in rows],
        "today": today,
        "note": note,
        "tz": store.settings.timezone,
        "cashier": CASHIER,
        "entry_type": "prepayment" if note == "demo top-up" else "payment",
    }
    with store.transaction(actor=CASHIER) as conn:
        return conn.execute(_PAYMENTS, params).rowcount
