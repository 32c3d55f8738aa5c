"""The block wire protocol as a sans-IO codec: bytes in, typed messages out, and back.

Why sans-IO (h11/wsproto style): the framing, validation and the request/reply rules live
here once, with no socket and no event loop, so they are tested with byte-exact vectors and
fuzzed in memory; the asyncio server (store.server) and the threaded client (store.client)
are thin glue around the same ``Connection``.

Frame layout (all integers big-endian; docs/block-protocol.md has the full table)::

    size[4] type[1] tag[4] body[size - 5]

``size`` counts the bytes after itself. A frame larger than ``MAX_FRAME_SIZE`` is refused as
soon as its size field arrives, before any body is buffered. Every request (T-message) carries
a client-chosen ``tag``; its reply (R-message or Rerror) carries the same tag, so requests
pipeline and replies may come back in any order.

Two error classes, as in h11: ``LocalProtocolError`` means *we* misused the API (a bug in
the caller, never caught as a store error); ``RemoteProtocolError`` means the peer sent
something invalid (a ``store.errors.ProtocolError``; the connection is then unusable).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import ClassVar

from store.block import MAX_BLOCK_SIZE
from store.errors import ProtocolError
from store.score import SCORE_SIZE

PROTOCOL_VERSION = "grid-block/1"

HEADER_SIZE = 9  # size[4] type[1] tag[4]
MAX_STRING = 1024  # bytes of UTF-8 in any string field
MAX_HAS = 4096  # scores in one Thas
MAX_ERROR_SCORES = (MAX_BLOCK_SIZE - 4) // SCORE_SIZE  # every reference of the largest block
# The largest body is an Rread/Twrite of a maximal block (1 + MAX_BLOCK_SIZE) or an Rerror
# naming every reference of one (1 + 2+MAX_STRING + 2 + MAX_ERROR_SCORES*32); 4 KiB of slack
# covers both with the type and tag.
MAX_FRAME_SIZE = MAX_BLOCK_SIZE + 4096
NOTAG = 0xFFFFFFFF  # tag of an Rerror about the connection rather than one request

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEAD = struct.Struct(">IBI")


class LocalProtocolError(Exception):
    """We misused the protocol API (bad field, wrong direction, reused tag): a caller bug."""


class RemoteProtocolError(ProtocolError):
    """The peer sent an invalid frame. ``tag`` is the offending request's tag when known."""

    def __init__(self, message: str, tag: int | None = None) -> None:
        super().__init__(message)
        self.tag = tag


class MsgType(IntEnum):
    """Frame types: requests are even, their replies odd (venti's convention)."""

    RERROR = 1
    THELLO = 2
    RHELLO = 3
    TPING = 4
    RPING = 5
    TREAD = 6
    RREAD = 7
    TWRITE = 8
    RWRITE = 9
    THAS = 10
    RHAS = 11
    TSYNC = 12
    RSYNC = 13
    TSTAT = 14
    RSTAT = 15
    TGOODBYE = 16  # no reply: the server answers what is outstanding, then closes


class ErrorCode(IntEnum):
    """Why a request failed; the client maps each back to a store exception."""

    NOT_FOUND = 1  # BlockNotFound
    CORRUPT = 2  # CorruptBlock
    MISSING_REFERENCE = 3  # MissingReference (closure)
    INVALID_BLOCK = 4  # InvalidBlock
    BAD_REQUEST = 5  # protocol violation or unsupported version; the connection closes
    READ_ONLY = 6  # a write to a read-only server
    INTERNAL = 7  # anything else went wrong in the server


# -- field validation (constructors) ----------------------------------------------------------


def _check_tag(tag: object) -> None:
    if type(tag) is not int or not 0 <= tag <= 0xFFFFFFFF:
        raise LocalProtocolError(f"tag must be an int in [0, 2**32), not {tag!r}")


def _check_u8(name: str, value: object) -> None:
    if type(value) is not int and not isinstance(value, IntEnum):
        raise LocalProtocolError(f"{name} must be an int, not {value!r}")
    if not 0 <= int(value) <= 255:
        raise LocalProtocolError(f"{name} {value} does not fit in a byte")


def _as_bytes(name: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise LocalProtocolError(f"{name} must be bytes, not {type(value).__name__}")


def _as_score(name: str, value: object) -> bytes:
    b = _as_bytes(name, value)
    if len(b) != SCORE_SIZE:
        raise LocalProtocolError(f"{name} must be {SCORE_SIZE} bytes, not {len(b)}")
    return b


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise LocalProtocolError(f"{name} must be a str, not {type(value).__name__}")
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise LocalProtocolError(f"{name} is not encodable as UTF-8: {e}") from None
    if n > MAX_STRING:
        raise LocalProtocolError(f"{name} is {n} bytes of UTF-8; the limit is {MAX_STRING}")


def _check_payload(value: object) -> bytes:
    b = _as_bytes("data", value)
    if len(b) > MAX_BLOCK_SIZE:
        raise LocalProtocolError(f"payload of {len(b)} bytes exceeds {MAX_BLOCK_SIZE}")
    return b


def clip(text: str, limit: int = MAX_STRING) -> str:
    """Shorten *text* to at most *limit* bytes of UTF-8 (for error messages we build)."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "..."


# -- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of every frame: the type (a class constant) and the tag."""

    TYPE: ClassVar[MsgType]
    tag: int

    def __post_init__(self) -> None:
        _check_tag(self.tag)


@dataclass(frozen=True, slots=True, kw_only=True)
class Thello(Message):
    """First frame of a connection: the protocol version and a name the client picks."""

    TYPE = MsgType.THELLO
    version: str = PROTOCOL_VERSION
    name: str = ""

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        _check_str("version", self.version)
        _check_str("name", self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rhello(Message):
    """The server's version, its node name, and who it authenticated the client as.

    ``identity`` comes from the transport (TLS client certificate CN, Unix peer uid),
    never from anything the client says; empty when the transport proves nothing.
    """

    TYPE = MsgType.RHELLO
    version: str = PROTOCOL_VERSION
    node: str = ""
    identity: str = ""

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        _check_str("version", self.version)
        _check_str("node", self.node)
        _check_str("identity", self.identity)


@dataclass(frozen=True, slots=True, kw_only=True)
class Tping(Message):
    TYPE = MsgType.TPING


@dataclass(frozen=True, slots=True, kw_only=True)
class Rping(Message):
    TYPE = MsgType.RPING


@dataclass(frozen=True, slots=True, kw_only=True)
class Tread(Message):
    TYPE = MsgType.TREAD
    score: bytes

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        object.__setattr__(self, "score", _as_score("score", self.score))


@dataclass(frozen=True, slots=True, kw_only=True)
class Rread(Message):
    """A block as the server holds it; the client verifies it against the score it asked."""

    TYPE = MsgType.RREAD
    btype: int
    data: bytes

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        _check_u8("btype", self.btype)
        object.__setattr__(self, "btype", int(self.btype))
        object.__setattr__(self, "data", _check_payload(self.data))


@dataclass(frozen=True, slots=True, kw_only=True)
class Twrite(Message):
    """A block to store. The type byte is not checked here: the store answers INVALID_BLOCK."""

    TYPE = MsgType.TWRITE
    btype: int
    data: bytes

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        _check_u8("btype", self.btype)
        object.__setattr__(self, "btype", int(self.btype))
        object.__setattr__(self, "data", _check_payload(self.data))


@dataclass(frozen=True, slots=True, kw_only=True)
class Rwrite(Message):
    TYPE = MsgType.RWRITE
    score: bytes

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        object.__setattr__(self, "score", _as_score("score", self.score))


@dataclass(frozen=True, slots=True, kw_only=True)
class Thas(Message):
    """Which of these scores do you lack? At most MAX_HAS per request."""

    TYPE = MsgType.THAS
    scores: tuple[bytes, ...]

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        if isinstance(self.scores, bytes | bytearray | memoryview | str):
            raise LocalProtocolError("scores must be a sequence of scores, not one value")
        scores = tuple(_as_score("score", s) for s in self.scores)
        if len(scores) > MAX_HAS:
            raise LocalProtocolError(f"{len(scores)} scores in one Thas; the limit is {MAX_HAS}")
        object.__setattr__(self, "scores", scores)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rhas(Message):
    """``missing[i]`` is True when the i-th score of the Thas is absent (a bitmap on the wire)."""

    TYPE = MsgType.RHAS
    missing: tuple[bool, ...]

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        missing = tuple(self.missing)
        if not all(type(m) is bool for m in missing):
            raise LocalProtocolError("missing must hold only bools")
        if len(missing) > MAX_HAS:
            raise LocalProtocolError(f"{len(missing)} answers in one Rhas; the limit is {MAX_HAS}")
        object.__setattr__(self, "missing", missing)


@dataclass(frozen=True, slots=True, kw_only=True)
class Tsync(Message):
    TYPE = MsgType.TSYNC


@dataclass(frozen=True, slots=True, kw_only=True)
class Rsync(Message):
    TYPE = MsgType.RSYNC


@dataclass(frozen=True, slots=True, kw_only=True)
class Tstat(Message):
    TYPE = MsgType.TSTAT


STAT_FIELDS = (
    "blocks",
    "stored_bytes",
    "logical_bytes",
    "puts",
    "dup_puts",
    "gets",
    "cache_hits",
    "position",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rstat(Message):
    """The served store's StoreStats, field for field (eight u64)."""

    TYPE = MsgType.RSTAT
    blocks: int = 0
    stored_bytes: int = 0
    logical_bytes: int = 0
    puts: int = 0
    dup_puts: int = 0
    gets: int = 0
    cache_hits: int = 0
    position: int = 0

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        for name in STAT_FIELDS:
            v = getattr(self, name)
            if type(v) is not int or not 0 <= v < 1 << 64:
                raise LocalProtocolError(f"{name} must be an int in [0, 2**64), not {v!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Tgoodbye(Message):
    TYPE = MsgType.TGOODBYE


@dataclass(frozen=True, slots=True, kw_only=True)
class Rerror(Message):
    """A request failed (or, with tag NOTAG, the connection did).

    ``scores`` names the blocks concerned: the score for NOT_FOUND and CORRUPT, every absent
    reference for MISSING_REFERENCE, none otherwise.
    """

    TYPE = MsgType.RERROR
    code: ErrorCode
    message: str = ""
    scores: tuple[bytes, ...] = field(default=())

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        try:
            object.__setattr__(self, "code", ErrorCode(self.code))
        except (ValueError, TypeError):
            raise LocalProtocolError(f"unknown error code {self.code!r}") from None
        _check_str("message", self.message)
        scores = tuple(_as_score("score", s) for s in self.scores)
        if len(scores) > MAX_ERROR_SCORES:
            raise LocalProtocolError(f"{len(scores)} scores in an Rerror; limit {MAX_ERROR_SCORES}")
        object.__setattr__(self, "scores", scores)


MESSAGE_CLASSES: dict[MsgType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Rerror,
        Thello,
        Rhello,
        Tping,
        Rping,
        Tread,
        Rread,
        Twrite,
        Rwrite,
        Thas,
        Rhas,
        Tsync,
        Rsync,
        Tstat,
        Rstat,
        Tgoodbye,
    )
}

# Which reply answers which request (Rerror answers any of them; Tgoodbye has none).
REPLY_TO: dict[MsgType, MsgType] = {
    MsgType.THELLO: MsgType.RHELLO,
    MsgType.TPING: MsgType.RPING,
    MsgType.TREAD: MsgType.RREAD,
    MsgType.TWRITE: MsgType.RWRITE,
    MsgType.THAS: MsgType.RHAS,
    MsgType.TSYNC: MsgType.RSYNC,
    MsgType.TSTAT: MsgType.RSTAT,
}
REQUESTS = frozenset((*REPLY_TO, MsgType.TGOODBYE))


# -- encoding ---------------------------------------------------------------------------------


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return _U16.pack(len(raw)) + raw


def _bitmap(bits: tuple[bool, ...]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def _body(msg: Message) -> list[bytes]:
    match msg:
        case Thello():
            return [_str(msg.version), _str(msg.name)]
        case Rhello():
            return [_str(msg.version), _str(msg.node), _str(msg.identity)]
        case Tread() | Rwrite():
            return [msg.score]
        case Rread() | Twrite():
            return [bytes((msg.btype,)), msg.data]
        case Thas():
            return [_U16.pack(len(msg.scores)), *msg.scores]
        case Rhas():
            return [_U16.pack(len(msg.missing)), _bitmap(msg.missing)]
        case Rstat():
            return [_U64.pack(getattr(msg, n)) for n in STAT_FIELDS]
        case Rerror():
            return [bytes((msg.code,)), _str(msg.message), _U16.pack(len(msg.scores)), *msg.scores]
        case _:
            return []  # Tping, Rping, Tsync, Rsync, Tstat, Tgoodbye: no body


def encode(msg: Message) -> bytes:
    """The frame for *msg* (one copy of any payload)."""
    if not isinstance(msg, Message) or type(msg) is Message:
        raise LocalProtocolError(f"not a protocol message: {msg!r}")
    parts = _body(msg)
    size = 5 + sum(len(p) for p in parts)
    if size > MAX_FRAME_SIZE:  # cannot happen with validated fields; kept as a guard
        raise LocalProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME_SIZE}")
    return b"".join((_HEAD.pack(size, msg.TYPE, msg.tag), *parts))


# -- decoding ---------------------------------------------------------------------------------


class _Cursor:
    """Reads fields from one frame body; any shortfall is the peer's fault."""

    __slots__ = ("buf", "pos", "tag", "what")

    def __init__(self, buf: memoryview, tag: int, what: str) -> None:
        self.buf, self.pos, self.tag, self.what = buf, 0, tag, what

    def fail(self, why: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"malformed {self.what}: {why}", self.tag)

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            raise self.fail(f"body ends {end - len(self.buf)} byte(s) short")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return _U16.unpack(self.take(2))[0]

    def u64(self) -> int:
        return _U64.unpack(self.take(8))[0]

    def string(self, name: str) -> str:
        n = self.u16()
        if n > MAX_STRING:
            raise self.fail(f"{name} of {n} bytes exceeds {MAX_STRING}")
        try:
            return str(self.take(n), "utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{name} is not valid UTF-8") from None

    def scores(self, n: int) -> tuple[bytes, ...]:
        raw = bytes(self.take(n * SCORE_SIZE))
        return tuple(raw[i : i + SCORE_SIZE] for i in range(0, len(raw), SCORE_SIZE))

    def rest(self) -> bytes:
        out = bytes(self.buf[self.pos :])
        self.pos = len(self.buf)
        return out

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self.fail(f"{len(self.buf) - self.pos} unexpected trailing byte(s)")


def decode(mtype: int, tag: int, body: bytes | memoryview) -> Message:
    """Build the message of one frame (type, tag, body); RemoteProtocolError if malformed."""
    try:
        t = MsgType(mtype)
    except ValueError:
        raise RemoteProtocolError(f"unknown message type {mtype}", tag) from None
    c = _Cursor(memoryview(body), tag, t.name)
    fields: dict[str, object]
    match t:
        case MsgType.THELLO:
            fields = {"version": c.string("version"), "name": c.string("name")}
        case MsgType.RHELLO:
            fields = {
                "version": c.string("version"),
                "node": c.string("node"),
                "identity": c.string("identity"),
            }
        case MsgType.TREAD | MsgType.RWRITE:
            fields = {"score": bytes(c.take(SCORE_SIZE))}
        case MsgType.RREAD | MsgType.TWRITE:
            btype = c.u8()
            data = c.rest()
            if len(data) > MAX_BLOCK_SIZE:
                raise c.fail(f"payload of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")
            fields = {"btype": btype, "data": data}
        case MsgType.THAS:
            n = c.u16()
            if n > MAX_HAS:
                raise c.fail(f"{n} scores exceed the limit of {MAX_HAS}")
            fields = {"scores": c.scores(n)}
        case MsgType.RHAS:
            n = c.u16()
            if n > MAX_HAS:
                raise c.fail(f"{n} answers exceed the limit of {MAX_HAS}")
            bitmap = c.take((n + 7) // 8)
            if n % 8 and bitmap[-1] >> (n % 8):
                raise c.fail("padding bits of the bitmap are not zero")
            fields = {"missing": tuple(bool(bitmap[i >> 3] >> (i & 7) & 1) for i in range(n))}
        case MsgType.RSTAT:
            fields = {name: c.u64() for name in STAT_FIELDS}
        case MsgType.RERROR:
            code = c.u8()
            try:
                code = ErrorCode(code)
            except ValueError:
                raise c.fail(f"unknown error code {code}") from None
            message = c.string("message")
            n = c.u16()
            if n > MAX_ERROR_SCORES:
                raise c.fail(f"{n} scores exceed the limit of {MAX_ERROR_SCORES}")
            fields = {"code": code, "message": message, "scores": c.scores(n)}
        case _:
            fields = {}
    c.end()
    return MESSAGE_CLASSES[t](tag=tag, **fields)


class FrameBuffer:
    """Accumulates bytes and cuts them into frames (wsproto's buffer, without the I/O).

    The size field is checked the moment its four bytes arrive, so an oversize frame is
    refused without buffering it. Consumed bytes are compacted lazily to keep cutting many
    small frames out of one large read linear.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max = max_frame_size

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    def next_frame(self) -> tuple[int, int, memoryview] | None:
        """(type, tag, body) of the next whole frame, or None when more bytes are needed."""
        avail = len(self._buf) - self._pos
        if avail < 4:
            return None
        (size,) = _U32.unpack_from(self._buf, self._pos)
        if size < 5:
            raise RemoteProtocolError(f"frame size {size} is below the minimum of 5")
        if size > self._max:
            raise RemoteProtocolError(f"frame of {size} bytes exceeds the limit of {self._max}")
        if avail < 4 + size:
            return None
        _, mtype, tag = _HEAD.unpack_from(self._buf, self._pos)
        start = self._pos + HEADER_SIZE
        end = self._pos + 4 + size
        body = memoryview(bytes(self._buf[start:end]))
        self._pos = end
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 1 << 16 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        return mtype, tag, body


# -- the connection state machine -------------------------------------------------------------


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


class Connection:
    """One side of a block-protocol connection: framing plus the request/reply rules.

    Rules enforced in both directions (a local violation raises LocalProtocolError, a remote
    one RemoteProtocolError):

    - the client speaks T-messages, the server R-messages;
    - Thello is the client's first frame, and only once;
    - a tag is in use from its request until its reply; NOTAG is never a request's tag;
    - a reply must answer an outstanding request with the matching type, or be an Rerror;
      an Rerror may also carry a tag that is not outstanding (NOTAG), which then reports a
      failure of the whole connection;
    - nothing follows Tgoodbye from the client.

    Not thread-safe: the threaded client guards it with a lock.
    """

    def __init__(self, role: Role, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.role = role
        self._frames = FrameBuffer(max_frame_size)
        self._pending: dict[int, MsgType] = {}  # tag -> request type, awaiting a reply
        self._hello_seen = False  # client: Thello sent; server: Thello received
        self._goodbye = False  # client: sent; server: received
        self._eof = False
        self._error: RemoteProtocolError | None = None

    @property
    def outstanding(self) -> int:
        """Requests sent (client) or received (server) and not yet answered."""
        return len(self._pending)

    @property
    def goodbye(self) -> bool:
        return self._goodbye

    def pending_tags(self) -> list[int]:
        return list(self._pending)

    # -- outgoing -------------------------------------------------------------------------

    def send(self, msg: Message) -> bytes:
        """Check *msg* against the rules and return its frame."""
        if not isinstance(msg, Message) or type(msg) is Message:
            raise LocalProtocolError(f"not a protocol message: {msg!r}")
        if self.role is Role.CLIENT:
            self._client_send(msg)
        else:
            self._server_send(msg)
        return encode(msg)

    def _client_send(self, msg: Message) -> None:
        t = msg.TYPE
        if t not in REQUESTS:
            raise LocalProtocolError(f"a client cannot send {t.name}")
        if self._goodbye:
            raise LocalProtocolError(f"{t.name} after Tgoodbye")
        if (t is MsgType.THELLO) == self._hello_seen:
            raise LocalProtocolError(
                "Thello was already sent" if self._hello_seen else f"{t.name} before Thello"
            )
        if msg.tag == NOTAG:
            raise LocalProtocolError("NOTAG cannot tag a request")
        if t is MsgType.TGOODBYE:
            self._goodbye = True
            return
        if msg.tag in self._pending:
            raise LocalProtocolError(f"tag {msg.tag} is still in use")
        self._hello_seen = True
        self._pending[msg.tag] = t

    def _server_send(self, msg: Message) -> None:
        t = msg.TYPE
        if t in REQUESTS:
            raise LocalProtocolError(f"a server cannot send {t.name}")
        req = self._pending.get(msg.tag)
        if req is None:
            if t is MsgType.RERROR:
                return  # a connection-level error
            raise LocalProtocolError(f"{t.name} answers tag {msg.tag}, which is not outstanding")
        if t is not MsgType.RERROR and REPLY_TO[req] is not t:
            raise LocalProtocolError(f"{t.name} cannot answer {req.name}")
        del self._pending[msg.tag]

    # -- incoming -------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side (EOF)."""
        if self._eof:
            raise LocalProtocolError("receive_data after EOF")
        if not data:
            self._eof = True
        else:
            self._frames.feed(data)

    def next_message(self) -> Message | None:
        """The next complete message, or None when more data is needed (or at a clean EOF).

        Raises RemoteProtocolError for anything invalid, and again on every later call.
        """
        if self._error is not None:
            raise self._error
        try:
            frame = self._frames.next_frame()
            if frame is None:
                if self._eof and len(self._frames):
                    raise RemoteProtocolError(
                        f"connection closed inside a frame ({len(self._frames)} bytes pending)"
                    )
                return None
            msg = decode(*frame)
            if self.role is Role.SERVER:
                self._server_receive(msg)
            else:
                self._client_receive(msg)
            return msg
        except RemoteProtocolError as e:
            self._error = e
            raise

    @property
    def eof(self) -> bool:
        """True once the peer closed and every buffered frame has been taken."""
        return self._eof and not len(self._frames)

    def _server_receive(self, msg: Message) -> None:
        t = msg.TYPE
        if t not in REQUESTS:
            raise RemoteProtocolError(f"a client sent {t.name}", msg.tag)
        if self._goodbye:
            raise RemoteProtocolError(f"{t.name} after Tgoodbye", msg.tag)
        if (t is MsgType.THELLO) == self._hello_seen:
            why = "a second Thello" if self._hello_seen else f"{t.name} before Thello"
            raise RemoteProtocolError(why, msg.tag)
        if msg.tag == NOTAG:
            raise RemoteProtocolError("a request tagged NOTAG", msg.tag)
        if t is MsgType.TGOODBYE:
            self._goodbye = True
            return
        if msg.tag in self._pending:
            raise RemoteProtocolError(f"tag {msg.tag} reused while outstanding", msg.tag)
        self._hello_seen = True
        self._pending[msg.tag] = t

    def _client_receive(self, msg: Message) -> None:
        t = msg.TYPE
        if t in REQUESTS:
            raise RemoteProtocolError(f"a server sent {t.name}", msg.tag)
        req = self._pending.get(msg.tag)
        if req is None:
            if t is MsgType.RERROR:
                return  # connection-level error; the caller fails everything
            raise RemoteProtocolError(f"{t.name} for tag {msg.tag}, which is not outstanding")
        if t is not MsgType.RERROR and REPLY_TO[req] is not t:
            raise RemoteProtocolError(f"{t.name} answers {req.name} (tag {msg.tag})")
        del self._pending[msg.tag]
