"""The blocks a spawn holds on to, for prune (docs/store.md, "Prune"): its base root, and
every tree its overlay points at (spilled files, rebased files), committed or still in the
overlay's journal.

Read from disk without opening the engine: the overlay's LMDB read-only, and the journal's
records decoded but not applied. Anything that looks like a reference is returned (a
superset is safe: it only keeps more)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lmdb

from spawn.journal import PUT, decode_records
from spawn.overlay import decode_oinode
from store.score import NULL_SCORE, parse_score

_META, _INODES = 0, 1  # journal db numbers (spawn.overlay.Overlay._dbs)


def _inode_refs(value: bytes) -> list[bytes]:
    ino = decode_oinode(value).inode
    return [bytes(ino.content)] if ino.content != NULL_SCORE else []


def spawn_roots(spawns: str | os.PathLike[str]) -> tuple[list[bytes], int]:
    """Every root score the spawns under *spawns* reference, and how many spawns there are."""
    roots: list[bytes] = []
    n = 0
    base = Path(spawns)
    if not base.is_dir():
        return roots, 0
    for d in sorted(base.iterdir()):
        info = d / "info.json"
        if not d.name.isdigit() or not info.is_file():
            continue
        n += 1
        roots.append(bytes(parse_score(json.loads(info.read_text())["root"])))
        ov = d / "overlay"
        if (ov / "data.mdb").exists():
            env = lmdb.open(str(ov), readonly=True, max_dbs=8, subdir=True, lock=False)
            try:
                with env.begin() as txn:
                    meta = env.open_db(b"meta", txn=txn, create=False)
                    inodes = env.open_db(b"inodes", txn=txn, create=False)
                    b = txn.get(b"base", db=meta)
                    if b:
                        roots.append(bytes(b))
                    for _k, v in txn.cursor(db=inodes):
                        roots.extend(_inode_refs(bytes(v)))
            finally:
                env.close()
        journal = ov / "journal"
        if journal.exists():
            for _seq, entries in decode_records(journal.read_bytes()):
                for kind, db, key, value in entries:
                    if kind != PUT:
                        continue
                    if db == _INODES:
                        roots.extend(_inode_refs(value))
                    elif db == _META and key == b"base" and len(value) == 32:
                        roots.append(bytes(value))
    return roots, n
