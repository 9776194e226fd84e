from pathlib import Path

import pytest

from drivers.base import DecodeError
from drivers.cjt188.driver import create
from tests.drivers.casefiles import Case, cases, check

CASES = cases(Path(__file__).parent)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_recorded_case(case: Case) -> None:
    driver = create(case.settings)
    if case.error:
        with pytest.raises(DecodeError) as raised:
            driver.decode(case.uplink)
        assert raised.value.reason == case.error
    else:
        check(driver.decode(case.uplink), case.expected)
