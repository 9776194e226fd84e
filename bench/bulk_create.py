"""Benchmark: 批量建档 of `--rows` rows (customers, accounts and, for `--meter-share` of them, new meters installed
on them) from one .xlsx file, through `meterhub.bulk_create.create_from_file`: reading the file, checking it
as a whole against the database, and creating everything in one transaction (change history, account
actions, meter assignments and actions included). Also times a refused run: the same file with one bad row
at the end, which must create nothing.

Creates a database of its own on the given server (or an embedded one) and drops it at the end.

    python bench/bulk_create.py --database-url postgresql://postgres@127.0.0.1:5432/test --rows 10000
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scratch_db import scratch_database
from meterhub import bulk_create
from meterhub.bulk_create import BulkRejected
from meterhub.settings import load_settings
from meterhub.store import Store

TODAY = date(2026, 11, 20)


def rows(count: int, meter_share: float) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    every = max(1, round(1 / meter_share)) if meter_share > 0 else 0
    for n in range(1, count + 1):
        row: dict[str, object] = {
            "customer_name": f"住户{n}",
            "phone": f"139{n:08d}",
            "community": f"B-{n % 10:02d}",
            "address": f"{1 + n // 200}号楼 {1 + n % 4}单元 {n % 200:03d}",
            "usage_type": "RES",
            "opened_on": "2026-11-01",
            "card_no": f"IC{n:08d}",
        }
        if every and n % every == 0:
            row.update(meter_no=f"BM{n:08d}", model="BENCH/G2.5", install_date="2026-11-02", initial_reading="0")
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None, help="a server's maintenance database; default: embedded")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--meter-share", type=float, default=1.0, help="share of rows with a new meter (0..1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, scratch_database(args.database_url, Path(tmp)) as url:
        store = Store(load_settings(None, database={"url": url, "pool_min": 0, "pool_max": 4}, data_dir=Path(tmp)))
        store.open()
        try:
            store.migrate()
            with store.transaction(actor="bench") as conn:
                conn.execute("INSERT INTO area (code, name) VALUES ('B', 'Bench')")
                conn.execute(
                    "INSERT INTO community (area_id, code, name) SELECT a.id, 'B-' || lpad(g::text, 2, '0'), "
                    "'Estate ' || g FROM area a, generate_series(0, 9) g"
                )
                conn.execute("INSERT INTO usage_type (code, name) VALUES ('RES', '居民')")
                conn.execute("INSERT INTO manufacturer (code, name) VALUES ('BENCH', 'Bench meters')")
                conn.execute(
                    "INSERT INTO meter_model (manufacturer_id, name, driver_key, has_valve, prepaid_capable) "
                    "SELECT id, 'G2.5', 'native_json', true, true FROM manufacturer"
                )
            data = rows(args.rows, args.meter_share)
            started = time.perf_counter()
            good = bulk_create.workbook_bytes(data)
            bad = bulk_create.workbook_bytes([*data, {**data[0], "customer_name": "坏行", "usage_type": "NOPE"}])
            written = time.perf_counter() - started
            started = time.perf_counter()
            try:
                bulk_create.create_from_file(store, "bench", bad, today=TODAY)
                raise SystemExit("the file with a bad row was accepted")
            except BulkRejected as exc:
                refused = time.perf_counter() - started
                problems = len(exc.issues)
            started = time.perf_counter()
            result = bulk_create.create_from_file(store, "bench", good, today=TODAY)
            created = time.perf_counter() - started
            with store.connection() as conn:
                history = conn.execute("SELECT count(*) FROM change_history").fetchone()
        finally:
            store.close()
    print(f"machine: {platform.machine()} {platform.python_implementation()} {platform.python_version()}")
    print(f"file: {args.rows} rows, {len(good) / 1e6:.1f} MB, written in {written:.1f} s")
    print(f"refused (one bad row, {problems} problem(s) reported, nothing created): {refused:.1f} s")
    print(
        f"created {result.customers} customers, {result.accounts} accounts, {result.meters} meters "
        f"({history[0] if history else 0} change_history rows): {created:.1f} s "
        f"= {args.rows / created:,.0f} rows/s"
    )


if __name__ == "__main__":
    main()
