"""Charts drawn on the server as inline SVG: no JavaScript and nothing fetched from elsewhere (the console's
Content-Security-Policy allows neither). Pages embed the returned markup; app.css styles `svg.chart`
(`.axis`, `.grid`, `.line`, `.dot`, `.bar`, `.bar.negative`, `text`).

- `line_chart`: values over time, e.g. a meter's volume register; the x axis spans the window asked for
  (not just the data), labelled in the utility's time zone.
- `bar_chart`: one bar per local day, e.g. daily gas use; a day without data has no bar.

Each mark carries a `<title>` with its exact value, which browsers show on hover. Coordinates are floats
(drawing only); the values in titles and axis labels are printed from the given numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape

Number = Decimal | int | float


@dataclass(frozen=True)
class Frame:
    """The drawing area inside the SVG's view box."""

    width: int = 760
    height: int = 260
    left: int = 70
    right: int = 16
    top: int = 26
    bottom: int = 44

    @property
    def x0(self) -> float:
        return float(self.left)

    @property
    def x1(self) -> float:
        return float(self.width - self.right)

    @property
    def y0(self) -> float:  # the bottom of the plot
        return float(self.height - self.bottom)

    @property
    def y1(self) -> float:  # the top of the plot
        return float(self.top)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] with about `count` intervals (steps of 1, 2, 2.5 or 5 × 10ⁿ)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("ticks need finite bounds")
    if high < low:
        low, high = high, low
    if high == low:
        pad = max(abs(high) * 0.01, 1.0)
        low, high = low - pad, high + pad
    rough = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(rough))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= rough)
    first = math.floor(low / step + 1e-9) * step
    last = math.ceil(high / step - 1e-9) * step
    n = round((last - first) / step)
    return [round(first + i * step, 12) for i in range(n + 1)]


def _decimals(ticks: Sequence[float]) -> int:
    """The fewest decimals that print every tick exactly (e.g. 1 for 0, 2.5, 5)."""
    for places in range(7):
        scale = 10**places
        if all(abs(v * scale - round(v * scale)) < 1e-6 * max(1.0, abs(v * scale)) for v in ticks):
            return places
    return 6


def _tick_label(value: float, places: int) -> str:
    text = f"{value:,.{places}f}"
    return "0" if text.strip("-0.,") == "" else text


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone)


def month_starts(first: date, last: date, most: int = 8) -> list[date]:
    """First days of months in [first, last], every 1, 2, 3, 6 or 12 months so that at most `most` remain."""
    index = first.year * 12 + first.month - 1 + (first.day != 1)  # months since year 0, from 0
    end = last.year * 12 + last.month - 1
    step = next((m for m in (1, 2, 3, 6, 12) if (end - index + 1) / m <= most), 12)
    return [date(i // 12, i % 12 + 1, 1) for i in range(index, end + 1, step)]


def time_ticks(start: datetime, end: datetime, zone: ZoneInfo, most: int = 8) -> list[tuple[datetime, str]]:
    """Tick moments in [start, end] at local midnights every few days (labels MM-DD), or at the first
    of months for long spans (labels YYYY-MM), at most `most` of them."""
    if end <= start:
        return []
    span_days = (end - start).total_seconds() / 86400
    ticks: list[tuple[datetime, str]] = []
    if span_days <= 120:
        step = next((s for s in (1, 2, 3, 7, 14, 28) if span_days / s <= most), 28)
        day = start.astimezone(zone).date()
        moment = _local_midnight(day, zone)
        if moment < start:
            day += timedelta(days=1)
        while (moment := _local_midnight(day, zone)) <= end:
            ticks.append((moment, day.strftime("%m-%d")))
            day += timedelta(days=step)
        return ticks
    first, last = start.astimezone(zone).date(), end.astimezone(zone).date()
    for day in month_starts(first, last, most):
        moment = _local_midnight(day, zone)
        if start <= moment <= end:
            ticks.append((moment, f"{day.year:04d}-{day.month:02d}"))
    return ticks


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def _svg_open(frame: Frame, chart_id: str, title: str) -> list[str]:
    return [
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {frame.width} {frame.height}" '
        f'role="img" aria-labelledby="{escape(chart_id)}-title" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
    ]


def _y_axis(frame: Frame, ticks: Sequence[float], y_of: Callable[[float], float], unit: str) -> list[str]:
    places = _decimals(ticks)
    parts = []
    for value in ticks:
        y = y_of(value)
        parts.append(f'<line class="grid" x1="{_fmt(frame.x0)}" y1="{_fmt(y)}" x2="{_fmt(frame.x1)}" y2="{_fmt(y)}"/>')
        parts.append(
            f'<text class="y-tick" x="{_fmt(frame.x0 - 6)}" y="{_fmt(y + 4)}" text-anchor="end">'
            f"{escape(_tick_label(value, places))}</text>"
        )
    parts.append(
        f'<text class="unit" x="{_fmt(frame.x0 - 6)}" y="{_fmt(frame.y1 - 12)}" text-anchor="end">{escape(unit)}</text>'
    )
    parts.append(
        f'<line class="axis" x1="{_fmt(frame.x0)}" y1="{_fmt(frame.y1)}" x2="{_fmt(frame.x0)}" y2="{_fmt(frame.y0)}"/>'
    )
    return parts


def _x_axis_line(frame: Frame, y: float) -> str:
    return f'<line class="axis" x1="{_fmt(frame.x0)}" y1="{_fmt(y)}" x2="{_fmt(frame.x1)}" y2="{_fmt(y)}"/>'


def _x_tick(frame: Frame, x: float, label: str) -> list[str]:
    return [
        f'<line class="axis" x1="{_fmt(x)}" y1="{_fmt(frame.y0)}" x2="{_fmt(x)}" y2="{_fmt(frame.y0 + 4)}"/>',
        f'<text class="x-tick" x="{_fmt(x)}" y="{_fmt(frame.y0 + 17)}" text-anchor="middle">{escape(label)}</text>',
    ]


def line_chart(
    points: Sequence[tuple[datetime, Number]],
    *,
    start: datetime,
    end: datetime,
    timezone: str,
    title: str,
    unit: str = "",
    chart_id: str = "line-chart",
    frame: Frame | None = None,
    value_format: str = "{:f}",
) -> Markup:
    """A line through `points` (time, value) over the window [start, end], with a value axis of round
    ticks around the data and a time axis labelled in `timezone`. Points outside the window are left out."""
    frame = frame or Frame()
    zone = ZoneInfo(timezone)
    inside = sorted((p for p in points if start <= p[0] <= end), key=lambda p: p[0])
    values = [float(v) for _, v in inside]
    ticks = nice_ticks(min(values), max(values)) if values else [0.0, 1.0]
    low, high = ticks[0], ticks[-1]
    span = (end - start).total_seconds() or 1.0

    def x_of(moment: datetime) -> float:
        return frame.x0 + (moment - start).total_seconds() / span * (frame.x1 - frame.x0)

    def y_of(value: float) -> float:
        return frame.y0 - (value - low) / (high - low) * (frame.y0 - frame.y1)

    parts = _svg_open(frame, chart_id, title)
    parts += _y_axis(frame, ticks, y_of, unit)
    parts.append(_x_axis_line(frame, frame.y0))
    for moment, label in time_ticks(start, end, zone):
        x = x_of(moment)
        parts += _x_tick(frame, x, label)
    if inside:
        coords = [(x_of(t), y_of(float(v))) for t, v in inside]
        path = " ".join(f"{'M' if i == 0 else 'L'}{_fmt(x)},{_fmt(y)}" for i, (x, y) in enumerate(coords))
        parts.append(f'<path class="line" d="{path}"/>')
        if len(inside) <= 62:
            for (x, y), (moment, value) in zip(coords, inside, strict=True):
                label = f"{moment.astimezone(zone):%Y-%m-%d %H:%M} {value_format.format(value)} {unit}".strip()
                parts.append(
                    f'<circle class="dot" cx="{_fmt(x)}" cy="{_fmt(y)}" r="2.5"><title>{escape(label)}</title></circle>'
                )
    parts.append("</svg>")
    return Markup("\n".join(parts))


def bar_chart(
    bars: Sequence[tuple[date, Number]],
    *,
    first_day: date,
    last_day: date,
    title: str,
    unit: str = "",
    chart_id: str = "bar-chart",
    frame: Frame | None = None,
    value_format: str = "{:f}",
) -> Markup:
    """One bar per day from `first_day` to `last_day` (days without a value have none), on a value axis
    from zero (or below, for negative values) with round ticks; day labels spaced to stay readable."""
    frame = frame or Frame()
    days = (last_day - first_day).days + 1
    if days < 1:
        raise ValueError("last_day is before first_day")
    inside = [(d, v) for d, v in bars if first_day <= d <= last_day]
    values = [float(v) for _, v in inside]
    ticks = nice_ticks(min([0.0, *values]), max([0.0, *values])) if values else [0.0, 1.0]
    low, high = ticks[0], ticks[-1]
    slot = (frame.x1 - frame.x0) / days
    gap = min(2.0, slot * 0.2)

    def y_of(value: float) -> float:
        return frame.y0 - (value - low) / (high - low) * (frame.y0 - frame.y1)

    zero = y_of(0.0)
    parts = _svg_open(frame, chart_id, title)
    parts += _y_axis(frame, ticks, y_of, unit)
    parts.append(_x_axis_line(frame, zero))
    if days <= 120:
        every = next((s for s in (1, 2, 3, 7, 14, 28) if days / s <= 10), 28)
        labelled = [(first_day + timedelta(days=i), "%m-%d") for i in range(0, days, every)]
    else:
        labelled = [(day, "%Y-%m") for day in month_starts(first_day, last_day)]
    for day, pattern in labelled:
        parts += _x_tick(frame, frame.x0 + ((day - first_day).days + 0.5) * slot, day.strftime(pattern))
    for day, value in inside:
        i = (day - first_day).days
        top, bottom = sorted((y_of(float(value)), zero))
        css = "bar negative" if value < 0 else "bar"
        label = f"{day.isoformat()} {value_format.format(value)} {unit}".strip()
        parts.append(
            f'<rect class="{css}" data-day="{day.isoformat()}" x="{_fmt(frame.x0 + i * slot + gap / 2)}" '
            f'y="{_fmt(top)}" width="{_fmt(max(slot - gap, 0.5))}" height="{_fmt(max(bottom - top, 0.0))}">'
            f"<title>{escape(label)}</title></rect>"
        )
    parts.append("</svg>")
    return Markup("\n".join(parts))
