"""A meter's readings plotted on its page: the register line and the daily-use bars drawn from the readings in
the database, the window tabs, and the same page in Chinese."""

from __future__ import annotations

import itertools
import re
from datetime import timedelta

from playwright.sync_api import Page, expect

from meterhub.store import Store
from tests.e2e.helpers import docs_screenshot, login, meter_on_site, screenshot, switch_language, today_in


def _points(path: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"[ML](-?[\d.]+),(-?[\d.]+)", path)]


def test_the_meter_page_plots_the_register_and_the_daily_use(
    page: Page, base_url: str, users: dict[str, int], store: Store
) -> None:
    site = meter_on_site(store)
    first_day = today_in(store) - timedelta(days=29)
    shown = site.in_window(first_day)
    daily = site.daily_use(first_day)
    assert len(shown) == 58 and len(daily) == 29  # two readings a day on the 29 days before today

    login(page, base_url, "engineer")
    page.locator("header nav.menu").get_by_role("link", name="Meters").click()
    expect(page.locator("h1")).to_contain_text("Meters")
    page.get_by_role("link", name=site.meter_no, exact=True).click()
    expect(page).to_have_url(f"{base_url}/meters/{site.meter_no}")
    expect(page.locator("h1")).to_contain_text(f"Meter {site.meter_no}")
    expect(page.locator("#meter-status")).to_have_text("installed")
    expect(page.locator("#meter-account")).to_contain_text(site.account_no)
    expect(page.locator("#valve-master")).to_have_text("open")
    expect(page.locator("#signal")).to_have_text("-81 dBm")
    expect(page.locator("#charts nav.tabs a.active")).to_have_text("Last 30 days")

    # The register: one point per reading in the window, left to right in time, higher for a larger register.
    register = page.locator("svg.chart#register-chart")
    expect(register).to_be_visible()
    expect(page.locator("#register-chart-title")).to_have_text("Register over the last 30 days")
    path = register.locator("path.line").get_attribute("d")
    assert path is not None
    points = _points(path)
    assert len(points) == len(shown)
    assert all(a[0] < b[0] for a, b in itertools.pairwise(points))
    assert points[-1][1] < points[0][1]  # the register grew: its line rises on screen
    dots = register.locator("circle.dot title")
    expect(dots).to_have_count(len(shown))
    last_at, last_value = shown[-1]
    expect(dots.last).to_have_text(f"{last_at.astimezone(site.zone):%Y-%m-%d %H:%M} {last_value} m³")
    expect(register.locator("text.y-tick").first).to_be_visible()

    # The daily use: one bar per day with readings, each titled with that day's exact use.
    bars = page.locator("svg.chart#daily-chart rect.bar")
    expect(bars).to_have_count(len(daily))
    titles = bars.locator("title").all_text_contents()
    assert titles == [f"{day.isoformat()} {use} m³" for day, use in daily.items()]
    heights = [float(h or 0) for h in bars.evaluate_all("bars => bars.map(b => b.getAttribute('height'))")]
    tallest = max(daily, key=lambda day: daily[day])
    assert max(heights) == heights[list(daily).index(tallest)] and min(heights) > 0
    total = sum(daily.values())
    expect(page.locator("#charts")).to_contain_text(f"29 days with readings, {total} m³ in total.")
    box = register.bounding_box()
    assert box is not None and box["width"] > 600  # drawn at the width of the page, not a thumbnail
    expect(page.locator("#latest-readings tbody tr", has_text="volume_m3").first).to_contain_text(str(last_value))
    screenshot(page, "meter-30-days")
    docs_screenshot(page, "console-meter", down_to="#charts")

    page.get_by_role("link", name="Last 90 days").click()
    expect(page).to_have_url(f"{base_url}/meters/{site.meter_no}?days=90")
    expect(page.locator("#charts nav.tabs a.active")).to_have_text("Last 90 days")
    expect(page.locator("#register-chart circle.dot")).to_have_count(len(site.readings))  # the evening before too
    expect(page.locator("#daily-chart rect.bar")).to_have_count(len(daily) + 1)

    switch_language(page)
    expect(page).to_have_url(f"{base_url}/meters/{site.meter_no}?days=90")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(page.locator("h1")).to_contain_text(f"表具 {site.meter_no}")
    expect(page.locator("#meter-status")).to_have_text("在用")
    expect(page.locator("#valve-master")).to_have_text("开阀")
    expect(page.locator("#register-chart-title")).to_have_text("表底数走势（近 90 天）")
    expect(page.locator("#daily-chart-title")).to_have_text("日用气量（近 90 天）")
    expect(page.locator("#charts nav.tabs a.active")).to_have_text("近 90 天")
    screenshot(page, "meter-90-days-chinese")
