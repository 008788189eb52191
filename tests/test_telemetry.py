"""Client telemetry: the pusher's per-second buckets and the supervisor-side aggregation."""

from __future__ import annotations

import json
import random
import time

import pytest
import zmq

from loadgen.telemetry import KIND, TelemetryAggregator, TelemetryPusher, make_hist, percentiles_us
from tests.conftest import wait_for


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def feed(pusher: TelemetryPusher, agg: TelemetryAggregator, clock: Clock, latencies_ms: list[float],
         start: float, per_second: int, *, every: int = 50) -> None:
    """Record `latencies_ms` at `per_second` operations a second from `start`, handing the
    pusher's message to the aggregator every `every` operations (as the socket would)."""
    for i, ms in enumerate(latencies_ms):
        clock.t = start + i / per_second
        pusher.record(True, int(ms * 1_000_000))
        if i % every == 0:
            agg.on_message(pusher.message(clock.t), 0.0)
    agg.on_message(pusher.message(clock.t), 0.0)


def test_pusher_buckets_by_second_and_counts_retries_redirects_errors() -> None:
    clock = Clock(1000.25)
    p = TelemetryPusher(None, clock=clock, sender="s")
    p.record(True, 2_000_000, attempts=3, redirects=1)
    p.record(False, 30_000_000_000, attempts=5, error="timeout: no reply within 30 s")
    clock.t = 1001.5
    p.record(True, 1_000_000)
    msg = p.message(clock.t)
    assert msg["kind"] == KIND and msg["sender"] == "s"
    assert msg["totals"] == {"ok": 2, "errors": 1, "retries": 6, "redirects": 1}
    assert msg["errors_by_reason"] == {"timeout": 1}
    assert msg["last_error"].startswith("timeout")
    assert [b["s"] for b in msg["buckets"]] == [1000, 1001]
    first = msg["buckets"][0]
    assert (first["ok"], first["errors"], first["retries"], first["redirects"]) == (1, 1, 6, 1)
    assert first["max_us"] == 2000 and first["hist"]
    json.dumps(msg)  # JSON-ready


def test_pusher_resends_only_recent_seconds_but_keeps_totals() -> None:
    clock = Clock(2000.0)
    p = TelemetryPusher(None, clock=clock, sender="s")
    for second in range(10):
        clock.t = 2000.0 + second
        p.record(True, 1_000_000)
    msg = p.message(clock.t)
    assert [b["s"] for b in msg["buckets"]] == [2007, 2008, 2009]
    assert msg["totals"]["ok"] == 10


def test_pusher_without_a_listener_drops_and_never_blocks() -> None:
    clock = Clock(10.0)
    # A port nothing listens on: IMMEDIATE makes every send fail at once instead of queueing.
    p = TelemetryPusher("tcp://127.0.0.1:9", clock=clock)
    start = time.monotonic()
    for i in range(2000):
        clock.t = 10.0 + i * 0.01
        p.record(True, 1_000_000)
    p.close()
    assert time.monotonic() - start < 5.0
    assert p.sent == 0 and p.dropped > 0


def test_pusher_reaches_a_pull_socket() -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    try:
        p = TelemetryPusher(f"tcp://127.0.0.1:{port}", label="t")

        def delivered() -> dict | None:
            p.record(True, 1_000_000)
            p.push()
            if pull.poll(50):
                return json.loads(pull.recv())
            return None

        msg = wait_for(delivered, 10.0, "a telemetry message")
        assert msg["kind"] == KIND and msg["totals"]["ok"] >= 1
        p.close()
        # The final message is marked as such.
        def final() -> bool:
            while pull.poll(50):
                if json.loads(pull.recv()).get("final"):
                    return True
            return False

        assert wait_for(final, 5.0, "the final message")
    finally:
        pull.close(0)
        ctx.term()


def test_aggregator_sums_loads_and_merges_percentiles_exactly() -> None:
    rng = random.Random(7)
    fast = [rng.uniform(0.5, 2.0) for _ in range(3000)]  # one load: fast
    slow = [rng.uniform(20.0, 80.0) for _ in range(300)]  # another: slow and rare
    agg = TelemetryAggregator(cache_s=0)
    ca, cb = Clock(0), Clock(0)
    a = TelemetryPusher(None, clock=ca, sender="a")
    b = TelemetryPusher(None, clock=cb, sender="b")
    feed(a, agg, ca, fast, 5000.0, 1000)  # 3 s at 1000/s
    feed(b, agg, cb, slow, 5000.0, 100)  # 3 s at 100/s
    summary = agg.summary(1.0, wall_now=5003.5)
    assert summary["loads"] == 2
    assert summary["totals"]["ok"] == 3300
    # Window: the 5 complete seconds up to 5002 -> every operation.
    assert summary["window"]["ok"] == 3300
    assert summary["throughput"] == pytest.approx(3300 / 5)
    # The merged percentiles are those of all operations together (not an average of two p99s).
    union = make_hist()
    for ms in fast + slow:
        union.record_value(int(ms * 1000))
    assert summary["latency_us"] == percentiles_us(union)
    assert summary["latency_us"]["p99"] > 20_000  # 300 of 3300 are slow: p99 is a slow one
    assert summary["latency_us"]["p50"] < 2_100
    # Per-second history (for the sparkline): 1000 + 100 per second.
    assert summary["history_ops"][-3:] == [1100, 1100, 1100]
    assert len(summary["history_ops"]) == TelemetryAggregator.HISTORY_S


def test_aggregator_resent_buckets_replace_and_missing_seconds_are_zero() -> None:
    agg = TelemetryAggregator(cache_s=0)
    clock = Clock(100.0)
    p = TelemetryPusher(None, clock=clock, sender="a")
    for i in range(100):
        clock.t = 100.0 + i / 100
        p.record(True, 1_000_000)
    msg = p.message(clock.t)
    for _ in range(3):  # the same buckets three times: counted once
        agg.on_message(msg, 0.0)
    # Then nothing completes for 3 seconds (a stall): nothing is sent.
    s = agg.summary(1.0, wall_now=104.2)
    assert s["history_ops"][-4:] == [100, 0, 0, 0]
    assert s["window"]["ok"] == 100
    assert s["totals"]["ok"] == 100


def test_aggregator_active_loads_final_and_forgetting() -> None:
    agg = TelemetryAggregator(cache_s=0)
    clock = Clock(50.0)
    p = TelemetryPusher(None, clock=clock, sender="a")
    p.record(True, 1_000_000)
    agg.on_message(p.message(clock.t), now=0.0)
    assert agg.summary(1.0, wall_now=51.0)["loads"] == 1
    assert agg.summary(10.0, wall_now=60.0)["loads"] == 0  # not heard from: not running
    agg.on_message(p.message(clock.t, final=True), now=11.0)
    assert agg.summary(11.0, wall_now=61.0)["loads"] == 0
    assert agg.summary(11.0, wall_now=61.0)["totals"]["ok"] == 1  # still counted
    forgotten = agg.summary(11.0 + TelemetryAggregator.FORGET_S + 1, wall_now=300.0)
    assert forgotten["senders"] == [] and forgotten["totals"]["ok"] == 1  # totals never go down


def test_aggregator_reports_error_deltas_and_ignores_garbage() -> None:
    agg = TelemetryAggregator(cache_s=0)
    clock = Clock(70.0)
    p = TelemetryPusher(None, clock=clock, sender="a")
    p.record(False, 1, error="timeout: x")
    assert agg.on_message(p.message(clock.t), 0.0)[:2] == (1, {"timeout": 1})
    p.record(False, 1, error="unavailable: y")
    p.record(False, 1, error="timeout: z")
    assert agg.on_message(p.message(clock.t), 0.0)[:2] == (2, {"unavailable": 1, "timeout": 1})
    assert agg.on_message(p.message(clock.t), 0.0)[:2] == (0, {})
    for junk in ({}, {"kind": "other"}, {"kind": KIND}, {"kind": KIND, "sender": "x", "totals": 5},
                 {"kind": KIND, "sender": "y", "buckets": [{"s": "x"}, {"s": 1, "ok": 3, "hist": "!!"}]}):
        agg.on_message(junk, 0.0)
    assert agg.summary(1.0, wall_now=72.0)["totals"]["errors"] == 3


def test_summary_is_cached_between_messages() -> None:
    agg = TelemetryAggregator(cache_s=10.0)
    first = agg.summary(0.0, wall_now=10.0)
    assert agg.summary(1.0, wall_now=11.0) is first
    agg.on_message({"kind": KIND, "sender": "a", "totals": {"ok": 1}, "buckets": []}, 1.0)
    assert agg.summary(1.5, wall_now=11.5) is not first
