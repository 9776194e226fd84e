"""Polling throughput: Modbus TCP register-block reads/s, and serial bus utilisation with wire time.

    python bench/poll_modbus.py [--devices 100] [--seconds 20] [--repeat 1] [--no-serial] [--database-url URL]

1. limit: raw pymodbus async clients, one per simulated device, reading the same block in a loop;
2. our client (drivers.transports.modbus.ModbusLink), the same bare loop;
3. the poller: one collector process polling every device back to back (interval ~0), reading with
   our client, decoding with the device profile and writing readings to PostgreSQL;
   the three are measured `--repeat` times in turn, against the same simulators, each with the CPU
   time this process spent per read (the simulators run in another process);
4. serial: CJ/T 188 meters on a pseudo-terminal with wire time emulated at 9600 baud 8E1; the
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scratch_db import scratch_database
from collector.poll import Poller
from collector.poll_plan import build_plan
from drivers.cjt188 import codec as cjt188
from drivers.cjt188.settings import Workarounds
from drivers.transports.modbus import ModbusLink
from drivers.transports.wire import char_bits
from meterhub.poller_settings import PollerSettings
from meterhub.settings import load_settings
from meterhub.store import Store
from simulators.modbus_slave import ModbusSlave, SimulatedDevice
from simulators.serial_meters import Cjt188Bus, Cjt188Meter

PROFILE = "generic_residential"


async def serve(devices: int, base_port: int, server: Literal["pymodbus", "lean"]) -> None:
    servers = []
    for i in range(devices):
        slave = ModbusSlave([SimulatedDevice.shipped(PROFILE, unit=1, seed=i)], port=base_port + i, server=server)
        built = slave.build_server()
        await built.serve_forever(background=True)
        servers.append(built)
    print("ready", flush=True)
    await asyncio.Event().wait()


@dataclass
class Rate:
    reads: int
    seconds: float
    cpu_s: float

    @property
    def per_s(self) -> float:
        return self.reads / self.seconds

    @property
    def cpu_us(self) -> float:
        """CPU time of this process per read, µs (all its threads)."""
        return self.cpu_s / max(self.reads, 1) * 1e6


async def bare_loop_rate(clients: list[Any], read: Any, seconds: float) -> Rate:
    """Each client reads the 5-register block of unit 1 back to back for `seconds`."""
    count = 0
    deadline = time.monotonic() + seconds

    async def loop(client: Any) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await read(client)
            count += 1

    started, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(loop(c) for c in clients))
    return Rate(count, time.monotonic() - started, time.process_time() - cpu)


async def pymodbus_rate(devices: int, base_port: int, seconds: float) -> Rate:
    from pymodbus.client import AsyncModbusTcpClient

    clients = [AsyncModbusTcpClient("127.0.0.1", port=base_port + i, timeout=2, retries=0) for i in range(devices)]
    for client in clients:
        await client.connect()
    try:
        return await bare_loop_rate(clients, lambda c: c.read_holding_registers(0, count=5, device_id=1), seconds)
    finally:
        for client in clients:
            client.close()


async def own_client_rate(devices: int, base_port: int, seconds: float) -> Rate:
    links = [ModbusLink(host="127.0.0.1", port=base_port + i, timeout_s=2) for i in range(devices)]
    for link in links:
        await link.connect()
    try:
        return await bare_loop_rate(links, lambda link: link.read(3, 0, 5, 1), seconds)
    finally:
        for link in links:
            link.close()


def machine_cpu() -> tuple[int, int]:
    """Busy and total jiffies of all CPUs so far (Linux /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    return (after[0] - before[0]) / max(after[1] - before[1], 1)


def process_cpu_s(pid: int) -> float:
    """User and system CPU time of another process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def poller_rate(store: Store, settings: PollerSettings, seconds: float) -> tuple[Rate, dict[str, Any]]:
    poller = Poller(settings, store, build_plan(settings))
    poller.start()
    time.sleep(1.0)  # connect and warm up
    before = poller.stats["polls_ok"]
    started, cpu, machine = time.monotonic(), time.process_time(), machine_cpu()
    time.sleep(seconds)
    polls = poller.stats["polls_ok"] - before
    rate = Rate(polls, time.monotonic() - started, time.process_time() - cpu)
    busy = busy_share(machine, machine_cpu())
    poller.stop()
    return rate, {**poller.counters.snapshot(), **poller.stats, "machine_busy": busy}


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
        [
            sys.executable,
            __file__,
            "--serve",
            str(args.devices),
            "--base-port",
            str(base_port),
            "--server",
            args.server,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert simulators.stdout is not None
        assert simulators.stdout.readline().strip() == "ready"
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
        runs = []
        for _ in range(args.repeat):
            load = os.getloadavg()[0]
            served = [process_cpu_s(simulators.pid)]
            limit = asyncio.run(pymodbus_rate(args.devices, base_port, args.seconds))
            served.append(process_cpu_s(simulators.pid))
            own = asyncio.run(own_client_rate(args.devices, base_port, args.seconds))
            served.append(process_cpu_s(simulators.pid))
            poller, counters = poller_rate(store, settings, args.seconds)  # one register block per poll
            served.append(process_cpu_s(simulators.pid))
            reads = limit.reads + own.reads + poller.reads  # the simulators' share, over the three (poller's
            server_us = (served[-1] - served[0]) / reads * 1e6  # warm-up second included: an upper bound)
            runs.append(
                {
                    "load_1min_before": round(load, 2),
                    "pymodbus_bare_reads_per_s": round(limit.per_s),
                    "own_client_bare_reads_per_s": round(own.per_s),
                    "poller_reads_per_s": round(poller.per_s),
                    "poller_vs_pymodbus_bare": round(poller.per_s / limit.per_s, 3),
                    "cpu_us_per_read": {
                        "pymodbus_bare": round(limit.cpu_us),
                        "own_client_bare": round(own.cpu_us),
                        "poller": round(poller.cpu_us),
                        "simulators": round(server_us),
                    },
                    "machine_busy_while_polling": round(counters["machine_busy"], 2),
                    "poller_readings_stored": counters["readings_stored"],
                    "poller_failed_polls": counters.get("polls_failed", 0),
                }
            )
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
        results["modbus"] = runs
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
    results["serial_poller_exchanges_per_s"] = round(rate.per_s, 2)
    results["serial_utilisation"] = round(rate.per_s * wire_s, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--base-port", type=int, default=26000)
    parser.add_argument("--repeat", type=int, default=1, help="Modbus measurements, each peer in turn")
    parser.add_argument("--no-serial", action="store_true", help="skip the serial part")
    parser.add_argument("--database-url", help="a server where the benchmark may create a database of its own")
    parser.add_argument(
        "--server",
        choices=["lean", "pymodbus"],
        default="lean",
        help="the simulators' Modbus TCP server: our lean one (default) or pymodbus' (about 100 µs CPU per request)",
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.base_port, args.server))
        return

    workdir = Path(tempfile.mkdtemp(prefix="meterhub-bench-"))
    with scratch_database(args.database_url, workdir) as url:
        settings = load_settings(None, database={"url": url, "pool_min": 1, "pool_max": 4}, data_dir=workdir)
        results: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "load_1min_at_start": round(os.getloadavg()[0], 2),
            "command": " ".join(["python", *sys.argv]),
            "devices": args.devices,
            "simulator_server": args.server,
            "seconds": args.seconds,
        }
        with Store(settings) as store:
            store.migrate()
            modbus_part(store, args, results)
            if not args.no_serial:
                serial_part(store, args, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
