"""Errors of the replication package.

Certificates fail in many ways that OpenSSL reports as one opaque handshake failure, often on
the *other* end of the connection. So everything grid can check before a handshake (files,
keys, issuer, dates, the kind of identity) is checked here, and each failure has its own
class: a caller (or a test) can tell "expired" from "signed by another CA" without parsing
messages, and a user reads which file is wrong and why.
"""

from __future__ import annotations


class CertError(Exception):
    """Base of every certificate or TLS-setup error: a problem the user can fix.

    ``path`` names the file or directory concerned when there is one.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.message = message
        self.path = path


class CertMissing(CertError):
    """A certificate, key or CA file (or the CA key needed to issue) is not there."""


class CertUnreadable(CertError):
    """A file is there but is not a usable PEM certificate or private key: garbage, a
    permission problem, a key that does not match its certificate, a key readable by others."""


class CertExists(CertError):
    """Refused to overwrite: a CA (or another file grid never replaces) already exists."""


class CertWrongCA(CertError):
    """The certificate was not issued by this grid's CA."""


class CertExpired(CertError):
    """The certificate's validity ended."""


class CertNotYetValid(CertError):
    """The certificate's validity has not started (or the clocks disagree)."""


class CertWrongKind(CertError):
    """The certificate is of the wrong kind for its use: a user certificate where a node is
    required, a CA certificate as a peer, a certificate grid did not profile."""


class CertUnknown(CertError):
    """A valid certificate naming a user or peer that ndb does not list (any more): removing
    a user or peer revokes the certificates that name it."""
