"""Load drivers of the benchmark suite: closed loop and open loop, bounded in time and count.

Two closed-loop drivers, so a result can say whether the client or the service is the limit:

* `closed_loop` -- the *lean* driver: one DEALER socket per node, `customers` concurrent
  sessions, each with one order outstanding; the next order of a customer goes out as soon as its
  reply is in.  It speaks the real wire format (the codec's `ClientRequest` / `LaptopInfo` layouts,
  checked against `protocol.codec` at import) with plain `struct` and no objects per operation,
  so it costs the client process as little as a Python client can.  It still behaves like a
  real client where it must: a `NOT_PRIMARY` reply with a hint moves it to that node, and a
  request unanswered for a second (or refused as unavailable/overloaded) is sent again with the
  same req_id (orders are idempotent); latency counts from the first send.  The same driver runs
  against the bare relay and the real cluster, so their ratio compares servers, not clients.
* `engine_closed_loop` -- the project's own `loadgen.client.ClientEngine` (Lazy Pirate retries,
  one session generator per customer), i.e. what `lfctl load` users see.

`open_loop` sends orders at a fixed mean rate (Poisson arrivals) whatever the replies do, and
measures each latency from the order's *intended* start time (so a sender that falls behind, or a
queue in the service, shows up in the latency instead of silently lowering the offered load:
no coordinated omission).

Every figure returned is a plain dict; latencies are in microseconds.
"""

from __future__ import annotations

import math
import random
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import zmq

from protocol import codec
from protocol.messages import ClientRequest, ErrorCode, ErrorReply, LaptopInfo
from protocol.zmq_calls import NOBLOCK, RCVMORE, has_message

Endpoints = str | dict[int, str]  # one endpoint, or node id -> endpoint (the first is tried first)

# The codec's wire layouts (protocol/codec.py), used directly so the driver does no per-op
# object work.  Checked below against the codec itself: if the wire format changes, this fails
# loudly instead of measuring garbage.
REQ = struct.Struct("<BBQiii")  # version, kind=1, req_id, type, customer_id, order_number
HDR = struct.Struct("<BBQ")  # version, kind, req_id: the head of every reply
LAPTOP_INFO = struct.Struct("<BBQiiiii")  # version, kind=2, req_id, customer, order, type, engineer, admin
KIND_LAPTOP_INFO = 2
KIND_ERROR = 5
ERROR_CODE_AT = HDR.size  # ErrorReply: ... req_id, code u8, hint u8, len u16, text


def _self_check() -> None:
    req = codec.encode(ClientRequest(123456789, 1, 42, 7))
    assert req == REQ.pack(1, 1, 123456789, 1, 42, 7), "ClientRequest wire layout changed"
    info = codec.decode(LAPTOP_INFO.pack(1, KIND_LAPTOP_INFO, 5, 42, 7, 1, 2, 3))
    assert isinstance(info, LaptopInfo) and (info.req_id, info.customer_id, info.order_number) == (5, 42, 7)
    err = codec.encode(ErrorReply(9, ErrorCode.OVERLOADED, 0, "x"))
    assert HDR.unpack_from(err) == (1, KIND_ERROR, 9)


_self_check()


def percentile(sorted_vals: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_vals:
        return 0.0
    k = max(0, min(len(sorted_vals) - 1, math.ceil(pct / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def latency_summary(samples_ns: list[int]) -> dict[str, float]:
    """min/mean/p50/p90/p99/p99.9/max in microseconds."""
    if not samples_ns:
        return {k: 0.0 for k in ("min", "mean", "p50", "p90", "p99", "p999", "max")}
    s = sorted(samples_ns)
    us = 1000.0
    return {
        "min": round(s[0] / us, 1),
        "mean": round(sum(s) / len(s) / us, 1),
        "p50": round(percentile(s, 50) / us, 1),
        "p90": round(percentile(s, 90) / us, 1),
        "p99": round(percentile(s, 99) / us, 1),
        "p999": round(percentile(s, 99.9) / us, 1),
        "max": round(s[-1] / us, 1),
    }


def _dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 1_000_000)
    sock.setsockopt(zmq.RCVHWM, 1_000_000)
    sock.connect(endpoint)  # no IMMEDIATE: sends queue until the connection is up
    return sock


_NOT_PRIMARY = int(ErrorCode.NOT_PRIMARY)
_RETRYABLE = frozenset(int(c) for c in (ErrorCode.NOT_PRIMARY, ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED))
_SNDMORE = int(zmq.SNDMORE)
RETRY_SOON = 0.05  # seconds before resending a request refused as retryable without a usable hint


class _Conn:
    """One DEALER per node; sends go to the node believed primary."""

    def __init__(self, endpoints: Endpoints, ctx: zmq.Context) -> None:
        eps = {1: endpoints} if isinstance(endpoints, str) else dict(endpoints)
        self.socks = {n: _dealer(ctx, ep) for n, ep in eps.items()}
        self.current = next(iter(eps))
        self.poller = zmq.Poller()
        for sock in self.socks.values():
            self.poller.register(sock, zmq.POLLIN)
        self.redirects = 0
        self._rotated_at = -1e18

    def send(self, payload: bytes) -> None:
        """[b"", payload] (the REQ envelope), frame by frame: a third of `send_multipart`."""
        sock = self.socks[self.current]
        sock.send(b"", _SNDMORE)
        sock.send(payload)

    def poll(self, timeout_ms: int) -> list[zmq.Socket]:
        """The sockets with replies waiting (none on timeout)."""
        return [sock for sock, _ in self.poller.poll(timeout_ms)]

    def recv_from(self, socks: Iterable[zmq.Socket], *, polled: bool, limit: int = 4096) -> list[bytes]:
        """The replies waiting on `socks` (the last frame of each message).

        Only the sockets asked about are read, and EVENTS is read instead of ending on a raised
        `zmq.Again` (protocol/zmq_calls.py): draining every node's socket that way cost a
        client of a 3-node cluster ~7 µs per idle socket per turn that a client of the
        1-process relay did not pay, which put client work into a ratio meant to compare
        servers.  `polled`: a poll just said each socket has a message, so the first read
        needs no check."""
        out: list[bytes] = []
        for sock in socks:
            recv = sock.recv
            more = sock.getsockopt
            for i in range(limit):
                if (i or not polled) and not has_message(sock):
                    break
                data = recv(NOBLOCK)
                while more(RCVMORE):
                    data = recv(NOBLOCK)
                out.append(data)
        return out

    def timed_out(self, now: float, period: float) -> None:
        """No reply for a whole resend period: try the next node (a dead primary answers
        nothing; the next node redirects to the new one).  At most once per period."""
        if len(self.socks) > 1 and now - self._rotated_at >= period:
            self._rotated_at = now
            ids = list(self.socks)
            self.current = ids[(ids.index(self.current) + 1) % len(ids)]
            self.redirects += 1

    def refused(self, data: bytes) -> bool:
        """A retryable refusal: follow a NOT_PRIMARY hint; True if the request should be resent
        (the caller resends at once when we moved, else soon)."""
        code = data[ERROR_CODE_AT] if len(data) > ERROR_CODE_AT + 1 else -1
        if code not in _RETRYABLE:
            return False
        hint = data[ERROR_CODE_AT + 1]
        if code == _NOT_PRIMARY and hint in self.socks and hint != self.current:
            self.current = hint
            self.redirects += 1
        return True

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close(linger=0)


def _error_name(data: bytes, kind: int) -> str:
    code = data[ERROR_CODE_AT] if kind == KIND_ERROR and len(data) > ERROR_CODE_AT else -1
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"kind{kind}/code{code}"


ID_BITS = 24  # closed loop: req_id = (op number of the session << 24) | session index
ID_MASK = (1 << ID_BITS) - 1


def closed_loop(endpoint: Endpoints, customers: int, duration: float, *, warmup: float = 0.5,
                customer_base: int = 0, fill_total: int | None = None,
                progress: Callable[[int], None] | None = None, progress_every: int = 0,
                drain_timeout: float = 10.0, resend_after: float = 1.0, ctx: zmq.Context | None = None,
                stop_event: Any = None) -> dict[str, Any]:
    """Closed loop with the lean driver (see the module docstring).

    Normal mode: customer `customer_base + c` (c < customers) places orders 0, 1, 2, ... for
    `warmup + duration` seconds; only orders completing in the last `duration` seconds count.
    Fill mode (`fill_total`): every op is order 0 of a *new* customer (`customer_base + i`,
    i < fill_total), `customers` at a time, until all are placed or `duration` runs out; used to
    load many customers fast.  `progress(done)` is called every `progress_every` completions.
    `stop_event` (a threading.Event) ends the run early.
    """
    if customers > ID_MASK:
        raise ValueError(f"at most {ID_MASK} concurrent customers")
    own = ctx is None
    ctx = ctx or zmq.Context()
    conn = _Conn(endpoint, ctx)
    n = customers
    pack = REQ.pack
    unpack_hdr = HDR.unpack_from
    clock = time.perf_counter_ns
    t0 = [0] * n
    sent_at = [0] * n  # last (re)send
    soon = [False] * n  # a refused request waiting RETRY_SOON (not a timeout)
    seq = [0] * n  # op number of each session (normal mode: also the order number)
    live = [False] * n  # an op of this session is outstanding
    payloads: list[bytes] = [b""] * n
    lat: list[int] = []
    errors: dict[str, int] = {}
    refusals: dict[str, int] = {}
    start = clock()
    m_from = start + int(warmup * 1e9)
    end = m_from + int(duration * 1e9)
    resend_ns = int(resend_after * 1e9)
    soon_ns = int(RETRY_SOON * 1e9)
    scan_every = min(resend_ns // 4, soon_ns)
    next_scan = start + scan_every
    outstanding = 0
    completed = 0
    window_done = 0
    resends = 0
    stale = 0
    wakes = 0  # polls that found a reply: replies per wake-up is how the client's cost scales
    received = 0

    def issue(c: int, now: int) -> bool:
        nonlocal outstanding
        k = seq[c]
        if fill_total is None:
            payload = pack(1, 1, (k << ID_BITS) | c, 1, customer_base + c, k)
        else:
            i = c + k * n
            if i >= fill_total:
                return False
            payload = pack(1, 1, (k << ID_BITS) | c, 1, customer_base + i, 0)
        t0[c] = sent_at[c] = now
        live[c] = True
        payloads[c] = payload
        conn.send(payload)
        outstanding += 1
        return True

    for c in range(n):
        issue(c, clock())
    stop_sending = False
    drain_deadline = None
    while outstanding:
        now = clock()
        if not stop_sending and (now >= end or (stop_event is not None and stop_event.is_set())):
            stop_sending = True
            end = min(end, now)
            drain_deadline = now + int(drain_timeout * 1e9)
        if drain_deadline is not None and now >= drain_deadline:
            break
        if now >= next_scan:
            next_scan = now + scan_every
            old = now - resend_ns
            due = [c for c in range(n) if live[c] and sent_at[c] < old]
            if due:
                if not all(soon[c] for c in due):
                    conn.timed_out(now, resend_ns)  # a real timeout, not a refusal waiting its turn
                for c in due:
                    conn.send(payloads[c])
                    sent_at[c] = now
                    soon[c] = False
                resends += len(due)
        ready = conn.poll(20)
        if not ready:
            continue
        wakes += 1
        for data in conn.recv_from(ready, polled=True):
            received += 1
            _v, kind, rid = unpack_hdr(data)
            c = rid & ID_MASK
            if c >= n or not live[c] or seq[c] != rid >> ID_BITS:
                stale += 1  # a second reply to a resent request
                continue
            t = clock()
            if kind != KIND_LAPTOP_INFO and conn.refused(data):
                name = _error_name(data, kind)
                refusals[name] = refusals.get(name, 0) + 1
                # resend soon (a scan picks it up): at once would spin on a cluster in transition
                sent_at[c] = t - resend_ns + soon_ns
                soon[c] = True
                continue
            live[c] = False
            seq[c] += 1
            outstanding -= 1
            if kind == KIND_LAPTOP_INFO:
                completed += 1
                if m_from <= t < end or fill_total is not None:
                    lat.append(t - t0[c])
                    window_done += 1
                if progress is not None and progress_every and completed % progress_every == 0:
                    progress(completed)
            else:
                name = _error_name(data, kind)
                errors[name] = errors.get(name, 0) + 1
            if not stop_sending and t < end:
                issue(c, t)
    finished = clock()
    conn.close()
    if own:
        ctx.term()
    if fill_total is not None:
        elapsed = (finished - start) / 1e9
    else:
        elapsed = max(0.0, (end - m_from) / 1e9)
    return {
        "driver": "lean",
        "customers": customers,
        "ops": window_done,
        "seconds": round(elapsed, 3),
        "throughput": round(window_done / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_us": latency_summary(lat),
        "errors": errors,
        "refusals_retried": refusals,
        "redirects": conn.redirects,
        "unanswered": outstanding,
        "resends": resends,
        "stale_replies": stale,
        "completed_total": completed,
        "replies_per_wake": round(received / wakes, 2) if wakes else 0.0,
    }


def engine_closed_loop(nodes: Sequence[tuple[int, str]], customers: int, duration: float, *,
                       warmup: float = 0.5, customer_base: int = 0, attempt_timeout: float = 0.5) -> dict[str, Any]:
    """Closed loop through the project's own `loadgen.client.ClientEngine` (what `lfctl load`
    runs): one generator session per customer, ordering until the time is up."""
    from loadgen.client import ClientEngine

    lat: list[int] = []
    failed: dict[str, int] = {}
    with ClientEngine(nodes, attempt_timeout=attempt_timeout, deadline=30.0) as engine:
        start = time.monotonic()
        m_from = start + warmup
        end = m_from + duration

        def session(c: int):
            k = 0
            while time.monotonic() < end:
                yield (1, customer_base + c, k)
                k += 1

        def on_result(_op, r) -> None:
            if r.ok:
                if m_from <= time.monotonic() < end:
                    lat.append(r.latency_ns)
            else:
                reason = (r.error or "unknown").split(":", 1)[0]
                failed[reason] = failed.get(reason, 0) + 1

        total = [0]

        def counted(op, r) -> None:
            total[0] += 1
            on_result(op, r)

        engine.run([session(c) for c in range(customers)], max_duration=warmup + duration + 10.0,
                   on_result=counted)
        stats = dict(engine.stats)
    return {
        "driver": "loadgen",
        "customers": customers,
        "ops": len(lat),
        "seconds": duration,
        "throughput": round(len(lat) / duration, 1),
        "latency_us": latency_summary(lat),
        "errors": failed,
        "engine_stats": stats,
        "completed_total": total[0],
    }


def open_loop(endpoint: Endpoints, rate: float, duration: float, *, warmup: float = 0.5, customers: int = 1000,
              customer_base: int = 0, seed: int = 1, drain_timeout: float = 5.0, resend_after: float = 1.0,
              ctx: zmq.Context | None = None) -> dict[str, Any]:
    """Open loop at `rate` orders/s (Poisson arrivals) for `warmup + duration` seconds.

    Each order's latency runs from its intended start time to its reply.  Orders go to
    `customers` distinct customers round robin (order numbers increase per customer).  An order
    unanswered for `resend_after` seconds, or refused as retryable, is sent again (same req_id)
    as a real client would.  Orders still unanswered `drain_timeout` after the end are counted
    and enter the latency distribution with the time they had waited by then (a lower bound), so
    a stalled service cannot look fast."""
    own = ctx is None
    ctx = ctx or zmq.Context()
    conn = _Conn(endpoint, ctx)
    rng = random.Random(seed)
    expo = rng.expovariate
    pack = REQ.pack
    unpack_hdr = HDR.unpack_from
    clock = time.perf_counter
    intended: list[float] = []
    waiting: dict[int, float] = {}  # request -> last send time, while unanswered
    soon: set[int] = set()  # refused requests waiting RETRY_SOON (not timeouts)
    lat: list[int] = []
    errors: dict[str, int] = {}
    refusals: dict[str, int] = {}
    resends = 0
    stale = 0
    start = clock()
    m_from = start + warmup
    end = m_from + duration
    next_t = start + expo(rate)
    scan_every = min(resend_after / 4, RETRY_SOON)
    next_scan = start + scan_every
    sent = 0
    answered = 0
    window_done = 0
    max_behind = 0.0
    sleep = time.sleep

    def payload(i: int) -> bytes:
        return pack(1, 1, i, 1, customer_base + i % customers, i // customers)

    def take(data: bytes) -> None:
        nonlocal answered, window_done, stale
        _v, kind, i = unpack_hdr(data)
        if i not in waiting:
            stale += 1
            return
        t = clock()
        if kind != KIND_LAPTOP_INFO and conn.refused(data):
            name = _error_name(data, kind)
            refusals[name] = refusals.get(name, 0) + 1
            waiting[i] = t - resend_after + RETRY_SOON
            soon.add(i)
            return
        del waiting[i]
        soon.discard(i)
        answered += 1
        if kind == KIND_LAPTOP_INFO:
            it = intended[i]
            if it >= m_from:
                lat.append(int((t - it) * 1e9))
                window_done += 1
        else:
            name = _error_name(data, kind)
            errors[name] = errors.get(name, 0) + 1

    def rescan(now: float) -> int:
        older = now - resend_after
        due = [i for i, last in waiting.items() if last < older]
        if due and not all(i in soon for i in due):
            conn.timed_out(now, resend_after)
        for i in due:
            conn.send(payload(i))
            waiting[i] = now
            soon.discard(i)
        return len(due)

    while True:
        now = clock()
        if now >= end:
            break
        # send everything that is due (the sender may be late: the latency says so)
        while next_t <= now and next_t < end:
            i = sent
            conn.send(payload(i))
            intended.append(next_t)
            waiting[i] = now
            sent += 1
            behind = now - next_t
            if behind > max_behind:
                max_behind = behind
            next_t += expo(rate)
        if now >= next_scan:
            next_scan = now + scan_every
            resends += rescan(now)
        for data in conn.recv_from(conn.socks.values(), polled=False):
            take(data)
        gap = next_t - clock()
        if gap >= 0.002:
            conn.poll(int(gap * 1000) - 1)
        elif gap > 0:
            if not conn.poll(0):
                sleep(gap)
    # drain what is still outstanding
    deadline = clock() + drain_timeout
    while waiting and clock() < deadline:
        now = clock()
        if now >= next_scan:
            next_scan = now + scan_every
            resends += rescan(now)
        ready = conn.poll(20)
        if not ready:
            continue
        for data in conn.recv_from(ready, polled=True):
            take(data)
    unanswered = len(waiting)
    if unanswered:
        t = clock()
        # they had waited at least this long: a lower bound enters the distribution
        lat.extend(int((t - intended[i]) * 1e9) for i in waiting if intended[i] >= m_from)
    conn.close()
    if own:
        ctx.term()
    measured_sent = sum(1 for x in intended if x >= m_from)
    return {
        "driver": "open-loop (bench/driver.py)",
        "target_rate": round(rate, 1),
        "offered_rate": round(measured_sent / duration, 1),
        "throughput": round(window_done / duration, 1),
        "ops": window_done,
        "seconds": duration,
        "latency_us": latency_summary(lat),
        "errors": errors,
        "refusals_retried": refusals,
        "redirects": conn.redirects,
        "unanswered": unanswered,
        "resends": resends,
        "stale_replies": stale,
        "sender_max_behind_ms": round(max_behind * 1000, 2),
        "completed_total": answered,
    }


def probe(endpoint: str, timeout: float = 10.0, ctx: zmq.Context | None = None) -> float:
    """One order through `endpoint`, retried until answered; returns seconds waited."""
    own = ctx is None
    ctx = ctx or zmq.Context()
    start = time.monotonic()
    try:
        while time.monotonic() - start < timeout:
            sock = _dealer(ctx, endpoint)
            try:
                sock.send_multipart([b"", REQ.pack(1, 1, 1, 1, 2_000_000_000, 0)])
                if sock.poll(500):
                    data = sock.recv_multipart()[-1]
                    if HDR.unpack_from(data)[1] == KIND_LAPTOP_INFO:
                        return time.monotonic() - start
                    time.sleep(0.05)
            finally:
                sock.close(linger=0)
        raise TimeoutError(f"no reply from {endpoint} within {timeout} s")
    finally:
        if own:
            ctx.term()
