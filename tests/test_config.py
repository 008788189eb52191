"""protocol.config: defaults, derived ports, overrides, round trip, and user-facing error messages.

The error tests check content (file, key, expectation), because those messages are the whole user
interface of a bad cluster.toml.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.config import (
    DEFAULT_SOURCE,
    ClusterConfig,
    ConfigError,
    NodeConfig,
    dump_config,
    load_config,
    parse_config,
    with_overrides,
)

REPO = Path(__file__).resolve().parent.parent
SRC = "cluster.toml"


def error_of(text: str, source: str = SRC) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    return str(info.value)


# --------------------------------------------------------------------------- defaults


def test_default_config_loads_with_derived_ports() -> None:
    cfg = load_config(None)
    assert cfg.source == DEFAULT_SOURCE
    assert cfg.name == "laptopfactory"
    assert cfg.host == "127.0.0.1"
    assert cfg.base_port == 7100
    assert cfg.data_dir == Path(".lfctl") and not cfg.data_dir.is_absolute()
    assert cfg.node_ids == (1, 2, 3)
    assert cfg.node(2) == NodeConfig(2, "127.0.0.1", 7120, 7121, 7122)
    assert cfg.node(3).client_endpoint == "tcp://127.0.0.1:7130"
    assert cfg.node(3).repl_endpoint == "tcp://127.0.0.1:7131"
    assert cfg.node(3).control_endpoint == "tcp://127.0.0.1:7132"
    sup = cfg.supervisor
    assert (sup.control_port, sup.view_port, sup.telemetry_port) == (7100, 7101, 7102)
    assert sup.control_endpoint == "tcp://127.0.0.1:7100"
    assert sup.view_endpoint == "tcp://127.0.0.1:7101"
    assert sup.telemetry_endpoint == "tcp://127.0.0.1:7102"
    assert sup.auto_restart is False and sup.startup_timeout_ms == 15000
    r = cfg.replication
    assert r.durability == "wal"
    assert (r.heartbeat_ms, r.failure_timeout_ms, r.lease_ms, r.retransmit_ms) == (
        50, 500, 400, 100)
    assert (r.batch_max_entries, r.snapshot_every, r.max_bulk_read, r.max_pending) == (
        1024, 100000, 100000, 100000)
    assert (cfg.client.attempt_timeout_ms, cfg.client.deadline_ms) == (500, 30000)
    assert cfg.all_ports() == (7100, 7101, 7102, 7110, 7111, 7112, 7120, 7121, 7122,
                               7130, 7131, 7132)


def test_repo_cluster_toml_is_the_embedded_default() -> None:
    repo_file = REPO / "cluster.toml"
    embedded = REPO / "protocol" / "default_cluster.toml"
    assert repo_file.read_bytes() == embedded.read_bytes()
    assert load_config(repo_file) == load_config(None)
    assert load_config(str(repo_file)).source == str(repo_file)


def test_empty_file_and_missing_sections_mean_the_default() -> None:
    assert parse_config("", SRC) == load_config(None)
    assert parse_config("[replication]\n", SRC) == load_config(None)


def test_node_lookup_error_names_file_and_existing_nodes() -> None:
    cfg = parse_config("", SRC)
    expected = r"node 4 does not exist in cluster\.toml \(nodes: 1, 2, 3\)"
    with pytest.raises(ConfigError, match=expected):
        cfg.node(4)


def test_explicit_node_tables_and_non_loopback_host() -> None:
    cfg = parse_config(
        """
        [cluster]
        host = "10.0.0.5"
        base_port = 9000
        [[node]]
        id = 5
        port = 9500
        [[node]]
        id = 2
        host = "box2.example"
        """,
        SRC,
    )
    assert cfg.node_ids == (2, 5)  # sorted by id
    assert cfg.node(5) == NodeConfig(5, "10.0.0.5", 9500, 9501, 9502)
    assert cfg.node(2) == NodeConfig(2, "box2.example", 9020, 9021, 9022)
    assert cfg.supervisor.view_endpoint == "tcp://10.0.0.5:9001"


def test_ipv6_host_is_bracketed_in_endpoints() -> None:
    cfg = parse_config('[cluster]\nhost = "::1"\nnodes = 1\n', SRC)
    assert cfg.node(1).client_endpoint == "tcp://[::1]:7110"


def test_relative_data_dir_stays_relative() -> None:
    cfg = parse_config('[cluster]\ndata_dir = "runs/a"\n', SRC)
    assert cfg.data_dir == Path("runs/a")


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text("[cluster]\nnodes = 5\n[replication]\ndurability = \"fsync\"\n")
    cfg = load_config(path)
    assert cfg.node_ids == (1, 2, 3, 4, 5)
    assert cfg.replication.durability == "fsync"
    assert cfg.source == str(path)


# --------------------------------------------------------------------------- overrides, round trip


def test_overrides_regenerate_nodes_and_ports() -> None:
    cfg = load_config(None)
    more = with_overrides(cfg, nodes=5)
    assert more.node_ids == (1, 2, 3, 4, 5)
    assert more.node(5).client_port == 7150
    assert more.source == cfg.source

    moved = with_overrides(cfg, base_port=20000, data_dir=Path("/tmp/x"))
    assert moved.node_ids == (1, 2, 3)
    assert moved.node(1).client_port == 20010
    assert moved.supervisor.control_port == 20000 and moved.supervisor.telemetry_port == 20002
    assert moved.data_dir == Path("/tmp/x")
    assert moved.replication == cfg.replication

    assert with_overrides(cfg) is cfg
    assert with_overrides(cfg, data_dir=Path("d")).nodes == cfg.nodes


def test_overrides_replace_an_explicit_node_list() -> None:
    cfg = parse_config("[[node]]\nid = 7\nport = 9000\n", SRC)
    out = with_overrides(cfg, base_port=8000)
    assert out.node_ids == (1,)  # the count is kept, the ids and ports are regenerated
    assert out.node(1).client_port == 8010


def test_bad_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"nodes.*expected an integer 1\.\.63, got 64"):
        with_overrides(load_config(None), nodes=64)


def test_dump_round_trip_default_and_custom() -> None:
    for cfg in (
        load_config(None),
        parse_config(
            """
            [cluster]
            name = "x \\"quoted\\""
            data_dir = "/var/tmp/lf"
            [replication]
            durability = "memory"
            heartbeat_ms = 7
            [supervisor]
            auto_restart = true
            [[node]]
            id = 3
            host = "127.0.0.2"
            port = 12000
            [[node]]
            id = 63
            """,
            SRC,
        ),
    ):
        text = dump_config(cfg)
        back = parse_config(text, "dumped.toml")
        assert back == cfg
        assert dataclasses.replace(back, source=cfg.source) == cfg
        assert "[[node]]" in text


@settings(max_examples=50, deadline=None)
@given(
    nodes=st.integers(1, 63),
    base_port=st.integers(1, 65535 - 10 * 63 - 2),
    heartbeat=st.integers(1, 100),
    durability=st.sampled_from(["memory", "wal", "fsync"]),
)
def test_dump_round_trip_property(
    nodes: int, base_port: int, heartbeat: int, durability: str
) -> None:
    cfg = with_overrides(load_config(None), nodes=nodes, base_port=base_port)
    repl = dataclasses.replace(cfg.replication, heartbeat_ms=heartbeat, durability=durability)
    cfg = dataclasses.replace(cfg, replication=repl)
    assert parse_config(dump_config(cfg), "x") == cfg


def test_dump_refuses_ports_the_format_cannot_express() -> None:
    cfg = load_config(None)
    odd = dataclasses.replace(cfg, nodes=(NodeConfig(1, "127.0.0.1", 9000, 9005, 9006),))
    with pytest.raises(ConfigError, match="not consecutive"):
        dump_config(odd)


# --------------------------------------------------------------------------- error messages


def test_error_wrong_type_names_file_key_and_expectation() -> None:
    msg = error_of('[replication]\nheartbeat_ms = "abc"\n')
    assert msg == 'cluster.toml: replication.heartbeat_ms: expected a positive integer, got "abc"'
    assert "expected a positive integer, got 0" in error_of("[client]\ndeadline_ms = 0\n")
    assert "client.deadline_ms" in error_of("[client]\ndeadline_ms = 0\n")
    assert "got 1.5" in error_of("[replication]\nlease_ms = 1.5\n")


def test_error_bool_is_not_an_integer() -> None:
    msg = error_of("[replication]\nbatch_max_entries = true\n")
    assert msg.startswith("cluster.toml: replication.batch_max_entries:")
    assert "expected a positive integer, got true" in msg
    assert "expected an integer 1..63, got true" in error_of("[cluster]\nnodes = true\n")


def test_error_bool_key_rejects_other_types() -> None:
    msg = error_of("[supervisor]\nauto_restart = 1\n")
    assert msg == "cluster.toml: supervisor.auto_restart: expected true or false, got 1"


def test_error_unknown_key_with_suggestion() -> None:
    msg = error_of("[replication]\nheartbeatms = 50\n")
    assert msg.startswith('cluster.toml: unknown key "replication.heartbeatms"')
    assert '"replication.heartbeat_ms"' in msg


def test_error_unknown_section_and_misplaced_key() -> None:
    assert 'unknown section "replicaton"' in error_of("[replicaton]\nlease_ms = 1\n")
    msg = error_of("lease_ms = 300\n")
    assert 'unknown key "lease_ms"' in msg and '"replication.lease_ms"' in msg
    assert 'unknown key "node[2].prot"' in error_of("[[node]]\nid = 2\nprot = 9000\n")


def test_error_section_that_is_not_a_table() -> None:
    msg = error_of("cluster = 3\n")
    assert msg.startswith("cluster.toml: cluster:") and "expected a [cluster] table" in msg


def test_error_node_port_out_of_range() -> None:
    msg = error_of("[[node]]\nid = 1\nport = 70000\n")
    assert msg == ("cluster.toml: node[1].port: 70000 is out of range 1..65535 "
                   "(replication and control use port+1, port+2)")
    assert "node[1].port: 65534 is out of range" in error_of("[[node]]\nid = 1\nport = 65534\n")
    assert "node[1].port: expected an integer" in error_of('[[node]]\nid = 1\nport = "x"\n')


def test_error_base_port_out_of_range() -> None:
    assert "cluster.base_port: expected an integer 1..65535, got 0" in error_of(
        "[cluster]\nbase_port = 0\n")
    msg = error_of("[cluster]\nbase_port = 65510\n")
    assert "cluster.base_port: 65510 is out of range" in msg and "node 3" in msg


def test_error_duplicate_node_id() -> None:
    msg = error_of("[[node]]\nid = 2\n[[node]]\nid = 2\n")
    assert msg == "cluster.toml: duplicate node id 2"


def test_error_port_used_twice() -> None:
    msg = error_of("[[node]]\nid = 2\n[[node]]\nid = 3\nport = 7121\n")
    assert msg == "cluster.toml: port 7121 is used twice (node 2 replication, node 3 client)"
    assert "(supervisor control, node 1 client)" in error_of("[[node]]\nid = 1\nport = 7100\n")
    # The same port on another address is not a collision.
    cfg = parse_config('[[node]]\nid = 1\nport = 7100\nhost = "127.0.0.2"\n', SRC)
    assert cfg.node(1).client_port == 7100


def test_error_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "cluster.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == (
        f"{missing}: cannot read file: [Errno 2] No such file or directory")


def test_error_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_bytes(b"[cluster]\nname = \"\xff\"\n")
    with pytest.raises(ConfigError, match="cannot read file: not UTF-8"):
        load_config(path)


def test_error_toml_syntax_reports_line() -> None:
    msg = error_of("[cluster]\nname = \"x\"\nbase_port = = 3\n")
    assert msg.startswith("cluster.toml: invalid TOML:")
    assert "line 3" in msg


def test_error_lease_not_below_failure_timeout() -> None:
    msg = error_of("[replication]\nlease_ms = 500\nfailure_timeout_ms = 500\n")
    assert msg.startswith("cluster.toml: replication.lease_ms (500) must be less than "
                          "replication.failure_timeout_ms (500)")


def test_error_lease_not_above_heartbeat() -> None:
    msg = error_of("[replication]\nheartbeat_ms = 400\n")
    assert "replication.heartbeat_ms (400) must be less than replication.lease_ms (400)" in msg


def test_error_attempt_timeout_above_deadline() -> None:
    msg = error_of("[client]\nattempt_timeout_ms = 5000\ndeadline_ms = 1000\n")
    assert "client.attempt_timeout_ms (5000) must not exceed client.deadline_ms (1000)" in msg


def test_error_durability_choice() -> None:
    msg = error_of('[replication]\ndurability = "disk"\n')
    assert msg == ('cluster.toml: replication.durability: expected one of "memory", "wal", '
                   '"fsync", got "disk"')


@pytest.mark.parametrize("bad", ["0", "64", "-1", '"1"'])
def test_error_node_id_range(bad: str) -> None:
    msg = error_of(f"[[node]]\nid = {bad}\n")
    assert msg.startswith("cluster.toml: [[node]] #1.id: expected an integer 1..63, got ")


def test_error_node_id_missing() -> None:
    msg = error_of("[[node]]\nid = 1\n[[node]]\nport = 9000\n")
    assert msg.startswith("cluster.toml: [[node]] #2.id: missing")


@pytest.mark.parametrize("bad", ["0", "64", "3.0"])
def test_error_nodes_count_range(bad: str) -> None:
    msg = error_of(f"[cluster]\nnodes = {bad}\n")
    assert msg.startswith("cluster.toml: cluster.nodes: expected an integer 1..63, got ")


def test_error_nodes_and_node_tables_together() -> None:
    msg = error_of("[cluster]\nnodes = 2\n[[node]]\nid = 1\n")
    assert "cluster.nodes and [[node]] tables are both given" in msg


def test_error_node_not_an_array_of_tables() -> None:
    assert "node: expected [[node]] tables" in error_of("[node]\nid = 1\n")


@pytest.mark.parametrize("bad", ["3", '""', '"*"', '"tcp://127.0.0.1"', '"a b"'])
def test_error_host_must_be_a_host_string(bad: str) -> None:
    msg = error_of(f"[cluster]\nhost = {bad}\n")
    assert msg.startswith("cluster.toml: cluster.host: expected a host name or IP address")
    node_msg = error_of(f"[[node]]\nid = 1\nhost = {bad}\n")
    assert node_msg.startswith("cluster.toml: node[1].host: expected a host name")


def test_error_name_and_data_dir_must_be_strings() -> None:
    assert "cluster.name: expected a non-empty string, got 5" in error_of("[cluster]\nname = 5\n")
    assert "cluster.data_dir: expected a non-empty string" in error_of(
        '[cluster]\ndata_dir = ""\n')


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert isinstance(load_config(None), ClusterConfig)
