"""End to end: `lfctl up` in a pseudo-terminal shows the live dashboard; a node killed from
outside (`lfctl kill 2`) turns its row to down; Ctrl-C stops the cluster and every process."""

from __future__ import annotations

import re
import signal

import pexpect
import pytest

from orchestrator import procs
from tests.conftest import PYTHON, lfctl_env, processes_using, wait_for

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>]|\r")


class Screen:
    """Reads what the pty shows; `frame()` is the last complete dashboard frame as plain text."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.raw = ""
        self.eof = False

    def pump(self) -> None:
        for _ in range(200):  # bounded: at most 200 reads per call
            try:
                self.raw += self.child.read_nonblocking(65536, timeout=0.05)
            except pexpect.TIMEOUT:
                break
            except pexpect.EOF:
                self.eof = True
                break
        self.raw = self.raw[-400_000:]

    def frame(self) -> str:
        self.pump()
        # Every refresh starts at the top-left corner (ESC [ H); the footer ends a complete frame.
        frames = [f for f in self.raw.split("\x1b[H") if "q quit view" in f]
        return ANSI.sub("", frames[-1]) if frames else ""

    def row(self, node_id: int) -> str | None:
        for line in self.frame().splitlines():
            cells = line.strip("│ ").replace("▶", " ").split()
            if len(cells) > 8 and cells[0] == str(node_id):
                return line
        return None


def test_up_in_a_terminal_shows_the_dashboard_and_ctrl_c_stops_everything(cluster_factory) -> None:
    handle = cluster_factory(3)
    env = dict(lfctl_env(), TERM="xterm-256color", COLUMNS="150", LINES="45")
    env.pop("LFCTL_PLAIN", None)
    child = pexpect.spawn(PYTHON, ["-m", "orchestrator.cli", "up", "--nodes", "3", "--base-port", str(handle.base_port),
                                   "--data-dir", str(handle.data_dir)],
                          cwd=str(handle.cwd), env=env, dimensions=(45, 150), encoding="utf-8",
                          codec_errors="replace", timeout=30)
    screen = Screen(child)
    try:
        # The three rows, with the primary and two backups, all up.
        wait_for(lambda: all(screen.row(n) and " up " in screen.row(n) for n in (1, 2, 3))
                 and "★ primary" in (screen.row(1) or ""), 30.0, "three node rows in the dashboard")
        assert "backup" in screen.row(2) and "backup" in screen.row(3)
        frame = screen.frame()
        assert "nodes" in frame and "clients" in frame and "events" in frame and "view 1" in frame
        handle.record_pids()
        sup_pid = handle.supervisor_pid()
        assert sup_pid is not None

        # Kill node 2 from outside: its row turns to down and the events panel says so.
        result = handle.lfctl("kill", "2")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: " down " in (screen.row(2) or ""), 10.0, "node 2's row to show down")
        wait_for(lambda: "node 2 killed" in screen.frame(), 10.0, "the kill in the events panel")
        assert "backups 3" in screen.frame()

        # Keys act through the supervisor too: select node 2 and restart it (r).
        child.send("2")
        child.send("r")
        wait_for(lambda: "restarted node 2" in screen.frame(), 15.0, "the restart confirmation")
        wait_for(lambda: "node 2 caught up" in screen.frame() and " up " in (screen.row(2) or ""), 30.0,
                 "node 2 caught up and back")

        # Ctrl-C: the cluster goes down with the foreground `up`.
        child.sendintr()
        wait_for(lambda: (screen.pump(), screen.eof)[1], 40.0, "lfctl up to exit")
        child.close()
        assert child.exitstatus == 0, screen.raw[-2000:]
        wait_for(lambda: not procs.pid_alive(sup_pid), 10.0, "the supervisor to exit")
        wait_for(lambda: not processes_using(handle.data_dir), 15.0, "every node process to exit")
        assert "is down" in ANSI.sub("", screen.raw)
    finally:
        if child.isalive():
            child.kill(signal.SIGKILL)
        child.close(force=True)


def spawn_lfctl(handle, *args: str) -> pexpect.spawn:
    env = dict(lfctl_env(), TERM="xterm-256color")
    env.pop("LFCTL_PLAIN", None)
    return pexpect.spawn(PYTHON, ["-m", "orchestrator.cli", *args, "--data-dir", str(handle.data_dir)],
                         cwd=str(handle.cwd), env=env, dimensions=(45, 150), encoding="utf-8",
                         codec_errors="replace", timeout=30)


def test_several_dashboards_attach_and_quitting_one_leaves_the_cluster_running(cluster) -> None:
    """...and a dashboard whose cluster goes down ends by itself."""
    children = [spawn_lfctl(cluster, "dashboard"), spawn_lfctl(cluster, "dashboard")]
    screens = [Screen(c) for c in children]
    try:
        for screen in screens:
            wait_for(lambda: all(screen.row(n) for n in (1, 2, 3)), 30.0, "rows in an attached dashboard")
        children[0].send("q")
        wait_for(lambda: (screens[0].pump(), screens[0].eof)[1], 15.0, "the first dashboard to quit")
        children[0].close()
        assert children[0].exitstatus == 0
        # The other one keeps drawing, and the cluster keeps running.
        assert cluster.lfctl("order", "7", "1").returncode == 0
        wait_for(lambda: "★ primary" in (screens[1].row(1) or ""), 10.0, "the second dashboard still drawing")
        assert cluster.status()["ready"]
        # The cluster goes down under it: the dashboard notices and ends (exit 1).
        assert cluster.lfctl("down").returncode == 0
        wait_for(lambda: (screens[1].pump(), screens[1].eof)[1], 20.0, "the second dashboard to end")
        children[1].close()
        assert children[1].exitstatus == 1 and "is gone" in ANSI.sub("", screens[1].raw)
    finally:
        for child in children:
            if child.isalive():
                child.kill(signal.SIGKILL)
            child.close(force=True)


def test_q_in_up_closes_the_view_but_not_the_cluster_until_ctrl_c(cluster_factory) -> None:
    handle = cluster_factory(3)
    child = spawn_lfctl(handle, "up", "--nodes", "3", "--base-port", str(handle.base_port))
    screen = Screen(child)
    try:
        wait_for(lambda: all(screen.row(n) for n in (1, 2, 3)), 30.0, "three node rows")
        handle.record_pids()
        child.send("q")
        wait_for(lambda: "dashboard closed; the cluster keeps running" in ANSI.sub("", (screen.pump(), screen.raw)[1]),
                 15.0, "the view to close")
        assert handle.status()["ready"]  # still up, and `up` still in the foreground
        assert child.isalive()
        child.sendintr()
        wait_for(lambda: (screen.pump(), screen.eof)[1], 40.0, "lfctl up to exit")
        child.close()
        assert child.exitstatus == 0
        wait_for(lambda: not processes_using(handle.data_dir), 15.0, "every process to exit")
    finally:
        if child.isalive():
            child.kill(signal.SIGKILL)
        child.close(force=True)
