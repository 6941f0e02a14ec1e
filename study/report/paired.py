"""Momentum measured in pairs: the findings read off every trial's momentum curve.

A trial's curve is its trained model evaluated with BN statistics tracked at each momentum of a
grid: same weights, same steps, only the momentum differs. So, unlike a comparison across trials
(which also differ in batch size, dropout, depth, steps and pruning), the difference between two
momenta of one curve is momentum's effect alone.

Val chooses, test scores: the momentum a trial should have used is the one with the highest val
accuracy, and every effect is the held-out (test) accuracy there minus at the trial's own momentum.
Curves from before the held-out list existed are scored on val, labelled optimistic, and claim nothing.

* `paired_findings`: the noise floor, the paired effect (all trials and by EMA horizon), how many
  trials had settled, momentum's part of the gap and what goes with the rest, the momentum band;
* `pruned_for_statistics`: pruned trials that were as good as the kept ones at their best momentum;
* `missing_curves`: why some trials have no paired numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median

from optuna.trial import TrialState

from study import contract
from study.report import stats
from study.report.document import Finding
from study.report.findings import recalibration_finding
from study.report.views import TrialView, fmt, fmt_param, points

# What goes with the rest of the gap: the searched parameters other than momentum.
REST_PARAMS = tuple(name for name in contract.SEARCHED if name != "bn_momentum")
HELD_OUT = "paired: momentum chosen on val, scored on test"
OPTIMISTIC = "optimistic: chosen and scored on val"


def with_curves(finished: list[TrialView]) -> list[TrialView]:
    """Finished batchnorm trials with a readable momentum curve and a step count."""
    return [v for v in finished if v.batchnorm and v.curve is not None and math.isfinite(v.get("steps"))]


def held_out(view: TrialView) -> tuple[float, ...] | None:
    """The curve's held-out (test) accuracy per momentum; None for curves recorded before it existed."""
    return view.curve.test_accuracy or None


def interval_text(effect: stats.Effect) -> str:
    return f"95 % interval {points(effect.low)} to {points(effect.high)}, n={effect.n}"


@dataclass(frozen=True)
class Pair:
    """One curve read for the paired findings, on the images it is scored on."""

    view: TrialView
    scored: tuple[float, ...]
    chosen: int

    @property
    def curve(self):
        return self.view.curve

    @property
    def gain(self) -> float:
        return stats.paired_gain(self.scored, self.curve.val_accuracy, self.curve.momentum, self.curve.own)

    @property
    def train_accuracy(self) -> float:
        """Fit's train accuracy, which momentum does not change: gap + val accuracy at any momentum."""
        return self.curve.gap[0] + self.curve.val_accuracy[0]

    @property
    def mode_part(self) -> float:
        """The part of momentum's effect on the gap that is the mode gap's change (on training images)."""
        return self.curve.mode_gap[self.curve.own] - self.curve.mode_gap[self.chosen]

    @property
    def rest(self) -> float:
        """The gap at the chosen momentum, on the scored images: what momentum leaves."""
        return self.train_accuracy - self.scored[self.chosen]


def pairs(paired: list[TrialView]) -> tuple[list[Pair], str]:
    """The curves scored on held-out images when any has them (else on val), and the split scored on."""
    on_test = [v for v in paired if held_out(v)]
    chosen = lambda v: stats.chosen_index(v.curve.val_accuracy, v.curve.momentum)  # noqa: E731
    if on_test:
        return [Pair(v, held_out(v), chosen(v)) for v in on_test], "test"
    return [Pair(v, v.curve.val_accuracy, chosen(v)) for v in paired], "val"


def settled(pair: Pair, floor: float) -> bool:
    """Settled: the own momentum's accuracy is within the noise floor of the curve's (val-chosen) best."""
    return pair.scored[pair.curve.own] >= pair.scored[pair.chosen] - floor


def paired_findings(paired: list[TrialView], finished: list[TrialView]) -> list[Finding]:
    """The findings read off the curves of `paired` (`with_curves(finished)`, not empty)."""
    found, split = pairs(paired)
    scheme = HELD_OUT if split == "test" else OPTIMISTIC
    out: list[Finding] = []
    if split == "test" and len(found) < len(paired):
        out.append(Finding("paired_coverage", f"{len(paired) - len(found)} of {len(paired)} trials with curves have "
                           "no held-out accuracy per momentum (recorded by an older gaplab) and are left out of the "
                           "paired numbers."))
    if len(found) < stats.MIN_PAIRED_N:
        out.append(Finding("paired_effect", f"Only {len(found)} trial(s) have momentum curves; at least "
                           f"{stats.MIN_PAIRED_N} are needed, so no paired effect is stated.", n=len(found),
                           split=split, scheme=scheme))
        return out + [Finding("recalibration", recalibration_finding([v for v in finished if v.batchnorm]))]
    images = stats.images_counted([a for p in found for a in p.scored])
    typical = median(p.scored[p.curve.own] for p in found)
    floor = stats.noise_floor(typical, images)
    if split == "test":
        out.append(Finding("noise_floor", f"Noise floor: one accuracy measured on the {images} held-out images has a "
                           f"standard error of about {abs(floor) * 100:.1f} points, so single-trial differences "
                           "smaller than that are noise." if images else "Noise floor: the number of held-out "
                           "images could not be read off the accuracies, so the noise floor is unknown.",
                           estimate=floor if images else None, n=images, split="test", scheme="binomial standard "
                           "error"))
    out += paired_effect(found, split, scheme)
    if split == "test" and images:
        calm = [p for p in found if settled(p, floor)]
        out.append(Finding("settled", f"{len(calm)} of {len(found)} trials had settled at their own momentum: its "
                           f"held-out accuracy was within the noise floor ({abs(floor) * 100:.1f} points) of the "
                           "accuracy at the val-chosen momentum.", estimate=len(calm) / len(found), n=len(found),
                           split="test", scheme="paired, per trial"))
    out += gap_attribution(found, split, scheme, finished)
    if split == "test":
        out += momentum_band(found)
    out.append(Finding("recalibration", recalibration_finding([v for v in finished if v.batchnorm]),
                       split="val", scheme="per trial, no interval"))
    return out


def _effect_finding(kind: str, subject: str, values: list[float], split: str, scheme: str, claim: str) -> Finding:
    effect = stats.median_interval(values)
    if split != "test":
        return Finding(kind, f"{subject}: median {points(effect.estimate)} points of val accuracy (n={effect.n}; "
                       f"{OPTIMISTIC}, so never negative: no effect is claimed).", effect.estimate, None, effect.n,
                       split, scheme)
    numbers = f"median {points(effect.estimate)} points of test accuracy ({interval_text(effect)}; {scheme})"
    text = f"{subject} {claim} a {numbers}." if effect.clear else f"{subject}: no clear effect, {numbers}."
    return Finding(kind, text, effect.estimate, (effect.low, effect.high), effect.n, split, scheme)


def paired_effect(found: list[Pair], split: str, scheme: str) -> list[Finding]:
    """The median gain of moving every trial to its val-chosen momentum: all trials, then by EMA horizon."""
    out = [_effect_finding("paired_effect", f"Trials moved to their val-chosen grid momentum (trained at "
                           f"bn_momentum {_momenta([p.view.momentum for p in found])})", [p.gain for p in found],
                           split, scheme, "would have scored")]
    horizons = sorted(p.view.horizon for p in found)
    middle = median(horizons)
    short = [p for p in found if p.view.horizon < middle]
    long = [p for p in found if p.view.horizon >= middle]
    if min(len(short), len(long)) >= stats.MIN_PAIRED_N:
        for group, words in ((short, f"below {middle:.3g}"), (long, f"{middle:.3g} or more")):
            out.append(_effect_finding(
                "paired_effect_by_horizon", f"Trials with an EMA horizon (steps × (1 − bn_momentum)) {words} (the "
                f"study's median)", [p.gain for p in group], split, scheme, "would have scored"))
    return out


def gap_attribution(found: list[Pair], split: str, scheme: str, finished: list[TrialView]) -> list[Finding]:
    """Momentum's part of the gap (gap at the own momentum minus at the chosen one, same images), its mode-gap
    and generalization-gap changes, the rest, and which other parameter goes with the rest."""
    part = _effect_finding("gap_part", f"Momentum's part of the {split} gap (gap at the own momentum minus gap at the "
                           "val-chosen momentum, same images)", [p.gain for p in found], split, scheme, "explains")
    mode = stats.median_interval([p.mode_part for p in found])
    general = stats.median_interval([p.gain - p.mode_part for p in found])
    gap_own = median(p.train_accuracy - p.scored[p.curve.own] for p in found)
    rest = {p.view.number: p.rest for p in found}
    def change(effect: stats.Effect) -> str:
        return (f"{points(effect.estimate)} points" + (f" ({interval_text(effect)})" if split == "test" else ""))

    split_words = (f"Of momentum's part, the mode gap (train-mode vs inference-mode accuracy on training images: "
                   f"stale statistics, but also dropout and fit's within-epoch drift) changes by a median "
                   f"{change(mode)} and the generalization gap by {change(general)}. The median {split} gap at the "
                   f"own momentum is {fmt(gap_own)}; what momentum leaves (the gap at the chosen momentum) is "
                   f"{fmt(median(rest.values()))}.")
    out = [part, Finding("gap_part_split", split_words, mode.estimate, (mode.low, mode.high) if split == "test"
                         else None, mode.n, split, scheme)]
    # Momentum cannot matter without batchnorm: there the whole gap is the rest.
    key = "test_accuracy" if split == "test" else "val_accuracy"
    rest.update({v.number: v.get("train_accuracy") - v.get(key) for v in finished if not v.batchnorm})
    params = {name: {v.number: v.params[name] for v in finished if v.number in rest and name in v.params}
              for name in REST_PARAMS}
    out.append(stats.across_trial_split(params, rest, f"rest of the {split} gap"))
    return out


def _step_groups(found: list[Pair]) -> list[list[Pair]]:
    """Trials in groups of similar step counts, each large enough to fit a band without one of its trials."""
    ordered = sorted(found, key=lambda p: p.view.get("steps"))
    count = max(1, min(3, len(ordered) // 8))
    size = math.ceil(len(ordered) / count)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


@dataclass(frozen=True)
class Band:
    """The momenta near the best for 3 in 4 trials of a step range, and the leave-one-out check."""

    steps_low: float
    steps_high: float
    low: float | None
    high: float | None
    n: int
    hits: int
    checked: int


def bands(found: list[Pair]) -> list[Band]:
    out = []
    for group in _step_groups(found):
        near = [stats.near_best(p.scored, p.curve.val_accuracy, p.curve.momentum) for p in group]
        ends = stats.band(near)
        hits, checked = stats.leave_one_out_hits(near)
        steps = [p.view.get("steps") for p in group]
        out.append(Band(min(steps), max(steps), *(ends or (None, None)), len(group), hits, checked))
    return out


def momentum_band(found: list[Pair]) -> list[Finding]:
    """The band of momenta per step range, only within the steps the study ran, checked leave-one-out."""
    out = []
    for b in bands(found):
        steps = f"{int(b.steps_low):,}" + ("" if b.steps_low == b.steps_high else f"–{int(b.steps_high):,}")
        if b.low is None:
            out.append(Finding("band", f"For {steps} training steps no run of grid momenta was within "
                               f"{stats.BAND_TOLERANCE * 100:g} point of the curve's best for 3 in 4 of the {b.n} "
                               "trials: no momentum rule is stated.", n=b.n, split="test", scheme="band"))
            continue
        rate = b.hits / b.checked if b.checked else math.nan
        check = (f"left out one at a time, {b.hits} of {b.checked} trials were within "
                 f"{stats.BAND_TOLERANCE * 100:g} point of their best at the band's middle" if b.checked
                 else "too few trials to check it leave-one-out")
        band_text = _momenta([b.low, b.high])
        out.append(Finding("band", f"For {steps} training steps use bn_momentum {band_text}: held-out accuracy "
                           f"was within {stats.BAND_TOLERANCE * 100:g} point of the curve's best (at its val-chosen "
                           f"momentum) for 3 in 4 of {b.n} trials across that band; {check}. Not stated outside the "
                           "steps the study ran.", rate, (b.low, b.high), b.n, "test",
                           "band over trials, leave-one-out hit rate"))
    return out


def _momenta(values) -> str:
    low, high = fmt_param("bn_momentum", min(values)), fmt_param("bn_momentum", max(values))
    return low if low == high else f"{low}–{high}"


def pruned_for_statistics(finished: list[TrialView], prune_on: str | None) -> str | None:
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
    if prune_on == "best_momentum":
        advice = ("The study already pruned on the val accuracy at the best momentum (prune_on best_momentum), so "
                  "these trials were stopped at an epoch when even that was low.")
    elif prune_on:
        advice = (f"The study pruned on {prune_on}; pruning on the val accuracy at the best momentum "
                  "(--prune_on best_momentum) keeps such trials.")
    else:
        advice = ("What the study pruned on is unknown (its settings predate prune_on); pruning on the val accuracy "
                  "at the best momentum (--prune_on best_momentum) keeps such trials.")
    return (f"The pruner stopped {len(stopped)} of {len(pruned)} pruned trials with a curve (trials "
            f"{', '.join(str(v.number) for v in stopped)}) whose val accuracy at their best momentum was at or above "
            f"the median of the {len(kept)} complete trials ({fmt(bar)}), and below it at their own momentum: they "
            f"were pruned for stale batchnorm statistics, not bad weights. {advice}")


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
        why.append(f"{len(unreadable)} have a curve that cannot be read and are skipped ("
                   + "; ".join(f"trial {v.number}: {v.curve_problem}" for v in unreadable) + ")")
    return f"Of {len(with_bn)} finished batchnorm trials, " + "; ".join(why) + "."
