"""The pricing fast path (items of one segment) against the general engine, on generated tariffs and items:
the same lines, totals and problems to the fen, in the same order; and the same through a bill run's compute
(quotas, billing-mode switches, usage-type changes)."""

import datetime as dt
from decimal import Decimal
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.bill_run import TYPE_CHANGE_SCHEMA, RunInputs, compute
from billing.pricing import PricingConfig, price_lazy
from billing.rounding import RoundingMode
from billing.tariff import FixedCharge, HouseholdRule, PricePeriod, Tariff, Tier, TierCycle, tariff_frames

TYPES = ["A", "B", "C"]
DAY0 = dt.date(2023, 11, 1)

prices = st.integers(0, 99_999).map(lambda units: Decimal(units).scaleb(-4))
days = st.integers(0, 400).map(lambda n: DAY0 + dt.timedelta(days=n))


@st.composite
def tier_lists(draw: st.DrawFn) -> tuple[Tier, ...]:
    count = draw(st.integers(1, 4))
    bounds = sorted(draw(st.sets(st.integers(1, 900_000), min_size=count - 1, max_size=count - 1)))
    uppers: list[Decimal | None] = [Decimal(b).scaleb(-3) for b in bounds]
    uppers.append(None)
    return tuple(Tier(upper, draw(prices)) for upper in uppers)


@st.composite
def price_periods(draw: st.DrawFn) -> tuple[PricePeriod, ...]:
    starts = sorted(draw(st.sets(days, min_size=0, max_size=2)))
    first = dt.date(2020, 1, 1) if draw(st.integers(0, 9)) else dt.date(2024, 3, 1)  # sometimes a gap
    charges = (FixedCharge("meter_rental", Decimal(draw(st.integers(0, 900))).scaleb(-2)),)
    return tuple(
        PricePeriod(
            start,
            draw(tier_lists()),
            draw(st.none() | prices),
            Decimal(draw(st.sampled_from([0, 0, 500, 2_000]))).scaleb(-2),
            charges if draw(st.booleans()) else (),
        )
        for start in sorted({first, *(s for s in starts if s > first)})
    )


@st.composite
def tariffs(draw: st.DrawFn, usage_type: str) -> Tariff:
    kind = draw(st.sampled_from(["calendar_year", "annual", "month", "bill"]))
    month, day = (draw(st.integers(1, 12)), draw(st.integers(1, 28))) if kind == "annual" else (1, 1)
    household = draw(
        st.none()
        | st.builds(
            HouseholdRule,
            base_size=st.integers(0, 5),
            add_m3_per_person=st.integers(0, 100_000).map(lambda n: Decimal(n).scaleb(-3)),
            factor_per_person=st.integers(0, 3_000).map(lambda n: Decimal(n).scaleb(-4)),
            max_extra_persons=st.none() | st.integers(0, 3),
        )
    )
    split = draw(st.sampled_from([None, "days", "readings"]))
    return Tariff(usage_type, draw(price_periods()), TierCycle(kind, month, day), household, split)


@st.composite
def items(draw: st.DrawFn) -> list[dict[str, Any]]:
    rows = []
    for account in range(draw(st.integers(1, 10))):
        main = draw(st.sampled_from(TYPES))
        household = draw(st.none() | st.integers(1, 8))
        for _ in range(draw(st.integers(1, 3))):
            usage = draw(st.sampled_from([*TYPES, "Z"]))  # Z has no tariff
            start = draw(days)
            pieces = draw(st.integers(1, 3))  # several items of one account and type, as a mode switch cuts them
            for _ in range(pieces):
                end = start + dt.timedelta(days=draw(st.integers(0 if not draw(st.integers(0, 30)) else 1, 70)))
                rows.append(
                    {
                        "account_id": account,
                        "usage_type": usage,
                        "main_usage_type": main,
                        "period_start": start,
                        "period_end": end,
                        "consumption_l": draw(st.integers(-2_000, 900_000)),
                        "cycle_used_l": draw(st.integers(0, 900_000)),
                        "household_size": household,
                        "billing_mode": draw(st.sampled_from(["tiered", "tiered", "fixed"])),
                    }
                )
                start = end
    return rows


@st.composite
def dated(draw: st.DrawFn, accounts: int) -> pl.DataFrame:
    rows = [
        {
            "account_id": draw(st.integers(0, accounts)),
            "day": draw(days),
            "consumption_m3": Decimal(draw(st.integers(0, 9_000))).scaleb(-3),
        }
        for _ in range(draw(st.integers(0, 40)))
    ]
    return pl.DataFrame(
        rows, schema={"account_id": pl.Int64, "day": pl.Date, "consumption_m3": pl.Decimal(38, 3)}, orient="row"
    )


def _priced(
    tariff_list: list[Tariff], frame: pl.DataFrame, config: PricingConfig, daily: pl.DataFrame, fast_path: bool
) -> tuple[pl.DataFrame, pl.DataFrame, list[tuple[Any, ...]]]:
    plan = price_lazy(frame, tariff_list, config, daily, fast_path=fast_path)
    lines, totals, problems = pl.collect_all([plan.lines, plan.totals, plan.problems])
    return lines, totals, sorted(problems.rows())


@settings(max_examples=200, deadline=None)
@given(
    st.tuples(*(tariffs(t) for t in TYPES)),
    items(),
    st.sampled_from(["days", "readings"]),
    st.sampled_from(list(RoundingMode)),
    st.data(),
)
def test_the_fast_path_prices_like_the_general_engine(
    tariff_list: tuple[Tariff, ...], rows: list[dict[str, Any]], split: str, rounding: RoundingMode, data: st.DataObject
) -> None:
    frame = pl.DataFrame(rows, schema_overrides={"household_size": pl.Int64}, infer_schema_length=None)
    daily = data.draw(dated(int(frame["account_id"].max())))  # type: ignore[arg-type]
    config = PricingConfig(price_change_split=split, rounding=rounding)  # type: ignore[arg-type]
    fast = _priced(list(tariff_list), frame, config, daily, fast_path=True)
    general = _priced(list(tariff_list), frame, config, daily, fast_path=False)
    assert fast[0].equals(general[0])
    assert fast[1].equals(general[1])
    assert fast[2] == general[2]


@st.composite
def run_inputs(draw: st.DrawFn) -> RunInputs:
    count = draw(st.integers(1, 12))
    consumption = []
    for account in range(1, count + 1):
        main = draw(st.sampled_from([1, 2, 3]))
        for usage, follow in draw(
            st.sets(st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from([None, 1, 2])), min_size=1, max_size=2)
        ):
            start = dt.date(2024, 3, 1) - dt.timedelta(days=draw(st.integers(0, 20)))
            consumption.append(
                (
                    account,
                    usage,
                    main,
                    follow,
                    start,
                    start + dt.timedelta(days=draw(st.integers(25, 40))),
                    draw(st.integers(0, 600_000)),
                    draw(st.integers(1, 7)),
                )
            )
    changes = []
    for account in draw(st.sets(st.integers(1, count), max_size=4)):
        old = draw(st.sampled_from([1, 2, 3]))
        for seq, effective in enumerate(sorted(draw(st.lists(days, min_size=1, max_size=2))), start=1):
            new = draw(st.sampled_from([t for t in (1, 2, 3) if t != old]))
            changes.append((account, seq, effective, old, new))
            old = new
    modes = [
        (account, draw(days), draw(st.sampled_from(["fixed", "tiered"])))
        for account in draw(st.sets(st.integers(1, count), max_size=4))
    ]
    quotas = [
        (account, draw(st.sampled_from([1, 2, 3])), draw(st.none() | st.integers(0, 30).map(Decimal)), None, 0)
        for account in draw(st.sets(st.integers(1, count), max_size=4))
    ]
    quotas = [
        (a, t, q, None if q is not None else Decimal(draw(st.integers(0, 10_000))).scaleb(-2), p)
        for a, t, q, _, p in quotas
    ]
    used = [
        (
            account,
            draw(st.sampled_from([1, 2, 3])),
            draw(st.sampled_from([dt.date(2024, 1, 1), dt.date(2024, 2, 1)])),
            draw(st.integers(0, 500_000)),
        )
        for account in draw(st.sets(st.integers(1, count), max_size=4))
    ]
    return RunInputs(
        consumption=pl.DataFrame(
            consumption,
            schema={
                "account_id": pl.Int64,
                "usage_type_id": pl.Int64,
                "main_usage_type_id": pl.Int64,
                "follow_seq": pl.Int64,
                "period_start": pl.Date,
                "period_end": pl.Date,
                "consumption_l": pl.Int64,
                "household_size": pl.Int32,
            },
            orient="row",
        ),
        modes=pl.DataFrame(
            modes, schema={"account_id": pl.Int64, "effective_from": pl.Date, "billing_mode": pl.String}, orient="row"
        ),
        quotas=pl.DataFrame(
            quotas,
            schema={
                "account_id": pl.Int64,
                "usage_type_id": pl.Int64,
                "quota_m3": pl.Decimal(38, 3),
                "share_pct": pl.Decimal(38, 2),
                "priority": pl.Int32,
            },
            orient="row",
        ),
        used=pl.DataFrame(
            used,
            schema={"account_id": pl.Int64, "usage_type_id": pl.Int64, "bill_start": pl.Date, "volume_l": pl.Int64},
            orient="row",
        ),
        usage_types=pl.DataFrame({"usage_type_id": [1, 2, 3], "usage_type": TYPES}),
        type_changes=pl.DataFrame(changes, schema=TYPE_CHANGE_SCHEMA, orient="row"),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(*(tariffs(t) for t in TYPES)), run_inputs())
def test_a_bill_run_prices_the_same_with_and_without_the_fast_path(
    tariff_list: tuple[Tariff, ...], inputs: RunInputs
) -> None:
    frames = tariff_frames(tariff_list)
    fast = compute(inputs, frames, dt.date(2024, 3, 1), PricingConfig(), fast_path=True)
    general = compute(inputs, frames, dt.date(2024, 3, 1), PricingConfig(), fast_path=False)
    assert fast.bills.equals(general.bills)
    assert fast.lines.equals(general.lines)
    assert sorted(fast.problems.rows()) == sorted(general.problems.rows())
    # every bill's lines add up to it
    sums = fast.lines.group_by("account_id").agg(pl.col("amount_fen").sum(), pl.col("volume_l").sum())
    checked = fast.bills.join(sums, on="account_id", how="left", suffix="_lines")
    assert (checked["amount_fen"] == checked["amount_fen_lines"].fill_null(0)).all()
