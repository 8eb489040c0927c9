"""``GET /docs``: the API reference as one self-contained HTML page.

FastAPI's interactive docs (Swagger UI at ``/docs``, ReDoc at ``/redoc``) load their
scripts, styles and favicon from a CDN and the framework's site, so opening them tells third
parties that a PageLens server runs here, and from where. This page is rendered on the
server from the same OpenAPI document (``/openapi.json`` stays): no script, no external
asset, and a ``Content-Security-Policy`` that would block one if it ever slipped in.
"""

from __future__ import annotations

import html
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

#: Nothing may be loaded from anywhere: inline styles only, no scripts, no frames, no forms.
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
    "code,pre{font:13px ui-monospace,monospace;background:#f4f4f4}"
    "pre{padding:.6rem;overflow:auto}h2{margin-top:2rem;border-top:1px solid #ddd;padding-top:1rem}"
    ".m{font-weight:bold;margin-right:.5rem}"
)


def _operations(schema: dict[str, Any]) -> list[str]:
    parts = []
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            summary = op.get("summary") or ""
            description = op.get("description") or ""
            parts.append(
                f"<h2><span class=m>{html.escape(method.upper())}</span>"
                f"<code>{html.escape(path)}</code></h2>"
                f"<p>{html.escape(summary)}</p>"
                + (f"<pre>{html.escape(description)}</pre>" if description else "")
            )
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            if body.get("schema"):
                ref = body["schema"].get("$ref", "")
                name = ref.rsplit("/", 1)[-1] if ref else json.dumps(body["schema"])
                parts.append(f"<p>Body: <code>{html.escape(name)}</code></p>")
    return parts


def _models(schema: dict[str, Any]) -> list[str]:
    parts = []
    for name, model in schema.get("components", {}).get("schemas", {}).items():
        if name in ("HTTPValidationError", "ValidationError"):
            continue
        text = json.dumps(model.get("properties", model), indent=2, sort_keys=True)
        parts.append(f"<h3><code>{html.escape(name)}</code></h3><pre>{html.escape(text)}</pre>")
    return parts


def render(schema: dict[str, Any]) -> str:
    """The page for an OpenAPI document: every operation, then every request model."""
    info = schema.get("info", {})
    title = html.escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    summary = html.escape(info.get("summary") or info.get("description") or "")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        '<link rel=icon href="data:,">'  # no favicon request at all
        f"<title>{title}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{title}</h1><p>{summary}</p>"
        '<p>The machine-readable document: <a href="openapi.json"><code>/openapi.json</code>'
        "</a>. With an API key, every path but <code>/health</code> needs "
        "<code>Authorization: Bearer KEY</code>.</p>"
        + "".join(_operations(schema))
        + "<h2>Request and response models</h2>"
        + "".join(_models(schema))
        + "</body></html>"
    )


def install(app: FastAPI) -> None:
    """Serve :func:`render` at ``/docs`` (create the app with ``docs_url=None``)."""

    async def docs(request: Request) -> HTMLResponse:
        return HTMLResponse(
            render(request.app.openapi()),
            headers={
                "Content-Security-Policy": CSP,
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
            },
        )

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
