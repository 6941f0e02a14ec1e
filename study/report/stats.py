"""The statistics the findings share, as plain functions of numbers (testable without a study):

* paired effects: `paired_gain` (held-out accuracy at the val-chosen momentum minus at the own one),
  `median_interval` (median over trials with its distribution-free interval: order statistics, exact
  binomial coverage; the one interval every claimed effect uses), `sign_test` and `holm` (secondary
  claims), `noise_floor` (the standard error of one accuracy) and `difference_noise` (of two accuracies
  on the same images, from how many images they classify differently);
* across trials: `split_search`, the largest threshold split over several parameters with a
  permutation test that repeats the whole search, and `across_trial_split`, its sentence;
* the momentum band: `near_best`, `band`, `band_middle`, `leave_one_out_hits`;
* a confirmation's K seeds: `mean_interval` (the mean over seeds with its t-interval; `mean_intervals`
  vectorised), the one interval for a handful of retrainings, where no distribution-free interval
  reaches 95 % (at K=5 even [min, max] holds the median only 93.75 %).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import median

import numpy as np
from scipy.stats import binom, binomtest, rankdata
from scipy.stats import t as student_t

from study.report.document import Finding
from study.report.views import fmt, fmt_param

# A split must move the median gap by at least this much to be called a finding.
MIN_EFFECT = 0.05
# EMA horizon (steps x (1 - momentum)) below which BN's running statistics have not caught up.
HORIZON_THRESHOLD = 3.0
HIGH_MOMENTUM = 0.95
LOW_MOMENTUM = 0.9


@dataclass
class ThresholdSplit:
    """Trials split at `threshold` on `param`: the median gap below and at or above it."""

    param: str
    threshold: float
    low_n: int
    high_n: int
    low_gap: float
    high_gap: float
    # Mann-Whitney's z of the high side against the low one: the sign of "larger"/"smaller".
    z: float = 0.0

    @property
    def effect(self) -> float:
        return self.high_gap - self.low_gap


def _candidate_thresholds(param: str, values: list[float]) -> list[float]:
    ordered = sorted(set(values))
    middle = median(values)
    candidates = {middle}
    above = [v for v in ordered if v > middle]
    if above:
        candidates.add(above[0])
    if param == "bn_momentum":
        candidates.update((0.9, HIGH_MOMENTUM, 0.99))
    return sorted(candidates)


# ---------------------------------------------------------------- paired effects and their intervals
# A paired effect is stated only from this many trials, and only when its interval excludes 0: the fewest
# trials whose order-statistic interval reaches 95 % (at n=5 even [min, max] covers the median only 93.75 %).
MIN_PAIRED_N = 6
CONFIDENCE = 0.95
# Across-trial splits: trials needed on each side, and shuffles in the permutation test.
MIN_SIDE_N = 5
PERMUTATIONS = 2_000
SIGNIFICANCE = 0.05
# The band's "close enough to the best": one point of held-out accuracy, for 3 in 4 trials.
BAND_TOLERANCE = 0.01
BAND_SHARE = 0.75


@dataclass(frozen=True)
class Effect:
    """A median over trials with its order-statistic interval; `clear` when n is enough and the interval excludes 0.

    `coverage`: the interval's exact probability of holding the true median, for any continuous distribution
    (at least that with ties); NaN where no interval reaches CONFIDENCE (n < MIN_PAIRED_N).
    """

    estimate: float
    low: float
    high: float
    n: int
    coverage: float = math.nan

    @property
    def clear(self) -> bool:
        return self.n >= MIN_PAIRED_N and (self.low > 0 or self.high < 0)

    @property
    def direction(self) -> int:
        """+1 or -1 for a clear effect, 0 for none."""
        return 0 if not self.clear else (1 if self.low > 0 else -1)


@functools.cache
def order_statistic_rank(n: int, confidence: float = CONFIDENCE) -> tuple[int, float]:
    """(k, coverage): the interval from the k-th smallest to the k-th largest of n values holds the median with
    probability 1 − 2·P(B ≤ k − 1), B ~ Binomial(n, 1/2); k is the largest with that at least `confidence`
    (0, NaN: none does)."""
    k = 0
    while k + 1 <= (n + 1) // 2 and 2 * binom.cdf(k, n, 0.5) <= 1 - confidence:
        k += 1
    return (k, float(1 - 2 * binom.cdf(k - 1, n, 0.5))) if k else (0, math.nan)


def median_intervals(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise medians of `samples` (repetitions × n) and their order-statistic intervals (NaN when n is too
    small for one): the vectorised form of `median_interval`, which calls it."""
    ordered = np.sort(np.asarray(samples, dtype=float), axis=1)
    n = ordered.shape[1]
    k, _ = order_statistic_rank(n, confidence)
    middle = np.median(ordered, axis=1) if n else np.full(len(ordered), math.nan)
    if not k:
        nan = np.full(len(ordered), math.nan)
        return middle, nan, nan
    return middle, ordered[:, k - 1], ordered[:, n - k]


def median_interval(values, confidence: float = CONFIDENCE) -> Effect:
    """The median of the finite `values` and its distribution-free interval (`order_statistic_rank`)."""
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if data.size == 0:
        return Effect(math.nan, math.nan, math.nan, 0)
    middle, low, high = median_intervals(data[None, :], confidence)
    return Effect(float(middle[0]), float(low[0]), float(high[0]), int(data.size),
                  order_statistic_rank(int(data.size), confidence)[1])


def sign_test(values) -> float:
    """Two-sided exact sign test of a zero median (zeros dropped): the p-value Holm's correction needs."""
    data = [v for v in values if math.isfinite(v) and v != 0]
    if not data:
        return 1.0
    return float(binomtest(sum(v > 0 for v in data), len(data), 0.5).pvalue)


def holm(p_values: list[float], level: float = 1 - CONFIDENCE) -> list[bool]:
    """Which of the hypotheses Holm's step-down procedure rejects at family-wise `level`, in the given order."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > level / (len(p_values) - rank):
            break
        rejected[i] = True
    return rejected


def chosen_index(val_accuracy, momentum) -> int:
    """The grid point val chooses: the highest val accuracy, ties to the largest momentum (as in training)."""
    return max(range(len(momentum)), key=lambda i: (val_accuracy[i], momentum[i]))


def paired_gain(scored, val_accuracy, momentum, own: int) -> float:
    """Accuracy on `scored`'s images at the val-chosen momentum minus at the own momentum (index `own`).

    Scored on held-out (test) images this is unbiased; scored on val itself it is never negative.
    """
    return scored[chosen_index(val_accuracy, momentum)] - scored[own]


def noise_floor(accuracy: float, images: int | None) -> float:
    """The standard error of one accuracy near `accuracy` measured on `images` images (NaN when unknown)."""
    if not images or not math.isfinite(accuracy):
        return math.nan
    return math.sqrt(accuracy * (1 - accuracy) / images)


def difference_noise(differing: int | None, images: int | None) -> float:
    """The standard error of the difference of two accuracies on the same `images` when `differing` of them are
    classified differently: only those can move it, each by ±1 (McNemar); NaN when unknown."""
    if not images or differing is None:
        return math.nan
    return math.sqrt(differing) / images


# ---------------------------------------------------------------- across-trial splits, permutation-tested
@dataclass(frozen=True)
class SplitSearch:
    """The largest split over parameters and thresholds, and how often shuffled values gave one as large."""

    top: ThresholdSplit | None
    p_value: float
    candidates: int
    permutations: int

    @property
    def clear(self) -> bool:
        return self.top is not None and self.p_value < SIGNIFICANCE


def _splits(params: dict[str, dict[int, float]], trials: list[int]):
    """Every (param, threshold, low positions, high positions) leaving MIN_SIDE_N trials on each side."""
    position = {trial: i for i, trial in enumerate(trials)}
    for param, values in params.items():
        present = [t for t in trials if t in values]
        if len(present) < 2 * MIN_SIDE_N:
            continue
        for threshold in _candidate_thresholds(param, [values[t] for t in present]):
            low = [position[t] for t in present if values[t] < threshold]
            high = [position[t] for t in present if values[t] >= threshold]
            if len(low) >= MIN_SIDE_N and len(high) >= MIN_SIDE_N:
                yield param, threshold, np.array(low), np.array(high)


def split_search(params: dict[str, dict[int, float]], outcome: dict[int, float], seed: int = 0,
                 permutations: int = PERMUTATIONS) -> SplitSearch:
    """The parameter and threshold (of `params`: per parameter, trial -> value) whose split separates `outcome`
    most (by rank; the medians on each side are reported), with a permutation test that repeats the whole
    search on shuffled outcomes, so picking the largest of many splits is paid for."""
    trials = [t for t in outcome if math.isfinite(outcome[t])]
    candidates = list(_splits(params, trials))
    if not candidates:
        return SplitSearch(None, math.nan, 0, 0)
    observed = np.array([outcome[t] for t in trials])
    # Splits are ranked, and the search repeated, on a rank statistic (Mann-Whitney's z): medians of a few
    # trials saturate on lumpy data, so a perfect separation would look no rarer than a shuffle.
    ranks = rankdata(observed)
    rng = np.random.default_rng(seed)
    shuffled = np.stack([ranks] + [rng.permutation(ranks) for _ in range(permutations)])
    spread = math.sqrt(len(ranks) * (len(ranks) + 1) / 12)
    z = np.stack([(shuffled[:, high].mean(axis=1) - shuffled[:, low].mean(axis=1))
                  / (spread * math.sqrt(1 / len(low) + 1 / len(high))) for _, _, low, high in candidates], axis=1)
    largest = np.abs(z).max(axis=1)
    index = int(np.argmax(np.abs(z[0])))
    param, threshold, low, high = candidates[index]
    top = ThresholdSplit(param, threshold, len(low), len(high), float(np.median(observed[low])),
                         float(np.median(observed[high])), float(z[0, index]))
    p_value = float((1 + np.sum(largest[1:] >= largest[0] - 1e-12)) / (1 + permutations))
    return SplitSearch(top, p_value, len(candidates), permutations)


# ---------------------------------------------------------------- the momentum band
def near_best(scored, val_accuracy, momentum, tolerance: float = BAND_TOLERANCE) -> dict[float, bool]:
    """Per grid momentum: is the accuracy on `scored`'s images within `tolerance` of it at the val-chosen
    momentum (the curve's best, chosen on other images than it is scored on)?"""
    best = scored[chosen_index(val_accuracy, momentum)]
    return {m: scored[i] >= best - tolerance - 1e-12 for i, m in enumerate(momentum)}


def band(curves: list[dict[float, bool]]) -> tuple[float, float] | None:
    """The longest run of grid momenta (shared by every curve) near the best for at least 3 in 4 curves, every
    momentum between its ends included; ties go to the larger momenta. None with too few curves or no such run."""
    if len(curves) < MIN_PAIRED_N - 1:
        return None
    grid = sorted(set.intersection(*(set(c) for c in curves)))
    inside = [sum(c[m] for c in curves) >= BAND_SHARE * len(curves) for m in grid]
    runs, start = [], None
    for i, good in enumerate([*inside, False]):
        if good and start is None:
            start = i
        elif not good and start is not None:
            runs.append((start, i - 1))
            start = None
    if not runs:
        return None
    first, last = max(runs, key=lambda run: (run[1] - run[0], run[1]))
    return grid[first], grid[last]


def band_middle(curves: list[dict[float, bool]], ends: tuple[float, float]) -> float:
    """The grid momentum in the middle of the band (the lower of two middles)."""
    grid = sorted(m for m in set.intersection(*(set(c) for c in curves)) if ends[0] <= m <= ends[1])
    return grid[(len(grid) - 1) // 2]


def leave_one_out_hits(curves: list[dict[float, bool]]) -> tuple[int, int]:
    """(hits, trials checked): the band fitted without each trial, and whether that trial was near its best at
    the band's middle."""
    hits = checked = 0
    for i, curve in enumerate(curves):
        others = curves[:i] + curves[i + 1:]
        ends = band(others)
        if ends is None:
            continue
        middle = band_middle(others, ends)
        if middle in curve:
            checked += 1
            hits += curve[middle]
    return hits, checked


def across_trial_split(params: dict[str, dict[int, float]], outcome: dict[int, float], what: str) -> Finding:
    """The permutation-tested largest split of `outcome` over `params`: "goes with", never "moves"."""
    search = split_search(params, outcome)
    scheme = (f"across trials: largest of {search.candidates} splits over {', '.join(params)}, permutation test "
              f"repeating the search ({search.permutations} shuffles)")
    if search.top is None:
        return Finding("across_trial_split", f"Which of {', '.join(params)} goes with the {what} is not tested: no "
                       f"split leaves {MIN_SIDE_N} trials on each side.", n=len(outcome), scheme="across trials")
    top = search.top
    name, t = top.param, fmt_param(top.param, top.threshold)
    numbers = (f"trials with {name} ≥ {t} had a median of {fmt(top.high_gap)} (n={top.high_n}), with {name} < {t} "
               f"{fmt(top.low_gap)} (n={top.low_n}); p={search.p_value:.2g} for the largest of {search.candidates} "
               "splits")
    if search.clear:
        # The direction is the searched statistic's (ranks), which the medians can contradict on lumpy data.
        text = (f"Higher {name} goes with a {'larger' if top.z > 0 else 'smaller'} {what} (across trials, which "
                f"differ in everything else too; a rank test, and TPE's trials are not independent draws): "
                f"{numbers}.")
    else:
        text = f"No parameter clearly goes with the {what}: the largest split is {name} at {t}: {numbers}."
    return Finding("across_trial_split", text, top.effect, None, top.low_n + top.high_n, "", scheme, search.p_value)


# ---------------------------------------------------------------- the mean over a confirmation's seeds
@dataclass(frozen=True)
class Mean:
    """A mean over n seeds with its t-interval (NaN ends where n < 2: one seed has no spread to go on).

    The t-interval's coverage is exact for normally spread values; tests/test_report_stats.py checks it by
    simulation at n = 3, 5 and 10 for skewed and lumpy accuracies too (`T_INTERVAL_COVERAGE` says what it found).
    """

    estimate: float
    low: float
    high: float
    n: int

    @property
    def holds_zero(self) -> bool:
        """No clear effect: the interval includes 0, or there is none."""
        return not (self.low > 0 or self.high < 0)


# What the simulation in tests/test_report_stats.py found for the 95 % t-interval at n = 3, 5 and 10 (20,000
# samples each): its coverage of the true mean for normally spread accuracies and for accuracies counted on 100
# images, for skewed ones (Beta(18, 2): mean 0.9, skewness −1.1), and for the difference of two skewed arms.
# The report quotes it.
T_INTERVAL_COVERAGE = ("simulated coverage at 3, 5 and 10 seeds: 95 % for normally spread accuracies and for "
                       "accuracies counted on 100 images, 92–93 % for skewed ones, 95 % for a paired difference")


def mean_intervals(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise means of `samples` (repetitions × n) and their t-intervals (NaN where n < 2): the vectorised form
    of `mean_interval`, which calls it."""
    data = np.asarray(samples, dtype=float)
    n = data.shape[1]
    middle = data.mean(axis=1) if n else np.full(len(data), math.nan)
    if n < 2:
        nan = np.full(len(data), math.nan)
        return middle, nan, nan
    half = student_t.ppf((1 + confidence) / 2, n - 1) * data.std(axis=1, ddof=1) / math.sqrt(n)
    return middle, middle - half, middle + half


def mean_interval(values, confidence: float = CONFIDENCE) -> Mean:
    """The mean of the finite `values` and its t-interval."""
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if data.size == 0:
        return Mean(math.nan, math.nan, math.nan, 0)
    middle, low, high = mean_intervals(data[None, :], confidence)
    return Mean(float(middle[0]), float(low[0]), float(high[0]), int(data.size))
