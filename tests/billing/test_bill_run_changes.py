"""Store runs across changes inside a billing period: a price change split by the readings' dates (or by
days), and a change of an account's usage type (改用气性质) with an effective date."""

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from billing.bill_run import run_bills
from meterhub.accounts import change_usage_type
from meterhub.store import Store
from tests.billing.store_helpers import D, account, approve, bill_of, flat, tiered, usage_type

ISSUED = dt.date(2024, 7, 1)
ZONE = ZoneInfo("Asia/Shanghai")  # the settings' default time zone: days are local days


def _price_change(split: str | None) -> dict[str, Any]:
    tariff: dict[str, Any] = {
        "periods": [
            {"effective_from": "2020-01-01", "price": "3.00"},
            {"effective_from": "2024-06-16", "price": "3.30"},
        ]
    }
    return tariff if split is None else {**tariff, "price_change_split": split}


def _at(day: str, hour: int = 0) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(hour), ZONE)


def _telemetry(conn: psycopg.Connection[Any], meter: int, *readings: tuple[dt.datetime, str]) -> None:
    for ts, value in readings:
        conn.execute(
            "INSERT INTO reading (meter_id, channel, ts, value) VALUES (%s, 'volume_m3', %s, %s)", [meter, ts, value]
        )


def test_a_price_change_inside_the_period_split_by_the_readings_dates(store: Store) -> None:
    with store.transaction() as conn:
        usage_type(conn, "READ", _price_change("readings"))
        usage_type(conn, "DAYS", _price_change("days"))
        usage_type(conn, "RUN", _price_change(None))  # the run's setting: by days
        daily, daily_meter = account(conn, "1001", usage="READ")
        manual, manual_meter = account(conn, "1002", usage="READ")
        unread, unread_meter = account(conn, "1003", usage="READ")
        by_days, by_days_meter = account(conn, "1004", usage="DAYS")
        by_run, by_run_meter = account(conn, "1005", usage="RUN")
        # 50 m3 before the change (June 1-15) and 10 m3 after it, by the meters' registers at local midnight
        for meter in (daily_meter, by_days_meter, by_run_meter):
            _telemetry(
                conn, meter, (_at("2024-06-01"), "1000"), (_at("2024-06-16"), "1050"), (_at("2024-07-01"), "1060")
            )
        # read by hand on the day of the change, at 10:00: 20 m3 from June 1 to then, 40 m3 after
        for ts, value in ((_at("2024-06-01"), "500"), (_at("2024-06-16", 10), "520"), (_at("2024-07-01"), "560")):
            conn.execute(
                "INSERT INTO manual_reading (meter_id, period, ts, value, source) VALUES (%s, '2024-06', %s, %s, "
                "'manual')",
                [manual_meter, ts, value],
            )
        for acc, meter in ((daily, daily_meter), (manual, manual_meter), (unread, unread_meter)):
            approve(conn, acc, meter, "2024-06", "60")
        approve(conn, by_days, by_days_meter, "2024-06", "60")
        approve(conn, by_run, by_run_meter, "2024-06", "60")
    result = run_bills(store, "2024-06", issued_on=ISSUED)
    assert result.bills_created == 5 and result.problems.is_empty()

    def energy(acc: int) -> list[tuple[Any, ...]]:
        return [(line[3], line[4], line[5]) for line in bill_of(store, acc, "2024-06")[1]]

    # by the readings: 50 m3 x 3.00 = 150.00 and 10 m3 x 3.30 = 33.00
    assert energy(daily) == [(D("50.000"), D("3.0000"), D("150.00")), (D("10.000"), D("3.3000"), D("33.00"))]
    assert bill_of(store, daily, "2024-06")[0] == D("183.00")
    # the 20 m3 read at 10:00 on June 16 spread over the 370 hours since June 1: 10 of them, 20 x 10/370 =
    # 0.540 m3 (floored to the litre), fall after the change; 19.460 m3 before it, 40.540 m3 after:
    # 19.460 x 3.00 = 58.38, 40.540 x 3.30 = 133.782 -> 133.78
    assert energy(manual) == [(D("19.460"), D("3.0000"), D("58.38")), (D("40.540"), D("3.3000"), D("133.78"))]
    # no readings: by days, 15 and 15 of June's 30 days -> 30 m3 x 3.00 = 90.00, 30 m3 x 3.30 = 99.00
    by_days_lines = [(D("30.000"), D("3.0000"), D("90.00")), (D("30.000"), D("3.3000"), D("99.00"))]
    assert energy(unread) == by_days_lines
    # tariffs that split by days, or leave it to the run (by days), ignore the same readings
    assert energy(by_days) == energy(by_run) == by_days_lines


def test_a_usage_type_change_inside_the_period_prices_each_part_at_its_type(store: Store) -> None:
    rental = {"code": "meter_rental", "amount_per_month": "2.00"}
    with store.transaction() as conn:
        res = usage_type(conn, "RES", tiered(fixed_charges=[rental]))
        usage_type(conn, "COM", flat("3.50", fixed_charges=[{"code": "meter_rental", "amount_per_month": "5.00"}]))
        shop = usage_type(conn, "SHOP", flat("4.00"))
        changed, changed_meter = account(conn, "1001")
        later, later_meter = account(conn, "1002")
        mixed, own_meter = account(conn, "1003")
        shop_meter = conn.execute(
            "INSERT INTO meter (meter_no, driver_key, account_id, status, usage_type_id) "
            "VALUES ('M-1003-shop', 'native_json', %s, 'installed', %s) RETURNING id",
            [mixed, shop],
        ).fetchone()
        res_meter = conn.execute(
            "INSERT INTO meter (meter_no, driver_key, account_id, status, usage_type_id) "
            "VALUES ('M-1003-res', 'native_json', %s, 'installed', %s) RETURNING id",
            [mixed, res],
        ).fetchone()
        assert shop_meter is not None and res_meter is not None
        conn.execute("UPDATE account SET opened_on = '2020-01-01'")
        approve(conn, changed, changed_meter, "2024-06", "60")
        approve(conn, later, later_meter, "2024-06", "60")
        approve(conn, mixed, own_meter, "2024-06", "60")
        approve(conn, mixed, shop_meter[0], "2024-06", "10")
        approve(conn, mixed, res_meter[0], "2024-06", "30")
    today = dt.date(2024, 7, 3)
    for no, effective in (
        ("1001", dt.date(2024, 6, 16)),
        ("1002", dt.date(2024, 7, 1)),
        ("1003", dt.date(2024, 6, 16)),
    ):
        change_usage_type(store, "clerk", no, usage_type="COM", effective_from=effective, reason="shop", today=today)
    run_bills(store, "2024-06", issued_on=ISSUED)

    # June 1-15 residential, June 16-30 commercial: 30 m3 each by days. 30 x 2.61 = 78.30 and
    # 30 x 3.50 = 105.00; the bill's type is the one on its last day, whose rental it carries: 5.00
    amount, lines = bill_of(store, changed, "2024-06")
    assert lines == [
        ("COM", "energy", 1, D("30.000"), D("3.5000"), D("105.00")),
        ("RES", "energy", 1, D("30.000"), D("2.6100"), D("78.30")),
        ("COM", "fixed_charge", None, None, D("5.0000"), D("5.00")),
    ]
    assert amount == D("188.30")
    # changed from July 1 on (and recorded before the run): June is residential all month
    amount, lines = bill_of(store, later, "2024-06")
    assert [line[:2] for line in lines] == [("RES", "energy"), ("RES", "fixed_charge")]
    assert amount == D("158.60")  # 60 x 2.61 = 156.60 + 2.00
    # a meter without a type of its own and one that had the account's type (moved by the change) follow
    # it: 60 + 30 m3, split 45 / 45; the shop meter keeps its own type all month: 10 x 4.00 = 40.00
    amount, lines = bill_of(store, mixed, "2024-06")
    assert [(line[0], line[3], line[5]) for line in lines if line[1] == "energy"] == [
        ("COM", D("45.000"), D("157.50")),
        ("RES", D("45.000"), D("117.45")),
        ("SHOP", D("10.000"), D("40.00")),
    ]
    assert amount == D("319.95")  # 157.50 + 117.45 + 40.00 + 5.00
    with store.connection() as conn:
        types = conn.execute(
            "SELECT b.account_id, u.code FROM bill b JOIN usage_type u ON u.id = b.usage_type_id ORDER BY 1"
        ).fetchall()
    assert types == [(changed, "COM"), (later, "RES"), (mixed, "COM")]
