"""Office services: documents with versions and search, work plans, news, internal messages — a refused action
writes nothing, and the demo's office records come once."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest

from meterhub import office
from meterhub.office import OfficeError
from meterhub.store import Store
from tests.dashboards.conftest import add_user, reset_access


@pytest.fixture
def people(store: Store) -> dict[str, int]:
    reset_access(store)
    return {
        "admin": add_user(store, "admin", "admin"),
        "reader": add_user(store, "reader", "meter_reader"),
        "reader2": add_user(store, "reader2", "meter_reader"),
        "gone": add_user(store, "gone", "meter_reader", active=False),
        "clerk": add_user(store, "clerk", "billing_clerk"),
    }


def _count(store: Store, table: str) -> int:
    with store.connection() as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_a_document_keeps_every_version_and_is_found_by_its_text(store: Store, people: dict[str, int]) -> None:
    with store.transaction(actor="admin") as conn:
        doc = office.add_document(
            conn,
            title="安检规程",
            tags="安全，入户 规程",
            description="",
            filename="C:\\docs\\rules.txt",
            content_type="text/plain",
            data="检查胶管是否老化".encode(),
            actor="admin",
        )
        second = office.add_version(
            conn,
            doc,
            filename="rules-v2.txt",
            content_type="text/plain",
            data="检查胶管是否老化、超期".encode("gb18030"),
            actor="admin",
            note="超期",
        )
    assert second == 2
    with store.connection() as conn:
        document, versions = office.get_document(conn, doc)
        assert document.tags == ["安全", "入户", "规程"]
        assert [v.version for v in versions] == [2, 1]
        assert versions[1].filename == "rules.txt"
        assert office.version_content(conn, doc, 1)[2] == "检查胶管是否老化".encode()
        assert office.version_content(conn, doc, None)[0] == "rules-v2.txt"
        assert [d.id for d in office.search_documents(conn, "超期")] == [doc]  # GB18030 text read
        assert [d.id for d in office.search_documents(conn, "", tag="入户")] == [doc]
        assert office.search_documents(conn, "100%") == []
        assert office.search_documents(conn, "rules-v2")[0].current_version == 2
    with pytest.raises(psycopg.errors.InsufficientPrivilege), store.transaction() as conn:
        conn.execute("UPDATE office_document_version SET note = 'x'")


def test_refused_uploads_write_nothing(store: Store, people: dict[str, int]) -> None:
    big = b"x" * (office.MAX_DOCUMENT_BYTES + 1)
    for kwargs, code in (
        ({"title": " ", "data": b"a"}, "required"),
        ({"title": "t", "data": b""}, "empty_file"),
        ({"title": "t", "data": big}, "too_large"),
    ):
        with pytest.raises(OfficeError) as refused, store.transaction() as conn:
            office.add_document(
                conn, tags="", description="", filename="a.bin", content_type="", actor="admin", **kwargs
            )  # type: ignore[arg-type]
        assert refused.value.code == code
    assert _count(store, "office_document") == 0 and _count(store, "office_document_version") == 0
    with pytest.raises(OfficeError) as missing, store.transaction() as conn:
        office.add_version(conn, 999, filename="a.txt", content_type="text/plain", data=b"a", actor="admin")
    assert missing.value.status == 404


def test_work_plans(store: Store, people: dict[str, int]) -> None:
    with store.transaction() as conn:
        plan = office.save_plan(
            conn,
            None,
            title="3 月抄表",
            description="城东",
            owner="reader",
            starts_on="2025-03-01",
            due_on="2025-03-10",
            status="planned",
            actor="admin",
        )
        office.save_plan(
            conn,
            plan,
            title="3 月抄表",
            description="城东",
            owner="READER",
            starts_on=dt.date(2025, 3, 1),
            due_on=dt.date(2025, 3, 12),
            status="in_progress",
            actor="admin",
        )
    for kwargs, field in (
        ({"owner": "gone"}, "owner"),
        ({"due_on": "2025-02-01"}, "due_on"),
        ({"starts_on": "03/01/2025"}, "starts_on"),
        ({"status": "maybe"}, "status"),
    ):
        values: dict[str, Any] = {
            "title": "x",
            "description": "",
            "owner": "reader",
            "starts_on": "2025-03-01",
            "due_on": "2025-03-10",
            "status": "planned",
            **kwargs,
        }
        with pytest.raises(OfficeError) as refused, store.transaction() as conn:
            office.save_plan(conn, None, actor="admin", **values)
        assert refused.value.field == field
    with store.connection() as conn:
        found = office.plans(conn, owner="reader")
        assert [(p.id, p.status, p.due_on) for p in found] == [(plan, "in_progress", dt.date(2025, 3, 12))]
        assert office.plans(conn, q="城东", status="done") == []
    assert _count(store, "work_plan") == 1


def test_news_is_published_and_withdrawn(store: Store, people: dict[str, int]) -> None:
    with store.transaction() as conn:
        first = office.save_news(conn, None, title="停气通知", body="3 月 5 日幸福小区停气", actor="admin")
        draft = office.save_news(conn, None, title="草稿", body="", actor="admin")
        office.set_published(conn, first, True)
    with store.connection() as conn:
        assert [n.id for n in office.news_list(conn, published_only=True)] == [first]
        assert [n.id for n in office.news_list(conn)] == [first, draft]
        assert office.get_news(conn, first).published_at is not None
    with store.transaction() as conn:
        office.set_published(conn, first, False)
    with store.connection() as conn:
        assert office.news_list(conn, published_only=True) == []
    with pytest.raises(OfficeError), store.transaction() as conn:
        office.set_published(conn, 999, True)


def test_messages_to_a_user_and_to_a_role(store: Store, people: dict[str, int]) -> None:
    with store.transaction() as conn:
        one, count = office.send_message(conn, people["admin"], to_user="clerk", subject="发票", body="请领用")
        assert count == 1
        many, count = office.send_message(conn, people["admin"], to_role="meter_reader", subject="抄表截止", body="")
        assert count == 2  # the inactive reader is left out
    with store.connection() as conn:
        assert [m.id for m in office.inbox(conn, people["reader"])] == [many]
        assert office.unread_count(conn, people["reader2"]) == 1
        assert [m.id for m in office.sent(conn, people["admin"])] == [many, one]
        assert office.get_message(conn, people["reader"], many).recipients == ["reader", "reader2"]
        with pytest.raises(OfficeError):
            office.get_message(conn, people["clerk"], many)  # not theirs
    with store.transaction() as conn:
        assert office.mark_read(conn, people["reader"], many)
        assert not office.mark_read(conn, people["clerk"], many)
    with store.connection() as conn:
        assert office.unread_count(conn, people["reader"]) == 0
        assert office.unread_count(conn, people["reader2"]) == 1
        assert office.inbox(conn, people["reader"], unread_only=True) == []
    for kwargs, code in (
        ({"to_user": "clerk", "to_role": "cashier"}, "recipient"),
        ({}, "recipient"),
        ({"to_user": "gone"}, "unknown_user"),
        ({"to_role": "nobody"}, "unknown_role"),
        ({"to_role": "storekeeper"}, "no_recipients"),
    ):
        with pytest.raises(OfficeError) as refused, store.transaction() as conn:
            office.send_message(conn, people["admin"], subject="x", body="", **kwargs)
        assert refused.value.code == code
    assert _count(store, "office_message") == 2


def test_seed_demo_twice_adds_nothing_the_second_time(store: Store, people: dict[str, int]) -> None:
    add_user(store, "cashier", "cashier")
    with store.transaction() as conn:
        office.seed_demo(conn)
    counts = [
        _count(store, t)
        for t in (
            "office_document",
            "office_document_version",
            "work_plan",
            "office_news",
            "office_message",
            "office_message_recipient",
        )
    ]
    assert counts[0] == 2 and counts[1] == 3 and counts[3] == 3 and counts[4] == 2
    with store.transaction() as conn:
        office.seed_demo(conn)
    assert [
        _count(store, t)
        for t in (
            "office_document",
            "office_document_version",
            "work_plan",
            "office_news",
            "office_message",
            "office_message_recipient",
        )
    ] == counts
