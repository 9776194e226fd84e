"""The demo utility's master data, staff, tariffs and daily register history.

Everything here is idempotent: codes and numbers are fixed, rows that exist are left alone, and the
history continues from each meter's last stored reading, so a second start adds only what is missing.

Meters:
- `M00000001` … (`--meters`): residential and commercial meters in six estates; NB-IoT meters speaking
  meterhub's native JSON over MQTT, and every fifth one (i % 5 == 2) a CJ/T 188 meter behind a DTU over MQTT.
- `FC-0001` … : industrial volume correctors polled over Modbus TCP (`station-N:<unit>`).
- `L1-0001` … : wired CJ/T 188 meters on one RS-485 line (`line-1:<address>`), a pseudo-terminal in the demo.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from meterhub.store import Store

AREAS = [("HD", "海淀区", "Haidian"), ("CY", "朝阳区", "Chaoyang"), ("FT", "丰台区", "Fengtai")]
COMMUNITIES_PER_AREA = 2
USAGE_TYPES = [
    ("RES", "居民生活用气", "Residential", "residential"),
    ("COM", "商业用气", "Commercial", "commercial"),
    ("IND", "工业用气", "Industrial", "industrial"),
    ("HEAT", "采暖用气", "Heating", "heating"),
]


@dataclass(frozen=True)
class Model:
    manufacturer: str
    manufacturer_name: str
    name: str
    driver: str
    profile: str
    has_valve: bool
    prepaid_capable: bool
    register_max: Decimal | None


NB_IOT = Model("GOLDCARD", "金卡智能", "NB-IoT G2.5", "native_json", "", True, True, Decimal("99999.999"))
DTU = Model("VIEWSHINE", "威星智能", "CJ188-DTU G4", "cjt188", "", True, True, Decimal("999999.99"))
WIRED = Model("SUNTRONT", "新天科技", "RS485 CJ188 G2.5", "cjt188", "", True, False, Decimal("999999.99"))
UNIFLO = Model("FLONIDAN", "Flonidan", "UNIFLO1200", "modbus", "flonidan_uniflo1200", False, False, None)
FLOWSIC = Model("SICK", "SICK", "FLOWSIC500", "modbus", "sick_flowsic500", False, False, None)
MODELS = [NB_IOT, DTU, WIRED, UNIFLO, FLOWSIC]

MODBUS_METERS = 6  # three units on each of two Modbus TCP stations
MODBUS_PER_STATION = 3
SERIAL_METERS = 8  # one RS-485 line
SERIAL_BUS = "line-1"
SILENT_METER = "M00000013"  # its radio is broken: it neither reports nor answers commands


@dataclass(frozen=True)
class StaffMember:
    username: str
    display_name: str
    role: str
    password: str
    area: str | None = None  # limited to this area (and its sub-areas)


STAFF = [
    StaffMember("admin", "系统管理员 周敏", "admin", "admin-demo"),
    StaffMember("supervisor", "营业主管 刘洋", "supervisor", "supervisor-demo"),
    StaffMember("clerk", "营业员 李强", "billing_clerk", "clerk-demo"),
    StaffMember("cashier", "收费员 王芳", "cashier", "cashier-demo"),
    StaffMember("reader", "抄表员 张伟", "meter_reader", "reader-demo"),
    StaffMember("engineer", "维修工程师 赵磊", "engineer", "engineer-demo", area="HD"),
    StaffMember("auditor", "稽核 陈静", "auditor", "auditor-demo"),
    StaffMember("storekeeper", "仓管员 孙丽", "storekeeper", "storekeeper-demo"),
]

TARIFFS: dict[str, dict[str, Any]] = {
    "RES": {  # Beijing-like annual tiers, more volume for larger households
        "cycle": "calendar_year",
        "household": {"base_size": 4, "add_m3_per_person": "100"},
        "periods": [
            {
                "effective_from": "2020-01-01",
                "tiers": [
                    {"upper_m3": "350", "price": "2.61"},
                    {"upper_m3": "500", "price": "3.03"},
                    {"price": "3.76"},
                ],
            }
        ],
    },
    "COM": {"cycle": "month", "periods": [{"effective_from": "2020-01-01", "price": "4.20"}]},
    "IND": {
        "cycle": "month",
        "periods": [
            {
                "effective_from": "2020-01-01",
                "price": "3.85",
                "fixed_charges": [{"code": "meter_rental", "amount_per_month": "120.00"}],
            }
        ],
    },
    "HEAT": {"cycle": "month", "periods": [{"effective_from": "2020-01-01", "price": "2.95"}]},
}

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂"
FIRMS = ["京西热力锅炉房", "燕山玻璃制品厂", "永定河食品厂", "丰泽印染厂", "长城铸造厂", "北方陶瓷厂", "金隅建材厂"]


@dataclass(frozen=True)
class MeterRow:
    """One meter with its customer and account, as the demo creates it."""

    number: int
    meter_no: str
    customer_no: str
    customer_name: str
    kind: str
    account_no: str
    community: str
    usage: str
    billing_mode: str
    model: Model
    protocol_address: str
    protected: bool
    household_size: int
    phone: str
    address: str


def _name(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))


def community_codes() -> list[str]:
    return [f"{code}-{n:02d}" for code, _, _ in AREAS for n in range(1, COMMUNITIES_PER_AREA + 1)]


def meter_rows(meters: int) -> list[MeterRow]:
    """The demo's meters: `meters` on MQTT, then the Modbus and serial ones (fixed numbers of each)."""
    communities = community_codes()
    rows = []
    for i in range(1, meters + 1):
        rng = random.Random(i)
        commercial = i % 20 == 0
        heating = i % 100 == 50
        usage = "COM" if commercial else "HEAT" if heating else "RES"
        mode = "prepaid_meter" if i % 25 == 3 else "prepaid_account" if i % 10 == 4 else "postpaid"
        model = DTU if i % 5 == 2 else NB_IOT
        community = communities[(i - 1) % len(communities)]
        rows.append(
            MeterRow(
                number=i,
                meter_no=f"M{i:08d}",
                customer_no=f"C{i:07d}",
                customer_name=f"{_name(rng)}餐馆" if commercial else f"{FIRMS[0]}{i}号" if heating else _name(rng),
                kind="organisation" if commercial or heating else "person",
                account_no=f"{community}-{i:06d}",
                community=community,
                usage=usage,
                billing_mode=mode,
                model=model,
                protocol_address=f"{i:014d}" if model is DTU else "",
                protected=i % 50 == 7,
                household_size=rng.choice((1, 2, 3, 3, 4, 5, 6)),
                phone=f"1{rng.randint(3, 9)}{rng.randint(0, 999999999):09d}",
                address=f"building {1 + i // 24}, unit {1 + i % 24}",
            )
        )
    for n in range(1, MODBUS_METERS + 1):
        station, unit = 1 + (n - 1) // MODBUS_PER_STATION, 1 + (n - 1) % MODBUS_PER_STATION
        community = communities[(n - 1) % len(communities)]
        rows.append(
            MeterRow(
                number=n,
                meter_no=f"FC-{n:04d}",
                customer_no=f"CI{n:05d}",
                customer_name=FIRMS[(n - 1) % len(FIRMS)],
                kind="organisation",
                account_no=f"IND-{n:04d}",
                community=community,
                usage="IND",
                billing_mode="postpaid",
                model=UNIFLO if n % 2 else FLOWSIC,
                protocol_address=f"station-{station}:{unit}",
                protected=False,
                household_size=1,
                phone=f"010-6{n:03d}{n * 37 % 10000:04d}",
                address=f"industrial park, hall {n}",
            )
        )
    for n in range(1, SERIAL_METERS + 1):
        rng = random.Random(f"L{n}")
        community = communities[-1]
        rows.append(
            MeterRow(
                number=n,
                meter_no=f"L1-{n:04d}",
                customer_no=f"CL{n:05d}",
                customer_name=_name(rng),
                kind="person",
                account_no=f"{community}-L{n:04d}",
                community=community,
                usage="RES",
                billing_mode="postpaid",
                model=WIRED,
                protocol_address=f"{SERIAL_BUS}:{serial_address(n)}",
                protected=False,
                household_size=rng.choice((2, 3, 4)),
                phone=f"1{rng.randint(3, 9)}{rng.randint(0, 999999999):09d}",
                address=f"old block {n}, ground floor",
            )
        )
    return rows


def serial_address(n: int) -> str:
    return f"{88_000_000_000_000 + n:014d}"


def seed_master_data(conn: psycopg.Connection[Any], meters: int) -> int:
    """Areas, estates, usage types, models, tariffs, late-fee rule, customers, accounts and meters.
    Returns how many meters were new."""
    for code, name, name_en in AREAS:
        conn.execute(
            "INSERT INTO area (code, name) VALUES (%s, %s) ON CONFLICT (code) DO NOTHING", [code, f"{name} {name_en}"]
        )
        for n in range(1, COMMUNITIES_PER_AREA + 1):
            conn.execute(
                """INSERT INTO community (area_id, code, name, address)
                   SELECT id, %s, %s, %s FROM area WHERE code = %s ON CONFLICT (code) DO NOTHING""",
                [f"{code}-{n:02d}", f"{name}花园{n}期 {name_en} Garden {n}", f"{name} No. {n * 18} Road", code],
            )
    for code, name, name_en, category in USAGE_TYPES:
        conn.execute(
            """INSERT INTO usage_type (code, name, name_en, category) VALUES (%s, %s, %s, %s)
               ON CONFLICT (code) DO NOTHING""",
            [code, name, name_en, category],
        )
    for m in MODELS:
        conn.execute(
            "INSERT INTO manufacturer (code, name) VALUES (%s, %s) ON CONFLICT (code) DO NOTHING",
            [m.manufacturer, m.manufacturer_name],
        )
        conn.execute(
            """INSERT INTO meter_model (manufacturer_id, name, driver_key, profile, has_valve, prepaid_capable,
                                        register_max)
               SELECT id, %s, %s, %s, %s, %s, %s FROM manufacturer WHERE code = %s
               ON CONFLICT (manufacturer_id, name) DO UPDATE SET profile = EXCLUDED.profile""",
            [m.name, m.driver, m.profile, m.has_valve, m.prepaid_capable, m.register_max, m.manufacturer],
        )
    for usage, definition in TARIFFS.items():
        conn.execute(
            """INSERT INTO tariff (usage_type_id, definition) SELECT id, %s FROM usage_type WHERE code = %s
               ON CONFLICT (usage_type_id) DO NOTHING""",
            [json.dumps(definition), usage],
        )
    conn.execute(
        """INSERT INTO late_fee_rule (usage_type_id, method, daily_rate, grace_days, cap_pct)
           VALUES (NULL, 'daily_rate', 0.003, 0, 30) ON CONFLICT DO NOTHING"""
    )
    rows = meter_rows(meters)
    conn.execute(
        """INSERT INTO customer (customer_no, name, kind, phone, address, household_size, protected)
           SELECT u.no, u.name, u.kind, u.phone, c.address || ', ' || u.address, u.size, u.protected
             FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::bool[], %s::text[])
                  AS u (no, name, kind, phone, address, size, protected, community)
             JOIN community c ON c.code = u.community
           ON CONFLICT (customer_no) DO NOTHING""",
        [
            [r.customer_no for r in rows],
            [r.customer_name for r in rows],
            [r.kind for r in rows],
            [r.phone for r in rows],
            [r.address for r in rows],
            [r.household_size for r in rows],
            [r.protected for r in rows],
            [r.community for r in rows],
        ],
    )
    conn.execute(
        """INSERT INTO account (account_no, customer_id, community_id, address, usage_type_id, billing_mode, card_no,
                                opened_on)
           SELECT u.account_no, cu.id, c.id, cu.address, ut.id, u.mode, 'IC' || u.account_no, DATE '2020-01-01'
             FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[])
                  AS u (account_no, customer_no, community, usage, mode)
             JOIN customer cu ON cu.customer_no = u.customer_no
             JOIN community c ON c.code = u.community
             JOIN usage_type ut ON ut.code = u.usage
           ON CONFLICT (account_no) DO NOTHING""",
        [
            [r.account_no for r in rows],
            [r.customer_no for r in rows],
            [r.community for r in rows],
            [r.usage for r in rows],
            [r.billing_mode for r in rows],
        ],
    )
    created = conn.execute(
        """INSERT INTO meter (meter_no, model_id, driver_key, protocol_address, usage_type_id, account_id, prepaid,
                              valve_state, status, install_date, register_max)
           SELECT u.meter_no, mm.id, mm.driver_key, u.address, a.usage_type_id, a.id, a.billing_mode = 'prepaid_meter',
                  CASE WHEN mm.has_valve THEN 'open' ELSE 'unknown' END, 'installed', DATE '2020-01-01',
                  mm.register_max
             FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS u (meter_no, account_no, model, address)
             JOIN account a ON a.account_no = u.account_no
             JOIN meter_model mm ON mm.name = u.model
           ON CONFLICT (meter_no) DO NOTHING""",
        [
            [r.meter_no for r in rows],
            [r.account_no for r in rows],
            [r.model.name for r in rows],
            [r.protocol_address for r in rows],
        ],
    ).rowcount
    _seed_books(conn)
    return created


def _seed_books(conn: psycopg.Connection[Any]) -> None:
    """One reading book (抄表本) per estate, read by the demo reader; new meters join their estate's book."""
    conn.execute(
        """INSERT INTO meter_reader (code, name, staff_user_id, phone)
           SELECT 'R01', '抄表员 张伟', (SELECT id FROM staff_user WHERE username = 'reader'), '13800000001'
           ON CONFLICT (code) DO NOTHING"""
    )
    conn.execute(
        """INSERT INTO reading_book (code, name, area_id, reader_id, reading_day)
           SELECT 'B-' || c.code, c.name || ' 抄表本', c.area_id, (SELECT id FROM meter_reader WHERE code = 'R01'), 25
             FROM community c ON CONFLICT (code) DO NOTHING"""
    )
    conn.execute(
        """INSERT INTO reading_book_meter (book_id, meter_id, seq)
           SELECT b.id, m.id,
                  coalesce((SELECT max(seq) FROM reading_book_meter x WHERE x.book_id = b.id), 0)
                  + row_number() OVER (PARTITION BY b.id ORDER BY m.meter_no)
             FROM meter m JOIN account a ON a.id = m.account_id JOIN community c ON c.id = a.community_id
             JOIN reading_book b ON b.code = 'B-' || c.code
            WHERE NOT EXISTS (SELECT 1 FROM reading_book_meter x WHERE x.meter_id = m.id)"""
    )


def seed_staff(conn: psycopg.Connection[Any]) -> int:
    """One user per role with the printed demo password; a user who already has a password keeps it.
    Returns how many users were created or given their demo password."""
    from dashboards.security import hash_password

    with_password = {
        r[0] for r in conn.execute("SELECT username FROM staff_user WHERE password_hash IS NOT NULL").fetchall()
    }
    changed = 0
    for member in STAFF:
        if member.username in with_password:
            continue
        conn.execute(
            """INSERT INTO staff_user (username, display_name, role, password_hash, password_changed_at)
               VALUES (%s, %s, %s, %s, now())
               ON CONFLICT (username) DO UPDATE SET role = EXCLUDED.role, display_name = EXCLUDED.display_name,
                   password_hash = EXCLUDED.password_hash, password_changed_at = now()""",
            [member.username, member.display_name, member.role, hash_password(member.password)],
        )
        changed += 1
        if member.area:
            conn.execute(
                """INSERT INTO staff_area (user_id, area_id)
                   SELECT u.id, a.id FROM staff_user u, area a WHERE u.username = %s AND a.code = %s
                   ON CONFLICT DO NOTHING""",
                [member.username, member.area],
            )
    return changed


# -- history --------------------------------------------------------------------------------------------------


def _uniform(key: str) -> str:
    """A deterministic number in [0, 1) from a SQL text expression."""
    return f"((hashtextextended({key}, 20261127) & 1099511627775)::float8 / 1099511627776.0)"


_HISTORY = f"""
WITH last AS (
    SELECT m.id AS meter_id, m.meter_no, m.driver_key IN ('cjt188', 'modbus') AS cents, ut.category,
           l.ts AS last_ts, l.value AS last_value
      FROM meter m
      JOIN usage_type ut ON ut.id = m.usage_type_id
      LEFT JOIN LATERAL (SELECT r.ts, r.value FROM reading r
                          WHERE r.meter_id = m.id AND r.channel = 'volume_m3' ORDER BY r.ts DESC LIMIT 1) l ON true
     WHERE m.status = 'installed'
), meters AS (
    SELECT meter_id, category, cents,
           CASE WHEN last_ts IS NULL THEN %(first_day)s::date
                ELSE ((last_ts AT TIME ZONE %(tz)s) - interval '23 hours 55 minutes')::date + 1 END AS from_day,
           CASE WHEN meter_no = %(silent)s THEN %(silent_since)s::date ELSE %(last_day)s::date END AS to_day,
           CASE WHEN last_value IS NOT NULL THEN (last_value * 1000)::bigint
                ELSE 10 * floor(CASE category WHEN 'industrial' THEN 10000000 + 80000000 * {_uniform("meter_no")}
                                              WHEN 'commercial' THEN 1000000 + 20000000 * {_uniform("meter_no")}
                                              WHEN 'heating' THEN 1000000 + 30000000 * {_uniform("meter_no")}
                                              ELSE 50000 + 3000000 * {_uniform("meter_no")} END / 10)::bigint
           END AS start_l,
           CASE WHEN category = 'residential' AND {_uniform("meter_no || ':idle'")} < 0.03 THEN 0
                ELSE 1000 * (0.5 + {_uniform("meter_no || ':scale'")})
                     * CASE category WHEN 'industrial' THEN 180 WHEN 'commercial' THEN 14 WHEN 'heating' THEN 40
                                     ELSE 1.1 END END AS daily_l,
           CASE category WHEN 'heating' THEN 3.0 WHEN 'residential' THEN 0.9 ELSE 0.25 END AS heating,
           CASE category WHEN 'residential' THEN 1.15 WHEN 'industrial' THEN 0.6 ELSE 0.9 END AS weekend,
           {_uniform("meter_no || ':spike'")} < 0.006 AS spiky,
           category = 'residential' AND {_uniform("meter_no || ':gap'")} < 0.005 AS gappy
      FROM last
), calendar AS (  -- what every meter shares on a day: the season, the weekend, the instant of the reading
    SELECT d::date AS day, (d::date - DATE '2000-01-01') AS day_no,
           greatest(0, cos((extract(doy FROM d) - 15) / 365.25 * 2 * pi())) AS cold,
           extract(isodow FROM d) >= 6 AS weekend,
           (d::date + time '23:55') AT TIME ZONE %(tz)s AS ts
      FROM generate_series(%(first_day)s::date, %(last_day)s::date, interval '1 day') d
), days AS (
    SELECT m.meter_id, m.cents, m.start_l, c.day, c.ts,
           floor(m.daily_l * (1 + m.heating * c.cold) * CASE WHEN c.weekend THEN m.weekend ELSE 1 END
                 -- noise from a cheap integer hash of (meter, day): 0.6 … 1.4
                 * (0.6 + 0.8 * (((m.meter_id * 48271 + c.day_no * 69621) %% 2147483647) * 16807
                                 %% 2147483647)::float8 / 2147483647)
                 * CASE WHEN m.spiky AND c.day = %(spike_day)s THEN 12 ELSE 1 END)::bigint AS use_l,
           m.gappy AND c.day BETWEEN %(gap_from)s AND %(gap_to)s AS missing
      FROM meters m JOIN calendar c ON c.day BETWEEN m.from_day AND m.to_day
), registers AS (
    SELECT meter_id, cents, ts, missing, start_l + sum(use_l) OVER (PARTITION BY meter_id ORDER BY ts) AS litres
      FROM days
)
INSERT INTO reading (meter_id, channel, ts, value, source)
SELECT meter_id, 'volume_m3', ts,
       CASE WHEN cents THEN (floor(litres / 10)::numeric / 100)::numeric(14, 2)
            ELSE (litres::numeric / 1000)::numeric(14, 3) END,
       'demo'
  FROM registers WHERE NOT missing
"""


def month_start(day: date, months_back: int = 0) -> date:
    index = day.year * 12 + day.month - 1 - months_back
    return date(index // 12, index % 12 + 1, 1)


def seed_history(store: Store, today: date, first_day: date) -> int:
    """Daily register readings at 23:55 local time up to yesterday, continuing each meter's last reading
    (new meters start on `first_day`). Last month carries a few anomalies for the reading review: a
    spike, a week without readings; the silent meter stopped reporting 20 days ago. Returns the readings written."""
    last_month = month_start(today, 1)
    with store.admin_connection() as conn:
        conn.execute(
            "SELECT meterhub_ensure_reading_partitions(%s, %s)",
            [first_day - timedelta(days=31), today + timedelta(days=31)],
        )
    params = {
        "tz": store.settings.timezone,
        "first_day": first_day,
        "last_day": today - timedelta(days=1),
        "silent": SILENT_METER,
        "silent_since": today - timedelta(days=20),
        "spike_day": last_month + timedelta(days=9),
        "gap_from": last_month + timedelta(days=11),
        "gap_to": last_month + timedelta(days=17),
    }
    with store.transaction(actor="demo") as conn:
        return conn.execute(_HISTORY, params).rowcount
