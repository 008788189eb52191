"""The dashboard: rendering fixed snapshots to a recording console, the app's state and keys
with a fake supervisor, and `lfctl dashboard --once` against a real cluster."""

from __future__ import annotations

import copy
import time

import pytest
from rich.console import Console

from orchestrator.dashboard import (
    fmt_bytes, fmt_duration, fmt_us, node_in_trouble, node_state_text, render, sparkline,
)
from orchestrator.dashboard_app import DOWN, UP, DashboardApp, parse_keys

T0 = 1_795_000_000.0  # a fixed wall clock for the events


def node(id_: int, role: str, state: str = "up", **kw) -> dict:
    base = {
        "id": id_, "pid": 1000 + id_, "role": role, "state": state, "catch_up_percent": None, "exit_code": None,
        "error": None, "view": 4, "last_index": 29648, "commit_index": 29635, "applied_index": 29635, "lag": 0,
        "ops": 4928, "ops_per_s": 0.0, "durable": True, "last_ping_ms_ago": 15, "restarts": 0, "uptime_s": 75.0,
        "cpu_percent": 12.0, "rss_bytes": 35 << 20,
    }
    base.update(kw)
    return base


STATUS = {
    "ok": True, "schema_version": 1, "cluster": "laptopfactory", "ready": True, "in_sync": False, "stopping": False,
    "view": {"number": 4, "primary": 2, "backups": [3]},
    "nodes": [
        node(1, "none", "down", pid=None, exit_code=-9, view=3, last_index=24627, commit_index=24627,
             applied_index=24627, lag=5021, ops_per_s=None, last_ping_ms_ago=3045, uptime_s=None, cpu_percent=None,
             rss_bytes=None),
        node(2, "primary", ops_per_s=1753.3, restarts=1, cpu_percent=33.4, uptime_s=6.0),
        node(3, "backup", lag=13, last_index=29635, commit_index=29615, applied_index=29615, last_ping_ms_ago=27),
    ],
    "clients": {
        "loads": 2, "window_s": 5, "throughput": 2212.2,
        "latency_us": {"p50": 4639, "p99": 22271, "p999": 56831, "max": 507903},
        "window": {"ok": 11061, "errors": 3, "retries": 116, "redirects": 48},
        "totals": {"ok": 28823, "errors": 3, "retries": 116, "redirects": 48},
        "errors_by_reason": {"timeout": 3}, "last_error": "timeout: no reply within 30 s",
        "history_ops": [0] * 48 + [2782, 3204, 2096, 1756, 2769, 2606, 2548, 2571, 2999, 2105, 1722, 1664],
        "history_p99_us": [0] * 48 + [16767, 20351, 23551, 20863, 20863, 38911, 59391, 39935, 18943, 24063, 19455,
                                      20863],
        "senders": [],
    },
    "stats": {"failovers": 1, "last_failover_s": 0.021, "longest_failover_s": 0.021, "events_seq": 4},
}

EVENTS = [
    {"seq": 1, "t": T0 + 0.5, "kind": "killed", "level": "warn", "node": 1, "msg": "node 1 killed (pid 1001, SIGKILL)"},
    {"seq": 2, "t": T0 + 0.51, "kind": "view", "level": "warn", "node": None,
     "msg": "view 4: primary 2 (was 1), backups 3 - primary 1 failed, promoted 2"},
    {"seq": 3, "t": T0 + 0.51, "kind": "failover", "level": "good", "node": 2,
     "msg": "failover: node 1 -> node 2 in 21 ms"},
    {"seq": 4, "t": T0 + 2.0, "kind": "client-errors", "level": "error", "node": None,
     "msg": "load-type-1: 3 operation(s) failed (timeout x3)"},
]


def snapshot(**kw) -> dict:
    snap = {"status": copy.deepcopy(STATUS), "events": list(EVENTS), "selected": 2, "title": "lfctl up",
            "now": T0 + 3, "message": "killed node 1 (pid 1001, SIGKILL)", "width": 140}
    snap.update(kw)
    return snap


def text_of(renderable, width: int = 140) -> str:
    console = Console(record=True, width=width, color_system=None, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def row(text: str, node_id: int) -> str:
    """The nodes-panel line of `node_id` (its second cell is the id)."""
    for line in text.splitlines():
        cells = line.strip("│ ").replace("▶", " ").split()
        if cells and cells[0] == str(node_id) and len(cells) > 8:
            return line
    raise AssertionError(f"no row for node {node_id} in:\n{text}")


# --------------------------------------------------------------------------- rendering


def test_render_shows_every_node_row_with_roles_state_and_indices() -> None:
    text = text_of(render(snapshot()))
    assert "lfctl up" in text and "view 4" in text and "primary 2" in text and "backups 3" in text
    assert "laptopfactory" in text and "failovers 1, last 21 ms" in text
    assert "serving, 2 of 3 nodes in the view" in text
    for header in ("node", "pid", "role", "state", "view", "last", "commit", "applied", "lag", "ops/s",
                   "heartbeat", "cpu", "rss", "restarts", "uptime"):
        assert header in text
    r1, r2, r3 = row(text, 1), row(text, 2), row(text, 3)
    assert "down" in r1 and "24627" in r1 and "3.0 s" in r1 and "-" in r1
    assert "5021" not in r1  # a down node has no lag to show
    assert "★ primary" in r2 and "1002" in r2 and "29648" in r2 and "1,753" in r2 and "33%" in r2
    assert "35 MiB" in r2 and "6.0s" in r2 and "15 ms" in r2
    assert r2.lstrip("│ ").startswith("▶")  # the selected node
    assert "backup" in r3 and "29615" in r3 and "13" in r3 and "1m15s" in r3


def test_render_clients_panel_throughput_latency_sparklines_and_errors() -> None:
    text = text_of(render(snapshot()))
    assert "throughput 2,212 ops/s (last 5 s)" in text and "loads running 2" in text
    assert "p50 4.6 ms" in text and "p99 22.3 ms" in text and "p99.9 56.8 ms" in text and "max 508 ms" in text
    spark_line = next(line for line in text.splitlines() if "ops/s 60s" in line)
    assert "█" in spark_line and "peak 3,204" in spark_line
    assert any("p99   60s" in line and "peak 59.4 ms" in line for line in text.splitlines())
    assert "errors 3" in text and "retries 116" in text and "redirects 48" in text and "ok 28,823" in text
    assert "last error: timeout: no reply within 30 s" in text


def test_render_events_panel_in_order_with_time_stamps() -> None:
    text = text_of(render(snapshot()))
    stamp = time.strftime("%H:%M:%S", time.localtime(T0 + 0.5))
    lines = [line for line in text.splitlines() if "node 1 killed" in line or "failover: node 1" in line]
    assert len(lines) == 2 and f"{stamp}.500" in lines[0]
    assert text.index("node 1 killed") < text.index("failover: node 1 -> node 2 in 21 ms") < text.index("timeout x3")
    # Only the newest rows fit.
    short = text_of(render(snapshot(events_rows=2)))
    assert "node 1 killed" not in short and "timeout x3" in short


def test_render_states_catching_up_paused_crashed_and_no_primary() -> None:
    snap = snapshot()
    status = snap["status"]
    status["view"] = {"number": 9, "primary": None, "backups": []}
    status["ready"] = False
    status["nodes"][0].update(state="catching up", role="learner", catch_up_percent=42.4, pid=77, lag=900)
    status["nodes"][1].update(state="paused", role="none")
    status["nodes"][2].update(state="crashed", role="none", exit_code=3, pid=None)
    text = text_of(render(snap))
    assert "NO PRIMARY" in text and "not serving" in text
    assert "catching up 42%" in row(text, 1) and "learner" in row(text, 1)
    assert "paused" in row(text, 2)
    assert "crashed (exit 3)" in row(text, 3)


def test_render_without_status_shows_the_error_and_the_footer() -> None:
    text = text_of(render({"status": None, "error": "supervisor is not answering on tcp://127.0.0.1:7100",
                           "events": [], "title": "lfctl dashboard", "now": T0}))
    assert "supervisor is not answering" in text and "no events yet" in text
    assert "nodes" not in text and "k kill" in text and "q quit view" in text


def test_render_no_load_hint_help_panel_and_banner() -> None:
    snap = snapshot(show_help=True, banner="demo: next, kill the primary in 3 s", quit_hint="q stop the demo")
    snap["status"]["clients"] = {"loads": 0, "totals": {"ok": 0, "errors": 0}}
    text = text_of(render(snap))
    assert "no client load yet" in text
    assert "kill the selected node (SIGKILL)" in text and "show or hide this help" in text
    assert "demo: next, kill the primary in 3 s" in text and "q stop the demo" in text


def test_render_narrow_terminal_keeps_the_essential_columns() -> None:
    text = text_of(render(snapshot(width=80)), width=80)
    header = next(line for line in text.splitlines() if "heartbeat" in line)
    assert "uptime" not in header and "restarts" not in header and "pid" not in header
    for n in (1, 2, 3):
        assert row(text, n)
    assert "★ primary" in row(text, 2) and "29648" in row(text, 2)
    assert all(len(line) <= 80 for line in text.splitlines())


def test_render_is_pure() -> None:
    snap = snapshot()
    before = copy.deepcopy(snap)
    assert text_of(render(snap)) == text_of(render(snap))
    assert snap == before


def test_trouble_and_formatting_helpers() -> None:
    assert node_in_trouble(node(1, "backup"), STATUS) is None
    assert node_in_trouble(node(1, "backup", "down"), STATUS) == "error"
    assert node_in_trouble(node(1, "backup", "paused"), STATUS) == "error"
    assert node_in_trouble(node(1, "learner", "catching up"), STATUS) == "warn"
    assert node_in_trouble(node(1, "backup", last_ping_ms_ago=400), STATUS) == "warn"
    assert node_in_trouble(node(1, "backup", lag=5000), STATUS) == "warn"
    assert node_state_text(node(1, "learner", "catching up", catch_up_percent=99.6)) == "catching up 100%"
    assert node_state_text(node(1, "none", "crashed", exit_code=-9)) == "crashed (signal 9)"
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([0, 0, 0]) == "▁▁▁" and sparkline([]) == ""
    assert sparkline([9, 9, 5, 0, 10], width=3) == "▅▁█"
    assert fmt_us(850) == "850 µs" and fmt_us(4639) == "4.6 ms" and fmt_us(507903) == "508 ms"
    assert fmt_us(1_500_000) == "1.50 s"
    assert fmt_bytes(35 << 20) == "35 MiB" and fmt_bytes(None) == "-"
    assert fmt_duration(6.04) == "6.0s" and fmt_duration(75) == "1m15s" and fmt_duration(7200) == "2h00m"


# --------------------------------------------------------------------------- the app, with a fake supervisor


class FakeSupervisor:
    def __init__(self) -> None:
        self.status = copy.deepcopy(STATUS)
        self.events = list(EVENTS)
        self.requests: list[dict] = []
        self.fail = False

    def __call__(self, endpoint: str, obj: dict, timeout: float = 2.0) -> dict:
        from orchestrator.control import ControlError

        self.requests.append(obj)
        if self.fail:
            raise ControlError(f"supervisor is not answering on {endpoint}")
        if obj["cmd"] == "status":
            since = obj.get("events_since", 0)
            return {**self.status, "events": [e for e in self.events if e["seq"] > since],
                    "events_seq": self.events[-1]["seq"] if self.events else 0}
        return {"ok": True, "message": f"{obj['cmd']} node {obj['node']} done"}


def test_app_polls_status_and_events_incrementally() -> None:
    sup = FakeSupervisor()
    app = DashboardApp("tcp://x", requester=sup, clock=lambda: T0)
    assert app.poll()
    assert [e["seq"] for e in app.events] == [1, 2, 3, 4]
    assert app.selected == 2  # the primary by default
    sup.events.append({"seq": 5, "t": T0 + 5, "kind": "note", "level": "info", "node": None, "msg": "five"})
    assert app.poll()
    assert sup.requests[-1]["events_since"] == 4
    assert [e["seq"] for e in app.events] == [1, 2, 3, 4, 5]
    # A restarted supervisor numbers its events from 1 again: start over.
    sup.events = [{"seq": 1, "t": T0 + 9, "kind": "note", "level": "info", "node": None, "msg": "new"}]
    assert app.poll() and app.events_seq == 0  # noticed: numbering starts over
    assert app.poll() and [e["msg"] for e in app.events] == ["new"]
    sup.fail = True
    assert not app.poll()
    snap = app.snapshot(width=100)
    assert "not answering" in snap["error"] and snap["status"] is not None  # the last status stays
    assert "not answering" in text_of(render(snap), width=100)


def test_app_keys_select_act_help_and_quit() -> None:
    sup = FakeSupervisor()
    app = DashboardApp("tcp://x", requester=sup)
    app.poll()
    assert app.handle_key(UP) is None and app.selected == 1
    app.handle_key(UP)
    assert app.selected == 1  # stays at the top
    app.handle_key(DOWN)
    app.handle_key(DOWN)
    assert app.selected == 3
    app.handle_key("2")
    assert app.selected == 2
    app.handle_key("9")
    assert app.selected == 2 and "no node 9" in app.message
    app.handle_key("k")
    app.wait_action(5.0)
    assert sup.requests[-1] == {"cmd": "kill", "node": 2, "signal": "KILL"}
    assert app.message == "kill node 2 done"
    app.handle_key("r")
    app.wait_action(5.0)
    assert sup.requests[-1] == {"cmd": "restart", "node": 2, "wipe": False}
    app.handle_key("p")
    app.wait_action(5.0)
    assert sup.requests[-1] == {"cmd": "pause", "node": 2}
    sup.status["nodes"][1]["state"] = "paused"
    app.poll()
    app.handle_key("p")
    app.wait_action(5.0)
    assert sup.requests[-1] == {"cmd": "resume", "node": 2}
    app.handle_key("?")
    assert app.snapshot()["show_help"]
    app.handle_key("?")
    assert not app.snapshot()["show_help"]
    assert app.handle_key("q") == "quit"


def test_app_reports_a_refused_action() -> None:
    sup = FakeSupervisor()
    app = DashboardApp("tcp://x", requester=sup)
    app.poll()

    def refuse(endpoint: str, obj: dict, timeout: float = 2.0) -> dict:
        if obj["cmd"] == "status":
            return sup(endpoint, obj, timeout)
        return {"ok": False, "error": "node 2 is already down"}

    app.request = refuse
    app.handle_key("k")
    app.wait_action(5.0)
    assert app.message == "kill node 2 refused: node 2 is already down"


def test_parse_keys() -> None:
    assert parse_keys("q") == ["q"]
    assert parse_keys("\x1b[A\x1b[Bk") == [UP, DOWN, "k"]
    assert parse_keys("\x1bOA\x1bOB") == [UP, DOWN]
    assert parse_keys("\x1b[1;5C2") == ["2"]  # another sequence is skipped whole
    assert parse_keys("\x1b") == []


# --------------------------------------------------------------------------- a real cluster


@pytest.mark.integration
def test_dashboard_once_prints_a_frame_of_a_running_cluster(cluster) -> None:
    cluster.wait_in_sync()
    result = cluster.lfctl("dashboard", "--once")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "★ primary" in text and "backup" in text
    assert "view 1: primary 1, backups 2,3 - bootstrap" in text
    assert "no client load yet" in text


def test_control_client_reuses_its_socket_and_recovers_after_a_timeout() -> None:
    import json
    import threading

    import zmq

    from orchestrator.control import ControlError
    from orchestrator.dashboard_app import ControlClient

    ctx = zmq.Context()
    rep = ctx.socket(zmq.ROUTER)
    rep.setsockopt(zmq.LINGER, 0)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    peers: set[bytes] = set()
    stop = threading.Event()

    def serve() -> None:  # answers every request except {"cmd": "ignore"}
        while not stop.is_set():
            if not rep.poll(50):
                continue
            frames = rep.recv_multipart()
            peers.add(frames[0])
            req = json.loads(frames[-1])
            if req["cmd"] != "ignore":
                rep.send_multipart([*frames[:-1], json.dumps({"ok": True, "echo": req["cmd"]}).encode()])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ControlClient()
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        for _ in range(5):
            assert client(endpoint, {"cmd": "status"}) == {"ok": True, "echo": "status"}
        assert len(peers) == 1  # one connection for every poll
        with pytest.raises(ControlError):
            client(endpoint, {"cmd": "ignore"}, 0.2)
        assert client(endpoint, {"cmd": "status"}, 5.0)["echo"] == "status"  # a fresh socket
        assert len(peers) == 2
    finally:
        client.close()
        stop.set()
        thread.join(2)
        rep.close(0)
        ctx.term()
