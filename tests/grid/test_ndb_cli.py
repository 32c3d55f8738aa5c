"""`grid ndb`, `grid names`, `grid history`, `grid name`, `grid user`, `grid peer`, run as
real subprocesses on a home made by `grid init`."""

from __future__ import annotations

import base64
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _score_of(data: bytes) -> str:
    """The score `grid store put` gives *data* (a name may point only at a present root)."""
    from store.chunker import CdcChunker
    from store.hashtree import TreeWriter
    from store.memory import MemoryStore
    from store.score import format_score

    w = TreeWriter(MemoryStore(), CdcChunker())
    w.write(data)
    return format_score(w.finish().score)


ONE, TWO = b"root one\n", b"root two\n"
S1, S2 = _score_of(ONE), _score_of(TWO)
ME = pwd.getpwuid(os.getuid()).pw_name


def grid(home: Path | None, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("GRID_HOME", None)
    if home is not None:
        env["GRID_HOME"] = str(home)
    p = subprocess.run(
        [sys.executable, "-m", "grid.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"grid {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def _with_roots(h: Path) -> Path:
    grid(h, "init")
    for data, score in ((ONE, S1), (TWO, S2)):
        f = h.parent / "root.bin"
        f.write_bytes(data)
        assert grid(h, "store", "put", str(f)).stdout.split()[0] == score
    return h


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return _with_roots(tmp_path_factory.mktemp("cli") / "home")


@pytest.fixture
def fresh(tmp_path) -> Path:
    return _with_roots(tmp_path / "home")


def test_init_records_the_invoking_user_once(fresh):
    users = (fresh / "ndb" / "users").read_text()
    assert users == f"user={ME} uid={os.getuid()}\n"
    grid(fresh, "init")
    assert (fresh / "ndb" / "users").read_text() == users
    out = json.loads(grid(fresh, "user", "list", "--json").stdout)
    assert out == [
        {"user": ME, "uid": os.getuid(), "groups": [], "sshkeys": [], "cert": None, "extra": {}}
    ]


def test_names_set_get_history_rm(fresh):
    out = grid(fresh, "name", "set", "proj", S1).stdout
    assert out.startswith(f"proj {S1} ")
    grid(fresh, "name", "set", "proj", S2)
    grid(fresh, "name", "set", "other", S1)
    assert grid(fresh, "name", "get", "proj").stdout == S2 + "\n"
    listing = grid(fresh, "names").stdout.splitlines()
    assert [line.split()[:3] for line in listing] == [["other", S1, ME], ["proj", S2, ME]]
    hist = json.loads(grid(fresh, "history", "proj", "--json").stdout)
    assert [(h["score"], h["prev"]) for h in hist] == [(S2, S1), (S1, None)]
    text = grid(fresh, "history", "proj").stdout.splitlines()
    assert S2 in text[0] and f"prev={S1}" in text[0] and S1 in text[1]

    assert "deleted" in grid(fresh, "name", "rm", "proj").stdout
    assert [line.split()[0] for line in grid(fresh, "names").stdout.splitlines()] == ["other"]
    everything = json.loads(grid(fresh, "names", "--all", "--json").stdout)
    assert [(n["name"], n["deleted"]) for n in everything] == [("other", False), ("proj", True)]
    assert json.loads(grid(fresh, "history", "proj", "--json").stdout)[0]["deleted"] is True
    gone = grid(fresh, "name", "get", "proj", check=False)
    assert gone.returncode == 1 and "no such name" in gone.stderr
    assert json.loads(grid(fresh, "names", "--user", "nobody", "--json").stdout) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("name", "set", "has space", S1), "white space"),
        (("name", "set", "a=b", S1), "'='"),
        (("name", "set", 'q"uote', S1), "contains '\"'"),
        (("name", "set", "new\nline", S1), "white space"),
        (("name", "set", "ok", "blake3:1234"), "bad score"),
        (("name", "set", "ok", "blake3:" + "A" * 64), "bad score"),
        (("name", "set", "ok", S1, "--user", "mallory"), "unknown user 'mallory'"),
        (("name", "rm", "never-was"), "no name 'never-was'"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(home, args, message):
    names = home / "ndb" / "names"
    before = names.read_bytes()
    p = grid(home, *args, check=False)
    assert p.returncode == 1
    assert p.stderr.startswith("grid: ") and message in p.stderr
    assert "Traceback" not in p.stderr
    assert names.read_bytes() == before


def test_ndb_query_on_the_home(fresh):
    grid(fresh, "name", "set", "proj", S1)
    grid(fresh, "name", "set", "proj", S2)
    out = grid(fresh, "ndb", "query", "name", "proj").stdout.splitlines()
    assert len(out) == 2 and out[0].startswith(f"name=proj score={S1} user={ME} date=")
    assert grid(fresh, "ndb", "query", "name", "proj", "score").stdout == S1 + "\n"
    assert grid(fresh, "ndb", "query", "-a", "name", "proj", "score").stdout == f"{S1}\n{S2}\n"
    assert grid(fresh, "ndb", "query", "user", ME, "uid").stdout == f"{os.getuid()}\n"
    assert grid(fresh, "ndb", "query", "name", "nosuch").stdout == ""
    js = json.loads(grid(fresh, "ndb", "query", "--json", "user", ME).stdout)
    # user=ME is in the name records too: all three entries, in chain order (names, users).
    assert len(js) == 3 and js[0][0][0] == ["name", "proj"]
    assert js[-1] == [[["user", ME], ["uid", str(os.getuid())]]]


MAN = """\
sys=helix dom=helix.research.bell-labs.com bootf=/mips/9powerboot
\tip=135.104.117.31 ether=080069020427
\tproto=il
sys=spindle dom=spindle.research.bell-labs.com
\tip=135.104.117.32 ether=080069020677
\tip=135.104.117.33 ether=080069020678
\tproto=il
"""


def test_ndb_query_any_file_like_plan9(tmp_path):
    f = tmp_path / "local"
    f.write_text(MAN)
    q = ["ndb", "query", "-f", str(f)]
    # ndb(8)'s example, and no grid home needed for -f.
    assert grid(None, *q, "sys", "helix").stdout == (
        "sys=helix dom=helix.research.bell-labs.com bootf=/mips/9powerboot\n"
        "\tip=135.104.117.31 ether=080069020427\n"
        "\tproto=il\n"
    )
    assert grid(None, *q, "ip", "135.104.117.33", "ether").stdout == "080069020678\n"
    assert grid(None, *q, "-m", "sys", "spindle", "ip").stdout == "135.104.117.32\n135.104.117.33\n"
    assert grid(None, *q, "-a", "proto", "il", "sys").stdout == "helix\nspindle\n"
    assert grid(None, *q, "proto", "il", "sys").stdout == "helix\n"


def test_ndb_errors_name_file_and_line(tmp_path):
    f = tmp_path / "bad"
    f.write_text('sys=a\nsys="unterminated\n')
    p = grid(None, "ndb", "query", "-f", str(f), "sys", "a", check=False)
    assert p.returncode == 1
    assert f"{f}:2: unterminated quote" in p.stderr


def test_ndb_check_reports_torn_tail(fresh):
    names = fresh / "ndb" / "names"
    names.write_text(f"name=a score={S1} user={ME} date=2026-11-22T04:30:00Z\nname=b score=bla")
    out = grid(fresh, "ndb", "check").stdout
    assert f"{names}: 1 entries" in out
    assert "incomplete last line (ignored): 'name=b score=bla'" in out
    assert [n["name"] for n in json.loads(grid(fresh, "names", "--json").stdout)] == ["a"]
    (fresh / "ndb" / "peers").write_text('peer=x addr="h:1\npeer=y\n')
    bad = grid(fresh, "ndb", "check", check=False)
    assert bad.returncode == 1
    assert f"{fresh / 'ndb' / 'peers'}:1: unterminated quote" in bad.stdout


def ssh_key(comment: str) -> str:
    blob = (11).to_bytes(4, "big") + b"ssh-ed25519" + bytes(36)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def test_user_add_list_rm(fresh, tmp_path):
    keyfile = tmp_path / "id.pub"
    keyfile.write_text(f"# my keys\n{ssh_key('alice@laptop')}\n\n{ssh_key('alice@phone')}\n")
    grid(
        fresh,
        "user",
        "add",
        "alice",
        "--uid",
        "54321",
        "--ssh-key",
        str(keyfile),
        "--group",
        "staff",
    )
    users = json.loads(grid(fresh, "user", "list", "--json").stdout)
    alice = users[-1]
    assert alice["user"] == "alice" and alice["uid"] == 54321 and alice["groups"] == ["staff"]
    assert alice["sshkeys"] == [ssh_key("alice@laptop"), ssh_key("alice@phone")]
    assert "alice  54321  staff  2 ssh key(s)" in grid(fresh, "user", "list").stdout
    dup = grid(fresh, "user", "add", "alice", check=False)
    assert dup.returncode == 1 and "exists" in dup.stderr
    taken = grid(fresh, "user", "add", "bob", "--uid", "54321", check=False)
    assert taken.returncode == 1 and "uid 54321" in taken.stderr
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key\n")
    p = grid(fresh, "user", "add", "bob", "--ssh-key", str(bad), check=False)
    assert p.returncode == 1 and f"{bad}:1" in p.stderr and "not an SSH public key" in p.stderr
    grid(fresh, "user", "rm", "alice")
    assert [u["user"] for u in json.loads(grid(fresh, "user", "list", "--json").stdout)] == [ME]
    assert grid(fresh, "user", "rm", "alice", check=False).returncode == 1


def test_peer_add_list_rm(fresh, tmp_path):
    cert = tmp_path / "node2.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    grid(fresh, "peer", "add", "node2", "node2.example.org:17010", "--cert", str(cert))
    grid(fresh, "peer", "add", "node3", "10.0.0.3:17010")
    peers = json.loads(grid(fresh, "peer", "list", "--json").stdout)
    copied = fresh / "certs" / "peers" / "node2.pem"
    assert peers[0] == {
        "peer": "node2",
        "addr": "node2.example.org:17010",
        "cert": str(copied),
        "extra": {},
    }
    assert copied.read_text() == cert.read_text()
    assert peers[1]["peer"] == "node3" and peers[1]["cert"] is None
    assert grid(fresh, "ndb", "query", "peer", "node3", "addr").stdout == "10.0.0.3:17010\n"
    for args, msg in (
        (("node4", "nohost"), "bad address"),
        (("node2", "h:1"), "exists"),
        (("node5", "h:1", "--cert", str(tmp_path / "missing.pem")), "missing.pem"),
    ):
        p = grid(fresh, "peer", "add", *args, check=False)
        assert p.returncode == 1 and msg in p.stderr, p.stderr
    grid(fresh, "peer", "rm", "node2")
    assert not copied.exists()
    assert [p["peer"] for p in json.loads(grid(fresh, "peer", "list", "--json").stdout)] == [
        "node3"
    ]


@pytest.mark.parametrize(
    "cmd",
    [
        ("ndb", "query"),
        ("ndb", "check"),
        ("names",),
        ("history",),
        ("name", "set"),
        ("name", "rm"),
        ("name", "get"),
        ("user", "add"),
        ("user", "list"),
        ("user", "rm"),
        ("peer", "add"),
        ("peer", "list"),
        ("peer", "rm"),
    ],
)
def test_help_has_an_example(cmd):
    out = grid(None, *cmd, "--help").stdout
    assert "example" in out


def test_missing_home_says_how_to_make_one(tmp_path):
    p = grid(tmp_path / "nowhere", "names", check=False)
    assert p.returncode == 1 and "grid init" in p.stderr
