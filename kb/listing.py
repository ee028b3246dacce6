"""The short form of a case that listings show: one row per case, the same at every door.

``kbq list --json`` prints these rows and the MCP ``list_cases`` tool returns them, so an
agent and a script see the same fields; the full document is what ``get`` returns.
"""

from __future__ import annotations

from typing import Any, Iterable

ROW_FIELDS = ("id", "title", "status", "phase", "model", "framework", "tags", "sources")


def case_rows(cases: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The listing row of each case document (a field the case lacks is null)."""
    return [{name: case.get(name) for name in ROW_FIELDS} for case in cases]
