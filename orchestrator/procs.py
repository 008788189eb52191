"""Process plumbing shared by the CLI and the supervisor: pid files, port checks, spawning and
stopping processes.

Everything that kills a process goes through `is_ours` first: a pid file outlives its process and
the kernel reuses pids, so "the pid in the file" is only a hint until psutil confirms that the
process behind it really is our supervisor or node for *this* data dir.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, TypeVar

import psutil

Kind = Literal["supervisor", "node"]
T = TypeVar("T")

# The directory that holds the `protocol`, `node`, `orchestrator` and `loadgen` packages.  Child
# processes get it on PYTHONPATH so `python -m node` works without the project being installed.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

SUPERVISOR_MODULE = "orchestrator.supervisor"
NODE_MODULE = "node"


# --------------------------------------------------------------------------- paths


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the cwd when it is below it."""
    path = Path(path)
    try:
        rel = path.resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        return str(path)
    return str(rel) if str(rel) != "." else "."


def supervisor_pid_path(data_dir: Path) -> Path:
    return Path(data_dir) / "supervisor.pid"


def node_dir(data_dir: Path, node_id: int) -> Path:
    return Path(data_dir) / f"node-{node_id}"


def node_pid_path(data_dir: Path, node_id: int) -> Path:
    return node_dir(data_dir, node_id) / "node.pid"


def node_pid_paths(data_dir: Path) -> dict[int, Path]:
    """Every node pid file present in the data dir, by node id (also ids no longer configured)."""
    found: dict[int, Path] = {}
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return found
    for entry in data_dir.glob("node-*"):
        suffix = entry.name[len("node-"):]
        if suffix.isdigit() and (entry / "node.pid").exists():
            found[int(suffix)] = entry / "node.pid"
    return dict(sorted(found.items()))


# --------------------------------------------------------------------------- pid files


def write_pid_file(path: Path, pid: int | None = None) -> None:
    """Atomically write `pid` (default: ours), so a reader never sees a half-written number."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{pid if pid is not None else os.getpid()}\n")
    os.replace(tmp, path)


def read_pid_file(path: Path) -> int | None:
    """The pid in the file, or None when it is missing or does not hold a positive integer."""
    try:
        text = Path(path).read_text().strip()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    try:
        pid = int(text)
    except ValueError:
        return None
    return pid if pid > 0 else None


def remove_pid_file(path: Path, expected_pid: int | None = None) -> bool:
    """Remove the pid file; with `expected_pid`, only when it still names that pid (a newer
    incarnation may have rewritten it meanwhile)."""
    path = Path(path)
    if expected_pid is not None and read_pid_file(path) not in (expected_pid, None):
        return False
    try:
        path.unlink()
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False


def _cmdline(pid: int) -> list[str] | None:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _module_of(cmdline: list[str]) -> str | None:
    """The module a `python -m MODULE` command line runs, if any."""
    for i, arg in enumerate(cmdline[:-1]):
        if arg == "-m":
            return cmdline[i + 1]
    return None


def _option(cmdline: list[str], name: str) -> str | None:
    for i, arg in enumerate(cmdline):
        if arg == name and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _same_dir(a: str | None, b: Path | None) -> bool:
    if b is None:
        return True
    if a is None:
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def is_ours(pid: int, kind: Kind, data_dir: Path | None = None, node_id: int | None = None) -> bool:
    """True when `pid` is a live (not zombie) lfctl supervisor or node, for `data_dir` and
    `node_id` when given.  A node started by hand (`lfctl node --id N`) counts too."""
    cmd = _cmdline(pid)
    if not cmd:
        return False
    module = _module_of(cmd)
    if kind == "supervisor":
        if module != SUPERVISOR_MODULE:
            return False
    else:
        is_node = module in (NODE_MODULE, "node.server") or (
            "node" in cmd and any(Path(a).name == "lfctl" or a == "orchestrator.cli" for a in cmd)
        )
        if not is_node:
            return False
        if node_id is not None and _option(cmd, "--id") != str(node_id):
            return False
    data_opt = _option(cmd, "--data-dir")
    if data_dir is not None and data_opt is not None:
        return _same_dir(data_opt, data_dir)
    return True


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited: only its exit status is left)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


@dataclass(frozen=True, slots=True)
class PidCheck:
    """Outcome of checking one pid file: `pid` is set when a live process of ours holds it;
    `removed` is the message to show when the file was stale and has been deleted."""

    pid: int | None
    removed: str | None = None


def check_pid_file(
    path: Path, kind: Kind, data_dir: Path | None = None, node_id: int | None = None
) -> PidCheck:
    """Check a pid file and delete it when stale (its pid is dead or is not our process)."""
    path = Path(path)
    if not path.exists():
        return PidCheck(None)
    pid = read_pid_file(path)
    if pid is not None and is_ours(pid, kind, data_dir, node_id):
        return PidCheck(pid)
    if pid is None:
        why = "it does not hold a pid"
    elif pid_alive(pid):
        what = "an lfctl supervisor" if kind == "supervisor" else f"lfctl node {node_id or ''}".rstrip()
        why = f"pid {pid} is not {what}"
    else:
        why = f"pid {pid} is not running"
    remove_pid_file(path)
    return PidCheck(None, f"removed stale pid file {display_path(path)} ({why})")


# --------------------------------------------------------------------------- ports


def port_in_use(host: str, port: int) -> bool:
    """Try to bind the port the way ZeroMQ will (SO_REUSEADDR, so a TIME_WAIT leftover from the
    previous cluster does not count as "in use", but a listener does)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def first_port_in_use(host: str, ports: list[int] | tuple[int, ...]) -> int | None:
    for port in ports:
        if port_in_use(host, port):
            return port
    return None


# Where tests and benchmarks look for free ports: below the Linux ephemeral range (32768+), so
# outgoing connections do not take them.
FREE_PORT_RANGE = (20000, 32000)


def free_ports(count: int, host: str = "127.0.0.1", attempts: int = 500) -> list[int]:
    """`count` consecutive ports that are free right now, from a random place in FREE_PORT_RANGE
    (several test or benchmark processes may look at once; a race stays possible but unlikely)."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(attempts):
        base = rng.randrange(FREE_PORT_RANGE[0], FREE_PORT_RANGE[1] - count)
        ports = list(range(base, base + count))
        if first_port_in_use(host, ports) is None:
            return ports
    raise RuntimeError(f"no {count} free consecutive ports in {FREE_PORT_RANGE}")


def free_base_port(nodes: int = 3, host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A base port at which every port a `nodes`-node cluster derives from it is free right now."""
    from protocol.config import load_config, with_overrides

    config = load_config(None)
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    span = 10 * (nodes + 1)
    for _ in range(attempts):
        base = rng.randrange(FREE_PORT_RANGE[0], FREE_PORT_RANGE[1] - span, 10)
        if first_port_in_use(host, with_overrides(config, nodes=nodes, base_port=base).all_ports()) is None:
            return base
    raise RuntimeError(f"no free base port for {nodes} nodes in {FREE_PORT_RANGE}")


def poll_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call `condition` until it returns something truthy, and return that; TimeoutError naming
    `what` and the last value (or exception) after `timeout` seconds.  An exception counts as
    "not yet": a condition may race with a process that is coming up."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = condition()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# --------------------------------------------------------------------------- spawning


def child_env() -> dict[str, str]:
    """Our environment with the project root on PYTHONPATH and unbuffered output, so a child's
    last words reach its log even when it dies hard."""
    env = dict(os.environ)
    parts = [str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn_module(
    module: str, args: list[str], log_path: Path, *, new_session: bool = False
) -> subprocess.Popen:
    """Start `python -m module args...` with stdout+stderr appended to `log_path`.

    `new_session` detaches the child from our terminal's process group: Ctrl-C on the CLI then
    reaches only the CLI, which shuts the cluster down in order instead of everyone dying at once.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(PROJECT_ROOT),
            env=child_env(),
            start_new_session=new_session,
            close_fds=True,
        )


# --------------------------------------------------------------------------- stopping


SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "STOP": signal.SIGSTOP, "CONT": signal.SIGCONT,
           "INT": signal.SIGINT}


def send_signal(pid: int, sig: int) -> bool:
    """Signal a pid; False when it is already gone."""
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def wait_gone(pids: list[int] | set[int], timeout: float) -> set[int]:
    """Wait until every pid has exited (or is a zombie); return the ones still alive."""
    deadline = time.monotonic() + timeout
    alive = {p for p in pids if pid_alive(p)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = {p for p in alive if pid_alive(p)}
    return alive


def terminate_pids(pids: list[int] | set[int], grace: float = 5.0) -> dict[int, str]:
    """SIGTERM (plus SIGCONT, so a paused process can act on it), wait up to `grace`, then
    SIGKILL what is left.  The caller must have verified the pids with `is_ours`.
    Returns how each pid ended: "gone" (already), "TERM" or "KILL"."""
    how: dict[int, str] = {}
    for pid in pids:
        if send_signal(pid, signal.SIGTERM):
            send_signal(pid, signal.SIGCONT)
            how[pid] = "TERM"
        else:
            how[pid] = "gone"
    left = wait_gone([p for p, h in how.items() if h == "TERM"], grace)
    for pid in left:
        send_signal(pid, signal.SIGKILL)
        how[pid] = "KILL"
    wait_gone(left, 2.0)
    return how


def terminate_popen(proc: subprocess.Popen, grace: float = 5.0) -> int | None:
    """Same as `terminate_pids` for our own child, reaping it; returns its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            return proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return None


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def describe_exit(code: int | None) -> str:
    """'exit code 3' or 'SIGKILL' for a Popen returncode (negative = killed by a signal)."""
    if code is None:
        return "still running"
    if code < 0:
        return signal_name(-code)
    return f"exit code {code}"


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last `lines` lines of a log file ([] when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]
