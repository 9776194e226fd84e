"""Valve and credit commands in the console and the API: issue with the rule check first, idempotency,
permissions, bulk requests with a second person, cancel, refusals in words, area limits, live follow."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from collector.commands import record_replies
from meterhub.store import Store
from tests.dashboards.conftest import ConsoleClient, add_user
from tests.meterhub.factories import make_meter

_KEY = re.compile(r'name="idempotency_key" value="([^"]+)"')


@pytest.fixture
def meters(store: Store, users: dict[str, int]) -> list[dict[str, int]]:
    """Three installed meters, each in an area of its own (A1, A2, A3). Only the protected-customer rule is
    on, so that no test depends on the clock (weekends, disconnection hours)."""
    with store.transaction(actor="setup") as conn:
        made = [make_meter(conn, n) for n in (1, 2, 3)]
        conn.execute("UPDATE command_rule SET enabled = (code = 'protected_customer')")
    return made


def rows(store: Store, query: str = "SELECT id, state, requested_by FROM meter_command ORDER BY id") -> list[Any]:
    with store.connection() as conn:
        return conn.execute(query).fetchall()


def api_post(client: ConsoleClient, url: str, body: dict[str, Any], **headers: str) -> Any:
    return client.http.post(url, json=body, headers={"X-CSRF-Token": client.csrf, **headers})


def issue_close(client: ConsoleClient, meter_no: str = "M00000001", purpose: str = "other") -> Any:
    """Check the rules on the form page, then send with the form's own idempotency key."""
    page = client.get(f"/commands/new?meter_no={meter_no}&kind=valve_close&purpose={purpose}")
    assert page.status_code == 200, page.text
    key = _KEY.search(page.text)
    assert key is not None
    return client.post(
        "/commands/new",
        {"meter_no": meter_no, "kind": "valve_close", "purpose": purpose, "reason": "arrears 3 months",
         "idempotency_key": key.group(1)},
    )  # fmt: skip


def command_id(response: Any) -> int:
    assert response.status_code == 303, response.text
    match = re.fullmatch(r"/commands/(\d+)", response.headers["location"])
    assert match is not None
    return int(match.group(1))


def test_engineer_issues_a_close_and_sees_it_queued(
    signed_in: Callable[[str], ConsoleClient], store: Store, meters: Any
) -> None:
    engineer = signed_in("engineer")
    check = engineer.get("/commands/new?meter_no=M00000001&kind=valve_close&purpose=arrears")
    assert 'data-kind="valve_close"' in check.text and "allowed" in check.text
    assert 'method="post" action="/commands/new"' in check.text  # the send form is offered
    assert 'id="emergency"' in check.text  # engineers may close in an emergency: the separate button is there

    no_reason = engineer.post("/commands/new", {"meter_no": "M00000001", "kind": "valve_close", "reason": " "})
    assert no_reason.status_code == 400 and "Say why." in no_reason.text and rows(store) == []

    new_id = command_id(issue_close(engineer))
    assert rows(store) == [(new_id, "queued", "engineer")]
    page = engineer.get(f"/commands/{new_id}")
    assert page.status_code == 200
    assert "Queued" in page.text and "arrears 3 months" in page.text
    assert 'id="command-state" data-refresh="2"' in page.text and "data-final" not in page.text
    assert "command.request" in page.text  # the audit entry, naming the person
    listed = engineer.get("/commands?state=active")
    assert f'href="/commands/{new_id}"' in listed.text
    assert f'href="/commands/{new_id}"' not in engineer.get("/commands?state=failed").text
    assert "排队待发" in engineer.get(f"/commands/{new_id}", headers={"Accept-Language": "zh-CN"}).text

    api = engineer.http.get("/api/v1/commands", params={"state": "active", "meter_no": "M00000001"}).json()
    assert [(c["id"], c["state"], c["kind"]) for c in api["commands"]] == [(new_id, "queued", "valve_close")]


def test_one_idempotency_key_makes_one_command(
    signed_in: Callable[[str], ConsoleClient], store: Store, meters: Any
) -> None:
    engineer = signed_in("engineer")
    body = {"meter_no": "M00000002", "kind": "valve_open", "reason": "paid in full"}
    first = api_post(engineer, "/api/v1/commands", body, **{"Idempotency-Key": "kiosk-7"})
    again = api_post(engineer, "/api/v1/commands", body, **{"Idempotency-Key": "kiosk-7"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and first.json()["state"] == "queued"
    assert len(rows(store)) == 1
    other = api_post(engineer, "/api/v1/commands", {**body, "meter_no": "M00000003"}, **{"Idempotency-Key": "kiosk-7"})
    assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused"
    assert len(rows(store)) == 1

    # The console form carries its own key: a double click sends one command.
    page = engineer.get("/commands/new?meter_no=M00000001&kind=valve_close")
    form = {"meter_no": "M00000001", "kind": "valve_close", "purpose": "other", "reason": "works",
            "idempotency_key": _KEY.search(page.text).group(1)}  # type: ignore[union-attr]  # fmt: skip
    assert command_id(engineer.post("/commands/new", form)) == command_id(engineer.post("/commands/new", form))
    assert len(rows(store)) == 2


def test_billing_clerk_cannot_issue(signed_in: Callable[[str], ConsoleClient], store: Store, meters: Any) -> None:
    clerk = signed_in("billing_clerk")
    assert clerk.get("/commands").status_code == 200  # may look
    assert clerk.get("/commands/new?meter_no=M00000001").status_code == 403
    refused = clerk.post("/commands/new", {"meter_no": "M00000001", "kind": "valve_close", "reason": "arrears"})
    assert refused.status_code == 403
    api = api_post(clerk, "/api/v1/commands", {"meter_no": "M00000001", "kind": "valve_close", "reason": "arrears"})
    assert api.status_code == 403 and api.json()["error"] == "permission"
    emergency = api_post(clerk, "/api/v1/commands/emergency-close", {"meter_no": "M00000001", "reason": "gas"})
    assert emergency.status_code == 403
    assert rows(store) == []


def test_bulk_above_the_size_waits_for_a_second_person(
    signed_in: Callable[[str], ConsoleClient],
    client_factory: Callable[[], ConsoleClient],
    console_app: Any,
    store: Store,
    meters: Any,
) -> None:
    settings = console_app.state.settings
    console_app.state.settings = settings.model_copy(
        update={"commands": settings.commands.model_copy(update={"bulk_approval_size": 3})}
    )
    add_user(store, "carol", "supervisor")
    supervisor = signed_in("supervisor")
    form = {"kind": "valve_close", "purpose": "construction", "reason": "main replaced in the estate",
            "target": "list", "meter_list": "M00000001\nM00000002, M00000003"}  # fmt: skip
    preview = supervisor.post("/commands/bulk", {**form, "step": "check"})
    assert preview.status_code == 200 and "Meters: 3." in preview.text and "Needs approval" in preview.text
    unknown = supervisor.post("/commands/bulk", {**form, "meter_list": "M00000001 M99", "step": "send"})
    assert unknown.status_code == 400 and "M99" in unknown.text
    assert rows(store) == []  # checking and a bad list change nothing

    sent = supervisor.post("/commands/bulk", {**form, "step": "send"})
    assert sent.status_code == 303
    bulk_url = sent.headers["location"]
    bulk_id = int(bulk_url.rsplit("/", 1)[1])
    page = supervisor.get(bulk_url)
    assert "Awaiting approval" in page.text and 'id="own-request"' in page.text
    assert f'action="/commands/bulk/{bulk_id}/approve"' not in page.text
    assert [r[1] for r in rows(store)] == ["awaiting_approval"] * 3
    assert f"/commands/bulk/{bulk_id}" in supervisor.get("/commands?state=awaiting_approval").text

    own = supervisor.post(f"/commands/bulk/{bulk_id}/approve")
    assert own.status_code == 403 and "second person" in own.text
    own_api = api_post(supervisor, f"/api/v1/commands/bulk/{bulk_id}/approve", {})
    assert own_api.status_code == 403 and own_api.json()["error"] == "requester_cannot_approve"
    assert signed_in("engineer").post(f"/commands/bulk/{bulk_id}/approve").status_code == 403
    assert [r[1] for r in rows(store)] == ["awaiting_approval"] * 3

    carol = client_factory()
    carol.login("carol")
    assert f'action="/commands/bulk/{bulk_id}/approve"' in carol.get(bulk_url).text
    assert carol.post(f"/commands/bulk/{bulk_id}/approve").status_code == 303
    assert rows(store, "SELECT state, approved_by FROM meter_command") == [("queued", "carol")] * 3
    assert rows(store, "SELECT state, approved_by FROM command_bulk") == [("approved", "carol")]

    small_bulk = {"kind": "valve_open", "reason": "works done", "meter_nos": ["M00000001", "M00000002"]}
    small = api_post(supervisor, "/api/v1/commands/bulk", small_bulk)
    assert small.status_code == 201 and small.json()["state"] == "released"
    assert {c["state"] for c in small.json()["commands"]} == {"queued"}


def test_a_retried_bulk_request_files_once(
    signed_in: Callable[[str], ConsoleClient], store: Store, meters: Any
) -> None:
    """The same Idempotency-Key (a client retrying after a lost answer, a double click on the form) files
    one bulk request; the key reused for other meters is refused and files nothing."""
    supervisor = signed_in("supervisor")
    body = {"kind": "valve_open", "reason": "works done", "meter_nos": ["M00000001", "M00000002"]}
    first = api_post(supervisor, "/api/v1/commands/bulk", body, **{"Idempotency-Key": "reopen-1"})
    again = api_post(supervisor, "/api/v1/commands/bulk", body, **{"Idempotency-Key": "reopen-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    other = api_post(
        supervisor, "/api/v1/commands/bulk", {**body, "meter_nos": ["M00000001"]}, **{"Idempotency-Key": "reopen-1"}
    )
    assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused"
    assert rows(store, "SELECT count(*) FROM command_bulk") == [(1,)]
    assert rows(store, "SELECT count(*) FROM meter_command") == [(2,)]

    # The form carries its own key: sending the same page twice files one request.
    page = supervisor.get("/commands/bulk/new")
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page.text)
    assert key is not None
    form = {"kind": "valve_close", "purpose": "other", "reason": "estate works", "target": "list",
            "meter_list": "M00000001", "step": "send", "idempotency_key": key.group(1)}  # fmt: skip
    sent = [supervisor.post("/commands/bulk", form) for _ in range(2)]
    assert [r.status_code for r in sent] == [303, 303]
    assert sent[0].headers["location"] == sent[1].headers["location"]
    assert rows(store, "SELECT count(*) FROM command_bulk") == [(2,)]


def test_reject_a_bulk_request(
    signed_in: Callable[[str], ConsoleClient], console_app: Any, store: Store, meters: Any
) -> None:
    settings = console_app.state.settings
    console_app.state.settings = settings.model_copy(
        update={"commands": settings.commands.model_copy(update={"bulk_approval_size": 1})}
    )  # every bulk request waits
    supervisor, admin = signed_in("supervisor"), signed_in("admin")
    with store.connection() as conn:
        community = conn.execute("SELECT id FROM community WHERE code = 'C2'").fetchone()[0]  # type: ignore[index]
    body = {"kind": "valve_close", "reason": "estate works", "community_id": community}
    bulk = api_post(supervisor, "/api/v1/commands/bulk", body)
    assert bulk.status_code == 201 and bulk.json()["state"] == "awaiting_approval"
    assert [c["meter_no"] for c in bulk.json()["commands"]] == ["M00000002"]
    rejected = api_post(admin, f"/api/v1/commands/bulk/{bulk.json()['id']}/reject", {})
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
    assert rows(store, "SELECT state, reason_code FROM meter_command") == [("cancelled", "rejected")]
    command = rejected.json()["commands"][0]["id"]
    assert "The bulk request was rejected" in admin.get(f"/commands/{command}").text


def test_cancel_a_queued_command(signed_in: Callable[[str], ConsoleClient], store: Store, meters: Any) -> None:
    engineer = signed_in("engineer")
    new_id = command_id(issue_close(engineer))
    assert f'action="/commands/{new_id}/cancel"' in engineer.get(f"/commands/{new_id}").text
    assert engineer.post(f"/commands/{new_id}/cancel", {"reason": "customer paid at the counter"}).status_code == 303
    assert rows(store, "SELECT state, reason_code FROM meter_command") == [("cancelled", "cancelled_by_user")]
    page = engineer.get(f"/commands/{new_id}")
    assert "Cancelled by a person" in page.text and "data-final" in page.text
    assert f'action="/commands/{new_id}/cancel"' not in page.text
    again = api_post(engineer, f"/api/v1/commands/{new_id}/cancel", {"reason": "twice"})
    assert again.status_code == 409 and again.json()["error"] == "not_pending"
    assert signed_in("auditor").post(f"/commands/{new_id}/cancel", {"reason": "x"}).status_code == 403


def test_a_refused_command_shows_its_reason(
    signed_in: Callable[[str], ConsoleClient], store: Store, meters: Any
) -> None:
    with store.transaction(actor="setup") as conn:
        conn.execute("UPDATE customer SET protected = true WHERE id = %s", [meters[0]["customer"]])
    engineer = signed_in("engineer")
    check = engineer.get("/commands/new?meter_no=M00000001&kind=valve_close")
    assert 'id="refusal"' in check.text and "Protected customer" in check.text
    assert 'method="post" action="/commands/new"' not in check.text  # nothing to send
    assert "allowed" in check.text  # an open is still allowed
    api = engineer.http.get("/api/v1/commands/check", params={"meter_no": "M00000001", "kind": "valve_close"})
    assert api.json()["allowed"] is False and api.json()["reason_code"] == "protected_customer"

    sent = api_post(engineer, "/api/v1/commands", {"meter_no": "M00000001", "kind": "valve_close", "reason": "arrears"})
    assert sent.status_code == 201
    assert (sent.json()["state"], sent.json()["reason_code"]) == ("refused", "protected_customer")
    assert sent.json()["reason_text"].startswith("Protected customer")
    page = engineer.get(f"/commands/{sent.json()['id']}")
    assert "Refused" in page.text and "Protected customer (e.g. medical equipment at home)" in page.text
    assert "特殊保障用户" in engineer.get(f"/commands/{sent.json()['id']}", headers={"Accept-Language": "zh"}).text

    # An emergency close skips the rules, in one step.
    page = engineer.get("/commands/new?meter_no=M00000001")
    key = re.search(r'name="idempotency_key" value="(emergency-[^"]+)"', page.text)
    assert key is not None
    form = {"meter_no": "M00000001", "reason": "gas smell", "idempotency_key": key.group(1)}
    emergency = engineer.post("/commands/emergency", form)
    emergency_id = command_id(emergency)
    assert rows(store, f"SELECT state, emergency, purpose FROM meter_command WHERE id = {emergency_id}") == [
        ("queued", True, "emergency")
    ]


def test_area_limits(
    signed_in: Callable[[str], ConsoleClient],
    client_factory: Callable[[], ConsoleClient],
    store: Store,
    meters: Any,
) -> None:
    with store.connection() as conn:
        area1 = conn.execute("SELECT id FROM area WHERE code = 'A1'").fetchone()[0]  # type: ignore[index]
    elsewhere = command_id(issue_close(signed_in("engineer"), "M00000002"))
    add_user(store, "field1", "engineer", areas=[area1])
    field = client_factory()
    field.login("field1")
    field.get("/")

    assert field.get("/commands/new?meter_no=M00000002").status_code == 403
    page = field.get("/commands/new?meter_no=M00000002&kind=valve_close")
    assert page.status_code == 403 and "outside your areas" in page.text
    form = {"meter_no": "M00000002", "kind": "valve_close", "reason": "arrears", "idempotency_key": "f-1"}
    assert field.post("/commands/new", form).status_code == 403
    assert api_post(field, "/api/v1/commands", {"meter_no": "M00000002", "kind": "valve_close",
                                               "reason": "arrears"}).status_code == 403  # fmt: skip
    assert field.post("/commands/emergency", {**form, "reason": "gas smell"}).status_code == 403
    assert len(rows(store)) == 1
    assert field.get(f"/commands/{elsewhere}").status_code == 403
    assert field.http.get(f"/api/v1/commands/{elsewhere}").status_code == 403

    mine = command_id(issue_close(field, "M00000001"))
    listed = field.get("/commands")
    assert f'href="/commands/{mine}"' in listed.text and f'href="/commands/{elsewhere}"' not in listed.text
    api = field.http.get("/api/v1/commands").json()
    assert [c["id"] for c in api["commands"]] == [mine]
    everything = signed_in("auditor").http.get("/api/v1/commands").json()
    assert [c["id"] for c in everything["commands"]] == [mine, elsewhere]


def test_the_command_page_follows_the_command_until_it_is_confirmed(
    signed_in: Callable[[str], ConsoleClient], store: Store, meters: Any
) -> None:
    engineer = signed_in("engineer")
    new_id = command_id(issue_close(engineer))
    assert "data-final" not in engineer.get(f"/commands/{new_id}").text

    # The collector's dispatcher marks it sent, then the meter's reply arrives with the batch writer.
    with store.transaction(actor="collector") as conn:
        conn.execute(
            """UPDATE meter_command SET state = 'sent', sent_kind = 'valve_close', attempts = attempts + 1,
                      sent_at = now(), deadline_at = now() + interval '30 seconds', reason_code = NULL
                WHERE id = %s""",
            [new_id],
        )
    sent = engineer.get(f"/commands/{new_id}", headers={"X-Partial": "1"})
    assert "Sent" in sent.text and "waiting for the meter" in sent.text and "data-final" not in sent.text
    with store.transaction(actor="collector") as conn:
        row = conn.execute("SELECT meter_id, correlation_id FROM meter_command WHERE id = %s", [new_id]).fetchone()
        assert row is not None
        assert record_replies(conn, [(row[0], row[1], True, datetime.now(UTC), {"valve": "closed"})]) == 1

    page = engineer.get(f"/commands/{new_id}", headers={"X-Partial": "1"})
    block = page.text.split('id="command-state"', 1)[1].split("</section>", 1)[0]
    assert "data-final" in block.split(">", 1)[0]
    assert 'data-state="confirmed"' in block and "Confirmed" in block
    assert "valve" in block and "closed" in block  # the meter's reply
    detail = engineer.http.get(f"/api/v1/commands/{new_id}").json()
    assert (detail["state"], detail["final"], detail["attempts"]) == ("confirmed", True, 1)
    assert detail["reply"]["valve"] == "closed"
    assert f'href="/commands/{new_id}"' in engineer.get("/commands?state=done").text


def test_credit_and_every_page_renders(signed_in: Callable[[str], ConsoleClient], store: Store, meters: Any) -> None:
    with store.transaction(actor="setup") as conn:
        conn.execute("UPDATE meter SET prepaid = true WHERE meter_no = 'M00000003'")
    supervisor = signed_in("supervisor")
    bad = supervisor.get("/commands/new?meter_no=M00000003&kind=credit&amount=abc")
    assert bad.status_code == 200 and "at most 2 decimals" in bad.text
    assert 'method="post" action="/commands/new"' not in bad.text
    page = supervisor.get("/commands/new?meter_no=M00000003&kind=credit&amount=50.00&purpose=customer_request")
    form = {"meter_no": "M00000003", "kind": "credit", "purpose": "customer_request", "amount": "50.00",
            "reason": "counter top-up", "idempotency_key": _KEY.search(page.text).group(1)}  # type: ignore[union-attr]  # fmt: skip
    credit = command_id(supervisor.post("/commands/new", form))
    assert rows(store, "SELECT kind, amount::text, purchase_seq, state FROM meter_command") == [
        ("credit", "50.00", 1, "queued")
    ]
    assert signed_in("engineer").http.get(f"/api/v1/commands/{credit}").json()["amount"] == "50.00"
    not_prepaid = api_post(supervisor, "/api/v1/commands",
                           {"meter_no": "M00000001", "kind": "credit", "amount": "20", "reason": "kiosk"})  # fmt: skip
    assert not_prepaid.json()["reason_code"] == "not_prepaid_meter"
    no_amount = api_post(supervisor, "/api/v1/commands", {"meter_no": "M00000003", "kind": "credit", "reason": "x"})
    assert no_amount.status_code == 400 and no_amount.json()["error"] == "bad_amount"

    assert supervisor.get("/commands/new?meter_no=NOPE").status_code == 404
    assert supervisor.http.get("/api/v1/commands?state=bogus").status_code == 400
    for url in (
        "/commands",
        "/commands?state=awaiting_approval&kind=credit&requested_by=supervisor&date_from=2020-01-01&date_to=2099-12-31",
        "/commands?meter_no=M0000000",
        "/commands/new",
        "/commands/bulk",
        "/commands/bulk?state=approved",
        "/commands/bulk/new",
        f"/commands/{credit}",
    ):
        response = supervisor.get(url)
        assert response.status_code == 200, url
        assert "commands." not in response.text.replace("command.", ""), url  # no untranslated key
    listed = supervisor.get("/commands?kind=credit&requested_by=supervisor&date_from=2020-01-01")
    assert f'href="/commands/{credit}"' in listed.text
    assert f'href="/commands/{credit}"' not in supervisor.get("/commands?requested_by=engineer").text
    paths = supervisor.http.get("/api/v1/openapi.json").json()["paths"]
    assert {
        "/api/v1/commands",
        "/api/v1/commands/{command_id}",
        "/api/v1/commands/emergency-close",
        "/api/v1/commands/bulk",
        "/api/v1/commands/{command_id}/approve",
        "/api/v1/commands/{command_id}/cancel",
        "/api/v1/commands/bulk/{bulk_id}/approve",
        "/api/v1/commands/bulk/{bulk_id}/reject",
    } <= set(paths)
    assert not any(p.startswith("/commands") for p in paths)


def test_meter_scoped_command_endpoint_answers_202(
    signed_in: Callable[[str], ConsoleClient], store: Store, meters: Any
) -> None:
    engineer = signed_in("engineer")
    body = {"kind": "valve_close", "reason": "leak reported"}
    first = api_post(engineer, "/api/v1/meters/M00000001/commands", body, **{"Idempotency-Key": "gis-1"})
    again = api_post(engineer, "/api/v1/meters/M00000001/commands", body, **{"Idempotency-Key": "gis-1"})
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.json()["id"] == again.json()["id"] and first.json()["state"] == "queued"
    followed = engineer.http.get(f"/api/v1/commands/{first.json()['id']}").json()
    assert followed["state"] == "queued" and followed["meter_no"] == "M00000001"
    assert len(rows(store)) == 1
    clerk = signed_in("billing_clerk")
    assert api_post(clerk, "/api/v1/meters/M00000001/commands", body).status_code == 403
