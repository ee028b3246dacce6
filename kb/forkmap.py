"""Run a function over consecutive chunks of a large job on every core, in forked workers.

Index builds spend their time in pure Python (tokenizing) and in the sentence
encoder (numpy with one BLAS thread); both scale with cores when the work is cut
into chunks. Workers are forked so they share the parent's inputs (documents,
lexicon, the loaded encoder) without pickling them: the parent stores the shared
state here just before the pool starts. Forking a process that runs other
threads can deadlock, so a multi-threaded caller (a server rebuilding in the
background) runs the chunks itself, in order.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_STATE: Any = None  # what the forked workers read; set only while a pool runs


def workers_available() -> int:
    """How many worker processes a job may use now (1: run in this process)."""
    if os.name != "posix" or threading.active_count() > 1:
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def _call(job: tuple[Callable[[Any, int, int], T], int, int]) -> T:
    function, start, end = job
    return function(_STATE, start, end)


def chunked(function: Callable[[Any, int, int], T], state: Any, size: int, *, parallel: bool,
            chunks_per_worker: int = 4, progress: Callable[[int], None] | None = None) -> list[T]:
    """``function(state, start, end)`` over consecutive ranges covering ``0..size``, results in
    order. One call in this process unless ``parallel`` (the job is large enough to be worth
    forking for) and a second core can be used. With workers, ``progress(end)`` is called here
    as each range completes, in order (a single call in this process reports for itself)."""
    workers = workers_available()
    if not parallel or size < 2 or workers < 2:
        return [function(state, 0, size)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    global _STATE
    step = -(-size // (workers * chunks_per_worker))
    jobs = [(function, start, min(start + step, size)) for start in range(0, size, step)]
    _STATE = state
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            results = []
            for (_, _, end), result in zip(jobs, pool.map(_call, jobs)):
                results.append(result)
                if progress is not None:
                    progress(end)
            return results
    finally:
        _STATE = None
