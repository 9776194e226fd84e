"""Valve and credit commands to CJ/T 188 meters behind DTUs, over MQTT: frames go to the DTU's down topic,
replies come back on its up topic without a correlation id and are matched to the meter's command."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from collector.commands import CommandDispatcher
from collector.mqtt import MqttIngest
from collector.routes import build_routes
from drivers.base import Command, CommandKind
from drivers.cjt188.driver import Cjt188Driver, Cjt188Settings
from meterhub import commands
from meterhub.broker import BrokerAddress
from meterhub.command_settings import CommandSettings
from meterhub.settings import MqttRoute
from meterhub.store import Store
from simulators.cjt188_dtu import Cjt188FleetRunner
from simulators.mqtt_fleet import Fleet, cjt188_push
from tests.collector.helpers import collector_settings, unique, wait_until
from tests.collector.test_commands import FAST, Rig
from tests.meterhub.factories import make_meter
from tests.meterhub.test_command_rules import add_users


class Cjt188Rig(Rig):
    """The command rig with CJ/T 188 meters (addresses 00000000000001 …) behind DTUs."""

    def __init__(
        self, store: Store, broker: BrokerAddress, meters: int, settings: CommandSettings, append_status: bool
    ) -> None:
        self.store = store
        self.topic = topic = unique("c188")
        with store.transaction(actor="setup") as conn:
            for n in range(1, meters + 1):
                make_meter(conn, n, driver_key="cjt188")
                conn.execute(
                    "UPDATE meter SET protocol_address = %s, valve_state = 'open' WHERE meter_no = %s",
                    [f"{n:014d}", f"M{n:08d}"],
                )
            add_users(conn)
            conn.execute("UPDATE command_rule SET enabled = false")  # rules have their own tests
        route = MqttRoute(
            filter=f"{topic}/+/up",
            driver="cjt188",
            settings={"topic": f"{topic}/+/up"},
            response_topic=f"{topic}/{{1}}/down",
        )
        config = collector_settings(topic, routes=[route])
        self.ingest = MqttIngest(broker, config, store, build_routes(config.routes))
        client = self.ingest.client
        self.dispatcher = CommandDispatcher(
            store, settings, self.ingest.routes, lambda t, p: client.publish(t, p, qos=1)
        )
        self.ingest.on_uplink = self.dispatcher.on_uplink
        self.ingest.start()
        assert self.ingest.connected.wait(10)
        self.dispatcher.start()
        fleet = Fleet(meters, cjt188_push(topic))
        self.fleet = Cjt188FleetRunner(fleet, broker.host, broker.port, prefix=topic, append_status=append_status)
        self.fleet.client.loop_start()
        wait_until(lambda: self.fleet.client.is_connected(), 10, "simulator connected")


@pytest.fixture
def rig(store: Store, mqtt_broker: BrokerAddress) -> Iterator[Any]:
    made: list[Cjt188Rig] = []

    def make(meters: int = 2, settings: CommandSettings = FAST, append_status: bool = True) -> Cjt188Rig:
        made.append(Cjt188Rig(store, mqtt_broker, meters, settings, append_status))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.mark.parametrize("append_status", [True, False], ids=["reply_with_st", "reply_without_st"])
def test_close_and_open_are_confirmed_by_the_meters_84_reply(rig: Any, append_status: bool) -> None:
    r = rig(append_status=append_status)
    close = commands.request_command(r.store, "M00000001", "valve_close", user="alice", reason="arrears")
    done = r.final(close.id)
    assert (done.state, done.sent_kind, done.attempts) == ("confirmed", "valve_close", 1)
    assert done.reply is not None and done.reply["di"] == "A017"
    wait_until(lambda: r.valve_state("M00000001") == "closed", 10, "meter closed")
    assert r.meter("M00000001").valve == "closed"
    reopen = commands.request_command(r.store, "M00000001", "valve_open", user="alice", reason="paid")
    done = r.final(reopen.id)
    assert (done.state, done.sent_kind, done.attempts) == ("confirmed", "valve_open", 1)  # no arm in CJ/T 188
    wait_until(lambda: r.valve_state("M00000001") == "open", 10, "meter open")
    assert r.executed("M00000001") == ["valve_close", "valve_open"]
    assert r.executed("M00000002") == []


def test_dropped_reply_is_read_back_with_901f_and_reconciled(rig: Any) -> None:
    r = rig()
    r.meter("M00000001").skew = timedelta(minutes=-10)  # a meter clock running behind must not matter
    r.fleet.drop_replies["M00000001"] = 1
    close = commands.request_command(r.store, "M00000001", "valve_close", user="alice", reason="arrears")
    wait_until(lambda: commands.get_command(r.store, close.id).state == "unknown", 10, "timeout → unknown")
    done = r.final(close.id)
    assert (done.state, done.reason_code, done.attempts) == ("reconciled", "executed", 1)
    assert done.reply is not None and done.reply["di"] == "901F" and done.reply["valve"] == "closed"
    wait_until(lambda: r.valve_state("M00000001") == "closed", 10, "meter closed")
    assert r.executed("M00000001") == ["valve_close"]


def test_top_up_with_a_purchase_sequence_is_counted_once_when_retried(rig: Any) -> None:
    r = rig()
    with r.store.transaction(actor="setup") as conn:
        conn.execute("UPDATE meter SET prepaid = true WHERE meter_no = 'M00000002'")
    r.fleet.lose_requests["M00000002"] = 1  # the first write never reaches the meter
    top_up = commands.request_command(
        r.store, "M00000002", "credit", user="alice", reason="kiosk", amount=Decimal("50")
    )
    assert top_up.purchase_seq == 1
    done = r.final(top_up.id)  # unknown → 8105 read back: sequence 0, not executed → sent again
    assert (done.state, done.attempts) == ("confirmed", 2)
    assert r.executed("M00000002") == ["credit"]
    # The DTU delivers the same write once more (a redelivery): the meter acknowledges, books nothing.
    answered = r.fleet.answered
    driver = Cjt188Driver(Cjt188Settings())
    frame = driver.encode(Command(CommandKind.CREDIT, "M00000002", "00000000000002", "again", Decimal("50"), 1))
    r.ingest.client.publish(f"{r.topic}/M00000002/down", frame, qos=1).wait_for_publish(5)
    wait_until(lambda: r.fleet.answered == answered + 1, 5, "the meter answered the repeated write")
    meter = r.meter("M00000002")
    assert (meter.credit, meter.purchased) == (Decimal("50.00"), Decimal("50.00"))
    assert r.executed("M00000002") == ["credit"]
    with r.store.connection() as conn:
        booked = conn.execute("SELECT count(*), sum(amount) FROM meter_credit").fetchone()
        mismatches = conn.execute("SELECT count(*) FROM meter_event WHERE kind = 'credit_mismatch'").fetchone()
    assert booked == (1, Decimal("50.00"))
    assert mismatches == (0,)
