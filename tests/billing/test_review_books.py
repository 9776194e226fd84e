"""Reading books, handheld export/import, notices and reading statistics on a hand-made book."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from openpyxl import load_workbook

from billing.handheld import ReadingFileError, export_book, import_readings, reading_notices_html
from billing.reading_books import (
    BookError,
    add_meters,
    book_meters,
    create_book,
    create_reader,
    remove_meter,
    reorder,
    schedule,
)
from billing.reading_stats import flags_by_rule, meters_not_read, read_rates
from billing.review_run import validate_period
from meterhub.store import Store
from tests.billing.review_helpers import NOW, PERIOD, build_utility


@pytest.fixture
def book(store: Store) -> dict[str, int]:
    ids = build_utility(store)
    create_reader(store, "R1", "抄表员 张伟", actor="admin")
    create_book(store, "B1", "Garden 1", actor="admin", reader_code="R1", reading_day=1)
    add_meters(store, "B1", ["M00000002", "M00000003", "M00000004"], actor="admin")
    schedule(store, "B1", PERIOD, actor="admin")
    return ids


def csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))


def to_csv(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def test_reorder_route_and_history(store: Store, book: dict[str, int]) -> None:
    reorder(store, "B1", ["M00000004", "M00000002", "M00000003"], actor="li")
    assert [(m.seq, m.meter_no) for m in book_meters(store, "B1")] == [
        (1, "M00000004"),
        (2, "M00000002"),
        (3, "M00000003"),
    ]
    with pytest.raises(BookError, match="once each"):
        reorder(store, "B1", ["M00000004", "M00000002"], actor="li")
    with pytest.raises(BookError, match="already in book B1"):
        add_meters(store, "B1", ["M00000002"], actor="li")
    remove_meter(store, "B1", "M00000002", actor="li")
    assert [(m.seq, m.meter_no) for m in book_meters(store, "B1")] == [(1, "M00000004"), (2, "M00000003")]
    with store.connection() as conn:
        who = conn.execute(
            "SELECT DISTINCT changed_by FROM change_history WHERE table_name = 'reading_book_meter' AND op = 'update'"
        ).fetchall()
    assert who == [("li",)]


def test_csv_round_trip_becomes_a_manual_candidate(store: Store, book: dict[str, int]) -> None:
    rows = csv_rows(export_book(store, "B1", PERIOD, "csv"))
    assert [r["meter_no"] for r in rows] == ["M00000002", "M00000003", "M00000004"]
    assert rows[2]["previous_value"] == "319.000" and rows[2]["previous_read_at"] == "2023-12-20 00:00"
    rows[2].update(reading_value="350.5", read_at="2024-01-31 18:00", note="meter behind the door")
    result = import_readings(store, to_csv(rows), "B1.csv", actor="reader", now=NOW)
    assert (result.rows, result.readings, result.not_read) == (3, 1, 2)
    with store.connection() as conn:
        manual = conn.execute(
            "SELECT source, value, entered_by, reader_id IS NOT NULL, book_id IS NOT NULL, note FROM manual_reading"
        ).fetchall()
        status = conn.execute("SELECT status FROM reading_schedule").fetchone()
    assert manual == [("handheld", Decimal("350.500"), "reader", True, True, "meter behind the door")]
    assert status == ("imported",)
    validate_period(store, PERIOD, actor="clerk", now=NOW)
    with store.connection() as conn:
        row = conn.execute(
            "SELECT candidate_source, end_value, consumption_m3, read_in_period FROM reading_review r "
            "JOIN meter m ON m.id = r.meter_id WHERE m.meter_no = 'M00000004'"
        ).fetchone()
    assert row == ("manual", Decimal("350.500"), Decimal("31.500"), True)


def test_excel_round_trip(store: Store, book: dict[str, int]) -> None:
    workbook = load_workbook(io.BytesIO(export_book(store, "B1", PERIOD, "xlsx")))
    sheet = workbook.worksheets[0]
    header = [c.value for c in sheet[1]]
    assert sheet.max_row == 4 and header[:4] == ["period", "book_code", "seq", "meter_no"]
    sheet.cell(row=2, column=header.index("reading_value") + 1, value="131.000")
    sheet.cell(row=2, column=header.index("read_at") + 1, value="2024-01-31")
    buffer = io.BytesIO()
    workbook.save(buffer)
    result = import_readings(store, buffer.getvalue(), "B1.xlsx", actor="reader", now=NOW)
    assert result.readings == 1
    with store.connection() as conn:
        assert conn.execute("SELECT format FROM reading_import").fetchone() == ("xlsx",)
        value = conn.execute("SELECT value, ts FROM manual_reading").fetchone()
    assert value is not None and value[0] == Decimal("131.000")
    assert value[1].isoformat() == "2024-01-31T04:00:00+00:00"  # a bare date is 12:00 local


def test_bad_rows_reject_the_whole_file_with_line_numbers(store: Store, book: dict[str, int]) -> None:
    text = (
        "period,book_code,meter_no,reading_value,read_at\n"
        "2024-01,B1,M00000002,131,2024-01-31 09:00\n"  # line 2: good
        "2024-01,B1,M99999999,1,2024-01-31 09:00\n"  # line 3: unknown meter
        "2024-01,B1,M00000003,abc,2024-01-31 09:00\n"  # line 4: not a number
        "2024-01,B1,M00000004,320.1234,2030-01-01 09:00\n"  # line 5: 4 decimals, future
        "2024-01,B1,M00000002,132,2024-01-31 10:00\n"  # line 6: meter read twice
        "2024-13,,M00000001,10,2024-01-31 10:00\n"  # line 7: bad period
        "2024-01,B1,M00000001,10,2024-01-31 10:00\n"  # line 8: not in book B1
        "2024-01,B1,M00000003,,\n"  # line 9: not read, fine
    )
    with pytest.raises(ReadingFileError) as caught:
        import_readings(store, text.encode(), "bad.csv", actor="reader", now=NOW)
    found = [(e.line, e.column) for e in caught.value.errors]
    assert found == [
        (3, "meter_no"),
        (4, "reading_value"),
        (5, "reading_value"),
        (5, "read_at"),
        (6, "meter_no"),
        (7, "period"),
        (8, "book_code"),
    ]
    assert "line 4: reading_value: not a number: 'abc'" in str(caught.value)
    with store.connection() as conn:
        assert conn.execute("SELECT count(*) FROM manual_reading").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM reading_import").fetchone() == (0,)
    with pytest.raises(ReadingFileError, match="missing column"):
        import_readings(store, b"meter_no,value\nM00000002,1\n", "x.csv", actor="reader", now=NOW)


def test_statistics_and_notices(store: Store, book: dict[str, int]) -> None:
    validate_period(store, PERIOD, actor="clerk", now=NOW)
    by_book = {r.key: (r.expected, r.read, r.rate) for r in read_rates(store, "book", PERIOD)}
    assert by_book == {"B1": (3, 2, Decimal("0.6667")), "": (2, 2, Decimal("1.0000"))}
    by_reader = {r.key: (r.expected, r.read) for r in read_rates(store, "reader", PERIOD)}
    assert by_reader == {"R1": (3, 2), "": (2, 2)}
    by_area = {r.key: (r.expected, r.read) for r in read_rates(store, "area", PERIOD)}
    assert by_area == {"A1": (2, 2), "A2": (1, 1), "A3": (1, 1), "A4": (1, 0)}
    assert [(r.key, r.expected, r.read) for r in read_rates(store, "period")] == [(PERIOD, 5, 4)]
    (unread,) = meters_not_read(store, PERIOD)
    assert (unread.meter_no, unread.book_code, unread.seq) == ("M00000004", "B1", 3)
    rules = {r.rule_id: (r.severity, r.meters) for r in flags_by_rule(store, PERIOD)}
    assert rules["rollover"] == ("info", 1) and rules["spike"][1] == 1 and "gap" in rules
    page = reading_notices_html(store, "B1", PERIOD)
    assert page.index("M00000002") < page.index("M00000003") < page.index("M00000004")
    assert "15.500" in page and "not read" not in page.split("M00000004")[0]
