"""The view service as a pure state machine (sans-IO).

It alone creates views; view numbers only grow; the supervisor persists every new view before it
hands it out.  Its single safety duty is to keep this invariant:

    every node the service could promote (the primary and the in-sync backups of the current
    view, each in the incarnation it was admitted with) holds every committed entry.

It keeps it by (a) promoting only in-sync backups, (b) dropping a member whose process restarted
(a new incarnation) unless nobody else can serve and that member recovered its state from disk,
and (c) admitting a learner only on request of the primary of the current view, naming the
incarnation the primary saw catch up (the primary counts it for commits from the moment it asks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from protocol.messages import NO_NODE, NO_VIEW, Ping, View, ViewReply

log = logging.getLogger("orchestrator.view_service")

# How long the first view waits for every configured node before starting with those it has.
BOOTSTRAP_WAIT_TIMEOUTS = 10


def view_to_json(view: View) -> dict:
    return {"number": view.number, "primary": view.primary, "backups": sorted(view.backups)}


def view_from_json(data: dict) -> View:
    """Raises ValueError for a document that is not a view."""
    try:
        number, primary, backups = int(data["number"]), int(data["primary"]), frozenset(int(b) for b in data["backups"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a view: {exc}") from None
    if number < 0 or primary < 0 or primary in backups:
        raise ValueError(f"not a valid view: {data}")
    return View(number, primary, backups)


@dataclass
class ViewChange:
    """A record of why the view changed, for logs and the dashboard's events panel."""

    old: View
    new: View
    reason: str
    at: float


@dataclass
class _NodeSeen:
    incarnation: int
    last_seen: float
    ping: Ping
    exited: bool = False  # the supervisor saw the process end


class ViewService:
    def __init__(self, node_ids, *, failure_timeout: float, persisted: dict | View | None = None, now: float) -> None:
        self.node_ids = frozenset(node_ids)
        self.failure_timeout = failure_timeout
        self.started_at = now
        self.seen: dict[int, _NodeSeen] = {}
        self.changes: list[ViewChange] = []
        # The incarnation each member had when it was admitted; a different one means it restarted.
        self.member_incarnation: dict[int, int] = {}
        self.view = NO_VIEW
        # Preferred among equals when a primary is chosen again: the one that was serving.
        self.previous_primary = NO_NODE
        if isinstance(persisted, View):
            persisted = {"view": view_to_json(persisted)}
        if persisted:
            old = view_from_json(persisted["view"])
            self.member_incarnation = {int(k): int(v) for k, v in persisted.get("incarnations", {}).items()}
            if old.number > 0:
                # The members may have restarted with the service (`lfctl down`, then `up`), and
                # then none of them is the process that was admitted.  Judged one ping at a
                # time, each would be taken for failed in turn and the primary would hop from
                # node to node.  So the service first publishes a view without a primary (no
                # process of the old view may serve from it) and chooses once it has heard
                # every member, or after one failure timeout (`_recover_without_primary`).
                self.previous_primary = old.primary
                reason = f"view service restarted: waiting to hear from the members of view {old.number}"
                self._set_view(View(old.number + 1, NO_NODE, old.members), reason, now)

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> dict:
        return {
            "view": view_to_json(self.view),
            "incarnations": {str(k): v for k, v in sorted(self.member_incarnation.items())},
        }

    @property
    def last_ping(self) -> dict[int, Ping]:
        return {n: s.ping for n, s in self.seen.items()}

    @property
    def last_seen(self) -> dict[int, float]:
        return {n: s.last_seen for n, s in self.seen.items()}

    # ------------------------------------------------------------------ events

    def on_ping(self, ping: Ping, now: float) -> ViewReply:
        node = ping.node_id
        if node not in self.node_ids:
            return ViewReply(self.view, frozenset())
        seen = self.seen.get(node)
        if seen is None or seen.incarnation != ping.incarnation:
            self.seen[node] = _NodeSeen(ping.incarnation, now, ping)
            if node in self.view.members:
                self._member_contact(node, ping, now)
        else:
            seen.last_seen = now
            seen.ping = ping
            seen.exited = False
        if node == self.view.primary and ping.view_number == self.view.number and (ping.add or ping.remove):
            self._primary_requests(ping, now)
        self._reconfigure(now)
        return ViewReply(self.view, self._learners(now))

    def on_node_exited(self, node_id: int, now: float) -> None:
        """The supervisor saw the process end: no need to wait for the failure timeout."""
        seen = self.seen.get(node_id)
        if seen is not None:
            seen.exited = True
        self._reconfigure(now)

    def on_tick(self, now: float) -> None:
        self._reconfigure(now)

    def on_stall(self, gap: float, now: float) -> None:
        """The service itself could not run for `gap` seconds (its process was stopped, or
        starved of CPU, or the machine was): it heard nothing in that time through no fault of
        the nodes, so the time does not count against them.  Without this, the first tick after
        the whole cluster was paused would find every node silent past the failure timeout and
        declare them all dead before reading the pings queued for it.  It only ever makes the
        service more lenient, which is safe: a primary is replaced only after a longer silence
        (its lease has run out all the more), and a node that really died is still found, later
        by the length of the stall."""
        for seen in self.seen.values():
            seen.last_seen = min(now, seen.last_seen + gap)
        self.started_at = min(now, self.started_at + gap)

    # ------------------------------------------------------------------ queries

    def is_alive(self, node_id: int, now: float) -> bool:
        seen = self.seen.get(node_id)
        if seen is None or seen.exited:
            return False
        # After a restart of the service, give every node one timeout to be heard from.
        return now - max(seen.last_seen, self.started_at) < self.failure_timeout

    def _in_sync(self, node_id: int, now: float) -> bool:
        """Alive, and the same process that was admitted to the view."""
        seen = self.seen.get(node_id)
        return seen is not None and self.is_alive(node_id, now) and self.member_incarnation.get(node_id) == seen.incarnation

    def _learners(self, now: float) -> frozenset[int]:
        members = self.view.members
        return frozenset(n for n in self.seen if n not in members and self.is_alive(n, now))

    # ------------------------------------------------------------------ decisions

    def _member_contact(self, node: int, ping: Ping, now: float) -> None:
        """First ping of a member's (possibly new) incarnation."""
        if self.member_incarnation.get(node) is None and ping.durable:
            # A persisted view without its incarnations: trust a member that kept its state.
            self.member_incarnation[node] = ping.incarnation

    def _primary_requests(self, ping: Ping, now: float) -> None:
        backups = set(self.view.backups)
        reasons = []
        for node, incarnation in ping.add:
            seen = self.seen.get(node)
            if (
                node in self.node_ids
                and node not in self.view.members
                and seen is not None
                and seen.incarnation == incarnation
                and self.is_alive(node, now)
            ):
                backups.add(node)
                self.member_incarnation[node] = incarnation
                reasons.append(f"node {node} caught up")
        for node in ping.remove:
            if node in backups:
                backups.discard(node)
                reasons.append(f"primary dropped node {node}")
        if reasons:
            self._set_view(View(self.view.number + 1, self.view.primary, frozenset(backups)), "; ".join(reasons), now)

    def _reconfigure(self, now: float) -> None:
        view = self.view
        if view.number == 0:
            self._bootstrap(now)
            return
        if view.primary == NO_NODE:
            self._recover_without_primary(now)
            return
        backups = {b for b in view.backups if self._in_sync(b, now)}
        primary = view.primary
        reasons = [f"node {b} left" for b in sorted(view.backups - backups)]
        if not self._in_sync(primary, now):
            candidates = sorted(backups, key=lambda n: self._log_rank(n), reverse=True)
            if candidates:
                new = candidates[0]
                reasons.append(f"primary {primary} failed, promoted {new}")
                primary = new
                backups.discard(new)
            else:
                # Nobody in sync is left.  Publish a view with no primary, keeping the members
                # whose data we still need, so that no other process of the old primary can
                # ever read "you are primary" from it; wait for one of them to come back.
                reasons.append(f"primary {primary} failed and no in-sync backup is left: waiting for a member to return")
                self.previous_primary = primary
                self._set_view(View(view.number + 1, NO_NODE, view.members), "; ".join(reasons), now)
                self._recover_without_primary(now)
                return
        if primary != view.primary or frozenset(backups) != view.backups:
            self._set_view(View(view.number + 1, primary, frozenset(backups)), "; ".join(reasons), now)

    def _recover_without_primary(self, now: float) -> None:
        """The view has no primary; its members are the nodes that may hold acknowledged data.
        One that is still the admitted process, or that restarted with its log recovered from
        disk, holds everything it acknowledged and may serve; anyone else would lose data.

        Members still in sync stay backups of the new primary: every commit of the view they
        were admitted to waited for them.  A member that restarted rejoins as a learner, since
        the new primary may hold entries it lacks.  For one failure timeout after the service
        (re)started, it waits to hear every member, so that the choice is made once, among
        all of them, and not by whichever process happened to start first."""
        view = self.view
        heard = [n for n in view.backups if n in self.seen]
        if len(heard) < len(view.backups) and now - self.started_at < self.failure_timeout:
            return
        in_sync = [n for n in heard if self._in_sync(n, now)]
        if in_sync:
            new = max(in_sync, key=self._candidate_rank)
            backups = frozenset(in_sync) - {new}
            reason = f"member {new} is back in sync"
        else:
            able = [n for n in heard if self.is_alive(n, now) and self.seen[n].ping.durable]
            if not able:
                return
            new = max(able, key=self._candidate_rank)
            backups = frozenset()
            reason = f"member {new} recovered its log from disk"
            self.member_incarnation[new] = self.seen[new].incarnation
        if backups:
            reason += f", with {', '.join(str(b) for b in sorted(backups))} in sync"
        self._set_view(View(view.number + 1, new, backups), reason, now)

    def _candidate_rank(self, node: int) -> tuple[tuple[int, int], bool, int]:
        """The longest log first; among equal logs the primary that was serving, then the lowest id."""
        return (self._log_rank(node), node == self.previous_primary, -node)

    def _bootstrap(self, now: float) -> None:
        """First view: wait for every configured node, or one timeout after start for some."""
        alive = [n for n in self.node_ids if self.is_alive(n, now)]
        if not alive or (len(alive) < len(self.node_ids) and now - self.started_at < BOOTSTRAP_WAIT_TIMEOUTS * self.failure_timeout):
            return
        # Longest log first (data may exist if view.json was lost), then the lowest id.
        primary = max(alive, key=lambda n: (self._log_rank(n), -n))
        backups = frozenset(alive) - {primary}
        for n in alive:
            self.member_incarnation[n] = self.seen[n].incarnation
        self._set_view(View(1, primary, backups), "bootstrap", now)

    def _log_rank(self, node: int) -> tuple[int, int]:
        seen = self.seen.get(node)
        return (seen.ping.last_view, seen.ping.last_index) if seen else (0, 0)

    def _set_view(self, view: View, reason: str, now: float) -> None:
        old = self.view
        self.view = view
        for n in list(self.member_incarnation):
            if n not in view.members:
                del self.member_incarnation[n]
        self.changes.append(ViewChange(old, view, reason, now))
        del self.changes[:-200]
        log.info("view %d -> %d: primary %d, backups %s (%s)", old.number, view.number, view.primary, sorted(view.backups), reason)
