"""Nothing is lost when things break: the collector killed, the database stopped, the broker restarted,
and when several collectors share the load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector.mqtt import MqttIngest
from collector.routes import build_routes
from meterhub.broker import BrokerAddress, LocalBroker, start_mosquitto
from meterhub.embedded import EmbeddedPostgres
from meterhub.store import Store
from tests.collector.helpers import (
    T0,
    CollectorProcess,
    Publisher,
    collector_settings,
    reading_payload,
    unique,
    wait_until,
)
from tests.conftest import REQUIRE_SERVICES, settings_for
from tests.meterhub.factories import make_meter

pytestmark = pytest.mark.slow


def sent_set(meter_ids: dict[str, int], count: int) -> tuple[list[tuple[str, str]], set[tuple[int, Any]]]:
    """`count` single-reading messages spread over the meters, and the (meter_id, ts) each must become."""
    messages, expected = [], set()
    nos = sorted(meter_ids)
    for i in range(count):
        no = nos[i % len(nos)]
        ts = T0 + timedelta(minutes=15 * (i // len(nos)))
        messages.append((f"{{topic}}/{no}/up", reading_payload(no, ts, Decimal(i) / 1000)))
        expected.add((meter_ids[no], ts))
    return messages, expected


def stored_keys(url: str) -> list[tuple[int, Any]]:
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute("SELECT meter_id, ts FROM reading WHERE channel = 'volume_m3'")]  # type: ignore[misc]


def stored_count(url: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM reading").fetchone()
    except psycopg.OperationalError:
        return -1
    return int(row[0]) if row else 0


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[Callable[[], LocalBroker]]:
    """A Mosquitto of the test's own, persistent, so that it can be restarted."""
    if shutil.which("mosquitto") is None or os.environ.get("METERHUB_TEST_BROKER") == "embedded":
        if REQUIRE_SERVICES:
            pytest.fail("mosquitto is not installed")
        pytest.skip("mosquitto is not installed")
    brokers: list[LocalBroker] = []
    port: list[int] = []

    def start() -> LocalBroker:
        broker = start_mosquitto(port=port[0] if port else None, workdir=tmp_path / "mosquitto", persistent=True)
        port[:] = [broker.address.port]
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        broker.stop()


def seeded_database(database_factory: Callable[[], str], tmp_path: Path, meters: int) -> tuple[str, dict[str, int]]:
    url = database_factory()
    with Store(settings_for(url, tmp_path)) as store:
        store.migrate()
        store.maintain()
        with store.transaction(actor="setup") as conn:
            ids = {f"M{i:08d}": make_meter(conn, i)["meter"] for i in range(1, meters + 1)}
    return url, ids


def test_kill_9_with_thousands_in_flight_then_restart_stores_each_reading_once(
    database_factory: Callable[[], str], own_mosquitto: Callable[[], LocalBroker], tmp_path: Path
) -> None:
    broker = own_mosquitto()
    url, ids = seeded_database(database_factory, tmp_path, meters=50)
    topic, client_id = unique("k"), unique("collector-")
    messages, expected = sent_set(ids, 6000)
    first = CollectorProcess(tmp_path, url, broker.address, topic, client_id)
    publisher = Publisher(broker.address)
    try:
        time.sleep(2)  # the collector's session exists before the fleet starts sending
        sender = threading.Thread(target=publisher.publish, args=([(t.format(topic=topic), p) for t, p in messages],))
        sender.start()
        wait_until(lambda: stored_count(url) >= 500, 60, "the first readings")
        first.kill()
        at_kill = stored_count(url)
        sender.join(120)
        assert at_kill < len(expected), "the collector was killed after everything was stored"
        second = CollectorProcess(tmp_path, url, broker.address, topic, client_id)
        try:
            wait_until(lambda: stored_count(url) >= len(expected), 120, "every reading after the restart")
            time.sleep(1)
        finally:
            assert second.stop() == 0
    finally:
        publisher.close()
        first.stop()
    keys = stored_keys(url)
    assert len(keys) == len(expected)  # none twice
    assert set(keys) == expected  # none lost, none invented


def test_database_stopped_for_30_seconds_under_load_loses_nothing(
    own_mosquitto: Callable[[], LocalBroker], tmp_path: Path
) -> None:
    broker = own_mosquitto()
    server = EmbeddedPostgres(tmp_path / "pg")
    server.acquire()
    try:
        url = server.url()
        with Store(settings_for(url, tmp_path)) as store:
            store.migrate()
            store.maintain()
            with store.transaction(actor="setup") as conn:
                ids = {f"M{i:08d}": make_meter(conn, i)["meter"] for i in range(1, 21)}
        topic, client_id = unique("d"), unique("collector-")
        messages, expected = sent_set(ids, 4000)
        collector = CollectorProcess(tmp_path, url, broker.address, topic, client_id)
        publisher = Publisher(broker.address)
        try:
            time.sleep(2)
            batches = [messages[i : i + 100] for i in range(0, len(messages), 100)]

            def trickle() -> None:  # ~40 s of steady traffic
                for chunk in batches:
                    publisher.publish([(t.format(topic=topic), p) for t, p in chunk])
                    time.sleep(1)

            sender = threading.Thread(target=trickle)
            sender.start()
            wait_until(lambda: stored_count(url) >= 500, 60, "readings before the outage")
            server._pg_ctl("stop", "-m", "fast", "-w")
            time.sleep(30)
            assert collector.proc.poll() is None, "the collector gave up while the database was down"
            server._start(server._server_user())
            sender.join(120)
            wait_until(lambda: stored_count(url) >= len(expected), 120, "every reading after the outage")
            time.sleep(1)
            assert collector.stop() == 0
        finally:
            publisher.close()
            collector.stop()
        keys = stored_keys(url)
        assert len(keys) == len(expected)
        assert set(keys) == expected
    finally:
        server.release()


def test_broker_restart_loses_nothing(
    database_factory: Callable[[], str], own_mosquitto: Callable[[], LocalBroker], tmp_path: Path
) -> None:
    broker = own_mosquitto()
    url, ids = seeded_database(database_factory, tmp_path, meters=20)
    topic, client_id = unique("b"), unique("collector-")
    messages, expected = sent_set(ids, 3000)
    halves = [messages[:1500], messages[1500:]]
    collector = CollectorProcess(tmp_path, url, broker.address, topic, client_id)
    try:
        time.sleep(2)
        publisher = Publisher(broker.address)
        publisher.publish([(t.format(topic=topic), p) for t, p in halves[0]])
        publisher.close()
        broker.stop()  # whatever the collector had not acknowledged stays in the broker's persistence
        broker = own_mosquitto()
        publisher = Publisher(broker.address)
        publisher.publish([(t.format(topic=topic), p) for t, p in halves[1]])
        publisher.close()
        wait_until(lambda: stored_count(url) >= len(expected), 120, "every reading after the broker restart")
        time.sleep(1)
        assert collector.stop() == 0
    finally:
        collector.stop()
    keys = stored_keys(url)
    assert len(keys) == len(expected)
    assert set(keys) == expected
    status = subprocess.run(
        [sys.executable, "-m", "meterhub", "--config", str(collector.config), "collect", "--status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**collector.env, "COLUMNS": "250"},
    )
    assert status.returncode == 0, status.stderr
    assert client_id in status.stdout and "stopped" in status.stdout
    assert "3000" in status.stdout  # messages received and readings stored, as the process counted them


def test_two_collectors_share_the_load_without_loss_or_duplicates(store: Store, mqtt_broker: BrokerAddress) -> None:
    if not mqtt_broker.mqtt5:
        pytest.skip("shared subscriptions need an MQTT 5 broker")
    with store.transaction(actor="setup") as conn:
        ids = {f"M{i:08d}": make_meter(conn, i)["meter"] for i in range(1, 21)}
    topic, group = unique("s"), unique("g")
    collectors = [
        MqttIngest(
            mqtt_broker, settings := collector_settings(topic, share_group=group), store, build_routes(settings.routes)
        )
        for _ in range(2)
    ]
    for c in collectors:
        c.start()
        assert c.connected.wait(10)
    time.sleep(0.5)
    messages, expected = sent_set(ids, 3000)
    publisher = Publisher(mqtt_broker)
    try:
        publisher.publish([(t.format(topic=topic), p) for t, p in messages])
        wait_until(
            lambda: sum(c.counters.snapshot()["messages_committed"] for c in collectors) >= len(expected),
            60,
            "all messages committed",
        )
    finally:
        publisher.close()
        for c in collectors:
            c.stop()
    snaps = [c.counters.snapshot() for c in collectors]
    assert sum(s["readings_duplicate"] for s in snaps) == 0
    assert all(s["messages_received"] > len(expected) * 0.2 for s in snaps), [s["messages_received"] for s in snaps]
    with store.connection() as conn:
        keys = [tuple(r) for r in conn.execute("SELECT meter_id, ts FROM reading")]
    assert len(keys) == len(expected) and set(keys) == expected
