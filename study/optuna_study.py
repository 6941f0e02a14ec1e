"""Optuna's side of the study: its storage, its pruner, creating or loading the study, and the settings every
process of one study must share.

`OpenStudy` is one process's handle on the study: the Optuna study, the data and the device its trials train on,
the trainer (study.objective.Trainer), the study's lock, and the objective its trials run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import optuna

from gaplab.data import Dataset
from study import contract, describe, stopping
from study.commands import UsageError
from study.objective import Objective, Trainer
from study.settings import Settings, default_study_name
from study.storage import StudyLock, fail_orphaned_trials, fail_stale_trials, open_optuna_storage
from study.tracking import Tracker
from study.tracking.recovery import end_stale_trial_run


@dataclass(frozen=True)
class OpenStudy:
    """One process's handle on the study: the Optuna study, its name, the data, the device trials train on, the
    storage and the trainer."""

    settings: Settings
    study: optuna.Study
    name: str
    data: Dataset
    training_device: str
    storage: optuna.storages.RDBStorage
    trainer: Trainer

    def lock(self) -> StudyLock:
        """The study's lock (study.storage.StudyLock): one process at a time through set-up and trial starts."""
        return StudyLock(self.storage, self.name)

    def objective(self, tracker: Tracker, **options) -> Callable[[optuna.Trial], float]:
        """The Optuna objective, its runs held by `tracker`, also recording which process ran each trial
        (contract.WORKER_ATTR); `options` go to study.objective.Objective (study.confirm passes its fixed configs
        and run names)."""
        base = self.settings.base
        study_params = {"image_size": base.image_size, "epochs": base.epochs, "seed": base.seed,
                        # Each trial's run records the device it trained on (the parent records the one asked for).
                        "device": self.training_device}
        objective = Objective(tracker, self.data, base, study_params, prune_on=self.settings.prune_on,
                              train_fn=self.trainer.train, **options)
        worker = contract.worker_name()

        def run_trial(trial: optuna.Trial) -> float:
            trial.set_user_attr(contract.WORKER_ATTR, worker)
            return objective(trial)

        return run_trial

    def fail_dead_trials(self) -> None:
        """Fail the RUNNING trials of processes that died (a stale heartbeat, or none at all), ending their runs:
        their place is taken. The caller holds the study's lock."""
        fail_stale_trials(self.study)
        fail_orphaned_trials(self.study, self.storage, end_stale_trial_run)


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
    """Optuna's storage, whose heartbeats end a dead process's trial runs (study.tracking.recovery)."""
    return open_optuna_storage(settings.storage, end_stale_trial_run)


def open_study(settings: Settings, storage: optuna.storages.RDBStorage, data: Dataset, training_device: str,
               trainer: Trainer, sampler: optuna.samplers.BaseSampler | None = None) -> OpenStudy:
    """Create the study on `data`, or load it where it exists; the caller holds the study's lock."""
    name = study_name_of(settings, data)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="maximize",
                                sampler=sampler, pruner=make_pruner(settings.pruner, settings.base.epochs))
    describe.describe_study(study, settings.prune_on)
    return OpenStudy(settings, study, name, data, training_device, storage, trainer)


def shared_settings(settings: Settings, data: Dataset) -> dict[str, object]:
    """The settings every process of one study must share (contract.SHARED_SETTING_KEYS), and the data folder."""
    base = settings.base
    return {"dataset": data.name, "dataset_digest": data.digest, "image_size": base.image_size,
            "epochs": base.epochs, "seed": base.seed, "pruner": settings.pruner, "prune_on": settings.prune_on,
            "data_dir": settings.data_dir}


def check_shared_settings(study: optuna.Study, study_name: str, current: dict[str, object]) -> None:
    """Store the study's shared settings when new; UsageError if this run's differ from the stored ones.

    Only the settings the study stored are compared: a study begun before `pruner` and `prune_on`
    were shared resumes with any, and they are not added afterwards, since its earlier trials may
    have run with others (the report then says that what it pruned on is unknown).
    """
    stored = study.user_attrs.get(contract.SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(contract.SETTINGS_ATTR, current)
        return
    differing = [name for name in contract.SHARED_SETTING_KEYS if name in stored and stored[name] != current[name]]
    if differing:
        theirs = ", ".join(f"{name}={stored.get(name)!r}" for name in differing)
        ours = ", ".join(f"{name}={current[name]!r}" for name in differing)
        raise UsageError(f"study {study_name!r} was run with {theirs} (data_dir={stored.get('data_dir')!r}); this "
                         f"run has {ours}. Rerun with the study's settings, or start a new study with another "
                         "--study_name.")


@contextlib.contextmanager
def trial_start(lock: StudyLock) -> Iterator[contextlib.ExitStack]:
    """A trial start: the study's lock (`lock`), then signals deferred; the caller queues and creates the trial
    within it (`train_one_trial`), and it ends once the trial has its heartbeat, or on leaving the block.

    Waiting for the lock can take long (another process's set-up or summary): a signal there stops at once. Once
    it is held, a signal takes effect when the start is done: one cut short between Optuna's creating the trial
    and its first heartbeat would leave the trial RUNNING.
    """
    with contextlib.ExitStack() as start:
        start.enter_context(lock)
        start.enter_context(stopping.interrupts_deferred())
        yield start


def train_one_trial(start: contextlib.ExitStack, study: optuna.Study, storage: optuna.storages.RDBStorage,
                    objective: Callable[[optuna.Trial], float], callbacks: list[Callable]) -> None:
    """One trial of `study` within `start` (`trial_start`): Optuna creates it (or takes the queued one) with the
    lock held, and `ending_the_start` ends the start once its heartbeat is recorded. A trial's error fails it,
    not the caller (its run keeps the error)."""
    study.optimize(ending_the_start(start, storage, objective), n_trials=1, callbacks=callbacks,
                   catch=(Exception,), gc_after_trial=False)


def ending_the_start(start: contextlib.ExitStack, storage: optuna.storages.RDBStorage,
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
