"""A small billed utility for the ledger and payment tests."""

import datetime as dt
import json
from decimal import Decimal
from typing import Any

from billing.bill_run import run_bills
from billing.ledger import AccountPosition, position
from meterhub.store import Store
from tests.billing.store_helpers import account, approve, flat, usage_type

D = Decimal


def billed(
    store: Store,
    consumptions: dict[str, list[str]],
    rule: dict[str, Any] | None = None,
    community: dict[str, str] | None = None,
    cards: dict[str, str] | None = None,
) -> dict[str, int]:
    """Accounts (no -> consumption per month from 2024-01) on a flat 2.00 tariff, billed on the 1st of the
    next month and due 15 days later; returns account ids by number."""
    ids: dict[str, int] = {}
    months = max(len(v) for v in consumptions.values())
    with store.transaction() as conn:
        usage_type(conn, "RES", flat("2.00"))
        conn.execute("INSERT INTO staff_user (username, display_name, role) VALUES ('boss', 'Boss', 'supervisor')")
        conn.execute("INSERT INTO staff_user (username, display_name, role) VALUES ('clerk', 'Clerk', 'clerk')")
        conn.execute(  # the migration's grants; the test fixture empties every table
            "INSERT INTO role_permission VALUES "
            "('supervisor', 'billing.waive'), ('supervisor', 'billing.reverse') "
            "ON CONFLICT DO NOTHING"
        )
        if rule is not None:
            conn.execute(
                "INSERT INTO late_fee_rule (method, daily_rate, fixed_amount, steps, grace_days, cap_pct, cap_amount) "
                "VALUES (%(method)s, %(daily_rate)s, %(fixed_amount)s, %(steps)s, %(grace_days)s, %(cap_pct)s, "
                "%(cap_amount)s)",
                {
                    "daily_rate": None,
                    "fixed_amount": None,
                    "grace_days": 0,
                    "cap_pct": None,
                    "cap_amount": None,
                    **rule,
                    "steps": json.dumps(rule.get("steps", [])),
                },
            )
        for no, volumes in consumptions.items():
            place = (community or {}).get(no, "C1")
            acc, meter = account(conn, no, community=place, card_no=(cards or {}).get(no))
            ids[no] = acc
            for month, volume in enumerate(volumes, start=1):
                approve(conn, acc, meter, f"2024-{month:02d}", volume)
    for month in range(1, months + 1):
        run_bills(store, f"2024-{month:02d}", issued_on=dt.date(2024, month + 1, 1))
    return ids


def at(store: Store, account_id: int, day: str) -> AccountPosition:
    with store.connection() as conn:
        return position(conn, account_id, dt.date.fromisoformat(day))


def day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)
