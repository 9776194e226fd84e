"""Decisions on the review queue: accept, correct (a new version), estimate; bulk accept of clean rows."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from billing.review import (
    ReviewError,
    accept,
    accept_unflagged,
    correct,
    estimate_readings,
    review_log,
    review_queue,
    review_row,
)
from billing.review_run import validate_period
from meterhub.store import Store
from tests.billing.review_helpers import NOW, PERIOD, approved, build_utility, review_ids


@pytest.fixture
def validated(store: Store) -> dict[str, int]:
    build_utility(store)
    validate_period(store, PERIOD, actor="clerk", now=NOW)
    return review_ids(store)


def test_bulk_accept_takes_only_unflagged_rows_and_the_replacement_sums_up(
    store: Store, validated: dict[str, int]
) -> None:
    assert accept_unflagged(store, PERIOD, actor="clerk") == 3
    assert approved(store) == {
        "M00000001": (Decimal("14.500"), "automatic", 1),  # the rollover flag is informational
        "M00000011": (Decimal("33.000"), "automatic", 1),
        "M00000002": (Decimal("15.500"), "automatic", 1),
    }
    with store.connection() as conn:
        row = conn.execute(
            "SELECT sum(consumption_m3) FROM approved_consumption v JOIN meter m ON m.id = v.meter_id "
            "WHERE m.meter_no IN ('M00000001', 'M00000011')"
        ).fetchone()
    assert row == (Decimal("47.500"),)
    pending = {r.meter_no for r in review_queue(store, PERIOD, status="pending")}
    assert pending == {"M00000003", "M00000004"}  # the spike and the unread meter wait for a person
    assert accept_unflagged(store, PERIOD, actor="clerk") == 0  # nothing accepted twice
    assert review_row(store, validated["M00000002"]).decided_by == "clerk"


def test_accept_a_flagged_row_singly_with_its_log(store: Store, validated: dict[str, int]) -> None:
    spike = validated["M00000003"]
    billing_ids = accept(store, [spike], actor="li", reason="checked on site: new boiler")
    assert approved(store)["M00000003"] == (Decimal("45.500"), "automatic", 1)
    (entry,) = review_log(store, spike)
    assert entry["action"] == "accept" and entry["actor"] == "li" and entry["billing_reading_id"] == billing_ids[spike]
    assert entry["old_values"]["kind"] == "candidate"
    with pytest.raises(ReviewError, match="already accepted"):
        accept(store, [spike], actor="li")
    with pytest.raises(ReviewError, match="no candidate"):
        accept(store, [validated["M00000004"]], actor="li")


def test_correct_needs_a_reason_and_makes_a_new_version(store: Store, validated: dict[str, int]) -> None:
    spike = validated["M00000003"]
    with pytest.raises(ReviewError, match="reason"):
        correct(store, spike, actor="li", reason=" ", end_value=Decimal("231.000"))
    first = accept(store, [spike], actor="li")[spike]
    second = correct(store, spike, actor="wang", reason="register misread; photo 123", end_value=Decimal("231.000"))
    assert approved(store)["M00000003"] == (Decimal("15.500"), "corrected", 2)
    with store.connection() as conn:
        rows = conn.execute(
            "SELECT id, version, supersedes_id, consumption_m3, reason, approved_by FROM billing_reading "
            "WHERE meter_id = (SELECT meter_id FROM reading_review WHERE id = %s) ORDER BY version",
            [spike],
        ).fetchall()
        assert rows == [
            (first, 1, None, Decimal("45.500"), "", "li"),
            (second, 2, first, Decimal("15.500"), "register misread; photo 123", "wang"),
        ]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE billing_reading SET consumption_m3 = 0 WHERE id = %s", [first])
    log = review_log(store, spike)
    assert [e["action"] for e in log] == ["accept", "correct"]
    assert log[1]["old_values"]["consumption_m3"] == 45.5 and log[1]["new_values"]["consumption_m3"] == 15.5
    assert log[1]["reason"] == "register misread; photo 123" and log[1]["actor"] == "wang"
    assert review_row(store, spike).status == "corrected"


def test_correct_through_a_rollover(store: Store, validated: dict[str, int]) -> None:
    old = validated["M00000001"]
    correct(store, old, actor="li", reason="final reading re-checked", end_value=Decimal("6.000"))
    assert approved(store)["M00000001"] == (Decimal("15.000"), "corrected", 1)  # 9991.000 → 6.000 wraps
    with pytest.raises(ReviewError, match="not a rollover"):
        correct(store, old, actor="li", reason="typo", end_value=Decimal("5000.000"))


def test_estimate_the_unread_meter(store: Store, validated: dict[str, int]) -> None:
    unread = validated["M00000004"]
    estimate_readings(store, [unread], actor="li")
    with store.connection() as conn:
        row = conn.execute(
            "SELECT b.start_value, b.end_value, b.consumption_m3, b.kind, b.reason FROM approved_consumption v "
            "JOIN billing_reading b USING (id) WHERE v.meter_id = (SELECT meter_id FROM reading_review WHERE id = %s)",
            [unread],
        ).fetchone()
    assert row == (Decimal("319.000"), Decimal("350.000"), Decimal("31.000"), "estimated", "estimated (average_daily)")
    assert review_row(store, unread).status == "estimated"
    with pytest.raises(ReviewError, match="no estimate"):
        estimate_readings(store, [validated["M00000002"]], actor="li")  # clean rows carry no estimate
    estimate_readings(store, [unread], actor="li", consumption_m3=Decimal("20"), reason="customer away 11 days")
    assert approved(store)["M00000004"] == (Decimal("20.000"), "estimated", 2)


def test_revalidation_keeps_decisions(store: Store, validated: dict[str, int]) -> None:
    accept(store, [validated["M00000002"]], actor="li")
    result = validate_period(store, PERIOD, actor="clerk", now=NOW)
    assert result.pending == 4
    assert review_row(store, validated["M00000002"]).status == "accepted"
    assert {r.meter_no for r in review_queue(store, PERIOD, status="pending")} == {
        "M00000001",
        "M00000011",
        "M00000003",
        "M00000004",
    }
