"""Validation rules, each with a hand-computed case, and the rule set as data."""

from datetime import datetime
from decimal import Decimal
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal, assert_series_equal

from billing.validation import FLAG_SCHEMA, RULE_IDS, RuleSet, _rolling_median, rejected_readings, validate
from tests.billing.helpers import daily, day, meters, readings

METER = meters((1, "99999.999"))


def only(rule_id: str, spike_min_history: int = 7, **default: object) -> RuleSet:
    return RuleSet.from_mapping(
        {
            "rule_set_version": "test-1",
            "enabled": [rule_id],
            "default": default,
            "spike_min_history": spike_min_history,
        }
    )


def flags(rows: list, rules: RuleSet, m: pl.LazyFrame = METER, **kwargs: object) -> list[tuple]:
    options = {"period_start": day(0), "period_end": day(30), "now": day(31), **kwargs}
    out = validate(readings(rows), m, rules, **options).collect()  # type: ignore[arg-type]
    assert out.schema == FLAG_SCHEMA
    assert set(out["rule_set_version"]) <= {"test-1"}
    return out.select("meter_id", "rule_id", "ts_from", "ts_to", "observed", "threshold", "unit").rows()


def test_negative_consumption() -> None:
    # 100.000 -> 99.750: -0.250 (within the 1 m3 negative tolerance, so negative use, not a reset)
    assert flags(daily(1, ["100.000", "99.750"]), only("negative_consumption")) == [
        (1, "negative_consumption", day(0), day(1), Decimal("-0.250"), Decimal("0.000"), "m3")
    ]


def test_register_reset() -> None:
    # 500 -> 3: drop of 497 m3, beyond the 1 m3 tolerance and no plausible rollover
    assert flags(daily(1, ["500", "3"]), only("register_reset")) == [
        (1, "register_reset", day(0), day(1), Decimal("-497.000"), Decimal("-1.000"), "m3")
    ]


def test_rollover_is_an_info_flag_with_the_wrapped_use() -> None:
    # 99999.000 -> 2.000: 100000 - 99999 + 2 = 3.000 at a register modulus of 100000.000
    rows = daily(1, ["99999.000", "2.000"])
    assert flags(rows, only("rollover")) == [
        (1, "rollover", day(0), day(1), Decimal("3.000"), Decimal("100000.000"), "m3")
    ]
    out = validate(readings(rows), METER, only("rollover"), period_start=day(0), period_end=day(2), now=day(3))
    assert out.collect()["severity"].to_list() == ["info"]


def test_spike_against_the_meters_own_median() -> None:
    # 10 days of 1 m3/day (values 0..10), then 5 m3 on day 11: median 1 m3/day, threshold 3 × 1 = 3 < 5
    values = [f"{v}" for v in range(11)] + ["15"]
    assert flags(daily(1, values), only("spike", spike_factor=3.0)) == [
        (1, "spike", day(10), day(11), Decimal("5.000"), Decimal("3.000"), "m3/day")
    ]
    # with less history than spike_min_history, nothing is flagged
    assert flags(daily(1, values), only("spike", spike_min_history=20)) == []


def test_spike_uses_daily_rate_over_a_multi_day_interval() -> None:
    # median 2 m3/day; 12 m3 over 3 days = 4 m3/day, not above 3 × 2 = 6
    values = [f"{2 * v}" for v in range(9)]
    rows = [*daily(1, values), (1, day(11), "28")]
    assert flags(rows, only("spike")) == []


def test_zero_use_for_n_days_on_an_occupied_account() -> None:
    # moves until day 2, then flat 12.000 to day 9: a 7-day run (day 2 -> day 9) >= 5 days
    values = ["10", "11", "12"] + ["12"] * 7
    rules = only("zero_use", zero_use_days=5)
    assert flags(daily(1, values), rules) == [
        (1, "zero_use", day(2), day(9), Decimal("7.000"), Decimal("5.000"), "days")
    ]
    vacant = meters((1, "99999.999"), occupied=[False])
    assert flags(daily(1, values), rules, vacant) == []


def test_stuck_register_on_a_meter_that_normally_uses_gas() -> None:
    # 1 m3/day for 10 days (median 1 >= 0.5 typical), then flat for 4 days >= 3
    values = [f"{v}" for v in range(11)] + ["10"] * 4
    rules = only("stuck_register", stuck_days=3, stuck_min_typical_m3_per_day="0.5")
    assert flags(daily(1, values), rules) == [
        (1, "stuck_register", day(10), day(14), Decimal("4.000"), Decimal("3.000"), "days")
    ]
    # a meter that never used gas is not "stuck"
    assert flags(daily(1, ["7"] * 15), rules) == []


def test_gap_between_readings_and_since_the_last_reading() -> None:
    # day 0 -> day 3 is 72 h > 48 h; the last reading (day 3) is 27 days = 648 h before the period end (day 30)
    rows = [(1, day(0), "1"), (1, day(3), "2")]
    assert flags(rows, only("gap", max_gap_hours=48)) == [
        (1, "gap", day(0), day(3), Decimal("72.000"), Decimal("48.000"), "hours"),
        (1, "gap", day(3), day(30), Decimal("648.000"), Decimal("48.000"), "hours"),
    ]


def test_meter_without_any_reading_has_an_open_gap_from_the_period_start() -> None:
    m = meters((1, "99999.999"), (2, "99999.999"))
    rows = daily(1, [str(v) for v in range(31)])
    assert flags(rows, only("gap"), m) == [(2, "gap", day(0), day(30), Decimal("720.000"), Decimal("48.000"), "hours")]


def test_future_timestamp_relative_to_now() -> None:
    # now = day 2; a reading at day 2 + 90 min is 1.5 h ahead, beyond the 5 min tolerance (0.083 h)
    rows = [(1, day(1), "1"), (1, day(2), "2"), (1, day(2 + 1.5 / 24), "3")]
    assert flags(rows, only("future_timestamp"), now=day(2)) == [
        (1, "future_timestamp", day(2), day(2 + 1.5 / 24), Decimal("1.500"), Decimal("0.083"), "hours")
    ]


def test_consumption_while_the_valve_is_closed() -> None:
    # valve closed day 2 .. day 5: day 2 -> 3 used 0.5 m3 > 0.010 tolerance; days 3 -> 5 used nothing;
    # day 5 -> 6 (0.5 m3) ends after the valve re-opened, so it is not flagged
    rows = daily(1, ["10", "11", "11", "11.5", "11.5", "11.5", "12"])
    valve = pl.LazyFrame(
        {"meter_id": [1], "closed_from": [day(2)], "closed_to": [day(5)]},
        schema_overrides={"closed_from": pl.Datetime("us", "UTC"), "closed_to": pl.Datetime("us", "UTC")},
    )
    assert flags(rows, only("valve_closed_use"), valve_states=valve) == [
        (1, "valve_closed_use", day(2), day(3), Decimal("0.500"), Decimal("0.010"), "m3")
    ]


def test_high_and_low_limits_per_usage_type() -> None:
    # meter 1 residential uses 30 m3 in the period (> 25), meter 2 commercial uses 30 m3 (< 50)
    rules = RuleSet.from_toml(
        """
        rule_set_version = "test-1"
        enabled = ["high_limit", "low_limit"]
        [usage_types.residential]
        high_m3_per_period = 25
        [usage_types.commercial]
        low_m3_per_period = "50.000"
        """
    )
    m = meters((1, "99999.999"), (2, "99999.999"), usage_type=["residential", "commercial"])
    rows = daily(1, [str(v) for v in range(31)]) + daily(2, [str(v) for v in range(31)])
    assert flags(rows, rules, m) == [
        (1, "high_limit", day(0), day(30), Decimal("30.000"), Decimal("25.000"), "m3"),
        (2, "low_limit", day(0), day(30), Decimal("30.000"), Decimal("50.000"), "m3"),
    ]


def test_conflicting_duplicates_are_flagged_identical_ones_are_not() -> None:
    rows = [(1, day(0), "1.000"), (1, day(0), "1.000"), (1, day(1), "2.000"), (1, day(1), "2.400")]
    assert flags(rows, only("duplicate_conflict")) == [
        (1, "duplicate_conflict", day(1), day(1), Decimal("0.400"), Decimal("0.000"), "m3")
    ]


def test_only_intervals_ending_in_the_period_are_flagged() -> None:
    rows = daily(1, ["100", "99.5", "99"])  # negatives end at day 1 and day 2
    assert [f[3] for f in flags(rows, only("negative_consumption"), period_start=day(1), period_end=day(2))] == [day(2)]


def test_every_rule_fires_on_a_bad_fleet_and_nothing_on_a_clean_meter() -> None:
    rules = RuleSet.from_mapping(
        {"rule_set_version": "test-1", "default": {"zero_use_days": 5, "high_m3_per_period": 1000}}
    )
    clean = daily(9, [str(v) for v in range(31)])
    out = validate(
        readings(clean), meters((9, "99999.999")), rules, period_start=day(0), period_end=day(30), now=day(30)
    )
    assert out.collect().height == 0
    assert set(RULE_IDS) >= {"negative_consumption", "valve_closed_use", "duplicate_conflict"}


def test_rejected_readings_are_those_closing_an_error_flag() -> None:
    rows = daily(1, ["500", "3", "4"])
    out = validate(readings(rows), METER, only("register_reset"), period_start=day(0), period_end=day(3), now=day(3))
    assert rejected_readings(out).collect().rows() == [(1, day(1))]


def test_rule_set_from_toml_inherits_defaults_and_rejects_unknown_keys() -> None:
    rules = RuleSet.from_toml(
        """
        rule_set_version = "2024.2"
        [default]
        spike_factor = 4.0
        [usage_types.commercial]
        max_gap_hours = 12
        [severity]
        gap = "error"
        """
    )
    assert rules.rule_set_version == "2024.2"
    assert rules.usage_types["commercial"].spike_factor == 4.0
    assert rules.usage_types["commercial"].max_gap_hours == 12
    assert rules.severity_of("gap") == "error"
    with pytest.raises(ValueError, match="spike_factr"):
        RuleSet.from_mapping({"rule_set_version": "x", "default": {"spike_factr": 2}})
    with pytest.raises(ValueError, match="rule_set_version"):
        RuleSet.from_mapping({})
    with pytest.raises(ValueError, match="no_such_rule"):
        RuleSet.from_mapping({"rule_set_version": "x", "enabled": ["no_such_rule"]})


TYPES = {
    "a": {"spike_factor": 2.0, "spike_floor_m3_per_day": "0.500", "max_gap_hours": 30, "zero_use_days": 3},
    "b": {"spike_factor": 4.5, "max_gap_hours": 100, "stuck_days": 2, "valve_closed_tolerance_m3": "2"},
}


@st.composite
def _fleet(draw: st.DrawFn) -> tuple[list[tuple[int, datetime, str]], list[str | None]]:
    """Six meters of usage types a, b, none or unknown with spikes, flat runs, small drops and gaps."""
    rows: list[tuple[int, datetime, str]] = []
    kinds: list[str | None] = []
    for meter_id in range(1, 7):
        kinds.append(draw(st.sampled_from(["a", "b", None, "c"])))
        value, t = draw(st.integers(0, 50_000)), 0.0
        for _ in range(draw(st.integers(0, 40))):
            rows.append((meter_id, day(t), f"{Decimal(value) / 1000:.3f}"))
            value = max(0, value + draw(st.sampled_from([0, 0, 300, 1000, 1200, 9000, -200])))
            t += draw(st.sampled_from([0.5, 1, 1, 1, 2.5]))
    return rows, kinds


@settings(max_examples=60, deadline=None)
@given(fleet=_fleet())
def test_flags_with_parameters_per_usage_type_are_those_of_each_type_alone(
    fleet: tuple[list[tuple[int, datetime, str]], list[str | None]],
) -> None:
    # validate() screens candidates against the loosest threshold of any usage type and then applies each
    # meter's own parameters; validating each type's meters on their own (uniform parameters) must agree.
    rows, kinds = fleet
    rules = RuleSet.from_mapping(
        {"rule_set_version": "test-1", "default": {"zero_use_days": 5, "high_m3_per_period": 20}, "usage_types": TYPES}
    )
    fleet_meters = meters(*[(m, "99999.999") for m in range(1, 7)], usage_type=kinds)
    valve = pl.LazyFrame(
        {"meter_id": [1, 2, 3, 4, 5, 6], "closed_from": [day(12)] * 6, "closed_to": [day(20), None] * 3},
        schema_overrides={"closed_from": pl.Datetime("us", "UTC"), "closed_to": pl.Datetime("us", "UTC")},
    )
    options: dict[str, Any] = {"period_start": day(10), "period_end": day(30), "now": day(31), "valve_states": valve}
    together = validate(readings(rows), fleet_meters, rules, **options).collect()
    alone = []
    for kind in ("a", "b", None, "c"):
        ids = [m for m, k in zip(range(1, 7), kinds, strict=True) if k == kind]
        if not ids:
            continue
        uniform = RuleSet(rule_set_version="test-1", default=rules.usage_types.get(str(kind), rules.default))
        subset = [r for r in rows if r[0] in ids]
        typed = meters(*[(m, "99999.999") for m in ids], usage_type=[kind] * len(ids))
        alone.append(validate(readings(subset), typed, uniform, **options).collect())
    columns = together.columns
    assert_frame_equal(together.sort(columns), pl.concat(alone).sort(columns))


@settings(max_examples=40, deadline=None)
@given(
    uses=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(-50, 3000)), min_size=1, max_size=300),
    parts=st.integers(1, 7),
)
def test_the_rolling_median_in_parts_is_the_median_in_one_piece(uses: list[tuple[int, int, int]], parts: int) -> None:
    # Rows of up to five meters (sorted by meter, keys far apart between meters as validate() makes them), cut
    # into parts at meter boundaries and computed at once: exactly the one-piece rolling median.
    rows = sorted(uses, key=lambda u: u[0])
    meter_ids = [r[0] for r in rows]
    keys, t = [], 0
    for i, (meter_id, step, _) in enumerate(rows):
        t = step * 86_400 if i == 0 or meter_ids[i - 1] != meter_id else t + step * 86_400
        keys.append(meter_id * 10_000_000_000 + t)
    frame = pl.DataFrame(
        {"meter_id": meter_ids, "rate_l": [float(r[2]) for r in rows], "order_key": keys},
        schema_overrides={"meter_id": pl.Int64},
    )
    median = pl.col("rate_l").rolling_median_by("order_key", window_size="777600i", min_samples=3, closed="left")
    whole = frame.select(median).to_series()
    assert_series_equal(_rolling_median(frame, "777600i", 3, parts), whole)
