"""The Optuna objective: sample a config, train it, log it, and report val accuracy.

Pruning never throws inside training: `PruningCallback` only stops it, so a pruned trial is
still measured at the epoch where it stopped and logs the same final metrics as a complete one.
A trial's run comes from the process's Tracker (study.tracking), whose writer writes a trained trial's
run while the next trial trains, and each epoch's metrics as the epoch ends.
The seed presets report to the pruner but are never pruned. The pruner is fed, per `prune_on`,
the val accuracy at the trial's own momentum or at the best grid momentum (the same weights with
better-settled statistics); the objective is always the val accuracy at the own momentum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import optuna

from gaplab.config import TrainConfig
from gaplab.data import Dataset
from gaplab.trainer import EpochCallback, TrainResult, train
from study import space, stopping
from study.contract import (
    BATCHNORM_ATTR,
    BN_MOMENTUM_ATTR,
    DEFAULT_PRUNE_ON,
    FAILED_BY_ERROR_ATTR,
    MODEL_URI_ATTR,
    MOMENTUM_CURVE_ATTR,
    PRESET_ATTR,
    PRUNE_ON_METRIC,
)
from study.pruning import read_epochs
from study.tracking import Tracker, TrialRun


@dataclass(frozen=True)
class Trainer:
    """What trains a trial's config, chosen once per command (study.run.main): the function (gaplab.trainer.train;
    tests inject stand-ins) and the program (a module run with `python -m`) that each `--workers` process runs,
    which trains with the same function, so that one worker and N train alike."""

    train: Callable[..., TrainResult] = train
    program: str = "study.run"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the trial fails and is never a best."""


class StopRequestCallback(keras.callbacks.Callback):
    """Raises KeyboardInterrupt at the next batch once a stop was requested (see study.stopping)."""

    # It reads no logs, so Keras may run it off the training thread: with a batch hook that is not
    # async-safe, Keras waits for every step's results (a device sync per step on a GPU). The
    # interrupt then surfaces at the next step: while a trial trains, this is where a stop is raised
    # (stopping.stops_between_batches).
    async_safe = True

    def on_train_batch_end(self, batch, logs=None):
        stopping.raise_if_requested()

    on_test_batch_end = on_train_batch_end


class PruningCallback(EpochCallback):
    """Reports a val accuracy to Optuna each epoch and stops training when the pruner says so.

    `prune_on` picks which (see `contract.PRUNE_ON_METRIC`). A model without batchnorm has no
    momentum, so its val accuracy stands for the best momentum's. At the epochs the pruner never
    reads (`read(epoch)` False, see `study.pruning`) the trainer skips the best momentum's val
    pass, and nothing is reported there in its place.
    """

    def __init__(self, trial: optuna.Trial, prunable: bool, prune_on: str = DEFAULT_PRUNE_ON,
                 read: Callable[[int], bool] = lambda epoch: True):
        super().__init__()
        self.trial = trial
        self.prunable = prunable
        self.metric = PRUNE_ON_METRIC[prune_on]
        self.read = read
        self.pruned_at: int | None = None

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if "val_accuracy" not in metrics or (self.metric not in metrics and not self.read(epoch)):
            return
        self.trial.report(metrics.get(self.metric, metrics["val_accuracy"]), epoch)
        if self.prunable and self.trial.should_prune():
            self.pruned_at = epoch
            self.model.stop_training = True


class Objective:
    """Callable for `study.optimize`; the data is loaded once by the caller and shared.

    `tracker` (study.tracking.Tracker) holds the trials' runs: they nest in its parent run. `study_params`
    are the params every trial's run logs that are the study's rather than the trial's (image size,
    epochs, seed, device). `train_fn` is the trainer (gaplab.trainer.train) and `suggest_fn` samples a
    trial's config (study.space.suggest); tests pass stand-ins, and study.bench passes them timed.
    `run_identity(trial)` gives a trial run's name and extra tags (default: `trial-NNN`, none; study.confirm
    names its runs by arm and seed).
    """

    def __init__(self, tracker: Tracker, data: Dataset, base: TrainConfig, study_params: dict[str, object],
                 prune_on: str = DEFAULT_PRUNE_ON, train_fn: Callable[..., TrainResult] | None = None,
                 suggest_fn: Callable[[optuna.Trial, TrainConfig], TrainConfig] | None = None,
                 run_identity: Callable[[optuna.Trial], tuple[str | None, dict[str, str]]] | None = None):
        self.tracker = tracker
        self.run_identity = run_identity or (lambda trial: (None, {}))
        self.train_fn = train_fn or train
        self.suggest_fn = suggest_fn or space.suggest
        self.data = data
        self.base = base
        self.study_params = study_params
        self.prune_on = prune_on

    def __call__(self, trial: optuna.Trial) -> float:
        stopping.raise_if_requested()
        config = self.suggest_fn(trial, self.base)
        preset = trial.user_attrs.get(PRESET_ATTR)
        params = {**self.study_params, **space.logged_params(config), **({PRESET_ATTR: preset} if preset else {})}
        run_name, tags = self.run_identity(trial)
        try:
            with self.tracker.trial(trial, params, run_name=run_name, tags=tags) as run:
                return self._train_and_log(trial, config, preset, run)
        except Exception as error:  # an interruption leaves the tracker as KeyboardInterrupt, not an Exception
            if not isinstance(error, optuna.TrialPruned):
                trial.set_user_attr(FAILED_BY_ERROR_ATTR, type(error).__name__)
            raise

    def _train_and_log(self, trial: optuna.Trial, config: TrainConfig, preset: str | None, run: TrialRun) -> float:
        read = read_epochs(trial.study.pruner, prunable=preset is None)
        pruning = PruningCallback(trial, prunable=preset is None, prune_on=self.prune_on, read=read)
        callbacks = [StopRequestCallback(), self.tracker.epoch_logger(run), pruning]
        # The grid's val passes are only paid for where the pruner reads them.
        with stopping.stops_between_batches():
            result = self.train_fn(config, self.data, callbacks=callbacks,
                                   best_momentum_at_epoch=read if self.prune_on == "best_momentum" else None)
        for name, value in result.final_metrics().items():
            trial.set_user_attr(name, value)
        if config.batchnorm:  # without batchnorm there is no momentum (see study.space)
            trial.set_user_attr(BN_MOMENTUM_ATTR, config.bn_momentum)
        trial.set_user_attr(BATCHNORM_ATTR, config.batchnorm)
        if result.momentum_curve is not None:
            trial.set_user_attr(MOMENTUM_CURVE_ATTR, result.momentum_curve.as_dict())
        pruned = pruning.pruned_at is not None
        diverged = (TrainingDiverged(f"loss became NaN or inf by epoch {result.epochs}; config {config}")
                    if result.diverged else None)
        state = "FAIL" if diverged else "PRUNED" if pruned else "COMPLETE"
        write = self.tracker.prepare_write(run, result, self.data, state,
                                           f"TrainingDiverged: {diverged}" if diverged else None,
                                           with_model=state == "COMPLETE")
        if write.model_uri:
            trial.set_user_attr(MODEL_URI_ATTR, write.model_uri)
        # Last, so that the run is handed over only with the outcome the trial ends in.
        self.tracker.hand_over(write)
        if diverged:
            raise diverged
        if pruned:
            raise optuna.TrialPruned(f"pruned at epoch {pruning.pruned_at}")
        return result.val_accuracy
