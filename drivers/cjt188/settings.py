"""Vendor differences of CJ/T 188 meters, as one settings block (`[workarounds]`) with defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta, timezone
from typing import Any

from drivers.cjt188.frame import ByteOrder
from drivers.jsonvalues import parse_offset

CHOICES: dict[str, tuple[str, ...]] = {
    "di_order": ("big", "little"),
    "clock_order": ("ss_first", "cc_first"),
    "status_bit_order": ("lsb_first", "msb_first"),
    "timestamp": ("meter_clock", "receive_time"),
}


@dataclass(frozen=True, slots=True)
class Workarounds:
    di_order: ByteOrder = "big"  # "big": DI sent 90 1F (2004 style); "little": 1F 90 (2018 style, some vendors)
    clock_order: str = "ss_first"  # "ss_first": ss mm hh DD MM YY CC on the wire; "cc_first": the reverse
    status_bit_order: str = "lsb_first"  # "msb_first": ST byte 0 bits numbered from the top (bit 0 = 0x80)
    timestamp: str = "meter_clock"  # reading time: the meter's clock (receive time if invalid) or receive time
    clock_utc_offset: timezone = timezone(timedelta(hours=8))  # meters keep local time (China: +08:00)
    meter_type: int = 0x30  # T byte in frames we send: 0x30 gas
    preamble: int = 0  # FE bytes sent before each frame (some meters need 2 to 4 to wake up)
    valve_control: int = 0x04  # control code of valve commands (some vendors use a private one)
    valve_open_code: int = 0x55
    valve_close_code: int = 0x99
    push_dis: frozenset[int] = frozenset({0x901F})  # DIs of unsolicited function-04 pushes (901F-style data)

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> Workarounds:
        """ValueError naming the key for an unknown key or a bad value."""
        known = {f.name for f in fields(cls)}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"cjt188: unknown workarounds key(s) {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for key, value in settings.items():
            where = f"cjt188: workarounds.{key}"
            if key in CHOICES:
                if value not in CHOICES[key]:
                    raise ValueError(f"{where} must be one of {', '.join(CHOICES[key])}, got {value!r}")
                values[key] = value
            elif key == "clock_utc_offset":
                try:
                    values[key] = parse_offset(str(value))
                except ValueError:
                    raise ValueError(f"{where} must look like +08:00, got {value!r}") from None
            elif key == "push_dis":
                if not isinstance(value, list):
                    raise ValueError(f'{where} must be a list of DIs like ["901F"]')
                values[key] = frozenset(_number(item, 0xFFFF, where) for item in value)
            elif key == "preamble":
                values[key] = _number(value, 16, where)
            else:
                values[key] = _number(value, 0xFF, where)
        return cls(**values)


def _number(value: Any, limit: int, where: str) -> int:
    """An int, or hex text like "901F" / "0x55"."""
    try:
        number = int(value, 16) if isinstance(value, str) else value
    except ValueError:
        number = None
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= limit:
        raise ValueError(f"{where} must be a number 0..{limit:#x} (or hex text), got {value!r}")
    return number
