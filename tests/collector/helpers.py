"""Publishing to a real broker and waiting for the store, as a meter fleet and an operator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from meterhub.broker import BrokerAddress
from meterhub.settings import CollectorSettings, MqttRoute


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def collector_settings(prefix: str, **overrides: Any) -> CollectorSettings:
    """A collector that listens on its own topic prefix, with a session the broker forgets quickly."""
    routes = [
        MqttRoute(filter=f"{prefix}/+/up", driver="native_json", settings={"topic_prefix": prefix}),
        MqttRoute(filter=f"{prefix}/+/reply", driver="native_json", settings={"topic_prefix": prefix}),
    ]
    values: dict[str, Any] = {
        "client_id": unique("test-collector-"),
        "session_expiry_s": 600,
        "metrics_port": 0,
        "routes": routes,
    }
    values.update(overrides)
    return CollectorSettings(**values)


class Publisher:
    """QoS 1 publisher that waits until the broker has acknowledged everything it sent."""

    def __init__(self, broker: BrokerAddress) -> None:
        protocol = mqtt.MQTTv5 if broker.mqtt5 else mqtt.MQTTv311
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique("test-pub-"), protocol=protocol)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        connected = threading.Event()
        self.client.on_connect = lambda *args: connected.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not connected.wait(10):
            raise TimeoutError("publisher could not connect")

    def publish(self, messages: Iterable[tuple[str, bytes | str]], timeout: float = 120) -> int:
        infos = [self.client.publish(topic, payload, qos=1) for topic, payload in messages]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError("the broker did not acknowledge every message")
        return len(infos)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def reading_payload(meter_no: str, ts: datetime, volume: Decimal, **extra: Any) -> str:
    doc = {"meter": meter_no, "ts": ts.isoformat(), "volume_m3": str(volume), **extra}
    return json.dumps(doc)


def hourly_series(start: datetime, count: int, first: Decimal = Decimal("100.000")) -> list[tuple[datetime, Decimal]]:
    return [(start + timedelta(hours=i), first + Decimal(i) * Decimal("0.125")) for i in range(count)]


def wait_until(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


T0 = datetime(2026, 11, 1, tzinfo=UTC)


class CollectorProcess:
    """`meterhub collect` as its own process, configured by a TOML file; `extra` is appended to it."""

    def __init__(
        self, tmp_path: Path, db_url: str, broker: BrokerAddress, topic: str, client_id: str, extra: str = ""
    ) -> None:
        config = tmp_path / f"{client_id}.toml"
        config.write_text(
            f"""
[database]
url = "{db_url}"
pool_min = 0
[mqtt]
url = "{broker.url}"
[collector]
client_id = "{client_id}"
session_expiry_s = 600
metrics_port = 0
[[collector.routes]]
filter = "{topic}/+/up"
driver = "native_json"
settings = {{ topic_prefix = "{topic}" }}
{extra}""",
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERHUB_")}
        self.config, self.env = config, env
        self.log = open(tmp_path / f"{client_id}-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meterhub", "--config", str(config), "collect"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        return self.proc.returncode
