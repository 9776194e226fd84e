"""Moving readings and master data between PostgreSQL and polars, in bulk.

Readings leave the server by binary `COPY ... TO STDOUT`, packed as fixed-width int8 records (meter id,
time in microseconds, register in integer litres — converted exactly on the server) in one bytea per block
of meters, parsed with numpy without a Python object per row. Smaller frames travel as CSV. Frames go back
by `COPY ... FROM STDIN` (CSV).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl
import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from billing.consumption import TS, VOLUME_CHANNEL
from meterhub.store import Store

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 UTC, the origin of binary timestamptz
_BINARY_HEADER = 19  # signature (11) + flags (4) + extension length (4)
DEFAULT_REGISTER_MAX = "99999.999"


@dataclass(frozen=True)
class Period:
    """A reading period: local days [start, end) and the same bounds as UTC instants."""

    period: str
    start: date
    end: date
    start_ts: datetime
    end_ts: datetime


def parse_period(period: str) -> tuple[int, int]:
    """'YYYY-MM' as (year, month); ValueError otherwise."""
    try:
        year_text, month_text = period.split("-")
        year, month = int(year_text), int(month_text)
    except ValueError:
        raise ValueError(f"period must be YYYY-MM, got {period!r}") from None
    if len(year_text) != 4 or len(month_text) != 2 or not 1 <= month <= 12:
        raise ValueError(f"period must be YYYY-MM, got {period!r}")
    return year, month


def calendar_month(period: str) -> tuple[date, date]:
    year, month = parse_period(period)
    end = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return date(year, month, 1), end


def local_midnight(day: date, tz: str) -> datetime:
    return datetime.combine(day, time(0), ZoneInfo(tz))


def ensure_period(conn: psycopg.Connection[Any], period: str, tz: str) -> Period:
    """The reading period, created as the calendar month when it does not exist yet."""
    start, end = calendar_month(period)
    conn.execute(
        "INSERT INTO reading_period (period, period_start, period_end) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        [period, start, end],
    )
    row = conn.execute("SELECT period_start, period_end FROM reading_period WHERE period = %s", [period]).fetchone()
    assert row is not None
    start_ts, end_ts = (local_midnight(d, tz).astimezone(UTC) for d in (row[0], row[1]))
    return Period(period, row[0], row[1], start_ts, end_ts)


# -- reading out ---------------------------------------------------------------------------------------------------


def copy_records(conn: psycopg.Connection[Any], query: sql.Composable, names: Sequence[str]) -> pl.DataFrame:
    """Run `query` returning one bytea column of packed big-endian int8 records (`names` per record) through
    binary COPY into an Int64 frame."""
    payloads: list[memoryview] = []
    first = True
    with conn.cursor().copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query)) as copy:
        for chunk in copy:
            data = memoryview(bytes(chunk))  # slices of a view are not copies: the join below is the only one
            start = _BINARY_HEADER if first else 0  # the header comes with the first message
            first = False
            if len(data) - start < 6 or data[start : start + 2] == b"\xff\xff":
                continue  # the trailer
            length = int.from_bytes(data[start + 2 : start + 6], "big", signed=True)
            if length > 0:
                payloads.append(data[start + 6 : start + 6 + length])
    dtype = np.dtype([(name, ">i8") for name in names])
    blob = b"".join(payloads)
    if len(blob) % dtype.itemsize:
        raise ValueError("unexpected packed record layout")
    rows = np.frombuffer(blob, dtype=dtype)
    return pl.DataFrame({name: rows[name].astype(np.int64) for name in names})


def copy_csv(conn: psycopg.Connection[Any], query: sql.Composable, **read_options: Any) -> pl.DataFrame:
    """Run `query` through CSV COPY into a frame (for frames of up to a few million small rows)."""
    buffer = io.BytesIO()
    with conn.cursor().copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT CSV, HEADER)").format(query)) as copy:
        for chunk in copy:
            buffer.write(chunk)
    if buffer.tell() == 0:
        return pl.DataFrame()
    buffer.seek(0)
    return pl.read_csv(buffer, **read_options)


def _ts_from_pg(column: str) -> pl.Expr:
    return (pl.col(column) + PG_EPOCH_US).cast(TS)


def _split(conn: psycopg.Connection[Any], workers: int) -> list[sql.Composable]:
    """Conditions that split `reading` into `workers` disjoint parts of about equal size (one when it cannot)."""
    row = conn.execute(
        """SELECT c.relkind = 'p',
                  (SELECT max(pg_relation_size(i.inhrelid)) FROM pg_inherits i WHERE i.inhparent = c.oid)
                      / current_setting('block_size')::int8,
                  (SELECT min(id) FROM meter), (SELECT max(id) FROM meter)
             FROM pg_class c WHERE c.oid = 'reading'::regclass"""
    ).fetchone()
    partitioned, pages, low, high = row if row else (False, None, None, None)
    if partitioned and pages and pages >= workers:
        # The same page numbers cut every partition: the largest is split evenly, and rows appended meanwhile
        # land in the last, open-ended part.
        cuts = [pages * i // workers for i in range(1, workers)]
        bounds = [None, *cuts, None]
        parts: list[sql.Composable] = []
        for lo, hi in pairwise(bounds):
            conditions = []
            if lo is not None:
                conditions.append(sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({lo},0)")))
            if hi is not None:
                conditions.append(sql.SQL("ctid < {}::tid").format(sql.Literal(f"({hi},0)")))
            parts.append(sql.SQL(" AND ").join(conditions))
        return parts
    if low is not None and high is not None and high > low:
        step = (high - low) // workers + 1
        return [
            sql.SQL("meter_id >= {} AND meter_id < {}").format(
                sql.Literal(low + i * step), sql.Literal(low + (i + 1) * step)
            )
            for i in range(workers)
        ]
    return [sql.SQL("true")]


def load_readings(
    store: Store,
    since: datetime,
    until: datetime,
    *,
    meter_ids: Sequence[int] | None = None,
    workers: int = 2,
) -> pl.DataFrame:
    """Volume readings with `since < ts <= until` (not the meter's own estimates): `meter_id, ts, value_l`.

    With `workers` > 1 the rows are split over that many connections, read in parallel: by page ranges of
    each partition on native partitioning (every worker scans only its share of the table), by meter id
    range otherwise (a TimescaleDB hypertable, whose compressed chunks have no page ranges to split by).
    """
    where = sql.SQL("channel = {} AND ts > {} AND ts <= {} AND quality <> 'estimated'").format(
        sql.Literal(VOLUME_CHANNEL), sql.Literal(since), sql.Literal(until)
    )
    if meter_ids is not None:
        where = sql.SQL("{} AND meter_id = ANY({})").format(where, sql.Literal(list(meter_ids)))
        workers = 1
    ranges: list[sql.Composable] = [sql.SQL("true")]
    if workers > 1:
        with store.connection() as conn:
            ranges = _split(conn, workers)

    def one(extra: sql.Composable) -> pl.DataFrame:
        # One COPY message per row costs more in Python than the rows themselves: the server packs
        # fixed-width records (meter id, ts as µs since 2000, litres; big-endian int8) into one bytea
        # per block of meters instead.
        query = sql.SQL(
            "SELECT string_agg(int8send(meter_id) || timestamptz_send(ts) || int8send((value * 1000)::int8),"
            " ''::bytea) FROM reading WHERE {} AND {} GROUP BY meter_id / 512"
        ).format(where, extra)
        with store.connection() as conn:
            conn.execute("SET work_mem = '256MB'")
            try:
                return copy_records(conn, query, ["meter_id", "ts", "value_l"])
            finally:
                conn.execute("RESET work_mem")

    if len(ranges) == 1:
        parts = [one(ranges[0])]
    else:
        with ThreadPoolExecutor(len(ranges)) as pool:
            parts = list(pool.map(one, ranges))
    frame = (
        pl.concat(parts) if parts else pl.DataFrame(schema={"meter_id": pl.Int64, "ts": pl.Int64, "value_l": pl.Int64})
    )
    return frame.with_columns(_ts_from_pg("ts").alias("ts"))


def load_manual_readings(
    conn: psycopg.Connection[Any], since: datetime, until: datetime, meter_ids: Sequence[int] | None = None
) -> pl.DataFrame:
    """Manual readings with `since < ts <= until`: `meter_id, ts, value_l, received_at` (when entered)."""
    where = sql.SQL("ts > {} AND ts <= {}").format(sql.Literal(since), sql.Literal(until))
    if meter_ids is not None:
        where = sql.SQL("{} AND meter_id = ANY({})").format(where, sql.Literal(list(meter_ids)))
    rows = conn.execute(
        sql.SQL(
            "SELECT meter_id, ts, (value * 1000)::int8, entered_at FROM manual_reading WHERE {} ORDER BY id"
        ).format(where)
    ).fetchall()
    return pl.DataFrame(
        rows,
        schema={"meter_id": pl.Int64, "ts": TS, "value_l": pl.Int64, "received_at": TS},
        orient="row",
    )


def load_meters(conn: psycopg.Connection[Any]) -> pl.DataFrame:
    """Meters with an account: `meter_id, register_max` (m3), `usage_type`, `occupied` (account active)."""
    query = sql.SQL(
        """SELECT m.id AS meter_id,
                  coalesce(m.register_max, mm.register_max, {})::text AS register_max,
                  ut.code AS usage_type,
                  CASE WHEN coalesce(a.status = 'active', true) THEN 'true' ELSE 'false' END AS occupied
             FROM meter m
             LEFT JOIN meter_model mm ON mm.id = m.model_id
             LEFT JOIN usage_type ut ON ut.id = m.usage_type_id
             LEFT JOIN account a ON a.id = m.account_id
            WHERE m.account_id IS NOT NULL
               OR EXISTS (SELECT 1 FROM meter_assignment x WHERE x.meter_id = m.id)"""
    ).format(sql.Literal(DEFAULT_REGISTER_MAX))
    schema = pl.Schema(
        {"meter_id": pl.Int64(), "register_max": pl.Decimal(14, 3), "usage_type": pl.String(), "occupied": pl.Boolean()}
    )
    frame = copy_csv(conn, query, schema_overrides=schema)
    return frame if frame.width else pl.DataFrame(schema=schema)


def load_assignments(conn: psycopg.Connection[Any], period: Period, tz: str) -> pl.DataFrame:
    """Meter assignments overlapping the period: `account_id, meter_id, valid_from, valid_to, first_value,
    final_value, explicit` — recorded ones (replacements) and the implicit one of each meter with an account
    and no record (since its install date, or always)."""
    query = sql.SQL(
        """SELECT account_id, meter_id, (extract(epoch FROM valid_from) * 1000000)::int8 AS valid_from,
                  (extract(epoch FROM valid_to) * 1000000)::int8 AS valid_to,
                  first_value::text AS first_value, final_value::text AS final_value, explicit
             FROM (SELECT account_id, meter_id, valid_from, valid_to, first_value, final_value, 'true' AS explicit
                     FROM meter_assignment
                    WHERE valid_from < {end} AND (valid_to IS NULL OR valid_to > {start})
                   UNION ALL
                   SELECT m.account_id, m.id,
                          CASE WHEN m.install_date IS NULL THEN '1970-01-01'::timestamptz
                               ELSE (m.install_date::timestamp AT TIME ZONE {tz}) END,
                          NULL, CASE WHEN m.install_date IS NOT NULL THEN m.initial_reading END, NULL, 'false'
                     FROM meter m
                    WHERE m.account_id IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM meter_assignment x WHERE x.meter_id = m.id)) a"""
    ).format(start=sql.Literal(period.start_ts), end=sql.Literal(period.end_ts), tz=sql.Literal(tz))
    schema = pl.Schema(
        {
            "account_id": pl.Int64(),
            "meter_id": pl.Int64(),
            "valid_from": pl.Int64(),
            "valid_to": pl.Int64(),
            "first_value": pl.Decimal(14, 3),
            "final_value": pl.Decimal(14, 3),
            "explicit": pl.Boolean(),
        }
    )
    frame = copy_csv(conn, query, schema_overrides=schema)
    if not frame.width:
        frame = pl.DataFrame(schema=schema)
    return frame.with_columns(pl.col("valid_from").cast(TS), pl.col("valid_to").cast(TS))


# -- writing back --------------------------------------------------------------------------------------------------


def copy_frame(conn: psycopg.Connection[Any], table: str, frame: pl.DataFrame) -> int:
    """Append `frame` to `table` (columns by name) through CSV COPY; returns the row count."""
    if frame.height == 0:
        return 0
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT CSV)").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in frame.columns)
    )
    # Bounded memory for the CSV text of very large frames; a writer thread sends each chunk while the next one
    # is formatted, so that formatting overlaps with the server parsing.
    step = 100_000
    cursor = conn.cursor()
    with cursor.copy(statement, writer=QueuedLibpqWriter(cursor)) as copy:
        for offset in range(0, frame.height, step):
            copy.write(frame.slice(offset, step).write_csv(include_header=False))
    return frame.height
