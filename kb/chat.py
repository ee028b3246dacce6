"""The chat backend: a conversation that narrows the candidates by asking the right question.

Each turn searches the whole conversation as one report, so details given over
several messages add up ("my gemma3 loss is weird" ... "zero3"). When the best
candidates are close, the bot asks about the feature whose answer would tell
them apart best: the feature with the largest entropy of candidate values,
weighted by score, which is the information the answer is expected to give.
Wording, thresholds and phrases live in ``kb/data/chat.yaml``.

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
    words = settings["text"][language]
    options = [_label(feature, v) for v in values] + [words["something_else"]]
    listed = ", ".join(options[:-1]) + f" {words['or']} {options[-1]}" if language == "en" else "、".join(options[:-1]) + f"{words['or']}{options[-1]}"
    text = settings["questions"][feature][language].format(options=listed)
    return Question(feature, text, options, values)


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
    """When there is nothing left to ask, the best candidate is worth showing, hedged, if it
    scores at least ``best_guess_floor`` of the confidence threshold (noise does not)."""
    hits = outcome.hits
    if hits and hits[0].score >= chat_settings()["best_guess_floor"] * outcome.threshold:
        return hits[0]
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


def respond(
    index: LoadedIndex, state: ChatState, message: str, language: str, embed=None
) -> tuple[ChatState, SearchOutcome, Question | None]:
    """One turn, without storage: the new state, the search over the conversation, and a question."""
    settings = chat_settings()
    if state.pending and _matches_phrase(message, settings["skip_phrases"]):
        state.asked.append(state.pending["feature"])
    else:
        state.messages.append(_answer_to_option(message, state.pending))
        if state.pending:
            state.asked.append(state.pending["feature"])
    state.messages = state.messages[-settings["max_messages"]:]
    conversation = "\n".join(state.messages)
    while len(conversation) > MAX_QUERY_CHARS and len(state.messages) > 1:
        state.messages = state.messages[1:]
        conversation = "\n".join(state.messages)
    outcome = search(index, parse(validate_query(conversation), index.lexicon, index.stopwords), k=5, embed=embed)
    pool = candidates(outcome)
    question = best_question(index, outcome, pool, state.asked, language) if should_ask(outcome, pool) else None
    state.pending = None if question is None else {"feature": question.feature, "options": question.options, "values": question.values}
    return state, outcome, question


class ChatEngine:
    """Conversations over a knowledge base, with sessions kept in ``sessions``."""

    def __init__(self, index_provider, sessions: SessionStore, embedder=None):
        self._index = index_provider  # a callable returning the current LoadedIndex
        self._sessions = sessions
        self._embedder = embedder or (lambda index: None)  # index -> the query embedding function, or None

    def advance(self, state: ChatState, message: str) -> ChatTurn:
        """One turn of a conversation in ``state`` (updated in place), without storage. Both the
        session API and the stateless OpenAI endpoint go through here, so a conversation gets
        the same answers whichever way it is sent."""
        settings = chat_settings()
        text = validate_query(message)
        state.language = language = turn_language(text, state.language, settings["language"])
        if _matches_phrase(text, settings["reset_phrases"]):
            # Cleared but for its language: the same user goes on.
            state.messages, state.asked, state.pending = [], [], None
            return ChatTurn("", language, settings["text"][language]["reset"], None, None, reset=True)
        index = self._index()
        _, outcome, question = respond(index, state, text, language, self._embedder(index))
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

    def complete(self, user_messages: list[str]) -> ChatTurn:
        """The answer to the last of a whole conversation's user messages, kept nowhere (the
        OpenAI-compatible endpoint is sent the whole conversation every time). The earlier
        messages are replayed through :meth:`advance` as if they had been sent one by one, so
        a numbered answer picks an option of the question kbq asked, and questions already
        answered are not asked again: the same answer as in a session."""
        if not user_messages:
            raise QueryError("no user message in the conversation")
        for message in user_messages:
            validate_query(message)  # each one, before any search
        state = ChatState()
        for message in user_messages:
            turn = self.advance(state, message)
        return turn
