"""The web front end of ``kbq serve``: a search page at ``/``, case pages, a chat panel, and
the API docs, every asset served from this package so that nothing needs the internet.

The pages are HTML, so they stay out of the OpenAPI schema; the chat panel talks to the
API's own ``/v1/chat``. Errors come from the API's handlers (one set of messages for every
door) and are turned into pages on the way out (:mod:`api.web.errors`).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from . import docs, pages
from .errors import HtmlErrors
from .render import STATIC_DIR


def attach(app: FastAPI) -> None:
    """Add the pages, their assets and the offline docs to ``app``, whose ``state.kb`` is the
    KnowledgeBase the pages read. Called after the API's own middleware is added, so the
    error pages wrap its refusals too."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    docs.attach(app)
    app.include_router(pages.router)
    app.add_middleware(HtmlErrors, is_page=pages.is_page)
