"""The nemesis: a seeded schedule of faults run through the supervisor while a load runs, and the
end of a run: heal everything, let the cluster settle, read every live node's final state.

Faults (`--nemesis kill-primary,kill-backup,pause,restart,wipe,partition`):

| fault          | what it does                                         | healed by                       |
|----------------|------------------------------------------------------|---------------------------------|
| kill-primary   | SIGKILL the primary                                  | restarting it (with its data)   |
| kill-backup    | SIGKILL one backup of the view                       | restarting it                   |
| pause          | SIGSTOP one node (any role)                          | SIGCONT                         |
| restart        | SIGTERM one node and start it again at once          | (instantaneous)                 |
| wipe           | restart one node with its data deleted               | (instantaneous; it catches up)  |
| partition      | cut one node from the others; the view service stays | `heal`                          |
|                | with the majority (`orchestrator.partition`)         |                                 |

The schedule: after a quiet period of about half an interval, one fault at a time -- each fault
kind once in a seeded shuffled order, then again -- held for about half an interval (so longer
than the failure timeout: failover really happens), healed, then up to `RECOVERY_TIMEOUT` for the
cluster to have every node back in the view, then a quiet period of half to one interval.  All
choices (fault order, victims, jitter) come from `random.Random(seed)`, so a seed names a
schedule; what the cluster does in response still depends on timing.  A fault is skipped (and
said so) when it would be unsafe or meaningless: no backup to kill, or a kill, restart or wipe
of the only node that holds the data.

Every fault is recorded in the run's history by process "nemesis": `start-<fault>` when it is
applied, `stop-<fault>` when it is healed.  `stop()` ends the schedule, heals the current fault,
then heals everything: partitions, paused nodes, and nodes the nemesis killed.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator import partition
from orchestrator.control import ControlError, request
from protocol.config import ClusterConfig

__all__ = ["FAULTS", "Nemesis", "NemesisEvent", "parse_faults", "read_final_state", "settle"]

FAULTS = ("kill-primary", "kill-backup", "pause", "restart", "wipe", "partition")
CONTROL_TIMEOUT = 15.0  # kill/restart reply once the process exited (5 s grace + margin)
RECOVERY_TIMEOUT = 15.0
STATUS_TIMEOUT = 2.0


def parse_faults(text: str) -> list[str]:
    faults = [f.strip() for f in text.split(",") if f.strip()]
    if not faults:
        raise ValueError(f"--nemesis needs a list of faults ({', '.join(FAULTS)})")
    bad = [f for f in faults if f not in FAULTS]
    if bad:
        raise ValueError(f"unknown fault(s) {', '.join(bad)} (known: {', '.join(FAULTS)})")
    return list(dict.fromkeys(faults))


@dataclass
class NemesisEvent:
    fault: str
    nodes: list[int]
    start_ns: int
    end_ns: int | None = None
    detail: str = ""
    healed: bool = False

    def to_json(self, t0_ns: int = 0) -> dict[str, Any]:
        return {"fault": self.fault, "nodes": self.nodes, "detail": self.detail,
                "start_s": round((self.start_ns - t0_ns) / 1e9, 3),
                "end_s": None if self.end_ns is None else round((self.end_ns - t0_ns) / 1e9, 3),
                "healed": self.healed}


class Nemesis:
    """Runs the fault schedule in a thread.  `record(time_ns, f, value)` receives the history
    records (it must be thread-safe: `list.append` is)."""

    def __init__(self, cfg: ClusterConfig, faults: list[str], *, interval: float, seed: int,
                 record: Callable[[int, str, Any], None] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        if not interval > 0:
            raise ValueError(f"--nemesis-interval must be > 0 seconds, got {interval!r}")
        self.cfg = cfg
        self.faults = list(faults)
        self.interval = float(interval)
        self.rng = random.Random(seed)
        self.record = record or (lambda *_: None)
        self.log = log or (lambda _msg: None)
        self.events: list[NemesisEvent] = []
        self.skipped: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._killed: set[int] = set()  # nodes we killed and have not restarted yet
        self._paused: set[int] = set()
        self._partitioned = False
        self._bag: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="nemesis", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """End the schedule (the current fault is healed); `stop()` still has to be called."""
        self._stop.set()

    def stop(self, timeout: float = 60.0) -> None:
        """End the schedule, heal the current fault, then heal everything."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.errors.append("the nemesis thread did not stop in time")
        self.heal_all()

    def _main(self) -> None:
        try:
            if self._wait(self.interval * self.rng.uniform(0.4, 0.6)):
                return
            while not self._stop.is_set():
                if not self._bag:
                    self._bag = list(self.faults)
                    self.rng.shuffle(self._bag)
                fault = self._bag.pop()
                hold = self.interval * self.rng.uniform(0.4, 0.6)
                try:
                    self._run(fault, hold)
                except (ControlError, KeyError, ValueError) as exc:
                    self.errors.append(f"{fault}: {exc}")
                    self.log(f"nemesis: {fault} failed: {exc}")
                if self._stop.is_set():
                    return
                self._wait_recovered(RECOVERY_TIMEOUT)
                if self._wait(self.interval * self.rng.uniform(0.5, 1.0)):
                    return
        except Exception as exc:  # the nemesis must never take the load down with it
            self.errors.append(f"nemesis failed: {type(exc).__name__}: {exc}")

    def _wait(self, seconds: float) -> bool:
        """Wait, or return True at once when stopping."""
        return self._stop.wait(max(0.0, seconds))

    # ------------------------------------------------------------------ control

    def _sup(self, obj: dict, timeout: float = CONTROL_TIMEOUT) -> dict:
        reply = request(self.cfg.supervisor.control_endpoint, obj, timeout)
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error") or "refused"))
        return reply

    def _status(self) -> dict:
        return self._sup({"cmd": "status"}, STATUS_TIMEOUT)

    def _begin(self, fault: str, nodes: list[int], detail: str) -> NemesisEvent:
        ev = NemesisEvent(fault, nodes, time.monotonic_ns(), detail=detail)
        self.events.append(ev)
        self.record(ev.start_ns, f"start-{fault}", {"nodes": nodes, "detail": detail})
        self.log(f"nemesis: {detail}")
        return ev

    def _end(self, ev: NemesisEvent, detail: str) -> None:
        ev.end_ns = time.monotonic_ns()
        ev.healed = True
        self.record(ev.end_ns, f"stop-{ev.fault}", {"nodes": ev.nodes, "detail": detail})
        self.log(f"nemesis: {detail}")

    def _skip(self, fault: str, why: str) -> None:
        self.skipped.append(f"{fault}: {why}")
        self.log(f"nemesis: skipped {fault} ({why})")

    # ------------------------------------------------------------------ faults

    def _run(self, fault: str, hold: float) -> None:
        status = self._status()
        view = status["view"]
        up = sorted(n["id"] for n in status["nodes"] if n["state"] == "up")
        members = ([view["primary"]] if view["primary"] else []) + list(view["backups"])
        if fault == "kill-primary":
            if not view["primary"]:
                return self._skip(fault, "no primary")
            if not [b for b in view["backups"] if b in up]:
                # With no in-sync backup the primary holds the only copy: killing it tests
                # nothing but the WAL (and loses everything under durability = "memory").
                return self._skip(fault, f"node {view['primary']} is the only in-sync node")
            self._kill_and_restart(fault, int(view["primary"]), hold, "primary")
        elif fault == "kill-backup":
            backups = [b for b in view["backups"] if b in up]
            if not backups:
                return self._skip(fault, "no backup in the view")
            self._kill_and_restart(fault, self.rng.choice(sorted(backups)), hold, "backup")
        elif fault == "pause":
            if not up:
                return self._skip(fault, "no node is up")
            node = self.rng.choice(up)
            ev = self._begin(fault, [node], f"pause node {node} ({_role(node, view)}) for {hold:.1f} s")
            self._sup({"cmd": "pause", "node": node})
            self._paused.add(node)
            self._wait(hold)
            self._sup({"cmd": "resume", "node": node})
            self._paused.discard(node)
            self._end(ev, f"resumed node {node}")
        elif fault in ("restart", "wipe"):
            if not up:
                return self._skip(fault, "no node is up")
            node = self.rng.choice(up)
            holders = [m for m in members if m != node and m in up]
            if not holders:
                return self._skip(fault, f"node {node} holds the only in-sync copy of the data")
            wipe = fault == "wipe"
            ev = self._begin(fault, [node], f"{'wipe and restart' if wipe else 'restart'} node {node} "
                                            f"({_role(node, view)})")
            self._sup({"cmd": "restart", "node": node, "wipe": wipe})
            self._end(ev, f"node {node} restarted{' empty' if wipe else ''}")
        elif fault == "partition":
            ids = sorted(self.cfg.node_ids)
            if len(ids) < 2:
                return self._skip(fault, "a single node cannot be partitioned")
            victim = self.rng.choice(ids)
            groups = [[n for n in ids if n != victim], [victim]]
            plan = partition.plan_partition(groups, 0)
            ev = self._begin(fault, [victim], f"partition {plan.describe()}: node {victim} "
                                              f"({_role(victim, view)}) cut off for {hold:.1f} s")
            self._partitioned = True
            unreached = partition.apply_plan(self.cfg, plan)
            if unreached:
                ev.detail += f" (not reached: {', '.join(map(str, unreached))})"
            self._wait(hold)
            partition.heal(self.cfg)
            self._partitioned = False
            self._end(ev, "partition healed")
        return None

    def _kill_and_restart(self, fault: str, node: int, hold: float, role: str) -> None:
        ev = self._begin(fault, [node], f"kill node {node} ({role}) for {hold:.1f} s")
        self._sup({"cmd": "kill", "node": node})
        self._killed.add(node)
        self._wait(hold)
        self._sup({"cmd": "restart", "node": node})
        self._killed.discard(node)
        self._end(ev, f"restarted node {node}")

    def _wait_recovered(self, timeout: float) -> bool:
        """Until every node that is not down is up and in the view (bounded)."""
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            try:
                if self._status().get("in_sync"):
                    return True
            except ControlError:
                pass
            if time.monotonic() >= deadline:
                self.log(f"nemesis: the cluster did not recover within {timeout:g} s")
                return False
            self._stop.wait(0.1)
        return False

    # ------------------------------------------------------------------ heal

    def heal_all(self) -> list[str]:
        """Heal partitions on every node, resume paused nodes, restart the nodes we killed.
        Returns what could not be healed."""
        problems = []
        if self._partitioned or "partition" in self.faults:
            left = partition.heal(self.cfg)
            self._partitioned = False
            problems += [f"heal node {n}: {e}" for n, e in left.items()]
        try:
            status = self._status()
        except ControlError as exc:
            return problems + [f"status: {exc}"]
        for n in status["nodes"]:
            node = n["id"]
            try:
                if n["state"] == "paused":
                    self._sup({"cmd": "resume", "node": node})
                    self._paused.discard(node)
                elif node in self._killed and n["state"] in ("down", "crashed"):
                    self._sup({"cmd": "restart", "node": node})
                    self._killed.discard(node)
            except ControlError as exc:
                problems.append(f"node {node}: {exc}")
        for ev in self.events:
            if not ev.healed:
                ev.end_ns = time.monotonic_ns()
                ev.healed = True
                self.record(ev.end_ns, f"stop-{ev.fault}", {"nodes": ev.nodes,
                                                            "detail": "healed at the end of the run"})
        self.errors += problems
        return problems


def _role(node: int, view: dict) -> str:
    if view.get("primary") == node:
        return "primary"
    if node in (view.get("backups") or []):
        return "backup"
    return "outside the view"


# --------------------------------------------------------------------------- end of a run


def _node_status(cfg: ClusterConfig, node: int, cmd: str = "status", timeout: float = STATUS_TIMEOUT) -> dict | None:
    try:
        reply = request(cfg.node(node).control_endpoint, {"cmd": cmd}, timeout, what=f"node {node}")
    except ControlError:
        return None
    return reply if reply.get("ok") else None


@dataclass
class Settled:
    status: dict | None
    in_sync: bool
    converged: bool
    waited_s: float
    nodes: dict[int, dict] = field(default_factory=dict)  # node status replies (indices)
    why: str = ""


def settle(cfg: ClusterConfig, timeout: float = 60.0, poll: float = 0.1) -> Settled:
    """Wait (bounded) until every live node is in the view and every member has applied
    everything the primary holds."""
    began = time.monotonic()
    deadline = began + timeout
    last: dict | None = None
    why = ""
    while True:
        try:
            last = request(cfg.supervisor.control_endpoint, {"cmd": "status"}, STATUS_TIMEOUT)
        except ControlError as exc:
            last, why = None, str(exc)
        if last and last.get("ok") and last.get("in_sync"):
            view = last["view"]
            members = ([view["primary"]] if view["primary"] else []) + list(view["backups"])
            replies = {m: _node_status(cfg, m) for m in members}
            primary = replies.get(view["primary"])
            if primary is not None and all(replies.values()):
                target = primary["last_index"]
                if all(r["applied_index"] == target and r["commit_index"] == target
                       for r in replies.values() if r is not None):
                    return Settled(last, True, True, time.monotonic() - began,
                                   {m: r for m, r in replies.items() if r is not None})
                why = "members have not applied everything yet: " + ", ".join(
                    f"node {m} applied {r['applied_index']}/{target}" for m, r in replies.items() if r)
            else:
                why = "a member did not answer"
        elif last and last.get("ok"):
            waiting = [f"node {n['id']} {n['state']} ({n['role']})" for n in last["nodes"]
                       if n["state"] != "down" and n["role"] not in ("primary", "backup")]
            why = "not every live node is in the view: " + (", ".join(waiting) or "no primary")
        if time.monotonic() >= deadline:
            return Settled(last, bool(last and last.get("in_sync")), False,
                           time.monotonic() - began, why=why)
        time.sleep(poll)


def read_final_state(cfg: ClusterConfig, customers: range, settled: Settled) -> dict[str, Any]:
    """Every live node's records for the run's customers, as final_state.json holds them:
    {"time": monotonic ns, "customer_range": [lo, hi], "nodes": {id: {...}}, "skipped": [...]}.
    A node counts as settled when it is a member of the view and has applied everything the
    primary holds; others are recorded with settled false and the reason."""
    status = settled.status or {}
    view = status.get("view") or {}
    members = set(([view.get("primary")] if view.get("primary") else []) + list(view.get("backups") or []))
    nodes: dict[str, Any] = {}
    skipped: list[str] = []
    target = None
    for n in status.get("nodes", []):
        if n["id"] == view.get("primary"):
            target = n.get("last_index")
    lo, hi = customers.start, customers.stop
    for node in sorted(cfg.node_ids):
        info = next((n for n in status.get("nodes", []) if n["id"] == node), None)
        if info is not None and info["state"] == "down":
            skipped.append(f"node {node} is down: not checked")
            continue
        dump = _node_status(cfg, node, "dump", 10.0)
        if dump is None:
            skipped.append(f"node {node} did not answer a dump: not checked")
            continue
        records = {c: v for c, v in (dump.get("records") or {}).items() if lo <= int(c) < hi}
        ok = node in members and settled.converged
        why = ""
        if node not in members:
            why = f"node {node} is not in the view ({dump.get('role')})"
        elif not settled.converged:
            why = f"the cluster did not settle: {settled.why}"
        elif target is not None and dump.get("applied_index") != dump.get("last_index"):
            ok, why = False, f"node {node} has not applied its whole log"
        nodes[str(node)] = {"settled": ok, "why": why, "role": dump.get("role"),
                            "view": (dump.get("view") or {}).get("number"),
                            "last_index": dump.get("last_index"),
                            "commit_index": dump.get("commit_index"),
                            "applied_index": dump.get("applied_index"),
                            "digest": dump.get("digest"), "records": records}
    return {"time": time.monotonic_ns(), "customer_range": [lo, hi], "nodes": nodes,
            "skipped": skipped, "settled_after_s": round(settled.waited_s, 3),
            "converged": settled.converged}
