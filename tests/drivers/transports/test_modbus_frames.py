"""Modbus frames without I/O: PDUs, answers against their request, MBAP splitting, and the RTU framer's
resynchronisation — junk that looks like the start of the answer must not swallow the answer behind it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.transports.modbus_frames import (
    ExceptionAnswer,
    FrameMismatch,
    RtuFramer,
    answer_length,
    crc16,
    mbap_adu,
    parse_answer,
    read_pdu,
    rtu_adu,
    split_mbap,
    write_pdu,
)

UNIT = 4
REQUEST = read_pdu(3, 0, 5)  # read 5 holding registers from 0
WORDS = [0x0001, 0xE240, 3412, 1, 0]
GOOD = rtu_adu(UNIT, bytes([3, 10]) + b"".join(w.to_bytes(2, "big") for w in WORDS))
REQUEST_ADU = rtu_adu(UNIT, REQUEST)

# Junk that mimics the start of the answer: unit id and function code, then the byte count too, the exception
# form, a whole frame-length candidate with a wrong CRC, a cut-off copy of the answer itself, and plain noise.
JUNK = {
    "address_and_function": bytes([UNIT, 3]),
    "address_function_and_count": bytes([UNIT, 3, 10]),
    "exception_form": bytes([UNIT, 0x83]),
    "exception_form_and_code": bytes([UNIT, 0x83, 0x02]),
    "full_length_bad_crc": GOOD[:-2] + bytes([GOOD[-2] ^ 0x55, GOOD[-1]]),
    "cut_off_answer": GOOD[:7],
    "pair_twice": bytes([UNIT, 3, UNIT, 3]),
    "other_unit": bytes([UNIT + 1, 3, 10]) + bytes(12),
    "noise": bytes([0x00, 0xFF, 0x13, 0x37]),
}


def test_crc_of_a_known_frame() -> None:
    # 01 03 00 00 00 0A, the classic example: CRC C5 CD on the wire
    assert crc16(bytes.fromhex("01 03 00 00 00 0A")) == bytes.fromhex("C5 CD")
    assert rtu_adu(1, bytes.fromhex("03 00 00 00 0A")) == bytes.fromhex("01 03 00 00 00 0A C5 CD")


def test_request_pdus() -> None:
    assert read_pdu(3, 4100, 8) == bytes.fromhex("03 10 04 00 08")
    assert write_pdu(5, 0, [1]) == bytes.fromhex("05 00 00 FF 00")
    assert write_pdu(5, 0, [0]) == bytes.fromhex("05 00 00 00 00")
    assert write_pdu(6, 3, [2]) == bytes.fromhex("06 00 03 00 02")
    assert write_pdu(16, 10, [1, 2]) == bytes.fromhex("10 00 0A 00 02 04 00 01 00 02")
    for bad in ((3, 0, 0), (3, 0, 126), (1, 0, 2001), (7, 0, 1), (3, 65535, 2)):
        with pytest.raises(ValueError):
            read_pdu(*bad)
    with pytest.raises(ValueError):
        write_pdu(15, 0, [1])


def test_answers_are_checked_against_their_request() -> None:
    answer = GOOD[1:-2]
    assert parse_answer(REQUEST, answer, answer_length(REQUEST)) == WORDS
    coils = read_pdu(1, 0, 10)
    assert parse_answer(coils, bytes([1, 2, 0b0000_0101, 0b10]), answer_length(coils)) == [
        True, False, True, False, False, False, False, False, False, True,
    ]  # fmt: skip
    wide = read_pdu(3, 7001, 2)  # two 32-bit registers: four words
    assert answer_length(wide, words=4) == 10
    assert parse_answer(wide, bytes([3, 8]) + bytes(range(8)), 10) == [0x0001, 0x0203, 0x0405, 0x0607]
    write = write_pdu(5, 0, [0])
    assert parse_answer(write, write, answer_length(write)) is None
    with pytest.raises(ExceptionAnswer) as refused:
        parse_answer(REQUEST, bytes([0x83, 0x02]), answer_length(REQUEST))
    assert (refused.value.function_code, refused.value.exception_code) == (3, 2)
    for wrong in (bytes([4, 10]) + bytes(10), bytes([3, 8]) + bytes(8), bytes([3, 12]) + bytes(10), b""):
        with pytest.raises(FrameMismatch):
            parse_answer(REQUEST, wrong, answer_length(REQUEST))
    with pytest.raises(FrameMismatch):
        parse_answer(write, write_pdu(5, 0, [1]), 5)  # the echo of another value


def test_mbap_frames_are_split_from_a_stream() -> None:
    one, two = mbap_adu(7, 1, GOOD[1:-2]), mbap_adu(8, 2, bytes([0x83, 6]))
    stream = one + two
    for cut in range(len(stream) + 1):
        buffer, found = bytearray(), []
        for part in (stream[:cut], stream[cut:]):
            buffer += part
            found += split_mbap(buffer)
        assert found == [one, two] and not buffer
    with pytest.raises(FrameMismatch):
        split_mbap(bytearray(b"\x00\x01\x00\x05\x00\x06\x01\x03"))  # protocol id 5
    with pytest.raises(FrameMismatch):
        split_mbap(bytearray(b"\x00\x01\x00\x00\x01\x00\x01\x03"))  # 256 bytes after the length field


def feed_in_parts(framer: RtuFramer, stream: bytes, cuts: list[int]) -> list[object]:
    found = []
    start = 0
    for cut in [*cuts, len(stream)]:
        match = framer.feed(stream[start:cut])
        start = cut
        if match is not None:
            found.append(match)
    return found


@pytest.mark.parametrize("junk", list(JUNK.values()), ids=list(JUNK))
def test_junk_before_the_answer_is_skipped_whatever_the_split(junk: bytes) -> None:
    stream = junk + GOOD
    splits = [[cut] for cut in range(len(stream) + 1)] + [list(range(1, len(stream)))]  # …and byte by byte
    for cuts in splits:
        framer = RtuFramer()
        assert framer.expect(REQUEST_ADU, answer_length(REQUEST)) == b""
        found = feed_in_parts(framer, stream, cuts)
        assert len(found) == 1, cuts
        match = found[0]
        assert match.frame == GOOD, cuts  # type: ignore[attr-defined]
        assert match.skipped == junk, cuts  # type: ignore[attr-defined]


@pytest.mark.parametrize("junk", list(JUNK.values()), ids=list(JUNK))
def test_junk_before_an_exception_answer_is_skipped(junk: bytes) -> None:
    refused = rtu_adu(UNIT, bytes([0x83, 0x02]))
    for cut in range(len(junk) + len(refused) + 1):
        framer = RtuFramer()
        framer.expect(REQUEST_ADU, answer_length(REQUEST))
        stream = junk + refused
        [match] = feed_in_parts(framer, stream, [cut])
        assert (match.frame, match.skipped) == (refused, junk)  # type: ignore[attr-defined]


@given(st.binary(max_size=40), st.data())
def test_any_junk_then_the_answer_finds_the_answer(junk: bytes, data: st.DataObject) -> None:
    """Whatever comes first, the answer is found — possibly earlier, when the junk itself ends in a valid answer."""
    stream = junk + GOOD
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=6)))
    framer = RtuFramer()
    framer.expect(REQUEST_ADU, answer_length(REQUEST))
    found = feed_in_parts(framer, stream, cuts)
    assert found, "the answer was swallowed"
    match = found[0]
    assert match.skipped + match.frame == stream[: len(match.skipped) + len(match.frame)]  # type: ignore[attr-defined]


def test_an_echo_of_our_read_request_is_stepped_over_and_not_reported() -> None:
    stream = REQUEST_ADU + GOOD
    for cut in range(len(stream) + 1):
        framer = RtuFramer()
        framer.expect(REQUEST_ADU, answer_length(REQUEST))
        [match] = feed_in_parts(framer, stream, [cut])
        assert (match.frame, match.skipped) == (GOOD, b"")  # type: ignore[attr-defined]


def test_an_answer_with_a_bad_crc_is_no_answer_and_stays_in_the_buffer() -> None:
    framer = RtuFramer()
    framer.expect(REQUEST_ADU, answer_length(REQUEST))
    bad = GOOD[:-1] + bytes([GOOD[-1] ^ 0xFF])
    assert framer.feed(bad) is None
    assert framer.crc_failed
    assert framer.give_up() == bad
    assert framer.buffer == bytearray()


def test_a_partial_answer_waits_and_bytes_after_the_answer_are_stale_for_the_next_request() -> None:
    framer = RtuFramer()
    framer.expect(REQUEST_ADU, answer_length(REQUEST))
    assert framer.feed(GOOD[:9]) is None
    assert framer.waiting_at == 0 and not framer.crc_failed
    match = framer.feed(GOOD[9:] + b"\x99")
    assert match is not None and match.frame == GOOD
    framer.finish()
    assert framer.feed(b"\x98") is None  # nothing pending: kept
    assert framer.expect(REQUEST_ADU, answer_length(REQUEST)) == b"\x99\x98"


def test_a_write_answer_is_its_echo() -> None:
    request = write_pdu(5, 0, [0])
    adu = rtu_adu(UNIT, request)
    framer = RtuFramer()
    framer.expect(adu, answer_length(request))
    for junk in (bytes([UNIT, 5]), bytes([UNIT, 0x85])):
        framer.expect(adu, answer_length(request))
        match = framer.feed(junk + adu)
        assert match is not None and (match.frame, match.skipped) == (adu, junk)


def test_the_buffer_is_bounded_while_nothing_is_pending() -> None:
    framer = RtuFramer()
    framer.feed(bytes(RtuFramer.MAX_BUFFER + 100))
    assert len(framer.buffer) == RtuFramer.MAX_BUFFER
