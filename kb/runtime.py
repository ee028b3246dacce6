"""Process-wide settings a kbq process makes before numpy loads."""

from __future__ import annotations

import os

# The environment variables that cap BLAS/OpenMP threads in the libraries numpy may use.
SINGLE_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def prefer_one_blas_thread() -> None:
    """Run BLAS on one thread unless the user chose otherwise.

    kbq multiplies small matrices per query (one sentence through the encoder,
    a few hundred candidate vectors); spreading them over cores made encoding
    about ten times slower when measured, and starting OpenBLAS's thread pool
    costs a cold process ~15 ms. Must run before numpy is first imported."""
    for name in SINGLE_THREAD_ENV:
        os.environ.setdefault(name, "1")
