"""开户 in a Chinese browser: a billing clerk signs in, opens an account for a new customer, is told which field
is wrong when the ID number does not check, and finds the new account afterwards (in English too)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from meterhub.store import Store
from tests.e2e.helpers import login, screenshot, submit, switch_language
from tests.meterhub.factories import make_meter


def _accounts(store: Store) -> list[tuple[Any, ...]]:
    with store.connection() as conn:
        return conn.execute(
            """SELECT a.account_no, cu.name, cu.phone, cu.id_number, cu.household_size, co.code, a.address, ut.code,
                      a.billing_mode, a.card_no, a.status
                 FROM account a JOIN customer cu ON cu.id = a.customer_id
                 LEFT JOIN community co ON co.id = a.community_id JOIN usage_type ut ON ut.id = a.usage_type_id
                ORDER BY a.id"""
        ).fetchall()


def test_a_clerk_opens_an_account_for_a_new_customer(
    new_page: Callable[..., Page], base_url: str, users: dict[str, int], store: Store
) -> None:
    with store.transaction(actor="setup") as conn:
        make_meter(conn, 1)  # estate 幸福小区 in 城东片区 with account AC1
        conn.execute("UPDATE area SET name = '城东片区' WHERE code = 'A1'")
        conn.execute("UPDATE community SET name = '幸福小区' WHERE code = 'C1'")
        conn.execute("UPDATE usage_type SET name = '居民生活用气', name_en = 'Residential' WHERE code = 'RES'")
        conn.execute("INSERT INTO usage_type (code, name, name_en) VALUES ('COM', '商业用气', 'Commercial')")
    before = _accounts(store)
    page = new_page(locale="zh-CN")

    login(page, base_url, "billing_clerk")
    expect(page.locator("h1")).to_have_text("运行概况")
    page.locator("header nav.menu").get_by_role("link", name="客户").click()
    expect(page.locator("h1")).to_have_text("客户与户号")
    page.locator("#open-account").click()
    expect(page).to_have_url(f"{base_url}/customers/new")
    expect(page.locator("h1")).to_have_text("开户")

    form = page.locator("#open-form")
    expect(form.locator('input[name="customer_mode"][value="new"]')).to_be_checked()
    form.get_by_label("客户名称").fill("王五")
    form.get_by_label("联系电话").fill("13700001111")
    form.get_by_label("证件号码").fill("110105194912310021")  # the check character should be X
    form.get_by_label("家庭人口").fill("4")
    form.locator('select[name="community"]').select_option(label="幸福小区 · 城东片区")
    form.locator('input[name="address"]').fill("幸福路 2 号 1 单元 101")
    form.locator('select[name="usage_type"]').select_option(label="居民生活用气")
    form.locator('select[name="billing_mode"]').select_option("postpaid")
    form.get_by_label("卡号").fill("IC0099")
    screenshot(page, "open-form")

    response = submit(page, form.get_by_role("button", name="确认开户"))
    assert response is not None and response.status == 422
    expect(page.get_by_role("alert")).to_have_text("证件号码: 身份证号码校验位不正确，请核对。")
    expect(form.locator("label.invalid input")).to_have_attribute("name", "id_number")
    expect(form.get_by_label("客户名称")).to_have_value("王五")  # the rest of the input is kept
    expect(form.locator('select[name="community"]')).to_have_value("C1")
    assert _accounts(store) == before
    screenshot(page, "id-number-refused")

    form.get_by_label("证件号码").fill("11010519491231002X")
    submit(page, form.get_by_role("button", name="确认开户"))
    expect(page).to_have_url(re.compile(re.escape(f"{base_url}/customers/accounts/") + r"[^/?]+\?done=open$"))
    account_no = page.url.split("/customers/accounts/")[1].split("?")[0]
    expect(page.locator("p.flash.ok")).to_have_text("开户成功。")
    expect(page.locator("h1")).to_contain_text(f"户号 {account_no} 王五")
    expect(page.locator("#account-facts")).to_contain_text("幸福小区 (C1) · 城东片区")
    expect(page.locator("#account-facts")).to_contain_text("幸福路 2 号 1 单元 101")
    expect(page.locator("#customer-facts")).to_contain_text("11010519491231002X")
    expect(page.locator("#history")).to_contain_text("billing_clerk")
    assert _accounts(store) == [
        *before,
        (account_no, "王五", "13700001111", "11010519491231002X", 4, "C1", "幸福路 2 号 1 单元 101", "RES", "postpaid",
         "IC0099", "active"),
    ]  # fmt: skip
    screenshot(page, "account-opened")

    switch_language(page)  # the same page, in English
    expect(page).to_have_url(f"{base_url}/customers/accounts/{account_no}?done=open")
    expect(page.locator("p.flash.ok")).to_have_text("The account is open.")
    expect(page.locator("h1")).to_contain_text(f"Account {account_no} 王五")
    expect(page.locator("#account-facts")).to_contain_text("Postpaid")

    page.locator("header nav.menu").get_by_role("link", name="Customers").click()
    page.get_by_role("search").locator('input[name="q"]').fill("13700001111")
    submit(page, page.get_by_role("search").get_by_role("button", name="Search"))
    results = page.locator("#results tbody tr")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text(account_no)
    expect(results.first).to_contain_text("王五")
