"""Long work shown as one line on a terminal's stderr, redrawn in place and cleared when done.

The core reports :class:`kb.progress.Step` values; this draws them as
``kbq: building the search index: 120/156 cases``. The CLI hands kb a reporter only when
stderr is a terminal (cli.main), so a pipe, a CI log or a test sees nothing extra, and this
module is imported only once there is something to show: never on a warm query.

A plain carriage-return line rather than a rich live display: a live display redraws from a
thread of its own, and a process running a second thread builds its index on one core
(kb.forkmap). No colour is used, so ``NO_COLOR`` is honoured as it is; on ``TERM=dumb`` no
escape sequence is written either (the line is blanked with spaces instead).
"""

from __future__ import annotations

import os
import sys
import time
import unicodedata
from typing import TextIO

from kb.progress import Step
from kb.querytext import shown

REDRAW_SECONDS = 0.1  # at most this often for the same task; a new task or its last step at once


class TerminalLine:
    """Draws steps on one line of ``stream``, a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.plain = os.environ.get("TERM", "") == "dumb"
        self._shown = 0  # cells of the line on screen, 0 when there is none
        self._task: str | None = None
        self._drawn_at = 0.0

    def __call__(self, step: Step) -> None:
        if step.finished:
            self.clear()
            return
        now = time.monotonic()
        if step.task == self._task and step.done != step.total and now - self._drawn_at < REDRAW_SECONDS:
            return
        self._task, self._drawn_at = step.task, now
        self._draw(_fit(describe(step), _columns(self.stream) - 1))

    def clear(self) -> None:
        """Remove the line (before output or an error is printed, or at the end)."""
        if self._shown:
            self._write("\r" + (" " * self._shown + "\r" if self.plain else "\x1b[K"))
            self._shown = 0
        self._task = None

    def _draw(self, line: str) -> None:
        width = _cells(line)
        pad = " " * (self._shown - width) if self.plain and self._shown > width else ""
        self._write("\r" + line + (pad if self.plain else "\x1b[K"))
        self._shown = width

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: the work goes on without a display
            self._shown = 0


def describe(step: Step) -> str:
    """``kbq: TASK: DONE/TOTAL UNIT``, or ``kbq: TASK...`` while the size is unknown."""
    task = shown(_home_as_tilde(step.task), one_line=True)
    if step.total is None:
        return f"kbq: {task}..."
    return f"kbq: {task}: {step.done:,}/{step.total:,} {step.unit}".rstrip()


def _home_as_tilde(text: str) -> str:
    home = os.path.expanduser("~")
    return text.replace(home + os.sep, "~" + os.sep) if home not in ("", "~", os.sep) else text


def _columns(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns if columns > 10 else 80  # a pseudo-terminal may report 0


def _cells(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` terminal cells: a line that wraps cannot be redrawn in place."""
    if _cells(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        cell = 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        if used + cell > width - 3:
            break
        out.append(ch)
        used += cell
    return "".join(out) + "..."


_LINE: TerminalLine | None = None


def report(step: Step) -> None:
    """The reporter the CLI hands kb when stderr is a terminal: one line for the whole process."""
    global _LINE
    if _LINE is None:
        _LINE = TerminalLine(sys.stderr)
    _LINE(step)
