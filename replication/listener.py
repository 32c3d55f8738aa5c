"""The peer listener: one mutual-TLS port for other nodes, serving blocks and names.

A node's peers dial this port to push blocks into its store, to read blocks from it (pull
replication), and to exchange name records. Choices, and why:

- **Only nodes of this grid, and only known ones.** The TLS context (replication.certs
  ``server_context``) trusts the grid CA and nothing else, so a certificate from another CA
  fails the handshake itself. After the handshake the certificate must be a *node*
  certificate (a user's is refused: users do not write other nodes' stores) naming a peer
  that ndb's peers file lists (``known_identity``: removing a peer revokes it).
- **Two kinds of connection on one port** (replication.control explains the sniffing): a
  block-protocol connection goes to a ``store.server.BlockServer`` unchanged, so blocks get
  every check the store makes (score computed by the receiver, closure, sync); a control
  connection is answered here. The first four bytes decide, so the block path pays nothing.
- **Names after blocks** (invariant 4): a merged record whose root block this store lacks is
  skipped, and reported back so the sender can say so.
- **Store and file work runs in the BlockServer's threads**, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ndb.errors import NdbError, NdbRecordError, NdbValueError
from ndb.names import FORGET, KIND, ForgetRecord, NameDB, NameRecord
from ndb.syntax import parse
from ndb.values import check_not_future
from replication import control
from replication._ca import NODE, known_identity
from replication._tls import peer_identity
from replication.errors import CertError
from store.base import BlockStore
from store.errors import CorruptBlock, StoreError
from store.score import format_score
from store.server import READ_SIZE, BlockServer

log = logging.getLogger("replication.listener")

SNIFF_TIMEOUT = 30.0  # seconds a connection may stay silent before its first bytes


def parse_names(text: str, where: str = "<peer names>") -> list[NameRecord]:
    """The name records of an ndb text; NdbError naming the bad entry otherwise.

    ndb's parser drops a final line without its newline (a torn append, on a file); in a
    message that can only be a truncated or malformed one, so it is refused here."""
    if text and not text.endswith("\n"):
        raise NdbRecordError(f"{where}: the last record has no newline (truncated?)")
    parsed = parse(text.encode("utf-8"), where)
    return [NameRecord.from_entry(e, f"{where}:{e.lineno}") for e in parsed.entries
            if e.kind == KIND]


def parse_forgets(text: str, where: str = "<peer names>") -> list[ForgetRecord]:
    """The forget records of an ndb text (docs/ndb.md, "Forgetting")."""
    parsed = parse(text.encode("utf-8"), where)
    return [ForgetRecord.from_entry(e, f"{where}:{e.lineno}") for e in parsed.entries
            if e.kind == FORGET]


# Attributes that mean something about who may do what (users, groups, keys, peers): a name
# record carrying one is not a name record a node wrote, and is refused from peers.
RIGHTS_ATTRS = frozenset({"uid", "gid", "group", "sshkey", "cert", "peer", "addr", "owner",
                          "share", "mode", "perm", "admin", "root", "sys"})


def check_peer_records(records: list[NameRecord], where: str) -> None:
    """Refuse, naming the first offender, name records a peer must not send: dated more than
    a day ahead of this node's clock (such a record stays a name's latest forever), or
    carrying attributes that confer rights. NdbRecordError; nothing is merged then."""
    if len(records) > control.MERGE_MAX_RECORDS:
        raise NdbRecordError(
            f"{where}: {len(records)} name records in one merge, more than {control.MERGE_MAX_RECORDS}"
        )
    for r in records:
        try:
            check_not_future(r.date)
        except NdbValueError as e:
            raise NdbRecordError(f"{where}: name {r.name!r}: {e}") from None
        bad = sorted({p.attr for p in r.extra} & RIGHTS_ATTRS)
        if bad:
            raise NdbRecordError(
                f"{where}: name {r.name!r} carries {', '.join(a + '=' for a in bad)}, which a name "
                "record may not: refused"
            )


def merge_present(names: NameDB, store: BlockStore, records: list[NameRecord],
                  forgets: Iterable[ForgetRecord] = ()) -> tuple[
        list[NameRecord], list[NameRecord]]:
    """Merge the records whose root block *store* holds (tombstones always) into *names*,
    and every forget record (they reference no block).

    Returns (added, skipped). This is the one place a replicated name is recorded, so
    invariant 4 is checked here for push and pull alike.
    """
    roots = [r.score_raw for r in records if r.score_raw is not None]
    absent = set(store.missing(roots)) if roots else set()
    keep = [r for r in records if r.score_raw is None or r.score_raw not in absent]
    skipped = [r for r in records if r.score_raw is not None and r.score_raw in absent]
    return names.merge_from(keep, forgets), skipped


class PeerListener:
    """Serves *store* and the names file to peer nodes on one mutual-TLS TCP port.

    Arguments:
        store: the node's store (the daemon's writer); never closed here.
        node: this node's name (sent in Rhello, logged).
        names_path, peers_path: ndb files of names and of peers.
        ssl_context: a server context from replication.certs.server_context.
    """

    def __init__(self, store: BlockStore, *, node: str, names_path: str | os.PathLike[str],
                 peers_path: str | os.PathLike[str], ssl_context: ssl.SSLContext) -> None:
        self.store = store
        self.node = node
        self.names_path = Path(names_path)
        self.peers_path = Path(peers_path)
        self.ssl_context = ssl_context
        self.blocks = BlockServer(store, node=node)
        self._server: asyncio.Server | None = None
        self._controls: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Sniffer(self), host, port, ssl=self.ssl_context)
        log.info("peer listener of %s on %s (mutual TLS)", self.node, self.addresses)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [tuple(s.getsockname()[:2]) for s in self._server.sockets]  # type: ignore[misc]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._controls):
            t.cancel()
        if self._controls:
            await asyncio.gather(*self._controls, return_exceptions=True)
        await self.blocks.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    # -- who is calling --------------------------------------------------------------------

    def admit(self, transport: asyncio.BaseTransport) -> str | None:
        """The peer's node name if it may talk to us, else None (the reason is logged)."""
        peer = transport.get_extra_info("peername")
        sslobj = transport.get_extra_info("ssl_object")
        try:
            if sslobj is None:
                raise CertError("not a TLS connection")
            ident = peer_identity(sslobj, expect=NODE)
            known_identity(ident, None, self.peers_path)
        except CertError as e:
            log.warning("refused %s: %s", peer, e)
            return None
        log.info("peer %s connected from %s", ident.name, peer)
        return ident.name

    # -- the control connection ------------------------------------------------------------

    async def serve_control(self, peer: str, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._controls.add(task)
        try:
            rest = await reader.readexactly(len(control.MAGIC))
            if rest != control.MAGIC:
                log.warning("peer %s: bad control magic %r; closing", peer, rest)
                return
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(4), control.IDLE_TIMEOUT)
                except asyncio.IncompleteReadError:
                    return  # clean end
                except TimeoutError:
                    log.info("peer %s: control connection idle for %ds; closing", peer,
                             control.IDLE_TIMEOUT)
                    return
                body = await asyncio.wait_for(reader.readexactly(control.frame_length(head)),
                                              control.IDLE_TIMEOUT)
                request = control.decode(body)
                reply = await asyncio.get_running_loop().run_in_executor(
                    self.blocks.executor, self._answer, peer, request)
                writer.write(control.encode(reply))
                await writer.drain()
        except (control.ControlError, asyncio.IncompleteReadError, TimeoutError) as e:
            log.warning("peer %s: control connection closed: %s", peer, e)
        except (ConnectionError, OSError) as e:
            log.info("peer %s: control connection lost: %s", peer, e)
        finally:
            self._controls.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    def _answer(self, peer: str, req: dict[str, Any]) -> dict[str, Any]:
        """One control request (in a worker thread); every failure becomes an error reply."""
        op = req.get("op")
        try:
            if op == "names":
                return {"ok": True, "names": NameDB(self.names_path).all().to_text()}
            if op == "merge":
                text = req.get("names")
                if not isinstance(text, str):
                    return {"ok": False, "error": "merge needs names (ndb text)"}
                if len(text.encode("utf-8")) > control.MERGE_MAX:
                    return {"ok": False, "error": f"a merge is at most {control.MERGE_MAX} bytes of "
                                                  "ndb text: send it in pieces"}
                records = parse_names(text, f"names from {peer}")
                forgets = parse_forgets(text, f"names from {peer}")
                check_peer_records(records, f"names from {peer}")
                added, skipped = merge_present(NameDB(self.names_path), self.store, records,
                                               forgets)
                if added or skipped:
                    log.info("peer %s: %d name record(s) merged, %d skipped (root absent)",
                             peer, len(added), len(skipped))
                return {"ok": True, "added": len(added), "skipped": [r.name for r in skipped]}
            if op == "log":
                return self._log(req)
            return {"ok": False, "error": f"unknown request {op!r}"}
        except CorruptBlock as e:
            log.error("peer %s: %s", peer, e)
            return {"ok": False, "error": str(e), "score": format_score(e.score)}
        except (NdbError, StoreError, OSError) as e:
            log.warning("peer %s: %s failed: %s", peer, op, e)
            return {"ok": False, "error": str(e)}

    def _log(self, req: dict[str, Any]) -> dict[str, Any]:
        start, limit = req.get("start"), req.get("max", control.LOG_MAX)
        if not isinstance(start, int) or not isinstance(limit, int) or start < 0 or limit < 1:
            return {"ok": False, "error": "log needs start >= 0 and max >= 1 (integers)"}
        iter_log = getattr(self.store, "iter_log", None)
        if iter_log is None:
            return {"ok": False, "error": "this store has no log"}
        end = self.store.position()
        if start > end:
            return {"ok": False, "error": f"position {start} is past the log's end {end}"}
        records: list[list[Any]] = []
        for rec in iter_log(start):
            if rec.position >= end or len(records) >= min(limit, control.LOG_MAX):
                break
            records.append([rec.position, rec.next_position, rec.score.hex()])
        return {"ok": True, "records": records, "end": end}


class _Sniffer(asyncio.Protocol):
    """The first protocol of every connection: checks who it is, reads four bytes, then
    hands the transport to a stream protocol for the block server or the control handler."""

    def __init__(self, listener: PeerListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.buf = bytearray()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = self.listener.admit(transport)
        if self.peer is None:
            transport.abort()
            return
        self.timer = asyncio.get_running_loop().call_later(SNIFF_TIMEOUT, transport.abort)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) < control.SNIFF or self.transport is None or self.peer is None:
            return
        if self.timer is not None:
            self.timer.cancel()
        peer = self.peer
        reader = asyncio.StreamReader(limit=READ_SIZE)
        if control.is_control(self.buf):
            async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                await self.listener.serve_control(peer, r, w)
            proto = asyncio.StreamReaderProtocol(reader, handler)
        else:
            # BlockServer's connection handler, as its own listeners would call it: the
            # session runs, is counted and is cancelled on close exactly as theirs are.
            proto = asyncio.StreamReaderProtocol(reader, self.listener.blocks._on_connect)
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        proto.data_received(bytes(self.buf))
        self.buf.clear()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
