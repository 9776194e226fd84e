"""Small frame builders for the VEE tests."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import polars as pl

T0 = datetime(2024, 1, 1, tzinfo=UTC)
VOLUME = pl.Decimal(38, 3)


def day(n: float) -> datetime:
    """T0 plus n days."""
    return T0 + timedelta(days=n)


def readings(rows: list[tuple[int, datetime, str]], **extra: list[object]) -> pl.LazyFrame:
    """(meter_id, ts, value) rows as a readings frame on channel volume_m3."""
    return pl.LazyFrame(
        {
            "meter_id": [r[0] for r in rows],
            "channel": ["volume_m3"] * len(rows),
            "ts": [r[1] for r in rows],
            "value": [Decimal(r[2]) for r in rows],
            **extra,
        },
        schema_overrides={"value": VOLUME, "ts": pl.Datetime("us", "UTC")},
    )


def meters(*rows: tuple[int, str], **extra: list[object]) -> pl.LazyFrame:
    """(meter_id, register_max) rows."""
    return pl.LazyFrame(
        {"meter_id": [r[0] for r in rows], "register_max": [Decimal(r[1]) for r in rows], **extra},
        schema_overrides={"register_max": VOLUME},
    )


def daily(meter_id: int, values: list[str], start: float = 0) -> list[tuple[int, datetime, str]]:
    """One reading a day from day `start`."""
    return [(meter_id, day(start + i), v) for i, v in enumerate(values)]
