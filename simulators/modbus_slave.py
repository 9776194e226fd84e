"""Modbus slaves built from the device profiles the collector reads them with.

Each `SimulatedDevice` holds a profile's values, lets them evolve (flow while the valve is open,
totals growing with flow, pressure and temperature wandering, the battery slowly draining) and
answers reads from the register image `encode_values` builds. Writing the valve coil or register
changes the valve state it reports. A `ModbusSlave` serves devices by unit id over Modbus TCP, RTU
over TCP or RTU on a serial port (a pseudo-terminal in tests), through pymodbus' own server — or, for
Modbus TCP with `server="lean"`, through a small asyncio server of ours (drivers/transports/modbus_frames)
that costs a fraction of the CPU per request, so that a benchmark measures the poller rather than the
simulators. Faults: a silent device, a late answer, exception responses to the next reads, a write that
is carried out but never answered, and (RTU) scripted answers with a bad CRC.
"""

from __future__ import annotations

import asyncio
import random
import struct
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice

from drivers.base import EventKind, ValveState
from drivers.modbus.codec import ReadBlock, RegisterImage, block_data, encode_values
from drivers.modbus.profile import Function, Profile, shipped_profile
from drivers.transports import modbus_frames as frames_mod

FUNCTIONS = {1: Function.COIL, 5: Function.COIL, 15: Function.COIL, 2: Function.DISCRETE, 4: Function.INPUT}
FUNCTIONS.update({code: Function.HOLDING for code in (3, 6, 16, 22, 23)})
CENT = Decimal("0.01")
MILLI = Decimal("0.001")
TICK_S = 0.05


def initial_values(profile: Profile, rng: random.Random) -> dict[str, Decimal]:
    """Plausible starting values for every channel of a profile, by the channel's name."""
    values: dict[str, Decimal] = {}
    industrial = profile.valve is None
    for point in profile.points:
        name = point.channel
        if name == "counter_resolution":
            value = Decimal(-2)
        elif name.startswith("volume"):
            value = Decimal(rng.randint(1_000, 90_000) if industrial else rng.randint(10, 3_000)).quantize(CENT)
            if "reverse" in name:
                value = Decimal(rng.randint(0, 20))
        elif name.startswith("flow"):
            value = Decimal(f"{rng.uniform(20, 400) if industrial else rng.uniform(0.2, 1.5):.3f}")
        elif name.startswith("pressure"):
            value = Decimal(f"{rng.uniform(1.5, 4.5):.3f}")
        elif name.startswith("temperature"):
            value = Decimal(f"{rng.uniform(5, 25):.2f}")
        elif name == "conversion_factor":
            value = Decimal("2.95")
        elif name == "battery_v":
            value = Decimal("3.600")
        else:
            value = Decimal(0)
        values[name] = value
    return values


@dataclass
class SimulatedDevice:
    """One Modbus device: a profile, its current values, its valve, its faults."""

    profile: Profile
    unit: int = 1
    seed: int = 1
    values: dict[str, Decimal] = field(default_factory=dict)
    valve: ValveState | None = None
    alarms: set[EventKind] = field(default_factory=set)
    speed: float = 1.0  # simulated seconds per real second; 0 freezes the values
    delay_s: float = 0.0  # late answer
    silent: bool = False  # no answer at all
    drop_write_replies: int = 0  # carry out the next n writes but never answer them (a lost reply)
    refuse_reads: int = 0  # answer the next n reads with exception 06 (device busy)
    faults: deque[str] = field(default_factory=deque)  # taken one per answer: "bad_crc" or "none" (RTU only)
    corrupted: list[bytes] = field(default_factory=list)  # the bad-CRC answers as sent
    writes: list[tuple[int, int, tuple[int, ...]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        if not self.values:
            self.values = initial_values(self.profile, self.rng)
        if self.valve is None and self.profile.valve is not None and self.profile.valve.readback is not None:
            self.valve = ValveState.OPEN
        self._extra: RegisterImage = {}  # written registers that are not values (coils, setpoints)
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._wide = {
            (p.at.function, a)
            for p in self.profile.points
            if p.at.register_width == 32
            for a in range(p.at.address, p.at.address + p.at.span)
        }
        self._rebuild()

    @classmethod
    def shipped(cls, name: str, unit: int = 1, seed: int = 1, **kwargs: Any) -> SimulatedDevice:
        return cls(shipped_profile(name), unit=unit, seed=seed, **kwargs)

    # -- values -----------------------------------------------------------------------------------
    def _rebuild(self) -> None:
        image = encode_values(self.profile, self.values, valve=self.valve, alarms=self.alarms)
        for function, table in self._extra.items():
            image.setdefault(function, {}).update(table)
        if self.valve is not None and self.profile.valve is not None:  # the write location mirrors the state
            write = self.profile.valve.write
            value = write.open if self.valve in (ValveState.OPEN, ValveState.ARMED) else write.close
            if value is not None:
                image.setdefault(write.function, {})[write.address] = int(value)
        self.image = image

    def advance(self, seconds: float) -> None:
        """Let `seconds` of simulated time pass."""
        if seconds <= 0:
            return
        hours = Decimal(str(seconds / 3600))
        flowing = self.valve in (None, ValveState.OPEN)
        for name in list(self.values):
            value = self.values[name]
            if name.startswith("flow"):
                if flowing:
                    value = max(Decimal(0), value * Decimal(f"{self.rng.uniform(0.97, 1.03):.4f}")).quantize(MILLI)
                else:
                    value = Decimal(0)
            elif name.startswith("pressure"):
                value = (value + Decimal(f"{self.rng.uniform(-0.005, 0.005):.3f}")).quantize(MILLI)
            elif name.startswith("temperature"):
                value = (value + Decimal(f"{self.rng.uniform(-0.05, 0.05):.2f}")).quantize(CENT)
            elif name == "battery_v":
                value = max(Decimal("3.0"), value - Decimal("0.001") * (1 if self.rng.random() < 0.01 else 0))
            self.values[name] = value
        for name in list(self.values):
            if name.startswith("volume") and "reverse" not in name:
                flow_name = "flow_base_m3h" if "base" in name else "flow_m3h"
                flow = self.values.get(flow_name, self.values.get("flow_m3h", Decimal("0.8") if flowing else 0))
                if flowing:
                    self.values[name] = (self.values[name] + Decimal(flow) * hours).quantize(CENT)
        self._rebuild()

    def tick(self) -> None:
        """Let the real time since the last tick pass (at most 20 steps a second: reads come faster)."""
        now = time.monotonic()
        elapsed = now - self._last
        if elapsed < TICK_S:
            return
        self._last = now
        if self.speed:
            self.advance(elapsed * self.speed)

    # -- requests ---------------------------------------------------------------------------------
    def read(self, function_code: int, address: int, count: int) -> list[int] | list[bool]:
        with self._lock:
            self.tick()
            function = FUNCTIONS[function_code]
            width = 32 if (function, address) in self._wide else 16
            data = block_data(self.image, ReadBlock(function, address, count, width))
        if function.is_bit:
            return [bool(v) for v in data]
        return data

    def write(self, function_code: int, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        with self._lock:
            self.tick()
            function = FUNCTIONS[function_code]
            words = tuple(int(v) for v in values)
            self.writes.append((function_code, address, words))
            table = self._extra.setdefault(function, {})
            for offset, word in enumerate(words):
                table[address + offset] = word
            valve = self.profile.valve
            if valve is not None and function is valve.write.function and address == valve.write.address:
                self._extra[function].pop(address, None)
                self._drive_valve(words[0])
            self._rebuild()

    def corrupt(self, answer: bytes) -> bytes:
        """The RTU answer as it goes on the wire, after the next scripted fault."""
        if self.faults and self.faults.popleft() == "bad_crc":
            answer = answer[:-1] + bytes([answer[-1] ^ 0xFF])
            self.corrupted.append(answer)
        return answer

    def _drive_valve(self, value: int) -> None:
        assert self.profile.valve is not None
        write = self.profile.valve.write
        if write.open is not None and value == int(write.open):
            self.valve = ValveState.OPEN
        elif write.arm is not None and value == int(write.arm):
            self.valve = ValveState.ARMED
        elif write.close is not None and value == int(write.close):
            self.valve = ValveState.CLOSED


class _Datastore:
    """What pymodbus' request handler asks for: values by device id, function code and address."""

    def __init__(self, devices: Sequence[SimulatedDevice]) -> None:
        self.devices = {device.unit: device for device in devices}

    def device_ids(self) -> list[int]:
        return list(self.devices)

    async def _device(self, device_id: int) -> SimulatedDevice | None:
        device = self.devices.get(device_id)
        if device is None or device.silent:
            return None
        if device.delay_s:
            await asyncio.sleep(device.delay_s)
        return device

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        device = await self._device(device_id)
        if device is None:
            await asyncio.sleep(3600)  # a silent device never answers
            return ExcCodes.DEVICE_BUSY
        if func_code not in FUNCTIONS or address + count > 65536:
            return ExcCodes.ILLEGAL_ADDRESS
        if device.refuse_reads > 0:
            device.refuse_reads -= 1
            return ExcCodes.DEVICE_BUSY
        return device.read(func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        device = await self._device(device_id)
        if device is None:
            await asyncio.sleep(3600)
            return ExcCodes.DEVICE_BUSY
        if func_code not in FUNCTIONS:
            return ExcCodes.ILLEGAL_FUNCTION
        device.write(func_code, address, values)
        if device.drop_write_replies > 0:
            device.drop_write_replies -= 1
            await asyncio.Event().wait()  # done, but the answer is lost: this request is never answered
        return None


class _LeanProtocol(asyncio.Protocol):
    """One Modbus TCP connection to the lean server: requests answered in the order they complete."""

    def __init__(self, server: LeanTcpServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            frames = frames_mod.split_mbap(self.buffer)
        except frames_mod.FrameMismatch:
            assert self.transport is not None
            self.transport.close()
            return
        for frame in frames:
            self.request(frame)

    def request(self, frame: bytes) -> None:
        tid, unit, pdu = frame[0] << 8 | frame[1], frame[6], frame[7:]
        device = self.server.devices.get(unit)
        if device is None or device.silent:
            return  # nobody there: no answer
        answer = _answer(device, pdu)
        if answer is None:
            return
        out = frames_mod.mbap_adu(tid, unit, answer)
        if device.delay_s:
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
            asyncio.get_running_loop().call_later(device.delay_s, self._send, out, True)
        else:
            self._send(out)

    def _send(self, data: bytes, delayed: bool = False) -> None:
        if delayed:
            self.server.in_flight -= 1
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


def _answer(device: SimulatedDevice, pdu: bytes) -> bytes | None:
    """The answer PDU to a request PDU; None when the answer is to be lost."""
    code = pdu[0]
    if code in (1, 2, 3, 4) and len(pdu) == 5:
        address, count = pdu[1] << 8 | pdu[2], pdu[3] << 8 | pdu[4]
        if address + count > 65536 or not 1 <= count <= (2000 if code < 3 else 125):
            return bytes((code | 0x80, 2))
        if device.refuse_reads > 0:
            device.refuse_reads -= 1
            return bytes((code | 0x80, 6))
        values = device.read(code, address, count)
        if code < 3:
            bits = sum(1 << i for i, bit in enumerate(values) if bit)
            data = bits.to_bytes((count + 7) // 8, "little")
        else:
            data = struct.pack(f">{len(values)}H", *values)
        return bytes((code, len(data))) + data
    if code in (5, 6) and len(pdu) == 5:
        address, value = pdu[1] << 8 | pdu[2], pdu[3] << 8 | pdu[4]
        device.write(code, address, [value == 0xFF00] if code == 5 else [value])
    elif code == 16 and len(pdu) >= 6 and len(pdu) == 6 + pdu[5]:
        address, count = pdu[1] << 8 | pdu[2], pdu[3] << 8 | pdu[4]
        device.write(code, address, list(struct.unpack_from(f">{count}H", pdu, 6)))
    else:
        return bytes((code | 0x80, 1))
    if device.drop_write_replies > 0:
        device.drop_write_replies -= 1
        return None
    return pdu[:5]


class LeanTcpServer:
    """A Modbus TCP server for simulated devices with the interface ModbusSlave uses of pymodbus' server."""

    def __init__(self, devices: Sequence[SimulatedDevice], host: str, port: int) -> None:
        self.devices = {device.unit: device for device in devices}
        self.host, self.port = host, port
        self.connections: set[asyncio.Transport] = set()
        self.in_flight = self.max_in_flight = 0  # late answers (delay_s) held at once, now and at most
        self._server: asyncio.base_events.Server | None = None
        self.serving: asyncio.Future[bool] | None = None

    async def serve_forever(self, background: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self.serving = loop.create_future()
        self._server = await loop.create_server(lambda: _LeanProtocol(self), self.host, self.port)
        if not background:
            await self.serving

    async def shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self.connections):
            transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        if self.serving is not None and not self.serving.done():
            self.serving.set_result(True)


class ModbusSlave:
    """pymodbus' server (or the lean one) answering for simulated devices. Run it in its own thread with `start()`."""

    def __init__(
        self,
        devices: Sequence[SimulatedDevice],
        *,
        host: str = "127.0.0.1",
        port: int = 5020,
        serial_device: str | None = None,
        framer: Literal["socket", "rtu"] = "socket",
        baudrate: int = 9600,
        parity: str = "N",
        server: Literal["pymodbus", "lean"] = "pymodbus",
    ) -> None:
        if server == "lean" and (serial_device is not None or framer != "socket"):
            raise ValueError("the lean server speaks Modbus TCP only")
        self.server = server
        self.devices = list(devices)
        self.host, self.port, self.serial_device = host, port, serial_device
        self.framer = FramerType.RTU if framer == "rtu" or serial_device else FramerType.SOCKET
        self.baudrate, self.parity = baudrate, parity
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def build_server(self) -> Any:
        if self.server == "lean":
            return LeanTcpServer(self.devices, self.host, self.port)
        placeholder = SimDevice(0, simdata=[SimData(0, values=0)])
        server: Any
        if self.serial_device is not None:
            server = ModbusSerialServer(
                placeholder,
                framer=self.framer,
                port=self.serial_device,
                baudrate=self.baudrate,
                parity=self.parity,
                trace_packet=self._trace,
            )
        else:
            server = ModbusTcpServer(
                placeholder, framer=self.framer, address=(self.host, self.port), trace_packet=self._trace
            )
        server.context = _Datastore(self.devices)  # answer from the profiles' register images
        return server

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """Outgoing RTU answers pass the addressed device's fault script (the unit id is the first byte)."""
        if not sending or self.framer is not FramerType.RTU or not data:
            return data
        device = next((d for d in self.devices if d.unit == data[0]), None)
        return device.corrupt(data) if device is not None else data

    async def serve(self) -> None:
        self._server = self.build_server()
        await self._server.serve_forever(background=True)
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._server.serving

    def start(self, timeout: float = 10.0) -> ModbusSlave:
        def run() -> None:
            try:
                asyncio.run(self.serve())
            except BaseException as exc:  # reported to the starting thread
                self._error = exc
                self._ready.set()

        self._thread = threading.Thread(target=run, name=f"modbus-slave-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"Modbus simulator did not start: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
        if self._thread is not None:
            self._thread.join(10)
