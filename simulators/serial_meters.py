"""Serial meters on a pseudo-terminal: a CJ/T 188 RS-485 bus and an M-Bus segment.

The collector opens `line.path` like any serial port. The simulator reads requests from the other
end, answers for the meters it hosts, and injects faults: no answer, late answer, bad checksum,
garbage bytes, partial frames. With `baudrate` set it emulates wire time: a request occupies the
line for its bytes × bits per character / baud before the meter can see it, and an answer takes as
long to come out. A CJ/T 188 bus can emulate a vendor's dialect with the driver's `Workarounds`
(DI byte order, clock order, status bit order, UTC offset, preamble of its answers); a meter's clock
can run off by `clock_offset`.

`SerialGateway` puts such a line behind a TCP port, as a serial-to-Ethernet converter in transparent
mode does: the collector connects to the port and its bytes go to the line unchanged, and back.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import struct
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from drivers.cjt188 import codec as cjt188
from drivers.cjt188.frame import Frame as Cjt188Frame
from drivers.cjt188.frame import control_code, decimal_to_bcd, decode_frame, encode_frame, int_to_bcd
from drivers.cjt188.framer import RawFrame
from drivers.cjt188.framer import StreamFramer as Cjt188Framer
from drivers.cjt188.settings import Workarounds
from drivers.mbus import link as mbus
from drivers.transports.wire import char_bits

FAULTS = ("none", "no_answer", "late", "bad_checksum", "garbage", "partial")
CHINA = timezone(timedelta(hours=8))


@dataclass
class Faults:
    """Random faults by probability, or a script of faults taken one per answer (then none)."""

    no_answer: float = 0.0
    late: float = 0.0
    bad_checksum: float = 0.0
    garbage: float = 0.0
    partial: float = 0.0
    late_s: float = 1.0
    script: deque[str] = field(default_factory=deque)

    def pick(self, rng: random.Random) -> str:
        if self.script:
            return self.script.popleft()
        roll = rng.random()
        for name in ("no_answer", "late", "bad_checksum", "garbage", "partial"):
            share = getattr(self, name)
            if roll < share:
                return name
            roll -= share
        return "none"


class PtyLine:
    """A pseudo-terminal pair: `path` for the collector, the other end served by a thread."""

    def __init__(self, baudrate: int | None = None, bits_per_char: int = 11, seed: int = 1) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.baudrate = baudrate
        self.char_s = bits_per_char / baudrate if baudrate else 0.0
        self.rng = random.Random(seed)
        self.requests = 0
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"pty-{self.path}", daemon=True)

    def start(self) -> PtyLine:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for request in self.feed(data):
                self.requests += 1
                if self.char_s:  # the request's own time on the wire
                    time.sleep(len(request) * self.char_s)
                self.respond(request)

    def feed(self, data: bytes) -> list[bytes]:
        """Requests complete in the bytes received so far."""
        raise NotImplementedError

    def respond(self, request: bytes) -> None:
        raise NotImplementedError

    def send(self, answer: bytes, fault: str, late_s: float) -> None:
        """Write an answer with the chosen fault, taking wire time when emulated."""
        if fault == "no_answer":
            return
        if fault == "late":
            time.sleep(late_s)
        elif fault == "bad_checksum":
            answer = answer[:-2] + bytes([(answer[-2] + 1) & 0xFF]) + answer[-1:]
        elif fault == "garbage":
            answer = bytes(self.rng.randrange(256) for _ in range(7)).replace(b"\x68", b"\x00") + answer
        elif fault == "partial":
            answer = answer[: len(answer) // 2]
        self.answers += 1
        if self.char_s:
            time.sleep(len(answer) * self.char_s)
        with contextlib.suppress(OSError):
            os.write(self.master, answer)


# --- CJ/T 188 ----------------------------------------------------------------------------------


@dataclass
class Cjt188Meter:
    address: str  # 14 digits as printed
    volume_m3: Decimal = Decimal("123.45")
    settlement_m3: Decimal = Decimal("100.00")
    valve_closed: bool = False
    battery_low: bool = False
    purchase_sequence: int = 3
    last_purchase_cny: Decimal = Decimal("100.00")
    purchased_total_cny: Decimal = Decimal("300.00")
    remaining_cny: Decimal = Decimal("88.50")
    history_m3: list[Decimal] = field(default_factory=lambda: [Decimal("95.00") - 5 * i for i in range(12)])
    faults: Faults = field(default_factory=Faults)
    flow_m3h: Decimal = Decimal(0)  # gas use while open, per real hour
    clock_offset: timedelta = timedelta(0)  # the meter's clock runs this far ahead (behind when negative)
    clocks_sent: deque[datetime] = field(default_factory=lambda: deque(maxlen=1000))  # of the last 901F answers
    executed: list[str] = field(default_factory=list)  # valve_open, valve_close, credit: what the meter did
    _last: float = field(default_factory=time.monotonic)

    def status(self, dialect: Workarounds | None = None) -> bytes:
        first = (0b01 if self.valve_closed else 0b00) | (0x04 if self.battery_low else 0)
        if dialect is not None and dialect.status_bit_order == "msb_first":
            first = int(f"{first:08b}"[::-1], 2)
        return bytes([first, 0])

    def advance(self) -> None:
        now = time.monotonic()
        if self.flow_m3h and not self.valve_closed:
            hours = Decimal(str((now - self._last) / 3600))
            self.volume_m3 = (self.volume_m3 + self.flow_m3h * hours).quantize(Decimal("0.01"))
        self._last = now

    def payload(self, di: int, now: datetime, dialect: Workarounds | None = None) -> bytes | None:
        self.advance()
        dialect = dialect or Workarounds(clock_utc_offset=CHINA)
        if di == cjt188.DI_METERING:
            t = (now + self.clock_offset).astimezone(dialect.clock_utc_offset).replace(microsecond=0)
            self.clocks_sent.append(t)
            fields = (t.second, t.minute, t.hour, t.day, t.month, t.year % 100, t.year // 100)
            clock = b"".join(int_to_bcd(v, 1) for v in fields)
            if dialect.clock_order == "cc_first":
                clock = clock[::-1]
            return (
                decimal_to_bcd(self.volume_m3, 4, 2)
                + b"\x2c"
                + decimal_to_bcd(self.settlement_m3, 4, 2)
                + b"\x2c"
                + clock
                + self.status(dialect)
            )
        if di == cjt188.DI_PURCHASE_READ:
            return (
                bytes([self.purchase_sequence])
                + decimal_to_bcd(self.last_purchase_cny, 4, 2)
                + decimal_to_bcd(self.purchased_total_cny, 4, 2)
                + decimal_to_bcd(self.remaining_cny, 4, 2)
                + self.status(dialect)
            )
        if cjt188.DI_HISTORY_FIRST <= di <= cjt188.DI_HISTORY_LAST:
            return decimal_to_bcd(self.history_m3[di - cjt188.DI_HISTORY_FIRST], 4, 2) + b"\x2c"
        return None


class Cjt188Bus(PtyLine):
    """CJ/T 188 meters sharing one RS-485 line (typically 2400 baud 8E1)."""

    def __init__(
        self,
        meters: list[Cjt188Meter],
        baudrate: int | None = None,
        preamble: int = 2,
        seed: int = 1,
        workarounds: Workarounds | None = None,
    ) -> None:
        super().__init__(baudrate, char_bits(8, "E", 1), seed)
        self.meters = {m.address.upper(): m for m in meters}
        self.preamble = preamble
        self.dialect = workarounds or Workarounds(clock_utc_offset=CHINA)  # how these meters frame and encode
        self.framer = Cjt188Framer()

    def _encode(self, reply: Cjt188Frame) -> bytes:
        return encode_frame(reply, self.dialect.di_order, self.preamble)

    def feed(self, data: bytes) -> list[bytes]:
        return [item.data for item in self.framer.feed(data) if isinstance(item, RawFrame)]

    def respond(self, request: bytes) -> None:
        try:
            frame = decode_frame(request, self.dialect.di_order)
        except Exception:
            return
        if frame.from_meter:
            return
        if frame.address.upper() == "AAAAAAAAAAAAAA":
            if frame.function != cjt188.FN_READ_ADDRESS or len(self.meters) != 1:
                return  # several meters answering a broadcast would collide
            only = next(iter(self.meters.values()))
            reply = Cjt188Frame(0x30, only.address, control_code(0x03, from_meter=True), frame.di, frame.ser)
            self.send(self._encode(reply), only.faults.pick(self.rng), only.faults.late_s)
            return
        found = self.meters.get(frame.address.upper())
        if found is None:
            return
        meter = found
        fault = meter.faults.pick(self.rng)
        if frame.control == self.dialect.valve_control and frame.di == cjt188.DI_VALVE and frame.payload:
            code = frame.payload[0]
            if code in (self.dialect.valve_open_code, self.dialect.valve_close_code):
                meter.valve_closed = code == self.dialect.valve_close_code
                meter.executed.append("valve_close" if meter.valve_closed else "valve_open")
                status = meter.status(self.dialect)
                reply = Cjt188Frame(0x30, meter.address, frame.control | 0x80, frame.di, frame.ser, status)
            else:
                reply = Cjt188Frame(0x30, meter.address, frame.control | 0xC0, frame.di, frame.ser, b"\x01")
        elif frame.function == cjt188.FN_WRITE and frame.di == cjt188.DI_PURCHASE_WRITE and len(frame.payload) >= 5:
            sequence = frame.payload[0]
            amount = Decimal(int(frame.payload[1:5][::-1].hex())).scaleb(-2)
            if cjt188.purchase_sequence_is_newer(sequence, meter.purchase_sequence):  # a repeat is not counted
                meter.purchase_sequence, meter.last_purchase_cny = sequence, amount
                meter.purchased_total_cny += amount
                meter.remaining_cny += amount
                meter.executed.append("credit")
            reply = Cjt188Frame(0x30, meter.address, control_code(cjt188.FN_WRITE, True), frame.di, frame.ser,
                                bytes([meter.purchase_sequence]))  # fmt: skip
        else:
            now = datetime.now(UTC)
            payload = meter.payload(frame.di, now, self.dialect) if frame.function == cjt188.FN_READ else None
            if payload is None:
                reply = Cjt188Frame(0x30, meter.address, control_code(frame.function, True, error=True), frame.di,
                                    frame.ser, b"\x01")  # fmt: skip
            else:
                reply = Cjt188Frame(0x30, meter.address, control_code(0x01, True), frame.di, frame.ser, payload)
        self.send(self._encode(reply), fault, meter.faults.late_s)


# --- M-Bus -------------------------------------------------------------------------------------


@dataclass
class MbusMeter:
    primary: int
    identification: str  # 8 digits
    volume_m3: Decimal = Decimal("1234.567")
    flow_m3h: Decimal = Decimal("0.850")
    history_m3: list[Decimal] = field(default_factory=lambda: [Decimal("1200.000"), Decimal("1150.000")])
    manufacturer: str = "ELS"
    telegrams: int = 1  # >1: the answer is split, DIF 1F asks the master to read on
    faults: Faults = field(default_factory=Faults)
    access_no: int = 0
    _index: int = 0
    _last_fcb: bool | None = None

    def records(self) -> list[bytes]:
        litres = int(self.volume_m3 * 1000)
        records = [
            b"\x04\x13" + litres.to_bytes(4, "little"),  # volume, 32-bit integer, litres
            b"\x05\x3e" + _real32(self.flow_m3h),  # volume flow m³/h, real
        ]
        for storage, volume in enumerate(self.history_m3, start=1):
            # 8-digit BCD litres; the storage number's lowest bit is in the DIF, the next ones in a DIFE
            dif = 0x0C | (storage & 1) << 6 | (0x80 if storage > 1 else 0)
            dife = bytes([storage >> 1 & 0x0F]) if storage > 1 else b""
            records.append(bytes([dif]) + dife + b"\x13" + bytes.fromhex(f"{int(volume * 1000):08d}")[::-1])
        return records

    def telegram(self, address: int) -> bytes:
        records = self.records()
        per = max(1, -(-len(records) // self.telegrams))
        part = records[self._index * per : (self._index + 1) * per]
        more = self._index + 1 < self.telegrams
        self.access_no = (self.access_no + 1) & 0xFF
        header = bytes.fromhex(self.identification)[::-1]
        header += mbus.encode_manufacturer(self.manufacturer).to_bytes(2, "little")
        header += bytes([0x01, 0x03, self.access_no, 0x00]) + b"\x00\x00"
        data = header + b"".join(part) + (b"\x1f" if more else b"")
        return mbus.encode_long(mbus.C_RSP_UD, address, 0x72, data)


def _matches(wanted: str, identification: str) -> bool:
    """Secondary address match, F digits being wildcards."""
    return all(w in ("F", c) for w, c in zip(wanted, identification, strict=True))


def _real32(value: Decimal) -> bytes:
    return struct.pack("<f", float(value))


class MbusSegment(PtyLine):
    """M-Bus slaves behind one level converter (typically 2400 baud 8E1)."""

    def __init__(self, meters: list[MbusMeter], baudrate: int | None = None, seed: int = 1) -> None:
        super().__init__(baudrate, char_bits(8, "E", 1), seed)
        self.meters = list(meters)
        self.selected: MbusMeter | None = None
        self.framer = mbus.StreamFramer()

    def feed(self, data: bytes) -> list[bytes]:
        return [frame.to_bytes() for frame in self.framer.feed(data) if not isinstance(frame, mbus.Ack)]

    def _addressed(self, address: int) -> MbusMeter | None:
        if address == mbus.ADDRESS_SECONDARY:
            return self.selected
        return next((m for m in self.meters if m.primary == address), None)

    def respond(self, request: bytes) -> None:
        frame = mbus.parse_frame(request)
        if isinstance(frame, mbus.LongFrame) and frame.ci == mbus.CI_SELECT_SECONDARY:
            wanted = frame.data[0:4][::-1].hex().upper()
            found = [
                m for m in self.meters if all(w in ("F", c) for w, c in zip(wanted, m.identification, strict=True))
            ]
            self.selected = found[0] if len(found) == 1 else None
            if self.selected is not None:
                self.send(bytes([mbus.ACK]), self.selected.faults.pick(self.rng), self.selected.faults.late_s)
            return
        if not isinstance(frame, mbus.ShortFrame):
            return
        meter = self._addressed(frame.address)
        if meter is None:
            return
        fault = meter.faults.pick(self.rng)
        if frame.control & ~mbus.FCB == mbus.C_SND_NKE:
            meter._index, meter._last_fcb = 0, None
            self.send(bytes([mbus.ACK]), fault, meter.faults.late_s)
            return
        if frame.control & ~mbus.FCB & 0xFF == mbus.C_REQ_UD2 & ~mbus.FCB:
            fcb = bool(frame.control & mbus.FCB)
            if meter._last_fcb is not None and fcb != meter._last_fcb:
                meter._index = (meter._index + 1) % meter.telegrams  # the last answer arrived: next telegram
            meter._last_fcb = fcb
            self.send(meter.telegram(frame.address), fault, meter.faults.late_s)


# --- a serial-to-Ethernet gateway ----------------------------------------------------------------


class SerialGateway:
    """A TCP port in front of a serial line (transparent mode): one client at a time, bytes relayed both ways.

    A new connection replaces the old one, as on most converters. `drop_client()` closes the current one
    (the gateway restarting); the collector is expected to connect again.
    """

    def __init__(self, device: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.device = device
        self._listener = socket.create_server((host, port))
        self.host, self.port = host, self._listener.getsockname()[1]
        self._listener.setblocking(False)
        self._line = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self._client: socket.socket | None = None
        self.connections = 0
        self._drop = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"gateway-{self.port}", daemon=True)

    def start(self) -> SerialGateway:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._close_client()
        for close in (self._listener.close, lambda: os.close(self._line)):
            with contextlib.suppress(OSError):
                close()

    def drop_client(self) -> None:
        self._drop.set()

    def _close_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.close()
            self._client = None

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self._drop.is_set():
                self._drop.clear()
                self._close_client()
            watched: list[socket.socket | int] = [self._listener, self._line]
            if self._client is not None:
                watched.append(self._client)
            ready, _, _ = select.select(watched, [], [], 0.05)
            if self._listener in ready:
                with contextlib.suppress(BlockingIOError):
                    client, _ = self._listener.accept()
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._close_client()
                    self._client = client
                    self.connections += 1
            if self._line in ready:
                try:
                    data = os.read(self._line, 4096)
                except (BlockingIOError, OSError):
                    data = b""
                if data and self._client is not None:  # nobody connected: the bytes are lost, as on the wire
                    with contextlib.suppress(OSError):
                        self._client.sendall(data)
            if self._client is not None and self._client in ready:
                try:
                    data = self._client.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self._close_client()
                    continue
                view = memoryview(data)
                while view:
                    try:
                        view = view[os.write(self._line, view) :]
                    except BlockingIOError:
                        time.sleep(0.001)
