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

**Idempotency.** `pay`, `pay_related` and `pay_batch` take an optional idempotency key, unique per actor
(table `payment_idempotency`). The first request with a key books the payment (or batch) and records the key
with what was asked; a retry with the same key books nothing and returns the first payment — the same
receipt — with `replayed` set; the same key with a different request (account, amount as asked, method,
channel; a batch's condition) is refused with `IdempotencyConflict`. A per-key advisory lock taken before
anything else makes two concurrent requests with one key book once: the second waits for the first and
then finds its key.

**Settled days.** A cashier's day settled with `billing.invoices.settle_day` (结账) takes no more payments
by that cashier (`DaySettled`): `pay_locked` checks under a shared per-cashier advisory lock, so a settlement
waits for the payments in flight and a payment waits for a settlement in progress; the database refuses
such a payment too (migration 0017).
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


KEY_MAX = 200  # characters of an idempotency key
_CASHIER_LOCK = "meterhub.invoice_cashier:"  # the per-cashier advisory lock (billing.invoices takes it too)
_KEY_LOCK = "meterhub.payment_key:"


class PermissionDenied(LedgerError):
    """The actor lacks the permission for this operation."""


class IdempotencyConflict(LedgerError):
    """An idempotency key that the actor already used for a different payment request."""


class DaySettled(LedgerError):
    """The cashier's day is settled (结账): it takes no more payments."""


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
    replayed: bool = False  # an earlier request with the same idempotency key booked it; nothing new


@dataclass(frozen=True)
class BatchResult:
    batch_id: int | None
    payments: list[PaymentResult] = field(default_factory=list)
    replayed: bool = False

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


def lock_cashier(conn: psycopg.Connection[Any], cashier: str, shared: bool = False) -> None:
    """The per-cashier advisory lock (until the transaction ends): shared by payments, exclusive for issuing,
    voiding and settling invoices (billing.invoices)."""
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    conn.execute(f"SELECT {function}(hashtext(%s))", [_CASHIER_LOCK + cashier])


def refuse_settled(conn: psycopg.Connection[Any], cashier: str, day: dt.date) -> None:
    """Raise DaySettled when the cashier has settled the day; otherwise hold the shared cashier lock, so that
    a settlement of that day waits until this transaction ends."""
    lock_cashier(conn, cashier, shared=True)
    row = conn.execute(
        "SELECT settled_by FROM cashier_settlement WHERE cashier = %s AND day = %s", [cashier, day]
    ).fetchone()
    if row is not None:
        raise DaySettled(f"{cashier} is already settled for {day} (结账 by {row[0]}): no more payments that day")


def _clean_key(key: str | None) -> str | None:
    if key is None or not key.strip():
        return None
    key = key.strip()
    if len(key) > KEY_MAX:
        raise LedgerError(f"an idempotency key has at most {KEY_MAX} characters")
    return key


def _claim_key(
    conn: psycopg.Connection[Any], actor: str, key: str, request: dict[str, Any]
) -> tuple[int | None, int | None] | None:
    """Lock the key; (payment id, batch id) of the request that used it first, or None if it is new. The same key
    with a different request is refused."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"{_KEY_LOCK}{actor}:{key}"])
    row = conn.execute(
        "SELECT request, payment_id, batch_id FROM payment_idempotency WHERE actor = %s AND idempotency_key = %s",
        [actor, key],
    ).fetchone()
    if row is None:
        return None
    first, payment_id, batch_id = row
    if first != request:
        what = f"payment {payment_id}" if payment_id is not None else f"payment batch {batch_id}"
        raise IdempotencyConflict(
            f"idempotency key {key!r} was already used by {actor} for {what}, a different request "
            f"(then {_describe(first)}; now {_describe(request)})"
        )
    return payment_id, batch_id


def _describe(request: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in request.items() if v is not None)


def _record_key(
    conn: psycopg.Connection[Any],
    actor: str,
    key: str,
    request: dict[str, Any],
    payment_id: int | None = None,
    batch_id: int | None = None,
) -> None:
    conn.execute(
        "INSERT INTO payment_idempotency (actor, idempotency_key, request, payment_id, batch_id) "
        "VALUES (%s, %s, %s, %s, %s)",
        [actor, key, Jsonb(request), payment_id, batch_id],
    )


def booked_payment(conn: psycopg.Connection[Any], payment_id: int, replayed: bool = True) -> PaymentResult:
    """A booked payment as its service returned it: applied per account and credit from its ledger entries; the
    late fees its transaction posted on the accounts it paid for (the same posting time, by the same actor)."""
    row = conn.execute(
        "SELECT p.amount, p.actor, p.paid_at, p.account_id, p.group_id, r.receipt_no "
        "FROM payment p JOIN receipt r ON r.payment_id = p.id WHERE p.id = %s",
        [payment_id],
    ).fetchone()
    if row is None:
        raise LedgerError(f"no payment {payment_id}")
    amount, actor, paid_at, payer, group_id, receipt_no = row
    applied: dict[int, Decimal] = {}
    credit = ZERO
    for account_id, kind, value in conn.execute(
        "SELECT account_id, entry_type, -amount FROM ledger_entry "
        "WHERE payment_id = %s AND entry_type IN ('payment', 'prepayment') ORDER BY id",
        [payment_id],
    ):
        if kind == "prepayment":
            credit += value
        else:
            applied[int(account_id)] = applied.get(int(account_id), ZERO) + value
    accounts = {int(payer), *applied}
    if group_id is not None:
        members = conn.execute("SELECT account_id FROM account_group_member WHERE group_id = %s", [group_id])
        accounts.update(int(m[0]) for m in members)
    fees = conn.execute(
        "SELECT coalesce(sum(amount), 0) FROM ledger_entry "
        "WHERE entry_type = 'late_fee' AND actor = %s AND posted_at = %s AND account_id = ANY(%s)",
        [actor, paid_at, sorted(accounts)],
    ).fetchone()
    assert fees is not None
    return PaymentResult(int(payment_id), receipt_no, amount, applied, credit, Decimal(fees[0]), replayed)


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
    """Post late fees, record the payment, allocate it over the accounts' open bills, oldest first. Refused
    (DaySettled) when the actor has settled `paid_on`."""
    refuse_settled(conn, actor, paid_on)
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
    idempotency_key: str | None = None,
) -> PaymentResult:
    """A payment for one account, found by account number or card number. With an idempotency key, a retry
    returns the first payment (`replayed`) and books nothing."""
    value = _money(amount)
    _check_method(method)
    if value <= 0:
        raise LedgerError("a payment must be positive")
    key = _clean_key(idempotency_key)
    paid_on = paid_on or dt.date.today()
    with store.transaction(actor=actor) as conn:
        account_id = find_account(conn, account_no, card_no)
        request = {"channel": channel, "account_id": account_id, "amount": f"{value:.2f}", "method": method}
        if key is not None:
            first = _claim_key(conn, actor, key, request)
            if first is not None and first[0] is not None:
                return booked_payment(conn, first[0])
        held = lock_accounts(conn, [account_id], paid_on)
        result = pay_locked(
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
        if key is not None:
            _record_key(conn, actor, key, request, payment_id=result.payment_id)
        return result


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
    idempotency_key: str | None = None,
) -> PaymentResult:
    """One payment for every account of `account_no`'s group; default amount: what the group owes. With an
    idempotency key, a retry returns the first payment (`replayed`) and books nothing."""
    _check_method(method)
    asked = None if amount is None else _money(amount)
    key = _clean_key(idempotency_key)
    paid_on = paid_on or dt.date.today()
    with store.transaction(actor=actor) as conn:
        payer = find_account(conn, account_no)
        request = {
            "channel": "group", "account_id": payer, "amount": None if asked is None else f"{asked:.2f}",
            "method": method,
        }  # fmt: skip
        if key is not None:
            first = _claim_key(conn, actor, key, request)
            if first is not None and first[0] is not None:
                return booked_payment(conn, first[0])
        group_id, members = group_members(conn, payer)
        held = lock_accounts(conn, members, paid_on)
        owed = sum((max(held[i].total_due, ZERO) for i in members), ZERO)
        value = owed if asked is None else asked
        if value <= 0:
            raise LedgerError(f"nothing to pay for the accounts related to {account_no}")
        result = pay_locked(
            conn, held, members, payer, value, actor, paid_on, "group", group_id=group_id, method=method
        )
        if key is not None:
            _record_key(conn, actor, key, request, payment_id=result.payment_id)
        return result


def pay_batch(
    store: Store,
    actor: str,
    community: str | None = None,
    account_nos: Sequence[str] | None = None,
    paid_on: dt.date | None = None,
    method: PaymentMethod | None = None,
    idempotency_key: str | None = None,
) -> BatchResult:
    """批量收费: every account of a community or of a list pays what it owes now; all or nothing. With an
    idempotency key, a retry returns the first batch (`replayed`) and books nothing; a batch that found
    nobody owing wrote nothing, its key included."""
    if (community is None) == (account_nos is None):
        raise LedgerError("give a community or a list of account numbers")
    _check_method(method)
    key = _clean_key(idempotency_key)
    paid_on = paid_on or dt.date.today()
    with store.transaction(actor=actor) as conn:
        asked: dict[str, object] = (
            {"community": community}
            if community is not None
            else {"account_nos": list(dict.fromkeys(account_nos or []))}
        )
        request = {"channel": "batch", "condition": asked, "method": method}
        if key is not None:
            first = _claim_key(conn, actor, key, request)
            if first is not None and first[1] is not None:
                return booked_batch(conn, first[1])
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
        if key is not None:
            _record_key(conn, actor, key, request, batch_id=batch_id)
        return BatchResult(batch_id, results)


def booked_batch(conn: psycopg.Connection[Any], batch_id: int) -> BatchResult:
    """A booked batch as `pay_batch` returned it, its payments in account number order."""
    rows = conn.execute(
        "SELECT p.id FROM payment p JOIN account a ON a.id = p.account_id WHERE p.batch_id = %s ORDER BY a.account_no",
        [batch_id],
    ).fetchall()
    return BatchResult(batch_id, [booked_payment(conn, int(r[0])) for r in rows], replayed=True)


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
