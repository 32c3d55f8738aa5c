"""Score-name records: validation, resolve, history, tombstones, bad input."""

from __future__ import annotations

import pytest

from ndb.errors import NdbNotFound, NdbRecordError, NdbValueError
from ndb.names import NameDB, NameRecord, NameSet
from ndb.syntax import Pair, parse_entry
from ndb.users import User, UserDB
from ndb.values import date_after, format_score, parse_date, parse_score_text

S1 = "blake3:" + "1" * 64
S2 = "blake3:" + "2" * 64
S3 = "blake3:" + "3" * 64


def rec(name="n", score=S1, user="alice", date="2026-11-22T04:30:00.000000Z", **kw) -> NameRecord:
    return NameRecord(name=name, score=score, user=user, date=date, **kw)


@pytest.fixture
def db(tmp_path):
    users = UserDB(tmp_path / "users")
    users.add(User(name="alice", uid=1000))
    users.add(User(name="bob"))
    return NameDB(tmp_path / "names", users=users)


def test_record_text_round_trip():
    r = rec(prev=S2, node="node1", extra=(Pair("note", "first save"),))
    assert r.text() == (
        f"name=n score={S1} user=alice date=2026-11-22T04:30:00.000000Z prev={S2} node=node1"
        ' note="first save"\n'
    )
    assert NameRecord.from_entry(parse_entry(r.text())) == r
    t = rec(score=None, prev=S1)
    assert t.tombstone and "tombstone" in t.text()
    assert NameRecord.from_entry(parse_entry(t.text())) == t


def test_score_helpers():
    raw = bytes(range(32))
    assert parse_score_text(format_score(raw)) == raw
    assert rec(score=format_score(raw)).score_raw == raw
    for bad in (
        "blake3:" + "A" * 64,
        "blake3:" + "1" * 63,
        "sha1:" + "1" * 64,
        "1" * 64,
        "blake3:" + "g" * 64,
    ):
        with pytest.raises(NdbValueError, match="expected 'blake3:' and 64 lowercase hex"):
            parse_score_text(bad)


def test_dates_order_and_validation():
    assert parse_date("2026-11-22T04:30:00Z") < parse_date("2026-11-22T04:30:00.000001Z")
    assert parse_date("2026-11-22T04:30:00.5Z") == parse_date("2026-11-22T04:30:00.500000Z")
    assert date_after("2026-11-22T04:30:59.999999Z") == "2026-11-22T04:31:00.000000Z"
    for bad in (
        "2026-11-22 04:30:00Z",
        "2026-11-22T04:30:00+01:00",
        "2026-13-01T00:00:00Z",
        "yesterday",
    ):
        with pytest.raises(NdbValueError, match="date"):
            rec(date=bad)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("has space", "white space"),
        ("tab\there", "white space"),
        ("new\nline", "white space"),
        ("a=b", "'='"),
        ('say"hi', "'\"'"),
        ("it's", '"\'"'),
        ("#hash", "comment"),
        ("", "empty"),
        ("x" * 256, "too long"),
    ],
)
def test_bad_names_are_refused(db, name, why):
    before = db.file.path.read_bytes() if db.file.path.exists() else None
    with pytest.raises(NdbValueError, match=why):
        db.set(name, S1, "alice")
    after = db.file.path.read_bytes() if db.file.path.exists() else None
    assert before == after


def test_bad_score_and_unknown_user_are_refused(db):
    db.set("ok", S1, "alice")
    before = db.file.path.read_bytes()
    with pytest.raises(NdbValueError, match="bad score"):
        db.set("x", "blake3:abc", "alice")
    with pytest.raises(NdbRecordError, match="unknown user 'mallory'"):
        db.set("x", S1, "mallory")
    with pytest.raises(NdbValueError, match="bad user name"):
        db.set("x", S1, "bad user")
    assert db.file.path.read_bytes() == before


def test_set_resolve_history_delete(db):
    a = db.set("proj", S1, "alice")
    b = db.set("proj", S2, "bob")
    assert b.prev == S1 and a.prev is None
    assert db.resolve("proj") == b
    assert db.history("proj") == [b, a]
    t = db.delete("proj", "alice")
    assert t.tombstone and t.prev == S2
    assert db.resolve("proj") is None
    assert db.history("proj") == [t, b, a]
    assert [r.name for r in db.list()] == []
    assert [r.name for r in db.list(include_deleted=True)] == ["proj"]
    with pytest.raises(NdbNotFound):
        db.delete("proj", "alice")
    c = db.set("proj", S3, "alice")
    assert c.prev is None
    assert db.resolve("proj") == c


def test_new_record_is_latest_even_when_a_peer_clock_is_ahead(db):
    future = "2999-01-01T00:00:00.000000Z"
    db.merge_from([rec(name="p", score=S1, date=future)])
    r = db.set("p", S2, "alice")
    assert parse_date(r.date) > parse_date(future)
    assert db.resolve("p") == r


def test_list_filters_by_user(db):
    db.set("a", S1, "alice")
    db.set("b", S2, "bob")
    db.set("c", S3, "alice")
    assert [r.name for r in db.list(user="alice")] == ["a", "c"]
    assert [r.name for r in db.list()] == ["a", "b", "c"]


def test_malformed_record_in_file_names_the_line(tmp_path):
    p = tmp_path / "names"
    p.write_text(
        f"# names\nname=a score={S1} user=alice date=2026-11-22T04:30:00Z\nname=b user=x date=2026-11-22T04:30:00Z\n"
    )
    with pytest.raises(NdbRecordError, match=r"names:3: name record without score="):
        NameDB(p).all()
    p.write_text(f"name=a score={S1} score={S2} user=alice date=2026-11-22T04:30:00Z\n")
    with pytest.raises(NdbRecordError, match=r"names:1: name record has score= twice"):
        NameDB(p).all()
    p.write_text("name=a score=blake3:00 user=alice date=2026-11-22T04:30:00Z\n")
    with pytest.raises(NdbRecordError, match=r"names:1: bad score"):
        NameDB(p).all()


def test_other_entries_in_names_file_are_ignored(tmp_path):
    p = tmp_path / "names"
    p.write_text(
        f"# a comment\nsys=helix\nname=a score={S1} user=alice date=2026-11-22T04:30:00Z\n"
    )
    assert [r.name for r in NameDB(p).list()] == ["a"]


def test_hand_written_record_with_fields_in_another_order(tmp_path):
    p = tmp_path / "names"
    p.write_text(f"name=a\n\tuser=alice date=2026-11-22T04:30:00Z\n\tscore={S1}\n")
    r = NameDB(p).resolve("a")
    assert r is not None and r.score == S1


def test_nameset_basics():
    a, b = rec(score=S1), rec(score=S2, date="2026-11-22T04:31:00Z")
    s = NameSet.of([a, b])
    assert s.resolve("n") == b and s.history("n") == [b, a]
    assert len(s | NameSet.of([a])) == 2
    assert s.resolve("other") is None
