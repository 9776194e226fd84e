"""EN 13757-3 value information: what a VIF (primary, FD or FB table) means, as tables.

Each entry gives a description, a unit, the decimal exponent of the raw value, and the reading
channel the value maps to (with the power of ten that converts the unit to the channel's unit).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class VifInfo:
    description: str
    unit: str = ""
    exponent: int = 0
    channel: str | None = None  # reading channel, or None when the value is not a reading
    channel_exponent: int = 0  # channel value = value × 10^channel_exponent
    channel_factor: int = 1  # … × channel_factor (m³/min → m³/h)
    time_point: bool = False


_DURATION_UNITS = ("s", "min", "h", "d")


def _ranged(table: dict[int, VifInfo], first: int, count: int, make: object) -> None:
    for n in range(count):
        table[first + n] = make(n)  # type: ignore[operator]


PRIMARY: dict[int, VifInfo] = {}
_ranged(PRIMARY, 0x00, 8, lambda n: VifInfo("Energy", "Wh", n - 3, "energy_kwh", -3))
_ranged(PRIMARY, 0x08, 8, lambda n: VifInfo("Energy", "J", n, "energy_gj", -9))
_ranged(PRIMARY, 0x10, 8, lambda n: VifInfo("Volume", "m3", n - 6, "volume_m3"))
_ranged(PRIMARY, 0x18, 8, lambda n: VifInfo("Mass", "kg", n - 3, "mass_kg"))
_ranged(PRIMARY, 0x20, 4, lambda n: VifInfo("On time", _DURATION_UNITS[n]))
_ranged(PRIMARY, 0x24, 4, lambda n: VifInfo("Operating time", _DURATION_UNITS[n]))
_ranged(PRIMARY, 0x28, 8, lambda n: VifInfo("Power", "W", n - 3, "power_w"))
_ranged(PRIMARY, 0x30, 8, lambda n: VifInfo("Power", "J/h", n))
_ranged(PRIMARY, 0x38, 8, lambda n: VifInfo("Volume flow", "m3/h", n - 6, "flow_m3h"))
_ranged(PRIMARY, 0x40, 8, lambda n: VifInfo("Volume flow", "m3/min", n - 7, "flow_m3h", 0, 60))
_ranged(PRIMARY, 0x48, 8, lambda n: VifInfo("Volume flow", "m3/s", n - 9, "flow_m3h", 0, 3600))
_ranged(PRIMARY, 0x50, 8, lambda n: VifInfo("Mass flow", "kg/h", n - 3, "mass_flow_kgh"))
_ranged(PRIMARY, 0x58, 4, lambda n: VifInfo("Flow temperature", "°C", n - 3, "flow_temperature_c"))
_ranged(PRIMARY, 0x5C, 4, lambda n: VifInfo("Return temperature", "°C", n - 3, "return_temperature_c"))
_ranged(PRIMARY, 0x60, 4, lambda n: VifInfo("Temperature difference", "K", n - 3, "temperature_difference_k"))
_ranged(PRIMARY, 0x64, 4, lambda n: VifInfo("External temperature", "°C", n - 3, "temperature_c"))
_ranged(PRIMARY, 0x68, 4, lambda n: VifInfo("Pressure", "bar", n - 3, "pressure_bar"))
PRIMARY[0x6C] = VifInfo("Time point (date)", time_point=True)
PRIMARY[0x6D] = VifInfo("Time point (date and time)", time_point=True)
PRIMARY[0x6E] = VifInfo("Units for H.C.A.")
_ranged(PRIMARY, 0x70, 4, lambda n: VifInfo("Averaging duration", _DURATION_UNITS[n]))
_ranged(PRIMARY, 0x74, 4, lambda n: VifInfo("Actuality duration", _DURATION_UNITS[n]))
PRIMARY[0x78] = VifInfo("Fabrication number")
PRIMARY[0x79] = VifInfo("Enhanced identification")
PRIMARY[0x7A] = VifInfo("Bus address")

# Extension table behind VIF FD (the subset meters commonly send).
EXTENSION_FD: dict[int, VifInfo] = {}
_ranged(EXTENSION_FD, 0x00, 4, lambda n: VifInfo("Credit", "currency", n - 3))
_ranged(EXTENSION_FD, 0x04, 4, lambda n: VifInfo("Debit", "currency", n - 3))
EXTENSION_FD.update(
    {
        0x08: VifInfo("Access number"),
        0x09: VifInfo("Medium"),
        0x0A: VifInfo("Manufacturer"),
        0x0B: VifInfo("Parameter set identification"),
        0x0C: VifInfo("Model / version"),
        0x0D: VifInfo("Hardware version"),
        0x0E: VifInfo("Firmware version"),
        0x0F: VifInfo("Software version"),
        0x16: VifInfo("Password"),
        0x17: VifInfo("Error flags"),
        0x1A: VifInfo("Digital output"),
        0x1B: VifInfo("Digital input"),
        0x74: VifInfo("Remaining battery life", "d"),
    }
)
_ranged(EXTENSION_FD, 0x40, 16, lambda n: VifInfo("Voltage", "V", n - 9, "voltage_v"))
_ranged(EXTENSION_FD, 0x50, 16, lambda n: VifInfo("Current", "A", n - 12, "current_a"))

# Extension table behind VIF FB (large energy and volume units).
EXTENSION_FB: dict[int, VifInfo] = {}
_ranged(EXTENSION_FB, 0x00, 2, lambda n: VifInfo("Energy", "MWh", n - 1, "energy_kwh", 3))
_ranged(EXTENSION_FB, 0x08, 2, lambda n: VifInfo("Energy", "GJ", n - 1, "energy_gj"))
_ranged(EXTENSION_FB, 0x10, 2, lambda n: VifInfo("Volume", "m3", n + 2, "volume_m3"))
_ranged(EXTENSION_FB, 0x18, 2, lambda n: VifInfo("Mass", "t", n + 2, "mass_kg", 3))

MEDIUM = {
    0x00: "other",
    0x01: "oil",
    0x02: "electricity",
    0x03: "gas",
    0x04: "heat",
    0x05: "steam",
    0x06: "warm water",
    0x07: "water",
    0x08: "heat cost allocator",
    0x09: "compressed air",
    0x0A: "cooling (outlet)",
    0x0B: "cooling (inlet)",
    0x0C: "heat (inlet)",
    0x0D: "heat / cooling",
    0x0E: "bus / system",
    0x0F: "unknown",
    0x15: "hot water",
    0x16: "cold water",
    0x17: "dual water",
    0x18: "pressure",
    0x19: "A/D converter",
}


def vife_exponent(vife: int) -> int | None:
    """The decimal exponent a combinable VIFE adds (multiplicative correction), or None."""
    code = vife & 0x7F
    if 0x70 <= code <= 0x77:
        return code - 0x76  # 10^(nnn-6)
    if code == 0x7D:
        return 3
    return None
