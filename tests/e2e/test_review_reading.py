"""抄表审核 in the browser: a billing clerk finds the flagged readings of a period, looks at why a reading was
flagged and approves it, and the queue shows the decision (in Chinese too). The utility is the hand-made one
of tests/billing/review_helpers.py (period 2024-01; M00000003 jumps by 30 m³ on 2024-01-20: a spike)."""

from __future__ import annotations

import re
from decimal import Decimal

from playwright.sync_api import Page, expect

from billing.review_run import validate_period
from meterhub.store import Store
from tests.billing.review_helpers import NOW, PERIOD, approved, build_utility, review_ids
from tests.e2e.helpers import login, screenshot, submit, switch_language


def _status(store: Store, review_id: int) -> str:
    with store.connection() as conn:
        row = conn.execute("SELECT status FROM reading_review WHERE id = %s", [review_id]).fetchone()
    assert row is not None
    return str(row[0])


def test_a_clerk_approves_a_flagged_reading(page: Page, base_url: str, users: dict[str, int], store: Store) -> None:
    build_utility(store)
    validate_period(store, PERIOD, actor="clerk", now=NOW)
    spike = review_ids(store)["M00000003"]
    assert _status(store, spike) == "pending" and "M00000003" not in approved(store)

    login(page, base_url, "billing_clerk")
    page.locator("header nav.menu").get_by_role("link", name="Reading review").click()
    filter_form = page.locator("#queue-filter")
    filter_form.get_by_label("Period").fill(PERIOD)
    submit(page, filter_form.get_by_role("button", name="Search"))
    expect(page.locator("h1")).to_have_text(f"Reading review · {PERIOD}")
    expect(page.locator("#count-total")).to_have_text("5")
    flagged_before = int(page.locator("#count-flagged").inner_text())
    assert flagged_before >= 1

    page.locator("a.stat", has=page.locator("#count-flagged")).click()  # the "Flagged, pending" card
    expect(page.locator("#queue-filter input[name=flagged]")).to_be_checked()
    rows = page.locator("#queue tbody tr")
    expect(rows).to_have_count(flagged_before)
    expect(rows.filter(has_text="M00000002")).to_have_count(0)  # a clean reading is not among them
    row = page.locator(f"#row-{spike}")
    expect(row.locator("td.flags")).to_contain_text("Spike")
    expect(row.locator("td.flags .rule")).to_have_attribute("title", "spike")
    expect(row).to_contain_text("45.500")
    screenshot(page, "flagged-queue")

    row.get_by_role("link", name="M00000003").click()
    expect(page).to_have_url(re.compile(re.escape(f"{base_url}/review/{spike}?back=") + ".*flagged"))
    expect(page.locator("h1")).to_contain_text(f"M00000003 · {PERIOD}")
    expect(page.locator("#row-status")).to_have_text("pending")
    expect(page.locator("#consumption")).to_have_text("45.500 m³")
    expect(page.locator("#flags tbody tr").filter(has_text="spike").first).to_contain_text("Spike")
    screenshot(page, "flagged-row")

    accept = page.locator(f'form[action="/review/{spike}/accept"]')
    accept.get_by_label("Note (optional)").fill("register photo checked: the jump is real")
    submit(page, accept.get_by_role("button", name="Accept 45.500 m³"))
    expect(page).to_have_url(f"{base_url}/review/{spike}?ok=accepted&n=1")
    expect(page.locator("p.flash.ok")).to_have_text("Accepted.")
    expect(page.locator("#row-status")).to_have_text("accepted")
    expect(page.locator("#approved")).to_contain_text("45.500 m³")
    log = page.locator("#log tbody tr")
    expect(log).to_have_count(1)
    expect(log.first).to_contain_text("billing_clerk")
    expect(log.first).to_contain_text("register photo checked: the jump is real")
    expect(page.locator(f'form[action="/review/{spike}/accept"]')).to_have_count(0)  # decided: no second accept
    assert _status(store, spike) == "accepted"
    assert approved(store)["M00000003"] == (Decimal("45.500"), "automatic", 1)

    page.get_by_role("link", name="Back to the queue").click()
    expect(page).to_have_url(f"{base_url}/review?period={PERIOD}")
    decided = page.locator(f"#row-{spike}")
    expect(decided).to_contain_text("accepted")
    expect(decided).to_contain_text("45.500 · billing_clerk")
    expect(page.locator("#count-flagged")).to_have_text(str(flagged_before - 1))

    switch_language(page)
    expect(page.locator("h1")).to_have_text(f"抄表审核 · {PERIOD}")
    expect(page.locator(f"#row-{spike}")).to_contain_text("已通过")
    expect(page.locator(f"#row-{spike} td.flags")).to_contain_text("用量突增")
    screenshot(page, "queue-chinese")
