"""Invoice stock and invoices: ranges (领用), issuing with payments, voiding (作废), daily settlement per
cashier (结账), reconciliation against the ledger (核销) and reprints.

- `issue_range`: a range of invoice numbers (with an optional prefix) for a cashier; ranges of the same prefix
  never overlap (checked in the database, see migration 0009).
- `issue_invoice`: the cashier's next free number (oldest range first) for one of the cashier's own payments,
  for the payment's amount; at most one live invoice per payment; refused when the cashier's stock is used up
  or the day is settled.
- `void_invoice`: by the invoice's cashier or a user with `billing.invoice_void`, with a reason; the invoice
  stays with its number (status `void`, who, when, why) and the number is never handed out again, since
  numbers are only taken from `next_no`, which only moves forward.
- `ensure_invoice`: the payment's live invoice, or a new one as `issue_invoice` gives it (for a retried
  payment request: one invoice, however often it is asked for).
- `settle_day`: totals of a cashier's day (payments taken, reversals of them booked that day, invoices issued
  and voided); once settled the day takes no more invoices, voids or payments (billing.payments) from that
  cashier. The cashier settles their own day; anyone else needs `billing.invoice_stock`. A day that has not
  come yet cannot be settled.
- `reconcile`: settled days against the ledger. Per payment of the cashier touched that day, the net ledger
  amount booked that day (payment and prepayment entries less their reversals) must equal the invoices issued
  for it that day less those voided that day; the settled totals must still match the ledger. Clean days are
  marked reconciled (unless asked only to check); differences are listed.
- `reprint_invoice`: a live invoice printed again, counted, logged and marked as a reprint.
- `stock`, `day_totals`, `settlement_of`: reads for the console, the API and the CLI.

Every service runs in one transaction under a per-cashier advisory lock, so issuing, voiding and settling
the same cashier's invoices happen one after another; payments take the same lock shared (billing.payments),
so a settlement waits for the cashier's payments in flight.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg

from billing.ledger import ZERO, LedgerError
from billing.payments import PermissionCheck, PermissionDenied, lock_cashier, role_permission
from meterhub.store import Store

NUMBER_WIDTH = 8


class InvoiceError(LedgerError):
    """An invoice operation that is refused (nothing was written)."""


@dataclass(frozen=True)
class InvoiceRange:
    id: int
    prefix: str
    first_no: int
    last_no: int
    next_no: int
    cashier: str
    issued_by: str = ""
    issued_at: dt.datetime | None = None
    voided: int = 0  # numbers of the range used for invoices that are void now

    @property
    def remaining(self) -> int:
        return self.last_no - self.next_no + 1

    @property
    def used(self) -> int:
        """Numbers handed out (voided ones included: a number is never reused)."""
        return self.next_no - self.first_no

    @property
    def size(self) -> int:
        return self.last_no - self.first_no + 1

    def number(self, value: int) -> str:
        return format_number(self.prefix, value)


@dataclass(frozen=True)
class Invoice:
    invoice_no: str
    payment_id: int | None
    cashier: str
    amount: Decimal
    issued_on: dt.date
    status: str
    print_count: int
    voided_by: str | None = None
    void_reason: str | None = None

    @property
    def mark(self) -> str:
        """Printed on every copy after the first."""
        return "" if self.print_count <= 1 else f"重打 REPRINT {self.print_count - 1}"


@dataclass(frozen=True)
class DayTotals:
    payments: int
    payment_amount: Decimal
    reversals: int
    reversal_amount: Decimal
    invoices_issued: int
    invoice_amount: Decimal
    invoices_void: int
    void_amount: Decimal


@dataclass(frozen=True)
class Settlement:
    id: int
    cashier: str
    day: dt.date
    totals: DayTotals
    settled_by: str = ""
    settled_at: dt.datetime | None = None
    reconciled_by: str | None = None
    reconciled_at: dt.datetime | None = None


@dataclass(frozen=True)
class Difference:
    """kind "payment": a payment's net ledger amount that day (actual) against its invoices issued less voided
    that day (expected); kind "settlement": a settled total as the database has it now (actual) against the
    settled value (expected)."""

    kind: str
    payment_id: int | None
    actual: Decimal
    expected: Decimal
    note: str
    item: str = ""  # for kind "settlement": the settled total that differs (a DayTotals field)


@dataclass(frozen=True)
class Reconciliation:
    cashier: str
    day: dt.date
    ledger_amount: Decimal  # net payments booked that day
    invoice_amount: Decimal  # invoices issued less voided that day
    differences: list[Difference] = field(default_factory=list)
    reconciled: bool = False  # marked reconciled (核销), now or before

    @property
    def clean(self) -> bool:
        return not self.differences


def format_number(prefix: str, number: int) -> str:
    return f"{prefix}{number:0{NUMBER_WIDTH}d}"


def _lock_cashier(conn: psycopg.Connection[Any], cashier: str) -> None:
    lock_cashier(conn, cashier)


def _require(conn: psycopg.Connection[Any], check: PermissionCheck, actor: str, permission: str) -> None:
    if not check(conn, actor, permission):
        raise PermissionDenied(f"{actor} may not do {permission}")


def issue_range(
    store: Store,
    cashier: str,
    first_no: int,
    last_no: int,
    actor: str,
    prefix: str = "",
    permission: PermissionCheck = role_permission,
) -> InvoiceRange:
    """领用: invoice numbers first_no..last_no (inclusive) for an active cashier; refused if they overlap."""
    if first_no < 0 or last_no < first_no:
        raise InvoiceError(f"bad invoice number range {first_no}-{last_no}")
    with store.transaction(actor=actor) as conn:
        _require(conn, permission, actor, "billing.invoice_stock")
        row = conn.execute("SELECT active FROM staff_user WHERE username = %s", [cashier]).fetchone()
        if row is None or not row[0]:
            raise InvoiceError(f"no active staff user {cashier}")
        try:
            created = conn.execute(
                "INSERT INTO invoice_range (prefix, first_no, last_no, next_no, cashier, issued_by) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id, issued_at",
                [prefix, first_no, last_no, first_no, cashier, actor],
            ).fetchone()
        except psycopg.errors.ExclusionViolation as exc:
            raise InvoiceError(exc.diag.message_primary or str(exc)) from exc
        assert created is not None
        return InvoiceRange(int(created[0]), prefix, first_no, last_no, first_no, cashier, actor, created[1])


def stock(store: Store, cashier: str | None) -> list[InvoiceRange]:
    """The cashier's ranges (every cashier's when None), oldest first, with how many of their numbers are void."""
    with store.connection() as conn:
        rows = conn.execute(
            "SELECT r.id, r.prefix, r.first_no, r.last_no, r.next_no, r.cashier, r.issued_by, r.issued_at, "
            "(SELECT count(*) FROM invoice i WHERE i.range_id = r.id AND i.status = 'void') "
            "FROM invoice_range r WHERE %s::text IS NULL OR r.cashier = %s ORDER BY r.cashier, r.id",
            [cashier, cashier],
        ).fetchall()
    return [
        InvoiceRange(
            id=r[0], prefix=r[1], first_no=r[2], last_no=r[3], next_no=r[4], cashier=r[5], issued_by=r[6],
            issued_at=r[7], voided=int(r[8]),
        )
        for r in rows
    ]  # fmt: skip


def _settled(conn: psycopg.Connection[Any], cashier: str, day: dt.date) -> bool:
    row = conn.execute("SELECT 1 FROM cashier_settlement WHERE cashier = %s AND day = %s", [cashier, day]).fetchone()
    return row is not None


_INVOICE_COLUMNS = "invoice_no, payment_id, cashier, amount, issued_on, status, print_count, voided_by, void_reason"


def issue_invoice(store: Store, payment_id: int, cashier: str, issued_on: dt.date | None = None) -> Invoice:
    """An invoice for one of the cashier's payments, numbered from the cashier's stock (default: the pay day)."""
    with store.transaction(actor=cashier) as conn:
        _lock_cashier(conn, cashier)
        return _issue(conn, payment_id, cashier, issued_on)


def ensure_invoice(store: Store, payment_id: int, cashier: str, issued_on: dt.date | None = None) -> Invoice:
    """The payment's live invoice if it has one, else a new one as `issue_invoice` issues it."""
    with store.transaction(actor=cashier) as conn:
        _lock_cashier(conn, cashier)
        live = conn.execute(
            f"SELECT {_INVOICE_COLUMNS} FROM invoice WHERE payment_id = %s AND status = 'issued'", [payment_id]
        ).fetchone()
        if live is not None:
            return Invoice(*live)
        return _issue(conn, payment_id, cashier, issued_on)


def _issue(conn: psycopg.Connection[Any], payment_id: int, cashier: str, issued_on: dt.date | None) -> Invoice:
    """Issue under the cashier lock (held by the caller)."""
    payment = conn.execute("SELECT amount, paid_on, actor FROM payment WHERE id = %s", [payment_id]).fetchone()
    if payment is None:
        raise InvoiceError(f"no payment {payment_id}")
    amount, paid_on, taken_by = payment
    reversed_ = conn.execute(
        "SELECT 1 FROM ledger_entry WHERE payment_id = %s AND entry_type = 'reversal' LIMIT 1", [payment_id]
    ).fetchone()
    if reversed_ is not None:
        raise InvoiceError(f"payment {payment_id} is reversed")
    if taken_by != cashier:
        raise InvoiceError(f"payment {payment_id} was taken by {taken_by}, not {cashier}")
    issued_on = issued_on or paid_on
    if _settled(conn, cashier, issued_on):
        raise InvoiceError(f"{cashier} is settled for {issued_on}: no more invoices that day")
    live = conn.execute(
        "SELECT invoice_no FROM invoice WHERE payment_id = %s AND status = 'issued'", [payment_id]
    ).fetchone()
    if live is not None:
        raise InvoiceError(f"payment {payment_id} already has invoice {live[0]}")
    taken = conn.execute(
        "UPDATE invoice_range SET next_no = next_no + 1 WHERE id = (SELECT id FROM invoice_range "
        "WHERE cashier = %s AND next_no <= last_no ORDER BY id LIMIT 1) RETURNING id, prefix, next_no - 1",
        [cashier],
    ).fetchone()
    if taken is None:
        raise InvoiceError(f"{cashier} has no invoice numbers left")
    range_id, prefix, number = taken
    invoice_no = format_number(prefix, number)
    row = conn.execute(
        "INSERT INTO invoice (invoice_no, range_id, payment_id, cashier, amount, issued_on) "
        f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING id, {_INVOICE_COLUMNS}",
        [invoice_no, range_id, payment_id, cashier, amount, issued_on],
    ).fetchone()
    assert row is not None
    conn.execute(
        "INSERT INTO invoice_print (invoice_id, printed_by, reprint) VALUES (%s, %s, false)", [row[0], cashier]
    )
    return Invoice(*row[1:])


def void_invoice(
    store: Store,
    invoice_no: str,
    actor: str,
    reason: str,
    voided_on: dt.date | None = None,
    permission: PermissionCheck = role_permission,
) -> Invoice:
    """作废: the invoice's cashier or a user with billing.invoice_void voids it, with a reason."""
    if not reason.strip():
        raise InvoiceError("voiding an invoice needs a reason")
    voided_on = voided_on or dt.date.today()
    with store.transaction(actor=actor) as conn:
        found = conn.execute("SELECT cashier FROM invoice WHERE invoice_no = %s", [invoice_no]).fetchone()
        if found is None:
            raise InvoiceError(f"no invoice {invoice_no}")
        cashier = found[0]
        if actor != cashier:
            _require(conn, permission, actor, "billing.invoice_void")
        _lock_cashier(conn, cashier)
        if _settled(conn, cashier, voided_on):
            raise InvoiceError(f"{cashier} is settled for {voided_on}: no more voids that day")
        row = conn.execute(
            "UPDATE invoice SET status = 'void', voided_by = %s, voided_at = now(), voided_on = %s, void_reason = %s "
            f"WHERE invoice_no = %s AND status = 'issued' RETURNING {_INVOICE_COLUMNS}",
            [actor, voided_on, reason, invoice_no],
        ).fetchone()
        if row is None:
            raise InvoiceError(f"invoice {invoice_no} is already void")
        return Invoice(*row)


def reprint_invoice(store: Store, invoice_no: str, actor: str) -> Invoice:
    """Print a live invoice again: counted, logged and marked as a reprint."""
    with store.transaction(actor=actor) as conn:
        row = conn.execute(
            "UPDATE invoice SET print_count = print_count + 1 WHERE invoice_no = %s AND status = 'issued' "
            f"RETURNING id, {_INVOICE_COLUMNS}",
            [invoice_no],
        ).fetchone()
        if row is None:
            exists = conn.execute("SELECT 1 FROM invoice WHERE invoice_no = %s", [invoice_no]).fetchone()
            raise InvoiceError(f"invoice {invoice_no} is void" if exists else f"no invoice {invoice_no}")
        conn.execute(
            "INSERT INTO invoice_print (invoice_id, printed_by, reprint) VALUES (%s, %s, true)", [row[0], actor]
        )
        return Invoice(*row[1:])


def day_totals(conn: psycopg.Connection[Any], cashier: str, day: dt.date) -> DayTotals:
    """A cashier's day as the database has it now (see `settle_day`)."""
    row = conn.execute(
        """
        SELECT
          (SELECT count(*) FROM payment WHERE actor = %(c)s AND paid_on = %(d)s),
          (SELECT coalesce(sum(amount), 0) FROM payment WHERE actor = %(c)s AND paid_on = %(d)s),
          (SELECT count(DISTINCT e.payment_id) FROM ledger_entry e JOIN payment p ON p.id = e.payment_id
            WHERE e.entry_type = 'reversal' AND p.actor = %(c)s AND e.booked_on = %(d)s),
          (SELECT coalesce(sum(e.amount), 0) FROM ledger_entry e JOIN payment p ON p.id = e.payment_id
            WHERE e.entry_type = 'reversal' AND p.actor = %(c)s AND e.booked_on = %(d)s),
          (SELECT count(*) FROM invoice WHERE cashier = %(c)s AND issued_on = %(d)s),
          (SELECT coalesce(sum(amount), 0) FROM invoice WHERE cashier = %(c)s AND issued_on = %(d)s),
          (SELECT count(*) FROM invoice WHERE cashier = %(c)s AND voided_on = %(d)s),
          (SELECT coalesce(sum(amount), 0) FROM invoice WHERE cashier = %(c)s AND voided_on = %(d)s)
        """,
        {"c": cashier, "d": day},
    ).fetchone()
    assert row is not None
    return DayTotals(
        int(row[0]), Decimal(row[1]), int(row[2]), Decimal(row[3]), int(row[4]), Decimal(row[5]), int(row[6]),
        Decimal(row[7]),
    )  # fmt: skip


def settle_day(
    store: Store,
    cashier: str,
    day: dt.date,
    actor: str,
    permission: PermissionCheck = role_permission,
    today: dt.date | None = None,
) -> Settlement:
    """结账: record the cashier's totals for the day; afterwards the day takes no invoices, voids or payments
    of that cashier. By the cashier, or by a user with billing.invoice_stock; not before the day (`today`,
    default the machine's date)."""
    if day > (today or dt.date.today()):
        raise InvoiceError(f"{day} has not come yet: it cannot be settled")
    with store.transaction(actor=actor) as conn:
        if actor != cashier:
            _require(conn, permission, actor, "billing.invoice_stock")
        _lock_cashier(conn, cashier)
        if _settled(conn, cashier, day):
            raise InvoiceError(f"{cashier} is already settled for {day}")
        totals = day_totals(conn, cashier, day)
        row = conn.execute(
            "INSERT INTO cashier_settlement (cashier, day, invoices_issued, invoices_void, invoice_amount, "
            "void_amount, payments, payment_amount, reversals, reversal_amount, settled_by) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id, settled_at",
            [
                cashier,
                day,
                totals.invoices_issued,
                totals.invoices_void,
                totals.invoice_amount,
                totals.void_amount,
                totals.payments,
                totals.payment_amount,
                totals.reversals,
                totals.reversal_amount,
                actor,
            ],
        ).fetchone()
        assert row is not None
        settlement_id = int(row[0])
        conn.execute(
            "UPDATE invoice SET settlement_id = %s WHERE cashier = %s AND issued_on = %s",
            [settlement_id, cashier, day],
        )
        conn.execute(
            "UPDATE invoice SET void_settlement_id = %s WHERE cashier = %s AND voided_on = %s",
            [settlement_id, cashier, day],
        )
        return Settlement(settlement_id, cashier, day, totals, actor, row[1])


def settlement_of(conn: psycopg.Connection[Any], cashier: str, day: dt.date) -> Settlement | None:
    """The cashier's settlement of the day (结账), with the totals as they were settled; None if not settled."""
    row = conn.execute(
        f"SELECT id, {', '.join(_SETTLED_FIELDS)}, settled_by, settled_at, reconciled_by, reconciled_at "
        "FROM cashier_settlement WHERE cashier = %s AND day = %s",
        [cashier, day],
    ).fetchone()
    if row is None:
        return None
    totals = DayTotals(**{name: value for name, value in zip(_SETTLED_FIELDS, row[1:9], strict=True)})
    return Settlement(int(row[0]), cashier, day, totals, *row[9:])


_PER_PAYMENT = """
WITH ledger AS (
    SELECT e.payment_id, -sum(e.amount) AS amount
      FROM ledger_entry e JOIN payment p ON p.id = e.payment_id
     WHERE p.actor = %(c)s AND e.booked_on = %(d)s AND e.entry_type IN ('payment', 'prepayment', 'reversal')
     GROUP BY e.payment_id
), invoiced AS (
    SELECT payment_id, sum(CASE WHEN issued_on = %(d)s THEN amount ELSE 0 END)
                     - sum(CASE WHEN voided_on = %(d)s THEN amount ELSE 0 END) AS amount,
           string_agg(invoice_no, ' ' ORDER BY invoice_no) AS numbers
      FROM invoice
     WHERE cashier = %(c)s AND (issued_on = %(d)s OR voided_on = %(d)s)
     GROUP BY payment_id
)
SELECT coalesce(l.payment_id, i.payment_id), coalesce(l.amount, 0), coalesce(i.amount, 0), coalesce(i.numbers, '')
  FROM ledger l FULL JOIN invoiced i ON i.payment_id = l.payment_id
 ORDER BY 1
"""

_SETTLED_FIELDS = (
    "payments",
    "payment_amount",
    "reversals",
    "reversal_amount",
    "invoices_issued",
    "invoice_amount",
    "invoices_void",
    "void_amount",
)


def reconcile(
    store: Store,
    actor: str,
    first_day: dt.date,
    last_day: dt.date,
    cashier: str | None = None,
    mark: bool = True,
) -> list[Reconciliation]:
    """核销: check the settled days in first_day..last_day (of one cashier or all) against the ledger; clean days
    are marked reconciled by `actor` unless `mark` is false (then nothing is written)."""
    if last_day < first_day:
        raise InvoiceError(f"bad range of days {first_day}..{last_day}")
    results: list[Reconciliation] = []
    with store.transaction(actor=actor) as conn:
        settlements = conn.execute(
            f"SELECT id, cashier, day, reconciled_at IS NOT NULL, {', '.join(_SETTLED_FIELDS)} "
            "FROM cashier_settlement WHERE day BETWEEN %s AND %s AND (%s::text IS NULL OR cashier = %s) "
            "ORDER BY day, cashier",
            [first_day, last_day, cashier, cashier],
        ).fetchall()
        for settlement_id, who, day, done, *settled in settlements:
            rows = conn.execute(_PER_PAYMENT, {"c": who, "d": day}).fetchall()
            differences = [
                Difference("payment", payment_id, ledger, invoiced, f"invoices: {numbers or 'none'}")
                for payment_id, ledger, invoiced, numbers in rows
                if ledger != invoiced
            ]
            now = day_totals(conn, who, day)
            for name, then in zip(_SETTLED_FIELDS, settled, strict=True):
                value = getattr(now, name)
                if value != then:
                    differences.append(
                        Difference(
                            "settlement",
                            None,
                            Decimal(value),
                            Decimal(then),
                            f"{name}: now {value}, settled {then}",
                            name,
                        )
                    )
            result = Reconciliation(
                who,
                day,
                sum((Decimal(r[1]) for r in rows), ZERO),
                sum((Decimal(r[2]) for r in rows), ZERO),
                differences,
                done or (mark and not differences),
            )
            if mark and result.clean and not done:
                conn.execute(
                    "UPDATE cashier_settlement SET reconciled_by = %s, reconciled_at = now() WHERE id = %s",
                    [actor, settlement_id],
                )
            results.append(result)
    return results
