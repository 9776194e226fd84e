"""System settings in the console: company name and logo in every page's header, menu names and order that
the menu follows (and a reset), print templates with their preview and the counter's receipt on the form, and
the self-service kiosk: the right PIN, a wrong one, the lockout, and nothing without the PIN."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from billing.ledger import positions
from meterhub.store import Store
from tests.billing.ledger_helpers import billed
from tests.dashboards.conftest import ConsoleClient

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
FIXED_FEE = {"method": "fixed", "fixed_amount": "5.00"}


def nav_texts(html: str) -> list[str]:
    menu = html.split('<nav class="menu">')[1].split("</nav>")[0]
    return [text.strip() for text in re.findall(r">([^<]+)</a>", menu)]


def test_company_name_and_logo_show_in_every_header(signed_in: Callable[[str], ConsoleClient], store: Store) -> None:
    admin = signed_in("admin")
    assert admin.get("/settings").status_code == 200
    response = admin.post(
        "/settings/basic",
        {
            "company__name": "城东燃气有限公司",
            "company__hotline": "96777",
            "company__phone": "",
            "company__address": "",
        },
    )
    assert response.status_code == 303
    cashier = signed_in("cashier")
    page = cashier.get("/").text
    assert '<span id="brand-name">城东燃气有限公司</span>' in page and "· 城东燃气有限公司</title>" in page
    assert 'id="brand-logo"' not in page
    bad = admin.post("/settings/basic", {"company__name": "x" * 101})
    assert bad.status_code == 400
    assert admin.http.get("/api/v1/settings").json()["values"]["company.name"] == "城东燃气有限公司"
    admin.get("/settings")
    logo = admin.http.post(
        "/settings/logo",
        data={"csrf_token": admin.csrf},
        files={"logo": ("logo.png", PNG, "image/png")},
        follow_redirects=False,
    )
    assert logo.status_code == 303
    page = cashier.get("/").text
    src = re.search(r'<img src="(/settings/logo\?v=\d+)"', page)
    assert src is not None
    image = cashier.http.get(src.group(1))
    assert image.content == PNG and image.headers["content-type"] == "image/png"
    not_image = admin.http.post(
        "/settings/logo", data={"csrf_token": admin.csrf}, files={"logo": ("x.svg", b"<svg/>", "image/svg+xml")}
    )
    assert not_image.status_code == 400
    with store.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM audit_log WHERE action IN ('system_settings.save_basic', "
            "'system_settings.upload_logo')"
        ).fetchone()
    assert row is not None and row[0] == 4
    patched = admin.http.patch(
        "/api/v1/settings",
        headers={"X-CSRF-Token": admin.csrf},
        json={"values": {"company.phone": "0571-88001234", "kiosk.lockout_failures": 4}},
    )
    assert patched.json()["changed"] == ["company.phone", "kiosk.lockout_failures"]
    assert (
        admin.http.patch(
            "/api/v1/settings", headers={"X-CSRF-Token": admin.csrf}, json={"values": {"menu.order": "x"}}
        ).status_code
        == 400
    )
    assert cashier.get("/settings").status_code == 403


def test_menu_names_per_language_and_order_then_reset(signed_in: Callable[[str], ConsoleClient]) -> None:
    admin = signed_in("admin")
    admin.get("/settings/menu")
    form = {
        "zh__nav.customers": "用户档案",
        "en__nav.customers": "Clients",
        "order__nav.counter": "1",
        "en__customers.title": "Client files",
    }
    assert admin.post("/settings/menu", form).status_code == 303
    cashier = signed_in("cashier")
    english = nav_texts(cashier.get("/").text)
    assert english[:2] == ["Counter", "Home"] and "Clients" in english
    assert "<h1>Client files</h1>" in cashier.get("/customers").text
    cashier.post("/lang", {"lang": "zh", "next": "/"})
    chinese = nav_texts(cashier.get("/").text)
    assert chinese[0] == "收费" and "用户档案" in chinese
    menu = admin.http.get("/api/v1/settings/menu").json()
    assert menu["order"][0] == "nav.counter"
    assert admin.post("/settings/menu", {"order__nav.home": "first"}).status_code == 400
    assert admin.post("/settings/menu/reset").status_code == 303
    assert nav_texts(cashier.get("/").text)[:2] == ["首页", "客户"]
    put = admin.http.put(
        "/api/v1/settings/menu",
        headers={"X-CSRF-Token": admin.csrf},
        json={"order": ["nav.meters"], "labels": {"en": {"nav.meters": "Gas meters"}}},
    )
    assert put.status_code == 200
    cashier.post("/lang", {"lang": "en", "next": "/"})
    assert nav_texts(cashier.get("/").text)[:2] == ["Gas meters", "Home"]


def test_a_receipt_template_is_edited_and_previewed(signed_in: Callable[[str], ConsoleClient], store: Store) -> None:
    with store.transaction() as conn:
        conn.execute("SELECT meterhub_print_template_defaults()")
        row = conn.execute("SELECT id FROM print_template WHERE kind = 'receipt'").fetchone()
    assert row is not None
    template_id = row[0]
    admin = signed_in("admin")
    assert "收费收据 241×140" in admin.get("/settings/print-templates").text
    form = admin.get(f"/settings/print-templates/{template_id}").text
    assert 'name="receipt_no__x"' in form
    data = {
        "kind": "receipt",
        "name": "收据 241×93",
        "paper_width_mm": "241",
        "paper_height_mm": "93",
        "font_size_pt": "11",
        "printer_name": "EPSON LQ-630K",
        "receipt_no__on": "1",
        "receipt_no__x": "150",
        "receipt_no__y": "12.5",
        "receipt_no__w": "70",
        "amount__on": "1",
        "amount__x": "20",
        "amount__y": "40",
        "amount__w": "50",
        "amount__size": "14",
        "amount_words__on": "1",
        "amount_words__x": "80",
        "amount_words__y": "40",
        "amount_words__w": "120",
    }
    assert admin.post(f"/settings/print-templates/{template_id}", data).status_code == 303
    off_paper = admin.post(f"/settings/print-templates/{template_id}", {**data, "amount__y": "100"})
    assert off_paper.status_code == 400
    preview = admin.get(f"/settings/print-templates/{template_id}/preview").text
    css_url = re.search(r'<link rel="stylesheet" href="([^"]+print\.css[^"]*)">', preview)
    assert css_url is not None and "EPSON LQ-630K" in preview
    assert 'data-field="amount_words">贰佰陆拾捌元伍角整</div>' in preview
    assert "style=" not in preview and "<style" not in preview  # the CSP allows no inline styles
    css = admin.http.get(css_url.group(1))
    assert css.headers["content-type"].startswith("text/css")
    assert "@page { size: 241mm 93mm; margin: 0; }" in css.text
    assert ".f0 { left: 150mm; top: 12.5mm; width: 70mm; }" in css.text
    assert ".f1 { left: 20mm; top: 40mm; width: 50mm; font-size: 14pt; }" in css.text
    api = admin.http.get(f"/api/v1/print-templates/{template_id}").json()
    assert api["printer_name"] == "EPSON LQ-630K" and api["fields"][0] == {
        "field": "receipt_no",
        "x_mm": "150.0",
        "y_mm": "12.5",
        "width_mm": "70.0",
        "font_size_pt": None,
    }
    assert admin.get(f"/settings/print-templates/{template_id}/preview?receipt_no=NOPE").status_code == 404
    cashier = signed_in("cashier")
    assert cashier.get(f"/settings/print-templates/{template_id}").status_code == 403
    assert cashier.http.get(css_url.group(1)).status_code == 200


def test_the_counter_prints_a_real_receipt_on_the_default_template(
    signed_in: Callable[[str], ConsoleClient], store: Store
) -> None:
    billed(store, {"1001": ["10"]}, rule=FIXED_FEE)
    with store.transaction() as conn:
        conn.execute("SELECT meterhub_print_template_defaults()")
    cashier = signed_in("cashier")
    cashier.get("/counter?account_no=1001")
    paid = cashier.post("/counter/payments", {"account_no": "1001", "amount": "12.30", "method": "cash"})
    receipt_no = paid.headers["location"].split("/counter/receipts/")[1].split("?")[0]
    assert f"/counter/receipts/{receipt_no}/print" in cashier.get(f"/counter/receipts/{receipt_no}").text
    printed = cashier.get(f"/counter/receipts/{receipt_no}/print").text
    assert f'data-field="receipt_no">{receipt_no}</div>' in printed
    assert 'data-field="amount">12.30</div>' in printed and "壹拾贰元叁角整" in printed
    admin = signed_in("admin")
    found = re.search(r"/settings/print-templates/(\d+)/print\.css", printed)
    assert found is not None
    template_id = found.group(1)
    real = admin.get(f"/settings/print-templates/{template_id}/preview?receipt_no={receipt_no}").text
    assert 'data-field="amount">12.30</div>' in real


def kiosk_client(client_factory: Callable[[], ConsoleClient]) -> ConsoleClient:
    """A kiosk with no session: the page's GET sets the double-submit cookie its queries send back."""
    client = client_factory()
    client.get("/kiosk")
    assert client.http.cookies.get("mh_csrf")
    return client


def kiosk_api(client: ConsoleClient, account_no: str, pin: str) -> Any:
    return client.http.post(
        "/api/v1/kiosk/query",
        json={"account_no": account_no, "pin": pin},
        headers={"X-CSRF-Token": client.http.cookies.get("mh_csrf") or ""},
    )


def test_kiosk_right_pin_wrong_pin_and_lockout(
    signed_in: Callable[[str], ConsoleClient], client_factory: Callable[[], ConsoleClient], store: Store
) -> None:
    ids = billed(store, {"1001": ["10", "20"], "1002": ["5"]}, rule=FIXED_FEE)
    clerk = signed_in("billing_clerk")
    clerk.get("/settings/kiosk")
    assert clerk.post("/settings/kiosk/pins", {"account_no": "1001", "pin": "12"}).status_code == 400
    assert clerk.post("/settings/kiosk/pins", {"account_no": "1001", "pin": "2468"}).status_code == 303
    assert signed_in("cashier").post("/settings/kiosk/pins", {"account_no": "1002", "pin": "1111"}).status_code == 403
    assert "1001" in clerk.get("/settings/kiosk").text

    kiosk = kiosk_client(client_factory)
    assert kiosk.get("/kiosk").status_code == 200
    right = kiosk.post("/kiosk", {"account_no": "1001", "pin": "2468"})
    assert right.status_code == 200
    with store.connection() as conn:
        held = positions(conn, [ids["1001"]])[ids["1001"]]
    assert f'<dd id="kiosk-arrears">{held.arrears:,.2f}</dd>' in right.text
    assert held.total_due > 0 and f"{held.total_due:,.2f}" in right.text
    assert "CU-1001" not in right.text  # nothing beyond balance, arrears and readings
    api = kiosk_api(kiosk, "1001", "2468")
    assert api.status_code == 200 and Decimal(api.json()["arrears"]) == held.arrears
    assert set(api.json()) == {"account_no", "as_of", "total_due", "arrears", "credit", "readings"}

    wrong = kiosk.post("/kiosk", {"account_no": "1001", "pin": "0000"})
    assert wrong.status_code == 401 and "Wrong account number or PIN" in wrong.text
    assert kiosk_api(kiosk, "1002", "2468").status_code == 401  # no PIN set: the same answer
    no_token = kiosk.http.post("/api/v1/kiosk/query", json={"account_no": "1001", "pin": "2468"})
    assert no_token.status_code == 403 and no_token.headers["x-refused"] == "csrf"
    for _ in range(4):  # 5 wrong answers in all lock the account number
        kiosk_api(kiosk, "1001", "9999")
    locked = kiosk_api(kiosk, "1001", "2468")
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    assert kiosk.post("/kiosk", {"account_no": "1001", "pin": "2468"}).status_code == 403
    assert "locked" in clerk.get("/settings/kiosk").text
    # a new PIN ends the lockout
    clerk.get("/settings/kiosk")
    assert clerk.post("/settings/kiosk/pins", {"account_no": "1001", "pin": "13579"}).status_code == 303
    assert kiosk_api(kiosk, "1001", "13579").status_code == 200
    with store.connection() as conn:
        attempts = conn.execute("SELECT count(*) FILTER (WHERE ok), count(*) FROM kiosk_attempt").fetchone()
        logged = conn.execute("SELECT count(*) FROM audit_log WHERE actor = 'kiosk'").fetchone()
    assert attempts == (3, 11) and logged is not None and logged[0] == 11
    sheet = clerk.http.get("/settings/kiosk?format=xlsx")
    assert sheet.status_code == 200


def test_the_kiosk_can_be_switched_off(
    signed_in: Callable[[str], ConsoleClient], client_factory: Callable[[], ConsoleClient], store: Store
) -> None:
    billed(store, {"1001": ["10"]}, rule=FIXED_FEE)
    admin = signed_in("admin")
    admin.get("/settings")
    admin.post(
        "/settings/kiosk-limits",
        {
            "kiosk__lockout_failures": "5",
            "kiosk__lockout_min": "15",
            "kiosk__ip_failures": "20",
            "kiosk__readings": "6",
        },
    )
    kiosk = kiosk_client(client_factory)
    assert "switched off" in kiosk.get("/kiosk").text
    assert kiosk_api(kiosk, "1001", "1234").status_code == 404
