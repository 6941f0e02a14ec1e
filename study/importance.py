"""Parameter importances of a study: the study's own for val accuracy and gap (fANOVA), and the ones
optuna-dashboard shows (PED-ANOVA), without touching the study.

Only trials of models with batchnorm count: a model without batchnorm (the presets seed-initial and
seed-deeper) has no momentum, so momentum's importance can only be measured over the others, and
keeping the few BN-less trials in for the other parameters would credit the missing batchnorm,
which fANOVA does not see, to whichever parameter they happen to differ in. So every importance
comes from one fit over the same trials, and the result says how many were left out.

optuna-dashboard computes its own with Optuna's default evaluator, PED-ANOVA, over the COMPLETE
trials' objective: which parameters set the best 10 % of trials apart from the rest. That answers
another question, over other trials (pruned ones out, presets without batchnorm in), so the two can
rank the parameters differently; `dashboard_importances` computes exactly what the dashboard shows,
so the report can print both side by side.

Kept free of Keras and MLflow so the report can use it without loading a backend.
"""

from __future__ import annotations

import math
import warnings

import optuna
from optuna.trial import TrialState

from study import space
from study.contract import BATCHNORM_ATTR, FINISHED_STATES

IMPORTANCE_TARGETS = ("val_accuracy", "gap")
EVALUATOR = "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0)"
DASHBOARD_EVALUATOR = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator, defaults)"
# Below this many trials an importance is shown with a warning: PED-ANOVA's best 10 % is then a single
# trial, and fANOVA's forest has fewer than 5 trials per searched parameter. In 20 simulated studies of
# this search space in which only momentum matters (benchmarks/importance_trials.py), fANOVA ranked it
# first in 40 % of those of 16 trials and 80 % of those of 24; PED-ANOVA in 45 % and 75 %.
MIN_IMPORTANCE_TRIALS = 20


def _finished_with(study: optuna.Study, attr: str) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False, states=FINISHED_STATES)
    return [t for t in trials if isinstance(t.user_attrs.get(attr), (int, float)) and math.isfinite(t.user_attrs[attr])]


def _has_batchnorm(trial: optuna.trial.FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(BATCHNORM_ATTR, space.MOMENTUM_PARAM in trial.params))


def param_importances(study: optuna.Study) -> dict[str, object]:
    """fANOVA importances of the searched parameters for val_accuracy and gap, over the finished
    trials with batchnorm (see the module docstring).

    Pruned trials count too: they log final metrics at the epoch where they stopped. Returns
    {"evaluator": ..., "trials": n, "pruned": p (of n), "without_batchnorm_left_out": k, "val_accuracy": {...},
    "gap": {...}} or a "reason" when fewer than 3 trials or a single distinct setting make
    importances meaningless.
    """
    result: dict[str, object] = {"evaluator": EVALUATOR}
    for target in IMPORTANCE_TARGETS:
        finished = _finished_with(study, target)
        trials = [t for t in finished if _has_batchnorm(t)]
        result["trials"] = len(trials)
        result["pruned"] = sum(t.state == TrialState.PRUNED for t in trials)
        result["without_batchnorm_left_out"] = len(finished) - len(trials)
        if len(trials) < 3:
            result[target] = {}
            result["reason"] = f"{len(trials)} finished trial(s) with batchnorm; importances need at least 3"
            continue
        # Evaluate on a throwaway in-memory study holding the finished trials as COMPLETE with
        # the target as value, so pruned trials count and the stored study is never touched.
        scratch = optuna.create_study(direction="maximize")
        for trial in trials:
            scratch.add_trial(optuna.trial.create_trial(
                params=trial.params, distributions=trial.distributions, value=float(trial.user_attrs[target])))
        try:
            scores = optuna.importance.get_param_importances(
                scratch, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except (ValueError, RuntimeError) as error:
            result[target] = {}
            result["reason"] = f"importance evaluation failed: {error}"
            continue
        result[target] = {space.public_name(name): float(score) for name, score in scores.items()}
    return result



def dashboard_importances(study: optuna.Study) -> dict[str, object]:
    """The importances optuna-dashboard (0.21) shows on the study's page, computed as it computes them.

    PED-ANOVA with its defaults over the study's COMPLETE trials, for the objective (val_accuracy at the
    trial's own momentum), higher being better, under Optuna's parameter names mapped to the public ones.
    Returns {"evaluator": ..., "trials": n complete, "val_accuracy": {...}} or a "reason" where the
    dashboard shows none.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    result: dict[str, object] = {"evaluator": DASHBOARD_EVALUATOR, "trials": len(complete), "val_accuracy": {}}
    if len(complete) <= 1:
        result["reason"] = f"{len(complete)} complete trial(s); optuna-dashboard shows importances from 2"
        return result
    with warnings.catch_warnings():
        # PED-ANOVA warns about small samples and a negated target on every call; the count is stated instead.
        warnings.simplefilter("ignore")
        scores = optuna.importance.get_param_importances(
            study, target=lambda t: -t.value, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    if not scores:  # the dashboard then shows every parameter at an equal share
        names = {name for trial in complete for name in trial.params}
        scores = {name: 1 / len(names) for name in names}
    result["val_accuracy"] = {space.public_name(name): float(score) for name, score in scores.items()}
    return result
