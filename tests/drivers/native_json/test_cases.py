from pathlib import Path

import pytest

from drivers.base import DecodeError
from drivers.native_json.driver import create
from tests.drivers.casefiles import Case, cases, check


@pytest.mark.parametrize("case", cases(Path(__file__).parent), ids=lambda case: case.name)
def test_recorded_case(case: Case) -> None:
    driver = create(case.settings)
    if case.error:
        with pytest.raises(DecodeError) as raised:
            driver.decode(case.uplink)
        assert raised.value.reason == case.error
    else:
        check(driver.decode(case.uplink), case.expected)
