"""营业收费 in the browser: a cashier finds an account that owes two overdue bills, takes a payment after the
confirmation question, gets the receipt, reprints it in Chinese (marked 重打) and sees what the printer gets."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from playwright.sync_api import Page, expect

from meterhub.store import Store
from tests.billing.ledger_helpers import billed
from tests.e2e.helpers import docs_screenshot, login, screenshot, submit, submit_confirmed, switch_language

FIXED_FEE = {"method": "fixed", "fixed_amount": "5.00"}  # 5.00 once per overdue bill, whatever today is


def _payments(store: Store) -> list[tuple[Any, ...]]:
    with store.connection() as conn:
        return conn.execute(
            """SELECT a.account_no, p.amount, p.method, p.actor FROM payment p JOIN account a ON a.id = p.account_id
                ORDER BY p.id"""
        ).fetchall()


def _prints(store: Store) -> list[tuple[Any, ...]]:
    with store.connection() as conn:
        return conn.execute("SELECT reprint, printed_by FROM receipt_print ORDER BY id").fetchall()


def test_a_cashier_takes_a_payment_and_reprints_the_receipt(
    page: Page, base_url: str, users: dict[str, int], store: Store
) -> None:
    # 1001 billed 20.00 for 2024-01 and 40.00 for 2024-02, both overdue with a 5.00 late fee each: 70.00 due.
    billed(store, {"1001": ["10", "20"]}, rule=FIXED_FEE, cards={"1001": "IC-1001"})
    with store.transaction(actor="setup") as conn:
        conn.execute("UPDATE area SET name = '城东片区'")
        conn.execute("UPDATE community SET name = '幸福小区'")
        conn.execute("UPDATE customer SET name = '李秀英', phone = '13522223333' WHERE customer_no = 'CU-1001'")
        conn.execute("UPDATE account SET address = '幸福路 8 号 2 单元 301' WHERE account_no = '1001'")

    login(page, base_url, "cashier")
    page.locator("header nav.menu").get_by_role("link", name="Counter").click()
    expect(page.locator("h1")).to_have_text("Counter")
    find = page.locator("#find-account")
    find.get_by_label("Account no.").fill("1001")
    submit(page, find.get_by_role("button", name="Search"))
    expect(page).to_have_url(re.compile(re.escape(f"{base_url}/counter?account_no=1001")))
    expect(page.locator("#account h2")).to_have_text("李秀英 · 1001")
    expect(page.locator("#due")).to_have_text("70.00")
    expect(page.locator("#late-fees")).to_have_text("10.00")
    bills = page.locator("#open-bills tbody tr:not(.total)")
    expect(bills).to_have_count(2)
    expect(bills.nth(0)).to_contain_text("2024-01")
    expect(bills.nth(1)).to_contain_text("2024-02")
    expect(bills.filter(has_text="overdue")).to_have_count(2)
    pay = page.locator("#pay form")
    expect(pay.get_by_label("Amount (CNY)")).to_have_value("70.00")  # the whole due is offered
    screenshot(page, "counter")
    docs_screenshot(page, "console-counter", down_to="#pay")

    # Declining the question takes nothing.
    pay.get_by_label("Amount (CNY)").fill("30.00")
    pay.get_by_label("Method").select_option(label="WeChat Pay")
    page.once("dialog", lambda dialog: dialog.dismiss())
    pay.get_by_role("button", name="Take payment").click()
    expect(page).to_have_url(re.compile(re.escape(f"{base_url}/counter?account_no=1001")))
    assert _payments(store) == []

    question = submit_confirmed(page, pay.get_by_role("button", name="Take payment"))
    assert question == "Take this payment?"
    expect(page).to_have_url(re.compile(re.escape(f"{base_url}/counter/receipts/") + r"[^/?]+\?done=paid$"))
    receipt_no = page.url.split("/counter/receipts/")[1].split("?")[0]
    expect(page.locator("p.flash.ok")).to_have_text("Payment taken.")
    receipt = page.locator("#receipt")
    expect(receipt.locator("#receipt-no")).to_have_text(receipt_no)
    expect(receipt.locator("#receipt-amount")).to_have_text("30.00")
    expect(receipt).to_contain_text("李秀英")
    expect(receipt).to_contain_text("WeChat Pay")
    expect(receipt.locator("#reprint-mark")).to_have_count(0)
    lines = receipt.locator("table.receipt-lines tbody tr")
    expect(lines).to_have_count(1)
    expect(lines.first).to_contain_text("Payment")
    expect(lines.first.locator("td.num")).to_have_text("30.00")
    expect(receipt).to_contain_text("Prints so far: 1")
    assert _payments(store) == [("1001", Decimal("30.00"), "wechat", "cashier")]
    assert _prints(store) == [(False, "cashier")]
    screenshot(page, "receipt")

    switch_language(page)
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    expect(receipt.locator("h2.receipt-title")).to_have_text("燃气费收款收据")
    expect(receipt).to_contain_text("微信")
    question = submit_confirmed(page, page.get_by_role("button", name="补打收据"))
    assert question == "补打会被记录，且收据上标注“重打”。继续吗？"
    expect(page).to_have_url(f"{base_url}/counter/receipts/{receipt_no}?done=reprinted")
    expect(page.locator("p.flash.ok")).to_have_text("已登记补打，本张收据标注为重打。")
    expect(receipt.locator("#reprint-mark")).to_have_text("重打 REPRINT 1")
    expect(receipt).to_contain_text("已打印 2 次")
    expect(receipt.locator("#receipt-amount")).to_have_text("30.00")
    assert _prints(store) == [(False, "cashier"), (True, "cashier")]
    assert _payments(store) == [("1001", Decimal("30.00"), "wechat", "cashier")]  # a reprint takes no money
    screenshot(page, "reprint-chinese")

    # What the printer gets: the receipt with its reprint mark; no header, buttons or forms.
    page.emulate_media(media="print")
    expect(receipt).to_be_visible()
    expect(receipt.locator("#reprint-mark")).to_be_visible()
    expect(page.locator("header.top")).to_be_hidden()
    expect(page.get_by_role("button", name="补打收据")).to_be_hidden()
    expect(page.get_by_role("button", name="打印")).to_be_hidden()
    screenshot(page, "reprint-as-printed")
    page.emulate_media(media="screen")

    # Back at the counter: January (its late fee first, then its principal) is paid, and 5.00 of the 30.00
    # went to February's late fee; February's principal is still due.
    page.get_by_role("link", name="返回收费").click()
    expect(page.locator("#due")).to_have_text("40.00")
    expect(page.locator("#late-fees")).to_have_text("0.00")
    expect(bills).to_have_count(1)
    expect(bills.first).to_contain_text("2024-02")
    expect(page.locator("#payments tbody tr").first).to_contain_text(receipt_no)
    expect(page.locator("#payments tbody tr").first).to_contain_text("30.00")
