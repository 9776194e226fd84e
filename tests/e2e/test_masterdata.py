"""批量建档 in a browser: a billing clerk downloads the template from the master-data pages, fills it in, uploads
it with a bad row and is shown the row and column at fault with nothing created, fixes the row, uploads
again, and finds the new accounts — the installed meter and the installation order included (and the
master-data page in Chinese)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from openpyxl import load_workbook
from playwright.sync_api import Page, expect

from meterhub.store import Store
from tests.e2e.helpers import login, screenshot, submit
from tests.meterhub.factories import make_meter


def _counts(store: Store) -> tuple[int, int, int]:
    with store.connection() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM account), (SELECT count(*) FROM meter), (SELECT count(*) FROM install_order)"
        ).fetchone()
    assert row is not None
    return (int(row[0]), int(row[1]), int(row[2]))


def _filled(template: Path, usage_type: str) -> bytes:
    """The template with two households below its example row; the second with `usage_type`."""
    book = load_workbook(template)
    sheet = book.worksheets[0]
    header = [str(c.value).split()[1] for c in sheet[1]]

    def put(row: int, values: dict[str, str]) -> None:
        for key, value in values.items():
            sheet.cell(row=row, column=header.index(key) + 1, value=value)

    put(3, {"customer_name": "孙丽", "phone": "13655550001", "community": "C1", "building": "5",
            "address": "5号楼 1单元 101", "usage_type": "RES", "meter_no": "NB20260001", "model": "GX/G2.5 NB-IoT",
            "initial_reading": "0.000"})  # fmt: skip
    put(4, {"customer_name": "周强", "phone": "13655550002", "community": "C1", "building": "5",
            "address": "5号楼 1单元 102", "usage_type": usage_type, "installer": "I01"})  # fmt: skip
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def test_a_clerk_creates_accounts_from_the_excel_template(
    new_page: Callable[..., Page], base_url: str, users: dict[str, int], store: Store, tmp_path: Path
) -> None:
    with store.transaction(actor="setup") as conn:
        ids = make_meter(conn, 1)
        conn.execute("UPDATE community SET name = '幸福小区' WHERE code = 'C1'")
        conn.execute("UPDATE usage_type SET name = '居民生活用气', name_en = 'Residential' WHERE code = 'RES'")
        conn.execute("INSERT INTO building (community_id, code, name) VALUES (%s, '5', '5号楼')", [ids["community"]])
        conn.execute("INSERT INTO manufacturer (code, name) VALUES ('GX', '金秀仪表')")
        conn.execute(
            "INSERT INTO meter_model (manufacturer_id, name, driver_key, has_valve) "
            "SELECT id, 'G2.5 NB-IoT', 'native_json', true FROM manufacturer"
        )
        conn.execute("INSERT INTO installer (code, name) VALUES ('I01', '安装一班 马刚')")
    before = _counts(store)
    page = new_page()
    login(page, base_url, "billing_clerk")
    page.locator("header nav.menu").get_by_role("link", name="Master data").click()
    expect(page.locator("h1")).to_have_text("Master data")
    page.locator("#master-nav").get_by_role("link", name="Bulk creation").click()
    expect(page.locator("h1")).to_have_text("Bulk creation")

    with page.expect_download() as download:
        page.locator("#template-link").click()
    template = tmp_path / "template.xlsx"
    download.value.save_as(template)
    assert download.value.suggested_filename == "bulk_create_template.xlsx"
    codes = load_workbook(template).worksheets[1]
    assert "GX/G2.5 NB-IoT" in {c.value for row in codes.iter_rows() for c in row}

    page.locator('#bulk-form input[type="file"]').set_input_files(
        {"name": "幸福小区5号楼.xlsx", "mimeType": "application/octet-stream", "buffer": _filled(template, "GAS")}
    )
    response = submit(page, page.locator("#upload"))
    assert response is not None and response.status == 422
    expect(page.get_by_role("alert")).to_contain_text("nothing was created")
    problems = page.locator("#issues tbody tr")
    expect(problems).to_have_count(1)
    expect(problems.first.locator("td").nth(0)).to_have_text("4")
    expect(problems.first.locator("td").nth(1)).to_have_text("K · Usage type")
    expect(problems.first.locator("td").nth(2)).to_have_text("no code GAS.")
    assert _counts(store) == before  # the good row was not created either
    screenshot(page, "refused")

    page.locator('#bulk-form input[type="file"]').set_input_files(
        {"name": "幸福小区5号楼.xlsx", "mimeType": "application/octet-stream", "buffer": _filled(template, "RES")}
    )
    response = submit(page, page.locator("#upload"))
    assert response is not None and response.status == 200
    expect(page.locator("p.flash.ok")).to_have_text("Created 2 account(s), installed 1 meter(s), dispatched 1.")
    assert _counts(store) == (before[0] + 2, before[1] + 1, before[2] + 1)
    expect(page.locator("#recent tbody tr").first).to_contain_text("幸福小区5号楼.xlsx")
    screenshot(page, "created")

    page.locator("#created a").first.click()
    expect(page.locator("h1")).to_contain_text("孙丽")
    expect(page.locator("#meters")).to_contain_text("NB20260001")
    expect(page.locator("#history")).to_contain_text("billing_clerk")

    page.locator("header nav.menu").get_by_role("link", name="Customers").click()
    page.get_by_role("search").locator('input[name="q"]').fill("13655550002")
    submit(page, page.get_by_role("search").get_by_role("button", name="Search"))
    results = page.locator("#results tbody tr")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text("周强")

    page.goto(f"{base_url}/master/dispatch/orders?installer=I01")
    expect(page.locator("#orders tbody tr")).to_have_count(1)
    expect(page.locator("#orders tbody tr").first).to_contain_text("周强")

    chinese = new_page(locale="zh-CN")
    login(chinese, base_url, "billing_clerk")
    chinese.goto(f"{base_url}/master/bulk")
    expect(chinese.locator("h1")).to_have_text("批量建档")
    expect(chinese.locator("#recent tbody tr")).to_have_count(1)
