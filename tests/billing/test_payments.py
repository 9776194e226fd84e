"""Counter, related-account and batch payments, prepayments, reversals and receipts."""

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.ledger import LedgerError
from billing.payments import PermissionDenied, pay, pay_batch, pay_related, reprint_receipt, reverse_payment
from meterhub.store import Store
from tests.billing.ledger_helpers import D, at, billed, day
from tests.billing.store_helpers import count


def test_payment_by_card_oldest_bill_first_and_advance_credit_for_the_next_bill(store: Store) -> None:
    ids = billed(store, {"1001": ["10", "20", "30"]}, cards={"1001": "CARD-9"})  # 20.00, 40.00, 60.00
    acc = ids["1001"]
    result = pay(store, "50.00", "clerk", card_no="CARD-9", paid_on=day("2024-03-05"))  # before March's bill
    position = at(store, acc, "2024-03-05")
    assert [(b.period, b.due) for b in position.bills] == [("2024-01", 0), ("2024-02", D("10.00"))]
    assert result.credit == 0
    pay(store, "100.00", "clerk", account_no="1001", paid_on=day("2024-03-20"))  # 10.00 due, 90.00 in advance
    position = at(store, acc, "2024-03-20")
    assert (position.total_due, position.credit) == (D("-90.00"), D("90.00"))
    position = at(store, acc, "2024-04-01")  # March's 60.00 is taken from the credit
    assert (position.total_due, position.credit, position.bill("2024-03").due) == (D("-30.00"), D("30.00"), 0)
    with store.connection() as conn:
        kinds = conn.execute("SELECT entry_type, amount FROM ledger_entry WHERE payment_id IS NOT NULL ORDER BY id")
        assert kinds.fetchall() == [("payment", D("-50.00")), ("payment", D("-10.00")), ("prepayment", D("-90.00"))]
    with pytest.raises(LedgerError, match="no account"):
        pay(store, "1.00", "clerk", card_no="NOPE")
    with pytest.raises(LedgerError, match="2 decimals"):
        pay(store, "1.001", "clerk", account_no="1001")


def test_related_accounts_pay_together(store: Store) -> None:
    ids = billed(store, {"1001": ["10", "10"], "1002": ["5", "5"], "1003": ["50"]})
    with store.transaction() as conn:
        row = conn.execute("INSERT INTO account_group (name) VALUES ('family') RETURNING id").fetchone()
        assert row is not None
        for no in ("1001", "1002"):
            conn.execute("INSERT INTO account_group_member VALUES (%s, %s)", [row[0], ids[no]])
    # the group owes 40.00 + 20.00; a partial 50.00 goes to January of both, then February of 1001
    result = pay_related(store, "1002", "clerk", "50.00", paid_on=day("2024-03-05"))
    assert result.applied == {ids["1001"]: D("40.00"), ids["1002"]: D("10.00")}
    assert at(store, ids["1002"], "2024-03-05").bill("2024-02").due == D("10.00")
    rest = pay_related(store, "1001", "clerk", paid_on=day("2024-03-05"))
    assert (rest.amount, rest.applied) == (D("10.00"), {ids["1002"]: D("10.00")})
    assert at(store, ids["1003"], "2024-03-05").total_due == D("100.00")  # not related


def test_batch_payment_by_community_and_by_list(store: Store) -> None:
    ids = billed(
        store,
        {"1001": ["10"], "1002": ["20"], "1003": ["30"], "1004": ["0"]},
        community={"1001": "NORTH", "1002": "NORTH", "1003": "SOUTH", "1004": "NORTH"},
    )
    batch = pay_batch(store, "clerk", community="NORTH", paid_on=day("2024-02-10"))
    assert (len(batch.payments), batch.amount) == (2, D("60.00"))  # 1004 owes nothing
    assert [at(store, ids[n], "2024-02-10").total_due for n in ("1001", "1002", "1003")] == [0, 0, D("60.00")]
    with pytest.raises(LedgerError, match="unknown account numbers: 9999"):
        pay_batch(store, "clerk", account_nos=["1003", "9999"])
    assert at(store, ids["1003"], "2024-02-10").total_due == D("60.00")  # nothing half-applied
    assert pay_batch(store, "clerk", account_nos=["1003"], paid_on=day("2024-02-10")).amount == D("60.00")
    assert pay_batch(store, "clerk", account_nos=["1003"], paid_on=day("2024-02-10")).batch_id is None


def test_reversal_mirrors_the_payment_once_and_receipts_reprint(store: Store) -> None:
    ids = billed(store, {"1001": ["50"]})
    result = pay(store, "150.00", "clerk", account_no="1001", paid_on=day("2024-02-10"))
    with pytest.raises(PermissionDenied):
        reverse_payment(store, result.payment_id, "clerk", "wrong account", reversed_on=day("2024-02-11"))
    reverse_payment(store, result.payment_id, "boss", "wrong account", reversed_on=day("2024-02-11"))
    assert at(store, ids["1001"], "2024-02-11").total_due == D("100.00")
    with pytest.raises(LedgerError, match="already reversed"):
        reverse_payment(store, result.payment_id, "boss", "again", reversed_on=day("2024-02-11"))
    with store.connection() as conn:
        mirrored = conn.execute(
            "SELECT e.amount, r.amount FROM ledger_entry r JOIN ledger_entry e ON e.id = r.reverses_id ORDER BY r.id"
        ).fetchall()
    assert mirrored == [(D("-100.00"), D("100.00")), (D("-50.00"), D("50.00"))]
    receipt = reprint_receipt(store, result.receipt_no, "clerk")
    assert (receipt.print_count, receipt.mark, receipt.reversed) == (2, "重打 REPRINT 1", True)
    assert count(store, "receipt_print") == 2


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    amount=st.integers(min_value=1, max_value=50_000),
    pay_day=st.integers(min_value=0, max_value=90),
    volumes=st.lists(st.integers(min_value=0, max_value=80), min_size=1, max_size=3),
)
def test_paying_then_reversing_restores_the_balance(
    store: Store, amount: int, pay_day: int, volumes: list[int]
) -> None:
    with store.admin_connection() as conn:
        conn.execute(
            "TRUNCATE bill_run, bill, bill_line, ledger_entry, payment, receipt, late_fee_rule, billing_reading, "
            "meter, "
            "account, customer, community, area, tariff, usage_type, staff_user RESTART IDENTITY CASCADE"
        )
    rule = {"method": "daily_rate", "daily_rate": "0.0017", "grace_days": 3, "cap_pct": "30"}
    ids = billed(store, {"1001": [str(v) for v in volumes]}, rule)
    when = dt.date(2024, 2, 1) + dt.timedelta(days=pay_day)
    before = at(store, ids["1001"], when.isoformat())
    result = pay(store, D(amount) / 100, "clerk", account_no="1001", paid_on=when)
    paid = at(store, ids["1001"], when.isoformat())
    assert paid.total_due == before.total_due - D(amount) / 100
    assert paid.total_due == sum((b.due for b in paid.bills), D(0)) - paid.credit
    reverse_payment(store, result.payment_id, "boss", "test", reversed_on=when)
    after = at(store, ids["1001"], when.isoformat())
    assert after.total_due == before.total_due
    later = (when + dt.timedelta(days=40)).isoformat()
    assert at(store, ids["1001"], later).total_due >= after.total_due
