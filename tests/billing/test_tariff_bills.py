"""Hand-computed bills through the vectorised pricing engine."""

import polars as pl
import pytest

from billing.pricing import PricingConfig, PricingError
from billing.quotas import split_by_quotas
from billing.rounding import RoundingMode
from tests.billing.tariff_helpers import BEIJING_TIERS, D, beijing, day, energy, items, price, total

JUNE = {"period_start": day("2024-06-01"), "period_end": day("2024-07-01"), "usage_type": "residential"}
Y2020 = day("2020-01-01")


def test_annual_tiers_crossing_a_boundary_mid_year() -> None:
    bill = price(
        beijing(),
        items(
            {"account_id": 1, **JUNE, "consumption_m3": "40.5", "cycle_used_m3": "330"},
            {"account_id": 2, **JUNE, "consumption_m3": "200", "cycle_used_m3": "340"},
            {"account_id": 3, **JUNE, "consumption_m3": "12", "cycle_used_m3": "600"},
        ),
    )
    # 330 -> 370.5: 20 m3 in tier 1 (20 x 2.61 = 52.20), 20.5 in tier 2 (20.5 x 3.03 = 62.115 -> 62.12)
    assert energy(bill, 1) == [
        ("residential", Y2020, 1, D("20.000"), D("2.6100"), D("52.20")),
        ("residential", Y2020, 2, D("20.500"), D("3.0300"), D("62.12")),
    ]
    assert total(bill, 1) == D("114.32")
    # 340 -> 540: 10 x 2.61 = 26.10; 150 x 3.03 = 454.50; 40 x 3.76 = 150.40; total 631.00
    assert [line[2:4] for line in energy(bill, 2)] == [(1, D(10)), (2, D(150)), (3, D(40))]
    assert total(bill, 2) == D("631.00")
    # already past 500: 12 x 3.76 = 45.12
    assert total(bill, 3) == D("45.12")
    assert bill.totals["volume_total_m3"].to_list() == [D("40.5"), D(200), D(12)]


def test_a_new_cycle_inside_the_bill_restarts_the_tiers() -> None:
    # 2023-12-16 .. 2024-01-15 is 30 days: 16 in December, 14 in January. 60 m3 by days: 32 and 28.
    # December: 340 -> 372: 10 in tier 1, 22 in tier 2. January starts the year at 0: 28 in tier 1.
    # tier 1: 38 x 2.61 = 99.18; tier 2: 22 x 3.03 = 66.66; total 165.84
    bill = price(
        beijing(),
        items(
            {
                "account_id": 1,
                "usage_type": "residential",
                "period_start": day("2023-12-16"),
                "period_end": day("2024-01-15"),
                "consumption_m3": "60",
                "cycle_used_m3": "340",
            }
        ),
    )
    assert [line[2:] for line in energy(bill)] == [
        (1, D(38), D("2.61"), D("99.18")),
        (2, D(22), D("3.03"), D("66.66")),
    ]
    assert total(bill) == D("165.84")


def test_custom_annual_cycle_and_monthly_cycle() -> None:
    # cycle from 07-01: a June bill is the end of the old cycle (cycle_used counts), a July bill starts fresh
    annual = beijing(cycle="annual", cycle_start="07-01")
    july = {"usage_type": "residential", "period_start": day("2024-07-01"), "period_end": day("2024-08-01")}
    bill = price(
        annual,
        items(
            {"account_id": 1, **JUNE, "consumption_m3": "20", "cycle_used_m3": "340"},
            {"account_id": 2, **july, "consumption_m3": "20", "cycle_used_m3": "0"},
        ),
    )
    assert total(bill, 1) == D("56.40")  # 10 x 2.61 + 10 x 3.03 = 26.10 + 30.30
    assert total(bill, 2) == D("52.20")  # 20 x 2.61
    # monthly tiers: 0-20 at 2.00, above at 3.00; May 21 .. June 21 (31 days, 11 in May, 20 in June), 62 m3:
    # May part 22 m3 (62 x 11 / 31), cycle_used 15 in May -> 5 at 2.00 + 17 at 3.00; June part 40 -> 20 + 20.
    # tier 1: 25 x 2.00 = 50.00; tier 2: 37 x 3.00 = 111.00; total 161.00
    monthly = {
        "residential": {
            "cycle": "month",
            "periods": [{"effective_from": "2020-01-01", "tiers": [{"upper_m3": 20, "price": 2}, {"price": 3}]}],
        }
    }
    bill = price(
        monthly,
        items(
            {
                "account_id": 1,
                "usage_type": "residential",
                "period_start": day("2024-05-21"),
                "period_end": day("2024-06-21"),
                "consumption_m3": "62",
                "cycle_used_m3": "15",
            }
        ),
    )
    assert [line[2:4] for line in energy(bill)] == [(1, D(25)), (2, D(37))]
    assert total(bill) == D("161.00")


PRICE_CHANGE = {
    "residential": {
        "cycle": "bill",
        "periods": [
            {"effective_from": "2020-01-01", "price": "2.50"},
            {"effective_from": "2024-06-11", "price": "2.80"},
        ],
    }
}


def test_price_change_split_by_days() -> None:
    bill = price(
        PRICE_CHANGE,
        items(
            {"account_id": 1, **JUNE, "consumption_m3": "30"},
            {"account_id": 2, **JUNE, "consumption_m3": "20"},
        ),
    )
    # 10 of 30 days at the old price: 30 m3 -> 10 x 2.50 = 25.00 and 20 x 2.80 = 56.00
    assert [line[1:] for line in energy(bill, 1)] == [
        (Y2020, 1, D(10), D("2.50"), D("25.00")),
        (day("2024-06-11"), 1, D(20), D("2.80"), D("56.00")),
    ]
    # 20 m3: 20 x 10/30 = 6.6666 -> 6.666 (floored to the litre) x 2.50 = 16.665 -> 16.67 (half up);
    # the rest 13.334 x 2.80 = 37.3352 -> 37.34; total 54.01
    assert [line[3:] for line in energy(bill, 2)] == [
        (D("6.666"), D("2.50"), D("16.67")),
        (D("13.334"), D("2.80"), D("37.34")),
    ]
    assert total(bill, 2) == D("54.01")
    half_even = price(
        PRICE_CHANGE,
        items({"account_id": 2, **JUNE, "consumption_m3": "20"}),
        PricingConfig(rounding=RoundingMode.HALF_EVEN),
    )
    assert total(half_even, 2) == D("54.00")  # 16.665 -> 16.66 half to even


def test_price_change_split_by_reading_dates() -> None:
    # 1 m3 a day June 1-10 (old price), 0.5 m3 a day June 11-30 (new price): 10 x 2.50 + 10 x 2.80 = 53.00
    daily = pl.DataFrame(
        {
            "account_id": [1] * 30,
            "day": pl.date_range(day("2024-06-01"), day("2024-06-30"), eager=True),
            "consumption_m3": [D(1)] * 10 + [D("0.5")] * 20,
        }
    )
    bill = price(
        PRICE_CHANGE,
        items({"account_id": 1, **JUNE, "consumption_m3": "20"}, {"account_id": 2, **JUNE, "consumption_m3": "20"}),
        PricingConfig(price_change_split="readings"),
        dated=daily,
    )
    assert [line[3:] for line in energy(bill, 1)] == [
        (D(10), D("2.50"), D("25.00")),
        (D(10), D("2.80"), D("28.00")),
    ]
    assert total(bill, 1) == D("53.00")
    assert total(bill, 2) == D("54.01")  # no dated consumption: split by days as above


def test_household_size_enlarges_tiers() -> None:
    tariff = beijing(household={"base_size": 4, "add_m3_per_person": 100})
    bill = price(
        tariff,
        items(
            {"account_id": 1, **JUNE, "consumption_m3": "100", "cycle_used_m3": "500", "household_size": 6},
            {"account_id": 2, **JUNE, "consumption_m3": "100", "cycle_used_m3": "500", "household_size": 4},
            {"account_id": 3, **JUNE, "consumption_m3": "100", "cycle_used_m3": "500", "household_size": None},
        ),
    )
    # 6 people: 2 extra -> bounds 550 and 700; 500 -> 600 is 50 x 2.61 + 50 x 3.03 = 130.50 + 151.50 = 282.00
    assert [line[2:4] for line in energy(bill, 1)] == [(1, D(50)), (2, D(50))]
    assert total(bill, 1) == D("282.00")
    # 4 people or unknown: all above 500, 100 x 3.76 = 376.00
    assert total(bill, 2) == total(bill, 3) == D("376.00")
    # by factor: +10 % per extra person, 6 people -> bounds x 1.2 = 420 and 600;
    # 400 -> 500: 20 x 2.61 + 80 x 3.03 = 52.20 + 242.40 = 294.60
    by_factor = price(
        beijing(household={"base_size": 4, "factor_per_person": "0.1"}),
        items({"account_id": 1, **JUNE, "consumption_m3": "100", "cycle_used_m3": "400", "household_size": 6}),
    )
    assert total(by_factor) == D("294.60")


TWO_TYPES = {
    **beijing(),
    "commercial": {"cycle": "bill", "periods": [{"effective_from": "2020-01-01", "price": "3.50"}]},
}


def test_several_usage_types_on_one_meter_with_a_fixed_quota_and_a_share() -> None:
    meters = items(
        {"account_id": 1, **JUNE, "consumption_m3": "100"},
        {"account_id": 2, **JUNE, "consumption_m3": "100.001"},
        {"account_id": 3, **JUNE, "consumption_m3": "20"},
    )
    quotas = pl.DataFrame(
        {
            "account_id": [1, 2, 3],
            "usage_type": ["commercial"] * 3,
            "quota_m3": [D(30), None, D(30)],
            "share_pct": [None, D(25), None],
        }
    )
    bill = price(TWO_TYPES, split_by_quotas(meters, quotas).collect())
    # fixed quota 30 m3: commercial 30 x 3.50 = 105.00, residential 70 x 2.61 = 182.70; total 287.70
    assert [(line[0], line[3], line[5]) for line in energy(bill, 1)] == [
        ("commercial", D(30), D("105.00")),
        ("residential", D(70), D("182.70")),
    ]
    assert total(bill, 1) == D("287.70")
    # 25 % of 100.001 = 25.00025 -> 25.000 (floored to the litre) x 3.50 = 87.50;
    # residential 75.001 x 2.61 = 195.75261 -> 195.75; total 283.25
    assert total(bill, 2) == D("283.25")
    # a quota larger than the consumption takes all of it: 20 x 3.50 = 70.00
    assert [(line[0], line[3]) for line in energy(bill, 3)] == [("commercial", D(20))]
    assert total(bill, 3) == D("70.00")


def test_fixed_monthly_charge_and_minimum_charge() -> None:
    tariff = beijing(
        period={"minimum_charge": "10", "fixed_charges": [{"code": "meter_rental", "amount_per_month": "2.00"}]}
    )
    bill = price(
        tariff,
        items(
            {"account_id": 1, **JUNE, "consumption_m3": "1"},
            {"account_id": 2, **JUNE, "consumption_m3": "5"},
            {"account_id": 3, **JUNE, "consumption_m3": "0"},
            {
                "account_id": 4,
                "usage_type": "residential",
                "period_start": day("2024-05-01"),
                "period_end": day("2024-07-01"),
                "consumption_m3": "10",
            },
        ),
    )
    lines = bill.lines.select("account_id", "line_kind", "charge_code", "amount").rows()
    # 1 m3: 2.61 energy + 2.00 rental + 7.39 to reach the 10.00 minimum of energy = 12.00
    assert [row for row in lines if row[0] == 1] == [
        (1, "energy", None, D("2.61")),
        (1, "fixed_charge", "meter_rental", D("2.00")),
        (1, "minimum_topup", None, D("7.39")),
    ]
    assert total(bill, 1) == D("12.00")
    assert total(bill, 2) == D("15.05")  # 5 x 2.61 = 13.05 above the minimum, + 2.00
    assert total(bill, 3) == D("12.00")  # nothing used: 10.00 minimum + 2.00 rental
    assert total(bill, 4) == D("30.10")  # two months: 10 x 2.61 = 26.10 + 2 x 2.00


def test_switching_from_fixed_to_tiered_mid_period() -> None:
    tariff = beijing(period={"fixed_price": "2.80"})
    bill = price(
        tariff,
        items(
            {
                "account_id": 1,
                "usage_type": "residential",
                "period_start": day("2024-06-01"),
                "period_end": day("2024-06-16"),
                "consumption_m3": "20",
                "cycle_used_m3": "340",
                "billing_mode": "fixed",
            },
            {
                "account_id": 1,
                "usage_type": "residential",
                "period_start": day("2024-06-16"),
                "period_end": day("2024-07-01"),
                "consumption_m3": "30",
                "cycle_used_m3": "340",
                "billing_mode": "tiered",
            },
        ),
    )
    # fixed part: 20 x 2.80 = 56.00 (tier 0). It still counts toward the year: tiered part runs 360 -> 390,
    # all in tier 2: 30 x 3.03 = 90.90. Total 146.90.
    assert [line[2:] for line in energy(bill)] == [
        (0, D(20), D("2.80"), D("56.00")),
        (2, D(30), D("3.03"), D("90.90")),
    ]
    assert total(bill) == D("146.90")
    assert bill.totals.height == 1


def test_items_that_cannot_be_priced_raise_with_reasons() -> None:
    with pytest.raises(PricingError) as caught:
        price(
            beijing(),
            items(
                {"account_id": 1, **JUNE, "consumption_m3": "1", "billing_mode": "tiered"},
                {
                    "account_id": 2,
                    **{**JUNE, "usage_type": "industrial"},
                    "consumption_m3": "1",
                    "billing_mode": "tiered",
                },
                {"account_id": 3, **JUNE, "consumption_m3": "1", "billing_mode": "prepaid"},
                {
                    "account_id": 4,
                    **{**JUNE, "period_start": day("2019-12-01")},
                    "consumption_m3": "1",
                    "billing_mode": "tiered",
                },
            ),
        )
    reasons = dict(caught.value.problems.select("account_id", "reason").rows())
    assert set(reasons) == {2, 3, 4}
    assert reasons[3] == "unknown billing_mode"
    assert "no tariff or price period" in reasons[4]


def test_period_column_and_string_account_ids() -> None:
    frame = items({"account_id": "A-1", "period": "2024-02", "usage_type": "residential", "consumption_m3": "1"})
    bill = price({"residential": {"periods": [{"effective_from": "2020-01-01", "tiers": BEIJING_TIERS}]}}, frame)
    assert total(bill, "A-1") == D("2.61")
