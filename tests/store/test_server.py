"""The block server and RemoteStore over real sockets (Unix, TCP, TLS).

The server runs on its own event loop in a background thread (tests/store/remote_helpers.py),
so these tests drive it exactly as a node's clients would: blocking calls from threads.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
import threading
import time

import pytest

from store.block import MAX_BLOCK_SIZE, Block, BlockType, encode_refs
from store.client import ConnectError, ReadOnlyRemote, RemoteStore
from store.errors import (
    BadScore,
    BlockNotFound,
    CorruptBlock,
    InvalidBlock,
    MissingReference,
    ProtocolError,
    RemoteError,
    StoreClosed,
)
from store.memory import MemoryStore
from store.score import score_of
from store.server import BlockServer
from store.wire import (
    MAX_FRAME_SIZE,
    NOTAG,
    Connection,
    ErrorCode,
    FrameBuffer,
    Message,
    MsgType,
    RemoteProtocolError,
    Rerror,
    Rhello,
    Role,
    Rread,
    Tgoodbye,
    Thas,
    Thello,
    Tping,
    Tread,
    Tstat,
    Tsync,
    Twrite,
    decode,
    encode,
)
from tests.store.remote_helpers import TlsMaterial, connect, start_server, start_server_thread


class GatedStore(MemoryStore):
    """A memory store whose reads can be held at a gate, counting concurrent reads."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.gate = threading.Event()
        self.gate.set()
        self.gated: set[bytes] = set()
        self.entered = threading.Semaphore(0)
        self._lock2 = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.delay = 0.0

    def get(self, score: bytes) -> Block:
        with self._lock2:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.entered.release()
            if bytes(score) in self.gated:
                self.gate.wait(10)
            if self.delay:
                time.sleep(self.delay)
            return super().get(score)
        finally:
            with self._lock2:
                self.active -= 1


@pytest.fixture(params=["unix", "tcp"])
def kind(request):
    return request.param


@pytest.fixture
def served(kind, tmp_path):
    store = GatedStore()
    address, st = start_server_thread(store, kind, tmp_path, node="node1")
    yield store, address, st
    store.gate.set()
    st.stop()


@pytest.fixture
def client(served):
    _, address, _ = served
    c = connect(address)
    yield c
    c.close()


# -- raw-socket helpers (a client that speaks the codec by hand) ------------------------------


class RawClient:
    def __init__(self, address, hello: bool = True) -> None:
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(address)
        else:
            self.sock = socket.create_connection(address)
        self.sock.settimeout(5)
        self.conn = Connection(Role.CLIENT)
        if hello:
            self.send(Thello(tag=0))
            assert isinstance(self.recv(), Rhello)

    def send(self, *msgs: Message) -> None:
        self.sock.sendall(b"".join(self.conn.send(m) for m in msgs))

    def recv(self) -> Message | None:
        while (m := self.conn.next_message()) is None:
            if self.conn.eof:
                return None
            self.conn.receive_data(self.sock.recv(1 << 16))
        return m

    def close(self) -> None:
        self.sock.close()


def read_to_eof(sock: socket.socket, limit: float = 5.0) -> bytes:
    sock.settimeout(limit)
    chunks = []
    while True:
        b = sock.recv(1 << 16)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


# -- basics -----------------------------------------------------------------------------------


def test_hello_names_node_and_identity(served, client, kind):
    assert client.node == "node1"
    assert client.server_version == "grid-block/1"
    expected = f"uid:{os.getuid()}" if kind == "unix" else ""
    assert client.identity == expected
    client.ping()


def test_round_trip_and_verification(served, client):
    data = os.urandom(5000)
    s = client.put(BlockType.DATA, data)
    assert s == score_of(BlockType.DATA, data)
    assert client.get(s) == Block(BlockType.DATA, data)
    assert client.has(s) and served[0].has(s)
    big = os.urandom(MAX_BLOCK_SIZE)
    assert client.get(client.put(BlockType.DATA, big)).data == big
    client.sync()
    assert client.connection_statistics().verified_reads == 2


def test_errors_map_back_to_store_exceptions(served, client):
    store, _, st = served
    ghost = score_of(BlockType.DATA, b"ghost")
    with pytest.raises(BlockNotFound) as ei:
        client.get(ghost)
    assert ei.value.score == ghost
    with pytest.raises(MissingReference) as ei2:
        client.put(BlockType.POINTER, encode_refs([ghost], b"x"))
    assert ei2.value.missing == [ghost]
    with pytest.raises(InvalidBlock):
        client.put(BlockType.DIR, b"\x00\x00")  # the server's check: malformed refs
    with pytest.raises(BadScore):
        client.get(b"short")
    s = client.put(BlockType.DATA, b"will rot")
    store.corrupt(s, b"rotten")
    with pytest.raises(CorruptBlock, match="fails verification"):
        client.get(s)  # the server's own store catches it
    assert client.get(client.put(BlockType.DATA, b"fine")).data == b"fine"  # still usable
    assert st.server.statistics().errors == 4  # not found, missing ref, invalid, corrupt
    assert client.connection_statistics().errors == 4


def test_client_verifies_what_the_server_sends(tmp_path):
    store = MemoryStore(verify=False)  # a server that would pass rot along
    address, stop = start_server(store, "unix", tmp_path)
    try:
        with connect(address) as c:
            s = c.put(BlockType.DATA, b"original")
            store.corrupt(s, b"tampered")
            with pytest.raises(CorruptBlock) as ei:
                c.get(s)
            assert ei.value.score == s
            assert f"remote unix:{address}" in str(ei.value)
            with pytest.raises(CorruptBlock):
                c.get_many([s])
    finally:
        stop()


def test_unknown_block_type_write_answered_invalid(served):
    _, address, _ = served
    raw = RawClient(address)
    raw.send(Twrite(tag=1, btype=99, data=b"x"))
    reply = raw.recv()
    assert isinstance(reply, Rerror) and reply.code is ErrorCode.INVALID_BLOCK
    raw.send(Tping(tag=2))
    assert raw.recv().TYPE is MsgType.RPING  # the connection survives a refused request
    raw.close()


def test_statistics_both_sides(served, client):
    store, _, st = served
    client.put_many([(BlockType.DATA, bytes([i]) * 10) for i in range(5)])
    stats = client.statistics()
    assert stats.blocks == 5 and stats.logical_bytes == 50 and stats.puts == 5
    assert client.position() == store.position() == 5
    cs = client.connection_statistics()
    assert cs.requests >= 7 and cs.bytes_sent > 50 and cs.outstanding == 0
    ss = st.server.statistics()
    assert ss.connections >= 1 and ss.open_connections >= 1
    assert ss.requests >= 8 and ss.bytes_in >= cs.bytes_sent - 20 and ss.bytes_out > 0


# -- pipelining -------------------------------------------------------------------------------


def test_many_threads_share_one_connection(served, client):
    store = served[0]
    blocks = [(BlockType.DATA, os.urandom(64 + i)) for i in range(300)]
    scores = client.put_many(blocks)
    store.delay = 0.001
    errors: list[BaseException] = []

    def reader(k: int) -> None:
        try:
            rng = random.Random(k)
            for _ in range(5):
                idx = rng.sample(range(len(blocks)), 40)
                got = client.get_many([scores[i] for i in idx])
                assert [(b.type, b.data) for b in got] == [blocks[i] for i in idx]
                i = rng.randrange(len(blocks))
                assert client.get(scores[i]).data == blocks[i][1]
                assert client.missing([scores[i], b"\x01" * 32]) == [b"\x01" * 32]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors
    assert store.max_active > 1  # the server answered pipelined reads concurrently
    assert client.connection_statistics().outstanding == 0


def test_replies_come_back_out_of_order(served):
    store, address, _ = served
    slow = store.put(BlockType.DATA, b"slow")
    fast = store.put(BlockType.DATA, b"fast")
    store.gated.add(slow)
    store.gate.clear()
    raw = RawClient(address)
    raw.send(Tread(tag=10, score=slow), Tread(tag=11, score=fast), Tping(tag=12))
    first, second = raw.recv(), raw.recv()
    assert {first.tag, second.tag} == {11, 12}
    assert next(m for m in (first, second) if m.tag == 11) == Rread(tag=11, btype=1, data=b"fast")
    store.gate.set()
    assert raw.recv() == Rread(tag=10, btype=1, data=b"slow")
    raw.close()


def test_outstanding_requests_are_bounded(tmp_path):
    store = GatedStore()
    s = store.put(BlockType.DATA, b"held")
    store.gated.add(s)
    store.gate.clear()
    address, st = start_server_thread(store, "unix", tmp_path, max_outstanding=3)
    try:
        raw = RawClient(address)
        raw.send(*[Tread(tag=t, score=s) for t in range(1, 9)])
        for _ in range(3):
            assert store.entered.acquire(timeout=5)
        time.sleep(0.2)
        assert store.max_active == 3  # the fourth waits until a slot frees
        raw.send(Tping(tag=100))  # not even a ping is read past the bound
        store.gate.set()
        tags = {raw.recv().tag for _ in range(9)}
        assert tags == {*range(1, 9), 100}
        raw.close()
    finally:
        store.gate.set()
        st.stop()


def test_pipelined_writes_keep_closure_order(served, client):
    leaves = [(BlockType.DATA, os.urandom(200)) for _ in range(200)]
    scores = [score_of(t, d) for t, d in leaves]
    ptr = (BlockType.POINTER, encode_refs(scores, b"body"))
    root = (BlockType.ROOT, encode_refs([score_of(*ptr)], b"root"))
    out = client.put_many([*leaves, ptr, root])
    assert out[-1] == score_of(*root)
    client.sync()
    assert client.missing(scores + out[-2:]) == []


def test_put_many_reports_the_first_error_after_settling(served, client):
    ghost = score_of(BlockType.DATA, b"ghost")
    blocks = [
        (BlockType.DATA, b"a"),
        (BlockType.POINTER, encode_refs([ghost])),
        (BlockType.DATA, b"b"),
    ]
    with pytest.raises(MissingReference):
        client.put_many(blocks)
    assert client.connection_statistics().outstanding == 0
    assert client.has(score_of(BlockType.DATA, b"a"))


def test_missing_batches_beyond_the_has_limit(served, client):
    present = client.put_many([(BlockType.DATA, i.to_bytes(4, "big")) for i in range(50)])
    absent = [score_of(BlockType.DATA, b"x" + i.to_bytes(4, "big")) for i in range(9000)]
    mixed = absent[:4500] + present + absent[4500:]
    assert client.missing(mixed) == absent


# -- read-only, goodbye, version ----------------------------------------------------------------


def test_read_only_server_refuses_writes(tmp_path, kind):
    store = MemoryStore()
    s = store.put(BlockType.DATA, b"exists")
    address, stop = start_server(store, kind, tmp_path, read_only=True)
    try:
        with connect(address) as c:
            with pytest.raises(ReadOnlyRemote, match="read-only"):
                c.put(BlockType.DATA, b"new")
            with pytest.raises(ReadOnlyRemote):
                c.put_many([(BlockType.DATA, b"n1"), (BlockType.DATA, b"n2")])
            assert c.get(s).data == b"exists"
            assert c.has(s)
            c.sync()
            assert c.statistics().blocks == 1
        assert store.statistics().blocks == 1
    finally:
        stop()


def test_goodbye_answers_outstanding_then_closes(served):
    store, address, _ = served
    s = store.put(BlockType.DATA, b"bye")
    raw = RawClient(address)
    raw.send(Tread(tag=1, score=s), Tsync(tag=2), Tgoodbye(tag=3))
    tags = {raw.recv().tag, raw.recv().tag}
    assert tags == {1, 2}
    assert raw.recv() is None  # EOF
    raw.close()


def test_unsupported_version_refused(served):
    _, address, _ = served
    raw = RawClient(address, hello=False)
    raw.send(Thello(tag=0, version="grid-block/99"))
    reply = raw.recv()
    assert isinstance(reply, Rerror) and reply.code is ErrorCode.BAD_REQUEST
    assert "grid-block/1" in reply.message
    assert raw.recv() is None
    raw.close()


def test_close_is_idempotent_and_final(served):
    _, address, _ = served
    c = connect(address)
    c.close()
    c.close()
    assert c.closed
    with pytest.raises(StoreClosed):
        c.get(b"\x00" * 32)
    with pytest.raises(StoreClosed):
        c.put(BlockType.DATA, b"x")


# -- hostile input: the server survives, other connections are unaffected ---------------------


def test_oversize_frame_closes_only_that_connection(served, client):
    _, address, st = served
    s = client.put(BlockType.DATA, b"keep")
    raw = RawClient(address)
    raw.sock.sendall(struct.pack(">IBI", MAX_FRAME_SIZE + 1, MsgType.TWRITE, 5))
    reply = raw.recv()
    assert isinstance(reply, Rerror) and reply.tag == NOTAG
    assert reply.code is ErrorCode.BAD_REQUEST and "exceeds" in reply.message
    assert raw.recv() is None
    raw.close()
    assert client.get(s).data == b"keep"
    assert st.server.statistics().protocol_errors == 1


def test_garbage_gets_an_rerror_with_the_offending_tag(served):
    _, address, _ = served
    raw = RawClient(address)
    raw.sock.sendall(struct.pack(">IBI", 5, 99, 1234))
    reply = raw.recv()
    assert isinstance(reply, Rerror) and reply.tag == 1234
    assert "unknown message type 99" in reply.message
    assert raw.recv() is None
    raw.close()


def _fuzz_frames(rng: random.Random) -> bytes:
    s = bytes(rng.getrandbits(8) for _ in range(32))
    samples = [
        Tping(tag=rng.getrandbits(32) - 1),
        Tread(tag=1, score=s),
        Twrite(tag=2, btype=rng.choice([1, 2, 3, 0, 200]), data=rng.randbytes(rng.randrange(60))),
        Thas(tag=3, scores=(s,) * rng.randrange(4)),
        Tsync(tag=4),
        Tstat(tag=5),
        Thello(tag=6, name="fuzz"),
        Tgoodbye(tag=7),
    ]
    choice = rng.randrange(6)
    if choice == 0:  # pure noise
        return rng.randbytes(rng.randrange(1, 64))
    if choice == 1:  # a valid header with a random type and body
        body = rng.randbytes(rng.randrange(0, 80))
        return struct.pack(">IBI", 5 + len(body), rng.randrange(256), rng.getrandbits(32)) + body
    frame = bytearray(encode(rng.choice(samples)))
    if choice == 2:  # flipped bytes
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
    elif choice == 3:  # truncated
        frame = frame[: rng.randrange(len(frame))]
    elif choice == 4:  # a lying size field
        frame[:4] = struct.pack(">I", rng.choice([0, 3, 4, MAX_FRAME_SIZE + 1, 2**32 - 1]))
    # choice 5: a valid frame, possibly out of place (before hello, a second hello...)
    return bytes(frame)


def test_fuzz_over_real_connections(tmp_path):
    store = MemoryStore()
    keep = store.put(BlockType.DATA, b"survivor")
    address, st = start_server_thread(store, "unix", tmp_path)
    hello = encode(Thello(tag=0))
    failures: list[str] = []
    per_thread, threads = 500, 4

    def fuzzer(seed: int) -> None:
        rng = random.Random(seed)
        for i in range(per_thread):
            payload = _fuzz_frames(rng)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(address)
                sock.sendall((hello if rng.random() < 0.7 else b"") + payload)
                sock.shutdown(socket.SHUT_WR)
                out = read_to_eof(sock)
                fb = FrameBuffer()  # whatever the server said must be well-formed
                fb.feed(out)
                while (f := fb.next_frame()) is not None:
                    assert decode(*f).TYPE.value % 2 == 1
                assert len(fb) == 0
            except (TimeoutError, AssertionError, RemoteProtocolError) as e:
                failures.append(f"seed {seed} #{i} {payload.hex()}: {e!r}")
            except (ConnectionResetError, BrokenPipeError):
                pass  # the server closed first: fine
            finally:
                sock.close()

    try:
        workers = [threading.Thread(target=fuzzer, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert not failures, failures[:5]
        stats = st.server.statistics()
        assert stats.connections == per_thread * threads
        assert stats.protocol_errors > per_thread  # most frames were refused
        with connect(address) as c:  # and a fresh client is served correctly
            assert c.get(keep).data == b"survivor"
            s = c.put(BlockType.DATA, b"after the storm")
            assert c.get(s).data == b"after the storm"
        deadline = time.monotonic() + 5
        while st.server.statistics().open_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert st.server.statistics().open_connections == 0
    finally:
        st.stop()


# -- failures reach every caller ---------------------------------------------------------------


def _fake_server(tmp_path, behaviour):
    """A one-shot Unix server run by *behaviour(conn_socket)* in a thread."""
    path = str(tmp_path / "fake.sock") if len(str(tmp_path)) < 90 else None
    if path is None:
        import tempfile

        path = os.path.join(tempfile.mkdtemp(prefix="grid-fake-"), "fake.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def run():
        conn, _ = listener.accept()
        try:
            behaviour(conn)
        finally:
            conn.close()
            listener.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return path, t


def _answer_hello(sock: socket.socket) -> Connection:
    conn = Connection(Role.SERVER)
    while (m := conn.next_message()) is None:
        conn.receive_data(sock.recv(4096))
    sock.sendall(conn.send(Rhello(tag=m.tag, node="fake")))
    return conn


def test_server_dying_mid_request_fails_every_waiter(tmp_path):
    got_requests = threading.Event()

    def behaviour(sock):
        conn = _answer_hello(sock)
        n = 0
        while n < 3:
            conn.receive_data(sock.recv(4096))
            while conn.next_message() is not None:
                n += 1
        got_requests.set()
        time.sleep(0.1)  # ...and die without answering

    path, t = _fake_server(tmp_path, behaviour)
    c = RemoteStore.connect_unix(path, timeout=10)
    errors: list[BaseException] = []

    def waiter():
        try:
            c.get(b"\x07" * 32)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    start = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(5)
    assert got_requests.is_set()
    assert time.monotonic() - start < 5
    assert len(errors) == 3 and all(isinstance(e, StoreClosed) for e in errors)
    assert "closed by the server" in str(errors[0])
    with pytest.raises(StoreClosed):  # later calls fail at once
        c.ping()
    c.close()
    t.join(5)


def test_server_sending_garbage_fails_waiters_with_protocol_error(tmp_path):
    def behaviour(sock):
        _answer_hello(sock)
        sock.recv(4096)
        sock.sendall(struct.pack(">IBI", 5, 77, 0))

    path, t = _fake_server(tmp_path, behaviour)
    c = RemoteStore.connect_unix(path, timeout=10)
    with pytest.raises(ProtocolError, match="unknown message type 77"):
        c.ping()
    c.close()
    t.join(5)


def test_stopping_the_real_server_mid_request(tmp_path, kind):
    store = GatedStore()
    s = store.put(BlockType.DATA, b"never answered")
    store.gated.add(s)
    store.gate.clear()
    address, stop = start_server(store, kind, tmp_path)
    c = connect(address)
    result: list[BaseException] = []

    def waiter() -> None:
        try:
            c.get(s)
        except BaseException as e:
            result.append(e)

    th = threading.Thread(target=waiter)
    th.start()
    assert store.entered.acquire(timeout=5)

    def release_when_the_client_has_its_error() -> None:
        th.join(5)
        store.gate.set()

    opener = threading.Thread(target=release_when_the_client_has_its_error)
    opener.start()
    stop()  # drops the connection at once, then waits for the store call in flight
    assert store.active == 0  # so the store may be closed now
    opener.join(5)
    assert not th.is_alive()
    assert len(result) == 1 and isinstance(result[0], StoreClosed), result
    c.close()


def test_connect_errors_are_clear(tmp_path):
    with pytest.raises(ConnectError, match="cannot connect"):
        RemoteStore.connect_unix(str(tmp_path / "nobody.sock"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(ConnectError, match="cannot connect"):
        RemoteStore.connect_tcp("127.0.0.1", port)


def test_hello_timeout_when_the_server_says_nothing(tmp_path):
    done = threading.Event()
    path, t = _fake_server(tmp_path, lambda sock: done.wait(5))
    with pytest.raises(ConnectError):
        RemoteStore.connect_unix(path, connect_timeout=0.3)
    done.set()
    t.join(5)


def test_request_timeout(served):
    store, address, _ = served
    s = store.put(BlockType.DATA, b"slow")
    store.gated.add(s)
    store.gate.clear()
    with connect(address, timeout=0.3) as c:
        with pytest.raises(RemoteError, match="no reply"):
            c.get(s)
        store.gate.set()
        c.ping()  # the connection is still usable


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return TlsMaterial(tmp_path_factory.mktemp("tls"))


def test_mutual_tls_identity_and_traffic(tls, tmp_path):
    store = MemoryStore()
    address, stop = start_server(store, "tcp", tmp_path, ssl_server_context=tls.server_context())
    try:
        with connect(address, ssl_client_context=tls.client_context("alice")) as c:
            assert c.identity == "alice"
            big = os.urandom(MAX_BLOCK_SIZE)
            s = c.put(BlockType.DATA, big)
            errors = []

            def worker(k):
                try:
                    for i in range(20):
                        d = f"{k}/{i}".encode() * 100
                        assert c.get(c.put(BlockType.DATA, d)).data == d
                    assert c.get(s).data == big
                except BaseException as e:
                    errors.append(e)

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(20)
            assert not errors
        with connect(address, ssl_client_context=tls.client_context("bob")) as c2:
            assert c2.identity == "bob"
    finally:
        stop()


def test_helper_tls_kind_for_the_contract_suite(tmp_path):
    address, stop = start_server(MemoryStore(), "tls", tmp_path)
    try:
        with connect(address) as c:
            assert c.identity == "contract"
            assert c.get(c.put(BlockType.DATA, b"tls")).data == b"tls"
    finally:
        stop()


def test_tls_refuses_clients_without_a_grid_certificate(tls, tmp_path):
    store = MemoryStore()
    address, stop = start_server(store, "tcp", tmp_path, ssl_server_context=tls.server_context())
    try:
        with pytest.raises(ConnectError):
            connect(address, ssl_client_context=tls.client_context(None))
        with pytest.raises(ConnectError):
            connect(address, ssl_client_context=tls.stranger_context())
        with pytest.raises(ConnectError):  # plain TCP to a TLS port
            connect(address)
        with connect(address, ssl_client_context=tls.client_context("alice")) as c:
            c.ping()  # the server is unaffected
    finally:
        stop()


def test_tls_optional_client_cert_gives_empty_identity(tls, tmp_path):
    ctx = tls.server_context(require_client_cert=False)
    address, stop = start_server(MemoryStore(), "tcp", tmp_path, ssl_server_context=ctx)
    try:
        with connect(address, ssl_client_context=tls.client_context(None)) as c:
            assert c.identity == ""
    finally:
        stop()


# -- odds and ends -------------------------------------------------------------------------------


def test_custom_identity_callback(tmp_path):
    address, stop = start_server(MemoryStore(), "unix", tmp_path, identity=lambda t: "carol")
    try:
        with connect(address) as c:
            assert c.identity == "carol"
    finally:
        stop()


def test_failing_identity_callback_closes_only_that_connection(tmp_path):
    calls = []

    def identity(transport):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no idea who this is")
        return "dave"

    address, stop = start_server(MemoryStore(), "unix", tmp_path, identity=identity)
    try:
        with pytest.raises(ConnectError):
            connect(address)
        with connect(address) as c:
            assert c.identity == "dave"
    finally:
        stop()


def test_log_lines_carry_the_connection(served, caplog):
    _, address, _ = served
    with caplog.at_level(logging.INFO, logger="store.server"):
        with connect(address, name="logtest") as c:
            c.ping()
        deadline = time.monotonic() + 5
        while not any("closed" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if r.name == "store.server"]
    assert any(line.startswith("conn=") and "logtest" in line for line in lines)
    assert all(line.startswith("conn=") for line in lines if "hello" in line)


def test_stale_socket_is_replaced_and_live_one_refused():
    import asyncio
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="grid-stale-")
    path = os.path.join(directory, "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # leaves the file behind, nobody listening

    async def scenario():
        a = BlockServer(MemoryStore())
        await a.start_unix(path)  # replaces the stale file
        b = BlockServer(MemoryStore())
        try:
            with pytest.raises(OSError, match="another server"):
                await b.start_unix(path)
            c = await asyncio.to_thread(RemoteStore.connect_unix, path)
            await asyncio.to_thread(c.ping)
            await asyncio.to_thread(c.close)
        finally:
            await b.close()
            await a.close()
        assert not os.path.exists(path)

    try:
        asyncio.run(scenario())
        open(path, "w").close()
        with pytest.raises(FileExistsError):
            asyncio.run(BlockServer(MemoryStore()).start_unix(path))
    finally:
        shutil.rmtree(directory)
