"""The ndb(6) text format: parse, format, round-trip, errors with file and line."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ndb.document import Document
from ndb.errors import NdbSyntaxError, NdbValueError
from ndb.syntax import (
    Entry,
    Pair,
    format_entries,
    format_entry,
    format_entry_line,
    format_value,
    parse,
    parse_entry,
)


def pairs(e: Entry) -> list[tuple[str, str]]:
    return [tuple(p) for p in e.pairs]


def test_entries_lines_and_continuations():
    text = b"""\
ipnet=mh-astro-net ip=135.104.0.0 ipmask=255.255.255.0
\tfs=bootes.research.bell-labs.com
\tipgw=r70.research.bell-labs.com
\tauth=p9auth.research.bell-labs.com
ipnet=unix-room ip=135.104.117.0
\tipgw=135.104.117.1
ipnet=third-floor ip=135.104.51.0
\tipgw=135.104.51.1
"""
    p = parse(text)
    assert [e.get("ipnet") for e in p.entries] == ["mh-astro-net", "unix-room", "third-floor"]
    first = p.entries[0]
    assert len(first.lines) == 4
    assert first.lines[0] == (
        Pair("ipnet", "mh-astro-net"),
        Pair("ip", "135.104.0.0"),
        Pair("ipmask", "255.255.255.0"),
    )
    assert first.lineno == 1 and p.entries[1].lineno == 5
    assert text[first.start : first.end].startswith(b"ipnet=mh-astro-net")
    assert text[p.entries[2].start : p.entries[2].end] == (
        b"ipnet=third-floor ip=135.104.51.0\n\tipgw=135.104.51.1\n"
    )


def test_bare_attributes_and_tab_separators():
    # ndb(6): "Mappings between TCP service names and port numbers."
    p = parse(b"tcp=sysmon\tport=401\ntcp=rexec\tport=512\trestricted\ntcp=9fs\tport=564\n")
    assert [pairs(e) for e in p.entries] == [
        [("tcp", "sysmon"), ("port", "401")],
        [("tcp", "rexec"), ("port", "512"), ("restricted", "")],
        [("tcp", "9fs"), ("port", "564")],
    ]


def test_space_around_equals_reads_as_plan9_does():
    # ndb(6)'s spindle example writes "sys = spindle"; libndb reads sys with an empty
    # value and a bare attribute "spindle" (white space is allowed before "=", not after).
    e = parse(b"sys = spindle\n\tdom=spindle.research.bell-labs.com\n").entries[0]
    assert pairs(e)[:2] == [("sys", ""), ("spindle", "")]
    assert pairs(parse_entry("sys =helix"))[0] == ("sys", "helix")


def test_quotes_comments_and_empty_values():
    e = parse_entry('a="x y" b=\'it\'\'s\' c="say ""hi""" d=#comment')
    assert pairs(e) == [("a", "x y"), ("b", "it's"), ("c", 'say "hi"'), ("d", "")]
    e = parse_entry("a=b#c e=f # the rest is a comment x=y")
    assert pairs(e) == [("a", "b#c"), ("e", "f")]
    e = parse_entry('database= empty="" q="#not a comment"')
    assert pairs(e) == [("database", ""), ("empty", ""), ("q", "#not a comment")]


def test_comments_blank_lines_and_indented_starts():
    text = b"""\
# a comment before anything
a=1
# a comment inside the entry does not end it
\tb=2

\tc=3
   \t
d=4
"""
    p = parse(text)
    # The blank line ends a=1's entry; the indented line after it starts a new one.
    assert [pairs(e) for e in p.entries] == [[("a", "1"), ("b", "2")], [("c", "3")], [("d", "4")]]


def test_values_of_any_length_and_utf8():
    long = "x" * 100_000
    e = parse_entry(f"k={long} name=café")
    assert e.get("k") == long
    assert e.get("name") == "café"
    data = "a=é\nb=ü\n".encode()
    p = parse(data)
    assert data[p.entries[1].start : p.entries[1].end] == "b=ü\n".encode()


def test_incomplete_last_line_is_ignored():
    p = parse(b"a=1\nb=2\nc=3 d=")
    assert [e.get("a") or e.get("b") for e in p.entries] == ["1", "2"]
    assert p.torn == b"c=3 d="
    assert p.end == 8
    # Even when the torn line would not parse.
    assert parse(b'a=1\nb="unterminated').torn == b'b="unterminated'


def test_crlf_lines():
    p = parse(b"a=1 b=2\r\n\tc=3\r\n")
    assert pairs(p.entries[0]) == [("a", "1"), ("b", "2"), ("c", "3")]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (b'ok=1\nname="unterminated\n', 2, "unterminated quote"),
        (b"ok=1\n\tx=1 " + b"a" * 32 + b"=v\n", 2, "attribute name too long"),
        (b"a=1\nb=2\nc=\x00\n", 3, "bad character U+0000"),
        (b"a=1\nb\x07=2\n", 2, "bad character U+0007"),
        (b"a=1\n=v\n", 2, "'=' without an attribute name"),
        (b'a=1\nb=1 x"y=2\n', 2, "bad character"),
        (b'a=1\nb= "x"\n', 2, "quoted value must follow"),
        (b"a=1\n\xff=2\n", 2, "not valid UTF-8"),
    ],
)
def test_errors_name_file_and_line(text, line, message):
    with pytest.raises(NdbSyntaxError) as info:
        parse(text, "/grid/ndb/users")
    err = info.value
    assert err.filename == "/grid/ndb/users"
    assert err.line == line
    assert message in str(err)
    assert str(err).startswith(f"/grid/ndb/users:{line}: ")


def test_attribute_of_31_characters_is_fine():
    assert parse_entry("a" * 31 + "=1").pairs[0].attr == "a" * 31


def test_format_quotes_what_needs_it():
    assert format_value("plain") == "plain"
    assert format_value("two words") == '"two words"'
    assert format_value("#x") == '"#x"'
    assert format_value('"x') == '"""x"'
    assert format_value("'x") == '"\'x"'
    assert format_value('a"b') == 'a"b'
    assert format_value('a "b"') == '"a ""b"""'
    with pytest.raises(NdbValueError, match="newline"):
        format_value("a\nb")
    with pytest.raises(NdbValueError, match="control"):
        format_value("a\x00b")
    with pytest.raises(NdbValueError, match="too long"):
        format_entry_line(Entry.of(("a" * 32, "v")))


def test_format_entry_keeps_lines():
    e = parse_entry("sys=helix dom=helix.example\n\tip=1.2.3.4 ether=00aa\n\tproto=il")
    assert format_entry(e) == "sys=helix dom=helix.example\n\tip=1.2.3.4 ether=00aa\n\tproto=il\n"
    assert format_entry_line(e) == "sys=helix dom=helix.example ip=1.2.3.4 ether=00aa proto=il\n"
    assert format_entry(Entry.of(("tcp", "rexec"), ("restricted", ""))) == "tcp=rexec restricted\n"


# -- round trip ------------------------------------------------------------------------------

attrs = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="=\"'#"),
    min_size=1,
    max_size=31,
)
values = st.text(
    alphabet=st.characters(
        exclude_categories=("Cs",), exclude_characters="\r\n\x0b\x0c\x85\u2028\u2029"
    ).filter(lambda c: c == "\t" or (ord(c) >= 0x20 and ord(c) != 0x7F)),
    max_size=40,
)
pair_st = st.builds(Pair, attrs, values)
entry_st = st.lists(
    st.lists(pair_st, min_size=1, max_size=4).map(tuple), min_size=1, max_size=4
).map(lambda lines: Entry(tuple(lines)))


@given(st.lists(entry_st, max_size=8))
def test_parse_of_format_is_identity(entries):
    text = format_entries(entries)
    assert list(parse(text.encode()).entries) == entries
    one_line = "".join(format_entry_line(e) for e in entries)
    assert [e.pairs for e in parse(one_line.encode()).entries] == [e.pairs for e in entries]


MAN_PAGE_FILE = b"""\
# ndb(6) and ndb(8) examples, with comments and odd spacing a person might leave
ipnet=mh-astro-net ip=135.104.0.0 ipmask=255.255.255.0
\tfs=bootes.research.bell-labs.com   # the file server
\tipgw=r70.research.bell-labs.com
\tauth=p9auth.research.bell-labs.com

sys=helix dom=helix.research.bell-labs.com bootf=/mips/9powerboot
\tip=135.104.117.31 ether=080069020427
\tproto=il
tcp=rexec\tport=512\trestricted
name="a name" x='y'
"""


def test_format_of_parse_is_equivalent():
    parsed = parse(MAN_PAGE_FILE)
    again = parse(format_entries(parsed.entries).encode())
    assert again.entries == parsed.entries


def test_document_edits_keep_comments_and_order():
    doc = Document.parse(MAN_PAGE_FILE)
    out = doc.without(lambda e: e.get("sys") == "helix")
    assert out == MAN_PAGE_FILE.replace(
        b"sys=helix dom=helix.research.bell-labs.com bootf=/mips/9powerboot\n"
        b"\tip=135.104.117.31 ether=080069020427\n\tproto=il\n",
        b"",
    )
    assert doc.without(lambda e: False) == MAN_PAGE_FILE
    added = doc.with_appended([Entry.of(("user", "bob"))])
    assert added == MAN_PAGE_FILE + b"user=bob\n"
    # A torn last line is dropped by edits (it was never part of the database).
    torn = Document.parse(MAN_PAGE_FILE + b"user=ev")
    assert torn.without(lambda e: False) == MAN_PAGE_FILE
