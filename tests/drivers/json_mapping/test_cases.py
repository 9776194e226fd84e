import tomllib
from pathlib import Path

import pytest

from drivers.base import DecodeError
from drivers.json_mapping.driver import JsonMappingDriver, create
from tests.drivers.casefiles import Case, cases, check

SAMPLES = Path(__file__).parents[3] / "drivers" / "json_mapping" / "samples"


def sample(name: str) -> JsonMappingDriver:
    return create(tomllib.loads((SAMPLES / f"{name}.toml").read_text()))


@pytest.mark.parametrize("case", cases(Path(__file__).parent), ids=lambda case: case.name)
def test_recorded_case(case: Case) -> None:
    driver = sample(case.file("sample.txt").read_text().strip()) if case.has("sample.txt") else create(case.settings)
    if case.error:
        with pytest.raises(DecodeError) as raised:
            driver.decode(case.uplink)
        assert raised.value.reason == case.error
    else:
        check(driver.decode(case.uplink), case.expected)


@pytest.mark.parametrize(
    ("name", "topic"),
    [
        ("thingsboard", "v1/gateway/telemetry"),
        ("alibaba", "/sys/+/+/thing/event/property/post"),
        ("huawei", "$oc/devices/+/sys/properties/report"),
    ],
)
def test_samples_claim_their_platform_topic(name: str, topic: str) -> None:
    assert list(sample(name).topics) == [topic]
