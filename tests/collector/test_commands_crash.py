"""A top-up whose collector is killed (SIGKILL) between writing to the meter and recording the meter's
acknowledgement is counted once: the restarted collector reads the meter back instead of re-sending."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import psycopg

from meterhub import commands
from meterhub.broker import BrokerAddress
from meterhub.store import Store
from simulators.mqtt_fleet import Fleet, FleetRunner, native_json
from tests.collector.helpers import CollectorProcess, unique, wait_until
from tests.meterhub.factories import make_meter
from tests.meterhub.test_command_rules import add_users

COMMAND_ROUTES = """
[[collector.routes]]
filter = "{topic}/+/reply"
driver = "native_json"
settings = {{ topic_prefix = "{topic}" }}
[commands]
ack_timeout_s = 1.0
read_timeout_s = 3.0
sweep_s = 0.2
"""


def test_top_up_retried_after_a_crash_is_counted_once(store: Store, mqtt_broker: BrokerAddress, tmp_path: Path) -> None:
    with store.transaction(actor="setup") as conn:
        make_meter(conn, 1)
        add_users(conn)
        conn.execute("UPDATE meter SET prepaid = true")
    topic, client_id = unique("crash"), unique("collector-")
    fleet = FleetRunner(Fleet(1, native_json(topic)), mqtt_broker.host, mqtt_broker.port, prefix=topic)
    fleet.client.loop_start()
    fleet.drop_replies["M00000001"] = 1  # the acknowledgement is lost with the collector
    extra = COMMAND_ROUTES.format(topic=topic)
    collector = CollectorProcess(tmp_path, store.url, mqtt_broker, topic, client_id, extra)
    try:
        command = commands.request_command(
            store, "M00000001", "credit", user="alice", reason="counter top-up", amount=Decimal("30.00")
        )
        wait_until(lambda: fleet.executed == [("M00000001", "credit")], 30, "the meter took the top-up")
        collector.kill()
        assert commands.get_command(store, command.id).state == "sent"  # written, not acknowledged
        collector = CollectorProcess(tmp_path, store.url, mqtt_broker, topic, client_id, extra)
        wait_until(lambda: commands.get_command(store, command.id).final, 30, "the top-up settled")
        done = commands.get_command(store, command.id)
        assert (done.state, done.reason_code, done.attempts) == ("reconciled", "executed", 1)
        assert fleet.executed == [("M00000001", "credit")]
        meter = fleet._by_no["M00000001"]
        assert (meter.credit, meter.purchase_seq) == (Decimal("30.00"), 1)
        with psycopg.connect(store.url) as conn:
            assert conn.execute("SELECT count(*), sum(amount) FROM meter_credit").fetchone() == (1, Decimal("30.00"))
    finally:
        collector.stop()
        fleet.client.loop_stop()
