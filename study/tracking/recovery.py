"""The runs of processes that died: ended KILLED by whichever process finds them.

A process killed at any moment (kill -9, a machine gone) can leave trial runs RUNNING: the run of the trial it
was training, and those of finished trials its writer had not written yet. Optuna's heartbeat finds the first
(`end_stale_trial_run`, the storage's callback); `end_unwritten_trial_runs` finds the second, at every start
and summary of the study.
"""

from __future__ import annotations

import os
import socket
import sys

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from study.contract import (
    MODEL_URI_ATTR,
    NOT_WRITTEN,
    PARENT_RUN_ID_ATTR,
    STUDY_TAG,
    TRIAL_NUMBER_TAG,
    WORKER_ATTR,
    WORKER_DIED,
    parse_worker_name,
    worker_name,
)
from study.tracking.runs import Ending, end_run, experiment_of, fail_pending_model


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
        end_run(client, run_id, Ending.FOUND_DEAD, "FAIL",
                f"{WORKER_DIED}: {worker or 'its worker'} stopped sending heartbeats during trial {trial.number} "
                f"(killed, e.g. kill -9, or its machine went down); the trial was failed by {worker_name()}")
    if worker:
        end_unwritten_trial_runs(study, worker)


def _running_trial_runs(client: MlflowClient, study: optuna.Study) -> list:
    """The RUNNING trial runs of `study` (tagged with its name and a trial number) in its parent's experiment."""
    parent = study.user_attrs.get(PARENT_RUN_ID_ATTR)
    if not parent:
        return []
    running = client.search_runs([experiment_of(parent)], f"attributes.status = 'RUNNING' and "
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
        end_run(client, run.info.run_id, Ending.FOUND_DEAD, trial.state.name,
                f"{NOT_WRITTEN}: its process {trial.user_attrs[WORKER_ATTR]} stopped (e.g. kill -9) before the run of "
                f"trial {trial.number} ({trial.state.name} in Optuna) was written; ended by {worker_name()}")
        ended.append(trial.number)
    return ended


def _process_gone(worker: str) -> bool:
    """Whether the process `host:pid` is known to have ended: it was on this host and no longer exists."""
    host, pid = parse_worker_name(worker)
    if host != socket.gethostname() or pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    return False
