"""Administration of users and roles, and the operation log with its hash chain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meterhub.store import Store
from tests.dashboards.conftest import ConsoleClient


def _log(store: Store, **where: str) -> list[tuple[Any, ...]]:
    clauses = " AND ".join(f"{k} = %s" for k in where) or "true"
    with store.connection() as conn:
        return conn.execute(
            f"SELECT actor, action, object_type, object_id, host(ip), detail FROM audit_log WHERE {clauses} "
            "ORDER BY seq",
            list(where.values()),
        ).fetchall()


def test_admin_creates_a_user_who_can_sign_in_with_that_roles_rights(
    signed_in: Callable[[str], ConsoleClient], client_factory: Callable[[], ConsoleClient], store: Store
) -> None:
    admin = signed_in("admin")
    response = admin.post(
        "/admin/users",
        {"username": "wang.li", "display_name": "王丽", "role": "cashier", "password": "s3cret-pass"},
        headers={"Referer": "http://127.0.0.1/admin"},
    )
    assert response.status_code == 303
    newcomer = client_factory()
    assert newcomer.login("wang.li", "s3cret-pass").status_code == 303
    assert "王丽" in newcomer.get("/").text
    assert newcomer.get("/admin").status_code == 403
    entry = _log(store, action="admin.admin_create_user")[0]
    assert entry[0] == "admin" and entry[2:4] == ("staff_user", "wang.li")
    assert entry[5]["page"] == "/admin" and entry[5]["status"] == 303
    assert entry[5]["content"]["role"] == "cashier"
    assert "password" not in entry[5]["content"]  # secrets never reach the log


def test_role_permissions_are_data_and_take_effect_at_once(
    signed_in: Callable[[str], ConsoleClient], store: Store
) -> None:
    admin, auditor = signed_in("admin"), signed_in("auditor")
    assert auditor.get("/oplog").status_code == 200
    response = admin.post("/admin/roles/auditor/permissions", {"permission": ["customers.view", "meters.view"]})
    assert response.status_code == 303
    assert auditor.get("/oplog").status_code == 403
    entry = _log(store, action="admin.admin_role_permissions")[0]
    assert "oplog.view" in entry[5]["permissions_before"]
    assert entry[5]["content"]["permission"] == ["customers.view", "meters.view"]


def test_the_last_administrator_cannot_be_locked_out(signed_in: Callable[[str], ConsoleClient], store: Store) -> None:
    admin = signed_in("admin")
    response = admin.post("/admin/roles/admin/permissions", {"permission": ["customers.view"]})
    assert response.status_code == 409
    with store.connection() as conn:
        assert conn.execute(
            "SELECT count(*) FROM role_permission WHERE role = 'admin' AND permission = 'admin.roles'"
        ).fetchone() == (1,)
    response = admin.post("/admin/users/admin", {"role": "cashier", "display_name": "Admin", "active": "true"})
    assert response.status_code == 409


def test_disabling_a_user_ends_their_sessions(signed_in: Callable[[str], ConsoleClient]) -> None:
    admin, cashier = signed_in("admin"), signed_in("cashier")
    assert cashier.get("/").status_code == 200
    response = admin.post("/admin/users/cashier", {"role": "cashier", "display_name": "Cashier"})  # active unticked
    assert response.status_code == 303
    assert cashier.get("/", follow_redirects=False).status_code == 303


def test_engineer_limited_to_areas_via_admin(signed_in: Callable[[str], ConsoleClient], store: Store) -> None:
    with store.transaction() as conn:
        conn.execute("INSERT INTO area (code, name) VALUES ('N', 'North'), ('S', 'South')")
        conn.execute("INSERT INTO area (code, name, parent_id) SELECT 'N1', 'North 1', id FROM area WHERE code = 'N'")
    admin = signed_in("admin")
    response = admin.post(
        "/admin/users/engineer", {"role": "engineer", "display_name": "Eng", "active": "true", "areas": ["N"]}
    )
    assert response.status_code == 303
    engineer = signed_in("engineer")
    me = engineer.http.get("/api/v1/me").json()
    with store.connection() as conn:
        ids = sorted(r[0] for r in conn.execute("SELECT id FROM area WHERE code IN ('N', 'N1')"))
    assert me["area_ids"] == ids


def test_api_manages_users_with_a_token(signed_in: Callable[[str], ConsoleClient], store: Store) -> None:
    admin = signed_in("admin")
    token = admin.post("/me/tokens", {"name": "hr-sync"}).text.split('id="new-token">')[1].split("<")[0]
    headers = {"Authorization": f"Bearer {token}"}
    created = admin.http.post(
        "/api/v1/admin/users",
        headers=headers,
        json={"username": "zhao", "role": "meter_reader", "password": "reader-pass-1"},
    )
    assert created.status_code == 201 and created.json()["role"] == "meter_reader"
    patched = admin.http.patch("/api/v1/admin/users/zhao", headers=headers, json={"active": False})
    assert patched.json()["active"] is False
    bad = admin.http.post(
        "/api/v1/admin/users",
        headers=headers,
        json={"username": "x", "role": "no_such_role", "password": "long-enough"},
    )
    assert bad.status_code == 400 and bad.json()["error"] == "unknown_role"
    assert [e[1] for e in _log(store, object_type="staff_user", object_id="zhao")] == [
        "admin.api_create_user",
        "admin.api_update_user",
    ]


def test_operation_log_is_searchable_and_tampering_is_detected(
    signed_in: Callable[[str], ConsoleClient], store: Store
) -> None:
    admin = signed_in("admin")
    admin.post("/admin/roles", {"code": "trainee", "name_zh": "实习", "name_en": "Trainee"})
    page = admin.get("/oplog?actor=admin&object_type=role")
    assert page.status_code == 200 and "trainee" in page.text and "admin.admin_create_role" in page.text
    assert "intact" in admin.get("/oplog/verify").text
    assert admin.http.get("/api/v1/oplog/verify").json()["intact"] is True
    with store.admin_connection() as conn:  # someone with database access rewrites history
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        conn.execute("UPDATE audit_log SET actor = 'somebody' WHERE object_id = 'trainee'")
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    result = admin.http.get("/api/v1/oplog/verify").json()
    assert result["intact"] is False and result["problems"][0]["problem"] == "hash_mismatch"
    assert "tampered" in admin.get("/oplog/verify").text


def test_operation_log_cannot_be_edited_through_sql(signed_in: Callable[[str], ConsoleClient], store: Store) -> None:
    import psycopg
    import pytest

    signed_in("admin").post("/logout-all")
    with store.connection() as conn, pytest.raises(psycopg.Error):
        conn.execute("DELETE FROM audit_log")
