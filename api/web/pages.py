"""The pages: search at ``/`` (GET ``?q=`` for links, POST from the form for reports of any
length), and one case in full at ``/cases/{id}``.

A page shows the search document the API returns (``SearchOutcome.to_json``), checked by
the API's own request model, so the web, the API and the CLI answer alike. Failures are
raised, not rendered here: the API's handlers word them and :mod:`api.web.errors` turns
them into pages.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from api import schemas
from api.app import ApiError
from kb.errors import NotFoundError
from kb.querytext import shown

from .render import page

router = APIRouter(include_in_schema=False)

DEFAULT_K = 5
CHOICES_K = (3, 5, 10, 20)
CASE_ID = re.compile(r"^[A-Za-z0-9._-]{1,120}$")  # as the API's /v1/cases/{case_id}
LINK_MAX = 2000  # a results link longer than this is not offered (browsers and proxies cut long URLs)
QUERY_STATE = "kbq_web_query"  # where a page leaves the query for its error page


def is_page(path: str) -> bool:
    """Whether ``path`` is one of these pages (whose errors are shown as pages)."""
    return path == "/" or path.startswith("/cases/")


@router.get("/")
async def search_link(request: Request) -> HTMLResponse:
    """The search page; with ``?q=`` (and ``&k=``), its results."""
    if "q" not in request.query_params:
        return page(request, "search.html", title="kbq", query="", k=DEFAULT_K, choices=CHOICES_K, result=None, error=None)
    return await _results(request, request.query_params["q"], request.query_params.get("k"))


@router.post("/")
async def search_form(request: Request) -> HTMLResponse:
    """The form's search: a POST body has no length limit but the API's, where a URL does."""
    try:
        fields = dict(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "the form is not valid UTF-8") from None
    return await _results(request, fields.get("q"), fields.get("k"))


async def _results(request: Request, query: str | None, k: str | None) -> HTMLResponse:
    setattr(request.state, QUERY_STATE, query or "")  # for the error page, should this fail
    try:
        asked = schemas.QueryRequest.model_validate({"query": query, "top_k": DEFAULT_K if k is None else k})
    except ValidationError as err:  # worded by the API's handler, as for POST /v1/query
        raise RequestValidationError(err.errors()) from None
    outcome = await run_in_threadpool(request.app.state.kb.search, asked.query, asked.top_k)
    result = outcome.to_json()
    link = "/?" + urlencode({"q": asked.query, **({} if asked.top_k == DEFAULT_K else {"k": asked.top_k})}) + "#results"
    return page(request, "search.html", title=f"{shown(asked.query, one_line=True)[:60]} · kbq", query=asked.query,
                k=asked.top_k, choices=sorted({*CHOICES_K, asked.top_k}), result=result, view=sections(result),
                share=link if len(link) <= LINK_MAX else None, error=None)


def sections(result: dict[str, Any]) -> dict[str, Any]:
    """How the results read, as the CLI tells them: confident cases in full and the others in
    brief; with none confident but no abstention, the best one in full as a possible match."""
    hits = result["results"]
    full = [hit for hit in hits if hit["confident"]]
    brief = [hit for hit in hits if not hit["confident"]]
    if not hits:
        kind = "empty"
    elif result["abstained"]:
        kind = "abstained"
    elif full:
        kind = "confident"
    else:
        kind = "possible"
        full, brief = brief[:1], brief[1:]
    return {"kind": kind, "full": full, "brief": brief}


@router.get("/cases/{case_id:path}")
def case_page(request: Request, case_id: str) -> HTMLResponse:
    """One case in full; an id that cannot exist is as unknown as one that does not."""
    if not CASE_ID.match(case_id):
        shown_id = shown(case_id, one_line=True)
        raise NotFoundError(f"no case with id '{shown_id[:120]}{'…' if len(shown_id) > 120 else ''}'")
    case = request.app.state.kb.get(case_id)
    return page(request, "case.html", title=f"{shown(case['title'], one_line=True)} · kbq", case=case)
