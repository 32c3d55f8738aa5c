"""Queries with Plan 9's semantics (libndb ``ndbsearch``/``ndbgetvalue``, ``ndb/query``).
Pure: works on any iterable of entries or matches, wherever they came from (a scan, the
index, a chain of files).

- ``search(entries, attr, value)``: the entries holding the pair ``attr=value`` (exact,
  case-sensitive), in database order; each match remembers the first such pair.
- ``getvalue(matches, rattr)``: the value of *rattr* in the first matching entry that has
  one, looking first on the line of the matched pair (pairs on one line bind tighter,
  ndb(6)), starting at the matched pair and going round the line, then through the whole
  entry. So in an entry with ``ip=1.2.3.4 ether=a`` on one line and ``ip=1.2.3.5 ether=b``
  on the next, ``ip 1.2.3.5 ether`` answers ``b``.
- ``ndbquery(...)``: the text ``ndb/query [-a] [-m] attr value [rattr]`` prints:

  ========================  ============================================================
  no rattr                  every matching entry, one per paragraph: pairs of a line
                            separated by a space, further lines indented by a tab
                            (the layout of the ndb(8) example), values quoted as
                            9front's ``%$`` does, ``attr=`` for empty values
  rattr                     the first value (``getvalue``)
  ``-m`` rattr              every value of *rattr* in that first entry
  ``-a`` rattr              every value of *rattr* in every matching entry
  ========================  ============================================================

  Plan 9's ``ndb/query`` prints every matching entry when *rattr* is absent (its manual:
  "all entries matched by the search are returned"); 9front's later rewrite prints only
  the first unless ``-a``. We follow the manual. Nothing found prints nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ndb.syntax import Entry, Pair, format_value


@dataclass(frozen=True, slots=True)
class Match:
    """An entry found by a search, and where in it the searched pair is."""

    entry: Entry
    line: int  # index into entry.lines
    index: int  # index into that line

    @property
    def pair(self) -> Pair:
        return self.entry.lines[self.line][self.index]


def match_entry(entry: Entry, attr: str, value: str) -> Match | None:
    """The first pair ``attr=value`` of *entry* as a Match, or None."""
    for li, line in enumerate(entry.lines):
        for pi, p in enumerate(line):
            if p.attr == attr and p.value == value:
                return Match(entry, li, pi)
    return None


def search(entries: Iterable[Entry], attr: str, value: str) -> Iterator[Match]:
    """Every entry holding ``attr=value``, in order (``ndbsearch`` then ``ndbsnext``)."""
    for e in entries:
        m = match_entry(e, attr, value)
        if m is not None:
            yield m


def line_value(match: Match, rattr: str) -> str | None:
    """*rattr* on the matched line, starting at the matched pair and wrapping round."""
    line = match.entry.lines[match.line]
    n = len(line)
    for k in range(n):
        p = line[(match.index + k) % n]
        if p.attr == rattr:
            return p.value
    return None


def getvalue(matches: Iterable[Match], rattr: str) -> tuple[str, Match] | None:
    """``ndbgetvalue``: the first value of *rattr* among the matches, with its match."""
    for m in matches:
        v = line_value(m, rattr)
        if v is None:
            v = m.entry.get(rattr)
        if v is not None:
            return v, m
    return None


def format_query_entry(entry: Entry) -> str:
    """One entry as ``ndb/query`` prints it (without the final newline)."""
    return "\n\t".join(
        " ".join(f"{p.attr}={format_value(p.value)}" for p in line) for line in entry.lines
    )


def ndbquery(
    matches: Iterable[Match], rattr: str | None = None, *, all: bool = False, multiple: bool = False
) -> list[str]:
    """The lines ``ndb/query`` prints, each without its newline (an entry of several lines
    is one item holding newlines)."""
    if rattr is None:
        return [format_query_entry(m.entry) for m in matches]
    if all:
        return [v for m in matches for v in m.entry.values(rattr)]
    found = getvalue(matches, rattr)
    if found is None:
        return []
    value, m = found
    return m.entry.values(rattr) if multiple else [value]
