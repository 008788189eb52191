"""Type-check the protocol and the node with mypy.  Why a test: a record built with the wrong
type (an empty tuple where storage takes a packed entry block) once passed every unit test and
crashed a node catching up through a snapshot; mypy names such a mistake at the line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_protocol_and_node_type_check(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache"), "protocol", "node"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
