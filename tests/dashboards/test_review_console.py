"""Reading management in the console: the review queue, decisions, reading books, manual and handheld readings,
statistics — on the hand-made utility of tests/billing/review_helpers.py (period 2024-01)."""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from openpyxl import load_workbook

from billing.reading_books import add_meters, create_book, create_reader, schedule
from billing.reading_stats import read_rates
from billing.review_run import validate_period
from meterhub.store import Store
from tests.billing.review_helpers import NOW, PERIOD, approved, build_utility, review_ids
from tests.dashboards.conftest import ConsoleClient, add_user


@pytest.fixture
def utility(store: Store, users: dict[str, int]) -> dict[str, Any]:
    """The review utility with book B1 (meters 2, 3, 4; reader R1 = the meter_reader user), validated."""
    ids = build_utility(store)
    create_reader(store, "R1", "抄表员 张伟", actor="admin", staff_username="meter_reader")
    create_book(store, "B1", "Garden 1", actor="admin", reader_code="R1", reading_day=1)
    add_meters(store, "B1", ["M00000002", "M00000003", "M00000004"], actor="admin")
    schedule(store, "B1", PERIOD, actor="admin")
    validate_period(store, PERIOD, actor="clerk", now=NOW)
    return {**ids, "rows": review_ids(store)}


def count(store: Store, query: str, *params: Any) -> int:
    with store.connection() as conn:
        row = conn.execute(query, list(params)).fetchone()
    assert row is not None
    return int(row[0])


def status_of(store: Store, review_id: int) -> str:
    with store.connection() as conn:
        row = conn.execute("SELECT status FROM reading_review WHERE id = %s", [review_id]).fetchone()
    assert row is not None
    return str(row[0])


def api_post(client: ConsoleClient, url: str, body: dict[str, Any]) -> Any:
    return client.http.post(url, json=body, headers={"X-CSRF-Token": client.csrf})


def table_rows(page: str, table_id: str) -> list[list[str]]:
    """Cell texts of a table's body rows (tags stripped)."""
    body = page.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    rows = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body.split("<tbody>", 1)[1], re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        rows.append([html.unescape(" ".join(re.sub(r"<[^>]+>", " ", c).split())) for c in cells])
    return rows


def test_a_flagged_reading_shows_its_rule_and_accepting_it_makes_the_billing_reading(
    signed_in: Callable[[str], ConsoleClient], store: Store, utility: dict[str, Any]
) -> None:
    clerk = signed_in("billing_clerk")
    page = clerk.get(f"/review?period={PERIOD}&flagged=1")
    assert page.status_code == 200
    spike = utility["rows"]["M00000003"]
    row = page.text.split(f'id="row-{spike}"', 1)[1].split("</tr>", 1)[0]
    assert "Spike" in row and 'title="spike"' in row and "warning" in row
    assert "45.500" in row  # the candidate's use
    assert "M00000002" not in page.text  # a clean row is not in the flagged view

    detail = clerk.get(f"/review/{spike}")
    flags = table_rows(detail.text, "flags")
    assert any(r[0].startswith("Spike") and r[0].endswith("spike") for r in flags)

    response = clerk.post(f"/review/{spike}/accept", {"reason": "checked on site"})
    assert response.status_code == 303
    assert approved(store)["M00000003"] == (Decimal("45.500"), "automatic", 1)
    assert status_of(store, spike) == "accepted"
    log = table_rows(clerk.get(f"/review/{spike}").text, "log")
    assert len(log) == 1 and log[0][1] == "billing_clerk" and log[0][2] == "accept"
    assert "candidate" in log[0][3] and "45.500" in log[0][4] and log[0][5] == "checked on site"


def test_a_correction_without_a_reason_is_refused_and_nothing_changes(
    signed_in: Callable[[str], ConsoleClient], store: Store, utility: dict[str, Any]
) -> None:
    clerk = signed_in("billing_clerk")
    spike = utility["rows"]["M00000003"]
    for reason in ("", "   "):
        response = clerk.post(f"/review/{spike}/correct", {"end_value": "231.000", "reason": reason})
        assert response.status_code == 400
        assert "needs a reason" in response.text and 'value="231.000"' in response.text  # the form keeps the value
    api = api_post(clerk, f"/api/v1/review/{spike}/correct", {"end_value": "231.000", "reason": ""})
    assert api.status_code == 400 and "reason" in api.json()["detail"]
    assert count(store, "SELECT count(*) FROM billing_reading") == 0
    assert count(store, "SELECT count(*) FROM reading_review_log") == 0
    assert status_of(store, spike) == "pending"

    response = clerk.post(f"/review/{spike}/correct", {"end_value": "231.000", "reason": "register misread"})
    assert response.status_code == 303
    assert approved(store)["M00000003"] == (Decimal("15.500"), "corrected", 1)


def test_bulk_accept_of_the_unflagged_and_of_selected_rows(
    signed_in: Callable[[str], ConsoleClient], store: Store, utility: dict[str, Any]
) -> None:
    clerk = signed_in("billing_clerk")
    page = clerk.get(f"/review?period={PERIOD}")
    assert 'id="count-unflagged">3<' in page.text
    response = clerk.post("/review/accept-unflagged", {"period": PERIOD})
    assert response.status_code == 303 and "n=3" in response.headers["location"]
    assert set(approved(store)) == {"M00000001", "M00000011", "M00000002"}
    assert "3 unflagged readings accepted" in clerk.get(response.headers["location"]).text

    rows = utility["rows"]
    # All or none: the unread meter has no candidate, so the spike is not accepted either.
    refused = clerk.post("/review/accept", {"period": PERIOD, "ids": [rows["M00000003"], rows["M00000004"]]})
    assert refused.status_code == 400 and "no candidate" in refused.text
    assert status_of(store, rows["M00000003"]) == "pending"
    done = clerk.post("/review/accept", {"period": PERIOD, "ids": [rows["M00000003"]], "back": "/review?flagged=1"})
    assert done.status_code == 303 and done.headers["location"].startswith("/review?flagged=1")
    assert approved(store)["M00000003"][1] == "automatic"
    estimated = clerk.post("/review/accept", {"period": PERIOD, "ids": [rows["M00000004"]], "action": "estimate"})
    assert estimated.status_code == 303
    assert approved(store)["M00000004"][1] == "estimated"
    assert count(store, "SELECT count(*) FROM reading_review WHERE status = 'pending'") == 0


def test_the_meter_reader_enters_a_reading_but_cannot_approve(
    signed_in: Callable[[str], ConsoleClient], store: Store, utility: dict[str, Any]
) -> None:
    reader = signed_in("meter_reader")
    book = reader.get(f"/review/books/B1?period={PERIOD}")
    assert book.status_code == 200 and 'id="manual-form"' in book.text
    assert [r[1] for r in table_rows(book.text, "route")] == ["M00000002", "M00000003", "M00000004"]

    bad = reader.post(
        "/review/books/B1/readings",
        {"meter_no": "M00000004", "value": "35o", "read_at": "2024-01-31T18:00", "period": PERIOD},
    )
    assert bad.status_code == 400 and "is not a non-negative number" in bad.text
    outside = reader.post(
        "/review/books/B1/readings",
        {"meter_no": "M00000001", "value": "5", "read_at": "2024-01-31T18:00", "period": PERIOD},
    )
    assert outside.status_code == 400 and "not in this book" in outside.text
    assert count(store, "SELECT count(*) FROM manual_reading") == 0

    response = reader.post(
        "/review/books/B1/readings",
        {"meter_no": "M00000004", "value": "350.5", "read_at": "2024-01-31T18:00", "period": PERIOD},
    )
    assert response.status_code == 303
    feedback = reader.get(response.headers["location"]).text.split('id="entry-feedback"', 1)[1].split("</div>", 1)[0]
    assert "350.500" in feedback and "Previous 319.000" in feedback and "use 31.500" in feedback
    with store.connection() as conn:
        entry = conn.execute(
            """SELECT mr.value, mr.entered_by, rd.code, b.code, mr.source FROM manual_reading mr
                 JOIN meter_reader rd ON rd.id = mr.reader_id JOIN reading_book b ON b.id = mr.book_id"""
        ).fetchone()
    assert entry == (Decimal("350.500"), "meter_reader", "R1", "B1", "manual")

    spike = utility["rows"]["M00000003"]
    assert 'action="/review/validate"' not in reader.get(f"/review?period={PERIOD}").text
    assert reader.post(f"/review/{spike}/accept").status_code == 403
    assert reader.post("/review/accept-unflagged", {"period": PERIOD}).status_code == 403
    assert api_post(reader, "/api/v1/review/accept", {"ids": [spike]}).status_code == 403
    assert count(store, "SELECT count(*) FROM billing_reading") == 0

    api = api_post(
        reader,
        "/api/v1/books/B1/readings",
        {"meter_no": "M00000002", "value": "131.000", "read_at": "2024-01-31T09:00:00", "period": PERIOD},
    )
    assert api.status_code == 201 and api.json()["read_at"] == "2024-01-31T09:00:00+08:00"


def test_an_import_with_a_bad_row_reports_its_line_and_applies_nothing(
    signed_in: Callable[[str], ConsoleClient], store: Store, utility: dict[str, Any]
) -> None:
    reader = signed_in("meter_reader")
    exported = reader.post("/review/books/B1/export", {"period": PERIOD, "format": "csv"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert 'filename="B1-2024-01.csv"' in exported.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig"))))
    assert [r["meter_no"] for r in rows] == ["M00000002", "M00000003", "M00000004"]
    rows[0].update(reading_value="131", read_at="2024-01-31 09:00")
    rows[1].update(reading_value="abc", read_at="2024-01-31 09:10")  # line 3
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    data = out.getvalue().encode()

    page = reader.post("/review/books/B1/import", {"period": PERIOD}, files={"file": ("B1.csv", data, "text/csv")})
    assert page.status_code == 400 and "nothing was imported" in page.text
    assert table_rows(page.text, "import-errors") == [["3", "reading_value", "not a number: 'abc'"]]
    api = reader.http.post(
        "/api/v1/books/B1/import", files={"file": ("B1.csv", data, "text/csv")}, headers={"X-CSRF-Token": reader.csrf}
    )
    assert api.status_code == 400
    assert api.json()["errors"] == [{"line": 3, "column": "reading_value", "reason": "not a number: 'abc'"}]
    assert count(store, "SELECT count(*) FROM manual_reading") == 0
    assert count(store, "SELECT count(*) FROM reading_import") == 0

    stranger = (
        b"period,meter_no,reading_value,read_at\n2024-01,M00000002,131,2024-01-31\n2024-01,M00000001,9,2024-01-31\n"
    )
    page = reader.post("/review/books/B1/import", {"period": PERIOD}, files={"file": ("x.csv", stranger, "text/csv")})
    assert page.status_code == 400
    assert table_rows(page.text, "import-errors") == [["3", "meter_no", "meter M00000001 is not in book B1"]]
    assert count(store, "SELECT count(*) FROM manual_reading") == 0

    rows[1].update(reading_value="", read_at="")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    good = reader.post(
        "/review/books/B1/import", {"period": PERIOD}, files={"file": ("B1.csv", out.getvalue().encode(), "text/csv")}
    )
    assert good.status_code == 303 and "n=1" in good.headers["location"]
    assert count(store, "SELECT count(*) FROM manual_reading WHERE source = 'handheld'") == 1

    xlsx = reader.post("/review/books/B1/export", {"period": PERIOD, "format": "xlsx"})
    workbook = load_workbook(io.BytesIO(xlsx.content))
    assert workbook.worksheets[0].max_row == 4


def test_statistics_page_numbers_match(
    signed_in: Callable[[str], ConsoleClient], store: Store, utility: dict[str, Any]
) -> None:
    auditor = signed_in("auditor")
    page = auditor.get(f"/review/stats?period={PERIOD}").text
    by_book = {r[0]: r[1:] for r in table_rows(page, "rates-book")}
    assert by_book == {"B1 Garden 1": ["3", "2", "66.7%"], "(in no book)": ["2", "2", "100.0%"]}
    area_table = page.split('id="rates-area"')[1].split("</table>")[0]
    keys = re.findall(r'<tr data-key="([^"]*)"', area_table)
    by_area = {key: (r[1], r[2]) for key, r in zip(keys, table_rows(page, "rates-area"), strict=True)}
    assert by_area == {r.key: (str(r.expected), str(r.read)) for r in read_rates(store, "area", PERIOD)}
    assert 'id="stat-expected">5<' in page and 'id="stat-read">4<' in page and 'id="stat-rate">80.0%<' in page
    assert [r[0] for r in table_rows(page, "unread")] == ["M00000004"]
    rules = {r[0].split()[-1]: r[2:] for r in table_rows(page, "rules")}
    assert rules["spike"][1] == "1" and rules["rollover"] == ["1", "1"]

    api = auditor.http.get(f"/api/v1/reading-stats?by=reader&period={PERIOD}").json()
    assert {r["key"]: (r["expected"], r["read"], r["rate"]) for r in api["rates"]} == {
        "R1": (3, 2, "0.6667"),
        "": (2, 2, "1.0000"),
    }
    assert [u["meter_no"] for u in api["not_read"]] == ["M00000004"]
    periods = auditor.http.get("/api/v1/reading-stats?by=period").json()
    assert periods["rates"] == [{"key": PERIOD, "name": PERIOD, "expected": 5, "read": 4, "rate": "0.8000"}]


def test_api_queue_row_and_decisions(
    signed_in: Callable[[str], ConsoleClient], store: Store, utility: dict[str, Any]
) -> None:
    clerk = signed_in("billing_clerk")
    queue = clerk.http.get(f"/api/v1/review?period={PERIOD}&flagged=true").json()
    by_meter = {item["meter_no"]: item for item in queue["items"]}
    assert set(by_meter) == {"M00000001", "M00000003", "M00000004"} and queue["total"] == 3
    spike = by_meter["M00000003"]
    assert spike["consumption_m3"] == "45.500" and spike["worst_severity"] == "warning"
    assert [f["rule_id"] for f in spike["flags"]] == ["spike"] and spike["flags"][0]["count"] == 1
    assert by_meter["M00000004"]["estimation_reason"] and by_meter["M00000004"]["read_in_period"] is False

    row = clerk.http.get(f"/api/v1/review/{spike['id']}").json()
    assert row["all_flags"][0]["rule_id"] == "spike" and row["log"] == []
    corrected = api_post(
        clerk, f"/api/v1/review/{spike['id']}/correct", {"end_value": "231.000", "reason": "photo 123"}
    )
    assert corrected.status_code == 200
    row = clerk.http.get(f"/api/v1/review/{spike['id']}").json()
    assert row["status"] == "corrected" and row["approved"]["consumption_m3"] == "15.500"
    assert row["log"][0]["before"]["consumption_m3"] == "45.500" and row["log"][0]["after"]["end_value"] == "231.000"

    unread = by_meter["M00000004"]["id"]
    estimated = api_post(clerk, f"/api/v1/review/{unread}/estimate", {"consumption_m3": "30"})
    assert estimated.status_code == 200 and approved(store)["M00000004"][:2] == (Decimal("30.000"), "estimated")
    accepted = api_post(clerk, "/api/v1/review/accept-unflagged", {"period": PERIOD})
    assert accepted.json() == {"period": PERIOD, "accepted": 3}
    assert api_post(clerk, "/api/v1/review/accept", {"ids": [spike["id"]]}).status_code == 400  # already decided
    assert clerk.http.get("/api/v1/review/999999").status_code == 404

    run = api_post(clerk, "/api/v1/review/validate", {"period": PERIOD})
    assert run.status_code == 200 and run.json()["pending"] == 0  # decided rows keep their decision
    books = clerk.http.get(f"/api/v1/books?period={PERIOD}").json()["books"]
    assert books == [
        {
            "code": "B1",
            "name": "Garden 1",
            "area": None,
            "reader": "R1",
            "reading_day": 1,
            "active": True,
            "meters": 3,
            "schedule": {"planned_date": "2024-02-01", "reader": "R1", "status": "planned"},
        }
    ]
    route = clerk.http.get(f"/api/v1/books/B1?period={PERIOD}").json()["route"]
    assert [(m["seq"], m["meter_no"], m["review_status"]) for m in route] == [
        (1, "M00000002", "accepted"),
        (2, "M00000003", "corrected"),
        (3, "M00000004", "estimated"),
    ]


def test_area_limited_users_see_and_decide_their_areas_only(
    client_factory: Callable[[], ConsoleClient], store: Store, utility: dict[str, Any]
) -> None:
    with store.connection() as conn:
        area2 = conn.execute("SELECT id FROM area WHERE code = 'A2'").fetchone()[0]  # type: ignore[index]
    add_user(store, "clerk_a2", "billing_clerk", areas=[area2])
    clerk = client_factory()
    assert clerk.login("clerk_a2").status_code == 303
    page = clerk.get(f"/review?period={PERIOD}")
    assert "M00000002" in page.text and "M00000003" not in page.text and 'id="count-total">1<' in page.text
    spike = utility["rows"]["M00000003"]
    assert clerk.get(f"/review/{spike}").status_code == 403
    assert clerk.post(f"/review/{spike}/accept").status_code == 403
    assert api_post(clerk, "/api/v1/review/accept", {"ids": [spike]}).status_code == 403
    assert [i["meter_no"] for i in clerk.http.get(f"/api/v1/review?period={PERIOD}").json()["items"]] == ["M00000002"]
    response = clerk.post("/review/accept-unflagged", {"period": PERIOD})
    assert response.status_code == 303 and "n=1" in response.headers["location"]
    assert set(approved(store)) == {"M00000002"}
    stats = clerk.http.get(f"/api/v1/reading-stats?by=area&period={PERIOD}").json()
    assert [(r["key"], r["expected"]) for r in stats["rates"]] == [("A2", 1)] and stats["not_read"] == []
    assert clerk.get("/review/books/B1").status_code == 403  # the book has no area: not theirs
    assert clerk.http.get("/api/v1/books").json()["books"] == []


def test_keeping_a_book_route_reader_and_schedule(
    signed_in: Callable[[str], ConsoleClient], store: Store, utility: dict[str, Any]
) -> None:
    clerk = signed_in("billing_clerk")
    assert clerk.post("/review/books/B1/move", {"meter_no": "M00000004", "position": "1"}).status_code == 303
    assert clerk.post("/review/books/B1/move", {"meter_no": "M00000003", "direction": "up"}).status_code == 303
    route = table_rows(clerk.get(f"/review/books/B1?period={PERIOD}").text, "route")
    assert [(r[0], r[1]) for r in route] == [("1", "M00000004"), ("2", "M00000003"), ("3", "M00000002")]
    assert clerk.post("/review/readers", {"code": "R2", "name": "李娜"}).status_code == 303
    assert clerk.post("/review/books/B1/reader", {"reader_code": "R2"}).status_code == 303
    planned = clerk.post("/review/books/B1/schedule", {"period": "2024-02", "planned_date": "2024-03-02"})
    assert planned.status_code == 303
    assert clerk.post("/review/books/B1/meters", {"meter_nos": "M00000011"}).status_code == 303
    taken = clerk.post("/review/books", {"code": "B1", "name": "again"})
    assert taken.status_code == 400 and "taken" in taken.text
    assert clerk.post("/review/books/B1/meters/M00000002/remove").status_code == 303
    with store.connection() as conn:
        book = conn.execute(
            """SELECT rd.code, (SELECT planned_date::text FROM reading_schedule WHERE period = '2024-02'),
                      array(SELECT m.meter_no FROM reading_book_meter x JOIN meter m ON m.id = x.meter_id
                             ORDER BY x.seq)
                 FROM reading_book b JOIN meter_reader rd ON rd.id = b.reader_id WHERE b.code = 'B1'"""
        ).fetchone()
        who = conn.execute(
            "SELECT DISTINCT changed_by FROM change_history WHERE table_name = 'reading_book_meter' AND op = 'update'"
        ).fetchall()
    assert book == ("R2", "2024-03-02", ["M00000004", "M00000003", "M00000011"])
    assert who == [("billing_clerk",)]
    reader = signed_in("meter_reader")
    assert reader.post("/review/books/B1/move", {"meter_no": "M00000004", "direction": "down"}).status_code == 403


def test_validate_button_notices_and_chinese_pages(
    signed_in: Callable[[str], ConsoleClient], store: Store, utility: dict[str, Any]
) -> None:
    clerk = signed_in("supervisor")
    runs = count(store, "SELECT count(*) FROM validation_run")
    response = clerk.post("/review/validate", {"period": PERIOD})
    assert response.status_code == 303
    assert count(store, "SELECT count(*) FROM validation_run") == runs + 1
    notices = clerk.get(f"/review/books/B1/notices?period={PERIOD}")
    assert notices.status_code == 200 and "抄表通知单" in notices.text
    assert "style-src 'sha256-" in notices.headers["content-security-policy"]
    clerk.post("/lang", {"lang": "zh", "next": "/review"})
    page = clerk.get(f"/review?period={PERIOD}&flagged=1").text
    assert "抄表审核 · 2024-01" in page and "用量突增" in page and "无异常的全部通过" in page
    assert "抄表率" in clerk.get(f"/review/stats?period={PERIOD}").text
    assert "录入抄表读数" not in clerk.get(f"/review/books/B1?period={PERIOD}").text  # no readings.manual


def test_queue_filters_and_pages(
    signed_in: Callable[[str], ConsoleClient], store: Store, utility: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboards.routes import readings

    clerk = signed_in("billing_clerk")

    def meters(url: str) -> list[str]:
        page = clerk.get(url)
        assert page.status_code == 200, page.text
        return re.findall(r'<a href="/review/\d+\?back=[^"]*">(M\d+)</a>', page.text)

    assert meters(f"/review?period={PERIOD}&book=B1") == ["M00000002", "M00000003", "M00000004"]
    with store.connection() as conn:
        area3 = conn.execute("SELECT id FROM area WHERE code = 'A3'").fetchone()[0]  # type: ignore[index]
    assert meters(f"/review?period={PERIOD}&area={area3}") == ["M00000003"]
    assert meters(f"/review?period={PERIOD}&rule=rollover") == ["M00000001"]
    clerk.post("/review/accept-unflagged", {"period": PERIOD})
    assert meters(f"/review?period={PERIOD}&status=pending") == ["M00000003", "M00000004"]
    assert clerk.get(f"/review?period={PERIOD}&status=nonsense").status_code == 400
    assert clerk.get("/review?period=2024-13").status_code == 400

    monkeypatch.setattr(readings, "PAGE_SIZE", 2)
    first = clerk.get(f"/review?period={PERIOD}")
    assert "Page 1 of 3, 5 rows" in first.text and f'href="/review?period={PERIOD}&amp;page=2"' in first.text
    assert len(re.findall(r'<tr id="row-', clerk.get(f"/review?period={PERIOD}&page=3").text)) == 1
    books = clerk.get(f"/review/books?period={PERIOD}")
    assert [r[0] for r in table_rows(books.text, "books")] == ["B1"] and "抄表员 张伟" in books.text
