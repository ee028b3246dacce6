"""A stand-in for GitHub's REST API on a loopback port, for the issue bot's tests.

It serves the issues it is given, lists and records comments, checks the headers
GitHub requires (a bearer token for writes, the JSON media type, the API
version), and can be told to fail the next comment posts with a status of choice.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_ISSUE = re.compile(r"^/repos/([^/]+)/([^/]+)/issues/(\d+)(/comments)?$")


@dataclass
class Posted:
    repo: str
    number: int
    body: str
    id: int
    url: str


@dataclass
class FakeGitHub:
    token: str
    issues: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    comments: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)
    posted: list[Posted] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # header names in lower case
    failures: list[int] = field(default_factory=list)  # statuses for the next comment posts
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_id: int = 3_000_000_000  # above 2**31, as GitHub's comment ids are

    def add_issue(self, repo: str, number: int, title: str, body: str | None) -> None:
        with self.lock:
            self.issues[(repo.lower(), number)] = {
                "number": number, "title": title, "body": body, "state": "open",
                "html_url": f"https://github.com/{repo}/issues/{number}"}

    def fail_next_posts(self, count: int, status: int = 500) -> None:
        with self.lock:
            self.failures.extend([status] * count)

    def add_comment(self, repo: str, number: int, body: str) -> Posted:
        """A comment that exists on GitHub without the bot having recorded it (posted before a crash)."""
        with self.lock:
            return self._store_comment(repo, number, body)

    def posts_to(self, repo: str, number: int) -> list[Posted]:
        with self.lock:
            return [p for p in self.posted if p.repo == repo.lower() and p.number == number]

    def _store_comment(self, repo: str, number: int, body: str) -> Posted:
        self.next_id += 1
        url = f"https://github.com/{repo}/issues/{number}#issuecomment-{self.next_id}"
        self.comments.setdefault((repo.lower(), number), []).append({"id": self.next_id, "html_url": url, "body": body})
        posted = Posted(repo.lower(), number, body, self.next_id, url)
        self.posted.append(posted)
        return posted


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGitHub

    def log_message(self, *_: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        fake = self.fake
        parts = urlsplit(self.path)
        with fake.lock:
            fake.requests.append((method, self.path, {k.lower(): v for k, v in self.headers.items()}))
        found = _ISSUE.match(parts.path)
        if not found:
            return self._send(404, {"message": "Not Found"})
        if self.headers.get("Accept") != "application/vnd.github+json" or self.headers.get("X-GitHub-Api-Version") != "2022-11-28":
            return self._send(400, {"message": "missing the GitHub media type or API version headers"})
        auth = self.headers.get("Authorization")
        if auth is not None and auth != f"Bearer {fake.token}":
            return self._send(401, {"message": "Bad credentials"})
        repo, number = f"{found.group(1)}/{found.group(2)}".lower(), int(found.group(3))
        with fake.lock:
            issue = fake.issues.get((repo, number))
        if issue is None:
            return self._send(404, {"message": "Not Found"})
        if not found.group(4):
            return self._send(200, issue) if method == "GET" else self._send(405, {"message": "no"})
        if method == "GET":
            query = parse_qs(parts.query)
            size, page = int(query.get("per_page", ["30"])[0]), int(query.get("page", ["1"])[0])
            with fake.lock:
                items = list(fake.comments.get((repo, number), []))
            return self._send(200, items[(page - 1) * size: page * size])
        if auth is None:
            return self._send(401, {"message": "Requires authentication"})
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length).decode("utf-8"))
        with fake.lock:
            if fake.failures:
                status = fake.failures.pop(0)
                return self._send(status, {"message": "Server Error"})
            posted = fake._store_comment(repo, number, body["body"])
        return self._send(201, {"id": posted.id, "html_url": posted.url, "body": posted.body})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")


class FakeGitHubServer:
    """``with FakeGitHubServer(token) as github:`` serves ``github.fake`` at ``github.url``."""

    def __init__(self, token: str):
        self.fake = FakeGitHub(token)
        handler = type("Handler", (_Handler,), {"fake": self.fake})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-github", daemon=True)

    def __enter__(self) -> "FakeGitHubServer":
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
