"""The store: a pooled connection to PostgreSQL, embedded or external, and its upkeep."""

from __future__ import annotations

import atexit
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from meterhub import migrate as migrations
from meterhub.embedded import EmbeddedPostgres
from meterhub.settings import Settings

log = logging.getLogger(__name__)

MIN_SERVER_VERSION = 140000


class StoreError(RuntimeError):
    pass


class Store:
    """Owns the database for one process. Use as a context manager or call open()/close()."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: EmbeddedPostgres | None = None
        self.url = settings.database.url or ""
        self._pool: ConnectionPool | None = None

    # -- life -------------------------------------------------------------------------------------
    def open(self) -> Store:
        if self._pool is not None:
            return self
        if not self.url:
            self.embedded = EmbeddedPostgres(self.settings.data_dir)
            self.url = self.embedded.acquire()
            atexit.register(self.close)
        self._check_server()
        db = self.settings.database
        self._pool = ConnectionPool(
            self.url,
            min_size=db.pool_min,
            max_size=db.pool_max,
            kwargs={"connect_timeout": int(db.connect_timeout_s)},
            name="meterhub",
            open=False,
        )
        self._pool.open(wait=db.pool_min > 0, timeout=db.connect_timeout_s)
        return self

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self.embedded is not None:
            self.embedded.release()

    def __enter__(self) -> Store:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_server(self) -> None:
        try:
            with psycopg.connect(self.url, connect_timeout=int(self.settings.database.connect_timeout_s)) as conn:
                version = conn.info.server_version
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self.describe()}: {exc}") from exc
        if version < MIN_SERVER_VERSION:
            raise StoreError(f"PostgreSQL {version // 10000} at {self.describe()} is too old; meterhub needs ≥ 14")

    def describe(self) -> str:
        """Where the data lives, without a password."""
        if self.embedded is not None:
            return f"embedded PostgreSQL, data in {self.embedded.pgdata}"
        info = psycopg.conninfo.conninfo_to_dict(self.url)
        host = info.get("host") or "localhost"
        return f"PostgreSQL {info.get('user', '')}@{host}:{info.get('port', 5432)}/{info.get('dbname', '')}"

    # -- connections ------------------------------------------------------------------------------
    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise StoreError("the store is not open")
        return self._pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self.pool.connection() as conn:
            yield conn

    @contextmanager
    def transaction(self, actor: str | None = None) -> Iterator[psycopg.Connection[Any]]:
        """One transaction. `actor` names the person behind the change in the change history."""
        with self.pool.connection() as conn, conn.transaction():
            if actor:
                conn.execute("SELECT set_config('meterhub.actor', %s, true)", [actor])
            yield conn

    def admin_connection(self) -> psycopg.Connection[Any]:
        """A dedicated autocommit connection (migrations, maintenance)."""
        return psycopg.connect(self.url, autocommit=True)

    # -- schema and upkeep ------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        with self.admin_connection() as conn:
            return migrations.migrate(conn, self.settings.timezone, self.settings.database.timescale)

    def migration_status(self) -> list[migrations.MigrationStatus]:
        with self.admin_connection() as conn:
            return migrations.status(conn)

    def maintain(self, now: datetime | None = None) -> dict[str, int]:
        """Keep reading partitions ready ahead and refresh the daily view. Safe to run any time."""
        now = now or datetime.now(UTC)
        ahead = now + timedelta(days=31 * self.settings.database.partitions_ahead_months)
        with self.admin_connection() as conn:
            created = conn.execute(
                "SELECT meterhub_ensure_reading_partitions(%s, %s)", [now - timedelta(days=31), ahead]
            ).fetchone()
            orphans = conn.execute("SELECT month FROM meterhub_orphan_reading_months()").fetchall()
            for (month,) in orphans:  # data arrived for months nobody prepared: give them partitions
                conn.execute("SELECT meterhub_ensure_reading_partitions(%s, %s)", [month, month])
            refreshed = self.refresh_daily(conn)
        return {"partitions_created": (created[0] if created else 0) + len(orphans), "daily_refreshed": refreshed}

    @staticmethod
    def refresh_daily(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            "SELECT relispopulated FROM pg_class WHERE oid = to_regclass('reading_daily') AND relkind = 'm'"
        ).fetchone()
        if row is None:  # TimescaleDB: a continuous aggregate with its own refresh policy
            return 0
        concurrently = "CONCURRENTLY " if row[0] else ""
        conn.execute(f"REFRESH MATERIALIZED VIEW {concurrently}reading_daily")
        return 1
