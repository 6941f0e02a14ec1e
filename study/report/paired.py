"""Momentum measured in pairs: the findings read off every trial's momentum curve.

A trial's curve is its trained model evaluated with BN statistics tracked at each momentum of a
grid: same weights, same steps, only the momentum differs. So, unlike a comparison across trials
(which also differ in batch size, dropout, depth, steps and pruning), the difference between the
trial's own momentum and the curve's best is momentum's effect alone.

* `paired_effect`: val accuracy gained at the best momentum, by EMA horizon steps x (1 - m);
* `gap_attribution`: the part of the gap momentum explains and the rest, and what moves the rest;
* `momentum_rule`: the best momentum as a function of training steps;
* `pruned_for_statistics`: pruned trials that were as good as the kept ones at their best momentum;
* `missing_curves`: why there is no paired finding, for studies run before curves were recorded.
"""

from __future__ import annotations

import math
from collections import Counter
from statistics import mean, median, quantiles

from optuna.trial import TrialState

from study import contract
from study.report.findings import recalibration_finding
from study.report.stats import HORIZON_THRESHOLD, MIN_EFFECT, best_split
from study.report.views import TrialView, fmt, fmt_param

# The rule's "close enough to the best": one point of val accuracy.
RULE_TOLERANCE = 0.01
RULE_STEPS = (100, 1_000, 10_000)
# What moves the rest of the gap: the searched parameters other than momentum.
REST_PARAMS = tuple(name for name in contract.SEARCHED if name != "bn_momentum")


def with_curves(finished: list[TrialView]) -> list[TrialView]:
    """Finished batchnorm trials with a readable momentum curve and a step count."""
    return [v for v in finished if v.batchnorm and v.curve is not None and math.isfinite(v.get("steps"))]


def _signed(value: float) -> str:
    text = fmt(value)
    return text if text.startswith("-") or text == "n/a" else "+" + text


def _spread(values: list[float]) -> str:
    if len(values) >= 4:
        low, _, high = quantiles(values, n=4, method="inclusive")
        return f"middle half {_signed(low)} to {_signed(high)}, all {_signed(min(values))} to {_signed(max(values))}"
    return f"all {_signed(min(values))} to {_signed(max(values))}"


def _at_most(momentum: float) -> str:
    """A momentum bound rounded down to 4 decimals (0.9995, not 1), at least 0."""
    return f"{math.floor(max(0.0, momentum) * 10_000) / 10_000:.4f}".rstrip("0").rstrip(".")


def _momenta(values) -> str:
    low, high = fmt_param("bn_momentum", min(values)), fmt_param("bn_momentum", max(values))
    return low if low == high else f"{low}–{high}"


def paired_findings(paired: list[TrialView], finished: list[TrialView]) -> list[str]:
    """The findings read off the curves of `paired` (`with_curves(finished)`, not empty)."""
    return [paired_effect(paired), *gap_attribution(paired, finished), momentum_rule(paired),
            recalibration_finding([v for v in finished if v.batchnorm])]


def paired_effect(paired: list[TrialView]) -> str:
    """Median val accuracy gained by moving each trial to its best grid momentum, by EMA horizon."""
    parts = []
    for stale, words in ((True, f"too few to settle (steps × (1 − bn_momentum) < {HORIZON_THRESHOLD:g})"),
                         (False, f"enough to settle (steps × (1 − bn_momentum) ≥ {HORIZON_THRESHOLD:g})")):
        group = [v for v in paired if (v.horizon < HORIZON_THRESHOLD) == stale]
        if not group:
            parts.append(f"no trial had {words}")
            continue
        gains = [v.curve.gain for v in group]
        best_momenta = Counter(fmt_param("bn_momentum", v.curve.momentum[v.curve.best]) for v in group)
        usual, count = best_momenta.most_common(1)[0]
        parts.append(f"trials trained with bn_momentum {_momenta([v.momentum for v in group])} for at most "
                     f"{int(max(v.get('steps') for v in group))} steps, {words}, would have scored a median "
                     f"{_signed(median(gains))} val accuracy at their best grid momentum ({usual} for {count} of "
                     f"them; {_spread(gains)}; n={len(group)}, paired)")
    return ("Paired momentum effect (each model evaluated at a grid of momenta: same weights, only the batchnorm "
            "statistics differ): " + "; ".join(parts) + ".")


def gap_attribution(paired: list[TrialView], finished: list[TrialView]) -> list[str]:
    """The part of the gap momentum explains, the rest, and which other parameter moves the rest."""
    own_gap = [v.get("gap") for v in paired]
    parts = [v.curve.momentum_part for v in paired]
    rest = {v.number: v.get("gap") - v.curve.momentum_part for v in paired}
    mean_gap, mean_part = mean(own_gap), mean(parts)
    numbers = (f"over {len(paired)} trials with curves the mean gap is {fmt(mean_gap)}; momentum explains "
               f"{fmt(mean_part)} of it (mode gap at the trial's own momentum minus at its best grid momentum; median "
               f"per trial {fmt(median(parts))}, paired) and the rest, {fmt(mean_gap - mean_part)}, is generalization "
               "gap and other train/inference differences")
    if mean_gap < MIN_EFFECT:
        lead = f"There is little gap to attribute on average: {numbers}."
    elif mean_part >= mean_gap - mean_part:
        lead = f"Stale batchnorm statistics (bn_momentum) explain most of the gap: {numbers}."
    else:
        lead = f"Most of the gap is not momentum's: {numbers}."
    # Momentum cannot matter without batchnorm: there the whole gap is the rest.
    rest.update({v.number: v.get("gap") for v in finished if not v.batchnorm})
    rest_views = [v for v in finished if v.number in rest]
    splits = [s for s in (best_split(rest_views, name, lambda v: rest[v.number]) for name in REST_PARAMS) if s]
    if not splits:
        return [lead, f"Which of {', '.join(REST_PARAMS)} moves the rest of the gap is inconclusive: no split leaves "
                      "at least 2 trials on each side."]
    top = max(splits, key=lambda s: abs(s.effect))
    others = "; ".join(f"{s.param} {fmt(abs(s.effect))}" for s in sorted(splits, key=lambda s: -abs(s.effect))
                       if s is not top)
    if abs(top.effect) < MIN_EFFECT:
        return [lead, f"None of {', '.join(REST_PARAMS)} moves the rest of the gap (gap minus momentum's part) by "
                      f"{MIN_EFFECT:g} or more (largest: {top.param}, {fmt(abs(top.effect))}; "
                      f"n={top.low_n + top.high_n}): "
                      "inconclusive."]
    name, t = top.param, fmt_param(top.param, top.threshold)
    direction = "larger" if top.effect > 0 else "smaller"
    return [lead, f"{name} moves the rest of the gap (gap minus momentum's part) most: trials with {name} ≥ {t} had a "
                  f"median of {fmt(top.high_gap)} (n={top.high_n}); with {name} < {t}, {fmt(top.low_gap)} "
                  f"(n={top.low_n}): higher {name} goes with a {direction} rest of the gap."
                  + (f" Next: {others}." if others else "")]


def momentum_rule(paired: list[TrialView]) -> str:
    """The EMA horizon steps x (1 - m) a model needs, read off the curves, turned into a momentum per step count."""
    horizons = [v.curve.settled_horizon(v.get("steps"), RULE_TOLERANCE) for v in paired]
    seen = sorted(h for h, bounded in horizons if not bounded)
    unbounded = len(horizons) - len(seen)
    tail = (f" {unbounded} trial(s) stayed within {RULE_TOLERANCE:g} of their best up to the largest grid momentum, "
            "so their need is below that and not counted." if unbounded else "")
    if len(seen) < 2:
        return (f"Rule for bn_momentum: inconclusive; {len(seen)} curve(s) show where val accuracy falls more than "
                f"{RULE_TOLERANCE:g} below its best (at least 2 are needed).{tail}")
    need = quantiles(seen, n=4, method="inclusive")[2] if len(seen) >= 4 else max(seen)
    share = "3 in 4" if len(seen) >= 4 else "all"
    examples = ", ".join(f"{steps:,} steps → bn_momentum ≤ {_at_most(1 - need / steps)}" for steps in RULE_STEPS)
    return (f"Rule for bn_momentum, read off the curves: val accuracy was within {RULE_TOLERANCE:g} of the curve's "
            f"best once training steps × (1 − bn_momentum) ≥ {need:.3g} for {share} of the {len(seen)} trials whose "
            f"curve falls off within the grid (median {median(seen):.3g}, paired). So with S training steps use "
            f"bn_momentum ≤ 1 − {need:.3g} / S: {examples}.{tail}")


def pruned_for_statistics(finished: list[TrialView]) -> str | None:
    """A caveat when the pruner stopped trials that were as good as the kept ones at their best momentum."""
    def at_best(v: TrialView) -> float:
        return v.curve.val_accuracy[v.curve.best]

    paired = with_curves(finished)
    kept = [at_best(v) for v in paired if v.state == TrialState.COMPLETE]
    pruned = [v for v in paired if v.state == TrialState.PRUNED]
    if not kept or not pruned:
        return None
    bar = median(kept)
    # At their own momentum they looked worse than the kept trials; at their best they were not.
    stopped = [v for v in pruned if at_best(v) >= bar and v.curve.val_accuracy[v.curve.own] < bar]
    if not stopped:
        return None
    return (f"The pruner stopped {len(stopped)} of {len(pruned)} pruned trials with a curve (trials "
            f"{', '.join(str(v.number) for v in stopped)}) whose val accuracy at their best momentum was at or above "
            f"the median of the {len(kept)} complete trials ({fmt(bar)}), and below it at their own momentum: they "
            "were pruned for stale batchnorm statistics, not bad weights. Pruning on the val accuracy at the best "
            "momentum (--prune_on best_momentum) keeps such trials.")


def missing_curves(finished: list[TrialView]) -> str | None:
    """Why some or all finished batchnorm trials have no paired numbers; None when all have them."""
    with_bn = [v for v in finished if v.batchnorm]
    unreadable = [v for v in with_bn if v.curve_problem]
    absent = [v for v in with_bn if contract.MOMENTUM_CURVE_ATTR not in v.attrs]
    if not unreadable and not absent:
        return None
    why = []
    if absent:
        why.append(f"{len(absent)} have no momentum curve (trial user attribute {contract.MOMENTUM_CURVE_ATTR}): they "
                   "were run before gaplab measured every model at a grid of momenta, or their training diverged")
    if unreadable:
        why.append(f"{len(unreadable)} have a curve that cannot be read (trial {unreadable[0].number}: "
                   f"{unreadable[0].curve_problem})")
    return f"Of {len(with_bn)} finished batchnorm trials, " + "; ".join(why) + "."
