"""Whether a run resolves a target: a confidence interval for the median of paired ratios.

Why: on this 2-core machine two runs of the same code differ by about ±0.06 in a ratio
(docs/performance.md), so a median that lands next to a target says little on its own.  Each
experiment pairs its targets repeat by repeat (measured back to back, the order rotated), and the
median of those paired ratios gets an interval from the binomial order statistics (the sign-test
interval): it assumes nothing about the distribution, only that the repeats are independent, and
it is exact for any number of repeats.  A target is "met" only when the whole interval is on the
right side of it, "not met" when the whole interval is on the wrong side, and "not resolved" when
the run cannot tell.  With fewer than 6 repeats no interval reaches 95 %; the widest one there is
(the smallest and the largest repeat) is used, and its coverage is stated.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import Any

LEVEL = 0.95
MET, NOT_MET, NOT_RESOLVED = "met", "not met", "not resolved"


def median_interval(values: Sequence[float], level: float = LEVEL) -> dict[str, Any] | None:
    """The narrowest interval between order statistics x(k) and x(n-k+1) (1-based) whose chance
    of holding the true median is at least `level`: 1 - 2 * P(Bin(n, 1/2) <= k - 1).  For n = 12,
    x(3)..x(10) at 96.1 %; for n = 10, x(2)..x(9) at 97.9 %."""
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if not n:
        return None
    low, high, coverage = xs[0], xs[-1], 1 - 2 * 0.5**n
    below = 0.0  # P(Bin(n, 1/2) <= k - 1)
    for k in range(1, n // 2 + 1):
        below += comb(n, k - 1) / 2**n
        cover = 1 - 2 * below
        if cover < level:
            break
        low, high, coverage = xs[k - 1], xs[n - k], cover
    return {"low": low, "high": high, "coverage": round(coverage, 4), "n": n}


def judge(values: Sequence[float], target: float, *, at_least: bool, level: float = LEVEL) -> dict[str, Any]:
    """The verdict on `median(values) >= target` (at_least) or `<= target`, from the interval."""
    ci = median_interval(values, level)
    if ci is None:
        return {"verdict": NOT_RESOLVED, "target": target, "at_least": at_least, "interval": None}
    low, high = ci["low"], ci["high"]
    if at_least:
        verdict = MET if low >= target else NOT_MET if high < target else NOT_RESOLVED
    else:
        verdict = MET if high <= target else NOT_MET if low > target else NOT_RESOLVED
    return {"verdict": verdict, "target": target, "at_least": at_least, "interval": ci}


def describe(judged: dict[str, Any]) -> str:
    """'not met (96 % interval of the paired median 0.721–0.838, 12 repeats)'"""
    ci = judged["interval"]
    if ci is None:
        return f"{judged['verdict']} (no paired repeats)"
    return (f"{judged['verdict']} ({ci['coverage'] * 100:.0f} % interval of the paired median "
            f"{ci['low']:g}–{ci['high']:g}, {ci['n']} repeats)")
