"""`lfctl` without a running cluster: error messages and exit codes, plus the process plumbing
(`orchestrator.procs`, `orchestrator.control`) the CLI and the supervisor rely on.

These run `main([...])` in-process (fast, capsys) from an empty cwd, so neither ./cluster.toml
nor $LFCTL_DATA_DIR of the developer leaks in.  Nothing here starts a node.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator import procs
from orchestrator.cli import main
from orchestrator.control import ControlError, request
from tests.conftest import PYTHON, cluster_ports, find_free_base_port, lfctl_env, run_lfctl


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LFCTL_DATA_DIR", raising=False)
    return tmp_path


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([PYTHON, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- no cluster


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["down"], ["dump", "1"],
                                  ["kill", "2"], ["restart", "1"], ["pause", "primary"], ["order", "1", "2"],
                                  ["read", "1"], ["load", "--customers", "1", "--orders", "1"]])
def test_commands_without_a_cluster(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert err.strip() == "no cluster is running in .lfctl"
    assert "Traceback" not in out + err


def test_data_dir_from_env_and_flag(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LFCTL_DATA_DIR", str(tmp_path / "from-env"))
    assert run(capsys, "status")[2].strip() == "no cluster is running in from-env"
    assert run(capsys, "status", "--data-dir", "elsewhere")[2].strip() == "no cluster is running in elsewhere"


def test_down_purge_without_a_cluster_still_purges(capsys, tmp_path):
    data = tmp_path / ".lfctl"
    (data / "node-1").mkdir(parents=True)
    (data / "cluster.toml").write_text("")
    code, out, err = run(capsys, "down", "--purge")
    assert code == 1
    assert "no cluster is running in .lfctl" in err
    assert not data.exists()


def test_purge_refuses_a_foreign_directory(capsys, tmp_path):
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    code, _, err = run(capsys, "down", "--purge", "--data-dir", str(foreign))
    assert code == 1
    assert "refusing to purge" in err
    assert (foreign / "thesis.tex").exists()


# --------------------------------------------------------------------------- usage errors


def test_bad_config_names_the_key(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[replication]\nheartbeatms = 5\n")
    for argv in (["status"], ["up", "--detach"]):
        code, out, err = run(capsys, *argv, "--config", str(bad))
        assert code == 2, (argv, out, err)
        assert "replication.heartbeatms" in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / ".lfctl" / "supervisor.pid").exists()


def test_missing_config_file(capsys):
    code, _, err = run(capsys, "status", "--config", "nope.toml")
    assert code == 2
    assert "nope.toml" in err


def test_cwd_cluster_toml_is_the_default(capsys, tmp_path):
    (tmp_path / "cluster.toml").write_text('[cluster]\ndata_dir = "mydata"\nnodes = 2\n')
    assert run(capsys, "status")[2].strip() == "no cluster is running in mydata"
    code, _, err = run(capsys, "kill", "3")
    assert (code, err.strip()) == (2, "node 3 does not exist (nodes: 1, 2)")


@pytest.mark.parametrize("argv", [["kill", "7"], ["restart", "7"], ["pause", "7"], ["resume", "7"],
                                  ["dump", "7"], ["node", "--id", "7"]])
def test_unknown_node_id(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.strip() == "node 7 does not exist (nodes: 1, 2, 3)"


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["kill", "leader"], ["kill", "0"], ["kill", "1", "--signal", "HUP"],
                                  ["order", "1"], ["order", "x", "1"], ["read"], ["read", "1", "--range", "0", "5"],
                                  ["read", "--range", "5", "1"], ["load", "--customers", "0", "--orders", "1"],
                                  ["up", "--nodes", "0"], ["up", "--nodes", "64", "--detach"]])
def test_usage_errors_exit_2_with_one_line(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_help_exits_0(capsys):
    assert run(capsys, "--help")[0] == 0
    assert run(capsys, "up", "--help")[0] == 0


# --------------------------------------------------------------------------- up refuses


def test_up_refuses_a_port_in_use_and_clears_a_stale_pid_file(capsys, tmp_path):
    base = find_free_base_port(3)
    busy_port = base + 20  # node 2's client port
    data = tmp_path / ".lfctl"
    data.mkdir()
    stale = dead_pid()
    (data / "supervisor.pid").write_text(f"{stale}\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", busy_port))
        sock.listen()
        code, out, err = run(capsys, "up", "--detach", "--base-port", str(base))
    assert code == 1
    assert f"removed stale pid file .lfctl/supervisor.pid (pid {stale} is not running)" in err
    assert f"port {busy_port} is in use" in err
    assert not (data / "supervisor.pid").exists()
    assert not (data / "cluster.toml").exists()  # nothing was started or written


def test_pid_file_naming_someone_else_is_stale(capsys, tmp_path):
    data = tmp_path / ".lfctl"
    data.mkdir()
    (data / "supervisor.pid").write_text(f"{os.getpid()}\n")  # pytest is not a supervisor
    code, _, err = run(capsys, "status")
    assert code == 1
    assert f"removed stale pid file .lfctl/supervisor.pid (pid {os.getpid()} is not an lfctl supervisor)" in err
    assert "no cluster is running in .lfctl" in err
    assert not (data / "supervisor.pid").exists()


def test_subprocess_cli_reports_errors_without_traceback(tmp_path):
    result = run_lfctl(["status"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "no cluster is running in .lfctl"


# --------------------------------------------------------------------------- procs


def test_pid_file_round_trip(tmp_path):
    path = tmp_path / "x" / "a.pid"
    procs.write_pid_file(path, 1234)
    assert procs.read_pid_file(path) == 1234
    assert not procs.remove_pid_file(path, expected_pid=99)  # names someone else: kept
    assert procs.remove_pid_file(path, expected_pid=1234)
    assert procs.read_pid_file(path) is None
    path.write_text("garbage")
    assert procs.read_pid_file(path) is None
    check = procs.check_pid_file(path, "supervisor")
    assert check.pid is None and "does not hold a pid" in (check.removed or "")


def test_check_pid_file_recognises_our_process(tmp_path):
    data = tmp_path / "d"
    # A stand-in whose command line looks like a supervisor for `data` (the module does not exist,
    # so run it through -c and give it the argv shape instead).
    proc = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(30)", "-m", "orchestrator.supervisor",
                             "--data-dir", str(data)])
    try:
        path = data / "supervisor.pid"
        procs.write_pid_file(path, proc.pid)
        assert procs.is_ours(proc.pid, "supervisor", data)
        assert not procs.is_ours(proc.pid, "supervisor", tmp_path / "other")
        assert not procs.is_ours(proc.pid, "node", data)
        assert procs.check_pid_file(path, "supervisor", data).pid == proc.pid
        assert path.exists()
    finally:
        proc.kill()
        proc.wait()
    check = procs.check_pid_file(path, "supervisor", data)
    assert check.pid is None
    assert check.removed == f"removed stale pid file {procs.display_path(path)} (pid {proc.pid} is not running)"


def test_port_in_use(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert procs.port_in_use("127.0.0.1", port)
        assert procs.first_port_in_use("127.0.0.1", [port]) == port
    assert not procs.port_in_use("127.0.0.1", port)


def test_free_base_port_checks_every_port():
    base = find_free_base_port(3)
    ports = cluster_ports(base, 3)
    assert len(ports) == 12 and ports[0] == base and base + 32 in ports
    assert procs.first_port_in_use("127.0.0.1", ports) is None


def test_terminate_escalates_to_sigkill():
    stubborn = subprocess.Popen([PYTHON, "-c", "import signal, sys, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
                                 "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    polite = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"])
    try:
        assert stubborn.stdout.readline().strip() == "ready"
        os.kill(polite.pid, signal.SIGSTOP)  # a paused process still gets to act on SIGTERM
        how = procs.terminate_pids({stubborn.pid, polite.pid}, grace=0.5)
        assert how == {stubborn.pid: "KILL", polite.pid: "TERM"}
        assert stubborn.wait(5) == -signal.SIGKILL
        assert polite.wait(5) == -signal.SIGTERM
    finally:
        for p in (stubborn, polite):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_describe_exit():
    assert procs.describe_exit(3) == "exit code 3"
    assert procs.describe_exit(-9) == "SIGKILL"
    assert procs.describe_exit(None) == "still running"


def test_spawned_child_is_detached_and_logs(tmp_path):
    log = tmp_path / "child.log"
    proc = procs.spawn_module("json.tool", ["--help"], log, new_session=True)
    assert proc.wait(10) == 0
    assert "json.tool" in log.read_text() or "usage" in log.read_text()


# --------------------------------------------------------------------------- control


def test_control_request_times_out_with_a_clear_error():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(ControlError) as info:
        request(endpoint, {"cmd": "status"}, 0.2)
    assert str(info.value) == f"supervisor is not answering on {endpoint}"
    assert time.monotonic() - start < 2.0


def test_supervisor_refuses_a_taken_port(tmp_path):
    """The supervisor itself (started by hand) exits 3 naming the port, leaving no pid file."""
    base = find_free_base_port(3)
    data = tmp_path / "d"
    data.mkdir()
    cfg_path = data / "cluster.toml"
    from protocol.config import dump_config, load_config, with_overrides

    cfg_path.write_text(dump_config(with_overrides(load_config(None), base_port=base, data_dir=data)))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", base + 1))
        sock.listen()
        result = subprocess.run([PYTHON, "-m", "orchestrator.supervisor", "--config", str(cfg_path),
                                 "--data-dir", str(data)], env=lfctl_env(), cwd=procs.PROJECT_ROOT,
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert f"port {base + 1} is in use" in result.stderr
    assert not (data / "supervisor.pid").exists()
    assert not list(data.glob("node-*"))  # no node was spawned
