"""Momentum measured in pairs: one trained model evaluated at every momentum of a grid.

Keras's BatchNormalization trains on batch statistics; momentum only sets how its moving
statistics (used at inference) average them. So the trained weights do not depend on momentum,
and a model whose BN layers track moving statistics for a grid of momenta besides their own
(`RuntimeMomentumBatchNormalization` with `momentum_grid`) can be evaluated at each of them:
same weights, same steps, only the momentum differs.

* `measure_curve(...)`: the curve of a trained model, after training: val, train-eval and test
  accuracy per momentum (the grid plus the run's own), as a `gaplab.curve.MomentumCurve`.
* `BestMomentumValidation`: a Keras callback that adds, each epoch, the val accuracy at the best
  momentum (`val_accuracy_at_best_momentum`) and that momentum (`best_momentum`) to the logs.

The curve's resolution (`momentum_step`) and best momentum (`best_index`: val chooses) are
defined in `gaplab.curve`, which the report reads curves with, without Keras.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import keras
import numpy as np

from gaplab.curve import MomentumCurve, best_index, momentum_step
from gaplab.metrics import accuracy, predict_classes
from gaplab.model import RuntimeMomentumBatchNormalization, batchnorm_layers, preserved_batchnorm_statistics

PER_EPOCH_METRICS = ("val_accuracy_at_best_momentum", "best_momentum")


def grid_layers(model: keras.Model) -> list[RuntimeMomentumBatchNormalization]:
    """The model's BN layers that track a momentum grid (all or none of them do)."""
    return [layer for layer in batchnorm_layers(model)
            if isinstance(layer, RuntimeMomentumBatchNormalization) and layer.momentum_grid]


def _curve_points(own_momentum: float, grid: tuple[float, ...]) -> list[tuple[float, int | None]]:
    """(momentum, grid index or None for the own statistics), sorted, one per `momentum_step`."""
    points = {momentum_step(own_momentum): (own_momentum, None)}
    for index, momentum in enumerate(grid):
        points.setdefault(momentum_step(momentum), (momentum, index))
    return sorted(points.values())


@contextlib.contextmanager
def _grid_statistics(layers: list[RuntimeMomentumBatchNormalization], index: int | None) -> Iterator[None]:
    """Within the block, every layer's moving statistics are those of grid entry `index` (None: its own)."""
    if index is None:
        yield
        return
    with preserved_batchnorm_statistics(layers):
        for layer in layers:
            means, variances = layer.grid_statistics()
            layer.moving_mean.assign(means[index])
            layer.moving_variance.assign(variances[index])
        yield


def accuracies_by_momentum(
    model: keras.Model, own_momentum: float, grid: tuple[float, ...], splits: list[tuple[np.ndarray, np.ndarray]],
    own: list[float] | None = None,
) -> tuple[list[float], list[list[float]]]:
    """Sorted momenta and, per split, the inference-mode accuracy at each.

    `grid` is the momentum grid the model was trained with (exact values; the layers hold them
    as float32). `own`: the splits' accuracies at the model's own statistics, where measured.
    """
    layers = grid_layers(model)
    if len(grid) != (len(layers[0].momentum_grid) if layers else 0):
        raise ValueError(f"the model tracks no momentum grid of length {len(grid)}; train it with "
                         f"TrainConfig.momentum_grid={tuple(grid)}.")
    momenta, per_split = [], [[] for _ in splits]
    for momentum, index in _curve_points(own_momentum, tuple(grid)):
        momenta.append(momentum)
        if index is None and own is not None:
            for values, value in zip(per_split, own):
                values.append(value)
            continue
        with _grid_statistics(layers, index):
            for values, (x, y) in zip(per_split, splits):
                values.append(accuracy(predict_classes(model, x), y))
    return momenta, per_split


def measure_curve(
    model: keras.Model, own_momentum: float, grid: tuple[float, ...],
    splits: dict[str, tuple[np.ndarray, np.ndarray]], own: dict[str, float],
    train_accuracy: float, recalibrated: tuple[float, float],
) -> MomentumCurve:
    """The momentum curve of a trained model.

    `splits` are the "train", "val" and "test" images and labels; `own` their accuracies already
    measured at the model's own statistics (reused, not predicted again). `recalibrated` is the
    (train-eval, val) accuracy after PreciseBN recalibration.
    """
    names = ("train", "val", "test")
    momenta, (train_eval, val_acc, test_acc) = accuracies_by_momentum(
        model, own_momentum, grid, [splits[name] for name in names], own=[own[name] for name in names])
    return MomentumCurve(
        own_momentum=float(own_momentum),
        momentum=tuple(float(m) for m in momenta),
        val_accuracy=tuple(val_acc),
        train_eval_accuracy=tuple(train_eval),
        train_accuracy=float(train_accuracy),
        recalibrated_val_accuracy=float(recalibrated[1]),
        recalibrated_train_eval_accuracy=float(recalibrated[0]),
        test_accuracy=tuple(test_acc),
    )


class BestMomentumValidation(keras.callbacks.Callback):
    """Adds `val_accuracy_at_best_momentum` and `best_momentum` to each epoch's logs.

    It must come before the callbacks that read them: Keras hands every callback the same logs.
    The own momentum's val accuracy is fit's `val_accuracy` of that epoch (the same inference).
    """

    def __init__(self, own_momentum: float, grid: tuple[float, ...], x_val: np.ndarray, y_val: np.ndarray):
        super().__init__()
        self.own_momentum = own_momentum
        self.grid = grid
        self.val = (x_val, y_val)
        self.seconds: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or "val_accuracy" not in logs:
            return
        started = time.perf_counter()
        momenta, (val_acc,) = accuracies_by_momentum(
            self.model, self.own_momentum, self.grid, [self.val], own=[float(logs["val_accuracy"])])
        best = best_index(momenta, val_acc)
        logs["val_accuracy_at_best_momentum"] = val_acc[best]
        logs["best_momentum"] = momenta[best]
        self.seconds.append(time.perf_counter() - started)
