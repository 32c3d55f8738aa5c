"""The 9P codec, sans-IO: whole frames to typed messages and back, a frame splitter for a
byte stream, and the packing of directory data. No sockets, no asyncio.

Frame layout, all integers little-endian (intro(5))::

    size[4] type[1] tag[2] body[size - 7]

``size`` counts the whole frame, itself included, and may not exceed the negotiated msize.
Strings are len[2] + bytes. The body layouts come from the field declarations in
``spawn.ninep.messages``: each (message class, dialect) is compiled once into a plan of
steps, runs of fixed-size fields becoming a single ``struct`` call, because a 9P server
spends its life in this code (a getattr is one frame each way).

Why the dialect is an argument of every call rather than state: Tattach, Tauth, Rerror,
Tcreate and stat have longer layouts in 9P2000.u and 9P2000.L than in 9P2000, and the .L
messages exist only in .L; the dialect is fixed per connection by Tversion, whose layout is
the same in every dialect, so the caller decodes Tversion with any dialect and then passes
the negotiated one. Keeping it out of the codec keeps the codec a pair of pure functions.

Errors: ``LocalProtocolError`` when we ask for something impossible (a message outside the
dialect, a frame over ``msize``); ``RemoteProtocolError`` for every defect of received
bytes (short or long body, unknown or reserved type, a message outside the dialect, a
string or count running past the end, a size under 7 or over msize).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterable
from typing import Any

from spawn.ninep.messages import (
    HEADER_SIZE,
    IOHDRSZ,
    MAXWELEM,
    MESSAGE_CLASSES,
    Dialect,
    Dirent,
    LocalProtocolError,
    Message,
    Qid,
    RemoteProtocolError,
    Stat,
    Wire,
)

MAX_FRAME = 0xFFFFFFFF  # what a size[4] can say
DEFAULT_MSIZE = 8192 + IOHDRSZ  # Plan 9's classic msize, until Tversion negotiates one

_HEADER = struct.Struct("<IBH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_QID = struct.Struct("<BIQ")
_FORMAT = {Wire.U8: "B", Wire.U16: "H", Wire.U32: "I", Wire.U64: "Q", Wire.QID: "BIQ"}

_Values = dict[str, Any]
_QID_TYPE, _QID_VERSION, _QID_PATH = (getattr(Qid, n).__set__ for n in ("type", "version", "path"))


def _setters(cls: type) -> tuple[tuple[str, Callable[[Any, Any], None]], ...]:
    """The slot setters of a record or message class, bypassing its frozen __setattr__."""
    return tuple((f.name, getattr(cls, f.name).__set__) for f in dataclasses.fields(cls))


def _build(cls: type, values: _Values) -> Any:
    """An instance of a record or message from decoded values, skipping __post_init__:
    the decoder has already enforced every constraint the constructor checks (ranges by
    construction of the struct formats, lengths by the u16/u32 prefixes, MAXWELEM here)."""
    obj = object.__new__(cls)
    for name, setter in _SETTERS[cls]:
        setter(obj, values[name])
    return obj


def _qid(t: int, version: int, path: int) -> Qid:
    qid = object.__new__(Qid)
    _QID_TYPE(qid, t)
    _QID_VERSION(qid, version)
    _QID_PATH(qid, path)
    return qid


class _Cursor:
    """A read position in one frame; every overrun is the peer's fault."""

    __slots__ = ("buf", "end", "pos", "views")

    def __init__(self, buf: bytes | memoryview, pos: int, end: int, views: bool = False) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end
        self.views = views

    def need(self, n: int, what: str) -> int:
        pos = self.pos
        if pos + n > self.end:
            raise RemoteProtocolError(
                f"{what} needs {n} bytes at offset {pos}, only {self.end - pos} left"
            )
        self.pos = pos + n
        return pos

    def string(self, what: str) -> bytes:
        (n,) = _U16.unpack_from(self.buf, self.need(2, what))
        start = self.need(n, what)
        return bytes(self.buf[start : start + n])


# --- plans: one per (record or message class, dialect) ------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Fixed:
    """A run of fixed-size fields packed by one struct. A Qid field is three struct
    items; ``qid_at`` holds the positions in ``names`` of such fields."""

    fmt: struct.Struct
    names: tuple[str, ...]
    qid_at: tuple[int, ...]

    def encode(self, obj: Any, out: list[Any]) -> None:
        values = [getattr(obj, name) for name in self.names]
        for i in reversed(self.qid_at):  # expand from the end: earlier positions stay put
            qid = values[i]
            values[i : i + 1] = (qid.type, qid.version, qid.path)
        out.append(self.fmt.pack(*values))

    def decode(self, cur: _Cursor, into: _Values) -> None:
        raw: Any = self.fmt.unpack_from(cur.buf, cur.need(self.fmt.size, self.names[0]))
        if self.qid_at:
            raw = list(raw)
            for i in self.qid_at:  # collapse from the start: each leaves i at its field
                raw[i : i + 3] = (_qid(*raw[i : i + 3]),)
        into.update(zip(self.names, raw, strict=True))


@dataclasses.dataclass(frozen=True, slots=True)
class _Variable:
    """One variable-size field: a string, data, walk names or qids, or a nested stat."""

    name: str
    wire: Wire
    dialect: Dialect

    def encode(self, obj: Any, out: list[bytes]) -> None:
        value = getattr(obj, self.name)
        wire = self.wire
        if wire is Wire.STR:
            out += (_U16.pack(len(value)), value)
        elif wire is Wire.DATA:
            out += (_U32.pack(len(value)), value)
        elif wire is Wire.NAMES:
            out.append(_U16.pack(len(value)))
            for name in value:
                out += (_U16.pack(len(name)), name)
        elif wire is Wire.QIDS:
            out.append(_U16.pack(len(value)))
            out += (_QID.pack(q.type, q.version, q.path) for q in value)
        else:
            stat = encode_stat(value, self.dialect)
            if len(stat) > 0xFFFF:
                raise LocalProtocolError(f"stat of {len(stat)} bytes does not fit a stat[n]")
            out += (_U16.pack(len(stat)), stat)

    def decode(self, cur: _Cursor, into: _Values) -> None:
        wire, name, buf = self.wire, self.name, cur.buf
        if wire is Wire.STR:
            into[name] = cur.string(name)
        elif wire is Wire.DATA:
            (n,) = _U32.unpack_from(buf, cur.need(4, name))
            start = cur.need(n, name)
            # a view when decoding views (see decode), else a copy
            into[name] = buf[start : start + n] if cur.views else bytes(buf[start : start + n])
        elif wire is Wire.NAMES or wire is Wire.QIDS:
            (n,) = _U16.unpack_from(buf, cur.need(2, name))
            if n > MAXWELEM:
                raise RemoteProtocolError(f"{name}: {n} elements, more than {MAXWELEM}")
            if wire is Wire.NAMES:
                into[name] = tuple(cur.string(name) for _ in range(n))
            else:
                into[name] = tuple(
                    _qid(*_QID.unpack_from(buf, cur.need(13, name))) for _ in range(n)
                )
        else:
            (n,) = _U16.unpack_from(buf, cur.need(2, name))
            start = cur.need(n, name)
            into[name] = _decode_stat_at(_Cursor(buf, start, start + n), self.dialect)


_Step = _Fixed | _Variable


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """How one class travels in one dialect. ``absent`` lists the .u fields a 9P2000
    body lacks, with the default a decode fills in and an encode insists on."""

    cls: type
    steps: tuple[_Step, ...]
    absent: tuple[tuple[str, Any], ...]

    def encode(self, obj: Any, out: list[bytes]) -> None:
        for name, default in self.absent:
            if getattr(obj, name) != default:
                raise LocalProtocolError(
                    f"{self.cls.__name__}.{name} is not carried by 9P2000; leave it {default!r}"
                )
        for step in self.steps:
            step.encode(obj, out)

    def decode(self, cur: _Cursor, into: _Values) -> None:
        for step in self.steps:
            step.decode(cur, into)
        for name, default in self.absent:
            into[name] = default


def _compile(cls: type, dialect: Dialect) -> _Plan:
    steps: list[_Step] = []
    run: list[tuple[str, Wire]] = []
    absent = []

    def flush() -> None:
        if run:
            fmt = struct.Struct("<" + "".join(_FORMAT[w] for _, w in run))
            names = tuple(n for n, _ in run)
            qid_at = tuple(i for i, (_, w) in enumerate(run) if w is Wire.QID)
            steps.append(_Fixed(fmt, names, qid_at))
            run.clear()

    for field in cls.FIELDS:
        if field.unix_extension and dialect is Dialect.BASE:
            absent.append((field.name, field.default))
        elif field.wire in _FORMAT:
            run.append((field.name, field.wire))
        else:
            flush()
            steps.append(_Variable(field.name, field.wire, dialect))
    flush()
    return _Plan(cls, tuple(steps), tuple(absent))


_PLANS: dict[tuple[type, Dialect], _Plan] = {
    (cls, dialect): _compile(cls, dialect)
    for cls in (*MESSAGE_CLASSES.values(), Stat, Dirent)
    for dialect in Dialect
}
_SETTERS = {cls: _setters(cls) for cls in (*MESSAGE_CLASSES.values(), Stat, Dirent)}
_BY_NUMBER: dict[int, type[Message]] = {int(t): cls for t, cls in MESSAGE_CLASSES.items()}
_MESSAGES = frozenset(MESSAGE_CLASSES.values())


# --- messages -----------------------------------------------------------------------------


def encode(msg: Message, dialect: Dialect, *, msize: int = MAX_FRAME) -> bytes:
    """The frame for ``msg`` in ``dialect``.

    Raises LocalProtocolError when the message is not part of the dialect, carries a .u
    field 9P2000 cannot say, or would exceed ``msize`` (pass the negotiated msize so an
    oversized reply is caught here rather than by the peer).
    """
    cls = type(msg)
    if cls not in _MESSAGES:
        raise LocalProtocolError(f"not a 9P message: {msg!r}")
    if dialect not in cls.DIALECTS:
        raise LocalProtocolError(f"{cls.__name__} is not part of {dialect.value}")
    out = [b""]
    _PLANS[cls, dialect].encode(msg, out)
    size = sum(map(len, out)) + HEADER_SIZE
    if size > msize:
        raise LocalProtocolError(f"{cls.__name__} of {size} bytes exceeds msize {msize}")
    out[0] = _HEADER.pack(size, cls.TYPE, msg.tag)
    return b"".join(out)


def decode(frame: bytes | bytearray | memoryview, dialect: Dialect, *,
           views: bool = False) -> Message:
    """The message in one whole frame (as FrameBuffer.next_frame returns it).

    Raises RemoteProtocolError for anything but exactly one valid message of ``dialect``;
    the error carries the frame's tag and type once the header is read.

    *views*: data fields (a Twrite's or Rread's bytes) are memoryviews of *frame* rather
    than copies: for a caller that owns the frame and never changes it afterwards (the
    server's large frames, spawn/ninep/receiver.py).
    """
    n = len(frame)
    if n < HEADER_SIZE:
        raise RemoteProtocolError(f"frame of {n} bytes is shorter than the 7-byte header")
    size, mtype, tag = _HEADER.unpack_from(frame)
    if size != n:
        raise RemoteProtocolError(
            f"size field says {size} bytes, frame has {n}", tag=tag, type=mtype
        )
    cls = _BY_NUMBER.get(mtype)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {mtype}", tag=tag, type=mtype)
    if dialect not in cls.DIALECTS:
        raise RemoteProtocolError(
            f"{cls.__name__} is not part of {dialect.value}", tag=tag, type=mtype
        )
    cur = _Cursor(memoryview(frame) if views else frame, HEADER_SIZE, n, views)
    values: _Values = {"tag": tag}
    try:
        _PLANS[cls, dialect].decode(cur, values)
        if cur.pos != n:
            raise RemoteProtocolError(f"{n - cur.pos} bytes after the last field")
    except RemoteProtocolError as e:
        raise RemoteProtocolError(f"{cls.__name__}: {e}", tag=tag, type=mtype) from None
    return _build(cls, values)


# --- framing ------------------------------------------------------------------------------


class FrameBuffer:
    """Splits a byte stream into whole 9P frames.

    Feed whatever the transport delivers to ``receive_data``; call ``next_frame`` until it
    returns None. The size field is judged as soon as its four bytes are here: a size
    under 7 or over ``max_size`` raises RemoteProtocolError before the body is awaited, so
    a peer cannot make us buffer a huge frame (callers drain after every receive_data,
    which bounds the buffer by one msize plus one read). After that error the stream has
    no framing left: every later ``next_frame`` raises again and data is dropped.

    ``max_size`` starts at the msize we offer and is lowered to the negotiated msize after
    Tversion.
    """

    def __init__(self, max_size: int = DEFAULT_MSIZE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._error: RemoteProtocolError | None = None
        self.max_size = max_size

    @property
    def max_size(self) -> int:
        return self._max_size

    @max_size.setter
    def max_size(self, value: int) -> None:
        if type(value) is not int or not HEADER_SIZE <= value <= MAX_FRAME:
            raise LocalProtocolError(f"max_size {value!r} is not in 7..{MAX_FRAME}")
        self._max_size = value

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a frame."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is None:
            self._buf += data

    def next_frame(self) -> bytes | None:
        """The next whole frame (size field included), or None until more data comes."""
        if self._error is not None:
            raise RemoteProtocolError(f"stream already broken: {self._error}")
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        (size,) = _U32.unpack_from(buf, pos)
        if size < HEADER_SIZE or size > self._max_size:
            self._error = RemoteProtocolError(
                f"frame size {size} is not in {HEADER_SIZE}..{self._max_size}"
            )
            self._buf = bytearray()
            self._pos = 0
            raise self._error
        end = pos + size
        if len(buf) < end:
            return None
        with memoryview(buf) as mv:  # one copy, not a slice and then a copy of it
            frame = bytes(mv[pos:end])
        if end == len(buf):
            buf.clear()
            self._pos = 0
        elif end > 65536 and end * 2 > len(buf):
            del buf[:end]  # compact now and then, not per frame
            self._pos = 0
        else:
            self._pos = end
        return frame


# --- directory data -----------------------------------------------------------------------


def _plan_for_stat(dialect: Dialect) -> _Plan:
    if dialect is Dialect.LINUX:
        raise LocalProtocolError("9P2000.L has no stat; directories are read with Treaddir")
    return _PLANS[Stat, dialect]


def encode_stat(stat: Stat, dialect: Dialect) -> bytes:
    """One stat as it travels: size[2] then the fields (the form of a directory read)."""
    if not isinstance(stat, Stat):
        raise LocalProtocolError(f"not a Stat: {stat!r}")
    out = [b""]
    _plan_for_stat(dialect).encode(stat, out)
    size = sum(map(len, out))
    if size > 0xFFFF:
        raise LocalProtocolError(f"stat of {size} bytes does not fit its size[2]")
    out[0] = _U16.pack(size)
    return b"".join(out)


def _decode_stat_at(cur: _Cursor, dialect: Dialect) -> Stat:
    """The stat at the cursor, which must fill [pos, end) exactly."""
    (size,) = _U16.unpack_from(cur.buf, cur.need(2, "stat size"))
    if size != cur.end - cur.pos:
        raise RemoteProtocolError(f"stat size {size}, but {cur.end - cur.pos} bytes hold it")
    values: _Values = {}
    _plan_for_stat(dialect).decode(cur, values)
    if cur.pos != cur.end:
        raise RemoteProtocolError(f"{cur.end - cur.pos} bytes after the stat's last field")
    return _build(Stat, values)


def pack_stats(stats: Iterable[Stat], dialect: Dialect) -> bytes:
    """Stats concatenated: the data of a 9P2000 directory read. A server must return
    whole entries only, so it packs with ``encode_stat`` one at a time against count."""
    return b"".join(encode_stat(s, dialect) for s in stats)


def unpack_stats(data: bytes | bytearray | memoryview, dialect: Dialect) -> list[Stat]:
    """Split the data of a 9P2000 directory read into stats; each one must be whole."""
    _plan_for_stat(dialect)
    cur = _Cursor(data, 0, len(data))
    out = []
    while cur.pos < cur.end:
        start = cur.pos
        (n,) = _U16.unpack_from(data, cur.need(2, "stat size"))
        cur.need(n, "stat")
        out.append(_decode_stat_at(_Cursor(data, start, cur.pos), dialect))
    return out


def encode_dirent(entry: Dirent) -> bytes:
    """One 9P2000.L directory entry: qid[13] offset[8] type[1] name[s]."""
    if not isinstance(entry, Dirent):
        raise LocalProtocolError(f"not a Dirent: {entry!r}")
    out: list[bytes] = []
    _PLANS[Dirent, Dialect.LINUX].encode(entry, out)
    return b"".join(out)


def pack_dirents(entries: Iterable[Dirent]) -> bytes:
    """Dirents concatenated: the data of an Rreaddir. As with stats, a server packs whole
    entries up to the Treaddir count, using ``encode_dirent``'s lengths."""
    return b"".join(encode_dirent(e) for e in entries)


def unpack_dirents(data: bytes | bytearray | memoryview) -> list[Dirent]:
    """Split Rreaddir data into Dirents; a partial entry at the end is an error."""
    plan = _PLANS[Dirent, Dialect.LINUX]
    cur = _Cursor(data, 0, len(data))
    out = []
    while cur.pos < cur.end:
        values: _Values = {}
        plan.decode(cur, values)
        out.append(_build(Dirent, values))
    return out
