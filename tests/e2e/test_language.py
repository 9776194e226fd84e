"""The language switch in the header, and the browser's preferred language as the default."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.helpers import fill_login, login, screenshot, submit


def _switch_language(page: Page) -> None:
    submit(page, page.locator("#lang-switch button[type=submit]"))


def test_the_switch_shows_chinese_and_back_english(page: Page, base_url: str, users: dict[str, int]) -> None:
    page.goto("/login")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("h1")).to_have_text("Sign in")

    _switch_language(page)  # before signing in
    expect(page).to_have_url(f"{base_url}/login")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("h1")).to_have_text("登录")
    expect(page.locator("form[action='/login'] label").first).to_contain_text("用户名")
    expect(page.locator("#lang-switch button")).to_have_text("English")
    screenshot(page, "login-chinese")

    fill_login(page, "cashier")
    expect(page).to_have_url(f"{base_url}/")
    expect(page.locator("h1")).to_have_text("运行概况")
    expect(page.locator("header nav.menu a.active")).to_have_text("首页")
    expect(page.get_by_role("button", name="退出")).to_be_visible()
    screenshot(page, "home-chinese")

    page.goto("/me")
    expect(page.locator("h1")).to_have_text("我的账号")
    _switch_language(page)  # the switch stays on the page it was used on
    expect(page).to_have_url(f"{base_url}/me")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("h1")).to_have_text("My account")
    expect(page.locator("#lang-switch button")).to_have_text("中文")
    screenshot(page, "me-english")

    page.goto("/")
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


@pytest.mark.parametrize(
    ("locale", "lang", "sign_in", "overview"),
    [("zh-CN", "zh-CN", "登录", "运行概况"), ("en-US", "en", "Sign in", "Overview")],
    ids=["zh-CN", "en-US"],
)
def test_the_browser_language_is_the_default(
    new_page: Callable[..., Page],
    base_url: str,
    users: dict[str, int],
    locale: str,
    lang: str,
    sign_in: str,
    overview: str,
) -> None:
    page = new_page(locale=locale)
    assert page.evaluate("navigator.language") == locale
    page.goto("/")
    expect(page.locator("html")).to_have_attribute("lang", lang)
    expect(page.locator("h1")).to_have_text(sign_in)
    screenshot(page, "login")

    login(page, base_url, "cashier")
    expect(page.locator("h1")).to_have_text(overview)
    screenshot(page, "home")


def test_the_switch_overrides_a_chinese_browser(new_page: Callable[..., Page], base_url: str) -> None:
    page = new_page(locale="zh-CN")
    page.goto("/login")
    expect(page.locator("h1")).to_have_text("登录")
    _switch_language(page)
    expect(page.locator("h1")).to_have_text("Sign in")
    page.reload()
    expect(page.locator("h1")).to_have_text("Sign in")
