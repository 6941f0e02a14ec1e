"""The statistics the findings share: threshold splits of trials on one parameter and the sentence
that states one, with the thresholds that make a difference a finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median

from study.report.views import TrialView, fmt, fmt_param

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


def best_split(views: list[TrialView], param: str, value=lambda v: v.get("gap")) -> ThresholdSplit | None:
    """The threshold on `param` (median or a meaningful value) with the largest difference in the median of
    `value` (the gap unless told), among those leaving at least 2 trials on each side; None when none does."""
    points = [(v.params[param], value(v)) for v in views if param in v.params and math.isfinite(value(v))]
    if len(points) < 4:
        return None
    best = None
    for threshold in _candidate_thresholds(param, [x for x, _ in points]):
        low = [g for x, g in points if x < threshold]
        high = [g for x, g in points if x >= threshold]
        if len(low) < 2 or len(high) < 2:
            continue
        split = ThresholdSplit(param, threshold, len(low), len(high), median(low), median(high))
        if best is None or abs(split.effect) > abs(best.effect):
            best = split
    return best


def split_sentence(split: ThresholdSplit) -> str:
    name, t = split.param, fmt_param(split.param, split.threshold)
    direction = "larger" if split.effect > 0 else "smaller"
    return (f"{name} moves the gap most: trials with {name} ≥ {t} had a median gap of {fmt(split.high_gap)} "
            f"(n={split.high_n}); with {name} < {t} it was {fmt(split.low_gap)} (n={split.low_n}), "
            f"a difference of {fmt(abs(split.effect))}, so higher {name} goes with a {direction} gap"
            + (" (batchnorm trials only)." if name == "bn_momentum" else "."))


