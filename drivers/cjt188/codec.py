"""CJ/T 188 data: decode meter frames into readings and replies, encode master commands (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from drivers.base import CommandReply, Decoded, DecodeError, EventKind, MeterEvent, MeterStatus, Reading, ValveState
from drivers.cjt188.frame import (
    BROADCAST_ADDRESS,
    Frame,
    bcd_decimal,
    bcd_to_int,
    control_code,
    decimal_to_bcd,
    encode_frame,
)
from drivers.cjt188.settings import Workarounds

DI_METERING = 0x901F
DI_PURCHASE_READ = 0x8105
DI_ADDRESS_READ = 0x810A
DI_PURCHASE_WRITE = 0xA013
DI_VALVE = 0xA017
DI_HISTORY_FIRST, DI_HISTORY_LAST = 0xD120, 0xD12B  # settlement-day cumulative, 1 … 12 months ago

FN_READ, FN_READ_ADDRESS, FN_WRITE = 0x01, 0x03, 0x04

# unit code -> power of ten that turns the value into m³ (exact, via scaleb)
VOLUME_UNITS: dict[int, int] = {0x29: -3, 0x2A: -2, 0x2B: -1, 0x2C: 0, 0x2D: 1, 0x2E: 2}
VALVE_BITS: dict[int, ValveState] = {0b00: ValveState.OPEN, 0b01: ValveState.CLOSED, 0b11: ValveState.ABNORMAL}
STATUS_BATTERY_LOW = 0x04
METERING_LEN = 19  # cumulative 4 + unit, settlement 4 + unit, clock 7, ST 2
PURCHASE_LEN = 15  # sequence 1, this purchase 4, cumulative 4, remaining 4, ST 2


def volume_m3(data: bytes, unit: int, field: str) -> Decimal:
    """4 bytes BCD with 2 decimals, lowest byte first, in unit code `unit`, as exact m³."""
    if unit not in VOLUME_UNITS:
        raise DecodeError("bad_unit", f"{field} unit code {unit:02X} is not a volume unit")
    return bcd_decimal(data, 2 - VOLUME_UNITS[unit], field)


def meter_clock(data: bytes, settings: Workarounds) -> datetime | None:
    """7 BCD bytes as UTC, or None when the clock is not a valid date and time."""
    ordered = data if settings.clock_order == "ss_first" else data[::-1]
    try:
        second, minute, hour, day, month, year, century = (bcd_to_int(bytes([b]), "clock") for b in ordered)
        local = datetime(century * 100 + year, month, day, hour, minute, second, tzinfo=settings.clock_utc_offset)
        return local.astimezone(UTC)
    except (DecodeError, ValueError, OverflowError):
        return None


def status_byte(status: bytes, settings: Workarounds) -> int:
    first = status[0]
    if settings.status_bit_order == "msb_first":
        first = int(f"{first:08b}"[::-1], 2)
    return first


def decode_status(
    meter_no: str, ts: datetime, status: bytes, settings: Workarounds
) -> tuple[MeterStatus, list[MeterEvent]]:
    """ST: bits 1–0 of byte 0 the valve, bit 2 battery low; byte 1 is vendor-defined."""
    bits = status_byte(status, settings)
    valve = VALVE_BITS.get(bits & 0b11, ValveState.UNKNOWN)
    detail = {"status": status.hex().upper()}
    events = []
    if bits & STATUS_BATTERY_LOW:
        events.append(MeterEvent(meter_no, EventKind.BATTERY_LOW, ts, detail))
    if valve is ValveState.ABNORMAL:
        events.append(MeterEvent(meter_no, EventKind.VALVE_ABNORMAL, ts, detail))
    return MeterStatus(meter_no, ts, valve=valve), events


def decode_metering(frame: Frame, received_at: datetime, settings: Workarounds) -> Decoded:
    """901F data (a read reply or a push): cumulative and settlement-day volume, clock, status."""
    data = _need(frame, METERING_LEN)
    clock = meter_clock(data[10:17], settings)
    ts = clock if clock is not None and settings.timestamp == "meter_clock" else received_at
    meter = frame.address
    readings = [
        Reading(meter, "volume_m3", ts, volume_m3(data[0:4], data[4], "cumulative volume")),
        Reading(meter, "settlement_volume_m3", ts, volume_m3(data[5:9], data[9], "settlement volume")),
    ]
    status, events = decode_status(meter, ts, data[17:19], settings)
    return Decoded(readings=readings, statuses=[status], events=events)


def decode_purchase(frame: Frame, received_at: datetime, settings: Workarounds) -> Decoded:
    """8105 data: purchase sequence, this purchase, cumulative purchases, remaining balance, status."""
    data = _need(frame, PURCHASE_LEN)
    meter = frame.address
    readings = [
        Reading(meter, "credit_purchased_total_cny", received_at, bcd_decimal(data[5:9], 2, "cumulative purchases")),
        Reading(meter, "credit_remaining_cny", received_at, bcd_decimal(data[9:13], 2, "remaining balance")),
    ]
    detail = _detail(frame, purchase_sequence=data[0], last_purchase_cny=bcd_decimal(data[1:5], 2, "this purchase"))
    status, events = decode_status(meter, received_at, data[13:15], settings)
    reply = CommandReply(meter, received_at, True, detail=detail)
    return Decoded(readings=readings, statuses=[status], events=events, replies=[reply])


def decode_history(frame: Frame, received_at: datetime) -> Decoded:
    """D120–D12B: the settlement-day cumulative n months ago; no date in the frame, so it goes in the reply."""
    data = _need(frame, 5)
    volume = volume_m3(data[0:4], data[4], "history volume")
    detail = _detail(frame, months_ago=frame.di - DI_HISTORY_FIRST + 1, settlement_volume_m3=volume)
    return Decoded(replies=[CommandReply(frame.address, received_at, True, detail=detail)])


def decode_reply(frame: Frame, received_at: datetime, settings: Workarounds) -> Decoded:
    """A frame from a meter (direction bit set): data reply, write ack or error reply."""
    meter = frame.address
    if frame.error:
        detail = _detail(frame, error_status=frame.payload.hex().upper())
        return Decoded(replies=[CommandReply(meter, received_at, False, detail=detail)])
    if frame.function == FN_READ and frame.di == DI_METERING:
        decoded = decode_metering(frame, received_at, settings)
        decoded.replies.append(CommandReply(meter, received_at, True, detail=_detail(frame)))
        return decoded
    if frame.function == FN_READ and frame.di == DI_PURCHASE_READ:
        return decode_purchase(frame, received_at, settings)
    if frame.function == FN_READ and DI_HISTORY_FIRST <= frame.di <= DI_HISTORY_LAST:
        return decode_history(frame, received_at)
    detail = _detail(frame, data=frame.payload.hex().upper()) if frame.payload else _detail(frame)
    decoded = Decoded(replies=[CommandReply(meter, received_at, True, detail=detail)])
    if frame.function == FN_WRITE and frame.di == DI_VALVE and len(frame.payload) >= 2:
        status, events = decode_status(meter, received_at, frame.payload[:2], settings)
        decoded.statuses.append(status)
        decoded.events.extend(events)
    return decoded


def decode_meter_frame(frame: Frame, received_at: datetime, settings: Workarounds) -> Decoded:
    """Any frame a meter sends; an unsolicited push gets its ack in `response`."""
    if frame.function == FN_WRITE and frame.di in settings.push_dis and not frame.error:
        decoded = decode_metering(frame, received_at, settings)
        decoded.response = encode_ack(frame, settings)
        return decoded
    if not frame.from_meter:
        raise DecodeError("wrong_direction", f"frame with control {frame.control:02X} is a master's request")
    return decode_reply(frame, received_at, settings)


def _need(frame: Frame, length: int) -> bytes:
    if len(frame.payload) < length:
        raise DecodeError("short_data", f"{frame.di_text} data has {len(frame.payload)} bytes, needs {length}")
    return frame.payload


def _detail(frame: Frame, **extra: Any) -> dict[str, Any]:
    """What identifies the request a reply answers (with the meter's address): control code, DI and SER."""
    return {"control": f"{frame.control:02X}", "di": frame.di_text, "ser": frame.ser, **extra}


def _request(address: str, control: int, di: int, ser: int, payload: bytes, settings: Workarounds) -> bytes:
    frame = Frame(settings.meter_type, address, control, di, ser, payload)
    return encode_frame(frame, settings.di_order, settings.preamble)


def encode_read(address: str, di: int, ser: int, settings: Workarounds) -> bytes:
    """Read data (control 01): 901F metering, 8105 purchase, D120–D12B history, …"""
    return _request(address, control_code(FN_READ), di, ser, b"", settings)


def encode_read_address(ser: int, settings: Workarounds) -> bytes:
    """Ask the only meter on the line for its address (broadcast, control 03, DI 810A)."""
    return _request(BROADCAST_ADDRESS, control_code(FN_READ_ADDRESS), DI_ADDRESS_READ, ser, b"", settings)


def encode_valve(address: str, open_valve: bool, ser: int, settings: Workarounds) -> bytes:
    code = settings.valve_open_code if open_valve else settings.valve_close_code
    return _request(address, settings.valve_control, DI_VALVE, ser, bytes([code]), settings)


def encode_purchase(address: str, sequence: int, amount: Decimal, ser: int, settings: Workarounds) -> bytes:
    """A013: purchase sequence (1 byte) + amount (4 bytes BCD, 2 decimals). ValueError on a bad amount."""
    if not 0 <= sequence <= 0xFF:
        raise ValueError(f"purchase sequence must be 0..255, got {sequence}")
    if amount <= 0:
        raise ValueError(f"purchase amount must be positive, got {amount}")
    payload = bytes([sequence]) + decimal_to_bcd(amount, 4, 2)
    return _request(address, control_code(FN_WRITE), DI_PURCHASE_WRITE, ser, payload, settings)


def encode_ack(frame: Frame, settings: Workarounds) -> bytes:
    """The master's 84 answer to a meter's unsolicited push: same type, address, DI and SER."""
    ack = Frame(frame.meter_type, frame.address, control_code(FN_WRITE, from_meter=True), frame.di, frame.ser)
    return encode_frame(ack, settings.di_order, settings.preamble)


def purchase_sequence_is_newer(sequence: int, last: int) -> bool:
    """The meter's view of a one-byte purchase sequence: newer when 1 to 127 steps after the last one accepted,
    counting on from 255 to 0 (serial-number arithmetic), so that the sequence survives its wrap."""
    return 0 < (sequence - last) % 256 < 128
