"""Prepayment: account-based (balance in the ledger; warn, close, re-arm) and meter-based (credit on the
meter, top-ups with a purchase sequence, the meter's report reconciled against our records)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from meterhub import commands
from meterhub.command_settings import CommandSettings
from meterhub.store import Store

log = logging.getLogger(__name__)

ACTOR = "system:prepaid"


def account_balance(conn: psycopg.Connection[Any], account_id: int) -> Decimal | None:
    """Credit left on an account (positive = credit), from the billing ledger; None without a ledger.

    The ledger books what is owed as positive amounts and payments/prepayments as negative ones.
    """
    present = conn.execute("SELECT to_regclass('ledger_entry') IS NOT NULL").fetchone()
    if not present or not present[0]:
        return None
    row = conn.execute(
        "SELECT -coalesce(sum(amount), 0) FROM ledger_entry WHERE account_id = %s", [account_id]
    ).fetchone()
    assert row is not None
    return Decimal(row[0])


def check_accounts(
    store: Store, settings: CommandSettings | None = None, now: datetime | None = None, account_id: int | None = None
) -> dict[str, int]:
    """Prepaid accounts: warn on low credit, close (warning first, inside the rules) when credit is
    exhausted, and arm again after a top-up that clears the debt. Call after a top-up for one account."""
    settings = settings or store.settings.commands
    now = now or datetime.now(UTC)
    done = {"warned": 0, "closed": 0, "armed": 0}
    with store.connection() as conn:
        accounts = conn.execute(
            """SELECT a.id, m.id, m.meter_no, m.valve_state FROM account a JOIN meter m ON m.account_id = a.id
                WHERE a.billing_mode = 'prepaid_account' AND a.status = 'active' AND m.status = 'installed'
                  AND (%s::bigint IS NULL OR a.id = %s) ORDER BY a.id, m.id""",
            [account_id, account_id],
        ).fetchall()
        for acc_id, meter_id, meter_no, valve in accounts:
            balance = account_balance(conn, acc_id)
            if balance is None:
                return done
            if balance <= settings.low_credit_cny:
                warned_at = _last_warning(conn, meter_id, now - timedelta(days=30))
                # Low credit: warn once a day. Exhausted: warn once, then close after the lead time.
                if warned_at is None or (balance > 0 and warned_at < now - timedelta(days=1)):
                    _warn(store, meter_id, balance, now)
                    done["warned"] += 1
                    continue
                lead_ok = warned_at <= now - timedelta(hours=settings.warning_lead_h)
                closable = balance <= 0 and lead_ok and valve != "closed"
                if closable and not _pending(conn, meter_id, "valve_close") and _allowed(store, meter_no, now):
                    key = f"prepaid-close:{meter_id}:{warned_at.isoformat()}"
                    reason = f"credit exhausted ({balance})"
                    commands.request_command(
                        store, meter_no, "valve_close", user=ACTOR, reason=reason, purpose="prepaid_exhausted",
                        idempotency_key=key, now=now,
                    )  # fmt: skip
                    done["closed"] += 1
            if balance > 0 and valve == "closed":
                close_id = _last_prepaid_close(conn, meter_id)
                if close_id is not None and not _pending(conn, meter_id, "valve_open"):
                    commands.request_command(
                        store, meter_no, "valve_open", user=ACTOR, reason=f"top-up cleared the debt ({balance})",
                        purpose="prepaid_topup", idempotency_key=f"prepaid-open:{close_id}", now=now,
                    )  # fmt: skip
                    done["armed"] += 1
    return done


def _allowed(store: Store, meter_no: str, now: datetime) -> bool:
    return commands.would_refuse(store, meter_no, "valve_close", "prepaid_exhausted", now) is None


def _last_warning(conn: psycopg.Connection[Any], meter_id: int, since: datetime) -> datetime | None:
    row = conn.execute(
        "SELECT max(ts) FROM meter_event WHERE meter_id = %s AND kind = 'low_credit' AND source = 'prepaid' "
        "AND ts >= %s",
        [meter_id, since],
    ).fetchone()
    return row[0] if row else None


def _warn(store: Store, meter_id: int, balance: Decimal, now: datetime) -> None:
    with store.transaction(actor=ACTOR) as conn:
        conn.execute(
            """INSERT INTO meter_event (meter_id, ts, kind, severity, detail, source)
               VALUES (%s, %s, 'low_credit', 'warning', %s, 'prepaid') ON CONFLICT DO NOTHING""",
            [meter_id, now, Jsonb({"balance_cny": str(balance)})],
        )


def _pending(conn: psycopg.Connection[Any], meter_id: int, kind: str) -> bool:
    row = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM meter_command WHERE meter_id = %s AND kind = %s
                  AND state IN ('requested', 'awaiting_approval', 'queued', 'sent', 'unknown'))""",
        [meter_id, kind],
    ).fetchone()
    return bool(row and row[0])


def _last_prepaid_close(conn: psycopg.Connection[Any], meter_id: int) -> int | None:
    """The latest executed valve command, when it was a prepaid close (so we never open what a person shut)."""
    row = conn.execute(
        """SELECT id, kind, purpose FROM meter_command
            WHERE meter_id = %s AND kind IN ('valve_close', 'valve_open') AND state IN ('confirmed', 'reconciled')
            ORDER BY id DESC LIMIT 1""",
        [meter_id],
    ).fetchone()
    if row is None or row[1] != "valve_close" or row[2] != "prepaid_exhausted":
        return None
    return int(row[0])


def reconcile_meter_credit(conn: psycopg.Connection[Any], command_id: int) -> Decimal | None:
    """Compare the meter's reported cumulative purchases with the top-ups we booked; raise
    `credit_mismatch` when they differ. Returns the difference (meter − ours), None without a report."""
    row = conn.execute("SELECT meter_id, reply FROM meter_command WHERE id = %s", [command_id]).fetchone()
    if row is None or not row[1]:
        return None
    meter_id, reply = row
    reported = reply.get("purchased_cny", reply.get("cumulative_purchase_cny"))
    if reported is None:
        return None
    booked = conn.execute(
        "SELECT coalesce(sum(amount), 0) FROM meter_credit WHERE meter_id = %s", [meter_id]
    ).fetchone()
    assert booked is not None
    difference = Decimal(str(reported)) - Decimal(booked[0])
    if difference != 0:
        detail = {"reported_cny": str(reported), "booked_cny": str(booked[0]), "difference_cny": str(difference)}
        conn.execute(
            """INSERT INTO meter_event (meter_id, ts, kind, severity, detail, source)
               VALUES (%s, clock_timestamp(), 'credit_mismatch', 'warning', %s, 'prepaid') ON CONFLICT DO NOTHING""",
            [meter_id, json.dumps(detail)],
        )
    return difference
