"""Valve and credit commands end to end: service → PostgreSQL → dispatcher → broker → simulated meters →
replies → collector → PostgreSQL, with meters that drop replies, never answer, or sleep."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from collector.commands import CommandDispatcher
from collector.mqtt import MqttIngest
from collector.routes import build_routes
from meterhub import commands
from meterhub.broker import BrokerAddress
from meterhub.command_settings import CommandSettings
from meterhub.store import Store
from simulators.mqtt_fleet import Fleet, FleetRunner, native_json
from tests.collector.helpers import collector_settings, unique, wait_until
from tests.meterhub.factories import make_meter
from tests.meterhub.test_command_rules import add_users

FAST = CommandSettings(ack_timeout_s=1.0, sleepy_ack_timeout_s=3.0, read_timeout_s=1.5, sweep_s=0.2)


class Rig:
    """A collector with its dispatcher, and a fleet of simulated meters answering on the same broker."""

    def __init__(self, store: Store, broker: BrokerAddress, meters: int, settings: CommandSettings) -> None:
        self.store = store
        topic = unique("cmd")
        with store.transaction(actor="setup") as conn:
            for n in range(1, meters + 1):
                make_meter(conn, n)
            add_users(conn)
            conn.execute("UPDATE command_rule SET enabled = false")  # rules have their own tests
        config = collector_settings(topic)
        self.ingest = MqttIngest(broker, config, store, build_routes(config.routes))
        client = self.ingest.client
        self.dispatcher = CommandDispatcher(
            store, settings, self.ingest.routes, lambda t, p: client.publish(t, p, qos=1)
        )
        self.ingest.on_uplink = self.dispatcher.on_uplink
        self.ingest.start()
        assert self.ingest.connected.wait(10)
        self.dispatcher.start()
        self.fleet = FleetRunner(Fleet(meters, native_json(topic)), broker.host, broker.port, prefix=topic)
        self.fleet.client.loop_start()
        wait_until(lambda: self.fleet.client.is_connected(), 10, "simulator connected")

    def meter(self, meter_no: str) -> Any:
        return self.fleet._by_no[meter_no]

    def final(self, command_id: int, timeout: float = 20) -> commands.CommandView:
        wait_until(lambda: commands.get_command(self.store, command_id).final, timeout, f"command {command_id} final")
        return commands.get_command(self.store, command_id)

    def valve_state(self, meter_no: str) -> str:
        with self.store.connection() as conn:
            row = conn.execute("SELECT valve_state FROM meter WHERE meter_no = %s", [meter_no]).fetchone()
        assert row is not None
        return str(row[0])

    def executed(self, meter_no: str) -> list[str]:
        return [kind for no, kind in self.fleet.executed if no == meter_no]

    def close(self) -> None:
        self.dispatcher.stop()
        self.fleet.client.loop_stop()
        self.fleet.client.disconnect()
        self.ingest.stop()


@pytest.fixture
def rig(store: Store, mqtt_broker: BrokerAddress) -> Iterator[Any]:
    made: list[Rig] = []

    def make(meters: int = 3, settings: CommandSettings = FAST) -> Rig:
        made.append(Rig(store, mqtt_broker, meters, settings))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_close_then_arm_and_the_customer_opens_on_site(rig: Any) -> None:
    r = rig()
    close = commands.request_command(r.store, "M00000001", "valve_close", user="alice", reason="arrears")
    done = r.final(close.id)
    assert (done.state, done.sent_kind, done.attempts) == ("confirmed", "valve_close", 1)
    wait_until(lambda: r.valve_state("M00000001") == "closed", 10, "meter closed")
    reopen = commands.request_command(r.store, "M00000001", "valve_open", user="alice", reason="paid")
    done = r.final(reopen.id)
    assert (done.state, done.sent_kind) == ("confirmed", "valve_arm")  # gas: open means arm
    wait_until(lambda: r.valve_state("M00000001") == "armed", 10, "meter armed")
    r.fleet.press_button("M00000001")
    r.fleet.uplink("M00000001")
    wait_until(lambda: r.valve_state("M00000001") == "open", 10, "meter reports open")
    assert r.executed("M00000001") == ["valve_close", "valve_arm"]
    with r.store.connection() as conn:
        actors = conn.execute(
            "SELECT DISTINCT a.actor FROM meter_command c JOIN audit_log a ON a.id = c.audit_id"
        ).fetchall()
    assert actors == [("alice",)]


def test_credit_top_up_is_written_with_a_sequence_and_booked_once(rig: Any) -> None:
    r = rig()
    with r.store.transaction(actor="setup") as conn:
        conn.execute("UPDATE meter SET prepaid = true WHERE meter_no = 'M00000002'")
    first = commands.request_command(r.store, "M00000002", "credit", user="alice", reason="kiosk", amount=Decimal("50"))
    second = commands.request_command(
        r.store, "M00000002", "credit", user="alice", reason="kiosk", amount=Decimal("20.5")
    )
    assert (first.purchase_seq, second.purchase_seq) == (1, 2)
    assert r.final(first.id).state == "confirmed" and r.final(second.id).state == "confirmed"
    assert r.meter("M00000002").credit == Decimal("70.50")
    with r.store.connection() as conn:
        booked = conn.execute("SELECT purchase_seq, amount FROM meter_credit ORDER BY purchase_seq").fetchall()
        mismatches = conn.execute("SELECT count(*) FROM meter_event WHERE kind = 'credit_mismatch'").fetchone()
    assert booked == [(1, Decimal("50.00")), (2, Decimal("20.50"))]
    assert mismatches == (0,)


def test_dropped_reply_ends_reconciled_and_nothing_runs_twice(rig: Any) -> None:
    r = rig()
    r.fleet.drop_replies["M00000001"] = 1
    close = commands.request_command(r.store, "M00000001", "valve_close", user="alice", reason="arrears")
    wait_until(lambda: commands.get_command(r.store, close.id).state == "unknown", 10, "timeout → unknown")
    done = r.final(close.id)
    assert (done.state, done.reason_code, done.attempts) == ("reconciled", "executed", 1)
    assert done.reply is not None and done.reply["valve"] == "closed"
    assert r.executed("M00000001") == ["valve_close"]


def test_meter_that_never_answers_fails_with_a_clear_reason(rig: Any) -> None:
    r = rig()
    r.fleet.mute.add("M00000003")
    close = commands.request_command(r.store, "M00000003", "valve_close", user="alice", reason="arrears")
    done = r.final(close.id)
    assert (done.state, done.reason_code, done.attempts) == ("failed", "no_answer", 1)
    assert r.executed("M00000003") == []


def test_sleepy_meter_gets_its_command_after_its_next_uplink_and_supersede(rig: Any) -> None:
    r = rig()
    with r.store.transaction(actor="setup") as conn:
        conn.execute("UPDATE meter SET sleepy = true WHERE meter_no = 'M00000001'")
    r.fleet.sleepy.add("M00000001")
    close = commands.request_command(r.store, "M00000001", "valve_close", user="alice", reason="arrears")
    reopen = commands.request_command(r.store, "M00000001", "valve_open", user="alice", reason="paid after all")
    assert commands.get_command(r.store, close.id).state == "superseded"
    wait_until(lambda: r.dispatcher._sleepy_waiting == {1}, 5, "dispatcher knows the meter sleeps")
    assert commands.get_command(r.store, reopen.id).state == "queued"  # asleep: nothing sent
    r.fleet.uplink("M00000001")
    done = r.final(reopen.id)
    assert (done.state, done.sent_kind) == ("confirmed", "valve_arm")
    assert r.executed("M00000001") == ["valve_arm"]  # the superseded close never reached the meter
