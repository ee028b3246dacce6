"""Turning recognised text into a draft case: shared by the article and GitHub importers.

The drafts are built with the same lexicon and parser the retriever uses, so
what an importer recognises is exactly what a query would. A draft is marked
``status: draft`` and stays out of answers until a person reviews it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..casefiles import validate_document
from ..lexicon import CJK_CHARS, Lexicon, Match, detect_language, normalize
from ..models import Case
from ..parser import extract_features
from ..report import ANSI_ESCAPE

_CJK = re.compile(f"[{CJK_CHARS}]")
# C0 but tab, line feed and carriage return; DEL; C1
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SLUG = re.compile(r"[^a-z0-9]+")
_SENTENCE = re.compile(r"(?<=[。！？!?])|(?<=\.)\s+")


def slugify(text: str, fallback: str = "draft") -> str:
    slug = _SLUG.sub("-", normalize(text)).strip("-")[:100].strip("-")
    return slug if len(slug) >= 3 else f"{fallback}-{slug}".strip("-")


def plain_text(text: str) -> str:
    """Text as a case may hold it: terminal colour codes (pasted logs carry them) removed and any
    other control character dropped. Imported text is raw material, cleaned rather than refused."""
    return _CONTROL.sub("", ANSI_ESCAPE.sub("", text))


def _plain(value: Any) -> Any:
    """``value`` (a draft's fields) with every string made :func:`plain_text`."""
    if isinstance(value, str):
        return plain_text(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {_plain(key): _plain(item) for key, item in value.items()}
    return value


def first_sentences(text: str, limit: int = 600) -> str:
    """Whole sentences up to about ``limit`` characters (never cut mid-sentence unless one is longer)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    out = ""
    for sentence in _SENTENCE.split(text):
        if out and len(out) + len(sentence) > limit:
            break
        out = f"{out} {sentence}".strip() if out and not _CJK.search(out[-1:]) else out + sentence
    return out or text[:limit]


@dataclass
class DraftParts:
    """What an importer found, before it becomes a :class:`Case`."""

    id: str
    title: str
    symptom: str
    body: str                     # all the useful text, for features and numbers
    headline: str = ""            # text where the main model/framework is named first (a title)
    sources: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    fixes: list[tuple[str, bool]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    libraries: dict[str, str] = field(default_factory=dict)
    framework_hint: str | None = None
    accelerator_hint: str | None = None
    gpu_count_hint: int | None = None


def _main_concept(lexicon: Lexicon, group: str, headline: str, body: str) -> str | None:
    """The concept of a group named first in the headline, else the one named most in the body."""
    for match in lexicon.find(normalize(headline)):
        if match.group == group:
            return match.concept
    counts = Counter(m.concept for m in lexicon.find(normalize(body)) if m.group == group)
    return counts.most_common(1)[0][0] if counts else None


def _config(features: dict[str, list], gpu_count: int | None) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if features.get("zero_stage"):
        config["zero_stage"] = features["zero_stage"][0]
        config["deepspeed"] = f"zero-{features['zero_stage'][0]}"
    for name in ("precision", "finetuning"):
        if features.get(name):
            config[name] = features[name][0]
    for name in ("learning_rate", "batch_size", "seq_len", "lora_rank"):
        if features.get(name):
            config[{"batch_size": "per_device_batch_size", "seq_len": "block_size"}.get(name, name)] = features[name][0]
    if gpu_count:
        config["num_gpus"] = gpu_count
    return config


def build_draft(parts: DraftParts, lexicon: Lexicon, where: str) -> Case:
    """The draft case of ``parts``, validated like any case; an error names ``where`` it came from."""
    parts = DraftParts(**_plain(vars(parts)))
    norm_body = normalize(parts.body)
    matches: list[Match] = lexicon.find(norm_body)
    features = extract_features(norm_body, matches, lexicon, prose=True)
    model_id = _main_concept(lexicon, "model", parts.headline, parts.body)
    framework_id = parts.framework_hint or _main_concept(lexicon, "framework", parts.headline, parts.body)
    model: dict[str, Any] = {"name": model_id or "not stated"}
    if model_id:
        model["version"] = model_id
        family = lexicon.info("model", model_id).get("family")
        if family:
            model["family"] = family
    if features.get("model_size"):
        model["size"] = f"{features['model_size'][0]:g}b"
    # Other models named, leaving out bare family names ('gemma') when the text names a version of that family.
    named = features.get("model", [])
    families = {lexicon.info("model", m).get("family") for m in named if lexicon.info("model", m).get("family") != m}
    others = [m for m in named if m != model_id and m not in families]
    if others:
        model["also"] = others
    hardware: dict[str, Any] = {}
    accelerator = parts.accelerator_hint or (features.get("accelerator") or [None])[0]
    if accelerator:
        hardware["accelerator"] = accelerator
    count = parts.gpu_count_hint or (max(features["gpu_count"]) if features.get("gpu_count") else None)
    if count:
        hardware["count"] = count
    observations = [{"metric": "loss", "value": value, "context": "symptom"} for value in features.get("loss", [])]
    observations += [{"metric": "step", "value": float(step), "when": "at-step", "step": step} for step in features.get("step", [])]
    phase = (features.get("phase") or [None])[0]
    symptom_concepts = sorted({m.concept for m in matches if m.group == "symptom"})
    data = {
        "id": parts.id,
        "title": parts.title,
        "status": "draft",
        "language": detect_language(parts.body),
        "phase": phase,
        "symptom": parts.symptom,
        "model": model,
        "framework": {"name": framework_id or "not stated", "libraries": parts.libraries},
        "hardware": hardware,
        "config": _config(features, count),
        "observations": observations,
        "causes": parts.causes,
        "fixes": [{"action": action, "confirmed": confirmed} for action, confirmed in parts.fixes],
        "tags": list(dict.fromkeys([*parts.tags, *symptom_concepts, "imported"])),
        "sources": parts.sources,
    }
    return validate_document({k: v for k, v in data.items() if v not in (None, {}, [])} | {"model": model, "framework": data["framework"]},
                             where)
