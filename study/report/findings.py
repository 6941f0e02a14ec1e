"""The findings that compare trials (for studies without momentum curves), the best setting, and what
recalibration recovers: plain sentences with their statistics and trial counts, from trial views.

`study.report.build` uses these or the paired ones (`study.report.paired`). Every claim needs at least 2 trials on each side and a difference of at least MIN_EFFECT;
otherwise the sentence says "inconclusive" and why.
"""

from __future__ import annotations

import math
from statistics import median

from study.contract import SEARCHED
from study.report.stats import HIGH_MOMENTUM, HORIZON_THRESHOLD, LOW_MOMENTUM, MIN_EFFECT, best_split, split_sentence
from study.report.views import TrialView, describe, finite_median, fmt


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
    if len(stale) < 2 or len(low) < 2:
        text = (f"bn_momentum: {len(stale)} trial(s) with bn_momentum ≥ {HIGH_MOMENTUM:g} and too few steps for "
                f"the moving statistics to settle (steps × (1 − bn_momentum) < {HORIZON_THRESHOLD:g}) and {len(low)} "
                f"with bn_momentum < {LOW_MOMENTUM:g}; at least 2 of each are needed, so momentum's effect is "
                "inconclusive")
        if len(settled) >= 2 and len(low) >= 2:
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
        text = f"High bn_momentum widens the gap when training is short: {observed}. {mechanism}"
    elif mode_effect >= MIN_EFFECT:
        text = (f"High bn_momentum with short training opens a mode gap, though the whole gap differs by less than "
                f"{MIN_EFFECT:g} (other causes of the gap weigh more here): {observed}. {mechanism}")
    elif max(abs(gap_effect), abs(mode_effect)) < MIN_EFFECT:
        return (f"bn_momentum: {observed}. Differences under {MIN_EFFECT:g}: no effect of momentum is shown "
                "(inconclusive).")
    else:
        text = f"High bn_momentum with short training did not widen the gap here: {observed}"
    if len(settled) >= 2:
        text += f". With enough steps the effect goes: {settled_text}"
    return text + "."


def best_setting(best: TrialView | None) -> str:
    """The best complete trial, with its val and test accuracy."""
    if best is None:
        return "No trial has completed yet, so there is no best setting."
    label = f" (preset {best.preset})" if best.preset else ""
    return (f"Best setting: trial {best.number}{label} with {describe(best)} reached val accuracy "
            f"{fmt(best.get('val_accuracy'), 3)} and test accuracy {fmt(best.get('test_accuracy'), 3)} "
            f"(train {fmt(best.get('train_accuracy'), 3)}, gap {fmt(best.get('gap'), 3)}).")


def across_trial_findings(finished: list[TrialView], missing: str | None) -> list[str]:
    """Without momentum curves: why (`missing`), then momenta and the other parameters compared across trials."""
    out = ["Paired momentum effect: not measured. " + (missing or "No finished batchnorm trial yet.")
           + " The findings below compare momenta across trials, which also differ in batch size, dropout, depth, "
           "steps and pruning; rerun the study with the current gaplab for paired findings."]
    if len(finished) < 4:
        out.append(f"Only {len(finished)} finished trial(s): too few to say which parameter moves the gap "
                   "(inconclusive; at least 2 trials on each side of a split are needed).")
        return out

    # Momentum only matters where there is batchnorm; the no-BN presets are left out of its split.
    with_bn = [v for v in finished if v.batchnorm]
    splits = {param: best_split(with_bn if param == "bn_momentum" else finished, param)
              for param in SEARCHED}
    valid = [s for s in splits.values() if s is not None]
    if not valid:
        out.append("No parameter split leaves at least 2 finished trials on each side: which parameter "
                   "moves the gap is inconclusive.")
    else:
        top = max(valid, key=lambda s: abs(s.effect))
        if abs(top.effect) < MIN_EFFECT:
            out.append(f"No parameter moves the median gap by {MIN_EFFECT} or more over {len(finished)} finished "
                       f"trials (largest: {top.param}, {fmt(abs(top.effect))}): inconclusive.")
        else:
            others = sorted((s for s in valid if s is not top), key=lambda s: -abs(s.effect))
            tail = ""
            if others:
                tail = " Next: " + "; ".join(f"{s.param} {fmt(abs(s.effect))}" for s in others) + "."
            out.append(split_sentence(top) + tail)

    out.append(momentum_finding(with_bn))

    # EMA horizon: steps x (1 - momentum).
    horizon = [v for v in with_bn if math.isfinite(v.horizon)]
    short = [v.get("gap") for v in horizon if v.horizon < HORIZON_THRESHOLD]
    long = [v.get("gap") for v in horizon if v.horizon >= HORIZON_THRESHOLD]
    if len(short) >= 2 and len(long) >= 2:
        out.append(f"EMA horizon (training steps × (1 − bn_momentum)): trials with a horizon below "
                   f"{HORIZON_THRESHOLD:g} had a median gap of {fmt(median(short))} (n={len(short)}); "
                   f"at {HORIZON_THRESHOLD:g} or more it was {fmt(median(long))} (n={len(long)}).")
    else:
        out.append(f"EMA horizon (training steps × (1 − bn_momentum)): {len(short)} batchnorm trial(s) below "
                   f"{HORIZON_THRESHOLD:g} and {len(long)} at or above it; inconclusive (need 2 on each side).")

    mode = finite_median(v.get("mode_gap") for v in finished)
    general = finite_median(v.get("generalization_gap") for v in finished)
    if math.isfinite(mode) and math.isfinite(general):
        numbers = (f"over {len(finished)} finished trials the median mode gap is {fmt(mode)} and the median "
                   f"generalization gap is {fmt(general)}")
        if max(mode, general) < 0.02:
            out.append(f"There is little positive gap left to attribute: {numbers}.")
        elif mode >= general:
            out.append(f"The remaining gap is mostly mode gap (train-mode vs inference-mode accuracy on the training "
                       f"split, i.e. batchnorm statistics): {numbers}.")
        else:
            out.append(f"The remaining gap is mostly generalization gap (overfitting proper): {numbers}.")

    out.append(recalibration_finding(with_bn))
    return out


def recalibration_finding(with_bn: list[TrialView]) -> str:
    """What re-estimating BN statistics exactly (PreciseBN) recovers, overall and at high momentum."""
    recovered = [v.get("val_accuracy_recalibrated") - v.get("val_accuracy") for v in with_bn]
    recovered = [r for r in recovered if math.isfinite(r)]
    if len(recovered) >= 2:
        sentence = (f"Re-estimating batchnorm statistics on the training data changes val accuracy by a median "
                    f"of {fmt(median(recovered), 3)} (n={len(recovered)} batchnorm trials)")
        high = [v.get("val_accuracy_recalibrated") - v.get("val_accuracy") for v in with_bn
                if v.params.get("bn_momentum", 0) >= HIGH_MOMENTUM]
        high = [r for r in high if math.isfinite(r)]
        if len(high) >= 2:
            sentence += (f"; for trials with bn_momentum ≥ {HIGH_MOMENTUM:g} the median is "
                         f"{fmt(median(high), 3)} (n={len(high)}).")
        else:
            sentence += f"; with {len(high)} trial(s) at bn_momentum ≥ {HIGH_MOMENTUM:g} that subset is inconclusive."
        return sentence
    return "Fewer than 2 finished batchnorm trials: what recalibration recovers is inconclusive."
