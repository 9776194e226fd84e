"""Every route of the console and the API, walked: who may, who may not, CSRF, the operation log.

Routes are discovered from the app, so a new route is covered the day it is added: it must either be
in PUBLIC or depend on `require(...)`, and then each shipped role gets exactly what its permissions allow.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute

from dashboards.web import UNSAFE, Requirement, check_anonymous_csrf
from meterhub.store import Store
from tests.dashboards.conftest import ROLES, ConsoleClient

# Reachable without signing in: the sign-in form, the language switch, the API's description, the
# self-service kiosk's query (account number and PIN, limited per account and address).
PUBLIC = {
    ("GET", "/kiosk"),
    ("POST", "/kiosk"),
    ("POST", "/api/v1/kiosk/query"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/lang"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/favicon.ico"),
}


def _requirements(dependant: Any) -> Iterator[Any]:
    for dep in dependant.dependencies:
        yield dep.call
        yield from _requirements(dep)


def _flat(routes: list[Any]) -> Iterator[Any]:
    """Routes of the app with included routers opened up (FastAPI keeps them as branches)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _flat(included.routes)
        else:
            yield route


def _routes(app: Any) -> list[tuple[str, str, APIRoute | None, Requirement | None]]:
    out = []
    for route in _flat(app.routes):
        if not isinstance(route, APIRoute):
            if getattr(route, "path", "") == "/api/v1/openapi.json":
                out.append(("GET", route.path, None, None))
            continue
        requirement = next((c for c in _requirements(route.dependant) if isinstance(c, Requirement)), None)
        for method in sorted(route.methods - {"HEAD"}):
            out.append((method, route.path, route, requirement))
    return out


def _url(path: str, route: APIRoute | None) -> str:
    """The path with every parameter filled by a value of its type that names nothing."""
    if route is None:
        return path
    types = {p.name: p.field_info.annotation for p in route.dependant.path_params}

    def fill(match: re.Match[str]) -> str:
        name = match.group(1).split(":")[0]
        return "999999" if types.get(name) is int else "zz-nothing"

    return re.sub(r"\{([^}]+)\}", fill, path)


def _grants(store: Store) -> dict[str, set[str]]:
    with store.connection() as conn:
        rows = conn.execute("SELECT role, permission FROM role_permission").fetchall()
    grants: dict[str, set[str]] = {role: set() for role in ROLES}
    for role, permission in rows:
        grants.setdefault(role, set()).add(permission)
    return grants


def _audit_count(store: Store) -> int:
    with store.connection() as conn:
        row = conn.execute("SELECT count(*) FROM audit_log").fetchone()
    return int(row[0]) if row else 0


def _send(client: ConsoleClient, method: str, url: str, csrf: bool = True) -> Any:
    headers = {"X-CSRF-Token": client.csrf} if csrf and client.csrf else {}
    return client.http.request(method, url, headers=headers, follow_redirects=False)


def test_every_route_is_public_by_list_or_guarded(console_app: Any) -> None:
    unguarded = []
    for method, path, _route, requirement in _routes(console_app):
        if (method, path) in PUBLIC:
            continue
        if requirement is None:
            unguarded.append(f"{method} {path}")
    assert unguarded == []
    for method, path in {p for p in PUBLIC if p[0] in UNSAFE}:
        route = next(r for m, p, r, _ in _routes(console_app) if (m, p) == (method, path))
        assert route is not None and check_anonymous_csrf in list(_requirements(route.dependant))


def test_unauthenticated_requests_are_refused(console_app: Any, client_factory: Callable[[], ConsoleClient]) -> None:
    client = client_factory()
    wrong = []
    for method, path, route, _requirement in _routes(console_app):
        if (method, path) in PUBLIC:
            continue
        response = _send(client, method, _url(path, route))
        if path.startswith("/api/") or method in UNSAFE:
            ok = response.status_code == 401
        else:
            ok = response.status_code == 303 and response.headers["location"].startswith("/login")
        if not ok:
            wrong.append(f"{method} {path}: {response.status_code}")
    assert wrong == []


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_what_its_permissions_allow(
    role: str, console_app: Any, signed_in: Callable[[str], ConsoleClient], store: Store
) -> None:
    grants = _grants(store)[role]
    client = signed_in(role)
    wrong = []
    for method, path, route, requirement in _routes(console_app):
        if requirement is None:
            continue
        before = _audit_count(store) if method in UNSAFE else 0
        response = _send(client, method, _url(path, route))
        refused = response.status_code == 403 and response.headers.get("x-refused") == "permission"
        allowed = requirement.permission is None or requirement.permission in grants
        if allowed == refused or response.status_code == 401:
            wrong.append(f"{method} {path} needs {requirement.permission}: {response.status_code}")
        if method in UNSAFE:
            if _audit_count(store) <= before:
                wrong.append(f"{method} {path}: no operation-log entry")
            if client.http.get("/api/v1/me").status_code == 401:  # the route ended the session
                client = signed_in(role)
    assert wrong == []


def test_a_post_without_the_csrf_token_is_refused_everywhere(
    console_app: Any, signed_in: Callable[[str], ConsoleClient]
) -> None:
    client = signed_in("admin")
    wrong = []
    for method, path, route, requirement in _routes(console_app):
        if method not in UNSAFE or requirement is None:
            continue
        response = _send(client, method, _url(path, route), csrf=False)
        if not (response.status_code == 403 and response.headers.get("x-refused") == "csrf"):
            wrong.append(f"{method} {path}: {response.status_code}")
    assert wrong == []
    assert client.http.get("/api/v1/me").status_code == 200


def test_api_tokens_need_no_csrf_but_the_same_permissions(
    console_app: Any, signed_in: Callable[[str], ConsoleClient], client_factory: Callable[[], ConsoleClient]
) -> None:
    admin = signed_in("admin")
    admin.post(
        "/admin/roles/cashier/permissions",
        {"permission": ["customers.view", "billing.view", "billing.pay", "admin.tokens"]},
    )
    cashier = signed_in("cashier")
    token = cashier.post("/me/tokens", {"name": "kiosk"}).text.split('id="new-token">')[1].split("<")[0]
    program = client_factory().http
    headers = {"Authorization": f"Bearer {token}"}
    assert program.get("/api/v1/admin/users", headers=headers).status_code == 403
    assert program.get("/api/v1/me", headers=headers).json()["role"] == "cashier"


def test_the_openapi_document_describes_every_api_route(console_app: Any, client_factory: Callable[[], Any]) -> None:
    spec = client_factory().http.get("/api/v1/openapi.json").json()
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    api_routes = {(m, p) for m, p, r, _ in _routes(console_app) if p.startswith("/api/v1/") and r is not None}
    assert api_routes <= documented
    assert not any(p.startswith(("/customers", "/meters", "/counter", "/admin")) for _, p in documented)
    undescribed = [f"{m} {p}" for p, ops in spec["paths"].items() for m, op in ops.items() if not op.get("description")]
    assert undescribed == []
