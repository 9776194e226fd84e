"""The home page: is ingestion healthy, and what waits for someone."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from dashboards.security import Principal
from dashboards.web import render, require, settings_of, store_of
from meterhub import office

router = APIRouter()


def health(conn: psycopg.Connection[Any], timezone: str, now: datetime | None = None) -> dict[str, Any]:
    """Figures of the home page, for today in the utility's time zone."""
    zone = ZoneInfo(timezone)
    now = now or datetime.now(zone)
    today = now.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    row = conn.execute(
        """SELECT count(*) FILTER (WHERE m.status = 'installed'),
                  count(*) FILTER (WHERE m.status = 'installed' AND s.last_seen_at >= %(today)s),
                  count(*) FILTER (WHERE m.status = 'installed' AND s.last_reading_at >= %(today)s),
                  count(*) FILTER (WHERE m.status = 'installed'
                                     AND (s.last_seen_at IS NULL OR s.last_seen_at < %(now)s - interval '24 hours')),
                  count(*) FILTER (WHERE m.valve_state = 'closed'),
                  count(*) FILTER (WHERE s.battery_v IS NOT NULL AND s.battery_v < 3.3)
             FROM meter m LEFT JOIN meter_state s ON s.meter_id = m.id""",
        {"today": today, "now": now},
    ).fetchone()
    assert row is not None
    installed, seen_today, read_today, offline, valves_closed, battery_low = (int(v) for v in row)
    rejected = conn.execute(
        "SELECT count(*) FROM rejected_frame WHERE received_at >= %s", [today]
    ).fetchone()
    rejected_by_reason = conn.execute(
        """SELECT reason, count(*) FROM rejected_frame WHERE received_at >= %s
            GROUP BY reason ORDER BY count(*) DESC LIMIT 5""",
        [today],
    ).fetchall()
    alarms = conn.execute(
        """SELECT e.kind, e.severity, count(*) FROM meter_event e
            WHERE e.cleared_at IS NULL AND e.ts >= %s - interval '7 days'
            GROUP BY e.kind, e.severity ORDER BY count(*) DESC""",
        [now],
    ).fetchall()
    recent_alarms = conn.execute(
        """SELECT e.ts, m.meter_no, e.kind, e.severity FROM meter_event e JOIN meter m ON m.id = e.meter_id
            WHERE e.cleared_at IS NULL AND e.severity <> 'info' ORDER BY e.ts DESC LIMIT 10"""
    ).fetchall()
    commands = conn.execute(
        """SELECT count(*) FILTER (WHERE state = 'awaiting_approval'),
                  count(*) FILTER (WHERE state IN ('requested', 'queued', 'sent')),
                  count(*) FILTER (WHERE state IN ('failed', 'unknown') AND finished_at >= %s - interval '7 days')
             FROM meter_command""",
        [now],
    ).fetchone()
    bulks = conn.execute("SELECT count(*) FROM command_bulk WHERE state = 'awaiting_approval'").fetchone()
    reviews = conn.execute(
        """SELECT count(*) FILTER (WHERE status = 'pending'),
                  count(*) FILTER (WHERE status = 'pending' AND flag_count > 0)
             FROM reading_review"""
    ).fetchone()
    collectors = conn.execute(
        """SELECT collector_id, host, heartbeat_at, stopped_at, heartbeat_at > %s - interval '1 minute' AS alive
             FROM collector_status ORDER BY collector_id""",
        [now],
    ).fetchall()
    assert rejected is not None and commands is not None and bulks is not None and reviews is not None
    return {
        "installed": installed,
        "seen_today": seen_today,
        "read_today": read_today,
        "read_rate": (read_today / installed) if installed else None,
        "offline": offline,
        "valves_closed": valves_closed,
        "battery_low": battery_low,
        "rejected_today": int(rejected[0]),
        "rejected_by_reason": rejected_by_reason,
        "alarms": alarms,
        "recent_alarms": recent_alarms,
        "commands_awaiting_approval": int(commands[0]) + int(bulks[0]),
        "commands_in_flight": int(commands[1]),
        "commands_failed_week": int(commands[2]),
        "reviews_pending": int(reviews[0]),
        "reviews_flagged": int(reviews[1]),
        "collectors": collectors,
        "as_of": now,
        "since": today,
    }


@router.get("/", include_in_schema=False)
def home(request: Request, user: Annotated[Principal, Depends(require())]) -> Response:
    with store_of(request).connection() as conn:
        figures = health(conn, settings_of(request).timezone)
        news = office.news_list(conn, published_only=True, limit=5)
        unread = office.inbox(conn, user.user_id, unread_only=True, limit=5)
        unread_count = office.unread_count(conn, user.user_id) if unread else 0
    return render(request, "home.html", h=figures, news=news, unread=unread, unread_count=unread_count)


@router.get("/api/v1/health", tags=["monitoring"])
def api_health(request: Request, user: Annotated[Principal, Depends(require())]) -> dict[str, Any]:
    """Ingestion health and pending work, as on the home page."""
    with store_of(request).connection() as conn:
        figures = health(conn, settings_of(request).timezone)
    return {
        **{k: v for k, v in figures.items() if isinstance(v, int | float) or v is None},
        "rejected_by_reason": {r[0]: r[1] for r in figures["rejected_by_reason"]},
        "alarms": [{"kind": a[0], "severity": a[1], "open": a[2]} for a in figures["alarms"]],
        "collectors": [
            {"id": c[0], "host": c[1], "heartbeat_at": c[2].isoformat(), "alive": bool(c[4]) and c[3] is None}
            for c in figures["collectors"]
        ],
        "as_of": figures["as_of"].isoformat(),
    }
