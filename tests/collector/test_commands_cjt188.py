"""Valve and credit commands to CJ/T 188 meters behind DTUs, over MQTT: frames go to the DTU's down topic,
replies come back on its up topic without a correlation id and are matched to the meter's command."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from collector.commands import CommandDispatcher
from collector.mqtt import MqttIngest
from collector.routes import build_routes
from drivers.base import Command, CommandKind
from drivers.cjt188.driver import Cjt188Driver, Cjt188Settings, ser_for
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
        self,
        store: Store,
        broker: BrokerAddress,
        meters: int,
        settings: CommandSettings,
        append_status: bool,
        route_settings: dict[str, Any] | None = None,
        push_hex: bool = True,
        dtu_encoding: str | None = None,
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
            settings={"topic": f"{topic}/+/up", **(route_settings or {})},
            response_topic=f"{topic}/{{1}}/down",
        )
        config = collector_settings(topic, routes=[route])
        self.ingest = MqttIngest(broker, config, store, build_routes(config.routes))
        client = self.ingest.client
        self.dispatcher = CommandDispatcher(
            store,
            settings,
            self.ingest.routes,
            lambda t, p: client.publish(t, p, qos=1),
            uplink_encodings=self.ingest.uplink_encodings,
        )
        self.ingest.on_uplink = self.dispatcher.on_uplink
        self.ingest.start()
        assert self.ingest.connected.wait(10)
        self.dispatcher.start()
        fleet = Fleet(meters, cjt188_push(topic, as_hex=push_hex))
        self.fleet = Cjt188FleetRunner(
            fleet, broker.host, broker.port, prefix=topic, append_status=append_status, downlink_encoding=dtu_encoding
        )
        self.fleet.client.loop_start()
        wait_until(lambda: self.fleet.client.is_connected(), 10, "simulator connected")


@pytest.fixture
def rig(store: Store, mqtt_broker: BrokerAddress) -> Iterator[Any]:
    made: list[Cjt188Rig] = []

    def make(meters: int = 2, settings: CommandSettings = FAST, append_status: bool = True, **kw: Any) -> Cjt188Rig:
        made.append(Cjt188Rig(store, mqtt_broker, meters, settings, append_status, **kw))
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


def correlation_id(store: Store, command_id: int) -> str:
    with store.connection() as conn:
        row = conn.execute("SELECT correlation_id FROM meter_command WHERE id = %s", [command_id]).fetchone()
    assert row is not None
    return str(row[0])


def meter_id(store: Store, meter_no: str) -> int:
    with store.connection() as conn:
        row = conn.execute("SELECT id FROM meter WHERE meter_no = %s", [meter_no]).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("encoding", ["hex", "binary"])
def test_downlinks_go_in_the_encoding_of_the_meters_uplinks(rig: Any, encoding: str) -> None:
    r = rig(push_hex=encoding == "hex", dtu_encoding=encoding)  # a DTU that understands only its own form
    r.fleet.uplink("M00000001")
    wanted = meter_id(r.store, "M00000001")
    wait_until(lambda: r.ingest.uplink_encodings.get(wanted) == encoding, 10, "the collector heard the meter")
    close = commands.request_command(r.store, "M00000001", "valve_close", user="alice", reason="arrears")
    done = r.final(close.id)
    assert (done.state, done.attempts) == ("confirmed", 1)
    assert r.executed("M00000001") == ["valve_close"]
    assert len(r.fleet.downlinks) == 2 and set(r.fleet.downlinks) == {encoding}  # the push's ack, the command


def test_the_routes_downlink_encoding_wins_over_the_uplinks(rig: Any) -> None:
    r = rig(route_settings={"downlink_encoding": "hex"}, push_hex=False, dtu_encoding="hex")
    close = commands.request_command(r.store, "M00000001", "valve_close", user="alice", reason="arrears")
    done = r.final(close.id)  # nothing heard from the meter yet: the route says hex
    assert (done.state, done.attempts) == ("confirmed", 1)
    r.fleet.uplink("M00000001")  # a binary push: its ack goes down as hex text too
    wait_until(lambda: len(r.fleet.downlinks) == 2, 10, "the push acknowledged")
    assert r.fleet.downlinks == ["hex", "hex"]
    assert r.executed("M00000001") == ["valve_close"]


@pytest.mark.parametrize("fault", ["other_ser", "other_di"])
def test_a_reply_to_another_request_is_ignored_and_the_meter_read_back(
    rig: Any, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    r = rig()
    r.fleet.misreply["M00000001"] = [fault]  # the meter closes, but answers with another SER or DI
    with caplog.at_level(logging.WARNING, logger="collector.commands"):
        close = commands.request_command(r.store, "M00000001", "valve_close", user="alice", reason="arrears")
        done = r.final(close.id)
    cid = correlation_id(r.store, close.id)
    assert (done.state, done.reason_code, done.attempts) == ("reconciled", "executed", 1)  # not "confirmed"
    # The evidence is the 901F read-back (or the valve state the meter reported), never the stray reply.
    assert done.reply is None or (done.reply["di"], done.reply["ser"]) == ("901F", ser_for(f"{cid}:r1"))
    ignored = [rec for rec in caplog.records if rec.getMessage().startswith("reply ignored")]
    assert ignored, "the stray reply is logged"
    stray: dict[str, Any] = ignored[0].reply  # type: ignore[attr-defined]
    sent_ser = ser_for(cid)
    expected = ("A017", (sent_ser + 1) & 0xFF) if fault == "other_ser" else ("901F", sent_ser)
    assert (stray["di"], stray["ser"]) == expected
    assert r.executed("M00000001") == ["valve_close"]
    wait_until(lambda: r.valve_state("M00000001") == "closed", 10, "meter closed")


def test_the_purchase_sequence_wraps_on_the_wire_and_keeps_growing_in_the_store(rig: Any) -> None:
    r = rig()
    with r.store.transaction(actor="setup") as conn:
        conn.execute("UPDATE meter SET prepaid = true WHERE meter_no = 'M00000002'")
        conn.execute(
            "INSERT INTO meter_purchase_seq (meter_id, last_seq) SELECT id, 255 FROM meter WHERE meter_no = 'M00000002'"
        )
    meter = r.meter("M00000002")
    meter.purchase_seq = 255  # 255 top-ups so far: the one-byte sequence is at its end
    first = commands.request_command(r.store, "M00000002", "credit", user="alice", reason="kiosk", amount=Decimal(50))
    assert first.purchase_seq == 256
    done = r.final(first.id)
    assert (done.state, done.attempts) == ("confirmed", 1)
    assert meter.purchase_seq == 0  # 256 went out as 0, and the meter took it as newer than 255
    r.fleet.lose_requests["M00000002"] = 1  # the next write never reaches the meter
    second = commands.request_command(r.store, "M00000002", "credit", user="alice", reason="kiosk", amount=Decimal(20))
    assert second.purchase_seq == 257
    done = r.final(second.id)  # unknown → 8105 read back: sequence 0 is before 257 (wire 1) → sent again
    assert (done.state, done.attempts) == ("confirmed", 2)
    assert (meter.purchase_seq, meter.credit, meter.purchased) == (1, Decimal("70.00"), Decimal("70.00"))
    assert r.executed("M00000002") == ["credit", "credit"]
    with r.store.connection() as conn:
        booked = conn.execute("SELECT purchase_seq, amount FROM meter_credit ORDER BY purchase_seq").fetchall()
        last = conn.execute("SELECT last_seq FROM meter_purchase_seq").fetchone()
    assert booked == [(256, Decimal("50.00")), (257, Decimal("20.00"))]
    assert last == (257,)
