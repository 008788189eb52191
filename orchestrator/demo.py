"""`lfctl demo`: one command that shows primary-backup replication surviving faults.

It starts a cluster in its own data dir (`.lfctl-demo`, or --data-dir; wiped first when an earlier
demo made it, refused when it holds another cluster's data) on the configured ports (or the next free ones), runs a steady closed-loop load of a few
customers ordering one order after another, and every `--interval` seconds injects the next fault
of a cycle -- kill a backup, restart it, kill the primary, restart it, pause a node, resume it --
narrating each step in the events feed.  It runs until `q`/Ctrl-C, or until `--duration` seconds
have passed; then it heals the cluster, stops the load, compares every node's digest (node `dump`),
checks that every acknowledged order is in the primary's state, stops everything it started and
prints a summary.

On a terminal the live dashboard shows it all; otherwise (a pipe, CI) the events are printed as
plain lines.  Exit 0 when the cluster ended consistent (same digest everywhere, no acknowledged
order missing), 1 otherwise.
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator import procs
from orchestrator.control import ControlError, request
from protocol.config import ClusterConfig, with_overrides

__all__ = ["add_arguments", "run_demo", "DemoLoad", "FaultCycle"]

DEMO_DIR = ".lfctl-demo"
MARKER = "lfctl-demo.txt"  # in a data dir the demo made (and may wipe)
DEFAULT_INTERVAL = 4.0
DEFAULT_CUSTOMERS = 8
ACTION_TIMEOUT = 10.0
SYNC_TIMEOUT = 20.0  # how long the end waits for every node to be back in the view
SETTLE_TIMEOUT = 10.0  # ... and then for every node to apply the same index
PORT_TRIES = 20


def positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=positive(float), metavar="S",
                   help="stop after S seconds (default: run until q or Ctrl-C)")
    p.add_argument("--interval", type=positive(float), default=DEFAULT_INTERVAL, metavar="S",
                   help=f"seconds between faults (default {DEFAULT_INTERVAL:g})")
    p.add_argument("--customers", type=positive(int), default=DEFAULT_CUSTOMERS, metavar="C",
                   help=f"concurrent customers of the steady load (default {DEFAULT_CUSTOMERS})")
    p.add_argument("--nodes", type=positive(int), metavar="N", help="number of nodes (default: the config's)")
    p.add_argument("--base-port", type=positive(int), metavar="P",
                   help="first port (default: the config's, or the next free)")


# --------------------------------------------------------------------------- the load


class DemoLoad:
    """A steady closed loop in a thread: `customers` sessions, each ordering 0, 1, 2... one at a
    time until stopped.  Remembers each customer's last acknowledged order (the end checks it is
    in the final state) and the longest time no order completed (the clients' stall)."""

    def __init__(self, cfg: ClusterConfig, customers: int) -> None:
        self.cfg = cfg
        self.customers = customers
        self.acked = [-1] * customers
        self.ok = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self.longest_stall = 0.0
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.error: str | None = None
        self._last_ok: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Ask every session to end after its current order; True once the thread has ended."""
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def current_stall(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return 0.0 if self._last_ok is None or self.ended_at is not None else now - self._last_ok

    def _session(self, customer: int):
        number = 0
        while not self._stop.is_set():
            result = yield (1, customer, number)  # type 1: an order
            if result.ok:
                self.acked[customer] = number
            number += 1

    def _on_result(self, op: Any, result: Any) -> None:
        now = time.monotonic()
        if result.ok:
            self.ok += 1
            if self._last_ok is not None:
                self.longest_stall = max(self.longest_stall, now - self._last_ok)
            self._last_ok = now
        else:
            self.failed += 1
            reason = (result.error or "unknown").split(":", 1)[0]
            self.errors[reason] = self.errors.get(reason, 0) + 1

    def _run(self) -> None:
        from loadgen.client import ClientEngine
        from loadgen.telemetry import TelemetryPusher

        cfg = self.cfg
        nodes = [(n.id, n.client_endpoint) for n in cfg.nodes]
        try:
            with TelemetryPusher(cfg.supervisor.telemetry_endpoint, label="demo load") as telemetry, \
                    ClientEngine(nodes, attempt_timeout=cfg.client.attempt_timeout_ms / 1000.0,
                                 deadline=cfg.client.deadline_ms / 1000.0) as engine:
                self.started_at = self._last_ok = time.monotonic()
                # Bounded anyway: a day, or until stop() lets every session end.
                engine.run([self._session(c) for c in range(self.customers)], max_duration=86400.0,
                           on_result=telemetry.wrap(self._on_result))
        except Exception as exc:  # reported in the summary; the demo still cleans up
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ended_at = time.monotonic()


# --------------------------------------------------------------------------- the faults


@dataclass
class Step:
    action: str  # kill, restart, pause, resume
    target: str  # "backup", "primary", or "same" (the node of the previous step)
    why: str


CYCLE = (
    Step("kill", "backup", "the primary drops it from the view and keeps serving"),
    Step("restart", "same", "it catches up from the primary and rejoins the view"),
    Step("kill", "primary", "the in-sync backup with the longest log takes over"),
    Step("restart", "same", "it comes back as a learner, catches up and rejoins"),
    Step("pause", "backup", "no heartbeat for 500 ms: the view service drops it"),
    Step("resume", "same", "it finds a newer view, catches up and rejoins"),
)


@dataclass
class FaultCycle:
    """Runs the cycle on a thread: wait `interval`, make sure the cluster is in sync before a
    fault, act through the supervisor's control socket (as `lfctl kill` does), narrate."""

    endpoint: str
    interval: float
    done: list[tuple[str, int | None, str]] = field(default_factory=list)  # (action, node, outcome)
    step_index: int = 0
    next_at: float = 0.0
    last_node: int | None = None
    rounds: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-faults", daemon=True)

    def start(self) -> None:
        self.next_at = time.monotonic() + self.interval
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def next_step(self) -> Step:
        step = CYCLE[self.step_index % len(CYCLE)]
        if step.action == "pause" and self.rounds % 2 == 1:
            # Every other round pauses the primary: a failover by heartbeat timeout.
            return Step("pause", "primary", "no heartbeat for 500 ms: a backup takes over")
        return step

    def banner(self) -> str:
        step = self.next_step()
        wait = max(0.0, self.next_at - time.monotonic())
        target = f"node {self.last_node}" if step.target == "same" else f"the {step.target}"
        return f"demo: next, {step.action} {target} in {wait:.0f} s ({step.why})"

    def note(self, msg: str, level: str = "info") -> None:
        try:
            request(self.endpoint, {"cmd": "note", "msg": msg, "level": level}, 2.0)
        except ControlError:
            pass

    def status(self) -> dict | None:
        try:
            reply = request(self.endpoint, {"cmd": "status"}, 2.0)
        except ControlError:
            return None
        return reply if reply.get("ok") else None

    def _wait(self, seconds: float) -> bool:
        """Sleep until stopped (False) or `seconds` have passed (True)."""
        return not self._stop.wait(max(0.0, seconds))

    def _wait_in_sync(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status and status.get("in_sync"):
                return True
            if not self._wait(0.1):
                return False
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._wait(self.next_at - time.monotonic()):
                return
            step = self.next_step()
            if step.target != "same" and not self._wait_in_sync(3 * self.interval):
                if self._stop.is_set():
                    return
                self.note("demo: the cluster is not in sync yet; waiting before the next fault", "warn")
                self.next_at = time.monotonic() + self.interval
                continue
            target: Any = self.last_node if step.target == "same" else step.target
            if target is None:
                target = "backup"
            outcome = self.act(step.action, target, step.why)
            if self._stop.is_set() and outcome is None:
                return
            self.step_index += 1
            if self.step_index % len(CYCLE) == 0:
                self.rounds += 1
            self.next_at = time.monotonic() + self.interval

    def act(self, action: str, target: Any, why: str) -> str | None:
        status = self.status() or {}
        view = status.get("view") or {}
        node = target
        if target == "primary":
            node = view.get("primary")
        elif target == "backup":
            backups = view.get("backups") or []
            node = backups[0] if backups else None
        if node is None:
            self.note(f"demo: no {target} to {action} right now; skipping", "warn")
            self.done.append((action, None, "skipped"))
            return "skipped"
        role = f" (the {target})" if target in ("primary", "backup") else ""
        self.note(f"demo: {action} node {node}{role}: {why}", "warn" if action in ("kill", "pause") else "info")
        cmd: dict[str, Any] = {"cmd": action, "node": node}
        if action == "kill":
            cmd["signal"] = "KILL"
        try:
            reply = request(self.endpoint, cmd, ACTION_TIMEOUT)
        except ControlError as exc:
            self.done.append((action, node, f"failed: {exc}"))
            return None
        self.last_node = node
        outcome = "ok" if reply.get("ok") else f"refused: {reply.get('error')}"
        self.done.append((action, node, outcome))
        if not reply.get("ok"):
            self.note(f"demo: {action} node {node} refused: {reply.get('error')}", "error")
        return outcome


# --------------------------------------------------------------------------- the run


def pick_base_port(cfg: ClusterConfig, wanted: int | None, nodes: int | None) -> int:
    """The wanted (or configured) base port when all its ports are free, else the next free one
    in steps of 100."""
    base = wanted if wanted is not None else cfg.supervisor.control_port
    for k in range(PORT_TRIES):
        port = base + 100 * k
        try:
            ports = with_overrides(cfg, base_port=port, **({"nodes": nodes} if nodes else {})).all_ports()
        except Exception:
            break
        if procs.first_port_in_use(cfg.host, ports) is None:
            return port
        if wanted is not None:
            break
    return base  # `up` reports which port is in use


def run_demo(args: argparse.Namespace, cli: Any = None) -> int:
    """`cli` is the running CLI module (under `python -m orchestrator.cli` that is `__main__`,
    whose error classes are the ones its `main` catches)."""
    if cli is None:
        from orchestrator import cli
    # Its own data dir: $LFCTL_DATA_DIR names the user's cluster, not the demo's.
    data_dir = args.data_dir or DEMO_DIR
    base = cli.resolve_cluster(argparse.Namespace(config=args.config, data_dir=data_dir), for_up=True)
    if cli.live_supervisor(base) is not None or cli.live_nodes(base):
        raise cli.CliError(f"a cluster is already running in {base.shown}: `lfctl down --data-dir {base.shown}` "
                           "stops it, or give the demo another --data-dir")
    if base.data_dir.exists() and any(base.data_dir.iterdir()):
        # A fresh start every time (orders are idempotent: replaying an old demo's order numbers
        # would only be answered from the old state).  Only a demo's own dir is ever wiped.
        if not (base.data_dir / MARKER).exists():
            raise cli.CliError(f"{base.shown} holds data that is not a demo's; the demo needs its own data dir "
                               f"(remove it, or give another --data-dir)")
        cli.purge(base)  # also refuses anything that does not look like an lfctl data dir
    base.data_dir.mkdir(parents=True, exist_ok=True)
    (base.data_dir / MARKER).write_text("made by `lfctl demo`; the next demo wipes this directory\n")
    port = pick_base_port(base.cfg, args.base_port, args.nodes)
    up_args = argparse.Namespace(config=args.config, data_dir=str(base.data_dir), nodes=args.nodes,
                                 base_port=port, detach=True)
    cli.say(f"lfctl demo: starting a cluster in {base.shown}")
    if cli.cmd_up(up_args) != 0:
        return 1
    cl = cli.resolve_cluster(argparse.Namespace(config=None, data_dir=str(base.data_dir)))
    demo = Demo(cl, args, cli)
    try:
        demo.run()
    except KeyboardInterrupt:
        pass
    finally:
        summary = demo.finish()
    cli.say(summary.text())
    return 0 if summary.consistent else 1


@dataclass
class Summary:
    duration_s: float
    nodes: int
    customers: int
    orders_ok: int
    orders_failed: int
    failovers: int
    longest_failover_s: float | None
    longest_stall_s: float
    faults: list[tuple[str, int | None, str]]
    digests: dict[int, str | None]
    applied: dict[int, int | None]
    missing: list[tuple[int, int, int]]  # (customer, acked, found)
    problems: list[str]

    @property
    def same_digest(self) -> bool:
        values = list(self.digests.values())
        return bool(values) and None not in values and len(set(values)) == 1

    @property
    def consistent(self) -> bool:
        return self.same_digest and not self.missing and not self.problems

    def text(self) -> str:
        counts: dict[str, int] = {}
        for action, _, outcome in self.faults:
            if outcome == "ok":
                counts[action] = counts.get(action, 0) + 1
        faults = ", ".join(f"{a} x{n}" for a, n in counts.items()) or "none"
        longest = f", longest {self.longest_failover_s * 1000:.0f} ms" if self.longest_failover_s is not None else ""
        lines = [
            "",
            f"lfctl demo summary ({self.duration_s:.0f} s, {self.nodes} nodes, {self.customers} customers)",
            f"  orders acknowledged   {self.orders_ok:,}" + (f" ({self.orders_failed} failed)" if self.orders_failed else ""),
            f"  faults injected       {faults}",
            f"  failovers             {self.failovers}{longest}",
            f"  longest client stall  {self.longest_stall_s * 1000:.0f} ms without a completed order",
        ]
        if self.same_digest:
            digest = next(iter(self.digests.values())) or ""
            index = sorted({a for a in self.applied.values() if a is not None})
            lines.append(f"  digests               every node has the same digest ({digest[:16]}..., "
                         f"applied index {', '.join(map(str, index))})")
        else:
            shown = ", ".join(f"node {n}: {(d or 'unknown')[:16]} at applied index {self.applied.get(n)}"
                              for n, d in sorted(self.digests.items()))
            lines.append(f"  digests               NOT the same on every node ({shown})")
        if self.missing:
            listed = ", ".join(f"customer {c} acked {a} but has {f}" for c, a, f in self.missing[:5])
            lines.append(f"  acknowledged orders   {len(self.missing)} customer(s) LOST acknowledged orders: {listed}")
        elif self.digests:
            lines.append("  acknowledged orders   all present in the final state (every customer's last "
                         "acknowledged order or a later one)")
        for problem in self.problems:
            lines.append(f"  problem               {problem}")
        return "\n".join(lines)


class Demo:
    def __init__(self, cl: Any, args: argparse.Namespace, cli: Any = None) -> None:
        if cli is None:
            from orchestrator import cli
        self.cli = cli
        self.cl = cl
        self.args = args
        self.endpoint = cl.cfg.supervisor.control_endpoint
        self.load = DemoLoad(cl.cfg, args.customers)
        self.faults = FaultCycle(self.endpoint, args.interval)
        self.started = time.monotonic()
        self.deadline = self.started + args.duration if args.duration is not None else None
        self.problems: list[str] = []
        self.plain_mode = False
        self.events_seq = 0

    def note(self, msg: str, level: str = "info") -> None:
        self.faults.note(msg, level)

    def time_up(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def run(self) -> None:
        from orchestrator.dashboard_app import DashboardApp, use_dashboard

        self.note(f"demo: a steady load of {self.args.customers} customers starts; a fault every "
                  f"{self.args.interval:g} s", "good")
        self.load.start()
        self.faults.start()
        if use_dashboard():
            def banner() -> str:
                left = f"; ends in {max(0.0, self.deadline - time.monotonic()):.0f} s" if self.deadline else ""
                return self.faults.banner() + left

            app = DashboardApp(self.endpoint, title="lfctl demo", quit_hint="q stop the demo", banner=banner)
            app.run(stop=self.time_up)
        else:
            self.plain()

    def plain(self) -> None:
        """No terminal: print each event as a line until the time is up (or Ctrl-C)."""
        self.plain_mode = True
        while not self.time_up():
            self.print_events()
            time.sleep(0.25 if self.deadline is None else max(0.0, min(0.25, self.deadline - time.monotonic())))

    def print_events(self) -> None:
        cli = self.cli
        try:
            reply = request(self.endpoint, {"cmd": "events", "since": self.events_seq, "limit": 500}, 2.0)
        except ControlError as exc:
            cli.warn(str(exc))
            return
        for event in reply.get("events") or []:
            self.events_seq = max(self.events_seq, event["seq"])
            stamp = time.strftime("%H:%M:%S", time.localtime(event["t"]))
            cli.say(f"{stamp}  {event['msg']}")

    def heal(self) -> None:
        status = self.faults.status()
        if not status:
            self.problems.append("the supervisor did not answer while healing")
            return
        for node in status.get("nodes") or []:
            action = {"paused": "resume", "down": "restart", "crashed": "restart"}.get(node.get("state"))
            if action:
                self.note(f"demo: ending: {action} node {node['id']}", "info")
                try:
                    request(self.endpoint, {"cmd": action, "node": node["id"]}, ACTION_TIMEOUT)
                except ControlError as exc:
                    self.problems.append(f"{action} node {node['id']}: {exc}")

    def wait_status(self, condition: Any, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            status = self.faults.status()
            if status and condition(status):
                return status
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def finish(self) -> Summary:
        """Heal, stop the load, compare the nodes, stop the cluster; always stops the cluster."""
        cli = self.cli
        duration = time.monotonic() - self.started
        try:
            self.faults.stop(ACTION_TIMEOUT + 2.0)
            self.heal()
            if self.wait_status(lambda s: s.get("in_sync"), SYNC_TIMEOUT) is None:
                self.problems.append(f"the cluster was not back in sync within {SYNC_TIMEOUT:g} s")
            if not self.load.stop(self.cl.cfg.client.deadline_ms / 1000.0 + 5.0):
                self.problems.append("the load did not stop in time")
            if self.load.error:
                self.problems.append(f"the load failed: {self.load.error}")
            status = self.faults.status() or {}
            digests, applied, records = self.settled_dumps(SETTLE_TIMEOUT)
            missing = self.check_acked(records)
            stats = status.get("stats") or {}
            if self.plain_mode:
                self.print_events()  # the healing steps
            return Summary(duration, len(self.cl.cfg.nodes), self.args.customers, self.load.ok, self.load.failed,
                           int(stats.get("failovers") or 0), stats.get("longest_failover_s"),
                           self.load.longest_stall, list(self.faults.done), digests, applied, missing,
                           self.problems)
        finally:
            self.load.stop(0.5)
            try:
                cli.down(self.cl)
            except cli.CliError as exc:
                cli.warn(str(exc))

    def settled_dumps(self, timeout: float) -> tuple[dict[int, str | None], dict[int, int | None], dict[int, dict]]:
        """Dump every node until all have applied the same index (digests are only comparable
        then).  The nodes' own dumps decide, not `status`: status shows each node's last ping,
        up to a heartbeat old, and orders the stopped load left in flight may still commit on the
        primary a moment before its backups hear of the new commit index."""
        deadline = time.monotonic() + timeout
        while True:
            digests, applied, records, errors = self.dumps()
            values = set(applied.values())
            if (len(values) == 1 and None not in values) or time.monotonic() >= deadline:
                self.problems.extend(errors)  # only the last round's: earlier ones were retried
                return digests, applied, records
            time.sleep(0.1)

    def dumps(self) -> tuple[dict[int, str | None], dict[int, int | None], dict[int, dict], list[str]]:
        errors: list[str] = []
        digests: dict[int, str | None] = {}
        applied: dict[int, int | None] = {}
        records: dict[int, dict] = {}
        for node in self.cl.cfg.nodes:
            try:
                reply = request(node.control_endpoint, {"cmd": "dump"}, 5.0, what=f"node {node.id}")
            except ControlError as exc:
                errors.append(str(exc))
                digests[node.id] = applied[node.id] = None
                continue
            digests[node.id] = reply.get("digest")
            applied[node.id] = reply.get("applied_index")
            records[node.id] = {"role": reply.get("role"), "records": reply.get("records") or {}}
        return digests, applied, records, errors

    def check_acked(self, records: dict[int, dict]) -> list[tuple[int, int, int]]:
        """Every customer's last acknowledged order (or a later one) must be in the state of
        every node (they all agree when the digests match; the primary's is checked first)."""
        missing = []
        for node_id, dump in sorted(records.items(), key=lambda kv: kv[1]["role"] != "primary"):
            state = dump["records"]
            for customer, acked in enumerate(self.load.acked):
                if acked < 0:
                    continue
                found = state.get(str(customer), -1)
                if found < acked:
                    missing.append((customer, acked, found))
            break  # the primary (or the first node) is the reference; digests cover the rest
        return missing
