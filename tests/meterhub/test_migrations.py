import threading
from collections.abc import Callable
from pathlib import Path

import pglast
import psycopg
import pytest

from meterhub import migrate
from meterhub.store import Store
from tests.conftest import settings_for

# Every migration's name as migrate() reports it on plain PostgreSQL.
ALL_NATIVE = [f"{m.version:04d}_{m.name}" + (" (native)" if "native" in m.variants else "") for m in migrate.discover()]
EXPECTED_TABLES = {
    "area",
    "community",
    "usage_type",
    "manufacturer",
    "meter_model",
    "customer",
    "account",
    "meter",
    "staff_user",
    "change_history",
    "meter_event",
    "rejected_frame",
    "reading",
    "schema_migration",
}


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "UNION SELECT relname FROM pg_class WHERE relkind = 'p'"
        ).fetchall()
    return {r[0] for r in rows}


def test_migrate_from_empty_then_rerun_is_a_noop(database_factory: Callable[[], str], tmp_path: Path) -> None:
    url = database_factory()
    with Store(settings_for(url, tmp_path)) as store:
        assert store.migrate() == ALL_NATIVE
        assert tables(url) >= EXPECTED_TABLES
        assert store.migrate() == []
        states = store.migration_status()
        assert [(s.version, s.variant, s.changed) for s in states] == [
            (m.version, "native" if "native" in m.variants else "", False) for m in migrate.discover()
        ]
        assert all(s.applied_at is not None for s in states)


def test_concurrent_migrations_apply_once(database_factory: Callable[[], str], tmp_path: Path) -> None:
    url = database_factory()
    results: list[list[str]] = []

    def run() -> None:
        with Store(settings_for(url, tmp_path)) as store:
            results.append(store.migrate())

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    applied = [name for result in results for name in result]
    assert sorted(applied) == ALL_NATIVE


def test_failed_migration_leaves_nothing_half_applied(database_factory: Callable[[], str]) -> None:
    url = database_factory()
    broken = migrate.Migration(1, "broken", {"": "CREATE TABLE half (id int); SELECT no_such_function();"})
    with psycopg.connect(url, autocommit=True) as conn:
        original = migrate.discover
        migrate.discover = lambda: [broken]  # type: ignore[assignment]
        try:
            with pytest.raises(psycopg.errors.UndefinedFunction):
                migrate.migrate(conn, "UTC")
        finally:
            migrate.discover = original  # type: ignore[assignment]
        assert conn.execute("SELECT to_regclass('half')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM schema_migration").fetchone() == (0,)


def test_an_edited_applied_migration_is_refused(database_factory: Callable[[], str], tmp_path: Path) -> None:
    url = database_factory()
    with Store(settings_for(url, tmp_path)) as store:
        store.migrate()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE schema_migration SET checksum = 'x' WHERE version = 1")
        with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
            store.migrate()
        assert store.migration_status()[0].changed


def test_timescale_forced_on_without_the_extension_fails_clearly(
    database_factory: Callable[[], str], tmp_path: Path
) -> None:
    url = database_factory()
    with psycopg.connect(url, autocommit=True) as conn:
        if migrate.timescale_available(conn):
            pytest.skip("this server has TimescaleDB")
        with pytest.raises(migrate.MigrationError, match="timescaledb extension is not available"):
            migrate.migrate(conn, "UTC", timescale="on")


@pytest.mark.parametrize("migration", migrate.discover(), ids=lambda m: f"{m.version:04d}_{m.name}")
def test_every_migration_variant_parses(migration: migrate.Migration) -> None:
    for variant in migration.variants:
        statements = pglast.parse_sql(migration.sql(variant, "Asia/Shanghai"))
        assert len(statements) > 0


def test_timescale_variant_makes_a_hypertable_with_compression_and_aggregate() -> None:
    (reading,) = [m for m in migrate.discover() if m.name == "reading"]
    sql = reading.sql("timescale", "Asia/Shanghai")
    calls = {
        node.funcname[-1].sval
        for stmt in pglast.parse_sql(sql)
        for node in _walk(stmt)
        if isinstance(node, pglast.ast.FuncCall)
    }
    assert {"create_hypertable", "add_compression_policy", "add_continuous_aggregate_policy", "time_bucket"} <= calls
    assert "timescaledb.continuous" in sql


def _walk(node: object) -> list[object]:
    found = [node]
    if isinstance(node, pglast.ast.Node):
        for name in node.__slots__:
            found.extend(_walk(getattr(node, name)))
    elif isinstance(node, tuple | list):
        for item in node:
            found.extend(_walk(item))
    return found
