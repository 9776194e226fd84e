"""M-Bus application layer (EN 13757-3): RSP_UD telegrams to records, records to readings.

The link layer (frames, request encoders, the stream framer) lives in drivers.mbus.link and is
re-exported here. Every record of a telegram is kept, known or not, with its raw bytes in hex.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from drivers.base import Decoded, DecodeError, EventKind, MeterEvent, Reading
from drivers.mbus.link import (
    ACK,
    C_REQ_UD2,
    C_RSP_UD,
    C_SND_NKE,
    C_SND_UD,
    Ack,
    FcbState,
    Frame,
    LongFrame,
    Rejected,
    ShortFrame,
    StreamFramer,
    decode_manufacturer,
    encode_long,
    encode_manufacturer,
    encode_short,
    parse_frame,
    req_ud2,
    select_secondary,
    snd_nke,
)
from drivers.mbus.vif import EXTENSION_FB, EXTENSION_FD, MEDIUM, PRIMARY, VifInfo, vife_exponent

__all__ = [
    "ACK",
    "C_REQ_UD2",
    "C_RSP_UD",
    "C_SND_NKE",
    "C_SND_UD",
    "Ack",
    "FcbState",
    "Frame",
    "Header",
    "LongFrame",
    "Record",
    "RecordFunction",
    "Rejected",
    "ShortFrame",
    "StreamFramer",
    "Telegram",
    "channel_for",
    "decode_manufacturer",
    "encode_long",
    "encode_manufacturer",
    "encode_short",
    "parse_frame",
    "parse_telegram",
    "req_ud2",
    "select_secondary",
    "snd_nke",
    "to_decoded",
]

CI_VARIABLE = 0x72  # variable data structure, long header, multi-byte values LSB first
CI_VARIABLE_MSB = 0x76  # the same with multi-byte values MSB first ("mode 2")
CI_VARIABLE_NO_HEADER = 0x78
CI_VARIABLE_SHORT_HEADER = 0x7A

DIF_MANUFACTURER = 0x0F  # manufacturer-specific data to the end of the telegram
DIF_MORE_FOLLOWS = 0x1F  # … and more telegrams follow
DIF_IDLE_FILLER = 0x2F
_MAX_EXTENSIONS = 10

_FIXED_SIZE = {
    0x0: 0,
    0x1: 1,
    0x2: 2,
    0x3: 3,
    0x4: 4,
    0x5: 4,
    0x6: 6,
    0x7: 8,
    0x8: 0,
    0x9: 1,
    0xA: 2,
    0xB: 3,
    0xC: 4,
    0xE: 6,
}
_BCD_FIELDS = {0x9, 0xA, 0xB, 0xC, 0xE}


class RecordFunction(StrEnum):
    INSTANTANEOUS = "instantaneous"
    MAXIMUM = "maximum"
    MINIMUM = "minimum"
    ERROR = "error"  # value during error state


_FUNCTIONS = (RecordFunction.INSTANTANEOUS, RecordFunction.MAXIMUM, RecordFunction.MINIMUM, RecordFunction.ERROR)
_FUNCTION_SUFFIX = {
    RecordFunction.INSTANTANEOUS: "",
    RecordFunction.MAXIMUM: "_max",
    RecordFunction.MINIMUM: "_min",
    RecordFunction.ERROR: "_error",
}


@dataclass(frozen=True, slots=True)
class Header:
    identification: str  # 8 BCD digits, as printed on the meter
    manufacturer: str  # three letters
    version: int
    medium: int
    access_no: int
    status: int
    signature: int

    @property
    def medium_name(self) -> str:
        return MEDIUM.get(self.medium, f"reserved ({self.medium:02X})")


@dataclass(frozen=True, slots=True)
class Record:
    raw: str  # the record's bytes (DIF … data), hex
    storage: int
    tariff: int
    subunit: int
    function: RecordFunction
    data_field: int  # low nibble of the DIF; 0xF for manufacturer-specific data
    vif: int | None  # the VIF byte (for FD/FB, the byte after it), None without one
    vif_table: str  # primary, fd, fb, plain_text, any, manufacturer, none
    vifes: tuple[int, ...]
    raw_value: int | str | None  # integer or BCD as int, text as str, binary as hex str
    value: Decimal | None  # raw_value × 10^exponent, for numbers
    unit: str
    exponent: int
    description: str
    text: str | None = None  # strings, identifiers with leading zeros, dates (ISO 8601, meter local time)
    known: bool = True  # False when a VIF or VIFE is not understood: kept, but never a reading


@dataclass(frozen=True, slots=True)
class Telegram:
    control: int
    address: int
    ci: int
    header: Header | None
    records: tuple[Record, ...]
    more_follows: bool  # a DIF 1F asked the master to read the next telegram


def parse_telegram(frame: bytes | LongFrame) -> Telegram:
    """An RSP_UD long frame (bytes or parsed) as header and records; DecodeError for bad input."""
    if not isinstance(frame, LongFrame):
        parsed = parse_frame(frame)
        if not isinstance(parsed, LongFrame):
            raise DecodeError("not_rsp_ud", f"expected a long frame, got {type(parsed).__name__}")
        frame = parsed
    if frame.control & 0xCF != C_RSP_UD:
        raise DecodeError("not_rsp_ud", f"control {frame.control:02X} is not RSP_UD (08, 18, 28, 38)")
    data, big_endian = frame.data, frame.ci == CI_VARIABLE_MSB
    header: Header | None = None
    if frame.ci in (CI_VARIABLE, CI_VARIABLE_MSB):
        if len(data) < 12:
            raise DecodeError("truncated", f"the fixed header needs 12 bytes, got {len(data)}")
        header = _header(data[:12], big_endian)
        data = data[12:]
    elif frame.ci == CI_VARIABLE_SHORT_HEADER:
        if len(data) < 4:
            raise DecodeError("truncated", f"the short header needs 4 bytes, got {len(data)}")
        data = data[4:]
    elif frame.ci != CI_VARIABLE_NO_HEADER:
        raise DecodeError("unsupported_ci", f"CI {frame.ci:02X} is not a variable data response")
    records, more = _records(data, big_endian)
    return Telegram(frame.control, frame.address, frame.ci, header, records, more)


def _ordered(data: bytes, big_endian: bool) -> bytes:
    """Multi-byte values as LSB first."""
    return data[::-1] if big_endian else data


def _header(data: bytes, big_endian: bool) -> Header:
    ident = _ordered(data[0:4], big_endian)[::-1].hex().upper()
    manufacturer = int.from_bytes(_ordered(data[4:6], big_endian), "little")
    signature = int.from_bytes(_ordered(data[10:12], big_endian), "little")
    return Header(ident, decode_manufacturer(manufacturer), data[6], data[7], data[8], data[9], signature)


def _records(data: bytes, big_endian: bool) -> tuple[tuple[Record, ...], bool]:
    records: list[Record] = []
    more = False
    pos = 0
    while pos < len(data):
        start = pos
        dif = data[pos]
        pos += 1
        if dif == DIF_IDLE_FILLER:
            continue
        if dif in (DIF_MANUFACTURER, DIF_MORE_FOLLOWS):
            more = dif == DIF_MORE_FOLLOWS
            rest = data[pos:]
            description = "Manufacturer-specific data" + ("; more telegrams follow" if more else "")
            records.append(
                Record(
                    data[start:].hex().upper(),
                    0,
                    0,
                    0,
                    RecordFunction.INSTANTANEOUS,
                    0xF,
                    None,
                    "none",
                    (),
                    rest.hex().upper(),
                    None,
                    "",
                    0,
                    description,
                    known=False,
                )
            )
            break
        record, pos = _record(data, start, pos, dif, big_endian)
        records.append(record)
    return tuple(records), more


def _take(data: bytes, pos: int, count: int, what: str) -> tuple[bytes, int]:
    if pos + count > len(data):
        raise DecodeError("truncated", f"{what} needs {count} bytes at offset {pos}, {len(data) - pos} left")
    return data[pos : pos + count], pos + count


def _record(data: bytes, start: int, pos: int, dif: int, big_endian: bool) -> tuple[Record, int]:
    storage = dif >> 6 & 1
    tariff = subunit = 0
    extension = dif & 0x80
    for n in range(_MAX_EXTENSIONS + 1):
        if not extension:
            break
        if n == _MAX_EXTENSIONS:
            raise DecodeError("bad_record", f"more than {_MAX_EXTENSIONS} DIFEs at offset {start}")
        (dife,), pos = _take(data, pos, 1, "DIFE")
        storage |= (dife & 0x0F) << (1 + 4 * n)
        tariff |= (dife >> 4 & 0x03) << (2 * n)
        subunit |= (dife >> 6 & 0x01) << n
        extension = dife & 0x80
    function = _FUNCTIONS[dif >> 4 & 0x03]
    data_field = dif & 0x0F
    if data_field == 0xF:
        raise DecodeError("bad_record", f"special function DIF {dif:02X} with extensions at offset {start}")

    (vif,), pos = _take(data, pos, 1, "VIF")
    table, code, plain_unit = "primary", vif & 0x7F, ""
    if vif in (0xFD, 0xFB):
        table = "fd" if vif == 0xFD else "fb"
        (vif,), pos = _take(data, pos, 1, "extension VIF")
        code = vif & 0x7F
    elif code == 0x7C:
        table = "plain_text"
        (length,), pos = _take(data, pos, 1, "plain-text VIF length")
        unit_bytes, pos = _take(data, pos, length, "plain-text VIF")
        plain_unit = unit_bytes[::-1].decode("latin-1")
    elif code == 0x7E:
        table = "any"
    elif code == 0x7F:
        table = "manufacturer"
    vifes: list[int] = []
    extension = vif & 0x80
    while extension:
        if len(vifes) == _MAX_EXTENSIONS:
            raise DecodeError("bad_record", f"more than {_MAX_EXTENSIONS} VIFEs at offset {start}")
        (vife,), pos = _take(data, pos, 1, "VIFE")
        vifes.append(vife)
        extension = vife & 0x80

    info = _info(table, code, plain_unit)
    exponent, known = info.exponent, table in ("primary", "fd", "fb") and code in _table(table)
    for vife in vifes:
        shift = vife_exponent(vife)
        if shift is None:
            known = False
        else:
            exponent += shift

    if data_field == 0xD:
        (lvar,), pos = _take(data, pos, 1, "LVAR")
        raw_value, value, text, pos = _variable(data, pos, lvar, big_endian)
    else:
        size = _FIXED_SIZE[data_field]
        field_bytes, pos = _take(data, pos, size, "data")
        raw_value, value, text = _fixed(_ordered(field_bytes, big_endian), data_field, info, code, table)
    if value is not None and not info.time_point:
        value = value.scaleb(exponent)
    record = Record(
        raw=data[start:pos].hex().upper(),
        storage=storage,
        tariff=tariff,
        subunit=subunit,
        function=function,
        data_field=data_field,
        vif=vif,
        vif_table=table,
        vifes=tuple(vifes),
        raw_value=raw_value,
        value=None if info.time_point else value,
        unit=info.unit,
        exponent=exponent,
        description=info.description,
        text=text,
        known=known,
    )
    return record, pos


def _table(name: str) -> dict[int, VifInfo]:
    return {"primary": PRIMARY, "fd": EXTENSION_FD, "fb": EXTENSION_FB}.get(name, {})


def _info(table: str, code: int, plain_unit: str) -> VifInfo:
    if table == "plain_text":
        return VifInfo(plain_unit, plain_unit)
    if table == "any":
        return VifInfo("Any VIF")
    if table == "manufacturer":
        return VifInfo("Manufacturer-specific VIF")
    found = _table(table).get(code)
    if found is None:
        prefix = {"primary": "", "fd": "FD ", "fb": "FB "}[table]
        return VifInfo(f"Unknown VIF {prefix}{code:02X}")
    return found


def _bcd(data: bytes) -> int:
    """Packed BCD, LSB first; a top nibble F marks a negative value."""
    digits = data[::-1].hex().upper()
    sign = 1
    if digits.startswith("F"):
        sign, digits = -1, "0" + digits[1:]
    if not digits.isdigit():
        raise DecodeError("bad_bcd", f"BCD value {data[::-1].hex(' ').upper()} holds non-decimal digits")
    return sign * int(digits)


def _shortest_float32(number: float) -> Decimal:
    """The shortest decimal that reads back as the same float32 (at most 9 significant digits)."""
    target = struct.pack("<f", number)
    for digits in range(1, 10):
        text = f"{number:.{digits}g}"
        try:
            if struct.pack("<f", float(text)) == target:
                return Decimal(text)
        except OverflowError:  # rounded up past the largest float32
            continue
    return Decimal(repr(number))


def _fixed(
    field_bytes: bytes, data_field: int, info: VifInfo, code: int, table: str
) -> tuple[int | str | None, Decimal | None, str | None]:
    if not field_bytes:
        return None, None, None
    if data_field in _BCD_FIELDS:
        number = _bcd(field_bytes)
        identifier = table == "primary" and code in (0x78, 0x79)
        text = str(number).rjust(2 * len(field_bytes), "0") if identifier and number >= 0 else None
        return number, Decimal(number), text
    if data_field == 0x5:
        real = struct.unpack("<f", field_bytes)[0]
        if not math.isfinite(real):
            raise DecodeError("bad_value", "a real32 record is not finite")
        return None, _shortest_float32(real), None
    number = int.from_bytes(field_bytes, "little", signed=True)
    text = _time_point(field_bytes, code) if info.time_point else None
    if info.time_point:
        number = int.from_bytes(field_bytes, "little")
    return number, Decimal(number), text


def _variable(
    data: bytes, pos: int, lvar: int, big_endian: bool
) -> tuple[int | str | None, Decimal | None, str | None, int]:
    if lvar <= 0xBF:
        text, pos = _take(data, pos, lvar, "string")
        string = text[::-1].decode("latin-1")
        return string, None, string, pos
    if 0xC0 <= lvar <= 0xC9 or 0xD0 <= lvar <= 0xD9:
        field_bytes, pos = _take(data, pos, lvar & 0x0F, "BCD")
        number = _bcd(_ordered(field_bytes, big_endian)) * (-1 if lvar >= 0xD0 else 1)
        return number, Decimal(number), None, pos
    if 0xE0 <= lvar <= 0xEF:
        field_bytes, pos = _take(data, pos, lvar - 0xE0, "binary number")
        number = int.from_bytes(_ordered(field_bytes, big_endian), "little")
        return number, Decimal(number), None, pos
    if 0xF0 <= lvar <= 0xF6:
        size = 4 * (lvar - 0xEC) if lvar <= 0xF4 else (48 if lvar == 0xF5 else 64)
        field_bytes, pos = _take(data, pos, size, "binary number")
        return field_bytes.hex().upper(), None, None, pos
    raise DecodeError("bad_record", f"LVAR {lvar:02X} is reserved")


def _time_point(field_bytes: bytes, code: int) -> str | None:
    """Type G (date), F (date and time) or I (date and time with seconds), as ISO 8601 local time."""
    size = len(field_bytes)
    if code == 0x6C and size == 2:
        day_byte, month_byte, time = field_bytes[0], field_bytes[1], ""
    elif code == 0x6D and size == 4:
        b = field_bytes
        if b[0] & 0x80:
            return None  # the meter flags the time as invalid
        day_byte, month_byte, time = b[2], b[3], f"T{b[1] & 0x1F:02d}:{b[0] & 0x3F:02d}:00"
    elif code == 0x6D and size == 6:
        b = field_bytes
        day_byte, month_byte, time = b[3], b[4], f"T{b[2] & 0x1F:02d}:{b[1] & 0x3F:02d}:{b[0] & 0x3F:02d}"
    else:
        return None
    day, month = day_byte & 0x1F, month_byte & 0x0F
    year = 2000 + ((day_byte & 0xE0) >> 5 | (month_byte & 0xF0) >> 1)
    if not (1 <= day <= 31 and 1 <= month <= 12):
        return None
    return f"{year:04d}-{month:02d}-{day:02d}{time}"


# --- readings ----------------------------------------------------------------------------------


def channel_for(record: Record) -> str | None:
    """The reading channel of a record, or None.

    The channel is the quantity's base name (volume_m3, flow_m3h, energy_kwh, …) followed by, when
    not the default: `_max`/`_min`/`_error` (function), `_tariff_<t>`, `_storage_<s>`, `_subunit_<u>`.
    So the current volume is volume_m3 and the value stored at storage 1 is volume_m3_storage_1.
    """
    if not record.known or record.value is None:
        return None
    info = _table(record.vif_table).get((record.vif or 0) & 0x7F)
    if info is None or info.channel is None:
        return None
    name = info.channel + _FUNCTION_SUFFIX[record.function]
    if record.tariff:
        name += f"_tariff_{record.tariff}"
    if record.storage:
        name += f"_storage_{record.storage}"
    if record.subunit:
        name += f"_subunit_{record.subunit}"
    return name


def _channel_value(record: Record) -> Decimal:
    info = _table(record.vif_table)[(record.vif or 0) & 0x7F]
    assert record.value is not None
    return (record.value * info.channel_factor).scaleb(info.channel_exponent)


_STATUS_EVENTS = (
    (0x04, EventKind.BATTERY_LOW, "power low"),
    (0x08, EventKind.DEVICE_ALARM, "permanent error"),
    (0x10, EventKind.DEVICE_ALARM, "temporary error"),
)


def to_decoded(telegram: Telegram, meter_no: str, ts: datetime) -> Decoded:
    """Readings (see channel_for; the first record wins when two map to one channel) and events
    from the header status byte and the error-flags record."""
    decoded = Decoded()
    seen: set[str] = set()
    for record in telegram.records:
        channel = channel_for(record)
        if channel is not None and channel not in seen:
            seen.add(channel)
            decoded.readings.append(Reading(meter_no, channel, ts, _channel_value(record)))
        if record.vif_table == "fd" and (record.vif or 0) & 0x7F == 0x17 and record.raw_value:
            detail = {"error_flags": record.raw_value}
            decoded.events.append(MeterEvent(meter_no, EventKind.DEVICE_ALARM, ts, detail))
    if telegram.header is not None:
        status = telegram.header.status
        for mask, kind, name in _STATUS_EVENTS:
            if status & mask:
                decoded.events.append(MeterEvent(meter_no, kind, ts, {"status": status, "flag": name}))
        if status & 0x03 == 0x02:
            detail = {"status": status, "flag": "application error"}
            decoded.events.append(MeterEvent(meter_no, EventKind.DEVICE_ALARM, ts, detail))
    return decoded
