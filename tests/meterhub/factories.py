"""Small helpers that create master data for tests."""

from typing import Any

import psycopg


def make_meter(conn: psycopg.Connection[Any], n: int = 1, driver_key: str = "native_json") -> dict[str, int]:
    """An area, community, usage type, customer, account and meter numbered n; returns their ids."""
    area = conn.execute(
        "INSERT INTO area (code, name) VALUES (%s, 'Test area') ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name "
        "RETURNING id",
        [f"A{n}"],
    ).fetchone()
    assert area is not None
    community = conn.execute(
        "INSERT INTO community (area_id, code, name) VALUES (%s, %s, 'Test estate') RETURNING id", [area[0], f"C{n}"]
    ).fetchone()
    usage = conn.execute(
        "INSERT INTO usage_type (code, name) VALUES ('RES', '居民') ON CONFLICT (code) DO UPDATE SET name = "
        "EXCLUDED.name RETURNING id"
    ).fetchone()
    customer = conn.execute(
        "INSERT INTO customer (customer_no, name, phone) VALUES (%s, '张三', '13800000000') RETURNING id", [f"CU{n}"]
    ).fetchone()
    assert community and usage and customer
    account = conn.execute(
        "INSERT INTO account (account_no, customer_id, community_id, usage_type_id) VALUES (%s, %s, %s, %s) "
        "RETURNING id",
        [f"AC{n}", customer[0], community[0], usage[0]],
    ).fetchone()
    assert account is not None
    meter = conn.execute(
        "INSERT INTO meter (meter_no, driver_key, account_id, usage_type_id, status) "
        "VALUES (%s, %s, %s, %s, 'installed') RETURNING id",
        [f"M{n:08d}", driver_key, account[0], usage[0]],
    ).fetchone()
    assert meter is not None
    return {"customer": customer[0], "account": account[0], "meter": meter[0], "community": community[0]}
