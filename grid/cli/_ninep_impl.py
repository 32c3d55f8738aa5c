"""The work behind `grid 9p` and `grid tunnel` (grid.cli.ninep_cmd): loaded only when one
of them runs, so that other commands do not pay for asyncio and ssl at start-up."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import ssl
import stat as statmod
import sys
import time
from pathlib import Path
from typing import Any


def _hostport(text: str, what: str) -> tuple[str, int]:
    from grid.daemon.ninep_service import parse_hostport
    from grid.errors import UserError

    try:
        return parse_hostport(text)
    except ValueError as e:
        raise UserError(what, str(e)) from None


def _bundle(args: argparse.Namespace) -> Path:
    """The user's certificate bundle: --cert, else the home's certs/users/<login name>/."""
    from grid.errors import UserError

    if args.cert:
        return Path(args.cert)
    from grid.home import find_home

    home = find_home(getattr(args, "home", None))
    try:
        me = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        raise UserError("certificate", f"uid {os.getuid()} has no login name: give --cert DIR") from None
    d = home.certs / "users" / me
    if not d.is_dir():
        raise UserError("certificate", f"no bundle at {d}: give --cert DIR "
                                       f"(`grid user cert {me} --out DIR` on the CA node)")
    return d


def tls_client(bundle: Path) -> tuple[ssl.SSLContext, str]:
    """A client context from *bundle* and the user name its certificate carries; a missing,
    expired or foreign bundle is a CertError that says which file and why."""
    from replication.certs import CA_FILE, CERT_FILE, KEY_FILE, client_context, load_bundle

    creds = load_bundle(bundle, expect="user")
    return client_context(bundle / CERT_FILE, bundle / KEY_FILE, bundle / CA_FILE), creds.identity.name


# -- grid 9p ---------------------------------------------------------------------------------------


def run_9p(args: argparse.Namespace) -> int:
    return asyncio.run(_run_9p(args))


async def _connect(args: argparse.Namespace) -> tuple[Any, bytes, int]:
    """A version-negotiated client, the uname and the n_uname to attach with."""
    from grid.errors import UserError
    from spawn.ninep.client import Client
    from spawn.ninep.messages import NONUNAME

    addr = args.addr
    try:
        if "/" in addr or not addr.rpartition(":")[2].isdigit():
            client = await Client.connect_unix(addr)
            uname, n_uname = b"", os.getuid()
        else:
            host, port = _hostport(addr, "9p")
            ctx, user = tls_client(_bundle(args))
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx,
                                                           server_hostname=host)
            client = Client(reader, writer)
            uname, n_uname = user.encode(), NONUNAME
        await client.version(b"9P2000.L")
    except (ssl.SSLError, OSError) as e:
        raise UserError(addr, _why(e)) from None
    return client, uname, n_uname


def _why(e: BaseException) -> str:
    """One line for a failed connection: the TLS alert's reason, or the errno's text."""
    if isinstance(e, ssl.SSLError):
        return f"TLS handshake failed: {e.reason or e}"
    if isinstance(e, OSError) and e.errno:
        return f"cannot connect: {os.strerror(e.errno)}"
    return f"cannot connect: {e}"


async def _run_9p(args: argparse.Namespace) -> int:
    from grid.errors import UserError
    from spawn.ninep.client import ServerError

    client, uname, n_uname = await _connect(args)
    path = os.fsencode(args.path)
    try:
        try:
            await client.attach(0, uname, args.aname.encode(), n_uname=n_uname)
        except ServerError as e:
            raise UserError(f"attach {args.aname!r}", e.strerror or str(e)) from None
        try:
            await _OPS[args.op](client, path)
        except ServerError as e:
            raise UserError(f"{args.op} {args.path}", e.strerror or str(e)) from None
    except ConnectionError as e:  # the server went away mid-way (or never let us in)
        raise UserError(args.addr, str(e)) from None
    finally:
        await client.close()
    return 0


def _names(path: bytes) -> list[bytes]:
    return [n for n in path.split(b"/") if n and n != b"."]


async def _ls(client: Any, path: bytes) -> None:
    fid = client.fid()
    await client.walk(0, fid, _names(path))
    a = await client.getattr(fid)
    if not statmod.S_ISDIR(a.mode):
        sys.stdout.buffer.write(path.rstrip(b"/").rpartition(b"/")[2] + b"\n")
        return
    await client.lopen(fid, os.O_RDONLY)
    entries = await client.readdir_all(fid)
    out = sorted(d.name for d in entries if d.name not in (b".", b".."))
    sys.stdout.buffer.write(b"".join(n + b"\n" for n in out))
    await client.clunk(fid)


async def _cat(client: Any, path: bytes) -> None:
    fid = await client.walk_open(0, path, os.O_RDONLY)
    offset = 0
    chunk = client.msize - 24
    while True:
        data = await client.read(fid, offset, chunk)
        if not data:
            break
        sys.stdout.buffer.write(data)
        offset += len(data)
    sys.stdout.buffer.flush()
    await client.clunk(fid)


async def _write(client: Any, path: bytes) -> None:
    from grid.errors import UserError
    from spawn.ninep.client import ServerError

    names = _names(path)
    if not names:
        raise UserError("write /", "the attach root is a directory")
    fid = client.fid()
    try:
        await client.walk(0, fid, names)
        await client.lopen(fid, os.O_WRONLY | os.O_TRUNC)
    except ServerError as e:
        if e.errno != 2:
            raise
        await client.walk(0, fid, names[:-1])
        await client.lcreate(fid, names[-1], os.O_WRONLY | os.O_TRUNC, 0o644)
    data = sys.stdin.buffer.read()
    chunk = client.msize - 24
    offset = 0
    while offset < len(data):
        offset += await client.write(fid, offset, data[offset:offset + chunk])
    await client.clunk(fid)


async def _stat(client: Any, path: bytes) -> None:
    from spawn.ninep.messages import GetattrMask

    fid = client.fid()
    await client.walk(0, fid, _names(path))
    a = await client.getattr(fid, GetattrMask.ALL)
    mtime = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(a.mtime_sec))
    print(f"{os.fsdecode(path)}: {statmod.filemode(a.mode)} size {a.size} uid {a.uid} "
          f"gid {a.gid} nlink {a.nlink} mtime {mtime} qid.path {a.qid.path}")
    await client.clunk(fid)


_OPS = {"ls": _ls, "cat": _cat, "write": _write, "stat": _stat}


# -- grid tunnel -------------------------------------------------------------------------------------


def run_tunnel(args: argparse.Namespace) -> int:
    lhost, lport = _hostport(args.listen, "--listen")
    host, port = _hostport(args.node, "tunnel")
    ctx, user = tls_client(_bundle(args))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_tunnel(lhost, lport, host, port, ctx, user))
    return 0


async def _tunnel(lhost: str, lport: int, host: str, port: int, ctx: ssl.SSLContext,
                  user: str) -> None:
    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
        except (OSError, ssl.SSLError) as e:
            print(f"grid: tunnel: {host}:{port}: {_why(e)}", file=sys.stderr, flush=True)
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
        finally:
            up_w.close()
            writer.close()

    srv = await asyncio.start_server(forward, host=lhost, port=lport)
    addr = srv.sockets[0].getsockname()
    print(f"tunnel {addr[0]}:{addr[1]} -> {host}:{port} as {user}", flush=True)
    async with srv:
        await srv.serve_forever()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on (half-close), so each side sees the other end."""
    try:
        while data := await src.read(1 << 16):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
        else:
            dst.close()
    except (OSError, ssl.SSLError):
        dst.close()
