"""Passwords, sessions, login throttling and API tokens: the parts of access that touch the store."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from meterhub.console_settings import ConsoleSettings

# argon2id with the library's defaults (RFC 9106 low-memory profile: t=3, m=64 MiB, p=4).
_hasher = PasswordHasher()
# Verified against when the user name is unknown, so that both cases take the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))

SESSION_COOKIE = "mh_session"
TOKEN_PREFIX = "mh_"


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise ValueError("a password needs at least 8 characters")
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)


def token_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is asking: a person with a session, or a program with an API token of a person."""

    user_id: int
    username: str
    display_name: str
    role: str
    permissions: frozenset[str]
    area_ids: frozenset[int] | None  # None: not limited to areas
    via: Literal["session", "token"]
    csrf_token: str | None = None
    session_hash: str | None = None
    language: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    def covers_area(self, area_id: int | None) -> bool:
        """Whether an object in `area_id` is within this user's areas (objects with no area: only if unlimited)."""
        if self.area_ids is None:
            return True
        return area_id is not None and area_id in self.area_ids


def _principal(conn: psycopg.Connection[Any], user_id: int, via: Literal["session", "token"], **kw: Any) -> Principal:
    row = conn.execute(
        """SELECT u.username, u.display_name, u.role, u.language,
                  coalesce(array(SELECT p.permission FROM role_permission p WHERE p.role = u.role), '{}')
             FROM staff_user u WHERE u.id = %s AND u.active""",
        [user_id],
    ).fetchone()
    if row is None:
        raise LookupError("inactive user")
    areas = [
        r[0]
        for r in conn.execute(
            """WITH RECURSIVE a AS (SELECT area_id AS id FROM staff_area WHERE user_id = %s
                                    UNION SELECT c.id FROM area c JOIN a ON c.parent_id = a.id)
               SELECT id FROM a""",
            [user_id],
        )
    ]
    has_limit = conn.execute("SELECT EXISTS (SELECT 1 FROM staff_area WHERE user_id = %s)", [user_id]).fetchone()
    limited = bool(has_limit and has_limit[0])
    return Principal(
        user_id=user_id,
        username=row[0],
        display_name=row[1],
        role=row[2],
        language=row[3],
        permissions=frozenset(row[4]),
        area_ids=frozenset(areas) if limited else None,
        via=via,
        **kw,
    )


# -- login ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoginResult:
    ok: bool
    reason: Literal["ok", "bad_credentials", "locked", "ip_blocked"]
    user_id: int | None = None
    retry_after_s: int = 0


def attempt_login(
    conn: psycopg.Connection[Any], settings: ConsoleSettings, username: str, password: str, ip: str | None
) -> LoginResult:
    """Check a login against lockouts and the stored hash; every attempt is recorded."""
    window = timedelta(minutes=settings.lockout_min)
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('meterhub.login'), hashtext(%s))", [username.lower()])
    failures, oldest = conn.execute(
        """SELECT count(*), min(at) FROM login_attempt
            WHERE lower(username) = lower(%(u)s) AND NOT ok AND at > now() - %(w)s
              AND at > coalesce((SELECT max(at) FROM login_attempt
                                  WHERE lower(username) = lower(%(u)s) AND ok), '-infinity')""",
        {"u": username, "w": window},
    ).fetchone() or (0, None)
    ip_failures = 0
    if ip:
        row = conn.execute(
            "SELECT count(*) FROM login_attempt WHERE ip = %s AND NOT ok AND at > now() - %s", [ip, window]
        ).fetchone()
        ip_failures = int(row[0]) if row else 0

    def record(ok: bool) -> None:
        conn.execute("INSERT INTO login_attempt (username, ip, ok) VALUES (%s, %s, %s)", [username[:64], ip, ok])

    if failures >= settings.lockout_failures or ip_failures >= settings.ip_failures:
        record(False)
        retry = int(window.total_seconds())
        if oldest is not None and failures >= settings.lockout_failures:
            now = conn.execute("SELECT now()").fetchone()
            assert now is not None
            retry = max(1, int((oldest + window - now[0]).total_seconds()))
        return LoginResult(False, "locked" if failures >= settings.lockout_failures else "ip_blocked", None, retry)
    user = conn.execute(
        "SELECT id, password_hash FROM staff_user WHERE lower(username) = lower(%s) AND active", [username]
    ).fetchone()
    if not verify_password(user[1] if user else None, password) or user is None:
        record(False)
        if settings.failure_delay_s:
            time.sleep(settings.failure_delay_s)
        return LoginResult(False, "bad_credentials")
    record(True)
    if needs_rehash(user[1]):
        conn.execute("UPDATE staff_user SET password_hash = %s WHERE id = %s", [_hasher.hash(password), user[0]])
    return LoginResult(True, "ok", int(user[0]))


def set_password(conn: psycopg.Connection[Any], user_id: int, password: str, *, end_sessions: bool = True) -> None:
    conn.execute(
        "UPDATE staff_user SET password_hash = %s, password_changed_at = now() WHERE id = %s",
        [hash_password(password), user_id],
    )
    if end_sessions:
        end_sessions_of(conn, user_id, "password")


# -- sessions ---------------------------------------------------------------------------------------
def create_session(conn: psycopg.Connection[Any], user_id: int, ip: str | None, user_agent: str) -> str:
    """A new session (a new token at every login); returns the cookie value."""
    token = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO web_session (token_hash, user_id, csrf_token, ip, user_agent) VALUES (%s, %s, %s, %s, %s)",
        [token_key(token), user_id, secrets.token_urlsafe(32), ip, user_agent[:300]],
    )
    return token


def load_session(conn: psycopg.Connection[Any], settings: ConsoleSettings, token: str) -> Principal | None:
    """The principal of a live session, touching it; None (and the session ended) when it has timed out."""
    key = token_key(token)
    row = conn.execute(
        """SELECT s.user_id, s.csrf_token, u.active,
                  s.last_seen < now() - %s AS idle, s.created_at < now() - %s AS expired
             FROM web_session s JOIN staff_user u ON u.id = s.user_id
            WHERE s.token_hash = %s AND s.ended_at IS NULL""",
        [timedelta(minutes=settings.session_idle_min), timedelta(hours=settings.session_max_h), key],
    ).fetchone()
    if row is None:
        return None
    user_id, csrf, active, idle, expired = row
    reason = "disabled" if not active else "expired" if expired else "idle" if idle else None
    if reason:
        conn.execute(
            "UPDATE web_session SET ended_at = now(), end_reason = %s WHERE token_hash = %s", [reason, key]
        )
        return None
    conn.execute("UPDATE web_session SET last_seen = now() WHERE token_hash = %s", [key])
    try:
        return _principal(conn, int(user_id), "session", csrf_token=csrf, session_hash=key)
    except LookupError:
        return None


def end_session(conn: psycopg.Connection[Any], session_hash: str, reason: str = "logout") -> None:
    conn.execute(
        "UPDATE web_session SET ended_at = now(), end_reason = %s WHERE token_hash = %s AND ended_at IS NULL",
        [reason, session_hash],
    )


def end_sessions_of(conn: psycopg.Connection[Any], user_id: int, reason: str = "logout_all") -> int:
    cur = conn.execute(
        "UPDATE web_session SET ended_at = now(), end_reason = %s WHERE user_id = %s AND ended_at IS NULL",
        [reason, user_id],
    )
    return cur.rowcount


# -- API tokens -------------------------------------------------------------------------------------
def create_token(
    conn: psycopg.Connection[Any], user_id: int, name: str, expires_at: datetime | None = None
) -> tuple[int, str]:
    """A new API token; the secret is returned once and only its hash is kept."""
    prefix = secrets.token_hex(4)
    token = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = conn.execute(
        """INSERT INTO api_token (user_id, name, prefix, token_hash, expires_at)
           VALUES (%s, %s, %s, %s, %s) RETURNING id""",
        [user_id, name, prefix, token_key(token), expires_at],
    ).fetchone()
    assert row is not None
    return int(row[0]), token


def load_token(conn: psycopg.Connection[Any], token: str) -> Principal | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = conn.execute(
        """UPDATE api_token SET last_used_at = now()
            WHERE token_hash = %s AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
        RETURNING user_id, id""",
        [token_key(token)],
    ).fetchone()
    if row is None:
        return None
    try:
        return _principal(conn, int(row[0]), "token", extra={"token_id": int(row[1])})
    except LookupError:
        return None
