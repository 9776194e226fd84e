"""Binary COPY buffers: what the server reads back is what the frame held."""

import datetime as dt
from decimal import Decimal

import polars as pl
import pytest

from billing import pgcopy
from meterhub.store import Store

COLUMNS = [
    pgcopy.Column("id", "int8"),
    pgcopy.Column("small", "int2"),
    pgcopy.Column("day", "date"),
    pgcopy.Column("kind", "text"),
    pgcopy.Column("code", "text"),
    pgcopy.Column("volume", "numeric", scale=3),
    pgcopy.Column("price", "numeric", scale=4, int_digits=8),
    pgcopy.Column("amount", "numeric", scale=2),
]


def _copy(store: Store, frame: pl.DataFrame) -> list[tuple[object, ...]]:
    with store.connection() as conn, conn.transaction():
        conn.execute(
            "CREATE TEMP TABLE copied (id int8, small int2, day date, kind text, code text, volume numeric(14, 3), "
            "price numeric(12, 4), amount numeric(14, 2)) ON COMMIT DROP"
        )
        with conn.cursor() as cursor, cursor.copy("COPY copied FROM STDIN (FORMAT binary)") as copy:
            for chunk in pgcopy.copy_chunks(frame, COLUMNS):
                copy.write(chunk)
        return [tuple(row) for row in conn.execute("SELECT * FROM copied ORDER BY id").fetchall()]


def test_values_nulls_and_texts_come_back(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgcopy, "CHUNK_ROWS", 3)  # several chunks per partition, each with its own layout
    volumes = [0, 1, -1, 999, 1_000_000, 12_345_678_901_234, None, -99_999_999_999_999, 5, 10_000_000]
    frame = pl.DataFrame(
        {
            "id": list(range(10)),
            "small": [n - 5 for n in range(10)],
            "day": [dt.date(1999, 12, 31) + dt.timedelta(days=400 * n) for n in range(10)],
            "kind": ["energy", "energy", "fixed", "energy", "", "fixed", "energy", "energy", "fixed", "energy"],
            "code": [None, None, "rental", None, "x", "rental", None, None, "rental", None],
            "volume": volumes,
            "price": [26_100, 0, 99_999_999, 1, None, 30_300, 37_600, 5, 123_456_789_012, 0],
            "amount": [78_300, -1, 0, 100, 99, 1_000_000_000_000, None, -123_456, 7, 8],
        },
        schema_overrides={"small": pl.Int16},
    )
    rows = _copy(store, frame)
    expected = [
        (
            row["id"],
            row["small"],
            row["day"],
            row["kind"],
            row["code"],
            None if row["volume"] is None else Decimal(row["volume"]).scaleb(-3),
            None if row["price"] is None else Decimal(row["price"]).scaleb(-4),
            None if row["amount"] is None else Decimal(row["amount"]).scaleb(-2),
        )
        for row in frame.iter_rows(named=True)
    ]
    assert rows == expected


def test_a_value_too_large_for_its_column_is_refused() -> None:
    frame = pl.DataFrame({"price": [10**12 * 10**4]})
    with pytest.raises(OverflowError, match="price"):
        list(pgcopy.copy_chunks(frame, [pgcopy.Column("price", "numeric", scale=4, int_digits=8)]))
