"""Benchmark: validate a month of daily readings and compute consumption, from the database and back.

Creates a database of its own on the given server, generates `--meters` meters with accounts and `--days`
daily register readings each (server-side, `INSERT … SELECT generate_series`) for April 2024 — with a few
faults: 1 % of meters with a spike, 0.1 % rolling over, 0.2 % with a gap of 5 days — then runs
`validate_period` (load → compute → estimate → write) and, as the reference, the pure compute on the
frames already in memory. Drops the database at the end unless `--keep`; `--database NAME` reuses one kept
earlier (no generation), and `--repeat N` runs it all N times (the run's own rows emptied in between), for
measuring on a shared machine.

    python bench/validate.py --database-url postgresql://postgres@127.0.0.1:5432/test --meters 1000000
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
import uuid
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from billing.review_run import DEFAULT_RULES, compute_review, load_period, validate_period
from meterhub.settings import load_settings
from meterhub.store import Store

PERIOD = "2024-04"
START = "2024-04-01 00:00:00+08"  # local midnight, Asia/Shanghai
NOW = datetime(2024, 5, 2, tzinfo=UTC)

MASTER = """
SET session_replication_role = replica;  -- no history triggers or FK checks while generating
INSERT INTO area (code, name) VALUES ('BENCH', 'Bench area');
INSERT INTO community (area_id, code, name) SELECT id, 'BENCH-1', 'Bench estate' FROM area;
INSERT INTO usage_type (code, name) VALUES ('RES', 'Residential');
INSERT INTO customer (customer_no, name) SELECT 'C' || g, 'Customer ' || g FROM generate_series(1, {n}) g;
INSERT INTO account (account_no, customer_id, community_id, usage_type_id)
SELECT 'A' || g, g, 1, 1 FROM generate_series(1, {n}) g;
INSERT INTO meter (meter_no, driver_key, account_id, usage_type_id, status, register_max)
SELECT 'M' || g, 'native_json', g, 1, 'installed', 99999.999 FROM generate_series(1, {n}) g;
"""

# value(m, d) = base + d × rate + noise (monotone: rate ≥ 0.5, noise < 0.1), with the faults above.
READINGS = """
SET session_replication_role = replica;
INSERT INTO reading (meter_id, channel, ts, value, source)
SELECT m, 'volume_m3', {start}::timestamptz + d * interval '1 day',
       mod(CASE WHEN m % 1000 = 1 THEN 99990 ELSE 1000 END
           + d * (0.5 + (m % 40) * 0.1) + ((m * 31 + d * 17) % 11) * 0.009
           + CASE WHEN m % 100 = 0 AND d >= 20 THEN 50 ELSE 0 END, 100000)::numeric(14, 3),
       'bench'
  FROM generate_series({lo}, {hi}) m, generate_series(0, {last_day}) d
 WHERE NOT (m % 500 = 2 AND d BETWEEN 10 AND 14)
"""


def with_database(url: str, name: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def generate(url: str, meters: int, days: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL(MASTER.format(n=meters)))  # type: ignore[arg-type]
        conn.execute("SELECT meterhub_ensure_reading_partitions('2024-03-01', '2024-05-31')")

    # Two halves in parallel: one per core.
    def part(lo: int, hi: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            query = READINGS.format(start=f"'{START}'", lo=lo, hi=hi, last_day=days - 1)
            conn.execute(sql.SQL(query))  # type: ignore[arg-type]

    half = meters // 2
    threads = [threading.Thread(target=part, args=r) for r in ((1, half), (half + 1, meters))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE reading")
        conn.execute("ANALYZE")
    return time.perf_counter() - started


def run(store: Store, url: str, workers: int) -> None:
    """One validation run from an empty queue, then the pure compute on the frames in memory."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE reading_review_log, reading_review, reading_flag, validation_run")
    load = os.getloadavg()[0]
    result = validate_period(store, PERIOD, actor="bench", now=NOW, workers=workers)
    t = result.timings
    total = sum(t.values())
    print(
        f"end to end {total:.1f} s: load {t['load']:.1f} s, compute {t['compute']:.1f} s, "
        f"estimate {t['estimate']:.1f} s, write {t['write']:.1f} s (load average before {load:.2f})"
    )
    print(
        f"  {result.readings:,} readings, {result.meters:,} queue rows, {result.flags:,} flags {result.flags_by_rule}"
    )
    data = load_period(store, PERIOD, DEFAULT_RULES, workers=workers)
    started = time.perf_counter()
    compute_review(data.readings, data.meters, data.assignments, data.span, DEFAULT_RULES, NOW, data.valve_states)
    print(f"pure compute (reference, frames in memory): {time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--meters", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2, help="connections reading in parallel")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--database", help="reuse this database, kept by an earlier --keep run (not dropped)")
    parser.add_argument("--repeat", type=int, default=1, help="run validation and the reference this many times")
    args = parser.parse_args()

    name = args.database or f"meterhub_bench_{uuid.uuid4().hex[:8]}"
    if not args.database:
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(args.database_url, name)
    try:
        settings = load_settings(None, database={"url": url, "pool_min": 0, "pool_max": 4, "timescale": "off"})
        with Store(settings) as store:
            store.migrate()
            if not args.database:
                generated = generate(url, args.meters, args.days)
                print(f"generated {args.meters:,} meters × {args.days} readings in {generated:.1f} s")
            for _ in range(args.repeat):
                run(store, url, args.workers)
            print(f"machine: {platform.machine()}, {platform.processor() or platform.platform()}")
            if args.keep:
                print(f"kept database {name}")
    finally:
        if not args.keep and not args.database:
            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
