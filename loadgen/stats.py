"""Latency histograms for the load generator.

HdrHistogram rather than a list of samples: memory stays fixed however long a load runs, merging
runs (or per-process recorders) is exact, and 3 significant digits keep percentiles honest at the
tail, which is where replication and failover costs show up.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from hdrh.histogram import HdrHistogram  # the `hdrhistogram` distribution installs `hdrh`

__all__ = ["LatencyRecorder", "SUMMARY_KEYS"]

SUMMARY_KEYS = ("min", "avg", "p50", "p90", "p99", "p999", "p9999", "max")

_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9, "p9999": 99.99}


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

    def record_many_ns(self, values_ns: Sequence[int]) -> None:
        """Record many latencies at once (ns), exactly as `record_ns` one by one would, but with
        one histogram update per distinct bucket: the load generator keeps raw values during a
        run and records them afterwards, so the pure-Python histogram never competes with
        sending requests on time."""
        if not len(values_ns):
            return
        import numpy as np

        us = np.rint(np.asarray(values_ns, dtype=np.float64) / 1000.0)
        us = np.clip(us, self.LOWEST_US, self.HIGHEST_US).astype(np.int64)
        # Values that land in one HdrHistogram bucket are equivalent: with 3 significant digits
        # (2048 sub-buckets) a value v keeps its top 11 bits.
        shift = np.maximum(0, np.floor(np.log2(us)).astype(np.int64) - 10)
        low = (us >> shift) << shift
        vals, counts = np.unique(low, return_counts=True)
        record = self._hist.record_value
        for v, c in zip(vals.tolist(), counts.tolist()):
            record(v, c)

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

    def value_at(self, percentile: float) -> int:
        """The latency (us) at `percentile` (0..100); 0 when empty."""
        return int(self._hist.get_value_at_percentile(percentile)) if self.count else 0

    # Exact transport between processes: HdrHistogram's compressed, base64 wire encoding.

    def encode(self) -> str:
        return self._hist.encode().decode("ascii")

    @classmethod
    def decode(cls, data: str | bytes) -> LatencyRecorder:
        rec = cls()
        if data:
            rec._hist.add(HdrHistogram.decode(data))
        return rec

    def percentile_distribution(self, ticks_per_half_distance: int = 5) -> str:
        """The full percentile spectrum in HdrHistogram's `.hgrm` text format, values in
        milliseconds (what HdrHistogram's plotter expects)."""
        if self.count:
            raw = io.BytesIO()  # hdrh writes bytes
            self._hist.output_percentile_distribution(raw, 1000.0, ticks_per_half_distance)
            return raw.getvalue().decode("ascii")
        return ("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"
                "#[Mean    =        0.000, StdDeviation   =        0.000]\n"
                "#[Max     =        0.000, Total count    =            0]\n"
                "#[Buckets =            0, SubBuckets     =            0]\n")

    def write_hgrm(self, path: str | Path) -> None:
        Path(path).write_text(self.percentile_distribution())
