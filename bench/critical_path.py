"""Where one replicated write waits: a timeline per write across the client, the primary and
every backup, for the bare relay and an lfctl cluster side by side.

The profile (suite `profile`) says where the primary's CPU goes under load; it cannot say why an
unloaded write takes 500 µs when the relay's takes 410.  This runs one customer's orders one
after another (nothing queues, so every microsecond is on the write's path), with every process
started under LFCTL_TRACE_DIR: the relay and the node mark the same steps
(protocol/tracepoints.py) on the one CLOCK_MONOTONIC of the host, and the client stamps each
send and reply.  Each write's window [sent, answered] then splits into segments that add up to
its latency exactly:

    to_primary      client send -> the primary's loop wakes for it ("clients")
    request_turn    that wake -> the appends are sent ("appends_sent")
    replication     appends sent -> the last backup's ack is sent ("acks_sent")
    ack_to_primary  last ack sent -> the primary's loop wakes for it (the last "peers" before
                    the reply; negative when a drain already under way read the ack, or when
                    the backup lost the CPU between its send and its mark)
    commit_turn     that wake -> the replies are sent ("replies_sent")
    to_client       replies sent -> the client has the reply

and, inside `replication`, each backup's wake (appends sent -> its "peers") and turn (-> its
"acks_sent"); for the node, the steps inside each turn ("flushed" after the core's flush,
"wal_written" after the WAL write).  Figures are medians over the writes of a round, then
min/median/max over rounds, the targets measured in rotation with the other one paused.

    python bench/critical_path.py [--writes 3000] [--rounds 2] [--nodes 3]

Writes bench/results/path.json (3 nodes; path_<n>.json for --nodes n); `python bench/plots.py
path` draws path.png.  The suite's `path` experiment runs 3 nodes, then 2 and 5 for the 5/2-node
target: which segment grows with the number of backups.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import zmq  # noqa: E402
from common import RESULTS, Cluster, log, others_paused, stats, write_result  # noqa: E402
from relay import Relay  # noqa: E402

from protocol import codec  # noqa: E402
from protocol.messages import ClientRequest, LaptopInfo  # noqa: E402
from protocol.tracepoints import ENV, load  # noqa: E402

SEGMENTS = ("to_primary", "request_turn", "replication", "ack_to_primary", "commit_turn", "to_client")
DETAIL = ("first_backup_wake", "last_backup_wake", "backup_turn", "ack_turns",
          "request_turn.core", "request_turn.send", "backup_turn.core", "backup_turn.wal", "backup_turn.send",
          "commit_turn.core", "commit_turn.send")
WARMUP_WRITES = 300
CUSTOMER = 7  # one customer: every order waits for the one before it


class Marks:
    """One process's trace: step -> sorted nanoseconds, with the two lookups a timeline needs."""

    def __init__(self, marks: Sequence[tuple[int, str]]) -> None:
        self.at: dict[str, list[int]] = {}
        for ns, step in marks:
            self.at.setdefault(step, []).append(ns)
        for times in self.at.values():
            times.sort()

    def first(self, step: str, lo: int, hi: int) -> int | None:
        """The first `step` at or after `lo`, if it is at or before `hi`."""
        times = self.at.get(step, [])
        i = bisect_left(times, lo)
        return times[i] if i < len(times) and times[i] <= hi else None

    def last(self, step: str, lo: int, hi: int) -> int | None:
        """The last `step` at or before `hi`, if it is at or after `lo`."""
        times = self.at.get(step, [])
        i = bisect_right(times, hi)
        return times[i - 1] if i and times[i - 1] >= lo else None

    def count(self, step: str, lo: int, hi: int) -> int:
        """How many `step` marks fall in (lo, hi]."""
        times = self.at.get(step, [])
        return bisect_right(times, hi) - bisect_right(times, lo)


def timeline(sent: int, answered: int, primary: Marks, backups: Sequence[Marks]) -> dict[str, float] | None:
    """One write's segments in microseconds, or None when a step of it is missing from a trace
    (a process that did not mark it, or a write answered by something else than a commit).
    `backups` is never empty: with one node there is no replication to follow."""
    wake = primary.first("clients", sent, answered)
    if wake is None:
        return None
    appends = primary.first("appends_sent", wake, answered)
    if appends is None:
        return None
    replied = primary.first("replies_sent", appends, answered)
    if replied is None:
        return None
    wakes: list[int] = []
    acks: list[int] = []
    for b in backups:
        # from the primary's wake, not from "appends_sent": that is marked once the appends are
        # sent to every backup, and the first backup may be awake before the last send
        w = b.first("peers", wake, replied)
        if w is None:
            return None
        # up to the answer, not the reply: on two cores a backup can lose the CPU between its
        # send and its mark, and the primary reply before the mark is taken
        a = b.first("acks_sent", w, answered)
        if a is None:
            return None
        wakes.append(w)
        acks.append(a)
    last_ack = max(acks)
    commit_wake = primary.last("peers", appends, replied)
    if commit_wake is None:
        return None
    us = 1e-3
    out = {
        "to_primary": (wake - sent) * us,
        "request_turn": (appends - wake) * us,
        "replication": (last_ack - appends) * us,
        "ack_to_primary": (commit_wake - last_ack) * us,
        "commit_turn": (replied - commit_wake) * us,
        "to_client": (answered - replied) * us,
        "total": (answered - sent) * us,
        "first_backup_wake": (min(wakes) - appends) * us,
        "last_backup_wake": (max(wakes) - appends) * us,
        "backup_turn": statistics.fmean(a - w for w, a in zip(wakes, acks)) * us,
        "ack_turns": float(primary.count("peers", appends, replied)),
    }
    _node_steps(out, primary, backups, wake, appends, commit_wake, replied, wakes, acks)
    return out


def _node_steps(out: dict[str, float], primary: Marks, backups: Sequence[Marks], wake: int, appends: int,
                commit_wake: int, replied: int, wakes: list[int], acks: list[int]) -> None:
    """The node's split of each turn at "flushed" (the core's work done, the sending begins) and
    "wal_written"; the relay marks neither and gets none."""
    us = 1e-3
    flushed = primary.first("flushed", wake, appends)
    if flushed is not None:
        out["request_turn.core"] = (flushed - wake) * us
        out["request_turn.send"] = (appends - flushed) * us
    flushed = primary.first("flushed", commit_wake, replied)
    if flushed is not None:
        out["commit_turn.core"] = (flushed - commit_wake) * us
        out["commit_turn.send"] = (replied - flushed) * us
    split = []
    for b, w, a in zip(backups, wakes, acks):
        f = b.first("flushed", w, a)
        wal = b.first("wal_written", f, a) if f is not None else None
        if f is not None and wal is not None:
            split.append(((f - w) * us, (wal - f) * us, (a - wal) * us))
    if split and len(split) == len(backups):
        for i, key in enumerate(("backup_turn.core", "backup_turn.wal", "backup_turn.send")):
            out[key] = statistics.fmean(s[i] for s in split)


def analyse(windows: Sequence[tuple[int, int]], primary: Marks, backups: Sequence[Marks]) -> dict[str, Any]:
    """Medians over the writes of one round, in microseconds; `matched` says how many writes had
    every step (the others, never more than a few, are left out and counted)."""
    rows = [t for t in (timeline(s, r, primary, backups) for s, r in windows) if t is not None]
    keys = [k for k in ("total", *SEGMENTS, *DETAIL) if any(k in r for r in rows)]
    medians = {k: statistics.median(r[k] for r in rows if k in r) for k in keys}
    return {"writes": len(windows), "matched": len(rows), "median_us": medians}


# --------------------------------------------------------------------------- running it


@contextmanager
def traced(directory: Path) -> Iterator[None]:
    """Processes started inside inherit LFCTL_TRACE_DIR=directory (and only those)."""
    old = os.environ.get(ENV)
    os.environ[ENV] = str(directory)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def sequential_writes(endpoint: str, writes: int, first_order: int, time_limit: float) -> list[tuple[int, int]]:
    """One customer's orders one at a time: [(sent ns, answered ns)] of each, after a warm-up.
    Bounded in count and in time; every reply must be the order's LaptopInfo."""
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    clock = time.monotonic_ns
    windows = []
    deadline = time.monotonic() + time_limit
    try:
        for i in range(WARMUP_WRITES + writes):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{endpoint}: {i} of {WARMUP_WRITES + writes} writes in {time_limit:.0f} s")
            req_id = first_order + i
            payload = codec.encode(ClientRequest(req_id, 1, CUSTOMER, req_id))
            sent = clock()
            sock.send(b"", zmq.SNDMORE)
            sock.send(payload)
            if not sock.poll(5000):
                raise TimeoutError(f"{endpoint}: no reply to order {req_id} in 5 s")
            frames = sock.recv_multipart()
            answered = clock()
            reply = codec.decode(frames[-1])
            if not isinstance(reply, LaptopInfo) or reply.req_id != req_id:
                raise RuntimeError(f"{endpoint}: order {req_id} answered with {reply!r}")
            if i >= WARMUP_WRITES:
                windows.append((sent, answered))
    finally:
        sock.close(linger=0)
    return windows


def traces_of(directory: Path, pids: dict[str, int]) -> dict[str, Marks]:
    """role -> that process's marks (the files are named by pid)."""
    out = {}
    for role, pid in pids.items():
        path = directory / f"{pid}.trace"
        if not path.exists():
            raise RuntimeError(f"{role} (pid {pid}) left no trace in {directory}: did it exit normally?")
        out[role] = Marks(load(path))
    return out


def result_name(nodes: int) -> str:
    """path.json for the 3-node headline, path_<n>.json for the other sizes."""
    return "path" if nodes == 3 else f"path_{nodes}"


def run(writes: int, rounds: int, nodes: int, out_dir: Path = RESULTS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lfctl-path-") as tmp:
        dirs = {"relay": Path(tmp) / "relay", "lfctl": Path(tmp) / "lfctl"}
        for d in dirs.values():
            d.mkdir()
        windows: dict[str, list[list[tuple[int, int]]]] = {"relay": [], "lfctl": []}
        with traced(dirs["relay"]):
            relay = Relay(nodes)
        try:
            with traced(dirs["lfctl"]):
                cluster = Cluster(nodes, label="traced")
            try:
                primary = cluster.primary()
                node_pids = cluster.node_pids()
                roles = {"relay": relay.pids,
                         "lfctl": {"primary": node_pids[primary],
                                   **{f"backup-{i}": node_pids[n] for i, n in enumerate(sorted(set(node_pids) - {primary}))}}}
                endpoints = {"relay": relay.endpoint, "lfctl": cluster.endpoint(primary)}
                targets = {"relay": relay, "lfctl": cluster}
                for r in range(rounds):
                    for name, target in targets.items():
                        with others_paused(target, targets.values()):
                            if name == "lfctl":
                                cluster.wait_in_sync()
                            windows[name].append(sequential_writes(endpoints[name], writes, 1 + r * 10 * writes, 120.0))
                        log(f"path: round {r + 1}, {name}: {writes} writes")
                if cluster.primary() != primary:
                    raise RuntimeError("the view changed during the run: the roles of the traces are unknown")
            finally:
                cluster.remove()  # the nodes write their traces (elsewhere) as they exit; its data dir goes
        finally:
            relay.close()
        result: dict[str, Any] = {"settings": {"writes": writes, "rounds": rounds, "nodes": nodes, "customers": 1,
                                               "warmup_writes": WARMUP_WRITES}}
        for name in ("relay", "lfctl"):
            marks = traces_of(dirs[name], roles[name])
            backups = [m for role, m in marks.items() if role != "primary"]
            per_round = [analyse(w, marks["primary"], backups) for w in windows[name]]
            keys = list(per_round[0]["median_us"])
            result[name] = {
                "matched": [p["matched"] for p in per_round],
                "writes": [p["writes"] for p in per_round],
                "us": {k: stats([p["median_us"][k] for p in per_round if k in p["median_us"]]) for k in keys},
            }
    write_result(result_name(nodes), result, out_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=3000, help="measured writes per round and target")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=3, help="2..5")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not 2 <= args.nodes <= 5:
        parser.error("--nodes must be 2..5 (with one node there is no replication to follow)")
    if args.writes < 1 or args.rounds < 1:
        parser.error("--writes and --rounds must be at least 1")
    result = run(args.writes, args.rounds, args.nodes, args.out_dir)
    for key in ("total", *SEGMENTS, *DETAIL):
        row = [result[n]["us"].get(key, {}).get("median") for n in ("relay", "lfctl")]
        unit = "" if key == "ack_turns" else " µs"
        log(f"path {key:<18} relay {'-' if row[0] is None else row[0]:>7}  lfctl {'-' if row[1] is None else row[1]:>7}{unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
