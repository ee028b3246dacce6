"""Turning data into pages: the template environment, its filters, and the response headers.

Templates autoescape everything; the filters only shape text (control characters as
escapes, numbers as the CLI writes them, the language of a passage), never mark it safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from kb import __version__
from kb.lexicon import detect_language
from kb.querytext import shown
from kb.results import value_text

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"

# Every asset is ours: nothing is loaded from elsewhere, no inline script or style runs.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def language(text: Any) -> str:
    """The ``lang`` of a passage: 'zh' when Chinese characters make up a real share of it."""
    return detect_language(str(text))


def link(source: Any) -> str | None:
    """A source that is a web address, to link to; anything else (a file name) is shown as text."""
    text = str(source)
    return text if text.startswith(("https://", "http://")) and not any(c.isspace() for c in text) else None


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(shown=lambda text: shown(str(text)), value=value_text, lang=language, link=link)
    env.globals["version"] = __version__
    return env


ENVIRONMENT = _environment()


def page(request: Request, template: str, status: int = 200, headers: dict[str, str] | None = None,
         **context: Any) -> HTMLResponse:
    """``template`` rendered with ``context``, as UTF-8 HTML with the security headers."""
    html = ENVIRONMENT.get_template(template).render(root=request.scope.get("root_path", ""), **context)
    return HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})
