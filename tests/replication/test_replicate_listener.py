"""The peer listener and the replication engine in one process (fast): who is admitted, the
control connection, names only after blocks, a full receiver, cursors and the lock."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest

from ndb.names import NameDB, NameRecord
from ndb.peers import Peer, PeerDB
from replication import certs
from replication.control import MAGIC, ControlClient, ControlError, encode
from replication.listener import PeerListener
from replication.replicate import (
    PUSH,
    Busy,
    Cursors,
    ReplicationError,
    Stats,
    connect,
    push_blocks,
    push_names,
    run_lock,
)
from store.block import BlockType, encode_refs
from store.memory import MemoryStore
from store.score import format_score, score_of


class Pki:
    def __init__(self, root: Path) -> None:
        ca = certs.create_ca(root / "ca", "lab")
        other = certs.create_ca(root / "other", "evil")
        self.dirs = {}
        for name, creds in (("server", certs.issue_node_cert(ca, "server")),
                            ("client", certs.issue_node_cert(ca, "client")),
                            ("stranger", certs.issue_node_cert(ca, "stranger")),
                            ("alice", certs.issue_user_cert(ca, "alice")),
                            ("foreign", certs.issue_node_cert(other, "client"))):
            self.dirs[name] = certs.write_bundle(root / name, creds)
        self.ca_file = self.dirs["server"] / certs.CA_FILE

    def server_ctx(self) -> ssl.SSLContext:
        d = self.dirs["server"]
        return certs.server_context(d / certs.CERT_FILE, d / certs.KEY_FILE, d / certs.CA_FILE)

    def client_ctx(self, who: str) -> ssl.SSLContext:
        """*who*'s certificate, trusting this grid's CA (so only the server can refuse)."""
        d = self.dirs[who]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cafile=str(self.ca_file))
        ctx.load_cert_chain(d / certs.CERT_FILE, d / certs.KEY_FILE)
        return ctx


class Running:
    """A PeerListener on an event loop in a thread."""

    def __init__(self, store, tmp: Path, pki: Pki) -> None:
        self.names_path = tmp / "names"
        peers = tmp / "peers"
        PeerDB(peers).add(Peer(name="client", addr="127.0.0.1:1"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.listener = PeerListener(store, node="server", names_path=self.names_path,
                                     peers_path=peers, ssl_context=pki.server_ctx())
        self.call(self.listener.start("127.0.0.1", 0))
        self.port = self.listener.addresses[0][1]
        self.addr = f"127.0.0.1:{self.port}"

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.call(self.listener.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def served(pki, tmp_path):
    store = MemoryStore()
    r = Running(store, tmp_path, pki)
    r.store = store
    yield r
    r.close()


def tree(store) -> tuple[bytes, list[bytes]]:
    """Two data blocks under a pointer block: the pointer is the root."""
    a = store.put(BlockType.DATA, os.urandom(1000))
    b = store.put(BlockType.DATA, os.urandom(2000))
    root = store.put(BlockType.POINTER, encode_refs([a, b]))
    return root, [a, b, root]


def record(name: str, score: bytes | None, date: str = "2026-01-01T00:00:00Z") -> NameRecord:
    return NameRecord(name=name, score=None if score is None else format_score(score),
                      user="alice", date=date)


def handshake_then_read(pki: Pki, who: str, port: int) -> bytes:
    with (socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
          pki.client_ctx(who).wrap_socket(raw, server_hostname="server") as s):
        s.sendall(MAGIC + encode({"op": "names"}))
        return s.recv(100)


def test_a_node_of_another_ca_is_refused_at_the_handshake(pki, served, caplog):
    caplog.set_level("INFO", logger="replication.listener")
    try:  # asyncio's server drops the connection; OpenSSL may or may not see the alert first
        assert handshake_then_read(pki, "foreign", served.port) == b""
    except (ssl.SSLError, ConnectionError):
        pass
    assert "peer client connected" not in caplog.text  # never got past the handshake
    assert served.listener.blocks.statistics().connections == 0
    handshake_then_read(pki, "client", served.port)  # the same name, from this grid: admitted
    assert "peer client connected" in caplog.text


@pytest.mark.parametrize("who", ["alice", "stranger"])
def test_a_user_or_an_unlisted_node_is_dropped(pki, served, who):
    try:
        assert handshake_then_read(pki, who, served.port) == b""
    except (ssl.SSLError, ConnectionError):
        pass


def test_push_then_names_only_with_their_roots(pki, served, tmp_path):
    local = MemoryStore()
    root, scores = tree(local)
    other_root = score_of(BlockType.DATA, b"never sent")
    names = [record("good", root), record("orphan", other_root), record("gone", None)]
    remote, ctl = connect("server", served.addr, pki.client_ctx("client"), me="client")
    with remote, ctl:
        acked: list[int] = []
        stats = Stats(peer="server", mode=PUSH)
        push_blocks(local, remote, stats, 0, acked.append)
        assert stats.blocks == 3 and acked == [local.position()]
        assert all(served.store.has(s) for s in scores)
        from ndb.names import NameSet

        push_names(ctl, NameSet.of(names), stats)
        assert stats.names == 2 and stats.skipped_names == 1
        got = NameDB(served.names_path).all()
        assert {r.name for r in got} == {"good", "gone"}
        again = Stats(peer="server", mode=PUSH)  # idempotent
        push_names(ctl, NameSet.of(names), again)
        assert again.names == 0
        recs, end = ctl.log(0)
        assert [s for _, _, s in recs] == scores and end == served.store.position()


def test_control_errors_leave_the_connection_usable(pki, served):
    with ControlClient.connect("127.0.0.1", served.port, pki.client_ctx("client"), "server") as c:
        for op, args, why in (("frob", {}, "unknown request"), ("log", {"start": -1}, "log needs"),
                              ("log", {"start": 10**9}, "past the log"),
                              ("merge", {"names": 5}, "merge needs"),
                              ("merge", {"names": "name=x score=nonsense"}, "no newline")):
            with pytest.raises(ControlError, match=why):
                c.call(op, **args)
        assert c.names() == ""


def test_a_malformed_control_frame_closes_only_that_connection(pki, served):
    with (socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw,
          pki.client_ctx("client").wrap_socket(raw, server_hostname="server") as s):
        s.sendall(MAGIC + b"\x00\x00\x00\x03{{{")
        assert s.recv(100) == b""
    with ControlClient.connect("127.0.0.1", served.port, pki.client_ctx("client"), "server") as c:
        assert c.names() == ""
    with pytest.raises(ControlError):
        encode({"x": "y" * (65 << 20)})


class FullStore(MemoryStore):
    """A store whose disk is full: every new block fails with ENOSPC."""

    def _store(self, score, btype, payload):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_receiver_fails_the_push_and_keeps_the_cursor(pki, tmp_path):
    r = Running(FullStore(), tmp_path, pki)
    try:
        local = MemoryStore()
        tree(local)
        remote, ctl = connect("server", r.addr, pki.client_ctx("client"), me="client")
        acked: list[int] = []
        with remote, ctl, pytest.raises(Exception, match="No space left"):
            push_blocks(local, remote, Stats(peer="server", mode=PUSH), 0, acked.append)
        assert acked == []
    finally:
        r.close()


def test_unreachable_peer_and_wrong_server_name(pki, served):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ReplicationError, match="cannot reach server"):
        connect("server", f"127.0.0.1:{port}", pki.client_ctx("client"))
    with pytest.raises(ReplicationError, match="certificate"):
        connect("someone-else", served.addr, pki.client_ctx("client"))
    with pytest.raises(ReplicationError, match="bad peer address"):
        connect("server", "nowhere", pki.client_ctx("client"))


def test_cursors_are_durable_and_bad_files_are_refused(tmp_path):
    c = Cursors(tmp_path / "r" / "cursors")
    assert c.get(PUSH, "b") == 0
    c.set(PUSH, "b", 123)
    c.set("pull", "b", 7)
    assert Cursors(c.path).get(PUSH, "b") == 123 and c.get("pull", "b") == 7
    c.path.write_text('{"push": {"b": -1}}')
    with pytest.raises(ReplicationError, match="bad push cursor"):
        c.get(PUSH, "b")
    c.path.write_text("garbage")
    with pytest.raises(ReplicationError, match="unreadable"):
        c.get(PUSH, "b")


def test_the_lock_admits_one_run(tmp_path):
    with (run_lock(tmp_path / "lock"), pytest.raises(Busy, match=f"pid {os.getpid()}"),
          run_lock(tmp_path / "lock")):
        pass
    with run_lock(tmp_path / "lock"):  # released
        pass


def test_the_rate_limit_sleeps_to_keep_the_average(monkeypatch):
    from replication import replicate as rep

    clock = [100.0]
    slept: list[float] = []
    monkeypatch.setattr(rep.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(rep.time, "sleep", lambda s: (slept.append(s), clock.__setitem__(
        0, clock[0] + s)))
    limit = rep.RateLimit(1000.0)
    limit.spend(500)  # 0.5 s worth at once
    limit.spend(500)
    assert slept == [pytest.approx(0.5), pytest.approx(0.5)]
    clock[0] += 10  # idle time is not banked beyond the average: the next spend is free
    limit.spend(1000)
    assert len(slept) == 2
    rep.RateLimit(None).spend(10**12)  # no limit: no sleep
    assert len(slept) == 2


def test_forget_records_replicate_and_hide_the_peer_copy(pki, served, tmp_path):
    """Push a name's history, forget most of it here, push again: the peer holds the forget
    records, shows only what is kept, and a later push of the old records brings nothing
    back; pulling gives this node the peer's forget records too."""
    from ndb.nameaccess import Caller
    from ndb.names import NameSet
    from ndb.retention import Policy

    local = MemoryStore()
    root, _scores = tree(local)
    mine = NameDB(tmp_path / "names")
    for d in range(1, 5):
        mine.set("p", format_score(root), "alice", date=f"2026-03-0{d}T12:00:00.000000Z")
    remote, ctl = connect("server", served.addr, pki.client_ctx("client"), me="client")
    with remote, ctl:
        stats = Stats(peer="server", mode=PUSH)
        push_blocks(local, remote, stats, 0, lambda pos: None)
        old = mine.all()
        push_names(ctl, old, stats)
        assert len(NameDB(served.names_path).history("p")) == 4
        mine.forget("p", Policy(last=1), Caller("alice"))
        push_names(ctl, mine.all(), Stats(peer="server", mode=PUSH))
        theirs = NameDB(served.names_path)
        assert len(theirs.history("p")) == 1 and len(theirs.all().forgets) == 3
        again = Stats(peer="server", mode=PUSH)
        push_names(ctl, NameSet.of(old.records), again)  # a peer that still has them
        assert again.names == 0 and len(theirs.history("p")) == 1
        fresh = NameDB(tmp_path / "fresh")
        fresh.merge_from(old.records)
        from replication.replicate import pull_names

        pull_names(ctl, fresh, local, Stats(peer="server", mode=PUSH))
        assert len(fresh.history("p")) == 1
