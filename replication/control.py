"""The replication control connection: name records and log listings between nodes.

The block protocol (store.wire) moves blocks; it has no request for "your name records" or
"your log past position P", and it should not grow one (it also serves spawns and local
commands). So a peer's TLS port speaks two kinds of connection, told apart by their first
bytes after the handshake:

* a block-protocol connection starts with a frame header, whose first four bytes are a
  big-endian frame size no larger than ``store.wire.MAX_FRAME_SIZE`` (about 16 MiB);
* a control connection starts with ``MAGIC`` (``GRIDREPL/1\\n``), whose first four bytes,
  ``GRID``, read as a size are 1.2 GB: never a valid block frame. One look at four bytes
  decides, with no ambiguity and no extra round trip.

After the magic, both sides exchange frames of ``length[4, big-endian] JSON[length]``, one
reply per request, in order. Requests (``op``):

``names``
    reply ``{"ok": true, "names": TEXT}``: every name record the node holds, in ndb text.
``merge`` ``{"names": TEXT}``
    the node merges these records into its names database (ndb union merge), keeping only
    those whose root block it holds (invariant 4: a name never before its tree; tombstones
    have no root and are always kept). Reply ``{"ok": true, "added": N, "skipped": [NAME..]}``.
``log`` ``{"start": P, "max": N}``
    up to N records of the node's block log from position P, verified as read:
    ``{"ok": true, "records": [[position, next_position, HEX_SCORE], ...], "end": E}``
    where E is the log's end when the listing was made. Pull replication reads this.

A failure is ``{"ok": false, "error": TEXT}`` (plus ``"score"`` for a corrupt block) and the
connection stays usable. A malformed frame closes the connection. This module is the codec
and a blocking client; the server side is replication.listener.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
from typing import Any

MAGIC = b"GRIDREPL/1\n"
SNIFF = 4  # bytes that decide which kind of connection it is
MAX_FRAME = 64 << 20  # a names file of ~300k records; larger is refused, not buffered
LOG_MAX = 4096  # records in one log reply
MERGE_MAX = 4 << 20  # bytes of ndb text in one merge: senders split, receivers refuse more
MERGE_MAX_RECORDS = 20_000  # name records in one merge, likewise
IDLE_TIMEOUT = 300.0  # seconds an open control connection may wait for its next request
_LEN = struct.Struct(">I")


class ControlError(Exception):
    """The control connection failed, or the peer answered a request with an error."""

    def __init__(self, message: str, score: str | None = None) -> None:
        super().__init__(message)
        self.score = score


def is_control(prefix: bytes) -> bool:
    """Whether the first SNIFF bytes of a connection open a control connection."""
    return prefix[:SNIFF] == MAGIC[:SNIFF]


def encode(obj: dict[str, Any]) -> bytes:
    """One frame: the length, then compact JSON."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise ControlError(f"control frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The body length a 4-byte header announces; ControlError when it is too large."""
    (n,) = _LEN.unpack(header)
    if n > MAX_FRAME:
        raise ControlError(f"control frame of {n} bytes exceeds {MAX_FRAME}")
    return n


def decode(body: bytes) -> dict[str, Any]:
    """The JSON object of a frame body; ControlError for anything else."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ControlError(f"malformed control frame: {e}") from None
    if not isinstance(obj, dict):
        raise ControlError("malformed control frame: not a JSON object")
    return obj


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def parse_log_reply(reply: dict[str, Any], start: int, limit: int, peer: str) -> tuple[
        list[tuple[int, int, bytes]], int]:
    """The records of a ``log`` reply, checked: a peer is not trusted to answer sanely.

    Every record lies at or past *start*, ends after it begins, follows the one before it,
    and there are at most *limit*; the score is 64 hex digits. Anything else is a
    ControlError naming what was wrong, so a hostile or broken peer can neither crash the
    caller nor keep it asking for the same position forever."""
    raw, end = reply.get("records"), reply.get("end")
    if not isinstance(raw, list) or not _is_int(end):
        raise ControlError(f"{peer}: malformed log reply (records or end missing)")
    if len(raw) > limit:
        raise ControlError(f"{peer}: log reply has {len(raw)} records, more than the {limit} asked")
    out: list[tuple[int, int, bytes]] = []
    at = start
    for item in raw:
        if (not isinstance(item, list) or len(item) != 3 or not _is_int(item[0]) or not _is_int(item[1])
                or not isinstance(item[2], str) or len(item[2]) != 64):
            raise ControlError(f"{peer}: malformed log record {str(item)[:80]}")
        pos, nxt, hexscore = item
        try:
            score = bytes.fromhex(hexscore)
        except ValueError:
            raise ControlError(f"{peer}: malformed score in log record at {pos}") from None
        if pos < at or nxt <= pos:
            raise ControlError(
                f"{peer}: log reply does not advance (record at {pos}..{nxt} after position {at})"
            )
        out.append((pos, nxt, score))
        at = nxt
    return out, end


class ControlClient:
    """A blocking control connection to a peer (one request at a time)."""

    def __init__(self, sock: ssl.SSLSocket, address: str) -> None:
        self._sock = sock
        self.address = address
        sock.sendall(MAGIC)

    @classmethod
    def connect(
        cls, host: str, port: int, ctx: ssl.SSLContext, server_hostname: str,
        *, timeout: float = 120.0,
    ) -> ControlClient:
        """Dial *host*:*port*, do the mutual-TLS handshake, open a control connection.
        OSError (ssl.SSLError included) when the peer is unreachable or refuses us."""
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            tls = ctx.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise
        return cls(tls, f"{host}:{port}")

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise ControlError(f"{self.address}: the peer closed the control connection")
            buf += chunk
        return bytes(buf)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and return its reply; ControlError when the peer refuses it."""
        self._sock.sendall(encode({"op": op, **args}))
        reply = decode(self._recv_exact(frame_length(self._recv_exact(_LEN.size))))
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error", "unknown error")), reply.get("score"))
        return reply

    def names(self) -> str:
        """The peer's name records, as ndb text."""
        text = self.call("names").get("names")
        if not isinstance(text, str):
            raise ControlError(f"{self.address}: malformed names reply (no ndb text)")
        return text

    def merge(self, text: str) -> tuple[int, list[str]]:
        """Offer name records; the names added and those skipped (root block missing)."""
        r = self.call("merge", names=text)
        added, skipped = r.get("added"), r.get("skipped", [])
        if not _is_int(added) or not isinstance(skipped, list) or not all(isinstance(x, str) for x in skipped):
            raise ControlError(f"{self.address}: malformed merge reply")
        return added, skipped

    def log(self, start: int, limit: int = LOG_MAX) -> tuple[list[tuple[int, int, bytes]], int]:
        """Up to *limit* of the peer's log records from *start*, and the log's end."""
        return parse_log_reply(self.call("log", start=start, max=limit), start, limit, self.address)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
