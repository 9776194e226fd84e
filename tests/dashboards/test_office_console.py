"""The office pages and API: documents uploaded, versioned, searched and downloaded; work plans; news published
on the home page; messages sent to a user and a role and read by them alone; lists exported to Excel."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from openpyxl import load_workbook

from meterhub.store import Store
from tests.dashboards.conftest import ConsoleClient

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def upload(client: ConsoleClient, url: str, data: dict[str, str], name: str, content: bytes) -> Any:
    return client.http.post(
        url,
        data={**data, "csrf_token": client.csrf},
        files={"file": (name, content, "text/plain")},
        follow_redirects=False,
    )


def test_every_office_page_works_on_empty_tables(signed_in: Callable[[str], ConsoleClient]) -> None:
    admin = signed_in("admin")
    for url in (
        "/office",
        "/office/documents",
        "/office/documents/new",
        "/office/plans",
        "/office/plans/new",
        "/office/news",
        "/office/news/new",
        "/office/messages",
        "/office/messages/sent",
        "/office/messages/new",
    ):
        assert admin.get(url).status_code == 200, url
    reader = signed_in("meter_reader")
    assert reader.get("/office/documents").status_code == 200
    assert reader.get("/office/documents/new").status_code == 403


def test_a_document_is_uploaded_versioned_searched_and_downloaded(
    signed_in: Callable[[str], ConsoleClient], store: Store
) -> None:
    supervisor = signed_in("supervisor")
    supervisor.get("/office/documents/new")
    response = upload(
        supervisor,
        "/office/documents",
        {"title": "安检规程", "tags": "安全, 入户"},
        "安检.txt",
        "检查胶管是否老化".encode(),
    )
    assert response.status_code == 303, response.text
    doc_url = response.headers["location"].split("?")[0]
    supervisor.get(doc_url)
    again = upload(supervisor, f"{doc_url}/versions", {"note": "第二版"}, "安检-2.txt", "胶管 18 个月更换".encode())
    assert again.status_code == 303
    page = supervisor.get(doc_url).text
    assert "v2" in page and "第二版" in page and "安检.txt" in page
    first = supervisor.http.get(f"{doc_url}/versions/1/download")
    assert first.content == "检查胶管是否老化".encode()
    assert "filename*=UTF-8''" in first.headers["content-disposition"]
    assert "安检规程" in supervisor.get("/office/documents?q=18 个月").text
    assert "安检规程" not in supervisor.get("/office/documents?q=nothing-like-it").text
    assert "安检规程" in supervisor.get("/office/documents?tag=入户").text
    sheet = supervisor.http.get("/office/documents?format=xlsx")
    assert sheet.headers["content-type"] == XLSX
    rows = list(load_workbook(io.BytesIO(sheet.content)).active.iter_rows(values_only=True))
    assert rows[1][0] == "安检规程" and rows[1][2] == 2
    # a refused upload: the form again with the message, nothing stored
    empty = upload(supervisor, "/office/documents", {"title": "空"}, "empty.txt", b"")
    assert empty.status_code == 400 and "empty" in empty.text
    with store.connection() as conn:
        row = conn.execute("SELECT count(*), sum(current_version) FROM office_document").fetchone()
    assert row == (1, 2)
    reader = signed_in("meter_reader")
    reader.get("/office")
    assert upload(reader, "/office/documents", {"title": "x"}, "x.txt", b"x").status_code == 403


def test_documents_api(signed_in: Callable[[str], ConsoleClient]) -> None:
    admin = signed_in("admin")
    headers = {"X-CSRF-Token": admin.csrf}
    created = admin.http.post(
        "/api/v1/office/documents",
        data={"title": "价格通知", "tags": "价格"},
        files={"file": ("p.txt", "2.61 元".encode(), "text/plain")},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    doc = created.json()["id"]
    version = admin.http.post(
        f"/api/v1/office/documents/{doc}/versions", files={"file": ("p2.txt", b"3.13", "text/plain")}, headers=headers
    )
    assert version.json() == {"id": doc, "version": 2}
    detail = admin.http.get(f"/api/v1/office/documents/{doc}").json()
    assert [v["version"] for v in detail["versions"]] == [2, 1]
    assert admin.http.get(f"/api/v1/office/documents/{doc}/versions/2/content").content == b"3.13"
    assert admin.http.get("/api/v1/office/documents?q=2.61").json()["items"][0]["id"] == doc
    assert admin.http.get("/api/v1/office/documents/999/versions/1/content").status_code == 404


def test_work_plans_pages_and_api(signed_in: Callable[[str], ConsoleClient]) -> None:
    supervisor = signed_in("supervisor")
    supervisor.get("/office/plans/new")
    response = supervisor.post(
        "/office/plans",
        {
            "title": "3 月抄表",
            "owner": "meter_reader",
            "starts_on": "2025-03-01",
            "due_on": "2025-03-10",
            "status": "planned",
            "description": "城东片区",
        },
    )
    assert response.status_code == 303, response.text
    plan_url = response.headers["location"].split("?")[0]
    bad = supervisor.post(
        plan_url,
        {
            "title": "3 月抄表",
            "owner": "meter_reader",
            "starts_on": "2025-03-01",
            "due_on": "2025-02-01",
            "status": "planned",
        },
    )
    assert bad.status_code == 400 and "due" in bad.text.lower()
    assert "3 月抄表" in supervisor.get("/office/plans?owner=meter_reader").text
    api = supervisor.http.get("/api/v1/office/plans?status=planned").json()["items"]
    assert [(p["title"], p["owner"], p["due_on"]) for p in api] == [("3 月抄表", "meter_reader", "2025-03-10")]
    changed = supervisor.http.put(
        f"/api/v1/office/plans/{api[0]['id']}",
        headers={"X-CSRF-Token": supervisor.csrf},
        json={**{k: api[0][k] for k in ("title", "owner", "starts_on", "due_on")}, "status": "done"},
    )
    assert changed.json()["status"] == "done"
    sheet = supervisor.http.get("/office/plans?format=xlsx")
    assert sheet.headers["content-type"] == XLSX
    reader = signed_in("meter_reader")
    assert reader.get(plan_url).status_code == 200
    assert reader.post(plan_url, {"title": "x"}).status_code == 403


def test_published_news_shows_on_the_home_page_and_withdrawn_news_does_not(
    signed_in: Callable[[str], ConsoleClient],
) -> None:
    supervisor = signed_in("supervisor")
    supervisor.get("/office/news/new")
    draft = supervisor.post("/office/news", {"title": "幸福小区 3 月 5 日停气", "body": "8:00-16:00 管道改造"})
    news_url = draft.headers["location"].split("?")[0]
    cashier = signed_in("cashier")
    assert "幸福小区 3 月 5 日停气" not in cashier.get("/").text
    supervisor.get(news_url)
    assert supervisor.post(f"{news_url}/publish").status_code == 303
    home = cashier.get("/").text
    assert 'id="home-news"' in home and "幸福小区 3 月 5 日停气" in home and "8:00-16:00 管道改造" in home
    assert cashier.post(f"{news_url}/unpublish").status_code == 403
    assert supervisor.post(f"{news_url}/unpublish").status_code == 303
    assert "幸福小区 3 月 5 日停气" not in cashier.get("/").text
    assert supervisor.http.get("/api/v1/office/news?published=true").json()["items"] == []


def test_messages_reach_a_user_and_a_role_and_only_they_read_them(
    signed_in: Callable[[str], ConsoleClient], store: Store
) -> None:
    admin = signed_in("admin")
    admin.get("/office/messages/new")
    sent = admin.post(
        "/office/messages", {"to_role": "meter_reader", "subject": "抄表截止 25 日", "body": "请按时上传"}
    )
    assert sent.status_code == 303 and sent.headers["location"] == "/office/messages/sent?done=1"
    message_id = int(admin.http.get("/api/v1/office/messages/sent").json()["items"][0]["id"])
    reader = signed_in("meter_reader")
    home = reader.get("/").text
    assert 'id="home-messages"' in home and "抄表截止 25 日" in home
    assert "1" in reader.get("/office").text
    assert reader.http.get("/api/v1/office/messages?unread=true").json()["unread"] == 1
    opened = reader.post(f"/office/messages/{message_id}/read")
    assert opened.headers["location"] == f"/office/messages/{message_id}"
    page = reader.get(f"/office/messages/{message_id}").text
    assert "请按时上传" in page and 'id="message-read-at"' in page
    assert reader.http.get("/api/v1/office/messages").json()["unread"] == 0
    cashier = signed_in("cashier")
    assert cashier.get(f"/office/messages/{message_id}").status_code == 404
    assert cashier.post(f"/office/messages/{message_id}/read").status_code == 404
    refused = admin.post("/office/messages", {"to_user": "cashier", "to_role": "cashier", "subject": "x"})
    assert refused.status_code == 400
    reply = reader.http.post(
        "/api/v1/office/messages",
        headers={"X-CSRF-Token": reader.csrf},
        json={"to_user": "admin", "subject": "收到", "body": ""},
    )
    assert reply.status_code == 201 and reply.json()["recipients"] == 1
    assert admin.http.get("/api/v1/office/messages").json()["items"][0]["from"] == "meter_reader"
    with store.connection() as conn:
        row = conn.execute("SELECT count(*) FROM audit_log WHERE action = 'office.send_message'").fetchone()
    assert row is not None and row[0] == 2  # the refused one is logged too
