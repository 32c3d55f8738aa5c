"""`grid store repair` and `grid store check --names`: what damage breaks, and healing it
from peers (docs/store.md, "Damage and repair").

Repair runs in the process that holds the store's writer lock (the daemon stopped, as for
`grid store check --rebuild` and `grid prune`), because it must append a second record of a
block the index already names: a put through the daemon would be deduplicated against the
damaged record.

1. ``check`` reads the whole log: the *lost* blocks (indexed or named by a damaged header,
   with no readable record; indexed in a deleted segment).
2. From every root (name records not forgotten, spawns; as `grid prune` marks) and every lost
   block, a walk looks for blocks that are lost or absent (a rebuild after a cut tail or a
   deleted segment forgets them). It reads non-DATA blocks only; DATA blocks are asked for
   with a batched ``has``.
3. What is wanted is fetched from the peers (ndb ``peers``) over the replication client's
   mutual-TLS block connection, peer by peer: a batched ``has`` says which of them it
   holds, then pipelined reads, each verified against its score on arrival
   (store.client) and again when stored.
4. Blocks are written children first (the walk is post-order), with
   ``LocalStore.restore``: a new record even when the index names the damaged one; closure
   is checked as for any put. One sync at the end.
5. A final check. When nothing is lost and every root's tree is whole, the damaged regions
   left in the log are recorded in ``store/repaired`` and check calls them healed.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ndb.names import NameSet
from store.block import Block, BlockType, references
from store.errors import BlockNotFound, CorruptBlock, StoreError
from store.local import CheckReport, LocalStore, record_repaired
from store.score import format_score

_BATCH = 256


@dataclass
class Source:
    """One peer the blocks may come from: its name, address, and the connection once made."""

    name: str
    addr: str
    remote: object | None = None
    error: str | None = None  # why it could not be used (unreachable, refused)


class Fetcher:
    """Fetch blocks from peers in order; each block verified against its score."""

    def __init__(self, peers: Iterable[tuple[str, str]], ctx: ssl.SSLContext | None, me: str) -> None:
        self.sources = [Source(n, a) for n, a in peers]
        self.ctx = ctx
        self.me = me
        self.fetched: dict[str, int] = {}  # peer -> blocks it supplied

    def _connect(self, src: Source) -> object | None:
        if src.error is not None:
            return None
        if src.remote is None:
            from replication.replicate import ReplicationError, split_addr
            from store.client import RemoteStore

            try:
                host, port = split_addr(src.addr)
                assert self.ctx is not None
                src.remote = RemoteStore.connect_tcp(host, port, self.ctx, server_hostname=src.name,
                                                     name=self.me, connect_timeout=30.0)
            except (ReplicationError, StoreError, OSError) as e:
                from replication.replicate import describe

                src.error = f"cannot reach {src.name} at {src.addr}: {describe(e)}"
                return None
        return src.remote

    def fetch(self, scores: list[bytes]) -> dict[bytes, Block]:
        """The blocks of *scores* some peer holds and sends intact."""
        got: dict[bytes, Block] = {}
        want = list(dict.fromkeys(scores))
        for src in self.sources:
            if not want:
                break
            remote = self._connect(src)
            if remote is None:
                continue
            try:
                lacking = set(remote.missing(want))  # type: ignore[attr-defined]
                have = [s for s in want if s not in lacking]
                for i in range(0, len(have), _BATCH):
                    part = have[i:i + _BATCH]
                    try:
                        blocks = remote.get_many(part)  # type: ignore[attr-defined]
                    except (CorruptBlock, BlockNotFound):  # one is bad or gone there: one by one
                        blocks = []
                        for s in part:
                            with contextlib.suppress(CorruptBlock, BlockNotFound):
                                blocks.append(remote.get(s))  # type: ignore[attr-defined]
                                got[s] = blocks[-1]
                        self.fetched[src.name] = self.fetched.get(src.name, 0) + len(blocks)
                        continue
                    got.update(zip(part, blocks, strict=True))
                    self.fetched[src.name] = self.fetched.get(src.name, 0) + len(blocks)
            except (StoreError, OSError) as e:
                src.error = f"{src.name}: {e}"
                with contextlib.suppress(Exception):
                    remote.close()  # type: ignore[attr-defined]
                src.remote = None
            want = [s for s in want if s not in got]
        return got

    def close(self) -> None:
        for src in self.sources:
            if src.remote is not None:
                with contextlib.suppress(Exception):
                    src.remote.close()  # type: ignore[attr-defined]
                src.remote = None


@dataclass
class RepairReport:
    """What a repair found and did."""

    wanted: int = 0  # blocks lost or absent before the repair
    restored: list[bytes] = field(default_factory=list)
    unrecoverable: dict[bytes, str] = field(default_factory=dict)  # block -> why
    peers: dict[str, int] = field(default_factory=dict)  # peer -> blocks it supplied
    peer_errors: list[str] = field(default_factory=list)
    before: CheckReport | None = None
    after: CheckReport | None = None
    healed_regions: int = 0

    @property
    def ok(self) -> bool:
        return not self.unrecoverable and self.after is not None and self.after.ok


def repair(store: LocalStore, roots: list[bytes], fetcher: Fetcher, *,
           progress: Callable[[str, int], None] | None = None) -> RepairReport:
    """Heal *store* from *fetcher*'s peers; see the module docstring."""
    rep = RepairReport()
    rep.before = store.check()
    lost = set(rep.before.lost)
    bad = _Walk(store, lost, fetcher, rep, progress)
    for r in [*sorted(lost), *roots]:
        bad.visit(r)
    store.sync()
    rep.peers = dict(fetcher.fetched)
    rep.peer_errors = [s.error for s in fetcher.sources if s.error is not None]
    rep.wanted = bad.wanted
    rep.after = store.check()
    if not rep.unrecoverable and not rep.after.lost and not bad.absent_left:
        # What is left are damaged regions whose header names no block, while every root's
        # tree is whole and no indexed block is lost: record them as accounted for.
        regions = [(b.position, b.length) for seg in rep.after.segments.values() for b in seg.bad
                   if b.score is None and not b.torn]
        if regions and len(rep.after.errors) == len(regions):
            record_repaired(store.path, regions)
            rep.healed_regions = len(regions)
            rep.after = store.check()
    return rep


class _Walk:
    """Post-order walk from roots: a block that is lost or absent is fetched (with its
    siblings, in one batch) and restored after its children."""

    def __init__(self, store: LocalStore, lost: set[bytes], fetcher: Fetcher, rep: RepairReport,
                 progress: Callable[[str, int], None] | None) -> None:
        self.store, self.lost, self.fetcher, self.rep = store, lost, fetcher, rep
        self.done: set[bytes] = set()
        self.fetched: set[bytes] = set()  # blocks fetched, to be restored after their children
        self.wanted = 0
        self.absent_left = False
        self.progress = progress

    def _need(self, scores: list[bytes]) -> set[bytes]:
        scores = [s for s in scores if s not in self.done and s != bytes(32)]
        if not scores:
            return set()
        return {bytes(s) for s in self.store.missing(scores)} | (set(scores) & self.lost)

    def visit(self, root: bytes) -> None:
        root = bytes(root)
        if root in self.done or root == bytes(32):
            return
        fetched: dict[bytes, Block] = {}
        need = self._need([root])
        if need:
            fetched = self._fetch([root])
        # stack of (score, block, children iterator state)
        stack: list[tuple[bytes, Block | None, list[bytes] | None]] = [(root, fetched.get(root), None)]
        while stack:
            s, blk, kids = stack.pop()
            if kids is None:
                if s in self.done:
                    continue
                if blk is None:
                    if s in self._need([s]):
                        self.done.add(s)
                        self.absent_left = True
                        continue  # wanted, not fetched: recorded in unrecoverable
                    try:
                        blk = self.store.get(s) if self._reads(s) else None
                    except StoreError as e:
                        self.rep.unrecoverable.setdefault(s, f"unreadable here ({e}) and held by no peer")
                        self.done.add(s)
                        continue
                refs = [bytes(r) for r in references(blk.type, blk.data)] if blk is not None and blk.type != BlockType.DATA else []
                need = self._need(refs)
                got = self._fetch(sorted(need)) if need else {}
                stack.append((s, blk, refs))
                for r in reversed(refs):
                    if r not in self.done:
                        stack.append((r, got.get(r), None))
                continue
            # children handled: write this block if it was fetched
            self.done.add(s)
            if blk is not None and s in self.fetched:
                try:
                    self.store.restore(blk.type, blk.data)
                    self.rep.restored.append(s)
                    self.lost.discard(s)
                    if self.progress is not None:
                        self.progress("restored", len(self.rep.restored))
                except StoreError as e:
                    self.rep.unrecoverable[s] = f"fetched, but not stored: {e}"

    def _reads(self, s: bytes) -> bool:
        """Whether the walk must read *s* to go on (DATA blocks reference nothing)."""
        loc = self.store.locate(s)
        return loc is None or loc.type != BlockType.DATA

    def _fetch(self, scores: list[bytes]) -> dict[bytes, Block]:
        self.wanted += len(scores)
        got = self.fetcher.fetch(scores)
        for s in scores:
            if s in got:
                self.fetched.add(s)
            else:
                where = "absent here" if s not in self.lost else "lost here"
                self.rep.unrecoverable.setdefault(s, f"{where} and held by no reachable peer")
        return got


def broken_names(store: LocalStore, names: NameSet, bad: set[bytes]) -> list[dict[str, object]]:
    """Every name record (history entries too) whose tree holds a block in *bad* or a block
    the store lacks: name, date, root, whether it is the name's latest record, and the
    broken blocks (at most 20 listed). Trees share blocks, so each block is examined once."""
    memo: dict[bytes, frozenset[bytes]] = {}
    empty: frozenset[bytes] = frozenset()

    def below(root: bytes) -> frozenset[bytes]:
        stack: list[tuple[bytes, list[bytes] | None]] = [(root, None)]
        while stack:
            s, kids = stack.pop()
            if s in memo:
                continue
            if kids is None:
                if s in bad or not store.has(s):
                    memo[s] = frozenset({s})
                    continue
                loc = store.locate(s)
                if loc is not None and loc.type == BlockType.DATA:
                    memo[s] = empty
                    continue
                try:
                    blk = store.get(s)
                except StoreError:
                    memo[s] = frozenset({s})
                    continue
                refs = [bytes(r) for r in references(blk.type, blk.data) if bytes(r) != bytes(32)]
                stack.append((s, refs))
                stack.extend((r, None) for r in refs if r not in memo)
                continue
            acc: set[bytes] = set()
            for r in kids:
                acc |= memo.get(r, empty)
            memo[s] = frozenset(acc) if acc else empty
        return memo[root]

    latest = {n: r for n, r in names.latest_by_name().items()}
    out = []
    for rec in sorted(names.records, key=lambda r: (r.name, r.date)):
        raw = rec.score_raw
        if raw is None:
            continue
        hit = below(bytes(raw))
        if hit:
            out.append({"name": rec.name, "date": rec.date, "score": format_score(raw),
                        "latest": latest.get(rec.name) == rec, "blocks": len(hit),
                        "broken": sorted(format_score(x) for x in hit)[:20]})
    return out
