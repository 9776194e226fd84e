"""Validating a period from the store: consumption through rollover and replacement, flags, queue rows."""

from __future__ import annotations

from decimal import Decimal

from billing.review_run import validate_period
from meterhub.store import Store
from tests.billing.review_helpers import NOW, PERIOD, build_utility


def queue(store: Store) -> dict[str, dict[str, object]]:
    with store.connection() as conn:
        cur = conn.execute(
            """SELECT m.meter_no, r.* FROM reading_review r JOIN meter m ON m.id = r.meter_id
                WHERE r.period = %s""",
            [PERIOD],
        )
        names = [c.name for c in cur.description or []]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def test_period_with_rollover_and_replacement_gives_the_right_consumption(store: Store) -> None:
    ids = build_utility(store)
    result = validate_period(store, PERIOD, actor="clerk", now=NOW)
    rows = queue(store)
    assert set(rows) == {"M00000001", "M00000011", "M00000002", "M00000003", "M00000004"}
    assert rows["M00000001"]["consumption_m3"] == Decimal("14.500")
    assert rows["M00000001"]["end_value"] == Decimal("5.500")
    assert rows["M00000001"]["rollover_count"] == 1
    assert rows["M00000011"]["consumption_m3"] == Decimal("33.000")
    assert rows["M00000011"]["start_value"] == Decimal("0.000")
    assert {rows[m]["account_id"] for m in ("M00000001", "M00000011")} == {ids["account1"]}
    assert rows["M00000002"]["consumption_m3"] == Decimal("15.500")
    assert rows["M00000002"]["flag_count"] == 0
    assert rows["M00000003"]["consumption_m3"] == Decimal("45.500")
    assert "spike" in rows["M00000003"]["flag_rules"]
    assert rows["M00000004"]["estimation_needed"] is True
    assert rows["M00000004"]["read_in_period"] is False
    assert rows["M00000004"]["estimate_m3"] == Decimal("31.000")
    assert rows["M00000004"]["estimate_method"] == "average_daily"  # nothing after the gap to interpolate to
    assert result.queue_rows == 5 and result.pending == 5
    assert result.flags_by_rule.get("rollover") == 1
    assert result.flags_by_rule.get("spike", 0) >= 1
