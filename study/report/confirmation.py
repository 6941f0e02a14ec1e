"""The confirmation (`--confirm K`): the study's answer retrained on K fresh seeds, as the report reads it.

After the search, `python -m study.run --confirm K` retrains three arms (contract.ARMS) on K fresh seeds each, in
a companion Optuna study on the same storage (`contract.confirmation_study_name`): the recommended setting, the
best setting without batchnorm and the starting point (the seed's own setting). This module reads that study
(never creating it: an old study has none) and says, for the first screen:

* per arm, over its seeds: held-out (test) accuracy and gap, each a mean with its 95 % t-interval
  (`stats.mean_interval`, coverage simulated in tests/test_report_stats.py); the recommended arm both with the
  recommended fix (read off each training's own momentum curve or PreciseBN, as `paired.read_option` reads a
  search trial's) and as trained, so the fix's effect is paired within each training;
* the recommended arm with the fix minus the starting point, paired on seed (the same seed, the same weight
  initialisation and data order);
* the winner's curse: the recommended trial's val accuracy in the search against its confirmed val and test
  accuracy;
* otherwise "not confirmed", with the command that confirms.

A confirmation is tied to the recommendation it confirms (`contract.CONFIRMS_ATTR`): `current_recommendation`
is the one the report makes now; trainings of another one are kept apart and labelled, never mixed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState

from study import contract
from study.report import next_steps, paired, stats
from study.report.document import Finding, Section, Table
from study.report.views import TrialView, complete_by_value, describe, fmt, points, trial_views
from study.report.views import finished as finished_trials

# The kinds of the confirmation's findings: the first screen's lines under the headline.
KINDS = ("confirmed_arm", "confirmed_difference", "winners_curse", "confirmation", "older_confirmation")
SCHEME = "K fresh seeds (same split and test images); mean with its 95 % t-interval"
ARM_WORDS = {contract.RECOMMENDED_ARM: "Recommended setting", contract.WITHOUT_BN_ARM: "Best setting without batchnorm",
             contract.STARTING_POINT_ARM: "Starting point, the seed's own setting"}


# ---------------------------------------------------------------- the recommendation a confirmation is tied to
@dataclass(frozen=True)
class Recommendation:
    """What the report recommends: the search trial whose parameters to train, and the batchnorm fix to apply
    (a `paired` option: OWN, PRECISE or BAND, with the band's momentum)."""

    trial: int
    option: str
    momentum: float | None = None

    @property
    def key(self) -> str:
        return recommendation_key(self.trial, self.option, self.momentum)

    def as_attr(self) -> dict[str, Any]:
        """The form of the companion study's contract.RECOMMENDATION_ATTR."""
        return {"key": self.key, "trial": self.trial, "option": self.option, "momentum": self.momentum}

    def words(self) -> str:
        if self.option == paired.OWN:  # no fix: as trained, batchnorm or not
            return f"trial {self.trial}, as trained"
        return f"trial {self.trial}, evaluated {paired.how_applied(self.option, self.momentum)}"


def recommendation_key(trial: int, option: str, momentum: float | None = None) -> str:
    """The key a confirmation training stores in contract.CONFIRMS_ATTR: one per (trial, option, momentum)."""
    return f"trial-{trial}/{option}" + ("" if momentum is None else f"/{momentum!r}")


def current_recommendation(study) -> Recommendation | None:
    """The recommendation `study`'s report makes now (None: no trial trained to the end)."""
    return recommendation_of(trial_views(study))


def recommendation_of(views: list[TrialView]) -> Recommendation | None:
    """As the report's findings choose it (`paired.paired_findings`): with held-out momentum curves, the best
    complete trial on val with the val-chosen fix applied (`paired.ranked_with_fix`), else the best complete trial
    at its own momentum. A trial the fix cannot be read for (no batchnorm, no curve) is recommended as trained."""
    scored, chosen, ranked = _ranking(views)
    if not ranked:
        return None
    options = next((o for o in scored if o.number == ranked[0].number), None)
    if options is None or chosen not in options.test:
        return Recommendation(ranked[0].number, paired.OWN)
    return Recommendation(ranked[0].number, chosen, options.band_momentum if chosen == paired.BAND else None)


def best_without_batchnorm(views: list[TrialView], recommendation: Recommendation) -> int | None:
    """The best complete trial without batchnorm, ranked as the recommendation is (`_ranking`); None where the
    recommended trial has no batchnorm (it is that trial) or no trial went without it."""
    ranked = _ranking(views)[2]
    recommended = next((v for v in ranked if v.number == recommendation.trial), None)
    if recommended is None or not recommended.batchnorm:
        return None
    return next((v.number for v in ranked if not v.batchnorm), None)


def _ranking(views: list[TrialView]) -> tuple[list, str, list[TrialView]]:
    """(the scored options, the chosen fix, the complete trials best first with it applied); without enough
    held-out momentum curves, no options, paired.OWN and the complete trials by their val accuracy."""
    finished = finished_trials(views)
    curves = paired.with_curves(finished)
    found, split = paired.pairs(curves) if curves else ([], "val")
    if split == "test" and len(found) >= stats.MIN_PAIRED_N:
        scored = paired.options(found, paired.bands(found))
        chosen = paired.recommend([o for o in scored if o.pair.complete])
        ranked = paired.ranked_with_fix(scored, finished, chosen)
        if ranked:
            return scored, chosen, ranked
    return [], paired.OWN, complete_by_value(views)


def asked_k(stored: int | None) -> int:
    """The K a command that confirms asks for: the one the study last stored, else the command's default."""
    return stored or contract.DEFAULT_CONFIRM_K


def _stored_recommendation(companion) -> Recommendation | None:
    stored = companion.user_attrs.get(contract.RECOMMENDATION_ATTR) if companion is not None else None
    if not isinstance(stored, dict) or not isinstance(stored.get("trial"), int) or "option" not in stored:
        return None
    return Recommendation(stored["trial"], stored["option"], stored.get("momentum"))


def load_companion(study):
    """The companion study holding `study`'s confirmation, read only; None where there is none (studies run before
    `--confirm`, or never confirmed). Optuna keeps a study's storage in `_storage` (tests/test_internals.py)."""
    import optuna

    try:
        return optuna.load_study(study_name=contract.confirmation_study_name(study.study_name),
                                 storage=study._storage)
    except KeyError:
        return None


# ---------------------------------------------------------------- one arm over its seeds
def with_fix(view: TrialView, recommendation: Recommendation) -> tuple[float, float, float] | None:
    """(val, test, gap) of one training with the recommended fix read off its own curve; None where its curve did
    not measure it."""
    read = paired.read_option(view.curve, recommendation.option, recommendation.momentum) if view.curve else None
    if read is None:
        return None
    val, test = read
    return val, test, view.curve.train_accuracy - val


@dataclass
class Arm:
    """One arm's complete trainings for the current recommendation, and their means over seeds. `fixed`: the
    recommended arm's (val, test, gap) means with the fix applied, `fix_gain` its held-out gain over the same
    trainings as trained, `unread` its trainings whose curve lacked the fix (left out of `fixed`)."""

    name: str
    trainings: list[TrialView]
    val: stats.Mean
    test: stats.Mean
    gap: stats.Mean
    fixed: tuple[stats.Mean, stats.Mean, stats.Mean] | None = None
    fix_gain: stats.Mean | None = None
    unread: int = 0

    @property
    def source(self) -> Any:
        sources = {v.attrs.get(contract.SOURCE_TRIAL_ATTR) for v in self.trainings}
        return sources.pop() if len(sources) == 1 else None

    def held_out(self) -> stats.Mean:
        """The arm's held-out accuracy as the report states it: with the fix where it has one."""
        return self.fixed[1] if self.fixed else self.test

    def per_seed(self, recommendation: Recommendation) -> dict[Any, float]:
        """Held-out accuracy by seed, with the fix where the arm has one."""
        out = {}
        for view in self.trainings:
            if self.fixed:
                read = with_fix(view, recommendation)
                held_out = read[1] if read else math.nan  # left out of the pairs, as of the means with the fix
            else:
                held_out = view.get("test_accuracy")
            out[view.attrs.get(contract.SEED_ATTR)] = held_out
        return out


def arm_of(name: str, trainings: list[TrialView], recommendation: Recommendation) -> Arm:
    arm = Arm(name, trainings, *(stats.mean_interval(v.get(metric) for v in trainings)
                                 for metric in ("val_accuracy", "test_accuracy", "gap")))
    if name != contract.RECOMMENDED_ARM or recommendation.option == paired.OWN:
        return arm
    reads = [(v, with_fix(v, recommendation)) for v in trainings]
    read = [(v, r) for v, r in reads if r is not None]
    if read:
        arm.fixed = tuple(stats.mean_interval(r[i] for _, r in read) for i in range(3))
        arm.fix_gain = stats.mean_interval(r[1] - v.get("test_accuracy") for v, r in read)
    arm.unread = len(reads) - len(read)
    return arm


# ---------------------------------------------------------------- the whole confirmation
@dataclass
class Confirmation:
    """What the companion study holds for the report's current recommendation: the arms (complete trainings of it
    only), the paired difference, the winner's curse; `older`: per earlier recommendation's key, its complete
    trainings (kept apart); `pending`: the current recommendation's (arm, seed)s with no complete training (queued,
    running, failed); `k`: the K last asked for; `command`: the one that confirms or tops the confirmation up."""

    recommendation: Recommendation | None
    k: int | None
    arms: list[Arm] = field(default_factory=list)
    difference: stats.Mean | None = None
    curse: dict[str, Any] | None = None
    older: dict[str, list[TrialView]] = field(default_factory=dict)
    pending: int = 0
    command: str = ""
    exists: bool = False
    key: str | None = None
    trainings: list[TrialView] = field(default_factory=list)

    @property
    def confirmed(self) -> bool:
        return any(a.name == contract.RECOMMENDED_ARM and a.trainings for a in self.arms)

    def arm(self, name: str) -> Arm | None:
        return next((a for a in self.arms if a.name == name), None)


def confirmation_of(study, views: list[TrialView], settings: dict) -> Confirmation:
    """Read `study`'s confirmation for the recommendation the report makes from `views` (read only)."""
    current = recommendation_of(views)
    companion = load_companion(study)
    k = companion.user_attrs.get(contract.CONFIRM_K_ATTR) if companion is not None else None
    k = k if isinstance(k, int) and not isinstance(k, bool) and k > 0 else None
    finished = sum(v.state in contract.FINISHED_STATES for v in views)
    command = next_steps.study_command(finished, study.study_name, settings, "--confirm", str(asked_k(k)))
    out = Confirmation(current, k, command=command, exists=companion is not None)
    if companion is None:
        return out
    stored = _stored_recommendation(companion)
    # The key the latest command stored, where it confirmed this recommendation; else the report's own key.
    key = (companion.user_attrs[contract.RECOMMENDATION_ATTR].get("key") if current and stored == current
           else current and current.key)
    trainings = [v for v in trial_views(companion) if v.attrs.get(contract.ARM_ATTR) in contract.ARMS]
    for view in trainings:
        confirms = view.attrs.get(contract.CONFIRMS_ATTR)
        if confirms != key and view.state == TrialState.COMPLETE:
            out.older.setdefault(str(confirms), []).append(view)
    mine = [v for v in trainings if v.attrs.get(contract.CONFIRMS_ATTR) == key]
    out.key, out.trainings = key, trainings
    # An (arm, seed) whose training failed and was trained again is done; one with no complete training is not.
    trained = {(v.attrs.get(contract.ARM_ATTR), v.attrs.get(contract.SEED_ATTR)) for v in mine
               if v.state == TrialState.COMPLETE}
    out.pending = len({(v.attrs.get(contract.ARM_ATTR), v.attrs.get(contract.SEED_ATTR)) for v in mine} - trained)
    for name in contract.ARMS:
        done = [v for v in mine if v.state == TrialState.COMPLETE and v.attrs.get(contract.ARM_ATTR) == name]
        if done:
            out.arms.append(arm_of(name, done, current))
    if current is None:
        return out
    recommended, start = out.arm(contract.RECOMMENDED_ARM), out.arm(contract.STARTING_POINT_ARM)
    if recommended and start:
        ours, theirs = recommended.per_seed(current), start.per_seed(current)
        out.difference = stats.mean_interval(ours[seed] - theirs[seed] for seed in ours if seed in theirs)
    if recommended:
        out.curse = winners_curse(views, current, recommended)
    return out


def winners_curse(views: list[TrialView], current: Recommendation, recommended: Arm) -> dict[str, Any] | None:
    """The recommended trial's val accuracy in the search (with the fix, as the search ranked it) against the mean
    of its confirmed val and test accuracy."""
    searched = next((v for v in views if v.number == current.trial), None)
    if searched is None:
        return None
    read = with_fix(searched, current) if recommended.fixed else None
    search_val = read[0] if read else searched.get("val_accuracy")
    val, test = (recommended.fixed[0], recommended.fixed[1]) if recommended.fixed else (recommended.val,
                                                                                        recommended.test)
    evaluated = f" ({paired.how_applied(current.option, current.momentum)})" if read else ""
    return {"trial": current.trial, "search_val_accuracy": search_val, "val": val, "test": test,
            "complete_trials": sum(v.state == TrialState.COMPLETE for v in views), "evaluated": evaluated}


# ---------------------------------------------------------------- what the report says
def _mean_text(mean: stats.Mean, digits: int = 3) -> str:
    if not math.isfinite(mean.low):
        return f"{fmt(mean.estimate, digits)} (n={mean.n}, no interval from one seed)"
    low, high = fmt(mean.low, digits), fmt(mean.high, digits)
    return f"{fmt(mean.estimate, digits)} (95 % interval {low} to {high}, n={mean.n})"


def _points_text(mean: stats.Mean) -> str:
    if not math.isfinite(mean.low):
        return f"{points(mean.estimate)} points (n={mean.n}, too few seeds for an interval)"
    return f"{points(mean.estimate)} points (95 % interval {points(mean.low)} to {points(mean.high)}, n={mean.n})"


def _verdict(mean: stats.Mean) -> str:
    if mean.holds_zero:
        return "no clear effect: the interval includes 0" if math.isfinite(mean.low) else "no clear effect stated"
    return "clear: the interval excludes 0" if mean.low > 0 else "clearly worse: the interval is below 0"


def _arm_finding(arm: Arm, confirmation: Confirmation, views: list[TrialView]) -> Finding:
    source = next((v for v in views if v.number == arm.source), None)
    setting = (f"trial {source.number}" + (f", preset {source.preset}" if source.preset else "")
               + (f": {describe(source)}" if describe(source) else "") if source else "")
    seeds = f"on {len(arm.trainings)}" + (f" of {confirmation.k}" if confirmation.k else "") + " fresh seeds"
    text = f"{ARM_WORDS[arm.name]}{f' ({setting})' if setting else ''} {seeds}: "
    if arm.fixed:
        fix = paired.how_applied(confirmation.recommendation.option, confirmation.recommendation.momentum)
        text += (f"evaluated {fix}, held-out accuracy {_mean_text(arm.fixed[1])}, gap {_mean_text(arm.fixed[2])}; "
                 f"as trained (the same trainings), held-out accuracy {_mean_text(arm.test)}, gap "
                 f"{_mean_text(arm.gap)}; the fix's held-out gain within each training {_points_text(arm.fix_gain)}, "
                 f"{_verdict(arm.fix_gain)}")
        if arm.unread:
            text += f"; {arm.unread} training(s) without the fix measured are left out of the numbers with it"
    else:
        text += f"held-out accuracy {_mean_text(arm.test)}, gap {_mean_text(arm.gap)}"
    held = arm.held_out()
    return Finding("confirmed_arm", text + ".", held.estimate, _interval(held), held.n, "test", SCHEME)


def _interval(mean: stats.Mean) -> tuple[float, float] | None:
    return (mean.low, mean.high) if math.isfinite(mean.low) else None


def _curse_finding(curse: dict[str, Any]) -> Finding:
    val, test, search = curse["val"], curse["test"], curse["search_val_accuracy"]
    drop = stats.Mean(search - val.estimate, search - val.high, search - val.low, val.n)
    if drop.holds_zero:
        verdict = "no clear winner's curse: the interval includes 0" if math.isfinite(drop.low) else "not stated"
    else:
        verdict = "clear: the search overstated it" if drop.low > 0 else "clear: the search understated it"
    text = (f"Winner's curse: trial {curse['trial']} was the best of {curse['complete_trials']} complete trials on "
            f"its val accuracy in the search, {fmt(search, 3)}{curse['evaluated']}; retrained on fresh seeds its val "
            f"accuracy was {_mean_text(val)} and its held-out accuracy {_mean_text(test)}: the search's val accuracy "
            f"minus the confirmed one is {_points_text(drop)}, {verdict}.")
    return Finding("winners_curse", text, drop.estimate, _interval(drop), drop.n, "val", SCHEME)


def findings(confirmation: Confirmation, views: list[TrialView]) -> list[Finding]:
    """The confirmation's sentences, in the first screen's order."""
    current = confirmation.recommendation
    out: list[Finding] = []
    if not confirmation.confirmed:
        out.append(_not_confirmed(confirmation))
    else:
        for arm in confirmation.arms:
            out.append(_arm_finding(arm, confirmation, views))
        if confirmation.difference is not None and confirmation.difference.n:
            d = confirmation.difference
            out.append(Finding("confirmed_difference", f"Recommended setting (with its fix) minus the starting point, "
                               f"paired on seed: {_points_text(d)} of held-out accuracy; {_verdict(d)}.",
                               d.estimate, _interval(d), d.n, "test", SCHEME + "; paired on seed"))
        if confirmation.curse is not None:
            out.append(_curse_finding(confirmation.curse))
        out.append(Finding("confirmation", f"How sure (confirmation of {current.words()}): each arm retrained on "
                           "fresh seeds (weight initialisation and data order) on the same split and test images; "
                           f"95 % t-intervals on the mean ({stats.T_INTERVAL_COVERAGE}); a seed that diverged shows "
                           "in the confirmation's table of trainings." + _top_up(confirmation), n=confirmation.k,
                           scheme=SCHEME))
    if confirmation.older:
        counts = "; ".join(f"{len(trainings)} of {key}" for key, trainings in confirmation.older.items())
        out.append(Finding("older_confirmation", f"Kept apart: trainings that confirm an earlier recommendation, not "
                           f"the current one ({current.key if current else 'none'}): {counts}. Their numbers are "
                           "not in the lines above.", n=sum(len(t) for t in confirmation.older.values()),
                           scheme="confirmation of an earlier recommendation"))
    return out


def _not_confirmed(confirmation: Confirmation) -> Finding:
    current = confirmation.recommendation
    if current is None:
        return Finding("confirmation", "Not confirmed: no trial trained to the end, so there is no setting to retrain "
                       "on fresh seeds yet.", scheme=SCHEME)
    pending = (f" {confirmation.pending} of its trainings have not finished (queued, running or failed); rerun the "
               "command to finish them." if confirmation.pending else "")
    return Finding("confirmation", f"Not confirmed: every number above is from one seed per trial.{pending} Retrain "
                   f"the recommended setting ({current.words()}), the best setting without batchnorm and the starting "
                   f"point on {asked_k(confirmation.k)} fresh seeds each with: {confirmation.command} "
                   f"{next_steps.STORAGE_NOTE}.", n=confirmation.k, scheme=SCHEME)


def _top_up(confirmation: Confirmation) -> str:
    """Where an arm has fewer trainings than asked for, or some have not finished: the command that tops it up."""
    short = [a for a in confirmation.arms if confirmation.k and len(a.trainings) < confirmation.k]
    if not short and not confirmation.pending:
        return ""
    done = ", ".join(f"{a.name} {len(a.trainings)}" for a in short) or "all arms"
    return (f" Not every training has finished ({done} of {confirmation.k or '?'}); top it up with: "
            f"{confirmation.command} {next_steps.STORAGE_NOTE}.")


# ---------------------------------------------------------------- the section and findings.json
def section(confirmation: Confirmation) -> Section:
    """The confirmation's tables: each arm over its seeds, and every training the companion study holds."""
    out = Section("confirmation", "Confirmation on fresh seeds", paragraphs=[
        "The study's answer retrained on fresh seeds after the search (python -m study.run --confirm K): the "
        "recommended setting, the best setting without batchnorm and the starting point, each with a new weight "
        "initialisation and data order per seed, on the same split and test images. Means over seeds with their 95 % "
        "t-intervals; the recommended setting both with its fix, read off each training's own momentum curve or "
        "PreciseBN, and as trained."])
    if not confirmation.confirmed:
        # The command as text, not a code block: it holds the study's name, which only text escaping keeps inert.
        confirm = (f" Confirm on {asked_k(confirmation.k)} fresh seeds per arm with: {confirmation.command} "
                   f"{next_steps.STORAGE_NOTE}." if confirmation.recommendation is not None else "")
        out.paragraphs.append("Not confirmed" + (" for the current recommendation." if confirmation.exists else ".")
                              + confirm)
    rows = []
    for arm in confirmation.arms:
        if arm.fixed:
            fix = paired.how_applied(confirmation.recommendation.option, confirmation.recommendation.momentum)
            rows.append([arm.name, fix, arm.fixed[1].n, *_ends(arm.fixed[1]), *_ends(arm.fixed[2])])
        rows.append([arm.name, "as trained", arm.test.n, *_ends(arm.test), *_ends(arm.gap)])
    if rows:
        out.tables.append(Table(["arm", "evaluated", "seeds", "held-out accuracy", "low", "high", "gap", "gap low",
                                 "gap high"], rows, caption="Each arm over its seeds: mean and 95 % t-interval."))
    if confirmation.trainings:
        out.tables.append(Table(
            ["training", "arm", "seed", "confirms", "state", "val accuracy", "held-out accuracy", "gap",
             "held-out accuracy with the fix"],
            [_training_row(v, confirmation) for v in confirmation.trainings],
            caption="Every confirmation training (trial of the companion study); 'earlier' ones confirm an earlier "
                    "recommendation and are in no number above."))
    return out


def _ends(mean: stats.Mean) -> list[float]:
    return [mean.estimate, mean.low, mean.high]


def _training_row(view: TrialView, confirmation: Confirmation) -> list[Any]:
    confirms = view.attrs.get(contract.CONFIRMS_ATTR)
    current = confirms == confirmation.key
    read = (with_fix(view, confirmation.recommendation) if current and confirmation.recommendation
            and view.attrs.get(contract.ARM_ATTR) == contract.RECOMMENDED_ARM else None)
    return [view.number, view.attrs.get(contract.ARM_ATTR), view.attrs.get(contract.SEED_ATTR),
            "current" if current else f"earlier: {confirms}", view.state.name, view.get("val_accuracy"),
            view.get("test_accuracy"), view.get("gap"), read[1] if read else None]


def _mean_json(mean: stats.Mean | None) -> dict[str, Any] | None:
    if mean is None:
        return None
    return {"mean": mean.estimate, "low": mean.low, "high": mean.high, "n": mean.n}


def as_json(confirmation: Confirmation) -> dict[str, Any]:
    """The confirmation for findings.json (numbers as fractions; non-finite ones are written null)."""
    current = confirmation.recommendation
    arms = {}
    for arm in confirmation.arms:
        fixed = None
        if arm.fixed:
            fixed = {"option": current.option, "momentum": current.momentum, "val_accuracy": _mean_json(arm.fixed[0]),
                     "test_accuracy": _mean_json(arm.fixed[1]), "gap": _mean_json(arm.fixed[2]),
                     "gain_over_as_trained": _mean_json(arm.fix_gain), "trainings_without_it": arm.unread}
        arms[arm.name] = {"source_trial": arm.source, "seeds": [v.attrs.get(contract.SEED_ATTR) for v in arm.trainings],
                          "val_accuracy": _mean_json(arm.val), "test_accuracy": _mean_json(arm.test),
                          "gap": _mean_json(arm.gap), "with_fix": fixed}
    difference = _mean_json(confirmation.difference)
    if difference is not None:
        difference["clear"] = not confirmation.difference.holds_zero
    curse = confirmation.curse and {"trial": confirmation.curse["trial"],
                                    "search_val_accuracy": confirmation.curse["search_val_accuracy"],
                                    "confirmed_val_accuracy": _mean_json(confirmation.curse["val"]),
                                    "confirmed_test_accuracy": _mean_json(confirmation.curse["test"])}
    return {"status": "confirmed" if confirmation.confirmed else "not confirmed",
            "recommendation": current.as_attr() if current else None, "confirms": confirmation.key,
            "k": confirmation.k, "command": confirmation.command, "arms": arms, "paired_difference": difference,
            "winners_curse": curse, "pending": confirmation.pending, "interval": "95 % t-interval on the mean",
            "older": {key: len(trainings) for key, trainings in confirmation.older.items()}}
