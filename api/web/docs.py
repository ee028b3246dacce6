"""The API docs (Swagger UI at /docs) with its script and style served by kbq itself, so they
render on a machine without internet.

FastAPI's own page loads them from a CDN. The files come from the ``fastapi-offline``
package (Swagger UI 5, which reads OpenAPI 3.1), which keeps them current, rather than
from a copy committed here. There is no /redoc: ReDoc 2's bundle always fetches its logo
from its makers' CDN.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/docs-assets"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = f"{DOCS_URL}/oauth2-redirect"
# Swagger UI would otherwise send the schema's URL to an online validator for a badge.
SWAGGER_PARAMETERS = {"validatorUrl": None}


def attach(app: FastAPI) -> None:
    """Serve the docs pages on ``app``, which must be made with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        assets = root + ASSETS_URL
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"), title=f"{app.title} - API docs",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js", swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png", oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), **SWAGGER_PARAMETERS},
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

