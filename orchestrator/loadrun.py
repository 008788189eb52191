"""`lfctl load`, `lfctl check`, `lfctl report`, `lfctl partition` and `lfctl heal`.

`lfctl load` runs one load (closed or open loop, `--procs` processes; `loadgen.worker`), with a
nemesis during it when asked (`orchestrator.nemesis`), then heals everything, lets the cluster
settle, reads every live node's final state, and writes a run directory (`loadgen.runs`): results,
history, `.hgrm` spectra, report PNG, summary, logs.  With `--check` it ends with the checker
(`loadgen.checker`) and exits with its verdict: 0 valid, 1 invalid, 2 unknown.

Exit codes otherwise: 0 when every operation succeeded (or, under a nemesis, when the load ran:
failures are expected and only the checker can judge them), 1 when operations failed or the load
could not run, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

from orchestrator import procs
from orchestrator.argtypes import positive_int

if TYPE_CHECKING:  # the rest is imported when a command runs: every `lfctl` builds this parser
    from loadgen.worker import RunOutput
    from orchestrator.nemesis import Nemesis
    from protocol.config import ClusterConfig

DEFAULT_RUNS_DIR = "runs"
DEFAULT_TIME_LIMIT = 60.0  # = loadgen.checker.DEFAULT_TIME_LIMIT
FAULTS = ("kill-primary", "kill-backup", "pause", "restart", "wipe", "partition")  # = nemesis.FAULTS
OPEN_LOOP_CUSTOMERS = 100
FRESH_BASE_TRIES = 20


# --------------------------------------------------------------------------- arguments


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction 0..1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction 0..1, got {text}")
    return value


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("closed loop (the original workloads)")
    g.add_argument("--customers", type=positive_int, metavar="C",
                   help="closed loop: C concurrent customers; open loop: customers to draw from "
                        f"(default {OPEN_LOOP_CUSTOMERS})")
    g.add_argument("--orders", type=positive_int, metavar="K", help="operations per customer (closed loop)")
    g.add_argument("--type", type=int, choices=(1, 2, 3), default=1,
                   help="closed loop request type: 1 order, 2 read, 3 bulk read")
    g.add_argument("--max-duration", type=_positive_float, default=300.0, metavar="S",
                   help="closed loop: stop after S seconds whatever is left (default 300)")
    g = p.add_argument_group("open loop (constant rate, latency from each request's intended start)")
    g.add_argument("--rate", type=_positive_float, metavar="R", help="requests per second")
    g.add_argument("--duration", type=_positive_float, metavar="S", help="seconds of requests")
    g.add_argument("--reads", type=_fraction, default=0.5, metavar="F",
                   help="fraction of reads, the rest are orders (default 0.5)")
    g.add_argument("--max-inflight", type=positive_int, default=1000, metavar="N",
                   help="requests outstanding at most; later ones wait, and their wait counts as "
                        "latency (default 1000)")
    g.add_argument("--drain", type=float, default=None, metavar="S",
                   help="after the last request is due, wait at most S s for outstanding ones "
                        "(default: the client deadline, at most 30)")
    g = p.add_argument_group("both")
    g.add_argument("--procs", type=positive_int, default=1, metavar="P",
                   help="spread the clients over P processes (histograms are merged)")
    g.add_argument("--seed", type=int, default=0, help="seeds the workload and the nemesis (default 0)")
    g.add_argument("--customer-base", type=int, default=None, metavar="B",
                   help="first customer id (default 0; the open loop moves to a fresh range when "
                        "0.. already has records)")
    g.add_argument("--op-deadline", type=_positive_float, default=None, metavar="S",
                   help="an operation ends unknown (info) after S s (default: the config's client deadline)")
    g.add_argument("--nemesis", metavar="FAULTS",
                   help=f"faults to inject during the load, comma-separated: {','.join(FAULTS)}")
    g.add_argument("--nemesis-interval", type=_positive_float, default=3.0, metavar="S",
                   help="about one fault every S s, each held ~S/2 s (default 3)")
    g.add_argument("--check", action="store_true",
                   help="check the history and final state at the end; exit 0 valid, 1 invalid, 2 unknown")
    g.add_argument("--time-limit", type=_positive_float, default=DEFAULT_TIME_LIMIT, metavar="S",
                   help=f"checker time limit (default {DEFAULT_TIME_LIMIT:g})")
    g.add_argument("--settle-timeout", type=_positive_float, default=60.0, metavar="S",
                   help="after the load, wait at most S s for every node to rejoin and catch up")
    g.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR",
                   help="where run directories go (default ./runs)")
    g.add_argument("--no-run-dir", action="store_true",
                   help="write no run directory (and record no history): just the figures")
    g.add_argument("--json", action="store_true", help="print results.json instead of the summary")


def add_commands(add: Any) -> None:
    """Register check, report, partition and heal (`add(name, func, help)` from cli.py)."""
    p = add("check", cmd_check, "check a run's history: linearizable per customer, and no "
                                "acknowledged order missing from the final state (exit 0 valid, 1 invalid, 2 unknown)")
    p.add_argument("run", nargs="?", metavar="RUN_DIR",
                   help="a run directory or a history.jsonl (default: runs/latest)")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR")
    p.add_argument("--time-limit", type=_positive_float, default=DEFAULT_TIME_LIMIT, metavar="S")
    p.add_argument("--no-final-state", action="store_true", help="ignore final_state.json")
    p.add_argument("--json", action="store_true")

    p = add("report", cmd_report, "(re)draw a run's report.png and print its summary")
    p.add_argument("run", nargs="?", metavar="RUN_DIR", help="default: runs/latest")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR")

    p = add("partition", cmd_partition, "cut nodes apart: `lfctl partition '1,2|3'` (or `1,2 3`); "
                                        "the view service stays with the first group")
    p.add_argument("groups", nargs="+", metavar="GROUPS", help="node groups: 1,2|3")
    p.add_argument("--view-service-side", type=positive_int, default=1, metavar="N",
                   help="the group (1-based) the view service can still reach (default 1)")
    p.add_argument("--json", action="store_true")

    p = add("heal", cmd_heal, "end every partition")
    p.add_argument("--json", action="store_true")


# --------------------------------------------------------------------------- lfctl load


def _cli() -> Any:
    from orchestrator import cli

    return cli


def cmd_load(args: argparse.Namespace) -> int:
    from loadgen import runs
    from loadgen.checker import check_history
    from loadgen.history import NEMESIS, merge_records, write_history
    from loadgen.worker import LoadSpec, run_spec
    from orchestrator.nemesis import Nemesis, parse_faults, read_final_state, settle

    cli = _cli()
    mode = _validate(args, cli)
    cl = cli.resolve_cluster(args)
    cli.require_running(cl)
    cfg: ClusterConfig = cl.cfg
    faults = parse_faults(args.nemesis) if args.nemesis else []
    quiet = args.json
    record = not args.no_run_dir

    def note(msg: str) -> None:
        print(msg, file=sys.stderr if quiet else sys.stdout, flush=True)

    # Which customers: 0..C-1 (the original workload's), unless the load places orders and some
    # of them already have records -- an earlier run's order numbers are at or below their last
    # orders, so they would be answered as retries or refused as stale, and the check's model
    # would be wrong -- then ids nobody has used yet, found by bulk reads.  Read-only loads keep
    # 0..C-1: the recorded initial state is all they need.
    count = args.customers or (OPEN_LOOP_CUSTOMERS if mode == "open" else 0)
    base = args.customer_base if args.customer_base is not None else 0
    writes = (mode == "open" and args.reads < 1.0) or (mode == "closed" and args.type == 1)
    initial: dict[int, int] = {}
    if record or writes:
        initial = _read_range(cfg, base, count)
        if initial and writes and args.customer_base is None:
            rng = random.Random(args.seed)
            for _ in range(FRESH_BASE_TRIES):
                candidate = rng.randrange(1, (2**31 - 1 - count) // 1000) * 1000
                if not _read_range(cfg, candidate, count):
                    note(f"customers {base}..{base + count - 1} already have records (an earlier "
                         f"run): this run uses customers {candidate}..{candidate + count - 1}")
                    base, initial = candidate, {}
                    break
        if initial and writes:
            note(f"warning: {len(initial)} of customers {base}..{base + count - 1} already have "
                 "records; orders at or below a customer's last are answered as retries or "
                 "refused as STALE_ORDER, and the check can report violations that are not "
                 "(choose an unused --customer-base)")
    customers = list(range(base, base + count))
    deadline_s = args.op_deadline if args.op_deadline is not None else cfg.client.deadline_ms / 1000.0
    drain = args.drain if args.drain is not None else min(deadline_s + 1.0, 30.0)
    spec = LoadSpec(
        mode=mode, config=cfg, customer_ids=customers, orders=args.orders or 0, req_type=args.type,
        rate=args.rate or 0.0, duration=args.duration or 0.0, read_fraction=args.reads,
        max_inflight=args.max_inflight, drain=drain, procs=args.procs, seed=args.seed,
        max_duration=args.max_duration, record_history=record, keep_samples=record,
        deadline=args.op_deadline,
    )
    try:
        spec.validate()
    except ValueError as exc:
        raise cli.UsageError(str(exc)) from None

    nemesis_records: list[tuple] = []
    nemesis = None
    if faults:
        nemesis = Nemesis(cfg, faults, interval=args.nemesis_interval, seed=args.seed,
                          record=lambda t, f, v: nemesis_records.append((t, NEMESIS, "info", f, None, v)),
                          log=note)
    timers: list[threading.Timer] = []

    def on_start(t_ns: int) -> None:
        if nemesis is not None:
            nemesis.start()
            if mode == "open":  # faults only while requests are due, not during the drain
                timer = threading.Timer(max(0.0, t_ns / 1e9 - time.monotonic()) + spec.duration,
                                        nemesis.request_stop)
                timer.daemon = True
                timer.start()
                timers.append(timer)

    what = (f"open loop: {spec.rate:g} requests/s for {spec.duration:g} s, {spec.read_fraction:.0%} reads, "
            f"{count} customers" if mode == "open"
            else f"closed loop: {count} customers x {spec.orders} type-{spec.req_type} operations")
    note(f"{what}, {spec.procs} process(es)" + (f", nemesis {','.join(faults)} (seed {args.seed})" if faults else ""))
    output: RunOutput | None = None
    try:
        output = run_spec(spec, on_start=on_start)
    finally:
        for timer in timers:
            timer.cancel()
        if nemesis is not None:
            nemesis.stop()
    for err in output.errors:
        cli.warn(err)

    settled = None
    final_state = None
    if record:
        if faults or args.check:
            settled = settle(cfg, timeout=args.settle_timeout)
            if not settled.converged:
                note(f"warning: the cluster did not settle within {args.settle_timeout:g} s: {settled.why}")
        else:
            settled = settle(cfg, timeout=min(args.settle_timeout, 10.0))
        final_state = read_final_state(cfg, range(base, base + count), settled)

    doc = results_json(output, mode, args, faults, nemesis, customers, settled)
    check = None
    # Made only now, so an interrupted load leaves no empty run behind `runs/latest`.
    run_dir = runs.new_run_dir(args.runs_dir) if record else None
    if run_dir is not None:
        assert final_state is not None
        history = merge_records(output.collector.history.raw() if output.collector.history else [],
                                nemesis_records)
        write_history(history, run_dir / "history.jsonl")
        runs.write_json(run_dir / "initial_state.json",
                        {"customer_range": [base, base + count],
                         "records": {str(c): v for c, v in sorted(initial.items())}})
        runs.write_json(run_dir / "final_state.json", final_state)
        col = output.collector
        col.latency.write_hgrm(run_dir / "latency.hgrm")
        for name in ("order", "read"):
            if col.by_f[name].count:
                col.by_f[name].write_hgrm(run_dir / f"latency-{name}.hgrm")
        from loadgen.report import save_samples

        save_samples(run_dir / "samples.npz", col.s_start, col.s_end, col.s_f, col.s_outcome,
                     output.started_ns)
        copy_logs(cl.data_dir, run_dir, cfg.node_ids)
        doc["run_dir"] = str(run_dir)
        if args.check:
            note(f"checking {len(history)} history records (time limit {args.time_limit:g} s)...")
            check = check_history([_as_dict(r) for r in history], final_state=final_state,
                                  initial_state={"records": {str(c): v for c, v in initial.items()}},
                                  time_limit=args.time_limit, source="history.jsonl")
            runs.write_json(run_dir / "check.json", check.to_json())
            doc["check"] = {"verdict": check.verdict, "elapsed_s": round(check.elapsed_s, 3),
                            "violations": len(check.violations)}
        runs.write_json(run_dir / "results.json", doc)
        title = _title(doc)
        try:
            from loadgen.report import render_png, samples_from_npz

            render_png(run_dir / "report.png", samples_from_npz(run_dir / "samples.npz"),
                       nemesis=[_as_dict(r) for r in nemesis_records], title=title,
                       t0_ns=output.started_ns)
        except Exception as exc:  # a plotting problem must not lose the run
            cli.warn(f"could not draw report.png: {type(exc).__name__}: {exc}")
        text = format_summary(doc, check)
        (run_dir / "summary.txt").write_text(text + "\n")
    else:
        text = format_summary(doc, None)
    if args.json:
        print(json.dumps(doc, indent=2, default=str), flush=True)
    else:
        print(text, flush=True)
        if check is not None and check.verdict != "valid":
            print(check.format_text(), flush=True)
    if output.errors:  # a load process failed: whatever the check says, the run is incomplete
        return 1
    if check is not None:
        return check.exit_code
    return 0 if (faults or output.collector.failed == 0) else 1


def _validate(args: argparse.Namespace, cli: Any) -> str:
    from orchestrator.nemesis import parse_faults

    if args.rate is not None or args.duration is not None:
        if args.rate is None or args.duration is None:
            raise cli.UsageError("the open loop needs both --rate R and --duration S")
        if args.orders is not None:
            raise cli.UsageError("--orders is for the closed loop; the open loop runs --rate x --duration requests")
        if args.type != 1:
            raise cli.UsageError("--type is for the closed loop; the open loop mixes orders and reads (--reads F)")
        mode = "open"
    else:
        if args.customers is None or args.orders is None:
            raise cli.UsageError("give --customers C --orders K (closed loop) or --rate R --duration S (open loop)")
        mode = "closed"
    if args.nemesis:
        try:
            parse_faults(args.nemesis)
        except ValueError as exc:
            raise cli.UsageError(str(exc)) from None
    if args.check and args.no_run_dir:
        raise cli.UsageError("--check needs the run directory (drop --no-run-dir)")
    if args.drain is not None and args.drain < 0:
        raise cli.UsageError("--drain must be >= 0 seconds")
    if args.customer_base is not None and not 0 <= args.customer_base < 2**31 - 1:
        raise cli.UsageError("--customer-base must be within 0..2^31-2")
    return mode


def _read_range(cfg: ClusterConfig, base: int, count: int) -> dict[int, int]:
    """The records of customers [base, base+count) (bulk reads, within max_bulk_read each)."""
    from loadgen.client import Client
    from protocol.messages import RecordList

    out: dict[int, int] = {}
    step = max(1, cfg.replication.max_bulk_read)
    with Client(cfg) as client:
        for lo in range(base, base + count, step):
            hi = min(lo + step, base + count)
            res = client.bulk_read(lo, hi)
            if not res.ok or not isinstance(res.reply, RecordList):
                raise _cli().CliError(f"could not read the initial state of customers {lo}..{hi - 1}: {res.error}")
            out.update({int(c): int(o) for c, o in res.reply.records})
    return out


def copy_logs(data_dir: Path, run_dir: Path, node_ids: Any) -> None:
    dest = run_dir / "logs"
    dest.mkdir(exist_ok=True)
    sources = [(data_dir / "supervisor.log", "supervisor.log")]
    for node in node_ids:
        ndir = procs.node_dir(data_dir, node)
        sources += [(ndir / "node.log", f"node-{node}.log"), (ndir / "stderr.log", f"node-{node}.stderr.log")]
    for src, name in sources:
        try:
            if src.is_file():
                shutil.copyfile(src, dest / name)
        except OSError:
            pass


def _as_dict(rec: tuple) -> dict[str, Any]:
    from loadgen.history import to_dict

    return to_dict(rec)


# --------------------------------------------------------------------------- results


def results_json(output: RunOutput, mode: str, args: argparse.Namespace, faults: list[str],
                 nemesis: Nemesis | None, customers: list[int], settled: Any) -> dict[str, Any]:
    from loadgen.worker import F_NAMES

    col = output.collector
    spec = output.spec
    span_ns = (col.last_ns - output.started_ns) if col.last_ns and output.started_ns else 0
    duration = max(span_ns / 1e9, col.duration_s if mode == "closed" else 0.0)
    if mode == "closed":
        duration = col.duration_s or duration
    ok = col.ok
    doc: dict[str, Any] = {
        "schema_version": 1,
        "type": spec.req_type if mode == "closed" else 0,
        "customers": len(customers),
        "orders": spec.orders if mode == "closed" else col.count("order"),
        "operations": col.ok + col.failed,
        "ok": ok,
        "failed": col.failed,
        "duration_s": round(duration, 3),
        "throughput_ops": round(ok / duration, 1) if duration > 0 else 0.0,
        "latency_us": col.latency.summary(),
        "attempts": col.engine_stats.get("attempts", 0),
        "redirects": col.engine_stats.get("redirects", 0),
        "timeouts": col.engine_stats.get("timeouts", 0),
        "errors": dict(sorted(col.errors.items())),
        # beyond LoadResult's keys
        "mode": mode,
        "procs": spec.procs,
        "seed": spec.seed,
        "customer_range": [customers[0], customers[-1] + 1] if customers else [0, 0],
        "outcomes": {k: col.count(outcome=k) for k in ("ok", "fail", "info")},
        "by_f": {name: {"ok": col.count(name, "ok"), "fail": col.count(name, "fail"),
                        "info": col.count(name, "info"), "latency_us": col.by_f[name].summary()}
                 for name in F_NAMES if col.count(name)},
        "service_latency_us": col.service.summary(),
        "started_wall": output.started_ns and round(output.wall_started, 3),
    }
    if mode == "open":
        doc.update({
            "rate": spec.rate, "duration": spec.duration, "read_fraction": spec.read_fraction,
            "requests": int(round(spec.rate * spec.duration)),
            "unsent": max(0, int(round(spec.rate * spec.duration)) - col.issued),
            "max_inflight": spec.max_inflight,
            "schedule_lag_us": col.lag.summary(),
            "latency_measured_from": "intended start",
        })
    else:
        doc["latency_measured_from"] = "first send"
    if nemesis is not None:
        doc["nemesis"] = {"faults": faults, "interval_s": args.nemesis_interval, "seed": args.seed,
                          "events": [e.to_json(output.started_ns) for e in nemesis.events],
                          "skipped": nemesis.skipped, "errors": nemesis.errors}
    if settled is not None:
        doc["settle"] = {"converged": settled.converged, "waited_s": round(settled.waited_s, 3),
                         "why": settled.why}
    if output.errors:
        doc["worker_errors"] = output.errors
    return doc


def _title(doc: dict[str, Any]) -> str:
    if doc["mode"] == "open":
        what = f"open loop {doc['rate']:g}/s for {doc['duration']:g} s ({doc['read_fraction']:.0%} reads)"
    else:
        what = f"closed loop {doc['customers']} customers x {doc['orders']} (type {doc['type']})"
    parts = [f"lfctl load: {what}, {doc['procs']} proc(s), seed {doc['seed']}"]
    if "nemesis" in doc:
        parts.append(f"nemesis {','.join(doc['nemesis']['faults'])}")
    if "check" in doc:
        parts.append(f"check: {doc['check']['verdict'].upper()}")
    lat = doc["latency_us"]
    parts.append(f"\n{doc['ok']} ok, {doc['outcomes']['info']} unknown, {doc['outcomes']['fail']} failed, "
                 f"{doc['throughput_ops']:g} ok ops/s; latency p50 {lat['p50'] / 1000:.2f} ms, "
                 f"p99 {lat['p99'] / 1000:.2f} ms, max {lat['max'] / 1000:.1f} ms")
    return ", ".join(parts[:-1]) + parts[-1]


def _lat_line(lat: dict[str, Any]) -> str:
    from loadgen.stats import SUMMARY_KEYS

    return "  ".join(f"{k} {lat[k]}" for k in SUMMARY_KEYS if k in lat)


def format_summary(doc: dict[str, Any], check: Any) -> str:
    lines = []
    if doc["mode"] == "open":
        lines.append(f"open loop: {doc['rate']:g} requests/s for {doc['duration']:g} s "
                     f"({doc['requests']} requests, {doc['read_fraction']:.0%} reads) over "
                     f"{doc['customers']} customers, {doc['procs']} process(es), seed {doc['seed']}")
    else:
        lines.append(f"closed loop: type {doc['type']} ({ {1: 'order', 2: 'read', 3: 'bulk read'}[doc['type']] }), "
                     f"{doc['customers']} customers, orders {doc['orders']}, {doc['procs']} process(es)")
    o = doc["outcomes"]
    unsent = f"  unsent {doc['unsent']}" if doc.get("unsent") else ""
    lines.append(f"operations {doc['operations']}  ok {doc['ok']}  failed {doc['failed']} "
                 f"(fail {o['fail']}, unknown/info {o['info']}){unsent}  in {doc['duration_s']:.2f} s"
                 f"  ->  {doc['throughput_ops']:.1f} ok ops/s")
    lines.append(f"latency us (from {doc['latency_measured_from']}): {_lat_line(doc['latency_us'])}")
    for name, d in doc.get("by_f", {}).items():
        if d["ok"]:
            lat = d["latency_us"]
            lines.append(f"  {name:5}: ok {d['ok']}  p50 {lat['p50']}  p99 {lat['p99']}  "
                         f"p999 {lat['p999']}  max {lat['max']}")
    if doc["mode"] == "open":
        lines.append(f"service time us (from first send): {_lat_line(doc['service_latency_us'])}")
        lag = doc["schedule_lag_us"]
        lines.append(f"scheduler lag us (first send - intended start): p50 {lag['p50']}  "
                     f"p99 {lag['p99']}  max {lag['max']}")
    lines.append(f"attempts {doc['attempts']}  redirects {doc['redirects']}  timeouts {doc['timeouts']}")
    if doc["errors"]:
        lines.append("errors: " + ", ".join(f"{r} x{n}" for r, n in doc["errors"].items()))
    nem = doc.get("nemesis")
    if nem:
        lines.append(f"nemesis {','.join(nem['faults'])} (seed {nem['seed']}, interval {nem['interval_s']:g} s): "
                     f"{len(nem['events'])} fault(s)")
        for e in nem["events"]:
            end = "?" if e["end_s"] is None else f"{e['end_s']:.2f}"
            lines.append(f"  {e['start_s']:7.2f} s .. {end:>7} s  {e['fault']:<12} {e['detail']}")
        for s in nem["skipped"]:
            lines.append(f"  skipped: {s}")
        for s in nem["errors"]:
            lines.append(f"  error: {s}")
    st = doc.get("settle")
    if st:
        lines.append(f"settled: {'yes' if st['converged'] else 'NO'} after {st['waited_s']:.2f} s"
                     + ("" if st["converged"] else f" ({st['why']})"))
    if check is not None:
        lines.append(f"check: {check.verdict.upper()} in {check.elapsed_s:.2f} s "
                     f"({check.operations} operations, {len(check.violations)} violation(s))")
    if doc.get("run_dir"):
        lines.append(f"run dir: {procs.display_path(Path(doc['run_dir']))}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- lfctl check / report


def cmd_check(args: argparse.Namespace) -> int:
    from loadgen import runs
    from loadgen.checker import check_run
    from loadgen.history import HistoryError

    cli = _cli()
    target = runs.resolve_run(args.run, args.runs_dir)
    if not target.exists():
        raise cli.CliError(f"no run at {target}" + ("" if args.run else " (run `lfctl load` first, or name a run)"))
    try:
        result = check_run(target, time_limit=args.time_limit, final_state=not args.no_final_state)
    except FileNotFoundError as exc:
        raise cli.CliError(str(exc)) from None
    except HistoryError as exc:
        raise cli.CliError(f"bad history: {exc}") from None
    if args.json:
        print(json.dumps({"schema_version": 1, **result.to_json()}, indent=2), flush=True)
    else:
        print(result.format_text(), flush=True)
    return result.exit_code


def cmd_report(args: argparse.Namespace) -> int:
    from loadgen import runs
    from loadgen.history import NEMESIS

    cli = _cli()
    target = runs.resolve_run(args.run, args.runs_dir)
    if not (target / "samples.npz").is_file():
        raise cli.CliError(f"no run with samples at {target}")
    from loadgen.history import load_history
    from loadgen.report import render_png, samples_from_npz

    doc = json.loads((target / "results.json").read_text())
    nem = [r for r in load_history(target / "history.jsonl") if r.get("process") == NEMESIS]
    render_png(target / "report.png", samples_from_npz(target / "samples.npz"), nemesis=nem,
               title=_title(doc))
    summary = target / "summary.txt"
    print(summary.read_text().rstrip() if summary.is_file() else format_summary(doc, None), flush=True)
    print(f"report: {procs.display_path(target / 'report.png')}", flush=True)
    return 0


# --------------------------------------------------------------------------- partition / heal


def cmd_partition(args: argparse.Namespace) -> int:
    from orchestrator import partition

    cli = _cli()
    cl = cli.resolve_cluster(args)
    try:
        groups = partition.parse_groups(args.groups, cl.cfg.node_ids)
        plan = partition.plan_partition(groups, args.view_service_side - 1)
    except partition.PartitionError as exc:
        raise cli.UsageError(str(exc)) from None
    cli.require_running(cl)
    errors = partition.apply_plan(cl.cfg, plan)
    if args.json:
        cli.print_json({"ok": not errors, **plan.to_json(), "unreached": {str(k): v for k, v in errors.items()}})
    else:
        cli.say(f"partitioned {plan.describe()}")
        for node, err in errors.items():
            cli.warn(f"node {node} did not take its part: {err}")
    if errors:
        return 1
    return 0


def cmd_heal(args: argparse.Namespace) -> int:
    from orchestrator import partition

    cli = _cli()
    cl = cli.resolve_cluster(args)
    cli.require_running(cl)
    errors = partition.heal(cl.cfg)
    if args.json:
        cli.print_json({"ok": not errors, "unreached": {str(k): v for k, v in errors.items()}})
    else:
        reached = [n for n in cl.cfg.node_ids if n not in errors]
        cli.say(f"healed node(s) {', '.join(map(str, reached)) or 'none'}")
        for node, err in errors.items():
            cli.warn(f"node {node} not reached: {err}")
    return 1 if errors else 0
