"""Master data, tariffs and approved readings for the store-backed billing tests."""

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import psycopg

from meterhub.store import Store

D = Decimal
BEIJING_TIERS = [{"upper_m3": "350", "price": "2.61"}, {"upper_m3": "500", "price": "3.03"}, {"price": "3.76"}]


def usage_type(conn: psycopg.Connection[Any], code: str, tariff: dict[str, Any] | None = None) -> int:
    """A usage type and, when given, its tariff definition."""
    row = conn.execute(
        "INSERT INTO usage_type (code, name) VALUES (%s, %s) ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name "
        "RETURNING id",
        [code, code],
    ).fetchone()
    assert row is not None
    if tariff is not None:
        conn.execute(
            "INSERT INTO tariff (usage_type_id, definition) VALUES (%s, %s) "
            "ON CONFLICT (usage_type_id) DO UPDATE SET definition = EXCLUDED.definition",
            [row[0], json.dumps(tariff)],
        )
    return int(row[0])


def tiered(cycle: str = "calendar_year", tiers: list[dict[str, str]] | None = None, **period: Any) -> dict[str, Any]:
    return {"cycle": cycle, "periods": [{"effective_from": "2020-01-01", "tiers": tiers or BEIJING_TIERS, **period}]}


def flat(price: str, **period: Any) -> dict[str, Any]:
    return {"periods": [{"effective_from": "2020-01-01", "price": price, **period}]}


def account(
    conn: psycopg.Connection[Any],
    no: str,
    usage: str = "RES",
    household_size: int = 3,
    area: str = "A1",
    community: str = "C1",
    card_no: str | None = None,
    customer_no: str | None = None,
) -> tuple[int, int]:
    """An account with one installed meter (in `community` of `area`); returns (account_id, meter_id)."""
    row = conn.execute(
        "INSERT INTO area (code, name) VALUES (%s, %s) ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name "
        "RETURNING id",
        [area, area],
    ).fetchone()
    assert row is not None
    community_row = conn.execute(
        "INSERT INTO community (area_id, code, name) VALUES (%s, %s, %s) "
        "ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name RETURNING id",
        [row[0], community, community],
    ).fetchone()
    usage_row = conn.execute("SELECT id FROM usage_type WHERE code = %s", [usage]).fetchone()
    assert community_row is not None and usage_row is not None
    customer = conn.execute(
        "INSERT INTO customer (customer_no, name, household_size) VALUES (%s, %s, %s) "
        "ON CONFLICT (customer_no) DO UPDATE SET name = EXCLUDED.name RETURNING id",
        [customer_no or f"CU-{no}", f"Customer {no}", household_size],
    ).fetchone()
    assert customer is not None
    account_row = conn.execute(
        "INSERT INTO account (account_no, customer_id, community_id, usage_type_id, card_no) "
        "VALUES (%s, %s, %s, %s, %s) RETURNING id",
        [no, customer[0], community_row[0], usage_row[0], card_no],
    ).fetchone()
    assert account_row is not None
    meter = conn.execute(
        "INSERT INTO meter (meter_no, driver_key, account_id, status) VALUES (%s, 'native_json', %s, 'installed') "
        "RETURNING id",
        [f"M-{no}", account_row[0]],
    ).fetchone()
    assert meter is not None
    return int(account_row[0]), int(meter[0])


def approve(
    conn: psycopg.Connection[Any],
    account_id: int,
    meter_id: int,
    period: str,
    consumption: str,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> None:
    """An approved billing reading of `consumption` m3 for the month `period` (or the given days)."""
    first = dt.date.fromisoformat(f"{period}-01")
    start = start or first
    end = end or dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)
    conn.execute(
        "INSERT INTO billing_reading (account_id, meter_id, period, period_start, period_end, end_value, end_ts, "
        "consumption_m3, kind, approved_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'automatic', 'reviewer')",
        [
            account_id,
            meter_id,
            period,
            start,
            end,
            D(consumption),
            dt.datetime.combine(end, dt.time(), dt.UTC),
            D(consumption),
        ],
    )


def bill_of(store: Store, account_id: int, period: str) -> tuple[Decimal, list[tuple[Any, ...]]]:
    """(amount, [(usage type code, kind, tier, volume, unit price, amount)]) of one bill."""
    with store.connection() as conn:
        amount = conn.execute(
            "SELECT amount FROM bill WHERE account_id = %s AND period = %s", [account_id, period]
        ).fetchone()
        assert amount is not None, f"no bill for account {account_id} in {period}"
        lines = conn.execute(
            "SELECT u.code, l.line_kind, l.tier_no, l.volume_m3, l.unit_price, l.amount FROM bill_line l "
            "JOIN bill b ON b.id = l.bill_id JOIN usage_type u ON u.id = l.usage_type_id "
            "WHERE b.account_id = %s AND b.period = %s ORDER BY l.line_no",
            [account_id, period],
        ).fetchall()
    return amount[0], [tuple(line) for line in lines]


def count(store: Store, table: str) -> int:
    with store.connection() as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])
