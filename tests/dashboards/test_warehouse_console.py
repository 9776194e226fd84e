"""The warehouse in the console and the API: master data, documents posted from the form, a short line shown
on the form with nothing written, levels, movements, item and serial pages, Excel exports, permissions."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from decimal import Decimal

from openpyxl import load_workbook

from meterhub.store import Store
from tests.dashboards.conftest import ConsoleClient


def _setup(client: ConsoleClient) -> None:
    for url, form in (
        ("/warehouse/warehouses", {"code": "ZK", "name": "总库", "address": "城东", "keeper": "孙丽"}),
        ("/warehouse/warehouses", {"code": "HD", "name": "河东分库"}),
        ("/warehouse/categories", {"code": "PART", "name": "配件"}),
        ("/warehouse/suppliers", {"code": "S1", "name": "华阳燃气设备", "phone": "0755-1"}),
        (
            "/warehouse/items",
            {"code": "BV-15", "name": "球阀", "spec": "DN15", "unit": "个", "category": "PART", "price": "35.00"},
        ),
        ("/warehouse/items", {"code": "M-G25", "name": "燃气表", "unit": "台", "serial_tracked": "1"}),
    ):
        client.get(url)
        response = client.post(url, form)
        assert response.status_code == 303, response.text


def _doc_count(store: Store) -> int:
    with store.connection() as conn:
        row = conn.execute("SELECT count(*) FROM stock_doc").fetchone()
    return int(row[0]) if row else 0


def test_stock_in_and_out_through_the_pages(signed_in: Callable[[str], ConsoleClient], store: Store) -> None:
    keeper = signed_in("storekeeper")
    _setup(keeper)
    keeper.get("/warehouse/documents/new?kind=purchase")
    response = keeper.post("/warehouse/documents", {
        "kind": "purchase", "warehouse": "ZK", "supplier": "S1", "reference": "DN-1",
        "item_1": "BV-15", "quantity_1": "10", "price_1": "35.00",
        "item_2": "M-G25", "serial_2": "SN01, SN02\nSN03",
    })  # fmt: skip
    assert response.status_code == 303
    doc_url = response.headers["location"]
    page = keeper.get(doc_url)
    assert "SN02" in page.text and "350.00" in page.text
    levels = keeper.get("/warehouse")
    assert re.search(r'data-item="M-G25" data-warehouse="ZK">.*?<td class="num qty">3</td>', levels.text, re.S)

    keeper.get("/warehouse/documents/new?kind=repair")
    before = _doc_count(store)
    short = keeper.post("/warehouse/documents", {
        "kind": "transfer", "warehouse": "ZK", "to_warehouse": "HD", "item_1": "M-G25", "serial_1": "SN01",
        "item_2": "BV-15", "quantity_2": "10.5",
    })  # fmt: skip
    assert short.status_code == 409
    assert "Line 2 · Quantity: not enough stock: BV-15 has 10 left, 10.5 wanted." in short.text
    assert 'name="quantity_2"' in short.text and 'value="10.5"' in short.text  # the form is kept
    assert _doc_count(store) == before
    moved = keeper.post("/warehouse/documents", {
        "kind": "transfer", "warehouse": "ZK", "to_warehouse": "HD", "item_1": "M-G25", "serial_1": "SN01",
        "item_2": "BV-15", "quantity_2": "4.5",
    })  # fmt: skip
    assert moved.status_code == 303

    item = keeper.get("/warehouse/items/BV-15")
    assert item.status_code == 200 and "5.5" in item.text and "4.5" in item.text
    serial = keeper.get("/warehouse/serials/SN01")
    assert serial.status_code == 200 and "河东分库" in serial.text
    assert keeper.get("/warehouse/movements?serial=SN01").text.count("SN01</a>") == 3  # in, out of ZK, into HD
    assert keeper.get("/warehouse/documents?q=DN-1").text.count("/warehouse/documents/RK") == 1

    exported = keeper.http.get("/warehouse?format=xlsx")
    assert exported.status_code == 200
    sheet = load_workbook(io.BytesIO(exported.content)).active
    assert sheet is not None
    rows = [tuple(r) for r in sheet.iter_rows(values_only=True)]
    assert rows[0][:2] == ("Warehouse", "Item")
    assert ("HD", "BV-15", "球阀", "DN15", "个", "配件", 4.5) in rows
    for url in (
        "/warehouse/documents?format=xlsx",
        "/warehouse/movements?format=xlsx",
        "/warehouse/items?format=xlsx",
        "/warehouse/suppliers?format=xlsx",
        "/warehouse/warehouses?format=csv",
        "/warehouse/categories?format=xlsx",
    ):
        assert keeper.http.get(url).status_code == 200, url


def test_the_api_keeps_quantities_exact_and_refuses_short_documents(
    signed_in: Callable[[str], ConsoleClient], store: Store
) -> None:
    keeper = signed_in("storekeeper")
    _setup(keeper)
    headers = {"X-CSRF-Token": keeper.csrf}
    created = keeper.http.post("/api/v1/warehouse/documents", headers=headers, json={
        "kind": "purchase", "warehouse": "ZK", "supplier": "S1",
        "lines": [{"item": "BV-15", "quantity": "0.1", "unit_price": "0.10"},
                  {"item": "BV-15", "quantity": "0.2", "unit_price": "0.10"}],
    })  # fmt: skip
    assert created.status_code == 201, created.text
    assert created.json()["amount"] == "0.03"
    stock = keeper.http.get("/api/v1/warehouse/stock").json()
    assert [(i["item"], i["quantity"]) for i in stock["items"]] == [("BV-15", "0.300")]
    assert Decimal(stock["items"][0]["quantity"]) == Decimal("0.3")
    short = keeper.http.post("/api/v1/warehouse/documents", headers=headers, json={
        "kind": "scrap", "warehouse": "ZK", "lines": [{"item": "BV-15", "quantity": "0.301"}],
    })  # fmt: skip
    assert short.status_code == 409 and short.json()["error"] == "short"
    assert _doc_count(store) == 1
    assert keeper.http.get(f"/api/v1/warehouse/documents/{created.json()['doc_no']}").status_code == 200
    assert keeper.http.get("/api/v1/warehouse/items/BV-15").json()["quantity"] == "0.300"


def test_who_may_do_what(signed_in: Callable[[str], ConsoleClient]) -> None:
    engineer = signed_in("engineer")  # warehouse.view only
    assert engineer.get("/warehouse").status_code == 200
    assert engineer.get("/warehouse/documents/new").status_code == 403
    assert "/warehouse/documents/new" not in engineer.get("/warehouse").text
    cashier = signed_in("cashier")
    assert cashier.get("/warehouse").status_code == 403
    assert cashier.http.get("/api/v1/warehouse/stock").status_code == 403
    empty = signed_in("auditor")
    for url in (
        "/warehouse",
        "/warehouse/documents",
        "/warehouse/movements",
        "/warehouse/items",
        "/warehouse/warehouses",
        "/warehouse/suppliers",
        "/warehouse/categories",
    ):
        assert empty.get(url).status_code == 200, url
    assert empty.get("/warehouse/items/NOPE").status_code == 404
