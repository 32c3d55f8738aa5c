"""The daemon's peer listener (``grid serve --blocks HOST:PORT``): blocks and names for
other nodes of the grid over mutual TLS (replication.listener has the rules).

The TLS context is built from this node's bundle (``certs/node``) at start, so a missing or
expired certificate stops ``grid serve`` with that reason rather than failing each peer's
handshake later.
"""

from __future__ import annotations

import logging
from typing import Any

from grid.errors import UserError

log = logging.getLogger("grid.daemon.peers")


class PeerService:
    """Adapter from the daemon's Service protocol to replication.listener.PeerListener."""

    name = "peer listener"

    def __init__(self, daemon: Any, host: str, port: int) -> None:
        self.daemon = daemon
        self.host = host
        self.port = port
        self.listener: Any = None

    async def start(self) -> None:
        from grid.init import node_dir
        from replication import certs
        from replication.listener import PeerListener

        home = self.daemon.home
        d = node_dir(home)
        try:
            ctx = certs.server_context(d / certs.CERT_FILE, d / certs.KEY_FILE, d / certs.CA_FILE)
            me = certs.load_bundle(d, expect=certs.NODE).identity.name
        except certs.CertError as e:
            raise UserError("grid serve --blocks", f"this node's certificate: {e}") from None
        self.listener = PeerListener(self.daemon.store, node=me, names_path=home.names_db,
                                     peers_path=home.peers_db, ssl_context=ctx)
        try:
            await self.listener.start(self.host, self.port)
        except OSError as e:
            raise UserError("grid serve --blocks",
                            f"cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
        self.name = f"peer listener on {self.host}:{self.listener.addresses[0][1]} as {me}"

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()


def make(daemon: Any) -> PeerService | None:
    """A PeerService when ``--blocks HOST:PORT`` was given, else None."""
    addr = daemon.settings.listen_blocks
    if not addr:
        return None
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UserError("grid serve --blocks", f"bad address {addr!r}: want HOST:PORT")
    return PeerService(daemon, host.strip("[]") or "0.0.0.0", int(port))
