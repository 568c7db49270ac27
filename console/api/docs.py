"""``/api/docs/``: the OpenAPI schema rendered as a readable, self-contained HTML page.

Swagger UI and ReDoc load their scripts from a CDN; Tollgate downloads nothing at run
time, so the reference is rendered here, server-side, from the same generated schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

# drf-spectacular's generator and views (with the whole OpenAPI machinery under them) are
# imported when the schema is first asked for, not whenever the URLconf loads: every
# management command loads the URLconf for its checks, and none of them needs a schema.

_METHODS = ("get", "post", "put", "patch", "delete")


@dataclass
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    parameters: list[dict[str, Any]]
    request: list[str] = field(default_factory=list)
    responses: list[tuple[str, str, list[str]]] = field(default_factory=list)


def _schema_names(content: dict[str, Any] | None) -> list[str]:
    """Component names a request or response body refers to (``Foo`` for a $ref)."""
    names: list[str] = []
    for media in (content or {}).values():
        schema = media.get("schema", {})
        ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
        if ref:
            name = ref.rsplit("/", 1)[-1]
            names.append(f"{name}[]" if "items" in schema else name)
    return list(dict.fromkeys(names))


def _operations(schema: dict[str, Any]) -> dict[str, list[Operation]]:
    """Operations grouped by their first tag, in path order."""
    groups: dict[str, list[Operation]] = {}
    for path, item in schema.get("paths", {}).items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            operation = Operation(
                method=method.upper(),
                path=path,
                operation_id=op.get("operationId", ""),
                summary=op.get("description") or op.get("summary") or "",
                parameters=op.get("parameters", []),
                request=_schema_names(op.get("requestBody", {}).get("content")),
                responses=[
                    (code, body.get("description", ""), _schema_names(body.get("content")))
                    for code, body in op.get("responses", {}).items()
                ],
            )
            groups.setdefault((op.get("tags") or ["api"])[0], []).append(operation)
    return groups


def _components(schema: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    out = []
    for name, component in sorted(schema.get("components", {}).get("schemas", {}).items()):
        required = set(component.get("required", []))
        rows = []
        for prop, spec in component.get("properties", {}).items():
            ref = spec.get("$ref") or spec.get("items", {}).get("$ref") or ""
            rows.append(
                {
                    "name": prop,
                    "type": ref.rsplit("/", 1)[-1] if ref else spec.get("type", "object"),
                    "format": spec.get("format", ""),
                    "required": prop in required,
                    "read_only": spec.get("readOnly", False),
                    "write_only": spec.get("writeOnly", False),
                    "description": spec.get("description", ""),
                    "enum": spec.get("enum", []),
                }
            )
        out.append((name, rows))
    return out


def api_docs(request: HttpRequest) -> HttpResponse:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    return render(
        request,
        "api/docs.html",
        {
            "info": schema.get("info", {}),
            "groups": sorted(_operations(schema).items()),
            "components": _components(schema),
        },
    )


@cache
def _schema_view() -> Any:
    from drf_spectacular.views import SpectacularAPIView

    return SpectacularAPIView.as_view()


@csrf_exempt
def api_schema(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """``/api/schema/``: drf-spectacular's schema view, built on first use."""
    response: HttpResponse = _schema_view()(request, *args, **kwargs)
    return response
