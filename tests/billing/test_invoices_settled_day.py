"""A settled day (结账) is closed to the cashier's payments; who may settle; reads for the invoice pages."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from billing.invoices import (
    InvoiceError,
    ensure_invoice,
    issue_invoice,
    issue_range,
    reconcile,
    settle_day,
    settlement_of,
    stock,
    void_invoice,
)
from billing.payments import DaySettled, PermissionDenied, pay, pay_batch, pay_related, refuse_settled
from meterhub.store import Store
from tests.billing.ledger_helpers import D, day
from tests.billing.store_helpers import count
from tests.billing.test_invoices import counter

ON = day("2024-02-10")


def test_a_settled_day_takes_no_more_payments_from_that_cashier(store: Store) -> None:
    ids = counter(store)
    with store.transaction() as conn:
        group = conn.execute("INSERT INTO account_group (name) VALUES ('family') RETURNING id").fetchone()
        assert group is not None
        conn.execute("INSERT INTO account_group_member VALUES (%s, %s)", [group[0], ids["1001"]])
    pay(store, "30.00", "clerk", account_no="1001", paid_on=ON, idempotency_key="k1")
    settled = settle_day(store, "clerk", ON, "clerk")  # a cashier settles their own day
    assert (settled.totals.payments, settled.totals.payment_amount, settled.settled_by) == (1, D("30.00"), "clerk")
    before = (count(store, "payment"), count(store, "ledger_entry"), count(store, "payment_batch"))
    refused = r"clerk is already settled for 2024-02-10 \(结账 by clerk\): no more payments that day"
    with pytest.raises(DaySettled, match=refused):
        pay(store, "5.00", "clerk", account_no="1002", paid_on=ON)
    with pytest.raises(DaySettled):
        pay_related(store, "1001", "clerk", "5.00", paid_on=ON)
    with pytest.raises(DaySettled):
        pay_batch(store, "clerk", account_nos=["1002"], paid_on=ON)
    assert (count(store, "payment"), count(store, "ledger_entry"), count(store, "payment_batch")) == before
    # the retry of a request booked before settling is still answered with its payment, booking nothing
    assert pay(store, "30.00", "clerk", account_no="1001", paid_on=ON, idempotency_key="k1").replayed
    # other cashiers, and the next day, take payments
    pay(store, "5.00", "anna", account_no="1002", paid_on=ON)
    pay(store, "5.00", "clerk", account_no="1002", paid_on=day("2024-02-11"))
    (checked,) = reconcile(store, "boss", ON, ON, cashier="clerk", mark=False)
    assert [d.kind for d in checked.differences] == ["payment"]  # no invoice for it; the settled totals still hold


def test_the_database_refuses_a_payment_on_a_settled_day(store: Store) -> None:
    ids = counter(store)
    settle_day(store, "clerk", ON, "boss")
    with store.transaction() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege, match="settled"):
        conn.execute(
            "INSERT INTO payment (account_id, channel, amount, paid_on, actor) VALUES (%s, 'counter', 1, %s, 'clerk')",
            [ids["1001"], ON],
        )


def test_a_settlement_waits_for_a_payment_in_flight_and_counts_it(store: Store) -> None:
    ids = counter(store)
    done: list[object] = []
    with store.transaction(actor="clerk") as conn:
        refuse_settled(conn, "clerk", ON)  # a payment under way holds the shared cashier lock
        settling = threading.Thread(target=lambda: done.append(settle_day(store, "clerk", ON, "boss")))
        settling.start()
        time.sleep(0.5)
        assert done == []  # waiting for the payment
        conn.execute(
            "INSERT INTO payment (account_id, channel, amount, paid_on, actor) VALUES (%s, 'counter', 7, %s, 'clerk')",
            [ids["1001"], ON],
        )
    settling.join(30)
    (settled,) = done
    assert settled.totals.payments == 1 and settled.totals.payment_amount == D("7.00")  # type: ignore[attr-defined]


def test_who_may_settle_and_when(store: Store) -> None:
    counter(store)
    with pytest.raises(PermissionDenied):  # anna is neither clerk nor holds billing.invoice_stock
        settle_day(store, "clerk", ON, "anna")
    with pytest.raises(InvoiceError, match="has not come yet"):
        settle_day(store, "clerk", day("2024-02-11"), "clerk", today=ON)
    assert count(store, "cashier_settlement") == 0
    settle_day(store, "clerk", ON, "boss", today=ON)  # a supervisor settles for the cashier
    found = settlement_of_day(store, "clerk")
    assert found is not None and (found.settled_by, found.reconciled_by) == ("boss", None)


def settlement_of_day(store: Store, cashier: str) -> object:
    with store.connection() as conn:
        return settlement_of(conn, cashier, ON)


def test_ensure_invoice_issues_once_and_checking_writes_nothing(store: Store) -> None:
    counter(store)
    issue_range(store, "clerk", 1, 10, "boss", prefix="GD")
    paid = pay(store, "30.00", "clerk", account_no="1001", paid_on=ON)
    first = ensure_invoice(store, paid.payment_id, "clerk")
    assert ensure_invoice(store, paid.payment_id, "clerk") == first and count(store, "invoice") == 1
    other = pay(store, "12.00", "clerk", account_no="1002", paid_on=ON)
    void_invoice(store, issue_invoice(store, other.payment_id, "clerk").invoice_no, "clerk", "misprint", ON)
    (held,) = stock(store, "clerk")
    assert (held.size, held.used, held.voided, held.remaining, held.issued_by) == (10, 2, 1, 8, "boss")
    assert [r.cashier for r in stock(store, None)] == ["clerk"]
    settle_day(store, "clerk", ON, "clerk")
    (checked,) = reconcile(store, "boss", ON, ON, mark=False)
    assert (checked.clean, checked.reconciled) == (False, False)  # 12.00 paid, no live invoice for it
    (marked,) = reconcile(store, "boss", ON, ON)
    assert marked.reconciled is False
    with store.connection() as conn:
        assert conn.execute("SELECT reconciled_by FROM cashier_settlement").fetchall() == [(None,)]
    with pytest.raises(InvoiceError, match="bad range of days"):
        reconcile(store, "boss", ON, day("2024-02-09"))
