"""The supervisor: one process per cluster that runs the view service, owns the node processes
and answers the CLI.

`python -m orchestrator.supervisor --config FILE --data-dir DIR`

One thread, one `zmq.Poller` over three sockets:

* control ROUTER (JSON, REQ envelope) -- `status`, `down`, `kill`, `restart`, `pause`, `resume`;
* view-service ROUTER (binary `Ping` in, `ViewReply` out) -- feeds the sans-IO `ViewService`,
  and writes every new view to DIR/view.json (atomically, fsynced) *before* any reply can carry it:
  a view a node has seen must survive a supervisor crash, or view numbers could go backwards;
* telemetry PULL (JSON from load generators; the latest message per sender is kept).

Between polls (every ~20 ms) it reaps exited children with `Popen.poll()`, tells the view service
at once (much faster than the ping timeout), and restarts crashed nodes when `auto_restart` is on.
Nothing here blocks for long, except `down`, after which the process exits anyway.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import zmq

from orchestrator import procs
from orchestrator.control import SCHEMA_VERSION, error, ok
from orchestrator.events import ClusterMonitor, NodeFacts
from orchestrator.view_service import ViewService, view_from_json
from protocol.codec import ProtocolError, decode, decode_json, encode, encode_json
from protocol.config import ClusterConfig, ConfigError, load_config
from protocol.messages import Ping, View
from protocol.zmq_calls import has_message, recv_message, send_message

log = logging.getLogger("lfctl.supervisor")

POLL_MS = 20  # how often children are reaped and the view service ticks
STOP_GRACE_S = 5.0  # SIGTERM -> SIGKILL
MAX_BATCH = 256  # messages drained from one socket per loop turn, so no socket starves the others
DOWN_REPLY_LINGER_MS = 2000  # the `down` reply must leave before the process exits

STARTING, UP, PAUSED, DOWN, CRASHED = "starting", "up", "paused", "down", "crashed"
CATCHING_UP = "catching up"  # shown for a live node outside the view; not a process state


@dataclass
class NodeProc:
    """What the supervisor knows about one node's process."""

    node_id: int
    proc: subprocess.Popen | None = None
    state: str = DOWN
    exit_code: int | None = None
    starts: int = 0  # processes started for this node; restarts = starts - 1
    started_at: float = 0.0  # monotonic
    ps: psutil.Process | None = None  # kept between status calls so cpu_percent has a baseline
    stopping: bool = False  # we asked it to exit: the exit makes it `down`, not `crashed`
    kill_at: float | None = None  # SIGKILL if still alive by then
    on_exit: list[Callable[[], None]] = field(default_factory=list)
    crash_streak: int = 0  # crashes since it was last up; sets the auto-restart backoff
    error: str | None = None  # why it crashed, when known (its last stderr line)
    dead_incarnation: int | None = None  # a ping of this incarnation is a late message of a dead process
    restart_at: float | None = None  # scheduled automatic restart

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    """The event loop shell around `ViewService` plus the node process table."""

    def __init__(self, cfg: ClusterConfig, config_path: Path, data_dir: Path, *, node_module: str = "node"):
        self.cfg = cfg
        self.config_path = Path(config_path).resolve()
        self.data_dir = Path(data_dir).resolve()
        self.node_module = node_module
        self.started_at = time.monotonic()
        self.nodes: dict[int, NodeProc] = {i: NodeProc(i) for i in cfg.node_ids}
        self.vs: ViewService | None = None
        self.saved_state: dict | None = None  # what view.json holds
        # The view and member incarnations `saved_state` was made from: checked on every ping
        # and loop turn, where building the JSON state to compare cost more than the ping.
        self._saved_from: tuple | None = None
        self.telemetry: dict[str, tuple[float, dict]] = {}
        self.partition: dict | None = None  # the last `lfctl partition` (the nodes enforce it)
        self.monitor = ClusterMonitor()  # events ring buffer, ops/s, client telemetry aggregate
        self._next_observe = 0.0
        self.stop_reason: str | None = None
        self.core_failures = 0
        self.persist_failures = 0
        self.down_envelopes: list[list[bytes]] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.ctx = zmq.Context()
        self.control: zmq.Socket | None = None
        self.view_sock: zmq.Socket | None = None
        self.telemetry_sock: zmq.Socket | None = None

    # ------------------------------------------------------------------ setup

    def bind(self) -> None:
        """Bind the three sockets; raises zmq.ZMQError (EADDRINUSE) naming nothing -- the caller
        turns it into a message with the port."""
        sup = self.cfg.supervisor
        for attr, kind, endpoint in (
            ("control", zmq.ROUTER, sup.control_endpoint),
            ("view_sock", zmq.ROUTER, sup.view_endpoint),
            ("telemetry_sock", zmq.PULL, sup.telemetry_endpoint),
        ):
            sock = self.ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            if kind == zmq.ROUTER:
                # A reply to a peer that went away is dropped instead of raising.
                sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
            sock.setsockopt(zmq.RCVHWM, 10000)
            setattr(self, attr, sock)
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                raise PortInUse(endpoint, exc) from None

    def load_view(self) -> dict | None:
        """What a previous supervisor of this data dir persisted (the view and the incarnation
        each member was admitted with), if it may be trusted."""
        path = self.data_dir / "view.json"
        if self.cfg.replication.durability == "memory":
            if path.exists():
                log.info("durability is memory: ignoring the persisted view in %s", path)
            return None
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s); starting without a persisted view", path, exc)
            return None
        if isinstance(data, dict) and "view" not in data:
            data = {"view": data}  # a bare view document
        try:
            view = view_from_json(data["view"])
        except (KeyError, TypeError, ValueError) as exc:
            log.error("invalid view in %s (%s); starting without a persisted view", path, exc)
            return None
        log.info("loaded view %s from %s", fmt_view(view), path)
        return data

    def start(self) -> None:
        now = time.monotonic()
        persisted = self.load_view()
        timeout = self.cfg.replication.failure_timeout_ms / 1000.0
        try:
            self.vs = ViewService(list(self.cfg.node_ids), failure_timeout=timeout, persisted=persisted, now=now)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("cannot use the persisted view service state (%s); starting without it", exc)
            persisted = None
            self.vs = ViewService(list(self.cfg.node_ids), failure_timeout=timeout, persisted=None, now=now)
        self.saved_state = persisted
        self.persist_view()
        for node in self.nodes.values():
            self.spawn(node)

    # ------------------------------------------------------------------ node processes

    def spawn(self, node: NodeProc, *, wipe: bool = False) -> bool:
        """Start the node's process.  A failure to even start it (its directory cannot be
        made, say) makes it `crashed` with the reason, like a process that died at once."""
        ndir = procs.node_dir(self.data_dir, node.node_id)
        args = ["--id", str(node.node_id), "--config", str(self.config_path), "--data-dir", str(self.data_dir)]
        node.stopping = False
        node.kill_at = None
        node.restart_at = None
        node.starts += 1
        try:
            if wipe and ndir.exists():
                shutil.rmtree(ndir)
                log.info("node %d: wiped %s", node.node_id, ndir)
            ndir.mkdir(parents=True, exist_ok=True)
            node.proc = procs.spawn_module(self.node_module, args, ndir / "stderr.log")
        except OSError as exc:
            node.proc = None
            node.state = CRASHED
            node.exit_code = None
            node.error = f"cannot start: {exc}"
            log.error("node %d: %s", node.node_id, node.error)
            self.monitor.node_start_failed(node.node_id, node.error, time.monotonic())
            self.schedule_restart(node, time.monotonic())
            return False
        try:
            node.ps = psutil.Process(node.proc.pid)
            node.ps.cpu_percent(None)
        except psutil.Error:
            node.ps = None
        node.state = STARTING
        node.exit_code = None
        node.error = None
        node.started_at = time.monotonic()
        self.monitor.node_started(node.node_id, node.proc.pid, restart=node.starts > 1, wipe=wipe, now=node.started_at)
        log.info("node %d: started pid %d%s", node.node_id, node.proc.pid, " (wiped)" if wipe else "")
        return True

    def schedule_restart(self, node: NodeProc, now: float) -> None:
        """After a crash: restart later when auto_restart is on, backing off while it keeps
        crashing (a node that cannot bind its port must not spin)."""
        node.crash_streak += 1
        if self.cfg.supervisor.auto_restart and self.stop_reason is None:
            delay = min(0.2 * 2 ** (node.crash_streak - 1), 5.0)
            node.restart_at = now + delay
            log.info("node %d: restarting in %.1f s (auto_restart)", node.node_id, delay)

    def reap(self, now: float) -> None:
        """Notice exited children (a crash, or a stop we asked for)."""
        for node in self.nodes.values():
            proc = node.proc
            if proc is None:
                continue
            if proc.poll() is None:
                if node.kill_at is not None and now >= node.kill_at:
                    log.warning("node %d: still alive %.0f s after SIGTERM; sending SIGKILL", node.node_id, STOP_GRACE_S)
                    procs.send_signal(proc.pid, signal.SIGKILL)
                    node.kill_at = None
                continue
            code = proc.returncode
            node.exit_code = code
            last = self.vs.last_ping.get(node.node_id) if self.vs is not None else None
            node.dead_incarnation = last.incarnation if last is not None else None
            node.proc = None
            node.ps = None
            node.kill_at = None
            procs.remove_pid_file(procs.node_pid_path(self.data_dir, node.node_id), expected_pid=proc.pid)
            if self.stop_reason is None:
                # Not while going down: the last view before `down` is the truthful record of who
                # is in sync, and dropping members one by one as they exit would forget it.
                self.guarded("on_node_exited", node.node_id, now)
            if node.stopping:
                node.state = DOWN
                log.info("node %d: pid %d stopped (%s)", node.node_id, proc.pid, procs.describe_exit(code))
            else:
                node.state = CRASHED
                last_words = [line for line in procs.tail(procs.node_dir(self.data_dir, node.node_id) / "stderr.log", 5)
                              if line.strip()]
                node.error = last_words[-1].strip()[:300] if last_words else None
                log.warning("node %d: pid %d exited on its own (%s)%s", node.node_id, proc.pid,
                            procs.describe_exit(code), f": {node.error}" if node.error else "")
                self.schedule_restart(node, now)
            self.monitor.node_exited(node.node_id, proc.pid, expected=node.stopping, how=procs.describe_exit(code),
                                     error=node.error if not node.stopping else None, now=now)
            node.stopping = False
            callbacks, node.on_exit = node.on_exit, []
            for callback in callbacks:
                callback()
        for node in self.nodes.values():
            if node.restart_at is not None and now >= node.restart_at and node.proc is None:
                node.restart_at = None
                self.spawn(node)

    def stop_node(self, node: NodeProc, sig: int) -> None:
        """Signal a running node and remember that its exit is expected."""
        assert node.proc is not None
        node.stopping = True
        procs.send_signal(node.proc.pid, sig)
        if sig != signal.SIGKILL:
            # A stopped (paused) process only acts on SIGTERM once it runs again.
            procs.send_signal(node.proc.pid, signal.SIGCONT)
            node.kill_at = time.monotonic() + STOP_GRACE_S

    # ------------------------------------------------------------------ view persistence

    def persist_view(self) -> bool:
        """Write the view service's state (view + member incarnations) to DIR/view.json if it
        changed: tmp file, fsync, rename, fsync dir.  False when that failed (disk full...): the
        caller then holds back replies, and the next call tries again."""
        assert self.vs is not None
        source = (self.vs.view, tuple(self.vs.member_incarnation.items()))
        if source == self._saved_from:
            return True
        state = self.vs.to_json()
        if state == self.saved_state:
            self._saved_from = source
            return True
        try:
            self._write_view_file(state)
        except OSError as exc:
            self.persist_failures += 1
            if self.persist_failures <= 10 or self.persist_failures % 1000 == 0:
                log.error("cannot persist view %s: %s (%d failures so far)", fmt_view(self.vs.view), exc,
                          self.persist_failures)
            return False
        if self.saved_state is None or self.saved_state.get("view") != state["view"]:
            log.info("view %s", fmt_view(self.vs.view))
        self.saved_state = state
        self._saved_from = source
        return True

    def _write_view_file(self, state: dict) -> None:
        path = self.data_dir / "view.json"
        tmp = path.with_name(".view.json.tmp")
        data = json.dumps(state, sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(self.data_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # ------------------------------------------------------------------ sockets

    def on_view_socket(self, now: float) -> None:
        assert self.view_sock is not None and self.vs is not None
        sock = self.view_sock
        for i in range(MAX_BATCH):
            if i and not has_message(sock):
                return  # the usual case: one ping, and no raised zmq.Again to end the drain
            try:
                frames = recv_message(sock)
            except zmq.Again:
                return
            if len(frames) < 2:
                log.warning("view service: dropped a message of %d frame(s)", len(frames))
                continue
            envelope, payload = frames[:-1], frames[-1]
            try:
                ping = decode(payload)
            except ProtocolError as exc:
                log.warning("view service: dropped an undecodable message: %s", exc)
                continue
            if not isinstance(ping, Ping):
                log.warning("view service: dropped a %s (expected Ping)", type(ping).__name__)
                continue
            node = self.nodes.get(ping.node_id)
            if node is None:
                log.warning("view service: dropped a ping from unknown node %d", ping.node_id)
                continue
            if ping.incarnation == node.dead_incarnation:
                continue  # sent before the process died: it must not count as alive again
            try:
                reply = self.vs.on_ping(ping, now)
            except Exception:  # the core must never take the supervisor down
                self.core_failures += 1
                if self.core_failures <= 10 or self.core_failures % 1000 == 0:
                    log.exception("view service: on_ping failed for %r", ping)
                continue
            if node.state == STARTING:
                node.state = UP
                node.crash_streak = 0
                log.info("node %d: up (pid %s)", node.node_id, node.pid)
            if not self.persist_view():  # before the reply can carry the new view
                continue  # a view that is not on disk must not be handed out
            send_message(sock, [*envelope, encode(reply)])

    def on_telemetry(self, now: float) -> None:
        assert self.telemetry_sock is not None
        for _ in range(MAX_BATCH):
            try:
                data = self.telemetry_sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = decode_json(data)
            except ProtocolError as exc:
                log.warning("telemetry: dropped an undecodable message: %s", exc)
                continue
            sender = str(msg.get("sender") or msg.get("source") or msg.get("client") or "unknown")
            if sender not in self.telemetry and len(self.telemetry) >= 32:
                # Every load is a new sender: forget those not heard from for 5 minutes.
                self.telemetry = {k: v for k, v in self.telemetry.items() if now - v[0] < 300.0}
            self.telemetry[sender] = (now, msg)
            self.monitor.on_telemetry(msg, now)

    def on_control(self, now: float) -> None:
        assert self.control is not None
        for _ in range(MAX_BATCH):
            try:
                frames = recv_message(self.control)
            except zmq.Again:
                return
            if len(frames) < 2:
                log.warning("control: dropped a message of %d frame(s)", len(frames))
                continue
            envelope, payload = frames[:-1], frames[-1]
            try:
                req = decode_json(payload)
            except ProtocolError as exc:
                log.warning("control: malformed request: %s", exc)
                self.send_control(envelope, error(f"malformed request: {exc}"))
                continue
            try:
                reply = self.dispatch(req, envelope, now)
            except Exception as exc:  # a bug in one command must not take the cluster down
                log.exception("control: %r failed", req)
                reply = error(f"internal error: {exc}")
            if reply is not None:
                self.send_control(envelope, reply)

    def send_control(self, envelope: list[bytes], reply: dict) -> None:
        assert self.control is not None
        try:
            send_message(self.control, [*envelope, encode_json(reply)])
        except zmq.ZMQError as exc:
            log.warning("control: could not send a reply: %s", exc)

    # ------------------------------------------------------------------ control commands

    def dispatch(self, req: dict, envelope: list[bytes], now: float) -> dict | None:
        """Run one control command; None means the reply is sent later (by a callback)."""
        cmd = req.get("cmd")
        if cmd == "status":
            return self.status(now, req)
        if cmd == "ping":
            return ok(pid=os.getpid())
        if cmd == "events":
            return self.cmd_events(req)
        if cmd == "note":  # a line for the events feed (the demo narrates its steps)
            level = req.get("level") if req.get("level") in ("info", "good", "warn", "error") else "info"
            return ok(event=self.monitor.note(str(req.get("msg") or "")[:300], level=level))
        if cmd in ("partition", "heal"):
            return self.cmd_partition_record(req)
        if cmd == "down":
            log.info("control: down requested")
            self.down_envelopes.append(envelope)
            self.stop_reason = self.stop_reason or "down requested"
            return None
        if cmd in ("kill", "restart", "pause", "resume"):
            node, err = self.resolve_node(req.get("node"))
            if node is None:
                return error(err or "bad node")
            return getattr(self, f"cmd_{cmd}")(node, req, envelope, now)
        log.warning("control: unknown command %r", cmd)
        return error(f"unknown command {cmd!r}" if cmd is not None else "request has no \"cmd\"")

    def cmd_partition_record(self, req: dict) -> dict:
        """Record a partition (or its end) for `status`.  `orchestrator.partition` has already
        told the nodes, which enforce it; this loop never waits on a node."""
        if req.get("cmd") == "heal":
            if self.partition is not None:
                log.info("control: partition healed")
                self.monitor.note("partition healed", level="good")
            self.partition = None
            return ok(partition=None)
        groups = req.get("groups")
        if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
            return error("partition: groups must be a list of lists of node ids")
        self.partition = {"groups": groups, "view_service_side": req.get("view_service_side", 0),
                          "since": req.get("since"), "unreached": req.get("unreached") or []}
        sides = " | ".join(",".join(str(n) for n in g) for g in groups)
        log.info("control: partition %s", sides)
        self.monitor.note(f"partition {sides}", level="warn")
        return ok(partition=self.partition)

    def resolve_node(self, target: Any) -> tuple[NodeProc | None, str | None]:
        """A node id, "primary" or "backup" (any backup of the current view)."""
        assert self.vs is not None
        view = self.vs.view
        if target == "primary":
            if not view.primary:
                return None, f"there is no primary in view {view.number}"
            return self.nodes[view.primary], None
        if target == "backup":
            backups = sorted(b for b in view.backups if b in self.nodes)
            if not backups:
                return None, f"there is no backup in view {view.number}"
            live = [b for b in backups if self.nodes[b].running] or backups
            return self.nodes[live[0]], None
        try:
            node_id = int(target) if not isinstance(target, bool) else None
        except (TypeError, ValueError):
            node_id = None
        if node_id is None:
            return None, f"bad node {target!r}: expected a node id, \"primary\" or \"backup\""
        if node_id not in self.nodes:
            ids = ", ".join(str(i) for i in self.nodes)
            return None, f"node {node_id} does not exist (nodes: {ids})"
        return self.nodes[node_id], None

    def cmd_kill(self, node: NodeProc, req: dict, envelope: list[bytes], now: float) -> dict | None:
        name = str(req.get("signal") or "KILL").upper().removeprefix("SIG")
        if name not in ("KILL", "TERM"):
            return error(f"bad signal {req.get('signal')!r}: expected KILL or TERM")
        if not node.running:
            return error(f"node {node.node_id} is already down")
        sig = procs.SIGNALS[name]
        pid = node.pid
        node.restart_at = None
        self.monitor.stop_requested(node.node_id, pid, f"kill SIG{name}", now)
        self.stop_node(node, sig)
        log.info("control: kill node %d (pid %s, SIG%s)", node.node_id, pid, name)
        message = f"killed node {node.node_id} (pid {pid}, SIG{name})"
        # Reply once the exit has been seen, so a `status` right after shows the node down.
        self._reply_on_exit(node, envelope, ok(node=node.node_id, pid=pid, signal=f"SIG{name}", message=message),
                            now + STOP_GRACE_S + 1.0)
        return None

    def cmd_restart(self, node: NodeProc, req: dict, envelope: list[bytes], now: float) -> dict | None:
        wipe = bool(req.get("wipe", False))

        def start_and_reply() -> None:
            if self.stop_reason is not None:
                self.send_control(envelope, error("the cluster is shutting down"))
                return
            old = node.exit_code
            if not self.spawn(node, wipe=wipe):
                self.send_control(envelope, error(f"could not restart node {node.node_id}: {node.error}"))
                return
            extra = ", wiped" if wipe else ""
            self.send_control(envelope, ok(node=node.node_id, pid=node.pid, wiped=wipe, previous_exit=old,
                                           message=f"restarted node {node.node_id} (pid {node.pid}{extra})"))

        node.restart_at = None
        if node.running:
            log.info("control: restart node %d: stopping pid %s first", node.node_id, node.pid)
            self.monitor.stop_requested(node.node_id, node.pid, "restart", now)
            self.stop_node(node, signal.SIGTERM)
            node.on_exit.append(start_and_reply)
        else:
            start_and_reply()
        return None

    def cmd_pause(self, node: NodeProc, req: dict, envelope: list[bytes], now: float) -> dict:
        if node.state == PAUSED:
            return error(f"node {node.node_id} is already paused")
        if not node.running or node.stopping:
            return error(f"node {node.node_id} is not running")
        procs.send_signal(node.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        node.state = PAUSED
        self.monitor.node_paused(node.node_id, node.pid, now)
        log.info("control: paused node %d (pid %s)", node.node_id, node.pid)
        return ok(node=node.node_id, pid=node.pid, message=f"paused node {node.node_id} (pid {node.pid}, SIGSTOP)")

    def cmd_resume(self, node: NodeProc, req: dict, envelope: list[bytes], now: float) -> dict:
        if node.state != PAUSED or not node.running:
            return error(f"node {node.node_id} is not paused")
        procs.send_signal(node.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        node.state = UP
        self.monitor.node_resumed(node.node_id, node.pid, now)
        log.info("control: resumed node %d (pid %s)", node.node_id, node.pid)
        return ok(node=node.node_id, pid=node.pid, message=f"resumed node {node.node_id} (pid {node.pid}, SIGCONT)")

    def _reply_on_exit(self, node: NodeProc, envelope: list[bytes], reply: dict, deadline: float) -> None:
        sent = False

        def send(r: dict) -> None:
            nonlocal sent
            if not sent:
                sent = True
                self.send_control(envelope, r)

        node.on_exit.append(lambda: send(reply))
        still = dict(reply, message=reply["message"] + "; it has not exited yet", exited=False)
        self.after(deadline, lambda: send(still))

    def after(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), fn))

    def run_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            fn()

    # ------------------------------------------------------------------ status

    def status(self, now: float, req: dict | None = None) -> dict:
        assert self.vs is not None
        view = self.vs.view
        primary_ping = self.vs.last_ping.get(view.primary) if view.primary else None
        nodes = [self.node_status(n, view, primary_ping, now) for n in self.nodes.values()]
        primary = self.nodes.get(view.primary)
        wanted = [n for n in self.nodes.values() if n.state != DOWN]
        ready = (
            primary is not None
            and primary.state == UP
            and self.vs.is_alive(primary.node_id, now)
            and all(n.state == UP and self.vs.is_alive(n.node_id, now) for n in wanted)
        )
        in_sync = ready and all(n.node_id in view.members for n in wanted)
        sup = self.cfg.supervisor
        return ok(
            schema_version=SCHEMA_VERSION,
            cluster=self.cfg.name,
            ready=ready,
            in_sync=in_sync,
            stopping=self.stop_reason is not None,
            view={"number": view.number, "primary": view.primary or None, "backups": sorted(view.backups)},
            nodes=nodes,
            supervisor={"pid": os.getpid(), "uptime_s": round(now - self.started_at, 3),
                        "auto_restart": sup.auto_restart},
            endpoints={
                "control": sup.control_endpoint,
                "view": sup.view_endpoint,
                "telemetry": sup.telemetry_endpoint,
                "nodes": [{"id": nc.id, "client": nc.client_endpoint, "replication": nc.repl_endpoint,
                           "control": nc.control_endpoint} for nc in self.cfg.nodes],
            },
            telemetry={k: dict({f: x for f, x in v.items() if f != "buckets"}, age_s=round(now - t, 3))
                       for k, (t, v) in self.telemetry.items()},
            data_dir=str(self.data_dir),
            partition=self.partition,
            clients=self.monitor.clients(now),
            stats=self.monitor.stats(),
            **(self.events_reply(req) if req is not None and "events_since" in req else {}),
        )

    def node_status(self, node: NodeProc, view: View, primary_ping: Ping | None, now: float) -> dict:
        assert self.vs is not None
        ping = self.vs.last_ping.get(node.node_id)
        seen = self.vs.last_seen.get(node.node_id)
        alive = node.running and self.vs.is_alive(node.node_id, now)
        if node.node_id == view.primary:
            role = "primary"
        elif node.node_id in view.backups:
            role = "backup"
        elif alive and node.state == UP:
            role = "learner"
        else:
            role = "none"
        cpu = rss = None
        if node.running and node.ps is not None:
            # Sampled at most once a second, however many dashboards poll.
            cpu, rss = self.monitor.process_stats(node.ps, now)
        last_index = ping.last_index if ping else None
        lag = None
        progress = None
        if primary_ping is not None and last_index is not None:
            lag = max(0, primary_ping.last_index - last_index)
        state = node.state
        if role == "learner":
            # Outside the view while alive: it is catching up from the primary.
            state = CATCHING_UP
            if primary_ping is not None and last_index is not None:
                progress = round(100.0 * min(last_index, primary_ping.last_index) / max(primary_ping.last_index, 1), 1)
        return {
            "id": node.node_id,
            "pid": node.pid,
            "role": role,
            "state": state,
            "catch_up_percent": progress,
            "exit_code": node.exit_code,
            "error": node.error,
            "view": ping.view_number if ping else None,
            "last_index": last_index,
            "commit_index": ping.commit_index if ping else None,
            "applied_index": ping.applied_index if ping else None,
            "lag": lag,
            "ops": ping.ops if ping else None,
            "ops_per_s": self.monitor.ops_per_s(node.node_id) if node.running else None,
            "durable": ping.durable if ping else None,
            "last_ping_ms_ago": round((now - seen) * 1000) if seen is not None else None,
            "restarts": max(0, node.starts - 1),
            "uptime_s": round(now - node.started_at, 3) if node.running else None,
            "cpu_percent": cpu,
            "rss_bytes": rss,
        }

    # ------------------------------------------------------------------ events (dashboard)

    def cmd_events(self, req: dict) -> dict:
        """{"cmd": "events", "since": SEQ, "limit": N}: events newer than SEQ, oldest first."""
        return ok(**self.events_reply({"events_since": req.get("since", 0), "events_limit": req.get("limit", 100)}))

    def events_reply(self, req: dict) -> dict:
        try:
            since = int(req.get("events_since") or 0)
            limit = max(0, min(int(req.get("events_limit") or 100), 500))
        except (TypeError, ValueError):
            since, limit = 0, 100
        return {"events": self.monitor.events.since(since, limit), "events_seq": self.monitor.events.seq}

    def observe(self, now: float) -> None:
        """Let the monitor narrate view changes (at once) and learners, and keep ops/s (~25 Hz)."""
        if self.vs is None:
            return
        changes = self.vs.changes
        if now < self._next_observe and not (changes and changes[-1].new.number > self.monitor.last_view_number):
            return  # nothing new in the view: ~25 times a second is plenty for learners and ops/s
        self._next_observe = now + 0.04
        facts = {}
        for node_id, node in self.nodes.items():
            seen = self.vs.seen.get(node_id)
            ping = seen.ping if seen is not None else None
            facts[node_id] = NodeFacts(node.running, node.state, ping.last_index if ping else None,
                                       ping.ops if ping else None, seen.last_seen if seen is not None else None,
                                       seen.incarnation if seen is not None else None)
        try:
            self.monitor.observe(changes, self.vs.view, facts, now)
        except Exception:  # narration must never take the supervisor down
            self.core_failures += 1
            if self.core_failures <= 10 or self.core_failures % 1000 == 0:
                log.exception("monitor: observe failed")

    # ------------------------------------------------------------------ main loop

    def guarded(self, method: str, *args: Any) -> None:
        """Call a view-service event; a bug in the core is logged (rate-limited) and the loop
        goes on, because taking the supervisor down would take every node with it."""
        try:
            getattr(self.vs, method)(*args)
        except Exception:
            self.core_failures += 1
            if self.core_failures <= 10 or self.core_failures % 1000 == 0:
                log.exception("view service: %s failed (%d failures so far)", method, self.core_failures)

    def check_stall(self, since_last_turn: float, now: float) -> None:
        """A loop turn normally follows the last within POLL_MS plus the turn's own work.  A
        gap of half a failure timeout means this process did not run (SIGSTOP, a starved CPU,
        a suspended VM): the view service is told before it reads a ping or ticks, so the gap
        is not taken for the nodes' silence (ViewService.on_stall)."""
        assert self.vs is not None
        gap = since_last_turn - POLL_MS / 1000
        if gap > self.vs.failure_timeout / 2:
            log.warning("supervisor did not run for %.0f ms (stopped or starved of CPU): not counted as the nodes' silence", gap * 1000)
            self.guarded("on_stall", gap, now)

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def run(self) -> None:
        assert self.control is not None and self.view_sock is not None and self.telemetry_sock is not None
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.view_sock, zmq.POLLIN)
        poller.register(self.telemetry_sock, zmq.POLLIN)
        assert self.vs is not None
        last_turn = time.monotonic()
        while self.stop_reason is None:
            try:
                events = dict(poller.poll(POLL_MS))
            except zmq.ZMQError as exc:  # EINTR from a signal: the handler has set stop_reason
                if exc.errno != zmq.EINTR:
                    raise
                continue
            now = time.monotonic()
            self.check_stall(now - last_turn, now)
            last_turn = now
            if self.view_sock in events:
                self.on_view_socket(now)
            if self.control in events:
                self.on_control(now)
            if self.telemetry_sock in events:
                self.on_telemetry(now)
            self.reap(now)
            self.guarded("on_tick", now)
            self.persist_view()
            self.run_timers(now)
            self.observe(now)
        log.info("stopping: %s", self.stop_reason)
        self.shutdown()

    def shutdown(self) -> None:
        """Stop every node, clean up pid files, then -- whatever happened -- answer the `down`
        requests and close the sockets (a CLI waiting for its reply must not hang)."""
        reply = error("the supervisor failed while stopping its nodes; see supervisor.log")
        try:
            killed = self.stop_all_nodes()
            try:
                for node_id in self.nodes:
                    procs.remove_pid_file(procs.node_pid_path(self.data_dir, node_id))
                self.persist_view()
            except OSError as exc:
                log.error("cleanup after down: %s", exc)
            reply = ok(message=f"stopped {len(self.nodes)} nodes", killed=killed)
        finally:
            self.answer_and_close(reply)
        log.info("stopped")

    def stop_all_nodes(self) -> list[int]:
        """SIGTERM every node, SIGKILL those still alive after the grace period; returns the ids
        that had to be killed."""
        for node in self.nodes.values():
            node.restart_at = None
            if node.running:
                self.stop_node(node, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while any(n.running for n in self.nodes.values()) and time.monotonic() < deadline:
            time.sleep(0.02)
            for node in self.nodes.values():
                if node.proc is not None:
                    node.proc.poll()
        killed = []
        for node in self.nodes.values():
            if node.running:
                killed.append(node.node_id)
                node.proc.kill()  # type: ignore[union-attr]
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    log.error("node %d: pid %d does not die", node.node_id, node.proc.pid)
        if killed:
            log.warning("nodes %s ignored SIGTERM for %.0f s and were killed", killed, STOP_GRACE_S)
        self.reap(time.monotonic())
        return killed

    def answer_and_close(self, reply: dict) -> None:
        for envelope in self.down_envelopes:
            self.send_control(envelope, reply)
        # Answer what queued meanwhile, so those clients get a reply instead of a timeout.
        if self.control is not None:
            while True:
                try:
                    frames = recv_message(self.control)
                except zmq.Again:
                    break
                if len(frames) >= 2:
                    self.send_control(frames[:-1], error("the cluster is shutting down"))
        for sock in (self.view_sock, self.telemetry_sock):
            if sock is not None:
                sock.close(linger=0)
        if self.control is not None:
            self.control.close(linger=DOWN_REPLY_LINGER_MS)
        self.ctx.term()


class PortInUse(Exception):
    def __init__(self, endpoint: str, exc: zmq.ZMQError):
        super().__init__(f"{endpoint}: {exc}")
        self.endpoint = endpoint
        self.port = endpoint.rsplit(":", 1)[-1]
        self.errno = exc.errno


def fmt_view(view: View) -> str:
    backups = ",".join(str(b) for b in sorted(view.backups)) or "-"
    return f"{view.number} (primary {view.primary or '-'}, backups {backups})"


def setup_logging(data_dir: Path) -> None:
    handler = logging.FileHandler(data_dir / "supervisor.log")
    handler.setFormatter(logging.Formatter("%(asctime)s supervisor[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.supervisor", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="the effective cluster.toml")
    parser.add_argument("--data-dir", required=True, type=Path)
    args = parser.parse_args(argv)

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return 2
    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(data_dir)

    pid_path = procs.supervisor_pid_path(data_dir)
    existing = procs.check_pid_file(pid_path, "supervisor", data_dir)
    if existing.removed:
        log.info("%s", existing.removed)
    if existing.pid is not None and existing.pid != os.getpid():
        msg = f"a cluster is already running in {procs.display_path(data_dir)} (supervisor pid {existing.pid})"
        log.error("%s", msg)
        print(f"supervisor: {msg}", file=sys.stderr)
        return 1

    sup = Supervisor(cfg, args.config, data_dir)
    try:
        sup.bind()
    except PortInUse as exc:
        msg = f"port {exc.port} is in use" if exc.errno == zmq.EADDRINUSE else f"cannot bind {exc}"
        log.error("%s", msg)
        print(f"supervisor: {msg}", file=sys.stderr)
        sup.ctx.destroy(linger=0)
        return 3

    procs.write_pid_file(pid_path)
    signal.signal(signal.SIGTERM, lambda *_: sup.request_stop("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: sup.request_stop("SIGINT"))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info("supervisor pid %d for cluster %r in %s (config %s)", os.getpid(), cfg.name, data_dir, args.config)
    try:
        sup.start()
        sup.run()
    except Exception:
        log.exception("supervisor failed")
        # Leave no orphans behind: whatever was started goes down with us.
        for node in sup.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                procs.terminate_popen(node.proc, grace=STOP_GRACE_S)
            procs.remove_pid_file(procs.node_pid_path(data_dir, node.node_id))
        return 1
    finally:
        procs.remove_pid_file(pid_path, expected_pid=os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
