"""The daemon's 9P listeners: a Unix socket (peer uid) and, with ``--9p``, TCP with mutual TLS.

Who the client is comes from the transport, never from 9P (invariant 9):

* ``HOME/run/9p.sock`` (mode 0666, like grid.sock): the kernel's SO_PEERCRED uid. The 9P user
  is the grid user with that uid in ndb, else the login name (``Daemon.user_name``).
* ``settings.listen_9p`` (``HOST:PORT``): TLS 1.3, a client certificate from the grid CA
  required by the handshake itself (``replication.certs.server_context``). The identity is
  the certificate's user name (``OU=user``, CN); it acts as the uid ndb gives that user
  (``Daemon.uid_of``). A node certificate, or a user ndb does not list, gets a session whose
  every attach is refused with EACCES and the reason in the daemon's log, so the client
  hears a 9P error rather than a bare reset.

Tattach then checks what the client *claims* against that identity: ``uname`` must be the
user's name, or empty with ``n_uname`` (9P2000.u/.L) equal to the user's uid (diod's tools
send only the number); anything else is EACCES (``check_uname``). ``aname`` is a spawn id: the spawn's root,
for its owner, root and those it is shared with; to anyone else the spawn does not exist (ENOENT). An empty
``aname`` is the user's namespace (grid.daemon.ninep_ns: ctl, names, ID/ctl, ID/status,
ID/root/), and ``ctl`` diod's synthetic ``date``, ``zero`` and ``null`` for its tools.

Every session of a spawn shares that spawn's one engine link and one lock table, so 9P,
FUSE and SFTP clients see each other's writes and locks (invariant 8). A session that
attached a spawn is listed among the spawn's clients, so ``grid kill`` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from grid.daemon.sharedlink import SharedLink
from spawn.cred import Cred
from spawn.ninep.attachment import Attachment, Resolver
from spawn.ninep.locks import LockTable
from spawn.ninep.messages import NONUNAME
from spawn.ninep.server import Session
from spawn.ninep.session import STREAM_LIMIT, Peer
from spawn.spawner import SpawnError

log = logging.getLogger("grid.daemon.9p")

SOCKET_NAME = "9p.sock"
HANDSHAKE_TIMEOUT = 10.0  # seconds a TCP client has to finish TLS before it is dropped


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a (host, port) pair; ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is: the grid user, the Unix uid it acts as, or why it may do nothing."""

    user: str
    uid: int | None
    refusal: str | None = None  # set: every attach is refused (EACCES) with this reason


@dataclass(eq=False)
class _Attached:
    """What a 9P session looks like in a spawn's client list (``Daemon._Live.clients``):
    enough for ``grid spawns`` to count it and for ``grid kill`` to end it."""

    session: Any
    uid: int
    mountpoint: str = ""


class _SessionHandle:
    """Lets ``grid kill`` (``Daemon._detach_all``) end a 9P session like a vfs session, and
    wait until it has released what it held in the engine (open files, locks), which it
    does on its way out, before the engine goes away."""

    caching = False  # 9P clients cache nothing the daemon must invalidate

    def __init__(self, session: Session, task: asyncio.Task[Any] | None) -> None:
        self._session = session
        self._task = task

    async def shutdown(self) -> None:
        self._session.close()
        if self._task is not None and self._task is not asyncio.current_task():
            await asyncio.wait([self._task], timeout=30)


@dataclass(eq=False)
class _Conn:
    session: Session | None = None
    task: asyncio.Task[Any] | None = None
    attached: dict[str, tuple[Any, _Attached]] = field(default_factory=dict)  # sid -> live


class NinepService:
    """The 9P listeners of one daemon (see the module docstring)."""

    name = "9p"

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.sock_path = daemon.home.run / SOCKET_NAME
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: set[_Conn] = set()
        self._locks: dict[str, LockTable] = {}  # per spawn: every attach of it, direct or not
        self.tcp_address: tuple[str, int] | None = None

    # -- start and stop ---------------------------------------------------------------------

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)  # the daemon holds the store lock: no other owner
        srv = await asyncio.start_unix_server(self._on_unix, path=os.fspath(self.sock_path),
                                             limit=STREAM_LIMIT)
        os.chmod(self.sock_path, 0o666)
        self._servers.append(srv)
        listen = self.daemon.settings.listen_9p
        if listen:
            host, port = parse_hostport(listen)
            ctx = self._tls_context()
            tcp = await asyncio.start_server(self._on_tls, host=host, port=port, ssl=ctx,
                                             ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                                             limit=STREAM_LIMIT)
            self._servers.append(tcp)
            self.tcp_address = tcp.sockets[0].getsockname()[:2]
            log.info("9P over TLS on %s:%d", *self.tcp_address)

    def _tls_context(self) -> ssl.SSLContext:
        from replication.certs import CA_FILE, CERT_FILE, KEY_FILE, server_context

        node = self.daemon.home.certs / "node"
        return server_context(node / CERT_FILE, node / KEY_FILE, node / CA_FILE)

    async def close(self) -> None:
        for srv in self._servers:
            srv.close()
        for c in list(self._conns):
            if c.session is not None:
                c.session.close()
        # each session clunks its fids on the way out (engine releases, locks): let them
        # finish before the daemon closes the engines
        tasks = [c.task for c in self._conns if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 30)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)

    # -- connections ------------------------------------------------------------------------

    async def _on_unix(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
        user = await asyncio.to_thread(self.daemon.user_name, uid)
        await self._serve(reader, writer, Identity(user, uid),
                          Peer(uid=uid, gid=gid, pid=pid, address="unix"))

    async def _on_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = str(writer.get_extra_info("peername"))
        await self._serve(reader, writer, await self._tls_identity(writer), Peer(address=addr))

    async def _tls_identity(self, writer: asyncio.StreamWriter) -> Identity:
        """The grid user a verified client certificate names, and its uid here."""
        from replication.certs import CertError, peer_identity

        try:
            ident = peer_identity(writer.get_extra_info("ssl_object"), expect="user")
        except CertError as e:
            return Identity("", None, f"not a user certificate: {e}")
        try:
            uid = await asyncio.to_thread(self.daemon.uid_of, ident.name)
        except OSError as e:
            return Identity(ident.name, None, e.strerror or str(e))
        return Identity(ident.name, uid)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     who: Identity, peer: Peer) -> None:
        conn = _Conn(task=asyncio.current_task())
        session = Session(reader, writer, self._resolver(who, conn), peer=peer)
        conn.session = session
        self._conns.add(conn)
        log.info("9P connection %d: %s (uid %s) from %s%s", session.id, who.user or "?",
                 who.uid, peer.address, f", refused: {who.refusal}" if who.refusal else "")
        try:
            await session.run()
        finally:
            self._conns.discard(conn)
            for live, client in conn.attached.values():
                live.clients.discard(client)
            writer.close()

    # -- attach -----------------------------------------------------------------------------

    def _resolver(self, who: Identity, conn: _Conn) -> Resolver:
        async def resolve(uname: bytes, aname: bytes, n_uname: int) -> Attachment:
            if who.refusal is not None or who.uid is None:
                log.warning("9P attach refused: %s", who.refusal)
                raise PermissionError(f"refused: {who.refusal}")
            check_uname(who, uname, n_uname)
            if not aname:
                return self.attach_namespace(who)
            if aname == b"ctl":
                from grid.daemon.ninep_ns import CtlLink

                gid = Cred.of_user(who.uid).gid
                return Attachment(link=CtlLink(who.uid, gid), uid=who.uid, gid=gid)
            return await self.attach_spawn(who, aname, conn)

        return resolve

    async def attach_spawn(self, who: Identity, aname: bytes, conn: _Conn) -> Attachment:
        """The root of spawn *aname*, if *who* may use it; ENOENT for anyone else."""
        assert who.uid is not None
        try:
            sid = aname.decode("ascii")
        except UnicodeDecodeError:
            raise LookupError(f"no spawn {aname!r}") from None
        try:
            live = await self.daemon.live(sid, who.uid)
        except (SpawnError, LookupError, ValueError, OSError) as e:
            log.info("9P attach %r for %s: %s", sid, who.user, e)
            raise LookupError(f"no spawn {sid!r}") from None
        cred = Cred.of_user(who.uid)
        if sid not in conn.attached and conn.session is not None:
            client = _Attached(_SessionHandle(conn.session, conn.task), who.uid)
            conn.attached[sid] = (live, client)
            live.clients.add(client)
        log.info("9P attach spawn %s by %s (uid %d)", sid, who.user, who.uid)
        return Attachment(link=SharedLink(live), uid=who.uid, gid=cred.gid,
                          groups=cred.all_groups(), locks=self._locks.setdefault(live.info.id, LockTable()),
                          fsid=zlib.crc32(live.info.id.encode()))

    def attach_namespace(self, who: Identity) -> Attachment:
        """The user's namespace (grid.daemon.ninep_ns): ctl, names and their spawns."""
        from grid.daemon.ninep_ns import NamespaceLink, RoutedLocks

        assert who.uid is not None
        cred = Cred.of_user(who.uid)
        log.info("9P attach namespace by %s (uid %d)", who.user, who.uid)
        link = NamespaceLink(self.daemon, who.uid, cred.gid)
        return Attachment(link=link, uid=who.uid, gid=cred.gid, groups=cred.all_groups(),
                          locks=RoutedLocks(link, self._locks),
                          fsid=zlib.crc32(f"ns:{who.uid}".encode()))


def check_uname(who: Identity, uname: bytes, n_uname: int) -> None:
    """Refuse (EACCES) an attach that claims to be someone other than the transport says.

    ``uname`` must be the user's name; or be empty, with ``n_uname`` (9P2000.u/.L) equal to
    the user's uid, since diod's tools send the number only. When ``uname`` is the user's
    name, ``n_uname`` is not judged: py9p (under p9fs) always sends 0, and neither grants
    anything (files are created as the transport's uid whatever the attach says).
    """
    if uname:
        if uname != who.user.encode():
            raise PermissionError(f"uname {uname!r} is not {who.user!r}")
    elif n_uname == NONUNAME:
        raise PermissionError(f"attach as {who.user!r} (uname) or uid {who.uid} (n_uname)")
    elif n_uname != who.uid:
        raise PermissionError(f"n_uname {n_uname} is not uid {who.uid}")


def make(daemon: Any) -> NinepService:
    """The Unix socket always; TLS on TCP when ``grid serve --9p HOST:PORT`` asked for it."""
    return NinepService(daemon)
