"""`lfctl`: start, inspect, break and stop a local LaptopFactory cluster.

Every command finds its cluster the same way: `--data-dir` (else $LFCTL_DATA_DIR, else the
config's data_dir) names the directory, and once `up` has written DIR/cluster.toml that file is
the truth for every other command, whatever ./cluster.toml says meanwhile.

Exit codes: 0 success, 1 runtime failure (nothing running, a node not up, a request failed),
2 usage error (bad arguments, bad config, unknown node).  Errors are one short line, no traceback
(set LFCTL_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import psutil

from orchestrator import procs
from orchestrator.argtypes import node_arg, positive_int
from orchestrator.control import SCHEMA_VERSION, ControlError, request
from protocol.config import ClusterConfig, ConfigError, dump_config, load_config, with_overrides

DATA_DIR_ENV = "LFCTL_DATA_DIR"
STATUS_TIMEOUT = 2.0  # a healthy supervisor answers in milliseconds
DOWN_TIMEOUT = 15.0  # the supervisor gives its nodes 5 s before SIGKILL, then replies
NODE_OP_TIMEOUT = 10.0  # kill/restart wait for the old process to exit (5 s grace + margin)
FOREGROUND_PERIOD = 2.0
DUMP_RECORDS = 50


class CliError(Exception):
    """A runtime failure: printed as is, exit code 1."""

    exit_code = 1


class UsageError(CliError):
    """The user asked for something that cannot exist (unknown node...): exit code 2."""

    exit_code = 2


# --------------------------------------------------------------------------- cluster context


@dataclass
class Cluster:
    """The config and data dir a command works on."""

    cfg: ClusterConfig
    data_dir: Path
    config_path: Path | None  # None: the embedded default

    @property
    def shown(self) -> str:
        return procs.display_path(self.data_dir)

    @property
    def effective_config(self) -> Path:
        return self.data_dir / "cluster.toml"

    def not_running(self) -> CliError:
        return CliError(f"no cluster is running in {self.shown}")


def resolve_cluster(args: argparse.Namespace, *, for_up: bool = False) -> Cluster:
    """Pick the config and data dir (see the module docstring)."""
    explicit_dir = args.data_dir or os.environ.get(DATA_DIR_ENV)
    if explicit_dir and not for_up:
        # The cluster's own config decides; ./cluster.toml is not even read (it may be mid-edit).
        data_dir = absolute(explicit_dir)
        if (data_dir / "cluster.toml").is_file():
            return Cluster(load_config(data_dir / "cluster.toml"), data_dir, data_dir / "cluster.toml")
    config_path: Path | None = args.config
    if config_path is None and Path("cluster.toml").is_file():
        config_path = Path("cluster.toml")
    cfg = load_config(config_path)
    data_dir = absolute(explicit_dir or cfg.data_dir)
    if not for_up and (data_dir / "cluster.toml").is_file():
        config_path = data_dir / "cluster.toml"
        cfg = load_config(config_path)
    return Cluster(cfg, data_dir, config_path)


def absolute(path: str | Path) -> Path:
    """A data dir as given (relative to the cwd), made absolute: child processes run elsewhere."""
    p = Path(path).expanduser()
    return (p if p.is_absolute() else Path.cwd() / p).resolve()


def say(msg: str) -> None:
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def live_supervisor(cl: Cluster) -> int | None:
    """The pid of this data dir's supervisor; a stale pid file is removed (and said so)."""
    chk = procs.check_pid_file(procs.supervisor_pid_path(cl.data_dir), "supervisor", cl.data_dir)
    if chk.removed:
        warn(chk.removed)
    return chk.pid


def live_nodes(cl: Cluster) -> dict[int, int]:
    """Node pids named by pid files in the data dir and verified as ours; stale files removed."""
    found: dict[int, int] = {}
    for node_id, path in procs.node_pid_paths(cl.data_dir).items():
        chk = procs.check_pid_file(path, "node", cl.data_dir, node_id)
        if chk.removed:
            warn(chk.removed)
        if chk.pid is not None:
            found[node_id] = chk.pid
    return found


def supervisor_request(cl: Cluster, obj: dict, timeout: float = STATUS_TIMEOUT) -> dict:
    """One control request; a failed reply becomes a CliError with the supervisor's message."""
    reply = request(cl.cfg.supervisor.control_endpoint, obj, timeout)
    if not reply.get("ok"):
        raise CliError(str(reply.get("error") or "the supervisor refused the request"))
    return reply


def require_running(cl: Cluster) -> int:
    pid = live_supervisor(cl)
    if pid is None:
        orphans = live_nodes(cl)
        if orphans:
            listed = ", ".join(f"node {i} (pid {p})" for i, p in orphans.items())
            raise CliError(f"no supervisor is running in {cl.shown}, but {listed} still run: "
                           "`lfctl down` stops them")
        raise cl.not_running()
    return pid


def check_node_id(cl: Cluster, target: int | str) -> None:
    if isinstance(target, int) and target not in cl.cfg.node_ids:
        ids = ", ".join(str(i) for i in cl.cfg.node_ids)
        raise UsageError(f"node {target} does not exist (nodes: {ids})")


def print_json(obj: dict) -> None:
    obj = {"schema_version": SCHEMA_VERSION, **obj}
    print(json.dumps(obj, indent=2, sort_keys=False, default=str), flush=True)


# --------------------------------------------------------------------------- up


def cmd_up(args: argparse.Namespace) -> int:
    base = resolve_cluster(args, for_up=True)
    overrides: dict[str, Any] = {"data_dir": base.data_dir}
    if args.nodes is not None:
        overrides["nodes"] = args.nodes
    if args.base_port is not None:
        overrides["base_port"] = args.base_port
    cfg = with_overrides(base.cfg, **overrides)
    cl = Cluster(cfg, base.data_dir, base.config_path)

    pid = live_supervisor(cl)
    if pid is not None:
        raise CliError(f"a cluster is already running in {cl.shown} (supervisor pid {pid})")
    orphans = live_nodes(cl)
    if orphans:
        node_id, node_pid = next(iter(orphans.items()))
        raise CliError(f"node {node_id} of an earlier cluster is still running in {cl.shown} "
                       f"(pid {node_pid}): `lfctl down` stops it")
    hosts = [cfg.host] * 3 + [n.host for n in cfg.nodes for _ in range(3)]
    for host, (port, use) in zip(hosts, cfg.port_uses()):
        if procs.port_in_use(host, port):
            raise CliError(f"port {port} is in use ({use}); pick another --base-port")

    cl.data_dir.mkdir(parents=True, exist_ok=True)
    tmp = cl.effective_config.with_name(".cluster.toml.tmp")
    tmp.write_text(dump_config(cfg))
    os.replace(tmp, cl.effective_config)

    sup_log = cl.data_dir / "supervisor.log"
    proc = procs.spawn_module(
        procs.SUPERVISOR_MODULE,
        ["--config", str(cl.effective_config), "--data-dir", str(cl.data_dir)],
        sup_log,
        new_session=True,
    )
    started = Started(proc, time.time())
    try:
        status = wait_ready(cl, started)
    except BaseException as exc:  # including Ctrl-C while waiting: never leave a half cluster
        if isinstance(exc, CliError):
            warn(str(exc))
            show_logs(cl)
        warn("stopping what was started")
        stop_started(cl, started)
        if isinstance(exc, CliError):
            return 1
        raise
    print_endpoints(cl, status, proc.pid)
    if args.detach:
        return 0
    return foreground(cl)


@dataclass
class Started:
    """What one `up` started, so a failed `up` stops exactly that and nothing of another
    cluster (a concurrent `up` on the same data dir, say)."""

    proc: subprocess.Popen  # the supervisor
    at: float  # wall-clock spawn time
    node_pids: set[int] = dataclasses.field(default_factory=set)  # reported by *our* supervisor


def wait_ready(cl: Cluster, started: Started) -> dict:
    """Poll status until the cluster is ready (then, within the same deadline, until every node is
    in the view); fail early when the supervisor or a node died."""
    proc = started.proc
    timeout = cl.cfg.supervisor.startup_timeout_ms / 1000.0
    deadline = time.monotonic() + timeout
    last: dict | None = None
    while True:
        if proc.poll() is not None:
            raise CliError(f"the supervisor exited during startup ({procs.describe_exit(proc.returncode)})")
        try:
            reply = request(cl.cfg.supervisor.control_endpoint, {"cmd": "status"}, 0.5)
            if reply.get("ok") and reply.get("supervisor", {}).get("pid") == proc.pid:
                last = reply
                started.node_pids |= {n["pid"] for n in reply["nodes"] if n.get("pid")}
        except ControlError:
            pass
        if last and last.get("ok"):
            if not cl.cfg.supervisor.auto_restart:
                for node in last["nodes"]:
                    if node["state"] == "crashed":
                        how = (f" ({procs.describe_exit(node['exit_code'])})"
                               if node.get("exit_code") is not None else "")
                        why = f": {node['error']}" if node.get("error") else ""
                        raise CliError(f"node {node['id']} failed during startup{how}{why}")
            if last.get("in_sync"):
                return last
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if last and last.get("ok") and last.get("ready"):
        outside = [str(n["id"]) for n in last["nodes"] if n["role"] not in ("primary", "backup")
                   and n["state"] != "down"]
        warn(f"warning: node(s) {', '.join(outside)} not in the view yet (still catching up)")
        return last
    if last and last.get("ok"):
        waiting = [f"node {n['id']} {n['state']}" for n in last["nodes"] if n["state"] != "up"]
        detail = ", ".join(waiting) or f"no primary (view {last['view']['number']})"
        raise CliError(f"the cluster was not ready within {timeout:g} s ({detail})")
    raise CliError(f"the supervisor did not answer on {cl.cfg.supervisor.control_endpoint} "
                   f"within {timeout:g} s")


def show_logs(cl: Cluster, lines: int = 15) -> None:
    logs = [cl.data_dir / "supervisor.log"]
    for node_id in cl.cfg.node_ids:
        ndir = procs.node_dir(cl.data_dir, node_id)
        logs += [ndir / "stderr.log", ndir / "node.log"]
    for path in logs:
        text = procs.tail(path, lines)
        if text:
            warn(f"--- {procs.display_path(path)} (last {len(text)} lines)")
            for line in text:
                warn(f"    {line}")


def stop_started(cl: Cluster, started: Started) -> None:
    """Undo a failed `up`: ask the supervisor to go down, else kill it; then kill, by verified
    pid, any node it started that is still alive."""
    proc = started.proc
    if proc.poll() is None:
        try:
            started.node_pids |= {c.pid for c in psutil.Process(proc.pid).children()}
        except psutil.Error:
            pass
        try:
            request(cl.cfg.supervisor.control_endpoint, {"cmd": "down"}, DOWN_TIMEOUT)
        except ControlError:
            pass
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            procs.terminate_popen(proc, grace=5.0)
    # Nodes our supervisor started but never reported (it died early) were born after it.
    for pid in live_nodes(cl).values():
        try:
            if psutil.Process(pid).create_time() >= started.at - 1.0:
                started.node_pids.add(pid)
        except psutil.Error:
            pass
    leftovers = {p for p in started.node_pids if procs.is_ours(p, "node", cl.data_dir)}
    if leftovers:
        procs.terminate_pids(leftovers)
    procs.remove_pid_file(procs.supervisor_pid_path(cl.data_dir), expected_pid=proc.pid)
    for node_id, path in procs.node_pid_paths(cl.data_dir).items():
        procs.check_pid_file(path, "node", cl.data_dir, node_id)  # drop the now-stale files


def print_endpoints(cl: Cluster, status: dict, sup_pid: int) -> None:
    view = status["view"]
    backups = ", ".join(str(b) for b in view["backups"]) or "none"
    say(f"cluster {cl.cfg.name!r} is up: view {view['number']}, primary {view['primary']}, backups {backups}")
    say(f"  supervisor  {cl.cfg.supervisor.control_endpoint}  (pid {sup_pid})")
    pids = {n["id"]: n["pid"] for n in status["nodes"]}
    for n in cl.cfg.nodes:
        say(f"  node {n.id:<6} {n.client_endpoint}  (pid {pids.get(n.id)})")
    say(f"  data dir    {cl.shown}")


def foreground(cl: Cluster) -> int:
    """Print one status line every 2 s until Ctrl-C (or SIGTERM/SIGHUP, or the reader of its
    output leaving), then take the cluster down: a foreground cluster lives exactly as long as
    its terminal session."""

    def interrupt(signum: int, frame: Any) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)  # the terminal went away: same as Ctrl-C
    say("Ctrl-C stops the cluster")
    try:
        if dashboard_wanted():
            from orchestrator.dashboard_app import run_attached

            if run_attached(cl.cfg.supervisor.control_endpoint, "lfctl up", gone=lambda: supervisor_gone(cl),
                            quit_hint="q quit view (Ctrl-C stops the cluster)") == "gone":
                warn("the supervisor is gone")
                return 1
            say("dashboard closed; the cluster keeps running here: Ctrl-C stops it "
                "(`lfctl dashboard` in another terminal shows the view again)")
        while True:
            try:
                say(status_line(supervisor_request(cl, {"cmd": "status"})))
            except (ControlError, CliError) as exc:
                warn(str(exc))
                if live_supervisor(cl) is None:
                    warn("the supervisor is gone")
                    return 1
            time.sleep(FOREGROUND_PERIOD)
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, SIGTERM, SIGHUP; `lfctl up | head -3`
        try:
            say("")
        except OSError:
            # The terminal closed (SIGHUP), or the reader of our pipe left (`| head`), or took the
            # same Ctrl-C (`| tee`): nothing can be shown any more, but the cluster must come down.
            devnull = open(os.devnull, "w")  # noqa: SIM115 -- lives until the process exits
            sys.stdout = sys.stderr = devnull
        return 0 if down(cl) else 1


def dashboard_wanted() -> bool:
    from orchestrator.dashboard_app import use_dashboard

    return use_dashboard()


def supervisor_gone(cl: Cluster) -> bool:
    """No live supervisor for this data dir (quietly: the dashboard owns the screen)."""
    pid = procs.read_pid_file(procs.supervisor_pid_path(cl.data_dir))
    return pid is None or not procs.is_ours(pid, "supervisor", cl.data_dir)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Attach a live view to a running cluster; quitting it never stops the cluster."""
    cl = resolve_cluster(args)
    require_running(cl)
    from orchestrator.dashboard_app import render_once, run_attached

    endpoint = cl.cfg.supervisor.control_endpoint
    if args.once:
        return 0 if render_once(endpoint) else 1
    if not dashboard_wanted():
        # Not a terminal: the same plain lines `lfctl up` prints, until Ctrl-C.
        try:
            while True:
                say(status_line(supervisor_request(cl, {"cmd": "status"})))
                time.sleep(FOREGROUND_PERIOD)
        except KeyboardInterrupt:
            return 0
    try:
        outcome = run_attached(endpoint, "lfctl dashboard", gone=lambda: supervisor_gone(cl))
    except KeyboardInterrupt:
        return 0
    if outcome == "gone":
        warn(f"the cluster in {cl.shown} is gone")
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from orchestrator.demo import run_demo

    return run_demo(args, sys.modules[__name__])


def status_line(status: dict) -> str:
    view = status["view"]
    parts = [time.strftime("%H:%M:%S"), f"view {view['number']}", f"primary {view['primary'] or '-'}"]
    for n in status["nodes"]:
        idx = "/".join("-" if n[k] is None else str(n[k]) for k in ("last_index", "commit_index", "applied_index"))
        parts.append(f"| {n['id']} {n['role']} {n['state']} {idx}")
    return " ".join(parts)


# --------------------------------------------------------------------------- status


COLUMNS = (("node", "id"), ("pid", "pid"), ("role", "role"), ("state", "state"), ("view", "view"),
           ("last", "last_index"), ("commit", "commit_index"), ("applied", "applied_index"),
           ("lag", "lag"), ("ping ms", "last_ping_ms_ago"), ("restarts", "restarts"))


def cmd_status(args: argparse.Namespace) -> int:
    cl = resolve_cluster(args)
    require_running(cl)
    status = supervisor_request(cl, {"cmd": "status"})
    all_up = all(n["state"] in ("up", "catching up") for n in status["nodes"])
    if args.json:
        print_json({k: v for k, v in status.items() if k != "schema_version"})
        return 0 if all_up else 1
    view = status["view"]
    backups = ", ".join(str(b) for b in view["backups"]) or "none"
    say(f"cluster {status.get('cluster', cl.cfg.name)!r} in {cl.shown}: view {view['number']}, "
        f"primary {view['primary'] or 'none'}, backups {backups}; "
        f"{'ready' if status['ready'] else 'NOT ready'}")
    rows = [[fmt_cell(state_cell(n) if key == "state" else n.get(key)) for _, key in COLUMNS] for n in status["nodes"]]
    print_table([h for h, _ in COLUMNS], rows)
    return 0 if all_up else 1


def state_cell(node: dict) -> str:
    """A learner's state carries how far it has come: "catching up 42%"."""
    pct = node.get("catch_up_percent")
    return f"{node['state']} {pct:.0f}%" if pct is not None else node["state"]


def fmt_cell(value: Any) -> str:
    return "-" if value is None else str(value)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; plain aligned columns otherwise (pipes, tests, logs)."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, header_style="bold", pad_edge=False)
        for h in headers:
            table.add_column(h, justify="left" if h in ("role", "state") else "right")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        say("  ".join(cell.rjust(w) if h not in ("role", "state") else cell.ljust(w)
                      for cell, w, h in zip(line, widths, headers)).rstrip())


# --------------------------------------------------------------------------- client requests


def reply_json(reply: Any) -> dict | None:
    if reply is None:
        return None
    data = dataclasses.asdict(reply)
    if "records" in data:
        data["records"] = [{"customer_id": c, "last_order": o} for c, o in data["records"]]
    return {"kind": type(reply).__name__, **data}


def describe_reply(reply: Any) -> str:
    kind = type(reply).__name__
    if kind == "LaptopInfo":
        return (f"order {reply.order_number} of customer {reply.customer_id} committed: type {reply.type}, "
                f"engineer {reply.engineer_id}, admin {reply.admin_id}")
    if kind == "CustomerRecord":
        if reply.last_order == -1:
            return f"customer {reply.customer_id if reply.customer_id != -1 else '?'} has no record"
        return f"customer {reply.customer_id}: last order {reply.last_order}"
    if kind == "RecordList":
        lines = [f"{len(reply.records)} record(s)"]
        lines += [f"  customer {c}: last order {o}" for c, o in reply.records]
        return "\n".join(lines)
    return repr(reply)


def client_call(args: argparse.Namespace, call: Any) -> int:
    cl = resolve_cluster(args)
    require_running(cl)
    from loadgen.client import Client

    with Client(cl.cfg) as client:
        result = call(client)
    if args.json:
        print_json({"ok": result.ok, "reply": reply_json(result.reply), "error": result.error,
                    "latency_ms": round(result.latency_ns / 1e6, 3), "attempts": result.attempts,
                    "redirects": result.redirects, "node": result.node})
        return 0 if result.ok else 1
    if not result.ok:
        raise CliError(f"request failed: {result.error} (after {result.attempts} attempt(s))")
    # For a read that asked about customer X, show X even though a miss replies (-1, -1).
    say(describe_reply(result.reply).replace("customer ? ", f"customer {getattr(args, 'customer', '?')} "))
    say(f"(node {result.node}, {result.latency_ns / 1e6:.2f} ms, {result.attempts} attempt(s))")
    return 0


def cmd_order(args: argparse.Namespace) -> int:
    return client_call(args, lambda c: c.order(args.customer, args.order))


def cmd_read(args: argparse.Namespace) -> int:
    if args.range is not None and args.customer is not None:
        raise UsageError("give either CUSTOMER or --range LO HI, not both")
    if args.range is not None:
        lo, hi = args.range
        if hi < lo:
            raise UsageError(f"--range {lo} {hi}: HI must not be below LO")
        return client_call(args, lambda c: c.bulk_read(lo, hi))
    if args.customer is None:
        raise UsageError("read needs CUSTOMER or --range LO HI")
    return client_call(args, lambda c: c.read(args.customer))


def cmd_load(args: argparse.Namespace) -> int:
    # Closed or open loop, --procs, --nemesis, run directory, --check: orchestrator/loadrun.py.
    from orchestrator import loadrun

    return loadrun.cmd_load(args)


# --------------------------------------------------------------------------- dump


def resolve_target(cl: Cluster, target: int | str) -> int:
    """A node id for "primary"/"backup" (asks the supervisor), else the id itself."""
    if isinstance(target, int):
        return target
    require_running(cl)
    view = supervisor_request(cl, {"cmd": "status"})["view"]
    if target == "primary":
        if not view["primary"]:
            raise CliError(f"there is no primary in view {view['number']}")
        return int(view["primary"])
    if not view["backups"]:
        raise CliError(f"there is no backup in view {view['number']}")
    return int(view["backups"][0])


def cmd_dump(args: argparse.Namespace) -> int:
    cl = resolve_cluster(args)
    check_node_id(cl, args.node)
    node_id = resolve_target(cl, args.node)
    if live_supervisor(cl) is None and node_id not in live_nodes(cl):
        raise cl.not_running()
    node = cl.cfg.node(node_id)
    reply = request(node.control_endpoint, {"cmd": "dump"}, 5.0, what=f"node {node_id}")
    if not reply.get("ok"):
        raise CliError(f"node {node_id}: {reply.get('error', 'dump failed')}")
    if args.json:
        print_json({k: v for k, v in reply.items() if k != "schema_version"})
        return 0
    view = reply.get("view") or {}
    backups = ", ".join(str(b) for b in view.get("backups", [])) or "none"
    records = sorted(((int(c), o) for c, o in (reply.get("records") or {}).items()))
    say(f"node {node_id}: {reply.get('role')}, view {view.get('number')} "
        f"(primary {view.get('primary') or 'none'}, backups {backups})")
    say(f"last {reply.get('last_index')}  commit {reply.get('commit_index')}  applied {reply.get('applied_index')}")
    say(f"records {reply.get('record_count', len(records))}  digest {reply.get('digest')}")
    shown = records if args.all else records[:DUMP_RECORDS]
    if shown:
        width = max(len("customer"), *(len(str(c)) for c, _ in shown))
        say(f"{'customer'.rjust(width)}  last_order")
        for c, o in shown:
            say(f"{str(c).rjust(width)}  {o}")
    if len(records) > len(shown):
        say(f"... {len(records) - len(shown)} more (--all shows them)")
    return 0


# --------------------------------------------------------------------------- down


def cmd_down(args: argparse.Namespace) -> int:
    cl = resolve_cluster(args)
    was_running = down(cl)
    if args.purge:
        purge(cl)
    if not was_running:
        raise cl.not_running()
    return 0


def down(cl: Cluster) -> bool:
    """Stop the cluster in `cl.data_dir`; False when nothing was running.  Waits until every
    process it knows of (supervisor, nodes from pid files and from the last status) is gone."""
    sup_pid = live_supervisor(cl)
    node_pids = live_nodes(cl)
    if sup_pid is None and not node_pids:
        return False
    known = set(node_pids.values())
    if sup_pid is not None:
        try:
            status = request(cl.cfg.supervisor.control_endpoint, {"cmd": "status"}, 1.0)
            known |= {n["pid"] for n in status.get("nodes", []) if n.get("pid")}
        except ControlError:
            pass
        try:
            reply = request(cl.cfg.supervisor.control_endpoint, {"cmd": "down"}, DOWN_TIMEOUT)
            if reply.get("killed"):
                warn(f"node(s) {', '.join(map(str, reply['killed']))} ignored SIGTERM and were killed")
        except ControlError as exc:
            warn(f"{exc}; stopping it by pid")
            if procs.is_ours(sup_pid, "supervisor", cl.data_dir):
                procs.terminate_pids([sup_pid])
        left = procs.wait_gone([sup_pid], 10.0)
        if left and procs.is_ours(sup_pid, "supervisor", cl.data_dir):
            procs.send_signal(sup_pid, signal.SIGKILL)
            procs.wait_gone([sup_pid], 2.0)
        procs.remove_pid_file(procs.supervisor_pid_path(cl.data_dir), expected_pid=sup_pid)
    # Whatever the supervisor did not stop (it died, or was killed above), stop by verified pid.
    leftovers = {p for p in known if procs.is_ours(p, "node", cl.data_dir)}
    leftovers |= set(live_nodes(cl).values())
    if leftovers:
        how = procs.terminate_pids(leftovers)
        warn("stopped leftover node process(es): " + ", ".join(f"pid {p} ({h})" for p, h in how.items()))
    for node_id, path in procs.node_pid_paths(cl.data_dir).items():
        procs.check_pid_file(path, "node", cl.data_dir, node_id)  # removes the now-stale files
    still = procs.wait_gone(known | ({sup_pid} if sup_pid else set()), 5.0)
    still = {p for p in still if procs.is_ours(p, "node", cl.data_dir) or procs.is_ours(p, "supervisor", cl.data_dir)}
    if still:
        raise CliError(f"process(es) {', '.join(map(str, sorted(still)))} are still running")
    say(f"cluster in {cl.shown} is down")
    return True


# Files and directories `up` and the nodes create; a data dir holding anything else is not
# deleted by --purge (a mistyped --data-dir must not cost the user their home directory).
OWN_ENTRIES = ("cluster.toml", "view.json", "supervisor.log", "supervisor.pid")


def purge(cl: Cluster) -> None:
    d = cl.data_dir
    if not d.exists():
        say(f"{cl.shown} does not exist; nothing to purge")
        return
    entries = list(d.iterdir())
    marked = any(e.name in OWN_ENTRIES or e.name.startswith("node-") for e in entries)
    dangerous = d in (Path.home().resolve(), Path.cwd().resolve()) or d == Path(d.anchor)
    if dangerous or (entries and not marked):
        raise CliError(f"refusing to purge {cl.shown}: it does not look like an lfctl data dir")
    shutil.rmtree(d)
    say(f"removed {cl.shown}")


# --------------------------------------------------------------------------- fault injection


def node_op(args: argparse.Namespace, cmd: str, **extra: Any) -> int:
    cl = resolve_cluster(args)
    check_node_id(cl, args.node)
    require_running(cl)
    reply = supervisor_request(cl, {"cmd": cmd, "node": args.node, **extra}, NODE_OP_TIMEOUT)
    say(reply.get("message") or f"{cmd} node {args.node}: done")
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    return node_op(args, "kill", signal=args.signal)


def cmd_restart(args: argparse.Namespace) -> int:
    return node_op(args, "restart", wipe=args.wipe)


def cmd_pause(args: argparse.Namespace) -> int:
    return node_op(args, "pause")


def cmd_resume(args: argparse.Namespace) -> int:
    return node_op(args, "resume")


# --------------------------------------------------------------------------- node


def cmd_node(args: argparse.Namespace) -> int:
    cl = resolve_cluster(args)
    check_node_id(cl, args.id)
    config = cl.config_path
    if config is None:
        from importlib.resources import as_file, files

        with as_file(files("protocol").joinpath("default_cluster.toml")) as path:
            config = Path(path)
    from node.server import main as node_main

    return int(node_main(["--id", str(args.id), "--config", str(config), "--data-dir", str(cl.data_dir)]) or 0)


# --------------------------------------------------------------------------- argument parsing


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (usage is one `--help` away) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--config", type=Path, metavar="FILE",
                        help="cluster config (default: ./cluster.toml if it exists, else the built-in one)")
    common.add_argument("--data-dir", metavar="DIR",
                        help=f"cluster data dir (default: ${DATA_DIR_ENV}, else the config's data_dir)")

    parser = Parser(prog="lfctl", description="Run and break a local LaptopFactory cluster.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    def add(name: str, func: Any, help: str) -> Parser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up, "start the cluster and wait until it is ready")
    p.add_argument("--nodes", type=positive_int, help="number of nodes (overrides the config)")
    p.add_argument("--base-port", type=positive_int, metavar="P", help="first port (overrides the config)")
    p.add_argument("--detach", action="store_true", help="return once ready instead of staying in the foreground")

    p = add("status", cmd_status, "show the view and every node (exit 1 when a node is not up)")
    p.add_argument("--json", action="store_true")

    p = add("order", cmd_order, "place one order (request type 1); a customer's order numbers only grow: "
                              "its last order again is a retry, an older one is refused (STALE_ORDER)")
    p.add_argument("customer", type=int, metavar="CUSTOMER")
    p.add_argument("order", type=int, metavar="ORDER")
    p.add_argument("--json", action="store_true")

    p = add("read", cmd_read, "read one customer's record (type 2) or a range of them (type 3)")
    p.add_argument("customer", type=int, nargs="?", metavar="CUSTOMER")
    p.add_argument("--range", type=int, nargs=2, metavar=("LO", "HI"), help="bulk read of customers [LO, HI)")
    p.add_argument("--json", action="store_true")

    p = add("dump", cmd_dump, "show one node's state, straight from the node")
    p.add_argument("node", type=node_arg, metavar="NODE", help="node id, primary or backup")
    p.add_argument("--all", action="store_true", help=f"show every record, not only the first {DUMP_RECORDS}")
    p.add_argument("--json", action="store_true")

    from orchestrator import loadrun

    p = add("load", cmd_load, "drive load: closed loop (--customers C --orders K) or open loop "
                              "(--rate R --duration S); --procs, --nemesis, --check; writes runs/<time>/")
    loadrun.add_load_arguments(p)
    loadrun.add_commands(add)  # check, report, partition, heal

    p = add("down", cmd_down, "stop the cluster (and wait until every process is gone)")
    p.add_argument("--purge", action="store_true", help="also delete the data dir")

    p = add("kill", cmd_kill, "kill one node (it stays down until `restart`)")
    p.add_argument("node", type=node_arg, metavar="NODE", help="node id, primary or backup")
    p.add_argument("--signal", type=str.upper, choices=("KILL", "TERM"), default="KILL")

    p = add("restart", cmd_restart, "restart one node (stopping it first if it runs)")
    p.add_argument("node", type=node_arg, metavar="NODE", help="node id, primary or backup")
    p.add_argument("--wipe", action="store_true", help="delete the node's data first")

    p = add("pause", cmd_pause, "freeze one node (SIGSTOP)")
    p.add_argument("node", type=node_arg, metavar="NODE", help="node id, primary or backup")

    p = add("resume", cmd_resume, "unfreeze a paused node (SIGCONT)")
    p.add_argument("node", type=node_arg, metavar="NODE", help="node id, primary or backup")

    p = add("node", cmd_node, "run one node in the foreground")
    p.add_argument("--id", type=positive_int, required=True, metavar="N")

    p = add("dashboard", cmd_dashboard, "attach the live dashboard to a running cluster (q quits the view only)")
    p.add_argument("--once", action="store_true", help="print one frame and exit (no terminal needed)")

    from orchestrator import demo

    p = add("demo", cmd_demo, "start a cluster, run a load and inject a fault every few seconds, live "
                              "(in its own data dir: ./.lfctl-demo unless --data-dir; $LFCTL_DATA_DIR is not used)")
    demo.add_arguments(p)

    from orchestrator import simulator

    help = "run the deterministic simulator over many seeds (no processes, no sockets)"
    p = sub.add_parser("sim", help=help, description=help)
    simulator.add_arguments(p)
    p.set_defaults(func=simulator.run_from_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.func(args)
    except ConfigError as exc:
        warn(str(exc))
        return 2
    except CliError as exc:
        warn(str(exc))
        return exc.exit_code
    except ControlError as exc:
        warn(str(exc))
        return 1
    except KeyboardInterrupt:
        warn("interrupted")
        return 130
    except BrokenPipeError:  # `lfctl status --json | head`: the reader left, that is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:
        if os.environ.get("LFCTL_DEBUG"):
            raise
        warn(f"lfctl {args.command}: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
