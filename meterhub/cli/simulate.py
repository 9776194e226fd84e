"""`meterhub simulate`: virtual meters speaking the real protocols."""

from __future__ import annotations

import signal
from decimal import Decimal
from typing import Annotated

import typer

from meterhub.cli.base import app, console, errors, load, wait_for_signal

simulate_app = typer.Typer(no_args_is_help=True, help="Virtual meters speaking the real protocols.")
app.add_typer(simulate_app, name="simulate")


@simulate_app.command("mqtt")
def simulate_mqtt(
    meters: Annotated[int, typer.Option(min=1, help="Fleet size.")] = 100,
    protocol: Annotated[str, typer.Option(help="native, huawei, cjt188")] = "native",
    interval_s: Annotated[float, typer.Option(min=1, help="Simulated seconds between readings.")] = 900,
    per_message: Annotated[int, typer.Option(min=1, help="Readings per message (NB-IoT batches: 96).")] = 1,
    speed: Annotated[float, typer.Option(min=0.001, help="Simulated time per real time.")] = 1.0,
    ticks: Annotated[int | None, typer.Option(help="Stop after this many intervals.")] = None,
    duplicates: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    out_of_order: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    late: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    garbage: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    clock_skew_s: Annotated[float, typer.Option(min=0)] = 0.0,
    rollover: Annotated[float, typer.Option(min=0, max=1, help="Share of meters about to roll over.")] = 0.0,
    outage: Annotated[float, typer.Option(min=0, max=1, help="Share of meters that go silent, then burst.")] = 0.0,
    seed: Annotated[int, typer.Option()] = 1,
) -> None:
    """Publish a fleet of virtual meters to the broker at mqtt.url."""
    from datetime import timedelta

    from meterhub.broker import BrokerAddress
    from simulators.mqtt_fleet import Faults, Fleet, FleetRunner, cjt188_push, huawei_json, native_json

    settings = load()
    if not settings.mqtt.url:
        errors.print("[red]error:[/red] mqtt.url (METERHUB_MQTT_URL) is not set: which broker?")
        raise typer.Exit(2)
    encoders = {"native": native_json(), "huawei": huawei_json(), "cjt188": cjt188_push()}
    if protocol not in encoders:
        errors.print(f"[red]error:[/red] --protocol must be one of {', '.join(encoders)}")
        raise typer.Exit(2)
    faults = Faults(
        duplicate=duplicates,
        out_of_order=out_of_order,
        late=late,
        garbage=garbage,
        clock_skew_s=clock_skew_s,
        rollover_share=rollover,
        outage_share=outage,
        outage_intervals=8 if outage else 0,
    )
    fleet = Fleet(meters, encoders[protocol], timedelta(seconds=interval_s), per_message, faults, seed)
    broker = BrokerAddress.parse(settings.mqtt.url)
    runner = FleetRunner(fleet, broker.host, broker.port, speed=speed, mqtt5=broker.mqtt5)
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    console.print(f"{meters} meters publishing {protocol} to {settings.mqtt.url} (Ctrl-C stops)")
    sent = runner.run(ticks)
    console.print(f"sent {sent} messages")


@simulate_app.command("modbus")
def simulate_modbus(
    profile: Annotated[list[str], typer.Option(help="Device profile per unit (repeat); units count from 1.")] = [  # noqa: B006
        "generic_residential"
    ],
    port: Annotated[int, typer.Option(help="TCP port (Modbus TCP, or RTU over TCP with --framer rtu).")] = 5020,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    framer: Annotated[str, typer.Option(help="socket or rtu")] = "socket",
    serial: Annotated[str | None, typer.Option(help="Serve Modbus RTU on this serial port instead.")] = None,
    baudrate: Annotated[int, typer.Option()] = 9600,
    speed: Annotated[float, typer.Option(min=0, help="Simulated time per real time (0 freezes values).")] = 1.0,
) -> None:
    """Modbus slaves built from device profiles; the valve coil or register drives the valve."""
    from simulators.modbus_slave import ModbusSlave, SimulatedDevice

    devices = [SimulatedDevice.shipped(name, unit=i + 1, seed=i + 1, speed=speed) for i, name in enumerate(profile)]
    slave = ModbusSlave(devices, host=host, port=port, serial_device=serial, framer=framer, baudrate=baudrate)  # type: ignore[arg-type]
    slave.start()
    where = serial or f"{host}:{port} ({framer})"
    console.print(f"{len(devices)} Modbus devices on {where}, units 1–{len(devices)} (Ctrl-C stops)")
    wait_for_signal()
    slave.stop()


@simulate_app.command("cjt188-serial")
def simulate_cjt188_serial(
    meters: Annotated[int, typer.Option(min=1, max=250, help="Meters on the line.")] = 4,
    baudrate: Annotated[int | None, typer.Option(help="Emulate wire time at this baud rate (8E1).")] = None,
    faults: Annotated[float, typer.Option(min=0, max=1, help="Share of answers with a fault of any kind.")] = 0.0,
) -> None:
    """CJ/T 188 gas meters on a pseudo-terminal; prints the port to open (addresses 00000000000001…)."""
    from simulators.serial_meters import Cjt188Bus, Cjt188Meter, Faults

    share = faults / 5
    line = [
        Cjt188Meter(f"{n:014d}", flow_m3h=Decimal("0.5"), faults=Faults(share, share, share, share, share))
        for n in range(1, meters + 1)
    ]
    bus = Cjt188Bus(line, baudrate=baudrate).start()
    console.print(f"{meters} CJ/T 188 meters on {bus.path} (Ctrl-C stops)")
    wait_for_signal()
    bus.stop()


@simulate_app.command("mbus-serial")
def simulate_mbus_serial(
    meters: Annotated[int, typer.Option(min=1, max=250, help="Slaves on the segment.")] = 4,
    baudrate: Annotated[int | None, typer.Option(help="Emulate wire time at this baud rate (8E1).")] = None,
    telegrams: Annotated[int, typer.Option(min=1, max=4, help="Telegrams per answer (multi-telegram).")] = 1,
    faults: Annotated[float, typer.Option(min=0, max=1, help="Share of answers with a fault of any kind.")] = 0.0,
) -> None:
    """M-Bus gas meters on a pseudo-terminal: primary addresses 1…n, secondary 10000001…"""
    from simulators.serial_meters import Faults, MbusMeter, MbusSegment

    share = faults / 5
    segment = [
        MbusMeter(n, f"{10_000_000 + n:08d}", telegrams=telegrams, faults=Faults(share, share, share, share, share))
        for n in range(1, meters + 1)
    ]
    bus = MbusSegment(segment, baudrate=baudrate).start()
    console.print(f"{meters} M-Bus meters on {bus.path} (Ctrl-C stops)")
    wait_for_signal()
    bus.stop()
