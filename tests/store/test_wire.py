"""The block-protocol codec: byte-exact vectors both ways, framing, the connection rules, fuzz."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.block import MAX_BLOCK_SIZE
from store.errors import ProtocolError
from store.wire import (
    MAX_FRAME_SIZE,
    MAX_HAS,
    MAX_STRING,
    NOTAG,
    PROTOCOL_VERSION,
    Connection,
    ErrorCode,
    FrameBuffer,
    LocalProtocolError,
    Message,
    MsgType,
    RemoteProtocolError,
    Rerror,
    Rhas,
    Rhello,
    Role,
    Rping,
    Rread,
    Rstat,
    Rsync,
    Rwrite,
    Tgoodbye,
    Thas,
    Thello,
    Tping,
    Tread,
    Tstat,
    Tsync,
    Twrite,
    clip,
    decode,
    encode,
)

S1 = bytes(range(32))
S2 = b"\xaa" * 32
VERSION_HEX = "000c" + b"grid-block/1".hex()

# (message, exact frame in hex). Layout: size[4] type[1] tag[4] body; size counts from type.
VECTORS: list[tuple[Message, str]] = [
    (Thello(tag=1, name="cli"), "00000018 02 00000001" + VERSION_HEX + "0003 636c69"),
    (Thello(tag=2, name="é"), "00000017 02 00000002" + VERSION_HEX + "0002 c3a9"),
    (
        Rhello(tag=1, node="n1", identity="alice"),
        "0000001e 03 00000001" + VERSION_HEX + "0002 6e31 0005 616c696365",
    ),
    (Rhello(tag=1), "00000017 03 00000001" + VERSION_HEX + "0000 0000"),
    (Tping(tag=7), "00000005 04 00000007"),
    (Rping(tag=7), "00000005 05 00000007"),
    (Tread(tag=0x01020304, score=S1), "00000025 06 01020304" + S1.hex()),
    (Rread(tag=2, btype=1, data=b"abc"), "00000009 07 00000002 01 616263"),
    (Twrite(tag=3, btype=2, data=b""), "00000006 08 00000003 02"),
    (Twrite(tag=0xFFFFFFFE, btype=255, data=b"\x00"), "00000007 08 fffffffe ff 00"),
    (Rwrite(tag=3, score=S2), "00000025 09 00000003" + S2.hex()),
    (Thas(tag=4, scores=(S1, S2)), "00000047 0a 00000004 0002" + S1.hex() + S2.hex()),
    (Thas(tag=4, scores=()), "00000007 0a 00000004 0000"),
    (
        Rhas(tag=4, missing=(False, True, False, False, False, False, False, False, True)),
        "00000009 0b 00000004 0009 02 01",
    ),
    (Rhas(tag=5, missing=()), "00000007 0b 00000005 0000"),
    (Rhas(tag=5, missing=(True,) * 8), "00000008 0b 00000005 0008 ff"),
    (Tsync(tag=9), "00000005 0c 00000009"),
    (Rsync(tag=9), "00000005 0d 00000009"),
    (Tstat(tag=10), "00000005 0e 0000000a"),
    (
        Rstat(
            tag=10,
            blocks=1,
            stored_bytes=2,
            logical_bytes=3,
            puts=4,
            dup_puts=5,
            gets=6,
            cache_hits=7,
            position=0x0102030405060708,
        ),
        "00000045 0f 0000000a"
        "0000000000000001 0000000000000002 0000000000000003 0000000000000004"
        "0000000000000005 0000000000000006 0000000000000007 0102030405060708",
    ),
    (Tgoodbye(tag=0), "00000005 10 00000000"),
    (
        Rerror(tag=NOTAG, code=ErrorCode.BAD_REQUEST, message="bad"),
        "0000000d 01 ffffffff 05 0003 626164 0000",
    ),
    (
        Rerror(tag=6, code=ErrorCode.MISSING_REFERENCE, scores=(S1,)),
        "0000002a 01 00000006 03 0000 0001" + S1.hex(),
    ),
    (
        Rerror(tag=8, code=ErrorCode.NOT_FOUND, message="no", scores=(S2,)),
        "0000002c 01 00000008 01 0002 6e6f 0001" + S2.hex(),
    ),
]
IDS = [f"{i}-{type(m).__name__}" for i, (m, _) in enumerate(VECTORS)]


def raw(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr.replace(" ", ""))


def frame(mtype: int, tag: int, body: bytes) -> bytes:
    return struct.pack(">IBI", 5 + len(body), mtype, tag) + body


def decode_all(data: bytes, *, whole: bool = True) -> list[Message]:
    fb = FrameBuffer()
    fb.feed(data)
    out = []
    while (f := fb.next_frame()) is not None:
        out.append(decode(*f))
    assert len(fb) == 0 or not whole
    return out


# -- vectors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("msg", "hexstr"), VECTORS, ids=IDS)
def test_encode_vector(msg, hexstr):
    assert encode(msg) == raw(hexstr)


@pytest.mark.parametrize(("msg", "hexstr"), VECTORS, ids=IDS)
def test_decode_vector(msg, hexstr):
    assert decode_all(raw(hexstr)) == [msg]


def test_every_message_type_has_a_vector():
    assert {m.TYPE for m, _ in VECTORS} == set(MsgType)


def test_size_field_counts_everything_after_itself():
    for msg, _ in VECTORS:
        data = encode(msg)
        assert struct.unpack(">I", data[:4])[0] == len(data) - 4


def test_max_block_frames_fit():
    big = bytes(MAX_BLOCK_SIZE)
    for msg in (Twrite(tag=1, btype=1, data=big), Rread(tag=1, btype=1, data=big)):
        data = encode(msg)
        assert len(data) - 4 <= MAX_FRAME_SIZE
        assert decode_all(data) == [msg]
    worst = Rerror(
        tag=1,
        code=ErrorCode.MISSING_REFERENCE,
        message="x" * MAX_STRING,
        scores=(S1,) * ((MAX_BLOCK_SIZE - 4) // 32),
    )
    assert len(encode(worst)) - 4 <= MAX_FRAME_SIZE
    assert decode_all(encode(worst)) == [worst]


# -- framing ----------------------------------------------------------------------------------


def test_byte_by_byte_feeding_server_side():
    requests = [m for m, _ in VECTORS if m.TYPE.value % 2 == 0 and m.TYPE is not MsgType.THELLO]
    stream = encode(Thello(tag=1000)) + b"".join(
        encode(_retag(m, 2000 + i)) for i, m in enumerate(requests)
    )
    conn = Connection(Role.SERVER)
    got = []
    for b in stream:
        conn.receive_data(bytes([b]))
        while (m := conn.next_message()) is not None:
            got.append(m)
    assert got[0] == Thello(tag=1000)
    assert got[1:] == [_retag(m, 2000 + i) for i, m in enumerate(requests)]


def test_byte_by_byte_feeding_frame_buffer_all_vectors():
    stream = b"".join(raw(h) for _, h in VECTORS)
    fb = FrameBuffer()
    got = []
    for b in stream:
        fb.feed(bytes([b]))
        while (f := fb.next_frame()) is not None:
            got.append(decode(*f))
    assert got == [m for m, _ in VECTORS]


def test_many_frames_in_one_chunk_and_split_across_chunks():
    one = encode(Rread(tag=1, btype=1, data=b"x" * 100_000))
    stream = one * 5
    fb = FrameBuffer()
    fb.feed(stream[:250_000])
    assert [decode(*fb.next_frame()) for _ in range(2)] == [decode_all(one)[0]] * 2
    assert fb.next_frame() is None
    fb.feed(stream[250_000:])
    assert len([fb.next_frame() for _ in range(3)]) == 3
    assert fb.next_frame() is None and len(fb) == 0


def test_oversize_frame_refused_from_its_size_field_alone():
    fb = FrameBuffer()
    fb.feed(struct.pack(">I", MAX_FRAME_SIZE + 1))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        fb.next_frame()
    fb = FrameBuffer()
    fb.feed(b"\xff\xff\xff\xff")
    with pytest.raises(RemoteProtocolError):
        fb.next_frame()


def test_frame_at_the_limit_is_accepted_when_complete():
    fb = FrameBuffer()
    fb.feed(struct.pack(">IBI", MAX_FRAME_SIZE, MsgType.TPING, 1))
    assert fb.next_frame() is None  # waits for the body, does not refuse


@pytest.mark.parametrize("size", [0, 1, 4])
def test_undersize_frame_refused(size):
    fb = FrameBuffer()
    fb.feed(struct.pack(">I", size) + bytes(8))
    with pytest.raises(RemoteProtocolError, match="below the minimum"):
        fb.next_frame()


def test_smaller_limit_is_honoured():
    fb = FrameBuffer(max_frame_size=100)
    fb.feed(encode(Rread(tag=1, btype=1, data=bytes(200))))
    with pytest.raises(RemoteProtocolError):
        fb.next_frame()


@pytest.mark.parametrize("mtype", [0, 17, 18, 100, 255])
def test_unknown_type(mtype):
    with pytest.raises(RemoteProtocolError, match="unknown message type") as ei:
        decode_all(frame(mtype, 42, b"body"))
    assert ei.value.tag == 42
    assert isinstance(ei.value, ProtocolError)


BODIED = [(m, h) for m, h in VECTORS if len(raw(h)) > 9]


@pytest.mark.parametrize(("msg", "hexstr"), BODIED, ids=[type(m).__name__ for m, _ in BODIED])
def test_truncated_body(msg, hexstr):
    data = raw(hexstr)
    # A payload runs to the end of its frame, so there only the type byte can be cut.
    body = b"" if msg.TYPE in (MsgType.RREAD, MsgType.TWRITE) else data[9:-1]
    with pytest.raises(RemoteProtocolError, match="malformed") as ei:
        decode_all(frame(msg.TYPE, msg.tag, body))
    assert ei.value.tag == msg.tag


# A payload runs to the end of its frame, so only the other messages can have trailing bytes.
FIXED = [(m, h) for m, h in VECTORS if m.TYPE not in (MsgType.RREAD, MsgType.TWRITE)]


@pytest.mark.parametrize(("msg", "hexstr"), FIXED, ids=[type(m).__name__ for m, _ in FIXED])
def test_trailing_garbage(msg, hexstr):
    data = raw(hexstr)
    with pytest.raises(RemoteProtocolError, match="trailing"):
        decode_all(frame(msg.TYPE, msg.tag, data[9:] + b"\x00"))


@pytest.mark.parametrize(
    ("mtype", "body", "why"),
    [
        (MsgType.THELLO, b"\x00\x02\xff\xfe\x00\x00", "UTF-8"),
        (
            MsgType.THELLO,
            struct.pack(">H", MAX_STRING + 1) + bytes(MAX_STRING + 1) + bytes(2),
            "exceeds",
        ),
        (MsgType.THAS, struct.pack(">H", MAX_HAS + 1) + bytes(32 * (MAX_HAS + 1)), "limit"),
        (MsgType.RHAS, b"\x00\x03\x08", "padding"),
        (MsgType.RERROR, b"\x00\x00\x00\x00\x00", "unknown error code"),
        (MsgType.RERROR, b"\x63\x00\x00\x00\x00", "unknown error code"),
        (MsgType.TWRITE, b"\x01" + bytes(MAX_BLOCK_SIZE + 1), "payload"),
        (MsgType.RREAD, b"\x01" + bytes(MAX_BLOCK_SIZE + 1), "payload"),
    ],
)
def test_malformed_bodies(mtype, body, why):
    with pytest.raises(RemoteProtocolError, match=why):
        decode_all(frame(mtype, 1, body))


# -- constructors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Tping(tag=-1),
        lambda: Tping(tag=1 << 32),
        lambda: Tping(tag=True),
        lambda: Tping(tag=1.0),
        lambda: Tread(tag=1, score=b"short"),
        lambda: Tread(tag=1, score="a" * 32),
        lambda: Rwrite(tag=1, score=bytes(33)),
        lambda: Twrite(tag=1, btype=256, data=b""),
        lambda: Twrite(tag=1, btype=-1, data=b""),
        lambda: Twrite(tag=1, btype=1, data=bytes(MAX_BLOCK_SIZE + 1)),
        lambda: Twrite(tag=1, btype=1, data="text"),
        lambda: Rread(tag=1, btype=False, data=b""),
        lambda: Thas(tag=1, scores=(S1,) * (MAX_HAS + 1)),
        lambda: Thas(tag=1, scores=S1),
        lambda: Thas(tag=1, scores=(b"x",)),
        lambda: Rhas(tag=1, missing=(1, 0)),
        lambda: Rhas(tag=1, missing=(True,) * (MAX_HAS + 1)),
        lambda: Thello(tag=1, name="x" * (MAX_STRING + 1)),
        lambda: Thello(tag=1, name=b"bytes"),
        lambda: Thello(tag=1, name="\udc80"),
        lambda: Rerror(tag=1, code=99),
        lambda: Rerror(tag=1, code=ErrorCode.CORRUPT, scores=(b"x",)),
        lambda: Rstat(tag=1, blocks=-1),
        lambda: Rstat(tag=1, position=1 << 64),
    ],
)
def test_constructors_validate(make):
    with pytest.raises(LocalProtocolError):
        make()


def test_messages_are_frozen_slotted_keyword_only():
    m = Tread(tag=1, score=bytearray(S1))
    assert type(m.score) is bytes  # normalised
    with pytest.raises(AttributeError):
        m.tag = 2  # type: ignore[misc]
    assert not hasattr(m, "__dict__")
    with pytest.raises(TypeError):
        Tread(1, S1)  # type: ignore[misc]


def test_encode_refuses_non_messages():
    with pytest.raises(LocalProtocolError):
        encode("Tping")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode(Message(tag=1))


def test_clip():
    assert clip("short") == "short"
    long = "é" * MAX_STRING
    c = clip(long)
    assert len(c.encode()) <= MAX_STRING and c.endswith("...")
    Rerror(tag=1, code=ErrorCode.INTERNAL, message=c)


# -- the connection state machine ---------------------------------------------------------------


def _retag(msg: Message, tag: int) -> Message:
    fields = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg) if f.name != "tag"}
    return type(msg)(tag=tag, **fields)


def pair() -> tuple[Connection, Connection]:
    return Connection(Role.CLIENT), Connection(Role.SERVER)


def transfer(src_bytes: bytes, dst: Connection) -> list[Message]:
    dst.receive_data(src_bytes)
    out = []
    while (m := dst.next_message()) is not None:
        out.append(m)
    return out


def test_client_server_in_memory_out_of_order_replies():
    client, server = pair()
    out = client.send(Thello(tag=0, name="t"))
    out += client.send(Tread(tag=1, score=S1))
    out += client.send(Thas(tag=2, scores=(S1, S2)))
    out += client.send(Tsync(tag=3))
    got = transfer(out, server)
    assert [m.TYPE for m in got] == [MsgType.THELLO, MsgType.TREAD, MsgType.THAS, MsgType.TSYNC]
    assert server.outstanding == 4 and client.outstanding == 4
    back = server.send(Rsync(tag=3))
    back += server.send(Rhello(tag=0, node="srv", identity="uid:0"))
    back += server.send(Rerror(tag=1, code=ErrorCode.NOT_FOUND, scores=(S1,)))
    back += server.send(Rhas(tag=2, missing=(False, True)))
    replies = transfer(back, client)
    assert [m.tag for m in replies] == [3, 0, 1, 2]
    assert client.outstanding == 0 and server.outstanding == 0
    # tags are free again once answered
    transfer(client.send(Tread(tag=1, score=S2)), server)


def test_client_local_rules():
    c = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError, match="before Thello"):
        c.send(Tping(tag=1))
    c.send(Thello(tag=0))
    with pytest.raises(LocalProtocolError, match="already sent"):
        c.send(Thello(tag=5))
    with pytest.raises(LocalProtocolError, match="still in use"):
        c.send(Tping(tag=0))
    with pytest.raises(LocalProtocolError, match="NOTAG"):
        c.send(Tping(tag=NOTAG))
    with pytest.raises(LocalProtocolError, match="cannot send"):
        c.send(Rping(tag=1))
    c.send(Tgoodbye(tag=9))
    with pytest.raises(LocalProtocolError, match="after Tgoodbye"):
        c.send(Tping(tag=2))


def test_server_local_rules():
    client, server = pair()
    transfer(client.send(Thello(tag=0)) + client.send(Tread(tag=1, score=S1)), server)
    with pytest.raises(LocalProtocolError, match="cannot send"):
        server.send(Tping(tag=1))
    with pytest.raises(LocalProtocolError, match="cannot answer"):
        server.send(Rwrite(tag=1, score=S1))
    with pytest.raises(LocalProtocolError, match="not outstanding"):
        server.send(Rping(tag=77))
    server.send(Rerror(tag=NOTAG, code=ErrorCode.BAD_REQUEST))  # connection-level: allowed
    assert server.outstanding == 2


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        ([Tping(tag=1)], "before Thello"),
        ([Thello(tag=0), Thello(tag=1)], "second Thello"),
        ([Thello(tag=0), Rping(tag=1)], "a client sent RPING"),
        ([Thello(tag=0), Tread(tag=1, score=S1), Tread(tag=1, score=S2)], "reused"),
        ([Thello(tag=0), Tping(tag=NOTAG)], "NOTAG"),
        ([Thello(tag=0), Tgoodbye(tag=1), Tping(tag=2)], "after Tgoodbye"),
    ],
)
def test_server_remote_rules(frames, why):
    server = Connection(Role.SERVER)
    server.receive_data(b"".join(encode(f) for f in frames))
    with pytest.raises(RemoteProtocolError, match=why):
        while server.next_message() is not None:
            pass
    with pytest.raises(RemoteProtocolError):  # the error sticks
        server.next_message()


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (Rping(tag=99), "not outstanding"),
        (Rwrite(tag=1, score=S1), "answers TREAD"),
        (Tping(tag=1), "a server sent TPING"),
    ],
)
def test_client_remote_rules(reply, why):
    c = Connection(Role.CLIENT)
    c.send(Thello(tag=0))
    c.send(Tread(tag=1, score=S1))
    c.receive_data(encode(reply))
    with pytest.raises(RemoteProtocolError, match=why):
        c.next_message()


def test_client_accepts_connection_level_rerror():
    c = Connection(Role.CLIENT)
    c.send(Thello(tag=0))
    err = Rerror(tag=NOTAG, code=ErrorCode.BAD_REQUEST, message="go away")
    c.receive_data(encode(err))
    assert c.next_message() == err
    assert c.outstanding == 1  # the hello is still unanswered


def test_eof_handling():
    c = Connection(Role.SERVER)
    c.receive_data(encode(Thello(tag=0)))
    c.receive_data(b"")
    assert c.next_message() == Thello(tag=0)
    assert c.next_message() is None and c.eof
    with pytest.raises(LocalProtocolError):
        c.receive_data(b"more")
    c = Connection(Role.SERVER)
    c.receive_data(encode(Thello(tag=0))[:-1])
    c.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed inside a frame"):
        c.next_message()


# -- properties ---------------------------------------------------------------------------------

tags = st.integers(0, 0xFFFFFFFF)
scores = st.binary(min_size=32, max_size=32)
texts = st.text(max_size=40)
messages = st.one_of(
    st.builds(Thello, tag=tags, version=texts, name=texts),
    st.builds(Rhello, tag=tags, version=texts, node=texts, identity=texts),
    st.builds(Tping, tag=tags),
    st.builds(Rping, tag=tags),
    st.builds(Tread, tag=tags, score=scores),
    st.builds(Rread, tag=tags, btype=st.integers(0, 255), data=st.binary(max_size=300)),
    st.builds(Twrite, tag=tags, btype=st.integers(0, 255), data=st.binary(max_size=300)),
    st.builds(Rwrite, tag=tags, score=scores),
    st.builds(Thas, tag=tags, scores=st.lists(scores, max_size=20).map(tuple)),
    st.builds(Rhas, tag=tags, missing=st.lists(st.booleans(), max_size=40).map(tuple)),
    st.builds(Tsync, tag=tags),
    st.builds(Rsync, tag=tags),
    st.builds(Tstat, tag=tags),
    st.builds(
        Rstat, tag=tags, blocks=st.integers(0, 2**64 - 1), position=st.integers(0, 2**64 - 1)
    ),
    st.builds(Tgoodbye, tag=tags),
    st.builds(
        Rerror,
        tag=tags,
        code=st.sampled_from(ErrorCode),
        message=texts,
        scores=st.lists(scores, max_size=5).map(tuple),
    ),
)


@given(st.lists(messages, max_size=8), st.integers(1, 64))
def test_round_trip_in_any_chunking(msgs, chunk):
    stream = b"".join(encode(m) for m in msgs)
    fb = FrameBuffer()
    got = []
    for i in range(0, len(stream), chunk):
        fb.feed(stream[i : i + chunk])
        while (f := fb.next_frame()) is not None:
            got.append(decode(*f))
    assert got == msgs


def _drain(conn: Connection) -> None:
    while conn.next_message() is not None:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_the_protocol_error(data):
    hello = encode(Thello(tag=0))
    for role, prefix in ((Role.SERVER, b""), (Role.SERVER, hello), (Role.CLIENT, b"")):
        conn = Connection(role)
        if role is Role.CLIENT:
            conn.send(Thello(tag=0))
            conn.send(Tread(tag=1, score=S1))
        try:
            if prefix + data:
                conn.receive_data(prefix + data)
                _drain(conn)
            conn.receive_data(b"")
            _drain(conn)
        except RemoteProtocolError:
            pass


@settings(max_examples=300)
@given(st.integers(0, 255), tags, st.binary(max_size=200))
def test_random_bodies_only_raise_the_protocol_error(mtype, tag, body):
    try:
        decode(mtype, tag, body)
    except RemoteProtocolError:
        pass


@settings(max_examples=300)
@given(messages, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4))
def test_mutated_frames_only_raise_the_protocol_error(msg, flips):
    data = bytearray(encode(msg))
    for pos, val in flips:
        data[pos % len(data)] = val
    try:
        decode_all(bytes(data), whole=False)
    except RemoteProtocolError:
        pass


def test_protocol_version_constant():
    assert PROTOCOL_VERSION == "grid-block/1"
    assert Thello(tag=0).version == PROTOCOL_VERSION == Rhello(tag=0).version
