"""Locked atomic updates: append, replace, torn tails; several writers; SIGKILL mid-write."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ndb.database import TORN_SUFFIX, NdbFile, locked
from ndb.errors import NdbValueError
from ndb.names import NameDB, NameRecord
from ndb.syntax import Entry, parse

ROOT = Path(__file__).resolve().parents[2]


def run_py(code: str, *args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_append_creates_and_appends(tmp_path):
    f = NdbFile(tmp_path / "users")
    f.append([Entry.of(("user", "alice"), ("uid", "1000"))])
    f.append(
        [Entry.of(("user", "bob")), Entry.of(("user", "carol"), ("sshkey", "ssh-ed25519 AAAA c"))]
    )
    assert (tmp_path / "users").read_text() == (
        'user=alice uid=1000\nuser=bob\nuser=carol sshkey="ssh-ed25519 AAAA c"\n'
    )


def test_append_of_unwritable_value_changes_nothing(tmp_path):
    p = tmp_path / "f"
    p.write_text("# mine\na=1\n")
    with pytest.raises(NdbValueError):
        NdbFile(p).append([Entry.of(("b", "2")), Entry.of(("c", "line\nbreak"))])
    assert p.read_text() == "# mine\na=1\n"


def test_append_keeps_hand_edits(tmp_path):
    p = tmp_path / "users"
    text = "# people\nuser=alice   uid=1000   # the boss\n\tgroup=staff\n\n# more later\n"
    p.write_text(text)
    NdbFile(p).append([Entry.of(("user", "bob"))])
    assert p.read_text() == text + "user=bob\n"


def test_torn_tail_is_set_aside_by_next_writer(tmp_path):
    p = tmp_path / "names"
    p.write_bytes(b"a=1\nb=2 partial=rec")
    assert [e.get("a") for e in NdbFile(p).entries()] == ["1"]
    NdbFile(p).append([Entry.of(("c", "3"))])
    assert p.read_bytes() == b"a=1\nc=3\n"
    assert (tmp_path / ("names" + TORN_SUFFIX)).read_bytes() == b"b=2 partial=rec\n"


def test_replace_is_atomic_and_keeps_mode(tmp_path):
    p = tmp_path / "f"
    p.write_text("a=1\n")
    os.chmod(p, 0o640)
    ino = p.stat().st_ino
    with locked(p) as lf:
        lf.replace(b"b=2\n")
    assert p.read_text() == "b=2\n"
    assert p.stat().st_mode & 0o777 == 0o640
    assert p.stat().st_ino != ino
    assert [x.name for x in tmp_path.iterdir()] == ["f"]


def test_writer_waiting_during_replace_locks_the_new_file(tmp_path):
    p = tmp_path / "f"
    p.write_text("a=1\n")
    with locked(p) as lf:
        child = run_py(
            """
            import sys
            from ndb.database import NdbFile
            from ndb.syntax import Entry
            print("waiting", flush=True)
            NdbFile(sys.argv[1]).append([Entry.of(("b", "2"))])
            """,
            str(p),
        )
        assert child.stdout.readline() == "waiting\n"
        time.sleep(0.3)  # the child is blocked on the old inode's lock
        lf.replace(b"x=1\n")
    assert child.wait(timeout=30) == 0, child.stderr.read()
    assert p.read_text() == "x=1\nb=2\n"


WRITER = """
import os, sys, time
from ndb.names import NameDB
from ndb.values import format_score
path, k, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
db = NameDB(path)
while not os.path.exists(go):
    time.sleep(0.001)
for i in range(n):
    score = format_score((k * 1_000_000 + i).to_bytes(32, "big"))
    db.set(f"shared{i % 5}" if i % 2 else f"w{k}-{i}", score, f"u{k}")
print("done", flush=True)
"""


@pytest.mark.slow
def test_concurrent_writers_lose_nothing(tmp_path):
    """4 processes x 500 records at once: all 2000 are there, and each name's prev= chain is
    unbroken (each writer read the latest record and appended under the same lock)."""
    p = tmp_path / "names"
    go = tmp_path / "go"
    writers, per = 4, 500
    procs = [run_py(WRITER, str(p), str(k), str(per), str(go)) for k in range(writers)]
    time.sleep(0.5)
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert out == "done\n"
    records = NameDB(p).all()
    assert len(records) == writers * per
    for k in range(writers):
        mine = [r for r in records if r.user == f"u{k}"]
        assert len(mine) == per
        assert {r.score_raw for r in mine} == {
            (k * 1_000_000 + i).to_bytes(32, "big") for i in range(per)
        }
    for shared in (f"shared{j}" for j in range(5)):
        chain = list(reversed(NameDB(p).history(shared)))
        assert len(chain) == writers * per // 2 // 5
        assert chain[0].prev is None
        for before, after in itertools.pairwise(chain):
            assert after.prev == before.score
            assert after.order_key > before.order_key


def test_killed_in_the_middle_of_a_write(tmp_path):
    """A writer SIGKILLed after writing part of a record, holding the lock: the file parses
    and means what it meant, the lock dies with the process, and the next writer goes on."""
    p = tmp_path / "names"
    db = NameDB(p)
    first = db.set("a", "blake3:" + "1" * 64, "alice")
    child = run_py(
        """
        import os, sys, time
        from ndb.database import locked
        from ndb.names import NameRecord
        rec = NameRecord(name="b", score="blake3:" + "2" * 64, user="bob",
                         date="2026-11-22T04:30:00.000000Z").text().encode()
        with locked(sys.argv[1]) as f:
            os.write(f.fd, rec[: len(rec) // 2])   # the first part of the record's write
            print("written", flush=True)
            time.sleep(60)                          # killed here, before the rest
        """,
        str(p),
    )
    assert child.stdout.readline() == "written\n"
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    torn = p.read_bytes()
    assert not torn.endswith(b"\n")
    assert NameDB(p).all().records == {first}
    second = NameDB(p).set("c", "blake3:" + "3" * 64, "carol")
    assert NameDB(p).all().records == {first, second}
    assert p.read_bytes().count(b"\n") == 2
    assert (tmp_path / "names.torn").read_bytes().startswith(b"name=b score=blake3:2222")


KILL_LOOP = """
import sys
from ndb.names import NameDB
from ndb.values import format_score
db = NameDB(sys.argv[1])
big = "x" * 200_000
print("start", flush=True)
i = 0
while True:
    db.set(f"n{i % 100}", format_score(i.to_bytes(32, "big")), "alice",
           extra=[("pad", big)] if i % 3 == 0 else [])
    i += 1
"""


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_a_parsing_file(tmp_path):
    """Real writers killed at random moments, twenty times over: each time the file parses,
    every complete record in it is valid, and the next writer carries on."""
    p = tmp_path / "names"
    counts = []
    for round_ in range(20):
        child = run_py(KILL_LOOP, str(p))
        assert child.stdout.readline() == "start\n"
        time.sleep(0.05 + 0.013 * round_)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        parsed = parse(p.read_bytes(), str(p))
        records = [NameRecord.from_entry(e) for e in parsed.entries]
        counts.append(len(records))
        assert counts == sorted(counts)  # nothing complete is ever lost
    assert counts[-1] > 0
