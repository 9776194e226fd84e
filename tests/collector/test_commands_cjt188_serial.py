"""Valve and credit commands to CJ/T 188 meters on a polled RS-485 line, end to end through the collector:
command row → dispatcher → the poller that owns the line → `A017` / `A013` written once on a pseudo-terminal
where simulated meters answer → the answer (or, after a lost answer, a `901F` / `8105` read-back) in the
poller's batch → PostgreSQL. M-Bus meters take no such commands."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal

import pytest

from collector.service import CollectorService
from meterhub import commands
from meterhub.broker import BrokerAddress
from meterhub.command_settings import CommandSettings
from meterhub.store import Store
from simulators.serial_meters import Cjt188Bus, Cjt188Meter, MbusMeter, MbusSegment
from tests.collector.helpers import collector_settings, unique, wait_until
from tests.collector.poll_helpers import add_meters, meter_valve, poller_settings
from tests.meterhub.test_command_rules import add_users

FAST = CommandSettings(ack_timeout_s=1.5, sleepy_ack_timeout_s=3.0, read_timeout_s=3.0, sweep_s=0.2)
A1, A2 = "00000012345678", "00000012345679"


@dataclass
class Line:
    store: Store
    bus: Cjt188Bus
    meter_no: str  # at A1
    prepaid_no: str  # at A2
    collector: CollectorService

    def final(self, command_id: int, timeout: float = 20) -> commands.CommandView:
        wait_until(lambda: commands.get_command(self.store, command_id).final, timeout, f"command {command_id} final")
        return commands.get_command(self.store, command_id)

    def meter(self, address: str) -> Cjt188Meter:
        return self.bus.meters[address]


def _serial_bus(name: str, protocol: str, path: str) -> dict[str, object]:
    return {"name": name, "protocol": protocol, "device": path, "baudrate": 2400, "parity": "E"}


def _collector(
    store: Store, mqtt_broker: BrokerAddress, buses: list[dict[str, object]], devices: list[dict[str, object]]
) -> CollectorService:
    poller = poller_settings(buses, devices, interval_s=30.0, retries=1)  # routine polls stay out of the way
    settings = store.settings.model_copy(
        update={"collector": collector_settings(unique("cj")), "poller": poller, "commands": FAST}
    )
    return CollectorService(settings, store, mqtt_broker)


@pytest.fixture
def line(store: Store, mqtt_broker: BrokerAddress) -> Iterator[Line]:
    """Two CJ/T 188 meters on one simulated RS-485 line (2400 baud 8E1), the second one prepaid with a
    purchase sequence in step with the store's."""
    bus = Cjt188Bus([Cjt188Meter(A1), Cjt188Meter(A2, purchase_sequence=0, remaining_cny=Decimal("5.00"))]).start()
    meter_no, prepaid_no = add_meters(store, 2, "cjt188")
    with store.transaction(actor="setup") as conn:
        add_users(conn)
        conn.execute("UPDATE command_rule SET enabled = false")  # rules have their own tests
        conn.execute("UPDATE meter SET valve_state = 'open'")
        conn.execute("UPDATE meter SET prepaid = true WHERE meter_no = %s", [prepaid_no])
    devices: list[dict[str, object]] = [
        {"meter_no": meter_no, "bus": "rs485", "address": A1},
        {"meter_no": prepaid_no, "bus": "rs485", "address": A2},
    ]
    collector = _collector(store, mqtt_broker, [_serial_bus("rs485", "cjt188", bus.path)], devices)
    collector.start()
    try:
        assert collector.ingest.connected.wait(10)
        yield Line(store, bus, meter_no, prepaid_no, collector)
    finally:
        collector.stop()
        bus.stop()


def test_close_and_open_a_valve_on_the_serial_line(line: Line) -> None:
    close = commands.request_command(line.store, line.meter_no, "valve_close", user="alice", reason="arrears")
    done = line.final(close.id)
    assert (done.state, done.sent_kind, done.attempts) == ("confirmed", "valve_close", 1)
    assert done.reply is not None and (done.reply["di"], done.reply["valve"]) == ("A017", "closed")
    assert line.meter(A1).valve_closed is True
    wait_until(lambda: meter_valve(line.store, line.meter_no) == ("closed", "closed"), 10, "store says closed")

    reopen = commands.request_command(line.store, line.meter_no, "valve_open", user="alice", reason="paid")
    done = line.final(reopen.id)
    assert (done.state, done.sent_kind) == ("confirmed", "valve_open")  # CJ/T 188 has no arm: 55 opens
    assert line.meter(A1).valve_closed is False
    assert line.meter(A1).executed == ["valve_close", "valve_open"]
    assert line.meter(A2).executed == []
    wait_until(lambda: meter_valve(line.store, line.meter_no) == ("open", "open"), 10, "store says open")
    assert line.collector.poller is not None and line.collector.poller.stats["commands_run"] == 2


def test_a_lost_valve_answer_is_read_back_and_reconciled_never_repeated(line: Line) -> None:
    line.meter(A1).faults.script = deque(["no_answer"])  # the meter closes, its answer never arrives
    close = commands.request_command(line.store, line.meter_no, "valve_close", user="alice", reason="leak")
    done = line.final(close.id)
    assert (done.state, done.reason_code, done.attempts) == ("reconciled", "executed", 1)
    assert done.reply is not None and (done.reply["di"], done.reply["valve"]) == ("901F", "closed")
    assert str(done.reply["correlation_id"]).endswith(":r1")
    assert line.meter(A1).executed == ["valve_close"]  # written once: the state was read, not the write repeated
    wait_until(lambda: meter_valve(line.store, line.meter_no)[0] == "closed", 10, "store says closed")


def test_top_ups_are_written_with_their_purchase_sequence_and_counted_once(line: Line) -> None:
    first = commands.request_command(
        line.store, line.prepaid_no, "credit", user="alice", reason="counter", amount=Decimal("50")
    )
    assert first.purchase_seq == 1
    done = line.final(first.id)
    assert (done.state, done.attempts) == ("confirmed", 1)
    meter = line.meter(A2)
    assert (meter.purchase_sequence, meter.remaining_cny, meter.purchased_total_cny) == (
        1,
        Decimal("55.00"),
        Decimal("350.00"),
    )
    # The next answer is lost: the meter books the top-up, the dispatcher reads 8105 and sees sequence 2.
    meter.faults.script = deque(["no_answer"])
    second = commands.request_command(
        line.store, line.prepaid_no, "credit", user="alice", reason="counter", amount=Decimal("20")
    )
    done = line.final(second.id)
    assert (done.state, done.reason_code, done.attempts) == ("reconciled", "executed", 1)
    assert done.reply is not None and done.reply["di"] == "8105"
    assert meter.executed == ["credit", "credit"]
    assert meter.remaining_cny == Decimal("75.00")
    with line.store.connection() as conn:
        booked = conn.execute("SELECT purchase_seq, amount FROM meter_credit ORDER BY purchase_seq").fetchall()
    assert booked == [(1, Decimal("50.00")), (2, Decimal("20.00"))]


def test_a_refused_write_fails_with_the_meters_error(line: Line) -> None:
    line.meter(A1).valve_closed = True
    with line.store.transaction(actor="setup") as conn:
        conn.execute("UPDATE meter SET valve_state = 'closed' WHERE meter_no = %s", [line.meter_no])
    line.bus.dialect = replace(line.bus.dialect, valve_open_code=0x5A)  # a meter that does not know 55
    reopen = commands.request_command(line.store, line.meter_no, "valve_open", user="alice", reason="paid")
    done = line.final(reopen.id)
    assert (done.state, done.reason_code) == ("failed", "meter_refused")
    assert done.reply is not None and done.reply["write"] == "refused"
    assert line.meter(A1).executed == [] and line.meter(A1).valve_closed is True


def test_mbus_meters_take_no_valve_or_credit_commands(store: Store, mqtt_broker: BrokerAddress) -> None:
    segment = MbusSegment([MbusMeter(5, "12345678")]).start()
    [meter_no] = add_meters(store, 1, "mbus")
    with store.transaction(actor="setup") as conn:
        add_users(conn)
        conn.execute("UPDATE command_rule SET enabled = false")
    collector = _collector(
        store,
        mqtt_broker,
        [_serial_bus("mbus", "mbus", segment.path)],
        [{"meter_no": meter_no, "bus": "mbus", "address": "5"}],
    )
    collector.start()
    try:
        close = commands.request_command(store, meter_no, "valve_close", user="alice", reason="arrears")
        wait_until(lambda: commands.get_command(store, close.id).final, 15, "refused")
        done = commands.get_command(store, close.id)
        assert (done.state, done.reason_code, done.attempts) == ("failed", "unsupported", 0)
    finally:
        collector.stop()
        segment.stop()
