"""Property tests: encode_values and decode_blocks are inverses; bad register data raises only DecodeError."""

from __future__ import annotations

import contextlib
import struct
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from drivers.base import DecodeError, EventKind, ValveState
from drivers.modbus.codec import ReadBlock, block_data, decode_blocks, encode_values, plan_reads
from drivers.modbus.profile import Function, loads_profile, shipped_profile, shipped_profiles
from drivers.modbus.registers import shortest_float32

TS = datetime(2025, 1, 15, tzinfo=UTC)
ORDERS = st.sampled_from(["big", "little"])
RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def round_trip(profile_text: str, values: dict[str, Decimal]) -> dict[str, Decimal]:
    profile = loads_profile(profile_text)
    image = encode_values(profile, values)
    decoded = decode_blocks(profile, [(b, block_data(image, b)) for b in plan_reads(profile)], "m", TS)
    return {r.channel: r.value for r in decoded.readings}


def one_point(kind: str, word: str, byte: str, extra: str = "") -> str:
    orders = f'word_order = "{word}"\nbyte_order = "{byte}"\n'
    return f'[[points]]\nchannel = "x"\naddress = 10\ntype = "{kind}"\n{orders}{extra}'


@given(st.sampled_from(sorted(RANGES)), ORDERS, ORDERS, st.data())
def test_integers_round_trip(kind: str, word: str, byte: str, data: st.DataObject) -> None:
    value = Decimal(data.draw(st.integers(*RANGES[kind])))
    assert round_trip(one_point(kind, word, byte), {"x": value}) == {"x": value}


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), ORDERS, ORDERS)
def test_float32_round_trips_through_its_shortest_decimal(number: float, word: str, byte: str) -> None:
    value = shortest_float32(number)
    assert round_trip(one_point("float32", word, byte), {"x": value}) == {"x": value}


@given(st.floats(allow_nan=False, allow_infinity=False), ORDERS, ORDERS)
def test_float64_round_trips(number: float, word: str, byte: str) -> None:
    value = Decimal(repr(number))
    assert round_trip(one_point("float64", word, byte), {"x": value}) == {"x": value}


@given(st.integers(0, 10**12 - 1), ORDERS, ORDERS)
def test_bcd_round_trips_exactly(number: int, word: str, byte: str) -> None:
    value = Decimal(number).scaleb(-4)
    assert round_trip(one_point("bcd", word, byte, "registers = 3\ndecimals = 4\n"), {"x": value}) == {"x": value}


@given(st.integers(0, 2**32 - 1), st.integers(0, 999))
def test_intreal_round_trips_integer_and_three_decimals(integer: int, thousandths: int) -> None:
    value = Decimal(integer) + Decimal(thousandths).scaleb(-3)
    text = one_point("intreal", "little", "little")
    assert round_trip(text, {"x": value}) == {"x": value}


@given(st.integers(0, 2**32 - 1), st.integers(0, 9999))
def test_int_fraction_with_an_integer_fraction_round_trips(integer: int, fraction: int) -> None:
    value = Decimal(integer) + Decimal(fraction).scaleb(-4)
    text = one_point(
        "int_fraction", "big", "big", 'integer_type = "uint32"\nfraction_type = "uint16"\nfraction_scale = "0.0001"\n'
    )
    assert round_trip(text, {"x": value}) == {"x": value}


@given(st.integers(0, 2**32 - 1), st.integers(-6, 3))
def test_flowsic500_counter_and_resolution_round_trip(counter: int, exponent: int) -> None:
    profile = shipped_profile("sick_flowsic500")
    volume = Decimal(counter).scaleb(exponent)
    image = encode_values(profile, {"counter_resolution": Decimal(exponent), "volume_m3": volume})
    decoded = decode_blocks(profile, [(b, block_data(image, b)) for b in plan_reads(profile)], "m", TS)
    assert {r.channel: r.value for r in decoded.readings}["volume_m3"] == volume


@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from(list(ValveState)[:4]),
    st.sets(st.sampled_from([EventKind.BATTERY_LOW, EventKind.TAMPER, EventKind.LEAK, EventKind.MAGNETIC])),
)
def test_residential_image_round_trip(litres: int, valve: ValveState, alarms: set[EventKind]) -> None:
    profile = shipped_profile("generic_residential")
    volume = Decimal(litres).scaleb(-3)
    image = encode_values(profile, {"volume_m3": volume, "battery_v": Decimal("3.3")}, valve=valve, alarms=alarms)
    decoded = decode_blocks(profile, [(b, block_data(image, b)) for b in plan_reads(profile)], "r", TS)
    assert {r.channel: r.value for r in decoded.readings} == {"volume_m3": volume, "battery_v": Decimal("3.3")}
    assert {e.kind for e in decoded.events} == alarms
    assert decoded.statuses[0].valve is valve


def test_encode_refuses_values_the_register_cannot_hold() -> None:
    profile = shipped_profile("generic_residential")
    for bad in (Decimal("-1"), Decimal("0.0001"), Decimal(2**32)):
        try:
            encode_values(profile, {"volume_m3": bad})
        except ValueError as exc:
            assert "volume_m3" in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_float32_values_are_exact_shortest_decimals() -> None:
    assert shortest_float32(struct.unpack(">f", bytes.fromhex("3F2D9168"))[0]) == Decimal("0.678")


@given(
    st.sampled_from(shipped_profiles()),
    st.data(),
)
def test_arbitrary_register_contents_raise_only_decode_error(name: str, data: st.DataObject) -> None:
    profile = shipped_profile(name)
    responses = []
    for block in plan_reads(profile):
        values = data.draw(st.lists(st.integers(0, 65535), min_size=block.words, max_size=block.words))
        responses.append((block, values))
    with contextlib.suppress(DecodeError):
        decode_blocks(profile, responses, "m", TS)


@given(
    st.sampled_from(shipped_profiles()),
    st.sampled_from(list(Function)),
    st.integers(-5, 70000),
    st.integers(0, 130),
    st.lists(st.one_of(st.integers(-(2**17), 2**17), st.booleans(), st.none(), st.floats(), st.text(max_size=2))),
)
def test_malformed_responses_raise_only_decode_error(
    name: str, function: Function, address: int, count: int, values: list[object]
) -> None:
    profile = shipped_profile(name)
    with contextlib.suppress(DecodeError):
        decode_blocks(profile, [(ReadBlock(function, address, count), values)], "m", TS)  # type: ignore[list-item]
