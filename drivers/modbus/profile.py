"""Modbus device profiles: a device's register map as data, loaded from TOML into typed dataclasses.

A profile names every value a device exposes (`[[points]]`), the status registers whose bits are
events (`[[alarms]]`) and how its valve is driven and read back (`[valve]`). Addresses are stored
0-based PDU addresses after applying the profile's `address_base` and `byte_address` conventions.
See drivers/modbus/README.md for the vocabulary and sample.toml for a commented example.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

from drivers.base import EventKind, ValveState

MAX_READ_REGISTERS = 125  # Modbus limit for function codes 03/04
MAX_READ_BITS = 2000  # Modbus limit for function codes 01/02
DEFAULT_MAX_GAP = 8
MAX_IN_FLIGHT = 16


class Function(StrEnum):
    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def read_code(self) -> int:
        return _READ_CODES[self]

    @property
    def is_bit(self) -> bool:
        return self in (Function.COIL, Function.DISCRETE)


_READ_CODES = {Function.COIL: 1, Function.DISCRETE: 2, Function.HOLDING: 3, Function.INPUT: 4}


class ValueType(StrEnum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BCD = "bcd"  # `registers` × 4 digits, `decimals` of them after the point
    INTREAL = "intreal"  # uint32 integer part, then float32 fraction (Flonidan)
    INT_FRACTION = "int_fraction"  # `integer_type` part, then `fraction_type` part


class Order(StrEnum):
    BIG = "big"
    LITTLE = "little"


FIXED_WORDS = {
    ValueType.BOOL: 1,
    ValueType.INT16: 1,
    ValueType.UINT16: 1,
    ValueType.INT32: 2,
    ValueType.UINT32: 2,
    ValueType.FLOAT32: 2,
    ValueType.INT64: 4,
    ValueType.UINT64: 4,
    ValueType.FLOAT64: 4,
}
INTEGER_TYPES = frozenset(
    {ValueType.INT16, ValueType.UINT16, ValueType.INT32, ValueType.UINT32, ValueType.INT64, ValueType.UINT64}
)
FLOAT_TYPES = frozenset({ValueType.FLOAT32, ValueType.FLOAT64})


class ProfileError(ValueError):
    """A profile (or driver setting) that cannot be used; the message names the file and the key."""

    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(f"{source}: {key}: {message}")
        self.source = source
        self.key = key


@dataclass(frozen=True, slots=True)
class Encoding:
    """How one value sits in registers."""

    type: ValueType
    word_order: Order = Order.BIG
    byte_order: Order = Order.BIG
    words: int = 1  # 16-bit words the value occupies (1 for a bit)
    decimals: int = 0  # BCD only
    integer_type: ValueType | None = None  # int_fraction / intreal
    fraction_type: ValueType | None = None
    fraction_scale: Decimal = Decimal(1)  # integer fraction parts: fraction = raw × fraction_scale


@dataclass(frozen=True, slots=True)
class Location:
    """Where a value is read from. `register_width = 32` is the Enron/Daniel style: one address, two words."""

    function: Function
    address: int
    encoding: Encoding
    register_width: int = 16
    bits: int = 1  # coil/discrete sources only: how many consecutive bits

    @property
    def span(self) -> int:
        """Addresses occupied (registers, 32-bit registers or bits)."""
        if self.function.is_bit:
            return self.bits
        return max(1, self.encoding.words // (self.register_width // 16))


@dataclass(frozen=True, slots=True)
class Point:
    """One value a device exposes, published as a reading channel (name with unit in it)."""

    channel: str
    at: Location
    scale: Decimal = Decimal(1)
    scale_register: str | None = None  # channel of another point whose value scales this one
    scale_register_kind: str = "power10"  # "power10": × 10^value; "multiplier": × value
    unit: str = ""
    publish: bool = True  # False for helper points (e.g. a counter-resolution exponent)


@dataclass(frozen=True, slots=True)
class AlarmSource:
    """A status register (or run of discrete inputs) whose set bits are events; bit 0 is the least significant."""

    name: str
    at: Location
    bits: Mapping[int, EventKind] = field(default_factory=dict)
    other_bits: EventKind | None = None  # kind for set bits the map does not name; None ignores them


@dataclass(frozen=True, slots=True)
class ValveWrite:
    function: Function  # coil or holding
    address: int
    open: int
    close: int
    arm: int | None = None


@dataclass(frozen=True, slots=True)
class ValveReadback:
    at: Location
    states: Mapping[int, ValveState]


@dataclass(frozen=True, slots=True)
class ValveSpec:
    write: ValveWrite
    readback: ValveReadback | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    source: str
    description: str = ""
    points: tuple[Point, ...] = ()
    alarms: tuple[AlarmSource, ...] = ()
    valve: ValveSpec | None = None
    max_gap: int = DEFAULT_MAX_GAP  # unused registers a merged read may span
    max_registers: int = MAX_READ_REGISTERS
    max_bits: int = MAX_READ_BITS
    write_multiple: bool = False  # [workarounds]: write single registers with FC 16 (device lacks FC 06)
    max_in_flight: int = 1  # Modbus TCP requests the device takes at once: a poll's blocks are read that many at a time

    def point(self, channel: str) -> Point:
        for candidate in self.points:
            if candidate.channel == channel:
                return candidate
        raise KeyError(channel)


# --- loading -----------------------------------------------------------------------------------

PROFILE_DIR = "profiles"


def shipped_profiles() -> list[str]:
    """Names of the profiles that ship with meterhub (file names without .toml)."""
    folder = resources.files("drivers.modbus").joinpath(PROFILE_DIR)
    return sorted(entry.name.removesuffix(".toml") for entry in folder.iterdir() if entry.name.endswith(".toml"))


def shipped_profile(name: str) -> Profile:
    entry = resources.files("drivers.modbus").joinpath(PROFILE_DIR, f"{name}.toml")
    if not entry.is_file():
        raise ProfileError(f"{name}.toml", "profile", f"no shipped profile {name!r}; known: {shipped_profiles()}")
    return loads_profile(entry.read_text(encoding="utf-8"), source=f"{name}.toml")


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(str(path), "file", f"cannot read: {exc.strerror}") from None
    return loads_profile(text, source=path.name)


def loads_profile(text: str, source: str = "<profile>") -> Profile:
    try:
        document = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(source, "toml", str(exc)) from None
    return _Loader(source).profile(document)


_DEVICE_KEYS = {
    "name", "description", "vendor", "model", "function", "address_base", "byte_address",
    "word_order", "byte_order", "max_gap", "max_registers", "max_bits", "max_in_flight",
}  # fmt: skip
_ENCODING_KEYS = {
    "type", "word_order", "byte_order", "registers", "decimals",
    "integer_type", "fraction_type", "fraction_scale", "register_width",
}  # fmt: skip
_POINT_KEYS = {"channel", "function", "address", "scale", "scale_register", "scale_register_kind", "unit", "publish"}
_ALARM_KEYS = {"name", "function", "address", "bits", "other_bits", "count"}
_VALVE_KEYS = {"function", "address", "open", "close", "arm", "state"}
_STATE_KEYS = {"function", "address", "open", "closed", "armed", "abnormal"}


class _Loader:
    """Validates a parsed TOML document; every error names the file and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.defaults: dict[str, Any] = {}

    def fail(self, key: str, message: str) -> ProfileError:
        return ProfileError(self.source, key, message)

    def table(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}", f"unknown key; expected one of {sorted(allowed)}")
        return value

    def integer(self, value: Any, key: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise self.fail(key, f"must be between {low} and {high}, got {value}")
        return value

    def decimal(self, value: Any, key: str) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
            raise self.fail(key, f"must be a number or a decimal string, got {value!r}")
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise self.fail(key, f"is not a decimal number: {value!r}") from None
        if not number.is_finite() or number == 0:
            raise self.fail(key, "must be finite and non-zero")
        return number

    def choice(self, value: Any, key: str, enum: type[StrEnum]) -> Any:
        try:
            return enum(value)
        except ValueError:
            raise self.fail(key, f"unknown value {value!r}; expected one of {[m.value for m in enum]}") from None

    def profile(self, document: dict[str, Any]) -> Profile:
        self.table(document, "<top>", {"device", "points", "alarms", "valve", "workarounds"})
        device = self.table(document.get("device", {}), "device", _DEVICE_KEYS)
        self.defaults = device
        self.address_base = self.integer(device.get("address_base", 0), "device.address_base", 0, 1)
        byte_address = device.get("byte_address", False)
        if not isinstance(byte_address, bool):
            raise self.fail("device.byte_address", "must be true or false")
        self.byte_address = byte_address
        workarounds = self.table(document.get("workarounds", {}), "workarounds", {"write_multiple"})
        write_multiple = workarounds.get("write_multiple", False)
        if not isinstance(write_multiple, bool):
            raise self.fail("workarounds.write_multiple", "must be true or false")
        points_raw = document.get("points", [])
        if not isinstance(points_raw, list):
            raise self.fail("points", "must be an array of tables ([[points]])")
        points = tuple(self.point(raw, f"points[{i}]") for i, raw in enumerate(points_raw))
        seen: set[str] = set()
        for i, point in enumerate(points):
            if point.channel in seen:
                raise self.fail(f"points[{i}].channel", f"duplicate channel {point.channel!r}")
            seen.add(point.channel)
        for i, point in enumerate(points):
            if point.scale_register is not None:
                if point.scale_register not in seen or point.scale_register == point.channel:
                    raise self.fail(
                        f"points[{i}].scale_register", f"no other point has channel {point.scale_register!r}"
                    )
                referenced = next(p for p in points if p.channel == point.scale_register)
                if referenced.at.encoding.type not in INTEGER_TYPES:
                    raise self.fail(f"points[{i}].scale_register", "must refer to an integer point")
        alarms_raw = document.get("alarms", [])
        if not isinstance(alarms_raw, list):
            raise self.fail("alarms", "must be an array of tables ([[alarms]])")
        alarms = tuple(self.alarm(raw, f"alarms[{i}]") for i, raw in enumerate(alarms_raw))
        valve = self.valve(document["valve"]) if "valve" in document else None
        name = device.get("name", self.source.removesuffix(".toml"))
        description = device.get("description", "")
        if not isinstance(name, str) or not isinstance(description, str):
            raise self.fail("device.name", "name and description must be strings")
        return Profile(
            name=name,
            source=self.source,
            description=description,
            points=points,
            alarms=alarms,
            valve=valve,
            max_gap=self.integer(device.get("max_gap", DEFAULT_MAX_GAP), "device.max_gap", 0, MAX_READ_BITS),
            max_registers=self.integer(
                device.get("max_registers", MAX_READ_REGISTERS), "device.max_registers", 1, MAX_READ_REGISTERS
            ),
            max_bits=self.integer(device.get("max_bits", MAX_READ_BITS), "device.max_bits", 1, MAX_READ_BITS),
            write_multiple=write_multiple,
            max_in_flight=self.integer(device.get("max_in_flight", 1), "device.max_in_flight", 1, MAX_IN_FLIGHT),
        )

    def address(self, raw: dict[str, Any], key: str) -> int:
        if "address" not in raw:
            raise self.fail(f"{key}.address", "is required")
        value = self.integer(raw["address"], f"{key}.address", 0, 131071)
        if self.byte_address:
            if value % 2:
                raise self.fail(f"{key}.address", f"byte address {value} is odd; word address = byte address / 2")
            value //= 2
        value -= self.address_base
        if not 0 <= value <= 65535:
            raise self.fail(f"{key}.address", "is outside the Modbus address space after address_base")
        return value

    def function(self, raw: dict[str, Any], key: str) -> Function:
        value = raw.get("function", self.defaults.get("function", "holding"))
        result: Function = self.choice(value, f"{key}.function", Function)
        return result

    def encoding(self, raw: dict[str, Any], key: str, function: Function, default_type: str) -> tuple[Encoding, int]:
        kind: ValueType = self.choice(raw.get("type", default_type), f"{key}.type", ValueType)
        if function.is_bit != (kind is ValueType.BOOL):
            raise self.fail(f"{key}.type", f"{kind.value} does not fit function {function.value}")
        word_order = self.choice(
            raw.get("word_order", self.defaults.get("word_order", "big")), f"{key}.word_order", Order
        )
        byte_order = self.choice(
            raw.get("byte_order", self.defaults.get("byte_order", "big")), f"{key}.byte_order", Order
        )
        width = self.integer(raw.get("register_width", 16), f"{key}.register_width", 16, 32)
        if width not in (16, 32):
            raise self.fail(f"{key}.register_width", "must be 16 or 32")
        decimals, integer_type, fraction_type, fraction_scale = 0, None, None, Decimal(1)
        if kind is ValueType.BCD:
            words = self.integer(raw.get("registers", 0), f"{key}.registers", 1, 8)
            decimals = self.integer(raw.get("decimals", 0), f"{key}.decimals", 0, 4 * words)
        elif kind in (ValueType.INTREAL, ValueType.INT_FRACTION):
            default_int, default_frac = ("uint32", "float32") if kind is ValueType.INTREAL else (None, None)
            integer_type = self.choice(raw.get("integer_type", default_int), f"{key}.integer_type", ValueType)
            fraction_type = self.choice(raw.get("fraction_type", default_frac), f"{key}.fraction_type", ValueType)
            if integer_type not in INTEGER_TYPES:
                raise self.fail(f"{key}.integer_type", "must be an integer type")
            if fraction_type not in INTEGER_TYPES | FLOAT_TYPES:
                raise self.fail(f"{key}.fraction_type", "must be an integer or float type")
            if fraction_type in INTEGER_TYPES:
                if "fraction_scale" not in raw:
                    raise self.fail(f"{key}.fraction_scale", "is required for an integer fraction")
                fraction_scale = self.decimal(raw["fraction_scale"], f"{key}.fraction_scale")
            assert integer_type is not None and fraction_type is not None
            words = FIXED_WORDS[integer_type] + FIXED_WORDS[fraction_type]
        else:
            words = FIXED_WORDS[kind]
        if width == 32 and words % 2:
            raise self.fail(f"{key}.register_width", f"a {kind.value} does not fill whole 32-bit registers")
        encoding = Encoding(kind, word_order, byte_order, words, decimals, integer_type, fraction_type, fraction_scale)
        return encoding, width

    def location(self, raw: dict[str, Any], key: str, default_type: str = "uint16", bits: int = 1) -> Location:
        function = self.function(raw, key)
        encoding, width = self.encoding(raw, key, function, "bool" if function.is_bit else default_type)
        found = Location(function, self.address(raw, key), encoding, width, bits)
        if found.address + found.span - 1 > 65535:
            raise self.fail(f"{key}.address", "value runs past the end of the address space")
        return found

    def point(self, raw: Any, key: str) -> Point:
        raw = self.table(raw, key, _POINT_KEYS | _ENCODING_KEYS)
        channel = raw.get("channel")
        if not isinstance(channel, str) or not channel.isidentifier():
            raise self.fail(f"{key}.channel", "must be a name like volume_m3")
        at = self.location(raw, key)
        kind = raw.get("scale_register_kind", "power10")
        if kind not in ("power10", "multiplier"):
            raise self.fail(f"{key}.scale_register_kind", "must be 'power10' or 'multiplier'")
        scale_register = raw.get("scale_register")
        if scale_register is not None and not isinstance(scale_register, str):
            raise self.fail(f"{key}.scale_register", "must be the channel name of another point")
        publish = raw.get("publish", True)
        unit = raw.get("unit", "")
        if not isinstance(publish, bool) or not isinstance(unit, str):
            raise self.fail(f"{key}.publish", "publish must be true/false and unit a string")
        scale = self.decimal(raw.get("scale", 1), f"{key}.scale")
        return Point(channel, at, scale, scale_register, kind, unit, publish)

    def alarm(self, raw: Any, key: str) -> AlarmSource:
        raw = self.table(raw, key, _ALARM_KEYS | _ENCODING_KEYS)
        function = self.function(raw, key)
        count = self.integer(raw.get("count", 1), f"{key}.count", 1, MAX_READ_BITS) if function.is_bit else 1
        at = self.location(raw, key, bits=count)
        if not function.is_bit and at.encoding.type not in (ValueType.UINT16, ValueType.UINT32, ValueType.UINT64):
            raise self.fail(f"{key}.type", "an alarm register must be uint16, uint32 or uint64")
        width = count if function.is_bit else 16 * at.encoding.words
        bits_raw = self.table(raw.get("bits", {}), f"{key}.bits", {str(n) for n in range(width)})
        bits = {int(bit): self.choice(kind, f"{key}.bits.{bit}", EventKind) for bit, kind in bits_raw.items()}
        other = raw.get("other_bits")
        other_kind = None if other is None else self.choice(other, f"{key}.other_bits", EventKind)
        name = raw.get("name", f"alarms[{key}]")
        if not isinstance(name, str):
            raise self.fail(f"{key}.name", "must be a string")
        return AlarmSource(name, at, bits, other_kind)

    def valve(self, raw: Any) -> ValveSpec:
        raw = self.table(raw, "valve", _VALVE_KEYS)
        function = self.function(raw, "valve")
        if function not in (Function.COIL, Function.HOLDING):
            raise self.fail("valve.function", "a valve is driven by a coil or a holding register")
        address = self.address(raw, "valve")
        values: dict[str, int | None] = {}
        for name in ("open", "close", "arm"):
            value = raw.get(name)
            if value is None:
                values[name] = None
            elif function is Function.COIL:
                if not isinstance(value, bool):
                    raise self.fail(f"valve.{name}", "a coil value is true (on) or false (off)")
                values[name] = int(value)
            else:
                values[name] = self.integer(value, f"valve.{name}", 0, 65535)
        open_value, close_value = values["open"], values["close"]
        if open_value is None or close_value is None:
            raise self.fail("valve.open", "both open and close values are required")
        write = ValveWrite(function, address, open_value, close_value, values["arm"])
        readback = self.readback(raw["state"]) if "state" in raw else None
        return ValveSpec(write, readback)

    def readback(self, raw: Any) -> ValveReadback:
        raw = self.table(raw, "valve.state", _STATE_KEYS | _ENCODING_KEYS)
        at = self.location(raw, "valve.state")
        if at.encoding.type not in INTEGER_TYPES | {ValueType.BOOL}:
            raise self.fail("valve.state.type", "valve state must be read as an integer or a bit")
        states: dict[int, ValveState] = {}
        for key, state in (
            ("open", ValveState.OPEN),
            ("closed", ValveState.CLOSED),
            ("armed", ValveState.ARMED),
            ("abnormal", ValveState.ABNORMAL),
        ):
            value = raw.get(key)
            for item in value if isinstance(value, list) else [] if value is None else [value]:
                number = (
                    int(item) if isinstance(item, bool) else self.integer(item, f"valve.state.{key}", -(2**63), 2**64)
                )
                if number in states:
                    raise self.fail(f"valve.state.{key}", f"value {number} already means {states[number].value}")
                states[number] = state
        if not states:
            raise self.fail("valve.state", "map at least one value to a state (open, closed, armed, abnormal)")
        return ValveReadback(at, states)
