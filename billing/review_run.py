"""Validating a reading period from the store: load, compute flags and the review queue, write them back.

`validate_period` is the whole run; `compute_review` is its pure part (frames in, frames out), used by the
benchmark as the compute reference. Volumes stay integer litres until the queue frame is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import psycopg
from psycopg.types.json import Jsonb

from billing.consumption import ACCOUNT_KEYS, TS, intervals_litres, m3, ordered_readings, period_litres
from billing.estimation import estimate
from billing.reading_store import (
    Period,
    copy_frame,
    ensure_period,
    load_assignments,
    load_manual_readings,
    load_meters,
    load_readings,
)
from billing.validation import RuleSet, rejected_readings, validate
from billing.valve_history import load_closed_intervals
from meterhub.store import Store

DEFAULT_RULES = RuleSet(rule_set_version="default-1")
ESTIMATE_HISTORY_DAYS = 400  # a year and a bit: same period last year needs both ends
SEVERITY_RANK = {"info": 1, "warning": 2, "error": 3}
QUEUE_COLUMNS = (
    "period",
    "account_id",
    "meter_id",
    "run_id",
    "bound_start",
    "bound_end",
    "candidate_source",
    "start_ts",
    "start_value",
    "end_ts",
    "end_value",
    "consumption_m3",
    "read_in_period",
    "rollover_count",
    "reset_count",
    "flag_count",
    "flag_rules",
    "worst_severity",
    "estimation_needed",
    "estimation_reason",
    "estimate_m3",
    "estimate_method",
)


@dataclass
class ValidationResult:
    """What a validation run found and wrote; `timings` in seconds (load, compute, write)."""

    run_id: int
    period: str
    meters: int
    readings: int
    flags: int
    flags_by_rule: dict[str, int]
    queue_rows: int
    pending: int
    timings: dict[str, float] = field(default_factory=dict)


def _readings_frame(telemetry: pl.DataFrame, manual: pl.DataFrame) -> pl.DataFrame:
    telemetry = telemetry.select("meter_id", "ts", "value_l", pl.lit(None, dtype=TS).alias("received_at"))
    return pl.concat([telemetry, manual], how="diagonal_relaxed")


def _bounds(assignments: pl.LazyFrame, period: Period) -> pl.LazyFrame:
    start, end = pl.lit(period.start_ts, dtype=TS), pl.lit(period.end_ts, dtype=TS)
    return assignments.with_columns(
        pl.max_horizontal(start, pl.col("valid_from")).alias("bound_start"),
        pl.min_horizontal(end, pl.col("valid_to")).alias("bound_end"),
    ).filter(pl.col("bound_start") < pl.col("bound_end"))


def _consumption(
    readings: pl.LazyFrame,
    meters: pl.LazyFrame,
    assignments: pl.DataFrame,
    period: Period,
    rules: RuleSet,
    intervals: pl.DataFrame | None = None,
) -> pl.LazyFrame:
    """Per (account, meter) served in the period: boundary readings and use in litres.

    Meters whose assignment is plain (no settlement readings) take the faster per-meter path — on `intervals`
    (`intervals_litres` of these readings by meter, as validation computed them) when given; replaced or
    newly installed meters go through the account assignment path.
    """
    since = period.start_ts - timedelta(days=rules.spike_window_days)
    plain = ~pl.col("explicit") & (pl.col("first_value").is_null() | (pl.col("valid_from") <= since))
    simple = assignments.filter(plain)
    complex_ = assignments.filter(~plain)
    parts: list[pl.LazyFrame] = []
    if simple.height:
        simple_ids = simple.get_column("meter_id").implode()
        if intervals is None:
            frame, keys = intervals_litres(
                readings.filter(pl.col("meter_id").is_in(simple_ids)), meters, params=rules.register
            )
        else:
            frame, keys = intervals.lazy(), ["meter_id"]
            if not intervals.select(pl.col("meter_id").is_in(simple_ids).all()).item():
                frame = frame.filter(pl.col("meter_id").is_in(simple_ids))
        summary = period_litres(frame, keys, period.start_ts, period.end_ts)
        parts.append(summary.join(simple.lazy().select("meter_id", "account_id"), on="meter_id"))
    if complex_.height:
        frame, keys = intervals_litres(
            readings.filter(pl.col("meter_id").is_in(complex_.get_column("meter_id").implode())),
            meters,
            assignments=complex_.lazy().drop("explicit"),
            params=rules.register,
        )
        summary = period_litres(frame, list(ACCOUNT_KEYS), period.start_ts, period.end_ts)
        # The same meter twice on one account in a period (removed and put back) is one queue row.
        parts.append(
            summary.sort("account_id", "meter_id", "bound_start")
            .group_by("account_id", "meter_id", maintain_order=True)
            .agg(
                pl.col("bound_start").first(),
                pl.col("bound_end").last(),
                pl.col("start_ts").first(),
                pl.col("start_l").first(),
                pl.col("end_ts").last(),
                pl.col("end_l").last(),
                pl.col("use_l").sum(),
                *[pl.col(c).sum() for c in ("rollover_count", "negative_count", "reset_count")],
                pl.col("estimation_reason").drop_nulls().str.join(","),
            )
            .with_columns(pl.when(pl.col("estimation_reason") != "").then(pl.col("estimation_reason")))
        )
    columns = ["account_id", "meter_id", "start_ts", "start_l", "end_ts", "end_l", "use_l"]
    columns += ["rollover_count", "reset_count", "estimation_reason"]
    found = [p.select(*columns) for p in parts]
    served = (
        _bounds(assignments.lazy(), period)
        .group_by("account_id", "meter_id")
        .agg(pl.col("bound_start").min(), pl.col("bound_end").max())
    )
    empty = pl.LazyFrame(
        schema={
            "account_id": pl.Int64,
            "meter_id": pl.Int64,
            "start_ts": TS,
            "start_l": pl.Int64,
            "end_ts": TS,
            "end_l": pl.Int64,
            "use_l": pl.Int64,
            "rollover_count": pl.UInt32,
            "reset_count": pl.UInt32,
            "estimation_reason": pl.String,
        }
    )
    summary = pl.concat([empty, *found], how="vertical_relaxed")
    # Every meter that served an account in the period gets a row, read or not.
    return served.join(summary, on=["account_id", "meter_id"], how="left").with_columns(
        pl.when(pl.col("end_ts").is_null())
        .then(pl.lit("no_readings"))
        .otherwise(pl.col("estimation_reason"))
        .alias("estimation_reason"),
    )


def _flag_summary(flags: pl.LazyFrame) -> pl.LazyFrame:
    rank = pl.col("severity").replace_strict(SEVERITY_RANK, return_dtype=pl.Int8)
    return (
        flags.with_columns(rank.alias("_rank"))
        .group_by("meter_id")
        .agg(
            pl.len().cast(pl.Int64).alias("flag_count"),
            pl.col("rule_id").unique().sort().str.join(",").alias("_rules"),
            pl.col("severity").sort_by("_rank").last().alias("worst_severity"),
        )
        .with_columns(pl.format("{{{}}}", pl.col("_rules")).alias("flag_rules"))
        .drop("_rules")
    )


def _in_scope(readings: pl.DataFrame, meters: pl.DataFrame) -> pl.DataFrame:
    """The readings of the meters in `meters`; the frame itself when they all are (the usual case)."""
    inside = pl.col("meter_id").is_in(meters.get_column("meter_id").implode())
    if readings.select(inside.all()).item():
        return readings
    return readings.filter(inside)


def compute_review(
    readings: pl.DataFrame,
    meters: pl.DataFrame,
    assignments: pl.DataFrame,
    period: Period,
    rules: RuleSet,
    now: datetime,
    valve_states: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Flags (see `billing.validation.FLAG_SCHEMA`) and the review queue (columns of `QUEUE_COLUMNS`
    without `run_id`, `estimate_m3`, `estimate_method`) for a period.

    `readings`: `meter_id, ts, value_l, received_at`; manual readings carry `manual` = true.
    `valve_states`: the meters' closed-valve intervals (`meter_id, closed_from, closed_to`), see
    `billing.valve_history`.
    """
    if "manual" not in readings.columns:
        readings = readings.with_columns(pl.lit(False).alias("manual"))
    scoped = _in_scope(readings, meters)
    volume = scoped.lazy().drop("manual")
    # One sort and one pass over the intervals serve validation and the per-meter consumption alike.
    sorted_lazy, keys = ordered_readings(volume)
    sorted_frame = sorted_lazy.collect(engine="in-memory")
    intervals, _ = intervals_litres(volume, meters.lazy(), params=rules.register, ordered=(sorted_frame.lazy(), keys))
    interval_frame = intervals.collect(engine="in-memory")
    flags = validate(
        volume,
        meters.lazy(),
        rules,
        period_start=period.start_ts,
        period_end=period.end_ts,
        now=now,
        valve_states=None if valve_states is None else valve_states.lazy(),
        ordered=(sorted_frame.lazy(), keys),
        intervals=interval_frame.lazy(),
    ).collect(engine="in-memory")
    use = _consumption(volume, meters.lazy(), assignments, period, rules, interval_frame)
    # A removed meter is not silent after its removal: drop open gaps that run past its last day of service.
    served_until = _bounds(assignments.lazy(), period).group_by("meter_id").agg(pl.col("bound_end").max())
    flags = (
        flags.lazy()
        .join(served_until, on="meter_id", how="left")
        .filter((pl.col("rule_id") != "gap") | pl.col("bound_end").is_null() | (pl.col("ts_to") <= pl.col("bound_end")))
        .drop("bound_end")
        .collect(engine="in-memory")
    )
    manual_ends = (
        scoped.lazy()
        .filter(pl.col("manual").fill_null(False))
        .select("meter_id", pl.col("ts").alias("end_ts"), pl.lit(True).alias("_m"))
    ).unique(["meter_id", "end_ts"])
    read = pl.col("end_ts") > pl.col("bound_start")
    needed = pl.col("estimation_reason").is_not_null() | pl.col("use_l").is_null()
    queue = (
        use.join(manual_ends, on=["meter_id", "end_ts"], how="left")
        .join(_flag_summary(flags.lazy()), on="meter_id", how="left")
        .select(
            pl.lit(period.period).alias("period"),
            "account_id",
            "meter_id",
            "bound_start",
            "bound_end",
            pl.when(pl.col("end_ts").is_null())
            .then(None)
            .when(pl.col("_m").fill_null(False))
            .then(pl.lit("manual"))
            .otherwise(pl.lit("automatic"))
            .alias("candidate_source"),
            "start_ts",
            m3(pl.col("start_l")).alias("start_value"),
            "end_ts",
            m3(pl.col("end_l")).alias("end_value"),
            m3(pl.col("use_l")).alias("consumption_m3"),
            read.fill_null(False).alias("read_in_period"),
            pl.col("rollover_count").fill_null(0).cast(pl.Int64),
            pl.col("reset_count").fill_null(0).cast(pl.Int64),
            pl.col("flag_count").fill_null(0),
            pl.col("flag_rules").fill_null("{}"),
            "worst_severity",
            needed.alias("estimation_needed"),
            "estimation_reason",
        )
        .sort("account_id", "meter_id")
        .collect(engine="in-memory")
    )
    return flags, queue


def add_estimates(
    queue: pl.DataFrame, history: pl.DataFrame, meters: pl.DataFrame, flags: pl.DataFrame, rules: RuleSet
) -> pl.DataFrame:
    """The queue with `estimate_m3`, `estimate_method` for rows needing an estimate or flagged as errors."""
    wanted = pl.col("estimation_needed") | (pl.col("worst_severity") == "error")
    targets = queue.filter(wanted).select(
        "meter_id", pl.col("bound_start").alias("period_start"), pl.col("bound_end").alias("period_end")
    )
    if targets.height == 0 or history.height == 0:
        return queue.with_columns(
            pl.lit(None, dtype=pl.Decimal(38, 3)).alias("estimate_m3"),
            pl.lit(None, dtype=pl.String).alias("estimate_method"),
        )
    estimates = estimate(
        history.lazy(), meters.lazy(), targets.lazy(), rejected=rejected_readings(flags.lazy()), params=rules.register
    ).collect(engine="in-memory")
    return queue.join(
        estimates.select(
            "meter_id",
            pl.col("period_start").alias("bound_start"),
            pl.col("period_end").alias("bound_end"),
            pl.col("estimated_use_m3").alias("estimate_m3"),
            pl.col("estimation_method").alias("estimate_method"),
        ),
        on=["meter_id", "bound_start", "bound_end"],
        how="left",
    )


def _write(
    conn: psycopg.Connection[Any],
    period: Period,
    rules: RuleSet,
    flags: pl.DataFrame,
    queue: pl.DataFrame,
    readings: int,
) -> tuple[int, int, dict[str, int]]:
    by_rule = {r: int(n) for r, n in flags.group_by("rule_id").len().iter_rows()} if flags.height else {}
    row = conn.execute(
        """INSERT INTO validation_run (period, rule_set_version, meters, readings, flags, flags_by_rule)
           VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
        [period.period, rules.rule_set_version, queue.height, readings, flags.height, Jsonb(by_rule)],
    ).fetchone()
    assert row is not None
    run_id = int(row[0])
    copy_frame(
        conn,
        "reading_flag",
        flags.select(
            pl.lit(run_id).alias("run_id"),
            "meter_id",
            "rule_id",
            "severity",
            "ts_from",
            "ts_to",
            "observed",
            "threshold",
            "unit",
        ),
    )
    conn.execute("DELETE FROM reading_review WHERE period = %s AND status = 'pending'", [period.period])
    rows = queue.with_columns(pl.lit(run_id).alias("run_id")).select(QUEUE_COLUMNS)
    decided = conn.execute("SELECT count(*) FROM reading_review WHERE period = %s", [period.period]).fetchone()
    if decided and decided[0]:
        # Decided rows keep their decision: stage, then add only the rows not yet decided.
        columns = ", ".join(QUEUE_COLUMNS)
        conn.execute(
            f"CREATE TEMP TABLE review_stage ON COMMIT DROP AS SELECT {columns} FROM reading_review WITH NO DATA"
        )
        copy_frame(conn, "review_stage", rows)
        cur = conn.execute(
            f"""INSERT INTO reading_review ({columns}) SELECT {columns} FROM review_stage s
                 WHERE NOT EXISTS (SELECT 1 FROM reading_review r WHERE r.period = s.period
                                   AND r.account_id = s.account_id AND r.meter_id = s.meter_id)"""
        )
        pending = cur.rowcount
    else:
        pending = copy_frame(conn, "reading_review", rows)
    conn.execute(
        "UPDATE validation_run SET finished_at = clock_timestamp(), queue_rows = %s WHERE id = %s", [pending, run_id]
    )
    return run_id, pending, by_rule


@dataclass
class PeriodInput:
    """What `compute_review` takes for a period, as `load_period` reads it from the store."""

    span: Period
    meters: pl.DataFrame
    assignments: pl.DataFrame
    readings: pl.DataFrame
    valve_states: pl.DataFrame


def load_period(store: Store, period: str, rules: RuleSet, *, actor: str = "system", workers: int = 2) -> PeriodInput:
    """The period (created as a calendar month if new), meters, assignments, readings (telemetry and manual,
    back `rules.spike_window_days` before the period) and closed-valve intervals that `compute_review` takes.

    The readings are read on `workers` connections of their own while the master data is read on another.
    """
    tz = store.settings.timezone
    with store.transaction(actor=actor) as conn:
        span = ensure_period(conn, period, tz)
    since = span.start_ts - timedelta(days=rules.spike_window_days)
    with ThreadPoolExecutor(1) as pool:
        telemetry = pool.submit(load_readings, store, since, span.end_ts, workers=workers)
        with store.transaction(actor=actor) as conn:
            meters = load_meters(conn)
            assignments = load_assignments(conn, span, tz)
            manual = load_manual_readings(conn, since, span.end_ts)
            valves = load_closed_intervals(conn, since, span.end_ts)
        readings = _readings_frame(telemetry.result(), manual.with_columns(pl.lit(True).alias("manual")))
    return PeriodInput(span, meters, assignments, readings, valves)


def validate_period(
    store: Store,
    period: str,
    *,
    rules: RuleSet = DEFAULT_RULES,
    actor: str = "system",
    now: datetime | None = None,
    workers: int = 2,
    progress: Callable[[str], None] | None = None,
) -> ValidationResult:
    """Validate a period's readings (telemetry and manual), compute consumption and estimates, and write the
    run, its flags and the pending review-queue rows in one transaction."""
    step = progress or (lambda _: None)
    now = now or datetime.now(UTC)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    step("load")
    loaded = load_period(store, period, rules, actor=actor, workers=workers)
    span, meters, readings = loaded.span, loaded.meters, loaded.readings
    timings["load"] = time.perf_counter() - started
    started = time.perf_counter()
    step("compute")
    flags, queue = compute_review(readings, meters, loaded.assignments, span, rules, now, loaded.valve_states)
    timings["compute"] = time.perf_counter() - started
    started = time.perf_counter()
    step("estimate")
    wanted = queue.filter(pl.col("estimation_needed") | (pl.col("worst_severity") == "error"))
    ids = wanted.get_column("meter_id").unique().to_list()
    history = pl.DataFrame(schema={"meter_id": pl.Int64, "ts": TS, "value_l": pl.Int64, "received_at": TS})
    if ids:
        long_since = span.start_ts - timedelta(days=ESTIMATE_HISTORY_DAYS)
        with store.connection() as conn:
            old_manual = load_manual_readings(conn, long_since, span.end_ts, ids)
        history = _readings_frame(load_readings(store, long_since, span.end_ts, meter_ids=ids), old_manual)
    queue = add_estimates(queue, history, meters, flags, rules)
    timings["estimate"] = time.perf_counter() - started
    started = time.perf_counter()
    step("write")
    with store.transaction(actor=actor) as conn:
        run_id, pending, by_rule = _write(conn, span, rules, flags, queue, readings.height)
    timings["write"] = time.perf_counter() - started
    return ValidationResult(
        run_id=run_id,
        period=period,
        meters=queue.height,
        readings=readings.height,
        flags=flags.height,
        flags_by_rule=dict(sorted(by_rule.items())),
        queue_rows=queue.height,
        pending=pending,
        timings=timings,
    )
