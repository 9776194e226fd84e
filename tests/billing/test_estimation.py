"""Estimation methods with hand-computed cases; estimates never pass for real readings."""

from decimal import Decimal

import polars as pl
import pytest

from billing.estimation import estimate, estimate_use, interpolate_readings
from tests.billing.helpers import day, meters, readings

METER = meters((1, "99999.999"))


def targets(start: float, end: float) -> pl.LazyFrame:
    return pl.LazyFrame({"meter_id": [1], "period_start": [day(start)], "period_end": [day(end)]})


def points(*days: float) -> pl.LazyFrame:
    return pl.LazyFrame({"meter_id": [1] * len(days), "ts": [day(d) for d in days]})


def test_linear_interpolation_of_a_register_value() -> None:
    # 100.000 at day 0, 110.000 at day 4: at day 1 -> 100 + 10 × 1/4 = 102.500
    rows = [(1, day(0), "100.000"), (1, day(4), "110.000")]
    out = interpolate_readings(readings(rows), METER, points(1, 4)).collect()
    assert out.rows() == [
        (1, day(1), Decimal("102.500"), "estimated", "linear_interpolation", day(0), day(4)),
        (1, day(4), Decimal("110.000"), "actual", None, day(4), day(4)),
    ]


def test_interpolation_across_a_rollover_wraps_the_register() -> None:
    # 99998.000 -> 2.000 is 4 m3 over 2 days: at day 1.5 -> 99998 + 3 = 100001 -> wraps to 1.000
    rows = [(1, day(0), "99998.000"), (1, day(2), "2.000")]
    out = interpolate_readings(readings(rows), METER, points(1.5)).collect()
    assert out["estimated_value"].to_list() == [Decimal("1.000")]


def test_interpolation_rounds_half_up_to_the_litre() -> None:
    # 0.000 -> 0.001 over 2 days: at day 1 -> 0.0005 m3 -> 0.001
    rows = [(1, day(0), "0.000"), (1, day(2), "0.001")]
    assert interpolate_readings(readings(rows), METER, points(1)).collect()["estimated_value"].to_list() == [
        Decimal("0.001")
    ]


def test_no_interpolation_outside_the_readings_or_across_a_reset() -> None:
    rows = [(1, day(0), "500"), (1, day(2), "3"), (1, day(4), "5")]  # day 0 -> 2 is a reset
    out = interpolate_readings(readings(rows), METER, points(1, 3, 5)).collect()
    # day 3: 3 + 2 × 1/2 = 4.000; day 1 crosses the reset, day 5 is after the last reading
    assert out["estimated_value"].to_list() == [None, Decimal("4.000"), None]


def test_period_use_by_interpolation() -> None:
    # readings day 0: 10, day 10: 30, day 20: 40; period (day 5, day 15]:
    # register at day 5 = 10 + 20 × 5/10 = 20; at day 15 = 30 + 10 × 5/10 = 35; use 15.000
    rows = [(1, day(0), "10"), (1, day(10), "30"), (1, day(20), "40")]
    row = estimate_use(readings(rows), METER, targets(5, 15), "linear_interpolation").collect().row(0, named=True)
    assert row == {
        "meter_id": 1,
        "period_start": day(5),
        "period_end": day(15),
        "estimated_use_m3": Decimal("15.000"),
        "quality": "estimated",
        "estimation_method": "linear_interpolation",
        "basis_from": day(0),
        "basis_to": day(20),
    }


def test_period_use_by_average_daily_use() -> None:
    # lookback 90 days before day 100: first good reading day 20 (100), last day 100 (260): 160 m3 / 80 days
    # = 2 m3/day; period of 7 days -> 14.000
    rows = [(1, day(0), "50"), (1, day(20), "100"), (1, day(60), "180"), (1, day(100), "260")]
    row = estimate_use(readings(rows), METER, targets(100, 107), "average_daily").collect().row(0, named=True)
    assert row["estimated_use_m3"] == Decimal("14.000")
    assert (row["basis_from"], row["basis_to"]) == (day(20), day(100))


def test_period_use_same_period_last_year() -> None:
    # a year before (2025-01-11, 2025-01-21] is (2024-01-11, 2024-01-21] = days 10..20, interpolated:
    # day 10 -> 100 + 100 × 10/40 = 125; day 20 -> 150; use 25.000
    rows = [(1, day(0), "100"), (1, day(40), "200"), (1, day(400), "900")]
    row = estimate_use(readings(rows), METER, targets(376, 386), "same_period_last_year").collect().row(0, named=True)
    assert row["period_start"].year == 2025
    assert row["estimated_use_m3"] == Decimal("25.000")
    assert row["estimation_method"] == "same_period_last_year"


def test_rejected_and_estimated_readings_are_not_a_basis() -> None:
    # day 10 reading is rejected and day 5 was an estimate: interpolate day 0 (0) -> day 20 (20) at day 10 = 10
    rows = [(1, day(0), "0"), (1, day(5), "99"), (1, day(10), "50"), (1, day(20), "20")]
    frame = readings(rows, quality=["good", "estimated", "good", "good"])
    rejected = pl.LazyFrame({"meter_id": [1], "ts": [day(10)]})
    out = interpolate_readings(frame, METER, points(10), rejected=rejected).collect()
    assert out.row(0, named=True)["estimated_value"] == Decimal("10.000")
    assert out.row(0, named=True)["quality"] == "estimated"


def test_estimate_takes_the_first_method_with_a_basis() -> None:
    # no reading after day 30, so interpolation has no basis; average daily: 1 m3/day × 10 days = 10.000
    rows = [(1, day(d), str(d)) for d in range(0, 31, 5)]
    out = estimate(readings(rows), METER, targets(30, 40)).collect().row(0, named=True)
    assert out["estimation_method"] == "average_daily"
    assert out["estimated_use_m3"] == Decimal("10.000")


def test_estimates_keep_their_own_columns() -> None:
    rows = [(1, day(0), "0"), (1, day(10), "10")]
    out = estimate(readings(rows), METER, targets(2, 4)).collect()
    assert "use_m3" not in out.columns and "value" not in out.columns
    assert out["quality"].to_list() == ["estimated"]


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown estimation method"):
        estimate_use(readings([(1, day(0), "1")]), METER, targets(0, 1), "guess")
