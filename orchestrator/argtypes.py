"""argparse value types shared by the `lfctl` commands (cli.py, loadrun.py)."""

from __future__ import annotations

import argparse


def node_arg(text: str) -> int | str:
    if text in ("primary", "backup"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a node id, \"primary\" or \"backup\", got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"node ids start at 1, got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value
