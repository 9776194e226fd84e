"""Customers and accounts in the console and the API: search, 开户, the account page and its history,
edits, 过户, 更名, 改用气性质, 锁定/解锁, permissions and areas."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest

from meterhub.store import Store
from tests.dashboards.conftest import ConsoleClient, add_user
from tests.meterhub.factories import make_meter


@pytest.fixture
def data(store: Store, users: dict[str, int]) -> dict[str, Any]:
    """Two accounts in two areas: AC1 (张三, area A1) and AC2 (李四, area A2), with distinct facts."""
    with store.transaction(actor="setup") as conn:
        one, two = make_meter(conn, 1), make_meter(conn, 2)
        conn.execute("INSERT INTO usage_type (code, name, name_en) VALUES ('COM', '商业', 'Commercial')")
        conn.execute("UPDATE community SET name = '幸福小区' WHERE code = 'C1'")
        conn.execute("UPDATE community SET name = '阳光花园' WHERE code = 'C2'")
        conn.execute(
            "UPDATE customer SET name = '张三', phone = '13811112222', id_number = '11010519491231002X' WHERE id = %s",
            [one["customer"]],
        )
        conn.execute(
            "UPDATE customer SET name = '李四', phone = '13933334444', id_number = '91110000TEST0001' WHERE id = %s",
            [two["customer"]],
        )
        conn.execute(
            "UPDATE account SET card_no = 'IC0001', address = '幸福路 1 号 3-201', opened_on = '2020-01-01' "
            "WHERE id = %s",
            [one["account"]],
        )
        conn.execute(
            "UPDATE account SET card_no = 'IC0002', address = '阳光大道 8 号', opened_on = '2020-01-01' WHERE id = %s",
            [two["account"]],
        )
        area_1 = conn.execute("SELECT id FROM area WHERE code = 'A1'").fetchone()[0]  # type: ignore[index]
    return {"one": one, "two": two, "area_1": area_1}


def snapshot(store: Store) -> tuple[Any, ...]:
    """Everything an account action could change."""
    with store.connection() as conn:
        return tuple(
            conn.execute(query).fetchall()
            for query in (
                "SELECT * FROM customer ORDER BY id",
                "SELECT * FROM account ORDER BY id",
                "SELECT * FROM meter ORDER BY id",
                "SELECT count(*) FROM account_action",
                "SELECT count(*) FROM change_history",
            )
        )


def found(page_text: str) -> list[str]:
    return (
        re.findall(r'href="/customers/accounts/([^"?/]+)"', page_text.split('id="results"')[1])
        if ('id="results"' in page_text)
        else []
    )


# -- search ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("q", "by"),
    [
        ("AC1", "account_no"),
        ("IC0001", "card_no"),
        ("张三", "name"),
        ("1381111", "phone"),
        ("11010519491231002X", "id_number"),
        ("幸福路", "address"),
        ("幸福小区", "community"),
    ],
)
def test_search_finds_by_each_field(
    signed_in: Callable[[str], ConsoleClient], data: dict[str, Any], q: str, by: str
) -> None:
    client = signed_in("cashier")
    for field in ("all", by):
        page = client.get("/customers", params={"q": q, "by": field})
        assert page.status_code == 200
        assert found(page.text) == ["AC1"], (field, q)
    api = client.http.get("/api/v1/customers", params={"q": q, "by": by})
    assert [item["account_no"] for item in api.json()["items"]] == ["AC1"]
    assert api.json()["items"][0]["name"] == "张三"


def test_search_lists_pages_and_filters_by_status(
    signed_in: Callable[[str], ConsoleClient], store: Store, data: dict[str, Any]
) -> None:
    with store.transaction() as conn:
        conn.execute("UPDATE account SET status = 'locked' WHERE account_no = 'AC2'")
    client = signed_in("auditor")
    assert found(client.get("/customers?q=").text) == ["AC1", "AC2"]
    assert found(client.get("/customers?status=locked").text) == ["AC2"]
    assert "No account matches" in client.get("/customers?q=nobody").text
    page = client.http.get("/api/v1/customers", params={"size": 1}).json()
    assert [i["account_no"] for i in page["items"]] == ["AC1"] and page["has_more"]
    assert client.http.get("/api/v1/customers", params={"by": "shoe_size"}).status_code == 422


# -- 开户 ------------------------------------------------------------------------------------------------
def test_open_an_account_for_a_new_customer_on_the_page(
    signed_in: Callable[[str], ConsoleClient], store: Store, data: dict[str, Any]
) -> None:
    client = signed_in("billing_clerk")
    form = client.get("/customers/new")
    assert form.status_code == 200 and "幸福小区" in form.text
    response = client.post(
        "/customers/new",
        {
            "customer_mode": "new",
            "name": "王五",
            "kind": "person",
            "phone": "13700001111",
            "household_size": "4",
            "account_no": "",
            "community": "C1",
            "address": "幸福路 2 号 1-101",
            "usage_type": "RES",
            "billing_mode": "prepaid_account",
            "card_no": "IC0099",
            "opened_on": "2024-06-01",
        },
    )
    assert response.status_code == 303, response.text
    url = response.headers["location"]
    account_no = url.split("/customers/accounts/")[1].split("?")[0]
    page = client.get(url)
    assert "The account is open" in page.text
    assert "王五" in page.text and "IC0099" in page.text and "幸福路 2 号 1-101" in page.text
    assert "billing_clerk" in page.text.split('id="history"')[1]
    with store.connection() as conn:
        row = conn.execute(
            """SELECT c.name, c.household_size, a.billing_mode, a.opened_on, co.code FROM account a
                 JOIN customer c ON c.id = a.customer_id JOIN community co ON co.id = a.community_id
                WHERE a.account_no = %s""",
            [account_no],
        ).fetchone()
    assert row == ("王五", 4, "prepaid_account", date(2024, 6, 1), "C1")
    assert found(client.get("/customers", params={"q": "王五"}).text) == [account_no]


def test_open_an_account_for_an_existing_customer_by_api(
    signed_in: Callable[[str], ConsoleClient], store: Store, data: dict[str, Any]
) -> None:
    client = signed_in("billing_clerk")
    response = client.http.post(
        "/api/v1/accounts",
        json={
            "customer_no": "CU1",
            "account_no": "AC1-B",
            "community": "C1",
            "usage_type": "COM",
            "address": "幸福路 1 号底商",
        },
        headers={"X-CSRF-Token": client.csrf},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "open" and body["account"]["customer"]["name"] == "张三"
    assert response.headers["location"] == "/api/v1/accounts/AC1-B"
    account = client.http.get("/api/v1/accounts/AC1-B").json()
    assert account["usage_type"] == "COM" and account["history"][0]["kind"] == "open"
    assert account["history"][0]["actor"] == "billing_clerk"
    assert client.http.get("/api/v1/accounts/AC1").json()["other_accounts"] == ["AC1-B"]


def test_refused_opening_reports_the_field_and_writes_nothing(
    signed_in: Callable[[str], ConsoleClient], store: Store, data: dict[str, Any]
) -> None:
    client = signed_in("billing_clerk")
    before = snapshot(store)
    page = client.post(
        "/customers/new",
        {
            "customer_mode": "existing",
            "customer_no": "CU1",
            "account_no": "AC2",
            "community": "C1",
            "usage_type": "RES",
            "billing_mode": "postpaid",
            "opened_on": "2024-06-01",
        },
    )
    assert page.status_code == 409
    assert "Account number: AC2 is already in use." in page.text
    assert 'value="AC2"' in page.text  # the input is kept
    assert re.search(r'<label class="invalid">Account number', page.text)
    page = client.post(
        "/customers/new",
        {
            "customer_mode": "new",
            "name": "王五",
            "household_size": "0",
            "community": "C1",
            "usage_type": "RES",
            "billing_mode": "postpaid",
            "opened_on": "2024-06-01",
        },
    )
    assert page.status_code == 422 and "Household size: a whole number from 1 to 99." in page.text
    api = client.http.post(
        "/api/v1/accounts",
        json={"customer": {"name": "王五", "id_number": "110105194912310021"}, "usage_type": "RES", "community": "C1"},
        headers={"X-CSRF-Token": client.csrf},
    )
    assert api.status_code == 422 and api.json()["error"] == "bad_id_check"
    assert api.json()["detail"].startswith("id_number:")
    api = client.http.post(
        "/api/v1/accounts",
        json={"customer_no": "CU1", "usage_type": "RES", "card_no": "IC0002"},
        headers={"X-CSRF-Token": client.csrf},
    )
    assert api.status_code == 409 and api.json()["detail"].startswith("card_no:")
    api = client.http.post(
        "/api/v1/accounts",
        json={"customer_no": "CU1", "usage_type": "RES", "billing_mode": "free gas"},
        headers={"X-CSRF-Token": client.csrf},
    )
    assert api.status_code == 422 and api.json()["detail"][0]["field"] == "billing_mode"
    assert snapshot(store) == before


# -- the account page -----------------------------------------------------------------------------------
def test_account_page_shows_facts_meters_balance_and_links(
    signed_in: Callable[[str], ConsoleClient], data: dict[str, Any]
) -> None:
    cashier = signed_in("cashier")
    page = cashier.get("/customers/accounts/AC1")
    assert page.status_code == 200
    assert "张三" in page.text and "IC0001" in page.text and "幸福小区" in page.text
    assert 'href="/meters/M00000001"' in page.text
    assert 'href="/counter?account_no=AC1"' in page.text and 'id="total-due"' in page.text
    assert "/customers/accounts/AC1/edit" not in page.text  # a cashier may not edit
    reader = signed_in("meter_reader")
    page = reader.get("/customers/accounts/AC1")
    assert page.status_code == 200 and 'id="balance"' not in page.text
    assert reader.get("/customers/accounts/NOPE").status_code == 404
    assert reader.http.get("/api/v1/accounts/NOPE").status_code == 404


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_every_page_is_translated(signed_in: Callable[[str], ConsoleClient], data: dict[str, Any], lang: str) -> None:
    client = signed_in("admin")
    client.post("/lang", {"lang": lang, "next": "/"})
    client.post("/customers/accounts/AC1/rename", {"name": "张三丰", "reason": "更名"})
    for url in (
        "/customers?q=张",
        "/customers/new",
        "/customers/accounts/AC1",
        "/customers/accounts/AC1/edit",
        "/customers/accounts/AC1/transfer",
        "/customers/accounts/AC1/rename",
        "/customers/accounts/AC1/usage-type",
    ):
        page = client.get(url)
        assert page.status_code == 200, url
        assert "customers." not in page.text, url
    assert ("变更记录" if lang == "zh" else "History of changes") in client.get("/customers/accounts/AC1").text


# -- changes --------------------------------------------------------------------------------------------
def history_of(client: ConsoleClient, account_no: str) -> str:
    return client.get(f"/customers/accounts/{account_no}").text.split('id="history"')[1]


def test_transfer_and_rename_appear_in_the_history_with_the_person(
    signed_in: Callable[[str], ConsoleClient], store: Store, data: dict[str, Any]
) -> None:
    clerk = signed_in("billing_clerk")
    response = clerk.post(
        "/customers/accounts/AC1/transfer",
        {
            "customer_mode": "new",
            "name": "赵六",
            "kind": "person",
            "phone": "13600000000",
            "household_size": "2",
            "reason": "房屋买卖",
        },
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/customers/accounts/AC1?done=transfer"
    supervisor = signed_in("supervisor")
    response = supervisor.post("/customers/accounts/AC1/rename", {"name": "赵六六", "reason": "身份证更名"})
    assert response.status_code == 303
    page = clerk.get("/customers/accounts/AC1")
    assert "赵六六" in page.text.split('id="customer-facts"')[1].split("</section>")[0]
    history = history_of(clerk, "AC1")
    transfer = history.split("entry-transfer")[1].split("</tr>")[0]
    assert "billing_clerk" in transfer and "房屋买卖" in transfer and "张三 (CU1)" in transfer
    rename = history.split("entry-rename")[1].split("</tr>")[0]
    assert "supervisor" in rename and "身份证更名" in rename and "赵六" in rename and "赵六六" in rename
    with store.connection() as conn:
        owner = conn.execute(
            "SELECT c.name FROM account a JOIN customer c ON c.id = a.customer_id WHERE a.account_no = 'AC1'"
        ).fetchone()
        former = conn.execute("SELECT name FROM customer WHERE customer_no = 'CU1'").fetchone()
    assert owner == ("赵六六",) and former == ("张三",)
    # The API tells the same story.
    entries = clerk.http.get("/api/v1/accounts/AC1").json()["history"]
    kinds = [(e["kind"], e["actor"], e["reason"]) for e in entries[:2]]
    assert kinds == [("rename", "supervisor", "身份证更名"), ("transfer", "billing_clerk", "房屋买卖")]
    change = next(c for c in entries[1]["changes"] if c["field"] == "customer_id")
    assert change["old_text"] == "张三 (CU1)"


def test_transfer_rename_and_edit_by_api(
    signed_in: Callable[[str], ConsoleClient], store: Store, data: dict[str, Any]
) -> None:
    client = signed_in("supervisor")
    headers = {"X-CSRF-Token": client.csrf}
    response = client.http.post(
        "/api/v1/accounts/AC1/transfer", json={"customer_no": "CU2", "reason": "继承"}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["account"]["customer"]["customer_no"] == "CU2"
    assert response.json()["detail"]["from"] == {"customer_no": "CU1", "name": "张三"}
    response = client.http.post(
        "/api/v1/accounts/AC1/rename", json={"name": "李四（已故）", "reason": "x"}, headers=headers
    )
    assert response.status_code == 200
    response = client.http.patch("/api/v1/accounts/AC1", json={"household_size": 6, "card_no": None}, headers=headers)
    assert response.status_code == 200 and sorted(response.json()["changed"]) == ["card_no", "household_size"]
    assert response.json()["account"]["card_no"] is None
    response = client.http.patch("/api/v1/accounts/AC1", json={"household_size": 6}, headers=headers)
    assert response.json()["action_id"] is None
    response = client.http.patch("/api/v1/accounts/AC1", json={"name": "x"}, headers=headers)
    assert response.status_code == 422  # names change by 更名 only
    entries = client.http.get("/api/v1/accounts/AC1").json()["history"]
    assert [e["kind"] for e in entries[:3]] == ["edit", "rename", "transfer"]


def test_edit_on_the_page(signed_in: Callable[[str], ConsoleClient], store: Store, data: dict[str, Any]) -> None:
    client = signed_in("billing_clerk")
    form = client.get("/customers/accounts/AC1/edit")
    assert 'value="13811112222"' in form.text
    values = {
        "community": "C1", "address": "幸福路 1 号 3-202", "card_no": "IC0001", "phone": "13811119999",
        "id_number": "11010519491231002X", "customer_address": "", "household_size": "5", "protected": "1",
        "note": "家中有制氧机",
    }  # fmt: skip
    response = client.post("/customers/accounts/AC1/edit", values)
    assert response.status_code == 303 and response.headers["location"].endswith("done=edit")
    history = history_of(client, "AC1").split("entry-edit")[1].split("</tr>")[0]
    assert "13811112222" in history and "13811119999" in history and "3-202" in history
    with store.connection() as conn:
        row = conn.execute("SELECT phone, household_size, protected, note FROM customer WHERE customer_no = 'CU1'")
        assert row.fetchone() == ("13811119999", 5, True, "家中有制氧机")
    before = snapshot(store)
    page = client.post("/customers/accounts/AC1/edit", {**values, "card_no": "IC0002"})
    assert page.status_code == 409 and "Card number: IC0002 is already in use." in page.text
    page = client.post("/customers/accounts/AC1/edit", {**values, "phone": "call me maybe"})
    assert page.status_code == 422 and "Phone: not a phone number." in page.text
    assert snapshot(store) == before


def test_change_usage_type(signed_in: Callable[[str], ConsoleClient], store: Store, data: dict[str, Any]) -> None:
    client = signed_in("billing_clerk")
    before = snapshot(store)
    page = client.post(
        "/customers/accounts/AC1/usage-type", {"usage_type": "COM", "effective_from": "2999-01-01", "reason": "开店"}
    )
    assert page.status_code == 422 and "Effective from: the date is after today." in page.text
    assert snapshot(store) == before
    response = client.post(
        "/customers/accounts/AC1/usage-type", {"usage_type": "COM", "effective_from": "2024-07-01", "reason": "开店"}
    )
    assert response.status_code == 303
    with store.connection() as conn:
        rows = conn.execute(
            """SELECT u.code, c.effective_from FROM account_usage_type_change c
                 JOIN usage_type u ON u.id = c.new_usage_type_id"""
        ).fetchall()
        meter = conn.execute(
            "SELECT u.code FROM meter m JOIN usage_type u ON u.id = m.usage_type_id WHERE m.meter_no = 'M00000001'"
        ).fetchone()
    assert rows == [("COM", date(2024, 7, 1))] and meter == ("COM",)
    entry = history_of(client, "AC1").split("entry-usage_type")[1].split("</tr>")[0]
    assert "2024-07-01" in entry and "开店" in entry and "商业 (COM)" in entry
    api = client.http.post(
        "/api/v1/accounts/AC1/usage-type",
        json={"usage_type": "COM", "effective_from": "2024-08-01", "reason": "x"},
        headers={"X-CSRF-Token": client.csrf},
    )
    assert api.status_code == 422 and api.json()["error"] == "same_usage_type"


def test_lock_and_unlock(signed_in: Callable[[str], ConsoleClient], store: Store, data: dict[str, Any]) -> None:
    client = signed_in("billing_clerk")
    before = snapshot(store)
    page = client.post("/customers/accounts/AC1/lock", {"reason": " "})
    assert page.status_code == 422 and "Reason: is required." in page.text
    assert snapshot(store) == before
    assert client.post("/customers/accounts/AC1/lock", {"reason": "窃气调查"}).status_code == 303
    page = client.get("/customers/accounts/AC1?done=lock")
    assert "The account is locked." in page.text and 'action="/customers/accounts/AC1/unlock"' in page.text
    assert (
        client.post(
            "/customers/accounts/AC1/transfer", {"customer_mode": "existing", "customer_no": "CU2", "reason": "x"}
        ).status_code
        == 409
    )
    response = client.http.post(
        "/api/v1/accounts/AC1/unlock", json={"reason": "调查结束"}, headers={"X-CSRF-Token": client.csrf}
    )
    assert response.status_code == 200 and response.json()["account"]["status"] == "active"
    response = client.http.post(
        "/api/v1/accounts/AC1/unlock", json={"reason": "again"}, headers={"X-CSRF-Token": client.csrf}
    )
    assert response.status_code == 409 and response.json()["error"] == "not_locked"
    history = history_of(client, "AC1")
    assert "窃气调查" in history.split("entry-lock")[1] and "调查结束" in history.split("entry-unlock")[1]


def test_closed_accounts_take_no_changes(
    signed_in: Callable[[str], ConsoleClient], store: Store, data: dict[str, Any]
) -> None:
    with store.transaction() as conn:
        conn.execute("UPDATE account SET status = 'closed', closed_on = current_date WHERE account_no = 'AC1'")
    client = signed_in("admin")
    before = snapshot(store)
    assert client.get("/customers/accounts/AC1").status_code == 200
    assert client.get("/customers/accounts/AC1/rename").status_code == 409
    page = client.post("/customers/accounts/AC1/rename", {"name": "x", "reason": "y"})
    assert page.status_code == 409 and "AC1 is closed" in page.text
    api = client.http.post("/api/v1/accounts/AC1/lock", json={"reason": "x"}, headers={"X-CSRF-Token": client.csrf})
    assert api.status_code == 409 and api.json()["error"] == "closed"
    assert snapshot(store) == before


# -- who may do what ------------------------------------------------------------------------------------
def test_a_cashier_cannot_change_accounts(
    signed_in: Callable[[str], ConsoleClient], store: Store, data: dict[str, Any]
) -> None:
    client = signed_in("cashier")
    before = snapshot(store)
    assert client.get("/customers/accounts/AC1/edit").status_code == 403
    assert client.post("/customers/accounts/AC1/edit", {"phone": "1", "household_size": "3"}).status_code == 403
    assert client.post("/customers/accounts/AC1/lock", {"reason": "x"}).status_code == 403
    assert (
        client.post(
            "/customers/new", {"customer_mode": "existing", "customer_no": "CU1", "usage_type": "RES"}
        ).status_code
        == 403
    )
    headers = {"X-CSRF-Token": client.csrf}
    assert client.http.patch("/api/v1/accounts/AC1", json={"phone": "1"}, headers=headers).status_code == 403
    assert (
        client.http.post("/api/v1/accounts/AC1/rename", json={"name": "x", "reason": "y"}, headers=headers).status_code
        == 403
    )
    assert snapshot(store) == before


def test_an_area_limited_user_sees_and_changes_only_their_areas(
    client_factory: Callable[[], ConsoleClient], store: Store, data: dict[str, Any]
) -> None:
    add_user(store, "clerk_a1", "billing_clerk", areas=[data["area_1"]])
    client = client_factory()
    assert client.login("clerk_a1").status_code == 303
    assert found(client.get("/customers?q=").text) == ["AC1"]
    assert found(client.get("/customers", params={"q": "李四"}).text) == []
    assert [i["account_no"] for i in client.http.get("/api/v1/customers").json()["items"]] == ["AC1"]
    before = snapshot(store)
    assert client.get("/customers/accounts/AC2").status_code == 403
    assert client.http.get("/api/v1/accounts/AC2").status_code == 403
    assert client.post("/customers/accounts/AC2/rename", {"name": "x", "reason": "y"}).status_code == 403
    assert client.post("/customers/accounts/AC2/lock", {"reason": "y"}).status_code == 403
    headers = {"X-CSRF-Token": client.csrf}
    assert client.http.patch("/api/v1/accounts/AC2", json={"phone": "1"}, headers=headers).status_code == 403
    # Nor may an account of theirs be moved into another area, or one opened there.
    assert client.post("/customers/accounts/AC1/edit", {"community": "C2", "household_size": "3"}).status_code == 403
    response = client.http.post(
        "/api/v1/accounts", json={"customer_no": "CU1", "usage_type": "RES", "community": "C2"}, headers=headers
    )
    assert response.status_code == 403
    assert "阳光花园" not in client.get("/customers/new").text
    assert snapshot(store) == before
    assert client.post("/customers/accounts/AC1/lock", {"reason": "本区锁定"}).status_code == 303
