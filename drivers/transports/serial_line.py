"""A half-duplex serial line (RS-485, M-Bus level converter) or a TCP serial gateway, for asyncio.

It moves bytes: `send` writes a request after the line has been quiet for the inter-frame silence,
`receive` returns what arrived next. Framing belongs to the protocol (drivers.cjt188.framer,
drivers.mbus.link).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

import serial

from drivers.transports.wire import char_time_s


class SerialLine:
    """A local serial port opened with pyserial, read through the event loop without threads."""

    def __init__(
        self,
        device: str,
        baudrate: int = 2400,
        bytesize: int = 8,
        parity: str = "E",
        stopbits: int = 1,
        silence_s: float | None = None,
    ) -> None:
        self.device = device
        self.endpoint = device
        self.baudrate, self.bytesize, self.parity, self.stopbits = baudrate, bytesize, parity, stopbits
        self.char_time_s = char_time_s(baudrate, bytesize, parity, stopbits)
        self.silence_s = max(0.002, 3.5 * self.char_time_s) if silence_s is None else silence_s
        self._port: serial.Serial | None = None
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._last_activity = 0.0

    @property
    def connected(self) -> bool:
        return self._port is not None

    async def connect(self) -> None:
        if self._port is not None:
            return
        try:
            port = serial.Serial(
                self.device,
                baudrate=self.baudrate,
                bytesize=self.bytesize,
                parity=self.parity,
                stopbits=self.stopbits,
                timeout=0,
                write_timeout=5,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ConnectionError(f"cannot open {self.device}: {exc}") from None
        self._port = port
        asyncio.get_running_loop().add_reader(port.fileno(), self._readable)

    def _readable(self) -> None:
        assert self._port is not None
        try:
            data = os.read(self._port.fileno(), 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._last_activity = time.monotonic()
        if data:
            self._chunks.put_nowait(data)
        else:  # the other end went away (pty closed, adapter unplugged)
            self.close()

    def close(self) -> None:
        if self._port is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._port.fileno())
        with contextlib.suppress(Exception):
            self._port.close()
        self._port = None

    def discard_input(self) -> bytes:
        """Drop (and return) bytes that arrived outside an exchange: late answers, line noise."""
        dropped = bytearray()
        while not self._chunks.empty():
            dropped += self._chunks.get_nowait()
        return bytes(dropped)

    async def send(self, data: bytes) -> None:
        await self.connect()
        assert self._port is not None
        quiet = time.monotonic() - self._last_activity
        if quiet < self.silence_s:
            await asyncio.sleep(self.silence_s - quiet)
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._port.fileno(), view)
            except BlockingIOError:
                await asyncio.sleep(self.char_time_s)
                continue
            view = view[written:]
        # the request occupies the line until its last character has gone out
        self._last_activity = time.monotonic() + len(data) * self.char_time_s

    async def receive(self, timeout_s: float) -> bytes:
        """The next chunk, or b"" when nothing arrives within `timeout_s`."""
        try:
            return await asyncio.wait_for(self._chunks.get(), timeout_s)
        except TimeoutError:
            return b""


class TcpSerialLine(SerialLine):
    """The same line behind a serial-to-Ethernet gateway (transparent TCP mode)."""

    def __init__(self, host: str, port: int, silence_s: float = 0.005, baudrate: int = 2400) -> None:
        super().__init__(f"{host}:{port}", baudrate=baudrate, silence_s=silence_s)
        self.host, self.tcp_port = host, port
        self._sock: socket.socket | None = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    async def connect(self) -> None:
        if self._sock is not None:
            return
        try:
            reader_writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.tcp_port), 5)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"cannot connect to {self.endpoint}: {exc}") from None
        reader, writer = reader_writer
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._reader, self._writer = reader, writer
        self._pump = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        while True:
            try:
                data = await self._reader.read(4096)
            except OSError:  # reset by the gateway
                data = b""
            if not data:  # the gateway closed the connection (restart, another client): connect again on send
                self.close()
                return
            self._last_activity = time.monotonic()
            self._chunks.put_nowait(data)

    def close(self) -> None:
        if self._sock is None:
            return
        self._sock = None
        self._writer.close()
        if self._pump is not asyncio.current_task():
            self._pump.cancel()

    async def send(self, data: bytes) -> None:
        await self.connect()
        quiet = time.monotonic() - self._last_activity
        if quiet < self.silence_s:
            await asyncio.sleep(self.silence_s - quiet)
        self._writer.write(data)
        await self._writer.drain()
        self._last_activity = time.monotonic()
