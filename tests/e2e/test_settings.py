"""参数配置 in the browser: an administrator renames the company and a menu item and sees both in the header,
edits the receipt print template and opens its preview (a sheet of the paper's size, fields placed in mm);
a customer at a self-service kiosk looks up their balance with a PIN, with no session."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from meterhub.store import Store
from tests.billing.ledger_helpers import billed
from tests.e2e.helpers import login, screenshot, submit, switch_language

FIXED_FEE = {"method": "fixed", "fixed_amount": "5.00"}
PX_PER_MM = 96 / 25.4


def test_company_name_menu_label_and_a_receipt_template_preview(
    new_page: Callable[..., Page], base_url: str, users: dict[str, int], store: Store
) -> None:
    with store.transaction() as conn:
        conn.execute("SELECT meterhub_print_template_defaults()")
    page = new_page()
    login(page, base_url, "admin")
    page.locator("header nav.menu").get_by_role("link", name="Settings").click()
    expect(page.locator("h1")).to_have_text("System settings")

    basic = page.locator("#basic-form")
    basic.get_by_label("Company name").fill("城东燃气有限公司")
    basic.get_by_label("Customer service hotline").fill("96777")
    submit(page, basic.get_by_role("button", name="Save"))
    expect(page.locator(".flash.ok")).to_have_text("Saved.")
    expect(page.locator("#brand-name")).to_have_text("城东燃气有限公司")
    expect(page).to_have_title("System settings · 城东燃气有限公司")

    page.locator("#settings-nav").get_by_role("link", name="Menu and page names").click()
    menu = page.locator("#menu-form")
    menu.get_by_label("English name nav.customers").fill("Clients")
    menu.get_by_label("Chinese name nav.customers").fill("用户档案")
    menu.get_by_label("Position nav.counter").fill("5")
    submit(page, menu.locator("#save-menu"))
    expect(page.locator(".flash.ok")).to_have_text("Saved: the menu follows it.")
    links = page.locator("header nav.menu a")
    expect(links.nth(0)).to_have_text("Counter")
    expect(page.locator("header nav.menu").get_by_role("link", name="Clients")).to_be_visible()
    screenshot(page, "menu")

    # The receipt template: narrower paper, the amount moved; the preview follows.
    page.locator("#settings-nav").get_by_role("link", name="Print templates").click()
    page.locator("#templates").get_by_role("link", name="收费收据 241×140").click()
    form = page.locator("#template-form")
    form.get_by_label("Paper height (mm)").fill("93")
    form.get_by_label("Target printer").fill("EPSON LQ-630K")
    form.get_by_label("amount x").fill("30")
    form.get_by_label("amount y").fill("45.5")
    form.get_by_label("Print Note").check()
    form.get_by_label("note x").fill("15")
    form.get_by_label("note y").fill("85")
    form.get_by_label("hotline y").fill("88")
    submit(page, form.locator("#save-template"))
    expect(page.locator(".flash.ok")).to_have_text("Saved.")
    submit(page, page.locator("#preview"))  # waits for the load event: the template's stylesheet applied
    expect(page.locator("#printer")).to_contain_text("EPSON LQ-630K")
    sheet = page.locator("#sheet")
    box = sheet.bounding_box()
    assert box is not None
    assert abs(box["width"] - 241 * PX_PER_MM) < 2 and abs(box["height"] - 93 * PX_PER_MM) < 2
    amount = page.locator('[data-field="amount"]')
    expect(amount).to_have_text("268.50")
    placed = amount.bounding_box()
    assert placed is not None
    assert abs(placed["x"] - box["x"] - 30 * PX_PER_MM) < 2 and abs(placed["y"] - box["y"] - 45.5 * PX_PER_MM) < 2
    expect(page.locator('[data-field="company_name"]')).to_have_text("城东燃气有限公司")
    expect(page.locator('[data-field="hotline"]')).to_have_text("96777")
    screenshot(page, "preview")
    page.go_back()

    # Chinese: the configured Chinese menu name.
    switch_language(page)
    expect(page.locator("header nav.menu").get_by_role("link", name="用户档案")).to_be_visible()
    expect(page.locator("header nav.menu a").nth(0)).to_have_text("收费")


def test_a_kiosk_shows_the_balance_for_the_right_pin_only(
    new_page: Callable[..., Page], base_url: str, store: Store
) -> None:
    ids = billed(store, {"1001": ["10", "20"]}, rule=FIXED_FEE)
    from billing.ledger import positions
    from meterhub import kiosk

    with store.transaction() as conn:
        kiosk.set_pin(conn, "1001", "2468", "clerk")
        held = positions(conn, [ids["1001"]])[ids["1001"]]
    page = new_page(locale="zh-CN")
    page.goto(f"{base_url}/kiosk")
    expect(page.locator("h1")).to_contain_text("自助查询")
    form = page.locator("#kiosk-form")
    form.get_by_label("户号").fill("1001")
    form.get_by_label("查询密码").fill("1357")
    submit(page, form.get_by_role("button", name="查询"))
    expect(page.locator(".flash.error")).to_have_text("户号或查询密码不正确。")
    form.get_by_label("查询密码").fill("2468")
    submit(page, form.get_by_role("button", name="查询"))
    expect(page.locator("#kiosk-arrears")).to_have_text(f"{held.arrears:,.2f}")
    expect(page.locator("#kiosk-due")).to_have_text(f"{held.total_due:,.2f}")
    expect(page.locator("header nav.menu")).to_have_count(0)
    screenshot(page, "kiosk")
