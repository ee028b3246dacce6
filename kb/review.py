"""What a reviewer should check before a draft case becomes an answer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_SYMPTOM_CHARS = 80


@dataclass
class DraftReport:
    id: str
    title: str
    location: str
    findings: list[str]


def findings(case: dict[str, Any]) -> list[str]:
    """Gaps in a draft, each one line; an empty list means it only needs a read-through."""
    notes = []
    if not case.get("causes"):
        notes.append("no cause: state what the source concluded (or that it was not diagnosed)")
    if not case.get("fixes"):
        notes.append("no fix")
    elif not any(f.get("confirmed") for f in case["fixes"]):
        notes.append("no fix is marked confirmed: check whether the source shows one working")
    else:
        notes.append("a fix is marked confirmed by a heuristic: check the source says it worked")
    if case["model"].get("name") == "not stated" or not case["model"].get("version"):
        notes.append("model not recognised: set model.name/family/version")
    if case["framework"].get("name") == "not stated":
        notes.append("framework not recognised: set framework.name")
    if not case.get("observations"):
        notes.append("no observed numbers (loss values, steps)")
    if len(case.get("symptom", "")) < MIN_SYMPTOM_CHARS:
        notes.append("symptom is very short")
    if not case.get("phase"):
        notes.append("phase unknown")
    return notes


def review_files(paths: list[Path]) -> list[DraftReport]:
    from .casefiles import load_cases

    reports = []
    for loaded in load_cases(paths, include_drafts=True):
        if loaded.case.status == "draft":
            document = loaded.case.to_document()
            reports.append(DraftReport(document["id"], document["title"], str(loaded.path), findings(document)))
    return reports


def review_documents(documents: list[dict[str, Any]], location: str) -> list[DraftReport]:
    return [DraftReport(d["id"], d["title"], location, findings(d)) for d in documents if d.get("status") == "draft"]
