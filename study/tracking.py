"""The MLflow adapter: a parent run per study invocation, a nested child run per trial.

The trainer knows nothing of MLflow; this module turns its hooks and results into the contract
the report and users rely on (see README, "What is logged"):

* parent: study settings, dataset (log_input), best_val_accuracy, best params, importances,
  trials.csv, and the best model registered under the study's name with alias `best`;
* child: params, tags `optuna_trial_number` / `trial_state`, per-epoch metrics (step = epoch),
  final metrics, confusion matrices, learning curves, the momentum curve (json, png and metrics
  whose step encodes the momentum) and, for complete trials, the model.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Iterator
from importlib import metadata

import mlflow
import numpy as np
import optuna
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from gaplab.curve import MomentumCurve, momentum_step
from gaplab.data import Dataset
from gaplab.device import backend_package
from gaplab.model import to_portable
from gaplab.trainer import EpochCallback, TrainResult
from study import figures
from study.contract import (
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MODEL_URI_ATTR,
    MOMENTUM_CURVE_ARTIFACT,
    MOMENTUM_CURVE_FIGURE,
    RUN_ID_ATTR,
    RUN_STATUS,
    STUDY_TAG,
    TEST_ACCURACY_AT_MOMENTUM_METRIC,
    TIMING_METRIC_PREFIX,
    TRAIN_EVAL_ACCURACY_AT_MOMENTUM_METRIC,
    TRIAL_NUMBER_TAG,
    TRIAL_STATE_TAG,
    VAL_ACCURACY_AT_MOMENTUM_METRIC,
    WORKER_ATTR,
    WORKER_DIED,
)


class EpochLogger(EpochCallback):
    """Logs each epoch's metrics to one run, with step = epoch."""

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id
        self.client = MlflowClient()

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        timestamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(key, value, timestamp, epoch) for key, value in metrics.items()])


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
    features = np.zeros((0, data.image_size, data.image_size, 3), dtype=np.uint8)
    dataset = mlflow.data.from_numpy(features, name=data.name, digest=data.digest)
    mlflow.log_input(dataset, context="training")


@functools.cache
def _experiment_of(run_id: str) -> str:
    """The experiment of a run; a study's parent run never moves, so it is asked once per process."""
    return MlflowClient().get_run(run_id).info.experiment_id


@contextlib.contextmanager
def trial_run(study_name: str, trial: optuna.Trial, params: dict[str, object],
              parent_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """A child run of the study's parent run (`parent_run_id`, else the active run) for one trial;
    its status and tags follow the outcome.

    Returning normally means COMPLETE; optuna.TrialPruned means PRUNED; KeyboardInterrupt ends
    the run KILLED (trial FAIL); any other exception FAILED with the error logged.
    """
    experiment_id = _experiment_of(parent_run_id) if parent_run_id else None
    run = mlflow.start_run(
        run_name=f"trial-{trial.number:03d}",
        nested=True,
        parent_run_id=parent_run_id,
        experiment_id=experiment_id,
        tags={TRIAL_NUMBER_TAG: str(trial.number), STUDY_TAG: study_name, TRIAL_STATE_TAG: "RUNNING"},
    )
    try:
        trial.set_user_attr(RUN_ID_ATTR, run.info.run_id)
        mlflow.log_params({key: str(value) for key, value in params.items()})
        yield run
    except optuna.TrialPruned:
        mlflow.set_tag(TRIAL_STATE_TAG, "PRUNED")
        mlflow.end_run(RUN_STATUS["PRUNED"])
        raise
    except KeyboardInterrupt as interrupt:
        mlflow.set_tag(TRIAL_STATE_TAG, "FAIL")
        mlflow.set_tag(ERROR_TAG, f"interrupted (KeyboardInterrupt: {interrupt})"[:5000])
        mlflow.end_run("KILLED")
        raise
    except Exception as error:
        mlflow.set_tag(TRIAL_STATE_TAG, "FAIL")
        mlflow.set_tag(ERROR_TAG, f"{type(error).__name__}: {error}"[:5000])
        mlflow.log_text("".join(traceback.format_exception(error)), "error.txt")
        mlflow.end_run(RUN_STATUS["FAIL"])
        raise
    else:
        mlflow.set_tag(TRIAL_STATE_TAG, "COMPLETE")
        mlflow.end_run(RUN_STATUS["COMPLETE"])


def _active_trial_number() -> int:
    """The trial number of the active run (a `trial_run`)."""
    return int(mlflow.active_run().data.tags[TRIAL_NUMBER_TAG])


def log_result(result: TrainResult, data: Dataset, with_model: bool) -> str | None:
    """Final metrics, confusion matrices, learning curves and (optionally) the model, named
    `trial-NNN`, on the active `trial_run`; the model URI.

    Every figure's title names its trial, so a downloaded PNG keeps its context.
    """
    number = _active_trial_number()
    # Final values share names with per-epoch metrics; log them at the last epoch's step, and not at
    # all where the last epoch already holds that value, so each history stays one point per epoch.
    last_epoch = {key: values[-1] for key, values in result.history.items() if values}
    metrics = {key: value for key, value in result.final_metrics().items()
               if not (key in last_epoch and np.isclose(last_epoch[key], value, rtol=0, atol=1e-6))}
    mlflow.log_metrics(metrics, step=result.epochs)
    # Under one prefix, so the MLflow UI groups them in a section of their own instead of sorting
    # them ahead of the accuracies.
    mlflow.log_metrics({f"{TIMING_METRIC_PREFIX}{key}": value for key, value in result.timings.items()})
    mlflow.set_tag("diverged", str(result.diverged).lower())
    names = list(result.class_names)
    confusion = figures.trial_confusion_renderer(tuple(names))
    for split, matrix in (("val", result.confusion_val), ("test", result.confusion_test)):
        suffix = "" if split == "val" else "_test"
        mlflow.log_dict({"split": split, "class_names": names, "matrix": matrix.tolist()},
                        f"confusion_matrix{suffix}.json")
        mlflow.log_image(confusion(matrix, f"Trial {number}: confusion matrix ({split})"),
                         artifact_file=f"confusion_matrix{suffix}.png")
    curves = figures.trial_curves_renderer(result.config.epochs)
    mlflow.log_image(curves(result.history, f"Trial {number}: learning curves"), artifact_file="learning_curves.png")
    if result.momentum_curve is not None:
        log_momentum_curve(result.momentum_curve, result.config.momentum_grid, number)
    if not with_model or result.model is None:
        return None
    portable = to_portable(result.model, result.config, data.num_classes)
    # No signature: MLflow enforces a signature's input dtype exactly, and users hold images as
    # uint8 as often as float32 in 0-255; the model takes both, so its input and output are
    # described in the model's metadata instead. (mlflow 3.17 with Keras 3: input_example= fails,
    # input_example.json is written before its folder exists.)
    size = data.image_size
    metadata = {"input": f"images, shape (n, {size}, {size}, 3), RGB values 0-255, dtype uint8 or float32",
                "output": f"probabilities, shape (n, {data.num_classes}), classes {list(data.class_names)}"}
    # step: the final metrics, logged at the last epoch, are linked to the model.
    info = mlflow.keras.log_model(portable, name=f"trial-{number:03d}", metadata=metadata,
                                  step=result.epochs, pip_requirements=model_requirements())
    return info.model_uri


def momentum_curve_metrics(curve: MomentumCurve) -> list[Metric]:
    """The curve as metrics the MLflow UI charts: one point per momentum m at step `momentum_step(m)`."""
    timestamp = int(time.time() * 1000)
    lists = {VAL_ACCURACY_AT_MOMENTUM_METRIC: curve.val_accuracy,
             TRAIN_EVAL_ACCURACY_AT_MOMENTUM_METRIC: curve.train_eval_accuracy}
    if curve.test_accuracy is not None:
        lists[TEST_ACCURACY_AT_MOMENTUM_METRIC] = curve.test_accuracy
    return [Metric(key, value, timestamp, momentum_step(momentum))
            for key, values in lists.items() for momentum, value in zip(curve.momentum, values)]


def log_momentum_curve(curve: MomentumCurve, grid: tuple[float, ...], trial_number: int) -> None:
    """momentum_curve.json (the trial's `MOMENTUM_CURVE_ATTR`), momentum_curve.png (every momentum of `grid`
    labelled) and the curve's metrics."""
    data = curve.as_dict()
    mlflow.log_dict(data, MOMENTUM_CURVE_ARTIFACT)
    render = figures.trial_momentum_renderer(tuple(grid), figures.momentum_decades(curve.momentum))
    title = f"Trial {trial_number}: momentum curve (own momentum {curve.own_momentum:g}, best {curve.best_momentum:g})"
    mlflow.log_image(render(data, title), artifact_file=MOMENTUM_CURVE_FIGURE)
    MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=momentum_curve_metrics(curve))


@functools.cache
def model_requirements() -> list[str]:
    """What serving a logged model needs: Keras and its backend, pinned to the versions trained with.

    Given explicitly because MLflow's inference of requirements reloads the model in a
    subprocess, which took 12 s per trial, several times the training itself.
    """
    return [f"{name}=={metadata.version(name)}" for name in ("keras", backend_package(), "numpy")]


def register_best(study_name: str, best: optuna.trial.FrozenTrial) -> str:
    """Register the best trial's model under the study's name with alias `best`; the version.

    The version's description and tags name the study, the trial, its val and test accuracy and its run.
    """
    client = MlflowClient()
    run_id = best.user_attrs[RUN_ID_ATTR]
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        current = client.get_model_version_by_alias(study_name, "best")
        if current.run_id == run_id:
            return current.version
    val_accuracy, test_accuracy = float(best.value), float(best.user_attrs.get("test_accuracy", float("nan")))
    tags = {STUDY_TAG: study_name, TRIAL_NUMBER_TAG: str(best.number), "val_accuracy": f"{val_accuracy:.4f}",
            "test_accuracy": f"{test_accuracy:.4f}", RUN_ID_ATTR: run_id}
    version = mlflow.register_model(best.user_attrs[MODEL_URI_ATTR], study_name, tags=tags)
    client.update_model_version(study_name, version.version, description=(
        f"The best trial of study {study_name!r} when registered: trial {best.number}, val_accuracy "
        f"{val_accuracy:.4f} (the objective), test_accuracy {test_accuracy:.4f}; MLflow run {run_id}."))
    client.set_registered_model_alias(study_name, "best", version.version)
    return version.version


def end_stale_trial_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's callback for a trial it failed because its process stopped beating: end its run KILLED.

    Runs in whichever process finds the stale trial: a worker of the same command or a later one.
    """
    worker = trial.user_attrs.get(WORKER_ATTR, "its worker")
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    client = MlflowClient()
    running = bool(run_id) and client.get_run(run_id).info.status == "RUNNING"
    print(f"trial {trial.number} of worker {worker} stopped sending heartbeats: marked FAIL"
          + (f", its MLflow run {run_id} KILLED" if running else "") + "; it does not count towards --trials.",
          file=sys.stderr, flush=True)
    if not running:
        return
    client.set_tag(run_id, TRIAL_STATE_TAG, "FAIL")
    client.set_tag(run_id, ERROR_TAG, f"{WORKER_DIED}: {worker} stopped sending heartbeats during trial "
                   f"{trial.number} (killed, e.g. kill -9, or its machine went down); the trial was failed by "
                   f"{socket.gethostname()}:{os.getpid()}")
    client.set_terminated(run_id, "KILLED")


def end_active_runs(status: str, keep: str | None = None) -> None:
    """End this process's active runs with `status` (e.g. KILLED), innermost first; stop at run `keep`, left open."""
    while (run := mlflow.active_run()) is not None and run.info.run_id != keep:
        mlflow.end_run(status)


def log_json(data: object, name: str) -> None:
    mlflow.log_text(json.dumps(data, indent=2, sort_keys=True), name)
