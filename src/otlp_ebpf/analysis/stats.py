"""Noise models for comparing two profiles: is a change of share real or a wobble?

Two situations:
- one run per side: a share estimated from n sampled events has a binomial standard error
  sqrt(p(1-p)/n); two shares are compared with a two-proportion z-test (Agresti-Caffo adjusted,
  so a share of 0 or 1 from few samples still carries its uncertainty);
- several runs per side: the per-run values are compared with a Mann-Whitney U test (exact
  permutation distribution for small groups) and a bootstrap interval of the difference.

Every test answers two questions: did the value change at all (two-sided `p_change`) and did it
grow by more than a margin (one-sided `p_beyond`, H0: delta <= margin). The gate uses the second,
over all rows at once with Holm's step-down (`holm_rejects`), so many functions do not add up
to false alarms.

The distributions, the rank test and the bootstrap come from scipy.stats. Written here is only
what it lacks: the exact rank-sum distribution under ties, which scipy offers only as a
permutation test recomputed on every call (30x slower than this cached one).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

# Above this many rank arrangements the U distribution is taken from its normal approximation.
_EXACT_LIMIT = 20_000
BOOTSTRAP_RESAMPLES = 1_000


@dataclass(frozen=True)
class ShiftTest:
    """The outcome of comparing a value before and after, in the caller's units.

    `ci_low`/`ci_high` bound `delta` at the requested confidence; `p_change` is two-sided
    (H0: no change) and `p_beyond` one-sided (H0: delta <= margin). Both are None when the
    inputs carry no noise estimate (exact counters, one run per side)."""

    delta: float
    ci_low: float
    ci_high: float
    p_change: float | None
    p_beyond: float | None
    method: str

    def beyond(self, confidence: float) -> bool:
        """True when the growth exceeds the margin at this confidence level."""
        if self.p_beyond is None:
            return False
        return self.p_beyond < alpha(confidence)


def alpha(confidence: float) -> float:
    """The significance level: rounded, so 1 - 0.95 is 0.05 and p = 1/20 does not pass it."""
    return round(1.0 - confidence, 12)


def z_for(confidence: float) -> float:
    """The two-sided normal quantile for a confidence level (1.96 for 0.95)."""
    return float(sps.norm.ppf(0.5 + confidence / 2.0))


def binomial_se(share: float, n: int) -> float:
    """Standard error of a share estimated from n independent samples."""
    if n <= 0:
        return math.inf
    return math.sqrt(max(share * (1.0 - share), 0.0) / n)


def _adjusted(share: float, n: int) -> float:
    # Agresti-Caffo: one pseudo-success and one pseudo-failure per group.
    return (share * n + 1.0) / (n + 2.0)


def share_shift(
    before: float, n_before: int, after: float, n_after: float, *, margin: float, confidence: float
) -> ShiftTest:
    """Compare two shares (fractions in [0, 1]) estimated from n_before and n_after samples.

    `margin` is a fraction too: p_beyond tests whether after - before > margin."""
    nb, na = int(n_before), int(n_after)
    delta = after - before
    se = math.hypot(
        binomial_se(_adjusted(before, nb), nb + 2), binomial_se(_adjusted(after, na), na + 2)
    )
    half = z_for(confidence) * se
    p_change = 2.0 * float(sps.norm.sf(abs(delta) / se)) if se > 0 else float(delta == 0)
    p_beyond = float(sps.norm.sf((delta - margin) / se)) if se > 0 else float(delta <= margin)
    return ShiftTest(delta, delta - half, delta + half, min(p_change, 1.0), p_beyond, "binomial")


def mann_whitney_greater(xs: Sequence[float], ys: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value for "ys tend to be larger than xs".

    Exact for small groups (all arrangements of the pooled midranks, so ties are handled),
    normal approximation with tie and continuity corrections beyond that."""
    n1, n2 = len(xs), len(ys)
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = [*xs, *ys]
    distinct = len(set(pooled))
    if math.comb(n1 + n2, n2) > _EXACT_LIMIT:
        if distinct == 1:
            return 0.5  # no variance at all: the approximation has nothing to say
        return float(sps.mannwhitneyu(ys, xs, alternative="greater", method="asymptotic").pvalue)
    if distinct == len(pooled):
        return float(sps.mannwhitneyu(ys, xs, alternative="greater", method="exact").pvalue)
    # scipy's exact distribution assumes no ties: count the arrangements of the midranks.
    ranks = sps.rankdata(pooled)
    observed = float(ranks[n1:].sum())
    sums = _rank_sum_distribution(tuple(float(r) for r in sorted(ranks)), n2)
    at_least = len(sums) - bisect.bisect_left(sums, observed - 1e-9)
    return at_least / len(sums)


@functools.lru_cache(maxsize=256)
def _rank_sum_distribution(ranks: tuple[float, ...], size: int) -> list[float]:
    """Every rank sum a group of `size` can take, sorted (one entry per arrangement).

    Cached: without ties the ranks are always 1..n, so a whole diff shares one distribution."""
    return sorted(sum(c) for c in itertools.combinations(ranks, size))


# statistic(xs, ys, axis): vectorized over resamples along `axis` (what scipy's bootstrap calls).
Statistic = Callable[..., Any]


def mean_difference(xs: Any, ys: Any, axis: int = -1) -> Any:
    return np.mean(ys, axis=axis) - np.mean(xs, axis=axis)


@dataclass(frozen=True)
class Bootstrap:
    """Sorted resampled values of a statistic, its percentile interval and tail shares."""

    values: tuple[float, ...]
    low: float
    high: float

    def share_at_most(self, limit: float) -> float:
        return bisect.bisect_right(self.values, limit) / len(self.values)

    def share_at_least(self, limit: float) -> float:
        return 1.0 - bisect.bisect_left(self.values, limit) / len(self.values)


def bootstrap(
    xs: Sequence[float],
    ys: Sequence[float],
    statistic: Statistic = mean_difference,
    *,
    confidence: float,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Bootstrap:
    """Resample each group on its own and evaluate statistic(xs, ys) each time.

    Seeded, so the same inputs always give the same answer (a CI gate must be repeatable)."""
    result = sps.bootstrap(
        (np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)),
        statistic,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        paired=False,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    values = tuple(float(v) for v in np.sort(result.bootstrap_distribution))
    return Bootstrap(values, float(low), float(high))


def rank_test_can_reach(n_before: int, n_after: int, confidence: float) -> bool:
    """Whether any arrangement of n_before + n_after runs is rare enough for the rank test to
    reach `confidence` (3 runs against 3 cannot do better than p = 1/20)."""
    return 1.0 / math.comb(n_before + n_after, n_after) < alpha(confidence)


def runs_method(n_before: int, n_after: int, confidence: float) -> str:
    """The test `runs_shift`/`runs_ratio` use for these group sizes."""
    return "mann-whitney" if rank_test_can_reach(n_before, n_after, confidence) else "bootstrap"


def _compare_runs(
    xs: Sequence[float],
    ys: Sequence[float],
    statistic: Statistic,
    shifted: tuple[Sequence[float], Sequence[float]],
    *,
    margin: float,
    confidence: float,
) -> ShiftTest:
    resampled = bootstrap(xs, ys, statistic, confidence=confidence)
    low, high = resampled.low, resampled.high
    method = runs_method(len(xs), len(ys), confidence)
    if method == "mann-whitney":
        up, down = mann_whitney_greater(xs, ys), mann_whitney_greater(ys, xs)
        p_beyond = mann_whitney_greater(*shifted)
    else:
        # Too few runs for a rank test: let the bootstrap distribution decide.
        up, down = resampled.share_at_most(0.0), resampled.share_at_least(0.0)
        p_beyond = resampled.share_at_most(margin)
    p_change = min(1.0, 2.0 * min(up, down))
    return ShiftTest(float(statistic(xs, ys)), low, high, p_change, p_beyond, method)


def runs_shift(
    xs: Sequence[float], ys: Sequence[float], *, margin: float, confidence: float
) -> ShiftTest:
    """Compare per-run values (several runs per side): delta of the means, a bootstrap
    interval, and Mann-Whitney p-values (ys shifted down by `margin` for p_beyond); the
    bootstrap gives the p-values too when there are too few runs for a rank test."""
    shifted = (xs, [y - margin for y in ys])
    return _compare_runs(xs, ys, mean_difference, shifted, margin=margin, confidence=confidence)


def relative_mean_change(xs: Any, ys: Any, axis: int = -1) -> Any:
    """Percent change of the mean from xs to ys (vectorized `relative_change`)."""
    before, after = np.mean(xs, axis=axis), np.mean(ys, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        change = (after / before - 1.0) * 100.0
    from_nothing = np.where(after == 0, 0.0, math.inf)
    return np.where(before == 0, from_nothing, change)


def runs_ratio(
    xs: Sequence[float], ys: Sequence[float], *, margin: float, confidence: float
) -> ShiftTest:
    """Like `runs_shift` for values compared by relative change: delta, interval and margin
    are percentages of the BASE mean (latencies, rates)."""
    shifted = ([x * (1.0 + margin / 100.0) for x in xs], ys)
    return _compare_runs(
        xs, ys, relative_mean_change, shifted, margin=margin, confidence=confidence
    )


def holm_rejects(p_values: Sequence[float], confidence: float) -> list[bool]:
    """Holm's step-down: which hypotheses fall with a family-wise error of 1 - confidence.

    The k-th smallest p-value (from 0) must be below alpha / (m - k), and every smaller one
    must have fallen before it."""
    level = alpha(confidence)
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, index in enumerate(order):
        if p_values[index] >= level / (len(p_values) - rank):
            break
        rejected[index] = True
    return rejected


def relative_change(before: float, after: float) -> float:
    """Percent change from before to after; +inf when something appears from nothing."""
    if before == 0:
        return 0.0 if after == 0 else math.inf
    return (after / before - 1.0) * 100.0


def exact_shift(delta: float) -> ShiftTest:
    """A change between two exact counts from one run each: no noise estimate exists."""
    return ShiftTest(delta, delta, delta, None, None, "single run")


def most_conservative(first: ShiftTest, second: ShiftTest) -> ShiftTest:
    """Combine two tests of the same delta: widest interval, largest p-values (a change must
    stand out from every noise source we know of)."""
    return ShiftTest(
        first.delta,
        min(first.ci_low, second.ci_low),
        max(first.ci_high, second.ci_high),
        _max_p(first.p_change, second.p_change),
        _max_p(first.p_beyond, second.p_beyond),
        f"{first.method}+{second.method}",
    )


def _max_p(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
