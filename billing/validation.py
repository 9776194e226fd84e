"""Validation of volume readings (the V of VEE): rules as versioned data, flags as a frame.

Every rule is vectorised over the whole run (no loop over meters). Volumes are compared in integer litres;
flag numbers are exact `Decimal(38, 3)` in the flag's unit (m3, m3/day, hours or days).

The meters frame carries `meter_id`, `register_max` and optionally `usage_type` (selects the rule
parameters; unknown or null types use the defaults) and `occupied` (default true; zero use is only
suspicious on an occupied account).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from decimal import Decimal
from itertools import pairwise
from typing import Any

import polars as pl

from billing.consumption import (
    TS,
    RegisterParams,
    conflicts_litres,
    intervals_litres,
    ordered_readings,
    ts_utc,
    utc,
)

RULE_IDS = (
    "negative_consumption",
    "register_reset",
    "rollover",
    "spike",
    "zero_use",
    "stuck_register",
    "gap",
    "future_timestamp",
    "valve_closed_use",
    "high_limit",
    "low_limit",
    "duplicate_conflict",
)
DEFAULT_SEVERITY = {
    "rollover": "info",
    "register_reset": "error",
    "future_timestamp": "error",
    "valve_closed_use": "error",
    "duplicate_conflict": "error",
}
SEVERITIES = ("info", "warning", "error")
_FLAG_COLUMNS: dict[str, pl.DataType] = {
    "meter_id": pl.Int64(),
    "rule_id": pl.String(),
    "severity": pl.String(),
    "ts_from": TS,
    "ts_to": TS,
    "observed": pl.Decimal(38, 3),
    "threshold": pl.Decimal(38, 3),
    "unit": pl.String(),
    "rule_set_version": pl.String(),
}
FLAG_SCHEMA = pl.Schema(_FLAG_COLUMNS)
US_PER_HOUR = 3_600_000_000
US_PER_DAY = 24 * US_PER_HOUR


@dataclass(frozen=True)
class UsageRules:
    """Rule parameters for one usage type (volumes in m3, durations in hours or days)."""

    spike_factor: float = 3.0
    spike_floor_m3_per_day: Decimal = Decimal("0.100")
    zero_use_days: float = 30.0
    stuck_days: float = 3.0
    stuck_min_typical_m3_per_day: Decimal = Decimal("0.100")
    max_gap_hours: float = 48.0
    valve_closed_tolerance_m3: Decimal = Decimal("0.010")
    high_m3_per_period: Decimal | None = None
    low_m3_per_period: Decimal | None = None

    def columns(self) -> dict[str, Any]:
        """The parameters as frame columns: litres and microseconds as integers."""

        def l(v: Decimal | None) -> int | None:  # noqa: E743
            return None if v is None else int(v * 1000)

        return {
            "spike_factor": float(self.spike_factor),
            "spike_floor_l": l(self.spike_floor_m3_per_day),
            "zero_use_us": int(self.zero_use_days * US_PER_DAY),
            "stuck_us": int(self.stuck_days * US_PER_DAY),
            "stuck_typical_l": l(self.stuck_min_typical_m3_per_day),
            "max_gap_us": int(self.max_gap_hours * US_PER_HOUR),
            "valve_tolerance_l": l(self.valve_closed_tolerance_m3),
            "high_l": l(self.high_m3_per_period),
            "low_l": l(self.low_m3_per_period),
        }


_DECIMAL_FIELDS = {f.name for f in fields(UsageRules) if "Decimal" in str(f.type)}


def _usage_rules(base: UsageRules, data: Mapping[str, Any], where: str) -> UsageRules:
    known = {f.name for f in fields(UsageRules)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown rule parameter(s) in {where}: {', '.join(unknown)}")
    values: dict[str, Any] = {
        k: (None if v is None else Decimal(str(v))) if k in _DECIMAL_FIELDS else v for k, v in data.items()
    }
    return replace(base, **values)


@dataclass(frozen=True)
class RuleSet:
    """A versioned set of validation rules; parameters per usage type inherit from `default`."""

    rule_set_version: str
    default: UsageRules = field(default_factory=UsageRules)
    usage_types: Mapping[str, UsageRules] = field(default_factory=dict)
    enabled: frozenset[str] = frozenset(RULE_IDS)
    severity: Mapping[str, str] = field(default_factory=dict)
    register: RegisterParams = field(default_factory=RegisterParams)
    spike_window_days: int = 90
    spike_min_history: int = 7
    future_tolerance_minutes: float = 5.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.enabled) - set(RULE_IDS))
        if unknown:
            raise ValueError(f"unknown rule id(s) in enabled: {', '.join(unknown)}")
        bad = {k: v for k, v in self.severity.items() if k not in RULE_IDS or v not in SEVERITIES}
        if bad:
            raise ValueError(f"bad severity entries: {bad}")

    def severity_of(self, rule_id: str) -> str:
        return self.severity.get(rule_id, DEFAULT_SEVERITY.get(rule_id, "warning"))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RuleSet:
        """Build from a mapping (e.g. parsed TOML): top-level keys, `[register]`, `[default]`,
        `[usage_types.<name>]` (only the keys that differ from the defaults)."""
        known = {"rule_set_version", "default", "usage_types", "enabled", "severity", "register"}
        known |= {"spike_window_days", "spike_min_history", "future_tolerance_minutes"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown rule set key(s): {', '.join(unknown)}")
        if "rule_set_version" not in data:
            raise ValueError("rule set needs a rule_set_version")
        default = _usage_rules(UsageRules(), data.get("default", {}), "default")
        usage_types = {
            name: _usage_rules(default, values, f"usage_types.{name}")
            for name, values in data.get("usage_types", {}).items()
        }
        register_data = dict(data.get("register", {}))
        if "negative_tolerance" in register_data:
            register_data["negative_tolerance"] = Decimal(str(register_data["negative_tolerance"]))
        return cls(
            rule_set_version=str(data["rule_set_version"]),
            default=default,
            usage_types=usage_types,
            enabled=frozenset(data.get("enabled", RULE_IDS)),
            severity=dict(data.get("severity", {})),
            register=RegisterParams(**register_data),
            spike_window_days=int(data.get("spike_window_days", 90)),
            spike_min_history=int(data.get("spike_min_history", 7)),
            future_tolerance_minutes=float(data.get("future_tolerance_minutes", 5.0)),
        )

    @classmethod
    def from_toml(cls, text: str) -> RuleSet:
        return cls.from_mapping(tomllib.loads(text))


def _meter_params(meters: pl.LazyFrame, rules: RuleSet) -> pl.LazyFrame:
    """Meters with the rule parameters of their usage type as columns."""
    schema = meters.collect_schema()
    defaults = rules.default.columns()
    usage_type = pl.col("usage_type") if "usage_type" in schema else pl.lit(None, dtype=pl.String)
    occupied = pl.col("occupied").fill_null(True) if "occupied" in schema else pl.lit(True)
    frame = meters.with_columns(usage_type.cast(pl.String).alias("usage_type"), occupied.alias("occupied"))
    if rules.usage_types:
        by_type = pl.LazyFrame(
            [{"usage_type": name, **params.columns()} for name, params in rules.usage_types.items()],
            schema_overrides={k: pl.Float64 if k == "spike_factor" else pl.Int64 for k in defaults},
        )
        frame = frame.join(by_type, on="usage_type", how="left")
        return frame.with_columns(pl.coalesce(pl.col(k), pl.lit(v)).alias(k) for k, v in defaults.items())
    return frame.with_columns(
        pl.lit(v, dtype=pl.Float64 if k == "spike_factor" else pl.Int64).alias(k) for k, v in defaults.items()
    )


def _flag(
    rule_id: str, ts_from: pl.Expr, ts_to: pl.Expr, observed: pl.Expr, threshold: pl.Expr, unit: str
) -> list[pl.Expr]:
    """Flag columns; `observed` and `threshold` in thousandths of `unit` (litres for m3)."""
    return [
        pl.col("meter_id"),
        pl.lit(rule_id).alias("rule_id"),
        ts_from.cast(TS).alias("ts_from"),
        ts_to.cast(TS).alias("ts_to"),
        observed.cast(pl.Int64).alias("observed_milli"),
        threshold.cast(pl.Int64).alias("threshold_milli"),
        pl.lit(unit).alias("unit"),
    ]


def _hours_milli(us: pl.Expr) -> pl.Expr:
    return us // (US_PER_HOUR // 1000)


def _days_milli(us: pl.Expr) -> pl.Expr:
    return us // (US_PER_DAY // 1000)


def _effective(rules: RuleSet, name: str) -> list[Any]:
    """The values a parameter takes over all usage types (a type's null falls back to the default's)."""
    default = rules.default.columns()[name]
    values = [default]
    for usage in rules.usage_types.values():
        value = usage.columns()[name]
        values.append(default if value is None else value)
    return values


def _least(rules: RuleSet, name: str) -> Any:
    """The smallest value of a threshold over all usage types; None when no type sets it (the rule never fires)."""
    values = [v for v in _effective(rules, name) if v is not None]
    return min(values) if values else None


def _with_params(frame: pl.LazyFrame, params: pl.LazyFrame, *names: str) -> pl.LazyFrame:
    """Candidate rows with their meter's rule parameters: joined on the few candidates, never on every reading."""
    return frame.join(params.select("meter_id", *names), on="meter_id", how="left")


def _rolling_median(frame: pl.DataFrame, window: str, min_samples: int, parts: int | None = None) -> pl.Series:
    """The median of `rate_l` over the window before each row (`order_key`), in parallel.

    polars computes one rolling median on one thread; windows never reach across series (their keys lie
    far apart), so the frame is cut at series boundaries into one part per thread and the parts computed
    at once. The result is the same as in one piece.
    """
    median = pl.col("rate_l").rolling_median_by("order_key", window_size=window, min_samples=min_samples, closed="left")
    rows = frame.height
    if parts is None:
        parts = max(1, min(pl.thread_pool_size(), rows // 100_000))
    meter = frame.get_column("meter_id")
    cuts = [0]
    for i in range(1, parts):
        at = int(meter.search_sorted(meter[rows * i // parts], side="left"))  # the first row of that meter
        if at > cuts[-1]:
            cuts.append(at)
    cuts.append(rows)
    pieces = [frame.slice(lo, hi - lo).lazy().select(median) for lo, hi in pairwise(cuts)]
    return pl.concat(pieces).collect(engine="in-memory").to_series()


def validate(
    readings: pl.LazyFrame,
    meters: pl.LazyFrame,
    rules: RuleSet,
    *,
    period_start: datetime,
    period_end: datetime,
    now: datetime,
    valve_states: pl.LazyFrame | None = None,
    ordered: tuple[pl.LazyFrame, list[str]] | None = None,
    intervals: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Flags for the period (period_start, period_end], one row per (meter, interval or point, rule).

    `readings` should reach back `spike_window_days` before the period (history for spike, zero use and
    stuck register); only intervals ending inside the period are flagged, except future timestamps,
    which are flagged wherever they are. `valve_states`: `meter_id, closed_from, closed_to` (null while
    still closed; see `billing.valve_history`). Columns: see `FLAG_SCHEMA`.

    When the caller has them already (to share one sort with the consumption computed from the same
    readings): `ordered` = `ordered_readings(readings)` and `intervals` = `intervals_litres(readings, meters,
    params=rules.register, ordered=ordered)`, both materialised.
    """
    start, end, now = utc(period_start), utc(period_end), utc(now)
    until = min(now, end)
    enabled = rules.enabled
    params = _meter_params(meters, rules)
    # The sorted readings feed both the intervals and the duplicate check: materialise them once.
    if ordered is None:
        sorted_frame, keys = ordered_readings(readings)
        ordered = (sorted_frame.collect(engine="in-memory").lazy(), keys)
    sorted_frame, keys = ordered
    if intervals is None:
        # Read twice below (the rolling median and the rules' frame): materialised once.
        interval_plan, _ = intervals_litres(readings, meters, params=rules.register, ordered=ordered)
        intervals = interval_plan.collect(engine="in-memory").lazy()
    ts, prev_ts, use = pl.col("ts"), pl.col("prev_ts"), pl.col("use_l")
    in_period = (ts > start) & (ts <= end)
    new_series = pl.col("meter_id") != pl.col("meter_id").shift(1)
    series_index = new_series.fill_null(True).cum_sum().cast(pl.Int64)
    elapsed = (ts - prev_ts).dt.total_microseconds()
    rate = (use.cast(pl.Float64) * US_PER_DAY / elapsed.cast(pl.Float64)).round(0)
    window = f"{rules.spike_window_days * 86_400}i"
    # One global rolling window over (series, time) keys spaced far apart: much faster than `.over()`.
    order_key = series_index * 10_000_000_000 + ts.dt.epoch("s")
    moving = use.is_null() | (use != 0) | prev_ts.is_null()
    columns = ["meter_id", "ts", "value_l", "prev_ts", "prev_value_l", "use_l", "kind", "modulus_l"]
    base = intervals.select(
        *columns,
        in_period.alias("in_period"),
        elapsed.alias("elapsed_us"),
        rate.alias("rate_l"),
        moving.alias("moving"),
    )
    needs_history = {"spike", "stuck_register"} & enabled
    if needs_history:
        keyed = intervals.select("meter_id", rate.alias("rate_l"), order_key.alias("order_key"))
        median = _rolling_median(keyed.collect(engine="in-memory"), window, rules.spike_min_history)
        base = base.with_columns(median.alias("median_l"))
    # Runs of zero use: the last reading at which the register moved (a series' first reading counts).
    last_move = pl.when(pl.col("moving")).then(ts).forward_fill()
    continues = (pl.col("meter_id") == pl.col("meter_id").shift(-1)) & ~pl.col("moving").shift(-1)
    continues = (continues & pl.col("in_period").shift(-1)).fill_null(False)
    run_end = pl.col("in_period") & ~pl.col("moving") & ~continues
    if {"zero_use", "stuck_register"} & enabled:
        base = base.with_columns(last_move.alias("run_from"), run_end.alias("run_end"))
        if "stuck_register" in enabled:
            typical = pl.when(pl.col("moving")).then(pl.col("median_l").fill_null(-1.0)).forward_fill()
            base = base.with_columns(typical.alias("typical_l"))
    # A dozen rules read this frame: materialise it once rather than recompute it per rule.
    base = base.collect(engine="in-memory").lazy()
    parts: list[pl.LazyFrame] = []
    period = base.filter(pl.col("in_period"))
    if "negative_consumption" in enabled:
        parts.append(
            period.filter(pl.col("kind") == "negative").select(
                _flag("negative_consumption", prev_ts, ts, use, pl.lit(0), "m3")
            )
        )
    if "register_reset" in enabled:
        drop = pl.col("value_l") - pl.col("prev_value_l")
        parts.append(
            period.filter(pl.col("kind") == "reset").select(
                _flag("register_reset", prev_ts, ts, drop, pl.lit(-rules.register.negative_tolerance_l), "m3")
            )
        )
    if "rollover" in enabled:
        parts.append(
            period.filter(pl.col("kind") == "rollover").select(
                _flag("rollover", prev_ts, ts, use, pl.col("modulus_l"), "m3")
            )
        )
    if "spike" in enabled:
        # Candidates against the lowest threshold of any usage type (the factor that gives the lowest product
        # for the median's sign), then the exact test with the meter's own parameters.
        factors = _effective(rules, "spike_factor")
        floor = _least(rules, "spike_floor_l") if None not in _effective(rules, "spike_floor_l") else None
        low_factor = pl.when(pl.col("median_l") >= 0).then(pl.lit(min(factors))).otherwise(pl.lit(max(factors)))
        loose = pl.max_horizontal((pl.col("median_l") * low_factor).round(0), pl.lit(floor, dtype=pl.Float64))
        threshold = pl.max_horizontal(
            (pl.col("median_l") * pl.col("spike_factor")).round(0), pl.col("spike_floor_l").cast(pl.Float64)
        )
        candidates = period.filter(pl.col("median_l").is_not_null() & (pl.col("rate_l") > loose))
        parts.append(
            _with_params(candidates, params, "spike_factor", "spike_floor_l")
            .with_columns(threshold.alias("spike_threshold_l"))
            .filter(pl.col("rate_l") > pl.col("spike_threshold_l"))
            .select(_flag("spike", prev_ts, ts, pl.col("rate_l"), pl.col("spike_threshold_l"), "m3/day"))
        )
    run_us = (ts - pl.col("run_from")).dt.total_microseconds()
    if "zero_use" in enabled:
        ends = _with_params(period.filter(pl.col("run_end")), params, "occupied", "zero_use_us")
        parts.append(
            ends.filter(pl.col("occupied") & (run_us >= pl.col("zero_use_us"))).select(
                _flag(
                    "zero_use", pl.col("run_from"), ts, _days_milli(run_us), _days_milli(pl.col("zero_use_us")), "days"
                )
            )
        )
    if "stuck_register" in enabled:
        ends = _with_params(period.filter(pl.col("run_end")), params, "stuck_us", "stuck_typical_l")
        parts.append(
            ends.filter((run_us >= pl.col("stuck_us")) & (pl.col("typical_l") >= pl.col("stuck_typical_l"))).select(
                _flag(
                    "stuck_register",
                    pl.col("run_from"),
                    ts,
                    _days_milli(run_us),
                    _days_milli(pl.col("stuck_us")),
                    "days",
                )
            )
        )
    if "gap" in enabled:
        candidates = period.filter(pl.col("elapsed_us") > _least(rules, "max_gap_us"))
        parts.append(
            _with_params(candidates, params, "max_gap_us")
            .filter(pl.col("elapsed_us") > pl.col("max_gap_us"))
            .select(
                _flag(
                    "gap", prev_ts, ts, _hours_milli(pl.col("elapsed_us")), _hours_milli(pl.col("max_gap_us")), "hours"
                )
            )
        )
    if "future_timestamp" in enabled:
        tolerance_us = int(rules.future_tolerance_minutes * 60_000_000)
        ahead = (ts - pl.lit(now, dtype=TS)).dt.total_microseconds()
        parts.append(
            base.filter(ahead > tolerance_us).select(
                _flag(
                    "future_timestamp",
                    pl.lit(now),
                    ts,
                    _hours_milli(ahead),
                    _hours_milli(pl.lit(tolerance_us)),
                    "hours",
                )
            )
        )
    if "valve_closed_use" in enabled and valve_states is not None:
        valve_schema = valve_states.collect_schema()
        closed = valve_states.select(
            pl.col("meter_id").cast(pl.Int64),
            ts_utc("closed_from", valve_schema["closed_from"]).alias("closed_from"),
            ts_utc("closed_to", valve_schema["closed_to"]).alias("closed_to"),
        )
        inside = (prev_ts >= pl.col("closed_from")) & (pl.col("closed_to").is_null() | (ts <= pl.col("closed_to")))
        candidates = period.join(closed, on="meter_id", how="inner").filter(inside)
        parts.append(
            _with_params(candidates, params, "valve_tolerance_l")
            .filter(use > pl.col("valve_tolerance_l"))
            .select(_flag("valve_closed_use", prev_ts, ts, use, pl.col("valve_tolerance_l"), "m3"))
        )
    per_meter = _per_meter_rules(base, params, rules, start, end, until)
    if per_meter is not None:
        parts.append(per_meter)
    if "duplicate_conflict" in enabled:
        parts.append(_duplicate_flags(sorted_frame, keys))
    return _finish(parts, rules)


def _per_meter_rules(
    base: pl.LazyFrame, params: pl.LazyFrame, rules: RuleSet, start: datetime, end: datetime, until: datetime
) -> pl.LazyFrame | None:
    """High/low limits on the period's use and the open gap since each meter's last reading."""
    wanted = {"high_limit", "low_limit", "gap"} & rules.enabled
    if not wanted:
        return None
    ts = pl.col("ts")
    totals = base.group_by("meter_id").agg(
        pl.col("use_l").filter(pl.col("in_period")).sum().alias("period_l"),
        pl.col("in_period").any().alias("read_in_period"),
        ts.filter(ts <= until).max().alias("last_ts"),
    )
    meters = params.select("meter_id", "high_l", "low_l", "max_gap_us").join(totals, on="meter_id", how="left")
    parts = []
    period_from, period_to = pl.lit(start, dtype=TS), pl.lit(end, dtype=TS)
    if "high_limit" in wanted:
        parts.append(
            meters.filter(pl.col("period_l") > pl.col("high_l")).select(
                _flag("high_limit", period_from, period_to, pl.col("period_l"), pl.col("high_l"), "m3")
            )
        )
    if "low_limit" in wanted:
        parts.append(
            meters.filter(pl.col("read_in_period") & (pl.col("period_l") < pl.col("low_l"))).select(
                _flag("low_limit", period_from, period_to, pl.col("period_l"), pl.col("low_l"), "m3")
            )
        )
    if "gap" in wanted:
        since = pl.coalesce(pl.col("last_ts"), period_from)
        open_us = (pl.lit(until, dtype=TS) - since).dt.total_microseconds()
        parts.append(
            meters.filter(open_us > pl.col("max_gap_us")).select(
                _flag("gap", since, pl.lit(until), _hours_milli(open_us), _hours_milli(pl.col("max_gap_us")), "hours")
            )
        )
    return pl.concat(parts)


def _duplicate_flags(sorted_frame: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """(meter, ts) delivered with different values: observed = max - min value, threshold 0."""
    spread = pl.col("max_l") - pl.col("min_l")
    conflicts = conflicts_litres(sorted_frame, keys)
    return conflicts.select(_flag("duplicate_conflict", pl.col("ts"), pl.col("ts"), spread, pl.lit(0), "m3"))


def _finish(parts: list[pl.LazyFrame], rules: RuleSet) -> pl.LazyFrame:
    if not parts:
        return pl.LazyFrame(schema=FLAG_SCHEMA)
    severity = pl.col("rule_id").replace_strict(
        {rule_id: rules.severity_of(rule_id) for rule_id in RULE_IDS}, return_dtype=pl.String
    )
    return (
        pl.concat(parts, how="vertical_relaxed")
        .select(
            "meter_id",
            "rule_id",
            severity.alias("severity"),
            "ts_from",
            "ts_to",
            (pl.col("observed_milli").cast(pl.Decimal(38, 3)) / 1000).alias("observed"),
            (pl.col("threshold_milli").cast(pl.Decimal(38, 3)) / 1000).alias("threshold"),
            "unit",
            pl.lit(rules.rule_set_version).alias("rule_set_version"),
        )
        .sort("meter_id", "rule_id", "ts_to")
    )


def rejected_readings(flags: pl.LazyFrame, *, severity: str = "error") -> pl.LazyFrame:
    """Readings (meter_id, ts) closing an interval flagged at `severity`: candidates for estimation."""
    return flags.filter(pl.col("severity") == severity).select("meter_id", pl.col("ts_to").alias("ts")).unique()
