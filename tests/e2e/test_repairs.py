"""Repairs in a browser: a billing clerk registers a customer's call, a supervisor dispatches it to the
engineer with the repair kind's commission, the engineer starts it, attaches a photo (previewed on the
page), and completes it with a valve and seals from the district store — refused whole while the store is
short — then the stock is lower and the commission report shows the engineer's month (in Chinese too)."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from decimal import Decimal

from playwright.sync_api import Page, expect

from meterhub import warehouse
from meterhub.store import Store
from meterhub.warehouse import DocInput, ItemInput, LineInput
from tests.e2e.helpers import login, screenshot, submit, switch_language
from tests.meterhub.factories import make_meter


def tiny_png() -> bytes:
    """A valid 2×2 PNG (so that the browser really renders the preview)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\xd0\x40\x20" * 2 for _ in range(2))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _stock(store: Store) -> dict[str, Decimal]:
    with store.connection() as conn:
        rows = conn.execute("SELECT i.code, s.quantity FROM stock s JOIN item i ON i.id = s.item_id").fetchall()
    return {r[0]: Decimal(r[1]) for r in rows}


def test_register_dispatch_complete_with_materials_and_commission(
    new_page: Callable[..., Page], base_url: str, users: dict[str, int], store: Store
) -> None:
    with store.transaction(actor="setup") as conn:
        conn.execute("SELECT meterhub_repair_defaults()")
        make_meter(conn, 1)  # account AC1 of 张三, 13800000000
        conn.execute("UPDATE account SET address = '幸福路 1 号 3-201'")
        conn.execute("UPDATE staff_user SET display_name = '赵磊' WHERE username = 'engineer'")
    warehouse.save_warehouse(store, "setup", code="HD", name="河东分库")
    warehouse.save_supplier(store, "setup", code="S1", name="华阳燃气设备")
    warehouse.save_item(store, "setup", ItemInput(code="BV-15", name="Ball valve", spec="DN15"))
    warehouse.save_item(store, "setup", ItemInput(code="SEAL", name="Seal", spec="DN20"))
    warehouse.post_document(
        store,
        "setup",
        DocInput(
            kind="purchase", warehouse="HD", supplier="S1", lines=[LineInput("BV-15", "1"), LineInput("SEAL", "10")]
        ),
    )

    clerk = new_page()
    login(clerk, base_url, "billing_clerk")
    clerk.locator("header nav.menu").get_by_role("link", name="Repairs").click()
    expect(clerk.locator("h1")).to_have_text("Repairs")
    clerk.locator("#register-repair").click()
    form = clerk.locator("#repair-form")
    form.get_by_label("Account").fill("AC1")
    form.locator('select[name="kind"]').select_option("leak")
    form.get_by_label("Description").fill("Smell of gas in the kitchen, near the meter valve")
    submit(clerk, clerk.locator("#register-submit"))
    expect(clerk.locator("p.flash.ok")).to_have_text("Repair registered.")
    expect(clerk.locator("#repair-status")).to_have_text("Registered")
    expect(clerk.locator("#repair-facts")).to_contain_text("幸福路 1 号 3-201")
    expect(clerk.locator("#dispatch")).to_have_count(0)
    repair_url = clerk.url.split("?")[0]

    supervisor = new_page()
    login(supervisor, base_url, "supervisor")
    supervisor.goto(repair_url)
    dispatch = supervisor.locator("#dispatch form")
    dispatch.locator('select[name="engineer"]').select_option("engineer")
    submit(supervisor, dispatch.get_by_role("button", name="Dispatch"))
    expect(supervisor.locator("#repair-engineer")).to_have_text("赵磊")
    expect(supervisor.locator("#repair-commission")).to_have_text("80.00")

    engineer = new_page()
    login(engineer, base_url, "engineer")
    engineer.goto(repair_url)
    submit(engineer, engineer.locator("#start form").get_by_role("button", name="Start"))
    expect(engineer.locator("#repair-status")).to_have_text("In progress")
    engineer.locator('#attach-form input[name="file"]').set_input_files(
        files=[{"name": "site-photo.png", "mimeType": "image/png", "buffer": tiny_png()}]
    )
    submit(engineer, engineer.locator("#attach-form").get_by_role("button", name="Upload"))
    preview = engineer.locator("#attachments img.preview")
    expect(preview).to_be_visible()
    assert engineer.evaluate("(img) => img.naturalWidth", preview.element_handle()) == 2

    complete = engineer.locator("#complete form")
    complete.get_by_label("Result").fill("Replaced the meter valve and its seals; leak test passed")
    complete.locator('select[name="warehouse"]').select_option("HD")
    complete.locator('select[name="item_1"]').select_option("BV-15")
    complete.locator('input[name="quantity_1"]').fill("2")
    complete.locator('select[name="item_2"]').select_option("SEAL")
    complete.locator('input[name="quantity_2"]').fill("2")
    response = submit(engineer, engineer.locator("#complete-submit"))
    assert response is not None and response.status == 409
    expect(engineer.get_by_role("alert")).to_have_text(
        "Line 1 · Quantity: not enough stock: BV-15 has 1 left, 2 wanted."
    )
    expect(engineer.locator("#repair-status")).to_have_text("In progress")
    assert _stock(store) == {"BV-15": Decimal(1), "SEAL": Decimal(10)}
    screenshot(engineer, "short-materials")
    engineer.locator('#complete form input[name="quantity_1"]').fill("1")
    submit(engineer, engineer.locator("#complete-submit"))
    expect(engineer.locator("p.flash.ok")).to_have_text("Completed; materials taken out of stock.")
    expect(engineer.locator("#repair-status")).to_have_text("Completed")
    expect(engineer.locator("#materials")).to_contain_text("SEAL")
    assert _stock(store) == {"BV-15": Decimal(0), "SEAL": Decimal(8)}

    engineer.locator("#stock-doc").click()
    expect(engineer.locator("#doc-kind")).to_have_text("Repair")
    engineer.goto(f"{base_url}/warehouse?zero=true")
    expect(engineer.locator('#levels tr[data-item="SEAL"] td.qty')).to_have_text("8")
    expect(engineer.locator('#levels tr[data-item="BV-15"] td.qty')).to_have_text("0")

    supervisor.locator("#repairs-tabs").get_by_role("link", name="Commissions").click()
    row = supervisor.locator('#commissions tr[data-engineer="engineer"]')
    expect(row).to_have_count(1)
    expect(row).to_contain_text("赵磊")
    expect(row.locator("td").nth(2)).to_have_text("1")
    expect(row.locator("td").nth(3)).to_have_text("80.00")
    expect(row.locator("td").first).to_have_text(re.compile(r"^\d{4}-\d{2}$"))
    switch_language(supervisor)
    expect(supervisor.locator("h1")).to_have_text("维修提成")
    expect(supervisor.locator("#commission-total")).to_have_text("80.00")
