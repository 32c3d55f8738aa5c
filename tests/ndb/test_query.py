"""Queries with Plan 9's semantics, checked against the ndb(6)/ndb(7)/ndb(8) examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from ndb.database import Database, NdbFile
from ndb.query import getvalue, ndbquery, search
from ndb.syntax import parse

# The entries of the manual pages: ndb(6)'s networks and services, ndb(7)'s anna, and the
# helix entry ndb(8)'s example prints (with a second ip line, as ndb(6) shows them).
LOCAL = b"""\
ipnet=murray-hill ip=135.104.0.0 ipmask=255.255.0.0
\tdns=135.104.10.1
\tntp=ntp.cs.bell-labs.com
ipnet=plan9 ip=135.104.9.0 ipmask=255.255.255.0
\tntp=oncore.cs.bell-labs.com
\tsmtp=smtp1.cs.bell-labs.com
ip=135.104.9.6 sys=anna dom=anna.cs.bell-labs.com
\tsmtp=smtp2.cs.bell-labs.com
sys=helix dom=helix.research.bell-labs.com bootf=/mips/9powerboot
\tip=135.104.117.31 ether=080069020427
\tproto=il
sys=spindle dom=spindle.research.bell-labs.com
\tip=135.104.117.32 ether=080069020677
\tip=135.104.117.33 ether=080069020678
\tproto=il
tcp=sysmon\tport=401
tcp=rexec\tport=512\trestricted
tcp=9fs\tport=564
"""


def q(rattr=None, *args, all=False, multiple=False):
    attr, value = args
    return ndbquery(search(parse(LOCAL).entries, attr, value), rattr, all=all, multiple=multiple)


def test_whole_entry_as_ndb8_prints_it():
    # ndb(8): "% ndb/query sys helix" prints the entry with its lines.
    assert q(None, "sys", "helix") == [
        "sys=helix dom=helix.research.bell-labs.com bootf=/mips/9powerboot\n"
        "\tip=135.104.117.31 ether=080069020427\n"
        "\tproto=il"
    ]


def test_bare_attribute_prints_with_equals():
    assert q(None, "tcp", "rexec") == ["tcp=rexec port=512 restricted="]


def test_first_value():
    assert q("dom", "sys", "anna") == ["anna.cs.bell-labs.com"]
    assert q("smtp", "sys", "anna") == ["smtp2.cs.bell-labs.com"]
    assert q("port", "tcp", "9fs") == ["564"]
    assert q("sys", "sys", "anna") == ["anna"]
    assert q("nosuch", "sys", "anna") == []
    assert q(None, "sys", "nosuch") == []


def test_same_line_binds_tighter():
    # ndb(6): "pairs on the same line bind tighter than pairs on different lines".
    assert q("ether", "ip", "135.104.117.33") == ["080069020678"]
    assert q("ether", "ip", "135.104.117.32") == ["080069020677"]
    # No ether on the matched line: the first one of the entry.
    assert q("ether", "sys", "spindle") == ["080069020677"]


def test_multiple_values_of_first_entry():
    assert q("ip", "sys", "spindle", multiple=True) == ["135.104.117.32", "135.104.117.33"]
    assert q("ip", "sys", "spindle") == ["135.104.117.32"]


def test_all_values_of_all_entries():
    assert q("ntp", "ipmask", "255.255.255.0", all=True) == ["oncore.cs.bell-labs.com"]
    assert q("proto", "proto", "il", all=True) == ["il", "il"]
    assert q("ip", "proto", "il", all=True) == [
        "135.104.117.31",
        "135.104.117.32",
        "135.104.117.33",
    ]


def test_without_rattr_every_matching_entry():
    out = q(None, "proto", "il")
    assert [o.split()[0] for o in out] == ["sys=helix", "sys=spindle"]


def test_getvalue_skips_entries_without_rattr():
    # The first entry holding ip=... without smtp is skipped for one that has it.
    entries = parse(b"k=1 a=x\nk=1 smtp=s\n").entries
    found = getvalue(search(entries, "k", "1"), "smtp")
    assert found is not None and found[0] == "s"


def test_values_with_spaces_are_quoted_in_output():
    entries = parse(b'user=alice sshkey="ssh-ed25519 AAAA alice@x"\n').entries
    assert ndbquery(search(entries, "user", "alice")) == [
        'user=alice sshkey="ssh-ed25519 AAAA alice@x"'
    ]
    assert ndbquery(search(entries, "user", "alice"), "sshkey") == ["ssh-ed25519 AAAA alice@x"]


# -- database= chains ------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_database_chain_searches_files_in_order(tmp_path):
    write(tmp_path / "common", "sys=a where=common\nsys=c where=common\n")
    write(tmp_path / "global", "sys=a where=global\nsys=b where=global\n")
    root = write(
        tmp_path / "local",
        f"database=\n\tfile={tmp_path}/common\n\tfile=global\n\tfile=missing\nsys=a where=local\n",
    )
    db = Database(root)
    assert [f.path.name for f in db.files()] == ["local", "common", "global", "missing"]
    assert ndbquery(db.search("sys", "a"), "where", all=True) == ["local", "common", "global"]
    assert ndbquery(db.search("sys", "a"), "where") == ["local"]
    assert ndbquery(db.search("sys", "b"), "where") == ["global"]


def test_root_listed_in_its_chain_moves(tmp_path):
    # ndb(6): "/lib/ndb/local may be included in the database to redefine its ordering".
    write(tmp_path / "common", "sys=a where=common\n")
    root = write(
        tmp_path / "local",
        f"database=\n\tfile=common\n\tfile={tmp_path}/local\nsys=a where=local\n",
    )
    db = Database(root)
    assert [f.path.name for f in db.files()] == ["common", "local"]
    assert ndbquery(db.search("sys", "a"), "where") == ["common"]


def test_missing_root_is_empty(tmp_path):
    assert list(Database(tmp_path / "none").search("a", "b")) == []
    assert NdbFile(tmp_path / "none").entries() == ()


@pytest.mark.parametrize("index", [False, True])
def test_file_search_same_with_and_without_index(tmp_path, index):
    f = NdbFile(write(tmp_path / "local", LOCAL.decode()), index=index)
    got = ndbquery(f.search("proto", "il"), "ip", all=True)
    assert got == ["135.104.117.31", "135.104.117.32", "135.104.117.33"]
    assert ndbquery(f.search("ip", "135.104.117.33"), "ether") == ["080069020678"]
