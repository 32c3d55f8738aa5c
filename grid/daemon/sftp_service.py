"""The daemon's SFTP socket: grid's SFTP server behind OpenSSH's sshd (docs/ssh.md, "OpenSSH
in front").

``HOME/run/sftp.sock`` (mode 0666, like grid.sock and 9p.sock) takes one SFTP session per
connection. Its client is ``python -m grid.sftp_bridge SOCKET``, which sshd runs as its
``Subsystem sftp`` command *as the user it authenticated*: the bridge hands the daemon its
stdin and stdout (the SFTP stream sshd decrypted, SCM_RIGHTS) and waits. The daemon then
serves that stream itself with the same server as its own SSH listener
(grid.daemon.sftp.GridSFTPServer): every SFTP rule stays in one place, and the bytes cross
only sshd's C transport and one pipe each way.

Who the client is (invariant 9) comes from the kernel, as on grid.sock: the SO_PEERCRED uid
of the connecting process, which sshd made the authenticated user's before running the
bridge. The session acts as that uid (its spawns, never anyone else's); nothing the client
sends can change it. The socket adds no trust beyond grid.sock's: any local process of that
uid could already do all of this through the control socket.

asyncssh's SFTP protocol handler (``asyncssh.sftp.SFTPServerHandler``) is used as the SSH
listener uses it, here over plain pipes; it needs a reader, a writer and a channel, and the
small adapters below are the part of asyncssh's channel API it calls. Its reader is
grid.daemon.sftp_fast.RequestReader, which answers the READs the read-ahead buffer holds
itself (docs/ssh.md, "The read fast path"). The session tells asyncssh its client is
OpenSSH (``client_version``): asyncssh swaps SYMLINK's arguments for clients known to send
them in OpenSSH's (reversed) order, which it recognises by their SSH version string; behind
sshd the daemon never sees that string, and every client sends OpenSSH's order there (sshd's
own sftp-server takes it). asyncssh is imported
at the first session, not at the daemon's start (grid.daemon.ssh_service says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from typing import Any

log = logging.getLogger("grid.daemon.sftp")

SOCKET_NAME = "sftp.sock"
HELLO = b"grid-sftp 1"  # the bridge's one message; its two descriptors ride on it
HELLO_TIMEOUT = 10.0  # seconds a connection has to send it
#: Replies the session has written and the peer has not yet taken before the next request is
#: read (RequestReader waits on _Writer.drain): a client that sends requests without reading
#: the answers is slowed, not buffered.
WRITE_HIGH = 4 << 20


class _Channel:
    """What asyncssh's SFTP handler and SFTPServer ask of their SSH channel."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def get_environment(self) -> dict[str, str]:
        return {}


class _Writer:
    """The reply stream (the bridge's stdout, a pipe to sshd)."""

    def __init__(self, transport: asyncio.WriteTransport, protocol: Any, channel: _Channel) -> None:
        self.transport = transport
        self.protocol = protocol
        self.channel = channel
        transport.set_write_buffer_limits(high=WRITE_HIGH)

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def drain(self) -> None:
        if self.transport.get_write_buffer_size() > WRITE_HIGH and not self.channel.closing:
            await self.protocol._drain_helper()  # asyncio.StreamWriter.drain's own wait

    def close(self) -> None:
        self.channel.closing = True
        self.transport.close()


class SFTPSocketService:
    """``HOME/run/sftp.sock`` (grid.daemon.server.Service). Connections are accepted as raw
    sockets, not asyncio streams: a stream would read the bridge's hello before we could take
    the descriptors that come with it."""

    name = "sftp"

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.sock_path = daemon.home.run / SOCKET_NAME
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)  # the daemon holds the store lock: no other owner
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(os.fspath(self.sock_path))
        os.chmod(self.sock_path, 0o666)
        lsock.listen(64)
        lsock.setblocking(False)
        self._listener = lsock
        self._accepting = asyncio.create_task(self._accept(lsock))

    async def close(self) -> None:
        """Stop listening and end every session before the daemon closes the engines: each
        handler's cleanup releases its open files through the engine links."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        if self._listener is not None:
            self._listener.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=30)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)

    async def _accept(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(lsock)
            task = asyncio.create_task(self._session(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _session(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            uid = struct.unpack("3i", raw)[1]
            fds = await _receive_fds(conn)
            log.info("sftp: session for uid %d", uid)
            await self._serve(uid, fds)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # one bad client must not disturb the daemon
            log.warning("sftp: session ended: %s", e)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            conn.close()  # the bridge is waiting for this to exit

    async def _serve(self, uid: int, fds: list[int]) -> None:
        """Run one SFTP session over the bridge's stdin (fds[0]) and stdout (fds[1])."""
        from asyncssh.logging import logger as ssh_logger
        from asyncssh.sftp import SFTPServerHandler

        from grid.daemon.sftp import GridSFTPServer
        from grid.daemon.sftp_fast import RequestReader

        loop = asyncio.get_running_loop()
        stream = asyncio.StreamReader(limit=1 << 22)
        # the transports own duplicates: fds are closed by the caller whatever happens
        rfile = os.fdopen(os.dup(fds[0]), "rb", buffering=0)
        wfile = os.fdopen(os.dup(fds[1]), "wb", buffering=0)
        rtrans, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), rfile)
        wtrans, wproto = await loop.connect_write_pipe(_WriteProtocol, wfile)
        logger = ssh_logger.get_child("sftp")
        chan = _Channel(logger)
        out = _Writer(wtrans, wproto, chan)
        try:
            server = GridSFTPServer(chan, self.daemon, uid)  # type: ignore[arg-type]
            reader = RequestReader(stream, out.write, out.drain, server, logger,
                                   {"client_version": "OpenSSH"})
            handler = SFTPServerHandler(server, reader, out, 3)  # type: ignore[arg-type]
            reader.handler = handler
            await handler.run()
            log.info("sftp: session for uid %d ended; %d READs answered from read-ahead "
                     "buffers by the request reader, %d WRITEs joined", uid, reader.answered,
                     reader.joined)
        finally:
            out.close()
            rtrans.close()


class _WriteProtocol(asyncio.streams.FlowControlMixin, asyncio.Protocol):
    """A write pipe's protocol with asyncio's pause/resume bookkeeping (for _Writer.drain)."""


async def _receive_fds(conn: socket.socket) -> list[int]:
    """The bridge's hello and its two descriptors (stdin, stdout), within HELLO_TIMEOUT;
    anything else is refused. Waited for on the event loop, not in a thread: a local user
    opening connections and sending nothing must not tie up the daemon's thread pool."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[tuple[bytes, list[int]]] = loop.create_future()

    def ready() -> None:
        if fut.done():
            return
        try:
            msg, fds, _flags, _addr = socket.recv_fds(conn, len(HELLO), 2)
        except BlockingIOError:
            return
        except OSError as e:
            fut.set_exception(e)
            return
        fut.set_result((msg, fds))

    conn.setblocking(False)
    loop.add_reader(conn.fileno(), ready)
    try:
        msg, fds = await asyncio.wait_for(fut, HELLO_TIMEOUT)
    finally:
        loop.remove_reader(conn.fileno())
    if msg != HELLO or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"not a grid SFTP bridge (sent {msg[:32]!r} with {len(fds)} descriptors)")
    return fds


def make(daemon: Any) -> SFTPSocketService:
    """Always: the socket serves nothing until an sshd is configured to run the bridge."""
    return SFTPSocketService(daemon)
