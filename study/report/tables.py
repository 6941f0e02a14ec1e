"""The report's tables: seed presets, gap decomposition, parameter importances, top trials."""

from __future__ import annotations

import math

from optuna.trial import TrialState

from gaplab.config import SEED_RESULTS
from study import space
from study.importance import (
    IMPORTANCE_TARGETS,
    MIN_IMPORTANCE_TRIALS,
    dashboard_importances,
    param_importances,
)
from study.report import stats
from study.report.document import Link, Section, Table
from study.report.views import TrialView, complete_by_value, describe


def trial_counts(views: list[TrialView]) -> str:
    """"N (c complete, p pruned, f failed[, r running, w waiting])": the counts every part of the report uses."""
    counts = {state: sum(v.state == state for v in views) for state in TrialState}
    text = (f"{len(views)} ({counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
            f"{counts[TrialState.FAIL]} failed")
    for state in (TrialState.RUNNING, TrialState.WAITING):
        if counts[state]:
            text += f", {counts[state]} {state.name.lower()}"
    return text + ")"

TOP_N = 5


def seed_table(views: list[TrialView]) -> Table:
    rows = []
    for name, (s_train, s_val, s_test) in SEED_RESULTS.items():
        trial = next((v for v in views if v.preset == name), None)
        if trial is None:
            rows.append([name, "not queued", None, None, None, s_train, s_val, s_test])
            continue
        rows.append([name, f"{trial.number} ({trial.state.name})", trial.get("train_accuracy"),
                     trial.get("val_accuracy"), trial.get("test_accuracy"), s_train, s_val, s_test])
    return Table(["preset", "trial (state)", "train here", "val here", "test here", "seed's train (its own data)",
                  "seed's val (its own data)", "seed's test (its own data)"], rows,
                 "The seed's columns are what the seed's author reported on the seed's own dataset, not on this "
                 "study's images: they show the pattern (a wide gap for seed-bn), not numbers to match. Train is the "
                 "running accuracy of fit at the last epoch, as the seed measured it.")


def decomposition_table(views: list[TrialView], link=lambda run_id: None) -> Table:
    """Every finished trial; `link(run_id)` gives a run's MLflow UI address for the trial number, or None."""
    rows = []
    for v in views:
        if not math.isfinite(v.get("gap")):
            continue
        before, after = v.get("val_accuracy"), v.get("val_accuracy_recalibrated")
        curve = v.curve if v.batchnorm else None
        paired = [None, None, None, None]
        if curve:
            chosen = stats.chosen_index(curve.val_accuracy, curve.momentum)
            held = curve.test_accuracy or (None,) * len(curve.momentum)
            paired = [curve.momentum[chosen], held[curve.own], held[chosen], curve.recalibrated_test_accuracy]
        url = link(v.run_id) if v.run_id else None
        rows.append([Link(str(v.number), url) if url else v.number, v.state.name, v.preset or "",
                     v.momentum if v.batchnorm else "no BN", v.get("steps"), v.horizon if v.batchnorm else math.nan,
                     v.get("gap"), v.get("mode_gap"), v.get("generalization_gap"), before, after, *paired])
    return Table(["trial", "state", "preset", "bn_momentum", "steps", "EMA horizon", "gap", "mode gap",
                  "generalization gap", "val", "val recalibrated", "val-chosen momentum", "test at own momentum",
                  "test at chosen momentum", "test recalibrated"], rows,
                 "gap = mode gap + generalization gap (on val); EMA horizon = steps × (1 − bn_momentum); the chosen "
                 "momentum is the momentum curve's highest val accuracy (same weights), scored on test; test "
                 "recalibrated: the same weights with statistics re-estimated after training (PreciseBN); – where the "
                 "curve predates held-out accuracy per momentum. Trial numbers open the trial's run in the MLflow UI.",
                 digits={"EMA horizon": 1})


def importance_section(study) -> Section:
    """The study's importances (fANOVA, as on the parent run) beside the ones optuna-dashboard shows (PED-ANOVA),
    each with the trials and evaluator it used, and a warning below MIN_IMPORTANCE_TRIALS."""
    result, shown = param_importances(study), dashboard_importances(study)
    section = Section("importance", "Parameter importance")
    n, pruned, left_out = result.get("trials", 0), result.get("pruned", 0), result.get("without_batchnorm_left_out", 0)
    section.paragraphs.append(
        f"The study's importances (as on the MLflow parent run): {result['evaluator']}, over {n} finished trials "
        f"with batchnorm ({n - pruned} complete, {pruned} pruned, measured where they stopped)"
        + (f"; the {left_out} finished without batchnorm (presets) are left out, as momentum means nothing there"
           if left_out else "")
        + ". Scores sum to 1 per target; higher means the parameter explains more of the target's variance.")
    m = shown["trials"]
    section.paragraphs.append(
        f"optuna-dashboard's importance chart: {shown['evaluator']}, Optuna's default, over the {m} complete trials' "
        "val_accuracy (pruned trials left out, presets without batchnorm in), under the parameters' Optuna names; "
        "the last column is that chart's number. It scores which parameters set the best 10 % of trials apart, "
        "not how much of the variance each explains, so the two can rank the parameters differently.")
    for count, whose in ((n, "the study's"), (m, "optuna-dashboard's")):
        if count < MIN_IMPORTANCE_TRIALS:
            section.paragraphs.append(
                f"**Too few trials for {whose} importances**: {count}, below {MIN_IMPORTANCE_TRIALS}. With fewer, "
                "the ranking changes from one study to the next (benchmarks/importance_trials.py): a hint, not a "
                "finding.")
    for reason in (result.get("reason"), shown.get("reason")):
        if reason:
            section.paragraphs.append(f"Not computed for every target: {reason}.")
    names = sorted({name for target in IMPORTANCE_TARGETS for name in result.get(target, {})}
                   | set(shown["val_accuracy"]))
    if names:
        rows = [[name, space.optuna_name(name)]
                + [result.get(target, {}).get(name, math.nan) for target in IMPORTANCE_TARGETS]
                + [shown["val_accuracy"].get(name, math.nan)]
                for name in sorted(names, key=lambda n: -result.get("gap", {}).get(n, 0.0))]
        section.tables.append(Table(
            ["parameter", "in optuna-dashboard", *IMPORTANCE_TARGETS, "val_accuracy (optuna-dashboard)"], rows,
            f"{result.get('trials', 0)} trials for val_accuracy and gap, {m} for the last column."))
    return section


def top_table(views: list[TrialView], link=lambda run_id: None) -> Table:
    """The best complete trials; `link(run_id)` gives a run's MLflow UI address, or None to leave it as text."""
    complete = complete_by_value(views)[:TOP_N]

    def run_cell(run_id: str):
        url = link(run_id) if run_id else None
        return Link(run_id, url) if url else run_id

    rows = [[rank, v.number, v.preset or "", v.get("val_accuracy"), v.get("test_accuracy"), v.get("gap"),
             describe(v), run_cell(v.run_id)] for rank, v in enumerate(complete, 1)]
    return Table(["rank", "trial", "preset", "val", "test", "gap", "parameters", "MLflow run id"], rows)
