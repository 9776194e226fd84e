"""Valve commands to Modbus meters, end to end through the collector: command row → dispatcher → the poller
that owns the meter's bus → the profile's valve coil written on a Modbus TCP simulator and the valve state
read back → reply in the poller's batch → PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from collector.commands import CommandDispatcher
from collector.service import CollectorService
from drivers.base import ValveState
from meterhub import commands
from meterhub.broker import BrokerAddress
from meterhub.command_settings import CommandSettings
from meterhub.store import Store
from simulators.modbus_slave import ModbusSlave, SimulatedDevice
from tests.collector.helpers import collector_settings, unique, wait_until
from tests.collector.poll_helpers import add_meters, free_port, meter_valve, poller_settings, readings_count
from tests.meterhub.test_command_rules import add_users

FAST = CommandSettings(ack_timeout_s=1.5, sleepy_ack_timeout_s=3.0, read_timeout_s=3.0, sweep_s=0.2)
COIL_READ, COIL_WRITE = 1, 5


@dataclass
class Plant:
    store: Store
    device: SimulatedDevice
    meter_no: str
    neighbour_no: str
    collector: CollectorService

    def final(self, command_id: int, timeout: float = 20) -> commands.CommandView:
        wait_until(lambda: commands.get_command(self.store, command_id).final, timeout, f"command {command_id} final")
        return commands.get_command(self.store, command_id)

    def coil(self) -> bool:
        """The valve coil as the simulator holds it (coil 0 of generic_residential: on = open)."""
        return bool(self.device.read(COIL_READ, 0, 1)[0])

    def coil_writes(self) -> list[tuple[int, int, tuple[int, ...]]]:
        return [write for write in self.device.writes if write[0] == COIL_WRITE]


@pytest.fixture
def plant(store: Store, mqtt_broker: BrokerAddress, request: pytest.FixtureRequest) -> Iterator[Plant]:
    """A generic residential meter (valve coil 0, state in holding register 3) as unit 3 of a Modbus TCP
    simulator, polled by a collector whose dispatcher sends its commands. With the parameter "rtu" the
    simulator is an RTU-over-TCP gateway (a shared RS-485 line) with a flow computer beside the meter."""
    framer: Literal["socket", "rtu"] = getattr(request, "param", "socket")
    device = SimulatedDevice.shipped("generic_residential", unit=3, seed=1, speed=0)
    neighbour = SimulatedDevice.shipped("cn_flow_computer", unit=4, seed=2, speed=0)
    port = free_port()
    slave = ModbusSlave([device, neighbour], port=port, framer=framer).start()
    [meter_no, neighbour_no] = add_meters(store, 2, "modbus")
    with store.transaction(actor="setup") as conn:
        add_users(conn)
        conn.execute("UPDATE command_rule SET enabled = false")  # rules have their own tests
        conn.execute("UPDATE meter SET valve_state = 'open'")
    meter = {"meter_no": meter_no, "bus": "station", "address": "3", "profile": "generic_residential"}
    other = {"meter_no": neighbour_no, "bus": "station", "address": "4", "profile": "cn_flow_computer"}
    poller = poller_settings(
        [{"name": "station", "protocol": "modbus", "host": "127.0.0.1", "port": port, "framer": framer}],
        [meter, {**other, "interval_s": 0.3}],
        interval_s=30.0,  # the meter's routine poll stays out of the way: what moves its valve is the command
        retries=1,  # reads are retried; a write never is
    )
    settings = store.settings.model_copy(
        update={"collector": collector_settings(unique("mb")), "poller": poller, "commands": FAST}
    )
    collector = CollectorService(settings, store, mqtt_broker)
    collector.start()
    try:
        assert collector.ingest.connected.wait(10)
        yield Plant(store, device, meter_no, neighbour_no, collector)
    finally:
        collector.stop()
        slave.stop()


@pytest.mark.parametrize("plant", ["socket", "rtu"], indirect=True)
def test_close_and_open_a_valve_on_the_modbus_simulator_through_the_collector(plant: Plant) -> None:
    assert plant.coil() is True and plant.device.valve is ValveState.OPEN
    polls_before = readings_count(plant.store, plant.neighbour_no)
    close = commands.request_command(plant.store, plant.meter_no, "valve_close", user="alice", reason="arrears")
    done = plant.final(close.id)
    assert (done.state, done.sent_kind, done.attempts) == ("confirmed", "valve_close", 1)
    assert done.reply is not None and (done.reply["write"], done.reply["valve"]) == ("ok", "closed")
    assert plant.coil() is False and plant.device.valve is ValveState.CLOSED
    assert plant.coil_writes() == [(COIL_WRITE, 0, (0,))]
    wait_until(lambda: meter_valve(plant.store, plant.meter_no) == ("closed", "closed"), 10, "store says closed")

    reopen = commands.request_command(plant.store, plant.meter_no, "valve_open", user="alice", reason="paid")
    done = plant.final(reopen.id)
    assert (done.state, done.sent_kind, done.attempts) == ("confirmed", "valve_open", 1)  # this profile cannot arm
    assert done.reply is not None and done.reply["valve"] == "open"
    assert plant.coil() is True and plant.device.valve is ValveState.OPEN
    assert plant.coil_writes() == [(COIL_WRITE, 0, (0,)), (COIL_WRITE, 0, (1,))]
    wait_until(lambda: meter_valve(plant.store, plant.meter_no) == ("open", "open"), 10, "store says open")
    assert plant.collector.poller.stats["commands_run"] == 2
    # The bus kept polling the other device between the commands, one request at a time on its line.
    wait_until(lambda: readings_count(plant.store, plant.neighbour_no) > polls_before, 10, "neighbour polled")
    assert plant.collector.poller.counters.snapshot()["messages_rejected"] == 0


def test_a_write_whose_reply_is_lost_is_read_back_and_reconciled_never_repeated(plant: Plant) -> None:
    plant.device.drop_write_replies = 1  # the meter closes, but its answer never arrives
    close = commands.request_command(plant.store, plant.meter_no, "valve_close", user="alice", reason="arrears")
    done = plant.final(close.id)
    assert (done.state, done.reason_code, done.attempts) == ("reconciled", "executed", 1)
    assert done.reply is not None and done.reply["valve"] == "closed"
    assert str(done.reply["correlation_id"]).endswith(":r1")  # the read-back after the timeout
    assert plant.coil_writes() == [(COIL_WRITE, 0, (0,))]  # written once: the state was read, not the write repeated
    assert plant.device.valve is ValveState.CLOSED
    wait_until(lambda: meter_valve(plant.store, plant.meter_no)[0] == "closed", 10, "store says closed")


def test_a_polled_meter_no_collector_owns_waits_then_fails(store: Store) -> None:
    """A Modbus meter on a bus that no running poller owns: left queued for the collector that owns the bus,
    and failed with `no_poller` once it has waited read_timeout_s."""
    [meter_no] = add_meters(store, 1, "modbus")
    with store.transaction(actor="setup") as conn:
        add_users(conn)
        conn.execute("UPDATE command_rule SET enabled = false")
    published: list[Any] = []
    dispatcher = CommandDispatcher(
        store, FAST.model_copy(update={"read_timeout_s": 1.0}), [], lambda t, p: published.append((t, p))
    )
    close = commands.request_command(store, meter_no, "valve_close", user="alice", reason="arrears")
    dispatcher.run_once()
    assert commands.get_command(store, close.id).state == "queued"
    wait_until(lambda: (dispatcher.run_once(), commands.get_command(store, close.id).final)[1], 10, "gives up")
    done = commands.get_command(store, close.id)
    assert (done.state, done.reason_code, done.attempts) == ("failed", "no_poller", 0)
    assert published == []
