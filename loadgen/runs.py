"""Run directories: one per `lfctl load`, `runs/<timestamp>/`, with `runs/latest` pointing at the
newest.

What a run directory holds (written by `orchestrator.loadrun`):

    results.json        the load's figures (the `lfctl load --json` document)
    history.jsonl       every operation and fault (Jepsen format, see loadgen.history)
    latency.hgrm        the full latency percentile spectrum (HdrHistogram text format, ms)
    latency-order.hgrm, latency-read.hgrm    the same per function
    samples.npz         per-operation times for the report (numpy arrays)
    initial_state.json  the run's customers' records before the load
    final_state.json    every live node's records for those customers after the run
    check.json          the checker's verdict (with --check)
    report.png          latency and throughput over time, faults shaded
    summary.txt         the text summary
    logs/               node and supervisor logs, copied at the end
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["LATEST", "new_run_dir", "resolve_run", "write_json"]

LATEST = "latest"


def new_run_dir(root: str | Path, now: float | None = None) -> Path:
    """Create `root/<YYYYmmdd-HHMMSS>` (with -2, -3... when taken) and point `root/latest` at it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    for n in range(1, 1000):
        path = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        _point_latest(root, path.name)
        return path
    raise RuntimeError(f"cannot create a run directory under {root}")


def _point_latest(root: Path, name: str) -> None:
    link = root / LATEST
    tmp = root / f".{LATEST}.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(name)
        os.replace(tmp, link)
    except OSError:  # a filesystem without symlinks: a plain file naming the run
        try:
            if link.is_symlink():
                link.unlink()
            link.write_text(name + "\n")
        except OSError:
            pass


def resolve_run(target: str | Path | None, root: str | Path = "runs") -> Path:
    """A run directory or history file: given, else `root/latest`."""
    if target is not None:
        return Path(target)
    link = Path(root) / LATEST
    if link.is_file() and not link.is_symlink():
        return Path(root) / link.read_text().strip()
    return link


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n")
