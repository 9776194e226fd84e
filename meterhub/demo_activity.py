"""What happened lately at the demo utility: alarms from meters, and valve and credit commands in every
state the command service knows. Seeded once; the live collector then sends the queued commands and the
simulated meters confirm them (the silent meter never answers, so its command ends as failed)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from meterhub import commands
from meterhub.demo_billing import share
from meterhub.demo_data import SILENT_METER
from meterhub.store import Store

ENGINEER, SUPERVISOR = "engineer", "supervisor"


def _pick(conn: psycopg.Connection[Any], where: str, params: list[Any] | None = None, limit: int = 1) -> list[str]:
    rows = conn.execute(
        f"""SELECT m.meter_no FROM meter m JOIN account a ON a.id = m.account_id
              JOIN community c ON c.id = a.community_id JOIN area ar ON ar.id = c.area_id
              JOIN customer cu ON cu.id = a.customer_id
             WHERE m.status = 'installed' AND m.meter_no <> %s AND {where} ORDER BY m.meter_no LIMIT %s""",
        [SILENT_METER, *(params or []), limit],
    ).fetchall()
    return [r[0] for r in rows]


def seed_events(store: Store, now: datetime) -> int:
    """Alarms of the last weeks (battery, tamper, magnet, leak, an industrial device alarm, the silent
    meter going offline); some already cleared. Returns how many were new."""
    with store.connection() as conn:
        if conn.execute("SELECT 1 FROM meter_event WHERE source = 'demo' LIMIT 1").fetchone():
            return 0
        meters = [r[0] for r in conn.execute("SELECT meter_no FROM meter WHERE meter_no LIKE 'M%%' ORDER BY meter_no")]
        industrial = _pick(conn, "m.driver_key = 'modbus'", limit=2)
    events: list[tuple[str, datetime, str, str, dict[str, Any], bool]] = []
    for meter_no in meters:
        roll = share(meter_no, "event")
        when = now - timedelta(hours=1 + int(share(meter_no, "when") * 24 * 40))
        cleared = share(meter_no, "cleared") < 0.5
        if roll < 0.006:
            events.append((meter_no, when, "battery_low", "warning", {"battery_v": "3.18"}, cleared))
        elif roll < 0.008:
            events.append((meter_no, when, "tamper", "warning", {"cover": "opened"}, cleared))
        elif roll < 0.0095:
            events.append((meter_no, when, "magnetic", "warning", {"field": "strong"}, cleared))
        elif roll < 0.0105:
            events.append((meter_no, when, "leak", "critical", {"sensor": "methane"}, cleared))
    if SILENT_METER in meters:
        events.append((SILENT_METER, now - timedelta(days=19), "offline", "warning", {"last_seen_days": 1}, False))
    for n, meter_no in enumerate(industrial):
        detail = {"alarm": "pressure_high", "pressure_bar": "4.9"} if n == 0 else {"alarm": "temperature_sensor"}
        events.append((meter_no, now - timedelta(days=3 + 5 * n), "device_alarm", "warning", detail, n == 1))
    with store.transaction(actor="demo") as conn:
        conn.cursor().executemany(
            """INSERT INTO meter_event (meter_id, ts, kind, severity, detail, source, cleared_at)
               SELECT id, %s, %s, %s, %s, 'demo', CASE WHEN %s THEN %s::timestamptz + interval '6 hours' END
                 FROM meter WHERE meter_no = %s ON CONFLICT DO NOTHING""",
            [(ts, kind, sev, json.dumps(detail), cleared, ts, no) for no, ts, kind, sev, detail, cleared in events],
        )
    return len(events)


@dataclass(frozen=True)
class DemoCommand:
    meter_no: str
    kind: str
    user: str
    reason: str
    purpose: str = "other"
    emergency: bool = False
    amount: Decimal | None = None


def seed_commands(store: Store) -> int:
    """Commands in their various states: emergency closes (native JSON and CJ/T 188 meters), a close refused
    by the rules, one cancelled, a re-open that arms the valve, a top-up, a close to a meter that never
    answers, and a bulk re-open waiting for a second person. Returns how many were created."""
    with store.connection() as conn:
        if conn.execute("SELECT 1 FROM meter_command WHERE idempotency_key LIKE 'demo:%%' LIMIT 1").fetchone():
            return 0
        hd_native = _pick(
            conn, "ar.code = 'HD' AND m.driver_key = 'native_json' AND NOT cu.protected AND NOT m.prepaid", limit=3
        )
        hd_dtu = _pick(conn, "ar.code = 'HD' AND m.driver_key = 'cjt188' AND m.protocol_address NOT LIKE '%%:%%'")
        mqtt = "m.driver_key IN ('native_json', 'cjt188') AND m.protocol_address NOT LIKE '%%:%%'"
        protected = _pick(conn, f"cu.protected AND {mqtt}")
        prepaid = _pick(conn, "m.prepaid AND m.driver_key = 'native_json'")
        arrears = _pick(conn, "a.billing_mode = 'postpaid' AND m.driver_key = 'native_json' AND ar.code = 'CY'")
        silent = [
            r[0] for r in conn.execute("SELECT meter_no FROM meter WHERE meter_no = %s", [SILENT_METER])
        ]
        community = _pick(conn, "c.code = 'CY-01' AND m.driver_key = 'native_json' AND NOT m.prepaid", limit=20)
    if len(hd_native) < 3:
        return 0  # a demo too small for the story
    closed_earlier = hd_native[2]
    with store.transaction(actor=ENGINEER) as conn:  # closed on site last month; re-opened (armed) below
        conn.execute("UPDATE meter SET valve_state = 'closed' WHERE meter_no = %s", [closed_earlier])
    wanted = [
        DemoCommand(hd_native[0], "valve_close", ENGINEER, "用户报燃气泄漏，紧急关阀 (gas leak reported)",
                    "emergency", emergency=True),
        *[DemoCommand(no, "valve_close", ENGINEER, "户内报警器报警，紧急关阀 (alarm in the flat)", "emergency",
                      emergency=True) for no in hd_dtu],
        *[DemoCommand(no, "valve_close", SUPERVISOR, "欠费三个月 (arrears, 3 months)", "arrears") for no in arrears],
        *[DemoCommand(no, "valve_close", ENGINEER, "表具维修 (meter repair)", "repair") for no in protected],
        DemoCommand(hd_native[1], "valve_open", ENGINEER, "恢复供气 (restore supply)", "other"),
        DemoCommand(closed_earlier, "valve_open", ENGINEER, "整改完成，恢复供气 (fixed, supply restored)", "other"),
        *[DemoCommand(no, "credit", SUPERVISOR, "柜台充值 (counter top-up)", "other", amount=Decimal("50.00"))
          for no in prepaid],
        *[DemoCommand(no, "valve_close", ENGINEER, "燃气泄漏报警 (leak alarm)", "emergency", emergency=True)
          for no in silent],
    ]  # fmt: skip
    created = 0
    cancel_next = hd_native[1]
    for n, c in enumerate(wanted):
        view = commands.request_command(
            store, c.meter_no, c.kind, user=c.user, reason=c.reason, purpose=c.purpose, amount=c.amount,
            emergency=c.emergency, idempotency_key=f"demo:{n}",
        )  # fmt: skip
        created += 1
        if c.meter_no == cancel_next and view.state == "queued":
            commands.cancel(store, view.id, user=ENGINEER, reason="用户要求改期 (customer asked for another day)")
    if len(community) >= store.settings.commands.bulk_approval_size:
        commands.request_bulk(
            store, community, "valve_open", user=SUPERVISOR, reason="管网施工结束，恢复供气 (works finished)",
            purpose="other",
        )  # fmt: skip
        created += len(community)
    return created


def seed_activity(store: Store) -> tuple[int, int]:
    now = datetime.now(UTC).replace(microsecond=0)
    return seed_events(store, now), seed_commands(store)
