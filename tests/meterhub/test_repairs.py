"""Repairs: registered from a call or an alarm, dispatched, completed with materials drawn from the warehouse
(all or nothing), commissions by engineer and month, attachments checked by content."""

from __future__ import annotations

from decimal import Decimal

import pytest

from meterhub import repairs, warehouse
from meterhub.repairs import CallInput, Completion, RepairError
from meterhub.store import Store
from meterhub.warehouse import DocInput, ItemInput, LineInput
from tests.meterhub.factories import make_meter

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def setup(store: Store) -> dict[str, int]:
    with store.transaction() as conn:
        conn.execute("SELECT meterhub_repair_defaults()")
        conn.execute("SELECT meterhub_access_defaults()")
        ids = make_meter(conn, 1)
        conn.execute("UPDATE account SET address = '幸福路 1 号' WHERE id = %s", [ids["account"]])
        for name, role in (("engineer", "engineer"), ("engineer2", "engineer"), ("cashier", "cashier")):
            conn.execute(
                "INSERT INTO staff_user (username, display_name, role) VALUES (%s, %s, %s)", [name, name.title(), role]
            )
    warehouse.save_warehouse(store, "keeper", code="HD", name="河东分库")
    warehouse.save_supplier(store, "keeper", code="S1", name="供应商")
    warehouse.save_item(store, "keeper", ItemInput(code="BV-15", name="球阀"))
    warehouse.save_item(store, "keeper", ItemInput(code="SEAL", name="密封垫"))
    warehouse.post_document(
        store,
        "keeper",
        DocInput(
            kind="purchase", warehouse="HD", supplier="S1", lines=[LineInput("BV-15", "2"), LineInput("SEAL", "10")]
        ),
    )
    return ids


def level(store: Store, item: str) -> Decimal:
    with store.connection() as conn:
        row = conn.execute(
            "SELECT s.quantity FROM stock s JOIN item i ON i.id = s.item_id WHERE i.code = %s", [item]
        ).fetchone()
    assert row is not None
    return Decimal(row[0])


def status_of(store: Store, repair_no: str) -> str:
    with store.connection() as conn:
        found = repairs.get(conn, repair_no)
    assert found is not None
    return str(found["status"])


def test_a_call_is_dispatched_and_completed_with_materials(store: Store, setup: dict[str, int]) -> None:
    no = repairs.register_call(store, "clerk", CallInput(description="厨房有燃气味", kind="leak", account_no="AC1"))
    with store.connection() as conn:
        found = repairs.get(conn, no)
    assert found is not None
    assert (found["caller"], found["phone"], found["address"], found["meter_no"]) == (
        "张三",
        "13800000000",
        "幸福路 1 号",
        None,
    )
    repairs.dispatch(store, "supervisor", no, "engineer")
    repairs.start(store, "engineer", no)
    doc_no = repairs.complete(store, "engineer", no, Completion(
        result="更换球阀", warehouse="HD", materials=[LineInput("BV-15", "1"), LineInput("SEAL", "2.5")],
    ))  # fmt: skip
    assert doc_no is not None and doc_no.startswith("CK")
    assert level(store, "BV-15") == Decimal("1") and level(store, "SEAL") == Decimal("7.5")
    with store.connection() as conn:
        done = repairs.get(conn, no)
        doc = warehouse.document(conn, doc_no)
    assert done is not None and doc is not None
    assert (done["status"], done["engineer"], done["commission"], done["stock_doc"]) == (
        "completed",
        "engineer",
        Decimal("80.00"),
        doc_no,
    )
    assert [entry["action"] for entry in done["log"]] == ["register", "dispatch", "start", "complete"]
    assert (doc["kind"], doc["repair_no"], doc["account_no"]) == ("repair", no, "AC1")
    assert [(m["item"], m["quantity"]) for m in done["materials"]] == [
        ("BV-15", Decimal("1")),
        ("SEAL", Decimal("2.5")),
    ]


def test_short_materials_refuse_the_completion_whole(store: Store, setup: dict[str, int]) -> None:
    no = repairs.register_call(store, "clerk", CallInput(description="阀门坏了", kind="valve", phone="139"))
    repairs.dispatch(store, "supervisor", no, "engineer", commission="55.50")
    with pytest.raises(RepairError) as refused:
        repairs.complete(store, "engineer", no, Completion(
            result="换阀", warehouse="HD", materials=[LineInput("SEAL", "1"), LineInput("BV-15", "3")],
        ))  # fmt: skip
    assert refused.value.code == "stock_short" and refused.value.field == "lines.2.quantity"
    assert status_of(store, no) == "dispatched"
    assert level(store, "SEAL") == Decimal("10") and level(store, "BV-15") == Decimal("2")
    repairs.complete(
        store, "engineer", no, Completion(result="换阀", warehouse="HD", materials=[LineInput("BV-15", "2")])
    )
    assert status_of(store, no) == "completed" and level(store, "BV-15") == Decimal("0")


def test_the_life_of_a_repair_is_enforced(store: Store, setup: dict[str, int]) -> None:
    no = repairs.register_call(store, "clerk", CallInput(description="x", phone="139"))
    with pytest.raises(RepairError) as early:
        repairs.complete(store, "engineer", no, Completion(result="done"))
    assert early.value.code == "state"
    with pytest.raises(RepairError) as not_engineer:
        repairs.dispatch(store, "supervisor", no, "cashier")
    assert not_engineer.value.code == "not_found" and not_engineer.value.field == "engineer"
    repairs.dispatch(store, "supervisor", no, "engineer")
    repairs.dispatch(store, "supervisor", no, "engineer2", commission="12")
    repairs.cancel(store, "clerk", no, "用户自行处理")
    with pytest.raises(RepairError) as late:
        repairs.start(store, "engineer2", no)
    assert late.value.code == "state" and late.value.status == 409
    with pytest.raises(RepairError) as contact:
        repairs.register_call(store, "clerk", CallInput(description="x"))
    assert contact.value.code == "contact"
    with pytest.raises(RepairError) as money:
        repairs.dispatch(
            store,
            "supervisor",
            repairs.register_call(store, "c", CallInput("y", phone="1")),
            "engineer",
            commission="1.234",
        )
    assert money.value.code == "bad_price"


def test_an_alarm_becomes_one_repair(store: Store, setup: dict[str, int]) -> None:
    with store.transaction() as conn:
        row = conn.execute(
            "INSERT INTO meter_event (meter_id, ts, kind, severity) VALUES (%s, now(), 'leak', 'critical') "
            "RETURNING id",
            [setup["meter"]],
        ).fetchone()
        conn.execute("INSERT INTO meter_event (meter_id, ts, kind) VALUES (%s, now(), 'valve_state')", [setup["meter"]])
        assert row is not None
        event_id = int(row[0])
    with store.connection() as conn:
        alarms = repairs.open_alarms(conn, size=None).rows
    assert [a["id"] for a in alarms] == [event_id]
    no = repairs.register_alarm(store, "clerk", event_id)
    with store.connection() as conn:
        found = repairs.get(conn, no)
        assert repairs.open_alarms(conn, size=None).rows == []
    assert found is not None
    assert (found["source"], found["kind"], found["meter_no"], found["account_no"], found["meter_event_id"]) == (
        "alarm",
        "leak",
        "M00000001",
        "AC1",
        event_id,
    )
    with pytest.raises(RepairError) as again:
        repairs.register_alarm(store, "clerk", event_id)
    assert again.value.code == "duplicate"


def test_commission_report_by_engineer_and_month(store: Store, setup: dict[str, int]) -> None:
    made = []
    for engineer, commission in (("engineer", None), ("engineer", "20.05"), ("engineer2", None)):
        no = repairs.register_call(store, "clerk", CallInput(description="x", kind="meter", phone="1"))
        repairs.dispatch(store, "supervisor", no, engineer, commission=commission)
        repairs.complete(store, engineer, no, Completion(result="ok"))
        made.append(no)
    no = repairs.register_call(store, "clerk", CallInput(description="x", kind="meter", phone="1"))
    repairs.dispatch(store, "supervisor", no, "engineer")  # not completed: not counted
    with store.transaction() as conn:  # one completed last year, in the utility's time zone
        conn.execute("UPDATE repair SET completed_at = '2025-12-31 23:30:00+08' WHERE repair_no = %s", [made[2]])
    tz = store.settings.timezone
    month = warehouse.today_in(tz).strftime("%Y-%m")
    with store.connection() as conn:
        rows = repairs.commissions(conn, tz)
        only = repairs.commissions(conn, tz, month_from="2025-12", month_to="2025-12")
    report = {(r["month"], r["engineer"]): (r["repairs"], r["commission"]) for r in rows}
    assert report[(month, "engineer")] == (2, Decimal("70.05"))  # 50.00 (the kind's) + 20.05
    assert [(r["engineer"], r["commission"]) for r in only] == [("engineer2", Decimal("50.00"))]
    with store.connection() as conn, pytest.raises(RepairError):
        repairs.commissions(conn, tz, month_from="2025-13")


def test_attachments_are_checked_by_content_and_size(store: Store, setup: dict[str, int]) -> None:
    no = repairs.register_call(store, "clerk", CallInput(description="x", phone="1"))
    attachment_id = repairs.attach(store, "engineer", no, "现场.png", PNG, "image/png")
    with store.connection() as conn:
        assert repairs.attachment(conn, no, attachment_id) == ("现场.png", "image/png", PNG)
    for data, declared, code in (
        (b"MZ\x90\x00 not an image", "image/png", "bad_type"),
        (PNG, "application/pdf", "bad_type"),
        (b"", "image/png", "empty"),
        (b"%PDF-" + b"0" * repairs.MAX_ATTACHMENT, "application/pdf", "too_large"),
    ):
        with pytest.raises(RepairError) as refused:
            repairs.attach(store, "engineer", no, "f", data, declared)
        assert refused.value.code == code
    assert repairs.sniff(b"%PDF-1.7") == "application/pdf" and repairs.sniff(b"\xff\xd8\xff\xe0") == "image/jpeg"


def test_seed_demo_twice_adds_nothing_more(store: Store) -> None:
    with store.transaction() as conn:
        conn.execute("SELECT meterhub_access_defaults()")
        for n in (1, 2, 3):
            make_meter(conn, n)
        conn.execute("INSERT INTO staff_user (username, display_name, role) VALUES ('engineer', '赵磊', 'engineer')")
        conn.execute("INSERT INTO meter_event (meter_id, ts, kind) SELECT id, now(), 'tamper' FROM meter LIMIT 1")
        warehouse.seed_demo(conn)
        repairs.seed_demo(conn)
    with store.connection() as conn:
        first = conn.execute("SELECT status, source FROM repair ORDER BY id").fetchall()
    assert first == [("completed", "call"), ("dispatched", "alarm"), ("registered", "call")]
    with store.transaction() as conn:
        repairs.seed_demo(conn)
    with store.connection() as conn:
        assert conn.execute("SELECT status, source FROM repair ORDER BY id").fetchall() == first
        assert conn.execute("SELECT count(*) FROM stock_doc WHERE kind = 'repair'").fetchone() == (1,)
