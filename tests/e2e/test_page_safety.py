"""Pages load only from the console, apply their own CSS and script, and report no errors; the Content
Security Policy blocks inline code, and the page watch notices when it does."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.e2e.helpers import activity, fill_login, logout, screenshot, submit


def test_every_request_goes_to_the_console_and_no_page_reports_an_error(
    page: Page, base_url: str, users: dict[str, int]
) -> None:
    log = activity(page)
    response = page.goto("/")
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy

    fill_login(page, "admin", "wrong password")
    fill_login(page, "admin")
    expect(page.locator("h1")).to_have_text("Overview")
    # the stylesheet applies under the policy (the header's colour comes from app.css)
    assert page.locator("header.top").evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(18, 50, 79)"
    page.goto("/me")
    expect(page.locator("h1")).to_have_text("My account")
    submit(page, page.locator("#lang-switch button[type=submit]"))
    expect(page.locator("h1")).to_have_text("我的账号")
    page.goto("/")
    expect(page.locator("h1")).to_have_text("运行概况")
    screenshot(page, "home-chinese")
    submit(page, page.locator("#lang-switch button[type=submit]"))
    logout(page)

    assert f"{base_url}/static/app.css" in log.requests
    assert f"{base_url}/static/app.js" in log.requests
    assert [url for url in log.requests if not url.startswith(base_url + "/")] == []
    assert log.console_errors == []
    assert log.page_errors == []
    assert log.failed_resources == []


def test_inline_style_and_script_are_blocked_and_reported(page: Page, base_url: str) -> None:
    log = activity(page)
    page.goto("/login")
    page.evaluate(
        """() => {
             document.querySelector("h1").setAttribute("style", "color: rgb(255, 0, 0)");
             const script = document.createElement("script");
             script.textContent = "window.inlineRan = true;";
             document.body.appendChild(script);
           }"""
    )
    assert page.evaluate("window.inlineRan === undefined")
    assert page.locator("h1").evaluate("e => getComputedStyle(e).color") != "rgb(255, 0, 0)"
    for _ in range(50):  # console messages arrive on their own
        reported = " ".join(log.console_errors)
        if "style-src" in reported and "script-src" in reported:
            break
        page.wait_for_timeout(100)
    assert "style-src" in reported and "script-src" in reported, log.console_errors
    log.console_errors.clear()  # reported as intended; nothing else may be
