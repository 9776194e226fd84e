"""A bill run that fails or is killed halfway leaves nothing; a hypothesis run twice bills once."""

import datetime as dt
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import bill_run
from billing.bill_run import run_bills
from meterhub.store import Store
from tests.billing.store_helpers import account, approve, count, tiered, usage_type

ROOT = Path(__file__).resolve().parents[2]


def _seed(store: Store, accounts: int = 20) -> None:
    with store.transaction() as conn:
        usage_type(conn, "RES", tiered())
        for n in range(accounts):
            acc, meter = account(conn, f"{1000 + n}")
            approve(conn, acc, meter, "2024-01", f"{n + 1}.5")


def test_an_error_after_part_of_the_copy_leaves_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    _seed(store)
    original = bill_run.copy_rows

    def failing(conn: Any, table: str, columns: Any, data: Iterable[bytes]) -> None:
        if table == "ledger_entry":  # bills and lines are in, the ledger is half-sent

            def broken() -> Iterator[bytes]:
                yield next(iter(data))
                raise OSError("connection lost")

            original(conn, table, columns, broken())
        original(conn, table, columns, data)

    monkeypatch.setattr(bill_run, "copy_rows", failing)
    with pytest.raises(OSError, match="connection lost"):
        run_bills(store, "2024-01")
    assert (count(store, "bill"), count(store, "bill_line"), count(store, "ledger_entry")) == (0, 0, 0)
    with store.connection() as conn:
        assert conn.execute("SELECT status, error FROM bill_run").fetchall() == [("failed", "OSError: connection lost")]
    monkeypatch.setattr(bill_run, "copy_rows", original)
    assert run_bills(store, "2024-01").bills_created == 20


def test_a_run_killed_mid_write_leaves_nothing(store: Store) -> None:
    _seed(store)
    script = textwrap.dedent(
        f"""
        import sys, time
        from billing import bill_run
        from meterhub.settings import load_settings
        from meterhub.store import Store

        original = bill_run.copy_rows

        def slow(conn, table, columns, data):
            original(conn, table, columns, data)
            if table == "bill":
                print("bills written", flush=True)
                time.sleep(60)

        bill_run.copy_rows = slow
        with Store(load_settings(None, database={{"url": {store.url!r}, "pool_min": 0}})) as store:
            bill_run.run_bills(store, "2024-01")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "bills written"
        with store.connection() as conn:  # the bills are there, uncommitted: invisible
            assert conn.execute("SELECT count(*) FROM bill").fetchone() == (0,)
    finally:
        child.kill()
        child.wait(10)
    assert run_bills(store, "2024-01").bills_created == 20  # waits for the killed run's lock to go
    assert count(store, "bill") == 20 and count(store, "ledger_entry") == 20


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    volumes=st.lists(st.integers(min_value=0, max_value=900_000), min_size=1, max_size=6),
    scopes=st.lists(st.sampled_from(["all", "area:A1", "area:A2", "account:1000", "account:1001"]), min_size=1),
)
def test_a_bill_run_twice_bills_once(store: Store, volumes: list[int], scopes: list[str]) -> None:
    with store.admin_connection() as conn:
        conn.execute(
            "TRUNCATE bill_run, bill, bill_line, ledger_entry, billing_reading, meter, account, customer, "
            "community, area, tariff, usage_type RESTART IDENTITY CASCADE"
        )
    with store.transaction() as conn:
        usage_type(conn, "RES", tiered())
        for n, litres in enumerate(volumes):
            area = "A1" if n % 2 else "A2"
            acc, meter = account(conn, f"{1000 + n}", area=area, community=f"C{area}")
            approve(conn, acc, meter, "2024-01", str(litres / 1000))
    results = [run_bills(store, "2024-01", scope, issued_on=dt.date(2024, 2, 1)) for scope in [*scopes, "all", "all"]]
    assert sum(r.bills_created for r in results) == len(volumes) == count(store, "bill")
    assert results[-1].bills_created == 0 and results[-1].amount == results[-2].amount
    with store.connection() as conn:
        row = conn.execute(
            "SELECT (SELECT coalesce(sum(amount), 0) FROM bill), (SELECT coalesce(sum(amount), 0) FROM bill_line), "
            "(SELECT coalesce(sum(amount), 0) FROM ledger_entry)"
        ).fetchone()
    assert row is not None and row[0] == row[1] == row[2] == results[-1].amount
