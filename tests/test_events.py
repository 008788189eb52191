"""The supervisor's narration: the events ring buffer and the ClusterMonitor bookkeeping, then the
same events from a real cluster through the `events` control command."""

from __future__ import annotations

import pytest

from loadgen.telemetry import TelemetryPusher
from orchestrator.control import request
from orchestrator.events import ClusterMonitor, EventLog, NodeFacts
from orchestrator.view_service import ViewChange
from protocol.messages import View
from tests.conftest import wait_for


def view(number: int, primary: int, *backups: int) -> View:
    return View(number, primary, frozenset(backups))


def facts(running: bool = True, state: str = "up", last_index: int | None = 0, ops: int | None = 0,
          last_seen: float | None = 0.0) -> NodeFacts:
    return NodeFacts(running, state, last_index, ops, last_seen)


class Harness:
    """A monitor with a fake wall clock and the view-change list the view service would keep."""

    def __init__(self) -> None:
        self.wall = 1_700_000_000.0
        self.mon = ClusterMonitor(wall=lambda: self.wall)
        self.changes: list[ViewChange] = []
        self.view = View(0, 0, frozenset())

    def change(self, new: View, reason: str, at: float) -> None:
        self.changes.append(ViewChange(self.view, new, reason, at))
        self.view = new

    def observe(self, nodes: dict[int, NodeFacts], now: float) -> list[dict]:
        seq = self.mon.events.seq
        self.mon.observe(self.changes, self.view, nodes, now)
        return self.mon.events.since(seq)

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.mon.events.since(0, 1000)]


def test_event_log_sequence_since_limit_and_capacity() -> None:
    log = EventLog(capacity=5, wall=lambda: 12.5)
    for i in range(8):
        log.add("note", f"e{i}", level="info", extra=i)
    assert log.seq == 8 and len(log) == 5
    assert [e["msg"] for e in log.since(0)] == ["e3", "e4", "e5", "e6", "e7"]
    assert [e["msg"] for e in log.since(6)] == ["e6", "e7"]
    assert [e["msg"] for e in log.since(0, limit=2)] == ["e6", "e7"]
    assert log.since(8) == []
    assert log.since(0)[0] == {"seq": 4, "t": 12.5, "kind": "note", "level": "info", "node": None, "msg": "e3",
                               "extra": 3}


def test_kill_of_the_primary_gives_a_failover_with_its_duration() -> None:
    h = Harness()
    h.change(view(1, 1, 2, 3), "bootstrap", at=1.0)
    nodes = {i: facts(last_seen=1.0) for i in (1, 2, 3)}
    events = h.observe(nodes, 1.0)
    assert [e["kind"] for e in events] == ["view"]
    assert "view 1: primary 1, backups 2,3 - bootstrap" in events[0]["msg"]
    h.mon.stop_requested(1, 111, "kill SIGKILL", now=10.0)
    h.mon.node_exited(1, 111, expected=True, how="SIGKILL", error=None, now=10.01)
    h.change(view(2, 2, 3), "primary 1 failed, promoted 2", at=10.25)
    nodes[1] = facts(running=False, state="down", last_seen=9.99)
    events = h.observe(nodes, 10.25)
    assert [e["kind"] for e in events] == ["view", "failover"]
    assert events[0]["old_primary"] == 1 and events[0]["new_primary"] == 2
    assert "primary 2 (was 1)" in events[0]["msg"]
    assert events[1]["duration_s"] == pytest.approx(0.25)
    assert events[1]["msg"] == "failover: node 1 -> node 2 in 250 ms"
    assert h.mon.failovers == 1
    assert h.kinds() == ["view", "killed", "view", "failover"]
    assert h.mon.events.since(0)[1]["msg"] == "node 1 killed (pid 111, SIGKILL)"


def test_backup_loss_is_not_a_failover_and_a_returning_learner_is_narrated() -> None:
    h = Harness()
    h.change(view(1, 1, 2, 3), "bootstrap", at=1.0)
    nodes = {i: facts(last_index=100, last_seen=1.0) for i in (1, 2, 3)}
    h.observe(nodes, 1.0)
    h.mon.node_exited(2, 222, expected=False, how="exit code 1", error="boom", now=5.0)
    nodes[2] = facts(running=False, state="crashed", last_index=100, last_seen=4.9)
    h.change(view(2, 1, 3), "node 2 left", at=5.0)
    events = h.observe(nodes, 5.0)
    assert [e["kind"] for e in events] == ["view"]
    assert h.kinds()[-2] == "crashed" and "node 2 crashed (pid 222, exit code 1): boom" in h.mon.events.since(0)[-2]["msg"]
    assert h.mon.failovers == 0
    # It restarts: started, then seen alive outside the view -> catching up.
    h.mon.node_started(2, 333, restart=True, wipe=True, now=6.0)
    assert h.mon.events.since(0)[-1]["msg"] == "node 2 restarted with its data wiped (pid 333)"
    nodes[2] = facts(state="starting", last_index=None, last_seen=None)
    assert h.observe(nodes, 6.0) == []  # not pinging yet
    nodes[2] = facts(last_index=0, last_seen=6.5)
    events = h.observe(nodes, 6.5)
    assert [e["kind"] for e in events] == ["catching-up"] and events[0]["from_index"] == 0
    assert h.observe(nodes, 6.6) == []  # said once
    # The primary asks for its admission once it holds everything: caught up.
    nodes[2] = facts(last_index=5000, last_seen=7.7)
    h.change(view(3, 1, 2, 3), "node 2 caught up", at=7.75)
    events = h.observe(nodes, 7.75)
    assert [e["kind"] for e in events] == ["view", "caught-up"]
    assert events[1]["entries"] == 5000 and events[1]["duration_s"] == pytest.approx(1.25)
    assert events[1]["msg"] == "node 2 caught up: 5000 entries in 1250 ms, back in the view"


def test_paused_primary_failover_is_measured_from_the_pause_and_no_primary_views() -> None:
    h = Harness()
    h.change(view(1, 1, 2), "bootstrap", at=1.0)
    nodes = {1: facts(last_seen=1.0), 2: facts(last_seen=1.0)}
    h.observe(nodes, 1.0)
    h.mon.node_paused(1, 11, now=20.0)
    nodes[1] = facts(state="paused", last_seen=20.0)
    h.change(view(2, 2), "primary 1 failed, promoted 2", at=20.55)
    events = h.observe(nodes, 20.55)
    assert [e["kind"] for e in events] == ["view", "failover"]
    assert events[-1]["duration_s"] == pytest.approx(0.55)
    h.mon.node_resumed(1, 11, now=21.0)
    assert h.mon.events.since(0)[-1]["kind"] == "resumed"
    nodes[1] = facts(running=False, state="down", last_seen=21.0)
    # Primary 2 fails with no in-sync backup: a view with no primary, then 2 comes back itself:
    # no failover (nobody took over); the failure moment comes from its last ping.
    nodes[2] = facts(running=False, state="down", last_seen=30.0)
    h.change(view(3, 0, 2), "primary 2 failed and no in-sync backup is left", at=30.5)
    events = h.observe(nodes, 30.5)
    assert events[-1]["level"] == "error" and "NO primary" in events[-1]["msg"]
    h.change(view(4, 2), "member 2 recovered its log from disk", at=35.0)
    events = h.observe(nodes, 35.0)
    assert [e["kind"] for e in events] == ["view"]
    assert h.mon.failovers == 1
    # Next time the service promotes someone else after a no-primary view: that is a failover.
    nodes[2] = facts(running=False, state="down", last_seen=40.0)
    h.change(view(5, 0, 2), "primary 2 failed and no in-sync backup is left", at=40.0)
    h.observe(nodes, 40.0)
    h.change(view(6, 1), "member 1 recovered its log from disk", at=41.0)
    events = h.observe(nodes, 41.0)
    assert events[-1]["kind"] == "failover" and events[-1]["old_primary"] == 2
    assert events[-1]["duration_s"] == pytest.approx(1.0)  # from the last ping (no kill/pause known)


def test_view_changes_are_recognised_by_number_even_when_the_list_is_trimmed() -> None:
    h = Harness()
    for n in range(1, 6):
        h.change(view(n, 1, 2), f"change {n}", at=float(n))
    assert len(h.observe({}, 5.0)) == 5
    del h.changes[:3]  # the view service keeps only the newest ones
    h.change(view(6, 1), "node 2 left", at=6.0)
    events = h.observe({}, 6.0)
    assert [e["view"] for e in events] == [6]


def test_ops_per_second_from_cumulative_counters() -> None:
    mon = ClusterMonitor()
    t = 100.0
    for step in range(20):  # 1000 ops/s for 2 s, sampled every 100 ms
        mon.observe([], view(1, 1), {1: facts(ops=step * 100)}, t + step * 0.1)
    assert mon.ops_per_s(1) == pytest.approx(1000, rel=0.15)
    for step in range(20, 40):  # then it stops answering: the rate decays to 0
        mon.observe([], view(1, 1), {1: facts(ops=1900)}, t + step * 0.1)
    assert mon.ops_per_s(1) == 0
    mon.observe([], view(1, 1), {1: facts(ops=5)}, t + 5)  # a restarted node counts from 0 again
    assert mon.ops_per_s(1) == 0
    assert mon.ops_per_s(2) is None


def test_client_errors_become_rate_limited_events() -> None:
    mon = ClusterMonitor(wall=lambda: 1000.0)
    clock = [1000.0]
    p = TelemetryPusher(None, clock=lambda: clock[0], sender="load-1-abc", label="load type 1")
    p.record(False, 1, error="timeout: no reply")
    mon.on_telemetry(p.message(clock[0]), now=1.0)
    events = mon.events.since(0)
    assert [e["kind"] for e in events] == ["client-errors"]
    assert events[0]["count"] == 1 and "timeout x1" in events[0]["msg"]
    p.record(False, 1, error="unavailable: x")
    mon.on_telemetry(p.message(clock[0]), now=1.5)  # within the period: held back
    assert len(mon.events.since(0)) == 1
    mon.observe([], view(1, 1), {}, now=4.0)  # released on a later turn
    assert mon.events.since(1)[0]["msg"].endswith("1 operation(s) failed (unavailable x1)")
    mon.on_telemetry({"kind": "something else"}, now=5.0)
    mon.on_telemetry({"kind": "client-telemetry", "sender": "x", "totals": "bad"}, now=5.0)
    assert mon.events.seq == 2


# --------------------------------------------------------------------------- a real cluster


@pytest.mark.integration
def test_supervisor_narrates_kill_restart_and_failover(cluster) -> None:
    endpoint = cluster.config.supervisor.control_endpoint

    def events_after(seq: int = 0) -> list[dict]:
        reply = request(endpoint, {"cmd": "events", "since": seq})
        assert reply["ok"]
        return reply["events"]

    first = events_after()
    assert any(e["kind"] == "view" and e["reason"] == "bootstrap" for e in first)
    seq = max(e["seq"] for e in first)
    assert cluster.lfctl("kill", "2").returncode == 0
    wait_for(lambda: {"killed", "view"} <= {e["kind"] for e in events_after(seq)}, 10.0, "kill events")
    assert cluster.lfctl("restart", "2").returncode == 0
    wait_for(lambda: any(e["kind"] == "caught-up" and e["node"] == 2 for e in events_after(seq)), 20.0,
             "node 2 caught up")
    assert cluster.lfctl("kill", "primary").returncode == 0
    failover = wait_for(lambda: [e for e in events_after(seq) if e["kind"] == "failover"], 10.0, "a failover event")
    assert failover[0]["old_primary"] == 1 and failover[0]["duration_s"] < 5.0
    # The same events come with status when asked for, plus the counters.
    status = request(endpoint, {"cmd": "status", "events_since": seq})
    assert status["stats"]["failovers"] == 1
    assert [e["seq"] for e in status["events"]] == [e["seq"] for e in events_after(seq)]
    assert request(endpoint, {"cmd": "note", "msg": "hello", "level": "good"})["ok"]
    assert events_after(seq)[-1]["msg"] == "hello"
    assert "clients" in status and status["nodes"][0].get("ops_per_s", "missing") != "missing"
