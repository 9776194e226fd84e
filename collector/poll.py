"""The poller: field buses polled on schedule, frames into the same batches as MQTT uplinks.

Threads: one asyncio loop runs a task per bus; a writer thread turns what the buses received into
batches (readings, events, dead letters) and writes them with `write_batch`, retrying while the
store is unavailable. The loop never touches the store.

Per bus, one request at a time: the device due longest is polled next (earliest due first, so an
overloaded bus still shares its time fairly). A device that fails `offline_after` polls in a row is
raised as an `offline` event once and backed off exponentially (up to `backoff_max_s`); it costs the
bus at most its timeout × (retries + 1) per attempt. TCP Modbus endpoints are buses of their own and
so are polled concurrently.

Valve commands for the meters of a bus (`submit`, from the command dispatcher's thread) go to that
bus's task and are run before its next poll — still one request at a time on the line (see
collector/poll_commands.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import queue
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from collector.batch import Batch, gather_batches
from collector.counters import Counters
from collector.meters import MeterDirectory
from collector.poll_commands import run_command
from collector.poll_devices import Cjt188Reader, Frame, MbusReader, ModbusReader, PollResult, Target
from collector.poll_plan import BusPlan, PlannedDevice, bus_workarounds
from collector.sink import BatchSink
from drivers.base import Command, Decoded, EventKind, MeterEvent
from drivers.cjt188.driver import Cjt188Driver, Cjt188Settings
from drivers.modbus.driver import ModbusDriver
from drivers.transports.modbus import ModbusLink, SerialParams
from drivers.transports.serial_line import SerialLine, TcpSerialLine
from drivers.transports.wire import rtu_silence_s
from meterhub.poller_settings import PollBus, PollerSettings
from meterhub.store import Store

log = logging.getLogger(__name__)

BATCH_MAX_AGE_S = 0.2
GC_GEN0_THRESHOLD = 50_000  # the default 700 runs the cyclic GC every few polls: ~12 % of a busy poller's CPU
BATCH_MAX_ROWS = 20000


@dataclass
class DeviceState:
    planned: PlannedDevice
    order: int
    next_due: float
    failures: int = 0
    offline: bool = False
    source: str = ""  # <protocol>:<endpoint>/<address>, what its frames are stored with


@dataclass(frozen=True, slots=True)
class Received:
    target: Target
    source: str
    frame: Frame


class Poller:
    def __init__(
        self,
        settings: PollerSettings,
        store: Store,
        plan: list[BusPlan],
        counters: Counters | None = None,
        directory: MeterDirectory | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.plan = plan
        self.counters = counters or Counters()
        self.directory = directory or MeterDirectory(store)
        self.sink = BatchSink(store, self.counters, self._redo, self._refused)
        self.stats: Counter[str] = Counter()  # polls_ok, polls_failed, offline_events, bus_errors, commands_run
        self.devices: dict[str, DeviceState] = {}
        self._buses = {planned.target.meter_no: bus.bus.name for bus in plan for planned in bus.devices}
        self._targets = {planned.target.meter_no: planned.target for bus in plan for planned in bus.devices}
        self._cjt188_drivers = {
            bus.bus.name: Cjt188Driver(Cjt188Settings(workarounds=bus_workarounds(bus.bus)))
            for bus in plan
            if bus.bus.protocol == "cjt188"
        }
        self._key_drivers: dict[str, ModbusDriver | Cjt188Driver] = {}
        for meter_no, target in self._targets.items():
            driver = self.command_driver(meter_no)
            if driver is not None:
                self._key_drivers.setdefault(target.driver_key, driver)
        self._commands: dict[str, deque[Command]] = {bus.bus.name: deque() for bus in plan}
        self._wakes: dict[str, asyncio.Event] = {}
        self._inbox: queue.Queue[list[Received] | None] = queue.Queue()
        self._outbox: list[Received] = []  # what the loop received since its last hand-over to the writer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._started = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- life -------------------------------------------------------------------------------------
    def start(self) -> None:
        gen0, *older = gc.get_threshold()
        if gen0 < GC_GEN0_THRESHOLD:  # unless someone chose otherwise: polls allocate fast, cycles are rare
            gc.set_threshold(GC_GEN0_THRESHOLD, *older)
        self.directory.load()
        self._threads = [
            threading.Thread(target=self._run_loop, name="poller-loop", daemon=True),
            threading.Thread(target=self._write_loop, name="poller-write", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._started.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop polling, then commit everything received."""
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._request_stop)
        self._threads[0].join(timeout)
        self._inbox.put(None)
        self._threads[1].join(timeout)

    def _run_loop(self) -> None:
        asyncio.run(self._main())

    def _request_stop(self) -> None:
        assert self._stop_event is not None
        self._stop_event.set()
        for wake in self._wakes.values():
            wake.set()

    # -- commands (called from the dispatcher's thread) -------------------------------------------
    @property
    def meter_nos(self) -> Collection[str]:
        """The meters on the buses this poller owns."""
        return self._buses.keys()

    def owns(self, meter_no: str) -> bool:
        return meter_no in self._buses

    def command_driver(self, meter_no: str) -> ModbusDriver | Cjt188Driver | None:
        """The driver that says what a polled meter can do and encodes its commands (Modbus: the device
        profile; CJ/T 188: the bus's vendor workarounds); None when the meter's protocol takes no commands
        (M-Bus has no valve or credit command of its own)."""
        target = self._targets.get(meter_no)
        if target is None:
            return None
        if target.modbus is not None:
            return target.modbus
        return self._cjt188_drivers.get(self._buses[meter_no])

    def address_of(self, meter_no: str) -> str:
        """The meter's address on its bus (a Modbus unit id, a CJ/T 188 address, an M-Bus address)."""
        return self._targets[meter_no].address

    def driver_of_key(self, driver_key: str) -> ModbusDriver | Cjt188Driver | None:
        """A command driver of this poller's meters of one protocol (for what all its meters share, such
        as how a purchase sequence wraps)."""
        return self._key_drivers.get(driver_key)

    def submit(self, command: Command) -> bool:
        """Queue a command for the bus of `command.meter_no`; it runs before that bus's next poll.
        False when this poller does not own the meter or is not running (the command then times out)."""
        bus = self._buses.get(command.meter_no)
        loop = self._loop
        if bus is None or loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(self._enqueue, bus, command)
        except RuntimeError:  # the loop has just stopped
            return False
        return True

    def _enqueue(self, bus: str, command: Command) -> None:
        self._commands[bus].append(command)
        wake = self._wakes.get(bus)
        if wake is not None:
            wake.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._wakes = {plan.bus.name: asyncio.Event() for plan in self.plan}
        tasks = [asyncio.create_task(self._run_bus(plan), name=f"bus-{plan.bus.name}") for plan in self.plan]
        self._started.set()
        await self._stop_event.wait()
        _, pending = await asyncio.wait(tasks, timeout=5)  # a poll in progress finishes (≤ its timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._hand_over()

    def _received(self, item: Received) -> None:
        """Keep a frame for the writer; what one turn of the loop received goes over in one piece."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._hand_over)
        self._outbox.append(item)

    def _hand_over(self) -> None:
        items, self._outbox = self._outbox, []
        if items:
            self.counters.add(messages_received=len(items))
            self._inbox.put(items)

    # -- buses ------------------------------------------------------------------------------------
    def _reader(self, bus: PollBus) -> tuple[Any, Any]:
        timeout = bus.timeout_s or self.settings.timeout_s
        retries = self.settings.retries if bus.retries is None else bus.retries
        serial = SerialParams(bus.baudrate, bus.bytesize, bus.parity, bus.stopbits)
        if bus.protocol == "modbus":
            framer = bus.modbus_framer
            link = ModbusLink(
                host=bus.host, port=bus.port or 502, device=bus.device, framer=framer, serial=serial, timeout_s=timeout
            )
            silence = 0.0
            if bus.shared_line:
                silence = bus.silence_ms / 1000 if bus.silence_ms is not None else rtu_silence_s(bus.baudrate)
            return link, ModbusReader(link, retries, silence)
        silence_s = bus.silence_ms / 1000 if bus.silence_ms is not None else None
        line: SerialLine
        if bus.device is not None:
            line = SerialLine(bus.device, bus.baudrate, bus.bytesize, bus.parity, bus.stopbits, silence_s)
        else:
            assert bus.host is not None and bus.port is not None
            line = TcpSerialLine(bus.host, bus.port, silence_s if silence_s is not None else 0.005, bus.baudrate)
        if bus.protocol == "cjt188":
            return line, Cjt188Reader(line, timeout, retries, bus_workarounds(bus))
        return line, MbusReader(line, timeout, retries)

    async def _run_bus(self, plan: BusPlan) -> None:
        connection, reader = self._reader(plan.bus)
        now = time.monotonic()
        states = []
        for order, planned in enumerate(plan.devices):
            state = DeviceState(planned, order, now + random.uniform(0, planned.interval_s * self.settings.jitter))
            state.source = f"{plan.bus.protocol}:{connection.endpoint}/{planned.target.address}"
            states.append(state)
            self.devices[planned.target.meter_no] = state
        stop = self._stop_event
        assert stop is not None
        commands, wake = self._commands[plan.bus.name], self._wakes[plan.bus.name]
        try:
            # The stop flag, not only cancellation: a client library may swallow a CancelledError.
            while not stop.is_set():
                if commands:  # a command goes before the next poll, on the same line, one request at a time
                    await self._command(plan.bus, connection, reader, commands.popleft())
                    continue
                now = time.monotonic()
                state = min(states, key=lambda s: (s.next_due, s.order))
                if state.next_due > now:
                    wake.clear()  # no await since the check above: a command queued from now on sets it
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), state.next_due - now)
                    continue
                await self._poll(plan.bus, connection, reader, state)
        finally:
            connection.close()

    async def _poll(self, bus: PollBus, connection: Any, reader: Any, state: DeviceState) -> None:
        target = state.planned.target
        source = state.source
        try:
            result: PollResult = await reader.poll(target)
        except (ConnectionError, OSError) as exc:
            result = PollResult(error=f"{type(exc).__name__}: {exc}")
            self.stats["bus_errors"] += 1
            connection.close()
        except Exception as exc:  # a bug must not stop the bus; the device counts as failed
            log.exception("poll failed", extra={"meter_no": target.meter_no, "bus": bus.name})
            result = PollResult(error=f"{type(exc).__name__}: {exc}")
        for frame in result.frames:
            self._received(Received(target, source, frame))
        if self._stop_event is not None and self._stop_event.is_set() and not result.answered:
            return  # interrupted by the stop, not the device's fault
        self._schedule(bus, state, result, source)

    async def _command(self, bus: PollBus, connection: Any, reader: Any, command: Command) -> None:
        target = self._targets[command.meter_no]
        source = f"{bus.protocol}:{connection.endpoint}/{target.address}"
        try:
            result = await run_command(reader, target, command)
        except (ConnectionError, OSError) as exc:
            result = PollResult(error=f"{type(exc).__name__}: {exc}")
            self.stats["bus_errors"] += 1
            connection.close()
        except Exception as exc:  # a bug must not stop the bus; the command times out and is read back
            log.exception("command failed", extra={"meter_no": target.meter_no, "bus": bus.name})
            result = PollResult(error=f"{type(exc).__name__}: {exc}")
        self.stats["commands_run"] += 1
        for frame in result.frames:
            self._received(Received(target, source, frame))

    def _schedule(self, bus: PollBus, state: DeviceState, result: PollResult, source: str) -> None:
        interval = state.planned.interval_s
        jitter = self.settings.jitter
        now = time.monotonic()
        if result.answered:
            self.stats["polls_ok"] += 1
            if state.offline:
                log.info("device answers again", extra={"meter_no": state.planned.target.meter_no, "bus": bus.name})
            state.failures, state.offline = 0, False
            state.next_due = max(state.next_due + interval * random.uniform(1 - jitter, 1 + jitter), now)
            return
        self.stats["polls_failed"] += 1
        state.failures += 1
        excess = state.failures - self.settings.offline_after
        if excess >= 0 and not state.offline:
            state.offline = True
            self.stats["offline_events"] += 1
            target = state.planned.target
            log.warning("device offline", extra={"meter_no": target.meter_no, "bus": bus.name, "error": result.error})
            ts = datetime.now(UTC)
            detail = {"bus": bus.name, "address": target.address, "failures": state.failures, "error": result.error}
            event = MeterEvent(target.meter_no, EventKind.OFFLINE, ts, detail)
            self._received(Received(target, source, Frame(b"", ts, Decoded(events=[event]))))
        backoff = interval if excess < 0 else min(interval * 2 ** (excess + 1), self.settings.backoff_max_s)
        state.next_due = now + backoff * random.uniform(1, 1 + jitter)

    # -- store ------------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        gather_batches(self._inbox, self._add, self._commit, BATCH_MAX_ROWS, BATCH_MAX_AGE_S)

    def _commit(self, batch: Batch) -> None:
        self.counters.add(readings_decoded=len(batch.readings))
        self.sink.commit(batch)

    def _add(self, item: Received, batch: Batch) -> None:
        frame, target = item.frame, item.target
        if frame.decoded is None:
            batch.add_rejected(
                frame.raw, frame.reason, frame.detail, item.source, None, target.driver_key, target.meter_no,
                frame.received_at, None,
            )  # fmt: skip
            return
        meter_nos = frame.decoded.meter_nos
        meter_ids = self._resolve(target.driver_key, meter_nos | {target.meter_no})
        unknown = sorted(meter_nos - meter_ids.keys())
        if unknown:
            batch.add_rejected(
                frame.raw, "unknown_meter", f"no meter {', '.join(unknown)}", item.source, None, target.driver_key,
                target.meter_no, frame.received_at, None,
            )  # fmt: skip
            return
        batch.add_decoded(frame.decoded, meter_ids, item.source, frame.received_at, None)

    def _resolve(self, driver_key: str, identities: set[str]) -> dict[str, int]:
        return self.sink.resolve(self.directory, driver_key, identities)

    def _redo(self, item: Received) -> Batch:
        single = Batch()
        self._add(item, single)
        self.counters.add(readings_decoded=len(single.readings))
        return single

    def _refused(self, item: Received, reason: str) -> Batch:
        single = Batch()
        single.add_rejected(item.frame.raw, "store_refused", reason, item.source, None, item.target.driver_key,
                            item.target.meter_no, item.frame.received_at, None)  # fmt: skip
        return single


def start_poller(settings: PollerSettings, store: Store, counters: Counters) -> Poller | None:
    """The poller for `meterhub collect`, or None when this collector owns no polled devices."""
    from collector.poll_plan import build_plan, devices_from_store

    extra = devices_from_store(store) if settings.from_store else []
    plan = build_plan(settings, extra)
    if not plan:
        return None
    poller = Poller(settings, store, plan, counters)
    poller.start()
    log.info("polling", extra={"buses": len(plan), "devices": sum(len(p.devices) for p in plan)})
    return poller
