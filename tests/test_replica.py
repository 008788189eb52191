"""Step tests of the sans-IO replica core: one event in, the exact actions out."""

from __future__ import annotations

from array import array

import pytest

from node.replica import Replica, ReplicaSettings, Role
from node.state import STALE, Log, OrderBook, order_key
from node.storage import AppendEntries, CommitMark, Recovered, SnapshotRecord, TruncateFrom, ViewMark
from protocol.codec import REQUEST_FRAME, ProtocolError, decode, encode
from protocol.entries import count, pack_entries, unpack_entries
from protocol.messages import (
    PROTOCOL_VERSION,
    Append,
    AppendReply,
    ClientRequest,
    CustomerRecord,
    ErrorCode,
    ErrorReply,
    LaptopInfo,
    RecordList,
    SnapshotChunk,
    View,
    ViewReply,
)

S = ReplicaSettings(heartbeat=0.05, lease=0.4, failure_timeout=0.5, retransmit=0.1, batch_max_entries=4, snapshot_every=1000)
V1 = View(1, 1, frozenset({2, 3}))


def make(node_id: int = 1, view: View | None = V1, recovered: Recovered | None = None, settings: ReplicaSettings = S, now: float = 0.0) -> Replica:
    rep = Replica(node_id, settings, recovered or Recovered(), incarnation=100 + node_id)
    if view is not None:
        rep.on_view_reply(ViewReply(view), now, sent_at=now)
        rep.flush(now)
        rep.outbox.clear()
    return rep


def drain(rep: Replica, now: float):
    """What a flush asks for, with the reply frames decoded."""
    out = rep.flush(now)
    persist, messages = list(out.persist), list(out.replicate) + list(out.messages)
    replies = [(client, decode(frame)) for client, frame in out.replies]
    out.clear()
    return persist, messages, replies


def request(req_id: int, kind: int, customer: int, number: int = 0) -> bytes:
    """A request frame of any type, unknown ones included (`encode` refuses to make those)."""
    return REQUEST_FRAME.pack(PROTOCOL_VERSION, 1, req_id, kind, customer, number)


def order(req_id: int, customer: int, number: int) -> bytes:
    return encode(ClientRequest(req_id, 1, customer, number))


def test_view_reply_makes_roles_and_persists_view_number():
    rep = Replica(2, S, Recovered(), incarnation=7)
    assert rep.role is Role.IDLE
    rep.on_view_reply(ViewReply(V1), 0.0, sent_at=0.0)
    assert rep.role is Role.BACKUP
    assert rep.flush(0.0).persist == [ViewMark(1)]


def test_idle_node_redirects_without_hint():
    rep = Replica(1, S, Recovered(), incarnation=1)
    rep.on_client_request("c", order(5, 1, 1), 0.0)
    (_, _, replies) = drain(rep, 0.0)
    assert replies == [("c", ErrorReply(5, ErrorCode.NOT_PRIMARY, 0, "node 1 is not primary"))]


def test_backup_redirects_to_primary():
    rep = make(2)
    rep.on_client_request("c", order(5, 1, 1), 0.0)
    _, _, replies = drain(rep, 0.0)
    assert replies[0][1].code == ErrorCode.NOT_PRIMARY and replies[0][1].hint == 1


def test_primary_batches_a_turn_into_one_append_per_backup_and_commits_on_all_acks():
    rep = make(1)
    rep.on_client_request("a", order(1, 10, 0), 0.01)
    rep.on_client_request("b", order(2, 11, 0), 0.01)
    persist, messages, replies = drain(rep, 0.01)
    entries = pack_entries([(1, 10, 0, 1), (1, 11, 0, 1)])
    assert persist == [AppendEntries(1, entries)]
    assert sorted(messages, key=lambda m: m[0]) == [
        (2, Append(V1, 1, 0, 0, 0, entries)),
        (3, Append(V1, 1, 0, 0, 0, entries)),
    ]
    assert replies == []
    rep.on_message(AppendReply(1, 2, True, 2, 102), 0.02)
    assert drain(rep, 0.02)[2] == []  # one backup is not enough
    rep.on_message(AppendReply(1, 3, True, 2, 103), 0.02)
    persist, _, replies = drain(rep, 0.02)
    assert persist == []  # the replies do not wait for a write of the commit mark alone...
    assert replies == [("a", LaptopInfo(1, 10, 0, 1, 1, 1)), ("b", LaptopInfo(2, 11, 0, 1, 1, 1))]
    assert rep.book.records == {10: 0, 11: 0}
    rep.on_tick(0.03)
    assert drain(rep, 0.03)[0] == []  # ...nor goes on its own at the first tick, waiting for a write...
    rep.on_tick(0.035)
    assert drain(rep, 0.035)[0] == [CommitMark(2)]  # ...but at the second, none having come
    rep.on_client_request("c", order(3, 12, 0), 0.04)
    assert drain(rep, 0.04)[0] == [AppendEntries(3, pack_entries([(1, 12, 0, 1)]))]
    rep.on_message(AppendReply(1, 2, True, 3, 102), 0.05)
    rep.on_message(AppendReply(1, 3, True, 3, 103), 0.05)
    rep.on_tick(0.05)
    rep.on_client_request("d", order(4, 13, 0), 0.05)
    persist = drain(rep, 0.05)[0]
    # at most once a tick, with the first write after it: not with every write of a loaded node
    assert persist == [AppendEntries(4, pack_entries([(1, 13, 0, 1)])), CommitMark(3)]
    rep.on_message(AppendReply(1, 2, True, 4, 102), 0.06)
    rep.on_message(AppendReply(1, 3, True, 4, 103), 0.06)
    rep.on_client_request("e", order(5, 14, 0), 0.06)
    assert drain(rep, 0.06)[0] == [AppendEntries(5, pack_entries([(1, 14, 0, 1)]))]


def test_retried_order_is_not_appended_twice():
    rep = make(1, View(1, 1, frozenset()))
    rep.on_client_request("a", order(1, 10, 3), 0.01)
    assert drain(rep, 0.01)[2] == [("a", LaptopInfo(1, 10, 3, 1, 1, 1))]
    rep.on_client_request("a2", order(9, 10, 3), 0.02)
    persist, _, replies = drain(rep, 0.02)
    assert persist == []
    assert replies == [("a2", LaptopInfo(9, 10, 3, 1, 1, 1))]
    assert rep.log.last_index == 1


def test_retry_of_an_order_in_flight_waits_with_it():
    rep = make(1)
    rep.on_client_request("a", order(1, 10, 3), 0.01)
    drain(rep, 0.01)
    rep.on_client_request("a-retry", order(1, 10, 3), 0.02)
    assert drain(rep, 0.02)[0] == []  # nothing new appended
    for b in (2, 3):
        rep.on_message(AppendReply(1, b, True, 1, 100 + b), 0.03)
    replies = drain(rep, 0.03)[2]
    assert [c for c, _ in replies] == ["a", "a-retry"]


def in_flight(rep: Replica) -> dict[int, tuple[object, int]]:
    """A primary's entries in flight, by index: the answer waiting on each and its order key,
    whichever loop turns they came in."""
    return {index: (answer, key) for start, answers, keys in rep.inflight
            for index, answer, key in zip(range(start, start + len(keys)), answers or [None] * len(keys), keys)}


@pytest.mark.parametrize("seed", range(40))
def test_a_turn_of_requests_in_one_call_does_what_one_call_each_does(seed):
    """`on_client_requests` is `on_client_request` for each request in turn: the same log, the
    same waiters and the same replies, through commits, retries, stale and repeated orders,
    reads, an unknown type and the in-flight limit."""
    import random
    from dataclasses import replace

    rng = random.Random(seed)
    settings = replace(S, max_pending=rng.choice([3, 8, 100]))
    one_each, batched = make(1, settings=settings), make(1, settings=settings)
    now = 0.01
    for rep in (one_each, batched):
        rep.lease_until = 10.0
    for turn in range(6):
        batch = []
        for k in range(rng.randrange(0, 12)):
            customer = rng.randrange(4)
            kind = rng.choices([1, 2, 3, 7], weights=[12, 2, 1, 1])[0]
            if kind == 1:
                req = order(rng.randrange(50), customer, rng.randrange(6))
            elif kind == 3:
                req = request(rng.randrange(50), 3, 0, rng.randrange(1, 5))
            else:
                req = request(rng.randrange(50), kind, customer)
            batch.append((f"c{turn}.{k}", req))
        for client, req in batch:
            one_each.on_client_request(client, req, now)
        batched.on_client_requests(batch, now)
        outs = [drain(rep, now) for rep in (one_each, batched)]
        assert outs[0] == outs[1]
        assert (one_each.log.data, one_each.pending_keys, one_each.waiters) == (batched.log.data, batched.pending_keys, batched.waiters)
        assert in_flight(one_each) == in_flight(batched)
        if rng.random() < 0.7:  # both backups acknowledge all there is
            for rep in (one_each, batched):
                for b in (2, 3):
                    rep.on_message(AppendReply(1, b, True, rep.log.last_index, 100 + b), now)
            outs = [drain(rep, now) for rep in (one_each, batched)]
            assert outs[0] == outs[1]
            assert one_each.book.records == batched.book.records
        now += 0.001


@pytest.mark.parametrize("seed", range(40))
def test_a_peer_frame_does_what_its_decoded_message_does(seed):
    """`on_peer_frame` takes appends and acknowledgements apart itself: it must leave a node
    exactly as `on_message` of the decoded message does, at a backup (appends in step, ahead,
    behind, overlapping, of older and newer views) and at a primary (acks and refusals)."""
    import random

    rng = random.Random(seed)
    frames, objects = make(2), make(2)
    primaries = (make(1), make(1))
    now = 0.01
    for step in range(60):
        if step % 10 == 0:  # orders in flight at the primaries, for the acks to be about
            for rep in primaries:
                rep.on_client_requests([("c", order(step, step, 0)), ("d", order(step + 1, step + 1, 0))], now)
            assert drain(primaries[0], now) == drain(primaries[1], now)
        frames_node, objects_node = rng.choice([(frames, objects), primaries])
        if frames_node.id == 2:
            last = frames_node.log.last_index
            prev = max(0, last + rng.choice([0, 0, 0, -1, -2, 1]))
            number = rng.choice([1, 1, 1, 2, 0])
            view = View(number, 1, frozenset({2, 3})) if number else View(0, 0, frozenset())
            entries = pack_entries([(number, rng.randrange(5), rng.randrange(9), 1) for _ in range(rng.randrange(4))])
            prev_view = frames_node.log.view_at(prev) if rng.random() < 0.8 else 7
            msg = Append(view, rng.choice([1, 1, 1, 3]), prev, max(prev_view, 0), rng.randrange(prev + 3), entries)
        else:
            msg = AppendReply(rng.choice([1, 1, 1, 0, 2]), rng.choice([2, 3]), rng.random() < 0.8,
                              rng.randrange(frames_node.log.last_index + 2), rng.choice([102, 103, 9]))
        frames_node.on_peer_frame(encode(msg), now)
        objects_node.on_message(decode(encode(msg)), now)
        assert drain(frames_node, now) == drain(objects_node, now)
        for a, b in ((frames, objects), primaries):
            assert (a.log.data, a.commit_index, a.view, a.role) == (b.log.data, b.commit_index, b.view, b.role)
            assert [(p.next_index, p.match_index, p.incarnation, list(p.unacked)) for p in a.peers.values()] == \
                [(p.next_index, p.match_index, p.incarnation, list(p.unacked)) for p in b.peers.values()]
        now += 0.001


def test_a_peer_frame_that_does_not_decode_raises_and_changes_nothing():
    rep = make(2)
    good = encode(Append(V1, 1, 0, 0, 0, pack_entries([(1, 10, 0, 1)])))
    for bad in (good[:-1], good[:15] + bytes([0]) + good[16:], encode(AppendReply(1, 1, True, 1, 1))[:-1], b"\x01", b"\x01\x63"):
        with pytest.raises(ProtocolError):
            rep.on_peer_frame(bad, 0.0)
        assert rep.log.last_index == 0 and drain(rep, 0.0) == ([], [], [])
    rep.on_peer_frame(good, 0.0)
    assert rep.log.last_index == 1


def test_orders_past_the_in_flight_limit_are_refused_as_overloaded():
    from dataclasses import replace

    rep = make(1, settings=replace(S, max_pending=2))
    rep.on_client_requests([(c, order(n, 10 + n, 0)) for n, c in enumerate("abc")], 0.0)
    persist, _, replies = drain(rep, 0.0)
    assert persist == [AppendEntries(1, pack_entries([(1, 10, 0, 1), (1, 11, 0, 1)]))]
    assert replies == [("c", ErrorReply(2, ErrorCode.OVERLOADED, 0, "too many orders in flight"))]


def test_a_turn_of_requests_reaching_a_backup_is_redirected_request_by_request():
    rep = make(2)
    rep.on_client_requests([("a", order(1, 10, 0)), ("b", encode(ClientRequest(2, 2, 10)))], 0.0)
    replies = drain(rep, 0.0)[2]
    assert [(c, r.code, r.hint) for c, r in replies] == [("a", ErrorCode.NOT_PRIMARY, 1), ("b", ErrorCode.NOT_PRIMARY, 1)]


def test_an_error_in_a_turn_leaves_the_orders_before_it_in_the_log_with_their_waiters():
    class FailingReads(Replica):
        __slots__ = ()

        def _request(self, client, frame, now):
            raise RuntimeError("a bug in the read path")

    rep = FailingReads(1, S, Recovered(), incarnation=101)
    rep.on_view_reply(ViewReply(V1), 0.0, sent_at=0.0)
    rep.flush(0.0).clear()
    with pytest.raises(RuntimeError):
        rep.on_client_requests([("a", order(1, 10, 0)), ("b", request(2, 2, 10)), ("c", order(3, 11, 0))], 0.0)
    assert unpack_entries(rep.log.slice(1, rep.log.last_index)) == [(1, 10, 0, 1)]
    assert rep.pending_keys == {order_key(10, 0): 1} and rep.waiters == {}
    assert [(start, [client for client, _ in answers], keys) for start, answers, keys in rep.inflight] == [(1, ["a"], [order_key(10, 0)])]


def test_reads_need_a_lease_and_see_committed_state():
    rep = make(1, View(1, 1, frozenset()))
    rep.on_client_request("w", order(1, 4, 7), 0.1)
    drain(rep, 0.1)
    rep.on_client_request("r", encode(ClientRequest(2, 2, 4)), 0.2)
    rep.on_client_request("r2", encode(ClientRequest(3, 2, 5)), 0.2)
    rep.on_client_request("bulk", encode(ClientRequest(4, 3, 0, 10)), 0.2)
    assert drain(rep, 0.2)[2] == [
        ("r", CustomerRecord(2, 4, 7)),
        ("r2", CustomerRecord(3, -1, -1)),
        ("bulk", RecordList(4, ((4, 7),))),
    ]
    rep.on_client_request("late", encode(ClientRequest(5, 2, 4)), 0.5)  # lease (0.4 s from the ping) ran out
    reply = drain(rep, 0.5)[2][0][1]
    assert reply.code == ErrorCode.UNAVAILABLE


def test_bulk_read_limits():
    rep = make(1, View(1, 1, frozenset()), settings=ReplicaSettings(max_bulk_read=10))
    rep.on_client_request("x", encode(ClientRequest(1, 3, 0, 11)), 0.0)
    rep.on_client_request("y", encode(ClientRequest(2, 3, 5, 4)), 0.0)
    codes = [r.code for _, r in drain(rep, 0.0)[2]]
    assert codes == [ErrorCode.TOO_LARGE, ErrorCode.BAD_REQUEST]


def test_backup_appends_in_order_and_applies_up_to_commit():
    rep = make(2)
    entries = pack_entries([(1, 10, 0, 1), (1, 11, 0, 1)])
    rep.on_message(Append(V1, 1, 0, 0, 0, entries), 0.0)
    persist, messages, _ = drain(rep, 0.0)
    assert persist == [AppendEntries(1, entries)]
    assert messages == [(1, AppendReply(1, 2, True, 2, 102))]
    rep.on_message(Append(V1, 1, 2, 1, 2, b""), 0.01)
    rep.on_tick(0.01)
    persist, messages, _ = drain(rep, 0.01)
    assert persist == []  # the commit mark waits a tick for a write to ride along with...
    assert messages == [(1, AppendReply(1, 2, True, 2, 102))]
    assert rep.book.records == {10: 0, 11: 0}
    rep.on_tick(0.02)
    assert drain(rep, 0.02)[0] == [CommitMark(2)]  # ...then goes on its own


def test_backup_acknowledges_before_it_applies_what_the_primary_committed():
    rep = make(2)
    rep.on_message(Append(V1, 1, 0, 0, 0, pack_entries([(1, 10, 0, 1)])), 0.0)
    drain(rep, 0.0)
    rep.on_message(Append(V1, 1, 1, 1, 1, pack_entries([(1, 11, 0, 1)])), 0.01)
    _, messages, _ = drain(rep, 0.01)
    assert messages == [(1, AppendReply(1, 2, True, 2, 102))]
    assert (rep.commit_index, rep.applied_index, rep.book.records) == (1, 0, {})  # not yet applied
    rep.apply_committed()  # what the backup's next tick, or a promotion, does
    assert (rep.applied_index, rep.book.records) == (1, {10: 0})
    rep.apply_committed()
    assert rep.book.records == {10: 0}


def test_a_primary_is_quiet_only_with_everything_committed_applied_and_held_by_every_backup():
    rep = make(1)
    assert rep.quiet()
    rep.on_client_request("a", order(1, 10, 0), 0.01)
    assert not rep.quiet()  # an entry in flight
    drain(rep, 0.01)
    rep.on_message(AppendReply(1, 2, True, 1, 102), 0.02)
    drain(rep, 0.02)
    assert not rep.quiet()  # backup 3 has yet to hold it
    rep.on_message(AppendReply(1, 3, True, 1, 103), 0.02)
    drain(rep, 0.02)
    assert (rep.commit_index, rep.applied_index) == (1, 1)
    assert rep.quiet()
    rep.on_view_reply(ViewReply(V1, frozenset({4})), 0.03, sent_at=0.03)
    drain(rep, 0.03)
    assert not rep.quiet()  # a learner to catch up: its retransmissions are timed by ticks
    rep.on_message(AppendReply(1, 4, True, 1, 104), 0.04)
    assert rep.quiet()


def test_a_backup_is_quiet_once_it_has_applied_all_it_holds():
    rep = make(2)
    rep.on_message(Append(V1, 1, 0, 0, 0, pack_entries([(1, 10, 0, 1)])), 0.0)
    drain(rep, 0.0)
    assert not rep.quiet()  # not committed yet
    rep.on_message(Append(V1, 1, 1, 1, 1, b""), 0.01)
    drain(rep, 0.01)
    assert not rep.quiet()  # committed, applied at the next tick
    rep.on_tick(0.02)
    assert rep.quiet()


def test_a_backup_applies_what_is_committed_at_its_tick():
    rep = make(2)
    rep.on_message(Append(V1, 1, 0, 0, 2, pack_entries([(1, 10, 0, 1), (1, 11, 3, 1)])), 0.0)
    drain(rep, 0.0)
    assert rep.book.records == {}
    rep.on_tick(0.01)
    assert (rep.applied_index, rep.book.records) == (2, {10: 0, 11: 3})


def test_promoted_backup_applies_its_committed_entries_before_serving():
    rep = make(2)
    rep.on_message(Append(V1, 1, 0, 0, 1, pack_entries([(1, 10, 4, 1), (1, 11, 0, 1)])), 0.0)
    drain(rep, 0.0)
    v2 = View(2, 2, frozenset({3}))
    rep.on_view_reply(ViewReply(v2), 0.5, sent_at=0.5)
    assert (rep.applied_index, rep.book.records) == (1, {10: 4})
    assert rep.pending_keys == {order_key(11, 0): 2}  # only the uncommitted entry is in flight
    rep.on_client_request("o", order(8, 10, 4), 0.5)  # a retry of a committed order: answered
    assert drain(rep, 0.5)[2] == [("o", LaptopInfo(8, 10, 4, 1, 1, 2))]
    rep.on_message(AppendReply(2, 3, True, 2, 103), 0.51)  # entry 2, which no client here waits on, commits
    assert drain(rep, 0.51)[2] == [] and rep.commit_index == 2
    assert rep.pending_keys == {} and rep.waiters == {}  # and is no longer in flight


def test_a_retry_waiting_on_an_entry_of_the_previous_primary_gets_that_primarys_engineer():
    """The reply packed when the retry came in says this node accepted the order; the entry
    says node 1 did, so the answer is built again from the entry's engineer."""
    rep = make(2)
    rep.on_message(Append(V1, 1, 0, 0, 1, pack_entries([(1, 10, 4, 1), (1, 11, 0, 1)])), 0.0)
    drain(rep, 0.0)
    rep.on_view_reply(ViewReply(View(2, 2, frozenset({3}))), 0.5, sent_at=0.5)
    rep.on_client_request("retry", order(9, 11, 0), 0.5)  # entry 2 is in flight: wait with it
    assert drain(rep, 0.5)[2] == [] and rep.log.last_index == 2
    rep.on_message(AppendReply(2, 3, True, 2, 103), 0.51)
    assert drain(rep, 0.51)[2] == [("retry", LaptopInfo(9, 11, 0, 1, 1, 2))]
    assert rep.pending_keys == {} and rep.waiters == {} and rep.ops == 1


def test_backup_answers_the_appends_of_one_turn_with_one_cumulative_reply():
    rep = make(2)
    rep.on_message(Append(V1, 1, 0, 0, 0, pack_entries([(1, 10, 0, 1)])), 0.0)
    rep.on_message(Append(V1, 1, 1, 1, 0, pack_entries([(1, 11, 0, 1)])), 0.0)
    rep.on_message(Append(V1, 1, 0, 0, 0, pack_entries([(1, 10, 0, 1)])), 0.0)  # a late duplicate of the first
    _, messages, _ = drain(rep, 0.0)
    # ok(2) replaces ok(1); the duplicate's ok(1) vouches for less than what was already sent,
    # so it is a reply of its own rather than a replacement that would hide index 2
    assert messages == [(1, AppendReply(1, 2, True, 2, 102)), (1, AppendReply(1, 2, True, 1, 102))]
    rep.on_message(Append(V1, 1, 5, 1, 0, pack_entries([(1, 12, 0, 1)])), 0.01)  # a gap
    rep.on_message(Append(V1, 1, 2, 1, 0, pack_entries([(1, 12, 0, 1)])), 0.01)
    _, messages, _ = drain(rep, 0.01)
    assert messages == [(1, AppendReply(1, 2, False, 3, 102)), (1, AppendReply(1, 2, True, 3, 102))]


def test_a_cumulative_reply_frees_every_append_it_covers():
    settings = ReplicaSettings(heartbeat=0.05, lease=0.4, failure_timeout=0.5, retransmit=0.1, batch_max_entries=4,
                               snapshot_every=1000, max_inflight_batches=2)
    view = View(1, 1, frozenset({2}))
    rep = make(1, view, settings=settings)  # its first heartbeat (prev 0) is in flight
    rep.on_client_request("c1", order(1, 11, 0), 0.01)
    assert [m.entries for _, m in drain(rep, 0.01)[1]] == [pack_entries([(1, 11, 0, 1)])]  # two in flight now
    rep.on_client_request("c2", order(2, 12, 0), 0.01)
    assert drain(rep, 0.01)[1] == []  # the window is full: entry 2 waits
    rep.on_message(AppendReply(1, 2, True, 1, 102), 0.02)  # answers the heartbeat and append 1
    _, messages, replies = drain(rep, 0.02)
    assert [m.entries for _, m in messages] == [pack_entries([(1, 12, 0, 1)])]
    assert [client for client, _ in replies] == ["c1"]
    rep.on_client_request("c3", order(3, 13, 0), 0.03)
    # both earlier appends are answered, so only append 2 is in flight: entry 3 goes at once
    assert [m.entries for _, m in drain(rep, 0.03)[1]] == [pack_entries([(1, 13, 0, 1)])]


def test_backup_with_a_gap_says_which_index_it_needs():
    rep = make(2)
    rep.on_message(Append(V1, 1, 5, 1, 0, pack_entries([(1, 1, 1, 1)])), 0.0)
    assert drain(rep, 0.0)[1] == [(1, AppendReply(1, 2, False, 1, 102))]


def test_backup_ignores_appends_from_a_node_that_is_not_its_primary():
    rep = make(2)
    rep.on_message(Append(V1, 3, 0, 0, 0, pack_entries([(1, 1, 1, 3)])), 0.0)
    assert drain(rep, 0.0) == ([], [], [])


def test_backup_fences_an_older_view():
    rep = make(2, View(3, 3, frozenset({2})))
    rep.on_message(Append(V1, 1, 0, 0, 0, pack_entries([(1, 1, 1, 1)])), 0.0)
    persist, messages, _ = drain(rep, 0.0)
    assert persist == []
    assert messages == [(1, AppendReply(3, 2, False, 1, 102))]


def test_backup_truncates_a_conflicting_suffix_back_to_its_commit():
    rep = make(2)
    rep.on_message(Append(V1, 1, 0, 0, 1, pack_entries([(1, 1, 0, 1), (1, 2, 0, 1), (1, 3, 0, 1)])), 0.0)
    drain(rep, 0.0)
    assert rep.commit_index == 1
    v2 = View(2, 3, frozenset({2}))
    rep.on_message(Append(v2, 3, 3, 2, 1, b""), 0.1)  # new primary's entry 3 is from view 2
    persist, messages, _ = drain(rep, 0.1)
    assert persist == [ViewMark(2), TruncateFrom(2)]
    assert messages == [(3, AppendReply(2, 2, False, 2, 102))]
    assert rep.log.last_index == 1


def test_primary_backs_up_when_a_backup_needs_earlier_entries():
    rep = make(1, View(1, 1, frozenset({2})))
    for i in range(3):
        rep.on_client_request(i, order(i, i, 0), 0.0)
    drain(rep, 0.0)
    rep.on_message(AppendReply(1, 2, False, 2, 102), 0.01)
    _, messages, _ = drain(rep, 0.01)
    assert messages == [(2, Append(View(1, 1, frozenset({2})), 1, 1, 1, 0, pack_entries([(1, 1, 0, 1), (1, 2, 0, 1)])))]


def test_deposed_primary_steps_down_and_redirects_waiting_clients():
    rep = make(1)
    rep.on_client_request("a", order(1, 10, 0), 0.0)
    drain(rep, 0.0)
    rep.on_view_reply(ViewReply(View(2, 2, frozenset({3}))), 0.1, sent_at=0.1)
    _, _, replies = drain(rep, 0.1)
    assert rep.role is Role.LEARNER
    assert replies == [("a", ErrorReply(1, ErrorCode.NOT_PRIMARY, 2, "primary changed"))]


def test_new_primary_syncs_backups_before_serving_reads():
    # Node 2 holds entry 1 uncommitted (it may have been acknowledged by the old primary).
    rep = make(2)
    rep.on_message(Append(V1, 1, 0, 0, 0, pack_entries([(1, 5, 9, 1)])), 0.0)
    drain(rep, 0.0)
    v2 = View(2, 2, frozenset({3}))
    rep.on_view_reply(ViewReply(v2), 0.5, sent_at=0.5)
    _, messages, _ = drain(rep, 0.5)
    assert messages == [(3, Append(v2, 2, 1, 1, 0, b""))]
    rep.on_client_request("r", encode(ClientRequest(7, 2, 5)), 0.5)
    assert drain(rep, 0.5)[2] == []  # parked until entry 1 is committed in view 2
    rep.on_message(AppendReply(2, 3, True, 1, 103), 0.51)
    assert drain(rep, 0.51)[2] == [("r", CustomerRecord(7, 5, 9))]


def test_learner_catches_up_then_is_proposed_and_counted():
    rep = make(1, View(1, 1, frozenset()))
    rep.on_client_request("a", order(1, 1, 1), 0.0)
    drain(rep, 0.0)
    rep.on_view_reply(ViewReply(View(1, 1, frozenset()), frozenset({2})), 0.05, sent_at=0.05)
    _, messages, _ = drain(rep, 0.05)
    assert messages == [(2, Append(View(1, 1, frozenset()), 1, 1, 1, 1, b""))]
    rep.on_message(AppendReply(1, 2, False, 1, 102), 0.06)
    _, messages, _ = drain(rep, 0.06)
    assert messages == [(2, Append(View(1, 1, frozenset()), 1, 0, 0, 1, pack_entries([(1, 1, 1, 1)])))]
    rep.on_message(AppendReply(1, 2, True, 1, 102), 0.07)
    rep.on_tick(0.07)
    assert rep.make_ping().add == ((2, 102),)
    # From now on the learner's ack is required for commits.
    rep.on_client_request("b", order(2, 1, 2), 0.08)
    assert drain(rep, 0.08)[2] == []
    rep.on_message(AppendReply(1, 2, True, 2, 102), 0.09)
    assert [c for c, _ in drain(rep, 0.09)[2]] == ["b"]


def test_a_refusal_delayed_behind_a_later_ack_does_not_drop_a_proposed_learner():
    """The network reorders: a learner refuses an append that overtook the one before it, then
    takes both and acknowledges; the refusal arrives last.  It is stale (the same process has
    acknowledged those entries since), so the learner stays proposed and counted: the view
    service may be admitting it at this very moment, and a commit without it would leave an
    in-sync member without a committed entry."""
    rep = make(1, View(1, 1, frozenset()))
    rep.on_client_request("a", order(1, 1, 1), 0.0)
    drain(rep, 0.0)
    rep.on_view_reply(ViewReply(View(1, 1, frozenset()), frozenset({2})), 0.05, sent_at=0.05)
    drain(rep, 0.05)
    rep.on_message(AppendReply(1, 2, True, 1, 102), 0.06)
    rep.on_tick(0.06)
    assert rep.make_ping().add == ((2, 102),)
    rep.on_client_requests([("b", order(2, 2, 0)), ("c", order(3, 3, 0))], 0.07)
    drain(rep, 0.07)
    rep.on_message(AppendReply(1, 2, True, 3, 102), 0.08)
    assert [c for c, _ in drain(rep, 0.08)[2]] == ["b", "c"]
    rep.on_message(AppendReply(1, 2, False, 2, 102), 0.09)  # "I need entry 2", sent before the ack of 3
    assert rep.make_ping().add == ((2, 102),) and not rep.make_ping().remove
    rep.on_client_request("d", order(4, 4, 0), 0.1)
    assert drain(rep, 0.1)[2] == []  # still counted: "d" waits for the learner
    rep.on_message(AppendReply(1, 2, True, 4, 102), 0.11)
    assert [c for c, _ in drain(rep, 0.11)[2]] == ["d"]


def test_snapshot_is_taken_on_tick_and_sent_to_a_learner_that_needs_old_entries():
    settings = ReplicaSettings(snapshot_every=2, batch_max_entries=4, lease=0.4)
    rep = make(1, View(1, 1, frozenset()), settings=settings)
    for i in range(3):
        rep.on_client_request(i, order(i, i, 0), 0.0)
    drain(rep, 0.0)
    rep.on_tick(0.01)
    persist, _, _ = drain(rep, 0.01)
    assert isinstance(persist[0], SnapshotRecord) and persist[0].index == 3
    assert rep.log.base_index == 3
    rep.on_view_reply(ViewReply(View(1, 1, frozenset()), frozenset({2})), 0.05, sent_at=0.05)
    drain(rep, 0.05)
    rep.on_message(AppendReply(1, 2, False, 1, 102), 0.06)
    _, messages, _ = drain(rep, 0.06)
    chunk = messages[0][1]
    assert isinstance(chunk, SnapshotChunk) and chunk.snap_index == 3

    learner = make(2, View(1, 1, frozenset()), settings=settings)
    learner.on_message(chunk, 0.07)
    persist, messages, _ = drain(learner, 0.07)
    assert isinstance(persist[-1], SnapshotRecord)
    assert messages == [(1, AppendReply(1, 2, True, 3, 102))]
    assert learner.book.records == rep.book.records


def test_packed_entries_round_trip_and_refuse_what_does_not_fit():
    entries = [(1, -5, 2**31 - 1, 3), (2**32 - 1, 0, -(2**31), 63)]
    block = pack_entries(entries)
    assert len(block) == 32 and count(block) == 2
    assert unpack_entries(block) == entries
    with pytest.raises(ValueError, match=r"^entry 1 \(1, 2147483648, 0, 0\) does not fit"):
        pack_entries([(1, 1, 1, 1), (1, 2**31, 0, 0)])
    with pytest.raises(ValueError, match="entry block of 20 bytes is not a whole number of 16-byte entries"):
        count(block[:20])


def test_packed_log_slices_truncates_and_compacts_by_index():
    log = Log(10, 3)  # entries 11.. follow a snapshot at index 10 from view 3
    for k in range(5):
        log.extend(pack_entries([(4 if k < 3 else 5, 100 + k, k, 1)]))
        assert log.last_index == 11 + k
    assert (log.last_index, log.last_view, log.view_at(10), log.view_at(13), log.view_at(14)) == (15, 5, 3, 4, 5)
    assert log.view_at(9) == -1 and log.view_at(16) == -1  # behind the snapshot / past the end
    assert unpack_entries(log.slice(12, 14)) == [(4, 101, 1, 1), (4, 102, 2, 1), (5, 103, 3, 1)]
    assert log.entry(15) == (5, 104, 4, 1)
    with pytest.raises(IndexError):
        log.entry(10)
    log.truncate_from(14)
    assert log.last_index == 13 and log.last_view == 4
    log.extend(pack_entries([(6, 200, 0, 2)]))
    assert (log.last_index, log.last_view) == (14, 6)
    log.extend(b"")
    assert (log.last_index, log.last_view) == (14, 6)
    log.compact(12)
    assert (log.base_index, log.base_view, log.last_index, log.last_view) == (12, 4, 14, 6)
    assert unpack_entries(log.slice(13, 14)) == [(4, 102, 2, 1), (6, 200, 0, 2)]
    log.compact(14)  # everything in the snapshot: the last entry is the snapshot's
    assert (log.base_index, log.last_index, log.last_view) == (14, 14, 6)
    log.truncate_from(15)  # nothing past the end: no change
    assert (log.last_index, log.last_view) == (14, 6)
    log.reset(30, 8)
    assert (log.last_index, log.last_view, log.view_at(30)) == (30, 8, 8)
    restored = Log(5, 2, pack_entries([(3, 1, 1, 1)]))  # as recovery builds it
    assert (restored.last_index, restored.last_view) == (6, 3)
    with pytest.raises(ValueError, match="whole number of entries"):
        Log(0, 0, b"\x00" * 17)


def test_a_log_slice_asked_again_is_the_same_block_until_the_log_changes():
    """`Log.slice` hands out the block it made (or `extend` received) for the same range again,
    and never one from before a change of the log."""
    log = Log()
    for k in range(3):
        log.extend(bytearray(pack_entries([(1, k, 1, 1)])))
    block = log.slice(2, 3)
    assert log.slice(2, 3) is block and log.slice(1, 3) is not block
    received = pack_entries([(1, 7, 1, 2), (1, 8, 1, 2)])
    log.extend(received)
    assert log.slice(4, 5) is received
    log.truncate_from(5)
    log.extend(pack_entries([(2, 9, 1, 3)]))  # the same index, another entry
    assert unpack_entries(log.slice(4, 5)) == [(1, 7, 1, 2), (2, 9, 1, 3)]
    assert unpack_entries(log.slice(5, 5)) == [(2, 9, 1, 3)]
    log.truncate_from(5)
    log.extend(bytearray(pack_entries([(2, 10, 1, 1)])))  # index 5 again, another entry
    assert unpack_entries(log.slice(5, 5)) == [(2, 10, 1, 1)]
    log.extend(bytearray(pack_entries([(2, 11, 1, 1)])))  # mutable: copied on the next slice
    assert unpack_entries(log.slice(6, 6)) == [(2, 11, 1, 1)]
    log.reset(6, 2)
    log.extend(bytearray(pack_entries([(3, 12, 1, 1)])))
    assert unpack_entries(log.slice(7, 7)) == [(3, 12, 1, 1)]


def test_book_applies_an_order_only_above_the_customers_last():
    book = OrderBook()
    accepted = book.apply_all(pack_entries([
        (1, 7, 1, 2),
        (1, 8, 1, 3),
        (1, 7, 1, 3),  # a repeat of customer 7's last order: no change, the first engineer stands
        (1, 7, 2, 1),
        (1, 7, 1, 3),  # older than customer 7's last order now: not applied
        (1, -4, -9, 5),  # negative ids are ordinary ids
    ]))
    assert accepted == [2, 3, 2, 1, STALE, 5]
    assert book.records == {7: 2, 8: 1, -4: -9}
    assert book.engineers == {7: 1, 8: 3, -4: 5}
    assert book.apply((2, 8, 0, 1)) == STALE and book.records[8] == 1


def test_book_snapshot_round_trips_and_stays_one_record_per_customer():
    book = OrderBook()
    for n in range(3000):  # customers interleaved: new ones arrive between updates of old ones
        book.apply_all(pack_entries([(1, n % 7 - 3, n, 1 + n % 63), (1, 100 + n // 500, n, 2)]))
    data = book.serialize()
    customers = len(book.records)
    assert customers == 7 + 6
    assert len(data) == 5 + 8 + customers * (4 + 4 + 1)  # per customer, however many orders
    copy = OrderBook.deserialize(data)
    assert (copy.records, copy.engineers) == (book.records, book.engineers)
    assert copy.digest() == book.digest()
    assert copy.apply_all(pack_entries([(2, 0, 2999, 9), (2, 0, 3000, 9)])) == [book.engineers[0], 9]
    assert OrderBook.deserialize(copy.serialize()).records == {**book.records, 0: 3000}


def _snapshot_v1(records: dict[int, int], orders: dict[tuple[int, int], int]) -> bytes:
    """A snapshot in the previous format: customers, last orders, then every applied order."""
    keys = array("Q", [order_key(c, o) for c, o in orders])
    return b"".join((b"LFSM1", len(records).to_bytes(8, "little"), array("i", records).tobytes(),
                     array("i", records.values()).tobytes(), len(orders).to_bytes(8, "little"),
                     keys.tobytes(), bytes(orders.values())))


def test_book_reads_a_snapshot_of_the_previous_format():
    """A data dir written before orders were kept per customer keeps its state."""
    data = _snapshot_v1({7: 2, -3: 5}, {(7, 1): 4, (7, 2): 1, (-3, 5): 6, (-3, 1): 2})
    book = OrderBook.deserialize(data)
    assert book.records == {7: 2, -3: 5}
    assert book.engineers == {7: 1, -3: 6}  # the engineer of each customer's last order
    with pytest.raises(ValueError, match="missing from the order table"):
        OrderBook.deserialize(_snapshot_v1({7: 2}, {(7, 1): 4}))


def test_snapshot_listing_a_customer_twice_is_refused():
    book = OrderBook()
    book.apply_all(pack_entries([(1, 7, 1, 2)]))
    forged = b"LFSM2" + (2).to_bytes(8, "little") + array("i", [7, 7]).tobytes() + array("i", [1, 2]).tobytes() + bytes([2, 2])
    assert book.serialize() == b"LFSM2" + (1).to_bytes(8, "little") + array("i", [7]).tobytes() + array("i", [1]).tobytes() + bytes([2])
    with pytest.raises(ValueError, match="twice"):
        OrderBook.deserialize(forged)


def test_older_order_of_a_customer_is_refused_without_being_appended():
    rep = make(1, View(1, 1, frozenset()))
    rep.on_client_request("a", order(1, 10, 3), 0.01)
    drain(rep, 0.01)
    rep.on_client_request("old", order(2, 10, 2), 0.02)
    persist, _, replies = drain(rep, 0.02)
    assert persist == [] and rep.log.last_index == 1
    assert [(c, r.code) for c, r in replies] == [("old", ErrorCode.STALE_ORDER)]
    assert "already has order 3" in replies[0][1].message
    assert rep.book.records == {10: 3}


def test_orders_of_one_customer_committed_out_of_order_refuse_the_older():
    """Two orders of a customer in flight at once, the later number first in the log: the
    earlier one is answered as stale when its entry commits, and changes nothing."""
    rep = make(1)
    rep.on_client_request("six", order(1, 10, 6), 0.01)
    rep.on_client_request("five", order(2, 10, 5), 0.01)
    drain(rep, 0.01)
    for b in (2, 3):
        rep.on_message(AppendReply(1, b, True, 2, 100 + b), 0.02)
    replies = dict(drain(rep, 0.02)[2])
    assert replies["six"] == LaptopInfo(1, 10, 6, 1, 1, 1)
    assert replies["five"].code == ErrorCode.STALE_ORDER
    assert rep.book.records == {10: 6} and rep.pending_keys == {} and rep.waiters == {}
    assert rep.ops == 1


def test_a_turn_committed_in_part_answers_the_orders_committed_and_keeps_the_rest_waiting():
    """A turn's orders wait together; the backups may acknowledge the first of its appends
    (batch_max_entries = 4) before the second, and the commit then ends inside the turn."""
    rep = make(1)
    rep.on_client_requests([(f"c{n}", order(n, 10 + n, 0)) for n in range(6)], 0.01)
    _, messages, _ = drain(rep, 0.01)
    assert sorted({m.prev_index + count(m.entries) for _, m in messages}) == [4, 6]
    for b in (2, 3):
        rep.on_message(AppendReply(1, b, True, 4, 100 + b), 0.02)
    assert [c for c, _ in drain(rep, 0.02)[2]] == ["c0", "c1", "c2", "c3"]
    assert sorted(rep.pending_keys.values()) == [5, 6]
    for b in (2, 3):
        rep.on_message(AppendReply(1, b, True, 6, 100 + b), 0.03)
    assert drain(rep, 0.03)[2] == [("c4", LaptopInfo(4, 14, 0, 1, 1, 1)), ("c5", LaptopInfo(5, 15, 0, 1, 1, 1))]
    assert rep.pending_keys == {} and not rep.inflight and rep.ops == 6


def test_an_order_found_stale_in_its_own_turn_is_refused_and_the_others_of_the_turn_answered():
    rep = make(1)
    rep.on_client_requests([("six", order(1, 10, 6)), ("five", order(2, 10, 5)), ("other", order(3, 11, 0))], 0.01)
    drain(rep, 0.01)
    for b in (2, 3):
        rep.on_message(AppendReply(1, b, True, 3, 100 + b), 0.02)
    replies = drain(rep, 0.02)[2]
    assert [c for c, _ in replies] == ["six", "five", "other"]
    assert replies[0][1] == LaptopInfo(1, 10, 6, 1, 1, 1) and replies[2][1] == LaptopInfo(3, 11, 0, 1, 1, 1)
    assert replies[1][1].code == ErrorCode.STALE_ORDER
    assert rep.book.records == {10: 6, 11: 0} and rep.ops == 2


def test_a_primary_again_answers_a_retry_waiting_on_its_own_entry_of_an_earlier_view():
    """Node 1 appended an order as primary of view 1 and was deposed before it committed; primary
    again in view 3, it holds the entry as one of a previous primaryship: nobody of this one
    waits on it, until the client's retry does."""
    rep = make(1)
    rep.on_client_request("a", order(1, 10, 0), 0.0)
    drain(rep, 0.0)
    rep.on_view_reply(ViewReply(View(2, 2, frozenset({1, 3}))), 0.1, sent_at=0.1)
    assert drain(rep, 0.1)[2] == [("a", ErrorReply(1, ErrorCode.NOT_PRIMARY, 2, "primary changed"))]
    rep.on_view_reply(ViewReply(View(3, 1, frozenset({2, 3}))), 0.2, sent_at=0.2)
    drain(rep, 0.2)
    rep.on_client_request("a-retry", order(7, 10, 0), 0.2)
    assert drain(rep, 0.2)[0] == [] and rep.log.last_index == 1  # it waits on entry 1
    for b in (2, 3):
        rep.on_message(AppendReply(3, b, True, 1, 100 + b), 0.3)
    assert drain(rep, 0.3)[2] == [("a-retry", LaptopInfo(7, 10, 0, 1, 1, 1))]
    assert rep.pending_keys == {} and rep.waiters == {} and not rep.inflight and rep.ops == 1


def test_a_deposed_primary_redirects_its_turns_orders_and_the_retries_waiting_with_them():
    rep = make(2)
    rep.on_message(Append(V1, 1, 0, 0, 0, pack_entries([(1, 10, 4, 1)])), 0.0)
    drain(rep, 0.0)
    rep.on_view_reply(ViewReply(View(2, 2, frozenset({3}))), 0.5, sent_at=0.5)
    rep.on_client_requests([("new", order(1, 11, 0)), ("retry", order(2, 10, 4)), ("again", order(3, 11, 0))], 0.5)
    drain(rep, 0.5)
    rep.on_view_reply(ViewReply(View(3, 3, frozenset({2}))), 0.6, sent_at=0.6)
    replies = drain(rep, 0.6)[2]
    assert sorted((c, r.code, r.hint) for c, r in replies) == [
        ("again", ErrorCode.NOT_PRIMARY, 3), ("new", ErrorCode.NOT_PRIMARY, 3), ("retry", ErrorCode.NOT_PRIMARY, 3)]
    assert rep.pending_keys == {} and rep.waiters == {} and not rep.inflight


def test_restart_recovers_committed_state_from_storage():
    book = OrderBook()
    book.apply((1, 1, 5, 1))
    rec = Recovered(snapshot_index=1, snapshot_view=1, snapshot_data=book.serialize(), entries=bytearray(pack_entries([(1, 2, 6, 1), (1, 3, 7, 1)])), commit_index=2, view_number=1, fresh=False)
    rep = Replica(1, S, rec, incarnation=9)
    assert rep.commit_index == 2 and rep.applied_index == 2
    assert rep.book.records == {1: 5, 2: 6}
    assert rep.make_ping().durable is True
    assert rep.make_ping().last_index == 3


@pytest.mark.parametrize("payload", [b"", b"\x00", b"garbage"])
def test_snapshot_with_bad_bytes_is_discarded(payload):
    learner = make(2, View(1, 1, frozenset()))
    learner.on_message(SnapshotChunk(View(1, 1, frozenset()), 1, 3, 1, 0, len(payload), payload), 0.0)
    assert drain(learner, 0.0)[1] == []
    assert learner.commit_index == 0


def test_node_that_never_heard_from_the_view_service_ignores_appends():
    # A wiped node knows no view; adopting a deposed primary's old view from its append would
    # let that primary count it as a backup.  Only the view service gives a first view.
    rep = Replica(3, S, Recovered(), incarnation=5)
    rep.on_message(Append(V1, 1, 0, 0, 0, pack_entries([(1, 1, 1, 1)])), 0.0)
    assert drain(rep, 0.0) == ([], [], [])
    assert rep.role is Role.IDLE and rep.log.last_index == 0


def test_primary_stops_counting_a_backup_that_restarted():
    rep = make(1, View(1, 1, frozenset({2})))
    rep.on_client_request("a", order(1, 1, 1), 0.0)
    drain(rep, 0.0)
    rep.on_message(AppendReply(1, 2, False, 1, 102), 0.01)  # first contact: incarnation 102
    drain(rep, 0.01)
    rep.on_message(AppendReply(1, 2, True, 1, 999), 0.02)  # a new process answers for node 2
    assert drain(rep, 0.02)[2] == []  # not committed on its word
    assert rep.make_ping().remove == frozenset({2})


def test_a_stalled_primary_does_not_blame_its_backups_but_a_silent_backup_is_proposed_for_removal():
    rep = make(1, View(1, 1, frozenset({2})))
    rep.on_tick(0.0)
    rep.on_client_request("a", order(1, 1, 1), 0.0)
    drain(rep, 0.0)
    rep.on_tick(5.0)  # our own loop did not run for 5 s: the backup's silence proves nothing
    assert rep.make_ping().remove == frozenset()
    for t in (5.2, 5.4, 5.6, 5.8, 6.0):  # running normally now, and still no answer
        rep.on_tick(t)
    assert rep.make_ping().remove == frozenset({2})


def test_an_idle_spell_does_not_make_the_next_order_look_like_lag():
    """Lag counts from when a backup falls behind, not from its last progress: after seconds of
    idle heartbeats, the tick that runs right after the first new order must not find the backups
    lagging (they were proposed for removal in the bench runs that found this) nor resend."""
    rep = make(1)
    rep.on_client_request("a", order(1, 1, 1), 0.0)
    drain(rep, 0.0)
    for backup in (2, 3):
        rep.on_message(AppendReply(1, backup, True, 1, 100 + backup), 0.001)
    drain(rep, 0.001)
    t = 0.0
    while t < 3.0:  # idle: ticks and heartbeats, every heartbeat answered, nothing new
        t = round(t + 0.01, 3)
        rep.on_tick(t)
        for peer, msg in drain(rep, t)[1]:
            rep.on_message(AppendReply(1, peer, True, msg.prev_index, 100 + peer), t)
    rep.on_client_request("b", order(2, 2, 1), 3.0)
    rep.on_tick(3.001)  # a tick in the same turn, before the appends have even left
    assert rep.make_ping().remove == frozenset()
    persist, messages, _ = drain(rep, 3.001)
    assert [(peer, m.prev_index, len(m.entries)) for peer, m in sorted(messages, key=lambda x: x[0])] == [(2, 1, 16), (3, 1, 16)]
    for k in range(1, 13):  # backups that really stop answering are still found out, after 1 s
        rep.on_tick(3.001 + k / 10)
        drain(rep, 3.001 + k / 10)
    assert rep.make_ping().remove == frozenset({2, 3})
