from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import DecodeError
from drivers.cjt188.frame import Frame, decode_frame, encode_frame
from drivers.cjt188.framer import RawFrame, Skipped, StreamFramer
from tests.drivers.casefiles import cases

GARBAGE = b"+CSQ:23\r\n\x00\xfe\xff"


def recorded_frames() -> list[bytes]:
    """Every single well-formed frame among the recorded cases."""
    found = []
    for case in cases(Path(__file__).parent):
        if case.has("frame.hex"):
            try:
                frame = decode_frame(case.payload, "little" if "little" in case.name else "big")
            except DecodeError:
                continue
            found.append(case.payload.lstrip(b"\xfe"))
            assert frame.address
    return found


RECORDED = recorded_frames()


def run(framer: StreamFramer, chunks: list[bytes]) -> list[RawFrame | Skipped]:
    out: list[RawFrame | Skipped] = []
    for chunk in chunks:
        out += framer.feed(chunk)
    return out + framer.flush()


def test_there_are_recorded_frames() -> None:
    assert len(RECORDED) >= 20


@pytest.mark.parametrize("wire", RECORDED, ids=lambda wire: wire[:16].hex())
def test_every_split_of_every_recorded_frame(wire: bytes) -> None:
    stream = GARBAGE + b"\xfe\xfe" + wire
    for cut in range(1, len(stream)):
        out = run(StreamFramer(), [stream[:cut], stream[cut:]])
        assert out == [Skipped(GARBAGE, "garbage"), RawFrame(wire)], cut


def test_byte_by_byte_two_frames() -> None:
    stream = RECORDED[0] + b"\xfe\xfe\xfe" + RECORDED[1]
    frames = [item for item in run(StreamFramer(), [bytes([b]) for b in stream]) if isinstance(item, RawFrame)]
    assert frames == [RawFrame(RECORDED[0]), RawFrame(RECORDED[1])]


def test_resynchronises_after_bad_checksum() -> None:
    bad = bytearray(RECORDED[0])
    bad[-2] ^= 0xFF
    out = run(StreamFramer(), [bytes(bad) + RECORDED[1]])
    assert out == [Skipped(bytes(bad), "bad_checksum"), RawFrame(RECORDED[1])]


def test_frame_hidden_behind_false_start_is_found_on_flush() -> None:
    # a stray 68 whose length byte promises more bytes than ever arrive
    framer = StreamFramer()
    out = framer.feed(b"\x68\x30" + b"\x00" * 8 + b"\xff" + RECORDED[0])
    assert out == [] and framer.pending > 0
    assert framer.flush() == [Skipped(b"\x68\x30" + b"\x00" * 8 + b"\xff", "truncated"), RawFrame(RECORDED[0])]


def test_incomplete_frame_is_reported_as_truncated() -> None:
    framer = StreamFramer()
    assert framer.feed(RECORDED[0][:-3]) == []
    assert framer.flush() == [Skipped(RECORDED[0][:-3], "truncated")]


frames = st.builds(
    Frame,
    meter_type=st.integers(0, 255),
    address=st.text("0123456789", min_size=14, max_size=14),
    control=st.integers(0, 255),
    di=st.integers(0, 0xFFFF),
    ser=st.integers(0, 255),
    payload=st.binary(max_size=60),
)
# garbage may hold anything but a frame start: a 68 in garbage may truly begin a frame that swallows the next
garbage = st.binary(max_size=80).map(lambda data: data.replace(b"\x68", b"\x00"))


@given(garbage, frames, st.integers(0, 4), st.lists(st.integers(1, 40), max_size=6))
def test_never_loses_a_frame_after_garbage(junk: bytes, frame: Frame, preamble: int, cuts: list[int]) -> None:
    wire = encode_frame(frame)
    stream = junk + b"\xfe" * preamble + wire
    chunks, rest = [], stream
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    out = run(StreamFramer(), [*chunks, rest])
    assert out[-1] == RawFrame(wire)
    assert b"".join(item.data for item in out if isinstance(item, Skipped)) == junk.rstrip(b"\xfe")


@given(st.lists(st.binary(max_size=50), max_size=8))
def test_framer_accepts_anything(chunks: list[bytes]) -> None:
    out = run(StreamFramer(), chunks)
    for item in out:
        if isinstance(item, RawFrame):
            try:
                decode_frame(item.data)
            except DecodeError as exc:
                assert exc.reason == "short_data"
