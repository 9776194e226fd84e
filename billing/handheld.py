"""Handheld reading devices (抄表机): the to-read list of a book as CSV or Excel, importing the results, and
printable reading notices.

File template — one header row, then one row per meter in route order (the export fills every column but
`reading_value`, `read_at`, `source`, `photo_ref`, `note`; an import needs only the four marked *):

| column | meaning |
| --- | --- |
| `period` * | reading period, `YYYY-MM` |
| `book_code` | reading book (抄表本) code; when given, the meter must be in that book |
| `seq` | place in the route |
| `meter_no` * | meter number |
| `account_no`, `customer_name`, `address` | for the reader; ignored on import |
| `previous_value`, `previous_read_at` | the last known register (m3) and when it was read; ignored on import |
| `reading_value` * | the register read, m3, at most 3 decimals; **blank = not read** (the row is skipped) |
| `read_at` * | when read: `YYYY-MM-DD HH:MM[:SS]` (local unless an offset is given), `YYYY-MM-DD` (12:00 local) |
|  | or an Excel date cell |
| `source` | `handheld` (default), `manual` or `photo` |
| `photo_ref`, `note` | free text |

CSV is UTF-8 (a byte-order mark is written on export so that Excel shows Chinese names, and accepted on
import). Line numbers in errors count the header as line 1, in CSV and in Excel alike. A file with any bad
row is refused whole: nothing is recorded.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from billing.reading_books import SOURCES, book_id
from billing.reading_store import calendar_month, ensure_period, parse_period
from meterhub.store import Store

TEMPLATE_COLUMNS = (
    "period",
    "book_code",
    "seq",
    "meter_no",
    "account_no",
    "customer_name",
    "address",
    "previous_value",
    "previous_read_at",
    "reading_value",
    "read_at",
    "source",
    "photo_ref",
    "note",
)
REQUIRED_COLUMNS = ("period", "meter_no", "reading_value", "read_at")
FUTURE_TOLERANCE = timedelta(minutes=5)
MAX_VALUE = Decimal("99999999999.999")  # numeric(14, 3)


@dataclass(frozen=True)
class RowError:
    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.column}: {self.reason}" if self.column else f"line {self.line}: {self.reason}"


class ReadingFileError(ValueError):
    """A reading file was refused; `errors` lists every bad row with its line number and reason."""

    def __init__(self, errors: list[RowError]) -> None:
        self.errors = errors
        shown = "; ".join(str(e) for e in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} bad row(s), nothing imported: {shown}{more}")


@dataclass(frozen=True)
class ImportResult:
    import_id: int
    rows: int
    readings: int
    not_read: int


# -- export -------------------------------------------------------------------------------------------------------

_TO_READ = """
SELECT x.seq, m.meter_no, a.account_no, c.name, coalesce(nullif(a.address, ''), c.address, ''), prev.value, prev.ts
  FROM reading_book_meter x
  JOIN meter m ON m.id = x.meter_id
  LEFT JOIN account a ON a.id = m.account_id
  LEFT JOIN customer c ON c.id = a.customer_id
  LEFT JOIN LATERAL (
        SELECT u.value, u.ts FROM (
            (SELECT value, ts FROM reading
              WHERE meter_id = m.id AND channel = 'volume_m3' AND ts <= %(end)s ORDER BY ts DESC LIMIT 1)
            UNION ALL
            (SELECT value, ts FROM manual_reading WHERE meter_id = m.id AND ts <= %(end)s ORDER BY ts DESC LIMIT 1)
        ) u ORDER BY u.ts DESC LIMIT 1) prev ON true
 WHERE x.book_id = %(book)s
 ORDER BY x.seq
"""


def to_read(store: Store, book_code: str, period: str) -> list[dict[str, str]]:
    """The book's to-read list for a period in route order, as template rows (strings); marks the book's
    schedule for the period as exported."""
    tz = ZoneInfo(store.settings.timezone)
    with store.transaction() as conn:
        span = ensure_period(conn, period, store.settings.timezone)
        book = book_id(conn, book_code)
        rows = conn.execute(_TO_READ, {"book": book, "end": span.end_ts}).fetchall()
        conn.execute(
            "UPDATE reading_schedule SET status = 'exported', exported_at = now() "
            "WHERE book_id = %s AND period = %s AND status = 'planned'",
            [book, period],
        )
    out = []
    for seq, meter_no, account_no, name, address, value, ts in rows:
        out.append(
            {
                "period": period,
                "book_code": book_code,
                "seq": str(seq),
                "meter_no": meter_no,
                "account_no": account_no or "",
                "customer_name": name or "",
                "address": address or "",
                "previous_value": "" if value is None else f"{Decimal(value):.3f}",
                "previous_read_at": "" if ts is None else ts.astimezone(tz).strftime("%Y-%m-%d %H:%M"),
                "reading_value": "",
                "read_at": "",
                "source": "handheld",
                "photo_ref": "",
                "note": "",
            }
        )
    return out


def export_book(store: Store, book_code: str, period: str, fmt: str) -> bytes:
    """The to-read list as a file: `fmt` is `csv` or `xlsx`."""
    rows = to_read(store, book_code, period)
    if fmt == "csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=TEMPLATE_COLUMNS, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
        return text.getvalue().encode("utf-8-sig")
    if fmt == "xlsx":
        from openpyxl import Workbook

        book = Workbook()
        sheet = book.active
        assert sheet is not None
        sheet.title = f"{book_code} {period}"[:31]
        sheet.append(list(TEMPLATE_COLUMNS))
        for row in rows:
            sheet.append([row[c] for c in TEMPLATE_COLUMNS])
        for cell in next(sheet.iter_cols(min_col=10, max_col=10, min_row=2), ()):  # reading_value typed as text
            cell.number_format = "@"
        buffer = io.BytesIO()
        book.save(buffer)
        return buffer.getvalue()
    raise ValueError(f"format must be csv or xlsx, not {fmt!r}")


# -- import -------------------------------------------------------------------------------------------------------


def _records(data: bytes, fmt: str) -> tuple[list[str], list[tuple[int, list[Any]]]]:
    """Header and (line, values) records of a CSV or Excel file."""
    if fmt == "xlsx":
        from openpyxl import load_workbook

        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        sheet = book.worksheets[0]
        rows = list(sheet.iter_rows(values_only=True))
        book.close()
        header = [str(v).strip() if v is not None else "" for v in (rows[0] if rows else [])]
        return header, [(i, list(r)) for i, r in enumerate(rows[1:], start=2)]
    text = data.decode("utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    records = []
    for values in reader:
        records.append((reader.line_num, list(values)))
    return header, records


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _value(raw: Any) -> Decimal:
    if isinstance(raw, bool):
        raise ValueError("not a number")
    try:
        value = Decimal(repr(raw)) if isinstance(raw, float) else Decimal(_text(raw))
    except InvalidOperation:
        raise ValueError(f"not a number: {_text(raw)!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a number: {_text(raw)!r}")
    if value < 0:
        raise ValueError("negative")
    if value > MAX_VALUE:
        raise ValueError("too large")
    if value != value.quantize(Decimal("0.001")):
        raise ValueError("more than 3 decimals")
    return value.quantize(Decimal("0.001"))


def _moment(raw: Any, tz: ZoneInfo) -> datetime:
    if isinstance(raw, datetime):
        moment = raw
    elif isinstance(raw, date):
        moment = datetime.combine(raw, time(12))
    else:
        text = _text(raw)
        try:
            if len(text) == 10:
                moment = datetime.combine(date.fromisoformat(text), time(12))
            else:
                moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not a date or time: {text!r} (use YYYY-MM-DD HH:MM)") from None
    return moment.replace(tzinfo=tz) if moment.tzinfo is None else moment


def import_readings(
    store: Store, data: bytes, file_name: str, *, actor: str, now: datetime | None = None
) -> ImportResult:
    """Record the readings of a handheld result file (CSV or Excel, by content) as manual readings, in one
    transaction. Raises `ReadingFileError` listing every bad row; then nothing is recorded."""
    fmt = "xlsx" if data[:4] == b"PK\x03\x04" else "csv"
    tz = ZoneInfo(store.settings.timezone)
    now = now or datetime.now(UTC)
    try:
        header, records = _records(data, fmt)
    except (UnicodeDecodeError, csv.Error, OSError, KeyError, ValueError) as exc:
        raise ReadingFileError([RowError(1, "", f"not a readable {fmt} file: {exc}")]) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ReadingFileError([RowError(1, "", f"missing column(s): {', '.join(missing)}")])
    index = {name: header.index(name) for name in TEMPLATE_COLUMNS if name in header}

    def cell(values: list[Any], name: str) -> Any:
        i = index.get(name)
        return values[i] if i is not None and i < len(values) else None

    with store.transaction(actor=actor) as conn:
        meters = {
            no: (mid, book)
            for no, mid, book in conn.execute(
                """SELECT m.meter_no, m.id, b.code FROM meter m
                    LEFT JOIN reading_book_meter x ON x.meter_id = m.id
                    LEFT JOIN reading_book b ON b.id = x.book_id
                   WHERE m.meter_no = ANY(%s)""",
                [[_text(cell(v, "meter_no")) for _, v in records]],
            ).fetchall()
        }
        books = {r[0]: r[1] for r in conn.execute("SELECT code, id FROM reading_book").fetchall()}
        errors: list[RowError] = []
        good: list[tuple[Any, ...]] = []
        seen: dict[tuple[str, str], int] = {}
        not_read = 0
        for line, values in records:
            if all(_text(v) == "" for v in values):
                continue
            row_errors = []
            period = _text(cell(values, "period"))
            try:
                parse_period(period)
            except ValueError as exc:
                row_errors.append(RowError(line, "period", str(exc)))
            meter_no = _text(cell(values, "meter_no"))
            meter = meters.get(meter_no)
            if not meter_no:
                row_errors.append(RowError(line, "meter_no", "missing"))
            elif meter is None:
                row_errors.append(RowError(line, "meter_no", f"unknown meter {meter_no!r}"))
            book_code = _text(cell(values, "book_code"))
            if book_code and book_code not in books:
                row_errors.append(RowError(line, "book_code", f"unknown reading book {book_code!r}"))
            elif book_code and meter is not None and meter[1] != book_code:
                row_errors.append(RowError(line, "book_code", f"meter {meter_no} is not in book {book_code}"))
            raw_value = cell(values, "reading_value")
            if _text(raw_value) == "":
                if not row_errors:
                    not_read += 1
                errors.extend(row_errors)
                continue
            value = moment = None
            try:
                value = _value(raw_value)
            except ValueError as exc:
                row_errors.append(RowError(line, "reading_value", str(exc)))
            try:
                moment = _moment(cell(values, "read_at"), tz)
                if moment > now + FUTURE_TOLERANCE:
                    row_errors.append(RowError(line, "read_at", "in the future"))
            except ValueError as exc:
                row_errors.append(RowError(line, "read_at", str(exc)))
            source = _text(cell(values, "source")) or "handheld"
            if source not in SOURCES:
                row_errors.append(RowError(line, "source", f"must be one of {', '.join(SOURCES)}"))
            if meter_no and (period, meter_no) in seen:
                row_errors.append(
                    RowError(line, "meter_no", f"meter {meter_no} already read on line {seen[period, meter_no]}")
                )
            seen.setdefault((period, meter_no), line)
            if row_errors:
                errors.extend(row_errors)
                continue
            assert meter is not None
            good.append(
                (
                    meter[0],
                    period,
                    moment,
                    value,
                    source,
                    books.get(book_code),
                    _text(cell(values, "photo_ref")),
                    _text(cell(values, "note")),
                )
            )
        if errors:
            raise ReadingFileError(errors)
        for period in {g[1] for g in good}:
            ensure_period(conn, period, store.settings.timezone)
        row = conn.execute(
            """INSERT INTO reading_import (file_name, format, sha256, rows, readings, imported_by)
               VALUES (%s, %s, %s, %s, %s, meterhub_actor()) RETURNING id""",
            [Path(file_name).name, fmt, hashlib.sha256(data).hexdigest(), len(records), len(good)],
        ).fetchone()
        assert row is not None
        import_id = int(row[0])
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO manual_reading (meter_id, period, ts, value, source, book_id, reader_id, import_id,
                                              photo_ref, note)
                   SELECT %s, %s, %s, %s, %s, b.id, coalesce(s.reader_id, b.reader_id), %s, %s, %s
                     FROM (SELECT %s::bigint AS id) k
                     LEFT JOIN reading_book b ON b.id = k.id
                     LEFT JOIN reading_schedule s ON s.book_id = b.id AND s.period = %s""",
                [(g[0], g[1], g[2], g[3], g[4], import_id, g[6], g[7], g[5], g[1]) for g in good],
            )
        conn.execute(
            """UPDATE reading_schedule s SET status = 'imported', imported_at = now()
                WHERE status IN ('planned', 'exported')
                  AND EXISTS (SELECT 1 FROM manual_reading r WHERE r.import_id = %s AND r.book_id = s.book_id
                                 AND r.period = s.period)""",
            [import_id],
        )
    return ImportResult(import_id=import_id, rows=len(records), readings=len(good), not_read=not_read)


# -- notices ------------------------------------------------------------------------------------------------------

_NOTICE_STYLE = (
    "body{font-family:sans-serif;font-size:12pt}.notice{border:1px solid #000;padding:8px;margin:8px 0;"
    "page-break-inside:avoid}table{border-collapse:collapse}td{padding:2px 8px}"
    "@media print{.notice{break-inside:avoid}}"
)


def reading_notices_html(store: Store, book_code: str, period: str) -> str:
    """Printable reading notices (抄表通知单) of a book for a period, one per meter in route order: the
    previous and current register and the use, from the review queue (approved values when decided)."""
    start, end = calendar_month(period)
    with store.connection() as conn:
        book = book_id(conn, book_code)
        rows = conn.execute(
            """SELECT x.seq, m.meter_no, a.account_no, c.name, coalesce(nullif(a.address, ''), c.address, ''),
                      coalesce(b.start_value, r.start_value), coalesce(b.end_value, r.end_value),
                      coalesce(b.consumption_m3, r.consumption_m3), coalesce(b.end_ts, r.end_ts), r.status
                 FROM reading_book_meter x
                 JOIN meter m ON m.id = x.meter_id
                 LEFT JOIN account a ON a.id = m.account_id
                 LEFT JOIN customer c ON c.id = a.customer_id
                 LEFT JOIN reading_review r ON r.meter_id = m.id AND r.period = %s
                 LEFT JOIN billing_reading b ON b.id = r.billing_reading_id
                WHERE x.book_id = %s ORDER BY x.seq, a.account_no""",
            [period, book],
        ).fetchall()
    tz = ZoneInfo(store.settings.timezone)

    def show(value: Any) -> str:
        if value is None:
            return "&nbsp;" * 12
        if isinstance(value, datetime):
            return html.escape(value.astimezone(tz).strftime("%Y-%m-%d"))
        return html.escape(str(value))

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Reading notices {html.escape(book_code)} {html.escape(period)}</title>",
        f"<style>{_NOTICE_STYLE}</style></head><body>",
    ]
    for seq, meter_no, account_no, name, address, start_value, end_value, use, read_at, status in rows:
        parts.append(
            "<div class='notice'><h3>抄表通知单 Reading notice</h3><table>"
            f"<tr><td>Period 期间</td><td>{html.escape(period)} ({start} – {end - timedelta(days=1)})</td></tr>"
            f"<tr><td>Account 户号</td><td>{show(account_no)}</td><td>Route 序号</td><td>{seq}</td></tr>"
            f"<tr><td>Customer 户名</td><td>{show(name)}</td></tr>"
            f"<tr><td>Address 地址</td><td>{show(address)}</td></tr>"
            f"<tr><td>Meter 表号</td><td>{show(meter_no)}</td></tr>"
            f"<tr><td>Previous 上期读数 (m³)</td><td>{show(start_value)}</td></tr>"
            f"<tr><td>Current 本期读数 (m³)</td><td>{show(end_value)}</td>"
            f"<td>Read 抄表日期</td><td>{show(read_at)}</td></tr>"
            f"<tr><td>Use 用气量 (m³)</td><td>{show(use)}</td>"
            f"<td>Status 状态</td><td>{show(status or 'not read')}</td></tr>"
            "</table></div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
