"""The one list of in-tree drivers, plus third-party drivers from the `meterhub.drivers` entry point.

A registry entry is a factory: it takes the driver's settings (a mapping, usually a TOML table) and
returns a configured driver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from drivers.base import Driver

DriverFactory = Callable[[Mapping[str, Any]], Driver]

ENTRY_POINT_GROUP = "meterhub.drivers"

# key -> "module:factory". Listed here, imported on first use.
BUILTIN: dict[str, str] = {
    "native_json": "drivers.native_json.driver:create",
    "json_mapping": "drivers.json_mapping.driver:create",
    "cjt188": "drivers.cjt188.driver:create",
    "modbus": "drivers.modbus.driver:create",
    "mbus": "drivers.mbus.driver:create",
}


class UnknownDriver(KeyError):
    pass


def available() -> dict[str, str]:
    """Every known driver key with where its factory lives (in-tree first, then entry points)."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def factory(key: str) -> DriverFactory:
    target = available().get(key)
    if target is None:
        raise UnknownDriver(f"no driver with key {key!r}; known: {', '.join(sorted(available()))}")
    module_name, _, attr = target.partition(":")
    found: DriverFactory = getattr(import_module(module_name), attr)
    return found


def create(key: str, settings: Mapping[str, Any] | None = None) -> Driver:
    return factory(key)(settings or {})
