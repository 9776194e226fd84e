"""Hand-computed bills through the database: approved readings → bill run → bills, lines, ledger charges."""

import datetime as dt

import pytest

from billing.bill_run import BillRunError, run_bills
from meterhub.store import Store
from tests.billing.store_helpers import D, account, approve, bill_of, count, flat, tiered, usage_type

ISSUED = dt.date(2024, 7, 1)


def test_annual_tiers_cross_a_boundary_mid_year_from_earlier_bills(store: Store) -> None:
    with store.transaction() as conn:
        usage_type(conn, "RES", tiered())
        acc, meter = account(conn, "1001")
        approve(conn, acc, meter, "2023-12", "500")  # last year: does not count in 2024
        approve(conn, acc, meter, "2024-01", "300")
        approve(conn, acc, meter, "2024-02", "40")
        approve(conn, acc, meter, "2024-03", "30")
    for period in ("2023-12", "2024-01", "2024-02", "2024-03"):
        run_bills(store, period, issued_on=ISSUED)
    # January: 300 x 2.61 = 783.00; February 300 -> 340: 40 x 2.61 = 104.40
    assert bill_of(store, acc, "2024-01")[0] == D("783.00")
    assert bill_of(store, acc, "2024-02")[0] == D("104.40")
    # March 340 -> 370: 10 x 2.61 = 26.10 in tier 1, 20 x 3.03 = 60.60 in tier 2
    amount, lines = bill_of(store, acc, "2024-03")
    assert lines == [
        ("RES", "energy", 1, D("10.000"), D("2.6100"), D("26.10")),
        ("RES", "energy", 2, D("20.000"), D("3.0300"), D("60.60")),
    ]
    assert amount == D("86.70")
    with store.connection() as conn:
        ledger = conn.execute(
            "SELECT l.amount FROM ledger_entry l JOIN bill b ON b.id = l.bill_id "
            "WHERE l.entry_type = 'charge' AND b.period = '2024-03'"
        ).fetchall()
    assert ledger == [(D("86.70"),)]


def test_price_change_mid_period_split_by_days(store: Store) -> None:
    tariff = {
        "periods": [
            {"effective_from": "2020-01-01", "price": "3.00"},
            {"effective_from": "2024-06-16", "price": "3.30"},
        ]
    }
    with store.transaction() as conn:
        usage_type(conn, "RES", tariff)
        acc, meter = account(conn, "1001")
        approve(conn, acc, meter, "2024-06", "60")
    run_bills(store, "2024-06", issued_on=ISSUED)
    # 15 days at 3.00 and 15 days at 3.30: 30 m3 each -> 90.00 + 99.00
    amount, lines = bill_of(store, acc, "2024-06")
    assert [line[3:] for line in lines] == [
        (D("30.000"), D("3.0000"), D("90.00")),
        (D("30.000"), D("3.3000"), D("99.00")),
    ]
    assert amount == D("189.00")


def test_household_size_enlarges_the_tiers(store: Store) -> None:
    with store.transaction() as conn:
        usage_type(conn, "RES", {**tiered(), "household": {"base_size": 4, "add_m3_per_person": "100"}})
        big, big_meter = account(conn, "1001", household_size=6)
        small, small_meter = account(conn, "1002", household_size=3)
        approve(conn, big, big_meter, "2024-01", "600")
        approve(conn, small, small_meter, "2024-01", "600")
    run_bills(store, "2024-01", issued_on=ISSUED)
    # 6 persons, 2 above 4: tiers end at 550 and 700 -> 550 x 2.61 = 1435.50, 50 x 3.03 = 151.50
    assert bill_of(store, big, "2024-01")[0] == D("1587.00")
    # 3 persons: 350 x 2.61 = 913.50, 150 x 3.03 = 454.50, 100 x 3.76 = 376.00
    assert bill_of(store, small, "2024-01")[0] == D("1744.00")


def test_several_usage_types_on_one_meter_by_quotas(store: Store) -> None:
    with store.transaction() as conn:
        usage_type(conn, "RES", tiered())
        shop = usage_type(conn, "SHOP", flat("3.50"))
        heat = usage_type(conn, "HEAT", flat("2.80"))
        acc, meter = account(conn, "1001")
        conn.execute(
            "INSERT INTO account_quota (account_id, usage_type_id, quota_m3, share_pct, priority) VALUES "
            "(%s, %s, 10, NULL, 0), (%s, %s, NULL, 20, 1)",
            [acc, shop, acc, heat],
        )
        approve(conn, acc, meter, "2024-01", "100")
    run_bills(store, "2024-01", issued_on=ISSUED)
    # SHOP takes 10 m3 (35.00), HEAT 20 % of 100 = 20 m3 (56.00), RES the other 70 m3 (182.70)
    amount, lines = bill_of(store, acc, "2024-01")
    assert sorted((line[0], line[3], line[5]) for line in lines) == [
        ("HEAT", D("20.000"), D("56.00")),
        ("RES", D("70.000"), D("182.70")),
        ("SHOP", D("10.000"), D("35.00")),
    ]
    assert amount == D("273.70") == sum(line[5] for line in lines)


def test_fixed_charges_minimum_and_a_switch_to_fixed_billing(store: Store) -> None:
    with store.transaction() as conn:
        usage_type(
            conn,
            "RES",
            tiered(
                fixed_price="2.80",
                minimum_charge="10.00",
                fixed_charges=[{"code": "meter_rental", "amount_per_month": "2.00"}],
            ),
        )
        low, low_meter = account(conn, "1001")
        switched, switched_meter = account(conn, "1002")
        conn.execute(
            "INSERT INTO account_billing_mode (account_id, effective_from, billing_mode) "
            "VALUES (%s, '2024-06-16', 'fixed')",
            [switched],
        )
        approve(conn, low, low_meter, "2024-06", "2")
        approve(conn, switched, switched_meter, "2024-06", "60")
    run_bills(store, "2024-06", issued_on=ISSUED)
    # 2 x 2.61 = 5.22, topped up by 4.78 to the minimum 10.00, plus rental 2.00
    amount, lines = bill_of(store, low, "2024-06")
    assert sorted((line[1], line[5]) for line in lines) == [
        ("energy", D("5.22")),
        ("fixed_charge", D("2.00")),
        ("minimum_topup", D("4.78")),
    ]
    assert amount == D("12.00")
    # tiered for 15 days (30 m3 x 2.61 = 78.30), fixed for 15 days (30 m3 x 2.80 = 84.00), rental 2.00
    amount, lines = bill_of(store, switched, "2024-06")
    assert sorted((line[2], line[3], line[5]) for line in lines if line[1] == "energy") == [
        (0, D("30.000"), D("84.00")),
        (1, D("30.000"), D("78.30")),
    ]
    assert amount == D("164.30")


def test_a_second_run_writes_nothing_and_reports_the_same_bills(store: Store) -> None:
    with store.transaction() as conn:
        usage_type(conn, "RES", tiered())
        for n in range(5):
            acc, meter = account(conn, f"100{n}", area="A1" if n < 3 else "A2", community="C1" if n < 3 else "C2")
            approve(conn, acc, meter, "2024-01", f"{10 + n}")
    first = run_bills(store, "2024-01", "area:A1", issued_on=ISSUED)
    assert (first.bills_created, first.bills) == (3, 3)
    again = run_bills(store, "2024-01", "area:A1", issued_on=ISSUED)
    assert (again.bills_created, again.run_id, again.bills, again.amount) == (0, None, 3, first.amount)
    assert count(store, "bill_run") == 1
    everything = run_bills(store, "2024-01", issued_on=ISSUED)
    assert (everything.bills_created, everything.bills) == (2, 5)
    single = run_bills(store, "2024-01", "account:1004", issued_on=ISSUED)
    assert (single.bills_created, single.bills) == (0, 1)
    assert count(store, "bill") == 5 and count(store, "ledger_entry") == 5


def test_unpriceable_accounts_are_reported_and_left_unbilled(store: Store) -> None:
    with store.transaction() as conn:
        usage_type(conn, "RES", tiered())
        usage_type(conn, "NOPRICE")
        good, good_meter = account(conn, "1001")
        bad, bad_meter = account(conn, "1002", usage="NOPRICE")
        approve(conn, good, good_meter, "2024-01", "10")
        approve(conn, bad, bad_meter, "2024-01", "10")
    result = run_bills(store, "2024-01", issued_on=ISSUED)
    assert result.bills_created == 1
    assert result.problems["account_id"].unique().to_list() == [bad]


def test_bad_period_and_scope_are_refused(store: Store) -> None:
    with pytest.raises(BillRunError, match="period"):
        run_bills(store, "2024-13")
    with pytest.raises(BillRunError, match="scope"):
        run_bills(store, "2024-01", "street:X")


def test_bill_run_command(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from meterhub.cli import app

    with store.transaction() as conn:
        usage_type(conn, "RES", tiered())
        acc, meter = account(conn, "1001")
        approve(conn, acc, meter, "2024-01", "10")
    monkeypatch.setenv("METERHUB_DATABASE_URL", store.url)
    result = CliRunner().invoke(app, ["bill", "run", "--period", "2024-01", "--scope", "account:1001"])
    assert result.exit_code == 0, result.output
    assert "1 bills created (26.10 yuan)" in result.output
    again = CliRunner().invoke(app, ["bill", "run", "--period", "2024-01"])
    assert "0 bills created" in again.output and "1 bills in scope, 26.10 yuan" in again.output
    assert CliRunner().invoke(app, ["bill", "run", "--period", "24-01"]).exit_code == 2
