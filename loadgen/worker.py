"""One load run, possibly spread over several worker processes: what `lfctl load` drives.

* `LoadSpec` says what to run: the closed loop of the original workloads (C customers, K
  operations each, `loadgen.load.run_load`) or the open loop (`--rate R --duration S`,
  `loadgen.openloop`), over `procs` processes.
* Each worker records every finished operation into a `Collector`: HdrHistograms (latency from
  the intended start in the open loop; the service time, the scheduler lag), counts per function
  and outcome, raw samples for the report's plot, and -- unless switched off -- the history.
* `run_spec` runs the workers (in-process for one, `multiprocessing` "spawn" processes for more;
  they start together at a barrier) and merges their collectors exactly: histograms are added,
  histories merged by time (one monotonic clock for every process on the machine).

`loadgen` imports only `protocol`; the orchestration around a run (nemesis, run directory, final
state, checker) lives in `orchestrator.loadrun`.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loadgen.client import ClientEngine, Op, OpResult, error_reason
from loadgen.history import HistoryRecorder, ProcessIds, Record, classify, merge_records
from loadgen.load import LoadResult, run_load, validate_load_args
from loadgen.openloop import (
    Completion,
    OpenLoopSchedule,
    OpenLoopWorkload,
    customers_for_worker,
    slot_sessions,
    validate_open_args,
)
from loadgen.stats import LatencyRecorder
from protocol.messages import RequestType

if TYPE_CHECKING:
    from protocol.config import ClusterConfig

__all__ = ["Collector", "LoadSpec", "RunOutput", "run_spec"]

F_CODES = {int(RequestType.ORDER): 0, int(RequestType.READ): 1, int(RequestType.BULK_READ): 2}
F_NAMES = ("order", "read", "bulk read")
OUTCOMES = ("ok", "fail", "info")
_COUNT_KEYS = [{kind: f"{name} {kind}" for kind in OUTCOMES} for name in F_NAMES]
START_BARRIER_S = 60.0  # workers must be connected within this long
START_MARGIN_S = 0.2  # the common start is this far after the last worker is ready


@dataclass
class LoadSpec:
    """Everything a worker needs (picklable: it crosses into spawned processes)."""

    mode: str  # "closed" | "open"
    config: ClusterConfig
    customer_ids: list[int]  # the customers of the run (closed: customer i of the workload)
    # closed loop
    orders: int = 0
    req_type: int = int(RequestType.ORDER)
    # open loop
    rate: float = 0.0
    duration: float = 0.0
    read_fraction: float = 0.5
    max_inflight: int = 1000
    drain: float = 10.0  # open loop: after the last request is due, wait this long at most
    # both
    procs: int = 1
    seed: int = 0
    max_duration: float = 300.0  # closed loop bound
    record_history: bool = True
    keep_samples: bool = True
    push_telemetry: bool = True
    attempt_timeout: float | None = None  # seconds; None: the config's
    deadline: float | None = None  # per operation; None: the config's

    def validate(self) -> None:
        if self.mode not in ("closed", "open"):
            raise ValueError(f"mode must be closed or open, got {self.mode!r}")
        if not isinstance(self.procs, int) or self.procs < 1:
            raise ValueError(f"procs must be an integer >= 1, got {self.procs!r}")
        if self.mode == "closed":
            validate_load_args(len(self.customer_ids), self.orders, self.req_type)
            if not self.max_duration > 0:
                raise ValueError(f"max_duration must be > 0 seconds, got {self.max_duration!r}")
        else:
            validate_open_args(self.rate, self.duration, self.read_fraction, self.max_inflight)
            if not self.customer_ids:
                raise ValueError("the open loop needs at least one customer")
            if not self.drain >= 0:
                raise ValueError(f"drain must be >= 0 seconds, got {self.drain!r}")
        if len(self.customer_ids) < self.procs:
            raise ValueError(f"{self.procs} processes need at least as many customers "
                             f"(got {len(self.customer_ids)})")

    @property
    def attempt_timeout_s(self) -> float:
        return (self.attempt_timeout if self.attempt_timeout is not None
                else self.config.client.attempt_timeout_ms / 1000.0)

    @property
    def deadline_s(self) -> float:
        return self.deadline if self.deadline is not None else self.config.client.deadline_ms / 1000.0


class Collector:
    """Everything one worker measured; `to_wire`/`from_wire` carry it between processes and
    `merge` adds another worker's.

    During a run `record` only appends to flat arrays (a few hundred ns); the histograms are
    filled by `flush()` afterwards (`LatencyRecorder.record_many_ns`, exact), so the
    generator spends its time sending requests on schedule, not in pure-Python histogram code."""

    def __init__(self, *, keep_samples: bool = True, record_history: bool = True) -> None:
        self.latency = LatencyRecorder()  # ok operations: from the intended start (open loop)
        self.by_f = {name: LatencyRecorder() for name in F_NAMES}
        self.service = LatencyRecorder()  # ok operations: from the first send
        self.lag = LatencyRecorder()  # open loop: first send - intended start, every request
        self.counts: Counter[str] = Counter()  # "order ok", "read info", ...
        self.errors: Counter[str] = Counter()
        self.engine_stats: Counter[str] = Counter()
        self.keep_samples = keep_samples
        # samples: intended (or first send) ns, completion ns, function code, outcome code
        self.s_start = array("q")
        self.s_end = array("q")
        self.s_f = array("b")
        self.s_outcome = array("b")
        self.history = HistoryRecorder() if record_history else None
        # not yet in the histograms: latency + its function code, service time, lag
        self._p_lat = array("q")
        self._p_lat_f = array("b")
        self._p_service = array("q")
        self._p_lag = array("q")
        self.first_ns = 0
        self.last_ns = 0
        self.issued = 0  # operations sent (or attempted)
        self.planned = 0  # open loop: requests this worker owned
        self.duration_s = 0.0

    # ------------------------------------------------------------------ recording

    def record(self, process: int | None, op: Op, result: OpResult,
               intended_ns: int | None = None) -> str:
        """Account for one finished operation; returns its outcome (ok, fail, info).

        Runs once per operation in the load's own loop, so it only appends to flat arrays and
        bumps counters, with the attributes it touches looked up once."""
        f_code = F_CODES.get(op[0], 2)  # IntEnum members hash like their ints
        history = self.history
        kind = history.record_op(process, op, result) if (
            history is not None and process is not None) else None
        ok = result.ok
        if kind is None:
            kind = "ok" if ok else classify(result)
        start = result.start_ns
        end = result.end_ns or time.monotonic_ns()
        if intended_ns is not None:
            origin = intended_ns
            if start:
                self._p_lag.append(start - intended_ns if start > intended_ns else 0)
        else:
            origin = start or end - result.latency_ns
        self.issued += 1
        self.counts[_COUNT_KEYS[f_code][kind]] += 1
        if ok:
            if intended_ns is not None:
                self._p_lat.append(end - origin if end > origin else 0)
            else:
                self._p_lat.append(result.latency_ns)
            self._p_lat_f.append(f_code)
            self._p_service.append(result.latency_ns)
        else:
            self.errors[error_reason(result.error)] += 1
        if self.keep_samples:
            self.s_start.append(origin)
            self.s_end.append(end)
            self.s_f.append(f_code)
            self.s_outcome.append(OUTCOMES.index(kind))
        if not self.first_ns or origin < self.first_ns:
            self.first_ns = origin
        if end > self.last_ns:
            self.last_ns = end
        return kind

    def flush(self) -> None:
        """Move the values recorded since the last flush into the histograms."""
        if self._p_lat:
            self.latency.record_many_ns(self._p_lat)
            if len(set(self._p_lat_f)) == 1:
                self.by_f[F_NAMES[self._p_lat_f[0]]].record_many_ns(self._p_lat)
            else:
                for code, name in enumerate(F_NAMES):
                    vals = [v for v, f in zip(self._p_lat, self._p_lat_f) if f == code]
                    self.by_f[name].record_many_ns(vals)
            self.service.record_many_ns(self._p_service)
        self.lag.record_many_ns(self._p_lag)
        for arr in (self._p_lat, self._p_lat_f, self._p_service, self._p_lag):
            del arr[:]

    # ------------------------------------------------------------------ totals

    @property
    def ok(self) -> int:
        return sum(n for k, n in self.counts.items() if k.endswith(" ok"))

    @property
    def failed(self) -> int:
        return sum(n for k, n in self.counts.items() if not k.endswith(" ok"))

    def count(self, f: str | None = None, outcome: str | None = None) -> int:
        return sum(n for k, n in self.counts.items()
                   if (f is None or k.rsplit(" ", 1)[0] == f)
                   and (outcome is None or k.rsplit(" ", 1)[1] == outcome))

    # ------------------------------------------------------------------ transport

    def to_wire(self) -> dict[str, Any]:
        self.flush()
        return {
            "latency": self.latency.encode(),
            "by_f": {k: v.encode() for k, v in self.by_f.items()},
            "service": self.service.encode(),
            "lag": self.lag.encode(),
            "counts": dict(self.counts),
            "errors": dict(self.errors),
            "engine_stats": dict(self.engine_stats),
            "samples": (self.s_start.tobytes(), self.s_end.tobytes(), self.s_f.tobytes(),
                        self.s_outcome.tobytes()),
            "history": self.history.raw() if self.history is not None else None,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "issued": self.issued,
            "planned": self.planned,
            "duration_s": self.duration_s,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Collector:
        c = cls(record_history=data["history"] is not None)
        c.latency = LatencyRecorder.decode(data["latency"])
        c.by_f = {k: LatencyRecorder.decode(v) for k, v in data["by_f"].items()}
        c.service = LatencyRecorder.decode(data["service"])
        c.lag = LatencyRecorder.decode(data["lag"])
        c.counts = Counter(data["counts"])
        c.errors = Counter(data["errors"])
        c.engine_stats = Counter(data["engine_stats"])
        for arr, raw in zip((c.s_start, c.s_end, c.s_f, c.s_outcome), data["samples"]):
            arr.frombytes(raw)
        if c.history is not None:
            c.history.extend_raw(data["history"])
        c.first_ns = data["first_ns"]
        c.last_ns = data["last_ns"]
        c.issued = data["issued"]
        c.planned = data["planned"]
        c.duration_s = data["duration_s"]
        return c

    def merge(self, other: Collector) -> None:
        self.flush()
        other.flush()
        self.latency.merge(other.latency)
        for k, v in other.by_f.items():
            self.by_f[k].merge(v)
        self.service.merge(other.service)
        self.lag.merge(other.lag)
        self.counts.update(other.counts)
        self.errors.update(other.errors)
        self.engine_stats.update(other.engine_stats)
        self.s_start.extend(other.s_start)
        self.s_end.extend(other.s_end)
        self.s_f.extend(other.s_f)
        self.s_outcome.extend(other.s_outcome)
        if self.history is not None and other.history is not None:
            self.history.extend_raw(other.history.raw())
        if other.first_ns and (not self.first_ns or other.first_ns < self.first_ns):
            self.first_ns = other.first_ns
        self.last_ns = max(self.last_ns, other.last_ns)
        self.issued += other.issued
        self.planned += other.planned
        self.duration_s = max(self.duration_s, other.duration_s)


# --------------------------------------------------------------------------- one worker


def _telemetry(spec: LoadSpec, label: str) -> Any:
    """The dashboard's telemetry pusher, when that module is there (never required)."""
    try:
        from loadgen.telemetry import TelemetryPusher
    except ImportError:  # pragma: no cover - the dashboard is optional
        return None
    endpoint = spec.config.supervisor.telemetry_endpoint if spec.push_telemetry else None
    try:
        return TelemetryPusher(endpoint, label=label)
    except Exception:  # pragma: no cover - telemetry must never stop a load
        return None


def run_worker(spec: LoadSpec, worker: int, start_at: Callable[[], float] | None = None
               ) -> Collector:
    """Run worker `worker`'s share of `spec` in this process and return what it measured.

    `start_at()` (called once the engine's sockets exist) returns the common start time
    (`time.monotonic()`); None: start now."""
    col = Collector(keep_samples=spec.keep_samples, record_history=spec.record_history)
    my_customers = customers_for_worker(spec.customer_ids, worker, spec.procs)
    if spec.mode == "closed":
        if start_at is not None:
            _sleep_until(start_at())
        index = {c: i for i, c in enumerate(spec.customer_ids)}
        fresh = ProcessIds(len(spec.customer_ids), worker, spec.procs)
        current: dict[int, int] = {}

        def on_result(op: Op, result: OpResult) -> None:
            customer = op[1]
            if int(op[0]) == RequestType.BULK_READ:
                col.record(None, op, result)
                return
            process = current.get(customer, index.get(customer, customer))
            if col.record(process, op, result) == "info":
                current[customer] = fresh.fresh()

        start = time.monotonic()
        res: LoadResult = run_load(spec.config, customers=len(my_customers), orders=spec.orders,
                                   req_type=spec.req_type, max_duration=spec.max_duration,
                                   seed=spec.seed * 1000 + worker,
                                   push_telemetry=spec.push_telemetry,
                                   customer_ids=my_customers, on_result=on_result)
        col.duration_s = time.monotonic() - start
        col.engine_stats.update({"attempts": res.attempts, "redirects": res.redirects,
                                 "timeouts": res.timeouts})
        col.planned = len(my_customers) * (spec.orders if spec.req_type != RequestType.BULK_READ else 1)
        col.flush()
        return col

    nodes = [(n.id, n.client_endpoint) for n in spec.config.nodes]
    label = f"open loop {spec.rate:g}/s" + (f" #{worker + 1}/{spec.procs}" if spec.procs > 1 else "")
    # Not pushing: no pusher at all.  One that sends nowhere would still put every operation
    # into its per-second HdrHistogram (pure Python, a few us), the open loop's costliest step
    # after the sockets in py-spy.
    telemetry = _telemetry(spec, label) if spec.push_telemetry else None
    try:
        with ClientEngine(nodes, attempt_timeout=spec.attempt_timeout_s,
                          deadline=spec.deadline_s, seed=spec.seed * 1000 + worker) as engine:
            begin = start_at() if start_at is not None else time.monotonic() + START_MARGIN_S
            # The engine's sockets connect meanwhile; the schedule starts at the common time.
            schedule = OpenLoopSchedule(spec.rate, spec.duration, int(begin * 1e9),
                                        worker=worker, procs=spec.procs)
            col.planned = schedule.mine
            workload = OpenLoopWorkload(my_customers, spec.read_fraction,
                                        seed=spec.seed * 1000 + worker)
            slots = max(1, min(spec.max_inflight // spec.procs or 1, schedule.mine or 1))

            def on_complete(c: Completion) -> None:
                col.record(c.process, c.op, c.result, intended_ns=c.intended_ns)
                if telemetry is not None:  # the dashboard sees latency from the intended start too
                    r = c.result
                    telemetry.record(r.ok, c.latency_ns, r.attempts, r.redirects, r.error)

            sessions = slot_sessions(schedule, workload, slots, on_complete, worker=worker,
                                     procs=spec.procs)
            stop_in = (begin - time.monotonic()) + spec.duration + spec.drain
            t0 = time.monotonic()
            engine.run(sessions, max_duration=max(0.1, stop_in))
            col.duration_s = time.monotonic() - max(t0, begin)
            col.engine_stats.update({k: engine.stats[k] for k in ("attempts", "redirects", "timeouts")})
        col.flush()
    finally:
        if telemetry is not None:
            try:
                telemetry.close()
            except Exception:  # pragma: no cover
                pass
    return col


def _sleep_until(when: float) -> None:
    while True:
        left = when - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


# --------------------------------------------------------------------------- several workers


@dataclass
class RunOutput:
    """The merged result of every worker."""

    spec: LoadSpec
    collector: Collector
    started_ns: int  # the common start (monotonic ns)
    wall_started: float  # time.time() at that start
    workers: int
    errors: list[str] = field(default_factory=list)  # workers that failed

    @property
    def history(self) -> list[Record]:
        return merge_records(self.collector.history.raw()) if self.collector.history else []


def _worker_main(spec: LoadSpec, worker: int, ready: Any, go: Any, start_value: Any,
                 out: Any) -> None:
    try:
        def start_at() -> float:
            ready.put(worker)
            if not go.wait(START_BARRIER_S + 10):
                raise RuntimeError("no start signal from the parent")
            return start_value.value

        col = run_worker(spec, worker, start_at)
        out.put((worker, col.to_wire(), None))
    except BaseException:
        out.put((worker, None, traceback.format_exc()))


def run_spec(spec: LoadSpec, *, on_start: Callable[[int], None] | None = None) -> RunOutput:
    """Run the load in `spec` (validated first), in `spec.procs` processes; `on_start(t_ns)`
    is called at the common start (the nemesis starts its clock there)."""
    spec.validate()
    if spec.procs == 1:
        box: list[float] = []

        def start_at() -> float:
            t = time.monotonic() + START_MARGIN_S  # the engine's sockets connect meanwhile
            box.append(t)
            if on_start is not None:
                on_start(int(t * 1e9))
            return t

        wall = time.time()
        col = run_worker(spec, 0, start_at)
        started = int(box[0] * 1e9) if box else time.monotonic_ns()
        if col.history is not None:
            col.history.raw().sort(key=lambda r: r[0])
        return RunOutput(spec, col, started, wall, 1)

    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start_value = ctx.Value("d", 0.0)
    workers = [ctx.Process(target=_worker_main, args=(spec, w, ready, go, start_value, out),
                           name=f"lfctl-load-{w}", daemon=True) for w in range(spec.procs)]
    for p in workers:
        p.start()
    errors: list[str] = []
    results: dict[int, Collector] = {}
    try:
        seen: set[int] = set()
        deadline = time.monotonic() + START_BARRIER_S
        while len(seen) < spec.procs:
            try:
                seen.add(ready.get(timeout=max(0.01, min(1.0, deadline - time.monotonic()))))
            except queue.Empty:
                pass
            _collect(out, results, errors, block=False)
            if errors or time.monotonic() >= deadline or not any(p.is_alive() for p in workers):
                break
        if len(seen) < spec.procs and not errors:
            errors.append(f"only {len(seen)} of {spec.procs} load processes started "
                          f"within {START_BARRIER_S:g} s")
        start = time.monotonic() + START_MARGIN_S
        start_value.value = start
        wall = time.time() + START_MARGIN_S
        go.set()
        if on_start is not None:
            on_start(int(start * 1e9))
        bound = (spec.duration + spec.drain if spec.mode == "open" else spec.max_duration) + 60.0
        deadline = start + bound
        while len(results) + len(errors) < spec.procs and time.monotonic() < deadline:
            _collect(out, results, errors, block=True)
            if not any(p.is_alive() for p in workers):
                _collect(out, results, errors, block=False)
                break
        if len(results) + len(errors) < spec.procs:
            errors.append(f"{spec.procs - len(results) - len(errors)} load process(es) "
                          "did not report")
    finally:
        go.set()
        for p in workers:
            p.join(timeout=5.0)
            if p.is_alive():
                p.kill()  # our own child, by its Process handle
                p.join(timeout=5.0)
    merged = Collector(keep_samples=spec.keep_samples, record_history=spec.record_history)
    for w in sorted(results):
        merged.merge(results[w])
    if merged.history is not None:
        merged.history.raw().sort(key=lambda r: r[0])
    return RunOutput(spec, merged, int(start_value.value * 1e9), wall, spec.procs, errors)


def _collect(out: Any, results: dict[int, Collector], errors: list[str], *, block: bool) -> None:
    try:
        worker, wire, err = out.get(timeout=0.5) if block else out.get_nowait()
    except queue.Empty:
        return
    if err is not None:
        errors.append(f"load process {worker} failed:\n{err}")
    else:
        results[worker] = Collector.from_wire(wire)


def split_customers(customers: Sequence[int], procs: int) -> list[list[int]]:
    return [customers_for_worker(customers, w, procs) for w in range(procs)]
