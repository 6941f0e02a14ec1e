"""The findings that compare trials (for studies without momentum curves), the best setting, and what
recalibration recovers: plain sentences with their statistics and trial counts, from trial views.

`study.report.build` uses these or the paired ones (`study.report.paired`). Every comparison needs at
least MIN_SIDE_N trials on each side (and the split search a permutation test); otherwise the sentence
says "inconclusive" and why.
"""

from __future__ import annotations

import math
from statistics import median

from study import space
from study.report import stats
from study.report.document import Finding
from study.report.stats import HIGH_MOMENTUM, HORIZON_THRESHOLD, LOW_MOMENTUM, MIN_EFFECT, MIN_SIDE_N
from study.report.views import TrialView, describe, finite_median, fmt, points


def momentum_finding(with_bn: list[TrialView]) -> str:
    """bn_momentum's effect where it can have one: high momentum with too few steps vs low momentum.

    Momentum changes no trained weight, only how fast BN's moving statistics leave their initial
    0/1, so its effect is judged on trials whose statistics could not settle (EMA horizon below
    HORIZON_THRESHOLD) against low-momentum trials, on the gap and on the part of it that stale
    statistics cause (the mode gap); high-momentum trials that did settle are the control.
    """
    def momentum(v):
        return v.params.get("bn_momentum", math.nan)

    def medians(group):
        return finite_median(v.get("gap") for v in group), finite_median(v.get("mode_gap") for v in group)

    stale = [v for v in with_bn if momentum(v) >= HIGH_MOMENTUM and v.horizon < HORIZON_THRESHOLD]
    settled = [v for v in with_bn if momentum(v) >= HIGH_MOMENTUM and v.horizon >= HORIZON_THRESHOLD]
    low = [v for v in with_bn if momentum(v) < LOW_MOMENTUM]
    (stale_gap, stale_mode), (low_gap, low_mode), (settled_gap, settled_mode) = map(medians, (stale, low, settled))
    low_text = (f"trials with bn_momentum < {LOW_MOMENTUM:g} had {fmt(low_gap)} and {fmt(low_mode)} "
                f"(n={len(low)})")
    settled_text = (f"bn_momentum ≥ {HIGH_MOMENTUM:g} trials with enough steps to settle had a median gap of "
                    f"{fmt(settled_gap)} and mode gap of {fmt(settled_mode)} (n={len(settled)})")
    if len(stale) < MIN_SIDE_N or len(low) < MIN_SIDE_N:
        text = (f"bn_momentum: {len(stale)} trial(s) with bn_momentum ≥ {HIGH_MOMENTUM:g} and too few steps for "
                f"the moving statistics to settle (steps × (1 − bn_momentum) < {HORIZON_THRESHOLD:g}) and {len(low)} "
                f"with bn_momentum < {LOW_MOMENTUM:g}; at least {MIN_SIDE_N} of each are needed, so what momentum "
                "goes with is inconclusive")
        if len(settled) >= MIN_SIDE_N and len(low) >= MIN_SIDE_N:
            text += f". For reference, {settled_text}; {low_text}"
        return text + "."
    most_steps = int(max(v.get("steps") for v in stale))
    observed = (f"trials with bn_momentum ≥ {HIGH_MOMENTUM:g} and at most {most_steps} steps, too few for the moving "
                f"statistics to settle (steps × (1 − bn_momentum) < {HORIZON_THRESHOLD:g}), had a median gap of "
                f"{fmt(stale_gap)} and mode gap of {fmt(stale_mode)} (n={len(stale)}); {low_text}")
    mechanism = ("Momentum changes no trained weight; at inference batchnorm uses moving statistics that start at "
                 "0/1 and move only (1 − bn_momentum) per step")
    gap_effect, mode_effect = stale_gap - low_gap, stale_mode - low_mode
    if gap_effect >= MIN_EFFECT:
        text = f"High bn_momentum with short training goes with a wider gap: {observed}. {mechanism}"
    elif mode_effect >= MIN_EFFECT:
        text = (f"High bn_momentum with short training goes with a wider mode gap, though the whole gap differs "
                f"by less than {MIN_EFFECT:g} (other causes of the gap weigh more here): {observed}. {mechanism}")
    elif max(abs(gap_effect), abs(mode_effect)) < MIN_EFFECT:
        return (f"bn_momentum: {observed}. Differences under {MIN_EFFECT:g}: no effect of momentum is shown "
                "(inconclusive).")
    else:
        text = f"High bn_momentum with short training did not go with a wider gap here: {observed}"
    if len(settled) >= MIN_SIDE_N:
        text += f". With enough steps the difference goes: {settled_text}"
    return text + "."


def best_setting(best: TrialView | None) -> str:
    """The best complete trial, with its val and test accuracy."""
    if best is None:
        return "No trial has completed yet, so there is no best setting."
    label = f" (preset {best.preset})" if best.preset else ""
    return (f"Best setting: trial {best.number}{label} with {describe(best)} reached val accuracy "
            f"{fmt(best.get('val_accuracy'), 3)} and test accuracy {fmt(best.get('test_accuracy'), 3)} "
            f"(train {fmt(best.get('train_accuracy'), 3)}, gap {fmt(best.get('gap'), 3)}).")


def across_trial_findings(finished: list[TrialView], missing: str | None) -> list[Finding]:
    """Without momentum curves: why (`missing`), then momenta and the other parameters compared across trials.

    Trials differ in everything at once, so these say what "goes with" the gap, never what moves it.
    """
    out = [Finding("paired_effect", "Paired momentum effect: not measured. " + (missing or "No finished batchnorm "
                   "trial yet.") + " The findings below compare trials, which also differ in batch size, dropout, "
                   "depth, steps and pruning; rerun the study with the current gaplab for paired findings.")]
    # Momentum only matters where there is batchnorm; the no-BN presets are left out of its split.
    gap = {v.number: v.get("gap") for v in finished}
    params = {p.name: {v.number: v.params[p.name] for v in finished if p.name in v.params and p.exists(v.batchnorm)}
              for p in space.PARAMS}
    out.append(stats.across_trial_split(params, gap, "gap"))
    with_bn = [v for v in finished if v.batchnorm]
    out.append(Finding("across_trial_momentum", momentum_finding(with_bn), scheme="across trials, medians"))

    # EMA horizon: steps x (1 - momentum).
    horizon = [v for v in with_bn if math.isfinite(v.horizon)]
    short = [v.get("gap") for v in horizon if v.horizon < HORIZON_THRESHOLD]
    long = [v.get("gap") for v in horizon if v.horizon >= HORIZON_THRESHOLD]
    if min(len(short), len(long)) >= MIN_SIDE_N:
        text = (f"EMA horizon (training steps × (1 − bn_momentum)): trials with a horizon below "
                f"{HORIZON_THRESHOLD:g} had a median gap of {fmt(median(short))} (n={len(short)}); "
                f"at {HORIZON_THRESHOLD:g} or more it was {fmt(median(long))} (n={len(long)}).")
    else:
        text = (f"EMA horizon (training steps × (1 − bn_momentum)): {len(short)} batchnorm trial(s) below "
                f"{HORIZON_THRESHOLD:g} and {len(long)} at or above it; inconclusive (need {MIN_SIDE_N} on each side).")
    out.append(Finding("across_trial_horizon", text, scheme="across trials, medians"))

    mode = finite_median(v.get("mode_gap") for v in finished)
    general = finite_median(v.get("generalization_gap") for v in finished)
    if math.isfinite(mode) and math.isfinite(general):
        numbers = (f"over {len(finished)} finished trials the median mode gap is {fmt(mode)} and the median "
                   f"generalization gap is {fmt(general)}")
        if max(mode, general) < 0.02:
            text = f"There is little positive gap left to attribute: {numbers}."
        elif mode >= general:
            text = (f"The gap is mostly mode gap (train-mode vs inference-mode accuracy on the training split: stale "
                    f"batchnorm statistics, but also dropout and fit's within-epoch drift): {numbers}.")
        else:
            text = f"The gap is mostly generalization gap (inference-mode train vs val accuracy): {numbers}."
        out.append(Finding("gap_parts", text, split="val", scheme="across trials, medians"))
    out.append(Finding("recalibration", recalibration_finding(with_bn), split="val", scheme="per trial"))
    return out


def recalibration_finding(with_bn: list[TrialView]) -> str:
    """What re-estimating BN statistics at the final weights (PreciseBN) changes, overall and at high momentum."""
    def recovered(views):
        values = [v.get("val_accuracy_recalibrated") - v.get("val_accuracy") for v in views]
        return stats.median_interval([r for r in values if math.isfinite(r)])

    what = ("PreciseBN re-estimates batchnorm's statistics on the training data at the final weights (the population "
            "statistics of the trained model), where the moving averages average batch statistics over the recent "
            "steps, at weights that were still changing")
    overall = recovered(with_bn)
    if overall.n < stats.MIN_PAIRED_N:
        return f"{what}. With {overall.n} batchnorm trial(s) measured, what it changes is not stated."
    sentence = f"{what}. With no choice involved, val scores it: it changes val accuracy by a median {_points(overall)}"
    high = recovered([v for v in with_bn if v.params.get("bn_momentum", 0) >= HIGH_MOMENTUM])
    if high.n >= stats.MIN_PAIRED_N:
        return sentence + f"; for trials with bn_momentum ≥ {HIGH_MOMENTUM:g}, {_points(high)}."
    return sentence + f"; with {high.n} trial(s) at bn_momentum ≥ {HIGH_MOMENTUM:g} that subset is not stated."


def _points(effect: stats.Effect) -> str:
    """A median difference in points with its interval and n; "no clear effect" when the interval holds 0."""
    words = (f"{points(effect.estimate)} points (95 % interval {points(effect.low)} to {points(effect.high)}, "
             f"n={effect.n})")
    return words if effect.clear else f"{words}: no clear effect"
