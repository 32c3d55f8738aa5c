"""Errors of the ndb package.

Every error a user can cause (a malformed file, a bad name, an unknown user) is an
``NdbError``; the CLI prints those as one line without a traceback. Errors about a file's
text carry the file and the line so the message points at what to fix, as a compiler does:
``/home/a/grid/ndb/users:12: unterminated quote``.
"""

from __future__ import annotations


class NdbError(Exception):
    """Base of every error ndb raises for bad input or a bad file."""


class NdbSyntaxError(NdbError):
    """The text of an ndb file does not parse: the message names the file and the line."""

    def __init__(self, filename: str, line: int, message: str) -> None:
        super().__init__(f"{filename}:{line}: {message}")
        self.filename = filename
        self.line = line
        self.message = message


class NdbValueError(NdbError, ValueError):
    """A value or attribute cannot be written in ndb syntax, or fails a field's rules
    (a name with white space, a score that is not ``blake3:`` + 64 hex digits, ...).
    Also a ValueError, so callers that validate input can catch either."""


class NdbRecordError(NdbError):
    """An entry is well-formed ndb but not a valid record of its kind (a name record
    without a score, a user with two uids); the message says where when it came from a
    file."""


class NdbNotFound(NdbError):
    """The record asked for does not exist (removing an unknown user, deleting an unknown
    name)."""


class NdbConflict(NdbError):
    """The change would contradict what is there (adding a user that exists, a uid that
    another user holds)."""


class NdbPermission(NdbError, PermissionError):
    """The caller may not do this to a name (save over it without write permission, chmod a
    name they do not own, chown as anyone but root). ``errno`` is EACCES for missing
    permission bits and EPERM for what only the owner or root may do, as in Unix."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message
