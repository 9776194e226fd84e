"""A top-up whose collector is killed (SIGKILL) between writing to the meter and recording the meter's
acknowledgement is counted once: the restarted collector reads the meter back instead of re-sending."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import psycopg

from meterhub import commands
from meterhub.broker import BrokerAddress
from meterhub.store import Store
from simulators.mqtt_fleet import Fleet, FleetRunner, native_json
from tests.collector.helpers import unique, wait_until
from tests.meterhub.factories import make_meter
from tests.meterhub.test_command_rules import add_users


def start_collector(
    tmp_path: Path, url: str, broker: BrokerAddress, topic: str, client_id: str
) -> subprocess.Popen[bytes]:
    config = tmp_path / "collector.toml"
    config.write_text(
        f"""
[database]
url = "{url}"
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
[[collector.routes]]
filter = "{topic}/+/reply"
driver = "native_json"
settings = {{ topic_prefix = "{topic}" }}
[commands]
ack_timeout_s = 1.0
read_timeout_s = 3.0
sweep_s = 0.2
""",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERHUB_")}
    log = open(tmp_path / f"collector-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "meterhub", "--config", str(config), "collect"], env=env, stdout=log, stderr=log
    )


def test_top_up_retried_after_a_crash_is_counted_once(store: Store, mqtt_broker: BrokerAddress, tmp_path: Path) -> None:
    with store.transaction(actor="setup") as conn:
        make_meter(conn, 1)
        add_users(conn)
        conn.execute("UPDATE meter SET prepaid = true")
    topic, client_id = unique("crash"), unique("collector-")
    fleet = FleetRunner(Fleet(1, native_json(topic)), mqtt_broker.host, mqtt_broker.port, prefix=topic)
    fleet.client.loop_start()
    fleet.drop_replies["M00000001"] = 1  # the acknowledgement is lost with the collector
    proc = start_collector(tmp_path, store.url, mqtt_broker, topic, client_id)
    try:
        command = commands.request_command(
            store, "M00000001", "credit", user="alice", reason="counter top-up", amount=Decimal("30.00")
        )
        wait_until(lambda: fleet.executed == [("M00000001", "credit")], 30, "the meter took the top-up")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert commands.get_command(store, command.id).state == "sent"  # written, not acknowledged
        proc = start_collector(tmp_path, store.url, mqtt_broker, topic, client_id)
        wait_until(lambda: commands.get_command(store, command.id).final, 30, "the top-up settled")
        done = commands.get_command(store, command.id)
        assert (done.state, done.reason_code, done.attempts) == ("reconciled", "executed", 1)
        assert fleet.executed == [("M00000001", "credit")]
        meter = fleet._by_no["M00000001"]
        assert (meter.credit, meter.purchase_seq) == (Decimal("30.00"), 1)
        with psycopg.connect(store.url) as conn:
            assert conn.execute("SELECT count(*), sum(amount) FROM meter_credit").fetchone() == (1, Decimal("30.00"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        fleet.client.loop_stop()
