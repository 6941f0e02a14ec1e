"""Measurements on a trained model: inference-mode accuracy, confusion matrices, BN recalibration.

`recalibrated_batchnorm` re-estimates each BatchNormalization layer's moving mean and variance as
the exact population statistics of its inputs over the training data (PreciseBN, Wu & Johnson
2021), layer by layer so each layer sees its recalibrated predecessors, with all weights frozen.
It restores the trained statistics on exit: the model under study is not changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import numpy as np
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix

from gaplab.model import batchnorm_layers

EVAL_BATCH_SIZE = 256


def predict_classes(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Class index per sample, in inference mode (BN uses its moving statistics)."""
    probabilities = model.predict(x, batch_size=EVAL_BATCH_SIZE, verbose=0)
    return np.argmax(probabilities, axis=1).astype(np.int32)


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predicted == labels)) if len(labels) else float("nan")


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes, all classes present even if unseen."""
    return _sk_confusion_matrix(labels, predicted, labels=list(range(num_classes)))


def _channel_moments(features: keras.Model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = total_sq = None
    count = 0
    for start in range(0, len(x), EVAL_BATCH_SIZE):
        batch = keras.ops.convert_to_numpy(features(x[start : start + EVAL_BATCH_SIZE], training=False))
        flat = batch.reshape(-1, batch.shape[-1]).astype(np.float64)
        total = flat.sum(0) if total is None else total + flat.sum(0)
        total_sq = (flat**2).sum(0) if total_sq is None else total_sq + (flat**2).sum(0)
        count += len(flat)
    mean = total / count
    return mean, np.maximum(total_sq / count - mean**2, 0.0)


@contextlib.contextmanager
def recalibrated_batchnorm(model: keras.Model, x_train: np.ndarray) -> Iterator[keras.Model]:
    """Within the block, every BN layer holds its inputs' exact statistics over `x_train`."""
    layers = batchnorm_layers(model)
    saved = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
    try:
        for layer in layers:
            features = keras.Model(model.input, layer.input)
            mean, variance = _channel_moments(features, x_train)
            layer.moving_mean.assign(mean.astype("float32"))
            layer.moving_variance.assign(variance.astype("float32"))
        yield model
    finally:
        for layer, (mean, variance) in zip(layers, saved):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
