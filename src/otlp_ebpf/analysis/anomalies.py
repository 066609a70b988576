"""Which series of a timeline depart from their own baseline, when, and by how much.

For each series:
1. change points by binary segmentation of the squared-error cost (the cumulative sums make
   every split of a segment one vectorised step); the penalty per change point is
   3 sigma^2 log n, with sigma the robust (MAD) scale of the row-to-row differences, so a
   series' own noise does not cut it into pieces;
2. the baseline is the first regime that lasts at least `baseline_min_s` and
   `baseline_min_rows` rows: a recording starts before the trouble, and a shorter first regime
   is the target starting up; it is described by its median and MAD;
3. every later regime whose median departs from the baseline by a minimum effect (a share of
   the baseline, a number of robust sigmas, and an absolute floor per unit) is a candidate;
   neighbouring candidates in the same direction merge (a leak is a ramp of small steps);
   a candidate shorter than `min_duration_s` or `min_rows` rows is dropped;
4. each candidate's rows against the baseline's: Mann-Whitney U or Welch's t (scipy.stats,
   see `departure_p_value`), and
   Benjamini-Hochberg (scipy.stats.false_discovery_control) over every series tested, so a
   steady run with hundreds of series does not produce chance anomalies.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

from otlp_ebpf.analysis.series import Series, Timeline

METHOD = "binseg-l2 + median/MAD baseline + mann-whitney-u|welch-t + benjamini-hochberg"
MAD_TO_SIGMA = 1.4826
# Smallest change worth reporting, in the series' own unit, so that a handful of calls or a
# few kilobytes never become an anomaly however regular the run was.
ABSOLUTE_FLOOR = {
    "1/s": 2.0,  # events per second
    "B/s": 4096.0,
    "B": 256 * 1024.0,  # outstanding memory
    "ns": 10_000.0,  # p99 latency: 10 us
    "samples/s": 0.0,  # set from the sampling frequency: 10% of one CPU
    "s/s": 0.25,  # off-CPU time: a quarter of a thread blocked more (or less) all along
}
EVENTS_PER_ROW = 4.0
# Smallest relative change: rates by half, levels by a fifth; latency percentiles come from
# log2 histograms, where one bucket is already 2x: two buckets (4x).
RELATIVE_FLOOR = {"rate": 0.5, "level": 0.2, "latency": 3.0}


@dataclass(frozen=True)
class DetectorSettings:
    min_duration_s: float = 1.0
    min_rows: int = 3  # two outliers in a row happen by chance over thousands of rows
    baseline_min_s: float = 1.0
    baseline_min_rows: int = 5
    robust_sigmas: float = 3.0
    false_discovery_rate: float = 0.05
    max_change_points: int = 8


@dataclass(frozen=True, eq=False)  # identity: numpy arrays inside
class Anomaly:
    """One series departing from its baseline during [start_s, end_s]."""

    series: Series
    start_s: float
    end_s: float
    first_row: int
    last_row: int  # inclusive
    baseline: float  # median of the baseline regime
    baseline_mad: float
    observed: float  # median of the anomalous rows
    peak: float  # the most extreme row in the anomaly's direction
    direction: Literal["up", "down"]
    p_value: float
    q_value: float
    score: float

    @property
    def signal(self) -> str:
        return self.series.signal

    @property
    def rows(self) -> int:
        return self.last_row - self.first_row + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "signal": self.series.signal,
            "series": self.series.name,
            "labels": dict(self.series.labels),
            "unit": self.series.unit,
            "start_s": round(self.start_s, 6),
            "end_s": round(self.end_s, 6),
            "baseline": _round(self.baseline),
            "observed": _round(self.observed),
            "peak": _round(self.peak),
            "direction": self.direction,
            "score": round(self.score, 3),
            "p_value": float(f"{self.p_value:.3g}"),
            "q_value": float(f"{self.q_value:.3g}"),
            "method": METHOD,
        }


# Up to this many values a median is taken by sorting a list: np.median's own overhead
# (~40 us a call, several calls per series) was most of the detector's time over a window
# of a few dozen rows; past it numpy's partition is the faster.
SMALL_MEDIAN = 64


def _median(values: np.ndarray) -> float:
    """np.median of finite values, bit for bit: the middle value, or the two middle ones
    added and halved as np.mean adds and divides them."""
    n = len(values)
    if n == 0 or n > SMALL_MEDIAN:
        return float(np.median(values))
    ordered = sorted(values.tolist())
    half = n // 2
    return ordered[half] if n % 2 else (ordered[half - 1] + ordered[half]) / 2


def _nanmedian(values: np.ndarray) -> float:
    """np.nanmedian of a 1-D array: the median of the values that are not NaN."""
    present = values[~np.isnan(values)]
    if len(present) == 0:
        return float(np.nanmedian(values))  # NaN, and numpy's warning
    return _median(present)


def _mad(values: np.ndarray) -> float:
    """Median absolute deviation (unscaled) of finite values. scipy.stats.median_abs_deviation
    computes the same, with a per-call cost 50x np.median's that shows over hundreds of
    series (and np.median's is 20x this one's over a window's rows)."""
    n = len(values)
    if n == 0:
        return 0.0
    if n > SMALL_MEDIAN:
        return float(np.median(np.abs(values - np.median(values))))
    center = _median(values)
    return _median(np.abs(values - center))


def _round(value: float) -> float:
    return float(f"{value:.6g}")


@dataclass(frozen=True)
class _Candidate:
    series: Series
    first: int
    last: int
    baseline_rows: np.ndarray
    direction: Literal["up", "down"]
    p_value: float


def detect(timeline: Timeline, settings: DetectorSettings | None = None) -> list[Anomaly]:
    """Every anomaly of every series, strongest first."""
    settings = settings or DetectorSettings()
    tested: list[tuple[Series, _Candidate | None]] = []
    for series in timeline.series:
        candidates = _candidates(series, timeline, settings)
        if candidates is None:
            continue  # too few rows to say anything: not part of the family tested
        if candidates:
            tested.extend((series, c) for c in candidates)
        else:
            tested.append((series, None))  # tested, nothing found: still counts in the family
    if not tested:
        return []
    p_values = np.array([c.p_value if c is not None else 1.0 for _, c in tested])
    q_values = sps.false_discovery_control(p_values, method="bh")
    anomalies = []
    for (_, candidate), q in zip(tested, q_values, strict=True):
        if candidate is None or q > settings.false_discovery_rate:
            continue
        anomalies.append(_anomaly(candidate, float(q), timeline))
    anomalies.sort(key=lambda a: (-a.score, a.start_s, a.series.key))
    return anomalies


def _candidates(
    series: Series, timeline: Timeline, settings: DetectorSettings
) -> list[_Candidate] | None:
    present = np.flatnonzero(~np.isnan(series.values))
    if len(present) < settings.baseline_min_rows + settings.min_rows:
        return None
    values = series.values[present]
    floor = _floor(series, timeline)
    if _within_floor(values, floor):
        # Every regime, however the series is cut, would merge into one with its neighbours
        # (their medians differ by less than the floor): one regime, the baseline if it is
        # long enough, and nothing after it. Most of a churning host's series are such (a
        # short-lived process's few samples), and the cuts cost the most of the detector.
        bounds = [(0, len(values))]
    else:
        shaped = np.log2(np.maximum(values, 1.0)) if series.nature == "latency" else values
        cuts = change_points(shaped, settings.min_rows, settings.max_change_points)
        bounds = _merge_alike(
            list(zip([0, *cuts], [*cuts, len(values)], strict=True)),
            values,
            series,
            floor,
            settings,
        )
    base_index = _baseline_segment(bounds, present, series, settings)
    if base_index is None:
        return None
    b0, b1 = bounds[base_index]
    base_rows = values[b0:b1]
    baseline = _median(base_rows)
    scale = _noise(series, base_rows, timeline)
    marks: list[Literal["up", "down"] | None] = []
    for s0, s1 in bounds[base_index + 1 :]:
        level = _median(values[s0:s1])
        marks.append(_departure(series, baseline, level, scale, floor, settings))
    out = []
    index = 0
    later = bounds[base_index + 1 :]
    while index < len(later):
        direction = marks[index]
        if direction is None:
            index += 1
            continue
        end = index
        while end + 1 < len(later) and marks[end + 1] == direction:
            end += 1
        first, last = later[index][0], later[end][1] - 1
        index = end + 1
        trimmed = _trim(values, first, last, direction, baseline, scale, floor, series, settings)
        if trimmed is None:
            continue
        first, last = trimmed
        # A ramp's first rows can fall in the regime before it (an L2 split is placed where
        # the means differ most): take back the rows just before that depart as well.
        while (
            first - 1 >= b0 + settings.baseline_min_rows
            and _departure(series, baseline, float(values[first - 1]), scale, floor, settings)
            == direction
        ):
            first -= 1
        rows = last - first + 1
        duration = float(series.ends[present[last]] - series.starts[present[first]])
        if rows < settings.min_rows or duration < settings.min_duration_s - 1e-9:
            continue
        p_value = departure_p_value(values[first : last + 1], base_rows)
        out.append(
            _Candidate(
                series, int(present[first]), int(present[last]), base_rows, direction, p_value
            )
        )
    return out


def _trim(
    values: np.ndarray,
    first: int,
    last: int,
    direction: Literal["up", "down"],
    baseline: float,
    scale: float,
    floor: float,
    series: Series,
    settings: DetectorSettings,
) -> tuple[int, int] | None:
    """The rows of a regime that depart on their own: a regime's edges may hold a row of
    the baseline, and one huge row can carry a two-row regime's median. None when fewer
    than `min_rows` rows (or under half the regime) depart."""
    departs = [
        _departure(series, baseline, float(v), scale, floor, settings) == direction
        for v in values[first : last + 1]
    ]
    hits = [first + i for i, d in enumerate(departs) if d]
    if len(hits) < settings.min_rows or 2 * len(hits) < len(departs):
        return None
    return hits[0], hits[-1]


def departure_p_value(rows: np.ndarray, baseline: np.ndarray) -> float:
    """How unlikely the rows are under the baseline's distribution: the smaller p of
    Mann-Whitney U (ranks: unmoved by a few outliers, but it cannot go below about
    1/C(n+m, n), so a short departure never reaches significance) and Welch's t
    (magnitude: a short, large departure), doubled for having chosen (Bonferroni)."""
    key = (rows.dtype.str, rows.tobytes(), baseline.dtype.str, baseline.tobytes())
    known = _P_VALUES.get(key)
    if known is None:
        known = _departure_p_value(rows, baseline)
        if len(_P_VALUES) >= P_VALUES_KEPT:
            del _P_VALUES[next(iter(_P_VALUES))]  # the oldest
        _P_VALUES[key] = known
    return known


# The p-values of the samples tested lately: the agent's watch tests the same rows against the
# same baseline at one inspection after another (a latency series' few distinct values, a
# regime that has not moved), and the two tests cost ~1 ms a pair. A pure function of the
# samples' bytes, so a value found here is the one the tests would give.
P_VALUES_KEPT = 4096
_P_VALUES: dict[tuple[str, bytes, str, bytes], float] = {}


def _departure_p_value(rows: np.ndarray, baseline: np.ndarray) -> float:
    direct = _direct_tests(rows, baseline)
    ranks = _p_value(sps.mannwhitneyu, direct, rows, baseline, alternative="two-sided")
    if len(rows) < 2 or len(baseline) < 2:
        return min(1.0, 2.0 * _finite_p(ranks))
    if np.ptp(rows) == 0 and np.ptp(baseline) == 0:
        return min(1.0, 2.0 * _finite_p(ranks))  # two flat levels: Welch's t is undefined
    with warnings.catch_warnings():  # nearly flat samples: precision notes, not errors
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = _p_value(sps.ttest_ind, direct, rows, baseline, equal_var=False)
    best = min(_finite_p(ranks), _finite_p(welch))
    return min(1.0, 2.0 * best)


# scipy.stats' tests go through a decorator that sorts out axes, NaN policy and masked
# arrays: two thirds of a test's time on a window's few rows (1.4 of 2.1 ms for the pair).
# `_no_deco=True` (scipy's own switch, for its tests) calls the test itself, which gives the
# same p-value for two 1-D samples of 2 or more finite values; checked once on a sample
# (tests/analysis/test_anomalies_fast.py holds it to that on many), and a scipy without the
# switch, or where it differs, is called as usual.
@functools.cache
def _undecorated_tests_agree() -> bool:
    x, y = np.array([1.0, 2.0, 2.0, 7.0]), np.array([3.0, 5.0, 6.0, 8.0, 9.5])
    tests = (
        (sps.mannwhitneyu, {"alternative": "two-sided"}),
        (sps.ttest_ind, {"equal_var": False}),
    )
    try:
        return all(
            float(test(x, y, _no_deco=True, **options).pvalue)
            == float(test(x, y, **options).pvalue)
            for test, options in tests
        )
    except TypeError:  # a scipy without the switch
        return False


def _direct_tests(rows: np.ndarray, baseline: np.ndarray) -> bool:
    """Whether the tests can be called without scipy's decorator for these samples."""
    return (
        rows.ndim == baseline.ndim == 1
        and len(rows) >= 2
        and len(baseline) >= 2
        and bool(np.isfinite(rows).all() and np.isfinite(baseline).all())
        and _undecorated_tests_agree()
    )


def _p_value(
    test: Any, direct: bool, rows: np.ndarray, baseline: np.ndarray, **options: Any
) -> float:
    if direct:
        return float(test(rows, baseline, _no_deco=True, **options).pvalue)
    return float(test(rows, baseline, **options).pvalue)


def _finite_p(p: float) -> float:
    return float(p) if math.isfinite(p) else 1.0


def _within_floor(values: np.ndarray, floor: float) -> bool:
    """All values closer together than the floor: the median of any rows of them is between
    the smallest and the largest, so no two regimes can differ by the minimum effect
    (`_departure` with a zero scale, as `_merge_alike` asks it)."""
    return bool(float(values.max()) - float(values.min()) < floor)


def _merge_alike(
    bounds: list[tuple[int, int]],
    values: np.ndarray,
    series: Series,
    floor: float,
    settings: DetectorSettings,
) -> list[tuple[int, int]]:
    """Join neighbouring regimes whose levels differ by less than the minimum effect: a very
    regular series splits on a step of a few percent, and a steady start cut into short
    pieces would leave no regime long enough to be the baseline."""
    merged = bounds[:1]
    for s0, s1 in bounds[1:]:
        m0, m1 = merged[-1]
        before, after = _median(values[m0:m1]), _median(values[s0:s1])
        if _departure(series, before, after, 0.0, floor, settings) is None:
            merged[-1] = (m0, s1)
        else:
            merged.append((s0, s1))
    return merged


def _baseline_segment(
    bounds: list[tuple[int, int]], present: np.ndarray, series: Series, settings: DetectorSettings
) -> int | None:
    for index, (s0, s1) in enumerate(bounds):
        length = float(series.ends[present[s1 - 1]] - series.starts[present[s0]])
        if s1 - s0 >= settings.baseline_min_rows and length >= settings.baseline_min_s - 1e-9:
            return index
    return None


def _noise(series: Series, base_rows: np.ndarray, timeline: Timeline) -> float:
    """The baseline's robust sigma; for event rates at least the Poisson sigma of its
    median count (a series flat at 3 calls per row still varies by about sqrt(3)), taken
    at the higher of the baseline's and the whole series' medians (a short baseline of
    quiet rows must not make ordinary rows look loud)."""
    scale = MAD_TO_SIGMA * _mad(base_rows)
    if series.nature == "rate" and series.unit == "1/s":
        level = max(_median(base_rows), _nanmedian(series.values))
        per_row = level * timeline.interval_s
        scale = max(scale, math.sqrt(max(per_row, 0.0)) / max(timeline.interval_s, 1e-9))
    return scale


def _floor(series: Series, timeline: Timeline) -> float:
    if series.unit == "samples/s":
        return 0.1 * timeline.cpu_hz if timeline.cpu_hz else 1.0
    if series.unit == "1/s":
        # At least a few events in a row, whatever the row's length: 1 call in a 0.2 s
        # row is 5 per second, and chance alone gives sparse series such rows.
        return max(ABSOLUTE_FLOOR["1/s"], EVENTS_PER_ROW / max(timeline.interval_s, 1e-9))
    return ABSOLUTE_FLOOR.get(series.unit, 0.0)


def _departure(
    series: Series,
    baseline: float,
    level: float,
    scale: float,
    floor: float,
    settings: DetectorSettings,
) -> Literal["up", "down"] | None:
    """The direction of a regime that departs from the baseline by the minimum effect."""
    change = level - baseline
    if abs(change) < max(floor, settings.robust_sigmas * scale):
        return None
    relative = RELATIVE_FLOOR[series.nature]
    if series.nature == "latency":
        ratio = max(level, 1.0) / max(baseline, 1.0)
        if ratio < 1.0 + relative and ratio > 1.0 / (1.0 + relative):
            return None
    elif abs(change) < relative * abs(baseline):
        return None
    return "up" if change > 0 else "down"


def _anomaly(candidate: _Candidate, q_value: float, timeline: Timeline) -> Anomaly:
    series = candidate.series
    rows = series.values[candidate.first : candidate.last + 1]
    rows = rows[~np.isnan(rows)]
    baseline = _median(candidate.baseline_rows)
    mad = _mad(candidate.baseline_rows)
    observed = _median(rows)
    peak = float(rows.max() if candidate.direction == "up" else rows.min())
    floor = _floor(series, timeline)
    noise = max(MAD_TO_SIGMA * mad, floor, 1e-12)
    score = min(abs(observed - baseline) / noise, 1000.0)
    return Anomaly(
        series=series,
        start_s=float(series.starts[candidate.first]),
        end_s=float(series.ends[candidate.last]),
        first_row=candidate.first,
        last_row=candidate.last,
        baseline=baseline,
        baseline_mad=mad,
        observed=observed,
        peak=peak,
        direction=candidate.direction,
        p_value=candidate.p_value,
        q_value=q_value,
        score=score,
    )


def segmentation_costs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """What binary segmentation needs of a series: the cumulative sums of its values and of
    their squares (a segment's L2 cost from four lookups) and the penalty a split must beat
    (3 sigma^2 log n, sigma from the MAD of successive differences)."""
    x = values.astype(float)
    first = np.concatenate(([0.0], np.cumsum(x)))
    second = np.concatenate(([0.0], np.cumsum(x * x)))
    sigma = MAD_TO_SIGMA * _mad(np.diff(x)) / math.sqrt(2.0)
    spread = float(np.max(np.abs(x))) if len(x) else 0.0
    # A series that is flat between its steps has sigma 0: any real step still gains more
    # than rounding noise.
    penalty = max(3.0 * sigma * sigma * math.log(len(x)), 1e-9 * (1.0 + spread * spread))
    return first, second, penalty


def change_points(values: np.ndarray, min_size: int, max_points: int) -> list[int]:
    """Indices where a new regime starts (binary segmentation, L2 cost, robust penalty)."""
    n = len(values)
    if n < 2 * min_size:
        return []
    first, second, penalty = segmentation_costs(values)
    segments = [(0, n)]
    # each segment's best split, found once: a round splits one segment, the others keep theirs
    splits = [_best_split(first, second, 0, n, min_size)]
    cuts: list[int] = []
    while len(cuts) < max_points:
        best: tuple[float, int, int] | None = None
        for index, split in enumerate(splits):
            if split is not None and split[1] > penalty and (best is None or split[1] > best[0]):
                best = (split[1], index, split[0])
        if best is None:
            break
        _, index, k = best
        a, b = segments[index]
        segments[index : index + 1] = [(a, k), (k, b)]
        splits[index : index + 1] = [
            _best_split(first, second, a, k, min_size),
            _best_split(first, second, k, b, min_size),
        ]
        cuts.append(k)
    return sorted(cuts)


def _best_split(
    first: np.ndarray, second: np.ndarray, a: int, b: int, min_size: int
) -> tuple[int, float] | None:
    """The split of [a, b) that lowers the squared-error cost the most, and by how much:
    cost(a, b) - cost(a, k) - cost(k, b) for every k at least `min_size` from each end, with
    cost(i, j) = S2(i, j) - S1(i, j)^2 / (j - i) from the cumulative sums."""
    if b - a < 2 * min_size:
        return None
    lo, hi = a + min_size, b - min_size + 1
    ks = np.arange(lo, hi)
    first_k, second_k = first[lo:hi], second[lo:hi]
    first_a, second_a, first_b, second_b = first[a], second[a], first[b], second[b]
    total = first_b - first_a
    whole = second_b - second_a - total * total / (b - a)
    left_total = first_k - first_a
    left = second_k - second_a - left_total * left_total / (ks - a)
    right_total = first_b - first_k
    right = second_b - second_k - right_total * right_total / (b - ks)
    gains = whole - left - right
    best = int(np.argmax(gains))
    return lo + best, float(gains[best])
