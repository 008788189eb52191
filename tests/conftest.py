"""Shared fixtures for tests that start real processes.

Rules these fixtures enforce, because a leaked node process poisons every later run:

* ports come from `free_base_port`, which bind-checks *every* port the cluster's config will use
  (supervisor and all node ports), at a random base so concurrent test runs rarely meet;
* each cluster lives in its own tmp data dir, and teardown always runs `lfctl down` and then kills,
  by pid, whatever is left -- but only processes whose command line names that data dir (a pid can
  be reused by an unrelated process);
* nothing sleeps for synchronisation: `wait_for` polls a condition until a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil
import pytest

from orchestrator import procs
from protocol.config import ClusterConfig, load_config, with_overrides

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
T = TypeVar("T")

def cluster_ports(base_port: int, nodes: int) -> tuple[int, ...]:
    """Every port a cluster of `nodes` nodes at `base_port` binds (as the config derives them)."""
    return with_overrides(load_config(None), nodes=nodes, base_port=base_port).all_ports()


find_free_base_port = procs.free_base_port


@pytest.fixture
def free_base_port() -> Callable[..., int]:
    """`free_base_port(nodes=3)` -> a base port with every cluster port free."""
    return procs.free_base_port


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` s."""
    try:
        return procs.poll_until(condition, timeout, what, interval)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def lfctl_env() -> dict[str, str]:
    env = procs.child_env()
    env.pop("LFCTL_DATA_DIR", None)
    return env


def run_lfctl(args: list[str], cwd: Path, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`lfctl ARGS` as a subprocess (python -m orchestrator.cli), output captured as text."""
    return subprocess.run([PYTHON, "-m", "orchestrator.cli", *args], cwd=cwd, env=lfctl_env(),
                          capture_output=True, text=True, timeout=timeout)


def processes_using(data_dir: Path) -> list[psutil.Process]:
    """Live processes whose command line names this data dir: ours and nobody else's, since
    every test data dir is a fresh tmp path."""
    needle = str(data_dir)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == os.getpid():
            continue
        cmdline = proc.info.get("cmdline") or []
        if any(arg == needle or arg.startswith(needle + os.sep) for arg in cmdline):
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                pass
    return found


@dataclass
class ClusterHandle:
    """A cluster started with `lfctl up --detach` in its own data dir."""

    data_dir: Path
    base_port: int
    nodes: int
    cwd: Path
    pids: set[int] = field(default_factory=set)  # every supervisor/node pid seen, for teardown

    @property
    def config(self) -> ClusterConfig:
        return load_config(self.data_dir / "cluster.toml")

    def lfctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return run_lfctl([*args, "--data-dir", str(self.data_dir)], self.cwd, timeout)

    def up(self, *extra: str) -> subprocess.CompletedProcess:
        result = self.lfctl("up", "--detach", "--nodes", str(self.nodes), "--base-port", str(self.base_port), *extra)
        self.record_pids()
        return result

    def status(self) -> dict:
        result = self.lfctl("status", "--json")
        data = json.loads(result.stdout)
        self.pids.update(n["pid"] for n in data["nodes"] if n["pid"])
        self.pids.add(data["supervisor"]["pid"])
        return data

    def supervisor_pid(self) -> int | None:
        return procs.read_pid_file(procs.supervisor_pid_path(self.data_dir))

    def record_pids(self) -> None:
        pid = self.supervisor_pid()
        if pid:
            self.pids.add(pid)
        for path in procs.node_pid_paths(self.data_dir).values():
            node_pid = procs.read_pid_file(path)
            if node_pid:
                self.pids.add(node_pid)
        self.pids.update(p.pid for p in processes_using(self.data_dir))

    def wait_in_sync(self, timeout: float = 20.0) -> dict:
        """Every node up and in the view."""
        return wait_for(lambda: s if (s := self.status()).get("in_sync") else None, timeout, "all nodes in the view")

    def cleanup(self) -> None:
        """`lfctl down`, then SIGKILL anything still alive that is verifiably ours."""
        self.record_pids()
        try:
            self.lfctl("down", timeout=30.0)
        except subprocess.TimeoutExpired:
            pass
        self.record_pids()
        for pid in sorted(self.pids):
            if procs.pid_alive(pid) and (procs.is_ours(pid, "supervisor", self.data_dir)
                                         or procs.is_ours(pid, "node", self.data_dir)):
                procs.send_signal(pid, signal.SIGCONT)
                procs.send_signal(pid, signal.SIGKILL)
        for proc in processes_using(self.data_dir):
            try:
                proc.kill()
            except psutil.Error:
                pass
        procs.wait_gone(self.pids | {p.pid for p in processes_using(self.data_dir)}, 5.0)


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., ClusterHandle]]:
    """Make clusters (not yet started: call `.up()`); all of them are torn down afterwards."""
    made: list[ClusterHandle] = []

    def make(nodes: int = 3, name: str = "data") -> ClusterHandle:
        handle = ClusterHandle(tmp_path / name, find_free_base_port(nodes), nodes, tmp_path)
        made.append(handle)
        return handle

    try:
        yield make
    finally:
        for handle in made:
            handle.cleanup()


@pytest.fixture
def cluster(cluster_factory: Callable[..., ClusterHandle]) -> ClusterHandle:
    """A running 3-node cluster (`lfctl up --detach`) on free ports in a tmp data dir."""
    handle = cluster_factory(3)
    for attempt in range(3):
        result = handle.up()
        if result.returncode == 0:
            return handle
        # Another process may have taken a port between the check and the bind: move on.
        if "in use" not in result.stderr or attempt == 2:
            pytest.fail(f"lfctl up failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
        handle.cleanup()
        handle.base_port = find_free_base_port(3)
    raise AssertionError("unreachable")
