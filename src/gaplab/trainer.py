"""The trainer: fit one config on one dataset and measure both parts of the train/val gap.

    result = train(TrainConfig(bn_momentum=0.99), generate_shapes(), callbacks=[...])
    result.gap == result.mode_gap + result.generalization_gap

* `gap` = train_accuracy (fit's running figure at the last epoch, the seed's definition)
  − val_accuracy.
* `mode_gap` = train_accuracy − train_eval_accuracy (the training split in inference mode).
  Stale BatchNormalization moving statistics show up here.
* `generalization_gap` = train_eval_accuracy − val_accuracy: overfitting proper.
* `val_accuracy_recalibrated`: val accuracy once BN statistics are re-estimated exactly (PreciseBN)
  over a fixed stratified subset of the training split of val's size
  (`gaplab.momentum.train_eval_subset`, drawn once per dataset and seed).
* `momentum_curve`: with `config.momentum_grid`, the same model at every grid momentum on val,
  test and that subset; `best_momentum` and `val_accuracy_at_best_momentum` come from it (val
  chooses; test only scores). The final `train_eval_accuracy` (and so `mode_gap`) is on the whole
  training split. With `best_momentum_at_epoch`, the logs of the epochs it answers True for carry
  them too: at the last epoch from a val pass at every grid momentum (the curve's val, not
  measured again), at earlier ones from the few passes a climb from the previous epoch's best
  needs (`best_momentum_search`, see `gaplab.momentum.BestMomentumValidation`), which is why the
  caller says where it needs them.

Every prediction uses one batch size per dataset, `gaplab.metrics.eval_batch_size(len(val))`, so
the val split fills its batches and each model keeps one compiled inference program.

The trainer knows nothing of tracking or pruning: callers pass Keras callbacks, and
`EpochCallback` gives them per-epoch metrics under the names used everywhere
(`train_loss`, `train_accuracy`, `val_loss`, `val_accuracy`). A callback that sets
`model.stop_training` ends training early; the result is still measured at that epoch.

One compiled model per architecture is reused across calls (`gaplab.compiled.CompiledModels`;
pass your own as `compiled_models`), so a result keeps a copy of its trained model's variables
(`TrainResult.trained_values`) and builds `result.model` from them on first read. Measured side by
side (`benchmarks/result_model.py`, 32 px generated data, 420 training images, depth 3, 2 epochs,
medians of 6 calls on the shared 2-core CPU), as shares of one train() call (8.9 s on TensorFlow,
3.7 s on JAX):

                                                         TensorFlow       JAX
    copying the variables (0.05 MiB), every call         0.0008 (7 ms)    0.0004 (1.4 ms)
    building a model holding them, where it is read      0.017 (151 ms)   0.011 (40 ms)
    that model's first prediction (a new trace)          0.029 (261 ms)   0.033 (122 ms)

Building the model eagerly would charge its 0.01-0.02 to every call, the runs whose model nobody
reads (pruned trials) included; a view of the shared model costs nothing, but it holds a later
run's weights once another training of its architecture starts.
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np

from gaplab.compiled import CompiledModels, default_models, enable_compilation_cache, variable_values
from gaplab.config import ConfigError, TrainConfig
from gaplab.curve import MomentumCurve
from gaplab.data import Dataset
from gaplab.metrics import (
    accuracy,
    confusion_matrix,
    eval_batch_size,
    predict_classes,
    predict_probabilities,
    recalibrated_batchnorm,
)
from gaplab.model import batchnorm_layers, build_model, portable_from_weights, to_portable
from gaplab.momentum import PER_EPOCH_METRICS, BestMomentumValidation, grid_layers, measure_curve, train_eval_subset

EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
_KERAS_NAMES = {"loss": "train_loss", "accuracy": "train_accuracy", "val_loss": "val_loss",
                "val_accuracy": "val_accuracy", **{name: name for name in PER_EPOCH_METRICS}}


def epoch_metrics(logs: dict | None) -> dict[str, float]:
    """Keras epoch logs under the project's metric names."""
    return {ours: float(logs[theirs]) for theirs, ours in _KERAS_NAMES.items() if logs and theirs in logs}


class EpochCallback(keras.callbacks.Callback):
    """Base for per-epoch hooks: override `on_epoch(epoch, metrics)`; epochs count from 1."""

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def on_epoch_end(self, epoch, logs=None):
        self.on_epoch(epoch + 1, epoch_metrics(logs))


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._started)


class FullBatches(keras.utils.PyDataset):
    """The training split as shuffled full batches: every step has the same shape, so one program.

    Each epoch draws a new permutation and cuts it into len(x) // batch_size batches; the fewer
    than batch_size images left over sit out that epoch only (a different set each epoch). A
    ragged last batch would be a second compiled train step per (architecture, batch size), and
    on a GPU that compile costs more than the few images it would train on. A split smaller than
    batch_size is one batch of all of it.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
        super().__init__()
        self.x, self.y = x, y
        self.batch_size = max(1, min(batch_size, len(x)))
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(x))

    def __len__(self) -> int:
        return len(self.x) // self.batch_size

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        picked = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.x[picked], self.y[picked]

    def on_epoch_end(self) -> None:
        self._order = self._rng.permutation(len(self.x))


class _Validation(keras.callbacks.Callback):
    """Adds val_loss and val_accuracy to each epoch's logs, ahead of the caller's callbacks.

    It runs the model's predict program, padded to the one evaluation batch size, which the
    measurements after fit use too; Keras's own validation would compile a test step for the
    validation split's ragged shape on top. The loss is Keras's sparse categorical crossentropy
    on probabilities (clipped to [1e-7, 1 - 1e-7]). The last epoch's predicted classes are kept:
    they are the final model's val predictions, which the measurements after fit reuse.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int):
        super().__init__()
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.seconds = 0.0
        self.predicted: np.ndarray | None = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not len(self.y):
            return
        started = time.perf_counter()
        probabilities = predict_probabilities(self.model, self.x, self.batch_size).astype(np.float64)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        epsilon = keras.config.epsilon()
        picked = np.clip(probabilities[np.arange(len(self.y)), self.y], epsilon, 1 - epsilon)
        logs["val_loss"] = float(-np.mean(np.log(picked)))
        self.predicted = np.argmax(probabilities, axis=1).astype(np.int32)
        logs["val_accuracy"] = accuracy(self.predicted, self.y)
        self.seconds += time.perf_counter() - started


# (dataset digest, seed) -> the training split's train-eval subset as (images, labels): drawn once
# per dataset in a process, not per trial. A few entries: a process studies one dataset or a few.
_train_eval_subsets: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
_SUBSETS_KEPT = 4


def _train_eval_subset(data: Dataset, seed: int) -> tuple[np.ndarray, np.ndarray]:
    key = (data.digest, seed)
    if key not in _train_eval_subsets:
        if len(_train_eval_subsets) >= _SUBSETS_KEPT:
            _train_eval_subsets.pop(next(iter(_train_eval_subsets)))
        picked = train_eval_subset(data.train.y, len(data.val.y), seed)
        whole = len(picked) == len(data.train.y)
        _train_eval_subsets[key] = ((data.train.x, data.train.y) if whole
                                    else (data.train.x[picked], data.train.y[picked]))
    return _train_eval_subsets[key]


@dataclass
class TrainResult:
    """Everything one training run measured. Accuracies are NaN when training diverged."""

    config: TrainConfig
    class_names: tuple[str, ...]
    history: dict[str, list[float]]
    epochs: int
    steps: int
    diverged: bool
    stopped_early: bool
    train_accuracy: float
    train_eval_accuracy: float
    val_accuracy: float
    test_accuracy: float
    val_accuracy_recalibrated: float
    confusion_val: np.ndarray
    confusion_test: np.ndarray
    timings: dict[str, float]
    # None without batchnorm, with an empty momentum_grid, or when training diverged.
    momentum_curve: MomentumCurve | None = None
    # Every variable of the trained model as it ended (see `model`); None only for results built by hand.
    trained_values: list[np.ndarray] | None = field(default=None, repr=False, compare=False)
    # Its weights, in `get_weights()` order: the same arrays as in `trained_values`, what a stock-Keras
    # copy holds (`portable_model`). None for results built by hand.
    trained_weights: list[np.ndarray] | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def model(self) -> keras.Model | None:
        """The trained model, built on first read from `trained_values` (uncompiled; compile it to fit or evaluate).

        A copy: `train()` retrains one compiled model per architecture, so the run's own model
        holds a later run's weights once another training of that architecture starts. It has the
        trainer's layers (a momentum grid's statistics included); `gaplab.model.to_portable` makes
        a stock-Keras copy.
        """
        if self.trained_values is None:
            return None
        model = build_model(self.config, len(self.class_names), runtime_hyperparameters=True)
        for variable, value in zip(model.variables, self.trained_values, strict=True):
            variable.assign(value)
        return model

    def portable_model(self) -> keras.Model | None:
        """A stock-Keras copy of the trained model (`gaplab.model.to_portable`), loadable without gaplab.

        Built straight from `trained_weights`, without building `model` first (a model build costs
        about 0.02 of a train() call on TensorFlow at 32 px, see the module docstring).
        """
        if self.trained_weights is not None:
            return portable_from_weights(self.config, len(self.class_names), self.trained_weights)
        return None if self.model is None else to_portable(self.model, self.config, len(self.class_names))

    @property
    def gap(self) -> float:
        return self.train_accuracy - self.val_accuracy

    @property
    def mode_gap(self) -> float:
        return self.train_accuracy - self.train_eval_accuracy

    @property
    def generalization_gap(self) -> float:
        return self.train_eval_accuracy - self.val_accuracy

    def final_metrics(self) -> dict[str, float]:
        """The run's summary numbers, under the names the study logs."""
        return {
            "train_accuracy": self.train_accuracy,
            "train_eval_accuracy": self.train_eval_accuracy,
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "gap": self.gap,
            "mode_gap": self.mode_gap,
            "generalization_gap": self.generalization_gap,
            "val_accuracy_recalibrated": self.val_accuracy_recalibrated,
            "steps": float(self.steps),
            "epochs_run": float(self.epochs),
            "best_momentum": self.momentum_curve.best_momentum if self.momentum_curve else float("nan"),
            "val_accuracy_at_best_momentum": (self.momentum_curve.val_accuracy_at_best_momentum
                                              if self.momentum_curve else float("nan")),
        }


@dataclass
class _Monitors:
    """The callbacks train() runs ahead of the caller's, in the order fit calls them."""

    timer: _EpochTimer
    validation: _Validation
    terminate_on_nan: keras.callbacks.TerminateOnNaN
    # After validation (it reads val_accuracy) and before the caller's callbacks (they read what
    # it adds to each epoch's logs). None without a momentum grid or without best_momentum_at_epoch.
    grid: BestMomentumValidation | None

    def callbacks(self) -> list[keras.callbacks.Callback]:
        # The timer's epochs end before validation: epoch times are training alone.
        return [self.timer, self.validation, self.terminate_on_nan, *([self.grid] if self.grid else [])]


@dataclass
class _Fitted:
    """What fit left: the history under the project's names and whether training diverged."""

    history: dict[str, list[float]]
    epochs: int
    steps: int
    diverged: bool


@dataclass
class _Measured:
    """The trained model's accuracies and confusions; all NaN (and no curve) when training diverged."""

    train_accuracy: float
    train_eval_accuracy: float
    val_accuracy: float
    test_accuracy: float
    val_accuracy_recalibrated: float
    confusion_val: np.ndarray
    confusion_test: np.ndarray
    curve: MomentumCurve | None = None
    curve_seconds: float = 0.0

    @classmethod
    def diverged(cls, num_classes: int) -> _Measured:
        nan = float("nan")
        empty = np.zeros((num_classes, num_classes), dtype=np.int64)
        return cls(nan, nan, nan, nan, nan, empty, empty)


class _Stopwatch:
    """Seconds per named phase: `with stopwatch("fit_seconds"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        started = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - started


def train(
    config: TrainConfig,
    data: Dataset,
    callbacks: list[keras.callbacks.Callback] | tuple = (),
    verbose: int = 0,
    best_momentum_at_epoch: Callable[[int], bool] | None = None,
    compiled_models: CompiledModels | None = None,
    best_momentum_search: str = "climb",
) -> TrainResult:
    """Train `config` on `data` and measure the gap; see the module docstring for the metrics.

    `best_momentum_at_epoch(epoch)` (epochs from 1): whether that epoch's logs need the best
    grid momentum's val accuracy; None: no epoch does. `best_momentum_search`: how it is found
    before the last epoch, "climb" or "full" (every momentum; see
    `gaplab.momentum.BestMomentumValidation`). The model is prepared by `compiled_models`
    (default: `gaplab.compiled.default_models`).
    """
    _check(config, data)
    stopwatch = _Stopwatch()
    with stopwatch("data_seconds"):
        batches = _seeded_batches(config, data)
    with stopwatch("build_seconds"):
        model = (default_models if compiled_models is None else compiled_models).prepared(config, data.num_classes)
    eval_batch = eval_batch_size(len(data.val.y))
    monitors = _monitors(model, config, data, eval_batch, best_momentum_at_epoch, best_momentum_search)
    with stopwatch("fit_seconds"):
        history = _fit(model, batches, config, monitors.callbacks() + list(callbacks), verbose)
    fitted = _outcome(model, history)
    with stopwatch("eval_seconds"):
        measured = _measure(model, config, data, fitted, monitors, eval_batch)
    with stopwatch("copy_seconds"):
        trained_values, trained_weights = _trained_copy(model)
    return TrainResult(
        config=config,
        class_names=data.class_names,
        history=fitted.history,
        epochs=fitted.epochs,
        steps=fitted.steps,
        diverged=fitted.diverged,
        stopped_early=fitted.epochs < config.epochs and not fitted.diverged,
        train_accuracy=measured.train_accuracy,
        train_eval_accuracy=measured.train_eval_accuracy,
        val_accuracy=measured.val_accuracy,
        test_accuracy=measured.test_accuracy,
        val_accuracy_recalibrated=measured.val_accuracy_recalibrated,
        confusion_val=measured.confusion_val,
        confusion_test=measured.confusion_test,
        timings=_timings(stopwatch.seconds, monitors, measured),
        momentum_curve=measured.curve,
        trained_values=trained_values,
        trained_weights=trained_weights,
    )


def _check(config: TrainConfig, data: Dataset) -> None:
    if config.image_size != data.image_size:
        raise ConfigError(
            f"image_size={config.image_size} does not match the data's {data.image_size} px images; "
            "load the data at the config's image_size."
        )
    config.validate()


def _seeded_batches(config: TrainConfig, data: Dataset) -> FullBatches:
    enable_compilation_cache()
    keras.utils.set_random_seed(config.seed)
    return FullBatches(data.train.x, data.train.y, config.batch_size, config.seed)


def _monitors(model: keras.Model, config: TrainConfig, data: Dataset, eval_batch: int,
              best_momentum_at_epoch: Callable[[int], bool] | None, best_momentum_search: str) -> _Monitors:
    terminate_on_nan = keras.callbacks.TerminateOnNaN()
    # Let Keras check each step's loss off the training thread (on backends that allow it, JAX): a
    # batch hook that is not async-safe makes the loop wait for every step, a sync per step on a GPU.
    terminate_on_nan.async_safe = True
    grid = (BestMomentumValidation(config.bn_momentum, config.momentum_grid, data.val.x, data.val.y,
                                   at_epoch=best_momentum_at_epoch, final_epoch=config.epochs,
                                   search=best_momentum_search, batch_size=eval_batch)
            if grid_layers(model) and best_momentum_at_epoch is not None else None)
    return _Monitors(_EpochTimer(), _Validation(data.val.x, data.val.y, eval_batch), terminate_on_nan, grid)


def _fit(model: keras.Model, batches: FullBatches, config: TrainConfig,
         callbacks: list[keras.callbacks.Callback], verbose: int) -> keras.callbacks.History:
    return model.fit(
        batches,
        epochs=config.epochs,
        # FullBatches shuffles, from the config's seed; Keras's own shuffle of batch order is not seeded.
        shuffle=False,
        verbose=verbose,
        callbacks=callbacks,
    )


def _outcome(model: keras.Model, fitted: keras.callbacks.History) -> _Fitted:
    history = {ours: [float(v) for v in fitted.history.get(theirs, [])] for theirs, ours in _KERAS_NAMES.items()
               if theirs in fitted.history or ours in EPOCH_METRICS}
    diverged = not all(math.isfinite(v) for v in history["train_loss"]) or not all(
        np.all(np.isfinite(w)) for w in model.get_weights()
    )
    return _Fitted(history, len(history["train_loss"]), int(model.optimizer.iterations.numpy()), diverged)


def _measure(model: keras.Model, config: TrainConfig, data: Dataset, fitted: _Fitted, monitors: _Monitors,
             eval_batch: int) -> _Measured:
    """Accuracies on every split at the trained weights, PreciseBN's, and the momentum curve."""
    if fitted.diverged:
        return _Measured.diverged(data.num_classes)
    train_eval = accuracy(predict_classes(model, data.train.x, eval_batch), data.train.y)
    # The last validation pass ran at these very weights and statistics: callbacks only read
    # the model (the grid's pass restores the statistics it swaps in).
    val_predicted = (monitors.validation.predicted if monitors.validation.predicted is not None
                     else predict_classes(model, data.val.x, eval_batch))
    test_predicted = predict_classes(model, data.test.x, eval_batch)
    measured = _Measured(
        train_accuracy=fitted.history["train_accuracy"][-1],
        train_eval_accuracy=train_eval,
        val_accuracy=accuracy(val_predicted, data.val.y),
        test_accuracy=accuracy(test_predicted, data.test.y),
        val_accuracy_recalibrated=float("nan"),
        confusion_val=confusion_matrix(val_predicted, data.val.y, data.num_classes),
        confusion_test=confusion_matrix(test_predicted, data.test.y, data.num_classes),
    )
    tracks_grid = bool(grid_layers(model))
    if not batchnorm_layers(model):
        measured.val_accuracy_recalibrated = measured.val_accuracy
        return measured
    # Recalibration and the curve's train-eval points share one subset: a pass per BN layer
    # over the whole split cost 3-4 val passes per layer at the default 70/15/15 split.
    subset = _train_eval_subset(data, config.seed)
    with recalibrated_batchnorm(model, subset[0], eval_batch):
        measured.val_accuracy_recalibrated = accuracy(predict_classes(model, data.val.x, eval_batch), data.val.y)
        if tracks_grid:
            train_eval_recal = accuracy(predict_classes(model, subset[0], eval_batch), subset[1])
            # PreciseBN scored on test too: the report compares it with the momenta on held-out images.
            test_recal_predicted = predict_classes(model, data.test.x, eval_batch)
    if tracks_grid:
        started = time.perf_counter()
        last_pass = monitors.grid.last if monitors.grid else None
        # Val chooses the best momentum; test accuracy at each momentum is for scoring that choice.
        measured.curve = measure_curve(
            model, config.bn_momentum, config.momentum_grid,
            splits={"train": subset, "val": (data.val.x, data.val.y), "test": (data.test.x, data.test.y)},
            own={"train": train_eval if len(subset[1]) == len(data.train.y) else None,
                 "val": measured.val_accuracy, "test": measured.test_accuracy},
            train_accuracy=measured.train_accuracy,
            recalibrated=(train_eval_recal, measured.val_accuracy_recalibrated),
            val_by_momentum=last_pass[1:] if last_pass and last_pass[0] == fitted.epochs else None,
            batch_size=eval_batch, own_test_predicted=test_predicted,
            recalibrated_test_predicted=test_recal_predicted)
        measured.curve_seconds = time.perf_counter() - started
    return measured


def _trained_copy(model: keras.Model) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The model's variables as NumPy arrays, and its weights as the same arrays in `get_weights()` order."""
    trained_values = variable_values(model)
    value_of = {id(variable): value for variable, value in zip(model.variables, trained_values)}
    return trained_values, [value_of[id(weight)] for weight in model.weights]


def _timings(phases: dict[str, float], monitors: _Monitors, measured: _Measured) -> dict[str, float]:
    epoch_seconds = monitors.timer.seconds
    grid = monitors.grid
    return {
        "data_seconds": phases["data_seconds"],
        "build_seconds": phases["build_seconds"],
        "fit_seconds": phases["fit_seconds"],
        "eval_seconds": phases["eval_seconds"],
        # Within fit_seconds: the per-epoch validation passes.
        "validation_seconds": monitors.validation.seconds,
        "first_epoch_seconds": epoch_seconds[0] if epoch_seconds else float("nan"),
        # Training alone, without validation. The first epoch includes tracing and compiling the
        # train step; later ones do not.
        "steady_epoch_seconds": statistics.median(epoch_seconds[1:]) if len(epoch_seconds) > 1 else float("nan"),
        "epochs_seconds": sum(epoch_seconds),
        # Part of fit_seconds: the per-epoch val passes at the grid's momenta.
        "grid_validation_seconds": sum(grid.seconds) if grid else 0.0,
        # How many val passes those were (a climb measures a few momenta, the last epoch every one).
        "grid_validation_passes": float(sum(grid.points_measured)) if grid else 0.0,
        # Part of eval_seconds: the curve's passes after training.
        "momentum_curve_seconds": measured.curve_seconds,
        # Copying the trained model's variables into the result (see `TrainResult.model`).
        "copy_seconds": phases["copy_seconds"],
    }
