"""The warehouse: documents, stock levels, serial numbers, movements; stock never negative, also under
concurrent stock-outs on separate connections; meters drawn from stock by their installation."""

from __future__ import annotations

import threading
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest

from meterhub import meters, warehouse
from meterhub.meters import MeterError
from meterhub.store import Store
from meterhub.warehouse import DocInput, ItemInput, LineInput, WarehouseError
from tests.meterhub.factories import make_meter


def setup_stock(store: Store) -> None:
    warehouse.save_warehouse(store, "keeper", code="ZK", name="总库")
    warehouse.save_warehouse(store, "keeper", code="HD", name="河东分库")
    warehouse.save_category(store, "keeper", code="PART", name="配件")
    warehouse.save_supplier(store, "keeper", code="S1", name="华阳燃气设备有限公司")
    warehouse.save_item(
        store, "keeper", ItemInput(code="BV-15", name="球阀", spec="DN15", category="PART", price="35.00")
    )
    warehouse.save_item(store, "keeper", ItemInput(code="PE-20", name="PE 管", unit="米", spec="DN20"))


def level(store: Store, wh: str, item: str) -> Decimal | None:
    with store.connection() as conn:
        row = conn.execute(
            """SELECT s.quantity FROM stock s JOIN warehouse w ON w.id = s.warehouse_id JOIN item i ON i.id = s.item_id
                WHERE w.code = %s AND i.code = %s""",
            [wh, item],
        ).fetchone()
    return None if row is None else Decimal(row[0])


def counts(store: Store) -> tuple[int, int, int]:
    with store.connection() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM stock_doc), (SELECT count(*) FROM stock_doc_line), "
            "(SELECT count(*) FROM stock_movement)"
        ).fetchone()
    assert row is not None
    return (int(row[0]), int(row[1]), int(row[2]))


def test_stock_in_out_transfer_levels_and_movements(store: Store) -> None:
    setup_stock(store)
    posted = warehouse.post_document(store, "keeper", DocInput(
        kind="purchase", warehouse="ZK", supplier="S1", reference="DN-7",
        lines=[LineInput("BV-15", "100", "", "35.00"), LineInput("PE-20", "250.5", "", "12.35")],
    ))  # fmt: skip
    assert posted.doc_no.startswith("RK") and posted.direction == "in"
    assert level(store, "ZK", "BV-15") == Decimal("100") and level(store, "ZK", "PE-20") == Decimal("250.5")
    warehouse.post_document(
        store,
        "keeper",
        DocInput(kind="transfer", warehouse="ZK", to_warehouse="HD", lines=[LineInput("PE-20", "0.125")]),
    )
    warehouse.post_document(store, "keeper", DocInput(kind="scrap", warehouse="ZK", lines=[LineInput("BV-15", "3")]))
    assert level(store, "ZK", "PE-20") == Decimal("250.375")
    assert level(store, "HD", "PE-20") == Decimal("0.125")
    assert level(store, "ZK", "BV-15") == Decimal("97")
    with store.connection() as conn:
        doc = warehouse.document(conn, posted.doc_no)
        assert doc is not None
        # 250.5 × 12.35 = 3093.675 → 3093.68 (half up); 100 × 35 = 3500
        assert [line["amount"] for line in doc["lines"]] == [Decimal("3500.00"), Decimal("3093.68")]
        assert doc["amount"] == Decimal("6593.68")
        moves = warehouse.movements(conn, item="PE-20", size=None).rows
        assert [(m["warehouse"], m["quantity"], m["balance_after"]) for m in moves] == [
            ("HD", Decimal("0.125"), Decimal("0.125")),
            ("ZK", Decimal("-0.125"), Decimal("250.375")),
            ("ZK", Decimal("250.5"), Decimal("250.5")),
        ]
        assert [r["doc_no"] for r in warehouse.documents(conn, "DN-7", size=None).rows] == [posted.doc_no]
        assert {r["kind"] for r in warehouse.documents(conn, direction="out", size=None).rows} == {"transfer", "scrap"}
        detail = warehouse.item_detail(conn, "PE-20")
        assert detail is not None and detail["quantity"] == Decimal("250.500")
        assert {r["warehouse"]: r["quantity"] for r in detail["levels"]} == {
            "HD": Decimal("0.125"),
            "ZK": Decimal("250.375"),
        }


def test_a_short_line_refuses_the_whole_document(store: Store) -> None:
    setup_stock(store)
    warehouse.post_document(
        store,
        "keeper",
        DocInput(
            kind="purchase", warehouse="ZK", supplier="S1", lines=[LineInput("BV-15", "5"), LineInput("PE-20", "10")]
        ),
    )
    before = counts(store)
    with pytest.raises(WarehouseError) as refused:
        warehouse.post_document(store, "keeper", DocInput(
            kind="repair", warehouse="ZK", lines=[LineInput("PE-20", "4"), LineInput("BV-15", "5.001")]
        ))  # fmt: skip
    assert refused.value.code == "short" and refused.value.field == "lines.2.quantity"
    assert refused.value.params["available"] == "5" and refused.value.params["wanted"] == "5.001"
    assert counts(store) == before
    assert level(store, "ZK", "PE-20") == Decimal("10") and level(store, "ZK", "BV-15") == Decimal("5")
    with pytest.raises(WarehouseError) as never:
        warehouse.post_document(store, "keeper", DocInput(kind="repair", warehouse="HD", lines=[LineInput("BV-15")]))
    assert never.value.code == "short" and never.value.params["available"] == "0"


@pytest.mark.parametrize(
    ("line", "code", "field"),
    [
        (LineInput("BV-15", "0"), "bad_quantity", "lines.1.quantity"),
        (LineInput("BV-15", "1.0001"), "bad_quantity", "lines.1.quantity"),
        (LineInput("BV-15", "abc"), "bad_quantity", "lines.1.quantity"),
        (LineInput("NOPE", "1"), "not_found", "lines.1.item"),
        (LineInput("BV-15", "1", "SN1"), "not_tracked", "lines.1.serial_no"),
        (LineInput("BV-15", "1", "", "1.001"), "bad_price", "lines.1.unit_price"),
    ],
)
def test_bad_lines_are_refused_with_their_field(store: Store, line: LineInput, code: str, field: str) -> None:
    setup_stock(store)
    with pytest.raises(WarehouseError) as refused:
        warehouse.post_document(store, "keeper", DocInput(kind="purchase", warehouse="ZK", supplier="S1", lines=[line]))
    assert (refused.value.code, refused.value.field) == (code, field)
    assert counts(store) == (0, 0, 0)


def test_the_database_refuses_negative_stock_and_changed_history(store: Store) -> None:
    setup_stock(store)
    warehouse.post_document(
        store, "keeper", DocInput(kind="purchase", warehouse="ZK", supplier="S1", lines=[LineInput("BV-15", "1")])
    )
    with store.connection() as conn:
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
            conn.execute("UPDATE stock SET quantity = quantity - 2")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("UPDATE stock_movement SET quantity = 5")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("DELETE FROM stock_doc")


def test_concurrent_stock_outs_never_take_more_than_there_is(store: Store) -> None:
    """Twelve threads, each on its own connection, each take 2 of the 15 in stock at the same moment:
    exactly 7 succeed, the others are refused as short, and 1 is left."""
    setup_stock(store)
    warehouse.post_document(
        store, "keeper", DocInput(kind="purchase", warehouse="ZK", supplier="S1", lines=[LineInput("BV-15", "15")])
    )
    threads_n = 12
    barrier = threading.Barrier(threads_n)
    outcomes: list[str] = []
    lock = threading.Lock()

    def take() -> None:
        with psycopg.connect(store.url) as conn:
            try:
                with conn.transaction():
                    barrier.wait(timeout=20)
                    warehouse.post_in(
                        conn,
                        DocInput(kind="repair", warehouse="ZK", lines=[LineInput("BV-15", "2")]),
                        today=date.today(),
                    )
                outcome = "ok"
            except WarehouseError as exc:
                outcome = exc.code
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=take) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["ok"] * 7 + ["short"] * 5
    assert level(store, "ZK", "BV-15") == Decimal("1")
    with store.connection() as conn:
        row = conn.execute(
            "SELECT count(*), min(balance_after), sum(quantity) FROM stock_movement WHERE quantity < 0"
        ).fetchone()
    assert row is not None and row[0] == 7 and row[1] >= 0 and row[2] == Decimal("-14")


def test_concurrent_draws_of_one_serial_succeed_once(store: Store) -> None:
    setup_stock(store)
    warehouse.save_item(store, "keeper", ItemInput(code="M-G25", name="燃气表", serial_tracked=True))
    warehouse.post_document(
        store,
        "keeper",
        DocInput(kind="purchase", warehouse="ZK", supplier="S1", lines=[LineInput("M-G25", "1", "SN0001")]),
    )
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def take() -> None:
        with psycopg.connect(store.url) as conn:
            try:
                with conn.transaction():
                    barrier.wait(timeout=20)
                    warehouse.post_in(
                        conn,
                        DocInput(kind="scrap", warehouse="ZK", lines=[LineInput("M-G25", "1", "SN0001")]),
                        today=date.today(),
                    )
                outcomes.append("ok")
            except WarehouseError as exc:
                outcomes.append(exc.code)

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["ok"] + ["serial_not_in_stock"] * 5
    assert level(store, "ZK", "M-G25") == Decimal("0")


def test_serial_numbers_are_tracked_one_unit_each(store: Store) -> None:
    setup_stock(store)
    warehouse.save_item(store, "keeper", ItemInput(code="M-G25", name="燃气表", unit="台", serial_tracked=True))
    warehouse.post_document(store, "keeper", DocInput(
        kind="purchase", warehouse="ZK", supplier="S1",
        lines=[LineInput("M-G25", "1", "SN0001"), LineInput("M-G25", "1", "SN0002")],
    ))  # fmt: skip
    assert level(store, "ZK", "M-G25") == Decimal("2")
    for line, code in [
        (LineInput("M-G25", "1", ""), "serial_required"),
        (LineInput("M-G25", "2", "SN0009"), "serial_one"),
    ]:
        with pytest.raises(WarehouseError) as refused:
            warehouse.post_document(
                store, "keeper", DocInput(kind="purchase", warehouse="ZK", supplier="S1", lines=[line])
            )
        assert refused.value.code == code
    with pytest.raises(WarehouseError) as again:
        warehouse.post_document(
            store,
            "keeper",
            DocInput(kind="purchase", warehouse="ZK", supplier="S1", lines=[LineInput("M-G25", "1", "SN0001")]),
        )
    assert again.value.code == "serial_in_stock"
    warehouse.post_document(
        store,
        "keeper",
        DocInput(kind="transfer", warehouse="ZK", to_warehouse="HD", lines=[LineInput("M-G25", "1", "SN0002")]),
    )
    with pytest.raises(WarehouseError) as elsewhere:
        warehouse.post_document(
            store, "keeper", DocInput(kind="scrap", warehouse="ZK", lines=[LineInput("M-G25", "1", "SN0002")])
        )
    assert elsewhere.value.code == "serial_not_in_stock"
    warehouse.post_document(
        store, "keeper", DocInput(kind="repair", warehouse="HD", lines=[LineInput("M-G25", "1", "SN0002")])
    )
    warehouse.post_document(
        store, "keeper", DocInput(kind="return", warehouse="ZK", lines=[LineInput("M-G25", "1", "SN0002")])
    )
    with store.connection() as conn:
        serial = warehouse.serial_detail(conn, "SN0002")
    assert serial is not None and serial["status"] == "in_stock" and serial["warehouse"] == "ZK"
    assert [(m["kind"], m["warehouse"], m["quantity"]) for m in serial["movements"]] == [
        ("return", "ZK", Decimal("1")),
        ("repair", "HD", Decimal("-1")),
        ("transfer", "HD", Decimal("1")),
        ("transfer", "ZK", Decimal("-1")),
        ("purchase", "ZK", Decimal("1")),
    ]
    assert level(store, "ZK", "M-G25") == Decimal("2") and level(store, "HD", "M-G25") == Decimal("0")


def _meter_item(store: Store) -> None:
    with store.transaction() as conn:
        conn.execute("INSERT INTO manufacturer (code, name) VALUES ('GC', '金卡')")
        conn.execute(
            "INSERT INTO meter_model (manufacturer_id, name, driver_key) "
            "SELECT id, 'G2.5 NB', 'native_json' FROM manufacturer WHERE code = 'GC'"
        )
    warehouse.save_item(
        store, "keeper", ItemInput(code="M-G25", name="NB-IoT 燃气表", unit="台", meter_model="GC/G2.5 NB")
    )


def test_installing_a_meter_draws_it_from_stock_once(store: Store) -> None:
    setup_stock(store)
    _meter_item(store)
    with store.transaction() as conn:
        make_meter(conn, 1)  # account AC1 (and its installed meter M00000001)
    warehouse.post_document(
        store,
        "keeper",
        DocInput(kind="purchase", warehouse="ZK", supplier="S1", lines=[LineInput("M-G25", "1", "WH0001")]),
    )
    with store.connection() as conn:
        created = conn.execute("SELECT status, driver_key FROM meter WHERE meter_no = 'WH0001'").fetchone()
    assert created == ("in_stock", "native_json")
    today = warehouse.today_in(store.settings.timezone)
    meters.install(store, "WH0001", "AC1", today, "0", actor="engineer")
    assert level(store, "ZK", "M-G25") == Decimal("0")
    with store.connection() as conn:
        docs = warehouse.documents(conn, kind="install", size=None).rows
        serial = warehouse.serial_detail(conn, "WH0001")
    assert [(d["account_no"], d["meter_no"]) for d in docs] == [("AC1", "WH0001")]
    assert serial is not None and serial["status"] == "issued"
    with pytest.raises(MeterError):
        meters.install(store, "WH0001", "AC1", today, "0", actor="engineer")
    assert counts(store)[0] == 2


def test_a_removed_meter_returned_to_stock_is_installed_again_elsewhere(store: Store) -> None:
    setup_stock(store)
    _meter_item(store)
    with store.transaction() as conn:
        make_meter(conn, 1)
        make_meter(conn, 2)
    warehouse.post_document(
        store,
        "keeper",
        DocInput(kind="purchase", warehouse="ZK", supplier="S1", lines=[LineInput("M-G25", "1", "WH0003")]),
    )
    today = warehouse.today_in(store.settings.timezone)
    meters.install(store, "WH0003", "AC1", today - timedelta(days=30), "0", actor="engineer")
    back = DocInput(kind="return", warehouse="ZK", lines=[LineInput("M-G25", "1", "WH0003")])
    with pytest.raises(WarehouseError) as in_use:  # still on AC1
        warehouse.post_document(store, "keeper", back)
    assert in_use.value.code == "meter_in_use"
    removed_at = datetime.combine(today - timedelta(days=10), time(9), ZoneInfo(store.settings.timezone))
    meters.remove(store, "WH0003", removed_at, "41.5", "account closed", actor="engineer")
    warehouse.post_document(store, "keeper", back)
    with store.connection() as conn:
        meter = conn.execute("SELECT status, account_id FROM meter WHERE meter_no = 'WH0003'").fetchone()
        actions = conn.execute(
            "SELECT action FROM meter_action a JOIN meter m ON m.id = a.meter_id WHERE m.meter_no = 'WH0003' "
            "ORDER BY a.id"
        ).fetchall()
    assert meter == ("in_stock", None)
    assert [a[0] for a in actions] == ["install", "remove", "return"]
    assert level(store, "ZK", "M-G25") == Decimal("1")
    meters.install(store, "WH0003", "AC2", today, "41.5", actor="engineer")  # drawn from stock again
    assert level(store, "ZK", "M-G25") == Decimal("0")
    with store.connection() as conn:
        assigned = conn.execute(
            "SELECT a.account_no FROM meter_assignment x JOIN account a ON a.id = x.account_id "
            "JOIN meter m ON m.id = x.meter_id WHERE m.meter_no = 'WH0003' ORDER BY x.valid_from"
        ).fetchall()
    assert [r[0] for r in assigned] == ["AC1", "AC2"]  # the first account keeps its history


def test_a_serial_out_of_stock_cannot_be_installed_and_untracked_meters_install_as_before(store: Store) -> None:
    setup_stock(store)
    _meter_item(store)
    with store.transaction() as conn:
        make_meter(conn, 1)
        conn.execute("INSERT INTO meter (meter_no, driver_key) VALUES ('OLD-FLEET-1', 'native_json')")
    warehouse.post_document(
        store,
        "keeper",
        DocInput(kind="purchase", warehouse="ZK", supplier="S1", lines=[LineInput("M-G25", "1", "WH0002")]),
    )
    warehouse.post_document(
        store, "keeper", DocInput(kind="scrap", warehouse="ZK", lines=[LineInput("M-G25", "1", "WH0002")])
    )
    today = warehouse.today_in(store.settings.timezone)
    with pytest.raises(MeterError) as refused:
        meters.install(store, "WH0002", "AC1", today, "0", actor="engineer")
    assert refused.value.code == "not_in_warehouse"
    with store.connection() as conn:
        row = conn.execute("SELECT status FROM meter WHERE meter_no = 'WH0002'").fetchone()
    assert row == ("in_stock",)  # nothing of the installation was kept
    meters.install(store, "OLD-FLEET-1", "AC1", today, "12.5", actor="engineer")
    with store.connection() as conn:
        row = conn.execute("SELECT status FROM meter WHERE meter_no = 'OLD-FLEET-1'").fetchone()
    assert row == ("installed",)
    assert counts(store)[0] == 2  # the purchase and the scrapping; no document for the untracked meter


def test_master_data_is_saved_by_code_and_searchable(store: Store) -> None:
    setup_stock(store)
    warehouse.save_supplier(store, "keeper", code="S1", name="华阳燃气", phone="0755-1")
    with store.connection() as conn:
        assert [r["name"] for r in warehouse.suppliers(conn, "0755", size=None).rows] == ["华阳燃气"]
        assert [r["code"] for r in warehouse.items(conn, "dn15", size=None).rows] == ["BV-15"]
        assert [r["code"] for r in warehouse.items(conn, category="PART", size=None).rows] == ["BV-15"]
        found = warehouse.warehouses(conn, page=1, size=1)
        assert len(found.rows) == 1 and found.has_more
    with pytest.raises(WarehouseError) as bad:
        warehouse.save_item(store, "keeper", ItemInput(code="bad code", name="x"))
    assert bad.value.field == "code"


def test_seed_demo_twice_adds_nothing_more(store: Store) -> None:
    with store.transaction() as conn:
        make_meter(conn, 1)
        conn.execute("INSERT INTO manufacturer (code, name) VALUES ('GC', '金卡')")
        conn.execute(
            "INSERT INTO meter_model (manufacturer_id, name, driver_key) "
            "SELECT id, 'G2.5', 'native_json' FROM manufacturer"
        )
        warehouse.seed_demo(conn)
    first = counts(store)
    with store.transaction() as conn:
        warehouse.seed_demo(conn)
    assert counts(store) == first and first[0] == 3
    assert level(store, "HD", "BV-15") == Decimal("20") and level(store, "ZK", "HOSE-15") == Decimal("63")
