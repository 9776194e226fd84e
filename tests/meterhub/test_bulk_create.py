"""批量建档 from the Excel template: the file is checked as a whole, every problem reported by row and column,
nothing created when anything is wrong; a valid file creates customers, accounts, installed meters and
installation orders in one transaction with the records the one-by-one services leave."""

from __future__ import annotations

import io
from datetime import date
from typing import Any

import pytest
from openpyxl import load_workbook

from meterhub import accounts, bulk_create
from meterhub.bulk_create import BulkRejected
from meterhub.store import Store

TODAY = date(2026, 11, 20)


def counts(store: Store) -> dict[str, int]:
    tables = (
        "customer",
        "account",
        "meter",
        "meter_assignment",
        "meter_action",
        "account_action",
        "install_order",
        "bulk_import",
        "change_history",
    )
    with store.connection() as conn:
        return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in tables}  # type: ignore[index]


@pytest.fixture
def base(store: Store) -> None:
    with store.transaction(actor="setup") as conn:
        conn.execute("INSERT INTO area (code, name) VALUES ('N', '城北片区')")
        conn.execute("INSERT INTO community (area_id, code, name) SELECT id, 'XF', '幸福小区' FROM area")
        conn.execute("INSERT INTO community (area_id, code, name, active) SELECT id, 'OLD', '旧区', false FROM area")
        conn.execute(
            "INSERT INTO building (community_id, code, name) SELECT id, '1', '1号楼' FROM community WHERE code = 'XF'"
        )
        conn.execute("INSERT INTO usage_type (code, name) VALUES ('RES', '居民生活用气'), ('COM', '商业用气')")
        conn.execute("INSERT INTO manufacturer (code, name) VALUES ('GX', '金秀仪表')")
        conn.execute(
            """INSERT INTO meter_model (manufacturer_id, name, driver_key, has_valve, prepaid_capable, register_max)
               SELECT id, 'G2.5', 'native_json', true, true, 99999.999 FROM manufacturer;
            """
        )
        conn.execute(
            """INSERT INTO meter_model (manufacturer_id, name, driver_key) SELECT id, 'G4-basic', 'cjt188'
                 FROM manufacturer"""
        )
        conn.execute("INSERT INTO meter (meter_no, driver_key) VALUES ('STOCK-1', 'native_json')")
        conn.execute("INSERT INTO installer (code, name) VALUES ('I01', '安装一班')")
        conn.execute(
            """INSERT INTO customer (customer_no, name) VALUES ('C-OLD', '老客户');
            """
        )
        conn.execute(
            """INSERT INTO account (account_no, customer_id, usage_type_id, card_no)
               SELECT 'A-OLD', c.id, u.id, 'IC-OLD' FROM customer c, usage_type u WHERE u.code = 'RES'"""
        )


def good_rows() -> list[dict[str, Any]]:
    return [
        {"customer_name": "#示例 张三", "community": "XF", "address": "x", "usage_type": "RES"},  # skipped
        {
            "customer_name": "王建国",
            "phone": "13911112222",
            "id_number": "11010519491231002X",
            "household_size": 4,
            "community": "XF",
            "building": "1",
            "address": "1号楼 1单元 101",
            "usage_type": "RES",
            "meter_no": "M10000001",
            "model": "GX/G2.5",
            "install_date": "2026-11-02",
            "initial_reading": "0.125",
            "opened_on": "2026-11-01",
        },
        {
            "customer_name": "李记餐馆",
            "customer_kind": "单位",
            "community": "XF",
            "address": "底商 3 号",
            "usage_type": "COM",
            "account_no": "XF-0002",
            "card_no": "IC9002",
            "billing_mode": "prepaid_meter",
            "meter_no": "STOCK-1",
            "protocol_address": "00000000000077",
            "opened_on": date(2026, 11, 1),
        },
        {
            "customer_name": "赵敏",
            "phone": "13700000003",
            "community": "XF",
            "address": "1号楼 1单元 102",
            "usage_type": "RES",
            "installer": "I01",
        },
        {},  # an empty row in the middle is skipped
        {"customer_name": "钱多多", "community": "XF", "address": "1号楼 2单元 201", "usage_type": "RES"},
    ]


def test_a_file_with_bad_rows_is_refused_whole_with_every_problem_by_row_and_column(store: Store, base: None) -> None:
    rows = good_rows()
    rows[1] = {**rows[1], "id_number": "110105194912310021", "model": "GX/NOPE"}  # row 3: bad check, no model
    rows[2] = {**rows[2], "card_no": "IC-OLD", "usage_type": "XYZ"}  # row 4: card taken, unknown usage type
    rows[3] = {**rows[3], "community": "OLD", "installer": "I99"}  # row 5: inactive community, unknown installer
    rows[5] = {**rows[5], "customer_name": "", "account_no": "XF-0002", "opened_on": "2026-13-01"}  # row 7
    before = counts(store)
    with pytest.raises(BulkRejected) as refused:
        bulk_create.create_from_file(store, "clerk", bulk_create.workbook_bytes(rows), today=TODAY)
    found = {(i.row, i.letter, i.column, i.code) for i in refused.value.issues}
    assert found == {
        (3, "D", "id_number", "bad_id_check"),
        (3, "P", "model", "unknown_code"),
        (4, "K", "usage_type", "unknown_code"),
        (4, "M", "card_no", "exists"),
        (5, "H", "community", "inactive_code"),
        (5, "T", "installer", "unknown_code"),
        (7, "A", "customer_name", "required"),
        (7, "G", "account_no", "duplicate_in_file"),
        (7, "N", "opened_on", "bad_date"),
    }
    duplicate = next(i for i in refused.value.issues if i.code == "duplicate_in_file")
    assert duplicate.params == {"value": "XF-0002", "other": "4"}
    assert counts(store) == before  # nothing created, not even the good rows


def test_a_valid_file_creates_customers_accounts_meters_and_orders_in_one_go(store: Store, base: None) -> None:
    result = bulk_create.create_from_file(
        store, "clerk", bulk_create.workbook_bytes(good_rows()), filename="幸福小区.xlsx", today=TODAY
    )
    assert (result.rows, result.customers, result.accounts, result.meters, result.orders) == (4, 4, 4, 2, 1)
    generated = [no for no in result.account_nos if no != "XF-0002"]
    assert all(len(no) == 10 and accounts._luhn(no[:9]) == no[9] for no in generated)
    with store.connection() as conn:
        first = accounts.get_account(conn, result.account_nos[0])
        assert (first.customer.name, first.customer.id_number, first.customer.household_size) == (
            "王建国",
            "11010519491231002X",
            4,
        )
        assert first.community == "XF" and first.opened_on == date(2026, 11, 1)
        assert [(m.meter_no, m.status) for m in first.meters] == [("M10000001", "installed")]
        history = accounts.history(conn, first.id)
        assert history[0].kind == "open" and history[0].actor == "clerk"
        assert {c.table for c in history[0].changes} == {"account", "customer"}
        shop = accounts.get_account(conn, "XF-0002")
        assert (shop.customer.kind, shop.card_no, shop.billing_mode) == ("organisation", "IC9002", "prepaid_meter")
        meter = conn.execute(
            """SELECT m.status, m.install_date, m.initial_reading, m.protocol_address, m.prepaid, m.register_max,
                      a.valid_from, a.first_value, x.action, x.done_by
                 FROM meter m JOIN meter_assignment a ON a.meter_id = m.id JOIN meter_action x ON x.meter_id = m.id
                WHERE m.meter_no = 'M10000001'"""
        ).fetchone()
        assert meter is not None
        assert (meter[0], meter[1], str(meter[2]), meter[3], meter[4], str(meter[5])) == (
            "installed",
            date(2026, 11, 2),
            "0.125",
            "",
            False,
            "99999.999",
        )
        assert (str(meter[7]), meter[8], meter[9]) == ("0.125", "install", "clerk")
        stock = conn.execute(
            "SELECT status, protocol_address, account_id IS NOT NULL FROM meter WHERE meter_no = 'STOCK-1'"
        ).fetchone()
        assert stock == ("installed", "00000000000077", True)
        order = conn.execute(
            """SELECT a.account_no, i.code, o.status FROM install_order o JOIN account a ON a.id = o.account_id
                 JOIN installer i ON i.id = o.installer_id"""
        ).fetchone()
        assert order is not None and order[1:] == ("I01", "assigned")
        building = conn.execute(
            "SELECT b.code FROM account a JOIN building b ON b.id = a.building_id WHERE a.account_no = %s",
            [result.account_nos[0]],
        ).fetchone()
        assert building == ("1",)
        record = conn.execute("SELECT filename, rows, accounts, meters, created_by FROM bulk_import").fetchone()
        assert record == ("幸福小区.xlsx", 4, 4, 2, "clerk")
    again = good_rows()
    with pytest.raises(BulkRejected) as twice:
        bulk_create.create_from_file(store, "clerk", bulk_create.workbook_bytes(again), today=TODAY)
    codes = {(i.column, i.code) for i in twice.value.issues}
    assert ("account_no", "exists") in codes and ("meter_no", "meter_in_use") in codes


def test_the_header_must_name_the_template_columns(store: Store, base: None) -> None:
    content = bulk_create.workbook_bytes([{"customer_name": "甲", "colour": "red"}], ["customer_name", "colour"])
    with pytest.raises(BulkRejected) as refused:
        bulk_create.create_from_file(store, "clerk", content, today=TODAY)
    found = {(i.row, i.letter, i.code) for i in refused.value.issues}
    assert (1, "B", "unknown_column") in found
    assert {i.column for i in refused.value.issues if i.code == "missing_column"} == {
        "community",
        "address",
        "usage_type",
    }
    with pytest.raises(BulkRejected) as garbage:
        bulk_create.create_from_file(store, "clerk", b"not a workbook", today=TODAY)
    assert [i.code for i in garbage.value.issues] == ["not_xlsx"]


def test_the_template_has_a_header_an_example_row_and_the_valid_codes(store: Store, base: None) -> None:
    with store.connection() as conn:
        content = bulk_create.template_bytes(conn)
    book = load_workbook(io.BytesIO(content))
    assert book.sheetnames == [bulk_create.SHEET, bulk_create.CODES_SHEET, bulk_create.HELP_SHEET]
    sheet = book[bulk_create.SHEET]
    header = [c.value for c in sheet[1]]
    assert header[0] == "客户名称 customer_name *" and len(header) == len(bulk_create.FIELDS)
    assert str(sheet["A2"].value).startswith("#")
    codes = [[c.value for c in row] for row in book[bulk_create.CODES_SHEET].iter_rows()]
    flat = {v for row in codes for v in row if v is not None}
    assert {"XF", "RES", "COM", "GX/G2.5", "I01", "postpaid"} <= flat
    assert "OLD" not in flat  # inactive communities are not offered
    # The template filled in below its example row is accepted as it is.
    sheet["A3"] = "孙丽"
    for letter, value in (("H", "XF"), ("J", "2号楼 101"), ("K", "RES")):
        sheet[f"{letter}3"] = value
    buffer = io.BytesIO()
    book.save(buffer)
    result = bulk_create.create_from_file(store, "clerk", buffer.getvalue(), today=TODAY)
    assert (result.rows, result.accounts, result.meters) == (1, 1, 0)


def test_meters_the_warehouse_holds_leave_stock_with_a_bulk_installation(store: Store, base: None) -> None:
    from meterhub import warehouse
    from meterhub.warehouse import DocInput, ItemInput, LineInput

    warehouse.save_warehouse(store, "keeper", code="ZK", name="总库")
    warehouse.save_supplier(store, "keeper", code="S1", name="华阳燃气设备有限公司")
    warehouse.save_item(
        store, "keeper", ItemInput(code="M-G25", name="NB-IoT 燃气表", unit="台", meter_model="GX/G2.5")
    )
    warehouse.post_document(
        store, "keeper",
        DocInput(kind="purchase", warehouse="ZK", supplier="S1",
                 lines=[LineInput("M-G25", "1", "WH0001"), LineInput("M-G25", "1", "WH0002")]),
    )  # fmt: skip
    warehouse.post_document(
        store, "keeper", DocInput(kind="scrap", warehouse="ZK", lines=[LineInput("M-G25", "1", "WH0002")])
    )
    rows = [
        {"customer_name": "甲", "community": "XF", "address": "1-1", "usage_type": "RES", "meter_no": "WH0001",
         "opened_on": "2026-11-01"},
        {"customer_name": "乙", "community": "XF", "address": "1-2", "usage_type": "RES", "meter_no": "WH0002",
         "opened_on": "2026-11-01"},
    ]  # fmt: skip
    before = counts(store)
    with pytest.raises(BulkRejected) as refused:
        bulk_create.create_from_file(store, "clerk", bulk_create.workbook_bytes(rows), today=TODAY)
    assert [(i.row, i.letter, i.code) for i in refused.value.issues] == [(3, "O", "warehouse")]
    assert counts(store) == before
    bulk_create.create_from_file(store, "clerk", bulk_create.workbook_bytes(rows[:1]), today=TODAY)
    with store.connection() as conn:
        serial = warehouse.serial_detail(conn, "WH0001")
        docs = warehouse.documents(conn, kind="install", size=None).rows
    assert serial is not None and serial["status"] == "issued"
    assert [d["meter_no"] for d in docs] == ["WH0001"]
