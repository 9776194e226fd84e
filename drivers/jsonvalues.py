"""Exact JSON values for the JSON drivers: payload parsing, decimals and timestamps.

Every function raises DecodeError (and nothing else) for bad input.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from drivers.base import DecodeError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Epoch values at or above this are milliseconds: 1e11 s is the year 5138, 1e11 ms is March 1973.
EPOCH_MS_THRESHOLD = Decimal(100_000_000_000)
_MAX_EPOCH_S = Decimal(253_402_300_799)  # 9999-12-31T23:59:59Z
_MAX_DIGITS = 30  # more significant digits than any meter reports: refuse instead of rounding
_MAX_ADJUSTED_EXPONENT = 15

TIMESTAMP_FORMATS = ("epoch", "epoch_s", "epoch_ms", "iso8601")  # or a strptime pattern containing '%'


def _refuse_constant(name: str) -> Any:
    raise DecodeError("bad_json", f"{name} is not a number meterhub accepts")


def _parse_float(text: str) -> Decimal:
    number = Decimal(text)
    # Checked once here, so that to_decimal can trust Decimals that came out of a payload.
    if len(text) > _MAX_DIGITS and len(number.as_tuple().digits) > _MAX_DIGITS:
        raise DecodeError("bad_value", f"number {text[:40]!r} has more digits than meterhub keeps")
    return number


def load_json(payload: bytes) -> Any:
    """Parse a UTF-8 JSON payload with every non-integer number as an exact Decimal."""
    try:
        return json.loads(payload.decode("utf-8"), parse_float=_parse_float, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DecodeError("bad_json", f"payload is not UTF-8 JSON: {exc}") from None


def to_decimal(value: Any, field: str) -> Decimal:
    """A JSON number or numeric string as a finite, reasonably sized Decimal."""
    if type(value) is Decimal and value.adjusted() <= _MAX_ADJUSTED_EXPONENT:
        return value  # from load_json: finite, digits already checked
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise DecodeError("bad_value", f"{field} must be a number, got {type(value).__name__}")
    try:
        number = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except (InvalidOperation, ValueError):
        raise DecodeError("bad_value", f"{field} is not a number: {str(value)[:40]!r}") from None
    if not number.is_finite():
        raise DecodeError("bad_value", f"{field} is not finite")
    if number and (len(number.as_tuple().digits) > _MAX_DIGITS or number.adjusted() > _MAX_ADJUSTED_EXPONENT):
        raise DecodeError("bad_value", f"{field} is out of range: {str(value)[:40]!r}")
    return number


def to_int(value: Any, field: str) -> int:
    number = to_decimal(value, field)
    if number != number.to_integral_value():
        raise DecodeError("bad_value", f"{field} must be an integer, got {number}")
    return int(number)


def from_epoch(value: Any, unit: str, field: str) -> datetime:
    """Epoch seconds or milliseconds ('s', 'ms', or 'auto': decided by magnitude) as UTC."""
    if type(value) is int and value >= 0:  # the common case, without Decimal arithmetic
        millis = unit == "ms" or (unit == "auto" and value >= 100_000_000_000)
        seconds, rest = divmod(value, 1000) if millis else (value, 0)
        if seconds <= 253_402_300_799:
            return EPOCH + timedelta(seconds=seconds, milliseconds=rest)
        raise DecodeError("bad_timestamp", f"{field} is out of range: {value}")
    try:
        number = to_decimal(value, field)
    except DecodeError as exc:
        raise DecodeError("bad_timestamp", exc.message) from None
    if unit == "ms" or (unit == "auto" and abs(number) >= EPOCH_MS_THRESHOLD):
        number = number.scaleb(-3)
    if not 0 <= number <= _MAX_EPOCH_S:
        raise DecodeError("bad_timestamp", f"{field} is out of range: {value}")
    micros = int((number * 1_000_000).to_integral_value())
    return EPOCH + timedelta(microseconds=micros)


def parse_offset(text: str) -> timezone:
    """'+08:00' or 'UTC' as a fixed offset; ValueError for anything else."""
    if text.upper() in ("UTC", "Z"):
        return UTC
    parsed = datetime.strptime(text, "%z").tzinfo
    if not isinstance(parsed, timezone):
        raise ValueError(f"not a UTC offset: {text!r}")
    return parsed


def check_timestamp_format(fmt: str) -> None:
    """ValueError unless `fmt` is a known format name or a strptime pattern that round-trips."""
    if fmt in TIMESTAMP_FORMATS:
        return
    if "%" not in fmt:
        known = ", ".join(TIMESTAMP_FORMATS)
        raise ValueError(f"unknown timestamp format {fmt!r}; use one of {known} or a strptime pattern")
    sample = datetime(2026, 11, 27, 10, 15, 0, tzinfo=UTC)
    try:
        datetime.strptime(sample.strftime(fmt), fmt)
    except ValueError as exc:
        raise ValueError(f"bad strptime pattern {fmt!r}: {exc}") from None


def parse_timestamp(value: Any, fmt: str, field: str, naive_tz: timezone = UTC) -> datetime:
    """A timestamp in one of TIMESTAMP_FORMATS or a strptime pattern, as aware UTC.

    Text without an offset is read in `naive_tz`.
    """
    if fmt == "epoch":
        return from_epoch(value, "auto", field)
    if fmt in ("epoch_s", "epoch_ms"):
        return from_epoch(value, fmt.removeprefix("epoch_"), field)
    if not isinstance(value, str):
        raise DecodeError("bad_timestamp", f"{field} must be text in format {fmt!r}")
    try:
        parsed = datetime.fromisoformat(value) if fmt == "iso8601" else datetime.strptime(value, fmt)
    except ValueError:
        raise DecodeError("bad_timestamp", f"{field} {value[:40]!r} does not match {fmt!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=naive_tz)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise DecodeError("bad_timestamp", f"{field} {value[:40]!r} is out of range") from None
