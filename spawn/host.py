"""The host of one spawn: the thread that owns its engine and serves its attached mounts.

Every client of a spawn goes through one engine (invariant 8), and the engine is owned by
one thread. Before this module, a FUSE mount's request crossed three hand-offs inside the
daemon: the asyncio loop read it, an executor thread ran it on the engine, the loop wrote
the reply (measured in docs/spawn.md: two thread wake-ups and a self-pipe write per
request, most of the daemon's time on a metadata-heavy workload). Here the owner thread
itself reads the attached sessions' sockets, runs each request on the engine and writes the
reply, all in one place: a request costs a ``recv``, the engine call and a ``send``.

The host is a small selector loop on its own thread:

* **Sessions** are raw vfs connections, handed over by the daemon after ``attach``;
  **channels** are mounted /dev/fuse descriptors (spawn.fusechan). Frames and replies are those of docs/daemon.md.
  Requests of one session run in arrival order; the files a session opens are counted and
  released when it ends, so a killed mount process keeps nothing alive.
* **Jobs** are callables from other threads (``submit``): the daemon's 9P and SFTP sessions
  (``call``), a save's short steps, opening and closing. They run between requests.
* **Invalidation**: a change made by one client is announced to every *other* caching
  session (docs/daemon.md, "Cache invalidation") before that change is answered. The answer
  waits, without blocking the loop, until those mounts acknowledge or ACK_TIMEOUT passes (a
  mount whose kernel waits on a lock the change holds must not hold the change for ever).
* **Checkpoints**: after IDLE_CHECKPOINT seconds without a request, the engine's journal is
  committed to its overlay (spawn.overlay), so other threads' readers see the latest state.
"""

from __future__ import annotations

import collections
import errno
import heapq
import itertools
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from spawn.cred import ROOT, Cred
from spawn.engine import Engine
from spawn.fusechan import FuseChannel, InitParams, inval_notices
from spawn.vfslink import OPS
from spawn.vfsrpc import RETRYABLE, count_opens, error_of, parse_request, touched
from spawn.vfswire import MAX_FRAME, FrameError, decode, encode
from store.plaincache import PlainRange

log = logging.getLogger(__name__)

ACK_TIMEOUT = 1.0  # seconds a change waits for other mounts to drop their cached copies
IDLE_CHECKPOINT = 2.0  # seconds without a request before the journal is committed
_LEN = struct.Struct(">I")
_RECV = 1 << 20


class HostClosed(RuntimeError):
    """The host has stopped (its spawn was killed or the daemon is closing)."""


@dataclass(eq=False)
class _Session:
    sock: socket.socket
    cred: Cred  # the peer's, from SO_PEERCRED: every request of the session acts as it
    mountpoint: str
    caching: bool
    rbuf: bytearray = field(default_factory=bytearray)
    wbuf: bytearray = field(default_factory=bytearray)
    opened: dict[int, int] = field(default_factory=dict)
    done: Future[None] = field(default_factory=Future)
    seq: int = 0
    closed: bool = False


@dataclass(eq=False)
class _Pending:
    """A finished change whose answer waits for other mounts' acknowledgements."""

    finish: Callable[[], None]
    waiting: set[tuple[_Session, int]]
    deadline: float


@dataclass(frozen=True, slots=True)
class ClientView:
    """An attached mount, as ``grid spawns`` shows it."""

    uid: int
    mountpoint: str


class SpawnHost:
    """One spawn's engine on its own thread; see the module docstring."""

    def __init__(self, engine: Engine, name: str = "",
                 admits: Callable[[Cred], bool] | None = None) -> None:
        self.engine = engine
        self.name = name
        #: Who may enter the spawn at all (its owner, root, those it is shared with); the
        #: engine's own checks (spawn.access) apply within. Read on the host thread.
        self.admits: Callable[[Cred], bool] = admits or _owner_or_root(os.geteuid())
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._jobs: collections.deque[tuple[Callable[[], Any], Future[Any]]] = collections.deque()
        self._sessions: set[_Session] = set()
        self._channels: set[FuseChannel] = set()
        self._notifier: _Notifier | None = None
        self._pending: list[tuple[float, int, _Pending]] = []  # heap by deadline
        self._tie = itertools.count()
        self._acks: dict[tuple[_Session, int], _Pending] = {}
        self._stopping = False
        self._in_jobs = False  # the host thread is running jobs (read from other threads)
        # A wake-up is on its way for the jobs queued: ``submit`` writes a byte only when
        # this is False; the host clears it before it drains the queue, so a job queued
        # after the drain began always finds it False and wakes the host itself.
        self._signalled = False
        self._last_request = time.monotonic()
        self.clients: tuple[ClientView, ...] = ()  # read from any thread
        self._thread = threading.Thread(target=self._run, name=f"spawn-{name}", daemon=True)
        self._thread.start()

    # -- from other threads ------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` on the host thread; its result or exception in the future."""
        fut: Future[Any] = Future()
        if self._stopping:
            fut.set_exception(HostClosed(f"spawn {self.name} is closed"))
            return fut
        self._jobs.append(((lambda: fn(*args)) if args else fn, fut))
        if not self._signalled:  # one wake-up byte per batch of jobs, not one per job
            self._signalled = True
            self._wake()
        return fut

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``submit`` and wait (a save's short steps, from the save's own thread)."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        return self.submit(fn, *args).result()

    def call_future(self, op: str, cred: Cred, args: Sequence[Any], kw: dict[str, Any]) -> Future[Any]:
        """Engine operation *op* for a client that is not an attached session (9P, SFTP):
        done once every caching mount has dropped what it changed."""
        fut: Future[Any] = Future()

        def job() -> None:
            try:
                value, items = self.engine_call(op, cred, list(args), kw, None)
            except Exception as e:
                fut.set_exception(e)
                return
            self.announce(items, None, lambda: fut.set_result(value))

        self.submit(job).add_done_callback(
            lambda f: f.exception() is not None and not fut.done() and fut.set_exception(f.exception()))
        return fut

    async def call(self, op: str, cred: Cred, *args: Any, **kw: Any) -> Any:
        """The awaitable form of ``call_future``: an EngineLink (spawn.vfslink)."""
        import asyncio

        if op not in OPS:
            raise ValueError(f"no engine operation {op!r}")
        if op == "read" and not kw and self._reads_here:
            # A read needs no hop to the host thread while every change is committed and no
            # job is queued or running (a pipelined write sent before this read must come
            # first, as on the host): it reads the last checkpoint from this thread
            # (Engine.read_snapshot), which is then all there is. Otherwise the host reads.
            data = self.engine.read_snapshot(cred, *args)
            if data is not None:
                return data
        return await asyncio.wrap_future(self.call_future(op, cred, args, kw))

    def read_plain(self, cred: Cred, ino: int, offset: int, size: int) -> PlainRange | None:
        """A read as a range of a decoded content the caller can hand to the kernel, when
        the read could be served without a hop (see ``call``) and its bytes are base
        content kept in the daemon's cache; None: ``call("read", ...)`` instead."""
        if not self._reads_here:
            return None
        return self.engine.read_plain_snapshot(cred, ino, offset, size)

    @property
    def _reads_here(self) -> bool:
        """May a read be served on the calling thread (Engine.read_snapshot and its plain
        form), not the host's? Only while no job is queued or running (a change sent before
        the read comes first, as on the host) and the host is not stopping."""
        return not (self._stopping or self._jobs or self._in_jobs)

    def attach(self, sock: socket.socket, *, cred: Cred, mountpoint: str = "", caching: bool = False,
               leftover: bytes = b"") -> Future[None]:
        """Serve the vfs session on *sock* (already past ``attach``; *leftover* is what was
        read beyond it) on this host, every request as *cred*. The future completes when the
        session ends."""
        s = _Session(sock, cred, mountpoint, caching, bytearray(leftover))
        sock.setblocking(False)

        def add() -> None:
            self._sessions.add(s)
            self._sel.register(sock, selectors.EVENT_READ, s)
            self._update_clients()
            if s.rbuf:
                self._frames(s)

        fut = self.submit(add)
        fut.add_done_callback(lambda f: f.exception() is not None and self._fail_attach(s, f))
        return s.done

    def serve_fuse(self, fd: int, *, uid: int = 0, mountpoint: str = "",
                   timeout: float | None = None, init: dict[str, int] | None = None,
                   on_init: Callable[[InitParams], None] | None = None,
                   on_end: Callable[[str], None] | None = None) -> Future[None]:
        """Serve the mounted FUSE channel *fd* (ours to close) on this host; the future
        completes when it ends (``on_end`` says why: "unmounted", "killed", "closing").
        *init* is what an earlier server negotiated with the kernel: a takeover, so the
        kernel is asked to resend what that server left unanswered."""
        done: Future[None] = Future()

        def ended(why: str) -> None:
            try:
                if on_end is not None:
                    on_end(why)
            finally:
                if not done.done():
                    done.set_result(None)

        def add() -> None:
            kw: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
            ch = FuseChannel(self, fd, uid=uid, mountpoint=mountpoint, init=init,
                             on_init=on_init, on_end=ended, **kw)
            self._channels.add(ch)
            self._sel.register(ch, selectors.EVENT_READ, ch)
            self._update_clients()
            if init is not None:
                ch.resend()

        def failed(f: Future[Any]) -> None:
            if f.exception() is not None:
                os.close(fd)
                if not done.done():
                    done.set_exception(f.exception())  # type: ignore[arg-type]

        self.submit(add).add_done_callback(failed)
        return done

    def channel_ended(self, ch: FuseChannel) -> None:
        """Host thread: a FUSE channel is done; forget it and what waited on it."""
        self._channels.discard(ch)
        try:
            self._sel.unregister(ch)
        except (KeyError, ValueError):
            pass
        if self._notifier is not None:
            self._notifier.forget(ch)
        self._forget_acks(ch)
        self._update_clients()

    def _fail_attach(self, s: _Session, f: Future[Any]) -> None:
        s.sock.close()
        if not s.done.done():
            s.done.set_result(None)

    def detach_all(self) -> None:
        """End every attached session (its mount process will find the spawn gone or
        re-attach); wait until they are gone."""
        self.run(lambda: [self._close_session(s) for s in list(self._sessions)])

    def end_channels(self, why: str) -> None:
        """End every FUSE channel (*why*: "killed" unmounts them; "closing" leaves the mounts
        to their mount processes, which bring them to the next daemon)."""
        self.run(lambda: [ch.end(why) for ch in list(self._channels)])

    def close(self, finish: Callable[[], Any] | None = None) -> None:
        """End every session, run *finish* (default: close the engine) on the host thread,
        and stop the thread. Jobs submitted afterwards fail with HostClosed."""
        if self._stopping:
            return

        def stop() -> None:
            for s in list(self._sessions):
                self._close_session(s)
            for ch in list(self._channels):
                ch.end("closing")
            try:
                (finish or self.engine.close)()
            finally:
                self._stopping = True

        try:
            self.run(stop)
        finally:
            self._stopping = True
            self._wake()
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=30)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or we are closing)

    # -- the host thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                timeout = None
                if self._pending:
                    timeout = max(0.0, self._pending[0][0] - time.monotonic())
                if self.engine.ov.dirty:
                    idle = self._last_request + IDLE_CHECKPOINT - time.monotonic()
                    timeout = max(0.0, idle) if timeout is None else min(timeout, max(0.0, idle))
                for key, mask in self._sel.select(timeout):
                    s = key.data
                    if s is None:
                        self._run_jobs()
                    elif isinstance(s, FuseChannel):
                        if not s.closed:
                            s.readable()
                    else:
                        if mask & selectors.EVENT_WRITE:
                            self._flush(s)
                        if mask & selectors.EVENT_READ and not s.closed:
                            self._readable(s)
                self._expire()
                if self.engine.ov.dirty and time.monotonic() - self._last_request >= IDLE_CHECKPOINT:
                    self._checkpoint()
            self._run_jobs()
        except Exception:
            log.exception("spawn %s: host loop failed", self.name)
        finally:
            self._stopping = True
            for s in list(self._sessions):
                self._close_session(s)
            for ch in list(self._channels):
                ch.end("closing")
            if self._notifier is not None:
                self._notifier.stop()
            while self._jobs:
                _fn, fut = self._jobs.popleft()
                if not fut.done():
                    fut.set_exception(HostClosed(f"spawn {self.name} is closed"))
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _checkpoint(self) -> None:
        try:
            self.engine.checkpoint()
        except Exception:
            log.exception("spawn %s: checkpoint failed (the journal keeps every change)", self.name)
            self._last_request = time.monotonic()  # try again later, not in a tight loop

    def _run_jobs(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._signalled = False  # before draining (see __init__)
        self._in_jobs = True
        try:
            while self._jobs:
                fn, fut = self._jobs[0]
                try:
                    if not fut.set_running_or_notify_cancel():
                        continue
                    self._last_request = time.monotonic()
                    try:
                        fut.set_result(fn())
                    except BaseException as e:
                        fut.set_exception(e)
                finally:
                    self._jobs.popleft()  # only now: "no job queued" means none is running
        finally:
            self._in_jobs = False

    def _readable(self, s: _Session) -> None:
        try:
            while True:
                chunk = s.sock.recv(_RECV)
                if not chunk:
                    self._close_session(s)
                    return
                s.rbuf += chunk
                if len(chunk) < _RECV:
                    break
        except BlockingIOError:
            pass
        except OSError as e:
            log.info("spawn %s: session of uid %d: %s", self.name, s.cred.uid, e)
            self._close_session(s)
            return
        self._frames(s)

    def _frames(self, s: _Session) -> None:
        buf = s.rbuf
        pos = 0
        try:
            while len(buf) - pos >= 4 and not s.closed:
                (n,) = _LEN.unpack_from(buf, pos)
                if n > MAX_FRAME:
                    raise FrameError(f"frame of {n} bytes (at most {MAX_FRAME})")
                if len(buf) - pos - 4 < n:
                    break
                msg = decode(bytes(buf[pos + 4 : pos + 4 + n]))
                pos += 4 + n
                self._request(s, msg)
        except FrameError as e:
            log.warning("spawn %s: session of uid %d: %s; closing it", self.name, s.cred.uid, e)
            self._close_session(s)
            return
        del buf[:pos]

    def _request(self, s: _Session, msg: Any) -> None:
        tag, op, args, kw = parse_request(msg)
        if op == "invalidated":  # the client has dropped what an announcement named
            self.notified((s, tag))
            return
        self._last_request = time.monotonic()
        try:
            if op not in OPS:
                raise OSError(errno.ENOSYS, f"no operation {op!r}")
            value, items = self.engine_call(op, s.cred, args, kw, s)
        except Exception as e:
            code, message = error_of(e)
            self._send(s, encode([tag, code, message]))
            return
        count_opens(s.opened, op, args, kw, value)
        try:
            reply = encode([tag, 0, value])
        except Exception as e:
            code, message = error_of(e)
            reply = encode([tag, code, message])
        self.announce(items, s, lambda: self._send(s, reply))

    def engine_call(self, op: str, cred: Cred, args: list[Any], kw: dict[str, Any],
                    source: object = None) -> tuple[Any, list[list[Any]]]:
        """Host thread: run *op* as *cred*; return its value and what the spawn's other
        caching clients (mounts other than *source*) must forget."""
        self._last_request = time.monotonic()
        others = op not in RETRYABLE and (
            any(x is not source for x in self._channels)
            or any(x.caching and x is not source for x in self._sessions))
        before = self._before(op, args) if others else []
        value = getattr(self.engine, op)(cred, *args, **kw)
        return value, (touched(op, args, kw, value, before) if others else [])

    def _before(self, op: str, args: list[Any]) -> list[int]:
        """Inodes a change will touch that its arguments do not name (spawn.vfsrpc)."""
        names: list[tuple[Any, Any]] = []
        if op in ("unlink", "rmdir") and len(args) >= 2:
            names = [(args[0], args[1])]
        elif op == "rename" and len(args) >= 4:
            names = [(args[0], args[1]), (args[2], args[3])]
        out = []
        for parent, name in names:
            try:
                out.append(self.engine.lookup(ROOT, parent, name).ino)
            except Exception:
                pass
        return out

    def announce(self, items: list[list[Any]], source: object, finish: Callable[[], None]) -> None:
        """Host thread: tell every other caching client to forget *items*, then *finish*
        (at once when there is nobody to tell)."""
        if not items:
            finish()
            return
        sessions = [x for x in self._sessions if x.caching and x is not source]
        channels = [x for x in self._channels if x is not source]
        if not sessions and not channels:
            finish()
            return
        p = _Pending(finish, set(), time.monotonic() + ACK_TIMEOUT)
        for x in sessions:
            x.seq = (x.seq + 1) & 0xFFFFFFFF or 1
            p.waiting.add((x, x.seq))
            self._acks[(x, x.seq)] = p
            self._send(x, encode([0, "inval", x.seq, items]))
        if channels:
            if self._notifier is None:
                self._notifier = _Notifier(self)
            notices = inval_notices(items)
            for ch in channels:
                key = (ch, next(self._tie))
                p.waiting.add(key)
                self._acks[key] = p
                self._notifier.send(ch, notices, key)
        heapq.heappush(self._pending, (p.deadline, next(self._tie), p))

    def notified(self, key: tuple[Any, int]) -> None:
        """Host thread: a client has dropped what an announcement named (a session's
        acknowledgement, or the notifier has written a channel's notices)."""
        p = self._acks.pop(key, None)
        if p is not None:
            p.waiting.discard(key)
            if not p.waiting:
                p.finish()

    def _forget_acks(self, client: object) -> None:
        """A client is gone: nothing waits for it any more."""
        for key in [k for k in self._acks if k[0] is client]:
            self.notified(key)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending and (self._pending[0][0] <= now or not self._pending[0][2].waiting):
            _, _, p = heapq.heappop(self._pending)
            if p.waiting:
                for key in p.waiting:
                    self._acks.pop(key, None)
                p.waiting.clear()
                p.finish()

    def _send(self, s: _Session, data: bytes) -> None:
        if s.closed:
            return
        if s.wbuf:
            s.wbuf += data
            return
        try:
            n = s.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._close_session(s)
            return
        if n < len(data):
            s.wbuf += data[n:]
            self._sel.modify(s.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, s)

    def _flush(self, s: _Session) -> None:
        try:
            n = s.sock.send(s.wbuf)
        except BlockingIOError:
            return
        except OSError:
            self._close_session(s)
            return
        del s.wbuf[:n]
        if not s.wbuf:
            self._sel.modify(s.sock, selectors.EVENT_READ, s)

    def _close_session(self, s: _Session) -> None:
        """The session ends: release what its mount held open, answer what waited on it."""
        if s.closed:
            return
        s.closed = True
        self._sessions.discard(s)
        try:
            self._sel.unregister(s.sock)
        except (KeyError, ValueError):
            pass
        s.sock.close()
        self._forget_acks(s)
        held, s.opened = s.opened, {}
        for ino, n in held.items():
            for _ in range(n):
                try:
                    self.engine.release(ROOT, ino)
                except Exception:
                    log.exception("spawn %s: releasing inode %d of a closed session", self.name, ino)
        self._update_clients()
        if not s.done.done():
            s.done.set_result(None)

    def _update_clients(self) -> None:
        self.clients = (tuple(ClientView(s.cred.uid, s.mountpoint) for s in self._sessions)
                        + tuple(ClientView(c.uid, c.mountpoint) for c in self._channels))


class _Notifier:
    """Writes the kernel's invalidation notices for a host's FUSE channels, on a thread of
    its own: the write may wait for a lock that one of the channel's own requests holds,
    and that request needs the host thread to be answered."""

    def __init__(self, host: SpawnHost) -> None:
        self.host = host
        self._q: collections.deque[tuple[FuseChannel, list[bytes], Any] | None] = collections.deque()
        self._cv = threading.Condition()
        self._fds: dict[FuseChannel, int] = {}  # our own copies: a channel may close meanwhile
        self._thread = threading.Thread(target=self._run, name=f"spawn-{host.name}-inval", daemon=True)
        self._thread.start()

    def send(self, ch: FuseChannel, notices: list[bytes], key: Any) -> None:
        if ch not in self._fds:
            self._fds[ch] = os.dup(ch.fd)
        with self._cv:
            self._q.append((ch, notices, key))
            self._cv.notify()

    def forget(self, ch: FuseChannel) -> None:
        fd = self._fds.pop(ch, None)
        if fd is not None:
            with self._cv:
                self._q.append((ch, [], ("close", fd)))
                self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._q.append(None)
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._q:
                    self._cv.wait()
                item = self._q.popleft()
            if item is None:
                return
            ch, notices, key = item
            if isinstance(key, tuple) and key and key[0] == "close":
                os.close(key[1])
                continue
            fd = self._fds.get(ch)
            for n in notices:
                if fd is None:
                    break
                try:
                    os.write(fd, n)
                except OSError as e:  # ENOENT: the kernel had nothing cached
                    if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBADF):
                        log.debug("invalidation on %s: %s", ch.mountpoint, e)
            self.host.submit(self.host.notified, key)


def _owner_or_root(owner: int) -> Callable[[Cred], bool]:
    return lambda c: c.root or c.uid == owner


def take_socket(writer: Any, reader: Any) -> tuple[socket.socket, bytes]:
    """Take an asyncio stream's connection away from the event loop, for a host: a
    duplicate of its socket and whatever the reader had buffered beyond the last frame."""
    transport = writer.transport
    transport.pause_reading()
    fd = os.dup(transport.get_extra_info("socket").fileno())
    leftover = bytes(getattr(reader, "_buffer", b""))
    transport.abort()  # closes the loop's descriptor only: the connection lives on in ours
    return socket.socket(fileno=fd), leftover
