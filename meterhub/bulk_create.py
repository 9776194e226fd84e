"""Bulk creation from an Excel template (批量建档): one .xlsx file creating customers, accounts and their
meters together, for a new estate handed over by the developer or records moved from an old system.

One row is one new customer with one account (户号) and, when a meter number is given, the meter installed on
it (a new meter of the given model, or one in stock); a row without a meter but with an installer's code
puts the account on that installer's list (分配安装派工). Rows whose first cell starts with "#" (the
template's example row) and empty rows are skipped.

The file is checked as a whole before anything is written: required fields, formats (the same rules as
opening one account), duplicates inside the file and against the database, codes of communities, buildings,
usage types, meter models and installers that do not exist or are inactive. Every problem is reported with
its row and column (`BulkRejected.issues`); a file with any problem creates nothing. A valid file is created
in one transaction with the same records the one-by-one services leave: change history naming the person,
an `account_action` 'open' per account, and per installed meter its `meter_assignment` and its
`meter_action` 'install' (see meterhub.accounts, meterhub.meters).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from meterhub import accounts, warehouse
from meterhub.accounts import AccountError
from meterhub.meters import MeterError, local_midnight, parse_reading
from meterhub.store import Store

MAX_ROWS = 20_000
MAX_BYTES = 20 * 1024 * 1024
SHEET = "建档 accounts"
CODES_SHEET = "代码 codes"
HELP_SHEET = "说明 help"


@dataclass(frozen=True)
class Field:
    key: str
    zh: str
    required: bool = False
    help_zh: str = ""
    help_en: str = ""
    text: bool = False  # formatted as text in the template (numbers with leading zeros, long digit strings)


FIELDS: tuple[Field, ...] = (
    Field("customer_name", "客户名称", True, "个人姓名或单位名称", "a person's or organisation's name"),
    Field(
        "customer_kind",
        "客户类型",
        False,
        "person 个人 / organisation 单位，空为个人",
        "person or organisation; blank: person",
    ),
    Field("phone", "联系电话", False, "", "", True),
    Field("id_number", "证件号码", False, "18 位身份证号须校验位正确", "an 18-character resident ID must check", True),
    Field("household_size", "家庭人口", False, "1–99，空为 3", "1–99; blank: 3"),
    Field("customer_no", "客户编号", False, "空则自动编号", "blank: numbered automatically", True),
    Field("account_no", "户号", False, "空则自动编号", "blank: numbered automatically", True),
    Field("community", "小区编码", True, "见「代码」页", "see the codes sheet"),
    Field("building", "楼栋编码", False, "该小区的楼栋编码", "a building code of that community", True),
    Field("address", "用气地址", True, "", "the supply address"),
    Field("usage_type", "用气性质编码", True, "见「代码」页", "see the codes sheet"),
    Field(
        "billing_mode",
        "计费方式",
        False,
        "postpaid / prepaid_account / prepaid_meter，空为 postpaid",
        "postpaid, prepaid_account or prepaid_meter; blank: postpaid",
    ),
    Field("card_no", "卡号", False, "", "", True),
    Field("opened_on", "开户日期", False, "YYYY-MM-DD，空为今天", "YYYY-MM-DD; blank: today"),
    Field(
        "meter_no", "表号", False, "有表号则装表；库存表或新表", "given: the meter is installed (in stock or new)", True
    ),
    Field(
        "model", "表型号", False, "厂家编码/型号，新表必填", "manufacturer code/model name; required for a new meter"
    ),
    Field(
        "protocol_address", "通讯地址", False, "CJ/T 188 地址、Modbus 单元号等", "CJ/T 188 address, Modbus unit …", True
    ),
    Field("install_date", "装表日期", False, "YYYY-MM-DD，空为开户日期", "YYYY-MM-DD; blank: the opening date"),
    Field("initial_reading", "表底数", False, "m³，至多 3 位小数，空为 0", "m³, at most 3 decimals; blank: 0"),
    Field("installer", "安装人员编码", False, "无表时派工给该安装人员", "no meter: dispatch to this installer"),
)
BY_KEY = {f.key: f for f in FIELDS}
KIND_WORDS = {
    "person": "person",
    "个人": "person",
    "organisation": "organisation",
    "organization": "organisation",
    "单位": "organisation",
    "": "person",
}
_TOKEN = re.compile(r"[a-z_]+")


def header_text(f: Field) -> str:
    return f"{f.zh} {f.key}" + (" *" if f.required else "")


@dataclass(frozen=True)
class Issue:
    """A problem of the file: `row` as Excel numbers it (1 is the header), `column` the field's key
    (empty for the whole row), `letter` the Excel column."""

    row: int
    column: str
    letter: str
    code: str
    message: str
    params: dict[str, str] = field(default_factory=dict)


class BulkRejected(ValueError):
    """The file was refused; nothing was created. `issues` lists every problem found."""

    def __init__(self, issues: list[Issue], rows: int = 0) -> None:
        super().__init__(f"{len(issues)} problem(s) in the file; nothing was created")
        self.issues = issues
        self.rows = rows


@dataclass(frozen=True)
class BulkResult:
    import_id: int
    rows: int
    customers: int
    accounts: int
    meters: int
    orders: int
    account_nos: list[str]


@dataclass
class _Row:
    line: int
    values: dict[str, Any]
    clean: dict[str, Any] = field(default_factory=dict)


def _letter(index: int) -> str:
    from openpyxl.utils import get_column_letter

    return get_column_letter(index + 1)


# -- reading the file ------------------------------------------------------------------------------------------
def _cell_text(value: Any) -> str:
    """A cell as text: whole numbers without '.0', dates as ISO dates."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value).strip()


def _match_header(text: str) -> str | None:
    text = text.strip().rstrip("*").strip()
    if not text:
        return None
    for token in _TOKEN.findall(text.lower()):
        if token in BY_KEY:
            return token
    for f in FIELDS:
        if text == f.zh or text.startswith(f.zh + " "):
            return f.key
    return None


def read_rows(content: bytes) -> tuple[dict[int, str], list[_Row], list[Issue]]:
    """The header's fields by column index, the data rows, and the problems of the header or the file."""
    from openpyxl import load_workbook

    if len(content) > MAX_BYTES:
        return (
            {},
            [],
            [
                Issue(
                    0,
                    "",
                    "",
                    "too_large",
                    f"the file is larger than {MAX_BYTES // 1024 // 1024} MB",
                    {"limit": str(MAX_BYTES // 1024 // 1024)},
                )
            ],
        )
    try:
        book = load_workbook(io.BytesIO(content), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for files that are not workbooks
        return {}, [], [Issue(0, "", "", "not_xlsx", f"not an Excel .xlsx file ({type(exc).__name__})")]
    try:
        sheet = book[SHEET] if SHEET in book.sheetnames else book.worksheets[0]
        lines = sheet.iter_rows(values_only=True)
        header = next(lines, None)
        issues: list[Issue] = []
        columns: dict[int, str] = {}
        for index, value in enumerate(header or ()):
            text = _cell_text(value)
            if not text:
                continue
            key = _match_header(text)
            if key is None:
                issues.append(
                    Issue(1, "", _letter(index), "unknown_column", f"unknown column {text!r}", {"value": text})
                )
            elif key in columns.values():
                issues.append(Issue(1, key, _letter(index), "column_twice", f"column {key} appears twice"))
            else:
                columns[index] = key
        for f in FIELDS:
            if f.required and f.key not in columns.values():
                issues.append(Issue(1, f.key, "", "missing_column", f"the column {f.key} is missing"))
        rows: list[_Row] = []
        for number, values in enumerate(lines, start=2):
            cells = {key: _cell_text(values[i]) if i < len(values) else "" for i, key in columns.items()}
            first = next((_cell_text(v) for v in values if _cell_text(v)), "")
            if not first or first.startswith("#"):
                continue
            if len(rows) >= MAX_ROWS:
                issues.append(
                    Issue(
                        number,
                        "",
                        "",
                        "too_many_rows",
                        f"more than {MAX_ROWS} rows; split the file",
                        {"limit": str(MAX_ROWS)},
                    )
                )
                break
            raw = {key: values[i] if i < len(values) else None for i, key in columns.items()}
            rows.append(_Row(number, cells | {"_raw_" + k: v for k, v in raw.items()}))
        if header is None:
            issues.append(Issue(1, "", "", "empty", "the sheet is empty"))
        return columns, rows, issues
    finally:
        book.close()


# -- checking ----------------------------------------------------------------------------------------------------
class _Checker:
    def __init__(self, columns: dict[int, str], today: date) -> None:
        self.letters = {key: _letter(i) for i, key in columns.items()}
        self.today = today
        self.issues: list[Issue] = []

    def add(self, row: _Row, key: str, code: str, message: str, **params: Any) -> None:
        self.issues.append(
            Issue(row.line, key, self.letters.get(key, ""), code, message, {k: str(v) for k, v in params.items()})
        )

    def from_error(self, row: _Row, key: str, exc: AccountError | MeterError) -> None:
        self.add(row, key, exc.code, exc.message, **exc.params)

    def date(self, row: _Row, key: str) -> date | None:
        raw = row.values.get("_raw_" + key)
        if isinstance(raw, datetime):
            return raw.date()
        if isinstance(raw, date):
            return raw
        text = row.values.get(key, "")
        if not text:
            return None
        try:
            return date.fromisoformat(text.replace("/", "-"))
        except ValueError:
            self.add(row, key, "bad_date", f"{key} {text!r}: a date YYYY-MM-DD", value=text)
            return None


def _clean_row(check: _Checker, row: _Row) -> None:
    v = row.values
    c = row.clean
    for f in FIELDS:
        if f.required and not v.get(f.key, ""):
            check.add(row, f.key, "required", f"{f.key} is required")
    for key, cleaner in (
        ("customer_name", lambda t: accounts._text(t, "name", accounts.MAX_NAME)),
        ("phone", accounts._phone),
        ("id_number", accounts._id_number),
        ("customer_no", lambda t: accounts._number(t, "customer_no")),
        ("account_no", lambda t: accounts._number(t, "account_no")),
        ("card_no", lambda t: accounts._number(t, "card_no")),
        ("meter_no", lambda t: accounts._number(t, "meter_no")),
        ("address", lambda t: accounts._text(t, "address", accounts.MAX_ADDRESS)),
        ("protocol_address", lambda t: accounts._text(t, "protocol_address", 64)),
    ):
        try:
            c[key] = cleaner(v.get(key, ""))
        except AccountError as exc:
            check.from_error(row, key, exc)
            c[key] = ""
    raw_id = v.get("_raw_id_number")
    if isinstance(raw_id, float) and len(v.get("id_number", "")) > 15:
        check.add(row, "id_number", "number_cell", "id_number: enter it as text, Excel has rounded it")
    kind = v.get("customer_kind", "").strip().lower()
    if kind not in KIND_WORDS:
        check.add(
            row, "customer_kind", "bad_choice", "customer_kind: person or organisation", choices="person, organisation"
        )
    c["customer_kind"] = KIND_WORDS.get(kind, "person")
    size = v.get("household_size", "")
    try:
        c["household_size"] = accounts._household(size) if size else 3
    except AccountError as exc:
        check.from_error(row, "household_size", exc)
    mode = v.get("billing_mode", "") or "postpaid"
    if mode not in accounts.BILLING_MODES:
        check.add(
            row,
            "billing_mode",
            "bad_choice",
            f"billing_mode: one of {', '.join(accounts.BILLING_MODES)}",
            choices=", ".join(accounts.BILLING_MODES),
        )
    c["billing_mode"] = mode
    for key in ("community", "building", "usage_type", "model", "installer"):
        c[key] = v.get(key, "").strip()
    opened = check.date(row, "opened_on") or check.today
    if opened > check.today:
        check.add(row, "opened_on", "future_date", f"opened on {opened}: that is after today")
    c["opened_on"] = opened
    if c["meter_no"]:
        installed = check.date(row, "install_date") or opened
        if installed > check.today:
            check.add(row, "install_date", "future_date", f"installed on {installed}: that is after today")
        if installed < opened:
            check.add(
                row,
                "install_date",
                "before_opening",
                f"installed on {installed}: before the account was opened on {opened}",
                date=opened,
            )
        c["install_date"] = installed
        try:
            c["initial_reading"] = parse_reading(v.get("initial_reading") or "0", "initial reading")
        except MeterError as exc:
            check.from_error(row, "initial_reading", exc)
        if c["installer"]:
            check.add(row, "installer", "installer_with_meter", "a row with a meter needs no installer")
    else:
        for key in ("model", "protocol_address", "install_date", "initial_reading"):
            if v.get(key, ""):
                check.add(row, key, "needs_meter", f"{key} needs a meter number")


def _duplicates(check: _Checker, rows: Sequence[_Row], keys: Iterable[str]) -> None:
    for key in keys:
        first: dict[str, int] = {}
        for row in rows:
            value = row.clean.get(key)
            if not value:
                continue
            if value in first:
                check.add(
                    row,
                    key,
                    "duplicate_in_file",
                    f"{key} {value} is also in row {first[value]}",
                    value=value,
                    other=first[value],
                )
            else:
                first[value] = row.line


def _lookup(conn: psycopg.Connection[Any], query: str, values: Iterable[Any]) -> dict[Any, Any]:
    wanted = sorted({v for v in values if v})
    if not wanted:
        return {}
    return {r[0]: r[1:] for r in conn.execute(query, [wanted])}


def _check_database(check: _Checker, conn: psycopg.Connection[Any], rows: Sequence[_Row]) -> dict[str, Any]:
    """Codes to ids, numbers already taken; what creation needs."""
    refs: dict[str, Any] = {}

    def col(key: str) -> list[Any]:
        return [r.clean.get(key) for r in rows]

    refs["community"] = _lookup(conn, "SELECT code, id, active FROM community WHERE code = ANY(%s)", col("community"))
    refs["usage_type"] = _lookup(
        conn, "SELECT code, id, active FROM usage_type WHERE code = ANY(%s)", col("usage_type")
    )
    refs["installer"] = _lookup(conn, "SELECT code, id, active FROM installer WHERE code = ANY(%s)", col("installer"))
    refs["model"] = _lookup(
        conn,
        """SELECT mf.code || '/' || mm.name, mm.id, mm.active AND mf.active, mm.driver_key, mm.prepaid_capable,
                  mm.register_max
             FROM meter_model mm JOIN manufacturer mf ON mf.id = mm.manufacturer_id
            WHERE mf.code || '/' || mm.name = ANY(%s)""",
        col("model"),
    )
    buildings = _lookup(
        conn,
        """SELECT c.code || '/' || b.code, b.id, b.active FROM building b JOIN community c ON c.id = b.community_id
            WHERE c.code || '/' || b.code = ANY(%s)""",
        [f"{r.clean['community']}/{r.clean['building']}" for r in rows if r.clean.get("building")],
    )
    refs["building"] = buildings
    taken = {
        "customer_no": _lookup(
            conn, "SELECT customer_no, id FROM customer WHERE customer_no = ANY(%s)", col("customer_no")
        ),
        "account_no": _lookup(conn, "SELECT account_no, id FROM account WHERE account_no = ANY(%s)", col("account_no")),
        "card_no": _lookup(conn, "SELECT card_no, id FROM account WHERE card_no = ANY(%s)", col("card_no")),
    }
    meters = _lookup(
        conn,
        """SELECT m.meter_no, m.id, m.status, m.account_id, m.driver_key, mm.prepaid_capable,
                  EXISTS (SELECT 1 FROM meter_assignment x WHERE x.meter_id = m.id AND x.valid_to IS NULL)
             FROM meter m LEFT JOIN meter_model mm ON mm.id = m.model_id WHERE m.meter_no = ANY(%s)""",
        col("meter_no"),
    )
    refs["meter"] = meters
    names = {"community": "community", "usage_type": "usage type", "installer": "installer", "model": "meter model"}
    for row in rows:
        c = row.clean
        for key, what in names.items():
            code = c.get(key)
            if not code:
                continue
            found = refs[key].get(code)
            if found is None:
                check.add(row, key, "unknown_code", f"no {what} {code!r}", value=code)
            elif not found[1]:
                check.add(row, key, "inactive_code", f"{what} {code} is inactive", value=code)
        if c.get("building") and c.get("community"):
            found = buildings.get(f"{c['community']}/{c['building']}")
            if found is None:
                check.add(
                    row,
                    "building",
                    "unknown_building",
                    f"no building {c['building']!r} in community {c['community']}",
                    value=c["building"],
                    community=c["community"],
                )
            elif not found[1]:
                check.add(
                    row, "building", "inactive_code", f"building {c['building']} is inactive", value=c["building"]
                )
        for key, taken_here in taken.items():
            if c.get(key) and c[key] in taken_here:
                check.add(row, key, "exists", f"{key} {c[key]} is already in use", value=c[key])
        if c.get("meter_no"):
            meter = meters.get(c["meter_no"])
            model = refs["model"].get(c.get("model") or "")
            if meter is not None:
                _, status, account_id, _, _, assigned = meter
                if status != "in_stock" or account_id is not None or assigned:
                    check.add(
                        row,
                        "meter_no",
                        "meter_in_use",
                        f"meter {c['meter_no']} is {status}, not in stock",
                        value=c["meter_no"],
                        status=status,
                    )
                elif c.get("model"):
                    check.add(row, "model", "model_of_stock_meter", "a meter in stock keeps its own model")
                prepaid = meter[4]
            elif not c.get("model"):
                check.add(row, "model", "model_required", "a new meter needs its model")
                prepaid = None
            else:
                prepaid = model[3] if model else None
            if c.get("billing_mode") == "prepaid_meter" and prepaid is False:
                check.add(
                    row,
                    "billing_mode",
                    "not_prepaid_capable",
                    "prepaid_meter needs a meter model capable of prepayment",
                )
    addresses: dict[tuple[str, str], int] = {}
    for row in rows:
        c = row.clean
        model = refs["model"].get(c.get("model") or "")
        meter = meters.get(c.get("meter_no") or "")
        driver = model[2] if model else meter[3] if meter else None
        if driver and c.get("protocol_address"):
            spot = (driver, c["protocol_address"])
            if spot in addresses:
                check.add(
                    row,
                    "protocol_address",
                    "duplicate_in_file",
                    f"protocol_address {spot[1]} is also in row {addresses[spot]}",
                    value=spot[1],
                    other=addresses[spot],
                )
            else:
                addresses[spot] = row.line
    wanted = sorted({(d, a) for d, a in addresses})
    if wanted:
        used = {
            (r[0], r[1])
            for r in conn.execute(
                """SELECT m.driver_key, m.protocol_address FROM meter m
                     JOIN unnest(%s::text[], %s::text[]) AS u(d, a) ON m.driver_key = u.d AND m.protocol_address = u.a
                    WHERE m.status <> 'removed'""",
                [[w[0] for w in wanted], [w[1] for w in wanted]],
            )
        }
        for row in rows:
            c = row.clean
            model = refs["model"].get(c.get("model") or "")
            if model and (model[2], c.get("protocol_address")) in used:
                check.add(
                    row,
                    "protocol_address",
                    "exists",
                    f"protocol_address {c['protocol_address']} is already in use",
                    value=c["protocol_address"],
                )
    return refs


def check_file(
    conn: psycopg.Connection[Any], content: bytes, today: date
) -> tuple[list[_Row], dict[str, Any], list[Issue]]:
    columns, rows, issues = read_rows(content)
    if issues and any(i.row <= 1 for i in issues):
        return rows, {}, issues
    if not rows:
        return rows, {}, [Issue(0, "", "", "no_rows", "the file has no rows to create")]
    check = _Checker(columns, today)
    for row in rows:
        _clean_row(check, row)
    _duplicates(check, rows, ("customer_no", "account_no", "card_no", "meter_no"))
    refs = _check_database(check, conn, rows)
    refs["letters"] = check.letters
    issues = issues + check.issues
    issues.sort(key=lambda i: (i.row, i.letter or "~", i.column))
    return rows, refs, issues


# -- creating ----------------------------------------------------------------------------------------------------
def _numbers(conn: psycopg.Connection[Any], kind: str, count: int, reserved: set[str]) -> list[str]:
    """`count` free customer or account numbers in the forms meterhub.accounts gives, from its sequences."""
    if count == 0:
        return []
    table, column, sequence = (
        ("customer", "customer_no", "customer_no_seq")
        if kind == "customer"
        else ("account", "account_no", "account_no_seq")
    )

    def form(n: int) -> str:
        return f"C{n:07d}" if kind == "customer" else f"{n:09d}{accounts._luhn(f'{n:09d}')}"

    out: list[str] = []
    for _attempt in range(3):
        numbers = [
            form(int(r[0]))
            for r in conn.execute("SELECT nextval(%s) FROM generate_series(1, %s)", [sequence, count - len(out)])
        ]
        taken = {r[0] for r in conn.execute(f"SELECT {column} FROM {table} WHERE {column} = ANY(%s)", [numbers])}
        out += [n for n in numbers if n not in taken and n not in reserved]
        if len(out) == count:
            return out
        highest = (
            "SELECT max(substr(customer_no, 2)::bigint) FROM customer WHERE customer_no ~ '^C[0-9]{7,15}$'"
            if kind == "customer"
            else "SELECT max(substr(account_no, 1, 9)::bigint) FROM account WHERE account_no ~ '^[0-9]{10}$'"
        )
        top = conn.execute(highest).fetchone()
        if top and top[0] is not None:
            conn.execute("SELECT setval(%s, greatest(%s, currval(%s)))", [sequence, int(top[0]), sequence])
    raise AccountError("no_number", f"no free {column} could be generated; give them in the file", status=409)


def _create(
    conn: psycopg.Connection[Any],
    rows: Sequence[_Row],
    refs: dict[str, Any],
    *,
    filename: str,
    digest: str,
    timezone: str,
    today: date,
) -> BulkResult:
    record = conn.execute("SELECT nextval(pg_get_serial_sequence('bulk_import', 'id'))").fetchone()
    assert record is not None
    import_id = int(record[0])
    given_customers = {r.clean["customer_no"] for r in rows if r.clean.get("customer_no")}
    given_accounts = {r.clean["account_no"] for r in rows if r.clean.get("account_no")}
    new_customers = iter(
        _numbers(conn, "customer", sum(1 for r in rows if not r.clean.get("customer_no")), given_customers)
    )
    new_accounts = iter(
        _numbers(conn, "account", sum(1 for r in rows if not r.clean.get("account_no")), given_accounts)
    )
    for r in rows:
        r.clean["customer_no"] = r.clean.get("customer_no") or next(new_customers)
        r.clean["account_no"] = r.clean.get("account_no") or next(new_accounts)
    c = [r.clean for r in rows]
    customer_ids = dict(
        conn.execute(
            """INSERT INTO customer (customer_no, name, kind, phone, id_number, household_size, address)
               SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[])
               RETURNING customer_no, id""",
            [
                [x["customer_no"] for x in c],
                [x["customer_name"] for x in c],
                [x["customer_kind"] for x in c],
                [x["phone"] for x in c],
                [x["id_number"] for x in c],
                [x["household_size"] for x in c],
                [x["address"] for x in c],
            ],
        ).fetchall()
    )
    buildings = refs["building"]
    account_ids = dict(
        conn.execute(
            """INSERT INTO account (account_no, customer_id, community_id, building_id, address, usage_type_id,
                                    billing_mode, card_no, opened_on)
               SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::text[], %s::bigint[],
                                    %s::text[], %s::text[], %s::date[])
               RETURNING account_no, id""",
            [
                [x["account_no"] for x in c],
                [customer_ids[x["customer_no"]] for x in c],
                [refs["community"][x["community"]][0] for x in c],
                [buildings[f"{x['community']}/{x['building']}"][0] if x["building"] else None for x in c],
                [x["address"] for x in c],
                [refs["usage_type"][x["usage_type"]][0] for x in c],
                [x["billing_mode"] for x in c],
                [x["card_no"] or None for x in c],
                [x["opened_on"] for x in c],
            ],
        ).fetchall()
    )
    with_meter = [x for x in c if x["meter_no"]]
    new_meters = [x for x in with_meter if x["meter_no"] not in refs["meter"]]
    stock_meters = [x for x in with_meter if x["meter_no"] in refs["meter"]]
    meter_ids: dict[str, int] = {}
    if new_meters:
        models = refs["model"]
        meter_ids.update(
            conn.execute(
                """INSERT INTO meter (meter_no, model_id, driver_key, protocol_address, account_id, prepaid, status,
                                      install_date, initial_reading, register_max)
                   SELECT u.no, u.model, u.driver, u.address, u.account, u.prepaid, 'installed', u.day, u.reading,
                          u.register_max
                     FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::bool[],
                                 %s::date[], %s::numeric[], %s::numeric[])
                          AS u(no, model, driver, address, account, prepaid, day, reading, register_max)
                   RETURNING meter_no, id""",
                [
                    [x["meter_no"] for x in new_meters],
                    [models[x["model"]][0] for x in new_meters],
                    [models[x["model"]][2] for x in new_meters],
                    [x["protocol_address"] for x in new_meters],
                    [account_ids[x["account_no"]] for x in new_meters],
                    [x["billing_mode"] == "prepaid_meter" for x in new_meters],
                    [x["install_date"] for x in new_meters],
                    [x["initial_reading"] for x in new_meters],
                    [models[x["model"]][4] for x in new_meters],
                ],
            ).fetchall()
        )
    if stock_meters:
        conn.execute(
            """UPDATE meter m SET account_id = u.account, status = 'installed', install_date = u.day,
                      remove_date = NULL, initial_reading = u.reading,
                      protocol_address = CASE WHEN u.address = '' THEN m.protocol_address ELSE u.address END
                 FROM unnest(%s::text[], %s::bigint[], %s::date[], %s::numeric[], %s::text[])
                      AS u(no, account, day, reading, address)
                WHERE m.meter_no = u.no AND m.status = 'in_stock' AND m.account_id IS NULL""",
            [
                [x["meter_no"] for x in stock_meters],
                [account_ids[x["account_no"]] for x in stock_meters],
                [x["install_date"] for x in stock_meters],
                [x["initial_reading"] for x in stock_meters],
                [x["protocol_address"] for x in stock_meters],
            ],
        )
        meter_ids.update({x["meter_no"]: int(refs["meter"][x["meter_no"]][0]) for x in stock_meters})
    if with_meter:
        at = [local_midnight(x["install_date"], timezone) for x in with_meter]
        ids = [meter_ids[x["meter_no"]] for x in with_meter]
        accts = [account_ids[x["account_no"]] for x in with_meter]
        readings = [x["initial_reading"] for x in with_meter]
        note = f"bulk import #{import_id}"
        conn.execute(
            """INSERT INTO meter_assignment (account_id, meter_id, valid_from, first_value, note)
               SELECT a, m, t, v, %s FROM unnest(%s::bigint[], %s::bigint[], %s::timestamptz[], %s::numeric[])
                    AS u(a, m, t, v)""",
            [note, accts, ids, at, readings],
        )
        conn.execute(
            """INSERT INTO meter_action (meter_id, account_id, action, at, reading, reason)
               SELECT m, a, 'install', t, v, %s FROM unnest(%s::bigint[], %s::bigint[], %s::timestamptz[],
                                                            %s::numeric[]) AS u(m, a, t, v)""",
            [note, ids, accts, at, readings],
        )
    conn.execute(
        """INSERT INTO account_action (account_id, customer_id, kind, effective_on, detail, history_ids)
           SELECT a.id, a.customer_id, 'open', a.opened_on,
                  jsonb_build_object('customer_no', cu.customer_no, 'new_customer', true, 'bulk_import', %s::bigint),
                  array(SELECT h.id FROM change_history h
                         WHERE ((h.table_name = 'account' AND h.row_id = a.id)
                                OR (h.table_name = 'customer' AND h.row_id = a.customer_id))
                           AND h.changed_at >= now() AND h.xmin = pg_current_xact_id()::xid ORDER BY h.id)
             FROM account a JOIN customer cu ON cu.id = a.customer_id WHERE a.id = ANY(%s)""",
        [import_id, list(account_ids.values())],
    )
    _draw_from_stock(conn, rows, refs.get("letters", {}).get("meter_no", ""), today, f"bulk import #{import_id}")
    dispatched = [x for x in c if x["installer"]]
    if dispatched:
        orders = conn.execute(
            """INSERT INTO install_order (account_id, installer_id, note)
               SELECT a, i, %s FROM unnest(%s::bigint[], %s::bigint[]) AS u(a, i) RETURNING id, installer_id""",
            [
                f"bulk import #{import_id}",
                [account_ids[x["account_no"]] for x in dispatched],
                [refs["installer"][x["installer"]][0] for x in dispatched],
            ],
        ).fetchall()
        conn.execute(
            """INSERT INTO install_order_event (order_id, kind, to_installer_id, note)
               SELECT o, 'assign', i, %s FROM unnest(%s::bigint[], %s::bigint[]) AS u(o, i)""",
            [f"bulk import #{import_id}", [o[0] for o in orders], [o[1] for o in orders]],
        )
    conn.execute(
        """INSERT INTO bulk_import (id, filename, sha256, rows, customers, accounts, meters, orders)
           OVERRIDING SYSTEM VALUE VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
        [
            import_id,
            filename[:200],
            digest,
            len(rows),
            len(customer_ids),
            len(account_ids),
            len(with_meter),
            len(dispatched),
        ],
    )
    return BulkResult(
        import_id,
        len(rows),
        len(customer_ids),
        len(account_ids),
        len(with_meter),
        len(dispatched),
        [x["account_no"] for x in c],
    )


def _draw_from_stock(conn: psycopg.Connection[Any], rows: Sequence[_Row], letter: str, today: date, note: str) -> None:
    """Meters whose serial numbers the warehouse holds leave stock with their installation, as they do when
    installed through the meter pages (meterhub.warehouse.draw_for_install); meters unknown to the warehouse
    are installed without it. A serial number the warehouse cannot give out refuses the file."""
    issues: list[Issue] = []
    for row in rows:
        c = row.clean
        if not c.get("meter_no"):
            continue
        try:
            warehouse.draw_for_install(
                conn, c["meter_no"], account_no=c["account_no"], day=c["install_date"], today=today, note=note
            )
        except warehouse.WarehouseError as exc:
            params = {k: str(v) for k, v in exc.params.items()}
            issues.append(
                Issue(
                    row.line,
                    "meter_no",
                    letter,
                    "warehouse",
                    f"meter_no: {exc.message}",
                    {"value": c["meter_no"], "detail": exc.message, **params},
                )
            )
    if issues:
        raise BulkRejected(issues, len(rows))


def create_from_file(
    store: Store, actor: str, content: bytes, *, filename: str = "upload.xlsx", today: date | None = None
) -> BulkResult:
    """Check the whole file, then create every row in one transaction; `BulkRejected` with every problem
    when anything is wrong (and nothing created)."""
    today = today or datetime.now(ZoneInfo(store.settings.timezone)).date()
    digest = hashlib.sha256(content).hexdigest()
    try:
        with store.transaction(actor=actor) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('meterhub.bulk_create'))")
            rows, refs, issues = check_file(conn, content, today)
            if issues:
                raise BulkRejected(issues, len(rows))
            result = _create(
                conn, rows, refs, filename=filename, digest=digest, timezone=store.settings.timezone, today=today
            )
    except psycopg.errors.UniqueViolation as exc:
        message = (
            f"a number in the file was taken while it was being created ({exc.diag.constraint_name}); upload it again"
        )
        raise BulkRejected([Issue(0, "", "", "changed_meanwhile", message)]) from None
    return result


def imports(conn: psycopg.Connection[Any], limit: int = 20) -> list[tuple[Any, ...]]:
    """The latest accepted files: id, filename, rows, created_by, created_at."""
    return conn.execute(
        "SELECT id, filename, rows, created_by, created_at FROM bulk_import ORDER BY id DESC LIMIT %s", [limit]
    ).fetchall()


# -- the template ------------------------------------------------------------------------------------------------
EXAMPLE = {
    "customer_name": "#示例 张三 (example row: overwrite or delete)",
    "customer_kind": "person",
    "phone": "13800000000",
    "id_number": "11010519491231002X",
    "household_size": 3,
    "customer_no": "",
    "account_no": "",
    "community": "HD-01",
    "building": "1",
    "address": "1号楼 2单元 301",
    "usage_type": "RES",
    "billing_mode": "postpaid",
    "card_no": "",
    "opened_on": "2026-01-15",
    "meter_no": "M10000001",
    "model": "GOLDCARD/NB-IoT G2.5",
    "protocol_address": "",
    "install_date": "2026-01-15",
    "initial_reading": "0",
    "installer": "",
}


def template_bytes(conn: psycopg.Connection[Any]) -> bytes:
    """The template: the sheet to fill (header and an example row), the valid codes, and help on each column."""
    from openpyxl import Workbook
    from openpyxl.styles import Font, PatternFill
    from openpyxl.utils import get_column_letter

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = SHEET
    bold = Font(bold=True)
    required = PatternFill("solid", fgColor="FDE9D9")
    for index, f in enumerate(FIELDS, start=1):
        cell = sheet.cell(row=1, column=index, value=header_text(f))
        cell.font = bold
        if f.required:
            cell.fill = required
        example = sheet.cell(row=2, column=index, value=EXAMPLE.get(f.key, ""))
        example.font = Font(italic=True, color="808080")
        letter = get_column_letter(index)
        sheet.column_dimensions[letter].width = max(14, len(header_text(f)) + 4)
        if f.text:
            for row in range(2, 2002):
                sheet.cell(row=row, column=index).number_format = "@"
    sheet.freeze_panes = "A2"

    codes = book.create_sheet(CODES_SHEET)
    blocks: list[tuple[str, list[str], list[tuple[Any, ...]]]] = [
        (
            "小区 communities",
            ["code", "name", "area"],
            conn.execute(
                """SELECT c.code, c.name, a.name FROM community c JOIN area a ON a.id = c.area_id
                WHERE c.active ORDER BY c.code"""
            ).fetchall(),
        ),
        (
            "楼栋 buildings",
            ["community", "code", "name"],
            conn.execute(
                """SELECT c.code, b.code, b.name FROM building b JOIN community c ON c.id = b.community_id
                WHERE b.active ORDER BY c.code, b.code"""
            ).fetchall(),
        ),
        (
            "用气性质 usage types",
            ["code", "name", "name_en"],
            conn.execute("SELECT code, name, name_en FROM usage_type WHERE active ORDER BY code").fetchall(),
        ),
        (
            "表型号 meter models",
            ["model", "driver", "valve", "prepaid"],
            conn.execute(
                """SELECT mf.code || '/' || mm.name, mm.driver_key, mm.has_valve, mm.prepaid_capable
                 FROM meter_model mm JOIN manufacturer mf ON mf.id = mm.manufacturer_id
                WHERE mm.active AND mf.active ORDER BY 1"""
            ).fetchall(),
        ),
        (
            "安装人员 installers",
            ["code", "name", "company"],
            conn.execute("SELECT code, name, company FROM installer WHERE active ORDER BY code").fetchall(),
        ),
        ("计费方式 billing modes", ["code"], [(m,) for m in accounts.BILLING_MODES]),
        ("客户类型 customer kinds", ["code"], [(k,) for k in accounts.KINDS]),
    ]
    column = 1
    for title, headers, rows in blocks:
        codes.cell(row=1, column=column, value=title).font = bold
        for offset, text in enumerate(headers):
            codes.cell(row=2, column=column + offset, value=text).font = bold
            codes.column_dimensions[get_column_letter(column + offset)].width = 16
        for number, values in enumerate(rows, start=3):
            for offset, value in enumerate(values):
                codes.cell(row=number, column=column + offset, value=value)
        column += len(headers) + 1

    guide = book.create_sheet(HELP_SHEET)
    for index, text in enumerate(("column", "列", "required 必填", "说明", "help"), start=1):
        guide.cell(row=1, column=index, value=text).font = bold
    for number, f in enumerate(FIELDS, start=2):
        for index, value in enumerate((f.key, f.zh, "*" if f.required else "", f.help_zh, f.help_en), start=1):
            guide.cell(row=number, column=index, value=value)
    last = len(FIELDS) + 3
    guide.cell(row=last, column=1, value="以 # 开头的行（如示例行）与空行不导入；文件有任何错误则全部不建档。")
    guide.cell(
        row=last + 1,
        column=1,
        value="Rows starting with # (the example row) and empty rows are skipped; a file "
        "with any error creates nothing.",
    )
    for letter, width in (("A", 18), ("B", 14), ("C", 12), ("D", 40), ("E", 50)):
        guide.column_dimensions[letter].width = width
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def workbook_bytes(rows: Sequence[dict[str, Any]], fields: Sequence[str] | None = None) -> bytes:
    """A file in the template's layout with `rows` (for tests, benchmarks and other systems' exports)."""
    from openpyxl import Workbook

    keys = list(fields or [f.key for f in FIELDS])
    book = Workbook(write_only=True)
    sheet = book.create_sheet(SHEET)
    sheet.append([header_text(BY_KEY[k]) if k in BY_KEY else k for k in keys])
    for row in rows:
        sheet.append([row.get(k, "") for k in keys])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()
