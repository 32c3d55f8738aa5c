"""The 9P server: asyncio glue between one connection's byte stream and a spawn's engine.

One :class:`Session` serves one connection (a Unix socket, a TLS stream, a test's pipe); it
is :class:`spawn.ninep.session.SessionCore` (the connection) with the requests of
spawn/ninep/requests_common.py, requests_9p2000.py and requests_linux.py. It splits the
stream into frames (``spawn.ninep.receiver.FrameReceiver``), decodes each in the
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
import os
import socket
import struct
from collections.abc import Awaitable, Callable

from spawn.ninep import messages as m9
from spawn.ninep.messages import (
    Message,
)
from spawn.ninep.requests_9p2000 import Plan9Requests
from spawn.ninep.requests_common import CommonRequests
from spawn.ninep.requests_linux import LinuxRequests
from spawn.ninep.sendfile import PlainRead
from spawn.ninep.session import (
    MSIZE,
    STREAM_LIMIT,
    Attachment,
    Limits,
    Peer,
    Resolver,
    SessionStatistics,
    negotiate,
)

# What users of the server name (the session's own pieces are in spawn.ninep.session).
__all__ = ["MSIZE", "STREAM_LIMIT", "Attachment", "Limits", "Listener", "Peer", "Resolver",
           "ResolverFactory", "Session", "SessionStatistics", "negotiate", "serve_tcp",
           "serve_unix"]


class Session(CommonRequests, Plan9Requests, LinuxRequests):
    """One 9P connection, served until the peer closes it (see the module docstring).

    *resolve* is called on each Tattach (see :data:`Resolver`); *peer* names the
    transport's identity in logs. ``await session.run()`` serves; ``close()`` ends it from
    outside (the daemon's shutdown). At the end every fid is clunked: open files are
    released in the engine, pending xattr writes are dropped, locks are released.
    """

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

