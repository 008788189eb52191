"""Shared pieces of the benchmark suite: machine facts, summaries, ports, clusters, processes.

Nothing here measures; it only starts and stops what the experiments measure, and describes the
machine they ran on so two result files can be compared honestly.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import psutil  # noqa: E402
import zmq  # noqa: E402

from orchestrator import control, procs  # noqa: E402
from protocol.config import load_config  # noqa: E402

T = TypeVar("T")
PYTHON = sys.executable
SCHEMA_VERSION = 1


# --------------------------------------------------------------------------- machine and versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def _git() -> dict[str, Any]:
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    changed = [line[3:] for line in run("status", "--porcelain").splitlines() if line.strip()]
    return {
        "commit": run("rev-parse", "HEAD").strip() or None,
        "dirty": bool(changed),
        # which measured code differs from the commit (the bench's own files aside)
        "changed_outside_bench": sorted(p for p in changed if not p.startswith(("bench/", "docs/"))),
    }


def machine_info() -> dict[str, Any]:
    """Where and with what a result was measured (the same block in every result file)."""
    mem = psutil.virtual_memory()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cpus": psutil.cpu_count(logical=False),
        "memory_gib": round(mem.total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "versions": {
            "pyzmq": zmq.pyzmq_version(),
            "libzmq": zmq.zmq_version(),
            "psutil": psutil.__version__,
            "pysyncobj": _version("pysyncobj"),
            "matplotlib": _version("matplotlib"),
            "lfctl": _version("lfctl"),
        },
        "git": _git(),
        "loadavg_at_start": [round(x, 2) for x in load] if load else None,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def stats(values: Sequence[float], digits: int = 1) -> dict[str, Any]:
    """min / median / max over repeated runs (and every run, so nothing is hidden)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"min": None, "median": None, "max": None, "runs": []}
    return {
        "min": round(min(vals), digits),
        "median": round(statistics.median(vals), digits),
        "max": round(max(vals), digits),
        "runs": [round(v, digits) for v in vals],
    }


def ratio(a: dict, b: dict, digits: int = 3) -> float | None:
    """Ratio of two medians (a / b)."""
    if not a or not b or not a.get("median") or not b.get("median"):
        return None
    return round(a["median"] / b["median"], digits)


def write_result(name: str, payload: dict[str, Any], out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    doc = {"schema_version": SCHEMA_VERSION, "experiment": name, "machine": machine_info(), **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_for(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    return procs.poll_until(cond, timeout, what, interval)


free_ports = procs.free_ports
find_free_base_port = procs.free_base_port


# --------------------------------------------------------------------------- lfctl clusters


def _env() -> dict[str, str]:
    env = procs.child_env()
    env.pop("LFCTL_DATA_DIR", None)
    return env


def lfctl(data_dir: Path, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([PYTHON, "-m", "orchestrator.cli", *args, "--data-dir", str(data_dir)],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"lfctl {' '.join(args)} (exit {out.returncode}): {out.stdout}{out.stderr}")
    return out


def write_config(path: Path, *, durability: str | None = None, extra: dict[str, dict[str, Any]] | None = None) -> Path:
    """A small cluster.toml: only the keys a benchmark changes (everything else is the default)."""
    sections: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (extra or {}).items()}
    if durability is not None:
        sections.setdefault("replication", {})["durability"] = durability
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        for key, value in keys.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class Cluster:
    """A real cluster started with `lfctl up --detach` in a fresh temp data dir; `close()` runs
    `lfctl down` and then kills, by verified pid, anything of it still alive."""

    def __init__(self, nodes: int = 3, *, durability: str | None = None, tmp_root: Path | None = None,
                 label: str = "") -> None:
        self.nodes = nodes
        self.label = label or f"{nodes}-node"
        self._tmp = Path(tempfile.mkdtemp(prefix="lfctl-bench-", dir=tmp_root))
        self.data_dir = self._tmp / "data"
        self.config_file = write_config(self._tmp / "cluster.toml", durability=durability)
        self.pids: set[int] = set()
        self._paused: list[int] = []
        self.up = False
        last = ""
        for _attempt in range(3):
            base = find_free_base_port(nodes)
            out = lfctl(self.data_dir, "up", "--detach", "--nodes", str(nodes), "--base-port", str(base),
                        "--config", str(self.config_file), check=False)
            self._record_pids()
            if out.returncode == 0:
                self.up = True
                break
            last = out.stdout + out.stderr
            self.close()
            if "in use" not in last:
                break
        if not self.up:
            raise RuntimeError(f"lfctl up failed: {last}")
        self.config = load_config(self.data_dir / "cluster.toml")
        self.wait_in_sync()

    # -- control

    def ctl(self, timeout: float = 10.0, **cmd: Any) -> dict:
        reply = control.request(self.config.supervisor.control_endpoint, cmd, timeout=timeout)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error"))
        return reply

    def status(self) -> dict:
        s = self.ctl(cmd="status")
        self.pids.update(n["pid"] for n in s["nodes"] if n.get("pid"))
        return s

    def status_cli(self) -> dict:
        """`lfctl status --json` (what the brief names; same content as the control reply)."""
        out = lfctl(self.data_dir, "status", "--json", check=False)
        return json.loads(out.stdout)

    def in_sync(self) -> dict | None:
        s = self.status()
        v = s["view"]
        return s if v["primary"] != 0 and len(v["backups"]) == self.nodes - 1 else None

    def wait_in_sync(self, timeout: float = 30.0) -> dict:
        return wait_for(self.in_sync, timeout, f"{self.label}: every node in the view")

    def primary(self) -> int:
        return self.wait_in_sync()["view"]["primary"]

    def endpoint(self, node_id: int) -> str:
        return self.config.node(node_id).client_endpoint

    def primary_endpoint(self) -> str:
        return self.endpoint(self.primary())

    def endpoints(self, primary: int | None = None) -> dict[int, str]:
        """node id -> client endpoint, the primary first (the lean driver starts there and
        follows NOT_PRIMARY hints)."""
        first = primary if primary is not None else self.primary()
        eps = {first: self.endpoint(first)}
        eps.update((n.id, n.client_endpoint) for n in self.config.nodes if n.id != first)
        return eps

    def client_nodes(self) -> list[tuple[int, str]]:
        return [(n.id, n.client_endpoint) for n in self.config.nodes]

    def node_pids(self) -> dict[int, int]:
        return {n["id"]: n["pid"] for n in self.status()["nodes"] if n.get("pid")}

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the primary has committed everything in its log (the previous point's
        tail is not measured by the next one)."""

        def quiet() -> bool:
            s = self.status()
            p = next((n for n in s["nodes"] if n["id"] == s["view"]["primary"]), None)
            return p is not None and p.get("last_index") is not None and p["commit_index"] == p["last_index"]

        try:
            wait_for(quiet, timeout, "the cluster to settle", interval=0.02)
        except TimeoutError:
            pass

    def view_log(self, since_view: int) -> list[str]:
        """The supervisor's log lines explaining view changes after `since_view` ("view 3 -> 4:
        ... (node 2 failed)"), for a benchmark point that saw the view change."""
        import re

        try:
            lines = (self.data_dir / "supervisor.log").read_text(errors="replace").splitlines()[-400:]
        except OSError:
            return []
        out = []
        for line in lines:
            m = re.search(r"view (\d+) -> \d+: .*", line)
            if m and int(m.group(1)) >= since_view:
                out.append(m.group(0))
        return out[-10:]

    # -- pausing (see `others_paused`)

    def pause(self) -> None:
        """SIGSTOP the supervisor and every node at once.  On resume the supervisor sees its own
        stall and does not count it as the nodes' silence (ViewService.on_stall), so the view
        survives; the point measured next waits for the cluster to be in sync anyway."""
        s = self.status()
        self._paused = [s["supervisor"]["pid"], *(n["pid"] for n in s["nodes"] if n.get("pid"))]
        for pid in self._paused:
            procs.send_signal(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._paused:
            procs.send_signal(pid, signal.SIGCONT)
        self._paused = []

    # -- teardown

    def _record_pids(self) -> None:
        pid = procs.read_pid_file(procs.supervisor_pid_path(self.data_dir))
        if pid:
            self.pids.add(pid)
        for path in procs.node_pid_paths(self.data_dir).values():
            p = procs.read_pid_file(path)
            if p:
                self.pids.add(p)

    def close(self) -> None:
        self.resume()
        self._record_pids()
        if self.data_dir.exists():
            try:
                lfctl(self.data_dir, "down", timeout=30.0, check=False)
            except subprocess.TimeoutExpired:
                pass
        self._record_pids()
        leftovers = [p for p in self.pids if procs.pid_alive(p) and (
            procs.is_ours(p, "supervisor", self.data_dir) or procs.is_ours(p, "node", self.data_dir))]
        for pid in leftovers:
            procs.send_signal(pid, signal.SIGCONT)
            procs.send_signal(pid, signal.SIGKILL)
        if leftovers:
            procs.wait_gone(set(leftovers), 5.0)
        self.up = False

    def remove(self) -> None:
        self.close()
        import shutil

        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


# --------------------------------------------------------------------------- child processes


class Children:
    """Processes a benchmark started itself (relay, PySyncObj nodes); stopped by their own pids."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def spawn(self, args: Iterable[str], log_path: Path | None = None) -> subprocess.Popen:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            p = subprocess.Popen([PYTHON, *args], cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        finally:
            if log_path:
                out.close()
        self.procs.append(p)
        return p

    def pause(self) -> None:
        for p in self.procs:
            procs.send_signal(p.pid, signal.SIGSTOP)

    def resume(self) -> None:
        for p in self.procs:
            procs.send_signal(p.pid, signal.SIGCONT)

    def stop(self, grace: float = 3.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)  # a paused child would hold the SIGTERM until resumed
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self.procs.clear()

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def others_paused(target: object, everyone: Iterable[Any]) -> Iterator[None]:
    """Measure `target` with every other target of the experiment stopped (SIGSTOP).

    Targets measured in rotation are all up at once, and an idle lfctl cluster is not idle: its
    nodes tick every 10 ms and heartbeat, its supervisor answers pings, ~11 % of a core per
    3-node cluster, where an idle relay wakes 10 times a second.  On 2 cores that slowed the
    relay by 13 % in throughput and 15 % in unloaded p50 while two idle clusters stood by
    (docs/performance.md, "How it measures"), which flattered every ratio to the relay."""
    others = [t for t in everyone if t is not target]
    paused = []
    try:
        for t in others:
            t.pause()
            paused.append(t)
        yield
    finally:
        for t in paused:
            t.resume()


def rss_bytes(pids: Iterable[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return out


class CpuMeter:
    """CPU seconds used by named processes over one measurement, and by everything else on the
    machine (other processes compete for the same 2 cores, so a noisy neighbour is visible).

    Each process's main thread is also counted on its own: it runs the event loop and all of
    the Python, while the other threads are ZeroMQ's I/O thread (and a node's snapshot writer).
    So the split says whether a difference per write is the Python of the loop or the messaging
    under it."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs: dict[str, psutil.Process] = {}
        for name, pid in pids.items():
            try:
                self.procs[name] = psutil.Process(pid)
            except psutil.Error:
                pass
        self._start: dict[str, tuple[float, float]] = {}
        self._sys0 = None
        self._t0 = 0.0

    @staticmethod
    def _cpu(p: psutil.Process) -> tuple[float, float]:
        """(the process's CPU seconds, its main thread's); the main thread's id is the pid."""
        try:
            t = p.cpu_times()
            loop = next((th.user_time + th.system_time for th in p.threads() if th.id == p.pid), float("nan"))
            return t.user + t.system, loop
        except psutil.Error:
            return float("nan"), float("nan")

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def start(self) -> CpuMeter:
        self._start = {n: self._cpu(p) for n, p in self.procs.items()}
        self._sys0 = self._busy()
        self._t0 = time.monotonic()
        return self

    def stop(self, ops: int) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        end = {n: self._cpu(p) for n, p in self.procs.items()}
        used = {n: end[n][0] - self._start[n][0] for n in self.procs}
        loop = {n: end[n][1] - self._start[n][1] for n in self.procs}
        busy = self._busy() - self._sys0
        ours = sum(v for v in used.values() if v == v)
        return {
            "wall_s": round(wall, 3),
            "cpu_percent": {n: round(100 * v / wall, 1) for n, v in used.items()},
            "cpu_us_per_op": {n: round(1e6 * v / ops, 1) for n, v in used.items()} if ops else {},
            "loop_cpu_us_per_op": {n: round(1e6 * v / ops, 2) for n, v in loop.items()} if ops else {},
            "machine_busy_percent": round(100 * busy / wall, 1),  # of one core; 200 = both cores
            "others_cpu_percent": round(100 * max(0.0, busy - ours) / wall, 1),
        }
