"""Peers: the other nodes this node replicates with.

A peer is an entry whose first attribute is ``peer``::

    peer=node2 addr=node2.example.org:17010 cert=/home/alice/.local/share/grid/certs/peers/node2.pem

``addr=`` is where the peer listens (``HOST:PORT``); ``cert=`` the peer's certificate
(a file; the grid CA and mutual TLS come with replication). Other attributes are kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ndb.database import NdbFile
from ndb.document import Document
from ndb.errors import NdbConflict, NdbNotFound, NdbRecordError, NdbValueError
from ndb.syntax import Entry, Pair, check_attr, format_entry_line
from ndb.values import check_addr, check_peer_name

KIND = "peer"
_KNOWN = frozenset({"peer", "addr", "cert"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    name: str
    addr: str
    cert: str | None = None
    extra: tuple[Pair, ...] = ()

    def __post_init__(self) -> None:
        check_peer_name(self.name)
        check_addr(self.addr)
        object.__setattr__(self, "extra", tuple(Pair(*p) for p in self.extra))
        for p in self.extra:
            check_attr(p.attr)
            if p.attr in _KNOWN:
                raise NdbValueError(f"extra attribute {p.attr!r} is one of the peer's own")
        format_entry_line(self.to_entry())

    def to_entry(self) -> Entry:
        pairs = [Pair(KIND, self.name), Pair("addr", self.addr)]
        if self.cert is not None:
            pairs.append(Pair("cert", self.cert))
        return Entry((tuple(pairs) + self.extra,))

    def as_dict(self) -> dict[str, object]:
        return {
            "peer": self.name,
            "addr": self.addr,
            "cert": self.cert,
            "extra": {p.attr: p.value for p in self.extra},
        }

    @classmethod
    def from_entry(cls, entry: Entry, where: str = "<peers>") -> Peer:
        if entry.kind != KIND:
            raise NdbRecordError(f"{where}: not a peer entry (starts with {entry.kind}=)")
        seen: dict[str, str] = {}
        extra: list[Pair] = []
        for p in entry.pairs[1:]:
            if p.attr in _KNOWN:
                if p.attr in seen or p.attr == KIND:
                    raise NdbRecordError(f"{where}: peer entry has {p.attr}= twice")
                seen[p.attr] = p.value
            else:
                extra.append(p)
        if "addr" not in seen:
            raise NdbRecordError(f"{where}: peer {entry.lines[0][0].value!r} has no addr=")
        try:
            return cls(
                name=entry.lines[0][0].value,
                addr=seen["addr"],
                cert=seen.get("cert"),
                extra=tuple(extra),
            )
        except NdbValueError as e:
            raise NdbRecordError(f"{where}: {e}") from None


class PeerDB:
    """The peers file."""

    def __init__(self, path: str | os.PathLike[str], *, index: bool | None = None) -> None:
        self.file = NdbFile(path, index=index)

    def _peer(self, entry: Entry) -> Peer:
        return Peer.from_entry(
            entry, f"{self.file.name}:{entry.lineno}" if entry.lineno else self.file.name
        )

    def list(self) -> list[Peer]:
        return [self._peer(e) for e in self.file.entries() if e.kind == KIND]

    def get(self, name: str) -> Peer | None:
        for m in self.file.search(KIND, name):
            if m.line == 0 and m.index == 0:
                return self._peer(m.entry)
        return None

    def add(self, peer: Peer) -> Peer:
        """Append *peer*; NdbConflict when the name is taken."""
        with self.file.locked() as f:
            for e in f.parse().entries:
                if e.kind == KIND and e.lines[0][0].value == peer.name:
                    raise NdbConflict(f"peer {peer.name!r} exists")
            f.append(format_entry_line(peer.to_entry()).encode("utf-8"))
        return peer

    def remove(self, name: str) -> Peer:
        """Remove the peer's entry, keeping every other line of the file."""
        check_peer_name(name)
        with self.file.locked() as f:
            doc = Document.parse(f.read(), self.file.name)
            victims = [e for e in doc.entries if e.kind == KIND and e.lines[0][0].value == name]
            if not victims:
                raise NdbNotFound(f"no peer {name!r}")
            peer = self._peer(victims[0])
            f.replace(doc.without(lambda e: e.kind == KIND and e.lines[0][0].value == name))
        return peer
