"""The rules for the values grid keeps in ndb: names, scores, dates, user and peer names,
addresses, SSH keys. Each check returns the value or raises NdbValueError saying what is
wrong with it, so that bad input is refused before a file is touched.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta

from ndb.errors import NdbValueError

SCORE_PREFIX = "blake3:"
_SCORE = re.compile(r"blake3:[0-9a-f]{64}")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z")
_ACCOUNT = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_PEER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_HOST = re.compile(r"[A-Za-z0-9_.-]{1,253}|\[[0-9A-Fa-f:.]+\]")
_NAME_FORBIDDEN = "=\"'`"
MAX_NAME = 255
_SSH_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


def check_name(name: str, what: str = "name") -> str:
    """A score name: printable, no white space, no ``=``, quotes or backquote, not starting
    with ``#``, at most 255 bytes. Everything else (``/``, ``:``, non-ASCII letters) is
    allowed: names are labels people choose."""
    if not name:
        raise NdbValueError(f"empty {what}")
    if len(name.encode("utf-8")) > MAX_NAME:
        raise NdbValueError(
            f"{what} too long ({len(name.encode('utf-8'))} bytes, at most {MAX_NAME}): {name[:40]!r}…"
        )
    for c in name:
        if c.isspace() or not c.isprintable():
            raise NdbValueError(f"{what} {name!r} contains white space or a control character")
        if c in _NAME_FORBIDDEN:
            raise NdbValueError(f"{what} {name!r} contains {c!r} (not allowed: = \" ' `)")
    if name[0] == "#":
        raise NdbValueError(f"{what} {name!r} starts with '#', which ndb reads as a comment")
    return name


def check_new_name(name: str, what: str = "name") -> str:
    """A name about to be created (import, save, set): ``check_name`` and also no ``:`` or
    ``@``, which references give a meaning (``NAME:PATH``, ``NAME@SCORE``), so a name with
    them could be recorded but never named again. Old records with them still load."""
    check_name(name, what)
    for c in ":@":
        if c in name:
            raise NdbValueError(
                f"{what} {name!r} contains {c!r}, which references use (NAME:PATH, NAME@SCORE)"
            )
    return name


def check_score(text: str) -> str:
    """A score as ndb holds it: ``blake3:`` and 64 lowercase hex digits."""
    if not isinstance(text, str) or not _SCORE.fullmatch(text):
        raise NdbValueError(
            f"bad score {str(text)[:80]!r}: expected 'blake3:' and 64 lowercase hex digits"
        )
    return text


def parse_score_text(text: str) -> bytes:
    """The raw 32 bytes of a ``blake3:<hex>`` score (what the store takes)."""
    return bytes.fromhex(check_score(text)[len(SCORE_PREFIX) :])


def format_score(raw: bytes) -> str:
    """``blake3:<hex>`` for 32 raw bytes."""
    if not isinstance(raw, bytes | bytearray | memoryview) or len(raw) != 32:
        raise NdbValueError("a score is 32 bytes")
    return SCORE_PREFIX + bytes(raw).hex()


def parse_date(text: str) -> tuple[int, int]:
    """An RFC 3339 UTC date (``2026-11-22T04:30:00.123456Z``) as a sortable key
    (seconds since the epoch, nanoseconds)."""
    m = _DATE.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise NdbValueError(
            f"bad date {str(text)[:60]!r}: expected RFC 3339 UTC like 2026-11-22T04:30:00.123456Z"
        )
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=UTC)
    except ValueError as e:
        raise NdbValueError(f"bad date {text!r}: {e}") from None
    nanos = int((frac or "").ljust(9, "0"))
    return int(dt.timestamp()), nanos


def format_date(dt: datetime) -> str:
    """*dt* as RFC 3339 UTC with microseconds, so that text order is time order."""
    if dt.tzinfo is None:
        raise NdbValueError("a date needs a time zone")
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_date() -> str:
    return format_date(datetime.now(UTC))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAST_SECOND = int((datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - _EPOCH).total_seconds())
MAX_AHEAD = timedelta(days=1)  # clock skew tolerated in dates from peers and users
#: Records dated at or after this are void (docs/ndb.md, "Dates past the horizon"): refused
#: when written, ignored when names are read, the same on every node.
HORIZON = "9000-01-01T00:00:00Z"
HORIZON_SECONDS = int((datetime(9000, 1, 1, tzinfo=UTC) - _EPOCH).total_seconds())


def beyond_horizon(text: str) -> bool:
    """Whether a record dated *text* is void: at or past ``HORIZON``."""
    return parse_date(text)[0] >= HORIZON_SECONDS


def check_before_horizon(text: str) -> str:
    """*text*, when a record may carry it; NdbValueError for a date at or past the horizon."""
    if beyond_horizon(text):
        raise NdbValueError(
            f"date {text} is at or past {HORIZON}: records dated so far ahead are void (ignored "
            "by every node), so none is written"
        )
    return text


def date_after(text: str) -> str:
    """The date one microsecond after *text*.

    Integer arithmetic, so a record dated at the very end of what RFC 3339's four-digit
    years can say (9999-12-31T23:59:59.999999Z, which a hostile peer once sent) is a precise
    NdbValueError rather than an OverflowError from datetime."""
    secs, nanos = parse_date(text)
    micros = nanos // 1000 + 1
    secs, micros = secs + micros // 1_000_000, micros % 1_000_000
    if secs > _LAST_SECOND:
        raise NdbValueError(
            f"no date can follow {text}, the latest a record can carry; a record dated this far "
            "ahead is bogus: remove it from the names file"
        )
    return format_date(_EPOCH + timedelta(seconds=secs, microseconds=micros))


def check_not_future(text: str, *, now: datetime | None = None, ahead: timedelta = MAX_AHEAD) -> str:
    """*text* as a date no later than *ahead* past *now* (this node's clock).

    Records from peers and users are dated when they are made; one dated far in the future
    would stay every name's latest record and make each later one a microsecond after it,
    so such dates are refused where records enter (merge, pull, the CLI)."""
    secs, _nanos = parse_date(text)
    now = now or datetime.now(UTC)
    if secs > (now + ahead - _EPOCH).total_seconds():
        raise NdbValueError(
            f"date {text} is more than {ahead.days or 1} day(s) ahead of this node's clock "
            f"({format_date(now)}): refused"
        )
    return text


def check_user_name(name: str) -> str:
    """A user or group name: a letter or ``_``, then letters, digits, ``_ . -``; at most 32."""
    if not isinstance(name, str) or not _ACCOUNT.fullmatch(name):
        raise NdbValueError(
            f"bad user name {name!r}: use a letter or '_' then letters, digits, '_', '.', '-' (at most 32)"
        )
    return name


def check_group_name(name: str) -> str:
    try:
        return check_user_name(name)
    except NdbValueError:
        raise NdbValueError(
            f"bad group name {name!r}: use a letter or '_' then letters, digits, '_', '.', '-' (at most 32)"
        ) from None


def check_peer_name(name: str) -> str:
    """A peer (node) name: like a host name, letters, digits, ``_ . -``; at most 63."""
    if not isinstance(name, str) or not _PEER.fullmatch(name):
        raise NdbValueError(
            f"bad peer name {name!r}: use letters, digits, '_', '.', '-' (at most 63)"
        )
    return name


def check_addr(addr: str) -> str:
    """``HOST:PORT`` with a port from 1 to 65535 (an IPv6 host in brackets)."""
    host, sep, port = addr.rpartition(":") if isinstance(addr, str) else ("", "", "")
    if not sep or not _HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise NdbValueError(
            f"bad address {addr!r}: expected HOST:PORT, e.g. node2.example.org:17010"
        )
    return addr


def check_uid(uid: int | str) -> int:
    try:
        n = int(uid)
    except (TypeError, ValueError):
        raise NdbValueError(f"bad uid {uid!r}: not a number") from None
    if not 0 <= n < 2**32 - 1:
        raise NdbValueError(f"bad uid {uid!r}: out of range")
    return n


def check_ssh_key(key: str) -> str:
    """One OpenSSH public key line, ``TYPE BASE64 [COMMENT]``, as in authorized_keys
    without options. The blob must decode and name the same key type."""
    text = key.strip() if isinstance(key, str) else ""
    parts = text.split(None, 2)
    if len(parts) < 2 or parts[0] not in _SSH_TYPES:
        raise NdbValueError(
            f"not an SSH public key: {text[:60]!r} (expected e.g. 'ssh-ed25519 AAAA… comment')"
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise NdbValueError(f"SSH key {parts[1][:20]!r}…: the key data is not base64") from None
    if len(blob) < 4:
        raise NdbValueError("SSH key: the key data is too short")
    n = int.from_bytes(blob[:4], "big")
    if blob[4 : 4 + n] != parts[0].encode():
        raise NdbValueError(f"SSH key: the key data is not a {parts[0]} key")
    if "\n" in text or "\r" in text:
        raise NdbValueError("SSH key: one key per line")
    return " ".join(parts)
