"""The search space, declared once. `suggest(trial, base)` is the only code that samples it.

| name        | range                        | Optuna parameter (what Optuna stores)                   |
|-------------|------------------------------|---------------------------------------------------------|
| bn_momentum | 0.5 - 0.999, 3 decimals      | `one_minus_bn_momentum_permille`: int 1 - 500, log      |
|             | (batchnorm models only)      | scale; bn_momentum = 1 - permille / 1000                |
| batch_size  | 8, 16, 32, 64, 128, 256      | `batch_size`: categorical                               |
| dropout     | 0 - 0.6 on a 0.01 step       | `dropout_percent`: int 0 - 60; dropout = percent / 100  |
| depth       | 1 - 5, limited to the depths | `depth`: int                                            |
|             | the image size allows        |                                                         |

Why integers: a person writes 0.995 and 0.35, not 0.9953171 or 0.35000000000000003. Optuna
cannot round what it samples (a stepped float such as `suggest_float(0, 0.6, step=0.01)` stores
0.5700000000000001, and a log-scale float takes no step), and rounding after sampling would log
another value to MLflow than the one Optuna stores. An integer is stored exactly, and its public
value is exact too: `to_public` maps 5 permille to bn_momentum 0.995 and 35 percent to dropout
0.35, the values the config trains with and MLflow logs. The permille integer is sampled on a
log scale, so .99 - .999 gets as much of the search as .5 - .9 (resolution 0.001 there).

Momentum is conditional: a model without batchnorm (the presets seed-initial and seed-deeper)
has no momentum, so its trials have no momentum parameter (they are enqueued without it and
`suggest` does not sample it), and neither its MLflow params nor the parent's `best_*` metrics
carry one. Everywhere but Optuna (MLflow params, the config, the report) the names are public
(`bn_momentum`, `dropout`); `public_params` turns a trial's params into them.

The seed's four presets are the first trials of a new study, queued one at a time as each trial
starts (`enqueue_next_preset`); a trial's `preset` user attribute marks them, and they are never
pruned.
"""

from __future__ import annotations

import optuna

from gaplab.config import PRESETS, TrainConfig
from study.contract import FINISHED_STATES, PRESET_ATTR

MOMENTUM_RANGE = (0.5, 0.999)
BATCH_SIZES = (8, 16, 32, 64, 128, 256)
DROPOUT_RANGE = (0.0, 0.6)
DEPTH_RANGE = (1, 5)
MOMENTUM_PARAM = "one_minus_bn_momentum_permille"
DROPOUT_PARAM = "dropout_percent"
# Public name -> (Optuna parameter, public units per Optuna unit) for the parameters Optuna
# holds as integers; bn_momentum's integer counts 1 - momentum.
_SCALED = {"bn_momentum": (MOMENTUM_PARAM, 1000), "dropout": (DROPOUT_PARAM, 100)}


def depth_choices(image_size: int) -> list[int]:
    from gaplab.model import allowed_depths  # imports Keras; the report reads this module without it

    allowed = [d for d in allowed_depths(image_size) if DEPTH_RANGE[0] <= d <= DEPTH_RANGE[1]]
    if not allowed:
        raise ValueError(f"image_size={image_size} allows no conv block of depth {DEPTH_RANGE[0]}-{DEPTH_RANGE[1]}; "
                         "use a larger image_size.")
    return allowed


def optuna_name(name: str) -> str:
    """The Optuna parameter behind a public parameter name."""
    return _SCALED[name][0] if name in _SCALED else name


def public_name(param: str) -> str:
    """The public name of an Optuna parameter."""
    return next((name for name, (scaled, _) in _SCALED.items() if scaled == param), param)


def to_public(param: str, value: float) -> float:
    """The public value of an Optuna parameter's value (exact: 5 permille -> 0.995, 35 percent -> 0.35)."""
    if param == MOMENTUM_PARAM:
        return momentum_from(value)
    # Only the integer parameters are scaled: a study from before them stored `dropout` itself.
    name = public_name(param)
    return value / _SCALED[name][1] if name != param else value


def to_optuna(name: str, value: float) -> float:
    """The Optuna value of a public value; ValueError if the value is off the sampled step."""
    if name not in _SCALED:
        return value
    units = _SCALED[name][1]
    scaled = round((1.0 - value if name == "bn_momentum" else value) * units)
    if to_public(optuna_name(name), scaled) != value:
        raise ValueError(f"{name}={value} is not on the search space's step of 1/{units}; use a value with at most "
                         f"{len(str(units)) - 1} decimals.")
    return scaled


def momentum_from(permille: int) -> float:
    """bn_momentum from the sampled `one_minus_bn_momentum_permille`."""
    return (1000 - round(permille)) / 1000


def public_params(params: dict[str, object]) -> dict[str, object]:
    """A trial's Optuna params under their public names and in public units."""
    return {public_name(param): to_public(param, value) for param, value in params.items()}


def logged_params(config: TrainConfig) -> dict[str, object]:
    """A trial's config as MLflow params: every field, but no momentum for a model without batchnorm."""
    params = config.as_params()
    if not config.batchnorm:
        del params["bn_momentum"]
    return params


def _optuna_params(config: TrainConfig) -> dict[str, object]:
    searched = {"batch_size": config.batch_size, "dropout": config.dropout, "depth": config.depth}
    if config.batchnorm:
        searched["bn_momentum"] = config.bn_momentum
    return {optuna_name(name): to_optuna(name, value) for name, value in searched.items()}


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    """The trial's config: `base` (fixed settings) with the searched values filled in.

    Without batchnorm no momentum is sampled; the config keeps `base`'s, which the model ignores.
    """
    depths = depth_choices(base.image_size)
    preset = trial.user_attrs.get(PRESET_ATTR)
    if preset is not None:
        # Fixed params were enqueued with the preset's values; batchnorm is not searched.
        base = base.replace(batchnorm=PRESETS[preset].batchnorm)
    if base.batchnorm:
        permille = trial.suggest_int(MOMENTUM_PARAM, round((1.0 - MOMENTUM_RANGE[1]) * 1000),
                                     round((1.0 - MOMENTUM_RANGE[0]) * 1000), log=True)
        base = base.replace(bn_momentum=momentum_from(permille))
    percent = trial.suggest_int(DROPOUT_PARAM, round(DROPOUT_RANGE[0] * 100), round(DROPOUT_RANGE[1] * 100))
    return base.replace(
        batch_size=trial.suggest_categorical("batch_size", BATCH_SIZES),
        dropout=to_public(DROPOUT_PARAM, percent),
        depth=trial.suggest_int("depth", depths[0], depths[-1]),
    )


def presets_to_train(study: optuna.Study, first_trial: int) -> list[str]:
    """The presets a trial start takes next, in order: those queued (WAITING), then those the study still lacks.

    A study lacks a preset that has no trial finished, queued or running, and none that failed from trial
    `first_trial` on (the command's own start): a preset interrupted or killed in an earlier command is
    trained again, first, while one that failed by its own error in this command is not retried by it.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    queued = [t.user_attrs[PRESET_ATTR] for t in trials
              if t.state == TrialState.WAITING and PRESET_ATTR in t.user_attrs]
    kept = (*FINISHED_STATES, TrialState.WAITING, TrialState.RUNNING)
    present = {t.user_attrs.get(PRESET_ATTR) for t in trials
               if t.state in kept or (t.state == TrialState.FAIL and t.number >= first_trial)}
    return queued + [name for name in PRESETS if name not in present]


def enqueue_preset(study: optuna.Study, base: TrainConfig, name: str) -> None:
    """Queue the seed's preset `name` (its fixed values on `base`), marked by the trial's `preset` attribute."""
    preset = PRESETS[name]
    searched_or_fixed = ("depth", "batchnorm", "bn_momentum", "dropout")
    config = base.replace(**{field: getattr(preset, field) for field in searched_or_fixed})
    study.enqueue_trial(_optuna_params(config), user_attrs={PRESET_ATTR: name})


def enqueue_next_preset(study: optuna.Study, base: TrainConfig, first_trial: int) -> str | None:
    """At a trial start, with the study lock held: queue the next preset the study lacks (`presets_to_train`)
    unless a trial is queued already, which the start then takes; the preset queued, if any.

    Presets are queued one at a time, just before they train, so that an interrupted one trains again
    before the presets after it, and none waits in the queue past `--trials`.
    """
    from optuna.trial import TrialState

    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return None
    name = next(iter(presets_to_train(study, first_trial)), None)
    if name is not None:
        enqueue_preset(study, base, name)
    return name
