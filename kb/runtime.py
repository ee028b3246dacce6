"""Process-wide settings a kbq process makes before numpy loads."""

from __future__ import annotations

import os
import sys

# The environment variables that cap BLAS/OpenMP threads in the libraries numpy may use.
SINGLE_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def prefer_one_blas_thread() -> None:
    """Run BLAS on one thread unless the user chose otherwise.

    kbq multiplies small matrices per query (one sentence through the encoder,
    a few hundred candidate vectors); spreading them over cores made encoding
    about ten times slower when measured, and starting OpenBLAS's thread pool
    costs a cold process ~15 ms. Must run before numpy is first imported."""
    for name in SINGLE_THREAD_ENV:
        os.environ.setdefault(name, "1")


# From this many cases on, a query's per-case float64 score arrays pass glibc's default
# 128 KB mmap threshold (see keep_freed_memory).
MMAPPED_ARRAYS_FROM_CASES = (128 << 10) // 8


def keep_freed_memory() -> None:
    """Let glibc reuse freed query-sized arrays instead of returning them to the kernel.

    By default every block above 128 KB is its own mmap, unmapped when freed, so each
    per-case score array of a query (800 KB at 100k cases) comes back as fresh pages the
    kernel must fault in and zero: ~6,000 page faults and ~12 ms of a 35 ms query at 100k
    cases (measured with getrusage). Blocks up to 32 MB now come from the heap, which keeps
    up to 64 MB free. Called when an index of ``MMAPPED_ARRAYS_FROM_CASES`` or more cases
    loads (a smaller base gains nothing, and importing ctypes costs a cold command ~2 ms).
    A no-op where glibc's mallopt is not available."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 64 << 20)
    mallopt(_M_TOP_PAD, 4 << 20)


def settle_heap() -> None:
    """Move every object that exists now out of reach of the garbage collector's full passes.

    Called once long-lived state is loaded (an index, the encoder's tables): a full
    collection walks every tracked container, and a loaded 100k-case index with the
    encoder is ~60,000 of them, including dicts of 100k-250k entries. Measured at 100k
    cases, those passes (27 ms each) were the slowest 1% of warm queries: p99 86 ms, and
    50 ms after freezing. Frozen objects are still freed by reference counting; only
    cyclic garbage that exists at the call would stay (the call sites create none).
    ``gc.freeze`` is constant time: it relinks lists, it does not collect."""
    import gc

    gc.freeze()
