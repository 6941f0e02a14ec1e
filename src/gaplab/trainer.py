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
    if config.image_size != data.image_size:
        raise ConfigError(
            f"image_size={config.image_size} does not match the data's {data.image_size} px images; "
            "load the data at the config's image_size."
        )
    config.validate()

    started = time.perf_counter()
    enable_compilation_cache()
    keras.utils.set_random_seed(config.seed)
    x_train, y_train = data.train.x, data.train.y
    batches = FullBatches(x_train, y_train, config.batch_size, config.seed)
    data_seconds = time.perf_counter() - started

    started = time.perf_counter()
    model = (default_models if compiled_models is None else compiled_models).prepared(config, data.num_classes)
    build_seconds = time.perf_counter() - started

    timer = _EpochTimer()
    eval_batch = eval_batch_size(len(data.val.y))
    validation = _Validation(data.val.x, data.val.y, eval_batch)
    terminate_on_nan = keras.callbacks.TerminateOnNaN()
    # Let Keras check each step's loss off the training thread (on backends that allow it, JAX): a
    # batch hook that is not async-safe makes the loop wait for every step, a sync per step on a GPU.
    terminate_on_nan.async_safe = True
    # After validation (it reads val_accuracy) and before the caller's callbacks (they read what
    # it adds to each epoch's logs).
    tracks_grid = bool(grid_layers(model))
    grid_validation = ([BestMomentumValidation(config.bn_momentum, config.momentum_grid, data.val.x, data.val.y,
                                               at_epoch=best_momentum_at_epoch, final_epoch=config.epochs,
                                               search=best_momentum_search, batch_size=eval_batch)]
                       if tracks_grid and best_momentum_at_epoch is not None else [])
    started = time.perf_counter()
    fitted = model.fit(
        batches,
        epochs=config.epochs,
        # FullBatches shuffles, from the config's seed; Keras's own shuffle of batch order is not seeded.
        shuffle=False,
        verbose=verbose,
        # The timer's epochs end before validation: epoch times are training alone.
        callbacks=[timer, validation, terminate_on_nan, *grid_validation, *callbacks],
    )
    fit_seconds = time.perf_counter() - started

    history = {ours: [float(v) for v in fitted.history.get(theirs, [])] for theirs, ours in _KERAS_NAMES.items()
               if theirs in fitted.history or ours in EPOCH_METRICS}
    epochs_run = len(history["train_loss"])
    diverged = not all(math.isfinite(v) for v in history["train_loss"]) or not all(
        np.all(np.isfinite(w)) for w in model.get_weights()
    )
    steps = int(model.optimizer.iterations.numpy())

    started = time.perf_counter()
    num_classes = data.num_classes
    if diverged:
        nan = float("nan")
        train_acc = train_eval = val_acc = test_acc = val_recal = nan
        curve, curve_seconds = None, 0.0
        empty = np.zeros((num_classes, num_classes), dtype=np.int64)
        confusion_val = confusion_test = empty
    else:
        train_acc = history["train_accuracy"][-1]
        train_eval = accuracy(predict_classes(model, x_train, eval_batch), y_train)
        # The last validation pass ran at these very weights and statistics: callbacks only read
        # the model (the grid's pass restores the statistics it swaps in).
        val_predicted = (validation.predicted if validation.predicted is not None
                         else predict_classes(model, data.val.x, eval_batch))
        test_predicted = predict_classes(model, data.test.x, eval_batch)
        val_acc = accuracy(val_predicted, data.val.y)
        test_acc = accuracy(test_predicted, data.test.y)
        confusion_val = confusion_matrix(val_predicted, data.val.y, num_classes)
        confusion_test = confusion_matrix(test_predicted, data.test.y, num_classes)
        # Recalibration and the curve's train-eval points share one subset: a pass per BN layer
        # over the whole split cost 3-4 val passes per layer at the default 70/15/15 split.
        has_batchnorm = bool(batchnorm_layers(model))
        subset = _train_eval_subset(data, config.seed) if has_batchnorm else None
        if has_batchnorm:
            with recalibrated_batchnorm(model, subset[0], eval_batch):
                val_recal = accuracy(predict_classes(model, data.val.x, eval_batch), data.val.y)
                train_eval_recal = (accuracy(predict_classes(model, subset[0], eval_batch), subset[1])
                                    if tracks_grid else None)
                # PreciseBN scored on test too: the report compares it with the momenta on held-out images.
                test_recal_predicted = (predict_classes(model, data.test.x, eval_batch) if tracks_grid else None)
        else:
            val_recal, test_recal_predicted = val_acc, None
        curve, curve_seconds = None, 0.0
        if tracks_grid:
            curve_started = time.perf_counter()
            last_pass = grid_validation[0].last if grid_validation else None
            # Val chooses the best momentum; test accuracy at each momentum is for scoring that choice.
            curve = measure_curve(
                model, config.bn_momentum, config.momentum_grid,
                splits={"train": subset, "val": (data.val.x, data.val.y), "test": (data.test.x, data.test.y)},
                own={"train": train_eval if len(subset[1]) == len(y_train) else None, "val": val_acc,
                     "test": test_acc},
                train_accuracy=train_acc, recalibrated=(train_eval_recal, val_recal),
                val_by_momentum=last_pass[1:] if last_pass and last_pass[0] == epochs_run else None,
                batch_size=eval_batch, own_test_predicted=test_predicted,
                recalibrated_test_predicted=test_recal_predicted)
            curve_seconds = time.perf_counter() - curve_started
    eval_seconds = time.perf_counter() - started
    started = time.perf_counter()
    trained_values = variable_values(model)
    value_of = {id(variable): value for variable, value in zip(model.variables, trained_values)}
    trained_weights = [value_of[id(weight)] for weight in model.weights]
    copy_seconds = time.perf_counter() - started

    epoch_seconds = timer.seconds
    timings = {
        "data_seconds": data_seconds,
        "build_seconds": build_seconds,
        "fit_seconds": fit_seconds,
        "eval_seconds": eval_seconds,
        # Within fit_seconds: the per-epoch validation passes.
        "validation_seconds": validation.seconds,
        "first_epoch_seconds": epoch_seconds[0] if epoch_seconds else float("nan"),
        # Training alone, without validation. The first epoch includes tracing and compiling the
        # train step; later ones do not.
        "steady_epoch_seconds": statistics.median(epoch_seconds[1:]) if len(epoch_seconds) > 1 else float("nan"),
        "epochs_seconds": sum(epoch_seconds),
        # Part of fit_seconds: the per-epoch val passes at the grid's momenta.
        "grid_validation_seconds": sum(grid_validation[0].seconds) if grid_validation else 0.0,
        # How many val passes those were (a climb measures a few momenta, the last epoch every one).
        "grid_validation_passes": float(sum(grid_validation[0].points_measured)) if grid_validation else 0.0,
        # Part of eval_seconds: the curve's passes after training.
        "momentum_curve_seconds": curve_seconds,
        # Copying the trained model's variables into the result (see `TrainResult.model`).
        "copy_seconds": copy_seconds,
    }
    return TrainResult(
        config=config,
        class_names=data.class_names,
        history=history,
        epochs=epochs_run,
        steps=steps,
        diverged=diverged,
        stopped_early=epochs_run < config.epochs and not diverged,
        train_accuracy=train_acc,
        train_eval_accuracy=train_eval,
        val_accuracy=val_acc,
        test_accuracy=test_acc,
        val_accuracy_recalibrated=val_recal,
        confusion_val=confusion_val,
        confusion_test=confusion_test,
        timings=timings,
        momentum_curve=curve,
        trained_values=trained_values,
        trained_weights=trained_weights,
    )
