"""Forget records: the policy applied to a name's history, who may forget, and the merge
laws with forget records (three nodes, union merge in any order)."""

from __future__ import annotations

import errno
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ndb.errors import NdbNotFound, NdbPermission, NdbRecordError, NdbValueError
from ndb.nameaccess import Caller
from ndb.names import ForgetRecord, NameDB, NameRecord, NameSet, merge
from ndb.retention import Policy
from ndb.syntax import parse

ALICE = Caller("alice")
BOB = Caller("bob")
ROOT = Caller("root", privileged=True)


def S(i: int) -> str:
    return "blake3:" + f"{i:064x}"


def D(day: int, hour: int = 12) -> str:
    return f"2026-03-{day:02d}T{hour:02d}:00:00.000000Z"


def saves(db: NameDB, name: str, days: range, *, user: str = "alice", node: str | None = None) -> list[NameRecord]:
    return [db.set(name, S(d), user, date=D(d), node=node) for d in days]


def test_forget_keeps_latest_and_policy(tmp_path):
    db = NameDB(tmp_path / "names")
    recs = saves(db, "p", range(1, 11))
    plan = db.forget("p", Policy(last=3), ALICE)
    assert [r.score for r, _ in plan.kept] == [S(10), S(9), S(8)]
    assert plan.kept[0][1][0] == "latest"
    assert {r.score for r in plan.forgotten} == {S(d) for d in range(1, 8)}
    assert len(plan.records) == 7
    assert [r.score for r in db.history("p")] == [S(10), S(9), S(8)]
    assert db.resolve("p") == recs[-1]
    assert len(db.all().records) == 3 and len(db.all().forgets) == 7
    # idempotent: forgetting again with the same policy forgets nothing more
    assert db.forget("p", Policy(last=3), ALICE).forgotten == []


def test_latest_is_always_kept(tmp_path):
    db = NameDB(tmp_path / "names")
    saves(db, "p", range(1, 4))
    # keep-within 0h keeps nothing by itself; the latest stays anyway
    # Mar 1 2026 is a Sunday (ISO week 9), Mar 2-3 are in week 10
    plan = db.forget("p", Policy(weekly=1), ALICE, dry_run=True)
    assert [r.score for r, _ in plan.kept] == [S(3)]
    plan = db.forget("p", Policy(weekly=5), ALICE, dry_run=True)
    assert [r.score for r, _ in plan.kept] == [S(3), S(1)]
    plan = db.forget("p", Policy(last=1), ALICE)
    assert [r.score for r, _ in plan.kept] == [S(3)]
    assert db.resolve("p").score == S(3)


def test_dry_run_writes_nothing(tmp_path):
    db = NameDB(tmp_path / "names")
    saves(db, "p", range(1, 6))
    before = (tmp_path / "names").read_bytes()
    plan = db.forget("p", Policy(last=1), ALICE, dry_run=True)
    assert len(plan.forgotten) == 4 and plan.records == []
    assert (tmp_path / "names").read_bytes() == before


def test_empty_policy_refused_on_a_live_name(tmp_path):
    db = NameDB(tmp_path / "names")
    saves(db, "p", range(1, 3))
    with pytest.raises(NdbValueError, match="no policy"):
        db.forget("p", Policy(), ALICE)


def test_a_deleted_name_is_forgotten_whole(tmp_path):
    db = NameDB(tmp_path / "names")
    saves(db, "p", range(1, 4))
    db.delete("p", "alice", date=D(20))
    plan = db.forget("p", Policy(), ALICE)
    assert len(plan.forgotten) == 4  # three saves and the tombstone
    assert db.history("p") == [] and db.latest("p") is None
    assert [r.name for r in db.list(include_deleted=True)] == []
    with pytest.raises(NdbNotFound):
        db.forget("p", Policy(), ALICE)


def test_a_deleted_name_keeps_what_the_policy_keeps(tmp_path):
    db = NameDB(tmp_path / "names")
    saves(db, "p", range(1, 4))
    db.delete("p", "alice", date=D(20))
    plan = db.forget("p", Policy(last=1), ALICE)
    assert [r.tombstone for r, _ in plan.kept] == [True, False]
    assert db.resolve("p") is None and db.latest("p").tombstone


def test_only_the_owner_or_root_may_forget(tmp_path):
    db = NameDB(tmp_path / "names")
    saves(db, "p", range(1, 4))
    db.chmod("p", "0666", ALICE)  # bob may even write it: still not forget
    with pytest.raises(NdbPermission) as e:
        db.forget("p", Policy(last=1), BOB)
    assert e.value.errno == errno.EPERM
    db.chmod("p", "0600", ALICE)
    with pytest.raises(NdbNotFound):  # a name bob may not read does not exist for him
        db.forget("p", Policy(last=1), BOB)
    # two chmod records (same score, later dates) are in the history too
    assert len(db.forget("p", Policy(last=1), ROOT).forgotten) == 4


def test_forget_record_text_round_trip():
    f = ForgetRecord(name="p", score=S(1), date=D(1), user="alice", when=D(30), node="n1")
    [e] = parse(f.text().encode()).entries
    assert ForgetRecord.from_entry(e) == f
    t = ForgetRecord(name="p", score=None, date=D(1), user="alice", when=D(30))
    [e] = parse(t.text().encode()).entries
    assert ForgetRecord.from_entry(e) == t and "tombstone" in t.text()
    [bad] = parse(b"forget=p score=" + S(1).encode() + b" tombstone date=" + D(1).encode() + b"\n").entries
    with pytest.raises(NdbRecordError):
        ForgetRecord.from_entry(bad)


def _copy(src: NameDB, dst: NameDB) -> None:
    s = src.all()
    dst.merge_from(s.records, s.forgets)


def test_three_nodes_union_merge(tmp_path):
    """A forgets old snapshots while B saves concurrently and C still holds old records:
    merged in every order, all three agree, the forgotten records never come back, and B's
    concurrent save is kept."""
    a, b, c = (NameDB(tmp_path / n) for n in "abc")
    common = saves(a, "p", range(1, 7), node="a")
    b.merge_from(common)
    c.merge_from(common[:3])  # C lags: only the oldest three
    plan = a.forget("p", Policy(last=2), ALICE, node="a")
    assert {r.score for r in plan.forgotten} == {S(d) for d in range(1, 5)}
    concurrent = b.set("p", S(99), "alice", date=D(7), node="b")  # B has not heard yet
    old_on_b = b.set("q", S(50), "alice", date=D(1), node="b")
    for x, y in [(c, a), (b, c), (a, b), (c, b), (b, a), (a, c)]:  # any order, repeated
        _copy(x, y)
    texts = {db.file.name: db.all().to_text() for db in (a, b, c)}
    assert len(set(texts.values())) == 1
    for db in (a, b, c):
        h = db.history("p")
        assert [r.score for r in h] == [S(99), S(6), S(5)]
        assert db.resolve("p") == concurrent
        assert db.resolve("q") == old_on_b
        assert {r.score for r in db.all().records} == {S(99), S(6), S(5), S(50)}
    assert len(a.all().forgets) == 4


def test_forgotten_record_does_not_come_back_from_a_peer_that_still_has_it(tmp_path):
    a, b = NameDB(tmp_path / "a"), NameDB(tmp_path / "b")
    recs = saves(a, "p", range(1, 4))
    b.merge_from(recs)
    a.forget("p", Policy(last=1), ALICE)
    before = a.file.path.read_bytes()
    assert a.merge_from(b.all().records) == []  # B's old records: forgotten here
    assert a.file.path.read_bytes() == before
    assert [r.score for r in a.history("p")] == [S(3)]


# -- the merge laws with forget records --------------------------------------------------

NAMES = st.sampled_from(["a", "b"])
SCORES = st.integers(0, 3).map(S)
DATES = st.integers(1, 3).map(D)
records = st.builds(NameRecord, name=NAMES, score=st.one_of(st.none(), SCORES), user=st.just("alice"),
                    date=DATES, node=st.sampled_from([None, "n1", "n2"]))
forgets = st.builds(ForgetRecord, name=NAMES, score=st.one_of(st.none(), SCORES), date=DATES,
                    user=st.just("alice"), when=st.just(D(30)))
sets = st.builds(NameSet.of, st.frozensets(records, max_size=8), st.frozensets(forgets, max_size=3))


@given(sets, sets)
def test_commutative(x, y):
    assert merge(x, y) == merge(y, x)


@given(sets, sets, sets)
def test_associative(x, y, z):
    assert merge(merge(x, y), z) == merge(x, merge(y, z))


@given(sets)
def test_idempotent(x):
    assert merge(x, x) == x


@given(sets, sets)
def test_forgotten_stays_forgotten_and_nothing_else_is_lost(x, y):
    m = merge(x, y)
    gone = {f.target for f in m.forgets}
    for r in itertools.chain(x.records, y.records):
        assert (r in m.records) == ((r.name, r.score, r.date) not in gone)
