"""The native_json driver: meterhub's own JSON protocol over MQTT."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from drivers.base import Capability, Command, Decoded, Transport, Uplink
from drivers.native_json import codec


class NativeJsonDriver:
    key: str = "native_json"
    transports: frozenset[Transport] = frozenset({Transport.MQTT})
    capabilities: Capability = (
        Capability.READ
        | Capability.PUSH
        | Capability.VALVE_OPEN
        | Capability.VALVE_CLOSE
        | Capability.VALVE_ARM
        | Capability.CREDIT_WRITE
    )
    topics: Sequence[str]

    def __init__(self, settings: codec.NativeJsonSettings) -> None:
        self.settings = settings
        prefix = settings.topic_prefix
        self.topics = (f"{prefix}/+/up", f"{prefix}/+/reply")

    def decode(self, uplink: Uplink) -> Decoded:
        return codec.decode(uplink, self.settings)

    def encode(self, command: Command) -> bytes:
        return codec.encode(command)

    def downlink_topic(self, meter_no: str) -> str:
        return codec.downlink_topic(meter_no, self.settings.topic_prefix)


def create(settings: Mapping[str, Any]) -> NativeJsonDriver:
    return NativeJsonDriver(codec.NativeJsonSettings.from_mapping(settings))
