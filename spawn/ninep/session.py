"""One 9P connection: its frames, its requests in flight, Tflush, and its replies.

:class:`SessionCore` is the part of a 9P server session that knows nothing of what a request
does: it receives the stream as whole frames (spawn/ninep/receiver.py), decodes each in the
dialect Tversion chose, starts each request where it arrives (as far as it goes without
waiting, then in a task of its own), keeps the per-fid turns, answers Tflush as flush(5) says,
and writes the replies. The requests
themselves are methods of the classes built on it (spawn/ninep/requests_common.py,
requests_9p2000.py, requests_linux.py), put together as ``spawn.ninep.server.Session``,
whose ``_HANDLERS`` maps each request type to its method. docs/9p.md, "Server".
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
import stat
from collections.abc import AsyncIterator, Awaitable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any

from spawn.cred import Cred
from spawn.engine import Attr
from spawn.ninep import messages as m9
from spawn.ninep import sendfile
from spawn.ninep.attachment import Attachment, Resolver
from spawn.ninep.codec import decode, encode
from spawn.ninep.errtext import Explained, text_of
from spawn.ninep.fids import Fid, Turn, Turns, XattrWrite, fid_fields
from spawn.ninep.locks import LockTable
from spawn.ninep.messages import (
    IOHDRSZ,
    MESSAGE_CLASSES,
    NOFID,
    NONUNAME,
    Dialect,
    LocalProtocolError,
    Message,
    MessageType,
    Qid,
    RemoteProtocolError,
)
from spawn.ninep.receiver import FrameReceiver
from spawn.ninep.sendfile import PlainRead

log = logging.getLogger(__name__)

MSIZE = (1 << 20) + IOHDRSZ  # what we offer: 1 MiB of data per Tread/Twrite
#: How much a connection buffers before it stops reading the socket: the StreamReader's
#: limit until the session starts (asyncio stops at twice this), then the whole frames
#: waiting for a request slot (spawn.ninep.receiver): one frame of our msize.
STREAM_LIMIT = MSIZE
MIN_MSIZE = 512  # the least a server may be configured with (a walk of 16 names fits)
#: The least msize a client may ask for, as diod accepts small ones: every reply is cut to
#: fit (error texts shortened; a directory read whose count cannot hold one entry is EINVAL).
VERSION_MIN = 128
RHDR = 11  # size[4] type[1] tag[2] count[4]: the header of Rread and Rreaddir
_TREAD_SIZE = 23  # a Tread: size[4] type[1] tag[2] fid[4] offset[8] count[4]
UNKNOWN = b"unknown"  # version(5): the answer to a version we do not speak
MAX_FILE = (1 << 63) - 1  # Linux's largest file offset (loff_t): beyond it, EFBIG

XATTR_CREATE = 1
XATTR_REPLACE = 2

_U64 = (1 << 64) - 1




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


class SessionCore:
    """One 9P connection, served until the peer closes it: everything but what each request
    does (the request classes built on this, joined as spawn.ninep.server.Session).

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
        self._rx = FrameReceiver.take(reader, writer, self.limits.msize, STREAM_LIMIT)
        self._rx.on_frames = self._frames_now
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
        self._rx.feed_eof()

    async def run(self) -> None:
        """Serve the connection until EOF, a broken frame or ``close()``."""
        self.log.debug("9P connection %d from %s", self.id, self.peer)
        try:
            while not self._closing:
                if not await self._rx.wait():
                    break
                self._batch = []  # replies of the requests here now go out in one write
                try:
                    while not self._closing and (frame := self._rx.next_frame()) is not None:
                        if not self._answered_now(frame):
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

    def _frames_now(self) -> None:
        """Frames arrived while ``run`` waits for them: answer here, in the transport's
        callback, the Treads that ``_read_now`` can, and leave the rest (and everything
        after the first that it cannot) to ``run``. Saves the event loop's round to the
        session's task per request (docs/9p.md, "Reads the kernel serves")."""
        if self._closing or self._requests or self.dialect is None:
            return
        rx = self._rx
        self._batch = []
        try:
            while (frame := rx.peek()) is not None and self._answered_now(frame):
                rx.next_frame()
        except Exception:  # a bug here must cost this connection only
            self.log.exception("9P connection %d failed", self.id)
            self.close()
        finally:
            self._send_batch()
            self._batch = None

    def _answered_now(self, frame: bytes | bytearray) -> bool:
        """Whether *frame* was a Tread answered at once from decoded memory: only while no
        request is in flight (every turn is free, so ``_start`` would run it to its end on
        the spot anyway); False: nothing was done."""
        return (frame[4] == MessageType.TREAD and len(frame) == _TREAD_SIZE
                and not self._requests and self._read_now(frame))

    def _read_now(self, frame: bytes | bytearray) -> bool:
        """Answer a Tread's frame at once if it can be (spawn.ninep.requests_common); the
        connection alone answers nothing."""
        return False

    async def _receive(self, frame: bytes | bytearray) -> None:
        """Take one frame: decode it, handle Tversion and Tflush at once, start a task for
        anything else (after a request slot is free: the limit pushes back here)."""
        self._received += 1
        dialect = self.dialect or Dialect.BASE
        try:
            # a Twrite's data as a view of the frame, which is ours alone (no copy)
            msg = decode(frame, dialect, views=True)
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
        self._rx.max_size = msize
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




def negotiate(version: bytes) -> Dialect | None:
    """version(5): a dialect we speak exactly, else the part before the first ``.`` if that
    is 9P2000 (``9P2000.x`` -> 9P2000), else None (answered "unknown")."""
    exact = Dialect.from_wire(version)
    if exact is not None:
        return exact
    if version.split(b".", 1)[0] == Dialect.BASE.wire:
        return Dialect.BASE
    return None
