"""Valve and credit commands: request, approve, cancel, supersede; rules, rate limits and the audit log.

These are the service functions the console's REST routes and the CLI call. They only write rows; the
collector's dispatcher (woken by NOTIFY on `meter_command`) sends them and writes the outcome back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from meterhub.command_rules import Rule, RuleContext, evaluate
from meterhub.command_settings import CommandSettings
from meterhub.store import Store

KINDS = ("valve_close", "valve_open", "credit")
PENDING = ("requested", "awaiting_approval", "queued")
FINAL = ("confirmed", "failed", "reconciled", "cancelled", "superseded", "refused")
SYSTEM_PREFIX = "system:"


class CommandError(Exception):
    """A request that cannot be taken; `code` is a short machine code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class PermissionDenied(CommandError):
    pass


class NotFound(CommandError):
    pass


@dataclass(frozen=True, slots=True)
class CommandView:
    id: int
    meter_no: str
    kind: str
    state: str
    reason_code: str | None
    purpose: str
    reason: str
    requested_by: str
    approved_by: str | None
    emergency: bool
    bulk_id: int | None
    amount: Decimal | None
    purchase_seq: int | None
    attempts: int
    requested_at: datetime
    finished_at: datetime | None
    reply: dict[str, Any] | None
    audit_id: int
    sent_kind: str | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass(frozen=True, slots=True)
class BulkView:
    id: int
    state: str
    size: int
    requested_by: str
    approved_by: str | None
    commands: list[CommandView]


_VIEW = """SELECT c.id, m.meter_no, c.kind, c.state, c.reason_code, c.purpose, c.reason, c.requested_by, c.approved_by,
                  c.emergency, c.bulk_id, c.amount, c.purchase_seq, c.attempts, c.requested_at, c.finished_at,
                  c.reply, c.audit_id, c.sent_kind
             FROM meter_command c JOIN meter m ON m.id = c.meter_id"""


# -- audit ----------------------------------------------------------------------------------------
def audit(
    conn: psycopg.Connection[Any],
    actor: str,
    action: str,
    object_type: str,
    object_id: str | int | None = None,
    detail: dict[str, Any] | None = None,
    ip: str | None = None,
) -> int:
    """Append one entry to the hash-chained audit log; returns its id."""
    row = conn.execute(
        """INSERT INTO audit_log (actor, action, object_type, object_id, detail, ip, seq, at, prev_hash, hash)
           VALUES (%s, %s, %s, %s, %s, %s, 0, now(), '', '') RETURNING id""",
        [
            actor,
            action,
            object_type,
            None if object_id is None else str(object_id),
            Jsonb(detail or {}, dumps=_dumps),
            ip,
        ],
    ).fetchone()
    assert row is not None
    return int(row[0])


def verify_audit(conn: psycopg.Connection[Any]) -> list[tuple[int, int, str]]:
    """(seq, id, problem) of every audit row whose hash or link does not add up; empty when intact."""
    return [(r[0], r[1], r[2]) for r in conn.execute("SELECT seq, id, problem FROM meterhub_audit_verify()")]


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str)


# -- requests -------------------------------------------------------------------------------------
def request_command(
    store: Store,
    meter_no: str,
    kind: str,
    *,
    user: str,
    reason: str,
    purpose: str = "other",
    amount: Decimal | None = None,
    idempotency_key: str | None = None,
    emergency: bool = False,
    ip: str | None = None,
    now: datetime | None = None,
) -> CommandView:
    """Ask for one command. Returns the command: queued, awaiting approval, or refused with a reason code.

    The same idempotency key returns the command it created the first time. Raises PermissionDenied
    when the user may not ask, NotFound for an unknown meter, CommandError for a malformed request.
    """
    if kind not in KINDS:
        raise CommandError("bad_kind", f"kind must be one of {', '.join(KINDS)}")
    if emergency and kind != "valve_close":
        raise CommandError("bad_kind", "only a close can be an emergency")
    if (kind == "credit") != (amount is not None):
        raise CommandError("bad_amount", "a credit command needs an amount, and only a credit command has one")
    if amount is not None and (not amount.is_finite() or amount <= 0 or amount != amount.quantize(Decimal("0.01"))):
        raise CommandError("bad_amount", f"amount must be positive with at most 2 decimals, got {amount}")
    if not reason.strip():
        raise CommandError("no_reason", "say why the command is needed")
    key = idempotency_key or uuid.uuid4().hex
    existing = _by_key(store, key)
    if existing is not None:
        return existing
    try:
        with store.transaction(actor=user) as conn:
            _require(conn, user, "emergency" if emergency else "request")
            command_id = _create(
                conn, store, meter_no, kind, user, reason, purpose, amount, key, emergency, ip, now, None, None
            )
    except psycopg.errors.UniqueViolation:
        found = _by_key(store, key)  # the same request raced with itself
        if found is None:
            raise
        return found
    return get_command(store, command_id)


def emergency_close(store: Store, meter_no: str, *, user: str, reason: str, ip: str | None = None) -> CommandView:
    """One step, no rules, no approval: for users with the `emergency` permission (a leak, a fire)."""
    return request_command(
        store, meter_no, "valve_close", user=user, reason=reason, purpose="emergency", emergency=True, ip=ip
    )


def request_bulk(
    store: Store,
    meter_nos: Sequence[str],
    kind: str,
    *,
    user: str,
    reason: str,
    purpose: str = "other",
    ip: str | None = None,
    settings: CommandSettings | None = None,
    now: datetime | None = None,
    idempotency_key: str | None = None,
) -> BulkView:
    """Many meters at once (a community, an arrears list); at `bulk_approval_size` or more a second
    person approves before anything is sent. Each meter's command is still checked against the rules.

    The same idempotency key returns the bulk request it created the first time; the key reused for a
    different request (another kind or other meters) is refused with `idempotency_key_reused`."""
    if kind not in ("valve_close", "valve_open"):
        raise CommandError("bad_kind", "bulk commands are valve_close or valve_open")
    if not meter_nos:
        raise CommandError("empty", "no meters")
    unique_nos = list(dict.fromkeys(meter_nos))
    if idempotency_key is not None:
        existing = _bulk_by_key(store, idempotency_key, kind, unique_nos)
        if existing is not None:
            return existing
    settings = settings or store.settings.commands
    needs_approval = len(meter_nos) >= settings.bulk_approval_size
    try:
        with store.transaction(actor=user) as conn:
            _require(conn, user, "bulk")
            bulk_id = _next_id(conn, "command_bulk")
            detail = {"kind": kind, "purpose": purpose, "reason": reason, "size": len(meter_nos)}
            audit_id = audit(conn, user, "command.bulk_request", "command_bulk", bulk_id, detail, ip)
            conn.execute(
                """INSERT INTO command_bulk (id, kind, purpose, reason, size, state, requested_by, audit_id,
                                             idempotency_key)
                   OVERRIDING SYSTEM VALUE VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                [
                    bulk_id,
                    kind,
                    purpose,
                    reason,
                    len(meter_nos),
                    "awaiting_approval" if needs_approval else "released",
                    user,
                    audit_id,
                    idempotency_key,
                ],
            )
            _create_bulk_members(conn, store, unique_nos, kind, user, reason, purpose, ip, now, bulk_id, audit_id,
                                 needs_approval)  # fmt: skip
    except psycopg.errors.UniqueViolation:
        found = _bulk_by_key(store, idempotency_key, kind, unique_nos) if idempotency_key else None
        if found is None:  # not the same request racing with itself
            raise
        return found
    return get_bulk(store, bulk_id)


def _create_bulk_members(
    conn: psycopg.Connection[Any],
    store: Store,
    meter_nos: Sequence[str],
    kind: str,
    user: str,
    reason: str,
    purpose: str,
    ip: str | None,
    now: datetime | None,
    bulk_id: int,
    audit_id: int,
    needs_approval: bool,
) -> None:
    for meter_no in meter_nos:
        _create(
            conn,
            store,
            meter_no,
            kind,
            user,
            reason,
            purpose,
            None,
            f"bulk:{bulk_id}:{meter_no}",
            False,
            ip,
            now,
            bulk_id,
            audit_id,
            needs_approval,
        )


def _bulk_by_key(store: Store, key: str, kind: str, meter_nos: Sequence[str]) -> BulkView | None:
    with store.connection() as conn:
        row = conn.execute("SELECT id, kind FROM command_bulk WHERE idempotency_key = %s", [key]).fetchone()
    if row is None:
        return None
    found = get_bulk(store, int(row[0]))
    if row[1] != kind or sorted(c.meter_no for c in found.commands) != sorted(meter_nos):
        raise CommandError("idempotency_key_reused", f"this idempotency key was used for bulk request {row[0]}")
    return found


def approve(store: Store, command_id: int, *, user: str, ip: str | None = None) -> CommandView:
    """Release a command awaiting approval; the person who asked cannot approve it."""
    with store.transaction(actor=user) as conn:
        _require(conn, user, "approve")
        row = conn.execute(
            "SELECT requested_by, state, bulk_id FROM meter_command WHERE id = %s FOR UPDATE", [command_id]
        ).fetchone()
        if row is None:
            raise NotFound("no_command", f"no command {command_id}")
        if row[2] is not None:
            raise CommandError("bulk_member", f"command {command_id} belongs to bulk {row[2]}: approve the bulk")
        if row[0] == user:
            raise PermissionDenied("requester_cannot_approve", "a second person must approve")
        if row[1] != "awaiting_approval":
            raise CommandError("not_awaiting_approval", f"command {command_id} is {row[1]}")
        audit(conn, user, "command.approve", "meter_command", command_id, {}, ip)
        conn.execute(
            "UPDATE meter_command SET state = 'queued', approved_by = %s, queued_at = now() WHERE id = %s",
            [user, command_id],
        )
    return get_command(store, command_id)


def approve_bulk(store: Store, bulk_id: int, *, user: str, ip: str | None = None, reject: bool = False) -> BulkView:
    """Approve (or reject) a bulk request: its waiting commands are queued (or cancelled)."""
    with store.transaction(actor=user) as conn:
        _require(conn, user, "approve")
        row = conn.execute(
            "SELECT requested_by, state FROM command_bulk WHERE id = %s FOR UPDATE", [bulk_id]
        ).fetchone()
        if row is None:
            raise NotFound("no_bulk", f"no bulk request {bulk_id}")
        if row[0] == user:
            raise PermissionDenied("requester_cannot_approve", "a second person must approve")
        if row[1] != "awaiting_approval":
            raise CommandError("not_awaiting_approval", f"bulk {bulk_id} is {row[1]}")
        audit(conn, user, "command.bulk_reject" if reject else "command.bulk_approve", "command_bulk", bulk_id, {}, ip)
        conn.execute(
            "UPDATE command_bulk SET state = %s, approved_by = %s, decided_at = now() WHERE id = %s",
            ["rejected" if reject else "approved", user, bulk_id],
        )
        if reject:
            conn.execute(
                """UPDATE meter_command SET state = 'cancelled', reason_code = 'rejected', finished_at = now()
                    WHERE bulk_id = %s AND state = 'awaiting_approval'""",
                [bulk_id],
            )
        else:
            conn.execute(
                """UPDATE meter_command SET state = 'queued', approved_by = %s, queued_at = now()
                    WHERE bulk_id = %s AND state = 'awaiting_approval'""",
                [user, bulk_id],
            )
    return get_bulk(store, bulk_id)


def cancel(store: Store, command_id: int, *, user: str, reason: str, ip: str | None = None) -> CommandView:
    """Withdraw a command that has not been sent yet."""
    with store.transaction(actor=user) as conn:
        _require(conn, user, "cancel")
        row = conn.execute("SELECT state FROM meter_command WHERE id = %s FOR UPDATE", [command_id]).fetchone()
        if row is None:
            raise NotFound("no_command", f"no command {command_id}")
        if row[0] not in PENDING:
            raise CommandError(
                "not_pending", f"command {command_id} is {row[0]}; only unsent commands can be cancelled"
            )
        audit(conn, user, "command.cancel", "meter_command", command_id, {"reason": reason}, ip)
        conn.execute(
            "UPDATE meter_command SET state = 'cancelled', reason_code = 'cancelled_by_user', finished_at = now() "
            "WHERE id = %s",
            [command_id],
        )
    return get_command(store, command_id)


# -- reading --------------------------------------------------------------------------------------
def get_command(store: Store, command_id: int) -> CommandView:
    with store.connection() as conn:
        row = conn.execute(_VIEW + " WHERE c.id = %s", [command_id]).fetchone()
    if row is None:
        raise NotFound("no_command", f"no command {command_id}")
    return CommandView(*row)


def list_commands(
    store: Store, meter_no: str | None = None, state: str | None = None, limit: int = 100
) -> list[CommandView]:
    with store.connection() as conn:
        rows = conn.execute(
            _VIEW + " WHERE (%(m)s::text IS NULL OR m.meter_no = %(m)s) AND (%(s)s::text IS NULL OR c.state = %(s)s)"
            " ORDER BY c.id DESC LIMIT %(n)s",
            {"m": meter_no, "s": state, "n": limit},
        ).fetchall()
    return [CommandView(*row) for row in rows]


def get_bulk(store: Store, bulk_id: int) -> BulkView:
    with store.connection() as conn:
        row = conn.execute(
            "SELECT id, state, size, requested_by, approved_by FROM command_bulk WHERE id = %s", [bulk_id]
        ).fetchone()
        if row is None:
            raise NotFound("no_bulk", f"no bulk request {bulk_id}")
        commands = [CommandView(*r) for r in conn.execute(_VIEW + " WHERE c.bulk_id = %s ORDER BY c.id", [bulk_id])]
    return BulkView(row[0], row[1], row[2], row[3], row[4], commands)


# -- internals ------------------------------------------------------------------------------------
def _by_key(store: Store, key: str) -> CommandView | None:
    with store.connection() as conn:
        row = conn.execute(_VIEW + " WHERE c.idempotency_key = %s", [key]).fetchone()
    return CommandView(*row) if row else None


def _next_id(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id'))", [table]).fetchone()
    assert row is not None
    return int(row[0])


def _require(conn: psycopg.Connection[Any], user: str, permission: str) -> None:
    """Automatic actors (system:…) act for meterhub itself; people need an active account and the permission."""
    if user.startswith(SYSTEM_PREFIX):
        return
    row = conn.execute(
        """SELECT u.active, EXISTS (SELECT 1 FROM role_permission p WHERE p.role = u.role AND p.permission = %s)
             FROM staff_user u WHERE u.username = %s""",
        ["command." + permission, user],
    ).fetchone()
    if row is None or not row[0]:
        raise PermissionDenied("unknown_user", f"{user!r} is not an active user")
    if not row[1]:
        raise PermissionDenied("not_permitted", f"{user!r} may not {permission} commands")


def _rate_limited(conn: psycopg.Connection[Any], user: str) -> bool:
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('meterhub.command_rate'), hashtext(%s))", [user])
    row = conn.execute(
        """SELECT l.max_commands,
                  (SELECT count(*) FROM meter_command c
                    WHERE c.requested_by = %(u)s AND c.bulk_id IS NULL AND c.state <> 'refused'
                      AND c.requested_at > now() - make_interval(secs => l.window_s))
                + (SELECT count(*) FROM command_bulk b
                    WHERE b.requested_by = %(u)s AND b.requested_at > now() - make_interval(secs => l.window_s))
             FROM command_rate_limit l WHERE l.username IN (%(u)s, '*')
            ORDER BY l.username = '*' LIMIT 1""",
        {"u": user},
    ).fetchone()
    return row is not None and row[1] >= row[0]


def load_rules(conn: psycopg.Connection[Any]) -> list[Rule]:
    return [Rule(r[0], r[1]) for r in conn.execute("SELECT code, params FROM command_rule WHERE enabled ORDER BY code")]


def _create(
    conn: psycopg.Connection[Any],
    store: Store,
    meter_no: str,
    kind: str,
    user: str,
    reason: str,
    purpose: str,
    amount: Decimal | None,
    key: str,
    emergency: bool,
    ip: str | None,
    now: datetime | None,
    bulk_id: int | None,
    bulk_audit_id: int | None,
    needs_approval: bool = False,
) -> int:
    meter = meter_facts(conn, meter_no, lock=True)
    if meter is None:
        raise NotFound("no_meter", f"no meter {meter_no}")
    refusal: str | None
    if bulk_id is None and not emergency and not user.startswith(SYSTEM_PREFIX) and _rate_limited(conn, user):
        refusal = "rate_limited"
    else:
        refusal = _refusal(conn, store, meter, kind, purpose, emergency, now)
    command_id = _next_id(conn, "meter_command")
    state = "refused" if refusal else ("awaiting_approval" if needs_approval else "queued")
    detail: dict[str, Any] = {"meter_no": meter_no, "kind": kind, "purpose": purpose, "reason": reason}
    if amount is not None:
        detail["amount"] = str(amount)
    if refusal:
        detail["refused"] = refusal
    if bulk_audit_id is None:
        action = "command.emergency_close" if emergency else "command.request"
        audit_id = audit(conn, user, action, "meter_command", command_id, detail, ip)
    else:
        audit_id = bulk_audit_id
    sequence = None
    if kind == "credit" and state != "refused":
        seq_row = conn.execute(
            """INSERT INTO meter_purchase_seq AS s (meter_id, last_seq) VALUES (%s, 1)
               ON CONFLICT (meter_id) DO UPDATE SET last_seq = s.last_seq + 1 RETURNING last_seq""",
            [meter["id"]],
        ).fetchone()
        assert seq_row is not None
        sequence = seq_row[0]
    conn.execute(
        """INSERT INTO meter_command (id, meter_id, kind, state, reason_code, purpose, reason, requested_by, emergency,
                                      bulk_id, idempotency_key, correlation_id, amount, purchase_seq, audit_id,
                                      queued_at, finished_at)
           OVERRIDING SYSTEM VALUE
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                   CASE WHEN %s = 'queued' THEN now() END, CASE WHEN %s = 'refused' THEN now() END)""",
        [
            command_id,
            meter["id"],
            kind,
            state,
            refusal,
            purpose,
            reason,
            user,
            emergency,
            bulk_id,
            key,
            f"c{command_id}-{uuid.uuid4().hex[:8]}",
            amount,
            sequence,
            audit_id,
            state,
            state,
        ],
    )
    if state != "refused" and kind in ("valve_close", "valve_open"):
        # A later valve command replaces what is still waiting for the same meter (an open cancels a queued close).
        conn.execute(
            """UPDATE meter_command SET state = 'superseded', superseded_by = %s, reason_code = 'superseded',
                      finished_at = now()
                WHERE meter_id = %s AND id <> %s AND kind IN ('valve_close', 'valve_open') AND state = ANY(%s)""",
            [command_id, meter["id"], command_id, list(PENDING)],
        )
    return command_id


def _refusal(
    conn: psycopg.Connection[Any],
    store: Store,
    meter: dict[str, Any],
    kind: str,
    purpose: str,
    emergency: bool,
    now: datetime | None,
) -> str | None:
    """The reason code that refuses this command for this meter (master data, then rules), or None."""
    if meter["status"] != "installed":
        return "meter_not_installed"
    if kind != "credit" and meter["has_valve"] is False:
        return "no_valve"
    if kind == "credit" and not meter["prepaid"]:
        return "not_prepaid_meter"
    local = (now or datetime.now(UTC)).astimezone(ZoneInfo(store.settings.timezone))
    calendar = conn.execute("SELECT kind FROM command_calendar WHERE day = %s", [local.date()]).fetchone()
    context = RuleContext(
        kind=kind,
        purpose=purpose,
        emergency=emergency,
        now=local,
        calendar_kind=calendar[0] if calendar else None,
        customer_protected=meter["protected"],
        bill_disputed=meter["disputed"],
        notice_served_at=meter["notice"],
    )
    refused = evaluate(load_rules(conn), context)
    return refused[0] if refused else None


def meter_facts(conn: psycopg.Connection[Any], meter_no: str, lock: bool = False) -> dict[str, Any] | None:
    """What the rules need to know about a meter, its account and its customer."""
    query = """SELECT m.id, m.meter_no, m.status, m.prepaid, m.account_id, m.valve_state, mm.has_valve,
                      coalesce(cu.protected, false) AS protected, coalesce(a.bill_disputed, false) AS disputed,
                      (SELECT max(n.served_at) FROM command_notice n WHERE n.account_id = m.account_id) AS notice
                 FROM meter m LEFT JOIN meter_model mm ON mm.id = m.model_id
                 LEFT JOIN account a ON a.id = m.account_id LEFT JOIN customer cu ON cu.id = a.customer_id
                WHERE m.meter_no = %s"""
    return (
        conn.cursor(row_factory=dict_row).execute(query + (" FOR UPDATE OF m" if lock else ""), [meter_no]).fetchone()
    )


def would_refuse(
    store: Store, meter_no: str, kind: str, purpose: str = "other", now: datetime | None = None
) -> str | None:
    """The reason code a command would be refused with now, without creating it (for automatic actions)."""
    with store.connection() as conn:
        meter = meter_facts(conn, meter_no)
        if meter is None:
            raise NotFound("no_meter", f"no meter {meter_no}")
        return _refusal(conn, store, meter, kind, purpose, False, now)
