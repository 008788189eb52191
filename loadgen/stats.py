"""Latency histograms for the load generator.

HdrHistogram rather than a list of samples: memory stays fixed however long a load runs, merging
runs (or per-process recorders) is exact, and 3 significant digits keep percentiles honest at the
tail, which is where replication and failover costs show up.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram  # the `hdrhistogram` distribution installs `hdrh`

__all__ = ["LatencyRecorder", "SUMMARY_KEYS"]

SUMMARY_KEYS = ("min", "avg", "p50", "p90", "p99", "p999", "max")

_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


class LatencyRecorder:
    """Records latencies (given in ns) at microsecond resolution, 1 us .. 60 s.

    Values outside the range are clamped rather than dropped: a sub-microsecond or > 60 s
    operation still happened and must still be counted."""

    LOWEST_US = 1
    HIGHEST_US = 60_000_000
    SIGNIFICANT_DIGITS = 3

    def __init__(self) -> None:
        self._hist = HdrHistogram(self.LOWEST_US, self.HIGHEST_US, self.SIGNIFICANT_DIGITS)

    def record_ns(self, ns: int) -> None:
        us = int(round(ns / 1000))
        self._hist.record_value(min(max(us, self.LOWEST_US), self.HIGHEST_US))

    @property
    def count(self) -> int:
        return int(self._hist.get_total_count())

    def summary(self) -> dict[str, int | float]:
        """min, avg, p50, p90, p99, p999, max in microseconds; all zeros when nothing was
        recorded (so reports need no special case)."""
        if self.count == 0:
            return {key: 0 for key in SUMMARY_KEYS}
        out: dict[str, int | float] = {"min": int(self._hist.get_min_value()),
                                       "avg": round(float(self._hist.get_mean_value()), 1)}
        for key, pct in _PERCENTILES.items():
            out[key] = int(self._hist.get_value_at_percentile(pct))
        out["max"] = int(self._hist.get_max_value())
        return {key: out[key] for key in SUMMARY_KEYS}

    def merge(self, other: LatencyRecorder) -> None:
        """Add every sample of `other` into this recorder (other is unchanged)."""
        self._hist.add(other._hist)

    def reset(self) -> None:
        self._hist.reset()
