"""Money and volume units, and the one place where money is rounded.

Pricing runs on integers: volumes in litres (0.001 m3), prices in 0.0001 yuan per m3, so a volume times a
price is an exact integer in units of 1e-7 yuan (`RAW_PER_FEN` of them make a fen). Only here do raw
amounts become fen, by the configured mode. Polars' own `round` on Decimal rounds half to even, so half-up
is done in integer arithmetic instead.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from enum import StrEnum

import polars as pl

VOLUME = pl.Decimal(38, 3)
PRICE = pl.Decimal(38, 4)
MONEY = pl.Decimal(38, 2)

LITRES_PER_M3 = 1000
PRICE_UNITS_PER_YUAN = 10_000
FEN_PER_YUAN = 100
# litres x (1e-4 yuan / m3) = 1e-7 yuan; 1e5 of them make one fen.
RAW_PER_FEN = LITRES_PER_M3 * PRICE_UNITS_PER_YUAN // FEN_PER_YUAN


class RoundingMode(StrEnum):
    """How raw amounts become fen; values are the `decimal` module's names."""

    HALF_UP = ROUND_HALF_UP
    HALF_EVEN = ROUND_HALF_EVEN
    DOWN = ROUND_DOWN


def round_div(raw: pl.Expr, divisor: int, mode: RoundingMode = RoundingMode.HALF_UP) -> pl.Expr:
    """Integer `raw / divisor` rounded by `mode`, symmetric around zero like `decimal` (Int64)."""
    if divisor <= 0:
        raise ValueError("divisor must be positive")
    magnitude = raw.abs()
    quotient = magnitude // divisor
    remainder = magnitude % divisor
    if mode is RoundingMode.HALF_UP:
        rounded = quotient + (remainder * 2 >= divisor).cast(pl.Int64)
    elif mode is RoundingMode.HALF_EVEN:
        up = (remainder * 2 > divisor) | ((remainder * 2 == divisor) & (quotient % 2 == 1))
        rounded = quotient + up.cast(pl.Int64)
    else:
        rounded = quotient
    return pl.when(raw < 0).then(-rounded).otherwise(rounded)


def raw_to_fen(raw: pl.Expr, mode: RoundingMode = RoundingMode.HALF_UP) -> pl.Expr:
    """Raw amounts (1e-7 yuan) as whole fen."""
    return round_div(raw, RAW_PER_FEN, mode)


def fen_to_money(fen: pl.Expr) -> pl.Expr:
    """Whole fen (integer) as exact `Decimal(38, 2)` yuan."""
    return fen.cast(MONEY) / FEN_PER_YUAN


def litres_to_m3(litres: pl.Expr) -> pl.Expr:
    """Integer litres as exact `Decimal(38, 3)` cubic metres."""
    return litres.cast(VOLUME) / LITRES_PER_M3


def price_units_to_price(units: pl.Expr) -> pl.Expr:
    """Integer 1e-4 yuan as exact `Decimal(38, 4)` yuan."""
    return units.cast(PRICE) / PRICE_UNITS_PER_YUAN


def m3_to_litres(m3: pl.Expr) -> pl.Expr:
    """Decimal cubic metres with at most 3 decimals as integer litres (Int64)."""
    return (m3.cast(VOLUME) * LITRES_PER_M3).cast(pl.Int64)


def round_money(value: Decimal, mode: RoundingMode = RoundingMode.HALF_UP) -> Decimal:
    """A Python Decimal rounded to the fen by `mode`."""
    return value.quantize(Decimal("0.01"), rounding=mode.value)
