"""Bank withholding round trips: export a debit file, import the bank's answer with bad rows, twice."""

import csv
import io
import json
from decimal import Decimal

import pytest

from billing.bank import BankFileError, bank_outcomes, export_withholding, import_results, mark_notified
from meterhub.store import Store
from tests.billing.ledger_helpers import D, at, billed, day
from tests.billing.store_helpers import count

EXPORT = [
    {"name": "reference", "width": 15},
    {"name": "account_no", "width": 10},
    {"name": "bank_account_no", "width": 19},
    {"name": "holder_name", "width": 8},
    {"name": "amount_fen", "width": 12, "align": "right", "pad": "0"},
]
RESULT = [
    {"name": "reference", "width": 15},
    {"name": "bank_reference", "width": 12},
    {"name": "status", "width": 4},
    {"name": "amount_fen", "width": 12, "align": "right", "pad": "0"},
    {"name": "message", "width": 10},
]


def _result_line(reference: str, bank_reference: str, status: str, fen: int, message: str) -> str:
    return f"{reference:<15}{bank_reference:<12}{status:<4}{fen:0>12}{message:<10}"


def _setup(
    store: Store,
    fmt: str,
    group_by: str,
    fields: list[dict[str, object]] = EXPORT,
    result: list[dict[str, object]] = RESULT,
) -> dict[str, int]:
    ids = billed(
        store,
        {"1001": ["10", "20"], "1002": ["30"], "1003": ["5"], "1004": ["7"]},
    )
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO bank_layout (code, bank_name, format, group_by, fields, result_fields) "
            "VALUES ('ICBC', 'ICBC', %s, %s, %s, %s)",
            [fmt, group_by, json.dumps(fields), json.dumps(result)],
        )
        conn.execute(
            "UPDATE account SET customer_id = (SELECT customer_id FROM account WHERE account_no = '1001') "
            "WHERE account_no = '1002'"
        )
        for no in ("1001", "1002", "1003"):  # 1004 has no agreement
            conn.execute(
                "INSERT INTO bank_agreement VALUES (%s, 'ICBC', %s, 'Holder')",
                [ids[no], "6222000000000001003" if no == "1003" else "6222000000000001001"],
            )
    return ids


def test_fixed_width_round_trip_by_account_with_bad_rows(store: Store) -> None:
    ids = _setup(store, "fixed", "account")
    export = export_withholding(store, "ICBC", "clerk", as_of=day("2024-03-05"))
    lines = export.content.decode().splitlines()
    # 1001 owes 20.00 + 40.00, 1002 60.00, 1003 10.00
    assert [(line[15:25].strip(), line[52:]) for line in lines] == [
        ("1001", "000000006000"),
        ("1002", "000000006000"),
        ("1003", "000000001000"),
    ]
    assert (export.rows, export.amount) == (3, D("130.00"))
    refs = [line[:15] for line in lines]
    answer = [
        _result_line(refs[0], "BK1", "0000", 6000, "OK"),
        _result_line(refs[1], "BK2", "0005", 6000, "NO FUNDS"),
        _result_line(refs[2], "BK3", "0000", 9999, "OK"),  # more than exported
        _result_line("9" * 15, "BK4", "0000", 1000, "OK"),  # not ours
        "short line",
    ]
    content = ("\r\n".join(answer) + "\r\n").encode()
    with pytest.raises(BankFileError) as error:
        import_results(store, "ICBC", "result.txt", content, "clerk", paid_on=day("2024-03-06"))
    assert [n for n, _ in error.value.bad] == [3, 4, 5]
    assert "outside" in error.value.bad[0][1] and "unknown reference" in error.value.bad[1][1]
    assert count(store, "payment") == 0 and count(store, "bank_result") == 0  # nothing half-applied
    report = import_results(store, "ICBC", "result.txt", content, "clerk", paid_on=day("2024-03-06"), apply_good=True)
    assert (report.succeeded, report.failed, report.duplicates, len(report.bad)) == (1, 1, 0, 3)
    assert at(store, ids["1001"], "2024-03-06").total_due == 0
    assert at(store, ids["1002"], "2024-03-06").total_due == D("60.00")
    again = import_results(store, "ICBC", "result.txt", content, "clerk", paid_on=day("2024-03-06"), apply_good=True)
    assert (again.succeeded, again.failed, again.duplicates) == (0, 0, 2)
    assert count(store, "payment") == 1
    outcomes = bank_outcomes(store)
    assert [(o["account_no"], o["outcome"], o["message"]) for o in outcomes] == [
        ("1001", "success", "OK"),
        ("1002", "failure", "NO FUNDS"),
    ]
    mark_notified(store, [o["id"] for o in outcomes])
    assert bank_outcomes(store) == []


def test_csv_by_customer_sums_the_customers_accounts(store: Store) -> None:
    fields = [{"name": n} for n in ("reference", "customer_no", "account_no", "amount")]
    result = [{"name": n} for n in ("reference", "bank_reference", "status", "amount", "message")]
    ids = _setup(store, "csv", "customer", fields, result)
    export = export_withholding(store, "ICBC", "clerk", as_of=day("2024-03-05"))
    rows = list(csv.DictReader(io.StringIO(export.content.decode())))
    assert [(r["customer_no"], r["amount"]) for r in rows] == [("CU-1001", "120.00"), ("CU-1003", "10.00")]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["reference", "bank_reference", "status", "amount", "message"])
    writer.writerow([rows[0]["reference"], "B1", "0000", "100.00", ""])  # partial: oldest bills first
    writer.writerow([rows[1]["reference"], "B2", "0000", "ten", ""])
    with pytest.raises(BankFileError, match="line 3: amount"):
        import_results(store, "ICBC", "r.csv", out.getvalue().encode(), "clerk", paid_on=day("2024-03-06"))
    import_results(store, "ICBC", "r.csv", out.getvalue().encode(), "clerk", paid_on=day("2024-03-06"), apply_good=True)
    # January of 1001 (20.00) and 1002 (60.00), then February of 1001: 20.00 of 40.00
    assert at(store, ids["1001"], "2024-03-06").total_due == D("20.00")
    assert at(store, ids["1002"], "2024-03-06").total_due == 0


def test_excel_by_bill(store: Store) -> None:
    from openpyxl import Workbook, load_workbook

    fields = [{"name": n} for n in ("reference", "account_no", "period", "amount")]
    result = [{"name": n} for n in ("reference", "bank_reference", "status", "amount")]
    ids = _setup(store, "xlsx", "bill", fields, result)
    export = export_withholding(store, "ICBC", "clerk", as_of=day("2024-03-05"))
    sheet = load_workbook(io.BytesIO(export.content)).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0] == ("reference", "account_no", "period", "amount")
    assert [r[1:] for r in rows[1:]] == [
        ("1001", "2024-01", "20.00"),
        ("1001", "2024-02", "40.00"),
        ("1002", "2024-01", "60.00"),
        ("1003", "2024-01", "10.00"),
    ]
    book = Workbook()
    answer = book.active
    assert answer is not None
    answer.append(["reference", "bank_reference", "status", "amount"])
    answer.append([rows[2][0], "X1", "0000", "40.00"])
    out = io.BytesIO()
    book.save(out)
    import_results(store, "ICBC", "r.xlsx", out.getvalue(), "clerk", paid_on=day("2024-03-06"))
    # the bank paid the February bill's row; the ledger applies it to the oldest bill first
    assert at(store, ids["1001"], "2024-03-06").total_due == D("20.00")
    assert sum((Decimal(r[3]) for r in rows[1:]), D(0)) == export.amount
