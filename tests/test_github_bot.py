"""The GitHub issue bot, end to end: a real ``kbq serve`` receiving signed webhook deliveries,
commenting through a stand-in for GitHub's REST API on a loopback port (tests/fake_github.py),
on a SQLite file and on PostgreSQL. Then ``kbq github answer``, the answer record on its own,
and the pieces (signature, delivery parsing, the comment's Markdown) as fast unit tests.

The issue texts are written for these tests from the cases' content, in other words.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from fake_github import FakeGitHubServer
from serving import base_env, free_port, kbq, served_database, start, stop

from kb.db import migrate
from kb.db.github_answers import GitHubAnswerStore
from kb.errors import DatabaseError, UsageError
from kb.githubbot.issue import MAX_ISSUE_NUMBER, Issue, IssueRef, parse_ref, search_text
from kb.githubbot.webhook import Ignored, IssueOpened, PayloadError, Ping, read_delivery, signature, verify
from kb.querytext import MAX_QUERY_CHARS

SECRET = f"webhook-secret-{secrets.token_hex(8)}"
TOKEN = f"ghp_{secrets.token_hex(12)}"
REPO = "kbq-tests/Trainer"
BOT_ENV = ("KBQ_GITHUB_WEBHOOK_SECRET", "KBQ_GITHUB_TOKEN", "KBQ_GITHUB_API_URL")

# deepspeed-5242, told as a new reporter would tell it.
NAN_TITLE = "grad_norm turns NaN at the second step since moving to deepspeed 0.13.5"
NAN_BODY = """We continue pretraining Baichuan2 7B base on our own corpus with the Hugging Face Trainer and DeepSpeed.
After upgrading deepspeed to 0.13.5, every run logs {'loss': 0.0, 'grad_norm': nan} from step 2 onwards.
Nothing else changed; with deepspeed 0.12.3 the same script trains normally.
Learning rate 2e-5, cosine schedule. Is this a known regression?"""
NAN_CASE = "deepspeed-5242"

# chatglm2-6b-113, in Chinese.
ZH_TITLE = "ChatGLM2 微调完生成停不下来，一直重复"
ZH_BODY = """用最新版本的 chatglm2-6b tokenizer 做完 SFT 以后，模型回答的时候会不停地重复同一句话，一直不结束。
检查了一下，tokenizer 的 pad_token_id 和 eos_token_id 居然是同一个值，请问是不是这个导致的？"""
ZH_CASE = "chatglm2-6b-113"

# Nothing to do with training.
DOCS_TITLE = "Typo in README: 'recieve' should be 'receive'"
DOCS_BODY = "The installation section of the README spells receive wrong. A one-letter docs fix."

_NUMBERS = itertools.count(100)


def _number() -> int:
    return next(_NUMBERS)


def _opened(number: int, title: str, body: str | None, repo: str = REPO) -> dict[str, Any]:
    owner, name = repo.split("/")
    return {
        "action": "opened",
        "issue": {"number": number, "title": title, "body": body, "state": "open", "user": {"login": "reporter", "type": "User"},
                  "html_url": f"https://github.com/{repo}/issues/{number}", "labels": [], "comments": 0},
        "repository": {"full_name": repo, "name": name, "owner": {"login": owner}, "private": False},
        "sender": {"login": "reporter", "type": "User"},
    }


def _error(response: httpx.Response) -> dict[str, str]:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert "\n" not in body["error"]["message"]
    return body["error"]


# -- the server ---------------------------------------------------------------------------------

@dataclass
class Bot:
    kind: str
    url: str
    db: str
    home: Path
    env: dict[str, str]
    github: FakeGitHubServer
    base: Path

    @property
    def fake(self):
        return self.github.fake

    def deliver(self, event: str, payload: Any, delivery: str | None = None, *, sign: str | None = SECRET,
                headers: dict[str, str] | None = None, url: str | None = None) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
                "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/test"}
        if sign is not None:
            sent["X-Hub-Signature-256"] = signature(sign, body)
        sent.update(headers or {})
        return httpx.post(f"{url or self.url}/v1/github/webhook", content=body, headers=sent, timeout=120)

    def add_issue(self, title: str, body: str | None) -> int:
        number = _number()
        self.fake.add_issue(REPO, number, title, body)
        return number

    def store(self) -> GitHubAnswerStore:
        return GitHubAnswerStore(self.db)


def _bot_env(home: Path, api_url: str, **changes: str | None) -> dict[str, str]:
    env = base_env(home, KBQ_GITHUB_WEBHOOK_SECRET=SECRET, KBQ_GITHUB_TOKEN=TOKEN, KBQ_GITHUB_API_URL=api_url)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def bot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    base = tmp_path_factory.mktemp(f"github-bot-{request.param}")
    home = base / "home"
    home.mkdir()
    with served_database(request.param, base) as db, FakeGitHubServer(TOKEN) as github:
        env = _bot_env(home, github.url)
        ingest = kbq(env, "ingest", "--db", db)
        assert ingest.returncode == 0, ingest.stderr
        proc, port = start(env, db, base / "serve.log")
        try:
            yield Bot(request.param, f"http://127.0.0.1:{port}", db, home, env, github, base)
        finally:
            stop(proc)


# -- the webhook --------------------------------------------------------------------------------

def test_opened_issue_gets_one_comment_with_the_matching_case(bot: Bot) -> None:
    number = bot.add_issue(NAN_TITLE, NAN_BODY)
    delivery = str(uuid.uuid4())
    response = bot.deliver("issues", _opened(number, NAN_TITLE, NAN_BODY), delivery)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "posted" and answer["issue"] == f"{REPO}#{number}" and answer["cases"][0] == NAN_CASE
    [posted] = bot.fake.posts_to(REPO, number)
    assert answer["comment_url"] == posted.url
    assert posted.body.startswith(f"<!-- kbq-bot issue={REPO}#{number} cases={NAN_CASE}")
    assert f"`{NAN_CASE}`" in posted.body and "Automated suggestion by kbq" in posted.body
    assert "https://github.com/deepspeedai/DeepSpeed/issues/5242" in posted.body  # the case's source
    assert "Why it matches" in posted.body and "Fixes confirmed to work" in posted.body
    assert "Pin deepspeed to 0.12.3" in posted.body  # the case's confirmed fix
    # GitHub's REST conventions: the bearer token, its media type and API version.
    [(_, path, headers)] = [r for r in bot.fake.requests if r[0] == "POST" and r[1].endswith(f"/issues/{number}/comments")]
    assert path == f"/repos/{REPO}/issues/{number}/comments"
    assert headers["authorization"] == f"Bearer {TOKEN}" and headers["user-agent"].startswith("kbq/")
    assert headers["accept"] == "application/vnd.github+json" and headers["x-github-api-version"] == "2022-11-28"
    with bot.store() as store:
        recorded = store.answer(REPO, number)
        assert recorded.posted and recorded.comment_id == posted.id and recorded.comment_url == posted.url
        assert recorded.case_ids == answer["cases"] and recorded.delivery_id == delivery
        assert store.delivery(delivery).outcome == "posted"


def test_redelivery_and_a_second_delivery_post_nothing_more(bot: Bot) -> None:
    number = bot.add_issue(NAN_TITLE, NAN_BODY)
    payload = _opened(number, NAN_TITLE, NAN_BODY)
    delivery = str(uuid.uuid4())
    assert bot.deliver("issues", payload, delivery).json()["status"] == "posted"
    again = bot.deliver("issues", payload, delivery)  # GitHub's "Redeliver": the same delivery id
    assert again.status_code == 200 and again.json()["status"] == "duplicate_delivery", again.text
    other = bot.deliver("issues", payload)  # another delivery of the same issue
    assert other.status_code == 200 and other.json()["status"] == "already_answered", other.text
    assert other.json()["comment_url"] == bot.fake.posts_to(REPO, number)[0].url
    assert len(bot.fake.posts_to(REPO, number)) == 1


def test_concurrent_deliveries_for_one_issue_post_once(bot: Bot) -> None:
    number = bot.add_issue(NAN_TITLE, NAN_BODY)
    payload = _opened(number, NAN_TITLE, NAN_BODY)
    answers: list[httpx.Response] = []
    gate = threading.Barrier(4)

    def send() -> None:
        gate.wait()
        answers.append(bot.deliver("issues", payload))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(bot.fake.posts_to(REPO, number)) == 1
    statuses = sorted(r.json().get("status") or r.json()["error"]["code"] for r in answers)
    assert statuses.count("posted") == 1, statuses
    assert set(statuses) <= {"posted", "already_answered", "in_progress"}, statuses
    assert all(r.status_code in (200, 409) for r in answers)


@pytest.mark.parametrize("headers", [{"X-Hub-Signature-256": "sha256=" + "0" * 64}, {"X-Hub-Signature-256": "sha256=nothex"},
                                     {"X-Hub-Signature-256": ""}, None], ids=["wrong", "garbage", "empty", "other-secret"])
def test_bad_signature_is_401_and_nothing_is_done(bot: Bot, headers: dict[str, str] | None) -> None:
    number = bot.add_issue(NAN_TITLE, NAN_BODY)
    payload = _opened(number, NAN_TITLE, NAN_BODY)
    delivery = str(uuid.uuid4())
    before = len(bot.fake.requests)
    response = bot.deliver("issues", payload, delivery, sign="not-the-secret" if headers is None else SECRET, headers=headers)
    assert response.status_code == 401, response.text
    assert _error(response)["code"] == "invalid_signature"
    assert len(bot.fake.requests) == before, "an unsigned delivery must not reach GitHub"
    with bot.store() as store:
        assert store.delivery(delivery) is None and store.answer(REPO, number) is None
    # Nothing was stored: the same delivery, signed, is answered as new.
    assert bot.deliver("issues", payload, delivery).json()["status"] == "posted"


def test_missing_signature_is_401(bot: Bot) -> None:
    number = bot.add_issue(NAN_TITLE, NAN_BODY)
    response = bot.deliver("issues", _opened(number, NAN_TITLE, NAN_BODY), sign=None)
    assert response.status_code == 401 and "X-Hub-Signature-256" in _error(response)["message"]
    # the body signed but a byte changed on the way is refused too
    body = json.dumps(_opened(number, NAN_TITLE, NAN_BODY)).encode()
    tampered = bot.deliver("issues", body.replace(b"Baichuan2", b"Baichuan3"),
                           headers={"X-Hub-Signature-256": signature(SECRET, body)}, sign=None)
    assert tampered.status_code == 401
    assert bot.fake.posts_to(REPO, number) == []


def test_unrelated_issue_gets_no_comment(bot: Bot) -> None:
    number = bot.add_issue(DOCS_TITLE, DOCS_BODY)
    delivery = str(uuid.uuid4())
    response = bot.deliver("issues", _opened(number, DOCS_TITLE, DOCS_BODY), delivery)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "not_confident" and "not confident" in answer["message"] and answer["comment_url"] is None
    assert bot.fake.posts_to(REPO, number) == []
    with bot.store() as store:
        assert store.answer(REPO, number) is None and store.delivery(delivery).outcome == "not_confident"


def test_github_error_on_the_post_is_502_and_a_redelivery_posts_once(bot: Bot) -> None:
    number = bot.add_issue(NAN_TITLE, NAN_BODY)
    payload = _opened(number, NAN_TITLE, NAN_BODY)
    delivery = str(uuid.uuid4())
    bot.fake.fail_next_posts(1, 500)
    failed = bot.deliver("issues", payload, delivery)
    assert failed.status_code == 502, failed.text
    error = _error(failed)
    assert error["code"] == "github_error" and "500" in error["message"] and "redeliver" in error["message"]
    assert bot.fake.posts_to(REPO, number) == []
    with bot.store() as store:
        assert store.answer(REPO, number) is None, "the claim is released"
        assert store.delivery(delivery) is None, "the delivery is not counted as handled"
    bot.fake.fail_next_posts(1, 502)
    assert bot.deliver("issues", payload, delivery).status_code == 502
    redelivered = bot.deliver("issues", payload, delivery)
    assert redelivered.status_code == 200 and redelivered.json()["status"] == "posted", redelivered.text
    assert bot.deliver("issues", payload, delivery).json()["status"] == "duplicate_delivery"
    assert len(bot.fake.posts_to(REPO, number)) == 1


def test_an_answer_posted_but_never_recorded_is_not_posted_again(bot: Bot) -> None:
    """A process that died between GitHub's 201 and the database record left a comment with the
    marker and a stale claim at most: the next delivery finds the comment and records it."""
    number = bot.add_issue(NAN_TITLE, NAN_BODY)
    earlier = bot.fake.add_comment(REPO, number, f"<!-- kbq-bot issue={REPO}#{number} cases={NAN_CASE} -->\nearlier answer")
    response = bot.deliver("issues", _opened(number, NAN_TITLE, NAN_BODY))
    assert response.status_code == 200 and response.json()["status"] == "already_answered", response.text
    assert bot.fake.posts_to(REPO, number) == [earlier]
    with bot.store() as store:
        recorded = store.answer(REPO, number)
        assert recorded.posted and recorded.comment_id == earlier.id


def test_chinese_issue_gets_a_chinese_comment(bot: Bot) -> None:
    number = bot.add_issue(ZH_TITLE, ZH_BODY)
    response = bot.deliver("issues", _opened(number, ZH_TITLE, ZH_BODY))
    assert response.status_code == 200 and response.json()["status"] == "posted", response.text
    [posted] = bot.fake.posts_to(REPO, number)
    assert f"cases={ZH_CASE}" in posted.body.splitlines()[0]
    for chinese in ("可能是已知问题", "匹配原因", "自动给出的建议"):
        assert chinese in posted.body
    assert "Why it matches" not in posted.body and "Automated suggestion" not in posted.body


def test_ping_and_events_the_bot_does_not_handle(bot: Bot) -> None:
    pong = bot.deliver("ping", {"zen": "Keep it logically awesome.", "hook_id": 1, "hook": {"events": ["issues"]}})
    assert pong.status_code == 200 and pong.json()["status"] == "pong" and "does not send" not in pong.json()["message"]
    pushes_only = bot.deliver("ping", {"zen": "Design for failure.", "hook": {"events": ["push"]}})
    assert pushes_only.status_code == 200 and "enable them" in pushes_only.json()["message"]
    number = bot.add_issue(NAN_TITLE, NAN_BODY)
    closed = {**_opened(number, NAN_TITLE, NAN_BODY), "action": "closed"}
    for event, payload in (("issues", closed), ("push", {"ref": "refs/heads/main"}),
                           ("issue_comment", {**_opened(number, NAN_TITLE, NAN_BODY), "action": "created"})):
        ignored = bot.deliver(event, payload)
        assert ignored.status_code == 200 and ignored.json()["status"] == "ignored", ignored.text
    assert bot.fake.posts_to(REPO, number) == []


@pytest.mark.parametrize("body,status,where", [
    (b"{not json", 400, "not JSON"),
    (b"payload=%7B%7D", 400, "application/json"),  # a webhook left at the form content type
    (b"[1, 2]", 400, "JSON object"),
    (b"\xff\xfe", 400, "UTF-8"),
    (json.dumps({"action": "opened"}).encode(), 422, "'issue'"),
    (json.dumps({"action": "opened", "issue": {"number": "7", "title": "t"}, "repository": {"full_name": REPO}}).encode(),
     422, "'issue.number'"),
    (json.dumps({"action": "opened", "issue": {"number": 2**40, "title": "t"}, "repository": {"full_name": REPO}}).encode(),
     422, "'issue.number'"),
    (json.dumps({"action": "opened", "issue": {"number": 7, "title": "  "}, "repository": {"full_name": REPO}}).encode(),
     422, "'issue.title'"),
    (json.dumps({"action": "opened", "issue": {"number": 7, "title": "t", "body": 5}, "repository": {"full_name": REPO}}).encode(),
     422, "'issue.body'"),
    (json.dumps({"action": "opened", "issue": {"number": 7, "title": "t"}, "repository": {"full_name": "no-slash"}}).encode(),
     422, "'repository.full_name'"),
    (json.dumps({"issue": {}}).encode(), 422, "'action'"),
], ids=["broken", "form", "array", "binary", "no-issue", "number-text", "number-huge", "blank-title", "body-number",
        "repo-name", "no-action"])
def test_malformed_deliveries_are_a_one_line_4xx(bot: Bot, body: bytes, status: int, where: str) -> None:
    before = len(bot.fake.requests)
    response = bot.deliver("issues", body)
    assert response.status_code == status, response.text
    error = _error(response)
    assert error["code"] == "invalid_payload" and where in error["message"]
    assert len(bot.fake.requests) == before


def test_missing_event_or_delivery_header_is_400(bot: Bot) -> None:
    number = bot.add_issue(NAN_TITLE, NAN_BODY)
    body = json.dumps(_opened(number, NAN_TITLE, NAN_BODY)).encode()
    signed = {"X-Hub-Signature-256": signature(SECRET, body), "Content-Type": "application/json"}
    no_event = httpx.post(f"{bot.url}/v1/github/webhook", content=body, headers={**signed, "X-GitHub-Delivery": "d"})
    assert no_event.status_code == 400 and "X-GitHub-Event" in _error(no_event)["message"]
    no_delivery = httpx.post(f"{bot.url}/v1/github/webhook", content=body, headers={**signed, "X-GitHub-Event": "issues"})
    assert no_delivery.status_code == 400 and "X-GitHub-Delivery" in _error(no_delivery)["message"]
    assert bot.fake.posts_to(REPO, number) == []


def test_server_without_the_secret_keeps_the_bot_off(bot: Bot) -> None:
    if bot.kind != "sqlite":
        pytest.skip("the same check on the other backend adds nothing")
    env = _bot_env(bot.home, bot.github.url, KBQ_GITHUB_WEBHOOK_SECRET=None)
    proc, port = start(env, bot.db, bot.base / "serve-no-secret.log")
    try:
        number = bot.add_issue(NAN_TITLE, NAN_BODY)
        url = f"http://127.0.0.1:{port}"
        for sign in (SECRET, None, ""):
            response = bot.deliver("issues", _opened(number, NAN_TITLE, NAN_BODY), sign=sign, url=url)
            assert response.status_code == 403, response.text
            error = _error(response)
            assert error["code"] == "github_bot_disabled" and "KBQ_GITHUB_WEBHOOK_SECRET" in error["message"]
        assert bot.deliver("ping", {"zen": "z"}, url=url).status_code == 403
        assert bot.fake.posts_to(REPO, number) == []
    finally:
        stop(proc)


def test_without_a_token_the_bot_says_so(bot: Bot, monkeypatch: pytest.MonkeyPatch) -> None:
    """Signed deliveries reach it, but it cannot comment: 503 naming the variable, nothing searched or stored."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from kb.service import KnowledgeBase

    monkeypatch.setenv("KBQ_GITHUB_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("KBQ_GITHUB_API_URL", bot.github.url)
    monkeypatch.delenv("KBQ_GITHUB_TOKEN", raising=False)
    number = bot.add_issue(NAN_TITLE, NAN_BODY)
    body = json.dumps(_opened(number, NAN_TITLE, NAN_BODY)).encode()
    delivery = str(uuid.uuid4())
    with TestClient(create_app(KnowledgeBase(db=bot.db, home=bot.home))) as client:
        response = client.post("/v1/github/webhook", content=body, headers={
            "X-GitHub-Event": "issues", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signature(SECRET, body)})
    assert response.status_code == 503, response.text
    assert "KBQ_GITHUB_TOKEN" in _error(response)["message"]
    with bot.store() as store:
        assert store.delivery(delivery) is None
    assert bot.fake.posts_to(REPO, number) == []


def test_signed_garbage_is_never_a_5xx(bot: Bot, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything GitHub could be made to sign (a leaked secret, a buggy proxy) gets a 2xx or a 4xx."""
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from api.app import create_app
    from kb.service import KnowledgeBase

    monkeypatch.setenv("KBQ_GITHUB_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("KBQ_GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("KBQ_GITHUB_API_URL", bot.github.url)
    monkeypatch.setenv("KBQ_SEMANTIC", "0")  # thousands of searches; the ranking stages do not matter here
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
    values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                          max_leaves=15)
    issues = st.fixed_dictionaries({"number": st.integers(min_value=-5, max_value=2**40) | values,
                                    "title": st.text(max_size=80) | values, "body": st.none() | st.text(max_size=300) | values})
    payloads = values | st.fixed_dictionaries({
        "action": st.sampled_from(["opened", "closed"]) | values, "issue": issues | values,
        "repository": st.fixed_dictionaries({"full_name": st.sampled_from([REPO, "a/b", "/", "x/y/z"]) | st.text(max_size=30)}) | values})
    bodies = payloads.map(lambda p: json.dumps(p).encode()) | st.binary(max_size=300)
    events = st.sampled_from(["issues", "ping", "push"]) | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=12)
    seen: list[int] = []
    kb = KnowledgeBase(db=bot.db, home=bot.home)
    before = len(bot.fake.posted)
    with TestClient(create_app(kb)) as client:
        @given(body=bodies, event=events)
        @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def exercise(body: bytes, event: str) -> None:
            response = client.post("/v1/github/webhook", content=body, headers={
                "X-GitHub-Event": event, "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": signature(SECRET, body)})
            seen.append(response.status_code)
            assert response.status_code < 500, (response.status_code, response.text, body[:200])
            if response.status_code >= 400:
                _error(response)

        exercise()
    assert any(code < 300 for code in seen) and any(400 <= code < 500 for code in seen), sorted(set(seen))
    assert len(bot.fake.posted) == before, "made-up text is never confident enough to comment on"


def test_network_failure_releases_the_claim(bot: Bot) -> None:
    """GitHub unreachable (nothing listens on the port): GitHubError, and the issue can be claimed again."""
    from kb.githubbot.answer import IssueBot
    from kb.githubbot.rest import GitHubClient, GitHubError
    from kb.service import KnowledgeBase

    number = bot.add_issue(NAN_TITLE, NAN_BODY)
    issue = Issue(IssueRef(*REPO.split("/"), number), NAN_TITLE, NAN_BODY)
    closed = f"http://127.0.0.1:{free_port()}"
    issue_bot = IssueBot(KnowledgeBase(db=bot.db, home=bot.home), GitHubClient(closed, TOKEN, timeout=5))
    with pytest.raises(GitHubError, match="cannot reach"):
        issue_bot.answer(issue, "network-" + uuid.uuid4().hex)
    with bot.store() as store:
        assert store.answer(REPO, number) is None
    assert bot.deliver("issues", _opened(number, NAN_TITLE, NAN_BODY)).json()["status"] == "posted"


# -- kbq github answer ----------------------------------------------------------------------------

def test_cli_previews_then_posts_once(bot: Bot) -> None:
    number = bot.add_issue(NAN_TITLE, NAN_BODY)
    preview = kbq(bot.env, "github", "answer", f"{REPO}#{number}", "--db", bot.db)
    assert preview.returncode == 0, preview.stderr
    assert preview.stdout.startswith(f"<!-- kbq-bot issue={REPO}#{number} cases={NAN_CASE}") and f"`{NAN_CASE}`" in preview.stdout
    assert bot.fake.posts_to(REPO, number) == [], "a preview posts nothing"

    url = f"https://github.com/{REPO}/issues/{number}"
    posted = kbq(bot.env, "github", "answer", url, "--post", "--db", bot.db)
    assert posted.returncode == 0, posted.stderr
    [comment] = bot.fake.posts_to(REPO, number)
    assert comment.body == posted.stdout and comment.url in posted.stderr
    assert posted.stdout == preview.stdout

    again = kbq(bot.env, "github", "answer", f"{REPO.lower()}#{number}", "--post", "--db", bot.db)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and again.stderr.startswith("kbq: error: not posting again") and comment.url in again.stderr
    # the webhook keeps the same record
    assert bot.deliver("issues", _opened(number, NAN_TITLE, NAN_BODY)).json()["status"] == "already_answered"
    assert len(bot.fake.posts_to(REPO, number)) == 1
    noted = kbq(bot.env, "github", "answer", f"{REPO}#{number}", "--db", bot.db)
    assert noted.returncode == 0 and "already has kbq's answer" in noted.stderr


def test_cli_not_confident_says_why(bot: Bot) -> None:
    number = bot.add_issue(DOCS_TITLE, DOCS_BODY)
    for extra in ((), ("--post",)):
        result = kbq(bot.env, "github", "answer", f"{REPO}#{number}", *extra, "--db", bot.db)
        assert result.returncode == 0, result.stderr
        assert "not confident" in result.stdout and result.stdout.count("\n") == 1
    assert bot.fake.posts_to(REPO, number) == []


@pytest.mark.parametrize("given", ["kbq-tests/Trainer", "Trainer#3", "kbq-tests/Trainer#x", "kbq-tests/Trainer#0",
                                   "kbq-tests/Trainer#99999999999", "https://github.com/kbq-tests/Trainer/issues/",
                                   "https://gitlab.com/kbq-tests/Trainer/issues/3", "b@d/Trainer#3", "a/b#1 extra"])
def test_cli_bad_issue_reference_is_a_usage_error(bot: Bot, given: str) -> None:
    result = kbq(bot.env, "github", "answer", given, "--db", bot.db)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "not an issue reference" in result.stderr and "OWNER/REPO#NUMBER" in result.stderr
    assert result.stdout == ""


def test_cli_errors_are_one_line(bot: Bot) -> None:
    number = bot.add_issue(NAN_TITLE, NAN_BODY)
    no_token = {k: v for k, v in bot.env.items() if k != "KBQ_GITHUB_TOKEN"}
    cases = [
        (no_token, [f"{REPO}#{number}", "--post"], 2, "KBQ_GITHUB_TOKEN"),
        ({**bot.env, "KBQ_GITHUB_API_URL": f"http://127.0.0.1:{free_port()}"}, [f"{REPO}#{number}"], 1, "cannot reach"),
        ({**bot.env, "KBQ_GITHUB_API_URL": "file:///etc"}, [f"{REPO}#{number}"], 1, "KBQ_GITHUB_API_URL must be an http(s) URL"),
        (bot.env, [f"{REPO}#999999"], 1, "GitHub answered 404"),
        ({**bot.env, "KBQ_GITHUB_TOKEN": "wrong"}, [f"{REPO}#{number}"], 1, "GitHub answered 401: Bad credentials"),
    ]
    for env, args, code, message in cases:
        result = kbq(env, "github", "answer", *args, "--db", bot.db)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert bot.fake.posts_to(REPO, number) == []
    # reading a public issue needs no token
    anonymous = kbq(no_token, "github", "answer", f"{REPO}#{number}", "--db", bot.db)
    assert anonymous.returncode == 0 and f"cases={NAN_CASE}" in anonymous.stdout


# -- the answer record -----------------------------------------------------------------------------

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def answers(db_url: str) -> Iterator[GitHubAnswerStore]:
    migrate.upgrade(db_url)
    with GitHubAnswerStore(db_url) as store:
        yield store


def test_claim_release_complete(answers: GitHubAnswerStore) -> None:
    first = answers.claim("Owner/Repo", 1, "d1", lease_seconds=600, now=T0)
    assert first is not None
    assert answers.claim("owner/repo", 1, "d2", lease_seconds=600, now=T0) is None, "names ignore case, as GitHub's do"
    assert answers.claim("owner/repo", 2, "d2", lease_seconds=600, now=T0) is not None, "another issue is free"
    assert not answers.release("owner/repo", 1, "not-the-token")
    assert answers.release("owner/repo", 1, first)
    again = answers.claim("owner/repo", 1, "d3", lease_seconds=600, now=T0)
    assert again is not None and again != first
    assert not answers.complete("owner/repo", 1, first, comment_id=1, comment_url="u", case_ids=["c"], delivery_id="d1",
                                outcome="posted"), "a released claim cannot complete"
    assert answers.complete("owner/repo", 1, again, comment_id=2**40, comment_url="https://x/1", case_ids=["a", "b"],
                            delivery_id="d3", outcome="posted", now=T0)
    done = answers.answer("OWNER/REPO", 1)
    assert done.posted and done.comment_id == 2**40 and done.case_ids == ["a", "b"] and done.posted_at == T0
    assert answers.delivery("d3").outcome == "posted"
    assert answers.claim("owner/repo", 1, "d4", lease_seconds=0, now=T0 + timedelta(days=1)) is None, "answered stays answered"
    assert not answers.release("owner/repo", 1, again), "a posted answer is never released"


def test_stale_claim_is_taken_over_after_its_lease(answers: GitHubAnswerStore) -> None:
    dead = answers.claim("o/r", 5, "d1", lease_seconds=600, now=T0)
    assert answers.claim("o/r", 5, "d2", lease_seconds=600, now=T0 + timedelta(seconds=599)) is None
    taken = answers.claim("o/r", 5, "d2", lease_seconds=600, now=T0 + timedelta(seconds=601))
    assert taken is not None and taken != dead
    assert not answers.release("o/r", 5, dead), "the dead holder's token no longer counts"
    assert answers.answer("o/r", 5).delivery_id == "d2"


def test_deliveries_are_recorded_once(answers: GitHubAnswerStore) -> None:
    assert answers.record_delivery("abc", "o/r", 1, "not_confident", now=T0)
    assert not answers.record_delivery("abc", "o/r", 1, "posted")
    assert answers.delivery("abc").outcome == "not_confident" and answers.delivery("nope") is None


def test_concurrent_claims_have_one_winner(db_url: str) -> None:
    migrate.upgrade(db_url)
    won: list[str] = []
    gate = threading.Barrier(8)

    def claim(i: int) -> None:
        with GitHubAnswerStore(db_url, lock_timeout=30) as store:
            gate.wait()
            token = store.claim("race/repo", 9, f"d{i}", lease_seconds=600)
            if token:
                won.append(token)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1


def test_migration_0003_adds_and_drops_only_the_bot_tables(db_url: str) -> None:
    from dbtables import table_names
    from kb.db.interactions import InteractionStore

    bot_tables = {"github_answers", "github_deliveries"}
    assert migrate.upgrade(db_url, "0002") == "0002"
    with InteractionStore(db_url) as feedback, pytest.raises(DatabaseError, match=f"kbq needs {migrate.HEAD}"):
        feedback.list_feedback()
    assert not bot_tables & table_names(db_url)
    assert migrate.upgrade(db_url, "0003") == "0003"
    assert bot_tables <= table_names(db_url)
    assert migrate.upgrade(db_url) == migrate.HEAD  # the stores need the head schema
    with InteractionStore(db_url) as feedback:
        feedback.add_feedback("loss nan", "some-case", True)
    with GitHubAnswerStore(db_url) as store:
        store.record_delivery("d", "o/r", 1, "posted")
    assert migrate.downgrade(db_url, "0002") == "0002"
    assert not bot_tables & table_names(db_url) and {"cases", "feedback", "chat_sessions"} <= table_names(db_url)
    with GitHubAnswerStore(db_url) as store, pytest.raises(DatabaseError, match=f"is at schema 0002, kbq needs {migrate.HEAD}"):
        store.delivery("d")


# -- the pieces ------------------------------------------------------------------------------------

def test_signature_matches_githubs_documented_example() -> None:
    """GitHub's docs give this secret, payload and signature for checking an implementation."""
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signature("It's a Secret to Everybody", b"Hello, World!") == expected
    assert verify("It's a Secret to Everybody", b"Hello, World!", expected)


@pytest.mark.parametrize("secret,body,header", [
    ("s", b"{}", None), ("s", b"{}", ""), ("", b"{}", signature("", b"{}")), ("s", b"{} ", signature("s", b"{}")),
    ("s", b"{}", signature("t", b"{}")), ("s", b"{}", signature("s", b"{}").replace("sha256=", "sha1=")),
    ("s", b"{}", signature("s", b"{}").upper()), ("s", b"{}", signature("s", b"{}")[:-1]), ("s", b"{}", "sha256=\u00e9"),
])
def test_verify_refuses_anything_but_the_exact_signature(secret: str, body: bytes, header: str | None) -> None:
    assert not verify(secret, body, header)


def test_parse_ref_accepts_the_short_form_and_urls() -> None:
    assert parse_ref("hiyouga/LLaMA-Factory#7416") == IssueRef("hiyouga", "LLaMA-Factory", 7416)
    assert parse_ref(" https://github.com/deepspeedai/DeepSpeed/issues/5242 ") == IssueRef("deepspeedai", "DeepSpeed", 5242)
    assert parse_ref("https://github.com/a/b.c/issues/3#issuecomment-1") == IssueRef("a", "b.c", 3)
    assert str(parse_ref("a/b#1")) == "a/b#1"
    for bad in ("", "a/b", "a#1", "a/b#", "a/b#-1", "a/b/c#1", f"a/b#{MAX_ISSUE_NUMBER + 1}", "a/..#1", "http://example.com/a/b/issues/1"):
        with pytest.raises(UsageError, match="not an issue reference"):
            parse_ref(bad)


def test_read_delivery() -> None:
    payload = _opened(12, "title", None)
    opened = read_delivery("issues", "guid-1", json.dumps(payload).encode())
    assert isinstance(opened, IssueOpened) and opened.delivery_id == "guid-1"
    assert opened.issue.ref == IssueRef("kbq-tests", "Trainer", 12) and opened.issue.body == ""
    assert isinstance(read_delivery("ping", None, b'{"zen": "z"}'), Ping)
    assert isinstance(read_delivery("issues", "g", json.dumps({**payload, "action": "edited"}).encode()), Ignored)
    assert isinstance(read_delivery("pull_request", "g", b"{}"), Ignored)
    with pytest.raises(PayloadError) as found:
        read_delivery("issues", "g", b"[" * 100_000)
    assert found.value.status == 400
    with pytest.raises(PayloadError, match="X-GitHub-Delivery"):
        read_delivery("issues", "x" * 101, json.dumps(payload).encode())


def test_search_text_fits_any_issue_into_a_query() -> None:
    """An issue body may be 65,536 characters and hold anything JSON can: the bot answers from its
    beginning instead of failing on the query limits."""
    from kb.querytext import validate_query

    log = "\n".join(f"[rank{i % 8}]: step {i} loss nan" for i in range(4000))
    body = "Training diverges with NaN loss after the first few hundred steps.\n```\n" + log + "\n```\n\x00\ud800 end"
    text = search_text(Issue(IssueRef("o", "r", 1), "NaN loss", body))
    assert len(text) <= MAX_QUERY_CHARS and text.startswith("NaN loss")
    assert validate_query(text) == text.strip()
    assert "Training diverges with NaN loss" in text


def _hit(case_id: str, title: str, *, fixes: list[dict[str, Any]], causes: list[str], confident: bool = True):
    from kb.results import Hit, TextBreakdown
    from kb.similarity import FeatureScore

    case = {"id": case_id, "title": title, "causes": causes, "fixes": fixes, "sources": ["https://github.com/o/r/issues/1"]}
    features = [FeatureScore("model", "qwen2", "qwen2", 1.0, 1.5, 0.1), FeatureScore("zero_stage", [3], [2], 0.5, 1.0, 0.05),
                FeatureScore("precision", "bf16", None, 0.0, 1.0, 0.0)]
    hit = Hit(1, case, 2.0, confident, TextBreakdown(0.8, 1.46, 1.1, [("symptom:loss-nan", 0.1), ("grad", 0.05)]), features)
    hit.semantic = 0.71
    return hit


def _outcome(hits, fixes=()):
    from kb.results import SearchOutcome

    return SearchOutcome("q", {}, [], hits, list(fixes), False, 0.9, {}, 156, confidence=0.934)


def test_comment_is_marked_escaped_and_says_why() -> None:
    from kb.githubbot.comment import compose, is_bot_answer
    from kb.results import RecommendedFix

    hit = _hit("case-a", "Loss <b>NaN</b> with *ZeRO-3* [see] @maintainer #123 ~70", causes=["ping @someone about #42"],
               fixes=[{"action": "x", "confirmed": True}])
    fixes = [RecommendedFix("set `lr=1e-5` as in #5242, thanks @helper", True, 3.0, ["case-a", "case-b"]),
             RecommendedFix("an unconfirmed idea", False, 1.0, ["case-a"])]
    body = compose(IssueRef("o", "r", 7), _outcome([hit], fixes), [hit], "en")
    first = body.splitlines()[0]
    assert first == "<!-- kbq-bot issue=o/r#7 cases=case-a -->" and is_bot_answer(body)
    assert "<b>" not in body and "&lt;b&gt;NaN&lt;/b&gt;" in body
    assert "\\*ZeRO-3\\*" in body and "\\[see\\]" in body and "\\~70" in body
    assert "@maintainer" not in body and "@&#8203;maintainer" in body and "@&#8203;someone" in body
    assert "#123" not in body and "#&#8203;123" in body and "#&#8203;42" in body and "#&#8203;5242" in body
    assert "`lr=1e-5`" in body, "code spans stay code"
    assert "same model: qwen2" in body and "similar ZeRO stage: 3 here, 2 in the case" in body
    assert "precision" not in body, "a feature that did not match is no reason"
    assert "shared terms: `loss-nan`, `grad`" in body and "sentence similarity 0.71" in body
    assert "93%" in body and "156 documented cases" in body
    assert "[github.com/o/r/issues/1](https://github.com/o/r/issues/1)" in body
    assert "Fixes confirmed to work" in body and "an unconfirmed idea" not in body
    assert "(from `case-a`, `case-b`)" in body


def test_comment_without_a_confirmed_fix_says_so_and_speaks_chinese() -> None:
    from kb.githubbot.comment import compose
    from kb.results import RecommendedFix

    hit = _hit("case-z", "显存不足", causes=[], fixes=[])
    body = compose(IssueRef("o", "r", 8), _outcome([hit], [RecommendedFix("试试 gradient checkpointing", False, 1.0, ["case-z"])]),
                   [hit], "zh")
    assert "可能是已知问题" in body and "模型相同：qwen2" in body and "还没有已验证的解决办法" in body
    assert "试试 gradient checkpointing" in body and "；" in body


def test_not_confident_is_no_comment() -> None:
    from kb.githubbot.comment import suggestion

    issue = Issue(IssueRef("o", "r", 1), "t", "b")
    weak = suggestion(issue, _outcome([_hit("case-w", "weak", causes=[], fixes=[], confident=False)]))
    assert not weak.confident and weak.body is None and weak.case_ids == []
    assert suggestion(issue, _outcome([])).reason == "no case shares a term or a feature with the issue"


def test_issue_language() -> None:
    from kb.githubbot.comment import issue_language

    ref = IssueRef("o", "r", 1)
    assert issue_language(Issue(ref, ZH_TITLE, ZH_BODY)) == "zh"
    assert issue_language(Issue(ref, "训练 loss 为 nan", "### System Info\n- transformers version: 4.40\n```\nTraceback ...\n```")) == "zh"
    assert issue_language(Issue(ref, NAN_TITLE, NAN_BODY)) == "en"


def test_every_feature_and_phrase_has_both_languages() -> None:
    """A feature added to weights.yaml needs its name in the comment's wording, in each language."""
    import yaml

    from kb.githubbot.comment import bot_settings
    from kb.paths import data_file

    specs = yaml.safe_load(data_file("weights.yaml").read_text(encoding="utf-8"))["features"]["specs"]
    settings = bot_settings()
    for language in ("en", "zh"):
        assert set(specs) <= set(settings["features"][language]), (language, set(specs) - set(settings["features"][language]))
    assert set(settings["text"]["en"]) == set(settings["text"]["zh"])
