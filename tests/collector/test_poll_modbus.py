"""Modbus devices → real TCP sockets → poller → PostgreSQL, for every shipped profile."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.profile import load_profile, shipped_profiles
from drivers.transports.modbus import ModbusLink
from meterhub.store import Store
from simulators.modbus_slave import ModbusSlave, SimulatedDevice
from tests.collector.helpers import wait_until
from tests.collector.poll_helpers import (
    add_meters,
    events,
    free_port,
    latest,
    meter_valve,
    poller_settings,
    readings_count,
    rejected,
    running_poller,
)

PROFILES = shipped_profiles()


@pytest.fixture(params=["pymodbus", "lean"])
def plant(request: pytest.FixtureRequest) -> Iterator[tuple[int, list[SimulatedDevice]]]:
    """One simulated device per shipped profile behind one Modbus TCP endpoint, unit ids 1…n: pymodbus'
    server (an implementation not ours) and the simulators' lean one (what the benchmark polls)."""
    devices = [SimulatedDevice.shipped(name, unit=i + 1, seed=i, speed=0) for i, name in enumerate(PROFILES)]
    port = free_port()
    slave = ModbusSlave(devices, port=port, server=request.param).start()
    yield port, devices
    slave.stop()


def test_every_shipped_profile_is_read_into_the_store_exactly(
    store: Store, plant: tuple[int, list[SimulatedDevice]]
) -> None:
    port, devices = plant
    meters = add_meters(store, len(devices), "modbus")
    settings = poller_settings(
        [{"name": "plant", "protocol": "modbus", "host": "127.0.0.1", "port": port}],
        [
            {"meter_no": meter, "bus": "plant", "address": str(device.unit), "profile": name}
            for meter, device, name in zip(meters, devices, PROFILES, strict=True)
        ],
    )
    with running_poller(store, settings) as poller:
        wait_until(lambda: all(readings_count(store, m) >= 1 for m in meters), 20, "a reading of every meter")
    for meter, device in zip(meters, devices, strict=True):
        stored = latest(store, meter)
        published = {p.channel for p in device.profile.points if p.publish}
        assert stored == {channel: device.values[channel] for channel in published}, device.profile.name
    assert poller.counters.snapshot()["messages_rejected"] == 0
    residential = meters[PROFILES.index("generic_residential")]
    assert meter_valve(store, residential)[1] == "open"


def test_values_evolve_and_a_valve_written_on_the_coil_is_read_back(store: Store) -> None:
    device = SimulatedDevice.shipped("generic_residential", unit=7, seed=3, speed=3600.0)
    port = free_port()
    slave = ModbusSlave([device], port=port).start()
    [meter] = add_meters(store, 1, "modbus")
    settings = poller_settings(
        [{"name": "home", "protocol": "modbus", "host": "127.0.0.1", "port": port}],
        [{"meter_no": meter, "bus": "home", "address": "7", "profile": "generic_residential"}],
        interval_s=0.3,
    )
    try:
        with running_poller(store, settings):
            wait_until(lambda: readings_count(store, meter) >= 3, 20, "three polls")
            with store.connection() as conn:
                volumes = [
                    r[0] for r in conn.execute("SELECT value FROM reading WHERE channel='volume_m3' ORDER BY ts")
                ]
            assert volumes == sorted(volumes) and volumes[-1] > volumes[0], "gas flowed while the valve was open"

            async def close_valve() -> None:
                link = ModbusLink(host="127.0.0.1", port=port)
                await link.write(5, 0, [0], unit=7)  # coil 0 off = close
                link.close()

            asyncio.run(close_valve())
            wait_until(lambda: meter_valve(store, meter) == ("closed", "closed"), 10, "the closed valve in the store")
    finally:
        slave.stop()


def test_a_silent_device_goes_offline_without_holding_up_its_bus(store: Store) -> None:
    alive = SimulatedDevice.shipped("generic_residential", unit=1, speed=0)
    dead = SimulatedDevice.shipped("generic_residential", unit=2, speed=0, silent=True)
    port = free_port()
    slave = ModbusSlave([alive, dead], port=port).start()
    meters = add_meters(store, 2, "modbus")
    devices = [
        {"meter_no": meters[0], "bus": "gw", "address": "1", "profile": "generic_residential"},
        {"meter_no": meters[1], "bus": "gw", "address": "2", "profile": "generic_residential"},
    ]
    settings = poller_settings(
        [{"name": "gw", "protocol": "modbus", "host": "127.0.0.1", "port": port}],
        devices,
        interval_s=0.25,
        timeout_s=0.3,
        offline_after=2,
    )
    try:
        with running_poller(store, settings) as poller:
            started = time.monotonic()
            wait_until(lambda: events(store, "offline"), 15, "an offline event")
            wait_until(lambda: readings_count(store, meters[0]) >= 8, 15, "the live meter keeps being read")
            elapsed = time.monotonic() - started
    finally:
        slave.stop()
    [(meter, detail)] = events(store, "offline")
    assert meter == meters[1] and detail["failures"] == 2
    # Every 0.25 s the live meter is due; the dead one costs its 0.3 s timeout and then backs off.
    assert readings_count(store, meters[0]) / elapsed >= 1.5
    assert poller.devices[meters[1]].offline


def test_rtu_answer_with_a_bad_crc_is_dead_lettered_and_the_retry_is_stored(store: Store) -> None:
    """RTU over TCP (a serial gateway): the corrupted answer is kept byte for byte, the retry succeeds at once."""
    device = SimulatedDevice.shipped("generic_residential", unit=4, speed=0, faults=deque(["bad_crc"]))
    port = free_port()
    slave = ModbusSlave([device], port=port, framer="rtu").start()
    [meter] = add_meters(store, 1, "modbus")
    settings = poller_settings(
        [{"name": "gw", "protocol": "modbus", "host": "127.0.0.1", "port": port, "framer": "rtu"}],
        [{"meter_no": meter, "bus": "gw", "address": "4", "profile": "generic_residential"}],
        retries=1,
        timeout_s=5.0,  # a bad CRC must not cost the timeout
    )
    try:
        with running_poller(store, settings) as poller:
            started = time.monotonic()
            wait_until(lambda: readings_count(store, meter) >= 1, 4, "a reading after the bad CRC")
            wait_until(lambda: rejected(store), 5, "the bad frame dead-lettered")
    finally:
        slave.stop()
    assert time.monotonic() - started < 4
    [bad] = device.corrupted
    assert rejected(store) == [("bad_crc", bad, f"modbus:127.0.0.1:{port}/4")]
    assert bad[0] == 4 and bad[1] == 3, "unit 4, read holding registers"
    assert latest(store, meter)["volume_m3"] == device.values["volume_m3"]
    assert poller.stats["polls_failed"] == 0


def test_reads_a_slave_that_is_not_ours(store: Store) -> None:
    """pymodbus' own server with a plain register block whose values the test sets."""
    registers = [0x0001, 0xE240, 3412, 1, 0]  # 123456 L, 3.412 V, valve closed, no alarms
    device = SimDevice(9, simdata=[SimData(0, values=registers, datatype=DataType.REGISTERS)])
    port = free_port()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def serve() -> ModbusTcpServer:
        server = ModbusTcpServer(device, address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        return server

    server = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    [meter] = add_meters(store, 1, "modbus")
    settings = poller_settings(
        [{"name": "foreign", "protocol": "modbus", "host": "127.0.0.1", "port": port}],
        [{"meter_no": meter, "bus": "foreign", "address": "9", "profile": "generic_residential"}],
    )
    try:
        with running_poller(store, settings):
            wait_until(lambda: readings_count(store, meter) >= 1, 15, "a reading from the foreign slave")
    finally:
        asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert latest(store, meter) == {"volume_m3": Decimal("123.456"), "battery_v": Decimal("3.412")}
    assert meter_valve(store, meter) == ("closed", "closed")


def test_an_exception_answer_is_dead_lettered_and_the_device_stays_online(store: Store) -> None:
    """A device that refuses a read (exception 06, busy): the answer is kept byte for byte, the poll counts as
    answered (the device is there), and the next poll is stored."""
    device = SimulatedDevice.shipped("generic_residential", unit=5, speed=0, refuse_reads=2)
    port = free_port()
    slave = ModbusSlave([device], port=port).start()
    [meter] = add_meters(store, 1, "modbus")
    settings = poller_settings(
        [{"name": "gw", "protocol": "modbus", "host": "127.0.0.1", "port": port}],
        [{"meter_no": meter, "bus": "gw", "address": "5", "profile": "generic_residential"}],
        interval_s=0.2,
        retries=2,  # an exception answer is not retried: the device answered
        offline_after=1,
    )
    try:
        with running_poller(store, settings) as poller:
            wait_until(lambda: readings_count(store, meter) >= 1, 15, "a reading after the refusals")
            wait_until(lambda: len(rejected(store)) >= 2, 5, "both refusals dead-lettered")
    finally:
        slave.stop()
    refusals = rejected(store)
    assert [reason for reason, _, _ in refusals] == ["modbus_exception", "modbus_exception"]
    for _, raw, source in refusals:
        assert raw[6:] == bytes([5, 0x83, 0x06]), "MBAP header, unit 5, exception 06 to function 03"
        assert source == f"modbus:127.0.0.1:{port}/5"
    assert device.refuse_reads == 0
    assert not events(store, "offline")
    assert poller.stats["polls_failed"] == 0
    assert latest(store, meter)["volume_m3"] == device.values["volume_m3"]


PIPELINED = """
[device]
name = "three blocks"
function = "holding"
max_gap = 0
max_in_flight = {in_flight}

[[points]]
channel = "volume_m3"
address = 0
type = "uint32"
scale = "0.001"

[[points]]
channel = "pressure_bar"
address = 100
type = "uint16"
scale = "0.001"

[[points]]
channel = "temperature_c"
address = 200
type = "int16"
scale = "0.01"
"""


@pytest.mark.parametrize("in_flight", [1, 3])
def test_a_profile_that_allows_it_has_its_blocks_read_in_flight_together(
    store: Store, tmp_path: Path, in_flight: int
) -> None:
    path = tmp_path / "pipelined.toml"
    path.write_text(PIPELINED.format(in_flight=in_flight))
    device = SimulatedDevice(load_profile(str(path)), unit=2, speed=0, delay_s=0.1)  # answers come late
    port = free_port()
    slave = ModbusSlave([device], port=port, server="lean").start()
    [meter] = add_meters(store, 1, "modbus")
    settings = poller_settings(
        [{"name": "tcp", "protocol": "modbus", "host": "127.0.0.1", "port": port}],
        [{"meter_no": meter, "bus": "tcp", "address": "2", "profile": str(path)}],
        interval_s=0.2,
    )
    try:
        with running_poller(store, settings):
            wait_until(lambda: readings_count(store, meter) >= 2, 15, "two polls")
    finally:
        slave.stop()
    assert slave._server.max_in_flight == in_flight  # one block per request, all of a poll's at once when allowed
    assert latest(store, meter) == {channel: device.values[channel] for channel in device.values}
