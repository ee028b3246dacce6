"""What a reviewer should check before a draft case becomes an answer.

First of all: whether the thread the draft was made from is a case already (under another
id, or linked under a repository's old name: kb.threads). Such a draft is listed with the
case it duplicates, for the reviewer to merge what it adds into that case and drop it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .threads import ThreadIndex

MIN_SYMPTOM_CHARS = 80


@dataclass
class DraftReport:
    id: str
    title: str
    location: str
    findings: list[str]
    duplicate_of: str | None = None  # the id of the case that documents the draft's thread already


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


def _report(document: dict[str, Any], location: str, known: ThreadIndex | None) -> DraftReport:
    notes = findings(document)
    clash = known.clash(document["id"], document.get("sources") or []) if known is not None else None
    if clash is not None:
        notes.insert(0, f"duplicate: {clash.summary()}; merge what this draft adds into that case and drop the draft")
    return DraftReport(document["id"], document["title"], location, notes, clash.other_id if clash else None)


def review_files(paths: list[Path], known: ThreadIndex | None = None) -> list[DraftReport]:
    """The drafts among the case files in ``paths``; with ``known``, those whose thread is a case already say so."""
    from .casefiles import load_cases

    return [_report(loaded.case.to_document(), str(loaded.path), known)
            for loaded in load_cases(paths, include_drafts=True) if loaded.case.status == "draft"]


def review_documents(documents: list[dict[str, Any]], location: str, known: ThreadIndex | None = None) -> list[DraftReport]:
    return [_report(d, location, known) for d in documents if d.get("status") == "draft"]
