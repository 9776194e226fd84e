"""Tariff model: usage types, price periods, tiers, tier cycles, household rule, fixed charges, minimums.

Tariffs are frozen dataclasses loadable from plain mappings (JSON/TOML), for example:

    [residential]
    cycle = "calendar_year"            # calendar_year | annual | month | bill
    # cycle_start = "07-01"            # annual only: the cycle starts on this month-day each year
    # price_change_split = "readings"  # days | readings; unset: the run's setting (PricingConfig, "days")
    household = { base_size = 4, add_m3_per_person = "100" }

    [[residential.periods]]
    effective_from = 2024-01-01
    tiers = [{ upper_m3 = "350", price = "2.61" }, { upper_m3 = "500", price = "3.03" }, { price = "3.76" }]
    fixed_price = "2.61"               # price for accounts billed in fixed mode; defaults to tier 1's price
    minimum_charge = "0"
    fixed_charges = [{ code = "meter_rental", amount_per_month = "2.00" }]

A flat tariff gives `price = "4.20"` instead of `tiers`. Tier bounds are cumulative m3 per cycle; the last
tier is open. Household rule: with `extra = min(household_size - base_size, max_extra_persons)` extra
persons (never below 0), every tier bound becomes `bound * (1 + factor_per_person * extra)
+ add_m3_per_person * extra`, floored to the litre. `price_change_split` says how a bill item that a price
change or a new cycle cuts is shared between its parts: in proportion to their days, or to the consumption
the meter readings date into each part (see `billing.pricing`; an item without dated consumption is split
by days).

`tariff_frames` turns tariffs into the small polars frames the pricing engine joins against.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, NamedTuple, get_args

import polars as pl

from billing.rounding import MONEY, PRICE, VOLUME

CycleKind = Literal["calendar_year", "annual", "month", "bill"]
BillingMode = Literal["fixed", "tiered"]
SplitMode = Literal["days", "readings"]
CYCLE_KINDS: tuple[str, ...] = get_args(CycleKind)
BILLING_MODES: tuple[str, ...] = get_args(BillingMode)
SPLIT_MODES: tuple[str, ...] = get_args(SplitMode)
FIXED_TIER_NO = 0  # the tier number of lines priced at the fixed (flat) price


class TariffError(ValueError):
    """A tariff definition that cannot be priced with."""


def _decimal(value: object, what: str, places: int) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        raise TariffError(f"{what}: expected a number, got {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise TariffError(f"{what}: not a number: {value!r}") from exc
    if not number.is_finite() or number < 0:
        raise TariffError(f"{what}: must be a non-negative number, got {value!r}")
    if number != number.quantize(Decimal(1).scaleb(-places)):
        raise TariffError(f"{what}: at most {places} decimals, got {value!r}")
    return number


def _date(value: object, what: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError as exc:
            raise TariffError(f"{what}: not an ISO date: {value!r}") from exc
    raise TariffError(f"{what}: expected a date, got {value!r}")


@dataclass(frozen=True)
class Tier:
    """One price step: up to `upper_m3` cumulative m3 in the cycle (None: no upper bound)."""

    upper_m3: Decimal | None
    price: Decimal


@dataclass(frozen=True)
class FixedCharge:
    """A charge per calendar month started in the bill period (e.g. meter rental)."""

    code: str
    amount_per_month: Decimal

    def __post_init__(self) -> None:
        _decimal(self.amount_per_month, f"fixed charge {self.code}", 2)


@dataclass(frozen=True)
class PricePeriod:
    """Prices in effect from `effective_from` until the next period of the same tariff."""

    effective_from: dt.date
    tiers: tuple[Tier, ...]
    fixed_price: Decimal | None = None
    minimum_charge: Decimal = Decimal(0)
    fixed_charges: tuple[FixedCharge, ...] = ()

    def __post_init__(self) -> None:
        what = f"period {self.effective_from}"
        if not self.tiers:
            raise TariffError(f"{what}: no tiers")
        previous = Decimal(0)
        for number, tier in enumerate(self.tiers, start=1):
            _decimal(tier.price, f"{what} tier {number} price", 4)
            last = number == len(self.tiers)
            if last != (tier.upper_m3 is None):
                raise TariffError(f"{what}: only the last tier is open (upper_m3 missing)")
            if tier.upper_m3 is not None:
                _decimal(tier.upper_m3, f"{what} tier {number} upper_m3", 3)
                if tier.upper_m3 <= previous:
                    raise TariffError(f"{what}: tier bounds must increase, tier {number} ends at {tier.upper_m3}")
                previous = tier.upper_m3
        if self.fixed_price is not None:
            _decimal(self.fixed_price, f"{what} fixed_price", 4)
        _decimal(self.minimum_charge, f"{what} minimum_charge", 2)
        codes = [charge.code for charge in self.fixed_charges]
        if len(set(codes)) != len(codes):
            raise TariffError(f"{what}: duplicate fixed charge codes {codes}")

    @property
    def flat_price(self) -> Decimal:
        """The price for accounts billed in fixed mode."""
        return self.fixed_price if self.fixed_price is not None else self.tiers[0].price


@dataclass(frozen=True)
class TierCycle:
    """Over which span tier volumes accumulate; `annual` starts each year on `start_month`-`start_day`."""

    kind: CycleKind = "calendar_year"
    start_month: int = 1
    start_day: int = 1

    def __post_init__(self) -> None:
        if self.kind not in CYCLE_KINDS:
            raise TariffError(f"cycle: expected one of {CYCLE_KINDS}, got {self.kind!r}")
        if self.kind == "annual":
            try:
                dt.date(2023, self.start_month, self.start_day)  # 2023: rejects 02-29, which is not yearly
            except ValueError as exc:
                raise TariffError(f"cycle_start: not a yearly month-day: {self.start_month}-{self.start_day}") from exc
        elif (self.start_month, self.start_day) != (1, 1):
            raise TariffError(f"cycle_start: only for annual cycles, not {self.kind!r}")


@dataclass(frozen=True)
class HouseholdRule:
    """Households above `base_size` people get larger tiers (see the module docstring for the formula)."""

    base_size: int
    add_m3_per_person: Decimal = Decimal(0)
    factor_per_person: Decimal = Decimal(0)
    max_extra_persons: int | None = None

    def __post_init__(self) -> None:
        if self.base_size < 0 or (self.max_extra_persons is not None and self.max_extra_persons < 0):
            raise TariffError("household: base_size and max_extra_persons must not be negative")
        _decimal(self.add_m3_per_person, "household add_m3_per_person", 3)
        _decimal(self.factor_per_person, "household factor_per_person", 4)

    def adjust(self, bound_m3: Decimal, household_size: int | None) -> Decimal:
        """A tier bound for a household of `household_size` people (None: unknown, no adjustment)."""
        extra = max((household_size or 0) - self.base_size, 0) if household_size is not None else 0
        if self.max_extra_persons is not None:
            extra = min(extra, self.max_extra_persons)
        scaled = bound_m3 * (1 + self.factor_per_person * extra) + self.add_m3_per_person * extra
        return scaled.quantize(Decimal("0.001"), rounding="ROUND_FLOOR")


@dataclass(frozen=True)
class Tariff:
    """The prices of one usage type (用气性质), as a history of price periods."""

    usage_type: str
    periods: tuple[PricePeriod, ...]
    cycle: TierCycle = field(default_factory=TierCycle)
    household: HouseholdRule | None = None
    price_change_split: SplitMode | None = None  # None: as the run says (PricingConfig.price_change_split)

    def __post_init__(self) -> None:
        if not self.usage_type:
            raise TariffError("usage_type must not be empty")
        if self.price_change_split is not None and self.price_change_split not in SPLIT_MODES:
            raise TariffError(f"price_change_split: expected one of {SPLIT_MODES}, got {self.price_change_split!r}")
        if not self.periods:
            raise TariffError(f"{self.usage_type}: no price periods")
        starts = [period.effective_from for period in self.periods]
        if starts != sorted(set(starts)):
            raise TariffError(f"{self.usage_type}: periods must have distinct, increasing effective_from dates")

    @classmethod
    def from_mapping(cls, usage_type: str, mapping: Mapping[str, Any]) -> Tariff:
        """A tariff from its JSON/TOML form (see the module docstring)."""
        try:
            return cls._from_mapping(usage_type, mapping)
        except TariffError as exc:
            raise TariffError(f"tariff {usage_type!r}: {exc}") from exc
        except (KeyError, TypeError, AttributeError) as exc:
            raise TariffError(f"tariff {usage_type!r}: malformed entry ({exc!r})") from exc

    @classmethod
    def _from_mapping(cls, usage_type: str, mapping: Mapping[str, Any]) -> Tariff:
        kind = mapping.get("cycle", "calendar_year")
        month, day = 1, 1
        if "cycle_start" in mapping:
            month_text, _, day_text = str(mapping["cycle_start"]).partition("-")
            month, day = int(month_text), int(day_text)
        household = None
        if (rule := mapping.get("household")) is not None:
            household = HouseholdRule(
                base_size=int(rule["base_size"]),
                add_m3_per_person=_decimal(rule.get("add_m3_per_person", 0), "household add_m3_per_person", 3),
                factor_per_person=_decimal(rule.get("factor_per_person", 0), "household factor_per_person", 4),
                max_extra_persons=None if rule.get("max_extra_persons") is None else int(rule["max_extra_persons"]),
            )
        periods = tuple(_period(entry) for entry in mapping["periods"])
        return cls(
            usage_type,
            tuple(sorted(periods, key=lambda p: p.effective_from)),
            TierCycle(kind, month, day),
            household,
            mapping.get("price_change_split"),
        )


def _period(entry: Mapping[str, Any]) -> PricePeriod:
    start = _date(entry["effective_from"], "effective_from")
    what = f"period {start}"
    if ("price" in entry) == ("tiers" in entry):
        raise TariffError(f"{what}: give either price or tiers")
    if "price" in entry:
        tiers: tuple[Tier, ...] = (Tier(None, _decimal(entry["price"], f"{what} price", 4)),)
    else:
        tiers = tuple(
            Tier(
                None if tier.get("upper_m3") is None else _decimal(tier["upper_m3"], f"{what} upper_m3", 3),
                _decimal(tier["price"], f"{what} tier price", 4),
            )
            for tier in entry["tiers"]
        )
    fixed_price = entry.get("fixed_price")
    return PricePeriod(
        effective_from=start,
        tiers=tiers,
        fixed_price=None if fixed_price is None else _decimal(fixed_price, f"{what} fixed_price", 4),
        minimum_charge=_decimal(entry.get("minimum_charge", 0), f"{what} minimum_charge", 2),
        fixed_charges=tuple(
            FixedCharge(str(charge["code"]), _decimal(charge["amount_per_month"], f"{what} fixed charge", 2))
            for charge in entry.get("fixed_charges", ())
        ),
    )


def load_tariffs(mapping: Mapping[str, Mapping[str, Any]]) -> dict[str, Tariff]:
    """Tariffs keyed by usage type from `{usage_type: tariff mapping}`."""
    return {usage_type: Tariff.from_mapping(usage_type, entry) for usage_type, entry in mapping.items()}


class TariffFrames(NamedTuple):
    """Tariffs as polars frames; `effective_to` is exclusive and null for the current period.

    - tariffs: usage_type, cycle, cycle_month, cycle_day, household_base, household_add_m3,
      household_factor, household_max_extra, price_change_split (null: the run's setting)
    - periods: usage_type, effective_from, effective_to, minimum_charge
    - tiers: usage_type, billing_mode, effective_from, effective_to, tier_no, lower_m3, upper_m3, price
      (billing_mode "fixed" has the single tier 0 at the flat price; upper_m3 null means open)
    - charges: usage_type, effective_from, effective_to, charge_code, amount_per_month
    """

    tariffs: pl.LazyFrame
    periods: pl.LazyFrame
    tiers: pl.LazyFrame
    charges: pl.LazyFrame


def tariff_frames(tariffs: Iterable[Tariff]) -> TariffFrames:
    """The frames the pricing engine joins bill items against."""
    tariff_rows: list[dict[str, object]] = []
    period_rows: list[dict[str, object]] = []
    tier_rows: list[dict[str, object]] = []
    charge_rows: list[dict[str, object]] = []
    seen: set[str] = set()
    for tariff in tariffs:
        if tariff.usage_type in seen:
            raise TariffError(f"two tariffs for usage type {tariff.usage_type!r}")
        seen.add(tariff.usage_type)
        rule = tariff.household
        tariff_rows.append(
            {
                "usage_type": tariff.usage_type,
                "cycle": tariff.cycle.kind,
                "cycle_month": tariff.cycle.start_month,
                "cycle_day": tariff.cycle.start_day,
                "household_base": None if rule is None else rule.base_size,
                "household_add_m3": None if rule is None else rule.add_m3_per_person,
                "household_factor": None if rule is None else rule.factor_per_person,
                "household_max_extra": None if rule is None else rule.max_extra_persons,
                "price_change_split": tariff.price_change_split,
            }
        )
        ends: list[dt.date | None] = [p.effective_from for p in tariff.periods[1:]]
        ends.append(None)
        for period, end in zip(tariff.periods, ends, strict=True):
            span = {"usage_type": tariff.usage_type, "effective_from": period.effective_from, "effective_to": end}
            period_rows.append({**span, "minimum_charge": period.minimum_charge})
            tier_rows.append(
                {
                    **span,
                    "billing_mode": "fixed",
                    "tier_no": FIXED_TIER_NO,
                    "lower_m3": Decimal(0),
                    "upper_m3": None,
                    "price": period.flat_price,
                }
            )
            lower = Decimal(0)
            for number, tier in enumerate(period.tiers, start=1):
                tier_rows.append(
                    {
                        **span,
                        "billing_mode": "tiered",
                        "tier_no": number,
                        "lower_m3": lower,
                        "upper_m3": tier.upper_m3,
                        "price": tier.price,
                    }
                )
                lower = tier.upper_m3 if tier.upper_m3 is not None else lower
            charge_rows.extend(
                {**span, "charge_code": charge.code, "amount_per_month": charge.amount_per_month}
                for charge in period.fixed_charges
            )
    span_schema = {"usage_type": pl.String, "effective_from": pl.Date, "effective_to": pl.Date}
    return TariffFrames(
        tariffs=pl.LazyFrame(
            tariff_rows,
            schema={
                "usage_type": pl.String,
                "cycle": pl.Enum(CYCLE_KINDS),
                "cycle_month": pl.Int8,
                "cycle_day": pl.Int8,
                "household_base": pl.Int32,
                "household_add_m3": VOLUME,
                "household_factor": PRICE,
                "household_max_extra": pl.Int32,
                "price_change_split": pl.String,
            },
        ),
        periods=pl.LazyFrame(period_rows, schema={**span_schema, "minimum_charge": MONEY}),
        tiers=pl.LazyFrame(
            tier_rows,
            schema={
                **span_schema,
                "billing_mode": pl.Enum(BILLING_MODES),
                "tier_no": pl.Int32,
                "lower_m3": VOLUME,
                "upper_m3": VOLUME,
                "price": PRICE,
            },
        ),
        charges=pl.LazyFrame(charge_rows, schema={**span_schema, "charge_code": pl.String, "amount_per_month": MONEY}),
    )
