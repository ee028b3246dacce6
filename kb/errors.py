"""Errors the shells turn into one clear line (CLI) or a 4xx (API).

Every message names what is wrong and where, so it can be shown as is.
"""

from __future__ import annotations


class KbqError(Exception):
    """Base class: an expected failure with a message fit for the user."""

    exit_code = 1


class QueryError(KbqError):
    """The query text is unusable (empty, too long, not text)."""

    exit_code = 2


class UsageError(KbqError):
    """A command asked for something it needs confirmed or completed (exit 2, as usage errors)."""

    exit_code = 2


class CaseFileError(KbqError):
    """A case file cannot be read or does not validate."""


class DatabaseError(KbqError):
    """The database URL is wrong, unreachable, busy or at the wrong schema."""


class NotFoundError(KbqError):
    """A case id that is not in the case base."""


class ConflictError(KbqError):
    """A write that would overwrite something the caller said was new."""


class DuplicateThreadError(ConflictError):
    """A case whose source thread another case already documents (see kb.threads); ``clash``
    says which, so a door can name the file or the request the case came from."""

    def __init__(self, message: str, clash=None):
        super().__init__(message)
        self.clash = clash
