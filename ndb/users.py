"""Users of the grid: who may own names and spawns, and how they are recognised.

A user is an entry whose first attribute is ``user``::

    user=alice uid=1000 group=staff
        sshkey="ssh-ed25519 AAAAC3Nz… alice@laptop"
        sshkey="ssh-ed25519 AAAAC3Nz… alice@phone"

- ``uid=`` maps a local Unix uid (the peer credentials of a Unix socket) to the user; two
  users cannot share one.
- ``sshkey=`` (any number): OpenSSH public keys the SFTP/SSH server accepts for the user.
- ``group=`` (any number): groups the user belongs to.
- ``cert=``: the hook for TLS client certificates issued by the grid CA (a later issue
  fills it, e.g. with the certificate's fingerprint); kept and shown, not yet checked.

Other attributes are kept as they are. People may edit the file by hand; ``remove`` cuts
out only the user's own entry and keeps every other line, comments included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ndb.database import NdbFile
from ndb.document import Document
from ndb.errors import NdbConflict, NdbNotFound, NdbRecordError, NdbValueError
from ndb.syntax import Entry, Pair, check_attr, format_entry_line
from ndb.values import check_group_name, check_ssh_key, check_uid, check_user_name

KIND = "user"
_SINGLE = ("uid", "cert")
_KNOWN = frozenset({"user", "uid", "sshkey", "group", "cert"})


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    name: str
    uid: int | None = None
    sshkeys: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    cert: str | None = None
    extra: tuple[Pair, ...] = ()

    def __post_init__(self) -> None:
        check_user_name(self.name)
        if self.uid is not None:
            object.__setattr__(self, "uid", check_uid(self.uid))
        object.__setattr__(self, "sshkeys", tuple(check_ssh_key(k) for k in self.sshkeys))
        for g in self.groups:
            check_group_name(g)
        object.__setattr__(self, "extra", tuple(Pair(*p) for p in self.extra))
        for p in self.extra:
            check_attr(p.attr)
            if p.attr in _KNOWN:
                raise NdbValueError(f"extra attribute {p.attr!r} is one of the user's own")
        format_entry_line(self.to_entry())  # every value must be writable

    def to_entry(self) -> Entry:
        first = [Pair(KIND, self.name)]
        if self.uid is not None:
            first.append(Pair("uid", str(self.uid)))
        first += [Pair("group", g) for g in self.groups]
        if self.cert is not None:
            first.append(Pair("cert", self.cert))
        first += self.extra
        lines = [tuple(first)] + [(Pair("sshkey", k),) for k in self.sshkeys]
        return Entry(tuple(lines))

    def as_dict(self) -> dict[str, object]:
        return {
            "user": self.name,
            "uid": self.uid,
            "groups": list(self.groups),
            "sshkeys": list(self.sshkeys),
            "cert": self.cert,
            "extra": {p.attr: p.value for p in self.extra},
        }

    @classmethod
    def from_entry(cls, entry: Entry, where: str = "<users>") -> User:
        if entry.kind != KIND:
            raise NdbRecordError(f"{where}: not a user entry (starts with {entry.kind}=)")
        single: dict[str, str] = {}
        keys: list[str] = []
        groups: list[str] = []
        extra: list[Pair] = []
        for p in entry.pairs[1:]:
            if p.attr in _SINGLE:
                if p.attr in single:
                    raise NdbRecordError(
                        f"{where}: user {entry.lines[0][0].value!r} has {p.attr}= twice"
                    )
                single[p.attr] = p.value
            elif p.attr == "sshkey":
                keys.append(p.value)
            elif p.attr == "group":
                groups.append(p.value)
            elif p.attr == KIND:
                raise NdbRecordError(f"{where}: user= twice in one entry")
            else:
                extra.append(p)
        try:
            return cls(
                name=entry.lines[0][0].value,
                uid=None if single.get("uid") is None else check_uid(single["uid"]),
                sshkeys=tuple(keys),
                groups=tuple(groups),
                cert=single.get("cert"),
                extra=tuple(extra),
            )
        except NdbValueError as e:
            raise NdbRecordError(f"{where}: {e}") from None


class UserDB:
    """The users file."""

    def __init__(self, path: str | os.PathLike[str], *, index: bool | None = None) -> None:
        self.file = NdbFile(path, index=index)

    def _user(self, entry: Entry) -> User:
        return User.from_entry(
            entry, f"{self.file.name}:{entry.lineno}" if entry.lineno else self.file.name
        )

    def list(self) -> list[User]:
        """Every user, in file order."""
        return [self._user(e) for e in self.file.entries() if e.kind == KIND]

    def get(self, name: str) -> User | None:
        for m in self.file.search(KIND, name):
            if m.line == 0 and m.index == 0:
                return self._user(m.entry)
        return None

    def by_uid(self, uid: int) -> User | None:
        for m in self.file.search("uid", str(uid)):
            if m.entry.kind == KIND:
                return self._user(m.entry)
        return None

    def by_sshkey(self, key: str) -> User | None:
        """The user holding the public key *key* (compared without its comment)."""
        want = check_ssh_key(key).split()[:2]
        for u in self.list():
            if any(k.split()[:2] == want for k in u.sshkeys):
                return u
        return None

    def add(self, user: User) -> User:
        """Append *user*; NdbConflict when the name or the uid is taken."""
        with self.file.locked() as f:
            for e in f.parse().entries:
                if e.kind != KIND:
                    continue
                other = self._user(e)
                if other.name == user.name:
                    raise NdbConflict(f"user {user.name!r} exists")
                if user.uid is not None and other.uid == user.uid:
                    raise NdbConflict(f"uid {user.uid} is already user {other.name!r}'s")
            f.append(format_entry_line(user.to_entry()).encode("utf-8"))
        return user

    def ensure(self, name: str, uid: int | None = None) -> tuple[User, bool]:
        """The user *name*, added when missing (and its uid free). Returns (user, added)."""
        existing = self.get(name)
        if existing is not None:
            return existing, False
        if uid is not None and self.by_uid(uid) is not None:
            uid = None
        try:
            return self.add(User(name=name, uid=uid)), True
        except NdbConflict:
            found = self.get(name)
            if found is None:
                raise
            return found, False

    def remove(self, name: str) -> User:
        """Remove the user's entry, keeping every other line of the file."""
        check_user_name(name)
        with self.file.locked() as f:
            doc = Document.parse(f.read(), self.file.name)
            victims = [e for e in doc.entries if e.kind == KIND and e.lines[0][0].value == name]
            if not victims:
                raise NdbNotFound(f"no user {name!r}")
            user = self._user(victims[0])
            f.replace(doc.without(lambda e: e.kind == KIND and e.lines[0][0].value == name))
        return user
