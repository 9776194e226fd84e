"""MQTT ingestion: a persistent QoS 1 session, decoding off the network thread, batches written in one
transaction each, and every message acknowledged to the broker only after its rows are committed.

Threads: paho's network thread only queues what arrives; a worker decodes and fills batches; a
flusher writes each batch and then acknowledges its messages in arrival order. While the store is
down the flusher retries the same batch, the worker stops taking batches, and the broker stops
sending once the receive window of unacknowledged messages is full: memory stays bounded and the
backlog waits at the broker.
"""

from __future__ import annotations

import logging
import queue
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from collector.batch import Batch, gather_batches
from collector.counters import Counters
from collector.meters import MeterDirectory
from collector.routes import Route, find_route
from collector.sink import BatchSink
from drivers.base import DecodeError, Uplink
from meterhub.broker import BrokerAddress
from meterhub.settings import CollectorSettings
from meterhub.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Inbound:
    topic: str
    payload: bytes
    received_at: datetime
    mid: int
    qos: int
    generation: int


class MqttIngest:
    def __init__(
        self,
        broker: BrokerAddress,
        settings: CollectorSettings,
        store: Store,
        routes: list[Route],
        counters: Counters | None = None,
        directory: MeterDirectory | None = None,
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.store = store
        self.routes = routes
        self.counters = counters or Counters()
        self.directory = directory or MeterDirectory(store, settings.unknown_meter == "auto_provision")
        self.sink = BatchSink(store, self.counters, self._redo, self._refused)
        self.mqtt5 = settings.protocol == "5" and broker.mqtt5
        self.generation = 0
        self.connected = threading.Event()  # connected and subscribed
        self._pending_subscriptions: set[int | None] = set()
        self._inbox: queue.Queue[Inbound | None] = queue.Queue()
        self._ready: queue.Queue[Batch | None] = queue.Queue(maxsize=2)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.on_uplink: Callable[[set[int]], None] | None = None  # the command dispatcher's receive-window hook
        # How each meter's uplinks arrived ("binary" or "hex" text, for drivers that tell): the encoding of
        # CJ/T 188 downlinks on routes with downlink_encoding = "auto".
        self.uplink_encodings: dict[int, str] = {}
        self.client = self._make_client()

    # -- life -------------------------------------------------------------------------------------
    def start(self) -> None:
        self.directory.load()
        self._threads = [
            threading.Thread(target=self._work, name="collector-decode", daemon=True),
            threading.Thread(target=self._flush_loop, name="collector-flush", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        properties = None
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.settings.session_expiry_s
            properties.ReceiveMaximum = self.settings.receive_maximum
        kwargs = {"clean_start": False, "properties": properties} if self.mqtt5 else {}
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=30, **kwargs)  # type: ignore[arg-type]
        self.client.loop_start()

    def stop(self, timeout: float = 30.0) -> None:
        """Commit and acknowledge what was taken in, then leave; the rest waits at the broker."""
        self._stopping.set()
        self._inbox.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self.client.disconnect()
        self.client.loop_stop()

    # -- MQTT -------------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        protocol = mqtt.MQTTv5 if self.mqtt5 else mqtt.MQTTv311
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.settings.client_id,
            protocol=protocol,
            clean_session=None if self.mqtt5 else False,
            manual_ack=True,
        )
        if self.broker.username:
            client.username_pw_set(self.broker.username, self.broker.password)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        return client

    def _on_socket_open(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the connection", extra={"reason": str(reason)})
            return
        if self.generation:
            self.counters.add(reconnects=1)
        self.generation += 1
        pending: set[int | None] = set()
        for route in self.routes:
            topic = route.filter
            if self.settings.share_group and self.mqtt5:
                topic = f"$share/{self.settings.share_group}/{topic}"
            if self.mqtt5:
                _, mid = client.subscribe(topic, options=SubscribeOptions(qos=1))
            else:
                _, mid = client.subscribe(topic, qos=1)
            pending.add(mid)
        self._pending_subscriptions = pending
        log.info(
            "connected to broker",
            extra={
                "broker": f"{self.broker.host}:{self.broker.port}",
                "session_present": getattr(flags, "session_present", None),
            },
        )

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: object, props: object) -> None:
        self._pending_subscriptions.discard(mid)
        if not self._pending_subscriptions:
            self.connected.set()  # subscribed to everything: nothing published from now on is missed

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        self.connected.clear()
        if not self._stopping.is_set():
            # Jitter, so that a fleet of collectors does not reconnect in lock-step.
            client.reconnect_delay_set(min_delay=random.randint(1, 3), max_delay=30)
            log.warning("lost the broker; reconnecting", extra={"reason": str(reason)})

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.counters.add(messages_received=1)
        self._inbox.put(
            Inbound(message.topic, bytes(message.payload), datetime.now(UTC), message.mid, message.qos, self.generation)
        )

    def _ack_for(self, item: Inbound) -> Callable[[], None] | None:
        if item.qos == 0:
            return None

        def ack() -> None:
            # A message from an earlier connection will be sent again by the broker; acknowledging
            # its old packet id on the new connection could acknowledge another message.
            if item.generation == self.generation:
                self.client.ack(item.mid, item.qos)

        return ack

    # -- decode -----------------------------------------------------------------------------------
    def _work(self) -> None:
        max_age = self.settings.batch_max_age_ms / 1000
        gather_batches(self._inbox, self._process, self._ready.put, self.settings.batch_max_readings, max_age)
        self._ready.put(None)

    def _process(self, item: Inbound, batch: Batch) -> None:
        ack = self._ack_for(item)
        route = find_route(self.routes, item.topic)
        source = "mqtt"
        if route is None:
            batch.add_rejected(
                item.payload,
                "no_route",
                "no driver is configured for this topic",
                source,
                item.topic,
                None,
                None,
                item.received_at,
                ack,
            )
            return
        try:
            decoded = route.driver.decode(Uplink(item.payload, item.received_at, item.topic, source))
        except DecodeError as exc:
            batch.add_rejected(
                item.payload, exc.reason, exc.message, source, item.topic, route.driver_key, None, item.received_at, ack
            )
            return
        except Exception as exc:  # a driver bug must not stop ingestion; keep the bytes to replay later
            log.exception("driver failed", extra={"driver": route.driver_key, "topic": item.topic})
            batch.add_rejected(
                item.payload,
                "driver_error",
                f"{type(exc).__name__}: {exc}",
                source,
                item.topic,
                route.driver_key,
                None,
                item.received_at,
                ack,
            )
            return
        identities = decoded.meter_nos
        meter_ids = self._resolve(route.driver_key, identities)
        unknown = sorted(identities - meter_ids.keys())
        if unknown:
            batch.add_rejected(
                item.payload,
                "unknown_meter",
                f"no meter {', '.join(unknown)}",
                source,
                item.topic,
                route.driver_key,
                ",".join(unknown)[:200],
                item.received_at,
                ack,
            )
            return
        batch.add_decoded(decoded, meter_ids, f"mqtt:{route.driver_key}", item.received_at, ack, route.driver)
        self.counters.add(readings_decoded=len(decoded.readings))
        uplink_encoding = getattr(route.driver, "uplink_encoding", None)
        if uplink_encoding is not None:
            encoding = uplink_encoding(item.payload)
            for meter_id in meter_ids.values():
                self.uplink_encodings[meter_id] = encoding
        reply_topic = route.reply_topic(item.topic)
        if decoded.response is not None and reply_topic:
            self.client.publish(reply_topic, decoded.response, qos=1)
        if self.on_uplink is not None and (decoded.readings or decoded.statuses):
            self.on_uplink(set(meter_ids.values()))

    def _resolve(self, driver_key: str, identities: set[str]) -> dict[str, int]:
        return self.sink.resolve(self.directory, driver_key, identities)

    # -- write ------------------------------------------------------------------------------------
    def _flush_loop(self) -> None:
        while True:
            batch = self._ready.get()
            if batch is None:
                return
            self.sink.commit(batch)

    def _redo(self, item: Inbound) -> Batch:
        single = Batch()
        self._process(item, single)
        return single

    def _refused(self, item: Inbound, reason: str) -> Batch:
        single = Batch()
        single.add_rejected(item.payload, "store_refused", reason, "mqtt", item.topic, None, None, item.received_at,
                            self._ack_for(item))  # fmt: skip
        return single
