"""Polling throughput: Modbus TCP register-block reads/s, and serial bus utilisation with wire time.

    python bench/poll_modbus.py [--devices 100] [--seconds 20] [--database-url URL]

1. limit: raw pymodbus async clients, one per simulated device, reading the same block in a loop;
2. the poller: one collector process polling every device back to back (interval ~0), decoding
   with the device profile and writing readings to PostgreSQL;
3. serial: CJ/T 188 meters on a pseudo-terminal with wire time emulated at 9600 baud 8E1; the
   poller's exchanges/s against the line's theoretical rate (bytes of request and answer × 11 bits).

The Modbus simulators run in a separate process (`--serve`) so that they do not share our GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scratch_db import scratch_database
from collector.poll import Poller
from collector.poll_plan import build_plan
from drivers.cjt188 import codec as cjt188
from drivers.cjt188.settings import Workarounds
from drivers.transports.wire import char_bits
from meterhub.poller_settings import PollerSettings
from meterhub.settings import load_settings
from meterhub.store import Store
from simulators.modbus_slave import ModbusSlave, SimulatedDevice
from simulators.serial_meters import Cjt188Bus, Cjt188Meter

PROFILE = "generic_residential"


async def serve(devices: int, base_port: int) -> None:
    servers = []
    for i in range(devices):
        slave = ModbusSlave([SimulatedDevice.shipped(PROFILE, unit=1, seed=i)], port=base_port + i)
        server = slave.build_server()
        await server.serve_forever(background=True)
        servers.append(server)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def raw_client_rate(devices: int, base_port: int, seconds: float) -> float:
    from pymodbus.client import AsyncModbusTcpClient

    clients = [AsyncModbusTcpClient("127.0.0.1", port=base_port + i, timeout=2, retries=0) for i in range(devices)]
    for client in clients:
        await client.connect()
    count = 0
    deadline = time.monotonic() + seconds

    async def loop(client: AsyncModbusTcpClient) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await client.read_holding_registers(0, count=5, device_id=1)
            count += 1

    started = time.monotonic()
    await asyncio.gather(*(loop(c) for c in clients))
    elapsed = time.monotonic() - started
    for client in clients:
        client.close()
    return count / elapsed


def poller_rate(store: Store, settings: PollerSettings, seconds: float) -> tuple[float, dict[str, Any]]:
    poller = Poller(settings, store, build_plan(settings))
    poller.start()
    time.sleep(1.0)  # connect and warm up
    before = poller.stats["polls_ok"]
    started = time.monotonic()
    time.sleep(seconds)
    polls = poller.stats["polls_ok"] - before
    elapsed = time.monotonic() - started
    poller.stop()
    return polls / elapsed, {**poller.counters.snapshot(), **poller.stats}


def add_meters(store: Store, count: int, driver_key: str) -> list[str]:
    numbers = [f"B{driver_key}{n:06d}" for n in range(count)]
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO meter (meter_no, driver_key, status) SELECT unnest(%s::text[]), %s, 'installed'",
            [numbers, driver_key],
        )
    return numbers


def modbus_part(store: Store, args: argparse.Namespace, results: dict[str, Any]) -> None:
    base_port = args.base_port
    simulators = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(args.devices), "--base-port", str(base_port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert simulators.stdout is not None
        assert simulators.stdout.readline().strip() == "ready"
        results["modbus_raw_pymodbus_reads_per_s"] = round(
            asyncio.run(raw_client_rate(args.devices, base_port, args.seconds))
        )
        meters = add_meters(store, args.devices, "modbus")
        settings = PollerSettings(
            interval_s=0.0001,
            jitter=0,
            timeout_s=2,
            retries=0,
            bus=[
                {"name": f"d{i}", "protocol": "modbus", "host": "127.0.0.1", "port": base_port + i}
                for i in range(args.devices)
            ],
            device=[
                {"meter_no": meter, "bus": f"d{i}", "address": "1", "profile": PROFILE}
                for i, meter in enumerate(meters)
            ],
        )
        rate, counters = poller_rate(store, settings, args.seconds)
        results["modbus_poller_reads_per_s"] = round(rate)  # one register block per poll for this profile
        results["modbus_poller_vs_raw"] = round(rate / results["modbus_raw_pymodbus_reads_per_s"], 3)
        results["modbus_poller_readings_stored"] = counters["readings_stored"]
        results["modbus_poller_failed_polls"] = counters.get("polls_failed", 0)
    finally:
        simulators.terminate()
        simulators.wait(10)


def serial_part(store: Store, args: argparse.Namespace, results: dict[str, Any]) -> None:
    baud, meters_on_line, preamble = 9600, 8, 2
    addresses = [f"{n:014d}" for n in range(1, meters_on_line + 1)]
    bus = Cjt188Bus([Cjt188Meter(a) for a in addresses], baudrate=baud, preamble=preamble).start()
    meters = add_meters(store, meters_on_line, "cjt188")
    settings = PollerSettings(
        interval_s=0.0001,
        jitter=0,
        timeout_s=1,
        retries=0,
        bus=[{"name": "rs485", "protocol": "cjt188", "device": bus.path, "baudrate": baud, "preamble": preamble}],
        device=[{"meter_no": m, "bus": "rs485", "address": a} for m, a in zip(meters, addresses, strict=True)],
    )
    try:
        rate, counters = poller_rate(store, settings, args.seconds)
    finally:
        bus.stop()
    results["serial_failed_polls"] = counters.get("polls_failed", 0)
    results["serial_rejected_frames"] = counters["messages_rejected"]
    request = len(cjt188.encode_read(addresses[0], cjt188.DI_METERING, 1, Workarounds(preamble=preamble)))
    answer = preamble + 13 + 3 + cjt188.METERING_LEN  # FE…, header + CS + 16, DI + SER, 901F data
    wire_s = (request + answer) * char_bits(8, "E", 1) / baud
    results["serial_baud"] = baud
    results["serial_bytes_per_exchange"] = request + answer
    results["serial_theoretical_exchanges_per_s"] = round(1 / wire_s, 2)
    results["serial_poller_exchanges_per_s"] = round(rate, 2)
    results["serial_utilisation"] = round(rate * wire_s, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--base-port", type=int, default=26000)
    parser.add_argument("--database-url", help="a server where the benchmark may create a database of its own")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.base_port))
        return

    workdir = Path(tempfile.mkdtemp(prefix="meterhub-bench-"))
    with scratch_database(args.database_url, workdir) as url:
        settings = load_settings(None, database={"url": url, "pool_min": 1, "pool_max": 4}, data_dir=workdir)
        results: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "command": " ".join(["python", *sys.argv]),
            "devices": args.devices,
            "seconds": args.seconds,
        }
        with Store(settings) as store:
            store.migrate()
            modbus_part(store, args, results)
            serial_part(store, args, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
