"""Reading books (抄表本), readers (抄表员), schedules, manual readings and meter replacement (换表).

Changes go through `Store.transaction(actor=...)`, so the change history names the person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from billing.reading_store import calendar_month, ensure_period
from meterhub.store import Store

SOURCES = ("handheld", "manual", "photo")


class BookError(ValueError):
    """A request on books, readers or manual readings that cannot be done; the message says why."""


@dataclass(frozen=True)
class BookMeter:
    seq: int
    meter_id: int
    meter_no: str
    account_no: str | None
    customer_name: str | None
    address: str


def _one(conn: psycopg.Connection[Any], query: str, params: Sequence[Any], what: str) -> Any:
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise BookError(f"unknown {what}")
    return row[0]


def book_id(conn: psycopg.Connection[Any], code: str) -> int:
    return int(_one(conn, "SELECT id FROM reading_book WHERE code = %s", [code], f"reading book {code!r}"))


def reader_id(conn: psycopg.Connection[Any], code: str) -> int:
    return int(_one(conn, "SELECT id FROM meter_reader WHERE code = %s", [code], f"reader {code!r}"))


def meter_id(conn: psycopg.Connection[Any], meter_no: str) -> int:
    return int(_one(conn, "SELECT id FROM meter WHERE meter_no = %s", [meter_no], f"meter {meter_no!r}"))


def create_reader(
    store: Store, code: str, name: str, *, actor: str, staff_username: str | None = None, phone: str = ""
) -> int:
    with store.transaction(actor=actor) as conn:
        staff = None
        if staff_username is not None:
            staff = _one(conn, "SELECT id FROM staff_user WHERE username = %s", [staff_username], "staff user")
        return int(
            _one(
                conn,
                "INSERT INTO meter_reader (code, name, staff_user_id, phone) VALUES (%s, %s, %s, %s) RETURNING id",
                [code, name, staff, phone],
                "reader",
            )
        )


def create_book(
    store: Store,
    code: str,
    name: str,
    *,
    actor: str,
    area_code: str | None = None,
    reader_code: str | None = None,
    reading_day: int = 1,
) -> int:
    with store.transaction(actor=actor) as conn:
        area = None if area_code is None else _one(conn, "SELECT id FROM area WHERE code = %s", [area_code], "area")
        reader = None if reader_code is None else reader_id(conn, reader_code)
        return int(
            _one(
                conn,
                """INSERT INTO reading_book (code, name, area_id, reader_id, reading_day)
                   VALUES (%s, %s, %s, %s, %s) RETURNING id""",
                [code, name, area, reader, reading_day],
                "book",
            )
        )


def assign_reader(store: Store, book_code: str, reader_code: str | None, *, actor: str) -> None:
    with store.transaction(actor=actor) as conn:
        reader = None if reader_code is None else reader_id(conn, reader_code)
        conn.execute("UPDATE reading_book SET reader_id = %s WHERE id = %s", [reader, book_id(conn, book_code)])


def add_meters(store: Store, book_code: str, meter_nos: Sequence[str], *, actor: str) -> None:
    """Append meters to the end of a book's route, in the order given (a meter is in one book at most)."""
    with store.transaction(actor=actor) as conn:
        book = book_id(conn, book_code)
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM reading_book_meter WHERE book_id = %s", [book]).fetchone()
        last = int(row[0]) if row else 0
        for offset, meter_no in enumerate(meter_nos, start=1):
            meter = meter_id(conn, meter_no)
            other = conn.execute(
                "SELECT b.code FROM reading_book_meter x JOIN reading_book b ON b.id = x.book_id WHERE x.meter_id = %s",
                [meter],
            ).fetchone()
            if other:
                raise BookError(f"meter {meter_no} is already in book {other[0]}")
            conn.execute(
                "INSERT INTO reading_book_meter (book_id, meter_id, seq) VALUES (%s, %s, %s)",
                [book, meter, last + offset],
            )


def remove_meter(store: Store, book_code: str, meter_no: str, *, actor: str) -> None:
    """Take a meter out of a book and close the gap in the route."""
    with store.transaction(actor=actor) as conn:
        book, meter = book_id(conn, book_code), meter_id(conn, meter_no)
        row = conn.execute(
            "DELETE FROM reading_book_meter WHERE book_id = %s AND meter_id = %s RETURNING seq", [book, meter]
        ).fetchone()
        if row is None:
            raise BookError(f"meter {meter_no} is not in book {book_code}")
        conn.execute("UPDATE reading_book_meter SET seq = seq - 1 WHERE book_id = %s AND seq > %s", [book, row[0]])


def reorder(store: Store, book_code: str, meter_nos: Sequence[str], *, actor: str) -> None:
    """Set the route order: `meter_nos` must list exactly the book's meters."""
    with store.transaction(actor=actor) as conn:
        book = book_id(conn, book_code)
        current = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT m.meter_no, x.id FROM reading_book_meter x JOIN meter m ON m.id = x.meter_id "
                "WHERE x.book_id = %s",
                [book],
            ).fetchall()
        }
        if sorted(meter_nos) != sorted(current):
            missing = sorted(set(current) - set(meter_nos))
            extra = sorted(set(meter_nos) - set(current))
            raise BookError(
                f"the new order must list the book's meters once each (missing {missing}, not in book {extra})"
            )
        with conn.cursor() as cur:  # the (book, seq) key is checked at commit, so swaps are fine
            cur.executemany(
                "UPDATE reading_book_meter SET seq = %s WHERE id = %s AND seq <> %s",
                [(seq, current[no], seq) for seq, no in enumerate(meter_nos, start=1)],
            )


def book_meters(store: Store, book_code: str) -> list[BookMeter]:
    """The book's meters in route order."""
    with store.connection() as conn:
        book = book_id(conn, book_code)
        rows = conn.execute(
            """SELECT x.seq, m.id, m.meter_no, a.account_no, c.name, coalesce(nullif(a.address, ''), c.address, '')
                 FROM reading_book_meter x
                 JOIN meter m ON m.id = x.meter_id
                 LEFT JOIN account a ON a.id = m.account_id
                 LEFT JOIN customer c ON c.id = a.customer_id
                WHERE x.book_id = %s ORDER BY x.seq""",
            [book],
        ).fetchall()
    return [BookMeter(*r) for r in rows]


def schedule(
    store: Store,
    book_code: str,
    period: str,
    *,
    actor: str,
    planned_date: date | None = None,
    reader_code: str | None = None,
) -> int:
    """Plan the reading of a book in a period (default: the book's reading day in the month after the
    period's start, i.e. the reading that closes the period) and by whom (default: the book's reader)."""
    with store.transaction(actor=actor) as conn:
        ensure_period(conn, period, store.settings.timezone)
        book = book_id(conn, book_code)
        row = conn.execute("SELECT reading_day, reader_id FROM reading_book WHERE id = %s", [book]).fetchone()
        assert row is not None
        if planned_date is None:
            end = calendar_month(period)[1]
            planned_date = end.replace(day=int(row[0])) - timedelta(days=1) if row[0] > 1 else end
        reader = row[1] if reader_code is None else reader_id(conn, reader_code)
        return int(
            _one(
                conn,
                """INSERT INTO reading_schedule (book_id, period, planned_date, reader_id) VALUES (%s, %s, %s, %s)
                   ON CONFLICT (book_id, period) DO UPDATE SET planned_date = EXCLUDED.planned_date,
                       reader_id = EXCLUDED.reader_id RETURNING id""",
                [book, period, planned_date, reader],
                "schedule",
            )
        )


def add_manual_reading(
    store: Store,
    meter_no: str,
    value: Decimal,
    ts: datetime,
    *,
    actor: str,
    period: str,
    source: str = "manual",
    reader_code: str | None = None,
    book_code: str | None = None,
    photo_ref: str = "",
    note: str = "",
) -> int:
    """Record a reading taken by a person; it is validated with the telemetry at the next validation run."""
    if source not in SOURCES:
        raise BookError(f"source must be one of {', '.join(SOURCES)}")
    if value < 0 or value.as_tuple().exponent < -3:  # type: ignore[operator]
        raise BookError("value must be non-negative with at most 3 decimals")
    if ts.tzinfo is None:
        raise BookError("ts must carry a time zone")
    with store.transaction(actor=actor) as conn:
        calendar_month(period)
        meter = meter_id(conn, meter_no)
        reader = None if reader_code is None else reader_id(conn, reader_code)
        book = None if book_code is None else book_id(conn, book_code)
        return int(
            _one(
                conn,
                """INSERT INTO manual_reading (meter_id, period, ts, value, source, book_id, reader_id, photo_ref, note)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                [meter, period, ts, value, source, book, reader, photo_ref, note],
                "manual reading",
            )
        )


def replace_meter(
    store: Store,
    account_id: int,
    old_meter_no: str,
    new_meter_no: str,
    at: datetime,
    *,
    actor: str,
    old_final_value: Decimal,
    new_first_value: Decimal = Decimal("0.000"),
    note: str = "",
) -> None:
    """换表: close the old meter's assignment with its final register, open the new meter's with its first
    register, and move the account to the new meter (the old one is marked removed)."""
    with store.transaction(actor=actor) as conn:
        replace_meter_in(
            conn,
            store.settings.timezone,
            account_id,
            old_meter_no,
            new_meter_no,
            at,
            old_final_value=old_final_value,
            new_first_value=new_first_value,
            note=note,
        )


def replace_meter_in(
    conn: psycopg.Connection[Any],
    timezone: str,
    account_id: int,
    old_meter_no: str,
    new_meter_no: str,
    at: datetime,
    *,
    old_final_value: Decimal,
    new_first_value: Decimal = Decimal("0.000"),
    note: str = "",
) -> None:
    """`replace_meter` inside the caller's transaction (for services that check and record more in the same
    transaction); the meters' install and remove dates are local dates in `timezone`."""
    old, new = meter_id(conn, old_meter_no), meter_id(conn, new_meter_no)
    open_row = conn.execute(
        "SELECT id, valid_from FROM meter_assignment WHERE meter_id = %s AND account_id = %s AND valid_to IS NULL",
        [old, account_id],
    ).fetchone()
    if open_row is None:
        meter = conn.execute("SELECT install_date, initial_reading FROM meter WHERE id = %s", [old]).fetchone()
        assert meter is not None
        since = datetime(1970, 1, 1, tzinfo=at.tzinfo)
        conn.execute(
            """INSERT INTO meter_assignment (account_id, meter_id, valid_from, valid_to, final_value, note)
               VALUES (%s, %s, coalesce(%s::date::timestamp AT TIME ZONE %s, %s), %s, %s, %s)""",
            [account_id, old, meter[0], timezone, since, at, old_final_value, note],
        )
    else:
        if open_row[1] >= at:
            raise BookError("the replacement time is before the old meter's assignment began")
        conn.execute(
            "UPDATE meter_assignment SET valid_to = %s, final_value = %s WHERE id = %s",
            [at, old_final_value, open_row[0]],
        )
    conn.execute(
        """INSERT INTO meter_assignment (account_id, meter_id, valid_from, first_value, note)
           VALUES (%s, %s, %s, %s, %s)""",
        [account_id, new, at, new_first_value, note],
    )
    conn.execute(
        "UPDATE meter SET status = 'removed', remove_date = (%s AT TIME ZONE %s)::date WHERE id = %s",
        [at, timezone, old],
    )
    conn.execute(
        """UPDATE meter SET account_id = %s, status = 'installed', install_date = (%s AT TIME ZONE %s)::date,
               initial_reading = %s WHERE id = %s""",
        [account_id, at, timezone, new_first_value, new],
    )
