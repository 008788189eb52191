"""Network partitions without root: `lfctl partition 1,2|3` and `lfctl heal`.

Each node already knows how to drop replication traffic to and from chosen peers, and to stop
talking to the view service (node control commands `{"cmd": "partition", "peers": [...],
"view_service": bool}` and `{"cmd": "heal"}`).  A partition into groups tells every node of a
group to drop the nodes of every other group.  The view service (in the supervisor) sides with
one group -- the first one unless `--view-service-side` says otherwise: the nodes of every other
group also stop pinging it, so it sees them fall silent and makes a new view exactly as it would
for a real cut.  Nodes named in no group keep talking to everybody (a partial partition).
Client traffic is not cut: clients that reach the cut-off side get timeouts or redirects, as they
would from a node that has lost its peers.

The CLI (or the nemesis) talks to each node's control socket directly -- the supervisor's loop
must never block on a node that does not answer (a paused one, say) -- and then tells the
supervisor, which shows the partition in `lfctl status`.  A node restarted while a partition is
in force comes back connected to everybody (the partition lives in the process).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.control import ControlError, request
from protocol.config import ClusterConfig

__all__ = ["PartitionError", "Plan", "apply_plan", "heal", "parse_groups", "plan_partition"]

NODE_TIMEOUT = 2.0  # a live node answers its control socket in milliseconds


class PartitionError(ValueError):
    """A partition spec that cannot be applied (usage error)."""


def parse_groups(spec: str | Sequence[str], node_ids: Iterable[int]) -> list[list[int]]:
    """"1,2|3" (or the groups as separate arguments: ["1,2", "3"]) -> [[1, 2], [3]]."""
    parts: list[str] = []
    for item in ([spec] if isinstance(spec, str) else list(spec)):
        parts.extend(item.split("|"))
    known = set(node_ids)
    groups: list[list[int]] = []
    seen: set[int] = set()
    for part in parts:
        part = part.strip()
        if not part:
            raise PartitionError("empty group in the partition (expected e.g. 1,2|3)")
        group = []
        for tok in part.split(","):
            tok = tok.strip()
            try:
                node = int(tok)
            except ValueError:
                raise PartitionError(f"{tok!r} is not a node id (expected e.g. 1,2|3)") from None
            if node not in known:
                raise PartitionError(f"node {node} does not exist (nodes: "
                                     f"{', '.join(map(str, sorted(known)))})")
            if node in seen:
                raise PartitionError(f"node {node} is in two groups")
            seen.add(node)
            group.append(node)
        groups.append(sorted(group))
    if len(groups) < 2:
        raise PartitionError("a partition needs at least two groups separated by | (e.g. 1,2|3)")
    return groups


@dataclass(frozen=True)
class Plan:
    groups: list[list[int]]
    view_service_side: int  # index into groups
    per_node: dict[int, tuple[list[int], bool]]  # node -> (blocked peers, view service cut off)

    def describe(self) -> str:
        sides = " | ".join(",".join(map(str, g)) for g in self.groups)
        return f"{sides} (the view service is with {','.join(map(str, self.groups[self.view_service_side]))})"

    def to_json(self) -> dict[str, Any]:
        return {"groups": self.groups, "view_service_side": self.view_service_side}


def plan_partition(groups: list[list[int]], view_service_side: int = 0) -> Plan:
    if not 0 <= view_service_side < len(groups):
        raise PartitionError(f"the view service side must be a group number 1..{len(groups)}")
    per_node: dict[int, tuple[list[int], bool]] = {}
    for gi, group in enumerate(groups):
        others = sorted(n for gj, g in enumerate(groups) if gj != gi for n in g)
        for node in group:
            per_node[node] = (others, gi != view_service_side)
    return Plan(groups, view_service_side, per_node)


def _node_request(cfg: ClusterConfig, node: int, obj: dict, timeout: float) -> tuple[bool, str]:
    try:
        reply = request(cfg.node(node).control_endpoint, obj, timeout, what=f"node {node}")
    except ControlError as exc:
        return False, str(exc)
    if not reply.get("ok"):
        return False, f"node {node}: {reply.get('error', 'refused')}"
    return True, ""


def apply_plan(cfg: ClusterConfig, plan: Plan, *, timeout: float = NODE_TIMEOUT,
               tell_supervisor: bool = True) -> dict[int, str]:
    """Send every node of the plan its part; returns {node: error} for nodes that did not take
    it (down, paused...).  The supervisor is told (best effort) for `lfctl status`."""
    errors: dict[int, str] = {}
    for node, (peers, vs_cut) in sorted(plan.per_node.items()):
        ok, err = _node_request(cfg, node, {"cmd": "partition", "peers": peers,
                                            "view_service": vs_cut}, timeout)
        if not ok:
            errors[node] = err
    if tell_supervisor:
        _tell_supervisor(cfg, {"cmd": "partition", **plan.to_json(), "since": time.time(),
                               "unreached": sorted(errors)})
    return errors


def heal(cfg: ClusterConfig, nodes: Iterable[int] | None = None, *, timeout: float = NODE_TIMEOUT,
         tell_supervisor: bool = True) -> dict[int, str]:
    """Heal every node (or the given ones); returns {node: error} for those not reached."""
    errors: dict[int, str] = {}
    for node in sorted(nodes if nodes is not None else cfg.node_ids):
        ok, err = _node_request(cfg, node, {"cmd": "heal"}, timeout)
        if not ok:
            errors[node] = err
    if tell_supervisor:
        _tell_supervisor(cfg, {"cmd": "heal", "unreached": sorted(errors)})
    return errors


def _tell_supervisor(cfg: ClusterConfig, obj: dict) -> None:
    try:
        request(cfg.supervisor.control_endpoint, obj, NODE_TIMEOUT)
    except ControlError:
        pass  # status is informative only; the partition itself is in the nodes
