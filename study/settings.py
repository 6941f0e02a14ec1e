"""What `python -m study.run` was asked for once every value passed its check, and the check it shares.

`check_training_values` answers the values both `study.run` and `study.bench` take (trials, image
size, epochs, seed, device, workers) in the same words and gives the base TrainConfig they make;
each command adds the checks of its own flags. Nothing here imports Keras, Optuna or MLflow, so
bad input is answered before they load.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from gaplab.config import ConfigError, TrainConfig
from gaplab.device import DEVICES
from study.cli import UsageError


@dataclass(frozen=True)
class Settings:
    """The study command's validated settings.

    `base` is what every trial shares (image size, epochs, seed); the search fills in the rest.
    """

    trials: int
    base: TrainConfig
    data_dir: str
    study_name: str
    storage: str
    pruner: str
    prune_on: str
    skip_bad_images: bool = False
    device: str = "auto"
    workers: int = 1
    gpus: tuple[str, ...] = ()


def check_training_values(args: argparse.Namespace) -> TrainConfig:
    """The base TrainConfig of a study with the parsed flags --trials, --image_size, --epochs, --seed, --device
    and --workers (both commands name them alike); UsageError naming the first bad one."""
    if args.trials < 1:
        raise UsageError(f"--trials={args.trials} is invalid; use at least 1.")
    try:
        base = TrainConfig(image_size=args.image_size, epochs=args.epochs, seed=args.seed).validate()
    except ConfigError as error:
        raise UsageError(f"--{error}") from None
    if args.device not in DEVICES:
        raise UsageError(f"--device={args.device!r} is unknown; use one of {', '.join(DEVICES)}.")
    if args.workers < 1:
        raise UsageError(f"--workers={args.workers} is invalid; use at least 1.")
    return base
