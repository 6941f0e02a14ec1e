"""End-of-study results on the parent run: best trial, importances, trials table, registered model, and the
run's description (the study in a few lines, and how to get its report), which the MLflow UI shows first.

The Tracker (study.tracking.Tracker.summarize) first waits for its writer and ends the runs whose process
stopped before writing them, so that the registered model exists and every trial run it reads is written.
"""

from __future__ import annotations

import math
import shlex
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from optuna.trial import TrialState

from study import space
from study.contract import (
    CONFIRMED_N_TAG,
    CONFIRMED_TEST_ACCURACY_TAG,
    MODEL_URI_ATTR,
    MOMENTUM_CURVE_ATTR,
    PARENT_RUN_ID_ATTR,
    PRESET_ATTR,
    RUN_ID_ATTR,
    SETTINGS_ATTR,
    TrialCounts,
    trial_run_name,
)
from study.importance import IMPORTANCE_TARGETS, param_importances
from study.report.confirmation import confirmation_of
from study.report.paired import how_applied
from study.report.views import trial_views
from study.tracking.runs import log_json, register_best


def trials_table(study: optuna.Study):
    """One row per trial; params under their public names and units (params_bn_momentum, params_dropout)."""
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    for param in (p.optuna_name for p in space.PARAMS if p.scaled):
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
    return {name: float(values[name]) for name in space.names() if name in values}


def log_study_summary(study: optuna.Study, study_name: str, extra_metrics: dict[str, float] | None = None) -> None:
    """Log best trial, importances, trials.csv, `extra_metrics` and register the best model, on the active run."""
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = study.best_trial
        mlflow.log_metrics({
            "best_val_accuracy": float(best.value),
            "best_trial_number": float(best.number),
            **{f"best_{name}": value for name, value in best_values(best).items()},
        })
        if best.user_attrs.get(MODEL_URI_ATTR) and (version := register_best(study_name, best)):
            mlflow.set_tag("registered_model", f"models:/{study_name}@best (version {version})")
            tag_confirmed_accuracy(study, study_name, best.number, version)
    importances = param_importances(study)
    log_json(importances, "param_importances.json")
    for target in IMPORTANCE_TARGETS:
        for name, score in importances.get(target, {}).items():
            mlflow.log_metric(f"importance_{target}.{name}", score)
    if extra_metrics:
        mlflow.log_metrics(extra_metrics)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trials.csv"
        trials_table(study).to_csv(path, index=False)
        mlflow.log_artifact(str(path))
    describe_parent_run(study, study_name, run_id=mlflow.active_run().info.run_id)


# How the command that last wrote the description ended, in the description's last line.
COMMAND_ENDINGS = {
    "finished": "finished",
    "interrupted": "was interrupted (Ctrl-C or SIGTERM); rerun the same command to resume",
    "incomplete": ("stopped short of --trials with no worker left; see the FAILED trial runs' error tag, "
                   "then rerun the same command"),
}


def describe_parent_run(study: optuna.Study, study_name: str, ending: str = "finished",
                        run_id: str | None = None) -> str:
    """Write the study's summary into its parent run's description (MLflow's `mlflow.note.content` tag); the text.

    The summary: trials finished, pruned and failed; the best trial with its val and test accuracy, gap and
    params, linked to its run; the `python -m study.report` command for this study and where it writes the
    report. `ending` (a key of COMMAND_ENDINGS) says how the command that wrote it ended. The run is `run_id`,
    else the parent run the study recorded.
    """
    if ending not in COMMAND_ENDINGS:
        raise ValueError(f"ending={ending!r} is unknown; use one of {', '.join(COMMAND_ENDINGS)}.")
    client = MlflowClient()
    parent = client.get_run(run_id or study.user_attrs[PARENT_RUN_ID_ATTR])
    counts = TrialCounts.of(study)
    complete, pruned, failed, running = counts.complete, counts.pruned, counts.failed, counts.running
    lines = [f"**Study {study_name}**: {complete + pruned} trials finished ({complete} complete, {pruned} pruned), "
             f"{failed} failed" + (f", {running} running" if running else "") + "."]
    if complete:
        lines.append(_best_trial_line(study.best_trial, parent.info.experiment_id))
    if (confirmed := confirmed_line(study)) is not None:
        lines.append(confirmed)
    # The storage as the parent run logged it (password masked; empty where `mlflow run` logged its default,
    # which the report's default matches); the report reads the tracking URI from the study.
    storage = parent.data.params.get("storage", "")
    command = shlex.join(["python", "-m", "study.report", "--study_name", study_name,
                          *(["--storage", storage] if storage else [])])
    lines.append(f"**Report**: `{command}` writes reports/{study_name}/report.html (and report.md) in the folder "
                 "it runs in, and logs both to this run under `report/`.")
    lines.append(f"Updated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, when `python -m study.run` "
                 f"{COMMAND_ENDINGS[ending]}.")
    text = "\n\n".join(lines)
    client.set_tag(parent.info.run_id, MLFLOW_RUN_NOTE, text)
    return text


def confirmation(study: optuna.Study):
    """The study's confirmation as the report reads it (study.report.confirmation.confirmation_of), so that the
    parent run, the registered model and the report state the same numbers."""
    return confirmation_of(study, trial_views(study), study.user_attrs.get(SETTINGS_ATTR) or {})


def tag_confirmed_accuracy(study: optuna.Study, study_name: str, best_trial: int, version: str) -> None:
    """Tag the registered `best` version with its setting's confirmed held-out accuracy (contract.
    CONFIRMED_TEST_ACCURACY_TAG: the mean test accuracy as trained over its fresh seeds, and CONFIRMED_N_TAG their
    count), where the confirmation retrained that very trial."""
    arm = next((arm for arm in confirmation(study).arms if arm.source == best_trial), None)
    if arm is None:
        return
    client = MlflowClient()
    client.set_model_version_tag(study_name, version, CONFIRMED_TEST_ACCURACY_TAG, f"{arm.test.estimate:.4f}")
    client.set_model_version_tag(study_name, version, CONFIRMED_N_TAG, str(arm.test.n))


def confirmed_line(study: optuna.Study) -> str | None:
    """The confirmed numbers for the parent run's description: per arm, its mean held-out accuracy over its seeds
    with its 95 % t-interval and n, as the report's confirmation states them; None where nothing is confirmed."""
    found = confirmation(study)
    if not found.confirmed:
        return None
    parts = []
    for arm in found.arms:
        text = f"{arm.name} {_mean(arm.test)}"
        if arm.fixed:
            fix = how_applied(found.recommendation.option, found.recommendation.momentum)
            text += f" as trained, {_mean(arm.fixed[1])} evaluated {fix}"
        parts.append(text)
    return (f"**Confirmed** ({found.key}, {found.k} fresh seeds per arm): mean test_accuracy " + "; ".join(parts)
            + ".")


def _mean(mean) -> str:
    interval = f", 95 % interval {mean.low:.4f} to {mean.high:.4f}" if math.isfinite(mean.low) else ""
    return f"{mean.estimate:.4f} (n={mean.n}{interval})"


def _best_trial_line(best: optuna.trial.FrozenTrial, experiment_id: str) -> str:
    attrs = best.user_attrs
    run_name = trial_run_name(best.number)
    run = (f"[{run_name}](#/experiments/{experiment_id}/runs/{attrs[RUN_ID_ATTR]})" if RUN_ID_ATTR in attrs
           else run_name)
    preset = f", preset {attrs[PRESET_ATTR]}" if attrs.get(PRESET_ATTR) else ""
    values = best_values(best)
    params = ", ".join(f"{name} {values[name]:g}" for name in space.names() if name in values)
    if "bn_momentum" not in values:
        params += ", no batchnorm"
    return (f"**Best: trial {best.number}** ({run}{preset}): val_accuracy {best.value:.4f} (the objective), "
            f"test_accuracy {attrs.get('test_accuracy', float('nan')):.4f}, gap {attrs.get('gap', float('nan')):+.4f} "
            f"(train − val accuracy); {params}.")
