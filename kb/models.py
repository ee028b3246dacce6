"""The case: one documented training incident, validated with pydantic.

A YAML file in ``cases/`` is parsed into :class:`Case`; the database stores
``Case.to_document()`` and export writes it back, so the model is the single
definition of what a case may contain. Unknown keys are rejected so that a
typo in a reviewed file is an error rather than silently lost data.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
ConfigValue = Union[bool, int, float, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ModelInfo(_Strict):
    """The model being trained; ``version`` is the lexicon id (e.g. gemma-3)."""

    name: str = Field(min_length=1, description="as the source names it, e.g. Gemma-3-4B")
    family: Optional[str] = None
    version: Optional[str] = None
    size: Optional[str] = Field(None, description="parameter count, e.g. 4b, 1.1b, 8x7b")
    also: list[str] = Field(default_factory=list, description="other models the incident compares with")


class FrameworkInfo(_Strict):
    name: str = Field(min_length=1)
    version: Optional[str] = None
    libraries: dict[str, str] = Field(
        default_factory=dict, description="versions of deepspeed, transformers, peft, torch... when known"
    )


class HardwareInfo(_Strict):
    accelerator: Optional[str] = Field(None, description="e.g. A100-SXM4-80GB, Ascend 910B")
    count: Optional[int] = Field(None, ge=1)
    nodes: Optional[int] = Field(None, ge=1)
    notes: Optional[str] = None


class Observation(_Strict):
    """A number seen during the incident (a loss value, a grad norm, a step)."""

    metric: str = Field(min_length=1, description="loss, grad_norm, eval_loss, memory_gb, ...")
    value: float
    when: ObservationWhen = "other"
    step: Optional[int] = Field(None, ge=0)
    context: ObservationContext = "symptom"
    note: Optional[str] = None


class Fix(_Strict):
    action: str = Field(min_length=1)
    confirmed: bool = False
    key: Optional[str] = Field(
        None, description="short slug naming the kind of fix, so equal fixes of different cases merge"
    )


class UserPhrasing(_Strict):
    """The symptom told the way a user would report it, once in each language, so a report in
    either language meets the case. Written from the case's own facts, not copied from a source."""

    en: str = Field(min_length=1)
    zh: str = Field(min_length=1)
    queries: list[str] = Field(
        default_factory=list,
        description="short reports as users type them (issue titles, chat lines, error lines), in either language",
    )


class Case(_Strict):
    id: str
    title: str = Field(min_length=1)
    status: Status = "reviewed"
    language: str = Field(min_length=2, description="language of the source, e.g. zh, en")
    phase: Optional[Phase] = None
    symptom: str = Field(min_length=1)
    user_phrasing: Optional[UserPhrasing] = None
    model: ModelInfo
    framework: FrameworkInfo
    hardware: HardwareInfo = Field(default_factory=HardwareInfo)
    config: dict[str, ConfigValue] = Field(default_factory=dict)
    observations: list[Observation] = Field(default_factory=list)
    causes: list[str] = Field(default_factory=list)
    fixes: list[Fix] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    related: list[str] = Field(default_factory=list)
    sources: list[str] = Field(min_length=1)
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


def document_hash(document: dict) -> str:
    canonical = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
