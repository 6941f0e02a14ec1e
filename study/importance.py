"""Parameter importances of a study for val accuracy and gap (fANOVA), without touching the study.

Only trials of models with batchnorm count: a model without batchnorm (the presets seed-initial and
seed-deeper) has no momentum, so momentum's importance can only be measured over the others, and
keeping the few BN-less trials in for the other parameters would credit the missing batchnorm,
which fANOVA does not see, to whichever parameter they happen to differ in. So every importance
comes from one fit over the same trials, and the result says how many were left out.

Kept free of Keras and MLflow so the report can use it without loading a backend.
"""

from __future__ import annotations

import math

import optuna

from study import space
from study.contract import BATCHNORM_ATTR, FINISHED_STATES

IMPORTANCE_TARGETS = ("val_accuracy", "gap")


def _finished_with(study: optuna.Study, attr: str) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False, states=FINISHED_STATES)
    return [t for t in trials if isinstance(t.user_attrs.get(attr), (int, float)) and math.isfinite(t.user_attrs[attr])]


def _has_batchnorm(trial: optuna.trial.FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(BATCHNORM_ATTR, space.MOMENTUM_PARAM in trial.params))


def param_importances(study: optuna.Study) -> dict[str, object]:
    """fANOVA importances of the searched parameters for val_accuracy and gap, over the finished
    trials with batchnorm (see the module docstring).

    Pruned trials count too: they log final metrics at the epoch where they stopped. Returns
    {"evaluator": ..., "trials": n, "without_batchnorm_left_out": k, "val_accuracy": {...},
    "gap": {...}} or a "reason" when fewer than 3 trials or a single distinct setting make
    importances meaningless.
    """
    result: dict[str, object] = {"evaluator": "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0)"}
    for target in IMPORTANCE_TARGETS:
        finished = _finished_with(study, target)
        trials = [t for t in finished if _has_batchnorm(t)]
        result["trials"] = len(trials)
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

