"""The command line as a user runs it: separate processes, embedded defaults or a given database."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg

from meterhub import migrate


def meterhub(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METERHUB_")}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "meterhub", *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=300
    )


def test_db_commands_against_a_given_database(database_factory: Callable[[], str], tmp_path: Path) -> None:
    url = database_factory()
    env = {"METERHUB_DATABASE_URL": url}
    status = meterhub("db", "status", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    assert "pending" in status.stdout
    migrated = meterhub("db", "migrate", cwd=tmp_path, env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "applied 0002_reading (native)" in migrated.stdout
    assert "schema is up to date" in meterhub("db", "migrate", cwd=tmp_path, env=env).stdout
    assert "pending" not in meterhub("db", "status", cwd=tmp_path, env=env).stdout
    assert not (tmp_path / "var").exists()  # no embedded server was started
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migration").fetchone() == (len(migrate.discover()),)


def test_a_wrong_setting_stops_the_cli_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "meterhub.toml").write_text('[database]\npool_max = "lots"\n', encoding="utf-8")
    result = meterhub("db", "status", cwd=tmp_path)
    assert result.returncode == 2
    assert "database.pool_max" in result.stderr
    bad_env = meterhub("db", "status", cwd=tmp_path, env={"METERHUB_TIMEZONE": "Nowhere/Land"})
    assert bad_env.returncode == 2
    assert "timezone" in bad_env.stderr


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    result = meterhub(
        "db",
        "status",
        cwd=tmp_path,
        env={
            "METERHUB_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "METERHUB_DATABASE_CONNECT_TIMEOUT_S": "2",
        },
    )
    assert result.returncode != 0
    assert "cannot connect to PostgreSQL" in result.stderr


def test_first_administrator_from_the_command_line(database_factory: Callable[[], str], tmp_path: Path) -> None:
    from dashboards.security import verify_password

    env = {"METERHUB_DATABASE_URL": database_factory()}
    added = meterhub("user", "add", "chief", "--role", "admin", "--name", "Chief", "--password", "first-pass-1",
                     cwd=tmp_path, env=env)  # fmt: skip
    assert added.returncode == 0, added.stderr
    again = meterhub("user", "add", "chief", "--password", "first-pass-1", cwd=tmp_path, env=env)
    assert again.returncode == 1 and "taken" in again.stderr
    weak = meterhub("user", "add", "temp", "--password", "short", cwd=tmp_path, env=env)
    assert weak.returncode == 1 and "8 characters" in weak.stderr
    with psycopg.connect(env["METERHUB_DATABASE_URL"]) as conn:
        conn.execute("INSERT INTO login_attempt (username, ok) SELECT 'chief', false FROM generate_series(1, 9)")
        conn.commit()
    reset = meterhub("user", "password", "chief", "--password", "second-pass-2", cwd=tmp_path, env=env)
    assert reset.returncode == 0, reset.stderr
    listed = meterhub("user", "list", cwd=tmp_path, env=env)
    assert "chief" in listed.stdout and "admin" in listed.stdout
    with psycopg.connect(env["METERHUB_DATABASE_URL"]) as conn:
        stored = conn.execute("SELECT password_hash FROM staff_user WHERE username = 'chief'").fetchone()
        assert stored is not None and stored[0].startswith("$argon2id$")
        assert verify_password(stored[0], "second-pass-2")
        last = conn.execute("SELECT ok FROM login_attempt WHERE username = 'chief' ORDER BY id DESC LIMIT 1")
        assert last.fetchone() == (True,)  # the lockout is lifted
