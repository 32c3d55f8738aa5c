"""PEM files on disk: crash-safe writes with the right mode, and reads with precise errors.

Why its own module: the certificate profiles (``_ca.py``) are X.509 work; how a file is
written so that a crash or another user never sees half a key is a separate concern.

Writes follow the store's rule: write a temporary file in the same directory, fsync it,
rename it over the target, fsync the directory. A crash leaves the old file or the new one,
never half a key. Every file is created 0600 from the start (``O_CREAT`` with the mode, not a
chmod afterwards), so a private key is never readable by others, not even for a moment.
A set of files that must appear together (a CA's certificate and key, a bundle) is written
into a temporary directory that is then renamed into place: one rename, all or nothing.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from replication.errors import CertExists, CertMissing, CertUnreadable

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

FILE_MODE = 0o600
DIR_MODE = 0o700

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?\r?\n-----END \1-----\r?\n?", re.DOTALL
)


# -- writing ------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Create *path* (which must not exist) with *mode*, write *data*, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; never adds any here
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str | os.PathLike[str], data: bytes, *, replace: bool = True) -> Path:
    """Write *data* to *path* atomically (temp + fsync + rename), mode 0600.

    With ``replace=False`` an existing file is never overwritten: CertExists instead (the
    final step is then a hard link, which fails atomically when the name is taken).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    _write_new(tmp, data)
    try:
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise CertExists("exists; refusing to overwrite it", str(path)) from None
            os.unlink(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_dir(path: str | os.PathLike[str], files: Mapping[str, bytes], *, replace: bool) -> Path:
    """Make directory *path* hold exactly *files* (name -> bytes), all at once.

    The files go into a temporary sibling directory (0700, files 0600) that is renamed to
    *path*. Without *replace*, an existing non-empty *path* is refused (CertExists) by the
    rename itself, so two writers cannot both win. With *replace*, the old directory is moved
    aside first and removed after; a crash in between leaves no directory at *path* (the
    caller issues again), never a mix of old and new files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir(mode=DIR_MODE)
    try:
        for name, data in files.items():
            _write_new(tmp / name, data)
        _fsync_dir(tmp)
        old: Path | None = None
        if replace and path.exists():
            old = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
            os.rename(path, old)
        try:
            os.rename(tmp, path)  # replaces only an empty directory
        except OSError as e:
            if old is not None:
                os.rename(old, path)
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise CertExists("exists; refusing to overwrite it", str(path)) from None
            raise
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# -- reading ------------------------------------------------------------------------------------


def read_bytes(path: str | os.PathLike[str], what: str) -> bytes:
    """The bytes of *path*; CertMissing / CertUnreadable naming *what* it should have been."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CertMissing(f"no {what} here", str(path)) from None
    except IsADirectoryError:
        raise CertUnreadable(f"is a directory, not a {what}", str(path)) from None
    except OSError as e:
        raise CertUnreadable(f"cannot read {what}: {e.strerror or e}", str(path)) from None


def pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """Every PEM block in *data* as (label, the block's bytes), in order. Text around the
    blocks (comments in a bundle) is ignored."""
    return [(m.group(1).decode("ascii"), m.group(0)) for m in _PEM_BLOCK.finditer(data)]


def parse_cert(data: bytes, where: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as e:
        raise CertUnreadable(f"not a PEM certificate ({e})", where) from None


def parse_key(data: bytes, where: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertUnreadable("the private key is encrypted; grid keys are not", where) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CertUnreadable(f"not a PEM private key ({e})", where) from None
    if not isinstance(key, PrivateKey):
        raise CertUnreadable(f"a {type(key).__name__} key; grid uses ECDSA P-256 or Ed25519", where)
    return key


def load_cert(path: str | os.PathLike[str], what: str = "certificate") -> x509.Certificate:
    """The single certificate in the PEM file *path*."""
    return parse_cert(read_bytes(path, what), str(path))


def load_key(path: str | os.PathLike[str], what: str = "private key") -> PrivateKey:
    """The private key in the PEM file *path*, which others must not be able to read.

    As ssh does, a key file with group or other permission bits is refused: a key that
    others could have read is not proof of anything.
    """
    path = Path(path)
    data = read_bytes(path, what)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CertUnreadable(
            f"{what} is accessible by others (mode {mode:04o}); run chmod 600 on it", str(path)
        )
    return parse_key(data, str(path))


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: a node's daemon must start unattended, so the key's protection
    is its file mode (0600) and the grid home's (0700)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
