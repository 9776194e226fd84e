"""SMS service: templates and their placeholders, recipients by condition with a preview, sending, the
history, the outbox gateway, an HTTP provider (a fake one on a real local socket), delivery reports, retries,
and two senders that never send one message twice."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from meterhub import sms
from meterhub.settings import SmsHttpSettings, SmsSettings
from meterhub.sms import Condition, SmsError
from meterhub.store import Store
from tests.meterhub.factories import make_meter


# -- templates --------------------------------------------------------------------------------------------
def test_placeholders_are_checked_and_rendered_exactly() -> None:
    body = "尊敬的{customer_name}，户号{account_no}欠费{amount}元，{due_date}前缴纳。"
    assert sms.placeholders_of(body) == ["customer_name", "account_no", "amount", "due_date"]
    text = sms.render(
        body,
        {"customer_name": "王五", "account_no": "AC9", "amount": Decimal("1234.505"), "due_date": date(2026, 12, 1)},
    )
    assert text == "尊敬的王五，户号AC9欠费1234.51元，2026-12-01前缴纳。"
    assert sms.render("{amount}", {"amount": Decimal("7")}) == "7.00"
    for bad, code in [
        ("{customer}", "unknown_placeholder"),
        ("{amount:.3f}", "bad_placeholder"),
        ("{amount!r}", "bad_placeholder"),
        ("缴费{", "bad_braces"),
        ("{0}", "unknown_placeholder"),
    ]:
        with pytest.raises(SmsError) as err:
            sms.placeholders_of(bad)
        assert err.value.code == code
    with pytest.raises(SmsError, match="no value"):
        sms.render("{amount}", {})
    assert sms.render("{{不是占位符}}", {}) == "{不是占位符}"


def test_templates_are_saved_and_unknown_placeholders_refused(store: Store) -> None:
    with store.transaction(actor="clerk") as conn:
        template, new = sms.save_template(conn, "maint", "检修", "{community}检修停气。")
        assert new and template.placeholders == ["community"]
        with pytest.raises(SmsError) as err:
            sms.save_template(conn, "maint", "检修", "{community}检修，联系{contact}。")
        assert err.value.code == "unknown_placeholder"
        template, new = sms.save_template(conn, "maint", "检修通知", "{community}明日检修。", active=False)
        assert not new and not template.active
        history = conn.execute(
            "SELECT op, changed_by FROM change_history WHERE table_name = 'sms_template' ORDER BY id"
        ).fetchall()
    assert history == [("insert", "clerk"), ("update", "clerk")]
    with store.transaction() as conn:
        assert sms.get_template(conn, "maint").body == "{community}明日检修。"
        with pytest.raises(SmsError, match="switched off"):
            sms.preview(conn, Condition("phones", "13800000000"), template_code="maint")


def test_defaults_are_recreated_by_the_sql_function(store: Store) -> None:
    with store.transaction() as conn:
        sms.restore_defaults(conn)
        sms.restore_defaults(conn)
        codes = [t.code for t in sms.list_templates(conn)]
        kinds = conn.execute("SELECT kind FROM sms_notice_rule ORDER BY kind").fetchall()
    assert codes == sorted(
        f"notice.{k}"
        for k in ("reading", "arrears", "bank_success", "bank_failure", "supply_stop", "low_credit", "valve_closed")
    )
    assert len(kinds) == 7


# -- recipients -------------------------------------------------------------------------------------------
@pytest.fixture
def town(store: Store) -> dict[str, Any]:
    """Two areas (A2 inside A1), three communities, four accounts, staff with and without phones."""
    with store.transaction(actor="setup") as conn:
        made = [make_meter(conn, n) for n in (1, 2, 3, 4)]
        conn.execute("UPDATE area SET parent_id = (SELECT id FROM area WHERE code = 'A1') WHERE code = 'A2'")
        conn.execute("UPDATE account SET community_id = %s WHERE id = %s", [made[0]["community"], made[3]["account"]])
        conn.execute("UPDATE customer SET phone = 'none' WHERE id = %s", [made[2]["customer"]])
        conn.execute("UPDATE customer SET phone = '13900000004' WHERE id = %s", [made[3]["customer"]])
        conn.execute("UPDATE customer SET name = '李四' WHERE id = %s", [made[1]["customer"]])
        conn.execute(
            "INSERT INTO staff_user (username, display_name, role, phone) VALUES "
            "('zhang', '张工', 'engineer', '13700000001'), ('li', '李工', 'engineer', NULL), "
            "('wang', '王出纳', 'cashier', '13700000003')"
        )
        reader = conn.execute("INSERT INTO meter_reader (code, name) VALUES ('R1', '赵抄表') RETURNING id").fetchone()
        book = conn.execute(
            "INSERT INTO reading_book (code, name, reader_id) VALUES ('B1', '一号本', %s) RETURNING id", [reader[0]]
        ).fetchone()
        conn.execute(
            "INSERT INTO reading_book_meter (book_id, meter_id, seq) VALUES (%s, %s, 1), (%s, %s, 2)",
            [book[0], made[1]["meter"], book[0], made[2]["meter"]],
        )
        areas = dict(conn.execute("SELECT code, id FROM area").fetchall())
    return {"made": made, "areas": areas}


def _numbers(found: list[sms.Recipient]) -> list[str]:
    return [r.account_no or r.name for r in found]


def test_conditions_name_their_recipients(store: Store, town: dict[str, Any]) -> None:
    with store.connection() as conn:
        assert _numbers(sms.recipients(conn, Condition("community", "C1"))) == ["AC1", "AC4"]
        assert _numbers(sms.recipients(conn, Condition("area", "A1"))) == ["AC1", "AC2", "AC4"]  # A2 inside A1
        assert _numbers(sms.recipients(conn, Condition("book", "B1"))) == ["AC2", "AC3"]
        assert _numbers(sms.recipients(conn, Condition("accounts", "AC3, AC1"))) == ["AC1", "AC3"]
        assert _numbers(sms.recipients(conn, Condition("role", "engineer"))) == ["李工", "张工"]
        assert _numbers(sms.recipients(conn, Condition("staff", "wang"))) == ["王出纳"]
        assert [
            r.phone for r in sms.recipients(conn, Condition("phones", "138-0000-0001 13800000001,+8613900000000"))
        ] == ["13800000001", "+8613900000000"]
        limited = frozenset({town["areas"]["A2"]})
        assert _numbers(sms.recipients(conn, Condition("area", "A1"), areas=limited)) == ["AC2"]
        for condition, code in [
            (Condition("accounts", "AC1 NOPE"), "unknown_account"),
            (Condition("community", "ZZ"), "unknown_community"),
            (Condition("staff", "ghost"), "unknown_staff"),
            (Condition("phones", "12ab"), "bad_phone"),
            (Condition("arrears", "-1"), "bad_amount"),
            (Condition("weather", "sunny"), "bad_condition"),
            (Condition("book", ""), "empty_value"),
        ]:
            with pytest.raises(SmsError) as err:
                sms.recipients(conn, condition)
            assert err.value.code == code, condition


def test_arrears_condition_and_preview(store: Store, town: dict[str, Any]) -> None:
    made = town["made"]
    with store.transaction() as conn:
        for n, (amount, days) in enumerate([("150.00", 30), ("40.00", 30), ("500.00", -5)]):
            account = made[n]["account"]
            bill = conn.execute(
                """INSERT INTO bill (account_id, period, period_start, period_end, usage_type_id, bill_run_id,
                                     volume_m3, amount, issued_on, due_date)
                   VALUES (%s, '2026-09', '2026-09-01', '2026-10-01', (SELECT id FROM usage_type LIMIT 1), 1, 10,
                           %s, current_date - 40, current_date - %s) RETURNING id""",
                [account, Decimal(amount), days],
            ).fetchone()
            conn.execute(
                "INSERT INTO ledger_entry (account_id, entry_type, amount, booked_on, bill_id, actor) "
                "VALUES (%s, 'charge', %s, current_date - 40, %s, 't')",
                [account, Decimal(amount), bill[0]],
            )
        found = sms.recipients(conn, Condition("arrears", "100"))
        assert _numbers(found) == ["AC1"] and found[0].values["amount"] == Decimal("150.00")
        assert _numbers(sms.recipients(conn, Condition("arrears", "0"))) == ["AC1", "AC2"]  # AC3 not yet due
        shown = sms.preview(
            conn, Condition("arrears", "10.00"), body="{customer_name}：欠费{amount}元，逾期{days_overdue}天。"
        )
        assert (shown.count, shown.without_phone) == (2, 0)
        assert shown.sample_text == "张三：欠费150.00元，逾期30天。"
        with pytest.raises(SmsError, match="no value"):
            sms.preview(conn, Condition("community", "C1"), body="欠费{amount}元")


def test_send_queues_one_message_per_recipient_and_records_missing_phones(store: Store, town: dict[str, Any]) -> None:
    with store.transaction(actor="clerk") as conn:
        sms.save_template(conn, "maint", "检修", "{customer_name}您好，{community}明日检修。")
        shown = sms.preview(conn, Condition("area", "A1"), template_code="maint")
        assert shown.count == 3
        with pytest.raises(SmsError) as err:
            sms.send(conn, Condition("area", "A1"), template_code="maint", expected_count=2)
        assert err.value.code == "changed"
        result = sms.send(conn, Condition("book", "B1"), template_code="maint", expected_count=2)
    assert (result.queued, result.without_phone) == (1, 1)
    with store.connection() as conn:
        rows = conn.execute(
            "SELECT recipient_name, phone, body, state, error, created_by FROM sms_message ORDER BY id"
        ).fetchall()
        batch = conn.execute("SELECT origin, recipients, condition, created_by FROM sms_batch").fetchall()
    assert rows == [
        ("李四", "13800000000", "李四您好，Test estate明日检修。", "queued", "", "clerk"),
        ("张三", "none", "张三您好，Test estate明日检修。", "failed", "no_phone", "clerk"),
    ]
    assert batch == [("manual", 2, {"kind": "book", "value": "B1"}, "clerk")]


def test_history_search_state_and_export(store: Store, town: dict[str, Any]) -> None:
    with store.transaction(actor="clerk") as conn:
        sms.send(conn, Condition("community", "C1"), body="{customer_name}，测试。")
        sms.send(conn, Condition("role", "engineer"), body="{staff_name}，值班。")
    sms.send_all(store, SmsSettings())
    with store.connection() as conn:
        page = sms.history(conn, size=2)
        assert page.has_more and len(page.rows) == 2
        assert [r.recipient_name for r in sms.history(conn, state="failed").rows] == ["李工"]
        assert [r.account_no for r in sms.history(conn, q="13900000004").rows] == ["AC4"]
        assert len(sms.history(conn, everything=True).rows) == 4
        assert sms.counts(conn) == {"queued": 0, "sent": 3, "delivered": 0, "failed": 1}
        row, events = sms.message_detail(conn, sms.history(conn, q="AC1").rows[0].id)
        assert [e.state for e in events] == ["queued", "sent"]
        with pytest.raises(SmsError):
            sms.message_detail(conn, row.id, areas=frozenset({town["areas"]["A2"]}))


# -- gateways ---------------------------------------------------------------------------------------------
class FakeProvider:
    """An SMS provider's HTTP API on a free local port: POST /send answers {"code", "msgid"}; a phone ending
    in 0500 gets HTTP 500, one ending in 0400 a refusal; GET /status?id= gives a delivery report."""

    def __init__(self, secret: str = "", delay_s: float = 0.0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.reports: dict[str, str] = {}
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                msgid = query.get("id", [""])[0]
                self._answer(200, {"status": provider.reports.get(msgid, "PENDING")})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = json.loads(raw)
                if self.headers.get("Authorization") != "Bearer k-123":
                    self._answer(401, {"code": "401", "message": "bad key"})
                    return
                if secret:
                    signed = self.headers["X-Timestamp"].encode() + raw
                    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
                    if self.headers.get("X-Signature") != expected:
                        self._answer(200, {"code": "403", "message": "bad signature"})
                        return
                time.sleep(delay_s)
                with provider.lock:
                    provider.requests.append(body)
                    n = len(provider.requests)
                if body["mobile"].endswith("0500"):
                    self._answer(500, {"code": "500"})
                elif body["mobile"].endswith("0400"):
                    self._answer(200, {"result": {"code": "17", "message": "号码在黑名单中"}})
                else:
                    self._answer(200, {"result": {"code": "0", "msgid": f"P{n}"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider(secret="s3cret")
    yield fake
    fake.close()


def http_settings(url: str, **kw: Any) -> SmsSettings:
    http = SmsHttpSettings(
        url=f"{url}/send",
        auth_value="Bearer k-123",
        signature_secret="s3cret",
        success_field="result.code",
        message_id_field="result.msgid",
        error_field="result.message",
        status_url=f"{url}/status",
        extra_fields={"sign": "【燃气公司】"},
    )
    return SmsSettings(gateway="http", http=http, retry_after_s=0, **kw)


def _queue(store: Store, phones: list[str], body: str = "您好") -> None:
    with store.transaction(actor="clerk") as conn:
        sms.send(conn, Condition("phones", " ".join(phones)), body=body)


def _states(store: Store) -> list[tuple[Any, ...]]:
    with store.connection() as conn:
        return conn.execute(
            "SELECT phone, state, attempts, provider_message_id, error FROM sms_message ORDER BY id"
        ).fetchall()


def test_outbox_gateway_writes_each_message_once(store: Store) -> None:
    _queue(store, ["13800000001", "13800000002"], "燃气检修通知")
    settings = SmsSettings(batch=1)
    assert sms.send_all(store, settings) == {"sent": 2, "retry": 0, "failed": 0}
    assert sms.send_all(store, settings) == {"sent": 0, "retry": 0, "failed": 0}
    with store.connection() as conn:
        assert conn.execute("SELECT phone, body FROM sms_outbox ORDER BY id").fetchall() == [
            ("13800000001", "燃气检修通知"),
            ("13800000002", "燃气检修通知"),
        ]
    assert [s[1] for s in _states(store)] == ["sent", "sent"]


def test_http_provider_send_retry_refusal_and_reports(store: Store, provider: FakeProvider) -> None:
    settings = http_settings(provider.url, max_attempts=2)
    _queue(store, ["13800000001", "13800000500", "13800000400"], "您好，燃气费已缴。")
    first = sms.send_all(store, settings)
    assert first == {"sent": 1, "retry": 1, "failed": 1}
    assert provider.requests[0] == {
        "sign": "【燃气公司】",
        "mobile": "13800000001",
        "content": "您好，燃气费已缴。",
        "ref": provider.requests[0]["ref"],
    }
    second = sms.send_all(store, settings)  # the 500 is tried once more, then given up
    assert second == {"sent": 0, "retry": 0, "failed": 1}
    assert _states(store) == [
        ("13800000001", "sent", 1, "P1", ""),
        ("13800000500", "failed", 2, None, "provider answered HTTP 500"),
        ("13800000400", "failed", 1, None, "provider refused (17: 号码在黑名单中)"),
    ]
    provider.reports["P1"] = "DELIVRD"
    assert sms.poll_reports(store, settings) == 1
    assert _states(store)[0][1] == "delivered"
    with store.connection() as conn:
        events = conn.execute(
            "SELECT state, attempts FROM sms_message_event WHERE message_id = 2 ORDER BY id"
        ).fetchall()
    assert events == [("queued", 0), ("queued", 1), ("failed", 2)]


def test_delivery_report_callback_marks_failed_with_reason(store: Store, provider: FakeProvider) -> None:
    settings = http_settings(provider.url)
    _queue(store, ["13800000001"])
    sms.send_all(store, settings)
    with store.transaction() as conn:
        assert sms.apply_report(conn, settings.http, {"msgid": "P1", "status": "PENDING"}) == (None, "pending")
        assert sms.apply_report(conn, settings.http, {"msgid": "P9", "status": "DELIVRD"}) == (None, "unknown")
        _message_id, state = sms.apply_report(conn, settings.http, {"msgid": "P1", "status": "UNDELIV"})
    assert state == "failed"
    assert _states(store) == [("13800000001", "failed", 1, "P1", "not delivered (UNDELIV)")]


def test_a_wrong_key_or_an_unreachable_provider(store: Store, provider: FakeProvider) -> None:
    settings = http_settings(provider.url, max_attempts=1)
    settings.http.auth_value = "Bearer wrong"
    _queue(store, ["13800000001"])
    assert sms.send_all(store, settings)["failed"] == 1
    assert "provider refused" in _states(store)[0][4]
    closed = http_settings("http://127.0.0.1:9", max_attempts=3)
    _queue(store, ["13800000002"])
    assert sms.send_all(store, closed) == {"sent": 0, "retry": 1, "failed": 0}
    assert "unreachable" in _states(store)[1][4]


def test_two_senders_never_send_one_message_twice(store: Store) -> None:
    slow = FakeProvider(delay_s=0.01)
    try:
        settings = http_settings(slow.url, batch=5)
        settings.http.signature_secret = ""
        _queue(store, [f"138{n:08d}" for n in range(1, 41)])
        totals: list[dict[str, int]] = []
        threads = [threading.Thread(target=lambda: totals.append(sms.send_all(store, settings))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        slow.close()
    refs = [r["ref"] for r in slow.requests]
    assert len(refs) == 40 and len(set(refs)) == 40
    assert sum(t["sent"] for t in totals) == 40 and all(t["sent"] > 0 for t in totals)
    assert {s[1] for s in _states(store)} == {"sent"}


def test_seed_demo_twice_adds_nothing_the_second_time(store: Store) -> None:
    with store.transaction() as conn:
        for n in (1, 2, 3):
            make_meter(conn, n)
        conn.execute("UPDATE account SET community_id = (SELECT id FROM community WHERE code = 'C1')")
        sms.seed_demo(conn)
        first = [
            conn.execute(f"SELECT count(*) FROM {t}").fetchone() for t in ("sms_message", "sms_outbox", "sms_batch")
        ]
        sms.seed_demo(conn)
        second = [
            conn.execute(f"SELECT count(*) FROM {t}").fetchone() for t in ("sms_message", "sms_outbox", "sms_batch")
        ]
    assert first == second == [(3,), (3,), (1,)]


def test_the_sender_loop_scans_sends_and_stops(store: Store) -> None:
    from meterhub.cli.sms import start_sender

    _queue(store, ["13800000001"])
    settings = store.settings.model_copy(update={"sms": SmsSettings(poll_s=0.05)})
    started = start_sender(store, settings)
    assert started is not None
    worker, stop = started
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _states(store)[0][1] != "sent":
        time.sleep(0.05)
    stop.set()
    worker.join(5)
    assert not worker.is_alive()
    assert _states(store)[0][1] == "sent"
    assert start_sender(store, store.settings.model_copy(update={"sms": SmsSettings(sender=False)})) is None
