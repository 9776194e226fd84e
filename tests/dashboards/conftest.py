"""A console on the test store, users of every role, and a client that signs in like a browser."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dashboards.app import create_app
from dashboards.security import hash_password
from meterhub.settings import load_settings
from meterhub.store import Store

PASSWORD = "correct horse 1"
ROLES = ("admin", "cashier", "billing_clerk", "meter_reader", "engineer", "auditor", "supervisor", "storekeeper")
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
# One hash for every test user: argon2id is slow on purpose.
_HASH = hash_password(PASSWORD)


class ConsoleClient:
    """A TestClient that keeps cookies and sends the page's CSRF token with every form it posts."""

    def __init__(self, client: TestClient) -> None:
        self.http = client
        self.csrf = ""

    def get(self, url: str, **kw: Any) -> Any:
        response = self.http.get(url, **kw)
        match = _CSRF.search(response.text) if "text/html" in response.headers.get("content-type", "") else None
        if match:
            self.csrf = match.group(1)
        return response

    def post(self, url: str, data: dict[str, Any] | None = None, *, csrf: bool = True, **kw: Any) -> Any:
        form = dict(data or {})
        if csrf:
            if not self.csrf:
                self.get("/login")
            form.setdefault("csrf_token", self.csrf)
        kw.setdefault("follow_redirects", False)
        response = self.http.post(url, data=form, **kw)
        match = _CSRF.search(response.text) if "text/html" in response.headers.get("content-type", "") else None
        if match:
            self.csrf = match.group(1)
        return response

    def login(self, username: str, password: str = PASSWORD) -> Any:
        self.get("/login")
        response = self.post("/login", {"username": username, "password": password})
        if response.status_code == 303:
            self.get("/")  # the session's CSRF token replaces the anonymous one
        return response


def reset_access(store: Store) -> None:
    with store.transaction() as conn:
        conn.execute("SELECT meterhub_access_defaults()")
        conn.execute("SELECT meterhub_command_defaults()")


def add_user(store: Store, username: str, role: str, *, areas: list[int] | None = None, active: bool = True) -> int:
    with store.transaction() as conn:
        row = conn.execute(
            """INSERT INTO staff_user (username, display_name, role, password_hash, active)
               VALUES (%s, %s, %s, %s, %s) RETURNING id""",
            [username, username.replace("_", " ").title(), role, _HASH, active],
        ).fetchone()
        assert row is not None
        for area_id in areas or []:
            conn.execute("INSERT INTO staff_area (user_id, area_id) VALUES (%s, %s)", [row[0], area_id])
    return int(row[0])


@pytest.fixture
def console_app(store: Store) -> Iterator[Any]:
    reset_access(store)
    settings = load_settings(
        None,
        database={"url": store.url},
        timezone=store.settings.timezone,
        console={"failure_delay_s": 0},
    )
    yield create_app(settings, store)


@pytest.fixture
def users(store: Store, console_app: Any) -> dict[str, int]:
    """One active user per shipped role, named after it (password PASSWORD)."""
    return {role: add_user(store, role, role) for role in ROLES}


@pytest.fixture
def client_factory(console_app: Any) -> Iterator[Callable[[], ConsoleClient]]:
    clients: list[TestClient] = []

    def make() -> ConsoleClient:
        client = TestClient(console_app, base_url="http://127.0.0.1")
        client.__enter__()
        clients.append(client)
        return ConsoleClient(client)

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def signed_in(client_factory: Callable[[], ConsoleClient], users: dict[str, int]) -> Callable[[str], ConsoleClient]:
    """signed_in(role) -> a client signed in as the user of that role."""

    def sign_in(role: str) -> ConsoleClient:
        client = client_factory()
        response = client.login(role)
        assert response.status_code == 303, response.text
        return client

    return sign_in
