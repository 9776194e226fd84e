"""Tariff definitions: loading from TOML/JSON mappings, validation, frames; the rounding module."""

import tomllib
from decimal import Decimal

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.rounding import RoundingMode, raw_to_fen, round_money
from billing.tariff import HouseholdRule, Tariff, TariffError, load_tariffs, tariff_frames

SAMPLE = """
[residential]
cycle = "annual"
cycle_start = "07-01"
household = { base_size = 4, add_m3_per_person = "100", max_extra_persons = 3 }

[[residential.periods]]
effective_from = 2023-07-01
tiers = [{ upper_m3 = "350", price = "2.61" }, { upper_m3 = "500", price = "3.03" }, { price = "3.76" }]
fixed_price = 2.80
minimum_charge = "5"
fixed_charges = [{ code = "meter_rental", amount_per_month = "2.00" }]

[[residential.periods]]
effective_from = 2024-07-01
tiers = [{ upper_m3 = 360, price = "2.71" }, { price = "3.13" }]

[commercial]
cycle = "month"
periods = [{ effective_from = 2020-01-01, price = "3.50" }]
"""


def test_sample_toml_loads_into_frames() -> None:
    tariffs = load_tariffs(tomllib.loads(SAMPLE))
    residential = tariffs["residential"]
    assert residential.cycle.kind == "annual" and (residential.cycle.start_month, residential.cycle.start_day) == (7, 1)
    assert residential.periods[0].flat_price == Decimal("2.8")
    assert residential.periods[1].flat_price == Decimal("2.71")  # defaults to tier 1
    frames = tariff_frames(tariffs.values())
    tiers = frames.tiers.filter(pl.col("usage_type") == "residential").collect()
    first = tiers.filter(pl.col("billing_mode") == "tiered").head(3)
    assert first["lower_m3"].to_list() == [Decimal(0), Decimal(350), Decimal(500)]
    assert first["upper_m3"].to_list() == [Decimal(350), Decimal(500), None]
    assert first["effective_to"].to_list()[0].isoformat() == "2024-07-01"
    assert frames.charges.collect()["amount_per_month"].to_list() == [Decimal("2.00")]
    assert frames.tariffs.collect().filter(pl.col("usage_type") == "commercial")["cycle"].item() == "month"


@pytest.mark.parametrize(
    ("period", "message"),
    [
        (
            {
                "effective_from": "2024-01-01",
                "tiers": [{"upper_m3": "350", "price": "2"}, {"upper_m3": "300", "price": "3"}, {"price": "4"}],
            },
            "must increase",
        ),
        ({"effective_from": "2024-01-01", "tiers": [{"upper_m3": "350", "price": "2"}]}, "last tier is open"),
        ({"effective_from": "2024-01-01", "price": "-1"}, "non-negative"),
        ({"effective_from": "2024-01-01", "price": "2.00001"}, "at most 4 decimals"),
        ({"effective_from": "2024-01-01", "price": "2", "tiers": []}, "either price or tiers"),
        ({"effective_from": "yesterday", "price": "2"}, "ISO date"),
    ],
)
def test_bad_periods_are_rejected_with_the_reason(period: dict[str, object], message: str) -> None:
    with pytest.raises(TariffError, match=message):
        Tariff.from_mapping("residential", {"periods": [period]})


def test_bad_cycles_are_rejected() -> None:
    periods = [{"effective_from": "2024-01-01", "price": 1}]
    with pytest.raises(TariffError, match="yearly month-day"):
        Tariff.from_mapping("x", {"cycle": "annual", "cycle_start": "02-29", "periods": periods})
    with pytest.raises(TariffError, match="expected one of"):
        Tariff.from_mapping("x", {"cycle": "weekly", "periods": periods})


def test_household_rule() -> None:
    rule = HouseholdRule(
        base_size=4, add_m3_per_person=Decimal(50), factor_per_person=Decimal("0.1"), max_extra_persons=2
    )
    assert rule.adjust(Decimal(350), 3) == Decimal(350)
    assert rule.adjust(Decimal(350), 5) == Decimal("435.000")  # 350 * 1.1 + 50
    assert rule.adjust(Decimal(350), 9) == Decimal("520.000")  # capped at 2 extra: 350 * 1.2 + 100


@given(st.lists(st.integers(-(10**12), 10**12), min_size=1, max_size=50), st.sampled_from(list(RoundingMode)))
def test_raw_rounding_matches_decimal(raws: list[int], mode: RoundingMode) -> None:
    # raw units are 1e-7 yuan
    fen = pl.select(raw_to_fen(pl.lit(pl.Series(raws, dtype=pl.Int64)), mode)).to_series().to_list()
    assert fen == [int(round_money(Decimal(r).scaleb(-7), mode) * 100) for r in raws]


def test_half_up_differs_from_polars_decimal_round() -> None:
    # 0.0050000 yuan: half-up gives one fen; half-even (polars' Decimal round) gives zero
    assert pl.select(raw_to_fen(pl.lit(50_000, pl.Int64))).item() == 1
    assert pl.select(raw_to_fen(pl.lit(150_000, pl.Int64), RoundingMode.HALF_EVEN)).item() == 2
    assert pl.select(raw_to_fen(pl.lit(250_000, pl.Int64), RoundingMode.HALF_EVEN)).item() == 2
    assert pl.select(raw_to_fen(pl.lit(-50_000, pl.Int64))).item() == -1


def test_price_change_split_per_tariff() -> None:
    periods = [{"effective_from": "2024-01-01", "price": 1}]
    assert Tariff.from_mapping("x", {"periods": periods}).price_change_split is None  # the run's setting
    assert Tariff.from_mapping("x", {"price_change_split": "readings", "periods": periods}).price_change_split == (
        "readings"
    )
    frames = tariff_frames(load_tariffs({"x": {"price_change_split": "days", "periods": periods}}).values())
    assert frames.tariffs.collect()["price_change_split"].to_list() == ["days"]
    with pytest.raises(TariffError, match="price_change_split"):
        Tariff.from_mapping("x", {"price_change_split": "hours", "periods": periods})
