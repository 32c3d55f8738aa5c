"""Creating a grid home. Idempotent: what exists is kept, what is missing is made.

Certificates live under the home's ``certs/`` (0700, every file 0600)::

    certs/ca/cert.pem      the grid CA's certificate (every node)
    certs/ca/key.pem       the CA's key (only on the node that created the grid)
    certs/node/            this node's bundle: cert.pem, key.pem, ca.pem
    certs/users/NAME/      a user's bundle, as `grid user add` issued it
    certs/peers/NAME.pem   peers' certificates (`grid peer add --cert`)

A first node creates the CA and its own certificate. A second node joins with a bundle the
CA node issued (`grid join-bundle`): its certificate, key and the CA certificate, never the
CA key. Neither is ever overwritten by running `grid init` again.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from grid.errors import UserError
from grid.home import GridHome, default_home

if TYPE_CHECKING:
    from replication.certs import CertError, Credentials

_NDB_MAIN_HEAD = """\
# grid's root ndb file: the database= entry chains the others (ndb(6)).
database=
"""


def ca_dir(home: GridHome) -> Path:
    return home.certs / "ca"


def node_dir(home: GridHome) -> Path:
    return home.certs / "node"


def user_cert_dir(home: GridHome, name: str) -> Path:
    return home.certs / "users" / name


def init_home(
    path: str | os.PathLike[str] | None = None,
    *,
    node_name: str | None = None,
    hosts: Iterable[str] = (),
    grid_name: str | None = None,
    join: Credentials | None = None,
) -> tuple[GridHome, bool]:
    """Create the home at *path* (or the default). Returns (home, created-now).

    Certificates: with *join* (credentials read from a join bundle, already checked), install
    them; otherwise create the grid CA (named *grid_name*, default the node name) unless one
    is there, and issue this node's certificate (*node_name*, default the host name; for
    *hosts* and the host name) unless it has one.
    """
    home = GridHome(Path(path) if path else default_home())
    _check_cert_options(node_name, hosts, grid_name, join)
    created = not home.exists()
    for d in (home.root, home.store, home.ndb_dir, home.certs, home.spawns, home.run):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    from store.local import LocalStore

    LocalStore.create(home.store, exist_ok=True)
    for f in (home.names_db, home.users_db, home.peers_db):
        if not f.exists():
            f.write_text("")
    if not home.ndb_main.exists():
        from ndb.syntax import format_value

        files = (home.names_db, home.users_db, home.peers_db)
        home.ndb_main.write_text(
            _NDB_MAIN_HEAD + "".join(f"\tfile={format_value(str(f))}\n" for f in files)
        )
    _record_invoking_user(home)
    init_certs(home, node_name=node_name, hosts=hosts, grid_name=grid_name, join=join)
    ensure_ssh_host_key(home)
    if created:
        home.marker.write_text("grid home, format 1\n")
    return home, created


def ssh_host_key_path(home: GridHome) -> Path:
    return home.certs / "ssh_host_ed25519_key"


def ensure_ssh_host_key(home: GridHome) -> Path:
    """The node's SSH host key (OpenSSH format, 0600, and its ``.pub``), made once: clients
    pin it in known_hosts, so it is never replaced. Made at init rather than at the first
    ``grid serve --ssh`` so the fingerprint can be handed out before the server runs."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = ssh_host_key_path(home)
    if path.exists():
        return path
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a crashed run's: O_EXCL below makes it 0600 from the start
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    path.with_name(path.name + ".pub").write_bytes(public + f" grid@{home.root.name}\n".encode())
    os.replace(tmp, path)  # last: an interrupted run leaves no half key behind
    return path


def _check_cert_options(
    node_name: str | None,
    hosts: Iterable[str],
    grid_name: str | None,
    join: Credentials | None,
) -> None:
    """Refuse bad options before anything is written (invariant 10)."""
    from ndb.values import check_peer_name
    from replication import certs

    try:
        if node_name is not None:
            check_peer_name(node_name)
        certs.check_hosts(hosts)
        if grid_name is not None:
            certs.check_grid_name(grid_name)
    except ValueError as e:  # NdbValueError is one too
        raise UserError("grid init", str(e).replace("peer name", "node name")) from None
    if join is not None and node_name is not None and join.identity.name != node_name:
        raise UserError(
            "grid init --join",
            f"the bundle is for node {join.identity.name!r}, not {node_name!r}",
        )


def default_node_name() -> str:
    """The host name, made a valid node name: characters other than letters, digits and
    ``_ . -`` become ``-``, at most 63; ``node`` if nothing is left. Never fails, so a plain
    `grid init` works on any machine; `--node-name` chooses another."""
    import re

    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())
    name = re.sub(r"^[^A-Za-z0-9]+", "", name)[:63]
    return name or "node"


def cert_error(exc: CertError) -> UserError:
    """A certificate error as the CLI prints it: ``grid: <file>: <why>``."""
    return UserError(exc.path or "certificates", exc.message)


def init_certs(
    home: GridHome,
    *,
    node_name: str | None = None,
    hosts: Iterable[str] = (),
    grid_name: str | None = None,
    join: Credentials | None = None,
) -> None:
    """Make sure the home has a CA certificate and this node's bundle; see ``init_home``."""
    from replication import certs

    try:
        if join is not None:
            certs.install_node_credentials(join, ca_dir(home), node_dir(home))
            return
        mine = node_dir(home) / certs.CERT_FILE
        if mine.exists():
            have = certs.load_bundle(node_dir(home), expect=certs.NODE).identity.name
            if node_name is not None and node_name != have:
                raise UserError(
                    "grid init --node-name", f"this node is {have!r} already (certs/node)"
                )
            return
        name = node_name or default_node_name()
        if not (ca_dir(home) / certs.CERT_FILE).exists():
            certs.create_ca(ca_dir(home), grid_name or name[:60])
        ca = certs.load_ca(ca_dir(home), need_key=False)
        if ca.key is None:
            raise UserError(
                str(node_dir(home)),
                "this node has no certificate and no CA key: join with "
                "`grid init --join BUNDLE` (made on the CA node by `grid join-bundle`)",
            )
        creds = certs.issue_node_cert(ca, name, [*hosts, *_host_names()])
        certs.write_bundle(node_dir(home), creds)
    except certs.CertError as e:
        raise cert_error(e) from None
    except ValueError as e:
        raise UserError("certificates", str(e)) from None


def _host_names() -> list[str]:
    """This machine's host name, for the node certificate, when a certificate can hold it."""
    from replication import certs

    try:
        return certs.check_hosts([socket.gethostname()])
    except ValueError:
        return []


@dataclass(frozen=True, slots=True)
class CertStatus:
    """What a home holds, for `grid init` to print."""

    grid_name: str
    ca_fingerprint: str  # sha256:<hex>, to compare by eye between nodes
    has_ca_key: bool
    node_name: str
    node_expires: str  # YYYY-MM-DD


def cert_status(home: GridHome) -> CertStatus:
    from replication import certs

    try:
        ca = certs.load_ca(ca_dir(home), need_key=False)
        node = certs.load_bundle(node_dir(home), expect=certs.NODE)
    except certs.CertError as e:
        raise cert_error(e) from None
    return CertStatus(
        grid_name=ca.grid_name,
        ca_fingerprint=certs.fingerprint(ca.cert),
        has_ca_key=ca.key is not None,
        node_name=node.identity.name,
        node_expires=f"{node.cert.not_valid_after_utc:%Y-%m-%d}",
    )


def _record_invoking_user(home: GridHome) -> None:
    """Make the Unix user running `grid init` a grid user (login name, uid), once.

    Idempotent: when the user (or a user with that uid) is there already, nothing changes.
    A login name ndb refuses is skipped; `grid user add` can add the user by hand.
    """
    import pwd

    from ndb.errors import NdbError
    from ndb.users import UserDB

    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return
    try:
        UserDB(home.users_db).ensure(name, uid)
    except NdbError:
        pass
