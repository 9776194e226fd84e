"""The embedded server: started on first use, shared by concurrent processes, stopped by the last."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from meterhub.embedded import EmbeddedPostgres

HOLDER = """
import json, sys
from pathlib import Path
from meterhub.embedded import EmbeddedPostgres
server = EmbeddedPostgres(Path(sys.argv[1]))
url = server.acquire()
print(json.dumps({"url": url, "server_pid": server.server_pid()}), flush=True)
sys.stdin.readline()
print(json.dumps({"stopped": server.release()}), flush=True)
"""


class Holder:
    """A separate process that holds the embedded server until told to let go."""

    def __init__(self, data_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def started(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"holder exited with {self.proc.wait()}"
        doc: dict[str, object] = json.loads(line)
        return doc

    def let_go(self) -> bool:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        doc = json.loads(self.proc.stdout.readline())
        assert self.proc.wait(30) == 0
        return bool(doc["stopped"])


def test_two_processes_starting_at_once_share_one_server_and_the_last_stops_it(tmp_path: Path) -> None:
    first, second = Holder(tmp_path), Holder(tmp_path)  # started together: they race for the lock
    a, b = first.started(), second.started()
    assert a["server_pid"] == b["server_pid"]
    server = EmbeddedPostgres(tmp_path)
    with psycopg.connect(str(a["url"])) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("meterhub",)
    assert first.let_go() is False  # the other still uses it
    assert server.is_running()
    assert second.let_go() is True
    assert not server.is_running()


def test_data_is_kept_between_runs(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path)
    url = server.acquire()
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")
    assert server.release() is True
    assert not server.is_running()
    again = EmbeddedPostgres(tmp_path)
    with psycopg.connect(again.acquire()) as conn:
        assert conn.execute("SELECT v FROM kept").fetchone() == ("still here",)
    again.release()


def test_a_killed_user_does_not_keep_the_server_up(tmp_path: Path) -> None:
    victim = Holder(tmp_path)
    victim.started()
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    survivor = EmbeddedPostgres(tmp_path)
    survivor.acquire()
    assert survivor.users() == {os.getpid()}  # the dead pid was pruned
    assert survivor.release() is True
    deadline = time.monotonic() + 10
    while survivor.is_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not survivor.is_running()


def test_cli_stops_the_server_when_it_exits(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERHUB_")}
    env["METERHUB_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "meterhub", "db", "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "applied 0001_core" in result.stdout
    assert not EmbeddedPostgres(tmp_path).is_running()
