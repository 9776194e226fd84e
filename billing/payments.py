"""Payments, reversals (冲账), waivers (免收费 / 滞纳金减免) and receipts, on the append-only ledger.

Every operation runs in one transaction that first locks the accounts it touches (`FOR UPDATE` on account),
computes their positions with `billing.ledger.positions`, posts the late fees accrued up to that day, and
then appends its entries. Money moves only as ledger entries; see billing.ledger for the allocation order.

- `pay`: a counter payment for an account found by account number or card number. What exceeds the amount
  due is booked as a `prepayment` entry: credit applied to the next bills (预收费).
- `pay_related`: one payment for all accounts of a group (关联用户), oldest bill first across the accounts;
  by default exactly what the group owes. An excess is credit on the paying account.
- `pay_batch`: 批量收费 — every account matching a condition (a community, or a list of account numbers)
  pays what it owes, one payment each, all in one transaction.
- `reverse_payment`: mirrors each ledger entry of a payment, at most once (unique `reverses_id`).
- `waive`: part or all of a bill's principal or late fee, with a reason, if the permission hook allows.

`pay`, `pay_related` and `pay_batch` record how the money was paid (收款方式, one of `PAYMENT_METHODS`) when
given one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from billing.ledger import ZERO, AccountPosition, LedgerError, insert_entry, positions, post_late_fees
from billing.rounding import round_money
from meterhub.store import Store

PermissionCheck = Callable[[psycopg.Connection[Any], str, str], bool]
Channel = Literal["counter", "group", "batch", "bank"]
PaymentMethod = Literal["cash", "card", "transfer", "wechat", "alipay", "cheque"]
PAYMENT_METHODS: tuple[PaymentMethod, ...] = ("cash", "card", "transfer", "wechat", "alipay", "cheque")


class PermissionDenied(LedgerError):
    """The actor lacks the permission for this operation."""


def role_permission(conn: psycopg.Connection[Any], actor: str, permission: str) -> bool:
    """The default permission hook: the actor's staff role is granted `permission` in role_permission."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM staff_user s JOIN role_permission p ON p.role = s.role "
        "WHERE s.username = %s AND s.active AND p.permission = %s)",
        [actor, permission],
    ).fetchone()
    return bool(row and row[0])


def _require(conn: psycopg.Connection[Any], check: PermissionCheck, actor: str, permission: str) -> None:
    if not check(conn, actor, permission):
        raise PermissionDenied(f"{actor} may not do {permission}")


@dataclass(frozen=True)
class PaymentResult:
    payment_id: int
    receipt_no: str
    amount: Decimal
    applied: dict[int, Decimal]  # account id -> paid towards what it owed
    credit: Decimal  # booked as prepayment on the paying account
    late_fees_posted: Decimal


@dataclass(frozen=True)
class BatchResult:
    batch_id: int | None
    payments: list[PaymentResult] = field(default_factory=list)

    @property
    def amount(self) -> Decimal:
        return sum((p.amount for p in self.payments), ZERO)


def _check_method(method: str | None) -> None:
    """收款方式 of a payment: one of PAYMENT_METHODS, or None (not recorded)."""
    if method is not None and method not in PAYMENT_METHODS:
        raise LedgerError(f"payment method must be one of {', '.join(PAYMENT_METHODS)}, not {method!r}")


def _money(amount: Decimal | str | int) -> Decimal:
    value = Decimal(str(amount))
    if value != round_money(value):
        raise LedgerError(f"amount {amount} has more than 2 decimals")
    return round_money(value)


def find_account(conn: psycopg.Connection[Any], account_no: str | None = None, card_no: str | None = None) -> int:
    """An account id by account number (户号) or card number."""
    if (account_no is None) == (card_no is None):
        raise LedgerError("give an account number or a card number")
    column = "account_no" if account_no is not None else "card_no"
    row = conn.execute(f"SELECT id FROM account WHERE {column} = %s", [account_no or card_no]).fetchone()
    if row is None:
        raise LedgerError(f"no account with {column.replace('_', ' ')} {account_no or card_no}")
    return int(row[0])


def lock_accounts(
    conn: psycopg.Connection[Any], account_ids: Sequence[int], as_of: dt.date
) -> dict[int, AccountPosition]:
    """Lock the accounts (in id order: no deadlocks) and return their positions."""
    conn.execute("SELECT id FROM account WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [list(account_ids)])
    return positions(conn, account_ids, as_of)


def pay_locked(
    conn: psycopg.Connection[Any],
    held: dict[int, AccountPosition],
    order: Sequence[int],
    payer: int,
    amount: Decimal,
    actor: str,
    paid_on: dt.date,
    channel: Channel,
    **payment: object,
) -> PaymentResult:
    """Post late fees, record the payment, allocate it over the accounts' open bills, oldest first."""
    fees = sum((post_late_fees(conn, held[i], actor) for i in order), ZERO)
    columns = ["account_id", "channel", "amount", "paid_on", "actor", *payment]
    row = conn.execute(
        f"INSERT INTO payment ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) RETURNING id",
        [payer, channel, amount, paid_on, actor, *payment.values()],
    ).fetchone()
    assert row is not None
    payment_id = int(row[0])
    rank = {account_id: n for n, account_id in enumerate(order)}
    bills = sorted(
        (b for i in order for b in held[i].open_bills),
        key=lambda b: (b.period_start, rank[b.account_id], b.bill_id),
    )
    applied: dict[int, Decimal] = {i: ZERO for i in order}
    left = amount
    for bill in bills:
        take = min(left, bill.due, max(held[bill.account_id].total_due - applied[bill.account_id], ZERO))
        applied[bill.account_id] += take
        left -= take
    for account_id in order:
        if applied[account_id] > 0:
            insert_entry(conn, account_id, "payment", -applied[account_id], paid_on, actor, payment_id=payment_id)
    if left > 0:
        insert_entry(conn, payer, "prepayment", -left, paid_on, actor, payment_id=payment_id)
    receipt_no = f"R{paid_on:%Y%m%d}{payment_id:08d}"
    receipt = conn.execute(
        "INSERT INTO receipt (receipt_no, payment_id) VALUES (%s, %s) RETURNING id", [receipt_no, payment_id]
    ).fetchone()
    assert receipt is not None
    conn.execute(
        "INSERT INTO receipt_print (receipt_id, printed_by, reprint) VALUES (%s, %s, false)", [receipt[0], actor]
    )
    return PaymentResult(payment_id, receipt_no, amount, {k: v for k, v in applied.items() if v}, left, fees)


def pay(
    store: Store,
    amount: Decimal | str,
    actor: str,
    account_no: str | None = None,
    card_no: str | None = None,
    paid_on: dt.date | None = None,
    channel: Channel = "counter",
    bank_reference: str | None = None,
    note: str = "",
    method: PaymentMethod | None = None,
) -> PaymentResult:
    """A payment for one account, found by account number or card number."""
    value = _money(amount)
    _check_method(method)
    if value <= 0:
        raise LedgerError("a payment must be positive")
    paid_on = paid_on or dt.date.today()
    with store.transaction(actor=actor) as conn:
        account_id = find_account(conn, account_no, card_no)
        held = lock_accounts(conn, [account_id], paid_on)
        return pay_locked(
            conn,
            held,
            [account_id],
            account_id,
            value,
            actor,
            paid_on,
            channel,
            card_no=card_no,
            bank_reference=bank_reference,
            note=note,
            method=method,
        )


def group_members(conn: psycopg.Connection[Any], account_id: int) -> tuple[int | None, list[int]]:
    """The account's group (关联用户) and its members ordered by account number (just the account if none)."""
    rows = conn.execute(
        "SELECT m.group_id, m.account_id FROM account_group_member m JOIN account a ON a.id = m.account_id "
        "WHERE m.group_id = (SELECT group_id FROM account_group_member WHERE account_id = %s) ORDER BY a.account_no",
        [account_id],
    ).fetchall()
    if not rows:
        return None, [account_id]
    return int(rows[0][0]), [int(r[1]) for r in rows]


def pay_related(
    store: Store,
    account_no: str,
    actor: str,
    amount: Decimal | str | None = None,
    paid_on: dt.date | None = None,
    method: PaymentMethod | None = None,
) -> PaymentResult:
    """One payment for every account of `account_no`'s group; default amount: what the group owes."""
    _check_method(method)
    paid_on = paid_on or dt.date.today()
    with store.transaction(actor=actor) as conn:
        payer = find_account(conn, account_no)
        group_id, members = group_members(conn, payer)
        held = lock_accounts(conn, members, paid_on)
        owed = sum((max(held[i].total_due, ZERO) for i in members), ZERO)
        value = owed if amount is None else _money(amount)
        if value <= 0:
            raise LedgerError(f"nothing to pay for the accounts related to {account_no}")
        return pay_locked(
            conn, held, members, payer, value, actor, paid_on, "group", group_id=group_id, method=method
        )


def pay_batch(
    store: Store,
    actor: str,
    community: str | None = None,
    account_nos: Sequence[str] | None = None,
    paid_on: dt.date | None = None,
    method: PaymentMethod | None = None,
) -> BatchResult:
    """批量收费: every account of a community or of a list pays what it owes now; all or nothing."""
    if (community is None) == (account_nos is None):
        raise LedgerError("give a community or a list of account numbers")
    _check_method(method)
    paid_on = paid_on or dt.date.today()
    with store.transaction(actor=actor) as conn:
        if community is not None:
            rows = conn.execute(
                "SELECT a.id FROM account a JOIN community c ON c.id = a.community_id WHERE c.code = %s "
                "ORDER BY a.account_no",
                [community],
            ).fetchall()
            condition: dict[str, object] = {"community": community}
        else:
            wanted = list(dict.fromkeys(account_nos or []))
            rows = conn.execute(
                "SELECT id, account_no FROM account WHERE account_no = ANY(%s) ORDER BY account_no", [wanted]
            ).fetchall()
            missing = sorted(set(wanted) - {r[1] for r in rows})
            if missing:
                raise LedgerError(f"unknown account numbers: {', '.join(missing)}")
            condition = {"account_nos": wanted}
        ids = [int(r[0]) for r in rows]
        held = lock_accounts(conn, ids, paid_on)
        owing = [i for i in ids if held[i].total_due > 0]
        if not owing:
            return BatchResult(None)
        total = sum((held[i].total_due for i in owing), ZERO)
        row = conn.execute(
            "INSERT INTO payment_batch (condition, created_by, accounts, amount) VALUES (%s, %s, %s, %s) RETURNING id",
            [Jsonb(condition), actor, len(owing), total],
        ).fetchone()
        assert row is not None
        batch_id = int(row[0])
        results = [
            pay_locked(
                conn, held, [i], i, held[i].total_due, actor, paid_on, "batch", batch_id=batch_id, method=method
            )
            for i in owing
        ]
        return BatchResult(batch_id, results)


def reverse_payment(
    store: Store,
    payment_id: int,
    actor: str,
    reason: str,
    reversed_on: dt.date | None = None,
    permission: PermissionCheck = role_permission,
) -> list[int]:
    """冲账: mirror every ledger entry of a payment; a payment is reversed at most once. Returns the entry ids."""
    if not reason.strip():
        raise LedgerError("a reversal needs a reason")
    reversed_on = reversed_on or dt.date.today()
    with store.transaction(actor=actor) as conn:
        _require(conn, permission, actor, "billing.reverse")
        entries = conn.execute(
            "SELECT e.id, e.account_id, e.amount, EXISTS (SELECT 1 FROM ledger_entry r WHERE r.reverses_id = e.id) "
            "FROM ledger_entry e WHERE e.payment_id = %s AND e.entry_type IN ('payment', 'prepayment') ORDER BY e.id",
            [payment_id],
        ).fetchall()
        if not entries:
            raise LedgerError(f"no payment {payment_id}")
        if any(done for *_, done in entries):
            raise LedgerError(f"payment {payment_id} is already reversed")
        conn.execute(
            "SELECT id FROM account WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [sorted({e[1] for e in entries})]
        )
        try:
            return [
                insert_entry(
                    conn,
                    account_id,
                    "reversal",
                    -amount,
                    reversed_on,
                    actor,
                    reverses_id=entry_id,
                    payment_id=payment_id,
                    note=reason,
                )
                for entry_id, account_id, amount, _ in entries
            ]
        except psycopg.errors.UniqueViolation as exc:  # a concurrent reversal won
            raise LedgerError(f"payment {payment_id} is already reversed") from exc


def waive(
    store: Store,
    account_no: str,
    period: str,
    component: Literal["principal", "late_fee"],
    amount: Decimal | str,
    reason: str,
    actor: str,
    waived_on: dt.date | None = None,
    permission: PermissionCheck = role_permission,
) -> int:
    """免收费 / 滞纳金减免: waive part or all of a bill's principal or late fee; returns the waiver id."""
    value = _money(amount)
    if value <= 0:
        raise LedgerError("a waiver must be positive")
    if not reason.strip():
        raise LedgerError("a waiver needs a reason")
    if component not in ("principal", "late_fee"):
        raise LedgerError(f"component must be principal or late_fee, not {component!r}")
    waived_on = waived_on or dt.date.today()
    with store.transaction(actor=actor) as conn:
        _require(conn, permission, actor, "billing.waive")
        account_id = find_account(conn, account_no)
        held = lock_accounts(conn, [account_id], waived_on)[account_id]
        bill = held.bill(period)
        post_late_fees(conn, held, actor)
        open_amount = bill.fee_due if component == "late_fee" else bill.principal_due
        if value > open_amount:
            raise LedgerError(f"cannot waive {value}: the bill {period} has {open_amount} of {component} open")
        row = conn.execute(
            "INSERT INTO waiver (account_id, bill_id, component, amount, reason, actor) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            [account_id, bill.bill_id, component, value, reason, actor],
        ).fetchone()
        assert row is not None
        insert_entry(
            conn,
            account_id,
            "waiver",
            -value,
            waived_on,
            actor,
            bill_id=bill.bill_id,
            component=component,
            waiver_id=row[0],
            note=reason,
        )
        return int(row[0])


@dataclass(frozen=True)
class Receipt:
    receipt_no: str
    payment_id: int
    account_no: str
    amount: Decimal
    paid_on: dt.date
    print_count: int
    reversed: bool

    @property
    def mark(self) -> str:
        """Printed on every copy after the first."""
        return "" if self.print_count <= 1 else f"重打 REPRINT {self.print_count - 1}"


def reprint_receipt(store: Store, receipt_no: str, actor: str) -> Receipt:
    """Print a receipt again: counted, logged and marked as a reprint."""
    with store.transaction(actor=actor) as conn:
        row = conn.execute(
            "UPDATE receipt SET print_count = print_count + 1 WHERE receipt_no = %s "
            "RETURNING id, payment_id, print_count",
            [receipt_no],
        ).fetchone()
        if row is None:
            raise LedgerError(f"no receipt {receipt_no}")
        conn.execute(
            "INSERT INTO receipt_print (receipt_id, printed_by, reprint) VALUES (%s, %s, true)", [row[0], actor]
        )
        detail = conn.execute(
            "SELECT a.account_no, p.amount, p.paid_on, EXISTS (SELECT 1 FROM ledger_entry e "
            "WHERE e.payment_id = p.id AND e.entry_type = 'reversal') "
            "FROM payment p JOIN account a ON a.id = p.account_id "
            "WHERE p.id = %s",
            [row[1]],
        ).fetchone()
        assert detail is not None
        return Receipt(receipt_no, int(row[1]), detail[0], detail[1], detail[2], int(row[2]), bool(detail[3]))
