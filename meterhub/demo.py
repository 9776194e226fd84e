"""`meterhub demo`: a small gas utility on the embedded store, ready to look at."""

from __future__ import annotations

import math
import random
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from meterhub.settings import Settings
from meterhub.store import Store

AREAS = [("HD", "海淀区", "Haidian"), ("CY", "朝阳区", "Chaoyang"), ("FT", "丰台区", "Fengtai")]
COMMUNITIES_PER_AREA = 2
USAGE_TYPES = [
    ("RES", "居民生活用气", "Residential", "residential"),
    ("COM", "商业用气", "Commercial", "commercial"),
    ("IND", "工业用气", "Industrial", "industrial"),
    ("HEAT", "采暖用气", "Heating", "heating"),
]
MODELS = [
    # manufacturer code, manufacturer, model, driver, has valve, prepaid capable, register max
    ("GOLDCARD", "金卡智能", "NB-IoT G2.5", "native_json", True, True, Decimal("99999.999")),
    ("VIEWSHINE", "威星智能", "CJ188-DTU G4", "cjt188", True, True, Decimal("99999.99")),
    ("FLONIDAN", "Flonidan", "UNIFLO1200", "modbus", False, False, None),
]
STAFF = [
    ("admin", "系统管理员", "admin"),
    ("cashier", "收费员 王芳", "cashier"),
    ("clerk", "抄表审核 李强", "billing_clerk"),
    ("reader", "抄表员 张伟", "meter_reader"),
    ("engineer", "维修工程师 赵磊", "field_engineer"),
    ("auditor", "稽核 陈静", "auditor"),
]
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂"


def run_demo(settings: Settings, console: Console, meters: int, days: int) -> None:
    with Store(settings) as store:
        console.print(f"[bold]meterhub demo[/bold] — {store.describe()}")
        applied = store.migrate()
        console.print(f"schema: {', '.join(applied) if applied else 'up to date'}")
        today = datetime.now(ZoneInfo(settings.timezone)).date()
        with store.transaction(actor="demo") as conn:
            created = seed_master_data(conn, meters)
        console.print(f"master data: {created} new meters with customers and accounts")
        store.maintain()
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("readings", total=days)
            stored = seed_readings(store, settings.timezone, today, days, lambda: progress.advance(task))
        console.print(f"readings: {stored} new daily register readings over {days} days")
        store.maintain()
        with store.connection() as conn:
            _summary(conn, console)
        console.print(
            "\nNext: [bold]meterhub db status[/bold] shows the schema; set METERHUB_DATABASE_URL to use your "
            "own PostgreSQL; the data stays in "
            f"[bold]{store.embedded.pgdata if store.embedded else 'your database'}[/bold] between runs."
        )


def _name(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))


def seed_master_data(conn: psycopg.Connection[Any], meters: int) -> int:
    """Create the demo utility; idempotent (codes and numbers are fixed, conflicts are skipped)."""
    for code, name, name_en in AREAS:
        conn.execute(
            "INSERT INTO area (code, name) VALUES (%s, %s) ON CONFLICT (code) DO NOTHING", [code, f"{name} {name_en}"]
        )
        for n in range(1, COMMUNITIES_PER_AREA + 1):
            conn.execute(
                """INSERT INTO community (area_id, code, name, address)
                   SELECT id, %s, %s, %s FROM area WHERE code = %s ON CONFLICT (code) DO NOTHING""",
                [f"{code}-{n:02d}", f"{name_en} Garden {n} / {name}花园{n}期", f"{name} No. {n * 18} Road", code],
            )
    for code, name, name_en, category in USAGE_TYPES:
        conn.execute(
            """INSERT INTO usage_type (code, name, name_en, category) VALUES (%s, %s, %s, %s)
               ON CONFLICT (code) DO NOTHING""",
            [code, name, name_en, category],
        )
    for mcode, mname, model, driver, valve, prepaid, register_max in MODELS:
        conn.execute(
            "INSERT INTO manufacturer (code, name) VALUES (%s, %s) ON CONFLICT (code) DO NOTHING", [mcode, mname]
        )
        conn.execute(
            """INSERT INTO meter_model (manufacturer_id, name, driver_key, has_valve, prepaid_capable, register_max)
               SELECT id, %s, %s, %s, %s, %s FROM manufacturer WHERE code = %s
               ON CONFLICT (manufacturer_id, name) DO NOTHING""",
            [model, driver, valve, prepaid, register_max, mcode],
        )
    for username, display, role in STAFF:
        conn.execute(
            "INSERT INTO staff_user (username, display_name, role) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            [username, display, role],
        )
    communities = conn.execute("SELECT id, code, address FROM community ORDER BY code").fetchall()
    usage = dict(conn.execute("SELECT code, id FROM usage_type").fetchall())
    models = conn.execute("SELECT mm.id, mm.driver_key, mm.register_max FROM meter_model mm ORDER BY mm.id").fetchall()
    rng = random.Random(20261127)
    created = 0
    for i in range(1, meters + 1):
        community_id, ccode, caddress = communities[(i - 1) % len(communities)]
        commercial = i % 20 == 0
        industrial = i % 97 == 0
        model_id, driver, register_max = models[2] if industrial else models[0 if i % 3 else 1]
        usage_code = "IND" if industrial else "COM" if commercial else "RES"
        customer_no = f"C{i:07d}"
        row = conn.execute(
            """INSERT INTO customer (customer_no, name, kind, phone, address, household_size, protected)
               VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (customer_no) DO NOTHING RETURNING id""",
            [
                customer_no,
                f"{_name(rng)}餐馆" if commercial else _name(rng),
                "organisation" if commercial or industrial else "person",
                f"1{rng.randint(3, 9)}{rng.randint(0, 999999999):09d}",
                f"{caddress}, building {1 + i // 24}, unit {1 + i % 24}",
                rng.choice((1, 2, 3, 3, 4, 5, 6)),
                i % 50 == 7,
            ],
        ).fetchone()
        if row is None:
            continue  # seeded by an earlier run
        account = conn.execute(
            """INSERT INTO account (account_no, customer_id, community_id, address, usage_type_id, billing_mode,
                                    card_no, opened_on)
               VALUES (%s, %s, %s, (SELECT address FROM customer WHERE id = %s), %s, %s, %s, %s) RETURNING id""",
            [
                f"{ccode}-{i:06d}",
                row[0],
                community_id,
                row[0],
                usage[usage_code],
                "prepaid_account" if i % 4 == 0 else "postpaid",
                f"IC{i:010d}",
                date(2020, 1, 1),
            ],
        ).fetchone()
        assert account is not None
        conn.execute(
            """INSERT INTO meter (meter_no, model_id, driver_key, protocol_address, usage_type_id, account_id,
                                  prepaid, valve_state, status, install_date, register_max)
               VALUES (%s, %s, %s, %s, %s, %s, %s, 'open', 'installed', %s, %s)""",
            [
                f"M{i:08d}",
                model_id,
                driver,
                f"{i:014d}" if driver == "cjt188" else "",
                usage[usage_code],
                account[0],
                i % 4 == 0,
                date(2020, 1, 1),
                register_max,
            ],
        )
        created += 1
    return created


def daily_use_m3(rng: random.Random, day: date, usage_category: str) -> Decimal:
    """A plausible day of gas: more in the heating months, weekends differ, some homes stand idle."""
    season = 1.0 + 0.9 * max(0.0, math.cos((day.timetuple().tm_yday - 15) / 365 * 2 * math.pi))
    base = {"commercial": 14.0, "industrial": 180.0}.get(usage_category, 0.9)
    weekend = 1.15 if day.weekday() >= 5 and usage_category == "residential" else 1.0
    use = max(0.0, rng.gauss(base * season * weekend, base * 0.25))
    return Decimal(f"{use:.3f}")


def seed_readings(store: Store, timezone: str, today: date, days: int, tick: Any) -> int:
    """One register reading per meter per day at 23:55 local time, copied in bulk; re-runs add nothing."""
    zone = ZoneInfo(timezone)
    with store.connection() as conn:
        meters = conn.execute(
            """SELECT m.id, ut.category, m.initial_reading FROM meter m
               JOIN usage_type ut ON ut.id = m.usage_type_id ORDER BY m.id"""
        ).fetchall()
    total = 0
    registers = {meter_id: initial for meter_id, _, initial in meters}
    for offset in range(days, 0, -1):
        day = today - timedelta(days=offset)
        ts = datetime.combine(day, time(23, 55), zone).astimezone(UTC)
        with store.transaction() as conn:
            conn.execute("CREATE TEMP TABLE demo_reading (LIKE reading INCLUDING DEFAULTS) ON COMMIT DROP")
            with conn.cursor().copy("COPY demo_reading (meter_id, channel, ts, value, source) FROM STDIN") as copy:
                for meter_id, category, _ in meters:
                    rng = random.Random(f"{meter_id}:{day.isoformat()}")
                    registers[meter_id] += daily_use_m3(rng, day, category)
                    copy.write_row((meter_id, "volume_m3", ts, registers[meter_id], "demo"))
            cursor = conn.execute(
                "INSERT INTO reading SELECT * FROM demo_reading ON CONFLICT (meter_id, channel, ts) DO NOTHING"
            )
            total += cursor.rowcount
        tick()
    return total


def _summary(conn: psycopg.Connection[Any], console: Console) -> None:
    counts = conn.execute(
        """SELECT (SELECT count(*) FROM area), (SELECT count(*) FROM community), (SELECT count(*) FROM customer),
                  (SELECT count(*) FROM account), (SELECT count(*) FROM meter), (SELECT count(*) FROM reading),
                  (SELECT count(*) FROM change_history)"""
    ).fetchone()
    assert counts is not None
    table = Table(title="what is in the store")
    for column in ("areas", "communities", "customers", "accounts", "meters", "readings", "history rows"):
        table.add_column(column, justify="right")
    table.add_row(*(str(c) for c in counts))
    console.print(table)
    top = conn.execute(
        """SELECT m.meter_no, a.account_no, c.name, sum(d.consumption_m3) AS used
             FROM daily_consumption d JOIN meter m ON m.id = d.meter_id
             JOIN account a ON a.id = m.account_id JOIN customer c ON c.id = a.customer_id
            WHERE d.day >= current_date - 30
            GROUP BY 1, 2, 3 ORDER BY used DESC LIMIT 5"""
    ).fetchall()
    if top:
        usage = Table(title="largest use, last 30 days (m³)")
        for column in ("meter", "account", "customer", "m³"):
            usage.add_column(column)
        for meter_no, account_no, name, used in top:
            usage.add_row(meter_no, account_no, name, f"{used:.3f}")
        console.print(usage)
