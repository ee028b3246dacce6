"""What a search or a listing may be narrowed to: a model, a framework, a tag.

Apart from :mod:`kb.retriever`, which applies them, because listing and counting cases
(``kbq list``) takes them too and must not import numpy for that.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Filters:
    model: str | None = None
    framework: str | None = None
    tag: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"model": self.model, "framework": self.framework, "tag": self.tag}

    def __bool__(self) -> bool:
        return bool(self.model or self.framework or self.tag)
