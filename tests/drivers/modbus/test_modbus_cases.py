"""Every recorded register image in cases/ decodes to its expected readings, events and valve state."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from drivers.base import DecodeError
from drivers.modbus.codec import ReadBlock, decode_blocks
from drivers.modbus.profile import Function, shipped_profile

CASES = Path(__file__).parent / "cases"
TS = datetime(2025, 1, 15, 8, 0, tzinfo=UTC)


def responses(spec: dict[str, Any]) -> list[tuple[ReadBlock, list[int]]]:
    found = []
    for item in spec["responses"]:
        block = ReadBlock(Function(item["function"]), item["address"], item["count"], item.get("register_width", 16))
        found.append((block, [int(word, 16) for word in item["hex"].split()]))
    return found


@pytest.mark.parametrize("name", sorted(p.name for p in CASES.iterdir() if (p / "input.json").is_file()))
def test_case(name: str) -> None:
    spec = json.loads((CASES / name / "input.json").read_text())
    profile = shipped_profile(spec["profile"])
    error_file = CASES / name / "error.json"
    if error_file.exists():
        with pytest.raises(DecodeError) as raised:
            decode_blocks(profile, responses(spec), spec["meter_no"], TS)
        assert raised.value.reason == json.loads(error_file.read_text())["reason"]
        return
    expected = json.loads((CASES / name / "expected.json").read_text())
    decoded = decode_blocks(profile, responses(spec), spec["meter_no"], TS)
    assert {r.channel: r.value for r in decoded.readings} == {k: Decimal(v) for k, v in expected["readings"].items()}
    assert decoded.meter_nos <= {spec["meter_no"]}
    assert [[e.kind.value, e.detail["bit"]] for e in decoded.events] == expected["events"]
    if expected["valve"] is None and "battery_v" not in expected:
        assert decoded.statuses == []
    else:
        (status,) = decoded.statuses
        assert (status.valve.value if status.valve else None) == expected["valve"]
        assert status.battery_v == (Decimal(expected["battery_v"]) if "battery_v" in expected else None)
