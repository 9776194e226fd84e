"""Benchmark: 1,000 concurrent valve commands to simulated meters over MQTT.

    python bench/commands.py [--meters 1000] [--database-url URL] [--mqtt-url URL]

A fresh database on --database-url's server (default postgresql://postgres@127.0.0.1:5432/postgres),
the broker at --mqtt-url (default mqtt://127.0.0.1:1883). The collector (ingestion + command
dispatcher) and the simulated fleet run in this process. Requests come from 16 threads at once; the
latency is requested_at → finished_at of each command as recorded in the store.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.commands import CommandDispatcher
from collector.mqtt import MqttIngest
from collector.routes import build_routes
from meterhub import commands
from meterhub.broker import BrokerAddress
from meterhub.command_settings import CommandSettings
from meterhub.settings import CollectorSettings, MqttRoute, load_settings
from meterhub.store import Store
from simulators.mqtt_fleet import Fleet, FleetRunner, native_json


def seed(store: Store, meters: int) -> None:
    with store.transaction(actor="bench") as conn:
        conn.execute("INSERT INTO usage_type (code, name) VALUES ('RES', 'residential')")
        conn.execute(
            "INSERT INTO meter (meter_no, driver_key, status) "
            "SELECT format('M%%s', lpad(n::text, 8, '0')), 'native_json', 'installed' FROM generate_series(1, %s) n",
            [meters],
        )
        conn.execute("INSERT INTO staff_user (username, display_name, role) VALUES ('bench', 'Bench', 'supervisor')")
        conn.execute("UPDATE command_rule SET enabled = false")  # the rules' clock would refuse night runs
        conn.execute("INSERT INTO command_rate_limit VALUES ('bench', 1000000, 3600)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    args = parser.parse_args()
    name = f"meterhub_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(args.database_url, dbname=name)
    broker = BrokerAddress.parse(args.mqtt_url)
    store = Store(load_settings(None, database={"url": url, "pool_min": 2, "pool_max": 24}))
    store.open()
    try:
        store.migrate()
        seed(store, args.meters)
        run(store, broker, args.meters)
    finally:
        store.close()
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run(store: Store, broker: BrokerAddress, meters: int) -> None:
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    routes = [
        MqttRoute(filter=f"{prefix}/+/up", driver="native_json", settings={"topic_prefix": prefix}),
        MqttRoute(filter=f"{prefix}/+/reply", driver="native_json", settings={"topic_prefix": prefix}),
    ]
    config = CollectorSettings(client_id=f"bench-{prefix}", metrics_port=0, routes=routes, session_expiry_s=60)
    ingest = MqttIngest(broker, config, store, build_routes(routes))
    client = ingest.client
    dispatcher = CommandDispatcher(
        store, CommandSettings(ack_timeout_s=30, sweep_s=1.0), ingest.routes, lambda t, p: client.publish(t, p, qos=1)
    )
    ingest.start()
    assert ingest.connected.wait(10)
    dispatcher.start()
    fleet = FleetRunner(Fleet(meters, native_json(prefix)), broker.host, broker.port, prefix=prefix)
    fleet.client.loop_start()
    time.sleep(1.0)
    meter_nos = [f"M{n:08d}" for n in range(1, meters + 1)]
    started = time.monotonic()
    ids: list[int] = []
    lock = threading.Lock()

    def ask(meter_no: str) -> None:
        view = commands.request_command(store, meter_no, "valve_close", user="bench", reason="bench")
        with lock:
            ids.append(view.id)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(ask, meter_nos))
    requested = time.monotonic() - started
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with store.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM meter_command WHERE state = ANY(%s)", [list(commands.FINAL)]
            ).fetchone()
        if row and row[0] >= meters:
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    with store.connection() as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM meter_command GROUP BY state").fetchall())
        latencies = [
            r[0]
            for r in conn.execute(
                "SELECT extract(epoch FROM finished_at - requested_at)::float8 FROM meter_command "
                "WHERE state = 'confirmed' ORDER BY 1"
            )
        ]
    dispatcher.stop()
    fleet.client.loop_stop()
    ingest.stop()
    executed = len(fleet.executed)
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] if latencies else float("nan")
    print(f"date: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"machine: {platform.node()} {platform.machine()} Python {platform.python_version()}")
    print(f"commands: {meters}, requested in {requested:.2f} s, all final after {elapsed:.2f} s")
    print(f"states: {states}; executed by meters: {executed}")
    print(
        f"request→confirmed latency: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
