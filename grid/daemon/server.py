"""The node daemon: owns the store, the spawns and the listeners of one grid home.

One process per home (the store's writer lock makes sure of it). It listens on

* ``run/grid.sock`` (mode 0666): the CLI's control commands and the FUSE mount processes'
  attached sessions (spawn.vfsrpc). Who is asking is the peer uid the kernel reports
  (SO_PEERCRED), never anything the client says. A spawn is visible to its owner, root and
  the users and groups it is shared with (``grid share``); to anyone else it does not exist
  (spawn.spawner decides, for every exporter). Within it, every engine operation carries
  the caller's credentials and the engine checks them (spawn.access).
* ``run/blocks.sock`` (mode 0600): the block protocol (store.server), so that the home's
  owner can run ``grid import`` and ``grid store`` while the daemon holds the store.

Threads: every spawn's engine is owned by its host (spawn.host.SpawnHost), a thread that
serves the spawn's attached mounts directly and runs the daemon's other requests for it (9P,
SFTP, control) between theirs, so every client of the spawn goes through one engine
(invariant 8). A save runs in a thread of its own and reaches the engine through the host
for its short steps, so clients keep working while the new blocks are written.

Control commands (docs/daemon.md has the wire format): ``ping``, ``spawn``, ``spawns``,
``save``, ``kill``, ``share``, ``stop``, ``prune`` (grid.daemon.pruneop: progress notices,
then the answer), and ``attach``, which turns the connection into a vfs session.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import inspect
import logging
import os
import pwd
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from grid.errors import UserError
from grid.home import GridHome
from spawn.cred import Cred, group_id
from spawn.engine import Engine
from spawn.host import SpawnHost, take_socket
from spawn.spawner import Spawner, SpawnError, SpawnInfo, SpawnLimit, SpawnNotFound
from spawn.vfsrpc import FrameError, encode, error_of, parse_request, read_frame
from store.score import format_score

log = logging.getLogger("grid.daemon")


@dataclass(frozen=True, slots=True)
class Settings:
    spawnmax: int = 16  # live spawns per user (root is not limited); ANTS's spawnmax
    overlay_limit: int | None = None  # bytes of changed data a spawn keeps locally
    socket_mode: int = 0o666  # every local user may ask; the daemon decides per uid
    listen_9p: str | None = None  # HOST:PORT of the 9P listener (TLS, client certificates)
    listen_blocks: str | None = None  # HOST:PORT of the block listener for peers (mutual TLS)
    listen_ssh: str | None = None  # HOST:PORT of the SSH/SFTP listener
    content_cache: int | None = None  # bytes of decoded contents kept (None: default_content_cache)


def default_content_cache() -> int:
    """A sixteenth of the machine's memory, at most 1 GiB: the decoded contents the daemon
    keeps for its spawns' reads (store.plaincache)."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = 1 << 30
    return max(64 << 20, min(1 << 30, mem // 16))


class Service(Protocol):
    """A listener the daemon runs beside its own sockets (9P, peers' blocks, SSH). A service
    module (SERVICE_MODULES) has ``make(daemon) -> Service | None`` (None: not configured)."""

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...


#: Modules whose ``make(daemon)`` may add a service; each reads what it needs from
#: ``daemon.settings`` and uses the daemon's public methods (live, control, user_name, uid_of).
SERVICE_MODULES: tuple[str, ...] = (
    "grid.daemon.ninep_service", "grid.daemon.peer_service", "grid.daemon.ssh_service",
    "grid.daemon.sftp_service",
)


@dataclass(eq=False)
class _Live:
    """A spawn whose engine is open: its host (the owner thread, which serves the attached
    mounts itself) and the daemon's other clients of it (9P sessions), for ``grid kill``
    and ``grid spawns``."""

    info: SpawnInfo
    engine: Engine
    host: SpawnHost
    clients: set[Any] = field(default_factory=set)  # .uid, .mountpoint, .session.shutdown()
    saving: bool = False

    @property
    def link(self) -> SpawnHost:
        """The spawn's engine for an in-daemon client: calls run on the host and announce
        their changes to caching mounts first (spawn.host)."""
        return self.host

    def owner(self, fn: Callable[[], Any]) -> Any:
        """Run *fn* on the engine's thread and wait for it (for a save's short steps)."""
        return self.host.run(fn)


def _groups(uid: int) -> frozenset[int]:
    """*uid*'s groups on this host (for spawns shared with a group)."""
    return Cred.of_user(uid).all_groups()


def peer_uid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)[1]


class Refused(OSError):
    """A control request the daemon will not do; errno and message go back to the client."""


class Daemon:
    def __init__(self, home: GridHome, settings: Settings = Settings()) -> None:
        self.home = home
        self.settings = settings
        self.sock_path = home.control_socket
        self.blocks_path = home.blocks_socket
        self._live: dict[str, _Live] = {}
        self._opening: dict[str, asyncio.Future[_Live]] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._block_server: Any = None
        self._connections: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self.services: list[Service] = []
        self.store: Any = None
        self.plain_cache: Any = None  # decoded contents for the spawns' reads (store.plaincache)
        self.spawner: Spawner | None = None
        self.pruning = False  # one prune at a time (grid.daemon.pruneop)

    # -- start and stop --------------------------------------------------------------------

    async def start(self) -> None:
        from store.decoder import Decoder
        from store.errors import StoreLocked
        from store.local import LEAF_CACHE_BYTES, LocalStore
        from store.plaincache import PlainCache
        from store.server import BlockServer

        self.home.run.mkdir(mode=0o711, exist_ok=True)
        os.chmod(self.home.run, 0o711)  # others may reach the socket, not list the directory
        if _listening(self.sock_path):
            raise UserError("grid serve", f"a node daemon is already running for {self.home.root}")
        try:
            self.store = LocalStore.open(self.home.store, leaf_cache_bytes=LEAF_CACHE_BYTES)
        except StoreLocked as e:
            raise UserError("grid serve", f"{e} (is a node daemon already running?)") from None
        opts: dict[str, Any] = {}
        if self.settings.overlay_limit is not None:
            opts["overlay_limit"] = self.settings.overlay_limit
        cache = self.settings.content_cache
        cache = default_content_cache() if cache is None else cache
        if cache > 0:
            # shared, as contents are; decoded ahead of readers by a process of its own
            decoder = Decoder(self.store, self.home.store)
            decoder.start()  # comes up beside the daemon; started again on use if it fails
            self.plain_cache = opts["plain_cache"] = PlainCache(cache, decoder=decoder)
        self.spawner = Spawner(self.store, self.home.spawns, max_per_user=self.settings.spawnmax,
                               engine_options=opts)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)
        srv = await asyncio.start_unix_server(self._on_connect, os.fspath(self.sock_path),
                                              limit=(16 << 20) + 4)
        os.chmod(self.sock_path, self.settings.socket_mode)
        self._servers.append(srv)
        self._block_server = BlockServer(self.store, node=self.home.root.name)
        await self._block_server.start_unix(self.blocks_path)
        os.chmod(self.blocks_path, 0o600)
        for modname in SERVICE_MODULES:
            svc = importlib.import_module(modname).make(self)
            if svc is not None:
                await svc.start()
                self.services.append(svc)
                log.info("started %s", svc.name)
        self.home.pidfile.write_text(f"{os.getpid()}\n")
        log.info("serving %s (pid %d) on %s", self.home.root, os.getpid(), self.sock_path)

    async def run(self, ready: Callable[[], object] | None = None) -> None:
        """Start, serve until SIGTERM/SIGINT or a ``stop`` request, then shut down cleanly."""
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        watch = asyncio.ensure_future(self._watch_home())
        try:
            if ready is not None:
                ready()
            await self._stopping.wait()
        finally:
            watch.cancel()
            await self.close()

    async def _watch_home(self, every: float = 10.0) -> None:
        """Stop when the home is removed from under us (or our socket is taken away):
        nothing could reach this daemon any more, and it would hold its files for ever."""
        while True:
            await asyncio.sleep(every)
            if not self.home.marker.exists() or not self.sock_path.exists():
                log.warning("the grid home or its socket is gone: stopping")
                self._stopping.set()
                return

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        for srv in self._servers:
            srv.close()
        for svc in reversed(self.services):
            try:
                await svc.close()
            except Exception:
                log.exception("closing %s", svc.name)
        for live in list(self._live.values()):
            await self._detach_all(live)
        if self._block_server is not None:
            await self._block_server.close()
        for t in list(self._connections):
            t.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=10)
        for sid, live in list(self._live.items()):
            await asyncio.to_thread(live.host.close)
            del self._live[sid]
        if self.plain_cache is not None:  # its decodes ahead read the store: end them first
            await asyncio.to_thread(self.plain_cache.close)
        if self.store is not None:
            if self.pruning:  # stop it before it copies; a copy under way runs to its end
                self.store.cancel_prune()
                while self.pruning:
                    await asyncio.sleep(0.05)
            self.store.close()
        for p in (self.sock_path, self.blocks_path, self.home.pidfile):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        log.info("stopped")

    # -- connections -----------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            uid = peer_uid(writer)
            while True:
                msg = await read_frame(reader)
                if msg is None:
                    break
                tag, op, args, kw = parse_request(msg)
                if op == "attach":
                    await self._attach(uid, tag, args, kw, reader, writer)
                    break
                if op == "prune":  # answered after progress notices (grid.daemon.pruneop)
                    from grid.daemon import pruneop

                    await pruneop.serve(self, uid, tag, args, kw, writer)
                    continue
                try:
                    value = await self._control(uid, op, args, kw)
                    reply = [tag, 0, value]
                except Exception as e:
                    reply = [tag, *self._error(op, e)]
                writer.write(encode(reply))
                await writer.drain()
        except FrameError as e:
            log.warning("connection closed: %s", e)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._connections.discard(task)

    @staticmethod
    def _error(op: str, e: BaseException) -> tuple[int, str]:
        if isinstance(e, UserError):
            return errno.EINVAL, f"{e.what}: {e.why}"
        if isinstance(e, SpawnNotFound):
            return errno.ENOENT, str(e)
        if isinstance(e, SpawnLimit):
            return errno.EDQUOT, str(e)
        if isinstance(e, SpawnError):
            return errno.EINVAL, str(e)
        if isinstance(e, Refused):
            return e.errno or errno.EINVAL, e.strerror or str(e)
        from ndb.errors import NdbError, NdbNotFound, NdbPermission
        from store.errors import StoreError

        if isinstance(e, NdbPermission):
            return e.errno, e.message
        if isinstance(e, NdbNotFound):
            return errno.ENOENT, str(e)
        if isinstance(e, (NdbError, StoreError)):
            return errno.EINVAL, str(e)
        if not isinstance(e, OSError):
            log.exception("%s failed", op)
        return error_of(e)

    async def _control(self, uid: int, op: str, args: list[Any], kw: dict[str, Any]) -> Any:
        from grid.daemon import nameops

        handler = getattr(self, f"_op_{op}", None) or nameops.handler(self, op)
        if handler is None:
            raise Refused(errno.ENOSYS, f"no command {op!r}")
        # Bad client input is a one-line refusal, never a traceback in the log.
        why = _arg_error(*((handler, 1) if op not in nameops.LOCAL else (nameops.LOCAL[op], 2)), args, kw)
        if why is not None:
            raise Refused(errno.EINVAL, f"{op}: bad arguments ({why})")
        try:
            return await handler(uid, *args, **kw)
        except TypeError as e:
            raise Refused(errno.EINVAL, f"{op}: bad arguments ({e})") from None

    # -- spawns ----------------------------------------------------------------------------

    # -- what services use ----------------------------------------------------------------

    async def live(self, sid: str, uid: int) -> _Live:
        """Spawn *sid*'s engine link and state, if *uid* may use it (else SpawnNotFound)."""
        return await self._get_live(sid, uid)

    async def control(self, uid: int, op: str, *args: Any, **kw: Any) -> Any:
        """A control request (``spawn``, ``spawns``, ``status``, ``save``, ``kill``) made
        for *uid*, as if it came over the socket; refusals raise as they would be sent."""
        if op in ("attach", "stop"):
            raise Refused(errno.EINVAL, f"{op} is not for services")
        return await self._control(uid, op, list(args), kw)

    def live_spawns(self) -> dict[str, _Live]:
        """The spawns whose engines are open, by id (a copy: safe from any thread)."""
        return dict(self._live)

    def user_name(self, uid: int) -> str:
        return self._user_name(uid)

    def uid_of(self, user: str) -> int:
        """The Unix uid a grid user (a certificate's or SSH key's owner) acts as: its
        ``uid=`` in ndb. A grid user without one owns no spawns here."""
        from ndb.users import UserDB

        u = UserDB(self.home.users_db).get(user)
        if u is None:
            raise Refused(errno.EACCES, f"no grid user {user!r}")
        if u.uid is None:
            raise Refused(errno.EACCES, f"grid user {user!r} has no uid on this node "
                                        f"(grid user add {user} --uid N)")
        return u.uid

    def _user_name(self, uid: int) -> str:
        """The grid user a Unix uid is: its ndb users record, else its login name."""
        from ndb.users import UserDB

        u = UserDB(self.home.users_db).by_uid(uid)
        if u is not None:
            return u.name
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return f"uid{uid}"

    async def _get_live(self, sid: str, uid: int) -> _Live:
        """The open spawn, if *uid* may use it (opening its engine on first use)."""
        assert self.spawner is not None
        info = self.spawner.get(sid, uid, _groups(uid))
        live = self._live.get(sid)
        if live is not None:
            return live
        fut = self._opening.get(sid)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._opening[sid] = fut
            try:
                engine = await asyncio.to_thread(self.spawner.engine, sid)
            except BaseException as e:
                del self._opening[sid]
                fut.set_exception(e)
                fut.exception()  # retrieved: waiters re-raise it
                raise
            host = SpawnHost(engine, sid)
            live = _Live(info, engine, host)
            # The spawn's current sharing decides, as ``grid share`` changes it.
            host.admits = lambda c, live=live: live.info.admits(c.uid, c.all_groups)
            self._live[sid] = live
            del self._opening[sid]
            fut.set_result(live)
            return live
        return await asyncio.shield(fut)

    def _describe(self, live: _Live) -> dict[str, Any]:
        assert self.spawner is not None
        d = asdict(live.info)
        # file data held locally (what an overlay limit bounds), and the overlay's disk use
        d["changed_bytes"] = live.engine.overlay_bytes
        d["overlay_disk_bytes"] = self.spawner.changed_bytes(live.info.id)
        mounts = live.host.clients
        d["clients"] = len(live.clients) + len(mounts)
        d["mounts"] = sorted({c.mountpoint for c in mounts if c.mountpoint})
        d["base"] = format_score(live.engine.base)
        d["saving"] = live.saving
        return d

    async def _op_ping(self, uid: int) -> dict[str, Any]:
        from grid import __version__

        out: dict[str, Any] = {"pid": os.getpid(), "home": str(self.home.root),
                               "version": __version__, "uid": uid}
        if self.plain_cache is not None:
            out["content_cache"] = self.plain_cache.statistics()
        return out

    async def _op_spawn(self, uid: int, ref: str) -> dict[str, Any]:
        from grid.daemon.nameops import caller
        from grid.refs import resolve

        assert self.spawner is not None
        r = await asyncio.to_thread(lambda: resolve(self.home, ref, caller(self, uid)))
        # Asking the store also keeps the root through a prune running now (store.barrier).
        if not await asyncio.to_thread(self.store.has, r.score):
            raise Refused(errno.ENOENT, f"{ref}: its root {format_score(r.score)} is not in "
                          "the store")
        owner = await asyncio.to_thread(self._user_name, uid)
        info = await asyncio.to_thread(
            self.spawner.spawn, r.name or ref, r.score, owner=owner, uid=uid)
        log.info("spawn %s: %s for %s (uid %d)", info.id, info.name, owner, uid)
        return self._describe(await self._get_live(info.id, uid))

    async def _op_spawns(self, uid: int) -> list[dict[str, Any]]:
        assert self.spawner is not None
        out = []
        for info in await asyncio.to_thread(self.spawner.list, uid, _groups(uid)):
            out.append(self._describe(await self._get_live(info.id, uid)))
        return out

    async def _op_status(self, uid: int, sid: str) -> dict[str, Any]:
        return self._describe(await self._get_live(str(sid), uid))

    async def _op_save(self, uid: int, sid: str, name: str | None = None) -> dict[str, Any]:
        """Snapshot the spawn; record *name* (default: the name it was spawned from) with
        prev = the root the spawn stood on."""
        from grid.daemon import nameops
        from ndb.values import check_name, check_new_name

        assert self.spawner is not None
        live = await self._get_live(str(sid), uid)
        info = live.info
        if uid not in (0, info.uid):
            raise Refused(errno.EPERM, f"spawn {sid} is {info.owner}'s: only its owner or root saves it")
        if name is None and not info.name.startswith("blake3:"):
            name = info.name
        if name is not None:
            # before any work: a bad name changes nothing (an existing one is kept as it is)
            if name == info.name:
                check_name(name)
            else:
                check_new_name(name)
            await asyncio.to_thread(nameops.check_save, self, uid, name)  # nor a refused one
        if live.saving:
            raise Refused(errno.EBUSY, f"spawn {sid} is being saved already")
        # A writer session from the first block to the name (docs/store.md, "Online prune").
        session = self.store.writers.begin(f"save of spawn {sid}")
        try:
            live.saving = True
            try:
                prev = await asyncio.wrap_future(live.host.submit(lambda: live.engine.base))
                t0 = time.monotonic()
                score = await self._save(live, name or "")
                took = time.monotonic() - t0
            finally:
                live.saving = False
            text = format_score(score)
            result: dict[str, Any] = {"score": text, "prev": format_score(prev), "name": name,
                                      "seconds": took}
            if name is not None:
                names = nameops.names_db(self)
                who = await asyncio.to_thread(nameops.caller, self, uid)
                try:  # checked again under the names file's lock
                    rec = await asyncio.to_thread(names.set, name, text, info.owner,
                                                  prev=format_score(prev), caller=who)
                    result["date"] = rec.date
                except Exception as e:  # the root is saved: say so, and why the name is not
                    result["name_error"] = self._error("save", e)[1]
        finally:
            self.store.writers.end(session)
        log.info("save %s: %s -> %s (%.2f s)", sid, name or "(no name)", text, took)
        return result

    async def _save(self, live: _Live, name: str) -> bytes:
        """The long part of the save in a thread of its own, the engine's short steps on its
        owner thread (spawn.save): clients keep working meanwhile."""
        from spawn.save import save

        return await asyncio.to_thread(save, live.engine, name=name, user=live.info.owner,
                                       owner=live.owner)

    async def _detach_all(self, live: _Live) -> None:
        for c in list(live.clients):
            await c.session.shutdown()
        await asyncio.to_thread(live.host.detach_all)

    async def _op_kill(self, uid: int, sid: str) -> dict[str, Any]:
        assert self.spawner is not None
        sid = str(sid)
        info = self.spawner.get(sid, uid, _groups(uid))
        if uid not in (0, info.uid):
            raise Refused(errno.EPERM, f"spawn {sid} is {info.owner}'s: only its owner or root kills it")
        live = self._live.pop(sid, None)
        if live is not None:
            if live.saving:
                self._live[sid] = live
                raise Refused(errno.EBUSY, f"spawn {sid} is being saved; kill it afterwards")
            for c in list(live.clients):
                await c.session.shutdown()
            spawner = self.spawner
            await asyncio.to_thread(live.host.end_channels, "killed")
            await asyncio.to_thread(live.host.close, lambda: spawner.kill(sid))
        else:
            await asyncio.to_thread(self.spawner.kill, sid)
        log.info("kill %s (%s of %s)", sid, info.name, info.owner)
        return {"id": sid}

    async def _op_share(self, uid: int, sid: str, who: str, remove: bool = False) -> dict[str, Any]:
        """Let a user (``USER``, a login or grid user name, or a uid) or a group (``@GROUP``)
        into spawn *sid*, or no longer (*remove*); by the spawn's owner or root."""
        assert self.spawner is not None
        sid = str(sid)
        info = self.spawner.get(sid, uid, _groups(uid))
        if uid not in (0, info.uid):
            raise Refused(errno.EPERM, f"spawn {sid} is {info.owner}'s: only its owner or root shares it")
        kw: dict[str, int] = {}
        if who.startswith("@"):
            try:
                kw["gid"] = group_id(who[1:])
            except KeyError:
                raise Refused(errno.EINVAL, f"no group {who[1:]!r} on this node") from None
        else:
            kw["uid"] = await asyncio.to_thread(self._uid_named, who)
        new = await asyncio.to_thread(self.spawner.share, sid, remove=remove, **kw)
        live = self._live.get(sid)
        if live is not None:
            live.info = new
        log.info("spawn %s: %s %s by uid %d", sid, "unshared from" if remove else "shared with", who, uid)
        return asdict(new)

    def _uid_named(self, who: str) -> int:
        """A user's uid: a number, a login name, or a grid user with ``uid=`` in ndb."""
        from ndb.users import UserDB

        if who.isdigit():
            return int(who)
        try:
            return pwd.getpwnam(who).pw_uid
        except KeyError:
            pass
        u = UserDB(self.home.users_db).get(who)
        if u is not None and u.uid is not None:
            return u.uid
        raise Refused(errno.EINVAL, f"no user {who!r} on this node")

    async def _op_stop(self, uid: int) -> dict[str, Any]:
        if uid not in (0, os.geteuid()):
            raise Refused(errno.EPERM, "only root or the daemon's user may stop it")
        asyncio.get_running_loop().call_soon(self._stopping.set)
        return {"pid": os.getpid()}

    async def _attach(self, uid: int, tag: int, args: list[Any], kw: dict[str, Any],
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if len(args) != 1:
                raise Refused(errno.EINVAL, "attach SPAWN")
            live = await self._get_live(str(args[0]), uid)
        except Exception as e:
            writer.write(encode([tag, *self._error("attach", e)]))
            await writer.drain()
            return
        info = live.info
        mountpoint = str(kw.get("mountpoint") or "")
        if kw.get("fuse"):
            # The mount process sends its FUSE channel right after our answer: nothing may
            # read the socket but us (a plain read would drop the descriptor it carries).
            writer.transport.pause_reading()
        writer.write(encode([tag, 0, {"id": info.id, "owner": info.owner, "uid": info.uid,
                                      "name": info.name}]))
        await writer.drain()
        if kw.get("fuse"):
            await self._serve_fuse(live, uid, mountpoint, kw.get("init"), reader, writer)
            return
        # From here on the spawn's host serves the connection on its own thread.
        sock, leftover = take_socket(writer, reader)
        done = live.host.attach(sock, cred=Cred.of_user(uid), mountpoint=mountpoint,
                                caching=bool(kw.get("cache")), leftover=leftover)
        log.info("spawn %s: attached uid %d%s", info.id, uid, f" at {mountpoint}" if mountpoint else "")
        try:
            await asyncio.wrap_future(done)
        finally:
            log.info("spawn %s: detached uid %d", info.id, uid)


    async def _serve_fuse(self, live: _Live, uid: int, mountpoint: str, init: Any,
                          reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Take the mount process's FUSE channel and serve it on the spawn's host. The
        connection stays open to tell the mount process what the kernel negotiated (for the
        next daemon, should this one die) and when the mount is gone."""
        import threading

        from spawn.fusedev import unmount

        sock, _ = take_socket(writer, reader)
        sock.settimeout(10)
        try:
            _msg, fds, _flags, _addr = await asyncio.to_thread(socket.recv_fds, sock, 4096, 1)
        except OSError as e:
            log.warning("spawn %s: no FUSE channel from uid %d: %s", live.info.id, uid, e)
            sock.close()
            return
        if not fds:
            log.warning("spawn %s: no FUSE channel from uid %d", live.info.id, uid)
            sock.close()
            return
        lock = threading.Lock()

        def tell(msg: list[Any]) -> None:
            with lock, contextlib.suppress(OSError):
                sock.sendall(encode(msg))

        def ended(why: str) -> None:
            if why == "closing":  # a daemon going down leaves the mount to the next one,
                tell([0, "stopping"])  # stopped on purpose: nobody should restart it
            else:
                tell([0, "gone", why])
            if why == "killed" and mountpoint:  # in case the mount process is gone too
                threading.Thread(target=unmount, args=(mountpoint,), kwargs={"lazy": True},
                                 daemon=True).start()

        if not isinstance(init, dict) or not {"minor", "flags"} <= init.keys():
            init = None
        done = live.host.serve_fuse(
            fds[0], uid=uid, mountpoint=mountpoint, init=init,
            on_init=lambda p: tell([0, "init", p.as_dict()]), on_end=ended)
        log.info("spawn %s: serving the mount of uid %d at %s%s", live.info.id, uid,
                 mountpoint or "?", " (taken over)" if init else "")
        try:
            await asyncio.wrap_future(done)
        finally:
            sock.close()
            log.info("spawn %s: mount at %s ended", live.info.id, mountpoint or "?")


def _listening(path: os.PathLike[str]) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.fspath(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


_ARG_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool, "None": type(None)}


def _arg_error(fn: Any, skip: int, args: list[Any], kw: dict[str, Any]) -> str | None:
    """Why *args* and *kw* do not fit *fn* (less its first *skip* parameters): a missing or
    unknown argument, or a value not of a plain annotated type (``str``, ``int``, ``bool``,
    ``None`` and unions of them; a bool is not an int here). None when they fit."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[skip:]
    try:
        bound = sig.replace(parameters=params).bind(*args, **kw)
    except TypeError as e:
        return str(e)
    for name, value in bound.arguments.items():
        p = sig.parameters[name]
        ann = p.annotation if isinstance(p.annotation, str) else ""
        types = [_ARG_TYPES.get(t.strip()) for t in ann.split("|")]
        if not ann or None in types:
            continue  # an annotation this check does not know (Any, containers)
        values = value.values() if p.kind is p.VAR_KEYWORD else [value]
        for v in values:
            if not any(type(v) is t or (t is not bool and t is not int and isinstance(v, t))
                       for t in types):
                return f"{name} must be {ann}, not {type(v).__name__}"
    return None
