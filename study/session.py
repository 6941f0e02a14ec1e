"""The open study: one process's handle on the study's two stores, and the loop that trains its trials.

`python -m study.run` checks its flags (study.run), then `run_study` here:

* loads the data once (a bad image is found before either store is touched), checks MLflow's
  tracking store, opens Optuna's storage and creates or resumes the study (`open_study`); refuses
  a resume whose fixed settings differ, fails the trials of processes that died and queues the
  seed presets;
* attaches the study's one parent run in MLflow (`start_parent_run`);
* trains in this process (`run_worker`) or in `--workers` processes (study.workers), each of
  which opens the same study and runs the same loop (`run_worker_process`);
* logs the end-of-study summary and returns a `StudyOutcome`.

A stop request (study.stopping) marks the running trials FAIL and ends this process's open MLflow
runs KILLED.
"""

from __future__ import annotations

import collections
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

from gaplab import device
from gaplab.data import DEFAULT_IMAGES, Dataset, generate_shapes, load_image_folder
from gaplab.trainer import TrainResult
from study import contract, describe, space, stopping, summary, tracking, workers, writer
from study.cli import UsageError, fail
from study.objective import Objective
from study.settings import Settings, default_study_name
from study.storage import (
    check_recorded_tracking_uri,
    check_tracking_uri,
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

    def objective(self, parent_run_id: str, train_fn: TrainFn | None = None) -> Callable[[optuna.Trial], float]:
        """The Optuna objective, also recording which process ran each trial (contract.WORKER_ATTR)."""
        base = self.settings.base
        fixed = {"image_size": base.image_size, "epochs": base.epochs, "seed": base.seed,
                 # Each trial's run records the device it trained on (the parent records the one asked for).
                 "device": self.training_device}
        objective = Objective(self.name, self.data, base, fixed, prune_on=self.settings.prune_on,
                              parent_run_id=parent_run_id, train_fn=train_fn)
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


def open_study(settings: Settings, data: Dataset, training_device: str,
               sampler: optuna.samplers.BaseSampler | None = None) -> OpenStudy:
    """Open Optuna's storage and create the study on `data`, or load it where it exists.

    The study's name (`--study_name`, else `<dataset>-<image_size>px` made a valid name,
    study.settings.default_study_name) is worked out here only.
    """
    storage = open_optuna_storage(settings.storage, tracking.end_stale_trial_run)
    name = settings.study_name or default_study_name(data.name, settings.base.image_size)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="maximize",
                                sampler=sampler, pruner=make_pruner(settings.pruner, settings.base.epochs))
    describe.describe_study(study, settings.prune_on)
    return OpenStudy(settings, study, name, data, training_device)


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
    """Start (or reopen) the study's parent run; (the run, whether it is new).

    A study has one parent run for all its processes; its id is kept in the study. The first
    process uses the run `mlflow run` created for it, if any, else starts one.
    """
    stored = study.user_attrs.get(contract.PARENT_RUN_ID_ATTR)
    if stored:
        try:
            if mlflow.MlflowClient().get_run(stored).info.lifecycle_stage == "active":
                return mlflow.start_run(run_id=stored), False
        except MlflowException:
            pass  # not in this tracking store (or deleted): the study gets a new parent run here
    if launcher_run:
        parent = mlflow.start_run(run_id=launcher_run)
        # `mlflow run` gives its run a random name; the study's is what users look for in the UI.
        mlflow.MlflowClient().update_run(launcher_run, name=study_name)
        experiment = mlflow.get_experiment(parent.info.experiment_id).name
        if experiment != study_name:
            print(f"note: mlflow run filed this study under experiment {experiment!r}; to file it under its own, "
                  f"run mlflow run . --experiment-name {study_name} ...", flush=True)
    else:
        # MLFLOW_EXPERIMENT_NAME, where set, picks the experiment as it does for any MLflow script.
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or study_name)
        parent = mlflow.start_run(run_name=study_name)
    study.set_user_attr(contract.PARENT_RUN_ID_ATTR, parent.info.run_id)
    return parent, True


def start_parent_run(opened: OpenStudy, launcher_run: str | None, tracking_uri: str) -> str:
    """Attach the study's parent run (left active) and record the study's settings on it; its id."""
    settings, study, data, base = opened.settings, opened.study, opened.data, opened.settings.base
    parent, new_parent = attach_parent_run(study, opened.name, launcher_run)
    parent_id = parent.info.run_id
    tracking.mark_model_training(parent.info.experiment_id)
    study.set_user_attr(contract.TRACKING_URI_ATTR, tracking_uri)
    study.set_user_attr(contract.CLASS_NAMES_ATTR, list(data.class_names))
    study.set_user_attr(contract.TRIALS_TARGET_ATTR, settings.trials)
    mlflow.set_tag(contract.STUDY_TAG, opened.name)
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
        raise


def _run_study(settings: Settings, argv: list[str], train_fn: TrainFn | None) -> StudyOutcome:
    quiet_optuna()
    started = time.perf_counter()
    training_device = training_device_for(settings.device)
    launcher_run = workers.take_launcher_run(os.environ)
    # The data before the stores: a command that stops at a bad image leaves no store behind.
    data = load_data(settings)
    tracking_uri = check_tracking_uri()
    opened = open_study(settings, data, training_device)
    study = opened.study
    check_fixed_settings(study, opened.name, fixed_settings(settings, opened.data))
    check_recorded_tracking_uri(study, tracking_uri)
    # Before presets are queued and the target is checked: a trial of a process that died must
    # neither count as present nor stay RUNNING (its MLflow run is ended by the storage's callback).
    fail_stale_trials(study)
    tracking.end_unwritten_trial_runs(study)  # runs a killed process's writer held
    queued = space.enqueue_presets(study, settings.base)
    already = count_finished(study)
    trials_at_start = len(study.trials)
    joining = count_running(study) > 0
    parent_id = start_parent_run(opened, launcher_run, tracking_uri)

    print(f"study {opened.name!r}: {already}/{settings.trials} trials finished; dataset {data.name} "
          f"({len(data.train)}/{len(data.val)}/{len(data.test)} at {data.image_size}px); storage "
          f"{masked(settings.storage)}; MLflow {masked(tracking_uri)} run {parent_id}"
          + (f"; queued presets {', '.join(queued)}" if queued else "")
          + (f"; {settings.workers} workers" if settings.workers > 1 else ""), flush=True)

    seeds = [workers.sampler_seed(settings.base.seed, trials_at_start, index, joining)
             for index in range(settings.workers)]
    if settings.workers == 1:
        study.sampler = optuna.samplers.TPESampler(seed=seeds[0])
        code = run_worker(study, opened.objective(parent_id, train_fn), settings.trials, label="")
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


def run_worker(study: optuna.Study, objective: Callable[[optuna.Trial], float], target: int, label: str,
               poll_s: float = 1.0) -> int:
    """Train trials until the study has `target` finished ones; 0, stopping.EXIT_CODE if stopped, 1 once
    as many trials in a row failed as were missing when this worker started.

    A trial starts only while finished + running trials are fewer than `target`, so workers of one
    command do not overshoot; while the others' running trials would reach it, this worker waits,
    failing trials whose process died so that their place is taken.
    """
    progress = ProgressPrinter(target, label=label)
    failures, allowed_failures = 0, max(target - count_finished(study), 1)
    try:
        while True:
            finished = count_finished(study)
            if finished >= target:
                return 0
            if finished + count_running(study) >= target:
                # The trials others run may be dead ones: fail those so that their place is taken.
                # (Before a trial of its own, study.optimize fails stale trials itself.)
                fail_stale_trials(study)
                time.sleep(poll_s)
                continue
            study.optimize(objective, n_trials=1, callbacks=[progress], catch=(Exception,), gc_after_trial=False)
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


def run_worker_process(settings: Settings, index: int) -> int:
    """One of `--workers` processes: the command created the stores; train trials of the study until done."""
    quiet_optuna()
    training_device = training_device_for(settings.device)
    sampler = optuna.samplers.TPESampler(seed=int(os.environ[workers.SAMPLER_SEED_ENV]))
    opened = open_study(settings, load_data(settings), training_device, sampler)
    objective = opened.objective(opened.study.user_attrs[contract.PARENT_RUN_ID_ATTR])
    return run_worker(opened.study, objective, settings.trials, label=f"w{index} ")
