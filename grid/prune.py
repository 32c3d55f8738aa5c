"""`grid prune`'s roots: every score a name record still holds (forgotten records excepted)
and everything a spawn holds (spawn.roots); store.prune does the rest.

Prune runs in the process that holds the store's writer lock, with no other writer: while
the node daemon runs it holds that lock, and `grid prune` asks the user to stop it first
(docs/store.md, "Prune", says why the copy phase wants the store to itself)."""

from __future__ import annotations

from grid.home import GridHome
from ndb.names import NameDB
from spawn.roots import spawn_roots


def live_roots(home: GridHome) -> tuple[list[bytes], dict[str, int]]:
    """The roots prune marks from, and counts of where they came from."""
    names = NameDB(home.names_db).all()
    roots = [r.score_raw for r in names.records if r.score_raw is not None]
    spawned, nspawns = spawn_roots(home.spawns)
    counts = {"name_records": len(roots), "forgotten_records": len(names.forgets),
              "spawns": nspawns, "spawn_roots": len(spawned)}
    return [bytes(r) for r in roots] + spawned, counts
