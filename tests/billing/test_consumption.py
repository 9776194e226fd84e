"""Consumption from cumulative registers: rollover, replacement, resets, duplicates, missing days."""

from datetime import date, datetime, timedelta
from decimal import Decimal

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from billing.consumption import (
    _series,
    _sorted_by_columns,
    daily_consumption,
    duplicate_conflicts,
    interval_consumption,
    ordered_readings,
    period_consumption,
)
from tests.billing.helpers import VOLUME, daily, day, meters, readings

METER = meters((1, "99999.999"))


def uses(frame: pl.LazyFrame) -> list[tuple[Decimal | None, str]]:
    out = frame.collect()
    assert out["use_m3"].dtype == VOLUME
    return list(zip(out["use_m3"].to_list(), out["kind"].cast(pl.String).to_list(), strict=True))


def test_normal_use_is_the_difference_of_consecutive_readings() -> None:
    # 10.000 -> 12.345 -> 12.345: 2.345 then 0
    frame = interval_consumption(readings(daily(1, ["10.000", "12.345", "12.345"])), METER)
    assert uses(frame) == [(Decimal("2.345"), "normal"), (Decimal("0.000"), "normal")]


def test_rollover_at_five_digit_register() -> None:
    # register 99999.999 wraps to 0 at 100000.000: 99998.500 -> 1.250 is 100000 - 99998.500 + 1.250 = 2.750
    frame = interval_consumption(readings(daily(1, ["99998.500", "1.250"])), METER)
    assert uses(frame) == [(Decimal("2.750"), "rollover")]


def test_rollover_at_seven_digit_register_with_centilitre_resolution() -> None:
    # 9999999.99 + 0.01 = 10000000.00: 9999990.00 -> 5.00 is 10.00 + 5.00 = 15.000
    m = meters((7, "9999999.99"), register_resolution=[Decimal("0.01")])
    frame = interval_consumption(readings(daily(7, ["9999990.00", "5.00"])), m)
    assert uses(frame) == [(Decimal("15.000"), "rollover")]


def test_small_drop_is_negative_use_and_nets_out() -> None:
    # 100.000 -> 99.998 -> 101.000: -0.002 then +1.002; the period total is 1.000
    rows = daily(1, ["100.000", "99.998", "101.000"])
    assert uses(interval_consumption(readings(rows), METER)) == [
        (Decimal("-0.002"), "negative"),
        (Decimal("1.002"), "normal"),
    ]
    period = period_consumption(readings(rows), METER, day(0), day(2)).collect()
    assert period["use_m3"].to_list() == [Decimal("1.000")]


def test_large_drop_is_a_reset_and_counting_restarts() -> None:
    # 5000 -> 20 is no rollover (100000 - 5000 + 20 = 95020 > 10% of the register) and more than 1 m3 back:
    # a reset with unknown use; then 20 -> 23 counts 3 from the new value
    rows = daily(1, ["4990.000", "5000.000", "20.000", "23.000"])
    assert uses(interval_consumption(readings(rows), METER)) == [
        (Decimal("10.000"), "normal"),
        (None, "reset"),
        (Decimal("3.000"), "normal"),
    ]
    period = period_consumption(readings(rows), METER, day(0), day(3)).collect().row(0, named=True)
    assert period["use_m3"] == Decimal("13.000")  # 10 + 3, the reset interval is unknown
    assert period["reset_count"] == 1
    assert period["estimation_needed"] is True
    assert period["estimation_reason"] == "register_reset"


def test_out_of_order_and_duplicate_input_is_sorted_and_deduplicated() -> None:
    rows = [(1, day(2), "13.000"), (1, day(0), "10.000"), (1, day(1), "11.500"), (1, day(1), "11.500")]
    frame = interval_consumption(readings(rows), METER).collect()
    assert frame["ts"].to_list() == [day(1), day(2)]
    assert frame["use_m3"].to_list() == [Decimal("1.500"), Decimal("1.500")]


def test_conflicting_duplicates_are_reported_and_the_latest_delivery_wins() -> None:
    rows = [(1, day(0), "10.000"), (1, day(1), "11.000"), (1, day(1), "12.000")]
    received = [day(0), day(1), day(1.5)]  # 12.000 arrived last
    frame = readings(rows, received_at=received)
    assert interval_consumption(frame, METER).collect()["use_m3"].to_list() == [Decimal("2.000")]
    conflicts = duplicate_conflicts(frame).collect()
    assert conflicts.rows() == [(1, day(1), 2, Decimal("11.000"), Decimal("12.000"))]


def test_only_the_volume_channel_counts() -> None:
    frame = readings(daily(1, ["1.000", "2.000"])).with_columns(
        pl.when(pl.col("ts") == day(1)).then(pl.lit("flow_m3h")).otherwise(pl.col("channel")).alias("channel")
    )
    assert interval_consumption(frame, METER).collect().height == 0


def test_period_uses_the_last_reading_at_or_before_each_boundary() -> None:
    # readings day 0: 100, day 10: 130, day 20: 150, day 31: 200; period (day 10, day 30]
    # start = reading at day 10 (130), end = last at or before day 30 = day 20 (150): use 20,
    # the end reading is 10 days stale -> estimation needed
    rows = [(1, day(0), "100"), (1, day(10), "130"), (1, day(20), "150"), (1, day(31), "200")]
    row = period_consumption(readings(rows), METER, day(10), day(30)).collect().row(0, named=True)
    assert (row["start_ts"], row["start_value"], row["end_ts"], row["end_value"]) == (
        day(10),
        Decimal("130.000"),
        day(20),
        Decimal("150.000"),
    )
    assert row["use_m3"] == Decimal("20.000")
    assert row["estimation_reason"] == "stale_end_reading"


def test_period_without_a_reading_before_its_start_needs_an_estimate() -> None:
    rows = [(1, day(5), "100"), (1, day(10), "104")]
    row = period_consumption(readings(rows), METER, day(0), day(10)).collect().row(0, named=True)
    assert row["use_m3"] == Decimal("4.000")
    assert row["estimation_needed"] is True
    assert row["estimation_reason"] == "no_start_reading"


def test_period_with_rollover_counts_it() -> None:
    # 99990 -> 99999 (9) -> 4 (rollover: 100000 - 99999 + 4 = 5) -> 10 (6): 20 in total
    rows = daily(1, ["99990.000", "99999.000", "4.000", "10.000"])
    row = period_consumption(readings(rows), METER, day(0), day(3)).collect().row(0, named=True)
    assert row["use_m3"] == Decimal("20.000")
    assert row["rollover_count"] == 1
    assert row["estimation_needed"] is False


def test_meter_replacement_adds_old_meter_up_to_final_and_new_meter_from_first() -> None:
    # account 100: meter 1 until day 15 (final reading 1530.000), meter 2 from day 15 (first reading 0.020)
    # telemetry: meter 1 day 0: 1500, day 10: 1520; meter 2 day 20: 5.020, day 30: 9.020
    # old meter: 1520 - 1500 = 20, then final 1530 - 1520 = 10 -> 30
    # new meter: 5.020 - 0.020 = 5, then 9.020 - 5.020 = 4 -> 9;  account use 39.000
    rows = [(1, day(0), "1500"), (1, day(10), "1520"), (2, day(20), "5.020"), (2, day(30), "9.020")]
    assignments = pl.LazyFrame(
        {
            "account_id": [100, 100],
            "meter_id": [1, 2],
            "valid_from": [day(-100), day(15)],
            "valid_to": [day(15), None],
            "first_value": [None, Decimal("0.020")],
            "final_value": [Decimal("1530.000"), None],
        },
        schema_overrides={"first_value": VOLUME, "final_value": VOLUME, "valid_to": pl.Datetime("us", "UTC")},
    )
    m = meters((1, "99999.999"), (2, "99999.999"))
    row = period_consumption(readings(rows), m, day(0), day(30), assignments=assignments).collect().row(0, named=True)
    assert row["account_id"] == 100
    assert row["use_m3"] == Decimal("39.000")
    assert row["meter_count"] == 2
    assert row["estimation_needed"] is False
    intervals = interval_consumption(readings(rows), m, assignments=assignments).collect()
    assert intervals["use_m3"].to_list() == [Decimal(x) for x in ("20.000", "10.000", "5.000", "4.000")]


def test_daily_consumption_marks_missing_and_catch_up_days() -> None:
    # readings 08:00 UTC (16:00 in Shanghai) on Jan 1, 2, 4: Jan 2 reads 2, Jan 3 missing, Jan 4 catches up 3
    rows = [(1, day(0.33), "10"), (1, day(1.33), "12"), (1, day(3.33), "15")]
    out = daily_consumption(readings(rows), METER, date(2024, 1, 1), date(2024, 1, 4)).collect()
    assert out.select("day", "use_m3", pl.col("status").cast(pl.String)).rows() == [
        (date(2024, 1, 1), None, "missing"),
        (date(2024, 1, 2), Decimal("2.000"), "read"),
        (date(2024, 1, 3), None, "missing"),
        (date(2024, 1, 4), Decimal("3.000"), "catch_up"),
    ]


def _total(rows: list[tuple[int, datetime, str]], start: datetime, end: datetime) -> dict[int, Decimal]:
    out = period_consumption(readings(rows), meters((1, "999.999"), (2, "999.999")), start, end).collect()
    return {r["meter_id"]: r["use_m3"] for r in out.iter_rows(named=True)}


@st.composite
def _register_walk(draw: st.DrawFn) -> list[tuple[int, datetime, str]]:
    """Readings of two meters on a 3-digit register, with rollovers, resets and irregular gaps."""
    rows: list[tuple[int, datetime, str]] = []
    for meter_id in (1, 2):
        value = draw(st.integers(0, 999_999))
        t = draw(st.integers(0, 48))
        for _ in range(draw(st.integers(1, 12))):
            rows.append((meter_id, day(t / 4), f"{Decimal(value) / 1000:.3f}"))
            step = draw(st.one_of(st.integers(0, 60_000), st.integers(-2_000, 0), st.integers(-999_999, 0)))
            value = (value + step) % 1_000_000 if step >= 0 else max(0, value + step)
            t += draw(st.integers(1, 12))
    return rows


@settings(max_examples=60, deadline=None)
@given(rows=_register_walk(), cut=st.integers(0, 40), data=st.data())
def test_period_total_is_the_sum_of_its_parts_whatever_the_order_and_duplication(
    rows: list[tuple[int, datetime, str]], cut: int, data: st.DataObject
) -> None:
    start, middle, end = day(0), day(cut / 2), day(30)
    whole = _total(rows, start, end)
    noisy = data.draw(st.permutations(rows + data.draw(st.lists(st.sampled_from(rows), max_size=10))))
    assert _total(noisy, start, end) == whole
    first, second = _total(noisy, start, middle), _total(noisy, middle, end)
    for meter_id, total in whole.items():
        assert first.get(meter_id, Decimal(0)) + second.get(meter_id, Decimal(0)) == total


@st.composite
def _deliveries(draw: st.DrawFn) -> pl.LazyFrame:
    """Readings of a few meters with many (meter, ts) delivered twice or more: settlement and telemetry, with
    and without a delivery time, equal and different values; whole seconds or not."""
    meter_ids = draw(st.lists(st.sampled_from([1, 2, 7, 2**40]), min_size=1, max_size=3, unique=True))
    sub_second = draw(st.booleans())
    rows = []
    for _ in range(draw(st.integers(1, 40))):
        seconds = draw(st.integers(0, 12)) * 21_600  # few instants: (meter, ts) often delivered twice
        micros = draw(st.sampled_from([0, 1, 500_000])) if sub_second else 0
        rows.append(
            {
                "meter_id": draw(st.sampled_from(meter_ids)),
                "ts": day(0) + timedelta(seconds=seconds, microseconds=micros),
                "value_l": draw(st.integers(0, 5)),
                "source": draw(st.sampled_from(["telemetry", "assignment"])),
                "received_at": draw(st.one_of(st.none(), st.integers(0, 3).map(day))),
            }
        )
    rows += draw(st.lists(st.sampled_from(rows), max_size=10))
    return pl.LazyFrame(
        rows, schema_overrides={"ts": pl.Datetime("us", "UTC"), "received_at": pl.Datetime("us", "UTC")}
    )


@settings(max_examples=150, deadline=None)
@given(frame=_deliveries())
def test_the_one_key_sort_orders_and_marks_duplicates_as_the_column_sort(frame: pl.LazyFrame) -> None:
    # ordered_readings packs (meter, ts) into one sort key and orders only the ties by the tie-break columns;
    # it must give exactly what sorting by all the columns gives (the meter 2**40 forces the column sort).
    series, keys = _series(frame, None)
    fast = ordered_readings(frame)[0].collect()
    reference = _sorted_by_columns(series, keys).collect()
    assert_frame_equal(fast, reference)
