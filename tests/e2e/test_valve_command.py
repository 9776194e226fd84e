"""Closing a valve from the browser, for real: an engineer asks for the close on the meter's page, the collector
(collector.service.CollectorService) sends it over the MQTT broker to a simulated meter (simulators.mqtt_fleet),
whose valve takes a few seconds to move before it answers; the command page, left open, follows the command
from queued or sent to confirmed by itself, without anyone reloading it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, Request, expect

from meterhub import commands
from meterhub.store import Store
from tests.collector.helpers import wait_until
from tests.e2e.helpers import FieldCollector, login, meter_on_site, screenshot, submit, switch_language

VALVE_TRAVEL_S = 2.0  # longer than the page takes to open, so that the page sees the command before it ends

# Records the command state shown in #command-state each time the page swaps that block in.
_FOLLOW_STATES = """() => {
  const shown = () => document.querySelector("#command-state [data-state]").getAttribute("data-state");
  window.e2eStates = [shown()];
  window.e2ePageId = Math.random();
  new MutationObserver(() => {
    const state = shown();
    if (state !== window.e2eStates[window.e2eStates.length - 1]) { window.e2eStates.push(state); }
  }).observe(document.querySelector("main"), { childList: true, subtree: true });
  return window.e2ePageId;
}"""


def _meter_valve(store: Store, meter_no: str) -> str:
    with store.connection() as conn:
        row = conn.execute("SELECT valve_state FROM meter WHERE meter_no = %s", [meter_no]).fetchone()
    assert row is not None
    return str(row[0])


def test_an_engineer_closes_a_valve_and_watches_the_meter_confirm(
    page: Page, base_url: str, users: dict[str, int], store: Store,
    field_collector: Callable[..., FieldCollector],
) -> None:  # fmt: skip
    site = meter_on_site(store)
    with store.transaction(actor="setup") as conn:  # the rules that depend on the day and the hour stay out
        conn.execute("UPDATE command_rule SET enabled = false WHERE code IN ('holiday', 'weekend', 'disconnect_hours')")
    field = field_collector(valve_travel_s=VALVE_TRAVEL_S)
    meter = field.meter(site.meter_no)
    meter.register = site.readings[-1][1]  # the meter in the field shows what its readings say
    assert meter.valve == "open"

    login(page, base_url, "engineer")
    page.goto(f"/meters/{site.meter_no}")
    expect(page.locator("#valve-master")).to_have_text("open")
    page.locator("#issue-command").click()
    expect(page).to_have_url(f"{base_url}/commands/new?meter_no={site.meter_no}")
    expect(page.locator("#meter-facts")).to_contain_text("open")

    step_one = page.locator("form", has=page.get_by_role("button", name="Check the rules"))
    step_one.locator("select[name=kind]").select_option("valve_close")
    step_one.locator("select[name=purpose]").select_option("customer_request")
    submit(page, step_one.get_by_role("button", name="Check the rules"))
    expect(page.locator('#rule-check tr[data-kind="valve_close"]')).to_contain_text("allowed")
    send = page.locator("#send-command form")
    send.get_by_label("Reason (kept in the audit log)").fill("customer moving out, asked for the supply to be shut")
    screenshot(page, "rule-check")

    submit(page, send.get_by_role("button", name="Send command"))
    expect(page).to_have_url(re.compile(re.escape(f"{base_url}/commands/") + r"\d+$"))
    command_id = int(page.url.rsplit("/", 1)[1])
    page_id = page.evaluate(_FOLLOW_STATES)
    loads: list[str] = []
    partial_fetches: list[str] = []

    def on_request(request: Request) -> None:
        if request.resource_type == "document":
            loads.append(request.url)
        elif request.headers.get("x-partial") == "1":
            partial_fetches.append(request.url)

    page.on("request", on_request)
    state = page.locator("#command-state [data-state]")
    first = state.get_attribute("data-state")
    assert first in ("queued", "sent"), f"the command page opened on {first}"
    expect(page.locator("#command-state")).not_to_have_attribute("data-final", "")
    expect(page.locator("#command-state")).to_contain_text("this part refreshes by itself")
    screenshot(page, "command-in-flight")

    # The page is left alone: app.js fetches it again every two seconds and swaps the state block in.
    expect(state).to_have_attribute("data-state", "confirmed", timeout=30_000)
    expect(state).to_have_text("Confirmed")
    expect(page.locator("#command-state")).to_have_attribute("data-final", "")
    expect(page.locator("#command-state")).to_contain_text("The command has ended.")
    expect(page.locator("#command-state dl.reply")).to_contain_text("closed")
    expect(page.locator("#command-valve")).to_have_text("closed", timeout=10_000)  # the facts follow too
    states = page.evaluate("window.e2eStates")
    assert states[0] == first and states[-1] == "confirmed", states
    assert page.evaluate("window.e2ePageId") == page_id  # the same document: nobody reloaded it
    assert loads == [] and partial_fetches and set(partial_fetches) == {f"{base_url}/commands/{command_id}"}
    screenshot(page, "command-confirmed")

    done = commands.get_command(store, command_id)
    assert (done.state, done.kind, done.sent_kind, done.attempts) == ("confirmed", "valve_close", "valve_close", 1)
    assert field.executed(site.meter_no) == ["valve_close"] and meter.valve == "closed"
    wait_until(lambda: _meter_valve(store, site.meter_no) == "closed", 10, "the meter's valve recorded as closed")
    with store.connection() as conn:
        requested_by: Any = conn.execute(
            "SELECT a.actor FROM meter_command c JOIN audit_log a ON a.id = c.audit_id WHERE c.id = %s", [command_id]
        ).fetchone()
    assert requested_by == ("engineer",)

    page.goto(f"/meters/{site.meter_no}")
    expect(page.locator("#valve-master")).to_have_text("closed")
    row = page.locator("#commands tbody tr", has=page.locator(f'a[href="/commands/{command_id}"]'))
    expect(row).to_contain_text("Close valve")
    expect(row).to_contain_text("confirmed")
    switch_language(page)
    expect(page.locator("#valve-master")).to_have_text("关阀")
    expect(row).to_contain_text("已确认")
    screenshot(page, "meter-closed-chinese")
