"""Parameter importances of a study for val accuracy and gap (fANOVA), without touching the study.

Kept free of Keras and MLflow so the report can use it without loading a backend.
"""

from __future__ import annotations

import math

import optuna

from study import space
from study.contract import FINISHED_STATES

IMPORTANCE_TARGETS = ("val_accuracy", "gap")


def _finished_with(study: optuna.Study, attr: str) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False, states=FINISHED_STATES)
    return [t for t in trials if isinstance(t.user_attrs.get(attr), (int, float)) and math.isfinite(t.user_attrs[attr])]


def param_importances(study: optuna.Study) -> dict[str, object]:
    """fANOVA importances of the searched parameters for val_accuracy and gap, over finished trials.

    Pruned trials count too: they log final metrics at the epoch where they stopped. Returns
    {"evaluator": ..., "trials": n, "val_accuracy": {...}, "gap": {...}} or a "reason" when fewer
    than 3 trials or a single distinct setting make importances meaningless.
    """
    result: dict[str, object] = {"evaluator": "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0)"}
    for target in IMPORTANCE_TARGETS:
        trials = _finished_with(study, target)
        result["trials"] = len(trials)
        if len(trials) < 3:
            result[target] = {}
            result["reason"] = f"{len(trials)} finished trial(s); importances need at least 3"
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

