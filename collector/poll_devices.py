"""One poll of one device, per protocol: requests out, frames in, decoded or dead-lettered.

A reader returns every frame it received (good ones decoded, bad ones with their raw bytes and the
reason) and whether the device answered at all. Retries happen here; backing off a device that keeps
failing is the scheduler's business.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal

from drivers.base import Decoded, DecodeError, Reading
from drivers.cjt188 import codec as cjt188
from drivers.cjt188.frame import Frame as Cjt188Frame
from drivers.cjt188.frame import decode_frame
from drivers.cjt188.framer import RawFrame, Skipped
from drivers.cjt188.framer import StreamFramer as Cjt188Framer
from drivers.cjt188.settings import Workarounds
from drivers.mbus import codec as mbus
from drivers.mbus.link import ADDRESS_SECONDARY, Ack, FcbState, LongFrame
from drivers.mbus.link import StreamFramer as MbusFramer
from drivers.modbus.codec import ReadBlock, WriteRequest, decode_blocks
from drivers.modbus.driver import ModbusDriver
from drivers.transports.modbus import DeviceException, LinkError, ModbusLink
from drivers.transports.serial_line import SerialLine

MAX_TELEGRAMS = 16  # M-Bus multi-telegram answers followed at most this far


@dataclass(frozen=True, slots=True)
class Target:
    """A polled device: which meter, at which address, read how."""

    meter_no: str
    address: str
    driver_key: str  # modbus, cjt188, mbus
    modbus: ModbusDriver | None = None
    reads: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Frame:
    """Something the device (or the line) sent: decoded, or dead-lettered with its reason."""

    raw: bytes
    received_at: datetime
    decoded: Decoded | None = None
    reason: str = ""
    detail: str = ""


@dataclass
class PollResult:
    frames: list[Frame] = field(default_factory=list)
    answered: bool = False  # the device sent at least one good answer
    error: str = ""

    def reject(self, raw: bytes, reason: str, detail: str) -> None:
        self.frames.append(Frame(raw, _now(), None, reason, detail))


def _now() -> datetime:
    return datetime.now(UTC)


# --- Modbus ------------------------------------------------------------------------------------


class ModbusReader:
    def __init__(self, link: ModbusLink, retries: int, silence_s: float = 0.0) -> None:
        self.link = link
        self.retries = retries
        self.silence_s = silence_s  # RTU lines: quiet time between a response and the next request

    async def poll(self, target: Target) -> PollResult:
        driver = target.modbus
        assert driver is not None
        result = PollResult()
        unit = int(target.address)
        datas: list[list[int] | list[bool]] = []
        blocks = driver.blocks
        at_once = 1 if self.link.rtu else driver.profile.max_in_flight
        if at_once > 1 and len(blocks) > 1:  # the device takes several requests at once: pipeline its blocks
            for start in range(0, len(blocks), at_once):
                chunk = blocks[start : start + at_once]
                found = await asyncio.gather(*(self._read(block, unit, result) for block in chunk))
                if any(data is None for data in found):
                    return result
                datas.extend(data for data in found if data is not None)
        else:
            for block in blocks:
                data = await self._read(block, unit, result)
                if data is None:
                    return result
                datas.append(data)
        received_at = _now()
        result.answered = True
        raw = driver.decoder.raw(datas)
        try:
            decoded = driver.decoder.decode(datas, target.meter_no, received_at)
        except DecodeError as exc:
            result.frames.append(Frame(raw, received_at, None, exc.reason, exc.message))
            return result
        result.frames.append(Frame(raw, received_at, decoded))
        return result

    async def _read(self, block: ReadBlock, unit: int, result: PollResult) -> list[int] | list[bool] | None:
        for attempt in range(self.retries + 1):
            if self.silence_s:
                await asyncio.sleep(self.silence_s)
            try:
                return await self.link.read(block.function_code, block.address, block.count, unit, block.words)
            except DeviceException as exc:
                result.answered = True
                result.reject(exc.raw, "modbus_exception", f"{block}: {exc}")
                result.error = str(exc)
                return None
            except LinkError as exc:
                result.error = str(exc)
                if attempt == self.retries:
                    return None
            finally:
                if self.link.rejected:  # e.g. a bad CRC: the attempt failed, the frame is kept
                    for bad in self.link.take_rejected():
                        result.reject(bad.raw, bad.reason, f"{block}: {bad.detail}")
        return None

    async def write(self, unit: int, request: WriteRequest, result: PollResult) -> bool | None:
        """One write, never repeated here: without an answer the device may still have acted.

        True: acknowledged; False: refused with an exception response; None: no usable answer.
        """
        if self.silence_s:
            await asyncio.sleep(self.silence_s)
        try:
            await self.link.write(request.function_code, request.address, request.values, unit)
            return True
        except DeviceException as exc:
            result.answered = True
            result.error = str(exc)
            return False
        except LinkError as exc:
            result.error = str(exc)
            return None
        finally:
            for bad in self.link.take_rejected():
                result.reject(bad.raw, bad.reason, f"write {request}: {bad.detail}")

    async def read_valve(self, target: Target, result: PollResult) -> Decoded | None:
        """The valve state from the profile's `[valve.state]` location (one read, retried like a poll's),
        decoded into a status; None without an answer or without such a location."""
        assert target.modbus is not None
        valve = target.modbus.profile.valve
        if valve is None or valve.readback is None:
            return None
        at = valve.readback.at
        block = ReadBlock(at.function, at.address, at.span, 16 if at.function.is_bit else at.register_width)
        data = await self._read(block, int(target.address), result)
        if data is None:
            return None
        received_at = _now()
        result.answered = True
        try:
            decoded = decode_blocks(target.modbus.profile, [(block, data)], target.meter_no, received_at)
        except DecodeError as exc:
            result.frames.append(Frame(_words_bytes(block, data), received_at, None, exc.reason, exc.message))
            return None
        return decoded


def _words_bytes(block: ReadBlock, data: list[int] | list[bool]) -> bytes:
    """Register words as sent on the wire (big-endian), bits one per byte, after the block header."""
    head = struct.pack(">BHH", block.function_code, block.address, block.count)
    if block.function.is_bit:
        return head + bytes(map(bool, data))
    return head + struct.pack(f">{len(data)}H", *data)


# --- CJ/T 188 ----------------------------------------------------------------------------------

READS = {"purchase": cjt188.DI_PURCHASE_READ, "history": cjt188.DI_HISTORY_FIRST}


class Cjt188Reader:
    def __init__(self, line: SerialLine, timeout_s: float, retries: int, workarounds: Workarounds) -> None:
        self.line = line
        self.timeout_s = timeout_s
        self.retries = retries
        self.workarounds = workarounds
        self._ser = 0

    async def poll(self, target: Target) -> PollResult:
        result = PollResult()
        for di in [cjt188.DI_METERING, *(READS[r] for r in target.reads if r in READS)]:
            decoded = await self.exchange(target, di, result)
            if decoded is None:
                return result
            if cjt188.DI_HISTORY_FIRST <= di <= cjt188.DI_HISTORY_LAST:
                _history_readings(decoded, target.meter_no)
        return result

    async def read_address(self) -> str | None:
        """The address of the only meter on the line (broadcast read 810A), or None."""
        result = PollResult()
        found = await self._request(
            lambda ser: cjt188.encode_read_address(ser, self.workarounds), None, result, expect_address=None
        )
        return found[0].address if found is not None else None

    async def exchange(self, target: Target, di: int, result: PollResult) -> Decoded | None:
        """Read one data item (retried as the bus says); the answer goes into `result` as a frame."""
        found = await self._request(
            lambda ser: cjt188.encode_read(target.address, di, ser, self.workarounds), di, result, target.address
        )
        decoded = self._decode(target, found, result)
        if decoded is not None:
            assert found is not None
            result.frames.append(Frame(found[1], _now(), decoded))
        return decoded

    async def write_once(
        self, target: Target, encode: Callable[[int], bytes], di: int, result: PollResult
    ) -> tuple[Decoded, bytes] | None:
        """Send a write request once — never repeated, because the meter may have acted on a request
        whose answer was lost — and return its decoded answer with the raw frame (None without one)."""
        found = await self._request(encode, di, result, target.address, retries=0)
        decoded = self._decode(target, found, result)
        return (decoded, found[1]) if decoded is not None and found is not None else None

    def _decode(self, target: Target, found: tuple[Cjt188Frame, bytes] | None, result: PollResult) -> Decoded | None:
        if found is None:
            return None
        frame, raw = found
        result.answered = True
        try:
            decoded = cjt188.decode_meter_frame(frame, _now(), self.workarounds)
        except DecodeError as exc:
            result.reject(raw, exc.reason, exc.message)
            return None
        return _as_meter(decoded, target.meter_no)

    async def _request(
        self,
        encode: Callable[[int], bytes],
        di: int | None,
        result: PollResult,
        expect_address: str | None,
        retries: int | None = None,
    ) -> tuple[Cjt188Frame, bytes] | None:
        for attempt in range((self.retries if retries is None else retries) + 1):
            stale = self.line.discard_input()
            if stale:
                result.reject(stale, "unexpected", "bytes on the line outside an exchange (late answer or noise)")
            self._ser = (self._ser + 1) & 0xFF
            await self.line.send(encode(self._ser))
            frame = await self._receive(di, result, expect_address)
            if frame is not None:
                return frame
            result.error = f"no answer to {di or 0x810A:04X} (attempt {attempt + 1})"
        return None

    async def _receive(
        self, di: int | None, result: PollResult, expect_address: str | None
    ) -> tuple[Cjt188Frame, bytes] | None:
        framer = Cjt188Framer()
        deadline = time.monotonic() + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            chunk = await self.line.receive(left)
            if not chunk:
                break
            for item in framer.feed(chunk):
                if isinstance(item, Skipped):
                    result.reject(item.data, item.reason, "skipped by the CJ/T 188 framer")
                    continue
                assert isinstance(item, RawFrame)
                try:
                    frame = decode_frame(item.data, self.workarounds.di_order)
                except DecodeError as exc:
                    result.reject(item.data, exc.reason, exc.message)
                    continue
                if not frame.from_meter:
                    continue  # our own request echoed by an RS-485 adapter
                if expect_address is not None and frame.address != expect_address:
                    result.reject(item.data, "unexpected_address", f"answer from {frame.address}, not {expect_address}")
                    continue
                if di is not None and frame.di != di and not frame.error:
                    result.reject(item.data, "unexpected_di", f"answer for {frame.di_text}, not {di:04X}")
                    continue
                return frame, item.data
        for item in framer.flush():
            if isinstance(item, Skipped):
                result.reject(item.data, item.reason, "skipped by the CJ/T 188 framer")
        return None


def _as_meter(decoded: Decoded, meter_no: str) -> Decoded:
    """A CJ/T 188 frame names the meter by its address; the poll knows which meter it asked."""
    return Decoded(
        readings=[replace(r, meter_no=meter_no) for r in decoded.readings],
        events=[replace(e, meter_no=meter_no) for e in decoded.events],
        statuses=[replace(s, meter_no=meter_no) for s in decoded.statuses],
        replies=[replace(r, meter_no=meter_no) for r in decoded.replies],
    )


def _history_readings(decoded: Decoded, meter_no: str) -> None:
    """A history month has no date of its own: keep it as a reading at the receive time."""
    for reply in decoded.replies:
        months = reply.detail.get("months_ago")
        volume = reply.detail.get("settlement_volume_m3")
        if isinstance(months, int) and isinstance(volume, Decimal):
            decoded.readings.append(Reading(meter_no, f"settlement_volume_m3_month_{months}", reply.ts, volume))


# --- M-Bus -------------------------------------------------------------------------------------


class MbusReader:
    def __init__(self, line: SerialLine, timeout_s: float, retries: int) -> None:
        self.line = line
        self.timeout_s = timeout_s
        self.retries = retries
        self.fcb = FcbState()
        self._initialised: set[str] = set()

    async def poll(self, target: Target) -> PollResult:
        result = PollResult()
        secondary = len(target.address) == 8
        address = ADDRESS_SECONDARY if secondary else int(target.address)
        if secondary:
            request = mbus.select_secondary(target.address)
            if not isinstance(await self._exchange(request, result), Ack):
                return result
            self._initialised.discard(target.address)
        if target.address not in self._initialised:
            if not isinstance(await self._exchange(self.fcb.reset(address), result), Ack):
                return result
            self._initialised.add(target.address)
        request = self.fcb.next_req_ud2(address)
        for _ in range(MAX_TELEGRAMS):
            reply = await self._exchange(request, result, repeat=lambda: self.fcb.repeat_req_ud2(address))
            if not isinstance(reply, LongFrame):
                self._initialised.discard(target.address)
                return result
            received_at = _now()
            raw = reply.to_bytes()
            try:
                telegram = mbus.parse_telegram(reply)
                if secondary and (telegram.header is None or telegram.header.identification != target.address):
                    found = telegram.header.identification if telegram.header else "none"
                    raise DecodeError("unexpected_address", f"telegram from {found}, not {target.address}")
                decoded = mbus.to_decoded(telegram, target.meter_no, received_at)
            except DecodeError as exc:
                result.answered = True
                result.frames.append(Frame(raw, received_at, None, exc.reason, exc.message))
                return result
            result.answered = True
            result.frames.append(Frame(raw, received_at, decoded))
            if not telegram.more_follows:
                break
            request = self.fcb.next_req_ud2(address)
        return result

    async def _exchange(
        self, request: bytes, result: PollResult, repeat: Callable[[], bytes] | None = None
    ) -> Ack | LongFrame | None:
        for attempt in range(self.retries + 1):
            stale = self.line.discard_input()
            if stale:
                result.reject(stale, "unexpected", "bytes on the line outside an exchange (late answer or noise)")
            await self.line.send(request if attempt == 0 or repeat is None else repeat())
            frame = await self._receive(result)
            if frame is not None:
                return frame
            result.error = f"no answer to {request.hex(' ').upper()} (attempt {attempt + 1})"
        return None

    async def _receive(self, result: PollResult) -> Ack | LongFrame | None:
        framer = MbusFramer()
        deadline = time.monotonic() + self.timeout_s
        found: Ack | LongFrame | None = None
        while found is None and (left := deadline - time.monotonic()) > 0:
            chunk = await self.line.receive(left)
            if not chunk:
                break
            for frame in framer.feed(chunk):
                if isinstance(frame, Ack | LongFrame):
                    found = frame
                    break
        if found is None:
            framer.idle()
        for rejected in framer.take_rejected():
            result.reject(rejected.raw, rejected.reason, rejected.message)
        return found
