"""Operation histories in the format of Jepsen's histories (`history.jsonl`).

One JSON object a line, ordered by time:

    {"process": P, "type": "invoke"|"ok"|"fail"|"info", "f": "order"|"read",
     "customer": C, "value": V, "time": T}

* every client operation is an `invoke` record and one completion record of the same process;
* `value`: the order number for `order` (on invoke and completion); for `read`, null on the
  invoke, the last order read on `ok` (-1: the customer has no record), null on `fail`/`info`;
* `fail` only when the operation surely did not take effect (the node rejected it as a bad
  request, or it was never sent); `info` when its outcome is unknown -- it timed out at its
  deadline, or the load stopped while it was outstanding: it may have taken effect, or may
  still take effect later;
* `time`: `time.monotonic_ns()` -- one clock for every process on the machine, so histories of
  several worker processes merge by time;
* a process has at most one operation outstanding.  After an `info` the process is considered
  crashed (its operation may still be in flight), so the session that issued it continues under
  a fresh process id, as Jepsen does;
* faults are recorded by process `"nemesis"` as `info` records, `f` = `start-<fault>` when it
  begins and `stop-<fault>` when it is healed, `value` = what it did (`{"nodes": [...], ...}`).

Bulk reads (request type 3) are not recorded: the checker models one customer's record.
The invoke time is taken before the first attempt is sent and the completion time after the
outcome is known (`OpResult.start_ns` / `end_ns`), so the real operation lies inside the
recorded interval -- the property a linearizability checker relies on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadgen.client import Op, OpResult, error_reason
from protocol.messages import CustomerRecord, RequestType

__all__ = [
    "F_ORDER", "F_READ", "NEMESIS", "HistoryError", "HistoryRecorder", "Operation", "ProcessIds",
    "classify", "load_history", "merge_records", "pair_operations", "write_history",
]

F_ORDER = "order"
F_READ = "read"
NEMESIS = "nemesis"
TYPES = ("invoke", "ok", "fail", "info")

_F_OF = {int(RequestType.ORDER): F_ORDER, int(RequestType.READ): F_READ}
# Reasons after which the operation surely did not take effect: the node refused to run it, or
# it could not even be encoded.  Everything else that is not a success may have happened.
_SURELY_NOT = frozenset({"BAD_REQUEST", "TOO_LARGE", "PROTOCOL", "STALE_ORDER", "invalid request"})

# A record in memory: (time, process, type, f, customer, value) -- a tuple is a fifth of a dict.
Record = tuple[int, Any, str, str, Any, Any]


class HistoryError(ValueError):
    """A history that does not parse or breaks the format's rules (message names the line)."""


def classify(result: OpResult) -> str:
    """ok, fail (surely not applied) or info (unknown)."""
    if result.ok:
        return "ok"
    if result.attempts == 0 or error_reason(result.error) in _SURELY_NOT:
        return "fail"
    return "info"


class ProcessIds:
    """Fresh process ids for worker `worker` of `procs`: first + worker + procs * k, so the
    workers of one run never share an id."""

    def __init__(self, first: int, worker: int = 0, procs: int = 1) -> None:
        self._next = first + worker
        self._step = procs

    def fresh(self) -> int:
        pid = self._next
        self._next += self._step
        return pid


class HistoryRecorder:
    """Collects records in memory (tuples); `records()` gives them as dicts."""

    def __init__(self) -> None:
        self._records: list[Record] = []

    def __len__(self) -> int:
        return len(self._records)

    def add(self, time_ns: int, process: Any, type_: str, f: str, customer: Any, value: Any) -> None:
        self._records.append((int(time_ns), process, type_, f, customer, value))

    def record_op(self, process: int, op: Op, result: OpResult) -> str | None:
        """The invoke and completion records of one finished operation; returns the completion
        type (None for request types the history does not model)."""
        req_type, customer, number = op
        f = _F_OF.get(int(req_type))
        if f is None:
            return None
        kind = classify(result)
        start = result.start_ns
        end = max(result.end_ns, start)
        if f == F_ORDER:
            self.add(start, process, "invoke", f, customer, number)
            self.add(end, process, kind, f, customer, number)
        else:
            value = None
            if kind == "ok":
                reply = result.reply
                value = reply.last_order if isinstance(reply, CustomerRecord) else None
                if value is None:  # an ok read without a record reply cannot be judged
                    kind = "info"
            self.add(start, process, "invoke", f, customer, None)
            self.add(end, process, kind, f, customer, value)
        return kind

    def nemesis(self, time_ns: int, f: str, value: Any) -> None:
        self.add(time_ns, NEMESIS, "info", f, None, value)

    def raw(self) -> list[Record]:
        return self._records

    def extend_raw(self, records: Iterable[Record]) -> None:
        self._records.extend(records)


def merge_records(*parts: Iterable[Record]) -> list[Record]:
    """All records ordered by time; a stable sort keeps each process's invoke before its
    completion even when both carry the same nanosecond."""
    merged: list[Record] = []
    for part in parts:
        merged.extend(part)
    merged.sort(key=lambda r: r[0])
    return merged


def to_dict(rec: Record) -> dict[str, Any]:
    time_ns, process, type_, f, customer, value = rec
    out: dict[str, Any] = {"process": process, "type": type_, "f": f}
    if process != NEMESIS:
        out["customer"] = customer
    out["value"] = value
    out["time"] = time_ns
    return out


def write_history(records: Iterable[Record], path: str | Path) -> int:
    """Write records (already ordered) as JSON lines; returns the number written."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(to_dict(rec), separators=(", ", ": ")))
            fh.write("\n")
            n += 1
    return n


def load_history(path: str | Path) -> list[dict[str, Any]]:
    """Parse a history.jsonl; raises HistoryError naming the line of the first bad record."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise HistoryError(f"{path}:{lineno}: not JSON: {exc}") from None
            if not isinstance(rec, dict):
                raise HistoryError(f"{path}:{lineno}: not a JSON object")
            rec["_line"] = lineno
            out.append(rec)
    return out


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation: its invoke and completion records paired.

    `value`: order number (order) or the value read (read, ok only).  `end` is None for an
    operation whose outcome is unknown (info, or no completion record at all)."""

    index: int  # position among the history's operations (by invoke)
    process: Any
    f: str
    customer: int
    value: Any
    type: str  # ok | fail | info
    start: int
    end: int | None
    line: int | None = None  # line of the invoke record in history.jsonl, when known
    end_line: int | None = None

    def describe(self) -> str:
        if isinstance(self.process, str) and self.process.startswith("final state"):
            return f"{self.process}: customer {self.customer} -> {self.value}"
        what = (f"order {self.value}" if self.f == F_ORDER
                else f"read -> {self.value}" if self.type == "ok" else "read")
        return f"process {self.process} {what} of customer {self.customer} ({self.type})"


def _int(rec: dict, key: str, where: str) -> int:
    v = rec.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise HistoryError(f"{where}: {key!r} must be an integer, got {v!r}")
    return v


def pair_operations(records: Iterable[dict[str, Any]], source: str = "history"
                    ) -> tuple[list[Operation], list[dict[str, Any]]]:
    """Pair invokes with completions.  Returns (client operations in invoke order, nemesis
    records).  Enforces the format: known types and functions, integer times, at most one
    operation outstanding per process, a completion matching its invoke."""
    ops: list[Operation] = []
    nemesis: list[dict[str, Any]] = []
    open_: dict[Any, tuple[int, dict[str, Any]]] = {}
    slots: list[dict[str, Any] | None] = []
    for n, rec in enumerate(records, 1):
        line = rec.get("_line", n)
        where = f"{source}:{line}"
        process = rec.get("process")
        if process == NEMESIS:
            nemesis.append(rec)
            continue
        type_ = rec.get("type")
        if type_ not in TYPES:
            raise HistoryError(f"{where}: unknown type {type_!r}")
        f = rec.get("f")
        if f not in (F_ORDER, F_READ):
            raise HistoryError(f"{where}: unknown f {f!r} (order or read)")
        time_ns = _int(rec, "time", where)
        customer = _int(rec, "customer", where)
        if type_ == "invoke":
            if f == F_ORDER:
                _int(rec, "value", where)
            if process in open_:
                prev = open_[process][1]
                raise HistoryError(f"{where}: process {process!r} invokes while its operation from "
                                   f"line {prev.get('_line', '?')} is still outstanding")
            slot = len(slots)
            slots.append({"process": process, "f": f, "customer": customer,
                          "value": rec.get("value"), "start": time_ns, "line": line})
            open_[process] = (slot, rec)
            continue
        if process not in open_:
            raise HistoryError(f"{where}: {type_} of process {process!r} without an invoke")
        slot, inv = open_.pop(process)
        if inv.get("f") != f or inv.get("customer") != customer:
            raise HistoryError(f"{where}: completion does not match its invoke on line "
                               f"{inv.get('_line', '?')}")
        if time_ns < inv["time"]:
            raise HistoryError(f"{where}: completes before its invoke")
        s = slots[slot]
        assert s is not None
        s["type"] = type_
        s["end"] = None if type_ == "info" else time_ns
        s["end_line"] = line
        if f == F_READ:
            s["value"] = rec.get("value") if type_ == "ok" else None
            if type_ == "ok":
                _int(rec, "value", where)
        else:
            if rec.get("value") != s["value"]:
                raise HistoryError(f"{where}: order completes with value {rec.get('value')!r}, "
                                   f"invoked with {s['value']!r}")
            _int(rec, "value", where)
    for i, s in enumerate(slots):
        assert s is not None
        ops.append(Operation(i, s["process"], s["f"], s["customer"], s["value"],
                             s.get("type", "info"), s["start"], s.get("end"), s["line"],
                             s.get("end_line")))
    return ops, nemesis


def iter_dicts(records: Iterable[Record]) -> Iterator[dict[str, Any]]:
    for rec in records:
        yield to_dict(rec)
