"""Customers and accounts (客户与户号): search, opening an account (开户), the account page with the full
history of its changes, edits, transfer of ownership (过户), rename (更名), change of usage type (改用气性质),
locking and unlocking (锁定/解锁). Pages and the `/api/v1/customers`, `/api/v1/accounts` routes.

The work is done by `meterhub.accounts` (one transaction per action, the person named in the change
history). Viewing needs customers.view, changes customers.edit, locking customers.lock; a person limited
to areas sees and changes only accounts whose community lies in their areas.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal, NoReturn
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from billing.ledger import positions
from dashboards import i18n
from dashboards.security import Principal
from dashboards.web import (
    ActionError,
    Forbidden,
    FormData,
    language_of,
    note_object,
    redirect,
    render,
    require,
    settings_of,
    store_of,
)
from dashboards.web import (
    text as _t,
)
from meterhub import accounts, facilities
from meterhub.accounts import (
    AccountError,
    AccountView,
    ActionResult,
    Change,
    CustomerInput,
    HistoryEntry,
    OpenAccount,
)

router = APIRouter()

TAGS: list[Any] = ["customers"]
PAGE_SIZE = 50
DONE = ("open", "edit", "unchanged", "transfer", "rename", "usage_type", "lock", "unlock")
# Columns whose stored values are codes with a translation under customers.value.<column>.
CODED = ("status", "billing_mode", "kind", "valve_state")


# -- shared helpers -----------------------------------------------------------------------------------
def today_of(request: Request) -> dt.date:
    """Today in the utility's time zone."""
    return dt.datetime.now(ZoneInfo(settings_of(request).timezone)).date()


def account_url(account_no: str, suffix: str = "", **query: str) -> str:
    url = f"/customers/accounts/{quote(account_no, safe='')}{suffix}"
    return f"{url}?{urlencode(query)}" if query else url


def field_label(request: Request, field: str, table: str = "") -> str:
    """The name of a field or column in the request's language (the column itself when unknown)."""
    texts = i18n.catalogue()
    for key in (f"customers.field.{table}_{field}" if table else "", f"customers.field.{field}"):
        if key and key in texts:
            return _t(request, key)
    return field


def value_text(request: Request, change: Change, which: str) -> str:
    """An old or new value of the change history as a person reads it."""
    value = change.old if which == "old" else change.new
    named = change.old_text if which == "old" else change.new_text
    if named:
        return named
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return _t(request, "common.yes" if value else "common.no")
    if change.field in CODED:
        group = "meter_status" if change.table == "meter" and change.field == "status" else change.field
        key = f"customers.value.{group}.{value}"
        if key in i18n.catalogue():
            return _t(request, key)
    return str(value)


def message_of(request: Request, exc: AccountError) -> str:
    """A refusal in the request's language, led by the name of the field at fault."""
    key = f"customers.error.{exc.code}"
    text = _t(request, key, **{k: str(v) for k, v in exc.params.items()}) if key in i18n.catalogue() else exc.message
    return f"{field_label(request, exc.field)}: {text}" if exc.field else text


def api_refusal(exc: AccountError) -> NoReturn:
    """A refused service call as the API reports it: `{"error": code, "detail": "field: message"}`."""
    if exc.code == "area":
        raise Forbidden("area") from exc
    raise ActionError(exc.code, f"{exc.field}: {exc.message}" if exc.field else exc.message, exc.status) from exc


def page_refusal(request: Request, exc: AccountError) -> NoReturn:
    """A refusal that leaves no form to show again: the error page."""
    if exc.code == "area":
        raise Forbidden("area") from exc
    raise ActionError(exc.code, message_of(request, exc), exc.status) from exc




def _view(conn: psycopg.Connection[Any], user: Principal, account_no: str) -> AccountView:
    try:
        return accounts.get_account(conn, account_no, user.area_ids)
    except AccountError as exc:
        if exc.code == "area":
            raise Forbidden("area") from exc
        raise


def _position(conn: psycopg.Connection[Any], user: Principal, account_id: int, today: dt.date) -> dict[str, str] | None:
    """What the account owes (for people who see balances): exact decimal strings."""
    if not (user.can("billing.view") or user.can("billing.pay")):
        return None
    held = positions(conn, [account_id], today)[account_id]
    return {
        "total_due": f"{held.total_due:.2f}",
        "arrears": f"{held.arrears:.2f}",
        "credit": f"{held.credit:.2f}",
        "open_bills": str(len(held.open_bills)),
    }


def _choices(request: Request, conn: psycopg.Connection[Any], user: Principal) -> dict[str, Any]:
    """The options of the forms: communities within the user's areas, usage types, billing modes, kinds."""
    english = language_of(request) == "en"
    communities = accounts.communities(conn, user.area_ids)
    usage_types = accounts.usage_types(conn)
    return {
        "communities_options": [(code, f"{name} · {area}") for code, name, area in communities],
        "usage_options": [(code, name_en if english and name_en else name) for code, name, name_en in usage_types],
        "billing_modes": accounts.BILLING_MODES,
        "kinds": accounts.KINDS,
    }


def _customer_input(form: dict[str, str]) -> CustomerInput:
    return CustomerInput(
        name=form.get("name", ""),
        kind=form.get("kind", "person"),
        phone=form.get("phone", ""),
        id_number=form.get("id_number", ""),
        address=form.get("customer_address", ""),
        household_size=_whole(form.get("household_size", "3"), "household_size"),
        protected=form.get("protected") in ("1", "on", "true"),
        note=form.get("note", ""),
    )


def _whole(text: str, field: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise AccountError("bad_household", f"{field}: a whole number", field=field, status=422) from None


def _day(text: str, field: str) -> dt.date | None:
    text = text.strip()
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise AccountError("bad_date", f"{field}: a date YYYY-MM-DD", field=field, status=422) from None


# -- search ---------------------------------------------------------------------------------------------
@router.get("/customers", include_in_schema=False)
def customers_page(
    request: Request,
    user: Annotated[Principal, Depends(require("customers.view"))],
    q: str = "",
    by: str = "all",
    status: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
) -> Response:
    error = None
    result = None
    with store_of(request).connection() as conn:
        try:
            result = accounts.search(conn, q, by=by, status=status or None, areas=user.area_ids, page=page,
                                     size=PAGE_SIZE)
        except AccountError as exc:
            error = message_of(request, exc)
    query = {"q": q, "by": by, "status": status}
    return render(
        request,
        "customers/search.html",
        400 if error else 200,
        result=result,
        q=q,
        by=by,
        status=status,
        fields=accounts.SEARCH_FIELDS,
        statuses=accounts.STATUSES,
        prev_url=f"/customers?{urlencode({**query, 'page': page - 1})}" if page > 1 else None,
        next_url=f"/customers?{urlencode({**query, 'page': page + 1})}" if result and result.has_more else None,
        message_error=error,
        account_url=account_url,
    )


# -- 开户 ------------------------------------------------------------------------------------------------
def _open_form(request: Request, user: Principal, form: dict[str, str], status: int = 200, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        choices = _choices(request, conn, user)
    return render(request, "customers/open.html", status, form=form, **choices, **extra)


@router.get("/customers/new", include_in_schema=False)
def open_page(
    request: Request, user: Annotated[Principal, Depends(require("customers.edit"))], customer_no: str = ""
) -> Response:
    form = {
        "customer_mode": "existing" if customer_no else "new",
        "customer_no": customer_no,
        "kind": "person",
        "household_size": "3",
        "billing_mode": "postpaid",
        "opened_on": today_of(request).isoformat(),
    }
    return _open_form(request, user, form)


@router.post("/customers/new", include_in_schema=False)
def open_submit(
    request: Request, user: Annotated[Principal, Depends(require("customers.edit"))], form: FormData
) -> Response:
    existing = form.get("customer_mode") == "existing"
    try:
        new = OpenAccount(
            usage_type=form.get("usage_type", ""),
            community=form.get("community") or None,
            address=form.get("address", ""),
            account_no=form.get("account_no", ""),
            billing_mode=form.get("billing_mode", "postpaid"),
            card_no=form.get("card_no", ""),
            opened_on=_day(form.get("opened_on", ""), "opened_on"),
            customer_no=form.get("customer_no", "") if existing else "",
            customer=None if existing else _customer_input(form),
        )
        result = accounts.open_account(store_of(request), user.username, new, areas=user.area_ids,
                                       today=today_of(request))
    except AccountError as exc:
        note_object(request, "account", form.get("account_no") or None)
        if exc.code == "area":
            raise Forbidden("area") from exc
        return _open_form(request, user, form, exc.status, message_error=message_of(request, exc),
                          error_field=exc.field)
    note_object(request, "account", result.account_no)
    return redirect(account_url(result.account_no, done="open"))


# -- the account page -----------------------------------------------------------------------------------
def _account_page(request: Request, user: Principal, account_no: str, status: int = 200, **extra: Any) -> Response:
    today = today_of(request)
    with store_of(request).connection() as conn:
        try:
            view = _view(conn, user, account_no)
        except AccountError as exc:
            page_refusal(request, exc)
        entries = accounts.history(conn, view.id)
        position = _position(conn, user, view.id, today)
        fed_by = facilities.box_of_account(conn, view.account_no) if user.can("facilities.view") else None
    return render(
        request,
        "customers/account.html",
        status,
        a=view,
        entries=entries,
        position=position,
        label=lambda field, table="": field_label(request, field, table),
        show=lambda change, which: value_text(request, change, which),
        account_url=account_url,
        counter_url=f"/counter?{urlencode({'account_no': view.account_no})}",
        fed_by=fed_by,
        **extra,
    )


@router.get("/customers/accounts/{account_no}", include_in_schema=False)
def account_page(
    request: Request,
    account_no: str,
    user: Annotated[Principal, Depends(require("customers.view"))],
    done: str = "",
) -> Response:
    notice = _t(request, f"customers.done.{done}") if done in DONE else None
    return _account_page(request, user, account_no, message_ok=notice)


# -- the action forms -------------------------------------------------------------------------------------
# Each action has a page with its form (GET) and takes the form (POST): success redirects to the account
# page; a refusal shows the form again with the message, the field at fault marked and the input kept.
ACTIONS = {
    "edit": ("customers/edit.html", "customers.edit"),
    "transfer": ("customers/transfer.html", "customers.edit"),
    "rename": ("customers/rename.html", "customers.edit"),
    "usage-type": ("customers/usage_type.html", "customers.edit"),
}


def _action_form(
    request: Request,
    user: Principal,
    account_no: str,
    action: str,
    form: dict[str, str] | None = None,
    status: int = 200,
    **extra: Any,
) -> Response:
    with store_of(request).connection() as conn:
        try:
            view = _view(conn, user, account_no)
        except AccountError as exc:
            page_refusal(request, exc)
        choices = _choices(request, conn, user)
        position = _position(conn, user, view.id, today_of(request)) if action == "transfer" else None
    if view.status == "closed":
        page_refusal(request, AccountError("closed", "closed", status=409, account_no=view.account_no))
    if form is None:
        form = _defaults(view, action, today_of(request))
    return render(
        request,
        ACTIONS[action][0],
        status,
        a=view,
        form=form,
        position=position,
        account_url=account_url,
        **choices,
        **extra,
    )


def _defaults(view: AccountView, action: str, today: dt.date) -> dict[str, str]:
    if action == "edit":
        c = view.customer
        return {
            "address": view.address,
            "community": view.community or "",
            "card_no": view.card_no or "",
            "phone": c.phone,
            "id_number": c.id_number,
            "customer_address": c.address,
            "household_size": str(c.household_size),
            "protected": "1" if c.protected else "",
            "note": c.note,
        }
    if action == "transfer":
        return {"customer_mode": "new", "kind": "person", "household_size": "3"}
    if action == "rename":
        return {"name": view.customer.name}
    return {"usage_type": view.usage_type, "effective_from": today.isoformat()}


def _perform(request: Request, user: Principal, account_no: str, action: str, form: dict[str, str]) -> ActionResult:
    store = store_of(request)
    areas = user.area_ids
    if action == "edit":
        changes: dict[str, Any] = {k: form.get(k, "") for k in accounts.EDITABLE if k != "protected"}
        changes["household_size"] = _whole(changes["household_size"], "household_size")
        changes["protected"] = form.get("protected") in ("1", "on", "true")
        return accounts.edit_account(store, user.username, account_no, changes, areas=areas)
    if action == "transfer":
        existing = form.get("customer_mode") == "existing"
        return accounts.transfer_account(
            store,
            user.username,
            account_no,
            reason=form.get("reason", ""),
            to_customer_no=form.get("customer_no", "") if existing else "",
            new_customer=None if existing else _customer_input(form),
            areas=areas,
        )
    if action == "rename":
        return accounts.rename_customer(
            store, user.username, account_no, name=form.get("name", ""), reason=form.get("reason", ""), areas=areas
        )
    effective = _day(form.get("effective_from", ""), "effective_from")
    if effective is None:
        raise AccountError("required", "effective_from is required", field="effective_from", status=422)
    return accounts.change_usage_type(
        store,
        user.username,
        account_no,
        usage_type=form.get("usage_type", ""),
        effective_from=effective,
        reason=form.get("reason", ""),
        areas=areas,
        today=today_of(request),
    )


def _submit(request: Request, user: Principal, account_no: str, action: str, form: dict[str, str]) -> Response:
    note_object(request, "account", account_no)
    try:
        result = _perform(request, user, account_no, action, form)
    except AccountError as exc:
        if exc.code == "area" or exc.status == 404 or exc.code == "closed":
            page_refusal(request, exc)
        return _action_form(request, user, account_no, action, form, exc.status,
                            message_error=message_of(request, exc), error_field=exc.field)
    done = "unchanged" if result.action_id is None else result.kind
    return redirect(account_url(account_no, done=done))


@router.get("/customers/accounts/{account_no}/edit", include_in_schema=False)
def edit_page(
    request: Request, account_no: str, user: Annotated[Principal, Depends(require("customers.edit"))]
) -> Response:
    return _action_form(request, user, account_no, "edit")


@router.post("/customers/accounts/{account_no}/edit", include_in_schema=False)
def edit_submit(
    request: Request, account_no: str, user: Annotated[Principal, Depends(require("customers.edit"))], form: FormData
) -> Response:
    return _submit(request, user, account_no, "edit", form)


@router.get("/customers/accounts/{account_no}/transfer", include_in_schema=False)
def transfer_page(
    request: Request, account_no: str, user: Annotated[Principal, Depends(require("customers.edit"))]
) -> Response:
    return _action_form(request, user, account_no, "transfer")


@router.post("/customers/accounts/{account_no}/transfer", include_in_schema=False)
def transfer_submit(
    request: Request, account_no: str, user: Annotated[Principal, Depends(require("customers.edit"))], form: FormData
) -> Response:
    return _submit(request, user, account_no, "transfer", form)


@router.get("/customers/accounts/{account_no}/rename", include_in_schema=False)
def rename_page(
    request: Request, account_no: str, user: Annotated[Principal, Depends(require("customers.edit"))]
) -> Response:
    return _action_form(request, user, account_no, "rename")


@router.post("/customers/accounts/{account_no}/rename", include_in_schema=False)
def rename_submit(
    request: Request, account_no: str, user: Annotated[Principal, Depends(require("customers.edit"))], form: FormData
) -> Response:
    return _submit(request, user, account_no, "rename", form)


@router.get("/customers/accounts/{account_no}/usage-type", include_in_schema=False)
def usage_type_page(
    request: Request, account_no: str, user: Annotated[Principal, Depends(require("customers.edit"))]
) -> Response:
    return _action_form(request, user, account_no, "usage-type")


@router.post("/customers/accounts/{account_no}/usage-type", include_in_schema=False)
def usage_type_submit(
    request: Request, account_no: str, user: Annotated[Principal, Depends(require("customers.edit"))], form: FormData
) -> Response:
    return _submit(request, user, account_no, "usage-type", form)


def _set_lock(request: Request, user: Principal, account_no: str, form: dict[str, str], lock: bool) -> Response:
    note_object(request, "account", account_no)
    service = accounts.lock_account if lock else accounts.unlock_account
    try:
        result = service(store_of(request), user.username, account_no, reason=form.get("reason", ""),
                         areas=user.area_ids)
    except AccountError as exc:
        if exc.code == "area" or exc.status == 404:
            page_refusal(request, exc)
        return _account_page(request, user, account_no, exc.status, message_error=message_of(request, exc),
                             error_field=exc.field, lock_reason=form.get("reason", ""))
    return redirect(account_url(account_no, done=result.kind))


@router.post("/customers/accounts/{account_no}/lock", include_in_schema=False)
def lock_submit(
    request: Request, account_no: str, user: Annotated[Principal, Depends(require("customers.lock"))], form: FormData
) -> Response:
    return _set_lock(request, user, account_no, form, lock=True)


@router.post("/customers/accounts/{account_no}/unlock", include_in_schema=False)
def unlock_submit(
    request: Request, account_no: str, user: Annotated[Principal, Depends(require("customers.lock"))], form: FormData
) -> Response:
    return _set_lock(request, user, account_no, form, lock=False)


# -- API ------------------------------------------------------------------------------------------------
Kind = Literal["person", "organisation"]
BillingMode = Literal["postpaid", "prepaid_account", "prepaid_meter"]


class CustomerIn(BaseModel):
    """A new customer."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=accounts.MAX_NAME)
    kind: Kind = "person"
    phone: str = Field("", max_length=30)
    id_number: str = Field("", max_length=30, description="Identity number; a resident ID must have its check digit")
    address: str = Field("", max_length=accounts.MAX_ADDRESS, description="Contact address")
    household_size: int = Field(3, ge=1, le=99)
    protected: bool = Field(False, description="No remote shut-off (e.g. medical equipment at home)")
    note: str = Field("", max_length=accounts.MAX_NOTE)

    def service(self) -> CustomerInput:
        return CustomerInput(**self.model_dump())


class OpenAccountIn(BaseModel):
    """开户: give `customer_no` of an existing customer or `customer` for a new one."""

    model_config = ConfigDict(extra="forbid")
    customer_no: str = ""
    customer: CustomerIn | None = None
    account_no: str = Field("", description="Blank: a number is generated (nine digits and a check digit)")
    community: str | None = Field(None, description="Community code")
    address: str = Field("", max_length=accounts.MAX_ADDRESS, description="Supply address")
    usage_type: str = Field(description="Usage type code")
    billing_mode: BillingMode = "postpaid"
    card_no: str = ""
    opened_on: dt.date | None = Field(None, description="Default: today")


class AccountPatch(BaseModel):
    """The fields to change; fields left out stay as they are, `null` empties a text (and removes the card or,
    for people not limited to areas, the community)."""

    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(None, max_length=accounts.MAX_ADDRESS, description="Supply address")
    community: str | None = Field(None, description="Community code")
    card_no: str | None = None
    phone: str | None = Field(None, max_length=30)
    id_number: str | None = Field(None, max_length=30)
    customer_address: str | None = Field(None, max_length=accounts.MAX_ADDRESS, description="Contact address")
    household_size: int | None = Field(None, ge=1, le=99)
    protected: bool | None = None
    note: str | None = Field(None, max_length=accounts.MAX_NOTE)


class TransferIn(BaseModel):
    """过户 to an existing customer (`customer_no`) or a new one (`customer`)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=accounts.MAX_REASON)
    customer_no: str = ""
    customer: CustomerIn | None = None


class RenameIn(BaseModel):
    """更名 of the account's customer."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=accounts.MAX_NAME)
    reason: str = Field(min_length=1, max_length=accounts.MAX_REASON)


class UsageTypeIn(BaseModel):
    """改用气性质 from a date on (not after today, not inside a billed period)."""

    model_config = ConfigDict(extra="forbid")
    usage_type: str = Field(description="Usage type code")
    effective_from: dt.date
    reason: str = Field(min_length=1, max_length=accounts.MAX_REASON)


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=accounts.MAX_REASON)


class SearchItemOut(BaseModel):
    account_no: str
    status: str
    card_no: str | None
    customer_no: str
    name: str
    phone: str
    address: str
    community: str | None
    usage_type: str
    billing_mode: str


class SearchOut(BaseModel):
    items: list[SearchItemOut]
    page: int
    size: int
    has_more: bool


class CustomerOut(BaseModel):
    customer_no: str
    name: str
    kind: str
    phone: str
    id_number: str
    address: str
    household_size: int
    protected: bool
    note: str


class MeterOut(BaseModel):
    meter_no: str
    status: str
    valve_state: str
    usage_type: str | None = Field(description="The meter's own usage type code; null: the account's")
    install_date: dt.date | None
    last_seen_at: dt.datetime | None
    last_volume_m3: str | None


class ChangeOut(BaseModel):
    table: str
    row: str = Field(description="The customer or meter changed (empty for the account itself)")
    op: str = Field(description="insert, update or delete")
    field: str
    old: Any
    new: Any
    old_text: str | None = Field(description="The old value named, for ids (customer, community, usage type)")
    new_text: str | None


class HistoryOut(BaseModel):
    at: dt.datetime
    actor: str
    kind: str = Field(description="open, edit, transfer, rename, usage_type, lock, unlock; or insert, update, "
                      "delete for changes made outside the account services")
    reason: str
    effective_on: dt.date | None
    detail: dict[str, Any]
    changes: list[ChangeOut]


class AccountOut(BaseModel):
    account_no: str
    status: str
    billing_mode: str
    card_no: str | None
    address: str
    opened_on: dt.date
    closed_on: dt.date | None
    bill_disputed: bool
    community: str | None
    community_name: str | None
    area: str | None
    usage_type: str
    usage_type_name: str
    billed_until: dt.date | None = Field(description="End (exclusive) of the latest bill")
    customer: CustomerOut
    meters: list[MeterOut]
    other_accounts: list[str]
    group: dict[str, Any] | None = Field(description="关联用户: accounts paid together")
    position: dict[str, str] | None = Field(
        description="total_due, arrears, credit (exact decimals) for people who may see balances"
    )
    history: list[HistoryOut] | None = None


class ActionOut(BaseModel):
    account_no: str
    action_id: int | None = Field(description="null: nothing changed")
    kind: str
    changed: list[str]
    detail: dict[str, Any]
    account: AccountOut


def _account_out(
    view: AccountView, entries: list[HistoryEntry] | None, position: dict[str, str] | None
) -> AccountOut:
    c = view.customer
    return AccountOut(
        account_no=view.account_no,
        status=view.status,
        billing_mode=view.billing_mode,
        card_no=view.card_no,
        address=view.address,
        opened_on=view.opened_on,
        closed_on=view.closed_on,
        bill_disputed=view.bill_disputed,
        community=view.community,
        community_name=view.community_name,
        area=view.area_name,
        usage_type=view.usage_type,
        usage_type_name=view.usage_type_name,
        billed_until=view.billed_until,
        customer=CustomerOut(
            customer_no=c.customer_no,
            name=c.name,
            kind=c.kind,
            phone=c.phone,
            id_number=c.id_number,
            address=c.address,
            household_size=c.household_size,
            protected=c.protected,
            note=c.note,
        ),
        meters=[
            MeterOut(
                meter_no=m.meter_no,
                status=m.status,
                valve_state=m.valve_state,
                usage_type=m.usage_type,
                install_date=m.install_date,
                last_seen_at=m.last_seen_at,
                last_volume_m3=None if m.last_volume_m3 is None else str(Decimal(m.last_volume_m3)),
            )
            for m in view.meters
        ],
        other_accounts=view.other_accounts,
        group=None if view.group is None else {"name": view.group.name, "accounts": view.group.accounts},
        position=position,
        history=None
        if entries is None
        else [
            HistoryOut(
                at=e.at,
                actor=e.actor,
                kind=e.kind,
                reason=e.reason,
                effective_on=e.effective_on,
                detail=e.detail,
                changes=[
                    ChangeOut(table=ch.table, row=ch.row_label, op=ch.op, field=ch.field, old=ch.old, new=ch.new,
                              old_text=ch.old_text, new_text=ch.new_text)
                    for ch in e.changes
                ],
            )
            for e in entries
        ],
    )


def _load_out(request: Request, user: Principal, account_no: str, with_history: bool = True) -> AccountOut:
    with store_of(request).connection() as conn:
        try:
            view = _view(conn, user, account_no)
        except AccountError as exc:
            api_refusal(exc)
        entries = accounts.history(conn, view.id) if with_history else None
        position = _position(conn, user, view.id, today_of(request))
    return _account_out(view, entries, position)


def _action_out(request: Request, user: Principal, result: ActionResult) -> ActionOut:
    return ActionOut(
        account_no=result.account_no,
        action_id=result.action_id,
        kind=result.kind,
        changed=result.changed,
        detail=result.detail,
        account=_load_out(request, user, result.account_no, with_history=False),
    )


@router.get("/api/v1/customers", tags=TAGS, response_model=SearchOut)
def api_search(
    request: Request,
    user: Annotated[Principal, Depends(require("customers.view"))],
    q: str = "",
    by: Annotated[str, Query(description="all, " + ", ".join(accounts.SEARCH_FIELDS))] = "all",
    status: Annotated[str | None, Query(description=", ".join(accounts.STATUSES))] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    size: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE,
) -> SearchOut:
    """Accounts whose account, card, customer, phone or id number, customer name, address or community
    contains `q` (in one field with `by`), by account number; only accounts within the caller's areas."""
    with store_of(request).connection() as conn:
        try:
            found = accounts.search(conn, q, by=by, status=status, areas=user.area_ids, page=page, size=size)
        except AccountError as exc:
            api_refusal(exc)
    return SearchOut(
        items=[SearchItemOut(**vars(r)) for r in found.rows], page=found.page, size=found.size,
        has_more=found.has_more,
    )


@router.get("/api/v1/accounts/{account_no}", tags=TAGS, response_model=AccountOut)
def api_account(
    request: Request, account_no: str, user: Annotated[Principal, Depends(require("customers.view"))]
) -> AccountOut:
    """An account: its facts, customer, meters, balance (with billing.view or billing.pay) and the history
    of every change to it and its customer — who, when, which field, old → new, and why."""
    return _load_out(request, user, account_no)


@router.post("/api/v1/accounts", tags=TAGS, response_model=ActionOut, status_code=201)
def api_open(
    request: Request, body: OpenAccountIn, user: Annotated[Principal, Depends(require("customers.edit"))]
) -> Response:
    """开户: a new account for an existing or a new customer, in one transaction."""
    try:
        result = accounts.open_account(
            store_of(request),
            user.username,
            OpenAccount(
                usage_type=body.usage_type,
                community=body.community,
                address=body.address,
                account_no=body.account_no,
                billing_mode=body.billing_mode,
                card_no=body.card_no,
                opened_on=body.opened_on,
                customer_no=body.customer_no,
                customer=body.customer.service() if body.customer else None,
            ),
            areas=user.area_ids,
            today=today_of(request),
        )
    except AccountError as exc:
        api_refusal(exc)
    note_object(request, "account", result.account_no)
    out = _action_out(request, user, result)
    return JSONResponse(out.model_dump(mode="json"), status_code=201,
                        headers={"Location": f"/api/v1/accounts/{quote(result.account_no, safe='')}"})


def _api_action(request: Request, user: Principal, account_no: str, call: Any) -> ActionOut:
    note_object(request, "account", account_no)
    try:
        result = call()
    except AccountError as exc:
        api_refusal(exc)
    return _action_out(request, user, result)


@router.patch("/api/v1/accounts/{account_no}", tags=TAGS, response_model=ActionOut)
def api_edit(
    request: Request,
    account_no: str,
    body: AccountPatch,
    user: Annotated[Principal, Depends(require("customers.edit"))],
) -> ActionOut:
    """Change the account's address, community or card, and its customer's phone, id number, contact
    address, household size, protected flag or note. Unchanged values write nothing."""
    changes = body.model_dump(exclude_unset=True)
    return _api_action(
        request, user, account_no,
        lambda: accounts.edit_account(store_of(request), user.username, account_no, changes, areas=user.area_ids),
    )  # fmt: skip


@router.post("/api/v1/accounts/{account_no}/transfer", tags=TAGS, response_model=ActionOut)
def api_transfer(
    request: Request, account_no: str, body: TransferIn, user: Annotated[Principal, Depends(require("customers.edit"))]
) -> ActionOut:
    """过户: the account passes to another or a new customer; the former owner stays in its history. A bank
    withholding agreement of the account ends and the account leaves its payment group."""
    return _api_action(
        request, user, account_no,
        lambda: accounts.transfer_account(
            store_of(request), user.username, account_no, reason=body.reason, to_customer_no=body.customer_no,
            new_customer=body.customer.service() if body.customer else None, areas=user.area_ids,
        ),
    )  # fmt: skip


@router.post("/api/v1/accounts/{account_no}/rename", tags=TAGS, response_model=ActionOut)
def api_rename(
    request: Request, account_no: str, body: RenameIn, user: Annotated[Principal, Depends(require("customers.edit"))]
) -> ActionOut:
    """更名: the name of the account's customer, with a reason."""
    return _api_action(
        request, user, account_no,
        lambda: accounts.rename_customer(store_of(request), user.username, account_no, name=body.name,
                                         reason=body.reason, areas=user.area_ids),
    )  # fmt: skip


@router.post("/api/v1/accounts/{account_no}/usage-type", tags=TAGS, response_model=ActionOut)
def api_usage_type(
    request: Request,
    account_no: str,
    body: UsageTypeIn,
    user: Annotated[Principal, Depends(require("customers.edit"))],
) -> ActionOut:
    """改用气性质 from `effective_from` on: the account's usage type and that of its meters that carried the
    old one (meters with a type of their own keep it). Recorded with its date for billing."""
    return _api_action(
        request, user, account_no,
        lambda: accounts.change_usage_type(
            store_of(request), user.username, account_no, usage_type=body.usage_type,
            effective_from=body.effective_from, reason=body.reason, areas=user.area_ids, today=today_of(request),
        ),
    )  # fmt: skip


@router.post("/api/v1/accounts/{account_no}/lock", tags=TAGS, response_model=ActionOut)
def api_lock(
    request: Request, account_no: str, body: ReasonIn, user: Annotated[Principal, Depends(require("customers.lock"))]
) -> ActionOut:
    """用户锁定: an active account becomes locked, with a reason."""
    return _api_action(
        request, user, account_no,
        lambda: accounts.lock_account(store_of(request), user.username, account_no, reason=body.reason,
                                      areas=user.area_ids),
    )  # fmt: skip


@router.post("/api/v1/accounts/{account_no}/unlock", tags=TAGS, response_model=ActionOut)
def api_unlock(
    request: Request, account_no: str, body: ReasonIn, user: Annotated[Principal, Depends(require("customers.lock"))]
) -> ActionOut:
    """用户解锁: a locked account becomes active again, with a reason."""
    return _api_action(
        request, user, account_no,
        lambda: accounts.unlock_account(store_of(request), user.username, account_no, reason=body.reason,
                                        areas=user.area_ids),
    )  # fmt: skip
