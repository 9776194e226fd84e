"""The cjt188 driver: CJ/T 188 frames tunnelled over MQTT by DTUs (binary or hex text), or from a serial line."""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.base import Capability, Command, CommandKind, Decoded, DecodeError, Transport, UnsupportedCommand, Uplink
from drivers.cjt188 import codec
from drivers.cjt188.frame import DIR_FROM_METER, ERROR, control_code, decode_frame
from drivers.cjt188.framer import RawFrame, Skipped, StreamFramer
from drivers.cjt188.settings import Workarounds

_HEX_TEXT = re.compile(rb"[0-9A-Fa-f\s]+")
DOWNLINK_ENCODINGS = ("auto", "binary", "hex")
PURCHASE_SEQUENCE_MODULUS = 256  # the purchase sequence is one byte on the wire: … 254, 255, 0, 1 …
_REPLY_CONTROL_MASK = 0xFF & ~(DIR_FROM_METER | ERROR)  # a reply echoes the request's control, plus these bits


@dataclass(frozen=True)
class Cjt188Settings:
    topic: str = "cjt188/+/up"  # MQTT filter of DTU uplinks; the meter is the frame's address
    workarounds: Workarounds = field(default_factory=Workarounds)
    # How frames go down to the DTU: "binary", "hex" (text), or "auto": as the meter's own uplinks came.
    downlink_encoding: str = "auto"

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> Cjt188Settings:
        unknown = set(settings) - {"topic", "workarounds", "downlink_encoding"}
        if unknown:
            raise ValueError(f"cjt188: unknown setting(s) {', '.join(sorted(unknown))}")
        topic = settings.get("topic", "cjt188/+/up")
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"cjt188: topic must be an MQTT topic filter, got {topic!r}")
        workarounds = settings.get("workarounds", {})
        if not isinstance(workarounds, Mapping):
            raise ValueError("cjt188: workarounds must be a table")
        encoding = settings.get("downlink_encoding", "auto")
        if encoding not in DOWNLINK_ENCODINGS:
            choices = ", ".join(DOWNLINK_ENCODINGS)
            raise ValueError(f"cjt188: downlink_encoding must be one of {choices}, got {encoding!r}")
        return cls(topic=topic, workarounds=Workarounds.from_mapping(workarounds), downlink_encoding=encoding)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching with '+' (one level) and '#' (the rest)."""
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for index, part in enumerate(wanted):
        if part == "#":
            return True
        if index >= len(levels) or (part != "+" and part != levels[index]):
            return False
    return len(wanted) == len(levels)


def unhex(payload: bytes) -> tuple[bytes, bool]:
    """Hex text (optionally spaced) to bytes; binary as is. A binary frame contains 68 ('h'), never hex text."""
    if _HEX_TEXT.fullmatch(payload):
        digits = re.sub(rb"\s", b"", payload)
        if digits and len(digits) % 2 == 0:
            return bytes.fromhex(digits.decode("ascii")), True
    return payload, False


def ser_for(correlation_id: str) -> int:
    """A stable SER byte for a command, echoed by the meter in its reply."""
    return zlib.crc32(correlation_id.encode()) & 0xFF


class Cjt188Driver:
    key: str = "cjt188"
    purchase_sequence_modulus: int = PURCHASE_SEQUENCE_MODULUS
    transports: frozenset[Transport] = frozenset({Transport.MQTT, Transport.SERIAL})
    capabilities: Capability = (
        Capability.READ
        | Capability.PUSH
        | Capability.VALVE_OPEN
        | Capability.VALVE_CLOSE
        | Capability.CREDIT_WRITE
        | Capability.CREDIT_READ
    )
    topics: Sequence[str]

    def __init__(self, settings: Cjt188Settings) -> None:
        self.settings = settings
        self.topics = (settings.topic,)

    def decode(self, uplink: Uplink) -> Decoded:
        """Every frame in one message (a DTU may batch several, or add its own header bytes)."""
        if uplink.topic is not None and not topic_matches(self.settings.topic, uplink.topic):
            raise DecodeError("bad_topic", f"topic {uplink.topic!r} does not match {self.settings.topic!r}")
        data, as_hex = unhex(uplink.payload)
        framer = StreamFramer()
        found = framer.feed(data) + framer.flush()
        frames = [item for item in found if isinstance(item, RawFrame)]
        if not frames:
            skipped = [item for item in found if isinstance(item, Skipped)]
            reason = "no_frame" if not skipped or skipped[0].reason == "garbage" else skipped[0].reason
            raise DecodeError(reason, f"no complete CJ/T 188 frame in {len(data)} bytes")
        decoded = Decoded()
        acks = b""
        for raw in frames:
            frame = decode_frame(raw.data, self.settings.workarounds.di_order)
            part = codec.decode_meter_frame(frame, uplink.received_at, self.settings.workarounds)
            decoded.readings += part.readings
            decoded.events += part.events
            decoded.statuses += part.statuses
            decoded.replies += part.replies
            acks += part.response or b""
        if acks:
            decoded.response = self.downlink(acks, "hex" if as_hex else "binary")
        return decoded

    def uplink_encoding(self, payload: bytes) -> str:
        """How a DTU sent this payload: "hex" (text) or "binary"."""
        return "hex" if unhex(payload)[1] else "binary"

    def downlink(self, frames: bytes, uplink_encoding: str | None) -> bytes:
        """Frames as they go down to the DTU: the route's `downlink_encoding`, or with "auto" the encoding
        of the meter's uplinks (binary while none has been seen)."""
        encoding = self.settings.downlink_encoding
        if encoding == "auto":
            encoding = uplink_encoding or "binary"
        return frames.hex().upper().encode() if encoding == "hex" else frames

    def request(self, command: Command) -> tuple[int, int]:
        """The control code and DI of the request frame that carries `command`."""
        workarounds = self.settings.workarounds
        if command.kind is CommandKind.READ:
            return control_code(codec.FN_READ), codec.DI_METERING
        if command.kind is CommandKind.CREDIT_READ:
            return control_code(codec.FN_READ), codec.DI_PURCHASE_READ
        if command.kind in (CommandKind.VALVE_OPEN, CommandKind.VALVE_CLOSE):
            return workarounds.valve_control, codec.DI_VALVE
        if command.kind is CommandKind.CREDIT:
            return control_code(codec.FN_WRITE), codec.DI_PURCHASE_WRITE
        raise UnsupportedCommand(f"cjt188 cannot send {command.kind}")

    def reply_matches(self, command: Command, detail: Mapping[str, Any]) -> bool:
        """Whether a decoded reply (its `control`, `di` and `ser`) answers the frame `encode(command)` sent.

        CJ/T 188 replies carry no correlation id: the meter echoes its address, the request's control code
        (with the direction bit, and the error bit when it refuses), the DI and the SER.
        """
        try:
            control, di = self.request(command)
            reply_control = int(str(detail["control"]), 16)
            reply_di = int(str(detail["di"]), 16)
            reply_ser = int(detail["ser"])
        except (KeyError, TypeError, ValueError, UnsupportedCommand):
            return False
        return (
            bool(reply_control & DIR_FROM_METER)
            and reply_control & _REPLY_CONTROL_MASK == control & _REPLY_CONTROL_MASK
            and reply_di == di
            and reply_ser == ser_for(command.correlation_id)
        )

    def encode(self, command: Command) -> bytes:
        """One request frame; the address is `command.address`, or the meter number when that is empty."""
        address = command.address or command.meter_no
        ser = ser_for(command.correlation_id)
        workarounds = self.settings.workarounds
        if command.kind is CommandKind.READ:
            return codec.encode_read(address, codec.DI_METERING, ser, workarounds)
        if command.kind is CommandKind.CREDIT_READ:
            return codec.encode_read(address, codec.DI_PURCHASE_READ, ser, workarounds)
        if command.kind in (CommandKind.VALVE_OPEN, CommandKind.VALVE_CLOSE):
            return codec.encode_valve(address, command.kind is CommandKind.VALVE_OPEN, ser, workarounds)
        if command.kind is CommandKind.CREDIT:
            if command.amount is None or command.sequence is None:
                raise ValueError("a CJ/T 188 top-up needs an amount and a purchase sequence")
            if command.sequence < 0:
                raise ValueError(f"purchase sequence must not be negative, got {command.sequence}")
            # Our sequence keeps growing; the meter's is one byte and wraps (see PURCHASE_SEQUENCE_MODULUS).
            wire_sequence = command.sequence % PURCHASE_SEQUENCE_MODULUS
            return codec.encode_purchase(address, wire_sequence, command.amount, ser, workarounds)
        raise UnsupportedCommand(f"cjt188 cannot send {command.kind}")


def create(settings: Mapping[str, Any]) -> Cjt188Driver:
    return Cjt188Driver(Cjt188Settings.from_mapping(settings))
