"""The score-name database: names for root scores, their history, deletion, and merge.

A name record is one entry whose first attribute is ``name``::

    name=myproject score=blake3:9f…(64 hex) user=alice date=2026-11-22T04:30:00.123456Z prev=blake3:…

and a tombstone (the name deleted) has a bare ``tombstone`` instead of ``score=``; its
``prev=`` is the score it hides. ``node=`` says which node wrote the record. ``owner=``,
``group=``, ``mode=`` and ``acl=`` (any number) say who may read and write the name
(ndb.nameaccess has the rules): a save that does not set them copies them from the name's
latest record, so they stay with the name. Any other attributes are kept as they are.

Records are never changed or removed: setting a name appends a record, deleting appends a
tombstone. A name resolves to its *latest* record, chosen by date, then by tombstone over
record (a deletion and a save in the same microsecond: the deletion wins), then by score,
then by the canonical text of the whole record, which is unique. That order is total, so
every node holding the same records resolves every name the same way, whatever order the
records came in.

Merge. A names database, as far as meaning goes, is the *set* of its records; a record's
identity is all of it (name, score, user, date, prev, node, the rest). Merging two databases
is the union of the sets, so it is commutative, associative and idempotent, and concurrent
saves of one name on two nodes both survive: each is a different record, both stay in the
history, and the latest is chosen by the order above. A tombstone is a record like any
other, so it replicates too, and it hides exactly the records older than itself.
Property tests (tests/ndb/test_merge.py) check these laws.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from ndb import nameaccess as access
from ndb import retention
from ndb.database import NdbFile
from ndb.errors import NdbNotFound, NdbPermission, NdbRecordError, NdbValueError
from ndb.syntax import Entry, Pair, check_attr, format_entry_line
from ndb.values import (
    HORIZON_SECONDS,
    check_before_horizon,
    check_group_name,
    check_name,
    check_score,
    check_user_name,
    date_after,
    now_date,
    parse_date,
    parse_score_text,
)

KIND = "name"
TOMBSTONE = "tombstone"
ACL = "acl"
_KNOWN = frozenset(
    {"name", "score", TOMBSTONE, "user", "date", "prev", "node", "owner", "group", "mode", ACL}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class NameRecord:
    """One record of a name: a score it pointed to (or its deletion), who, when."""

    name: str
    score: str | None  # blake3:<hex>; None for a tombstone
    user: str
    date: str  # RFC 3339 UTC
    prev: str | None = None
    node: str | None = None
    owner: str | None = None  # None: a record from before owners, its user owns it
    group: str | None = None
    mode: int | None = None  # None: nameaccess.LEGACY_MODE
    acl: tuple[str, ...] = ()  # "u:USER:rw", "g:GROUP:r"
    extra: tuple[Pair, ...] = ()
    _key: tuple[tuple[int, int], bool, str, str] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.score is not None:
            check_score(self.score)
        check_user_name(self.user)
        date_key = parse_date(self.date)
        if self.prev is not None:
            check_score(self.prev)
        if self.node is not None:
            check_name(self.node, "node name")
        if self.owner is not None:
            check_user_name(self.owner)
        if self.group is not None:
            check_group_name(self.group)
        if self.mode is not None:
            access.check_mode(self.mode)
        object.__setattr__(self, "acl", tuple(self.acl))
        for a in self.acl:
            access.parse_acl(a)
        object.__setattr__(self, "extra", tuple(Pair(*p) for p in self.extra))
        for p in self.extra:
            check_attr(p.attr)
            if p.attr in _KNOWN:
                raise NdbValueError(f"extra attribute {p.attr!r} is one of the record's own")
        text = format_entry_line(self.to_entry())
        object.__setattr__(self, "_key", (date_key, self.score is None, self.score or "", text))

    @property
    def tombstone(self) -> bool:
        return self.score is None

    @property
    def void(self) -> bool:
        """Dated at or past ``ndb.values.HORIZON``: ignored wherever names are read (a record
        dated 9999-12-31 once locked its name on every node: no later date existed)."""
        return self._key[0][0] >= HORIZON_SECONDS

    @property
    def score_raw(self) -> bytes | None:
        """The score as the 32 raw bytes the store takes (None for a tombstone)."""
        return None if self.score is None else parse_score_text(self.score)

    @property
    def order_key(self) -> tuple[tuple[int, int], bool, str, str]:
        """The total order that picks a name's latest record: date, tombstone over record,
        score, canonical text."""
        return self._key

    def as_dict(self) -> dict[str, object]:
        """The record as ``grid names --json`` prints it (the effective owner and mode:
        a record from before owners shows its user and the legacy mode)."""
        return {
            "name": self.name,
            "score": self.score,
            "deleted": self.tombstone,
            "user": self.user,
            "date": self.date,
            "prev": self.prev,
            "node": self.node,
            "owner": access.owner_of(self),
            "group": self.group,
            "mode": access.format_mode(access.mode_of(self)),
            "acl": list(self.acl),
            "extra": {p.attr: p.value for p in self.extra},
        }

    def text(self) -> str:
        """The canonical one-line text (with its newline): the record's identity."""
        return self._key[3]

    def to_entry(self) -> Entry:
        pairs = [Pair("name", self.name)]
        pairs.append(Pair(TOMBSTONE) if self.score is None else Pair("score", self.score))
        pairs += [Pair("user", self.user), Pair("date", self.date)]
        if self.prev is not None:
            pairs.append(Pair("prev", self.prev))
        if self.node is not None:
            pairs.append(Pair("node", self.node))
        # after node= and before the rest, in this order: a node that keeps these as
        # unknown attributes writes the same canonical text (the record's identity)
        if self.owner is not None:
            pairs.append(Pair("owner", self.owner))
        if self.group is not None:
            pairs.append(Pair("group", self.group))
        if self.mode is not None:
            pairs.append(Pair("mode", access.format_mode(self.mode)))
        pairs += [Pair(ACL, a) for a in self.acl]
        return Entry((tuple(pairs) + self.extra,))

    @classmethod
    def from_entry(cls, entry: Entry, where: str = "<names>") -> NameRecord:
        """The record an entry holds; NdbRecordError (naming *where*) when it is not one."""
        if entry.kind != KIND:
            raise NdbRecordError(f"{where}: not a name record (starts with {entry.kind}=)")
        seen: dict[str, str] = {}
        extra: list[Pair] = []
        acl: list[str] = []
        for p in entry.pairs:
            if p.attr == ACL:
                acl.append(p.value)
            elif p.attr in _KNOWN:
                if p.attr in seen:
                    raise NdbRecordError(f"{where}: name record has {p.attr}= twice")
                seen[p.attr] = p.value
            else:
                extra.append(p)
        if TOMBSTONE in seen:
            if "score" in seen:
                raise NdbRecordError(f"{where}: a tombstone has no score=")
            if seen[TOMBSTONE]:
                raise NdbRecordError(f"{where}: tombstone takes no value")
        elif "score" not in seen:
            raise NdbRecordError(f"{where}: name record without score= (or tombstone)")
        for need in ("user", "date"):
            if need not in seen:
                raise NdbRecordError(f"{where}: name record without {need}=")
        try:
            return cls(
                name=seen["name"],
                score=seen.get("score"),
                user=seen["user"],
                date=seen["date"],
                prev=seen.get("prev"),
                node=seen.get("node"),
                owner=seen.get("owner"),
                group=seen.get("group"),
                mode=None if "mode" not in seen else access.parse_mode(seen["mode"]),
                acl=tuple(acl),
                extra=tuple(extra),
            )
        except NdbValueError as e:
            raise NdbRecordError(f"{where}: {e}") from None


FORGET = "forget"
_FORGET_KNOWN = frozenset({FORGET, "score", TOMBSTONE, "date", "user", "when", "node"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ForgetRecord:
    """A record that forgets one name record, named exactly by (name, score, date)::

        forget=myproject score=blake3:… date=2026-11-22T04:30:00.123456Z user=alice when=2026-12-03T18:00:00.000000Z

    ``score=`` (or a bare ``tombstone``) and ``date=`` are those of the forgotten record;
    ``user=``, ``when=`` and ``node=`` say who forgot it, when and where. A forget record is a
    record like the others: never changed or removed, merged by union, replicated. A name
    record is *forgotten* when a forget record names its (name, score, date); a save made
    elsewhere at the same time is another record (another date), so it is never forgotten by
    accident. docs/ndb.md, "Forgetting"."""

    name: str
    score: str | None  # the forgotten record's score; None: it was a tombstone
    date: str  # the forgotten record's date
    user: str
    when: str
    node: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.score is not None:
            check_score(self.score)
        parse_date(self.date)
        check_user_name(self.user)
        parse_date(self.when)
        if self.node is not None:
            check_name(self.node, "node name")

    @classmethod
    def of(cls, record: NameRecord, *, user: str, when: str, node: str | None = None) -> ForgetRecord:
        return cls(name=record.name, score=record.score, date=record.date, user=user, when=when,
                   node=node)

    @property
    def target(self) -> tuple[str, str | None, str]:
        """(name, score, date): what it forgets; ``target_of(record)`` is the same triple."""
        return (self.name, self.score, self.date)

    def to_entry(self) -> Entry:
        pairs = [Pair(FORGET, self.name)]
        pairs.append(Pair(TOMBSTONE) if self.score is None else Pair("score", self.score))
        pairs += [Pair("date", self.date), Pair("user", self.user), Pair("when", self.when)]
        if self.node is not None:
            pairs.append(Pair("node", self.node))
        return Entry((tuple(pairs),))

    def text(self) -> str:
        return format_entry_line(self.to_entry())

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "score": self.score, "date": self.date, "user": self.user,
                "when": self.when, "node": self.node}

    @classmethod
    def from_entry(cls, entry: Entry, where: str = "<names>") -> ForgetRecord:
        if entry.kind != FORGET:
            raise NdbRecordError(f"{where}: not a forget record (starts with {entry.kind}=)")
        seen: dict[str, str] = {}
        for p in entry.pairs:
            if p.attr not in _FORGET_KNOWN:
                raise NdbRecordError(f"{where}: forget record with unknown attribute {p.attr}=")
            if p.attr in seen:
                raise NdbRecordError(f"{where}: forget record has {p.attr}= twice")
            seen[p.attr] = p.value
        if (TOMBSTONE in seen) == ("score" in seen):
            raise NdbRecordError(f"{where}: a forget record has score= or tombstone, one of them")
        if seen.get(TOMBSTONE):
            raise NdbRecordError(f"{where}: tombstone takes no value")
        for need in ("date", "user", "when"):
            if need not in seen:
                raise NdbRecordError(f"{where}: forget record without {need}=")
        try:
            return cls(name=seen[FORGET], score=seen.get("score"), date=seen["date"],
                       user=seen["user"], when=seen["when"], node=seen.get("node"))
        except NdbValueError as e:
            raise NdbRecordError(f"{where}: {e}") from None


def target_of(record: NameRecord) -> tuple[str, str | None, str]:
    return (record.name, record.score, record.date)


def forgotten_by(forgets: Iterable[ForgetRecord]) -> frozenset[tuple[str, str | None, str]]:
    return frozenset(f.target for f in forgets)


def latest_of(records: Iterable[NameRecord]) -> NameRecord | None:
    """The latest of *records* (a tombstone included, void records not), by
    ``NameRecord.order_key``."""
    return max((r for r in records if not r.void), key=lambda r: r._key, default=None)


@dataclass(frozen=True, slots=True)
class NameSet:
    """A names database as a set of records: what merge works on."""

    records: frozenset[NameRecord] = frozenset()
    forgets: frozenset[ForgetRecord] = frozenset()

    def __post_init__(self) -> None:
        # The records a forget record names are not part of the set's meaning: dropping them
        # here keeps equal meanings equal (and the merge laws hold: the filter only grows).
        # Void records (dated past the horizon) are not part of the meaning either: the same
        # filter on every node, so the merge laws hold.
        object.__setattr__(self, "records", frozenset(r for r in self.records if not r.void))
        object.__setattr__(self, "forgets", frozenset(self.forgets))
        if self.forgets:
            gone = forgotten_by(self.forgets)
            object.__setattr__(
                self, "records", frozenset(r for r in self.records if target_of(r) not in gone))

    @classmethod
    def of(cls, records: Iterable[NameRecord], forgets: Iterable[ForgetRecord] = ()) -> NameSet:
        return cls(frozenset(records), frozenset(forgets))

    def merge(self, other: NameSet) -> NameSet:
        """The union of records and of forget records, less the records forgotten:
        commutative, associative, idempotent."""
        return NameSet(self.records | other.records, self.forgets | other.forgets)

    __or__ = merge

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[NameRecord]:
        return iter(self.records)

    def __contains__(self, record: object) -> bool:
        return record in self.records

    def latest_by_name(self) -> dict[str, NameRecord]:
        """Each name's latest record, tombstones included."""
        best: dict[str, NameRecord] = {}
        for r in self.records:
            cur = best.get(r.name)
            if cur is None or r._key > cur._key:
                best[r.name] = r
        return best

    def latest(self, name: str) -> NameRecord | None:
        return latest_of(r for r in self.records if r.name == name)

    def resolve(self, name: str) -> NameRecord | None:
        """The record *name* resolves to; None when unknown or deleted."""
        r = self.latest(name)
        return None if r is None or r.tombstone else r

    def history(self, name: str) -> list[NameRecord]:
        """Every record of *name*, latest first."""
        return sorted(
            (r for r in self.records if r.name == name), key=lambda r: r._key, reverse=True
        )

    def to_text(self) -> str:
        """Canonical text: one line per record, by name then age, then the forget records
        (equal sets, equal text)."""
        return "".join(r.text() for r in sorted(self.records, key=lambda r: (r.name, r._key))) + \
            "".join(sorted(f.text() for f in self.forgets))


def merge(*sets: NameSet) -> NameSet:
    """Union of names databases."""
    out = NameSet()
    for s in sets:
        out = out.merge(s)
    return out


class UserLookup(Protocol):
    """What NameDB needs of a users database (ndb.users.UserDB is one)."""

    def get(self, name: str) -> object | None: ...


class NameDB:
    """The names file: read, resolve, set, delete, merge in.

    *users*, when given, is checked on ``set``/``delete``: a record for an unknown user is
    refused. (Merged-in records from peers are not checked: their users are the peers'.)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        users: UserLookup | None = None,
        index: bool | None = None,
    ) -> None:
        self.file = NdbFile(path, index=index)
        self.users = users

    @property
    def path(self) -> str:
        return self.file.name

    def _record(self, entry: Entry) -> NameRecord:
        return NameRecord.from_entry(entry, self._where(entry))

    def _where(self, entry: Entry) -> str:
        if entry.lineno:
            return f"{self.file.name}:{entry.lineno}"
        return f"{self.file.name}: entry at byte {entry.start}"

    def all(self) -> NameSet:
        """Every record in the file, and its forget records (the records they forget are
        left out: NameSet)."""
        entries = self.file.entries()
        return NameSet.of(
            (self._record(e) for e in entries if e.kind == KIND),
            (ForgetRecord.from_entry(e, self._where(e)) for e in entries if e.kind == FORGET),
        )

    def forgets(self, name: str) -> list[ForgetRecord]:
        """The forget records of *name*."""
        return [ForgetRecord.from_entry(m.entry, self._where(m.entry))
                for m in self.file.search(FORGET, name) if m.entry.kind == FORGET]

    def history(self, name: str) -> list[NameRecord]:
        """Every record of *name* not forgotten, latest first (read through the index for
        big files)."""
        records = {
            self._record(m.entry) for m in self.file.search(KIND, name) if m.entry.kind == KIND
        }
        gone = forgotten_by(self.forgets(name))
        return sorted((r for r in records if target_of(r) not in gone and not r.void),
                      key=lambda r: r._key, reverse=True)

    def forget(
        self,
        name: str,
        policy: retention.Policy,
        caller: access.Caller,
        *,
        dry_run: bool = False,
        node: str | None = None,
        when: str | None = None,
    ) -> ForgetPlan:
        """Apply *policy* to *name*'s history; append a forget record for each record it does
        not keep (none with *dry_run*). Returns the plan: what is kept (and why), what is
        forgotten.

        The name's latest record is always kept when it is a save. A deleted name (latest
        record a tombstone) has no protected snapshot: the policy alone decides, and when it
        keeps nothing, or is empty, the tombstone is forgotten too and the name is gone
        whole. An empty policy on a name that is not deleted is refused (restic refuses it
        too). Only the name's owner, or a privileged caller, may forget (nameaccess), checked
        under the file's lock, as is the whole plan: a concurrent save is a newer record,
        which the plan never names."""
        check_name(name)
        self._check_user(caller.user)
        with self.file.locked() as f:
            history = self.history(name)
            if not history or not access.may_read(history[0], caller):
                raise NdbNotFound(f"no name {name!r}")
            latest = history[0]
            if not access.may_administer(latest, caller):
                raise NdbPermission(
                    errno.EPERM,
                    f"only the owner of name {name!r} ({access.owner_of(latest)}) or root may "
                    "forget its snapshots",
                )
            if policy.empty and not latest.tombstone:
                raise NdbValueError(
                    "no policy given (--keep-last, --keep-daily, ..., --keep-within): nothing "
                    "would be forgotten"
                )
            snaps = [r for r in history if not r.tombstone]
            if policy.empty:
                decisions = [retention.Decision(False, ()) for _ in snaps]
            else:
                times = [retention.to_datetime(r.order_key[0]) for r in snaps]
                decisions = retention.apply(times, policy)
            plan = ForgetPlan(name=name)
            for r, d in zip(snaps, decisions, strict=True):
                reasons = d.reasons
                if r is latest:
                    reasons = ("latest", *reasons)
                if reasons:
                    plan.kept.append((r, reasons))
                else:
                    plan.forgotten.append(r)
            if latest.tombstone:
                if plan.kept:
                    plan.kept.insert(0, (latest, ("deleted: the tombstone stays",)))
                else:
                    plan.forgotten = list(history)  # the name goes whole, tombstones too
            if plan.forgotten and not dry_run:
                stamp = now_date() if when is None else when
                plan.records = [ForgetRecord.of(r, user=caller.user, when=stamp, node=node)
                                for r in plan.forgotten]
                f.append("".join(x.text() for x in plan.records).encode("utf-8"))
        return plan

    def latest(self, name: str) -> NameRecord | None:
        h = self.history(name)
        return h[0] if h else None

    def resolve(self, name: str) -> NameRecord | None:
        """The latest record of *name*, or None when there is none or it is a tombstone."""
        r = self.latest(name)
        return None if r is None or r.tombstone else r

    def list(
        self,
        *,
        user: str | None = None,
        include_deleted: bool = False,
        caller: access.Caller | None = None,
    ) -> list[NameRecord]:
        """Each name's latest record, sorted by name; deleted names only when asked; with
        *caller*, only the names *caller* may read (the others appear nowhere)."""
        latest = self.all().latest_by_name()
        out = [
            r
            for r in latest.values()
            if (include_deleted or not r.tombstone)
            and (user is None or r.user == user)
            and (caller is None or access.may_read(r, caller))
        ]
        return sorted(out, key=lambda r: r.name)

    # -- what a caller may see: every path that shows or resolves names for a user ------------

    def history_for(self, name: str, caller: access.Caller) -> list[NameRecord]:
        """Every record of *name*, latest first, if *caller* may read the name (as its
        latest record says); NdbNotFound otherwise, as for a name that does not exist."""
        check_name(name)
        h = self.history(name)
        if not h or not access.may_read(h[0], caller):
            raise NdbNotFound(f"no name {name!r}")
        return h

    def resolve_for(self, name: str, caller: access.Caller) -> NameRecord | None:
        """``resolve``, for *caller*: None also when *caller* may not read the name."""
        r = self.resolve(name)
        return r if r is not None and access.may_read(r, caller) else None

    def may_use_score(self, score: str, caller: access.Caller) -> bool:
        """May *caller* spawn the raw root *score*? Privileged callers may; others when it
        is in the history of a name they may read (a deleted one too)."""
        check_score(score)
        if caller.privileged:
            return True
        names = {m.entry.pairs[0].value for m in self.file.search("score", score)
                 if m.entry.kind == KIND}
        return any(access.may_read(h[0], caller)
                   for n in sorted(names) if (h := self.history(n)))

    # -- permissions: each change is a record with the same score, new attributes -------------

    def chmod(self, name: str, spec: str, caller: access.Caller) -> NameRecord:
        """Change the mode (octal or symbolic, as chmod(1)): the owner or privileged."""
        return self._amend(name, caller, lambda cur: {"mode": access.apply_mode(
            spec, access.mode_of(cur))})

    def chown(
        self, name: str, owner: str | None, group: str | None, caller: access.Caller
    ) -> NameRecord:
        """Change the owner (privileged callers only, as in Unix) and/or the group (the
        owner, to a group of their own; ``""`` removes it)."""
        if owner is None and group is None:
            raise NdbValueError("chown needs USER, USER:GROUP or :GROUP")
        if owner is not None:
            self._check_user(owner)
        if group:
            check_group_name(group)

        def change(cur: NameRecord) -> dict:
            out: dict = {}
            if owner is not None and owner != access.owner_of(cur):
                if not caller.privileged:
                    raise NdbPermission(
                        errno.EPERM, f"only root may give name {name!r} to another user"
                    )
                out["owner"] = owner
            if group is not None and group != (cur.group or ""):
                if group and not caller.privileged and group not in caller.groups:
                    raise NdbPermission(
                        errno.EPERM, f"you are not in group {group!r} (grid user list)"
                    )
                out["group"] = group or None
            return out

        return self._amend(name, caller, change)

    def share(self, name: str, who: str, caller: access.Caller, *, write: bool = False) -> NameRecord:
        """Let user ``USER`` or group ``@GROUP`` read (and with *write*, save over) *name*:
        an ``acl=`` entry, replacing that principal's old one."""
        kind, principal = access.principal(who)
        if kind == "u":
            self._check_user(principal)
        entry = access.format_acl(kind, principal, access.READ | (access.WRITE if write else 0))

        def change(cur: NameRecord) -> dict:
            keep = [a for a in cur.acl if access.parse_acl(a)[:2] != (kind, principal)]
            return {"acl": tuple(sorted([*keep, entry]))}

        return self._amend(name, caller, change)

    def unshare(self, name: str, who: str, caller: access.Caller) -> NameRecord:
        """Take back what ``share`` gave ``USER`` or ``@GROUP``."""
        kind, principal = access.principal(who)

        def change(cur: NameRecord) -> dict:
            keep = tuple(a for a in cur.acl if access.parse_acl(a)[:2] != (kind, principal))
            if keep == cur.acl:
                raise NdbNotFound(f"name {name!r} is not shared with {who}")
            return {"acl": keep}

        return self._amend(name, caller, change)

    def _amend(
        self, name: str, caller: access.Caller, change: Callable[[NameRecord], dict]
    ) -> NameRecord:
        """Append a record of *name* with its latest score and prev, *change*'s attributes
        over its permissions, written by *caller*; under the lock, so a concurrent save is
        neither lost nor undone. Nothing is written when *change* raises or changes nothing
        (the latest record is returned then)."""
        check_name(name)
        self._check_user(caller.user)
        with self.file.locked() as f:
            current = self.latest(name)
            if current is None or current.tombstone or not access.may_read(current, caller):
                raise NdbNotFound(f"no name {name!r}")
            if not access.may_administer(current, caller):
                raise NdbPermission(
                    errno.EPERM,
                    f"only the owner of name {name!r} ({access.owner_of(current)}) or root "
                    "may change its permissions",
                )
            before = self._perms(current, current.user)
            perms = before | change(current)
            if perms == before and current.owner is not None and current.mode is not None:
                return current  # nothing to change (a record from before owners is written out)
            record = NameRecord(
                name=name, score=current.score, user=caller.user,
                date=self._date_after(None, current), prev=current.prev, **perms,
            )
            f.append(record.text().encode("utf-8"))
        return record

    def _check_user(self, user: str) -> None:
        check_user_name(user)
        if self.users is not None and self.users.get(user) is None:
            raise NdbRecordError(f"unknown user {user!r} (add it with `grid user add {user}`)")

    def set(
        self,
        name: str,
        score: str,
        user: str,
        *,
        date: str | None = None,
        node: str | None = None,
        extra: Iterable[Pair] = (),
        prev: str | None = None,
        caller: access.Caller | None = None,
        mode: int | None = None,
    ) -> NameRecord:
        """Point *name* at *score*: append a record whose ``prev`` is the score it replaces,
        or *prev* when given (a save records the root its spawn came from, which is not the
        name's latest root when someone else saved the name meanwhile).

        Without *date*, the record is dated now, or a microsecond after the name's latest
        record when that is later (a peer's clock ahead of ours), so that it does become
        the latest. The caller must have the score's blocks in the store first (names come
        after blocks); ndb cannot check that.

        The record keeps the name's owner, group, mode and ACL (a new name: owned by *user*,
        *mode* or nameaccess.DEFAULT_MODE). With *caller*, a name that exists (a deleted
        one too) is written only if *caller* may write it, checked under the file's lock
        (NdbPermission otherwise).
        """
        check_name(name)
        check_score(score)
        if prev is not None:
            check_score(prev)
        if mode is not None:
            access.check_mode(mode)
        self._check_user(user)
        extra = tuple(extra)
        with self.file.locked() as f:
            current = self.latest(name)
            if caller is not None and current is not None:
                self._may_write(current, caller)
            when = self._date_after(date, current)
            if prev is None:
                prev = None if current is None or current.tombstone else current.score
            record = NameRecord(
                name=name, score=score, user=user, date=when, prev=prev, node=node,
                extra=extra, **self._perms(current, user, mode),
            )
            f.append(record.text().encode("utf-8"))
        return record

    @staticmethod
    def _perms(current: NameRecord | None, user: str, mode: int | None = None) -> dict:
        """The permission attributes of a new record: the name's (made explicit), or a new
        name's, owned by *user*."""
        if current is None:
            return {"owner": user, "mode": access.DEFAULT_MODE if mode is None else mode}
        return {
            "owner": access.owner_of(current),
            "group": current.group,
            "mode": access.mode_of(current) if mode is None else mode,
            "acl": current.acl,
        }

    def check_write(self, name: str, caller: access.Caller) -> None:
        """NdbPermission unless *caller* may save over *name* (anyone may make a new name).
        For refusing early; ``set(..., caller=)`` checks again under the lock."""
        check_name(name)
        current = self.latest(name)
        if current is not None:
            self._may_write(current, caller)

    @staticmethod
    def _may_write(current: NameRecord, caller: access.Caller) -> None:
        if access.may_write(current, caller):
            return
        if access.may_read(current, caller):
            raise NdbPermission(
                errno.EACCES,
                f"permission denied: name {current.name!r} is {access.owner_of(current)}'s "
                f"(mode {access.format_mode(access.mode_of(current))}); "
                "save under a name of your own",
            )
        raise NdbPermission(
            errno.EACCES, f"permission denied: name {current.name!r} is someone else's"
        )

    def delete(
        self,
        name: str,
        user: str,
        *,
        date: str | None = None,
        node: str | None = None,
        caller: access.Caller | None = None,
    ) -> NameRecord:
        """Delete *name*: append a tombstone newer than its latest record. The tombstone
        keeps the name's permissions: only those who could write the name may bring it back.
        With *caller*: only if *caller* may write it."""
        check_name(name)
        self._check_user(user)
        with self.file.locked() as f:
            current = self.latest(name)
            if current is None or current.tombstone or (
                caller is not None and not access.may_read(current, caller)
            ):
                raise NdbNotFound(f"no name {name!r}")
            if caller is not None:
                self._may_write(current, caller)
            when = self._date_after(date, current)
            record = NameRecord(
                name=name, score=None, user=user, date=when, prev=current.score, node=node,
                **self._perms(current, user),
            )
            f.append(record.text().encode("utf-8"))
        return record

    @staticmethod
    def _date_after(date: str | None, current: NameRecord | None) -> str:
        if date is not None:
            return check_before_horizon(date)
        when = now_date()
        if current is not None and parse_date(when) <= parse_date(current.date):
            when = date_after(current.date)
        return when

    def merge_from(
        self, records: Iterable[NameRecord], forgets: Iterable[ForgetRecord] = ()
    ) -> list[NameRecord]:
        """Append the records and forget records this file lacks (one write); return the
        name records added.

        This is merge on files: after A.merge_from(B) and B.merge_from(A) both files hold
        the same set of records, whatever order they were written in. A record that a forget
        record (here or incoming) names is not written: it would only be hidden.
        """
        incoming = {r for r in records if not r.void}
        incoming_forgets = set(forgets)
        if not incoming and not incoming_forgets:
            return []
        with self.file.locked() as f:
            entries = f.parse().entries
            have = {
                NameRecord.from_entry(e, f"{self.file.name}:{e.lineno}")
                for e in entries
                if e.kind == KIND
            }
            have_forgets = {
                ForgetRecord.from_entry(e, f"{self.file.name}:{e.lineno}")
                for e in entries
                if e.kind == FORGET
            }
            gone = forgotten_by(have_forgets | incoming_forgets)
            new = sorted((r for r in incoming - have if target_of(r) not in gone),
                         key=lambda r: (r.name, r._key))
            new_forgets = sorted(x.text() for x in incoming_forgets - have_forgets)
            if new or new_forgets:
                f.append(("".join(r.text() for r in new) + "".join(new_forgets)).encode("utf-8"))
        return new


@dataclass
class ForgetPlan:
    """What ``NameDB.forget`` decided for one name."""

    name: str
    kept: list[tuple[NameRecord, tuple[str, ...]]] = field(default_factory=list)
    forgotten: list[NameRecord] = field(default_factory=list)
    records: list[ForgetRecord] = field(default_factory=list)  # written (none on a dry run)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "keep": [{**r.as_dict(), "reasons": list(why)} for r, why in self.kept],
            "forget": [r.as_dict() for r in self.forgotten],
            "written": len(self.records),
        }
