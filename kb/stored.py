"""The forms in which the database hands cases out, free of SQLAlchemy and pydantic: the query
path and the read-only commands (kb.db.fastread) import them, and validating is the store's job,
done on the way in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Case


@dataclass(frozen=True)
class StoredJson:
    """A case as the database keeps it: id and status columns, the document as JSON text,
    and its timestamps (ISO 8601). The index build decodes the text in its worker processes,
    so reading 100k cases for a rebuild does not parse them all in one process first."""

    id: str
    status: str
    text: str
    created_at: str
    updated_at: str

    def document(self) -> dict:
        """The document with its timestamps, as :func:`kb.index.build_index` indexes it."""
        document = json.loads(self.text)
        document["created_at"] = self.created_at
        document["updated_at"] = self.updated_at
        return document


@dataclass(frozen=True)
class StoredCase:
    """A case as stored: its document plus the timestamps the store keeps (aware, UTC)."""

    id: str
    status: str
    document: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    def to_case(self) -> Case:
        """The validated case with its timestamps, e.g. for export; a row stored before a check it
        fails existed (a control character, a size limit) is named in one line."""
        from .casefiles import validate_document

        return validate_document({**self.document, "created_at": self.created_at, "updated_at": self.updated_at},
                                 f"stored case '{self.id}'")
