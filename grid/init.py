"""Creating a grid home. Idempotent: what exists is kept, what is missing is made."""

from __future__ import annotations

import os
from pathlib import Path

from grid.home import GridHome, default_home

_NDB_MAIN = """\
# grid's root ndb file: the database= entry chains the others (ndb(6)).
database=
\tfile={names}
\tfile={users}
\tfile={peers}
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
        home.ndb_main.write_text(
            _NDB_MAIN.format(names=home.names_db, users=home.users_db, peers=home.peers_db)
        )
    if created:
        home.marker.write_text("grid home, format 1\n")
    return home, created
