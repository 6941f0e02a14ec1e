"""The seed's CNN family, built from a config: depth, BatchNormalization and momentum, dropout.

Block i (0-based) is Conv2D(f_i, 3, relu) [+ BatchNormalization] + MaxPool2D(2), with f_i = 16 for
even i and 32 for odd i, and pooling stride 1 in block 1 and 2 elsewhere: exactly the seed's
pattern (16/stride 2, 32/stride 1, 16/stride 2), continued. The network starts with
Rescaling(1/255) and ZeroPadding2D and ends with Flatten, Dropout (when > 0) and Dense(softmax).

Two builds of the same architecture exist:

* `runtime_hyperparameters=True` (what the trainer uses): BN momentum and the dropout rate are
  held as backend state rather than compiled-in constants, so trials that differ only in them
  produce identical compiled programs and hit the backend's compilation cache.
* `runtime_hyperparameters=False`: stock Keras layers, for saving and serving (`to_portable`).

Both have exactly the same weights, so parameter counts are the seed's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import numpy as np
from keras import ops

from gaplab.config import PRESETS, ConfigError, TrainConfig


# Each block's conv shrinks the map by 2 (kernel 3, no padding); its pool halves it or takes 1.
def _block_filters(index: int) -> int:
    return 16 if index % 2 == 0 else 32


def _block_pool_stride(index: int) -> int:
    return 1 if index == 1 else 2


def feature_map_sizes(image_size: int, depth: int) -> list[int]:
    """Spatial size after each block; a value < 1 means the map vanished."""
    size = image_size + 2  # ZeroPadding2D(1)
    sizes = []
    for index in range(depth):
        size -= 2
        stride = _block_pool_stride(index)
        size = (size - 2) // stride + 1 if size >= 2 else 0
        sizes.append(size)
    return sizes


def allowed_depths(image_size: int, max_depth: int = 8) -> list[int]:
    """Depths whose feature map stays at least 1x1 at this image size."""
    return [depth for depth in range(1, max_depth + 1) if min(feature_map_sizes(image_size, depth)) >= 1]


def _check(config: TrainConfig, num_classes: int) -> None:
    config.validate()
    sizes = feature_map_sizes(config.image_size, config.depth)
    if min(sizes) < 1:
        allowed = allowed_depths(config.image_size)
        raise ConfigError(
            f"depth={config.depth} is too deep for image_size={config.image_size}: the feature map "
            f"shrinks to nothing after block {next(i for i, s in enumerate(sizes) if s < 1) + 1}. "
            f"Use depth <= {max(allowed) if allowed else 0} or a larger image_size."
        )
    if num_classes < 2:
        raise ConfigError(f"num_classes={num_classes} is invalid; a classifier needs at least 2 classes.")


class _RuntimeState(keras.random.SeedGenerator):
    """Float32 values (a scalar or an array) held as layer state, not as a weight.

    Keras passes a layer's seed-generator states into compiled train steps as inputs, and leaves
    them out of `weights` and `count_params()`. Holding a hyperparameter the same way keeps it out
    of the compiled program (no recompilation when it changes) and out of the parameter count;
    holding extra statistics this way keeps them out of the weights a saved model carries.
    """

    def __init__(self, value, name: str):
        self.name = name
        self.backend = keras.backend
        self._initial_seed = None
        with keras.name_scope(name, caller=self):
            # autocast=False: under a mixed-precision policy a layer's variables are read in the
            # compute dtype, and in bfloat16 a momentum of 0.999 reads as 1.0 (statistics never move);
            # like Keras's own moving statistics, these stay float32.
            self.state = keras.Variable(np.asarray(value, dtype="float32"), dtype="float32", trainable=False,
                                        autocast=False, name=name)

    def next(self, ordered=True):  # pragma: no cover - never used as a seed
        raise TypeError(f"{self.name} holds a hyperparameter, not a random seed")


@keras.saving.register_keras_serializable(package="gaplab")
class RuntimeMomentumBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose momentum is runtime state (see `_RuntimeState`).

    With a `momentum_grid`, the layer also keeps moving statistics for each grid momentum, updated
    from the same batch statistics and with the same rule as Keras's own moving statistics, so
    one training measures the model at every grid momentum (`grid_statistics`). The grid's
    momenta are runtime state too: grids of the same length share one compiled program.
    """

    def __init__(self, momentum: float = 0.99, momentum_grid=(), **kwargs):
        self._momentum_state = _RuntimeState(momentum, "bn_momentum")
        self._grid_momenta = _RuntimeState(tuple(momentum_grid), "grid_momenta") if momentum_grid else None
        self._grid_mean = self._grid_variance = None
        super().__init__(momentum=momentum, **kwargs)

    @property
    def momentum(self):
        return self._momentum_state.state.value

    @momentum.setter
    def momentum(self, value):
        # BatchNormalization.__init__ assigns the float; keep it in the state variable.
        self._momentum_state.state.assign(float(value))

    @property
    def momentum_grid(self) -> tuple[float, ...]:
        if self._grid_momenta is None:
            return ()
        return tuple(float(m) for m in self._grid_momenta.state.numpy())

    @momentum_grid.setter
    def momentum_grid(self, values) -> None:
        if len(values) != len(self.momentum_grid):
            raise ConfigError(f"momentum_grid of length {len(values)} does not fit layer {self.name}'s "
                              f"grid of length {len(self.momentum_grid)}; build a new model.")
        if self._grid_momenta is not None:
            self._grid_momenta.state.assign(np.asarray(values, dtype="float32"))

    def build(self, input_shape):
        super().build(input_shape)
        if self._grid_momenta is not None:
            shape = (len(self.momentum_grid), input_shape[self.axis])
            self._grid_mean = _RuntimeState(self.moving_mean_initializer(shape, dtype="float32"), "grid_mean")
            self._grid_variance = _RuntimeState(self.moving_variance_initializer(shape, dtype="float32"),
                                                "grid_variance")

    def _moments(self, inputs, mask):
        # Keras calls this only to update its moving statistics (training); the grid's updates
        # use the very same batch moments and Keras's rule, moving * m + batch * (1 - m).
        mean, variance = super()._moments(inputs, mask)
        if self._grid_mean is not None:
            grid = ops.expand_dims(self._grid_momenta.state.value, 1)
            for state, batch in ((self._grid_mean, mean), (self._grid_variance, variance)):
                moving = ops.cast(state.state.value, batch.dtype)
                state.state.assign(moving * grid + ops.expand_dims(batch, 0) * (1.0 - grid))
        return mean, variance

    def grid_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """The grid's moving means and variances, (grid size, channels) each."""
        if self._grid_mean is None:
            raise ConfigError(f"layer {self.name} tracks no momentum grid; build it with momentum_grid.")
        return self._grid_mean.state.numpy(), self._grid_variance.state.numpy()

    def get_config(self):
        config = super().get_config()
        config["momentum"] = float(self._momentum_state.state.numpy())
        config["momentum_grid"] = list(self.momentum_grid)
        return config


@keras.saving.register_keras_serializable(package="gaplab")
class RuntimeRateDropout(keras.layers.Layer):
    """Dropout whose rate is runtime state (see `_RuntimeState`); inverted scaling like Dropout."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self._rate = _RuntimeState(rate, "dropout_rate")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def rate(self) -> float:
        return float(self._rate.state.numpy())

    @rate.setter
    def rate(self, value: float) -> None:
        self._rate.state.assign(float(value))

    def call(self, inputs, training=False):
        if not training:
            return inputs
        # The draw and the rate compare in float32 whatever the compute dtype (mixed precision).
        rate = self._rate.state.value
        draw = keras.random.uniform(ops.shape(inputs), dtype="float32", seed=self.seed_generator)
        keep = ops.cast(draw >= rate, inputs.dtype)
        return inputs * keep / ops.cast(1.0 - rate, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def build_model(config: TrainConfig, num_classes: int, *, runtime_hyperparameters: bool = False) -> keras.Model:
    """Build the (uncompiled) CNN for `config` at (image_size, image_size, 3) with `num_classes`."""
    _check(config, num_classes)
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = keras.layers.ZeroPadding2D(1, name="pad")(x)
    for index in range(config.depth):
        x = keras.layers.Conv2D(_block_filters(index), 3, activation="relu", name=f"conv{index + 1}")(x)
        if config.batchnorm:
            name = f"bn{index + 1}"
            if runtime_hyperparameters:
                x = RuntimeMomentumBatchNormalization(momentum=config.bn_momentum,
                                                      momentum_grid=config.momentum_grid, name=name)(x)
            else:
                x = keras.layers.BatchNormalization(momentum=config.bn_momentum, name=name)(x)
        stride = _block_pool_stride(index)
        x = keras.layers.MaxPooling2D(2, strides=stride, name=f"pool{index + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if config.dropout > 0:
        if runtime_hyperparameters:
            x = RuntimeRateDropout(config.dropout, seed=config.seed, name="dropout")(x)
        else:
            x = keras.layers.Dropout(config.dropout, seed=config.seed, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name=f"cnn_depth{config.depth}")


def set_runtime_hyperparameters(model: keras.Model, config: TrainConfig) -> None:
    """Set the BN momentum (and grid) and dropout rate of a `runtime_hyperparameters=True` model to `config`'s."""
    for layer in model.layers:
        if isinstance(layer, RuntimeMomentumBatchNormalization):
            layer.momentum = config.bn_momentum
            layer.momentum_grid = config.momentum_grid
        elif isinstance(layer, RuntimeRateDropout):
            layer.rate = config.dropout


def build_preset(name: str, image_size: int = 224, num_classes: int = 6) -> keras.Model:
    """Build one of the seed's models by name (see `gaplab.config.PRESETS`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return build_model(PRESETS[name].replace(image_size=image_size), num_classes)


def to_portable(model: keras.Model, config: TrainConfig, num_classes: int) -> keras.Model:
    """A stock-Keras copy of a trained model (same weights), loadable without gaplab installed."""
    return portable_from_weights(config, num_classes, model.get_weights())


def portable_from_weights(config: TrainConfig, num_classes: int, weights: list[np.ndarray]) -> keras.Model:
    """The stock-Keras model of `config` holding `weights` (a trained model's `get_weights()`, in its order)."""
    portable = build_model(config, num_classes, runtime_hyperparameters=False)
    portable.set_weights(weights)
    return portable


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


@contextlib.contextmanager
def preserved_batchnorm_statistics(layers: list[keras.layers.BatchNormalization]) -> Iterator[None]:
    """Whatever the block assigns to these layers' moving statistics, their values are back on exit."""
    saved = [(layer.moving_mean.numpy(), layer.moving_variance.numpy()) for layer in layers]
    try:
        yield
    finally:
        for layer, (mean, variance) in zip(layers, saved):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
