"""Idempotency keys on payments: a retried request books nothing twice and answers with the first payment."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from billing.ledger import LedgerError
from billing.payments import (
    KEY_MAX,
    IdempotencyConflict,
    PaymentResult,
    pay,
    pay_batch,
    pay_related,
    reverse_payment,
)
from meterhub.store import Store
from tests.billing.ledger_helpers import D, at, billed, day
from tests.billing.store_helpers import count

FIXED_FEE = {"method": "fixed", "fixed_amount": "5.00"}
ON = day("2024-03-05")  # January's bill (due 2024-02-16) is overdue: its late fee is posted with the first payment


def booked(store: Store) -> tuple[int, int, int, int, int]:
    """What a payment writes: payments, ledger entries, receipts, receipt prints, payment batches."""
    return tuple(  # type: ignore[return-value]
        count(store, table) for table in ("payment", "ledger_entry", "receipt", "receipt_print", "payment_batch")
    )


def test_a_retry_with_the_same_key_returns_the_first_payment_and_books_nothing(store: Store) -> None:
    ids = billed(store, {"1001": ["10", "20"], "1002": ["5"]}, rule=FIXED_FEE, cards={"1001": "CARD-9"})
    first = pay(store, "25.01", "clerk", account_no="1001", paid_on=ON, method="wechat", idempotency_key="k-1")
    assert (first.replayed, first.late_fees_posted, first.applied) == (False, D("5.00"), {ids["1001"]: D("25.01")})
    written = booked(store)
    due = at(store, ids["1001"], "2024-03-05").total_due
    again = pay(store, "25.01", "clerk", account_no="1001", paid_on=ON, method="wechat", idempotency_key="k-1")
    assert again.replayed and (again.payment_id, again.receipt_no) == (first.payment_id, first.receipt_no)
    assert (again.amount, again.applied, again.credit, again.late_fees_posted) == (
        first.amount,
        first.applied,
        first.credit,
        first.late_fees_posted,
    )
    by_card = pay(store, "25.01", "clerk", card_no="CARD-9", paid_on=ON, method="wechat", idempotency_key="k-1")
    assert by_card.receipt_no == first.receipt_no  # the same account, found by its card
    assert booked(store) == written
    assert at(store, ids["1001"], "2024-03-05").total_due == due
    # a later day, a reversal in between: still the same payment, never a second one
    reverse_payment(store, first.payment_id, "boss", "wrong amount", reversed_on=ON)
    late = pay(store, "25.01", "clerk", account_no="1001", paid_on=day("2024-03-06"), method="wechat",
               idempotency_key="k-1")  # fmt: skip
    assert late.payment_id == first.payment_id and count(store, "payment") == 1
    with store.connection() as conn:
        rows = conn.execute("SELECT actor, idempotency_key, payment_id, batch_id FROM payment_idempotency").fetchall()
    assert rows == [("clerk", "k-1", first.payment_id, None)]


def test_the_same_key_for_a_different_request_is_refused_and_changes_nothing(store: Store) -> None:
    billed(store, {"1001": ["10"], "1002": ["5"]})
    first = pay(store, "20.00", "clerk", account_no="1001", paid_on=ON, method="cash", idempotency_key="k-2")
    written = booked(store)
    for changed in ({"amount": "20.01"}, {"account_no": "1002"}, {"method": "card"}):
        request: dict[str, Any] = {"amount": "20.00", "account_no": "1001", "method": "cash", **changed}
        refused = rf"'k-2' was already used by clerk for payment {first.payment_id}, a different request"
        with pytest.raises(IdempotencyConflict, match=refused):
            pay(store, request.pop("amount"), "clerk", paid_on=ON, idempotency_key="k-2", **request)
    with pytest.raises(IdempotencyConflict, match="a different request"):
        pay_related(store, "1001", "clerk", "20.00", paid_on=ON, method="cash", idempotency_key="k-2")
    with pytest.raises(IdempotencyConflict, match="a different request"):
        pay_batch(store, "clerk", account_nos=["1001"], paid_on=ON, method="cash", idempotency_key="k-2")
    assert booked(store) == written
    with pytest.raises(LedgerError, match=f"at most {KEY_MAX} characters"):
        pay(store, "1.00", "clerk", account_no="1001", paid_on=ON, idempotency_key="x" * (KEY_MAX + 1))
    assert booked(store) == written


def test_keys_belong_to_their_actor_and_no_key_means_a_new_payment(store: Store) -> None:
    billed(store, {"1001": ["10"]})
    mine = pay(store, "1.00", "clerk", account_no="1001", paid_on=ON, idempotency_key="shared")
    theirs = pay(store, "1.00", "boss", account_no="1001", paid_on=ON, idempotency_key="shared")
    assert mine.payment_id != theirs.payment_id and not theirs.replayed
    plain = [pay(store, "1.00", "clerk", account_no="1001", paid_on=ON, idempotency_key=" ") for _ in range(2)]
    assert plain[0].payment_id != plain[1].payment_id  # a blank key is no key
    assert count(store, "payment") == 4 and count(store, "payment_idempotency") == 2


def test_two_concurrent_requests_with_one_key_book_one_payment(store: Store) -> None:
    ids = billed(store, {"1001": ["10", "20"]}, rule=FIXED_FEE)
    results: list[PaymentResult] = []
    failures: list[BaseException] = []
    start = threading.Barrier(3)

    def request() -> None:
        start.wait()
        try:
            results.append(
                pay(store, "30.00", "clerk", account_no="1001", paid_on=ON, method="cash", idempotency_key="dbl")
            )
        except BaseException as exc:  # reported below
            failures.append(exc)

    # Hold the account so that neither request can finish before both are under way.
    with store.transaction() as holder:
        holder.execute("SELECT id FROM account WHERE id = %s FOR UPDATE", [ids["1001"]])
        threads = [threading.Thread(target=request) for _ in range(2)]
        for thread in threads:
            thread.start()
        start.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # one waits for the account, the other for the key
            holder.execute("SELECT pg_stat_clear_snapshot()")  # statistics are otherwise read once per transaction
            waiting = holder.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()
            if waiting and waiting[0] >= 2:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the two requests did not both wait")
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert sorted(r.replayed for r in results) == [False, True]
    assert results[0].payment_id == results[1].payment_id and results[0].receipt_no == results[1].receipt_no
    assert (count(store, "payment"), count(store, "receipt")) == (1, 1)
    assert at(store, ids["1001"], "2024-03-05").total_due == D("35.00")  # 20 + 40 + January's 5.00 fee - 30


def test_related_and_batch_payments_take_keys_too(store: Store) -> None:
    ids = billed(store, {"1001": ["10"], "1002": ["5"], "1003": ["30"]}, community={"1003": "SOUTH"})
    with store.transaction() as conn:
        group = conn.execute("INSERT INTO account_group (name) VALUES ('family') RETURNING id").fetchone()
        assert group is not None
        for no in ("1001", "1002"):
            conn.execute("INSERT INTO account_group_member VALUES (%s, %s)", [group[0], ids[no]])
    related = pay_related(store, "1002", "clerk", paid_on=ON, idempotency_key="rel")
    assert (related.amount, related.applied) == (D("30.00"), {ids["1001"]: D("20.00"), ids["1002"]: D("10.00")})
    again = pay_related(store, "1002", "clerk", paid_on=ON, idempotency_key="rel")
    assert again.replayed and (again.receipt_no, again.applied) == (related.receipt_no, related.applied)
    with pytest.raises(IdempotencyConflict):
        pay_related(store, "1002", "clerk", "5.00", paid_on=ON, idempotency_key="rel")
    batch = pay_batch(store, "clerk", community="SOUTH", paid_on=ON, idempotency_key="bat")
    retry = pay_batch(store, "clerk", community="SOUTH", paid_on=ON, idempotency_key="bat")
    assert retry.replayed and retry.batch_id == batch.batch_id
    assert [(p.payment_id, p.amount) for p in retry.payments] == [(p.payment_id, p.amount) for p in batch.payments]
    with pytest.raises(IdempotencyConflict):
        pay_batch(store, "clerk", community="C1", paid_on=ON, idempotency_key="bat")
    assert (count(store, "payment"), count(store, "payment_batch")) == (2, 1)
    # a batch that finds nobody owing writes nothing, its key included
    assert pay_batch(store, "clerk", community="C1", paid_on=ON, idempotency_key="none").batch_id is None
    assert count(store, "payment_idempotency") == 2
