"""A local MQTT broker for the demo and for tests: Mosquitto when installed, else the embedded amqtt.

The embedded broker speaks MQTT 3.1.1 only (no shared subscriptions); real deployments point
`mqtt.url` at Mosquitto, EMQX or HiveMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing answers on {host}:{port} after {timeout:.0f} s") from None
            time.sleep(0.05)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    mqtt5: bool = True  # False for brokers that speak only 3.1.1 (the embedded one)

    @property
    def url(self) -> str:
        auth = f"{self.username}:{self.password}@" if self.username else ""
        return f"mqtt://{auth}{self.host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "tcp"):
            raise ValueError(f"unsupported broker URL scheme {parts.scheme!r} (use mqtt://host:port)")
        return cls(parts.hostname or "127.0.0.1", parts.port or 1883, parts.username, parts.password)


@dataclass
class LocalBroker:
    """A broker this process started; stop() ends it."""

    address: BrokerAddress
    kind: str
    _stop: Any = field(repr=False)

    def stop(self) -> None:
        self._stop()


def start_mosquitto(port: int | None = None, workdir: Path | None = None, persistent: bool = False) -> LocalBroker:
    binary = shutil.which("mosquitto")
    if binary is None:
        raise FileNotFoundError("mosquitto is not installed")
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="meterhub-mosquitto-"))
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "max_queued_messages 1000000",  # a collector that is down must not lose its backlog
        "max_inflight_messages 1000",
        f"persistence {'true' if persistent else 'false'}",
        f"persistence_location {workdir}/",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # else it drops to 'mosquitto', who cannot write our persistence directory
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(workdir / "mosquitto.log", "ab") as log_file:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port)
    except TimeoutError:
        proc.kill()
        raise

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    return LocalBroker(BrokerAddress("127.0.0.1", port), "mosquitto", stop)


def start_embedded(port: int | None = None) -> LocalBroker:
    """amqtt in a thread of its own with its own event loop."""
    from amqtt.broker import Broker

    port = port or free_port()
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def run() -> None:
        broker = Broker(config, loop=loop)
        holder["broker"] = broker
        try:
            await broker.start()
        except Exception as exc:  # reported to the starting thread
            holder["error"] = exc
        started.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(run())
        if "error" not in holder:
            loop.run_forever()
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=serve, name="meterhub-broker", daemon=True)
    thread.start()
    started.wait(15)
    if "error" in holder:
        raise RuntimeError(f"embedded MQTT broker did not start: {holder['error']}")

    def stop() -> None:
        future = asyncio.run_coroutine_threadsafe(holder["broker"].shutdown(), loop)
        with contextlib.suppress(Exception):
            future.result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return LocalBroker(BrokerAddress("127.0.0.1", port, mqtt5=False), "embedded", stop)


def start_local_broker(prefer: str = "mosquitto", workdir: Path | None = None) -> LocalBroker:
    """Mosquitto on a free port if it is installed (and preferred), else the embedded broker."""
    if prefer == "mosquitto" and shutil.which("mosquitto"):
        return start_mosquitto(workdir=workdir)
    return start_embedded()
