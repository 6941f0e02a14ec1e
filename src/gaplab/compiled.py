"""Compiling once: one compiled model per architecture, reset for each training, and JAX's persistent cache.

    models = CompiledModels()
    model = models.prepared(config, num_classes)   # as freshly built and compiled, with config.seed

On TensorFlow every traced train step keeps ~10 MiB of runtime memory that clear_session() does
not release, and on JAX every new model means a new XLA compile; reusing one compiled model per
architecture bounds both by the number of architectures. BN momentum, the momentum grid's values
and the dropout rate are runtime state, so configs that differ only in them share a model.

`train()` uses `default_models` unless given its own `CompiledModels`. A prepared model is the
same object for every config of its architecture: preparing it again overwrites the previous
training's weights, which is why `TrainResult` keeps a copy of them.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from gaplab.config import TrainConfig
from gaplab.model import build_model, set_runtime_hyperparameters


@dataclass
class _Entry:
    model: keras.Model
    # The variables of a freshly built model, per seed; momentum and dropout rate aside, they
    # depend only on the architecture and the seed.
    initial_values: dict[int, list[np.ndarray]] = field(default_factory=dict)


def architecture(config: TrainConfig, num_classes: int) -> tuple:
    """What a compiled model is specific to; configs with the same architecture share one."""
    # The grid's length shapes the BN layers' state; its values are runtime state.
    grid_length = len(config.momentum_grid) if config.batchnorm else 0
    return (config.depth, config.batchnorm, config.dropout > 0, config.image_size, num_classes, grid_length)


def variable_values(model: keras.Model) -> list[np.ndarray]:
    """Copies of all the model's variables: weights, BN statistics (the grid's too) and runtime state."""
    # np.array copies: on the CPU a variable's NumPy value may share its buffer, which the next
    # train step overwrites.
    return [np.array(variable.numpy()) for variable in model.variables]


class CompiledModels:
    """Compiled models by architecture; beyond `capacity`, the least recently prepared is dropped."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()

    def __len__(self) -> int:
        """How many compiled models are held."""
        return len(self._entries)

    def prepared(self, config: TrainConfig, num_classes: int) -> keras.Model:
        """A compiled model for `config`, in exactly the state a freshly built and compiled one has.

        Weights and states are those of a fresh build with the config's seed (built once per seed
        and architecture); optimizer state, step counter, learning rate, BN momentum and dropout
        rate are reset in place. The model is the one every config of this architecture gets.
        """
        key = architecture(config, num_classes)
        entry = self._entries.pop(key, None)
        if entry is None:
            model = build_model(config, num_classes, runtime_hyperparameters=True)
            model.compile(
                optimizer=keras.optimizers.Adam(config.learning_rate),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            model.optimizer.build(model.trainable_variables)
            entry = _Entry(model, {config.seed: variable_values(model)})
        else:
            model = entry.model
            if config.seed not in entry.initial_values:
                entry.initial_values[config.seed] = variable_values(
                    build_model(config, num_classes, runtime_hyperparameters=True))
            for variable, value in zip(model.variables, entry.initial_values[config.seed]):
                variable.assign(value)
            for variable in model.optimizer.variables:
                variable.assign(keras.ops.zeros(variable.shape, dtype=variable.dtype))
            model.optimizer.learning_rate.assign(config.learning_rate)
            set_runtime_hyperparameters(model, config)
        self._entries[key] = entry
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return model


default_models = CompiledModels()

_compilation_cache_dir: str | None = None


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> str | None:
    """Turn on the backend's persistent compilation cache, where it has one (JAX); once per process.

    The directory is `directory`, else $GAPLAB_COMPILE_CACHE_DIR, else ~/.cache/gaplab/xla.
    TensorFlow has no persistent cache for Keras train steps; returns None there.
    """
    global _compilation_cache_dir
    if keras.backend.backend() != "jax":
        return None
    if _compilation_cache_dir is None:
        import jax  # only on the jax backend, where it is installed

        chosen = directory or os.environ.get("GAPLAB_COMPILE_CACHE_DIR") or Path.home() / ".cache" / "gaplab" / "xla"
        Path(chosen).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(chosen))
        # Cache even quick compiles: on a GPU every train step compile is worth keeping.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        # Keep the GPU autotuning results beside the programs: without them a cache hit still
        # autotunes every convolution again. (This is JAX's default today; set so it stays on.)
        jax.config.update("jax_persistent_cache_enable_xla_caches", "xla_gpu_per_fusion_autotune_cache_dir")
        _compilation_cache_dir = str(chosen)
    return _compilation_cache_dir
