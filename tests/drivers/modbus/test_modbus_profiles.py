"""Shipped profiles load, plan the fewest reads, and bad profiles are refused with file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import registry
from drivers.base import Capability, Command, CommandKind, UnsupportedCommand
from drivers.modbus.codec import ReadBlock, WriteRequest, encode_valve, plan_reads
from drivers.modbus.profile import (
    Encoding,
    Function,
    Location,
    Point,
    Profile,
    ProfileError,
    ValueType,
    load_profile,
    loads_profile,
    shipped_profile,
    shipped_profiles,
)

HOLDING = Function.HOLDING
EXPECTED_PLANS = {
    "flonidan_uniflo1200": [ReadBlock(HOLDING, 52, 18)],
    "sick_flowsic500": [
        ReadBlock(HOLDING, 3200, 4),
        ReadBlock(HOLDING, 4100, 8),
        ReadBlock(HOLDING, 5026, 2),
        ReadBlock(HOLDING, 5136, 2),
        ReadBlock(HOLDING, 5224, 2),
        ReadBlock(HOLDING, 7002, 2),
    ],
    "sick_flowsic600": [ReadBlock(HOLDING, 3003, 1), ReadBlock(HOLDING, 5010, 5), ReadBlock(HOLDING, 7001, 2, 32)],
    "cn_flow_computer": [ReadBlock(HOLDING, 0, 21)],
    "generic_residential": [ReadBlock(HOLDING, 0, 5)],
}


def test_every_shipped_profile_has_an_expected_plan() -> None:
    assert sorted(shipped_profiles()) == sorted(EXPECTED_PLANS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PLANS))
def test_shipped_profile_plans_the_minimal_reads(name: str) -> None:
    assert plan_reads(shipped_profile(name)) == EXPECTED_PLANS[name]


def test_a_wider_gap_merges_distant_registers_within_125() -> None:
    blocks = plan_reads(shipped_profile("sick_flowsic500"), max_gap=120)
    assert ReadBlock(HOLDING, 5026, 112) in blocks  # 5026 … 5137; adding 5224 would need 200 registers
    assert len(blocks) == 5
    assert all(block.words <= 125 for block in blocks)


def test_byte_addresses_and_one_based_numbers_give_the_same_pdu_addresses() -> None:
    byte_profile = loads_profile(
        '[device]\nbyte_address = true\n[[points]]\nchannel = "volume_m3"\naddress = 104\ntype = "intreal"\n'
    )
    one_based = loads_profile(
        '[device]\naddress_base = 1\n[[points]]\nchannel = "volume_m3"\naddress = 53\ntype = "intreal"\n'
    )
    assert plan_reads(byte_profile) == plan_reads(one_based) == [ReadBlock(HOLDING, 52, 4)]


def _profile(spans: list[tuple[int, int]], gap: int) -> Profile:
    points = tuple(
        Point(f"p{i}", Location(HOLDING, start, Encoding(ValueType.BCD, words=size)))
        for i, (start, size) in enumerate(spans)
    )
    return Profile("t", "t.toml", points=points, max_gap=gap)


def _minimum_blocks(spans: list[tuple[int, int]], gap: int, limit: int) -> int:
    """Brute force over all ways to cut the sorted spans into consecutive groups."""
    ordered = sorted((start, start + size) for start, size in spans)
    best = [0] + [len(ordered) + 1] * len(ordered)
    for end in range(1, len(ordered) + 1):
        for begin in range(end):
            group = ordered[begin:end]
            reach = group[0][1]
            ok = True
            for start, stop in group[1:]:
                ok = ok and start - reach <= gap
                reach = max(reach, stop)
            if ok and reach - group[0][0] <= limit:
                best[end] = min(best[end], best[begin] + 1)
    return best[-1]


@given(
    st.lists(st.tuples(st.integers(0, 600), st.integers(1, 8)), min_size=1, max_size=12),
    st.integers(0, 20),
)
def test_planning_is_minimal_and_covers_everything(spans: list[tuple[int, int]], gap: int) -> None:
    blocks = plan_reads(_profile(spans, gap))
    assert all(block.count <= 125 for block in blocks)
    for start, size in spans:
        assert any(b.address <= start and start + size <= b.address + b.count for b in blocks)
    assert len(blocks) == _minimum_blocks(spans, gap, 125)


def test_coils_merge_up_to_2000_bits() -> None:
    text = "".join(
        f'[[points]]\nchannel = "c{i}"\nfunction = "coil"\naddress = {address}\n'
        for i, address in enumerate([0, 5, 1999, 2000])
    )
    assert plan_reads(loads_profile(text), max_gap=2000) == [
        ReadBlock(Function.COIL, 0, 2000),
        ReadBlock(Function.COIL, 2000, 1),
    ]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[[points]]\nchannel = "v_m3"\naddress = 1\ntype = "flaot32"\n', "points[0].type"),
        ('[[points]]\nchannel = "v_m3"\naddress = 1\nwordorder = "big"\n', "points[0].wordorder"),
        ('[device]\nbyte_address = true\n[[points]]\nchannel = "v_m3"\naddress = 3\n', "points[0].address"),
        ('[[points]]\nchannel = "v_m3"\naddress = 1\nscale_register = "nope"\n', "points[0].scale_register"),
        ('[[points]]\nchannel = "v_m3"\n', "points[0].address"),
        ('[[points]]\nchannel = "v_m3"\naddress = 1\nscale = "abc"\n', "points[0].scale"),
        ('[[alarms]]\naddress = 1\nbits = { 0 = "fire" }\n', "alarms[0].bits.0"),
        ('[valve]\nfunction = "coil"\naddress = 0\nopen = 1\nclose = false\n', "valve.open"),
        ('[valve]\nfunction = "input"\naddress = 0\nopen = 1\nclose = 0\n', "valve.function"),
        ('[[points]]\nchannel = "v_m3"\naddress = 1\n[[points]]\nchannel = "v_m3"\naddress = 2\n', "points[1].channel"),
    ],
)
def test_profile_errors_name_the_file_and_the_key(text: str, key: str) -> None:
    with pytest.raises(ProfileError) as raised:
        loads_profile(text, source="mine.toml")
    assert raised.value.key == key
    assert str(raised.value).startswith(f"mine.toml: {key}: ")


def test_load_profile_from_a_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[[points]]\nchannel = "v_m3"\naddress = -1\n')
    with pytest.raises(ProfileError, match=r"^broken.toml: points\[0\].address: "):
        load_profile(path)


def test_residential_valve_writes_the_coil() -> None:
    profile = shipped_profile("generic_residential")
    assert encode_valve(profile, CommandKind.VALVE_OPEN) == WriteRequest(5, 0, (1,))
    assert encode_valve(profile, Command(CommandKind.VALVE_CLOSE, "r-1")).pdu() == bytes.fromhex("05 0000 0000")
    assert encode_valve(profile, CommandKind.VALVE_OPEN).pdu() == bytes.fromhex("05 0000 FF00")
    with pytest.raises(UnsupportedCommand):
        encode_valve(profile, CommandKind.VALVE_ARM)
    with pytest.raises(UnsupportedCommand):
        encode_valve(shipped_profile("flonidan_uniflo1200"), CommandKind.VALVE_CLOSE)


def test_register_valve_with_arm_and_the_write_multiple_workaround() -> None:
    text = "[workarounds]\nwrite_multiple = true\n[valve]\naddress = 40\nopen = 1\nclose = 2\narm = 3\n"
    profile = loads_profile(text)
    assert encode_valve(profile, CommandKind.VALVE_ARM).pdu() == bytes.fromhex("10 0028 0001 02 0003")
    single = loads_profile(text.replace("true", "false"))
    assert encode_valve(single, CommandKind.VALVE_CLOSE).pdu() == bytes.fromhex("06 0028 0002")


def test_driver_from_the_registry() -> None:
    driver = registry.create("modbus", {"profile": "generic_residential"})
    assert driver.capabilities == Capability.READ | Capability.VALVE_OPEN | Capability.VALVE_CLOSE
    assert driver.encode(Command(CommandKind.VALVE_CLOSE, "r-1")) == bytes.fromhex("05 0000 0000")
    plain = registry.create("modbus", {"profile": "sick_flowsic500", "max_gap": 120})
    assert plain.capabilities == Capability.READ
    assert len(plain.blocks) == 5  # type: ignore[attr-defined]
    with pytest.raises(ProfileError, match="settings: port: unknown setting"):
        registry.create("modbus", {"profile": "generic_residential", "port": 502})
    with pytest.raises(ProfileError, match="no shipped profile"):
        registry.create("modbus", {"profile": "nope"})
