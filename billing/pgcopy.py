"""PostgreSQL binary COPY buffers built from polars frames with numpy, without a Python loop over rows.

A row of binary COPY is a field count and, per field, a length and the value. Text and nulls make rows
variable in width, so the frame is cut into partitions in which every text column holds one value and
every column is either always or never null; within a partition all rows have the same layout and become
one numpy structured array. NUMERIC values are written with a fixed number of base-10000 digits (leading
and trailing zero digits are allowed; the server strips them).
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
_NUMERIC_NEG = 0x4000

Kind = Literal["int2", "int4", "int8", "date", "numeric", "text"]


@dataclass(frozen=True)
class Column:
    """A target column. `numeric`: the frame holds the value times 10**scale as an integer."""

    name: str
    kind: Kind
    scale: int = 0
    int_digits: int = 12

    @property
    def numeric_layout(self) -> tuple[int, int]:
        """(weight, ndigits) of the fixed base-10000 form."""
        whole_groups = max(1, -(-self.int_digits // 4))
        fraction_groups = -(-self.scale // 4)
        return whole_groups - 1, whole_groups + fraction_groups


_FIXED = {"int2": (">i2", 2), "int4": (">i4", 4), "int8": (">i8", 8), "date": (">i4", 4)}


def _partition_dtype(columns: Sequence[Column], texts: dict[str, bytes | None], nulls: set[str]) -> np.dtype[Any]:
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
            _, ndigits = column.numeric_layout
            fields.append((f"{column.name}__head", ">i2", (4,)))
            fields.append((column.name, ">i2", (ndigits,)))
        else:
            fields.append((column.name, _FIXED[column.kind][0]))
    return np.dtype(fields)


def _fill(
    rows: np.ndarray, frame: pl.DataFrame, columns: Sequence[Column], texts: dict[str, bytes | None], nulls: set[str]
) -> None:
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
            continue
        series = frame.get_column(name)
        if column.kind == "numeric":
            weight, ndigits = column.numeric_layout
            scaled = series.cast(pl.Int64).to_numpy()
            magnitude = np.abs(scaled)
            fraction_groups = ndigits - weight - 1
            unit = 10**column.scale
            whole, fraction = magnitude // unit, magnitude % unit
            digits = np.empty((len(scaled), ndigits), dtype=np.int64)
            for index in range(weight + 1):
                digits[:, index] = (whole // 10_000 ** (weight - index)) % 10_000
            fraction = fraction * 10 ** (4 * fraction_groups - column.scale)
            for index in range(fraction_groups):
                digits[:, weight + 1 + index] = (fraction // 10_000 ** (fraction_groups - 1 - index)) % 10_000
            if np.any(whole >= 10_000 ** (weight + 1)):
                raise OverflowError(f"{name}: value does not fit {column.int_digits} integer digits")
            rows[f"{name}__len"] = 8 + 2 * ndigits
            head = np.empty((len(scaled), 4), dtype=np.int64)
            head[:, 0] = ndigits
            head[:, 1] = weight
            head[:, 2] = np.where(scaled < 0, _NUMERIC_NEG, 0)
            head[:, 3] = column.scale
            rows[f"{name}__head"] = head
            rows[name] = digits
        elif column.kind == "date":
            rows[f"{name}__len"] = 4
            rows[name] = series.cast(pl.Int32).to_numpy() - PG_EPOCH_DAYS
        else:
            rows[f"{name}__len"] = _FIXED[column.kind][1]
            rows[name] = series.to_numpy()


def copy_chunks(frame: pl.DataFrame, columns: Sequence[Column]) -> Iterator[bytes]:
    """The binary COPY stream of `frame` (header, rows partition by partition, trailer)."""
    yield HEADER
    texts = [c.name for c in columns if c.kind == "text"]
    nullable = [c.name for c in columns if c.kind != "text" and frame.get_column(c.name).null_count()]
    keyed = frame.with_columns(pl.col(name).is_null().alias(f"{name}__null") for name in nullable)
    keys = texts + [f"{name}__null" for name in nullable]
    parts = keyed.partition_by(keys, as_dict=True, maintain_order=False) if keys else {(): keyed}
    for key, part in parts.items():
        values = dict(zip(keys, key, strict=True))
        text_values = {name: None if values[name] is None else str(values[name]).encode() for name in texts}
        nulls = {name for name in nullable if values[f"{name}__null"]}
        dtype = _partition_dtype(columns, text_values, nulls)
        for start in range(0, part.height, 200_000):
            chunk = part.slice(start, 200_000)
            rows = np.zeros(chunk.height, dtype=dtype)
            _fill(rows, chunk, columns, text_values, nulls)
            yield rows.tobytes()
    yield TRAILER
