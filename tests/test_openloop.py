"""The open-loop scheduler, measured against a fake clock; the engine's `Wait`; one real open loop
against fake nodes (in this process and spread over two processes).

The fake-clock driver below stands in for `ClientEngine`: it resumes a session at the time its
`Wait` names and answers each operation after a service time computed by a fake server (one FIFO
server that can stall).  The slot sessions under test are the real ones `lfctl load --rate` uses.
"""

from __future__ import annotations

import heapq
import time

import pytest

from loadgen.client import ClientEngine, OpResult, Wait
from loadgen.history import pair_operations, to_dict
from loadgen.openloop import (
    Completion,
    OpenLoopSchedule,
    OpenLoopWorkload,
    customers_for_worker,
    slot_sessions,
    validate_open_args,
)
from loadgen import worker as worker_mod
from loadgen.stats import LatencyRecorder
from loadgen.worker import Collector, LoadSpec, run_spec
from protocol.messages import CustomerRecord, LaptopInfo, RequestType
from tests import test_client as fakes
from tests.test_client import fake_node  # noqa: F401  (the shared fake-node fixture)

MS = 1_000_000
S = 1_000_000_000
T0 = 10 * S  # the fake clock starts here


class FakeClock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class FifoServer:
    """One server, FIFO, `service` ns per request; frozen during [stall_from, stall_to)."""

    def __init__(self, service: int = 1 * MS, stall: tuple[int, int] | None = None) -> None:
        self.service = service
        self.stall = stall
        self.free_at = 0

    def done_at(self, arrival: int) -> int:
        begin = max(arrival, self.free_at)
        if self.stall and self.stall[0] <= begin < self.stall[1]:
            begin = self.stall[1]
        self.free_at = begin + self.service
        return self.free_at


def drive(sessions, clock: FakeClock, server: FifoServer, max_events: int = 1_000_000) -> None:
    """Run sessions to completion on the fake clock (a deterministic stand-in for the engine)."""
    heap: list = []
    seq = 0

    def step(session, value) -> None:
        nonlocal seq
        try:
            item = next(session) if value is None else session.send(value)
        except StopIteration:
            return
        seq += 1
        if isinstance(item, Wait):
            heapq.heappush(heap, (max(clock.now, round(item.until * 1e9)), seq, session, None))
            return
        req_type, customer, number = item
        sent = clock.now
        done = server.done_at(sent)
        reply = (LaptopInfo(0, customer, number, 1, 1, 1) if req_type == RequestType.ORDER
                 else CustomerRecord(0, customer, -1))
        heapq.heappush(heap, (done, seq, session,
                              OpResult(True, reply, None, done - sent, 1, 0, 1, sent, done)))

    for s in sessions:
        step(s, None)
    for _ in range(max_events):
        if not heap:
            return
        t, _, session, value = heapq.heappop(heap)
        clock.now = t
        step(session, value)
    raise AssertionError("the sessions did not finish")


def run_fake(rate: float, duration: float, slots: int, server: FifoServer, read_fraction: float = 0.5
             ) -> tuple[list[Completion], OpenLoopSchedule]:
    clock = FakeClock()
    schedule = OpenLoopSchedule(rate, duration, T0)
    workload = OpenLoopWorkload(list(range(10)), read_fraction, seed=1)
    done: list[Completion] = []
    drive(slot_sessions(schedule, workload, slots, done.append, clock_ns=clock), clock, server)
    return done, schedule


# --------------------------------------------------------------------------- the schedule


def test_schedule_times_and_count():
    s = OpenLoopSchedule(200, 2.5, T0)
    assert s.count == 500 and s.mine == 500
    assert s.intended_ns(0) == T0
    assert s.intended_ns(1) == T0 + 5 * MS
    assert s.intended_ns(499) == T0 + 499 * 5 * MS
    claimed = []
    while (k := s.claim()) is not None:
        claimed.append(k)
    assert claimed == list(range(500))
    assert s.claim() is None  # bounded: nothing after the last


def test_workers_split_one_schedule():
    parts = [OpenLoopSchedule(1000, 1.0, T0, worker=w, procs=3) for w in range(3)]
    seen = []
    for part in parts:
        mine = []
        while (k := part.claim()) is not None:
            mine.append(k)
        assert len(mine) == part.mine
        seen += mine
    assert sorted(seen) == list(range(1000))
    assert customers_for_worker(list(range(10)), 1, 3) == [1, 4, 7]


@pytest.mark.parametrize("bad", [dict(rate=0, duration=1), dict(rate=-1, duration=1),
                                 dict(rate=1, duration=0), dict(rate=float("inf"), duration=1),
                                 dict(rate=1e9, duration=1e9), dict(rate=1, duration=1, read_fraction=1.5),
                                 dict(rate=1, duration=1, max_inflight=0)])
def test_bad_open_loop_arguments(bad):
    with pytest.raises(ValueError):
        validate_open_args(**bad)


def test_workload_is_seeded_and_order_numbers_are_unique_per_customer():
    a = OpenLoopWorkload(list(range(5)), 0.3, seed=7)
    b = OpenLoopWorkload(list(range(5)), 0.3, seed=7)
    ops_a = [a.next_op() for _ in range(500)]
    assert ops_a == [b.next_op() for _ in range(500)]
    orders = [(c, n) for t, c, n in ops_a if t == RequestType.ORDER]
    assert len(orders) == len(set(orders))
    for c in range(5):
        assert [n for cc, n in orders if cc == c] == list(range(sum(1 for cc, _ in orders if cc == c)))
    reads = sum(1 for t, _, _ in ops_a if t == RequestType.READ)
    assert 100 < reads < 200  # ~30% of 500


# --------------------------------------------------------------------------- against the fake clock


def test_requests_start_on_schedule_when_the_server_keeps_up():
    done, schedule = run_fake(100, 2.0, slots=4, server=FifoServer(service=1 * MS))
    assert len(done) == schedule.count == 200
    for c in done:
        assert c.result.start_ns == c.intended_ns  # sent exactly when due: no lag
        assert c.latency_ns == 1 * MS


def test_a_stall_shows_in_every_request_due_during_it():
    """No coordinated omission: the 100 requests due during a 1 s stall all carry it."""
    server = FifoServer(service=1 * MS, stall=(T0 + 1 * S, T0 + 2 * S))
    done, _ = run_fake(100, 4.0, slots=200, server=server)
    assert len(done) == 400
    slow = [c for c in done if c.latency_ns >= 500 * MS]
    # due in [1.0, ~1.55) s (the backlog drains at 1 ms each after the stall): >= 0.5 s
    assert 45 <= len(slow) <= 60
    stalled = [c for c in done if T0 + 1 * S <= c.intended_ns < T0 + 2 * S]
    assert len(stalled) == 100
    for c in stalled:  # each waited until the stall ended
        assert c.latency_ns >= T0 + 2 * S - c.intended_ns
    # Their latency is what a user saw; the service time from the moment of sending is the same
    # here (every request was sent on time, because free slots were waiting).
    assert all(c.result.start_ns == c.intended_ns for c in done)


def test_a_stall_still_counts_when_slots_run_out():
    """With one slot, requests due during the stall cannot even be sent until it ends; their
    latency still counts from their intended start, although their service time is short."""
    server = FifoServer(service=1 * MS, stall=(T0 + 1 * S, T0 + 2 * S))
    done, _ = run_fake(100, 4.0, slots=1, server=server)
    assert len(done) == 400
    from_intended = sorted(c.latency_ns for c in done)
    from_send = sorted(c.result.latency_ns for c in done)
    # The closed-loop view (time from the send) sees ONE slow request ...
    assert sum(1 for x in from_send if x >= 100 * MS) == 1
    # ... the open loop sees every request that was due during the stall.
    assert sum(1 for x in from_intended if x >= 100 * MS) >= 90
    assert from_intended[-1] >= 990 * MS


def test_history_processes_have_one_operation_outstanding():
    server = FifoServer(service=30 * MS)  # slower than the rate: several slots busy at once
    clock = FakeClock()
    schedule = OpenLoopSchedule(200, 1.0, T0)
    workload = OpenLoopWorkload(list(range(3)), 0.5, seed=3)
    from loadgen.history import HistoryRecorder

    rec = HistoryRecorder()
    drive(slot_sessions(schedule, workload, 20, lambda c: rec.record_op(c.process, c.op, c.result),
                        clock_ns=clock), clock, server)
    records = sorted(rec.raw(), key=lambda r: r[0])
    ops, _ = pair_operations([to_dict(r) for r in records])  # raises if a process overlaps
    assert len(ops) == 200
    assert len({op.process for op in ops}) > 1


# --------------------------------------------------------------------------- the real engine


def test_engine_resumes_a_waiting_session_on_time(fake_node):
    n1 = fake_node(1, fakes.answer(1))
    results = []

    def session():
        due = time.monotonic() + 0.2
        yield Wait(due)
        results.append(("woke", time.monotonic() - due))
        r = yield (int(RequestType.READ), 1, 0)
        results.append(("op", r))

    with ClientEngine([(1, n1.endpoint)], attempt_timeout=1.0, deadline=5.0) as engine:
        engine.run([session(), session()], max_duration=10.0)
    woke = [x for k, x in results if k == "woke"]
    ops = [x for k, x in results if k == "op"]
    assert len(woke) == 2 and all(0 <= w < 5.0 for w in woke)
    assert len(ops) == 2 and all(r.ok and r.start_ns <= r.end_ns for r in ops)


def test_engine_closes_sessions_still_waiting_at_the_end(fake_node):
    n1 = fake_node(1, fakes.answer(1))
    closed = []

    def session():
        try:
            yield Wait(time.monotonic() + 60)
        finally:
            closed.append(True)

    with ClientEngine([(1, n1.endpoint)], attempt_timeout=1.0, deadline=5.0) as engine:
        began = time.monotonic()
        engine.run([session()], max_duration=0.2)
        assert time.monotonic() - began < 10
    assert closed == [True]


@pytest.mark.parametrize("procs", [1, 2])
def test_open_loop_against_fake_nodes(fake_node, procs):
    n1 = fake_node(1, fakes.error(fakes.ErrorCode.NOT_PRIMARY, hint=2))
    n2 = fake_node(2, fakes.answer(2))
    cfg = fakes.make_config(n1, n2)
    spec = LoadSpec(mode="open", config=cfg, customer_ids=list(range(10)), rate=200, duration=1.0,
                    read_fraction=0.5, max_inflight=50, drain=5.0, procs=procs, seed=2,
                    push_telemetry=False)
    out = run_spec(spec)
    assert out.errors == []
    col = out.collector
    assert col.ok == 200 and col.failed == 0 and col.issued == 200
    assert col.latency.count == 200 and col.lag.count == 200
    ops, _ = pair_operations([to_dict(r) for r in out.history])
    assert len(ops) == 200
    orders = [(op.customer, op.value) for op in ops if op.f == "order"]
    assert len(orders) == len(set(orders))  # unique across worker processes too
    assert len(col.s_start) == 200


# --------------------------------------------------------------------------- per-request costs


def test_slots_use_the_schedules_intended_times():
    done, schedule = run_fake(333, 1.5, slots=7, server=FifoServer(service=2 * MS))
    assert sorted(c.k for c in done) == list(range(schedule.count))
    assert all(c.intended_ns == schedule.intended_ns(c.k) for c in done)


def test_workload_draws_every_customer_and_only_them():
    w = OpenLoopWorkload([11, 22, 33, 44, 55], 0.0, seed=5)
    drawn = [w.next_op()[1] for _ in range(1000)]
    assert set(drawn) == {11, 22, 33, 44, 55}
    assert all(100 < drawn.count(c) < 300 for c in (11, 22, 33, 44, 55))  # ~200 each


def test_open_loop_record_measures_from_the_intended_start():
    col = Collector(keep_samples=True, record_history=False)
    ok = OpResult(True, LaptopInfo(0, 1, 0, 1, 1, 1), None, 3 * MS, 1, 0, 1,
                  T0 + 2 * MS, T0 + 5 * MS)
    assert col.record(0, (int(RequestType.ORDER), 1, 0), ok, intended_ns=T0) == "ok"
    early = OpResult(True, CustomerRecord(0, 1, -1), None, 1 * MS, 1, 0, 1, T0, T0 + 1 * MS)
    col.record(1, (int(RequestType.READ), 1, 0), early, intended_ns=T0 + 1 * MS)
    col.flush()
    assert col.latency.count == 2 and col.lag.count == 2

    def top(ns: int) -> int:  # what the histogram reports for one value (its bucket's top)
        rec = LatencyRecorder()
        rec.record_ns(ns)
        return rec.value_at(100)

    assert col.by_f["order"].value_at(100) == top(5 * MS) and col.by_f["read"].value_at(100) == 1
    assert col.lag.value_at(100) == top(2 * MS) and col.lag.summary()["min"] == 1  # 0 -> 1 us
    assert col.service.value_at(100) == top(3 * MS)
    assert list(col.s_start) == [T0, T0 + 1 * MS] and list(col.s_end) == [T0 + 5 * MS, T0 + 1 * MS]
    assert col.first_ns == T0 and col.last_ns == T0 + 5 * MS
    assert col.counts == {"order ok": 1, "read ok": 1}


@pytest.mark.parametrize("push", [False, True])
def test_open_loop_builds_a_telemetry_pusher_only_when_pushing(fake_node, monkeypatch, push):
    """Without pushing there is no pusher at all: it would still cost every request a
    histogram update."""
    calls = []
    monkeypatch.setattr(worker_mod, "_telemetry", lambda spec, label: calls.append(label))
    n1 = fake_node(1, fakes.answer(1))
    spec = LoadSpec(mode="open", config=fakes.make_config(n1), customer_ids=list(range(4)),
                    rate=100, duration=0.2, read_fraction=0.5, max_inflight=4, drain=5.0,
                    push_telemetry=push)
    out = run_spec(spec)
    assert out.collector.ok == 20
    assert len(calls) == (1 if push else 0)
