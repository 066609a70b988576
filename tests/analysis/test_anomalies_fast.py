"""The detector's shortcuts give what the plain computation gives, bit for bit: medians by
sorting, each segment's best split found once, a series whose values all lie within the floor
left uncut, scipy's tests called without their decorator, and p-values kept for samples seen
before. Each is compared with the computation it replaces, written out here."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from otlp_ebpf.analysis import anomalies
from otlp_ebpf.analysis.anomalies import (
    DetectorSettings,
    _best_split,
    _candidates,
    _mad,
    _median,
    _nanmedian,
    change_points,
    departure_p_value,
    detect,
)
from otlp_ebpf.analysis.series import Series, Timeline

finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e12, max_value=1e12)
arrays = st.lists(finite, min_size=1, max_size=150).map(lambda v: np.array(v, dtype=float))
# rows as the agent's series hold them: small counts per second, many repeats
counts = st.lists(st.integers(0, 40), min_size=2, max_size=40).map(
    lambda v: np.array(v, dtype=float) / 10.02
)


@settings(deadline=None)
@given(arrays)
def test_the_median_is_numpys(values):
    assert _median(values) == float(np.median(values))


@settings(deadline=None)
@given(st.lists(finite | st.just(math.nan), min_size=1, max_size=150))
def test_the_median_without_nans_is_numpys(values):
    values = np.array(values, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all NaN
        expected = float(np.nanmedian(values))
        found = _nanmedian(values)
    assert found == expected or (math.isnan(found) and math.isnan(expected))


@settings(deadline=None)
@given(arrays)
def test_the_mad_is_the_median_of_deviations_from_numpys_median(values):
    expected = float(np.median(np.abs(values - np.median(values))))
    assert _mad(values) == expected


def _cost(first, second, a, b):
    length = np.asarray(b) - np.asarray(a)
    total = first[b] - first[a]
    return second[b] - second[a] - total * total / length


def _best_split_of(first, second, a, b, min_size):
    if b - a < 2 * min_size:
        return None
    ks = np.arange(a + min_size, b - min_size + 1)
    gains = _cost(first, second, a, b) - _cost(first, second, a, ks) - _cost(first, second, ks, b)
    best = int(np.argmax(gains))
    return int(ks[best]), float(gains[best])


def _change_points_from_scratch(values: np.ndarray, min_size: int, max_points: int) -> list[int]:
    """The binary segmentation that looks for the best split of every segment each round,
    each split's costs computed apart."""
    n = len(values)
    if n < 2 * min_size:
        return []
    first, second, penalty = anomalies.segmentation_costs(values)  # its MAD: tested apart
    segments = [(0, n)]
    cuts: list[int] = []
    while len(cuts) < max_points:
        best = None
        for index, (a, b) in enumerate(segments):
            split = _best_split_of(first, second, a, b, min_size)
            if split is not None and split[1] > penalty and (best is None or split[1] > best[0]):
                best = (split[1], index, split[0])
        if best is None:
            break
        _, index, k = best
        a, b = segments[index]
        segments[index : index + 1] = [(a, k), (k, b)]
        cuts.append(k)
    return sorted(cuts)


@settings(deadline=None)
@given(counts | arrays, st.integers(1, 4))
def test_the_best_split_is_the_one_found_cost_by_cost(values, min_size):
    x = values.astype(float)
    first = np.concatenate(([0.0], np.cumsum(x)))
    second = np.concatenate(([0.0], np.cumsum(x * x)))
    n = len(x)
    for a, b in ((0, n), (0, n // 2), (n // 3, n)):
        assert _best_split(first, second, a, b, min_size) == _best_split_of(
            first, second, a, b, min_size
        )


@settings(deadline=None)
@given(counts | arrays, st.integers(1, 4), st.integers(0, 8))
def test_change_points_are_those_found_from_scratch(values, min_size, max_points):
    assert change_points(values, min_size, max_points) == _change_points_from_scratch(
        values, min_size, max_points
    )


def _p_value_decorated(rows: np.ndarray, baseline: np.ndarray) -> float:
    """departure_p_value as scipy's public calls give it."""
    ranks = sps.mannwhitneyu(rows, baseline, alternative="two-sided").pvalue
    if len(rows) < 2 or len(baseline) < 2 or (np.ptp(rows) == 0 and np.ptp(baseline) == 0):
        return min(1.0, 2.0 * (float(ranks) if math.isfinite(ranks) else 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = sps.ttest_ind(rows, baseline, equal_var=False).pvalue
    best = min(float(p) if math.isfinite(p) else 1.0 for p in (ranks, welch))
    return min(1.0, 2.0 * best)


samples = st.lists(st.integers(0, 30), min_size=1, max_size=20).map(
    lambda v: np.array(v, dtype=float) * 0.37
)


@settings(max_examples=100, deadline=None)
@given(samples, samples)
def test_the_p_value_is_scipys(rows, baseline):
    anomalies._P_VALUES.clear()
    assert anomalies._undecorated_tests_agree()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _p_value_decorated(rows, baseline)
        assert departure_p_value(rows, baseline) == pytest.approx(expected, rel=0, abs=0)
        # and again, from what was kept
        assert departure_p_value(rows, baseline) == expected


def test_a_kept_p_value_is_found_only_for_the_same_samples():
    rows = np.array([10.0, 11.0, 12.0, 10.5])
    near, far = np.array([9.0, 10.0, 11.0, 10.0, 9.5]), np.array([1.0, 2.0, 1.5, 2.5, 1.0])
    anomalies._P_VALUES.clear()
    first = departure_p_value(rows, near)
    assert departure_p_value(rows, far) == _p_value_decorated(rows, far) != first
    assert departure_p_value(rows[:3], near) == _p_value_decorated(rows[:3], near)
    assert departure_p_value(rows, near) == first


def test_what_is_kept_is_bounded(monkeypatch):
    monkeypatch.setattr(anomalies, "P_VALUES_KEPT", 3)
    anomalies._P_VALUES.clear()
    for shift in range(10):
        rows = np.array([5.0, 6.0, 7.0]) + shift
        assert departure_p_value(rows, np.arange(6.0)) == _p_value_decorated(rows, np.arange(6.0))
    assert len(anomalies._P_VALUES) == 3


def _timeline(columns: list[np.ndarray], unit: str, hz: int = 0) -> Timeline:
    n = len(columns[0])
    lengths = np.array([10.0 + 0.05 * (i % 3) for i in range(n)])
    ends = np.cumsum(lengths)
    starts = ends - lengths
    nature = "latency" if unit == "ns" else "rate"
    series = [
        Series("cpu", "samples", {"pid": str(i)}, nature, unit, starts, ends, values)
        for i, values in enumerate(columns)
    ]
    return Timeline(10.0, starts, ends, series, cpu_hz=hz)


def _described(result):
    if result is None:
        return None
    return [(c.first, c.last, c.direction, c.p_value, c.baseline_rows.tolist()) for c in result]


# rows in multiples of the series' floor: a level, noise below or around the floor, and
# sometimes a run of rows stepped by about the floor (what decides whether regimes merge)
steps = st.sampled_from([0.0, 0.3, 0.99, 1.0, 1.01, 1.5, 2.0, 4.0])
column = st.tuples(
    st.sampled_from([0.0, 0.2, 1.0, 3.0]),  # level
    st.sampled_from([0.0, 0.1, 0.45, 0.9, 1.2]),  # noise
    st.lists(st.sampled_from([0.0, 1.0, -1.0]), min_size=36, max_size=36),
    steps,
    st.integers(0, 35),  # where the step starts
    st.integers(1, 12),  # its rows
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(column, min_size=1, max_size=6),
    st.integers(8, 36),
    st.sampled_from([("samples/s", 99), ("samples/s", 0), ("1/s", 0), ("ns", 0)]),
)
def test_series_within_the_floor_are_judged_as_when_cut(columns, n, kind):
    unit, hz = kind
    floor = {"samples/s": 0.1 * hz if hz else 1.0, "1/s": 2.0, "ns": 10_000.0}[unit]
    values = []
    for level, noise, pattern, step, at, rows in columns:
        v = np.maximum(np.array([level + noise * x for x in pattern[:n]]), 0.0)
        v[at : at + rows] += step
        v *= floor
        if unit == "ns":  # latency: rows without calls are NaN
            v = np.where(v == 0.0, np.nan, v)
        values.append(v)
    timeline = _timeline(values, unit, hz)
    plain = DetectorSettings()
    shortcut = [_described(_candidates(s, timeline, plain)) for s in timeline.series]
    found = [a.to_dict() for a in detect(timeline)]
    original = anomalies._within_floor
    anomalies._within_floor = lambda _values, _floor: False
    try:
        cut = [_described(_candidates(s, timeline, plain)) for s in timeline.series]
        assert [a.to_dict() for a in detect(timeline)] == found
    finally:
        anomalies._within_floor = original
    assert shortcut == cut


def test_a_flat_series_still_counts_among_those_tested():
    """Benjamini-Hochberg over every series tested: a series left uncut must still be one."""
    rng = np.random.default_rng(5)
    step = np.concatenate([rng.poisson(20, 15), rng.poisson(60, 15)]).astype(float)
    flat = [np.full(30, 0.5) for _ in range(40)]
    timeline = _timeline([step, *flat], "1/s")
    [alone] = detect(_timeline([step], "1/s"))
    [among] = detect(timeline)
    assert among.p_value == alone.p_value
    assert among.q_value == pytest.approx(min(1.0, alone.p_value * 41), rel=1e-9, abs=0)
