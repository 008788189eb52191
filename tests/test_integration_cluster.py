"""Real processes: `lfctl up --detach` a 3-node cluster on free loopback ports in a tmp data dir,
drive it, break it, and check that `down` leaves nothing behind.

Every cluster comes from the `cluster` / `cluster_factory` fixtures (tests/conftest.py), whose
teardown runs `lfctl down` and then kills, by verified pid, whatever is still alive.
"""

from __future__ import annotations

import json
import signal
import subprocess

import psutil
import pytest
import zmq

from loadgen.client import Client
from loadgen.load import run_load
from orchestrator import procs
from orchestrator.control import request
from protocol.codec import decode, decode_json, encode, encode_json
from protocol.messages import ClientRequest, CustomerRecord, ErrorCode, ErrorReply, LaptopInfo
from tests.conftest import PYTHON, ClusterHandle, lfctl_env, processes_using, wait_for

pytestmark = pytest.mark.integration

CUSTOMERS = 20
ORDERS = 50
NODE_KEYS = {"id", "pid", "role", "state", "view", "last_index", "commit_index", "applied_index", "lag",
             "last_ping_ms_ago", "restarts", "uptime_s", "cpu_percent", "rss_bytes"}


def dumps(cluster: ClusterHandle) -> dict[int, dict]:
    cfg = cluster.config
    return {n.id: request(n.control_endpoint, {"cmd": "dump"}, 5.0, what=f"node {n.id}") for n in cfg.nodes}


def converged(cluster: ClusterHandle, expected: dict[str, int]) -> dict[int, dict] | None:
    """Every node's dump shows the same digest and exactly `expected`, fully applied."""
    d = dumps(cluster)
    digests = {x["digest"] for x in d.values()}
    if len(digests) != 1:
        return None
    if any(x["records"] != expected or x["applied_index"] != x["commit_index"] for x in d.values()):
        return None
    return d


def all_gone(pids: set[int]) -> bool:
    return not any(procs.pid_alive(p) for p in pids)


def test_load_then_every_node_agrees(cluster: ClusterHandle):
    cfg = cluster.config
    result = run_load(cfg, customers=CUSTOMERS, orders=ORDERS, req_type=1, max_duration=120)
    assert (result.ok, result.failed) == (CUSTOMERS * ORDERS, 0), result.format_text()

    with Client(cfg) as client:
        for customer in range(CUSTOMERS):
            r = client.read(customer)
            assert r.ok, r.error
            assert r.reply == CustomerRecord(r.reply.req_id, customer, ORDERS - 1)

    expected = {str(c): ORDERS - 1 for c in range(CUSTOMERS)}
    d = wait_for(lambda: converged(cluster, expected), 20, "every node to hold the same records")
    assert {x["record_count"] for x in d.values()} == {CUSTOMERS}
    assert sorted(x["role"] for x in d.values()) == ["backup", "backup", "primary"]

    # The same through the CLI: read, bulk read and dump.
    out = cluster.lfctl("read", "3", "--json")
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["schema_version"] == 1 and reply["ok"]
    assert reply["reply"]["kind"] == "CustomerRecord" and reply["reply"]["last_order"] == ORDERS - 1
    out = cluster.lfctl("read", "--range", "0", "5")
    assert out.returncode == 0 and "5 record(s)" in out.stdout
    out = cluster.lfctl("dump", "primary")
    assert out.returncode == 0, out.stderr
    assert f"records {CUSTOMERS}" in out.stdout and next(iter(d.values()))["digest"] in out.stdout
    out = cluster.lfctl("dump", "2", "--json")
    assert json.loads(out.stdout)["digest"] == d[2]["digest"]


def test_cli_order_read_and_load(cluster: ClusterHandle):
    out = cluster.lfctl("order", "7", "3")
    assert out.returncode == 0, out.stderr
    assert "order 3 of customer 7 committed" in out.stdout
    out = cluster.lfctl("read", "7")
    assert out.returncode == 0 and "customer 7: last order 3" in out.stdout
    out = cluster.lfctl("read", "8")
    assert out.returncode == 0 and "customer 8 has no record" in out.stdout
    out = cluster.lfctl("order", "7", "3")  # the same order again: a retry, answered again
    assert out.returncode == 0 and "order 3 of customer 7 committed" in out.stdout, out.stderr
    out = cluster.lfctl("order", "7", "2")  # older than the customer's last order: refused
    assert out.returncode == 1
    assert "STALE_ORDER: customer 7 already has order 3: order 2 is older and was not applied" in out.stderr
    assert "customer 7: last order 3" in cluster.lfctl("read", "7").stdout
    for extra in ((), ("--no-run-dir",)):  # a second run must not reuse the first one's customers
        out = cluster.lfctl("load", "--customers", "4", "--orders", "5", "--type", "1", "--json", *extra)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["schema_version"] == 1 and report["ok"] == 20 and report["failed"] == 0, report


def test_status_json_shape(cluster: ClusterHandle):
    status = cluster.status()
    assert status["schema_version"] == 1 and status["ok"] is True
    assert status["ready"] is True
    assert status["data_dir"] == str(cluster.data_dir)
    view = status["view"]
    assert view["number"] >= 1 and view["primary"] in (1, 2, 3)
    assert sorted([view["primary"], *view["backups"]]) == [1, 2, 3]
    assert [n["id"] for n in status["nodes"]] == [1, 2, 3]
    for node in status["nodes"]:
        assert NODE_KEYS <= set(node), NODE_KEYS - set(node)
        assert node["state"] == "up" and psutil.pid_exists(node["pid"])
        assert node["role"] == ("primary" if node["id"] == view["primary"] else "backup")
    cfg = cluster.config
    assert status["endpoints"]["control"] == cfg.supervisor.control_endpoint
    assert [n["client"] for n in status["endpoints"]["nodes"]] == [n.client_endpoint for n in cfg.nodes]

    table = cluster.lfctl("status")
    assert table.returncode == 0
    header = table.stdout.splitlines()[1].split()
    assert header[:9] == ["node", "pid", "role", "state", "view", "last", "commit", "applied", "lag"]


def test_second_up_is_refused_and_down_leaves_nothing(cluster: ClusterHandle):
    sup_pid = cluster.supervisor_pid()
    again = cluster.up()
    assert again.returncode == 1
    assert f"a cluster is already running in data (supervisor pid {sup_pid})" in again.stderr

    status = cluster.status()
    pids = {sup_pid, *(n["pid"] for n in status["nodes"])}
    assert len(pids) == 4 and all(procs.pid_alive(p) for p in pids)

    down = cluster.lfctl("down")
    assert down.returncode == 0, down.stderr
    assert all_gone(pids)  # `down` returns only once every process is gone
    assert not processes_using(cluster.data_dir)
    assert not (cluster.data_dir / "supervisor.pid").exists()
    assert not procs.node_pid_paths(cluster.data_dir)

    again = cluster.lfctl("status")
    assert again.returncode == 1 and "no cluster is running in" in again.stderr
    again = cluster.lfctl("down")
    assert again.returncode == 1 and "no cluster is running in" in again.stderr


def test_kill_restart_pause_resume(cluster: ClusterHandle):
    status = cluster.status()
    old_primary = status["view"]["primary"]
    old_pid = next(n["pid"] for n in status["nodes"] if n["id"] == old_primary)

    out = cluster.lfctl("kill", "primary")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"killed node {old_primary} (pid {old_pid}, SIGKILL)"
    assert not procs.pid_alive(old_pid)
    status = wait_for(lambda: (s := cluster.status())["view"]["primary"] not in (None, old_primary) and s,
                      10, "a new primary")
    node = status["nodes"][old_primary - 1]
    assert node["state"] == "down" and node["role"] == "none" and node["pid"] is None
    assert cluster.lfctl("status").returncode == 1  # a node is not up
    again = cluster.lfctl("kill", str(old_primary))
    assert again.returncode == 1 and again.stderr.strip() == f"node {old_primary} is already down"

    with Client(cluster.config) as client:
        assert client.order(1, 1).ok

    out = cluster.lfctl("restart", str(old_primary), "--wipe")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"restarted node {old_primary} (pid ")
    status = cluster.wait_in_sync()
    assert status["nodes"][old_primary - 1]["restarts"] == 1

    backup = status["view"]["backups"][0]
    out = cluster.lfctl("pause", str(backup))
    assert out.returncode == 0 and out.stdout.startswith(f"paused node {backup}")
    assert cluster.lfctl("pause", str(backup)).stderr.strip() == f"node {backup} is already paused"
    wait_for(lambda: backup not in cluster.status()["view"]["backups"], 10, "the paused backup to leave the view")
    other = next(i for i in (1, 2, 3) if cluster.status()["nodes"][i - 1]["state"] == "up"
                 and i != backup and i != cluster.status()["view"]["primary"])
    not_paused = cluster.lfctl("resume", str(other))
    assert not_paused.returncode == 1 and not_paused.stderr.strip() == f"node {other} is not paused"
    out = cluster.lfctl("resume", str(backup))
    assert out.returncode == 0 and out.stdout.startswith(f"resumed node {backup}")
    cluster.wait_in_sync()

    with Client(cluster.config) as client:
        assert client.order(2, 5).ok
    wait_for(lambda: converged(cluster, {"1": 1, "2": 5}), 20, "the restarted node to catch up")


def test_malformed_control_frames_get_an_error_reply(cluster: ClusterHandle):
    endpoint = cluster.config.supervisor.control_endpoint
    assert request(endpoint, {"cmd": "frobnicate"})["error"] == "unknown command 'frobnicate'"
    assert request(endpoint, {"nocmd": 1})["ok"] is False
    assert request(endpoint, {"cmd": "kill", "node": 9})["error"] == "node 9 does not exist (nodes: 1, 2, 3)"
    assert request(endpoint, {"cmd": "kill", "node": "x"})["ok"] is False
    assert request(endpoint, {"cmd": "kill", "node": 1, "signal": "HUP"})["ok"] is False
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(b"\xff not json")
        assert sock.poll(2000)
        reply = decode_json(sock.recv())
        assert reply["ok"] is False and "malformed" in reply["error"]
        sock.send(encode_json({"cmd": "status"}))
        assert sock.poll(2000)
        assert decode_json(sock.recv())["ok"] is True
    finally:
        sock.close()
    # Garbage on the view-service socket is dropped, and the supervisor keeps serving.
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(cluster.config.supervisor.view_endpoint)
    dealer.send_multipart([b"", b"\x01\x99garbage"])
    dealer.send_multipart([b"only-one-frame"])
    dealer.close()
    assert cluster.status()["ready"] is True


def test_malformed_client_messages_are_dropped_and_the_node_keeps_serving(cluster: ClusterHandle):
    """Every shape of client message that is not [b"", request] is consumed whole and counted;
    the requests after it on the same connection are still read frame by frame correctly."""
    status = cluster.wait_in_sync()
    primary = next(n for n in cluster.config.nodes if n.id == status["view"]["primary"])
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(primary.client_endpoint)
    try:
        dealer.send_multipart([b"only-one-frame"])  # no delimiter
        dealer.send_multipart([b"not-empty", encode(ClientRequest(1, 1, 7, 1))])  # bad delimiter
        dealer.send_multipart([b"", encode(ClientRequest(2, 1, 7, 2)), b"extra", b"frames"])  # too many
        dealer.send_multipart([b""])  # delimiter only
        dealer.send_multipart([b"", b"\x01\x99garbage"])  # undecodable: answered with an error
        dealer.send_multipart([b"", encode(ClientRequest(3, 1, 7, 3))])
        replies = []
        while len(replies) < 2:
            assert dealer.poll(5000), f"no reply after {replies}"
            frames = dealer.recv_multipart()
            assert frames[0] == b"" and len(frames) == 2
            replies.append(decode(frames[1]))
    finally:
        dealer.close()
    error, info = replies
    assert isinstance(error, ErrorReply) and error.code == ErrorCode.PROTOCOL
    assert isinstance(info, LaptopInfo) and (info.req_id, info.customer_id, info.order_number) == (3, 7, 3)
    node = request(primary.control_endpoint, {"cmd": "status"}, 5.0, what="primary")
    assert node["bad_frames"] == 5
    with Client(cluster.config) as client:
        result = client.read(7)
    assert result.ok and (result.reply.customer_id, result.reply.last_order) == (7, 3)


def test_sigterm_to_the_supervisor_is_down(cluster: ClusterHandle):
    status = cluster.status()
    sup_pid = status["supervisor"]["pid"]
    pids = {sup_pid, *(n["pid"] for n in status["nodes"])}
    assert procs.is_ours(sup_pid, "supervisor", cluster.data_dir)
    procs.send_signal(sup_pid, signal.SIGTERM)
    wait_for(lambda: all_gone(pids), 15, "the supervisor and its nodes to exit")
    assert not (cluster.data_dir / "supervisor.pid").exists()
    assert not procs.node_pid_paths(cluster.data_dir)


def test_down_cleans_up_after_a_dead_supervisor(cluster: ClusterHandle):
    status = cluster.status()
    sup_pid = status["supervisor"]["pid"]
    node_pids = {n["pid"] for n in status["nodes"]}
    procs.send_signal(sup_pid, signal.SIGKILL)
    wait_for(lambda: not procs.pid_alive(sup_pid), 5, "the supervisor to die")

    out = cluster.lfctl("status")
    assert out.returncode == 1
    assert f"removed stale pid file data/supervisor.pid (pid {sup_pid} is not running)" in out.stderr
    assert "`lfctl down` stops them" in out.stderr
    refused = cluster.up()
    assert refused.returncode == 1 and "still running" in refused.stderr

    out = cluster.lfctl("down")
    assert out.returncode == 0, out.stderr
    assert all_gone(node_pids)
    assert not procs.node_pid_paths(cluster.data_dir)


def test_up_again_after_down_keeps_the_data(cluster: ClusterHandle):
    with Client(cluster.config) as client:
        assert client.order(11, 4).ok
    assert cluster.lfctl("down").returncode == 0
    restarted = cluster.up()
    assert restarted.returncode == 0, restarted.stderr
    with Client(cluster.config) as client:
        r = client.read(11)
        assert r.ok and r.reply.last_order == 4
    out = cluster.lfctl("down", "--purge")
    assert out.returncode == 0 and not cluster.data_dir.exists()


def test_a_crash_is_reported_and_not_restarted_by_default(cluster: ClusterHandle):
    status = cluster.status()
    backup = status["view"]["backups"][0]
    pid = status["nodes"][backup - 1]["pid"]
    assert procs.is_ours(pid, "node", cluster.data_dir, backup)
    procs.send_signal(pid, signal.SIGKILL)  # behind the supervisor's back: a crash
    status = wait_for(lambda: s if (s := cluster.status())["nodes"][backup - 1]["state"] == "crashed" else None,
                      10, "the crash to be noticed")
    node = status["nodes"][backup - 1]
    assert node["exit_code"] == -signal.SIGKILL and node["pid"] is None
    assert status["ready"] is False  # a crashed node was not stopped by the user
    out = cluster.lfctl("status")
    assert out.returncode == 1 and "crashed" in out.stdout
    assert cluster.lfctl("restart", str(backup)).returncode == 0
    cluster.wait_in_sync()


def test_auto_restart_brings_a_crashed_node_back(cluster_factory, tmp_path):
    config = tmp_path / "auto.toml"
    config.write_text("[supervisor]\nauto_restart = true\n")
    handle = cluster_factory(3)
    result = handle.up("--config", str(config))
    assert result.returncode == 0, result.stderr
    status = handle.status()
    node_id = status["view"]["primary"]
    pid = status["nodes"][node_id - 1]["pid"]
    procs.send_signal(pid, signal.SIGKILL)
    status = wait_for(lambda: s if (n := (s := handle.status())["nodes"][node_id - 1])["restarts"] == 1
                      and n["state"] == "up" else None, 15, "the automatic restart")
    assert status["nodes"][node_id - 1]["pid"] != pid
    handle.wait_in_sync()
    # A node killed through lfctl stays down even with auto_restart.
    assert handle.lfctl("kill", str(node_id)).returncode == 0
    status = handle.status()
    assert status["nodes"][node_id - 1]["state"] == "down" and status["ready"] is True


def test_failed_up_shows_the_logs_and_cleans_up(cluster_factory):
    handle = cluster_factory(3)
    handle.data_dir.mkdir()
    (handle.data_dir / "node-2").write_text("in the way of the node's directory")
    result = handle.up()
    assert result.returncode == 1
    assert "node 2 failed during startup" in result.stderr
    assert "supervisor.log (last" in result.stderr
    assert not processes_using(handle.data_dir)
    assert not (handle.data_dir / "supervisor.pid").exists()
    assert not procs.node_pid_paths(handle.data_dir)


def test_foreground_up_stops_the_cluster_on_ctrl_c(cluster_factory):
    handle = cluster_factory(3)
    proc = subprocess.Popen([PYTHON, "-m", "orchestrator.cli", "up", "--nodes", "3", "--base-port", str(handle.base_port),
                             "--data-dir", str(handle.data_dir)], cwd=handle.cwd, env=lfctl_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops the cluster"):
                break
        assert any(line.startswith("cluster 'laptopfactory' is up") for line in lines), "".join(lines)
        handle.record_pids()
        pids = set(handle.pids)
        status_line = proc.stdout.readline()
        assert " view " in status_line and " primary " in status_line
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "is down" in rest
    assert all_gone(pids)
    assert not processes_using(handle.data_dir)


@pytest.mark.parametrize("sig", [signal.SIGHUP, None], ids=["terminal-closed", "reader-left"])
def test_foreground_up_stops_the_cluster_when_its_output_is_gone(cluster_factory, sig):
    """The terminal closed (SIGHUP; or `lfctl up | tee log` lost its reader to the same Ctrl-C),
    or the reader just left (`lfctl up | head -3`): writing fails, and the cluster must still
    come down."""
    handle = cluster_factory(3)
    proc = subprocess.Popen([PYTHON, "-m", "orchestrator.cli", "up", "--nodes", "3", "--base-port", str(handle.base_port),
                             "--data-dir", str(handle.data_dir)], cwd=handle.cwd, env=lfctl_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("Ctrl-C stops the cluster"):
                break
        handle.record_pids()
        pids = set(handle.pids)
        proc.stdout.close()  # nobody reads its output any more
        if sig is not None:
            proc.send_signal(sig)
        proc.wait(timeout=30)  # without a signal: the next status line (every 2 s) finds the pipe gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert all_gone(pids)
    assert not processes_using(handle.data_dir)
