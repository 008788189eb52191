"""Cluster configuration: one TOML file that every lfctl process reads, validated up front.

Validation is strict on purpose.  If a typo such as `heartbeatms` quietly fell back to the default,
a failover experiment would measure something other than what the user asked for.  So unknown keys
and badly typed values are errors, and every message names the file, the key and what was expected.

The config is deliberately unvalidated once it is a `ClusterConfig`.  Tests and the simulator may
build or `dataclasses.replace` one directly; only text coming from a user goes through the checks.
"""

from __future__ import annotations

import difflib
import importlib.resources
import json
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from protocol.messages import MAX_NODE_ID

DEFAULT_CONFIG_RESOURCE = "default_cluster.toml"
# The `source` of the embedded default, shown in error messages instead of a path.
DEFAULT_SOURCE = "<built-in cluster.toml>"

DURABILITY_POLICIES = ("memory", "wal", "fsync")
MAX_PORT = 65535
# Node i listens on base_port + NODE_PORT_STRIDE * i (+1, +2); the supervisor takes base_port..+2.
NODE_PORT_STRIDE = 10
# Timeouts and sizes end up in struct fields and timer arithmetic; anything above this is a typo.
MAX_INT_SETTING = 2**31 - 1

DEFAULT_NAME = "laptopfactory"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 7100
DEFAULT_DATA_DIR = ".lfctl"
DEFAULT_NODES = 3


class ConfigError(ValueError):
    """A configuration the user must fix; the message is meant to be shown as is."""


def _endpoint(host: str, port: int) -> str:
    # ZeroMQ wants IPv6 literals in brackets (and the socket needs zmq.IPV6 set).
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


# --------------------------------------------------------------------------- the config values


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Where one replica listens.  The three ports are always consecutive when read from TOML."""

    id: int
    host: str
    client_port: int
    repl_port: int
    control_port: int

    @property
    def client_endpoint(self) -> str:
        return _endpoint(self.host, self.client_port)

    @property
    def repl_endpoint(self) -> str:
        return _endpoint(self.host, self.repl_port)

    @property
    def control_endpoint(self) -> str:
        return _endpoint(self.host, self.control_port)


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """Timing and sizing of the replication protocol; the defaults are the documented ones."""

    heartbeat_ms: int = 50
    failure_timeout_ms: int = 500
    lease_ms: int = 400
    retransmit_ms: int = 100
    batch_max_entries: int = 1024
    max_inflight_batches: int = 8
    durability: str = "wal"
    snapshot_every: int = 100_000
    max_bulk_read: int = 100_000
    max_pending: int = 100_000


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Client retry policy (Lazy Pirate): one attempt per node, a deadline per operation."""

    attempt_timeout_ms: int = 500
    deadline_ms: int = 30_000


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """The supervisor process and the two services it hosts (view service, telemetry sink)."""

    host: str
    control_port: int
    view_port: int
    telemetry_port: int
    auto_restart: bool = False
    startup_timeout_ms: int = 15_000

    @property
    def control_endpoint(self) -> str:
        return _endpoint(self.host, self.control_port)

    @property
    def view_endpoint(self) -> str:
        return _endpoint(self.host, self.view_port)

    @property
    def telemetry_endpoint(self) -> str:
        return _endpoint(self.host, self.telemetry_port)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The whole cluster.  `source` says where it came from, for messages only: two configs with
    the same content compare equal whichever file they were read from."""

    source: str = field(compare=False)
    name: str
    host: str
    base_port: int
    data_dir: Path  # relative paths stay relative: the CLI resolves them against its cwd
    nodes: tuple[NodeConfig, ...]  # sorted by id
    replication: ReplicationConfig
    client: ClientConfig
    supervisor: SupervisorConfig

    @property
    def node_ids(self) -> tuple[int, ...]:
        return tuple(n.id for n in self.nodes)

    def node(self, node_id: int) -> NodeConfig:
        """The node with this id; a ConfigError (user-facing) when the cluster has no such node."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        ids = ", ".join(str(i) for i in self.node_ids)
        raise ConfigError(f"node {node_id} does not exist in {self.source} (nodes: {ids})")

    def port_uses(self) -> tuple[tuple[int, str], ...]:
        """Every port the cluster binds, with what binds it (for collision and free-port checks)."""
        sup = self.supervisor
        uses = [
            (sup.control_port, "supervisor control"),
            (sup.view_port, "view service"),
            (sup.telemetry_port, "telemetry"),
        ]
        for n in self.nodes:
            uses.append((n.client_port, f"node {n.id} client"))
            uses.append((n.repl_port, f"node {n.id} replication"))
            uses.append((n.control_port, f"node {n.id} control"))
        return tuple(uses)

    def all_ports(self) -> tuple[int, ...]:
        """Supervisor control, view, telemetry, then each node's client, replication, control."""
        return tuple(port for port, _ in self.port_uses())


# --------------------------------------------------------------------------- value checks


class _Bad(Exception):
    """A value failed a check; the caller prefixes the file and the key."""


def _show(value: Any) -> str:
    """A value as the user wrote it in TOML, so the message can quote it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:57] + '..."'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{value} ({type(value).__name__})"


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python, but `true` is never a sensible count or duration.
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise _Bad(f"expected a positive integer, got {_show(value)}")
    if value > MAX_INT_SETTING:
        raise _Bad(f"expected a positive integer up to {MAX_INT_SETTING}, got {value}")
    return value


def _int_between(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not _is_int(value) or not lo <= value <= hi:
            raise _Bad(f"expected an integer {lo}..{hi}, got {_show(value)}")
        return value

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {_show(value)}")
    return value


def _nonempty_string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"expected a non-empty string, got {_show(value)}")
    return value


def _host(value: Any) -> str:
    # Every process connects to these addresses, so wildcards and endpoints are mistakes here.
    if (
        not isinstance(value, str)
        or not value
        or value == "*"
        or "/" in value
        or any(c.isspace() for c in value)
    ):
        raise _Bad(f'expected a host name or IP address (like "127.0.0.1"), got {_show(value)}')
    return value


def _durability(value: Any) -> str:
    if not isinstance(value, str) or value not in DURABILITY_POLICIES:
        choices = ", ".join(f'"{p}"' for p in DURABILITY_POLICIES)
        raise _Bad(f"expected one of {choices}, got {_show(value)}")
    return value


def _data_dir(value: Any) -> Path:
    return Path(_nonempty_string(value)).expanduser()


_CLUSTER_KEYS = ("name", "host", "base_port", "data_dir", "nodes")
_NODE_KEYS = ("id", "host", "port")
_SECTIONS = ("cluster", "replication", "client", "supervisor", "node")

_REPLICATION_CHECKS: dict[str, Callable[[Any], Any]] = {
    "heartbeat_ms": _positive_int,
    "failure_timeout_ms": _positive_int,
    "lease_ms": _positive_int,
    "retransmit_ms": _positive_int,
    "batch_max_entries": _positive_int,
    "max_inflight_batches": _positive_int,
    "durability": _durability,
    "snapshot_every": _positive_int,
    "max_bulk_read": _positive_int,
    "max_pending": _positive_int,
}
_CLIENT_CHECKS: dict[str, Callable[[Any], Any]] = {
    "attempt_timeout_ms": _positive_int,
    "deadline_ms": _positive_int,
}
_SUPERVISOR_CHECKS: dict[str, Callable[[Any], Any]] = {
    "auto_restart": _boolean,
    "startup_timeout_ms": _positive_int,
}
# slots=True dataclasses keep no defaults on the class, so read them from default instances.
_REPLICATION_DEFAULTS = ReplicationConfig()
_CLIENT_DEFAULTS = ClientConfig()
assert set(_REPLICATION_CHECKS) == {f.name for f in fields(ReplicationConfig)}
assert set(_CLIENT_CHECKS) == {f.name for f in fields(ClientConfig)}

_KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "cluster": _CLUSTER_KEYS,
    "replication": tuple(_REPLICATION_CHECKS),
    "client": tuple(_CLIENT_CHECKS),
    "supervisor": tuple(_SUPERVISOR_CHECKS),
    "node": _NODE_KEYS,
}


# --------------------------------------------------------------------------- building from TOML


class _Reader:
    """Turns the raw TOML dict into a ClusterConfig, raising ConfigError on the first problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, text: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {text}")

    def value(self, table: Mapping[str, Any], prefix: str, key: str, default: Any,
              check: Callable[[Any], Any]) -> Any:
        if key not in table:
            return default
        try:
            return check(table[key])
        except _Bad as exc:
            raise self.error(f"{prefix}.{key}", str(exc)) from None

    def section(self, raw: Mapping[str, Any], name: str) -> dict[str, Any]:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise self.error(name, f"expected a [{name}] table, got {_show(table)}")
        self.reject_unknown(table, name, _KNOWN_KEYS[name])
        return table

    def reject_unknown(self, table: Mapping[str, Any], prefix: str, known: tuple[str, ...]) -> None:
        for key in table:
            if key in known:
                continue
            hint = difflib.get_close_matches(key, known, n=1)
            if hint:
                extra = f' (did you mean "{prefix}.{hint[0]}"?)'
            else:
                extra = f" (known keys: {', '.join(known)})"
            raise ConfigError(f'{self.source}: unknown key "{prefix}.{key}"{extra}')

    def reject_unknown_top(self, raw: Mapping[str, Any]) -> None:
        for key, value in raw.items():
            if key in _SECTIONS:
                continue
            kind = "section" if isinstance(value, dict) else "key"
            # A key written above every [section] header lands at the top level: point at its home.
            homes = [f"{s}.{key}" for s, keys in _KNOWN_KEYS.items() if key in keys and s != "node"]
            if homes:
                extra = f' (did you mean "{homes[0]}"? keys belong under a [section] header)'
            else:
                close = difflib.get_close_matches(key, _SECTIONS, n=1)
                extra = (f' (did you mean "{close[0]}"?)' if close
                         else f" (known sections: {', '.join(_SECTIONS)})")
            raise ConfigError(f'{self.source}: unknown {kind} "{key}"{extra}')

    def build(self, raw: Mapping[str, Any]) -> ClusterConfig:
        self.reject_unknown_top(raw)
        cluster = self.section(raw, "cluster")
        repl_t = self.section(raw, "replication")
        client_t = self.section(raw, "client")
        sup_t = self.section(raw, "supervisor")

        name = self.value(cluster, "cluster", "name", DEFAULT_NAME, _nonempty_string)
        host = self.value(cluster, "cluster", "host", DEFAULT_HOST, _host)
        base_port = self.value(cluster, "cluster", "base_port", DEFAULT_BASE_PORT,
                               _int_between(1, MAX_PORT))
        data_dir = self.value(cluster, "cluster", "data_dir", Path(DEFAULT_DATA_DIR), _data_dir)

        nodes = self.nodes(raw, cluster, host, base_port)
        # base_port is range-checked once the node list is known, so one message can name the
        # highest port derived from it.
        self.check_base_port(base_port, nodes, raw)

        replication = ReplicationConfig(**{
            key: self.value(repl_t, "replication", key, getattr(_REPLICATION_DEFAULTS, key), check)
            for key, check in _REPLICATION_CHECKS.items()
        })
        client = ClientConfig(**{
            key: self.value(client_t, "client", key, getattr(_CLIENT_DEFAULTS, key), check)
            for key, check in _CLIENT_CHECKS.items()
        })
        supervisor = SupervisorConfig(
            host=host,
            control_port=base_port,
            view_port=base_port + 1,
            telemetry_port=base_port + 2,
            auto_restart=self.value(sup_t, "supervisor", "auto_restart", False, _boolean),
            startup_timeout_ms=self.value(sup_t, "supervisor", "startup_timeout_ms", 15_000,
                                          _positive_int),
        )
        cfg = ClusterConfig(
            source=self.source,
            name=name,
            host=host,
            base_port=base_port,
            data_dir=data_dir,
            nodes=nodes,
            replication=replication,
            client=client,
            supervisor=supervisor,
        )
        self.check_relations(cfg)
        return cfg

    def nodes(self, raw: Mapping[str, Any], cluster: Mapping[str, Any], host: str,
              base_port: int) -> tuple[NodeConfig, ...]:
        if "node" not in raw:
            count = self.value(cluster, "cluster", "nodes", DEFAULT_NODES,
                               _int_between(1, MAX_NODE_ID))
            return tuple(_derived_node(i, host, base_port) for i in range(1, count + 1))

        tables = raw["node"]
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise self.error("node", f"expected [[node]] tables, got {_show(tables)}")
        if "nodes" in cluster:
            raise ConfigError(
                f"{self.source}: cluster.nodes and [[node]] tables are both given: "
                "use one or the other"
            )
        if not tables:
            raise self.error("node", "expected at least one [[node]] table")

        seen: set[int] = set()
        result = []
        for pos, table in enumerate(tables, start=1):
            label = f"[[node]] #{pos}"
            if "id" not in table:
                raise self.error(f"{label}.id",
                                 f"missing (every [[node]] needs an id 1..{MAX_NODE_ID})")
            node_id = self.value(table, label, "id", None, _int_between(1, MAX_NODE_ID))
            if node_id in seen:
                raise ConfigError(f"{self.source}: duplicate node id {node_id}")
            seen.add(node_id)
            label = f"node[{node_id}]"
            self.reject_unknown(table, label, _NODE_KEYS)
            node_host = self.value(table, label, "host", host, _host)
            if "port" in table:
                port = table["port"]
                if not _is_int(port):
                    raise self.error(f"{label}.port",
                                     f"expected an integer 1..{MAX_PORT - 2}, got {_show(port)}")
                if not 1 <= port <= MAX_PORT - 2:
                    raise self.error(
                        f"{label}.port",
                        f"{port} is out of range 1..{MAX_PORT} "
                        "(replication and control use port+1, port+2)",
                    )
                result.append(NodeConfig(node_id, node_host, port, port + 1, port + 2))
            else:
                derived = _derived_node(node_id, node_host, base_port)
                result.append(derived)
        result.sort(key=lambda n: n.id)
        return tuple(result)

    def check_base_port(self, base_port: int, nodes: tuple[NodeConfig, ...],
                        raw: Mapping[str, Any]) -> None:
        # Only ports derived from base_port count against it; explicit [[node]] ports were
        # range-checked on their own.
        explicit = {t.get("id") for t in raw.get("node", []) if "port" in t}
        needs = [(base_port + 2, "the supervisor (base_port..base_port+2)")]
        needs += [(n.control_port, f"node {n.id}") for n in nodes if n.id not in explicit]
        top, who = max(needs)
        if top > MAX_PORT:
            raise self.error(
                "cluster.base_port",
                f"{base_port} is out of range: {who} would use port {top} "
                f"(the highest port is {MAX_PORT})",
            )

    def check_relations(self, cfg: ClusterConfig) -> None:
        # Nodes on different addresses (127.0.0.2, another machine) may reuse a port number.
        hosts = [cfg.host] * 3 + [n.host for n in cfg.nodes for _ in range(3)]
        owner: dict[tuple[str, int], str] = {}
        for host, (port, use) in zip(hosts, cfg.port_uses(), strict=True):
            if (host, port) in owner:
                raise ConfigError(
                    f"{self.source}: port {port} is used twice ({owner[host, port]}, {use})"
                )
            owner[host, port] = use

        r = cfg.replication
        # A lease that outlives the failure timeout lets a deposed primary serve stale reads.
        _less(self.source, "replication.lease_ms", r.lease_ms,
              "replication.failure_timeout_ms", r.failure_timeout_ms,
              "a deposed primary could still serve reads after a new one is chosen")
        # A lease shorter than the ping period lapses between pings: the primary would keep
        # refusing reads although nothing failed.
        _less(self.source, "replication.heartbeat_ms", r.heartbeat_ms,
              "replication.lease_ms", r.lease_ms,
              "the primary's lease would lapse between two pings")
        c = cfg.client
        if c.attempt_timeout_ms > c.deadline_ms:
            raise ConfigError(
                f"{self.source}: client.attempt_timeout_ms ({c.attempt_timeout_ms}) must not "
                f"exceed client.deadline_ms ({c.deadline_ms})"
            )


def _less(source: str, key_a: str, a: int, key_b: str, b: int, why: str) -> None:
    if not a < b:
        raise ConfigError(f"{source}: {key_a} ({a}) must be less than {key_b} ({b}): {why}")


def _derived_node(node_id: int, host: str, base_port: int) -> NodeConfig:
    port = base_port + NODE_PORT_STRIDE * node_id
    return NodeConfig(node_id, host, port, port + 1, port + 2)


# --------------------------------------------------------------------------- public functions


def default_config_text() -> str:
    """The embedded default file, e.g. for `lfctl` to write a starting cluster.toml."""
    resource = importlib.resources.files("protocol").joinpath(DEFAULT_CONFIG_RESOURCE)
    return resource.read_text(encoding="utf-8")


def parse_config(text: str, source: str = "<string>") -> ClusterConfig:
    """Parse and validate TOML text; `source` names it in error messages."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    return _Reader(source).build(raw)


def load_config(path: Path | str | None = None) -> ClusterConfig:
    """Read a cluster file; None means the embedded default (3 nodes on 127.0.0.1)."""
    if path is None:
        return parse_config(default_config_text(), DEFAULT_SOURCE)
    source = str(path)
    try:
        # utf-8-sig: tolerate the byte-order mark some editors put in front.
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else str(exc)
        raise ConfigError(f"{source}: cannot read file: {reason}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source}: cannot read file: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    return parse_config(text, source)


def _to_raw(cfg: ClusterConfig) -> dict[str, Any]:
    """The config as a TOML-ready dict, with an explicit node list so every port is exact."""
    return {
        "cluster": {
            "name": cfg.name,
            "host": cfg.host,
            "base_port": cfg.base_port,
            "data_dir": str(cfg.data_dir),
        },
        "replication": {
            f.name: getattr(cfg.replication, f.name) for f in fields(ReplicationConfig)
        },
        "client": {f.name: getattr(cfg.client, f.name) for f in fields(ClientConfig)},
        "supervisor": {
            "auto_restart": cfg.supervisor.auto_restart,
            "startup_timeout_ms": cfg.supervisor.startup_timeout_ms,
        },
        "node": [{"id": n.id, "host": n.host, "port": n.client_port} for n in cfg.nodes],
    }


def dump_config(cfg: ClusterConfig) -> str:
    """TOML text that parses back to an equal config (the supervisor writes the effective
    config into the data dir so every later command sees exactly what the cluster runs with)."""
    origin = cfg.source.replace("\n", " ")
    header = (
        f"# lfctl cluster configuration, written from {origin}.\n"
        "# Each [[node]] listens on port (clients), port+1 (replication), port+2 (control).\n\n"
    )
    for n in cfg.nodes:
        if (n.repl_port, n.control_port) != (n.client_port + 1, n.client_port + 2):
            # The file format has one port per node; writing this would silently change it.
            raise ConfigError(
                f"{cfg.source}: node {n.id}: ports {n.client_port}, {n.repl_port}, "
                f"{n.control_port} are not consecutive and cannot be written to cluster.toml"
            )
    raw = _to_raw(cfg)
    node_tables = raw.pop("node")
    # tomli_w would write short node lists as an inline array; [[node]] tables read better.
    body = tomli_w.dumps(raw)
    for table in node_tables:
        body += "\n[[node]]\n" + tomli_w.dumps(table)
    return header + body


def with_overrides(
    cfg: ClusterConfig,
    *,
    nodes: int | None = None,
    base_port: int | None = None,
    data_dir: Path | str | None = None,
) -> ClusterConfig:
    """Apply command-line overrides.  `nodes` or `base_port` regenerate the node list as from
    `nodes = N` (dropping any explicit [[node]] tables and per-node hosts); the result is
    validated like a file, so errors still name the key and the value."""
    if nodes is None and base_port is None and data_dir is None:
        return cfg
    raw = _to_raw(cfg)
    given = []
    if nodes is not None or base_port is not None:
        raw.pop("node")
        raw["cluster"]["nodes"] = nodes if nodes is not None else len(cfg.nodes)
        if nodes is not None:
            given.append(f"nodes={_show(nodes)}")
        if base_port is not None:
            raw["cluster"]["base_port"] = base_port
            given.append(f"base_port={_show(base_port)}")
    if data_dir is not None:
        raw["cluster"]["data_dir"] = str(data_dir) if isinstance(data_dir, Path) else data_dir
        given.append(f"data_dir={_show(str(data_dir))}")
    checked = _Reader(f"{cfg.source} with overrides ({', '.join(given)})").build(raw)
    # Keep the original source so later messages point at the file the user knows.
    return ClusterConfig(
        source=cfg.source,
        name=checked.name,
        host=checked.host,
        base_port=checked.base_port,
        data_dir=checked.data_dir,
        nodes=checked.nodes,
        replication=checked.replication,
        client=checked.client,
        supervisor=checked.supervisor,
    )
