"""Who may do what with a name: the one rule every path that lists, resolves, spawns or
writes names goes through (docs/ndb.md, "Owners and modes").

A name's latest record carries its permissions (``owner=``, ``group=``, ``mode=``, any
number of ``acl=``); records are immutable and merge by union, so a change of permissions is
one more record with the same score, and the latest record decides, as it does for the
score. The rules are Unix's, read for names:

- **read** (``r``): see the name in listings (CLI, 9P ``names``, SSH), resolve and spawn it,
  read its history, spawn a score in its history;
- **write** (``w``): save over it, point it elsewhere (``grid name set``), delete it;
- ``x`` is kept and means nothing.

The bits that apply are chosen as POSIX ACLs choose them (without a mask): the owner's
class for the owner; else a named-user entry ``acl=u:USER:PERMS``; else the union of the
group class (``group=``) and every ``acl=g:GROUP:PERMS`` whose group the caller is in, when
any matches; else the other class. A privileged caller (root, and the home's own user, who
holds the files) may do everything. Only the owner (or privileged) changes the mode, the
group (to one of their own groups) and the ACL; only privileged callers change the owner.

Records written before owners existed have none of these attributes: their writer
(``user=``) is the owner and their mode is :data:`LEGACY_MODE` (0644: everyone could see and
spawn them already; nobody but the owner may save over them any more). New names get
:data:`DEFAULT_MODE` (0600, private to the owner).

Pure: no files, no I/O; ndb.names applies these to records.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ndb.errors import NdbValueError
from ndb.values import check_group_name, check_user_name

DEFAULT_MODE = 0o600  # a new name: private to its owner
LEGACY_MODE = 0o644  # a record without mode= (written before names had owners)
READ, WRITE = 4, 2

_MODE = re.compile(r"[0-7]{1,4}")
_ACL = re.compile(r"([ug]):([^:]+):([rwx]*)")
_SYMBOLIC = re.compile(r"([ugoa]*)([-+=])([rwx]*)")


class Permissioned(Protocol):
    """What the rules read of a record (ndb.names.NameRecord is one)."""

    @property
    def user(self) -> str: ...

    @property
    def owner(self) -> str | None: ...

    @property
    def group(self) -> str | None: ...

    @property
    def mode(self) -> int | None: ...

    @property
    def acl(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: a grid user, their ndb groups, and whether every right is theirs
    (root; the home's own user)."""

    user: str
    groups: frozenset[str] = frozenset()
    privileged: bool = False


# -- attribute values --------------------------------------------------------------------


def parse_mode(text: str) -> int:
    """A ``mode=`` value or a numeric chmod argument: 1 to 4 octal digits, at most 0777."""
    if not isinstance(text, str) or not _MODE.fullmatch(text):
        raise NdbValueError(f"bad mode {text!r}: octal digits such as 0640, or u+r,g-w,o=")
    mode = int(text, 8)
    if mode > 0o777:
        raise NdbValueError(f"bad mode {text!r}: a name has no setuid, setgid or sticky bits")
    return mode


def format_mode(mode: int) -> str:
    return f"{mode:04o}"


def check_mode(mode: int) -> int:
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        raise NdbValueError(f"bad mode {mode!r}: 0 to 0777")
    return mode


def apply_mode(spec: str, mode: int) -> int:
    """*mode* changed by a chmod argument: octal (``0640``) or symbolic
    (``u+rw,g+r,o-rwx``, ``a=r``, ``go=``), as chmod(1) without ``X``, ``s``, ``t``."""
    if _MODE.fullmatch(spec):
        return parse_mode(spec)
    out = mode
    for clause in spec.split(","):
        m = _SYMBOLIC.fullmatch(clause)
        if m is None:
            raise NdbValueError(f"bad mode {spec!r}: octal digits such as 0640, or u+r,g-w,o=")
        who, op, perms = m.groups()
        shifts = {"u": 6, "g": 3, "o": 0}
        targets = [shifts[c] for c in dict.fromkeys(who.replace("a", "ugo") or "ugo")]
        bits = sum({"r": 4, "w": 2, "x": 1}[c] for c in set(perms))
        for s in targets:
            if op == "+":
                out |= bits << s
            elif op == "-":
                out &= ~(bits << s)
            else:
                out = (out & ~(7 << s)) | (bits << s)
    return out


def parse_acl(text: str) -> tuple[str, str, int]:
    """An ``acl=`` value ``u:USER:PERMS`` or ``g:GROUP:PERMS`` -> (kind, who, bits)."""
    m = _ACL.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise NdbValueError(f"bad acl entry {text!r}: u:USER:rw or g:GROUP:r")
    kind, who, perms = m.groups()
    if kind == "u":
        check_user_name(who)
    else:
        check_group_name(who)
    return kind, who, sum({"r": 4, "w": 2, "x": 1}[c] for c in set(perms))


def format_acl(kind: str, who: str, bits: int) -> str:
    return f"{kind}:{who}:" + "".join(c for c, b in (("r", 4), ("w", 2), ("x", 1)) if bits & b)


def principal(text: str) -> tuple[str, str]:
    """``USER`` or ``@GROUP`` (what ``grid name share`` takes) -> ("u", USER) or ("g", GROUP)."""
    if text.startswith("@"):
        return "g", check_group_name(text[1:])
    return "u", check_user_name(text)


# -- the rules ---------------------------------------------------------------------------


def owner_of(record: Permissioned) -> str:
    return record.owner if record.owner is not None else record.user


def mode_of(record: Permissioned) -> int:
    return record.mode if record.mode is not None else LEGACY_MODE


def bits_for(record: Permissioned, caller: Caller) -> int:
    """The rwx bits of *record* that apply to *caller* (POSIX ACL order, no mask)."""
    mode = mode_of(record)
    if caller.user == owner_of(record):
        return (mode >> 6) & 7
    entries = [parse_acl(a) for a in record.acl]
    for kind, who, bits in entries:
        if kind == "u" and who == caller.user:
            return bits
    matched, bits = False, 0
    if record.group is not None and record.group in caller.groups:
        matched, bits = True, (mode >> 3) & 7
    for kind, who, b in entries:
        if kind == "g" and who in caller.groups:
            matched, bits = True, bits | b
    return bits if matched else mode & 7


def may_read(record: Permissioned, caller: Caller) -> bool:
    """May *caller* see, resolve, spawn the name and read its history?"""
    return caller.privileged or bool(bits_for(record, caller) & READ)


def may_write(record: Permissioned, caller: Caller) -> bool:
    """May *caller* save over the name, point it elsewhere or delete it?"""
    return caller.privileged or bool(bits_for(record, caller) & WRITE)


def may_administer(record: Permissioned, caller: Caller) -> bool:
    """May *caller* change the name's mode, group or ACL (its owner, or privileged)?"""
    return caller.privileged or caller.user == owner_of(record)


_R = TypeVar("_R", bound=Permissioned)


def readable(records: Iterable[_R], caller: Caller) -> list[_R]:
    """The records of *records* whose names *caller* may read (each a name's latest)."""
    return [r for r in records if may_read(r, caller)]
