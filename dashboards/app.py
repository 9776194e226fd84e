"""The FastAPI application: console pages, `/api/v1`, static assets, the operation log."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from dashboards import routes as routes_package
from dashboards.web import (
    STATIC,
    UNSAFE,
    ActionError,
    Forbidden,
    NotAuthenticated,
    client_ip,
    is_api,
    login_redirect,
    render,
)
from meterhub.commands import audit
from meterhub.settings import Settings
from meterhub.store import Store

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def _route_modules() -> list[Any]:
    return [
        importlib.import_module(f"{routes_package.__name__}.{info.name}")
        for info in sorted(pkgutil.iter_modules(routes_package.__path__), key=lambda m: m.name)
    ]


def _action_name(scope: MutableMapping[str, Any]) -> str:
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return "http." + scope.get("method", "").lower()
    return f"{endpoint.__module__.rsplit('.', 1)[-1]}.{endpoint.__name__}"


def _write_operation(store: Store, entry: dict[str, Any]) -> None:
    with store.transaction() as conn:
        audit(
            conn,
            entry["actor"],
            entry["action"],
            entry["object_type"],
            entry["object_id"],
            entry["detail"],
            ip=entry["ip"],
        )


def create_app(settings: Settings, store: Store | None = None) -> FastAPI:
    """The console for `settings`; with `store` given the app uses it and leaves it open at shutdown."""
    own_store = store is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if own_store:
            app.state.store.open()
            app.state.store.migrate()
        try:
            yield
        finally:
            if own_store:
                app.state.store.close()

    app = FastAPI(
        title="meterhub",
        version="1",
        description="Gas meter readings, valve and credit commands, billing. Authenticate with "
        "`Authorization: Bearer <API token>`; tokens carry their user's permissions.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store if store is not None else Store(settings)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    for module in _route_modules():
        app.include_router(module.router)

    @app.middleware("http")
    async def operation_log(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        )
        if request.method not in UNSAFE:
            return response
        entry = request.scope.get("state", {}).get("oplog")
        if entry is None:
            return response
        referer = request.headers.get("referer")
        page = urlsplit(referer).path if referer else None
        object_type, object_id = entry.get("object", ("http", request.url.path))
        detail = {
            "method": request.method,
            "path": request.url.path,
            "page": page,
            "status": response.status_code,
            **entry["detail"],
        }
        record = {
            "actor": entry["actor"],
            "action": _action_name(request.scope),
            "object_type": object_type,
            "object_id": object_id,
            "detail": detail,
            "ip": client_ip(request),
        }
        try:
            await to_thread.run_sync(_write_operation, app.state.store, record)
        except Exception:  # the action is done; losing its log entry must be loud
            log.exception("operation log entry not written: %s", record)
            return JSONResponse({"error": "oplog", "detail": "the operation log could not be written"}, 500)
        return response

    @app.exception_handler(NotAuthenticated)
    async def not_authenticated(request: Request, exc: NotAuthenticated) -> Response:
        if is_api(request):
            return JSONResponse(
                {"error": "not_authenticated", "detail": "sign in or send an API token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.method in UNSAFE:
            return render(request, "error.html", 401, code=401, message_key="error.not_authenticated")
        return login_redirect(request)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        headers = {"X-Refused": exc.reason}
        if is_api(request):
            return JSONResponse({"error": exc.reason, "detail": "not permitted"}, status_code=403, headers=headers)
        response = render(request, "error.html", 403, code=403, message_key=f"error.{exc.reason}")
        response.headers.update(headers)
        return response

    @app.exception_handler(ActionError)
    async def action_error(request: Request, exc: ActionError) -> Response:
        if is_api(request):
            return JSONResponse({"error": exc.code, "detail": exc.message}, status_code=exc.status)
        return render(request, "error.html", exc.status, code=exc.status, message=exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if is_api(request) or request.url.path.startswith("/static/"):
            return JSONResponse({"error": "http", "detail": exc.detail}, status_code=exc.status_code,
                                headers=getattr(exc, "headers", None))
        key = {404: "error.not_found", 405: "error.method"}.get(exc.status_code, "error.generic")
        return render(request, "error.html", exc.status_code, code=exc.status_code, message_key=key)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ())[1:]), "problem": e.get("msg", "")}
            for e in exc.errors()
        ]
        if is_api(request):
            return JSONResponse({"error": "invalid", "detail": problems}, status_code=422)
        message = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
        return render(request, "error.html", 422, code=422, message=message)

    return app
