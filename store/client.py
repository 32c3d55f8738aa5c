"""RemoteStore: a BlockStore on the other end of a block-protocol connection.

The BlockStore interface is synchronous by design (store.base), so this client is blocking
and thread-safe rather than async. Shape, and why:

- **One connection, many threads.** A writer lock serialises frames onto the socket; a
  background reader thread parses replies with the sans-IO codec (store.wire) and completes
  one ``concurrent.futures.Future`` per tag. Callers in several threads share the
  connection, and ``get_many``/``put_many``/``missing`` send every request before waiting
  for the first reply, so a batch costs one round trip, not one per block.
- **Never trust the wire.** Every block read is verified against the score asked for
  (invariant 1) and a mismatch is CorruptBlock naming ``remote <address>``. ``put`` computes
  the score locally and checks the server's answer matches; the server runs the closure
  check (invariant 2) and its refusal comes back as MissingReference.
- **Failure reaches everyone.** When the connection closes or breaks, or the server sends
  garbage, every waiting caller gets StoreClosed (or ProtocolError/RemoteError) at once and
  later calls fail the same way: nothing waits forever.
- **TLS through memory BIOs.** An ``ssl.SSLSocket`` must not be read in one thread while
  another writes to it (OpenSSL objects are not safe for that), so TLS runs on an
  ``ssl.SSLObject`` with a lock around each record operation; the raw socket's reads and
  writes then proceed independently, as for a plain socket.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from store.base import BlockStore, StoreStats
from store.block import Block, BlockType, check_size, check_type
from store.errors import (
    BadScore,
    BlockNotFound,
    CorruptBlock,
    InvalidBlock,
    MissingReference,
    ProtocolError,
    RemoteError,
    StoreClosed,
    StoreError,
)
from store.score import SCORE_SIZE, Score, format_score, score_of
from store.wire import (
    MAX_HAS,
    PROTOCOL_VERSION,
    STAT_FIELDS,
    Connection,
    ErrorCode,
    Message,
    RemoteProtocolError,
    Rerror,
    Rhas,
    Rhello,
    Role,
    Rping,
    Rread,
    Rstat,
    Rsync,
    Rwrite,
    Tgoodbye,
    Thas,
    Thello,
    Tping,
    Tread,
    Tstat,
    Tsync,
    Twrite,
)

RECV_SIZE = 1 << 18
SEND_BATCH = 1 << 20  # bytes of frames per socket write when pipelining
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 120.0
TAG_LIMIT = 0xFFFFFFFF  # request tags run 0 .. 2**32-2; 2**32-1 is NOTAG

M = TypeVar("M", bound=Message)


class ConnectError(RemoteError):
    """Could not connect, finish the TLS handshake, or agree on the protocol."""


class RemoteRequestError(RemoteError):
    """The server refused a request for a reason with no store exception of its own."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class ReadOnlyRemote(RemoteRequestError):
    """A write to a server that serves its store read-only."""


@dataclass(frozen=True, slots=True)
class RemoteStats:
    """This client's own counters (``statistics()`` describes the remote store)."""

    requests: int
    errors: int  # requests answered with Rerror
    bytes_sent: int
    bytes_received: int
    outstanding: int
    verified_reads: int


# -- transports: a plain socket, or TLS through memory BIOs ---------------------------------


class _Plain:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes:
        return self.sock.recv(RECV_SIZE)

    def send_nowait(self, data: bytes) -> None:
        self.sock.send(data, socket.MSG_DONTWAIT)

    def shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


class _Tls(_Plain):
    """TLS on an SSLObject: record operations under a lock, socket I/O outside it.

    ``sendall`` is only called under the client's writer lock, so records leave in the
    order they were sealed; ``recv`` only from the reader thread (or during the handshake
    and hello, before the reader exists).
    """

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, hostname: str | None) -> None:
        super().__init__(sock)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=False, server_hostname=hostname)
        self._lock = threading.Lock()

    def handshake(self) -> None:
        while True:
            try:
                with self._lock:
                    self._obj.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()

    def _flush(self) -> None:
        with self._lock:
            out = self._out.read()
        if out:
            self.sock.sendall(out)

    def _fill(self) -> None:
        raw = self.sock.recv(RECV_SIZE)
        with self._lock:
            if raw:
                self._in.write(raw)
            else:
                self._in.write_eof()

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        with self._lock:
            while view:
                n = self._obj.write(view)
                view = view[n:]
            out = self._out.read()
        self.sock.sendall(out)

    def send_nowait(self, data: bytes) -> None:
        with self._lock:
            self._obj.write(data)
            out = self._out.read()
        self.sock.send(out, socket.MSG_DONTWAIT)

    def recv(self) -> bytes:
        while True:
            try:
                with self._lock:
                    return self._obj.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""


# -- the client --------------------------------------------------------------------------------


class RemoteStore(BlockStore):
    """A BlockStore served by a BlockServer; make one with connect_unix or connect_tcp.

    Arguments (of the constructors):
        name: how this client introduces itself in Thello (for the server's logs only;
            identity comes from the transport).
        connect_timeout: seconds for connecting, the TLS handshake and the hello.
        timeout: seconds to wait for any one reply (None: forever) before RemoteError.

    After the hello, ``node`` is the server's node name and ``identity`` who the server
    authenticated this client as ("" when the transport proves nothing).
    """

    def __init__(
        self,
        transport: _Plain,
        address: str,
        *,
        name: str = "",
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self.address = address
        self._t = transport
        self._timeout = timeout
        self._conn = Connection(Role.CLIENT)
        self._state = threading.Lock()  # the codec, the futures, tags, failure, counters
        self._wlock = threading.Lock()  # whole frames onto the socket, in order
        self._futures: dict[int, Future[Message]] = {}
        self._tag = 0
        self._failure: tuple[type[StoreError], str] | None = None
        self._closed = False
        self._requests = self._errors = self._verified = 0
        self._sent = self._received = 0
        hello = self._hello(name, connect_timeout)
        self.server_version = hello.version
        self.node = hello.node
        self.identity = hello.identity
        transport.sock.settimeout(None)
        self._reader = threading.Thread(
            target=self._read_loop, name=f"RemoteStore reader {address}", daemon=True
        )
        self._reader.start()

    @classmethod
    def connect_unix(
        cls,
        path: str,
        *,
        name: str = "",
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> RemoteStore:
        """Connect to a server's Unix socket (it learns our uid from the kernel)."""
        address = f"unix:{path}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(connect_timeout)
            sock.connect(str(path))
            return cls(
                _Plain(sock), address, name=name, connect_timeout=connect_timeout, timeout=timeout
            )
        except OSError as e:
            sock.close()
            raise ConnectError(f"cannot connect to {address}: {e}") from e
        except BaseException:
            sock.close()
            raise

    @classmethod
    def connect_tcp(
        cls,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        *,
        name: str = "",
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> RemoteStore:
        """Connect over TCP; with *ssl_context*, over TLS.

        For mutual TLS load a client certificate into *ssl_context*; the server's
        certificate is checked against *server_hostname* (default: *host*).
        """
        address = f"{host}:{port}" + (" (tls)" if ssl_context else "")
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as e:
            raise ConnectError(f"cannot connect to {address}: {e}") from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport: _Plain = _Plain(sock)
            if ssl_context is not None:
                tls = _Tls(sock, ssl_context, server_hostname or host)
                tls.handshake()
                transport = tls
            return cls(
                transport, address, name=name, connect_timeout=connect_timeout, timeout=timeout
            )
        except OSError as e:  # ssl.SSLError is an OSError
            sock.close()
            raise ConnectError(f"cannot connect to {address}: {e}") from e
        except BaseException:
            sock.close()
            raise

    def __repr__(self) -> str:
        return f"<RemoteStore {self.address} node={self.node!r} identity={self.identity!r}>"

    # -- connection machinery -----------------------------------------------------------------

    def _hello(self, name: str, timeout: float | None) -> Rhello:
        """Thello/Rhello in the calling thread, before the reader thread exists."""
        try:
            self._t.sock.settimeout(timeout)
            data = self._conn.send(Thello(tag=0, name=name))
            self._t.sendall(data)
            self._sent += len(data)
            while (msg := self._conn.next_message()) is None:
                if self._conn.eof:
                    raise ConnectError(f"{self.address} closed the connection during hello")
                raw = self._t.recv()
                self._received += len(raw)
                self._conn.receive_data(raw)
        except RemoteProtocolError as e:
            raise ConnectError(f"{self.address} answered hello with garbage: {e}") from e
        except OSError as e:
            raise ConnectError(f"cannot connect to {self.address}: {e}") from e
        if isinstance(msg, Rerror):
            raise ConnectError(f"{self.address} refused the connection: {msg.message}")
        if not isinstance(msg, Rhello):
            raise ConnectError(f"{self.address} answered hello with {msg.TYPE.name}")
        if msg.version != PROTOCOL_VERSION:
            raise ConnectError(
                f"{self.address} speaks {msg.version!r}, this client {PROTOCOL_VERSION!r}"
            )
        return msg

    def _read_loop(self) -> None:
        try:
            while True:
                data = self._t.recv()
                done: list[tuple[Future[Message], Message]] = []
                conn_error: Rerror | None = None
                with self._state:
                    self._received += len(data)
                    self._conn.receive_data(data)
                    while (msg := self._conn.next_message()) is not None:
                        fut = self._futures.pop(msg.tag, None)
                        if fut is None:  # an Rerror about the whole connection
                            assert isinstance(msg, Rerror)
                            conn_error = msg
                            break
                        done.append((fut, msg))
                for fut, msg in done:
                    if not fut.done():
                        fut.set_result(msg)
                if conn_error is not None:
                    why = f"{self.address} dropped the connection: {conn_error.message}"
                    self._fail(RemoteError, why)
                    return
                if not data:
                    self._fail(StoreClosed, f"connection to {self.address} closed by the server")
                    return
        except RemoteProtocolError as e:
            self._fail(ProtocolError, f"{self.address} sent an invalid frame: {e}")
        except OSError as e:
            self._fail(StoreClosed, f"connection to {self.address} lost: {e}")
        except BaseException as e:  # never leave callers waiting
            self._fail(StoreClosed, f"connection to {self.address} failed: {e!r}")
            raise

    def _fail(self, cls: type[StoreError], message: str, *, override: bool = False) -> None:
        """Mark the connection dead and fail every waiting request (the first cause wins)."""
        with self._state:
            if self._failure is None or override:
                self._failure = (cls, message)
            cls, message = self._failure
            waiting = list(self._futures.values())
            self._futures.clear()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(cls(message))
        self._t.shutdown()  # wakes the reader, and a writer blocked on a full socket

    def _submit(self, build: Callable[[int], Message]) -> Future[Message]:
        """Send one request; its Future completes with the reply or the connection's failure."""
        return self._submit_many([build])[0]

    def _submit_many(self, builds: Iterable[Callable[[int], Message]]) -> list[Future[Message]]:
        """Send requests in order, several frames per socket write (one lock, one syscall).

        *builds* make each message from the tag allocated to it. Frames go out in groups of
        up to SEND_BATCH bytes, so other threads' requests interleave between groups.
        """
        futs: list[Future[Message]] = []
        it = iter(builds)
        build: Callable[[int], Message] | None = next(it, None)
        while build is not None:
            with self._wlock:
                frames: list[bytes] = []
                size = 0
                with self._state:
                    if self._failure is not None:
                        cls, message = self._failure
                        raise cls(message)
                    while build is not None and size < SEND_BATCH:
                        tag = self._tag
                        while tag in self._futures:
                            tag = (tag + 1) % TAG_LIMIT
                        self._tag = (tag + 1) % TAG_LIMIT
                        data = self._conn.send(build(tag))
                        fut: Future[Message] = Future()
                        self._futures[tag] = fut
                        futs.append(fut)
                        frames.append(data)
                        size += len(data)
                        build = next(it, None)
                    self._requests += len(frames)
                    self._sent += size
                try:
                    self._t.sendall(b"".join(frames) if len(frames) > 1 else frames[0])
                except OSError as e:
                    self._fail(StoreClosed, f"connection to {self.address} lost: {e}")
        return futs

    def _wait(self, fut: Future[Message], expect: type[M], score: bytes | None = None) -> M:
        """The reply in *fut*; an Rerror raises the matching store exception."""
        try:
            reply = fut.result(timeout=self._timeout)
        except TimeoutError:
            raise RemoteError(f"no reply from {self.address} within {self._timeout} s") from None
        if isinstance(reply, Rerror):
            with self._state:
                self._errors += 1
            self._raise(reply, score)
        if not isinstance(reply, expect):  # the codec checks this already
            raise ProtocolError(f"{self.address} answered with {reply.TYPE.name}")
        return reply

    def _raise(self, err: Rerror, score: bytes | None) -> NoReturn:
        where = f"remote {self.address}"
        named = score if score is not None else (err.scores[0] if err.scores else None)
        match err.code:
            case ErrorCode.NOT_FOUND if named is not None:
                raise BlockNotFound(named)
            case ErrorCode.CORRUPT if named is not None:
                raise CorruptBlock(named, where, err.message)
            case ErrorCode.MISSING_REFERENCE:
                raise MissingReference(list(err.scores))
            case ErrorCode.INVALID_BLOCK:
                raise InvalidBlock(err.message)
            case ErrorCode.READ_ONLY:
                raise ReadOnlyRemote(f"{self.address}: {err.message}", err.code)
            case _:
                raise RemoteRequestError(
                    f"{self.address}: {err.code.name.lower()}: {err.message}", err.code
                )

    def _call(self, build: Callable[[int], Message], expect: type[M]) -> M:
        return self._wait(self._submit(build), expect)

    @staticmethod
    def _collect(waits: list[Callable[[], Any]]) -> list[Any]:
        """Wait for every reply, then raise the first error in order (the batch is settled)."""
        results: list[Any] = []
        first: StoreError | None = None
        for w in waits:
            try:
                results.append(w())
            except StoreError as e:
                if first is None:
                    first = e
        if first is not None:
            raise first
        return results

    # -- the BlockStore interface ---------------------------------------------------------------

    def put(self, btype: int, data: bytes | bytearray | memoryview) -> Score:
        """Send the block; the server checks closure. Errors as for any store."""
        return self.put_many([(btype, data)])[0]

    def put_many(self, blocks: Iterable[tuple[int, bytes | bytearray | memoryview]]) -> list[Score]:
        """Pipeline every write, then wait for all.

        The server applies one connection's writes in order, so a batch may hold a whole
        tree, children before parents. Unlike a local store, blocks after a refused one may
        still be stored; the first error (in order) is raised once the batch has settled.
        """
        prepared = [_prepare(t, d) for t, d in blocks]  # type/size checks and hashing first
        futs = self._submit_many(
            [lambda tag, bt=bt, p=p: Twrite(tag=tag, btype=bt, data=p) for bt, p, _ in prepared]
        )
        return self._collect(
            [
                lambda f=f, s=s: self._wait_put(f, s)
                for f, (_, _, s) in zip(futs, prepared, strict=True)
            ]
        )

    def _wait_put(self, fut: Future[Message], score: Score) -> Score:
        reply = self._wait(fut, Rwrite)
        if reply.score != score:
            raise ProtocolError(
                f"{self.address} stored a block as {format_score(reply.score)}, "
                f"but its score is {format_score(score)}"
            )
        return score

    def get(self, score: bytes) -> Block:
        """Fetch and verify one block."""
        return self.get_many([score])[0]

    def get_many(self, scores: Sequence[bytes]) -> list[Block]:
        """Pipeline every read, then wait; the first error (in order) is raised."""
        checked = [_check_score(s) for s in scores]
        futs = self._submit_many([lambda tag, s=s: Tread(tag=tag, score=s) for s in checked])
        if len(futs) == 1:  # a lone get raises directly, with no batch to settle
            return [self._wait_get(futs[0], checked[0])]
        return self._collect(
            [lambda f=f, s=s: self._wait_get(f, s) for f, s in zip(futs, checked, strict=True)]
        )

    def _wait_get(self, fut: Future[Message], score: bytes) -> Block:
        reply = self._wait(fut, Rread, score)
        where = f"remote {self.address}"
        if score_of(reply.btype, reply.data) != score:
            raise CorruptBlock(score, where, "the payload does not hash to the score")
        try:
            bt = BlockType(reply.btype)
        except ValueError:
            raise CorruptBlock(score, where, f"unknown block type {reply.btype}") from None
        with self._state:
            self._verified += 1
        return Block(bt, reply.data)

    def has(self, score: bytes) -> bool:
        return not self.missing([score])

    def missing(self, scores: Sequence[bytes]) -> list[Score]:
        """Batched has: MAX_HAS scores per Thas, every batch sent before the first wait."""
        checked = [_check_score(s) for s in scores]
        batches = [checked[i : i + MAX_HAS] for i in range(0, len(checked), MAX_HAS)]
        futs = self._submit_many([lambda tag, b=b: Thas(tag=tag, scores=b) for b in batches])
        out: list[Score] = []
        for batch, fut in zip(batches, futs, strict=True):
            reply = self._wait(fut, Rhas)
            if len(reply.missing) != len(batch):
                raise ProtocolError(
                    f"{self.address} answered {len(reply.missing)} of {len(batch)} has-queries"
                )
            out.extend(Score(s) for s, m in zip(batch, reply.missing, strict=True) if m)
        return out

    def sync(self) -> None:
        """Return when every write this client sent before it is durable on the server."""
        self._call(lambda tag: Tsync(tag=tag), Rsync)

    def ping(self) -> None:
        """One round trip (liveness, latency)."""
        self._call(lambda tag: Tping(tag=tag), Rping)

    def statistics(self) -> StoreStats:
        """The remote store's counters as its server reports them (for all its clients)."""
        st = self._call(lambda tag: Tstat(tag=tag), Rstat)
        return StoreStats(**{n: getattr(st, n) for n in STAT_FIELDS})

    def position(self) -> int:
        """The remote store's log position (a replication peer's end of log)."""
        return self._call(lambda tag: Tstat(tag=tag), Rstat).position

    def connection_statistics(self) -> RemoteStats:
        """This client's own counters for its connection."""
        with self._state:
            return RemoteStats(
                requests=self._requests,
                errors=self._errors,
                bytes_sent=self._sent,
                bytes_received=self._received,
                outstanding=len(self._futures),
                verified_reads=self._verified,
            )

    @property
    def closed(self) -> bool:
        """True once the connection is unusable (closed by us, or lost)."""
        return self._failure is not None

    def close(self) -> None:
        """Say goodbye (best effort) and close; waiting callers get StoreClosed."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            healthy = self._failure is None
        if healthy and self._wlock.acquire(timeout=1.0):
            try:
                with self._state:
                    data = None if self._failure else self._conn.send(Tgoodbye(tag=0))
                if data:
                    with contextlib.suppress(OSError):
                        self._t.send_nowait(data)
            finally:
                self._wlock.release()
        self._fail(StoreClosed, f"remote store {self.address} is closed", override=True)
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=5.0)
        self._t.close()

    def _store(self, score: Score, btype: BlockType, payload: bytes) -> None:
        raise NotImplementedError("RemoteStore.put sends whole blocks; the server stores them")


def _prepare(btype: int, data: bytes | bytearray | memoryview) -> tuple[BlockType, bytes, Score]:
    """The local half of put: type and size checks, then the score."""
    bt = check_type(btype)
    check_size(data)
    payload = bytes(data)
    return bt, payload, score_of(bt, payload)


def _check_score(score: bytes) -> bytes:
    s = bytes(score)
    if len(s) != SCORE_SIZE:
        raise BadScore(f"a score is {SCORE_SIZE} bytes, not {len(s)}")
    return s
