"""Every change to a customer, account or meter is kept: who, when, old → new."""

import psycopg
import pytest

from meterhub.store import Store
from tests.meterhub.factories import make_meter


def history(store: Store, table: str, row_id: int) -> list[tuple[str, str, dict | None, dict | None]]:
    with store.connection() as conn:
        rows = conn.execute(
            "SELECT op, changed_by, old_values, new_values FROM change_history "
            "WHERE table_name = %s AND row_id = %s ORDER BY id",
            [table, row_id],
        ).fetchall()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_insert_update_delete_are_recorded_with_the_person(store: Store) -> None:
    with store.transaction(actor="cashier.wang") as conn:
        ids = make_meter(conn)
    with store.transaction(actor="clerk.li") as conn:
        conn.execute(
            "UPDATE customer SET name = '张三丰', phone = '13900000000', household_size = 3 WHERE id = %s",
            [ids["customer"]],
        )
    rows = history(store, "customer", ids["customer"])
    assert [r[0] for r in rows] == ["insert", "update"]
    assert rows[0][1] == "cashier.wang"
    assert rows[0][3]["name"] == "张三"  # type: ignore[index]
    op, who, old, new = rows[1]
    assert who == "clerk.li"
    # Only what changed, old → new (household_size was set to its current value: not a change).
    assert old == {"name": "张三", "phone": "13800000000"}
    assert new == {"name": "张三丰", "phone": "13900000000"}

    with store.transaction(actor="admin") as conn:
        conn.execute("DELETE FROM meter WHERE id = %s", [ids["meter"]])
    op, who, old, new = history(store, "meter", ids["meter"])[-1]
    assert (op, who, new) == ("delete", "admin", None)
    assert old["meter_no"] == "M00000001"  # type: ignore[index]


def test_account_and_meter_changes_are_recorded(store: Store) -> None:
    with store.transaction(actor="setup") as conn:
        ids = make_meter(conn)
    with store.transaction(actor="engineer.zhao") as conn:
        conn.execute("UPDATE meter SET valve_state = 'closed' WHERE id = %s", [ids["meter"]])
        conn.execute("UPDATE account SET status = 'locked' WHERE id = %s", [ids["account"]])
    assert history(store, "meter", ids["meter"])[-1][1:] == (
        "engineer.zhao",
        {"valve_state": "unknown"},
        {"valve_state": "closed"},
    )
    assert history(store, "account", ids["account"])[-1][2:] == ({"status": "active"}, {"status": "locked"})


def test_change_without_a_named_person_names_the_database_user(store: Store) -> None:
    with store.transaction() as conn:
        ids = make_meter(conn)
        user = conn.execute("SELECT session_user").fetchone()
    assert history(store, "customer", ids["customer"])[0][1] == user[0]  # type: ignore[index]


def test_history_is_append_only(store: Store) -> None:
    with store.transaction(actor="setup") as conn:
        make_meter(conn)
    for statement in ("UPDATE change_history SET changed_by = 'nobody'", "DELETE FROM change_history"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"), store.transaction() as conn:
            conn.execute(statement)
