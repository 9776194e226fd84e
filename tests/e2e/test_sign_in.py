"""Signing in and out in a real browser: the login form, the home page, sign out, sign out everywhere."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Dialog, Page, expect

from meterhub.store import Store
from tests.e2e.helpers import activity, fill_login, login, logout, screenshot, submit


def _sessions(store: Store, user_id: int) -> list[tuple[Any, ...]]:
    """(ended, end_reason) of each session of the user, oldest first."""
    with store.connection() as conn:
        return conn.execute(
            "SELECT ended_at IS NOT NULL, end_reason FROM web_session WHERE user_id = %s ORDER BY created_at",
            [user_id],
        ).fetchall()


def test_a_wrong_password_shows_the_error_then_the_right_one_opens_the_home_page(
    page: Page, base_url: str, users: dict[str, int], store: Store
) -> None:
    page.goto("/")
    expect(page).to_have_url(f"{base_url}/login?next=%2F")
    expect(page.locator("h1")).to_have_text("Sign in")
    screenshot(page, "login-form")

    response = fill_login(page, "billing_clerk", "not the password")
    assert response is not None and response.status == 401
    expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    expect(page.locator('input[name="username"]')).to_have_value("billing_clerk")
    expect(page.locator('input[name="password"]')).to_have_value("")
    expect(page.locator("header a.who")).to_have_count(0)
    assert _sessions(store, users["billing_clerk"]) == []
    screenshot(page, "wrong-password")

    response = fill_login(page, "billing_clerk")
    assert response is not None and response.status == 200
    expect(page).to_have_url(f"{base_url}/")
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator("header a.who")).to_have_text("Billing Clerk (billing_clerk)")
    expect(page.locator("header nav.menu a.active")).to_have_text("Home")
    expect(page.get_by_role("alert")).to_have_count(0)
    assert _sessions(store, users["billing_clerk"]) == [(False, None)]
    session = [c for c in page.context.cookies() if c["name"] == "mh_session"]
    assert len(session) == 1 and session[0]["httpOnly"]


def test_sign_out_returns_to_the_login_page_and_pages_then_ask_to_sign_in(
    page: Page, base_url: str, users: dict[str, int], store: Store
) -> None:
    login(page, base_url, "cashier")
    screenshot(page, "signed-in")

    logout(page)
    expect(page.locator("h1")).to_have_text("Sign in")
    expect(page.locator("header a.who")).to_have_count(0)
    assert [c for c in page.context.cookies() if c["name"] == "mh_session"] == []
    assert _sessions(store, users["cashier"]) == [(True, "logout")]
    screenshot(page, "signed-out")

    page.goto("/")
    expect(page).to_have_url(f"{base_url}/login?next=%2F")
    page.goto("/me")
    expect(page).to_have_url(f"{base_url}/login?next=%2Fme")

    # signing in again leads back to the page that asked for it
    fill_login(page, "cashier")
    expect(page).to_have_url(f"{base_url}/me")
    expect(page.locator("h1")).to_have_text("My account")
    assert _sessions(store, users["cashier"]) == [(True, "logout"), (False, None)]


def test_sign_out_everywhere_ends_the_session_of_another_browser(
    page: Page, new_page: Callable[..., Page], base_url: str, users: dict[str, int], store: Store
) -> None:
    other = new_page()
    login(page, base_url, "supervisor")
    login(other, base_url, "supervisor")
    other.goto("/me")
    page.goto("/me")
    sessions = page.locator("section.card", has=page.get_by_role("heading", name="Sessions")).locator("tbody tr")
    expect(sessions).to_have_count(2)
    expect(sessions.filter(has_text="(this session)")).to_have_count(1)
    screenshot(page, "two-sessions")

    button = page.get_by_role("button", name="Sign out everywhere")
    questions: list[str] = []

    def answer(accept: bool) -> Callable[[Dialog], None]:
        def handle(dialog: Dialog) -> None:
            questions.append(dialog.message)
            if accept:
                dialog.accept()
            else:
                dialog.dismiss()

        return handle

    # declining the confirmation leaves every session alone
    page.once("dialog", answer(False))
    button.click()
    assert questions == ["This ends all your sessions on every device. Continue?"]
    assert not [url for url in activity(page).requests if url.endswith("/logout-all")]
    expect(page).to_have_url(f"{base_url}/me")
    assert _sessions(store, users["supervisor"]) == [(False, None), (False, None)]

    page.once("dialog", answer(True))
    submit(page, button)
    assert len(questions) == 2
    expect(page).to_have_url(f"{base_url}/login")
    expect(page.locator("h1")).to_have_text("Sign in")
    assert _sessions(store, users["supervisor"]) == [(True, "logout_all"), (True, "logout_all")]

    other.reload()
    expect(other).to_have_url(re.compile(re.escape(f"{base_url}/login?next=%2Fme") + "$"))
    expect(other.locator("header a.who")).to_have_count(0)
    screenshot(other, "other-browser-signed-out")
