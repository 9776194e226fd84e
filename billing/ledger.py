"""Account positions from the append-only ledger: what is due per bill, late fees, credit.

`positions` is the one function behind every balance that is shown or paid. It replays an account's ledger
in booking order (`booked_on`, then id), leaving out reversed entries and their reversals (a reversed
payment never happened), and:

- opens a bill at its charge; accrues late fees on each bill's unpaid principal between events;
- pools payments, prepayments (预收费) and the excess of waivers as credit, and applies the pool to the open
  bills after every event. **Allocation order:** oldest bill first (by bill period, then bill id); within a
  bill the late fee before the principal (先滞纳金后本金). Credit left over waits for the next bill;
- applies a waiver to the bill and component (principal or late fee) it names.

Late fees (`LateFeeRule`, table `late_fee_rule`): the last day without a fee is `due_date + grace_days`;
from the day after, a fee accrues on the principal still unpaid: `daily_rate` per day, `stepped` daily
rates by day of lateness, or a `fixed` amount once. Each accrual between two events is rounded to the fen
(billing.rounding); per bill the fees never exceed the cap (`cap_amount`, `cap_pct` of the bill amount).
Fees accrued but not yet in the ledger are `unposted_fee`; a payment or waiver posts them first, so the
ledger balance plus the unposted fees is always what the customer owes (`total_due`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import psycopg

from billing.rounding import round_money

ZERO = Decimal("0.00")
LateFeeMethod = Literal["none", "daily_rate", "fixed", "stepped"]


class LedgerError(ValueError):
    """A ledger operation that is refused (nothing was written)."""


@dataclass(frozen=True)
class LateFeeRule:
    method: LateFeeMethod = "none"
    daily_rate: Decimal = Decimal(0)
    fixed_amount: Decimal = Decimal(0)
    steps: tuple[tuple[int, Decimal], ...] = ()  # (first day of lateness, daily rate), ascending
    grace_days: int = 0
    cap_pct: Decimal | None = None
    cap_amount: Decimal | None = None

    def cap(self, bill_amount: Decimal) -> Decimal | None:
        caps = [c for c in (self.cap_amount, None if self.cap_pct is None else bill_amount * self.cap_pct / 100)]
        known = [c for c in caps if c is not None]
        return round_money(min(known)) if known else None

    def _rate_days(self, first_day: int, last_day: int) -> Decimal:
        """Sum of the daily rates over days of lateness first_day..last_day (1 = the first late day)."""
        if self.method == "daily_rate":
            return self.daily_rate * (last_day - first_day + 1)
        total = Decimal(0)
        for index, (start, rate) in enumerate(self.steps):
            end = self.steps[index + 1][0] - 1 if index + 1 < len(self.steps) else last_day
            low, high = max(start, first_day), min(end, last_day)
            if high >= low:
                total += rate * (high - low + 1)
        return total

    def accrue(self, principal: Decimal, due_date: dt.date, after: dt.date, upto: dt.date) -> Decimal:
        """The fee on `principal` unpaid over the days after `after` up to and including `upto`."""
        last_free = due_date + dt.timedelta(days=self.grace_days)
        first = max(after, last_free)
        if self.method == "none" or principal <= 0 or upto <= first:
            return ZERO
        if self.method == "fixed":
            return self.fixed_amount if after <= last_free else ZERO
        days = self._rate_days((first - last_free).days + 1, (upto - last_free).days)
        return round_money(principal * days)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> LateFeeRule:
        steps = row.get("steps") or []
        if isinstance(steps, str):
            steps = json.loads(steps)
        return cls(
            method=row["method"],
            daily_rate=Decimal(row.get("daily_rate") or 0),
            fixed_amount=Decimal(row.get("fixed_amount") or 0),
            steps=tuple(sorted((int(s["from_day"]), Decimal(str(s["daily_rate"]))) for s in steps)),
            grace_days=int(row.get("grace_days") or 0),
            cap_pct=None if row.get("cap_pct") is None else Decimal(row["cap_pct"]),
            cap_amount=None if row.get("cap_amount") is None else Decimal(row["cap_amount"]),
        )


@dataclass
class BillPosition:
    bill_id: int
    account_id: int
    period: str
    period_start: dt.date
    due_date: dt.date
    amount: Decimal  # as billed
    principal_due: Decimal = ZERO
    fee_accrued: Decimal = ZERO  # all late fees of the bill so far, posted or not
    fee_posted: Decimal = ZERO
    fee_due: Decimal = ZERO
    accrued_through: dt.date | None = None

    @property
    def due(self) -> Decimal:
        return self.principal_due + self.fee_due

    @property
    def unposted_fee(self) -> Decimal:
        return self.fee_accrued - self.fee_posted


@dataclass
class AccountPosition:
    account_id: int
    as_of: dt.date
    ledger_balance: Decimal = ZERO
    credit: Decimal = ZERO  # paid in advance, waiting for the next bills
    bills: list[BillPosition] = field(default_factory=list)

    @property
    def unposted_fee(self) -> Decimal:
        return sum((b.unposted_fee for b in self.bills), ZERO)

    @property
    def total_due(self) -> Decimal:
        """What the customer owes now (negative: credit); the ledger balance plus unposted late fees."""
        return self.ledger_balance + self.unposted_fee

    @property
    def arrears(self) -> Decimal:
        """Due on bills past their due date (欠费)."""
        return sum((b.due for b in self.bills if b.due_date < self.as_of), ZERO)

    @property
    def open_bills(self) -> list[BillPosition]:
        return [b for b in self.bills if b.due > 0]

    def bill(self, period: str) -> BillPosition:
        for bill in self.bills:
            if bill.period == period:
                return bill
        raise LedgerError(f"account {self.account_id} has no bill for {period}")


@dataclass(frozen=True)
class Entry:
    id: int
    account_id: int
    entry_type: str
    amount: Decimal
    booked_on: dt.date
    bill_id: int | None
    component: str | None
    reverses_id: int | None


def replay(
    account_id: int,
    entries: Sequence[Entry],
    bills: dict[int, BillPosition],
    rules: dict[int, LateFeeRule],
    as_of: dt.date,
) -> AccountPosition:
    """The position of one account as of a day from its entries (booked up to that day) and bills."""
    position = AccountPosition(account_id, as_of)
    entries = sorted((e for e in entries if e.booked_on <= as_of), key=lambda e: (e.booked_on, e.id))
    reversed_ids = {e.reverses_id for e in entries if e.reverses_id is not None}
    open_bills: list[BillPosition] = []
    pool = ZERO

    def accrue(upto: dt.date) -> None:
        for bill in open_bills:
            through = bill.accrued_through or upto
            if upto > through:
                rule = rules.get(bill.bill_id, LateFeeRule())
                fee = rule.accrue(bill.principal_due, bill.due_date, through, upto)
                cap = rule.cap(bill.amount)
                if cap is not None:
                    fee = max(min(fee, cap - bill.fee_accrued), ZERO)
                bill.fee_accrued += fee
                bill.fee_due += fee
                bill.accrued_through = upto

    def allocate() -> None:
        nonlocal pool
        for bill in open_bills:
            if pool <= 0:
                return
            for part in ("fee_due", "principal_due"):
                take = min(pool, getattr(bill, part))
                if take > 0:
                    setattr(bill, part, getattr(bill, part) - take)
                    pool -= take

    for entry in entries:
        position.ledger_balance += entry.amount
        if entry.entry_type == "late_fee" and entry.bill_id in bills:
            bills[entry.bill_id].fee_posted += entry.amount
        if entry.entry_type == "reversal" or entry.id in reversed_ids or entry.entry_type == "late_fee":
            continue
        accrue(entry.booked_on)
        if entry.entry_type == "charge" and entry.bill_id in bills:
            bill = bills[entry.bill_id]
            bill.principal_due += entry.amount
            bill.accrued_through = entry.booked_on
            if bill not in open_bills:
                open_bills.append(bill)
                open_bills.sort(key=lambda b: (b.period_start, b.bill_id))
        elif entry.entry_type == "waiver" and entry.bill_id in bills:
            bill, amount = bills[entry.bill_id], -entry.amount
            part = "fee_due" if entry.component == "late_fee" else "principal_due"
            take = min(amount, max(getattr(bill, part), ZERO))
            setattr(bill, part, getattr(bill, part) - take)
            pool += amount - take
        else:  # payment, prepayment, or a charge without its bill
            pool -= entry.amount
        allocate()
    accrue(as_of)
    allocate()
    position.credit = pool
    position.bills = sorted(bills.values(), key=lambda b: (b.period_start, b.bill_id))
    return position


def load_rules(conn: psycopg.Connection[Any]) -> dict[int | None, LateFeeRule]:
    """Late-fee rules by usage type id (None: the default rule)."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        rows = cursor.execute("SELECT * FROM late_fee_rule").fetchall()
    return {row["usage_type_id"]: LateFeeRule.from_row(row) for row in rows}


def positions(
    conn: psycopg.Connection[Any], account_ids: Iterable[int], as_of: dt.date | None = None
) -> dict[int, AccountPosition]:
    """Positions of accounts as of a day (default today): two queries, then a replay per account."""
    ids = sorted(set(account_ids))
    as_of = as_of or dt.date.today()
    rules = load_rules(conn)
    default = rules.get(None, LateFeeRule())
    bills: dict[int, dict[int, BillPosition]] = defaultdict(dict)
    bill_rules: dict[int, LateFeeRule] = {}
    for bill_id, account_id, period, start, due, amount, usage in conn.execute(
        "SELECT id, account_id, period, period_start, due_date, amount, usage_type_id FROM bill "
        "WHERE account_id = ANY(%s) AND issued_on <= %s",
        [ids, as_of],
    ):
        bills[account_id][bill_id] = BillPosition(bill_id, account_id, period, start, due, amount)
        bill_rules[bill_id] = rules.get(usage, default)
    entries: dict[int, list[Entry]] = defaultdict(list)
    for row in conn.execute(
        "SELECT id, account_id, entry_type, amount, booked_on, bill_id, component, reverses_id FROM ledger_entry "
        "WHERE account_id = ANY(%s) AND booked_on <= %s",
        [ids, as_of],
    ):
        entries[row[1]].append(Entry(*row))
    return {i: replay(i, entries[i], bills[i], bill_rules, as_of) for i in ids}


def position(conn: psycopg.Connection[Any], account_id: int, as_of: dt.date | None = None) -> AccountPosition:
    """The position of one account (see `positions`)."""
    return positions(conn, [account_id], as_of)[account_id]


def insert_entry(
    conn: psycopg.Connection[Any],
    account_id: int,
    entry_type: str,
    amount: Decimal,
    booked_on: dt.date,
    actor: str,
    **links: object,
) -> int:
    """Append one ledger entry; `links`: bill_id, component, payment_id, waiver_id, reverses_id, note."""
    columns = ["account_id", "entry_type", "amount", "booked_on", "actor", *links]
    row = conn.execute(
        f"INSERT INTO ledger_entry ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) RETURNING id",
        [account_id, entry_type, amount, booked_on, actor, *links.values()],
    ).fetchone()
    assert row is not None
    return int(row[0])


def post_late_fees(
    conn: psycopg.Connection[Any], position: AccountPosition, actor: str, bill_id: int | None = None
) -> Decimal:
    """Post the account's unposted late fees (of one bill, or all) to the ledger; returns their sum."""
    posted = ZERO
    for bill in position.bills:
        if (bill_id is None or bill.bill_id == bill_id) and bill.unposted_fee > 0:
            insert_entry(
                conn, bill.account_id, "late_fee", bill.unposted_fee, position.as_of, actor, bill_id=bill.bill_id
            )
            posted += bill.unposted_fee
            position.ledger_balance += bill.unposted_fee
            bill.fee_posted = bill.fee_accrued
    return posted
