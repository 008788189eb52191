"""Failover, catch-up and durability on real node processes.

Each test drives load while it breaks the cluster through `lfctl`, then checks what the issue asks:
the load reports 0 failed orders, every acknowledged order is in the final state, and every live
node ends with the same digest.  Everything polls with deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
import zmq

from loadgen.load import run_load
from orchestrator import procs
from protocol import codec
from protocol.messages import ClientRequest, ErrorReply, RequestType

from .conftest import ClusterHandle, wait_for

pytestmark = pytest.mark.integration

CUSTOMERS = 10
ORDERS = 300


class BackgroundLoad:
    """`run_load` of type-1 orders in a thread, so the test can break things meanwhile."""

    def __init__(self, cluster: ClusterHandle, customers: int = CUSTOMERS, orders: int = ORDERS) -> None:
        self.result = None
        self.error: BaseException | None = None
        config = cluster.config

        def run() -> None:
            try:
                self.result = run_load(config, customers=customers, orders=orders, req_type=RequestType.ORDER, max_duration=120)
            except BaseException as exc:  # reported by join()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 150.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "load did not finish"
        if self.error:
            raise self.error
        return self.result


def primary_commit(cluster: ClusterHandle) -> int:
    status = cluster.status()
    primary = status["view"]["primary"]
    return next((n["commit_index"] for n in status["nodes"] if n["id"] == primary), 0)


def wait_progress(cluster: ClusterHandle, entries: int) -> None:
    wait_for(lambda: primary_commit(cluster) >= entries, 30, f"{entries} committed entries")


def dumps(cluster: ClusterHandle, nodes) -> dict[int, dict]:
    out = {}
    for n in nodes:
        result = cluster.lfctl("dump", str(n), "--json")
        assert result.returncode == 0, result.stderr
        out[n] = json.loads(result.stdout)
    return out


def assert_converged(cluster: ClusterHandle, customers: int = CUSTOMERS, orders: int = ORDERS) -> None:
    """Every node in the view, same digest everywhere, and every customer's last order is its
    last acknowledged one (each customer orders 0..orders-1 in sequence)."""
    status = cluster.wait_in_sync(timeout=30)
    live = [n["id"] for n in status["nodes"] if n["state"] == "up"]

    def same_state():
        d = dumps(cluster, live)
        digests = {v["digest"] for v in d.values()}
        applied = {v["applied_index"] for v in d.values()}
        return d if len(digests) == 1 and len(applied) == 1 else None

    states = wait_for(same_state, 30, "every live node with the same digest")
    expected = {str(c): orders - 1 for c in range(customers)}
    for node, state in states.items():
        got = {c: o for c, o in state["records"].items() if int(c) < customers}
        assert got == expected, f"node {node} lost acknowledged orders"


def assert_load_clean(result) -> None:
    data = result.to_json()
    assert data["failed"] == 0, data
    assert data["ok"] == CUSTOMERS * ORDERS


def test_kill_backup_during_load(cluster: ClusterHandle):
    load = BackgroundLoad(cluster)
    wait_progress(cluster, 300)
    out = cluster.lfctl("kill", "backup")
    assert out.returncode == 0, out.stderr
    assert_load_clean(load.join())
    assert cluster.lfctl("restart", out.stdout.split()[2]).returncode == 0
    assert_converged(cluster)


def test_kill_primary_during_load_fails_over(cluster: ClusterHandle):
    before = cluster.status()["view"]
    load = BackgroundLoad(cluster)
    wait_progress(cluster, 300)
    out = cluster.lfctl("kill", "primary")
    assert out.returncode == 0, out.stderr
    assert_load_clean(load.join())
    after = cluster.status()["view"]
    assert after["number"] > before["number"] and after["primary"] != before["primary"]
    assert cluster.lfctl("restart", str(before["primary"])).returncode == 0
    assert_converged(cluster)


def _one_attempt(endpoint: str, req: ClientRequest, timeout: float = 2.0):
    """One request to one node, no retries: what that node itself answers (None: no answer)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart([b"", codec.encode(req)])
        if sock.poll(int(timeout * 1000)):
            return codec.decode(sock.recv_multipart()[-1])
        return None
    finally:
        sock.close()


def test_paused_primary_is_deposed_and_acknowledges_nothing_after_resume(cluster: ClusterHandle):
    view = cluster.status()["view"]
    old = view["primary"]
    endpoint = cluster.config.node(old).client_endpoint
    load = BackgroundLoad(cluster)
    wait_progress(cluster, 300)
    assert cluster.lfctl("pause", str(old)).returncode == 0
    wait_for(lambda: cluster.status()["view"]["primary"] not in (old, 0), 20, "a new primary")
    # Queue requests at the paused process: it handles them the moment it resumes.
    results: dict[str, object] = {}
    senders = [
        threading.Thread(target=lambda k=k, r=r: results.__setitem__(k, _one_attempt(endpoint, r, 5.0)))
        for k, r in (("read", ClientRequest(1, RequestType.READ, 0)), ("order", ClientRequest(2, RequestType.ORDER, 999, 1)))
    ]
    for t in senders:
        t.start()
    assert cluster.lfctl("resume", str(old)).returncode == 0
    for t in senders:
        t.join(10)
    assert_load_clean(load.join())
    for kind, reply in results.items():
        assert reply is None or isinstance(reply, ErrorReply), f"deposed primary answered a {kind}: {reply}"
    assert_converged(cluster)
    records = dumps(cluster, [cluster.status()["view"]["primary"]])
    assert all("999" not in d["records"] for d in records.values()), "an order sent to the deposed primary took effect"


def test_a_pause_of_the_whole_cluster_changes_no_view(cluster: ClusterHandle):
    """The supervisor and every node stopped at once for three failure timeouts (as the
    benchmark pauses the clusters it is not measuring): on resume the supervisor knows the
    silence was its own, so the view stays and the cluster takes orders again."""
    before = cluster.wait_in_sync()
    pids = [before["supervisor"]["pid"], *(n["pid"] for n in before["nodes"])]
    for pid in pids:
        procs.send_signal(pid, signal.SIGSTOP)
    try:
        time.sleep(3 * cluster.config.replication.failure_timeout_ms / 1000)  # the pause is the stimulus
    finally:
        for pid in pids:
            procs.send_signal(pid, signal.SIGCONT)
    primary = before["view"]["primary"]
    reply = _one_attempt(cluster.config.node(primary).client_endpoint, ClientRequest(7, RequestType.ORDER, 5, 1), 5.0)
    assert reply is not None and not isinstance(reply, ErrorReply), f"the order after the pause got {reply}"
    cluster.wait_in_sync(10)
    assert cluster.status()["view"]["number"] == before["view"]["number"], "the pause was taken for failures"
    assert "did not run for" in (cluster.data_dir / "supervisor.log").read_text()


@pytest.mark.parametrize("wipe", [False, True], ids=["keep-data", "wipe"])
def test_restart_backup_catches_up(cluster: ClusterHandle, wipe: bool):
    status = cluster.status()
    backup = status["view"]["backups"][0]
    load = BackgroundLoad(cluster)
    wait_progress(cluster, 200)
    assert cluster.lfctl("kill", str(backup)).returncode == 0
    wait_progress(cluster, 1500)
    args = ["restart", str(backup)] + (["--wipe"] if wipe else [])
    assert cluster.lfctl(*args).returncode == 0
    assert_load_clean(load.join())
    assert_converged(cluster)


def test_wiped_backup_catches_up_through_a_snapshot_on_disk(cluster_factory, tmp_path):
    """With snapshots every 300 entries the primary no longer holds the entries a wiped backup
    lacks, so it must take the snapshot in chunks and install it in its real storage (a path the
    core's step tests cover only up to the records it emits)."""
    config = tmp_path / "snap.toml"
    config.write_text("[replication]\nsnapshot_every = 300\n")
    cluster = cluster_factory(3)
    result = cluster.up("--config", str(config))
    assert result.returncode == 0, result.stderr
    backup = cluster.status()["view"]["backups"][0]
    load = BackgroundLoad(cluster)
    wait_progress(cluster, 200)
    assert cluster.lfctl("kill", str(backup)).returncode == 0
    wait_progress(cluster, 1500)
    assert cluster.lfctl("restart", str(backup), "--wipe").returncode == 0
    assert_load_clean(load.join())
    assert_converged(cluster)
    node_log = (cluster.data_dir / f"node-{backup}" / "node.log").read_text()
    assert "installed snapshot at index" in node_log
    restarted = cluster.lfctl("restart", str(backup))  # and it comes back from that snapshot
    assert restarted.returncode == 0, restarted.stderr
    assert_converged(cluster)


def test_down_and_up_keeps_every_record(cluster: ClusterHandle):
    """And keeps the primary: every node comes back as a new process, which must not be taken
    for one failure after another (the view service hears them all, then chooses once)."""
    assert_load_clean(BackgroundLoad(cluster).join())
    before = dumps(cluster, [1, 2, 3])
    primary = cluster.status()["view"]["primary"]
    assert cluster.lfctl("down").returncode == 0
    result = cluster.up()
    assert result.returncode == 0, result.stdout + result.stderr
    assert_converged(cluster)
    after = dumps(cluster, [1, 2, 3])
    assert {d["digest"] for d in after.values()} == {before[1]["digest"]}
    status = cluster.status()
    assert status["view"]["primary"] == primary
    assert status["stats"]["failovers"] == 0
    log = (cluster.data_dir / "supervisor.log").read_text()
    since_up = log[log.rindex("view service restarted"):]
    assert "failed" not in since_up, since_up
