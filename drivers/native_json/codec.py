"""meterhub's own JSON protocol: uplinks, command replies and downlink commands (pure functions)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from drivers.base import (
    Command,
    CommandKind,
    CommandReply,
    Decoded,
    DecodeError,
    EventKind,
    MeterEvent,
    MeterStatus,
    Reading,
    UnsupportedCommand,
    Uplink,
    ValveState,
)
from drivers.jsonvalues import from_epoch, load_json, to_decimal, to_int

# payload field -> reading channel
CHANNELS: dict[str, str] = {
    "volume_m3": "volume_m3",
    "flow_m3h": "flow_m3h",
    "pressure_kpa": "pressure_kpa",
    "temperature_c": "temperature_c",
    "battery_v": "battery_v",
    "credit_cny": "credit_remaining_cny",
}
COMMANDS = frozenset(
    {CommandKind.READ, CommandKind.VALVE_OPEN, CommandKind.VALVE_CLOSE, CommandKind.VALVE_ARM, CommandKind.CREDIT}
)
TOPIC_KINDS = ("up", "down", "reply")
_NUMERIC_TEXT = re.compile(r"-?\d+(\.\d+)?")
_METER_NO = re.compile(r"[^/+#\s]{1,64}")


@dataclass(frozen=True, slots=True)
class NativeJsonSettings:
    topic_prefix: str = "meters"
    battery_low_v: Decimal = Decimal("3.3")

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> NativeJsonSettings:
        unknown = set(settings) - {"topic_prefix", "battery_low_v"}
        if unknown:
            raise ValueError(f"native_json: unknown setting(s) {', '.join(sorted(unknown))}")
        prefix = settings.get("topic_prefix", "meters")
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "+#"):
            raise ValueError(f"native_json: topic_prefix must be a topic without wildcards, got {prefix!r}")
        try:
            threshold = Decimal(str(settings.get("battery_low_v", "3.3")))
        except ArithmeticError:
            raise ValueError("native_json: battery_low_v must be a number of volts") from None
        return cls(topic_prefix=prefix.rstrip("/"), battery_low_v=threshold)


def uplink_topic(meter_no: str, prefix: str = "meters") -> str:
    return f"{prefix}/{meter_no}/up"


def downlink_topic(meter_no: str, prefix: str = "meters") -> str:
    return f"{prefix}/{meter_no}/down"


def reply_topic(meter_no: str, prefix: str = "meters") -> str:
    return f"{prefix}/{meter_no}/reply"


def parse_topic(topic: str | None, prefix: str = "meters") -> tuple[str, str]:
    """`<prefix>/<meter_no>/<up|down|reply>` as (meter_no, kind); DecodeError('bad_topic') otherwise."""
    head = prefix + "/"
    if topic and topic.startswith(head):
        meter_no, _, kind = topic[len(head) :].partition("/")
        if kind in TOPIC_KINDS and _METER_NO.fullmatch(meter_no):
            return meter_no, kind
    raise DecodeError("bad_topic", f"topic {topic!r} is not {prefix}/<meter_no>/up|down|reply")


def meter_from_topic(topic: str, prefix: str = "meters") -> str:
    return parse_topic(topic, prefix)[0]


def parse_ts(value: Any, field: str = "ts") -> datetime:
    """Epoch seconds or milliseconds (by magnitude, see jsonvalues) or ISO 8601 with an offset, as UTC."""
    if isinstance(value, str) and not _NUMERIC_TEXT.fullmatch(value.strip()):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise DecodeError("bad_timestamp", f"{field} {value[:40]!r} is not ISO 8601") from None
        if parsed.tzinfo is None:
            raise DecodeError("bad_timestamp", f"{field} {value[:40]!r} has no UTC offset")
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise DecodeError("bad_timestamp", f"{field} {value[:40]!r} is out of range") from None
    if isinstance(value, str):
        value = value.strip()
    return from_epoch(value, "auto", field)


def decode(uplink: Uplink, settings: NativeJsonSettings) -> Decoded:
    """One message from `<prefix>/<meter>/up` or `<prefix>/<meter>/reply`."""
    meter_no, kind = parse_topic(uplink.topic, settings.topic_prefix)
    if kind == "down":
        raise DecodeError("wrong_direction", "downlink topics carry commands, not meter data")
    body = load_json(uplink.payload)
    if not isinstance(body, dict):
        raise DecodeError("bad_payload", "payload must be a JSON object")
    said = body.get("meter", meter_no)
    if said != meter_no:
        raise DecodeError("meter_mismatch", f"payload meter {str(said)[:40]!r} is not topic meter {meter_no!r}")
    ts = parse_ts(body["ts"]) if "ts" in body else uplink.received_at
    if kind == "reply":
        return _decode_reply(meter_no, ts, body)
    return _decode_uplink(meter_no, ts, body, settings)


def _decode_uplink(meter_no: str, ts: datetime, body: dict[str, Any], settings: NativeJsonSettings) -> Decoded:
    decoded = Decoded(readings=_readings(meter_no, ts, body, "payload"))
    batch = body.get("readings", [])
    if not isinstance(batch, list):
        raise DecodeError("bad_payload", "readings must be a list")
    for index, item in enumerate(batch):
        where = f"readings[{index}]"
        if not isinstance(item, dict) or "ts" not in item:
            raise DecodeError("bad_payload", f"{where} must be an object with ts")
        found = _readings(meter_no, parse_ts(item["ts"], f"{where}.ts"), item, where)
        if not found:
            raise DecodeError("bad_payload", f"{where} has no value")
        decoded.readings.extend(found)
    status = _status(meter_no, ts, body)
    if status is not None:
        decoded.statuses.append(status)
        if status.battery_v is not None and status.battery_v < settings.battery_low_v:
            detail = {"battery_v": status.battery_v, "threshold_v": settings.battery_low_v}
            decoded.events.append(MeterEvent(meter_no, EventKind.BATTERY_LOW, ts, detail))
    decoded.events.extend(_events(meter_no, ts, body.get("events", [])))
    if not (decoded.readings or decoded.statuses or decoded.events):
        raise DecodeError("no_data", "payload has no reading, status or event")
    return decoded


def _readings(meter_no: str, ts: datetime, item: Mapping[str, Any], where: str) -> list[Reading]:
    return [
        Reading(meter_no, channel, ts, to_decimal(item[field], f"{where}.{field}"))
        for field, channel in CHANNELS.items()
        if field in item
    ]


def _valve(value: Any) -> ValveState:
    try:
        return ValveState(value)
    except ValueError:
        known = ", ".join(state.value for state in ValveState)
        raise DecodeError("bad_value", f"valve {str(value)[:20]!r} is not one of {known}") from None


def _status(meter_no: str, ts: datetime, body: Mapping[str, Any]) -> MeterStatus | None:
    if not any(key in body for key in ("valve", "battery_v", "rssi")):
        return None
    return MeterStatus(
        meter_no,
        ts,
        valve=_valve(body["valve"]) if "valve" in body else None,
        battery_v=to_decimal(body["battery_v"], "battery_v") if "battery_v" in body else None,
        rssi_dbm=to_int(body["rssi"], "rssi") if "rssi" in body else None,
    )


def _events(meter_no: str, ts: datetime, raw: Any) -> list[MeterEvent]:
    if not isinstance(raw, list):
        raise DecodeError("bad_payload", "events must be a list")
    events = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise DecodeError("bad_payload", f"events[{index}] must be an object")
        try:
            kind = EventKind(str(item.get("kind")))
        except ValueError:
            raise DecodeError("bad_value", f"events[{index}].kind {str(item.get('kind'))[:20]!r} is unknown") from None
        at = parse_ts(item["ts"], f"events[{index}].ts") if "ts" in item else ts
        detail = {key: value for key, value in item.items() if key not in ("kind", "ts")}
        events.append(MeterEvent(meter_no, kind, at, detail))
    return events


def _decode_reply(meter_no: str, ts: datetime, body: dict[str, Any]) -> Decoded:
    correlation_id, ok = body.get("id"), body.get("ok")
    if not isinstance(correlation_id, str) or not correlation_id or not isinstance(ok, bool):
        raise DecodeError("bad_payload", "a reply needs a text id and a boolean ok")
    detail = {key: value for key, value in body.items() if key not in ("id", "ok", "ts", "meter")}
    decoded = Decoded(replies=[CommandReply(meter_no, ts, ok, correlation_id, detail)])
    if "valve" in body:
        decoded.statuses.append(MeterStatus(meter_no, ts, valve=_valve(body["valve"])))
    return decoded


def encode(command: Command) -> bytes:
    """`{"id", "cmd", "amount", "seq"}` for `<prefix>/<meter>/down`; amount is decimal text, exact."""
    if command.kind not in COMMANDS:
        raise UnsupportedCommand(f"native_json cannot send {command.kind}")
    if not command.correlation_id:
        raise ValueError("native_json commands need a correlation_id")
    body: dict[str, Any] = {"id": command.correlation_id, "cmd": command.kind.value}
    if command.kind is CommandKind.CREDIT and (command.amount is None or command.sequence is None):
        raise ValueError("a credit command needs an amount and a sequence")
    if command.amount is not None:
        if not command.amount.is_finite() or command.amount <= 0:
            raise ValueError(f"credit amount must be positive, got {command.amount}")
        body["amount"] = format(command.amount, "f")
    if command.sequence is not None:
        body["seq"] = command.sequence
    return json.dumps(body, separators=(",", ":")).encode()


def decode_command(payload: bytes, meter_no: str) -> Command:
    """The meter's side of `encode`: a downlink payload back to a Command (used by simulators)."""
    body = load_json(payload)
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise DecodeError("bad_payload", "a command is a JSON object with a text id")
    try:
        kind = CommandKind(str(body.get("cmd")))
    except ValueError:
        raise DecodeError("bad_value", f"unknown cmd {str(body.get('cmd'))[:20]!r}") from None
    amount = to_decimal(body["amount"], "amount") if "amount" in body else None
    sequence = to_int(body["seq"], "seq") if "seq" in body else None
    return Command(kind, meter_no, correlation_id=body["id"], amount=amount, sequence=sequence)
