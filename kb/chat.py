"""The chat backend: a conversation that narrows the candidates by asking the right question.

Each turn searches the whole conversation as one report, so details given over
several messages add up ("my gemma3 loss is weird" ... "zero3"). When the best
candidates are close, the bot asks about the feature whose answer would tell
them apart best: the feature with the largest entropy of candidate values,
weighted by score, which is the information the answer is expected to give.
A conversation is answered in the language it started in (``kb/chatlang.py``).
Wording, thresholds and phrases live in ``kb/data/chat.yaml``.

A session and a stateless client (which sends the whole conversation every time)
go through the same turn, :meth:`ChatEngine.advance`: for the stateless one the
earlier turns are taken again, the question each ended with read from the reply
the client sends back, so both get the same answers.

Nothing here knows about HTTP; sessions are kept by whatever ``SessionStore``
the caller passes (the database in the API). A session belongs to whoever holds
its id, so only the engine makes ids, unguessable ones, on a conversation's first
turn; an id it did not make, or whose session expired, is refused, never adopted.
"""

from __future__ import annotations

import math
import re
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from .chatlang import message_language, turn_language
from .errors import NotFoundError, QueryError
from .index import LoadedIndex
from .lexicon import normalize
from .parser import parse
from .paths import data_file
from .querytext import MAX_QUERY_CHARS, validate_query
from .results import Hit, SearchOutcome
from .retriever import search

SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
SESSION_BYTES = 32  # 256 random bits
# What new_session_id() makes (URL-safe base64, unpadded): anything else was never issued,
# so it is refused without a look-up.
ISSUED_SESSION_ID = re.compile(rf"^[A-Za-z0-9_-]{{{math.ceil(SESSION_BYTES * 4 / 3)}}}$")
UNKNOWN_SESSION = "unknown or expired session: send the message without session_id to start a new conversation"


def new_session_id() -> str:
    """An id nobody can guess: holding it is the only claim on a conversation."""
    return secrets.token_urlsafe(SESSION_BYTES)


@lru_cache(maxsize=1)
def chat_settings() -> dict[str, Any]:
    import yaml

    with open(data_file("chat.yaml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@dataclass
class Question:
    feature: str
    text: str
    options: list[str]
    values: list[Any]


@dataclass
class ChatState:
    """What a session remembers: the user's messages, the questions already settled, and
    the language it is answered in (None before its first message)."""

    messages: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    pending: dict[str, Any] | None = None  # the last question: feature, options, values
    language: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, "asked": self.asked, "pending": self.pending, "language": self.language}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "ChatState":
        data = data or {}
        messages = list(data.get("messages", []))
        # A session saved before the language was kept: its first message still decides.
        language = data.get("language") or (message_language(messages[0]) if messages else None)
        return cls(messages, list(data.get("asked", [])), data.get("pending"), language)


@dataclass
class ChatTurn:
    session_id: str
    language: str
    reply: str
    outcome: SearchOutcome | None
    question: Question | None
    reset: bool = False

    def to_json(self) -> dict[str, Any]:
        body = self.outcome.to_json() if self.outcome else {"results": [], "recommended_fixes": [], "abstained": True}
        return {
            "session_id": self.session_id,
            "language": self.language,
            "reply": self.reply,
            "cases": body["results"],
            "recommended_fixes": body["recommended_fixes"],
            "abstained": body["abstained"],
            "features": body.get("parsed", {}).get("features", {}),
            "question": None if self.question is None else {
                "feature": self.question.feature, "text": self.question.text, "options": self.question.options,
            },
            "reset": self.reset,
        }


class SessionStore(Protocol):
    def load(self, session_id: str) -> dict[str, Any] | None: ...
    def save(self, session_id: str, state: dict[str, Any], language: str) -> None: ...


def _matches_phrase(message: str, phrases: list[str]) -> bool:
    text = normalize(message).strip(" .!?。！？")
    return any(text == normalize(p) or (len(text) <= 3 * len(p) and normalize(p) in text) for p in phrases)


def _label(feature: str, value: Any) -> str:
    labels = chat_settings().get("labels", {}).get(feature, {})
    return str(labels.get(value, value))


def _entropy(weights: list[float]) -> float:
    total = sum(weights)
    return -sum(w / total * math.log2(w / total) for w in weights if w > 0) if total > 0 else 0.0


def candidates(outcome: SearchOutcome) -> list[Hit]:
    """The cases still in the running: within ``candidate_ratio`` of the best score."""
    settings = chat_settings()
    if not outcome.hits:
        return []
    best = outcome.hits[0].score
    return [h for h in outcome.hits if h.score >= settings["candidate_ratio"] * best][: settings["max_candidates"]]


def should_ask(outcome: SearchOutcome, pool: list[Hit]) -> bool:
    if len(pool) < 2:
        return False
    top, second = pool[0], pool[1]
    return (not top.confident) or second.score >= chat_settings()["close_ratio"] * top.score


def best_question(index: LoadedIndex, outcome: SearchOutcome, pool: list[Hit], asked: list[str], language: str) -> Question | None:
    """The unasked feature whose answer splits the candidates best, or None if none splits them."""
    settings = chat_settings()
    best: tuple[float, str, dict[Any, float]] | None = None
    for feature in settings["ask_order"]:
        if feature in asked or outcome.features.get(feature):
            continue
        groups: dict[Any, float] = defaultdict(float)
        for hit in pool:
            row = index.row(hit.case_id)
            values = (index.features(row).get(feature) if row is not None else None) or [None]
            groups[values[0]] += max(hit.score, 1e-6)
        known = [value for value in groups if value is not None]
        if len(known) < 2:
            continue
        gain = _entropy(list(groups.values()))
        if best is None or gain > best[0] + 1e-9:
            best = (gain, feature, groups)
    if best is None:
        return None
    _, feature, groups = best
    values = sorted((v for v in groups if v is not None), key=lambda v: -groups[v])[: settings["max_options"]]
    options = [_label(feature, v) for v in values] + [settings["text"][language]["something_else"]]
    text = settings["questions"][feature][language].format(options=_listing(options[:-1], language))
    return Question(feature, text, options, values)


def _listing(named: list[str], language: str) -> str:
    """'a, b or something else' / 'a、b或其他': the options of a question, as its text lists them."""
    words = chat_settings()["text"][language]
    if language == "en":
        return ", ".join(named) + f" {words['or']} {words['something_else']}"
    return "、".join(named) + f"{words['or']}{words['something_else']}"


@lru_cache(maxsize=1)
def _question_shapes() -> list[tuple[str, str, str, str]]:
    """(feature, language, text before the options, text after them) of every question kbq asks."""
    shapes = []
    for feature, texts in chat_settings()["questions"].items():
        for language, template in texts.items():
            head, _, tail = template.partition("{options}")
            shapes.append((feature, language, head, tail))
    return shapes


def question_in(reply: str) -> dict[str, Any] | None:
    """The question a reply of kbq's ends with, as the pending state of a session that asked it
    (feature, options, values), or None if it asks nothing. This is how a stateless client's
    conversation, which carries kbq's replies, tells what its user is answering."""
    last = reply.strip().rsplit("\n", 1)[-1].strip()
    for feature, language, head, tail in _question_shapes():
        if not (last.startswith(head) and last.endswith(tail) and len(last) > len(head) + len(tail)):
            continue
        listed = last[len(head) : len(last) - len(tail)]
        ending = _listing([], language)  # ' or something else' / '或其他'
        if not listed.endswith(ending) or len(listed) == len(ending):
            continue
        named = listed[: -len(ending)].split(", " if language == "en" else "、")
        labels = {str(label): value for value, label in chat_settings().get("labels", {}).get(feature, {}).items()}
        options = named + [chat_settings()["text"][language]["something_else"]]
        return {"feature": feature, "options": options, "values": [labels.get(name, name) for name in named]}
    return None


@lru_cache(maxsize=1)
def _option_answer() -> re.Pattern[str]:
    return re.compile(chat_settings()["option_answer"])


def _answer_to_option(message: str, pending: dict[str, Any] | None) -> str:
    """'2' (or '2.', '#2', '选 2', '第2个') answers the pending question with its second option."""
    found = _option_answer().match(normalize(message).strip()) if pending else None
    if found:
        number = int(found.group(1))
        if 1 <= number <= len(pending.get("options", [])):
            return pending["options"][number - 1]
    return message


def _leader(outcome: SearchOutcome) -> Hit | None:
    """When there is nothing left to ask, the best candidate is worth showing, hedged, unless the
    search abstained: the same "possible match" verdict the CLI, the JSON and the web page give.
    (A floor on the raw score is no test: scores and the confidence threshold are on different
    scales, the threshold being a probability.)"""
    if outcome.hits and not outcome.abstained:
        return outcome.hits[0]
    return None


def compose_reply(outcome: SearchOutcome, question: Question | None, language: str) -> str:
    words = chat_settings()["text"][language]
    lines: list[str] = []
    confident = [h for h in outcome.hits if h.confident]
    leader = None if confident or question is not None else _leader(outcome)
    if confident or leader:
        top = confident[0] if confident else leader
        case = top.case
        template = words["closest"] if confident else words["best_guess"]
        lines.append(template.format(title=case["title"], id=case["id"], score=top.score))
        if case.get("causes"):
            lines.append(words["cause"].format(cause=case["causes"][0]))
        # The fixes are the search's recommended ones, the same the answer lists: none when it
        # abstained, since a weak guess's fixes did not work "in similar cases". No heading then.
        if outcome.fixes:
            lines.append(words["fixes"])
            for fix in outcome.fixes[:3]:
                mark = f" {words['confirmed']}" if fix.confirmed else ""
                lines.append(f"- {fix.action}{mark} [{', '.join(fix.cases)}]")
        lines.append(words["sources"].format(sources=", ".join(case["sources"])))
        others = [h.case_id for h in (confident[1:3] if confident else candidates(outcome)[1:3])]
        if others:
            lines.append(words["also"].format(ids=", ".join(f"`{i}`" for i in others)))
    else:
        lines.append(words["no_case"])
        if question is None:
            lines.append(words["need_more"])
    if question is not None:
        lines.append(question.text)
    return "\n\n".join(lines)


def take_message(state: ChatState, message: str) -> None:
    """Add a message to the conversation: an answer to the pending question settles it (a
    number picks an option; 'not sure' only settles it), and the oldest messages go when
    there are too many or the conversation grows too long to search."""
    settings = chat_settings()
    if state.pending and _matches_phrase(message, settings["skip_phrases"]):
        state.asked.append(state.pending["feature"])
    else:
        state.messages.append(_answer_to_option(message, state.pending))
        if state.pending:
            state.asked.append(state.pending["feature"])
    state.pending = None
    state.messages = state.messages[-settings["max_messages"]:]
    while len("\n".join(state.messages)) > MAX_QUERY_CHARS and len(state.messages) > 1:
        state.messages = state.messages[1:]


def search_and_ask(index: LoadedIndex, state: ChatState, language: str, embed=None) -> tuple[SearchOutcome, Question | None]:
    """Search the conversation so far as one report, and choose the question to ask next (the
    session's pending one)."""
    conversation = validate_query("\n".join(state.messages))
    outcome = search(index, parse(conversation, index.lexicon, index.stopwords), k=5, embed=embed)
    pool = candidates(outcome)
    question = best_question(index, outcome, pool, state.asked, language) if should_ask(outcome, pool) else None
    state.pending = None if question is None else {"feature": question.feature, "options": question.options, "values": question.values}
    return outcome, question


class ChatEngine:
    """Conversations over a knowledge base, with sessions kept in ``sessions``."""

    def __init__(self, index_provider, sessions: SessionStore, embedder=None):
        self._index = index_provider  # a callable returning the current LoadedIndex
        self._sessions = sessions
        self._embedder = embedder or (lambda index: None)  # index -> the query embedding function, or None

    def _prepare(self, state: ChatState, message: str) -> bool:
        """The part of a turn that needs no search: the language, a reset (True), or the message
        taken into the conversation."""
        settings = chat_settings()
        state.language = turn_language(message, state.language, settings["language"])
        if _matches_phrase(message, settings["reset_phrases"]):
            # Cleared but for its language: the same user goes on.
            state.messages, state.asked, state.pending = [], [], None
            return True
        take_message(state, message)
        return False

    def advance(self, state: ChatState, message: str) -> ChatTurn:
        """One turn of a conversation in ``state`` (updated in place), without storage. The
        session API and the stateless OpenAI endpoint both answer through here."""
        reset = self._prepare(state, validate_query(message))
        language = state.language or "en"
        if reset:
            return ChatTurn("", language, chat_settings()["text"][language]["reset"], None, None, reset=True)
        index = self._index()
        outcome, question = search_and_ask(index, state, language, self._embedder(index))
        return ChatTurn("", language, compose_reply(outcome, question, language), outcome, question)

    def handle(self, message: str, session_id: str | None = None) -> ChatTurn:
        """One turn: ``session_id`` None starts a conversation under a new id; any other must be one
        this engine issued whose session has not expired, else NotFoundError."""
        if session_id is not None and not SESSION_ID.match(session_id):
            raise QueryError("session_id must be 1-64 letters, digits or . _ : -")
        validate_query(message)  # before a session is made or looked up
        if session_id is None:
            session_id, stored = new_session_id(), None
        else:
            stored = self._sessions.load(session_id) if ISSUED_SESSION_ID.match(session_id) else None
            if stored is None:
                raise NotFoundError(UNKNOWN_SESSION)
        state = ChatState.from_json(stored)
        turn = self.advance(state, message)
        # Saved after a reset too: cleared, not deleted, so the id stays its holder's for the next turn.
        self._sessions.save(session_id, state.to_json(), turn.language)
        turn.session_id = session_id
        return turn

    def complete(self, turns: list[tuple[str, str | None]]) -> ChatTurn:
        """The answer to the last user message of a whole conversation, kept nowhere (the
        OpenAI-compatible endpoint is sent the whole conversation every time). ``turns`` are the
        user's messages, each with kbq's reply to it as the client sent it back (None if it
        sent none). The earlier messages go through the same steps as in a session, and the
        question each reply ended with is the one its user answered next, as a session
        remembers it; a turn whose reply is missing is searched again to know its question.
        So a numbered answer picks an option of the question kbq asked, a question settled
        is not asked again, and the answer is the one a session would give. Searches cost, so
        only the last ``max_messages`` turns are searched again (the search reads no more of a
        conversation); an older turn without its reply counts as one that asked nothing."""
        if not turns:
            raise QueryError("no user message in the conversation")
        texts = [validate_query(message) for message, _ in turns]  # each one, before any search
        searched_from = len(turns) - 1 - int(chat_settings()["max_messages"])
        state = ChatState()
        for i, (text, (_, reply)) in enumerate(zip(texts[:-1], turns[:-1])):
            if reply is None and i >= searched_from:
                self.advance(state, text)
            elif not self._prepare(state, text):
                state.pending = question_in(reply) if reply is not None else None
        return self.advance(state, texts[-1])
