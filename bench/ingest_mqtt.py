"""MQTT ingestion throughput, latency and memory, each next to the limits measured in the same run.

    python bench/ingest_mqtt.py [--messages 200000] [--batched 10000] [--database-url URL]

Runs a Mosquitto of its own (max_queued_messages raised so that a backlog is kept) and uses the
PostgreSQL at --database-url (default: the embedded server in a temporary directory). Measures:

1. limit: paho receive-only rate, QoS 1, auto-acknowledged, nothing stored;
2. limit: binary COPY rate of reading rows into the partitioned table, no MQTT;
3. collector, single-reading messages, QoS 1, acknowledged after commit (backlog drain);
4. collector, batched messages of 96 readings (backlog drain);
5. publish → commit latency p50/p99 at a steady rate below capacity;
6. a `meterhub collect` process draining the backlog of --drain-minutes of fleet traffic
   at --fleet-rate messages/s: its peak RSS and its rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scratch_db import scratch_database
from collector.batch import Batch
from collector.mqtt import MqttIngest
from collector.routes import build_routes
from collector.writer import write_batch
from meterhub.broker import BrokerAddress, start_mosquitto
from meterhub.settings import CollectorSettings, MqttRoute, load_settings
from meterhub.store import Store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
METERS = 10_000


def publish_all(broker: BrokerAddress, messages: list[tuple[str, bytes]]) -> float:
    """Publish QoS 1 as fast as the broker takes it, 20,000 at a time; returns messages per second."""
    started = time.perf_counter()
    for start in range(0, len(messages), 20_000):
        _publish_chunk(broker, messages[start : start + 20_000])
    return len(messages) / (time.perf_counter() - started)


def _publish_chunk(broker: BrokerAddress, messages: list[tuple[str, bytes]]) -> float:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(500)  # within the broker's receive maximum
    client.max_queued_messages_set(0)
    done = threading.Semaphore(0)
    dropped = threading.Event()
    client.on_publish = lambda *a: done.release()
    client.on_disconnect = lambda *a: dropped.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    started = time.perf_counter()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1)
    for _ in messages:
        while not done.acquire(timeout=5):
            if dropped.is_set():
                raise RuntimeError("the broker dropped the publisher")
    elapsed = time.perf_counter() - started
    client.loop_stop()
    client.disconnect()
    return len(messages) / elapsed


def single_messages(n: int, prefix: str, offset: int = 0) -> list[tuple[str, bytes]]:
    out = []
    for i in range(offset, offset + n):
        meter = f"M{(i % METERS) + 1:08d}"
        ts = T0 + timedelta(minutes=15 * (i // METERS))
        out.append(
            (
                f"{prefix}/{meter}/up",
                json.dumps({"meter": meter, "ts": ts.isoformat(), "volume_m3": f"{i / 1000:.3f}"}).encode(),
            )
        )
    return out


def batched_messages(n: int, prefix: str) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        meter = f"M{(i % METERS) + 1:08d}"
        day = T0 + timedelta(days=i // METERS)
        readings = [
            {"ts": int((day + timedelta(minutes=15 * k)).timestamp()), "volume_m3": f"{k / 100:.3f}"} for k in range(96)
        ]
        out.append((f"{prefix}/{meter}/up", json.dumps({"meter": meter, "readings": readings}).encode()))
    return out


def receive_only_rate(broker: BrokerAddress, n: int) -> float:
    prefix = f"r{uuid.uuid4().hex[:6]}"
    client_id = f"bench-sub-{prefix}"
    got = threading.Semaphore(0)

    def make() -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.on_message = lambda *a: got.release()
        return c

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    props.ReceiveMaximum = 4000
    subscribed = threading.Event()
    sub = make()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(broker.host, broker.port, clean_start=False, properties=props)
    sub.loop_start()
    sub.subscribe(f"{prefix}/+/up", qos=1)
    if not subscribed.wait(10):
        raise TimeoutError("no SUBACK")
    sub.disconnect()
    sub.loop_stop()
    publish_all(broker, single_messages(n, prefix))  # queued in the session while nobody listens
    sub = make()
    sub.connect(broker.host, broker.port, clean_start=False, properties=props)
    started = time.perf_counter()
    sub.loop_start()
    for _ in range(n):
        got.acquire()
    elapsed = time.perf_counter() - started
    sub.loop_stop()
    sub.disconnect()
    return n / elapsed


def copy_rate(store: Store, rows: int) -> float:
    now = datetime.now(UTC)
    batch = Batch()
    batch.readings = [
        (1 + i % METERS, "volume_m3", T0 + timedelta(seconds=i), Decimal(i) / 1000, "good", "bench", now)
        for i in range(rows)
    ]
    with store.connection() as conn:
        conn.execute("TRUNCATE reading")
    started = time.perf_counter()
    write_batch(store, batch)
    return rows / (time.perf_counter() - started)


def collector_drain(
    store: Store,
    broker: BrokerAddress,
    messages: list[tuple[str, bytes]],
    prefix: str,
    readings: int,
) -> tuple[float, dict[str, Any]]:
    """Queue `messages` in the collector's session while it is away, then time the drain."""
    settings = CollectorSettings(
        client_id=f"bench-collector-{prefix}",
        metrics_port=0,
        session_expiry_s=3600,
        routes=[MqttRoute(filter=f"{prefix}/+/up", driver="native_json", settings={"topic_prefix": prefix})],
    )
    first = MqttIngest(broker, settings, store, build_routes(settings.routes))
    first.start()
    first.connected.wait(10)
    first.stop()
    publish_all(broker, messages)
    with store.connection() as conn:
        conn.execute("TRUNCATE reading")
    ingest = MqttIngest(broker, settings, store, build_routes(settings.routes))
    started = time.perf_counter()
    ingest.start()
    while ingest.counters.snapshot()["messages_committed"] + ingest.counters.snapshot()["messages_rejected"] < len(
        messages
    ):
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    ingest.stop()
    snap = ingest.counters.snapshot()
    assert snap["readings_stored"] == readings, snap
    return readings / elapsed, snap


def drain_in_process_of_its_own(url: str, broker: BrokerAddress, backlog: int, workdir: Path) -> tuple[int, float]:
    """`meterhub collect` as a process of its own drains `backlog` messages; returns its peak RSS (KiB)."""
    prefix = f"d{uuid.uuid4().hex[:6]}"
    config = workdir / "drain.toml"
    config.write_text(
        f"""[database]\nurl = "{url}"\n[mqtt]\nurl = "{broker.url}"\n[collector]\nclient_id = "bench-{prefix}"
metrics_port = 0\n[[collector.routes]]\nfilter = "{prefix}/+/up"\ndriver = "native_json"
settings = {{ topic_prefix = "{prefix}" }}\n""",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERHUB_")}
    command = [sys.executable, "-m", "meterhub", "--config", str(config), "collect"]
    log = open(workdir / "drain.log", "wb")  # noqa: SIM115
    first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    with psycopg.connect(url, autocommit=True) as conn:  # its session exists once it reports in
        while not (conn.execute("SELECT count(*) FROM collector_status WHERE stopped_at IS NULL").fetchone() or [0])[0]:
            if first.poll() is not None:
                raise RuntimeError(f"collector exited; see {workdir / 'drain.log'}")
            time.sleep(0.2)
    time.sleep(1)  # now it goes away while the fleet keeps sending
    first.terminate()
    first.wait(30)
    for start in range(0, backlog, 100_000):
        publish_all(broker, single_messages(min(100_000, backlog - start), prefix, offset=start))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE reading")
        drain = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        started = time.perf_counter()
        peak = 0
        stored = 0
        while stored < backlog:
            with open(f"/proc/{drain.pid}/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        peak = max(peak, int(line.split()[1]))
            row = conn.execute("SELECT count(*) FROM reading").fetchone()
            stored = row[0] if row else 0
            if drain.poll() is not None or time.perf_counter() - started > 1800:
                raise RuntimeError(f"drain stopped at {stored} of {backlog}; see {workdir / 'drain.log'}")
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
    drain.terminate()
    drain.wait(60)
    log.close()
    return peak, backlog / elapsed


def latency(store: Store, broker: BrokerAddress, rate: int, seconds: int) -> tuple[float, float, int]:
    """Publish at `rate` msg/s from another process; time from publish to commit of each reading."""
    prefix = f"l{uuid.uuid4().hex[:6]}"
    settings = CollectorSettings(
        client_id=f"bench-collector-{prefix}",
        metrics_port=0,
        routes=[MqttRoute(filter=f"{prefix}/+/up", driver="native_json", settings={"topic_prefix": prefix})],
    )
    ingest = MqttIngest(broker, settings, store, build_routes(settings.routes))
    committed: dict[str, float] = {}
    original = ingest.sink.account

    def account(batch: Batch, result: Any) -> None:
        original(batch, result)
        now = time.time()
        for item in batch.originals:
            committed[item.payload.decode()] = now

    ingest.sink.account = account  # type: ignore[method-assign]
    ingest.start()
    ingest.connected.wait(10)
    script = f"""
import json, sys, time, paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.max_inflight_messages_set(500)
c.connect({broker.host!r}, {broker.port}); c.loop_start()
sent = {{}}
start = time.time()
for i in range({rate * seconds}):
    target = start + i / {rate}
    delay = target - time.time()
    if delay > 0: time.sleep(delay)
    p = json.dumps({{"meter": "M%08d" % (i % {METERS} + 1), "ts": 1700000000 + i, "volume_m3": "1.000"}})
    sent[p] = time.time()
    c.publish("{prefix}/M%08d/up" % (i % {METERS} + 1), p, qos=1)
time.sleep(2); c.loop_stop()
json.dump(sent, sys.stdout)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    sent: dict[str, float] = json.loads(out)
    deadline = time.time() + 30
    while len(committed) < len(sent) and time.time() < deadline:
        time.sleep(0.1)
    ingest.stop()
    lat = sorted((committed[p] - t) * 1000 for p, t in sent.items() if p in committed)
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1], len(lat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batched", type=int, default=10_000)
    parser.add_argument("--latency-rate", type=int, default=2000)
    parser.add_argument("--latency-seconds", type=int, default=20)
    parser.add_argument("--drain-minutes", type=float, default=10.0)
    parser.add_argument("--fleet-rate", type=int, default=1000, help="msg/s of the fleet whose backlog is drained")
    parser.add_argument("--database-url", help="a server where the benchmark may create a database of its own")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="meterhub-bench-"))
    broker = start_mosquitto(workdir=workdir / "mqtt")
    with scratch_database(args.database_url, workdir) as url:
        settings = load_settings(None, database={"url": url, "pool_min": 1, "pool_max": 4}, data_dir=workdir)
        results: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "database": "external PostgreSQL" if args.database_url else "embedded PostgreSQL",
            "postgres": psycopg.connect(url).info.server_version,
        }
        try:
            with Store(settings) as store:
                store.migrate()
                store.maintain(now=T0)
                store.maintain()
                with store.transaction() as conn:
                    conn.execute("INSERT INTO usage_type (code, name) VALUES ('RES', 'res') ON CONFLICT DO NOTHING")
                    conn.execute(
                        "INSERT INTO meter (meter_no, driver_key, status) "
                        "SELECT format('M%%s', lpad(g::text, 8, '0')), 'native_json', 'installed' "
                        "FROM generate_series(1, %s) g ON CONFLICT DO NOTHING",
                        [METERS],
                    )
                n = args.messages
                results["receive_only_msgs_per_s"] = round(receive_only_rate(broker.address, n))
                results["copy_rows_per_s"] = round(copy_rate(store, 500_000))
                rate, _ = collector_drain(store, broker.address, single_messages(n, "s"), "s", n)
                results["single_readings_per_s"] = round(rate)
                rate, _ = collector_drain(
                    store, broker.address, batched_messages(args.batched, "b"), "b", args.batched * 96
                )
                results["batched_readings_per_s"] = round(rate)
                p50, p99, count = latency(store, broker.address, args.latency_rate, args.latency_seconds)
                results["latency_rate_msgs_per_s"] = args.latency_rate
                results["latency_p50_ms"], results["latency_p99_ms"], results["latency_samples"] = (
                    round(p50, 1),
                    round(p99, 1),
                    count,
                )
                backlog = int(args.drain_minutes * 60 * args.fleet_rate)
                peak, drain_rate = drain_in_process_of_its_own(url, broker.address, backlog, workdir)
                results["drain_backlog_messages"] = backlog
                results["drain_readings_per_s"] = round(drain_rate)
                results["drain_collector_rss_max_mb"] = round(peak / 1024, 1)
        finally:
            broker.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
