"""Vectorised pricing: bill items and tariff frames in, bill lines and bill totals out.

Bill items (one row per account and usage type for the bill; several rows when an account's bill is cut,
e.g. at a switch between fixed and tiered billing):
- `account_id`; `usage_type`; `period_start`, `period_end` (Date, end exclusive) or `period` ("YYYY-MM");
- `consumption_m3` (Decimal, at most 3 decimals), or `consumption_l` (Int64 litres);
- optional: `household_size` (Int, null = no adjustment), `cycle_used_m3` (Decimal, default 0: m3 of this
  usage type already billed in the tier cycle that holds the account's bill start; or `cycle_used_l` in
  litres), `billing_mode`
  ("fixed" | "tiered", default "tiered"), `main_usage_type` (default `usage_type`: whose tariff supplies the
  bill's fixed charges and minimum charge; 一表多价 items get it from `split_by_quotas`).

How an item is priced:
1. It is cut into segments at tier-cycle starts and price changes. Its consumption is spread over the
   segments in proportion to their days, or (`price_change_split="readings"`, set per tariff or for the
   run in `PricingConfig`) to the dated consumption the caller passes (`dated`: `account_id`, `day`,
   `consumption_m3`), falling back to days when an item has no dated consumption. Shares are floored
   cumulatively in litres, so they add up exactly.
2. Tier counting is cumulative per account, usage type and cycle: a segment starts where the earlier ones
   left off, beginning at `cycle_used_m3`; a new cycle starts at zero. Fixed-mode consumption counts too.
3. Each segment is clipped against the (household-adjusted) tier bounds of its price period; the first
   tier reaches down and the last one up without limit, so tier volumes always sum to the consumption.
4. Lines group by account, usage type, price period, tier and price; each line's amount is rounded once
   (`billing.rounding`), and a bill's total is the sum of its rounded lines.

Per bill (account): fixed charges of the main usage type's price period in effect on the bill's last day,
once per calendar month started in the bill period; a `minimum_topup` line when the energy amount is below
that period's minimum charge.

Fast path: an item that is the only one of its account and usage type, lies inside one price period and
one tier cycle is a single segment whose tiers start at its `cycle_used_m3`; such items (nearly all of a
monthly bill run) skip the cutting, the running sums and the grouping of steps 1, 2 and 4, which cannot
change anything for them. `fast_path=False` prices every item the general way (tests compare the two).
Everything is computed in integers (litres, 1e-4 yuan, fen); `price_integers` returns the lines in those
units, `price_lazy` and `price_bills` in Decimal m3 and yuan.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import NamedTuple

import polars as pl

from billing.rounding import (
    PRICE_UNITS_PER_YUAN,
    RoundingMode,
    fen_to_money,
    litres_to_m3,
    m3_to_litres,
    price_units_to_price,
    raw_to_fen,
)
from billing.tariff import BILLING_MODES, SPLIT_MODES, SplitMode, Tariff, TariffFrames, tariff_frames

FAR_FUTURE = dt.date(9999, 12, 31)
OPEN_LITRES = 10**15  # an open tier bound, far beyond any consumption
LINE_KIND = pl.Enum(["energy", "fixed_charge", "minimum_topup"])
LINE_ORDER = ["account_id", "line_kind", "usage_type", "price_period_start", "tier_no", "charge_code"]


class PricingError(ValueError):
    """Bill items that cannot be priced; `problems` holds account_id, usage_type and reason per item."""

    def __init__(self, problems: pl.DataFrame) -> None:
        self.problems = problems
        sample = "; ".join(f"{r['account_id']}/{r['usage_type']}: {r['reason']}" for r in problems.head(5).to_dicts())
        super().__init__(f"{problems.height} bill item(s) cannot be priced, e.g. {sample}")


@dataclass(frozen=True)
class PricingConfig:
    """How a price change or cycle start inside an item splits it (for tariffs that do not say), and how
    money is rounded."""

    price_change_split: SplitMode = "days"
    rounding: RoundingMode = RoundingMode.HALF_UP

    def __post_init__(self) -> None:
        if self.price_change_split not in SPLIT_MODES:
            raise ValueError(f"price_change_split: expected one of {SPLIT_MODES}, got {self.price_change_split!r}")


class BillFrames(NamedTuple):
    """Priced bills.

    - lines: account_id, line_kind (energy | fixed_charge | minimum_topup), usage_type, charge_code,
      tier_no (0 = fixed price, 1.. = tiers, null for charges), price_period_start, volume_m3 (null for
      charges), unit_price (price per m3, or per month for fixed charges), amount
    - totals: account_id, amount_total, volume_total_m3 (every account of the items, even with no lines)
    """

    lines: pl.DataFrame
    totals: pl.DataFrame


class LazyBill(NamedTuple):
    """The lazy plans behind `BillFrames`, plus the items that cannot be priced."""

    lines: pl.LazyFrame
    totals: pl.LazyFrame
    problems: pl.LazyFrame


class IntegerBill(NamedTuple):
    """Lazy plans of priced bills in integer units.

    - lines: account_id, line_kind, usage_type, charge_code, tier_no, price_period_start, volume_l (null for
      charges), price_units (1e-4 yuan per m3, or per month for fixed charges), amount_fen; in line order
      (`LINE_ORDER`, nulls last)
    - accounts: account_id, bill_start, bill_end, usage_type (the main one), amount_fen, volume_l (every
      account of the items, even with no lines)
    - problems: account_id, usage_type, reason
    """

    lines: pl.LazyFrame
    accounts: pl.LazyFrame
    problems: pl.LazyFrame


# ---- tariff pieces as expressions -------------------------------------------------------------------------


def cycle_start_of(day: pl.Expr, cycle: pl.Expr, month: pl.Expr, month_day: pl.Expr) -> pl.Expr:
    """Start of the tier cycle holding `day` (a `bill` cycle starts with the bill, i.e. `day` itself)."""
    anchor = pl.date(day.dt.year(), month, month_day)
    yearly = pl.when(anchor <= day).then(anchor).otherwise(pl.date(day.dt.year() - 1, month, month_day))
    return pl.when(cycle == "month").then(day.dt.month_start()).when(cycle == "bill").then(day).otherwise(yearly)


def cycle_starts(first: pl.Expr, end: pl.Expr, cycle: pl.Expr) -> pl.Expr:
    """List of the cycle starts from `first` up to the day before `end`."""
    last = end.dt.offset_by("-1d")
    return (
        pl.when(cycle == "month")
        .then(pl.date_ranges(first, last, "1mo"))
        .when(cycle == "bill")
        .then(pl.concat_list(first))
        .otherwise(pl.date_ranges(first, last, "1y"))
    )


def cycle_end(start: pl.Expr, cycle: pl.Expr, bill_end: pl.Expr) -> pl.Expr:
    """The exclusive end of the cycle starting at `start`."""
    return (
        pl.when(cycle == "month")
        .then(start.dt.offset_by("1mo"))
        .when(cycle == "bill")
        .then(bill_end)
        .otherwise(start.dt.offset_by("1y"))
    )


def prorated(total: pl.Expr, weight_before: pl.Expr, weight: pl.Expr, weight_total: pl.Expr) -> pl.Expr:
    """The part of integer `total` for `weight` following `weight_before`; parts telescope to `total` exactly."""
    wide = total.cast(pl.Int128)
    upto = (wide * (weight_before + weight)) // weight_total
    before = (wide * weight_before) // weight_total
    return (upto - before).cast(pl.Int64)


def household_bound(
    bound: pl.Expr, household_size: pl.Expr, base: pl.Expr, add: pl.Expr, factor_bp: pl.Expr, max_extra: pl.Expr
) -> pl.Expr:
    """A tier bound in litres, enlarged for persons above `base` (see `billing.tariff.HouseholdRule`)."""
    extra = (household_size - base).clip(lower_bound=0)
    extra = pl.min_horizontal(extra, max_extra.fill_null(extra)).fill_null(0).cast(pl.Int64)
    return bound + (bound * factor_bp.fill_null(0) * extra) // PRICE_UNITS_PER_YUAN + add.fill_null(0) * extra


def tier_volume(offset: pl.Expr, volume: pl.Expr, lower: pl.Expr, upper: pl.Expr) -> pl.Expr:
    """How much of `volume`, counted from `offset` in the cycle, falls between `lower` and `upper`."""

    def clip(level: pl.Expr) -> pl.Expr:
        return pl.min_horizontal(pl.max_horizontal(level, lower), upper)

    return clip(offset + volume) - clip(offset)


def months_started(start: pl.Expr, end: pl.Expr) -> pl.Expr:
    """How many first days of a month lie in [start, end)."""

    def index(day: pl.Expr) -> pl.Expr:
        return day.dt.year().cast(pl.Int64) * 12 + day.dt.month().cast(pl.Int64)

    return (index(end.dt.offset_by("-1d")) - index(start) + (start.dt.day() == 1).cast(pl.Int64)).clip(lower_bound=0)


# ---- running sums over sorted runs (far faster than window functions with a million small groups) ------------


def run_start(*keys: str) -> pl.Expr:
    """True on the first row of each run of equal `keys`; rows must be sorted by them."""
    changed = pl.lit(False)
    for key in keys:
        changed = changed | (pl.col(key) != pl.col(key).shift()).fill_null(True)
    return changed


def run_end(*keys: str) -> pl.Expr:
    """True on the last row of each run of equal `keys`; rows must be sorted by them."""
    changed = pl.lit(False)
    for key in keys:
        changed = changed | (pl.col(key) != pl.col(key).shift(-1)).fill_null(True)
    return changed


def run_first(expr: pl.Expr, start: pl.Expr) -> pl.Expr:
    """The value of `expr` on the first row of the run."""
    return pl.when(start).then(expr).forward_fill()


def run_before(expr: pl.Expr, start: pl.Expr) -> pl.Expr:
    """Sum of `expr` over the earlier rows of the run."""
    before = expr.cum_sum() - expr
    return before - run_first(before, start)


def run_total(expr: pl.Expr, start: pl.Expr, end: pl.Expr) -> pl.Expr:
    """Sum of `expr` over the whole run."""
    upto = expr.cum_sum()
    return pl.when(end).then(upto).backward_fill() - run_first(upto - expr, start)


def with_stable_index(frame: pl.LazyFrame, name: str) -> pl.LazyFrame:
    """`frame` sorted by all its columns, with a row index `name` that depends on its rows, not on their order.

    A lazy plan that reaches its rows through a join or group-by need not yield them in the same order each
    time it runs, and a plan used by several branches of a query may run once per branch: a plain row index
    would then number the same row differently in different branches. Rows equal in every column are
    interchangeable, so which of them gets which number does not matter.
    """
    return frame.sort(frame.collect_schema().names(), nulls_last=True).with_row_index(name)


# ---- steps ---------------------------------------------------------------------------------------------------


def prepare_items(items: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """Items with defaults filled, an `item_id`, and volumes in integer litres; sorted by account, usage
    type, main usage type, period start, … (the fast path relies on the first two)."""
    frame = items.lazy()
    schema = frame.collect_schema()
    if "period_start" not in schema and "period" in schema:
        start = pl.concat_str(pl.col("period"), pl.lit("-01")).str.to_date("%Y-%m-%d")
        frame = frame.with_columns(period_start=start, period_end=start.dt.offset_by("1mo"))
        schema = frame.collect_schema()
    litres = {name: f"{name[:-3]}_l" for name in ("consumption_m3", "cycle_used_m3")}
    missing = {"account_id", "usage_type", "period_start", "period_end"} - set(schema)
    if "consumption_m3" not in schema and "consumption_l" not in schema:
        missing.add("consumption_m3")
    if missing:
        raise ValueError(f"bill items lack columns {sorted(missing)}")
    for name in litres:
        dtype = schema.get(name)
        exact = dtype is None or dtype.is_integer() or (isinstance(dtype, pl.Decimal) and (dtype.scale or 0) <= 3)
        if not exact:
            raise ValueError(f"{name} must be Decimal with at most 3 decimals (or integer), not {dtype}")
    for name, litre_name in litres.items():
        if litre_name in schema:
            if not schema[litre_name].is_integer():
                raise ValueError(f"{litre_name} must be an integer number of litres, not {schema[litre_name]}")
            frame = frame.with_columns(pl.col(litre_name).cast(pl.Int64))
        elif name in schema:
            frame = frame.with_columns(m3_to_litres(pl.col(name)).alias(litre_name))
    schema = frame.collect_schema()
    defaults = {
        "household_size": pl.lit(None, pl.Int32),
        "cycle_used_l": pl.lit(0, pl.Int64),
        "billing_mode": pl.lit("tiered"),
        "main_usage_type": pl.col("usage_type"),
    }
    frame = frame.with_columns(expr.alias(name) for name, expr in defaults.items() if name not in schema)
    prepared = frame.select(
        "account_id",
        pl.col("usage_type").cast(pl.String),
        pl.col("main_usage_type").cast(pl.String),
        pl.col("period_start").cast(pl.Date),
        pl.col("period_end").cast(pl.Date),
        "consumption_l",
        pl.col("cycle_used_l").fill_null(0),
        pl.col("household_size").cast(pl.Int64),
        pl.col("billing_mode").cast(pl.String),
    )
    # segments, bill spans and problems are separate branches that join back on item_id
    # polars groups a column it knows to be sorted far faster: account_id leads the sort
    return with_stable_index(prepared, "item_id").with_columns(pl.col("account_id").set_sorted())


def _item_problems(items: pl.LazyFrame, general: pl.LazyFrame, covered: pl.LazyFrame) -> pl.LazyFrame:
    """Why items cannot be priced: `items` all of them, `general` those priced the general way and `covered`
    the days their segments cover (an item of the fast path is covered whole by its price period)."""
    days = (pl.col("period_end") - pl.col("period_start")).dt.total_days()
    reason = (
        pl.when(pl.col("period_start").is_null() | pl.col("period_end").is_null() | (days <= 0))
        .then(pl.lit("empty or missing bill period"))
        .when(pl.col("consumption_l").is_null())
        .then(pl.lit("missing consumption"))
        .when(pl.col("cycle_used_l") < 0)
        .then(pl.lit("negative cycle_used_m3"))
        .when(pl.col("household_size") < 0)
        .then(pl.lit("negative household_size"))
        .when(~pl.col("billing_mode").is_in(BILLING_MODES))
        .then(pl.lit("unknown billing_mode"))
    )
    uncovered = (
        general.join(covered, on="item_id", how="left")
        .filter(reason.is_null() & (pl.col("covered_days").fill_null(0) != days))
        .select(
            "account_id", "usage_type", pl.lit("no tariff or price period for part of the bill period").alias("reason")
        )
    )
    found = items.select("account_id", "usage_type", reason.alias("reason")).filter(pl.col("reason").is_not_null())
    return pl.concat([found, uncovered])


def _tariff_columns(frames: TariffFrames, config: PricingConfig) -> pl.LazyFrame:
    """Per usage type: tier cycle, household rule in integer units, and how a cut item is split."""
    return frames.tariffs.select(
        "usage_type",
        pl.col("cycle").cast(pl.String),
        "cycle_month",
        "cycle_day",
        "household_base",
        m3_to_litres(pl.col("household_add_m3")).alias("household_add_l"),
        (pl.col("household_factor") * PRICE_UNITS_PER_YUAN).cast(pl.Int64).alias("household_factor_bp"),
        "household_max_extra",
        pl.col("price_change_split").fill_null(pl.lit(config.price_change_split)).alias("split"),
    )


def _periods(frames: TariffFrames) -> pl.LazyFrame:
    return frames.periods.select("usage_type", "effective_from", pl.col("effective_to").fill_null(FAR_FUTURE))


def _segments(
    items: pl.LazyFrame, frames: TariffFrames, config: PricingConfig, dated: pl.LazyFrame | None
) -> pl.LazyFrame:
    """Items cut at cycle starts and price changes, with each segment's volume and tier offset in litres."""
    tariffs = _tariff_columns(frames, config)
    periods = _periods(frames)
    cycle = pl.col("cycle")
    bill_start = pl.col("bill_start")
    by_cycle = (
        items.sort("account_id", "usage_type", "period_start")
        .with_columns(bill_start=run_first(pl.col("period_start"), run_start("account_id", "usage_type")))
        .join(tariffs, on="usage_type", how="inner")
        .with_columns(
            item_cycle=cycle_start_of(pl.col("period_start"), cycle, pl.col("cycle_month"), pl.col("cycle_day")),
            used_cycle=cycle_start_of(bill_start, cycle, pl.col("cycle_month"), pl.col("cycle_day")),
        )
        .with_columns(cycle_start=cycle_starts(pl.col("item_cycle"), pl.col("period_end"), cycle))
        .explode("cycle_start")
        .filter(pl.col("cycle_start").is_not_null())
        .with_columns(
            part_start=pl.max_horizontal("period_start", "cycle_start"),
            part_end=pl.min_horizontal(
                pl.col("period_end"), cycle_end(pl.col("cycle_start"), cycle, pl.col("period_end"))
            ),
            base_l=pl.when((pl.col("cycle_start") == pl.col("used_cycle")) & (cycle != "bill"))
            .then(pl.col("cycle_used_l"))
            .otherwise(0),
            cycle_key=pl.when(cycle == "bill").then(bill_start).otherwise(pl.col("cycle_start")),
        )
    )
    segments = (
        by_cycle.join(periods, on="usage_type", how="inner")
        .filter((pl.col("effective_from") < pl.col("part_end")) & (pl.col("effective_to") > pl.col("part_start")))
        .with_columns(
            seg_start=pl.max_horizontal("part_start", "effective_from"),
            seg_end=pl.min_horizontal("part_end", "effective_to"),
            price_period_start=pl.col("effective_from"),
        )
        .with_columns(days=(pl.col("seg_end") - pl.col("seg_start")).dt.total_days())
    )
    weight = pl.col("days")
    if dated is not None:
        daily = dated.lazy().select(
            "account_id",
            pl.col("day").cast(pl.Date),
            m3_to_litres(pl.col("consumption_m3")).clip(lower_bound=0).alias("dated_l"),
        )
        dated_by_segment = (
            segments.filter(pl.col("split") == "readings")
            .select("item_id", "account_id", "seg_start", "seg_end")
            .join(daily, on="account_id", how="inner")
            .filter((pl.col("day") >= pl.col("seg_start")) & (pl.col("day") < pl.col("seg_end")))
            .group_by("item_id", "seg_start")
            .agg(pl.col("dated_l").sum())
        )
        segments = segments.join(dated_by_segment, on=["item_id", "seg_start"], how="left").with_columns(
            pl.col("dated_l").fill_null(0)
        )
        dated_total = run_total(pl.col("dated_l"), run_start("item_id"), run_end("item_id"))
        weight = pl.when(dated_total > 0).then(pl.col("dated_l")).otherwise(weight)
    item_start, item_end = run_start("item_id"), run_end("item_id")
    cumulative = run_start("account_id", "usage_type", "cycle_key")
    return (
        segments.sort("item_id", "seg_start")
        .with_columns(weight=weight)
        .with_columns(
            volume_l=prorated(
                pl.col("consumption_l"),
                run_before(pl.col("weight"), item_start),
                pl.col("weight"),
                run_total(pl.col("weight"), item_start, item_end),
            )
        )
        .sort("account_id", "usage_type", "cycle_key", "seg_start", "item_id")
        .with_columns(offset_l=run_first(pl.col("base_l"), cumulative) + run_before(pl.col("volume_l"), cumulative))
    )


def _in_one_cycle() -> pl.Expr:
    """Whether an item's first and last day lie in one tier cycle (columns of `_tariff_columns`): the same as
    comparing `cycle_start_of` of both days, in integer arithmetic."""

    def index(day: pl.Expr) -> pl.Expr:
        year, month = day.dt.year().cast(pl.Int32), day.dt.month().cast(pl.Int32)
        month_day = month * 100 + day.dt.day().cast(pl.Int32)
        anchor = pl.col("cycle_month").cast(pl.Int32) * 100 + pl.col("cycle_day").cast(pl.Int32)
        return pl.when(pl.col("cycle") == "month").then(year * 12 + month).otherwise(year - (month_day < anchor))

    last_day = pl.col("period_end").dt.offset_by("-1d")
    return (pl.col("cycle") == "bill") | (index(pl.col("period_start")) == index(last_day))


def _single_segments(items: pl.LazyFrame, frames: TariffFrames, config: PricingConfig) -> pl.LazyFrame:
    """The fast path's items (see the module docstring) as the segments `_segments` would make of them.

    `items` must be sorted by account and usage type (`prepare_items` does). An item that is the only one of
    its account and usage type starts its bill there, so its tiers start at its `cycle_used_l` unless the
    cycle is the bill; one segment takes the whole consumption whatever the split.
    """
    only = run_start("account_id", "usage_type") & run_end("account_id", "usage_type")
    cycle = pl.col("cycle")
    return (
        items.with_columns(_only=only)
        .filter(pl.col("_only"))
        .join(_tariff_columns(frames, config), on="usage_type", how="inner")
        .filter(_in_one_cycle())
        .join(_periods(frames), on="usage_type", how="inner")
        .filter((pl.col("effective_from") <= pl.col("period_start")) & (pl.col("effective_to") >= pl.col("period_end")))
        .select(
            "item_id",
            "account_id",
            "usage_type",
            "billing_mode",
            "household_size",
            "household_base",
            "household_add_l",
            "household_factor_bp",
            "household_max_extra",
            pl.col("effective_from").alias("price_period_start"),
            (pl.col("period_end") - pl.col("period_start")).dt.total_days().alias("days"),
            pl.col("consumption_l").alias("volume_l"),
            pl.when(cycle != "bill").then(pl.col("cycle_used_l")).otherwise(0).alias("offset_l"),
        )
    )


def items_split_by_readings(
    items: pl.LazyFrame | pl.DataFrame, tariffs: TariffFrames | list[Tariff], config: PricingConfig | None = None
) -> pl.LazyFrame:
    """`account_id` of the accounts with an item that a price change or cycle start cuts and whose tariff splits
    it by readings: those whose dated consumption the pricing would use."""
    config = config or PricingConfig()
    frames = tariffs if isinstance(tariffs, TariffFrames) else tariff_frames(tariffs)
    candidates = (
        items.lazy()
        .select("account_id", pl.col("usage_type").cast(pl.String), "period_start", "period_end")
        .with_row_index("_item")
        .join(_tariff_columns(frames, config).filter(pl.col("split") == "readings"), on="usage_type", how="inner")
    )
    whole = (
        candidates.filter(_in_one_cycle())
        .join(_periods(frames), on="usage_type", how="inner")
        .filter((pl.col("effective_from") <= pl.col("period_start")) & (pl.col("effective_to") >= pl.col("period_end")))
        .select("_item")
    )
    return candidates.join(whole, on="_item", how="anti").select("account_id").unique()


def _energy_lines(
    segments: pl.LazyFrame, frames: TariffFrames, config: PricingConfig, *, grouped: bool = True
) -> pl.LazyFrame:
    """Energy lines in integers: volume_l, price_units, amount_fen.

    `grouped=False` is for segments that are alone with their account, usage type and price period (the
    fast path's): each of their tier rows is a line of its own already.
    """
    tiers = frames.tiers.select(
        "usage_type",
        pl.col("billing_mode").cast(pl.String),
        pl.col("effective_from").alias("price_period_start"),
        "tier_no",
        m3_to_litres(pl.col("lower_m3")).alias("lower_l"),
        m3_to_litres(pl.col("upper_m3")).alias("upper_l"),
        (pl.col("price") * PRICE_UNITS_PER_YUAN).cast(pl.Int64).alias("price_units"),
    )

    def bound(litres: str) -> pl.Expr:
        return household_bound(
            pl.col(litres),
            pl.col("household_size"),
            pl.col("household_base"),
            pl.col("household_add_l"),
            pl.col("household_factor_bp"),
            pl.col("household_max_extra"),
        )

    lower = pl.when(pl.col("tier_no") <= 1).then(-OPEN_LITRES).otherwise(bound("lower_l"))
    upper = pl.when(pl.col("upper_l").is_null()).then(OPEN_LITRES).otherwise(bound("upper_l"))
    volume = tier_volume(pl.col("offset_l"), pl.col("volume_l"), lower, upper)
    keys = ["account_id", "usage_type", "price_period_start", "tier_no", "price_units"]
    tier_rows = (
        segments.join(tiers, on=["usage_type", "billing_mode", "price_period_start"], how="inner")
        .select(*keys, volume.alias("tier_l"))
        .filter(pl.col("tier_l") != 0)
    )
    if grouped:
        lines = tier_rows.group_by(keys).agg(
            pl.col("tier_l").sum().alias("volume_l"),
            (pl.col("tier_l") * pl.col("price_units")).sum().alias("raw"),
        )
    else:
        lines = tier_rows.select(
            *keys, pl.col("tier_l").alias("volume_l"), (pl.col("tier_l") * pl.col("price_units")).alias("raw")
        )
    return lines.with_columns(amount_fen=raw_to_fen(pl.col("raw"), config.rounding)).drop("raw")


def _accounts(items: pl.LazyFrame, frames: TariffFrames) -> pl.LazyFrame:
    """One row per account: bill span, main usage type and its price period on the bill's last day."""
    periods = frames.periods.with_columns(pl.col("effective_to").fill_null(FAR_FUTURE))
    accounts = items.group_by("account_id").agg(
        pl.col("period_start").min().alias("bill_start"),
        pl.col("period_end").max().alias("bill_end"),
        pl.col("main_usage_type").first().alias("usage_type"),
    )
    last_day = pl.col("bill_end").dt.offset_by("-1d")
    in_effect = (
        accounts.join(periods, on="usage_type", how="inner")
        .filter((pl.col("effective_from") <= last_day) & (last_day < pl.col("effective_to")))
        .select(
            "account_id",
            pl.col("effective_from").alias("price_period_start"),
            (pl.col("minimum_charge") * 100).cast(pl.Int64).alias("minimum_fen"),
        )
    )
    return accounts.join(in_effect, on="account_id", how="left").with_columns(
        months=months_started(pl.col("bill_start"), pl.col("bill_end"))
    )


def price_integers(
    items: pl.LazyFrame | pl.DataFrame,
    tariffs: TariffFrames | list[Tariff],
    config: PricingConfig | None = None,
    dated: pl.LazyFrame | pl.DataFrame | None = None,
    *,
    fast_path: bool = True,
) -> IntegerBill:
    """The lazy plans of priced bills in integer units (see `IntegerBill` and the module docstring)."""
    config = config or PricingConfig()
    frames = tariffs if isinstance(tariffs, TariffFrames) else tariff_frames(tariffs)
    # cached: lines, accounts and problems share these plans, which otherwise run once per output
    prepared = prepare_items(items).cache()
    valid = prepared.filter(
        (pl.col("period_end") > pl.col("period_start"))
        & pl.col("consumption_l").is_not_null()
        & pl.col("billing_mode").is_in(BILLING_MODES)
    )
    general = valid
    if fast_path:
        single = _single_segments(valid, frames, config).cache()
        general = valid.join(single.select("item_id"), on="item_id", how="anti").cache()
    segments = _segments(general, frames, config, None if dated is None else dated.lazy()).cache()
    energy = _energy_lines(segments, frames, config)
    covered = segments.group_by("item_id").agg(pl.col("days").sum().alias("covered_days"))
    if fast_path:
        energy = pl.concat([_energy_lines(single, frames, config, grouped=False), energy])
    energy = energy.cache()
    accounts = _accounts(prepared, frames).cache()

    energy_fen = energy.group_by("account_id").agg(pl.col("amount_fen").sum().alias("energy_fen"))
    charges = (
        accounts.join(
            frames.charges.select(
                pl.col("usage_type"),
                pl.col("effective_from").alias("price_period_start"),
                "charge_code",
                (pl.col("amount_per_month") * 100).cast(pl.Int64).alias("fen"),
            ),
            on=["usage_type", "price_period_start"],
            how="inner",
        )
        .filter(pl.col("months") > 0)
        .select(
            "account_id",
            "usage_type",
            "charge_code",
            "price_period_start",
            (pl.col("fen") * PRICE_UNITS_PER_YUAN // 100).alias("price_units"),
            (pl.col("fen") * pl.col("months")).alias("amount_fen"),
        )
    )
    topups = (
        accounts.join(energy_fen, on="account_id", how="left")
        .select(
            "account_id",
            "usage_type",
            "price_period_start",
            (pl.col("minimum_fen") - pl.col("energy_fen").fill_null(0)).alias("amount_fen"),
        )
        .filter(pl.col("amount_fen") > 0)
    )
    lines = (
        pl.concat(
            [
                energy.with_columns(line_kind=pl.lit("energy", LINE_KIND)),
                charges.with_columns(line_kind=pl.lit("fixed_charge", LINE_KIND)),
                topups.with_columns(line_kind=pl.lit("minimum_topup", LINE_KIND)),
            ],
            how="diagonal_relaxed",
        )
        .select(
            "account_id",
            "line_kind",
            "usage_type",
            pl.col("charge_code").cast(pl.String),
            pl.col("tier_no").cast(pl.Int32),
            "price_period_start",
            "volume_l",
            "price_units",
            "amount_fen",
        )
        .sort(LINE_ORDER, nulls_last=True)
    )
    sums = (
        lines.with_columns(pl.col("account_id").set_sorted())
        .group_by("account_id")
        .agg(pl.col("amount_fen").sum(), pl.col("volume_l").sum())
    )
    bills = accounts.select("account_id", "bill_start", "bill_end", "usage_type").join(
        sums, on="account_id", how="left"
    )
    main_problems = accounts.filter(pl.col("price_period_start").is_null()).select(
        "account_id", "usage_type", pl.lit("no price period of the main usage type at the bill's end").alias("reason")
    )
    problems = pl.concat([_item_problems(prepared, general, covered), main_problems])
    return IntegerBill(lines, bills.with_columns(pl.col("amount_fen", "volume_l").fill_null(0)), problems)


def price_lazy(
    items: pl.LazyFrame | pl.DataFrame,
    tariffs: TariffFrames | list[Tariff],
    config: PricingConfig | None = None,
    dated: pl.LazyFrame | pl.DataFrame | None = None,
    *,
    fast_path: bool = True,
) -> LazyBill:
    """The lazy plans of `price_bills`."""
    plan = price_integers(items, tariffs, config, dated, fast_path=fast_path)
    lines = plan.lines.select(
        "account_id",
        "line_kind",
        "usage_type",
        "charge_code",
        "tier_no",
        "price_period_start",
        litres_to_m3(pl.col("volume_l")).alias("volume_m3"),
        price_units_to_price(pl.col("price_units")).alias("unit_price"),
        fen_to_money(pl.col("amount_fen")).alias("amount"),
    )
    totals = plan.accounts.select(
        "account_id",
        fen_to_money(pl.col("amount_fen")).alias("amount_total"),
        litres_to_m3(pl.col("volume_l")).alias("volume_total_m3"),
    ).sort("account_id")
    return LazyBill(lines, totals, plan.problems)


def price_bills(
    items: pl.LazyFrame | pl.DataFrame,
    tariffs: TariffFrames | list[Tariff],
    config: PricingConfig | None = None,
    dated: pl.LazyFrame | pl.DataFrame | None = None,
    *,
    fast_path: bool = True,
) -> BillFrames:
    """Price bill items (see the module docstring); raises `PricingError` if any item cannot be priced."""
    plan = price_lazy(items, tariffs, config, dated, fast_path=fast_path)
    lines, totals, problems = pl.collect_all([plan.lines, plan.totals, plan.problems])
    if problems.height:
        raise PricingError(problems)
    return BillFrames(lines, totals)
