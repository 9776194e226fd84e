"""The meter pages and /api/v1/meters: search, the meter page with its charts, install → replace, suspend and
resume, remove, permissions and area limits, exact readings."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from meterhub.store import Store
from tests.dashboards.conftest import ConsoleClient, add_user
from tests.meterhub.factories import make_meter

EN = {"Accept-Language": "en"}


def _zone(store: Store) -> ZoneInfo:
    return ZoneInfo(store.settings.timezone)


def _today(store: Store) -> date:
    return datetime.now(_zone(store)).date()


@pytest.fixture
def fleet(store: Store, users: Any) -> dict[str, Any]:
    """Meter M00000001 on account AC1 in area A1 and M00000002 on AC2 in area A2, both installed 60 days ago;
    an empty account AC9 in area A1; meters S1 and S2 in stock."""
    install = _today(store) - timedelta(days=60)
    with store.transaction() as conn:
        one, two = make_meter(conn, 1), make_meter(conn, 2)
        conn.execute("UPDATE meter SET install_date = %s, initial_reading = 3", [install])
        account = conn.execute(
            """INSERT INTO account (account_no, customer_id, community_id, usage_type_id)
               SELECT 'AC9', customer_id, community_id, usage_type_id FROM account WHERE id = %s RETURNING id""",
            [one["account"]],
        ).fetchone()
        for meter_no in ("S1", "S2"):
            conn.execute(
                "INSERT INTO meter (meter_no, driver_key, protocol_address) VALUES (%s, 'cjt188', %s)",
                [meter_no, "AA" + meter_no],
            )
        areas = dict(conn.execute("SELECT code, id FROM area").fetchall())
    assert account is not None
    return {"one": one, "two": two, "ac9": account[0], "area_a": areas["A1"], "area_b": areas["A2"], "install": install}


def _readings(store: Store, meter_id: int, values: list[tuple[datetime, Decimal]], channel: str = "volume_m3") -> None:
    with store.transaction() as conn:
        for ts, value in values:
            conn.execute(
                "INSERT INTO reading (meter_id, channel, ts, value, source) VALUES (%s, %s, %s, %s, 'test')",
                [meter_id, channel, ts, value],
            )


def _meter_row(store: Store, meter_no: str) -> tuple[Any, ...]:
    with store.connection() as conn:
        row = conn.execute(
            """SELECT m.status, a.account_no, m.install_date, m.remove_date, m.initial_reading
                 FROM meter m LEFT JOIN account a ON a.id = m.account_id WHERE m.meter_no = %s""",
            [meter_no],
        ).fetchone()
    assert row is not None
    return tuple(row)


def _assignments(store: Store, meter_no: str) -> list[tuple[Any, ...]]:
    with store.connection() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                """SELECT a.account_no, x.valid_from, x.valid_to, x.first_value, x.final_value
                     FROM meter_assignment x JOIN account a ON a.id = x.account_id
                     JOIN meter m ON m.id = x.meter_id WHERE m.meter_no = %s ORDER BY x.valid_from""",
                [meter_no],
            )
        ]


def _svg(page: str, chart_id: str) -> str:
    match = re.search(rf'<svg class="chart" id="{chart_id}".*?</svg>', page, re.S)
    assert match, f"no chart {chart_id}"
    return match.group(0)


def test_meter_list_searches_and_pages(signed_in: Callable[[str], ConsoleClient], fleet: Any) -> None:
    client = signed_in("auditor")
    page = client.get("/meters", headers=EN)
    assert page.status_code == 200
    for meter_no in ("M00000001", "M00000002", "S1", "S2"):
        assert f'href="/meters/{meter_no}"' in page.text
    assert 'href="/customers/accounts/AC1"' in page.text
    found = client.get("/meters?q=AC2", headers=EN).text
    assert 'href="/meters/M00000002"' in found and 'href="/meters/M00000001"' not in found
    by_address = client.get("/meters?q=aas2", headers=EN).text  # protocol address, any case
    assert 'href="/meters/S2"' in by_address and 'href="/meters/S1"' not in by_address
    stock = client.get("/meters?status=in_stock&driver=cjt188", headers=EN).text
    assert 'href="/meters/S1"' in stock and 'href="/meters/M00000001"' not in stock
    assert 'id="install"' not in page.text  # auditors do not install meters

    api = client.http.get("/api/v1/meters", params={"limit": 3})
    assert api.status_code == 200
    body = api.json()
    assert [m["meter_no"] for m in body["items"]] == ["M00000001", "M00000002", "S1"] and body["more"] is True
    second = client.http.get("/api/v1/meters", params={"limit": 3, "page": 2}).json()
    assert [m["meter_no"] for m in second["items"]] == ["S2"] and second["more"] is False
    closed = client.http.get("/api/v1/meters", params={"valve_state": "closed"}).json()
    assert closed["items"] == []


def test_meter_page_plots_readings_and_daily_use(
    signed_in: Callable[[str], ConsoleClient], fleet: Any, store: Store
) -> None:
    zone, today = _zone(store), _today(store)
    values = [
        Decimal("100.000"),
        Decimal("101.500"),
        Decimal("101.500"),
        Decimal("104.250"),
        Decimal("110.000"),
        Decimal("110.125"),
        Decimal("113.456"),
    ]
    moments = [datetime.combine(today - timedelta(days=20 - 3 * i), time(9, 30), tzinfo=zone) for i in range(7)]
    _readings(store, fleet["one"]["meter"], list(zip(moments, values, strict=True)))
    _readings(store, fleet["one"]["meter"], [(moments[-1], Decimal("3.61"))], channel="battery_v")
    with store.transaction() as conn:
        conn.execute(
            """INSERT INTO meter_state (meter_id, last_seen_at, valve_reported, valve_reported_at, battery_v, rssi_dbm)
               VALUES (%s, now(), 'closed', now(), 3.61, -87)""",
            [fleet["one"]["meter"]],
        )
        conn.execute(
            """INSERT INTO meter_event (meter_id, ts, kind, severity, cleared_at) VALUES
               (%s, now() - interval '2 days', 'battery_low', 'warning', now() - interval '1 day'),
               (%s, now() - interval '1 hour', 'tamper', 'critical', NULL)""",
            [fleet["one"]["meter"]] * 2,
        )

    client = signed_in("engineer")
    page = client.get("/meters/M00000001", headers=EN)
    assert page.status_code == 200
    text = page.text
    assert 'href="/customers/accounts/AC1"' in text and "113.456" in text and "-87 dBm" in text
    assert "Tamper" in text and "Battery low" in text and "open" in text
    assert 'href="/commands/new?meter_no=M00000001"' in text
    assert "Measures account AC1 since installation" in text

    svg = _svg(text, "register-chart")
    path = re.search(r'<path class="line" d="([^"]+)"', svg)
    assert path is not None
    points = [(float(x), float(y)) for x, y in re.findall(r"[ML](-?[\d.]+),(-?[\d.]+)", path.group(1))]
    assert len(points) == len(values)
    # x follows time, y follows the register (upwards on screen), both linearly
    seconds = [(m - moments[0]).total_seconds() for m in moments]
    x_scale = (points[-1][0] - points[0][0]) / seconds[-1]
    y_scale = (points[0][1] - points[-1][1]) / float(values[-1] - values[0])
    assert x_scale > 0 and y_scale > 0
    for (x, y), s, v in zip(points, seconds, values, strict=True):
        assert x == pytest.approx(points[0][0] + s * x_scale, abs=0.02)
        assert y == pytest.approx(points[0][1] - float(v - values[0]) * y_scale, abs=0.02)
    assert ">05-" in svg or re.search(r'class="x-tick"[^>]*>\d\d-\d\d<', svg)  # labelled time axis
    assert re.search(r'class="y-tick"[^>]*>[\d,.]+<', svg)  # labelled value axis

    bars = _svg(text, "daily-chart")
    rects = re.findall(r'<rect class="bar" data-day="([\d-]+)"[^>]*height="([\d.]+)"><title>([^<]+)</title>', bars)
    expected = [values[0] - values[0]] + [b - a for a, b in itertools.pairwise(values)]
    assert [r[0] for r in rects] == [m.date().isoformat() for m in moments]
    assert [r[2].split()[1] for r in rects] == [f"{e:f}" for e in expected]
    tallest = max(range(len(expected)), key=lambda i: expected[i])
    per_m3 = float(rects[tallest][1]) / float(expected[tallest])
    for (_, height, _), use in zip(rects, expected, strict=True):
        assert float(height) == pytest.approx(float(use) * per_m3, abs=0.02)

    week = client.get("/meters/M00000001?days=365", headers=EN).text
    assert 'class="active">Last 365 days' in week


def test_install_then_replace(signed_in: Callable[[str], ConsoleClient], fleet: Any, store: Store) -> None:
    zone, today = _zone(store), _today(store)
    client = signed_in("engineer")
    stock = client.get("/meters/S1", headers=EN).text
    assert 'action="/meters/install"' in stock and 'name="meter_no" value="S1"' in stock
    assert "/replace" not in stock and "/commands/new" not in stock
    installed_on = today - timedelta(days=10)
    response = client.post(
        "/meters/install",
        {"meter_no": "S1", "account_no": "AC9", "install_date": installed_on.isoformat(), "initial_reading": "12.345"},
    )
    assert response.status_code == 303 and response.headers["location"] == "/meters/S1?done=install"
    assert _meter_row(store, "S1") == ("installed", "AC9", installed_on, None, Decimal("12.345"))
    start = datetime.combine(installed_on, time(), tzinfo=zone)
    assert _assignments(store, "S1") == [("AC9", start, None, Decimal("12.345"), None)]
    page = client.get(response.headers["location"], headers=EN).text
    assert "The installation is recorded." in page and 'href="/customers/accounts/AC9"' in page

    at = datetime.combine(today - timedelta(days=2), time(10, 15), tzinfo=zone)
    response = client.post(
        "/meters/S1/replace",
        {
            "new_meter_no": "S2",
            "at": at.strftime("%Y-%m-%dT%H:%M"),
            "old_final_reading": "20.5",
            "new_first_reading": "0.125",
            "reason": "表计故障",
        },
    )
    assert response.status_code == 303 and response.headers["location"] == "/meters/S2?done=replace"
    assert _meter_row(store, "S1") == ("removed", "AC9", installed_on, at.date(), Decimal("12.345"))
    assert _meter_row(store, "S2") == ("installed", "AC9", at.date(), None, Decimal("0.125"))
    assert _assignments(store, "S1") == [("AC9", start, at, Decimal("12.345"), Decimal("20.500"))]
    assert _assignments(store, "S2") == [("AC9", at, None, Decimal("0.125"), None)]
    with store.connection() as conn:
        in_use = conn.execute(
            """SELECT m.meter_no FROM meter m JOIN account a ON a.id = m.account_id
                WHERE a.account_no = 'AC9' AND m.status = 'installed'"""
        ).fetchall()
        history = conn.execute(
            """SELECT DISTINCT h.changed_by FROM change_history h JOIN meter m ON m.id = h.row_id
                WHERE h.table_name = 'meter' AND m.meter_no IN ('S1', 'S2') AND h.op = 'update'"""
        ).fetchall()
        actions = conn.execute(
            """SELECT m.meter_no, x.action, x.reading, x.done_by FROM meter_action x JOIN meter m ON m.id = x.meter_id
                ORDER BY x.id"""
        ).fetchall()
    assert in_use == [("S2",)]
    assert history == [("engineer",)]
    assert actions == [
        ("S1", "install", Decimal("12.345"), "engineer"),
        ("S1", "replace_out", Decimal("20.500"), "engineer"),
        ("S2", "replace_in", Decimal("0.125"), "engineer"),
    ]
    page = client.get(response.headers["location"], headers=EN).text
    assert "The meter is replaced" in page and 'href="/meters/S1"' in page

    # a removed meter cannot be replaced again; the refusal changes nothing
    again = client.post(
        "/meters/S1/replace",
        {"new_meter_no": "S2", "at": at.strftime("%Y-%m-%dT%H:%M"), "old_final_reading": "21"},
        headers=EN,
    )
    assert again.status_code == 409 and "removed" in again.text
    assert _assignments(store, "S2") == [("AC9", at, None, Decimal("0.125"), None)]


def test_install_and_replace_through_the_api(
    signed_in: Callable[[str], ConsoleClient], fleet: Any, store: Store
) -> None:
    client = signed_in("supervisor")
    headers = {"X-CSRF-Token": client.csrf}
    installed = client.http.post(
        "/api/v1/meters/S1/install",
        json={
            "account_no": "AC9",
            "install_date": (_today(store) - timedelta(days=5)).isoformat(),
            "initial_reading": "7.001",
        },
        headers=headers,
    )
    assert installed.status_code == 200, installed.text
    body = installed.json()
    assert body["status"] == "installed" and body["account"]["account_no"] == "AC9"
    assert body["initial_reading"] == "7.001" and body["assignments"][0]["first_value"] == "7.001"
    refused = client.http.post(
        "/api/v1/meters/S2/install",
        json={"account_no": "AC9", "install_date": _today(store).isoformat(), "initial_reading": "1.0001"},
        headers=headers,
    )
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_reading"
    replaced = client.http.post(
        "/api/v1/meters/S1/replace",
        json={
            "new_meter_no": "S2",
            "at": datetime.now(_zone(store)).replace(tzinfo=None).isoformat(),
            "old_final_reading": "9.999",
        },
        headers=headers,
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["old"]["status"] == "removed"
    assert replaced.json()["old"]["assignments"][0]["final_value"] == "9.999"
    assert replaced.json()["new"]["assignments"][0]["first_value"] == "0.000"
    assert _meter_row(store, "S2")[:2] == ("installed", "AC9")


def test_suspend_and_resume(signed_in: Callable[[str], ConsoleClient], fleet: Any, store: Store) -> None:
    client = signed_in("engineer")
    today = _today(store).isoformat()
    response = client.post("/meters/M00000001/suspend", {"on": today, "reason": "房屋空置"})
    assert response.status_code == 303 and response.headers["location"] == "/meters/M00000001?done=suspend"
    assert _meter_row(store, "M00000001")[0] == "suspended"
    page = client.get(response.headers["location"], headers=EN).text
    assert "The meter is suspended." in page and "房屋空置" in page and 'action="/meters/M00000001/resume"' in page

    no_reason = client.post("/meters/M00000001/resume", {"on": today, "reason": " "}, headers=EN)
    assert no_reason.status_code == 409 and "Please give a reason." in no_reason.text
    in_chinese = client.post(
        "/meters/M00000001/resume", {"on": today, "reason": ""}, headers={"Accept-Language": "zh-CN"}
    )
    assert in_chinese.status_code == 409 and "请填写原因。" in in_chinese.text
    assert _meter_row(store, "M00000001")[0] == "suspended"
    twice = client.http.post(
        "/api/v1/meters/M00000001/suspend", json={"date": today, "reason": "x"}, headers={"X-CSRF-Token": client.csrf}
    )
    assert twice.status_code == 409 and twice.json()["error"] == "not_installed"

    resumed = client.http.post(
        "/api/v1/meters/M00000001/resume",
        json={"date": today, "reason": "客户回迁"},
        headers={"X-CSRF-Token": client.csrf},
    )
    assert resumed.status_code == 200 and resumed.json()["status"] == "installed"
    with store.connection() as conn:
        rows = conn.execute("SELECT action, reason, done_by FROM meter_action ORDER BY id").fetchall()
    assert rows == [("suspend", "房屋空置", "engineer"), ("resume", "客户回迁", "engineer")]


def test_remove_closes_the_assignment(signed_in: Callable[[str], ConsoleClient], fleet: Any, store: Store) -> None:
    zone = _zone(store)
    client = signed_in("engineer")
    at = datetime.combine(_today(store) - timedelta(days=1), time(15, 0), tzinfo=zone)
    too_early = client.post(
        "/meters/M00000001/remove",
        {"at": (fleet["install"] - timedelta(days=1)).isoformat() + "T12:00", "final_reading": "150", "reason": "销户"},
        headers=EN,
    )
    assert too_early.status_code == 409 and "before the meter was installed" in too_early.text
    assert _assignments(store, "M00000001") == []
    response = client.post(
        "/meters/M00000001/remove",
        {"at": at.strftime("%Y-%m-%dT%H:%M"), "final_reading": "150.000", "reason": "销户拆表"},
    )
    assert response.status_code == 303
    assert _meter_row(store, "M00000001") == ("removed", "AC1", fleet["install"], at.date(), Decimal("3.000"))
    start = datetime.combine(fleet["install"], time(), tzinfo=zone)
    assert _assignments(store, "M00000001") == [("AC1", start, at, Decimal("3.000"), Decimal("150.000"))]
    page = client.get(response.headers["location"], headers=EN).text
    assert "The removal is recorded." in page and 'action="/meters/M00000001/remove"' not in page


def test_a_cashier_sees_but_cannot_act(signed_in: Callable[[str], ConsoleClient], fleet: Any, store: Store) -> None:
    client = signed_in("cashier")
    page = client.get("/meters/M00000001", headers=EN)
    assert page.status_code == 200 and "/suspend" not in page.text and "/commands/new" not in page.text
    with store.connection() as conn:
        before = conn.execute("SELECT count(*) FROM change_history").fetchone()
    today = _today(store).isoformat()
    assert client.post("/meters/M00000001/suspend", {"on": today, "reason": "x"}).status_code == 403
    assert (
        client.post("/meters/install", {"meter_no": "S1", "account_no": "AC9", "install_date": today}).status_code
        == 403
    )
    api = client.http.post(
        "/api/v1/meters/M00000001/remove",
        json={"at": datetime.now(_zone(store)).isoformat(), "final_reading": "5", "reason": "x"},
        headers={"X-CSRF-Token": client.csrf},
    )
    assert api.status_code == 403 and api.json()["error"] == "permission"
    assert _meter_row(store, "M00000001")[0] == "installed" and _meter_row(store, "S1")[0] == "in_stock"
    with store.connection() as conn:
        after = conn.execute("SELECT count(*) FROM change_history").fetchone()
        actions = conn.execute("SELECT count(*) FROM meter_action").fetchone()
    assert after == before and actions == (0,)


def test_an_engineer_limited_to_area_a_neither_sees_nor_acts_in_area_b(
    client_factory: Callable[[], ConsoleClient], fleet: Any, store: Store
) -> None:
    add_user(store, "eng_a", "engineer", areas=[fleet["area_a"]])
    client = client_factory()
    assert client.login("eng_a").status_code == 303
    listing = client.get("/meters", headers=EN).text
    assert 'href="/meters/M00000001"' in listing
    assert 'href="/meters/M00000002"' not in listing and 'href="/meters/S1"' not in listing
    assert client.get("/meters/M00000002", headers=EN).status_code == 403
    assert client.http.get("/api/v1/meters/M00000002").status_code == 403
    assert client.http.get("/api/v1/meters/M00000002/readings").status_code == 403
    assert [m["meter_no"] for m in client.http.get("/api/v1/meters").json()["items"]] == ["M00000001"]

    today = _today(store).isoformat()
    assert client.post("/meters/M00000002/suspend", {"on": today, "reason": "x"}).status_code == 403
    api = client.http.post(
        "/api/v1/meters/M00000002/suspend", json={"date": today, "reason": "x"}, headers={"X-CSRF-Token": client.csrf}
    )
    assert api.status_code == 403 and api.json()["error"] == "area"
    with store.transaction() as conn:
        conn.execute(
            """INSERT INTO account (account_no, customer_id, community_id, usage_type_id)
               SELECT 'AC8', customer_id, community_id, usage_type_id FROM account WHERE account_no = 'AC2'"""
        )
    outside = client.post("/meters/install", {"meter_no": "S1", "account_no": "AC8", "install_date": today})
    assert outside.status_code == 403
    assert _meter_row(store, "M00000002")[0] == "installed" and _meter_row(store, "S1")[0] == "in_stock"

    # within area A the same engineer may act, on a stock meter too
    inside = client.post("/meters/install", {"meter_no": "S1", "account_no": "AC9", "install_date": today})
    assert inside.status_code == 303 and _meter_row(store, "S1")[:2] == ("installed", "AC9")
    assert client.post("/meters/M00000001/suspend", {"on": today, "reason": "x"}).status_code == 303


def test_readings_api_returns_exact_values(signed_in: Callable[[str], ConsoleClient], fleet: Any, store: Store) -> None:
    zone, today = _zone(store), _today(store)
    base = datetime.combine(today - timedelta(days=3), time(0, 0), tzinfo=zone)
    values = [Decimal("12345.678"), Decimal("12345.7"), Decimal("12346.000"), Decimal("99999999.123456789")]
    moments = [base + timedelta(hours=6 * i) for i in range(4)]
    _readings(store, fleet["one"]["meter"], list(zip(moments, values, strict=True)))
    client = signed_in("meter_reader")
    query = {"from": base.isoformat(), "to": (base + timedelta(days=1)).isoformat()}
    body = client.http.get("/api/v1/meters/M00000001/readings", params=query).json()
    assert [r["value"] for r in body["readings"]] == ["12345.678", "12345.7", "12346.000", "99999999.123456789"]
    assert [datetime.fromisoformat(r["ts"]) for r in body["readings"]] == moments
    assert body["next_from"] is None and datetime.fromisoformat(body["from"]) == base

    first = client.http.get("/api/v1/meters/M00000001/readings", params={**query, "limit": 2}).json()
    assert [r["value"] for r in first["readings"]] == ["12345.678", "12345.7"]
    rest = client.http.get(
        "/api/v1/meters/M00000001/readings", params={**query, "from": first["next_from"], "limit": 2}
    ).json()
    assert [r["value"] for r in rest["readings"]] == ["12346.000", "99999999.123456789"]

    local = client.http.get(  # times without an offset are local time
        "/api/v1/meters/M00000001/readings",
        params={
            "from": base.replace(tzinfo=None).isoformat(),
            "to": (base + timedelta(hours=7)).replace(tzinfo=None).isoformat(),
        },
    ).json()
    assert [r["value"] for r in local["readings"]] == ["12345.678", "12345.7"]

    daily = client.http.get(
        "/api/v1/meters/M00000001/daily", params={"from": base.date().isoformat(), "to": base.date().isoformat()}
    ).json()
    assert daily["days"] == [
        {
            "day": base.date().isoformat(),
            "consumption_m3": f"{values[-1] - values[0]:f}",
            "register_m3": "99999999.123456789",
            "readings": 4,
        }
    ]
    detail = client.http.get("/api/v1/meters/M00000001").json()
    assert detail["initial_reading"] == "3.000" and detail["account"]["account_no"] == "AC1"
    assert client.http.get("/api/v1/meters/NOPE").status_code == 404


def test_events_api(signed_in: Callable[[str], ConsoleClient], fleet: Any, store: Store) -> None:
    with store.transaction() as conn:
        conn.execute(
            """INSERT INTO meter_event (meter_id, ts, kind, severity, detail, cleared_at) VALUES
               (%s, now() - interval '2 days', 'leak', 'critical', '{"flow": "0.4"}', now() - interval '1 day'),
               (%s, now() - interval '1 hour', 'battery_low', 'warning', '{}', NULL)""",
            [fleet["one"]["meter"]] * 2,
        )
    client = signed_in("auditor")
    events = client.http.get("/api/v1/meters/M00000001/events").json()["events"]
    assert [(e["kind"], e["cleared_at"] is None) for e in events] == [("battery_low", True), ("leak", False)]
    assert events[1]["detail"] == {"flow": "0.4"}
    open_only = client.http.get("/api/v1/meters/M00000001/events", params={"open": "true"}).json()["events"]
    assert [e["kind"] for e in open_only] == ["battery_low"]
