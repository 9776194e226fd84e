"""Administration: staff users, their areas, roles and their permissions, everyone's API tokens."""

from __future__ import annotations

import re
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from dashboards import security
from dashboards.security import Principal
from dashboards.web import ActionError, note_object, note_operation, redirect, render, require, store_of

router = APIRouter()

USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
ROLE_CODE = re.compile(r"^[a-z_]{1,32}$")


# -- service functions (one transaction each; the change history records the actor) -----------------
def _areas(conn: psycopg.Connection[Any]) -> list[tuple[int, str, str]]:
    return [(r[0], r[1], r[2]) for r in conn.execute("SELECT id, code, name FROM area ORDER BY code")]


def _roles(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    rows = conn.execute(
        """SELECT r.code, r.name_zh, r.name_en, r.builtin,
                  coalesce(array(SELECT permission FROM role_permission p WHERE p.role = r.code ORDER BY 1), '{}'),
                  (SELECT count(*) FROM staff_user u WHERE u.role = r.code)
             FROM role r ORDER BY r.builtin DESC, r.code"""
    ).fetchall()
    return [
        {"code": r[0], "name_zh": r[1], "name_en": r[2], "builtin": r[3], "permissions": list(r[4]), "users": r[5]}
        for r in rows
    ]


def _permissions(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    return [(r[0], r[1], r[2]) for r in conn.execute("SELECT code, name_zh, name_en FROM permission ORDER BY code")]


def _users(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    rows = conn.execute(
        """SELECT u.id, u.username, u.display_name, u.role, u.active, u.phone, u.email,
                  coalesce(array(SELECT a.code FROM staff_area s JOIN area a ON a.id = s.area_id
                                  WHERE s.user_id = u.id ORDER BY a.code), '{}'),
                  (SELECT max(at) FROM login_attempt l WHERE lower(l.username) = lower(u.username) AND l.ok),
                  (SELECT count(*) FROM web_session w WHERE w.user_id = u.id AND w.ended_at IS NULL),
                  u.password_hash IS NOT NULL
             FROM staff_user u ORDER BY u.username"""
    ).fetchall()
    keys = ("id", "username", "display_name", "role", "active", "phone", "email", "areas", "last_login",
            "sessions", "has_password")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def _check_role(conn: psycopg.Connection[Any], role: str) -> None:
    if conn.execute("SELECT 1 FROM role WHERE code = %s", [role]).fetchone() is None:
        raise ActionError("unknown_role", f"there is no role {role!r}", 400)


def _set_areas(conn: psycopg.Connection[Any], user_id: int, area_codes: list[str]) -> None:
    codes = sorted({c.strip() for c in area_codes if c.strip()})
    ids = {r[1]: r[0] for r in conn.execute("SELECT id, code FROM area WHERE code = ANY(%s)", [codes])}
    unknown = [c for c in codes if c not in ids]
    if unknown:
        raise ActionError("unknown_area", f"unknown areas: {', '.join(unknown)}", 400)
    conn.execute("DELETE FROM staff_area WHERE user_id = %s", [user_id])
    for code in codes:
        conn.execute("INSERT INTO staff_area (user_id, area_id) VALUES (%s, %s)", [user_id, ids[code]])


def _keep_an_administrator(conn: psycopg.Connection[Any]) -> None:
    """Refuse (and so roll back) any change that leaves no active user able to manage users and roles."""
    row = conn.execute(
        """SELECT count(*) FROM staff_user u
            WHERE u.active AND u.password_hash IS NOT NULL
              AND EXISTS (SELECT 1 FROM role_permission p WHERE p.role = u.role AND p.permission = 'admin.users')
              AND EXISTS (SELECT 1 FROM role_permission p WHERE p.role = u.role AND p.permission = 'admin.roles')"""
    ).fetchone()
    if not row or row[0] == 0:
        raise ActionError("last_administrator", "this would leave nobody able to manage users and roles", 409)


def create_user(
    conn: psycopg.Connection[Any],
    username: str,
    display_name: str,
    role: str,
    password: str,
    areas: list[str],
    phone: str = "",
    email: str = "",
) -> int:
    if not USERNAME.match(username):
        raise ActionError("bad_username", "a user name is 1–64 letters, digits or _ . @ -", 400)
    _check_role(conn, role)
    try:
        password_hash = security.hash_password(password)
    except ValueError as exc:
        raise ActionError("weak_password", str(exc), 400) from None
    if conn.execute("SELECT 1 FROM staff_user WHERE lower(username) = lower(%s)", [username]).fetchone():
        raise ActionError("duplicate", f"the user name {username!r} is taken", 409)
    row = conn.execute(
        """INSERT INTO staff_user (username, display_name, role, phone, email, password_hash, password_changed_at)
           VALUES (%s, %s, %s, nullif(%s, ''), nullif(%s, ''), %s, now()) RETURNING id""",
        [username, display_name or username, role, phone, email, password_hash],
    ).fetchone()
    assert row is not None
    _set_areas(conn, int(row[0]), areas)
    return int(row[0])


def update_user(
    conn: psycopg.Connection[Any],
    username: str,
    *,
    display_name: str | None = None,
    role: str | None = None,
    active: bool | None = None,
    areas: list[str] | None = None,
    phone: str | None = None,
    email: str | None = None,
) -> int:
    row = conn.execute("SELECT id, active FROM staff_user WHERE username = %s FOR UPDATE", [username]).fetchone()
    if row is None:
        raise ActionError("not_found", f"no user {username!r}", 404)
    user_id = int(row[0])
    if role is not None:
        _check_role(conn, role)
    conn.execute(
        """UPDATE staff_user SET display_name = coalesce(%s, display_name), role = coalesce(%s, role),
                  active = coalesce(%s, active), phone = coalesce(%s, phone), email = coalesce(%s, email)
            WHERE id = %s""",
        [display_name, role, active, phone, email, user_id],
    )
    if areas is not None:
        _set_areas(conn, user_id, areas)
    if active is False or role is not None:
        security.end_sessions_of(conn, user_id, "disabled")  # permissions changed: sign in again
    _keep_an_administrator(conn)
    return user_id


def set_role_permissions(conn: psycopg.Connection[Any], role: str, permissions: list[str]) -> list[str]:
    _check_role(conn, role)
    known = {p[0] for p in _permissions(conn)}
    unknown = sorted(set(permissions) - known)
    if unknown:
        raise ActionError("unknown_permission", f"unknown permissions: {', '.join(unknown)}", 400)
    before = [r[0] for r in conn.execute("SELECT permission FROM role_permission WHERE role = %s ORDER BY 1", [role])]
    conn.execute("DELETE FROM role_permission WHERE role = %s", [role])
    for permission in sorted(set(permissions)):
        conn.execute("INSERT INTO role_permission (role, permission) VALUES (%s, %s)", [role, permission])
    conn.execute("UPDATE role SET updated_at = now() WHERE code = %s", [role])
    _keep_an_administrator(conn)
    return before


# -- pages -------------------------------------------------------------------------------------------
def _admin_page(request: Request, **extra: Any) -> Response:
    with store_of(request).connection() as conn:
        return render(
            request,
            "admin/index.html",
            users=_users(conn),
            roles=_roles(conn),
            permissions=_permissions(conn),
            areas=_areas(conn),
            **extra,
        )


@router.get("/admin", include_in_schema=False)
def admin_home(request: Request, user: Annotated[Principal, Depends(require("admin.users"))]) -> Response:
    return _admin_page(request)


@router.post("/admin/users", include_in_schema=False)
def admin_create_user(
    request: Request,
    user: Annotated[Principal, Depends(require("admin.users"))],
    username: Annotated[str, Form()],
    role: Annotated[str, Form()],
    password: Annotated[str, Form()],
    display_name: Annotated[str, Form()] = "",
    areas: Annotated[list[str] | None, Form()] = None,
    phone: Annotated[str, Form()] = "",
    email: Annotated[str, Form()] = "",
) -> Response:
    with store_of(request).transaction(actor=user.username) as conn:
        create_user(conn, username.strip(), display_name.strip(), role, password, areas or [], phone, email)
    note_object(request, "staff_user", username.strip())
    return redirect(f"/admin/users/{username.strip()}")


@router.get("/admin/users/{username}", include_in_schema=False)
def admin_user(
    request: Request, username: str, user: Annotated[Principal, Depends(require("admin.users"))]
) -> Response:
    with store_of(request).connection() as conn:
        found = [u for u in _users(conn) if u["username"] == username]
        if not found:
            raise ActionError("not_found", f"no user {username!r}", 404)
        tokens = conn.execute(
            """SELECT t.id, t.name, t.prefix, t.created_at, t.expires_at, t.last_used_at, t.revoked_at
                 FROM api_token t WHERE t.user_id = %s ORDER BY t.id DESC""",
            [found[0]["id"]],
        ).fetchall()
        return render(request, "admin/user.html", u=found[0], roles=_roles(conn), areas=_areas(conn), tokens=tokens)


@router.post("/admin/users/{username}", include_in_schema=False)
def admin_update_user(
    request: Request,
    username: str,
    user: Annotated[Principal, Depends(require("admin.users"))],
    role: Annotated[str, Form()],
    display_name: Annotated[str, Form()],
    active: Annotated[bool, Form()] = False,
    areas: Annotated[list[str] | None, Form()] = None,
    phone: Annotated[str, Form()] = "",
    email: Annotated[str, Form()] = "",
) -> Response:
    with store_of(request).transaction(actor=user.username) as conn:
        update_user(conn, username, display_name=display_name.strip(), role=role, active=active,
                    areas=areas or [], phone=phone, email=email)
    note_object(request, "staff_user", username)
    return redirect(f"/admin/users/{username}")


@router.post("/admin/users/{username}/password", include_in_schema=False)
def admin_reset_password(
    request: Request,
    username: str,
    user: Annotated[Principal, Depends(require("admin.users"))],
    password: Annotated[str, Form()],
) -> Response:
    with store_of(request).transaction(actor=user.username) as conn:
        row = conn.execute("SELECT id FROM staff_user WHERE username = %s", [username]).fetchone()
        if row is None:
            raise ActionError("not_found", f"no user {username!r}", 404)
        try:
            security.set_password(conn, int(row[0]), password, end_sessions=True)
        except ValueError as exc:
            raise ActionError("weak_password", str(exc), 400) from None
    note_object(request, "staff_user", username)
    return redirect(f"/admin/users/{username}")


@router.post("/admin/users/{username}/sessions/end", include_in_schema=False)
def admin_end_sessions(
    request: Request, username: str, user: Annotated[Principal, Depends(require("admin.users"))]
) -> Response:
    with store_of(request).transaction(actor=user.username) as conn:
        row = conn.execute("SELECT id FROM staff_user WHERE username = %s", [username]).fetchone()
        if row is None:
            raise ActionError("not_found", f"no user {username!r}", 404)
        security.end_sessions_of(conn, int(row[0]), "logout_all")
    note_object(request, "staff_user", username)
    return redirect(f"/admin/users/{username}")


@router.post("/admin/tokens/{token_id}/revoke", include_in_schema=False)
def admin_revoke_token(
    request: Request, token_id: int, user: Annotated[Principal, Depends(require("admin.users"))]
) -> Response:
    with store_of(request).transaction(actor=user.username) as conn:
        row = conn.execute(
            """UPDATE api_token t SET revoked_at = now() FROM staff_user u
                WHERE t.id = %s AND u.id = t.user_id AND t.revoked_at IS NULL RETURNING u.username""",
            [token_id],
        ).fetchone()
    if row is None:
        raise ActionError("not_found", "no such live token", 404)
    note_object(request, "api_token", token_id)
    return redirect(f"/admin/users/{row[0]}")


@router.post("/admin/roles", include_in_schema=False)
def admin_create_role(
    request: Request,
    user: Annotated[Principal, Depends(require("admin.roles"))],
    code: Annotated[str, Form()],
    name_zh: Annotated[str, Form()],
    name_en: Annotated[str, Form()],
) -> Response:
    code = code.strip()
    if not ROLE_CODE.match(code):
        raise ActionError("bad_code", "a role code is 1–32 lower-case letters or _", 400)
    with store_of(request).transaction(actor=user.username) as conn:
        cur = conn.execute(
            "INSERT INTO role (code, name_zh, name_en) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            [code, name_zh.strip() or code, name_en.strip() or code],
        )
        if cur.rowcount == 0:
            raise ActionError("duplicate", f"the role {code!r} exists", 409)
    note_object(request, "role", code)
    return redirect(f"/admin#role-{code}")


@router.post("/admin/roles/{code}/permissions", include_in_schema=False)
def admin_role_permissions(
    request: Request,
    code: str,
    user: Annotated[Principal, Depends(require("admin.roles"))],
    permission: Annotated[list[str] | None, Form()] = None,
) -> Response:
    with store_of(request).transaction(actor=user.username) as conn:
        before = set_role_permissions(conn, code, permission or [])
    note_operation(request, user.username, permissions_before=before)
    note_object(request, "role", code)
    return redirect(f"/admin#role-{code}")


@router.post("/admin/roles/{code}/delete", include_in_schema=False)
def admin_delete_role(
    request: Request, code: str, user: Annotated[Principal, Depends(require("admin.roles"))]
) -> Response:
    with store_of(request).transaction(actor=user.username) as conn:
        row = conn.execute(
            "SELECT builtin, (SELECT count(*) FROM staff_user WHERE role = %s) FROM role WHERE code = %s",
            [code, code],
        ).fetchone()
        if row is None:
            raise ActionError("not_found", f"no role {code!r}", 404)
        if row[0]:
            raise ActionError("builtin", "a shipped role cannot be deleted (its permissions can be edited)", 409)
        if row[1]:
            raise ActionError("in_use", f"{row[1]} users still have this role", 409)
        conn.execute("DELETE FROM role_permission WHERE role = %s", [code])
        conn.execute("DELETE FROM role WHERE code = %s", [code])
    note_object(request, "role", code)
    return redirect("/admin")


# -- API ---------------------------------------------------------------------------------------------
class UserIn(BaseModel):
    username: str = Field(pattern=USERNAME.pattern)
    display_name: str = ""
    role: str
    password: str = Field(min_length=8)
    areas: list[str] = Field(default_factory=list, description="area codes; empty: not limited")
    phone: str = ""
    email: str = ""


class UserPatch(BaseModel):
    display_name: str | None = None
    role: str | None = None
    active: bool | None = None
    areas: list[str] | None = None
    phone: str | None = None
    email: str | None = None


class UserOut(BaseModel):
    username: str
    display_name: str
    role: str
    active: bool
    areas: list[str]
    phone: str | None
    email: str | None


def _user_out(row: dict[str, Any]) -> UserOut:
    return UserOut(**{k: row[k] for k in UserOut.model_fields})


@router.get("/api/v1/admin/users", tags=["administration"])
def api_users(request: Request, user: Annotated[Principal, Depends(require("admin.users"))]) -> list[UserOut]:
    """Staff users with their roles and areas."""
    with store_of(request).connection() as conn:
        return [_user_out(u) for u in _users(conn)]


@router.post("/api/v1/admin/users", tags=["administration"], status_code=201)
def api_create_user(
    request: Request, body: UserIn, user: Annotated[Principal, Depends(require("admin.users"))]
) -> UserOut:
    """Create a staff user with an initial password."""
    with store_of(request).transaction(actor=user.username) as conn:
        create_user(conn, body.username, body.display_name, body.role, body.password, body.areas, body.phone,
                    body.email)
        created = next(u for u in _users(conn) if u["username"] == body.username)
    note_object(request, "staff_user", body.username)
    return _user_out(created)


@router.patch("/api/v1/admin/users/{username}", tags=["administration"])
def api_update_user(
    request: Request, username: str, body: UserPatch, user: Annotated[Principal, Depends(require("admin.users"))]
) -> UserOut:
    """Change a user's role, areas, contact details or active flag; changing role or disabling ends their sessions."""
    with store_of(request).transaction(actor=user.username) as conn:
        update_user(conn, username, **body.model_dump(exclude_unset=True))
        updated = next(u for u in _users(conn) if u["username"] == username)
    note_object(request, "staff_user", username)
    return _user_out(updated)


class RoleOut(BaseModel):
    code: str
    name_zh: str
    name_en: str
    builtin: bool
    permissions: list[str]
    users: int


@router.get("/api/v1/admin/roles", tags=["administration"])
def api_roles(request: Request, user: Annotated[Principal, Depends(require("admin.roles"))]) -> list[RoleOut]:
    """Roles with their permissions."""
    with store_of(request).connection() as conn:
        return [RoleOut(**r) for r in _roles(conn)]


@router.put("/api/v1/admin/roles/{code}/permissions", tags=["administration"])
def api_set_role_permissions(
    request: Request, code: str, permissions: list[str], user: Annotated[Principal, Depends(require("admin.roles"))]
) -> RoleOut:
    """Replace a role's permissions with the given list."""
    with store_of(request).transaction(actor=user.username) as conn:
        set_role_permissions(conn, code, permissions)
        role = next(r for r in _roles(conn) if r["code"] == code)
    note_object(request, "role", code)
    return RoleOut(**role)
