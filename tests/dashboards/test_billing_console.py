"""The billing console: the counter (find, pay, receipts, reversals, waivers, batches), ledgers, bills, bill runs."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from billing.bill_run import run_bills
from billing.invoices import issue_range
from meterhub.store import Store
from tests.billing.ledger_helpers import billed
from tests.billing.store_helpers import account, approve, count, tiered, usage_type
from tests.dashboards.conftest import ConsoleClient, add_user

D = Decimal
FIXED_FEE = {"method": "fixed", "fixed_amount": "5.00"}  # 5.00 once per overdue bill, whatever today is


def api_post(client: ConsoleClient, url: str, body: dict[str, Any]) -> Any:
    return client.http.post(url, json=body, headers={"X-CSRF-Token": client.csrf})


def ledger_rows(store: Store) -> list[tuple[Any, ...]]:
    with store.connection() as conn:
        return conn.execute("SELECT id, account_id, entry_type, amount FROM ledger_entry ORDER BY id").fetchall()


def position(client: ConsoleClient, account_no: str) -> dict[str, Any]:
    response = client.http.get(f"/api/v1/accounts/{account_no}/position")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def receipt_no_of(response: Any) -> str:
    assert response.status_code == 303, response.text
    match = re.match(r"/counter/receipts/([^?]+)", response.headers["location"])
    assert match, response.headers["location"]
    return match.group(1)


@pytest.fixture
def owing(store: Store, users: dict[str, int]) -> dict[str, int]:
    """1001 (card CARD-9) billed 20.00 for January and 40.00 for February 2024, both overdue with a 5.00
    late fee each; 1002 owes 10.00 + 5.00; 1003 in another community owes 60.00 + 5.00."""
    return billed(
        store,
        {"1001": ["10", "20"], "1002": ["5"], "1003": ["30"]},
        rule=FIXED_FEE,
        community={"1003": "SOUTH"},
        cards={"1001": "CARD-9"},
    )


def test_find_by_card_shows_customer_open_bills_late_fees_and_related(
    signed_in: Callable[[str], ConsoleClient], owing: dict[str, int], store: Store
) -> None:
    with store.transaction() as conn:
        group = conn.execute("INSERT INTO account_group (name) VALUES ('family') RETURNING id").fetchone()
        assert group is not None
        for no in ("1001", "1002"):
            conn.execute("INSERT INTO account_group_member VALUES (%s, %s)", [group[0], owing[no]])
    cashier = signed_in("cashier")
    page = cashier.get("/counter?card_no=CARD-9")
    assert page.status_code == 200
    text = page.text
    assert "Customer 1001" in text and "CU-1001" in text
    assert re.search(r'id="due">70\.00<', text) and re.search(r'id="late-fees">10\.00<', text)
    assert re.search(r'id="credit">0\.00<', text)
    assert "2024-01" in text and "2024-02" in text
    assert 'name="card_no" value="CARD-9"' in text  # the payment is taken by card
    assert re.search(r'id="group-due">85\.00<', text)  # 70.00 + 15.00 of the related 1002
    assert cashier.get("/counter?card_no=NOPE").status_code == 404
    assert cashier.get("/counter?account_no=1001").status_code == 200
    assert signed_in("auditor").get("/counter?account_no=1001").status_code == 403  # no billing.pay


def test_part_of_the_arrears_paid_leaves_the_rest_exact_to_the_fen(
    signed_in: Callable[[str], ConsoleClient], owing: dict[str, int], store: Store
) -> None:
    cashier = signed_in("cashier")
    assert position(cashier, "1001")["due"] == "70.00"
    cashier.get("/counter?card_no=CARD-9")
    response = cashier.post("/counter/payments", {"card_no": "CARD-9", "amount": "25.01", "method": "wechat"})
    receipt_no = receipt_no_of(response)
    # January's fee 5.00 and principal 20.00 first, then 0.01 of February's fee
    after = position(cashier, "1001")
    assert (after["due"], after["late_fees"], after["credit"], after["principal_due"]) == (
        "44.99",
        "4.99",
        "0.00",
        "40.00",
    )
    assert [(b["period"], b["due"]) for b in after["bills"]] == [("2024-02", "44.99")]
    with store.connection() as conn:
        assert conn.execute("SELECT amount, method, card_no, actor FROM payment").fetchall() == [
            (D("25.01"), "wechat", "CARD-9", "cashier")
        ]
    receipt = cashier.get(f"/counter/receipts/{receipt_no}")
    assert receipt.status_code == 200 and "25.01" in receipt.text and "data-print" in receipt.text
    assert "WeChat Pay" in receipt.text and 'id="reprint-mark"' not in receipt.text
    counter = cashier.get("/counter?account_no=1001")
    assert re.search(r'id="due">44\.99<', counter.text) and receipt_no in counter.text
    ledger = cashier.http.get("/api/v1/accounts/1001/ledger").json()
    assert [(e["entry_type"], e["amount"]) for e in ledger["entries"]] == [
        ("charge", "20.00"),
        ("charge", "40.00"),
        ("late_fee", "5.00"),
        ("late_fee", "5.00"),
        ("payment", "-25.01"),
    ]
    assert ledger["entries"][-1]["balance"] == "44.99" and ledger["entries"][-1]["receipt_no"] == receipt_no
    page = cashier.get("/counter/accounts/1001/ledger")
    assert page.status_code == 200 and re.search(r'id="ledger-balance">44\.99<', page.text)
    # an overpayment is credit (预收), and more than two decimals is refused without writing anything
    overpaid = api_post(cashier, "/api/v1/payments", {"account_no": "1001", "amount": "50.00", "method": "cash"})
    assert overpaid.status_code == 201 and overpaid.json()["credit"] == "5.01"
    assert position(cashier, "1001")["balance"] == "-5.01"
    rows = len(ledger_rows(store))
    bad = api_post(cashier, "/api/v1/payments", {"account_no": "1001", "amount": "1.001"})
    assert bad.status_code == 422 and len(ledger_rows(store)) == rows
    cashier.get("/counter?account_no=1001")
    assert cashier.post("/counter/payments", {"account_no": "1001", "amount": "1.001"}).status_code == 400
    assert cashier.post("/counter/payments", {"account_no": "1001", "amount": "1", "method": "IOU"}).status_code == 400
    assert len(ledger_rows(store)) == rows


def test_receipt_reprint_is_recorded_and_marked(
    signed_in: Callable[[str], ConsoleClient], owing: dict[str, int], store: Store
) -> None:
    cashier = signed_in("cashier")
    cashier.get("/counter?account_no=1002")
    receipt_no = receipt_no_of(cashier.post("/counter/payments", {"account_no": "1002", "amount": "15.00"}))
    assert position(cashier, "1002")["due"] == "0.00"
    cashier.get(f"/counter/receipts/{receipt_no}")
    response = cashier.post(f"/counter/receipts/{receipt_no}/reprint")
    assert response.status_code == 303
    page = cashier.get(response.headers["location"])
    assert re.search(r'id="reprint-mark">重打 REPRINT 1<', page.text)
    with store.connection() as conn:
        prints = conn.execute("SELECT reprint, printed_by FROM receipt_print ORDER BY id").fetchall()
    assert prints == [(False, "cashier"), (True, "cashier")]
    again = api_post(cashier, f"/api/v1/receipts/{receipt_no}/reprint", {})
    assert again.status_code == 200 and (again.json()["print_count"], again.json()["reprint_mark"]) == (
        3,
        "重打 REPRINT 2",
    )


def test_a_payment_is_reversed_once_and_a_second_reversal_is_refused(
    signed_in: Callable[[str], ConsoleClient], owing: dict[str, int], store: Store
) -> None:
    cashier = signed_in("cashier")
    paid = api_post(cashier, "/api/v1/payments", {"account_no": "1003", "amount": "100.00"})
    assert paid.status_code == 201
    payment_id, receipt_no = paid.json()["payment_id"], paid.json()["receipt_no"]
    assert position(cashier, "1003")["balance"] == "-35.00"
    supervisor = signed_in("supervisor")
    supervisor.get(f"/counter/receipts/{receipt_no}")
    response = supervisor.post(f"/counter/payments/{payment_id}/reverse", {"reason": "wrong account"})
    assert response.status_code == 303
    assert position(supervisor, "1003")["due"] == "65.00"
    page = supervisor.get(response.headers["location"])
    assert 'id="reversed-mark"' in page.text and "wrong account" in page.text
    rows = ledger_rows(store)
    second = supervisor.post(f"/counter/payments/{payment_id}/reverse", {"reason": "again"})
    assert second.status_code == 409
    api_second = api_post(supervisor, f"/api/v1/payments/{payment_id}/reverse", {"reason": "again"})
    assert api_second.status_code == 409 and "already reversed" in api_second.json()["detail"]
    assert ledger_rows(store) == rows
    assert [r[2] for r in rows].count("reversal") == 2  # the payment entry and the prepayment entry


def test_a_cashier_cannot_reverse_and_the_ledger_is_unchanged(
    signed_in: Callable[[str], ConsoleClient], owing: dict[str, int], store: Store
) -> None:
    cashier = signed_in("cashier")
    paid = api_post(cashier, "/api/v1/payments", {"account_no": "1002", "amount": "15.00"}).json()
    rows = ledger_rows(store)
    page = cashier.get(f"/counter/receipts/{paid['receipt_no']}")
    assert "/reverse" not in page.text  # no reversal form for a cashier
    response = cashier.post(f"/counter/payments/{paid['payment_id']}/reverse", {"reason": "mine"})
    assert response.status_code == 403
    api = api_post(cashier, f"/api/v1/payments/{paid['payment_id']}/reverse", {"reason": "mine"})
    assert api.status_code == 403
    assert ledger_rows(store) == rows
    assert position(cashier, "1002")["due"] == "0.00"


def test_waivers_need_the_permission_and_a_reason(
    signed_in: Callable[[str], ConsoleClient], owing: dict[str, int], store: Store
) -> None:
    body = {"account_no": "1001", "period": "2024-01", "component": "late_fee", "amount": "5.00", "reason": "老人户"}
    cashier = signed_in("cashier")
    assert api_post(cashier, "/api/v1/waivers", body).status_code == 403
    supervisor = signed_in("supervisor")
    response = api_post(supervisor, "/api/v1/waivers", body)
    assert response.status_code == 201, response.text
    assert (response.json()["position"]["due"], response.json()["position"]["late_fees"]) == ("65.00", "5.00")
    too_much = api_post(supervisor, "/api/v1/waivers", {**body, "amount": "0.01"})
    assert too_much.status_code == 400  # nothing of January's late fee is left
    supervisor.get("/counter?account_no=1001")
    page = supervisor.post(
        "/counter/waivers",
        {"account_no": "1001", "period": "2024-02", "component": "principal", "amount": "10.00", "reason": "表具故障"},
    )
    assert page.status_code == 303 and "done=waived" in page.headers["location"]
    assert position(supervisor, "1001")["due"] == "55.00"
    with store.connection() as conn:
        assert conn.execute("SELECT component, amount, actor FROM waiver ORDER BY id").fetchall() == [
            ("late_fee", D("5.00"), "supervisor"),
            ("principal", D("10.00"), "supervisor"),
        ]


def test_related_accounts_pay_together_from_the_counter(
    signed_in: Callable[[str], ConsoleClient], owing: dict[str, int], store: Store
) -> None:
    with store.transaction() as conn:
        group = conn.execute("INSERT INTO account_group (name) VALUES ('family') RETURNING id").fetchone()
        assert group is not None
        for no in ("1001", "1002"):
            conn.execute("INSERT INTO account_group_member VALUES (%s, %s)", [group[0], owing[no]])
    cashier = signed_in("cashier")
    cashier.get("/counter?account_no=1002")
    receipt_no = receipt_no_of(cashier.post("/counter/related", {"account_no": "1002", "method": "transfer"}))
    assert [position(cashier, no)["due"] for no in ("1001", "1002", "1003")] == ["0.00", "0.00", "65.00"]
    receipt = cashier.http.get(f"/api/v1/receipts/{receipt_no}").json()
    assert (receipt["amount"], receipt["applied"], receipt["channel"]) == (
        "85.00",
        {"1001": "70.00", "1002": "15.00"},
        "group",
    )


def test_batch_payment_by_community_and_by_list(
    signed_in: Callable[[str], ConsoleClient], owing: dict[str, int], store: Store
) -> None:
    cashier = signed_in("cashier")
    preview = cashier.get("/counter/batch?community=C1")
    assert preview.status_code == 200 and re.search(r'id="batch-total">85\.00<', preview.text)
    response = cashier.post("/counter/batch", {"community": "C1", "method": "cash"})
    assert response.status_code == 303
    page = cashier.get(response.headers["location"])
    assert re.search(r'id="batch-accounts">2<', page.text) and re.search(r'id="batch-amount">85\.00<', page.text)
    assert [position(cashier, no)["due"] for no in ("1001", "1002", "1003")] == ["0.00", "0.00", "65.00"]
    again = cashier.post("/counter/batch", {"community": "C1"})
    assert again.status_code == 303 and "nothing=1" in again.headers["location"]
    refused = api_post(cashier, "/api/v1/payments/batch", {"account_nos": ["1003", "9999"]})
    assert refused.status_code == 400 and "9999" in refused.json()["detail"]
    assert position(cashier, "1003")["due"] == "65.00"  # nothing half-applied
    listed = api_post(cashier, "/api/v1/payments/batch", {"account_nos": ["1003"], "method": "transfer"})
    assert listed.status_code == 201 and (listed.json()["accounts"], listed.json()["amount"]) == (1, "65.00")
    with store.connection() as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT batch_id) FROM payment").fetchone() == (3, 2)


def test_an_invoice_is_issued_with_the_payment_when_the_cashier_holds_stock(
    signed_in: Callable[[str], ConsoleClient], owing: dict[str, int], store: Store
) -> None:
    cashier = signed_in("cashier")
    assert "You hold no invoice numbers" in cashier.get("/counter?account_no=1002").text
    issue_range(store, "cashier", 1, 10, "admin", prefix="GD")
    page = cashier.get("/counter?account_no=1002")
    assert 'name="invoice"' in page.text
    response = cashier.post("/counter/payments", {"account_no": "1002", "amount": "15.00", "invoice": "1"})
    receipt_no = receipt_no_of(response)
    receipt = cashier.get(f"/counter/receipts/{receipt_no}")
    assert re.search(r'id="invoice-no">GD00000001<', receipt.text)
    with store.connection() as conn:
        assert conn.execute("SELECT invoice_no, amount, cashier FROM invoice").fetchall() == [
            ("GD00000001", D("15.00"), "cashier")
        ]


def test_a_user_limited_to_other_areas_sees_nothing_of_the_account(
    client_factory: Callable[[], ConsoleClient], owing: dict[str, int], store: Store
) -> None:
    with store.transaction() as conn:
        other = conn.execute("INSERT INTO area (code, name) VALUES ('A9', 'Elsewhere') RETURNING id").fetchone()
        assert other is not None
    add_user(store, "far_cashier", "cashier", areas=[int(other[0])])
    client = client_factory()
    assert client.login("far_cashier").status_code == 303
    assert client.get("/counter?account_no=1001").status_code == 403
    assert client.http.get("/api/v1/accounts/1001/position").status_code == 403
    rows = len(ledger_rows(store))
    assert api_post(client, "/api/v1/payments", {"account_no": "1001", "amount": "1.00"}).status_code == 403
    assert len(ledger_rows(store)) == rows
    assert client.http.get("/api/v1/bills?period=2024-01").json()["total"] == 0


def tiered_bill(store: Store) -> int:
    """Account 2001 on the Beijing tiers (350 / 500 m3 a year) with 400 m3 approved for January 2024."""
    with store.transaction() as conn:
        usage_type(conn, "RES", tiered())
        acc, meter = account(conn, "2001")
        approve(conn, acc, meter, "2024-01", "400")
    return acc


def test_the_bill_page_shows_its_tiers_and_they_sum_to_the_total(
    signed_in: Callable[[str], ConsoleClient], store: Store
) -> None:
    tiered_bill(store)
    run_bills(store, "2024-01")  # issued today: open, due in 15 days
    auditor = signed_in("auditor")
    listing = auditor.get("/bills?period=2024-01")
    assert listing.status_code == 200 and re.search(r'id="bill-amount">1,065\.00<', listing.text)
    bill_id = int(re.findall(r'href="/bills/(\d+)"', listing.text)[0])
    page = auditor.get(f"/bills/{bill_id}")
    assert page.status_code == 200
    assert "Tier 1" in page.text and "Tier 2" in page.text
    amounts = [D(a.replace(",", "")) for a in re.findall(r'class="num line-amount">([^<]+)<', page.text)]
    assert amounts == [D("913.50"), D("151.50")]  # 350 x 2.61 and 50 x 3.03
    assert sum(amounts) == D("1065.00") and re.search(r'id="lines-total">1,065\.00<', page.text)
    api = auditor.http.get(f"/api/v1/bills/{bill_id}").json()
    assert [(line["tier_no"], line["volume_m3"], line["unit_price"], line["amount"]) for line in api["lines"]] == [
        (1, "350.000", "2.6100", "913.50"),
        (2, "50.000", "3.0300", "151.50"),
    ]
    assert sum(D(line["amount"]) for line in api["lines"]) == D(api["amount"])
    bills = auditor.http.get("/api/v1/bills", params={"period": "2024-01", "status": "open"}).json()
    assert (bills["total"], bills["amount"], bills["due"]) == (1, "1065.00", "1065.00")


def test_a_bill_run_from_the_page_and_a_rerun_writes_nothing(
    signed_in: Callable[[str], ConsoleClient], store: Store
) -> None:
    tiered_bill(store)
    assert signed_in("cashier").post("/bills/runs", {"period": "2024-01"}).status_code == 403
    clerk = signed_in("billing_clerk")
    clerk.get("/bills/runs")
    response = clerk.post("/bills/runs", {"period": "2024-01", "scope_kind": "all"})
    assert response.status_code == 303 and "done=created" in response.headers["location"]
    page = clerk.get(response.headers["location"])
    assert re.search(r'id="bills-created">1<', page.text) and re.search(r'id="run-amount">1,065\.00<', page.text)
    again = clerk.post("/bills/runs", {"period": "2024-01", "scope_kind": "area", "scope_code": "A1"})
    assert again.status_code == 303 and "nothing=1" in again.headers["location"]
    page = clerk.get(again.headers["location"])
    assert 'id="nothing-new"' in page.text and "Nothing new was written" in page.text
    assert "1 bills exist in this scope, 1,065.00 in total" in page.text
    assert (count(store, "bill"), count(store, "bill_run")) == (1, 1)
    api = api_post(clerk, "/api/v1/bill-runs", {"period": "2024-01", "scope": "account:2001"})
    assert api.status_code == 200 and (api.json()["run_id"], api.json()["bills"]) == (None, 1)
    runs = clerk.http.get("/api/v1/bill-runs").json()
    assert [(r["period"], r["bills_created"], r["amount"], r["started_by"]) for r in runs] == [
        ("2024-01", 1, "1065.00", "billing_clerk")
    ]
    assert api_post(clerk, "/api/v1/bill-runs", {"period": "2024-13"}).status_code == 422
