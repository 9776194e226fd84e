"""Every recorded M-Bus telegram in cases/ decodes to its expected header, records and readings."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from drivers.base import DecodeError, Uplink
from drivers.mbus import codec
from drivers.mbus.driver import create

CASES = Path(__file__).parent / "cases"
TS = datetime(2025, 1, 15, 8, 0, tzinfo=UTC)


def case_names() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if (p / "frame.hex").is_file())


def frame_of(name: str) -> bytes:
    return bytes.fromhex((CASES / name / "frame.hex").read_text())


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(actual, Decimal):
        return expected is not None and actual == Decimal(expected)
    return bool(actual == expected)


@pytest.mark.parametrize("name", case_names())
def test_case(name: str) -> None:
    frame = frame_of(name)
    error_file = CASES / name / "error.json"
    if error_file.exists():
        with pytest.raises(DecodeError) as raised:
            codec.parse_telegram(frame)
        assert raised.value.reason == json.loads(error_file.read_text())["reason"]
        return
    expected = json.loads((CASES / name / "expected.json").read_text())
    telegram = codec.parse_telegram(frame)
    if expected["header"] is None:
        assert telegram.header is None
    else:
        assert telegram.header is not None
        for key, value in expected["header"].items():
            assert getattr(telegram.header, key) == value, key
    assert telegram.more_follows is expected["more_follows"]
    assert len(telegram.records) == len(expected["records"])
    for index, (record, wanted) in enumerate(zip(telegram.records, expected["records"], strict=True)):
        for key, value in wanted.items():
            assert _same(getattr(record, key), value), f"record {index} {key}: {getattr(record, key)!r} != {value!r}"
    decoded = codec.to_decoded(telegram, "m-1", TS)
    readings = {r.channel: r.value for r in decoded.readings}
    assert readings == {channel: Decimal(value) for channel, value in expected["readings"].items()}
    assert all(r.ts == TS and r.meter_no == "m-1" for r in decoded.readings)
    assert sorted(e.kind.value for e in decoded.events) == sorted(expected["events"])


def test_every_record_keeps_its_raw_bytes() -> None:
    """Unknown records are kept: concatenating the records' raw bytes gives back the data after the header."""
    for name in case_names():
        if (CASES / name / "expected.json").exists():
            frame = codec.parse_frame(frame_of(name))
            assert isinstance(frame, codec.LongFrame)
            telegram = codec.parse_telegram(frame)
            joined = "".join(record.raw for record in telegram.records)
            body = frame.data[12:] if telegram.header else frame.data
            assert joined == body.hex().upper().replace("2F2F", ""), name


def test_driver_decodes_an_uplink_with_the_meter_id_as_meter_no() -> None:
    driver = create({})
    decoded = driver.decode(Uplink(frame_of("libmbus_lgb_g350_gas"), TS, source="serial:/dev/ttyUSB0"))
    assert decoded.meter_nos == {"12082058"}
    assert [(r.channel, r.value) for r in decoded.readings] == [("volume_m3_storage_1", Decimal("10834.092"))]


def test_driver_can_name_meters_by_primary_address() -> None:
    decoded = create({"meter_no_from": "address"}).decode(Uplink(frame_of("built_no_header_ci78"), TS))
    assert decoded.meter_nos == {"7"}


def test_driver_refuses_a_telegram_without_identification() -> None:
    with pytest.raises(DecodeError) as raised:
        create({}).decode(Uplink(frame_of("built_no_header_ci78"), TS))
    assert raised.value.reason == "no_identification"


def test_driver_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="meter_no_from"):
        create({"meter_no_from": "serial"})
    with pytest.raises(ValueError, match="unknown key 'baud'"):
        create({"baud": 2400})
