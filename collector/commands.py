"""The command dispatcher: sends queued `meter_command` rows through the meter's driver and transport,
and follows each to a final state.

- Woken by NOTIFY on `meter_command` and by a periodic sweep; claims with SKIP LOCKED, so several
  collectors can run it. At most one command per meter is in flight (a unique index says so).
- A row is marked `sent` and committed before the bytes go out: a crash in between leaves a command
  that times out, is read back and only then sent again.
- Replies are recorded by the batch writer in the same transaction as the rest of the message
  (`record_replies`), so a reply is never acknowledged to the broker before it is stored.
- A timeout never re-sends: the command becomes `unknown`, the meter's state is read (a read command,
  or the sleepy meter's next uplink), and the command is reconciled to what the meter really did.
- Sleepy meters get their command right after their next uplink, in their receive window.
- Polled meters (Modbus) are commanded by the poller that owns their bus, between two polls: it writes
  the profile's valve coil or register once and reads the valve state back; its outcome reaches the store
  as replies in the poller's batches, and the same rules hold (a write without an answer is not repeated:
  the command times out, the state is read back and the command is reconciled).
- A reply without a correlation id (CJ/T 188) counts only when the driver says it answers the frame we
  sent (address, control code, DI, SER) or its read-back; any other reply is logged and ignored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from collector.routes import Route
from drivers.base import Capability, Command, CommandKind, UnsupportedCommand
from meterhub.command_settings import CommandSettings
from meterhub.store import Store

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], object]
Delivery = Callable[[], object]  # what goes out once the transaction that marked the command sent commits
AWAKE_S = 20.0  # how long after an uplink a sleepy meter is taken to be listening
EXPECTED_VALVE = {"valve_close": ("closed",), "valve_arm": ("armed", "open"), "valve_open": ("open",)}
POLLED_DRIVERS = ("modbus", "cjt188", "mbus")  # meters of these drivers may sit on a field bus


class PolledCommands(Protocol):
    """The poller's side: commands for the meters on the buses it owns (collector.poll.Poller)."""

    @property
    def meter_nos(self) -> Collection[str]: ...

    def owns(self, meter_no: str) -> bool: ...

    def command_driver(self, meter_no: str) -> Any | None:
        """The driver whose capabilities and encoding apply to this polled meter; None when it cannot be commanded."""
        ...

    def address_of(self, meter_no: str) -> str:
        """The meter's address on its bus."""
        ...

    def driver_of_key(self, driver_key: str) -> Any | None:
        """A command driver of the poller's meters of one protocol; None when it has none."""
        ...

    def submit(self, command: Command) -> bool: ...


@dataclass(frozen=True, slots=True)
class Transport:
    route: Route

    def topic(self, meter_no: str, address: str) -> str | None:
        driver: Any = self.route.driver
        if hasattr(driver, "downlink_topic"):
            return str(driver.downlink_topic(meter_no))
        if self.route.response_topic:  # a DTU tunnelling frames: its down topic, {1} = the meter's DTU id
            return self.route.response_topic.format("", meter_no)
        return None

    def payload(self, command: Command, uplink_encoding: str | None) -> bytes:
        """The command as it goes on the wire: the driver's bytes, in the route's downlink encoding."""
        driver: Any = self.route.driver
        data: bytes = driver.encode(command)
        if hasattr(driver, "downlink"):  # CJ/T 188 DTUs: binary or hex text, per route or as the meter's uplinks
            data = driver.downlink(data, uplink_encoding)
        return data


class CommandDispatcher:
    def __init__(
        self,
        store: Store,
        settings: CommandSettings,
        routes: list[Route],
        publish: Publish,
        *,
        poller: PolledCommands | None = None,
        uplink_encodings: Mapping[int, str] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.publish = publish
        self.poller = poller
        self.uplink_encodings: Mapping[int, str] = uplink_encodings if uplink_encodings is not None else {}
        self.transports: dict[str, Transport] = {}
        for route in routes:  # the first route of each driver carries its commands
            self.transports.setdefault(route.driver_key, Transport(route))
        self.sent = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._awake: dict[int, float] = {}
        self._sleepy_waiting: set[int] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._last_prepaid = 0.0

    # -- life -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._listen, name="commands-listen", daemon=True),
            threading.Thread(target=self._loop, name="commands-dispatch", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def on_uplink(self, meter_ids: set[int]) -> None:
        """Called by ingestion for each uplink: a sleepy meter with a command waiting is listening now."""
        with self._lock:
            waiting = meter_ids & self._sleepy_waiting
            now = time.monotonic()
            for meter_id in waiting:
                self._awake[meter_id] = now
        if waiting:
            self._wake.set()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.store.url, autocommit=True) as conn:
                    conn.execute("LISTEN meter_command")
                    self._wake.set()  # whatever was queued while we were not listening
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=1.0):
                            if not notify.payload.endswith(":sent"):
                                self._wake.set()
            except Exception as exc:
                log.warning("command listener lost the store; retrying", extra={"error": str(exc)})
                self._stop.wait(2.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.sweep_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception as exc:
                log.warning("command round failed; retrying", extra={"error": str(exc)})
                self._stop.wait(1.0)

    def run_once(self) -> int:
        """One round: send what is queued, handle timeouts, reconcile unknowns. Returns commands sent."""
        sent = 0
        while True:
            count, more = self._send_queued()
            sent += count
            if not more:
                break
        self._timeouts()
        self._reconcile()
        if time.monotonic() - self._last_prepaid >= self.settings.prepaid_sweep_s:
            self._last_prepaid = time.monotonic()
            from meterhub.prepaid import check_accounts

            check_accounts(self.store, self.settings)
        return sent

    # -- sending ----------------------------------------------------------------------------------
    def _awake_now(self) -> list[int]:
        now = time.monotonic()
        with self._lock:
            self._awake = {m: t for m, t in self._awake.items() if now - t < AWAKE_S}
            return list(self._awake)

    def _send_queued(self) -> tuple[int, bool]:
        awake = self._awake_now()
        outbox: list[Delivery] = []
        with self.store.transaction(actor="collector") as conn:
            # Meters on a field bus that no poller of this collector owns are left to the collector that
            # owns their bus; a command nobody claims within read_timeout_s fails (see _prepare).
            rows = (
                conn.cursor(row_factory=dict_row)
                .execute(
                    """SELECT c.id, c.meter_id, c.kind, c.correlation_id, c.amount, c.purchase_seq, m.meter_no,
                              m.driver_key, m.protocol_address, m.sleepy
                         FROM meter_command c JOIN meter m ON m.id = c.meter_id
                        WHERE c.state = 'queued'
                          AND NOT EXISTS (SELECT 1 FROM meter_command o
                                           WHERE o.meter_id = c.meter_id AND o.state IN ('sent', 'unknown'))
                          AND (NOT m.sleepy OR c.meter_id = ANY(%(awake)s))
                          AND (m.meter_no = ANY(%(owned)s) OR m.driver_key = ANY(%(routed)s)
                               OR m.driver_key <> ALL(%(polled)s)
                               OR c.queued_at < now() - make_interval(secs => %(stale)s))
                        ORDER BY c.id LIMIT %(batch)s FOR UPDATE OF c SKIP LOCKED""",
                    {
                        "awake": awake,
                        "owned": self._owned(),
                        "routed": list(self.transports),
                        "polled": list(POLLED_DRIVERS),
                        "stale": self.settings.read_timeout_s,
                        "batch": self.settings.batch,
                    },
                )
                .fetchall()
            )
            seen: set[int] = set()
            for row in rows:
                if row["meter_id"] in seen:
                    continue  # one at a time per meter; the next goes when this one is final
                seen.add(row["meter_id"])
                outbox.extend(self._prepare(conn, row))
            self._refresh_sleepy(conn)
        for deliver in outbox:
            deliver()
        self.sent += len(outbox)
        return len(outbox), len(rows) >= self.settings.batch

    def _owned(self) -> list[str]:
        return sorted(self.poller.meter_nos) if self.poller is not None else []

    def _polled(self, meter_no: str) -> bool:
        return self.poller is not None and self.poller.owns(meter_no)

    def _prepare(self, conn: psycopg.Connection[Any], row: dict[str, Any]) -> list[Delivery]:
        if self._polled(row["meter_no"]):
            return self._prepare_polled(conn, row)
        transport = self.transports.get(row["driver_key"])
        if transport is None:
            reason = "no_poller" if row["driver_key"] in POLLED_DRIVERS else "no_transport"
            self._finish(conn, row["id"], "failed", reason)
            return []
        driver = transport.route.driver
        kind = _wire_kind(row["kind"], driver.capabilities)
        if kind is None:
            self._finish(conn, row["id"], "failed", "unsupported")
            return []
        command = Command(
            kind, row["meter_no"], row["protocol_address"], row["correlation_id"], row["amount"], row["purchase_seq"]
        )
        topic = transport.topic(row["meter_no"], row["protocol_address"])
        try:
            payload = transport.payload(command, self.uplink_encodings.get(row["meter_id"]))
        except (UnsupportedCommand, ValueError) as exc:
            self._finish(conn, row["id"], "failed", "unsupported", {"error": str(exc)})
            return []
        if topic is None:
            self._finish(conn, row["id"], "failed", "no_transport")
            return []
        self._mark_sent(conn, row, kind)
        return [lambda: self.publish(topic, payload)]

    def _prepare_polled(self, conn: psycopg.Connection[Any], row: dict[str, Any]) -> list[Delivery]:
        """A meter on a bus this collector polls: its poller sends the command between two polls."""
        assert self.poller is not None
        driver = self.poller.command_driver(row["meter_no"])
        kind = _wire_kind(row["kind"], driver.capabilities) if driver is not None else None
        if driver is None or kind is None:
            self._finish(conn, row["id"], "failed", "unsupported")
            return []
        address = row["protocol_address"] or self.poller.address_of(row["meter_no"])  # as the bus knows it
        command = Command(kind, row["meter_no"], address, row["correlation_id"], row["amount"], row["purchase_seq"])
        try:
            driver.encode(command)  # the profile can drive this valve (coil or register named)
        except (UnsupportedCommand, ValueError) as exc:
            self._finish(conn, row["id"], "failed", "unsupported", {"error": str(exc)})
            return []
        self._mark_sent(conn, row, kind)
        poller = self.poller
        return [lambda: poller.submit(command)]

    def _mark_sent(self, conn: psycopg.Connection[Any], row: dict[str, Any], kind: CommandKind) -> None:
        timeout = self.settings.sleepy_ack_timeout_s if row["sleepy"] else self.settings.ack_timeout_s
        conn.execute(
            """UPDATE meter_command SET state = 'sent', sent_kind = %s, attempts = attempts + 1, sent_at = now(),
                      deadline_at = now() + make_interval(secs => %s), reason_code = NULL
                WHERE id = %s""",
            [kind.value, timeout, row["id"]],
        )

    def _refresh_sleepy(self, conn: psycopg.Connection[Any]) -> None:
        waiting = {
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT c.meter_id FROM meter_command c JOIN meter m ON m.id = c.meter_id "
                "WHERE c.state = 'queued' AND m.sleepy"
            )
        }
        with self._lock:
            self._sleepy_waiting = waiting

    @staticmethod
    def _finish(
        conn: psycopg.Connection[Any], command_id: int, state: str, reason: str, reply: dict[str, Any] | None = None
    ) -> None:
        conn.execute(
            """UPDATE meter_command SET state = %s, reason_code = %s, finished_at = now(), deadline_at = NULL,
                      reply = coalesce(%s, reply)
                WHERE id = %s""",
            [state, reason, Jsonb(reply) if reply is not None else None, command_id],
        )

    # -- timeouts and reconciliation ---------------------------------------------------------------
    def _timeouts(self) -> None:
        """Sent and not answered in time: never re-send; mark unknown and ask the meter what it did."""
        outbox: list[Delivery] = []
        with self.store.transaction(actor="collector") as conn:
            rows = (
                conn.cursor(row_factory=dict_row)
                .execute(
                    """SELECT c.id, c.meter_id, c.kind, c.correlation_id, c.attempts, m.meter_no, m.driver_key,
                              m.protocol_address, m.sleepy
                         FROM meter_command c JOIN meter m ON m.id = c.meter_id
                        WHERE c.state = 'sent' AND c.deadline_at <= now()
                        ORDER BY c.id LIMIT %s FOR UPDATE OF c SKIP LOCKED""",
                    [self.settings.batch],
                )
                .fetchall()
            )
            for row in rows:
                conn.execute(
                    """UPDATE meter_command SET state = 'unknown', reason_code = 'no_reply',
                              deadline_at = now() + make_interval(secs => %s) WHERE id = %s""",
                    [self.settings.read_timeout_s, row["id"]],
                )
                if not row["sleepy"]:  # a sleepy meter tells us its state in its next uplink
                    outbox.extend(self._read_back(row))
        for deliver in outbox:
            deliver()

    def _read_back(self, row: dict[str, Any]) -> list[Delivery]:
        if self._polled(row["meter_no"]):
            assert self.poller is not None
            driver = self.poller.command_driver(row["meter_no"])
            if driver is None:
                return []
            command = read_back_command(row, driver.capabilities)
            poller = self.poller
            return [lambda: poller.submit(command)]
        transport = self.transports.get(row["driver_key"])
        if transport is None:
            return []
        command = read_back_command(row, transport.route.driver.capabilities)
        topic = transport.topic(row["meter_no"], row["protocol_address"])
        try:
            payload = transport.payload(command, self.uplink_encodings.get(row["meter_id"]))
        except (UnsupportedCommand, ValueError):
            return []
        return [lambda: self.publish(topic, payload)] if topic else []

    def _sequence_modulus(self, driver_key: str) -> int | None:
        """How a driver's purchase sequence wraps on the wire (CJ/T 188: one byte); None when it does not."""
        transport = self.transports.get(driver_key)
        driver: object = transport.route.driver if transport else None
        if driver is None and self.poller is not None:  # a meter on a bus this collector polls
            driver = self.poller.driver_of_key(driver_key)
        modulus = getattr(driver, "purchase_sequence_modulus", None)
        return int(modulus) if modulus else None

    def _reconcile(self) -> None:
        """Unknown commands: decide from the read-back reply or a later report of the meter's state."""
        with self.store.transaction(actor="collector") as conn:
            rows = (
                conn.cursor(row_factory=dict_row)
                .execute(
                    """SELECT c.id, c.meter_id, c.kind, c.sent_kind, c.attempts, c.purchase_seq, c.amount, c.sent_at,
                              c.deadline_at <= now() AS expired, c.reply, s.valve_reported, s.valve_reported_at,
                              m.driver_key
                         FROM meter_command c JOIN meter m ON m.id = c.meter_id
                         LEFT JOIN meter_state s ON s.meter_id = c.meter_id
                        WHERE c.state = 'unknown'
                        ORDER BY c.id LIMIT %s FOR UPDATE OF c SKIP LOCKED""",
                    [self.settings.batch],
                )
                .fetchall()
            )
            for row in rows:
                executed = _executed(row, self._sequence_modulus(row["driver_key"]))
                if executed is True:
                    self._finish(conn, row["id"], "reconciled", "executed")
                    if row["kind"] == "credit":
                        book_credit(conn, row["id"])
                elif executed is False:
                    if row["attempts"] < self.settings.max_attempts:
                        # The meter says it did not act: sending again cannot double anything.
                        conn.execute(
                            "UPDATE meter_command SET state = 'queued', reason_code = 'not_executed', "
                            "deadline_at = NULL, reply = NULL WHERE id = %s",
                            [row["id"]],
                        )
                    else:
                        self._finish(conn, row["id"], "failed", "not_executed")
                elif row["expired"]:
                    self._finish(conn, row["id"], "failed", "no_answer")


def _wire_kind(kind: str, capabilities: Capability) -> CommandKind | None:
    if kind == "valve_close":
        return CommandKind.VALVE_CLOSE if Capability.VALVE_CLOSE in capabilities else None
    if kind == "valve_open":  # gas: arm where the meter can, the customer restores supply on site
        if Capability.VALVE_ARM in capabilities:
            return CommandKind.VALVE_ARM
        return CommandKind.VALVE_OPEN if Capability.VALVE_OPEN in capabilities else None
    if kind == "credit":
        return CommandKind.CREDIT if Capability.CREDIT_WRITE in capabilities else None
    return CommandKind.READ if Capability.READ in capabilities else None


def read_back_command(row: Mapping[str, Any], capabilities: Capability) -> Command:
    """The read that asks a meter what it did with a command (its purchase data for a top-up, where it can)."""
    kind = CommandKind.READ
    if row["kind"] == "credit" and Capability.CREDIT_READ in capabilities:
        kind = CommandKind.CREDIT_READ
    return Command(kind, row["meter_no"], row["protocol_address"], f"{row['correlation_id']}:r{row['attempts']}")


def sent_command(row: Mapping[str, Any]) -> Command | None:
    """The command as it went on the wire (its sent kind), rebuilt from its row; None before it was sent."""
    if row["sent_kind"] is None:
        return None
    return Command(
        CommandKind(row["sent_kind"]),
        row["meter_no"],
        row["protocol_address"],
        row["correlation_id"],
        row["amount"],
        row["purchase_seq"],
    )


def sequence_reached(reported: int, sent: int, modulus: int | None) -> bool:
    """Whether the meter's last accepted purchase sequence is ours or a later one.

    Our sequence grows for ever; a meter whose sequence is `modulus` wide (CJ/T 188: one byte) reports it
    wrapped, so it is compared by serial-number arithmetic: up to half the range ahead counts as reached.
    That is the complement of the meter's own rule (it takes a sequence 1 to half the range newer than its
    last one): when this says "not reached", the same write sent again would be taken.
    """
    if modulus is None:
        return reported >= sent
    return (reported - sent) % modulus < modulus // 2


def _executed(row: dict[str, Any], sequence_modulus: int | None = None) -> bool | None:
    """True/False when the evidence says whether the meter acted; None while there is none."""
    reply = row["reply"] or {}
    if row["kind"] == "credit":
        seq = reply.get("purchase_sequence", reply.get("seq"))
        if seq is None or row["purchase_seq"] is None:
            return None
        return sequence_reached(int(seq), int(row["purchase_seq"]), sequence_modulus)
    expected = EXPECTED_VALVE.get(row["sent_kind"] or row["kind"])
    if expected is None:
        return None
    if reply.get("valve") is not None:
        return reply["valve"] in expected
    reported_at = row["valve_reported_at"]
    if reported_at is not None and row["sent_at"] is not None and reported_at > row["sent_at"]:
        return row["valve_reported"] in expected
    return None


# -- called by the batch writer, inside its transaction ----------------------------------------------
def record_replies(conn: psycopg.Connection[Any], replies: list[tuple[Any, ...]]) -> int:
    """Match replies (meter_id, correlation_id, ok, ts, detail, driver) to commands in flight; returns matches.

    A reply to the command itself confirms or fails a `sent` command; any reply to an `unknown` one
    (late, or to the read-back) is kept as evidence for reconciliation. A reply without a correlation id
    (CJ/T 188) answers the meter's command in flight only when its driver says it answers the request we
    sent or its read-back (control code, DI and SER); other replies are logged and ignored.
    """
    matched = 0
    for meter_id, correlation_id, ok, ts, detail, *rest in replies:
        if not correlation_id:
            correlation_id = _correlate(conn, meter_id, detail, rest[0] if rest else None)
            if correlation_id is None:
                continue
        base = correlation_id.split(":", 1)[0]
        evidence = {**detail, "ok": ok, "ts": ts.isoformat(), "correlation_id": correlation_id}
        row = conn.execute(
            """SELECT id, state, kind, sent_kind FROM meter_command
                WHERE meter_id = %s AND state IN ('sent', 'unknown') AND correlation_id = %s
                FOR UPDATE""",
            [meter_id, base],
        ).fetchone()
        if row is None:
            continue
        command_id, state, kind, sent_kind = row
        matched += 1
        is_read_back = ":" in correlation_id
        if state == "sent" and not is_read_back:
            conn.execute(
                """UPDATE meter_command SET state = %s, reason_code = %s, reply = %s, finished_at = now(),
                          deadline_at = NULL WHERE id = %s""",
                [
                    "confirmed" if ok else "failed",
                    None if ok else "meter_refused",
                    Jsonb(evidence, dumps=_dumps),
                    command_id,
                ],
            )
            if ok and kind == "credit":
                book_credit(conn, command_id)
            if ok and sent_kind in EXPECTED_VALVE and "valve" not in detail:
                # Acknowledged without a state: the meter did what was asked. Only an arm leaves an
                # already open valve alone.
                conn.execute(
                    "UPDATE meter SET valve_state = %s WHERE id = %s "
                    "AND valve_state IS DISTINCT FROM %s AND NOT (%s = 'valve_arm' AND valve_state = 'open')",
                    [EXPECTED_VALVE[sent_kind][0], meter_id, EXPECTED_VALVE[sent_kind][0], sent_kind],
                )
        else:
            conn.execute(
                "UPDATE meter_command SET reply = %s WHERE id = %s", [Jsonb(evidence, dumps=_dumps), command_id]
            )
    return matched


def _correlate(conn: psycopg.Connection[Any], meter_id: int, detail: Mapping[str, Any], driver: Any) -> str | None:
    """The correlation id of the request an uncorrelated reply answers: the meter's command in flight as sent,
    or its read-back; None (logged when a command is in flight) for a reply to anything else."""
    matches: Callable[[Command, Mapping[str, Any]], bool] | None = getattr(driver, "reply_matches", None)
    if matches is None:
        return None  # no way to tell what it answers (e.g. a routine poll's reply): not a command's answer
    row = (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT c.id, c.kind, c.sent_kind, c.correlation_id, c.attempts, c.amount, c.purchase_seq, m.meter_no,
                      m.protocol_address
                 FROM meter_command c JOIN meter m ON m.id = c.meter_id
                WHERE c.meter_id = %s AND c.state IN ('sent', 'unknown')""",
            [meter_id],
        )
        .fetchone()
    )
    if row is None:
        return None
    sent = sent_command(row)
    if sent is not None and matches(sent, detail):
        return sent.correlation_id
    read_back = read_back_command(row, _capabilities(driver))
    if matches(read_back, detail):
        return read_back.correlation_id
    log.warning(
        "reply ignored: it answers no request of the command in flight",
        extra={"command_id": row["id"], "meter_no": row["meter_no"], "reply": dict(detail)},
    )
    return None


def _capabilities(driver: Any) -> Capability:
    found = getattr(driver, "capabilities", Capability(0))
    return found if isinstance(found, Capability) else Capability(0)


def book_credit(conn: psycopg.Connection[Any], command_id: int) -> None:
    """The meter accepted this top-up: one meter_credit row per command, whatever arrives twice."""
    conn.execute(
        """INSERT INTO meter_credit (meter_id, command_id, purchase_seq, amount)
           SELECT meter_id, id, purchase_seq, amount FROM meter_command WHERE id = %s AND kind = 'credit'
           ON CONFLICT DO NOTHING""",
        [command_id],
    )
    from meterhub.prepaid import reconcile_meter_credit

    reconcile_meter_credit(conn, command_id)


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=lambda o: str(o) if isinstance(o, Decimal) else repr(o))
