"""The cheapest way to make the pyzmq calls on the hot path, in one place.

Measured with bench/zmq_calls_bench.py (µs per call on the 2-core machine): pyzmq's flags are
IntFlag members, and `NOBLOCK | SNDMORE` goes through the enum machinery on every frame, so the
flags here are plain ints; `recv_multipart` costs about twice and `send_multipart` three times
what the same frames cost one `recv`/`send` at a time; a drain that ends on a raised `zmq.Again`
pays ~7 µs for the exception where reading EVENTS costs ~3.  The node, the supervisor (its ping
traffic), the bench relay (which must make exactly the node's calls to stay a fair limit) and the
client all use these.
"""

from __future__ import annotations

import zmq

NOBLOCK = int(zmq.NOBLOCK)
SNDMORE_NOBLOCK = int(zmq.SNDMORE) | NOBLOCK
RCVMORE = int(zmq.RCVMORE)
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)


def has_message(sock: zmq.Socket) -> bool:
    """Whether a message is waiting, without the cost of a failed `recv`."""
    return bool(sock.getsockopt(EVENTS) & POLLIN)  # type: ignore[operator]  # EVENTS is an int option


def recv_pending(sock: zmq.Socket, limit: int) -> list[bytes]:
    """Up to `limit` single-frame messages that are waiting.  After the first one it asks
    EVENTS rather than trying another `recv`: when not loaded a turn usually brings one message,
    and this spares it the raised `zmq.Again`.  A list, not a generator: a backup's critical path
    runs through here, and a generator cost a resumption per message."""
    recv = sock.recv
    out: list[bytes] = []
    for i in range(limit):
        if i == 1 and not has_message(sock):
            break
        try:
            out.append(recv(NOBLOCK))
        except zmq.Again:
            break
    return out


def send_routed(sock: zmq.Socket, identity: bytes, payload: bytes) -> None:
    """[identity, b"", payload] on a ROUTER (the REQ envelope), frame by frame."""
    send = sock.send
    send(identity, SNDMORE_NOBLOCK)
    send(b"", SNDMORE_NOBLOCK)
    send(payload, NOBLOCK)


def recv_message(sock: zmq.Socket) -> list[bytes]:
    """One whole multi-frame message, frame by frame (raises zmq.Again when none is waiting).
    `recv_multipart` asks RCVMORE after every frame, which builds an enum member inside pyzmq
    each time; a `zmq.Frame` carries the same bit as `.more`.  The frames of a message arrive
    together, so only the first `recv` can find nothing."""
    recv = sock.recv
    frames: list[bytes] = []
    while True:
        frame = recv(NOBLOCK, copy=False)
        frames.append(frame.bytes)
        if not frame.more:
            return frames


def send_message(sock: zmq.Socket, frames: list[bytes]) -> None:
    """A multi-frame message, frame by frame with plain-int flags (`send_multipart` costs about
    three times as much: see the module docstring)."""
    send = sock.send
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        send(frame, NOBLOCK if i == last else SNDMORE_NOBLOCK)
