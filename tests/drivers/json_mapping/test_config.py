from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from drivers.base import Uplink
from drivers.json_mapping.driver import create
from drivers.json_mapping.paths import MISSING, compile_path

AT = datetime(2026, 11, 27, 10, 20, tzinfo=UTC)
BASE: dict[str, Any] = {"topic": "t/{meter}/up", "channels": {"volume_m3": {"path": "v"}}}


def with_(**changes: Any) -> dict[str, Any]:
    return BASE | changes


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        (with_(channels={"volume_m3": {"path": "a..b"}}), "channels.volume_m3.path"),
        (with_(channels={"volume_m3": {"path": "a[x]"}}), "channels.volume_m3.path"),
        (with_(channels={"volume_m3": {"path": "items[*].v"}}), "only allowed in `records`"),
        (with_(channels={"volume_m3": {"path": "v", "unit": "kWh"}}), "channels.volume_m3.unit"),
        (with_(channels={"volume_m3": {"path": "v", "scale": "ten"}}), "channels.volume_m3.scale"),
        (with_(channels={"Volume": {"path": "v"}}), "channels.Volume"),
        (with_(timestamp={"path": "ts", "format": "epoch_us"}), "timestamp"),
        (with_(timestamp={"path": "ts", "format": "%Q"}), "timestamp"),
        (with_(timestamp={"naive_utc_offset": "Beijing"}), "timestamp"),
        (with_(valve={"path": "s", "map": {"0": "shut"}}), "valve.map.0"),
        (with_(events=[{"path": "a", "kind": "earthquake"}]), "events[0].kind"),
        (with_(topic="t/up"), "meter_from"),
        (with_(meter_from="key"), "records"),
        (with_(topic="t/x{meter}/up"), "topic"),
        (with_(volume="v"), "volume"),
    ],
)
def test_config_errors_name_the_key(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        create(settings)


@pytest.mark.parametrize(
    ("unit", "channel", "raw", "expected"),
    [
        ("L", "volume_m3", "123456", "123.456"),
        ("mL", "volume_m3", "1", "0.000001"),
        ("m³", "volume_m3", "0.1", "0.1"),
        ("L/h", "flow_m3h", "350", "0.35"),
        ("bar", "pressure_kpa", "0.021", "2.1"),
        ("fen", "credit_remaining_cny", "8650", "86.5"),
    ],
)
def test_unit_conversion_is_exact(unit: str, channel: str, raw: str, expected: str) -> None:
    driver = create({"topic": "t/{meter}/up", "channels": {channel: {"path": "v", "unit": unit}}})
    decoded = driver.decode(Uplink(f'{{"v": {raw}}}'.encode(), AT, "t/GM1/up"))
    assert [r.value for r in decoded.readings] == [Decimal(expected)]
    assert decoded.readings[0].channel == channel


def test_scale_and_meter_from_path() -> None:
    driver = create(
        {
            "topic": "gw/up",
            "records": "devices[*]",
            "meter_from": "path",
            "meter_path": "id",
            "channels": {"volume_m3": {"path": "pulses", "scale": "0.01"}},
            "timestamp": {"path": "time", "format": "iso8601", "naive_utc_offset": "+08:00"},
        }
    )
    payload = b'{"devices": [{"id": 778, "pulses": 1234, "time": "2026-11-27T18:15:00"}]}'
    [reading] = driver.decode(Uplink(payload, AT, "gw/up")).readings
    assert (reading.meter_no, reading.value) == ("778", Decimal("12.34"))
    assert reading.ts == datetime(2026, 11, 27, 10, 15, tzinfo=UTC)


def test_paths() -> None:
    body = {"a": [{"b": 1}, {"b": 2}], "d": {"x": {"v": 3}, "y": {"v": 4}}}
    assert compile_path("a[1].b").get(body) == 2
    assert compile_path("a[5].b").get(body) is MISSING
    assert [value for value, _ in compile_path("a[*].b").select(body)] == [1, 2]
    assert list(compile_path("d.*.v").select(body)) == [(3, "x"), (4, "y")]
    assert compile_path("").get(body) is body
