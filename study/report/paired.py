"""Momentum measured in pairs: the findings read off every trial's momentum curve.

A trial's curve is its trained model evaluated with BN statistics tracked at each momentum of a
grid, and with statistics re-estimated after training (PreciseBN): same weights, same steps, only the
statistics differ. So, unlike a comparison across trials (which also differ in batch size, dropout,
depth, steps and pruning), the difference between two points of one curve is the statistics' alone.

Val chooses, test scores, and the test split chooses nothing: not the momentum (`choose`), not the
band (`fit_band`, on val), not the recommendation (`recommend`, on val), not which effect leads (fixed
in advance: `HEADLINE_TRIALS`). For every trial with batchnorm four options are scored on test, paired
with its own momentum: the val-chosen grid momentum, the band's momentum for its steps, and PreciseBN.
Curves from before the held-out list existed are scored on val, labelled optimistic, and claim nothing.

* `paired_findings`: the recommendation and its held-out effect (the headline, over trials that trained
  to the end), secondary lines (pruned trials, EMA horizon; Holm-corrected), the options compared, the
  band checked leave-one-trial-out, the noise floor, how many trials had settled, momentum's part of the
  gap, batchnorm or not with the fix applied, and the best setting with the fix;
* `pruned_for_statistics`: pruned trials that were as good as the kept ones at their best momentum;
* `missing_curves`: why some trials have no paired numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median

from optuna.trial import TrialState

from gaplab.curve import MomentumCurve, momentum_step
from study import contract, space
from study.report import stats
from study.report.document import Finding
from study.report.findings import recalibration_finding
from study.report.views import TrialView, describe, fmt, fmt_param, points

HELD_OUT = "paired: chosen on val, scored on test"
OPTIMISTIC = "optimistic: chosen and scored on val"
# The options every batchnorm trial is scored at. "grid" is never recommended: its val accuracy is the
# largest of the grid's, so val would prefer it by construction.
OWN, GRID, BAND, PRECISE = "own", "grid", "band", "precise"
OPTION_WORDS = {OWN: "its own bn_momentum", GRID: "the val-chosen grid momentum",
                BAND: "the band's momentum for its steps",
                PRECISE: "statistics re-estimated after training (PreciseBN)"}
RECOMMENDABLE = (PRECISE, BAND)  # in this order among val ties: PreciseBN needs no grid and no steps
# The headline is fixed in advance: the recommendation's effect over the trials that trained to the end.
HEADLINE_TRIALS = "complete"


def with_curves(finished: list[TrialView]) -> list[TrialView]:
    """Finished batchnorm trials with a readable momentum curve and a step count."""
    return [v for v in finished if v.batchnorm and v.curve is not None and math.isfinite(v.get("steps"))]


def held_out(view: TrialView) -> tuple[float, ...] | None:
    """The curve's held-out (test) accuracy per momentum; None for curves recorded before it existed."""
    return held_out_list(view.curve)


def interval_text(effect: stats.Effect) -> str:
    if not math.isfinite(effect.low):
        return f"n={effect.n}, too few trials for a 95 % interval"
    return f"95 % interval {points(effect.low)} to {points(effect.high)}, n={effect.n}"


def interval(effect: stats.Effect) -> tuple[float, float] | None:
    """The effect's interval for its Finding; None where n is too small for one (nothing is claimed)."""
    return (effect.low, effect.high) if math.isfinite(effect.low) else None


def choose(curve: MomentumCurve) -> int:
    """The grid point val chooses: the highest val accuracy, ties to the largest momentum (as in training)."""
    return stats.chosen_index(curve.val_accuracy, curve.momentum)


def fitting_accuracy(curve: MomentumCurve) -> tuple[float, ...]:
    """The accuracies the band is fitted on: val's."""
    return curve.val_accuracy


def val_tolerance(curve: MomentumCurve) -> float:
    """"Within the noise" of the val-best: one standard error of a val accuracy there (NaN: size unknown)."""
    return stats.noise_floor(max(curve.val_accuracy), curve.val_images)


@dataclass(frozen=True)
class Pair:
    """One curve read for the paired findings: its options' accuracies on val and on the images scored."""

    view: TrialView
    scored: tuple[float, ...]
    chosen: int

    @property
    def curve(self) -> MomentumCurve:
        return self.view.curve

    @property
    def gain(self) -> float:
        return self.scored[self.chosen] - self.scored[self.curve.own]

    @property
    def complete(self) -> bool:
        """Trained to the end (not stopped by the pruner)."""
        return self.view.state == TrialState.COMPLETE

    @property
    def train_accuracy(self) -> float:
        """Fit's train accuracy, which momentum does not change: gap + val accuracy at any momentum."""
        return self.curve.gap[0] + self.curve.val_accuracy[0]

    @property
    def mode_part(self) -> float:
        """How much the mode gap (on training images) shrinks at the chosen momentum."""
        return self.curve.mode_gap[self.curve.own] - self.curve.mode_gap[self.chosen]


def pairs(paired: list[TrialView]) -> tuple[list[Pair], str]:
    """The curves scored on held-out images when any has them (else on val), and the split scored on."""
    on_test = [v for v in paired if held_out(v)]
    if on_test:
        return [Pair(v, held_out(v), choose(v.curve)) for v in on_test], "test"
    return [Pair(v, v.curve.val_accuracy, choose(v.curve)) for v in paired], "val"


# ---------------------------------------------------------------- the band, fitted on val
def _step_groups(found: list[Pair]) -> list[list[Pair]]:
    """Trials in groups of similar step counts, each large enough to fit a band without one of its trials."""
    ordered = sorted(found, key=lambda p: p.view.get("steps"))
    count = max(1, min(3, len(ordered) // 8))
    size = math.ceil(len(ordered) / count)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def _near(pair: Pair) -> dict[float, bool]:
    curve = pair.curve
    accuracies = fitting_accuracy(curve)
    return stats.near_best(accuracies, accuracies, curve.momentum, tolerance=val_tolerance(curve))


def fit_band(group: list[Pair]) -> tuple[tuple[float, float], float] | None:
    """((lowest, highest) momentum, its middle): the momenta within the noise of the val-best for 3 in 4 trials
    of `group`; None where no run of momenta is, or the val size is unknown."""
    if any(p.curve.val_images is None for p in group):
        return None
    near = [_near(p) for p in group]
    ends = stats.band(near)
    return None if ends is None else (ends, stats.band_middle(near, ends))


def _index_at(curve: MomentumCurve, momentum: float) -> int:
    """The curve's point for a grid momentum (the own one where they share a step)."""
    step = momentum_step(momentum)
    return min(range(len(curve.momentum)), key=lambda i: abs(momentum_step(curve.momentum[i]) - step))


@dataclass(frozen=True)
class Band:
    """The band of one step group (fitted on val) and its leave-one-trial-out momentum per trial."""

    steps_low: float
    steps_high: float
    low: float | None
    high: float | None
    middle: float | None
    n: int
    left_out: dict[int, float]  # trial number -> the middle of the band fitted without it
    hits: int  # left-out trials that scored at least their own momentum's test accuracy at that middle
    unknown_size: bool = False  # curves without the val size: no band can be fitted

    @property
    def checked(self) -> int:
        return len(self.left_out)


def bands(found: list[Pair]) -> list[Band]:
    out = []
    for group in _step_groups(found):
        fitted = fit_band(group)
        left_out = {}
        for i, pair in enumerate(group):
            without = fit_band(group[:i] + group[i + 1:]) if len(group) > stats.MIN_PAIRED_N - 1 else None
            if without is not None:
                left_out[pair.view.number] = without[1]
        steps = [p.view.get("steps") for p in group]
        (low, high), middle = fitted if fitted else ((None, None), None)
        hits = sum(p.scored[_index_at(p.curve, left_out[p.view.number])] >= p.scored[p.curve.own]
                   for p in group if p.view.number in left_out)
        out.append(Band(min(steps), max(steps), low, high, middle, len(group), left_out, hits,
                        any(p.curve.val_images is None for p in group)))
    return out


# ---------------------------------------------------------------- the options of every trial
@dataclass(frozen=True)
class Options:
    """One batchnorm trial's options, each on val and on test (absent where not measured)."""

    pair: Pair
    val: dict[str, float]
    test: dict[str, float]
    band_momentum: float | None

    @property
    def number(self) -> int:
        return self.pair.view.number


def options(found: list[Pair], fitted: list[Band]) -> list[Options]:
    """Every trial's options: own, val-chosen grid, the band's middle for its step group (fitted on the trials'
    val) and PreciseBN."""
    band_of = {p.view.number: b for b in fitted for p in found if b.steps_low <= p.view.get("steps") <= b.steps_high}
    out = []
    for pair in found:
        fitted_band = band_of.get(pair.view.number)
        middle = fitted_band.middle if fitted_band else None
        val, test = {}, {}
        for option in (OWN, GRID, PRECISE, BAND):
            read = read_option(pair.curve, option, middle, pair.scored)
            if read is not None:
                val[option], test[option] = read
        out.append(Options(pair, val, test, middle))
    return out


def read_option(curve: MomentumCurve, option: str, band_momentum: float | None = None,
                scored: tuple[float, ...] | None = None) -> tuple[float, float] | None:
    """(val, test) accuracy of one trained model with `option` applied, read off its curve: its own momentum, its
    val-chosen grid momentum, the grid point of `band_momentum` (BAND), or PreciseBN. `scored`: the accuracies
    per momentum standing for test (default the curve's held-out list). None where the curve did not measure it
    (no held-out list, no PreciseBN test accuracy, no band momentum)."""
    scored = scored if scored is not None else held_out_list(curve)
    if scored is None:
        return None
    if option == PRECISE:
        if curve.recalibrated_test_accuracy is None:
            return None
        return curve.recalibrated_val_accuracy, curve.recalibrated_test_accuracy
    if option == BAND and band_momentum is None:
        return None
    index = {OWN: curve.own, GRID: choose(curve)}.get(option)
    if index is None:
        index = _index_at(curve, band_momentum)
    return curve.val_accuracy[index], scored[index]


def held_out_list(curve: MomentumCurve) -> tuple[float, ...] | None:
    """The curve's held-out (test) accuracy per momentum; None for curves recorded before it existed."""
    return curve.test_accuracy or None


def recommend(scored: list[Options]) -> str:
    """The option val prefers across the trials: the largest median val gain over the own momentum, ties to the
    larger mean gain, then to the earlier of RECOMMENDABLE; own when no option gains on val. Only options every
    trial has compete (a band of some step groups only is not a rule for all), so all are judged on one set."""
    best, best_key = OWN, (0.0, 0.0)
    for option in RECOMMENDABLE:
        gains = [o.val[option] - o.val[OWN] for o in scored if option in o.val]
        whole = len(gains) == len(scored) >= stats.MIN_PAIRED_N
        key = (median(gains), sum(gains) / len(gains)) if whole else None
        if key is not None and key > best_key:
            best, best_key = option, key
    return best


def effect_of(scored: list[Options], option: str, baseline: str = OWN) -> stats.Effect:
    """The paired held-out effect of `option` over `baseline`: median of test differences with its interval."""
    return stats.median_interval([o.test[option] - o.test[baseline] for o in scored
                                  if option in o.test and baseline in o.test])


def what_to_do(option: str, fitted: list[Band]) -> str:
    """The recommendation as a thing to do."""
    if option == PRECISE:
        return "re-estimate the batchnorm statistics after training (PreciseBN)"
    if option == BAND:
        rules = [f"for about {_steps(b)} training steps use bn_momentum ≤ {fmt_param('bn_momentum', b.high)}"
                 for b in fitted if b.high is not None]
        return "; ".join(rules)
    return "keep the trials' own bn_momentum"


def _steps(b: Band) -> str:
    return f"{int(b.steps_low):,}" + ("" if b.steps_low == b.steps_high else f"–{int(b.steps_high):,}")


def evaluated_as(option: str, fitted: list[Band]) -> str:
    """How the recommendation's weights were evaluated, for the headline."""
    if option == PRECISE:
        return "Evaluated with statistics re-estimated after training"
    if option == BAND:
        momenta = _momenta([b.middle for b in fitted if b.middle is not None])
        return f"Evaluated with statistics tracked at bn_momentum {momenta}"
    return "Evaluated at their own bn_momentum"


def _signed(effect: stats.Effect, what: str) -> str:
    """"+X points (interval)" or "X points lower (interval)": a negative effect worded as one."""
    words = (f"{points(effect.estimate)} points" if effect.estimate >= 0
             else f"{points(-effect.estimate).lstrip('+')} points lower")
    return f"{words} on {what} ({interval_text(effect)})"


def _clear_words(effect: stats.Effect) -> str:
    if effect.n < stats.MIN_PAIRED_N:
        return f"not stated: fewer than {stats.MIN_PAIRED_N} trials"
    return {1: "clear: the interval excludes 0", -1: "clearly worse: the interval is below 0",
            0: "no clear effect: the interval includes 0"}[effect.direction]


# ---------------------------------------------------------------- the findings
def paired_findings(paired: list[TrialView], finished: list[TrialView]) -> list[Finding]:
    """The findings read off the curves of `paired` (`with_curves(finished)`, not empty)."""
    found, split = pairs(paired)
    out: list[Finding] = []
    if split == "test" and len(found) < len(paired):
        out.append(Finding("paired_coverage", f"{len(paired) - len(found)} of {len(paired)} trials with curves have "
                           "no held-out accuracy per momentum (recorded by an older gaplab) and are left out of the "
                           "paired numbers."))
    if len(found) < stats.MIN_PAIRED_N:
        out.append(Finding("paired_effect", f"Only {len(found)} trial(s) have momentum curves; at least "
                           f"{stats.MIN_PAIRED_N} are needed, so no paired effect is stated.", n=len(found),
                           split=split, scheme=HELD_OUT if split == "test" else OPTIMISTIC))
        return out + [Finding("recalibration", recalibration_finding([v for v in finished if v.batchnorm]))]
    if split != "test":
        return out + optimistic_findings(found, finished)
    fitted = bands(found)
    scored = options(found, fitted)
    complete = [o for o in scored if o.pair.complete]
    chosen = recommend(complete)
    out += recommendation_findings(scored, complete, chosen, fitted)
    out += options_findings(complete, fitted)
    images = _test_images(found)
    out += noise_findings(found, images)
    out += gap_attribution(found, finished)
    out += band_findings(fitted, scored)
    out += batchnorm_findings(scored, finished, chosen, fitted)
    out.append(Finding("recalibration", recalibration_finding([v for v in finished if v.batchnorm]),
                       split="val", scheme="per trial, no choice"))
    return out


def _test_images(found: list[Pair]) -> int | None:
    """The stored test-set size (older curves do not record it)."""
    counts = {p.curve.test_images for p in found} - {None}
    return counts.pop() if len(counts) == 1 else None


def headline_effect(effects: dict[str, stats.Effect]) -> str:
    """Which of `effects` (by trial group) leads: fixed in advance, whatever their intervals say."""
    return HEADLINE_TRIALS if HEADLINE_TRIALS in effects else next(iter(effects))


def recommendation_findings(scored: list[Options], complete: list[Options], chosen: str,
                            fitted: list[Band]) -> list[Finding]:
    """The recommendation (val chooses), its held-out effect over complete trials (the headline), and the
    secondary lines: pruned trials and the EMA-horizon halves, Holm-corrected."""
    option = chosen if chosen != OWN else PRECISE
    do = what_to_do(chosen, fitted)
    val_gains = {o: median([c.val[o] - c.val[OWN] for c in complete if o in c.val])
                 for o in RECOMMENDABLE if sum(o in c.val for c in complete) >= stats.MIN_PAIRED_N}
    preferred = "; ".join(f"{OPTION_WORDS[o]} {points(g)} points" for o, g in val_gains.items())
    text = (f"Recommendation: {do}. Chosen on val by a rule fixed in advance: the option with the largest median "
            f"val gain over the own momentum across the {len(complete)} trials that trained to the end (the "
            f"val-chosen grid momentum is not a candidate: its val accuracy is the grid's largest by construction); "
            f"median val change: {preferred or 'not measured'}.")
    out = [Finding("recommendation", text, val_gains.get(chosen), None, len(complete), "val",
                   "chosen on val across complete trials")]
    pruned = [o for o in scored if not o.pair.complete]
    horizons = [o.pair.view.horizon for o in complete]
    middle = median(horizons) if horizons else math.nan
    groups = {"complete": complete, "pruned": pruned,
              "short": [o for o in complete if o.pair.view.horizon < middle],
              "long": [o for o in complete if o.pair.view.horizon >= middle]}
    effects = {name: effect_of(group, option) for name, group in groups.items()}
    lead = headline_effect(effects)
    effect = effects[lead]
    if effect.n == 0:
        out.append(Finding("headline_effect", "Held-out effect of a fix: not measured. These curves were recorded by "
                           "an older gaplab, without PreciseBN's test accuracy or the val size a band needs; only the "
                           "val-chosen grid momentum is scored on test (below), and it is never recommended.",
                           split="test", scheme=HELD_OUT))
        return out
    what = (OPTION_WORDS[option] if chosen != OWN
            else f"{OPTION_WORDS[PRECISE]} (not recommended: val did not prefer it)")
    out.append(Finding("headline_effect", f"{evaluated_as(option, fitted)}, the same weights scored "
                       f"{_signed(effect, 'held-out images')} over the {effect.n} trials of this search that trained "
                       f"to the end, one seed; {_clear_words(effect)}. Option: {what}.", effect.estimate,
                       interval(effect), effect.n, "test", HELD_OUT + "; fixed in advance: complete trials"))
    secondary = {"pruned": "trials the pruner stopped early",
                 "short": f"complete trials with an EMA horizon (steps × (1 − bn_momentum)) below {middle:.3g}",
                 "long": f"complete trials with an EMA horizon of {middle:.3g} or more"}
    stated = [name for name in secondary if effects[name].n >= stats.MIN_PAIRED_N]
    p_values = [stats.sign_test([o.test[option] - o.test[OWN] for o in groups[name] if option in o.test])
                for name in stated]
    early_only = False
    for name, claimed, p in zip(stated, stats.holm(p_values), p_values):
        early_only |= name == "pruned" and claimed and effects[name].direction == 1 and effect.direction != 1
        e = effects[name]
        lines = f"{len(stated)} secondary line" + ("s" if len(stated) > 1 else "")
        verdict = (f"clear after Holm's correction for {lines}" if claimed and e.direction
                   else f"no clear effect after Holm's correction for {lines}")
        out.append(Finding(f"secondary_{name}", f"Secondary, {secondary[name]}: {_signed(e, 'held-out images')}; "
                           f"{verdict} (sign test p={p:.2g}).", e.estimate, interval(e), e.n, "test",
                           HELD_OUT + "; secondary, Holm-corrected", p))
    if early_only:
        out.insert(0, Finding("first_screen_note", f"The effect holds only for trials the pruner stopped early "
                              f"({_signed(effects['pruned'], 'held-out images')}); for the trials that trained to the "
                              f"end: {_signed(effect, 'held-out images')}, {_clear_words(effect)}.", effect.estimate,
                              interval(effect), effect.n, "test", HELD_OUT))
    return out


def options_findings(complete: list[Options], fitted: list[Band]) -> list[Finding]:
    """Each option against the own momentum, and the band against PreciseBN, on test, paired."""
    out = []
    for option in (GRID, BAND, PRECISE):
        e = effect_of(complete, option)
        if e.n == 0:
            continue
        note = " (the grid momentum is chosen per trial on val, so it is never recommended)" if option == GRID else ""
        out.append(Finding(f"option_{option}", f"Against its own bn_momentum, {OPTION_WORDS[option]} scored "
                           f"{_signed(e, 'held-out images')}; {_clear_words(e)}{note}.", e.estimate, interval(e),
                           e.n, "test", HELD_OUT))
    e = effect_of(complete, BAND, PRECISE)
    if e.n:
        out.append(Finding("option_band_vs_precise", f"Against PreciseBN, {OPTION_WORDS[BAND]} scored "
                           f"{_signed(e, 'held-out images')}; {_clear_words(e)}.", e.estimate, interval(e), e.n,
                           "test", HELD_OUT))
    return out


def noise_findings(found: list[Pair], images: int | None) -> list[Finding]:
    """The noise floor from the stored test count, and which trials had settled at their own momentum."""
    if not images:
        return [Finding("noise_floor", "Noise floor: the curves do not record one number of held-out images (recorded "
                        "by an older gaplab), so the noise floor and which trials had settled are not stated.",
                        split="test", scheme="binomial standard error")]
    typical = median(p.scored[p.curve.own] for p in found)
    floor = stats.noise_floor(typical, images)
    out = [Finding("noise_floor", f"Noise floor: one accuracy measured on the {images} held-out images has a "
                   f"standard error of about {floor * 100:.1f} points; two accuracies of one model on the same images "
                   "differ by less, as only the images they classify differently can move the difference.",
                   floor, None, images, "test", "binomial standard error, stored test count")]
    counted = [p for p in found if p.curve.test_differs_from_own is not None]
    if counted:
        def noise(p: Pair) -> float:
            return stats.difference_noise(p.curve.test_differs_from_own[p.chosen], images)

        calm = [p for p in counted if p.gain <= 2 * noise(p)]
        out.append(Finding("settled", f"{len(calm)} of {len(counted)} trials had settled at their own momentum: the "
                           "val-chosen momentum scored no more than two standard errors of the difference above it on "
                           "the held-out images (from the images the two classify differently).",
                           len(calm) / len(counted), None, len(counted), "test", "paired, per trial (McNemar)"))
    return out


def gap_attribution(found: list[Pair], finished: list[TrialView]) -> list[Finding]:
    """Momentum's part of the gap: how much the test gap shrinks at the val-chosen momentum, with its mode-gap and
    generalization-gap parts, and which other parameter goes with what momentum leaves."""
    part = stats.median_interval([p.gain for p in found])
    mode = stats.median_interval([p.mode_part for p in found])
    general = stats.median_interval([p.gain - p.mode_part for p in found])
    gap_own = median(p.train_accuracy - p.scored[p.curve.own] for p in found)
    rest = {p.view.number: p.train_accuracy - p.scored[p.chosen] for p in found}

    def shrinks(effect: stats.Effect) -> str:
        amount = points(abs(effect.estimate)).lstrip("+")
        verb = "shrinks by" if effect.estimate >= 0 else "grows by"
        return f"{verb} {amount} points ({interval_text(effect)}; {_clear_words(effect)})"

    text = (f"Momentum's part of the gap: at the val-chosen momentum the test gap {shrinks(part)}; of that, the mode "
            f"gap (train-mode vs inference-mode accuracy on training images: stale statistics, but also dropout and "
            f"fit's within-epoch drift) {shrinks(mode)} and the generalization gap {shrinks(general)}. The median "
            f"test gap at the own momentum is {fmt(gap_own)}; at the chosen momentum {fmt(median(rest.values()))}.")
    out = [Finding("gap_part", text, part.estimate, interval(part), part.n, "test", HELD_OUT)]
    # Momentum cannot matter without batchnorm: there the whole gap is the rest.
    rest.update({v.number: v.get("train_accuracy") - v.get("test_accuracy") for v in finished if not v.batchnorm})
    params = {name: {v.number: v.params[name] for v in finished if v.number in rest and name in v.params}
              for name in space.names() if name != "bn_momentum"}  # what goes with the rest: all but momentum
    out.append(stats.across_trial_split(params, rest, "rest of the test gap"))
    return out


def band_findings(fitted: list[Band], scored: list[Options]) -> list[Finding]:
    """The band per step range (fitted on val), checked leave-one-trial-out against the own momentum and
    PreciseBN on test; only within the steps the study ran."""
    out = []
    by_number = {o.number: o for o in scored}
    for b in fitted:
        if b.low is None and b.unknown_size:
            out.append(Finding("band", f"For {_steps(b)} training steps no band is fitted: the curves do not record "
                               "the val size (recorded by an older gaplab), so the noise of the val-best is unknown.",
                               n=b.n, split="val", scheme="band fitted on val"))
            continue
        if b.low is None:
            out.append(Finding("band", f"For {_steps(b)} training steps no run of grid momenta was within the noise of "
                               f"the val-best (one standard error of a val accuracy) for 3 in 4 of the {b.n} trials: "
                               "no momentum rule is stated.", n=b.n, split="val", scheme="band fitted on val"))
            continue
        checks = []
        for baseline in (OWN, PRECISE):
            differences = []
            for number, middle in b.left_out.items():
                o = by_number[number]
                if baseline in o.test:
                    differences.append(o.pair.scored[_index_at(o.pair.curve, middle)] - o.test[baseline])
            e = stats.median_interval(differences)
            if e.n:
                checks.append(f"against {OPTION_WORDS[baseline]} {_signed(e, 'held-out images')}, {_clear_words(e)}")
        check = ("; ".join(checks) if checks else "too few trials to check it leave-one-trial-out")
        out.append(Finding("band", f"For {_steps(b)} training steps the band is bn_momentum "
                           f"{_momenta([b.low, b.high])} (momenta within one val standard error of the val-best for 3 "
                           f"in 4 of {b.n} trials; fitted on val). Fitted without each trial and scored on its "
                           f"held-out images at the band's middle: {check}. Not stated outside the steps the study "
                           "ran.", b.middle, (b.low, b.high), b.n,
                           "val", "band fitted on val; leave-one-trial-out check scored on test"))
    return out


def fixed(view: TrialView, by_number: dict[int, Options], option: str) -> tuple[float, float, str]:
    """(val, test, how) of a trial with the recommended fix applied where it has batchnorm and a curve."""
    o = by_number.get(view.number)
    if o is None or option not in o.test:
        return view.get("val_accuracy"), view.get("test_accuracy"), "as trained"
    return o.val[option], o.test[option], how_applied(option, o.band_momentum)


def how_applied(option: str, band_momentum: float | None = None) -> str:
    """How a model was evaluated with `option` applied, as words after "evaluated"."""
    if option == BAND:
        return "as trained" if band_momentum is None else f"at bn_momentum {fmt_param('bn_momentum', band_momentum)}"
    return {OWN: "at its own bn_momentum", GRID: "at its val-chosen momentum", PRECISE: "with PreciseBN"}[option]


def ranked_with_fix(scored: list[Options], finished: list[TrialView], chosen: str) -> list[TrialView]:
    """The complete trials, best first by their val accuracy with the recommended fix (`chosen`) applied where they
    have batchnorm and a curve (`fixed`). The first is the best setting; the first without batchnorm, the best
    one without it. study.confirm retrains both, so the report and the confirmation name the same trials."""
    by_number = {o.number: o for o in scored}
    complete = [v for v in finished if v.state == TrialState.COMPLETE]
    return sorted(complete, key=lambda v: -_finite(fixed(v, by_number, chosen)[0]))


def batchnorm_findings(scored: list[Options], finished: list[TrialView], chosen: str,
                       fitted: list[Band]) -> list[Finding]:
    """With the recommended fix applied: the best complete trial (chosen on val) carries it, and the best
    batchnorm trial against the best one without batchnorm, chosen on val, scored on test."""
    by_number = {o.number: o for o in scored}
    ranked = ranked_with_fix(scored, finished, chosen)
    out = []
    if ranked:
        best = ranked[0]
        val, test, how = fixed(best, by_number, chosen)
        label = f" (preset {best.preset})" if best.preset else ""
        train = best.get("train_accuracy")
        out.append(Finding("best_setting", f"Best setting with the fix ({what_to_do(chosen, fitted)}), chosen on val: "
                           f"trial {best.number}{label} with {describe(best)}, evaluated {how}: val accuracy "
                           f"{fmt(val, 3)}, test accuracy {fmt(test, 3)} (train {fmt(train, 3)}, gap "
                           f"{fmt(train - val, 3)}).", test, None, 1, "test", "chosen on val with the fix applied"))
        val_images = {o.pair.curve.val_images for o in scored} - {None}
        tolerance = stats.noise_floor(val, val_images.pop()) if len(val_images) == 1 else math.nan
        if train - val <= tolerance:
            out.append(Finding("first_screen_note", f"The study's best setting (trial {best.number}{label}, chosen on "
                               f"val) has no gap to close: train {fmt(train, 3)}, val {fmt(val, 3)} (within one val "
                               f"standard error, {tolerance * 100:.1f} points).", train - val, None, 1, "val",
                               "best setting chosen on val"))
    with_bn = [v for v in ranked if v.batchnorm]
    without = [v for v in ranked if not v.batchnorm]
    if not with_bn or not without:
        out.append(Finding("keep_batchnorm", "Batchnorm or not: not compared, every complete trial "
                           + ("has" if with_bn else "lacks") + " batchnorm.", scheme="chosen on val"))
        return out
    bn_val, bn_test, how = fixed(with_bn[0], by_number, chosen)
    plain_val, plain_test = without[0].get("val_accuracy"), without[0].get("test_accuracy")
    images = _test_images([o.pair for o in scored])
    noise = math.sqrt(2) * stats.noise_floor((bn_test + plain_test) / 2, images)
    keep = bn_val >= plain_val
    beyond = "beyond" if abs(bn_test - plain_test) > 2 * noise else "within"
    within = (f"; the test difference is {beyond} two standard errors (±{2 * noise * 100:.1f} points, two models on "
              f"{images} images)" + (", so it may be noise" if beyond == "within" else "") if images else "")
    out.append(Finding("keep_batchnorm", f"{'Keep' if keep else 'Drop'} batchnorm (chosen on val, with the fix "
                       f"applied): the best batchnorm trial ({with_bn[0].number}, evaluated {how}) had val "
                       f"{fmt(bn_val, 3)}, the best trial without batchnorm ({without[0].number}) "
                       f"{fmt(plain_val, 3)}; on held-out images {fmt(bn_test, 3)} against {fmt(plain_test, 3)}, "
                       f"{_signed_points(bn_test - plain_test)}{within}.", bn_test - plain_test, None, 2, "test",
                       "best of each chosen on val, scored on test"))
    return out


def _signed_points(difference: float) -> str:
    return (f"{points(difference)} points for batchnorm" if difference >= 0
            else f"{points(-difference).lstrip('+')} points lower with batchnorm")


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def optimistic_findings(found: list[Pair], finished: list[TrialView]) -> list[Finding]:
    """Curves without held-out accuracy: the val-chosen momentum scored on val itself, claiming nothing."""
    effect = stats.median_interval([p.gain for p in found])
    return [
        Finding("paired_effect", f"Trials moved to their val-chosen grid momentum: median {points(effect.estimate)} "
                f"points of val accuracy (n={effect.n}; {OPTIMISTIC}, so never negative: no effect is claimed).",
                effect.estimate, None, effect.n, "val", OPTIMISTIC),
        Finding("recalibration", recalibration_finding([v for v in finished if v.batchnorm]), split="val",
                scheme="per trial, no choice"),
    ]


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

