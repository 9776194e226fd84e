"""`meterhub collect`: one collector process — MQTT ingestion, metrics, heartbeat and store upkeep."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from datetime import UTC, datetime
from typing import Any

from collector.counters import Counters, PrometheusCollector
from collector.mqtt import MqttIngest
from collector.routes import build_routes
from meterhub.broker import BrokerAddress
from meterhub.settings import Settings
from meterhub.store import Store

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
MAINTENANCE_S = 3600.0


class CollectorService:
    def __init__(self, settings: Settings, store: Store, broker: BrokerAddress) -> None:
        self.settings = settings
        self.store = store
        self.counters = Counters()
        self.started_at = datetime.now(UTC)
        self.collector_id = f"{settings.collector.client_id}@{socket.gethostname()}:{os.getpid()}"
        self.ingest = MqttIngest(
            broker, settings.collector, store, build_routes(settings.collector.routes), self.counters
        )
        self._stop = threading.Event()
        self._metrics_server: Any = None
        self.poller: Any = None
        self.commands: Any = None

    def start(self) -> None:
        self.ingest.start()
        self._start_poller()
        self._start_commands()
        port = self.settings.collector.metrics_port
        if port:
            from prometheus_client import CollectorRegistry, start_http_server

            registry = CollectorRegistry()
            registry.register(PrometheusCollector(self.counters, self.collector_id))
            self._metrics_server, _ = start_http_server(
                port, addr=self.settings.collector.metrics_host, registry=registry
            )
            log.info("metrics on /metrics", extra={"port": port})
        threading.Thread(target=self._housekeeping, name="collector-housekeeping", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._stop_poller()
        self._stop_commands()
        self.ingest.stop()
        self._heartbeat(stopped=True)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()

    def _start_poller(self) -> None:
        """Poll the field buses of `[poller]` that this collector owns, into the same store and counters."""
        from collector.poll import start_poller

        self.poller = start_poller(self.settings.poller, self.store, self.counters)

    def _stop_poller(self) -> None:
        if self.poller is not None:
            self.poller.stop()

    def _start_commands(self) -> None:
        """The valve and credit command dispatcher, sending over this collector's MQTT session, and through
        its poller to the polled meters on the buses it owns."""
        if not self.settings.commands.enabled:
            return
        from collector.commands import CommandDispatcher

        client = self.ingest.client
        self.commands = CommandDispatcher(
            self.store,
            self.settings.commands,
            self.ingest.routes,
            lambda topic, payload: client.publish(topic, payload, qos=1),
            poller=self.poller,
            uplink_encodings=self.ingest.uplink_encodings,
        )
        self.ingest.on_uplink = self.commands.on_uplink
        self.commands.start()

    def _stop_commands(self) -> None:
        if self.commands is not None:
            self.commands.stop()

    def wait(self) -> None:
        self._stop.wait()

    def _housekeeping(self) -> None:
        last_maintenance = 0.0
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._heartbeat()
                now = datetime.now(UTC).timestamp()
                if now - last_maintenance > MAINTENANCE_S:
                    self.store.maintain()
                    last_maintenance = now
            except Exception as exc:  # the store may be down; ingestion handles that itself
                log.warning("heartbeat failed", extra={"error": str(exc)})

    def _heartbeat(self, stopped: bool = False) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                """INSERT INTO collector_status
                          (collector_id, host, pid, started_at, heartbeat_at, stopped_at, counters)
                   VALUES (%s, %s, %s, %s, now(), CASE WHEN %s THEN now() END, %s)
                   ON CONFLICT (collector_id) DO UPDATE SET heartbeat_at = now(), stopped_at = EXCLUDED.stopped_at,
                                                            counters = EXCLUDED.counters""",
                [
                    self.collector_id,
                    socket.gethostname(),
                    os.getpid(),
                    self.started_at,
                    stopped,
                    json.dumps(self.counters.snapshot()),
                ],
            )


def collector_status(store: Store) -> list[dict[str, Any]]:
    with store.connection() as conn:
        rows = conn.execute(
            """SELECT collector_id, started_at, heartbeat_at, stopped_at, counters,
                      now() - heartbeat_at < interval '15 seconds' AS alive
                 FROM collector_status ORDER BY started_at DESC"""
        ).fetchall()
    return [
        {
            "collector_id": r[0],
            "started_at": r[1],
            "heartbeat_at": r[2],
            "stopped_at": r[3],
            "counters": r[4],
            "alive": r[5] and r[3] is None,
        }
        for r in rows
    ]
