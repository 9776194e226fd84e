"""Repairs in the console and the API: register, dispatch, complete with materials (refused whole when short),
attachments served back with their type and previewed, alarms, the commission report and its export."""

from __future__ import annotations

import io
from collections.abc import Callable
from decimal import Decimal

from openpyxl import load_workbook

from meterhub import warehouse
from meterhub.store import Store
from meterhub.warehouse import DocInput, ItemInput, LineInput
from tests.dashboards.conftest import ConsoleClient
from tests.meterhub.factories import make_meter

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 40


def _stock(store: Store) -> None:
    with store.transaction() as conn:
        conn.execute("SELECT meterhub_repair_defaults()")
        make_meter(conn, 1)
    warehouse.save_warehouse(store, "k", code="HD", name="河东分库")
    warehouse.save_supplier(store, "k", code="S1", name="供应商")
    warehouse.save_item(store, "k", ItemInput(code="BV-15", name="球阀"))
    warehouse.post_document(
        store, "k", DocInput(kind="purchase", warehouse="HD", supplier="S1", lines=[LineInput("BV-15", "2")])
    )


def _level(store: Store) -> Decimal:
    with store.connection() as conn:
        row = conn.execute("SELECT quantity FROM stock").fetchone()
    assert row is not None
    return Decimal(row[0])


def test_register_dispatch_complete_and_the_commission_report(
    signed_in: Callable[[str], ConsoleClient], store: Store
) -> None:
    _stock(store)
    clerk = signed_in("billing_clerk")
    clerk.get("/repairs/new")
    refused = clerk.post("/repairs/new", {"description": "没气了", "kind": "other"})
    assert refused.status_code == 400 and "an account or a phone number is needed" in refused.text
    registered = clerk.post("/repairs/new", {"account_no": "AC1", "description": "表前阀漏气", "kind": "leak"})
    assert registered.status_code == 303
    url = registered.headers["location"].split("?")[0]
    repair_no = url.rsplit("/", 1)[1]
    page = clerk.get(url)
    assert "张三" in page.text and 'id="dispatch"' not in page.text  # a clerk may not dispatch
    assert clerk.post(f"{url}/dispatch", {"engineer": "engineer"}).status_code == 403

    supervisor = signed_in("supervisor")
    supervisor.get(url)
    assert (
        supervisor.post(f"{url}/dispatch", {"engineer": "engineer", "kind": "leak", "commission": ""}).status_code
        == 303
    )
    assert "80.00" in supervisor.get(url).text

    engineer = signed_in("engineer")
    engineer.get(url)
    assert engineer.post(f"{url}/start", {}).status_code == 303
    short = engineer.post(
        f"{url}/complete", {"result": "换阀", "warehouse": "HD", "item_1": "BV-15", "quantity_1": "3"}
    )
    assert short.status_code == 409 and "not enough stock: BV-15 has 2 left, 3 wanted." in short.text
    assert _level(store) == Decimal("2")
    done = engineer.post(f"{url}/complete", {"result": "换阀", "warehouse": "HD", "item_1": "BV-15", "quantity_1": "1"})
    assert done.status_code == 303
    finished = engineer.get(url)
    assert "Completed" in finished.text and 'id="stock-doc"' in finished.text
    assert _level(store) == Decimal("1")

    attached = engineer.http.post(
        f"{url}/attachments",
        data={"csrf_token": engineer.csrf},
        files={"file": ("现场.png", PNG, "image/png")},
        follow_redirects=False,
    )
    assert attached.status_code == 303
    shown = engineer.get(url)
    assert f'<img src="/repairs/{repair_no}/attachments/1"' in shown.text
    served = engineer.http.get(f"/repairs/{repair_no}/attachments/1")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png" and served.content == PNG
    fake = engineer.http.post(
        f"{url}/attachments",
        data={"csrf_token": engineer.csrf},
        files={"file": ("x.png", b"<script>", "image/png")},
        follow_redirects=False,
    )
    assert fake.status_code == 415 and "images (JPEG, PNG, GIF, WebP) or PDF only" in fake.text

    report = supervisor.get("/repairs/commissions")
    assert 'data-engineer="engineer"' in report.text and "80.00" in report.text
    exported = supervisor.http.get("/repairs/commissions?format=xlsx")
    sheet = load_workbook(io.BytesIO(exported.content)).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[1][1:] == ("engineer", "Engineer", 1, 80)
    listed = supervisor.http.get("/repairs?q=漏气&format=xlsx")
    assert listed.status_code == 200
    assert supervisor.get("/repairs?status=completed").text.count(f"/repairs/{repair_no}") == 1
    api = supervisor.http.get(f"/api/v1/repairs/{repair_no}").json()
    assert (api["status"], api["commission"], api["materials"][0]["quantity"]) == ("completed", "80.00", "1.000")
    assert supervisor.http.get("/api/v1/repairs/commissions").json()["items"][0]["commission"] == "80.00"


def test_an_alarm_is_registered_from_the_alarm_list(signed_in: Callable[[str], ConsoleClient], store: Store) -> None:
    _stock(store)
    with store.transaction() as conn:
        row = conn.execute(
            "INSERT INTO meter_event (meter_id, ts, kind) SELECT id, now(), 'tamper' FROM meter RETURNING id"
        ).fetchone()
    assert row is not None
    clerk = signed_in("billing_clerk")
    alarms = clerk.get("/repairs/alarms")
    assert "M00000001" in alarms.text
    made = clerk.post(f"/repairs/alarms/{row[0]}", {})
    assert made.status_code == 303
    assert "M00000001" not in clerk.get("/repairs/alarms").text
    again = clerk.post(f"/repairs/alarms/{row[0]}", {})
    assert again.status_code == 409
    api = clerk.http.get("/api/v1/repairs?source=alarm").json()
    assert [i["meter_no"] for i in api["items"]] == ["M00000001"]


def test_the_api_flow_and_permissions(signed_in: Callable[[str], ConsoleClient], store: Store) -> None:
    _stock(store)
    supervisor = signed_in("supervisor")
    headers = {"X-CSRF-Token": supervisor.csrf}
    made = supervisor.http.post(
        "/api/v1/repairs",
        headers=headers,
        json={"description": "燃气灶打不着", "kind": "appliance", "phone": "13900000000"},
    )
    assert made.status_code == 201
    no = made.json()["repair_no"]
    dispatched = supervisor.http.post(
        f"/api/v1/repairs/{no}/dispatch", headers=headers, json={"engineer": "engineer", "commission": "33.30"}
    )
    assert dispatched.json()["commission"] == "33.30"
    short = supervisor.http.post(
        f"/api/v1/repairs/{no}/complete",
        headers=headers,
        json={"result": "ok", "warehouse": "HD", "materials": [{"item": "BV-15", "quantity": "2.001"}]},
    )
    assert short.status_code == 409 and short.json()["error"] == "stock_short"
    assert supervisor.http.get(f"/api/v1/repairs/{no}").json()["status"] == "dispatched"
    cancelled = supervisor.http.post(f"/api/v1/repairs/{no}/cancel", headers=headers, json={"reason": "用户取消"})
    assert cancelled.json()["status"] == "cancelled"
    storekeeper = signed_in("storekeeper")  # repairs.view only
    assert storekeeper.get("/repairs").status_code == 200
    assert storekeeper.get("/repairs/new").status_code == 403
    cashier = signed_in("cashier")
    assert cashier.get("/repairs").status_code == 403
    for url in ("/repairs", "/repairs/alarms", "/repairs/commissions", "/repairs/kinds"):
        assert storekeeper.get(url).status_code == 200, url
    assert storekeeper.get("/repairs/WX-NONE").status_code == 404
