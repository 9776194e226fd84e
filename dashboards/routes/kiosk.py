"""Self-service kiosk (触摸屏查询): an account number and its PIN show the balance, the arrears and recent
readings, read-only, without signing in; staff with customers.edit set and remove PINs.

- `GET /kiosk` is the touch screen's page and `POST /kiosk` its query; `POST /api/v1/kiosk/query` answers
  the same as JSON for a kiosk program. No session is needed; like the sign-in form they take the
  double-submit CSRF token (cookie `mh_csrf` and field `csrf_token` or header `X-CSRF-Token` equal).
- Attempts are limited per account number and per address (`meterhub.kiosk`, limits in the system
  settings, kiosk.*); the answer is the same for an unknown number and a wrong PIN.
- `/settings/kiosk` (customers.edit): the accounts with a PIN, setting a new one (which also ends a lockout),
  removing one; `/api/v1/kiosk/pins/{account_no}` the same for programs.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Body, Depends, Form, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from billing.ledger import positions
from dashboards import i18n
from dashboards.export import table_response
from dashboards.security import Principal
from dashboards.web import (
    ActionError,
    check_anonymous_csrf,
    client_ip,
    note_object,
    note_operation,
    redirect,
    render,
    require,
    settings_of,
    store_of,
)
from dashboards.web import (
    text as _t,
)
from meterhub import kiosk
from meterhub import system_settings as ss
from meterhub.kiosk import KioskError, Limits

router = APIRouter()
PAGE_SIZE = 50


def _limits(conn: psycopg.Connection[Any]) -> tuple[bool, Limits, int]:
    values = ss.load(conn, ss.KIOSK_KEYS)
    limits = Limits(
        lockout_failures=int(values["kiosk.lockout_failures"]),
        lockout_min=int(values["kiosk.lockout_min"]),
        ip_failures=int(values["kiosk.ip_failures"]),
    )
    return bool(values["kiosk.enabled"]), limits, int(values["kiosk.readings"])


def _answer(request: Request, account_no: str, pin: str) -> tuple[str, dict[str, Any]]:
    """('ok' | 'wrong' | 'locked' | 'ip_blocked' | 'disabled', facts or {retry_after_s})."""
    today = dt.datetime.now(ZoneInfo(settings_of(request).timezone)).date()
    with store_of(request).transaction(actor="kiosk") as conn:
        enabled, limits, count = _limits(conn)
        if not enabled:
            return "disabled", {}
        result = kiosk.check(conn, limits, account_no, pin, client_ip(request))
        if not result.ok or result.account_id is None:
            return result.reason, {"retry_after_s": result.retry_after_s}
        held = positions(conn, [result.account_id], today)[result.account_id]
        readings = kiosk.recent_readings(conn, result.account_id, count)
        company = ss.load(conn, ("company.name", "company.hotline"))
    return "ok", {
        "account_no": account_no.strip(),
        "as_of": today,
        "total_due": held.total_due,
        "arrears": held.arrears,
        "credit": held.credit,
        "readings": readings,
        "company": company,
    }


def _note(request: Request, account_no: str, outcome: str) -> None:
    note_operation(request, "kiosk", outcome=outcome)
    note_object(request, "account", account_no.strip()[:64])


def _kiosk_page(request: Request, status: int = 200, **context: Any) -> Response:
    with store_of(request).connection() as conn:
        company = ss.load(conn, ("company.name", "company.hotline", "kiosk.enabled"))
    return render(request, "settings/kiosk.html", status, company=company, **context)


@router.get("/kiosk", include_in_schema=False)
def kiosk_page(request: Request) -> Response:
    return _kiosk_page(request)


@router.post("/kiosk", include_in_schema=False, dependencies=[Depends(check_anonymous_csrf)])
def kiosk_query(
    request: Request,
    account_no: Annotated[str, Form(max_length=64)],
    pin: Annotated[str, Form(max_length=64)],
) -> Response:
    outcome, facts = _answer(request, account_no, pin)
    _note(request, account_no, outcome)
    if outcome != "ok":
        minutes = max(1, (int(facts.get("retry_after_s", 0)) + 59) // 60)
        return _kiosk_page(
            request,
            403 if outcome in ("locked", "ip_blocked") else 401,
            message_error=_t(request, f"settings.kiosk.{outcome}", minutes=minutes),
            account_no=account_no,
        )
    return _kiosk_page(request, facts=facts)


class KioskQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account_no: str = Field(max_length=64, description="The account number (户号).")
    pin: str = Field(max_length=64, description="The account's kiosk PIN.")


@router.post(
    "/api/v1/kiosk/query",
    tags=["kiosk"],
    dependencies=[Depends(check_anonymous_csrf)],
    responses={401: {"description": "wrong account number or PIN"}, 429: {"description": "locked for a while"}},
)
def api_kiosk_query(request: Request, body: Annotated[KioskQuery, Body()]) -> Response:
    """Balance, arrears and recent readings of an account, for a self-service kiosk: no session, the account
    number and its PIN. Send the same random value as cookie `mh_csrf` and header `X-CSRF-Token`. Wrong
    answers are limited per account number and per address; a locked query answers 429 with Retry-After."""
    outcome, facts = _answer(request, body.account_no, body.pin)
    _note(request, body.account_no, outcome)
    if outcome == "disabled":
        return JSONResponse({"error": "disabled", "detail": "the kiosk query is switched off"}, 404)
    if outcome == "wrong":
        return JSONResponse({"error": "wrong", "detail": "wrong account number or PIN"}, 401)
    if outcome != "ok":
        retry = int(facts.get("retry_after_s", 60))
        return JSONResponse(
            {"error": outcome, "detail": "too many wrong answers; try later", "retry_after_s": retry},
            429,
            headers={"Retry-After": str(retry)},
        )
    return JSONResponse(
        {
            "account_no": facts["account_no"],
            "as_of": facts["as_of"].isoformat(),
            "total_due": f"{facts['total_due']:.2f}",
            "arrears": f"{facts['arrears']:.2f}",
            "credit": f"{facts['credit']:.2f}",
            "readings": [
                {"meter_no": r.meter_no, "ts": r.ts.isoformat(), "volume_m3": str(r.value)} for r in facts["readings"]
            ],
        }
    )


# -- staff: PINs ------------------------------------------------------------------------------------------
def _pins_page(request: Request, q: str, page: int, status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        _enabled, limits, _count = _limits(conn)
        rows = kiosk.pins(conn, limits, q, PAGE_SIZE + 1, (page - 1) * PAGE_SIZE)
    query = {"q": q}
    return render(
        request,
        "settings/kiosk_pins.html",
        status,
        rows=rows[:PAGE_SIZE],
        q=q,
        page=page,
        limits=limits,
        prev_url=f"/settings/kiosk?{urlencode({**query, 'page': page - 1})}" if page > 1 else None,
        next_url=f"/settings/kiosk?{urlencode({**query, 'page': page + 1})}" if len(rows) > PAGE_SIZE else None,
        export_url=f"/settings/kiosk?{urlencode({**query, 'format': 'xlsx'})}",
        **extra,
    )


@router.get("/settings/kiosk", include_in_schema=False)
def pins_page(
    request: Request,
    user: Annotated[Principal, Depends(require("customers.edit"))],
    q: Annotated[str, Query(max_length=64)] = "",
    page: Annotated[int, Query(ge=1)] = 1,
    format: Annotated[str, Query(pattern="^(html|xlsx|csv)$")] = "html",
    done: str = "",
) -> Response:
    if format != "html":
        with store_of(request).connection() as conn:
            _enabled, limits, _count = _limits(conn)
            rows = kiosk.pins(conn, limits, q, 200_000, 0)
        headers = [
            "settings.kiosk.account_no",
            "settings.kiosk.set_by",
            "settings.kiosk.set_at",
            "settings.kiosk.failures",
            "settings.kiosk.locked_state",
        ]
        return table_response(
            "kiosk_pins",
            [_t(request, h) for h in headers],
            [[r.account_no, r.set_by, r.set_at, r.failures, r.locked] for r in rows],
            format,
            timezone=settings_of(request).timezone,
        )
    notice = _t(request, f"settings.kiosk.done_{done}") if done in ("set", "removed") else None
    return _pins_page(request, q, page, message_ok=notice)


def _kiosk_refusal(request: Request, exc: KioskError) -> str:
    key = f"settings.kiosk.error_{exc.code}"
    return _t(request, key) if key in i18n.catalogue() else exc.message


@router.post("/settings/kiosk/pins", include_in_schema=False)
def set_pin(
    request: Request,
    user: Annotated[Principal, Depends(require("customers.edit"))],
    account_no: Annotated[str, Form(max_length=64)] = "",
    pin: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    note_object(request, "account", account_no.strip())
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            kiosk.set_pin(conn, account_no, pin, user.username)
    except KioskError as exc:
        return _pins_page(request, "", 1, exc.status, message_error=_kiosk_refusal(request, exc))
    return redirect("/settings/kiosk?done=set")


@router.post("/settings/kiosk/pins/{account_no}/delete", include_in_schema=False)
def remove_pin(
    request: Request, account_no: str, user: Annotated[Principal, Depends(require("customers.edit"))]
) -> Response:
    note_object(request, "account", account_no)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            kiosk.clear_pin(conn, account_no)
    except KioskError as exc:
        raise ActionError(exc.code, _kiosk_refusal(request, exc), exc.status) from exc
    return redirect("/settings/kiosk?done=removed")


class PinBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pin: str = Field(description="4 to 8 digits.")


@router.put("/api/v1/kiosk/pins/{account_no}", tags=["kiosk"])
def api_set_pin(
    request: Request,
    account_no: str,
    user: Annotated[Principal, Depends(require("customers.edit"))],
    body: Annotated[PinBody, Body()],
) -> dict[str, Any]:
    """Give an account a new kiosk PIN (only its hash is kept); this also ends a lockout of the account."""
    note_object(request, "account", account_no)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            kiosk.set_pin(conn, account_no, body.pin, user.username)
    except KioskError as exc:
        raise ActionError(exc.code, exc.message, exc.status) from exc
    return {"account_no": account_no, "pin_set": True}


@router.delete("/api/v1/kiosk/pins/{account_no}", tags=["kiosk"])
def api_remove_pin(
    request: Request, account_no: str, user: Annotated[Principal, Depends(require("customers.edit"))]
) -> dict[str, Any]:
    """Remove an account's kiosk PIN: the kiosk answers nothing for it any more."""
    note_object(request, "account", account_no)
    try:
        with store_of(request).transaction(actor=user.username) as conn:
            removed = kiosk.clear_pin(conn, account_no)
    except KioskError as exc:
        raise ActionError(exc.code, exc.message, exc.status) from exc
    return {"account_no": account_no, "removed": removed}


@router.get("/api/v1/kiosk/pins", tags=["kiosk"])
def api_pins(
    request: Request,
    user: Annotated[Principal, Depends(require("customers.edit"))],
    q: Annotated[str, Query(max_length=64)] = "",
    page: Annotated[int, Query(ge=1)] = 1,
) -> dict[str, Any]:
    """Accounts with a kiosk PIN, with the wrong answers counted in the current window and whether locked."""
    with store_of(request).connection() as conn:
        _enabled, limits, _count = _limits(conn)
        rows = kiosk.pins(conn, limits, q, PAGE_SIZE + 1, (page - 1) * PAGE_SIZE)
    return {
        "items": [
            {
                "account_no": r.account_no,
                "set_by": r.set_by,
                "set_at": r.set_at.isoformat(),
                "failures": r.failures,
                "locked": r.locked,
            }
            for r in rows[:PAGE_SIZE]
        ],
        "page": page,
        "has_more": len(rows) > PAGE_SIZE,
    }
