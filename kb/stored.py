"""The form in which the database hands cases to an index build (no pydantic: the query
path imports :mod:`kb.index`, and validating is the store's job, done on the way in)."""

from __future__ import annotations

import json
from dataclasses import dataclass


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
