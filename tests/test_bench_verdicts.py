"""How the benchmark suite judges a target (bench/verdicts.py): the interval of a median of paired
ratios, and the verdict it gives.  Pure arithmetic: no timing is asserted anywhere."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import verdicts  # noqa: E402
from verdicts import MET, NOT_MET, NOT_RESOLVED, judge, median_interval  # noqa: E402


@pytest.mark.parametrize(
    ("n", "low", "high", "coverage"),
    [
        (12, 3, 10, 0.9614),  # 1 - 2 * (1 + 12 + 66) / 4096: what experiment 1's 12 rounds give
        (10, 2, 9, 0.9785),  # 1 - 2 * 11 / 1024: the 10 rotations of the 2- and 5-node clusters
        (6, 1, 6, 0.9688),  # the durability policies' 6 rounds: only the extremes reach 95 %
        (3, 1, 3, 0.75),  # too few for 95 %: the extremes, with the coverage they really have
        (1, 1, 1, 0.0),
    ],
)
def test_the_interval_is_the_narrowest_pair_of_order_statistics_that_covers_the_level(
        n: int, low: int, high: int, coverage: float) -> None:
    values = list(range(n, 0, -1))  # unsorted on purpose
    assert median_interval(values) == {"low": low, "high": high, "coverage": coverage, "n": n}


def test_no_repeats_give_no_interval_and_no_verdict() -> None:
    assert median_interval([]) is None
    assert judge([], 0.9, at_least=True)["verdict"] == NOT_RESOLVED


def test_the_interval_holds_the_true_median_as_often_as_it_claims() -> None:
    """Samples of a skewed distribution whose median is known (exponential: ln 2), seeded: the
    share of intervals that contain it is at least the stated coverage, for each size used."""
    rng = random.Random(7)
    true_median = 0.6931471805599453
    for n in (6, 10, 12):
        trials = 4000
        hits = 0
        claimed = 0.0
        for _ in range(trials):
            ci = median_interval([rng.expovariate(1.0) for _ in range(n)])
            assert ci is not None
            claimed = ci["coverage"]
            hits += ci["low"] <= true_median <= ci["high"]
        assert hits / trials >= claimed - 0.01, (n, hits / trials, claimed)  # 4,000 trials: sd 0.003


@pytest.mark.parametrize(
    ("values", "target", "at_least", "verdict"),
    [
        ([0.72, 0.74, 0.80, 0.83, 0.84, 0.89], 0.9, True, NOT_MET),  # the whole interval below
        ([0.91, 0.95, 0.97, 0.99, 1.02, 1.10], 0.9, True, MET),
        ([0.90, 0.95, 0.97, 0.99, 1.02, 1.10], 0.9, True, MET),  # on the target counts as reaching it
        ([0.85, 0.88, 0.92, 0.95, 0.97, 0.99], 0.9, True, NOT_RESOLVED),
        ([1.08, 1.15, 1.19, 1.24, 1.30, 1.34], 1.2, False, NOT_RESOLVED),  # a ceiling: "at most"
        ([1.02, 1.05, 1.10, 1.12, 1.15, 1.20], 1.2, False, MET),
        ([1.21, 1.25, 1.30, 1.31, 1.40, 1.50], 1.2, False, NOT_MET),
    ],
)
def test_a_target_is_met_or_missed_only_when_the_whole_interval_says_so(
        values: list[float], target: float, at_least: bool, verdict: str) -> None:
    judged = judge(values, target, at_least=at_least)
    assert judged["verdict"] == verdict
    assert judged["interval"]["n"] == len(values)


def test_the_description_names_the_verdict_and_what_it_rests_on() -> None:
    text = verdicts.describe(judge([0.643, 0.703, 0.721, 0.743, 0.762, 0.788, 0.81, 0.816, 0.836, 0.838, 0.844, 0.904],
                                   0.9, at_least=True))
    assert text == "not met (96 % interval of the paired median 0.721–0.838, 12 repeats)"
