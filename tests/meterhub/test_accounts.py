"""Account services: 开户, edits, 过户, 更名, 改用气性质, 锁定/解锁 — one transaction each, the person and the
reason in the history, a refused action writes nothing."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from meterhub import accounts
from meterhub.accounts import AccountError, CustomerInput, OpenAccount
from meterhub.store import Store
from tests.meterhub.factories import make_meter

TODAY = date(2025, 3, 15)


def counts(store: Store) -> tuple[int, ...]:
    with store.connection() as conn:
        row = conn.execute(
            """SELECT (SELECT count(*) FROM customer), (SELECT count(*) FROM account),
                      (SELECT count(*) FROM account_action), (SELECT count(*) FROM change_history),
                      (SELECT count(*) FROM account_usage_type_change)"""
        ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.fixture
def base(store: Store) -> dict[str, Any]:
    with store.transaction(actor="setup") as conn:
        ids = make_meter(conn, 1)
        conn.execute("INSERT INTO usage_type (code, name, name_en) VALUES ('COM', '商业', 'Commercial')")
        conn.execute("UPDATE account SET opened_on = '2020-01-01'")
    return ids


def test_open_with_a_new_customer_generates_numbers(store: Store, base: dict[str, Any]) -> None:
    result = accounts.open_account(
        store,
        "clerk",
        OpenAccount(
            usage_type="RES",
            community="C1",
            address="幸福小区 3-2-201",
            card_no="IC77",
            customer=CustomerInput(name="王五", phone="13912345678", id_number="11010519491231002X"),
        ),
        today=TODAY,
    )
    number = result.account_no
    assert len(number) == 10 and number.isdigit()
    assert accounts._luhn(number[:9]) == number[9]
    with store.connection() as conn:
        view = accounts.get_account(conn, number)
        assert view.customer.name == "王五" and view.customer.customer_no.startswith("C")
        assert view.opened_on == TODAY and view.card_no == "IC77" and view.community == "C1"
        entries = accounts.history(conn, view.id)
    assert entries[0].kind == "open" and entries[0].actor == "clerk"
    assert {(c.table, c.field) for c in entries[0].changes} >= {("account", "account_no"), ("customer", "name")}


def test_generated_numbers_skip_numbers_already_taken(store: Store, base: dict[str, Any]) -> None:
    with store.transaction() as conn:
        conn.execute("SELECT setval('account_no_seq', 1, false)")
        customer_id = conn.execute("SELECT id FROM customer").fetchone()[0]  # type: ignore[index]
        taken = "000000001" + accounts._luhn("000000001")
        conn.execute(
            "INSERT INTO account (account_no, customer_id, usage_type_id) SELECT %s, %s, id FROM usage_type LIMIT 1",
            [taken, customer_id],
        )
    result = accounts.open_account(store, "clerk", OpenAccount(usage_type="RES", customer_no="CU1"))
    assert result.account_no != taken and result.account_no[:9] > "000000001"


@pytest.mark.parametrize(
    ("new", "field", "code"),
    [
        (OpenAccount(usage_type="RES", account_no="AC1", customer_no="CU1"), "account_no", "duplicate"),
        (OpenAccount(usage_type="RES", account_no="bad no", customer_no="CU1"), "account_no", "bad_number"),
        (OpenAccount(usage_type="NOPE", customer_no="CU1"), "usage_type", "no_usage_type"),
        (OpenAccount(usage_type="RES", community="C9", customer_no="CU1"), "community", "no_community"),
        (OpenAccount(usage_type="RES", customer_no="CU404"), "customer_no", "no_customer"),
        (OpenAccount(usage_type="RES"), "customer_no", "customer_choice"),
        (OpenAccount(usage_type="RES", customer=CustomerInput(name=" ")), "name", "required"),
        (
            OpenAccount(usage_type="RES", customer=CustomerInput(name="x", id_number="110105194912310021")),
            "id_number",
            "bad_id_check",
        ),
        (
            OpenAccount(usage_type="RES", customer=CustomerInput(name="x", household_size=0)),
            "household_size",
            "bad_household",
        ),
        (OpenAccount(usage_type="RES", customer_no="CU1", opened_on=date(2025, 3, 16)), "opened_on", "future_date"),
    ],
)
def test_open_refuses_bad_input_and_writes_nothing(
    store: Store, base: dict[str, Any], new: OpenAccount, field: str, code: str
) -> None:
    before = counts(store)
    with pytest.raises(AccountError) as caught:
        accounts.open_account(store, "clerk", new, today=TODAY)
    assert (caught.value.field, caught.value.code) == (field, code)
    assert counts(store) == before


def test_duplicate_card_number_is_refused(store: Store, base: dict[str, Any]) -> None:
    accounts.open_account(store, "clerk", OpenAccount(usage_type="RES", customer_no="CU1", card_no="K1"))
    before = counts(store)
    with pytest.raises(AccountError) as caught:
        accounts.open_account(store, "clerk", OpenAccount(usage_type="RES", customer_no="CU1", card_no="K1"))
    assert caught.value.field == "card_no" and caught.value.status == 409
    assert counts(store) == before


def test_transfer_keeps_the_former_owner_in_the_history(store: Store, base: dict[str, Any]) -> None:
    with store.transaction() as conn:
        conn.execute("INSERT INTO account_group (name) VALUES ('张家')")
        conn.execute("INSERT INTO account_group_member SELECT id, %s FROM account_group", [base["account"]])
        conn.execute("UPDATE customer SET phone = '13811112222' WHERE id = %s", [base["customer"]])
    result = accounts.transfer_account(
        store, "clerk", "AC1", reason="房屋买卖", new_customer=CustomerInput(name="李四", phone="13700000000")
    )
    assert result.detail["from"] == {"customer_no": "CU1", "name": "张三"}
    assert result.detail["left_group"]["name"] == "张家"
    with store.connection() as conn:
        view = accounts.get_account(conn, "AC1")
        entries = accounts.history(conn, base["account"])
        former = conn.execute("SELECT name FROM customer WHERE customer_no = 'CU1'").fetchone()
    assert view.customer.name == "李四" and view.group is None and former == ("张三",)
    transfer = next(e for e in entries if e.kind == "transfer")
    assert transfer.actor == "clerk" and transfer.reason == "房屋买卖"
    owner = next(c for c in transfer.changes if c.field == "customer_id")
    assert owner.old_text == "张三 (CU1)" and owner.new_text.startswith("李四 (C")  # type: ignore[union-attr]
    # The former owner's phone change while holding the account is still in the account's history.
    assert any(c.field == "phone" and c.new == "13811112222" for e in entries for c in e.changes)


def test_transfer_to_the_same_owner_or_of_a_locked_account_is_refused(store: Store, base: dict[str, Any]) -> None:
    before = counts(store)
    with pytest.raises(AccountError, match="already holds"):
        accounts.transfer_account(store, "clerk", "AC1", reason="x", to_customer_no="CU1")
    accounts.lock_account(store, "clerk", "AC1", reason="欠费纠纷")
    with pytest.raises(AccountError) as caught:
        accounts.transfer_account(store, "clerk", "AC1", reason="x", new_customer=CustomerInput(name="赵六"))
    assert caught.value.code == "locked"
    assert counts(store)[0] == before[0]  # no customer was created


def test_rename_and_edit_are_in_the_history_with_the_person(store: Store, base: dict[str, Any]) -> None:
    accounts.rename_customer(store, "clerk.li", "AC1", name="张三丰", reason="身份证更名")
    result = accounts.edit_account(
        store, "clerk.wu", "AC1", {"phone": "13800000000", "household_size": 5, "protected": True, "address": "新址"}
    )
    assert sorted(result.changed) == ["address", "household_size", "protected"]
    assert accounts.edit_account(store, "clerk.wu", "AC1", {"household_size": "5"}).action_id is None
    with store.connection() as conn:
        entries = accounts.history(conn, base["account"])
    rename = next(e for e in entries if e.kind == "rename")
    assert rename.actor == "clerk.li" and rename.reason == "身份证更名"
    assert [(c.field, c.old, c.new) for c in rename.changes] == [("name", "张三", "张三丰")]
    edit = next(e for e in entries if e.kind == "edit")
    assert edit.actor == "clerk.wu"
    assert {(c.table, c.field, c.new) for c in edit.changes} == {
        ("account", "address", "新址"),
        ("customer", "household_size", 5),
        ("customer", "protected", True),
    }


def test_usage_type_change_moves_the_meters_and_records_the_date(store: Store, base: dict[str, Any]) -> None:
    with store.transaction() as conn:
        conn.execute("INSERT INTO usage_type (code, name) VALUES ('HEAT', '采暖')")
        conn.execute(
            "INSERT INTO meter (meter_no, driver_key, account_id, usage_type_id) "
            "SELECT 'M-HEAT', 'native_json', %s, id FROM usage_type WHERE code = 'HEAT'",
            [base["account"]],
        )
        conn.execute(
            "INSERT INTO bill (account_id, period, period_start, period_end, usage_type_id, bill_run_id, volume_m3, "
            "amount, issued_on, due_date) SELECT %s, '2025-01', '2025-01-01', '2025-02-01', id, 1, 1, 1, "
            "'2025-02-02', '2025-02-20' FROM usage_type WHERE code = 'RES'",
            [base["account"]],
        )
    before = counts(store)
    for day, code in ((date(2025, 1, 20), "already_billed"), (date(2025, 3, 16), "future_date")):
        with pytest.raises(AccountError) as caught:
            accounts.change_usage_type(
                store, "clerk", "AC1", usage_type="COM", effective_from=day, reason="开店", today=TODAY
            )
        assert (caught.value.field, caught.value.code) == ("effective_from", code)
    assert counts(store) == before
    result = accounts.change_usage_type(
        store, "clerk", "AC1", usage_type="COM", effective_from=date(2025, 2, 1), reason="开店", today=TODAY
    )
    assert result.detail == {"from": "RES", "to": "COM", "meters_changed": ["M00000001"], "meters_kept": ["M-HEAT"]}
    with store.connection() as conn:
        types = dict(conn.execute("SELECT m.meter_no, u.code FROM meter m JOIN usage_type u ON u.id = m.usage_type_id"))
        res, com = (
            conn.execute("SELECT id FROM usage_type WHERE code = %s", [c]).fetchone()[0]  # type: ignore[index]
            for c in ("RES", "COM")
        )
        assert accounts.usage_type_on(conn, base["account"], date(2025, 1, 31)) == res
        assert accounts.usage_type_on(conn, base["account"], date(2025, 2, 1)) == com
        entry = next(e for e in accounts.history(conn, base["account"]) if e.kind == "usage_type")
    assert types == {"M00000001": "COM", "M-HEAT": "HEAT"}
    assert entry.effective_on == date(2025, 2, 1) and entry.reason == "开店"
    assert {(c.table, c.row_label, c.old_text, c.new_text) for c in entry.changes} == {
        ("account", "", "居民 (RES)", "商业 (COM)"),
        ("meter", "M00000001", "居民 (RES)", "商业 (COM)"),
    }


def test_lock_and_unlock(store: Store, base: dict[str, Any]) -> None:
    accounts.lock_account(store, "clerk", "AC1", reason="窃气调查")
    with pytest.raises(AccountError) as caught:
        accounts.lock_account(store, "clerk", "AC1", reason="again")
    assert caught.value.code == "not_active"
    with pytest.raises(AccountError) as caught:
        accounts.lock_account(store, "clerk", "AC1", reason="  ")
    assert caught.value.field == "reason"
    accounts.unlock_account(store, "boss", "AC1", reason="调查结束")
    with store.connection() as conn:
        entries = accounts.history(conn, base["account"])
    assert [(e.kind, e.actor, e.reason) for e in entries[:2]] == [
        ("unlock", "boss", "调查结束"),
        ("lock", "clerk", "窃气调查"),
    ]
    assert [(c.old, c.new) for c in entries[0].changes] == [("locked", "active")]


def test_closed_accounts_and_other_areas_are_refused(store: Store, base: dict[str, Any]) -> None:
    with store.transaction() as conn:
        other = make_meter(conn, 2)
        conn.execute("UPDATE account SET status = 'closed', closed_on = current_date WHERE id = %s", [other["account"]])
        area_1 = conn.execute("SELECT id FROM area WHERE code = 'A1'").fetchone()[0]  # type: ignore[index]
    before = counts(store)
    with pytest.raises(AccountError) as caught:
        accounts.edit_account(store, "clerk", "AC2", {"phone": "1"})
    assert caught.value.code == "closed"
    mine = frozenset({area_1})
    with pytest.raises(AccountError) as caught:
        accounts.rename_customer(store, "clerk", "AC2", name="x", reason="y", areas=mine)
    assert caught.value.code == "area" and caught.value.status == 403
    with pytest.raises(AccountError) as caught:
        accounts.edit_account(store, "clerk", "AC1", {"community": "C2"}, areas=mine)
    assert caught.value.code == "area"
    assert counts(store) == before
    with store.connection() as conn:
        found = accounts.search(conn, "", areas=mine)
        assert [r.account_no for r in found.rows] == ["AC1"]
        with pytest.raises(AccountError):
            accounts.get_account(conn, "AC2", areas=mine)


def test_search_pages_and_escapes_wildcards(store: Store, base: dict[str, Any]) -> None:
    for i in range(3):
        accounts.open_account(store, "clerk", OpenAccount(usage_type="RES", customer_no="CU1", account_no=f"X_{i}"))
    with store.connection() as conn:
        first = accounts.search(conn, "x_", by="account_no", size=2)
        second = accounts.search(conn, "x_", by="account_no", size=2, page=2)
        assert [r.account_no for r in first.rows] == ["X_0", "X_1"] and first.has_more
        assert [r.account_no for r in second.rows] == ["X_2"] and not second.has_more
        assert accounts.search(conn, "%").rows == []
