"""A lossless view of an ndb file, for edits that keep what a person wrote. Pure: no I/O.

grid changes files that people also edit by hand (users, peers). An edit must not
reformat the file, drop its comments or reorder it: removing one entry removes exactly the
lines of that entry (first to last line holding its pairs) and leaves every other byte as
it was; appending adds text after the last complete line. Comments above a removed entry
stay, on purpose: grid cannot know which entry a comment talks about.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ndb.syntax import Entry, Parsed, format_entry, parse


@dataclass(frozen=True, slots=True)
class Document:
    """A file's bytes with their parse. ``data`` is the whole file, torn tail included."""

    data: bytes
    parsed: Parsed

    @classmethod
    def parse(cls, data: bytes, filename: str = "<ndb>") -> Document:
        return cls(data, parse(data, filename))

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self.parsed.entries

    def without(self, drop: Callable[[Entry], bool]) -> bytes:
        """The file's text with every entry for which *drop* is true cut out, and without
        an incomplete final line. Every other byte is kept."""
        out: list[bytes] = []
        pos = 0
        for e in self.parsed.entries:
            if drop(e):
                out.append(self.data[pos : e.start])
                pos = e.end
        out.append(self.data[pos : self.parsed.end])
        return b"".join(out)

    def with_appended(self, entries: Iterable[Entry]) -> bytes:
        """The file's complete text followed by *entries*, formatted with their lines."""
        text = "".join(format_entry(e) for e in entries).encode("utf-8")
        return self.data[: self.parsed.end] + text
