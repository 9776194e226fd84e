"""Lists exported as Excel (or CSV): one sheet, a bold header row, the values typed as they are.

Every list page of the console offers its current search as a file: `table_response("meters", headers,
rows, "xlsx")`. Decimals stay exact (written as numbers with their own number of places), dates and times
as Excel dates in the console's time zone, text as text; a CSV is UTF-8 with a BOM so that Excel opens
Chinese text correctly.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi.responses import Response

MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
MAX_ROWS = 200_000


class ExportTooLarge(ValueError):
    pass


def _cell(value: Any, zone: ZoneInfo | None) -> Any:
    if isinstance(value, datetime):
        local = value.astimezone(zone) if (zone and value.tzinfo) else value
        return local.replace(tzinfo=None)
    if isinstance(value, bool | int | float | Decimal | date) or value is None:
        return value
    return str(value)


def xlsx_bytes(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], *, sheet: str = "Sheet1", timezone: str | None = None
) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    zone = ZoneInfo(timezone) if timezone else None
    book = Workbook(write_only=True)
    ws = book.create_sheet(title=sheet[:31] or "Sheet1")
    bold = Font(bold=True)
    from openpyxl.cell import WriteOnlyCell

    header_cells = []
    for text in headers:
        cell = WriteOnlyCell(ws, value=text)
        cell.font = bold
        header_cells.append(cell)
    ws.append(header_cells)
    for count, row in enumerate(rows, start=1):
        if count > MAX_ROWS:
            raise ExportTooLarge(f"more than {MAX_ROWS} rows; narrow the search")
        out = []
        for value in row:
            cell_value = _cell(value, zone)
            if isinstance(cell_value, Decimal):
                cell = WriteOnlyCell(ws, value=cell_value)
                places = max(0, -int(cell_value.as_tuple().exponent))
                cell.number_format = "0." + "0" * places if places else "0"
                out.append(cell)
            elif isinstance(cell_value, datetime):
                cell = WriteOnlyCell(ws, value=cell_value)
                cell.number_format = "yyyy-mm-dd hh:mm:ss"
                out.append(cell)
            elif isinstance(cell_value, date):
                cell = WriteOnlyCell(ws, value=cell_value)
                cell.number_format = "yyyy-mm-dd"
                out.append(cell)
            else:
                out.append(cell_value)
        ws.append(out)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def csv_bytes(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, timezone: str | None = None) -> bytes:
    zone = ZoneInfo(timezone) if timezone else None
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(headers)
    for count, row in enumerate(rows, start=1):
        if count > MAX_ROWS:
            raise ExportTooLarge(f"more than {MAX_ROWS} rows; narrow the search")
        values = []
        for value in row:
            cell = _cell(value, zone)
            values.append("" if cell is None else cell.isoformat(sep=" ") if isinstance(cell, datetime) else cell)
        writer.writerow(values)
    return ("\ufeff" + text.getvalue()).encode("utf-8")


def table_response(
    name: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    fmt: str = "xlsx",
    *,
    timezone: str | None = None,
) -> Response:
    """A download of `rows` under `headers`, as `name.xlsx` or `name.csv`."""
    if fmt not in MEDIA_TYPES:
        raise ValueError(f"unknown export format {fmt!r}")
    body = (
        xlsx_bytes(headers, rows, sheet=name, timezone=timezone)
        if fmt == "xlsx"
        else csv_bytes(headers, rows, timezone=timezone)
    )
    filename = f"{name}.{fmt}"
    return Response(
        body,
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}"},
    )
