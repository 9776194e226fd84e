"""The SMS pages and API: history with search and export, sending by a condition after a preview, templates,
automatic notices, delivery reports, permissions and areas."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from openpyxl import load_workbook

from meterhub import sms
from meterhub.store import Store
from tests.dashboards.conftest import ConsoleClient, add_user
from tests.meterhub.factories import make_meter


def _town(store: Store) -> dict[str, Any]:
    with store.transaction(actor="setup") as conn:
        conn.execute("SELECT meterhub_sms_defaults()")
        made = [make_meter(conn, n) for n in (1, 2)]
        conn.execute("UPDATE customer SET name = '王五', phone = '13900000002' WHERE id = %s", [made[1]["customer"]])
        areas = dict(conn.execute("SELECT code, id FROM area").fetchall())
    return {"made": made, "areas": areas}


def zh(client: ConsoleClient) -> ConsoleClient:
    """The client as a browser set to Chinese (the staff's language)."""
    client.http.headers["accept-language"] = "zh-CN,zh;q=0.9"
    return client


def _messages(store: Store) -> list[tuple[Any, ...]]:
    with store.connection() as conn:
        return conn.execute(
            "SELECT recipient_name, phone, body, state, created_by FROM sms_message ORDER BY id"
        ).fetchall()


def test_preview_then_send_to_a_community_and_see_the_history(
    store: Store, signed_in: Callable[[str], ConsoleClient]
) -> None:
    _town(store)
    client = zh(signed_in("supervisor"))
    page = client.get(
        "/sms/send",
        params={"kind": "community", "value": "C2", "body": "{customer_name}您好，明日检修。", "preview": "1"},
    )
    assert page.status_code == 200
    assert 'id="preview-count"' in page.text and "共 1 位接收人" in page.text
    assert "王五您好，明日检修。" in page.text
    assert _messages(store) == []  # a preview changes nothing
    refused = client.post("/sms/send", {"kind": "community", "value": "C2", "body": "{customer_name}您好，明日检修。"})
    assert refused.status_code == 422 and "请先预览接收人" in refused.text
    done = client.post(
        "/sms/send",
        {"kind": "community", "value": "C2", "body": "{customer_name}您好，明日检修。", "expected_count": "1"},
    )
    assert done.status_code == 303 and done.headers["location"].startswith("/sms?batch=")
    assert _messages(store) == [("王五", "13900000002", "王五您好，明日检修。", "queued", "supervisor")]
    history = client.get(done.headers["location"])
    assert "已加入发送队列：1 条。" in history.text and "王五您好，明日检修。" in history.text
    sms.send_all(store, store.settings.sms)
    found = client.get("/sms", params={"q": "13900000002", "state": "sent"})
    assert "王五您好" in found.text
    export = client.get("/sms", params={"format": "xlsx"})
    sheet = load_workbook(io.BytesIO(export.content)).active
    rows = list(sheet.iter_rows(values_only=True))
    assert (
        rows[0][:3] == ("编号", "创建时间", "接收人")
        and rows[1][5] == "王五您好，明日检修。"
        and rows[1][6] == "已发送"
    )
    with store.connection() as conn:
        oplog = conn.execute("SELECT action, object_type FROM audit_log WHERE action = 'sms.send_submit'").fetchall()
    assert ("sms.send_submit", "sms_batch") in oplog
    message_id = client.get("/api/v1/sms/messages").json()["messages"][0]["id"]
    detail = client.get(f"/sms/messages/{message_id}")
    assert detail.status_code == 200 and "已发送" in detail.text


def test_a_bad_condition_is_reported_and_nothing_is_written(
    store: Store, signed_in: Callable[[str], ConsoleClient]
) -> None:
    _town(store)
    client = zh(signed_in("supervisor"))
    page = client.get("/sms/send", params={"kind": "accounts", "value": "AC1 AC9", "body": "x", "preview": "1"})
    assert page.status_code == 422 and "户号不存在" in page.text and "AC9" in page.text
    sent = client.post(
        "/sms/send", {"kind": "community", "value": "C1", "body": "欠费{amount}元", "expected_count": "1"}
    )
    assert sent.status_code == 422 and "该接收人无法填写占位符" in sent.text
    assert _messages(store) == []


def test_templates_page_and_api_refuse_unknown_placeholders(
    store: Store, signed_in: Callable[[str], ConsoleClient]
) -> None:
    _town(store)
    client = zh(signed_in("supervisor"))
    bad = client.post("/sms/templates", {"new": "1", "code": "maint", "name": "检修", "body": "{who}请注意"})
    assert bad.status_code == 422 and "模板中有未知的占位符" in bad.text and "{who}" in bad.text
    good = client.post(
        "/sms/templates", {"new": "1", "code": "maint", "name": "检修", "body": "{community}检修", "active": "1"}
    )
    assert good.status_code == 303
    listing = client.get("/sms/templates")
    assert "maint" in listing.text and "{community}检修" in listing.text
    assert client.get("/sms/templates/maint").status_code == 200
    api = client.http.put(
        "/api/v1/sms/templates/maint", json={"name": "检修", "body": "{nope}"}, headers={"X-CSRF-Token": client.csrf}
    )
    assert api.status_code == 422 and api.json()["error"] == "unknown_placeholder"
    api = client.http.put(
        "/api/v1/sms/templates/maint",
        json={"name": "检修2", "body": "{community}明日检修"},
        headers={"X-CSRF-Token": client.csrf},
    )
    assert api.status_code == 200 and api.json()["placeholders"] == ["community"] and not api.json()["created"]
    codes = [t["code"] for t in client.get("/api/v1/sms/templates").json()["templates"]]
    assert "maint" in codes and "notice.reading" in codes


def test_notice_settings_and_scan(store: Store, signed_in: Callable[[str], ConsoleClient]) -> None:
    _town(store)
    client = zh(signed_in("supervisor"))
    page = client.get("/sms/notices")
    assert page.status_code == 200 and "欠费提醒" in page.text
    saved = client.post(
        "/sms/notices/arrears",
        {
            "enabled": "1",
            "template": "notice.arrears",
            "min_amount": "80",
            "min_days_overdue": "10",
            "repeat_days": "0",
        },
    )
    assert saved.status_code == 303
    rules = {r["kind"]: r for r in client.get("/api/v1/sms/notices").json()["notices"]}
    assert rules["arrears"]["params"] == {"min_amount": "80", "min_days_overdue": 10, "repeat_days": 0}
    bad = client.post("/sms/notices/arrears", {"template": "notice.arrears", "min_amount": "abc"})
    assert bad.status_code == 422
    unfit = client.http.put(
        "/api/v1/sms/notices/reading",
        json={"enabled": True, "template": "notice.valve_closed"},
        headers={"X-CSRF-Token": client.csrf},
    )
    assert unfit.status_code == 422 and unfit.json()["error"] == "unfit_template"
    scan = client.post("/sms/notices/scan")
    assert scan.status_code == 303 and "scanned=0" in scan.headers["location"]
    assert (
        client.http.post("/api/v1/sms/notices/scan", headers={"X-CSRF-Token": client.csrf}).json()["added"]["reading"]
        == 0
    )


def test_a_reader_sees_history_but_cannot_send_or_edit(store: Store, signed_in: Callable[[str], ConsoleClient]) -> None:
    _town(store)
    client = zh(signed_in("auditor"))
    with store.connection() as conn:
        grants = {r[0] for r in conn.execute("SELECT permission FROM role_permission WHERE role = 'auditor'")}
    if "sms.view" in grants:
        page = client.get("/sms/notices")
        assert page.status_code == 200 and 'action="/sms/notices/arrears"' not in page.text
    assert client.get("/sms/send").status_code == 403
    assert client.post("/sms/templates", {"code": "x", "name": "x", "body": "x"}).status_code == 403


def test_area_limited_staff_reach_only_their_areas(
    store: Store, client_factory: Callable[[], ConsoleClient], users: dict[str, int]
) -> None:
    town = _town(store)
    add_user(store, "east_clerk", "supervisor", areas=[town["areas"]["A2"]])
    client = zh(client_factory())
    assert client.login("east_clerk").status_code == 303
    page = client.get("/sms/send", params={"kind": "area", "value": "A1", "body": "x", "preview": "1"})
    assert "共 0 位接收人" in page.text
    page = client.get("/sms/send", params={"kind": "area", "value": "A2", "body": "x", "preview": "1"})
    assert "共 1 位接收人" in page.text


def test_delivery_report_endpoint(store: Store, signed_in: Callable[[str], ConsoleClient]) -> None:
    _town(store)
    with store.transaction() as conn:
        sms.send(conn, sms.Condition("phones", "13800000001"), body="你好")
        conn.execute("UPDATE sms_message SET state = 'sent', provider_message_id = 'P77', gateway = 'http'")
    client = zh(signed_in("supervisor"))
    answer = client.http.post(
        "/api/v1/sms/delivery-reports",
        json=[{"msgid": "P77", "status": "DELIVRD"}, {"msgid": "P78", "status": "DELIVRD"}],
        headers={"X-CSRF-Token": client.csrf},
    )
    assert answer.status_code == 200
    assert [r["outcome"] for r in answer.json()["reports"]] == ["delivered", "unknown"]
    assert _messages(store)[0][3] == "delivered"


def test_pages_work_on_empty_tables(store: Store, signed_in: Callable[[str], ConsoleClient]) -> None:
    client = zh(signed_in("admin"))
    for url in ("/sms", "/sms/send", "/sms/templates", "/sms/notices", "/sms/templates/new"):
        assert client.get(url).status_code == 200, url
    assert "还没有模板" in client.get("/sms/templates").text
    assert client.get("/sms/templates?format=xlsx").status_code == 200
