"""Run a BlockServer in a background thread's event loop, for tests of blocking clients.

The contract suite (tests/store/conftest.py) uses ``start_server`` and ``connect`` to run
every store test against a RemoteStore over a real socket.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from store.base import BlockStore
from store.client import RemoteStore
from store.server import BlockServer

# A Unix socket path, (host, port) for TCP, or (host, port, client context) for TLS.
Address = str | tuple[str, int] | tuple[str, int, ssl.SSLContext]

_MAX_UNIX_PATH = 100  # sun_path holds 108 bytes; keep clear of it


class ServerThread:
    """A BlockServer on its own loop in a daemon thread; ``stop()`` joins it."""

    def __init__(self, store: BlockStore, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = BlockServer(store, **options)
        self._thread = threading.Thread(
            target=self.loop.run_forever, daemon=True, name="test-block-server"
        )
        self._thread.start()
        self._cleanup: list[Callable[[], None]] = []

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(
        self,
        kind: str,
        tmp_path: Path | None = None,
        ssl_server_context: ssl.SSLContext | None = None,
    ) -> Address:
        if kind == "unix":
            base = Path(tmp_path) if tmp_path is not None else None
            if base is None or len(str(base / "block.sock")) > _MAX_UNIX_PATH:
                short = tempfile.mkdtemp(prefix="grid-sock-")
                self._cleanup.append(lambda: shutil.rmtree(short, ignore_errors=True))
                base = Path(short)
            path = str(base / "block.sock")
            self.run(self.server.start_unix(path))
            return path
        if kind == "tcp":
            self.run(self.server.start_tcp("127.0.0.1", 0, ssl=ssl_server_context))
            host, port = self.server.addresses[-1]
            return (host, port)
        if kind == "tls":  # mutual TLS with a throwaway CA; the address carries the client side
            if tmp_path is None:
                directory = tempfile.mkdtemp(prefix="grid-tls-")
                self._cleanup.append(lambda: shutil.rmtree(directory, ignore_errors=True))
            else:
                directory = str(Path(tmp_path) / "tls")
            tls = TlsMaterial(Path(directory))
            self.run(self.server.start_tcp("127.0.0.1", 0, ssl=tls.server_context()))
            host, port = self.server.addresses[-1]
            return (host, port, tls.client_context("contract"))
        raise ValueError(f"unknown server kind {kind!r} (unix, tcp or tls)")

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        try:
            self.run(self.server.close(), timeout=60.0)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10.0)
            if not self.loop.is_running():
                self.loop.close()
            for fn in self._cleanup:
                fn()


def start_server(
    store: BlockStore,
    kind: str = "unix",
    tmp_path: Path | None = None,
    ssl_server_context: ssl.SSLContext | None = None,
    **options: Any,
) -> tuple[Address, Callable[[], None]]:
    """Serve *store* on a Unix socket (``kind="unix"``: the address is a path), TCP on
    127.0.0.1 (``"tcp"``: (host, port); TLS when *ssl_server_context* is given), or mutual
    TLS with a throwaway CA (``"tls"``: (host, port, client context), client CN "contract").

    Returns the address and a function that stops the server (idempotent). *options* go to
    BlockServer (read_only, node, identity, max_outstanding, ...).
    """
    st = ServerThread(store, **options)
    try:
        address = st.start(kind, tmp_path, ssl_server_context)
    except BaseException:
        st.stop()
        raise
    return address, st.stop


def start_server_thread(
    store: BlockStore,
    kind: str = "unix",
    tmp_path: Path | None = None,
    ssl_server_context: ssl.SSLContext | None = None,
    **options: Any,
) -> tuple[Address, ServerThread]:
    """As start_server, but returns the ServerThread (for its server's statistics)."""
    st = ServerThread(store, **options)
    try:
        return st.start(kind, tmp_path, ssl_server_context), st
    except BaseException:
        st.stop()
        raise


def connect(
    address: Address, ssl_client_context: ssl.SSLContext | None = None, **options: Any
) -> RemoteStore:
    """A RemoteStore on *address* as returned by start_server."""
    if isinstance(address, str | os.PathLike):
        return RemoteStore.connect_unix(os.fspath(address), **options)
    if len(address) == 3:
        host, port, ctx = address  # type: ignore[misc]
        return RemoteStore.connect_tcp(host, port, ssl_context=ssl_client_context or ctx, **options)
    host, port = address  # type: ignore[misc]
    return RemoteStore.connect_tcp(host, port, ssl_context=ssl_client_context, **options)


# -- TLS material for tests: a throwaway CA, a server certificate, client certificates ----------


def _name(cn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject_cn: str,
    issuer: tuple[Any, Any] | None,
    *,
    ca: bool = False,
    san: list[Any] | None = None,
) -> tuple[Any, Any]:
    """(certificate, key): self-signed when *issuer* is None, else signed by (cert, key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer_name = _name(subject_cn) if issuer is None else issuer[0].subject
    signing_key = key if issuer is None else issuer[1]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signing_key, hashes.SHA256()), key


def _write_pem(directory: Path, stem: str, cert: Any, key: Any) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


class TlsMaterial:
    """A grid-like CA with a server certificate (localhost, 127.0.0.1) and client certs.

    ``server_context()`` requires client certificates from the CA; ``client_context(cn)``
    presents a certificate with commonName *cn* (None: no certificate); ``stranger_context``
    presents one from an unrelated CA.
    """

    def __init__(self, directory: Path) -> None:
        import ipaddress

        from cryptography import x509

        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ca = _issue("grid test CA", None, ca=True)
        self.ca_file, _ = _write_pem(self.dir, "ca", *self._ca)
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        self.server_cert, self.server_key = _write_pem(
            self.dir, "server", *_issue("node1", self._ca, san=san)
        )

    def server_context(self, *, require_client_cert: bool = True) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        ctx.load_verify_locations(self.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        return ctx

    def client_context(self, cn: str | None = "alice") -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.ca_file)
        if cn is not None:
            ctx.load_cert_chain(*_write_pem(self.dir, f"client-{cn}", *_issue(cn, self._ca)))
        return ctx

    def stranger_context(self, cn: str = "mallory") -> ssl.SSLContext:
        other_ca = _issue("another CA", None, ca=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.ca_file)
        ctx.load_cert_chain(*_write_pem(self.dir, f"stranger-{cn}", *_issue(cn, other_ca)))
        return ctx
