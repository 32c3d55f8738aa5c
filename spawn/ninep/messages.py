"""9P messages as typed values: one frozen dataclass per T- and R-message of 9P2000,
9P2000.u and 9P2000.L, the records inside them (qid, stat, dirent), and the constants.

Why the fields are declared the way they are: every field is annotated with its wire shape
(``U32``, ``Str``, ``QidField`` ...) and declared in wire order, so this module is the
protocol's one table. The codec (``spawn.ninep.codec``) compiles its encoder and decoder
from these declarations, and each constructor validates ranges from the same declarations,
so a message that can be built can be sent, and the two never disagree.

Names are bytes. Every ``[s]`` field of the protocol (file names, paths, user names, the
version string, error strings) is ``bytes`` here, never ``str``: a Linux file name is any
byte string without ``/`` or NUL, and a server that decoded names as UTF-8 would lose or
refuse files that exist. Passing a ``str`` is refused (``LocalProtocolError``) rather than
silently encoded. The codec does not judge names (``/``, ``.``, ``..``, NUL): that is the
server's job, so a bad name gets an error reply for its request instead of a dropped
connection.

Dialect-only fields: the 9P2000.u extensions that sit at the end of a 9P2000 message
(``n_uname`` of Tauth/Tattach, ``errno`` of Rerror, ``extension`` of Tcreate, the four
.u fields of a stat) have a default meaning "not given" (``NONUNAME``, ``0``, ``b""``).
A 9P2000 decode fills in the default; a 9P2000 encode refuses a non-default value rather
than dropping information.
"""

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar, dataclass_transform

# --- errors -------------------------------------------------------------------------------


class ProtocolError(Exception):
    """Base of both 9P codec errors."""


class LocalProtocolError(ProtocolError):
    """We misused the API: a field out of range, a str where bytes belong, a message not in
    the dialect we encode for. A bug in the caller; never the peer's fault."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid 9P message in the negotiated dialect.

    ``tag`` and ``type`` are the offending frame's header fields when the header was read,
    so a server may answer that one request with an error instead of dropping the
    connection (it must drop it when ``tag`` is None: framing is lost).
    """

    def __init__(self, message: str, *, tag: int | None = None, type: int | None = None) -> None:
        super().__init__(message)
        self.tag = tag
        self.type = type


# --- dialects and message numbers ---------------------------------------------------------


class Dialect(enum.Enum):
    """The protocol variant negotiated by Tversion; the value is its version string."""

    BASE = "9P2000"  # Plan 9, plan9port
    UNIX = "9P2000.u"  # Unix extensions (numeric ids, symlinks/devices in stat)
    LINUX = "9P2000.L"  # Linux v9fs, QEMU, diod

    @property
    def wire(self) -> bytes:
        """The version string as it travels in Tversion/Rversion."""
        return self.value.encode("ascii")

    @classmethod
    def from_wire(cls, version: bytes) -> "Dialect | None":
        """The dialect named exactly by ``version``, or None (negotiation is the server's)."""
        for dialect in cls:
            if dialect.wire == version:
                return dialect
        return None


ALL_DIALECTS = frozenset(Dialect)
PLAN9_DIALECTS = frozenset({Dialect.BASE, Dialect.UNIX})
LINUX_ONLY = frozenset({Dialect.LINUX})


class MessageType(enum.IntEnum):
    """Message numbers, as in Linux include/net/9p/9p.h and diod's protocol.md.

    A reply is its request's number plus one. TERROR and TLERROR are reserved numbers that
    are never sent; the decoder refuses them like any unknown type.
    """

    TLERROR = 6
    RLERROR = 7
    TSTATFS = 8
    RSTATFS = 9
    TLOPEN = 12
    RLOPEN = 13
    TLCREATE = 14
    RLCREATE = 15
    TSYMLINK = 16
    RSYMLINK = 17
    TMKNOD = 18
    RMKNOD = 19
    TRENAME = 20
    RRENAME = 21
    TREADLINK = 22
    RREADLINK = 23
    TGETATTR = 24
    RGETATTR = 25
    TSETATTR = 26
    RSETATTR = 27
    TXATTRWALK = 30
    RXATTRWALK = 31
    TXATTRCREATE = 32
    RXATTRCREATE = 33
    TREADDIR = 40
    RREADDIR = 41
    TFSYNC = 50
    RFSYNC = 51
    TLOCK = 52
    RLOCK = 53
    TGETLOCK = 54
    RGETLOCK = 55
    TLINK = 70
    RLINK = 71
    TMKDIR = 72
    RMKDIR = 73
    TRENAMEAT = 74
    RRENAMEAT = 75
    TUNLINKAT = 76
    RUNLINKAT = 77
    TVERSION = 100
    RVERSION = 101
    TAUTH = 102
    RAUTH = 103
    TATTACH = 104
    RATTACH = 105
    TERROR = 106
    RERROR = 107
    TFLUSH = 108
    RFLUSH = 109
    TWALK = 110
    RWALK = 111
    TOPEN = 112
    ROPEN = 113
    TCREATE = 114
    RCREATE = 115
    TREAD = 116
    RREAD = 117
    TWRITE = 118
    RWRITE = 119
    TCLUNK = 120
    RCLUNK = 121
    TREMOVE = 122
    RREMOVE = 123
    TSTAT = 124
    RSTAT = 125
    TWSTAT = 126
    RWSTAT = 127


# --- constants ----------------------------------------------------------------------------

NOTAG = 0xFFFF  # the tag of Tversion/Rversion
NOFID = 0xFFFFFFFF  # "no fid": the afid of an attach without authentication
NONUNAME = 0xFFFFFFFF  # 9P2000.u/.L n_uname (and stat n_uid...) when not given
MAXWELEM = 16  # at most this many names in a Twalk, qids in an Rwalk
HEADER_SIZE = 7  # size[4] type[1] tag[2]
QID_SIZE = 13  # type[1] version[4] path[8]
IOHDRSZ = 24  # room for the Twrite/Rread header: iounit = msize - IOHDRSZ
READDIRHDRSZ = 24  # room for the Rreaddir header (Linux)
MAX_STRING = 0xFFFF  # a string is len[2] + bytes

# qid.type bits
QTDIR = 0x80
QTAPPEND = 0x40
QTEXCL = 0x20
QTMOUNT = 0x10
QTAUTH = 0x08
QTTMP = 0x04
QTSYMLINK = 0x02  # 9P2000.u
QTLINK = 0x01  # 9P2000.u
QTFILE = 0x00

# stat.mode / Tcreate.perm bits
DMDIR = 0x80000000
DMAPPEND = 0x40000000
DMEXCL = 0x20000000
DMMOUNT = 0x10000000
DMAUTH = 0x08000000
DMTMP = 0x04000000
DMSYMLINK = 0x02000000  # 9P2000.u
DMLINK = 0x01000000  # 9P2000.u
DMDEVICE = 0x00800000  # 9P2000.u
DMNAMEDPIPE = 0x00200000  # 9P2000.u
DMSOCKET = 0x00100000  # 9P2000.u
DMSETUID = 0x00080000  # 9P2000.u
DMSETGID = 0x00040000  # 9P2000.u
DMSETVTX = 0x00010000  # 9P2000.u
DMREAD = 0x4
DMWRITE = 0x2
DMEXEC = 0x1

# Topen/Tcreate mode (one byte on the wire)
OREAD = 0
OWRITE = 1
ORDWR = 2
OEXEC = 3
OTRUNC = 0x10
OCEXEC = 0x20  # close on exec (Linux calls it P9_OREXEC)
ORCLOSE = 0x40
OAPPEND = 0x80  # 9P2000.u

# 9P2000.L: Tunlinkat flags, Rreaddir dirent types (Linux d_type values)
AT_REMOVEDIR = 0x200
DT_UNKNOWN = 0
DT_FIFO = 1
DT_CHR = 2
DT_DIR = 4
DT_BLK = 6
DT_REG = 8
DT_LNK = 10
DT_SOCK = 12


class GetattrMask(enum.IntFlag):
    """Tgetattr.request_mask / Rgetattr.valid: which attributes are asked for / valid."""

    MODE = 0x00000001
    NLINK = 0x00000002
    UID = 0x00000004
    GID = 0x00000008
    RDEV = 0x00000010
    ATIME = 0x00000020
    MTIME = 0x00000040
    CTIME = 0x00000080
    INO = 0x00000100
    SIZE = 0x00000200
    BLOCKS = 0x00000400
    BTIME = 0x00000800
    GEN = 0x00001000
    DATA_VERSION = 0x00002000
    BASIC = 0x000007FF  # everything up to BLOCKS: what stat(2) returns
    ALL = 0x00003FFF


class SetattrMask(enum.IntFlag):
    """Tsetattr.valid: which attributes to set. A time bit without its ``*_SET`` bit means
    "set it to the server's current time"."""

    MODE = 0x00000001
    UID = 0x00000002
    GID = 0x00000004
    SIZE = 0x00000008
    ATIME = 0x00000010
    MTIME = 0x00000020
    CTIME = 0x00000040
    ATIME_SET = 0x00000080
    MTIME_SET = 0x00000100


class LockType(enum.IntEnum):
    """Tlock/Tgetlock/Rgetlock type (as fcntl's F_RDLCK, F_WRLCK, F_UNLCK)."""

    RDLCK = 0
    WRLCK = 1
    UNLCK = 2


class LockFlags(enum.IntFlag):
    """Tlock.flags."""

    BLOCK = 1  # the client retries while the answer is BLOCKED (F_SETLKW)
    RECLAIM = 2  # reserved


class LockStatus(enum.IntEnum):
    """Rlock.status."""

    SUCCESS = 0
    BLOCKED = 1
    ERROR = 2
    GRACE = 3


# The same values under the C names of include/net/9p/9p.h and diod's protocol.md, so that
# code reading like the references greps like them.
P9_GETATTR_MODE = GetattrMask.MODE
P9_GETATTR_NLINK = GetattrMask.NLINK
P9_GETATTR_UID = GetattrMask.UID
P9_GETATTR_GID = GetattrMask.GID
P9_GETATTR_RDEV = GetattrMask.RDEV
P9_GETATTR_ATIME = GetattrMask.ATIME
P9_GETATTR_MTIME = GetattrMask.MTIME
P9_GETATTR_CTIME = GetattrMask.CTIME
P9_GETATTR_INO = GetattrMask.INO
P9_GETATTR_SIZE = GetattrMask.SIZE
P9_GETATTR_BLOCKS = GetattrMask.BLOCKS
P9_GETATTR_BTIME = GetattrMask.BTIME
P9_GETATTR_GEN = GetattrMask.GEN
P9_GETATTR_DATA_VERSION = GetattrMask.DATA_VERSION
P9_GETATTR_BASIC = GetattrMask.BASIC
P9_GETATTR_ALL = GetattrMask.ALL
P9_SETATTR_MODE = SetattrMask.MODE
P9_SETATTR_UID = SetattrMask.UID
P9_SETATTR_GID = SetattrMask.GID
P9_SETATTR_SIZE = SetattrMask.SIZE
P9_SETATTR_ATIME = SetattrMask.ATIME
P9_SETATTR_MTIME = SetattrMask.MTIME
P9_SETATTR_CTIME = SetattrMask.CTIME
P9_SETATTR_ATIME_SET = SetattrMask.ATIME_SET
P9_SETATTR_MTIME_SET = SetattrMask.MTIME_SET
P9_LOCK_TYPE_RDLCK = LockType.RDLCK
P9_LOCK_TYPE_WRLCK = LockType.WRLCK
P9_LOCK_TYPE_UNLCK = LockType.UNLCK
P9_LOCK_FLAGS_BLOCK = LockFlags.BLOCK
P9_LOCK_FLAGS_RECLAIM = LockFlags.RECLAIM
P9_LOCK_SUCCESS = LockStatus.SUCCESS
P9_LOCK_BLOCKED = LockStatus.BLOCKED
P9_LOCK_ERROR = LockStatus.ERROR
P9_LOCK_GRACE = LockStatus.GRACE


# --- wire shapes of fields ----------------------------------------------------------------


class Wire(enum.Enum):
    """The wire shape of a field; the codec has one encoder and decoder per shape."""

    U8 = "u8"
    U16 = "u16"
    U32 = "u32"
    U64 = "u64"
    STR = "s"  # len[2] bytes
    QID = "qid"  # type[1] version[4] path[8]
    DATA = "data"  # count[4] bytes
    NAMES = "names"  # nwname[2] nwname*(wname[s])
    QIDS = "qids"  # nwqid[2] nwqid*(qid[13])
    STAT = "stat"  # n[2] stat[n], the stat starting with its own size[2]


class _UnixExtension:
    """Marks a field that is on the wire only in 9P2000.u and 9P2000.L."""

    def __repr__(self) -> str:
        return "UNIX_EXTENSION"


UNIX_EXTENSION = _UnixExtension()

U8 = Annotated[int, Wire.U8]
U16 = Annotated[int, Wire.U16]
U32 = Annotated[int, Wire.U32]
U64 = Annotated[int, Wire.U64]
Str = Annotated[bytes, Wire.STR]
Data = Annotated[bytes, Wire.DATA]
Names = Annotated[tuple[bytes, ...], Wire.NAMES]
ExtU32 = Annotated[int, Wire.U32, UNIX_EXTENSION]
ExtStr = Annotated[bytes, Wire.STR, UNIX_EXTENSION]

_INT_MAX = {Wire.U8: 0xFF, Wire.U16: 0xFFFF, Wire.U32: 0xFFFFFFFF, Wire.U64: (1 << 64) - 1}


@dataclass(frozen=True, slots=True)
class WireField:
    """One field of a record or message body, in wire order (the tag is not one)."""

    name: str
    wire: Wire
    unix_extension: bool
    default: Any  # dataclasses.MISSING when the field is required


def _fail(owner: str, name: str, why: str) -> LocalProtocolError:
    return LocalProtocolError(f"{owner}.{name}: {why}")


def _check_str(owner: str, name: str, value: object) -> None:
    if type(value) is not bytes:
        raise _fail(owner, name, f"must be bytes, not {type(value).__name__}")
    if len(value) > MAX_STRING:
        raise _fail(owner, name, f"{len(value)} bytes, more than a 9P string holds ({MAX_STRING})")


def _check_sequence(obj: object, field: WireField, item_type: type) -> None:
    owner = type(obj).__name__
    value = getattr(obj, field.name)
    if not isinstance(value, tuple | list):
        raise _fail(owner, field.name, f"must be a tuple, not {type(value).__name__}")
    if len(value) > MAXWELEM:
        raise _fail(owner, field.name, f"{len(value)} elements, more than {MAXWELEM}")
    for item in value:
        if item_type is bytes:
            _check_str(owner, field.name, item)
        elif not isinstance(item, item_type):
            raise _fail(owner, field.name, f"elements must be {item_type.__name__}")
    if type(value) is not tuple:  # keep the record hashable
        object.__setattr__(obj, field.name, tuple(value))


def _check_field(obj: object, field: WireField) -> None:
    value = getattr(obj, field.name)
    wire = field.wire
    limit = _INT_MAX.get(wire)
    if limit is not None:
        if type(value) is not int and (not isinstance(value, int) or isinstance(value, bool)):
            raise _fail(type(obj).__name__, field.name, f"must be an int, not {value!r}")
        if not 0 <= value <= limit:
            raise _fail(type(obj).__name__, field.name, f"{value} is not a {wire.value}")
    elif wire is Wire.STR:
        _check_str(type(obj).__name__, field.name, value)
    elif wire is Wire.DATA:
        if type(value) is not bytes:
            raise _fail(
                type(obj).__name__, field.name, f"must be bytes, not {type(value).__name__}"
            )
        if len(value) > _INT_MAX[Wire.U32]:
            raise _fail(type(obj).__name__, field.name, "longer than a u32 count")
    elif wire is Wire.QID:
        if not isinstance(value, Qid):
            raise _fail(type(obj).__name__, field.name, f"must be a Qid, not {value!r}")
    elif wire is Wire.STAT:
        if not isinstance(value, Stat):
            raise _fail(type(obj).__name__, field.name, f"must be a Stat, not {value!r}")
    elif wire is Wire.NAMES:
        _check_sequence(obj, field, bytes)
    else:
        _check_sequence(obj, field, Qid)


def _wire_fields(cls: type) -> tuple[WireField, ...]:
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "tag":
            continue
        meta = getattr(f.type, "__metadata__", ())
        wires = [m for m in meta if isinstance(m, Wire)]
        if len(wires) != 1:
            raise TypeError(f"{cls.__name__}.{f.name}: annotate with one wire shape")
        out.append(WireField(f.name, wires[0], UNIX_EXTENSION in meta, f.default))
    return tuple(out)


class _Record:
    """Validation shared by records and messages: every field against its wire shape.

    Integer fields take a fast path (a reply is built for every request a server
    answers); everything else, and any integer that is not a plain in-range int, goes
    through ``_check_field``, which accepts int subclasses (IntFlag) and explains refusals.
    """

    __slots__ = ()
    FIELDS: ClassVar[tuple[WireField, ...]] = ()
    _INTS: ClassVar[tuple[tuple[WireField, int], ...]] = ()
    _OTHERS: ClassVar[tuple[WireField, ...]] = ()

    def __post_init__(self) -> None:
        for field, limit in self._INTS:
            value = getattr(self, field.name)
            if type(value) is not int or value < 0 or value > limit:
                _check_field(self, field)
        for field in self._OTHERS:
            _check_field(self, field)


R = TypeVar("R", bound=type)


@dataclass_transform(kw_only_default=True, frozen_default=True)
def _record(cls: R) -> R:
    new = dataclass(frozen=True, slots=True, kw_only=True)(cls)
    new.FIELDS = _wire_fields(new)
    new._INTS = tuple((f, _INT_MAX[f.wire]) for f in new.FIELDS if f.wire in _INT_MAX)
    new._OTHERS = tuple(f for f in new.FIELDS if f.wire not in _INT_MAX)
    return new


# --- records ------------------------------------------------------------------------------


@_record
class Qid(_Record):
    """The server's identity of a file: type bits (QT*), version, and a unique path
    (grid stores the inode number here, stable across rename and respawn)."""

    type: U8
    version: U32
    path: U64


QidField = Annotated[Qid, Wire.QID]
Qids = Annotated[tuple[Qid, ...], Wire.QIDS]


@_record
class Stat(_Record):
    """A 9P2000 stat entry (stat(5)), with the 9P2000.u fields at the end.

    On the wire a stat starts with its own size[2]; the codec computes it. In Twstat,
    ``~0`` integers and empty strings mean "don't touch" (stat(5)).
    """

    type: U16
    dev: U32
    qid: QidField
    mode: U32
    atime: U32
    mtime: U32
    length: U64
    name: Str
    uid: Str
    gid: Str
    muid: Str
    extension: ExtStr = b""  # symlink target, "b 8 1" for devices ...
    n_uid: ExtU32 = NONUNAME
    n_gid: ExtU32 = NONUNAME
    n_muid: ExtU32 = NONUNAME


StatField = Annotated[Stat, Wire.STAT]


@_record
class Dirent(_Record):
    """One 9P2000.L directory entry in Rreaddir data. ``offset`` is the cookie to pass as
    the next Treaddir offset; ``type`` is a Linux d_type (DT_*), not a qid type."""

    qid: QidField
    offset: U64
    type: U8
    name: Str


# --- messages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Message(_Record):
    """Base of every 9P message: the tag, plus class constants the codec reads."""

    TYPE: ClassVar[MessageType]
    DIALECTS: ClassVar[frozenset[Dialect]]

    tag: U16

    def __post_init__(self) -> None:
        tag = self.tag
        if type(tag) is not int or not 0 <= tag <= 0xFFFF:
            raise _fail(type(self).__name__, "tag", f"{tag!r} is not a u16")
        _Record.__post_init__(self)


MESSAGE_CLASSES: dict[MessageType, type[Message]] = {}


@dataclass_transform(kw_only_default=True, frozen_default=True)
def _message(mtype: MessageType, dialects: frozenset[Dialect]) -> Callable[[R], R]:
    """Make ``cls`` a message dataclass of number ``mtype``, valid in ``dialects``."""

    def register(cls: R) -> R:
        new = _record(cls)
        new.TYPE = mtype
        new.DIALECTS = dialects
        if new.__name__.upper() != mtype.name:
            raise TypeError(f"{new.__name__} registered as {mtype.name}")
        MESSAGE_CLASSES[mtype] = new
        return new

    return register


# 9P2000 (intro(5)); the ones in every dialect first.


@_message(MessageType.TVERSION, ALL_DIALECTS)
class Tversion(Message):
    """Sent first with tag NOTAG: the client's msize and version string. One layout in
    every dialect, so decode it with any."""

    msize: U32
    version: Str


@_message(MessageType.RVERSION, ALL_DIALECTS)
class Rversion(Message):
    msize: U32
    version: Str


@_message(MessageType.TAUTH, ALL_DIALECTS)
class Tauth(Message):
    afid: U32
    uname: Str
    aname: Str
    n_uname: ExtU32 = NONUNAME


@_message(MessageType.RAUTH, ALL_DIALECTS)
class Rauth(Message):
    aqid: QidField


@_message(MessageType.TATTACH, ALL_DIALECTS)
class Tattach(Message):
    fid: U32
    afid: U32
    uname: Str
    aname: Str
    n_uname: ExtU32 = NONUNAME


@_message(MessageType.RATTACH, ALL_DIALECTS)
class Rattach(Message):
    qid: QidField


@_message(MessageType.RERROR, PLAN9_DIALECTS)
class Rerror(Message):
    """The 9P2000 error reply: a string, and in 9P2000.u an errno (0: none given)."""

    ename: Str
    errno: ExtU32 = 0


@_message(MessageType.TFLUSH, ALL_DIALECTS)
class Tflush(Message):
    oldtag: U16


@_message(MessageType.RFLUSH, ALL_DIALECTS)
class Rflush(Message):
    pass


@_message(MessageType.TWALK, ALL_DIALECTS)
class Twalk(Message):
    """Walk ``wnames`` (at most MAXWELEM) from fid; newfid names the result. No names
    clones the fid."""

    fid: U32
    newfid: U32
    wnames: Names = ()


@_message(MessageType.RWALK, ALL_DIALECTS)
class Rwalk(Message):
    wqids: Qids = ()


@_message(MessageType.TOPEN, PLAN9_DIALECTS)
class Topen(Message):
    fid: U32
    mode: U8


@_message(MessageType.ROPEN, PLAN9_DIALECTS)
class Ropen(Message):
    qid: QidField
    iounit: U32


@_message(MessageType.TCREATE, PLAN9_DIALECTS)
class Tcreate(Message):
    fid: U32
    name: Str
    perm: U32
    mode: U8
    extension: ExtStr = b""


@_message(MessageType.RCREATE, PLAN9_DIALECTS)
class Rcreate(Message):
    qid: QidField
    iounit: U32


@_message(MessageType.TREAD, ALL_DIALECTS)
class Tread(Message):
    fid: U32
    offset: U64
    count: U32


@_message(MessageType.RREAD, ALL_DIALECTS)
class Rread(Message):
    """``data`` travels as count[4] data[count]; the count is ``len(data)``."""

    data: Data


@_message(MessageType.TWRITE, ALL_DIALECTS)
class Twrite(Message):
    fid: U32
    offset: U64
    data: Data


@_message(MessageType.RWRITE, ALL_DIALECTS)
class Rwrite(Message):
    count: U32


@_message(MessageType.TCLUNK, ALL_DIALECTS)
class Tclunk(Message):
    fid: U32


@_message(MessageType.RCLUNK, ALL_DIALECTS)
class Rclunk(Message):
    pass


@_message(MessageType.TREMOVE, ALL_DIALECTS)
class Tremove(Message):
    fid: U32


@_message(MessageType.RREMOVE, ALL_DIALECTS)
class Rremove(Message):
    pass


@_message(MessageType.TSTAT, PLAN9_DIALECTS)
class Tstat(Message):
    fid: U32


@_message(MessageType.RSTAT, PLAN9_DIALECTS)
class Rstat(Message):
    stat: StatField


@_message(MessageType.TWSTAT, PLAN9_DIALECTS)
class Twstat(Message):
    fid: U32
    stat: StatField


@_message(MessageType.RWSTAT, PLAN9_DIALECTS)
class Rwstat(Message):
    pass


# 9P2000.L (diod's protocol.md).


@_message(MessageType.RLERROR, LINUX_ONLY)
class Rlerror(Message):
    """The 9P2000.L error reply: a Linux errno."""

    ecode: U32


@_message(MessageType.TSTATFS, LINUX_ONLY)
class Tstatfs(Message):
    fid: U32


@_message(MessageType.RSTATFS, LINUX_ONLY)
class Rstatfs(Message):
    type: U32
    bsize: U32
    blocks: U64
    bfree: U64
    bavail: U64
    files: U64
    ffree: U64
    fsid: U64
    namelen: U32


@_message(MessageType.TLOPEN, LINUX_ONLY)
class Tlopen(Message):
    fid: U32
    flags: U32  # Linux open(2) flags


@_message(MessageType.RLOPEN, LINUX_ONLY)
class Rlopen(Message):
    qid: QidField
    iounit: U32


@_message(MessageType.TLCREATE, LINUX_ONLY)
class Tlcreate(Message):
    fid: U32
    name: Str
    flags: U32
    mode: U32
    gid: U32


@_message(MessageType.RLCREATE, LINUX_ONLY)
class Rlcreate(Message):
    qid: QidField
    iounit: U32


@_message(MessageType.TSYMLINK, LINUX_ONLY)
class Tsymlink(Message):
    fid: U32
    name: Str
    symtgt: Str
    gid: U32


@_message(MessageType.RSYMLINK, LINUX_ONLY)
class Rsymlink(Message):
    qid: QidField


@_message(MessageType.TMKNOD, LINUX_ONLY)
class Tmknod(Message):
    dfid: U32
    name: Str
    mode: U32
    major: U32
    minor: U32
    gid: U32


@_message(MessageType.RMKNOD, LINUX_ONLY)
class Rmknod(Message):
    qid: QidField


@_message(MessageType.TRENAME, LINUX_ONLY)
class Trename(Message):
    fid: U32
    dfid: U32
    name: Str


@_message(MessageType.RRENAME, LINUX_ONLY)
class Rrename(Message):
    pass


@_message(MessageType.TREADLINK, LINUX_ONLY)
class Treadlink(Message):
    fid: U32


@_message(MessageType.RREADLINK, LINUX_ONLY)
class Rreadlink(Message):
    target: Str


@_message(MessageType.TGETATTR, LINUX_ONLY)
class Tgetattr(Message):
    fid: U32
    request_mask: U64  # GetattrMask


@_message(MessageType.RGETATTR, LINUX_ONLY)
class Rgetattr(Message):
    """stat(2) with nanosecond times; st_ino is ``qid.path``. ``valid`` (GetattrMask) says
    which fields mean something; btime, gen and data_version are reserved (0)."""

    valid: U64
    qid: QidField
    mode: U32
    uid: U32
    gid: U32
    nlink: U64
    rdev: U64
    size: U64
    blksize: U64
    blocks: U64
    atime_sec: U64
    atime_nsec: U64
    mtime_sec: U64
    mtime_nsec: U64
    ctime_sec: U64
    ctime_nsec: U64
    btime_sec: U64 = 0
    btime_nsec: U64 = 0
    gen: U64 = 0
    data_version: U64 = 0


@_message(MessageType.TSETATTR, LINUX_ONLY)
class Tsetattr(Message):
    """Set the attributes selected by ``valid`` (SetattrMask); the others are ignored."""

    fid: U32
    valid: U32
    mode: U32
    uid: U32
    gid: U32
    size: U64
    atime_sec: U64
    atime_nsec: U64
    mtime_sec: U64
    mtime_nsec: U64


@_message(MessageType.RSETATTR, LINUX_ONLY)
class Rsetattr(Message):
    pass


@_message(MessageType.TXATTRWALK, LINUX_ONLY)
class Txattrwalk(Message):
    """newfid reads the value of xattr ``name``, or the list of names when ``name`` is
    empty."""

    fid: U32
    newfid: U32
    name: Str


@_message(MessageType.RXATTRWALK, LINUX_ONLY)
class Rxattrwalk(Message):
    size: U64


@_message(MessageType.TXATTRCREATE, LINUX_ONLY)
class Txattrcreate(Message):
    fid: U32
    name: Str
    attr_size: U64
    flags: U32  # setxattr(2) XATTR_CREATE / XATTR_REPLACE


@_message(MessageType.RXATTRCREATE, LINUX_ONLY)
class Rxattrcreate(Message):
    pass


@_message(MessageType.TREADDIR, LINUX_ONLY)
class Treaddir(Message):
    fid: U32
    offset: U64
    count: U32


@_message(MessageType.RREADDIR, LINUX_ONLY)
class Rreaddir(Message):
    """``data`` is packed Dirents (codec.pack_dirents); count[4] is ``len(data)``."""

    data: Data


@_message(MessageType.TFSYNC, LINUX_ONLY)
class Tfsync(Message):
    fid: U32
    datasync: U32


@_message(MessageType.RFSYNC, LINUX_ONLY)
class Rfsync(Message):
    pass


@_message(MessageType.TLOCK, LINUX_ONLY)
class Tlock(Message):
    fid: U32
    type: U8  # LockType
    flags: U32  # LockFlags
    start: U64
    length: U64
    proc_id: U32
    client_id: Str


@_message(MessageType.RLOCK, LINUX_ONLY)
class Rlock(Message):
    status: U8  # LockStatus


@_message(MessageType.TGETLOCK, LINUX_ONLY)
class Tgetlock(Message):
    fid: U32
    type: U8
    start: U64
    length: U64
    proc_id: U32
    client_id: Str


@_message(MessageType.RGETLOCK, LINUX_ONLY)
class Rgetlock(Message):
    type: U8
    start: U64
    length: U64
    proc_id: U32
    client_id: Str


@_message(MessageType.TLINK, LINUX_ONLY)
class Tlink(Message):
    dfid: U32
    fid: U32
    name: Str


@_message(MessageType.RLINK, LINUX_ONLY)
class Rlink(Message):
    pass


@_message(MessageType.TMKDIR, LINUX_ONLY)
class Tmkdir(Message):
    dfid: U32
    name: Str
    mode: U32
    gid: U32


@_message(MessageType.RMKDIR, LINUX_ONLY)
class Rmkdir(Message):
    qid: QidField


@_message(MessageType.TRENAMEAT, LINUX_ONLY)
class Trenameat(Message):
    olddirfid: U32
    oldname: Str
    newdirfid: U32
    newname: Str


@_message(MessageType.RRENAMEAT, LINUX_ONLY)
class Rrenameat(Message):
    pass


@_message(MessageType.TUNLINKAT, LINUX_ONLY)
class Tunlinkat(Message):
    dirfid: U32
    name: Str
    flags: U32  # AT_REMOVEDIR


@_message(MessageType.RUNLINKAT, LINUX_ONLY)
class Runlinkat(Message):
    pass


def messages_of(dialect: Dialect) -> tuple[type[Message], ...]:
    """Every message class valid in ``dialect``, in message-number order."""
    return tuple(cls for _, cls in sorted(MESSAGE_CLASSES.items()) if dialect in cls.DIALECTS)
