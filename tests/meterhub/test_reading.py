"""The telemetry table: accepts every month, stores each (meter, channel, ts) once, refuses loudly."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from meterhub.store import Store
from tests.meterhub.factories import make_meter


def copy_readings(conn: psycopg.Connection, rows: list[tuple]) -> None:
    with conn.cursor().copy("COPY reading (meter_id, channel, ts, value, source) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def partition_of(store: Store) -> dict[str, int]:
    with store.connection() as conn:
        rows = conn.execute("SELECT tableoid::regclass::text, count(*) FROM reading GROUP BY 1").fetchall()
    return dict(rows)


def test_rows_across_months_and_years_are_all_accepted(store: Store) -> None:
    with store.transaction() as conn:
        meter = make_meter(conn)["meter"]
    now = datetime.now(UTC)
    stamps = [
        datetime(2019, 3, 31, 23, 59, 59, tzinfo=UTC),  # years before any partition
        now - timedelta(days=40),
        now - timedelta(days=1),
        now,
        now + timedelta(days=35),
        datetime(2035, 1, 1, tzinfo=UTC),  # far ahead
    ]
    with store.transaction() as conn:
        copy_readings(conn, [(meter, "volume_m3", ts, Decimal(i), "test") for i, ts in enumerate(stamps)])
    assert sum(partition_of(store).values()) == len(stamps)
    assert partition_of(store)["reading_default"] == 2  # 2019 and 2035 had no partition yet

    result = store.maintain(now=now)  # gives the orphan months partitions of their own
    assert result["partitions_created"] >= 2
    parts = partition_of(store)
    assert "reading_default" not in parts
    assert parts["reading_p201903"] == 1 and parts["reading_p203501"] == 1
    assert sum(parts.values()) == len(stamps)
    with store.connection() as conn:
        assert conn.execute("SELECT count(*) FROM meterhub_orphan_reading_months()").fetchone() == (0,)


def test_partitions_are_made_ahead_and_maintenance_is_repeatable(store: Store) -> None:
    now = datetime(2026, 11, 27, tzinfo=UTC)
    store.maintain(now=now)
    assert store.maintain(now=now)["partitions_created"] == 0
    with store.connection() as conn:
        names = {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'reading'::regclass"
            ).fetchall()
        }
    assert {"reading_p202611", "reading_p202612", "reading_p202701", "reading_p202702"} <= names


def test_a_redelivered_reading_is_stored_once(store: Store) -> None:
    with store.transaction() as conn:
        meter = make_meter(conn)["meter"]
    ts = datetime(2026, 11, 1, 8, tzinfo=UTC)
    for _ in range(3):
        with store.transaction() as conn:
            conn.execute(
                "INSERT INTO reading (meter_id, channel, ts, value) VALUES (%s, 'volume_m3', %s, 12.345) "
                "ON CONFLICT (meter_id, channel, ts) DO NOTHING",
                [meter, ts],
            )
    with store.connection() as conn:
        assert conn.execute("SELECT count(*), sum(value) FROM reading").fetchone() == (1, Decimal("12.345"))


def test_readings_are_exact(store: Store) -> None:
    with store.transaction() as conn:
        meter = make_meter(conn)["meter"]
        value = Decimal("12345678.901234")
        conn.execute(
            "INSERT INTO reading (meter_id, channel, ts, value) VALUES (%s, 'volume_m3', now(), %s)", [meter, value]
        )
        assert conn.execute("SELECT value FROM reading").fetchone() == (value,)


def test_an_invalid_row_is_refused_with_an_error_not_dropped(store: Store) -> None:
    with pytest.raises(psycopg.errors.CheckViolation), store.transaction() as conn:
        conn.execute(
            "INSERT INTO reading (meter_id, channel, ts, value, quality) VALUES (1, 'volume_m3', now(), 1, 'made-up')"
        )
    with pytest.raises(psycopg.errors.NotNullViolation), store.transaction() as conn:
        conn.execute("INSERT INTO reading (meter_id, channel, ts, value) VALUES (1, 'volume_m3', now(), NULL)")


def test_daily_consumption_in_local_days(store: Store) -> None:
    with store.transaction() as conn:
        meter = make_meter(conn)["meter"]
    # Asia/Shanghai is UTC+8: 2026-11-01 23:00 local is 15:00 UTC, 2026-11-02 00:30 local is 16:30 UTC.
    rows = [
        ("2026-11-01T01:00:00+08:00", "100.000"),
        ("2026-11-01T23:00:00+08:00", "101.250"),
        ("2026-11-02T00:30:00+08:00", "101.300"),
        ("2026-11-02T20:00:00+08:00", "102.800"),
        ("2026-11-04T09:00:00+08:00", "104.000"),  # nothing on the 3rd
    ]
    with store.transaction() as conn:
        copy_readings(conn, [(meter, "volume_m3", datetime.fromisoformat(ts), Decimal(v), "t") for ts, v in rows])
        copy_readings(conn, [(meter, "battery_v", datetime.fromisoformat(rows[0][0]), Decimal("3.6"), "t")])
    store.maintain()
    with store.connection() as conn:
        days = conn.execute(
            "SELECT day::text, consumption_m3, register_m3, readings FROM daily_consumption "
            "WHERE meter_id = %s ORDER BY day",
            [meter],
        ).fetchall()
    assert days == [
        ("2026-11-01", Decimal("1.250"), Decimal("101.250"), 2),  # 101.250 - 100.000 (first day: own first)
        ("2026-11-02", Decimal("1.550"), Decimal("102.800"), 2),  # 102.800 - 101.250
        ("2026-11-04", Decimal("1.200"), Decimal("104.000"), 1),  # 104.000 - 102.800, since the last day with data
    ]
