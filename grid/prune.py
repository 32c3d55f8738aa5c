"""`grid prune`'s roots: every score a name record still holds (forgotten records excepted)
and everything a spawn holds (spawn.roots); store.prune does the rest.

Prune runs in the process that holds the store's writer lock: `grid prune` itself when no
node daemon runs, else the daemon (its ``prune`` request), beside its writers
(docs/store.md, "Online prune")."""

from __future__ import annotations

from collections.abc import Callable

from grid.home import GridHome
from ndb.names import NameDB
from spawn.roots import spawn_roots


def live_roots(home: GridHome, live: Callable[[str], list[bytes] | None] | None = None,
               ) -> tuple[list[bytes], dict[str, int]]:
    """The roots prune marks from, and counts of where they came from. *live* gives the
    roots of a spawn whose engine is open (spawn.roots.spawn_roots), in the node daemon."""
    names = NameDB(home.names_db).all()
    roots = [r.score_raw for r in names.records if r.score_raw is not None]
    spawned, nspawns = spawn_roots(home.spawns, live)
    counts = {"name_records": len(roots), "forgotten_records": len(names.forgets),
              "spawns": nspawns, "spawn_roots": len(spawned)}
    return [bytes(r) for r in roots] + spawned, counts
