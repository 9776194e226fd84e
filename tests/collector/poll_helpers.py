"""Polled meters in tests: free ports, meters in the store, a running poller, what reached the store."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest

from collector.poll import Poller
from collector.poll_plan import build_plan
from meterhub.poller_settings import PollerSettings
from meterhub.store import Store
from tests.meterhub.factories import make_meter


def require_tool(name: str) -> str:
    """The path of a command-line tool; skips the test without it (fails with METERHUB_REQUIRE_SERVICES=1, as in CI)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install {name})"
        if os.environ.get("METERHUB_REQUIRE_SERVICES") == "1":
            pytest.fail(message + " and METERHUB_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def add_meters(store: Store, count: int, driver_key: str, first: int = 1) -> list[str]:
    """Meters M0000000n… with the given driver; returns their numbers."""
    with store.transaction(actor="test") as conn:
        return [f"M{n:08d}" for n in range(first, first + count) if make_meter(conn, n, driver_key=driver_key)]


def poller_settings(buses: list[dict[str, Any]], devices: list[dict[str, Any]], **overrides: Any) -> PollerSettings:
    values: dict[str, Any] = {"interval_s": 0.5, "jitter": 0.0, "timeout_s": 0.5, "retries": 0, "offline_after": 2}
    values.update(overrides)
    return PollerSettings(bus=buses, device=devices, **values)


@contextmanager
def running_poller(store: Store, settings: PollerSettings) -> Iterator[Poller]:
    poller = Poller(settings, store, build_plan(settings))
    poller.start()
    try:
        yield poller
    finally:
        poller.stop()


def latest(store: Store, meter_no: str) -> dict[str, Decimal]:
    """The newest stored value of each channel of a meter."""
    with store.connection() as conn:
        rows = conn.execute(
            """SELECT DISTINCT ON (r.channel) r.channel, r.value FROM reading r JOIN meter m ON m.id = r.meter_id
                WHERE m.meter_no = %s ORDER BY r.channel, r.ts DESC""",
            [meter_no],
        ).fetchall()
    return {channel: value for channel, value in rows}


def readings_count(store: Store, meter_no: str, channel: str = "volume_m3") -> int:
    with store.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM reading r JOIN meter m ON m.id = r.meter_id WHERE m.meter_no = %s AND r.channel = %s",
            [meter_no, channel],
        ).fetchone()
    assert row is not None
    return int(row[0])


def events(store: Store, kind: str) -> list[tuple[str, dict[str, Any]]]:
    with store.connection() as conn:
        rows = conn.execute(
            "SELECT m.meter_no, e.detail FROM meter_event e JOIN meter m ON m.id = e.meter_id WHERE e.kind = %s",
            [kind],
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def rejected(store: Store) -> list[tuple[str, bytes, str]]:
    with store.connection() as conn:
        rows = conn.execute("SELECT reason, raw, source FROM rejected_frame ORDER BY id").fetchall()
    return [(r[0], bytes(r[1]), r[2]) for r in rows]


def meter_valve(store: Store, meter_no: str) -> tuple[str, str | None]:
    with store.connection() as conn:
        row = conn.execute(
            """SELECT m.valve_state, s.valve_reported FROM meter m LEFT JOIN meter_state s ON s.meter_id = m.id
                WHERE m.meter_no = %s""",
            [meter_no],
        ).fetchone()
    assert row is not None
    return row[0], row[1]
