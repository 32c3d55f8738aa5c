"""Users and peers: add, list, get, remove; conflicts; hand edits survive."""

from __future__ import annotations

import base64

import pytest

import ndb
from ndb.errors import NdbConflict, NdbNotFound, NdbRecordError, NdbValueError
from ndb.peers import Peer, PeerDB
from ndb.users import User, UserDB


def ssh_key(kind: str = "ssh-ed25519", comment: str = "alice@laptop", seed: int = 1) -> str:
    blob = len(kind).to_bytes(4, "big") + kind.encode() + bytes([seed]) * 36
    return f"{kind} {base64.b64encode(blob).decode()} {comment}".strip()


def test_user_add_list_get(tmp_path):
    users = UserDB(tmp_path / "users")
    alice = User(
        name="alice",
        uid=1000,
        sshkeys=(ssh_key(), ssh_key(seed=2, comment="")),
        groups=("staff", "dev"),
    )
    users.add(alice)
    users.add(User(name="bob"))
    assert users.list() == [alice, User(name="bob")]
    assert users.get("alice") == alice
    assert users.get("carol") is None
    assert users.by_uid(1000) == alice
    assert users.by_sshkey(ssh_key(comment="other comment")) == alice
    text = (tmp_path / "users").read_text()
    assert text.startswith("user=alice uid=1000 group=staff group=dev sshkey=")
    assert text.count("\n") == 2  # appended entries are one line each


def test_user_conflicts(tmp_path):
    users = UserDB(tmp_path / "users")
    users.add(User(name="alice", uid=1000))
    with pytest.raises(NdbConflict, match="exists"):
        users.add(User(name="alice"))
    with pytest.raises(NdbConflict, match="uid 1000"):
        users.add(User(name="bob", uid=1000))


def test_user_validation():
    with pytest.raises(NdbValueError, match="bad user name"):
        User(name="al ice")
    with pytest.raises(NdbValueError, match="not an SSH public key"):
        User(name="alice", sshkeys=("hello",))
    with pytest.raises(NdbValueError, match="not a ssh-rsa key"):
        User(name="alice", sshkeys=(ssh_key().replace("ssh-ed25519", "ssh-rsa", 1),))
    with pytest.raises(NdbValueError, match="bad group name"):
        User(name="alice", groups=("a b",))
    with pytest.raises(NdbValueError, match="uid"):
        User(name="alice", uid=-1)


def test_user_remove_keeps_the_rest(tmp_path):
    p = tmp_path / "users"
    text = (
        "# grid users\n"
        "user=alice uid=1000   # the admin\n"
        "\tgroup=staff\n"
        "\n"
        "# bob comes and goes\n"
        "user=bob uid=1001\n"
        f'\tsshkey="{ssh_key(comment="bob@x")}"\n'
        "user=carol\n"
    )
    p.write_text(text)
    users = UserDB(p)
    removed = users.remove("bob")
    assert removed.uid == 1001 and len(removed.sshkeys) == 1
    assert p.read_text() == text.replace(
        f'user=bob uid=1001\n\tsshkey="{ssh_key(comment="bob@x")}"\n', ""
    )
    with pytest.raises(NdbNotFound):
        users.remove("bob")
    assert [u.name for u in users.list()] == ["alice", "carol"]


def test_ensure_is_idempotent(tmp_path):
    users = UserDB(tmp_path / "users")
    assert users.ensure("alice", 1000)[1] is True
    assert users.ensure("alice", 1000)[1] is False
    u, added = users.ensure("alice2", 1000)  # uid taken: added without it
    assert added and u.uid is None
    assert len(users.list()) == 2


def test_bad_user_entry_names_the_line(tmp_path):
    p = tmp_path / "users"
    p.write_text("user=alice\nuser=bob uid=1 uid=2\n")
    with pytest.raises(NdbRecordError, match=r"users:2: .*uid= twice"):
        UserDB(p).list()


def test_peers(tmp_path):
    peers = PeerDB(tmp_path / "peers")
    n2 = peers.add(Peer(name="node2", addr="node2.example.org:17010", cert="/x/node2.pem"))
    n3 = peers.add(Peer(name="node3", addr="[::1]:17010"))
    assert peers.list() == [n2, n3]
    assert peers.get("node2") == n2
    with pytest.raises(NdbConflict):
        peers.add(Peer(name="node2", addr="h:1"))
    assert peers.remove("node2") == n2
    assert peers.list() == [n3]
    with pytest.raises(NdbNotFound):
        peers.remove("node2")
    for addr in ("nohost", "h:0", "h:65536", "h:x", ":1", "a b:1"):
        with pytest.raises(NdbValueError, match="bad address"):
            Peer(name="p", addr=addr)
    with pytest.raises(NdbValueError, match="bad peer name"):
        Peer(name="-p", addr="h:1")


def test_public_names():
    """The package's public namespace is exactly its re-exports (trio style)."""
    assert set(ndb.__all__) == {
        "Caller", "Database", "Document", "Entry", "Match", "NameDB", "NameRecord", "NameSet",
        "NdbConflict", "NdbError", "NdbFile", "NdbNotFound", "NdbPermission", "NdbRecordError",
        "NdbSyntaxError", "NdbValueError", "Pair", "Parsed", "Peer", "PeerDB", "User",
        "UserDB", "format_date", "format_entries", "format_entry", "format_entry_line",
        "format_score", "getvalue", "latest_of", "locked", "merge", "ndbquery", "now_date",
        "parse", "parse_date", "parse_entry", "parse_score_text", "search",
    }  # fmt: skip
    modules = {
        "database",
        "document",
        "errors",
        "index",
        "nameaccess",
        "names",
        "peers",
        "query",
        "retention",
        "syntax",
        "users",
        "values",
    }
    public = {n for n in dir(ndb) if not n.startswith("_")} - modules
    assert public == set(ndb.__all__)
