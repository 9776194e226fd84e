"""The json_mapping settings, checked once at creation: every error is a ValueError naming the key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timezone
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

from drivers.base import EventKind, ValveState
from drivers.json_mapping.paths import Path, compile_path
from drivers.jsonvalues import check_timestamp_format, parse_offset

# unit name (lower case) -> (quantity, factor to the quantity's base unit); the channel's own unit is the
# last part of its name (volume_m3 -> m3, battery_v -> v, flow_m3h -> m3h, credit_remaining_cny -> cny)
UNITS: dict[str, tuple[str, Decimal]] = {
    "m3": ("volume", Decimal(1)),
    "dm3": ("volume", Decimal("0.001")),
    "l": ("volume", Decimal("0.001")),
    "ml": ("volume", Decimal("0.000001")),
    "m3h": ("flow", Decimal(1)),
    "lh": ("flow", Decimal("0.001")),
    "v": ("voltage", Decimal(1)),
    "mv": ("voltage", Decimal("0.001")),
    "pa": ("pressure", Decimal(1)),
    "kpa": ("pressure", Decimal(1000)),
    "mpa": ("pressure", Decimal(1_000_000)),
    "mbar": ("pressure", Decimal(100)),
    "bar": ("pressure", Decimal(100_000)),
    "cny": ("money", Decimal(1)),
    "fen": ("money", Decimal("0.01")),
    "kwh": ("energy", Decimal(1)),
    "wh": ("energy", Decimal("0.001")),
}
_CHANNEL = re.compile(r"[a-z][a-z0-9_]*")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
METER_SOURCES = ("topic", "key", "path")
KNOWN_KEYS = {
    *("topic", "records", "meter_from", "meter_path", "timestamp", "channels", "valve", "battery", "rssi", "events")
}


@dataclass(frozen=True, slots=True)
class ValueMap:
    """A numeric field: where it is and the exact factor that brings it to the channel's unit."""

    path: Path
    factor: Decimal = Decimal(1)
    timestamp_path: Path | None = None


@dataclass(frozen=True, slots=True)
class EventRule:
    path: Path
    kind: EventKind
    active: frozenset[str]


@dataclass(frozen=True, slots=True)
class MappingConfig:
    topic: str
    topic_levels: tuple[str | None, ...]  # literal level, or None where the pattern has a placeholder
    meter_level: int | None  # index of {meter} in the topic
    records: Path
    meter_from: str
    meter_path: Path | None
    timestamp_path: Path | None
    timestamp_format: str
    naive_tz: timezone
    channels: dict[str, ValueMap] = field(default_factory=dict)
    valve_path: Path | None = None
    valve_map: dict[str, ValveState] = field(default_factory=dict)
    battery: ValueMap | None = None
    battery_low_v: Decimal | None = None
    rssi_path: Path | None = None
    events: tuple[EventRule, ...] = ()

    @property
    def topic_filter(self) -> str:
        return "/".join("+" if level is None else level for level in self.topic_levels)


def _table(settings: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = settings.get(key, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"json_mapping: {key} must be a table")
    return value


def _text(settings: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = settings.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"json_mapping: {where}{key} must be text")
    return value


def _path(settings: Mapping[str, Any], key: str, where: str, single: bool = True) -> Path:
    try:
        path = compile_path(_text(settings, key, where))
    except ValueError as exc:
        raise ValueError(f"json_mapping: {where}{key}: {exc}") from None
    if single and path.has_wildcards:
        raise ValueError(f"json_mapping: {where}{key}: wildcards are only allowed in `records`")
    return path


def _decimal(value: Any, where: str) -> Decimal:
    try:
        number = Decimal(str(value)) if isinstance(value, int | float | str) and not isinstance(value, bool) else None
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        raise ValueError(f"json_mapping: {where} must be a number, got {value!r}")
    return number


def _value_map(spec: Any, channel: str, where: str) -> ValueMap:
    if not isinstance(spec, Mapping):
        raise ValueError(f"json_mapping: {where} must be a table")
    factor = _decimal(spec.get("scale", 1), f"{where}.scale")
    if "unit" in spec:
        unit = _text(spec, "unit", f"{where}.").lower().replace("/", "").replace("³", "3")
        target = channel.rsplit("_", 1)[-1]
        if unit not in UNITS or target not in UNITS or UNITS[unit][0] != UNITS[target][0]:
            raise ValueError(f"json_mapping: {where}.unit {spec['unit']!r} cannot be converted to {target!r}")
        with localcontext(prec=60):
            factor *= UNITS[unit][1] / UNITS[target][1]
    ts_path = _path(spec, "timestamp_path", f"{where}.") if "timestamp_path" in spec else None
    return ValueMap(_path(spec, "path", f"{where}."), factor, ts_path)


def _topic(pattern: str) -> tuple[tuple[str | None, ...], int | None]:
    levels: list[str | None] = []
    meter_level = None
    for index, level in enumerate(pattern.split("/")):
        placeholder = _PLACEHOLDER.fullmatch(level)
        if placeholder:
            levels.append(None)
            if placeholder.group(1) == "meter":
                meter_level = index
        elif "{" in level or "}" in level or "+" in level or "#" in level:
            raise ValueError(f"json_mapping: topic {pattern!r}: a placeholder must be a whole level like {{meter}}")
        else:
            levels.append(level)
    return tuple(levels), meter_level


def parse_config(settings: Mapping[str, Any]) -> MappingConfig:
    unknown = set(settings) - KNOWN_KEYS
    if unknown:
        raise ValueError(f"json_mapping: unknown setting(s) {', '.join(sorted(unknown))}")
    topic = _text(settings, "topic", "")
    levels, meter_level = _topic(topic)
    records = _path(settings, "records", "", single=False) if "records" in settings else compile_path("")
    meter_from = _text(settings, "meter_from", "", "topic" if meter_level is not None else None)
    if meter_from not in METER_SOURCES:
        raise ValueError(f"json_mapping: meter_from must be one of {', '.join(METER_SOURCES)}, got {meter_from!r}")
    if meter_from == "topic" and meter_level is None:
        raise ValueError(f"json_mapping: meter_from = 'topic' needs {{meter}} in topic {topic!r}")
    if meter_from == "key" and not records.binds_key:
        raise ValueError("json_mapping: meter_from = 'key' needs a '*' segment in records")
    meter_path = _path(settings, "meter_path", "") if meter_from == "path" else None

    stamp = _table(settings, "timestamp")
    fmt = _text(stamp, "format", "timestamp.", "epoch")
    try:
        check_timestamp_format(fmt)
        naive_tz = parse_offset(_text(stamp, "naive_utc_offset", "timestamp.", "UTC"))
    except ValueError as exc:
        raise ValueError(f"json_mapping: timestamp: {exc}") from None

    channels = {}
    for name, spec in _table(settings, "channels").items():
        if not _CHANNEL.fullmatch(name):
            raise ValueError(f"json_mapping: channels.{name}: a channel name is lower_case_with_unit")
        channels[name] = _value_map(spec, name, f"channels.{name}")

    valve = _table(settings, "valve")
    valve_map = {}
    for raw, state in _table(valve, "map").items():
        try:
            valve_map[raw] = ValveState(state)
        except ValueError:
            raise ValueError(f"json_mapping: valve.map.{raw}: {state!r} is not a valve state") from None

    battery = _table(settings, "battery")
    events = []
    rules = settings.get("events", [])
    if not isinstance(rules, list) or not all(isinstance(rule, Mapping) for rule in rules):
        raise ValueError("json_mapping: events must be a list of tables ([[events]])")
    for index, rule in enumerate(rules):
        where = f"events[{index}]."
        try:
            kind = EventKind(_text(rule, "kind", where))
        except ValueError as exc:
            raise ValueError(f"json_mapping: {where}kind: {exc}") from None
        active = rule.get("active", ["true", "1"])
        events.append(EventRule(_path(rule, "path", where), kind, frozenset(str(a) for a in active)))

    return MappingConfig(
        topic=topic,
        topic_levels=levels,
        meter_level=meter_level,
        records=records,
        meter_from=meter_from,
        meter_path=meter_path,
        timestamp_path=_path(stamp, "path", "timestamp.") if "path" in stamp else None,
        timestamp_format=fmt,
        naive_tz=naive_tz,
        channels=channels,
        valve_path=_path(valve, "path", "valve.") if valve else None,
        valve_map=valve_map,
        battery=_value_map(battery, "battery_v", "battery") if battery else None,
        battery_low_v=_decimal(battery["low_v"], "battery.low_v") if "low_v" in battery else None,
        rssi_path=_path(_table(settings, "rssi"), "path", "rssi.") if "rssi" in settings else None,
        events=tuple(events),
    )
