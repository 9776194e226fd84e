"""Command rules, permissions, approvals, rate limits and the audit chain, against a real database."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from meterhub import commands
from meterhub.command_rules import Rule, RuleContext, evaluate
from meterhub.store import Store
from tests.meterhub.factories import make_meter

SH = ZoneInfo("Asia/Shanghai")
WEDNESDAY_10 = datetime(2026, 11, 25, 10, 0, tzinfo=SH)  # an ordinary working morning
SATURDAY_10 = datetime(2026, 11, 28, 10, 0, tzinfo=SH)


def add_users(conn: psycopg.Connection[Any]) -> None:
    """Staff with command roles, and the shipped permissions and rules (tests start from empty tables)."""
    conn.execute("SELECT meterhub_command_defaults()")
    for name, role in (("alice", "engineer"), ("bob", "supervisor"), ("carol", "supervisor"), ("dave", "clerk")):
        conn.execute("INSERT INTO staff_user (username, display_name, role) VALUES (%s, %s, %s)", [name, name, role])


@pytest.fixture
def meter(store: Store) -> dict[str, int]:
    with store.transaction(actor="setup") as conn:
        ids = make_meter(conn, 1)
        add_users(conn)
        conn.execute(
            "INSERT INTO command_notice (account_id, served_at, served_by) VALUES (%s, %s, 'alice')",
            [ids["account"], WEDNESDAY_10 - timedelta(days=3)],
        )
    return ids


# -- the rules as a table ---------------------------------------------------------------------------
RULES = [
    Rule("holiday", {"kinds": ["valve_close"]}),
    Rule("weekend", {"kinds": ["valve_close"]}),
    Rule("disconnect_hours", {"kinds": ["valve_close"], "from": "08:00", "until": "16:00"}),
    Rule("notice_period", {"kinds": ["valve_close"], "hours": 48, "purposes": ["arrears"]}),
    Rule("protected_customer", {"kinds": ["valve_close"]}),
    Rule("disputed_bill", {"kinds": ["valve_close"], "purposes": ["arrears"]}),
]
NOTICED = WEDNESDAY_10 - timedelta(days=3)


@pytest.mark.parametrize(
    ("case", "context", "expected"),
    [
        ("allowed", RuleContext("valve_close", "arrears", False, WEDNESDAY_10, notice_served_at=NOTICED), []),
        (
            "holiday",
            RuleContext("valve_close", "arrears", False, WEDNESDAY_10, "holiday", notice_served_at=NOTICED),
            ["holiday"],
        ),
        ("weekend", RuleContext("valve_close", "other", False, SATURDAY_10), ["weekend"]),
        ("working weekend", RuleContext("valve_close", "other", False, SATURDAY_10, "workday"), []),
        ("evening", RuleContext("valve_close", "other", False, WEDNESDAY_10.replace(hour=17)), ["disconnect_hours"]),
        (
            "early",
            RuleContext("valve_close", "other", False, WEDNESDAY_10.replace(hour=7, minute=59)),
            ["disconnect_hours"],
        ),
        ("no notice", RuleContext("valve_close", "arrears", False, WEDNESDAY_10), ["notice_period"]),
        (
            "short notice",
            RuleContext(
                "valve_close", "arrears", False, WEDNESDAY_10, notice_served_at=WEDNESDAY_10 - timedelta(hours=47)
            ),
            ["notice_period"],
        ),
        ("notice not needed", RuleContext("valve_close", "leak", False, WEDNESDAY_10), []),
        (
            "protected",
            RuleContext("valve_close", "other", False, WEDNESDAY_10, customer_protected=True),
            ["protected_customer"],
        ),
        (
            "disputed",
            RuleContext("valve_close", "arrears", False, WEDNESDAY_10, bill_disputed=True, notice_served_at=NOTICED),
            ["disputed_bill"],
        ),
        ("open at night", RuleContext("valve_open", "other", False, SATURDAY_10.replace(hour=23)), []),
        (
            "emergency",
            RuleContext("valve_close", "arrears", True, SATURDAY_10.replace(hour=23), "holiday", True, True),
            [],
        ),
    ],
)
def test_rule_table(case: str, context: RuleContext, expected: list[str]) -> None:
    assert evaluate(RULES, context) == expected, case


# -- each rule refuses through the service, with its reason code -------------------------------------
def _protect(conn: psycopg.Connection[Any], ids: dict[str, int]) -> None:
    conn.execute("UPDATE customer SET protected = true WHERE id = %s", [ids["customer"]])


def _dispute(conn: psycopg.Connection[Any], ids: dict[str, int]) -> None:
    conn.execute("UPDATE account SET bill_disputed = true WHERE id = %s", [ids["account"]])


def _holiday(conn: psycopg.Connection[Any], ids: dict[str, int]) -> None:
    conn.execute("INSERT INTO command_calendar (day, kind, note) VALUES ('2026-11-25', 'holiday', 'test')")


def _no_notice(conn: psycopg.Connection[Any], ids: dict[str, int]) -> None:
    conn.execute("DELETE FROM command_notice")


def _uninstalled(conn: psycopg.Connection[Any], ids: dict[str, int]) -> None:
    conn.execute("UPDATE meter SET status = 'suspended' WHERE id = %s", [ids["meter"]])


@pytest.mark.parametrize(
    ("setup", "when", "kind", "reason_code"),
    [
        (None, WEDNESDAY_10, "valve_close", None),
        (_holiday, WEDNESDAY_10, "valve_close", "holiday"),
        (None, SATURDAY_10, "valve_close", "weekend"),
        (None, WEDNESDAY_10.replace(hour=20), "valve_close", "disconnect_hours"),
        (_no_notice, WEDNESDAY_10, "valve_close", "notice_period"),
        (_protect, WEDNESDAY_10, "valve_close", "protected_customer"),
        (_dispute, WEDNESDAY_10, "valve_close", "disputed_bill"),
        (_uninstalled, WEDNESDAY_10, "valve_close", "meter_not_installed"),
        (None, WEDNESDAY_10, "credit", "not_prepaid_meter"),
        (_protect, SATURDAY_10.replace(hour=22), "valve_open", None),
    ],
)
def test_rule_refuses_with_its_reason_code(
    store: Store, meter: dict[str, int], setup: Any, when: datetime, kind: str, reason_code: str | None
) -> None:
    if setup is not None:
        with store.transaction(actor="setup") as conn:
            setup(conn, meter)
    amount = Decimal("10.00") if kind == "credit" else None
    command = commands.request_command(
        store, "M00000001", kind, user="alice", reason="arrears 3 months", purpose="arrears", amount=amount, now=when
    )
    assert command.reason_code == reason_code
    assert command.state == ("refused" if reason_code else "queued")


def test_emergency_close_skips_rules_but_needs_the_permission(store: Store, meter: dict[str, int]) -> None:
    with store.transaction(actor="setup") as conn:
        _protect(conn, meter)
        _holiday(conn, meter)
    with pytest.raises(commands.PermissionDenied) as denied:
        commands.emergency_close(store, "M00000001", user="alice", reason="gas smell reported")
    assert denied.value.code == "not_permitted"
    command = commands.emergency_close(store, "M00000001", user="bob", reason="gas smell reported", ip="10.1.2.3")
    assert (command.state, command.emergency) == ("queued", True)


def test_requester_cannot_approve_and_a_second_person_can(store: Store, meter: dict[str, int]) -> None:
    with store.transaction(actor="setup") as conn:
        for n in range(2, 5):
            make_meter(conn, n)
    meters = [f"M{n:08d}" for n in range(1, 5)]
    settings = store.settings.commands.model_copy(update={"bulk_approval_size": 3})
    with store.transaction(actor="setup") as conn:
        conn.execute("UPDATE command_rule SET enabled = false")
    bulk = commands.request_bulk(store, meters, "valve_close", user="bob", reason="estate works", settings=settings)
    assert bulk.state == "awaiting_approval"
    assert {c.state for c in bulk.commands} == {"awaiting_approval"}
    with pytest.raises(commands.PermissionDenied) as own:
        commands.approve_bulk(store, bulk.id, user="bob")
    assert own.value.code == "requester_cannot_approve"
    with pytest.raises(commands.PermissionDenied):
        commands.approve_bulk(store, bulk.id, user="alice")  # an engineer may not approve
    approved = commands.approve_bulk(store, bulk.id, user="carol")
    assert approved.approved_by == "carol"
    assert {(c.state, c.approved_by) for c in approved.commands} == {("queued", "carol")}
    with store.connection() as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE command_bulk SET approved_by = requested_by")  # the database says so too


def test_rate_limit_per_user(store: Store, meter: dict[str, int]) -> None:
    with store.transaction(actor="setup") as conn:
        conn.execute("INSERT INTO command_rate_limit VALUES ('alice', 2, 3600)")
        conn.execute("UPDATE command_rule SET enabled = false")
    states = [
        commands.request_command(store, "M00000001", "valve_close", user="alice", reason=f"try {i}").reason_code
        for i in range(3)
    ]
    assert states == [None, None, "rate_limited"]
    assert commands.request_command(store, "M00000001", "valve_close", user="bob", reason="mine").state == "queued"


def test_same_idempotency_key_makes_one_command(store: Store, meter: dict[str, int]) -> None:
    first = commands.request_command(
        store, "M00000001", "valve_open", user="alice", reason="paid", idempotency_key="k-1", now=WEDNESDAY_10
    )
    again = commands.request_command(
        store, "M00000001", "valve_open", user="alice", reason="paid", idempotency_key="k-1", now=WEDNESDAY_10
    )
    assert first.id == again.id
    assert len(commands.list_commands(store, "M00000001")) == 1


def test_supersede_an_open_cancels_a_queued_close(store: Store, meter: dict[str, int]) -> None:
    close = commands.request_command(store, "M00000001", "valve_close", user="alice", reason="x", now=WEDNESDAY_10)
    reopen = commands.request_command(store, "M00000001", "valve_open", user="alice", reason="paid", now=WEDNESDAY_10)
    assert commands.get_command(store, close.id).state == "superseded"
    assert commands.get_command(store, reopen.id).state == "queued"


def test_every_command_has_an_audit_entry_naming_the_person(store: Store, meter: dict[str, int]) -> None:
    commands.request_command(store, "M00000001", "valve_close", user="alice", reason="arrears", now=WEDNESDAY_10)
    commands.request_command(store, "M00000001", "valve_close", user="alice", reason="x", now=SATURDAY_10)  # refused
    with store.connection() as conn:
        rows = conn.execute(
            """SELECT c.state, a.actor, a.action, a.object_id = c.id::text FROM meter_command c
                 JOIN audit_log a ON a.id = c.audit_id ORDER BY c.id"""
        ).fetchall()
    assert rows == [("queued", "alice", "command.request", True), ("refused", "alice", "command.request", True)]


def test_tampering_with_the_audit_log_is_detected(store: Store, meter: dict[str, int]) -> None:
    for i in range(3):
        commands.request_command(store, "M00000001", "valve_open", user="alice", reason=f"r{i}", now=WEDNESDAY_10)
    with store.connection() as conn:
        assert commands.verify_audit(conn) == []
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
    with store.admin_connection() as conn:  # someone with the keys bypasses the append-only trigger
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    with store.connection() as conn:
        assert commands.verify_audit(conn) == [(2, 2, "hash_mismatch")]
