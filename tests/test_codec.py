"""Tests for protocol.codec.

Why these tests: the codec sits between every socket and the sans-IO cores, and the design
promises that a node never crashes on input.  So beyond round trips, the important properties
are (1) decode raises ProtocolError -- never anything else -- for every malformed frame, and
(2) encoding is canonical: whenever decode accepts a frame, encoding the result gives back the
same bytes (no two frames decode to the same message, no bits are silently ignored).
"""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.codec import (
    INTERNAL_FAILURE,
    KIND_OF,
    MAX_FRAME,
    Kind,
    ProtocolError,
    decode,
    decode_append,
    decode_append_reply,
    decode_json,
    decode_request,
    encode,
    encode_json,
    peek_kind,
    peek_sender,
)
from protocol.entries import pack_entries, unpack_entries
from protocol.messages import (
    INT32_MAX,
    INT32_MIN,
    NO_VIEW,
    PROTOCOL_VERSION,
    Append,
    AppendReply,
    ClientRequest,
    CustomerRecord,
    ErrorCode,
    ErrorReply,
    LaptopInfo,
    Ping,
    RecordList,
    SnapshotChunk,
    View,
    ViewReply,
)

U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1
ALL_NODES = frozenset(range(1, 64))
FULL_VIEW = View(U32_MAX, 63, frozenset(range(1, 63)))  # 63 nodes: primary 63 + backups 1..62

# --------------------------------------------------------------------------- samples

SAMPLES = [
    ClientRequest(0, 1, 0, 0),
    ClientRequest(U64_MAX, 1, INT32_MAX, INT32_MAX),
    ClientRequest(7, 2, INT32_MIN),
    ClientRequest(8, 3, INT32_MIN, INT32_MAX),
    LaptopInfo(1, 42, 7, 1, 3, 1),
    LaptopInfo(U64_MAX, INT32_MIN, INT32_MAX, INT32_MIN, INT32_MAX, INT32_MIN),
    CustomerRecord(5, -1, -1),
    CustomerRecord(U64_MAX, INT32_MAX, INT32_MIN),
    RecordList(3, ()),
    RecordList(4, ((1, 2), (INT32_MIN, INT32_MAX), (INT32_MAX, INT32_MIN))),
    ErrorReply(1, ErrorCode.BAD_REQUEST),
    ErrorReply(2, ErrorCode.NOT_PRIMARY, 63, "not primary, try node 63"),
    ErrorReply(U64_MAX, ErrorCode.PROTOCOL, 0, "caf\u00e9 \u65e5\u672c \U0001f4bb \x00 end"),
    ErrorReply(9, ErrorCode.OVERLOADED, 1, "x" * 65535),
    Append(NO_VIEW, 1, 0, 0, 0),
    Append(View(1, 1), 1, 0, 0, 0, pack_entries([(1, 10, 1, 1)])),
    Append(FULL_VIEW, 63, U64_MAX, U32_MAX, U64_MAX, pack_entries([(U32_MAX, INT32_MIN, INT32_MAX, -1)] * 3)),
    Append(View(7, 2, frozenset({1, 3})), 2, 10, 6, 9, pack_entries((7, i, i, 2) for i in range(256))),
    AppendReply(0, 1, False, 0),
    AppendReply(U32_MAX, 63, True, U64_MAX, U64_MAX),
    AppendReply(4, 2, False, 17, 123456789),
    SnapshotChunk(View(2, 1, frozenset({2})), 1, 100, 2, 0, 0, b""),
    SnapshotChunk(FULL_VIEW, 63, U64_MAX, U32_MAX, 10, 20, bytes(range(10))),
    SnapshotChunk(View(3, 5), 5, 1, 1, U64_MAX - 3, U64_MAX, b"\x00\xff\x10"),
    Ping(1, 0, 0, 0, 0, 0, 0, False),
    Ping(
        63, U64_MAX, U32_MAX, U64_MAX, U32_MAX, U64_MAX, U64_MAX, True,
        tuple((n, U64_MAX - n) for n in range(63, 0, -1)), ALL_NODES, U64_MAX,
    ),  # fmt: skip
    Ping(2, 12345, 4, 100, 4, 99, 98, True, ((3, 0),), frozenset({1, 63}), 17),
    ViewReply(NO_VIEW),
    ViewReply(View(1, 1, frozenset())),
    ViewReply(FULL_VIEW, frozenset({63})),
    ViewReply(View(4, 0, frozenset({1, 2})), frozenset({3, 4})),
]


def _id(msg: object) -> str:
    return type(msg).__name__


@pytest.mark.parametrize("msg", SAMPLES, ids=_id)
def test_round_trip_samples(msg):
    frame = encode(msg)
    assert isinstance(frame, bytes)
    assert frame[0] == PROTOCOL_VERSION
    assert frame[1] == KIND_OF[type(msg)]
    assert peek_kind(frame) == KIND_OF[type(msg)]
    back = decode(frame)
    assert type(back) is type(msg)
    assert back == msg
    assert encode(back) == frame
    # Every bytes-like input decodes the same.
    assert decode(memoryview(frame)) == msg
    assert decode(bytearray(frame)) == msg
    assert decode(memoryview(b"junk" + frame)[4:]) == msg


def test_all_wire_types_are_covered():
    assert {type(m) for m in SAMPLES} == set(KIND_OF)
    assert {int(k) for k in Kind} == {1, 2, 3, 4, 5, 10, 11, 12, 20, 21}
    assert {KIND_OF[t] for t in KIND_OF} == set(Kind)


def test_wire_layout_is_pinned():
    """Golden bytes: a layout change must be deliberate (and bump PROTOCOL_VERSION)."""
    assert encode(ClientRequest(0x0102030405060708, 1, -2, 3)) == bytes.fromhex(
        "0101" "0807060504030201" "01000000" "feffffff" "03000000"
    )
    assert encode(AppendReply(5, 3, True, 9, 2)) == bytes.fromhex(
        "010b" "05000000" "03" "01" "0900000000000000" "0200000000000000"
    )
    assert encode(Ping(1, 2, 3, 4, 5, 6, 7, True, ((2, 8),), frozenset({63}), 9)) == bytes.fromhex(
        "0114" "01" "0200000000000000" "03000000" "0400000000000000" "05000000"
        "0600000000000000" "0700000000000000" "01" "0000000000000080" "0900000000000000"
        "01" "02" "0800000000000000"
    )
    frame = encode(Append(View(2, 1, frozenset({2, 63})), 1, 4, 2, 3, pack_entries([(2, 7, 8, 1)])))
    assert frame == bytes.fromhex(
        "010a" "02000000" "01" "0400000000000080" "01" "0400000000000000" "02000000"
        "0300000000000000" "01000000" "02000000" "07000000" "08000000" "01000000"
    )
    assert len(encode(Append(View(1, 1), 1, 0, 0, 0, pack_entries([(1, 1, 1, 1)] * 256)))) == 40 + 16 * 256


def test_decoded_values_have_natural_types():
    err = decode(encode(ErrorReply(1, 2, 3, "m")))
    assert err.code is ErrorCode.NOT_PRIMARY
    reply = decode(encode(AppendReply(1, 2, True, 3)))
    assert reply.ok is True
    ping = decode(encode(Ping(1, 2, 3, 4, 5, 6, 7, True, [[2, 5]], frozenset({2}))))
    assert ping.durable is True and isinstance(ping.remove, frozenset)
    assert ping.add == ((2, 5),) and type(ping.add[0]) is tuple
    append = decode(memoryview(encode(Append(View(1, 1), 1, 0, 0, 0, pack_entries([[1, 2, 3, 4], [1, 5, 6, 7]])))))
    assert type(append.entries) is bytes  # kept packed, and a value even when decoded from a view
    assert unpack_entries(append.entries) == [(1, 2, 3, 4), (1, 5, 6, 7)]
    chunk = decode(memoryview(encode(SnapshotChunk(View(1, 1), 1, 1, 1, 0, 3, b"abc"))))
    assert type(chunk.data) is bytes


# --------------------------------------------------------------------------- hypothesis round trips

u64 = st.integers(0, U64_MAX)
u32 = st.integers(0, U32_MAX)
i32 = st.integers(INT32_MIN, INT32_MAX)
node = st.integers(0, 63)
sender = st.integers(1, 63)
node_set = st.frozensets(st.integers(1, 63))
add_pairs = st.lists(st.tuples(sender, u64), unique_by=lambda p: p[0], max_size=63).map(tuple)


@st.composite
def views(draw):
    primary = draw(node)
    backups = draw(node_set) - {primary}
    return View(draw(u32), primary, backups)


@st.composite
def snapshot_chunks(draw):
    data = draw(st.binary(max_size=300))
    offset = draw(st.integers(0, U64_MAX - len(data)))
    total = draw(st.integers(offset + len(data), U64_MAX))
    return SnapshotChunk(draw(views()), draw(sender), draw(u64), draw(u32), offset, total, data)


entries = st.lists(st.tuples(u32, i32, i32, i32), max_size=40).map(pack_entries)

messages = st.one_of(
    st.builds(ClientRequest, u64, st.sampled_from([1, 2, 3]), i32, i32),
    st.builds(LaptopInfo, u64, i32, i32, i32, i32, i32),
    st.builds(CustomerRecord, u64, i32, i32),
    st.builds(RecordList, u64, st.lists(st.tuples(i32, i32), max_size=40).map(tuple)),
    st.builds(ErrorReply, u64, st.sampled_from(list(ErrorCode)), node, st.text(max_size=60)),
    st.builds(Append, views(), sender, u64, u32, u64, entries),
    st.builds(AppendReply, u32, sender, st.booleans(), u64, u64),
    snapshot_chunks(),
    st.builds(Ping, sender, u64, u32, u64, u32, u64, u64, st.booleans(), add_pairs, node_set, u64),
    st.builds(ViewReply, views(), node_set),
)


@given(messages)
@settings(max_examples=400)
def test_round_trip_property(msg):
    frame = encode(msg)
    assert len(frame) <= MAX_FRAME
    assert decode(frame) == msg
    assert peek_kind(frame) == KIND_OF[type(msg)]


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize("msg", SAMPLES, ids=_id)
def test_every_truncation_is_rejected(msg):
    frame = encode(msg)
    for cut in range(len(frame)):
        with pytest.raises(ProtocolError):
            decode(frame[:cut])


@pytest.mark.parametrize("msg", SAMPLES, ids=_id)
@pytest.mark.parametrize("extra", [b"\x00", b"\x01\x02\x03", bytes(16)])
def test_trailing_bytes_are_rejected(msg, extra):
    with pytest.raises(ProtocolError, match="trailing bytes|truncated"):
        decode(encode(msg) + extra)


def test_truncation_messages_name_kind_and_sizes():
    frame = encode(Append(View(1, 1), 1, 0, 0, 0, pack_entries([(1, 1, 1, 1)])))
    with pytest.raises(ProtocolError, match=r"^truncated Append: 37 bytes, need 40$"):
        decode(frame[:37])
    with pytest.raises(ProtocolError, match=r"^truncated Append: 45 bytes, need 56 for 1 entries$"):
        decode(frame[:45])
    with pytest.raises(ProtocolError, match=r"^truncated ClientRequest: 10 bytes, need 22$"):
        decode(encode(ClientRequest(1, 1, 1, 1))[:10])
    with pytest.raises(ProtocolError, match=r"^3 trailing bytes after LaptopInfo"):
        decode(encode(LaptopInfo(1, 1, 1, 1, 1, 1)) + b"abc")
    with pytest.raises(ProtocolError, match=r"^truncated frame: 1 bytes"):
        decode(b"\x01")
    with pytest.raises(ProtocolError, match=r"^truncated frame: 0 bytes"):
        decode(b"")


def test_entry_count_must_match_length():
    frame = bytearray(encode(Append(View(1, 1), 1, 0, 0, 0, pack_entries([(1, 1, 1, 1)] * 2))))
    struct.pack_into("<I", frame, 36, 3)  # claims 3 entries, carries 2
    with pytest.raises(ProtocolError, match="truncated Append: 72 bytes, need 88 for 3 entries"):
        decode(bytes(frame))
    struct.pack_into("<I", frame, 36, 1)  # claims 1 entry, carries 2
    with pytest.raises(ProtocolError, match="16 trailing bytes after Append"):
        decode(bytes(frame))
    struct.pack_into("<I", frame, 36, U32_MAX)  # absurd count must not allocate anything
    with pytest.raises(ProtocolError, match="truncated Append"):
        decode(bytes(frame))
    records = bytearray(encode(RecordList(1, ((1, 2),))))
    struct.pack_into("<I", records, 10, 2)
    with pytest.raises(ProtocolError, match="truncated RecordList: 22 bytes, need 30 for 2 records"):
        decode(bytes(records))


def test_header_errors():
    with pytest.raises(ProtocolError, match=r"^unknown message kind 99$"):
        decode(bytes([PROTOCOL_VERSION, 99]) + bytes(40))
    with pytest.raises(ProtocolError, match=r"^unsupported protocol version 7$"):
        decode(bytes([7, 1]) + bytes(20))
    with pytest.raises(ProtocolError, match=r"^unsupported protocol version 0$"):
        decode(bytes(22))
    for bad in (b"", b"\x01", b"\x07\x01", b"\x01\x63", b"\x01\x00"):
        with pytest.raises(ProtocolError):
            peek_kind(bad)
    assert peek_kind(b"\x01\x0a") is Kind.APPEND  # peek does not look at the body


def test_oversized_frames_are_rejected_before_anything_else():
    with pytest.raises(ProtocolError, match=r"^frame of 20000000 bytes exceeds MAX_FRAME$"):
        decode(b"\x01" * 20_000_000)
    big = bytearray(MAX_FRAME + 1)
    big[0:2] = b"\x01\x01"
    with pytest.raises(ProtocolError, match="exceeds MAX_FRAME"):
        decode(big)
    with pytest.raises(ProtocolError, match="exceeds MAX_FRAME"):
        peek_kind(memoryview(big))
    with pytest.raises(ProtocolError, match="exceeds MAX_FRAME"):
        decode_json(b" " * (MAX_FRAME + 1))


def test_largest_snapshot_chunk_fits_exactly():
    header = codec._SNAPSHOT_CHUNK.size
    data = bytes(MAX_FRAME - header)
    chunk = SnapshotChunk(View(1, 1), 1, 1, 1, 0, len(data), data)
    frame = encode(chunk)
    assert len(frame) == MAX_FRAME
    assert decode(frame) == chunk
    with pytest.raises(ProtocolError, match="exceeds MAX_FRAME"):
        encode(SnapshotChunk(View(1, 1), 1, 1, 1, 0, len(data) + 1, data + b"x"))


def _patch(msg, fmt: str, offset: int, value: int) -> bytes:
    frame = bytearray(encode(msg))
    struct.pack_into(fmt, frame, offset, value)
    return bytes(frame)


@pytest.mark.parametrize(
    ("frame", "pattern"),
    [
        (_patch(ClientRequest(1, 1, 1), "<i", 10, 9), r"^request type 9 is not 1, 2 or 3$"),
        (_patch(ClientRequest(1, 1, 1), "<i", 10, 0), "request type 0"),
        (_patch(ClientRequest(1, 1, 1), "<i", 10, -1), "request type -1"),
        (_patch(ViewReply(View(1, 1)), "<B", 6, 70), r"^node id 70 out of range 0\.\.63"),
        (_patch(ViewReply(View(1, 1)), "<Q", 7, 1 << 1 | 1 << 2), "primary 1 is also listed in its backups"),
        (_patch(ViewReply(View(1, 1)), "<Q", 7, 1), "node id 0 in node set"),
        (_patch(ViewReply(View(1, 1)), "<Q", 15, 1 | 1 << 5), "node id 0 in node set ViewReply.learners"),
        (_patch(Append(View(1, 1), 1, 0, 0, 0), "<B", 15, 0), r"node id 0 out of range 1\.\.63 in Append.sender"),
        (_patch(Append(View(1, 1), 1, 0, 0, 0), "<B", 15, 64), "node id 64 out of range"),
        (_patch(Append(View(1, 1), 1, 0, 0, 0), "<B", 6, 255), "node id 255 out of range"),
        (_patch(AppendReply(1, 1, True, 1), "<B", 7, 2), "AppendReply.ok is 2, must be 0 or 1"),
        (_patch(AppendReply(1, 1, True, 1), "<B", 6, 0), "AppendReply.sender"),
        (_patch(Ping(1, 1, 1, 1, 1, 1, 1, True), "<B", 2, 0), "Ping.node_id"),
        (_patch(Ping(1, 1, 1, 1, 1, 1, 1, True), "<B", 2, 64), "Ping.node_id"),
        (_patch(Ping(1, 1, 1, 1, 1, 1, 1, True), "<B", 43, 7), "Ping.durable is 7"),
        (_patch(Ping(1, 1, 1, 1, 1, 1, 1, True), "<Q", 44, 3), "Ping.remove"),
        (_patch(Ping(1, 1, 1, 1, 1, 1, 1, True, ((2, 1),)), "<B", 61, 0), "node id 0 out of range 1..63 in Ping.add"),
        (_patch(Ping(1, 1, 1, 1, 1, 1, 1, True, ((2, 1),)), "<B", 61, 64), "Ping.add"),
        (_patch(Ping(1, 1, 1, 1, 1, 1, 1, True, ((2, 1), (3, 1))), "<B", 70, 2), "node 2 appears twice in Ping.add"),
        (_patch(Ping(1, 1, 1, 1, 1, 1, 1, True, ((2, 1),)), "<B", 60, 2), "truncated Ping: 70 bytes, need 79 for 2 added"),
        (_patch(Ping(1, 1, 1, 1, 1, 1, 1, True), "<B", 60, 1), "truncated Ping: 61 bytes, need 70"),
        (encode(Ping(1, 1, 1, 1, 1, 1, 1, True))[:-1] + b"\x40" + bytes(9 * 64), "at most 63"),
        (_patch(ErrorReply(1, 1, 0, "x"), "<B", 10, 0), "unknown error code 0"),
        (_patch(ErrorReply(1, 1, 0, "x"), "<B", 10, 77), "unknown error code 77"),
        (_patch(ErrorReply(1, 1, 0, "x"), "<B", 11, 64), "ErrorReply.hint"),
        (encode(ErrorReply(1, 1, 0, "ab"))[:-2] + b"\xc3\x28", "not valid utf-8"),
        (encode(ErrorReply(1, 1, 0, "ab"))[:-2] + b"\xed\xa0", "not valid utf-8"),  # surrogate
        (encode(ErrorReply(1, 1, 0, "ab"))[:-2] + b"\xc0\xaf", "not valid utf-8"),  # overlong
        (_patch(SnapshotChunk(View(1, 1), 1, 1, 1, 0, 3, b"abc"), "<Q", 36, 2), "exceeds total 2"),
        (_patch(SnapshotChunk(View(1, 1), 1, 1, 1, 0, 3, b"abc"), "<Q", 28, U64_MAX), "exceeds total"),
        (_patch(SnapshotChunk(View(1, 1), 1, 1, 1, 0, 3, b"abc"), "<B", 15, 0), "SnapshotChunk.sender"),
    ],
)
def test_bad_values_are_rejected(frame, pattern):
    with pytest.raises(ProtocolError, match=pattern):
        decode(frame)


@pytest.mark.parametrize(
    "data", ["\x01\x01", None, 17, 1.5, object(), [1, 1]]
)
def test_non_bytes_input_is_a_protocol_error(data):
    with pytest.raises(ProtocolError, match="bytes-like"):
        decode(data)
    with pytest.raises(ProtocolError, match="bytes-like"):
        decode_json(data)
    with pytest.raises(ProtocolError, match="bytes-like"):
        peek_kind(data)


def test_released_and_odd_memoryviews():
    released = memoryview(encode(ClientRequest(1, 1, 1)))
    released.release()
    with pytest.raises(ProtocolError):
        decode(released)
    frame = encode(CustomerRecord(1, 2, 3))
    strided = memoryview(bytes(b for b in frame for _ in range(2)))[::2]  # non-contiguous
    assert decode(strided) == CustomerRecord(1, 2, 3)
    padded = frame + bytes(-len(frame) % 4)
    as_ints = memoryview(padded).cast("i")  # len() counts ints, not bytes
    with pytest.raises(ProtocolError, match="trailing"):
        decode(as_ints)
    assert decode(memoryview(frame).cast("b")) == CustomerRecord(1, 2, 3)


# --------------------------------------------------------------------------- encode validation


@pytest.mark.parametrize(
    ("msg", "pattern"),
    [
        (ClientRequest(1, 9, 1), r"^request type 9 is not 1, 2 or 3$"),
        (ClientRequest(1, 0, 1), "request type 0"),
        (ClientRequest(-1, 1, 1), r"ClientRequest.req_id: -1 out of range for u64"),
        (ClientRequest(2**64, 1, 1), "ClientRequest.req_id"),
        (ClientRequest(1, 1, INT32_MAX + 1), "ClientRequest.customer_id: 2147483648 out of range for i32"),
        (ClientRequest(1, 1, 1, INT32_MIN - 1), "ClientRequest.order_number"),
        (ClientRequest(1, 1, 1.5), r"ClientRequest.customer_id: 1.5 is not an int"),
        (ClientRequest(1, 1, "3"), "ClientRequest.customer_id"),
        (LaptopInfo(1, 1, 1, 1, INT32_MAX + 1, 1), "LaptopInfo.engineer_id"),
        (CustomerRecord(1, 1, None), "CustomerRecord.last_order"),
        (RecordList(1, ((1, 2), (3,))), r"RecordList.records\[1\]"),
        (RecordList(1, ((1, 2**31),)), r"RecordList.records\[0\].last_order"),
        (RecordList(1, 5), "RecordList"),
        (ErrorReply(1, 99), "error code 99 is not an ErrorCode"),
        (ErrorReply(1, 1, 64), "node id 64 out of range 0..63 in ErrorReply.hint"),
        (ErrorReply(1, 1, -1), "ErrorReply.hint"),
        (ErrorReply(1, 1, 0, "x" * 65536), "65536 bytes of utf-8, limit 65535"),
        (ErrorReply(1, 1, 0, "\u00e9" * 40000), "80000 bytes"),
        (ErrorReply(1, 1, 0, "\ud800"), "not encodable as utf-8"),
        (ErrorReply(1, 1, 0, b"bytes"), "must be str"),
        (Append(View(1, 1), 0, 0, 0, 0), "node id 0 out of range 1..63 in Append.sender"),
        (Append(View(1, 1), 64, 0, 0, 0), "Append.sender"),
        (Append(View(1, 64), 1, 0, 0, 0), "node id 64 out of range 0..63 in Append.view.primary"),
        (Append(View(1, 1, frozenset({1, 2})), 1, 0, 0, 0), "primary 1 is also listed in its backups"),
        (Append(View(1, 1, frozenset({0})), 1, 0, 0, 0), "node id 0 out of range 1..63 in Append.view.backups"),
        (Append(View(1, 1, frozenset({True})), 1, 0, 0, 0), "is not an int"),
        (Append(View(-1, 1), 1, 0, 0, 0), "Append.view.number: -1 out of range for u32"),
        (Append(View(1, 1), 1, -1, 0, 0), "Append.prev_index"),
        (Append(View(1, 1), 1, 0, 2**32, 0), "Append.prev_view"),
        (Append(View(1, 1), 1, 0, 0, 0, ((1, 2, 3, 4),)), r"Append.entries must be a packed entry block .*, not tuple"),
        (Append(View(1, 1), 1, 0, 0, 0, b"\x01" * 17), "Append.entries of 17 bytes is not a whole number of 16-byte entries"),
        (Append(View(1, 1), 1, 0, 0, 0, None), "Append.entries must be a packed entry block"),
        (AppendReply(1, 0, True, 1), "AppendReply.sender"),
        (AppendReply(2**32, 1, True, 1), "AppendReply.view_number"),
        (AppendReply(1, 1, True, -1), "AppendReply.index"),
        (AppendReply(1, 1, True, 1, 2**64), "AppendReply.incarnation"),
        (SnapshotChunk(View(1, 1), 1, 1, 1, 5, 6, b"ab"), "offset 5 \\+ 2 bytes exceeds total 6"),
        (SnapshotChunk(View(1, 1), 1, 1, 1, 0, 6, "text"), "must be bytes-like"),
        (SnapshotChunk(View(1, 1), 1, 1, 1, 0, 2**64, b""), "SnapshotChunk.total"),
        (Ping(0, 1, 1, 1, 1, 1, 1, True), "Ping.node_id"),
        (Ping(1, 1, 1, 1, 1, 1, 1, True, ((64, 1),)), "node id 64 out of range 1..63 in Ping.add"),
        (Ping(1, 1, 1, 1, 1, 1, 1, True, ((0, 1),)), "node id 0 out of range 1..63 in Ping.add"),
        (Ping(1, 1, 1, 1, 1, 1, 1, True, ((2, 1), (2, 2))), "node 2 appears twice in Ping.add"),
        (Ping(1, 1, 1, 1, 1, 1, 1, True, (2,)), "not a \\(node id, incarnation\\) pair"),
        (Ping(1, 1, 1, 1, 1, 1, 1, True, ((2, 1, 3),)), "not a \\(node id, incarnation\\) pair"),
        (Ping(1, 1, 1, 1, 1, 1, 1, True, ((2, -1),)), r"Ping.add\[0\].incarnation: -1 out of range"),
        (Ping(1, 1, 1, 1, 1, 1, 1, True, (("2", 1),)), "is not an int"),
        (Ping(1, 1, 1, 1, 1, 1, 1, True, remove=frozenset({0})), "Ping.remove"),
        (Ping(1, 1, 1, 1, 1, 1, 1, True, ops=-1), "Ping.ops"),
        (Ping(1, 2**64, 1, 1, 1, 1, 1, True), "Ping.incarnation"),
        (ViewReply(View(1, 1), frozenset({70})), "node id 70 out of range 1..63 in ViewReply.learners"),
        (ViewReply(View(1, 1), None), "ViewReply"),
    ],
)
def test_encode_rejects_out_of_range_values(msg, pattern):
    with pytest.raises(ProtocolError, match=pattern):
        encode(msg)


@pytest.mark.parametrize("obj", [None, 1, b"\x01\x01", {"cmd": "status"}, View(1, 1), ClientRequest])
def test_encode_rejects_non_messages(obj):
    with pytest.raises(ProtocolError, match="not a wire message"):
        encode(obj)


def test_encode_accepts_plain_sets_and_int_enums():
    """Callers build Views by hand in tests; a plain set or IntEnum must not break encode."""
    msg = Append(View(3, 1, {2, 3}), 1, 0, 0, 0, bytearray(pack_entries([(3, 1, 1, 1)])))  # type: ignore[arg-type]
    back = decode(encode(msg))
    assert back.view == View(3, 1, frozenset({2, 3}))
    assert back.entries == pack_entries([(3, 1, 1, 1)])
    assert decode(encode(ErrorReply(1, ErrorCode.UNAVAILABLE))).code == 3
    assert decode(encode(SnapshotChunk(View(1, 1), 1, 1, 1, 0, 2, bytearray(b"hi")))).data == b"hi"


def test_request_large_record_list_is_bounded():
    too_many = ((1, 1),) * ((MAX_FRAME - 14) // 8 + 1)
    with pytest.raises(ProtocolError, match="exceeds MAX_FRAME"):
        encode(RecordList(1, too_many))


# --------------------------------------------------------------------------- fuzzing

SAMPLE_FRAMES = [encode(m) for m in SAMPLES if len(encode(m)) < 5000]


def _decode_or_protocol_error(data: bytes) -> None:
    """The fuzz oracle: decode either fails with a deliberate ProtocolError, or succeeds with a
    message whose encoding is exactly the input (canonical, nothing ignored)."""
    try:
        msg = decode(data)
    except ProtocolError as exc:
        assert INTERNAL_FAILURE not in str(exc), str(exc)
        return
    assert encode(msg) == bytes(data)


@given(st.binary(max_size=200))
@settings(max_examples=1000)
def test_fuzz_random_bytes(data):
    _decode_or_protocol_error(data)


@given(st.sampled_from([int(k) for k in Kind] + [0, 6, 255]), st.binary(max_size=120))
@settings(max_examples=1500)
@example(10, bytes(38))
@example(12, bytes(52))
def test_fuzz_random_bodies_behind_a_valid_header(kind, body):
    _decode_or_protocol_error(bytes([PROTOCOL_VERSION, kind]) + body)


@given(st.sampled_from(SAMPLE_FRAMES), st.data())
@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutations_of_valid_frames(frame, data):
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        if not mutated and op != "insert":
            continue
        pos = data.draw(st.integers(0, max(len(mutated) - 1, 0)))
        if op == "flip":
            mutated[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            mutated[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del mutated[pos:]
        elif op == "insert":
            mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            del mutated[pos : pos + data.draw(st.integers(1, 8))]
    _decode_or_protocol_error(bytes(mutated))


@given(messages, st.integers(0, 7), st.data())
@settings(max_examples=500)
def test_fuzz_single_bit_flips_of_generated_frames(msg, bit, data):
    frame = bytearray(encode(msg))
    pos = data.draw(st.integers(0, len(frame) - 1))
    frame[pos] ^= 1 << bit
    _decode_or_protocol_error(bytes(frame))


def _agrees_with_decode(data: bytes) -> None:
    """decode_request (the client socket's decoder) gives what decode gives for a request, and
    a ProtocolError -- decode's own one for a malformed frame -- for anything else."""
    try:
        msg = decode(data)
    except ProtocolError as exc:
        with pytest.raises(ProtocolError) as caught:
            decode_request(data)
        assert str(caught.value) == str(exc)
        return
    if type(msg) is ClientRequest:
        got = decode_request(data)
        assert got == msg and type(got.req_id) is int and type(got.type) is int
    else:
        with pytest.raises(ProtocolError, match=f"expected a ClientRequest, got a {type(msg).__name__}"):
            decode_request(data)


def test_decode_request_takes_requests_only():
    for req in (ClientRequest(7, 1, 3, 4), ClientRequest(U64_MAX, 3, INT32_MIN, INT32_MAX), ClientRequest(0, 2, -1, 0)):
        assert decode_request(encode(req)) == req
        assert decode_request(memoryview(encode(req))) == req
    with pytest.raises(ProtocolError, match="request type 4 is not 1, 2 or 3"):
        decode_request(struct.pack("<BBQiii", PROTOCOL_VERSION, 1, 1, 4, 1, 1))
    with pytest.raises(ProtocolError, match="unsupported protocol version"):
        decode_request(struct.pack("<BBQiii", PROTOCOL_VERSION + 1, 1, 1, 1, 1, 1))
    with pytest.raises(ProtocolError, match="got a LaptopInfo"):
        decode_request(encode(LaptopInfo(1, 2, 3, 1, 1, 1)))
    for frame in SAMPLE_FRAMES:
        _agrees_with_decode(frame)


_FIELD_DECODERS = ((decode_append, Append, "APPEND"), (decode_append_reply, AppendReply, "APPEND_REPLY"))


def _fields_agree_with_decode(data: bytes) -> None:
    """decode_append / decode_append_reply (the replica core's decoders) give the fields of what
    decode gives for their kind, and a ProtocolError -- decode's own one for a malformed frame --
    for anything else, and peek_sender names the sender decode finds."""
    try:
        msg = decode(data)
    except ProtocolError as exc:
        msg, error = None, str(exc)
    for fields, kind, name in _FIELD_DECODERS:
        if msg is None:
            with pytest.raises(ProtocolError) as caught:
                fields(data)
            if len(data) > 1 and data[1] == Kind[name]:
                assert str(caught.value) == error
        elif type(msg) is kind:
            assert kind(*fields(data)) == msg
        else:
            with pytest.raises(ProtocolError, match=f"expected an {name} frame"):
                fields(data)
    if isinstance(msg, (Append, AppendReply, SnapshotChunk)):
        assert peek_sender(data) == msg.sender


def test_the_field_decoders_take_their_kind_only():
    view = View(7, 1, frozenset({2, 3}))
    append = Append(view, 1, 5, 6, 4, pack_entries([(7, 1, 2, 1), (7, 3, 4, 1)]))
    assert decode_append(encode(append)) == (view, 1, 5, 6, 4, append.entries)
    assert decode_append(memoryview(encode(append)))[5] == append.entries
    assert decode_append_reply(encode(AppendReply(7, 2, True, 9, U64_MAX))) == (7, 2, True, 9, U64_MAX)
    with pytest.raises(ProtocolError, match="AppendReply.ok is 2"):
        decode_append_reply(struct.pack("<BBIBBQQ", PROTOCOL_VERSION, 11, 7, 2, 2, 9, 1))
    with pytest.raises(ProtocolError, match="expected an APPEND frame, got kind 11"):
        decode_append(encode(AppendReply(7, 2, True, 9, 1)))
    assert peek_sender(encode(ClientRequest(1, 1, 2, 3))) == 0 and peek_sender(b"\x01") == 0
    for frame in SAMPLE_FRAMES:
        _fields_agree_with_decode(frame)


def _mutated(frame: bytes, data: st.DataObject) -> bytes:
    """A sample frame with one byte changed, and cut short half of the time."""
    mutated = bytearray(frame)
    pos = data.draw(st.integers(0, len(mutated) - 1))
    mutated[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del mutated[data.draw(st.integers(0, len(mutated))):]
    return bytes(mutated)


@given(st.sampled_from(SAMPLE_FRAMES), st.data())
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_the_field_decoders_agree_with_decode(frame, data):
    _fields_agree_with_decode(_mutated(frame, data))


@given(st.sampled_from(SAMPLE_FRAMES), st.data())
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_decode_request_agrees_with_decode(frame, data):
    _agrees_with_decode(_mutated(frame, data))


# --------------------------------------------------------------------------- JSON


def test_json_round_trip():
    obj = {"cmd": "status", "node": 3, "ok": True, "nested": {"x": [1, 2.5, None]}, "t": "caf\u00e9 \U0001f4bb"}
    data = encode_json(obj)
    assert isinstance(data, bytes)
    assert b'", "' not in data and b'": ' not in data  # compact separators
    assert "caf\u00e9".encode() in data  # UTF-8, not \u escapes
    assert decode_json(data) == obj
    assert decode_json(memoryview(data)) == obj
    assert decode_json(bytearray(data)) == obj
    assert decode_json(b' {"a": 1} \n') == {"a": 1}


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"\xff\xfe{}", "not valid utf-8"),
        (b'{"a": "\xc3\x28"}', "not valid utf-8"),
        (b"", "invalid JSON"),
        (b"{", "invalid JSON"),
        (b'{"a": 1,}', "invalid JSON"),
        (b'{"a": 1} x', "invalid JSON"),
        (b"\xef\xbb\xbf{}", "invalid JSON"),  # UTF-8 BOM
        (b'{"a": NaN}', "NaN is not allowed"),
        (b'{"a": -Infinity}', "Infinity is not allowed"),
        (b"[1, 2]", "must be an object, not list"),
        (b'"text"', "must be an object, not str"),
        (b"null", "must be an object, not NoneType"),
        (b"3", "must be an object, not int"),
        (b"[" * 200_000 + b"]" * 200_000, "invalid JSON"),  # nesting deeper than the recursion limit
        (b'{"a": ' + b"9" * 5000 + b"}", "invalid JSON"),  # over the int digit limit
    ],
)
def test_decode_json_rejects(data, pattern):
    with pytest.raises(ProtocolError, match=pattern):
        decode_json(data)


@pytest.mark.parametrize(
    ("obj", "pattern"),
    [
        ([1, 2], "must be an object"),
        ("x", "must be an object"),
        ({"a": {1, 2}}, "cannot encode JSON"),
        ({"a": b"bytes"}, "cannot encode JSON"),
        ({"a": math.nan}, "cannot encode JSON"),
        ({"a": math.inf}, "cannot encode JSON"),
        ({"a": "\ud800"}, "cannot encode JSON"),
        ({(1, 2): 3}, "cannot encode JSON"),
    ],
)
def test_encode_json_rejects(obj, pattern):
    with pytest.raises(ProtocolError, match=pattern):
        encode_json(obj)


def test_encode_json_rejects_cycles_and_oversize():
    cyclic: dict = {}
    cyclic["self"] = cyclic
    with pytest.raises(ProtocolError):
        encode_json(cyclic)
    with pytest.raises(ProtocolError, match="exceeds MAX_FRAME"):
        encode_json({"blob": "x" * MAX_FRAME})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_json_round_trip_property(obj):
    assert decode_json(encode_json(obj)) == obj


@given(st.binary(max_size=200) | st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")))
@settings(max_examples=500)
def test_fuzz_decode_json_only_raises_protocol_error(data):
    try:
        obj = decode_json(data)
    except ProtocolError:
        return
    assert isinstance(obj, dict)
