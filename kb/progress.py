"""Progress of long work (a first run, an index build, an ingest, an import), for a shell to show.

kb knows no terminal: long work reports :class:`Step` values to a callback it was handed
(``progress``), and the shell decides what to do with them. The CLI draws one line on a
terminal (cli/progress.py); the HTTP API and the MCP server pass no callback, and then
nothing is reported at all. Only long work imports this module, never a warm query.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar


@dataclass(frozen=True)
class Step:
    """Where one task stands."""

    task: str  # what is being done, e.g. "building the search index"
    done: int = 0
    total: int | None = None  # None: the size is not known, the step only says the task started
    unit: str = ""  # what is counted: "cases", "files", "texts"
    finished: bool = False  # the task is over (done, or failed): a shell clears what it shows


Progress = Callable[[Step], None]
T = TypeVar("T")

# At most this many reports per task, whatever its size: a report per case of a 100k-case
# build would cost more than the line it updates is worth.
REPORTS_PER_TASK = 200


class Ticker:
    """Reports how far one task got: ``ticker(done)``.

    A call from another process than the one that made the ticker is ignored: work cut into
    forked workers (kb.forkmap) calls it in each worker, and there the parent reports each
    chunk as it completes instead. With no ``progress`` every call does nothing.
    """

    def __init__(self, progress: Progress | None, task: str, total: int | None = None, unit: str = "") -> None:
        self.progress = progress
        self.task = task
        self.total = total
        self.unit = unit
        self._pid = os.getpid()
        self._every = max(1, (total or 0) // REPORTS_PER_TASK)
        self._last = -1

    def __call__(self, done: int) -> None:
        if self.progress is None or os.getpid() != self._pid:
            return
        if done != self.total and 0 <= self._last <= done < self._last + self._every:
            return
        self._last = done
        self.progress(Step(self.task, done, self.total, self.unit))

    def over(self, items: Iterable[T]) -> Iterator[T]:
        """``items`` one by one, counting each once the consumer is done with it."""
        for done, item in enumerate(items, 1):
            yield item
            self(done)

    def offset(self, base: int) -> Callable[[int], None]:
        """The same ticker for a part of the task that starts after ``base`` items."""
        return lambda done: self(base + done)

    def finish(self) -> None:
        if self.progress is not None and os.getpid() == self._pid:
            self.progress(Step(self.task, self._last if self._last >= 0 else 0, self.total, self.unit, finished=True))


@contextmanager
def tracked(progress: Progress | None, task: str, total: int | None = None, unit: str = "",
            start: int = 0) -> Iterator[Ticker]:
    """A task reported from its start (``start`` items already done) to its end, which is
    reported however the task ends, so a failure's message never lands on a progress line."""
    ticker = Ticker(progress, task, total, unit)
    ticker(start)
    try:
        yield ticker
    finally:
        ticker.finish()
