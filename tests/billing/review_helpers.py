"""A small hand-made utility for the reading review tests: period 2024-01 in Asia/Shanghai.

Accounts (factories.make_meter numbering):
- 1: meter M00000001 (register 9999.999) reads 9960 + 1/day from 2023-12-01, rolls over on 2024-01-10 and is
  replaced on 2024-01-15 12:00 (final 5.500) by M00000011 (first 0, 1.000 at 01-16, then +2/day):
  January = 14.500 (old meter, through the rollover) + 33.000 (new meter) = 47.500.
- 2: M00000002 reads 100 + 0.5/day: January = 15.500, no flags.
- 3: M00000003 reads 200 + 0.5/day with a jump of 30 on 2024-01-20: January = 45.500, a spike.
- 4: M00000004 reads 300 + 1/day until 2023-12-20, then nothing: no reading in January.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from billing.reading_books import replace_meter
from meterhub.store import Store
from tests.meterhub.factories import make_meter

TZ = ZoneInfo("Asia/Shanghai")
PERIOD = "2024-01"
NOW = datetime(2024, 2, 5, tzinfo=TZ)


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=TZ)


def days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def insert_readings(conn: psycopg.Connection[Any], meter_id: int, rows: list[tuple[datetime, Decimal]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO reading (meter_id, channel, ts, value, source) VALUES (%s, 'volume_m3', %s, %s, 'test')",
            [(meter_id, ts, value) for ts, value in rows],
        )


def build_utility(store: Store) -> dict[str, Any]:
    """Create the accounts above; returns ids by name."""
    ids: dict[str, Any] = {}
    with store.transaction(actor="setup") as conn:
        conn.execute("SELECT meterhub_ensure_reading_partitions('2023-11-01', '2024-03-01')")
        for n in (1, 2, 3, 4):
            made = make_meter(conn, n)
            ids[f"account{n}"] = made["account"]
            ids[f"meter{n}"] = made["meter"]
        conn.execute("UPDATE meter SET register_max = 9999.999 WHERE id = %s", [ids["meter1"]])
        new = conn.execute(
            "INSERT INTO meter (meter_no, driver_key, status, register_max) VALUES ('M00000011', 'native_json', "
            "'in_stock', 9999.999) RETURNING id"
        ).fetchone()
        assert new is not None
        ids["meter11"] = new[0]
        old = [
            (midnight(d), Decimal(9960 + i) % 10000) for i, d in enumerate(days(date(2023, 12, 1), date(2024, 1, 15)))
        ]
        insert_readings(conn, ids["meter1"], old)
        insert_readings(
            conn,
            ids["meter11"],
            [(midnight(d), Decimal(1 + 2 * i)) for i, d in enumerate(days(date(2024, 1, 16), date(2024, 2, 1)))],
        )
        base = days(date(2023, 12, 1), date(2024, 2, 1))
        insert_readings(
            conn, ids["meter2"], [(midnight(d), Decimal(100) + Decimal("0.5") * i) for i, d in enumerate(base)]
        )
        jump = [Decimal(200) + Decimal("0.5") * i + (30 if d >= date(2024, 1, 20) else 0) for i, d in enumerate(base)]
        insert_readings(conn, ids["meter3"], list(zip([midnight(d) for d in base], jump, strict=True)))
        insert_readings(
            conn,
            ids["meter4"],
            [(midnight(d), Decimal(300 + i)) for i, d in enumerate(days(date(2023, 12, 1), date(2023, 12, 20)))],
        )
    replace_meter(
        store,
        ids["account1"],
        "M00000001",
        "M00000011",
        datetime(2024, 1, 15, 12, tzinfo=TZ),
        actor="fitter",
        old_final_value=Decimal("5.500"),
        new_first_value=Decimal("0.000"),
    )
    return ids


def review_ids(store: Store, period: str = PERIOD) -> dict[str, int]:
    """Queue row id by meter number."""
    with store.connection() as conn:
        rows = conn.execute(
            "SELECT m.meter_no, r.id FROM reading_review r JOIN meter m ON m.id = r.meter_id WHERE r.period = %s",
            [period],
        ).fetchall()
    return {r[0]: r[1] for r in rows}


def approved(store: Store, period: str = PERIOD) -> dict[str, tuple[Decimal, str, int]]:
    """approved_consumption by meter number: (consumption, kind, version)."""
    with store.connection() as conn:
        rows = conn.execute(
            """SELECT m.meter_no, v.consumption_m3, v.kind, v.version FROM approved_consumption v
                 JOIN meter m ON m.id = v.meter_id WHERE v.period = %s""",
            [period],
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}
