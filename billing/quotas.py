"""一表多价: split one meter's consumption between usage types by quotas before pricing.

Quotas (`account_id`, `usage_type`, and `quota_m3` or `share_pct`; optional `priority`, `billing_mode`,
`cycle_used_m3`): each secondary usage type takes a fixed m3 per bill item, or a percentage of the item's
consumption floored to the litre. Quotas are served in ascending `priority` (default: row order) and never
take more than is left; the rest stays with the item's own (main) usage type. Negative consumption stays
with the main type.
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


def split_by_quotas(items: pl.LazyFrame | pl.DataFrame, quotas: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """Bill items with each account's secondary usage types split off; adds `main_usage_type`."""
    frame = items.lazy().with_columns(main_usage_type=pl.col("usage_type"))
    columns = frame.collect_schema().names()
    rules = quotas.lazy().with_row_index("_row")
    rule_schema = rules.collect_schema()
    for name, default in (
        ("quota_m3", pl.lit(None, VOLUME)),
        ("share_pct", pl.lit(None, pl.Decimal(38, 2))),
        ("priority", pl.col("_row")),
    ):
        if name not in rule_schema:
            rules = rules.with_columns(default.alias(name))
    overrides = [name for name in ("billing_mode", "cycle_used_m3") if name in rule_schema]
    frame = with_stable_index(frame, "_item")  # the quota takes and the main rest join back on _item
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
        .with_columns(
            _want=quota_litres(m3_to_litres(pl.col("consumption_m3")), pl.col("quota_m3"), pl.col("share_pct"))
        )
        .sort("_item", "priority", "_row")
        .with_columns(_before=pl.col("_want").cum_sum().over("_item") - pl.col("_want"))
        .with_columns(
            _take=pl.min_horizontal(
                pl.col("_want"),
                (m3_to_litres(pl.col("consumption_m3")) - pl.col("_before")).clip(lower_bound=0),
            )
        )
    )
    secondary = taken.with_columns(
        usage_type=pl.col("_type"),
        consumption_m3=pl.col("_take").cast(VOLUME) / 1000,
        cycle_used_m3=pl.col("_cycle_used_m3") if "cycle_used_m3" in overrides else pl.lit(0, VOLUME),
        **(
            {"billing_mode": pl.col("_billing_mode").fill_null(pl.col("billing_mode"))}
            if "billing_mode" in overrides and "billing_mode" in columns
            else {}
        ),
    )
    taken_total = taken.group_by("_item").agg(pl.col("_take").sum().alias("_taken"))
    main = frame.join(taken_total, on="_item", how="left").with_columns(
        consumption_m3=(m3_to_litres(pl.col("consumption_m3")) - pl.col("_taken").fill_null(0)).cast(VOLUME) / 1000
    )
    keep = [*columns, *(["cycle_used_m3"] if "cycle_used_m3" not in columns else [])]
    main = main.with_columns(**({} if "cycle_used_m3" in columns else {"cycle_used_m3": pl.lit(0, VOLUME)}))
    return (
        pl.concat([main.select("_item", *keep), secondary.select("_item", *keep)], how="vertical_relaxed")
        .sort("_item", maintain_order=True)
        .drop("_item")
    )
