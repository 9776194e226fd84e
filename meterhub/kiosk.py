"""Self-service kiosk queries (触摸屏查询): an account number and its PIN give read-only facts, nothing else.

- A PIN (4 to 8 digits) is set per account by staff who may edit accounts; only its argon2id hash is kept
  (`kiosk_pin`). Setting a new PIN also ends a lockout of the account.
- Every query is recorded in `kiosk_attempt`. Like the console's login: after `lockout_failures` wrong
  answers for one account number within `lockout_min` minutes (since its last right answer or new PIN) the
  number is locked for the rest of that window, and an address with `ip_failures` wrong answers in the
  window is refused too. A locked query is refused before the PIN is looked at, and an unknown account
  number costs the same time as a known one.
- What a right answer gives is decided by the caller (the console adds the balance from billing); this
  module gives the account's id and its recent register readings.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()
_DUMMY = _hasher.hash(secrets.token_hex(8))
PIN_FORMAT = re.compile(r"^[0-9]{4,8}$")


class KioskError(ValueError):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Limits:
    lockout_failures: int = 5
    lockout_min: int = 15
    ip_failures: int = 20


@dataclass(frozen=True)
class Check:
    ok: bool
    reason: Literal["ok", "wrong", "locked", "ip_blocked"]
    account_id: int | None = None
    retry_after_s: int = 0


def _account_id(conn: psycopg.Connection[Any], account_no: str) -> int:
    row = conn.execute("SELECT id FROM account WHERE account_no = %s", [account_no.strip()]).fetchone()
    if row is None:
        raise KioskError("not_found", f"no account {account_no}", 404)
    return int(row[0])


def set_pin(conn: psycopg.Connection[Any], account_no: str, pin: str, actor: str) -> int:
    """Give the account a new PIN (replacing any old one); returns the account's id."""
    if not PIN_FORMAT.match(pin or ""):
        raise KioskError("pin_format", "a PIN is 4 to 8 digits")
    account_id = _account_id(conn, account_no)
    conn.execute(
        """INSERT INTO kiosk_pin (account_id, pin_hash, set_by) VALUES (%s, %s, %s)
           ON CONFLICT (account_id) DO UPDATE SET pin_hash = EXCLUDED.pin_hash, set_by = EXCLUDED.set_by,
                                                  set_at = clock_timestamp()""",
        [account_id, _hasher.hash(pin), actor],
    )
    return account_id


def clear_pin(conn: psycopg.Connection[Any], account_no: str) -> bool:
    """Remove the account's PIN: the kiosk answers nothing for it any more."""
    account_id = _account_id(conn, account_no)
    return conn.execute("DELETE FROM kiosk_pin WHERE account_id = %s", [account_id]).rowcount > 0


def check(conn: psycopg.Connection[Any], limits: Limits, account_no: str, pin: str, ip: str | None) -> Check:
    """Whether `pin` opens `account_no`, within the lockout limits; every call is recorded."""
    number = account_no.strip()[:64]
    window = timedelta(minutes=limits.lockout_min)
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('meterhub.kiosk'), hashtext(%s))", [number])
    failures, oldest = conn.execute(
        """SELECT count(*), min(at) FROM kiosk_attempt
            WHERE account_no = %(n)s AND NOT ok AND at > now() - %(w)s
              AND at > coalesce((SELECT max(at) FROM kiosk_attempt WHERE account_no = %(n)s AND ok), '-infinity')
              AND at > coalesce((SELECT p.set_at FROM kiosk_pin p JOIN account a ON a.id = p.account_id
                                  WHERE a.account_no = %(n)s), '-infinity')""",
        {"n": number, "w": window},
    ).fetchone() or (0, None)
    ip_failures = 0
    if ip:
        row = conn.execute(
            "SELECT count(*) FROM kiosk_attempt WHERE ip = %s AND NOT ok AND at > now() - %s", [ip, window]
        ).fetchone()
        ip_failures = int(row[0]) if row else 0

    def record(ok: bool) -> None:
        conn.execute("INSERT INTO kiosk_attempt (account_no, ip, ok) VALUES (%s, %s, %s)", [number, ip, ok])

    if failures >= limits.lockout_failures or ip_failures >= limits.ip_failures:
        record(False)
        retry = int(window.total_seconds())
        if oldest is not None and failures >= limits.lockout_failures:
            now = conn.execute("SELECT now()").fetchone()
            assert now is not None
            retry = max(1, int((oldest + window - now[0]).total_seconds()))
        return Check(False, "locked" if failures >= limits.lockout_failures else "ip_blocked", None, retry)
    row = conn.execute(
        """SELECT a.id, p.pin_hash FROM account a JOIN kiosk_pin p ON p.account_id = a.id
            WHERE a.account_no = %s AND a.status <> 'closed'""",
        [number],
    ).fetchone()
    if not _verify(row[1] if row else None, pin) or row is None:
        record(False)
        return Check(False, "wrong")
    record(True)
    return Check(True, "ok", int(row[0]))


def _verify(stored: str | None, pin: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY, pin[:64]) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class Reading:
    meter_no: str
    ts: datetime
    value: Decimal


def recent_readings(conn: psycopg.Connection[Any], account_id: int, count: int) -> list[Reading]:
    """The last `count` volume register readings of the account's meters, newest first."""
    rows = conn.execute(
        """SELECT m.meter_no, r.ts, r.value
             FROM meter m CROSS JOIN LATERAL (
                  SELECT ts, value FROM reading
                   WHERE meter_id = m.id AND channel = 'volume_m3' ORDER BY ts DESC LIMIT %(n)s) r
            WHERE m.account_id = %(a)s
            ORDER BY r.ts DESC LIMIT %(n)s""",
        {"a": account_id, "n": count},
    ).fetchall()
    return [Reading(str(r[0]), r[1], Decimal(r[2])) for r in rows]


@dataclass(frozen=True)
class PinRow:
    account_no: str
    set_by: str
    set_at: datetime
    failures: int
    locked: bool


def pins(conn: psycopg.Connection[Any], limits: Limits, q: str = "", limit: int = 50, offset: int = 0) -> list[PinRow]:
    """Accounts with a PIN (account number containing `q`), with the wrong answers of the current window."""
    rows = conn.execute(
        """SELECT a.account_no, p.set_by, p.set_at,
                  (SELECT count(*) FROM kiosk_attempt k
                    WHERE k.account_no = a.account_no AND NOT k.ok AND k.at > now() - %(w)s AND k.at > p.set_at
                      AND k.at > coalesce((SELECT max(at) FROM kiosk_attempt o
                                            WHERE o.account_no = a.account_no AND o.ok), '-infinity'))
             FROM kiosk_pin p JOIN account a ON a.id = p.account_id
            WHERE a.account_no ILIKE %(q)s
            ORDER BY a.account_no LIMIT %(limit)s OFFSET %(offset)s""",
        {
            "w": timedelta(minutes=limits.lockout_min),
            "q": "%" + q.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",
            "limit": limit,
            "offset": offset,
        },
    ).fetchall()
    return [PinRow(r[0], r[1], r[2], int(r[3]), int(r[3]) >= limits.lockout_failures) for r in rows]
