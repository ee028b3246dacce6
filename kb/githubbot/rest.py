"""The GitHub REST calls the bot makes: read an issue, list its comments, comment on it.

The standard library's ``urllib`` is enough for three JSON calls; each has a
timeout, since a webhook answer that waits on a hung connection helps nobody.
Every failure, HTTP or network, becomes one :class:`GitHubError` line.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import quote, urlsplit

from .. import __version__
from ..errors import KbqError
from .issue import Issue, IssueRef

API_URL_ENV = "KBQ_GITHUB_API_URL"
TOKEN_ENV = "KBQ_GITHUB_TOKEN"
DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
PAGE_SIZE = 100  # the most GitHub gives per page
MAX_RESPONSE_BYTES = 16 << 20


class GitHubError(KbqError):
    """GitHub's API answered with an error, or could not be reached. ``status`` is its HTTP
    status (None for a network failure)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ConfigError(KbqError):
    """The bot's environment variables are missing or wrong."""


@dataclass(frozen=True)
class Comment:
    id: int
    url: str
    body: str


def api_url_from_env(environ: dict[str, str] | None = None) -> str:
    """``KBQ_GITHUB_API_URL`` (GitHub Enterprise: ``https://HOST/api/v3``), else api.github.com."""
    raw = ((environ if environ is not None else os.environ).get(API_URL_ENV) or "").strip() or DEFAULT_API_URL
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"{API_URL_ENV} must be an http(s) URL such as {DEFAULT_API_URL}, got {raw[:200]!r}")
    return raw.rstrip("/")


def token_from_env(environ: dict[str, str] | None = None) -> str | None:
    """``KBQ_GITHUB_TOKEN``, white space around it dropped (a secret file adds a newline)."""
    return ((environ if environ is not None else os.environ).get(TOKEN_ENV) or "").strip() or None


class GitHubClient:
    """Calls to ``api_url`` as the holder of ``token`` (None: anonymous, reading public issues only)."""

    def __init__(self, api_url: str, token: str | None, timeout: float):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def issue(self, ref: IssueRef) -> Issue:
        data = self._call("GET", _issue_path(ref), what=f"reading issue {ref}")
        title, body, url = data.get("title"), data.get("body"), data.get("html_url")
        if not isinstance(title, str) or not (body is None or isinstance(body, str)):
            raise GitHubError(f"GitHub's answer for issue {ref} has no title and body; is {self.api_url} a GitHub API?")
        return Issue(ref, title, body or "", url if isinstance(url, str) else None)

    def comments(self, ref: IssueRef, max_pages: int) -> Iterator[Comment]:
        """The issue's comments, oldest first, up to ``max_pages`` pages of 100."""
        for page in range(1, max_pages + 1):
            items = self._call("GET", f"{_issue_path(ref)}/comments?per_page={PAGE_SIZE}&page={page}",
                               what=f"listing the comments of {ref}")
            if not isinstance(items, list):
                raise GitHubError(f"GitHub's answer listing the comments of {ref} is not a list")
            for item in items:
                if isinstance(item, dict):
                    found = _comment(item)
                    if found is not None:
                        yield found
            if len(items) < PAGE_SIZE:
                return

    def comment(self, ref: IssueRef, body: str) -> Comment:
        """Post ``body`` as a comment on the issue."""
        data = self._call("POST", f"{_issue_path(ref)}/comments", {"body": body}, what=f"commenting on {ref}")
        found = _comment(data) if isinstance(data, dict) else None
        if found is None:
            raise GitHubError(f"GitHub accepted the comment on {ref} but its answer has no comment id and URL")
        return found

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None, *, what: str) -> Any:
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION,
                   "User-Agent": f"kbq/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if payload is not None:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json; charset=utf-8"
        request = urllib.request.Request(self.api_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as err:
            raise GitHubError(f"{what}: GitHub answered {err.code}{_reason(err)}", err.code) from None
        except (urllib.error.URLError, OSError) as err:  # refused, reset, DNS, timeout
            reason = getattr(err, "reason", None) or err
            raise GitHubError(f"{what}: cannot reach {self.api_url}: {' '.join(str(reason).split())}") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise GitHubError(f"{what}: GitHub's answer is larger than {MAX_RESPONSE_BYTES} bytes")
        try:
            return json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise GitHubError(f"{what}: GitHub's answer is not JSON") from None


def _issue_path(ref: IssueRef) -> str:
    return f"/repos/{quote(ref.owner, safe='')}/{quote(ref.repo, safe='')}/issues/{ref.number}"


def _comment(data: dict[str, Any]) -> Comment | None:
    comment_id, url, body = data.get("id"), data.get("html_url"), data.get("body")
    if not isinstance(comment_id, int) or isinstance(comment_id, bool) or not 0 < comment_id < 2**63 or not isinstance(url, str):
        return None
    return Comment(comment_id, url, body if isinstance(body, str) else "")


def _reason(err: urllib.error.HTTPError) -> str:
    """GitHub's own one-line ``message`` from an error body, when it sent one."""
    try:
        message = json.loads(err.read(65536).decode("utf-8")).get("message")
    except Exception:  # noqa: BLE001 - the status alone still says what happened
        message = None
    return f": {' '.join(message.split())[:300]}" if isinstance(message, str) and message.strip() else ""
