"""The poll plan: which devices on which buses this collector polls, from settings and the meter table.

Meters in the store join the plan (with `poller.from_store`) when their driver is modbus, cjt188 or
mbus and their protocol_address reads `<bus>:<address>`; a Modbus meter's profile is its model's.
Each collector polls only the buses named in `poller.buses` (all when empty), so a plan is split
across processes by giving each its own buses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from collector.poll_devices import Target
from drivers.cjt188.settings import Workarounds
from drivers.modbus import driver as modbus_driver
from meterhub.poller_settings import PollBus, PollDevice, PollerSettings
from meterhub.store import Store

POLLED_DRIVERS = ("modbus", "cjt188", "mbus")
CJT188_READS = {"purchase", "history"}


class PlanError(ValueError):
    """A device that cannot be polled as configured; the message names it."""


@dataclass(frozen=True, slots=True)
class PlannedDevice:
    target: Target
    interval_s: float


@dataclass
class BusPlan:
    bus: PollBus
    devices: list[PlannedDevice] = field(default_factory=list)


def devices_from_store(store: Store) -> list[PollDevice]:
    with store.connection() as conn:
        rows = conn.execute(
            """SELECT m.meter_no, m.driver_key, m.protocol_address, coalesce(mm.profile, '')
                 FROM meter m LEFT JOIN meter_model mm ON mm.id = m.model_id
                WHERE m.status = 'installed' AND m.driver_key = ANY(%s) AND m.protocol_address LIKE '%%:%%'
                ORDER BY m.meter_no""",
            [list(POLLED_DRIVERS)],
        ).fetchall()
    found = []
    for meter_no, _driver_key, address, profile in rows:
        bus, _, unit = address.rpartition(":")
        found.append(PollDevice(meter_no=meter_no, bus=bus, address=unit, profile=profile or None))
    return found


def bus_workarounds(bus: PollBus) -> Workarounds:
    """A CJ/T 188 bus's vendor workarounds; the wake-up preamble from workarounds.preamble, else preamble."""
    try:
        found = Workarounds.from_mapping(bus.workarounds)
    except ValueError as exc:
        raise PlanError(f"bus {bus.name!r}: {exc}") from None
    if "preamble" not in bus.workarounds:
        return replace(found, preamble=bus.preamble)
    if "preamble" in bus.model_fields_set and found.preamble != bus.preamble:
        raise PlanError(f"bus {bus.name!r}: preamble and workarounds.preamble differ; set one")
    return found


def build_plan(settings: PollerSettings, extra: list[PollDevice] = ()) -> list[BusPlan]:  # type: ignore[assignment]
    """The buses this collector owns, with their devices; PlanError for a bus or device that cannot be polled."""
    owned = set(settings.buses)
    plans = {bus.name: BusPlan(bus) for bus in settings.bus if not owned or bus.name in owned}
    for plan in plans.values():
        if plan.bus.protocol == "cjt188":
            bus_workarounds(plan.bus)  # a wrong vendor setting stops the collector at start, naming it
    seen: set[str] = set()
    for device in [*settings.device, *extra]:
        if device.meter_no in seen or device.bus not in plans:
            continue  # configured devices win over store rows; other collectors own other buses
        seen.add(device.meter_no)
        plan = plans[device.bus]
        target = _target(plan.bus, device)
        plan.devices.append(PlannedDevice(target, device.interval_s or settings.interval_s))
    return [plan for plan in plans.values() if plan.devices]


def _target(bus: PollBus, device: PollDevice) -> Target:
    where = f"poller device {device.meter_no!r}"
    if bus.protocol == "modbus":
        if not device.profile:
            raise PlanError(f"{where}: a Modbus device needs a profile")
        if not device.address.isdigit() or not 0 <= int(device.address) <= 247:
            raise PlanError(f"{where}: Modbus unit id must be 0-247, got {device.address!r}")
        try:
            driver = modbus_driver.create({"profile": device.profile})
        except ValueError as exc:
            raise PlanError(f"{where}: {exc}") from None
        return Target(device.meter_no, device.address, "modbus", modbus=driver)
    if bus.protocol == "cjt188":
        if len(device.address) != 14:
            raise PlanError(f"{where}: a CJ/T 188 address has 14 digits, got {device.address!r}")
        unknown = set(device.reads) - CJT188_READS
        if unknown:
            raise PlanError(f"{where}: unknown reads {sorted(unknown)}; expected {sorted(CJT188_READS)}")
        return Target(device.meter_no, device.address.upper(), "cjt188", reads=tuple(device.reads))
    address = device.address
    primary = address.isdigit() and len(address) <= 3 and int(address) <= 250
    secondary = len(address) == 8 and all(c in "0123456789" for c in address)
    if not (primary or secondary):
        raise PlanError(f"{where}: M-Bus address must be primary 0-250 or 8-digit secondary, got {address!r}")
    return Target(device.meter_no, address, "mbus")
