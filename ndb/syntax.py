"""The ndb(6) text format: bytes to entries and entries to text. Pure: no I/O.

The grammar is Plan 9's (libndb's ``ndbparse``/``_ndbparsetuple``, with 9front's quoting),
so a file written for Plan 9 reads the same here:

- A file is a sequence of *entries*. A line that does not start with white space (space,
  tab, carriage return) starts an entry; lines that start with white space continue it.
  A blank line ends the current entry; a line starting with ``#`` is a comment and does
  not end it. An indented line with no entry open starts one.
- A line holds *pairs*: ``attr=value``, or a bare ``attr`` (its value is empty).
  White space may come between an attribute and its ``=`` but not after: in
  ``sys = helix`` Plan 9 (and this parser) reads ``sys`` with an empty value and a bare
  ``helix``.
- A value is either unquoted (up to the next white space) or quoted with ``"`` or ``'``;
  inside quotes the quote character doubled stands for itself (9front), so every value
  without a newline can be written. An unquoted value starting with ``#`` is empty and
  the ``#`` starts a comment; ``#`` elsewhere in a value is part of it.
- ``#`` outside a value starts a comment to the end of the line.
- Attribute names are 1 to 31 (``Ndbalen - 1``) printable ASCII characters other than
  ``=``, ``"``, ``'`` and ``#``; values may be of any length.

Where Plan 9 silently truncates or guesses, this parser refuses with the file and line:
an unterminated quote, an attribute name too long, a control character, text that is
not UTF-8.

A final line without its newline is *incomplete* and is not part of the database: Plan 9's
``ndbparse`` ignores it the same way. This is what makes appends crash-safe: a writer
killed mid-``write()`` leaves at worst an incomplete last line, which every reader skips
(see ndb.database). ``Parsed.torn`` returns those bytes so a writer can set them aside.
"""

from __future__ import annotations

import contextlib
import gc
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from ndb.errors import NdbSyntaxError, NdbValueError

_GC_PAUSE_FROM = 1 << 20

MAX_ATTR = 31
"""Longest attribute name, in characters (Plan 9's ``Ndbalen`` is 32 with the NUL)."""

_WHITE = " \t\r"

# Control characters other than tab and CR (newlines end lines; both others are white space).
_BAD_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# What a value may not hold when we write it: also CR and newline.
_BAD_VALUE_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ATTR_OK = re.compile(r"[!$-&(-<>-~]+")  # printable ASCII minus space " # ' =
_NEEDS_QUOTE = re.compile(r"[ \t#]|^[\"']")

# One pair: attribute, optional white space, optional "=value". Possessive quantifiers keep
# an unterminated quote from backtracking into a shorter, wrong, match.
_PAIR = re.compile(
    r"[ \t\r]*+"
    r"([^ \t\r=\"'#]++)"
    r"[ \t\r]*+"
    r"(?:=(?:"
    r"\"((?:[^\"]++|\"\")*+)\""
    r"|'((?:[^']++|'')*+)'"
    r"|(?![#\"'])([^ \t\r]*+)"
    r"|(?=\#)"
    r"))?"
)


class Pair(NamedTuple):
    """One ``attr=value`` tuple (Plan 9's Ndbtuple without the links).

    A NamedTuple rather than a frozen dataclass: a 100,000-entry file holds half a million
    pairs, and a tuple is made three times faster, which is a third of the parse.
    """

    attr: str
    value: str = ""

    def __str__(self) -> str:
        return format_pair(self)


@dataclass(frozen=True, slots=True)
class Entry:
    """One database entry: its pairs, line by line.

    The line structure matters to queries: pairs on one line bind tighter than pairs on
    different lines (ndb(6)), so ``ndbgetvalue`` looks on the matched line first. Where the
    entry stands in its file (first line number, byte span) is kept for error messages and
    the index, and is not part of equality: two entries are equal when their pairs and lines
    are.
    """

    lines: tuple[tuple[Pair, ...], ...]
    lineno: int = field(default=0, compare=False)
    start: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)

    @classmethod
    def of(cls, *pairs: Pair | tuple[str, str]) -> Entry:
        """A one-line entry from pairs or ``(attr, value)`` tuples."""
        return cls((tuple(p if isinstance(p, Pair) else Pair(*p) for p in pairs),))

    @property
    def pairs(self) -> tuple[Pair, ...]:
        """All pairs in order, the lines flattened (Plan 9's ``->entry`` chain)."""
        if len(self.lines) == 1:
            return self.lines[0]
        return tuple(p for line in self.lines for p in line)

    @property
    def kind(self) -> str:
        """The first attribute: by convention it says what the entry describes."""
        return self.lines[0][0].attr

    def get(self, attr: str) -> str | None:
        """The first value of *attr*, or None."""
        for line in self.lines:
            for p in line:
                if p.attr == attr:
                    return p.value
        return None

    def values(self, attr: str) -> list[str]:
        """Every value of *attr*, in order."""
        return [p.value for line in self.lines for p in line if p.attr == attr]


@dataclass(frozen=True, slots=True)
class Parsed:
    """What ``parse`` found: the entries, where the complete lines end, and the incomplete
    final line (``torn``) that readers ignore."""

    entries: tuple[Entry, ...]
    end: int
    torn: bytes


def parse(data: bytes, filename: str = "<ndb>", *, offset: int = 0, first_line: int = 1) -> Parsed:
    """Parse ndb text.

    *offset* and *first_line* say where *data* starts in its file, so that entries carry
    file offsets and errors carry file line numbers when a piece of a file is parsed (the
    index reads single entries and appended tails).
    """
    if len(data) < _GC_PAUSE_FROM:
        return _parse(data, filename, offset, first_line)
    with gc_paused():
        return _parse(data, filename, offset, first_line)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector.

    A big file makes hundreds of thousands of tuples, which sets the collector off again
    and again for nothing (tuples of strings hold no cycles): pausing it halves the time
    of a 100,000-entry parse.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _parse(data: bytes, filename: str, offset: int, first_line: int) -> Parsed:
    cut = data.rfind(b"\n") + 1
    body = data[:cut] if cut != len(data) else data
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + body.count(b"\n", 0, e.start)
        raise NdbSyntaxError(filename, line, "text is not valid UTF-8") from None
    bad = _BAD_CHAR.search(text)
    if bad:
        line = first_line + text.count("\n", 0, bad.start())
        raise NdbSyntaxError(filename, line, f"bad character U+{ord(bad.group()):04X}")
    ascii_only = body.isascii()
    lines = text.split("\n")
    lines.pop()  # the empty string after the final newline
    entries: list[Entry] = []
    cur: list[tuple[Pair, ...]] | None = None
    cur_line = cur_start = cur_end = 0
    pos = offset
    for i, line in enumerate(lines):
        size = (len(line) if ascii_only else len(line.encode("utf-8"))) + 1
        first = line[:1]
        if cur is not None and first not in (" ", "\t", "\r", "#"):
            entries.append(Entry(tuple(cur), cur_line, cur_start, cur_end))
            cur = None
        if first and first != "#":
            pairs = parse_line(line, filename, first_line + i)
            if pairs:
                if cur is None:
                    cur = []
                    cur_line, cur_start = first_line + i, pos
                cur.append(pairs)
                cur_end = pos + size
        pos += size
    if cur is not None:
        entries.append(Entry(tuple(cur), cur_line, cur_start, cur_end))
    return Parsed(tuple(entries), offset + cut, data[cut:])


_valid_attrs: dict[str, bool] = {}
_new_pair = tuple.__new__


def _attr_ok(attr: str) -> bool:
    ok = _valid_attrs.get(attr)
    if ok is None:
        ok = len(attr) <= MAX_ATTR and _ATTR_OK.fullmatch(attr) is not None
        if len(_valid_attrs) < 4096:
            _valid_attrs[attr] = ok
    return ok


def parse_line(line: str, filename: str = "<ndb>", lineno: int = 1) -> tuple[Pair, ...]:
    """The pairs of one line (without its newline); empty for a blank or comment line."""
    if line.isascii() and '"' not in line and "'" not in line and "#" not in line:
        # The common line: unquoted pairs, no comment. (An "=" after white space, as in
        # ``attr =value``, needs the full grammar.)
        pairs = []
        valid = _valid_attrs
        for token in line.split():
            attr, _, value = token.partition("=")
            if not valid.get(attr):
                if not attr:
                    return _parse_line_slow(line, filename, lineno)
                if not _attr_ok(attr):
                    raise NdbSyntaxError(filename, lineno, _bad_attr(attr))
            pairs.append(_new_pair(Pair, (attr, value)))
        return tuple(pairs)
    return _parse_line_slow(line, filename, lineno)


def _parse_line_slow(line: str, filename: str, lineno: int) -> tuple[Pair, ...]:
    pairs: list[Pair] = []
    pos = 0
    n = len(line)
    match = _PAIR.match
    while pos < n:
        m = match(line, pos)
        if m is None:
            rest = line[pos:].lstrip(_WHITE)
            if not rest or rest[0] == "#":
                break
            # x"y: a quote glued to a name is a bad character in it.
            glued = len(rest) == n - pos and pos > 0 and line[pos - 1] not in _WHITE + "="
            raise NdbSyntaxError(filename, lineno, _diagnose(rest, glued))
        attr = m.group(1)
        if len(attr) > MAX_ATTR or not _ATTR_OK.fullmatch(attr):
            raise NdbSyntaxError(filename, lineno, _bad_attr(attr))
        dq, sq, bare = m.group(2, 3, 4)
        if dq is not None:
            value = dq.replace('""', '"')
        elif sq is not None:
            value = sq.replace("''", "'")
        else:
            value = bare or ""
        pairs.append(Pair(attr, value))
        pos = m.end()
    return tuple(pairs)


def _diagnose(rest: str, glued: bool) -> str:
    """Say why the text at *rest* is not a pair (*glued*: it follows a name directly)."""
    c = rest[0]
    if c == "=":
        if rest[1:2] in ('"', "'"):
            return f"unterminated quote: {rest[1:40]!r}"
        return "'=' without an attribute name before it"
    if c in "\"'" and not glued:
        return "a quoted value must follow '=' directly"
    return f"bad character {c!r} in attribute name"


def _bad_attr(attr: str) -> str:
    if len(attr) > MAX_ATTR:
        return (
            f"attribute name too long: {attr[:20]}… has {len(attr)} characters, at most {MAX_ATTR}"
        )
    bad = next(c for c in attr if not _ATTR_OK.fullmatch(c))
    return f"bad character {bad!r} in attribute name {attr!r}"


def parse_entry(text: str, filename: str = "<ndb>") -> Entry:
    """Exactly one entry from *text* (a trailing newline is added when missing)."""
    if not text.endswith("\n"):
        text += "\n"
    parsed = parse(text.encode("utf-8"), filename)
    if len(parsed.entries) != 1:
        raise NdbSyntaxError(filename, 1, f"expected one entry, found {len(parsed.entries)}")
    return parsed.entries[0]


# -- formatting -----------------------------------------------------------------------------


def check_attr(attr: str) -> str:
    """Return *attr* if it can be an attribute name, else raise NdbValueError."""
    if not attr:
        raise NdbValueError("empty attribute name")
    if len(attr) > MAX_ATTR or not _ATTR_OK.fullmatch(attr):
        raise NdbValueError(_bad_attr(attr))
    return attr


def format_value(value: str) -> str:
    """*value* as it is written after ``=``: quoted when it holds white space or ``#`` or
    starts with a quote, with inner ``"`` doubled. Raises NdbValueError for a newline or a
    control character, which no ndb value can hold."""
    bad = _BAD_VALUE_CHAR.search(value)
    if bad:
        what = (
            "a newline"
            if bad.group() == "\n"
            else f"the control character U+{ord(bad.group()):04X}"
        )
        raise NdbValueError(f"a value cannot contain {what}: {value[:40]!r}")
    if value and _NEEDS_QUOTE.search(value):
        return '"' + value.replace('"', '""') + '"'
    return value


def format_pair(pair: Pair) -> str:
    """``attr=value``, or the bare ``attr`` for an empty value."""
    check_attr(pair.attr)
    if not pair.value:
        return pair.attr
    return f"{pair.attr}={format_value(pair.value)}"


def format_entry(entry: Entry) -> str:
    """The entry as text, line structure kept: continuation lines indented by a tab."""
    if not entry.lines or not all(entry.lines):
        raise NdbValueError("an entry needs at least one pair on every line")
    return "\n\t".join(" ".join(format_pair(p) for p in line) for line in entry.lines) + "\n"


def format_entry_line(entry: Entry) -> str:
    """The entry on a single line (how appends write it: a torn append is then an
    incomplete line, which readers ignore, never a shortened entry)."""
    pairs = entry.pairs
    if not pairs:
        raise NdbValueError("an entry needs at least one pair")
    return " ".join(format_pair(p) for p in pairs) + "\n"


def format_entries(entries: Iterable[Entry]) -> str:
    """A whole file's text for *entries* (no comments: those live only in files)."""
    return "".join(format_entry(e) for e in entries)


def iter_pairs(entries: Iterable[Entry]) -> Iterator[tuple[Entry, Pair]]:
    """Every (entry, pair) of *entries*."""
    for e in entries:
        for p in e.pairs:
            yield e, p
