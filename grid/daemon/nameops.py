"""The daemon's name requests: every listing, history and change of names made for a caller
who is known by uid (grid.sock's SO_PEERCRED, a 9P certificate, an SSH key).

Users who cannot read the home's ndb files (everyone but root and the home's owner) reach
the names through these; the 9P ``names`` file and SSH's ``grid names`` / ``grid history``
come here too, so every path applies the one rule of ndb.nameaccess to the same caller
(docs/daemon.md, "Names").

    names       [] {user, all}        the latest record of each name the caller may read
    history     [NAME]                every record of NAME, if the caller may read it
    name_get    [NAME]                NAME's latest record, if the caller may read it
    name_set    [NAME, SCORE]         point NAME at SCORE (a root the caller may spawn)
    name_rm     [NAME]                delete NAME (the caller may write it)
    name_chmod  [NAME, MODE]          octal or symbolic; the owner or root
    name_chown  [NAME, USER[:GROUP]]  owner: root only; group: the owner, to one of theirs
    name_share  [NAME, USER|@GROUP] {write}   let them read (and write) it
    name_unshare [NAME, USER|@GROUP]
    name_forget [NAME] {keep_last, keep_hourly, ..., keep_within, dry_run}
                                      apply a retention policy; the owner or root

Each returns record dicts (``NameRecord.as_dict``), as ``grid names --json`` prints them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from typing import Any

from ndb.nameaccess import Caller
from ndb.names import NameDB
from ndb.users import UserDB


def caller(daemon: Any, uid: int) -> Caller:
    """The grid user a uid is, its ndb groups, and whether it holds every right: root, and
    the daemon's own user (the home's owner, who can read and write the files anyway)."""
    user = daemon.user_name(uid)
    u = UserDB(daemon.home.users_db).get(user)
    groups = frozenset(u.groups) if u is not None else frozenset()
    return Caller(user, groups, privileged=uid in (0, os.geteuid()))


def names_db(daemon: Any) -> NameDB:
    return NameDB(daemon.home.names_db, users=UserDB(daemon.home.users_db))


def check_save(daemon: Any, uid: int, name: str) -> None:
    """Refuse (NdbPermission) a save over *name* by *uid* before any block is written."""
    names_db(daemon).check_write(name, caller(daemon, uid))


def _names(db: NameDB, who: Caller, user: str | None = None, all: bool = False) -> list[dict]:
    return [r.as_dict() for r in db.list(user=user, include_deleted=bool(all), caller=who)]


def _history(db: NameDB, who: Caller, name: str) -> list[dict]:
    return [r.as_dict() for r in db.history_for(name, who)]


def _get(db: NameDB, who: Caller, name: str) -> dict:
    from ndb.errors import NdbNotFound

    r = db.resolve_for(name, who)
    if r is None:
        raise NdbNotFound(f"no name {name!r} (unknown or deleted)")
    return r.as_dict()


def _set(db: NameDB, who: Caller, name: str, score: str) -> dict:
    from ndb.errors import NdbPermission

    if not db.may_use_score(score, who):
        raise NdbPermission(errno.EACCES, f"permission denied: {score} is not a root of a name "
                            "you may read")
    return db.set(name, score, who.user, caller=who).as_dict()


def _rm(db: NameDB, who: Caller, name: str) -> dict:
    return db.delete(name, who.user, caller=who).as_dict()


def _chmod(db: NameDB, who: Caller, name: str, mode: str) -> dict:
    return db.chmod(name, str(mode), who).as_dict()


def _chown(db: NameDB, who: Caller, name: str, spec: str) -> dict:
    owner, colon, group = str(spec).partition(":")
    return db.chown(name, owner or None, group if colon else None, who).as_dict()


def _share(db: NameDB, who: Caller, name: str, principal: str, write: bool = False) -> dict:
    return db.share(name, principal, who, write=bool(write)).as_dict()


def _unshare(db: NameDB, who: Caller, name: str, principal: str) -> dict:
    return db.unshare(name, principal, who).as_dict()


def _forget(db: NameDB, who: Caller, name: str, dry_run: bool = False, **keep: int | str | None) -> dict:
    from ndb.errors import NdbValueError
    from ndb.retention import Policy, Within

    within = keep.pop("keep_within", None)
    if within is not None and not isinstance(within, str):
        raise NdbValueError(f"keep_within must be a duration, not {within!r}")
    counts = {k.removeprefix("keep_"): v for k, v in keep.items() if v is not None}
    for k, v in counts.items():
        if type(v) is not int:
            raise NdbValueError(f"keep_{k} must be a whole number, not {str(v)[:40]!r}")
    policy = Policy(**counts, within=Within.parse(within) if within else None)
    return db.forget(name, policy, who, dry_run=bool(dry_run)).as_dict()


#: What the local CLI does on the files itself when it may (as a privileged caller), and the
#: daemon does for everyone else: one implementation for both.
LOCAL: dict[str, Callable[..., Any]] = {
    "names": _names, "history": _history, "name_get": _get, "name_set": _set,
    "name_rm": _rm, "name_chmod": _chmod, "name_chown": _chown, "name_share": _share,
    "name_unshare": _unshare, "name_forget": _forget,
}


def handler(daemon: Any, op: str) -> Callable[..., Awaitable[Any]] | None:
    """The daemon's handler of request *op* (``fn(uid, *args, **kw)``), if it is a name
    request."""
    fn = LOCAL.get(op)
    if fn is None:
        return None

    async def run(uid: int, *args: Any, **kw: Any) -> Any:
        import asyncio

        def work() -> Any:
            return fn(names_db(daemon), caller(daemon, uid), *args, **kw)

        return await asyncio.to_thread(work)

    return run
