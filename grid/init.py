"""Creating a grid home. Idempotent: what exists is kept, what is missing is made."""

from __future__ import annotations

import os
from pathlib import Path

from grid.home import GridHome, default_home

_NDB_MAIN_HEAD = """\
# grid's root ndb file: the database= entry chains the others (ndb(6)).
database=
"""


def init_home(path: str | os.PathLike[str] | None = None) -> tuple[GridHome, bool]:
    """Create the home at *path* (or the default). Returns (home, created-now)."""
    home = GridHome(Path(path) if path else default_home())
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
    if created:
        home.marker.write_text("grid home, format 1\n")
    return home, created


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
