"""Closed-valve intervals from events, executed commands and reported state, and the valve_closed_use rule
fed from the store through validate_period."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import polars as pl
import psycopg
from psycopg.types.json import Jsonb

from billing.review_run import validate_period
from billing.valve_history import closed_intervals, load_closed_intervals, load_valve_changes
from meterhub.commands import audit
from meterhub.store import Store
from tests.billing.helpers import day
from tests.billing.review_helpers import NOW, PERIOD, days, insert_readings, midnight
from tests.meterhub.factories import make_meter

TS = pl.Datetime("us", "UTC")


def intervals(rows: list[tuple[int, datetime, str]]) -> list[tuple[Any, ...]]:
    changes = pl.LazyFrame(
        {"meter_id": [r[0] for r in rows], "ts": [r[1] for r in rows], "state": [r[2] for r in rows]},
        schema_overrides={"ts": TS},
    )
    return closed_intervals(changes).collect().rows()


def test_closed_from_a_close_until_the_next_other_state() -> None:
    rows = [
        (1, day(1), "open"),
        (1, day(2), "closed"),
        (1, day(3), "closed"),  # the same state again changes nothing
        (1, day(5), "armed"),  # armed: the customer may restore supply, so no longer closed
        (1, day(7), "closed"),  # still closed at the end
        (2, day(4), "closed"),
        (2, day(6), "unknown"),  # not known to be closed any more
        (3, day(1), "open"),
    ]
    assert intervals(rows) == [(1, day(2), day(5)), (1, day(7), None), (2, day(4), day(6))]


def test_order_of_input_does_not_matter_and_reports_win_at_one_instant() -> None:
    rows = [(1, day(5), "open"), (1, day(2), "closed")]
    assert intervals(rows) == [(1, day(2), day(5))]
    # a command says closed, the meter reports open at the same instant: the report (source 1) comes later
    changes = pl.LazyFrame(
        {"meter_id": [1, 1], "ts": [day(2), day(2)], "state": ["open", "closed"], "source": [1, 0]},
        schema_overrides={"ts": TS},
    )
    assert closed_intervals(changes).collect().rows() == [(1, day(2), day(2))]


def command(
    conn: psycopg.Connection[Any],
    meter_id: int,
    kind: str,
    finished_at: datetime,
    *,
    state: str = "confirmed",
    reason_code: str | None = None,
    sent_at: datetime | None = None,
) -> None:
    audit_id = audit(conn, "alice", "command.request", "meter_command", None, {"kind": kind})
    key = f"{meter_id}-{kind}-{finished_at.isoformat()}-{state}"
    conn.execute(
        """INSERT INTO meter_command (meter_id, kind, state, reason_code, reason, requested_by, idempotency_key,
                                      correlation_id, audit_id, sent_at, finished_at)
           VALUES (%s, %s, %s, %s, 'test', 'alice', %s, %s, %s, %s, %s)""",
        [meter_id, kind, state, reason_code, key, key, audit_id, sent_at or finished_at, finished_at],
    )


def valve_event(conn: psycopg.Connection[Any], meter_id: int, ts: datetime, valve: str) -> None:
    conn.execute(
        "INSERT INTO meter_event (meter_id, ts, kind, severity, detail) VALUES (%s, %s, 'valve_state', 'info', %s)",
        [meter_id, ts, Jsonb({"valve": valve})],
    )


def local(d: date, hour: int = 0) -> datetime:
    return midnight(d) + timedelta(hours=hour)


def test_changes_from_the_store(store: Store) -> None:
    with store.transaction(actor="setup") as conn:
        m = [make_meter(conn, n)["meter"] for n in (1, 2, 3, 4)]
        command(conn, m[0], "valve_close", local(date(2023, 10, 1)))  # long before: the state at `since`
        command(conn, m[0], "valve_open", local(date(2023, 9, 1)))  # older still: not needed
        command(conn, m[0], "valve_close", local(date(2024, 1, 3)), state="failed")  # not executed: left out
        command(
            conn,
            m[1],
            "valve_open",
            local(date(2024, 1, 9)),
            state="reconciled",
            reason_code="executed",
            sent_at=local(date(2024, 1, 8)),
        )
        valve_event(conn, m[1], local(date(2024, 1, 2)), "closed")
        conn.execute(
            "INSERT INTO meter_state (meter_id, last_seen_at, valve_reported, valve_reported_at) "
            "VALUES (%s, %s, 'closed', %s)",
            [m[2], local(date(2024, 1, 20)), local(date(2024, 1, 20))],
        )
        # 4: open all along, reported by event and state: not needed by the rule, left on the server
        valve_event(conn, m[3], local(date(2024, 1, 5)), "open")
        conn.execute(
            "INSERT INTO meter_state (meter_id, last_seen_at, valve_reported, valve_reported_at) "
            "VALUES (%s, %s, 'open', %s)",
            [m[3], local(date(2024, 1, 6)), local(date(2024, 1, 6))],
        )
        since, until = local(date(2023, 12, 1)), local(date(2024, 2, 1))
        changes = load_valve_changes(conn, since, until).sort("meter_id", "ts")
        closed = load_closed_intervals(conn, since, until).sort("meter_id")
    assert changes.select("meter_id", "ts", "state").rows() == [
        (m[0], local(date(2023, 10, 1)), "closed"),
        (m[1], local(date(2024, 1, 2)), "closed"),
        (m[1], local(date(2024, 1, 8)), "open"),  # reconciled: opened at the latest when it was sent
        (m[2], local(date(2024, 1, 20)), "closed"),
    ]
    assert closed.rows() == [
        (m[0], local(date(2023, 10, 1)), None),
        (m[1], local(date(2024, 1, 2)), local(date(2024, 1, 8))),
        (m[2], local(date(2024, 1, 20)), None),
    ]


def test_use_while_the_valve_is_closed_is_flagged_by_validate_period(store: Store) -> None:
    # Five meters read at local midnight from 2023-12-01 to 2024-02-01, using 1 m3 a day unless said otherwise.
    base = days(date(2023, 12, 1), date(2024, 2, 1))
    with store.transaction(actor="setup") as conn:
        conn.execute("SELECT meterhub_ensure_reading_partitions('2023-11-01', '2024-03-01')")
        ids = {n: make_meter(conn, n)["meter"] for n in (1, 2, 3, 4, 5)}
        for n in (1, 2, 4, 5):
            insert_readings(conn, ids[n], [(midnight(d), Decimal(100 + i)) for i, d in enumerate(base)])
        # 3: no use from Jan 5 to Jan 7 (valve closed Jan 5 12:00 by command, reopened Jan 7 12:00), then on again
        flat = [Decimal(100 + i - min(max((d - date(2024, 1, 5)).days, 0), 2)) for i, d in enumerate(base)]
        insert_readings(conn, ids[3], list(zip([midnight(d) for d in base], flat, strict=True)))
        # 1: a confirmed close command on Jan 10 at noon, and gas still flows
        command(conn, ids[1], "valve_close", local(date(2024, 1, 10), 12))
        # 2: the meter reported its valve closed on Jan 20 (an event), and gas still flows
        valve_event(conn, ids[2], local(date(2024, 1, 20)), "closed")
        # 3: closed and reopened by confirmed commands; it used gas only while open
        command(conn, ids[3], "valve_close", local(date(2024, 1, 5), 12))
        command(conn, ids[3], "valve_open", local(date(2024, 1, 7), 12))
        # 4: closed by event on Jan 12, reopened by event on Jan 14: the use of Jan 13 is flagged, later use not
        valve_event(conn, ids[4], local(date(2024, 1, 12)), "closed")
        valve_event(conn, ids[4], local(date(2024, 1, 14)), "open")
        # 5: open all along
        valve_event(conn, ids[5], local(date(2023, 12, 15)), "open")

    result = validate_period(store, PERIOD, actor="clerk", now=NOW)

    with store.connection() as conn:
        flagged = conn.execute(
            """SELECT f.meter_id, f.severity, f.ts_from, f.ts_to, f.observed, f.threshold, f.unit
                 FROM reading_flag f WHERE f.run_id = %s AND f.rule_id = 'valve_closed_use'
                ORDER BY f.meter_id, f.ts_to""",
            [result.run_id],
        ).fetchall()
        queue = dict(
            conn.execute("SELECT meter_id, flag_rules FROM reading_review WHERE period = %s", [PERIOD]).fetchall()
        )
    by_meter: dict[int, list[tuple[Any, ...]]] = {}
    for row in flagged:
        by_meter.setdefault(row[0], []).append(row[1:])
    one_m3 = (Decimal("1.000"), Decimal("0.010"), "m3")
    # 1: every day from Jan 11 (the first reading interval wholly after the close) to the period's end (Feb 1)
    assert by_meter[ids[1]][0] == ("error", local(date(2024, 1, 11)), local(date(2024, 1, 12)), *one_m3)
    assert by_meter[ids[1]][-1] == ("error", local(date(2024, 1, 31)), local(date(2024, 2, 1)), *one_m3)
    assert len(by_meter[ids[1]]) == 21
    # 2: from the reported close on Jan 20
    assert by_meter[ids[2]][0] == ("error", local(date(2024, 1, 20)), local(date(2024, 1, 21)), *one_m3)
    assert len(by_meter[ids[2]]) == 12
    # 4: only Jan 12 -> Jan 13 and Jan 13 -> Jan 14 lie within the closed interval
    assert by_meter[ids[4]] == [
        ("error", local(date(2024, 1, 12)), local(date(2024, 1, 13)), *one_m3),
        ("error", local(date(2024, 1, 13)), local(date(2024, 1, 14)), *one_m3),
    ]
    # 3 (reopened, no use while closed) and 5 (never closed): nothing
    assert ids[3] not in by_meter and ids[5] not in by_meter
    assert result.flags_by_rule["valve_closed_use"] == 21 + 12 + 2
    assert "valve_closed_use" in queue[ids[1]] and "valve_closed_use" in queue[ids[2]]
    assert "valve_closed_use" not in queue[ids[3]] and "valve_closed_use" not in queue[ids[5]]
