"""The blocks a spawn holds on to, for prune (docs/store.md, "Prune"): its base root, and
every tree its overlay points at (spilled files, rebased files), committed or still in the
overlay's journal.

Read from disk without opening the engine: the overlay's LMDB read-only, and the journal's
records decoded but not applied. Anything that looks like a reference is returned (a
superset is safe: it only keeps more)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import lmdb

from spawn.journal import PUT, decode_records
from spawn.overlay import decode_oinode
from store.score import NULL_SCORE, parse_score

_META, _INODES = 0, 1  # journal db numbers (spawn.overlay.Overlay._dbs)


def _inode_refs(value: bytes) -> list[bytes]:
    ino = decode_oinode(value).inode
    return [bytes(ino.content)] if ino.content != NULL_SCORE else []


def overlay_roots(txn: lmdb.Transaction, meta: object, inodes: object) -> list[bytes]:
    """What an overlay's LMDB holds on to, read in *txn*: its base and every content tree."""
    roots: list[bytes] = []
    b = txn.get(b"base", db=meta)
    if b:
        roots.append(bytes(b))
    for _k, v in txn.cursor(db=inodes):
        roots.extend(_inode_refs(bytes(v)))
    return roots


def live_overlay_roots(engine: object) -> list[bytes]:
    """An open spawn's roots, from its engine's own view (every operation so far,
    checkpointed or not). Run it on the spawn's owner thread (its host)."""
    ov = engine.ov  # type: ignore[attr-defined]
    with ov.reading() as txn:
        return overlay_roots(txn, ov.meta, ov.inodes)


def _journal_roots(journal: Path) -> list[bytes]:
    roots: list[bytes] = []
    for _seq, entries in decode_records(journal.read_bytes()):
        for kind, db, key, value in entries:
            if kind != PUT:
                continue
            if db == _INODES:
                roots.extend(_inode_refs(value))
            elif db == _META and key == b"base" and len(value) == 32:
                roots.append(bytes(value))
    return roots


def spawn_roots(spawns: str | os.PathLike[str],
                live: Callable[[str], list[bytes] | None] | None = None) -> tuple[list[bytes], int]:
    """Every root score the spawns under *spawns* reference, and how many spawns there are.

    *live*, given a spawn id, returns the roots of a spawn whose engine is open (the node
    daemon asks the engine: another LMDB handle on an overlay its writer holds open could
    read pages the writer reuses), or None for a spawn read from disk."""
    roots: list[bytes] = []
    n = 0
    base = Path(spawns)
    if not base.is_dir():
        return roots, 0
    for d in sorted(base.iterdir()):
        info = d / "info.json"
        if not d.name.isdigit() or not info.is_file():
            continue
        try:
            text = info.read_text()
        except FileNotFoundError:
            continue  # killed while we looked: it holds nothing any more
        n += 1
        roots.append(bytes(parse_score(json.loads(text)["root"])))
        held = live(d.name) if live is not None else None
        if held is not None:
            roots.extend(held)
            continue
        ov = d / "overlay"
        journal = ov / "journal"
        # The journal before the LMDB: a checkpoint between the two reads moves records from
        # the one to the other, and this order sees them in at least one.
        if journal.exists():
            roots.extend(_journal_roots(journal))
        if (ov / "data.mdb").exists():
            env = lmdb.open(str(ov), readonly=True, max_dbs=8, subdir=True, lock=False)
            try:
                with env.begin() as txn:
                    meta = env.open_db(b"meta", txn=txn, create=False)
                    inodes = env.open_db(b"inodes", txn=txn, create=False)
                    roots.extend(overlay_roots(txn, meta, inodes))
            finally:
                env.close()
    return roots, n
