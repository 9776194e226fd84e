"""Customers and accounts (户号): search, opening an account (开户), edits, transfer of ownership (过户),
renaming a customer (更名), changing an account's usage type (改用气性质), locking and unlocking (锁定/解锁),
and the history of every change.

Every action is one transaction with the person as `meterhub.actor`, so the change_history rows written by
the triggers name them. An `account_action` row adds what the columns cannot say: the action, its reason,
its effective date, and the change_history rows it wrote (`history_ids`). A refused action raises
`AccountError` before anything is written, or inside the transaction, which then rolls back.

`areas` (the ids of the areas a person is limited to, sub-areas included; None when not limited) restricts
every function to accounts whose community lies in those areas; an account without a community is outside
every limited person's areas.

Usage types and billing: `account.usage_type_id` is the type in force now, and the bill run prices an
account's consumption with its meters' usage type, else the account's (billing.bill_run). A change
therefore also moves the account's meters that carried the old type; meters with a type of their own keep
it. The change is recorded with its date in `account_usage_type_change`; it may not reach back into
periods already billed, nor lie in the future.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from meterhub.store import Store

KINDS = ("person", "organisation")
BILLING_MODES = ("postpaid", "prepaid_account", "prepaid_meter")
STATUSES = ("active", "locked", "suspended", "closed")
SEARCH_FIELDS = ("account_no", "card_no", "customer_no", "name", "phone", "id_number", "address", "community")
ACCOUNT_EDITABLE = ("address", "community", "card_no")
CUSTOMER_EDITABLE = ("phone", "id_number", "customer_address", "household_size", "protected", "note")
EDITABLE = ACCOUNT_EDITABLE + CUSTOMER_EDITABLE

_NUMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_PHONE = re.compile(r"^[0-9+][0-9 ()+-]{0,29}$")
_ID_NUMBER = re.compile(r"^[0-9A-Za-z]{1,30}$")
_RESIDENT_ID = re.compile(r"^[0-9]{17}[0-9X]$")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
MAX_NAME = 100
MAX_ADDRESS = 200
MAX_NOTE = 500
MAX_REASON = 500
# The order of an action's changes: the account first, then its customer, then its meters.
_TABLE_ORDER = {"account": 0, "customer": 1, "meter": 2}
# Columns of the change history that say nothing to a person.
_HIDDEN_COLUMNS = frozenset({"id", "created_at", "updated_at"})


class AccountError(ValueError):
    """A refused action; `field` names the input at fault, `params` fill the message's placeholders."""

    def __init__(self, code: str, message: str, *, field: str | None = None, status: int = 400, **params: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status
        self.params = params


def _invalid(field: str, code: str, message: str, **params: Any) -> AccountError:
    return AccountError(code, message, field=field, status=422, **params)


# -- inputs -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CustomerInput:
    """A new customer, as given when opening an account or transferring one to somebody new."""

    name: str
    kind: str = "person"
    phone: str = ""
    id_number: str = ""
    address: str = ""
    household_size: int = 3
    protected: bool = False
    note: str = ""


@dataclass(frozen=True)
class OpenAccount:
    """开户: an existing customer (`customer_no`) or a new one (`customer`), and the account's facts."""

    usage_type: str  # usage type code
    community: str | None = None  # community code
    address: str = ""
    account_no: str = ""  # blank: a number is generated
    billing_mode: str = "postpaid"
    card_no: str = ""
    opened_on: date | None = None  # default: today
    customer_no: str = ""
    customer: CustomerInput | None = None


# -- views ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchRow:
    account_no: str
    status: str
    card_no: str | None
    customer_no: str
    name: str
    phone: str
    address: str
    community: str | None
    usage_type: str
    billing_mode: str


@dataclass(frozen=True)
class SearchResult:
    rows: list[SearchRow]
    page: int
    size: int
    has_more: bool


@dataclass(frozen=True)
class CustomerView:
    id: int
    customer_no: str
    name: str
    kind: str
    phone: str
    id_number: str
    address: str
    household_size: int
    protected: bool
    note: str
    created_at: datetime


@dataclass(frozen=True)
class MeterView:
    meter_no: str
    status: str
    valve_state: str
    usage_type: str | None  # the meter's own usage type code; None: the account's
    usage_type_name: str | None
    install_date: date | None
    last_seen_at: datetime | None
    last_volume_m3: Decimal | None


@dataclass(frozen=True)
class GroupView:
    """关联用户: the accounts paid together with this one."""

    id: int
    name: str
    accounts: list[str]


@dataclass(frozen=True)
class AccountView:
    id: int
    account_no: str
    status: str
    billing_mode: str
    card_no: str | None
    address: str
    opened_on: date
    closed_on: date | None
    bill_disputed: bool
    community: str | None
    community_name: str | None
    area_id: int | None
    area_name: str | None
    usage_type: str
    usage_type_name: str
    customer: CustomerView
    meters: list[MeterView]
    other_accounts: list[str]  # the customer's other accounts
    group: GroupView | None
    billed_until: date | None  # the end (exclusive) of the account's latest bill


@dataclass(frozen=True)
class Change:
    """One column of one row: `old` and `new` as stored (JSON values), `*_text` with ids named."""

    table: str
    row_id: int
    row_label: str
    op: str  # insert, update, delete
    field: str
    old: Any
    new: Any
    old_text: str | None
    new_text: str | None


@dataclass(frozen=True)
class HistoryEntry:
    """An action (kind: open, edit, transfer, …) with the changes it made, or a change made outside the
    account services (kind: insert, update, delete)."""

    at: datetime
    actor: str
    kind: str
    reason: str
    effective_on: date | None
    detail: dict[str, Any]
    changes: list[Change]


@dataclass(frozen=True)
class ActionResult:
    account_no: str
    action_id: int | None  # None: nothing changed
    kind: str
    changed: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


# -- validation -----------------------------------------------------------------------------------------
def _text(value: str | None, field: str, limit: int, *, required: bool = False) -> str:
    text = (value or "").strip()
    if required and not text:
        raise _invalid(field, "required", f"{field} is required")
    if len(text) > limit:
        raise _invalid(field, "too_long", f"{field} is longer than {limit} characters", limit=limit)
    return text


def _number(value: str | None, field: str) -> str:
    text = (value or "").strip()
    if text and not _NUMBER.match(text):
        raise _invalid(field, "bad_number", f"{field} {text!r}: letters, digits, '-' and '_', at most 32")
    return text


def _phone(value: str | None) -> str:
    text = (value or "").strip()
    if text and not _PHONE.match(text):
        raise _invalid("phone", "bad_phone", f"phone {text!r}: digits, spaces, + - ( ), at most 30")
    return text


def _id_number(value: str | None) -> str:
    """An identity number; an 18-character mainland resident ID must carry its right check character."""
    text = (value or "").strip().upper()
    if not text:
        return ""
    if not _ID_NUMBER.match(text):
        raise _invalid("id_number", "bad_id_number", f"id number {text!r}: letters and digits, at most 30")
    if _RESIDENT_ID.match(text):
        total = sum(int(d) * w for d, w in zip(text[:17], _ID_WEIGHTS, strict=True))
        if _ID_CHECK[total % 11] != text[17]:
            raise _invalid("id_number", "bad_id_check", f"id number {text}: the check character is wrong")
    return text


def _household(value: Any) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise _invalid("household_size", "bad_household", "household size: a whole number from 1 to 99") from None
    if not 1 <= size <= 99:
        raise _invalid("household_size", "bad_household", "household size: a whole number from 1 to 99")
    return size


def _reason(value: str | None) -> str:
    return _text(value, "reason", MAX_REASON, required=True)


def _clean_customer(customer: CustomerInput) -> CustomerInput:
    if customer.kind not in KINDS:
        raise _invalid("kind", "bad_choice", f"kind: one of {', '.join(KINDS)}")
    return CustomerInput(
        name=_text(customer.name, "name", MAX_NAME, required=True),
        kind=customer.kind,
        phone=_phone(customer.phone),
        id_number=_id_number(customer.id_number),
        address=_text(customer.address, "customer_address", MAX_ADDRESS),
        household_size=_household(customer.household_size),
        protected=bool(customer.protected),
        note=_text(customer.note, "note", MAX_NOTE),
    )


def _covers(areas: frozenset[int] | None, area_id: int | None) -> bool:
    return areas is None or (area_id is not None and area_id in areas)


def _outside() -> AccountError:
    return AccountError("area", "this account is outside your areas", status=403)


# -- reference data -------------------------------------------------------------------------------------
def communities(conn: psycopg.Connection[Any], areas: frozenset[int] | None = None) -> list[tuple[str, str, str]]:
    """(code, name, area name) of the communities within `areas`, by area and name."""
    rows = conn.execute(
        """SELECT co.code, co.name, ar.name FROM community co JOIN area ar ON ar.id = co.area_id
            WHERE %(areas)s::bigint[] IS NULL OR co.area_id = ANY(%(areas)s::bigint[])
            ORDER BY ar.name, co.name, co.code""",
        {"areas": None if areas is None else sorted(areas)},
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def usage_types(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    """(code, name, English name) of every usage type, by code."""
    return [(r[0], r[1], r[2]) for r in conn.execute("SELECT code, name, name_en FROM usage_type ORDER BY code")]


def _community(
    conn: psycopg.Connection[Any], code: str | None, areas: frozenset[int] | None, current: int | None = None
) -> int | None:
    """The id of a community by code: active, in the person's areas (or the account's `current` one)."""
    code = (code or "").strip()
    if not code:
        if areas is not None:  # an account without a community would be outside the person's own areas
            raise _invalid("community", "community_required", "community is required")
        return None
    row = conn.execute("SELECT id, area_id, active FROM community WHERE code = %s", [code]).fetchone()
    if row is None or not (row[2] or row[0] == current):  # a deactivated community takes no new accounts
        raise _invalid("community", "no_community", f"no community {code!r}", value=code)
    if not _covers(areas, row[1]):
        raise AccountError("area", f"community {code} is outside your areas", field="community", status=403)
    return int(row[0])


def _usage_type(conn: psycopg.Connection[Any], code: str | None) -> int:
    code = (code or "").strip()
    if not code:
        raise _invalid("usage_type", "required", "usage type is required")
    row = conn.execute("SELECT id, active FROM usage_type WHERE code = %s", [code]).fetchone()
    if row is None or not row[1]:  # a deactivated usage type is kept for the records that name it, not new ones
        raise _invalid("usage_type", "no_usage_type", f"no usage type {code!r}", value=code)
    return int(row[0])


# -- search ---------------------------------------------------------------------------------------------
def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


_ACCOUNT_MATCH = {"account_no": "a.account_no", "card_no": "a.card_no", "address": "a.address"}
_CUSTOMER_MATCH = {
    "customer_no": "cu.customer_no",
    "name": "cu.name",
    "phone": "cu.phone",
    "id_number": "cu.id_number",
    "address": "cu.address",
}
_COMMUNITY_MATCH = {"community": ("co.name", "co.code")}


def search(
    conn: psycopg.Connection[Any],
    q: str = "",
    *,
    by: str = "all",
    status: str | None = None,
    areas: frozenset[int] | None = None,
    page: int = 1,
    size: int = 50,
) -> SearchResult:
    """Accounts matching `q` anywhere in one field (`by`, one of SEARCH_FIELDS) or in any of them ("all"),
    by account number; `page` counts from 1. An empty `q` lists every account (of `status`)."""
    if by != "all" and by not in SEARCH_FIELDS:
        raise _invalid("by", "bad_choice", f"by: all or one of {', '.join(SEARCH_FIELDS)}")
    if status and status not in STATUSES:
        raise _invalid("status", "bad_choice", f"status: one of {', '.join(STATUSES)}")
    page = max(1, page)
    size = max(1, min(size, 500))
    text = q.strip()
    where: list[sql.Composable] = []
    params: dict[str, Any] = {"p": _like(text), "limit": size + 1, "offset": (page - 1) * size}
    if text:
        wanted = SEARCH_FIELDS if by == "all" else (by,)
        parts: list[sql.Composable] = []

        def any_of(columns: Iterable[str]) -> sql.Composable:
            return sql.SQL(" OR ").join(sql.SQL("{} ILIKE %(p)s").format(sql.SQL(c)) for c in columns)

        account_cols = [c for f, c in _ACCOUNT_MATCH.items() if f in wanted]
        customer_cols = [c for f, c in _CUSTOMER_MATCH.items() if f in wanted]
        if account_cols:
            parts.append(sql.SQL("SELECT a.id FROM account a WHERE {}").format(any_of(account_cols)))
        if customer_cols:
            parts.append(
                sql.SQL("SELECT a.id FROM customer cu JOIN account a ON a.customer_id = cu.id WHERE {}").format(
                    any_of(customer_cols)
                )
            )
        if "community" in wanted:
            parts.append(
                sql.SQL("SELECT a.id FROM community co JOIN account a ON a.community_id = co.id WHERE {}").format(
                    any_of(_COMMUNITY_MATCH["community"])
                )
            )
        where.append(sql.SQL("a.id IN ({})").format(sql.SQL(" UNION ").join(parts)))
    if status:
        where.append(sql.SQL("a.status = %(status)s"))
        params["status"] = status
    if areas is not None:
        where.append(sql.SQL("co.area_id = ANY(%(areas)s::bigint[])"))
        params["areas"] = sorted(areas)
    query = sql.SQL(
        """SELECT a.account_no, a.status, a.card_no, cu.customer_no, cu.name, cu.phone, a.address, co.name,
                  u.name, a.billing_mode
             FROM account a JOIN customer cu ON cu.id = a.customer_id JOIN usage_type u ON u.id = a.usage_type_id
             LEFT JOIN community co ON co.id = a.community_id
            WHERE {where}
            ORDER BY a.account_no LIMIT %(limit)s OFFSET %(offset)s"""
    ).format(where=sql.SQL(" AND ").join(where) if where else sql.SQL("true"))
    rows = [SearchRow(*r) for r in conn.execute(query, params).fetchall()]
    return SearchResult(rows[:size], page, size, len(rows) > size)


# -- one account ----------------------------------------------------------------------------------------
def get_account(conn: psycopg.Connection[Any], account_no: str, areas: frozenset[int] | None = None) -> AccountView:
    """The facts of an account, its customer, meters, the customer's other accounts and its payment group."""
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        """SELECT a.id, a.account_no, a.status, a.billing_mode, a.card_no, a.address, a.opened_on, a.closed_on,
                  a.bill_disputed, co.code AS community, co.name AS community_name, ar.id AS area_id,
                  ar.name AS area_name, u.code AS usage_type, u.name AS usage_type_name, a.customer_id,
                  a.usage_type_id,
                  (SELECT max(b.period_end) FROM bill b WHERE b.account_id = a.id) AS billed_until
             FROM account a JOIN usage_type u ON u.id = a.usage_type_id
             LEFT JOIN community co ON co.id = a.community_id LEFT JOIN area ar ON ar.id = co.area_id
            WHERE a.account_no = %s""",
        [account_no],
    ).fetchone()
    if row is None:
        raise AccountError("no_account", f"no account {account_no}", status=404, account_no=account_no)
    if not _covers(areas, row["area_id"]):
        raise _outside()
    customer = cur.execute(
        """SELECT id, customer_no, name, kind, phone, id_number, address, household_size, protected, note,
                  created_at FROM customer WHERE id = %s""",
        [row.pop("customer_id")],
    ).fetchone()
    assert customer is not None
    meters = [
        MeterView(*m)
        for m in conn.execute(
            """SELECT m.meter_no, m.status, m.valve_state,
                      CASE WHEN m.usage_type_id IS DISTINCT FROM %(ut)s THEN u.code END,
                      CASE WHEN m.usage_type_id IS DISTINCT FROM %(ut)s THEN u.name END,
                      m.install_date, s.last_seen_at, s.last_volume_m3
                 FROM meter m LEFT JOIN usage_type u ON u.id = m.usage_type_id
                 LEFT JOIN meter_state s ON s.meter_id = m.id
                WHERE m.account_id = %(account)s ORDER BY m.status = 'removed', m.meter_no""",
            {"account": row["id"], "ut": row.pop("usage_type_id")},
        )
    ]
    others = [
        r[0]
        for r in conn.execute(
            "SELECT account_no FROM account WHERE customer_id = %s AND id <> %s ORDER BY account_no",
            [customer["id"], row["id"]],
        )
    ]
    group_row = conn.execute(
        """SELECT g.id, g.name, array(SELECT a.account_no FROM account_group_member o JOIN account a
                                          ON a.id = o.account_id WHERE o.group_id = g.id ORDER BY a.account_no)
             FROM account_group_member m JOIN account_group g ON g.id = m.group_id WHERE m.account_id = %s""",
        [row["id"]],
    ).fetchone()
    group = GroupView(int(group_row[0]), group_row[1], list(group_row[2])) if group_row else None
    return AccountView(
        **row,
        customer=CustomerView(**customer),
        meters=meters,
        other_accounts=others,
        group=group,
    )


# -- history --------------------------------------------------------------------------------------------
def history(conn: psycopg.Connection[Any], account_id: int) -> list[HistoryEntry]:
    """Every change to the account and to its present customer, the changes to former owners while they
    held it, and the changes the account's actions made to its meters; with the action and reason behind
    each, newest first."""
    cur = conn.cursor(row_factory=dict_row)
    account_rows = cur.execute(
        """SELECT id, table_name, row_id, op, changed_at, changed_by, old_values, new_values FROM change_history
            WHERE table_name = 'account' AND row_id = %s ORDER BY changed_at, id""",
        [account_id],
    ).fetchall()
    owners = _owners(conn, account_id, account_rows)
    actions = cur.execute(
        """SELECT id, kind, reason, effective_on, detail, history_ids, actor, at FROM account_action
            WHERE account_id = %s ORDER BY at, id""",
        [account_id],
    ).fetchall()
    action_ids = sorted({i for a in actions for i in a["history_ids"]})
    customer_rows = cur.execute(
        """SELECT h.id, h.table_name, h.row_id, h.op, h.changed_at, h.changed_by, h.old_values, h.new_values
             FROM unnest(%s::bigint[], %s::timestamptz[], %s::timestamptz[]) AS o(customer_id, since, until)
             JOIN change_history h ON h.table_name = 'customer' AND h.row_id = o.customer_id
                                  AND h.changed_at >= coalesce(o.since, '-infinity')
                                  AND h.changed_at < coalesce(o.until, 'infinity')""",
        [[o[0] for o in owners], [o[1] for o in owners], [o[2] for o in owners]],
    ).fetchall()
    rows = {r["id"]: r for r in account_rows + customer_rows}
    missing = [i for i in action_ids if i not in rows]
    if missing:
        for r in cur.execute(
            """SELECT id, table_name, row_id, op, changed_at, changed_by, old_values, new_values
                 FROM change_history WHERE id = ANY(%s)""",
            [missing],
        ):
            rows[r["id"]] = r
    shown = sorted(rows)
    # Actions taken through another account of the same customer that changed the customer here.
    own = {a["id"] for a in actions}
    actions += [
        a
        for a in cur.execute(
            """SELECT id, kind, reason, effective_on, detail, history_ids, actor, at FROM account_action
                WHERE customer_id = ANY(%s) AND account_id <> %s AND history_ids && %s::bigint[]""",
            [[o[0] for o in owners], account_id, shown],
        )
        if a["id"] not in own
    ]
    labels = _labels(conn, rows.values())
    entries: list[HistoryEntry] = []
    claimed: set[int] = set()
    for action in actions:
        mine = sorted(
            (rows[i] for i in action["history_ids"] if i in rows),
            key=lambda r: (_TABLE_ORDER.get(r["table_name"], 3), r["id"]),
        )
        claimed.update(r["id"] for r in mine)
        entries.append(
            HistoryEntry(
                at=action["at"],
                actor=action["actor"],
                kind=action["kind"],
                reason=action["reason"],
                effective_on=action["effective_on"],
                detail=action["detail"],
                changes=[c for r in mine for c in _changes(r, labels)],
            )
        )
    for r in rows.values():
        if r["id"] not in claimed:
            entries.append(HistoryEntry(r["changed_at"], r["changed_by"], r["op"], "", None, {}, _changes(r, labels)))
    entries.sort(key=lambda e: e.at, reverse=True)
    return entries


def _owners(
    conn: psycopg.Connection[Any], account_id: int, account_rows: Sequence[dict[str, Any]]
) -> list[tuple[int, datetime | None, datetime | None]]:
    """(customer id, since, until) of each holder of the account, from its change history."""
    owners: list[tuple[int, datetime | None, datetime | None]] = []
    current: int | None = None
    since: datetime | None = None
    for r in account_rows:
        new = r["new_values"] or {}
        if "customer_id" in new and new["customer_id"] != current:
            if current is not None:
                owners.append((current, since, r["changed_at"]))
            elif r["op"] == "update":  # the insert is missing: the earlier holder held it from the start
                old = (r["old_values"] or {}).get("customer_id")
                if old is not None:
                    owners.append((int(old), None, r["changed_at"]))
            current, since = int(new["customer_id"]), r["changed_at"] if r["op"] == "update" else None
    if current is None:
        row = conn.execute("SELECT customer_id FROM account WHERE id = %s", [account_id]).fetchone()
        if row is not None:
            current = int(row[0])
    if current is not None:
        owners.append((current, None, None))  # the present holder: all of their history
    return owners


def _labels(conn: psycopg.Connection[Any], rows: Iterable[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """Names for the ids that appear in change rows: customers, accounts, communities, usage types, meters and
    meter models."""
    wanted: dict[str, set[int]] = {
        "customer": set(),
        "account": set(),
        "community": set(),
        "usage_type": set(),
        "meter": set(),
        "model": set(),
    }
    for r in rows:
        if r["table_name"] in ("customer", "meter"):
            wanted[r["table_name"]].add(int(r["row_id"]))
        for doc in (r["old_values"], r["new_values"]):
            for key, value in (doc or {}).items():
                table = key.removesuffix("_id")
                if key.endswith("_id") and table in wanted and isinstance(value, int):
                    wanted[table].add(value)
    queries = {
        "customer": "SELECT id, name || ' (' || customer_no || ')' FROM customer WHERE id = ANY(%s)",
        "community": "SELECT id, name || ' (' || code || ')' FROM community WHERE id = ANY(%s)",
        "usage_type": "SELECT id, name || ' (' || code || ')' FROM usage_type WHERE id = ANY(%s)",
        "meter": "SELECT id, meter_no FROM meter WHERE id = ANY(%s)",
        "account": "SELECT id, account_no FROM account WHERE id = ANY(%s)",
        "model": "SELECT id, name FROM meter_model WHERE id = ANY(%s)",
    }
    labels: dict[tuple[str, int], str] = {}
    for table, ids in wanted.items():
        if ids:
            for row_id, label in conn.execute(queries[table], [sorted(ids)]):
                labels[(table, int(row_id))] = label
    return labels


def _changes(row: dict[str, Any], labels: Mapping[tuple[str, int], str]) -> list[Change]:
    old_doc, new_doc = row["old_values"] or {}, row["new_values"] or {}
    table = row["table_name"]
    row_label = labels.get((table, int(row["row_id"])), f"#{row['row_id']}") if table != "account" else ""

    def text(key: str, value: Any) -> str | None:
        target = key.removesuffix("_id")
        if key.endswith("_id") and isinstance(value, int):
            return labels.get((target, value), f"#{value}")
        return None

    keys = [k for k in (new_doc if row["op"] != "delete" else old_doc) if k not in _HIDDEN_COLUMNS]
    if row["op"] == "insert":
        keys = [k for k in keys if new_doc.get(k) not in (None, "", False)]
    return [
        Change(
            table,
            int(row["row_id"]),
            row_label,
            row["op"],
            key,
            old_doc.get(key),
            new_doc.get(key),
            text(key, old_doc.get(key)),
            text(key, new_doc.get(key)),
        )
        for key in sorted(keys)
    ]


# -- changes --------------------------------------------------------------------------------------------
def _lock_account(
    conn: psycopg.Connection[Any], account_no: str, areas: frozenset[int] | None, *, closed_ok: bool = False
) -> dict[str, Any]:
    row = (
        conn.cursor(row_factory=dict_row)
        .execute(
            """SELECT a.id, a.account_no, a.customer_id, a.status, a.usage_type_id, a.opened_on, a.community_id,
                      a.address, a.card_no, co.area_id
                 FROM account a LEFT JOIN community co ON co.id = a.community_id
                WHERE a.account_no = %s FOR UPDATE OF a""",
            [account_no],
        )
        .fetchone()
    )
    if row is None:
        raise AccountError("no_account", f"no account {account_no}", status=404, account_no=account_no)
    if not _covers(areas, row["area_id"]):
        raise _outside()
    if row["status"] == "closed" and not closed_ok:
        raise AccountError("closed", f"account {account_no} is closed", status=409, account_no=account_no)
    return row


def _lock_customer(conn: psycopg.Connection[Any], customer_id: int) -> dict[str, Any]:
    row = (
        conn.cursor(row_factory=dict_row)
        .execute("SELECT * FROM customer WHERE id = %s FOR UPDATE", [customer_id])
        .fetchone()
    )
    assert row is not None
    return row


def _record(
    conn: psycopg.Connection[Any],
    account_id: int,
    kind: str,
    *,
    customer_id: int | None = None,
    reason: str = "",
    effective_on: date | None = None,
    detail: dict[str, Any] | None = None,
    rows: Sequence[tuple[str, int]] = (),
) -> int:
    """The account_action of this transaction, with the change_history rows it wrote for `rows`."""
    tables = [t for t, _ in rows]
    ids = [i for _, i in rows]
    found = conn.execute(
        """SELECT coalesce(array_agg(h.id ORDER BY h.id), '{}') FROM unnest(%s::text[], %s::bigint[]) AS r(t, i)
             JOIN change_history h ON h.table_name = r.t AND h.row_id = r.i AND h.changed_at >= now()
            WHERE h.xmin = pg_current_xact_id()::xid""",
        [tables, ids],
    ).fetchone()
    assert found is not None
    row = conn.execute(
        """INSERT INTO account_action (account_id, customer_id, kind, reason, effective_on, detail, history_ids)
           VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        [account_id, customer_id, kind, reason, effective_on, Jsonb(detail or {}), found[0]],
    ).fetchone()
    assert row is not None
    return int(row[0])


def _unique(exc: psycopg.errors.UniqueViolation, values: Mapping[str, Any]) -> AccountError:
    constraint = exc.diag.constraint_name or ""
    for column in ("account_no", "card_no", "customer_no"):
        if column in constraint:
            value = values.get(column, "")
            return AccountError(
                "duplicate", f"{column} {value} is already in use", field=column, status=409, value=value
            )
    return AccountError("duplicate", str(exc).splitlines()[0], status=409, value="")


def _luhn(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def _generate(conn: psycopg.Connection[Any], kind: str) -> str:
    """A number nobody holds: customers C0000001 …, accounts nine digits and a Luhn check digit, from a
    sequence; when the sequence runs into numbers given by hand or imported, it continues after them."""
    table, column, sequence = (
        ("customer", "customer_no", "customer_no_seq")
        if kind == "customer"
        else ("account", "account_no", "account_no_seq")
    )

    def form(n: int) -> str:
        return f"C{n:07d}" if kind == "customer" else f"{n:09d}{_luhn(f'{n:09d}')}"

    def taken(candidate: str) -> bool:
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} = %s)").format(
            sql.Identifier(table), sql.Identifier(column)
        )
        row = conn.execute(query, [candidate]).fetchone()
        return bool(row and row[0])

    for attempt in range(2):
        row = conn.execute("SELECT nextval(%s)", [sequence]).fetchone()
        assert row is not None
        candidate = form(int(row[0]))
        if not taken(candidate):
            return candidate
        if attempt == 0:
            highest = (
                "SELECT max(substr(customer_no, 2)::bigint) FROM customer WHERE customer_no ~ '^C[0-9]{7,15}$'"
                if kind == "customer"
                else "SELECT max(substr(account_no, 1, 9)::bigint) FROM account WHERE account_no ~ '^[0-9]{10}$'"
            )
            top = conn.execute(highest).fetchone()
            if top and top[0] is not None:
                conn.execute("SELECT setval(%s, greatest(%s, currval(%s)))", [sequence, int(top[0]), sequence])
    raise AccountError("no_number", f"no free {column} could be generated; give one", field=column, status=409)


def _insert_customer(conn: psycopg.Connection[Any], customer: CustomerInput) -> tuple[int, str]:
    customer_no = _generate(conn, "customer")
    row = conn.execute(
        """INSERT INTO customer (customer_no, name, kind, phone, id_number, address, household_size, protected, note)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        [
            customer_no,
            customer.name,
            customer.kind,
            customer.phone,
            customer.id_number,
            customer.address,
            customer.household_size,
            customer.protected,
            customer.note,
        ],
    ).fetchone()
    assert row is not None
    return int(row[0]), customer_no


def _existing_customer(conn: psycopg.Connection[Any], customer_no: str) -> int:
    row = conn.execute("SELECT id FROM customer WHERE customer_no = %s FOR UPDATE", [customer_no]).fetchone()
    if row is None:
        raise _invalid("customer_no", "no_customer", f"no customer {customer_no}", customer_no=customer_no)
    return int(row[0])


def open_account(
    store: Store, actor: str, new: OpenAccount, *, areas: frozenset[int] | None = None, today: date | None = None
) -> ActionResult:
    """开户: the customer (new or existing) and the account, in one transaction."""
    today = today or date.today()
    customer_no = _number(new.customer_no, "customer_no")
    if bool(customer_no) == (new.customer is not None):
        raise _invalid("customer_no", "customer_choice", "give an existing customer number or a new customer")
    customer = _clean_customer(new.customer) if new.customer is not None else None
    account_no = _number(new.account_no, "account_no")
    card_no = _number(new.card_no, "card_no") or None
    address = _text(new.address, "address", MAX_ADDRESS)
    if new.billing_mode not in BILLING_MODES:
        raise _invalid("billing_mode", "bad_choice", f"billing mode: one of {', '.join(BILLING_MODES)}")
    opened_on = new.opened_on or today
    if opened_on > today:
        raise _invalid("opened_on", "future_date", f"opened on {opened_on}: that is after today")
    values = {"account_no": account_no, "card_no": card_no}
    try:
        with store.transaction(actor=actor) as conn:
            community_id = _community(conn, new.community, areas)
            usage_type_id = _usage_type(conn, new.usage_type)
            if account_no and conn.execute("SELECT 1 FROM account WHERE account_no = %s", [account_no]).fetchone():
                raise AccountError("duplicate", f"account_no {account_no} is already in use", field="account_no",
                                   status=409, value=account_no)
            if card_no and conn.execute("SELECT 1 FROM account WHERE card_no = %s", [card_no]).fetchone():
                raise AccountError("duplicate", f"card_no {card_no} is already in use", field="card_no",
                                   status=409, value=card_no)
            if customer is not None:
                customer_id, customer_no = _insert_customer(conn, customer)
            else:
                customer_id = _existing_customer(conn, customer_no)
            account_no = account_no or _generate(conn, "account")
            values["account_no"] = account_no
            row = conn.execute(
                """INSERT INTO account (account_no, customer_id, community_id, address, usage_type_id, billing_mode,
                                        card_no, opened_on)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                [account_no, customer_id, community_id, address, usage_type_id, new.billing_mode, card_no, opened_on],
            ).fetchone()
            assert row is not None
            account_id = int(row[0])
            detail = {"customer_no": customer_no, "new_customer": customer is not None}
            action_id = _record(
                conn,
                account_id,
                "open",
                customer_id=customer_id,
                effective_on=opened_on,
                detail=detail,
                rows=[("account", account_id), ("customer", customer_id)],
            )
    except psycopg.errors.UniqueViolation as exc:
        raise _unique(exc, values) from None
    return ActionResult(account_no, action_id, "open", detail=detail)


def edit_account(
    store: Store,
    actor: str,
    account_no: str,
    changes: Mapping[str, Any],
    *,
    areas: frozenset[int] | None = None,
) -> ActionResult:
    """Change the facts of an account and its customer given in `changes` (keys of EDITABLE: address,
    community, card_no of the account; phone, id_number, customer_address, household_size, protected, note
    of the customer). Values equal to the stored ones are no change; nothing changed writes nothing."""
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise _invalid(unknown[0], "not_editable", f"{unknown[0]} cannot be edited here")
    clean: dict[str, Any] = {}
    for key, value in changes.items():
        if key == "address":
            clean[key] = _text(value, "address", MAX_ADDRESS)
        elif key == "customer_address":
            clean[key] = _text(value, "customer_address", MAX_ADDRESS)
        elif key == "card_no":
            clean[key] = _number(value, "card_no") or None
        elif key == "phone":
            clean[key] = _phone(value)
        elif key == "id_number":
            clean[key] = _id_number(value)
        elif key == "household_size":
            clean[key] = _household(value)
        elif key == "protected":
            if not isinstance(value, bool):
                raise _invalid("protected", "bad_choice", "protected: true or false")
            clean[key] = value
        elif key == "note":
            clean[key] = _text(value, "note", MAX_NOTE)
        elif key == "community":
            clean[key] = (value or "").strip()
    try:
        with store.transaction(actor=actor) as conn:
            account = _lock_account(conn, account_no, areas)
            customer = _lock_customer(conn, account["customer_id"])
            account_set: dict[str, Any] = {}
            customer_set: dict[str, Any] = {}
            if "community" in clean:
                community_id = _community(conn, clean["community"], areas, account["community_id"])
                if community_id != account["community_id"]:
                    account_set["community_id"] = community_id
            for key in ("address", "card_no"):
                if key in clean and clean[key] != account[key]:
                    account_set[key] = clean[key]
            if account_set.get("card_no") and conn.execute(
                "SELECT 1 FROM account WHERE card_no = %s AND id <> %s", [account_set["card_no"], account["id"]]
            ).fetchone():
                raise AccountError("duplicate", f"card_no {clean['card_no']} is already in use", field="card_no",
                                   status=409, value=clean["card_no"])
            for key in CUSTOMER_EDITABLE:
                column = "address" if key == "customer_address" else key
                if key in clean and clean[key] != customer[column]:
                    customer_set[column] = clean[key]
            if not account_set and not customer_set:
                return ActionResult(account_no, None, "edit")
            for table, row_id, values in (("account", account["id"], account_set), ("customer", customer["id"],
                                                                                     customer_set)):
                if values:
                    conn.execute(
                        sql.SQL("UPDATE {} SET {} WHERE id = %s").format(
                            sql.Identifier(table),
                            sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in values),
                        ),
                        [*values.values(), row_id],
                    )
            changed = [("community" if k == "community_id" else k) for k in account_set] + [
                ("customer_address" if k == "address" else k) for k in customer_set
            ]
            action_id = _record(
                conn,
                account["id"],
                "edit",
                customer_id=customer["id"] if customer_set else None,
                detail={"fields": changed},
                rows=[("account", account["id"]), ("customer", customer["id"])],
            )
    except psycopg.errors.UniqueViolation as exc:
        raise _unique(exc, {"card_no": clean.get("card_no")}) from None
    return ActionResult(account_no, action_id, "edit", changed=changed)


def transfer_account(
    store: Store,
    actor: str,
    account_no: str,
    *,
    reason: str,
    to_customer_no: str = "",
    new_customer: CustomerInput | None = None,
    areas: frozenset[int] | None = None,
) -> ActionResult:
    """过户: the account passes to another customer (an existing one, or a new one created here). The
    former owner stays a customer and stays in the account's history. A bank withholding agreement of the
    account ends (it debits the former owner's bank account) and the account leaves its payment group
    (关联用户 of the former owner)."""
    reason = _reason(reason)
    to_customer_no = _number(to_customer_no, "customer_no")
    if bool(to_customer_no) == (new_customer is not None):
        raise _invalid("customer_no", "customer_choice", "give an existing customer number or a new customer")
    customer = _clean_customer(new_customer) if new_customer is not None else None
    with store.transaction(actor=actor) as conn:
        account = _lock_account(conn, account_no, areas)
        if account["status"] == "locked":
            raise AccountError("locked", f"account {account_no} is locked: unlock it first", status=409,
                               account_no=account_no)
        old = conn.execute("SELECT customer_no, name FROM customer WHERE id = %s", [account["customer_id"]]).fetchone()
        assert old is not None
        if customer is not None:
            customer_id, to_customer_no = _insert_customer(conn, customer)
        else:
            customer_id = _existing_customer(conn, to_customer_no)
            if customer_id == account["customer_id"]:
                raise _invalid("customer_no", "same_owner", f"{to_customer_no} already holds account {account_no}",
                               customer_no=to_customer_no)
        new_name = conn.execute("SELECT name FROM customer WHERE id = %s", [customer_id]).fetchone()
        assert new_name is not None
        conn.execute("UPDATE account SET customer_id = %s WHERE id = %s", [customer_id, account["id"]])
        ended = conn.execute(
            "UPDATE bank_agreement SET active = false WHERE account_id = %s AND active RETURNING bank_code",
            [account["id"]],
        ).fetchone()
        left = conn.execute(
            """DELETE FROM account_group_member m USING account_group g
                WHERE m.account_id = %s AND g.id = m.group_id RETURNING g.id, g.name""",
            [account["id"]],
        ).fetchone()
        detail: dict[str, Any] = {
            "from": {"customer_no": old[0], "name": old[1]},
            "to": {"customer_no": to_customer_no, "name": new_name[0]},
            "new_customer": customer is not None,
        }
        if ended:
            detail["bank_agreement_ended"] = ended[0]
        if left:
            detail["left_group"] = {"id": left[0], "name": left[1]}
        action_id = _record(
            conn,
            account["id"],
            "transfer",
            customer_id=customer_id,
            reason=reason,
            detail=detail,
            rows=[("account", account["id"]), ("customer", customer_id)],
        )
    return ActionResult(account_no, action_id, "transfer", changed=["customer"], detail=detail)


def rename_customer(
    store: Store, actor: str, account_no: str, *, name: str, reason: str, areas: frozenset[int] | None = None
) -> ActionResult:
    """更名: the name of the account's customer (on all of the customer's accounts)."""
    name = _text(name, "name", MAX_NAME, required=True)
    reason = _reason(reason)
    with store.transaction(actor=actor) as conn:
        account = _lock_account(conn, account_no, areas)
        customer = _lock_customer(conn, account["customer_id"])
        if customer["name"] == name:
            raise _invalid("name", "same_name", f"the customer is already called {name}", name=name)
        conn.execute("UPDATE customer SET name = %s WHERE id = %s", [name, customer["id"]])
        detail = {"customer_no": customer["customer_no"], "from": customer["name"], "to": name}
        action_id = _record(
            conn,
            account["id"],
            "rename",
            customer_id=customer["id"],
            reason=reason,
            detail=detail,
            rows=[("customer", customer["id"])],
        )
    return ActionResult(account_no, action_id, "rename", changed=["name"], detail=detail)


def change_usage_type(
    store: Store,
    actor: str,
    account_no: str,
    *,
    usage_type: str,
    effective_from: date,
    reason: str,
    areas: frozenset[int] | None = None,
    today: date | None = None,
) -> ActionResult:
    """改用气性质 from `effective_from` on: the account's usage type, and that of its meters that carried
    the old one. The date may be neither after today nor inside a period already billed (bills are not
    re-priced), nor before the account's last change of usage type."""
    today = today or date.today()
    reason = _reason(reason)
    if effective_from > today:
        raise _invalid("effective_from", "future_date", f"effective from {effective_from}: that is after today; "
                       "record the change on or after the day it takes effect")
    with store.transaction(actor=actor) as conn:
        account = _lock_account(conn, account_no, areas)
        if account["status"] == "locked":
            raise AccountError("locked", f"account {account_no} is locked: unlock it first", status=409,
                               account_no=account_no)
        new_id = _usage_type(conn, usage_type)
        old_id = int(account["usage_type_id"])
        if new_id == old_id:
            raise _invalid("usage_type", "same_usage_type", f"the account already has usage type {usage_type}",
                           value=usage_type)
        if effective_from < account["opened_on"]:
            raise _invalid("effective_from", "before_opening", f"effective from {effective_from}: before the "
                           f"account was opened on {account['opened_on']}", date=account["opened_on"])
        billed = conn.execute("SELECT max(period_end) FROM bill WHERE account_id = %s", [account["id"]]).fetchone()
        if billed and billed[0] is not None and effective_from < billed[0]:
            raise _invalid("effective_from", "already_billed", f"effective from {effective_from}: the account is "
                           f"billed until {billed[0]}; the change can take effect from then on", date=billed[0])
        last = conn.execute(
            "SELECT max(effective_from) FROM account_usage_type_change WHERE account_id = %s", [account["id"]]
        ).fetchone()
        if last and last[0] is not None and effective_from < last[0]:
            raise _invalid("effective_from", "before_last_change", f"effective from {effective_from}: before the "
                           f"last change of usage type on {last[0]}", date=last[0])
        codes = dict(conn.execute("SELECT id, code FROM usage_type WHERE id = ANY(%s)", [[old_id, new_id]]).fetchall())
        meters = conn.execute(
            "SELECT id, meter_no, usage_type_id FROM meter WHERE account_id = %s ORDER BY meter_no FOR UPDATE",
            [account["id"]],
        ).fetchall()
        moved = [(m[0], m[1]) for m in meters if m[2] == old_id]
        kept = [m[1] for m in meters if m[2] is not None and m[2] != old_id]
        conn.execute("UPDATE account SET usage_type_id = %s WHERE id = %s", [new_id, account["id"]])
        if moved:
            conn.execute("UPDATE meter SET usage_type_id = %s WHERE id = ANY(%s)", [new_id, [m[0] for m in moved]])
        detail = {
            "from": codes[old_id],
            "to": codes[new_id],
            "meters_changed": [m[1] for m in moved],
            "meters_kept": kept,
        }
        action_id = _record(
            conn,
            account["id"],
            "usage_type",
            reason=reason,
            effective_on=effective_from,
            detail=detail,
            rows=[("account", account["id"]), *(("meter", m[0]) for m in moved)],
        )
        conn.execute(
            """INSERT INTO account_usage_type_change (account_id, effective_from, old_usage_type_id,
                                                      new_usage_type_id, action_id)
               VALUES (%s, %s, %s, %s, %s)""",
            [account["id"], effective_from, old_id, new_id, action_id],
        )
    return ActionResult(account_no, action_id, "usage_type", changed=["usage_type"], detail=detail)


def usage_type_on(conn: psycopg.Connection[Any], account_id: int, day: date) -> int:
    """The usage type id of an account on `day`, by its recorded changes (see account_usage_type_change)."""
    row = conn.execute(
        """SELECT coalesce(
                    (SELECT new_usage_type_id FROM account_usage_type_change
                      WHERE account_id = %(a)s AND effective_from <= %(d)s ORDER BY effective_from DESC, id DESC
                      LIMIT 1),
                    (SELECT old_usage_type_id FROM account_usage_type_change
                      WHERE account_id = %(a)s ORDER BY effective_from, id LIMIT 1),
                    (SELECT usage_type_id FROM account WHERE id = %(a)s))""",
        {"a": account_id, "d": day},
    ).fetchone()
    if row is None or row[0] is None:
        raise AccountError("no_account", f"no account with id {account_id}", status=404, account_no=str(account_id))
    return int(row[0])


def _set_status(
    store: Store, actor: str, account_no: str, reason: str, areas: frozenset[int] | None, *, lock: bool
) -> ActionResult:
    reason = _reason(reason)
    kind, before, after = ("lock", "active", "locked") if lock else ("unlock", "locked", "active")
    with store.transaction(actor=actor) as conn:
        account = _lock_account(conn, account_no, areas)
        if account["status"] != before:
            raise AccountError(
                f"not_{before}",
                f"account {account_no} is {account['status']}, not {before}",
                status=409,
                account_no=account_no,
                status_now=account["status"],
            )
        conn.execute("UPDATE account SET status = %s WHERE id = %s", [after, account["id"]])
        action_id = _record(conn, account["id"], kind, reason=reason, rows=[("account", account["id"])])
    return ActionResult(account_no, action_id, kind, changed=["status"])


def lock_account(
    store: Store, actor: str, account_no: str, *, reason: str, areas: frozenset[int] | None = None
) -> ActionResult:
    """用户锁定: an active account becomes locked (no transfer or usage-type change until it is unlocked;
    prepaid checks leave it alone)."""
    return _set_status(store, actor, account_no, reason, areas, lock=True)


def unlock_account(
    store: Store, actor: str, account_no: str, *, reason: str, areas: frozenset[int] | None = None
) -> ActionResult:
    """用户解锁: a locked account becomes active again."""
    return _set_status(store, actor, account_no, reason, areas, lock=False)
