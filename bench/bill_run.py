"""Bill run over a whole utility: approved readings in PostgreSQL → bills, lines and ledger charges committed.

    python bench/bill_run.py [--accounts 1000000] [--database-url postgresql://postgres@127.0.0.1:5432/test]

Creates a database of its own on that server (dropped at the end unless --keep), generates customers,
accounts, meters and one month of approved readings server-side with generate_series (a 3-tier annual
residential tariff with a household rule and a monthly meter rental; 5 % of the accounts with a commercial
quota, 一表多价), runs `billing.bill_run.run_bills` once (load / compute / write split as the run reports it)
and once more (idempotent re-run), and times the same pricing in pandas on the same loaded inputs.

The machine may be shared: the report gives the load average before and after the run, and the CPU seconds
the run took in this process (Python, polars) and in the database's server processes (PostgreSQL on this
host: read from /proc), which other work on the machine slows down less than it slows the wall clock.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import resource
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from billing.bill_run import run_bills
from meterhub.settings import load_settings
from meterhub.store import Store

PERIOD = "2024-03"
RESIDENTIAL = {
    "cycle": "calendar_year",
    "household": {"base_size": 4, "add_m3_per_person": "100"},
    "periods": [
        {
            "effective_from": "2020-01-01",
            "tiers": [{"upper_m3": "350", "price": "2.61"}, {"upper_m3": "500", "price": "3.03"}, {"price": "3.76"}],
            "fixed_charges": [{"code": "meter_rental", "amount_per_month": "2.00"}],
        }
    ],
}
COMMERCIAL = {"periods": [{"effective_from": "2020-01-01", "price": "3.50"}]}

SEED = """
SET session_replication_role = replica;
-- bulk seed above: no history triggers, no FK checks
INSERT INTO usage_type (code, name) VALUES ('RES', '居民'), ('COM', '商业');
INSERT INTO tariff (usage_type_id, definition) SELECT id, %(res)s FROM usage_type WHERE code = 'RES';
INSERT INTO tariff (usage_type_id, definition) SELECT id, %(com)s FROM usage_type WHERE code = 'COM';
INSERT INTO area (code, name) VALUES ('A1', 'Area');
INSERT INTO community (area_id, code, name) SELECT 1, 'C' || g, 'Estate ' || g FROM generate_series(1, 100) g;
INSERT INTO customer (customer_no, name, household_size)
    SELECT 'CU' || g, 'Customer ' || g, 1 + (g * 13) %% 7 FROM generate_series(1, %(n)s) g;
INSERT INTO account (account_no, customer_id, community_id, usage_type_id)
    SELECT lpad(g::text, 10, '0'), g, 1 + g %% 100, 1 FROM generate_series(1, %(n)s) g;
INSERT INTO meter (meter_no, driver_key, account_id, status)
    SELECT 'M' || g, 'native_json', g, 'installed' FROM generate_series(1, %(n)s) g;
INSERT INTO account_quota (account_id, usage_type_id, quota_m3)
    SELECT g, 2, 5 FROM generate_series(1, %(n)s, 20) g;
INSERT INTO billing_reading (account_id, meter_id, period, period_start, period_end, end_value, end_ts,
                             consumption_m3, kind, approved_by)
    SELECT g, g, %(period)s, date '2024-03-01', date '2024-04-01', 1000, timestamptz '2024-04-01',
           ((g::bigint * 7919) %% 600000)::numeric / 1000, 'automatic', 'bench'
      FROM generate_series(1, %(n)s) g;
SET session_replication_role = origin;
"""


def seed(store: Store, accounts: int) -> float:
    clock = time.perf_counter()
    with store.admin_connection() as conn:
        values = {"res": json.dumps(RESIDENTIAL), "com": json.dumps(COMMERCIAL), "n": accounts, "period": PERIOD}
        for statement in SEED.split(";\n"):
            if statement.strip():
                conn.execute(statement, values)
        conn.execute("ANALYZE")
    return time.perf_counter() - clock


def _copy_csv(conn: psycopg.Connection, query: str) -> io.BytesIO:
    buffer = io.BytesIO()
    with conn.cursor() as cursor, cursor.copy(f"COPY ({query}) TO STDOUT (FORMAT csv, HEADER)") as copy:
        for data in copy:
            buffer.write(data)
    buffer.seek(0)
    return buffer


def pandas_pricing(store: Store) -> tuple[float, float, int]:
    """The same load and pricing in pandas on integer litres and fen; returns (load s, compute s, total fen)."""
    clock = time.perf_counter()
    with store.connection() as conn:
        frame = pd.read_csv(
            _copy_csv(
                conn,
                "SELECT c.account_id, sum(c.consumption_m3) AS consumption_m3, "
                "min(cu.household_size) AS household_size "
                "FROM approved_consumption c JOIN account a ON a.id = c.account_id "
                f"JOIN customer cu ON cu.id = a.customer_id WHERE c.period = '{PERIOD}' GROUP BY 1",
            ),
            dtype={"consumption_m3": str},
        )
        quota = pd.read_csv(_copy_csv(conn, "SELECT account_id, quota_m3 FROM account_quota"), dtype={"quota_m3": str})
    loaded = time.perf_counter() - clock
    clock = time.perf_counter()

    def litres(text: pd.Series) -> pd.Series:  # exact: numeric(14,3) text has three decimals
        return text.str.replace(".", "", regex=False).astype(np.int64)

    frame["litres"] = litres(frame["consumption_m3"])
    quota["quota_l"] = litres(quota["quota_m3"])
    frame = frame.merge(quota[["account_id", "quota_l"]], on="account_id", how="left")
    frame["com_l"] = np.minimum(frame["quota_l"].fillna(0).astype(np.int64), frame["litres"])
    frame["res_l"] = frame["litres"] - frame["com_l"]
    extra = (frame["household_size"] - 4).clip(lower=0)
    offset = np.zeros(len(frame), dtype=np.int64)  # no earlier bills in the cycle
    bounds = [(-(10**15), 350_000, 26_100), (350_000, 500_000, 30_300), (500_000, 10**15, 37_600)]
    lines = []
    for tier, (low, high, price) in enumerate(bounds, start=1):
        lo = np.where(tier == 1, low, low + 100_000 * extra)
        hi = np.where(tier == len(bounds), high, high + 100_000 * extra)
        volume = np.clip(offset + frame["res_l"], lo, hi) - np.clip(offset, lo, hi)
        raw = volume * price
        fen = (raw // 100_000) + ((raw % 100_000) * 2 >= 100_000)
        lines.append(pd.DataFrame({"account_id": frame["account_id"], "tier": tier, "volume": volume, "fen": fen}))
    com_raw = frame["com_l"] * 35_000
    lines.append(
        pd.DataFrame(
            {
                "account_id": frame["account_id"],
                "tier": 0,
                "volume": frame["com_l"],
                "fen": (com_raw // 100_000) + ((com_raw % 100_000) * 2 >= 100_000),
            }
        )
    )
    lines.append(pd.DataFrame({"account_id": frame["account_id"], "tier": -1, "volume": 0, "fen": 200}))
    all_lines = pd.concat(lines, ignore_index=True)
    all_lines = all_lines[(all_lines["volume"] != 0) | (all_lines["tier"] == -1)]
    all_lines = all_lines.sort_values(["account_id", "tier"])
    all_lines["line_no"] = all_lines.groupby("account_id").cumcount() + 1
    totals = all_lines.groupby("account_id", sort=True)["fen"].sum()
    return loaded, time.perf_counter() - clock, int(totals.sum())


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_cpu(store: Store) -> dict[int, float]:
    """CPU seconds of each server process connected to the benchmark database (a server on this host)."""
    with store.connection() as conn:
        pids = [row[0] for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    seconds: dict[int, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args()

    params = psycopg.conninfo.conninfo_to_dict(args.database_url)
    name = f"meterhub_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg.conninfo.make_conninfo(**{**params, "dbname": "postgres"})  # type: ignore[arg-type]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(**{**params, "dbname": name})  # type: ignore[arg-type]
    try:
        store = Store(load_settings(None, database={"url": url, "pool_min": 1, "pool_max": 4}))
        with store:
            store.migrate()
            seeded = seed(store, args.accounts)
            pandas_load, pandas_compute, pandas_fen = pandas_pricing(store)
            load_before = os.getloadavg()
            server_before, python_before = server_cpu(store), process_cpu()
            clock = time.perf_counter()
            result = run_bills(store, PERIOD, actor="bench", issued_on=dt.date(2024, 4, 1))
            total = time.perf_counter() - clock
            python_cpu = process_cpu() - python_before
            server_after = server_cpu(store)
            postgres_cpu = sum(cpu - server_before.get(pid, 0.0) for pid, cpu in server_after.items())
            load_after = os.getloadavg()
            clock = time.perf_counter()
            again = run_bills(store, PERIOD, actor="bench", issued_on=dt.date(2024, 4, 1))
            rerun = time.perf_counter() - clock
            with store.connection() as conn:
                counts = conn.execute(
                    "SELECT (SELECT count(*) FROM bill), (SELECT count(*) FROM bill_line), "
                    "(SELECT count(*) FROM ledger_entry), (SELECT sum(amount) FROM bill)"
                ).fetchone()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            if not args.keep:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    assert counts is not None
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''} "
        f"python {platform.python_version()}",
        "accounts": args.accounts,
        "seed_s": round(seeded, 1),
        "bills": counts[0],
        "lines": counts[1],
        "ledger_entries": counts[2],
        "amount": str(counts[3]),
        "run_total_s": round(total, 2),
        **{f"run_{k}_s": round(v, 2) for k, v in result.seconds.items()},
        "run_cpu_python_s": round(python_cpu, 2),
        "run_cpu_postgres_s": round(postgres_cpu, 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "rerun_s": round(rerun, 2),
        "rerun_created": again.bills_created,
        "pandas_load_s": round(pandas_load, 2),
        "pandas_compute_s": round(pandas_compute, 2),
        "pandas_amount_matches": pandas_fen == int(result.amount * 100),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
