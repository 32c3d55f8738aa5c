"""The merge laws, by property tests: union of name records is commutative, associative,
idempotent; concurrent records both survive; the latest is chosen the same everywhere; a
newer tombstone hides older records."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ndb.names import NameDB, NameRecord, NameSet, latest_of, merge

NAMES = st.sampled_from(["a", "b", "proj/x", "ünï"])
USERS = st.sampled_from(["alice", "bob"])
NODES = st.sampled_from([None, "node1", "node2"])
SCORES = st.integers(0, 5).map(lambda i: "blake3:" + f"{i:x}" * 64)
# Few distinct dates, so that ties (same microsecond on two nodes) happen often.
DATES = st.integers(0, 4).map(lambda s: f"2026-11-22T04:30:0{s}.000000Z")

records = st.builds(
    NameRecord,
    name=NAMES,
    score=st.one_of(st.none(), SCORES),
    user=USERS,
    date=DATES,
    prev=st.one_of(st.none(), SCORES),
    node=NODES,
)
namesets = st.frozensets(records, max_size=12).map(NameSet)


@given(namesets, namesets)
def test_commutative(a, b):
    assert merge(a, b) == merge(b, a)


@given(namesets, namesets, namesets)
def test_associative(a, b, c):
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@given(namesets)
def test_idempotent(a):
    assert merge(a, a) == a


@given(namesets, namesets)
def test_nothing_is_lost(a, b):
    m = merge(a, b)
    assert a.records <= m.records and b.records <= m.records
    for name in {r.name for r in m}:
        assert set(m.history(name)) == {r for r in a.records | b.records if r.name == name}


@given(st.lists(records, max_size=12), st.randoms())
def test_latest_does_not_depend_on_order(rs, rnd):
    shuffled = list(rs)
    rnd.shuffle(shuffled)
    assert latest_of(rs) == latest_of(shuffled)
    a = NameSet.of(rs)
    assert a.latest_by_name() == NameSet.of(shuffled).latest_by_name()
    assert a.to_text() == NameSet.of(shuffled).to_text()


@given(namesets, namesets)
def test_resolution_agrees_on_both_sides(a, b):
    left, right = merge(a, b), merge(b, a)
    for name in {r.name for r in left}:
        assert left.resolve(name) == right.resolve(name)


@given(records, records)
def test_concurrent_saves_both_kept_latest_by_date_then_tiebreak(r1, r2):
    m = merge(NameSet.of([r1]), NameSet.of([r2]))
    assert r1 in m and r2 in m
    if r1.name == r2.name and r1 != r2:
        winner = m.latest(r1.name)
        if r1.date != r2.date:
            assert winner == max(r1, r2, key=lambda r: r.date)
        else:
            assert winner == max(r1, r2, key=lambda r: r.order_key)


@given(namesets, records)
def test_newer_tombstone_hides(a, r):
    # DATES are all in 2026: a tombstone of 2030 is newer than every record.
    tomb = NameRecord(
        name=r.name, score=None, user=r.user, date="2030-01-01T00:00:00Z", prev=r.score
    )
    m = merge(a, NameSet.of([r, tomb]))
    assert m.resolve(r.name) is None
    assert r in m.history(r.name)  # hidden, not lost
    # ...and a record newer than the tombstone brings the name back.
    later = NameRecord(
        name=r.name, score="blake3:" + "f" * 64, user=r.user, date="2031-01-01T00:00:00Z"
    )
    assert merge(m, NameSet.of([later])).resolve(r.name) == later


@given(records)
def test_older_tombstone_hides_nothing(r):
    if r.tombstone:
        return
    tomb = NameRecord(name=r.name, score=None, user=r.user, date="2020-01-01T00:00:00Z")
    assert merge(NameSet.of([r]), NameSet.of([tomb])).resolve(r.name) == r


@settings(max_examples=25, deadline=None)
@given(st.lists(records, max_size=10), st.lists(records, max_size=10))
def test_merge_on_files(tmp_path_factory, ra, rb):
    d = tmp_path_factory.mktemp("m")
    a, b = NameDB(d / "a"), NameDB(d / "b")
    a.merge_from(ra)
    b.merge_from(rb)
    a.merge_from(b.all())
    b.merge_from(a.all())
    assert a.all() == b.all() == NameSet.of(ra) | NameSet.of(rb)
    # Idempotent on files too: merging again appends nothing.
    assert a.merge_from(b.all()) == []
    for name in {r.name for r in a.all()}:
        assert a.resolve(name) == b.resolve(name)
