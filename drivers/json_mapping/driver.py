"""The json_mapping driver: one instance per platform payload shape, configured by a TOML table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from drivers.base import Capability, Command, Decoded, Transport, UnsupportedCommand, Uplink
from drivers.json_mapping import codec
from drivers.json_mapping.config import MappingConfig, parse_config


class JsonMappingDriver:
    key: str = "json_mapping"
    transports: frozenset[Transport] = frozenset({Transport.MQTT})
    capabilities: Capability = Capability.PUSH  # decodes uplinks only; commands go through the platform
    topics: Sequence[str]

    def __init__(self, config: MappingConfig) -> None:
        self.config = config
        self.topics = (config.topic_filter,)

    def decode(self, uplink: Uplink) -> Decoded:
        return codec.decode(uplink, self.config)

    def encode(self, command: Command) -> bytes:
        raise UnsupportedCommand("json_mapping only decodes uplinks")


def create(settings: Mapping[str, Any]) -> JsonMappingDriver:
    """ValueError naming the key when the mapping is wrong."""
    return JsonMappingDriver(parse_config(settings))
