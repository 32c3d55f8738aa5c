"""The daemon's local protocol (docs/daemon.md) spoken directly: the frame codec, control
requests, vfs sessions, and bad frames costing only their own connection."""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

import pytest

from grid.daemon.client import DaemonClient, DaemonError
from spawn.attr import Attr
from spawn.vfswire import MAX_FRAME, FrameError, decode, encode
from tests.grid.gridnode import Node, new_node, wait_for


def test_frame_codec_round_trips_attrs_and_bytes() -> None:
    a = Attr(7, 0o100644, 1, 1000, 1000, 0, 12, -5, 2**62, 3)
    msg = [9, 0, [(b"name\xff", a)]]
    frame = encode(msg)
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
    assert decode(frame[4:]) == [9, 0, [[b"name\xff", a]]]
    with pytest.raises(FrameError):
        decode(b"\xc1")  # never used in msgpack
    with pytest.raises(FrameError):
        decode(b"\xc7\x01\x09x")  # an extension type nobody defined
    with pytest.raises(FrameError):
        encode([1, "write", [1, 0, bytes(MAX_FRAME)], {}])


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    n = new_node()
    try:
        n.init()
        src = n.base / "src"
        src.mkdir()
        (src / "f").write_bytes(b"0123456789")
        n.grid("import", str(src), "p")
        n.start()
        yield n
    finally:
        n.close()


def _sock(node: Node) -> str:
    return str(node.home / "run" / "grid.sock")


def _raw(node: Node, data: bytes) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(_sock(node))
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out
    finally:
        s.close()


def test_control_requests_and_their_errors(node: Node) -> None:
    with DaemonClient(_sock(node)) as c:
        me = c.call("ping")
        assert me["uid"] == os.getuid() and me["pid"] > 0
        sp = c.call("spawn", "p")
        assert sp["name"] == "p" and sp["clients"] == 0
        assert c.call("status", sp["id"])["id"] == sp["id"]
        for op, args, code in (
            ("nosuch", (), errno.ENOSYS),
            ("status", ("12345",), errno.ENOENT),
            ("status", ("../x",), errno.ENOENT),
            ("spawn", ("no-such-name",), errno.EINVAL),
            ("spawn", (), errno.EINVAL),
            ("save", (sp["id"], "bad name"), errno.EINVAL),
        ):
            with pytest.raises(DaemonError) as e:
                c.call(op, *args)
            assert e.value.errno == code, (op, e.value)
        c.call("kill", sp["id"])
        with pytest.raises(DaemonError):
            c.call("status", sp["id"])


def test_a_vfs_session_speaks_engine_operations_only(node: Node) -> None:
    with DaemonClient(_sock(node)) as c:
        sid = c.call("spawn", "p")["id"]
    with DaemonClient(_sock(node)) as s:
        info = s.call("attach", sid, mountpoint="/x")
        assert info["id"] == sid and info["uid"] == os.getuid()
        ino = s.call("lookup", 1, b"f").ino
        assert s.call("read", ino, 2, 3) == b"234"
        a = s.call("create", 1, b"new", 0o600, open=True)  # as the peer: no uid/gid to claim
        assert isinstance(a, Attr) and a.mode & 0o777 == 0o600
        assert (a.uid, a.gid) == (os.getuid(), os.getgid())
        assert s.call("write", a.ino, 0, b"hello") == 5
        with pytest.raises(DaemonError) as e:
            s.call("lookup", 1, b"missing")
        assert e.value.errno == errno.ENOENT
        for op in ("save", "close", "spawn", "_get"):  # nothing but the filesystem
            with pytest.raises(DaemonError) as e:
                s.call(op)
            assert e.value.errno == errno.ENOSYS
        with DaemonClient(_sock(node)) as c:
            assert c.call("status", sid)["mounts"] == ["/x"]
        s.call("unlink", 1, b"new")  # still open: an orphan until the session ends
    with DaemonClient(_sock(node)) as c:
        assert wait_for(lambda: c.call("status", sid)["clients"] == 0)
        c.call("kill", sid)


def test_bad_frames_cost_only_their_connection(node: Node) -> None:
    with DaemonClient(_sock(node)) as bystander:
        bystander.call("ping")
        for junk in (
            struct.pack(">I", MAX_FRAME + 1),  # oversize
            struct.pack(">I", 3) + b"\xc1\xc1\xc1",  # not msgpack
            encode({"not": "a request"}),
            encode([1, 2, 3, 4]),  # op is not a string
            struct.pack(">I", 10) + b"abc",  # cut short
            os.urandom(5000),
        ):
            _raw(node, junk)  # the daemon closes it (the read ends) without answering
        for i in range(200):
            _raw(node, os.urandom(i) + encode([i, "ping", [], {}]))
        assert bystander.call("ping")["pid"] > 0
    with DaemonClient(_sock(node)) as c:
        assert c.call("ping")


def test_the_daemon_stops_when_its_home_is_removed() -> None:
    n = new_node()
    try:
        n.init()
        n.start()
        assert n.proc is not None
        (n.home / "grid.home").unlink()  # what `rm -rf HOME` does first, in effect
        n.proc.wait(timeout=30)  # it checks every 10 s
        assert n.proc.returncode == 0
        assert "the grid home or its socket is gone" in n.log.read_text()
    finally:
        n.close()
