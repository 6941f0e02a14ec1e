"""Momentum measured in pairs: one trained model evaluated at every momentum of a grid.

Keras's BatchNormalization trains on batch statistics; momentum only sets how its moving
statistics (used at inference) average them. So the trained weights do not depend on momentum,
and a model whose BN layers track moving statistics for a grid of momenta besides their own
(`RuntimeMomentumBatchNormalization` with `momentum_grid`) can be evaluated at each of them:
same weights, same steps, only the momentum differs.

* `measure_curve(...)`: the curve of a trained model, after training: val, train-eval and test
  accuracy per momentum (the grid plus the run's own), as a `gaplab.curve.MomentumCurve`, with
  PreciseBN's test accuracy, the split sizes and, per momentum, how many test images it classifies
  differently from the own momentum (`test_by_momentum`).
  Train-eval is measured on `train_eval_subset` of the training split, at every point (the own one
  included, so the curve's points compare with each other on the same images).
* `BestMomentumValidation`: a Keras callback that adds, at the epochs asked, the val accuracy at
  the best momentum (`val_accuracy_at_best_momentum`) and that momentum (`best_momentum`) to the
  logs: at the last epoch from every momentum (the pass `measure_curve` then reuses for val), at
  earlier ones by climbing to better neighbours from the previous epoch's best and from momentum 0
  (`climb_to_best`), about 4 val passes instead of 8.

The curve's resolution (`momentum_step`) and best momentum (`best_index`: val chooses) are
defined in `gaplab.curve`, which the report reads curves with, without Keras.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import keras
import numpy as np

from gaplab.curve import MomentumCurve, best_index, momentum_step
from gaplab.metrics import EVAL_BATCH_SIZE, accuracy, predict_classes
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


def _check_grid(layers: list[RuntimeMomentumBatchNormalization], grid: tuple[float, ...]) -> None:
    if len(grid) != (len(layers[0].momentum_grid) if layers else 0):
        raise ValueError(f"the model tracks no momentum grid of length {len(grid)}; train it with "
                         f"TrainConfig.momentum_grid={tuple(grid)}.")


def accuracies_by_momentum(
    model: keras.Model, own_momentum: float, grid: tuple[float, ...], splits: list[tuple[np.ndarray, np.ndarray]],
    own: list[float | None] | None = None, batch_size: int = EVAL_BATCH_SIZE,
) -> tuple[list[float], list[list[float]]]:
    """Sorted momenta and, per split, the inference-mode accuracy at each.

    `grid` is the momentum grid the model was trained with (exact values; the layers hold them
    as float32). `own`: per split, its accuracy at the model's own statistics where already
    measured (reused), None where not. `batch_size`: see `gaplab.metrics.eval_batch_size`.
    """
    layers = grid_layers(model)
    _check_grid(layers, grid)
    own = own if own is not None else [None] * len(splits)
    momenta, per_split = [], [[] for _ in splits]
    for momentum, index in _curve_points(own_momentum, tuple(grid)):
        momenta.append(momentum)
        with _grid_statistics(layers, index):
            for values, (x, y), measured in zip(per_split, splits, own):
                reused = index is None and measured is not None
                values.append(measured if reused else accuracy(predict_classes(model, x, batch_size), y))
    return momenta, per_split


def test_by_momentum(
    model: keras.Model, own_momentum: float, grid: tuple[float, ...], split: tuple[np.ndarray, np.ndarray],
    own_predicted: np.ndarray | None = None, batch_size: int = EVAL_BATCH_SIZE,
) -> tuple[list[float], list[float], list[int]]:
    """Sorted momenta, the accuracy on `split` at each, and how many of its images each classifies differently
    from the own momentum: two accuracies on the same images differ by noise of about sqrt(differing) / images,
    not by the error of one accuracy. `own_predicted`: the classes already predicted at the own statistics."""
    layers = grid_layers(model)
    _check_grid(layers, grid)
    x, y = split
    momenta, predicted = [], []
    for momentum, index in _curve_points(own_momentum, tuple(grid)):
        momenta.append(momentum)
        if index is None and own_predicted is not None:
            predicted.append(np.asarray(own_predicted))
            continue
        with _grid_statistics(layers, index):
            predicted.append(predict_classes(model, x, batch_size))
    own = predicted[next(i for i, (_, index) in enumerate(_curve_points(own_momentum, tuple(grid))) if index is None)]
    return momenta, [accuracy(p, y) for p in predicted], [int(np.sum(p != own)) for p in predicted]


def climb_to_best(momenta: list[float], starts: tuple[int, ...], measure: Callable[[int], float],
                  known: dict[int, float] | None = None) -> tuple[int, dict[int, float]]:
    """A best point of the sorted curve `momenta`, measuring as few as the climbs need: (its index, what was measured).

    From each of `starts` in turn, measure both neighbours and move to the better one while it beats
    the current point; "better" is `gaplab.curve.best_index`'s order (higher accuracy, ties to the
    larger momentum). The answer is the best point measured. `measure(i)` is the accuracy at point i;
    `known` holds points already measured, which are not measured again. Where the accuracies rise to
    one peak and fall, a single climb finds `best_index`'s answer; a curve with two peaks (the last
    batches' statistics at momentum 0 against settled ones) needs a start on each side, and on a
    plateau of ties the climb may stop a few images short of the best, never above it.
    """
    known = dict(known or {})
    order = lambda i: (known[i], momenta[i])  # noqa: E731 - best_index's order, on what is known
    for current in starts:
        while True:
            for neighbour in (current - 1, current, current + 1):
                if 0 <= neighbour < len(momenta) and neighbour not in known:
                    known[neighbour] = measure(neighbour)
            better = max((i for i in (current - 1, current + 1) if i in known), key=order, default=current)
            if order(better) <= order(current):
                break
            current = better
    return max(known, key=order), known


def estimate_best(momenta: list[float], measure: Callable[[int], float], known: dict[int, float],
                  previous_best: int | None) -> tuple[int, dict[int, float]]:
    """The per-epoch estimate of the best point (`BestMomentumValidation` before the last epoch): climbs from
    the previous estimate's point, `previous_best` (None at the first), and from momentum 0 (index 0).

    Early in training the last batches' statistics (momentum 0) are often best, while a high own
    momentum sits on a flat stretch of stale statistics that a climb from it cannot leave.
    """
    return climb_to_best(momenta, (0,) if previous_best is None else (previous_best, 0), measure, known)


def train_eval_subset(labels: np.ndarray, val_size: int, seed: int) -> np.ndarray:
    """Sorted indices of the training images the curve measures train-eval accuracy on.

    A stratified, seeded draw of as many images as val has, so train-eval at each momentum costs
    what val does and fills the same evaluation batches (`gaplab.metrics.eval_batch_size(val_size)`);
    every image where the split is no larger. Each class gets its share of the size by largest
    remainder. A pure function of the labels and the seed.
    """
    size = max(val_size, 1)
    if size >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    shares = counts * size / len(labels)
    taken = np.floor(shares).astype(int)
    # Largest remainders first; ties to the smaller class label, so the draw does not depend on sort stability.
    for position in sorted(range(len(classes)), key=lambda i: (taken[i] - shares[i], classes[i]))[: size - taken.sum()]:
        taken[position] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == label), size=count, replace=False)
              for label, count in zip(classes, taken)]
    return np.sort(np.concatenate(picked))


def measure_curve(
    model: keras.Model, own_momentum: float, grid: tuple[float, ...],
    splits: dict[str, tuple[np.ndarray, np.ndarray]], own: dict[str, float | None],
    train_accuracy: float, recalibrated: tuple[float, float],
    val_by_momentum: tuple[list[float], list[float]] | None = None, batch_size: int = EVAL_BATCH_SIZE,
    own_test_predicted: np.ndarray | None = None, recalibrated_test_predicted: np.ndarray | None = None,
) -> MomentumCurve:
    """The momentum curve of a trained model.

    `splits` are the "train" (the train-eval subset, see `train_eval_subset`), "val" and "test"
    images and labels; `own` their accuracies already measured at the model's own statistics
    (reused, not predicted again; None: not measured). `val_by_momentum`: (momenta, val accuracies)
    of a pass at these very weights and statistics (`BestMomentumValidation.last`), reused instead
    of another val pass at every momentum. `recalibrated` is the (train-eval on the same subset,
    val) accuracy after PreciseBN recalibration on that subset, and `recalibrated_test_predicted` the
    test classes it predicts (None: PreciseBN is not scored on test). `own_test_predicted`: the test
    classes at the own statistics where already predicted. `batch_size`: see
    `gaplab.metrics.eval_batch_size`.
    """
    names = ("train", "val") if val_by_momentum is None else ("train",)
    momenta, measured = accuracies_by_momentum(
        model, own_momentum, grid, [splits[name] for name in names], own=[own[name] for name in names],
        batch_size=batch_size)
    by_name = dict(zip(names, measured))
    if val_by_momentum is not None:
        if list(val_by_momentum[0]) != momenta:
            raise ValueError(f"the reused val pass has momenta {val_by_momentum[0]}, not the curve's {momenta}")
        by_name["val"] = list(val_by_momentum[1])
    x_test, y_test = splits["test"]
    # Outside `_grid_statistics` the model holds its own statistics.
    own_classes = (np.asarray(own_test_predicted) if own_test_predicted is not None
                   else predict_classes(model, x_test, batch_size))
    _, by_name["test"], differs = test_by_momentum(model, own_momentum, grid, (x_test, y_test), own_classes,
                                                   batch_size)
    recalibrated_test = recalibrated_differs = None
    if recalibrated_test_predicted is not None:
        recalibrated_test = accuracy(recalibrated_test_predicted, y_test)
        recalibrated_differs = int(np.sum(np.asarray(recalibrated_test_predicted) != own_classes))
    return MomentumCurve(
        own_momentum=float(own_momentum),
        momentum=tuple(float(m) for m in momenta),
        val_accuracy=tuple(by_name["val"]),
        train_eval_accuracy=tuple(by_name["train"]),
        train_accuracy=float(train_accuracy),
        recalibrated_val_accuracy=float(recalibrated[1]),
        recalibrated_train_eval_accuracy=float(recalibrated[0]),
        test_accuracy=tuple(by_name["test"]),
        train_eval_images=len(splits["train"][1]),
        val_images=len(splits["val"][1]),
        test_images=len(y_test),
        recalibrated_test_accuracy=recalibrated_test,
        test_differs_from_own=tuple(differs),
        recalibrated_test_differs_from_own=recalibrated_differs,
    )



class BestMomentumValidation(keras.callbacks.Callback):
    """Adds `val_accuracy_at_best_momentum` and `best_momentum` to the logs of the epochs asked.

    `at_epoch(epoch)` (epochs count from 1) says whether an epoch needs them; the others' logs go
    without (a val pass at every grid momentum costs about a quarter of a training epoch at 32 px).
    It must come before the callbacks that read them: Keras hands every callback the same logs. The
    own momentum's val accuracy is fit's `val_accuracy` of that epoch (the same inference).

    At `final_epoch` it measures val at every momentum: that pass is the curve's val
    (`measure_curve` reuses `last`: (epoch, momenta, val accuracy at each)). Before it, with
    `search="climb"` (the default), it measures only what `climb_to_best` needs, climbing from the
    previous pass's best momentum and from momentum 0 (the first pass: from 0 only; the own
    momentum's accuracy is known): the estimate is the best val accuracy measured, a few images
    short of the full scan's on some plateaus (benchmarks/pruning_estimate.py). `search="full"`
    measures every momentum at every epoch asked. `points_measured` lists, per pass, the val passes
    it ran.
    """

    def __init__(self, own_momentum: float, grid: tuple[float, ...], x_val: np.ndarray, y_val: np.ndarray,
                 at_epoch: Callable[[int], bool], final_epoch: int, search: str = "climb",
                 batch_size: int = EVAL_BATCH_SIZE):
        super().__init__()
        if search not in ("climb", "full"):
            raise ValueError(f"search={search!r} is invalid; use 'climb' or 'full'.")
        self.own_momentum = own_momentum
        self.grid = tuple(grid)
        self.val = (x_val, y_val)
        self.at_epoch = at_epoch
        self.final_epoch = final_epoch
        self.search = search
        self.batch_size = batch_size
        self.seconds: list[float] = []
        self.points_measured: list[int] = []
        self.last: tuple[int, list[float], list[float]] | None = None
        self._points = _curve_points(own_momentum, self.grid)
        self._best_position: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or "val_accuracy" not in logs or not self.at_epoch(epoch + 1):
            return
        started = time.perf_counter()
        layers = grid_layers(self.model)
        _check_grid(layers, self.grid)
        x, y = self.val

        def measure(position: int) -> float:
            with _grid_statistics(layers, self._points[position][1]):
                return accuracy(predict_classes(self.model, x, self.batch_size), y)

        own_position = next(i for i, (_, index) in enumerate(self._points) if index is None)
        known = {own_position: float(logs["val_accuracy"])}
        momenta = [momentum for momentum, _ in self._points]
        if self.search == "full" or epoch + 1 >= self.final_epoch:
            known.update({i: measure(i) for i in range(len(momenta)) if i not in known})
            best = best_index(momenta, [known[i] for i in range(len(momenta))])
            if epoch + 1 >= self.final_epoch:
                self.last = (epoch + 1, momenta, [known[i] for i in range(len(momenta))])
        else:
            best, known = estimate_best(momenta, measure, known, self._best_position)
        self._best_position = best
        logs["val_accuracy_at_best_momentum"] = known[best]
        logs["best_momentum"] = momenta[best]
        self.points_measured.append(len(known) - 1)
        self.seconds.append(time.perf_counter() - started)
