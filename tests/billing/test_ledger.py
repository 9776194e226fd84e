"""Balances, arrears and late fees: hand-computed, the same whenever shown or paid."""

import pytest

from billing.ledger import LedgerError
from billing.payments import PermissionDenied, pay, waive
from meterhub.store import Store
from tests.billing.ledger_helpers import D, at, billed, day

# January: 50 m3 x 2.00 = 100.00, issued 2024-02-01, due 2024-02-16
DAILY = {"method": "daily_rate", "daily_rate": "0.003", "grace_days": 5, "cap_amount": "5.00", "cap_pct": "10"}


def test_daily_late_fee_with_grace_and_cap(store: Store) -> None:
    ids = billed(store, {"1001": ["50"]}, DAILY)
    acc = ids["1001"]
    assert at(store, acc, "2024-01-31").total_due == 0  # not issued yet
    assert (at(store, acc, "2024-02-16").total_due, at(store, acc, "2024-02-16").arrears) == (D("100.00"), 0)
    assert at(store, acc, "2024-02-21").total_due == D("100.00")  # last day of grace
    assert at(store, acc, "2024-02-22").total_due == D("100.30")  # 1 day x 100 x 0.3 %
    march_2 = at(store, acc, "2024-03-02")  # 10 days (leap February): 3.00
    assert (march_2.total_due, march_2.unposted_fee, march_2.ledger_balance) == (D("103.00"), D("3.00"), D("100.00"))
    assert march_2.arrears == D("103.00")
    assert at(store, acc, "2024-03-31").total_due == D("105.00")  # 39 days would be 11.70: capped at 5.00


def test_a_partial_payment_pays_the_late_fee_first_and_fees_continue_on_the_rest(store: Store) -> None:
    ids = billed(store, {"1001": ["50"]}, DAILY)
    acc = ids["1001"]
    result = pay(store, "50.00", "clerk", account_no="1001", paid_on=day("2024-03-02"))
    assert (result.late_fees_posted, result.applied, result.credit) == (D("3.00"), {acc: D("50.00")}, 0)
    after = at(store, acc, "2024-03-02")
    bill = after.bill("2024-01")
    assert (bill.fee_due, bill.principal_due, after.total_due) == (0, D("53.00"), D("53.00"))
    assert after.unposted_fee == 0 and after.ledger_balance == D("53.00")
    # 10 more days on 53.00: 1.59
    assert at(store, acc, "2024-03-12").total_due == D("54.59")
    # 29 days on 53.00 would be 4.61, 7.61 in all: the bill's fees stop at the cap of 5.00 (2.00 still open)
    assert at(store, acc, "2024-03-31").total_due == D("55.00")


def test_stepped_and_fixed_late_fees(store: Store) -> None:
    steps = [{"from_day": 1, "daily_rate": "0.001"}, {"from_day": 11, "daily_rate": "0.002"}]
    ids = billed(store, {"1001": ["50"]}, {"method": "stepped", "steps": steps})
    # 15 days late: 10 x 0.1 % + 5 x 0.2 % of 100.00 = 2.00
    assert at(store, ids["1001"], "2024-03-02").total_due == D("102.00")


def test_fixed_late_fee_once_after_grace(store: Store) -> None:
    ids = billed(store, {"1001": ["50"], "1002": ["50"]}, {"method": "fixed", "fixed_amount": "10.00", "grace_days": 3})
    assert at(store, ids["1001"], "2024-02-19").total_due == D("100.00")
    assert at(store, ids["1001"], "2024-02-20").total_due == D("110.00")
    assert at(store, ids["1001"], "2024-04-20").total_due == D("110.00")
    pay(store, "100.00", "clerk", account_no="1002", paid_on=day("2024-02-19"))  # within grace: no fee, ever
    assert at(store, ids["1002"], "2024-04-20").total_due == 0


def test_waivers_of_late_fee_and_principal(store: Store) -> None:
    ids = billed(store, {"1001": ["50"]}, {**DAILY, "cap_amount": None, "cap_pct": None})
    acc = ids["1001"]
    with pytest.raises(PermissionDenied):
        waive(store, "1001", "2024-01", "late_fee", "3.00", "first time late", "clerk", waived_on=day("2024-03-02"))
    with pytest.raises(LedgerError, match=r"3\.00 of late_fee open"):
        waive(store, "1001", "2024-01", "late_fee", "3.01", "too much", "boss", waived_on=day("2024-03-02"))
    waive(store, "1001", "2024-01", "late_fee", "3.00", "first time late", "boss", waived_on=day("2024-03-02"))
    assert at(store, acc, "2024-03-02").total_due == D("100.00")
    assert at(store, acc, "2024-03-12").total_due == D("103.00")  # fees keep accruing on the unpaid principal
    waive(store, "1001", "2024-01", "principal", "20.00", "meter fault", "boss", waived_on=day("2024-03-12"))
    # 80.00 principal and the 3.00 fee; 10 days on 80.00 add 2.40
    assert at(store, acc, "2024-03-22").total_due == D("85.40")
    with store.connection() as conn:
        rows = conn.execute("SELECT component, amount, reason, actor FROM waiver ORDER BY id").fetchall()
    assert rows == [
        ("late_fee", D("3.00"), "first time late", "boss"),
        ("principal", D("20.00"), "meter fault", "boss"),
    ]


def test_the_ledger_is_append_only(store: Store) -> None:
    billed(store, {"1001": ["50"]})
    with store.connection() as conn:
        for statement in (
            "UPDATE ledger_entry SET amount = 1",
            "DELETE FROM ledger_entry",
            "UPDATE bill SET amount = 1",
        ):
            with pytest.raises(Exception, match="append-only"), conn.transaction():
                conn.execute(statement)
