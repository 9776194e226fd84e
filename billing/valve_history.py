"""When each meter's valve was closed: the feed of the `valve_closed_use` validation rule.

There is no valve history table; the changes are put together from what the store keeps:

- `meter_event` rows of kind `valve_state`: the state the meter reported, `detail.valve` (`open`, `closed`,
  `armed`, `abnormal`, `unknown`; the native JSON and mapped drivers put it there), at the event's `ts`;
- executed valve commands in `meter_command`: `valve_close` → closed, `valve_open` → open (an armed valve
  counts as open: the customer may restore supply on site), `confirmed` at `finished_at`, or `reconciled` as
  `executed` — then the valve moved between sending and reconciling, so a close counts from `finished_at`
  and an open from `sent_at` (whichever keeps the closed interval the shorter);
- `meter_state.valve_reported` at `valve_reported_at`: the last state the meter reported.

A closed interval runs from a change to `closed` until the next change to any other state (an `abnormal` or
`unknown` report ends it too: the rule flags only use while the valve is known to be closed); `closed_to` is
null while the valve is still closed. At one instant, what the meter reported wins over a command.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import polars as pl
import psycopg
from psycopg import sql

from billing.consumption import TS, ts_utc, utc

CLOSED = "closed"
# Order of the sources at one instant: the later one gives the state after it.
COMMAND, EVENT, REPORTED = 0, 1, 2
CHANGE_SCHEMA = pl.Schema({"meter_id": pl.Int64(), "ts": TS, "state": pl.String(), "source": pl.Int8()})

_CHANGES = """
WITH changes AS (
    SELECT meter_id, ts, detail ->> 'valve' AS state, {event}::int2 AS source
      FROM meter_event
     WHERE kind = 'valve_state' AND detail ->> 'valve' IS NOT NULL AND ts <= {until}
    UNION ALL
    SELECT meter_id,
           CASE WHEN state = 'reconciled' AND kind = 'valve_open' THEN coalesce(sent_at, finished_at)
                ELSE finished_at END,
           CASE kind WHEN 'valve_close' THEN 'closed' ELSE 'open' END,
           {command}::int2
      FROM meter_command
     WHERE kind IN ('valve_close', 'valve_open') AND finished_at IS NOT NULL AND finished_at <= {until}
       AND (state = 'confirmed' OR (state = 'reconciled' AND reason_code = 'executed'))
    UNION ALL
    SELECT meter_id, valve_reported_at, valve_reported, {reported}::int2
      FROM meter_state
     WHERE valve_reported IS NOT NULL AND valve_reported_at IS NOT NULL AND valve_reported_at <= {until}
),
kept AS (
    SELECT meter_id, ts, state, source
      FROM (SELECT c.*, max(ts) FILTER (WHERE ts <= {since}) OVER (PARTITION BY meter_id) AS last_before
              FROM changes c) x
     WHERE ts > {since} OR ts = last_before
)
SELECT meter_id, ts, state, source
  FROM (SELECT k.*, bool_or(state = 'closed') OVER (PARTITION BY meter_id) AS ever_closed FROM kept k) y
 WHERE ever_closed
"""


def load_valve_changes(conn: psycopg.Connection[Any], since: datetime, until: datetime) -> pl.DataFrame:
    """Valve state changes with `ts <= until`: every one after `since`, and before it only the latest of each
    meter (the state the meter was in at `since`); only of meters closed at some time in there (a fleet's
    open valves reported every day stay on the server). Columns: see `CHANGE_SCHEMA`."""
    query = sql.SQL(_CHANGES).format(
        since=sql.Literal(since),
        until=sql.Literal(until),
        event=sql.Literal(EVENT),
        command=sql.Literal(COMMAND),
        reported=sql.Literal(REPORTED),
    )
    rows = conn.execute(query).fetchall()
    return pl.DataFrame(rows, schema=CHANGE_SCHEMA, orient="row")


def closed_intervals(changes: pl.LazyFrame) -> pl.LazyFrame:
    """Closed intervals from valve state changes (`meter_id, ts, state`, optional `source`): `meter_id,
    closed_from, closed_to` (null while still closed), sorted by meter and time."""
    schema = changes.collect_schema()
    source = pl.col("source").cast(pl.Int8) if "source" in schema else pl.lit(EVENT, dtype=pl.Int8)
    frame = changes.select(
        pl.col("meter_id").cast(pl.Int64),
        ts_utc("ts", schema["ts"]).alias("ts"),
        (pl.col("state") == CLOSED).fill_null(False).alias("closed"),
        source.alias("source"),
    ).sort("meter_id", "ts", "source")
    first = pl.col("meter_id") != pl.col("meter_id").shift(1)
    changed = first.fill_null(True) | (pl.col("closed") != pl.col("closed").shift(1))
    transitions = frame.filter(changed)
    next_ts = pl.when(pl.col("meter_id") == pl.col("meter_id").shift(-1)).then(pl.col("ts").shift(-1))
    return (
        transitions.with_columns(next_ts.alias("closed_to"))
        .filter(pl.col("closed"))
        .select("meter_id", pl.col("ts").alias("closed_from"), pl.col("closed_to"))
    )


def load_closed_intervals(conn: psycopg.Connection[Any], since: datetime, until: datetime) -> pl.DataFrame:
    """The closed intervals in force at some time in (since, until] (see `closed_intervals`)."""
    intervals = closed_intervals(load_valve_changes(conn, since, until).lazy())
    return intervals.filter(
        pl.col("closed_to").is_null() | (pl.col("closed_to") > pl.lit(utc(since), dtype=TS))
    ).collect()
