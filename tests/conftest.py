"""Fixtures for real services: PostgreSQL and an MQTT broker.

- PostgreSQL: the server at METERHUB_TEST_DATABASE_URL when set, else an embedded server started for
  the session. Either way the session gets a database of its own, migrated once and dropped at the
  end; each test that asks for `store` starts from empty tables.
- MQTT: the broker at METERHUB_TEST_MQTT_URL when set, else one started on a free port (Mosquitto
  when installed, else the embedded broker).
- METERHUB_REQUIRE_SERVICES=1 turns an unreachable external service into a failure, never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from meterhub.broker import BrokerAddress, start_local_broker, wait_for_port
from meterhub.embedded import EmbeddedPostgres
from meterhub.settings import Settings, load_settings
from meterhub.store import Store

REQUIRE_SERVICES = os.environ.get("METERHUB_REQUIRE_SERVICES") == "1"


def _unavailable(message: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(message + " (METERHUB_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session", autouse=True)
def _no_ambient_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never pick up a developer's METERHUB_* variables or ./meterhub.toml."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("METERHUB_")}
    for name in saved:
        if not name.startswith("METERHUB_TEST_") and name != "METERHUB_REQUIRE_SERVICES":
            del os.environ[name]
    empty = tmp_path_factory.mktemp("config") / "meterhub.toml"
    empty.write_text("", encoding="utf-8")
    os.environ["METERHUB_CONFIG"] = str(empty)
    yield
    os.environ.pop("METERHUB_CONFIG", None)
    os.environ.update(saved)


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL of a PostgreSQL server's maintenance database, on which tests may create databases."""
    external = os.environ.get("METERHUB_TEST_DATABASE_URL")
    if external:
        try:
            with psycopg.connect(external, connect_timeout=5):
                pass
        except psycopg.OperationalError as exc:
            _unavailable(f"PostgreSQL at METERHUB_TEST_DATABASE_URL does not answer: {exc}")
        yield external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("embedded-pg"))
    server.acquire()
    try:
        yield server.url("postgres")
    finally:
        server.release()


def _with_database(url: str, database: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = database
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def database_factory(postgres_server_url: str) -> Iterator[object]:
    """Creates empty databases on the test server and drops them all at the end of the session."""
    created: list[str] = []

    def create(prefix: str = "meterhub_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return _with_database(postgres_server_url, name)

    yield create
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def settings_for(url: str, tmp: Path | None = None, **overrides: object) -> Settings:
    extra: dict[str, object] = {"database": {"url": url, "pool_min": 0, "pool_max": 8}}
    if tmp is not None:
        extra["data_dir"] = tmp
    extra.update(overrides)
    return load_settings(None, **extra)


@pytest.fixture(scope="session")
def session_store(database_factory: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    url = database_factory()  # type: ignore[operator]
    store = Store(settings_for(url, tmp_path_factory.mktemp("data")))
    store.open()
    store.migrate()
    store.maintain()
    try:
        yield store
    finally:
        store.close()


_TRUNCATE = """
SELECT string_agg(format('%I', c.relname), ', ')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
   AND c.relname <> 'schema_migration'
"""


@pytest.fixture
def store(session_store: Store) -> Store:
    """The session's migrated store with every table emptied before the test."""
    with session_store.admin_connection() as conn:
        row = conn.execute(_TRUNCATE).fetchone()
        if row and row[0]:
            conn.execute(f"TRUNCATE {row[0]} RESTART IDENTITY CASCADE")
    return session_store


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerAddress]:
    external = os.environ.get("METERHUB_TEST_MQTT_URL")
    if external:
        address = BrokerAddress.parse(external)
        try:
            wait_for_port(address.host, address.port, timeout=5)
        except TimeoutError as exc:
            _unavailable(f"MQTT broker at METERHUB_TEST_MQTT_URL does not answer: {exc}")
        yield address
        return
    prefer = os.environ.get("METERHUB_TEST_BROKER", "mosquitto")  # "embedded": the amqtt broker
    broker = start_local_broker(prefer=prefer, workdir=tmp_path_factory.mktemp("mqtt"))
    try:
        yield broker.address
    finally:
        broker.stop()
