"""How the dispatcher reads a meter's evidence about a top-up: our purchase sequence keeps growing, the
meter's may be one byte wide (CJ/T 188) and wrap."""

from __future__ import annotations

from typing import Any

import pytest

from collector.commands import _executed, sequence_reached


@pytest.mark.parametrize(
    ("reported", "sent", "modulus", "reached"),
    [
        (3, 3, None, True),
        (4, 3, None, True),
        (2, 3, None, False),
        (300, 300, None, True),  # a meter that keeps the whole number (native JSON)
        (255, 255, 256, True),
        (0, 256, 256, True),  # 256 went out as 0 and the meter took it
        (255, 256, 256, False),  # the meter is still at the one before
        (1, 257, 256, True),
        (0, 257, 256, False),
        (44, 300, 256, True),  # 300 = 256 + 44
        (43, 300, 256, False),
        (199, 200, 256, False),
        (72, 200, 256, False),  # 128 behind, the meter would take 200 as newer: not reached
        (71, 200, 256, True),  # 127 ahead: the meter would ignore 200 if it were sent again
    ],
)
def test_a_wrapped_sequence_is_compared_on_the_wire_modulus(
    reported: int, sent: int, modulus: int | None, reached: bool
) -> None:
    assert sequence_reached(reported, sent, modulus) is reached


def credit(purchase_seq: int, reply: dict[str, Any] | None) -> dict[str, Any]:
    return {"kind": "credit", "purchase_seq": purchase_seq, "reply": reply}


def test_a_top_up_is_executed_when_the_meter_reports_its_wrapped_sequence() -> None:
    assert _executed(credit(256, {"purchase_sequence": 0}), 256) is True
    assert _executed(credit(256, {"purchase_sequence": 255}), 256) is False
    assert _executed(credit(256, {"seq": 256}), None) is True  # native JSON echoes the whole sequence
    assert _executed(credit(256, None), 256) is None  # no evidence yet
