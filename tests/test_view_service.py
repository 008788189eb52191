"""Step tests of the sans-IO view service: pings and exits in, views out."""

from __future__ import annotations

from orchestrator.view_service import ViewService, view_from_json, view_to_json
from protocol.messages import NO_NODE, Ping, View

FT = 0.5


def ping(node: int, inc: int | None = None, *, view: int = 0, last: int = 0, last_view: int = 0, durable: bool = True, add=(), remove=frozenset()) -> Ping:
    return Ping(node, inc if inc is not None else 100 + node, view, last, last_view, 0, 0, durable, tuple(add), frozenset(remove))


def started(nodes=(1, 2, 3), now: float = 0.0) -> ViewService:
    vs = ViewService(nodes, failure_timeout=FT, now=now)
    for n in nodes:
        vs.on_ping(ping(n), now)
    assert vs.view == View(1, 1, frozenset(set(nodes) - {1}))
    return vs


def test_bootstrap_waits_for_every_node_then_picks_node_1():
    vs = ViewService([1, 2, 3], failure_timeout=FT, now=0.0)
    assert vs.on_ping(ping(2), 0.0).view.number == 0
    assert vs.on_ping(ping(3), 0.0).view.number == 0
    reply = vs.on_ping(ping(1), 0.01)
    assert reply.view == View(1, 1, frozenset({2, 3}))


def test_bootstrap_goes_ahead_without_a_missing_node_and_prefers_the_longest_log():
    vs = ViewService([1, 2, 3], failure_timeout=FT, now=0.0)
    t = 0.0
    while t < 10 * FT:
        vs.on_ping(ping(1, last=5, last_view=1), t)
        vs.on_ping(ping(2, last=9, last_view=1), t)
        assert vs.view.number == 0, "started before node 3 had its chance"
        t += 0.25
    vs.on_tick(t)
    assert vs.view == View(1, 2, frozenset({1}))


def test_dead_backup_is_dropped_after_the_failure_timeout():
    vs = started()
    for t in (0.2, 0.4):
        vs.on_ping(ping(1, view=1), t)
        vs.on_ping(ping(2, view=1), t)
    vs.on_tick(0.49)
    assert vs.view.number == 1
    vs.on_tick(0.5)
    assert vs.view == View(2, 1, frozenset({2}))


def test_dead_primary_is_replaced_by_the_in_sync_backup_with_the_longest_log():
    vs = started()
    vs.on_ping(ping(2, view=1, last=7, last_view=1), 0.3)
    vs.on_ping(ping(3, view=1, last=9, last_view=1), 0.3)
    vs.on_node_exited(1, 0.31)  # the supervisor saw it exit: no timeout needed
    assert vs.view == View(2, 3, frozenset({2}))
    assert vs.changes[-1].reason.startswith("primary 1 failed, promoted 3")


def test_restarted_backup_is_no_longer_in_sync():
    vs = started()
    reply = vs.on_ping(ping(2, inc=999, view=0), 0.1)
    assert reply.view == View(2, 1, frozenset({3}))
    assert reply.learners == frozenset({2})


def test_learner_is_admitted_only_on_the_primarys_request_with_its_incarnation():
    vs = started()
    vs.on_ping(ping(2, inc=999), 0.1)  # restarted: out
    assert 2 not in vs.view.members
    vs.on_ping(ping(1, view=2, add=[(2, 111)]), 0.2)  # wrong incarnation: ignored
    assert 2 not in vs.view.members
    vs.on_ping(ping(1, view=1, add=[(2, 999)]), 0.2)  # stale view number: ignored
    assert 2 not in vs.view.members
    reply = vs.on_ping(ping(1, view=2, add=[(2, 999)]), 0.2)
    assert reply.view == View(3, 1, frozenset({2, 3}))
    assert vs.member_incarnation[2] == 999


def test_primary_can_have_a_lagging_backup_removed():
    vs = started()
    vs.on_ping(ping(1, view=1, remove={3}), 0.1)
    assert vs.view == View(2, 1, frozenset({2}))


def test_no_in_sync_node_left_gives_a_view_without_primary_until_a_durable_member_returns():
    vs = started(nodes=(1, 2))
    vs.on_node_exited(2, 0.1)
    assert vs.view == View(2, 1, frozenset())
    vs.on_node_exited(1, 0.2)
    assert vs.view == View(3, NO_NODE, frozenset({1}))
    # A wiped process of node 1 must not serve: nothing changes.
    reply = vs.on_ping(ping(1, inc=5, durable=False), 0.3)
    assert reply.view.primary == NO_NODE
    # Node 2 was dropped earlier (the primary may have committed without it): not a candidate.
    vs.on_ping(ping(2, inc=6, durable=True), 0.3)
    assert vs.view.primary == NO_NODE
    # Node 1 restarting with its WAL holds everything it acknowledged.
    reply = vs.on_ping(ping(1, inc=7, durable=True, last=4, last_view=2), 0.4)
    assert reply.view == View(4, 1, frozenset())


def restarted_service(now: float = 100.0) -> ViewService:
    """A service restarted from what `started()` persisted: view 1, primary 1, backups 2 and 3."""
    again = ViewService([1, 2, 3], failure_timeout=FT, persisted=started().to_json(), now=now)
    assert again.view == View(2, NO_NODE, frozenset({1, 2, 3}))
    return again


def test_restart_of_the_service_alone_keeps_the_primary_and_its_in_sync_backups():
    again = restarted_service()
    again.on_tick(100.1)
    assert again.view.number == 2
    again.on_ping(ping(3, view=1), 100.2)  # the very processes admitted before
    again.on_ping(ping(2, view=1), 100.2)
    assert again.view.number == 2, "chose before hearing every member"
    reply = again.on_ping(ping(1, view=1), 100.25)
    assert reply.view == View(3, 1, frozenset({2, 3}))
    assert reply.learners == frozenset()


def test_restart_of_the_whole_cluster_chooses_once_and_keeps_the_primary():
    """`lfctl down`, then `up`: every member is a new process with its log from disk.  Taken one
    ping at a time, each would be declared failed in turn and the primary would hop."""
    again = restarted_service()
    for n in (3, 2):  # node 1 happens to start last
        again.on_ping(ping(n, inc=900 + n, last=12, last_view=1), 100.2)
        assert again.view.number == 2
    reply = again.on_ping(ping(1, inc=901, last=12, last_view=1), 100.3)
    assert reply.view == View(3, 1, frozenset())
    assert reply.learners == frozenset({2, 3})
    assert again.member_incarnation == {1: 901}
    # The primary brings both up to its log and has them admitted in one view change.
    reply = again.on_ping(ping(1, inc=901, view=3, add=[(2, 902), (3, 903)]), 100.4)
    assert reply.view == View(4, 1, frozenset({2, 3}))
    assert not [c.reason for c in again.changes if "failed" in c.reason]


def test_after_a_restart_the_longest_log_wins_and_a_wiped_member_never_serves():
    again = restarted_service()
    again.on_ping(ping(1, inc=901, last=99, last_view=2, durable=False), 100.2)  # wiped: its log is no evidence
    again.on_ping(ping(2, inc=902, last=12, last_view=1), 100.2)
    again.on_ping(ping(3, inc=903, last=13, last_view=1), 100.2)
    assert again.view == View(3, 3, frozenset())


def test_after_a_restart_a_member_that_never_returns_is_waited_for_one_failure_timeout():
    again = restarted_service()
    again.on_ping(ping(2, view=1), 100.2)  # the same process as before: in sync
    again.on_ping(ping(3, inc=42, view=0), 100.2)  # a new process
    again.on_tick(100.0 + FT - 0.01)
    assert again.view.number == 2
    again.on_tick(100.0 + FT + 0.01)  # the primary never came back: the in-sync member serves
    assert again.view == View(3, 2, frozenset())
    assert again.changes[-1].reason == "member 2 is back in sync"


def test_restart_of_the_service_with_no_primary_and_nobody_heard_from_does_not_crash():
    vs = started(nodes=(1, 2))
    vs.on_node_exited(2, 0.1)
    vs.on_node_exited(1, 0.2)
    again = ViewService([1, 2], failure_timeout=FT, persisted=vs.to_json(), now=10.0)
    again.on_tick(10.01)
    assert again.view.primary == NO_NODE
    again.on_ping(ping(1, view=3), 10.02)  # the very process admitted before: it may serve
    assert again.view.primary == 1


def test_view_numbers_only_grow_and_views_round_trip_json():
    vs = started()
    numbers = [vs.view.number]
    for t, event in enumerate([lambda n: vs.on_node_exited(3, n), lambda n: vs.on_ping(ping(3, inc=9), n), lambda n: vs.on_node_exited(1, n)]):
        event(0.1 * (t + 1))
        numbers.append(vs.view.number)
    assert numbers == sorted(numbers)
    assert view_from_json(view_to_json(vs.view)) == vs.view


def test_unknown_node_gets_the_view_but_changes_nothing():
    vs = started()
    reply = vs.on_ping(ping(9), 0.1)
    assert reply.view == vs.view and vs.view.number == 1


def test_a_stall_of_the_service_itself_is_not_counted_against_the_nodes():
    """The whole cluster paused (or the supervisor starved) for 2 s: every node is silent past
    the failure timeout, but so was the service; told of its stall, it keeps the view, and it
    still drops a node that stays silent once it runs again."""

    def heard_until_0_4() -> ViewService:
        vs = started()
        for t in (0.2, 0.4):
            for n in (1, 2, 3):
                vs.on_ping(ping(n, view=1), t)
        return vs

    untold, stalled = heard_until_0_4(), heard_until_0_4()
    untold.on_tick(2.45)
    assert untold.view.number > 1, "without the stall event the silence is taken for failures"
    stalled.on_stall(2.0, 2.45)
    stalled.on_tick(2.45)
    assert stalled.view == View(1, 1, frozenset({2, 3}))
    for n in (1, 2):  # node 3 does not come back
        stalled.on_ping(ping(n, view=1), 2.5)
    stalled.on_tick(2.4 + FT - 0.01)
    assert stalled.view.number == 1
    stalled.on_tick(2.4 + FT + 0.01)
    assert stalled.view == View(2, 1, frozenset({2}))


def test_a_stall_never_moves_a_node_s_last_contact_into_the_future():
    vs = started()
    vs.on_ping(ping(2, view=1), 0.3)
    vs.on_stall(5.0, 1.0)  # a gap longer than the time since the last ping
    assert vs.last_seen[2] == 1.0
    assert vs.started_at == 1.0
