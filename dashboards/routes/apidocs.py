"""A readable description of `/api/v1`, rendered from the OpenAPI document (served by meterhub, no CDN)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from dashboards.security import Principal
from dashboards.web import render, require

router = APIRouter()


def _operations(spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for path, methods in sorted(spec.get("paths", {}).items()):
        for method, op in methods.items():
            params = [
                {"name": p["name"], "in": p["in"], "required": p.get("required", False)}
                for p in op.get("parameters", [])
                if p["in"] != "header" or p["name"].lower() == "idempotency-key"
            ]
            body: dict[str, Any] = op.get("requestBody", {}).get("content", {})
            first: dict[str, Any] = next(iter(body.values())) if body else {}
            schema: dict[str, Any] = first.get("schema", {})
            ref = schema.get("$ref", "").rsplit("/", 1)[-1] or schema.get("type", "")
            entry = {
                "method": method.upper(),
                "path": path,
                "summary": op.get("summary", ""),
                "description": op.get("description", ""),
                "params": params,
                "body": ref,
            }
            for tag in op.get("tags", ["other"]):
                by_tag.setdefault(tag, []).append(entry)
    return dict(sorted(by_tag.items()))


@router.get("/api", include_in_schema=False)
def api_reference(request: Request, user: Annotated[Principal, Depends(require())]) -> Response:
    spec = request.app.openapi()
    return render(request, "api.html", groups=_operations(spec), version=spec.get("info", {}).get("version"))
