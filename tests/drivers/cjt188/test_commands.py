"""What the cjt188 driver adds for commands: which reply answers which request (address, control code, DI,
SER), the downlink encoding per route, and the one-byte purchase sequence that wraps."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from drivers.base import Command, CommandKind, Uplink
from drivers.cjt188 import codec
from drivers.cjt188.driver import create, ser_for
from drivers.cjt188.frame import Frame, decode_frame, encode_frame

ADDRESS = "00000012345678"
AT = datetime(2026, 11, 27, 10, 20, tzinfo=UTC)
CLOSE = Command(CommandKind.VALVE_CLOSE, "M1", ADDRESS, "c42-abc")
READ_BACK = Command(CommandKind.READ, "M1", ADDRESS, "c42-abc:r1")
TOP_UP = Command(CommandKind.CREDIT, "M1", ADDRESS, "c43-def", Decimal("50.00"), 7)
# 901F data: 10.00 m³ twice, clock 2026-11-27 10:20:00 (ss mm hh DD MM YY CC), ST valve closed
METERING = bytes.fromhex("00100000 2C 00100000 2C 00 20 10 27 11 26 20 01 00")
PAYLOADS = {codec.DI_VALVE: b"\x01\x00", codec.DI_METERING: METERING}


def reply_to(request: bytes, *, control: int | None = None, di: int | None = None, ser: int | None = None) -> bytes:
    """The meter's answer to a request frame (84/81 …), optionally for another control code, DI or SER."""
    frame = decode_frame(request)
    answer = Frame(
        frame.meter_type,
        frame.address,
        control if control is not None else frame.control | 0x80,
        di if di is not None else frame.di,
        ser if ser is not None else frame.ser,
        PAYLOADS.get(di if di is not None else frame.di, b""),
    )
    return encode_frame(answer)


def reply_detail(driver: Any, data: bytes) -> dict[str, Any]:
    [reply] = driver.decode(Uplink(data, AT, "cjt188/DTU1/up")).replies
    return dict(reply.detail)


@pytest.mark.parametrize("command", [CLOSE, READ_BACK, TOP_UP], ids=lambda c: c.kind.value)
def test_a_reply_matches_the_request_it_echoes(command: Command) -> None:
    driver = create({})
    request = driver.encode(command)
    detail = reply_detail(driver, reply_to(request))
    assert detail["ser"] == ser_for(command.correlation_id)
    assert driver.reply_matches(command, detail)
    refused = reply_detail(driver, reply_to(request, control=decode_frame(request).control | 0xC0))
    assert driver.reply_matches(command, refused)  # an error reply still answers it (and fails the command)


def test_a_reply_for_another_ser_di_or_function_answers_nothing_we_sent() -> None:
    driver = create({})
    request = driver.encode(CLOSE)
    ser = decode_frame(request).ser
    other_ser = reply_detail(driver, reply_to(request, ser=(ser + 1) & 0xFF))
    other_di = reply_detail(driver, reply_to(request, control=0x81, di=codec.DI_METERING))
    other_function = reply_detail(driver, reply_to(request, control=0x81))
    for detail in (other_ser, other_di, other_function):
        assert not driver.reply_matches(CLOSE, detail), detail
    assert not driver.reply_matches(READ_BACK, other_di)  # same DI as the read-back, but the command's SER
    assert not driver.reply_matches(CLOSE, {"di": "A017", "ser": ser})  # no control code: cannot tell


def test_a_vendors_private_valve_control_code_is_matched() -> None:
    driver = create({"workarounds": {"valve_control": "0x2A"}})
    request = driver.encode(CLOSE)
    assert decode_frame(request).control == 0x2A
    assert driver.reply_matches(CLOSE, reply_detail(driver, reply_to(request)))
    assert not driver.reply_matches(CLOSE, reply_detail(driver, reply_to(request, control=0x84)))


@pytest.mark.parametrize(
    ("setting", "uplink", "expected"),
    [
        ({}, "hex", "hex"),
        ({}, "binary", "binary"),
        ({}, None, "binary"),  # nothing heard from the meter yet
        ({"downlink_encoding": "hex"}, "binary", "hex"),
        ({"downlink_encoding": "hex"}, None, "hex"),
        ({"downlink_encoding": "binary"}, "hex", "binary"),
        ({"downlink_encoding": "auto"}, "hex", "hex"),
    ],
)
def test_downlink_encoding_per_route_or_as_the_uplinks(
    setting: dict[str, str], uplink: str | None, expected: str
) -> None:
    driver = create(setting)
    frame = driver.encode(CLOSE)
    sent = driver.downlink(frame, uplink)
    assert sent == (frame.hex().upper().encode() if expected == "hex" else frame)


def test_uplink_encoding_and_acks_to_pushes() -> None:
    push = encode_frame(Frame(0x30, ADDRESS, 0x04, 0x901F, 9, METERING), preamble=2)
    as_text = push.hex(" ").upper().encode()
    auto, binary = create({}), create({"downlink_encoding": "binary"})
    assert (auto.uplink_encoding(as_text), auto.uplink_encoding(push)) == ("hex", "binary")
    ack = codec.encode_ack(decode_frame(push), codec.Workarounds())
    assert auto.decode(Uplink(as_text, AT, "cjt188/D/up")).response == ack.hex().upper().encode()
    assert auto.decode(Uplink(push, AT, "cjt188/D/up")).response == ack
    assert binary.decode(Uplink(as_text, AT, "cjt188/D/up")).response == ack  # the route's setting wins


def test_a_wrong_downlink_encoding_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match="downlink_encoding"):
        create({"downlink_encoding": "base64"})


@pytest.mark.parametrize(("sequence", "wire"), [(1, 1), (255, 255), (256, 0), (257, 1), (511, 255), (512, 0)])
def test_the_purchase_sequence_wraps_to_one_byte_on_the_wire(sequence: int, wire: int) -> None:
    driver = create({})
    frame = decode_frame(driver.encode(Command(CommandKind.CREDIT, "M1", ADDRESS, "c1", Decimal("5.00"), sequence)))
    assert (frame.di, frame.payload[0], frame.payload[1:]) == (codec.DI_PURCHASE_WRITE, wire, bytes.fromhex("00050000"))
    assert driver.purchase_sequence_modulus == 256
    with pytest.raises(ValueError):
        codec.encode_purchase(ADDRESS, sequence + 256, Decimal(1), 1, codec.Workarounds())  # the codec: one byte


@pytest.mark.parametrize(
    ("sequence", "last", "newer"),
    [(1, 0, True), (0, 255, True), (5, 250, True), (255, 254, True), (7, 7, False), (6, 7, False), (200, 10, False)],
)
def test_the_meter_takes_a_sequence_that_is_newer_across_the_wrap(sequence: int, last: int, newer: bool) -> None:
    assert codec.purchase_sequence_is_newer(sequence, last) is newer
