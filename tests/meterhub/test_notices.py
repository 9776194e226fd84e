"""Automatic SMS notices: for each kind, an event leads to exactly one message in the outbox, with the text
its template says, however often the scan and the sender run."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from meterhub import notices, sms
from meterhub.commands import audit
from meterhub.sms import ArrearsInfo
from meterhub.store import Store
from tests.meterhub.factories import make_meter

NOW = datetime.now(UTC)
TODAY = date.today()


@pytest.fixture
def ids(store: Store) -> dict[str, int]:
    with store.transaction(actor="setup") as conn:
        conn.execute("SELECT meterhub_sms_defaults()")
        conn.execute("SELECT meterhub_command_defaults()")
        made = make_meter(conn, 1)
        conn.execute("UPDATE customer SET name = '李四', phone = '139 0000 1111' WHERE id = %s", [made["customer"]])
        conn.execute("UPDATE community SET name = '幸福小区' WHERE id = %s", [made["community"]])
        conn.execute("UPDATE account SET address = '幸福路1号' WHERE id = %s", [made["account"]])
    return made


def outbox(store: Store) -> list[tuple[str, str]]:
    with store.connection() as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT phone, body FROM sms_outbox ORDER BY id").fetchall()]


def run_twice(store: Store, **kw: Any) -> list[dict[str, int]]:
    """The scan and the sender, twice: what each scan added."""
    added = []
    for _ in range(2):
        added.append(notices.scan(store, **kw))
        sms.send_all(store, store.settings.sms)
    return added


def only(kind: str, added: list[dict[str, int]]) -> None:
    assert added[0] == {**dict.fromkeys(added[0], 0), kind: 1}
    assert added[1] == dict.fromkeys(added[0], 0)


def add_bill(conn: psycopg.Connection[Any], account_id: int, amount: str, period: str, due: date) -> int:
    start = date(int(period[:4]), int(period[5:]), 1)
    row = conn.execute(
        """INSERT INTO bill (account_id, period, period_start, period_end, usage_type_id, bill_run_id, volume_m3,
                             amount, issued_on, due_date)
           VALUES (%s, %s, %s, %s, (SELECT id FROM usage_type LIMIT 1), 1, 12.345, %s, %s, %s) RETURNING id""",
        [account_id, period, start, start + timedelta(days=28), Decimal(amount), due - timedelta(days=15), due],
    ).fetchone()
    assert row is not None
    conn.execute(
        """INSERT INTO ledger_entry (account_id, entry_type, amount, booked_on, bill_id, component, actor)
           VALUES (%s, 'charge', %s, %s, %s, 'principal', 'test')""",
        [account_id, Decimal(amount), due - timedelta(days=15), row[0]],
    )
    return int(row[0])


def test_reading_notice_once_per_bill(store: Store, ids: dict[str, int]) -> None:
    with store.transaction() as conn:
        bill = add_bill(conn, ids["account"], "86.40", "2026-10", TODAY + timedelta(days=10))
    only("reading", run_twice(store))
    due = TODAY + timedelta(days=10)
    assert outbox(store) == [
        ("13900001111", f"尊敬的李四，您的户号AC1本期（2026-10）用气12.345立方米，应缴燃气费86.40元，请于{due}前缴纳。")
    ]
    with store.connection() as conn:
        key = conn.execute("SELECT idempotency_key, notice_kind, state FROM sms_message").fetchall()
    assert key == [(f"reading:{bill}", "reading", "sent")]


def test_arrears_reminder_above_threshold_and_days(store: Store, ids: dict[str, int]) -> None:
    with store.transaction() as conn:
        old = add_bill(conn, ids["account"], "120.00", "2026-08", TODAY - timedelta(days=20))
        add_bill(conn, ids["account"], "30.00", "2026-09", TODAY - timedelta(days=5))  # too recent alone
        add_bill(conn, ids["account"], "45.50", "2026-10", TODAY + timedelta(days=5))  # not yet due
        payment = conn.execute(
            "INSERT INTO payment (account_id, channel, amount, paid_on, actor) VALUES (%s, 'counter', 20, %s, 't') "
            "RETURNING id",
            [ids["account"], TODAY - timedelta(days=3)],
        ).fetchone()
        assert payment is not None
        conn.execute(
            "INSERT INTO ledger_entry (account_id, entry_type, amount, booked_on, payment_id, actor) "
            "VALUES (%s, 'payment', -20, %s, %s, 't')",
            [ids["account"], TODAY - timedelta(days=3), payment[0]],
        )
        conn.execute(
            "UPDATE sms_notice_rule SET params = %s WHERE kind = 'arrears'",
            [Jsonb({"min_amount": "100.00", "min_days_overdue": 15, "repeat_days": 0})],
        )
        held = sms.sql_arrears(conn, [ids["account"]], TODAY)
    # 195.50 owed; 45.50 of it on the bill not yet due: arrears 130.00, the oldest unpaid bill is August's
    assert held == {ids["account"]: ArrearsInfo(Decimal("130.00"), old, TODAY - timedelta(days=20))}
    only("arrears", run_twice(store))
    due = TODAY - timedelta(days=20)
    assert outbox(store) == [
        (
            "13900001111",
            f"尊敬的李四，您的户号AC1已欠燃气费130.00元（最早到期日{due}，已逾期20天），请尽快缴纳，以免影响正常用气。",
        )
    ]


def test_arrears_below_threshold_is_not_reminded(store: Store, ids: dict[str, int]) -> None:
    with store.transaction() as conn:
        add_bill(conn, ids["account"], "20.00", "2026-08", TODAY - timedelta(days=30))
    assert run_twice(store)[0]["arrears"] == 0
    assert outbox(store) == []


def test_arrears_from_an_injected_ledger_function(store: Store, ids: dict[str, int]) -> None:
    with store.transaction() as conn:
        bill = add_bill(conn, ids["account"], "80.00", "2026-08", TODAY - timedelta(days=40))

    def exact(conn: psycopg.Connection[Any], account_ids: Any, as_of: date) -> dict[int, ArrearsInfo]:
        return {i: ArrearsInfo(Decimal("81.23"), bill, TODAY - timedelta(days=40)) for i in account_ids}

    only("arrears", run_twice(store, arrears=exact))
    assert "81.23元" in outbox(store)[0][1]


def _bank_result(conn: psycopg.Connection[Any], account_id: int, outcome: str, message: str) -> int:
    conn.execute(
        """INSERT INTO bank_layout (code, bank_name, format, group_by, fields, result_fields)
           VALUES ('ICBC', '工商银行', 'csv', 'bill', '[]', '[]') ON CONFLICT DO NOTHING"""
    )
    bill = add_bill(conn, account_id, "66.60", "2026-10", TODAY + timedelta(days=3))
    export = conn.execute(
        """INSERT INTO bank_export (bank_code, as_of, created_by, rows, amount, file_name, content)
           VALUES ('ICBC', %s, 't', 1, 66.60, 'x.csv', '') RETURNING id""",
        [TODAY],
    ).fetchone()
    assert export is not None
    conn.execute(
        """INSERT INTO bank_export_row (export_id, row_no, reference, account_ids, bill_id, bank_account_no, amount)
           VALUES (%s, 1, %s, %s, %s, '6222000011112222', 66.60)""",
        [export[0], f"R{outcome}", [account_id], bill],
    )
    imported = conn.execute(
        """INSERT INTO bank_import (bank_code, file_name, imported_by, succeeded, failed, duplicates)
           VALUES ('ICBC', 'r.csv', 't', 1, 0, 0) RETURNING id"""
    ).fetchone()
    assert imported is not None
    row = conn.execute(
        """INSERT INTO bank_result (import_id, bank_reference, reference, outcome, amount, message)
           VALUES (%s, %s, %s, %s, 66.60, %s) RETURNING id""",
        [imported[0], f"B{outcome}", f"R{outcome}", outcome, message],
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(
    ("outcome", "kind", "text"),
    [
        ("success", "bank_success", "尊敬的李四，您的户号AC1燃气费66.60元已由银行代扣成功，感谢您的支持。"),
        (
            "failure",
            "bank_failure",
            "尊敬的李四，您的户号AC1燃气费66.60元银行代扣未成功（余额不足），请及时到营业厅或通过其他方式缴纳。",
        ),
    ],
)
def test_bank_withholding_notice(store: Store, ids: dict[str, int], outcome: str, kind: str, text: str) -> None:
    with store.transaction() as conn:
        result = _bank_result(conn, ids["account"], outcome, "余额不足")
    only(kind, run_twice(store, kinds=[kind]))
    assert outbox(store) == [("13900001111", text)]
    with store.connection() as conn:
        row = conn.execute("SELECT notified_at IS NOT NULL FROM bank_result WHERE id = %s", [result]).fetchone()
    assert row == (True,)


def test_planned_stop_notice_names_the_earliest_close_by_the_notice_period(store: Store, ids: dict[str, int]) -> None:
    served = datetime(2026, 11, 27, 1, 30, tzinfo=UTC)  # 09:30 in Shanghai
    now = served + timedelta(hours=1)
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO command_notice (account_id, served_at, channel, served_by, note) "
            "VALUES (%s, %s, 'letter', 't', '管道改造')",
            [ids["account"], served],
        )
        conn.execute("UPDATE command_rule SET params = jsonb_set(params, '{hours}', '72') WHERE code = 'notice_period'")
    only("supply_stop", run_twice(store, now=now))
    assert outbox(store) == [
        (
            "13900001111",
            "尊敬的李四，因管道改造，您的户号AC1（幸福路1号）将于2026-11-30 09:30后计划停气，请提前做好准备。",
        )
    ]


def test_low_credit_notice_once_per_event(store: Store, ids: dict[str, int]) -> None:
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO meter_event (meter_id, ts, kind, detail, source) VALUES (%s, %s, 'low_credit', %s, 'prepaid')",
            [ids["meter"], NOW - timedelta(hours=1), Jsonb({"balance_cny": "8.5"})],
        )
    only("low_credit", run_twice(store))
    assert outbox(store) == [
        ("13900001111", "尊敬的李四，您的户号AC1（表号M00000001）预付费余额仅剩8.50元，请及时充值，以免关阀停气。")
    ]


def test_valve_closed_notice_only_for_confirmed_closes(store: Store, ids: dict[str, int]) -> None:
    closed = datetime(2026, 11, 27, 2, 5, tzinfo=UTC)
    with store.transaction() as conn:
        audit_id = audit(conn, "engineer", "command.request", "meter", ids["meter"])
        for n, (kind, state) in enumerate(
            [("valve_close", "confirmed"), ("valve_close", "failed"), ("valve_open", "confirmed")]
        ):
            conn.execute(
                """INSERT INTO meter_command (meter_id, kind, state, reason, requested_by, idempotency_key,
                                              correlation_id, finished_at, audit_id)
                   VALUES (%s, %s, %s, 'arrears', 'engineer', %s, %s, %s, %s)""",
                [ids["meter"], kind, state, f"k{n}", f"c{n}", closed, audit_id],
            )
    only("valve_closed", run_twice(store, now=closed + timedelta(hours=2)))
    assert outbox(store) == [
        ("13900001111", "尊敬的李四，您的户号AC1燃气表M00000001已于2026-11-27 10:05关阀。如有疑问请联系客服。")
    ]


def test_a_notice_switched_off_or_old_events_send_nothing(store: Store, ids: dict[str, int]) -> None:
    with store.transaction() as conn:
        add_bill(conn, ids["account"], "10.00", "2026-01", TODAY - timedelta(days=300))  # issued long ago
        conn.execute("UPDATE sms_notice_rule SET enabled = false WHERE kind = 'arrears'")
    added = run_twice(store)
    assert "arrears" not in added[0] and added[0]["reading"] == 0
    assert outbox(store) == []


def test_a_customer_without_a_phone_gets_a_failed_message_once(store: Store, ids: dict[str, int]) -> None:
    with store.transaction() as conn:
        conn.execute("UPDATE customer SET phone = '' WHERE id = %s", [ids["customer"]])
        add_bill(conn, ids["account"], "10.00", "2026-10", TODAY + timedelta(days=10))
    only("reading", run_twice(store))
    assert outbox(store) == []
    with store.connection() as conn:
        assert conn.execute("SELECT state, error FROM sms_message").fetchall() == [("failed", "no_phone")]


def test_rules_refuse_templates_the_notice_cannot_fill(store: Store, ids: dict[str, int]) -> None:
    with store.transaction() as conn:
        sms.save_template(conn, "staff.note", "员工", "{staff_name}，请注意。")
        with pytest.raises(sms.SmsError) as err:
            notices.save_rule(conn, "reading", enabled=True, template_code="staff.note", params={})
        assert err.value.code == "unfit_template"
        with pytest.raises(sms.SmsError):
            notices.save_rule(
                conn,
                "arrears",
                enabled=True,
                template_code="notice.arrears",
                params={"min_amount": "1.005", "min_days_overdue": 1},
            )
        rule = notices.save_rule(
            conn,
            "arrears",
            enabled=False,
            template_code="notice.arrears",
            params={"min_amount": "200", "min_days_overdue": "30", "repeat_days": "7"},
        )
    assert rule.params == {"min_amount": "200", "min_days_overdue": 30, "repeat_days": 7}
    assert not rule.enabled


def test_the_cli_scans_and_sends_with_the_billing_ledgers_arrears(
    store: Store, ids: dict[str, int], tmp_path: Path
) -> None:
    with store.transaction() as conn:
        add_bill(conn, ids["account"], "75.00", "2026-08", TODAY - timedelta(days=20))  # arrears, not a recent bill
        conn.execute("UPDATE sms_notice_rule SET enabled = (kind = 'arrears')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERHUB_")}
    env["METERHUB_DATABASE_URL"] = store.url

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "meterhub", "sms", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert cli("notify").split() == ["arrears:", "1"]
    assert cli("notify").split() == ["arrears:", "0"]
    assert "sent 1, to retry 0, failed 0" in cli("send")
    assert "sent 0," in cli("send")
    due = TODAY - timedelta(days=20)
    assert outbox(store) == [
        (
            "13900001111",
            f"尊敬的李四，您的户号AC1已欠燃气费75.00元（最早到期日{due}，已逾期20天），请尽快缴纳，以免影响正常用气。",
        )
    ]
