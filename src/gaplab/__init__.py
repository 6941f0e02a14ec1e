"""gaplab: train the seed's small Keras CNN and measure why training and validation accuracy differ.

Modules: `data` (image folders and the built-in dataset), `config` (TrainConfig and the seed
presets), `model` (the CNN builder), `train` (the trainer), `metrics` (inference-mode accuracy,
confusion matrices, BatchNormalization recalibration). `python -m gaplab` reproduces the seed's
table on the built-in dataset.
"""

from gaplab.config import PRESETS, SEED_RESULTS, TrainConfig
from gaplab.data import DataError, Dataset, generate_shapes, load_image_folder
from gaplab.model import ConfigError, allowed_depths, build_model, build_preset
from gaplab.train import EpochCallback, TrainResult, train

__all__ = [
    "PRESETS",
    "SEED_RESULTS",
    "ConfigError",
    "DataError",
    "Dataset",
    "EpochCallback",
    "TrainConfig",
    "TrainResult",
    "allowed_depths",
    "build_model",
    "build_preset",
    "generate_shapes",
    "load_image_folder",
    "train",
]
