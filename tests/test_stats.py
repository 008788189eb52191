"""LatencyRecorder: percentiles of known data, clamping, merging, the empty summary."""

from __future__ import annotations

import pytest

from loadgen.stats import SUMMARY_KEYS, LatencyRecorder


def recorder_of(us_values) -> LatencyRecorder:
    rec = LatencyRecorder()
    for us in us_values:
        rec.record_ns(us * 1000)
    return rec


def test_empty_summary_is_all_zeros():
    rec = LatencyRecorder()
    assert rec.count == 0
    assert rec.summary() == {key: 0 for key in SUMMARY_KEYS}
    assert list(rec.summary()) == list(SUMMARY_KEYS)


def test_percentiles_of_known_data():
    # 1..1000 us: below 2048 a 3-digit HdrHistogram is exact, so the percentiles are too.
    rec = recorder_of(range(1, 1001))
    assert rec.count == 1000
    assert rec.summary() == {
        "min": 1, "avg": 500.5, "p50": 500, "p90": 900, "p99": 990, "p999": 999, "p9999": 1000,
        "max": 1000,
    }


def test_large_values_within_three_significant_digits():
    rec = recorder_of([1_234_567] * 10 + [5_000_000])
    s = rec.summary()
    assert s["p50"] == pytest.approx(1_234_567, rel=1e-3)
    assert s["max"] == pytest.approx(5_000_000, rel=1e-3)
    assert s["p999"] == pytest.approx(5_000_000, rel=1e-3)


def test_nanoseconds_are_rounded_to_microseconds():
    rec = LatencyRecorder()
    rec.record_ns(1_499)
    rec.record_ns(2_500_400)
    s = rec.summary()
    assert s["min"] == 1
    assert s["max"] == pytest.approx(2_500, rel=1e-3)


def test_out_of_range_values_are_clamped_not_dropped():
    rec = LatencyRecorder()
    rec.record_ns(0)
    rec.record_ns(120 * 10**9)  # 120 s, above the 60 s ceiling
    assert rec.count == 2
    s = rec.summary()
    assert s["min"] == 1
    assert s["max"] == pytest.approx(60_000_000, rel=1e-3)


def test_merge_equals_recording_everything_in_one():
    low = recorder_of(range(1, 501))
    high = recorder_of(range(501, 1001))
    low.merge(high)
    assert low.count == 1000
    assert low.summary() == recorder_of(range(1, 1001)).summary()
    assert high.count == 500  # the merged-in recorder is unchanged
    assert high.summary()["min"] == 501


def test_merge_into_and_from_empty():
    empty = LatencyRecorder()
    data = recorder_of([10, 20, 30])
    empty.merge(data)
    assert empty.summary() == data.summary()
    data.merge(LatencyRecorder())
    assert data.count == 3


def test_summary_values_are_numbers():
    s = recorder_of([3, 7, 11]).summary()
    assert all(isinstance(v, (int, float)) for v in s.values())
    assert s["avg"] == round(s["avg"], 1)


def test_wire_encoding_is_exact():
    rec = recorder_of([5, 50, 500, 5000, 50_000])
    again = LatencyRecorder.decode(rec.encode())
    assert again.summary() == rec.summary() and again.count == 5
    assert LatencyRecorder.decode(LatencyRecorder().encode()).count == 0


def test_hgrm_percentile_spectrum(tmp_path):
    rec = recorder_of(range(1, 1001))
    path = tmp_path / "latency.hgrm"
    rec.write_hgrm(path)
    text = path.read_text()
    assert text.splitlines()[0].split() == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    assert "#[Max     =        1.000" in text  # milliseconds
    assert "Total" in LatencyRecorder().percentile_distribution()
