"""The `[poller]` settings section: field buses and the polled meters on them.

A bus is one connection the collector owns: a Modbus TCP endpoint, a serial-to-Ethernet gateway
(RTU over TCP, or CJ/T 188 / M-Bus frames over TCP), or a local serial port. Devices on one bus are
polled one request at a time; buses are polled concurrently.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

Protocol = Literal["modbus", "cjt188", "mbus"]


class PollBus(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(description="unique name; a collector polls the buses listed in poller.buses (all if empty)")
    protocol: Protocol
    host: str | None = Field(default=None, description="TCP endpoint (Modbus TCP device or serial gateway)")
    port: int | None = Field(default=None, ge=1, le=65535)
    device: str | None = Field(default=None, description="serial port, e.g. /dev/ttyUSB0")
    framer: Literal["socket", "rtu"] | None = Field(
        default=None, description="Modbus framing: socket (MBAP, TCP default) or rtu (serial, RTU over TCP)"
    )
    baudrate: int = Field(default=2400, gt=0)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    silence_ms: float | None = Field(
        default=None, ge=0, description="quiet time between frames; default 3.5 character times (at least 2 ms)"
    )
    preamble: int = Field(default=2, ge=0, le=16, description="CJ/T 188: FE wake-up bytes before each request")
    timeout_s: float | None = Field(default=None, gt=0, description="per request; default poller.timeout_s")
    retries: int | None = Field(default=None, ge=0, le=10)
    workarounds: dict[str, Any] = Field(
        default_factory=dict,
        description="CJ/T 188 vendor differences of this bus's meters, as the cjt188 driver's [workarounds] "
        "(di_order, clock_order, status_bit_order, timestamp, clock_utc_offset, meter_type, preamble, ...)",
    )

    @model_validator(mode="after")
    def _one_endpoint(self) -> PollBus:
        if (self.device is None) == (self.host is None):
            raise ValueError(f"bus {self.name!r}: set either device (serial) or host and port (TCP)")
        if self.host is not None and self.port is None:
            raise ValueError(f"bus {self.name!r}: host needs a port")
        if self.framer is not None and self.protocol != "modbus":
            raise ValueError(f"bus {self.name!r}: framer applies to modbus buses only")
        if self.workarounds and self.protocol != "cjt188":
            raise ValueError(f"bus {self.name!r}: workarounds apply to cjt188 buses only")
        return self

    @property
    def modbus_framer(self) -> Literal["socket", "rtu"]:
        return self.framer or ("socket" if self.host is not None else "rtu")

    @property
    def shared_line(self) -> bool:
        """A half-duplex line behind this connection: requests strictly one at a time, silence between."""
        return self.device is not None or self.protocol != "modbus" or self.modbus_framer == "rtu"


class PollDevice(BaseModel):
    model_config = {"extra": "forbid"}

    meter_no: str
    bus: str
    address: str = Field(
        description="Modbus unit id; CJ/T 188 14-digit address; M-Bus primary address (0-250) or 8-digit secondary"
    )
    profile: str | None = Field(default=None, description="Modbus device profile (shipped name or .toml path)")
    interval_s: float | None = Field(default=None, gt=0, description="default poller.interval_s")
    reads: list[str] = Field(
        default_factory=list,
        description="CJ/T 188 extra data: purchase (8105), history (D120, last month)",
    )


class PollerSettings(BaseModel):
    model_config = {"extra": "forbid"}

    buses: list[str] = Field(default_factory=list, description="bus names this collector owns; empty = all")
    interval_s: float = Field(default=300.0, gt=0, description="default time between two polls of a device")
    jitter: float = Field(default=0.1, ge=0, le=1, description="random share of the interval added or removed")
    timeout_s: float = Field(default=1.0, gt=0, description="per request")
    retries: int = Field(default=1, ge=0, le=10, description="per request, before the poll counts as failed")
    offline_after: int = Field(default=3, ge=1, description="failed polls in a row that raise an offline event")
    backoff_max_s: float = Field(default=3600.0, gt=0, description="longest wait before retrying a failing device")
    from_store: bool = Field(
        default=False,
        description="also poll installed meters whose protocol_address is bus:address (profile from meter_model)",
    )
    bus: list[PollBus] = Field(default_factory=list)
    device: list[PollDevice] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_buses(self) -> PollerSettings:
        names = [b.name for b in self.bus]
        duplicate = {n for n in names if names.count(n) > 1}
        if duplicate:
            raise ValueError(f"bus names must be unique: {sorted(duplicate)}")
        for device in self.device:
            if device.bus not in names:
                raise ValueError(f"device {device.meter_no!r}: no bus named {device.bus!r}")
        return self
