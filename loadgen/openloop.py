"""Open-loop load: requests at a constant rate, latency measured from each request's intended start.

A closed loop (each customer waits for its previous operation) slows down with the service it
measures: when the cluster stalls for a second, a closed-loop client sends nothing during that
second and records ONE slow operation -- the stall is mostly hidden ("coordinated omission").
An open loop decides in advance when every request starts: request k of a run at rate R is due at
`start + k / R`, whatever happened before.  Its latency runs from that intended start to its
completion, so every request that should have been sent during a stall carries the stall.

How requests are issued: `max_inflight` slot sessions (one per would-be concurrent user, each
one Jepsen process) claim request indices in order.  A slot whose request is not due yet waits
(`Wait`, a timer in the engine -- no thread, no busy loop); a request claimed late (every slot was
busy) is sent at once and its latency still counts from its intended start.  With `procs`
worker processes, worker w takes the requests k = w, w + procs, w + 2 procs... of one common
schedule, so together they keep the global rate and spacing.

The schedule, the workload and the slot logic take a clock function, so tests drive them with a
fake clock (tests/test_openloop.py); `run_open_loop` wires them to a real `ClientEngine`.

Every loop is bounded: `count = round(rate * duration)` requests, and the engine stops at
`duration + drain` seconds whatever is outstanding (those operations end `info`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from loadgen.client import Op, OpResult, Session, Wait
from loadgen.history import ProcessIds, classify
from protocol.messages import RequestType

__all__ = ["OpenLoopSchedule", "OpenLoopWorkload", "slot_sessions", "validate_open_args"]

MAX_REQUESTS = 50_000_000  # rate * duration beyond this is a typo, not a load test
_READ = int(RequestType.READ)
_ORDER = int(RequestType.ORDER)


def validate_open_args(rate: float, duration: float, read_fraction: float = 0.5,
                       max_inflight: int = 1) -> None:
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not rate > 0 \
            or not math.isfinite(rate):
        raise ValueError(f"rate must be > 0 requests per second, got {rate!r}")
    if not isinstance(duration, (int, float)) or isinstance(duration, bool) or not duration > 0 \
            or not math.isfinite(duration):
        raise ValueError(f"duration must be > 0 seconds, got {duration!r}")
    if round(rate * duration) < 1:
        raise ValueError(f"rate x duration = {rate * duration:g}: not even one request")
    if rate * duration > MAX_REQUESTS:
        raise ValueError(f"rate x duration = {rate * duration:.0f} requests; at most {MAX_REQUESTS}")
    if not 0.0 <= read_fraction <= 1.0:
        raise ValueError(f"read fraction must be within 0..1, got {read_fraction!r}")
    if not isinstance(max_inflight, int) or max_inflight < 1:
        raise ValueError(f"max in-flight must be an integer >= 1, got {max_inflight!r}")


class OpenLoopSchedule:
    """Request k (0 <= k < count) is due at `start_ns + k * 1e9 / rate`.

    This worker owns the requests k = worker, worker + procs, ...; `claim()` hands them out in
    order, each once."""

    def __init__(self, rate: float, duration: float, start_ns: int, *, worker: int = 0,
                 procs: int = 1) -> None:
        validate_open_args(rate, duration)
        if not 0 <= worker < procs:
            raise ValueError(f"worker {worker} of {procs}")
        self.rate = float(rate)
        self.duration = float(duration)
        self.start_ns = int(start_ns)
        self.count = int(round(rate * duration))  # for every worker together
        self.worker = worker
        self.procs = procs
        self._next = worker
        self.claimed = 0

    @property
    def interval_ns(self) -> float:
        return 1e9 / self.rate

    @property
    def mine(self) -> int:
        """How many requests this worker owns."""
        return max(0, (self.count - self.worker + self.procs - 1) // self.procs)

    @property
    def end_ns(self) -> int:
        return self.start_ns + int(self.duration * 1e9)

    def intended_ns(self, k: int) -> int:
        return self.start_ns + round(k * 1e9 / self.rate)  # round() of a float is an int

    def claim(self) -> int | None:
        k = self._next
        if k >= self.count:
            return None
        self._next += self.procs
        self.claimed += 1
        return k


class OpenLoopWorkload:
    """What request k asks: a read (probability `read_fraction`) or an order, of a customer
    drawn uniformly (seeded) from `customers`.  Order numbers count up per customer from 0, so
    every order of a run is unique -- which the checker relies on to tell orders apart.  The
    customers of one worker must not be shared with another worker (their counters would
    collide); `customers_for_worker` splits them."""

    def __init__(self, customers: Sequence[int], read_fraction: float, seed: int) -> None:
        if not customers:
            raise ValueError("the open loop needs at least one customer")
        self.customers = list(customers)
        self.read_fraction = float(read_fraction)
        self._rng = random.Random(seed)
        self._next_order: dict[int, int] = {}

    def next_op(self) -> Op:
        """One call per request of the run, so kept lean: the customer index comes from
        `random()` (uniform like `randrange`, at a third of its cost) and the request types are
        plain ints computed once."""
        rng = self._rng
        customers = self.customers
        customer = customers[int(rng.random() * len(customers))]
        if rng.random() < self.read_fraction:
            return (_READ, customer, 0)
        next_order = self._next_order
        number = next_order.get(customer, 0)
        next_order[customer] = number + 1
        return (_ORDER, customer, number)


def customers_for_worker(customers: Sequence[int], worker: int, procs: int) -> list[int]:
    """Worker w's share: every procs-th customer, starting at the w-th (never empty when there
    are at least as many customers as workers)."""
    return list(customers[worker::procs])


@dataclass(slots=True)  # one per request: slots make it cheaper to build
class Completion:
    """What a slot reports for each finished request."""

    k: int
    intended_ns: int
    process: int
    op: Op
    result: OpResult
    end_ns: int  # completion (the engine's end_ns, else the clock when the slot resumed)

    @property
    def latency_ns(self) -> int:
        """From the intended start: includes any wait for a free slot or a late scheduler."""
        return max(0, self.end_ns - self.intended_ns)


def slot_sessions(schedule: OpenLoopSchedule, workload: OpenLoopWorkload, slots: int,
                  on_complete: Callable[[Completion], None], *,
                  clock_ns: Callable[[], int] = time.monotonic_ns, worker: int = 0,
                  procs: int = 1) -> list[Session]:
    """`slots` sessions that together issue this worker's share of the schedule.

    Slot s starts as process `s * procs + worker`; after an `info` outcome it continues as a
    fresh process (ids from `slots * procs` up), since the old one may still have an operation
    in flight."""
    fresh = ProcessIds(slots * procs, worker, procs)
    return [_slot(schedule, workload, s * procs + worker, fresh, on_complete, clock_ns)
            for s in range(slots)]


def _slot(schedule: OpenLoopSchedule, workload: OpenLoopWorkload, process: int,
          fresh: ProcessIds, on_complete: Callable[[Completion], None],
          clock_ns: Callable[[], int]) -> Iterator:
    """One slot: claim the next request, wait until it is due (unless it is late already), send
    it, report it.  Runs once per request, so the bound methods are looked up once."""
    claim = schedule.claim
    start_ns, rate = schedule.start_ns, schedule.rate
    next_op = workload.next_op
    while True:
        k = claim()
        if k is None:
            return
        due = start_ns + round(k * 1e9 / rate)  # `schedule.intended_ns(k)`, inlined
        if clock_ns() < due:
            yield Wait(due / 1e9)
        op = next_op()
        result = yield op
        end = result.end_ns or clock_ns()
        on_complete(Completion(k, due, process, op, result, end))
        if not result.ok and classify(result) == "info":
            process = fresh.fresh()
