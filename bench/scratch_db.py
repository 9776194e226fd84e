"""A database of a benchmark's own: on the server it is given, or on an embedded one, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from meterhub.embedded import EmbeddedPostgres


@contextmanager
def scratch_database(server_url: str | None, workdir: Path) -> Iterator[str]:
    """Yield the URL of a new empty database; drop it (and stop an embedded server) on the way out."""
    server = None
    if not server_url:
        server = EmbeddedPostgres(workdir / "data")
        server.acquire()
        server_url = server.url("postgres")
    name = f"meterhub_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = psycopg.conninfo.conninfo_to_dict(server_url)
    params["dbname"] = name
    try:
        yield psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if server is not None:
            server.release()
