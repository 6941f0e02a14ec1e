"""MLflow runs, one call each: how a run ends (the one status rule), and what the study logs that is not a trial's
write (params, the dataset, the experiment's kind, the registered best model, the momentum curve as metrics).

Only study.tracking uses this module; the rest of the study goes through its `Tracker`.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import sys
import time
from dataclasses import dataclass

import mlflow
import numpy as np
import optuna
from mlflow.entities import LoggedModelStatus, Metric, RunTag
from mlflow.tracking import MlflowClient

from gaplab.curve import MomentumCurve, momentum_step
from gaplab.data import Dataset
from study.contract import (
    BEST_MODEL_ALIAS,
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MODEL_URI_ATTR,
    RUN_ID_ATTR,
    RUN_STATUS,
    STUDY_TAG,
    TEST_ACCURACY_AT_MOMENTUM_METRIC,
    TRAIN_EVAL_ACCURACY_AT_MOMENTUM_METRIC,
    TRIAL_NUMBER_TAG,
    TRIAL_STATE_TAG,
    VAL_ACCURACY_AT_MOMENTUM_METRIC,
    trial_run_name,
)


class Ending(enum.Enum):
    """How a run ends; it alone decides the run's status (`Ending.status`)."""

    # All the run logs is written: a trial's run takes its Optuna state's status (contract.RUN_STATUS:
    # COMPLETE FINISHED, PRUNED KILLED, FAIL FAILED), the parent run FINISHED.
    WRITTEN = "written"
    # Writing the run failed, or the command crashed with the run open: FAILED.
    FAILED = "failed"
    # A stop request (Ctrl-C, SIGTERM), or the process stopped before the run was written: KILLED.
    INTERRUPTED = "interrupted"
    # Its process died (kill -9, a machine gone), found by another process: KILLED.
    FOUND_DEAD = "found dead"

    def status(self, trial_state: str | None = None) -> str:
        """The MLflow status of a run ending so; `trial_state` is the Optuna state of a trial's run."""
        if self is Ending.WRITTEN:
            return RUN_STATUS[trial_state] if trial_state else "FINISHED"
        return "FAILED" if self is Ending.FAILED else "KILLED"


def end_run(client: MlflowClient, run_id: str, ending: Ending, trial_state: str | None = None,
            error: str | None = None, details: str | None = None) -> None:
    """End run `run_id` as `ending` says: the trial_state tag (a trial's run), the error tag and error.txt where
    given, then its status. Every run of the study ends here; the fluent API's active run is popped too."""
    tags = ([RunTag(TRIAL_STATE_TAG, trial_state)] if trial_state else []) \
        + ([RunTag(ERROR_TAG, error[:5000])] if error else [])
    if tags:
        client.log_batch(run_id, tags=tags)
    if details:
        client.log_text(run_id, details, "error.txt")
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(ending.status(trial_state))
    else:
        client.set_terminated(run_id, ending.status(trial_state))


def fail_pending_model(client: MlflowClient, model_id: str | None) -> None:
    """Mark a logged model that was never written FAILED, so that nothing registers it."""
    if model_id and client.get_logged_model(model_id).status == LoggedModelStatus.PENDING:
        client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)


@functools.cache
def experiment_of(run_id: str) -> str:
    """The experiment of a run; a study's parent run never moves, so it is asked once per process."""
    return MlflowClient().get_run(run_id).info.experiment_id


def log_params_once(run_id: str, params: dict[str, object]) -> None:
    """Log params the run lacks; keep values already there (e.g. those `mlflow run` logged)."""
    client = MlflowClient()
    existing = client.get_run(run_id).data.params
    for key, value in params.items():
        if key not in existing:
            client.log_param(run_id, key, str(value))


def mark_model_training(experiment_id: str) -> None:
    """Tag the experiment as model training (contract.EXPERIMENT_KIND_TAG), unless it has a kind already,
    which a user may have chosen in the UI."""
    client = MlflowClient()
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def log_dataset(data: Dataset) -> None:
    """The dataset as the active run's input: an empty array under the dataset's own name and digest."""
    features = np.zeros((0, data.image_size, data.image_size, 3), dtype=np.uint8)
    dataset = mlflow.data.from_numpy(features, name=data.name, digest=data.digest)
    mlflow.log_input(dataset, context="training")


def log_json(data: object, name: str) -> None:
    mlflow.log_text(json.dumps(data, indent=2, sort_keys=True), name)


def momentum_curve_metrics(curve: MomentumCurve) -> list[Metric]:
    """The curve as metrics the MLflow UI charts: one point per momentum m at step `momentum_step(m)`."""
    timestamp = int(time.time() * 1000)
    lists = {VAL_ACCURACY_AT_MOMENTUM_METRIC: curve.val_accuracy,
             TRAIN_EVAL_ACCURACY_AT_MOMENTUM_METRIC: curve.train_eval_accuracy}
    if curve.test_accuracy is not None:
        lists[TEST_ACCURACY_AT_MOMENTUM_METRIC] = curve.test_accuracy
    return [Metric(key, value, timestamp, momentum_step(momentum))
            for key, values in lists.items() for momentum, value in zip(curve.momentum, values)]


def register_best(study_name: str, best: optuna.trial.FrozenTrial) -> str | None:
    """Register the best trial's model under the study's name with alias `best`; the version.

    The version's description and tags name the study, the trial, its val and test accuracy and its run.
    A model that was never written (its run's write failed or its process stopped first) is not
    registered: None, said in one line, and the alias stays where it was.
    """
    client = MlflowClient()
    run_id = best.user_attrs[RUN_ID_ATTR]
    model_uri = best.user_attrs[MODEL_URI_ATTR]
    status = client.get_logged_model(model_uri.removeprefix("models:/")).status
    if status != LoggedModelStatus.READY:
        print(f"the best trial ({best.number})'s model {model_uri} was not written (status {status}; see the 'error' "
              f"tag of MLflow run {run_id}): the registry's 'best' alias of {study_name!r} is left as it was.",
              file=sys.stderr)
        return None
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        current = client.get_model_version_by_alias(study_name, BEST_MODEL_ALIAS)
        if current.run_id == run_id:
            return current.version
    val_accuracy, test_accuracy = float(best.value), float(best.user_attrs.get("test_accuracy", float("nan")))
    tags = {STUDY_TAG: study_name, TRIAL_NUMBER_TAG: str(best.number), "val_accuracy": f"{val_accuracy:.4f}",
            "test_accuracy": f"{test_accuracy:.4f}", RUN_ID_ATTR: run_id}
    version = mlflow.register_model(model_uri, study_name, tags=tags)
    client.update_model_version(study_name, version.version, description=(
        f"The best trial of study {study_name!r} when registered: trial {best.number}, val_accuracy "
        f"{val_accuracy:.4f} (the objective), test_accuracy {test_accuracy:.4f}; MLflow run {run_id}."))
    client.set_registered_model_alias(study_name, BEST_MODEL_ALIAS, version.version)
    return version.version


@dataclass(frozen=True)
class TrialRun:
    """A trial's MLflow run: its id, experiment, trial number, run name and the params it logged."""

    run_id: str
    experiment_id: str
    trial_number: int
    name: str
    params: dict[str, str]

    @property
    def title(self) -> str:
        """What its figures' titles start with: `Trial N`, or the run's own name where it has another (a
        confirmation's)."""
        return f"Trial {self.trial_number}" if self.name == trial_run_name(self.trial_number) else self.name
