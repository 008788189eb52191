"""What each way of making the same pyzmq call costs, in CPU microseconds per call.

Why it exists: a node's hot path is mostly socket calls (a client request is three frames in,
three frames out), and pyzmq's convenience helpers cost several times what the frames do:
`recv_multipart` reads RCVMORE after every frame (pyzmq builds a `SocketOption` enum member
on every `getsockopt`, where a `zmq.Frame`'s `.more` is a plain C call), `send_multipart`
loops in Python, and a drain that ends on a raised `zmq.Again` pays for building an exception.
protocol/zmq_calls.py (used by the node, the relay and the client) makes the cheapest variant of
each; this script is the evidence.

Measured on a ROUTER bound to loopback with a DEALER peer (the node's client socket layout),
messages queued beforehand so only the calls themselves are timed (process CPU time).

Usage: python bench/zmq_calls_bench.py [--messages N] [--repeats R]   -> bench/results/zmq_calls.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import zmq

from common import RESULTS, log, write_result
from protocol.zmq_calls import EVENTS, NOBLOCK, RCVMORE, SNDMORE_NOBLOCK
PAYLOAD = b"\x01\x01" + bytes(20)  # the size of a ClientRequest frame


class Pair:
    """A ROUTER (the node's side) and a DEALER (a client) on loopback."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.dealer = self.ctx.socket(zmq.DEALER)
        for sock in (self.router, self.dealer):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.dealer.connect(f"tcp://127.0.0.1:{port}")
        self.dealer.send_multipart([b"", PAYLOAD])
        self.identity = self.router.recv_multipart()[0]

    def queue_requests(self, n: int) -> None:
        for _ in range(n):
            self.dealer.send_multipart([b"", PAYLOAD])
        deadline = time.monotonic() + 10
        while self.router.getsockopt(EVENTS) & zmq.POLLIN == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # let the I/O thread move the rest into the pipe

    def drain_replies(self) -> None:
        time.sleep(0.2)
        while True:
            try:
                self.dealer.recv(NOBLOCK)
            except zmq.Again:
                return

    def close(self) -> None:
        self.router.close()
        self.dealer.close()
        self.ctx.term()


def _recv_variants(pair: Pair) -> dict[str, Callable[[int], None]]:
    router = pair.router

    def recv_multipart(n: int) -> None:
        for _ in range(n):
            router.recv_multipart(NOBLOCK)

    def recv_frames(n: int) -> None:  # three recv, RCVMORE checked twice
        recv, more = router.recv, router.getsockopt
        for _ in range(n):
            recv(NOBLOCK)
            recv(NOBLOCK)
            more(RCVMORE)
            recv(NOBLOCK)
            more(RCVMORE)

    def recv_frame_objects(n: int) -> None:  # node/server.py: the last two as zmq.Frame, `.more`
        recv = router.recv
        for _ in range(n):
            recv(NOBLOCK)
            recv(NOBLOCK, copy=False).more
            frame = recv(NOBLOCK, copy=False)
            frame.more
            frame.bytes

    return {"recv_multipart": recv_multipart, "recv 3 frames + 2 RCVMORE": recv_frames,
            "recv 1 + 2 zmq.Frame, .more": recv_frame_objects}


def _send_variants(pair: Pair) -> dict[str, Callable[[int], None]]:
    router, ident = pair.router, pair.identity

    def send_multipart(n: int) -> None:
        for _ in range(n):
            router.send_multipart([ident, b"", PAYLOAD], NOBLOCK)

    def send_frames(n: int) -> None:
        send = router.send
        for _ in range(n):
            send(ident, SNDMORE_NOBLOCK)
            send(b"", SNDMORE_NOBLOCK)
            send(PAYLOAD, NOBLOCK)

    return {"send_multipart": send_multipart, "send 3 frames": send_frames}


def _empty_variants(pair: Pair) -> dict[str, Callable[[int], None]]:
    router = pair.router

    def failed_recv(n: int) -> None:
        for _ in range(n):
            try:
                router.recv(NOBLOCK)
            except zmq.Again:
                pass

    def events(n: int) -> None:
        get = router.getsockopt
        for _ in range(n):
            get(EVENTS)

    return {"recv raising zmq.Again": failed_recv, "getsockopt(EVENTS)": events}


def _time(fn: Callable[[int], None], n: int) -> float:
    t0 = time.process_time()
    fn(n)
    return 1e6 * (time.process_time() - t0) / n


def run(messages: int, repeats: int) -> dict[str, dict]:
    pair = Pair()
    out: dict[str, dict] = {}
    try:
        for _ in range(repeats):
            for name, fn in _recv_variants(pair).items():
                pair.queue_requests(messages)
                out.setdefault(name, {"runs": []})["runs"].append(_time(fn, messages))
            for name, fn in _send_variants(pair).items():
                out.setdefault(name, {"runs": []})["runs"].append(_time(fn, messages))
                pair.drain_replies()
            for name, fn in _empty_variants(pair).items():
                out.setdefault(name, {"runs": []})["runs"].append(_time(fn, messages))
    finally:
        pair.close()
    for row in out.values():
        row["median_us"] = round(statistics.median(row["runs"]), 2)
        row["runs"] = [round(v, 2) for v in row["runs"]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000, help="calls per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON goes (default bench/results)")
    args = parser.parse_args()
    calls = run(args.messages, args.repeats)
    for name, row in calls.items():
        log(f"{name:28s} {row['median_us']:6.2f} us/call  (runs {row['runs']})")
    path = write_result("zmq_calls", {"settings": {"messages": args.messages, "repeats": args.repeats,
                                                   "clock": "process CPU time"}, "calls_us": calls}, args.out_dir)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
