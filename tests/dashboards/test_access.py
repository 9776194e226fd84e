"""Signing in and out, sessions, lockout, CSRF, language, API tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meterhub.store import Store
from tests.dashboards.conftest import PASSWORD, ConsoleClient, add_user


def test_pages_need_a_session_and_login_starts_one(client_factory: Callable[[], ConsoleClient], users: Any) -> None:
    client = client_factory()
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2F"
    assert client.http.get("/api/v1/me").status_code == 401

    response = client.login("cashier")
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "mh_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    home = client.get("/")
    assert home.status_code == 200 and "Cashier" in home.text
    assert client.http.get("/api/v1/me").json()["role"] == "cashier"


def test_wrong_password_and_lockout(client_factory: Callable[[], ConsoleClient], users: Any, store: Store) -> None:
    client = client_factory()
    for _ in range(5):
        response = client.login("cashier", "wrong password")
        assert response.status_code == 401
        assert "Wrong user name or password" in response.text
    response = client.login("cashier", PASSWORD)  # locked although right
    assert response.status_code == 401 and "locked" in response.text
    with store.connection() as conn:
        row = conn.execute("SELECT count(*) FILTER (WHERE ok), count(*) FROM login_attempt").fetchone()
    assert row == (0, 6)


def test_a_new_session_at_login_and_logout_everywhere(
    client_factory: Callable[[], ConsoleClient], users: Any, store: Store
) -> None:
    first, second = client_factory(), client_factory()
    first.login("admin")
    old_cookie = first.http.cookies.get("mh_session")
    first.login("admin")
    assert first.http.cookies.get("mh_session") != old_cookie
    second.login("admin")
    assert first.get("/").status_code == 200
    response = second.post("/logout-all")
    assert response.status_code == 303
    assert first.get("/", follow_redirects=False).status_code == 303
    with store.connection() as conn:
        reasons = [r[0] for r in conn.execute("SELECT end_reason FROM web_session ORDER BY created_at")]
    assert reasons == ["logout", "logout_all", "logout_all"]


def test_idle_and_expired_sessions_end(signed_in: Callable[[str], ConsoleClient], store: Store) -> None:
    client = signed_in("auditor")
    with store.transaction() as conn:
        conn.execute("UPDATE web_session SET last_seen = now() - interval '31 minutes'")
    assert client.get("/", follow_redirects=False).status_code == 303
    client = signed_in("auditor")
    with store.transaction() as conn:
        conn.execute("UPDATE web_session SET created_at = now() - interval '13 hours' WHERE ended_at IS NULL")
    assert client.get("/", follow_redirects=False).status_code == 303
    with store.connection() as conn:
        assert sorted(r[0] for r in conn.execute("SELECT end_reason FROM web_session")) == ["expired", "idle"]


def test_post_without_csrf_token_is_refused(signed_in: Callable[[str], ConsoleClient]) -> None:
    client = signed_in("admin")
    response = client.post("/logout-all", csrf=False)
    assert response.status_code == 403
    response = client.post("/logout-all", {"csrf_token": "forged"})
    assert response.status_code == 403
    assert client.get("/").status_code == 200  # still signed in


def test_login_form_needs_its_csrf_token(client_factory: Callable[[], ConsoleClient], users: Any) -> None:
    client = client_factory()
    response = client.post("/login", {"username": "admin", "password": PASSWORD}, csrf=False)
    assert response.status_code == 403


def test_language_follows_browser_then_switch(client_factory: Callable[[], ConsoleClient], users: Any) -> None:
    client = client_factory()
    assert "登录" in client.get("/login", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}).text
    assert "Sign in" in client.get("/login", headers={"Accept-Language": "en-GB,en"}).text
    client.post("/lang", {"lang": "zh", "next": "/login"})
    assert "登录" in client.get("/login", headers={"Accept-Language": "en-GB"}).text


def test_api_token_carries_its_users_permissions(
    signed_in: Callable[[str], ConsoleClient], client_factory: Callable[[], ConsoleClient], store: Store
) -> None:
    admin = signed_in("admin")
    page = admin.post("/me/tokens", {"name": "gis", "days": "30"})
    assert page.status_code == 200
    token = page.text.split('id="new-token">')[1].split("<")[0]
    program = client_factory().http
    me = program.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["username"] == "admin"
    assert "admin.roles" in me.json()["permissions"]
    assert program.get("/api/v1/me", headers={"Authorization": "Bearer mh_nope_x"}).status_code == 401
    with store.connection() as conn:
        token_id = conn.execute("SELECT id FROM api_token").fetchone()[0]  # type: ignore[index]
    admin.post(f"/me/tokens/{token_id}/revoke")
    assert program.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_inactive_user_cannot_sign_in(client_factory: Callable[[], ConsoleClient], store: Store, users: Any) -> None:
    add_user(store, "gone", "admin", active=False)
    assert client_factory().login("gone").status_code == 401
