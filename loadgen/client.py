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
* Everything runs in one thread around one `zmq.Poller`, so thousands of concurrent sessions cost
  no threads and the engine stays deterministic given the seed (apart from the network).

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
    ClientReply,
    ClientRequest,
    CustomerRecord,
    ErrorCode,
    ErrorReply,
    LaptopInfo,
    RecordList,
    RequestType,
)

if TYPE_CHECKING:  # only for annotations: the client must work even while config evolves
    from protocol.config import ClusterConfig

__all__ = ["Client", "ClientEngine", "Op", "OpResult", "Session", "Wait", "error_reason"]

# (request type, customer_id, order_number -- or hi for a bulk read)
Op = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class OpResult:
    """The outcome of one operation, after all its attempts.

    `latency_ns` runs from the first attempt to completion, so it includes retries and back-off:
    that is the latency a user of the service sees.  `node` is the node that answered (or the last
    node tried when the operation failed; 0 when no attempt was made).

    `start_ns` and `end_ns` (`time.monotonic_ns()`) bracket the operation: taken before its first
    attempt was sent and after its outcome was known, so the real operation happened inside
    `[start_ns, end_ns]` -- what a linearizability checker needs.  0 when not known (results
    made by hand in tests)."""

    ok: bool
    reply: ClientReply | None
    error: str | None
    latency_ns: int
    attempts: int
    redirects: int
    node: int
    start_ns: int = 0
    end_ns: int = 0


@dataclass(frozen=True, slots=True)
class Wait:
    """Yielded by a session instead of an operation: resume me (with `None`) at `until`
    (`time.monotonic()` seconds).  This is how an open-loop session waits for its request's
    scheduled start without a thread; waiting costs one timer, no socket."""

    until: float


# A session yields operations one at a time and is sent each operation's result (or yields a
# `Wait` and is resumed with None when it is due).
Session = Generator["Op | Wait", "OpResult | None", None]

STOPPED_ERROR = "stopped: max duration reached"
# pyzmq's flags are IntFlag members; combining or passing them goes through the enum machinery on
# every call, which showed in profiles of the open loop.  A plain int does not.
_NOBLOCK = int(zmq.NOBLOCK)

# Which successful reply answers which request type; anything else is a bad frame.
_REPLY_FOR: dict[int, type] = {
    RequestType.ORDER: LaptopInfo,
    RequestType.READ: CustomerRecord,
    RequestType.BULK_READ: RecordList,
}
_FATAL_ERRORS = frozenset({ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE, ErrorCode.PROTOCOL})


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
        "session", "op", "req_id", "payload", "start_ns", "deadline", "attempts", "redirects",
        "node", "in_flight", "timer_seq", "backoff", "fast_fails", "next_node", "last_error",
    )

    def __init__(self, session: Session, op: Op, req_id: int, payload: bytes, start_ns: int,
                 deadline: float, backoff: float) -> None:
        self.session = session
        self.op = op
        self.req_id = req_id
        self.payload = payload
        self.start_ns = start_ns
        self.deadline = deadline  # time.monotonic() seconds
        self.attempts = 0
        self.redirects = 0
        self.node = 0  # node of the current (or last) attempt
        self.in_flight = False  # True: waiting for a reply; False: backing off
        self.timer_seq = -1  # only the heap entry with this seq is live
        self.backoff = backoff  # next back-off delay before jitter
        self.fast_fails = 0  # refusals/redirects since the last wait; bounds spinning
        self.next_node = 0  # where to go when the back-off ends
        self.last_error = ""


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
    MAX_DRAIN = 1_000  # frames read from one socket per loop turn, so no socket starves others
    # Right after `connect()` every socket refuses sends until its TCP/ZMTP handshake is done
    # (IMMEDIATE=1).  For this long after construction a refusal means "not yet", so the op
    # waits for that node in short steps instead of wandering off to a non-primary; after it,
    # a refusal means "not connected" and costs nothing.  A dead node costs at most this once.
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
        }
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self._socks: dict[int, zmq.Socket] = {}
        self._node_of: dict[zmq.Socket, int] = {}
        self._poller = zmq.Poller()
        self._closed = False
        self._grace_until = time.monotonic() + self.CONNECT_GRACE
        try:
            for node_id, endpoint in sorted(nodes, key=lambda ne: int(ne[0])):
                sock = self._ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.IMMEDIATE, 1)
                sock.setsockopt(zmq.SNDHWM, self.SNDHWM)
                sock.setsockopt(zmq.RCVHWM, self.RCVHWM)
                self._socks[int(node_id)] = sock
                self._node_of[sock] = int(node_id)
                sock.connect(endpoint)
                self._poller.register(sock, zmq.POLLIN)
        except BaseException:
            self.close()
            raise
        # Per-run state.
        self._active: dict[int, _Pending] = {}
        self._timers: list[tuple[float, int, int]] = []  # (when, seq, req_id)
        self._seq = 0
        self._ready: deque[tuple[Session, Op | None, OpResult | None]] = deque()
        self._parked: list[tuple[float, int, Session]] = []  # sessions that yielded Wait
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
        try:
            for session in sessions:
                self._ready.append((session, None, None))
            while True:
                self._pump_ready(on_result, stop_at)
                now = time.monotonic()
                if (not self._active and not self._parked) or now >= stop_at:
                    break
                self._fire_timers(now)
                self._wake_parked(now)
                if self._ready:
                    continue
                wake = stop_at if not self._timers else min(stop_at, self._timers[0][0])
                if self._parked:
                    wake = min(wake, self._parked[0][0])
                timeout_ms = max(0, math.ceil((wake - now) * 1000))
                for sock, _ in self._poller.poll(timeout_ms):
                    self._drain(sock)
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
            self._timers.clear()
            self._parked.clear()
            self._stopping = False

    def close(self) -> None:
        """Close the sockets (LINGER=0: nothing queued survives) and our own context."""
        if self._closed:
            return
        self._closed = True
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
        blow the stack; checks the clock every so often so it stays bounded in time."""
        steps = 0
        while self._ready:
            steps += 1
            if stop_at is not None and steps % 256 == 0 and time.monotonic() >= stop_at:
                return
            session, op, result = self._ready.popleft()
            if result is None and self._stopping:
                session.close()  # never started: nothing to tell it
                continue
            if result is not None and op is not None and on_result is not None:
                on_result(op, result)
            try:
                nxt = next(session) if result is None else session.send(result)
            except StopIteration:
                continue
            if self._stopping or (stop_at is not None and time.monotonic() >= stop_at):
                session.close()
                continue
            if type(nxt) is Wait:
                self._seq += 1
                heapq.heappush(self._parked, (float(nxt.until), self._seq, session))
                continue
            self._start(session, nxt)

    def _wake_parked(self, now: float) -> None:
        """Sessions whose `Wait` is over go back to the ready queue (resumed with None)."""
        parked = self._parked
        while parked and parked[0][0] <= now:
            _, _, session = heapq.heappop(parked)
            self._ready.append((session, None, None))

    def _start(self, session: Session, op: Op) -> None:
        self._req_counter = (self._req_counter + 1) & 0xFFFFFFFF
        req_id = self._req_base | self._req_counter
        start_ns = time.monotonic_ns()
        p = _Pending(session, op, req_id, b"", start_ns, time.monotonic() + self.deadline,
                     self.BACKOFF_MIN)
        try:
            req_type, customer_id, number = op
            p.payload = codec.encode(ClientRequest(req_id, int(req_type), int(customer_id),
                                                   int(number)))
        except (ValueError, TypeError, struct.error, OverflowError) as e:
            end_ns = time.monotonic_ns()
            self._finish(p, OpResult(False, None, f"invalid request: {op!r}: {e}",
                                     end_ns - start_ns, 0, 0, 0, start_ns, end_ns))
            return
        self._active[req_id] = p
        self._send(p, self._primary, time.monotonic())

    # ------------------------------------------------------------------ attempts

    def _send(self, p: _Pending, node: int, now: float) -> None:
        """Send an attempt to `node`; a refused send moves on to the next node at once.

        After as many refusals/redirects in a row as there are nodes, back off instead, so a
        cluster that is entirely down (or redirecting in circles) is not spun on."""
        for _ in range(len(self._ids)):
            if p.fast_fails >= len(self._ids):
                break
            p.attempts += 1
            self.stats["attempts"] += 1
            p.node = node
            try:
                self._socks[node].send_multipart([b"", p.payload], flags=_NOBLOCK)
            except zmq.Again:
                if now < self._grace_until:
                    # Probably still connecting: not an attempt yet; look again very soon.
                    p.attempts -= 1
                    self.stats["attempts"] -= 1
                    p.in_flight = False
                    p.next_node = node
                    self._set_timer(p, min(now + self.CONNECT_POLL, self._grace_until))
                    return
                p.fast_fails += 1
                p.last_error = f"node {node} not connected"
                node = self._next_of[node]
                continue
            p.in_flight = True
            self._set_timer(p, now + self.attempt_timeout)
            return
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
        self._seq += 1
        p.timer_seq = self._seq
        heapq.heappush(self._timers, (min(when, p.deadline), self._seq, p.req_id))

    def _fire_timers(self, now: float) -> None:
        budget = 10_000  # bounded per turn; the rest fire on the next turn
        while self._timers and self._timers[0][0] <= now and budget > 0:
            budget -= 1
            _, seq, req_id = heapq.heappop(self._timers)
            p = self._active.get(req_id)
            if p is None or p.timer_seq != seq:
                continue  # the operation finished or re-armed its timer since
            if p.in_flight:
                p.in_flight = False
                self.stats["timeouts"] += 1
                p.last_error = f"no reply from node {p.node}"
                if self._primary == p.node:
                    # Let new operations stop starting at a node that does not answer.
                    self._primary = self._next_of[p.node]
                failed_node = p.node
            else:
                failed_node = 0
            if now >= p.deadline:
                self._fail(p, f"deadline exceeded: {p.attempts} attempts, last: {p.last_error}")
                continue
            if failed_node:
                p.fast_fails = 0
                self._send(p, self._next_of[failed_node], now)
            else:
                self._send(p, p.next_node, now)

    # ------------------------------------------------------------------ replies

    def _drain(self, sock: zmq.Socket) -> None:
        node = self._node_of.get(sock, 0)
        for _ in range(self.MAX_DRAIN):
            try:
                frames = sock.recv_multipart(flags=_NOBLOCK)
            except zmq.Again:
                return
            self._on_frames(node, frames)

    def _on_frames(self, node: int, frames: list[bytes]) -> None:
        if len(frames) != 2 or frames[0] != b"":
            self.stats["bad_frames"] += 1
            return
        try:
            msg = codec.decode(frames[1])
        except ValueError:  # ProtocolError is a ValueError; decode raises nothing else
            self.stats["bad_frames"] += 1
            return
        if not isinstance(msg, (LaptopInfo, CustomerRecord, RecordList, ErrorReply)):
            self.stats["bad_frames"] += 1
            return
        p = self._active.get(msg.req_id)
        if p is None:
            self.stats["stale_replies"] += 1
            return
        if isinstance(msg, ErrorReply):
            if not (p.in_flight and p.node == node):
                # An error from an attempt we already gave up on says nothing about the current
                # one; acting on it would restart an attempt that may be about to succeed.
                self.stats["stale_replies"] += 1
                return
            self._on_error(p, node, msg)
            return
        if type(msg) is not _REPLY_FOR.get(p.op[0]):
            self.stats["bad_frames"] += 1
            return
        # Only the primary answers successfully, so whoever did is the best guess for the next op.
        self._primary = node
        end_ns = time.monotonic_ns()
        self._finish(p, OpResult(True, msg, None, end_ns - p.start_ns, p.attempts, p.redirects,
                                 node, p.start_ns, end_ns))

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
