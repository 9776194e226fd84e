import contextlib
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import Capability, Command, CommandKind, DecodeError, UnsupportedCommand, Uplink
from drivers.cjt188 import codec
from drivers.cjt188.driver import create, ser_for, unhex
from drivers.cjt188.frame import decode_frame
from drivers.cjt188.settings import Workarounds

ADDRESS = "00000012345678"
DEFAULT = Workarounds()
AT = datetime(2026, 11, 27, 10, 20, tzinfo=UTC)


def hexed(data: bytes) -> str:
    return data.hex(" ").upper()


def test_worked_examples() -> None:
    assert (
        hexed(codec.encode_read(ADDRESS, codec.DI_METERING, 1, DEFAULT))
        == "68 30 78 56 34 12 00 00 00 01 03 90 1F 01 60 16"
    )
    assert hexed(codec.encode_valve(ADDRESS, True, 2, DEFAULT)) == "68 30 78 56 34 12 00 00 00 04 04 A0 17 02 55 C2 16"
    assert hexed(codec.encode_valve(ADDRESS, False, 3, DEFAULT)) == "68 30 78 56 34 12 00 00 00 04 04 A0 17 03 99 07 16"


def test_read_address_is_broadcast() -> None:
    frame = decode_frame(codec.encode_read_address(1, DEFAULT))
    assert (frame.address, frame.control, frame.di) == ("AAAAAAAAAAAAAA", 0x03, 0x810A)


def test_purchase_carries_sequence_and_exact_amount() -> None:
    frame = decode_frame(codec.encode_purchase(ADDRESS, 12, Decimal("50.10"), 7, DEFAULT))
    assert (frame.control, frame.di, frame.ser) == (0x04, 0xA013, 7)
    assert frame.payload == bytes.fromhex("0C 10 50 00 00")
    with pytest.raises(ValueError):
        codec.encode_purchase(ADDRESS, 12, Decimal("50.001"), 7, DEFAULT)
    with pytest.raises(ValueError):
        codec.encode_purchase(ADDRESS, 256, Decimal(1), 7, DEFAULT)


def test_vendor_settings_change_the_wire() -> None:
    vendor = Workarounds.from_mapping(
        {"di_order": "little", "meter_type": "0x31", "valve_control": 0x2A, "valve_close_code": "0x88", "preamble": 2}
    )
    wire = codec.encode_valve(ADDRESS, False, 3, vendor)
    assert wire[:3] == bytes.fromhex("FE FE 68") and wire[3] == 0x31
    frame = decode_frame(wire, "little")
    assert (frame.control, frame.di, frame.payload) == (0x2A, 0xA017, b"\x88")
    assert wire[13:15] == bytes.fromhex("17 A0")


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"workarounds": {"di_order": "middle"}}, "workarounds.di_order"),
        ({"workarounds": {"valve_open_code": 300}}, "workarounds.valve_open_code"),
        ({"workarounds": {"push_dis": "901F"}}, "workarounds.push_dis"),
        ({"workarounds": {"clock_utc_offset": "Asia/Shanghai"}}, "workarounds.clock_utc_offset"),
        ({"workarounds": {"valve_codes": 1}}, "valve_codes"),
        ({"topics": "x"}, "topics"),
    ],
)
def test_setting_errors_name_the_key(settings: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        create(settings)


def test_driver_encodes_commands_with_a_stable_ser() -> None:
    driver = create({})
    assert Capability.CREDIT_READ in driver.capabilities and Capability.VALVE_ARM not in driver.capabilities
    close = decode_frame(driver.encode(Command(CommandKind.VALVE_CLOSE, "M1", ADDRESS, correlation_id="c-1")))
    assert (close.address, close.di, close.payload, close.ser) == (ADDRESS, 0xA017, b"\x99", ser_for("c-1"))
    credit = Command(CommandKind.CREDIT, ADDRESS, correlation_id="c-2", amount=Decimal(20), sequence=4)
    assert decode_frame(driver.encode(credit)).payload == bytes.fromhex("04 00 20 00 00")
    balance = decode_frame(driver.encode(Command(CommandKind.CREDIT_READ, ADDRESS, correlation_id="c-3")))
    assert (balance.control, balance.di) == (0x01, 0x8105)
    with pytest.raises(UnsupportedCommand):
        driver.encode(Command(CommandKind.VALVE_ARM, ADDRESS))
    with pytest.raises(ValueError):
        driver.encode(Command(CommandKind.CREDIT, ADDRESS, amount=Decimal(20)))


def test_hex_text_detection() -> None:
    assert unhex(b"68 30\r\n16") == (bytes.fromhex("683016"), True)
    assert unhex(b"\x68\x30") == (b"\x68\x30", False)
    assert unhex(b"683") == (b"683", False)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_decode_error(payload: bytes) -> None:
    driver = create({})
    for data in (payload, payload.hex().encode()):
        with contextlib.suppress(DecodeError):
            driver.decode(Uplink(data, AT, "cjt188/DTU1/up"))


@given(
    st.integers(0, 255), st.binary(min_size=0, max_size=40), st.sampled_from([0x901F, 0x8105, 0xD121, 0xA017, 0x810A])
)
def test_well_framed_meter_data_raises_only_decode_error(control: int, payload: bytes, di: int) -> None:
    from drivers.cjt188.frame import Frame, encode_frame

    wire = encode_frame(Frame(0x30, ADDRESS, control, di, 1, payload))
    with contextlib.suppress(DecodeError):
        create({}).decode(Uplink(wire, AT, None))
