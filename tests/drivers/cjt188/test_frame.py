import contextlib
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import DecodeError
from drivers.cjt188.frame import (
    Frame,
    bcd_to_int,
    control_code,
    decimal_to_bcd,
    decode_frame,
    encode_frame,
    int_to_bcd,
)

READ = "68 30 78 56 34 12 00 00 00 01 03 90 1F 01 60 16"
VALVE_OPEN = "68 30 78 56 34 12 00 00 00 04 04 A0 17 02 55 C2 16"
VALVE_CLOSE = "68 30 78 56 34 12 00 00 00 04 04 A0 17 03 99 07 16"


@pytest.mark.parametrize(
    ("wire", "frame"),
    [
        (READ, Frame(0x30, "00000012345678", 0x01, 0x901F, 1)),
        (VALVE_OPEN, Frame(0x30, "00000012345678", 0x04, 0xA017, 2, b"\x55")),
        (VALVE_CLOSE, Frame(0x30, "00000012345678", 0x04, 0xA017, 3, b"\x99")),
    ],
)
def test_worked_examples(wire: str, frame: Frame) -> None:
    assert decode_frame(bytes.fromhex(wire)) == frame
    assert encode_frame(frame).hex(" ").upper() == wire


def test_control_bits() -> None:
    frame = decode_frame(bytes.fromhex(VALVE_OPEN))
    assert (frame.function, frame.from_meter, frame.error, frame.follow_up) == (0x04, False, False, False)
    assert control_code(0x04, from_meter=True, error=True) == 0xC4
    assert control_code(0x01, from_meter=True, follow_up=True) == 0xA1


def test_preamble_and_di_order() -> None:
    frame = Frame(0x30, "00000012345678", 0x01, 0x901F, 1)
    wire = encode_frame(frame, di_order="little", preamble=4)
    assert wire[:4] == b"\xfe" * 4 and wire[15:17] == b"\x1f\x90"
    assert decode_frame(wire, di_order="little") == frame


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (READ[:-6] + " 61 16", "bad_checksum"),
        (READ[:-3] + " 17", "bad_end"),
        (READ[:-3], "truncated"),
        (READ + " 00", "trailing_bytes"),
        ("FE FE 12 34", "no_frame"),
        ("68 30 78 56 34 12 00 00 00 81 00 2D 16", "short_data"),
    ],
)
def test_decode_errors(wire: str, reason: str) -> None:
    with pytest.raises(DecodeError) as raised:
        decode_frame(bytes.fromhex(wire))
    assert raised.value.reason == reason


def test_bcd() -> None:
    assert int_to_bcd(12345678, 4) == bytes.fromhex("78563412")
    assert bcd_to_int(bytes.fromhex("78563412")) == 12345678
    assert decimal_to_bcd(Decimal("86.50"), 4, 2) == bytes.fromhex("50860000")
    with pytest.raises(ValueError):
        decimal_to_bcd(Decimal("1.005"), 4, 2)
    with pytest.raises(ValueError):
        int_to_bcd(100_000_000, 4)
    with pytest.raises(DecodeError, match="bad_bcd"):
        bcd_to_int(b"\x1a")


frames = st.builds(
    Frame,
    meter_type=st.integers(0, 255),
    address=st.text("0123456789ABCDEF", min_size=14, max_size=14),
    control=st.integers(0, 255),
    di=st.integers(0, 0xFFFF),
    ser=st.integers(0, 255),
    payload=st.binary(max_size=252),
)


@given(frames, st.sampled_from(["big", "little"]), st.integers(0, 4))
def test_frame_round_trip(frame: Frame, di_order: str, preamble: int) -> None:
    assert decode_frame(encode_frame(frame, di_order, preamble), di_order) == frame  # type: ignore[arg-type]


@given(st.integers(0, 10**8 - 1))
def test_bcd_round_trip(value: int) -> None:
    assert bcd_to_int(int_to_bcd(value, 4)) == value


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_frame(data)
