"""PostgreSQL binary COPY buffers built from polars frames with numpy, without a Python loop over rows.

A row of binary COPY is a field count and, per field, a length and the value. Text and nulls make rows
variable in width, so the frame is cut into partitions in which every text column holds one value and
every column is either always or never null; within a partition all rows have the same layout and become
one numpy structured array. NUMERIC values are written with a fixed number of base-10000 digits per chunk
of rows: as many whole digits as the chunk's largest value needs (leading and trailing zero digits are
allowed; the server strips them), so small amounts cost the server as little to read as they should.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)
PG_EPOCH_DAYS = 10_957  # 2000-01-01 in days since 1970-01-01
CHUNK_ROWS = 200_000
_NUMERIC_NEG = 0x4000

Kind = Literal["int2", "int4", "int8", "date", "numeric", "text"]


@dataclass(frozen=True)
class Column:
    """A target column. `numeric`: the frame holds the value times 10**scale as an integer, and its whole
    part has at most `int_digits` digits."""

    name: str
    kind: Kind
    scale: int = 0
    int_digits: int = 12

    @property
    def fraction_groups(self) -> int:
        return -(-self.scale // 4)

    @property
    def max_whole_groups(self) -> int:
        return max(1, -(-self.int_digits // 4))


_FIXED = {"int2": (">i2", 2), "int4": (">i4", 4), "int8": (">i8", 8), "date": (">i4", 4)}


def _whole_groups(column: Column, magnitude: np.ndarray) -> int:
    """Base-10000 digits before the point that the largest of `magnitude` (scaled integers) needs."""
    largest = int(magnitude.max()) // 10**column.scale if magnitude.size else 0
    groups = 1
    while largest >= 10_000**groups:
        groups += 1
    if groups > column.max_whole_groups:
        raise OverflowError(f"{column.name}: value does not fit {column.int_digits} integer digits")
    return groups


def _chunk_dtype(
    columns: Sequence[Column], texts: dict[str, bytes | None], nulls: set[str], whole: dict[str, int]
) -> np.dtype[Any]:
    fields: list[tuple[Any, ...]] = [("count", ">i2")]
    for column in columns:
        fields.append((f"{column.name}__len", ">i4"))
        if column.name in nulls or (column.kind == "text" and texts[column.name] is None):
            continue
        if column.kind == "text":
            value = texts[column.name]
            assert value is not None
            if value:
                fields.append((column.name, f"S{len(value)}"))
        elif column.kind == "numeric":
            fields.append((f"{column.name}__head", ">i2", (4,)))
            fields.append((column.name, ">i2", (whole[column.name] + column.fraction_groups,)))
        else:
            fields.append((column.name, _FIXED[column.kind][0]))
    return np.dtype(fields)


def _chunk_rows(
    frame: pl.DataFrame, columns: Sequence[Column], texts: dict[str, bytes | None], nulls: set[str]
) -> np.ndarray:
    numeric: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for column in columns:
        if column.kind == "numeric" and column.name not in nulls:
            scaled = frame.get_column(column.name).cast(pl.Int64).to_numpy()
            numeric[column.name] = (scaled, np.abs(scaled))
    whole = {name: _whole_groups(column, numeric[name][1]) for column in columns if (name := column.name) in numeric}
    rows = np.zeros(frame.height, dtype=_chunk_dtype(columns, texts, nulls, whole))
    rows["count"] = len(columns)
    for column in columns:
        name = column.name
        if name in nulls or (column.kind == "text" and texts[name] is None):
            rows[f"{name}__len"] = -1
            continue
        if column.kind == "text":
            value = texts[name]
            assert value is not None
            rows[f"{name}__len"] = len(value)
            if value:
                rows[name] = value
        elif column.kind == "numeric":
            scaled, magnitude = numeric[name]
            fraction_groups = column.fraction_groups
            ndigits = whole[name] + fraction_groups
            rows[f"{name}__len"] = 8 + 2 * ndigits
            head = rows[f"{name}__head"]
            head[:, 0] = ndigits
            head[:, 1] = whole[name] - 1  # weight of the first digit
            head[:, 2] = np.where(scaled < 0, _NUMERIC_NEG, 0)
            head[:, 3] = column.scale
            # the value in units of the last base-10000 digit, cut into digits from the last one up
            rest = magnitude * 10 ** (4 * fraction_groups - column.scale)
            digits = rows[name]
            for index in range(ndigits - 1, -1, -1):
                rest, digits[:, index] = np.divmod(rest, 10_000)
        elif column.kind == "date":
            rows[f"{name}__len"] = 4
            rows[name] = frame.get_column(name).cast(pl.Int32).to_numpy() - PG_EPOCH_DAYS
        else:
            rows[f"{name}__len"] = _FIXED[column.kind][1]
            rows[name] = frame.get_column(name).to_numpy()
    return rows


def copy_chunks(frame: pl.DataFrame, columns: Sequence[Column]) -> Iterator[bytes]:
    """The binary COPY stream of `frame` (header, rows partition by partition, trailer)."""
    yield HEADER
    texts = [c.name for c in columns if c.kind == "text"]
    nullable = [c.name for c in columns if c.kind != "text" and frame.get_column(c.name).null_count()]
    keyed = frame.with_columns(pl.col(name).is_null().alias(f"{name}__null") for name in nullable)
    keys = [name for name in texts + [f"{name}__null" for name in nullable] if keyed.get_column(name).n_unique() > 1]
    constant = {name: keyed.get_column(name)[0] if keyed.height else None for name in texts + nullable}
    parts = keyed.partition_by(keys, as_dict=True, maintain_order=False) if keys else {(): keyed}
    for key, part in parts.items():
        values = {**{k: constant[k] for k in texts}, **{f"{k}__null": None for k in nullable}}
        values.update(zip(keys, key, strict=True))
        text_values = {name: None if values[name] is None else str(values[name]).encode() for name in texts}
        nulls = {
            name
            for name in nullable
            if (values[f"{name}__null"] if f"{name}__null" in keys else constant[name] is None)
        }
        for start in range(0, part.height, CHUNK_ROWS):
            yield _chunk_rows(part.slice(start, CHUNK_ROWS), columns, text_values, nulls).tobytes()
    yield TRAILER
