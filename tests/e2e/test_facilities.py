"""阀井调压箱 in a browser: a field engineer records a regulator box with its own meter and its inlet valve well,
links them, attaches the account the box feeds, records a repair, and opens the supply balance (供销差), where a
day with too much gas unaccounted for is flagged and a day without the box meter's reading is incomplete; the
balance page in Chinese too."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

from playwright.sync_api import Page, expect

from meterhub.store import Store
from tests.e2e.helpers import login, screenshot, submit, switch_language
from tests.meterhub.factories import make_meter


def _setup(store: Store) -> None:
    """Account AC1 in 幸福小区 with meter M00000001, box meter BOX-1; March 2026 read at 23:00 each day: the box
    meter 10 m³ a day, AC1's meter 9.8 m³ (2 % lost) but 8.0 m³ on 5 March (20 %); no box reading on 7 March."""
    zone = ZoneInfo(store.settings.timezone)
    with store.transaction(actor="setup") as conn:
        ids = make_meter(conn, 1)
        conn.execute("UPDATE area SET name = '城东片区' WHERE code = 'A1'")
        conn.execute("UPDATE community SET name = '幸福小区' WHERE code = 'C1'")
        conn.execute("SELECT meterhub_facility_defaults()")
        box = conn.execute(
            "INSERT INTO meter (meter_no, driver_key, status) VALUES ('BOX-1', 'modbus', 'installed') RETURNING id"
        ).fetchone()
        assert box is not None
        rows = []
        box_register, fed_register = Decimal("100.000"), Decimal("50.000")
        for n in range(0, 11):
            at = datetime.combine(date(2026, 2, 28) if n == 0 else date(2026, 3, n), time(23), tzinfo=zone)
            if n != 7:
                rows.append((box[0], at, box_register))
            rows.append((ids["meter"], at, fed_register))
            box_register += Decimal("10.000")
            fed_register += Decimal("8.000") if n == 4 else Decimal("9.800")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO reading (meter_id, channel, ts, value) VALUES (%s, 'volume_m3', %s, %s)", rows)


def test_an_engineer_records_a_box_and_finds_a_flagged_day(
    new_page: Callable[..., Page], base_url: str, users: dict[str, int], store: Store
) -> None:
    _setup(store)
    page = new_page()
    login(page, base_url, "engineer")
    page.locator("header nav.menu").get_by_role("link", name="Wells & boxes").click()
    expect(page.locator("h1")).to_have_text("Valve wells and regulator boxes")
    expect(page.locator("#no-results")).to_be_visible()

    # the regulator box, with its own meter
    page.locator("#new-box").click()
    form = page.locator("#facility-form")
    expect(form.locator('select[name="kind"]')).to_have_value("box")
    form.get_by_label("Code").fill("TYX-1")
    form.get_by_label("Name").fill("幸福小区 1 号调压箱")
    form.locator('select[name="community"]').select_option(label="幸福小区 · 城东片区")
    form.get_by_label("Location").fill("幸福路 12 号东侧绿地")
    form.get_by_label("Inlet pressure (MPa)").fill("0.4")
    form.get_by_label("Outlet pressure (MPa)").fill("0.0030")
    form.get_by_label("Model").fill("RTZ-31/0.4FQ")
    form.get_by_label("Box meter number").fill("BOX-1")
    screenshot(page, "new-box")
    submit(page, form.locator('button[type="submit"]'))
    expect(page).to_have_url(f"{base_url}/facilities/TYX-1?done=create")
    expect(page.locator(".flash.ok")).to_have_text("Facility created.")
    expect(page.locator("#box-meter")).to_have_text("BOX-1")

    # its inlet valve well
    page.goto(f"{base_url}/facilities")
    page.locator("#new-well").click()
    form = page.locator("#facility-form")
    form.get_by_label("Code").fill("FJ-1")
    form.get_by_label("Name").fill("幸福小区进站阀井")
    form.locator('select[name="community"]').select_option(label="幸福小区 · 城东片区")
    form.get_by_label("Nominal diameter (mm)").fill("150")
    submit(page, form.locator('button[type="submit"]'))
    expect(page.locator("h1")).to_contain_text("Valve well FJ-1")

    # linked to the box from the well's page; the box shows it
    page.locator("#link-form").get_by_label("Facility code").fill("TYX-1")
    submit(page, page.locator('#link-form button[type="submit"]'))
    expect(page.locator("#links")).to_contain_text("TYX-1")
    page.locator("#links").get_by_role("link", name="TYX-1").click()
    expect(page.locator('#links tr[data-kind="well"]')).to_contain_text("FJ-1")

    # the account the box feeds; a wrong number is refused with its reason
    attach = page.locator("#attach-form")
    attach.locator('input[name="account_no"]').fill("AC1 AC404")
    submit(page, attach.locator('button[type="submit"]'))
    expect(page.locator(".flash.error")).to_contain_text("no account AC404")
    expect(page.locator("#fed-accounts")).to_contain_text("This box feeds no accounts yet.")
    page.locator('#attach-form input[name="account_no"]').fill("AC1")
    submit(page, page.locator('#attach-form button[type="submit"]'))
    expect(page.locator("#fed-accounts")).to_contain_text("AC1")
    expect(page.locator("#fed-accounts")).to_contain_text("M00000001")

    # a repair, recorded for good
    record = page.locator("#maintenance-form")
    record.get_by_label("Done on").fill("2026-03-06")
    record.locator('select[name="kind"]').select_option("repair")
    record.get_by_label("Done by").fill("赵磊")
    record.get_by_label("Findings").fill("切断阀内漏，出口压力偏高")
    record.get_by_label("Parts").fill("切断阀皮膜 1 片")
    record.get_by_label("Next due").fill("2026-09-06")
    submit(page, record.locator('button[type="submit"]'))
    expect(page.locator(".flash.ok")).to_have_text("Record saved.")
    expect(page.locator("#maintenance-records tbody tr")).to_have_count(1)
    expect(page.locator("#maintenance-records")).to_contain_text("切断阀内漏")
    screenshot(page, "box-page")

    # the supply balance of March 2026
    page.locator("#open-balance").click()
    page.locator('#month-nav input[name="month"]').fill("2026-03")
    submit(page, page.locator('#month-nav button[type="submit"]'))
    expect(page).to_have_url(re.compile(r"/facilities/TYX-1/balance\?month=2026-03$"))
    flagged = page.locator('#balance-days tr[data-day="2026-03-05"]')
    expect(flagged).to_have_class("flagged")
    expect(flagged).to_contain_text("20.00")
    expect(flagged).to_contain_text("above threshold")
    expect(page.locator('#balance-days tr[data-day="2026-03-04"]')).to_contain_text("normal")
    expect(page.locator('#balance-days tr[data-day="2026-03-07"]')).to_contain_text("incomplete")
    expect(page.locator('#balance-days tr[data-day="2026-03-07"]')).to_contain_text("Box meter BOX-1: no reading")
    expect(page.locator("#balance-chart rect.bar")).to_have_count(8)  # one bar per complete day
    screenshot(page, "balance")

    switch_language(page)
    expect(page.locator("h1")).to_contain_text("供销差 · TYX-1")
    expect(page.locator('#balance-days tr[data-day="2026-03-05"]')).to_contain_text("超阈值")
    expect(page.locator('#balance-days tr[data-day="2026-03-07"]')).to_contain_text("不完整")
