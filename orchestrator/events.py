"""What the supervisor narrates: an events ring buffer and the bookkeeping that produces it.

The supervisor calls the `ClusterMonitor` hooks from the places where it already knows something
happened (it started, stopped, paused or resumed a process; a child exited; a telemetry message
arrived) and calls `observe()` once per loop turn, which turns the view service's `changes` and the
node table into the events that need a comparison with the past: view changes (old and new
primary, reason), failover durations (from the primary's failure to the first view with a new
primary), learners that catch up (entries and duration).  It also keeps each node's ops/s
(from the cumulative `ops` counter in its pings) and the client telemetry aggregate.

Every event is a small JSON-ready dict: `seq` (grows by one per event, so a reader asks for
`since` the last one it saw), `t` (unix time), `kind`, `level` (info, warn, error, good),
`node` (or null) and `msg` (one human sentence), plus kind-specific fields.

Pure bookkeeping: no sockets, no clocks of its own (every hook takes `now`, monotonic; wall time
comes from the injectable `wall` clock), so it is tested without processes.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from loadgen.telemetry import TelemetryAggregator

__all__ = ["ClusterMonitor", "EventLog", "NodeFacts"]

EVENT_CAPACITY = 500
CLIENT_ERROR_EVENT_PERIOD = 2.0  # at most one client-error event per load per this many seconds
RATE_WINDOW_S = 1.0  # ops/s is measured over about this long
PROC_STATS_S = 1.0  # a node's CPU% and RSS are sampled at most this often


class EventLog:
    """A bounded ring buffer of events with increasing sequence numbers."""

    def __init__(self, capacity: int = EVENT_CAPACITY, wall: Callable[[], float] = time.time) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._wall = wall
        self.seq = 0  # the seq of the newest event (0: none yet)

    def add(self, kind: str, msg: str, *, node: int | None = None, level: str = "info", **fields: Any) -> dict:
        self.seq += 1
        event = {"seq": self.seq, "t": round(self._wall(), 3), "kind": kind, "level": level, "node": node,
                 "msg": msg, **fields}
        self._events.append(event)
        return event

    def since(self, seq: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Events with seq > `seq`, oldest first; at most the newest `limit` of them."""
        out = [e for e in self._events if e["seq"] > seq]
        return out[-limit:] if limit > 0 else []

    def __len__(self) -> int:
        return len(self._events)


class _Change(Protocol):  # orchestrator.view_service.ViewChange
    old: Any
    new: Any
    reason: str
    at: float


@dataclass
class NodeFacts:
    """What `observe` needs to know about one node this turn."""

    running: bool  # a process exists and has not exited
    state: str  # the supervisor's process state (starting, up, paused, down, crashed)
    last_index: int | None  # from its latest ping
    ops: int | None  # cumulative client operations answered, from its latest ping
    last_seen: float | None  # monotonic time of its latest ping
    incarnation: int | None = None


def _fmt_nodes(nodes: Iterable[int]) -> str:
    return ",".join(str(n) for n in sorted(nodes)) or "-"


def _fmt_duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


class ClusterMonitor:
    def __init__(self, *, wall: Callable[[], float] = time.time, capacity: int = EVENT_CAPACITY) -> None:
        self.wall = wall
        self.events = EventLog(capacity, wall)
        self.telemetry = TelemetryAggregator(cache_s=0.5)
        self.failovers = 0
        self.failover_durations: list[float] = []
        self.last_view_number = 0
        self._failed_at: dict[int, float] = {}  # node -> when it failed, as the supervisor saw it
        self._pending_failover: tuple[int, float] | None = None  # (old primary, failed at)
        self._learning: dict[int, tuple[float, int]] = {}  # node -> (since, last index then)
        self._view_members: frozenset[int] = frozenset()
        self._primary = 0
        self._rates: dict[int, deque[tuple[float, int]]] = {}
        self._rate: dict[int, float] = {}
        self._stopping: dict[int, str] = {}  # node -> why the supervisor is stopping it
        self._proc_stats: dict[int, tuple[float, float, int]] = {}  # pid -> (sampled at, cpu %, rss)
        self._client_error_at: dict[str, float] = {}
        self._client_error_pending: dict[str, tuple[int, dict[str, int], str | None]] = {}

    # ------------------------------------------------------------------ process hooks

    def node_started(self, node: int, pid: int, *, restart: bool, wipe: bool, now: float) -> None:
        self._failed_at.pop(node, None)
        self._learning.pop(node, None)
        self._rates.pop(node, None)
        self._rate.pop(node, None)
        if restart:
            how = " with its data wiped" if wipe else ""
            self.events.add("restarted", f"node {node} restarted{how} (pid {pid})", node=node, level="good", pid=pid,
                            wiped=wipe)
        else:
            self.events.add("started", f"node {node} started (pid {pid})", node=node, pid=pid)

    def node_start_failed(self, node: int, error: str, now: float) -> None:
        self.events.add("crashed", f"node {node} could not start: {error}", node=node, level="error")

    def stop_requested(self, node: int, pid: int | None, why: str, now: float) -> None:
        """The supervisor is about to signal the node: `why` is "kill" (with the signal),
        "restart" or "down".  The event is told when the exit is seen, with how it ended."""
        if why.startswith("kill"):
            self._failed_at.setdefault(node, now)
        self._stopping[node] = why

    def node_exited(self, node: int, pid: int, *, expected: bool, how: str, error: str | None, now: float) -> None:
        """A child process ended: `expected` when the supervisor stopped it (kill, restart, down);
        `how` is "SIGKILL", "exit code 3"..."""
        self._failed_at.setdefault(node, now)
        self._learning.pop(node, None)
        self._rate.pop(node, None)
        why = self._stopping.pop(node, "")
        if why.startswith("kill"):
            self.events.add("killed", f"node {node} killed (pid {pid}, {how})", node=node, level="warn", pid=pid)
        elif expected:
            what = "stopped to restart" if why == "restart" else "stopped"
            self.events.add("stopped", f"node {node} {what} (pid {pid}, {how})", node=node, pid=pid)
        else:
            because = f": {error}" if error else ""
            self.events.add("crashed", f"node {node} crashed (pid {pid}, {how}){because}", node=node, level="error",
                            pid=pid)

    def node_paused(self, node: int, pid: int | None, now: float) -> None:
        self._failed_at.setdefault(node, now)
        self.events.add("paused", f"node {node} paused (pid {pid}, SIGSTOP)", node=node, level="warn", pid=pid)

    def node_resumed(self, node: int, pid: int | None, now: float) -> None:
        self._failed_at.pop(node, None)
        self.events.add("resumed", f"node {node} resumed (pid {pid}, SIGCONT)", node=node, level="good", pid=pid)

    def note(self, msg: str, *, level: str = "info", kind: str = "note", node: int | None = None, **fields: Any) -> dict:
        """A free-form event (the demo narrates its plan with these)."""
        return self.events.add(kind, msg, node=node, level=level, **fields)

    # ------------------------------------------------------------------ telemetry

    def on_telemetry(self, msg: Any, now: float) -> None:
        """One message from the telemetry socket (anything: it comes from outside)."""
        if not TelemetryAggregator.is_client_telemetry(msg):
            return
        try:
            new_errors, reasons, last_error = self.telemetry.on_message(msg, now)
        except Exception:  # a malformed message must never take the supervisor down
            self.telemetry.bad_messages += 1
            return
        if new_errors <= 0:
            return
        sender = str(msg.get("sender"))
        n, acc, _ = self._client_error_pending.get(sender, (0, {}, None))
        for k, v in reasons.items():
            acc[k] = acc.get(k, 0) + v
        self._client_error_pending[sender] = (n + new_errors, acc, last_error)
        self._flush_client_errors(now)

    def _flush_client_errors(self, now: float, *, force: bool = False) -> None:
        for sender, (n, reasons, last_error) in list(self._client_error_pending.items()):
            if not force and now - self._client_error_at.get(sender, float("-inf")) < CLIENT_ERROR_EVENT_PERIOD:
                continue
            del self._client_error_pending[sender]
            self._client_error_at[sender] = now
            label = sender.rsplit("-", 1)[0]
            what = ", ".join(f"{r} x{c}" for r, c in sorted(reasons.items())) or (last_error or "unknown")
            self.events.add("client-errors", f"{label}: {n} operation(s) failed ({what})", level="error",
                            count=n, reasons=reasons, sender=sender)

    def clients(self, now: float) -> dict[str, Any]:
        return self.telemetry.summary(now, self.wall())

    # ------------------------------------------------------------------ per loop turn

    def observe(self, changes: list[_Change], view: Any, nodes: dict[int, NodeFacts], now: float) -> None:
        """Narrate new view changes and learner progress; update ops/s.  `changes` is the view
        service's list (it keeps the latest 200): entries are recognised by view number, which
        only grows."""
        for change in (changes if changes and changes[-1].new.number > self.last_view_number else ()):
            if change.new.number > self.last_view_number:
                self._on_view_change(change, nodes, now)
                self.last_view_number = change.new.number
        self._view_members = frozenset(view.members) if view.number else frozenset()
        self._primary = view.primary
        for node_id, facts in nodes.items():
            learner = (view.number > 0 and facts.running and facts.state == "up"
                       and node_id not in self._view_members and facts.last_seen is not None)
            if learner and node_id not in self._learning:
                start = facts.last_index or 0
                self._learning[node_id] = (now, start)
                self.events.add("catching-up", f"node {node_id} is catching up from index {start}",
                                node=node_id, level="warn", from_index=start)
            elif not learner and node_id not in self._view_members:
                self._learning.pop(node_id, None)
            self._update_rate(node_id, facts, now)
        if self._client_error_pending:
            self._flush_client_errors(now)

    def _on_view_change(self, change: _Change, nodes: dict[int, NodeFacts], now: float) -> None:
        old, new = change.old, change.new
        level = "info"
        if old.primary and new.primary != old.primary:
            level = "warn"
        if not new.primary:
            level = "error"
        primary = f"primary {new.primary}" if new.primary else "NO primary"
        moved = f" (was {old.primary})" if old.primary and new.primary != old.primary else ""
        self.events.add("view", f"view {new.number}: {primary}{moved}, backups {_fmt_nodes(new.backups)} "
                                f"- {change.reason}", level=level, view=new.number, old_primary=old.primary or None,
                        new_primary=new.primary or None, backups=sorted(new.backups), reason=change.reason)
        # Failover: the primary changed because the old one failed.
        if old.primary and new.primary != old.primary and self._pending_failover is None:
            facts = nodes.get(old.primary)
            failed_at = self._failed_at.get(old.primary)
            if failed_at is None and facts is not None and facts.last_seen is not None:
                failed_at = facts.last_seen  # it stopped pinging (paused from outside, cut off...)
            self._pending_failover = (old.primary, failed_at if failed_at is not None else change.at)
        if new.primary and self._pending_failover is not None and new.primary != self._pending_failover[0]:
            old_primary, failed_at = self._pending_failover
            self._pending_failover = None
            took = max(0.0, change.at - failed_at)
            self.failovers += 1
            self.failover_durations.append(took)
            self.events.add("failover", f"failover: node {old_primary} -> node {new.primary} in {_fmt_duration(took)}",
                            node=new.primary, level="good", old_primary=old_primary, new_primary=new.primary,
                            duration_s=round(took, 3))
        elif new.primary and self._pending_failover is not None and new.primary == self._pending_failover[0]:
            self._pending_failover = None  # the old primary itself came back (recovered from disk)
        # Learners admitted to the view.
        for node_id in sorted(new.members - old.members):
            started = self._learning.pop(node_id, None)
            if started is None or not old.number:
                continue
            since, start_index = started
            facts = nodes.get(node_id)
            last = facts.last_index if facts is not None and facts.last_index is not None else start_index
            entries = max(0, last - start_index)
            took = max(0.0, change.at - since)
            self.events.add("caught-up", f"node {node_id} caught up: {entries} entries in {_fmt_duration(took)}, "
                                         f"back in the view", node=node_id, level="good", entries=entries,
                            duration_s=round(took, 3))

    def _update_rate(self, node_id: int, facts: NodeFacts, now: float) -> None:
        if facts.ops is None or not facts.running:
            return
        samples = self._rates.setdefault(node_id, deque(maxlen=64))
        if samples and facts.ops < samples[-1][1]:  # a new incarnation counts from zero
            samples.clear()
        if not samples or samples[-1][1] != facts.ops or now - samples[-1][0] >= 0.25:
            samples.append((now, facts.ops))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()
        if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
            # Ops answered between the oldest sample and now (the newest ping may be older than
            # now if the node went quiet; then the rate decays as `now` moves on).
            span = max(now - samples[0][0], samples[-1][0] - samples[0][0])
            self._rate[node_id] = (samples[-1][1] - samples[0][1]) / span
        else:
            self._rate[node_id] = 0.0

    def process_stats(self, ps: psutil.Process, now: float) -> tuple[float | None, int | None]:
        """(CPU %, RSS bytes) of a node process, sampled at most every PROC_STATS_S: several
        dashboards polling status then cost one psutil sample a second, and the CPU percentage
        is measured over a second instead of over the gap between two pollers."""
        cached = self._proc_stats.get(ps.pid)
        if cached is not None and now - cached[0] < PROC_STATS_S:
            return cached[1], cached[2]
        try:
            with ps.oneshot():
                cpu = ps.cpu_percent(None)
                rss = ps.memory_info().rss
        except psutil.Error:
            return None, None
        if len(self._proc_stats) > 64:
            self._proc_stats = {pid: v for pid, v in self._proc_stats.items() if now - v[0] < 10 * PROC_STATS_S}
        self._proc_stats[ps.pid] = (now, cpu, rss)
        return cpu, rss

    def ops_per_s(self, node_id: int) -> float | None:
        rate = self._rate.get(node_id)
        return round(rate, 1) if rate is not None else None

    def stats(self) -> dict[str, Any]:
        durations = self.failover_durations
        return {"failovers": self.failovers,
                "last_failover_s": round(durations[-1], 3) if durations else None,
                "longest_failover_s": round(max(durations), 3) if durations else None,
                "events_seq": self.events.seq}
