"""The web pages of ``kbq serve`` in a real browser.

Playwright drives the system's Chromium (``KBQ_CHROMIUM``, else ``chromium`` on PATH; it
never downloads a browser of its own) against a real ``kbq serve`` on a loopback port.
Every request a page makes is recorded and must go to that server: the pages and the API
docs have to work with no internet. Each step leaves a screenshot in ``KBQ_SCREENSHOT_DIR``
(default ``test-artifacts/screenshots/`` in the repository), kept after the run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Response, expect, sync_playwright

from conftest import case_data
from serving import REPO, base_env, kbq, start, stop

GEMMA_QUERY = "gemma3 loss 70 zero3"
GEMMA_CASE = "llamafactory-7416"
CHINESE_QUERY = "预训练 loss 停在 2.8 不降"
CHINESE_CASE = "medicalgpt-426"
OFF_TOPIC = "How do I center a div with CSS grid?"
INSTALL = "apt-get install -y chromium"
PHONE = {"width": 375, "height": 740}
DESKTOP = {"width": 1280, "height": 900}
TOKEN = secrets.token_urlsafe(16)  # the server's write token, for the case a test adds


def chromium_path() -> str:
    """The Chromium to drive: KBQ_CHROMIUM, else `chromium` on PATH; a missing one fails the tests."""
    path = os.environ.get("KBQ_CHROMIUM") or shutil.which("chromium")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"no Chromium for the browser tests: install it ({INSTALL}) or set KBQ_CHROMIUM to its path",
                    pytrace=False)
    return path


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(os.environ.get("KBQ_SCREENSHOT_DIR") or REPO / "test-artifacts" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("web")
    home = base / "home"
    home.mkdir()
    env = base_env(home, KBQ_API_TOKEN=TOKEN)
    db = str(base / "kbq.db")
    ingest = kbq(env, "ingest", "--db", db)
    assert ingest.returncode == 0, ingest.stderr
    proc, port = start(env, db, base / "serve.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


@dataclass
class Tab:
    """A page in a fresh browser context, with every request it made."""

    page: Page
    server: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # script and console errors (a CSP block), failed assets

    def open(self, path: str):
        return self.page.goto(self.server + path)

    def shot(self, folder: Path, name: str, *, full: bool = True) -> None:
        self.page.screenshot(path=str(folder / name), full_page=full)

    def assert_all_local(self) -> None:
        """Every request went to the kbq server (no CDN, no font service, no validator)."""
        served = urlsplit(self.server).netloc
        assert self.requests
        elsewhere = [url for url in self.requests if urlsplit(url).netloc != served and not url.startswith("data:")]
        assert not elsewhere, elsewhere

    def no_horizontal_scroll(self) -> None:
        width = self.page.evaluate("document.documentElement.scrollWidth")
        viewport = self.page.evaluate("window.innerWidth")
        assert width <= viewport, f"the page is {width} px wide in a {viewport} px window"


def _tab(browser: Browser, server: str, viewport: dict[str, int]) -> Iterator[Tab]:
    context = browser.new_context(viewport=viewport, locale="en-US")
    page = context.new_page()
    tab = Tab(page, server)
    page.on("request", lambda request: tab.requests.append(request.url))
    page.on("pageerror", lambda error: tab.errors.append(str(error)))
    # A page may answer 4xx on purpose (an error page); nothing it loads may.
    page.on("console", lambda message: tab.errors.append(message.text)
            if message.type == "error" and not message.text.startswith("Failed to load resource") else None)
    page.on("response", lambda response: tab.errors.append(f"{response.status} {response.url}")
            if response.status >= 400 and response.request.resource_type != "document" else None)
    yield tab
    context.close()
    tab.assert_all_local()
    assert not tab.errors, tab.errors


@pytest.fixture
def tab(browser: Browser, server: str) -> Iterator[Tab]:
    yield from _tab(browser, server, DESKTOP)


@pytest.fixture
def phone(browser: Browser, server: str) -> Iterator[Tab]:
    yield from _tab(browser, server, PHONE)


def _ranked(tab: Tab) -> list[str]:
    """Case ids in the order the results show them: the full cards, then the brief list."""
    return tab.page.locator(".hit .hit-head .case-id, .brief .case-id").all_inner_texts()


def _api_ranking(api: httpx.Client, query: str, k: int = 5) -> dict:
    response = api.post("/v1/query", json={"query": query, "top_k": k})
    assert response.status_code == 200, response.text
    return response.json()


# -- search -------------------------------------------------------------------------

def test_search_from_the_form(tab: Tab, api: httpx.Client, shots: Path) -> None:
    """The form (a POST, so any length fits) shows what the API and the CLI answer: the same
    cases in the same order, why the first matched, and the recommended fixes."""
    tab.open("/")
    expect(tab.page.get_by_role("heading", level=1)).to_have_text("Find the closest past incident")
    tab.shot(shots, "01-home.png")
    tab.page.get_by_label("Describe what went wrong, or paste the report").fill(GEMMA_QUERY)
    with tab.page.expect_navigation():
        tab.page.get_by_role("button", name="Search").click()

    expected = _api_ranking(api, GEMMA_QUERY)
    assert _ranked(tab) == [hit["id"] for hit in expected["results"]]
    assert _ranked(tab)[0] == GEMMA_CASE
    first = tab.page.locator(".hit").first
    expect(first).to_have_class("hit confident")
    expect(first.locator("dd").first).to_contain_text("zero_stage 3")  # why it matched
    expect(first.locator("dd").first).to_contain_text("loss 70")
    expect(tab.page.locator(".verdict")).to_contain_text("1 close case")
    fixes = tab.page.locator(".fixes > li")
    expect(fixes).to_have_count(len(expected["recommended_fixes"]))
    expect(fixes.first).to_contain_text(expected["recommended_fixes"][0]["action"][:60])
    expect(tab.page.get_by_label("Describe what went wrong, or paste the report")).to_have_value(GEMMA_QUERY)
    tab.shot(shots, "02-search-english.png")


def test_search_in_chinese_by_link(tab: Tab, api: httpx.Client, shots: Path) -> None:
    response = tab.open("/?q=" + quote(CHINESE_QUERY))
    assert response is not None and response.status == 200
    assert tab.page.evaluate("document.characterSet") == "UTF-8"
    expected = _api_ranking(api, CHINESE_QUERY)
    assert _ranked(tab) == [hit["id"] for hit in expected["results"]]
    assert _ranked(tab)[0] == CHINESE_CASE
    expect(tab.page.locator("#q")).to_have_value(CHINESE_QUERY)
    expect(tab.page).to_have_title(f"{CHINESE_QUERY} · kbq")
    # The results are linkable: the page offers the same search as a link.
    expect(tab.page.get_by_role("link", name="Link to these results")).to_have_attribute(
        "href", "/?q=" + quote(CHINESE_QUERY, safe="").replace("%20", "+") + "#results")
    tab.shot(shots, "03-search-chinese.png")


def test_abstention_is_said_plainly(tab: Tab, api: httpx.Client, shots: Path) -> None:
    assert _api_ranking(api, OFF_TOPIC)["abstained"]
    tab.open("/?q=" + quote(OFF_TOPIC))
    expect(tab.page.locator(".verdict")).to_contain_text("No close case")
    expect(tab.page.locator(".hit")).to_have_count(0)  # no case presented as an answer
    expect(tab.page.locator(".fixes")).to_have_count(0)
    expect(tab.page.get_by_role("heading", name="Weak candidates")).to_be_visible()
    tab.shot(shots, "04-no-close-case.png")


def test_bad_input_gets_the_apis_error_on_the_page(tab: Tab, api: httpx.Client, shots: Path) -> None:
    """A report over the API's limit and a control character: the API's status and message,
    shown on the page, with the text kept in the form."""
    long_report = "训练 loss 不降，" * 1000  # 11,000 characters; the API takes 8,192
    tab.open("/")
    tab.page.locator("#q").fill(long_report)
    with tab.page.expect_navigation() as navigation:
        tab.page.get_by_role("button", name="Search").click()
    refused = api.post("/v1/query", json={"query": long_report})
    assert navigation.value.status == refused.status_code == 413
    expect(tab.page.get_by_role("alert")).to_contain_text(refused.json()["error"]["message"])
    expect(tab.page.get_by_role("alert")).to_contain_text(f"Your text has {len(long_report):,} characters")
    expect(tab.page.locator("#q")).to_have_value(long_report)
    tab.shot(shots, "05-error-too-long.png", full=False)

    response = tab.open("/?q=loss%00nan")
    refused = api.get("/v1/query?q=loss%00nan")
    assert response is not None and response.status == refused.status_code == 422
    expect(tab.page.get_by_role("alert")).to_have_text(f"Error 422 {refused.json()['error']['message']}")
    tab.shot(shots, "06-error-control-character.png", full=False)


# -- case pages ----------------------------------------------------------------------

def test_case_page(tab: Tab, api: httpx.Client, shots: Path) -> None:
    case = api.get(f"/v1/cases/{CHINESE_CASE}").json()
    tab.open("/?q=" + quote(CHINESE_QUERY))
    with tab.page.expect_navigation():
        tab.page.locator(".hit").first.get_by_role("link", name=f"The whole case: {CHINESE_CASE}").click()
    assert tab.page.url.endswith(f"/cases/{CHINESE_CASE}")
    expect(tab.page.get_by_role("heading", level=1)).to_have_text(case["title"])
    chinese = tab.page.locator('blockquote[lang="zh"]')
    expect(chinese).to_have_text(case["user_phrasing"]["zh"])
    expect(tab.page.locator(".case-fixes > li")).to_have_count(len(case["fixes"]))
    for source in case["sources"]:
        expect(tab.page.locator(".sources")).to_contain_text(source)
    tab.shot(shots, "07-case.png")


def test_unknown_case_is_a_404_page_with_the_id_escaped(tab: Tab, shots: Path) -> None:
    response = tab.open("/cases/no-such-case")
    assert response is not None and response.status == 404
    expect(tab.page.get_by_role("alert")).to_contain_text("no case with id 'no-such-case'")
    tab.shot(shots, "08-case-404.png", full=False)

    markup = '<img src=x id=injected onerror="document.title=1">'
    response = tab.open("/cases/" + quote(markup))
    assert response is not None and response.status == 404
    expect(tab.page.get_by_role("alert")).to_contain_text(f"no case with id '{markup}'")  # shown as text
    expect(tab.page.locator("#injected")).to_have_count(0)


# -- chat ----------------------------------------------------------------------------

def test_chat_two_turns_in_one_session(tab: Tab, api: httpx.Client, shots: Path) -> None:
    """The panel keeps the session id the server issued and answers a question by its number."""
    sent: list[dict] = []
    responses: list[Response] = []
    tab.page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/v1/chat") else None)
    tab.page.on("response", lambda r: responses.append(r) if r.url.endswith("/v1/chat") else None)
    tab.open("/")
    message = tab.page.get_by_label("Message")
    message.fill("my gemma 3 loss looks wrong, far too high")
    message.press("Enter")
    expect(tab.page.locator(".msg.bot")).to_have_count(1)
    answers = [responses[0].json()]
    question = answers[0]["question"]
    assert question and question["options"], answers[0]["reply"]
    assert "session_id" not in sent[0]
    expect(tab.page.locator(".msg.bot").first).to_contain_text(question["text"])

    record = json.dumps(api.get(f"/v1/cases/{GEMMA_CASE}").json()).lower()
    number = next(i for i, option in enumerate(question["options"], 1)
                  if option != "something else" and option.lower() in record)
    tab.page.get_by_role("button", name=f"{number}. {question['options'][number - 1]}").click()
    expect(tab.page.locator(".msg.bot")).to_have_count(2)
    answers.append(responses[1].json())
    assert sent[1] == {"message": str(number), "session_id": answers[0]["session_id"]}
    assert answers[1]["session_id"] == answers[0]["session_id"]
    assert answers[1]["cases"][0]["id"] == GEMMA_CASE
    reply = tab.page.locator(".msg.bot").nth(1)
    expect(reply.get_by_role("link", name=GEMMA_CASE).first).to_have_attribute("href", f"/cases/{GEMMA_CASE}")
    expect(tab.page.locator(".options button").first).to_be_disabled()  # the answered question is closed
    tab.shot(shots, "09-chat.png")

    tab.page.reload()  # the tab keeps its conversation across pages
    expect(tab.page.locator(".msg")).to_have_count(4)


# -- keyboard and phone --------------------------------------------------------------

def test_keyboard_only_search(tab: Tab, shots: Path) -> None:
    """Tab reaches the report box after the skip link and the header, in page order; Tab
    again reaches the button, which shows its focus; Enter searches."""
    tab.open("/")
    order = []
    for _ in range(10):
        tab.page.keyboard.press("Tab")
        order.append(tab.page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
        if order[-1] == "q":
            break
    assert order == ["Skip to content", "kbq", "Search", "Chat", "API docs", "q"]
    tab.page.keyboard.type(GEMMA_QUERY)
    tab.page.keyboard.press("Tab")
    assert tab.page.evaluate("document.activeElement.id") == "k"
    tab.page.keyboard.press("Tab")
    button = tab.page.get_by_role("button", name="Search")
    expect(button).to_be_focused()
    outline = button.evaluate("b => getComputedStyle(b).outlineStyle + ' ' + getComputedStyle(b).outlineWidth")
    assert outline == "solid 3px", outline
    tab.shot(shots, "10-keyboard-focus.png", full=False)
    with tab.page.expect_navigation():
        tab.page.keyboard.press("Enter")
    assert _ranked(tab)[0] == GEMMA_CASE

    # Ctrl+Enter in the report box searches too.
    tab.page.locator("#q").fill(CHINESE_QUERY)
    with tab.page.expect_navigation():
        tab.page.locator("#q").press("Control+Enter")
    assert _ranked(tab)[0] == CHINESE_CASE


def test_phone_width(phone: Tab, shots: Path) -> None:
    phone.open("/")
    phone.no_horizontal_scroll()
    phone.shot(shots, "11-phone-home.png", full=False)
    phone.open("/?q=" + quote(CHINESE_QUERY))
    phone.no_horizontal_scroll()
    phone.shot(shots, "12-phone-results.png")
    phone.open(f"/cases/{GEMMA_CASE}")
    phone.no_horizontal_scroll()
    phone.shot(shots, "13-phone-case.png")
    phone.open("/?q=" + quote(GEMMA_QUERY))
    message = phone.page.get_by_label("Message")
    message.fill("我的 gemma3 训练 loss 看着不对")
    message.press("Enter")
    expect(phone.page.locator(".msg.bot")).to_have_count(1)
    expect(phone.page.locator(".msg.bot")).to_have_attribute("lang", "zh")
    phone.no_horizontal_scroll()
    phone.page.locator("#chat").scroll_into_view_if_needed()
    phone.shot(shots, "14-phone-chat.png", full=False)


# -- API docs ------------------------------------------------------------------------

def test_docs_render_from_the_server_alone(tab: Tab, api: httpx.Client, shots: Path) -> None:
    """Swagger UI loads its script and style from kbq, not a CDN (Tab checks every request on
    close); no page that would need a CDN (FastAPI's ReDoc) is served."""
    paths = api.get("/openapi.json").json()["paths"]
    tab.open("/docs")
    expect(tab.page.locator(".swagger-ui .info .title")).to_contain_text("kbq")
    expect(tab.page.locator(".opblock")).to_have_count(sum(len(item) for item in paths.values()))
    tab.shot(shots, "15-docs.png", full=False)
    served = urlsplit(tab.server).netloc
    assert any(urlsplit(url).netloc == served and url.endswith("/swagger-ui-bundle.js") for url in tab.requests)
    assert api.get("/redoc").status_code == 404


# -- stored text is text -------------------------------------------------------------

def test_markup_in_a_stored_case_is_shown_as_text(tab: Tab, api: httpx.Client, shots: Path) -> None:
    """A case whose fields hold markup (added through the API) shows it literally: nothing
    runs, and only web addresses become links. Last here: the others query the bundled cases."""
    title = '<script>document.title="pwned"</script> loss & <b>bold</b> 训练'
    case = case_data("web-markup-1", title=title, symptom='<img src=x id=injected onerror="document.title=1">',
                     sources=["javascript:alert(1)", "https://example.org/thread?a=1&b=2"])
    added = api.post("/v1/cases?refresh=wait_for", json=case, headers={"Authorization": f"Bearer {TOKEN}"})
    assert added.status_code == 201, added.text

    tab.open("/cases/web-markup-1")
    expect(tab.page.get_by_role("heading", level=1)).to_have_text(title)
    assert tab.page.title() == f"{title} · kbq"
    expect(tab.page.locator("main script, main b, #injected")).to_have_count(0)
    expect(tab.page.get_by_text(case["symptom"])).to_be_visible()
    expect(tab.page.locator(".sources a")).to_have_count(1)
    expect(tab.page.locator(".sources a")).to_have_attribute("href", "https://example.org/thread?a=1&b=2")
    expect(tab.page.locator(".sources")).to_contain_text("javascript:alert(1)")
    tab.shot(shots, "16-markup-as-text.png", full=False)
