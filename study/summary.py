"""End-of-study results on the parent run: best trial, importances, trials table, registered model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from study import space, tracking
from study.contract import MODEL_URI_ATTR, MOMENTUM_CURVE_ATTR, RUN_ID_ATTR, SEARCHED
from study.importance import IMPORTANCE_TARGETS, param_importances


def trials_table(study: optuna.Study):
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    # The momentum curve is a nested object; each trial run has it as momentum_curve.json.
    dropped = [column for column in ("params_" + space.MOMENTUM_PARAM, "user_attrs_" + MOMENTUM_CURVE_ATTR)
               if column in frame]
    return frame.drop(columns=dropped)


def log_study_summary(study: optuna.Study, study_name: str) -> None:
    """Log best trial, importances, trials.csv and register the best model, on the active run."""
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = study.best_trial
        mlflow.log_metrics({
            "best_val_accuracy": float(best.value),
            "best_trial_number": float(best.number),
            **{f"best_{name}": float(best.user_attrs.get(name, best.params.get(name)))
               for name in SEARCHED},
        })
        if best.user_attrs.get(MODEL_URI_ATTR):
            version = tracking.register_best(study_name, best.user_attrs[MODEL_URI_ATTR], best.user_attrs[RUN_ID_ATTR])
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
