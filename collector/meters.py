"""Which meter a decoded message speaks of: by meter number, or by the protocol address a driver
reports (a CJ/T 188 frame names its BCD address, not our meter number)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from meterhub.store import Store

log = logging.getLogger(__name__)

NEGATIVE_TTL_S = 30.0  # how long an unknown identity is not looked up again


class MeterDirectory:
    def __init__(self, store: Store, auto_provision: bool = False) -> None:
        self.store = store
        self.auto_provision = auto_provision
        self._by_no: dict[str, int] = {}
        self._by_address: dict[tuple[str, str], int] = {}
        self._unknown_until: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def load(self) -> int:
        with self.store.connection() as conn:
            rows = conn.execute("SELECT id, meter_no, driver_key, protocol_address FROM meter").fetchall()
        with self._lock:
            for meter_id, meter_no, driver_key, address in rows:
                self._by_no[meter_no] = meter_id
                if address:
                    self._by_address[(driver_key, address)] = meter_id
        return len(rows)

    def _cached(self, driver_key: str, ident: str) -> int | None:
        found = self._by_no.get(ident)
        return found if found is not None else self._by_address.get((driver_key, ident))

    def resolve(self, driver_key: str, identities: Iterable[str]) -> dict[str, int]:
        """Map each identity to a meter id; unknown ones are absent (or created, with auto-provision)."""
        found: dict[str, int] = {}
        missing: list[str] = []
        now = time.monotonic()
        with self._lock:
            for ident in identities:
                meter_id = self._cached(driver_key, ident)
                if meter_id is not None:
                    found[ident] = meter_id
                elif self._unknown_until.get((driver_key, ident), 0.0) <= now:
                    missing.append(ident)
        if missing:
            found.update(self._lookup(driver_key, missing))
        return found

    def _lookup(self, driver_key: str, identities: list[str]) -> dict[str, int]:
        with self.store.transaction(actor="collector") as conn:
            rows = conn.execute(
                """SELECT id, meter_no, driver_key, protocol_address FROM meter
                    WHERE meter_no = ANY(%s) OR (driver_key = %s AND protocol_address = ANY(%s))""",
                [identities, driver_key, identities],
            ).fetchall()
            known: dict[str, int] = {}
            for meter_id, meter_no, key, address in rows:
                with self._lock:
                    self._by_no[meter_no] = meter_id
                    if address:
                        self._by_address[(key, address)] = meter_id
                known[meter_no if meter_no in identities else address] = meter_id
            still_missing = [i for i in identities if i not in known]
            if still_missing and self.auto_provision:
                for ident in still_missing:
                    row = conn.execute(
                        """INSERT INTO meter (meter_no, driver_key, protocol_address, status)
                           VALUES (%s, %s, %s, 'installed')
                           ON CONFLICT (meter_no) DO UPDATE SET meter_no = EXCLUDED.meter_no RETURNING id""",
                        [ident, driver_key, ident],
                    ).fetchone()
                    assert row is not None
                    known[ident] = row[0]
                    with self._lock:
                        self._by_no[ident] = row[0]
                        self._by_address[(driver_key, ident)] = row[0]
                    log.info("auto-provisioned meter", extra={"meter_no": ident, "driver": driver_key})
                still_missing = []
        with self._lock:
            until = time.monotonic() + NEGATIVE_TTL_S
            for ident in still_missing:
                self._unknown_until[(driver_key, ident)] = until
        return known
