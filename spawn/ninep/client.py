"""A small asyncio 9P client for any dialect: for tests, tools and proxying.

Why it looks the way it does: tests of a 9P server need to do what well-behaved clients
never do (pipeline requests, flush a tag that is in flight, reuse fids, send any message at
all), so the core is :meth:`Client.send`, which writes one message with the tag the caller
chose and returns a future for its reply, and :meth:`Client.rpc`, which awaits it. The
helpers above them (``walk``, ``open``, ``read`` ...) pick free tags, raise
:class:`ServerError` for Rerror/Rlerror and return plain values.

Every reply received is also appended to ``received`` (tag and message, in arrival order)
so a test can check orderings, e.g. that no reply to a flushed tag came after its Rflush;
replies for tags nobody waits for land in ``unexpected``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable
from typing import Any

from spawn.ninep import messages as m9
from spawn.ninep.codec import FrameBuffer, decode, encode, unpack_dirents, unpack_stats
from spawn.ninep.errtext import errno_of
from spawn.ninep.messages import (
    IOHDRSZ,
    NOFID,
    NONUNAME,
    NOTAG,
    Dialect,
    Dirent,
    Message,
    ProtocolError,
    Qid,
    Stat,
)

CLIENT_MSIZE = (1 << 20) + IOHDRSZ


class ServerError(OSError):
    """An Rerror or Rlerror: ``errno`` (0 when a 9P2000 server gave only text) and the
    server's text (``strerror``)."""

    def __init__(self, code: int, text: str, reply: Message) -> None:
        super().__init__(code, text)
        self.reply = reply


class Flushed(Exception):
    """The request was flushed: Rflush came and its own reply never will."""


class Client:
    """One 9P connection (see the module docstring). Build with :meth:`connect_unix`,
    :meth:`connect_tcp` or from a reader/writer pair, then ``await version(...)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.dialect: Dialect | None = None
        self.msize = CLIENT_MSIZE
        self._buf = FrameBuffer(0xFFFFFFFF)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._next_tag = 0
        self._next_fid = 1
        self.received: list[tuple[int, Message]] = []
        self.unexpected: list[Message] = []
        self.error: BaseException | None = None
        self._task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect_unix(cls, path: str | os.PathLike[str]) -> Client:
        reader, writer = await asyncio.open_unix_connection(os.fspath(path))
        return cls(reader, writer)

    @classmethod
    async def connect_tcp(cls, host: str, port: int) -> Client:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """The server closed the connection (or we did)."""
        return self._task.done()

    # -- raw messages --------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.reader.read(1 << 18)
                if not data:
                    raise ConnectionResetError("the server closed the connection")
                self._buf.receive_data(data)
                while (frame := self._buf.next_frame()) is not None:
                    self._deliver(decode(frame, self.dialect or Dialect.BASE))
        except (ConnectionError, OSError, ProtocolError) as e:
            self.error = e
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionResetError(f"connection lost: {self.error}"))
                    fut.exception()  # whoever awaits it still gets it; nobody must
            self._pending.clear()

    def _deliver(self, msg: Message) -> None:
        self.received.append((msg.tag, msg))
        fut = self._pending.pop(msg.tag, None)
        if fut is None or fut.done():
            self.unexpected.append(msg)
            return
        fut.set_result(msg)

    def tag(self) -> int:
        """A tag no request in flight uses (never NOTAG)."""
        for _ in range(0xFFFF):
            t = self._next_tag
            self._next_tag = (t + 1) % NOTAG
            if t not in self._pending:
                return t
        raise RuntimeError("every tag is in flight")

    def fid(self) -> int:
        """A fresh fid number (never reused by this client)."""
        f = self._next_fid
        self._next_fid += 1
        return f

    def send_raw(self, frame: bytes) -> None:
        """Write bytes as they are (for malformed-frame tests)."""
        self.writer.write(frame)

    def send(self, msg: Message) -> asyncio.Future[Message]:
        """Write *msg* with its own tag; the future gets the reply with that tag."""
        if self.closed:
            raise ConnectionResetError(f"connection lost: {self.error}")
        frame = encode(msg, self.dialect or Dialect.BASE)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[msg.tag] = fut
        self.writer.write(frame)
        return fut

    async def rpc(self, msg: Message) -> Message:
        """Send *msg* and return whatever comes back for its tag (Rerror included)."""
        fut = self.send(msg)
        await self.writer.drain()
        return await fut

    async def call(self, cls: type[Message], **fields: Any) -> Message:
        """Build a message with a free tag, send it, and return the reply; an Rerror or
        Rlerror raises ServerError."""
        reply = await self.rpc(cls(tag=self.tag(), **fields))
        if isinstance(reply, m9.Rlerror):
            raise ServerError(reply.ecode, os.strerror(reply.ecode), reply)
        if isinstance(reply, m9.Rerror):
            text = reply.ename.decode("utf-8", "replace")
            raise ServerError(reply.errno or errno_from_text(text), text, reply)
        return reply

    # -- session ---------------------------------------------------------------------------

    async def version(self, version: bytes = b"9P2000.L", msize: int = CLIENT_MSIZE) -> m9.Rversion:
        """Negotiate; the client then speaks the dialect the server answered."""
        reply = await self.rpc(m9.Tversion(tag=NOTAG, msize=msize, version=version))
        assert isinstance(reply, m9.Rversion)
        self.dialect = Dialect.from_wire(reply.version)
        self.msize = reply.msize
        return reply

    async def attach(self, fid: int, uname: bytes = b"", aname: bytes = b"", *,
                     n_uname: int = NONUNAME, afid: int = NOFID) -> Qid:
        extra = {} if self.dialect is Dialect.BASE else {"n_uname": n_uname}
        r = await self.call(m9.Tattach, fid=fid, afid=afid, uname=uname, aname=aname, **extra)
        return r.qid  # type: ignore[attr-defined]

    async def flush(self, oldtag: int) -> None:
        """Tflush *oldtag*; a request still waiting for that tag then fails with Flushed."""
        await self.rpc(m9.Tflush(tag=self.tag(), oldtag=oldtag))
        fut = self._pending.pop(oldtag, None)
        if fut is not None and not fut.done():
            fut.set_exception(Flushed(f"tag {oldtag} flushed"))

    # -- files -----------------------------------------------------------------------------

    async def walk(self, fid: int, newfid: int, names: Iterable[bytes] = ()) -> tuple[Qid, ...]:
        r = await self.call(m9.Twalk, fid=fid, newfid=newfid, wnames=tuple(names))
        return r.wqids  # type: ignore[attr-defined]

    async def open(self, fid: int, mode: int = m9.OREAD) -> tuple[Qid, int]:
        r = await self.call(m9.Topen, fid=fid, mode=mode)
        return r.qid, r.iounit  # type: ignore[attr-defined]

    async def lopen(self, fid: int, flags: int = os.O_RDONLY) -> tuple[Qid, int]:
        r = await self.call(m9.Tlopen, fid=fid, flags=flags)
        return r.qid, r.iounit  # type: ignore[attr-defined]

    async def create(self, fid: int, name: bytes, perm: int, mode: int = m9.ORDWR,
                     extension: bytes = b"") -> tuple[Qid, int]:
        extra = {"extension": extension} if self.dialect is Dialect.UNIX else {}
        r = await self.call(m9.Tcreate, fid=fid, name=name, perm=perm, mode=mode, **extra)
        return r.qid, r.iounit  # type: ignore[attr-defined]

    async def lcreate(self, fid: int, name: bytes, flags: int = os.O_RDWR, mode: int = 0o644,
                      gid: int = 0) -> tuple[Qid, int]:
        r = await self.call(m9.Tlcreate, fid=fid, name=name, flags=flags, mode=mode, gid=gid)
        return r.qid, r.iounit  # type: ignore[attr-defined]

    async def read(self, fid: int, offset: int, count: int) -> bytes:
        r = await self.call(m9.Tread, fid=fid, offset=offset, count=count)
        return r.data  # type: ignore[attr-defined]

    async def read_all(self, fid: int, chunk: int | None = None) -> bytes:
        """Read from offset 0 until an empty read: the whole file."""
        chunk = chunk or self.msize - IOHDRSZ
        out = bytearray()
        while True:
            data = await self.read(fid, len(out), chunk)
            if not data:
                return bytes(out)
            out += data

    async def write(self, fid: int, offset: int, data: bytes) -> int:
        r = await self.call(m9.Twrite, fid=fid, offset=offset, data=data)
        return r.count  # type: ignore[attr-defined]

    async def clunk(self, fid: int) -> None:
        await self.call(m9.Tclunk, fid=fid)

    async def remove(self, fid: int) -> None:
        await self.call(m9.Tremove, fid=fid)

    async def stat(self, fid: int) -> Stat:
        r = await self.call(m9.Tstat, fid=fid)
        return r.stat  # type: ignore[attr-defined]

    async def wstat(self, fid: int, stat: Stat) -> None:
        await self.call(m9.Twstat, fid=fid, stat=stat)

    async def getattr(self, fid: int, mask: int = m9.GetattrMask.BASIC) -> m9.Rgetattr:
        r = await self.call(m9.Tgetattr, fid=fid, request_mask=mask)
        assert isinstance(r, m9.Rgetattr)
        return r

    async def list_dir(self, fid: int, count: int | None = None) -> list[Stat]:
        """All entries of an open directory fid, 9P2000 style (Tread of stats)."""
        count = count or self.msize - IOHDRSZ
        out: list[Stat] = []
        offset = 0
        while True:
            data = await self.read(fid, offset, count)
            if not data:
                return out
            out += unpack_stats(data, self.dialect or Dialect.BASE)
            offset += len(data)

    async def readdir(self, fid: int, offset: int = 0, count: int | None = None) -> list[Dirent]:
        r = await self.call(m9.Treaddir, fid=fid, offset=offset,
                            count=count or self.msize - IOHDRSZ)
        return unpack_dirents(r.data)  # type: ignore[attr-defined]

    async def readdir_all(self, fid: int, count: int | None = None) -> list[Dirent]:
        """All entries of an open directory fid, 9P2000.L style (Treaddir by cookies)."""
        out: list[Dirent] = []
        offset = 0
        while True:
            got = await self.readdir(fid, offset, count)
            if not got:
                return out
            out += got
            offset = got[-1].offset

    async def walk_open(self, root: int, path: bytes, mode: int = os.O_RDONLY) -> int:
        """Walk a ``/``-separated *path* from *root* to a new fid and open it (lopen on .L,
        open otherwise); the fid."""
        fid = self.fid()
        names = [n for n in path.split(b"/") if n]
        await self.walk(root, fid, names)
        if self.dialect is Dialect.LINUX:
            await self.lopen(fid, mode)
        else:
            await self.open(fid, mode)
        return fid


def blank_stat(**fields: Any) -> Stat:
    """A wstat's stat with every field "don't touch" (stat(5)), then *fields* set."""
    base: dict[str, Any] = dict(
        type=0xFFFF, dev=0xFFFFFFFF, qid=Qid(type=0xFF, version=0xFFFFFFFF, path=(1 << 64) - 1),
        mode=0xFFFFFFFF, atime=0xFFFFFFFF, mtime=0xFFFFFFFF, length=(1 << 64) - 1, name=b"",
        uid=b"", gid=b"", muid=b"")
    base.update(fields)
    return Stat(**base)


def errno_from_text(text: str) -> int:
    """The errno of a 9P2000 error text: one of grid's bare texts ("file not found"), or a
    text that starts with a strerror ("Invalid argument: usage: ..."); else 0."""
    return errno_of(text)
