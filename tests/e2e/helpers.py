"""Steps that browser tests share: signing in, submitting forms, screenshots, and what a page asked for.

- `login(page, base_url, user)` signs in through the form and checks the header names the user;
  `fill_login(page, user, password)` only fills and submits the form already on the page.
- `submit(page, locator)` clicks a submit button and waits for the page the form leads to.
- `screenshot(page, name)` saves a full-page screenshot of a named step of the running test to
  `test-artifacts/screenshots/<test name>--<name>.png` (the `page` fixture adds `<test name>.png` at the end).
- `watch(page)` records every request, console error, uncaught script error and failed resource of a
  page; `activity(page)` gives that record for a page the fixtures opened.
"""

from __future__ import annotations

import os
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import ConsoleMessage, Locator, Page, Request, Response, expect

from tests.dashboards.conftest import PASSWORD

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
TIMEOUT_MS = 10_000

_UNSAFE_NAME = re.compile(r"[^\w.\[\]-]+")
# Chromium's own line for every HTTP error response; documents legitimately answer 401/403/404, and a failed
# sub-resource is caught from its response instead.
_NETWORK_STATUS = "Failed to load resource: the server responded with a status of"


def current_test_name() -> str:
    """The running test's name (with parameters), safe as a file name."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "unknown")
    name = current.rsplit("::", 1)[-1].rsplit(" (", 1)[0]
    return _UNSAFE_NAME.sub("_", name)


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{_UNSAFE_NAME.sub('_', name)}.png"


def screenshot(page: Page, name: str) -> Path:
    """A full-page screenshot of step `name` of the running test."""
    path = screenshot_path(f"{current_test_name()}--{name}")
    page.screenshot(path=path, full_page=True)
    return path


def submit(page: Page, button: Locator) -> Response | None:
    """Click a form's submit button; the response of the page it leads to (after redirects)."""
    with page.expect_navigation(timeout=TIMEOUT_MS) as navigation:
        button.click()
    return navigation.value


def fill_login(page: Page, user: str, password: str = PASSWORD) -> Response | None:
    """Fill in and submit the sign-in form shown on `page`."""
    form = page.locator('form[action="/login"]')
    form.locator('input[name="username"]').fill(user)
    form.locator('input[name="password"]').fill(password)
    return submit(page, form.locator('button[type="submit"]'))


def login(page: Page, base_url: str, user: str, password: str = PASSWORD) -> None:
    """Sign in as `user` through the login page and check the console then names them in its header."""
    page.goto(f"{base_url}/login")
    response = fill_login(page, user, password)
    assert response is not None and response.ok, f"sign-in of {user!r} answered {response and response.status}"
    expect(page).not_to_have_url(re.compile(r"/login(\?|$)"))
    expect(page.locator("header a.who")).to_contain_text(f"({user})")


def logout(page: Page) -> None:
    """Sign out with the header's button; the login page follows."""
    submit(page, page.locator('header form[action="/logout"] button[type="submit"]'))
    expect(page).to_have_url(re.compile(r"/login$"))


@dataclass
class Activity:
    """What one page did: every URL it requested and every error it reported."""

    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_resources: list[str] = field(default_factory=list)

    def foreign_requests(self, base_url: str) -> list[str]:
        return [url for url in self.requests if not url.startswith(base_url + "/")]

    def problems(self, base_url: str) -> list[str]:
        """Requests to other hosts, console errors (CSP violations among them), script errors, failed
        resources and server errors."""
        return (
            [f"request to another host: {url}" for url in self.foreign_requests(base_url)]
            + [f"console error: {text}" for text in self.console_errors]
            + [f"script error: {text}" for text in self.page_errors]
            + self.failed_resources
        )


_WATCHED: weakref.WeakKeyDictionary[Page, Activity] = weakref.WeakKeyDictionary()


def watch(page: Page) -> Activity:
    """Start recording what `page` requests and reports."""
    record = Activity()

    def on_request(request: Request) -> None:
        record.requests.append(request.url)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith(_NETWORK_STATUS):
            where = message.location.get("url", "") if message.location else ""
            record.console_errors.append(f"{message.text} ({where})" if where else message.text)

    def on_page_error(error: Exception) -> None:
        record.page_errors.append(str(error))

    def on_response(response: Response) -> None:
        document = response.request.resource_type == "document"
        if response.status >= 500 or (response.status >= 400 and not document):
            record.failed_resources.append(
                f"{response.request.method} {response.url} answered {response.status}"
            )

    def on_request_failed(request: Request) -> None:
        record.failed_resources.append(f"{request.method} {request.url} failed: {request.failure}")

    page.on("request", on_request)
    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("response", on_response)
    page.on("requestfailed", on_request_failed)
    _WATCHED[page] = record
    return record


def activity(page: Page) -> Activity:
    """The record `watch(page)` keeps (every page the fixtures open is watched)."""
    return _WATCHED[page]
