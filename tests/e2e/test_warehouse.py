"""Warehouse in a browser: a storekeeper takes materials and meters into stock from a supplier, is told which
line is short when a stock-out asks for too much (nothing is written), takes the rest out, and reads the
levels; an engineer installs one of the meters through the meter page and it leaves stock. The stock page
in Chinese too."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from playwright.sync_api import Page, expect

from meterhub import warehouse
from meterhub.store import Store
from meterhub.warehouse import ItemInput
from tests.e2e.helpers import login, screenshot, submit, switch_language
from tests.meterhub.factories import make_meter


def _levels(store: Store) -> dict[tuple[str, str], Decimal]:
    with store.connection() as conn:
        rows = conn.execute(
            """SELECT w.code, i.code, s.quantity FROM stock s JOIN warehouse w ON w.id = s.warehouse_id
                 JOIN item i ON i.id = s.item_id"""
        ).fetchall()
    return {(r[0], r[1]): Decimal(r[2]) for r in rows}


def _docs(store: Store) -> list[tuple[Any, ...]]:
    with store.connection() as conn:
        return conn.execute("SELECT kind, created_by FROM stock_doc ORDER BY id").fetchall()


def test_stock_in_stock_out_and_levels(
    new_page: Callable[..., Page], base_url: str, users: dict[str, int], store: Store
) -> None:
    with store.transaction(actor="setup") as conn:
        make_meter(conn, 1)  # account AC1
        conn.execute("INSERT INTO manufacturer (code, name) VALUES ('GC', '金卡')")
        conn.execute(
            "INSERT INTO meter_model (manufacturer_id, name, driver_key) "
            "SELECT id, 'G2.5 NB', 'native_json' FROM manufacturer"
        )
    warehouse.save_warehouse(store, "setup", code="ZK", name="总库")
    warehouse.save_supplier(store, "setup", code="GOLDCARD", name="金卡智能集团")
    warehouse.save_item(store, "setup", ItemInput(code="BV-15", name="Ball valve", spec="DN15"))
    warehouse.save_item(
        store, "setup", ItemInput(code="M-G25", name="NB-IoT meter", unit="台", meter_model="GC/G2.5 NB")
    )
    page = new_page()
    login(page, base_url, "storekeeper")
    page.locator("header nav.menu").get_by_role("link", name="Warehouse").click()
    expect(page.locator("h1")).to_have_text("Warehouse · stock")
    expect(page.locator("#no-results")).to_be_visible()

    page.locator("#stock-in").click()
    form = page.locator("#document-form")
    form.locator('select[name="kind"]').select_option("purchase")
    form.locator('select[name="warehouse"]').select_option("ZK")
    form.locator('select[name="supplier"]').select_option("GOLDCARD")
    form.locator('input[name="reference"]').fill("JK-2026-118")
    form.locator('select[name="item_1"]').select_option("BV-15")
    form.locator('input[name="quantity_1"]').fill("10")
    form.locator('input[name="price_1"]').fill("35.00")
    form.locator('select[name="item_2"]').select_option("M-G25")
    form.locator('textarea[name="serial_2"]').fill("WH0001 WH0002")
    form.locator('input[name="price_2"]').fill("420.00")
    screenshot(page, "purchase-form")
    submit(page, page.locator("#post-document"))
    expect(page.locator("p.flash.ok")).to_have_text("Document posted; stock updated.")
    expect(page.locator("h1")).to_contain_text(re.compile(r"Stock in RK\d{8}-\d{6}"))
    expect(page.locator("#doc-total")).to_have_text("1,190.00")
    assert _levels(store) == {("ZK", "BV-15"): Decimal(10), ("ZK", "M-G25"): Decimal(2)}

    page.locator("#stock-out").click()
    form = page.locator("#document-form")
    form.locator('select[name="kind"]').select_option("scrap")
    form.locator('select[name="warehouse"]').select_option("ZK")
    form.locator('select[name="item_1"]').select_option("BV-15")
    form.locator('input[name="quantity_1"]').fill("4")
    form.locator('select[name="item_2"]').select_option("BV-15")
    form.locator('input[name="quantity_2"]').fill("7")
    response = submit(page, page.locator("#post-document"))
    assert response is not None and response.status == 409
    expect(page.get_by_role("alert")).to_have_text("Line 2 · Quantity: not enough stock: BV-15 has 6 left, 7 wanted.")
    expect(page.locator("#lines tr.flagged")).to_have_count(1)
    assert _levels(store)[("ZK", "BV-15")] == Decimal(10) and len(_docs(store)) == 1
    screenshot(page, "short-refused")
    form.locator('input[name="quantity_2"]').fill("1.5")
    submit(page, page.locator("#post-document"))
    expect(page.locator("#doc-kind")).to_have_text("Scrapping")

    page.locator("#warehouse-tabs").get_by_role("link", name="Stock", exact=True).click()
    expect(page.locator('#levels tr[data-item="BV-15"] td.qty')).to_have_text("4.5")
    expect(page.locator('#levels tr[data-item="M-G25"] td.qty')).to_have_text("2")
    page.locator("#warehouse-tabs").get_by_role("link", name="Movements").click()
    expect(page.locator("#movements tbody tr")).to_have_count(5)

    engineer = new_page()
    login(engineer, base_url, "engineer")
    engineer.goto(f"{base_url}/meters/WH0001")
    expect(engineer.locator("#install-stock-hint")).to_be_visible()
    install = engineer.locator("#install form")
    install.locator('input[name="account_no"]').fill("AC1")
    submit(engineer, install.get_by_role("button", name="Install"))
    expect(engineer).to_have_url(re.compile(r"/meters/WH0001\?done=install$"))
    assert _docs(store) == [("purchase", "storekeeper"), ("scrap", "storekeeper"), ("install", "engineer")]

    page.goto(f"{base_url}/warehouse/serials/WH0001")
    expect(page.locator("#serial-status")).to_have_text("Issued")
    page.goto(f"{base_url}/warehouse")
    expect(page.locator('#levels tr[data-item="M-G25"] td.qty')).to_have_text("1")
    switch_language(page)
    expect(page.locator("h1")).to_have_text("仓库管理 · 库存")
    expect(page.locator("#warehouse-tabs")).to_contain_text("出入库单")
    assert _levels(store) == {("ZK", "BV-15"): Decimal("4.5"), ("ZK", "M-G25"): Decimal(1)}
