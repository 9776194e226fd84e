"""Decode other platforms' JSON payloads with a MappingConfig (pure functions)."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, localcontext
from typing import Any

from drivers.base import Decoded, DecodeError, EventKind, MeterEvent, MeterStatus, Reading, Uplink, ValveState
from drivers.json_mapping.config import MappingConfig, ValueMap
from drivers.json_mapping.paths import MISSING, Path
from drivers.jsonvalues import load_json, parse_timestamp, to_decimal, to_int

_METER_NO = re.compile(r"[^/+#\s]{1,64}")


def meter_from_topic(topic: str | None, config: MappingConfig) -> str | None:
    """The {meter} level of a topic that matches the pattern (None when the pattern has none)."""
    levels = (topic or "").split("/")
    pattern = config.topic_levels
    mismatch = len(levels) != len(pattern) or any(
        p is not None and p != level for p, level in zip(pattern, levels, strict=True)
    )
    if mismatch:
        raise DecodeError("bad_topic", f"topic {topic!r} does not match {config.topic!r}")
    if any(p is None and not level for p, level in zip(pattern, levels, strict=True)):
        raise DecodeError("bad_topic", f"topic {topic!r} has an empty level")
    return None if config.meter_level is None else levels[config.meter_level]


def raw_text(value: Any) -> str:
    """A JSON scalar as the text used in valve maps and event rules: 1, 1.0 -> '1'; true -> 'true'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return str(int(value))
    return str(value)


def decode(uplink: Uplink, config: MappingConfig) -> Decoded:
    topic_meter = meter_from_topic(uplink.topic, config)
    body = load_json(uplink.payload)
    decoded = Decoded()
    for record, key in config.records.select(body):
        meter_no = _meter(config, topic_meter, record, key)
        ts = _timestamp(record, config.timestamp_path, config, uplink.received_at, "timestamp")
        _decode_record(decoded, config, record, meter_no, ts)
    if not (decoded.readings or decoded.statuses or decoded.events):
        raise DecodeError("no_data", f"no configured field found in the payload on {uplink.topic!r}")
    return decoded


def _meter(config: MappingConfig, topic_meter: str | None, record: Any, key: str | None) -> str:
    if config.meter_from == "topic":
        found: Any = topic_meter
    elif config.meter_from == "key":
        found = key
    else:
        assert config.meter_path is not None
        found = config.meter_path.get(record)
    if isinstance(found, int | Decimal) and not isinstance(found, bool):
        found = raw_text(found)
    if not isinstance(found, str) or not _METER_NO.fullmatch(found):
        raise DecodeError("bad_meter", f"meter id {str(found)[:40]!r} from {config.meter_from} is not usable")
    return found


def _timestamp(record: Any, path: Path | None, config: MappingConfig, default: datetime, where: str) -> datetime:
    raw = MISSING if path is None else path.get(record)
    if raw is MISSING or raw is None:
        return default
    return parse_timestamp(raw, config.timestamp_format, f"{where} {path.text if path else ''}", config.naive_tz)


def _number(record: Any, spec: ValueMap, where: str) -> Decimal | None:
    raw = spec.path.get(record)
    if raw is MISSING or raw is None:
        return None
    with localcontext(prec=60):
        return to_decimal(raw, f"{where} {spec.path.text}") * spec.factor


def _decode_record(decoded: Decoded, config: MappingConfig, record: Any, meter_no: str, ts: datetime) -> None:
    for channel, spec in config.channels.items():
        value = _number(record, spec, channel)
        if value is not None:
            at = _timestamp(record, spec.timestamp_path, config, ts, channel)
            decoded.readings.append(Reading(meter_no, channel, at, value))

    valve = _valve(record, config)
    battery = _number(record, config.battery, "battery") if config.battery else None
    rssi_raw = MISSING if config.rssi_path is None else config.rssi_path.get(record)
    rssi = None if rssi_raw is MISSING or rssi_raw is None else to_int(rssi_raw, "rssi")
    if valve is not None or battery is not None or rssi is not None:
        decoded.statuses.append(MeterStatus(meter_no, ts, valve=valve, battery_v=battery, rssi_dbm=rssi))
    if battery is not None:
        if "battery_v" not in config.channels:
            decoded.readings.append(Reading(meter_no, "battery_v", ts, battery))
        if config.battery_low_v is not None and battery < config.battery_low_v:
            detail = {"battery_v": battery, "threshold_v": config.battery_low_v}
            decoded.events.append(MeterEvent(meter_no, EventKind.BATTERY_LOW, ts, detail))

    for rule in config.events:
        raw = rule.path.get(record)
        if raw is not MISSING and raw_text(raw) in rule.active:
            decoded.events.append(MeterEvent(meter_no, rule.kind, ts, {"field": rule.path.text, "value": raw}))


def _valve(record: Any, config: MappingConfig) -> ValveState | None:
    if config.valve_path is None:
        return None
    raw = config.valve_path.get(record)
    if raw is MISSING or raw is None:
        return None
    if isinstance(raw, dict | list):
        raise DecodeError("bad_value", f"valve {config.valve_path.text} must be a scalar")
    return config.valve_map.get(raw_text(raw), ValveState.UNKNOWN)
