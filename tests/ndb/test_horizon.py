"""The far-future tombstone: a record dated past the horizon (9000-01-01) once locked its
name on every node (no date could follow 9999-12-31T23:59:59.999999Z). Such records are void:
refused when written, ignored when names are read, the same on every node, so the name can
be used again."""

from __future__ import annotations

import pytest

from ndb.errors import NdbValueError
from ndb.names import NameDB, NameRecord, NameSet
from ndb.users import User, UserDB
from ndb.values import HORIZON, beyond_horizon

S1 = "blake3:" + "1" * 64
S2 = "blake3:" + "2" * 64
FAR = "9999-12-31T23:59:59.999999Z"


@pytest.fixture
def db(tmp_path):
    users = UserDB(tmp_path / "users")
    users.add(User(name="alice", uid=1000))
    return NameDB(tmp_path / "names", users=users)


def _far(name="proj", score=None) -> NameRecord:
    return NameRecord(name=name, score=score, user="alice", date=FAR, prev=S1)


def test_the_horizon():
    assert beyond_horizon(FAR) and beyond_horizon(HORIZON)
    assert not beyond_horizon("8999-12-31T23:59:59.999999Z")
    assert _far().void and not NameRecord(name="n", score=S1, user="alice",
                                          date="2026-01-01T00:00:00Z").void


def test_a_name_locked_by_a_far_future_tombstone_can_be_used_again(db):
    db.set("proj", S1, "alice")
    # The file already holds the hostile record (written before this rule, or by hand).
    with open(db.path, "a") as f:
        f.write(_far().text())
    assert db.resolve("proj").score == S1, "the void tombstone is ignored"
    r = db.set("proj", S2, "alice")  # no OverflowError, no "not recorded"
    assert r.date < HORIZON and db.resolve("proj").score == S2
    assert [x.score for x in db.history("proj")] == [S2, S1]
    db.delete("proj", "alice")
    assert db.resolve("proj") is None
    db.set("proj", S1, "alice")
    assert db.resolve("proj").score == S1
    assert "proj" in {r.name for r in db.list()}
    assert all(not r.void for r in db.all())


def test_void_records_are_refused_when_written(db):
    with pytest.raises(NdbValueError, match="void"):
        db.set("proj", S1, "alice", date=FAR)
    db.set("proj", S1, "alice")
    with pytest.raises(NdbValueError, match="void"):
        db.delete("proj", "alice", date=HORIZON)
    assert db.merge_from([_far()]) == []
    assert db.resolve("proj").score == S1


def test_every_node_resolves_alike():
    ok = NameRecord(name="proj", score=S1, user="alice", date="2026-05-01T00:00:00Z")
    a = NameSet.of([ok, _far()])
    b = NameSet.of([ok])
    assert a == b and a.resolve("proj") == ok == (a | b).resolve("proj")
    assert a.to_text() == b.to_text()


def test_the_cli_uses_a_name_a_far_future_tombstone_locked(tmp_path):
    """import, name set and name rm on a real home whose names file holds the record."""
    from tests.grid.conftest import run_grid

    home = tmp_path / "home"
    run_grid(home, "init")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("one\n")
    first = run_grid(home, "import", str(src), "proj").stdout.decode().split()[0]
    with open(home / "ndb" / "names", "a") as f:
        f.write(NameRecord(name="proj", score=None, user="root", date=FAR, prev=first).text())
    (src / "f").write_text("two\n")
    second = run_grid(home, "import", str(src), "proj").stdout.decode().split()[0]
    assert run_grid(home, "cat", "proj:f").stdout == b"two\n"
    run_grid(home, "name", "set", "proj", first)
    assert run_grid(home, "cat", "proj:f").stdout == b"one\n"
    run_grid(home, "name", "rm", "proj")
    p = run_grid(home, "cat", "proj:f", check=False)
    assert p.returncode == 1 and b"Traceback" not in p.stderr
    assert second != first
