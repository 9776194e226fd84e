"""Reading statistics for a period: read success rate per book, reader or area, meters not read, flags by
rule. They read the review queue of the period, so run the validation first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from psycopg.rows import dict_row

from meterhub.store import Store

Grouping = Literal["book", "reader", "area", "period"]
_GROUPS: dict[str, tuple[str, str]] = {
    # key, name — meters without a book, reader or area are grouped under an empty key
    "book": ("coalesce(b.code, '')", "coalesce(b.name, '(no book)')"),
    "reader": ("coalesce(rd.code, '')", "coalesce(rd.name, '(no reader)')"),
    "area": ("coalesce(ar.code, '')", "coalesce(ar.name, '(no area)')"),
    "period": ("r.period", "r.period"),
}


@dataclass(frozen=True)
class ReadRate:
    key: str
    name: str
    expected: int
    read: int

    @property
    def rate(self) -> Decimal:
        """Share read, 0–1 with 4 decimals."""
        return (
            (Decimal(self.read) / Decimal(self.expected)).quantize(Decimal("0.0001")) if self.expected else Decimal(0)
        )


@dataclass(frozen=True)
class UnreadMeter:
    meter_no: str
    account_no: str
    book_code: str | None
    seq: int | None
    address: str
    last_reading_at: datetime | None
    estimation_reason: str | None


@dataclass(frozen=True)
class RuleCount:
    rule_id: str
    severity: str
    flags: int
    meters: int


_FROM = """
  FROM reading_review r
  JOIN account a ON a.id = r.account_id
  LEFT JOIN community co ON co.id = a.community_id
  LEFT JOIN area ar ON ar.id = co.area_id
  LEFT JOIN reading_book_meter x ON x.meter_id = r.meter_id
  LEFT JOIN reading_book b ON b.id = x.book_id
  LEFT JOIN reading_schedule s ON s.book_id = b.id AND s.period = r.period
  LEFT JOIN meter_reader rd ON rd.id = coalesce(s.reader_id, b.reader_id)
"""


def read_rates(store: Store, by: Grouping, period: str | None = None) -> list[ReadRate]:
    """Meters expected (queue rows) and read (a reading inside the period) per book, reader, area — or per
    period, over all periods when `period` is None."""
    key, name = _GROUPS[by]
    where = "" if period is None else "WHERE r.period = %(period)s"
    query = f"""SELECT {key} AS key, {name} AS name, count(*) AS expected, count(*) FILTER (WHERE r.read_in_period)
                  {_FROM} {where} GROUP BY 1, 2 ORDER BY 1"""
    with store.connection() as conn:
        return [ReadRate(*row) for row in conn.execute(query, {"period": period}).fetchall()]


def meters_not_read(store: Store, period: str, book_code: str | None = None) -> list[UnreadMeter]:
    """Meters with no reading inside the period, by book and route order."""
    where = "r.period = %(period)s AND NOT r.read_in_period"
    if book_code is not None:
        where += " AND b.code = %(book)s"
    query = f"""SELECT m.meter_no, a.account_no, b.code AS book_code, x.seq, a.address,
                       r.end_ts AS last_reading_at, r.estimation_reason
                  {_FROM} JOIN meter m ON m.id = r.meter_id
                 WHERE {where} ORDER BY b.code NULLS LAST, x.seq, m.meter_no"""
    with store.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return [UnreadMeter(**row) for row in cur.execute(query, {"period": period, "book": book_code}).fetchall()]


def flags_by_rule(store: Store, period: str) -> list[RuleCount]:
    """Flags of the period's latest validation run, per rule."""
    query = """SELECT f.rule_id, f.severity, count(*), count(DISTINCT f.meter_id)
                 FROM reading_flag f
                WHERE f.run_id = (SELECT max(id) FROM validation_run WHERE period = %s)
                GROUP BY 1, 2 ORDER BY 3 DESC, 1"""
    with store.connection() as conn:
        return [RuleCount(*row) for row in conn.execute(query, [period]).fetchall()]
