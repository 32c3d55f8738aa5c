"""The 9P server: asyncio glue between one connection's byte stream and a spawn's engine.

One :class:`Session` serves one connection (a Unix socket, a TLS stream, a test's pipe): it
splits the stream into frames (``spawn.ninep.codec.FrameBuffer``), decodes each in the
dialect Tversion chose, runs each request (where it arrives as far as it goes without waiting,
then in a task of its own), and writes the replies.
Everything a file *is* comes from the engine through an :class:`~spawn.vfslink.EngineLink`;
this module only translates, so that FUSE, 9P and SFTP share every fix (docs/9p.md,
"Server").

Who the client is comes from the transport, never from ``uname``: the code that accepts a
connection knows the peer (Unix peer credentials, a TLS certificate) and gives the session a
*resolver* bound to that identity. On Tattach the session calls
``await resolve(uname, aname, n_uname)``, which returns an :class:`Attachment` (the engine
link, the root inode, the uid/gid that new files get, the spawn's lock table) or raises
PermissionError / LookupError. There is no 9P authentication: Tauth is answered with an
error (Rlerror ENOENT in .L) so that clients go on to attach, as diod's tools expect.

Concurrency, in short (details at each piece):

* requests are pipelined: each is answered when done, out of order (one that needs no wait
  is answered inline, in arrival order; replies of one chunk of the stream go out together);
  per-fid turns (``spawn.ninep.fids.Turns``) keep the orders that matter;
* Tflush follows flush(5): it is always answered with Rflush, after the flushed request's
  reply if that request could not be stopped, never before it; a request stops only at a
  point where it has changed nothing (waiting for its turn or for a lock), so a flushed
  request either happened and was answered, or did not happen;
* limits per connection (:class:`Limits`): the negotiated msize bounds every frame, a
  connection may hold ``max_fids`` fids and have ``max_requests`` requests in progress
  (beyond that the session stops reading, which pushes back on the client), and at most
  ``max_lock_waits`` blocked lock requests wait in the server (more are answered BLOCKED,
  which the protocol allows, so a client can always get its Tflush through).

Errors: an OSError from the engine (or raised here) becomes Rlerror(errno) on a 9P2000.L
connection, Rerror(text, errno) on 9P2000.u and Rerror(text) on 9P2000, the text one that
9P2000 clients map back to the errno (spawn/ninep/errtext.py). A frame
whose header is readable but whose body is not a request of the dialect gets an error reply
for its tag (EPROTO for a bad body, EOPNOTSUPP for a type the dialect lacks); a frame that
breaks the framing (size field under 7 or over msize), a malformed Tversion or Tflush, or a
Tflush whose own tag is in flight closes that connection, and only it. Another request
reusing a tag in flight gets an error (EBUSY, as Plan 9's lib9p answers "duplicate tag")
and the request in flight goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import functools
import itertools
import logging
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any

from spawn.access import NOW, O_EXEC
from spawn.cred import Cred
from spawn.engine import ROOT_INO, Attr
from spawn.fsformat import NAME_MAX
from spawn.ninep import messages as m9
from spawn.ninep import sendfile
from spawn.ninep.codec import FrameBuffer, decode, encode, encode_dirent, encode_stat
from spawn.ninep.errtext import Explained, text_of
from spawn.ninep.fids import Fid, Listing, Opened, Turn, Turns, XattrRead, XattrWrite, fid_fields
from spawn.ninep.locks import LockTable, span
from spawn.ninep.messages import (
    IOHDRSZ,
    MESSAGE_CLASSES,
    NOFID,
    NONUNAME,
    Dialect,
    Dirent,
    GetattrMask,
    LocalProtocolError,
    LockFlags,
    LockStatus,
    LockType,
    Message,
    MessageType,
    Qid,
    RemoteProtocolError,
    SetattrMask,
    Stat,
)
from spawn.ninep.sendfile import PlainRead
from spawn.vfslink import EngineLink

log = logging.getLogger(__name__)

MSIZE = (1 << 20) + IOHDRSZ  # what we offer: 1 MiB of data per Tread/Twrite
#: How much a connection's StreamReader buffers before it stops reading the socket (asyncio
#: stops at twice this): a whole frame of our msize, so that a 1 MiB Twrite arrives in a few
#: reads, not in 64 KiB ones with the socket paused and resumed between them.
STREAM_LIMIT = MSIZE
MIN_MSIZE = 512  # the least a server may be configured with (a walk of 16 names fits)
#: The least msize a client may ask for, as diod accepts small ones: every reply is cut to
#: fit (error texts shortened; a directory read whose count cannot hold one entry is EINVAL).
VERSION_MIN = 128
RHDR = 11  # size[4] type[1] tag[2] count[4]: the header of Rread and Rreaddir
_TREAD_BODY = struct.Struct("<HIQI")  # tag fid offset count, after size[4] type[1]
_TREAD_SIZE = 5 + _TREAD_BODY.size
V9FS_MAGIC = 0x01021997  # statfs f_type of a 9P filesystem (Linux's V9FS_MAGIC)
BLKSIZE = 128 << 10  # the I/O size we suggest (st_blksize), as the FUSE adapter does
XATTR_SIZE_MAX = 64 << 10  # Linux's limit for one xattr value (the engine's too)
UNKNOWN = b"unknown"  # version(5): the answer to a version we do not speak
#: 9P2000 open modes (OREAD, OWRITE, ORDWR, OEXEC) as the engine's open flags.
_OPEN_FLAGS = (os.O_RDONLY, os.O_WRONLY, os.O_RDWR, O_EXEC)
MAX_FILE = (1 << 63) - 1  # Linux's largest file offset (loff_t): beyond it, EFBIG

# 9P2000.L open flags (Linux's generic O_* values, as v9fs sends them on every architecture)
L_ACCMODE = 0o3
L_WRONLY = 0o1
L_RDWR = 0o2
L_EXCL = 0o200
L_TRUNC = 0o1000
L_APPEND = 0o2000
L_DIRECTORY = 0o200000
XATTR_CREATE = 1
XATTR_REPLACE = 2

_DT_OF_FMT = {stat.S_IFDIR: m9.DT_DIR, stat.S_IFREG: m9.DT_REG, stat.S_IFLNK: m9.DT_LNK,
              stat.S_IFCHR: m9.DT_CHR, stat.S_IFBLK: m9.DT_BLK, stat.S_IFIFO: m9.DT_FIFO,
              stat.S_IFSOCK: m9.DT_SOCK}
_U64 = (1 << 64) - 1


# --- what an attach resolves to -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attach's view of a spawn, as the resolver grants it.

    ``link`` reaches the spawn's engine and ``root`` is the inode the attach starts at.
    ``uid``/``gid`` own the files this attach creates; a 9P2000.L create may ask for a gid
    in ``groups`` instead (root may ask for any). ``locks`` must be the one table of the
    spawn, shared by every session that serves it, for locks to work across clients.
    ``fsid`` is what statfs reports as the filesystem id.
    """

    link: EngineLink
    uid: int
    gid: int
    root: int = ROOT_INO
    groups: frozenset[int] = frozenset()
    locks: LockTable = field(default_factory=LockTable)
    fsid: int = 0
    cred: Cred = field(init=False)  # what every engine call of the attach carries

    def __post_init__(self) -> None:
        object.__setattr__(self, "cred", Cred(self.uid, self.gid, self.groups | {self.gid}))

    def as_gid(self, gid: int) -> Cred:
        """The attach's credentials acting with group *gid* (a 9P2000.L create's gid, which
        ``Server._gid`` has checked), as diod's setfsgid does."""
        return self.cred if gid == self.gid else Cred(self.uid, gid, self.cred.all_groups())


#: ``await resolve(uname, aname, n_uname)``: the Attachment, or PermissionError/LookupError.
Resolver = Callable[[bytes, bytes, int], Awaitable[Attachment]]


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is at the other end, as the transport says (Unix peer credentials, or the
    address of a TCP peer). A listener hands it to its resolver factory."""

    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    address: str = ""


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits (see the module docstring)."""

    msize: int = MSIZE
    max_fids: int = 65536
    max_requests: int = 256
    max_lock_waits: int = 64

    def __post_init__(self) -> None:
        if self.msize < MIN_MSIZE or self.max_fids < 1 or self.max_requests < 1:
            raise ValueError(f"unusable limits: {self}")


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    dialect: str | None
    msize: int
    fids: int
    requests: int
    lock_waits: int
    received: int  # frames
    malformed: int  # frames answered with EPROTO/EOPNOTSUPP


# --- errors ---------------------------------------------------------------------------------


def _err(code: int, detail: str | None = None) -> OSError:
    """An error for one request: *code* is its errno, *detail* says more in the logs (9P2000
    clients get the bare text their tables map to the errno: spawn/ninep/errtext.py)."""
    return OSError(code, os.strerror(code) + (f": {detail}" if detail else ""))


class _Flushed(Exception):
    """The request was flushed before it changed anything: it gets no reply."""


class _CloseConnection(Exception):
    """The client broke the protocol in a way that loses track of requests."""


# --- requests -------------------------------------------------------------------------------


class _Request:
    """One request in flight: its task, its fid turns, and how flush and reset treat it.

    ``cancellable`` is true only while the handler waits at a point where it has changed
    nothing (its turn, a lock); a Tflush or a reset cancels the task then. Otherwise they
    set ``flushed``/``aborted`` and wait: a flushed request still replies (flush(5) allows
    the reply before Rflush), an aborted one (Tversion, connection end) does not.
    """

    __slots__ = ("aborted", "cancellable", "chain", "done", "flushed", "msg", "tag", "task",
                 "turns")

    def __init__(self, msg: Message, done: asyncio.Future[None]) -> None:
        self.msg = msg
        self.tag = msg.tag
        self.task: asyncio.Task[None] | None = None
        self.turns: list[Turn] = []
        self.flushed = False
        self.aborted = False
        self.cancellable = False
        self.chain = -1  # a Tflush: the tag whose chain of flushes it is in
        self.done = done


async def _settled(fut: asyncio.Future[Any]) -> None:
    """Wait for *fut* without cancelling it if we are cancelled (others wait on it too)."""
    if not fut.done():
        await asyncio.wait((fut,))


class _Resumed:
    """The rest of a coroutine that ``Session._start`` began outside a task and that stopped
    at *waiting* (what it yielded: a future, or None): awaited in a task, it hands the task
    what the coroutine yields and the coroutine what the task sends or throws, as if the
    coroutine had run in that task from the start."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, None, Any]:
        coro, value = self.coro, self.waiting
        while True:
            try:
                yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # a cancellation, passed on to the coroutine
                try:
                    value = coro.throw(e)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(None)
                except StopIteration as stop:
                    return stop.value


async def _resume(coro: Coroutine[Any, Any, Any], waiting: Any) -> Any:
    return await _Resumed(coro, waiting)


_session_ids = itertools.count(1)


class Session:
    """One 9P connection, served until the peer closes it (see the module docstring).

    *resolve* is called on each Tattach (see :data:`Resolver`); *peer* names the
    transport's identity in logs. ``await session.run()`` serves; ``close()`` ends it from
    outside (the daemon's shutdown). At the end every fid is clunked: open files are
    released in the engine, pending xattr writes are dropped, locks are released.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 resolve: Resolver, *, limits: Limits | None = None,
                 peer: Peer | None = None) -> None:
        self.id = next(_session_ids)
        self.limits = limits or Limits()
        self.peer = peer or Peer()
        self._reader = reader
        self._writer = writer
        self._resolve = resolve
        self._buf = FrameBuffer(self.limits.msize)
        self.dialect: Dialect | None = None
        self.msize = self.limits.msize
        self._fids: dict[int, Fid] = {}
        self._requests: dict[int, _Request] = {}
        self._flush_chain: dict[int, _Request] = {}  # oldtag -> the last Tflush naming it
        self._turns = Turns()
        self._slots = asyncio.Semaphore(self.limits.max_requests)
        self._table_refs: dict[int, LockTable] = {}
        self._lock_waits = 0
        # one request slot always stays free of lock waiters, so a Tflush can be read
        self._max_lock_waits = min(self.limits.max_lock_waits, self.limits.max_requests - 1)
        self._received = 0
        self._malformed = 0
        self._closing = False
        self._batch: list[bytes] | None = None  # replies held for one write (see run)
        self._raw_fd = sendfile.raw_fd(writer)  # for Rreads the kernel sends (spawn.ninep.sendfile)
        self.log = logging.LoggerAdapter(log, {"conn": self.id})

    # -- the connection ------------------------------------------------------------------

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(
            self.dialect.value if self.dialect else None, self.msize, len(self._fids),
            len(self._requests), self._lock_waits, self._received, self._malformed)

    def close(self) -> None:
        """End the session: stop reading; ``run`` then cleans up and returns."""
        self._closing = True
        self._writer.close()
        with contextlib.suppress(Exception):
            self._reader.feed_eof()

    async def run(self) -> None:
        """Serve the connection until EOF, a broken frame or ``close()``."""
        self.log.debug("9P connection %d from %s", self.id, self.peer)
        try:
            while not self._closing:
                data = await self._reader.read(STREAM_LIMIT)
                if not data:
                    break
                self._buf.receive_data(data)
                self._batch = []  # replies of this chunk's requests go out in one write
                try:
                    while not self._closing and (frame := self._buf.next_frame()) is not None:
                        if (frame[4] == MessageType.TREAD and len(frame) == _TREAD_SIZE
                                and not self._requests and self._read_now(frame)):
                            continue
                        await self._receive(frame)
                finally:
                    self._send_batch()
                    self._batch = None
        except RemoteProtocolError as e:
            self.log.warning("9P connection %d closed: %s", self.id, e)
        except _CloseConnection as e:
            self.log.warning("9P connection %d closed: %s", self.id, e)
        except (ConnectionError, OSError) as e:
            self.log.debug("9P connection %d: %s", self.id, e)
        except Exception:  # a bug here must cost this connection only
            self.log.exception("9P connection %d failed", self.id)
        finally:
            self._closing = True
            await self._reset()
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self.log.debug("9P connection %d ended", self.id)

    async def _receive(self, frame: bytes) -> None:
        """Take one frame: decode it, handle Tversion and Tflush at once, start a task for
        anything else (after a request slot is free: the limit pushes back here)."""
        self._received += 1
        dialect = self.dialect or Dialect.BASE
        try:
            msg = decode(frame, dialect)
        except RemoteProtocolError as e:
            self._bad_frame(e)
            return
        if isinstance(msg, m9.Tversion):
            await self._version(msg)
            return
        if msg.tag in self._requests:
            if isinstance(msg, m9.Tflush):  # it may not get an error, and a reply is ambiguous
                raise _CloseConnection(f"Tflush with tag {msg.tag}, which is in flight")
            # As lib9p does: an error for the newcomer (the client cannot tell its reply from
            # the original's, but it broke the rule); the request in flight goes on.
            self._malformed += 1
            self._write(self._error_msg(msg.tag, _err(errno.EBUSY, "duplicate tag")))
            return
        if isinstance(msg, m9.Tflush):
            self._flush(msg)
            return
        if not type(msg).__name__.startswith("T"):
            self._malformed += 1
            self._write(self._error_msg(msg.tag, _err(errno.EOPNOTSUPP, "not a request")))
            return
        if self.dialect is None:
            self._write(self._error_msg(msg.tag, _err(errno.EPROTO, "version not negotiated")))
            return
        if self._slots.locked():
            async with self._unbatched():  # replies go out while we wait
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        req = _Request(msg, done)
        req.turns = [self._turns.take(f, x) for f, x in fid_fields(msg)]
        self._requests[msg.tag] = req
        self._start(req)

    def _start(self, req: _Request) -> None:
        """Run the request's handler at once, here, as far as it goes without waiting: most
        requests (a getattr, a read of a clean spawn, anything on ctl) finish right here and
        cost no task (docs/9p.md, "Requests in flight"). One that has to wait (for its turn,
        the spawn's host thread, a lock) goes on in a task of its own from where it stopped,
        and a Tflush or reset finds it there as before. Nothing else runs meanwhile, so the
        order in which requests start is still their arrival order."""
        coro = self._run(req)
        # In a context of its own, as a task would have, and the same one when it goes on
        # in a task: a context variable set before the wait is reset after it.
        ctx = contextvars.copy_context()
        try:
            waiting = ctx.run(coro.send, None)
        except StopIteration:
            self._finished(req, None)
            return
        except BaseException as e:  # _run answers every error itself: a bug
            self._finished(req, e)
            return
        req.task = asyncio.get_running_loop().create_task(_resume(coro, waiting), context=ctx)
        req.task.add_done_callback(functools.partial(self._finished, req))

    def _bad_frame(self, e: RemoteProtocolError) -> None:
        """A frame with a readable header but no valid request in it: fail that tag, unless
        losing it would lose track of requests (see the module docstring)."""
        if e.tag is None or e.type in (MessageType.TVERSION, MessageType.TFLUSH):
            raise _CloseConnection(str(e))
        self._malformed += 1
        try:
            cls = MESSAGE_CLASSES.get(MessageType(e.type))
        except ValueError:
            cls = None
        known = cls is not None and (self.dialect or Dialect.BASE) in cls.DIALECTS
        self.log.info("9P connection %d: %s", self.id, e)
        code = errno.EPROTO if known else errno.EOPNOTSUPP
        self._write(self._error_msg(e.tag, _err(code, f"malformed message: {e}"[:200])))

    async def _version(self, m: m9.Tversion) -> None:
        """version(5): abort everything, clunk every fid, then agree on msize and dialect."""
        async with self._unbatched():
            await self._reset()
        dialect = negotiate(m.version)
        msize = min(m.msize, self.limits.msize)
        if dialect is None or msize < VERSION_MIN:
            self.dialect = None
            self._write(m9.Rversion(tag=m.tag, msize=msize, version=UNKNOWN), raw=True)
            return
        self.dialect = dialect
        self.msize = msize
        self._buf.max_size = msize
        self._write(m9.Rversion(tag=m.tag, msize=msize, version=dialect.wire))

    async def _reset(self) -> None:
        """Abort every request (no replies), then clunk every fid and drop our locks."""
        reqs = list(self._requests.values())
        for req in reqs:
            req.aborted = True
            if req.cancellable and req.task is not None:
                req.task.cancel()
        for req in reqs:
            await _settled(req.done)
        fids = list(self._fids.values())
        self._fids.clear()
        for fid in fids:
            try:
                await self._release(fid, commit=False)
            except Exception as e:  # one bad fid must not keep the others
                self.log.debug("clunk of fid %d at reset: %s", fid.number, e)
        for table in self._table_refs.values():
            table.release(lambda lk: lk.owner[0] == self.id)

    # -- replies ---------------------------------------------------------------------------

    def _write(self, msg: Message | PlainRead, *, raw: bool = False) -> None:
        """Encode and send one reply. *raw*: a Tversion answer, before any dialect."""
        if isinstance(msg, PlainRead):
            if not self._writer.is_closing():
                self._send_batch()  # what was answered before goes first
                sendfile.send(self._writer, self._raw_fd, msg)
            return
        dialect = self.dialect or Dialect.BASE
        try:
            frame = encode(msg, dialect, msize=self.msize if not raw else m9.MAX_STRING + 64)
        except LocalProtocolError as e:  # a bug here; the client still gets an answer
            self.log.error("9P reply %r cannot be sent: %s", type(msg).__name__, e)
            frame = encode(self._error_msg(msg.tag, _err(errno.EIO)), dialect)
        if self._batch is not None:
            self._batch.append(frame)
        elif not self._writer.is_closing():
            self._writer.write(frame)

    @contextlib.asynccontextmanager
    async def _unbatched(self) -> AsyncIterator[None]:
        """While the read loop waits (for a request slot, a reset), replies are written as
        they come, not held for the end of the chunk."""
        self._send_batch()
        held, self._batch = self._batch, None
        try:
            yield
        finally:
            self._batch = held

    def _send_batch(self) -> None:
        """Write the replies gathered while a chunk of requests was read, in one write (one
        system call for many small replies, where a reply each cost one)."""
        batch = self._batch
        if not batch:
            return
        self._batch = []
        if not self._writer.is_closing():
            self._writer.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def _error_msg(self, tag: int, e: OSError) -> Message:
        code = e.errno or errno.EIO
        if self.dialect is Dialect.LINUX:
            return m9.Rlerror(tag=tag, ecode=code)
        # A bare text that clients' tables map to the errno, unless it is meant for people
        # (spawn/ninep/errtext.py); .u carries the number besides.
        whole = e.strerror if isinstance(e, Explained) and e.strerror else text_of(code)
        if whole != e.strerror and e.strerror:
            self.log.debug("error %s sent as %r", e.strerror, whole)
        # size[4] type[1] tag[2] ename[s] (and errno[4] in .u): the text fits the msize
        room = min(1024, (self.msize or 8192) - 4 - 1 - 2 - 2 - 4)
        text = whole.encode("utf-8", "replace")[:room]
        text = text.decode("utf-8", "ignore").encode("utf-8")  # not cut inside a character
        if self.dialect is Dialect.UNIX:
            return m9.Rerror(tag=tag, ename=text, errno=code)
        return m9.Rerror(tag=tag, ename=text)

    async def _run(self, req: _Request) -> None:
        """A request's task: wait for its fids, run the handler, send what it returns."""
        m = req.msg
        try:
            try:
                for turn in req.turns:
                    await self._wait(req, turn.ready)
                handler = self._HANDLERS[type(m)]
                reply = await handler(self, req, m)
            finally:
                for turn in req.turns:
                    self._turns.give_back(turn)
        except (asyncio.CancelledError, _Flushed):
            if req.flushed or req.aborted:
                return  # stopped before it changed anything: no reply (flush(5))
            raise
        except OSError as e:
            reply = self._error_msg(m.tag, e)
        except Exception:
            self.log.exception("9P %s failed", type(m).__name__)
            reply = self._error_msg(m.tag, _err(errno.EIO))
        if req.aborted:
            return
        self._write(reply)
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            pass  # the read loop sees the end and cleans up

    def _finished(self, req: _Request, how: asyncio.Task[None] | BaseException | None) -> None:
        """A request ended, however (*how*: its task, or for one that ended where it started,
        the exception that escaped it or None): free its tag, turns and slot."""
        if self._requests.get(req.tag) is req:
            del self._requests[req.tag]
        for turn in req.turns:
            self._turns.give_back(turn)
        self._slots.release()
        if isinstance(how, asyncio.Task):
            how = None if how.cancelled() else how.exception()
        if how is not None:
            self.log.error("9P request task failed", exc_info=how)
        if not req.done.done():
            req.done.set_result(None)

    async def _wait(self, req: _Request, fut: Awaitable[Any]) -> Any:
        """Wait where a flush or reset may stop the request: nothing has changed yet."""
        if req.flushed or req.aborted:
            raise _Flushed
        req.cancellable = True
        try:
            return await fut
        finally:
            req.cancellable = False

    # -- Tflush ------------------------------------------------------------------------------

    def _flush(self, m: m9.Tflush) -> None:
        """flush(5). Rflush at once for a tag not in flight (or the Tflush's own); else stop
        the request if it is at a cancellable point, and answer after its end (and after any
        earlier Tflush of the same tag, so that flushes are answered in order)."""
        old = self._requests.get(m.oldtag)
        if old is None or m.oldtag == m.tag:
            self._write(m9.Rflush(tag=m.tag))
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        req = _Request(m, done)
        old.flushed = True
        if old.cancellable and old.task is not None:
            old.task.cancel()
        # Flushes of one request, and flushes of those flushes, form one chain answered in
        # the order received.
        chain = old.msg.oldtag if isinstance(old.msg, m9.Tflush) else m.oldtag
        before = self._flush_chain.get(chain)
        self._flush_chain[chain] = req
        req.chain = chain
        self._requests[m.tag] = req
        req.task = asyncio.create_task(self._run_flush(req, old, before))
        req.task.add_done_callback(functools.partial(self._flush_finished, req))

    async def _run_flush(self, req: _Request, old: _Request, before: _Request | None) -> None:
        await _settled(old.done)
        if before is not None:
            await _settled(before.done)
        if not req.aborted:
            self._write(m9.Rflush(tag=req.tag))

    def _flush_finished(self, req: _Request, task: asyncio.Task[None]) -> None:
        if self._flush_chain.get(req.chain) is req:
            del self._flush_chain[req.chain]
        if self._requests.get(req.tag) is req:
            del self._requests[req.tag]
        if not req.done.done():
            req.done.set_result(None)

    # -- helpers -----------------------------------------------------------------------------

    def _fid(self, number: int) -> Fid:
        fid = self._fids.get(number)
        if fid is None:
            raise _err(errno.EBADF, f"unknown fid {number}")
        return fid

    def _new_fid_ok(self, number: int) -> None:
        if number == NOFID:
            raise _err(errno.EBADF, "NOFID cannot name a file")
        if number in self._fids:
            raise _err(errno.EBADF, f"fid {number} in use")
        if len(self._fids) >= self.limits.max_fids:
            raise _err(errno.EMFILE, f"more than {self.limits.max_fids} fids")

    @staticmethod
    def _unopened(fid: Fid) -> None:
        if fid.opened is not None or fid.xattr is not None:
            raise _err(errno.EBADF, f"fid {fid.number} is open")

    @staticmethod
    def _opened_for(fid: Fid, what: str) -> None:
        """Record locks and fsync work on open files (fcntl and fsync(2) take descriptors):
        through a fid that is not open they are EBADF, as diod answers
        (tests/spawn/test_ninep_diff.py)."""
        if fid.opened is None or fid.xattr is not None:
            raise _err(errno.EBADF, f"{what}: fid {fid.number} is not open")

    @staticmethod
    async def _call(fid: Fid, op: str, *args: Any, **kw: Any) -> Any:
        """Engine operation *op* as the fid's attach (the engine checks permissions)."""
        return await fid.att.link.call(op, fid.att.cred, *args, **kw)

    @staticmethod
    async def _call_as(fid: Fid, cred: Cred, op: str, *args: Any, **kw: Any) -> Any:
        return await fid.att.link.call(op, cred, *args, **kw)

    def _qid(self, a: Attr) -> Qid:
        """path = inode number (stable, never reused: invariant 7); version = the low 32
        bits of ctime_ns, which every change of the file moves; type from the mode."""
        fmt = stat.S_IFMT(a.mode)
        if fmt == stat.S_IFDIR:
            t = m9.QTDIR
        elif fmt == stat.S_IFLNK and self.dialect is not Dialect.BASE:
            t = m9.QTSYMLINK
        else:
            t = m9.QTFILE
        return Qid(type=t, version=a.ctime_ns & 0xFFFFFFFF, path=a.ino)

    @property
    def iounit(self) -> int:
        return self.msize - IOHDRSZ

    def _gid(self, att: Attachment, wanted: int) -> int:
        """The group of a file a 9P2000.L request creates: the one the client asks for when
        the attach may use it, else the attach's own."""
        if wanted == att.gid or wanted in att.groups or (att.uid == 0 and wanted != NONUNAME):
            return wanted
        return att.gid

    async def _child_of(self, fid: Fid) -> tuple[int, bytes]:
        """(parent inode, name) of the fid's file, checked to still name that file: the fid's
        path may be stale after another client's rename, and acting on whatever now holds
        the name would hit another file."""
        parent = fid.parent
        if parent is None:
            raise _err(errno.EBUSY, "the attach root has no name to change")
        a = await self._call(fid, "lookup", parent, fid.name)
        if a.ino != fid.ino:
            raise _err(errno.ESTALE, "the file has been renamed or removed")
        return parent, fid.name

    async def _release(self, fid: Fid, *, commit: bool = True) -> None:
        """What a clunk does after the fid is gone from the table: drop its locks, set a
        pending xattr (when *commit*), remove an ORCLOSE file, release the engine's open
        count. Errors are raised after the release, for the Rclunk to report."""
        fid.att.locks.release(lambda lk: lk.token is fid)
        try:
            x = fid.xattr
            if commit and isinstance(x, XattrWrite):
                await self._commit_xattr(fid, x)
            if fid.opened is not None and fid.opened.rclose:
                await self._remove(fid)
        finally:
            if fid.opened is not None and fid.opened.counted:
                fid.opened.counted = False
                await self._call(fid, "release", fid.ino)

    async def _commit_xattr(self, fid: Fid, x: XattrWrite) -> None:
        if x.size == 0 and not x.flags & XATTR_CREATE:
            # Linux's removexattr arrives as an empty create: the attribute goes, and an
            # absent one is ENODATA, as diod answers (tests/spawn/test_ninep_vs_diod.py)
            await self._call(fid, "removexattr", fid.ino, x.name)
            return
        await self._call(fid, "setxattr", fid.ino, x.name, bytes(x.data),
                         create=bool(x.flags & XATTR_CREATE), replace=bool(x.flags & XATTR_REPLACE))

    async def _remove(self, fid: Fid) -> None:
        parent, name = await self._child_of(fid)
        a = await self._call(fid, "getattr", fid.ino)
        await self._call(fid, "rmdir" if stat.S_ISDIR(a.mode) else "unlink", parent, name)

    # -- version, auth, attach, walk, clunk, remove ---------------------------------------

    async def _h_auth(self, req: _Request, m: m9.Tauth) -> Message:
        """No 9P authentication: identity comes from the transport. An error makes clients
        attach with afid NOFID (diod's tools read Rlerror ENOENT that way)."""
        raise Explained(errno.ENOENT, "authentication not required")

    async def _h_attach(self, req: _Request, m: m9.Tattach) -> Message:
        self._new_fid_ok(m.fid)
        if m.afid != NOFID:
            raise _err(errno.EBADF, "no authentication fids: attach with afid NOFID")
        try:
            att = await self._resolve(m.uname, m.aname, m.n_uname)
        except PermissionError as e:
            raise _err(errno.EACCES, str(e) or None) from None
        except LookupError as e:
            raise _err(errno.ENOENT, str(e) or None) from None
        a = await att.link.call("getattr", att.cred, att.root)
        self._new_fid_ok(m.fid)
        self._fids[m.fid] = Fid(m.fid, att, [(att.root, b"/")])
        self._table_refs[id(att.locks)] = att.locks
        return m9.Rattach(tag=m.tag, qid=self._qid(a))

    async def _h_walk(self, req: _Request, m: m9.Twalk) -> Message:
        """walk(5): all names or an error for the first; a partial walk answers the qids it
        got and leaves newfid unmade. ``..`` pops the fid's path and stays at the root.

        walk(5) forbids walking from an open fid. 9P2000.L relaxes that for a walk to another
        fid, as diod does (its diodls walks from the directory it reads): the open fid stays
        as it is."""
        fid = self._fid(m.fid)
        if self.dialect is not Dialect.LINUX or m.newfid == m.fid or fid.xattr is not None:
            self._unopened(fid)
        if m.newfid != m.fid:
            self._new_fid_ok(m.newfid)
        path = list(fid.path)
        qids = []
        for i, name in enumerate(m.wnames):
            try:
                path, a = await self._step(fid, path, name)
            except OSError:
                if i == 0:
                    raise
                break
            qids.append(self._qid(a))
        if len(qids) == len(m.wnames):
            if m.newfid == m.fid:
                fid.path = path
            else:
                self._new_fid_ok(m.newfid)
                self._fids[m.newfid] = Fid(m.newfid, fid.att, path)
        return m9.Rwalk(tag=m.tag, wqids=tuple(qids))

    async def _step(self, fid: Fid, path: list[tuple[int, bytes]],
                    name: bytes) -> tuple[list[tuple[int, bytes]], Attr]:
        if name == b"..":
            # a file has no "..": ENOTDIR, as lookup(2) and diod answer
            a = await self._call(fid, "getattr", path[-1][0])
            if not stat.S_ISDIR(a.mode):
                raise _err(errno.ENOTDIR)
            if len(path) > 1:
                path = path[:-1]
                a = await self._call(fid, "getattr", path[-1][0])
            return path, a
        if not name or b"/" in name or b"\0" in name:
            raise _err(errno.EINVAL, f"bad name {name!r}")
        if name == b".":
            a = await self._call(fid, "getattr", path[-1][0])
            if not stat.S_ISDIR(a.mode):
                raise _err(errno.ENOTDIR)
            return path, a
        a = await self._call(fid, "lookup", path[-1][0], name)
        return [*path, (a.ino, name)], a

    async def _h_clunk(self, req: _Request, m: m9.Tclunk) -> Message:
        """clunk(5): the fid is gone whatever happens; an error of what the clunk does (an
        xattr set, an ORCLOSE removal) is still reported."""
        fid = self._fid(m.fid)
        del self._fids[m.fid]
        await self._release(fid)
        return m9.Rclunk(tag=m.tag)

    async def _h_remove(self, req: _Request, m: m9.Tremove) -> Message:
        """remove(5): remove the file and clunk the fid, even if the remove fails."""
        fid = self._fid(m.fid)
        del self._fids[m.fid]
        try:
            if fid.xattr is not None:
                raise _err(errno.EINVAL, "an xattr fid names no file to remove")
            await self._remove(fid)
        finally:
            if fid.opened is not None:
                fid.opened.rclose = False
            await self._release(fid, commit=False)
        return m9.Rremove(tag=m.tag)

    # -- reading and writing -----------------------------------------------------------------

    async def _h_read(self, req: _Request, m: m9.Tread) -> Message | PlainRead:
        fid = self._fid(m.fid)
        count = min(m.count, self.msize - RHDR)
        x = fid.xattr
        if isinstance(x, XattrRead):
            return m9.Rread(tag=m.tag, data=x.data[m.offset:m.offset + count])
        o = fid.opened
        if o is None or not o.read or x is not None:
            raise _err(errno.EBADF, "fid not open for reading")
        if o.dir:
            if self.dialect is Dialect.LINUX:
                raise _err(errno.EISDIR, "read a directory with Treaddir")
            return m9.Rread(tag=m.tag, data=await self._read_dir(req, fid, m.offset, count))
        if o.link:  # 9P2000 has no symlinks: reading one gives its target (docs/9p.md)
            target = await self._call(fid, "readlink", fid.ino)
            return m9.Rread(tag=m.tag, data=target[m.offset:m.offset + count])
        plain = getattr(fid.att.link, "read_plain", None)
        if plain is not None:  # bytes the kernel can send (docs/9p.md, "Reads the kernel serves")
            r = plain(fid.att.cred, fid.ino, m.offset, count)
            if r is not None:
                return PlainRead(m.tag, r)
        data = await self._call(fid, "read", fid.ino, m.offset, count)
        return m9.Rread(tag=m.tag, data=data)

    def _read_now(self, frame: bytes) -> bool:
        """Answer a Tread from decoded memory at once (docs/9p.md, "Reads the kernel
        serves"), without a request's bookkeeping: called only while no request is in
        flight, when every turn is free and ``_start`` would run ``_h_read`` to its end
        right here too. False: nothing was done; the frame takes the ordinary way."""
        if self.dialect is None:
            return False
        tag, number, offset, count = _TREAD_BODY.unpack_from(frame, 5)
        fid = self._fids.get(number)
        if fid is None or fid.xattr is not None:
            return False
        o = fid.opened
        if o is None or not o.read or o.dir or o.link:
            return False
        plain = getattr(fid.att.link, "read_plain", None)
        r = None if plain is None else plain(fid.att.cred, fid.ino, offset, min(count, self.msize - RHDR))
        if r is None:
            return False
        self._received += 1
        self._write(PlainRead(tag, r))
        return True

    async def _read_dir(self, req: _Request, fid: Fid, offset: int, count: int) -> bytes:
        """read(5) of a directory: whole stat entries only; offset 0 (re)starts the listing,
        any other offset must be the previous offset plus the count returned."""
        if offset == 0:
            fid.listing = Listing(await self._call(fid, "readdir", fid.ino))
        listing = fid.listing
        if listing is None or offset != listing.offset:
            raise _err(errno.EINVAL, "bad offset in directory read")
        out: list[bytes] = []
        size = 0
        i = listing.index
        while i < len(listing.entries):
            name, a = listing.entries[i]
            b = encode_stat(await self._stat(fid, a, name), self.dialect or Dialect.BASE)
            if size + len(b) > count:
                break
            out.append(b)
            size += len(b)
            i += 1
        if not out and i < len(listing.entries):
            raise _err(errno.EINVAL, "count too small for one directory entry")
        listing.index = i
        listing.offset += size
        return b"".join(out)

    async def _h_write(self, req: _Request, m: m9.Twrite) -> Message:
        fid = self._fid(m.fid)
        x = fid.xattr
        if isinstance(x, XattrWrite):
            # as diod: the value is the announced size, zero-filled; a write keeps what fits
            # (count 0 past the end) and the clunk sets the whole value
            n = max(0, min(len(m.data), x.size - m.offset))
            x.data[m.offset:m.offset + n] = m.data[:n]
            return m9.Rwrite(tag=m.tag, count=n)
        o = fid.opened
        if o is None or not o.write or x is not None:
            raise _err(errno.EBADF, "fid not open for writing")
        if m.offset + len(m.data) > MAX_FILE:
            raise _err(errno.EFBIG)
        n = await self._call(fid, "write", fid.ino, m.offset, m.data, append=o.append)
        return m9.Rwrite(tag=m.tag, count=n)

    # -- 9P2000 and 9P2000.u: open, create, stat, wstat ------------------------------------

    async def _h_open(self, req: _Request, m: m9.Topen) -> Message:
        fid = self._fid(m.fid)
        self._unopened(fid)
        mode = m.mode
        access = mode & 3
        read = access in (m9.OREAD, m9.ORDWR, m9.OEXEC)
        write = access in (m9.OWRITE, m9.ORDWR)
        a = await self._call(fid, "getattr", fid.ino)
        rclose = bool(mode & m9.ORCLOSE)
        if stat.S_ISDIR(a.mode):
            if write or mode & m9.OTRUNC:
                raise _err(errno.EISDIR, "directories open for reading only")
            fid.opened = Opened(read=True, write=False, dir=True, rclose=rclose)
            fid.listing = None
            return m9.Ropen(tag=m.tag, qid=self._qid(a), iounit=self.iounit)
        if stat.S_ISLNK(a.mode) and self.dialect is Dialect.BASE:
            # 9P2000 knows no symlinks: the link reads as a file holding its target, so
            # copying a tree through a 9P2000 client keeps something of every entry
            if write or mode & m9.OTRUNC:
                raise _err(errno.EACCES, "a symlink is read-only in 9P2000")
            fid.opened = Opened(read=True, write=False, rclose=rclose, link=True)
            return m9.Ropen(tag=m.tag, qid=self._qid(a), iounit=self.iounit)
        append = bool(mode & m9.OAPPEND) and self.dialect is Dialect.UNIX
        flags = _OPEN_FLAGS[mode & 3] | (os.O_TRUNC if mode & m9.OTRUNC else 0)
        a = await self._call(fid, "open", fid.ino, flags)
        fid.opened = Opened(read=read, write=write, append=append, rclose=rclose, counted=True)
        return m9.Ropen(tag=m.tag, qid=self._qid(a), iounit=self.iounit)

    async def _h_create(self, req: _Request, m: m9.Tcreate) -> Message:
        """create(5): make *name* in the fid's directory; the fid becomes the new file, open
        in *mode*. 9P2000.u's perm bits and extension make symlinks (DMSYMLINK, target in
        extension), hard links (DMLINK, extension the decimal fid of the target) and device
        nodes (DMDEVICE "b|c major minor", DMNAMEDPIPE, DMSOCKET). In 9P2000 the permission
        is masked by the directory's, as create(5) says; in .u the client has applied its
        umask and the bits are taken as sent."""
        fid = self._fid(m.fid)
        self._unopened(fid)
        d = await self._call(fid, "getattr", fid.ino)
        if not stat.S_ISDIR(d.mode):
            raise _err(errno.ENOTDIR, "create in a file")
        perm, mode = m.perm, m.mode
        access = mode & 3
        read = access in (m9.OREAD, m9.ORDWR, m9.OEXEC)
        write = access in (m9.OWRITE, m9.ORDWR)
        bits = perm & 0o777
        if self.dialect is Dialect.UNIX:
            bits |= _suid_bits(perm)
        dot_u = self.dialect is Dialect.UNIX
        counted = False
        if perm & m9.DMDIR:
            if write or mode & m9.OTRUNC:
                raise _err(errno.EISDIR, "a new directory opens for reading only")
            if self.dialect is Dialect.BASE:
                bits = perm & (~0o777 | (d.mode & 0o777)) & 0o777
            a = await self._call(fid, "mkdir", fid.ino, m.name, bits)
        elif dot_u and perm & m9.DMSYMLINK:
            a = await self._call(fid, "symlink", fid.ino, m.name, m.extension)
        elif dot_u and perm & m9.DMLINK:
            target = self._fid(_parse_fid(m.extension))
            await self._call(fid, "link", target.ino, fid.ino, m.name)
            a = await self._call(fid, "lookup", fid.ino, m.name)
        elif dot_u and perm & (m9.DMDEVICE | m9.DMNAMEDPIPE | m9.DMSOCKET):
            fmt, rdev = _special(perm, m.extension)
            a = await self._call(fid, "mknod", fid.ino, m.name, fmt | bits, rdev)
        else:
            if self.dialect is Dialect.BASE:
                bits = perm & (~0o666 | (d.mode & 0o666)) & 0o777
            a = await self._call(fid, "create", fid.ino, m.name, bits, open=True)
            counted = True
        fid.path = [*fid.path, (a.ino, m.name)]
        is_dir = stat.S_ISDIR(a.mode)
        append = bool(mode & m9.OAPPEND) and dot_u
        fid.opened = Opened(read=read or is_dir, write=write and not is_dir, dir=is_dir,
                            append=append, rclose=bool(mode & m9.ORCLOSE), counted=counted)
        return m9.Rcreate(tag=m.tag, qid=self._qid(a), iounit=self.iounit)

    async def _stat(self, fid: Fid, a: Attr, name: bytes) -> Stat:
        """stat(5) of *a*: uid and gid as decimal strings (grid has no user names here);
        9P2000.u adds the numbers, setuid bits, file types and the symlink or device
        extension."""
        fmt = stat.S_IFMT(a.mode)
        mode = a.mode & 0o777
        if fmt == stat.S_IFDIR:
            mode |= m9.DMDIR
        dot_u = self.dialect is Dialect.UNIX
        ext = b""
        if dot_u:
            mode |= _dm_suid(a.mode)
            if fmt == stat.S_IFLNK:
                mode |= m9.DMSYMLINK
                ext = await self._call(fid, "readlink", a.ino)
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                mode |= m9.DMDEVICE
                kind = b"c" if fmt == stat.S_IFCHR else b"b"
                ext = b"%s %d %d" % (kind, os.major(a.rdev), os.minor(a.rdev))
            elif fmt == stat.S_IFIFO:
                mode |= m9.DMNAMEDPIPE
            elif fmt == stat.S_IFSOCK:
                mode |= m9.DMSOCKET
        uid, gid = str(a.uid).encode(), str(a.gid).encode()
        extra: dict[str, Any] = {}
        if dot_u:
            extra = {"extension": ext, "n_uid": a.uid & 0xFFFFFFFF, "n_gid": a.gid & 0xFFFFFFFF,
                     "n_muid": a.uid & 0xFFFFFFFF}
        return Stat(type=0, dev=0, qid=self._qid(a), mode=mode, atime=_u32_sec(a.atime_ns),
                    mtime=_u32_sec(a.mtime_ns), length=0 if fmt == stat.S_IFDIR else a.size,
                    name=name, uid=uid, gid=gid, muid=uid, **extra)

    async def _h_stat(self, req: _Request, m: m9.Tstat) -> Message:
        fid = self._fid(m.fid)
        a = await self._call(fid, "getattr", fid.ino)
        return m9.Rstat(tag=m.tag, stat=await self._stat(fid, a, fid.name))

    async def _h_wstat(self, req: _Request, m: m9.Twstat) -> Message:
        """stat(5)'s wstat, all or nothing: every field is checked before anything changes;
        then the rename (if the name changes, within the directory, never over an existing
        file), then one engine setattr for mode, times, length and owner; if that fails the
        rename is undone. ``~0`` and empty strings mean "don't touch"."""
        fid = self._fid(m.fid)
        s = m.stat
        a = await self._call(fid, "getattr", fid.ino)
        cur = await self._stat(fid, a, fid.name)
        is_dir = stat.S_ISDIR(a.mode)
        if s.type not in (0xFFFF, cur.type) or s.dev not in (0xFFFFFFFF, cur.dev):
            raise _err(errno.EPERM, "wstat cannot change type or dev")
        q = s.qid
        if (q.type, q.version, q.path) != (0xFF, 0xFFFFFFFF, _U64) and q.path != a.ino:
            raise _err(errno.EPERM, "wstat cannot change the qid")
        if s.muid not in (b"", cur.muid):
            raise _err(errno.EPERM, "wstat cannot change muid")
        kw: dict[str, int] = {}
        if s.mode != 0xFFFFFFFF:
            if bool(s.mode & m9.DMDIR) != is_dir:
                raise _err(errno.EPERM, "wstat cannot change the directory bit")
            if self.dialect is Dialect.UNIX:
                kw["mode"] = (s.mode & 0o777) | _suid_bits(s.mode)
            else:
                kw["mode"] = (a.mode & 0o7000) | (s.mode & 0o777)
        if s.atime != 0xFFFFFFFF:
            kw["atime_ns"] = s.atime * 1_000_000_000
        if s.mtime != 0xFFFFFFFF:
            kw["mtime_ns"] = s.mtime * 1_000_000_000
        if s.length != _U64:
            if is_dir:
                if s.length != 0:
                    raise _err(errno.EISDIR, "a directory has no length to set")
            elif stat.S_ISREG(a.mode):
                if s.length > MAX_FILE:
                    raise _err(errno.EFBIG)
                kw["size"] = s.length
            else:
                raise _err(errno.EINVAL, "only regular files have a length to set")
        uid = _owner(s.uid, s.n_uid, a.uid, "uid")
        gid = _owner(s.gid, s.n_gid, a.gid, "gid")
        if uid is not None:
            kw["uid"] = uid
        if gid is not None:
            kw["gid"] = gid
        rename: tuple[int, bytes, bytes] | None = None
        if s.name not in (b"", fid.name):
            _check_name(s.name)
            parent, old = await self._child_of(fid)
            try:
                await self._call(fid, "lookup", parent, s.name)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
            else:
                raise _err(errno.EEXIST, "a file of that name exists")
            rename = (parent, old, s.name)
        if rename is not None:
            parent, old, new = rename
            await self._call(fid, "rename", parent, old, parent, new, noreplace=True)
            fid.path = [*fid.path[:-1], (fid.ino, new)]
        if not kw and rename is None:
            await self._call(fid, "fsync")  # stat(5): a wstat that changes nothing syncs
        elif kw:
            try:
                await self._call(fid, "setattr", fid.ino, **kw)
            except OSError:
                if rename is not None:
                    parent, old, new = rename
                    with contextlib.suppress(OSError):
                        await self._call(fid, "rename", parent, new, parent, old, noreplace=True)
                        fid.path = [*fid.path[:-1], (fid.ino, old)]
                raise
        return m9.Rwstat(tag=m.tag)

    # -- 9P2000.L --------------------------------------------------------------------------

    async def _h_lopen(self, req: _Request, m: m9.Tlopen) -> Message:
        fid = self._fid(m.fid)
        self._unopened(fid)
        access = m.flags & L_ACCMODE
        if access == L_ACCMODE:
            raise _err(errno.EINVAL, "bad access mode")
        a = await self._call(fid, "getattr", fid.ino)
        if stat.S_ISDIR(a.mode):
            if access != 0 or m.flags & L_TRUNC:  # open(2): EISDIR, as diod answers
                raise _err(errno.EISDIR)
            fid.opened = Opened(read=True, write=False, dir=True)
            fid.listing = None
            return m9.Rlopen(tag=m.tag, qid=self._qid(a), iounit=self.iounit)
        if m.flags & L_DIRECTORY:
            raise _err(errno.ENOTDIR)
        a = await self._call(fid, "open", fid.ino, m.flags & (L_ACCMODE | L_TRUNC))
        fid.opened = Opened(read=access != L_WRONLY, write=access in (L_WRONLY, L_RDWR),
                            append=bool(m.flags & L_APPEND), counted=True)
        return m9.Rlopen(tag=m.tag, qid=self._qid(a), iounit=self.iounit)

    async def _h_lcreate(self, req: _Request, m: m9.Tlcreate) -> Message:
        fid = self._fid(m.fid)
        self._unopened(fid)
        access = m.flags & L_ACCMODE
        if access == L_ACCMODE:
            raise _err(errno.EINVAL, "bad access mode")
        att = fid.att
        try:
            a = await self._call_as(fid, att.as_gid(self._gid(att, m.gid)), "create", fid.ino,
                                    m.name, m.mode & 0o7777, open=True)
        except FileExistsError:
            # open(2)'s O_CREAT without O_EXCL, as diod does it: the file there is opened
            # (and truncated if asked), with the permission checks of an open
            if m.flags & L_EXCL:
                raise
            found = await self._call(fid, "lookup", fid.ino, m.name)
            if stat.S_ISDIR(found.mode):
                raise _err(errno.EISDIR, "a directory") from None
            if stat.S_ISLNK(found.mode):
                raise _err(errno.EEXIST, "a symlink (the client follows links)") from None
            a = await self._call(fid, "open", found.ino, m.flags & (L_ACCMODE | L_TRUNC))
        fid.path = [*fid.path, (a.ino, m.name)]
        fid.opened = Opened(read=access != L_WRONLY, write=access in (L_WRONLY, L_RDWR),
                            append=bool(m.flags & L_APPEND), counted=True)
        return m9.Rlcreate(tag=m.tag, qid=self._qid(a), iounit=self.iounit)

    async def _h_getattr(self, req: _Request, m: m9.Tgetattr) -> Message:
        """Every basic field is always valid (the engine has them all in one read);
        btime, gen and data_version are not given."""
        fid = self._fid(m.fid)
        a = await self._call(fid, "getattr", fid.ino)
        at, mt, ct = (_sec_nsec(ns) for ns in (a.atime_ns, a.mtime_ns, a.ctime_ns))
        return m9.Rgetattr(
            tag=m.tag, valid=GetattrMask.BASIC, qid=self._qid(a), mode=a.mode, uid=a.uid,
            gid=a.gid, nlink=a.nlink, rdev=a.rdev, size=a.size, blksize=BLKSIZE,
            blocks=a.blocks, atime_sec=at[0], atime_nsec=at[1], mtime_sec=mt[0],
            mtime_nsec=mt[1], ctime_sec=ct[0], ctime_nsec=ct[1])

    async def _h_setattr(self, req: _Request, m: m9.Tsetattr) -> Message:
        """One engine setattr for every selected field (so it is one change). A time bit
        without its _SET bit means now; CTIME alone just touches the file."""
        fid = self._fid(m.fid)
        v = m.valid
        kw: dict[str, int] = {}
        if v & SetattrMask.MODE:
            kw["mode"] = m.mode & 0o7777
        if v & SetattrMask.UID:
            kw["uid"] = m.uid
        if v & SetattrMask.GID:
            kw["gid"] = m.gid
        if v & SetattrMask.SIZE:
            kw["size"] = m.size
        if v & SetattrMask.SIZE and m.size > MAX_FILE:
            raise _err(errno.EFBIG)
        if v & SetattrMask.ATIME:
            kw["atime_ns"] = (_time_ns(m.atime_sec, m.atime_nsec)
                              if v & SetattrMask.ATIME_SET else NOW)
        if v & SetattrMask.MTIME:
            kw["mtime_ns"] = (_time_ns(m.mtime_sec, m.mtime_nsec)
                              if v & SetattrMask.MTIME_SET else NOW)
        await self._call(fid, "setattr", fid.ino, **kw)
        return m9.Rsetattr(tag=m.tag)

    async def _h_readdir(self, req: _Request, m: m9.Treaddir) -> Message:
        """Entries ``.``, ``..`` and the directory's, from a snapshot taken at offset 0; an
        entry's offset is the cookie of the one after it (its index + 1), so a listing pass
        neither skips nor repeats while the directory changes."""
        fid = self._fid(m.fid)
        if fid.opened is None or not fid.opened.dir:
            # an open file: EINVAL, as diod answers (tests/spawn/test_ninep_diff.py)
            raise _err(errno.EINVAL if fid.opened is not None else errno.EBADF,
                       "readdir needs a directory opened with Tlopen")
        if m.offset == 0 or fid.listing is None:
            here = await self._call(fid, "getattr", fid.ino)
            up = fid.path[-2][0] if len(fid.path) > 1 else fid.ino
            parent = here if up == fid.ino else await self._call(fid, "getattr", up)
            entries = await self._call(fid, "readdir", fid.ino)
            fid.listing = Listing([(b".", here), (b"..", parent), *entries])
        entries = fid.listing.entries
        count = min(m.count, self.msize - RHDR)
        out: list[bytes] = []
        size = 0
        i = m.offset
        while i < len(entries):
            name, a = entries[i]
            b = encode_dirent(Dirent(qid=self._qid(a), offset=i + 1,
                                     type=_DT_OF_FMT.get(stat.S_IFMT(a.mode), m9.DT_UNKNOWN),
                                     name=name))
            if size + len(b) > count:
                break
            out.append(b)
            size += len(b)
            i += 1
        if not out and i < len(entries):
            raise _err(errno.EINVAL, "count too small for one directory entry")
        return m9.Rreaddir(tag=m.tag, data=b"".join(out))

    async def _h_statfs(self, req: _Request, m: m9.Tstatfs) -> Message:
        fid = self._fid(m.fid)
        total, free, avail = await self._call(fid, "statfs")
        return m9.Rstatfs(tag=m.tag, type=V9FS_MAGIC, bsize=4096, blocks=total // 4096,
                          bfree=free // 4096, bavail=avail // 4096, files=1 << 32,
                          ffree=(1 << 32) - 1, fsid=fid.att.fsid & _U64, namelen=NAME_MAX)

    async def _h_fsync(self, req: _Request, m: m9.Tfsync) -> Message:
        fid = self._fid(m.fid)
        self._opened_for(fid, "fsync")
        await self._call(fid, "fsync")
        return m9.Rfsync(tag=m.tag)

    async def _h_readlink(self, req: _Request, m: m9.Treadlink) -> Message:
        fid = self._fid(m.fid)
        return m9.Rreadlink(tag=m.tag, target=await self._call(fid, "readlink", fid.ino))

    async def _h_symlink(self, req: _Request, m: m9.Tsymlink) -> Message:
        fid = self._fid(m.fid)
        att = fid.att
        a = await self._call_as(fid, att.as_gid(self._gid(att, m.gid)), "symlink", fid.ino, m.name,
                                m.symtgt)
        return m9.Rsymlink(tag=m.tag, qid=self._qid(a))

    async def _h_mknod(self, req: _Request, m: m9.Tmknod) -> Message:
        fid = self._fid(m.dfid)
        att = fid.att
        try:
            rdev = os.makedev(m.major, m.minor)
        except (OverflowError, ValueError):
            raise _err(errno.EINVAL, "device numbers out of range") from None
        a = await self._call_as(fid, att.as_gid(self._gid(att, m.gid)), "mknod", fid.ino, m.name,
                                m.mode, rdev)
        return m9.Rmknod(tag=m.tag, qid=self._qid(a))

    async def _h_mkdir(self, req: _Request, m: m9.Tmkdir) -> Message:
        fid = self._fid(m.dfid)
        att = fid.att
        a = await self._call_as(fid, att.as_gid(self._gid(att, m.gid)), "mkdir", fid.ino, m.name,
                                m.mode & 0o7777)
        return m9.Rmkdir(tag=m.tag, qid=self._qid(a))

    async def _h_link(self, req: _Request, m: m9.Tlink) -> Message:
        d, target = self._fid(m.dfid), self._fid(m.fid)
        _same_spawn(d, target)
        await self._call(d, "link", target.ino, d.ino, m.name)
        return m9.Rlink(tag=m.tag)

    async def _h_rename(self, req: _Request, m: m9.Trename) -> Message:
        fid, d = self._fid(m.fid), self._fid(m.dfid)
        _same_spawn(fid, d)
        parent, old = await self._child_of(fid)
        await self._call(fid, "rename", parent, old, d.ino, m.name)
        fid.path = [*d.path, (fid.ino, m.name)]
        return m9.Rrename(tag=m.tag)

    async def _h_renameat(self, req: _Request, m: m9.Trenameat) -> Message:
        old, new = self._fid(m.olddirfid), self._fid(m.newdirfid)
        _same_spawn(old, new)
        await self._call(old, "rename", old.ino, m.oldname, new.ino, m.newname)
        return m9.Rrenameat(tag=m.tag)

    async def _h_unlinkat(self, req: _Request, m: m9.Tunlinkat) -> Message:
        fid = self._fid(m.dirfid)
        if m.flags & ~m9.AT_REMOVEDIR:
            raise _err(errno.EINVAL, "unknown unlinkat flags")
        op = "rmdir" if m.flags & m9.AT_REMOVEDIR else "unlink"
        await self._call(fid, op, fid.ino, m.name)
        return m9.Runlinkat(tag=m.tag)

    async def _h_xattrwalk(self, req: _Request, m: m9.Txattrwalk) -> Message:
        """newfid reads one xattr's value, or with an empty name the list of names (each
        NUL-terminated, as listxattr(2) returns them)."""
        fid = self._fid(m.fid)
        if m.newfid != m.fid:
            self._new_fid_ok(m.newfid)
        if m.name:
            data = await self._call(fid, "getxattr", fid.ino, m.name)
        else:
            data = b"".join(n + b"\0" for n in await self._call(fid, "listxattr", fid.ino))
        new = Fid(m.newfid, fid.att, list(fid.path), xattr=XattrRead(data))
        if m.newfid == m.fid:
            await self._release(fid, commit=False)
        else:
            self._new_fid_ok(m.newfid)
        self._fids[m.newfid] = new
        return m9.Rxattrwalk(tag=m.tag, size=len(data))

    async def _h_xattrcreate(self, req: _Request, m: m9.Txattrcreate) -> Message:
        fid = self._fid(m.fid)
        self._unopened(fid)
        if not m.name:
            raise _err(errno.EINVAL, "empty xattr name")
        if m.attr_size > XATTR_SIZE_MAX:
            raise _err(errno.E2BIG, f"xattr values are at most {XATTR_SIZE_MAX} bytes")
        if m.flags & ~(XATTR_CREATE | XATTR_REPLACE):
            raise _err(errno.EINVAL, "unknown xattr flags")
        fid.xattr = XattrWrite(m.name, m.attr_size, m.flags, bytearray(m.attr_size))
        return m9.Rxattrcreate(tag=m.tag)

    async def _h_lock(self, req: _Request, m: m9.Tlock) -> Message:
        """A POSIX record lock in the spawn's table. Without BLOCK a conflict answers
        BLOCKED (Linux: EAGAIN). With BLOCK the request waits here until it can take the
        lock, and a Tflush stops the wait (Linux sends one when the process gets a fatal
        signal); only when ``max_lock_waits`` requests already wait is BLOCKED answered,
        which Linux retries after its lock timeout."""
        fid = self._fid(m.fid)
        self._opened_for(fid, "lock")
        if m.type not in (LockType.RDLCK, LockType.WRLCK, LockType.UNLCK):
            raise _err(errno.EINVAL, "bad lock type")
        if m.flags & ~(LockFlags.BLOCK | LockFlags.RECLAIM):
            raise _err(errno.EINVAL, "bad lock flags")
        start, end = span(m.start, m.length)
        owner = (self.id, m.client_id, m.proc_id)
        table = fid.att.locks
        while True:
            if table.set(fid.ino, owner, LockType(m.type), start, end, token=fid,
                         proc_id=m.proc_id, client_id=m.client_id):
                return m9.Rlock(tag=m.tag, status=LockStatus.SUCCESS)
            if not m.flags & LockFlags.BLOCK or self._lock_waits >= self._max_lock_waits:
                return m9.Rlock(tag=m.tag, status=LockStatus.BLOCKED)
            self._lock_waits += 1
            try:
                await self._wait(req, table.changed(fid.ino))
            finally:
                self._lock_waits -= 1

    async def _h_getlock(self, req: _Request, m: m9.Tgetlock) -> Message:
        fid = self._fid(m.fid)
        self._opened_for(fid, "getlock")
        if m.type not in (LockType.RDLCK, LockType.WRLCK, LockType.UNLCK):
            raise _err(errno.EINVAL, "bad lock type")
        start, end = span(m.start, m.length)
        owner = (self.id, m.client_id, m.proc_id)
        lk = fid.att.locks.conflict(fid.ino, owner, LockType(m.type), start, end)
        if lk is None:
            return m9.Rgetlock(tag=m.tag, type=LockType.UNLCK, start=m.start, length=m.length,
                               proc_id=m.proc_id, client_id=m.client_id)
        return m9.Rgetlock(tag=m.tag, type=lk.type, start=lk.start, length=lk.length,
                           proc_id=lk.proc_id, client_id=lk.client_id)

    _HANDLERS: dict[type[Message], Callable[..., Awaitable[Message | PlainRead]]] = {}


Session._HANDLERS = {
    m9.Tauth: Session._h_auth,
    m9.Tattach: Session._h_attach,
    m9.Twalk: Session._h_walk,
    m9.Tclunk: Session._h_clunk,
    m9.Tremove: Session._h_remove,
    m9.Tread: Session._h_read,
    m9.Twrite: Session._h_write,
    m9.Topen: Session._h_open,
    m9.Tcreate: Session._h_create,
    m9.Tstat: Session._h_stat,
    m9.Twstat: Session._h_wstat,
    m9.Tlopen: Session._h_lopen,
    m9.Tlcreate: Session._h_lcreate,
    m9.Tgetattr: Session._h_getattr,
    m9.Tsetattr: Session._h_setattr,
    m9.Treaddir: Session._h_readdir,
    m9.Tstatfs: Session._h_statfs,
    m9.Tfsync: Session._h_fsync,
    m9.Treadlink: Session._h_readlink,
    m9.Tsymlink: Session._h_symlink,
    m9.Tmknod: Session._h_mknod,
    m9.Tmkdir: Session._h_mkdir,
    m9.Tlink: Session._h_link,
    m9.Trename: Session._h_rename,
    m9.Trenameat: Session._h_renameat,
    m9.Tunlinkat: Session._h_unlinkat,
    m9.Txattrwalk: Session._h_xattrwalk,
    m9.Txattrcreate: Session._h_xattrcreate,
    m9.Tlock: Session._h_lock,
    m9.Tgetlock: Session._h_getlock,
}


# --- small translations -----------------------------------------------------------------------


def negotiate(version: bytes) -> Dialect | None:
    """version(5): a dialect we speak exactly, else the part before the first ``.`` if that
    is 9P2000 (``9P2000.x`` -> 9P2000), else None (answered "unknown")."""
    exact = Dialect.from_wire(version)
    if exact is not None:
        return exact
    if version.split(b".", 1)[0] == Dialect.BASE.wire:
        return Dialect.BASE
    return None


def _check_name(name: bytes) -> None:
    if not name or len(name) > NAME_MAX or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise _err(errno.EINVAL, f"bad name {name!r}")


def _parse_fid(ext: bytes) -> int:
    try:
        return int(ext.strip())
    except ValueError:
        raise _err(errno.EINVAL, "DMLINK extension must be a fid number") from None


def _special(perm: int, ext: bytes) -> tuple[int, int]:
    """(S_IFMT, rdev) of a 9P2000.u special file from its perm bits and extension."""
    if perm & m9.DMNAMEDPIPE:
        return stat.S_IFIFO, 0
    if perm & m9.DMSOCKET:
        return stat.S_IFSOCK, 0
    parts = ext.split()
    if len(parts) != 3 or parts[0] not in (b"b", b"c"):
        raise _err(errno.EINVAL, "device extension must be 'b|c major minor'")
    try:
        major, minor = int(parts[1]), int(parts[2])
        rdev = os.makedev(major, minor)
    except (ValueError, OverflowError):
        raise _err(errno.EINVAL, "bad device numbers") from None
    return (stat.S_IFBLK if parts[0] == b"b" else stat.S_IFCHR), rdev


_SUID_PAIRS = ((m9.DMSETUID, stat.S_ISUID), (m9.DMSETGID, stat.S_ISGID),
               (m9.DMSETVTX, stat.S_ISVTX))


def _suid_bits(perm: int) -> int:
    """The setuid, setgid and sticky bits of a 9P2000.u perm, as Unix mode bits."""
    return sum(bit for dm, bit in _SUID_PAIRS if perm & dm)


def _dm_suid(mode: int) -> int:
    """The setuid, setgid and sticky bits of a Unix mode, as 9P2000.u perm bits."""
    return sum(dm for dm, bit in _SUID_PAIRS if mode & bit)


def _owner(text: bytes, number: int, current: int, what: str) -> int | None:
    """A wstat's uid or gid: the .u number if given, else a decimal string; None when
    untouched or unchanged."""
    if number != NONUNAME:
        return None if number == current else number
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise _err(errno.EINVAL, f"{what} {text!r} is not a number") from None
    return None if value == current else value


def _same_spawn(a: Fid, b: Fid) -> None:
    if a.att.link is not b.att.link:
        raise _err(errno.EXDEV, "the fids are in different spawns")


def _u32_sec(ns: int) -> int:
    return min(max(ns // 1_000_000_000, 0), 0xFFFFFFFF)


def _sec_nsec(ns: int) -> tuple[int, int]:
    sec, nsec = divmod(ns, 1_000_000_000)
    return sec & _U64, nsec


def _time_ns(sec: int, nsec: int) -> int:
    """A .L time (u64 seconds read as signed, as Linux sends them) in nanoseconds, within
    what the engine stores (a signed 64-bit count of nanoseconds: years 1678 to 2262)."""
    sec = sec - (1 << 64) if sec >= 1 << 63 else sec
    ns = sec * 1_000_000_000 + nsec
    if nsec >= 1_000_000_000 or not -(1 << 63) <= ns < 1 << 63:
        raise _err(errno.EINVAL, "time out of range")
    return ns


# --- listeners ---------------------------------------------------------------------------------


ResolverFactory = Callable[[Peer], Resolver]


class Listener:
    """A socket that runs one :class:`Session` per connection: for tests and simple
    deployments (the daemon hands its own connections to sessions). *resolver_for* gets the
    transport's :class:`Peer` and returns the resolver bound to that identity."""

    def __init__(self, resolver_for: ResolverFactory, limits: Limits | None = None) -> None:
        self.resolver_for = resolver_for
        self.limits = limits or Limits()
        self.sessions: set[Session] = set()
        self.server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_of(writer)
        session = Session(reader, writer, self.resolver_for(peer), limits=self.limits, peer=peer)
        self.sessions.add(session)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            if task is not None:
                self._tasks.discard(task)

    async def close(self) -> None:
        """Stop listening and end every session (each cleans up its fids)."""
        if self.server is not None:
            self.server.close()
        for s in list(self.sessions):
            s.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=30)
        if self.server is not None:
            await self.server.wait_closed()


def _peer_of(writer: asyncio.StreamWriter) -> Peer:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", raw)
            return Peer(uid=uid, gid=gid, pid=pid, address="unix")
        except OSError:
            return Peer(address="unix")
    addr = writer.get_extra_info("peername")
    return Peer(address=str(addr))


async def serve_unix(path: str | os.PathLike[str], resolver_for: ResolverFactory, *,
                     limits: Limits | None = None) -> Listener:
    """Listen on a Unix socket at *path*; each peer's uid/gid/pid (SO_PEERCRED) goes to
    *resolver_for*. Returns once listening; ``await listener.close()`` stops it."""
    lst = Listener(resolver_for, limits)
    lst.server = await asyncio.start_unix_server(lst._handle, path=os.fspath(path),
                                                 limit=STREAM_LIMIT)
    return lst


async def serve_tcp(host: str, port: int, resolver_for: ResolverFactory, *,
                    limits: Limits | None = None) -> Listener:
    """Listen on plain TCP (tests and clients that only speak TCP, such as p9fs: plain TCP
    carries no identity, so the resolver must grant by other means). ``port`` 0 picks one:
    read it from ``listener.server.sockets``."""
    lst = Listener(resolver_for, limits)
    lst.server = await asyncio.start_server(lst._handle, host=host, port=port,
                                            limit=STREAM_LIMIT)
    return lst
