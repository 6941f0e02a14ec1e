"""gaplab: train the seed's small Keras CNN and measure why training and validation accuracy differ.

Modules: `data` (image folders and the built-in dataset), `config` (TrainConfig and the seed
presets), `model` (the CNN builder), `trainer` (the trainer, `train()`), `compiled` (one compiled
model per architecture, reused across trainings), `metrics` (inference-mode accuracy, confusion
matrices, BatchNormalization recalibration), `momentum` (one model evaluated at every momentum of a
grid), `curve` (the momentum curve as data, Keras-free), `device` (which device the active Keras
backend trains on). No submodule is named like an export, so importing one never shadows it.
`python -m gaplab` reproduces the seed's table on the built-in dataset.
"""

import importlib

# Submodules load on first use, so `import gaplab.config` (the CLI's defaults) does not import Keras.
_EXPORTS = {
    "MOMENTUM_GRID": "config", "PRESETS": "config", "SEED_RESULTS": "config", "TrainConfig": "config",
    "DataError": "data", "Dataset": "data", "generate_shapes": "data", "load_image_folder": "data",
    "ConfigError": "config", "allowed_depths": "model", "build_model": "model", "build_preset": "model",
    "EpochCallback": "trainer", "TrainResult": "trainer", "train": "trainer", "MomentumCurve": "curve",
    "CompiledModels": "compiled",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gaplab' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gaplab.{_EXPORTS[name]}"), name)
