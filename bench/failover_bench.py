"""Failover and catch-up, measured on a real 3-node cluster on loopback.

1. Primary kill -> next committed order, over N trials: one client orders continuously; the
   primary is SIGKILLed through the supervisor; the figure is the time from the kill to the first
   order acknowledged by the new primary.  Measured with the default client attempt timeout and
   with a short one (which isolates the cluster's own failover time from the client's wait).
2. Catch-up of a wiped node: load E entries, kill a backup, `restart --wipe` it, and time until it
   is back in the view with the primary's commit index.
3. The same while the primary keeps serving a closed-loop load (`catch_up_under_load`, also run
   by bench/suite.py).

Writes bench/results/failover.json.  Usage: python bench/failover_bench.py [--trials 20] [--entries 100000]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.client import Client  # noqa: E402
from loadgen.load import run_load  # noqa: E402
from orchestrator import control, procs  # noqa: E402
from protocol.config import load_config  # noqa: E402


def lfctl(data_dir: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args, "--data-dir", str(data_dir)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"lfctl {' '.join(args)}: {out.stdout}{out.stderr}")
    return out.stdout


def poll(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}")


class Cluster:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        lfctl(data_dir, "up", "--detach", "--base-port", str(procs.free_base_port(3)))
        self.config = load_config(data_dir / "cluster.toml")
        self.endpoint = self.config.supervisor.control_endpoint

    def ctl(self, **cmd) -> dict:
        reply = control.request(self.endpoint, cmd, timeout=10.0)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error"))
        return reply

    def status(self) -> dict:
        return self.ctl(cmd="status")

    def in_sync(self) -> bool:
        s = self.status()
        view = s["view"]
        return view["primary"] != 0 and len(view["backups"]) == len(self.config.nodes) - 1

    def down(self) -> None:
        lfctl(self.data_dir, "down")


def failover_trials(cluster: Cluster, trials: int, attempt_timeout: float) -> list[float]:
    times = []
    for trial in range(trials):
        poll(cluster.in_sync, 30, "all nodes in the view")
        old = cluster.status()["view"]["primary"]
        done: list[tuple[float, int]] = []
        stop = threading.Event()

        def client_loop() -> None:
            with Client(cluster.config, attempt_timeout=attempt_timeout, deadline=30.0) as c:
                k = 0
                while not stop.is_set():
                    r = c.order(10_000 + trial, k)
                    if r.ok:
                        done.append((time.monotonic(), r.reply.admin_id))
                    k += 1

        t = threading.Thread(target=client_loop, daemon=True)
        t.start()
        poll(lambda: len(done) >= 20, 10, "the client to get going")
        killed_at = time.monotonic()
        cluster.ctl(cmd="kill", node=old, signal="KILL")
        first = poll(lambda: next((d for d in list(done) if d[0] > killed_at and d[1] != old), None), 30, "an order on the new primary")
        stop.set()
        t.join(10)
        times.append(first[0] - killed_at)
        cluster.ctl(cmd="restart", node=old, wipe=False)
    return times


def catch_up(cluster: Cluster, entries: int) -> dict:
    poll(cluster.in_sync, 30, "all nodes in the view")
    customers = 100
    started = time.monotonic()
    result = run_load(cluster.config, customers=customers, orders=entries // customers, req_type=1, max_duration=600)
    load_s = time.monotonic() - started
    status = cluster.status()
    backup = status["view"]["backups"][0]
    primary_last = next(n["last_index"] for n in status["nodes"] if n["id"] == status["view"]["primary"])
    cluster.ctl(cmd="kill", node=backup, signal="KILL")
    poll(lambda: backup not in cluster.status()["view"]["backups"], 10, "the backup to leave the view")
    restarted = time.monotonic()
    cluster.ctl(cmd="restart", node=backup, wipe=True)

    def caught_up():
        s = cluster.status()
        node = next(n for n in s["nodes"] if n["id"] == backup)
        return backup in s["view"]["backups"] and node["commit_index"] >= primary_last

    poll(caught_up, 120, "the wiped node to catch up")
    seconds = time.monotonic() - restarted
    return {
        "entries": primary_last,
        "load_ok": result.to_json()["ok"],
        "load_throughput_ops": result.to_json()["throughput_ops"],
        "load_seconds": round(load_s, 2),
        "catch_up_seconds": round(seconds, 3),
        "catch_up_entries_per_s": round(primary_last / seconds),
    }


def catch_up_under_load(cluster, entries: int, load_customers: int = 100, timeout: float = 120.0) -> dict:
    """A wiped backup catches up while the primary keeps serving a closed-loop load.

    Preload `entries` orders (one per new customer, fast), kill a backup, start `load_customers`
    customers ordering continuously, restart the backup wiped, and time until the view service
    has it back in the view (the primary asks for that only once it has caught up).  The rate
    is the primary's log length at that moment over the time taken (snapshot + log suffix +
    everything ordered meanwhile)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from driver import closed_loop

    poll(cluster.in_sync, 30, "all nodes in the view")
    status = cluster.status()
    primary = status["view"]["primary"]
    # the primary first, then the others: the driver follows NOT_PRIMARY hints
    endpoint = {primary: cluster.config.node(primary).client_endpoint}
    endpoint.update((n.id, n.client_endpoint) for n in cluster.config.nodes if n.id != primary)
    started = time.monotonic()
    pre = closed_loop(endpoint, 500, duration=300.0, warmup=0.0, customer_base=50_000_000, fill_total=entries)
    preload_s = time.monotonic() - started
    status = cluster.status()
    backup = status["view"]["backups"][0]
    cluster.ctl(cmd="kill", node=backup, signal="KILL")
    poll(lambda: backup not in cluster.status()["view"]["backups"], 10, "the backup to leave the view")

    progress: list[tuple[float, int]] = []
    stop = threading.Event()
    load: dict = {}

    def run_load_thread() -> None:
        load.update(closed_loop(endpoint, load_customers, duration=timeout + 60, warmup=0.0, customer_base=60_000_000,
                                progress=lambda done: progress.append((time.monotonic(), done)), progress_every=200,
                                stop_event=stop))

    def rate(t0: float, t1: float) -> float:
        pts = [p for p in list(progress) if t0 <= p[0] <= t1]
        if len(pts) < 2:
            return 0.0
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])

    t = threading.Thread(target=run_load_thread, daemon=True)
    t.start()
    try:
        time.sleep(1.5)
        restarted = time.monotonic()
        before = rate(restarted - 1.0, restarted)
        cluster.ctl(cmd="restart", node=backup, wipe=True)
        rejoined = {}

        def back_in_view():
            s = cluster.status()
            if backup in s["view"]["backups"]:
                rejoined["at"] = time.monotonic()
                rejoined["primary_commit"] = next(n["commit_index"] for n in s["nodes"] if n["id"] == s["view"]["primary"])
                rejoined["node_commit"] = next(n["commit_index"] for n in s["nodes"] if n["id"] == backup)
                return True
            return False

        poll(back_in_view, timeout, "the wiped node to catch up and rejoin")
        during = rate(restarted, rejoined["at"])
    finally:
        stop.set()
        t.join(30)
    seconds = rejoined["at"] - restarted
    return {
        "preloaded_entries": pre["completed_total"],
        "preload_seconds": round(preload_s, 2),
        "preload_throughput": round(pre["completed_total"] / preload_s, 1),
        "load_customers": load_customers,
        "entries_at_rejoin": rejoined["primary_commit"],
        "catch_up_seconds": round(seconds, 3),
        "catch_up_entries_per_s": round(rejoined["primary_commit"] / seconds),
        "load_throughput_before_restart": round(before, 1),
        "load_throughput_during_catch_up": round(during, 1),
        "load_errors": load.get("errors"),
    }


def summary(values: list[float]) -> dict:
    ms = sorted(v * 1000 for v in values)
    return {"trials": len(ms), "min_ms": round(ms[0], 1), "median_ms": round(statistics.median(ms), 1), "max_ms": round(ms[-1], 1), "all_ms": [round(v, 1) for v in ms]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "failover.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lfctl-bench-") as tmp:
        cluster = Cluster(Path(tmp) / "data")
        try:
            rc = cluster.config.replication
            results = {
                "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": __import__("os").cpu_count()},
                "settings": {"heartbeat_ms": rc.heartbeat_ms, "failure_timeout_ms": rc.failure_timeout_ms, "lease_ms": rc.lease_ms,
                             "retransmit_ms": rc.retransmit_ms, "client_attempt_timeout_ms": cluster.config.client.attempt_timeout_ms,
                             "durability": rc.durability, "snapshot_every": rc.snapshot_every},
                "kill_primary_to_next_commit_default_client": summary(failover_trials(cluster, args.trials, cluster.config.client.attempt_timeout_ms / 1000)),
                "kill_primary_to_next_commit_client_timeout_50ms": summary(failover_trials(cluster, args.trials, 0.05)),
                "wiped_node_catch_up": catch_up(cluster, args.entries),
                "wiped_node_catch_up_under_load": catch_up_under_load(cluster, args.entries),
            }
        finally:
            cluster.down()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
