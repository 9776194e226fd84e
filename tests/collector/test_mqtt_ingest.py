"""Meters → broker → collector → PostgreSQL, through a real broker and a real database."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

import drivers
from collector.mqtt import MqttIngest
from collector.routes import Route, build_routes
from drivers import registry
from drivers.base import Capability, Command, Decoded, Transport, Uplink
from meterhub.broker import BrokerAddress
from meterhub.settings import CollectorSettings, MqttRoute
from meterhub.store import Store
from simulators.mqtt_fleet import Fleet, cjt188_push, huawei_json
from tests.collector.helpers import (
    T0,
    Publisher,
    collector_settings,
    hourly_series,
    reading_payload,
    unique,
    wait_until,
)
from tests.meterhub.factories import make_meter


def count(store: Store, sql: str, params: list[Any] | None = None) -> Any:
    with store.connection() as conn:
        row = conn.execute(sql, params or []).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


class Running:
    def __init__(self, store: Store, broker: BrokerAddress, settings: CollectorSettings) -> None:
        self.ingest = MqttIngest(broker, settings, store, build_routes(settings.routes))
        self.ingest.start()
        assert self.ingest.connected.wait(10), "collector did not connect"

    def settle(self, received: int, timeout: float = 60) -> dict[str, Any]:
        """Wait until `received` messages are in and none is in flight; return the counters."""

        def done() -> bool:
            snap = self.ingest.counters.snapshot()
            return snap["messages_received"] >= received and snap["messages_in_flight"] == 0

        wait_until(done, timeout, f"{received} messages committed")
        return self.ingest.counters.snapshot()


@pytest.fixture
def topic() -> str:
    return unique("t")


@pytest.fixture
def run(store: Store, mqtt_broker: BrokerAddress, topic: str) -> Iterator[Any]:
    started: list[Running] = []

    def start(**overrides: Any) -> Running:
        running = Running(store, mqtt_broker, collector_settings(topic, **overrides))
        started.append(running)
        return running

    yield start
    for running in started:
        running.ingest.stop()


@pytest.fixture
def publisher(mqtt_broker: BrokerAddress) -> Iterator[Publisher]:
    pub = Publisher(mqtt_broker)
    yield pub
    pub.close()


def meters(store: Store, n: int) -> list[str]:
    with store.transaction(actor="setup") as conn:
        for i in range(1, n + 1):
            make_meter(conn, i)
    return [f"M{i:08d}" for i in range(1, n + 1)]


def test_readings_land_exactly_once_even_when_sent_twice(
    store: Store, run: Any, publisher: Publisher, topic: str
) -> None:
    nos = meters(store, 3)
    collector = run()
    sent = [(f"{topic}/{no}/up", reading_payload(no, ts, v)) for no in nos for ts, v in hourly_series(T0, 100)]
    publisher.publish(sent)
    publisher.publish(sent[:50])  # a meter repeating itself after a lost ack
    snap = collector.settle(350)
    assert count(store, "SELECT count(*) FROM reading WHERE channel = 'volume_m3'") == 300
    assert (snap["readings_stored"], snap["readings_duplicate"], snap["messages_rejected"]) == (300, 50, 0)
    assert snap["messages_received"] == snap["messages_committed"] == 350
    last = count(
        store, "SELECT value FROM reading WHERE meter_id = 1 AND channel = 'volume_m3' ORDER BY ts DESC LIMIT 1"
    )
    assert last == Decimal("112.375")  # 100 + 99 × 0.125, exact


def test_a_batch_payload_of_a_day_of_quarter_hours(store: Store, run: Any, publisher: Publisher, topic: str) -> None:
    (no,) = meters(store, 1)
    collector = run()
    readings = [
        {"ts": int((T0 + timedelta(minutes=15 * i)).timestamp()), "volume_m3": f"{500 + i * 0.01:.3f}"}
        for i in range(96)
    ]
    publisher.publish([(f"{topic}/{no}/up", json.dumps({"meter": no, "readings": readings}))])
    collector.settle(1)
    rows = count(
        store,
        "SELECT count(*), min(ts), max(ts), min(value), max(value) FROM reading WHERE channel = 'volume_m3'",
    )
    assert rows == (96, T0, T0 + timedelta(minutes=15 * 95), Decimal("500.000"), Decimal("500.950"))


def test_malformed_payloads_are_dead_lettered_and_do_not_block(
    store: Store, run: Any, publisher: Publisher, topic: str
) -> None:
    (no,) = meters(store, 1)
    collector = run()
    garbage = b"\x68\x30\xff not json at all"
    publisher.publish(
        [
            (f"{topic}/{no}/up", garbage),
            (f"{topic}/{no}/up", json.dumps({"meter": no, "ts": "yesterday", "volume_m3": 1})),
            (f"{topic}/{no}/up", reading_payload(no, T0, Decimal("1.5"))),
        ]
    )
    snap = collector.settle(3)
    assert snap["messages_rejected"] == 2 and snap["messages_committed"] == 1
    assert count(store, "SELECT count(*) FROM reading") == 1
    with store.connection() as conn:
        rejected = conn.execute("SELECT raw, reason, topic, source FROM rejected_frame ORDER BY id").fetchall()
    assert rejected[0][0] == garbage  # the bytes as they arrived
    assert rejected[0][2] == f"{topic}/{no}/up" and rejected[0][3] == "mqtt"
    assert all(reason for _, reason, _, _ in rejected)


def test_unknown_meter_is_quarantined(store: Store, run: Any, publisher: Publisher, topic: str) -> None:
    collector = run()
    publisher.publish([(f"{topic}/GHOST1/up", reading_payload("GHOST1", T0, Decimal("7")))])
    snap = collector.settle(1)
    assert snap["rejected_by_reason"] == {"unknown_meter": 1}
    assert count(store, "SELECT reason, meter_no FROM rejected_frame") == ("unknown_meter", "GHOST1")
    assert count(store, "SELECT count(*) FROM reading") == 0


def test_unknown_meter_is_provisioned_when_configured(store: Store, run: Any, publisher: Publisher, topic: str) -> None:
    collector = run(unknown_meter="auto_provision")
    publisher.publish([(f"{topic}/NEW0001/up", reading_payload("NEW0001", T0, Decimal("7.25")))])
    collector.settle(1)
    assert count(store, "SELECT driver_key, status FROM meter WHERE meter_no = 'NEW0001'") == (
        "native_json",
        "installed",
    )
    assert count(store, "SELECT value FROM reading") == Decimal("7.25")


def test_meter_state_and_valve_are_kept_current(store: Store, run: Any, publisher: Publisher, topic: str) -> None:
    (no,) = meters(store, 1)
    collector = run()
    publisher.publish(
        [
            (f"{topic}/{no}/up", reading_payload(no, T0, Decimal("10"), valve="open", battery_v=3.6, rssi=-71)),
            (
                f"{topic}/{no}/up",
                reading_payload(no, T0 + timedelta(hours=1), Decimal("11"), valve="closed", battery_v=3.1, rssi=-90),
            ),
        ]
    )
    collector.settle(2)
    state = count(store, "SELECT last_volume_m3, valve_reported, battery_v, rssi_dbm FROM meter_state")
    assert state == (Decimal("11"), "closed", Decimal("3.10"), -90)
    assert count(store, "SELECT valve_state FROM meter") == "closed"
    who = count(store, "SELECT changed_by, new_values FROM change_history WHERE table_name = 'meter' AND op = 'update'")
    assert who == ("collector", {"valve_state": "closed"})
    assert count(store, "SELECT count(*) FROM meter_event WHERE kind = 'battery_low'") >= 1


def test_counters_add_up(store: Store, run: Any, publisher: Publisher, topic: str) -> None:
    nos = meters(store, 2)
    collector = run()
    good = [(f"{topic}/{no}/up", reading_payload(no, ts, v)) for no in nos for ts, v in hourly_series(T0, 40)]
    bad = [(f"{topic}/{nos[0]}/up", b"{")] * 5
    publisher.publish(good + bad + good[:10])
    snap = collector.settle(95)
    assert (
        snap["messages_received"] == snap["messages_committed"] + snap["messages_rejected"] + snap["messages_in_flight"]
    )
    assert snap["readings_decoded"] == snap["readings_stored"] + snap["readings_duplicate"] + snap["readings_pending"]
    assert (snap["readings_stored"], snap["readings_duplicate"], snap["messages_rejected"]) == (80, 10, 5)


def test_cjt188_frames_tunnelled_over_mqtt_are_stored_and_acknowledged(
    store: Store, mqtt_broker: BrokerAddress, topic: str, publisher: Publisher
) -> None:
    with store.transaction(actor="setup") as conn:
        for i in range(1, 4):
            make_meter(conn, i, driver_key="cjt188")
            conn.execute("UPDATE meter SET protocol_address = %s WHERE meter_no = %s", [f"{i:014d}", f"M{i:08d}"])
    route = MqttRoute(
        filter=f"{topic}/+/up",
        driver="cjt188",
        settings={"topic": f"{topic}/+/up"},
        response_topic=f"{topic}/{{1}}/down",
    )
    settings = collector_settings(topic, routes=[route])
    acks: list[bytes] = []
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    listener.on_message = lambda c, u, m: acks.append(m.payload)
    listener.connect(mqtt_broker.host, mqtt_broker.port)
    listener.subscribe(f"{topic}/+/down", qos=1)
    listener.loop_start()
    collector = Running(store, mqtt_broker, settings)
    try:
        fleet = Fleet(3, cjt188_push(prefix=topic), timedelta(hours=1), start=T0)
        sent = [m for _ in range(4) for m in fleet.tick()]
        publisher.publish(sent)
        collector.settle(len(sent))
        wait_until(lambda: len(acks) == len(sent), 10, "an ack for every push")
    finally:
        collector.ingest.stop()
        listener.loop_stop()
        listener.disconnect()
    with store.connection() as conn:
        rows = conn.execute(
            "SELECT m.protocol_address, r.ts, r.value FROM reading r JOIN meter m ON m.id = r.meter_id "
            "WHERE channel = 'volume_m3' ORDER BY 1, 2"
        ).fetchall()
    expected = sorted((meter.address, T0 + timedelta(hours=h), None) for meter in fleet.meters for h in range(1, 5))
    assert [(a, ts) for a, ts, _ in rows] == [(a, ts) for a, ts, _ in expected]
    last = {a: v for a, _, v in rows}
    for meter in fleet.meters:  # the register at the last push, to the hundredth the frame carries
        assert last[meter.address] == meter.register.quantize(Decimal("0.01"), rounding="ROUND_DOWN")
    frames = [bytes.fromhex(ack.decode()).lstrip(b"\xfe") for ack in acks]  # hex text, like the pushes
    assert all(f[0] == 0x68 and f[9] == 0x84 for f in frames)  # 84: the master's answer to a function 04 push


def test_huawei_mapped_reports_through_the_collector(
    store: Store, mqtt_broker: BrokerAddress, topic: str, publisher: Publisher
) -> None:
    meters(store, 2)
    sample = tomllib.loads((Path(drivers.__file__).parent / "json_mapping/samples/huawei.toml").read_text())
    sample["topic"] = f"{topic}/devices/{{meter}}/sys/properties/report"
    route = MqttRoute(filter=f"{topic}/devices/+/sys/properties/report", driver="json_mapping", settings=sample)
    collector = Running(store, mqtt_broker, collector_settings(topic, routes=[route]))
    try:
        fleet = Fleet(2, huawei_json(prefix=topic), timedelta(hours=1), start=T0)
        sent = [m for _ in range(3) for m in fleet.tick()]
        publisher.publish(sent)
        snap = collector.settle(len(sent))
    finally:
        collector.ingest.stop()
    assert snap["messages_rejected"] == 0
    assert count(store, "SELECT count(*) FROM reading WHERE channel = 'volume_m3'") == 6
    assert count(store, "SELECT count(*) FROM meter_state WHERE valve_reported = 'open'") == 2


class NulChannelDriver:
    """Decodes like native JSON, but a payload saying "poison" yields a row the database refuses."""

    key = "test_poison"
    transports = frozenset({Transport.MQTT})
    capabilities = Capability.READ
    topics: tuple[str, ...] = ()

    def __init__(self, prefix: str) -> None:
        self.inner = registry.create("native_json", {"topic_prefix": prefix})

    def decode(self, uplink: Uplink) -> Decoded:
        decoded = self.inner.decode(uplink)
        if b"poison" in uplink.payload:
            decoded.readings = [replace(r, channel="volume\x00m3") for r in decoded.readings]
        return decoded

    def encode(self, command: Command) -> bytes:
        raise NotImplementedError


def test_a_message_the_store_refuses_is_dead_lettered_and_the_rest_are_stored(
    store: Store, mqtt_broker: BrokerAddress, publisher: Publisher, topic: str
) -> None:
    (no,) = meters(store, 1)
    settings = collector_settings(topic)
    routes = [Route(f"{topic}/+/up", "native_json", NulChannelDriver(topic))]
    ingest = MqttIngest(mqtt_broker, settings, store, routes)
    ingest.start()
    assert ingest.connected.wait(10)
    try:
        good = [(f"{topic}/{no}/up", reading_payload(no, ts, v)) for ts, v in hourly_series(T0, 20)]
        poison = (f"{topic}/{no}/up", reading_payload(no, T0 - timedelta(days=1), Decimal(1), note="poison"))
        publisher.publish([*good[:10], poison, *good[10:]])
        wait_until(
            lambda: (
                ingest.counters.snapshot()["messages_in_flight"] == 0
                and ingest.counters.snapshot()["messages_received"] == 21
            ),
            30,
            "all 21 messages",
        )
    finally:
        ingest.stop()
    assert count(store, "SELECT count(*) FROM reading") == 20
    assert count(store, "SELECT reason FROM rejected_frame") == "store_refused"
    snap = ingest.counters.snapshot()
    assert (snap["messages_committed"], snap["messages_rejected"], snap["readings_pending"]) == (20, 1, 0)
