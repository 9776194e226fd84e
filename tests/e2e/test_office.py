"""办公管理 in the browser: a supervisor uploads a document and finds it by a word of its text, publishes news
that every home page then shows, and sends a message to a meter reader, who reads it in Chinese."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import Page, expect

from meterhub.store import Store
from tests.e2e.helpers import login, logout, screenshot, submit


def test_a_document_news_on_home_and_a_message_read_by_the_other_user(
    new_page: Callable[..., Page], base_url: str, users: dict[str, int], store: Store
) -> None:
    page = new_page()
    login(page, base_url, "supervisor")
    page.locator("header nav.menu").get_by_role("link", name="Office").click()
    expect(page.locator("h1")).to_have_text("Office")

    # A document: uploaded, then found by a word inside it.
    page.locator("#office-nav").get_by_role("link", name="Documents").click()
    page.locator("#new-document").click()
    form = page.locator("#document-form")
    form.get_by_label("Title").fill("户内安全检查规程")
    form.get_by_label("Tags").fill("安全, 入户")
    form.get_by_label("File").set_input_files(
        {"name": "安检规程.txt", "mimeType": "text/plain", "buffer": "检查胶管是否老化、超期（18 个月）。".encode()}
    )
    submit(page, form.get_by_role("button", name="Submit"))
    expect(page.locator(".flash.ok")).to_have_text("The document is uploaded.")
    expect(page.locator("#document-title")).to_have_text("户内安全检查规程")
    expect(page.locator("#versions tbody tr")).to_have_count(1)
    expect(page.locator("#versions")).to_contain_text("安检规程.txt")
    # The download link's file, fetched with the page's session (a download in the page aborts its request).
    href = page.locator("#download-v1").get_attribute("href")
    assert href is not None
    downloaded = page.request.get(f"{base_url}{href}")
    assert downloaded.ok and downloaded.body() == "检查胶管是否老化、超期（18 个月）。".encode()
    assert "filename*=UTF-8''" in downloaded.headers["content-disposition"]
    page.goto(f"{base_url}/office/documents?q=胶管")
    expect(page.locator("#documents tbody tr")).to_have_count(1)
    expect(page.locator("#documents")).to_contain_text("户内安全检查规程")
    screenshot(page, "documents")

    # News, published: the home page shows it.
    page.locator("#office-nav").get_by_role("link", name="News").click()
    page.locator("#new-news").click()
    news = page.locator("#news-form")
    news.get_by_label("Title").fill("幸福小区 3 月 5 日计划停气")
    news.get_by_label("Text").fill("因管道改造，8:00 至 16:00 停气，请用户提前做好准备。")
    submit(page, news.locator("#save-publish"))
    expect(page.locator("#news-state")).to_have_text("Published")
    page.locator("header a#brand").click()
    expect(page.locator("#home-news")).to_contain_text("幸福小区 3 月 5 日计划停气")
    expect(page.locator("#home-news")).to_contain_text("因管道改造")

    # A message to the meter reader.
    page.goto(f"{base_url}/office/messages/new")
    message = page.locator("#message-form")
    message.get_by_label("To user").select_option("meter_reader")
    message.get_by_label("Subject").fill("本月抄表截止 25 日")
    message.get_by_label("Text").fill("请于 25 日前上传手持机数据。")
    submit(page, message.locator("#send"))
    expect(page.locator(".flash.ok")).to_have_text("The message is sent (recipients: 1).")
    expect(page.locator("#messages")).to_contain_text("本月抄表截止 25 日")
    logout(page)

    reader = new_page(locale="zh-CN")
    login(reader, base_url, "meter_reader")
    expect(reader.locator("#home-news")).to_contain_text("幸福小区 3 月 5 日计划停气")
    unread = reader.locator("#home-messages")
    expect(unread.locator("h2")).to_have_text("未读消息 1 条")
    reader.locator("header nav.menu").get_by_role("link", name="办公").click()
    reader.locator("#office-nav").get_by_role("link", name=re.compile("站内消息")).click()
    expect(reader.locator("h1")).to_have_text("站内消息")
    row = reader.locator("#messages tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator(".badge")).to_have_text("未读")
    submit(reader, row.get_by_role("button", name="本月抄表截止 25 日"))
    expect(reader.locator("#message-subject")).to_have_text("本月抄表截止 25 日")
    expect(reader.locator("#message-body")).to_have_text("请于 25 日前上传手持机数据。")
    expect(reader.locator("#message-from")).to_contain_text("(supervisor)")
    expect(reader.locator("#message-read-at")).to_be_visible()
    screenshot(reader, "message")
    reader.goto(f"{base_url}/")
    expect(reader.locator("#home-messages")).to_have_count(0)
    with store.connection() as conn:
        row_read = conn.execute("SELECT read_at IS NOT NULL FROM office_message_recipient").fetchone()
    assert row_read == (True,)
