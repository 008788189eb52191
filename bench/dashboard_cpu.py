"""What an attached dashboard costs the supervisor, under load.

Starts a 3-node cluster (own tmp data dir, free loopback ports), then measures, for 0, 1 and 3
attached dashboards, the supervisor's CPU time (psutil `cpu_times`, user + system, of its pid)
over a fixed window while `lfctl load` runs (a closed loop that also pushes client telemetry to
the supervisor, as every load does).  Each dashboard is a real `lfctl dashboard` in a
pseudo-terminal (pexpect), drawing at its normal rate; its own CPU is reported too.  The
configurations alternate over several rounds (0, 1, 3, 0, 1, 3, ...) so drift on a shared machine
spreads evenly; every figure has min/median/max.

Writes bench/results/dashboard_cpu.json.
Usage: python bench/dashboard_cpu.py [--window 10] [--rounds 3] [--customers 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pexpect  # noqa: E402
import psutil  # noqa: E402

from orchestrator import procs  # noqa: E402
from orchestrator.control import request  # noqa: E402
from protocol.config import load_config  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "dashboard_cpu.json"


def lfctl(data_dir: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=timeout, env=procs.child_env())


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


class Dashboard:
    """`lfctl dashboard` in a pty; a thread drains what it draws (as a terminal would)."""

    def __init__(self, data_dir: Path) -> None:
        env = dict(procs.child_env(), TERM="xterm-256color")
        env.pop("LFCTL_PLAIN", None)
        self.child = pexpect.spawn(sys.executable, ["-m", "orchestrator.cli", "dashboard", "--data-dir", str(data_dir)],
                                   env=env, dimensions=(45, 150), encoding="utf-8", codec_errors="replace",
                                   timeout=5)
        self.bytes = 0
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while self.frames < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.frames < 2:
            raise RuntimeError("the dashboard did not draw")
        self.ps = psutil.Process(self.child.pid)

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.child.read_nonblocking(1 << 16, timeout=0.1)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return
            self.bytes += len(data)
            self.frames += data.count("\x1b[H")

    def close(self) -> None:
        if self.child.isalive():
            self.child.send("q")
            deadline = time.monotonic() + 5
            while self.child.isalive() and time.monotonic() < deadline:
                time.sleep(0.05)
        self._stop.set()
        self._thread.join(2)
        if self.child.isalive():
            self.child.kill(signal.SIGKILL)
        self.child.close(force=True)


def answered(status: dict) -> int:
    """Client operations the nodes have answered (cumulative `ops` from their pings)."""
    return sum(n.get("ops") or 0 for n in status["nodes"])


def measure(data_dir: Path, sup: psutil.Process, dashboards: int, window: float, customers: int) -> dict:
    dash = [Dashboard(data_dir) for _ in range(dashboards)]
    load = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "load", "--customers", str(customers),
                             "--orders", "10000000", "--max-duration", str(window + 6), "--json",
                             "--data-dir", str(data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=procs.child_env(),
                            cwd=data_dir.parent)  # `lfctl load` writes its runs/ directory there
    try:
        time.sleep(3.0)  # warm-up: the load connects and reaches its steady rate (timing, not sync)
        endpoint = load_config(data_dir / "cluster.toml").supervisor.control_endpoint
        before_ops = answered(request(endpoint, {"cmd": "status"}))
        s0 = cpu_seconds(sup)
        d0 = [cpu_seconds(d.ps) for d in dash]
        f0 = [d.frames for d in dash]
        t0 = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        s1 = cpu_seconds(sup)
        d1 = [cpu_seconds(d.ps) for d in dash]
        f1 = [d.frames for d in dash]
        after_ops = answered(request(endpoint, {"cmd": "status"}))
    finally:
        load.send_signal(signal.SIGINT)
        try:
            load.wait(20)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait(5)
        for d in dash:
            d.close()
    return {
        "dashboards": dashboards,
        "window_s": round(elapsed, 3),
        "supervisor_cpu_percent": round(100 * (s1 - s0) / elapsed, 2),
        "dashboard_cpu_percent": [round(100 * (b - a) / elapsed, 2) for a, b in zip(d0, d1)],
        "dashboard_frames_per_s": [round((b - a) / elapsed, 2) for a, b in zip(f0, f1)],
        "load_ops_per_s": round((after_ops - before_ops) / elapsed, 1),
    }


def stats(values: list[float]) -> dict:
    return {"min": min(values), "median": round(statistics.median(values), 2), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--customers", type=int, default=20)
    parser.add_argument("--configs", default="0,1,3", help="numbers of dashboards, comma-separated")
    args = parser.parse_args()
    configs = [int(x) for x in args.configs.split(",")]
    with tempfile.TemporaryDirectory(prefix="lfctl-dashcpu-") as tmp:
        data_dir = Path(tmp) / "data"
        up = lfctl(data_dir, "up", "--detach", "--base-port", str(procs.free_base_port()))
        if up.returncode != 0:
            print(up.stdout, up.stderr, file=sys.stderr)
            return 1
        try:
            sup = psutil.Process(procs.read_pid_file(procs.supervisor_pid_path(data_dir)))
            runs: list[dict] = []
            for r in range(args.rounds):
                for n in configs:
                    run = measure(data_dir, sup, n, args.window, args.customers)
                    run["round"] = r
                    runs.append(run)
                    print(json.dumps(run), flush=True)
        finally:
            lfctl(data_dir, "down")
    summary = {}
    for n in configs:
        mine = [r for r in runs if r["dashboards"] == n]
        summary[str(n)] = {
            "supervisor_cpu_percent": stats([r["supervisor_cpu_percent"] for r in mine]),
            "load_ops_per_s": stats([r["load_ops_per_s"] for r in mine]),
        }
        if n:
            summary[str(n)]["dashboard_cpu_percent_each"] = stats([x for r in mine for x in r["dashboard_cpu_percent"]])
            summary[str(n)]["dashboard_frames_per_s_each"] = stats(
                [x for r in mine for x in r["dashboard_frames_per_s"]])
    result = {
        "benchmark": "dashboard_cpu",
        "what": "supervisor CPU (user+system, % of one core) over a fixed window while `lfctl load` runs, "
                "with 0, 1 and 3 `lfctl dashboard`s attached in pseudo-terminals",
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "settings": {"window_s": args.window, "rounds": args.rounds, "customers": args.customers, "nodes": 3},
        "summary": summary,
        "runs": runs,
        "command": "python bench/dashboard_cpu.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
