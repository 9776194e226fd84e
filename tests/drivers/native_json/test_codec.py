import contextlib
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import Command, CommandKind, DecodeError, UnsupportedCommand, Uplink
from drivers.native_json import codec
from drivers.native_json.driver import create

AT = datetime(2026, 11, 27, 10, 20, tzinfo=UTC)


def test_topic_helpers_agree() -> None:
    assert codec.uplink_topic("GM1") == "meters/GM1/up"
    assert codec.downlink_topic("GM1") == "meters/GM1/down"
    assert codec.reply_topic("GM1") == "meters/GM1/reply"
    assert codec.meter_from_topic("meters/GM1/up") == "GM1"
    with pytest.raises(DecodeError, match="bad_topic"):
        codec.meter_from_topic("other/GM1/up")


def test_driver_claims_uplink_and_reply_topics_under_its_prefix() -> None:
    driver = create({"topic_prefix": "site-a/meters"})
    assert list(driver.topics) == ["site-a/meters/+/up", "site-a/meters/+/reply"]
    decoded = driver.decode(Uplink(b'{"volume_m3": 1}', AT, "site-a/meters/GM1/up"))
    assert decoded.readings[0].meter_no == "GM1"


def test_credit_downlink_carries_exact_amount_text() -> None:
    command = Command(CommandKind.CREDIT, "GM1", correlation_id="c-9", amount=Decimal("50.10"), sequence=12)
    assert json.loads(codec.encode(command)) == {"id": "c-9", "cmd": "credit", "amount": "50.10", "seq": 12}


def test_valve_close_downlink() -> None:
    payload = codec.encode(Command(CommandKind.VALVE_CLOSE, "GM1", correlation_id="c-1"))
    assert json.loads(payload) == {"id": "c-1", "cmd": "valve_close"}


@pytest.mark.parametrize(
    "command",
    [
        Command(CommandKind.CREDIT, "GM1", correlation_id="c", amount=Decimal(5)),  # no sequence
        Command(CommandKind.CREDIT, "GM1", correlation_id="c", amount=Decimal(-5), sequence=1),
        Command(CommandKind.VALVE_OPEN, "GM1"),  # no correlation id: the reply could not be matched
    ],
)
def test_bad_commands_are_refused(command: Command) -> None:
    with pytest.raises(ValueError):
        codec.encode(command)


def test_unsupported_command() -> None:
    with pytest.raises(UnsupportedCommand):
        codec.encode(Command(CommandKind.CREDIT_READ, "GM1", correlation_id="c"))


def test_unknown_setting_is_named() -> None:
    with pytest.raises(ValueError, match="battery_low"):
        create({"battery_low": 3})


commands = st.builds(
    Command,
    kind=st.sampled_from(sorted(codec.COMMANDS)),
    meter_no=st.just("GM1"),
    correlation_id=st.text(min_size=1, max_size=40),
    amount=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000000"), places=2),
    sequence=st.integers(min_value=0, max_value=2**31),
)


@given(commands)
def test_downlink_round_trip(command: Command) -> None:
    assert codec.decode_command(codec.encode(command), "GM1") == command


@given(st.binary(max_size=300), st.sampled_from(["meters/GM1/up", "meters/GM1/reply", "meters/GM1/down", "x"]))
def test_arbitrary_bytes_raise_only_decode_error(payload: bytes, topic: str) -> None:
    with contextlib.suppress(DecodeError):
        create({}).decode(Uplink(payload, AT, topic))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(["meter", "ts", "volume_m3", "valve", "battery_v", "rssi", "readings", "events", "id", "ok"])


@given(st.dictionaries(keys, json_values | st.lists(st.dictionaries(keys, json_values, max_size=4), max_size=3)))
def test_arbitrary_json_objects_raise_only_decode_error(body: dict[str, object]) -> None:
    for kind in ("up", "reply"):
        with contextlib.suppress(DecodeError):
            create({}).decode(Uplink(json.dumps(body).encode(), AT, f"meters/GM1/{kind}"))
