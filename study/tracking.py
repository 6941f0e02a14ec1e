"""The MLflow adapter: a parent run per study invocation, a nested child run per trial.

The trainer knows nothing of MLflow; this module turns its hooks and results into the contract
the report and users rely on (see docs/logging.md):

* parent: study settings, dataset (log_input), best_val_accuracy, best params, importances,
  trials.csv, and the best model registered under the study's name with alias `best`;
* child: params, tags `optuna_trial_number` / `trial_state`, per-epoch metrics (step = epoch),
  final metrics, confusion matrices, learning curves, the momentum curve (json, png and metrics
  whose step encodes the momentum) and, for complete trials, the model.

A trial's run is created here (`trial_run`) and, once the trial has trained, handed to the process's
writer (study.writer), which logs the rest on its own thread and then ends the run: a run is RUNNING
until all it logs is written. Runs whose process stopped before writing them are ended KILLED by
`end_unwritten_trial_runs`.
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
from dataclasses import dataclass

import mlflow
import numpy as np
import optuna
from mlflow.entities import LoggedModelStatus, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as run_context
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from optuna.trial import TrialState

from gaplab.curve import MomentumCurve, momentum_step
from gaplab.data import Dataset
from study import stopping
from study.contract import (
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MODEL_URI_ATTR,
    PARENT_RUN_ID_ATTR,
    RUN_ID_ATTR,
    RUN_STATUS,
    STUDY_TAG,
    TEST_ACCURACY_AT_MOMENTUM_METRIC,
    TRAIN_EVAL_ACCURACY_AT_MOMENTUM_METRIC,
    TRIAL_NUMBER_TAG,
    TRIAL_STATE_TAG,
    VAL_ACCURACY_AT_MOMENTUM_METRIC,
    WORKER_ATTR,
    WORKER_DIED,
)

# The error tag of a finished trial's run that was never written (its process stopped first) starts with this.
NOT_WRITTEN = "not written"


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


@dataclass
class TrialRun:
    """A trial's MLflow run while the trial runs; `handed_off` once the writer owns it (and ends it)."""

    run_id: str
    experiment_id: str
    trial_number: int
    params: dict[str, str]
    handed_off: bool = False
    custom_name: str | None = None  # trial_run's `run_name`, where given

    @property
    def model_name(self) -> str:
        """What its logged model is called: the run's name, `trial-NNN` by default."""
        return self.custom_name or f"trial-{self.trial_number:03d}"

    @property
    def title(self) -> str:
        """What its figures' titles start with: `Trial N`, or the run's own name."""
        return self.custom_name or f"Trial {self.trial_number}"


# This process's trial runs that are open and not handed to the writer: `end_active_runs` ends them
# where an interrupt beat `trial_run`'s own handler.
_open_runs: dict[str, TrialRun] = {}


@contextlib.contextmanager
def trial_run(study_name: str, trial: optuna.Trial, params: dict[str, object],
              parent_run_id: str | None = None, run_name: str | None = None,
              extra_tags: dict[str, str] | None = None) -> Iterator[TrialRun]:
    """A child run of the study's parent run (`parent_run_id`, else the active run) for one trial, named
    `run_name` (default `trial-NNN`) and tagged with `extra_tags` besides the trial's own tags.

    The run is not this thread's active run: the writer ends it on its own thread. Once handed off
    (`TrialRun.handed_off`) it is the writer's to end; until then it ends here by the outcome:
    returning means COMPLETE, optuna.TrialPruned PRUNED, KeyboardInterrupt KILLED (trial FAIL) and any
    other exception FAILED with the error logged.
    """
    parent = parent_run_id or (active.info.run_id if (active := mlflow.active_run()) else None)
    if parent is None:
        raise ValueError("a trial run is nested in the study's parent run: start one (mlflow.start_run) or pass "
                         "parent_run_id.")
    client = MlflowClient()
    name = run_name or f"trial-{trial.number:03d}"
    tags = run_context.resolve_tags({**(extra_tags or {}), TRIAL_NUMBER_TAG: str(trial.number), STUDY_TAG: study_name,
                                     TRIAL_STATE_TAG: "RUNNING", MLFLOW_PARENT_RUN_ID: parent, MLFLOW_RUN_NAME: name})
    # A signal between the run's creation and its registration would leave a run nothing ends: it takes
    # effect once the run is registered (end_active_runs then ends it KILLED).
    with stopping.signals_deferred():
        created = client.create_run(_experiment_of(parent), tags=tags, run_name=name)
        run = TrialRun(created.info.run_id, created.info.experiment_id, trial.number,
                       {key: str(value) for key, value in params.items()}, custom_name=run_name)
        _open_runs[run.run_id] = run
    outcome, error_text, details, status = "COMPLETE", None, None, None
    try:
        trial.set_user_attr(RUN_ID_ATTR, run.run_id)
        client.log_batch(run.run_id, params=[Param(key, value) for key, value in run.params.items()])
        yield run
    except optuna.TrialPruned:
        outcome = "PRUNED"
        raise
    except KeyboardInterrupt as interrupt:
        outcome, error_text, status = "FAIL", f"interrupted (KeyboardInterrupt: {interrupt})", "KILLED"
        raise
    except Exception as error:
        outcome, error_text = "FAIL", f"{type(error).__name__}: {error}"
        details = "".join(traceback.format_exception(error))
        raise
    finally:
        if not run.handed_off:
            end_run(client, run.run_id, outcome, error_text, details, status)
        # Left registered where ending it was interrupted: end_active_runs ends it then.
        _open_runs.pop(run.run_id, None)


def end_run(client: MlflowClient, run_id: str, trial_state: str, error: str | None = None,
            details: str | None = None, status: str | None = None) -> None:
    """End a trial's run: its trial_state tag, the error tag and error.txt where given, then its status
    (by default the trial state's, contract.RUN_STATUS)."""
    tags = [RunTag(TRIAL_STATE_TAG, trial_state)] + ([RunTag(ERROR_TAG, error[:5000])] if error else [])
    client.log_batch(run_id, tags=tags)
    if details:
        client.log_text(run_id, details, "error.txt")
    client.set_terminated(run_id, status or RUN_STATUS[trial_state])


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
        current = client.get_model_version_by_alias(study_name, "best")
        if current.run_id == run_id:
            return current.version
    val_accuracy, test_accuracy = float(best.value), float(best.user_attrs.get("test_accuracy", float("nan")))
    tags = {STUDY_TAG: study_name, TRIAL_NUMBER_TAG: str(best.number), "val_accuracy": f"{val_accuracy:.4f}",
            "test_accuracy": f"{test_accuracy:.4f}", RUN_ID_ATTR: run_id}
    version = mlflow.register_model(model_uri, study_name, tags=tags)
    client.update_model_version(study_name, version.version, description=(
        f"The best trial of study {study_name!r} when registered: trial {best.number}, val_accuracy "
        f"{val_accuracy:.4f} (the objective), test_accuracy {test_accuracy:.4f}; MLflow run {run_id}."))
    client.set_registered_model_alias(study_name, "best", version.version)
    return version.version


def end_stale_trial_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's callback for a trial it failed because its process stopped beating: end its run KILLED, and
    the runs of that process's finished trials it had not written yet (`end_unwritten_trial_runs`).

    The run is found by its tags (the study's name and the trial's number, set when it is created), so
    also where the process died between creating it and recording its id in the trial. Runs in whichever
    process finds the stale trial: a worker of the same command or a later one.
    """
    worker = trial.user_attrs.get(WORKER_ATTR)
    client = MlflowClient()
    running = [run.info.run_id for run in _running_trial_runs(client, study)
               if run.data.tags.get(TRIAL_NUMBER_TAG) == str(trial.number)]
    print(f"trial {trial.number} of worker {worker or '?'} stopped sending heartbeats: marked FAIL"
          + (f", its MLflow run {', '.join(running)} KILLED" if running else "")
          + "; it does not count towards --trials.", file=sys.stderr, flush=True)
    for run_id in running:
        end_run(client, run_id, "FAIL", f"{WORKER_DIED}: {worker or 'its worker'} stopped sending heartbeats during "
                f"trial {trial.number} (killed, e.g. kill -9, or its machine went down); the trial was failed by "
                f"{_this_process()}", status="KILLED")
    if worker:
        end_unwritten_trial_runs(study, worker)


def _running_trial_runs(client: MlflowClient, study: optuna.Study) -> list:
    """The RUNNING trial runs of `study` (tagged with its name and a trial number) in its parent's experiment."""
    parent = study.user_attrs.get(PARENT_RUN_ID_ATTR)
    if not parent:
        return []
    running = client.search_runs([_experiment_of(parent)], f"attributes.status = 'RUNNING' and "
                                 f"tags.{STUDY_TAG} = '{study.study_name}'", max_results=5000)
    return [run for run in running if TRIAL_NUMBER_TAG in run.data.tags]


def end_unwritten_trial_runs(study: optuna.Study, dead_worker: str | None = None) -> list[int]:
    """End KILLED the runs of finished trials left RUNNING because their process stopped before writing them
    (e.g. kill -9 while the writer held them, or between creating a run and recording its id); their trial
    numbers.

    Only where the process (contract.WORKER_ATTR, host:pid) is known to be gone: `dead_worker`, which
    Optuna's heartbeat found dead, or else one of this host that no longer exists. One on another
    host that died between trials is not known to be gone: its runs stay RUNNING until a process on
    its host calls this, or its heartbeat path does. A run is matched to its trial by its trial-number tag.
    """
    finished = {trial.number: trial for trial in study.get_trials(
                    deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
                if (trial.user_attrs.get(WORKER_ATTR) == dead_worker if dead_worker
                    else _process_gone(trial.user_attrs.get(WORKER_ATTR, "")))}
    if not finished:
        return []
    client = MlflowClient()
    ended = []
    for run in _running_trial_runs(client, study):
        trial = finished.get(int(run.data.tags[TRIAL_NUMBER_TAG]))
        if trial is None:
            continue
        fail_pending_model(client, trial.user_attrs.get(MODEL_URI_ATTR, "").removeprefix("models:/"))
        end_run(client, run.info.run_id, trial.state.name,
                f"{NOT_WRITTEN}: its process {trial.user_attrs[WORKER_ATTR]} stopped (e.g. kill -9) before the run of "
                f"trial {trial.number} ({trial.state.name} in Optuna) was written; ended by {_this_process()}",
                status="KILLED")
        ended.append(trial.number)
    return ended


def fail_pending_model(client: MlflowClient, model_id: str | None) -> None:
    """Mark a logged model that was never written FAILED, so that nothing registers it."""
    if model_id and client.get_logged_model(model_id).status == LoggedModelStatus.PENDING:
        client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)


def _this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_gone(worker: str) -> bool:
    """Whether the process `host:pid` is known to have ended: it was on this host and no longer exists."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    return False


def end_active_runs(status: str, keep: str | None = None) -> None:
    """End this process's open trial runs that the writer does not hold (trial FAIL) and its active runs with
    `status` (e.g. KILLED), innermost first; stop at run `keep`, left open.

    The writer's runs are the writer's to end (study.writer.drain_process_writer)."""
    # A client only where there are runs to end: an interrupt before the store exists must not create it.
    client = MlflowClient() if _open_runs else None
    for run_id in list(_open_runs):
        why = "interrupted" if status == "KILLED" else "the command failed"
        end_run(client, run_id, "FAIL", f"{why} before its trial could end it", status=status)
        _open_runs.pop(run_id, None)
    while (run := mlflow.active_run()) is not None and run.info.run_id != keep:
        mlflow.end_run(status)


def log_json(data: object, name: str) -> None:
    mlflow.log_text(json.dumps(data, indent=2, sort_keys=True), name)
