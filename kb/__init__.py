"""kbq core library: case base, query understanding and retrieval.

Nothing in this package knows about HTTP or terminals; ``cli/`` and ``api/``
are thin shells over :mod:`kb.service`.
"""

__version__ = "0.1.0"
