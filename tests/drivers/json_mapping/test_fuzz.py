import contextlib
import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from drivers.base import DecodeError, Uplink
from drivers.json_mapping.driver import create

AT = datetime(2026, 11, 27, 10, 20, tzinfo=UTC)
SAMPLES = Path(__file__).parents[3] / "drivers" / "json_mapping" / "samples"
DRIVERS = {
    "v1/gateway/telemetry": create(tomllib.loads((SAMPLES / "thingsboard.toml").read_text())),
    "/sys/p/GM1/thing/event/property/post": create(tomllib.loads((SAMPLES / "alibaba.toml").read_text())),
    "$oc/devices/GM1/sys/properties/report": create(tomllib.loads((SAMPLES / "huawei.toml").read_text())),
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "ts",
                    "values",
                    "volume_l",
                    "params",
                    "CumulativeFlow",
                    "value",
                    "time",
                    "services",
                    "properties",
                    "totalVolume",
                    "event_time",
                    "valveStatus",
                    "GM1",
                ]
            )
            | st.text(max_size=5),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@given(st.binary(max_size=300), st.sampled_from(sorted(DRIVERS)))
def test_arbitrary_bytes_raise_only_decode_error(payload: bytes, topic: str) -> None:
    with contextlib.suppress(DecodeError):
        DRIVERS[topic].decode(Uplink(payload, AT, topic))


@given(json_values, st.sampled_from(sorted(DRIVERS)))
def test_arbitrary_json_raises_only_decode_error(body: object, topic: str) -> None:
    with contextlib.suppress(DecodeError):
        DRIVERS[topic].decode(Uplink(json.dumps(body).encode(), AT, topic))
