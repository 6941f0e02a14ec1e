"""What `python -m study.run` was asked for once every value passed its check, and the check it shares.

`check_training_values` answers the values both `study.run` and `study.bench` take (trials, image
size, epochs, seed, device, workers) in the same words and gives the base TrainConfig they make; a
study's image size starts at MIN_STUDY_IMAGE_SIZE, where every seed preset fits;
each command adds the checks of its own flags. `STUDY_NAME_PATTERN` is what a study name may be,
and `default_study_name` makes one of that kind from a data folder's name. Nothing here imports
Keras, Optuna or MLflow, so bad input is answered before they load.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from gaplab.config import ConfigError, TrainConfig
from gaplab.device import DEVICES
from study.commands import UsageError
from study.contract import DEFAULT_CONFIRM_K

# The smallest --image_size at which every seed preset fits the model: the depth-3 presets need 14 px
# (gaplab.model.allowed_depths; test_space checks this against it). A study always queues the presets, so
# below it they would fail; gaplab itself trains 1 and 2 conv blocks from MIN_IMAGE_SIZE (8) px.
MIN_STUDY_IMAGE_SIZE = 14
# `--confirm K`'s largest value (study.confirm; its default is contract.DEFAULT_CONFIRM_K): beyond it the interval
# over seeds narrows little, and a typo (--confirm 5000) would queue days of training.
MAX_CONFIRM = 100
# A study's name is also its MLflow experiment and registered model, and goes into file names and URLs.
STUDY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,99}$")
_NOT_IN_A_STUDY_NAME = re.compile(r"[^A-Za-z0-9_.\- ]+")


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
    confirm: int = DEFAULT_CONFIRM_K


def check_training_values(args: argparse.Namespace) -> TrainConfig:
    """The base TrainConfig of a study with the parsed flags --trials, --image_size, --epochs, --seed, --device
    and --workers (both commands name them alike); UsageError naming the first bad one."""
    if args.trials < 1:
        raise UsageError(f"--trials={args.trials} is invalid; use at least 1.")
    if args.image_size < MIN_STUDY_IMAGE_SIZE:
        raise UsageError(f"--image_size={args.image_size} is invalid; use at least {MIN_STUDY_IMAGE_SIZE} pixels: "
                         f"the seed presets every study trains have 3 conv blocks, which need {MIN_STUDY_IMAGE_SIZE}.")
    try:
        base = TrainConfig(image_size=args.image_size, epochs=args.epochs, seed=args.seed).validate()
    except ConfigError as error:
        raise UsageError(f"--{error}") from None
    if args.device not in DEVICES:
        raise UsageError(f"--device={args.device!r} is unknown; use one of {', '.join(DEVICES)}.")
    if args.workers < 1:
        raise UsageError(f"--workers={args.workers} is invalid; use at least 1.")
    return base


def default_study_name(dataset_name: str, image_size: int) -> str:
    """`<dataset>-<image_size>px`, made to match STUDY_NAME_PATTERN: each run of other characters becomes '-',
    leading and trailing punctuation goes, and the dataset part is cut to fit 100 characters ('data' if
    nothing is left), so a folder named `<img src=x>` gives `img src-x-<size>px`."""
    suffix = f"-{image_size}px"
    cleaned = _NOT_IN_A_STUDY_NAME.sub("-", dataset_name).strip("_.- ")
    return (cleaned[:100 - len(suffix)].rstrip("_.- ") or "data") + suffix
