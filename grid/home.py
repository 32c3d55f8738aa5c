"""The grid home: one directory that holds a node's store, ndb files, certificates, spawns and
sockets.

Chosen as ``$GRID_HOME`` when set, else the per-user data directory (``~/.local/share/grid``
on Linux). ``grid init`` creates it; every other command finds it here and, when it is
missing, says how to make one rather than creating it behind the user's back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from grid.errors import UserError

HOME_MARKER = "grid.home"


def default_home() -> Path:
    env = os.environ.get("GRID_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "grid"


@dataclass(frozen=True, slots=True)
class GridHome:
    """Paths inside a grid home. Pure path arithmetic: nothing here touches the disk."""

    root: Path

    @property
    def marker(self) -> Path:
        return self.root / HOME_MARKER

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def ndb_dir(self) -> Path:
        return self.root / "ndb"

    @property
    def ndb_main(self) -> Path:
        """The root ndb file: its ``database=`` entry chains the others."""
        return self.ndb_dir / "grid"

    @property
    def names_db(self) -> Path:
        return self.ndb_dir / "names"

    @property
    def users_db(self) -> Path:
        return self.ndb_dir / "users"

    @property
    def peers_db(self) -> Path:
        return self.ndb_dir / "peers"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def spawns(self) -> Path:
        return self.root / "spawns"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def control_socket(self) -> Path:
        """The node daemon's socket: commands and mounts (docs/daemon.md)."""
        return self.run / "grid.sock"

    @property
    def blocks_socket(self) -> Path:
        """The node daemon's block-protocol socket, for the home's owner."""
        return self.run / "blocks.sock"

    @property
    def pidfile(self) -> Path:
        return self.run / "grid.pid"

    def exists(self) -> bool:
        return self.marker.is_file()


def find_home(path: str | os.PathLike[str] | None = None) -> GridHome:
    """Return the grid home at *path* (or the default), failing clearly when it is missing."""
    home = GridHome(Path(path) if path else default_home())
    if not home.exists():
        raise UserError(
            f"grid home {home.root}",
            "not initialised; run `grid init` (or set GRID_HOME / --home to an existing home)",
        )
    return home
