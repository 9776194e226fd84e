"""The mbus driver: RSP_UD telegrams from a serial M-Bus master to readings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from drivers.base import Capability, Command, CommandKind, Decoded, DecodeError, Transport, UnsupportedCommand, Uplink
from drivers.mbus import codec

METER_NO_SOURCES = ("id", "address")


class MbusDriver:
    key: str = "mbus"
    transports: frozenset[Transport] = frozenset({Transport.SERIAL})
    capabilities: Capability = Capability.READ
    topics: Sequence[str] = ()

    def __init__(self, meter_no_from: str = "id") -> None:
        self.meter_no_from = meter_no_from

    def decode(self, uplink: Uplink) -> Decoded:
        """One RSP_UD long frame. The meter number is the header's identification (or primary address)."""
        telegram = codec.parse_telegram(uplink.payload)
        if self.meter_no_from == "address":
            meter_no = str(telegram.address)
        elif telegram.header is not None:
            meter_no = telegram.header.identification
        else:
            raise DecodeError("no_identification", f"CI {telegram.ci:02X} telegram carries no identification")
        return codec.to_decoded(telegram, meter_no, uplink.received_at)

    def encode(self, command: Command) -> bytes:
        """READ of a primary address (0–250) as REQ_UD2. Secondary addresses are selected with
        codec.select_secondary and then read at address 253, in two exchanges."""
        if command.kind is not CommandKind.READ:
            raise UnsupportedCommand(f"mbus meters take no {command.kind.value} command")
        if not command.address.isdigit() or int(command.address) > 250:
            raise UnsupportedCommand(f"REQ_UD2 needs a primary address 0–250, got {command.address!r}")
        return codec.req_ud2(int(command.address))


def create(settings: Mapping[str, Any]) -> MbusDriver:
    """settings: `meter_no_from` = "id" (the 8-digit identification, default) or "address"."""
    unknown = sorted(set(settings) - {"meter_no_from"})
    if unknown:
        raise ValueError(f"mbus settings: unknown key {unknown[0]!r}; expected meter_no_from")
    source = settings.get("meter_no_from", "id")
    if source not in METER_NO_SOURCES:
        raise ValueError(f"mbus settings: meter_no_from must be one of {METER_NO_SOURCES}, got {source!r}")
    return MbusDriver(source)
