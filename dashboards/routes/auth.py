"""Signing in and out, the language switch, one's own sessions, password and API tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from dashboards import i18n, security
from dashboards.security import Principal
from dashboards.web import (
    LANG_COOKIE,
    ActionError,
    check_anonymous_csrf,
    client_ip,
    note_object,
    note_operation,
    principal_of,
    redirect,
    render,
    require,
    safe_next,
    settings_of,
    store_of,
)

router = APIRouter()


@router.get("/login", include_in_schema=False)
def login_page(request: Request, next: str = "/") -> Response:
    if principal_of(request) is not None:
        return redirect(safe_next(next))
    return render(request, "login.html", next=safe_next(next))


@router.post("/login", include_in_schema=False, dependencies=[Depends(check_anonymous_csrf)])
def login(
    request: Request,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form()] = "/",
) -> Response:
    settings = settings_of(request)
    store = store_of(request)
    ip = client_ip(request)
    with store.transaction() as conn:
        result = security.attempt_login(conn, settings.console, username.strip(), password, ip)
        token = None
        old = request.cookies.get(security.SESSION_COOKIE)
        if result.ok and result.user_id is not None:
            if old:  # a new session at every login; whatever the browser held before ends
                security.end_session(conn, security.token_key(old), "logout")
            token = security.create_session(conn, result.user_id, ip, request.headers.get("user-agent", ""))
    note_operation(request, username.strip()[:64] or "anonymous", outcome=result.reason)
    note_object(request, "staff_user", username.strip()[:64])
    if token is None:
        key = {"locked": "login.locked", "ip_blocked": "login.ip_blocked"}.get(result.reason, "login.failed")
        minutes = max(1, (result.retry_after_s + 59) // 60)
        return render(request, "login.html", 401, next=safe_next(next), error_key=key, minutes=minutes,
                      username=username)
    response = redirect(safe_next(next))
    response.set_cookie(
        security.SESSION_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=settings.console.secure_cookies,
        max_age=settings.console.session_max_h * 3600,
    )
    return response


def _clear_session(response: Response) -> Response:
    response.delete_cookie(security.SESSION_COOKIE)
    return response


@router.post("/logout", include_in_schema=False)
def logout(request: Request, user: Annotated[Principal, Depends(require())]) -> Response:
    if user.session_hash:
        with store_of(request).transaction() as conn:
            security.end_session(conn, user.session_hash, "logout")
    return _clear_session(redirect("/login"))


@router.post("/logout-all", include_in_schema=False)
def logout_everywhere(request: Request, user: Annotated[Principal, Depends(require())]) -> Response:
    with store_of(request).transaction() as conn:
        ended = security.end_sessions_of(conn, user.user_id, "logout_all")
    note_operation(request, user.username, sessions_ended=ended)
    return _clear_session(redirect("/login"))


@router.post("/lang", include_in_schema=False, dependencies=[Depends(check_anonymous_csrf)])
def switch_language(
    request: Request, lang: Annotated[str, Form()], next: Annotated[str, Form()] = "/"
) -> Response:
    if lang not in i18n.LANGUAGES:
        raise ActionError("language", f"unknown language {lang!r}")
    response = redirect(safe_next(next))
    response.set_cookie(LANG_COOKIE, lang, max_age=365 * 24 * 3600, samesite="lax",
                        secure=settings_of(request).console.secure_cookies)
    return response


# -- one's own account --------------------------------------------------------------------------------
def _my_sessions_and_tokens(request: Request, user: Principal) -> dict[str, Any]:
    with store_of(request).connection() as conn:
        sessions = conn.execute(
            """SELECT created_at, last_seen, host(ip), user_agent, token_hash = %s AS current
                 FROM web_session WHERE user_id = %s AND ended_at IS NULL ORDER BY created_at DESC""",
            [user.session_hash, user.user_id],
        ).fetchall()
        tokens = conn.execute(
            """SELECT id, name, prefix, created_at, expires_at, last_used_at, revoked_at
                 FROM api_token WHERE user_id = %s ORDER BY id DESC""",
            [user.user_id],
        ).fetchall()
    return {"sessions": sessions, "tokens": tokens}


@router.get("/me", include_in_schema=False)
def my_account(request: Request, user: Annotated[Principal, Depends(require())]) -> Response:
    return render(request, "me.html", **_my_sessions_and_tokens(request, user))


@router.post("/me/password", include_in_schema=False)
def change_password(
    request: Request,
    user: Annotated[Principal, Depends(require())],
    old_password: Annotated[str, Form()],
    new_password: Annotated[str, Form()],
    new_password2: Annotated[str, Form()],
) -> Response:
    store = store_of(request)
    with store.transaction() as conn:
        row = conn.execute("SELECT password_hash FROM staff_user WHERE id = %s", [user.user_id]).fetchone()
        if not security.verify_password(row[0] if row else None, old_password):
            raise ActionError("wrong_password", "the current password is wrong", 400)
        if new_password != new_password2:
            raise ActionError("mismatch", "the two new passwords differ", 400)
        try:
            security.set_password(conn, user.user_id, new_password, end_sessions=True)
        except ValueError as exc:
            raise ActionError("weak_password", str(exc)) from None
    note_object(request, "staff_user", user.username)
    return _clear_session(redirect("/login"))


@router.post("/me/tokens", include_in_schema=False)
def create_my_token(
    request: Request,
    user: Annotated[Principal, Depends(require("admin.tokens"))],
    name: Annotated[str, Form(min_length=1, max_length=100)],
    days: Annotated[int, Form(ge=0, le=3650)] = 365,
) -> Response:
    expires = datetime.now(UTC) + timedelta(days=days) if days else None
    with store_of(request).transaction() as conn:
        token_id, token = security.create_token(conn, user.user_id, name, expires)
    note_object(request, "api_token", token_id)
    return render(request, "me.html", new_token=token, **_my_sessions_and_tokens(request, user))


@router.post("/me/tokens/{token_id}/revoke", include_in_schema=False)
def revoke_my_token(request: Request, token_id: int, user: Annotated[Principal, Depends(require())]) -> Response:
    with store_of(request).transaction() as conn:
        cur = conn.execute(
            "UPDATE api_token SET revoked_at = now() WHERE id = %s AND user_id = %s AND revoked_at IS NULL",
            [token_id, user.user_id],
        )
    if cur.rowcount == 0:
        raise ActionError("not_found", "no such token of yours", 404)
    note_object(request, "api_token", token_id)
    return redirect("/me")


@router.get("/api/v1/me", tags=["access"])
def api_me(user: Annotated[Principal, Depends(require())]) -> dict[str, Any]:
    """Who the token (or session) belongs to and what it may do."""
    return {
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
        "permissions": sorted(user.permissions),
        "area_ids": None if user.area_ids is None else sorted(user.area_ids),
    }


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    """Browsers ask for /favicon.ico whatever the page says; the console's icon is an SVG."""
    return redirect("/static/favicon.svg", status_code=301)
