"""What every route of the console shares: the store, who is asking, permissions, CSRF, rendering.

Conventions for a route module in `dashboards/routes/`:

- it defines `router = APIRouter()`; the app includes every module of the package;
- pages are `include_in_schema=False` and render templates with `render()`; API routes live under
  `/api/v1/…` and return JSON (they appear in the OpenAPI document);
- every route but the few public ones depends on `require("<permission>")` (or `require()` for any
  signed-in user); for POST/PUT/PATCH/DELETE that dependency also checks the CSRF token of a session
  and records the request for the operation log; state never changes on GET;
- a refused service call becomes `ActionError` (a 4xx with a message) — pages show it, the API returns
  `{"error": code, "detail": message}`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import psycopg
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from dashboards import i18n, security
from dashboards.security import Principal
from meterhub import system_settings
from meterhub.settings import Settings
from meterhub.store import Store

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
LANG_COOKIE = "mh_lang"
ANON_CSRF_COOKIE = "mh_csrf"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REDACT = frozenset({"password", "new_password", "old_password", "password2", "csrf_token", "token"})

templates = Jinja2Templates(directory=str(TEMPLATES))


class NotAuthenticated(Exception):
    pass


class Forbidden(Exception):
    def __init__(self, reason: str = "forbidden") -> None:
        super().__init__(reason)
        self.reason = reason


class ActionError(Exception):
    """A refused action: shown on the page, or `{"error": code, "detail": message}` with `status`."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def client_ip(request: Request) -> str | None:
    """The peer's address (None when it is not an IP address, as in some test transports)."""
    host = request.client.host if request.client else None
    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        return None


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def principal_of(request: Request) -> Principal | None:
    """Who is asking (cached per request): a bearer token wins over a session cookie."""
    if "principal" in request.state._state:
        cached: Principal | None = request.state.principal
        return cached
    principal: Principal | None = None
    store = store_of(request)
    auth = request.headers.get("authorization", "")
    with store.transaction() as conn:
        if auth.lower().startswith("bearer "):
            principal = security.load_token(conn, auth[7:].strip())
        else:
            cookie = request.cookies.get(security.SESSION_COOKIE)
            if cookie:
                principal = security.load_session(conn, settings_of(request).console, cookie)
    request.state.principal = principal
    return principal


def language_of(request: Request) -> str:
    if "language" in request.state._state:
        cached: str = request.state.language
        return cached
    principal = request.state._state.get("principal")
    language = i18n.negotiate(
        request.cookies.get(LANG_COOKIE),
        principal.language if principal else None,
        request.headers.get("accept-language"),
    )
    request.state.language = language
    return language


def _redacted(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in REDACT or "password" in key:
            continue
        out[key] = value if isinstance(value, str | int | float | bool | None | list | dict) else str(value)
    return out


async def request_content(request: Request) -> dict[str, Any]:
    """The submitted fields of a state-changing request, for the operation log (secrets left out)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            return {"_body": "not JSON"}
        return _redacted(body) if isinstance(body, dict) else {"_body": body}
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        values: dict[str, Any] = {}
        for key, value in form.multi_items():
            if hasattr(value, "filename"):
                value = f"file:{value.filename}"
            if key in values:
                values[key] = [*values[key], value] if isinstance(values[key], list) else [values[key], value]
            else:
                values[key] = value
        return _redacted(values)
    return {}


async def _submitted_csrf(request: Request) -> str:
    header = request.headers.get("x-csrf-token")
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get("csrf_token")
        return value if isinstance(value, str) else ""
    return ""


def note_operation(request: Request, actor: str, **detail: Any) -> None:
    """Mark this request for the operation log (written by the app once the response is known)."""
    entry = request.state._state.setdefault("oplog", {"actor": actor, "detail": {}})
    entry["actor"] = actor
    entry["detail"].update(detail)


def note_object(request: Request, object_type: str, object_id: object) -> None:
    """Name the object a state-changing request acted on (shown and searchable in the operation log)."""
    entry = request.state._state.get("oplog")
    if entry is not None:
        entry["object"] = (object_type, None if object_id is None else str(object_id))


class Requirement:
    """The dependency behind `require()`: signed in, permitted, CSRF-checked; the permission is kept
    on the object so that tests can walk every route and know what it needs."""

    def __init__(self, permission: str | None) -> None:
        self.permission = permission

    async def __call__(self, request: Request) -> Principal:
        principal = principal_of(request)
        if principal is None:
            raise NotAuthenticated()
        unsafe = request.method in UNSAFE
        if unsafe:
            note_operation(request, principal.username, content=await request_content(request))
            if principal.via == "session":
                submitted = await _submitted_csrf(request)
                if not (principal.csrf_token and hmac.compare_digest(submitted, principal.csrf_token)):
                    raise Forbidden("csrf")
        if self.permission is not None and not principal.can(self.permission):
            raise Forbidden("permission")
        return principal

    def __repr__(self) -> str:
        return f"require({self.permission!r})"


def require(permission: str | None = None) -> Requirement:
    return Requirement(permission)


async def check_anonymous_csrf(request: Request) -> None:
    """Double-submit check for the forms that come before a session (login, language)."""
    principal = principal_of(request)
    submitted = await _submitted_csrf(request)
    expected = principal.csrf_token if principal and principal.via == "session" else None
    expected = expected or request.cookies.get(ANON_CSRF_COOKIE)
    if not (expected and submitted and hmac.compare_digest(submitted, expected)):
        raise Forbidden("csrf")


def anonymous_csrf_token(request: Request) -> str:
    token = request.cookies.get(ANON_CSRF_COOKIE)
    if not token:
        token = request.state._state.get("new_anon_csrf") or secrets.token_urlsafe(24)
        request.state.new_anon_csrf = token
    return token


def csrf_token(request: Request) -> str:
    principal = request.state._state.get("principal")
    if principal is not None and principal.csrf_token:
        token: str = principal.csrf_token
        return token
    return anonymous_csrf_token(request)


def text(request: Request, key: str, **values: Any) -> str:
    """A console text in the request's language (`t` in the templates)."""
    return i18n.translate(language_of(request), key, **values)


async def form_of(request: Request) -> dict[str, str]:
    """The submitted form's text fields (the request dependency has read and checked it already)."""
    form = await request.form()
    return {key: value for key, value in form.items() if isinstance(value, str) and key != "csrf_token"}


async def form_lists(request: Request) -> dict[str, list[str]]:
    """The submitted form's text fields with every value of a repeated field."""
    form = await request.form()
    out: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str) and key != "csrf_token":
            out.setdefault(key, []).append(value)
    return out


FormData = Annotated[dict[str, str], Depends(form_of)]
FormLists = Annotated[dict[str, list[str]], Depends(form_lists)]


# -- formatting -------------------------------------------------------------------------------------
def fmt_money(value: Decimal | int | float | str | None) -> str:
    if value is None:
        return ""
    return f"{Decimal(value):,.2f}"


def fmt_volume(value: Decimal | int | float | str | None, places: int = 3) -> str:
    if value is None:
        return ""
    return f"{Decimal(value):,.{places}f}"


def make_formatters(settings: Settings) -> dict[str, Callable[..., str]]:
    zone = ZoneInfo(settings.timezone)

    def fmt_dt(value: datetime | None, seconds: bool = False) -> str:
        if value is None:
            return ""
        local = value.astimezone(zone) if value.tzinfo else value
        return local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")

    def fmt_date(value: date | None) -> str:
        return value.isoformat() if value else ""

    return {"money": fmt_money, "volume": fmt_volume, "dt": fmt_dt, "date": fmt_date}


@dataclass(frozen=True)
class NavItem:
    key: str
    href: str
    permission: str | None


# The console's menu; a user sees the items their permissions allow.
NAV: list[NavItem] = [
    NavItem("nav.home", "/", None),
    NavItem("nav.customers", "/customers", "customers.view"),
    NavItem("nav.meters", "/meters", "meters.view"),
    NavItem("nav.commands", "/commands", "commands.view"),
    NavItem("nav.review", "/review", "readings.view"),
    NavItem("nav.counter", "/counter", "billing.pay"),
    NavItem("nav.bills", "/bills", "billing.view"),
    NavItem("nav.invoices", "/invoices", "billing.view"),
    NavItem("nav.masterdata", "/master", "masterdata.view"),
    NavItem("nav.facilities", "/facilities", "facilities.view"),
    NavItem("nav.warehouse", "/warehouse", "warehouse.view"),
    NavItem("nav.repairs", "/repairs", "repairs.view"),
    NavItem("nav.sms", "/sms", "sms.view"),
    NavItem("nav.office", "/office", None),
    NavItem("nav.settings", "/settings", "settings.edit"),
    NavItem("nav.admin", "/admin", "admin.users"),
    NavItem("nav.oplog", "/oplog", "oplog.view"),
    NavItem("nav.api", "/api", None),
]


def look_of(request: Request) -> system_settings.ConsoleLook:
    """The company name, logo and menu names and order from the system settings, read once per request
    (the shipped look when the store cannot answer, so that an error page still renders)."""
    cached = request.state._state.get("look")
    if cached is None:
        try:
            with store_of(request).connection() as conn:
                cached = system_settings.console_look(conn)
        except psycopg.Error:
            log.exception("system settings not readable; the page uses the shipped names")
            cached = system_settings.ConsoleLook()
        request.state.look = cached
    look: system_settings.ConsoleLook = cached
    return look


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    language = language_of(request)
    principal = request.state._state.get("principal")
    settings = settings_of(request)
    look = look_of(request)

    def t(key: str, **values: Any) -> str:
        custom = look.label(language, key)
        if custom is not None:
            return custom
        return i18n.translate(language, key, **values)

    allowed = [item for item in NAV if principal and (item.permission is None or principal.can(item.permission))]
    by_key = {item.key: item for item in allowed}
    nav = [by_key[key] for key in look.ordered([item.key for item in allowed])]
    response = templates.TemplateResponse(
        request,
        template,
        {
            "t": t,
            "lang": language,
            "user": principal,
            "csrf_token": csrf_token(request),
            "nav": nav,
            "path": request.url.path,
            "query": request.url.query,
            "fmt": make_formatters(settings),
            "look": look,
            **context,
        },
        status_code=status_code,
    )
    set_anonymous_csrf_cookie(request, response)
    return response


def set_anonymous_csrf_cookie(request: Request, response: Response) -> None:
    token = request.state._state.get("new_anon_csrf")
    if token:
        response.set_cookie(
            ANON_CSRF_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=settings_of(request).console.secure_cookies,
        )


def redirect(url: str, status_code: int = 303) -> RedirectResponse:
    return RedirectResponse(url, status_code=status_code)


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return redirect(f"/login?next={quote(target, safe='')}")


def safe_next(value: str | None) -> str:
    """Only local paths are followed after login or a language switch."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"
