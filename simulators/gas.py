"""How much gas a home or a shop burns: daily and seasonal shape, heating months, idle homes."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

# Share of a day's gas per hour of the day: breakfast, lunch and dinner peaks, little at night.
HOURLY_SHAPE = [
    0.5, 0.3, 0.2, 0.2, 0.3, 0.8, 2.2, 3.0, 1.8, 1.0, 1.0, 2.2,
    2.8, 1.4, 0.8, 0.8, 1.2, 2.4, 3.4, 2.6, 1.6, 1.2, 0.9, 0.6,
]  # fmt: skip
_SHAPE_TOTAL = sum(HOURLY_SHAPE)
LITRE = Decimal("0.001")


@dataclass
class GasProfile:
    """One meter's habits."""

    daily_m3: float  # average daily use outside the heating season
    heating_factor: float  # multiplier in the coldest weeks
    idle: bool = False  # nobody lives there

    @classmethod
    def draw(cls, rng: random.Random, kind: str = "residential") -> GasProfile:
        if kind == "commercial":
            return cls(daily_m3=rng.uniform(8, 25), heating_factor=rng.uniform(1.1, 1.5))
        return cls(daily_m3=rng.uniform(0.4, 1.6), heating_factor=rng.uniform(1.3, 2.6), idle=rng.random() < 0.08)

    def season(self, when: datetime) -> float:
        """1.0 in summer, up to heating_factor around mid-January."""
        day = when.timetuple().tm_yday
        cold = max(0.0, math.cos((day - 15) / 365.25 * 2 * math.pi))
        return 1.0 + (self.heating_factor - 1.0) * cold

    def use_m3(self, start: datetime, end: datetime, rng: random.Random) -> Decimal:
        """Gas used between two instants, in whole litres (a register counts litres)."""
        if self.idle or end <= start:
            return Decimal(0)
        total = 0.0
        cursor = start
        while cursor < end:
            hour_end = min(end, cursor.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1))
            fraction = (hour_end - cursor).total_seconds() / 3600
            total += self.daily_m3 * self.season(cursor) * HOURLY_SHAPE[cursor.hour] / _SHAPE_TOTAL * fraction
            cursor = hour_end
        noisy = max(0.0, total * rng.uniform(0.7, 1.3))
        return Decimal(f"{noisy:.3f}")
