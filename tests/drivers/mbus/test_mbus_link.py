"""Link layer: request encoders, frame parsing and the stream framer."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import Command, CommandKind, DecodeError, UnsupportedCommand
from drivers.mbus import codec
from drivers.mbus.driver import create

CASES = Path(__file__).parent / "cases"
FRAMES = {
    p.name: bytes.fromhex((p / "frame.hex").read_text())
    for p in sorted(CASES.iterdir())
    if (p / "frame.hex").is_file() and not p.name.startswith("error_bad_checksum")
}
GARBAGE = bytes.fromhex("00 FF 12 99 16 42")  # no E5, 10 or 68: nothing a frame could start with


def test_snd_nke_and_req_ud2_bytes() -> None:
    assert codec.snd_nke(5) == bytes.fromhex("10 40 05 45 16")
    assert codec.req_ud2(5) == bytes.fromhex("10 5B 05 60 16")
    assert codec.req_ud2(5, fcb=True) == bytes.fromhex("10 7B 05 80 16")
    assert codec.req_ud2(0xFD) == bytes.fromhex("10 5B FD 58 16")


def test_fcb_is_set_after_reset_then_toggles() -> None:
    state = codec.FcbState()
    assert state.reset(1) == bytes.fromhex("10 40 01 41 16")
    sent = [state.next_req_ud2(1)[1] for _ in range(4)]
    assert sent == [0x7B, 0x5B, 0x7B, 0x5B]
    assert state.repeat_req_ud2(1)[1] == 0x5B  # the same FCB again: the slave repeats its last answer
    state.reset(1)
    assert state.next_req_ud2(1)[1] == 0x7B


def test_secondary_selection_frame() -> None:
    # L = 3 + 8; data = ID 12345678 LSB first, manufacturer LGB = 0x30E2 LSB first, version and medium wildcards.
    assert codec.select_secondary("12345678", "LGB") == bytes.fromhex(
        "68 0B 0B 68 53 FD 52 78 56 34 12 E2 30 FF FF C6 16"
    )


def test_secondary_selection_with_wildcards() -> None:
    frame = codec.parse_frame(codec.select_secondary("1234FFFF", medium=3))
    assert isinstance(frame, codec.LongFrame)
    assert (frame.control, frame.address, frame.ci) == (0x53, 0xFD, 0x52)
    assert frame.data == bytes.fromhex("FF FF 34 12 FF FF FF 03")


def test_bad_secondary_address_is_refused() -> None:
    with pytest.raises(ValueError):
        codec.select_secondary("1234567")
    with pytest.raises(ValueError):
        codec.select_secondary("1234567A")


def test_manufacturer_code_round_trip() -> None:
    assert codec.encode_manufacturer("KAM") == 0x2C2D
    assert codec.decode_manufacturer(0x30E2) == "LGB"


def test_driver_encodes_a_read_as_req_ud2_and_refuses_valve_commands() -> None:
    driver = create({})
    assert driver.encode(Command(CommandKind.READ, "m", address="5")) == bytes.fromhex("10 5B 05 60 16")
    with pytest.raises(UnsupportedCommand):
        driver.encode(Command(CommandKind.VALVE_CLOSE, "m", address="5"))


def test_parse_single_ack_short_and_control_frames() -> None:
    assert codec.parse_frame(b"\xe5") == codec.Ack()
    assert codec.parse_frame(bytes.fromhex("10 40 05 45 16")) == codec.ShortFrame(0x40, 5)
    control = codec.parse_frame(bytes.fromhex("68 03 03 68 53 FE 51 A2 16"))
    assert isinstance(control, codec.LongFrame) and control.is_control_frame


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("10 40 05 46 16", "bad_checksum"),
        ("10 40 05 45 17", "bad_stop"),
        ("68 03 04 68 53 FE 51 A2 16", "bad_header"),
        ("68 04 04 68 53 FE 51 A2 16", "bad_length"),
        ("E5 E5", "trailing_bytes"),
        ("42", "bad_start"),
    ],
)
def test_bad_frames_name_the_problem(raw: str, reason: str) -> None:
    with pytest.raises(DecodeError) as raised:
        codec.parse_frame(bytes.fromhex(raw))
    assert raised.value.reason == reason


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_framer_reassembles_every_split_after_garbage(name: str) -> None:
    stream = GARBAGE + FRAMES[name]
    for cut in range(len(stream) + 1):
        framer = codec.StreamFramer()
        frames = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert [f.to_bytes() for f in frames] == [FRAMES[name]], cut
        assert framer.pending == b""
        rejected = framer.take_rejected()
        assert [(r.raw, r.reason) for r in rejected] == [(GARBAGE, "garbage")]


def test_framer_recovers_after_a_bad_checksum() -> None:
    bad = bytes.fromhex((CASES / "error_bad_checksum" / "frame.hex").read_text())
    good = FRAMES["libmbus_gwf_mtkcoder_water"]
    framer = codec.StreamFramer()
    frames = framer.feed(bad + good)
    assert [f.to_bytes() for f in frames] == [good]
    assert [(r.raw, r.reason) for r in framer.take_rejected()] == [(bad, "bad_checksum")]


def test_framer_separates_acks_short_and_long_frames_fed_byte_by_byte() -> None:
    stream = b"\xe5" + codec.req_ud2(1) + FRAMES["libmbus_lgb_g350_gas"] + b"\xe5"
    framer = codec.StreamFramer()
    frames = [frame for byte in stream for frame in framer.feed(bytes([byte]))]
    assert frames[0] == codec.Ack() and frames[-1] == codec.Ack()
    assert frames[1] == codec.ShortFrame(0x5B, 1)
    assert frames[2].to_bytes() == FRAMES["libmbus_lgb_g350_gas"]


def test_framer_gives_up_a_header_that_never_completes_when_the_line_goes_quiet() -> None:
    good = FRAMES["libmbus_gwf_mtkcoder_water"]
    framer = codec.StreamFramer()
    assert framer.feed(bytes.fromhex("68 FF FF 68") + good) == []  # waits for 261 bytes
    assert [f.to_bytes() for f in framer.idle()] == [good]
    rejected = framer.take_rejected()
    assert rejected[0].raw == bytes.fromhex("68 FF FF 68") and rejected[0].reason == "incomplete"


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=5))
def test_framer_never_raises_on_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    framer = codec.StreamFramer()
    previous = 0
    for cut in [*sorted(cuts), len(data)]:
        framer.feed(data[previous:cut])
        previous = max(previous, cut)
    framer.idle()
    skipped = sum(len(r.raw) for r in framer.take_rejected())
    assert skipped <= len(data)


@given(st.binary(max_size=40).map(lambda b: bytes(x for x in b if x not in (0xE5, 0x10, 0x68))))
def test_framer_finds_a_frame_after_any_garbage(garbage: bytes) -> None:
    good = FRAMES["libmbus_lgb_g350_gas"]
    framer = codec.StreamFramer()
    assert [f.to_bytes() for f in framer.feed(garbage + good)] == [good]
    assert sum(len(r.raw) for r in framer.take_rejected()) == len(garbage)
