"""The case: one documented training incident, validated with pydantic.

A YAML file in ``cases/`` is parsed into :class:`Case`; the database stores
``Case.to_document()`` and export writes it back, so the model is the single
definition of what a case may contain. Unknown keys are rejected so that a
typo in a reviewed file is an error rather than silently lost data.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .limits import (CASE_TEXT_BYTES, CONFIG_INT_MAX, COUNT_MAX, ITEMS, LINE_CHARS, NAME_CHARS, NODES_MAX, STEP_MAX,
                     TEXT_CHARS)
from .querytext import control_character

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{1,118}[a-z0-9]$")

Phase = Literal[
    "pretrain",
    "continued-pretrain",
    "sft",
    "rlhf",
    "dpo",
    "ppo",
    "grpo",
    "reward-model",
    "distillation",
    "inference",
    "other",
]
Status = Literal["reviewed", "draft"]
ObservationWhen = Literal["initial", "plateau", "final", "at-step", "range", "other"]
ObservationContext = Literal["symptom", "reference", "after-fix"]


def _text_check(limit: int):
    """The check every stored string passes, on the text as given (before white space is
    stripped, which would drop a trailing VT or FS unseen): at most ``limit`` characters, and no
    binary control character (SQLite would store a NUL that PostgreSQL refuses; ESC would reach
    terminals). Anything but a string is left for pydantic's own type check."""
    def check(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if len(value) > limit:
            raise PydanticCustomError("text_too_long", f"has {len(value):,} characters; the limit is {limit:,}")
        problem = control_character(value)
        if problem is not None:
            raise PydanticCustomError("control_character", problem)
        return value
    return check


_line = _text_check(LINE_CHARS)
Name = Annotated[str, BeforeValidator(_text_check(NAME_CHARS))]
Line = Annotated[str, BeforeValidator(_line)]
Text = Annotated[str, BeforeValidator(_text_check(TEXT_CHARS))]


def _config_value(value: Any) -> Union[bool, int, float, str]:
    """A config value: text, a boolean, or a finite number any JSON reader keeps exactly.

    One function rather than a Union, so that a bad value gets one error saying what is
    wrong with it instead of one per type it failed to be."""
    if isinstance(value, str):
        return _line(value).strip()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > CONFIG_INT_MAX:
            raise PydanticCustomError("number_too_large", f"must be within ±{CONFIG_INT_MAX:,}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PydanticCustomError("finite_number", "must be a finite number")
        return value
    raise PydanticCustomError("config_value", "must be text, a boolean or a number")


ConfigValue = Annotated[Union[bool, int, float, str], PlainValidator(_config_value)]


class _Strict(BaseModel):
    # NaN and infinities are refused: SQLite stores them, PostgreSQL's JSON does not.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)


class ModelInfo(_Strict):
    """The model being trained; ``version`` is the lexicon id (e.g. gemma-3)."""

    name: Name = Field(min_length=1, description="as the source names it, e.g. Gemma-3-4B")
    family: Optional[Name] = None
    version: Optional[Name] = None
    size: Optional[Name] = Field(None, description="parameter count, e.g. 4b, 1.1b, 8x7b")
    also: list[Name] = Field(default_factory=list, max_length=ITEMS, description="other models the incident compares with")


class FrameworkInfo(_Strict):
    name: Name = Field(min_length=1)
    version: Optional[Name] = None
    libraries: dict[Name, Name] = Field(
        default_factory=dict, max_length=ITEMS, description="versions of deepspeed, transformers, peft, torch... when known"
    )


class HardwareInfo(_Strict):
    accelerator: Optional[Name] = Field(None, description="e.g. A100-SXM4-80GB, Ascend 910B")
    count: Optional[int] = Field(None, ge=1, le=COUNT_MAX)
    nodes: Optional[int] = Field(None, ge=1, le=NODES_MAX)
    notes: Optional[Text] = None


class Observation(_Strict):
    """A number seen during the incident (a loss value, a grad norm, a step)."""

    metric: Name = Field(min_length=1, description="loss, grad_norm, eval_loss, memory_gb, ...")
    value: float
    when: ObservationWhen = "other"
    step: Optional[int] = Field(None, ge=0, le=STEP_MAX)
    context: ObservationContext = "symptom"
    note: Optional[Text] = None


class Fix(_Strict):
    action: Text = Field(min_length=1)
    confirmed: bool = False
    key: Optional[Name] = Field(
        None, description="short slug naming the kind of fix, so equal fixes of different cases merge"
    )


class UserPhrasing(_Strict):
    """The symptom told the way a user would report it, once in each language, so a report in
    either language meets the case. Written from the case's own facts, not copied from a source."""

    en: Text = Field(min_length=1)
    zh: Text = Field(min_length=1)
    queries: list[Line] = Field(
        default_factory=list, max_length=ITEMS,
        description="short reports as users type them (issue titles, chat lines, error lines), in either language",
    )


class Case(_Strict):
    """One incident. Every text, list and number has a limit (:mod:`kb.limits`), and so does
    the case's text as a whole, so whatever door a case comes through it is refused the same way."""

    id: str
    title: Line = Field(min_length=1)
    status: Status = "reviewed"
    language: Name = Field(min_length=2, description="language of the source, e.g. zh, en")
    phase: Optional[Phase] = None
    symptom: Text = Field(min_length=1)
    user_phrasing: Optional[UserPhrasing] = None
    model: ModelInfo
    framework: FrameworkInfo
    hardware: HardwareInfo = Field(default_factory=HardwareInfo)
    config: dict[Name, ConfigValue] = Field(default_factory=dict, max_length=ITEMS)
    observations: list[Observation] = Field(default_factory=list, max_length=ITEMS)
    causes: list[Text] = Field(default_factory=list, max_length=ITEMS)
    fixes: list[Fix] = Field(default_factory=list, max_length=ITEMS)
    tags: list[Name] = Field(default_factory=list, max_length=ITEMS)
    related: list[Name] = Field(default_factory=list, max_length=ITEMS)
    sources: list[Line] = Field(min_length=1, max_length=ITEMS)
    created_at: Optional[datetime] = None
    updated_at: Optional[datetime] = None

    @field_validator("id")
    @classmethod
    def _id_is_slug(cls, value: str) -> str:
        if not ID_PATTERN.match(value):
            raise ValueError("must be a lowercase slug of letters, digits, '.', '_' or '-' (3-120 characters)")
        return value

    @field_validator("causes", "tags", "related", "sources")
    @classmethod
    def _no_blank_items(cls, items: list[str]) -> list[str]:
        cleaned = [item.strip() for item in items]
        if any(not item for item in cleaned):
            raise ValueError("items must not be empty")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("items must not repeat")
        return cleaned

    @field_validator("created_at", "updated_at")
    @classmethod
    def _aware(cls, value: Optional[datetime]) -> Optional[datetime]:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Case":
        if _text_bytes(self, CASE_TEXT_BYTES) > CASE_TEXT_BYTES:
            raise PydanticCustomError("case_too_large", f"the case holds more than its limit of {CASE_TEXT_BYTES:,} bytes of text")
        if self.id in self.related:
            raise ValueError("related must not name the case itself")
        # A draft may still lack its diagnosis; a reviewed case is an answer and must have one.
        if self.status == "reviewed":
            for name in ("causes", "fixes"):
                if not getattr(self, name):
                    raise ValueError(f"a reviewed case needs at least one item in '{name}' (or mark it status: draft)")
        return self

    def to_document(self) -> dict:
        """The case as plain JSON-able data, without timestamps and empty parts."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"created_at", "updated_at"})

    def content_hash(self) -> str:
        """Hash of the content only: re-ingesting an unchanged file changes nothing."""
        return document_hash(self.to_document())


def _text_bytes(value: Any, budget: int) -> int:
    """UTF-8 bytes of all the strings in ``value`` (mapping keys too), counted only until they
    pass ``budget``. Each string is already within its own limit, so this bounds the sum."""
    total, pending = 0, [value]
    while pending and total <= budget:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item) if item.isascii() else len(item.encode("utf-8"))
        elif isinstance(item, BaseModel):
            pending.extend(item.__dict__.values())
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return total


def document_hash(document: dict) -> str:
    canonical = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
