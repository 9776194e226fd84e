"""The driver interface every codec implements, and the value types it speaks.

A driver turns bytes received from a meter (with their receive time) into readings, events and
status, and turns commands into bytes. It never opens a socket, reads the clock or touches the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import Flag, StrEnum, auto
from typing import Any, Protocol, runtime_checkable


class Capability(Flag):
    """What a driver can do; the collector checks these in one place before sending anything."""

    READ = auto()
    PUSH = auto()  # the meter reports on its own (MQTT uplinks, unsolicited CJ/T 188 frames)
    VALVE_OPEN = auto()
    VALVE_CLOSE = auto()
    VALVE_ARM = auto()  # "open" only arms the valve; the customer restores supply on site
    CREDIT_WRITE = auto()
    CREDIT_READ = auto()
    CLOCK_SYNC = auto()


class Transport(StrEnum):
    MQTT = "mqtt"
    MODBUS_TCP = "modbus_tcp"
    MODBUS_RTU = "modbus_rtu"
    SERIAL = "serial"  # CJ/T 188 or M-Bus on RS-485 / level converters


class ValveState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    ARMED = "armed"
    ABNORMAL = "abnormal"
    UNKNOWN = "unknown"


class EventKind(StrEnum):
    BATTERY_LOW = "battery_low"
    TAMPER = "tamper"
    LEAK = "leak"
    VALVE_STATE = "valve_state"
    VALVE_ABNORMAL = "valve_abnormal"
    OFFLINE = "offline"
    LOW_CREDIT = "low_credit"
    MAGNETIC = "magnetic"
    OVERFLOW = "overflow"
    DEVICE_ALARM = "device_alarm"


class Quality(StrEnum):
    GOOD = "good"
    SUSPECT = "suspect"
    ESTIMATED = "estimated"


@dataclass(frozen=True, slots=True)
class Uplink:
    """Bytes as they arrived, with where and when."""

    payload: bytes
    received_at: datetime
    topic: str | None = None  # MQTT topic, when the transport has one
    source: str = ""  # transport-specific origin, e.g. "mqtt", "serial:/dev/ttyUSB0", "modbus:10.0.0.5:502/1"


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one channel of one meter at one instant. Values are exact decimals."""

    meter_no: str
    channel: str  # name with unit in it: volume_m3, flow_m3h, pressure_bar, temperature_c, credit_cny …
    ts: datetime  # timezone-aware
    value: Decimal
    quality: Quality = Quality.GOOD


@dataclass(frozen=True, slots=True)
class MeterEvent:
    meter_no: str
    kind: EventKind
    ts: datetime
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MeterStatus:
    """The latest state a meter reported; None means 'not reported in this message'."""

    meter_no: str
    ts: datetime
    valve: ValveState | None = None
    battery_v: Decimal | None = None
    rssi_dbm: int | None = None


@dataclass(frozen=True, slots=True)
class CommandReply:
    """A meter's answer to a command, matched by correlation id or by the meter's address."""

    meter_no: str
    ts: datetime
    ok: bool
    correlation_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Decoded:
    """Everything one uplink carried. `response` is what the transport must send back (an ack)."""

    readings: list[Reading] = field(default_factory=list)
    events: list[MeterEvent] = field(default_factory=list)
    statuses: list[MeterStatus] = field(default_factory=list)
    replies: list[CommandReply] = field(default_factory=list)
    response: bytes | None = None

    @property
    def meter_nos(self) -> set[str]:
        found = {r.meter_no for r in self.readings}
        found.update(e.meter_no for e in self.events)
        found.update(s.meter_no for s in self.statuses)
        found.update(r.meter_no for r in self.replies)
        return found


class CommandKind(StrEnum):
    VALVE_OPEN = "valve_open"
    VALVE_CLOSE = "valve_close"
    VALVE_ARM = "valve_arm"
    CREDIT = "credit"
    READ = "read"
    CREDIT_READ = "credit_read"  # ask a meter for its remaining balance (Capability.CREDIT_READ)


@dataclass(frozen=True, slots=True)
class Command:
    kind: CommandKind
    meter_no: str
    address: str = ""  # protocol address (CJ/T 188 14-digit BCD address, Modbus unit id, M-Bus address)
    correlation_id: str = ""
    amount: Decimal | None = None  # credit top-up, in the meter's currency unit
    sequence: int | None = None  # purchase sequence number that makes a top-up idempotent


class DecodeError(Exception):
    """A payload that cannot be decoded. `reason` is a short machine code; the message is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class UnsupportedCommand(Exception):
    """The driver cannot encode this command (its capabilities do not include it)."""


@runtime_checkable
class Driver(Protocol):
    """What every driver provides. Instances are configured by their factory and then immutable."""

    key: str
    transports: frozenset[Transport]
    capabilities: Capability
    topics: Sequence[str]  # MQTT topic filters the driver claims ('+' and '#' wildcards); empty if none

    def decode(self, uplink: Uplink) -> Decoded:
        """Decode one uplink. Raises DecodeError, and nothing else, for bad input."""
        ...

    def encode(self, command: Command) -> bytes:
        """Encode one command. Raises UnsupportedCommand when the driver cannot do it."""
        ...
