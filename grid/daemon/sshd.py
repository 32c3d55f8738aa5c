"""The SSH service (started by grid.daemon.ssh_service): SFTP and grid commands over SSH.

``grid serve --ssh HOST:PORT`` runs an asyncssh server with the home's host key
(``certs/ssh_host_ed25519_key``, made by ``grid init``). It is how machines without 9P or
FUSE (macOS, Windows, anything with OpenSSH or sshfs) reach their spawns (docs/ssh.md).

Who a client is (invariant 9) comes from one thing only: the SSH public key it proves it
holds, which must be listed for the user it logs in as in ndb (``grid user add NAME --ssh-key
FILE``). Passwords, keyboard-interactive, host-based and GSS authentication are all off, so
there is nothing to guess. The grid user then acts as its ndb ``uid=`` (daemon.uid_of), with
exactly the rights that uid has on the node's control socket.

What a session may do:

* the ``sftp`` subsystem: the user's namespace (grid.daemon.sftp);
* an exec request of one of the grid commands in :data:`COMMANDS`, run inside the daemon
  through ``daemon.control`` (spawn operations) or ndb reads (names, history) — never a
  process, never a shell; anything else, a shell request and a pty are refused;
* no port, agent or X11 forwarding (asyncssh refuses them unless asked to allow them).
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import logging
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh

log = logging.getLogger("grid.daemon.ssh")

#: The grid commands an SSH client may run, with their usage lines.
COMMANDS: dict[str, str] = {
    "spawn": "grid spawn NAME",
    "spawns": "grid spawns",
    "save": "grid save ID [NAME]",
    "kill": "grid kill ID",
    "names": "grid names",
    "history": "grid history NAME",
}


def host_key_path(home: Any) -> Path:
    """Where the node's SSH host key lives (grid.init makes it)."""
    return Path(home.certs) / "ssh_host_ed25519_key"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) as a (host, port) pair."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected HOST:PORT (a port from 1 to 65535)")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Auth(asyncssh.SSHServer):
    """One connection's authentication: public keys from ndb, nothing else."""

    def __init__(self, service: SSHService) -> None:
        self.service = service

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.service.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self.service.connections.discard(self.conn)

    def begin_auth(self, username: str) -> bool:
        return True  # always ask: whether the user exists is not told before a key is shown

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Whether *key* is listed in ndb for grid user *username*, and that user has a uid
        on this node. Read at each attempt, so ``grid user`` changes count at once."""
        from ndb.users import UserDB

        try:
            user = UserDB(self.service.daemon.home.users_db).get(username)
        except Exception:  # a malformed name is an unknown user
            log.info("ssh: refused %r: not a grid user", username)
            return False
        if user is None or user.uid is None:
            log.info("ssh: refused %r: %s", username,
                     "not a grid user" if user is None else "no uid on this node")
            return False
        offered = key.export_public_key("openssh").decode().split()[:2]
        if not any(k.split()[:2] == offered for k in user.sshkeys):
            log.info("ssh: refused %r: key %s is not listed", username,
                     key.get_fingerprint())
            return False
        return True


class SSHService:
    """The daemon's SSH listener (grid.daemon.server.Service)."""

    name = "ssh"

    def __init__(self, daemon: Any, listen: str) -> None:
        from grid.errors import UserError

        self.daemon = daemon
        try:
            self.host, self.port = parse_listen(listen)
        except ValueError as e:
            raise UserError("grid serve --ssh", str(e)) from None
        self._server: asyncssh.SSHAcceptor | None = None
        self.connections: set[asyncssh.SSHServerConnection] = set()

    async def start(self) -> None:
        from grid.errors import UserError
        from grid.init import ensure_ssh_host_key

        key_path = ensure_ssh_host_key(self.daemon.home)  # a home made before SSH existed
        try:
            self._server = await asyncssh.create_server(
                lambda: _Auth(self), self.host, self.port,
                server_host_keys=[str(key_path)],
                sftp_factory=self._sftp, allow_scp=False,
                process_factory=self._process, allow_pty=False,
                agent_forwarding=False, x11_forwarding=False, gss_host=None,
                encoding=None,
            )
        except OSError as e:
            raise UserError(f"grid serve --ssh {self.host}:{self.port}",
                            e.strerror or str(e)) from None
        log.info("ssh: listening on %s:%d", self.host, self.port)

    async def close(self) -> None:
        """Stop listening and end every session: asyncssh leaves open connections running,
        and they must not reach a spawn's engine after the daemon has closed it."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        conns = list(self.connections)
        for conn in conns:
            conn.close()
        if conns:
            await asyncio.wait([asyncio.ensure_future(c.wait_closed()) for c in conns],
                               timeout=10)

    def _uid(self, chan: asyncssh.SSHServerChannel) -> int:
        """The uid of the channel's authenticated user (checked again: ndb may have changed)."""
        return self.daemon.uid_of(chan.get_extra_info("username"))

    def _sftp(self, chan: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
        from grid.daemon.sftp import GridSFTPServer

        return GridSFTPServer(chan, self.daemon, self._uid(chan))

    async def _process(self, process: asyncssh.SSHServerProcess) -> None:
        """An exec (or shell) request: one grid command, its output, its exit status."""
        user = process.get_extra_info("username")
        command = process.command
        try:
            if command is None:
                raise _Usage("no shell here; run one of:\n" + _usage())
            out = await self.run_command(user, command)
            process.stdout.write(out.encode())
            process.exit(0)
        except _Usage as e:
            process.stderr.write(f"grid: {e}\n".encode())
            process.exit(2)
        except Exception as e:
            process.stderr.write(f"grid: {_message(e)}\n".encode())
            process.exit(1)

    async def run_command(self, user: str, command: str | bytes) -> str:
        """Run *command* (``grid VERB [--json] ARGS``) for grid user *user*; its output text
        (``--json``: the daemon's answer as JSON, as the local commands print it; ``-q`` is
        accepted and changes nothing, the output being terse already). Refusals raise, with
        a message for the client."""
        if isinstance(command, bytes):
            command = command.decode("utf-8", "replace")
        try:
            argv = shlex.split(command)
        except ValueError as e:
            raise _Usage(f"cannot parse the command: {e}") from None
        if argv and argv[0] == "grid":
            argv = argv[1:]
        if not argv or argv[0] not in COMMANDS:
            what = argv[0] if argv else command
            raise _Usage(f"{what!r} is not allowed here; run one of:\n" + _usage())
        verb = argv[0]
        as_json = "--json" in argv[1:]
        args = [a for a in argv[1:] if a not in ("--json", "-q", "--quiet")]
        run: Callable[..., Awaitable[Any]] = getattr(self, f"_cmd_{verb}")
        try:
            if any(a.startswith("-") for a in args):
                raise TypeError
            inspect.signature(run).bind(0, *args)
        except TypeError:
            raise _Usage(f"usage: {COMMANDS[verb]} (and --json)") from None
        uid = self.daemon.uid_of(user)
        data = await run(uid, *args)
        if as_json:
            return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        return getattr(self, f"_text_{verb}")(data)

    # -- commands: each returns its data, and _text_VERB its text ----------------------------

    async def _cmd_spawn(self, uid: int, name: str) -> dict[str, Any]:
        return await self.daemon.control(uid, "spawn", name)

    @staticmethod
    def _text_spawn(d: dict[str, Any]) -> str:
        return f"{d['id']}\n"

    async def _cmd_spawns(self, uid: int) -> list[dict[str, Any]]:
        return await self.daemon.control(uid, "spawns")

    @staticmethod
    def _text_spawns(rows: list[dict[str, Any]]) -> str:
        return _table([[str(d["id"]), str(d["name"]), str(d["root"])] for d in rows])

    async def _cmd_save(self, uid: int, sid: str, name: str | None = None) -> dict[str, Any]:
        return await self.daemon.control(uid, "save", sid, *([name] if name else []))

    @staticmethod
    def _text_save(d: dict[str, Any]) -> str:
        out = f"{d['score']}\n"
        if d.get("name_error"):
            out += f"(saved, but the name was not recorded: {d['name_error']})\n"
        return out

    async def _cmd_kill(self, uid: int, sid: str) -> dict[str, Any]:
        return await self.daemon.control(uid, "kill", sid)

    @staticmethod
    def _text_kill(d: dict[str, Any]) -> str:
        return f"killed spawn {d['id']}\n"

    async def _cmd_names(self, uid: int) -> list[dict[str, Any]]:
        return await self.daemon.control(uid, "names")  # the names uid may read

    @staticmethod
    def _text_names(rows: list[dict[str, Any]]) -> str:
        return _table([[r["name"], r["score"] or "", r["user"], r["date"]] for r in rows])

    async def _cmd_history(self, uid: int, name: str) -> list[dict[str, Any]]:
        from ndb.errors import NdbNotFound

        try:
            return await self.daemon.control(uid, "history", name)
        except NdbNotFound:  # unknown, or not the caller's to read: the same answer
            raise OSError(errno.ENOENT, f"history {name}: no such name") from None

    @staticmethod
    def _text_history(rows: list[dict[str, Any]]) -> str:
        return _table([[r["date"], "deleted" if r["deleted"] else (r["score"] or ""), r["user"],
                        f"prev={r['prev']}" if r["prev"] else ""] for r in rows])



class _Usage(Exception):
    """A command that is not one of ours, or has the wrong arguments."""


def _usage() -> str:
    return "\n".join(f"  {u}" for u in COMMANDS.values())


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n"
                   for r in rows)
