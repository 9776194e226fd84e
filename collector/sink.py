"""Where every ingestion path (MQTT, polled buses) hands its batches: written with retries while the
store is unavailable, acknowledged and counted once committed, and — when the store refuses the data
itself — redone one message at a time so that one bad message is dead-lettered and the rest stored."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from collector.batch import Batch
from collector.counters import Counters
from collector.meters import MeterDirectory
from collector.writer import WriteResult, write_batch
from meterhub.store import Store

log = logging.getLogger(__name__)

RETRYABLE_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")


def is_retryable(exc: BaseException) -> bool:
    """Store trouble that goes away (connection lost, server restarting) as opposed to refused data."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | PoolTimeout):
        return True
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate[:2] in RETRYABLE_SQLSTATE_CLASSES


class BatchSink:
    """`redo(item)` rebuilds a one-message batch from a batch's original; `refused(item, reason)` builds
    the one-message batch that dead-letters it."""

    def __init__(
        self,
        store: Store,
        counters: Counters,
        redo: Callable[[Any], Batch],
        refused: Callable[[Any, str], Batch],
    ) -> None:
        self.store = store
        self.counters = counters
        self.redo = redo
        self.refused = refused

    def resolve(self, directory: MeterDirectory, driver_key: str, identities: set[str]) -> dict[str, int]:
        """Meter ids for identities, waiting out a store outage."""
        delay = 0.2
        while True:
            try:
                return directory.resolve(driver_key, identities)
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                self.counters.add(store_errors=1)
                log.warning("store unavailable while resolving meters; retrying", extra={"error": str(exc)})
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def commit(self, batch: Batch) -> None:
        try:
            result = self.write(batch)
        except Exception as exc:
            log.error("store refused a batch; writing its messages one by one", extra={"error": str(exc)})
            self.counters.add(readings_decoded=-len(batch.readings))
            for item in batch.originals:
                self._commit_alone(item)
            return
        self.account(batch, result)

    def _commit_alone(self, item: Any) -> None:
        single = self.redo(item)
        try:
            result = self.write(single)
        except Exception as exc:
            self.counters.add(readings_decoded=-len(single.readings))
            single = self.refused(item, f"{type(exc).__name__}: {exc}")
            result = self.write(single)
        self.account(single, result)

    def write(self, batch: Batch) -> WriteResult:
        """Write, retrying for as long as the store is unavailable; raise if it refuses the data."""
        delay = 0.2
        while True:
            try:
                return write_batch(self.store, batch)
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                self.counters.add(store_errors=1)
                log.warning("store unavailable; retrying the batch", extra={"error": str(exc), "rows": batch.rows})
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)

    def account(self, batch: Batch, result: WriteResult) -> None:
        for ack in batch.acks:
            ack()
        self.counters.add(
            messages_committed=batch.messages_ok,
            messages_rejected=batch.messages_rejected,
            readings_stored=result.readings_stored,
            readings_duplicate=result.readings_duplicate,
            events_stored=result.events_stored,
            batches_committed=1,
        )
        for reason in batch.rejected_reasons:
            self.counters.reject(reason)
