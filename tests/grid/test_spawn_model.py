"""The whole product against a real directory: random operation sequences on a spawn made by
`grid spawn --mount` (a FUSE mount process attached to the node daemon), with saves and
respawns among the steps, compared after every step with the same operations on ext4.

The rules and the comparison are tests/spawn/test_fuse_model.py's; this adds the daemon hop
and two rules of its own: ``save`` (the spawn goes on from its new root, unchanged to its
users) and ``respawn`` (save under a name, spawn that name afresh, mount it and carry on in
the new spawn: everything is there, with the same inode numbers).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis.stateful import rule, run_state_machine_as_test

from tests.grid.gridnode import Node, new_node, skip_without_mounts

skip_without_mounts()

from tests.spawn.test_fuse_model import SETTINGS, FuseVsDisk, make_template  # noqa: E402

COPIES = 80
MIN_STEPS = 1200


@dataclass
class World:
    node: Node
    mnt: Path
    model: Path
    template: Path
    sid: str
    examples: int = 0
    steps: int = 0
    saves: int = 0
    respawns: int = 0
    mounts: int = 0
    save_calls: int = 0
    respawn_calls: int = 0


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    from grid.daemon.client import DaemonClient

    n = new_node()
    try:
        n.init()
        template = n.base / "template"
        make_template(template)
        base = n.base / "base"
        base.mkdir()
        for i in range(COPIES):
            shutil.copytree(template, base / f"s{i}", symlinks=True)
        model = n.base / "model"
        model.mkdir()
        n.grid("import", str(base), "model")
        n.start()
        mnt = n.base / "m0"
        mnt.mkdir()
        sid = n.grid("spawn", "-q", "model", "--mount", str(mnt)).stdout.strip()
        w = World(n, mnt, model, template, sid)
        with DaemonClient(n.home / "run" / "grid.sock") as c:
            w.client = c  # type: ignore[attr-defined]
            yield w
        log = n.log.read_text()
        assert "Traceback" not in log, log[-3000:]
    finally:
        n.close()


class ProductVsDisk(FuseVsDisk):
    w: World  # type: ignore[assignment]

    def _inos(self, top: bytes) -> dict[bytes, int]:
        out = {}
        for dirpath, dirs, files in os.walk(top):
            for n in dirs + files:
                p = os.path.join(dirpath, n)
                out[os.path.relpath(p, top)] = os.lstat(p).st_ino
        return out

    @rule()
    def save(self) -> None:
        """Snapshot while the mount stays: nothing changes for its users."""
        self.w.save_calls += 1
        if self.w.save_calls % 3:  # a save costs more than an op: one call in three
            return
        self.w.steps += 1
        self.w.saves += 1
        inos = self._inos(self.fuse)
        r = self.w.client.call("save", self.w.sid)  # type: ignore[attr-defined]
        assert r["score"].startswith("blake3:")
        assert self._inos(self.fuse) == inos

    @rule()
    def respawn(self) -> None:
        """Save as the name, spawn the name into a new mount, carry on there."""
        self.w.respawn_calls += 1
        if self.w.respawn_calls % 12:
            return
        w = self.w
        w.steps += 1
        w.respawns += 1
        inos = self._inos(self.fuse)
        c = w.client  # type: ignore[attr-defined]
        c.call("save", w.sid, "model")
        sid = c.call("spawn", "model")["id"]
        w.mounts += 1
        mnt = w.node.base / f"m{w.mounts}"
        mnt.mkdir()
        w.node.grid("mount", sid, str(mnt))
        new_top = os.fsencode(mnt / os.path.basename(os.fsdecode(self.fuse)))
        assert self._inos(new_top) == inos  # invariant 7: stable across save and respawn
        old_mnt, old_sid = w.mnt, w.sid
        w.node.grid("unmount", str(old_mnt))
        c.call("kill", old_sid)
        w.mnt, w.sid, self.fuse = mnt, sid, new_top


def test_product_vs_disk(world: World) -> None:
    class Machine(ProductVsDisk):
        w = world

    run_state_machine_as_test(Machine, settings=SETTINGS)
    print(f"\nproduct model: {world.steps} steps in {world.examples} examples, "
          f"{world.saves} saves, {world.respawns} respawns")
    assert world.steps >= MIN_STEPS, f"only {world.steps} steps ran"
    assert world.saves and world.respawns
