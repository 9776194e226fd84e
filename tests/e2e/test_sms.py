"""短信平台 in a browser: a supervisor writes a template (an unknown placeholder is refused first), sends it to a
community after previewing the recipients, and follows the messages in the history until the sender has
handed them to the outbox; the history reads in Chinese too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from meterhub import sms
from meterhub.store import Store
from tests.e2e.helpers import login, screenshot, submit, submit_confirmed, switch_language
from tests.meterhub.factories import make_meter


def test_a_supervisor_sends_a_template_to_a_community(
    new_page: Callable[..., Page], base_url: str, users: dict[str, int], store: Store
) -> None:
    with store.transaction(actor="setup") as conn:
        conn.execute("SELECT meterhub_sms_defaults()")
        for n in (1, 2, 3):
            make_meter(conn, n)
        conn.execute(
            "UPDATE account SET community_id = (SELECT id FROM community WHERE code = 'C1') WHERE account_no <> 'AC3'"
        )
        conn.execute("UPDATE community SET name = '幸福小区' WHERE code = 'C1'")
        conn.execute("UPDATE customer SET name = '王五', phone = '13900000002' WHERE customer_no = 'CU2'")
    page = new_page()
    login(page, base_url, "supervisor")
    page.locator("header nav.menu").get_by_role("link", name="SMS").click()
    expect(page.locator("h1")).to_have_text("SMS")
    expect(page.locator("#no-messages")).to_be_visible()

    page.locator("#sms-templates-link").click()
    page.locator("#new-template").click()
    form = page.locator("#template-form")
    form.locator('input[name="code"]').fill("maint")
    form.locator('input[name="name"]').fill("管网检修")
    form.locator('textarea[name="body"]').fill("{customer_name}您好，{community}明日检修，联系{contact}。")
    response = submit(page, page.locator("#save-template"))
    assert response is not None and response.status == 422
    expect(page.get_by_role("alert")).to_contain_text("Unknown placeholder in the text")
    expect(page.get_by_role("alert")).to_contain_text("{contact}")
    form.locator('textarea[name="body"]').fill("{customer_name}您好，{community}明日8:00-12:00管网检修，暂停供气。")
    submit(page, page.locator("#save-template"))
    expect(page.locator("#templates")).to_contain_text("管网检修")

    page.locator("#sms-send-link").click()
    send = page.locator("#send-form")
    send.locator('select[name="kind"]').select_option("community")
    send.locator('input[name="value"]').fill("C1")
    send.locator('select[name="template"]').select_option("maint")
    submit(page, page.locator("#preview-button"))
    expect(page.locator("#preview-count")).to_have_text(
        "2 recipients, 0 of them without a valid phone (recorded as failed)."
    )
    expect(page.locator("#sample-text")).to_have_text("张三您好，幸福小区明日8:00-12:00管网检修，暂停供气。")
    expect(page.locator("#preview-recipients tbody tr")).to_have_count(2)
    screenshot(page, "preview")
    question = submit_confirmed(page, page.locator("#send-button"))
    assert question == "Send to 2 recipients?"
    expect(page.locator(".flash.ok")).to_have_text("Queued: 2 messages.")
    expect(page.locator("#sms-history tbody tr")).to_have_count(2)
    expect(page.locator("#sms-history")).to_contain_text("王五您好，幸福小区明日8:00-12:00管网检修，暂停供气。")
    expect(page.locator("#sms-history .state-queued")).to_have_count(2)

    assert sms.send_all(store, store.settings.sms) == {"sent": 2, "retry": 0, "failed": 0}
    page.reload()
    expect(page.locator("#sms-history .state-sent")).to_have_count(2)
    expect(page.locator("#count-outbox")).to_have_text("2")
    page.locator("#sms-history").get_by_role("link", name="Details").first.click()
    expect(page.locator("#message-events tbody tr")).to_have_count(2)
    expect(page.locator("#message-state")).to_have_text("Sent")

    switch_language(page)
    expect(page.locator("h1")).to_contain_text("短信")
    expect(page.locator("#message-state")).to_have_text("已发送")
    page.goto(f"{base_url}/sms")
    expect(page.locator("h1")).to_have_text("短信平台")
    expect(page.locator("#sms-history .state-sent").first).to_have_text("已发送")
    screenshot(page, "history-zh")
    with store.connection() as conn:
        outbox: list[Any] = conn.execute("SELECT phone, body FROM sms_outbox ORDER BY id").fetchall()
    assert sorted(outbox) == [
        ("13800000000", "张三您好，幸福小区明日8:00-12:00管网检修，暂停供气。"),
        ("13900000002", "王五您好，幸福小区明日8:00-12:00管网检修，暂停供气。"),
    ]
