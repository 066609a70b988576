"""The noise model behind `diff`: known values, and the gate's two promises as properties."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from otlp_ebpf.analysis import stats
from otlp_ebpf.analysis.diff import DiffOptions, RunSet, diff_runs
from otlp_ebpf.analysis.gate import evaluate, flagged_rows
from otlp_ebpf.model import CpuSnapshot, StackCount


def cpu_run(counts: dict[str, int]) -> CpuSnapshot:
    """One run where each function is the leaf of `comm;main;work;FUNC` with its count."""
    stacks = tuple(
        StackCount(10, 10, "bench", ("main", "work", name), n) for name, n in counts.items() if n
    )
    return CpuSnapshot(
        started_at="t", duration_s=1.0, host="h", samples_total=sum(counts.values()), stacks=stacks
    )


def runset(*runs: CpuSnapshot) -> RunSet:
    return RunSet("side", tuple(f"r{i}.json" for i in range(len(runs))), runs)


def test_binomial_se_matches_the_textbook_formula() -> None:
    assert stats.binomial_se(0.5, 100) == pytest.approx(0.05)
    assert stats.binomial_se(0.1, 900) == pytest.approx(0.01)
    assert stats.binomial_se(0.3, 0) == math.inf


def test_z_for_95_percent_is_1_96() -> None:
    assert stats.z_for(0.95) == pytest.approx(1.959964, abs=1e-5)


def test_equal_shares_show_no_change_and_no_regression() -> None:
    test = stats.share_shift(0.25, 1000, 0.25, 1000, margin=0.0, confidence=0.95)
    assert test.delta == 0
    assert test.p_change == pytest.approx(1.0)
    assert test.p_beyond == pytest.approx(0.5)
    assert not test.beyond(0.95)
    assert test.ci_low < 0 < test.ci_high


def test_a_large_well_sampled_growth_is_beyond_a_margin() -> None:
    test = stats.share_shift(0.30, 3000, 0.45, 3000, margin=0.05, confidence=0.95)
    assert test.delta == pytest.approx(0.15)
    assert test.beyond(0.95)
    assert test.ci_low > 0.05


def test_a_low_sample_wobble_is_not_beyond_noise() -> None:
    # 2 samples of 300 -> 6 samples of 300: three times the share, still a wobble.
    test = stats.share_shift(2 / 300, 300, 6 / 300, 300, margin=0.0, confidence=0.95)
    assert test.delta > 0
    assert not test.beyond(0.95)


def test_a_share_from_nothing_keeps_its_uncertainty() -> None:
    # Without the Agresti-Caffo pseudo-counts the standard error of 0/50 would be 0.
    test = stats.share_shift(0.0, 50, 0.0, 50, margin=0.0, confidence=0.95)
    assert test.ci_high > 0
    assert not test.beyond(0.95)


def test_mann_whitney_exact_values() -> None:
    # Fully separated groups of 3: one arrangement in C(6, 3) = 20 is this extreme.
    assert stats.mann_whitney_greater([1, 2, 3], [4, 5, 6]) == pytest.approx(1 / 20)
    assert stats.mann_whitney_greater([4, 5, 6], [1, 2, 3]) == pytest.approx(1.0)
    # Every value tied: no evidence either way.
    assert stats.mann_whitney_greater([2, 2, 2], [2, 2, 2]) == pytest.approx(1.0)
    assert stats.mann_whitney_greater([], [1.0]) == 1.0


def test_mann_whitney_exact_counts_ties_by_midranks() -> None:
    xs, ys = [1.0, 2.0, 2.0], [2.0, 3.0, 4.0]
    ranks = [1.0, 3.0, 3.0, 3.0, 5.0, 6.0]
    observed = 3.0 + 5.0 + 6.0
    sums = [sum(c) for c in itertools.combinations(ranks, 3)]
    expected = sum(1 for s in sums if s >= observed) / len(sums)
    assert stats.mann_whitney_greater(xs, ys) == pytest.approx(expected)


def test_mann_whitney_normal_approximation_is_close_to_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    xs = [0.11, 0.15, 0.09, 0.13, 0.12, 0.10, 0.16, 0.14]
    ys = [0.14, 0.18, 0.12, 0.17, 0.19, 0.13, 0.2, 0.15]
    exact = stats.mann_whitney_greater(xs, ys)
    monkeypatch.setattr(stats, "_EXACT_LIMIT", 0)
    approx = stats.mann_whitney_greater(xs, ys)
    assert approx == pytest.approx(exact, abs=0.01)
    assert exact < 0.05


def test_bootstrap_interval_is_repeatable_and_brackets_the_difference() -> None:
    xs, ys = [10.0, 11.0, 9.5, 10.5, 10.2], [12.0, 12.4, 11.8, 12.9, 12.1]
    once = stats.bootstrap(xs, ys, confidence=0.95)
    first = (once.low, once.high)
    again = stats.bootstrap(xs, ys, confidence=0.95)
    assert first == (again.low, again.high)
    assert first[0] <= stats.mean_difference(xs, ys) <= first[1]
    assert first[0] > 0


def test_runs_shift_separates_signal_from_run_to_run_noise() -> None:
    base = [0.30, 0.31, 0.29, 0.305, 0.30]
    grown = [0.45, 0.46, 0.44, 0.455, 0.45]
    assert stats.runs_shift(base, grown, margin=0.05, confidence=0.95).beyond(0.95)
    same = stats.runs_shift(base, list(base), margin=0.0, confidence=0.95)
    assert same.delta == 0
    assert not same.beyond(0.95)


def test_runs_ratio_is_in_percent_of_base() -> None:
    test = stats.runs_ratio([100.0, 102, 98], [150.0, 153, 147], margin=20, confidence=0.95)
    assert test.delta == pytest.approx(50.0)
    assert test.ci_low <= 50.0 <= test.ci_high


def test_relative_change_from_nothing_is_infinite() -> None:
    assert stats.relative_change(0, 0) == 0
    assert stats.relative_change(0, 5) == math.inf
    assert stats.relative_change(200, 150) == pytest.approx(-25.0)


def test_most_conservative_keeps_the_wider_interval_and_larger_p() -> None:
    a = stats.ShiftTest(1.0, 0.5, 1.5, 0.01, 0.02, "a")
    b = stats.ShiftTest(1.0, 0.2, 1.2, 0.03, None, "b")
    combined = stats.most_conservative(a, b)
    assert (combined.ci_low, combined.ci_high) == (0.2, 1.5)
    assert (combined.p_change, combined.p_beyond) == (0.03, 0.02)
    assert not stats.exact_shift(3.0).beyond(0.95)


# ---------------------------------------------------------------- properties

function_counts = st.dictionaries(
    st.sampled_from([f"fn{i}" for i in range(12)]),
    st.integers(min_value=0, max_value=400),
    min_size=1,
    max_size=12,
).filter(lambda d: sum(d.values()) > 0)


@settings(max_examples=60, deadline=None)
@given(
    counts=function_counts,
    threshold=st.floats(min_value=0, max_value=20),
    repeats=st.sampled_from([1, 3]),
)
def test_identical_inputs_never_flag(
    counts: dict[str, int], threshold: float, repeats: int
) -> None:
    side = runset(*[cpu_run(counts)] * repeats)
    report = diff_runs(side, side, DiffOptions(threshold=threshold))
    assert flagged_rows(report) == []
    assert not evaluate(report).failed


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=100), min_size=2, max_size=8),
    victim=st.integers(min_value=0, max_value=7),
    samples=st.integers(min_value=2000, max_value=5000),
)
def test_doubling_a_function_with_enough_samples_flags_it_first(
    weights: list[int], victim: int, samples: int
) -> None:
    victim %= len(weights)
    share = weights[victim] / sum(weights)
    assume(0.1 <= share <= 0.6)
    doubled = [w * (2 if i == victim else 1) for i, w in enumerate(weights)]

    def run(ws: list[int]) -> CpuSnapshot:
        return cpu_run({f"fn{i}": round(samples * w / sum(ws)) for i, w in enumerate(ws)})

    report = diff_runs(runset(run(weights)), runset(run(doubled)), DiffOptions(threshold=2.0))
    verdict = evaluate(report)
    assert verdict.failed
    assert verdict.regressions[0][1].key == f"fn{victim}"
    assert report.sections[0].regressions()[0].key == f"fn{victim}"


def test_three_runs_per_side_fall_back_to_the_bootstrap() -> None:
    assert not stats.rank_test_can_reach(3, 3, 0.95)
    assert stats.rank_test_can_reach(4, 4, 0.95)
    base, grown = [0.30, 0.31, 0.29], [0.45, 0.46, 0.44]
    test = stats.runs_shift(base, grown, margin=0.05, confidence=0.95)
    assert test.method == "bootstrap"
    assert test.beyond(0.95)
    assert not stats.runs_shift(base, base, margin=0.0, confidence=0.95).beyond(0.95)
    # Overlapping groups: some resamples show no growth beyond the margin.
    noisy = stats.runs_shift(base, [0.28, 0.36, 0.41], margin=0.05, confidence=0.95)
    assert not noisy.beyond(0.95)


def test_holm_steps_down_until_a_p_value_stays() -> None:
    assert stats.holm_rejects([0.01, 0.04, 0.03, 0.005], 0.95) == [True, False, False, True]
    assert stats.holm_rejects([], 0.95) == []


def test_many_functions_do_not_add_up_to_false_alarms() -> None:
    import random

    def run(seed: int) -> CpuSnapshot:
        rng = random.Random(seed)
        counts: dict[str, int] = {}
        for name in rng.choices([f"fn{i}" for i in range(40)], k=1000):
            counts[name] = counts.get(name, 0) + 1
        return cpu_run(counts)

    failures = lucky_rows = 0
    for seed in range(20):
        report = diff_runs(runset(run(seed)), runset(run(seed + 500)), DiffOptions(threshold=0.0))
        failures += evaluate(report).failed
        lucky_rows += sum(
            1 for r in report.sections[0].rows if r.p_beyond is not None and r.p_beyond < 0.05
        )
    # Rows that pass 95 % on their own are common among 40 functions; the gate stays quiet.
    assert lucky_rows >= 10
    assert failures <= 2


@pytest.mark.parametrize(
    ("xs", "ys"),
    [
        ([0.0, 0.0, 0.1, 0.2], [0.0, 0.2, 0.3, 0.3]),
        ([0.1, 0.1, 0.1], [0.1, 0.2, 0.2, 0.4]),
        ([0.5, 0.0, 0.0, 0.0, 0.2], [0.0, 0.0, 0.7, 0.7, 0.7]),
        ([1.0, 2.0, 2.0], [2.0, 2.0, 3.0]),
    ],
)
def test_exact_rank_test_with_ties_matches_scipys_permutation_test(
    xs: list[float], ys: list[float]
) -> None:
    """The one hand-written distribution (ties, few runs) against scipy's reference: an
    exact permutation test over every arrangement."""
    import numpy as np
    from scipy import stats as sps

    reference = sps.mannwhitneyu(
        ys, xs, alternative="greater", method=sps.PermutationMethod(n_resamples=np.inf)
    ).pvalue
    assert stats.mann_whitney_greater(xs, ys) == pytest.approx(reference, rel=1e-12)


def test_relative_mean_change_is_relative_change_of_the_means() -> None:
    import numpy as np

    resamples = np.array([[100.0, 110.0], [0.0, 0.0], [0.0, 0.0]])
    after = np.array([[150.0, 160.0], [0.0, 0.0], [5.0, 5.0]])
    got = stats.relative_mean_change(resamples, after, axis=-1)
    expected = [stats.relative_change(100.0 + 5.0, 155.0), 0.0, math.inf]
    assert list(got) == pytest.approx(expected)
