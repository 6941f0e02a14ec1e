"""End-of-study results on the parent run: best trial, importances, trials table, registered model.

The summary first waits for this process's tracking writer (study.writer) and ends the runs whose
process stopped before writing them, so that the registered model exists and every trial run it
reads is written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from study import space, tracking, writer
from study.contract import MODEL_URI_ATTR, MOMENTUM_CURVE_ATTR, SEARCHED
from study.importance import IMPORTANCE_TARGETS, param_importances


def trials_table(study: optuna.Study):
    """One row per trial; params under their public names and units (params_bn_momentum, params_dropout)."""
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    for param in (space.MOMENTUM_PARAM, space.DROPOUT_PARAM):
        column = "params_" + param
        if column in frame:
            frame[column] = frame[column].map(lambda value, param=param: space.to_public(param, value),
                                              na_action="ignore")
            frame = frame.rename(columns={column: "params_" + space.public_name(param)})
    # The momentum curve is a nested object; each trial run has it as momentum_curve.json.
    return frame.drop(columns=[column for column in ("user_attrs_" + MOMENTUM_CURVE_ATTR,) if column in frame])


def best_values(best: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The best trial's searched values by public name; no bn_momentum where it has no batchnorm."""
    values = space.public_params(best.params)
    return {name: float(values[name]) for name in SEARCHED if name in values}


def log_study_summary(study: optuna.Study, study_name: str) -> None:
    """Log best trial, importances, trials.csv and register the best model, on the active run."""
    writer.drain_process_writer()
    tracking.end_unwritten_trial_runs(study)
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = study.best_trial
        mlflow.log_metrics({
            "best_val_accuracy": float(best.value),
            "best_trial_number": float(best.number),
            **{f"best_{name}": value for name, value in best_values(best).items()},
        })
        if best.user_attrs.get(MODEL_URI_ATTR) and (version := tracking.register_best(study_name, best)):
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
