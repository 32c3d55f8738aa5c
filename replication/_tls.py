"""TLS contexts for the grid: mutual TLS 1.3, trusting the grid's CA and nothing else.

Why not ``ssl.create_default_context``: it trusts the system's roots, so any certificate a
public CA ever issued for a matching name would be accepted. A grid trusts exactly its own CA,
and every connection is mutual: the server requires a client certificate (that is how a user
or a peer node is identified, invariant 9), and the client requires the server's and checks
that it names the node it dialled.

The files are checked (``load_credentials``) before OpenSSL sees them, so a missing,
expired or mismatched certificate is reported as such, here, rather than as a handshake
failure on the other end of the connection.
"""

from __future__ import annotations

import os
import ssl
from datetime import datetime
from typing import Protocol

from replication._bundles import load_credentials
from replication._ca import Identity, Kind, identity_of
from replication.errors import CertMissing

PathLike = str | os.PathLike[str]


def _base(protocol: int, cert: PathLike, key: PathLike, ca: PathLike) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Strict RFC 5280 checks, as Python 3.13's default context does: our certificates must
    # pass them so that users' own tools accept them.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cafile=os.fspath(ca))  # the grid CA only: no system roots
    ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    return ctx


def server_context(
    cert: PathLike, key: PathLike, ca: PathLike, *, now: datetime | None = None
) -> ssl.SSLContext:
    """A server context for a node: TLS 1.3 at least, a client certificate from the grid CA
    required. *cert* must be a node certificate (CertWrongKind otherwise).

    The handshake proves the client holds *some* certificate of the grid; whether it may
    act as a user or must be a node is the caller's to check with ``peer_identity(...,
    expect=...)`` once connected.
    """
    load_credentials(cert, key, ca, expect="node", now=now)
    return _base(ssl.PROTOCOL_TLS_SERVER, cert, key, ca)


def client_context(
    cert: PathLike, key: PathLike, ca: PathLike, *, now: datetime | None = None
) -> ssl.SSLContext:
    """A client context for a user or a node: TLS 1.3 at least, presents *cert*, requires the
    server's certificate from the grid CA and checks its name. Pass the node name or a host
    in its certificate as ``server_hostname`` when wrapping the socket."""
    load_credentials(cert, key, ca, now=now)
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, cert, key, ca)
    ctx.check_hostname = True
    return ctx


class _HasPeerCert(Protocol):
    def getpeercert(self, binary_form: bool = ...) -> object: ...


def peer_identity(conn: _HasPeerCert, *, expect: Kind | None = None) -> Identity:
    """Who the other end of a finished handshake is (an ``ssl.SSLSocket`` or
    ``ssl.SSLObject``, e.g. ``transport.get_extra_info("ssl_object")`` under asyncio).
    CertWrongKind when it is not of kind *expect*."""
    der = conn.getpeercert(binary_form=True)
    if not der:
        raise CertMissing("the peer presented no certificate")
    assert isinstance(der, bytes)
    return identity_of(der, expect=expect)
