"""The grid CA and its TLS contexts, over real TLS on real loopback sockets.

Every refusal is checked where it happens: the server's handshake fails (a missing, foreign or
expired client certificate), the client's handshake fails (a foreign or expired server
certificate, a wrong name, a user posing as a server), or the handshake succeeds and the kind
check refuses (a user where a node is required). Certificates made with dates in the past or
future bypass our own pre-checks through raw ``ssl`` contexts, so that it is OpenSSL, on the
other end, that refuses them.
"""

from __future__ import annotations

import os
import socket
import ssl
import stat
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from replication import certs
from replication.certs import (
    CertExists,
    CertExpired,
    CertMissing,
    CertNotYetValid,
    CertUnknown,
    CertUnreadable,
    CertWrongCA,
    CertWrongKind,
    Identity,
)

NOW = datetime.now(UTC)


@dataclass(frozen=True)
class Bundle:
    dir: Path

    @property
    def cert(self) -> Path:
        return self.dir / "cert.pem"

    @property
    def key(self) -> Path:
        return self.dir / "key.pem"

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def server(self) -> ssl.SSLContext:
        return certs.server_context(self.cert, self.key, self.ca)

    def client(self) -> ssl.SSLContext:
        return certs.client_context(self.cert, self.key, self.ca)


@dataclass(frozen=True)
class Pki:
    root: Path
    ca: certs.CA
    other_ca: certs.CA
    node1: Bundle
    node2: Bundle
    bob: Bundle
    mallory: Bundle  # a user of another grid
    other_node: Bundle  # a node of another grid
    expired_user: Bundle
    expired_node: Bundle
    future_user: Bundle


def _write(root: Path, name: str, creds: certs.Credentials) -> Bundle:
    return Bundle(certs.write_bundle(root / name, creds))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = certs.create_ca(root / "ca", "testgrid")
    other = certs.create_ca(root / "other-ca", "othergrid")
    past = {"not_before": NOW - timedelta(days=30), "not_after": NOW - timedelta(days=1)}
    future = {"not_before": NOW + timedelta(days=1), "not_after": NOW + timedelta(days=30)}
    return Pki(
        root=root,
        ca=ca,
        other_ca=other,
        node1=_write(root, "node1", certs.issue_node_cert(ca, "node1", ["node1.example.org"])),
        node2=_write(root, "node2", certs.issue_node_cert(ca, "node2")),
        bob=_write(root, "bob", certs.issue_user_cert(ca, "bob")),
        mallory=_write(root, "mallory", certs.issue_user_cert(other, "mallory")),
        other_node=_write(root, "other-node", certs.issue_node_cert(other, "node1")),
        expired_user=_write(root, "expired", certs.issue_user_cert(ca, "old", **past)),
        expired_node=_write(root, "expired-node", certs.issue_node_cert(ca, "node1", **past)),
        future_user=_write(root, "future", certs.issue_user_cert(ca, "early", **future)),
    )


def raw_client(cert: Path | None, key: Path | None, trust: Path) -> ssl.SSLContext:
    """A client context without our pre-checks: presents *cert* whatever it is."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=trust)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def raw_server(cert: Path, key: Path, trust: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=trust)
    ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class Outcome:
    server: Identity | BaseException | None
    client: bytes | BaseException | None
    version: str | None = None

    @property
    def ok(self) -> bool:
        return isinstance(self.server, Identity) and self.client == b"ok"


def handshake(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    *,
    server_hostname: str = "node1",
    expect: certs.Kind | None = None,
) -> Outcome:
    """One connection over 127.0.0.1: the server (a thread) shakes hands, reads the peer's
    identity and says ``ok``; the client shakes hands and reads."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    out = Outcome(None, None)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as e:
            out.server = e
            return
        conn.settimeout(10)
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                out.server = certs.peer_identity(tls, expect=expect)
                tls.sendall(b"ok")
        except Exception as e:
            out.server = e
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            out.version = tls.version()
            out.client = tls.recv(2)
    except Exception as e:
        out.client = e
    thread.join(10)
    listener.close()
    assert not thread.is_alive()
    return out


def refused_by_server(out: Outcome, reason: str) -> None:
    assert isinstance(out.server, ssl.SSLError), out.server
    assert reason in str(out.server), out.server
    assert out.client != b"ok"


# -- TLS over loopback --------------------------------------------------------------------------


def test_user_certificate_is_accepted_and_names_the_user(pki):
    out = handshake(pki.node1.server(), pki.bob.client())
    assert out.ok, out
    assert out.server == ("user", "bob") == Identity("user", "bob")
    assert out.version == "TLSv1.3"


def test_node_to_node_is_mutual_and_names_the_node(pki):
    out = handshake(pki.node1.server(), pki.node2.client(), expect="node")
    assert out.ok, out
    assert out.server == ("node", "node2")


def test_client_checks_the_server_name(pki):
    for name in ("node1", "node1.example.org", "localhost", "127.0.0.1"):
        assert handshake(pki.node1.server(), pki.bob.client(), server_hostname=name).ok, name
    out = handshake(pki.node1.server(), pki.bob.client(), server_hostname="node2")
    assert isinstance(out.client, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(out.client)


def test_no_client_certificate_is_refused(pki):
    out = handshake(pki.node1.server(), raw_client(None, None, pki.node1.ca))
    refused_by_server(out, "PEER_DID_NOT_RETURN_A_CERTIFICATE")


def test_client_certificate_from_another_ca_is_refused(pki):
    out = handshake(pki.node1.server(), raw_client(pki.mallory.cert, pki.mallory.key, pki.node1.ca))
    refused_by_server(out, "certificate verify failed")
    # Our own context will not even be built from it against this grid's CA.
    with pytest.raises(CertWrongCA, match="not issued by this grid's CA"):
        certs.client_context(pki.mallory.cert, pki.mallory.key, pki.node1.ca)


def test_server_certificate_from_another_ca_is_refused(pki):
    out = handshake(pki.other_node.server(), pki.bob.client())
    assert isinstance(out.client, ssl.SSLCertVerificationError), out.client
    assert "certificate verify failed" in str(out.client)
    assert "unknown ca" in str(out.server)
    assert not isinstance(out.server, Identity)


def test_expired_client_certificate_is_refused(pki):
    b = pki.expired_user
    out = handshake(pki.node1.server(), raw_client(b.cert, b.key, b.ca))
    refused_by_server(out, "certificate verify failed")
    assert "expired" in str(out.server)
    with pytest.raises(CertExpired, match="certificate expired"):
        b.client()


def test_expired_server_certificate_is_refused(pki):
    b = pki.expired_node
    out = handshake(raw_server(b.cert, b.key, b.ca), pki.bob.client())
    assert isinstance(out.client, ssl.SSLCertVerificationError)
    assert "certificate has expired" in str(out.client)
    with pytest.raises(CertExpired):
        b.server()


def test_not_yet_valid_certificate_is_refused(pki):
    b = pki.future_user
    out = handshake(pki.node1.server(), raw_client(b.cert, b.key, b.ca))
    refused_by_server(out, "not yet valid")
    with pytest.raises(CertNotYetValid, match="not valid before"):
        b.client()


def test_a_user_cannot_act_as_a_node(pki):
    # Where a node is required, a user's certificate passes TLS but not the kind check...
    out = handshake(pki.node1.server(), pki.bob.client(), expect="node")
    assert isinstance(out.server, CertWrongKind)
    assert "a user certificate; a node certificate is required" in str(out.server)
    assert out.client != b"ok"
    # ...it cannot make a node's server context...
    with pytest.raises(CertWrongKind, match="node certificate is required"):
        certs.server_context(pki.bob.cert, pki.bob.key, pki.bob.ca)
    # ...and a server presenting it is refused by OpenSSL itself (no serverAuth usage).
    out = handshake(
        raw_server(pki.bob.cert, pki.bob.key, pki.bob.ca), pki.node2.client(), server_hostname="bob"
    )
    assert isinstance(out.client, ssl.SSLCertVerificationError)
    assert "unsuitable certificate purpose" in str(out.client)


def test_tls_1_2_is_refused(pki):
    ctx = raw_client(pki.bob.cert, pki.bob.key, pki.bob.ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    out = handshake(pki.node1.server(), ctx)
    assert isinstance(out.server, ssl.SSLError) and not out.ok
    assert "UNSUPPORTED_PROTOCOL" in str(out.server)


def test_contexts_trust_the_grid_ca_only(pki):
    for ctx in (pki.node1.server(), pki.bob.client()):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert [c["subject"] for c in ctx.get_ca_certs()] == [
            (
                (("organizationName", "testgrid"),),
                (("organizationalUnitName", "ca"),),
                (("commonName", "testgrid CA"),),
            )
        ]
    assert pki.bob.client().check_hostname


# -- identities ---------------------------------------------------------------------------------


def test_identity_of_object_and_der(pki):
    cert = x509.load_pem_x509_certificate(pki.node1.cert.read_bytes())
    der = cert.public_bytes(Encoding.DER)
    assert certs.identity_of(cert) == certs.identity_of(der) == ("node", "node1")
    assert certs.identity_of(der, expect="node").name == "node1"
    with pytest.raises(CertWrongKind, match="CA certificate"):
        certs.identity_of(pki.ca.cert)
    with pytest.raises(CertUnreadable):
        certs.identity_of(b"not der")


def test_a_certificate_without_the_grid_profile_has_no_identity(pki):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bob")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(pki.ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(pki.ca.key, hashes.SHA256())
    )
    with pytest.raises(CertWrongKind, match="not a grid node or user certificate"):
        certs.identity_of(cert)


def test_verify_cert_says_what_is_wrong(pki):
    bob = x509.load_pem_x509_certificate(pki.bob.cert.read_bytes())
    assert certs.verify_cert(bob, pki.ca.cert) == ("user", "bob")
    with pytest.raises(CertWrongCA):
        certs.verify_cert(bob, pki.other_ca.cert)
    with pytest.raises(CertExpired):
        certs.verify_cert(bob, pki.ca.cert, now=NOW + timedelta(days=400))
    with pytest.raises(CertNotYetValid):
        certs.verify_cert(bob, pki.ca.cert, now=NOW - timedelta(days=1))
    with pytest.raises(CertWrongKind):
        certs.verify_cert(bob, pki.ca.cert, expect="node")


def test_known_identity_needs_the_user_or_peer_in_ndb(tmp_path):
    from ndb.peers import Peer, PeerDB
    from ndb.users import User, UserDB

    users, peers = tmp_path / "users", tmp_path / "peers"
    users.write_text("")
    peers.write_text("")
    UserDB(users).add(User(name="bob"))
    PeerDB(peers).add(Peer(name="node2", addr="node2:17010"))
    assert certs.known_identity(Identity("user", "bob"), users, peers) == ("user", "bob")
    assert certs.known_identity(Identity("node", "node2"), users, peers) == ("node", "node2")
    with pytest.raises(CertUnknown, match="unknown user 'alice'"):
        certs.known_identity(Identity("user", "alice"), users, peers)
    with pytest.raises(CertUnknown, match="unknown peer 'node3'"):
        certs.known_identity(Identity("node", "node3"), users, peers)


# -- profiles -----------------------------------------------------------------------------------


def _days(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - cert.not_valid_before_utc) / timedelta(days=1)


def test_profiles(pki):
    ca = pki.ca.cert
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert 3649 < _days(ca) < 3651
    node = x509.load_pem_x509_certificate(pki.node1.cert.read_bytes())
    san = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node1", "node1.example.org", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert 729 < _days(node) < 731
    user = x509.load_pem_x509_certificate(pki.bob.cert.read_bytes())
    eku = list(user.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert eku == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert 364 < _days(user) < 366
    assert user.subject.rfc4514_string() == "CN=bob,OU=user,O=testgrid"


def test_a_certificate_never_outlives_its_ca(tmp_path):
    ca = certs.create_ca(tmp_path / "ca", "short", not_after=NOW + timedelta(days=10))
    node = certs.issue_node_cert(ca, "n")
    assert node.cert.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_bad_names_are_refused_before_anything_is_issued(pki, tmp_path):
    with pytest.raises(ValueError, match="bad node name"):
        certs.issue_node_cert(pki.ca, "no/slash")
    with pytest.raises(ValueError, match="bad host name"):
        certs.issue_node_cert(pki.ca, "n", ["bad host"])
    with pytest.raises(ValueError, match="bad user name"):
        certs.issue_user_cert(pki.ca, "0bob")
    with pytest.raises(ValueError, match="bad grid name"):
        certs.create_ca(tmp_path / "ca", "a grid")
    assert not (tmp_path / "ca").exists()


# -- files --------------------------------------------------------------------------------------


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_key_files_are_0600_and_directories_0700(pki):
    for d in (pki.root / "ca", pki.node1.dir, pki.bob.dir):
        assert _mode(d) == 0o700
        for f in d.iterdir():
            assert _mode(f) == 0o600, f
    assert sorted(p.name for p in pki.bob.dir.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert sorted(p.name for p in (pki.root / "ca").iterdir()) == ["cert.pem", "key.pem"]


def test_the_ca_is_never_overwritten(pki):
    ca_dir = pki.root / "ca"
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    with pytest.raises(CertExists, match="refusing to overwrite"):
        certs.create_ca(ca_dir, "testgrid")
    assert {p.name: p.read_bytes() for p in ca_dir.iterdir()} == before
    assert certs.load_ca(ca_dir).cert == pki.ca.cert


def test_a_bundle_is_not_overwritten_unless_asked(pki, tmp_path):
    creds = certs.issue_user_cert(pki.ca, "carol")
    d = certs.write_bundle(tmp_path / "carol", creds)
    again = certs.issue_user_cert(pki.ca, "carol")
    with pytest.raises(CertExists):
        certs.write_bundle(d, again)
    assert certs.load_bundle(d).cert == creds.cert
    certs.write_bundle(d, again, replace=True)
    assert certs.load_bundle(d, expect="user").cert == again.cert
    assert [p.name for p in tmp_path.iterdir()] == ["carol"]  # no temporary left behind


def test_missing_and_unreadable_files(pki, tmp_path):
    b = pki.bob
    with pytest.raises(CertMissing, match="no certificate here"):
        certs.client_context(tmp_path / "nope.pem", b.key, b.ca)
    with pytest.raises(CertMissing, match="no CA certificate here"):
        certs.client_context(b.cert, b.key, tmp_path / "nope.pem")
    with pytest.raises(CertMissing, match="no private key here"):
        certs.client_context(b.cert, tmp_path / "nope.pem", b.ca)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    garbage.chmod(0o600)
    with pytest.raises(CertUnreadable, match="not a PEM private key"):
        certs.client_context(b.cert, garbage, b.ca)
    with pytest.raises(CertUnreadable, match="not a PEM certificate"):
        certs.client_context(garbage, b.key, b.ca)
    with pytest.raises(CertUnreadable, match="does not match the certificate"):
        certs.client_context(b.cert, pki.node1.key, b.ca)
    loose = tmp_path / "loose.pem"
    loose.write_bytes(b.key.read_bytes())
    loose.chmod(0o644)
    with pytest.raises(CertUnreadable, match=r"accessible by others \(mode 0644\)"):
        certs.client_context(b.cert, loose, b.ca)
    with pytest.raises(CertMissing, match="no certificate bundle"):
        certs.load_bundle(tmp_path / "none")
    with pytest.raises(CertWrongKind, match="not a CA certificate"):
        certs.client_context(b.cert, b.key, b.cert)


# -- joining a second node ----------------------------------------------------------------------


def test_join_bundle_installs_a_node_without_the_ca_key(pki, tmp_path):
    data = certs.export_join_bundle(pki.ca, "node3", ["node3.example.org"])
    assert data.startswith(b"# grid join bundle: node node3 of grid testgrid\n")
    assert b"-----BEGIN PRIVATE KEY-----" in data
    ca_dir, node_dir = tmp_path / "ca", tmp_path / "node"
    creds = certs.import_join_bundle(data, ca_dir, node_dir)
    assert creds.identity == ("node", "node3")
    assert [p.name for p in ca_dir.iterdir()] == ["cert.pem"]
    assert _mode(ca_dir / "cert.pem") == 0o600 and _mode(node_dir / "key.pem") == 0o600
    with pytest.raises(CertMissing, match="no CA key"):
        certs.load_ca(ca_dir)
    assert certs.load_ca(ca_dir, need_key=False).cert == pki.ca.cert
    before = {p: p.read_bytes() for p in (*ca_dir.iterdir(), *node_dir.iterdir())}
    certs.import_join_bundle(data, ca_dir, node_dir)  # idempotent
    assert {p: p.read_bytes() for p in (*ca_dir.iterdir(), *node_dir.iterdir())} == before
    with pytest.raises(CertExists, match="already has another certificate"):
        certs.import_join_bundle(certs.export_join_bundle(pki.ca, "node3"), ca_dir, node_dir)
    with pytest.raises(CertExists, match="another grid's CA"):
        certs.import_join_bundle(certs.export_join_bundle(pki.other_ca, "n"), ca_dir, node_dir)
    # The joined node and the CA node talk mutual TLS, each a node to the other.
    n3 = Bundle(node_dir)
    out = handshake(pki.node1.server(), n3.client(), expect="node")
    assert out.ok and out.server == ("node", "node3")
    out = handshake(
        n3.server(), pki.node1.client(), server_hostname="node3.example.org", expect="node"
    )
    assert out.ok and out.server == ("node", "node1")


def test_a_join_bundle_must_be_a_node_bundle(pki, tmp_path):
    user = certs.issue_user_cert(pki.ca, "bob")
    files = user.files()
    with pytest.raises(CertWrongKind, match="node certificate is required"):
        certs.read_join_bundle(files["cert.pem"] + files["key.pem"] + files["ca.pem"])
    with pytest.raises(CertUnreadable, match="not a grid join bundle"):
        certs.read_join_bundle(b"hello")
    node = certs.issue_node_cert(pki.ca, "n")
    other = certs.issue_node_cert(pki.ca, "n")
    mixed = node.files()["cert.pem"] + other.files()["key.pem"] + node.files()["ca.pem"]
    with pytest.raises(CertUnreadable, match="does not match"):
        certs.read_join_bundle(mixed)
    foreign = (
        node.files()["cert.pem"]
        + node.files()["key.pem"]
        + pki.other_ca.cert.public_bytes(Encoding.PEM)
    )
    with pytest.raises(CertWrongCA):
        certs.read_join_bundle(foreign)
    assert not list(tmp_path.iterdir())


# -- the public namespace -----------------------------------------------------------------------


def test_public_names():
    assert sorted(certs.__all__) == sorted(set(certs.__all__))
    for name in certs.__all__:
        assert getattr(certs, name) is not None, name
    for name in (
        "create_ca",
        "issue_node_cert",
        "issue_user_cert",
        "identity_of",
        "server_context",
        "client_context",
        "export_join_bundle",
        "import_join_bundle",
        "CertError",
    ):
        assert name in certs.__all__
    assert all(
        issubclass(getattr(certs, n), certs.CertError)
        for n in certs.__all__
        if n.startswith("Cert")
    )
    assert os.path.basename(certs.__file__) == "certs.py"
