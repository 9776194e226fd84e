"""Random tariffs and consumptions: exact sums, and agreement with a plain-Decimal reference."""

import datetime as dt
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.pricing import price_bills
from billing.tariff import PricePeriod, Tariff, Tier

JUNE_1, JULY_1 = dt.date(2024, 6, 1), dt.date(2024, 7, 1)
LITRE = Decimal("0.001")

prices = st.integers(0, 99_999).map(lambda units: Decimal(units).scaleb(-4))


@st.composite
def tier_lists(draw: st.DrawFn) -> tuple[Tier, ...]:
    count = draw(st.integers(1, 5))
    bounds = sorted(draw(st.sets(st.integers(1, 2_000_000), min_size=count - 1, max_size=count - 1)))
    uppers: list[Decimal | None] = [Decimal(b).scaleb(-3) for b in bounds]
    uppers.append(None)
    return tuple(Tier(upper, draw(prices)) for upper in uppers)


@st.composite
def tariffs(draw: st.DrawFn) -> Tariff:
    first = PricePeriod(dt.date(2020, 1, 1), draw(tier_lists()), draw(st.none() | prices))
    periods = [first]
    if draw(st.booleans()):
        change = JUNE_1 + dt.timedelta(days=draw(st.integers(1, 29)))
        periods.append(PricePeriod(change, draw(tier_lists()), draw(st.none() | prices)))
    return Tariff("residential", tuple(periods))


accounts = st.lists(
    st.tuples(st.integers(0, 3_000_000), st.integers(0, 3_000_000), st.sampled_from(["fixed", "tiered"])),
    min_size=1,
    max_size=15,
)


def reference(tariff: Tariff, consumption: Decimal, used: Decimal, mode: str) -> dict[tuple[dt.date, int], Decimal]:
    """Amount per (price period, tier) of a June bill, split by days, tiers counted from `used`."""
    days = (JULY_1 - JUNE_1).days
    parts: list[tuple[PricePeriod, Decimal]] = []
    taken = Decimal(0)
    for index, period in enumerate(tariff.periods):
        end = tariff.periods[index + 1].effective_from if index + 1 < len(tariff.periods) else JULY_1
        start = max(period.effective_from, JUNE_1)
        upto = (consumption * (min(end, JULY_1) - JUNE_1).days / days).quantize(LITRE, ROUND_FLOOR)
        if start < min(end, JULY_1):
            parts.append((period, upto - taken))
            taken = upto
    volumes: dict[tuple[dt.date, int, Decimal], Decimal] = {}
    level = used
    for period, volume in parts:
        tiers = [Tier(None, period.flat_price)] if mode == "fixed" else list(period.tiers)
        lower = None
        for number, tier in enumerate(tiers, start=0 if mode == "fixed" else 1):

            def clip(x: Decimal, lo: Decimal | None = lower, up: Decimal | None = tier.upper_m3) -> Decimal:
                x = x if lo is None else max(x, lo)
                return x if up is None else min(x, up)

            share = clip(level + volume) - clip(level)
            if share:
                key = (period.effective_from, number, tier.price)
                volumes[key] = volumes.get(key, Decimal(0)) + share
            lower = tier.upper_m3
        level += volume
    return {
        (start, number): (volume * price).quantize(Decimal("0.01"), ROUND_HALF_UP)
        for (start, number, price), volume in volumes.items()
    }


@settings(max_examples=150, deadline=None)
@given(tariffs(), accounts)
def test_random_bills_are_exact_and_match_the_reference(tariff: Tariff, rows: list[tuple[int, int, str]]) -> None:
    consumption = [Decimal(c).scaleb(-3) for c, _, _ in rows]
    used = [Decimal(u).scaleb(-3) for _, u, _ in rows]
    items = pl.DataFrame(
        {
            "account_id": list(range(len(rows))),
            "usage_type": "residential",
            "period_start": JUNE_1,
            "period_end": JULY_1,
            "consumption_m3": consumption,
            "cycle_used_m3": used,
            "billing_mode": [mode for _, _, mode in rows],
        },
        schema_overrides={"consumption_m3": pl.Decimal(38, 3), "cycle_used_m3": pl.Decimal(38, 3)},
    )
    bill = price_bills(items, [tariff])
    lines = bill.lines
    assert (lines["amount"] >= 0).all()
    sums = lines.group_by("account_id").agg(pl.col("amount").sum(), pl.col("volume_m3").sum())
    checked = bill.totals.join(sums, on="account_id", how="left")
    for account, (c, u, (_, _, mode)) in enumerate(zip(consumption, used, rows, strict=True)):
        row = checked.row(account, named=True)
        assert row["amount_total"] == (row["amount"] or 0)
        assert row["volume_total_m3"] == c == (row["volume_m3"] or 0)
        got = {
            (r["price_period_start"], r["tier_no"]): r["amount"]
            for r in lines.filter(pl.col("account_id") == account).to_dicts()
        }
        assert got == reference(tariff, c, u, mode)
