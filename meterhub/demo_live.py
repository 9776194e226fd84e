"""The demo utility, live: an MQTT broker, the simulated fleet, the collector and the console in one process.

- The broker at `mqtt.url`, or an embedded one on a free port.
- The MQTT fleet: native JSON meters on `meters/<no>/up` and CJ/T 188 meters behind DTUs on `cjt188/<no>/up`,
  each reporting every `interval_s`, spread evenly over the interval; they answer valve and credit commands.
- Modbus TCP stations (`station-N`) of industrial volume correctors and an RS-485 line of CJ/T 188 meters on a
  pseudo-terminal (`line-1`), polled by the collector every `poll_s` (the meters' `protocol_address` says
  which bus and address, `poller.from_store`).
- The collector: MQTT ingestion, the poller, the command dispatcher (a close issued in the console reaches the
  simulated meter, which confirms it), heartbeat and store upkeep.
- The console and API (uvicorn) on `console.host:console.port`.

Every simulated meter starts from its last stored register and valve state, so the history goes on where it
stopped. `stop()` takes everything down in the reverse order; the collector commits what it received.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

from meterhub.broker import BrokerAddress, LocalBroker, free_port, start_embedded
from meterhub.demo_data import SERIAL_BUS, SILENT_METER
from meterhub.settings import MqttRoute, Settings
from meterhub.store import Store

log = logging.getLogger(__name__)

CENT = Decimal("0.01")
COLLECTOR_ID = "meterhub-demo-collector"
NOISY_LOGGERS = ("amqtt", "transitions", "pymodbus", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx")

_LIVE_METERS = """
SELECT m.meter_no, m.driver_key, m.protocol_address, m.valve_state, coalesce(m.register_max, 99999999.99),
       coalesce(mm.profile, ''), ut.category, m.prepaid, l.value,
       CASE WHEN f.ts IS NOT NULL AND l.ts > f.ts
            THEN (l.value - f.value) / (extract(epoch FROM l.ts - f.ts) / 86400) END AS daily_m3
  FROM meter m
  LEFT JOIN meter_model mm ON mm.id = m.model_id
  LEFT JOIN usage_type ut ON ut.id = m.usage_type_id
  LEFT JOIN LATERAL (SELECT ts, value FROM reading WHERE meter_id = m.id AND channel = 'volume_m3'
                      ORDER BY ts DESC LIMIT 1) l ON true
  LEFT JOIN LATERAL (SELECT ts, value FROM reading WHERE meter_id = m.id AND channel = 'volume_m3'
                        AND ts <= l.ts - interval '7 days' ORDER BY ts DESC LIMIT 1) f ON true
 WHERE m.status = 'installed' AND m.driver_key IN ('native_json', 'cjt188', 'modbus')
 ORDER BY m.meter_no
"""

_LIVE_READINGS = """
SELECT CASE WHEN m.driver_key = 'modbus' THEN 'modbus'
            WHEN m.protocol_address LIKE '%%:%%' THEN 'serial'
            WHEN m.driver_key = 'cjt188' THEN 'cjt188_mqtt'
            ELSE 'native_mqtt' END AS transport,
       count(*)
  FROM reading r JOIN meter m ON m.id = r.meter_id
 WHERE r.ts >= %s AND r.received_at >= %s AND r.source <> 'demo'
 GROUP BY 1
"""

TRANSPORTS = ("native_mqtt", "cjt188_mqtt", "modbus", "serial")


@dataclass(frozen=True)
class LiveMeter:
    meter_no: str
    driver: str
    address: str
    valve: str
    register_max: Decimal
    profile: str
    category: str
    prepaid: bool
    register: Decimal
    daily_m3: Decimal


@dataclass
class LiveOptions:
    port: int | None = None  # console port; None: console.port
    interval_s: float = 300.0  # between two readings of an MQTT meter
    poll_s: float = 60.0  # between two polls of a field-bus meter


def demo_routes() -> list[MqttRoute]:
    return [
        MqttRoute(filter="meters/+/up", driver="native_json"),
        MqttRoute(filter="meters/+/reply", driver="native_json"),
        MqttRoute(
            filter="cjt188/+/up",
            driver="cjt188",
            settings={"topic": "cjt188/+/up"},
            response_topic="cjt188/{1}/down",
        ),
    ]


def load_live_meters(store: Store) -> list[LiveMeter]:
    with store.connection() as conn:
        rows = conn.execute(_LIVE_METERS).fetchall()
    meters = []
    for no, driver, address, valve, register_max, profile, category, prepaid, register, daily in rows:
        meters.append(
            LiveMeter(
                no, driver, address, valve, Decimal(register_max), profile, category or "residential", prepaid,
                Decimal(register if register is not None else 0), max(Decimal(daily or 0), Decimal(0)),
            )
        )  # fmt: skip
    return meters


def live_counts(store: Store, since: datetime) -> dict[str, int]:
    """Readings that reached the store through each transport since `since`."""
    with store.connection() as conn:
        rows = conn.execute(_LIVE_READINGS, [since - timedelta(minutes=10), since]).fetchall()
    counts = dict.fromkeys(TRANSPORTS, 0)
    counts.update({r[0]: int(r[1]) for r in rows})
    return counts


def _quiet_libraries() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def bind_console(host: str, port: int) -> socket.socket:
    """The console's listening socket, bound before anything else starts (a busy port fails fast)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def console_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = "127.0.0.1" if host == "0.0.0.0" else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class ConsoleServer:
    """uvicorn serving the console app on a bound socket, in a thread of its own."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        import uvicorn

        self.sock = sock
        self.url = console_url(sock)
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, name="console", daemon=True)
        self.error: BaseException | None = None

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # reported by start()
            self.error = exc

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.error is not None or not self.thread.is_alive():
                raise RuntimeError(f"the console did not start: {self.error}")
            if time.monotonic() > deadline:
                raise RuntimeError("the console did not start in time")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        with contextlib.suppress(OSError):
            self.sock.close()


class PacedFleet:
    """A FleetRunner whose messages of each interval go out evenly spread over it, in a thread.

    `connect()` first (the meters then listen for commands), `publish()` once the collector listens."""

    def __init__(self, runner: Any, name: str) -> None:
        self.runner = runner
        self.fleet = runner.fleet
        self.name = name
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def connect(self, timeout: float = 15.0) -> None:
        self.runner.client.on_subscribe = lambda *_: self._subscribed.set()
        self.runner.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise RuntimeError(f"the simulated meters ({self.name}) could not subscribe to their command topics")

    def publish(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        period = self.fleet.interval.total_seconds()
        started = time.monotonic()
        ticks = 0
        while not self._stop.is_set():
            messages = list(self.fleet.tick())
            ticks += 1
            window_end = started + ticks * period
            for n, (topic, payload) in enumerate(messages):
                if self._stop.is_set():
                    return
                self.runner.client.publish(topic, payload, qos=1)
                self.runner.sent += 1
                due = window_end - period + (n + 1) * period / len(messages)
                self._stop.wait(max(0.0, due - time.monotonic()))
            self._stop.wait(max(0.0, window_end - time.monotonic()))

    def stop_publishing(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(10)
        deadline = time.monotonic() + 5
        while self.runner.acknowledged < self.runner.sent and time.monotonic() < deadline:
            time.sleep(0.05)

    def disconnect(self) -> None:
        self.runner.client.disconnect()
        self.runner.client.loop_stop()


@dataclass
class LivePlatform:
    """Everything that runs while the demo is live; `start()` then `stop()`."""

    settings: Settings
    store: Store
    options: LiveOptions
    console_socket: socket.socket
    broker: BrokerAddress | None = None
    url: str = ""
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _stops: list[tuple[str, Any]] = field(default_factory=list)
    collector: Any = None

    def start(self) -> None:
        """Start the parts in order; if one fails, what started is stopped again before the error is raised."""
        _quiet_libraries()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        meters = load_live_meters(self.store)
        self._start_broker()
        buses = self._start_field_buses(meters)
        fleets = self._connect_fleets(meters)  # listening for commands before the dispatcher sends any
        self._start_collector(buses)
        for fleet in fleets:
            fleet.publish()
            self._stops.append((f"{fleet.name} publishing", fleet.stop_publishing))
        self._start_console()
        self._start_sms()

    # -- parts --------------------------------------------------------------------------------------------
    def _start_broker(self) -> None:
        if self.settings.mqtt.url:
            self.broker = BrokerAddress.parse(self.settings.mqtt.url)
            return
        local: LocalBroker = start_embedded()
        self._stops.append(("broker", local.stop))
        self.broker = local.address

    def _start_field_buses(self, meters: list[LiveMeter]) -> list[dict[str, Any]]:
        """Modbus TCP stations and the RS-485 line, from the meters' protocol addresses."""
        from drivers.modbus.profile import shipped_profile
        from simulators.modbus_slave import ModbusSlave, SimulatedDevice, initial_values
        from simulators.serial_meters import Cjt188Bus

        buses: list[dict[str, Any]] = []
        stations: dict[str, list[Any]] = {}
        line: list[Any] = []
        for m in meters:
            bus, _, unit = m.address.rpartition(":")
            if not bus:
                continue
            if m.driver == "modbus" and unit.isdigit():
                profile = shipped_profile(m.profile)
                values = initial_values(profile, random.Random(m.meter_no))
                flow = (m.daily_m3 / 24).quantize(Decimal("0.001"))
                for name in values:
                    if name == "volume_m3":
                        values[name] = m.register.quantize(CENT, ROUND_DOWN)
                    elif name == "volume_base_m3":
                        values[name] = (m.register * Decimal("2.95")).quantize(CENT, ROUND_DOWN)
                    elif name == "flow_m3h":
                        values[name] = flow
                    elif name == "flow_base_m3h":
                        values[name] = (flow * Decimal("2.95")).quantize(Decimal("0.001"))
                device = SimulatedDevice(profile, unit=int(unit), seed=int(unit), values=values)
                stations.setdefault(bus, []).append(device)
            elif m.driver == "cjt188" and bus == SERIAL_BUS:
                line.append(wired_meter(unit, volume_m3=m.register.quantize(CENT, ROUND_DOWN),
                                            settlement_m3=m.register.quantize(CENT, ROUND_DOWN),
                                            valve_closed=m.valve == "closed",
                                            flow_m3h=(m.daily_m3 / 24).quantize(Decimal("0.0001"))))  # fmt: skip
        for name, devices in sorted(stations.items()):
            slave = ModbusSlave(devices, host="127.0.0.1", port=free_port())
            slave.start()
            self._stops.append((f"modbus {name}", slave.stop))
            buses.append({"name": name, "protocol": "modbus", "host": "127.0.0.1", "port": slave.port})
        if line:
            pty = Cjt188Bus(line, baudrate=2400).start()
            self._stops.append((SERIAL_BUS, pty.stop))
            buses.append({"name": SERIAL_BUS, "protocol": "cjt188", "device": pty.path, "baudrate": 2400})
        return buses

    def _start_collector(self, buses: list[dict[str, Any]]) -> None:
        from collector.service import CollectorService
        from meterhub.poller_settings import PollBus, PollerSettings

        assert self.broker is not None
        base = self.settings.collector
        explicit = base.model_fields_set
        collector = base.model_copy(
            update={
                "client_id": base.client_id if "client_id" in explicit else COLLECTOR_ID,
                "protocol": base.protocol if self.broker.mqtt5 else "3.1.1",
                "metrics_port": base.metrics_port if "metrics_port" in explicit else 0,
                "routes": demo_routes(),
            }
        )
        poller = PollerSettings(
            bus=[PollBus(**bus) for bus in buses],
            from_store=True,
            interval_s=self.options.poll_s,
            jitter=0.1,
            timeout_s=1.0,
            retries=1,
        )
        settings = self.settings.model_copy(update={"collector": collector, "poller": poller})
        service = CollectorService(settings, self.store, self.broker)
        service.start()
        self.collector = service
        self._stops.append(("collector", service.stop))
        if not service.ingest.connected.wait(15):
            raise RuntimeError(f"the collector could not connect to the broker at {self.broker.url}")

    def _connect_fleets(self, meters: list[LiveMeter]) -> list[PacedFleet]:
        from simulators.cjt188_dtu import Cjt188FleetRunner
        from simulators.gas import GasProfile
        from simulators.mqtt_fleet import Fleet, FleetRunner, VirtualMeter, cjt188_push, native_json

        assert self.broker is not None
        interval = timedelta(seconds=self.options.interval_s)
        start = datetime.now(UTC).replace(microsecond=0) - interval  # the first readings carry about now
        native = Fleet(0, native_json(), interval, start=start)
        dtu = Fleet(0, cjt188_push(), interval, start=start)
        for m in meters:
            if m.meter_no == SILENT_METER or ":" in m.address or m.driver not in ("native_json", "cjt188"):
                continue
            rng = random.Random(m.meter_no)
            daily = float(m.daily_m3)
            profile = GasProfile(daily_m3=daily, heating_factor=1.0, idle=daily == 0)
            virtual = VirtualMeter(
                m.meter_no, m.address or f"{0:014d}", profile, m.register, m.register_max, timedelta(0), rng,
                valve=m.valve if m.valve in ("open", "closed", "armed") else "open",
            )  # fmt: skip
            (dtu if m.driver == "cjt188" else native).meters.append(virtual)
        mqtt5 = self.broker.mqtt5
        runners = []
        if native.meters:
            runners.append(PacedFleet(FleetRunner(native, self.broker.host, self.broker.port, mqtt5=mqtt5), "fleet"))
        if dtu.meters:
            runner = Cjt188FleetRunner(dtu, self.broker.host, self.broker.port, mqtt5=mqtt5)
            runners.append(PacedFleet(runner, "fleet-cjt188"))
        for paced in runners:
            paced.connect()
            self._stops.append((paced.name, paced.disconnect))
        return runners

    def _start_console(self) -> None:
        from dashboards.app import create_app

        console = ConsoleServer(create_app(self.settings, self.store), self.console_socket)
        console.start()
        self._stops.append(("console", console.stop))
        self.url = console.url

    def _start_sms(self) -> None:
        """The SMS sender and the automatic notices, as `meterhub serve` runs them (the outbox gateway)."""
        from meterhub.cli.sms import start_sender

        sender = start_sender(self.store, self.settings)
        if sender is not None:
            thread, stop = sender

            def stop_sender() -> None:
                stop.set()
                thread.join(10)

            self._stops.append(("SMS sender", stop_sender))

    def stop(self) -> None:
        """Stop what started, the last started first; a part that fails to stop does not keep the rest up."""
        while self._stops:
            name, stop = self._stops.pop()
            try:
                stop()
            except Exception as exc:
                log.warning("stopping %s failed: %s", name, exc)
        with contextlib.suppress(OSError):
            self.console_socket.close()


@functools.cache
def _demo_meter_class() -> Any:
    from simulators.serial_meters import Cjt188Meter

    @dataclass
    class Meter(Cjt188Meter):
        """A wired CJ/T 188 meter whose register keeps the gas used between polls below the display's 0.01 m³."""

        exact_m3: Decimal | None = None

        def advance(self) -> None:
            now = time.monotonic()
            if self.exact_m3 is None:
                self.exact_m3 = self.volume_m3
            if self.flow_m3h and not self.valve_closed:
                self.exact_m3 += self.flow_m3h * Decimal(str((now - self._last) / 3600))
            self._last = now
            self.volume_m3 = self.exact_m3.quantize(CENT, ROUND_DOWN)

    return Meter


def wired_meter(address: str, **values: Any) -> Any:
    """A wired CJ/T 188 meter for the pseudo-terminal line."""
    return _demo_meter_class()(address, **values)
