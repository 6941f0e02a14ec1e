"""The search space, declared once. `suggest(trial, base)` is the only code that samples it.

| name          | range                        | sampled as                                        |
|---------------|------------------------------|---------------------------------------------------|
| bn_momentum   | 0.5 - 0.999                  | log-uniform on 1 - momentum (Optuna param         |
|               |                              | `one_minus_bn_momentum`), so .99-.999 is covered  |
| batch_size    | 8, 16, 32, 64, 128, 256      | categorical                                       |
| dropout       | 0 - 0.6                      | uniform                                           |
| depth         | 1 - 5, limited to the depths | integer                                           |
|               | the image size allows        |                                                   |

Optuna has no transformed distributions, so momentum is the one parameter whose Optuna name
differs: its complement is sampled and `bn_momentum` is derived. Everywhere else (MLflow params,
the config, the report) the name is `bn_momentum`.

The seed's four presets are enqueued as the first trials of a new study (`enqueue_presets`);
a trial's `preset` user attribute marks them, and they are never pruned.
"""

from __future__ import annotations

import optuna

from gaplab.config import PRESETS, TrainConfig
from study.contract import FINISHED_STATES, PRESET_ATTR

MOMENTUM_RANGE = (0.5, 0.999)
BATCH_SIZES = (8, 16, 32, 64, 128, 256)
DROPOUT_RANGE = (0.0, 0.6)
DEPTH_RANGE = (1, 5)
MOMENTUM_PARAM = "one_minus_bn_momentum"


def depth_choices(image_size: int) -> list[int]:
    from gaplab.model import allowed_depths  # imports Keras; the report reads this module without it

    allowed = [d for d in allowed_depths(image_size) if DEPTH_RANGE[0] <= d <= DEPTH_RANGE[1]]
    if not allowed:
        raise ValueError(f"image_size={image_size} allows no conv block of depth {DEPTH_RANGE[0]}-{DEPTH_RANGE[1]}; "
                         "use a larger image_size.")
    return allowed


def optuna_name(name: str) -> str:
    """The Optuna parameter behind a public parameter name."""
    return MOMENTUM_PARAM if name == "bn_momentum" else name


def public_name(param: str) -> str:
    """The public name of an Optuna parameter."""
    return "bn_momentum" if param == MOMENTUM_PARAM else param


def momentum_from(complement: float) -> float:
    """bn_momentum from the sampled `one_minus_bn_momentum`."""
    return round(1.0 - complement, 6)


def _optuna_params(config: TrainConfig) -> dict[str, object]:
    return {
        MOMENTUM_PARAM: 1.0 - config.bn_momentum,
        "batch_size": config.batch_size,
        "dropout": config.dropout,
        "depth": config.depth,
    }


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    """The trial's config: `base` (fixed settings) with the searched values filled in."""
    depths = depth_choices(base.image_size)
    preset = trial.user_attrs.get(PRESET_ATTR)
    if preset is not None:
        # Fixed params were enqueued with the preset's values; batchnorm is not searched.
        base = base.replace(batchnorm=PRESETS[preset].batchnorm)
    complement = trial.suggest_float(MOMENTUM_PARAM, 1.0 - MOMENTUM_RANGE[1], 1.0 - MOMENTUM_RANGE[0], log=True)
    return base.replace(
        bn_momentum=momentum_from(complement),
        batch_size=trial.suggest_categorical("batch_size", BATCH_SIZES),
        dropout=trial.suggest_float("dropout", *DROPOUT_RANGE),
        depth=trial.suggest_int("depth", depths[0], depths[-1]),
    )


def enqueue_presets(study: optuna.Study, base: TrainConfig) -> list[str]:
    """Queue the seed's presets as the first trials of a new study; the names queued.

    On resume a preset is queued again only if none of its trials finished or is still queued:
    one that was interrupted (FAIL) would otherwise be lost from the seed table.
    """
    from optuna.trial import TrialState

    kept = (*FINISHED_STATES, TrialState.WAITING, TrialState.RUNNING)
    present = {t.user_attrs.get(PRESET_ATTR) for t in study.get_trials(deepcopy=False, states=kept)}
    missing = [name for name in PRESETS if name not in present]
    for name in missing:
        preset = PRESETS[name]
        searched_or_fixed = ("depth", "batchnorm", "bn_momentum", "dropout")
        config = base.replace(**{field: getattr(preset, field) for field in searched_or_fixed})
        study.enqueue_trial(_optuna_params(config), user_attrs={PRESET_ATTR: name})
    return missing

