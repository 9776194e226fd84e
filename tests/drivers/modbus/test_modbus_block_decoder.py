"""The poller's precompiled BlockDecoder gives exactly what decode_blocks gives, errors included."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from collector.poll_devices import _words_bytes
from drivers.base import Decoded, DecodeError
from drivers.modbus.codec import BlockDecoder, ReadBlock, block_data, decode_blocks, encode_values, plan_reads
from drivers.modbus.profile import Profile, loads_profile, shipped_profile, shipped_profiles

TS = datetime(2025, 1, 15, tzinfo=UTC)
ORDERS = st.sampled_from(["big", "little"])
TYPES = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bcd"]


def outcome(call: object) -> Decoded | tuple[str, str]:
    try:
        return call()  # type: ignore[operator,no-any-return]
    except DecodeError as exc:
        return exc.reason, exc.message


def both(profile: Profile, datas: list[list[int] | list[bool]]) -> tuple[object, object]:
    blocks = plan_reads(profile)
    compiled = BlockDecoder(profile, blocks)
    fast = outcome(lambda: compiled.decode(datas, "m", TS))
    slow = outcome(lambda: decode_blocks(profile, list(zip(blocks, datas, strict=False)), "m", TS))
    return fast, slow


def block_values(block: ReadBlock, data: st.DataObject) -> list[int] | list[bool]:
    if block.function.is_bit:
        return data.draw(st.lists(st.booleans(), min_size=block.words, max_size=block.words))
    return data.draw(st.lists(st.integers(0, 65535), min_size=block.words, max_size=block.words))


@given(st.sampled_from(shipped_profiles()), st.data())
def test_shipped_profiles_decode_the_same_for_any_register_contents(name: str, data: st.DataObject) -> None:
    profile = shipped_profile(name)
    datas = [block_values(b, data) for b in plan_reads(profile)]
    fast, slow = both(profile, datas)
    assert fast == slow
    raw = BlockDecoder(profile, plan_reads(profile)).raw(datas)
    assert raw == b"".join(_words_bytes(b, d) for b, d in zip(plan_reads(profile), datas, strict=True))


@given(st.sampled_from(shipped_profiles()), st.integers(0, 2**31), st.data())
def test_shipped_profiles_decode_the_same_for_plausible_values(name: str, seed: int, data: st.DataObject) -> None:
    from random import Random

    from simulators.modbus_slave import initial_values

    profile = shipped_profile(name)
    image = encode_values(profile, initial_values(profile, Random(seed)))
    fast, slow = both(profile, [block_data(image, b) for b in plan_reads(profile)])
    assert isinstance(fast, Decoded) and fast.readings
    assert fast == slow


@given(st.sampled_from(TYPES), ORDERS, ORDERS, st.sampled_from(["1", "0.001", "10", "2.5"]), st.data())
def test_one_value_of_every_type_and_order_decodes_the_same(
    kind: str, word: str, byte: str, scale: str, data: st.DataObject
) -> None:
    extra = "registers = 3\ndecimals = 4\n" if kind == "bcd" else ""
    text = (
        f'[[points]]\nchannel = "x"\naddress = 10\ntype = "{kind}"\nword_order = "{word}"\n'
        f'byte_order = "{byte}"\nscale = "{scale}"\n{extra}'
        '[[points]]\nchannel = "battery_v"\naddress = 20\ntype = "int16"\nscale = "0.001"\n'
    )
    profile = loads_profile(text)
    fast, slow = both(profile, [block_values(b, data) for b in plan_reads(profile)])
    assert fast == slow


@given(
    st.sampled_from(shipped_profiles()),
    st.lists(st.lists(st.one_of(st.integers(-3, 70000), st.booleans()), max_size=30), max_size=4),
)
def test_data_that_does_not_fit_the_blocks_fails_as_decode_blocks_does(name: str, datas: list[list[int]]) -> None:
    profile = shipped_profile(name)
    fast, slow = both(profile, datas)  # type: ignore[arg-type]
    assert fast == slow


def test_the_common_registers_take_the_fast_path() -> None:
    decoder = BlockDecoder(shipped_profile("generic_residential"), plan_reads(shipped_profile("generic_residential")))
    assert all(fast is not None for _, _, fast in decoder._points)
    decoded = decoder.decode([[0x0001, 0xE240, 3412, 1, 0]], "m", TS)
    assert {r.channel: r.value for r in decoded.readings} == {
        "volume_m3": Decimal("123.456"),
        "battery_v": Decimal("3.412"),
    }
