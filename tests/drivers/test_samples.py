"""Every driver's commented sample.toml is a working configuration of a registered driver."""

import tomllib
from pathlib import Path

import pytest

from drivers import registry

DRIVERS = Path(__file__).parents[2] / "drivers"


@pytest.mark.parametrize("key", ["native_json", "json_mapping", "cjt188"])
def test_sample_config_creates_the_driver(key: str) -> None:
    sample = tomllib.loads((DRIVERS / key / "sample.toml").read_text())
    driver = registry.create(key, sample["drivers"][key])
    assert driver.key == key
    assert isinstance(driver, registry.Driver)
    assert driver.topics and all(" " not in topic for topic in driver.topics)
