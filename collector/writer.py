"""Writes a batch in one transaction: readings by binary COPY, duplicates absorbed by the unique key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from collector.batch import Batch
from meterhub.store import Store

READING_COLUMNS = "meter_id, channel, ts, value, quality, source, received_at"
READING_TYPES = ["bigint", "text", "timestamptz", "numeric", "text", "text", "timestamptz"]
REJECTED_COLUMNS = "received_at, source, topic, driver_key, meter_no, raw, reason, detail"
REJECTED_TYPES = ["timestamptz", "text", "text", "text", "text", "bytea", "text", "text"]


@dataclass(frozen=True)
class WriteResult:
    readings_stored: int
    readings_duplicate: int
    events_stored: int


def write_batch(store: Store, batch: Batch) -> WriteResult:
    """All of the batch or nothing. Raises psycopg errors; the caller retries the same batch."""
    with store.transaction(actor="collector") as conn:
        stored = _copy_readings(conn, batch.readings) if batch.readings else 0
        events = _insert_events(conn, batch.events) if batch.events else 0
        if batch.rejected:
            with conn.cursor().copy(f"COPY rejected_frame ({REJECTED_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(REJECTED_TYPES)
                for row in batch.rejected:
                    copy.write_row(row)
        if batch.states:
            _update_states(conn, batch)
        if batch.replies:
            from collector.commands import record_replies

            record_replies(conn, batch.replies)
    return WriteResult(stored, len(batch.readings) - stored, events)


def _copy_readings(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> int:
    """COPY straight into `reading`; when a row is already there (a re-delivery), redo the batch
    through a staging table with ON CONFLICT DO NOTHING. Returns the rows that are new."""
    try:
        with conn.transaction():  # a savepoint: a duplicate aborts only this attempt
            _copy(conn, "reading", rows)
        return len(rows)
    except psycopg.errors.UniqueViolation:
        pass
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS ingest_reading (LIKE reading INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    _copy(conn, "ingest_reading", rows)
    cursor = conn.execute(
        f"INSERT INTO reading ({READING_COLUMNS}) SELECT {READING_COLUMNS} FROM ingest_reading "
        "ON CONFLICT (meter_id, channel, ts) DO NOTHING"
    )
    return max(cursor.rowcount, 0)


def _copy(conn: psycopg.Connection[Any], table: str, rows: list[tuple[Any, ...]]) -> None:
    with conn.cursor().copy(f"COPY {table} ({READING_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(READING_TYPES)
        for row in rows:
            copy.write_row(row)


def _insert_events(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> int:
    stored = 0
    with conn.cursor() as cursor:
        for meter_id, ts, kind, severity, detail, source, received_at in rows:
            cursor.execute(
                """INSERT INTO meter_event (meter_id, ts, kind, severity, detail, source, received_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (meter_id, kind, ts) DO NOTHING""",
                [meter_id, ts, kind, severity, Jsonb(detail, dumps=_dumps), source, received_at],
            )
            stored += max(cursor.rowcount, 0)
    return stored


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str)


STATE_COLUMNS = (
    "meter_id, last_seen_at, last_reading_at, last_volume_m3, valve_reported, valve_reported_at, battery_v, rssi_dbm"
)
STATE_TYPES = ["bigint", "timestamptz", "timestamptz", "numeric", "text", "timestamptz", "numeric", "int2"]


def _update_states(conn: psycopg.Connection[Any], batch: Batch) -> None:
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS ingest_state (LIKE meter_state) ON COMMIT DELETE ROWS")
    with conn.cursor().copy(f"COPY ingest_state ({STATE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(STATE_TYPES)
        for meter_id in sorted(batch.states):
            copy.write_row(batch.states[meter_id].row(meter_id))
    with conn.cursor() as cursor:
        # Ordered by meter so that concurrent collectors lock rows in the same order.
        cursor.execute(
            f"""INSERT INTO meter_state AS s ({STATE_COLUMNS})
               SELECT {STATE_COLUMNS} FROM ingest_state ORDER BY meter_id
               ON CONFLICT (meter_id) DO UPDATE SET
                 last_seen_at = greatest(s.last_seen_at, EXCLUDED.last_seen_at),
                 last_reading_at = CASE WHEN EXCLUDED.last_reading_at > s.last_reading_at
                                         OR s.last_reading_at IS NULL
                                        THEN EXCLUDED.last_reading_at ELSE s.last_reading_at END,
                 last_volume_m3 = CASE WHEN EXCLUDED.last_reading_at > s.last_reading_at
                                        OR s.last_reading_at IS NULL
                                       THEN coalesce(EXCLUDED.last_volume_m3, s.last_volume_m3)
                                       ELSE s.last_volume_m3 END,
                 valve_reported = CASE WHEN EXCLUDED.valve_reported_at >= s.valve_reported_at
                                         OR s.valve_reported_at IS NULL
                                        THEN coalesce(EXCLUDED.valve_reported, s.valve_reported)
                                        ELSE s.valve_reported END,
                 valve_reported_at = greatest(s.valve_reported_at, EXCLUDED.valve_reported_at),
                 battery_v = coalesce(EXCLUDED.battery_v, s.battery_v),
                 rssi_dbm = coalesce(EXCLUDED.rssi_dbm, s.rssi_dbm)"""
        )
        # A reported valve change updates the meter itself, and so its change history. The newest report
        # wins; an armed valve still reports closed until the customer opens it on site.
        changed = [m for m, s in batch.states.items() if s.valve is not None]
        if changed:
            cursor.execute(
                """UPDATE meter m SET valve_state = s.valve_reported
                     FROM meter_state s
                    WHERE s.meter_id = m.id AND m.id = ANY(%s)
                      AND m.valve_state IS DISTINCT FROM s.valve_reported
                      AND NOT (m.valve_state = 'armed' AND s.valve_reported = 'closed')""",
                [sorted(changed)],
            )
