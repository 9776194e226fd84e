"""一表多价: split one meter's consumption between usage types by quotas before pricing.

Quotas (`account_id`, `usage_type`, and `quota_m3` or `share_pct`; optional `priority`, `billing_mode`,
`cycle_used_m3` or `cycle_used_l`): each secondary usage type takes a fixed m3 per bill item, or a
percentage of the item's consumption floored to the litre. Quotas are served in ascending `priority`
(default: row order) and never take more than is left; the rest stays with the item's own (main) usage
type. Negative consumption stays with the main type.

Items give their consumption as `consumption_m3` (Decimal) or `consumption_l` (Int64 litres), and the
split items come back in the same unit. Only the items of accounts with quotas are split; the others pass
through unchanged.
"""

from __future__ import annotations

import polars as pl

from billing.pricing import with_stable_index
from billing.rounding import VOLUME, m3_to_litres

_SHARE_UNITS = 10_000  # share_pct in hundredths of a percent


def quota_litres(consumption_l: pl.Expr, quota_m3: pl.Expr, share_pct: pl.Expr) -> pl.Expr:
    """What a quota asks of a consumption in litres: the fixed m3, or the floored share."""
    share = (share_pct.cast(pl.Decimal(38, 2)) * 100).cast(pl.Int64)
    return (
        pl.when(quota_m3.is_not_null())
        .then(m3_to_litres(quota_m3))
        .otherwise(consumption_l * share // _SHARE_UNITS)
        .clip(lower_bound=0)
    )


def split_by_quotas(
    items: pl.LazyFrame | pl.DataFrame,
    quotas: pl.LazyFrame | pl.DataFrame,
    *,
    secondary: dict[str, pl.Expr] | None = None,
) -> pl.LazyFrame:
    """Bill items with each account's secondary usage types split off; adds `main_usage_type` (the item's
    usage type) unless the items carry one. A secondary item keeps the other columns of the item it was
    split from, except those `secondary` gives values for."""
    frame = items.lazy()
    if "main_usage_type" not in frame.collect_schema():
        frame = frame.with_columns(main_usage_type=pl.col("usage_type"))
    columns = frame.collect_schema().names()
    in_litres = "consumption_l" in columns
    volume, used = ("consumption_l", "cycle_used_l") if in_litres else ("consumption_m3", "cycle_used_m3")
    litres = pl.col(volume) if in_litres else m3_to_litres(pl.col(volume))

    def as_volume(expr: pl.Expr) -> pl.Expr:
        return expr if in_litres else expr.cast(VOLUME) / 1000

    rules = quotas.lazy().with_row_index("_row")
    rule_schema = rules.collect_schema()
    for name, default in (
        ("quota_m3", pl.lit(None, VOLUME)),
        ("share_pct", pl.lit(None, pl.Decimal(38, 2))),
        ("priority", pl.col("_row")),
    ):
        if name not in rule_schema:
            rules = rules.with_columns(default.alias(name))
    rule_used = next((name for name in ("cycle_used_l", "cycle_used_m3") if name in rule_schema), None)
    if rule_used is not None and rule_used != used:
        convert = m3_to_litres(pl.col(rule_used)) if in_litres else pl.col(rule_used).cast(VOLUME) / 1000
        rules = rules.with_columns(convert.alias(used))
    overrides = [name for name in ("billing_mode", used) if name in rules.collect_schema()]
    with_quota = rules.select("account_id").unique()
    passing = frame.join(with_quota, on="account_id", how="anti")
    frame = with_stable_index(frame.join(with_quota, on="account_id", how="semi"), "_item")
    taken = (
        frame.join(
            rules.select(
                "account_id",
                pl.col("usage_type").alias("_type"),
                "quota_m3",
                "share_pct",
                "priority",
                "_row",
                *[pl.col(name).alias(f"_{name}") for name in overrides],
            ),
            on="account_id",
            how="inner",
        )
        .with_columns(_want=quota_litres(litres, pl.col("quota_m3"), pl.col("share_pct")))
        .sort("_item", "priority", "_row")
        .with_columns(_before=pl.col("_want").cum_sum().over("_item") - pl.col("_want"))
        .with_columns(_take=pl.min_horizontal(pl.col("_want"), (litres - pl.col("_before")).clip(lower_bound=0)))
    )
    zero_used = pl.lit(0, pl.Int64) if in_litres else pl.lit(0, VOLUME)
    split_off = taken.with_columns(
        pl.col("_type").alias("usage_type"),
        as_volume(pl.col("_take")).alias(volume),
        (pl.col(f"_{used}") if used in overrides else zero_used).alias(used),
        *(
            [pl.col("_billing_mode").fill_null(pl.col("billing_mode")).alias("billing_mode")]
            if "billing_mode" in overrides and "billing_mode" in columns
            else []
        ),
        *(expr.alias(name) for name, expr in (secondary or {}).items()),
    )
    taken_total = taken.group_by("_item").agg(pl.col("_take").sum().alias("_taken"))
    main = frame.join(taken_total, on="_item", how="left").with_columns(
        as_volume(litres - pl.col("_taken").fill_null(0)).alias(volume)
    )
    keep = [*columns, *([used] if used not in columns else [])]
    if used not in columns:
        main = main.with_columns(zero_used.alias(used))
        passing = passing.with_columns(zero_used.alias(used))
    split = (
        pl.concat([main.select("_item", *keep), split_off.select("_item", *keep)], how="vertical_relaxed")
        .sort("_item", maintain_order=True)
        .drop("_item")
    )
    return pl.concat([passing.select(keep), split], how="vertical_relaxed")
