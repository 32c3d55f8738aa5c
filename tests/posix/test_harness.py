"""The harness itself, without users or mounts: steps read as written, a difference is reported
with the case, both answers and the transcript, and the table is well formed."""

from __future__ import annotations

import json
from collections import Counter

from tests.posix.cases import CASES, MEMBERS
from tests.posix.harness import OPS, Case, Cred, Outcome, Step, Users, X, compare


def _users() -> Users:
    u = Users()
    for i, name in enumerate(("alice", "bob"), 1):
        u.uids[name] = u.gids[name] = 1000 + i
        u.creds[name] = Cred(1000 + i, 1000 + i, (1000 + i,))
    return u


def test_step_parse_and_text() -> None:
    s = Step.parse(("bob", "chmod", "d/f", 0o4755, X("EPERM")))
    assert (s.actor, s.op, s.args, s.expect) == ("bob", "chmod", ("d/f", 0o4755), "EPERM")
    assert str(s) == "bob chmod d/f 0o4755"
    assert str(Step.parse(("alice", "chown", "f", None, "g1"))) == "alice chown f -1 g1"
    assert str(Step.parse(("root", "truncate", "f", 10))) == "root truncate f 10"


def test_paths_in_order_of_mention() -> None:
    c = Case("g", "n", (("dir", "d", 0o777, "root", "root"),),
             (("bob", "link", "f", "d/g"), ("bob", "stat", "d")))
    assert c.paths() == ["d", "f", "d/g"]


def test_a_difference_names_the_case_and_both_answers() -> None:
    u = _users()
    c = Case("unlink", "sticky", (("dir", "t", 0o1777, "root", "root"),),
             (("bob", "unlink", "t/f"),))
    st = json.dumps({"type": "-", "mode": "0o644", "uid": 1001, "gid": 1001, "size": 0})
    ref = Outcome([("root dir t 0o1777 root root", "ok")], [("bob unlink t/f", "EPERM")],
                  {"t": "ok", "t/f": st})
    assert compare(c, ref, ref, u, "same") is None
    got = Outcome(list(ref.setup), [("bob unlink t/f", "EACCES")], {"t": "ok", "t/f": "ENOENT"})
    msg = compare(c, ref, got, u, "grid-fuse")
    assert msg is not None
    assert msg.splitlines()[0] == "case unlink/sticky: grid-fuse differs from ext4"
    assert "step 1 `bob unlink t/f`: ext4 EPERM, grid-fuse EACCES" in msg
    assert "final t/f: ext4 - 0o644 alice:alice size=0, grid-fuse ENOENT" in msg
    assert "! bob unlink t/f" in msg


def test_the_table_is_well_formed() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 100
    groups = Counter(c.group for c in CASES)
    assert set(groups) >= {"chmod", "chown", "link", "mkdir", "mknod", "open", "rename", "rmdir",
                           "symlink", "truncate", "unlink", "utimes", "xattr", "create", "write"}
    actors = {s.actor for c in CASES for s in c.all_steps()}
    assert actors == {"root", *MEMBERS}
    assert sum(len(c.steps) for c in CASES) >= 300
    for c in CASES:
        for s in c.all_steps():
            assert len(s.args) >= OPS[s.op][1].count("p"), (c.id, s)
