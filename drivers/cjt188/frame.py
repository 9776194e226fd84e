"""CJ/T 188 frames: `[FE × n] 68 T A0..A6 C L DI(2) SER payload CS 16`, BCD helpers and the checksum."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from drivers.base import DecodeError

START, END, PREAMBLE = 0x68, 0x16, 0xFE
HEADER_LEN = 11  # 68 T A0..A6 C L
MAX_DATA_LEN = 255
BROADCAST_ADDRESS = "AAAAAAAAAAAAAA"

DIR_FROM_METER = 0x80
ERROR = 0x40
FOLLOW_UP = 0x20
FUNCTION_MASK = 0x1F

ByteOrder = Literal["big", "little"]


def checksum(data: bytes | bytearray) -> int:
    """Sum of the bytes from the first 68 to the last data byte, mod 256."""
    return sum(data) & 0xFF


def control_code(function: int, from_meter: bool = False, error: bool = False, follow_up: bool = False) -> int:
    if not 0 <= function <= FUNCTION_MASK:
        raise ValueError(f"function must be 0..31, got {function}")
    return function | (DIR_FROM_METER if from_meter else 0) | (ERROR if error else 0) | (FOLLOW_UP if follow_up else 0)


def bcd_to_int(data: bytes, field: str = "BCD") -> int:
    """Lowest byte first ("56 34 12" -> 123456); DecodeError('bad_bcd') on a nibble above 9."""
    value = 0
    for byte in reversed(data):
        high, low = byte >> 4, byte & 0x0F
        if high > 9 or low > 9:
            raise DecodeError("bad_bcd", f"{field} {data.hex(' ').upper()} is not BCD")
        value = value * 100 + high * 10 + low
    return value


def int_to_bcd(value: int, length: int) -> bytes:
    """Lowest byte first; ValueError when it does not fit."""
    if not 0 <= value < 100**length:
        raise ValueError(f"{value} does not fit in {length} BCD bytes")
    out = bytearray()
    for _ in range(length):
        value, pair = divmod(value, 100)
        out.append((pair // 10) << 4 | pair % 10)
    return bytes(out)


def bcd_decimal(data: bytes, decimals: int, field: str) -> Decimal:
    return Decimal(bcd_to_int(data, field)).scaleb(-decimals)


def decimal_to_bcd(value: Decimal, length: int, decimals: int) -> bytes:
    """An exact amount as BCD; ValueError when it is negative, too large or has more decimals."""
    scaled = value.scaleb(decimals)
    if not value.is_finite() or scaled != scaled.to_integral_value():
        raise ValueError(f"{value} has more than {decimals} decimals")
    return int_to_bcd(int(scaled), length)


def address_to_bytes(address: str) -> bytes:
    """The printed 14-digit address to its wire form (lowest byte first)."""
    if len(address) != 14:
        raise ValueError(f"a CJ/T 188 address has 14 hex digits, got {address!r}")
    try:
        return bytes.fromhex(address)[::-1]
    except ValueError:
        raise ValueError(f"a CJ/T 188 address has 14 hex digits, got {address!r}") from None


def address_from_bytes(data: bytes) -> str:
    return data[::-1].hex().upper()


@dataclass(frozen=True, slots=True)
class Frame:
    meter_type: int
    address: str  # printed form, 14 hex digits (BCD digits, or AA… for broadcast)
    control: int
    di: int  # data identifier as printed, e.g. 0x901F, whatever its byte order on the wire
    ser: int
    payload: bytes = b""

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK

    @property
    def from_meter(self) -> bool:
        return bool(self.control & DIR_FROM_METER)

    @property
    def error(self) -> bool:
        return bool(self.control & ERROR)

    @property
    def follow_up(self) -> bool:
        return bool(self.control & FOLLOW_UP)

    @property
    def di_text(self) -> str:
        return f"{self.di:04X}"


def encode_frame(frame: Frame, di_order: ByteOrder = "big", preamble: int = 0) -> bytes:
    """Frame to wire bytes; `di_order` 'big' sends 90 1F, 'little' 1F 90. ValueError on bad fields."""
    if len(frame.payload) > MAX_DATA_LEN - 3:
        raise ValueError(f"payload of {len(frame.payload)} bytes does not fit in one frame")
    for name, value, limit in (
        ("meter_type", frame.meter_type, 0xFF),
        ("control", frame.control, 0xFF),
        ("di", frame.di, 0xFFFF),
        ("ser", frame.ser, 0xFF),
    ):
        if not 0 <= value <= limit:
            raise ValueError(f"{name} {value} is out of range")
    body = (
        bytes([START, frame.meter_type])
        + address_to_bytes(frame.address)
        + bytes([frame.control, len(frame.payload) + 3])
        + frame.di.to_bytes(2, di_order)
        + bytes([frame.ser])
        + frame.payload
    )
    return bytes([PREAMBLE]) * preamble + body + bytes([checksum(body), END])


def decode_frame(data: bytes, di_order: ByteOrder = "big") -> Frame:
    """Exactly one frame, with any number of leading FE. DecodeError for anything else."""
    start = 0
    while start < len(data) and data[start] == PREAMBLE:
        start += 1
    raw = data[start:]
    if len(raw) < HEADER_LEN + 2 or raw[0] != START:
        raise DecodeError("no_frame", f"no CJ/T 188 frame start in {data[:16].hex(' ').upper()}")
    length = raw[10]
    total = HEADER_LEN + length + 2
    if len(raw) < total:
        raise DecodeError("truncated", f"frame declares {length} data bytes but only {len(raw) - 13} arrived")
    if len(raw) > total:
        raise DecodeError("trailing_bytes", f"{len(raw) - total} bytes after the frame end")
    if raw[-1] != END:
        raise DecodeError("bad_end", f"frame ends with {raw[-1]:02X}, not 16")
    if checksum(raw[:-2]) != raw[-2]:
        raise DecodeError("bad_checksum", f"checksum {raw[-2]:02X}, computed {checksum(raw[:-2]):02X}")
    if length < 3:
        raise DecodeError("short_data", f"data length {length} has no room for DI and SER")
    return Frame(
        meter_type=raw[1],
        address=address_from_bytes(raw[2:9]),
        control=raw[9],
        di=int.from_bytes(raw[11:13], di_order),
        ser=raw[13],
        payload=bytes(raw[14:-2]),
    )
