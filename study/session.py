"""The command's story: open the study, train until the target, close.

`python -m study.run` checks its flags (study.run), then `run_study` here:

* open: loads the data once (a bad image is found before either store is touched), checks MLflow's
  tracking store and opens Optuna's storage; then, holding the study's lock (study.storage.StudyLock),
  so that any number of processes starting together make one study: creates or resumes the study
  (study.optuna_study), refuses a resume whose shared settings differ, fails the trials of processes
  that died, and opens the study's one parent run through this process's Tracker (study.tracking);
* train until the target: in this process (`run_worker`) or in `--workers` processes (study.workers),
  each of which opens the same study and runs the same loop (`run_worker_process`); each trial starts
  under the lock, where the count to `--trials` is decided and the next seed preset queued;
* confirm: then, in each process that trained, `--confirm K` retrains the answer on K fresh seeds
  (study.confirm);
* close: the end-of-study summary, and the Tracker ends the parent run; the command's `StudyOutcome`.

The Tracker ends every MLflow run of the process, also where a stop request or an error ends the command.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna

from gaplab import device
from gaplab.data import DEFAULT_IMAGES, Dataset, generate_shapes, load_image_folder
from study import confirm, contract, space, stopping, workers
from study.commands import fail
from study.contract import TrialCounts
from study.objective import Trainer
from study.optuna_study import (
    OpenStudy,
    check_shared_settings,
    open_storage,
    open_study,
    quiet_optuna,
    shared_settings,
    study_name_of,
    train_one_trial,
    trial_start,
)
from study.progress import ProgressPrinter
from study.settings import Settings
from study.storage import StudyLock, check_recorded_tracking_uri, check_tracking_uri, heartbeat_grace, masked
from study.tracking import Ending, Tracker


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

    @classmethod
    def of(cls, opened: OpenStudy, parent_run_id: str, exit_code: int) -> StudyOutcome:
        counts = TrialCounts.of(opened.study)
        return cls(opened.name, parent_run_id, finished=counts.finished, pruned=counts.pruned, failed=counts.failed,
                   exit_code=exit_code)


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
           trainer: Trainer, tracker: Tracker, launcher_run: str | None, tracking_uri: str) -> Start:
    """Create or load the study, check it, fail the trials of processes that died, open the parent run.
    The caller holds the study's lock, so that processes starting together make one study and one parent."""
    opened = open_study(settings, storage, data, training_device, trainer)
    study = opened.study
    check_shared_settings(study, opened.name, shared_settings(settings, opened.data))
    check_recorded_tracking_uri(study, tracking_uri)
    # Before the target is checked: a trial of a process that died must neither count as present nor stay
    # RUNNING (its MLflow run is ended by the storage's callback).
    opened.fail_dead_trials()
    tracker.recover(study)  # runs a killed process's writer held
    start_number = int(study.user_attrs.get(contract.COMMANDS_STARTED_ATTR, 0))
    study.set_user_attr(contract.COMMANDS_STARTED_ATTR, start_number + 1)
    first_trial = len(study.trials)
    counts = TrialCounts.of(study)
    study.set_user_attr(contract.TRACKING_URI_ATTR, tracking_uri)
    study.set_user_attr(contract.CLASS_NAMES_ATTR, list(data.class_names))
    study.set_user_attr(contract.TRIALS_TARGET_ATTR, settings.trials)
    parent_id = tracker.open_parent(study, launcher_run, parent_params(settings, opened), data)
    to_train = max(settings.trials - counts.finished - counts.running, 0)
    presets = space.presets_to_train(study)[:to_train]
    return Start(opened, parent_id, first_trial, start_number, counts.finished, counts.running > 0, to_train,
                 presets)


def parent_params(settings: Settings, opened: OpenStudy) -> dict[str, object]:
    """The study's settings, data and backend, as the parent run logs them."""
    base, data = settings.base, opened.data
    return {"trials": settings.trials, "data_dir": settings.data_dir, "study_name": opened.name,
            "storage": masked(settings.storage), "pruner": settings.pruner, "prune_on": settings.prune_on,
            "image_size": base.image_size, "epochs": base.epochs, "seed": base.seed,
            "dataset": data.name, "dataset_size": data.size, "dataset_digest": data.digest,
            "dataset_source": data.source, "backend": device.backend(),
            "backend_version": device.backend_version(), "device": settings.device}


def run_study(settings: Settings, argv: list[str], trainer: Trainer | None = None) -> StudyOutcome:
    """The command: open the study, train until `--trials` trials are finished, close.

    `trainer` (default: gaplab.trainer.train, run by `python -m study.run` in each worker) is what every
    process trains with. A stop request during the trials gives the exit code stopping.EXIT_CODE; one before
    or after them ends this process's MLflow runs KILLED (the Tracker) and is raised again.
    """
    trainer = trainer or Trainer()
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
    with Tracker(study_name_of(settings, data)) as tracker:
        # Processes started together make one study, one parent run and one queue. A signal during the set-up
        # takes effect once it is done, so that it is done whole.
        with StudyLock(storage, tracker.study_name), stopping.interrupts_deferred():
            start = set_up(settings, storage, data, training_device, trainer, tracker, launcher_run, tracking_uri)
        announce(start, settings, tracking_uri)
        code = train_until_target(start, settings, argv, tracker)
        return close(start, settings, tracker, code, time.perf_counter() - started)


def announce(start: Start, settings: Settings, tracking_uri: str) -> None:
    """The command's first line: the study, its data, its stores, and what this command trains."""
    data = start.opened.data
    print(f"study {start.opened.name!r}: {start.finished}/{settings.trials} trials finished; dataset {data.name} "
          f"({len(data.train)}/{len(data.val)}/{len(data.test)} at {data.image_size}px); storage "
          f"{masked(settings.storage)}; MLflow {masked(tracking_uri)} run {start.parent_id}; "
          + (f"to train: {start.to_train} trial(s)" + (f", first the preset(s) {', '.join(start.presets)}"
                                                       if start.presets else "")
             if start.to_train else "nothing to train")
          + (f"; {settings.workers} workers" if settings.workers > 1 else ""), flush=True)


def train_until_target(start: Start, settings: Settings, argv: list[str], tracker: Tracker) -> int:
    """Train in this process, or in `--workers` processes, until the study has `--trials` finished trials, then
    the confirmation (`--confirm K`, study.confirm: each worker process runs it after its trials); 0,
    stopping.EXIT_CODE where stopped, 1 where trials kept failing."""
    opened = start.opened
    seeds = [workers.sampler_seed(settings.base.seed, start.first_trial, index, start.joining, start.start_number)
             for index in range(settings.workers)]
    if settings.workers == 1:
        opened.study.sampler = optuna.samplers.TPESampler(seed=seeds[0])
        code = run_worker(opened, opened.objective(tracker), settings.trials, label="")
        return code or confirm.run_confirmation(opened, tracker.parent_run_id, settings.confirm)
    interrupted, deaths = workers.run_workers(argv, seeds, settings.gpus, _trial_of_worker(opened.study),
                                              program=opened.trainer.program)
    if deaths and not interrupted:
        print(f"{len(deaths)} worker(s) died; the others went on.", file=sys.stderr)
    return stopping.EXIT_CODE if interrupted else 0


def close(start: Start, settings: Settings, tracker: Tracker, code: int, seconds: float) -> StudyOutcome:
    """Describe the study on its parent run, summarize it where it reached `--trials`, and end the runs."""
    opened, parent_id = start.opened, start.parent_id
    if code == stopping.EXIT_CODE:
        print("\ninterrupted: the running trials are marked FAIL and their MLflow runs KILLED; "
              "rerun the same command to resume.", file=sys.stderr)
        tracker.describe(opened.study, ending="interrupted")
        tracker.close(Ending.INTERRUPTED)
        return StudyOutcome.of(opened, parent_id, code)
    done = TrialCounts.of(opened.study).finished
    if done < settings.trials:
        fail(f"the study has {done}/{settings.trials} finished trials and no worker is left; see the errors above "
             "and the FAILED runs' 'error' tag in MLflow, then rerun to resume.")
        tracker.describe(opened.study, ending="incomplete")
        tracker.close(Ending.FAILED)
        return StudyOutcome.of(opened, parent_id, 1)
    # One process at a time: commands that end together register the best model once.
    tracker.summarize(opened.study, {"study_seconds": seconds}, holding=opened.lock())
    tracker.close(Ending.WRITTEN)
    return StudyOutcome.of(opened, parent_id, 0 if code == 0 else 1)


def _trial_of_worker(study: optuna.Study) -> Callable[[str], str]:
    """For study.workers' death reports: the trial the worker `host:pid` was running, and what becomes of it."""

    def trial_of(worker: str) -> str:
        mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(contract.WORKER_ATTR) == worker]
        if not mine:
            return "no trial (it had not started one)"
        return (f"trial {mine[-1].number}, which another worker fails after {heartbeat_grace()} s "
                "without heartbeat and replaces")

    return trial_of


def run_worker(opened: OpenStudy, objective: Callable[[optuna.Trial], float], target: int, label: str,
               poll_s: float = 1.0, fill_queue: Callable[[OpenStudy], None] | None = None) -> int:
    """Train trials until the study has `target` finished ones; 0, stopping.EXIT_CODE if stopped, 1 once
    as many trials in a row failed as were missing when this worker started.

    Each trial starts with the study's lock held (`OpenStudy.lock`): the finished and running trials are
    counted, and only while they are fewer than `target` is the queue filled (`fill_queue`, by default the
    next seed preset, study.space) and the trial created, so that any number of processes on the study
    stop at exactly `target`. While the others' running trials would reach it, this worker waits, failing
    trials whose process died so that their place is taken. `fill_queue` lets another study (e.g. one of
    enqueued fixed trainings) run the same loop.

    A stop request ends the trial running (study.tracking.Tracker.trial ends its run) and gives
    stopping.EXIT_CODE; the caller's Tracker ends the runs still open.
    """
    study = opened.study
    progress = ProgressPrinter(target, label=label)
    failures, allowed_failures = 0, max(target - TrialCounts.of(study).finished, 1)
    try:
        while True:
            stopping.raise_if_requested()
            with trial_start(opened.lock()) as start:
                # Trials others run may be dead ones: fail those so that their place is taken.
                opened.fail_dead_trials()
                counts = TrialCounts.of(study)
                if counts.finished >= target:
                    return 0
                room = counts.finished + counts.running < target
                if room:
                    (fill_queue or _queue_next_preset)(opened)
                    train_one_trial(start, study, opened.storage, objective, [progress])
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
        return stopping.EXIT_CODE


def _queue_next_preset(opened: OpenStudy) -> None:
    space.enqueue_next_preset(opened.study, opened.settings.base)




def run_worker_process(settings: Settings, index: int, trainer: Trainer | None = None) -> int:
    """One of `--workers` processes: the command created the stores; train trials of the study until done."""
    quiet_optuna()
    training_device = training_device_for(settings.device)
    sampler = optuna.samplers.TPESampler(seed=int(os.environ[workers.SAMPLER_SEED_ENV]))
    data = load_data(settings)
    storage = open_storage(settings)
    with StudyLock(storage, study_name_of(settings, data)):
        opened = open_study(settings, storage, data, training_device, trainer or Trainer(), sampler)
    # The parent run is the command's: trial runs nest in it, and it is not ended here.
    with Tracker(opened.name, parent_run_id=opened.study.user_attrs[contract.PARENT_RUN_ID_ATTR]) as tracker:
        code = run_worker(opened, opened.objective(tracker), settings.trials, label=f"w{index} ")
    return code or confirm.run_confirmation(opened, tracker.parent_run_id, settings.confirm, label=f"w{index} ")
