"""Replicated name records keep their owner, group, mode and ACL: they are attributes of the
records, and merge is the union of records, so the peer resolves the same permissions (two
real nodes, `grid replicate` over mutual TLS)."""

from __future__ import annotations

import json

import pytest

from tests.replication.grid3 import make_grid


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    peers = make_grid(2, tmp_path_factory.mktemp("owners"))
    try:
        for p in peers:
            p.start()
        yield peers
    finally:
        for p in peers:
            p.node.close()


def _perms(r: dict) -> tuple:
    return (r["owner"], r["group"], r["mode"], r["acl"], r["score"], r["user"])


def test_owners_and_modes_replicate(pair, tmp_path):
    a, b = pair
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x\n")
    for who in ("alice", "bob"):
        for p in (a, b):
            p.grid("user", "add", who, "--group", "staff")
    a.grid("import", str(src), "owned", "--user", "alice")
    a.grid("name", "chown", "alice:staff", "owned")
    a.grid("name", "chmod", "0640", "owned")
    a.grid("name", "share", "owned", "bob", "--write")
    a.grid("import", str(src), "private", "--user", "alice")
    a.grid("replicate", "--peer", "b")
    on_a, on_b = a.names(), b.names()
    for name in ("owned", "private"):
        assert _perms(on_b[name]) == _perms(on_a[name])
    assert _perms(on_b["owned"])[:4] == ("alice", "staff", "0640", ["u:bob:rw"])
    assert _perms(on_b["private"])[:3] == ("alice", None, "0600")
    # the whole history, permission records included, is the same on both
    ha = json.loads(a.grid("history", "owned", "--json").stdout)
    hb = json.loads(b.grid("history", "owned", "--json").stdout)
    assert ha == hb and len(ha) == 4
    # a change on b comes back to a: the latest record decides on both
    b.grid("name", "unshare", "owned", "bob")
    b.grid("replicate", "--peer", "a")
    assert a.names()["owned"]["acl"] == [] and _perms(a.names()["owned"]) == _perms(
        b.names()["owned"])
