"""Estimation of register values and period use where readings are missing or rejected (the E of VEE).

Estimates rest only on good readings: rows with `quality` "estimated" or "rejected" and any (meter_id, ts)
in `rejected` are left out. Outputs never reuse the `value` / `use_m3` names: estimates are in
`estimated_value` / `estimated_use_m3`, with `quality` = "estimated" and the `estimation_method`, next to
the real readings they rest on (`basis_from`, `basis_to`).

Arithmetic is exact on integer litres along each meter's unwrapped register (rollovers added back);
a fractional litre is rounded half up.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import polars as pl

from billing.consumption import TS, RegisterParams, intervals_litres, m3, ts_utc

ESTIMATED = "estimated"
ACTUAL = "actual"
LINEAR_INTERPOLATION = "linear_interpolation"
AVERAGE_DAILY = "average_daily"
SAME_PERIOD_LAST_YEAR = "same_period_last_year"
METHODS = (LINEAR_INTERPOLATION, AVERAGE_DAILY, SAME_PERIOD_LAST_YEAR)
NOT_A_BASIS = ("estimated", "rejected")


def _good(readings: pl.LazyFrame, rejected: pl.LazyFrame | None) -> pl.LazyFrame:
    schema = readings.collect_schema()
    good = readings
    if "quality" in schema:
        good = good.filter(pl.col("quality").is_null() | ~pl.col("quality").is_in(NOT_A_BASIS))
    if rejected is not None:
        rejected_schema = rejected.collect_schema()
        keys = rejected.select(pl.col("meter_id").cast(pl.Int64), ts_utc("ts", rejected_schema["ts"]).alias("ts"))
        good = good.with_columns(pl.col("meter_id").cast(pl.Int64), ts_utc("ts", schema["ts"]).alias("ts")).join(
            keys, on=["meter_id", "ts"], how="anti"
        )
    return good


def _register(
    readings: pl.LazyFrame, meters: pl.LazyFrame, rejected: pl.LazyFrame | None, params: RegisterParams | None
) -> pl.LazyFrame:
    """Good readings with the unwrapped register `cum_l` and `segment` (a reset starts a new one)."""
    frame, _ = intervals_litres(_good(readings, rejected), meters, params=params)
    return (
        frame.with_columns(
            pl.col("use_l").fill_null(0).cum_sum().over("meter_id").alias("cum_l"),
            (pl.col("kind") == "reset").fill_null(False).cum_sum().over("meter_id").alias("segment"),
        )
        .select("meter_id", "ts", "value_l", "cum_l", "segment", "modulus_l")
        .sort("ts")
    )


def _round_div(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """numerator / denominator rounded half up, on Int128 so that litres × microseconds cannot overflow."""
    num, den = numerator.cast(pl.Int128), denominator.cast(pl.Int128)
    return ((2 * num + den) // (2 * den)).cast(pl.Int64)


def _at(register: pl.LazyFrame, points: pl.LazyFrame, at: str, prefix: str) -> pl.LazyFrame:
    """Interpolate the unwrapped register at `points[at]`: adds `{prefix}cum_l`, `{prefix}value_l`,
    `{prefix}from`, `{prefix}to` (the readings used; equal when a reading falls exactly at the point)."""
    side = register.rename({"ts": "_ts"})
    before = side.select(
        "meter_id",
        pl.col("_ts").alias("_at"),
        pl.col("_ts").alias("_p_ts"),
        pl.col("cum_l").alias("_p_cum"),
        pl.col("value_l").alias("_p_value"),
        pl.col("segment").alias("_p_seg"),
        "modulus_l",
    )
    after = side.select(
        "meter_id",
        pl.col("_ts").alias("_at"),
        pl.col("_ts").alias("_n_ts"),
        pl.col("cum_l").alias("_n_cum"),
        pl.col("segment").alias("_n_seg"),
    )
    joined = (
        points.with_columns(pl.col(at).alias("_at"))
        .sort("_at")
        .join_asof(before, on="_at", by="meter_id", strategy="backward", check_sortedness=False)
        .join_asof(after, on="_at", by="meter_id", strategy="forward", check_sortedness=False)
    )
    exact = pl.col("_p_ts") == pl.col("_at")
    usable = exact | (pl.col("_p_seg") == pl.col("_n_seg"))
    step = _round_div(
        (pl.col("_n_cum") - pl.col("_p_cum")) * (pl.col("_at") - pl.col("_p_ts")).dt.total_microseconds(),
        (pl.col("_n_ts") - pl.col("_p_ts")).dt.total_microseconds(),
    )
    step = pl.when(exact).then(0).when(usable).then(step)
    return joined.with_columns(
        (pl.col("_p_cum") + step).alias(f"{prefix}cum_l"),
        ((pl.col("_p_value") + step) % pl.col("modulus_l").fill_null(2**62)).alias(f"{prefix}value_l"),
        pl.when(step.is_not_null()).then(pl.col("_p_ts")).alias(f"{prefix}from"),
        pl.when(step.is_not_null())
        .then(pl.when(exact).then(pl.col("_p_ts")).otherwise(pl.col("_n_ts")))
        .alias(f"{prefix}to"),
    ).drop("_at", "_p_ts", "_p_cum", "_p_value", "_p_seg", "_n_ts", "_n_cum", "_n_seg", "modulus_l")


def interpolate_readings(
    readings: pl.LazyFrame,
    meters: pl.LazyFrame,
    points: pl.LazyFrame,
    *,
    rejected: pl.LazyFrame | None = None,
    params: RegisterParams | None = None,
) -> pl.LazyFrame:
    """Register values at `points` (`meter_id`, `ts`) by linear interpolation between good readings.

    Columns: `meter_id, ts, estimated_value` (Decimal m3, wrapped at the register's modulus; null when the
    point is not between two good readings without a reset), `quality` ("actual" when a good reading is
    exactly at the point, else "estimated"), `estimation_method`, `basis_from`, `basis_to`.
    """
    register = _register(readings, meters, rejected, params)
    schema = points.collect_schema()
    targets = points.select(pl.col("meter_id").cast(pl.Int64), ts_utc("ts", schema["ts"]).alias("ts"))
    result = _at(register, targets, "ts", "e_")
    actual = pl.col("e_from") == pl.col("ts")
    return result.select(
        "meter_id",
        "ts",
        m3(pl.col("e_value_l")).alias("estimated_value"),
        pl.when(actual).then(pl.lit(ACTUAL)).otherwise(pl.lit(ESTIMATED)).alias("quality"),
        pl.when(~actual).then(pl.lit(LINEAR_INTERPOLATION)).alias("estimation_method"),
        pl.col("e_from").alias("basis_from"),
        pl.col("e_to").alias("basis_to"),
    ).sort("meter_id", "ts")


def _targets(targets: pl.LazyFrame) -> pl.LazyFrame:
    schema = targets.collect_schema()
    return targets.select(
        pl.col("meter_id").cast(pl.Int64),
        ts_utc("period_start", schema["period_start"]).alias("period_start"),
        ts_utc("period_end", schema["period_end"]).alias("period_end"),
    )


def _use_between(register: pl.LazyFrame, targets: pl.LazyFrame, start: str, end: str) -> pl.LazyFrame:
    """Adds `use_l` between the register at columns `start` and `end`, and the basis readings."""
    with_start = _at(register, targets, start, "s_")
    with_end = _at(register, with_start, end, "e_")
    return with_end.with_columns(
        (pl.col("e_cum_l") - pl.col("s_cum_l")).alias("use_l"),
        pl.col("s_from").alias("basis_from"),
        pl.col("e_to").alias("basis_to"),
    )


def _output(frame: pl.LazyFrame, method: str) -> pl.LazyFrame:
    return frame.select(
        "meter_id",
        "period_start",
        "period_end",
        m3(pl.col("use_l")).alias("estimated_use_m3"),
        pl.lit(ESTIMATED).alias("quality"),
        pl.when(pl.col("use_l").is_not_null()).then(pl.lit(method)).alias("estimation_method"),
        pl.when(pl.col("use_l").is_not_null()).then(pl.col("basis_from")).cast(TS).alias("basis_from"),
        pl.when(pl.col("use_l").is_not_null()).then(pl.col("basis_to")).cast(TS).alias("basis_to"),
    )


def estimate_use(
    readings: pl.LazyFrame,
    meters: pl.LazyFrame,
    targets: pl.LazyFrame,
    method: str,
    *,
    rejected: pl.LazyFrame | None = None,
    params: RegisterParams | None = None,
    lookback_days: int = 90,
) -> pl.LazyFrame:
    """Estimated use per target period (`meter_id, period_start, period_end`) by one method.

    - linear_interpolation: register interpolated at both ends between the good readings around them.
    - average_daily: use between the first and last good readings of the `lookback_days` before the period
      start, per day, × the period's days.
    - same_period_last_year: use over the same calendar dates a year earlier (interpolated at both ends).

    Columns: `meter_id, period_start, period_end, estimated_use_m3` (null when the method has no basis),
    `quality` ("estimated"), `estimation_method`, `basis_from`, `basis_to` (the real readings used).
    """
    if method not in METHODS:
        raise ValueError(f"unknown estimation method {method!r}; expected one of {', '.join(METHODS)}")
    register = _register(readings, meters, rejected, params)
    periods = _targets(targets)
    if method == LINEAR_INTERPOLATION:
        return _output(_use_between(register, periods, "period_start", "period_end"), method)
    if method == SAME_PERIOD_LAST_YEAR:
        shifted = periods.with_columns(
            pl.col("period_start").dt.offset_by("-1y").alias("_ly_start"),
            pl.col("period_end").dt.offset_by("-1y").alias("_ly_end"),
        )
        return _output(_use_between(register, shifted, "_ly_start", "_ly_end"), method)
    return _output(_average_daily(register, periods, lookback_days), method)


def _average_daily(register: pl.LazyFrame, periods: pl.LazyFrame, lookback_days: int) -> pl.LazyFrame:
    first = register.select(
        "meter_id", pl.col("ts").alias("_from_at"), pl.col("ts").alias("basis_from"), pl.col("cum_l").alias("_f_cum")
    )
    last = register.select(
        "meter_id", pl.col("ts").alias("period_start"), pl.col("ts").alias("basis_to"), pl.col("cum_l").alias("_l_cum")
    )
    basis = (
        periods.with_columns((pl.col("period_start") - pl.duration(days=lookback_days)).alias("_from_at"))
        .sort("_from_at")
        .join_asof(first, on="_from_at", by="meter_id", strategy="forward", check_sortedness=False)
        .sort("period_start")
        .join_asof(last, on="period_start", by="meter_id", strategy="backward", check_sortedness=False)
    )
    basis_us = (pl.col("basis_to") - pl.col("basis_from")).dt.total_microseconds()
    period_us = (pl.col("period_end") - pl.col("period_start")).dt.total_microseconds()
    use = _round_div((pl.col("_l_cum") - pl.col("_f_cum")) * period_us, basis_us)
    return basis.with_columns(pl.when(basis_us > 0).then(use).alias("use_l"))


def estimate(
    readings: pl.LazyFrame,
    meters: pl.LazyFrame,
    targets: pl.LazyFrame,
    *,
    methods: Sequence[str] = METHODS,
    rejected: pl.LazyFrame | None = None,
    params: RegisterParams | None = None,
    lookback_days: int = 90,
) -> pl.LazyFrame:
    """Estimated use per target period by the first of `methods` that has a basis (same columns as
    `estimate_use`)."""
    keys = ["meter_id", "period_start", "period_end"]
    tried = [
        estimate_use(
            readings, meters, targets, method, rejected=rejected, params=params, lookback_days=lookback_days
        ).with_columns(pl.lit(rank, dtype=pl.Int32).alias("_rank"))
        for rank, method in enumerate(methods)
    ]
    return (
        pl.concat(tried)
        .sort([*keys, pl.col("estimated_use_m3").is_null(), "_rank"])
        .group_by(keys, maintain_order=True)
        .first()
        .drop("_rank")
    )


def period_bounds(period_start: datetime, period_end: datetime, meter_ids: pl.LazyFrame) -> pl.LazyFrame:
    """Targets frame for one period and the given `meter_id`s."""
    return meter_ids.select(
        pl.col("meter_id").cast(pl.Int64),
        pl.lit(period_start).alias("period_start"),
        pl.lit(period_end).alias("period_end"),
    )
