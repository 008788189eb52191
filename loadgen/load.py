"""Load generator: the original LaptopFactory workloads, driven by one `ClientEngine`.

Workloads (request types of the original system):

* type 1 -- customer i (0..customers-1) places orders 0..orders-1, one after another;
* type 2 -- customer i reads its own record `orders` times;
* type 3 -- each of `customers` sessions issues one bulk read of customers [0, orders).

Each customer is one sequential session (the next operation starts when the previous one has
finished), and all customers run concurrently: that is the closed-loop load of the original
client, without one thread per customer.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loadgen.client import ClientEngine, Op, OpResult, Session, error_reason
from loadgen.stats import SUMMARY_KEYS, LatencyRecorder
from loadgen.telemetry import TelemetryPusher
from protocol.messages import RequestType

if TYPE_CHECKING:
    from protocol.config import ClusterConfig

__all__ = ["LoadResult", "make_sessions", "run_load", "validate_load_args"]

SCHEMA_VERSION = 1

_TYPE_NAMES = {1: "order", 2: "read", 3: "bulk read"}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_load_args(customers: int, orders: int, req_type: int) -> None:
    """Raise ValueError naming the bad argument; done before any socket is opened."""
    if not _is_int(customers) or customers < 1:
        raise ValueError(f"customers must be an integer >= 1, got {customers!r}")
    if not _is_int(orders) or orders < 1:
        raise ValueError(f"orders must be an integer >= 1, got {orders!r}")
    if not _is_int(req_type) or req_type not in (1, 2, 3):
        raise ValueError(
            f"request type must be 1 (order), 2 (read) or 3 (bulk read), got {req_type!r}")


def _order_session(customer: int, orders: int) -> Session:
    for number in range(orders):
        yield (int(RequestType.ORDER), customer, number)


def _read_session(customer: int, reads: int) -> Session:
    for _ in range(reads):
        yield (int(RequestType.READ), customer, 0)


def _bulk_session(hi: int) -> Session:
    yield (int(RequestType.BULK_READ), 0, hi)


def make_sessions(customers: int, orders: int, req_type: int,
                  customer_ids: Sequence[int] | None = None) -> list[Session]:
    """The sessions of a workload, one per customer (see the module docstring).

    Sessions are generators (`yield op`, receive its `OpResult`); they ignore the results, so a
    failed operation does not stop a customer -- the load keeps its shape under failures.
    Validates eagerly (a list, not a lazy generator) so bad arguments fail before any I/O.
    `customer_ids` replaces `range(customers)` (a worker process's share of the customers, or
    customers moved to a fresh id range); for type 3 only its length counts."""
    validate_load_args(customers, orders, req_type)
    ids = range(customers) if customer_ids is None else list(customer_ids)
    if req_type == RequestType.ORDER:
        return [_order_session(c, orders) for c in ids]
    if req_type == RequestType.READ:
        return [_read_session(c, orders) for c in ids]
    return [_bulk_session(orders) for _ in ids]


@dataclass
class LoadResult:
    """What one load run did; `to_json()` is the stable (schema_version 1) report."""

    type: int
    customers: int
    orders: int
    ok: int = 0
    failed: int = 0
    duration_s: float = 0.0
    latency: LatencyRecorder = field(default_factory=LatencyRecorder)
    attempts: int = 0
    redirects: int = 0
    timeouts: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def operations(self) -> int:
        return self.ok + self.failed

    @property
    def throughput_ops(self) -> float:
        """Successful operations per second of wall time."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def record(self, op: Op, result: OpResult) -> None:
        """Account for one finished operation; only successes enter the latency histogram, so
        a run of timeouts does not masquerade as a slow service."""
        if result.ok:
            self.ok += 1
            self.latency.record_ns(result.latency_ns)
        else:
            self.failed += 1
            self.errors[error_reason(result.error)] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "type": self.type,
            "customers": self.customers,
            "orders": self.orders,
            "operations": self.operations,
            "ok": self.ok,
            "failed": self.failed,
            "duration_s": round(self.duration_s, 3),
            "throughput_ops": round(self.throughput_ops, 1),
            "latency_us": self.latency.summary(),
            "attempts": self.attempts,
            "redirects": self.redirects,
            "timeouts": self.timeouts,
            "errors": dict(sorted(self.errors.items())),
        }

    def format_text(self) -> str:
        lat = self.latency.summary()
        lat_line = "  ".join(f"{key} {lat[key]}" for key in SUMMARY_KEYS)
        lines = [
            f"type {self.type} ({_TYPE_NAMES.get(self.type, '?')}): {self.customers} customers, "
            f"orders {self.orders}",
            f"operations {self.operations}  ok {self.ok}  failed {self.failed}  "
            f"in {self.duration_s:.2f} s  ->  {self.throughput_ops:.1f} ops/s",
            f"latency us: {lat_line}",
            f"attempts {self.attempts}  redirects {self.redirects}  timeouts {self.timeouts}",
        ]
        if self.errors:
            lines.append("errors: " + ", ".join(f"{reason} x{n}"
                                                for reason, n in sorted(self.errors.items())))
        return "\n".join(lines)


def run_load(config: ClusterConfig, *, customers: int, orders: int, req_type: int,
             max_duration: float = 300.0, seed: int = 0, push_telemetry: bool = True,
             customer_ids: Sequence[int] | None = None,
             on_result: Callable[[Op, OpResult], None] | None = None) -> LoadResult:
    """Run one workload against the cluster in `config` and report what happened.

    Stops after `max_duration` seconds even if sessions remain (their outstanding operations
    count as failed "stopped").  `customer_ids`: see `make_sessions`.  `on_result(op, result)`
    is called for every finished operation too (the history recorder of `lfctl load` uses it)."""
    validate_load_args(customers, orders, req_type)
    if not max_duration > 0:
        raise ValueError(f"max_duration must be > 0 seconds, got {max_duration!r}")
    result = LoadResult(type=req_type, customers=customers, orders=orders)
    nodes = [(n.id, n.client_endpoint) for n in config.nodes]
    # Per-second metrics to the supervisor's telemetry socket, for the dashboard (never blocks).
    telemetry = TelemetryPusher(config.supervisor.telemetry_endpoint if push_telemetry else None,
                                label=f"load type {req_type}")
    with telemetry, ClientEngine(nodes, attempt_timeout=config.client.attempt_timeout_ms / 1000.0,
                                 deadline=config.client.deadline_ms / 1000.0, seed=seed) as engine:
        start = time.monotonic()
        record = result.record
        if on_result is not None:
            def record(op: Op, res: OpResult) -> None:
                result.record(op, res)
                on_result(op, res)
        engine.run(make_sessions(customers, orders, req_type, customer_ids),
                   max_duration=max_duration, on_result=telemetry.wrap(record))
        result.duration_s = time.monotonic() - start
        result.attempts = engine.stats["attempts"]
        result.redirects = engine.stats["redirects"]
        result.timeouts = engine.stats["timeouts"]
    return result
