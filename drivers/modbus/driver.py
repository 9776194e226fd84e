"""The modbus driver: a device profile plus the pure codec, for the collector's poller."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from drivers.base import Capability, Command, Decoded, DecodeError, Transport, Uplink
from drivers.modbus import codec
from drivers.modbus.profile import MAX_READ_BITS, Profile, ProfileError, load_profile, shipped_profile

_SETTINGS = {"profile", "max_gap"}


class ModbusDriver:
    key: str = "modbus"
    transports: frozenset[Transport] = frozenset({Transport.MODBUS_TCP, Transport.MODBUS_RTU})
    topics: Sequence[str] = ()

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.capabilities = Capability.READ
        if profile.valve is not None:
            self.capabilities |= Capability.VALVE_OPEN | Capability.VALVE_CLOSE
            if profile.valve.write.arm is not None:
                self.capabilities |= Capability.VALVE_ARM
        self.blocks = codec.plan_reads(profile)
        self.decoder = codec.BlockDecoder(profile, self.blocks)  # decode_blocks for these blocks, precompiled

    def decode(self, uplink: Uplink) -> Decoded:
        """Polled registers carry no address, so they are decoded with decode_blocks, not here."""
        raise DecodeError("not_supported", "modbus data is decoded per read block: use codec.decode_blocks")

    def encode(self, command: Command) -> bytes:
        """The request PDU of a valve command (function code and data, without unit id or checksum)."""
        return codec.encode_valve(self.profile, command).pdu()

    def write_request(self, command: Command) -> codec.WriteRequest:
        """The valve write as function code, address and values, for a Modbus client library."""
        return codec.encode_valve(self.profile, command)

    def decode_blocks(
        self, responses: Iterable[tuple[codec.ReadBlock, Sequence[int] | Sequence[bool]]], meter_no: str, ts: datetime
    ) -> Decoded:
        return codec.decode_blocks(self.profile, responses, meter_no, ts)


def create(settings: Mapping[str, Any]) -> ModbusDriver:
    """settings: `profile` (a shipped profile name or a path to a .toml file), optional `max_gap`."""
    unknown = sorted(set(settings) - _SETTINGS)
    if unknown:
        raise ProfileError("settings", unknown[0], f"unknown setting; expected one of {sorted(_SETTINGS)}")
    name = settings.get("profile")
    if not isinstance(name, str) or not name:
        raise ProfileError("settings", "profile", "name a shipped profile or a .toml file")
    profile = load_profile(name) if name.endswith(".toml") else shipped_profile(name)
    if "max_gap" in settings:
        gap = settings["max_gap"]
        if isinstance(gap, bool) or not isinstance(gap, int) or not 0 <= gap <= MAX_READ_BITS:
            raise ProfileError("settings", "max_gap", f"must be an integer between 0 and {MAX_READ_BITS}")
        profile = replace(profile, max_gap=gap)
    return ModbusDriver(profile)
