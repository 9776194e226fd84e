"""Counters that prove nothing was lost, for Prometheus and for `meterhub collect --status`.

Messages: received = committed + rejected + in flight (a message is committed once its rows are in
the store and it is acknowledged to the broker; rejected ones are committed to the dead-letter
table). Readings: decoded = stored + duplicates + pending.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Counters:
    messages_received: int = 0
    messages_committed: int = 0  # decoded and stored, acknowledged to the broker
    messages_rejected: int = 0  # dead-lettered (malformed, unknown meter), acknowledged
    readings_decoded: int = 0
    readings_stored: int = 0
    readings_duplicate: int = 0
    events_stored: int = 0
    batches_committed: int = 0
    store_errors: int = 0
    reconnects: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def reject(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self.rejected_by_reason[reason] += count

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            doc: dict[str, Any] = {
                name: getattr(self, name)
                for name in self.__dataclass_fields__
                if not name.startswith("_") and name != "rejected_by_reason"
            }
            doc["rejected_by_reason"] = dict(self.rejected_by_reason)
        doc["messages_in_flight"] = doc["messages_received"] - doc["messages_committed"] - doc["messages_rejected"]
        doc["readings_pending"] = doc["readings_decoded"] - doc["readings_stored"] - doc["readings_duplicate"]
        return doc


class PrometheusCollector:
    """Exposes a Counters object through prometheus_client's custom-collector protocol."""

    def __init__(self, counters: Counters, collector_id: str) -> None:
        self.counters = counters
        self.collector_id = collector_id

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.counters.snapshot()
        labels = ["collector"]
        for name in (
            "messages_received",
            "messages_committed",
            "messages_rejected",
            "readings_decoded",
            "readings_stored",
            "readings_duplicate",
            "events_stored",
            "batches_committed",
            "store_errors",
            "reconnects",
        ):
            metric = CounterMetricFamily(f"meterhub_{name}", name.replace("_", " "), labels=labels)
            metric.add_metric([self.collector_id], snap[name])
            yield metric
        by_reason = CounterMetricFamily(
            "meterhub_rejected_frames", "dead-lettered messages by reason", labels=[*labels, "reason"]
        )
        for reason, count in snap["rejected_by_reason"].items():
            by_reason.add_metric([self.collector_id, reason], count)
        yield by_reason
        for name in ("messages_in_flight", "readings_pending"):
            gauge = GaugeMetricFamily(f"meterhub_{name}", name.replace("_", " "), labels=labels)
            gauge.add_metric([self.collector_id], snap[name])
            yield gauge
