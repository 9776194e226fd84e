"""A batch: the rows of many messages, written in one transaction, acknowledged after the commit."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from drivers.base import Decoded, EventKind

SEVERITY = {
    EventKind.LEAK: "critical",
    EventKind.TAMPER: "critical",
    EventKind.VALVE_ABNORMAL: "critical",
    EventKind.VALVE_STATE: "info",
}


@dataclass
class MeterStateUpdate:
    """The newest of what a batch says about one meter."""

    last_seen_at: datetime
    last_reading_at: datetime | None = None
    last_volume_m3: Decimal | None = None
    valve: str | None = None
    valve_at: datetime | None = None
    battery_v: Decimal | None = None
    rssi_dbm: int | None = None

    def row(self, meter_id: int) -> tuple[Any, ...]:
        return (
            meter_id,
            self.last_seen_at,
            self.last_reading_at,
            self.last_volume_m3,
            self.valve,
            self.valve_at,
            self.battery_v,
            self.rssi_dbm,
        )


@dataclass
class Batch:
    readings: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    rejected: list[tuple[Any, ...]] = field(default_factory=list)
    # (meter_id, correlation_id, ok, ts, detail, driver): the driver tells what an uncorrelated reply answers
    replies: list[tuple[Any, ...]] = field(default_factory=list)
    states: dict[int, MeterStateUpdate] = field(default_factory=dict)
    acks: list[Callable[[], None]] = field(default_factory=list)
    originals: list[Any] = field(default_factory=list)  # what the batch was made from, to redo one by one
    messages_ok: int = 0
    messages_rejected: int = 0
    rejected_reasons: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def messages(self) -> int:
        return self.messages_ok + self.messages_rejected

    @property
    def rows(self) -> int:
        return len(self.readings) + len(self.events) + len(self.rejected)

    def add_decoded(
        self,
        decoded: Decoded,
        meter_ids: dict[str, int],
        source: str,
        received_at: datetime,
        ack: Callable[[], None] | None,
        driver: Any = None,
    ) -> None:
        for r in decoded.readings:
            meter_id = meter_ids[r.meter_no]
            self.readings.append((meter_id, r.channel, r.ts, r.value, r.quality.value, source, received_at))
            if r.channel == "volume_m3":
                state = self._state(meter_id, received_at)
                if state.last_reading_at is None or r.ts > state.last_reading_at:
                    state.last_reading_at, state.last_volume_m3 = r.ts, r.value
        for e in decoded.events:
            meter_id = meter_ids[e.meter_no]
            self.events.append(
                (meter_id, e.ts, e.kind.value, SEVERITY.get(e.kind, "warning"), dict(e.detail), source, received_at)
            )
        for s in decoded.statuses:
            state = self._state(meter_ids[s.meter_no], received_at)
            if s.valve is not None and (state.valve_at is None or s.ts >= state.valve_at):
                state.valve, state.valve_at = s.valve.value, s.ts
            if s.battery_v is not None:
                state.battery_v = s.battery_v
            if s.rssi_dbm is not None:
                state.rssi_dbm = s.rssi_dbm
        # A reply whose frame also carried the meter's status (a CJ/T 188 901F read, an A017 ack with ST)
        # names the valve, as evidence for reconciliation that does not depend on the meter's clock.
        valves = {s.meter_no: s.valve.value for s in decoded.statuses if s.valve is not None}
        for reply in decoded.replies:
            self._state(meter_ids[reply.meter_no], received_at)
            detail = dict(reply.detail)
            if "valve" not in detail and reply.meter_no in valves:
                detail["valve"] = valves[reply.meter_no]
            self.replies.append((meter_ids[reply.meter_no], reply.correlation_id, reply.ok, reply.ts, detail, driver))
        self.messages_ok += 1
        if ack is not None:
            self.acks.append(ack)

    def add_rejected(
        self,
        raw: bytes,
        reason: str,
        detail: str,
        source: str,
        topic: str | None,
        driver_key: str | None,
        meter_no: str | None,
        received_at: datetime,
        ack: Callable[[], None] | None,
    ) -> None:
        self.rejected.append((received_at, source, topic, driver_key, meter_no, raw, reason, detail[:2000]))
        self.rejected_reasons.append(reason)
        self.messages_rejected += 1
        if ack is not None:
            self.acks.append(ack)

    def _state(self, meter_id: int, seen: datetime) -> MeterStateUpdate:
        state = self.states.get(meter_id)
        if state is None:
            state = self.states[meter_id] = MeterStateUpdate(last_seen_at=seen)
        elif seen > state.last_seen_at:
            state.last_seen_at = seen
        return state


def gather_batches(
    inbox: queue.Queue[Any],
    add: Callable[[Any, Batch], None],
    emit: Callable[[Batch], None],
    max_rows: int,
    max_age_s: float,
) -> None:
    """Fill batches from `inbox` with `add` and hand each to `emit` once it holds `max_rows` rows or its
    first message is `max_age_s` old; on None, emit what is left and return. An item that is a list is
    that many messages, handed over at once (each still added, and redone if need be, on its own)."""
    batch = Batch()
    while True:
        wait = max(0.0, batch.started + max_age_s - time.monotonic()) if batch.messages else 0.5
        try:
            item = inbox.get(timeout=wait)
        except queue.Empty:
            item = False
        if item is None:
            if batch.messages:
                emit(batch)
            return
        if item is not False:
            if not batch.messages:
                batch.started = time.monotonic()
            for one in item if isinstance(item, list) else (item,):
                batch.originals.append(one)
                add(one, batch)
        if batch.messages and (batch.rows >= max_rows or time.monotonic() - batch.started >= max_age_s):
            emit(batch)
            batch = Batch()
