"""The 9P codec against hand-made byte vectors for every message of every dialect, and
its framing, limits and error classes, with hypothesis fuzzing and round trips.

The vectors below were written field by field from intro(5), the 9P2000.u draft and diod's
protocol.md (little-endian integers, len[2] strings), not produced by the encoder; one
test checks their size fields against their lengths on their own.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spawn.ninep
from spawn.ninep import messages as m
from spawn.ninep.codec import (
    FrameBuffer,
    decode,
    encode,
    encode_dirent,
    encode_stat,
    pack_dirents,
    pack_stats,
    unpack_dirents,
    unpack_stats,
)
from spawn.ninep.messages import (
    NOFID,
    NONUNAME,
    NOTAG,
    Dialect,
    Dirent,
    LocalProtocolError,
    MessageType,
    Qid,
    RemoteProtocolError,
    Stat,
    Wire,
    messages_of,
)

BASE, UNIX, LINUX = Dialect.BASE, Dialect.UNIX, Dialect.LINUX
ALL = (BASE, UNIX, LINUX)
PLAN9 = (BASE, UNIX)

Q1 = Qid(type=m.QTDIR, version=1, path=2)  # 80 01000000 0200000000000000
Q2 = Qid(type=m.QTFILE, version=0, path=0x1122334455667788)  # 00 00000000 8877665544332211
Q1_HEX = "80 01000000 0200000000000000"
Q2_HEX = "00 00000000 8877665544332211"

STAT_FIELDS = dict(
    type=0,
    dev=0,
    qid=Q1,
    mode=m.DMDIR | 0o755,
    atime=1_700_000_000,
    mtime=1_700_000_001,
    length=0,
    name=b"glenda",
    uid=b"glenda",
    gid=b"sys",
    muid=b"",
)
STAT = Stat(**STAT_FIELDS)
STAT_U = Stat(**STAT_FIELDS, extension=b"", n_uid=1000, n_gid=3, n_muid=NONUNAME)
# type dev qid mode atime mtime length name uid gid muid
STAT_HEX = (
    "0000 00000000 " + Q1_HEX + " ed010080 00f15365 01f15365 0000000000000000"
    " 0600 676c656e6461 0600 676c656e6461 0300 737973 0000"
)
WSTAT_FIELDS = dict(
    type=0xFFFF,
    dev=0xFFFFFFFF,
    qid=Qid(type=0xFF, version=0xFFFFFFFF, path=(1 << 64) - 1),
    mode=0xFFFFFFFF,
    atime=0xFFFFFFFF,
    mtime=0xFFFFFFFF,
    length=(1 << 64) - 1,
    name=b"renamed",
    uid=b"",
    gid=b"",
    muid=b"",
)
WSTAT_HEX = (
    "ffff ffffffff ff ffffffff ffffffffffffffff ffffffff ffffffff ffffffff"
    " ffffffffffffffff 0700 72656e616d6564 0000 0000 0000"
)
D1 = Dirent(qid=Q1, offset=1, type=m.DT_DIR, name=b".")
D2 = Dirent(qid=Q2, offset=2, type=m.DT_REG, name=b"f\xff")  # not UTF-8, on purpose
D1_HEX = Q1_HEX + " 0100000000000000 04 0100 2e"
D2_HEX = Q2_HEX + " 0200000000000000 08 0200 66ff"
T = 1_700_000_000  # 00f15365 as u32, 00f1536500000000 as u64

# (dialects, message, frame as hex: size[4] type[1] tag[2] body)
VECTORS: list[tuple[tuple[Dialect, ...], m.Message, str]] = [
    # --- 9P2000 core, the same bytes in every dialect ---
    (
        ALL,
        m.Tversion(tag=NOTAG, msize=8192, version=b"9P2000"),
        "13000000 64 ffff 00200000 0600 395032303030",
    ),
    (
        ALL,
        m.Rversion(tag=NOTAG, msize=8192, version=b"9P2000"),
        "13000000 65 ffff 00200000 0600 395032303030",
    ),
    (
        ALL,
        m.Rauth(tag=1, aqid=Qid(type=m.QTAUTH, version=0, path=7)),
        "14000000 67 0100 08 00000000 0700000000000000",
    ),
    (ALL, m.Rattach(tag=1, qid=Q1), "14000000 69 0100 " + Q1_HEX),
    (ALL, m.Tflush(tag=2, oldtag=1), "09000000 6c 0200 0100"),
    (ALL, m.Rflush(tag=2), "07000000 6d 0200"),
    (
        ALL,
        m.Twalk(tag=1, fid=1, newfid=2, wnames=(b"usr", b"glenda")),
        "1e000000 6e 0100 01000000 02000000 0200 0300 757372 0600 676c656e6461",
    ),
    (ALL, m.Rwalk(tag=1, wqids=(Q1, Q2)), "23000000 6f 0100 0200 " + Q1_HEX + " " + Q2_HEX),
    (
        ALL,
        m.Tread(tag=1, fid=2, offset=1 << 32, count=8168),
        "17000000 74 0100 02000000 0000000001000000 e81f0000",
    ),
    (ALL, m.Rread(tag=1, data=b"hello\n"), "11000000 75 0100 06000000 68656c6c6f0a"),
    (
        ALL,
        m.Twrite(tag=1, fid=2, offset=6, data=b"hello\n"),
        "1d000000 76 0100 02000000 0600000000000000 06000000 68656c6c6f0a",
    ),
    (ALL, m.Rwrite(tag=1, count=6), "0b000000 77 0100 06000000"),
    (ALL, m.Tclunk(tag=1, fid=2), "0b000000 78 0100 02000000"),
    (ALL, m.Rclunk(tag=1), "07000000 79 0100"),
    (ALL, m.Tremove(tag=1, fid=2), "0b000000 7a 0100 02000000"),
    (ALL, m.Rremove(tag=1), "07000000 7b 0100"),
    # --- 9P2000 and 9P2000.u only ---
    (PLAN9, m.Topen(tag=1, fid=2, mode=m.ORDWR | m.OTRUNC), "0c000000 70 0100 02000000 12"),
    (PLAN9, m.Ropen(tag=1, qid=Q2, iounit=8168), "18000000 71 0100 " + Q2_HEX + " e81f0000"),
    (PLAN9, m.Rcreate(tag=1, qid=Q2, iounit=0), "18000000 73 0100 " + Q2_HEX + " 00000000"),
    (PLAN9, m.Tstat(tag=1, fid=1), "0b000000 7c 0100 01000000"),
    (PLAN9, m.Rwstat(tag=1), "07000000 7f 0100"),
    # --- where 9P2000 and the .u layout (also .L's, for auth/attach) differ ---
    (
        (BASE,),
        m.Tauth(tag=1, afid=5, uname=b"glenda", aname=b""),
        "15000000 66 0100 05000000 0600 676c656e6461 0000",
    ),
    (
        (UNIX, LINUX),
        m.Tauth(tag=1, afid=5, uname=b"glenda", aname=b"", n_uname=1000),
        "19000000 66 0100 05000000 0600 676c656e6461 0000 e8030000",
    ),
    (
        (BASE,),
        m.Tattach(tag=1, fid=1, afid=NOFID, uname=b"glenda", aname=b"main"),
        "1d000000 68 0100 01000000 ffffffff 0600 676c656e6461 0400 6d61696e",
    ),
    (
        (UNIX, LINUX),
        m.Tattach(tag=1, fid=1, afid=NOFID, uname=b"glenda", aname=b"main", n_uname=1000),
        "21000000 68 0100 01000000 ffffffff 0600 676c656e6461 0400 6d61696e e8030000",
    ),
    (
        (BASE,),
        m.Rerror(tag=1, ename=b"file does not exist"),
        "1c000000 6b 0100 1300 66696c6520646f6573206e6f74206578697374",
    ),
    (
        (UNIX,),
        m.Rerror(tag=1, ename=b"file does not exist", errno=2),
        "20000000 6b 0100 1300 66696c6520646f6573206e6f74206578697374 02000000",
    ),
    (
        (BASE,),
        m.Tcreate(tag=1, fid=2, name=b"new", perm=0o644, mode=m.OWRITE),
        "15000000 72 0100 02000000 0300 6e6577 a4010000 01",
    ),
    (
        (UNIX,),
        m.Tcreate(
            tag=1, fid=2, name=b"link", perm=m.DMSYMLINK | 0o777, mode=m.OREAD, extension=b"target"
        ),
        "1e000000 72 0100 02000000 0400 6c696e6b ff010002 00 0600 746172676574",
    ),
    ((BASE,), m.Rstat(tag=1, stat=STAT), "49000000 7d 0100 4000 3e00 " + STAT_HEX),
    (
        (UNIX,),
        m.Rstat(tag=1, stat=STAT_U),
        "57000000 7d 0100 4e00 4c00 " + STAT_HEX + " 0000 e8030000 03000000 ffffffff",
    ),
    (
        (BASE,),
        m.Twstat(tag=1, fid=2, stat=Stat(**WSTAT_FIELDS)),
        "45000000 7e 0100 02000000 3800 3600 " + WSTAT_HEX,
    ),
    (
        (UNIX,),
        m.Twstat(tag=1, fid=2, stat=Stat(**WSTAT_FIELDS)),  # .u fields left at "don't touch"
        "53000000 7e 0100 02000000 4600 4400 " + WSTAT_HEX + " 0000 ffffffff ffffffff ffffffff",
    ),
    # --- 9P2000.L ---
    ((LINUX,), m.Rlerror(tag=1, ecode=2), "0b000000 07 0100 02000000"),
    ((LINUX,), m.Tstatfs(tag=1, fid=1), "0b000000 08 0100 01000000"),
    (
        (LINUX,),
        m.Rstatfs(
            tag=1,
            type=0x01021997,
            bsize=4096,
            blocks=1000,
            bfree=500,
            bavail=400,
            files=100,
            ffree=50,
            fsid=0x1234,
            namelen=255,
        ),
        "43000000 09 0100 97190201 00100000 e803000000000000 f401000000000000"
        " 9001000000000000 6400000000000000 3200000000000000 3412000000000000 ff000000",
    ),
    ((LINUX,), m.Tlopen(tag=1, fid=2, flags=0x8002), "0f000000 0c 0100 02000000 02800000"),
    ((LINUX,), m.Rlopen(tag=1, qid=Q2, iounit=0), "18000000 0d 0100 " + Q2_HEX + " 00000000"),
    (
        (LINUX,),
        m.Tlcreate(tag=1, fid=2, name=b"foo", flags=0x8241, mode=0o100644, gid=500),
        "1c000000 0e 0100 02000000 0300 666f6f 41820000 a4810000 f4010000",
    ),
    ((LINUX,), m.Rlcreate(tag=1, qid=Q2, iounit=4096), "18000000 0f 0100 " + Q2_HEX + " 00100000"),
    (
        (LINUX,),
        m.Tsymlink(tag=1, fid=1, name=b"ln", symtgt=b"/tmp/x", gid=500),
        "1b000000 10 0100 01000000 0200 6c6e 0600 2f746d702f78 f4010000",
    ),
    (
        (LINUX,),
        m.Rsymlink(tag=1, qid=Qid(type=m.QTSYMLINK, version=0, path=9)),
        "14000000 11 0100 02 00000000 0900000000000000",
    ),
    (
        (LINUX,),
        m.Tmknod(tag=1, dfid=1, name=b"null", mode=0o20666, major=1, minor=3, gid=0),
        "21000000 12 0100 01000000 0400 6e756c6c b6210000 01000000 03000000 00000000",
    ),
    (
        (LINUX,),
        m.Rmknod(tag=1, qid=Qid(type=0, version=0, path=10)),
        "14000000 13 0100 00 00000000 0a00000000000000",
    ),
    (
        (LINUX,),
        m.Trename(tag=1, fid=3, dfid=1, name=b"b"),
        "12000000 14 0100 03000000 01000000 0100 62",
    ),
    ((LINUX,), m.Rrename(tag=1), "07000000 15 0100"),
    ((LINUX,), m.Treadlink(tag=1, fid=4), "0b000000 16 0100 04000000"),
    ((LINUX,), m.Rreadlink(tag=1, target=b"/tmp/x"), "0f000000 17 0100 0600 2f746d702f78"),
    (
        (LINUX,),
        m.Tgetattr(tag=1, fid=1, request_mask=m.GetattrMask.BASIC),
        "13000000 18 0100 01000000 ff07000000000000",
    ),
    (
        (LINUX,),
        m.Rgetattr(
            tag=1,
            valid=m.P9_GETATTR_BASIC,
            qid=Q1,
            mode=0o40755,
            uid=500,
            gid=500,
            nlink=2,
            rdev=0,
            size=4096,
            blksize=4096,
            blocks=8,
            atime_sec=T,
            atime_nsec=1,
            mtime_sec=T,
            mtime_nsec=2,
            ctime_sec=T,
            ctime_nsec=3,
        ),
        "a0000000 19 0100 ff07000000000000 " + Q1_HEX + " ed410000 f4010000 f4010000"
        " 0200000000000000 0000000000000000 0010000000000000 0010000000000000 0800000000000000"
        " 00f1536500000000 0100000000000000 00f1536500000000 0200000000000000"
        " 00f1536500000000 0300000000000000"
        " 0000000000000000 0000000000000000 0000000000000000 0000000000000000",
    ),
    (
        (LINUX,),
        m.Tsetattr(
            tag=1,
            fid=2,
            valid=m.SetattrMask.MODE | m.SetattrMask.CTIME,
            mode=0o40000,
            uid=1,
            gid=2,
            size=3,
            atime_sec=4,
            atime_nsec=5,
            mtime_sec=6,
            mtime_nsec=7,
        ),
        "43000000 1a 0100 02000000 41000000 00400000 01000000 02000000 0300000000000000"
        " 0400000000000000 0500000000000000 0600000000000000 0700000000000000",
    ),
    ((LINUX,), m.Rsetattr(tag=1), "07000000 1b 0100"),
    (
        (LINUX,),
        m.Txattrwalk(tag=1, fid=1, newfid=5, name=b"user.a"),
        "17000000 1e 0100 01000000 05000000 0600 757365722e61",
    ),
    ((LINUX,), m.Rxattrwalk(tag=1, size=11), "0f000000 1f 0100 0b00000000000000"),
    (
        (LINUX,),
        m.Txattrcreate(tag=1, fid=5, name=b"user.a", attr_size=3, flags=1),
        "1f000000 20 0100 05000000 0600 757365722e61 0300000000000000 01000000",
    ),
    ((LINUX,), m.Rxattrcreate(tag=1), "07000000 21 0100"),
    (
        (LINUX,),
        m.Treaddir(tag=1, fid=2, offset=0, count=65488),
        "17000000 28 0100 02000000 0000000000000000 d0ff0000",
    ),
    (
        (LINUX,),
        m.Rreaddir(tag=1, data=bytes.fromhex(D1_HEX + D2_HEX)),
        "3e000000 29 0100 33000000 " + D1_HEX + " " + D2_HEX,
    ),
    ((LINUX,), m.Tfsync(tag=1, fid=2, datasync=1), "0f000000 32 0100 02000000 01000000"),
    ((LINUX,), m.Rfsync(tag=1), "07000000 33 0100"),
    (
        (LINUX,),
        m.Tlock(
            tag=1,
            fid=2,
            type=m.LockType.WRLCK,
            flags=m.LockFlags.BLOCK,
            start=100,
            length=10,
            proc_id=1234,
            client_id=b"host",
        ),
        "2a000000 34 0100 02000000 01 01000000 6400000000000000 0a00000000000000"
        " d2040000 0400 686f7374",
    ),
    ((LINUX,), m.Rlock(tag=1, status=m.P9_LOCK_BLOCKED), "08000000 35 0100 01"),
    (
        (LINUX,),
        m.Tgetlock(
            tag=1,
            fid=2,
            type=m.LockType.RDLCK,
            start=100,
            length=10,
            proc_id=1234,
            client_id=b"host",
        ),
        "26000000 36 0100 02000000 00 6400000000000000 0a00000000000000 d2040000 0400 686f7374",
    ),
    (
        (LINUX,),
        m.Rgetlock(
            tag=1, type=m.LockType.UNLCK, start=100, length=10, proc_id=1234, client_id=b"host"
        ),
        "22000000 37 0100 02 6400000000000000 0a00000000000000 d2040000 0400 686f7374",
    ),
    (
        (LINUX,),
        m.Tlink(tag=1, dfid=1, fid=3, name=b"hard"),
        "15000000 46 0100 01000000 03000000 0400 68617264",
    ),
    ((LINUX,), m.Rlink(tag=1), "07000000 47 0100"),
    (
        (LINUX,),
        m.Tmkdir(tag=1, dfid=1, name=b"newdir", mode=0o40755, gid=500),
        "1b000000 48 0100 01000000 0600 6e6577646972 ed410000 f4010000",
    ),
    ((LINUX,), m.Rmkdir(tag=1, qid=Q1), "14000000 49 0100 " + Q1_HEX),
    (
        (LINUX,),
        m.Trenameat(tag=1, olddirfid=1, oldname=b"a", newdirfid=6, newname=b"bb"),
        "16000000 4a 0100 01000000 0100 61 06000000 0200 6262",
    ),
    ((LINUX,), m.Rrenameat(tag=1), "07000000 4b 0100"),
    (
        (LINUX,),
        m.Tunlinkat(tag=1, dirfid=1, name=b"newdir", flags=m.AT_REMOVEDIR),
        "17000000 4c 0100 01000000 0600 6e6577646972 00020000",
    ),
    ((LINUX,), m.Runlinkat(tag=1), "07000000 4d 0100"),
]

CASES = [
    pytest.param(msg, dialect, bytes.fromhex(hexstr), id=f"{dialect.value}-{type(msg).__name__}")
    for dialects, msg, hexstr in VECTORS
    for dialect in dialects
]


# --- the vectors ----------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ALL, ids=lambda d: d.value)
def test_vectors_cover_every_message_of_every_dialect(dialect):
    covered = [type(msg) for dialects, msg, _ in VECTORS if dialect in dialects]
    assert sorted(c.__name__ for c in covered) == sorted(c.__name__ for c in messages_of(dialect))
    assert len(covered) == {BASE: 27, UNIX: 27, LINUX: 57}[dialect]


@pytest.mark.parametrize(("msg", "dialect", "frame"), CASES)
def test_vector_is_self_consistent(msg, dialect, frame):
    """Checks the hand-written bytes alone: size field, type number, tag."""
    assert int.from_bytes(frame[:4], "little") == len(frame)
    assert frame[4] == msg.TYPE
    assert int.from_bytes(frame[5:7], "little") == msg.tag


@pytest.mark.parametrize(("msg", "dialect", "frame"), CASES)
def test_encode_gives_the_vector(msg, dialect, frame):
    assert encode(msg, dialect) == frame


@pytest.mark.parametrize(("msg", "dialect", "frame"), CASES)
def test_decode_gives_the_message(msg, dialect, frame):
    decoded = decode(frame, dialect)
    assert type(decoded) is type(msg)
    assert decoded == msg
    assert dataclasses.replace(decoded) == msg  # what decode builds passes the constructor
    assert decode(memoryview(bytearray(frame)), dialect) == msg


@pytest.mark.parametrize(("msg", "dialect", "frame"), CASES)
def test_truncated_and_overlong_bodies_are_remote_errors(msg, dialect, frame):
    def resized(body: bytes) -> bytes:
        return (7 + len(body)).to_bytes(4, "little") + frame[4:7] + body

    body = frame[7:]
    if body:
        with pytest.raises(RemoteProtocolError) as e:
            decode(resized(body[:-1]), dialect)
        assert (e.value.tag, e.value.type) == (msg.tag, msg.TYPE)
    with pytest.raises(RemoteProtocolError, match="after the last field"):
        decode(resized(body + b"\0"), dialect)
    with pytest.raises(RemoteProtocolError, match="size field"):
        decode(frame + b"\0", dialect)  # size field no longer matches the frame


# --- dialects -------------------------------------------------------------------------------


LINUX_ONLY_CASES = [c for c in CASES if type(c.values[0]).DIALECTS == m.LINUX_ONLY]


@pytest.mark.parametrize("dialect", PLAN9, ids=lambda d: d.value)
@pytest.mark.parametrize(("msg", "_", "frame"), LINUX_ONLY_CASES)
def test_linux_messages_refused_in_plan9_dialects(msg, _, frame, dialect):
    with pytest.raises(RemoteProtocolError, match="not part of"):
        decode(frame, dialect)
    with pytest.raises(LocalProtocolError, match="not part of"):
        encode(msg, dialect)


def test_plan9_only_messages_refused_in_linux():
    for msg in (m.Rerror(tag=1, ename=b"x"), m.Topen(tag=1, fid=1, mode=0), m.Tstat(tag=1, fid=1)):
        with pytest.raises(LocalProtocolError):
            encode(msg, LINUX)
        with pytest.raises(RemoteProtocolError, match="not part of"):
            decode(encode(msg, BASE), LINUX)


def test_unix_fields_are_not_silently_dropped_in_9p2000():
    for msg in (
        m.Tattach(tag=1, fid=1, afid=NOFID, uname=b"u", aname=b"", n_uname=0),
        m.Tauth(tag=1, afid=1, uname=b"u", aname=b"", n_uname=5),
        m.Rerror(tag=1, ename=b"no", errno=2),
        m.Tcreate(tag=1, fid=1, name=b"l", perm=m.DMSYMLINK, mode=0, extension=b"t"),
        m.Rstat(tag=1, stat=STAT_U),
    ):
        with pytest.raises(LocalProtocolError, match="not carried by 9P2000"):
            encode(msg, BASE)
        encode(msg, UNIX)


def test_unix_layout_is_not_9p2000_layout():
    unix = encode(m.Tattach(tag=1, fid=1, afid=NOFID, uname=b"u", aname=b""), UNIX)
    with pytest.raises(RemoteProtocolError, match="after the last field"):
        decode(unix, BASE)
    base = encode(m.Tattach(tag=1, fid=1, afid=NOFID, uname=b"u", aname=b""), BASE)
    with pytest.raises(RemoteProtocolError):
        decode(base, LINUX)


def test_dialect_names():
    assert [d.wire for d in Dialect] == [b"9P2000", b"9P2000.u", b"9P2000.L"]
    assert Dialect.from_wire(b"9P2000.L") is LINUX
    assert Dialect.from_wire(b"9P2000.l") is None


# --- header errors --------------------------------------------------------------------------


@pytest.mark.parametrize("number", [0, 6, 10, 99, 106, 128, 255])
def test_unknown_and_reserved_types(number):
    """TLERROR (6) and TERROR (106) are numbers but never messages."""
    frame = bytes.fromhex("0b000000") + bytes([number]) + bytes.fromhex("0100 02000000")
    for dialect in ALL:
        with pytest.raises(RemoteProtocolError, match="unknown message type") as e:
            decode(frame, dialect)
        assert (e.value.tag, e.value.type) == (1, number)


def test_short_frames():
    for frame in (b"", b"\x07\0\0\0", b"\x07\0\0\0\x78\x01"):
        with pytest.raises(RemoteProtocolError, match="shorter than the 7-byte header"):
            decode(frame, BASE)


def test_string_and_count_overruns():
    # Twalk: the second name says 6 bytes, 5 follow.
    frame = bytes.fromhex("1d000000 6e 0100 01000000 02000000 0200 0300 757372 0600 676c656e64")
    with pytest.raises(RemoteProtocolError, match="wnames needs 6 bytes"):
        decode(frame, BASE)
    # Rread: count says 0xffffffff.
    with pytest.raises(RemoteProtocolError, match="data needs"):
        decode(bytes.fromhex("0c000000 75 0100 ffffffff 00"), LINUX)
    # Twalk with 17 names is refused before they are read.
    body = bytes.fromhex("01000000 02000000 1100") + b"\0\0" * 17
    frame = (7 + len(body)).to_bytes(4, "little") + bytes.fromhex("6e 0100") + body
    with pytest.raises(RemoteProtocolError, match="more than 16"):
        decode(frame, BASE)


def test_stat_sizes_must_agree():
    good = bytearray(encode(m.Rstat(tag=1, stat=STAT), BASE))
    bad = bytearray(good)
    bad[9] += 1  # the stat's own size[2] no longer matches n[2]
    with pytest.raises(RemoteProtocolError, match="stat size"):
        decode(bytes(bad), BASE)
    with pytest.raises(RemoteProtocolError):
        decode(bytes(good), UNIX)  # a 9P2000 stat is too short for .u


# --- constructors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: m.Topen(tag=1, fid=1, mode=256),
        lambda: m.Tclunk(tag=1, fid=-1),
        lambda: m.Tclunk(tag=1, fid=1 << 32),
        lambda: m.Tclunk(tag=1 << 16, fid=1),
        lambda: m.Tclunk(tag=True, fid=1),
        lambda: m.Tclunk(tag=1, fid=True),
        lambda: m.Tclunk(tag=1, fid=1.0),
        lambda: m.Tread(tag=1, fid=1, offset=1 << 64, count=1),
        lambda: m.Tversion(tag=NOTAG, msize=8192, version="9P2000"),
        lambda: m.Tattach(tag=1, fid=1, afid=NOFID, uname=bytearray(b"u"), aname=b""),
        lambda: m.Rreadlink(tag=1, target=b"x" * 65536),
        lambda: m.Twalk(tag=1, fid=1, newfid=2, wnames=(b"a",) * 17),
        lambda: m.Twalk(tag=1, fid=1, newfid=2, wnames=("a",)),
        lambda: m.Twalk(tag=1, fid=1, newfid=2, wnames=b"ab"),
        lambda: m.Rwalk(tag=1, wqids=((0x80, 0, 1),)),
        lambda: m.Rwalk(tag=1, wqids=(Q1,) * 17),
        lambda: m.Rattach(tag=1, qid=(0x80, 0, 1)),
        lambda: Qid(type=0x100, version=0, path=0),
        lambda: Qid(type=0, version=0, path=1 << 64),
        lambda: m.Rstat(tag=1, stat=None),
        lambda: Stat(**{**STAT_FIELDS, "name": "x"}),
        lambda: m.Rread(tag=1, data="text"),
        lambda: Dirent(qid=Q1, offset=0, type=256, name=b"x"),
    ],
)
def test_constructors_refuse_bad_fields(build):
    with pytest.raises(LocalProtocolError):
        build()


def test_constructors_are_keyword_only_frozen_and_hashable():
    with pytest.raises(TypeError):
        m.Tclunk(1, 2)  # type: ignore[misc]
    msg = m.Twalk(tag=1, fid=1, newfid=2, wnames=[b"a", b"b"])
    assert msg.wnames == (b"a", b"b")
    assert hash(msg) == hash(m.Twalk(tag=1, fid=1, newfid=2, wnames=(b"a", b"b")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.fid = 3  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")


def test_encode_refuses_more_than_msize():
    msg = m.Rread(tag=1, data=bytes(8192 - 11))
    assert len(encode(msg, LINUX, msize=8192)) == 8192
    with pytest.raises(LocalProtocolError, match="exceeds msize"):
        encode(m.Rread(tag=1, data=bytes(8192 - 10)), LINUX, msize=8192)
    for not_a_message in (STAT, m.Message(tag=1)):
        with pytest.raises(LocalProtocolError, match="not a 9P message"):
            encode(not_a_message, BASE)  # type: ignore[arg-type]


# --- framing --------------------------------------------------------------------------------


STREAM = [bytes.fromhex(h) for dialects, _, h in VECTORS if LINUX in dialects]


def test_frame_buffer_byte_by_byte():
    buf = FrameBuffer(max_size=8192)
    got = []
    for byte in b"".join(STREAM):
        buf.receive_data(bytes([byte]))
        while (frame := buf.next_frame()) is not None:
            got.append(frame)
    assert got == STREAM
    assert buf.buffered == 0
    assert [decode(f, LINUX) for f in got] == [msg for d, msg, _ in VECTORS if LINUX in d]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 300), max_size=40))
def test_frame_buffer_any_chunking(cuts):
    data = b"".join(STREAM) * 3
    buf = FrameBuffer(max_size=8192)
    got, pos = [], 0
    for cut in [*cuts, len(data)]:
        buf.receive_data(data[pos : pos + cut])
        pos += cut
        while (frame := buf.next_frame()) is not None:
            got.append(frame)
    assert got == STREAM * 3


def test_oversize_refused_from_the_size_field_alone():
    buf = FrameBuffer(max_size=8192)
    buf.receive_data((8193).to_bytes(4, "little"))  # no type, no tag, no body yet
    with pytest.raises(RemoteProtocolError, match="frame size 8193"):
        buf.next_frame()
    assert buf.buffered == 0
    buf.receive_data(bytes(8189))  # the body the peer goes on sending is dropped
    assert buf.buffered == 0
    with pytest.raises(RemoteProtocolError, match="already broken"):
        buf.next_frame()


def test_size_limits_of_the_frame_buffer():
    exact = m.Rread(tag=1, data=bytes(100 - 11))
    buf = FrameBuffer(max_size=100)
    buf.receive_data(encode(exact, BASE))
    assert decode(buf.next_frame(), BASE) == exact
    for size in (0, 6):
        buf = FrameBuffer()
        buf.receive_data(size.to_bytes(4, "little") + bytes(10))
        with pytest.raises(RemoteProtocolError, match=r"not in 7\.\."):
            buf.next_frame()
    buf = FrameBuffer(max_size=1 << 20)
    buf.receive_data(b"\x13\x00\x00")
    assert buf.next_frame() is None
    buf.receive_data(b"\x00" + bytes(14))
    assert buf.next_frame() is None  # 18 bytes of 19
    buf.receive_data(b"\x00")
    assert len(buf.next_frame()) == 19
    buf.max_size = 18  # lowered after Tversion: the next 19-byte frame is refused
    buf.receive_data((19).to_bytes(4, "little"))
    with pytest.raises(RemoteProtocolError, match="frame size 19"):
        buf.next_frame()
    for bad in (6, 1 << 32, 8192.0):
        with pytest.raises(LocalProtocolError):
            buf.max_size = bad


# --- directory data -------------------------------------------------------------------------


def test_dirents_pack_and_split():
    data = pack_dirents([D1, D2])
    assert data == bytes.fromhex(D1_HEX + D2_HEX)
    assert encode_dirent(D2) == bytes.fromhex(D2_HEX)
    assert unpack_dirents(data) == [D1, D2]
    assert unpack_dirents(b"") == []
    # The first entry of the Rreaddir dump in diod's protocol.md sample session.
    diod = bytes.fromhex("80000000 00ac1f2c 00000000 00010000 00000000 00040100 2e")
    dot = Dirent(
        qid=Qid(type=m.QTDIR, version=0, path=0x2C1FAC), offset=1, type=m.DT_DIR, name=b"."
    )
    assert unpack_dirents(diod) == [dot]
    assert encode_dirent(dot) == diod
    with pytest.raises(RemoteProtocolError):
        unpack_dirents(data[:-1])


def test_stats_pack_and_split():
    other = dataclasses.replace(STAT, name=b"lib", qid=Q2, mode=0o644, length=12)
    data = pack_stats([STAT, other], BASE)
    assert data[:64] == bytes.fromhex("3e00 " + STAT_HEX) == encode_stat(STAT, BASE)
    assert unpack_stats(data, BASE) == [STAT, other]
    assert unpack_stats(pack_stats([STAT_U], UNIX), UNIX) == [STAT_U]
    for cut in (1, 2, 40, len(data) - 1):
        with pytest.raises(RemoteProtocolError):
            unpack_stats(data[:cut], BASE)
    with pytest.raises(LocalProtocolError):
        pack_stats([STAT], LINUX)
    with pytest.raises(LocalProtocolError):
        encode_stat(dataclasses.replace(STAT, name=b"n" * 65535), BASE)


# --- hypothesis -----------------------------------------------------------------------------

QIDS = st.builds(
    Qid,
    type=st.integers(0, 0xFF),
    version=st.integers(0, 0xFFFFFFFF),
    path=st.integers(0, (1 << 64) - 1),
)
_INTS = {Wire.U8: 0xFF, Wire.U16: 0xFFFF, Wire.U32: 0xFFFFFFFF, Wire.U64: (1 << 64) - 1}


def _values(wire: Wire, dialect: Dialect) -> st.SearchStrategy:
    if wire in _INTS:
        return st.integers(0, _INTS[wire])
    if wire is Wire.STAT:
        return _records(Stat, dialect)
    return {
        Wire.STR: st.binary(max_size=12),
        Wire.DATA: st.binary(max_size=64),
        Wire.QID: QIDS,
        Wire.NAMES: st.lists(st.binary(max_size=6), max_size=16).map(tuple),
        Wire.QIDS: st.lists(QIDS, max_size=16).map(tuple),
    }[wire]


def _records(cls: type, dialect: Dialect) -> st.SearchStrategy:
    fields = {
        f.name: _values(f.wire, dialect)
        for f in cls.FIELDS
        if not (f.unix_extension and dialect is BASE)
    }
    if issubclass(cls, m.Message):
        fields["tag"] = st.integers(0, 0xFFFF)
    return st.builds(cls, **fields)


@st.composite
def dialect_and_message(draw):
    dialect = draw(st.sampled_from(ALL))
    cls = draw(st.sampled_from(messages_of(dialect)))
    return dialect, draw(_records(cls, dialect))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dialect_and_message())
def test_round_trip_of_valid_messages(case):
    dialect, msg = case
    frame = encode(msg, dialect)
    assert int.from_bytes(frame[:4], "little") == len(frame)
    assert decode(frame, dialect) == msg
    buf = FrameBuffer(max_size=len(frame))
    buf.receive_data(frame)
    assert buf.next_frame() == frame


_NUMBERS = st.one_of(st.sampled_from([int(t) for t in MessageType]), st.integers(0, 255))


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(ALL), _NUMBERS, st.integers(0, 0xFFFF), st.binary(max_size=200))
def test_random_bodies_only_raise_remote_errors(dialect, number, tag, body):
    frame = (
        (7 + len(body)).to_bytes(4, "little") + bytes([number]) + tag.to_bytes(2, "little") + body
    )
    try:
        msg = decode(frame, dialect)
    except RemoteProtocolError:
        return
    assert encode(msg, dialect) == frame  # the encoding is canonical
    dataclasses.replace(msg)  # and what decode built is a valid message


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL), st.binary(max_size=300), st.integers(7, 400))
def test_random_streams_only_raise_remote_errors(dialect, data, max_size):
    buf = FrameBuffer(max_size=max_size)
    buf.receive_data(data)
    try:
        while (frame := buf.next_frame()) is not None:
            try:
                decode(frame, dialect)
            except RemoteProtocolError:
                pass
    except RemoteProtocolError:
        pass
    for split in (unpack_dirents,):
        try:
            split(data)
        except RemoteProtocolError:
            pass
    if dialect is not LINUX:
        try:
            unpack_stats(data, dialect)
        except RemoteProtocolError:
            pass


def test_public_names():
    for name in spawn.ninep.__all__:
        assert hasattr(spawn.ninep, name), name
    assert set(spawn.ninep.MESSAGE_CLASSES) == {
        t for t in MessageType if t not in (MessageType.TERROR, MessageType.TLERROR)
    }
