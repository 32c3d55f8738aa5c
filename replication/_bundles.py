"""Credentials on disk: bundle directories (what a node or user holds) and the one-file
join bundle that carries a second node's credentials from the CA node to it.

A bundle is a directory with ``cert.pem``, ``key.pem`` and ``ca.pem``: the three files every
TLS tool (OpenSSL, curl, stunnel, Python's ssl) asks for, so a user's bundle works as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from cryptography import x509

from replication._ca import (
    CA,
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    NODE,
    Credentials,
    Kind,
    check_ca_cert,
    check_dates,
    check_pair,
    fingerprint,
    is_ca,
    issue_node_cert,
    verify_cert,
)
from replication._pemfiles import (
    PrivateKey,
    cert_pem,
    key_pem,
    load_cert,
    load_key,
    parse_cert,
    parse_key,
    pem_blocks,
    write_dir,
    write_file,
)
from replication.errors import CertExists, CertMissing, CertUnreadable

JOIN_HEADER = b"# grid join bundle"

# -- bundles on disk ----------------------------------------------------------------------------


def write_bundle(
    bundle_dir: str | os.PathLike[str], creds: Credentials, *, replace: bool = False
) -> Path:
    """Write *creds* as a bundle directory (``cert.pem``, ``key.pem``, ``ca.pem``; 0600 files
    in a 0700 directory), all three at once. Without *replace*, an existing bundle is kept
    (CertExists)."""
    return write_dir(bundle_dir, creds.files(), replace=replace)


def export_bundle(out_dir: str | os.PathLike[str], creds: Credentials) -> Path:
    """Copy *creds* into a directory someone chose (``grid user cert --out``): made (0700) when
    missing; otherwise ``cert.pem``, ``key.pem`` and ``ca.pem`` are replaced one by one, each
    atomically and 0600, and anything else there is left alone."""
    out = Path(out_dir)
    if not out.exists():
        return write_bundle(out, creds)
    if not out.is_dir():
        raise CertExists("exists and is not a directory", str(out))
    for name, data in creds.files().items():
        write_file(out / name, data)
    return out


def load_credentials(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    ca: str | os.PathLike[str],
    *,
    expect: Kind | None = None,
    now: datetime | None = None,
) -> Credentials:
    """Read and check a certificate, its key and the CA: every file there and readable, the
    key private (0600) and matching, the certificate issued by the CA, valid now, of kind
    *expect*."""
    ca_cert = load_cert(ca, "CA certificate")
    check_ca_cert(ca_cert, str(ca))
    check_dates(ca_cert, str(ca), now)
    leaf = load_cert(cert, "certificate")
    verify_cert(leaf, ca_cert, expect=expect, now=now, where=str(cert))
    private = load_key(key)
    check_pair(leaf, private, str(key))
    return Credentials(leaf, private, ca_cert)


def load_bundle(
    bundle_dir: str | os.PathLike[str], *, expect: Kind | None = None, now: datetime | None = None
) -> Credentials:
    """The checked credentials in a bundle directory."""
    d = Path(bundle_dir)
    if not d.is_dir():
        raise CertMissing("no certificate bundle here", str(d))
    return load_credentials(d / CERT_FILE, d / KEY_FILE, d / CA_FILE, expect=expect, now=now)


# -- joining a second node ----------------------------------------------------------------------


def export_join_bundle(
    ca: CA,
    node_name: str,
    hosts: Iterable[str] = (),
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> bytes:
    """Issue a certificate for another node and return it as one file to carry there.

    One PEM file rather than a directory, so it goes through ``scp`` or a pipe
    (``grid join-bundle node2 -o - | ssh node2 grid init --join -``): the node's
    certificate, its private key, then the CA certificate, after comment lines saying what it
    is. It holds a private key: keep it secret and delete it once installed. It never holds
    the CA key.
    """
    creds = issue_node_cert(ca, node_name, hosts, not_before=not_before, not_after=not_after)
    head = (
        f"{JOIN_HEADER.decode()}: node {node_name} of grid {ca.grid_name}\n"
        f"# CA {fingerprint(ca.cert)}\n"
        "# Holds the node's private key: keep it secret; delete it after `grid init --join`.\n"
    ).encode()
    return head + cert_pem(creds.cert) + key_pem(creds.key) + cert_pem(creds.ca_cert)


def read_join_bundle(
    data: bytes, *, where: str = "join bundle", now: datetime | None = None
) -> Credentials:
    """Parse and check a join bundle: one node certificate, its key, the CA that issued it,
    all valid now. A user bundle or anything else is refused with the reason."""
    certs: list[x509.Certificate] = []
    keys: list[PrivateKey] = []
    for label, block in pem_blocks(data):
        if label == "CERTIFICATE":
            certs.append(parse_cert(block, where))
        elif label.endswith("PRIVATE KEY"):
            keys.append(parse_key(block, where))
    if len(keys) != 1 or len(certs) != 2:
        raise CertUnreadable(
            f"not a grid join bundle: want 2 certificates and 1 private key, "
            f"found {len(certs)} and {len(keys)}",
            where,
        )
    leaf, ca_cert = sorted(certs, key=is_ca)  # the CA last, whatever the order in the file
    check_ca_cert(ca_cert, where)
    check_dates(ca_cert, where, now)
    verify_cert(leaf, ca_cert, expect=NODE, now=now, where=where)
    check_pair(leaf, keys[0], where)
    return Credentials(leaf, keys[0], ca_cert)


def install_node_credentials(
    creds: Credentials, ca_dir: str | os.PathLike[str], node_dir: str | os.PathLike[str]
) -> Credentials:
    """Install a joining node's credentials: the CA certificate (no key) into *ca_dir*, the
    node's bundle into *node_dir*. Idempotent: installing the same credentials again changes
    nothing. A node that already has a different CA or node certificate is refused
    (CertExists): switching grids means removing the certs directory by hand."""
    ca_dir, node_dir = Path(ca_dir), Path(node_dir)
    ca_path = ca_dir / CERT_FILE
    if ca_path.exists() and load_cert(ca_path, "CA certificate") != creds.ca_cert:
        raise CertExists("this node already belongs to another grid's CA", str(ca_path))
    node_cert = node_dir / CERT_FILE
    if node_cert.exists() and load_cert(node_cert) != creds.cert:
        raise CertExists("this node already has another certificate", str(node_cert))
    if not ca_path.exists():
        ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_file(ca_path, cert_pem(creds.ca_cert), replace=False)
    if not node_cert.exists():
        write_bundle(node_dir, creds)
    return creds


def import_join_bundle(
    data: bytes,
    ca_dir: str | os.PathLike[str],
    node_dir: str | os.PathLike[str],
    *,
    where: str = "join bundle",
) -> Credentials:
    """``read_join_bundle`` then ``install_node_credentials``."""
    return install_node_credentials(read_join_bundle(data, where=where), ca_dir, node_dir)
