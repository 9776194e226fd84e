"""Browser tests: the console served by uvicorn on a free local port, driven by a real headless Chromium.

- Chromium is the machine's own (`chromium` / `chromium-browser` on PATH, or METERHUB_TEST_CHROMIUM);
  Playwright's downloadable browsers are never used. Without one the tests skip, or fail when
  METERHUB_REQUIRE_SERVICES=1.
- `console_server` serves `dashboards.app.create_app` on the session's store for the whole session;
  `base_url` empties the store (fixture `store`), loads the shipped roles and permissions and gives
  the console's address. `users` adds one user per shipped role (username = role, password PASSWORD).
- `page` is a page in a fresh browser context (English, unless a test opens others with `new_page`).
  Every page is watched (see helpers.watch): after a passing test, a request to another host, a console
  error (CSP violations included), an uncaught script error, a failed resource or a server error turns
  it into an error. At the end of every test, passed or failed, each page's full-page screenshot goes to
  test-artifacts/screenshots/<test name>.png (further pages: <test name>--page2.png, …).
- `field_collector(meters=1, valve_travel_s=0)` starts the collector with its command dispatcher on the
  session's store and simulated meters answering on the MQTT broker (fixture `mqtt_broker`); both stop at
  the end of the test (see helpers.FieldCollector).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest
from playwright.sync_api import expect, sync_playwright

from meterhub.broker import BrokerAddress
from meterhub.settings import load_settings
from meterhub.store import Store
from tests.conftest import _unavailable
from tests.dashboards.conftest import ROLES, add_user, reset_access
from tests.e2e.helpers import TIMEOUT_MS, FieldCollector, activity, current_test_name, screenshot_path, watch

CHROMIUM_NAMES = ("chromium", "chromium-browser")
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
expect.set_options(timeout=TIMEOUT_MS)  # the assertions wait as long as the pages' actions may


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def find_chromium() -> str | None:
    explicit = os.environ.get("METERHUB_TEST_CHROMIUM")
    if explicit:
        return shutil.which(explicit)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    found = find_chromium()
    if found is None:
        wanted = os.environ.get("METERHUB_TEST_CHROMIUM") or " or ".join(CHROMIUM_NAMES)
        _unavailable(f"no Chromium for the browser tests: {wanted} is not on PATH (Debian: apt install chromium)")
    assert found is not None
    return found


@pytest.fixture(scope="session")
def browser(chromium_executable: str) -> Iterator[Any]:
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(
                executable_path=chromium_executable, headless=True, args=["--disable-dev-shm-usage"]
            )
        except Exception as exc:
            _unavailable(f"Chromium at {chromium_executable} does not start: {exc}")
        try:
            yield chromium
        finally:
            chromium.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def console_server(session_store: Store) -> Iterator[str]:
    """The console under uvicorn in a background thread on 127.0.0.1; its base URL."""
    import uvicorn

    from dashboards.app import create_app

    settings = load_settings(
        None,
        database={"url": session_store.url},
        timezone=session_store.settings.timezone,
        console={"failure_delay_s": 0},
    )
    app = create_app(settings, session_store)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="console-e2e", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not (server.started and _answers(f"{base_url}/login")):
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            pytest.fail(f"the console at {base_url} did not start", pytrace=False)
        time.sleep(0.05)
    try:
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def base_url(store: Store, console_server: str) -> str:
    """The running console's address, on emptied tables with the shipped roles and permissions."""
    reset_access(store)
    return console_server


@pytest.fixture
def users(store: Store, base_url: str) -> dict[str, int]:
    """One active user per shipped role, named after it (password PASSWORD)."""
    return {role: add_user(store, role, role) for role in ROLES}


@pytest.fixture
def new_page(request: pytest.FixtureRequest, browser: Any, base_url: str) -> Iterator[Callable[..., Any]]:
    """new_page(locale="en-US", **context_options) -> a watched page in a browser context of its own."""
    contexts: list[Any] = []
    pages: list[Any] = []

    def make(locale: str = "en-US", **options: Any) -> Any:
        options.setdefault("viewport", {"width": 1280, "height": 800})
        context = browser.new_context(locale=locale, base_url=base_url, **options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        watch(page)
        pages.append(page)
        return page

    yield make

    name = current_test_name()
    problems: list[str] = []
    try:
        for number, page in enumerate(pages, start=1):
            if page.is_closed():
                continue
            path = screenshot_path(name if number == 1 else f"{name}--page{number}")
            try:
                page.screenshot(path=path, full_page=True)
            except Exception as exc:  # a screenshot must not hide the test's own outcome
                problems.append(f"no screenshot {path.name}: {exc}")
        for number, page in enumerate(pages, start=1):
            problems += [f"page {number}: {p}" for p in activity(page).problems(base_url)]
    finally:
        for context in contexts:
            context.close()
    call = request.node.stash.get(_REPORTS, {}).get("call")
    if problems and call is not None and call.passed:
        pytest.fail("the browser reported:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def page(new_page: Callable[..., Any]) -> Any:
    """A watched page in a fresh English browser context."""
    return new_page()


@pytest.fixture
def field_collector(store: Store, mqtt_broker: BrokerAddress) -> Iterator[Callable[..., FieldCollector]]:
    """field_collector(meters=1, valve_travel_s=0.0) -> a running collector and its simulated meters."""
    started: list[FieldCollector] = []

    def start(meters: int = 1, valve_travel_s: float = 0.0) -> FieldCollector:
        started.append(FieldCollector(store, mqtt_broker, meters, valve_travel_s))
        return started[-1]

    yield start
    for running in started:
        running.close()
