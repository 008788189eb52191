"""Client library: many sequential sessions multiplexed over one DEALER socket per node.

Why this shape:

* A node's client socket is a ROUTER that expects REQ envelope framing (`[b"", payload]`).  A REQ
  socket that never gets its reply is stuck and must be torn down; a DEALER speaking the same
  framing has no such state, so a retry (Lazy Pirate) is simply another send.
* One DEALER per node, each connected only to that node, so *we* choose which node an attempt goes
  to (a DEALER connected to several peers would round-robin behind our back).
* `IMMEDIATE=1` plus non-blocking sends turn "not connected to that node" into an immediate
  `zmq.Again`, so a dead node costs nothing instead of a whole attempt timeout.
* Every attempt of one operation carries the SAME `req_id`.  A late reply to an earlier attempt
  therefore completes the operation, which is correct: every attempt happens inside the
  operation's lifetime and orders are idempotent by `(customer_id, order_number)`.
* Every DEALER has a socket monitor reporting `EVENT_DISCONNECTED`.  When the connection to a
  node drops (its process died: the kernel closes its sockets), the operations waiting on that
  node are retried on the next node at once, exactly as an attempt timeout would do, instead of
  waiting out `attempt_timeout` for a reply that cannot come (with `IMMEDIATE=1` ZeroMQ drops
  what was queued for a connection that is gone).  A paused or partitioned node does not
  disconnect: the timeout still covers it.  ZeroMQ keeps reconnecting on its own; the monitor
  only watches.
* Everything runs in one thread around one `zmq.Poller`, so thousands of concurrent sessions cost
  no threads and the engine stays deterministic given the seed (apart from the network).
* The per-operation path is written for CPU, because the client process shares a 2-core machine
  with the cluster it measures: requests are packed with one precompiled `struct` (checked
  against the codec at import), frames are sent and received one by one with plain-int flags
  (`send_multipart`/`recv_multipart` cost 2-3x as much, see bench/zmq_calls_bench.py), a drain
  asks `EVENTS` instead of ending on a raised `zmq.Again`, and attempt timers, which are armed
  in time order, go to a FIFO instead of the heap.  bench/client_bench.py measures the result.
* First attempts are not sent the moment an operation starts but together at the end of the
  loop turn (`_flush_sends`): a message that finds ZeroMQ's I/O thread asleep costs ~20 us of
  CPU to wake it, one of a burst ~3 us.  Replies are read as `zmq.Frame`s, whose `more` is
  free where asking the socket for RCVMORE costs ~2 us a call.

`loadgen` imports only `protocol`; it must never import `node` or `orchestrator`.
"""

from __future__ import annotations

import heapq
import math
import random
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import zmq

from protocol import codec
from protocol.messages import (
    PROTOCOL_VERSION,
    ClientReply,
    ClientRequest,
    CustomerRecord,
    ErrorCode,
    ErrorReply,
    LaptopInfo,
    RecordList,
    RequestType,
)
from protocol.zmq_calls import NOBLOCK, SNDMORE_NOBLOCK, has_message

if TYPE_CHECKING:  # only for annotations: the client must work even while config evolves
    from protocol.config import ClusterConfig

__all__ = ["Client", "ClientEngine", "Op", "OpResult", "Session", "Wait", "error_reason"]

# (request type, customer_id, order_number -- or hi for a bulk read)
Op = tuple[int, int, int]


@dataclass(slots=True, unsafe_hash=True)  # a value, not frozen: see below
class OpResult:
    """The outcome of one operation, after all its attempts.

    `latency_ns` runs from the first attempt to completion, so it includes retries and back-off:
    that is the latency a user of the service sees.  `node` is the node that answered (or the last
    node tried when the operation failed; 0 when no attempt was made).

    `start_ns` and `end_ns` (`time.monotonic_ns()`) bracket the operation: taken before its first
    attempt was sent and after its outcome was known, so the real operation happened inside
    `[start_ns, end_ns]` -- what a linearizability checker needs.  0 when not known (results
    made by hand in tests).

    A value that nothing changes after it is built, but not `frozen`: one is built per operation
    and a frozen dataclass sets each field through `object.__setattr__` (2.5 us against 0.35 us
    per object, timeit), as for the per-order messages of protocol/messages.py.  Equality and
    hashing are a value's (`unsafe_hash`, safe because it is never mutated)."""

    ok: bool
    reply: ClientReply | None
    error: str | None
    latency_ns: int
    attempts: int
    redirects: int
    node: int
    start_ns: int = 0
    end_ns: int = 0


@dataclass(slots=True, unsafe_hash=True)  # a value, not frozen: built once per open-loop request
class Wait:
    """Yielded by a session instead of an operation: resume me (with `None`) at `until`
    (`time.monotonic()` seconds).  This is how an open-loop session waits for its request's
    scheduled start without a thread; waiting costs one timer, no socket.

    Not `frozen` for the same reason as `OpResult`: the open loop builds one per request, and a
    frozen dataclass costs twice as much to build (0.73 against 0.36 us, timeit)."""

    until: float


# A session yields operations one at a time and is sent each operation's result (or yields a
# `Wait` and is resumed with None when it is due).
Session = Generator["Op | Wait", "OpResult | None", None]

STOPPED_ERROR = "stopped: max duration reached"
# pyzmq's flags are IntFlag members; combining or passing them goes through the enum machinery on
# every call, which showed in profiles of the open loop.  A plain int does not.
_EVENT_DISCONNECTED = int(zmq.EVENT_DISCONNECTED)
# A monitor event's first frame: event id u16, value u32, native order (libzmq >= 4).
_MONITOR_EVENT = struct.Struct("=HI")

# The ClientRequest layout (protocol/codec.py), packed directly: `codec.encode(ClientRequest(...))`
# costs 1.1 us per request against 0.15 us for the pack.  Checked against the codec right here,
# so a change of the wire format fails at import instead of sending garbage.
_REQUEST = struct.Struct("<BBQiii")  # version, kind, req_id, type, customer_id, order_number
_KIND_CLIENT_REQUEST = int(codec.Kind.CLIENT_REQUEST)
if (_REQUEST.pack(PROTOCOL_VERSION, _KIND_CLIENT_REQUEST, 2**63 + 5, 3, -7, 2**31 - 1)
        != codec.encode(ClientRequest(2**63 + 5, 3, -7, 2**31 - 1))):
    raise ImportError("loadgen.client: the ClientRequest wire layout no longer matches protocol.codec")

# Which successful reply answers which request type; anything else is a bad frame.
_REPLY_FOR: dict[int, type] = {
    RequestType.ORDER: LaptopInfo,
    RequestType.READ: CustomerRecord,
    RequestType.BULK_READ: RecordList,
}
_REPLY_TYPES = frozenset({LaptopInfo, CustomerRecord, RecordList, ErrorReply})
_FATAL_ERRORS = frozenset({ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE, ErrorCode.PROTOCOL, ErrorCode.STALE_ORDER})


def error_reason(error: str | None) -> str:
    """The category of an `OpResult.error` (the text before the first colon).

    Error strings are "<reason>: <detail>" so that load reports can count failures by reason
    without one bucket per attempt count or node id."""
    if not error:
        return "unknown"
    return error.split(":", 1)[0].strip() or "unknown"


class _Pending:
    """The in-flight state of one operation (internal, mutable)."""

    __slots__ = (
        "session", "op", "req_id", "payload", "reply_type", "start_ns", "deadline", "attempts",
        "redirects", "node", "in_flight", "timer_seq", "backoff", "fast_fails", "next_node",
        "last_error",
    )

    def __init__(self, session: Session, op: Op, req_id: int, payload: bytes, reply_type: type,
                 start_ns: int, deadline: float, backoff: float) -> None:
        self.session = session
        self.op = op
        self.req_id = req_id
        self.payload = payload
        self.reply_type = reply_type  # the successful reply this request type expects
        self.start_ns = start_ns
        self.deadline = deadline  # time.monotonic() seconds
        self.attempts = 0
        self.redirects = 0
        self.node = 0  # node of the current (or last) attempt
        self.in_flight = False  # True: waiting for a reply; False: backing off
        self.timer_seq = -1  # only the timer entry with this seq is live; -1: finished
        self.backoff = backoff  # next back-off delay before jitter
        self.fast_fails = 0  # refusals/redirects since the last wait; bounds spinning
        self.next_node = 0  # where to go when the back-off ends
        self.last_error = ""


# A timer entry: (when in time.monotonic() seconds, seq, operation).  `seq` is unique, so an
# operation is never compared; an entry is live only while its seq is the operation's timer_seq.
_Timer = tuple[float, int, _Pending]


class ClientEngine:
    """Drives many sequential sessions concurrently in one thread with one poller.

    Not thread-safe: use one engine per thread.  Sockets persist across `run()` calls, so a late
    reply to an operation of an earlier run is recognised as stale (its req_id is no longer
    outstanding) and ignored."""

    BACKOFF_MIN = 0.010
    BACKOFF_MAX = 0.200
    # Bounded, but far above what one engine has in flight per node, so `zmq.Again` keeps meaning
    # "not connected" in practice; if it is ever hit the op just moves on, which is still safe.
    SNDHWM = 10_000
    RCVHWM = 10_000
    MAX_DRAIN = 1_000  # messages read from one socket per loop turn, so no socket starves others
    # Operations whose first attempts are sent together (see `_flush_sends`): enough to share
    # the I/O thread's wake-up, few enough that the first of them is not held back noticeably.
    SEND_BATCH = 64
    # Right after `connect()` every socket refuses sends until its TCP/ZMTP handshake is done
    # (IMMEDIATE=1).  For this long after construction a refusal means "not yet", so the op
    # waits for that node in short steps instead of wandering off to a non-primary; after it,
    # a refusal means "not connected" and costs nothing.  A dead node costs at most this once.
    # A node whose connection dropped is not "still connecting": it is held (below) until after
    # the grace is over.
    CONNECT_GRACE = 0.1
    CONNECT_POLL = 0.001

    def __init__(
        self,
        nodes: Sequence[tuple[int, str]],
        *,
        attempt_timeout: float,
        deadline: float,
        context: zmq.Context | None = None,
        seed: int = 0,
    ) -> None:
        ids = [int(node_id) for node_id, _ in nodes]
        if not ids:
            raise ValueError("ClientEngine needs at least one node")
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate node ids in {ids}")
        if any(i <= 0 for i in ids):
            raise ValueError(f"node ids must be positive, got {ids}")
        if not attempt_timeout > 0:
            raise ValueError(f"attempt_timeout must be > 0 seconds, got {attempt_timeout}")
        if not deadline > 0:
            raise ValueError(f"deadline must be > 0 seconds, got {deadline}")
        self.attempt_timeout = float(attempt_timeout)
        self.deadline = float(deadline)
        self._ids: list[int] = sorted(ids)
        self._next_of = {n: self._ids[(k + 1) % len(self._ids)] for k, n in enumerate(self._ids)}
        # Jitter comes from a seeded generator so a run's retry pattern is reproducible; req_ids
        # come from the OS so two clients with the same seed never share ids.
        self._rng = random.Random(seed)
        self._req_base = secrets.randbits(32) << 32
        self._req_counter = 0
        self._primary = self._ids[0]
        self.stats: dict[str, int] = {
            "attempts": 0, "redirects": 0, "timeouts": 0, "stale_replies": 0, "bad_frames": 0,
            "disconnects": 0,
        }
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self._socks: dict[int, zmq.Socket] = {}
        self._node_of: dict[zmq.Socket, int] = {}
        self._monitor_of: dict[zmq.Socket, int] = {}  # monitor PAIR socket -> node id
        self._poller = zmq.Poller()
        self._closed = False
        self._grace_until = time.monotonic() + self.CONNECT_GRACE
        # After a node's connection drops, sends to it are refused here until this time.  libzmq
        # reports the drop just before it retires the connection's pipe, so a send made at once
        # could still be queued on the dead connection and silently lost (an attempt timeout
        # wasted).  Holding the node for one reconnect interval closes that window and costs
        # nothing: no new connection can exist sooner (libzmq waits at least RECONNECT_IVL).
        self._held_until: dict[int, float] = {n: 0.0 for n in self._ids}
        self._hold = 0.1
        try:
            for node_id, endpoint in sorted(nodes, key=lambda ne: int(ne[0])):
                sock = self._ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.IMMEDIATE, 1)
                sock.setsockopt(zmq.SNDHWM, self.SNDHWM)
                sock.setsockopt(zmq.RCVHWM, self.RCVHWM)
                self._socks[int(node_id)] = sock
                self._node_of[sock] = int(node_id)
                self._hold = max(0.0, sock.getsockopt(zmq.RECONNECT_IVL) / 1000.0)
                # Only disconnections: the events that would fire every reconnect interval for a
                # dead node (CONNECT_RETRIED, ...) would cost a wake-up each and tell us nothing.
                monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
                monitor.setsockopt(zmq.LINGER, 0)
                self._monitor_of[monitor] = int(node_id)
                sock.connect(endpoint)
                self._poller.register(sock, zmq.POLLIN)
                self._poller.register(monitor, zmq.POLLIN)
        except BaseException:
            self.close()
            raise
        # Per-run state.
        self._active: dict[int, _Pending] = {}
        # Timers live in two places: `_fifo` takes every timer not earlier than its last entry,
        # which is every attempt timer in steady state (they are armed at now + attempt_timeout
        # in time order), at O(1); the rest (back-offs, connect polls, attempts clipped by an
        # earlier deadline) go to the heap.  Both are ordered, so the earliest is at a front.
        self._fifo: deque[_Timer] = deque()
        self._timers: list[_Timer] = []
        self._seq = 0
        self._ready: deque[tuple[Session, Op | None, OpResult | None]] = deque()
        self._parked: list[tuple[float, int, Session]] = []  # sessions that yielded Wait
        self._unsent: list[_Pending] = []  # started this turn, first attempt not sent yet
        self._stopping = False

    # ------------------------------------------------------------------ public

    @property
    def primary(self) -> int:
        """The node currently believed to be primary (where new operations go first)."""
        return self._primary

    @property
    def node_ids(self) -> tuple[int, ...]:
        return tuple(self._ids)

    def run(
        self,
        sessions: Iterable[Session],
        *,
        max_duration: float,
        on_result: Callable[[Op, OpResult], None] | None = None,
    ) -> None:
        """Run every session to completion, or until `max_duration` seconds have passed.

        All sessions start at once; each has at most one operation outstanding.  A session may
        yield `Wait(until)` instead of an operation to be resumed at that time.  When time runs
        out, outstanding operations end as failed (`"stopped: max duration reached"`); each
        session is still sent that result (so it sees every result it asked for) and is then
        closed; waiting sessions are closed.  `on_result(op, result)` is called for every
        finished operation before its session is resumed.  Exceptions from sessions or
        `on_result` propagate."""
        if self._closed:
            raise RuntimeError("ClientEngine is closed")
        stop_at = time.monotonic() + max(0.0, float(max_duration))
        self._stopping = False
        finished = False
        # Disconnections reported since the last run are taken now, while nothing is in flight:
        # they hold their node (see `_held_until`) but hurry no attempt.  Taken later, they would
        # hurry attempts of this run that went out on a newer connection.
        for monitor in self._monitor_of:
            self._on_monitor(monitor)
        try:
            for session in sessions:
                self._ready.append((session, None, None))
            node_of = self._node_of
            poll = self._poller.poll
            while True:
                self._pump_ready(on_result, stop_at)
                now = time.monotonic()
                if (not self._active and not self._parked) or now >= stop_at:
                    break
                self._fire_timers(now)
                self._wake_parked(now)
                if self._ready:
                    continue
                wake = stop_at
                if self._fifo and self._fifo[0][0] < wake:
                    wake = self._fifo[0][0]
                if self._timers and self._timers[0][0] < wake:
                    wake = self._timers[0][0]
                if self._parked and self._parked[0][0] < wake:
                    wake = self._parked[0][0]
                monitors: list[zmq.Socket] = []
                for sock, _ in poll(max(0, math.ceil((wake - now) * 1000))):
                    node = node_of.get(sock)
                    if node is None:
                        monitors.append(sock)
                    else:
                        self._drain(sock, node)
                # After the replies: one that arrived just before its node went away completes
                # its operation instead of being retried elsewhere.
                for monitor in monitors:
                    self._on_monitor(monitor)
            # Out of time (or done): whatever is still outstanding ends now, sessions are closed.
            self._stopping = True
            for p in list(self._active.values()):
                self._fail(p, STOPPED_ERROR)
            self._pump_ready(on_result, None)
            for _, _, session in self._parked:
                session.close()
            finished = True
        finally:
            if not finished:
                # An exception escaped: close what we can so nothing dangles into the next run.
                for session, _, _ in self._ready:
                    session.close()
                for p in self._active.values():
                    p.session.close()
                for _, _, session in self._parked:
                    session.close()
            self._active.clear()
            self._ready.clear()
            self._fifo.clear()
            self._timers.clear()
            self._parked.clear()
            self._unsent = []
            self._stopping = False

    def close(self) -> None:
        """Close the monitors and sockets (LINGER=0: nothing queued survives) and our own
        context.  The monitors first: each is stopped on its socket before its PAIR end is
        closed, so no socket is left open that would make `Context.term()` wait."""
        if self._closed:
            return
        self._closed = True
        for monitor, node_id in self._monitor_of.items():
            try:
                self._poller.unregister(monitor)
            except KeyError:
                pass
            sock = self._socks.get(node_id)
            if sock is not None:
                try:
                    sock.disable_monitor()
                except zmq.ZMQError:
                    pass
            monitor.close(linger=0)
        self._monitor_of.clear()
        for sock in self._socks.values():
            try:
                self._poller.unregister(sock)
            except KeyError:
                pass
            sock.close(linger=0)
        self._socks.clear()
        self._node_of.clear()
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> ClientEngine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ sessions

    def _pump_ready(self, on_result: Callable[[Op, OpResult], None] | None,
                    stop_at: float | None) -> None:
        """Feed finished results to their sessions and start the next operations.

        Iterative (a queue, not recursion) so a session whose operations fail instantly cannot
        blow the stack; checks the clock every so often so it stays bounded in time.  The first
        attempts of the operations started here go out together (`_flush_sends`) every
        `SEND_BATCH` operations and before returning (not when a session raised: `run` then
        drops what was not sent)."""
        self._pump(on_result, stop_at)
        if self._unsent:
            self._flush_sends()

    def _pump(self, on_result: Callable[[Op, OpResult], None] | None,
              stop_at: float | None) -> None:
        ready = self._ready
        popleft = ready.popleft
        monotonic = time.monotonic
        batch = self.SEND_BATCH
        steps = 0
        while ready:
            steps += 1
            if stop_at is not None and steps % 256 == 0 and monotonic() >= stop_at:
                return
            session, op, result = popleft()
            if result is None:
                if self._stopping:
                    session.close()  # never started: nothing to tell it
                    continue
            elif on_result is not None:
                on_result(op, result)  # type: ignore[arg-type]  # op is set with every result
            try:
                nxt = next(session) if result is None else session.send(result)
            except StopIteration:
                continue
            if self._stopping or (stop_at is not None and monotonic() >= stop_at):
                session.close()
                continue
            if type(nxt) is Wait:
                self._seq += 1
                heapq.heappush(self._parked, (float(nxt.until), self._seq, session))
                continue
            self._start(session, nxt)  # type: ignore[arg-type]  # not a Wait: an Op
            if len(self._unsent) >= batch:  # not a local: the flush puts a new list there
                self._flush_sends()

    def _wake_parked(self, now: float) -> None:
        """Sessions whose `Wait` is over go back to the ready queue (resumed with None)."""
        parked = self._parked
        while parked and parked[0][0] <= now:
            _, _, session = heapq.heappop(parked)
            self._ready.append((session, None, None))

    def _start(self, session: Session, op: Op) -> None:
        self._req_counter = counter = (self._req_counter + 1) & 0xFFFFFFFF
        req_id = self._req_base | counter
        start_ns = time.monotonic_ns()
        now = start_ns * 1e-9  # the same clock as time.monotonic(), one call fewer
        try:
            req_type, customer_id, number = op
            reply_type = _REPLY_FOR.get(req_type)
            if reply_type is None:
                raise ValueError(f"request type {req_type!r} is not 1, 2 or 3")
            payload = _REQUEST.pack(PROTOCOL_VERSION, _KIND_CLIENT_REQUEST, req_id,
                                    int(req_type), int(customer_id), int(number))
        except (ValueError, TypeError, struct.error, OverflowError) as e:
            end_ns = time.monotonic_ns()
            self._ready.append((session, op, OpResult(
                False, None, f"invalid request: {op!r}: {e}", end_ns - start_ns, 0, 0, 0,
                start_ns, end_ns)))
            return
        p = _Pending(session, op, req_id, payload, reply_type, start_ns, now + self.deadline,
                     self.BACKOFF_MIN)
        self._active[req_id] = p
        self._unsent.append(p)  # sent by `_flush_sends`, with the others started this turn

    def _flush_sends(self) -> None:
        """Send the first attempts of the operations started since the last flush, back to back.

        Why batch: a message sent to a socket whose ZeroMQ I/O thread is idle costs a wake-up
        (an eventfd `write` here, then the I/O thread's own wake-up and one TCP `send` per
        message); an open loop that sent each request the moment it started paid that for
        nearly every request (the eventfd write alone was a quarter of its main thread in
        py-spy).  Sent back to back, the messages of one turn share the wake-up and go out in
        fewer TCP segments, which also spares the node some reads.  A batch is at most
        `SEND_BATCH` operations of one loop turn, so none waits long; `start_ns` (and the
        deadline) are taken here, just before the batch's first send, so an operation's service
        time never includes that wait while an open loop's latency from the intended start and
        its lag do.  Holding operations across turns for bigger batches (a "linger") was tried:
        at 18k requests/s it cut flushes 3x but added ~1.7 ms of lag for no measurable CPU, the
        turn's batch being ~12 requests already.  An operation that is no longer outstanding
        (defensive: nothing ends one between its start and the flush) is skipped."""
        unsent = self._unsent
        self._unsent = []
        active = self._active
        now_ns = time.monotonic_ns()
        now = now_ns * 1e-9  # the same clock as time.monotonic()
        deadline = now + self.deadline
        for p in unsent:
            p.start_ns = now_ns
            p.deadline = deadline
        node = self._primary
        rest: list[_Pending] = unsent
        if now >= self._held_until[node]:
            # The usual case, in a tight loop so the messages really leave back to back: the
            # frames first, the bookkeeping `_send` would do after them.  A refusal leaves the
            # rest to `_send` (next node, connect grace, back-off).
            send = self._socks[node].send
            sent: list[_Pending] = []
            rest = []
            for i, p in enumerate(unsent):
                if active.get(p.req_id) is not p:
                    continue
                try:
                    send(b"", SNDMORE_NOBLOCK)
                    send(p.payload, NOBLOCK)
                except zmq.Again:
                    rest = unsent[i:]
                    break
                sent.append(p)
            self.stats["attempts"] += len(sent)
            when = now + self.attempt_timeout
            set_timer = self._set_timer
            for p in sent:
                p.attempts += 1
                p.node = node
                p.in_flight = True
                set_timer(p, when)
        for p in rest:
            if active.get(p.req_id) is p:
                self._send(p, self._primary, now)

    # ------------------------------------------------------------------ attempts

    def _send(self, p: _Pending, node: int, now: float) -> None:
        """Send an attempt to `node`; a refused send moves on to the next node at once.

        After as many refusals/redirects in a row as there are nodes, back off instead, so a
        cluster that is entirely down (or redirecting in circles) is not spun on.  The two frames
        go out as two `send` calls (3 against 9.5 us for `send_multipart`, measured on loopback);
        ZeroMQ accepts or refuses a message at its first frame, and drops the rest of one whose
        connection vanished in between, so a refusal never leaves half a message queued."""
        n = len(self._ids)
        held = self._held_until
        for _ in range(n):
            if p.fast_fails >= n:
                break
            p.attempts += 1
            self.stats["attempts"] += 1
            p.node = node
            if now >= held[node]:
                sock = self._socks[node]
                try:
                    sock.send(b"", SNDMORE_NOBLOCK)
                    sock.send(p.payload, NOBLOCK)
                except zmq.Again:
                    pass
                else:
                    p.in_flight = True
                    self._set_timer(p, now + self.attempt_timeout)
                    return
                if now < self._grace_until:
                    # Probably still connecting: not an attempt yet; look again very soon.
                    p.attempts -= 1
                    self.stats["attempts"] -= 1
                    p.in_flight = False
                    p.next_node = node
                    self._set_timer(p, min(now + self.CONNECT_POLL, self._grace_until))
                    return
            # Refused: by ZeroMQ (not connected) or here (its connection has just dropped).
            p.fast_fails += 1
            p.last_error = f"node {node} not connected"
            node = self._next_of[node]
        self._back_off(p, node, now)

    def _back_off(self, p: _Pending, next_node: int, now: float) -> None:
        """Wait (exponential, jittered, capped) before retrying at `next_node`."""
        p.in_flight = False
        p.fast_fails = 0
        delay = p.backoff * (0.5 + 0.5 * self._rng.random())
        p.backoff = min(p.backoff * 2, self.BACKOFF_MAX)
        p.next_node = next_node
        self._set_timer(p, now + delay)

    def _set_timer(self, p: _Pending, when: float) -> None:
        """(Re-)arm the operation's one timer, never past its deadline."""
        if when > p.deadline:
            when = p.deadline
        self._seq += 1
        p.timer_seq = seq = self._seq
        fifo = self._fifo
        if not fifo or fifo[-1][0] <= when:
            fifo.append((when, seq, p))
        else:
            heapq.heappush(self._timers, (when, seq, p))

    def _fire_timers(self, now: float) -> None:
        budget = 10_000  # bounded per turn; the rest fire on the next turn
        fifo, heap = self._fifo, self._timers
        while budget > 0:
            if fifo and fifo[0][0] <= now and (not heap or fifo[0][0] <= heap[0][0]):
                _, seq, p = fifo.popleft()
            elif heap and heap[0][0] <= now:
                _, seq, p = heapq.heappop(heap)
            else:
                return
            budget -= 1
            if p.timer_seq != seq:
                continue  # the operation finished or re-armed its timer since
            if p.in_flight:
                self.stats["timeouts"] += 1
                self._attempt_lost(p, now, f"no reply from node {p.node}")
            elif now >= p.deadline:
                self._fail(p, f"deadline exceeded: {p.attempts} attempts, last: {p.last_error}")
            else:
                self._send(p, p.next_node, now)

    def _attempt_lost(self, p: _Pending, now: float, why: str) -> None:
        """The current attempt will get no answer (timed out, or its connection dropped): try the
        next node at once with the same req_id, or fail if the deadline has passed.  A late
        reply to this attempt still completes the operation."""
        p.in_flight = False
        p.last_error = why
        node = p.node
        if self._primary == node:
            # Let new operations stop starting at a node that does not answer.
            self._primary = self._next_of[node]
        if now >= p.deadline:
            self._fail(p, f"deadline exceeded: {p.attempts} attempts, last: {why}")
            return
        p.fast_fails = 0
        self._send(p, self._next_of[node], now)

    # ------------------------------------------------------------------ connections

    def _on_monitor(self, monitor: zmq.Socket) -> None:
        """Read a node's monitor events.  If its connection dropped: hold the node (no sends to
        it for one reconnect interval, see `_held_until`) and hurry the attempts waiting on it --
        only those: an attempt waiting on another node is not affected."""
        node = self._monitor_of[monitor]
        dropped = False
        for _ in range(self.MAX_DRAIN):
            if not has_message(monitor):
                break
            frames = monitor.recv_multipart(NOBLOCK)
            if (len(frames) == 2 and len(frames[0]) == _MONITOR_EVENT.size
                    and _MONITOR_EVENT.unpack(frames[0])[0] == _EVENT_DISCONNECTED):
                dropped = True
        if not dropped:
            return
        self.stats["disconnects"] += 1
        now = time.monotonic()
        self._held_until[node] = now + self._hold
        for p in [p for p in self._active.values() if p.in_flight and p.node == node]:
            self._attempt_lost(p, now, f"node {node} disconnected")

    # ------------------------------------------------------------------ replies

    def _drain(self, sock: zmq.Socket, node: int) -> None:
        """Read the replies waiting on one node's socket, frame by frame.

        A reply is [b"", payload].  Each frame is received as a `zmq.Frame` (`copy=False`),
        whose `more` attribute says whether another frame follows: asking the socket for RCVMORE
        instead costs ~2 us a call (pyzmq looks the option up in an enum every time), twice per
        reply, which made this the costliest part of the reply path in open-loop profiles
        (3.6 against 5.6 us per reply, timeit over inproc).  A message of any other shape is
        still consumed whole and counted as a bad frame.  After the first message EVENTS says
        whether more are waiting, so the usual turn (one reply per socket when lightly loaded)
        raises no `zmq.Again` (~7 us each)."""
        recv = sock.recv
        for i in range(self.MAX_DRAIN):
            if i == 1 and not has_message(sock):
                return
            try:
                delimiter = recv(NOBLOCK, False)
            except zmq.Again:
                return
            if not delimiter.more:
                self.stats["bad_frames"] += 1  # one frame: no envelope
                continue
            frame = recv(NOBLOCK, False)
            if frame.more:
                more = True
                while more:
                    more = recv(NOBLOCK, False).more
                self.stats["bad_frames"] += 1  # more than two frames
                continue
            if len(delimiter):
                self.stats["bad_frames"] += 1
                continue
            self._on_reply(node, frame.bytes)

    def _on_reply(self, node: int, payload: bytes) -> None:
        try:
            msg = codec.decode(payload)
        except ValueError:  # ProtocolError is a ValueError; decode raises nothing else
            self.stats["bad_frames"] += 1
            return
        kind = type(msg)
        if kind not in _REPLY_TYPES:
            self.stats["bad_frames"] += 1
            return
        p = self._active.get(msg.req_id)  # type: ignore[union-attr]  # every reply has one
        if p is None:
            self.stats["stale_replies"] += 1
            return
        if kind is ErrorReply:
            if not (p.in_flight and p.node == node):
                # An error from an attempt we already gave up on says nothing about the current
                # one; acting on it would restart an attempt that may be about to succeed.
                self.stats["stale_replies"] += 1
                return
            self._on_error(p, node, msg)  # type: ignore[arg-type]
            return
        if kind is not p.reply_type:
            self.stats["bad_frames"] += 1
            return
        # Only the primary answers successfully, so whoever did is the best guess for the next op.
        self._primary = node
        end_ns = time.monotonic_ns()
        self._finish(p, OpResult(True, msg, None, end_ns - p.start_ns,  # type: ignore[arg-type]
                                 p.attempts, p.redirects, node, p.start_ns, end_ns))

    def _on_error(self, p: _Pending, node: int, err: ErrorReply) -> None:
        now = time.monotonic()
        p.in_flight = False
        try:
            code = ErrorCode(err.code)
        except ValueError:
            code = None
        name = code.name if code is not None else f"ERROR_{err.code}"
        if code is None or code in _FATAL_ERRORS:
            end_ns = time.monotonic_ns()
            self._finish(p, OpResult(False, err, f"{name}: {err.message or 'rejected by node'}",
                                     end_ns - p.start_ns, p.attempts, p.redirects, node,
                                     p.start_ns, end_ns))
            return
        p.last_error = f"{name} from node {node}" + (f" ({err.message})" if err.message else "")
        if now >= p.deadline:
            self._fail(p, f"deadline exceeded: {p.attempts} attempts, last: {p.last_error}")
            return
        if code == ErrorCode.NOT_PRIMARY and err.hint in self._socks and err.hint != node:
            p.redirects += 1
            self.stats["redirects"] += 1
            p.fast_fails += 1
            self._primary = err.hint
            self._send(p, err.hint, now)
            return
        # UNAVAILABLE, OVERLOADED, or NOT_PRIMARY without a usable hint.
        if self._primary == node and code == ErrorCode.NOT_PRIMARY:
            self._primary = self._next_of[node]
        self._back_off(p, self._next_of[node], now)

    # ------------------------------------------------------------------ completion

    def _fail(self, p: _Pending, error: str) -> None:
        end_ns = time.monotonic_ns()
        self._finish(p, OpResult(False, None, error, end_ns - p.start_ns, p.attempts,
                                 p.redirects, p.node, p.start_ns, end_ns))

    def _finish(self, p: _Pending, result: OpResult) -> None:
        self._active.pop(p.req_id, None)
        p.timer_seq = -1
        self._ready.append((p.session, p.op, result))


class Client:
    """Blocking, one-operation-at-a-time client for the CLI and tests.

    Built on `ClientEngine` with a single session per call, so the CLI exercises exactly the retry
    and failover code the load generator does."""

    def __init__(self, config: ClusterConfig, *, attempt_timeout: float | None = None,
                 deadline: float | None = None, seed: int = 0) -> None:
        if attempt_timeout is None:
            attempt_timeout = config.client.attempt_timeout_ms / 1000.0
        if deadline is None:
            deadline = config.client.deadline_ms / 1000.0
        nodes = [(n.id, n.client_endpoint) for n in config.nodes]
        self._engine = ClientEngine(nodes, attempt_timeout=attempt_timeout, deadline=deadline,
                                    seed=seed)

    @property
    def engine(self) -> ClientEngine:
        return self._engine

    def order(self, customer_id: int, order_number: int) -> OpResult:
        return self._call((int(RequestType.ORDER), customer_id, order_number))

    def read(self, customer_id: int) -> OpResult:
        return self._call((int(RequestType.READ), customer_id, 0))

    def bulk_read(self, lo: int, hi: int) -> OpResult:
        return self._call((int(RequestType.BULK_READ), lo, hi))

    def _call(self, op: Op) -> OpResult:
        box: list[OpResult] = []

        def session() -> Session:
            box.append((yield op))

        # The deadline ends the op; the margin only guards against a bug holding it longer.
        self._engine.run([session()], max_duration=self._engine.deadline + 1.0)
        return box[0]

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
