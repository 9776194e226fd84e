"""The review queue (抄表审核): list it, and accept, correct or estimate — singly or in bulk.

Every decision writes a new `billing_reading` version (superseding the previous one, if any; an approved
reading is never changed in place), a `reading_review_log` row with the values before and after, who and
why, and moves the queue row to its decided state. Decisions on many rows are one set-based statement.
The person deciding is the transaction's actor (`meterhub.actor`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from billing.consumption import RegisterParams
from billing.reading_store import DEFAULT_REGISTER_MAX
from meterhub.store import Store

STATUSES = ("pending", "accepted", "corrected", "estimated")
LITRE = Decimal("0.001")


class ReviewError(ValueError):
    """A decision that cannot be taken; the message says why."""


@dataclass(frozen=True)
class ReviewRow:
    id: int
    period: str
    account_id: int
    account_no: str
    meter_id: int
    meter_no: str
    bound_start: datetime
    bound_end: datetime
    candidate_source: str | None
    start_ts: datetime | None
    start_value: Decimal | None
    end_ts: datetime | None
    end_value: Decimal | None
    consumption_m3: Decimal | None
    read_in_period: bool
    flag_count: int
    flag_rules: list[str]
    worst_severity: str | None
    estimation_needed: bool
    estimation_reason: str | None
    estimate_m3: Decimal | None
    estimate_method: str | None
    status: str
    billing_reading_id: int | None
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str
    register_max: Decimal


_ROW_QUERY = """
SELECT r.id, r.period, r.account_id, a.account_no, r.meter_id, m.meter_no, r.bound_start, r.bound_end,
       r.candidate_source, r.start_ts, r.start_value, r.end_ts, r.end_value, r.consumption_m3, r.read_in_period,
       r.flag_count, r.flag_rules, r.worst_severity, r.estimation_needed, r.estimation_reason, r.estimate_m3,
       r.estimate_method, r.status, r.billing_reading_id, r.decided_by, r.decided_at, r.decision_reason,
       coalesce(m.register_max, mm.register_max, {register_max}) AS register_max
  FROM reading_review r
  JOIN account a ON a.id = r.account_id
  JOIN meter m ON m.id = r.meter_id
  LEFT JOIN meter_model mm ON mm.id = m.model_id
""".replace("{register_max}", DEFAULT_REGISTER_MAX)


def review_queue(
    store: Store,
    period: str,
    *,
    status: str | None = None,
    flagged: bool | None = None,
    rule_id: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[ReviewRow]:
    """Queue rows of a period in account order; `flagged` = has flags or needs an estimate."""
    where = ["r.period = %(period)s"]
    if status is not None:
        if status not in STATUSES:
            raise ReviewError(f"status must be one of {', '.join(STATUSES)}")
        where.append("r.status = %(status)s")
    if flagged is not None:
        where.append(("" if flagged else "NOT ") + "(r.flag_count > 0 OR r.estimation_needed)")
    if rule_id is not None:
        where.append("%(rule_id)s = ANY(r.flag_rules)")
    query = (
        f"{_ROW_QUERY} WHERE {' AND '.join(where)} ORDER BY a.account_no, m.meter_no LIMIT %(limit)s OFFSET %(offset)s"
    )
    params = {"period": period, "status": status, "rule_id": rule_id, "limit": limit, "offset": offset}
    with store.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return [ReviewRow(**row) for row in cur.execute(query, params).fetchall()]


def review_row(store: Store, review_id: int) -> ReviewRow:
    with store.connection() as conn:
        return _row(conn, review_id, lock=False)


def _row(conn: psycopg.Connection[Any], review_id: int, *, lock: bool = True) -> ReviewRow:
    query = _ROW_QUERY + " WHERE r.id = %s" + (" FOR UPDATE OF r" if lock else "")
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, [review_id]).fetchone()
    if row is None:
        raise ReviewError(f"no review row {review_id}")
    return ReviewRow(**row)


def review_log(store: Store, review_id: int) -> list[dict[str, Any]]:
    """The decisions taken on a queue row, oldest first."""
    with store.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM reading_review_log WHERE review_id = %s ORDER BY at, id", [review_id]
        ).fetchall()


# -- deciding -----------------------------------------------------------------------------------------------------

_DECISION_TABLE = """
CREATE TEMP TABLE review_decision (
    review_id      bigint PRIMARY KEY,
    action         text NOT NULL,
    status         text NOT NULL,
    kind           text NOT NULL,
    start_value    numeric(14, 3),
    end_value      numeric(14, 3) NOT NULL,
    end_ts         timestamptz NOT NULL,
    consumption_m3 numeric(14, 3) NOT NULL,
    reason         text NOT NULL
) ON COMMIT DROP
"""

_APPLY = """
WITH latest AS (
    SELECT DISTINCT ON (b.account_id, b.meter_id, b.period) b.*
      FROM billing_reading b
      JOIN reading_review r ON r.account_id = b.account_id AND r.meter_id = b.meter_id AND r.period = b.period
      JOIN review_decision d ON d.review_id = r.id
     ORDER BY b.account_id, b.meter_id, b.period, b.version DESC
), ins AS (
    INSERT INTO billing_reading (account_id, meter_id, period, period_start, period_end, start_value, end_value,
                                 end_ts, consumption_m3, kind, version, supersedes_id, reason, approved_by)
    SELECT r.account_id, r.meter_id, r.period, p.period_start, p.period_end, d.start_value, d.end_value,
           d.end_ts, d.consumption_m3, d.kind, coalesce(l.version, 0) + 1, l.id, d.reason, meterhub_actor()
      FROM review_decision d
      JOIN reading_review r ON r.id = d.review_id
      JOIN reading_period p ON p.period = r.period
      LEFT JOIN latest l ON l.account_id = r.account_id AND l.meter_id = r.meter_id AND l.period = r.period
    RETURNING id, account_id, meter_id, period, supersedes_id
), done AS (
    SELECT r.id AS review_id, ins.id AS billing_id, ins.supersedes_id, d.action, d.status, d.kind,
           d.start_value, d.end_value, d.end_ts, d.consumption_m3, d.reason,
           r.start_value AS c_start, r.end_value AS c_end, r.end_ts AS c_end_ts, r.consumption_m3 AS c_use
      FROM ins
      JOIN reading_review r ON r.account_id = ins.account_id AND r.meter_id = ins.meter_id AND r.period = ins.period
      JOIN review_decision d ON d.review_id = r.id
), logged AS (
    INSERT INTO reading_review_log (review_id, action, billing_reading_id, supersedes_id, old_values, new_values,
                                    reason)
    SELECT done.review_id, done.action, done.billing_id, done.supersedes_id,
           CASE WHEN l.id IS NULL
                THEN jsonb_build_object('kind', 'candidate', 'start_value', done.c_start, 'end_value', done.c_end,
                                        'end_ts', done.c_end_ts, 'consumption_m3', done.c_use)
                ELSE jsonb_build_object('billing_reading_id', l.id, 'version', l.version, 'kind', l.kind,
                                        'start_value', l.start_value, 'end_value', l.end_value,
                                        'end_ts', l.end_ts, 'consumption_m3', l.consumption_m3) END,
           jsonb_build_object('billing_reading_id', done.billing_id, 'kind', done.kind,
                              'start_value', done.start_value, 'end_value', done.end_value,
                              'end_ts', done.end_ts, 'consumption_m3', done.consumption_m3),
           done.reason
      FROM done LEFT JOIN latest l ON l.id = done.supersedes_id
    RETURNING 1
)
UPDATE reading_review r
   SET status = done.status, billing_reading_id = done.billing_id, decided_by = meterhub_actor(),
       decided_at = now(), decision_reason = done.reason
  FROM done
 WHERE r.id = done.review_id
RETURNING r.id, done.billing_id
"""


def _apply(
    conn: psycopg.Connection[Any], fill: Iterable[tuple[Any, ...]] | str, params: Sequence[Any] = ()
) -> dict[int, int]:
    """Apply the decisions (rows for `review_decision`, or an INSERT … SELECT filling it); review id → new
    billing reading id."""
    conn.execute(_DECISION_TABLE)
    if isinstance(fill, str):
        conn.execute(fill, params)
    else:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO review_decision VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", list(fill))
    rows = conn.execute(_APPLY).fetchall()
    return {int(r[0]): int(r[1]) for r in rows}


def _candidate_kind(row: ReviewRow) -> str:
    return "manual" if row.candidate_source == "manual" else "automatic"


def accept(store: Store, review_ids: Sequence[int], *, actor: str, reason: str = "") -> dict[int, int]:
    """Accept the candidates of pending rows as they are; review id → billing reading id. All or none: a row
    that is not pending or has no candidate (no reading, or a reset inside) refuses the whole call."""
    with store.transaction(actor=actor) as conn:
        decisions = []
        problems = []
        for review_id in sorted(set(review_ids)):
            row = _row(conn, review_id)
            if row.status != "pending":
                problems.append(f"{review_id}: already {row.status}")
            elif row.end_value is None or row.end_ts is None or row.consumption_m3 is None or not row.read_in_period:
                problems.append(f"{review_id}: no candidate reading ({row.estimation_reason}); estimate or correct")
            else:
                decisions.append(
                    (
                        review_id,
                        "accept",
                        "accepted",
                        _candidate_kind(row),
                        row.start_value,
                        row.end_value,
                        row.end_ts,
                        row.consumption_m3,
                        reason,
                    )
                )
        if problems:
            raise ReviewError("cannot accept: " + "; ".join(problems))
        return _apply(conn, decisions)


def accept_unflagged(
    store: Store, period: str, *, actor: str, allow_severities: Sequence[str] = ("info",), reason: str = ""
) -> int:
    """Accept every pending row of the period with a candidate, no estimate needed, and no flag worse than
    `allow_severities` (by default informational flags such as a rollover do not hold a row back). Returns
    how many were accepted."""
    fill = """
        INSERT INTO review_decision
        SELECT r.id, 'accept', 'accepted', CASE WHEN r.candidate_source = 'manual' THEN 'manual' ELSE 'automatic' END,
               r.start_value, r.end_value, r.end_ts, r.consumption_m3, %s
          FROM reading_review r
         WHERE r.period = %s AND r.status = 'pending' AND NOT r.estimation_needed
           AND r.read_in_period AND r.end_value IS NOT NULL AND r.consumption_m3 IS NOT NULL
           AND (r.worst_severity IS NULL OR r.worst_severity = ANY(%s))
           FOR UPDATE OF r"""
    with store.transaction(actor=actor) as conn:
        return len(_apply(conn, fill, [reason, period, list(allow_severities)]))


def use_between(start: Decimal, end: Decimal, register_max: Decimal, params: RegisterParams | None = None) -> Decimal:
    """Use from register `start` to `end`, through a rollover when the register wrapped."""
    if end >= start:
        return end - start
    params = params or RegisterParams()
    modulus = register_max + LITRE
    wrapped = end + modulus - start
    if wrapped <= modulus * Decimal(str(params.rollover_fraction)):
        return wrapped
    raise ReviewError(f"end value {end} is below start value {start} and not a rollover: give the consumption")


def _require_reason(reason: str) -> str:
    if not reason.strip():
        raise ReviewError("a reason is required")
    return reason.strip()


def correct(
    store: Store,
    review_id: int,
    *,
    actor: str,
    reason: str,
    end_value: Decimal,
    start_value: Decimal | None = None,
    end_ts: datetime | None = None,
    consumption_m3: Decimal | None = None,
) -> int:
    """Replace the reading with corrected values (any status; a decided row gets a new version). Consumption is
    `end - start` (through a rollover) unless given. Returns the new billing reading id."""
    reason = _require_reason(reason)
    if end_value < 0 or (consumption_m3 is not None and consumption_m3 < 0):
        raise ReviewError("values cannot be negative")
    with store.transaction(actor=actor) as conn:
        row = _row(conn, review_id)
        start = row.start_value if start_value is None else start_value
        if consumption_m3 is None:
            if start is None:
                raise ReviewError("no start value: give start_value or consumption_m3")
            consumption_m3 = use_between(start, end_value, row.register_max)
        at = end_ts or row.end_ts or row.bound_end
        decision = (review_id, "correct", "corrected", "corrected", start, end_value, at, consumption_m3, reason)
        return _apply(conn, [decision])[review_id]


def estimate_readings(
    store: Store,
    review_ids: Sequence[int],
    *,
    actor: str,
    reason: str = "",
    consumption_m3: Decimal | None = None,
) -> dict[int, int]:
    """Approve estimates: the computed one of each row (or `consumption_m3` for all given rows), ending at the
    end of the row's part of the period. The register end value is start + use, wrapped at the register's
    maximum. All or none; review id → billing reading id."""
    if consumption_m3 is not None and consumption_m3 < 0:
        raise ReviewError("consumption cannot be negative")
    with store.transaction(actor=actor) as conn:
        decisions, problems = [], []
        for review_id in sorted(set(review_ids)):
            row = _row(conn, review_id)
            use = row.estimate_m3 if consumption_m3 is None else consumption_m3
            if use is None:
                problems.append(f"{review_id}: no estimate available; give the consumption")
                continue
            if row.start_value is None:
                problems.append(f"{review_id}: no start value; correct it instead")
                continue
            modulus = row.register_max + LITRE
            end_value = (row.start_value + use) % modulus
            why = reason.strip() or f"estimated ({row.estimate_method or 'given by ' + actor})"
            decisions.append(
                (review_id, "estimate", "estimated", "estimated", row.start_value, end_value, row.bound_end, use, why)
            )
        if problems:
            raise ReviewError("cannot estimate: " + "; ".join(problems))
        return _apply(conn, decisions)
