"""The read fast path (grid.daemon.sftp_fast; docs/ssh.md, "The read fast path"): READs the
read-ahead buffer holds are answered by the request reader, everything else by asyncssh's
handler, and a client cannot tell the two apart.

sshfs through OpenSSH's sshd and grid's bridge reads files of many sizes, whole and at random
offsets; then raw SFTP sessions (the bridge run directly as alice, requests written to its
stdin as sshd would) check what a client can see byte for byte: EOF replies, READs on
another session's handle and on closed handles, malformed READs, replies in request order,
and READs racing another session's writes never getting bytes a completed write replaced.
"""

from __future__ import annotations

import os
import random
import re
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.grid.gridnode import Node, User, make_user, new_node, skip_without_mounts

skip_without_mounts()
from tests.grid.test_sftp_openssh import bridge, openssh  # noqa: E402  (skips without sshd)
from tests.grid.test_ssh_sshfs import sshfs_mount  # noqa: E402

CHECKPOINT = 2.5  # seconds for a spawn's changes to be committed (spawn.overlay)
KIB = 1024
READ_AHEAD = 512 * KIB  # grid.daemon.sftp.READ_AHEAD
#: Sizes around the request size (32 KiB), the read-ahead (512 KiB) and the decoded-content
#: cache's minimum (1 MiB), and a few ordinary ones.
SIZES = [0, 1, 100, 4095, 32 * KIB - 1, 32 * KIB, 32 * KIB + 1, 100_000, READ_AHEAD - 1,
         READ_AHEAD, READ_AHEAD + 1, 1 << 20, (1 << 20) + 37, 3 * (1 << 20) + 5]

FXP_INIT, FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE, FXP_FSTAT = 1, 3, 4, 5, 6, 8
FXP_REMOVE, FXP_STAT, FXP_STATUS, FXP_HANDLE, FXP_DATA, FXP_ATTRS = 13, 17, 101, 102, 103, 105
FXF_READ, FXF_WRITE, FXF_CREAT, FXF_TRUNC = 1, 2, 8, 0x10
FX_EOF, FX_FAILURE, FX_BAD_MESSAGE = 1, 4, 5


@dataclass
class Env:
    node: Node
    alice: User
    sid: str
    files: dict[str, bytes]
    mnt: Path


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    alice = make_user("gridtest-alice")
    n = new_node()
    mnt = n.base / "sshfs"
    rng = random.Random(13)
    files = {f"f{size}": rng.randbytes(size) for size in SIZES}
    files["race"] = bytes(256 * KIB)
    try:
        n.init()
        n.import_shared(n.write_tree(files, owner=alice), "proj")
        keys = n.base / "keys"
        keys.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "alice")],
                       check=True, capture_output=True)
        n.grid("user", "add", alice.name, "--uid", str(alice.uid))
        n.start()
        sid = n.grid("spawn", "-q", "proj", user=alice).stdout.strip()
        mnt.mkdir()
        with openssh(n, keys, {alice.name: "alice"}) as port:
            sshfs_mount(n, alice, port, sid, mnt)
            try:
                yield Env(n, alice, sid, files, mnt)
            finally:
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True,
                               check=False)
        log = n.log.read_text()
        assert "Traceback" not in log, log[-3000:]
    finally:
        n.close()


# -- a raw SFTP client over the bridge --------------------------------------------------------


def pkt(ptype: int, *fields: bytes) -> bytes:
    body = bytes([ptype]) + b"".join(fields)
    return struct.pack(">I", len(body)) + body


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def string(b: bytes) -> bytes:
    return u32(len(b)) + b


class Raw:
    """One SFTP v3 session through ``python -m grid.sftp_bridge`` run as alice (sshd's part:
    the decrypted stream on the bridge's stdin and stdout)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.p = bridge(env.node.home / "run" / "sftp.sock", user_prefix=env.alice.prefix())
        assert self.p.stdin is not None and self.p.stdout is not None
        self.stdin, self.stdout = self.p.stdin, self.p.stdout
        self.next_id = 1
        self.send_raw(pkt(FXP_INIT, u32(3)))
        ptype, body = self.recv()
        assert ptype == 2 and body[:4] == u32(3)

    def send_raw(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def request(self, ptype: int, *fields: bytes) -> tuple[int, bytes]:
        """Send one request: its id and the packet (not yet sent)."""
        rid = self.next_id
        self.next_id += 1
        return rid, pkt(ptype, u32(rid), *fields)

    def recv(self) -> tuple[int, bytes]:
        """The next reply: its type and what follows the type (id included)."""
        n = struct.unpack(">I", self._exactly(4))[0]
        body = self._exactly(n)
        return body[0], body[1:]

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            more = self.stdout.read(n - len(out))
            assert more, "the session ended"
            out += more
        return out

    def call(self, ptype: int, *fields: bytes) -> tuple[int, bytes]:
        rid, data = self.request(ptype, *fields)
        self.send_raw(data)
        rtype, body = self.recv()
        assert body[:4] == u32(rid)
        return rtype, body[4:]

    def open(self, name: str, pflags: int = FXF_READ) -> bytes:
        rtype, body = self.call(FXP_OPEN, string(f"/{self.env.sid}/{name}".encode()),
                                u32(pflags), u32(0))
        assert rtype == FXP_HANDLE, body
        return body[4:]

    def read(self, handle: bytes, offset: int, size: int) -> tuple[int, bytes]:
        return self.call(FXP_READ, string(handle), u64(offset), u32(size))

    def data(self, handle: bytes, offset: int, size: int) -> bytes:
        rtype, body = self.read(handle, offset, size)
        assert rtype == FXP_DATA, body
        return body[4:]

    def write(self, handle: bytes, offset: int, data: bytes) -> None:
        rtype, body = self.call(FXP_WRITE, string(handle), u64(offset), string(data))
        assert rtype == FXP_STATUS and body[:4] == u32(0), body

    def close(self, handle: bytes) -> tuple[int, bytes]:
        return self.call(FXP_CLOSE, string(handle))

    def end(self) -> int:
        """End the session; the number of READs the daemon's request reader answered."""
        self.stdin.close()
        assert self.p.wait(timeout=30) == 0
        self.stdout.close()
        assert self.p.stderr is not None
        self.p.stderr.close()
        deadline = time.monotonic() + 10
        pattern = re.compile(r"sftp: session for uid \d+ ended; (\d+) READs answered")
        while True:
            found = pattern.findall(self.env.node.log.read_text())
            if len(found) >= self.ended_before + 1 or time.monotonic() > deadline:
                assert len(found) >= self.ended_before + 1, "no end-of-session line"
                return int(found[-1])
            time.sleep(0.05)

    ended_before = 0


def session(env: Env) -> Raw:
    Raw.ended_before = len(re.findall(r"sftp: session for uid \d+ ended",
                                      env.node.log.read_text()))
    return Raw(env)


def committed(env: Env) -> None:
    """Wait until the spawn's changes are committed: reads then come from the read-ahead."""
    time.sleep(CHECKPOINT)


# -- sshfs -----------------------------------------------------------------------------------


def test_sshfs_reads_every_size_whole_and_at_random_offsets(env: Env) -> None:
    committed(env)
    rng = random.Random(1)
    for name, data in env.files.items():
        if name == "race":
            continue
        path = env.mnt / name
        with open(path, "rb") as f:
            assert f.read() == data, name
        fd = os.open(path, os.O_RDONLY)
        try:
            for _ in range(40):
                off = rng.randrange(0, len(data) + 2)
                size = rng.choice([1, 100, 4096, 32 * KIB, 32 * KIB + 3, 200_000])
                assert os.pread(fd, size, off) == data[off:off + size], (name, off, size)
            off = 0  # and in order, in odd steps, as a program reading a stream does
            while off < len(data) + 1:
                step = rng.choice([1000, 4096, 50_000, 131_072])
                assert os.pread(fd, step, off) == data[off:off + step], (name, off, step)
                off += step
        finally:
            os.close(fd)


# -- raw sessions ----------------------------------------------------------------------------


def test_sequential_reads_are_answered_by_the_reader_with_the_same_bytes(env: Env) -> None:
    """32 KiB READs in order, eight in flight: every reply equals the file's bytes (a short
    one at the end, then EOF), and the reader, not asyncssh's handler, answered most."""
    committed(env)
    data = env.files[f"f{3 * (1 << 20) + 5}"]
    s = session(env)
    h = s.open(f"f{len(data)}")
    got = bytearray()
    offsets = list(range(0, len(data) + 64 * KIB, 32 * KIB))
    for i in range(0, len(offsets), 8):
        batch = [s.request(FXP_READ, string(h), u64(o), u32(32 * KIB)) for o in offsets[i:i + 8]]
        s.send_raw(b"".join(p for _, p in batch))
        for (rid, _), off in zip(batch, offsets[i:i + 8], strict=True):
            rtype, body = s.recv()
            assert body[:4] == u32(rid)  # replies in request order
            if off >= len(data):
                assert rtype == FXP_STATUS and body[4:8] == u32(FX_EOF)
            else:
                assert rtype == FXP_DATA
                got += body[8:]
    assert bytes(got) == data
    s.close(h)
    assert s.end() >= len(offsets) // 2


def test_eof_replies_are_asyncssh_s_own(env: Env) -> None:
    """A READ at or past the end gets the same bytes from the reader as from asyncssh's
    handler (a fresh handle read at the end goes to the handler: nothing is buffered)."""
    committed(env)
    for size in (100_000, READ_AHEAD + 1, (1 << 20) + 37):
        s = session(env)
        fresh = s.open(f"f{size}")
        slow = [s.read(fresh, size, 32 * KIB), s.read(fresh, size + 10, 32 * KIB)]
        h = s.open(f"f{size}")
        start = size - size % (32 * KIB) if size % (32 * KIB) else size - 32 * KIB
        start = max(0, start - 64 * KIB)
        for off in range(start, size, 32 * KIB):  # fills the buffer up to the end
            assert s.data(h, off, 32 * KIB) == env.files[f"f{size}"][off:off + 32 * KIB]
        fast = [s.read(h, size, 32 * KIB), s.read(h, size + 10, 32 * KIB)]
        assert fast == slow and slow[0][0] == FXP_STATUS and slow[0][1][:4] == u32(FX_EOF)
        s.close(h)
        s.close(fresh)
        s.end()


def test_handles_are_the_session_s_own_and_closed_ones_refused(env: Env) -> None:
    """A handle another session has open, and a handle closed here, get asyncssh's reply to
    a handle it never gave out, byte for byte, however much of the file the other session
    has buffered; a session's own handle with the same bytes reads its own file."""
    committed(env)
    a, b = session(env), None
    try:
        ha = a.open(f"f{1 << 20}")
        assert a.data(ha, 0, 32 * KIB) == env.files[f"f{1 << 20}"][:32 * KIB]  # buffered
        never = a.read(b"\xff\xfe\xfd\xfc", 32 * KIB, 32 * KIB)
        assert never[0] == FXP_STATUS and never[1][:4] == u32(FX_FAILURE)
        b = Raw(env)
        assert b.read(ha, 32 * KIB, 32 * KIB) == never
        hb = b.open("f100000")  # b's first handle: the same bytes as a's
        assert hb == ha
        assert b.data(hb, 32 * KIB, 32 * KIB) == env.files["f100000"][32 * KIB:64 * KIB]
        assert a.data(ha, 32 * KIB, 32 * KIB) == env.files[f"f{1 << 20}"][32 * KIB:64 * KIB]
        rtype, body = a.close(ha)
        assert rtype == FXP_STATUS and body[:4] == u32(0)
        assert a.read(ha, 64 * KIB, 32 * KIB) == never  # closed: buffered bytes or not
        assert b.close(hb)[1][:4] == u32(0)
    finally:
        a.end()
        if b is not None:
            b.stdin.close()
            b.p.wait(timeout=30)


def test_malformed_reads_get_asyncssh_s_errors(env: Env) -> None:
    """READs that are not exactly a READ's fields, on a handle whose buffer holds the bytes
    asked for: asyncssh's bad-message reply (never DATA), and the session goes on."""
    committed(env)
    s = session(env)
    data = env.files[f"f{1 << 20}"]
    h = s.open(f"f{1 << 20}")
    assert s.data(h, 0, 32 * KIB) == data[:32 * KIB]
    good = string(h) + u64(32 * KIB) + u32(32 * KIB)
    for fields in (good + b"x",  # a byte too many
                   good[:-1],  # a byte short
                   u32(len(h) + 100) + good[4:],  # the handle's length past the packet
                   b""):  # nothing at all
        rtype, body = s.call(FXP_READ, fields)
        assert rtype == FXP_STATUS and body[:4] == u32(FX_BAD_MESSAGE), (fields, body)
    assert s.data(h, 32 * KIB, 32 * KIB) == data[32 * KIB:64 * KIB]
    rid, p = s.request(FXP_READ, good)  # a READ split over two writes is still one READ
    s.send_raw(p[:10])
    time.sleep(0.2)
    s.send_raw(p[10:])
    rtype, body = s.recv()
    assert rtype == FXP_DATA and body[:4] == u32(rid) and body[8:] == data[32 * KIB:64 * KIB]
    s.close(h)
    assert s.end() >= 1


def test_replies_keep_request_order_and_see_earlier_writes(env: Env) -> None:
    """Pipelined: requests for the handler (FSTAT, STAT, a WRITE) between READs the buffer
    holds: replies come in request order, and a READ after a WRITE to bytes the buffer
    holds gets the written bytes."""
    committed(env)
    s = session(env)
    w = s.open("f100000", FXF_READ | FXF_WRITE)
    s.write(w, 0, env.files["f100000"][:32 * KIB])  # a no-op write, then a checkpoint
    committed(env)
    h = s.open("f100000")
    data = env.files["f100000"]
    assert s.data(h, 0, 32 * KIB) == data[:32 * KIB]
    new = os.urandom(32 * KIB)
    reqs = [
        s.request(FXP_READ, string(h), u64(32 * KIB), u32(32 * KIB)),
        s.request(FXP_FSTAT, string(h)),
        s.request(FXP_READ, string(h), u64(64 * KIB), u32(16 * KIB)),
        s.request(FXP_STAT, string(f"/{env.sid}/f100".encode())),
        s.request(FXP_WRITE, string(w), u64(32 * KIB), string(new)),
        s.request(FXP_READ, string(h), u64(32 * KIB), u32(32 * KIB)),
    ]
    s.send_raw(b"".join(p for _, p in reqs))
    replies = [s.recv() for _ in reqs]
    assert [body[:4] for _, body in replies] == [u32(rid) for rid, _ in reqs]
    assert [t for t, _ in replies] == [FXP_DATA, FXP_ATTRS, FXP_DATA, FXP_ATTRS, FXP_STATUS,
                                       FXP_DATA]
    assert replies[0][1][8:] == data[32 * KIB:64 * KIB]
    assert replies[2][1][8:] == data[64 * KIB:80 * KIB]
    assert replies[5][1][8:] == new
    s.write(w, 32 * KIB, data[32 * KIB:64 * KIB])  # as it was, for the other tests
    s.close(w)
    s.close(h)
    s.end()


def test_reads_racing_writes_never_get_replaced_bytes(env: Env) -> None:
    """Session B rewrites the file, generation after generation (every byte the
    generation's number), while session A reads it in order, again and again: every byte of
    a READ sent after B's write of generation g completed is at least g. Every eighth
    generation both pause until a checkpoint (a spawn is committed once no request has come
    for IDLE_CHECKPOINT, spawn.host), so that A's reads come from read-ahead buffers when B
    starts writing again."""
    committed(env)
    size = len(env.files["race"])
    a, b = session(env), Raw(env)
    done = [0]  # the last generation whose write completed
    quiet = threading.Event()  # B waits for a checkpoint: so does A
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            w = b.open("race", FXF_READ | FXF_WRITE)
            for g in range(1, 33):
                for off in range(0, size, 64 * KIB):
                    b.write(w, off, bytes([g]) * (64 * KIB))
                done[0] = g
                if g % 8 == 0:
                    quiet.set()
                    time.sleep(CHECKPOINT + 1.0)  # A reads from buffers for about a second
                    quiet.clear()
                else:
                    time.sleep(0.01)
            b.close(w)
        except BaseException as e:
            errors.append(e)
        finally:
            stop.set()

    t = threading.Thread(target=writer)
    t.start()
    reads = 0
    try:
        h = a.open("race")
        while not stop.is_set():
            if quiet.is_set():
                time.sleep(CHECKPOINT)
            for off in range(0, size, 32 * KIB):
                floor = done[0]
                got = a.data(h, off, 32 * KIB)
                reads += 1
                assert len(got) == 32 * KIB and min(got) >= floor, (off, floor, min(got))
        a.close(h)
    finally:
        stop.set()
        t.join(timeout=120)
        b.stdin.close()
        b.p.wait(timeout=30)
    assert not errors, errors
    assert reads > 100
    assert a.end() > 0  # some READs were answered from a buffer between the writes
    with open(env.mnt / "race", "rb") as f:
        assert f.read() == bytes([32]) * size


def test_contiguous_writes_are_joined_each_answered_in_order(env: Env) -> None:
    """WRITEs to one handle at contiguous offsets, pipelined: one OK reply each, in request
    order, and the file holds every byte; the reader joined them. A READ between them (the
    handler's) and a WRITE to another handle end a run."""
    s = session(env)
    h = s.open("joined", FXF_READ | FXF_WRITE | FXF_CREAT | FXF_TRUNC)
    other = s.open("joined2", FXF_READ | FXF_WRITE | FXF_CREAT | FXF_TRUNC)
    data = os.urandom(20 * 32 * KIB + 5)
    reqs = []
    for i, off in enumerate(range(0, len(data), 32 * KIB)):
        reqs.append(s.request(FXP_WRITE, string(h), u64(off), string(data[off:off + 32 * KIB])))
        if i == 9:
            reqs.append(s.request(FXP_READ, string(h), u64(0), u32(10)))
            reqs.append(s.request(FXP_WRITE, string(other), u64(0), string(b"o" * 100)))
    s.send_raw(b"".join(p for _, p in reqs))
    replies = [s.recv() for _ in reqs]
    assert [body[:4] for _, body in replies] == [u32(rid) for rid, _ in reqs]
    for (rtype, body), (_, p) in zip(replies, reqs, strict=True):
        if p[4] == FXP_WRITE:
            assert rtype == FXP_STATUS and body[4:] == u32(0) + u32(0) + u32(0)
        else:
            assert rtype == FXP_DATA and body[8:] == data[:10]
    got = bytearray()
    while len(got) < len(data):
        got += s.data(h, len(got), 32 * KIB)
    assert bytes(got) == data
    assert s.data(other, 0, 1000) == b"o" * 100
    s.close(h)
    s.close(other)
    s.end()
    joined = re.findall(r"(\d+) WRITEs joined", env.node.log.read_text())
    assert int(joined[-1]) >= 2


def test_a_joined_write_that_fails_gives_each_write_its_own_outcome(env: Env) -> None:
    """Two WRITEs whose second crosses the largest file size the engine allows: joined they
    would fail together; the first succeeds and the second fails, as one by one."""
    max_size = (1 << 44) - 4096  # spawn.engine.MAX_FILE_SIZE
    s = session(env)
    h = s.open("toolarge", FXF_READ | FXF_WRITE | FXF_CREAT | FXF_TRUNC)
    a = s.request(FXP_WRITE, string(h), u64(max_size - 8 * KIB), string(b"a" * 8 * KIB))
    b = s.request(FXP_WRITE, string(h), u64(max_size), string(b"b" * 8 * KIB))
    c = s.request(FXP_FSTAT, string(h))
    s.send_raw(a[1] + b[1] + c[1])
    ra, rb, rc = s.recv(), s.recv(), s.recv()
    assert ra == (FXP_STATUS, u32(a[0]) + u32(0) + u32(0) + u32(0))
    assert rb[0] == FXP_STATUS and rb[1][:4] == u32(b[0]) and rb[1][4:8] == u32(FX_FAILURE)
    assert rc[0] == FXP_ATTRS and struct.unpack(">I", rc[1][4:8])[0] & 1  # the size...
    assert struct.unpack(">Q", rc[1][8:16])[0] == max_size  # ...is the first write's end
    s.close(h)
    s.call(FXP_REMOVE, string(f"/{env.sid}/toolarge".encode()))
    s.end()


# -- what the reader needs of asyncssh -------------------------------------------------------


class _Source:
    """Requests to read: the given bytes, then the end of the stream."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, n: int = -1) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out


class _Out:
    """asyncssh's writer side: what the handler and the reader write, in order."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.channel = self

    def write(self, b: bytes) -> None:
        self.data += b

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    async def drain(self) -> None:
        pass

    def replies(self) -> list[tuple[int, bytes]]:
        out, pos = [], 0
        while pos < len(self.data):
            n = struct.unpack_from(">I", self.data, pos)[0]
            out.append((self.data[pos + 4], bytes(self.data[pos + 5:pos + 4 + n])))
            pos += 4 + n
        return out


def _run_handler(tmp_path: Path, table: bool) -> tuple[_Out, list[tuple[int, int, int]]]:
    """asyncssh's own SFTPServerHandler and stock SFTPServer (local files) behind the
    request reader: INIT, OPEN, two READs, CLOSE, a READ on the closed handle. The server's
    ``cached`` answers every READ it is asked with b"c" bytes (and notes it). Without
    *table* the handler is given no handle table where the reader looks."""
    import asyncio

    import asyncssh
    from asyncssh.logging import logger
    from asyncssh.sftp import SFTPServerHandler

    from grid.daemon.sftp_fast import RequestReader

    (tmp_path / "f").write_bytes(b"f" * 100)
    asked: list[tuple[int, int, int]] = []

    class Server(asyncssh.SFTPServer):
        def cached(self, file_obj: object, offset: int, size: int) -> bytes:
            asked.append((id(file_obj), offset, size))
            return b"c" * size

    h = b"\x00\x00\x00\x00"  # asyncssh's first handle
    reqs = (pkt(FXP_INIT, u32(3))
            + pkt(FXP_OPEN, u32(1), string(str(tmp_path / "f").encode()), u32(FXF_READ), u32(0))
            + pkt(FXP_READ, u32(2), string(h), u64(0), u32(10))
            + pkt(FXP_READ, u32(3), string(h), u64(10), u32(10))
            + pkt(FXP_CLOSE, u32(4), string(h))
            + pkt(FXP_READ, u32(5), string(h), u64(20), u32(10)))
    out = _Out()
    reader = RequestReader(_Source(reqs), out.write, out.drain, Server(None), logger)  # type: ignore[arg-type]
    handler = SFTPServerHandler(Server(None), reader, out, 3)  # type: ignore[arg-type]
    if table:
        reader.handler = handler
    else:
        class NoTable:  # an asyncssh that keeps its handles elsewhere
            pass

        reader.handler = NoTable()
    asyncio.run(handler.run())
    return out, asked


def test_the_reader_answers_reads_on_handles_in_asyncssh_s_table(tmp_path: Path) -> None:
    """Pins what the reader needs of asyncssh (SFTPServerHandler._file_handles, not a public
    API): a handle enters the table with the OPEN's reply and leaves it with the CLOSE, and
    the handler asks for each packet's length at the packet's start. If an asyncssh upgrade
    changes this, this test fails (and without the table the reader answers nothing: next
    test)."""
    out, asked = _run_handler(tmp_path, table=True)
    replies = out.replies()
    assert [t for t, _ in replies] == [2, FXP_HANDLE, FXP_DATA, FXP_DATA, FXP_STATUS,
                                       FXP_STATUS]
    assert [offset for _, offset, _ in asked] == [0, 10]  # the two READs, by the reader
    assert replies[2][1] == u32(2) + string(b"c" * 10)
    assert replies[3][1] == u32(3) + string(b"c" * 10)
    assert replies[4][1][4:8] == u32(0)  # CLOSE: ok
    assert replies[5][1][:8] == u32(5) + u32(FX_FAILURE)  # the closed handle: asyncssh's
    assert b"Invalid file handle" in replies[5][1]


def test_without_asyncssh_s_table_every_read_goes_to_the_handler(tmp_path: Path) -> None:
    out, asked = _run_handler(tmp_path, table=False)
    replies = out.replies()
    assert asked == []
    assert replies[2][1] == u32(2) + string(b"f" * 10)  # the stock server read the file
    assert replies[3][1] == u32(3) + string(b"f" * 10)
    assert replies[5][1][:8] == u32(5) + u32(FX_FAILURE)
