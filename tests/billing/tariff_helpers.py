"""Builders shared by the tariff tests."""

import datetime as dt
from decimal import Decimal
from typing import Any

import polars as pl

from billing.pricing import BillFrames, PricingConfig, price_bills
from billing.tariff import load_tariffs

D = Decimal
BEIJING_TIERS = [{"upper_m3": "350", "price": "2.61"}, {"upper_m3": "500", "price": "3.03"}, {"price": "3.76"}]


def beijing(**extra: Any) -> dict[str, Any]:
    """A Beijing-like residential tariff: 0-350 m3 2.61, 350-500 3.03, above 3.76 per calendar year."""
    period = {"effective_from": "2020-01-01", "tiers": BEIJING_TIERS, **extra.pop("period", {})}
    return {"residential": {"cycle": "calendar_year", "periods": [period], **extra}}


def items(*rows: dict[str, Any]) -> pl.DataFrame:
    """Bill items from dicts; money and volume strings become Decimal(38, 3)."""
    frame = pl.DataFrame(
        [{**row, **{k: D(v) for k, v in row.items() if k.endswith("_m3")}} for row in rows],
        infer_schema_length=None,
    )
    return frame.with_columns(pl.col(c).cast(pl.Decimal(38, 3)) for c in frame.columns if c.endswith("_m3"))


def price(
    tariffs: dict[str, Any], frame: pl.DataFrame, config: PricingConfig | None = None, dated: pl.DataFrame | None = None
) -> BillFrames:
    return price_bills(frame, list(load_tariffs(tariffs).values()), config, dated)


def energy(bill: BillFrames, account_id: object = 1) -> list[tuple[Any, ...]]:
    """(usage_type, price_period_start, tier_no, volume, unit price, amount) of one account's energy lines."""
    rows = bill.lines.filter((pl.col("account_id") == account_id) & (pl.col("line_kind") == "energy"))
    return [
        (r["usage_type"], r["price_period_start"], r["tier_no"], r["volume_m3"], r["unit_price"], r["amount"])
        for r in rows.to_dicts()
    ]


def total(bill: BillFrames, account_id: object = 1) -> Decimal:
    return bill.totals.filter(pl.col("account_id") == account_id)["amount_total"].item()


def day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)
