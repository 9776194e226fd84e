"""Bank withholding (银行代扣): debit files out, result files in.

A bank's layout (`bank_layout`) says the file format (fixed-width text, CSV or Excel), how arrears are
summed (one row per bill, per account with its meter, or per customer and bank account) and which fields
go in which order. Export fields: EXPORT_FIELDS; result fields: RESULT_FIELDS (`reference` echoes ours,
`bank_reference` is the bank's transaction id, `status` is one of the layout's success codes or a failure).

Importing a result file checks every row first; bad rows are reported by line number and, unless
`apply_good` is set, nothing is applied. Applying is one transaction: a successful row becomes a `bank`
payment of the row's accounts (oldest bill first, see billing.ledger), a failed row is recorded; rows whose
bank reference was imported before are skipped, so importing a file twice pays once. Every outcome is kept
in `bank_result` for notifications (`bank_outcomes`, `mark_notified`).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row

from billing.ledger import ZERO, LedgerError, positions
from billing.payments import lock_accounts, pay_locked
from meterhub.store import Store

EXPORT_FIELDS = (
    "reference",
    "account_no",
    "customer_no",
    "customer_name",
    "meter_no",
    "bank_account_no",
    "holder_name",
    "period",
    "amount",
    "amount_fen",
    "as_of",
)
RESULT_FIELDS = ("reference", "bank_reference", "status", "amount", "amount_fen", "message")
Format = Literal["fixed", "csv", "xlsx"]


class BankFileError(ValueError):
    """A result file with bad rows; `bad` holds (line number, reason). Nothing was applied."""

    def __init__(self, bad: list[tuple[int, str]]) -> None:
        self.bad = bad
        super().__init__("; ".join(f"line {n}: {reason}" for n, reason in bad[:10]))


@dataclass(frozen=True)
class FieldSpec:
    name: str
    width: int = 0
    align: Literal["left", "right"] = "left"
    pad: str = " "


@dataclass(frozen=True)
class Layout:
    code: str
    format: Format
    group_by: Literal["bill", "account", "customer"]
    fields: tuple[FieldSpec, ...]
    result_fields: tuple[FieldSpec, ...]
    success_codes: tuple[str, ...]
    encoding: str = "utf-8"
    delimiter: str = ","

    @classmethod
    def load(cls, conn: psycopg.Connection[Any], code: str) -> Layout:
        with conn.cursor(row_factory=dict_row) as cursor:
            row = cursor.execute("SELECT * FROM bank_layout WHERE code = %s", [code]).fetchone()
        if row is None:
            raise LedgerError(f"no bank layout {code!r}")

        def specs(items: list[dict[str, Any]], allowed: tuple[str, ...]) -> tuple[FieldSpec, ...]:
            result = tuple(FieldSpec(**item) for item in items)
            unknown = [f.name for f in result if f.name not in allowed]
            if unknown:
                raise LedgerError(f"bank layout {code}: unknown fields {unknown}")
            return result

        return cls(
            code,
            row["format"],
            row["group_by"],
            specs(row["fields"], EXPORT_FIELDS),
            specs(row["result_fields"], RESULT_FIELDS),
            tuple(row["success_codes"]),
            row["encoding"],
            row["delimiter"],
        )


# ---- file formats -----------------------------------------------------------------------------------------


def write_file(layout: Layout, specs: tuple[FieldSpec, ...], rows: list[dict[str, str]]) -> bytes:
    """Rows as a file in the layout's format (CSV and Excel with a header row)."""
    names = [spec.name for spec in specs]
    if layout.format == "fixed":
        lines = []
        for row in rows:
            cells = []
            for spec in specs:
                value = row[spec.name][: spec.width]
                cells.append(
                    value.ljust(spec.width, spec.pad) if spec.align == "left" else value.rjust(spec.width, spec.pad)
                )
            lines.append("".join(cells))
        return ("\r\n".join(lines) + "\r\n").encode(layout.encoding)
    if layout.format == "csv":
        text = io.StringIO()
        writer = csv.writer(text, delimiter=layout.delimiter, lineterminator="\r\n")
        writer.writerow(names)
        writer.writerows([row[name] for name in names] for row in rows)
        return text.getvalue().encode(layout.encoding)
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(names)
    for row in rows:
        sheet.append([row[name] for name in names])  # all text: account numbers keep their leading zeros
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def read_file(layout: Layout, specs: tuple[FieldSpec, ...], content: bytes) -> list[tuple[int, dict[str, str] | str]]:
    """(line number, fields or the reason the line cannot be read) per data row."""
    names = [spec.name for spec in specs]
    rows: list[tuple[int, dict[str, str] | str]] = []
    if layout.format == "xlsx":
        from openpyxl import load_workbook

        sheet = load_workbook(io.BytesIO(content), read_only=True).active
        assert sheet is not None
        raw = [["" if v is None else str(v) for v in values] for values in sheet.iter_rows(values_only=True)]
        start = 2
        raw = raw[1:]
    else:
        try:
            text = content.decode(layout.encoding)
        except UnicodeDecodeError as exc:
            return [(1, f"not {layout.encoding} text: {exc}")]
        if layout.format == "csv":
            raw = list(csv.reader(io.StringIO(text), delimiter=layout.delimiter))[1:]
            start = 2
        else:
            width = sum(spec.width for spec in specs)
            raw = []
            for line in text.splitlines():
                if len(line) != width:
                    raw.append([f"\0expected {width} characters, got {len(line)}"])
                    continue
                cells, offset = [], 0
                for spec in specs:
                    cells.append(line[offset : offset + spec.width])
                    offset += spec.width
                raw.append(cells)
            start = 1
    for number, cells in enumerate(raw, start=start):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) == 1 and cells[0].startswith("\0"):
            rows.append((number, cells[0][1:]))
        elif len(cells) != len(names):
            rows.append((number, f"expected {len(names)} fields, got {len(cells)}"))
        else:
            rows.append((number, {spec.name: _cell(cell, spec) for cell, spec in zip(cells, specs, strict=True)}))
    return rows


def _cell(text: str, spec: FieldSpec) -> str:
    value = text.strip()
    if spec.align == "right" and spec.pad.strip():
        value = value.lstrip(spec.pad) or (spec.pad if value else "")
    return value


# ---- export -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BankExport:
    export_id: int
    file_name: str
    content: bytes
    rows: int
    amount: Decimal


def export_withholding(store: Store, bank_code: str, actor: str, as_of: dt.date | None = None) -> BankExport:
    """The debit file of a bank: what accounts with an active agreement owe as of a day."""
    as_of = as_of or dt.date.today()
    with store.transaction(actor=actor) as conn:
        layout = Layout.load(conn, bank_code)
        with conn.cursor(row_factory=dict_row) as cursor:
            accounts = cursor.execute(
                "SELECT a.id, a.account_no, c.id AS customer_id, c.customer_no, c.name AS customer_name, "
                "g.bank_account_no, g.holder_name, (SELECT min(m.meter_no) FROM meter m WHERE m.account_id = a.id) "
                "AS meter_no FROM bank_agreement g JOIN account a ON a.id = g.account_id "
                "JOIN customer c ON c.id = a.customer_id WHERE g.bank_code = %s AND g.active ORDER BY a.account_no",
                [bank_code],
            ).fetchall()
        held = positions(conn, [a["id"] for a in accounts], as_of)
        groups: dict[tuple[object, ...], list[tuple[dict[str, Any], Decimal, int | None, str]]] = defaultdict(list)
        for info in accounts:
            position = held[info["id"]]
            if layout.group_by == "bill":
                for bill in position.open_bills:
                    groups[("bill", bill.bill_id)].append((info, bill.due, bill.bill_id, bill.period))
            elif position.total_due > 0:
                key = (
                    ("customer", info["customer_id"], info["bank_account_no"])
                    if layout.group_by == "customer"
                    else ("account", info["id"])
                )
                groups[key].append((info, position.total_due, None, ""))
        export = conn.execute(
            "INSERT INTO bank_export (bank_code, as_of, created_by, rows, amount, file_name, content) "
            "VALUES (%s, %s, %s, 0, 0, '', '') RETURNING id",
            [bank_code, as_of, actor],
        ).fetchone()
        assert export is not None
        export_id = int(export[0])
        rows: list[dict[str, str]] = []
        total = ZERO
        for number, members in enumerate(groups.values(), start=1):
            first = members[0][0]
            amount = sum((m[1] for m in members), ZERO)
            reference = f"{export_id:08d}{number:07d}"
            rows.append(
                {
                    "reference": reference,
                    "account_no": first["account_no"],
                    "customer_no": first["customer_no"],
                    "customer_name": first["customer_name"],
                    "meter_no": first["meter_no"] or "",
                    "bank_account_no": first["bank_account_no"],
                    "holder_name": first["holder_name"],
                    "period": members[0][3],
                    "amount": f"{amount:.2f}",
                    "amount_fen": str(int(amount * 100)),
                    "as_of": as_of.strftime("%Y%m%d"),
                }
            )
            conn.execute(
                "INSERT INTO bank_export_row (export_id, row_no, reference, account_ids, bill_id, bank_account_no, "
                "amount) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    export_id,
                    number,
                    reference,
                    sorted({m[0]["id"] for m in members}),
                    members[0][2],
                    first["bank_account_no"],
                    amount,
                ],
            )
            total += amount
        content = write_file(layout, layout.fields, rows)
        extension = {"fixed": "txt", "csv": "csv", "xlsx": "xlsx"}[layout.format]
        file_name = f"{bank_code}_{as_of:%Y%m%d}_{export_id}.{extension}"
        conn.execute(
            "UPDATE bank_export SET rows = %s, amount = %s, file_name = %s, content = %s WHERE id = %s",
            [len(rows), total, file_name, content, export_id],
        )
        return BankExport(export_id, file_name, content, len(rows), total)


# ---- import -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportReport:
    import_id: int | None
    succeeded: int = 0
    failed: int = 0
    duplicates: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)
    payment_ids: list[int] = field(default_factory=list)


def _amount(fields: dict[str, str]) -> Decimal:
    if "amount_fen" in fields:
        return Decimal(int(fields["amount_fen"])) / 100
    value = Decimal(fields["amount"])
    if value != value.quantize(Decimal("0.01")):
        raise InvalidOperation
    return value


def import_results(
    store: Store,
    bank_code: str,
    file_name: str,
    content: bytes,
    actor: str,
    paid_on: dt.date | None = None,
    apply_good: bool = False,
) -> ImportReport:
    """Apply a bank's result file (see the module docstring); raises BankFileError on bad rows unless apply_good."""
    paid_on = paid_on or dt.date.today()
    with store.transaction(actor=actor) as conn:
        layout = Layout.load(conn, bank_code)
        parsed = read_file(layout, layout.result_fields, content)
        references = [r["reference"] for _, r in parsed if isinstance(r, dict)]
        with conn.cursor(row_factory=dict_row) as cursor:
            exported = {
                row["reference"]: row
                for row in cursor.execute(
                    "SELECT r.reference, r.account_ids, r.amount FROM bank_export_row r "
                    "JOIN bank_export e ON e.id = r.export_id WHERE e.bank_code = %s AND r.reference = ANY(%s)",
                    [bank_code, references],
                )
            }
            known = {
                row["bank_reference"]
                for row in cursor.execute(
                    "SELECT bank_reference FROM bank_result WHERE bank_reference = ANY(%s)",
                    [[r["bank_reference"] for _, r in parsed if isinstance(r, dict)]],
                )
            }
        bad: list[tuple[int, str]] = []
        good: list[tuple[dict[str, str], Decimal, bool]] = []
        seen: set[str] = set()
        duplicates = 0
        for number, row in parsed:
            if isinstance(row, str):
                bad.append((number, row))
                continue
            try:
                amount = _amount(row)
            except (InvalidOperation, ValueError):
                bad.append((number, f"amount is not a money amount: {row.get('amount_fen', row.get('amount'))!r}"))
                continue
            source = exported.get(row["reference"])
            success = row["status"] in layout.success_codes
            if source is None:
                bad.append((number, f"unknown reference {row['reference']!r}"))
            elif not row["bank_reference"]:
                bad.append((number, "no bank reference"))
            elif row["bank_reference"] in seen:
                bad.append((number, f"bank reference {row['bank_reference']} twice in the file"))
            elif success and not ZERO < amount <= source["amount"]:
                bad.append((number, f"amount {amount} outside 0.01 .. {source['amount']} exported"))
            elif row["bank_reference"] in known:
                duplicates += 1
            else:
                good.append((row, amount, success))
            seen.add(row["bank_reference"])
        if bad and not apply_good:
            raise BankFileError(bad)
        result = conn.execute(
            "INSERT INTO bank_import (bank_code, file_name, imported_by, succeeded, failed, duplicates) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            [bank_code, file_name, actor, sum(g[2] for g in good), sum(not g[2] for g in good), duplicates],
        ).fetchone()
        assert result is not None
        import_id = int(result[0])
        payments = []
        for row, amount, success in good:
            payment_id = None
            if success:
                account_ids = list(exported[row["reference"]]["account_ids"])
                held = lock_accounts(conn, account_ids, paid_on)
                paid = pay_locked(
                    conn,
                    held,
                    account_ids,
                    account_ids[0],
                    amount,
                    actor,
                    paid_on,
                    "bank",
                    bank_reference=row["bank_reference"],
                    note=f"bank file {file_name}",
                )
                payment_id = paid.payment_id
                payments.append(payment_id)
            conn.execute(
                "INSERT INTO bank_result (import_id, bank_reference, reference, outcome, amount, message, payment_id) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    import_id,
                    row["bank_reference"],
                    row["reference"],
                    "success" if success else "failure",
                    amount,
                    row.get("message", ""),
                    payment_id,
                ],
            )
        return ImportReport(import_id, sum(g[2] for g in good), sum(not g[2] for g in good), duplicates, bad, payments)


def bank_outcomes(store: Store, unnotified_only: bool = True) -> list[dict[str, Any]]:
    """Withholding outcomes per account for notifications (SMS, app): account, outcome, amount, message."""
    with store.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(
            "SELECT r.id, a.account_no, c.phone, r.outcome, r.amount, r.message, r.created_at FROM bank_result r "
            "JOIN bank_export_row x ON x.reference = r.reference JOIN account a ON a.id = ANY(x.account_ids) "
            "JOIN customer c ON c.id = a.customer_id WHERE NOT %s OR r.notified_at IS NULL ORDER BY r.id, a.account_no",
            [unnotified_only],
        ).fetchall()


def mark_notified(store: Store, result_ids: list[int]) -> None:
    with store.transaction() as conn:
        conn.execute(
            "UPDATE bank_result SET notified_at = now() WHERE id = ANY(%s) AND notified_at IS NULL", [result_ids]
        )
