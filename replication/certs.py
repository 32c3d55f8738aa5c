"""The grid's certificate authority and TLS contexts: who is a node, who is a user, proven by
TLS.

Invariant 9 says identity comes from the transport. Over TCP that means a TLS client
certificate issued by the grid's own CA, so this package is the whole of that CA: it makes the
CA, issues the two kinds of certificate the grid knows, builds mutual-TLS contexts that trust
that CA only, and reads an identity back out of a verified peer certificate. This module only
re-exports (the implementation is in ``_ca``, ``_bundles``, ``_tls`` and ``_pemfiles``);
``tests/replication/test_certs.py`` checks the list.

Choices, and why (docs/certificates.md has the full profiles):

- **ECDSA P-256 keys, SHA-256 signatures.** Ed25519 would do for grid-to-grid links, but users
  take their certificate to other TLS stacks (stunnel, curl, Go, macOS), and P-256 is the one
  every stack accepts. An Ed25519 CA or key made elsewhere still loads and signs.
- **Two kinds, marked in the subject.** ``O=<grid> OU=node CN=<node>`` or
  ``O=<grid> OU=user CN=<user>``. The kind is also in the extended key usage: a node
  certificate is serverAuth + clientAuth (nodes both serve and dial), a user certificate only
  clientAuth, so OpenSSL itself refuses a user certificate offered by a server. A server that
  needs a *node* as its client (replication) checks the kind with ``peer_identity(conn,
  expect="node")`` after the handshake, because TLS cannot tell the two clientAuth
  certificates apart.
- **One CA key, on one node.** A node that joins gets a bundle with its own certificate and
  key and the CA's certificate, never the CA key: a stolen node can impersonate itself, not
  mint users. Users are issued on the CA node.
- **Certificates outlive nothing.** A certificate never extends past its CA; validity starts
  five minutes in the past so a peer whose clock lags a little accepts a fresh certificate.
- **Revocation is by name.** There is no CRL: a certificate names a user or a peer, and the
  node accepts it only while ndb lists that user or peer (``known_identity``). Removing the
  user or peer revokes every certificate that names it.
"""

from __future__ import annotations

from replication._bundles import (
    export_bundle,
    export_join_bundle,
    import_join_bundle,
    install_node_credentials,
    load_bundle,
    load_credentials,
    read_join_bundle,
    write_bundle,
)
from replication._ca import (
    CA,
    CA_DAYS,
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    NODE,
    NODE_DAYS,
    USER,
    USER_DAYS,
    Credentials,
    Identity,
    Kind,
    check_grid_name,
    check_hosts,
    create_ca,
    fingerprint,
    identity_of,
    issue_node_cert,
    issue_user_cert,
    known_identity,
    load_ca,
    verify_cert,
)
from replication._tls import client_context, peer_identity, server_context
from replication.errors import (
    CertError,
    CertExists,
    CertExpired,
    CertMissing,
    CertNotYetValid,
    CertUnknown,
    CertUnreadable,
    CertWrongCA,
    CertWrongKind,
)

__all__ = [
    "CA",
    "CA_DAYS",
    "CA_FILE",
    "CERT_FILE",
    "KEY_FILE",
    "NODE",
    "NODE_DAYS",
    "USER",
    "USER_DAYS",
    "CertError",
    "CertExists",
    "CertExpired",
    "CertMissing",
    "CertNotYetValid",
    "CertUnknown",
    "CertUnreadable",
    "CertWrongCA",
    "CertWrongKind",
    "Credentials",
    "Identity",
    "Kind",
    "check_grid_name",
    "check_hosts",
    "client_context",
    "create_ca",
    "export_bundle",
    "export_join_bundle",
    "fingerprint",
    "identity_of",
    "import_join_bundle",
    "install_node_credentials",
    "issue_node_cert",
    "issue_user_cert",
    "known_identity",
    "load_bundle",
    "load_ca",
    "load_credentials",
    "peer_identity",
    "read_join_bundle",
    "server_context",
    "verify_cert",
    "write_bundle",
]
