"""Structured features of a case, in the same shape the query parser produces.

Reviewed fields win; where a case leaves a feature out, the parser reads it
from the case's own title and symptom, so a terse case still matches a query
that names, say, its ZeRO stage only in prose.
"""

from __future__ import annotations

import re
from typing import Any

from .lexicon import Lexicon, Match, normalize
from .parser import extract_features

_SIZE = re.compile(r"(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)\s*b\b")
_SEQ_KEYS = ("block_size", "seq_len", "cutoff_len", "max_seq_length", "max_length", "sequence_length")
_BATCH_KEYS = ("per_device_batch_size", "per_device_train_batch_size", "batch_size")


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _size_in_billions(size: str | None) -> float | None:
    if not size:
        return None
    match = _SIZE.search(normalize(size))
    if not match:
        return None
    value = float(match.group(2))
    return value * int(match.group(1)) if match.group(1) else value


def _concept(lexicon: Lexicon, group: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    return lexicon.resolve(group, text) or normalize(text).strip()


def prose_text(doc: dict[str, Any]) -> str:
    """The case's own prose (title, then symptom), normalized: where features are read from."""
    return normalize(f"{doc['title']}\n{doc['symptom']}")


def case_features(doc: dict[str, Any], lexicon: Lexicon, symptoms: list[str] | None = None,
                  prose: tuple[str, list[Match]] | None = None) -> dict[str, Any]:
    """Feature values of one case document (see ``kb.models.Case.to_document``).

    ``prose`` may carry the normalized title and symptom (see :func:`prose_text`) with their
    lexicon matches, and ``symptoms`` the symptom concepts the caller already found in the case's
    title, symptom, tags and user phrasing (the index build has them from tokenizing)."""
    model, framework = doc["model"], doc["framework"]
    config: dict[str, Any] = doc.get("config", {})
    hardware: dict[str, Any] = doc.get("hardware", {})
    feats: dict[str, Any] = {}

    # A model is a feature only when the case names one we can recognise ("not stated" is not a model).
    version = _concept(lexicon, "model", model["version"]) if model.get("version") else lexicon.resolve("model", model["name"])
    if version:
        feats["model"] = [version]
    feats["model_also"] = [c for c in (_concept(lexicon, "model", a) for a in model.get("also", [])) if c]
    feats["model_family"] = model.get("family") or lexicon.info("model", version or "").get("family")
    named = lexicon.resolve("framework", framework["name"])
    if named or normalize(framework["name"]).strip() not in ("not stated", "unknown", ""):
        feats["framework"] = [named or normalize(framework["name"]).strip()]
    libraries = [_concept(lexicon, "framework", name) for name in framework.get("libraries", {})]
    if "deepspeed" in config or "zero_stage" in config:
        libraries.append("deepspeed")
    feats["framework_libraries"] = sorted({lib for lib in libraries if lib})

    stage = config.get("zero_stage")
    if stage is None and config.get("deepspeed"):
        concept = lexicon.resolve("zero_stage", str(config["deepspeed"]))
        stage = lexicon.info("zero_stage", concept).get("value") if concept else None
    if stage is not None:
        feats["zero_stage"] = [int(stage)]
    for group in ("precision", "finetuning"):
        concept = _concept(lexicon, group, config.get(group))
        if concept:
            feats[group] = [concept]
    if doc.get("phase"):
        feats["phase"] = [doc["phase"]]
    accelerator = _concept(lexicon, "accelerator", hardware.get("accelerator"))
    if accelerator:
        feats["accelerator"] = [accelerator]

    losses = [o["value"] for o in doc.get("observations", []) if o["metric"] == "loss" and o.get("context", "symptom") == "symptom"]
    if losses:
        feats["loss"] = losses
    steps = [o["step"] for o in doc.get("observations", []) if o.get("step") and o.get("context", "symptom") == "symptom"]
    if steps:
        feats["step"] = steps
    size = _size_in_billions(model.get("size"))
    if size:
        feats["model_size"] = [size]
    count = hardware.get("count") or _number(config.get("num_gpus"))
    if count:
        feats["gpu_count"] = [int(count)]
    for name, keys in (
        ("learning_rate", ("learning_rate", "lr")),
        ("batch_size", _BATCH_KEYS),
        ("seq_len", _SEQ_KEYS),
        ("lora_rank", ("lora_rank", "lora_r")),
    ):
        for key in keys:
            value = _number(config.get(key))
            if value:
                feats[name] = [value]
                break

    if prose is None:
        text = prose_text(doc)
        prose = (text, lexicon.find(text))
    from_prose = extract_features(prose[0], prose[1], lexicon)
    if symptoms is None:
        phrasing = doc.get("user_phrasing") or {}
        told = normalize("\n".join([prose[0], " ".join(doc.get("tags", [])), phrasing.get("en", ""), phrasing.get("zh", ""), *phrasing.get("queries", [])]))
        symptoms = [m.concept for m in lexicon.find(told) if m.group == "symptom"]
    feats["symptom"] = sorted(set(symptoms))
    for name, values in from_prose.items():
        if name == "model":
            continue  # the model field is authoritative; prose often names comparison models
        if not feats.get(name):
            feats[name] = values
    return {name: value for name, value in feats.items() if value not in (None, [], "")}
