"""Steps that browser tests share: signing in, submitting forms, screenshots, and what a page asked for.

- `login(page, base_url, user)` signs in through the form and checks the header names the user;
  `fill_login(page, user, password)` only fills and submits the form already on the page.
- `submit(page, locator)` clicks a submit button and waits for the page the form leads to.
- `screenshot(page, name)` saves a full-page screenshot of a named step of the running test to
  `test-artifacts/screenshots/<test name>--<name>.png` (the `page` fixture adds `<test name>.png` at the end).
- `watch(page)` records every request, console error, uncaught script error and failed resource of a
  page; `activity(page)` gives that record for a page the fixtures opened.
- `submit_confirmed(page, button)` answers the page's confirmation question (data-confirm) with OK and
  submits; `switch_language(page)` uses the header's switch.
- `docs_screenshot(page, name, down_to)` saves the page from its top down to an element as
  docs/<name>.png for the README, when the run was started with METERHUB_SAVE_DOCS_SCREENSHOTS=1.
- `meter_on_site(store)` makes an installed meter with a month of register readings for the pages to plot;
  `FieldCollector` runs the collector (`collector.service.CollectorService`: MQTT ingestion and the
  command dispatcher) with a simulated meter fleet answering on the same broker.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import threading
import weakref
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from playwright.sync_api import ConsoleMessage, Dialog, Locator, Page, Request, Response, expect

from meterhub.broker import BrokerAddress
from meterhub.command_settings import CommandSettings
from meterhub.store import Store
from tests.collector.helpers import collector_settings, unique, wait_until
from tests.dashboards.conftest import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
DOCS = ROOT / "docs"
TIMEOUT_MS = 10_000
# Read when the tests are collected: the session then removes METERHUB_* variables other than METERHUB_TEST_*.
SAVE_DOCS_SCREENSHOTS = os.environ.get("METERHUB_SAVE_DOCS_SCREENSHOTS") == "1"

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
            record.failed_resources.append(f"{response.request.method} {response.url} answered {response.status}")

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


# -- steps ------------------------------------------------------------------------------------------------
def submit_confirmed(page: Page, button: Locator) -> str:
    """Submit a form that asks first (data-confirm): answer OK and wait for the page it leads to; the question."""
    questions: list[str] = []

    def accept(dialog: Dialog) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    submit(page, button)
    assert len(questions) == 1, f"expected one confirmation question, got {questions}"
    return questions[0]


def switch_language(page: Page) -> None:
    """Use the header's language switch; the same page comes back in the other language."""
    submit(page, page.locator("#lang-switch button[type=submit]"))


def docs_screenshot(page: Page, name: str, down_to: str) -> Path | None:
    """docs/<name>.png: the page at its width, from the top down to the bottom of element `down_to`
    (only when METERHUB_SAVE_DOCS_SCREENSHOTS=1)."""
    if not SAVE_DOCS_SCREENSHOTS:
        return None
    box = page.locator(down_to).bounding_box()
    assert box is not None, f"{down_to} is not on the page"
    width = page.evaluate("document.documentElement.clientWidth")
    DOCS.mkdir(exist_ok=True)
    path = DOCS / f"{name}.png"
    scroll = page.evaluate("window.scrollY")
    height = scroll + box["y"] + box["height"] + 10
    page.screenshot(path=path, full_page=True, clip={"x": 0, "y": 0, "width": width, "height": height})
    return path


# -- test data ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeterOnSite:
    """An installed meter with its account, and the volume register readings written for it (oldest first)."""

    meter_no: str
    meter_id: int
    account_no: str
    zone: ZoneInfo
    readings: list[tuple[datetime, Decimal]]

    def in_window(self, first_day: date) -> list[tuple[datetime, Decimal]]:
        """The readings from local midnight of `first_day` on."""
        start = datetime.combine(first_day, time(), tzinfo=self.zone)
        return [(ts, value) for ts, value in self.readings if ts >= start]

    def daily_use(self, first_day: date) -> dict[date, Decimal]:
        """Gas used per local day from `first_day` on: the day's last register minus the one before it."""
        last: dict[date, Decimal] = {}
        for ts, value in self.readings:
            last[ts.astimezone(self.zone).date()] = value
        days = sorted(last)
        return {day: last[day] - last[before] for before, day in itertools.pairwise(days) if day >= first_day}


def today_in(store: Store) -> date:
    """Today in the utility's time zone, as the console counts days."""
    return datetime.now(ZoneInfo(store.settings.timezone)).date()


def meter_on_site(store: Store, days: int = 30, seed: int = 7) -> MeterOnSite:
    """Meter M00000001 (a G2.5 with a valve, native JSON over MQTT, valve open) installed 90 days ago on account
    AC1 of 王建国 in 幸福小区 (城东片区), read at 07:30 and 19:30 on each of the `days` - 1 days before today and
    once the evening before those; household gas use drawn by the fleet simulator's gas profile."""
    from simulators.gas import GasProfile  # the simulator's model of how a household burns gas
    from tests.meterhub.factories import make_meter

    zone = ZoneInfo(store.settings.timezone)
    today = datetime.now(zone).date()
    rng = random.Random(seed)
    profile = GasProfile(daily_m3=1.4, heating_factor=1.8)
    moments = [datetime.combine(today - timedelta(days=days), time(19, 30), tzinfo=zone)]
    for back in range(days - 1, 0, -1):
        day = today - timedelta(days=back)
        moments += [datetime.combine(day, time(7, 30), tzinfo=zone), datetime.combine(day, time(19, 30), tzinfo=zone)]
    register = Decimal("1286.412")
    readings = [(moments[0], register)]
    for before, moment in itertools.pairwise(moments):
        register += profile.use_m3(before, moment, rng)
        readings.append((moment, register))
    with store.transaction(actor="setup") as conn:
        ids = make_meter(conn, 1)
        conn.execute("UPDATE area SET name = '城东片区' WHERE code = 'A1'")
        conn.execute("UPDATE community SET name = '幸福小区' WHERE id = %s", [ids["community"]])
        conn.execute("UPDATE usage_type SET name = '居民生活用气', name_en = 'Residential' WHERE code = 'RES'")
        conn.execute(
            "UPDATE customer SET name = '王建国', phone = '13911112222', address = %s WHERE id = %s",
            ["幸福路 12 号 3 单元 201", ids["customer"]],
        )
        conn.execute("UPDATE account SET address = '幸福路 12 号 3 单元 201' WHERE id = %s", [ids["account"]])
        maker = conn.execute("INSERT INTO manufacturer (code, name) VALUES ('GX', '金秀仪表') RETURNING id").fetchone()
        assert maker is not None
        model = conn.execute(
            "INSERT INTO meter_model (manufacturer_id, name, driver_key, has_valve, register_max) "
            "VALUES (%s, 'G2.5 NB-IoT', 'native_json', true, 99999.999) RETURNING id",
            [maker[0]],
        ).fetchone()
        assert model is not None
        conn.execute(
            "UPDATE meter SET model_id = %s, protocol_address = '00000000000001', valve_state = 'open', "
            "install_date = %s, initial_reading = 1000.000 WHERE id = %s",
            [model[0], today - timedelta(days=90), ids["meter"]],
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO reading (meter_id, channel, ts, value, source) VALUES (%s, 'volume_m3', %s, %s, 'mqtt')",
                [(ids["meter"], ts, value) for ts, value in readings],
            )
        last_at, last_value = readings[-1]
        conn.execute(
            "INSERT INTO reading (meter_id, channel, ts, value, source) VALUES (%s, 'battery_v', %s, 3.58, 'mqtt')",
            [ids["meter"], last_at],
        )
        conn.execute(
            """INSERT INTO meter_state (meter_id, last_seen_at, last_reading_at, last_volume_m3, valve_reported,
                                        valve_reported_at, battery_v, rssi_dbm)
               VALUES (%s, %s, %s, %s, 'open', %s, 3.58, -81)""",
            [ids["meter"], last_at, last_at, last_value, last_at],
        )
    return MeterOnSite("M00000001", ids["meter"], "AC1", zone, readings)


# -- the collector and the meters in the field ------------------------------------------------------------------
# Short timeouts, so that a lost reply would show within the test; a valve's travel stays well inside them.
FIELD_COMMANDS = CommandSettings(ack_timeout_s=15.0, sleepy_ack_timeout_s=15.0, read_timeout_s=10.0, sweep_s=0.5)


class FieldCollector:
    """The collector as `meterhub collect` runs it (collector.service.CollectorService: MQTT ingestion and the
    valve and credit command dispatcher) on the test store, and `meters` simulated native-JSON meters
    (simulators.mqtt_fleet, M00000001 …) answering its commands over the same broker, on a topic prefix of
    their own. A meter's valve takes `valve_travel_s` to move before the meter replies, as a motorised valve does."""

    def __init__(self, store: Store, broker: BrokerAddress, meters: int = 1, valve_travel_s: float = 0.0) -> None:
        from collector.service import CollectorService
        from simulators.mqtt_fleet import Fleet, FleetRunner, native_json

        self.store = store
        prefix = unique("e2e")
        settings = store.settings.model_copy(
            update={"collector": collector_settings(prefix), "commands": FIELD_COMMANDS}
        )
        self.service = CollectorService(settings, store, broker)
        self.service.start()
        self.runner: Any = None
        try:
            if not self.service.ingest.connected.wait(10):
                raise AssertionError(f"the collector did not connect to the broker at {broker.url}")
            self.runner = FleetRunner(Fleet(meters, native_json(prefix)), broker.host, broker.port, prefix=prefix)
            if valve_travel_s > 0:
                answer = self.runner.client.on_message

                def travel(client: Any, userdata: Any, message: Any) -> None:
                    timer = threading.Timer(valve_travel_s, answer, (client, userdata, message))
                    timer.daemon = True
                    timer.start()

                self.runner.client.on_message = travel
            self.runner.client.loop_start()
            wait_until(self.runner.client.is_connected, 10, "the simulated meters to connect")
        except BaseException:
            self.close()
            raise

    def meter(self, meter_no: str) -> Any:
        """The simulated meter (simulators.mqtt_fleet.VirtualMeter)."""
        return next(m for m in self.runner.fleet.meters if m.meter_no == meter_no)

    def executed(self, meter_no: str) -> list[str]:
        """The commands the simulated meter carried out, in order."""
        return [kind for no, kind in self.runner.executed if no == meter_no]

    def close(self) -> None:
        if self.runner is not None:
            self.runner.client.loop_stop()
            self.runner.client.disconnect()
        self.service.stop()
