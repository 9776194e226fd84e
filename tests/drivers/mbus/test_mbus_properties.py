"""Property tests: arbitrary bytes raise only DecodeError; encoded records decode to their values."""

from __future__ import annotations

import contextlib
import struct
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from drivers.base import DecodeError
from drivers.mbus import codec

HEADER = bytes.fromhex("21 43 65 87 43 04 01 03 2A 00 00 00")  # ID 87654321, "ABC", gas


def rsp_ud(records: bytes, ci: int = 0x72) -> bytes:
    return codec.encode_long(0x08, 0x05, ci, (HEADER if ci == 0x72 else b"") + records)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        codec.parse_telegram(data)


@given(st.sampled_from([0x72, 0x76, 0x78, 0x7A]), st.binary(max_size=240))
def test_arbitrary_records_in_a_valid_frame_raise_only_decode_error(ci: int, body: bytes) -> None:
    """The envelope and checksum are right, so the record parser sees every byte pattern."""
    try:
        telegram = codec.parse_telegram(codec.encode_long(0x08, 0x01, ci, body))
    except DecodeError:
        return
    codec.to_decoded(telegram, "m", datetime(2025, 1, 1, tzinfo=UTC))


@given(st.integers(min_value=0, max_value=7), st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_int32_volume_round_trip(vif_n: int, raw: int) -> None:
    telegram = codec.parse_telegram(rsp_ud(bytes([0x04, 0x10 + vif_n]) + raw.to_bytes(4, "little", signed=True)))
    (record,) = telegram.records
    assert record.value == Decimal(raw).scaleb(vif_n - 6)
    assert codec.channel_for(record) == "volume_m3"


@given(st.integers(min_value=0, max_value=99_999_999), st.integers(min_value=0, max_value=2**32 - 1))
def test_bcd8_storage_round_trip(number: int, storage: int) -> None:
    """DIF storage bit + DIFE chain encode any storage number; the BCD value comes back exactly."""
    difes = []
    rest = storage >> 1
    while rest or not difes:
        difes.append(rest & 0x0F)
        rest >>= 4
    difes = [d | 0x80 for d in difes[:-1]] + [difes[-1]]
    dif = 0x8C | (storage & 1) << 6
    data = bytes([dif, *difes, 0x13]) + bytes.fromhex(f"{number:08d}")[::-1]
    (record,) = codec.parse_telegram(rsp_ud(data)).records
    assert (record.storage, record.raw_value, record.value) == (storage, number, Decimal(number).scaleb(-3))


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_real32_flow_round_trip(number: float) -> None:
    (record,) = codec.parse_telegram(rsp_ud(b"\x05\x3e" + struct.pack("<f", number))).records
    assert record.value is not None
    assert struct.pack("<f", float(record.value)) == struct.pack("<f", number)
    assert len(record.value.as_tuple().digits) <= 9
