"""Invoice stock (领用), issuing with payments, voiding (作废), settlement (结账), reconciliation (核销), reprints."""

import psycopg
import pytest

from billing.invoices import (
    InvoiceError,
    issue_invoice,
    issue_range,
    reconcile,
    reprint_invoice,
    settle_day,
    stock,
    void_invoice,
)
from billing.payments import DaySettled, PermissionDenied, pay, reverse_payment
from meterhub.store import Store
from tests.billing.ledger_helpers import D, billed, day
from tests.billing.store_helpers import count


def counter(store: Store, accounts: dict[str, list[str]] | None = None) -> dict[str, int]:
    """Billed accounts, a second cashier (anna) and the migration's invoice permissions."""
    ids = billed(store, accounts or {"1001": ["50"], "1002": ["20"]})
    with store.transaction() as conn:
        conn.execute("INSERT INTO staff_user (username, display_name, role) VALUES ('anna', 'Anna', 'clerk')")
        conn.execute(
            "INSERT INTO role_permission VALUES "
            "('supervisor', 'billing.invoice_stock'), ('supervisor', 'billing.invoice_void') ON CONFLICT DO NOTHING"
        )
    return ids


def test_ranges_are_issued_to_cashiers_and_never_overlap(store: Store) -> None:
    counter(store)
    first = issue_range(store, "clerk", 1, 100, "boss")
    assert (first.remaining, first.next_no) == (100, 1)
    with pytest.raises(InvoiceError, match=r"invoice numbers 50-150 overlap range \d+ \(1-100\) of clerk"):
        issue_range(store, "anna", 50, 150, "boss")
    with pytest.raises(InvoiceError, match="overlap"):
        issue_range(store, "clerk", 100, 100, "boss")
    issue_range(store, "anna", 101, 200, "boss")
    issue_range(store, "anna", 1, 100, "boss", prefix="B")  # another series
    with pytest.raises(PermissionDenied):
        issue_range(store, "clerk", 300, 400, "clerk")
    with pytest.raises(InvoiceError, match="no active staff user"):
        issue_range(store, "ghost", 300, 400, "boss")
    with pytest.raises(InvoiceError, match="bad invoice number range"):
        issue_range(store, "clerk", 400, 300, "boss")
    assert [(r.prefix, r.first_no, r.last_no) for r in stock(store, "anna")] == [("", 101, 200), ("B", 1, 100)]
    with store.transaction() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("UPDATE invoice_range SET last_no = 500 WHERE id = %s", [first.id])


def test_invoices_take_the_next_number_for_the_payment_amount_once_per_payment(store: Store) -> None:
    counter(store)
    issue_range(store, "clerk", 7, 8, "boss", prefix="A")
    paid = [pay(store, amount, "clerk", account_no="1001", paid_on=day("2024-02-10")) for amount in ("30.00", "70.50")]
    first = issue_invoice(store, paid[0].payment_id, "clerk")
    assert (first.invoice_no, first.amount, first.issued_on, first.print_count) == (
        "A00000007",
        D("30.00"),
        day("2024-02-10"),
        1,
    )
    with pytest.raises(InvoiceError, match="already has invoice A00000007"):
        issue_invoice(store, paid[0].payment_id, "clerk")
    assert issue_invoice(store, paid[1].payment_id, "clerk").invoice_no == "A00000008"
    third = pay(store, "5.00", "clerk", account_no="1002", paid_on=day("2024-02-10"))
    with pytest.raises(InvoiceError, match="clerk has no invoice numbers left"):
        issue_invoice(store, third.payment_id, "clerk")
    with pytest.raises(InvoiceError, match="taken by clerk, not anna"):
        issue_invoice(store, third.payment_id, "anna")
    issue_range(store, "clerk", 20, 29, "boss")
    assert issue_invoice(store, third.payment_id, "clerk").invoice_no == "00000020"
    wrong = pay(store, "9.00", "clerk", account_no="1002", paid_on=day("2024-02-10"))
    reverse_payment(store, wrong.payment_id, "boss", "wrong account", reversed_on=day("2024-02-10"))
    with pytest.raises(InvoiceError, match="is reversed"):
        issue_invoice(store, wrong.payment_id, "clerk")
    assert count(store, "invoice") == 3 and count(store, "invoice_print") == 3


def test_voiding_keeps_the_invoice_and_its_number_is_never_reused(store: Store) -> None:
    counter(store)
    issue_range(store, "clerk", 1, 10, "boss")
    paid = pay(store, "30.00", "clerk", account_no="1001", paid_on=day("2024-02-10"))
    invoice = issue_invoice(store, paid.payment_id, "clerk")
    with pytest.raises(InvoiceError, match="needs a reason"):
        void_invoice(store, invoice.invoice_no, "clerk", " ", voided_on=day("2024-02-10"))
    with pytest.raises(PermissionDenied):  # neither its cashier nor a supervisor
        void_invoice(store, invoice.invoice_no, "anna", "misprint", voided_on=day("2024-02-10"))
    voided = void_invoice(store, invoice.invoice_no, "clerk", "misprint", voided_on=day("2024-02-10"))
    assert (voided.status, voided.voided_by, voided.void_reason) == ("void", "clerk", "misprint")
    with pytest.raises(InvoiceError, match="already void"):
        void_invoice(store, invoice.invoice_no, "boss", "again", voided_on=day("2024-02-10"))
    again = issue_invoice(store, paid.payment_id, "clerk")  # a new number for the same payment
    assert again.invoice_no == "00000002"
    assert (
        void_invoice(store, again.invoice_no, "boss", "customer asked", voided_on=day("2024-02-11")).voided_by == "boss"
    )
    with store.connection() as conn:
        rows = conn.execute("SELECT invoice_no, status, voided_on FROM invoice ORDER BY invoice_no").fetchall()
    assert rows == [("00000001", "void", day("2024-02-10")), ("00000002", "void", day("2024-02-11"))]
    for statement in (
        "DELETE FROM invoice",
        "UPDATE invoice SET amount = 1",
        "UPDATE invoice SET status = 'issued', voided_by = NULL, voided_at = NULL, voided_on = NULL, "
        "void_reason = NULL",
    ):
        with store.transaction() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)


def test_settlement_totals_a_cashiers_day_and_locks_it(store: Store) -> None:
    counter(store)
    issue_range(store, "clerk", 1, 10, "boss")
    on = day("2024-02-10")
    kept = pay(store, "30.00", "clerk", account_no="1001", paid_on=on)
    wrong = pay(store, "12.00", "clerk", account_no="1002", paid_on=on)
    pay(store, "99.00", "anna", account_no="1002", paid_on=on)  # another cashier
    issue_invoice(store, kept.payment_id, "clerk")
    bad = issue_invoice(store, wrong.payment_id, "clerk")
    reverse_payment(store, wrong.payment_id, "boss", "wrong account", reversed_on=on)
    void_invoice(store, bad.invoice_no, "clerk", "payment reversed", voided_on=on)
    late = pay(store, "8.00", "clerk", account_no="1001", paid_on=on)
    settled = settle_day(store, "clerk", on, "boss")
    t = settled.totals
    assert (t.payments, t.payment_amount, t.reversals, t.reversal_amount) == (3, D("50.00"), 1, D("12.00"))
    assert (t.invoices_issued, t.invoice_amount, t.invoices_void, t.void_amount) == (2, D("42.00"), 1, D("12.00"))
    with pytest.raises(InvoiceError, match="settled for 2024-02-10: no more invoices"):
        issue_invoice(store, late.payment_id, "clerk")
    with pytest.raises(InvoiceError, match="settled for 2024-02-10: no more voids"):
        void_invoice(store, "00000001", "clerk", "too late", voided_on=on)
    with pytest.raises(InvoiceError, match="already settled"):
        settle_day(store, "clerk", on, "boss")
    assert issue_invoice(store, late.payment_id, "clerk", issued_on=day("2024-02-11")).invoice_no == "00000003"
    settle_day(store, "anna", on, "boss")  # other cashiers settle on their own
    with store.transaction() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(
            "INSERT INTO invoice (invoice_no, range_id, payment_id, cashier, amount, issued_on) "
            "SELECT 'X1', id, %s, 'clerk', 8.00, %s FROM invoice_range LIMIT 1",
            [late.payment_id, on],
        )
    with store.transaction() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("UPDATE cashier_settlement SET payment_amount = 0")


def test_reconciliation_checks_settled_days_against_the_ledger(store: Store) -> None:
    counter(store)
    issue_range(store, "clerk", 1, 10, "boss")
    clean, messy = day("2024-02-10"), day("2024-02-11")
    first = pay(store, "30.00", "clerk", account_no="1001", paid_on=clean)
    issue_invoice(store, first.payment_id, "clerk")
    settle_day(store, "clerk", clean, "boss")
    uninvoiced = pay(store, "15.00", "clerk", account_no="1002", paid_on=messy)
    kept = pay(store, "20.00", "clerk", account_no="1001", paid_on=messy)
    dropped = issue_invoice(store, kept.payment_id, "clerk")
    void_invoice(store, dropped.invoice_no, "clerk", "printer jam", voided_on=messy)  # not issued again
    settle_day(store, "clerk", messy, "boss")
    with pytest.raises(DaySettled, match="no more payments that day"):  # the day is closed to payments
        pay(store, "1.00", "clerk", account_no="1001", paid_on=messy)
    pay(store, "1.00", "anna", account_no="1001", paid_on=messy)  # anna has not settled
    reverse_payment(store, first.payment_id, "boss", "wrong account", reversed_on=messy)  # booked after settling
    results = reconcile(store, "auditor", clean, messy, cashier="clerk")
    assert [(r.day, r.clean, r.ledger_amount, r.invoice_amount) for r in results] == [
        (clean, True, D("30.00"), D("30.00")),
        (messy, False, D("5.00"), D("0.00")),
    ]
    assert [(d.kind, d.payment_id, d.actual, d.expected, d.item) for d in results[1].differences] == [
        ("payment", first.payment_id, D("-30.00"), D("0.00"), ""),
        ("payment", uninvoiced.payment_id, D("15.00"), D("0.00"), ""),
        ("payment", kept.payment_id, D("20.00"), D("0.00"), ""),
        ("settlement", None, D("1"), D("0"), "reversals"),
        ("settlement", None, D("30.00"), D("0.00"), "reversal_amount"),
    ]
    with store.connection() as conn:
        marks = conn.execute("SELECT day, reconciled_by FROM cashier_settlement ORDER BY day").fetchall()
    assert marks == [(clean, "auditor"), (messy, None)]
    assert reconcile(store, "auditor", clean, clean, cashier="anna") == []


def test_reprint_is_counted_logged_and_marked(store: Store) -> None:
    counter(store)
    issue_range(store, "clerk", 1, 10, "boss")
    paid = pay(store, "30.00", "clerk", account_no="1001", paid_on=day("2024-02-10"))
    invoice = issue_invoice(store, paid.payment_id, "clerk")
    assert invoice.mark == ""
    reprint_invoice(store, invoice.invoice_no, "clerk")
    again = reprint_invoice(store, invoice.invoice_no, "boss")
    assert (again.print_count, again.mark) == (3, "重打 REPRINT 2")
    with store.connection() as conn:
        prints = conn.execute("SELECT printed_by, reprint FROM invoice_print ORDER BY id").fetchall()
    assert prints == [("clerk", False), ("clerk", True), ("boss", True)]
    void_invoice(store, invoice.invoice_no, "clerk", "misprint", voided_on=day("2024-02-10"))
    with pytest.raises(InvoiceError, match="is void"):
        reprint_invoice(store, invoice.invoice_no, "clerk")
    with pytest.raises(InvoiceError, match="no invoice"):
        reprint_invoice(store, "NOPE", "clerk")
