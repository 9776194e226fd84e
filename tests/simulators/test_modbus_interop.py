"""Our Modbus simulator against a standard master (Debian's mbpoll), and Modbus RTU on a serial line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.base import ValveState
from meterhub.store import Store
from simulators.modbus_slave import ModbusSlave, SimulatedDevice
from tests.collector.helpers import wait_until
from tests.collector.poll_helpers import (
    add_meters,
    free_port,
    latest,
    poller_settings,
    readings_count,
    rejected,
    running_poller,
)

REQUIRE = os.environ.get("METERHUB_REQUIRE_SERVICES") == "1"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install {name})"
        if REQUIRE:
            pytest.fail(message + " and METERHUB_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(message)
    return path


def mbpoll(*args: str) -> dict[int, int]:
    """Run mbpoll once; the values it printed by reference number."""
    done = subprocess.run([tool("mbpoll"), "-1", *args], capture_output=True, text=True, timeout=20, check=True)
    return {int(ref): int(value) for ref, value in re.findall(r"^\[(\d+)\]:\s+(-?\d+)", done.stdout, re.M)}


@pytest.fixture
def tcp_slave() -> Iterator[tuple[int, SimulatedDevice]]:
    values = {"volume_m3": Decimal("560.123"), "battery_v": Decimal("3.456")}
    device = SimulatedDevice.shipped("generic_residential", unit=3, speed=0, values=values)
    port = free_port()
    slave = ModbusSlave([device], port=port).start()
    yield port, device
    slave.stop()


def test_mbpoll_reads_the_registers_the_profile_describes(tcp_slave: tuple[int, SimulatedDevice]) -> None:
    port, _ = tcp_slave
    values = mbpoll("-m", "tcp", "-p", str(port), "-a", "3", "-t", "4", "-r", "1", "-c", "5", "127.0.0.1")
    # 560.123 m³ = 560123 L as uint32 big-endian words; 3456 mV; valve 0 = open; no alarm bits
    assert values == {1: 560123 >> 16, 2: 560123 & 0xFFFF, 3: 3456, 4: 0, 5: 0}


def test_mbpoll_closes_the_valve_through_the_coil(tcp_slave: tuple[int, SimulatedDevice]) -> None:
    port, device = tcp_slave
    subprocess.run(
        [tool("mbpoll"), "-m", "tcp", "-p", str(port), "-a", "3", "-t", "0", "-r", "1", "127.0.0.1", "0"],
        capture_output=True,
        timeout=20,
        check=True,
    )
    assert device.valve is ValveState.CLOSED
    assert mbpoll("-m", "tcp", "-p", str(port), "-a", "3", "-t", "4", "-r", "4", "127.0.0.1") == {4: 1}


@pytest.fixture
def serial_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two pseudo-terminals joined by socat: a null-modem cable."""
    a, b = tmp_path / "slave", tmp_path / "master"
    process = subprocess.Popen(
        [tool("socat"), f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while not (a.exists() and b.exists()) and time.monotonic() < deadline:
        time.sleep(0.02)
    yield str(a), str(b)
    process.terminate()
    process.wait(5)


def test_modbus_rtu_on_a_serial_line_into_the_store(store: Store, serial_pair: tuple[str, str]) -> None:
    slave_end, master_end = serial_pair
    devices = [
        SimulatedDevice.shipped("sick_flowsic500", unit=1, seed=5, speed=0),
        SimulatedDevice.shipped("generic_residential", unit=2, seed=6, speed=0),
    ]
    slave = ModbusSlave(devices, serial_device=slave_end, baudrate=38400).start()
    meters = add_meters(store, 2, "modbus")
    settings = poller_settings(
        [{"name": "rtu", "protocol": "modbus", "device": master_end, "baudrate": 38400, "parity": "N"}],
        [
            {"meter_no": meters[0], "bus": "rtu", "address": "1", "profile": "sick_flowsic500"},
            {"meter_no": meters[1], "bus": "rtu", "address": "2", "profile": "generic_residential"},
        ],
        timeout_s=1.0,
    )
    try:
        with running_poller(store, settings):
            wait_until(lambda: all(readings_count(store, m) >= 1 for m in meters), 20, "both RTU devices read")
    finally:
        slave.stop()
    for meter, device in zip(meters, devices, strict=True):
        published = {p.channel for p in device.profile.points if p.publish}
        assert latest(store, meter) == {channel: device.values[channel] for channel in published}


def test_modbus_rtu_bad_crc_on_a_serial_line_is_dead_lettered(store: Store, serial_pair: tuple[str, str]) -> None:
    slave_end, master_end = serial_pair
    device = SimulatedDevice.shipped("sick_flowsic500", unit=1, seed=5, speed=0, faults=deque(["none", "bad_crc"]))
    slave = ModbusSlave([device], serial_device=slave_end, baudrate=38400).start()
    [meter] = add_meters(store, 1, "modbus")
    settings = poller_settings(
        [{"name": "rtu", "protocol": "modbus", "device": master_end, "baudrate": 38400, "parity": "N"}],
        [{"meter_no": meter, "bus": "rtu", "address": "1", "profile": "sick_flowsic500"}],
        timeout_s=1.0,
        retries=1,
    )
    try:
        with running_poller(store, settings) as poller:
            wait_until(lambda: readings_count(store, meter) >= 1, 20, "a reading after the bad CRC")
            wait_until(lambda: rejected(store), 5, "the bad frame dead-lettered")
    finally:
        slave.stop()
    [bad] = device.corrupted
    assert rejected(store) == [("bad_crc", bad, f"modbus:{master_end}/1")]
    published = {p.channel for p in device.profile.points if p.publish}
    assert latest(store, meter) == {channel: device.values[channel] for channel in published}
    assert poller.stats["polls_failed"] == 0
