"""The open study: one process's handle on the study's two stores, and the loop that trains its trials.

`python -m study.run` checks its flags (study.run), then `run_study` here:

* loads the data once (a bad image is found before either store is touched), checks MLflow's
  tracking store and opens Optuna's storage;
* holding the study's lock (study.storage.StudyLock), so that any number of processes starting
  together make one study: creates or resumes the study (`open_study`), refuses a resume whose
  fixed settings differ, fails the trials of processes that died, and finds or creates the
  study's one parent run in MLflow (`set_up`, `attach_parent_run`);
* trains in this process (`run_worker`) or in `--workers` processes (study.workers), each of
  which opens the same study and runs the same loop (`run_worker_process`); each trial starts
  under the lock, where the count to `--trials` is decided and the next seed preset queued;
* logs the end-of-study summary and returns a `StudyOutcome`.

A stop request (study.stopping) marks the running trials FAIL and ends this process's open MLflow
runs KILLED.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from gaplab import device
from gaplab.data import DEFAULT_IMAGES, Dataset, generate_shapes, load_image_folder
from gaplab.dataset import DataError
from gaplab.device import DeviceError
from gaplab.trainer import TrainResult
from study import contract, describe, space, stopping, summary, tracking, workers, writer
from study.cli import UsageError, fail
from study.objective import Objective
from study.settings import Settings, default_study_name
from study.storage import (
    StudyLock,
    check_recorded_tracking_uri,
    check_tracking_uri,
    fail_orphaned_trials,
    fail_stale_trials,
    heartbeat_grace,
    masked,
    open_optuna_storage,
)

TrainFn = Callable[..., TrainResult]


@dataclass(frozen=True)
class StudyOutcome:
    """How the command ended: the study's trials at the end, its parent run, and the exit code.

    `finished` counts complete and pruned trials (what `--trials` counts), `pruned` the pruned ones.
    """

    study_name: str
    parent_run_id: str
    finished: int
    pruned: int
    failed: int
    exit_code: int


@dataclass(frozen=True)
class OpenStudy:
    """One process's handle on the study: the Optuna study, its name, the data and the device trials train on."""

    settings: Settings
    study: optuna.Study
    name: str
    data: Dataset
    training_device: str
    storage: optuna.storages.RDBStorage

    def lock(self) -> StudyLock:
        """The study's lock (study.storage.StudyLock): one process at a time through set-up and trial starts."""
        return StudyLock(self.storage, self.name)

    def objective(self, parent_run_id: str, train_fn: TrainFn | None = None,
                  **options) -> Callable[[optuna.Trial], float]:
        """The Optuna objective, also recording which process ran each trial (contract.WORKER_ATTR); `options`
        go to study.objective.Objective (study.confirm passes its fixed configs and run names)."""
        base = self.settings.base
        fixed = {"image_size": base.image_size, "epochs": base.epochs, "seed": base.seed,
                 # Each trial's run records the device it trained on (the parent records the one asked for).
                 "device": self.training_device}
        objective = Objective(self.name, self.data, base, fixed, prune_on=self.settings.prune_on,
                              parent_run_id=parent_run_id, train_fn=train_fn, **options)
        worker = f"{socket.gethostname()}:{os.getpid()}"

        def run_trial(trial: optuna.Trial) -> float:
            trial.set_user_attr(contract.WORKER_ATTR, worker)
            return objective(trial)

        return run_trial

    def outcome(self, parent_run_id: str, exit_code: int) -> StudyOutcome:
        states = collections.Counter(trial.state for trial in self.study.get_trials(deepcopy=False))
        pruned = states[optuna.trial.TrialState.PRUNED]
        return StudyOutcome(self.name, parent_run_id, finished=states[optuna.trial.TrialState.COMPLETE] + pruned,
                            pruned=pruned, failed=states[optuna.trial.TrialState.FAIL], exit_code=exit_code)


@functools.cache
def training_device_for(requested: str) -> str:
    """The device this process trains on for `--device requested` (DeviceError if gpu sees none).

    Says so in one line when `auto` fell back to the CPU. Asked once per process: the command asks
    first, while the backend loads (study.run), and the answer cannot change after that.
    """
    chosen = device.choose_device(requested)
    if chosen == "CPU" and requested == "auto":
        print(device.cpu_notice(), flush=True)
    return chosen


def load_data(settings: Settings) -> Dataset:
    base = settings.base
    if settings.data_dir:
        data = load_image_folder(settings.data_dir, base.image_size, seed=base.seed,
                                 skip_bad_images=settings.skip_bad_images)
        if data.skipped_files:
            print(f"skipped {len(data.skipped_files)} unreadable image file(s): "
                  + ", ".join(str(path) for path in data.skipped_files[:5])
                  + (", ..." if len(data.skipped_files) > 5 else ""), file=sys.stderr)
        return data
    return generate_shapes(base.image_size, DEFAULT_IMAGES, base.seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        # Four presets run first; start pruning once a few searched trials have reported.
        return optuna.pruners.MedianPruner(n_startup_trials=6, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def quiet_optuna() -> None:
    """Optuna's warnings only, less its report of a trial that Ctrl-C ended: that one carries the
    KeyboardInterrupt's whole traceback, and the command says "interrupted" in its own line. Other failed
    trials are still reported (and their errors kept in their MLflow runs)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(existing, stopping.InterruptedTrialFilter) for existing in handler.filters):
            handler.addFilter(stopping.InterruptedTrialFilter())


def study_name_of(settings: Settings, data: Dataset) -> str:
    """`--study_name`, else `<dataset>-<image_size>px` made a valid name (study.settings.default_study_name)."""
    return settings.study_name or default_study_name(data.name, settings.base.image_size)


def open_storage(settings: Settings) -> optuna.storages.RDBStorage:
    """Optuna's storage, whose heartbeats end a dead process's trial runs (study.tracking.end_stale_trial_run)."""
    return open_optuna_storage(settings.storage, tracking.end_stale_trial_run)


def open_study(settings: Settings, storage: optuna.storages.RDBStorage, data: Dataset, training_device: str,
               sampler: optuna.samplers.BaseSampler | None = None) -> OpenStudy:
    """Create the study on `data`, or load it where it exists; the caller holds the study's lock."""
    name = study_name_of(settings, data)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="maximize",
                                sampler=sampler, pruner=make_pruner(settings.pruner, settings.base.epochs))
    describe.describe_study(study, settings.prune_on)
    return OpenStudy(settings, study, name, data, training_device, storage)


def fixed_settings(settings: Settings, data: Dataset) -> dict[str, object]:
    """The settings every process of one study must share (contract.FIXED_SETTINGS), and the data folder."""
    base = settings.base
    return {"dataset": data.name, "dataset_digest": data.digest, "image_size": base.image_size,
            "epochs": base.epochs, "seed": base.seed, "pruner": settings.pruner, "prune_on": settings.prune_on,
            "data_dir": settings.data_dir}


def check_fixed_settings(study: optuna.Study, study_name: str, current: dict[str, object]) -> None:
    """Store the study's fixed settings when new; UsageError if this run's differ from the stored ones.

    Only the settings the study stored are compared: a study begun before `pruner` and `prune_on`
    were fixed resumes with any, and they are not added afterwards, since its earlier trials may
    have run with others (the report then says that what it pruned on is unknown).
    """
    stored = study.user_attrs.get(contract.SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(contract.SETTINGS_ATTR, current)
        return
    differing = [name for name in contract.FIXED_SETTINGS if name in stored and stored[name] != current[name]]
    if differing:
        theirs = ", ".join(f"{name}={stored.get(name)!r}" for name in differing)
        ours = ", ".join(f"{name}={current[name]!r}" for name in differing)
        raise UsageError(f"study {study_name!r} was run with {theirs} (data_dir={stored.get('data_dir')!r}); this "
                         f"run has {ours}. Rerun with the study's settings, or start a new study with another "
                         "--study_name.")


def count_finished(study: optuna.Study) -> int:
    """Complete or pruned trials: what `--trials` counts."""
    return len(study.get_trials(deepcopy=False, states=contract.FINISHED_STATES))


def count_running(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def attach_parent_run(study: optuna.Study, study_name: str, launcher_run: str | None) -> tuple[mlflow.ActiveRun, bool]:
    """Start (or reopen) the study's parent run; (the run, whether it is new). The caller holds the study's lock.

    A study has one parent run for all its processes, in the study's experiment (`study_experiment`). It
    is the run whose id the study keeps; else the one tagged as the study's parent there (a process
    killed between creating it and recording it); else the run `mlflow run` created, where that is in
    the study's experiment; else a new one. A launcher's run elsewhere is linked to it (`link_launcher_run`).
    """
    client = mlflow.MlflowClient()
    stored = study.user_attrs.get(contract.PARENT_RUN_ID_ATTR)
    parent_id = stored if stored and _is_active(client, stored) else None
    experiment_name = study_experiment(client, study_name, launcher_run)
    experiment = client.get_experiment_by_name(experiment_name)
    if parent_id is None and experiment is not None:
        found = client.search_runs(
            [experiment.experiment_id], f"tags.{contract.STUDY_TAG} = '{study_name}' and "
            f"tags.{contract.STUDY_ROLE_TAG} = '{contract.PARENT_ROLE}'", order_by=["attributes.start_time ASC"],
            max_results=1)
        parent_id = found[0].info.run_id if found else None
    new = parent_id is None
    if new and launcher_run and experiment is not None \
            and client.get_run(launcher_run).info.experiment_id == experiment.experiment_id:
        parent_id = launcher_run
        # `mlflow run` gives its run a random name; the study's is what users look for in the UI.
        client.update_run(launcher_run, name=study_name)
    if parent_id is None:
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
        parent_id = client.create_run(experiment_id, run_name=study_name, tags={
            contract.STUDY_TAG: study_name, contract.STUDY_ROLE_TAG: contract.PARENT_ROLE}).info.run_id
    client.set_tag(parent_id, contract.STUDY_TAG, study_name)
    client.set_tag(parent_id, contract.STUDY_ROLE_TAG, contract.PARENT_ROLE)
    if parent_id != stored:
        study.set_user_attr(contract.PARENT_RUN_ID_ATTR, parent_id)
    # The fluent API's experiment follows the parent's (a stale one from earlier in this process would refuse it).
    mlflow.set_experiment(experiment_id=client.get_run(parent_id).info.experiment_id)
    parent = mlflow.start_run(run_id=parent_id)
    if launcher_run and launcher_run != parent_id:
        link_launcher_run(client, launcher_run, study_name, parent)
    return parent, new


def _is_active(client: mlflow.MlflowClient, run_id: str) -> bool:
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False  # not in this tracking store (or deleted): the study gets another parent run


def study_experiment(client: mlflow.MlflowClient, study_name: str, launcher_run: str | None) -> str:
    """The experiment the study's runs go in: `$MLFLOW_EXPERIMENT_NAME` where set, else the one `mlflow run`
    was told (`--experiment-name` or `--experiment-id`, i.e. any but MLflow's Default), else the study's name."""
    if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return os.environ["MLFLOW_EXPERIMENT_NAME"]
    if launcher_run:
        experiment_id = client.get_run(launcher_run).info.experiment_id
        if experiment_id != DEFAULT_EXPERIMENT_ID:
            return client.get_experiment(experiment_id).name
    return study_name


def link_launcher_run(client: mlflow.MlflowClient, launcher_run: str, study_name: str,
                      parent: mlflow.ActiveRun) -> None:
    """Point the run `mlflow run` created, which is not the study's parent (it sits in another experiment,
    MLflow's Default where no experiment was named), to the study: tagged with the study's name, its
    experiment and parent run, named after the study, and described with a link to the parent run."""
    experiment_id, parent_id = parent.info.experiment_id, parent.info.run_id
    experiment = client.get_experiment(experiment_id).name
    client.update_run(launcher_run, name=f"{study_name} (launcher)")
    for key, value in ((contract.STUDY_TAG, study_name), (contract.STUDY_ROLE_TAG, contract.LAUNCHER_ROLE),
                       (contract.STUDY_EXPERIMENT_TAG, experiment), (contract.STUDY_PARENT_RUN_TAG, parent_id),
                       (MLFLOW_RUN_NOTE, f"This run launched study **{study_name}**: its parent run and trials are in "
                                         f"experiment [{experiment}](#/experiments/{experiment_id}), parent run "
                                         f"[{study_name}](#/experiments/{experiment_id}/runs/{parent_id}).")):
        client.set_tag(launcher_run, key, value)


def start_parent_run(opened: OpenStudy, launcher_run: str | None, tracking_uri: str) -> str:
    """Attach the study's parent run (left active) and record the study's settings on it; its id. The caller
    holds the study's lock."""
    settings, study, data, base = opened.settings, opened.study, opened.data, opened.settings.base
    parent, new_parent = attach_parent_run(study, opened.name, launcher_run)
    parent_id = parent.info.run_id
    tracking.mark_model_training(parent.info.experiment_id)
    study.set_user_attr(contract.TRACKING_URI_ATTR, tracking_uri)
    study.set_user_attr(contract.CLASS_NAMES_ATTR, list(data.class_names))
    study.set_user_attr(contract.TRIALS_TARGET_ATTR, settings.trials)
    tracking.log_params_once(parent_id, {
        "trials": settings.trials, "data_dir": settings.data_dir, "study_name": opened.name,
        "storage": masked(settings.storage), "pruner": settings.pruner, "prune_on": settings.prune_on,
        "image_size": base.image_size, "epochs": base.epochs, "seed": base.seed,
        "dataset": data.name, "dataset_size": data.size, "dataset_digest": data.digest,
        "dataset_source": data.source, "backend": device.backend(),
        "backend_version": device.backend_version(), "device": settings.device,
    })
    if new_parent:
        tracking.log_dataset(data)
    return parent_id


@dataclass(frozen=True)
class Start:
    """What a command's set-up found and made (`set_up`).

    `first_trial`: the study's trial count when the command began (it seeds the samplers); `start_number`:
    how many commands began the study before this one; `to_train`: the trials still missing; `presets`: the
    presets among them, in order.
    """

    opened: OpenStudy
    parent_id: str
    first_trial: int
    start_number: int
    finished: int
    joining: bool
    to_train: int
    presets: list[str]


def set_up(settings: Settings, storage: optuna.storages.RDBStorage, data: Dataset, training_device: str,
           launcher_run: str | None, tracking_uri: str) -> Start:
    """Create or load the study, check it, fail the trials of processes that died, attach the parent run.
    The caller holds the study's lock, so that processes starting together make one study and one parent."""
    opened = open_study(settings, storage, data, training_device)
    study = opened.study
    check_fixed_settings(study, opened.name, fixed_settings(settings, opened.data))
    check_recorded_tracking_uri(study, tracking_uri)
    # Before the target is checked: a trial of a process that died must neither count as present nor stay
    # RUNNING (its MLflow run is ended by the storage's callback).
    fail_stale_trials(study)
    fail_orphaned_trials(study, storage, tracking.end_stale_trial_run)
    tracking.end_unwritten_trial_runs(study)  # runs a killed process's writer held
    start_number = int(study.user_attrs.get(contract.COMMANDS_STARTED_ATTR, 0))
    study.set_user_attr(contract.COMMANDS_STARTED_ATTR, start_number + 1)
    first_trial = len(study.trials)
    finished, running = count_finished(study), count_running(study)
    parent_id = start_parent_run(opened, launcher_run, tracking_uri)
    to_train = max(settings.trials - finished - running, 0)
    presets = space.presets_to_train(study)[:to_train]
    return Start(opened, parent_id, first_trial, start_number, finished, running > 0, to_train, presets)


def run_study(settings: Settings, argv: list[str], train_fn: TrainFn | None = None) -> StudyOutcome:
    """The command: create or check the stores, then train in this process or in `--workers` processes.

    `train_fn` stands in for gaplab.trainer.train in this process (tests). A stop request during the
    trials gives the exit code stopping.EXIT_CODE; one before or after them ends this process's
    MLflow runs KILLED and is raised again.
    """
    try:
        return _run_study(settings, argv, train_fn)
    except (KeyboardInterrupt, Exception) as error:
        if stopping.is_interruption(error):
            tracking.end_active_runs("KILLED")
        elif not isinstance(error, (UsageError, DataError, DeviceError)):
            # A crash, not a refusal: left open, MLflow's exit hook would end the parent run FINISHED.
            tracking.end_active_runs("FAILED")
        raise


def _run_study(settings: Settings, argv: list[str], train_fn: TrainFn | None) -> StudyOutcome:
    quiet_optuna()
    started = time.perf_counter()
    training_device = training_device_for(settings.device)
    launcher_run = workers.take_launcher_run(os.environ)
    # The data before the stores: a command that stops at a bad image leaves no store behind.
    data = load_data(settings)
    tracking_uri = check_tracking_uri()
    storage = open_storage(settings)
    # A stop whose KeyboardInterrupt a library swallowed while the stores opened (it landed in a garbage
    # collector's callback) is honoured here, before anything is written.
    stopping.raise_if_requested()
    # Processes started together make one study, one parent run and one queue. A signal during the set-up
    # takes effect once it is done, so that it is done whole.
    with StudyLock(storage, study_name_of(settings, data)), stopping.interrupts_deferred():
        start = set_up(settings, storage, data, training_device, launcher_run, tracking_uri)
    opened, parent_id, study = start.opened, start.parent_id, start.opened.study

    print(f"study {opened.name!r}: {start.finished}/{settings.trials} trials finished; dataset {data.name} "
          f"({len(data.train)}/{len(data.val)}/{len(data.test)} at {data.image_size}px); storage "
          f"{masked(settings.storage)}; MLflow {masked(tracking_uri)} run {parent_id}; "
          + (f"to train: {start.to_train} trial(s)" + (f", first the preset(s) {', '.join(start.presets)}"
                                                       if start.presets else "")
             if start.to_train else "nothing to train")
          + (f"; {settings.workers} workers" if settings.workers > 1 else ""), flush=True)

    seeds = [workers.sampler_seed(settings.base.seed, start.first_trial, index, start.joining, start.start_number)
             for index in range(settings.workers)]
    if settings.workers == 1:
        study.sampler = optuna.samplers.TPESampler(seed=seeds[0])
        code = run_worker(opened, opened.objective(parent_id, train_fn), settings.trials, label="")
        code = code or _confirmation()(opened, parent_id, settings.confirm, train_fn)
    else:
        interrupted, deaths = workers.run_workers(argv, seeds, settings.gpus, _trial_of_worker(study))
        code = stopping.EXIT_CODE if interrupted else 0
        if deaths and not interrupted:
            print(f"{len(deaths)} worker(s) died; the others went on.", file=sys.stderr)

    if code == stopping.EXIT_CODE:
        print("\ninterrupted: the running trials are marked FAIL and their MLflow runs KILLED; "
              "rerun the same command to resume.", file=sys.stderr)
        summary.describe_parent_run(study, opened.name, ending="interrupted", run_id=parent_id)
        tracking.end_active_runs("KILLED")  # with a trial's run if the interrupt beat its own handler
        return opened.outcome(parent_id, code)
    done = count_finished(study)
    if done < settings.trials:
        fail(f"the study has {done}/{settings.trials} finished trials and no worker is left; see the errors above "
             "and the FAILED runs' 'error' tag in MLflow, then rerun to resume.")
        summary.describe_parent_run(study, opened.name, ending="incomplete", run_id=parent_id)
        mlflow.end_run("FAILED")
        return opened.outcome(parent_id, 1)
    writer.drain_process_writer()
    # One process at a time: commands that end together register the best model once.
    with opened.lock():
        summary.log_study_summary(study, opened.name)
    mlflow.log_metric("study_seconds", time.perf_counter() - started)
    mlflow.end_run("FINISHED")
    return opened.outcome(parent_id, 0 if code == 0 else 1)


def _trial_of_worker(study: optuna.Study) -> Callable[[str], str]:
    """For study.workers' death reports: the trial the worker `host:pid` was running, and what becomes of it."""

    def trial_of(worker: str) -> str:
        mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(contract.WORKER_ATTR) == worker]
        if not mine:
            return "no trial (it had not started one)"
        return (f"trial {mine[-1].number}, which another worker fails after {heartbeat_grace()} s "
                "without heartbeat and replaces")

    return trial_of


class ProgressPrinter:
    """Optuna callback: one line per finished trial with n/N, state, val, gap, best and ETA."""

    def __init__(self, target: int, label: str = ""):
        self.target, self.label = target, label
        self.started = time.perf_counter()
        self.finished_here = 0
        self.last_state = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = count_finished(study)
        self.last_state = trial.state
        if trial.state != optuna.trial.TrialState.FAIL:
            self.finished_here += 1
        per_trial = (time.perf_counter() - self.started) / max(self.finished_here, 1)
        eta = per_trial * max(self.target - done, 0)
        val = trial.user_attrs.get("val_accuracy", float("nan"))
        gap = trial.user_attrs.get("gap", float("nan"))
        try:
            best = f"{study.best_value:.3f} (#{study.best_trial.number})"
        except ValueError:
            best = "-"
        preset = trial.user_attrs.get(contract.PRESET_ATTR)
        label = f" [{preset}]" if preset else ""
        print(f"{self.label}[{done}/{self.target}] trial {trial.number}{label} {trial.state.name:<8} val={val:.3f} "
              f"gap={gap:+.3f} best={best} ETA {_format_seconds(eta)}", flush=True)


def _format_seconds(seconds: float) -> str:
    """`7s`, `5m03s`, `2h05m`, `3d04h`; `over a year` beyond 365 days (a huge --trials), `?` if unknown."""
    if not math.isfinite(seconds):
        return "?"
    if seconds > 365 * 86400:
        return "over a year"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days}d{hours:02d}h" if days else f"{hours}h{minutes:02d}m" if hours
            else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def run_worker(opened: OpenStudy, objective: Callable[[optuna.Trial], float], target: int, label: str,
               poll_s: float = 1.0) -> int:
    """Train trials until the study has `target` finished ones; 0, stopping.EXIT_CODE if stopped, 1 once
    as many trials in a row failed as were missing when this worker started.

    Each trial starts with the study's lock held (`OpenStudy.lock`): the finished and running trials are
    counted, and only while they are fewer than `target` is the next preset queued (study.space) and the
    trial created, so that any number of processes on the study stop at exactly `target`. While the
    others' running trials would reach it, this worker waits, failing trials whose process died so that
    their place is taken.
    """
    study = opened.study
    progress = ProgressPrinter(target, label=label)
    failures, allowed_failures = 0, max(target - count_finished(study), 1)
    try:
        while True:
            stopping.raise_if_requested()
            with contextlib.ExitStack() as start:
                # Waiting for the lock can take long (another process's set-up or summary): a signal there
                # stops at once. Once it is held, a signal takes effect when the start is done (here, or in
                # the objective, which ends the start): one cut short between Optuna's creating the trial and
                # its first heartbeat would leave the trial RUNNING.
                start.enter_context(opened.lock())
                start.enter_context(stopping.interrupts_deferred())
                # Trials others run may be dead ones: fail those so that their place is taken.
                fail_stale_trials(study)
                fail_orphaned_trials(study, opened.storage, tracking.end_stale_trial_run)
                finished = count_finished(study)
                if finished >= target:
                    return 0
                room = finished + count_running(study) < target
                if room:
                    space.enqueue_next_preset(study, opened.settings.base)
                    # Optuna creates (or takes the queued) trial within the lock; the objective releases it.
                    study.optimize(_ending_the_start(start, opened.storage, objective), n_trials=1,
                                   callbacks=[progress], catch=(Exception,), gc_after_trial=False)
            if not room:
                time.sleep(poll_s)
                continue
            if progress.last_state != optuna.trial.TrialState.FAIL:
                failures = 0
                continue
            failures += 1
            if failures >= allowed_failures:
                return fail(f"{label}the last {failures} trial(s) all failed; see the FAILED runs' 'error' tag in "
                            "MLflow. Stopping.", exit_code=1)
    except KeyboardInterrupt:
        writer.drain_process_writer(writer.STOP_DRAIN_SECONDS)
        # A trial's run if the interrupt beat its own handler; the parent run stays the command's to end.
        tracking.end_active_runs("KILLED", keep=study.user_attrs.get(contract.PARENT_RUN_ID_ATTR))
        return stopping.EXIT_CODE


def _ending_the_start(start: contextlib.ExitStack, storage: optuna.storages.RDBStorage,
                      objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
    """`objective`, first recording the new trial's heartbeat, then ending the trial start (`start`: the study's
    lock, released, and signals deferred, whose stop request is raised here, ending the trial FAIL).

    The heartbeat is recorded within the lock (Optuna's own heartbeat thread records it only after): a
    trial whose process dies from its creation on is found dead by its heartbeat (or, without one,
    by study.storage.fail_orphaned_trials), and is never left RUNNING.
    """

    def started(trial: optuna.Trial) -> float:
        try:
            # Optuna's heartbeat thread records the same row, by the same private trial id.
            storage.record_heartbeat(trial._trial_id)
        finally:
            start.close()
        return objective(trial)

    return started


def run_worker_process(settings: Settings, index: int) -> int:
    """One of `--workers` processes: the command created the stores; train trials of the study until done."""
    quiet_optuna()
    training_device = training_device_for(settings.device)
    sampler = optuna.samplers.TPESampler(seed=int(os.environ[workers.SAMPLER_SEED_ENV]))
    data = load_data(settings)
    storage = open_storage(settings)
    with StudyLock(storage, study_name_of(settings, data)):
        opened = open_study(settings, storage, data, training_device, sampler)
    parent_run_id = opened.study.user_attrs[contract.PARENT_RUN_ID_ATTR]
    objective = opened.objective(parent_run_id)
    code = run_worker(opened, objective, settings.trials, label=f"w{index} ")
    return code or _confirmation()(opened, parent_run_id, settings.confirm, label=f"w{index} ")


def _confirmation() -> Callable[..., int]:
    """study.confirm.run_confirmation: after the search's trials, `--confirm K`. Imported when called, since
    study.confirm builds on this module."""
    from study import confirm

    return confirm.run_confirmation
