"""Names have owners: the record attributes (owner, group, mode, acl), the rules of
ndb.nameaccess, and NameDB's checked writes and caller-filtered reads."""

from __future__ import annotations

import errno

import pytest

from ndb import nameaccess as access
from ndb.errors import NdbNotFound, NdbPermission, NdbRecordError, NdbValueError
from ndb.nameaccess import Caller
from ndb.names import NameDB, NameRecord, NameSet
from ndb.syntax import parse_entry
from ndb.users import User, UserDB

S1 = "blake3:" + "1" * 64
S2 = "blake3:" + "2" * 64
S3 = "blake3:" + "3" * 64
DATE = "2026-11-22T04:30:00.000000Z"

ALICE = Caller("alice", frozenset({"staff"}))
BOB = Caller("bob", frozenset({"dev"}))
CAROL = Caller("carol", frozenset({"staff"}))
ROOT = Caller("root", privileged=True)


def rec(**kw) -> NameRecord:
    base = {"name": "n", "score": S1, "user": "alice", "date": DATE}
    return NameRecord(**(base | kw))


@pytest.fixture
def db(tmp_path) -> NameDB:
    users = UserDB(tmp_path / "users")
    for name, groups in (("alice", ("staff",)), ("bob", ("dev",)), ("carol", ("staff",)),
                         ("root", ())):
        users.add(User(name=name, groups=groups))
    return NameDB(tmp_path / "names", users=users)


# -- the record format -----------------------------------------------------------------------


def test_permission_attributes_round_trip_in_a_fixed_order():
    r = rec(node="a", owner="alice", group="staff", mode=0o640, acl=("g:dev:r", "u:bob:rw"))
    assert r.text() == (
        f"name=n score={S1} user=alice date={DATE} node=a owner=alice group=staff mode=0640"
        " acl=g:dev:r acl=u:bob:rw\n"
    )
    assert NameRecord.from_entry(parse_entry(r.text())) == r
    assert r.as_dict()["mode"] == "0640" and r.as_dict()["acl"] == ["g:dev:r", "u:bob:rw"]


def test_a_record_from_before_owners_is_its_users_with_the_legacy_mode():
    old = NameRecord.from_entry(parse_entry(f"name=n score={S1} user=alice date={DATE}\n"))
    assert old.owner is None and old.mode is None
    assert access.owner_of(old) == "alice" and access.mode_of(old) == 0o644
    assert old.text() == f"name=n score={S1} user=alice date={DATE}\n"  # identity unchanged
    assert access.may_read(old, BOB) and not access.may_write(old, BOB)
    assert old.as_dict()["owner"] == "alice" and old.as_dict()["mode"] == "0644"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mode=0999", "bad mode"),
        ("mode=4755", "setuid"),
        ("mode=01777", "bad mode"),
        ("mode=rw", "bad mode"),
        ("mode=0600 mode=0644", "mode= twice"),
        ("owner=9", "bad user name"),
        ("owner=", "bad user name"),
        ("group=9x", "bad group name"),
        ("acl=u:bob", "bad acl"),
        ("acl=x:bob:r", "bad acl"),
        ("acl=u:bob:rq", "bad acl"),
    ],
)
def test_bad_permission_attributes_are_refused(text, message):
    with pytest.raises(NdbRecordError, match=message):
        NameRecord.from_entry(parse_entry(f"name=n score={S1} user=a date={DATE} {text}\n"))


# -- the rules -------------------------------------------------------------------------------


def test_owner_group_acl_other_in_posix_acl_order():
    r = rec(owner="alice", group="staff", mode=0o640, acl=("u:bob:rw",))
    assert access.bits_for(r, ALICE) == 6
    assert access.bits_for(r, CAROL) == 4  # group staff
    assert access.bits_for(r, BOB) == 6  # named user
    assert access.bits_for(r, Caller("dave")) == 0  # other
    assert access.bits_for(r, Caller("dave", frozenset({"dev"}))) == 0
    shared = rec(owner="alice", mode=0o600, acl=("g:dev:r",))
    assert access.may_read(shared, Caller("dave", frozenset({"dev"})))
    assert not access.may_write(shared, Caller("dave", frozenset({"dev"})))
    # the owner's class applies to the owner even when it grants less than others have
    mine = rec(owner="alice", mode=0o044)
    assert not access.may_read(mine, ALICE) and access.may_read(mine, BOB)
    assert access.may_administer(mine, ALICE) and not access.may_administer(mine, BOB)
    # privileged callers may everything
    none = rec(owner="alice", mode=0)
    assert access.may_read(none, ROOT) and access.may_write(none, ROOT)
    assert access.may_administer(none, ROOT)


@pytest.mark.parametrize(
    ("spec", "before", "after"),
    [
        ("0640", 0o600, 0o640),
        ("644", 0o600, 0o644),
        ("0", 0o777, 0),
        ("g+r", 0o600, 0o640),
        ("go+r", 0o600, 0o644),
        ("a=r", 0o600, 0o444),
        ("u+rw,g+r,o-rwx", 0o007, 0o640),
        ("+w", 0o400, 0o622),
        ("o=", 0o644, 0o640),
    ],
)
def test_chmod_arguments(spec, before, after):
    assert access.apply_mode(spec, before) == after


@pytest.mark.parametrize("spec", ["u+s", "8", "07777", "g+", "u+r,,", "rw", ""])
def test_bad_chmod_arguments(spec):
    if spec == "g+":  # "g+" adds nothing: valid, as in chmod(1)
        assert access.apply_mode(spec, 0o600) == 0o600
        return
    with pytest.raises(NdbValueError, match="bad mode"):
        access.apply_mode(spec, 0o600)


# -- NameDB ---------------------------------------------------------------------------------


def test_a_new_name_is_its_writers_and_private_and_saves_keep_its_permissions(db):
    first = db.set("p", S1, "alice")
    assert (first.owner, first.group, first.mode, first.acl) == ("alice", None, 0o600, ())
    db.chmod("p", "0640", ALICE)
    db.chown("p", None, "staff", ALICE)
    db.share("p", "bob", ALICE, write=True)
    second = db.set("p", S2, "bob", caller=BOB)  # bob may write through the ACL
    assert second.user == "bob" and second.owner == "alice"
    assert (second.group, second.mode, second.acl) == ("staff", 0o640, ("u:bob:rw",))
    tomb = db.delete("p", "alice", caller=ALICE)
    assert tomb.owner == "alice" and tomb.mode == 0o640  # the name is still alice's
    with pytest.raises(NdbPermission):
        db.set("p", S3, "carol", caller=CAROL)  # carol may read, not write
    back = db.set("p", S3, "alice", caller=ALICE)
    assert back.mode == 0o640 and back.prev is None


def test_others_may_not_save_over_delete_or_see_a_private_name(db):
    db.set("p", S1, "alice")
    before = db.file.path.read_bytes()
    with pytest.raises(NdbPermission, match="someone else's") as e:
        db.set("p", S2, "bob", caller=BOB)
    assert e.value.errno == errno.EACCES
    with pytest.raises(NdbNotFound, match="no name 'p'"):
        db.delete("p", "bob", caller=BOB)
    for change in (lambda: db.chmod("p", "0644", BOB), lambda: db.share("p", "bob", BOB),
                   lambda: db.chown("p", "bob", None, BOB)):
        with pytest.raises(NdbNotFound, match="no name 'p'"):
            change()
    assert db.file.path.read_bytes() == before
    assert db.list(caller=BOB) == [] and [r.name for r in db.list(caller=ROOT)] == ["p"]
    assert db.resolve_for("p", BOB) is None and db.resolve_for("p", ALICE).score == S1
    with pytest.raises(NdbNotFound):
        db.history_for("p", BOB)
    assert len(db.history_for("p", ALICE)) == 1
    assert not db.may_use_score(S1, BOB)
    assert db.may_use_score(S1, ALICE) and db.may_use_score(S2, ROOT)
    db.set("p", S2, "alice")
    assert db.may_use_score(S1, ALICE)  # a root the name had
    db.chmod("p", "go+r", ALICE)
    assert db.may_use_score(S1, BOB) and not db.may_use_score(S3, BOB)
    with pytest.raises(NdbPermission, match="alice's \\(mode 0644\\)"):
        db.set("p", S3, "bob", caller=BOB)  # readable now, still not writable


def test_who_may_change_permissions(db):
    db.set("p", S1, "alice", mode=0o644)
    before = db.file.path.read_bytes()
    with pytest.raises(NdbPermission, match="only the owner") as e:
        db.chmod("p", "0666", BOB)
    assert e.value.errno == errno.EPERM
    with pytest.raises(NdbPermission, match="only root may give"):
        db.chown("p", "bob", None, ALICE)
    with pytest.raises(NdbPermission, match="not in group 'dev'"):
        db.chown("p", None, "dev", ALICE)
    with pytest.raises(NdbValueError, match="bad mode"):
        db.chmod("p", "u+s", ALICE)
    with pytest.raises(NdbRecordError, match="unknown user 'mallory'"):
        db.chown("p", "mallory", None, ROOT)
    with pytest.raises(NdbRecordError, match="unknown user 'mallory'"):
        db.share("p", "mallory", ALICE)
    with pytest.raises(NdbNotFound, match="not shared with bob"):
        db.unshare("p", "bob", ALICE)
    with pytest.raises(NdbNotFound, match="no name 'q'"):
        db.chmod("q", "0600", ROOT)
    assert db.file.path.read_bytes() == before
    r = db.chown("p", "bob", "dev", ROOT)
    assert (r.owner, r.group, r.user, r.score) == ("bob", "dev", "root", S1)
    r = db.chown("p", None, "", BOB)  # the owner drops the group
    assert r.group is None and r.owner == "bob"
    db.share("p", "@staff", BOB)
    assert db.latest("p").acl == ("g:staff:r",)
    db.share("p", "@staff", BOB, write=True)  # replaces the entry
    assert db.latest("p").acl == ("g:staff:rw",)
    assert db.unshare("p", "@staff", BOB).acl == ()
    assert [h.score for h in db.history("p")] == [S1] * 6  # each change a record, same root


def test_permissions_merge_as_records(db, tmp_path):
    db.set("p", S1, "alice")
    other = NameDB(tmp_path / "other")
    other.merge_from(db.all())
    db.chmod("p", "0644", ALICE)
    other.merge_from(db.all())
    assert other.latest("p").mode == 0o644 and other.latest("p").owner == "alice"
    assert NameSet.of(other.all()) == NameSet.of(db.all())


def test_a_change_that_changes_nothing_writes_nothing(db):
    db.set("p", S1, "alice", mode=0o640)
    before = db.file.path.read_bytes()
    assert db.chmod("p", "0640", ALICE).mode == 0o640
    assert db.chown("p", "alice", None, ALICE).owner == "alice"
    assert db.file.path.read_bytes() == before
