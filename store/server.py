"""The block-protocol server: any BlockStore, served over a Unix socket or TCP (+TLS).

This is the asyncio glue around the sans-IO codec in store.wire; it owns no protocol rule of
its own beyond *what each request does to the store*. Design choices, and why:

- **Store calls run in threads.** The BlockStore interface is synchronous (store.base), and
  hashing, compression and LMDB release the GIL, so the event loop only moves bytes. The
  server owns a small thread pool rather than borrowing the loop's default one, so a busy
  store cannot starve the rest of a node daemon.
- **Pipelining with a bound.** Each connection answers up to ``max_outstanding`` requests
  at once; past that it stops reading, and TCP flow control pushes back on the client.
- **Writes are ordered per connection.** Twrite and Tsync are applied in the order they
  arrive (reads and has-queries overtake them freely). A client can therefore pipeline a
  whole tree, leaves first, without the closure check ever seeing a parent before its
  children, and a Tsync covers every write sent before it. Consecutive writes are applied
  in one thread hop, which amortises the hand-off cost for small blocks.
- **A bad frame costs one connection.** A malformed, oversize or unknown frame gets an
  Rerror (tag NOTAG, or the offending tag) and the connection is closed; the server and
  its other connections carry on.
- **Identity comes from the transport** (TLS client certificate CN, Unix peer uid), never
  from what the client says in Thello; it is echoed in Rhello and in every log line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import socket
import ssl as _ssl
import stat
import struct
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

from store.barrier import WriterSessions
from store.base import BlockStore
from store.errors import (
    BlockNotFound,
    CorruptBlock,
    InvalidBlock,
    MissingReference,
    StoreClosed,
    StoreError,
)
from store.wire import (
    MAX_ERROR_SCORES,
    NOTAG,
    PROTOCOL_VERSION,
    STAT_FIELDS,
    Connection,
    ErrorCode,
    Message,
    MsgType,
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
    Thas,
    Thello,
    Tread,
    Twrite,
    clip,
)

log = logging.getLogger("store.server")

READ_SIZE = 1 << 18
DEFAULT_MAX_OUTSTANDING = 64
WRITE_BATCH = 64  # ordered requests applied per thread hop
DEFAULT_WORKERS = 8  # threads for store calls when no executor is given
DRAIN_TIMEOUT = 30.0  # seconds to deliver outstanding replies after EOF or Tgoodbye
CLOSE_TIMEOUT = 2.0  # seconds for a last Rerror and the transport's close

Identity = Callable[[asyncio.BaseTransport], str]


@dataclass(frozen=True, slots=True)
class ServerStats:
    """Counters of a BlockServer since it started (trio-style ``statistics()``)."""

    connections: int  # accepted
    open_connections: int
    requests: int  # frames received that were valid requests
    errors: int  # requests answered with Rerror
    protocol_errors: int  # connections closed for a bad frame
    bytes_in: int
    bytes_out: int


class _ReadOnly(StoreError):
    """A write reached a read-only server."""


def transport_identity(transport: asyncio.BaseTransport) -> str:
    """Who the transport proves the peer is: ``""`` when it proves nothing.

    TLS: the subject commonName of the verified client certificate (the grid CA issues one
    per user or node). Unix socket: ``uid:<n>`` from SO_PEERCRED, which the kernel vouches
    for. Plain TCP: nothing.
    """
    if transport.get_extra_info("sslcontext") is not None:
        cert = transport.get_extra_info("peercert") or {}
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return ""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX and hasattr(socket, "SO_PEERCRED"):
        fmt = "3i"
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(fmt))
        _pid, uid, _gid = struct.unpack(fmt, raw)
        return f"uid:{uid}"
    return ""


def error_reply(tag: int, exc: BaseException) -> Rerror:
    """The one place a store exception becomes an Rerror (the client maps it back)."""
    match exc:
        case BlockNotFound():
            return Rerror(
                tag=tag, code=ErrorCode.NOT_FOUND, message=clip(str(exc)), scores=(exc.score,)
            )
        case CorruptBlock():
            return Rerror(
                tag=tag, code=ErrorCode.CORRUPT, message=clip(str(exc)), scores=(exc.score,)
            )
        case MissingReference():
            return Rerror(
                tag=tag,
                code=ErrorCode.MISSING_REFERENCE,
                message=clip(str(exc)),
                scores=tuple(exc.missing[:MAX_ERROR_SCORES]),
            )
        case InvalidBlock():
            return Rerror(tag=tag, code=ErrorCode.INVALID_BLOCK, message=clip(str(exc)))
        case _ReadOnly():
            return Rerror(tag=tag, code=ErrorCode.READ_ONLY, message=clip(str(exc)))
        case StoreClosed():
            return Rerror(tag=tag, code=ErrorCode.INTERNAL, message="the store is closed")
        case _:
            return Rerror(
                tag=tag, code=ErrorCode.INTERNAL, message=clip(f"{type(exc).__name__}: {exc}")
            )


class _Mode(Enum):
    INLINE = "inline"  # answered on the loop, no store call
    CONCURRENT = "concurrent"  # a store call in a thread, in any order
    ORDERED = "ordered"  # a store call in a thread, in arrival order


class _ConnLog(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"conn={self.extra['conn']} {msg}", kwargs  # type: ignore[index]


class _Close(Exception):
    """Internal: end this connection (after a reply already sent)."""


class _Session:
    """One connection: read frames, dispatch, write tagged replies."""

    # The dispatch table: request type -> (handler run to build the reply, how it runs).
    HANDLERS: ClassVar[dict[MsgType, tuple[str, _Mode]]] = {
        MsgType.TPING: ("_ping", _Mode.INLINE),
        MsgType.TREAD: ("_read", _Mode.CONCURRENT),
        MsgType.THAS: ("_has", _Mode.CONCURRENT),
        MsgType.TSTAT: ("_stat", _Mode.CONCURRENT),
        MsgType.TWRITE: ("_write", _Mode.ORDERED),
        MsgType.TSYNC: ("_sync", _Mode.ORDERED),
    }

    def __init__(
        self,
        server: BlockServer,
        cid: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.store = server.store
        self.reader = reader
        self.writer = writer
        self.conn = Connection(Role.SERVER)
        self.log = _ConnLog(log, {"conn": cid})
        self.identity = ""
        self._slots = asyncio.Semaphore(server.max_outstanding)
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ordered: asyncio.Queue[Message] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._session: tuple[WriterSessions, int] | None = None  # from the first write

    # -- the read loop ----------------------------------------------------------------------

    async def run(self) -> None:
        peer = self.writer.get_extra_info("peername") or "unix"
        try:
            self.identity = self.server.identity(self.writer.transport)
        except Exception:
            self.log.exception("cannot establish the peer's identity; closing")
            await self._close(abort=True)
            return
        self.log.info("open from %s as %r", peer, self.identity or "(anonymous)")
        clean = False
        try:
            await self._read_loop()
            clean = True
        except RemoteProtocolError as e:
            self.server._protocol_errors += 1
            self.log.warning("protocol error, closing: %s", e)
            tag = e.tag if e.tag is not None and e.tag not in self.conn.pending_tags() else NOTAG
            reply = Rerror(tag=tag, code=ErrorCode.BAD_REQUEST, message=clip(str(e)))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._send(reply), CLOSE_TIMEOUT)
        except _Close:
            pass
        except (ConnectionError, OSError) as e:
            self.log.info("connection lost: %s", e)
        finally:
            await self._close(abort=not clean)
            self.log.info("closed")

    async def _read_loop(self) -> None:
        while True:
            data = await self.reader.read(READ_SIZE)
            self.server._bytes_in += len(data)
            self.conn.receive_data(data)
            batch: list[Message] = []  # concurrent requests parsed from this read
            try:
                while (msg := self.conn.next_message()) is not None:
                    await self._dispatch(msg, batch)
                    if self.conn.goodbye:
                        self.log.debug("goodbye")
                        return  # nothing after Tgoodbye is read
            finally:
                self._spawn(batch)
            if not data:
                return

    async def _dispatch(self, msg: Message, batch: list[Message]) -> None:
        self.server._requests += 1
        if isinstance(msg, Thello):
            await self._hello(msg)
            return
        if msg.TYPE is MsgType.TGOODBYE:
            return
        name, mode = self.HANDLERS[msg.TYPE]
        if mode is _Mode.INLINE:
            await self._send(getattr(self, name)(msg))
            return
        if self._slots.locked():  # at the bound: start what we hold, then stop reading
            self._spawn(batch)
        await self._slots.acquire()
        self._inflight += 1
        self._idle.clear()
        if mode is _Mode.ORDERED:
            if self._worker is None:
                self._worker = asyncio.create_task(self._ordered_worker())
            self._ordered.put_nowait(msg)
        else:
            batch.append(msg)

    def _spawn(self, batch: list[Message]) -> None:
        """Start the concurrent requests in *batch* (emptying it).

        A thread hop costs more CPU than a typical store read, so under load requests go
        in groups, one hop per group, sized so the requests in flight fill the worker
        threads about once. A lightly loaded connection gets one hop per request, so a slow
        read holds up a quick one only when every worker is busy anyway.
        """
        if not batch:
            return
        size = max(1, -(-self._inflight // self.server.workers))
        for i in range(0, len(batch), size):
            task = asyncio.create_task(self._answer(batch[i : i + size]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        batch.clear()

    async def _hello(self, msg: Thello) -> None:
        if msg.version != PROTOCOL_VERSION:
            self.log.warning("client speaks %r, not %r; closing", msg.version, PROTOCOL_VERSION)
            why = (
                f"unsupported protocol version {msg.version!r}; "
                f"this server speaks {PROTOCOL_VERSION!r}"
            )
            await self._send(Rerror(tag=msg.tag, code=ErrorCode.BAD_REQUEST, message=clip(why)))
            raise _Close
        self.log.info("hello from client %r", msg.name)
        await self._send(Rhello(tag=msg.tag, node=self.server.node, identity=self.identity))

    # -- running requests -------------------------------------------------------------------

    def _call(self, msg: Message) -> Message:
        """Run one request against the store (in a worker thread); errors become Rerror."""
        name, _ = self.HANDLERS[msg.TYPE]
        try:
            return getattr(self, name)(msg)
        except StoreError as e:
            self.log.debug("%s tag %d: %s", msg.TYPE.name, msg.tag, e)
            return error_reply(msg.tag, e)
        except Exception as e:
            self.log.exception("%s tag %d failed", msg.TYPE.name, msg.tag)
            return error_reply(msg.tag, e)

    def _call_all(self, msgs: list[Message]) -> list[Message]:
        return [self._call(m) for m in msgs]

    async def _run_batch(self, msgs: list[Message]) -> list[Message]:
        """One thread hop for *msgs*; counted on the loop, so counters need no lock."""
        replies = await self.server._in_thread(self._call_all, msgs)
        self.server._errors += sum(isinstance(r, Rerror) for r in replies)
        return replies

    async def _answer(self, msgs: list[Message]) -> None:
        try:
            await self._send(*await self._run_batch(msgs))
        except (ConnectionError, OSError):
            pass  # the read loop notices the lost connection
        finally:
            self._release(len(msgs))

    async def _ordered_worker(self) -> None:
        while True:
            batch = [await self._ordered.get()]
            while len(batch) < WRITE_BATCH and not self._ordered.empty():
                batch.append(self._ordered.get_nowait())
            try:
                await self._send(*await self._run_batch(batch))
            except (ConnectionError, OSError):
                pass
            finally:
                self._release(len(batch))

    def _release(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()
        self._inflight -= n
        if self._inflight == 0:
            self._idle.set()

    async def _send(self, *replies: Message) -> None:
        """Write replies one frame at a time, waiting for the transport to drain between.

        asyncio's transport keeps unsent bytes in one bytearray and deletes from its front
        as the socket takes them; letting several tasks pile megabytes into it makes every
        send a large memmove. Under this lock the buffer stays near its high-water mark.
        """
        async with self._write_lock:
            for reply in replies:
                if self.writer.is_closing():
                    return
                data = self.conn.send(reply)
                self.writer.write(data)
                self.server._bytes_out += len(data)
                await self.writer.drain()

    async def _close(self, *, abort: bool) -> None:
        if not abort:  # answer everything outstanding first, unless the peer stopped reading
            try:
                await asyncio.wait_for(self._idle.wait(), DRAIN_TIMEOUT)
            except TimeoutError:
                self.log.warning("peer left %d replies unread; dropping them", self._inflight)
        if self._worker is not None:
            self._worker.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            sessions, n = self._session
            self._session = None
            sessions.end(n)
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), CLOSE_TIMEOUT)

    # -- handlers (run in a worker thread, except _ping) ---------------------------------------

    def _ping(self, msg: Message) -> Message:
        return Rping(tag=msg.tag)

    def _read(self, msg: Tread) -> Message:
        blk = self.store.get(msg.score)
        return Rread(tag=msg.tag, btype=int(blk.type), data=blk.data)

    def _has(self, msg: Thas) -> Message:
        absent = set(self.store.missing(list(msg.scores))) if msg.scores else set()
        return Rhas(tag=msg.tag, missing=tuple(s in absent for s in msg.scores))

    def _stat(self, msg: Message) -> Message:
        st = self.store.statistics()
        return Rstat(tag=msg.tag, **{n: int(getattr(st, n)) for n in STAT_FIELDS})

    def _write(self, msg: Twrite) -> Message:
        if self.server.read_only:
            raise _ReadOnly("this server is read-only")
        if self._session is None:
            # From its first write to its end a connection is a writer session (store.barrier):
            # an import names its tree before it hangs up, and an online prune waits for it.
            sessions = getattr(self.store, "writers", None)
            if isinstance(sessions, WriterSessions):
                self._session = (sessions, sessions.begin(f"block connection {self.identity or 'local'}"))
        return Rwrite(tag=msg.tag, score=self.store.put(msg.btype, msg.data))

    def _sync(self, msg: Message) -> Message:
        if not self.server.read_only:  # nothing was written through a read-only server
            self.store.sync()
        return Rsync(tag=msg.tag)


class BlockServer:
    """Serves one BlockStore to many connections; start with start_unix/start_tcp.

    Arguments:
        store: what to serve; the server never closes it.
        node: this node's name, sent in Rhello.
        read_only: answer Twrite with Rerror READ_ONLY (reads, has, stat still work).
        identity: maps a transport to the authenticated peer name (default:
            transport_identity: TLS certificate CN or Unix ``uid:<n>``).
        max_outstanding: requests answered concurrently per connection.
        executor: where store calls run (default: a pool the server owns).
    """

    def __init__(
        self,
        store: BlockStore,
        *,
        node: str = "",
        read_only: bool = False,
        identity: Identity | None = None,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
        executor: Executor | None = None,
    ) -> None:
        if max_outstanding < 1:
            raise ValueError("max_outstanding must be at least 1")
        self.store = store
        self.node = clip(node)
        self.read_only = read_only
        self.identity: Identity = identity or transport_identity
        self.max_outstanding = max_outstanding
        self._own_executor = executor is None
        self.executor: Executor = executor or ThreadPoolExecutor(
            max_workers=DEFAULT_WORKERS, thread_name_prefix="blockserver"
        )
        self.workers: int = getattr(self.executor, "_max_workers", DEFAULT_WORKERS)
        self._servers: list[asyncio.Server] = []
        self._unix_paths: list[str] = []
        self._sessions: set[asyncio.Task[None]] = set()
        self._calls: set[concurrent.futures.Future[Any]] = set()  # store calls in threads
        self._ids = itertools.count(1)
        self._connections = 0
        self._requests = self._errors = self._protocol_errors = 0
        self._bytes_in = self._bytes_out = 0

    async def start_unix(self, path: str | os.PathLike[str]) -> None:
        """Listen on a Unix socket; a stale socket file left by a dead server is replaced."""
        path = os.fspath(path)
        _remove_stale_socket(path)
        srv = await asyncio.start_unix_server(self._on_connect, path, limit=READ_SIZE)
        self._servers.append(srv)
        self._unix_paths.append(path)
        log.info("serving %s on unix:%s%s", self.node or "store", path, self._ro())

    async def start_tcp(self, host: str, port: int, ssl: _ssl.SSLContext | None = None) -> None:
        """Listen on TCP; with *ssl*, TLS (make it require client certificates for mutual TLS)."""
        srv = await asyncio.start_server(self._on_connect, host, port, ssl=ssl, limit=READ_SIZE)
        self._servers.append(srv)
        log.info(
            "serving %s on tcp:%s%s%s",
            self.node or "store",
            self.addresses[-1],
            " (tls)" if ssl else "",
            self._ro(),
        )

    def _ro(self) -> str:
        return " read-only" if self.read_only else ""

    @property
    def addresses(self) -> list[Any]:
        """Bound addresses: a path for Unix sockets, (host, port) for TCP."""
        out: list[Any] = []
        for srv in self._servers:
            for sock in srv.sockets:
                name = sock.getsockname()
                out.append(name if isinstance(name, str) else tuple(name[:2]))
        return out

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        self._connections += 1
        try:
            await _Session(self, next(self._ids), reader, writer).run()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                writer.close()
        except Exception:  # never let one connection take the server down
            log.exception("connection handler failed")
            with contextlib.suppress(Exception):
                writer.close()
        finally:
            self._sessions.discard(task)

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run a store call in the executor, remembered until done so close() can wait."""
        cf = self.executor.submit(fn, *args)
        self._calls.add(cf)
        cf.add_done_callback(self._calls.discard)
        return asyncio.wrap_future(cf)

    async def close(self, timeout: float = 30.0) -> None:
        """Stop listening, drop every connection, and wait for store calls in flight.

        When close returns, no thread of this server is inside the store any more (unless
        a call outlived *timeout* seconds, which is logged), so the caller may close it.
        """
        for srv in self._servers:
            srv.close()
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.gather(*self._sessions, return_exceptions=True)
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await srv.wait_closed()
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._servers.clear()
        self._unix_paths.clear()
        if self._calls:
            _, stuck = await asyncio.to_thread(concurrent.futures.wait, list(self._calls), timeout)
            if stuck:
                log.warning("%d store call(s) still running after %.0f s", len(stuck), timeout)
        if self._own_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> BlockServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def statistics(self) -> ServerStats:
        return ServerStats(
            connections=self._connections,
            open_connections=len(self._sessions),
            requests=self._requests,
            errors=self._errors,
            protocol_errors=self._protocol_errors,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
        )


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"{path}: another server is listening there")


async def serve_unix(
    path: str | os.PathLike[str], store: BlockStore, **options: Any
) -> BlockServer:
    """Start a BlockServer on a Unix socket (options as for BlockServer)."""
    server = BlockServer(store, **options)
    await server.start_unix(path)
    return server


async def serve_tcp(
    host: str, port: int, store: BlockStore, ssl: _ssl.SSLContext | None = None, **options: Any
) -> BlockServer:
    """Start a BlockServer on TCP, with TLS when *ssl* is given (port 0 picks a free port)."""
    server = BlockServer(store, **options)
    await server.start_tcp(host, port, ssl=ssl)
    return server
