"""The texts of 9P2000 and 9P2000.u errors (docs/9p.md, "Error texts").

A plain 9P2000 client learns what went wrong from Rerror's text alone, and the clients
that turn it back into an errno match it whole against a table: Linux v9fs without .u
compares the entire string with the strerror texts of its net/9p/error.c (anything else is
"server fault"), plan9port's 9pfuse looks for words in it ("directory" gives ENOTDIR), and
p9fs knows a missing file only by "file not found". A text with a detail after the
strerror ("No such file or directory: a.txt") is in no such table, so a filesystem error
is sent as a bare text the tables know: glibc's strerror, which is what Linux's table
holds, except where another of its strings serves more clients (``_SUBSTITUTES``).
9P2000.u carries the errno as a number besides (Linux uses that), and gets the same text
for the clients that only read the text.

An error whose text is an answer for a person rather than an errno to map (a control
file's refused command: "Invalid argument: usage: spawn NAME") is raised as
:class:`Explained` and sent whole.
"""

from __future__ import annotations

import errno
import os

#: errnos sent with another text of Linux's table. ENOENT: "file not found" is in Linux's
#: table (ENOENT), matches 9pfuse's "not found" (ENOENT) and is the one text p9fs takes for
#: a missing file. ESTALE and EOVERFLOW have no string in Linux's table: a fid whose name
#: another client took away is reported as missing; an inode number out of range as out
#: of range.
_SUBSTITUTES = {
    errno.ENOENT: "file not found",
    errno.ESTALE: "file not found",
    errno.EOVERFLOW: os.strerror(errno.ERANGE),
}


class Explained(OSError):
    """An error whose whole text (``strerror``) is meant for the person at the client, sent
    as is to 9P2000 and .u clients; .L clients get the errno only, as for any error."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, f"{os.strerror(code)}: {detail}")


def text_of(code: int) -> str:
    """The 9P2000 text of a filesystem error *code*."""
    return _SUBSTITUTES.get(code) or os.strerror(code)


_BY_TEXT = {os.strerror(code): code for code in sorted(errno.errorcode, reverse=True)}
_BY_TEXT["file not found"] = errno.ENOENT


def errno_of(text: str) -> int:
    """The errno a text names: a bare text of :func:`text_of`, or a text that starts with
    a strerror and a colon (an :class:`Explained` one, other servers' "strerror: detail");
    0 when it names none."""
    return _BY_TEXT.get(text) or _BY_TEXT.get(text.split(":", 1)[0], 0)
