"""Modbus TCP, RTU over TCP and RTU on a serial port, through pymodbus 3 async clients.

One `ModbusLink` is one connection; pymodbus sends one request at a time on it. The link moves
register words and bits; the modbus driver plans and decodes them.

RTU framing (serial, RTU over TCP) goes through `CheckedRtuFramer`: pymodbus' RTU framer silently
drops a frame whose CRC does not match, which would only show up as a timeout. Ours keeps the raw
bytes as a `RejectedFrame` (taken with `take_rejected()`) and ends the request at once with a
`LinkError`, so the caller dead-letters the frame and retries without waiting for the timeout.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerRTU, FramerType
from pymodbus.pdu import DecodePDU

READ_CODES = (1, 2, 3, 4)


class LinkError(Exception):
    """No usable answer: not connected, timed out, or a frame that did not fit the request."""


class DeviceException(Exception):
    """The device answered with a Modbus exception response."""

    def __init__(self, function_code: int, exception_code: int) -> None:
        super().__init__(f"function {function_code:02X}: exception code {exception_code:02X}")
        self.function_code = function_code
        self.exception_code = exception_code


class BadFrame(ModbusException):
    """A received frame that failed its check; ends the pending request early."""


@dataclass(frozen=True, slots=True)
class RejectedFrame:
    raw: bytes
    reason: str  # bad_crc
    detail: str


class CheckedRtuFramer(FramerRTU):
    """pymodbus' RTU framer, reporting a frame with a bad CRC instead of dropping it silently."""

    def __init__(self, decoder: DecodePDU, on_bad: Callable[[bytes], None]) -> None:
        super().__init__(decoder)
        self.on_bad = on_bad

    def decode(self, data: bytes) -> tuple[int, int, int, bytes]:
        used, dev_id, tid, pdu = super().decode(data)
        if used and not pdu:  # the parent's only "consumed, no frame" case: a CRC mismatch
            self.on_bad(bytes(data[:used]))
        return used, dev_id, tid, pdu


@dataclass(frozen=True, slots=True)
class SerialParams:
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1


class ModbusLink:
    """A pymodbus client with TCP_NODELAY, no hidden retries, and the last received frame kept for dead letters."""

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int = 502,
        device: str | None = None,
        framer: Literal["socket", "rtu"] = "socket",
        serial: SerialParams | None = None,
        timeout_s: float = 1.0,
    ) -> None:
        self.last_received = b""
        self.rejected: list[RejectedFrame] = []
        self.timeout_s = timeout_s
        framer_type = FramerType.RTU if framer == "rtu" else FramerType.SOCKET
        self.client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if device is not None:
            params = serial or SerialParams()
            self.client = AsyncModbusSerialClient(
                device,
                framer=FramerType.RTU,
                baudrate=params.baudrate,
                bytesize=params.bytesize,
                parity=params.parity,
                stopbits=params.stopbits,
                timeout=timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace,
            )
            self.endpoint = device
        elif host is not None:
            self.client = AsyncModbusTcpClient(
                host,
                port=port,
                framer=framer_type,
                timeout=timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace,
            )
            self.endpoint = f"{host}:{port}"
        else:
            raise ValueError("a Modbus link needs a host or a serial device")
        self.client.set_max_no_responses(1_000_000)  # the poller decides when a device is gone, not pymodbus
        if device is not None or framer == "rtu":
            self.client.ctx.framer = CheckedRtuFramer(self.client.ctx.framer.decoder, self._bad_frame)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.last_received = bytes(data)
        return data

    def _bad_frame(self, raw: bytes) -> None:
        detail = f"Modbus RTU CRC check failed on {len(raw)} bytes from {self.endpoint}"
        self.rejected.append(RejectedFrame(raw, "bad_crc", detail))
        future: asyncio.Future[Any] = self.client.ctx.response_future
        if not future.done():
            future.set_exception(BadFrame(f"bad CRC in a {len(raw)}-byte answer"))

    def take_rejected(self) -> list[RejectedFrame]:
        """Frames received and rejected since the last call, oldest first."""
        found, self.rejected = self.rejected, []
        return found

    @property
    def connected(self) -> bool:
        return self.client.connected

    async def connect(self) -> None:
        if self.client.connected:
            return
        try:
            ok = await asyncio.wait_for(self.client.connect(), self.timeout_s + 1)
        except (TimeoutError, OSError) as exc:
            raise LinkError(f"cannot connect to {self.endpoint}: {exc}") from None
        if not ok:
            raise LinkError(f"cannot connect to {self.endpoint}")
        transport: Any = self.client.ctx.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # per-request latency, not bandwidth, limits a poller: do not wait for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.client.close()

    async def read(self, function_code: int, address: int, count: int, unit: int) -> list[int] | list[bool]:
        """Registers (03, 04) as words, or coils and discrete inputs (01, 02) as bools."""
        if function_code not in READ_CODES:
            raise ValueError(f"not a read function code: {function_code}")
        await self.connect()
        call = {
            1: self.client.read_coils,
            2: self.client.read_discrete_inputs,
            3: self.client.read_holding_registers,
            4: self.client.read_input_registers,
        }[function_code]
        self.last_received = b""
        response = await self._execute(call(address, count=count, device_id=unit))
        if function_code in (1, 2):
            return list(response.bits[:count])
        return list(response.registers)

    async def write(self, function_code: int, address: int, values: Sequence[int], unit: int) -> None:
        """05 (one coil), 06 (one register) or 16 (registers)."""
        await self.connect()
        if function_code == 5:
            await self._execute(self.client.write_coil(address, bool(values[0]), device_id=unit))
        elif function_code == 6:
            await self._execute(self.client.write_register(address, values[0], device_id=unit))
        elif function_code == 16:
            await self._execute(self.client.write_registers(address, list(values), device_id=unit))
        else:
            raise ValueError(f"not a write function code: {function_code}")

    async def _execute(self, request: Any) -> Any:
        try:
            response = await request
        except ModbusException as exc:
            raise LinkError(str(exc)) from None
        except (TimeoutError, OSError) as exc:
            raise LinkError(f"{type(exc).__name__}: {exc}") from None
        if response.isError():
            raise DeviceException(response.function_code & 0x7F, getattr(response, "exception_code", 0))
        return response
