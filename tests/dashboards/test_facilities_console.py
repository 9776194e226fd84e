"""Valve wells and regulator boxes in the console and the API: create, link, attach accounts, maintenance, the
overdue list, the supply balance page, Excel export, area limits and the operation log."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from openpyxl import load_workbook

from meterhub.store import Store
from tests.dashboards.conftest import ConsoleClient, add_user
from tests.meterhub.factories import make_meter


@pytest.fixture
def data(store: Store, users: dict[str, int]) -> dict[str, Any]:
    """Accounts AC1 (area A1) and AC2 (area A2) with their meters; box meter BOX-1; the defaults."""
    with store.transaction(actor="setup") as conn:
        one, two = make_meter(conn, 1), make_meter(conn, 2)
        conn.execute("UPDATE community SET name = '幸福小区' WHERE code = 'C1'")
        conn.execute("UPDATE area SET name = '城东片区' WHERE code = 'A1'")
        box = conn.execute(
            "INSERT INTO meter (meter_no, driver_key, status) VALUES ('BOX-1', 'modbus', 'installed') RETURNING id"
        ).fetchone()
        assert box is not None
        conn.execute("SELECT meterhub_facility_defaults()")
        area = conn.execute("SELECT id FROM area WHERE code = 'A1'").fetchone()
        assert area is not None
    return {"one": one, "two": two, "box_meter": box[0], "area1": area[0]}


def _new(client: ConsoleClient, **values: str) -> Any:
    client.get("/facilities/new")
    return client.post("/facilities/new", values)


def _box(client: ConsoleClient, code: str = "TYX-1", **extra: str) -> Any:
    values = {
        "code": code,
        "kind": "box",
        "name": "幸福小区 1 号调压箱",
        "community": "C1",
        "status": "in_service",
        "pressure_in_mpa": "0.4",
        "pressure_out_mpa": "0.003",
        "meter_no": "BOX-1",
        **extra,
    }
    return _new(client, **values)


def _readings(store: Store, data: dict[str, Any]) -> None:
    """March 2026, read at 23:00: the box meter uses 10 m³ a day; AC1's meter 9.8 (2 % lost) except on 5 March
    (8.0: 20 % lost); nothing from the box meter on 7 March."""
    zone = ZoneInfo(store.settings.timezone)
    rows = []
    box, fed = Decimal("100.000"), Decimal("50.000")
    for day in range(1, 11):
        at = datetime.combine(date(2026, 2, 28) if day == 1 else date(2026, 3, day - 1), time(23), tzinfo=zone)
        if day != 8:  # the box meter's reading closing 7 March is missing
            rows.append((data["box_meter"], at, box))
        rows.append((data["one"]["meter"], at, fed))
        box += Decimal("10.000")
        fed += Decimal("8.000") if day == 5 else Decimal("9.800")
    with store.transaction(actor="setup") as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO reading (meter_id, channel, ts, value) VALUES (%s, 'volume_m3', %s, %s)", rows)


def test_an_engineer_records_a_box_its_well_accounts_and_maintenance(
    signed_in: Callable[[str], ConsoleClient], data: dict[str, Any], store: Store
) -> None:
    engineer = signed_in("engineer")
    response = _box(engineer)
    assert response.status_code == 303 and response.headers["location"] == "/facilities/TYX-1?done=create"
    assert _new(engineer, code="FJ-1", kind="well", name="进站阀井", area="A1", dn="150").status_code == 303
    engineer.get("/facilities/TYX-1")
    assert engineer.post("/facilities/TYX-1/links", {"other": "FJ-1"}).status_code == 303
    assert engineer.post("/facilities/TYX-1/accounts", {"account_no": "AC1, AC2"}).status_code == 303
    response = engineer.post("/facilities/TYX-1/maintenance", {
        "done_on": "2026-03-01", "kind": "repair", "person": "赵磊", "findings": "切断阀漏气", "parts": "皮膜",
        "next_due": "2026-09-01"})  # fmt: skip
    assert response.status_code == 303
    page = engineer.get("/facilities/TYX-1").text
    assert "FJ-1" in page and "AC1" in page and "AC2" in page and "切断阀漏气" in page and "BOX-1" in page
    assert "TYX-1" in engineer.get("/facilities/FJ-1").text  # shown both ways
    account = engineer.get("/customers/accounts/AC1").text  # the account names the box that feeds it
    assert "Fed by box" in account and 'href="/facilities/TYX-1"' in account
    with store.connection() as conn:
        logged = conn.execute(
            "SELECT action, object_type, object_id FROM audit_log WHERE actor = 'engineer' ORDER BY id"
        ).fetchall()
    assert [tuple(r) for r in logged if r[1] == "facility"] == [
        ("facilities.new_submit", "facility", "TYX-1"), ("facilities.new_submit", "facility", "FJ-1"),
        ("facilities.link_submit", "facility", "TYX-1"), ("facilities.attach_submit", "facility", "TYX-1"),
        ("facilities.maintenance_submit", "facility", "TYX-1"),
    ]  # fmt: skip
    # the list, searchable and exported
    assert "TYX-1" in engineer.get("/facilities?q=幸福").text
    assert "TYX-1" not in engineer.get("/facilities?kind=well").text
    exported = engineer.http.get("/facilities?q=&format=xlsx")
    sheet = load_workbook(io.BytesIO(exported.content)).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][:3] == ("Code", "Kind", "Name") and {r[0] for r in rows[1:]} == {"TYX-1", "FJ-1"}
    csv = engineer.http.get("/facilities/maintenance?format=csv").content.decode("utf-8-sig")
    assert "切断阀漏气" in csv and "2026-09-01" in csv


def test_bad_input_is_shown_on_the_form_and_nothing_is_written(
    signed_in: Callable[[str], ConsoleClient], data: dict[str, Any], store: Store
) -> None:
    engineer = signed_in("engineer")
    engineer.http.cookies.set("mh_lang", "zh")
    response = _box(engineer, pressure_out_mpa="0.5")
    assert response.status_code == 422
    assert "出口压力不能高于进口压力" in response.text and 'value="幸福小区 1 号调压箱"' in response.text
    _box(engineer)
    _box(engineer, "TYX-2", community="C2", meter_no="")
    engineer.get("/facilities/TYX-2")
    response = engineer.post("/facilities/TYX-2/accounts", {"account_no": "AC2 AC1"})  # AC1: fed by nothing yet
    assert response.status_code == 303
    response = engineer.post("/facilities/TYX-1/accounts", {"account_no": "AC1"})
    assert response.status_code == 409 and "户号 AC1 已由调压箱 TYX-2 供气" in response.text
    with store.connection() as conn:
        fed = conn.execute(
            "SELECT f.code, count(*) FROM facility_account x JOIN facility f ON f.id = x.box_id GROUP BY 1"
        ).fetchall()
    assert [tuple(r) for r in fed] == [("TYX-2", 2)]


def test_the_balance_page_shows_days_months_and_flags(
    signed_in: Callable[[str], ConsoleClient], data: dict[str, Any], store: Store
) -> None:
    engineer = signed_in("engineer")
    _box(engineer)
    engineer.get("/facilities/TYX-1")
    engineer.post("/facilities/TYX-1/accounts", {"account_no": "AC1"})
    _readings(store, data)
    page = engineer.get("/facilities/TYX-1/balance?month=2026-03").text
    assert '<svg class="chart"' in page or "<svg" in page
    assert 'data-day="2026-03-05" class="flagged"' in page  # 10 - 8 = 2 m³: 20.00 % above 5 %
    assert 'data-day="2026-03-04" class=""' in page  # 10 - 9.8 = 0.2 m³: 2.00 %
    assert 'data-day="2026-03-07" class="incomplete"' in page and 'data-day="2026-03-08" class="incomplete"' in page
    auditor = signed_in("auditor")
    body = auditor.http.get("/api/v1/facilities/TYX-1/balance?first_day=2026-03-01&last_day=2026-03-09").json()
    days = {d["day"]: d for d in body["days"]}
    assert (days["2026-03-05"]["loss_m3"], days["2026-03-05"]["loss_pct"], days["2026-03-05"]["flagged"]) == (
        "2.000",
        "20.00",
        True,
    )
    assert (days["2026-03-04"]["loss_pct"], days["2026-03-04"]["flagged"]) == ("2.00", False)
    assert days["2026-03-07"]["complete"] is False and days["2026-03-07"]["loss_m3"] is None
    assert days["2026-03-08"]["gaps"] == [{"meter_no": "BOX-1", "side": "box", "status": "catch_up"}]
    # 9 days, 7 complete: box 70, fed 6 x 9.8 + 8 = 66.8, loss 3.2, 3.2 / 70 = 4.57 % (not above 5 %)
    assert body["months"] == [{"month": "2026-03", "days": 9, "complete_days": 7, "box_m3": "70.000",
                               "fed_m3": "66.800", "loss_m3": "3.200", "loss_pct": "4.57", "complete": False,
                               "flagged": False, "flagged_days": 1}]  # fmt: skip
    exported = auditor.http.get("/facilities/TYX-1/balance?month=2026-03&format=xlsx")
    sheet = load_workbook(io.BytesIO(exported.content)).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[5][:5] == (
        datetime(2026, 3, 5),
        Decimal("10.000"),
        Decimal("8.000"),
        Decimal("2.000"),
        Decimal("20.00"),
    )


def test_the_api_creates_edits_and_refuses(
    signed_in: Callable[[str], ConsoleClient], data: dict[str, Any], store: Store
) -> None:
    supervisor = signed_in("supervisor")
    headers = {"X-CSRF-Token": supervisor.csrf}
    created = supervisor.http.post("/api/v1/facilities", headers=headers, json={
        "code": "TYX-9", "kind": "box", "name": "工业园调压箱", "area": "A1", "pressure_in_mpa": "1.6",
        "pressure_out_mpa": "0.4", "flow_m3h": "1200", "meter_no": "BOX-1"})  # fmt: skip
    assert created.status_code == 201, created.text
    assert created.json()["threshold_pct"] == "5.00" and created.json()["meter_no"] == "BOX-1"
    patched = supervisor.http.patch(
        "/api/v1/facilities/TYX-9", headers=headers, json={"loss_threshold_pct": "3", "status": "out_of_service"}
    )
    assert patched.status_code == 200 and patched.json()["threshold_pct"] == "3.00"
    refused = supervisor.http.post(
        "/api/v1/facilities", headers=headers, json={"code": "FJ-9", "kind": "well", "name": "阀井", "flow_m3h": "1"}
    )
    assert refused.status_code == 422 and refused.json()["error"] == "box_only"
    record = supervisor.http.post("/api/v1/facilities/TYX-9/maintenance", headers=headers, json={
        "done_on": "2026-01-05", "kind": "inspection", "person": "孙强", "next_due": "2026-02-05"})  # fmt: skip
    assert record.status_code == 201 and record.json()["kind"] == "inspection"
    overdue = supervisor.http.get("/api/v1/facilities/overdue").json()
    assert overdue == []  # out of service
    supervisor.http.patch("/api/v1/facilities/TYX-9", headers=headers, json={"status": "in_service"})
    assert [r["code"] for r in supervisor.http.get("/api/v1/facilities/overdue").json()] == ["TYX-9"]
    settings = supervisor.http.put(
        "/api/v1/facilities/settings",
        headers=headers,
        json={"loss_threshold_pct": "4.5", "maintenance_interval_days": 90},
    )
    assert settings.json() == {"loss_threshold_pct": "4.50", "maintenance_interval_days": 90}


def test_a_person_limited_to_an_area_sees_only_its_facilities(
    signed_in: Callable[[str], ConsoleClient],
    client_factory: Callable[[], ConsoleClient],
    data: dict[str, Any],
    store: Store,
) -> None:
    engineer = signed_in("engineer")
    _box(engineer)
    _box(engineer, "TYX-2", community="C2", meter_no="")
    add_user(store, "east", "engineer", areas=[data["area1"]])
    east = client_factory()
    assert east.login("east").status_code == 303
    page = east.get("/facilities").text
    assert "TYX-1" in page and "TYX-2" not in page
    assert [r["code"] for r in east.http.get("/api/v1/facilities").json()["items"]] == ["TYX-1"]
    refused = east.http.get("/facilities/TYX-2")
    assert refused.status_code == 403 and refused.headers["x-refused"] == "area"
    assert east.http.get("/api/v1/facilities/TYX-2").status_code == 403
    east.get("/facilities/TYX-1")
    response = east.post("/facilities/TYX-1/accounts", {"account_no": "AC2"})  # AC2 lies in area A2
    assert response.status_code == 403
    with store.connection() as conn:
        assert conn.execute("SELECT count(*) FROM facility_account").fetchone() == (0,)
