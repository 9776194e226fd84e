"""Master data in the console and the API: every page renders (empty tables too, both languages), reference
rows created, edited and deactivated with their history, lists exported to Excel, price periods, dispatch,
payment groups, bulk creation by upload (a bad row refuses the whole file), permissions and the operation log."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from openpyxl import load_workbook

from meterhub import bulk_create
from meterhub.store import Store
from tests.dashboards.conftest import ConsoleClient
from tests.meterhub.factories import make_meter

PAGES = (
    "/master",
    "/master/areas",
    "/master/communities",
    "/master/buildings",
    "/master/usage-types",
    "/master/categories",
    "/master/manufacturers",
    "/master/models",
    "/master/installers",
    "/master/readers",
    "/master/prices",
    "/master/dispatch",
    "/master/dispatch/orders",
    "/master/groups",
    "/master/bulk",
    "/master/areas/new",
    "/master/models/new",
)


def oplog(store: Store, action: str) -> list[tuple[Any, ...]]:
    with store.connection() as conn:
        return conn.execute(
            "SELECT actor, object_type, object_id, detail->>'status' FROM audit_log WHERE action = %s ORDER BY id",
            [action],
        ).fetchall()


def test_every_page_renders_on_empty_tables_in_both_languages(
    store: Store, signed_in: Callable[[str], ConsoleClient]
) -> None:
    admin = signed_in("admin")
    for lang in ("en", "zh"):
        admin.http.cookies.set("mh_lang", lang)
        for url in PAGES:
            response = admin.get(url)
            assert response.status_code == 200, (url, response.text[:300])
            assert "masterdata." not in response.text, url  # every text key has its translation
    assert admin.get("/master/nothing").status_code == 404


@pytest.fixture
def data(store: Store) -> dict[str, Any]:
    with store.transaction(actor="setup") as conn:
        ids = make_meter(conn, 1)
        conn.execute("UPDATE community SET name = '幸福小区' WHERE code = 'C1'")
        conn.execute("UPDATE usage_type SET name = '居民生活用气' WHERE code = 'RES'")
        conn.execute(
            "INSERT INTO tariff (usage_type_id, definition) SELECT id, %s FROM usage_type WHERE code = 'RES'",
            ['{"cycle": "calendar_year", "periods": [{"effective_from": "2020-01-01", "price": "2.61"}]}'],
        )
        conn.execute("INSERT INTO manufacturer (code, name) VALUES ('GX', '金秀仪表')")
        conn.execute(
            "INSERT INTO meter_model (manufacturer_id, name, driver_key, prepaid_capable) "
            "SELECT id, 'G2.5', 'native_json', true FROM manufacturer"
        )
        conn.execute("INSERT INTO installer (code, name) VALUES ('I01', '安装一班')")
    return ids


def test_a_clerk_creates_edits_and_deactivates_a_community_and_exports_the_list(
    store: Store, signed_in: Callable[[str], ConsoleClient], data: dict[str, Any]
) -> None:
    clerk = signed_in("billing_clerk")
    refused = clerk.post("/master/communities/new", {"area": "A1", "code": "bad code!", "name": "x"})
    assert refused.status_code == 422 and 'aria-invalid="true"' in refused.text
    response = clerk.post(
        "/master/communities/new", {"area": "A1", "code": "YG", "name": "阳光花园", "address": "阳光路"}
    )
    assert response.status_code == 303
    row_url = response.headers["location"].split("?")[0]
    assert (
        clerk.post(row_url, {"area": "A1", "code": "YG", "name": "阳光花园二期", "address": "阳光路"}).status_code
        == 303
    )
    page = clerk.get(row_url)
    assert "阳光花园二期" in page.text and "billing_clerk" in page.text and "阳光花园" in page.text
    assert clerk.post(row_url + "/active", {"active": "0"}).status_code == 303
    assert "阳光花园" not in clerk.get("/master/communities").text
    assert "阳光花园" in clerk.get("/master/communities?active=inactive").text
    export = clerk.get("/master/communities?active=all&format=xlsx")
    assert export.headers["content-type"].startswith("application/vnd.openxmlformats")
    sheet = load_workbook(io.BytesIO(export.content)).active
    assert sheet is not None
    values = [[c.value for c in row] for row in sheet.iter_rows()]
    assert values[0][1:4] == ["Area", "Code", "Name"]
    assert {tuple(v[2:4]) for v in values[1:]} == {("C1", "幸福小区"), ("YG", "阳光花园二期")}
    assert [(o[0], o[1], o[3]) for o in oplog(store, "masterdata.new_submit")] == [
        ("billing_clerk", "community", "422"),
        ("billing_clerk", "community", "303"),
    ]
    # Readers are the existing meter_reader table, shown and edited here.
    assert (
        clerk.post("/master/readers/new", {"code": "R01", "name": "抄表员 张伟", "phone": "13800000001"}).status_code
        == 303
    )
    with store.connection() as conn:
        assert conn.execute("SELECT name FROM meter_reader").fetchall() == [("抄表员 张伟",)]
    auditor = signed_in("auditor")
    assert auditor.get("/master/communities").status_code == 200
    assert auditor.post("/master/communities/new", {"code": "Z", "name": "z", "area": "A1"}).status_code == 403


def test_the_api_lists_creates_patches_and_deactivates_with_history(
    store: Store, signed_in: Callable[[str], ConsoleClient], data: dict[str, Any]
) -> None:
    clerk = signed_in("billing_clerk")
    headers = {"X-CSRF-Token": clerk.csrf}
    created = clerk.http.post(
        "/api/v1/master/buildings", json={"community": "C1", "code": "7", "name": "7号楼"}, headers=headers
    )
    assert created.status_code == 201, created.text
    row_id = created.json()["item"]["id"]
    patched = clerk.http.patch(f"/api/v1/master/buildings/{row_id}", json={"floors": 11}, headers=headers)
    assert patched.json()["item"]["floors"] == 11
    assert [h["op"] for h in patched.json()["history"]] == ["update", "insert"]
    bad = clerk.http.post(
        "/api/v1/master/buildings", json={"community": "NOPE", "code": "8", "name": "8"}, headers=headers
    )
    assert bad.status_code == 422 and bad.json()["error"] == "no_ref"
    listed = clerk.http.get("/api/v1/master/buildings?q=C1").json()
    assert [(i["code"], i["community"], i["community_label"]) for i in listed["items"]] == [("7", "C1", "幸福小区")]
    gone = clerk.http.post(f"/api/v1/master/buildings/{row_id}/deactivate", headers=headers)
    assert gone.json()["item"]["active"] is False
    assert clerk.http.get("/api/v1/master/buildings").json()["items"] == []


def test_a_price_period_is_added_through_the_page_and_checked(
    store: Store, signed_in: Callable[[str], ConsoleClient], data: dict[str, Any]
) -> None:
    supervisor = signed_in("supervisor")
    bad = supervisor.post(
        "/master/prices/RES",
        {
            "effective_from": "2026-01-01",
            "tier1_upper": "300",
            "tier1_price": "2.7",
            "tier2_upper": "200",
            "tier2_price": "3",
        },
    )
    assert bad.status_code == 422 and "tier" in bad.text
    early = supervisor.post("/master/prices/RES", {"effective_from": "2019-01-01", "price": "3.00"})
    assert early.status_code == 422
    ok = supervisor.post(
        "/master/prices/RES",
        {"effective_from": "2026-01-01", "tier1_upper": "350", "tier1_price": "2.70", "tier2_price": "3.20"},
    )
    assert ok.status_code == 303
    prices = supervisor.http.get("/api/v1/master/prices").json()
    res = next(p for p in prices if p["usage_type"] == "RES")
    assert [p["effective_from"] for p in res["periods"]] == ["2020-01-01", "2026-01-01"]
    assert res["periods"][1]["tiers"] == [{"upper_m3": "350", "price": "2.70"}, {"upper_m3": None, "price": "3.20"}]
    api = supervisor.http.post(
        "/api/v1/master/prices/RES/periods",
        json={"effective_from": "2027-01-01", "price": "3.30"},
        headers={"X-CSRF-Token": supervisor.csrf},
    )
    assert api.status_code == 201 and len(api.json()["definition"]["periods"]) == 3
    assert (
        signed_in("cashier").post("/master/prices/RES", {"effective_from": "2028-01-01", "price": "1"}).status_code
        == 403
    )


def test_dispatch_and_groups_through_the_pages(
    store: Store, signed_in: Callable[[str], ConsoleClient], data: dict[str, Any]
) -> None:
    with store.transaction(actor="setup") as conn:
        make_meter(conn, 2)
        conn.execute("INSERT INTO customer (customer_no, name) VALUES ('CU9', '待装户')")
        conn.execute(
            "INSERT INTO account (account_no, customer_id, community_id, usage_type_id) "
            "SELECT 'AC9', c.id, %s, u.id FROM customer c, usage_type u WHERE c.customer_no = 'CU9'",
            [data["community"]],
        )
    clerk = signed_in("billing_clerk")
    page = clerk.get("/master/dispatch")
    assert "AC9" in page.text and "AC1" not in page.text.split('id="waiting"')[1]
    waiting = load_workbook(io.BytesIO(clerk.get("/master/dispatch?format=xlsx").content)).active
    assert waiting is not None and [c.value for c in waiting["A"]] == ["Account number", "AC9"]
    assert clerk.post("/master/dispatch", {"account_no": "AC9", "installer": ""}).status_code == 422
    assert clerk.post("/master/dispatch", {"account_no": "AC9", "installer": "I01"}).status_code == 303
    orders = clerk.http.get("/api/v1/install-orders?installer=I01&status=assigned").json()["items"]
    assert [o["account_no"] for o in orders] == ["AC9"]
    export = clerk.get("/master/dispatch/orders?format=xlsx")
    assert export.status_code == 200 and export.content[:2] == b"PK"
    created = clerk.post("/master/groups", {"name": "张家两户", "accounts": "AC1, AC2"})
    assert created.status_code == 303
    group_url = created.headers["location"].split("?")[0]
    assert clerk.post(group_url + "/members", {"account_no": "AC1"}).status_code == 409  # already in the group
    assert clerk.post(group_url + "/members/remove", {"account_no": "AC2"}).status_code == 303
    page = clerk.get(group_url)
    assert "AC1" in page.text and "billing_clerk" in page.text
    engineer = signed_in("engineer")
    assert engineer.get("/master/dispatch").status_code == 200
    assert engineer.post("/master/dispatch", {"account_no": "AC9", "installer": "I01"}).status_code == 403


def test_a_bulk_upload_with_a_bad_row_is_refused_whole_and_the_fixed_file_creates(
    store: Store, signed_in: Callable[[str], ConsoleClient], data: dict[str, Any]
) -> None:
    clerk = signed_in("billing_clerk")
    template = clerk.get("/master/bulk/template")
    assert template.status_code == 200 and template.content[:2] == b"PK"
    rows = [
        {
            "customer_name": "周一",
            "community": "C1",
            "address": "1-101",
            "usage_type": "RES",
            "meter_no": "N1",
            "model": "GX/G2.5",
        },
        {"customer_name": "周二", "community": "C1", "address": "1-102", "usage_type": "GAS"},
    ]
    upload = {"file": ("new.xlsx", bulk_create.workbook_bytes(rows), "application/octet-stream")}
    refused = clerk.http.post("/master/bulk", data={"csrf_token": clerk.csrf}, files=upload)
    assert refused.status_code == 422
    issues = refused.text.split('id="issues"')[1]
    assert '<td class="num">3</td>' in issues and "K · " in issues and "GAS" in issues
    with store.connection() as conn:
        assert conn.execute("SELECT count(*) FROM account").fetchone() == (1,)
    rows[1]["usage_type"] = "RES"
    upload = {"file": ("new.xlsx", bulk_create.workbook_bytes(rows), "application/octet-stream")}
    created = clerk.http.post("/master/bulk", data={"csrf_token": clerk.csrf}, files=upload)
    assert created.status_code == 200 and 'id="created"' in created.text
    with store.connection() as conn:
        assert conn.execute("SELECT count(*) FROM account").fetchone() == (3,)
    assert [(o[0], o[3]) for o in oplog(store, "masterdata.bulk_submit")] == [
        ("billing_clerk", "422"),
        ("billing_clerk", "200"),
    ]
    api = clerk.http.post("/api/v1/master/bulk", files=upload, headers={"X-CSRF-Token": clerk.csrf})
    assert api.status_code == 422
    assert [(i["row"], i["cell"], i["code"]) for i in api.json()["issues"]] == [(2, "O2", "meter_in_use")]
    assert signed_in("engineer").get("/master/bulk").status_code == 403
