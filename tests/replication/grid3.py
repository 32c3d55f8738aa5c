"""Three real nodes for replication tests: grid homes in /tmp joined into one CA, each with
its own `grid serve --blocks 127.0.0.1:PORT`, peers recorded both ways."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.grid.gridnode import Node, free_port, new_node


class Peer:
    """A Node with a name and its peer port."""

    def __init__(self, node: Node, name: str) -> None:
        self.node = node
        self.name = name
        self.port = free_port()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def grid(self, *args: str, **kw: object):
        return self.node.grid(*args, **kw)  # type: ignore[arg-type]

    def start(self) -> None:
        self.node.start("--blocks", self.addr)

    def names(self) -> dict[str, dict[str, object]]:
        out = json.loads(self.grid("names", "--all", "--json").stdout)
        return {r["name"]: r for r in out}

    def history(self, name: str) -> list[str]:
        return self.grid("history", name).stdout.splitlines()

    def scores(self) -> set[str]:
        """Every score in the store's log (read-only open works while the daemon runs)."""
        from store.local import LocalStore

        s = LocalStore.open(self.node.home / "store", readonly=True)
        try:
            return {rec.score.hex() for rec in s.iter_log(0)}
        finally:
            s.close()


def make_grid(n: int, tmp: Path) -> list[Peer]:
    """*n* nodes named a, b, c...: the first makes the CA, the others join it; every node
    lists every other as a peer. Daemons are not started."""
    names = "abcdefgh"[:n]
    peers: list[Peer] = []
    for i, name in enumerate(names):
        node = new_node()
        if i == 0:
            node.grid("init", "--node-name", name, "--grid-name", "lab")
        else:
            bundle = tmp / f"{name}.bundle"
            peers[0].grid("join-bundle", name, "-o", str(bundle))
            node.grid("init", "--join", str(bundle))
        os.chmod(node.home, 0o711)
        peers.append(Peer(node, name))
    for p in peers:
        for q in peers:
            if p is not q:
                p.grid("peer", "add", q.name, q.addr)
    return peers
