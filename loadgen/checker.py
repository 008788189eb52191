"""The history checker: did the cluster keep its promises?

Two properties, checked per customer (a customer's record is an independent register, so the
history splits per customer -- linearizability is compositional):

(a) **Linearizability** of each customer's record: there must be one total order of the
    operations, consistent with real time (an operation that completed before another began comes
    first), in which every read returns the last order before it.  The model is the service's:
    an order `(c, n)` sets c's record to n unless order n of c was already applied (orders are
    idempotent), a read returns the record (-1 when there is none, or the initial value the run
    recorded).  `ok` operations must be in the order; `info` orders (outcome unknown) may be in it
    anywhere after their invocation, or not at all; `fail` operations and reads that did not
    complete are left out.
(b) **No acknowledged order is lost**: the final state read from every live node after the run
    (all faults healed, the cluster settled) is added as one more read per node and customer,
    after everything else -- so it must show the last acknowledged order, or an order that may
    legitimately have come after it.  Live nodes that settled must also agree with each other.

The search is Wing & Gong's, with Lowe's just-in-time linearization and memoisation as in
Porcupine: walk the operations in time order, try to linearize any operation invoked before the
earliest pending completion, remember every (set of linearized operations, state) already
explored and never explore it twice, backtrack when a completion is reached whose operation could
not be placed.  Pruning before the search: unobserved `info` orders (nobody read their value and
their number is unique) can be left out without changing the answer.  A global time limit bounds
it all: a customer whose search runs out of time makes the verdict `unknown`, never a guess.

When a customer's history is not linearizable the checker shrinks it to a small set of operations
that still cannot be ordered (a prefix first, then delta debugging; every read keeps the orders
that wrote its value, so the witness never degenerates into "a value nobody wrote") and prints it.

Verdicts and `lfctl check` exit codes: valid 0, invalid 1, unknown 2.
"""

from __future__ import annotations

import json
import time
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loadgen.history import (
    F_ORDER,
    F_READ,
    HistoryError,
    Operation,
    load_history,
    pair_operations,
)

__all__ = ["CheckResult", "Violation", "check_history", "check_run", "is_linearizable",
           "EXIT_CODES"]

EXIT_CODES = {"valid": 0, "invalid": 1, "unknown": 2}
DEFAULT_TIME_LIMIT = 60.0
SHRINK_TIME_LIMIT = 20.0  # at most this much of the time limit goes to shrinking witnesses
NO_RECORD = -1
_CHECK_EVERY = 2048  # search steps between clock reads


class _Timeout(Exception):
    pass


# --------------------------------------------------------------------------- the search


def is_linearizable(ops: Sequence[Operation], initial: int = NO_RECORD,
                    deadline: float | None = None) -> bool | None:
    """Whether one customer's operations are linearizable w.r.t. the record model.

    `ops`: orders (ok or info) and ok reads of ONE customer (anything else is ignored).
    True / False, or None when `deadline` (time.monotonic()) passed first.

    After `prune`, a history whose orders all have distinct numbers (every run of `lfctl load`)
    is decided exactly in O(n log n) by the zone test (`zone_conflict`); anything else goes to
    the general search (`wgl_linearizable`)."""
    return _decide(prune(ops, initial), initial, deadline)


def _decide(pruned: Sequence[Operation], initial: int, deadline: float | None) -> bool | None:
    if _zone_applicable(pruned, initial):
        return zone_conflict(pruned, initial) is None
    return wgl_linearizable(pruned, initial, deadline)


def wgl_linearizable(ops: Sequence[Operation], initial: int = NO_RECORD,
                     deadline: float | None = None) -> bool | None:
    """The general search (see the module docstring); None when the deadline passed."""
    try:
        return _search(ops, initial, deadline)
    except _Timeout:
        return None


# --------------------------------------------------------------------------- the zone test
#
# For a register whose every write has a distinct value (here: distinct order numbers of one
# customer), Gibbons & Korach's characterisation (as stated by Golab, Li & Shah, "Analyzing
# consistency properties for fun and profit", PODC 2011) decides linearizability in O(n log n):
# group each write with the reads that returned its value (a "cluster"; reads of the initial
# value belong to a virtual write at -infinity).  With f = the earliest completion and s = the
# latest invocation in the cluster, its zone is [f, s] ("forward", f < s: the cluster must own
# that stretch of the order, from its write to its last read) or [s, f] ("backward": all its
# operations overlap).  The history is linearizable iff no read completes before its write is
# invoked, no two forward zones overlap, and no backward zone lies strictly inside a forward
# zone.  Equal timestamps count as concurrent, as in the search.


@dataclass(frozen=True)
class ZoneConflict:
    why: str
    ops: tuple[Operation, ...]


_NEG_INF = float("-inf")


def _zone_applicable(ops: Sequence[Operation], initial: int) -> bool:
    seen: set[Any] = set()
    for op in ops:
        if op.end is None:
            return False  # an order of unknown outcome still in the history
        if op.f == F_ORDER:
            if op.value in seen or op.value == initial:
                return False
            seen.add(op.value)
    return True


def zone_conflict(ops: Sequence[Operation], initial: int = NO_RECORD) -> ZoneConflict | None:
    """None if linearizable, else the reason and the operations of the conflicting clusters.
    Preconditions (`_zone_applicable`): every op completed, order values distinct and not the
    initial value."""
    writes = {op.value: op for op in ops if op.f == F_ORDER}
    clusters: dict[Any, list[Operation]] = {}
    for op in ops:
        if op.f != F_READ:
            continue
        v = op.value
        if v in writes:
            w = writes[v]
            if op.end < w.start:  # type: ignore[operator]
                return ZoneConflict(f"the read returned {v} before order {v} was even sent",
                                    (w, op))
            clusters.setdefault(v, [w]).append(op)
        elif v == initial:
            clusters.setdefault(_INITIAL, []).append(op)
        else:
            return ZoneConflict(f"the read returned {v}, which no order of this customer wrote",
                                (op,))
    for v, w in writes.items():
        clusters.setdefault(v, [w])
    forward: list[tuple[float, float, Any]] = []
    backward: list[tuple[float, float, Any]] = []
    for v, members in clusters.items():
        s = max(op.start for op in members)
        f = _NEG_INF if v is _INITIAL else min(op.end for op in members)  # type: ignore[type-var]
        if f < s:
            forward.append((f, s, v))
        else:
            backward.append((s, f, v))
    forward.sort(key=lambda z: (z[0], z[1]))
    for a, b in zip(forward, forward[1:]):
        if b[0] < a[1]:
            return ZoneConflict(_overlap_why(a[2], b[2], initial), tuple(clusters[a[2]] + clusters[b[2]]))
    if forward and backward:
        starts = [z[0] for z in forward]
        for s_b, f_b, v in backward:
            k = bisect_left(starts, s_b) - 1  # the forward zone with the largest f < s_b
            if k >= 0 and f_b < forward[k][1]:
                fz = forward[k]
                return ZoneConflict(_inside_why(v, fz[2], initial),
                                    tuple(clusters[fz[2]] + clusters[v]))
    return None


class _Initial:
    def __repr__(self) -> str:
        return "initial"


_INITIAL = _Initial()


def _name(v: Any, initial: int) -> str:
    return f"the initial value {initial}" if v is _INITIAL else f"order {v}"


def _overlap_why(a: Any, b: Any, initial: int) -> str:
    return (f"{_name(a, initial)} and {_name(b, initial)} would each have to stay the customer's "
            "record over overlapping stretches of time")


def _inside_why(inner: Any, outer: Any, initial: int) -> str:
    return (f"{_name(inner, initial)} happened entirely while {_name(outer, initial)} had to "
            "remain the customer's record")


def _search(ops: Sequence[Operation], initial: int, deadline: float | None) -> bool:
    ops = [op for op in ops if _relevant(op)]
    n = len(ops)
    if n == 0:
        return True
    # Entries: 2*i is op i's call, 2*i+1 its return (ops of unknown outcome have none).
    # Calls sort before returns at the same instant: equal timestamps count as concurrent.
    events = []
    for i, op in enumerate(ops):
        events.append((op.start, 0, 2 * i))
        if op.end is not None:
            events.append((op.end, 1, 2 * i + 1))
    events.sort()
    size = 2 * n + 1  # entry ids 0..2n-1, head sentinel = 2n
    head = 2 * n
    nxt = [-1] * size
    prv = [-1] * size
    last = head
    for _, _, e in events:
        nxt[last] = e
        prv[e] = last
        last = e
    nxt[last] = -1

    is_order = [op.f == F_ORDER for op in ops]
    value = [op.value for op in ops]
    has_ret = [op.end is not None for op in ops]
    required = sum(has_ret)

    applied: Counter[int] = Counter()
    linearized = 0
    state = initial
    cache: set[tuple[int, int]] = set()
    # (op, state before it, forced): a read that matches the current state is placed at once
    # and never branched on -- placing it later cannot help, since it changes nothing and
    # every op still to place returns after it was invoked.
    stack: list[tuple[int, int, bool]] = []
    entry = nxt[head]
    steps = 0
    while True:
        if required == 0:
            return True
        steps += 1
        if deadline is not None and steps % _CHECK_EVERY == 0 and time.monotonic() > deadline:
            raise _Timeout
        if entry & 1 == 0:  # a call (never -1: its low bit is set): try to linearize its op
            i = entry >> 1
            v = value[i]
            if is_order[i]:
                new_state = state if applied[v] else v
                ok = True
            else:
                new_state = state
                ok = state == v
            if ok:
                new_lin = linearized | (1 << i)
                key = (new_lin, new_state)
                if key not in cache:
                    cache.add(key)
                    stack.append((i, state, not is_order[i]))
                    state = new_state
                    linearized = new_lin
                    if is_order[i]:
                        applied[v] += 1
                    # lift: unlink the call and (if any) the return
                    c = entry
                    nxt[prv[c]] = nxt[c]
                    if nxt[c] != -1:
                        prv[nxt[c]] = prv[c]
                    if has_ret[i]:
                        r = c + 1
                        nxt[prv[r]] = nxt[r]
                        if nxt[r] != -1:
                            prv[nxt[r]] = prv[r]
                        required -= 1
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
            continue
        # A return (or the end of the list, -1, whose low bit is set too): the op it belongs to
        # could not be placed before it -- undo the last choice.
        while True:
            if not stack:
                return False
            i, state, forced = stack.pop()
            linearized &= ~(1 << i)
            if is_order[i]:
                applied[value[i]] -= 1
            c = 2 * i
            if has_ret[i]:
                r = c + 1
                nxt[prv[r]] = r
                if nxt[r] != -1:
                    prv[nxt[r]] = r
                required += 1
            nxt[prv[c]] = c
            if nxt[c] != -1:
                prv[nxt[c]] = c
            if not forced:
                break
        entry = nxt[c]


def _relevant(op: Operation) -> bool:
    if op.f == F_ORDER:
        return op.type in ("ok", "info")
    return op.f == F_READ and op.type == "ok" and op.end is not None


def prune(ops: Sequence[Operation], initial: int = NO_RECORD) -> list[Operation]:
    """Simplify one customer's operations without changing the answer.

    * failed operations and reads without a value go (they constrain nothing);
    * an `info` order whose value nobody read, whose number no other order uses and which is
      not the initial value goes: placing it anywhere -- or nowhere -- leaves every read's value
      as it was;
    * an `info` order whose value some read returned (and no other order wrote) MUST have taken
      effect, before the earliest such read completed: it becomes a required operation
      completing then.  Only required operations are left for the search, which is what keeps it
      fast (an operation of unknown outcome is a candidate at every step of the search)."""
    kept = [op for op in ops if _relevant(op)]
    first_read_end: dict[int, int] = {}
    for op in kept:
        if op.f == F_READ:
            prev = first_read_end.get(op.value)
            if prev is None or op.end < prev:  # type: ignore[operator]
                first_read_end[op.value] = op.end  # type: ignore[assignment]
    order_values = Counter(op.value for op in kept if op.f == F_ORDER)
    out = []
    for op in kept:
        if op.f == F_ORDER and op.type == "info" and order_values[op.value] == 1 \
                and op.value != initial:
            read_end = first_read_end.get(op.value)
            if read_end is None:
                continue
            if read_end >= op.start:
                op = replace(op, end=read_end)
        out.append(op)
    return out


# --------------------------------------------------------------------------- results


@dataclass
class Violation:
    kind: str  # "linearizability" | "lost-order" | "diverged"
    customer: int
    ops: list[Operation]  # the smallest set found that shows it (sorted by start)
    message: str
    minimal: bool = True  # False: shrinking ran out of time

    def to_json(self, t0: int = 0) -> dict[str, Any]:
        return {
            "kind": self.kind, "customer": self.customer, "message": self.message,
            "minimal": self.minimal,
            "operations": [_op_json(op, t0) for op in self.ops],
        }


def _op_json(op: Operation, t0: int) -> dict[str, Any]:
    return {"process": op.process, "f": op.f, "customer": op.customer, "value": op.value,
            "type": op.type, "invoke_ms": _ms(op.start, t0),
            "complete_ms": None if op.end is None else _ms(op.end, t0),
            "line": op.line, "end_line": op.end_line}


def _ms(t: int, t0: int) -> float:
    return round((t - t0) / 1e6, 3)


@dataclass
class CheckResult:
    verdict: str  # valid | invalid | unknown
    operations: int = 0  # client operations in the history
    checked_ops: int = 0  # operations that went into searches (after pruning)
    customers: int = 0
    nodes: list[int] = field(default_factory=list)  # nodes whose final state was checked
    violations: list[Violation] = field(default_factory=list)
    unknown_customers: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    t0: int = 0  # time origin for printing (first record of the history)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict, "exit_code": self.exit_code,
            "operations": self.operations, "checked_operations": self.checked_ops,
            "customers": self.customers, "final_state_nodes": self.nodes,
            "counts": self.counts,
            "violations": [v.to_json(self.t0) for v in self.violations],
            "unknown_customers": self.unknown_customers[:100],
            "unknown_customer_count": len(self.unknown_customers),
            "notes": self.notes, "elapsed_s": round(self.elapsed_s, 3),
        }

    def format_text(self, max_violations: int = 5) -> str:
        lines = [f"verdict: {self.verdict.upper()}  ({self.operations} operations of "
                 f"{self.customers} customers, {self.checked_ops} searched, final state of "
                 f"node(s) {', '.join(map(str, self.nodes)) or 'none'}, {self.elapsed_s:.2f} s)"]
        if self.counts:
            lines.append("  " + ", ".join(f"{k} {v}" for k, v in self.counts.items()))
        for note in self.notes:
            lines.append(f"  note: {note}")
        for v in self.violations[:max_violations]:
            lines.append("")
            lines.append(f"{v.kind} violation, customer {v.customer}: {v.message}")
            lines.append(f"  the {len(v.ops)} operation(s) involved"
                         f"{'' if v.minimal else ' (shrinking ran out of time: not minimal)'}, "
                         "times in ms from the start of the history:")
            for op in v.ops:
                end = "  ...unknown" if op.end is None else f"{_ms(op.end, self.t0):12.3f}"
                where = ""
                if op.line is not None:
                    where = f"  history.jsonl lines {op.line}-{op.end_line}" if op.end_line \
                        else f"  history.jsonl line {op.line}"
                lines.append(f"    [{_ms(op.start, self.t0):12.3f} .. {end}]  "
                             f"{op.describe()}{where}")
        if len(self.violations) > max_violations:
            lines.append(f"... and {len(self.violations) - max_violations} more violation(s)")
        if self.unknown_customers:
            shown = ", ".join(map(str, self.unknown_customers[:10]))
            more = "..." if len(self.unknown_customers) > 10 else ""
            lines.append(f"unknown: the search for customer(s) {shown}{more} ran out of time")
        return "\n".join(lines)


# --------------------------------------------------------------------------- checking


def final_reads(final_state: dict[str, Any] | None, customers: Iterable[int], t_after: int
                ) -> tuple[dict[int, list[Operation]], list[int], list[str], list[Violation]]:
    """One read per (settled node, customer) after everything else, plus divergence between
    settled nodes.  Returns (reads per customer, nodes used, notes, divergence violations)."""
    per: dict[int, list[Operation]] = defaultdict(list)
    notes: list[str] = []
    violations: list[Violation] = []
    if not final_state:
        notes.append("no final state recorded: only linearizability of the history was checked")
        return per, [], notes, violations
    nodes_doc = final_state.get("nodes") or {}
    used = []
    for key in sorted(nodes_doc, key=lambda k: int(k)):
        doc = nodes_doc[key]
        if not doc.get("settled", True):
            notes.append(f"node {key} left out of the final-state check: "
                         f"{doc.get('why', 'it did not settle')}")
            continue
        used.append(int(key))
    for why in final_state.get("skipped", []) or []:
        notes.append(why)
    customers = sorted(set(customers))
    t = max(t_after, int(final_state.get("time", 0) or 0)) + 1
    for k, node in enumerate(used):
        records = nodes_doc[str(node)].get("records") or {}
        for c in customers:
            v = records.get(str(c), NO_RECORD)
            per[c].append(Operation(-1, f"final state of node {node}", F_READ, c, int(v), "ok",
                                    t + 2 * k, t + 2 * k + 1))
    if len(used) > 1:
        for c in customers:
            vals = {node: (nodes_doc[str(node)].get("records") or {}).get(str(c), NO_RECORD)
                    for node in used}
            if len(set(vals.values())) > 1:
                shown = ", ".join(f"node {n}: {v}" for n, v in vals.items())
                violations.append(Violation("diverged", c, [op for op in per[c]],
                                            f"settled nodes disagree on the record ({shown})"))
    return per, used, notes, violations


def check_history(records: Sequence[dict[str, Any]], *, final_state: dict[str, Any] | None = None,
                  initial_state: dict[str, Any] | None = None,
                  time_limit: float = DEFAULT_TIME_LIMIT, shrink: bool = True,
                  source: str = "history") -> CheckResult:
    """Check a parsed history (dicts as in history.jsonl).  Raises HistoryError on a history
    that breaks the format."""
    began = time.monotonic()
    deadline = began + time_limit
    ops, _nemesis = pair_operations(records, source)
    times = [r.get("time") for r in records if isinstance(r.get("time"), int)]
    t0 = min(times) if times else 0
    t_last = max(times) if times else 0
    by_customer: dict[int, list[Operation]] = defaultdict(list)
    for op in ops:
        by_customer[op.customer].append(op)
    initial = {int(k): int(v) for k, v in ((initial_state or {}).get("records") or {}).items()}
    scope = set(by_customer)
    if final_state and final_state.get("customers") is not None:
        scope |= {int(c) for c in final_state["customers"]}
    if final_state and final_state.get("customer_range") is not None:
        lo, hi = final_state["customer_range"]
        scope |= set(range(int(lo), int(hi)))
    reads, used, notes, violations = final_reads(final_state, scope, t_last)
    counts = Counter(f"{op.f} {op.type}" for op in ops)
    result = CheckResult("valid", operations=len(ops), customers=len(scope), nodes=used,
                         notes=notes, t0=t0, counts=dict(sorted(counts.items())))
    result.violations.extend(violations)
    # Small customers first: more customers get a verdict before a time limit hits.
    order = sorted(scope, key=lambda c: len(by_customer.get(c, ())))
    failing: list[tuple[int, list[Operation]]] = []
    for c in order:
        init = initial.get(c, NO_RECORD)
        cops = prune(by_customer.get(c, []) + reads.get(c, []), init)
        result.checked_ops += len(cops)
        verdict = _decide(cops, init, deadline)
        if verdict is None:
            result.unknown_customers.append(c)
            # Keep going: a later customer may still show a violation within the time left?
            # No -- the clock is spent; the rest is unknown too.
            result.unknown_customers.extend(x for x in order[order.index(c) + 1:])
            break
        if not verdict:
            failing.append((c, cops))
    shrink_deadline = time.monotonic() + min(SHRINK_TIME_LIMIT, max(1.0, time_limit))
    for c, _pruned in failing:
        init = initial.get(c, NO_RECORD)
        # Shrink the operations as recorded (not as pruned: pruning may give an info order a
        # deadline that only the whole history justifies), so the witness stands on its own.
        cops = [op for op in by_customer.get(c, []) + reads.get(c, []) if _relevant(op)]
        witness, minimal = (shrink_witness(cops, init, shrink_deadline) if shrink
                            else (cops, False))
        result.violations.append(_describe(c, witness, init, minimal))
    result.violations.sort(key=lambda v: (v.kind == "diverged", len(v.ops), v.customer))
    if result.violations:
        result.verdict = "invalid"
    elif result.unknown_customers:
        result.verdict = "unknown"
    result.elapsed_s = time.monotonic() - began
    return result


def _describe(customer: int, ops: list[Operation], initial: int, minimal: bool) -> Violation:
    ops = sorted(ops, key=lambda op: (op.start, op.end or 0))
    finals = [op for op in ops if isinstance(op.process, str) and op.process.startswith("final")]
    acked = [op for op in ops if op.f == F_ORDER and op.type == "ok"]
    reads = [op for op in ops if op.f == F_READ and op not in finals]
    kind = "lost-order" if finals else "linearizability"
    msg = "no order of these operations is consistent with real time and the record's semantics"
    if finals and acked:
        fin = finals[0]
        lost = [o for o in acked if o.value != fin.value]
        names = ", ".join(str(o.value) for o in lost) or ", ".join(str(o.value) for o in acked)
        msg = (f"the {fin.process} shows {fin.value}, but acknowledged order {names} "
               "must be visible after the run: an acknowledged order was lost")
    elif len(reads) == 1:
        r = reads[0]
        later = [o for o in acked if o.end is not None and o.end < r.start and o.value != r.value]
        writers = [o for o in ops if o.f == F_ORDER and o.value == r.value]
        if r.value != initial and not writers:
            msg = f"the read returned {r.value}, which no order of this customer wrote"
        elif later:
            msg = (f"the read returned {r.value} (stale): order {later[-1].value} was acknowledged "
                   "before the read began and a newer value must be visible")
    return Violation(kind, customer, ops, msg, minimal)


# --------------------------------------------------------------------------- shrinking


def _closure(ops: Sequence[Operation], pool: Sequence[Operation], initial: int) -> list[Operation]:
    """`ops` plus every order in `pool` that wrote a value some read in `ops` returned."""
    chosen = {id(op): op for op in ops}
    needed = {op.value for op in ops if op.f == F_READ and op.value != initial}
    for op in pool:
        if op.f == F_ORDER and op.value in needed and id(op) not in chosen:
            chosen[id(op)] = op
    keep = set(chosen)
    return [op for op in pool if id(op) in keep]


def shrink_witness(ops: Sequence[Operation], initial: int, deadline: float
                   ) -> tuple[list[Operation], bool]:
    """A small subset of a non-linearizable history that is still not linearizable.
    Returns (subset, minimal) -- minimal False when the deadline cut the shrinking short."""
    pool = list(ops)

    def bad(subset: list[Operation]) -> bool:
        if time.monotonic() > deadline:
            raise _Timeout
        return is_linearizable(subset, initial, deadline) is False

    current = sorted(pool, key=lambda op: op.start)
    try:
        # 1. the shortest failing prefix (by invocation), found by bisection
        lo, hi = 1, len(current)
        while lo < hi:
            mid = (lo + hi) // 2
            cand = _closure(current[:mid], pool, initial)
            if bad(cand):
                hi = mid
            else:
                lo = mid + 1
        prefix = _closure(current[:hi], pool, initial)
        if bad(prefix):
            current = prefix
        # 2. delta debugging: drop chunks, then single operations, while it stays failing
        chunk = max(1, len(current) // 2)
        while True:
            changed = False
            i = 0
            while i < len(current):
                drop = {id(op) for op in current[i:i + chunk]}
                cand = _closure([op for op in current if id(op) not in drop], pool, initial)
                if len(cand) < len(current) and bad(cand):
                    current = cand
                    changed = True
                else:
                    i += chunk
            if chunk == 1 and not changed:
                break
            if not changed:
                chunk = max(1, chunk // 2)
        return current, True
    except _Timeout:
        return current, False


# --------------------------------------------------------------------------- run directories


def load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def check_run(target: str | Path, *, time_limit: float = DEFAULT_TIME_LIMIT,
              final_state: bool = True) -> CheckResult:
    """Check a run directory (history.jsonl, final_state.json, initial_state.json) or a
    history.jsonl file (the JSON files next to it are used when present)."""
    path = Path(target)
    hist = path / "history.jsonl" if path.is_dir() else path
    if not hist.is_file():
        raise FileNotFoundError(f"no history at {hist}")
    base = hist.parent
    records = load_history(hist)
    fs = load_json(base / "final_state.json") if final_state else None
    init = load_json(base / "initial_state.json")
    return check_history(records, final_state=fs, initial_state=init, time_limit=time_limit,
                         source=hist.name)


__all__ += ["HistoryError", "prune", "shrink_witness", "load_json"]
