"""Invoices in the console and the API — stock (领用), voids (作废), reprints, a cashier's day and its settlement
(结账), reconciliation (核销) — and the payment guards behind them: idempotency keys, a settled day closed."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from billing.invoices import issue_range
from meterhub.store import Store
from tests.billing.ledger_helpers import billed
from tests.billing.store_helpers import count
from tests.dashboards.conftest import ConsoleClient, add_user
from tests.dashboards.test_billing_console import api_post, position, receipt_no_of

D = Decimal
FIXED_FEE = {"method": "fixed", "fixed_amount": "5.00"}
_KEY = re.compile(r'name="idempotency_key" value="([^"]+)"')


def form_key(page: Any) -> str:
    match = _KEY.search(page.text)
    assert match, "no idempotency key on the form"
    return match.group(1)


def rows(store: Store, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with store.connection() as conn:
        return conn.execute(sql, list(params)).fetchall()


def written(store: Store) -> tuple[int, ...]:
    """Everything a payment, an invoice, a void or a settlement writes."""
    tables = ("payment", "ledger_entry", "receipt", "invoice", "invoice_print", "cashier_settlement", "invoice_range")
    return tuple(count(store, table) for table in tables)


@pytest.fixture
def owing(store: Store, users: dict[str, int]) -> dict[str, int]:
    """1001 owes 20.00 + 40.00 and two 5.00 late fees; 1002 owes 10.00 + 5.00; 1003 (area A2) 60.00 + 5.00."""
    ids = billed(store, {"1001": ["10", "20"], "1002": ["5"], "1003": ["30"]}, rule=FIXED_FEE,
                 community={"1003": "SOUTH"})  # fmt: skip
    with store.transaction() as conn:  # SOUTH lies in another area
        area = conn.execute("INSERT INTO area (code, name) VALUES ('A2', 'South') RETURNING id").fetchone()
        assert area is not None
        conn.execute("UPDATE community SET area_id = %s WHERE code = 'SOUTH'", [area[0]])
    return ids


@pytest.fixture
def stocked(store: Store, owing: dict[str, int]) -> dict[str, int]:
    """The cashier holds invoice numbers GD00000001-GD00000010."""
    issue_range(store, "cashier", 1, 10, "admin", prefix="GD")
    return owing


# -- idempotency --------------------------------------------------------------------------------------
def test_a_double_click_on_the_counter_form_books_once(
    signed_in: Callable[[str], ConsoleClient], stocked: dict[str, int], store: Store
) -> None:
    cashier = signed_in("cashier")
    page = cashier.get("/counter?account_no=1002")
    key = form_key(page)
    assert form_key(cashier.get("/counter?account_no=1002")) != key  # a new key for every rendered form
    form = {"account_no": "1002", "amount": "15.00", "method": "cash", "invoice": "1", "idempotency_key": key}
    first = receipt_no_of(cashier.post("/counter/payments", form))
    second = receipt_no_of(cashier.post("/counter/payments", form))
    assert first == second
    assert rows(store, "SELECT amount, actor FROM payment") == [(D("15.00"), "cashier")]
    assert rows(store, "SELECT invoice_no, status FROM invoice") == [("GD00000001", "issued")]
    assert position(cashier, "1002")["due"] == "0.00"
    page = cashier.get(f"/counter/receipts/{second}")
    assert re.search(r'id="invoice-no">GD00000001<', page.text) and "invoice_error" not in page.text
    # the same form sent again with another amount (back button, edited) is refused, nothing booked
    before = written(store)
    refused = cashier.post("/counter/payments", {**form, "amount": "16.00"})
    assert refused.status_code == 409 and "a different request" in refused.text
    assert written(store) == before


def test_the_related_accounts_form_books_once_too(
    signed_in: Callable[[str], ConsoleClient], owing: dict[str, int], store: Store
) -> None:
    with store.transaction() as conn:
        group = conn.execute("INSERT INTO account_group (name) VALUES ('family') RETURNING id").fetchone()
        assert group is not None
        for no in ("1001", "1002"):
            conn.execute("INSERT INTO account_group_member VALUES (%s, %s)", [group[0], owing[no]])
    cashier = signed_in("cashier")
    page = cashier.get("/counter?account_no=1002")
    key = re.search(r'name="idempotency_key" value="(related-[^"]+)"', page.text)
    assert key, "no idempotency key on the related accounts form"
    form = {"account_no": "1002", "amount": "50.00", "method": "cash", "idempotency_key": key.group(1)}
    first, second = (receipt_no_of(cashier.post("/counter/related", form)) for _ in range(2))
    assert first == second
    assert rows(store, "SELECT amount, channel FROM payment") == [(D("50.00"), "group")]


def test_the_api_takes_an_idempotency_key_header(
    signed_in: Callable[[str], ConsoleClient], stocked: dict[str, int], store: Store
) -> None:
    cashier = signed_in("cashier")
    body = {"account_no": "1001", "amount": "25.01", "method": "wechat", "issue_invoice": True}
    headers = {"X-CSRF-Token": cashier.csrf, "Idempotency-Key": "kiosk-7"}
    first = cashier.http.post("/api/v1/payments", json=body, headers=headers)
    again = cashier.http.post("/api/v1/payments", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json() and first.json()["invoice_no"] == "GD00000001"
    assert first.json()["late_fees_posted"] == "10.00"
    before = written(store)
    other = cashier.http.post("/api/v1/payments", json={**body, "account_no": "1002"}, headers=headers)
    assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused"
    assert written(store) == before and position(cashier, "1001")["due"] == "44.99"
    # keys are the user's own: the supervisor's "kiosk-7" is another payment
    supervisor = signed_in("supervisor")
    theirs = supervisor.http.post("/api/v1/payments", json={**body, "issue_invoice": False},
                                  headers={"X-CSRF-Token": supervisor.csrf, "Idempotency-Key": "kiosk-7"})  # fmt: skip
    assert theirs.status_code == 201 and theirs.json()["payment_id"] != first.json()["payment_id"]
    # related and batch payments
    related = {"X-CSRF-Token": cashier.csrf, "Idempotency-Key": "rel-1"}
    paid = cashier.http.post("/api/v1/payments/related", json={"account_no": "1002"}, headers=related)
    repeat = cashier.http.post("/api/v1/payments/related", json={"account_no": "1002"}, headers=related)
    assert (paid.status_code, repeat.status_code) == (201, 200) and paid.json() == repeat.json()
    batch = {"X-CSRF-Token": cashier.csrf, "Idempotency-Key": "bat-1"}
    made = cashier.http.post("/api/v1/payments/batch", json={"community": "C1"}, headers=batch)
    retry = cashier.http.post("/api/v1/payments/batch", json={"community": "C1"}, headers=batch)
    assert (made.status_code, retry.status_code) == (201, 200) and made.json() == retry.json()
    assert count(store, "payment") == 4


def test_two_concurrent_api_requests_with_one_key_make_one_payment(
    signed_in: Callable[[str], ConsoleClient], owing: dict[str, int], store: Store
) -> None:
    clients = [signed_in("cashier"), signed_in("cashier")]  # two sessions of one cashier
    body = {"account_no": "1002", "amount": "15.00"}
    answers: list[Any] = []
    start = threading.Barrier(3)

    def send(client: ConsoleClient) -> None:
        start.wait()
        answers.append(
            client.http.post("/api/v1/payments", json=body, headers={"X-CSRF-Token": client.csrf,
                                                                      "Idempotency-Key": "same"})
        )  # fmt: skip

    with store.transaction() as holder:  # hold the account: both requests are under way before either books
        holder.execute("SELECT id FROM account WHERE id = %s FOR UPDATE", [owing["1002"]])
        threads = [threading.Thread(target=send, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        start.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            holder.execute("SELECT pg_stat_clear_snapshot()")
            waiting = holder.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()
            if waiting and waiting[0] >= 2:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the two requests did not both wait")
    for thread in threads:
        thread.join(30)
    assert sorted(a.status_code for a in answers) == [200, 201]
    assert answers[0].json()["receipt_no"] == answers[1].json()["receipt_no"]
    assert (count(store, "payment"), count(store, "receipt")) == (1, 1)
    assert position(clients[0], "1002")["due"] == "0.00"


# -- a settled day ------------------------------------------------------------------------------------
def test_after_settling_the_day_the_counter_takes_no_more_payments(
    signed_in: Callable[[str], ConsoleClient], stocked: dict[str, int], store: Store
) -> None:
    cashier = signed_in("cashier")
    paid = api_post(cashier, "/api/v1/payments", {"account_no": "1002", "amount": "15.00", "issue_invoice": True})
    assert paid.status_code == 201
    day = cashier.get("/invoices/day")
    assert day.status_code == 200 and 'id="settle"' in day.text
    assert re.search(r'id="day-payment-amount">15\.00<', day.text) and "GD00000001" in day.text
    response = cashier.post("/invoices/day/settle", {"cashier": "cashier", "day": re.search(
        r'name="day" value="([0-9-]+)"', day.text).group(1)})  # type: ignore[union-attr]  # fmt: skip
    assert response.status_code == 303 and "done=settled" in response.headers["location"]
    page = cashier.get(response.headers["location"])
    assert 'id="settled-badge"' in page.text and 'id="settle"' not in page.text
    before = written(store)
    cashier.get("/counter?account_no=1001")
    refused = cashier.post("/counter/payments", {"account_no": "1001", "amount": "5.00"})
    assert refused.status_code == 409 and "no more payments that day" in refused.text
    api = api_post(cashier, "/api/v1/payments", {"account_no": "1001", "amount": "5.00"})
    assert api.status_code == 409 and "settled" in api.json()["detail"]
    again = api_post(cashier, "/api/v1/invoices/settlements", {"day": page_day(page)})
    assert again.status_code == 409 and "already settled" in again.json()["detail"]
    supervisor = signed_in("supervisor")
    void = api_post(supervisor, "/api/v1/invoices/GD00000001/void", {"reason": "too late"})
    assert void.status_code == 409 and "no more voids" in void.json()["detail"]
    assert written(store) == before
    # another cashier's till is open; the supervisor pays from their own
    assert api_post(supervisor, "/api/v1/payments", {"account_no": "1001", "amount": "5.00"}).status_code == 201


def page_day(page: Any) -> str:
    match = re.search(r'name="day" value="([0-9-]+)"', page.text)
    assert match
    return match.group(1)


def test_who_may_settle_a_day(signed_in: Callable[[str], ConsoleClient], owing: dict[str, int], store: Store) -> None:
    auditor, cashier, supervisor = signed_in("auditor"), signed_in("cashier"), signed_in("supervisor")
    day = page_day(auditor.get("/invoices/day?cashier=cashier"))
    assert 'id="settle"' not in auditor.get("/invoices/day?cashier=cashier").text
    assert auditor.post("/invoices/day/settle", {"cashier": "cashier", "day": day}).status_code == 403
    add_user(store, "till2", "cashier")
    assert api_post(cashier, "/api/v1/invoices/settlements", {"cashier": "till2", "day": day}).status_code == 403
    assert count(store, "cashier_settlement") == 0
    future = api_post(cashier, "/api/v1/invoices/settlements", {"day": "2999-01-01"})
    assert future.status_code == 409 and "has not come yet" in future.json()["detail"]
    settled = api_post(supervisor, "/api/v1/invoices/settlements", {"cashier": "till2", "day": day})
    assert settled.status_code == 201 and settled.json()["settled_by"] == "supervisor"
    out = auditor.http.get("/api/v1/invoices/day", params={"cashier": "till2", "day": day}).json()
    assert out["settlement"]["totals"]["payment_amount"] == "0.00" and out["totals"]["payments"] == 0


# -- stock, voids, reprints ---------------------------------------------------------------------------
def test_a_supervisor_issues_a_range_and_a_cashier_cannot(
    signed_in: Callable[[str], ConsoleClient], owing: dict[str, int], store: Store
) -> None:
    cashier = signed_in("cashier")
    page = cashier.get("/invoices")
    assert page.status_code == 200 and 'id="no-stock"' in page.text and 'id="issue-range"' not in page.text
    before = written(store)
    form = {"cashier": "cashier", "first_no": "1", "last_no": "50", "prefix": "GD"}
    assert cashier.post("/invoices/ranges", form).status_code == 403
    assert api_post(cashier, "/api/v1/invoices/ranges", {**form, "first_no": 1, "last_no": 50}).status_code == 403
    assert written(store) == before
    supervisor = signed_in("supervisor")
    assert 'id="issue-range"' in supervisor.get("/invoices").text
    response = supervisor.post("/invoices/ranges", form)
    assert response.status_code == 303 and "done=issued" in response.headers["location"]
    listed = supervisor.get(response.headers["location"])
    assert "GD00000001 – GD00000050" in listed.text and re.search(r'id="left-cashier">50<', listed.text)
    overlap = api_post(supervisor, "/api/v1/invoices/ranges", {"cashier": "supervisor", "first_no": 40,
                                                                "last_no": 60, "prefix": "GD"})  # fmt: skip
    assert overlap.status_code == 409 and "overlap" in overlap.json()["detail"]
    other = api_post(supervisor, "/api/v1/invoices/ranges", {"cashier": "supervisor", "first_no": 51, "last_no": 60,
                                                              "prefix": "GD"})  # fmt: skip
    assert other.status_code == 201 and other.json()["next_invoice_no"] == "GD00000051"
    stock = signed_in("auditor").http.get("/api/v1/invoices/stock").json()
    assert [(r["cashier"], r["first_invoice_no"], r["left"]) for r in stock] == [
        ("cashier", "GD00000001", 50),
        ("supervisor", "GD00000051", 10),
    ]
    assert "GD00000001 – GD00000050" in cashier.get("/invoices").text  # the cashier's own stock


def test_a_cashier_cannot_void_and_a_supervisor_voids_with_a_reason(
    signed_in: Callable[[str], ConsoleClient], stocked: dict[str, int], store: Store
) -> None:
    cashier = signed_in("cashier")
    paid = api_post(cashier, "/api/v1/payments", {"account_no": "1002", "amount": "15.00", "issue_invoice": True})
    assert paid.json()["invoice_no"] == "GD00000001"
    page = cashier.get("/invoices/GD00000001")
    assert page.status_code == 200 and "/void" not in page.text  # no void form for a cashier
    before = (written(store), rows(store, "SELECT status, voided_by FROM invoice"))
    assert cashier.post("/invoices/GD00000001/void", {"reason": "mine"}).status_code == 403
    api = api_post(cashier, "/api/v1/invoices/GD00000001/void", {"reason": "mine"})
    assert api.status_code == 403 and api.json()["error"] == "permission"
    assert (written(store), rows(store, "SELECT status, voided_by FROM invoice")) == before
    supervisor = signed_in("supervisor")
    supervisor.get("/invoices/GD00000001")
    assert supervisor.post("/invoices/GD00000001/void", {"reason": " "}).status_code == 409  # a reason is needed
    response = supervisor.post("/invoices/GD00000001/void", {"reason": "开错抬头"})
    assert response.status_code == 303 and "done=voided" in response.headers["location"]
    page = supervisor.get(response.headers["location"])
    assert 'id="void-mark"' in page.text and re.search(r'id="void-reason">开错抬头<', page.text)
    assert rows(store, "SELECT status, voided_by, void_reason FROM invoice") == [("void", "supervisor", "开错抬头")]
    second = api_post(supervisor, "/api/v1/invoices/GD00000001/void", {"reason": "again"})
    assert second.status_code == 409 and "already void" in second.json()["detail"]
    # a new invoice for the payment takes the next number: a voided number is never used again
    receipt = paid.json()["receipt_no"]
    cashier.get(f"/counter/receipts/{receipt}")
    assert cashier.post(f"/counter/receipts/{receipt}/invoice").status_code == 303
    assert rows(store, "SELECT invoice_no, status FROM invoice ORDER BY id") == [
        ("GD00000001", "void"),
        ("GD00000002", "issued"),
    ]
    stock = cashier.http.get("/api/v1/invoices/stock", params={"cashier": "cashier"}).json()
    assert [(r["used"], r["voided"], r["left"]) for r in stock] == [(2, 1, 8)]


def test_a_reprint_is_recorded_and_marked(
    signed_in: Callable[[str], ConsoleClient], stocked: dict[str, int], store: Store
) -> None:
    cashier = signed_in("cashier")
    api_post(cashier, "/api/v1/payments", {"account_no": "1002", "amount": "15.00", "issue_invoice": True})
    page = cashier.get("/invoices/GD00000001")
    assert 'id="reprint-mark"' not in page.text and re.search(r'id="invoice-amount">15\.00<', page.text)
    response = cashier.post("/invoices/GD00000001/reprint")
    assert response.status_code == 303
    page = cashier.get(response.headers["location"])
    assert re.search(r'id="reprint-mark">重打 REPRINT 1<', page.text)
    again = api_post(cashier, "/api/v1/invoices/GD00000001/reprint", {})
    assert again.status_code == 200 and (again.json()["print_count"], again.json()["reprint_mark"]) == (
        3,
        "重打 REPRINT 2",
    )
    assert rows(store, "SELECT printed_by, reprint FROM invoice_print ORDER BY id") == [
        ("cashier", False),
        ("cashier", True),
        ("cashier", True),
    ]
    assert api_post(signed_in("auditor"), "/api/v1/invoices/GD00000001/reprint", {}).status_code == 403
    assert count(store, "invoice_print") == 3
    # after the payment is reversed (冲账) its invoice page says so, next to the void form
    supervisor = signed_in("supervisor")
    assert api_post(supervisor, "/api/v1/payments/1/reverse", {"reason": "wrong account"}).status_code == 201
    page = supervisor.get("/invoices/GD00000001")
    assert 'id="payment-reversed"' in page.text and "/invoices/GD00000001/void" in page.text


def test_invoices_outside_the_users_areas_are_neither_shown_nor_touched(
    client_factory: Callable[[], ConsoleClient],
    signed_in: Callable[[str], ConsoleClient],
    stocked: dict[str, int],
    store: Store,
) -> None:
    cashier = signed_in("cashier")
    for no in ("1002", "1003"):
        api_post(cashier, "/api/v1/payments", {"account_no": no, "amount": "1.00", "issue_invoice": True})
    with store.connection() as conn:
        north = conn.execute("SELECT id FROM area WHERE code = 'A1'").fetchone()
        assert north is not None
    add_user(store, "north_boss", "supervisor", areas=[int(north[0])])
    client = client_factory()
    assert client.login("north_boss").status_code == 303
    day = client.get("/invoices/day?cashier=cashier")
    assert "GD00000001" in day.text and "GD00000002" not in day.text  # 1003 lies in the south
    listed = client.http.get("/api/v1/invoices/day", params={"cashier": "cashier"}).json()
    assert [i["invoice_no"] for i in listed["invoices"]] == ["GD00000001"]
    assert client.get("/invoices/GD00000002").status_code == 403
    assert api_post(client, "/api/v1/invoices/GD00000002/void", {"reason": "x"}).status_code == 403
    assert rows(store, "SELECT invoice_no, status FROM invoice ORDER BY id") == [
        ("GD00000001", "issued"),
        ("GD00000002", "issued"),
    ]


# -- reconciliation -----------------------------------------------------------------------------------
def test_reconciliation_shows_differences_and_marks_only_clean_days(
    signed_in: Callable[[str], ConsoleClient], stocked: dict[str, int], store: Store
) -> None:
    cashier, supervisor = signed_in("cashier"), signed_in("supervisor")
    invoiced = api_post(cashier, "/api/v1/payments", {"account_no": "1002", "amount": "15.00", "issue_invoice": True})
    bare = api_post(cashier, "/api/v1/payments", {"account_no": "1001", "amount": "20.00"})  # no invoice for it
    assert api_post(supervisor, "/api/v1/payments", {"account_no": "1001", "amount": "1.00"}).status_code == 201
    today = page_day(cashier.get("/invoices/day"))
    for who, client in (("cashier", cashier), ("supervisor", supervisor)):
        assert api_post(client, "/api/v1/invoices/settlements", {"day": today}).status_code == 201, who
    page = supervisor.get("/invoices/reconcile")
    assert page.status_code == 200 and 'id="mark-reconciled"' not in page.text  # no day is clean
    section = page.text.split('id="differences-cashier-')[1].split("</section>")[0]
    assert bare.json()["receipt_no"] in section and invoiced.json()["receipt_no"] not in section
    assert 'id="differences-supervisor-' in page.text  # the supervisor's 1.00 has no invoice either
    checked = supervisor.http.get("/api/v1/invoices/reconciliation", params={"first_day": today, "last_day": today,
                                                                             "cashier": "cashier"}).json()  # fmt: skip
    assert [(r["ledger_amount"], r["invoice_amount"], r["clean"]) for r in checked] == [("35.00", "15.00", False)]
    assert [(d["kind"], d["receipt_no"], d["actual"], d["expected"]) for d in checked[0]["differences"]] == [
        ("payment", bare.json()["receipt_no"], "20.00", "0.00")
    ]
    # a day without differences: the admin settled with nothing taken
    assert api_post(supervisor, "/api/v1/invoices/settlements", {"cashier": "admin", "day": today}).status_code == 201
    page = supervisor.get("/invoices/reconcile")
    assert re.search(r'id="mark-reconciled">Mark 1 days', page.text)
    assert rows(store, "SELECT count(*) FROM cashier_settlement WHERE reconciled_at IS NOT NULL") == [(0,)]
    form = {"first_day": today, "last_day": today, "cashier": ""}
    assert 'id="mark-reconciled"' not in cashier.get("/invoices/reconcile").text
    assert cashier.post("/invoices/reconcile", form).status_code == 403
    body = {"first_day": today, "last_day": today}
    assert api_post(cashier, "/api/v1/invoices/reconciliation", body).status_code == 403
    assert rows(store, "SELECT count(*) FROM cashier_settlement WHERE reconciled_at IS NOT NULL") == [(0,)]
    response = supervisor.post("/invoices/reconcile", form)
    assert response.status_code == 303 and "done=reconciled" in response.headers["location"]
    assert rows(store, "SELECT cashier, reconciled_by FROM cashier_settlement WHERE reconciled_at IS NOT NULL") == [
        ("admin", "supervisor")
    ]
    again = api_post(supervisor, "/api/v1/invoices/reconciliation", body)
    assert again.status_code == 200
    assert [(r["cashier"], r["clean"], r["reconciled"]) for r in again.json()] == [
        ("admin", True, True),
        ("cashier", False, False),
        ("supervisor", False, False),
    ]
    assert 'id="reconciled-badge"' in supervisor.get(f"/invoices/day?cashier=admin&day={today}").text


def test_the_pages_read_in_chinese(signed_in: Callable[[str], ConsoleClient], stocked: dict[str, int]) -> None:
    cashier = signed_in("cashier")
    headers = {"Accept-Language": "zh-CN"}
    assert "发票库存" in cashier.get("/invoices", headers=headers).text
    day = cashier.get("/invoices/day", headers=headers).text
    assert "结账" in day and "当日汇总" in day
    assert "发票核销" in cashier.get("/invoices/reconcile", headers=headers).text
    assert 'href="/invoices"' in cashier.get("/counter").text  # the counter links to the invoice pages
