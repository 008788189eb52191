"""Client telemetry: what a running load tells the supervisor, and how the supervisor sums it.

Sender side (`TelemetryPusher`): a load generator records every finished operation into a bucket
per wall-clock second (counts plus an HdrHistogram of latencies) and, at most every
`PUSH_INTERVAL` seconds and whenever a new second begins, pushes the last few buckets as one JSON
message over a ZeroMQ PUSH socket to the supervisor's telemetry PULL socket.  The socket never gets
in the load's way: LINGER 0, a small HWM, IMMEDIATE (nothing queues for a supervisor that is not
there) and non-blocking sends -- a message that cannot leave at once is dropped and counted.

Receiver side (`TelemetryAggregator`): keeps, per sender, the buckets of the last minute; a
re-sent bucket replaces the earlier copy of the same second (so a dropped message costs nothing but
its own freshness).  Several loads are summed per second: counts are added and histograms merged,
so the percentiles over the last few seconds are those of all operations together, not an average
of per-load percentiles.  A second with no bucket from anyone counted as zero operations: a load
whose operations all stall sends nothing, and its throughput rightly drops to 0.

Wire format (JSON object, `kind` = "client-telemetry", `v` = 1):
    sender, pid, label, t (wall clock of the push), final (the load ended),
    totals {ok, errors, retries, redirects}, errors_by_reason {reason: n}, last_error,
    buckets [{s: unix second, ok, errors, retries, redirects, max_us, hist: base64 HdrHistogram
              of successful operations' latencies in us (2 significant digits)}]

`loadgen` imports only `protocol` (and here nothing of it), so both sides live in this module.
"""

from __future__ import annotations

import json
import os
from bisect import bisect_left
from itertools import accumulate
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
from hdrh.histogram import HdrHistogram

__all__ = [
    "KIND", "TelemetryAggregator", "TelemetryPusher", "make_hist", "percentiles_us",
]

KIND = "client-telemetry"
VERSION = 1
PUSH_INTERVAL = 0.5  # seconds between pushes while operations complete
RESEND_SECONDS = 3  # each push carries the current second and the two before it
SNDHWM = 16
FINAL_LINGER_MS = 200  # the last message (final = true) gets this long to leave on close

# 1 us .. 60 s at 2 significant digits: 1% precision is plenty for a dashboard, and a histogram is
# 2,560 counters (20 KB) instead of 17,408, so decoding and percentile walks stay cheap.
HIST_LOWEST_US = 1
HIST_HIGHEST_US = 60_000_000
HIST_DIGITS = 2

PERCENTILES = {"p50": 50.0, "p99": 99.0, "p999": 99.9}


def make_hist() -> HdrHistogram:
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)


def percentiles_us(hist: HdrHistogram) -> dict[str, int]:
    """p50, p99, p99.9 and max of a histogram, in microseconds (zeros when empty).

    The same values as `HdrHistogram.get_value_at_percentile`, found with one C-speed prefix sum
    and a bisection instead of hdrh's per-counter Python loop (20x faster: the supervisor does
    this for every dashboard refresh)."""
    total = hist.get_total_count()
    if total == 0:
        return {**{k: 0 for k in PERCENTILES}, "max": 0}
    n = min(hist.counts_len, hist.encoder.payload.counts_len)
    cumulative = list(accumulate(hist.counts[:n]))
    out = {}
    for key, pct in PERCENTILES.items():
        index = min(bisect_left(cumulative, hist.get_target_count_at_percentile(pct)), n - 1)
        out[key] = int(hist.get_highest_equivalent_value(hist.get_value_from_index(index)))
    out["max"] = int(hist.get_max_value())
    return out


# --------------------------------------------------------------------------- sender


@dataclass
class _Bucket:
    second: int
    ok: int = 0
    errors: int = 0
    retries: int = 0
    redirects: int = 0
    max_us: int = 0
    hist: HdrHistogram = field(default_factory=make_hist)

    def to_json(self) -> dict[str, Any]:
        return {"s": self.second, "ok": self.ok, "errors": self.errors, "retries": self.retries,
                "redirects": self.redirects, "max_us": self.max_us,
                "hist": self.hist.encode().decode("ascii") if self.ok else ""}


class TelemetryPusher:
    """Per-second client metrics pushed to the supervisor; see the module docstring.

    `record(ok, latency_ns, attempts, redirects, error)` is called for every finished operation
    (or use `record_result(op, result)` as an engine `on_result` callback); it pushes by itself
    when due.  `close()` pushes a last message marked final.  Never raises on a send problem:
    telemetry must not break a load.  Not thread-safe (one pusher per engine thread)."""

    def __init__(self, endpoint: str | None, *, label: str = "load", sender: str | None = None,
                 clock: Callable[[], float] = time.time, context: zmq.Context | None = None,
                 interval: float = PUSH_INTERVAL) -> None:
        self.endpoint = endpoint
        self.label = label
        self.sender = sender or f"{label.replace(' ', '-')}-{os.getpid()}-{secrets.token_hex(3)}"
        self.clock = clock
        self.interval = interval
        self._done = {"ok": 0, "errors": 0, "retries": 0, "redirects": 0}  # buckets already forgotten
        self._bucket: _Bucket | None = None
        self.errors_by_reason: Counter[str] = Counter()
        self.last_error: str | None = None
        self.sent = 0
        self.dropped = 0
        self._buckets: dict[int, _Bucket] = {}
        self._last_push = float("-inf")
        self._last_second = None  # the second of the latest push
        self._closed = False
        self._own_ctx = False
        self._sock: zmq.Socket | None = None
        if endpoint:
            try:
                if context is None:
                    context = zmq.Context()
                    self._own_ctx = True
                self._ctx = context
                sock = context.socket(zmq.PUSH)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, SNDHWM)
                sock.setsockopt(zmq.IMMEDIATE, 1)
                sock.connect(endpoint)
                self._sock = sock
            except zmq.ZMQError:
                self._sock = None

    # ------------------------------------------------------------------ recording

    def record(self, ok: bool, latency_ns: int, attempts: int = 1, redirects: int = 0,
               error: str | None = None) -> None:
        """Account for one finished operation (a few microseconds: it runs once per operation)."""
        now = self.clock()
        second = int(now)
        bucket = self._bucket
        if bucket is None or bucket.second != second:
            bucket = self._new_bucket(second)
        if ok:
            us = latency_ns // 1000
            if us < HIST_LOWEST_US:
                us = HIST_LOWEST_US
            elif us > HIST_HIGHEST_US:
                us = HIST_HIGHEST_US
            bucket.ok += 1
            bucket.hist.record_value(us)
            if us > bucket.max_us:
                bucket.max_us = us
        else:
            bucket.errors += 1
            reason = (error or "unknown").split(":", 1)[0].strip() or "unknown"
            self.errors_by_reason[reason] += 1
            self.last_error = (error or "unknown")[:200]
        if attempts > 1:
            bucket.retries += attempts - 1
        if redirects:
            bucket.redirects += redirects
        if now - self._last_push >= self.interval or second != self._last_second:
            self.push(now)

    def _new_bucket(self, second: int) -> _Bucket:
        """Fold the finished bucket into the totals and start the one for `second`."""
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = _Bucket(second)
            for old in [s for s in self._buckets if s <= second - RESEND_SECONDS]:
                gone = self._buckets.pop(old)
                self._done["ok"] += gone.ok
                self._done["errors"] += gone.errors
                self._done["retries"] += gone.retries
                self._done["redirects"] += gone.redirects
        self._bucket = bucket
        return bucket

    @property
    def totals(self) -> dict[str, int]:
        """Every operation recorded so far: ok, errors, retries, redirects."""
        out = dict(self._done)
        for b in self._buckets.values():
            out["ok"] += b.ok
            out["errors"] += b.errors
            out["retries"] += b.retries
            out["redirects"] += b.redirects
        return out

    def record_result(self, op: Any, result: Any) -> None:
        """An engine `on_result(op, OpResult)` callback."""
        self.record(result.ok, result.latency_ns, result.attempts, result.redirects, result.error)

    def wrap(self, on_result: Callable[[Any, Any], None] | None) -> Callable[[Any, Any], None]:
        """`on_result` that also records into this pusher."""
        if on_result is None:
            return self.record_result

        def both(op: Any, result: Any) -> None:
            on_result(op, result)
            self.record_result(op, result)

        return both

    # ------------------------------------------------------------------ pushing

    def message(self, now: float, *, final: bool = False) -> dict[str, Any]:
        second = int(now)
        buckets = [self._buckets[s].to_json() for s in sorted(self._buckets) if s > second - RESEND_SECONDS]
        return {
            "kind": KIND, "v": VERSION, "sender": self.sender, "pid": os.getpid(), "label": self.label,
            "t": round(now, 3), "final": final, "totals": self.totals,
            "errors_by_reason": dict(self.errors_by_reason), "last_error": self.last_error,
            "buckets": buckets,
        }

    def push(self, now: float | None = None, *, final: bool = False) -> bool:
        """Send one message now; False when it was dropped (nobody listening, queue full)."""
        now = self.clock() if now is None else now
        self._last_push = now
        self._last_second = int(now)
        if self._sock is None:
            self.dropped += 1
            return False
        try:
            self._sock.send(json.dumps(self.message(now, final=final), separators=(",", ":")).encode(), zmq.NOBLOCK)
        except zmq.ZMQError:  # Again (not connected / HWM) or anything else: drop it
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        """Push the final message (it gets FINAL_LINGER_MS to leave), then close the socket."""
        if self._closed:
            return
        self._closed = True
        sent = self.push(final=True)
        if self._sock is not None:
            self._sock.close(linger=FINAL_LINGER_MS if sent else 0)
            self._sock = None
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self) -> TelemetryPusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- receiver


@dataclass
class _Second:
    """One sender's bucket for one second, as received."""

    ok: int
    errors: int
    retries: int
    redirects: int
    max_us: int
    hist: HdrHistogram | None  # dropped once the second leaves the percentile window


@dataclass
class _Sender:
    sender: str
    label: str
    pid: int | None
    first_seen: float
    last_seen: float  # receiver clock
    final: bool = False
    totals: dict[str, int] = field(default_factory=dict)
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    seconds: dict[int, _Second] = field(default_factory=dict)


class TelemetryAggregator:
    """Sums the telemetry of every load; see the module docstring.

    `on_message(msg, now)` returns the sender's error delta (new failed operations with their
    reasons) so the caller can narrate client errors.  `summary(now)` is what the dashboard shows;
    it is cached for `cache_s` so several dashboards polling at 4 Hz cost one computation."""

    HISTORY_S = 60
    WINDOW_S = 5  # percentiles and throughput over the last 5 complete seconds
    ACTIVE_S = 3.0  # a sender heard from this recently (and not final) is a running load
    FORGET_S = 120.0  # a sender not heard from for this long is forgotten

    def __init__(self, *, cache_s: float = 0.2) -> None:
        self.senders: dict[str, _Sender] = {}
        self.cache_s = cache_s
        self.bad_messages = 0
        self._cache: tuple[float, int, dict] | None = None  # (computed at, version, summary)
        self._version = 0
        self._p99: dict[int, int] = {}  # frozen p99 of seconds that left the window
        self._p99_cache: dict[tuple[int, int], int] = {}  # (second, count) -> p99 while in the window
        self._retired: Counter[str] = Counter({"ok": 0, "errors": 0, "retries": 0, "redirects": 0})
        self._retired_reasons: Counter[str] = Counter()  # of forgotten senders

    @staticmethod
    def is_client_telemetry(msg: Any) -> bool:
        return isinstance(msg, dict) and msg.get("kind") == KIND

    def on_message(self, msg: dict, now: float) -> tuple[int, dict[str, int], str | None]:
        """Take one message; returns (new errors, their reasons, last error text)."""
        if not self.is_client_telemetry(msg):
            return 0, {}, None
        try:
            name = str(msg["sender"])
            totals = {k: int(v) for k, v in dict(msg.get("totals") or {}).items()}
            reasons = {str(k): int(v) for k, v in dict(msg.get("errors_by_reason") or {}).items()}
            buckets = list(msg.get("buckets") or [])
        except (KeyError, TypeError, ValueError):
            self.bad_messages += 1
            return 0, {}, None
        s = self.senders.get(name)
        if s is None:
            pid = msg.get("pid")
            s = self.senders[name] = _Sender(name, str(msg.get("label") or "load"),
                                             pid if isinstance(pid, int) else None, now, now)
        old_errors = s.totals.get("errors", 0)
        old_reasons = s.errors_by_reason
        s.last_seen = now
        s.final = bool(msg.get("final"))
        s.totals = totals
        s.errors_by_reason = reasons
        s.last_error = msg.get("last_error") if isinstance(msg.get("last_error"), str) else None
        for b in buckets:
            try:
                self._take_bucket(s, b)
            except Exception:  # a bad bucket or histogram: skip that bucket, keep the rest
                self.bad_messages += 1
        self._version += 1
        new_errors = max(0, totals.get("errors", 0) - old_errors)
        delta = {k: v - old_reasons.get(k, 0) for k, v in reasons.items() if v > old_reasons.get(k, 0)}
        return new_errors, delta, s.last_error

    def _take_bucket(self, s: _Sender, b: dict) -> None:
        second = int(b["s"])
        ok = int(b.get("ok", 0))
        prev = s.seconds.get(second)
        if prev is not None and prev.ok == ok and prev.hist is not None:
            hist = prev.hist  # unchanged: no need to decode again
        elif ok and b.get("hist"):
            hist = HdrHistogram.decode(b["hist"].encode("ascii") if isinstance(b["hist"], str) else b["hist"])
        else:
            hist = None
        s.seconds[second] = _Second(ok, int(b.get("errors", 0)), int(b.get("retries", 0)),
                                    int(b.get("redirects", 0)), int(b.get("max_us", 0)), hist)

    def _trim(self, wall_now: float, now: float) -> None:
        """Forget old senders and seconds; a second leaving the percentile window has its p99
        over every sender frozen (for the sparkline) and its histograms dropped (20 KB each)."""
        oldest = int(wall_now) - self.HISTORY_S - 1
        window_start = int(wall_now) - self.WINDOW_S - 2
        for name in list(self.senders):
            if now - self.senders[name].last_seen > self.FORGET_S:
                gone = self.senders.pop(name)
                for key in self._retired:  # totals stay totals: every load ever heard of
                    self._retired[key] += gone.totals.get(key, 0)
                self._retired_reasons.update(gone.errors_by_reason)
        to_freeze: dict[int, list[_Second]] = {}
        for s in self.senders.values():
            for sec in [sec for sec in s.seconds if sec < oldest]:
                del s.seconds[sec]
            for sec, second in s.seconds.items():
                if sec < window_start and second.hist is not None:
                    to_freeze.setdefault(sec, []).append(second)
        for sec, seconds in to_freeze.items():
            merged = make_hist()
            for second in seconds:
                merged.add(second.hist)
                second.hist = None
            if merged.get_total_count():
                self._p99[sec] = max(self._p99.get(sec, 0), percentiles_us(merged)["p99"])
        for sec in [sec for sec in self._p99 if sec < oldest]:
            del self._p99[sec]

    def summary(self, now: float, wall_now: float | None = None) -> dict[str, Any]:
        """Throughput and latency over the last WINDOW_S complete seconds, the last minute per
        second (for sparklines), totals over every load ever heard of, and the running loads.
        `now` is the receiver's monotonic clock, `wall_now` its wall clock (buckets are keyed by
        unix second: every process on one machine shares that clock)."""
        wall_now = time.time() if wall_now is None else wall_now
        if self._cache is not None and self._cache[1] == self._version and now - self._cache[0] < self.cache_s:
            return self._cache[2]
        self._trim(wall_now, now)
        last_complete = int(wall_now) - 1
        window = range(last_complete - self.WINDOW_S + 1, last_complete + 1)
        history = range(last_complete - self.HISTORY_S + 1, last_complete + 1)
        per_sec_ok = dict.fromkeys(history, 0)
        per_sec_hist: dict[int, HdrHistogram] = {}
        merged = make_hist()
        win: Counter[str] = Counter()
        totals: Counter[str] = Counter(self._retired)
        reasons: Counter[str] = Counter(self._retired_reasons)
        for s in self.senders.values():
            totals.update({k: v for k, v in s.totals.items() if k in ("ok", "errors", "retries", "redirects")})
            reasons.update(s.errors_by_reason)
            for sec, b in s.seconds.items():
                if sec in per_sec_ok:
                    per_sec_ok[sec] += b.ok
                if b.hist is not None and sec in per_sec_ok:
                    per_sec_hist.setdefault(sec, make_hist()).add(b.hist)
                if sec in window:
                    win["ok"] += b.ok
                    win["errors"] += b.errors
                    win["retries"] += b.retries
                    win["redirects"] += b.redirects
                    if b.hist is not None:
                        merged.add(b.hist)
        p99 = {}
        for sec, h in per_sec_hist.items():
            key = (sec, h.get_total_count())
            if key not in self._p99_cache:
                self._p99_cache[key] = percentiles_us(h)["p99"]
            p99[sec] = self._p99_cache[key]
        for key in [k for k in self._p99_cache if k[0] < history.start]:
            del self._p99_cache[key]
        active = [s for s in self.senders.values() if not s.final and now - s.last_seen < self.ACTIVE_S]
        latest = max((s for s in self.senders.values() if s.last_error), key=lambda s: s.last_seen, default=None)
        summary = {
            "loads": len(active),
            "senders": [{"sender": s.sender, "label": s.label, "pid": s.pid, "final": s.final,
                         "age_s": round(now - s.last_seen, 3), "ok": s.totals.get("ok", 0),
                         "errors": s.totals.get("errors", 0)} for s in self.senders.values()],
            "window_s": self.WINDOW_S,
            "throughput": round(win["ok"] / self.WINDOW_S, 1),
            "latency_us": percentiles_us(merged),
            "window": {k: win[k] for k in ("ok", "errors", "retries", "redirects")},
            "totals": {k: totals[k] for k in ("ok", "errors", "retries", "redirects")},
            "errors_by_reason": dict(sorted(reasons.items())),
            "last_error": latest.last_error if latest is not None else None,
            "history_ops": [per_sec_ok[sec] for sec in history],
            "history_p99_us": [p99.get(sec, self._p99.get(sec, 0)) for sec in history],
            "last_second": last_complete,
        }
        self._cache = (now, self._version, summary)
        return summary
