"""`meterhub demo` and `meterhub serve` as a user runs them: separate processes, a real embedded PostgreSQL
and broker, simulated meters on MQTT, Modbus TCP and a pseudo-terminal, the console over HTTP."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import psycopg

from billing.ledger import positions
from meterhub.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]  # on the path of the processes too, as in the test process
SMALL = ["--meters", "40", "--days", "70", "--port", "0", "--interval-s", "2", "--poll-s", "2"]
URL = re.compile(r"console(?: on|:) (http://[0-9.]+:\d+)")
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class Running:
    """A `meterhub` process whose output lines are collected as they come."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("METERHUB_")}
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        clean.update({"COLUMNS": "200", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **(env or {})})
        self.stderr = open(cwd / f"stderr-{time.monotonic_ns()}.txt", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meterhub", *args], cwd=cwd, env=clean, stdout=subprocess.PIPE,
            stderr=self.stderr, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None:
                raise AssertionError(f"exited ({self.proc.wait()}) before {pattern.pattern!r}:\n{self.output()}")
            self.lines.append(line)
            found = pattern.search(line)
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern.pattern!r} after {timeout:.0f} s:\n{self.output()}")

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        while (line := self._queue.get(timeout=5)) is not None:
            self.lines.append(line)
        return code

    def output(self) -> str:
        self.stderr.seek(0)
        return "".join(self.lines) + "\n--- stderr ---\n" + self.stderr.read()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)
    return found


def sign_in(url: str, username: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    token = CSRF.search(client.get("/login").text)
    assert token is not None
    answer = client.post("/login", data={"csrf_token": token.group(1), "username": username, "password": password})
    assert answer.status_code == 303, answer.text
    return client


def live_readings(conn: psycopg.Connection[Any], since: float) -> dict[str, int]:
    """Readings received since `since` (epoch seconds), per transport kind."""
    rows = conn.execute(
        """SELECT CASE WHEN m.driver_key = 'modbus' THEN 'modbus' WHEN m.protocol_address LIKE '%%:%%' THEN 'serial'
                       WHEN m.driver_key = 'cjt188' THEN 'cjt188_mqtt' ELSE 'native_mqtt' END, count(*)
             FROM reading r JOIN meter m ON m.id = r.meter_id
            WHERE r.source <> 'demo' AND r.received_at >= to_timestamp(%s) AND r.ts > now() - interval '1 day'
            GROUP BY 1""",
        [since],
    ).fetchall()
    return dict(rows)


def store_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    row = conn.execute(
        """SELECT (SELECT count(*) FROM customer), (SELECT count(*) FROM meter), (SELECT count(*) FROM bill),
                  (SELECT count(*) FROM payment), (SELECT count(*) FROM meter_event WHERE source = 'demo'),
                  (SELECT count(*) FROM meter_command), (SELECT count(*) FROM staff_user),
                  (SELECT count(*) FROM reading WHERE source = 'demo'), (SELECT count(*) FROM reading_review)"""
    ).fetchone()
    assert row is not None
    names = ("customers", "meters", "bills", "payments", "alarms", "commands", "users", "history", "review")
    return dict(zip(names, row, strict=True))


def registers_going_back(conn: psycopg.Connection[Any]) -> list[tuple[str, Any, Any]]:
    """Volume registers lower than the reading before them (there is no rollover in the demo)."""
    return conn.execute(
        """SELECT meter_no, previous, value FROM (
               SELECT m.meter_no, r.value, lag(r.value) OVER (PARTITION BY r.meter_id ORDER BY r.ts) AS previous
                 FROM reading r JOIN meter m ON m.id = r.meter_id WHERE r.channel = 'volume_m3') x
            WHERE value < previous LIMIT 5"""
    ).fetchall()


def test_demo_runs_the_whole_platform_then_resumes(tmp_path: Path) -> None:
    started = time.time()
    demo = Running(["demo", *SMALL], cwd=tmp_path)
    try:
        url = demo.wait_for(URL, timeout=300).group(1)
        output = "".join(demo.lines)
        assert "embedded PostgreSQL" in output
        assert "54 new meters" in output  # 40 on MQTT, 6 on Modbus TCP, 8 on the serial line
        for role, user, password in (("supervisor", "supervisor", "supervisor-demo"),
                                     ("engineer", "engineer", "engineer-demo")):  # fmt: skip
            assert re.search(rf"{role}\s*│\s*{user}\s*│\s*{password}", output), output
        cashier = sign_in(url, "cashier", "cashier-demo")
        assert cashier.get("/").status_code == 200
        assert sign_in(url, "engineer", "engineer-demo").get("/me").status_code == 200

        with psycopg.connect(EmbeddedPostgres(tmp_path / "var").url(), autocommit=True) as conn:
            arrived = wait_until(
                lambda: (found := live_readings(conn, started)) and all(
                    found.get(kind, 0) > 0 for kind in ("native_mqtt", "cjt188_mqtt", "modbus", "serial")
                ) and found,
                timeout=120,
                what="readings over native JSON, CJ/T 188 over MQTT, Modbus TCP and the serial line",
            )  # fmt: skip
            assert set(arrived) == {"native_mqtt", "cjt188_mqtt", "modbus", "serial"}
            # the emergency closes seeded for a native JSON and a CJ/T 188 meter reach the simulated meters
            wait_until(
                lambda: (
                    conn.execute(
                        """SELECT count(DISTINCT m.driver_key) FROM meter_command c JOIN meter m ON m.id = c.meter_id
                        WHERE c.kind = 'valve_close' AND c.state = 'confirmed'
                          AND EXISTS (SELECT 1 FROM meter_state s WHERE s.meter_id = m.id
                                         AND s.valve_reported = 'closed')"""
                    ).fetchone()
                    == (2,)
                ),
                timeout=60,
                what="confirmed closes of a native JSON and a CJ/T 188 meter",
            )
            bills = conn.execute("SELECT count(*), count(DISTINCT period) FROM bill").fetchone()
            assert bills is not None and bills[0] > 40 and bills[1] >= 1
            ids = [r[0] for r in conn.execute("SELECT id FROM account")]
            owing = [p for p in positions(conn, ids, date.today()).values() if p.arrears > 0]
            assert owing, "some accounts are in arrears"
            assert any(p.unposted_fee > 0 or any(b.fee_posted > 0 for b in p.bills) for p in owing)  # late fees
            pending = conn.execute("SELECT count(*) FROM reading_review WHERE status = 'pending'").fetchone()
            assert pending is not None and pending[0] > 0  # flagged readings wait for review
            first = store_counts(conn)
    finally:
        if demo.proc.poll() is None:
            demo.proc.send_signal(signal.SIGINT)
    stopping = time.monotonic()
    assert demo.finish(timeout=60) == 0, demo.output()
    assert time.monotonic() - stopping < 30
    assert "stopped after" in "".join(demo.lines)
    assert "Traceback" not in demo.output()
    assert not EmbeddedPostgres(tmp_path / "var").is_running()  # released

    resumed_at = time.time()
    again = Running(["demo", *SMALL, "--run-for", "8"], cwd=tmp_path)
    assert again.finish(timeout=300) == 0, again.output()
    output = "".join(again.lines)
    assert "0 new meters" in output and "0 month(s)" in output, output
    assert "Traceback" not in again.output()
    server = EmbeddedPostgres(tmp_path / "var")
    try:
        url = server.acquire()
        with psycopg.connect(url) as conn:
            second = store_counts(conn)
            for key in ("customers", "meters", "bills", "alarms", "commands", "users", "review"):
                assert second[key] == first[key], key
            assert second["payments"] >= first["payments"]  # only payments that fell due in between
            assert live_readings(conn, resumed_at)  # the resumed platform collected again
            assert registers_going_back(conn) == []  # live readings go on from the stored registers
    finally:
        server.release()


def test_serve_serves_the_console(database_factory: Callable[[], str], tmp_path: Path) -> None:
    served = Running(["serve"], cwd=tmp_path, env={"METERHUB_DATABASE_URL": database_factory(),
                                                  "METERHUB_CONSOLE_PORT": "0"})  # fmt: skip
    try:
        url = served.wait_for(URL, timeout=120).group(1)
        page = httpx.get(f"{url}/login", timeout=30)
        assert page.status_code == 200
        assert 'name="password"' in page.text
        assert httpx.get(f"{url}/api/v1/openapi.json", timeout=30).status_code == 200
    finally:
        if served.proc.poll() is None:
            served.proc.send_signal(signal.SIGTERM)
    assert served.finish() == 0, served.output()
    assert "applied 0001_core" in "".join(served.lines)  # migrated at start
