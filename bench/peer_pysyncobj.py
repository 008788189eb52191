"""A peer: the same write workload on PySyncObj (a Python Raft library), 3 node processes here.

Each node process holds a `pysyncobj.batteries.ReplDict` (customer -> last order, the same state
as ours) and a small REQ/REP control socket.  The suite asks every node who leads, then tells the
leader to run a point: `customers` concurrent customers, each placing orders one after another
(`d.set(customer, order, callback=...)`; the next order of a customer goes out from the commit
callback of the previous one), for `warmup + duration` seconds.  That is the same closed loop as
ours, with the writer *inside the leader* (no client hop, as the issue specifies); latency runs
from `set()` to the commit callback.

PySyncObj's settings: its defaults (batched appends, in-memory journal: no disk at all, autoTick
thread), see `CONF` below; a Raft entry commits on a majority (2 of 3), ours on every backup.

Usage (what the suite does):  python bench/peer_pysyncobj.py node --port P --partners P2 P3 --control C
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

import zmq

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

CONF = {
    # defaults of pysyncobj 0.3.x, spelled out so the result file says what ran
    "appendEntriesUseBatch": True,
    "autoTick": True,
    "journalFile": None,
    "dynamicMembershipChange": False,
}

_stop = False


def _on_term(signum, frame) -> None:
    global _stop
    _stop = True


def run_node(port: int, partners: list[int], control_port: int, conf_over: dict | None = None) -> None:
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
    from pysyncobj.batteries import ReplDict

    from driver import latency_summary

    d = ReplDict()
    conf = SyncObjConf(**{**CONF, **(conf_over or {})})
    obj = SyncObj(f"127.0.0.1:{port}", [f"127.0.0.1:{p}" for p in partners], conf=conf, consumers=[d])
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    rep.bind(f"tcp://127.0.0.1:{control_port}")

    def run_point(customers: int, duration: float, warmup: float, base: int) -> dict:
        clock = time.perf_counter_ns
        start = clock()
        m_from = start + int(warmup * 1e9)
        end = m_from + int(duration * 1e9)
        lat: list[int] = []
        errors: dict[str, int] = {}
        state = {"outstanding": 0, "committed": 0}
        lock = threading.RLock()
        done = threading.Event()
        orders = [0] * customers

        def issue(c: int) -> None:
            t0 = clock()
            k = orders[c]
            orders[c] = k + 1
            d.set(base + c, k, callback=lambda res, err, c=c, t0=t0: on_commit(c, t0, err))

        def on_commit(c: int, t0: int, err) -> None:
            t = clock()
            with lock:
                if err == FAIL_REASON.SUCCESS:
                    state["committed"] += 1
                    if m_from <= t < end:
                        lat.append(t - t0)
                else:
                    errors[str(err)] = errors.get(str(err), 0) + 1
                if t < end:
                    issue(c)
                else:
                    state["outstanding"] -= 1
                    if state["outstanding"] == 0:
                        done.set()

        with lock:
            state["outstanding"] = customers
            for c in range(customers):
                issue(c)
        done.wait(warmup + duration + 10.0)
        return {
            "driver": "writer inside the PySyncObj leader",
            "customers": customers,
            "ops": len(lat),
            "seconds": duration,
            "throughput": round(len(lat) / duration, 1),
            "latency_us": latency_summary(lat),
            "errors": errors,
            "unanswered": state["outstanding"],
            "completed_total": state["committed"],
        }

    while not _stop:
        if not rep.poll(100):
            continue
        cmd = json.loads(rep.recv())
        try:
            if cmd["cmd"] == "status":
                leader = obj._getLeader()
                reply = {"ok": True, "leader": str(leader) if leader else None, "is_leader": obj._isLeader(),
                         "ready": obj.isReady()}
            elif cmd["cmd"] == "run":
                if not obj._isLeader():
                    reply = {"ok": False, "error": "not the leader"}
                else:
                    reply = {"ok": True, **run_point(cmd["customers"], cmd["duration"], cmd["warmup"], cmd["base"])}
            else:
                reply = {"ok": False, "error": f"unknown {cmd['cmd']}"}
        except Exception as exc:  # report, keep serving
            reply = {"ok": False, "error": repr(exc)}
        rep.send(json.dumps(reply).encode())
    rep.close(linger=0)
    ctx.term()
    obj.destroy()


class PySyncObjCluster:
    """3 (or N) PySyncObj node processes on free loopback ports; a context manager."""

    def __init__(self, nodes: int = 3, log_dir: Path | None = None, conf: dict | None = None) -> None:
        from common import Children, free_ports, wait_for

        self.conf = {**CONF, **(conf or {})}
        self.ports = free_ports(2 * nodes)
        self.raft = self.ports[:nodes]
        self.control = self.ports[nodes:]
        self.children = Children()
        self.ctx = zmq.Context()
        me = str(Path(__file__).resolve())
        try:
            for i in range(nodes):
                partners = [str(p) for j, p in enumerate(self.raft) if j != i]
                self.children.spawn([me, "node", "--port", str(self.raft[i]), "--partners", *partners,
                                     "--control", str(self.control[i]), "--conf", json.dumps(self.conf)],
                                    log_dir / f"pysyncobj-{i}.log" if log_dir else None)
            self.leader_port = wait_for(self._find_leader, 30.0, "a PySyncObj leader", interval=0.1)
        except BaseException:
            self.close()
            raise

    def request(self, port: int, cmd: dict, timeout: float) -> dict:
        sock = self.ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{port}")
        try:
            sock.send(json.dumps(cmd).encode())
            if not sock.poll(int(timeout * 1000)):
                raise TimeoutError(f"PySyncObj node on control port {port} did not answer")
            return json.loads(sock.recv())
        finally:
            sock.close(linger=0)

    def _find_leader(self) -> int | None:
        for port in self.control:
            try:
                s = self.request(port, {"cmd": "status"}, 1.0)
            except TimeoutError:
                continue
            if s.get("is_leader") and s.get("ready"):
                return port
        return None

    def run(self, customers: int, duration: float, warmup: float, base: int, attempts: int = 3) -> dict:
        """One point on the current leader; if leadership moved (an election under CPU
        starvation), find the new leader and run the point again, and say so in the result."""
        from common import wait_for

        moved = 0
        for attempt in range(attempts):
            reply = self.request(self.leader_port, {"cmd": "run", "customers": customers, "duration": duration,
                                                    "warmup": warmup, "base": base + attempt * 10_000_000},
                                 warmup + duration + 30.0)
            if reply.get("ok"):
                reply.pop("ok")
                if moved:
                    reply["leader_changes_before_run"] = moved
                return reply
            if reply.get("error") != "not the leader":
                break
            moved += 1
            self.leader_port = wait_for(self._find_leader, 30.0, "a PySyncObj leader", interval=0.1)
        raise RuntimeError(f"PySyncObj run failed: {reply.get('error')}")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.children.procs]

    def close(self) -> None:
        self.children.stop()
        self.ctx.term()

    def __enter__(self) -> PySyncObjCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a PySyncObj node for the peer benchmark")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("node")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--partners", type=int, nargs="+", required=True)
    p.add_argument("--control", type=int, required=True)
    p.add_argument("--conf", default="{}", help="SyncObjConf overrides as JSON")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    run_node(args.port, args.partners, args.control, json.loads(args.conf))
    return 0


if __name__ == "__main__":
    sys.exit(main())
