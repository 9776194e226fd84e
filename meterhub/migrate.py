"""Versioned SQL migrations: applied in order, each in its own transaction, recorded in a table.

Files live in meterhub/migrations as `NNNN_name.sql`, or as variants `NNNN_name.native.sql` and
`NNNN_name.timescale.sql` when TimescaleDB changes the schema; the variant is chosen once, when the
migration is applied, and recorded. `{{timezone}}` in a file is replaced by the configured zone.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Literal

import psycopg

Variant = Literal["", "native", "timescale"]
_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<variant>native|timescale))?\.sql$")
_LOCK_KEY = 0x6D65746572  # advisory lock held while migrating: two starts never migrate at once


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    variants: dict[str, str]  # variant -> SQL text

    def sql(self, variant: str, timezone: str) -> str:
        return self.variants[variant].replace("{{timezone}}", timezone.replace("'", "''"))

    def checksum(self, variant: str) -> str:
        return hashlib.sha256(self.variants[variant].encode()).hexdigest()


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    variant: str | None
    applied_at: datetime | None
    changed: bool  # the file differs from what was applied


def discover() -> list[Migration]:
    found: dict[int, Migration] = {}
    for entry in resources.files("meterhub").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if not match:
            continue
        version = int(match["version"])
        migration = found.setdefault(version, Migration(version, match["name"], {}))
        if migration.name != match["name"]:
            raise MigrationError(f"two migrations numbered {version:04d}: {migration.name}, {match['name']}")
        migration.variants[match["variant"] or ""] = entry.read_text(encoding="utf-8")
    return [found[v] for v in sorted(found)]


def _ensure_table(conn: psycopg.Connection) -> None:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migration (
               version    integer PRIMARY KEY,
               name       text NOT NULL,
               variant    text NOT NULL DEFAULT '',
               checksum   text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now()
           )"""
    )


def _applied(conn: psycopg.Connection) -> dict[int, tuple[str, str, datetime]]:
    rows = conn.execute("SELECT version, variant, checksum, applied_at FROM schema_migration").fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def timescale_available(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    return row is not None


def _choose_variant(migration: Migration, timescale: bool) -> str:
    if "" in migration.variants:
        return ""
    wanted = "timescale" if timescale else "native"
    if wanted not in migration.variants:
        raise MigrationError(f"migration {migration.version:04d} has no {wanted} variant")
    return wanted


def migrate(conn: psycopg.Connection, timezone: str, timescale: Literal["auto", "on", "off"] = "auto") -> list[str]:
    """Apply every pending migration. Returns the names applied (empty when up to date)."""
    if not conn.autocommit:
        raise MigrationError("migrate() needs an autocommit connection: each migration is its own transaction")
    use_timescale = timescale == "on" or (timescale == "auto" and timescale_available(conn))
    if timescale == "on" and not timescale_available(conn):
        raise MigrationError("database.timescale = 'on' but the timescaledb extension is not available")
    conn.execute("SELECT pg_advisory_lock(%s)", [_LOCK_KEY])
    try:
        _ensure_table(conn)
        applied = _applied(conn)
        _check_unchanged(discover(), applied)
        done = []
        for migration in discover():
            if migration.version in applied:
                continue
            variant = _choose_variant(migration, use_timescale)
            with conn.transaction():
                conn.execute(migration.sql(variant, timezone).encode())
                conn.execute(
                    "INSERT INTO schema_migration (version, name, variant, checksum) VALUES (%s, %s, %s, %s)",
                    [migration.version, migration.name, variant, migration.checksum(variant)],
                )
            done.append(f"{migration.version:04d}_{migration.name}" + (f" ({variant})" if variant else ""))
        return done
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])


def _check_unchanged(migrations: list[Migration], applied: dict[int, tuple[str, str, datetime]]) -> None:
    for migration in migrations:
        if migration.version in applied:
            variant, checksum, _ = applied[migration.version]
            if variant in migration.variants and migration.checksum(variant) != checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} was changed after it was applied; "
                    "add a new migration instead of editing an applied one"
                )


def status(conn: psycopg.Connection) -> list[MigrationStatus]:
    exists = conn.execute("SELECT to_regclass('schema_migration') IS NOT NULL").fetchone()
    applied = _applied(conn) if exists and exists[0] else {}
    result = []
    for migration in discover():
        if migration.version in applied:
            variant, checksum, applied_at = applied[migration.version]
            changed = variant in migration.variants and migration.checksum(variant) != checksum
            result.append(MigrationStatus(migration.version, migration.name, variant, applied_at, changed))
        else:
            result.append(MigrationStatus(migration.version, migration.name, None, None, False))
    return result
