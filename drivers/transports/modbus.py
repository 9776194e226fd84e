"""Modbus TCP, RTU over TCP and RTU on a serial port: a lean asyncio client of our own.

One `ModbusLink` is one connection. The link moves register words and bits; the modbus driver plans
and decodes them, the frames are in drivers/transports/modbus_frames.py.

- **Modbus TCP** (MBAP): answers are matched to requests by transaction id, so several requests may be
  in flight on one connection (`read` and `write` can be awaited concurrently); the poller keeps one
  outstanding per device. No lock, no task and no timer per request: a future that the protocol's
  `data_received` resolves, and its deadline in a queue that one timer per link walks (requests on a
  link share one timeout, so deadlines come in order). An answer whose transaction is over (it came
  after its timeout) is dropped.
- **RTU** (a serial port, or RTU over TCP through a gateway): one request at a time; the answer is found
  by `RtuFramer`, which resynchronises on junk. An answer with a bad CRC is kept as a `RejectedFrame`
  (taken with `take_rejected()`) and ends the request with a `LinkError` once the line has stayed quiet
  for `quiet_s`, so the caller dead-letters it and retries without waiting for the timeout. Junk before a
  good answer and bytes that arrived between two requests are kept too (`garbage`, `unexpected`).

Errors: `LinkError` for no usable answer (cannot connect, timed out, connection lost, an answer that
does not fit the request); `DeviceException` for a Modbus exception response.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import serial

from drivers.transports.modbus_frames import (
    READ_CODES,
    ExceptionAnswer,
    FrameMismatch,
    RtuFramer,
    answer_length,
    mbap_adu,
    parse_answer,
    read_pdu,
    rtu_adu,
    split_mbap,
    write_pdu,
)
from drivers.transports.wire import rtu_silence_s

RTU_QUIET_S = 0.05  # after a CRC failure, this long without a byte ends the request (no good answer is coming)


class LinkError(Exception):
    """No usable answer: not connected, timed out, or a frame that did not fit the request."""


class DeviceException(Exception):
    """The device answered with a Modbus exception response; `raw` is the frame as received."""

    def __init__(self, function_code: int, exception_code: int, raw: bytes = b"") -> None:
        super().__init__(f"function {function_code:02X}: exception code {exception_code:02X}")
        self.function_code = function_code
        self.exception_code = exception_code
        self.raw = raw


@dataclass(frozen=True, slots=True)
class RejectedFrame:
    raw: bytes
    reason: str  # bad_crc, garbage, truncated, unexpected, bad_response
    detail: str


@dataclass(frozen=True, slots=True)
class SerialParams:
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1


class _Protocol(asyncio.Protocol):
    def __init__(self, link: ModbusLink, on_data: Callable[[bytes], None]) -> None:
        self.link = link
        self.transport: asyncio.BaseTransport | None = None
        self.data_received = on_data  # type: ignore[method-assign,assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link._transport is self.transport:  # not a connection the link has closed and replaced already
            self.link._lost(exc)


class _SerialPort:
    """A local serial port read through the event loop, with the two transport methods the link uses."""

    def __init__(
        self, port: serial.Serial, on_data: Callable[[bytes], None], on_lost: Callable[[Exception | None], None]
    ) -> None:
        self.port, self.on_data, self.on_lost = port, on_data, on_lost
        self.fd = port.fileno()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self.close()
            self.on_lost(exc)
            return
        if not data:  # the other end went away (pty closed, adapter unplugged)
            self.close()
            self.on_lost(None)
            return
        self.on_data(data)

    def write(self, data: bytes) -> None:
        self.port.write(data)  # a request is a few bytes: the driver's buffer takes it at once

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.fd)
        with contextlib.suppress(Exception):
            self.port.close()


class ModbusLink:
    """One Modbus connection: TCP_NODELAY, no hidden retries, per-request timeout, bad frames kept for dead letters."""

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int = 502,
        device: str | None = None,
        framer: Literal["socket", "rtu"] = "socket",
        serial: SerialParams | None = None,
        timeout_s: float = 1.0,
        quiet_s: float | None = None,
    ) -> None:
        if device is None and host is None:
            raise ValueError("a Modbus link needs a host or a serial device")
        self.host, self.port, self.device = host, port, device
        self.serial = serial or SerialParams()
        self.rtu = device is not None or framer == "rtu"
        self.endpoint = device if device is not None else f"{host}:{port}"
        self.timeout_s = timeout_s
        if quiet_s is None:
            quiet_s = max(RTU_QUIET_S, 4 * rtu_silence_s(self.serial.baudrate)) if device else RTU_QUIET_S
        self.quiet_s = quiet_s
        self.last_received = b""
        self.rejected: list[RejectedFrame] = []
        self._transport: Any = None
        self._deadlines: deque[tuple[float, asyncio.Future[bytes], int]] = deque()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Future[None] | None = None
        # Modbus TCP
        self._buffer = bytearray()
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._tid = 0
        # RTU
        self._framer = RtuFramer()
        self._answer: asyncio.Future[bytes] | None = None
        self._quiet: asyncio.TimerHandle | None = None
        self._line: asyncio.Lock | None = None

    # -- connection -------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._transport is not None

    async def connect(self) -> None:
        if self._transport is not None:
            return
        if self._connecting is not None:  # another request is connecting: wait for it
            await asyncio.shield(self._connecting)
            return
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            if self.device is not None:
                self._transport = self._open_serial()
            else:
                self._transport = await self._open_tcp()
            self._connecting.set_result(None)
        except BaseException as exc:
            failed = exc if isinstance(exc, LinkError) else LinkError(f"connecting to {self.endpoint} was interrupted")
            self._connecting.set_exception(failed)  # for the requests waiting on this connect
            self._connecting.exception()  # retrieved: nobody waiting is fine too
            raise
        finally:
            self._connecting = None

    async def _open_tcp(self) -> Any:
        assert self.host is not None
        loop = asyncio.get_running_loop()
        on_data = self._rtu_data if self.rtu else self._mbap_data
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self, on_data), self.host, self.port),
                self.timeout_s + 1,
            )
        except (TimeoutError, OSError) as exc:
            raise LinkError(f"cannot connect to {self.endpoint}: {exc or type(exc).__name__}") from None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # per-request latency, not bandwidth, limits a poller: do not wait for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return transport

    def _open_serial(self) -> _SerialPort:
        assert self.device is not None
        params = self.serial
        try:
            port = serial.Serial(
                self.device,
                baudrate=params.baudrate,
                bytesize=params.bytesize,
                parity=params.parity,
                stopbits=params.stopbits,
                timeout=0,
                write_timeout=2,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"cannot open {self.device}: {exc}") from None
        return _SerialPort(port, self._rtu_data, self._lost)

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        self._fail_all(LinkError(f"connection to {self.endpoint} closed"))
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadlines.clear()

    def _lost(self, exc: Exception | None) -> None:
        """The connection went away under us (the peer closed it, the port was unplugged)."""
        self._transport = None
        self._fail_all(LinkError(f"connection to {self.endpoint} lost" + (f": {exc}" if exc else "")))

    def _fail_all(self, error: LinkError) -> None:
        self._buffer.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)

    # -- requests ---------------------------------------------------------------------------------
    async def read(
        self, function_code: int, address: int, count: int, unit: int, words: int | None = None
    ) -> list[int] | list[bool]:
        """Registers (03, 04) as words, or coils and discrete inputs (01, 02) as bools.

        `words`: how many 16-bit words the answer carries when not one per register (32-bit-wide registers).
        """
        if function_code not in READ_CODES:
            raise ValueError(f"not a read function code: {function_code}")
        request = read_pdu(function_code, address, count)
        length = answer_length(request, words)
        if self.rtu:
            frame = await self._exchange_rtu(unit, request, length)
            values = self._parse(request, frame, frame[1:-2], length)
        else:
            frame = await self._exchange_mbap(unit, request)
            values = self._parse(request, frame, frame[7:], length)
        assert values is not None
        return values

    async def write(self, function_code: int, address: int, values: Sequence[int], unit: int) -> None:
        """05 (one coil), 06 (one register) or 16 (registers)."""
        request = write_pdu(function_code, address, list(values))
        length = answer_length(request)
        if self.rtu:
            frame = await self._exchange_rtu(unit, request, length)
            self._parse(request, frame, frame[1:-2], length)
        else:
            frame = await self._exchange_mbap(unit, request)
            self._parse(request, frame, frame[7:], length)

    def _parse(self, request: bytes, frame: bytes, answer: bytes, length: int) -> list[int] | list[bool] | None:
        self.last_received = frame
        try:
            return parse_answer(request, answer, length)
        except ExceptionAnswer as exc:
            raise DeviceException(exc.function_code, exc.exception_code, frame) from None
        except FrameMismatch as exc:
            self.rejected.append(RejectedFrame(frame, "bad_response", f"{exc} from {self.endpoint}"))
            raise LinkError(f"answer does not fit the request: {exc}") from None

    def take_rejected(self) -> list[RejectedFrame]:
        """Frames received and rejected since the last call, oldest first."""
        found, self.rejected = self.rejected, []
        return found

    def _deadline(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[bytes], unit: int) -> None:
        """`future` fails with a LinkError unless answered within timeout_s."""
        deadline = loop.time() + self.timeout_s
        self._deadlines.append((deadline, future, unit))
        if self._deadline_timer is None:
            self._deadline_timer = loop.call_at(deadline, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._deadline_timer = None
        deadlines, now = self._deadlines, loop.time()
        while deadlines:
            deadline, future, unit = deadlines[0]
            if not future.done():
                if deadline > now:
                    self._deadline_timer = loop.call_at(deadline, self._expire, loop)
                    return
                error = f"no answer from unit {unit} at {self.endpoint} within {self.timeout_s} s"
                future.set_exception(LinkError(error))
            deadlines.popleft()

    # -- Modbus TCP -------------------------------------------------------------------------------
    async def _exchange_mbap(self, unit: int, request: bytes) -> bytes:
        transport = self._transport
        if transport is None:
            await self.connect()
            transport = self._transport
        loop = asyncio.get_running_loop()
        tid = self._tid = (self._tid + 1) & 0xFFFF
        future: asyncio.Future[bytes] = loop.create_future()
        self._pending[tid] = future
        transport.write(mbap_adu(tid, unit, request))
        self._deadline(loop, future, unit)
        try:
            return await future
        finally:
            del self._pending[tid]

    def _mbap_data(self, data: bytes) -> None:
        buffer = self._buffer
        if not buffer and len(data) >= 7 and len(data) == 6 + (data[4] << 8 | data[5]) and not data[2] | data[3]:
            self._mbap_frame(data)  # the usual case: one answer, one segment
            return
        buffer += data
        try:
            frames = split_mbap(buffer)
        except FrameMismatch as exc:
            self.rejected.append(RejectedFrame(bytes(buffer), "garbage", f"{exc} from {self.endpoint}"))
            buffer.clear()
            return
        for frame in frames:
            self._mbap_frame(frame)

    def _mbap_frame(self, frame: bytes) -> None:
        future = self._pending.get(frame[0] << 8 | frame[1])
        if future is not None and not future.done():
            future.set_result(frame)
        # else: the answer to a request that has timed out already

    # -- RTU --------------------------------------------------------------------------------------
    async def _exchange_rtu(self, unit: int, request: bytes, length: int) -> bytes:
        if self._line is None:
            self._line = asyncio.Lock()
        async with self._line:  # one request at a time on a line
            return await self._exchange_rtu_now(unit, request, length)

    async def _exchange_rtu_now(self, unit: int, request: bytes, length: int) -> bytes:
        await self.connect()
        loop = asyncio.get_running_loop()
        adu = rtu_adu(unit, request)
        stale = self._framer.expect(adu, length)
        if stale:
            self.rejected.append(RejectedFrame(stale, "unexpected", f"bytes outside an exchange on {self.endpoint}"))
        future: asyncio.Future[bytes] = loop.create_future()
        self._answer = future
        self._transport.write(adu)
        self._deadline(loop, future, unit)
        try:
            return await future
        finally:
            if self._quiet is not None:
                self._quiet.cancel()
                self._quiet = None
            self._answer = None
            framer = self._framer
            if not future.done() or future.cancelled() or future.exception() is not None:
                reason = "truncated" if framer.waiting_at is not None else "garbage"
                left = framer.give_up()
                if left:
                    self.rejected.append(RejectedFrame(left, reason, f"{len(left)} bytes without an answer"))
            framer.finish()

    def _rtu_data(self, data: bytes) -> None:
        framer = self._framer
        match = framer.feed(data)
        future = self._answer
        if future is None or future.done():
            return
        if match is not None:
            if match.skipped:
                detail = f"{len(match.skipped)} bytes before the answer from {self.endpoint}"
                self.rejected.append(RejectedFrame(match.skipped, "garbage", detail))
            future.set_result(match.frame)
            return
        if framer.crc_failed:  # perhaps the answer itself: give up once the line has been quiet for a while
            if self._quiet is not None:
                self._quiet.cancel()
            self._quiet = asyncio.get_running_loop().call_later(self.quiet_s, self._line_quiet, future)

    def _line_quiet(self, future: asyncio.Future[bytes]) -> None:
        self._quiet = None
        if future.done():
            return
        raw = self._framer.give_up()
        detail = f"Modbus RTU CRC check failed on {len(raw)} bytes from {self.endpoint}"
        self.rejected.append(RejectedFrame(raw, "bad_crc", detail))
        future.set_exception(LinkError(f"bad CRC in a {len(raw)}-byte answer"))
