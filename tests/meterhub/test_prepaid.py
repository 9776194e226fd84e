"""Account-based prepayment: warn, close only after the warning and inside the rules, re-arm after a top-up."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from meterhub import commands
from meterhub.prepaid import account_balance, check_accounts
from meterhub.store import Store
from tests.meterhub.factories import make_meter
from tests.meterhub.test_command_rules import SATURDAY_10, WEDNESDAY_10, add_users


def pay(store: Store, account_id: int, amount: str) -> int:
    with store.transaction(actor="cashier") as conn:
        payment = conn.execute(
            "INSERT INTO payment (account_id, channel, amount, paid_on, actor) "
            "VALUES (%s, 'counter', %s, current_date, 'cashier') RETURNING id",
            [account_id, amount],
        ).fetchone()
        assert payment is not None
        entry = conn.execute(
            "INSERT INTO ledger_entry (account_id, entry_type, amount, booked_on, payment_id, actor) "
            "VALUES (%s, 'prepayment', %s, current_date, %s, 'cashier') RETURNING id",
            [account_id, -Decimal(amount), payment[0]],
        ).fetchone()
        assert entry is not None
        return int(entry[0])


def refund(store: Store, account_id: int, entry_id: int, amount: str) -> None:
    with store.transaction(actor="cashier") as conn:
        conn.execute(
            "INSERT INTO ledger_entry (account_id, entry_type, amount, booked_on, reverses_id, actor) "
            "VALUES (%s, 'reversal', %s, current_date, %s, 'cashier')",
            [account_id, amount, entry_id],
        )


def test_warn_then_close_inside_the_rules_then_arm_after_top_up(store: Store) -> None:
    with store.transaction(actor="setup") as conn:
        ids = make_meter(conn, 1)
        add_users(conn)
        conn.execute("UPDATE account SET billing_mode = 'prepaid_account' WHERE id = %s", [ids["account"]])
        conn.execute("UPDATE meter SET valve_state = 'open' WHERE id = %s", [ids["meter"]])
    entry = pay(store, ids["account"], "5.00")
    with store.connection() as conn:
        assert account_balance(conn, ids["account"]) == Decimal("5.00")
    assert check_accounts(store, now=WEDNESDAY_10)["warned"] == 1  # low credit: warning only
    refund(store, ids["account"], entry, "5.00")  # credit gone
    assert check_accounts(store, now=WEDNESDAY_10 + timedelta(hours=1))["closed"] == 0  # warned too recently
    assert check_accounts(store, now=SATURDAY_10)["closed"] == 0  # weekend: the calendar says no
    thursday = WEDNESDAY_10 + timedelta(days=1, hours=1)
    assert check_accounts(store, now=thursday)["closed"] == 1
    [close] = commands.list_commands(store, "M00000001")
    assert (close.kind, close.purpose, close.requested_by, close.state) == (
        "valve_close",
        "prepaid_exhausted",
        "system:prepaid",
        "queued",
    )
    assert check_accounts(store, now=thursday)["closed"] == 0  # one close, not one per sweep
    with store.transaction(actor="collector") as conn:  # the meter closed
        conn.execute("UPDATE meter_command SET state = 'confirmed', finished_at = now() WHERE id = %s", [close.id])
        conn.execute("UPDATE meter SET valve_state = 'closed' WHERE id = %s", [ids["meter"]])
    pay(store, ids["account"], "100.00")
    assert check_accounts(store, now=thursday, account_id=ids["account"])["armed"] == 1
    reopen = commands.list_commands(store, "M00000001")[0]
    assert (reopen.kind, reopen.state, reopen.requested_by) == ("valve_open", "queued", "system:prepaid")
