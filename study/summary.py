"""End-of-study results on the parent run: best trial, importances, trials table, registered model."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from study import space, tracking

IMPORTANCE_TARGETS = ("val_accuracy", "gap")


def _finished_with(study: optuna.Study, attr: str) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
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
        result[target] = {_public_name(name): float(score) for name, score in scores.items()}
    return result


def _public_name(param: str) -> str:
    return "bn_momentum" if param == space.MOMENTUM_PARAM else param


def trials_table(study: optuna.Study):
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    if "params_" + space.MOMENTUM_PARAM in frame:
        frame = frame.drop(columns=["params_" + space.MOMENTUM_PARAM])
    return frame


def log_study_summary(study: optuna.Study, study_name: str) -> None:
    """Log best trial, importances, trials.csv and register the best model, on the active run."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if complete:
        best = study.best_trial
        mlflow.log_metrics({
            "best_val_accuracy": float(best.value),
            "best_trial_number": float(best.number),
            **{f"best_{name}": float(best.user_attrs.get(name, best.params.get(name)))
               for name in space.SEARCHED},
        })
        if best.user_attrs.get("model_uri"):
            version = tracking.register_best(study_name, best.user_attrs["model_uri"], best.user_attrs["mlflow_run_id"])
            mlflow.set_tag("registered_model", f"models:/{study_name}@best (version {version})")
    importances = param_importances(study)
    tracking.log_json(importances, "param_importances.json")
    for target in IMPORTANCE_TARGETS:
        for name, score in importances.get(target, {}).items():
            mlflow.log_metric(f"importance_{target}.{name}", score)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trials.csv"
        trials_table(study).to_csv(path, index=False)
        mlflow.log_artifact(str(path))
