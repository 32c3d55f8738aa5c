"""The grid CA and its certificate profiles: making the CA (its directory), issuing node and
user certificates in memory, checking them, and reading an identity back out of a peer
certificate. Bundles on disk are ``_bundles``, file mechanics ``_pemfiles``;
``replication.certs`` is the public face and explains the choices.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ndb.errors import NdbValueError
from ndb.values import check_peer_name, check_user_name
from replication._pemfiles import PrivateKey, cert_pem, key_pem, load_cert, load_key, write_dir
from replication.errors import (
    CertExists,
    CertExpired,
    CertMissing,
    CertNotYetValid,
    CertUnknown,
    CertUnreadable,
    CertWrongCA,
    CertWrongKind,
)

Kind = Literal["node", "user"]
NODE: Kind = "node"
USER: Kind = "user"
_CA_OU = "ca"

CA_DAYS = 3650  # ten years: replacing a CA means re-issuing every certificate of the grid
NODE_DAYS = 730  # two years: within the 825 days Apple's TLS stack accepts for a server
USER_DAYS = 365  # one year: a user's key travels to laptops; `grid user cert` renews it
BACKDATE = timedelta(minutes=5)

# File names inside a CA directory and inside a bundle directory.
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CA_FILE = "ca.pem"

_GRID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,59}")
_DNS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")
_ALWAYS_HOSTS = ("localhost", "127.0.0.1", "::1")


class Identity(NamedTuple):
    """Who a verified certificate names: ``("user", "alice")`` or ``("node", "node2")``."""

    kind: Kind
    name: str


@dataclass(frozen=True, slots=True)
class CA:
    """The grid's CA: its certificate, and its key on the one node that issues."""

    cert: x509.Certificate
    key: PrivateKey | None = None

    @property
    def grid_name(self) -> str:
        return _one(self.cert.subject, NameOID.ORGANIZATION_NAME) or ""

    def require_key(self) -> PrivateKey:
        if self.key is None:
            raise CertMissing(
                "this node has no CA key: certificates are issued on the grid's CA node"
            )
        return self.key


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a node or a user holds: its certificate and key, and the CA to verify peers with.

    On disk it is a *bundle*: a directory with ``cert.pem``, ``key.pem`` and ``ca.pem``
    (all 0600), the three files every TLS tool asks for.
    """

    cert: x509.Certificate
    key: PrivateKey
    ca_cert: x509.Certificate

    @property
    def identity(self) -> Identity:
        return identity_of(self.cert)

    def files(self) -> dict[str, bytes]:
        return {
            CERT_FILE: cert_pem(self.cert),
            KEY_FILE: key_pem(self.key),
            CA_FILE: cert_pem(self.ca_cert),
        }


# -- names and validity -------------------------------------------------------------------------


def _one(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else None


def check_grid_name(name: str) -> str:
    """A grid name (the certificates' O=): letters, digits, ``_ . -``; at most 60."""
    if not isinstance(name, str) or not _GRID_NAME.fullmatch(name):
        raise ValueError(f"bad grid name {name!r}: use letters, digits, '_', '.', '-' (at most 60)")
    return name


def _window(
    days: int,
    not_before: datetime | None,
    not_after: datetime | None,
    ca: x509.Certificate | None,
) -> tuple[datetime, datetime]:
    """The validity window: now-5min .. +days unless given; never beyond the CA's end."""
    now = datetime.now(UTC)
    start = not_before if not_before is not None else now - BACKDATE
    end = not_after if not_after is not None else now + timedelta(days=days)
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("validity dates must be timezone-aware")
    if ca is not None:
        end = min(end, ca.not_valid_after_utc)
    if end <= start:
        raise ValueError(f"empty validity window: {start.isoformat()} .. {end.isoformat()}")
    return start, end


def _new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _sign_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def check_hosts(hosts: Iterable[str]) -> list[str]:
    """The host names and addresses a node certificate can hold; ValueError for a bad one."""
    hosts = list(hosts)
    _san("localhost", hosts)
    return hosts


def _san(node_name: str, hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    """DNS and IP names for a node: its name, the given hosts, and loopback (so a node can
    always be reached as localhost, and tests and tunnels need no DNS)."""
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in (node_name, *hosts, *_ALWAYS_HOSTS):
        host = raw.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if not _DNS_NAME.fullmatch(host) or not host.isascii():
                raise ValueError(f"bad host name {raw!r} for a certificate") from None
            key, entry = host.lower(), x509.DNSName(host.lower())
        else:
            key, entry = str(ip), x509.IPAddress(ip)
        if key not in seen:
            seen.add(key)
            entries.append(entry)
    return x509.SubjectAlternativeName(entries)


# -- the CA -------------------------------------------------------------------------------------


def _ca_cert(
    key: PrivateKey, grid_name: str, not_before: datetime, not_after: datetime
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, grid_name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _CA_OU),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{grid_name} CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, _sign_hash(key))
    )


def create_ca(
    ca_dir: str | os.PathLike[str],
    grid_name: str,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> CA:
    """Make the grid's CA in *ca_dir* (``cert.pem``, ``key.pem``, both 0600).

    Refuses (CertExists) when *ca_dir* already holds anything: a CA is never overwritten,
    because every certificate of the grid hangs on it. The two files appear together or not
    at all (written in a temporary directory that is renamed into place).
    """
    check_grid_name(grid_name)
    ca_dir = Path(ca_dir)
    if ca_dir.exists() and any(ca_dir.iterdir()):
        raise CertExists("a CA exists here; refusing to overwrite it", str(ca_dir))
    start, end = _window(CA_DAYS, not_before, not_after, None)
    key = _new_key()
    cert = _ca_cert(key, grid_name, start, end)
    write_dir(ca_dir, {CERT_FILE: cert_pem(cert), KEY_FILE: key_pem(key)}, replace=False)
    return CA(cert, key)


def is_ca(cert: x509.Certificate) -> bool:
    """Whether *cert* says it is a CA (basicConstraints CA:true)."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def check_ca_cert(cert: x509.Certificate, where: str) -> None:
    if not is_ca(cert):
        raise CertWrongKind("not a CA certificate", where)
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertWrongCA("the CA certificate is not self-signed", where) from None


def load_ca(ca_dir: str | os.PathLike[str], *, need_key: bool = True) -> CA:
    """The CA in *ca_dir*. With *need_key*, its key too (to issue); a joined node has only the
    certificate, and verifying needs no more."""
    ca_dir = Path(ca_dir)
    cert_path = ca_dir / CERT_FILE
    cert = load_cert(cert_path, "CA certificate")
    check_ca_cert(cert, str(cert_path))
    check_dates(cert, str(cert_path), None)
    key_path = ca_dir / KEY_FILE
    if not key_path.exists():
        if need_key:
            raise CertMissing(
                "no CA key: this node joined a grid and cannot issue certificates; "
                "issue on the grid's CA node",
                str(key_path),
            )
        return CA(cert, None)
    key = load_key(key_path, "CA key")
    check_pair(cert, key, str(key_path))
    return CA(cert, key)


# -- issuing ------------------------------------------------------------------------------------


def _issue(
    ca: CA,
    kind: Kind,
    name: str,
    eku: list[x509.ObjectIdentifier],
    san: x509.SubjectAlternativeName | None,
    days: int,
    not_before: datetime | None,
    not_after: datetime | None,
) -> Credentials:
    ca_key = ca.require_key()
    start, end = _window(days, not_before, not_after, ca.cert)
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ca.grid_name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return Credentials(builder.sign(ca_key, _sign_hash(ca_key)), key, ca.cert)


def issue_node_cert(
    ca: CA,
    node_name: str,
    hosts: Iterable[str] = (),
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Credentials:
    """A node's certificate: it serves (9P, blocks, replication) and dials other nodes.

    subjectAltName holds the node name, each of *hosts* (DNS names or IP addresses) and
    localhost/127.0.0.1/::1, so a client can check the server by any name it dialled.
    """
    try:
        check_peer_name(node_name)
    except NdbValueError as e:
        raise ValueError(str(e).replace("peer name", "node name")) from None
    eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue(
        ca, NODE, node_name, eku, _san(node_name, hosts), NODE_DAYS, not_before, not_after
    )


def issue_user_cert(
    ca: CA,
    user: str,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Credentials:
    """A user's client certificate (clientAuth only: it can never pose as a server)."""
    check_user_name(user)
    eku = [ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue(ca, USER, user, eku, None, USER_DAYS, not_before, not_after)


# -- identity and verification ------------------------------------------------------------------


def identity_of(cert: x509.Certificate | bytes, *, expect: Kind | None = None) -> Identity:
    """Who a *verified* peer certificate names: ``("user", name)`` or ``("node", name)``.

    *cert* is a cryptography certificate or the DER bytes of
    ``SSLSocket.getpeercert(binary_form=True)``. This reads the grid's profile and does not
    check the signature: TLS verified it against the CA already (``verify_cert`` checks
    everything for certificates that come another way). CertWrongKind when the certificate
    is not a grid node or user certificate, or is not of kind *expect*.
    """
    if isinstance(cert, bytes | bytearray | memoryview):
        try:
            cert = x509.load_der_x509_certificate(bytes(cert))
        except ValueError as e:
            raise CertUnreadable(f"peer certificate does not parse ({e})") from None
    who = f"certificate {cert.subject.rfc4514_string()!r}"
    if is_ca(cert):
        raise CertWrongKind(f"{who} is a CA certificate, not a node or user")
    try:
        eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        raise CertWrongKind(f"{who} is not a grid node or user certificate") from None
    kind = _one(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    name = _one(cert.subject, NameOID.COMMON_NAME)
    if kind not in (NODE, USER) or name is None:
        raise CertWrongKind(f"{who} is not a grid node or user certificate")
    try:
        (check_peer_name if kind == NODE else check_user_name)(name)
    except NdbValueError as e:
        raise CertWrongKind(f"{who}: {e}") from None
    needs = {ExtendedKeyUsageOID.CLIENT_AUTH}
    if kind == NODE:
        needs.add(ExtendedKeyUsageOID.SERVER_AUTH)
    if not needs <= eku:
        raise CertWrongKind(f"{who} lacks the extended key usage of a {kind} certificate")
    if expect is not None and kind != expect:
        raise CertWrongKind(f"{who} is a {kind} certificate; a {expect} certificate is required")
    return Identity(kind, name)  # type: ignore[arg-type]


def check_dates(cert: x509.Certificate, where: str, now: datetime | None) -> None:
    now = now or datetime.now(UTC)
    if now < cert.not_valid_before_utc:
        raise CertNotYetValid(
            f"certificate not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ} "
            "(is a clock wrong?)",
            where,
        )
    if now > cert.not_valid_after_utc:
        raise CertExpired(
            f"certificate expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}", where
        )


def check_pair(cert: x509.Certificate, key: PrivateKey, where: str) -> None:
    if cert.public_key() != key.public_key():
        raise CertUnreadable("the private key does not match the certificate", where)


def verify_cert(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    *,
    expect: Kind | None = None,
    now: datetime | None = None,
    where: str | None = None,
) -> Identity:
    """Everything TLS would check, with a precise error for each: issued by *ca_cert*
    (CertWrongCA), inside its validity (CertExpired, CertNotYetValid), a grid node or user
    certificate of kind *expect* (CertWrongKind). Returns its identity."""
    where = where or cert.subject.rfc4514_string()
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertWrongCA(
            f"not issued by this grid's CA ({ca_cert.subject.rfc4514_string()}); "
            f"its issuer is {cert.issuer.rfc4514_string()}",
            where,
        ) from None
    check_dates(cert, where, now)
    return identity_of(cert, expect=expect)


def fingerprint(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the DER certificate: what people compare by eye."""
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def known_identity(
    identity: Identity,
    users_db: str | os.PathLike[str] | None,
    peers_db: str | os.PathLike[str] | None,
) -> Identity:
    """*identity* when ndb lists it (users file for users, peers file for nodes), else
    CertUnknown naming who is unknown. A certificate alone is not enough: it must name
    someone the grid still knows, which is how removing a user or peer revokes it."""
    if identity.kind == USER:
        from ndb.users import UserDB

        if users_db is None or UserDB(users_db).get(identity.name) is None:
            raise CertUnknown(f"unknown user {identity.name!r}")
    else:
        from ndb.peers import PeerDB

        if peers_db is None or PeerDB(peers_db).get(identity.name) is None:
            raise CertUnknown(f"unknown peer {identity.name!r}")
    return identity
