"""The search space, each parameter declared once (`PARAMS`); `suggest(trial, base)` is the only code that samples it.

A `Param` holds everything about one searched parameter: its public name (the `TrainConfig` field, MLflow
param and report name), its range and scale, the integer Optuna stores for it, whether it exists without
batchnorm, whether the seed's presets fix it, and how the report plots and writes it. Sampling
(`suggest`), the presets' Optuna params, the MLflow params, the names the report reads (`names()`), its
parameter figures and tables all read `PARAMS` when they run, so a parameter added there (and to the
library's `TrainConfig`) reaches the study, MLflow and the report.

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

from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from gaplab.config import PRESETS, TrainConfig
from study.contract import FAILED_BY_ERROR_ATTR, FINISHED_STATES, PRESET_ATTR


def depth_choices(image_size: int, depth_range: tuple[int, int]) -> list[int]:
    """The depths in `depth_range` that `image_size` leaves room for; ValueError if none."""
    from gaplab.model import allowed_depths  # imports Keras; the report reads this module without it

    allowed = [d for d in allowed_depths(image_size) if depth_range[0] <= d <= depth_range[1]]
    if not allowed:
        raise ValueError(f"image_size={image_size} allows no conv block of depth {depth_range[0]}-{depth_range[1]}; "
                         "use a larger image_size.")
    return allowed


@dataclass(frozen=True)
class Param:
    """One searched parameter. `name` is the `TrainConfig` field it sets, and its name everywhere but Optuna.

    Sampled from `choices`, or from the integers `low`..`high` give in stored units: Optuna stores
    `per_unit` integers per public unit (1000: permille, 100: percent; 1: the value itself) of the value, or
    of 1 − value where `complement`, under `stored_as` (default `name`). `log`: sampled on a log scale.
    `limit(base)` narrows the stored range for a base config (depth: what the image size allows).
    `batchnorm_only`: no such parameter for a model without batchnorm. `preset_sets`: the seed's presets
    (`gaplab.config.PRESETS`) fix it to their own value; otherwise they take the base config's.
    In the report: plotted on a `scale` ("linear", "log" or "log2") as the value, or as 1 − value where
    `complement`; `whole`: written as a whole number.
    """

    name: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()
    log: bool = False
    per_unit: int = 1
    complement: bool = False
    stored_as: str = ""
    limit: Callable[[TrainConfig, tuple[int, int]], tuple[int, int]] | None = None
    batchnorm_only: bool = False
    preset_sets: bool = True
    scale: str = "linear"
    whole: bool = False

    def __post_init__(self):
        if not self.choices and not all(float(self.to_optuna(bound)).is_integer() for bound in (self.low, self.high)):
            raise ValueError(f"{self.name}: the range {self.low}-{self.high} is not whole in stored units; set "
                             "per_unit so Optuna samples integers.")

    @property
    def optuna_name(self) -> str:
        return self.stored_as or self.name

    @property
    def scaled(self) -> bool:
        return self.per_unit != 1 or self.complement

    @property
    def label(self) -> str:
        """What the report's axes call it: the value plotted."""
        return f"1 − {self.name}" if self.complement else self.name

    def to_public(self, stored: float) -> float:
        """The public value of a stored one (exact: 5 permille -> 0.995, 35 percent -> 0.35)."""
        if self.complement:
            return (self.per_unit - round(stored)) / self.per_unit
        return stored / self.per_unit if self.per_unit != 1 else stored

    def to_optuna(self, value: float) -> float:
        """The stored value of a public one; ValueError if the value is off the sampled step."""
        if not self.scaled:
            return value
        stored = round((1.0 - value if self.complement else value) * self.per_unit)
        if self.to_public(stored) != value:
            raise ValueError(f"{self.name}={value} is not on the search space's step of 1/{self.per_unit}; use a "
                             f"value with at most {len(str(self.per_unit)) - 1} decimals.")
        return stored

    def stored_range(self, base: TrainConfig) -> tuple[int, int]:
        low, high = sorted((self.to_optuna(self.low), self.to_optuna(self.high)))
        return self.limit(base, (low, high)) if self.limit else (low, high)

    def distribution(self, base: TrainConfig | None = None) -> optuna.distributions.BaseDistribution:
        """What Optuna samples it from (for `base`'s limits; None: the declared range)."""
        if self.choices:
            return optuna.distributions.CategoricalDistribution(self.choices)
        low, high = (self.stored_range(base) if base is not None
                     else sorted((self.to_optuna(self.low), self.to_optuna(self.high))))
        return optuna.distributions.IntDistribution(low, high, log=self.log)

    def sample(self, trial: optuna.Trial, base: TrainConfig) -> float:
        """The trial's public value of this parameter."""
        if self.choices:
            return trial.suggest_categorical(self.optuna_name, self.choices)
        low, high = self.stored_range(base)
        return self.to_public(trial.suggest_int(self.optuna_name, low, high, log=self.log))

    def exists(self, batchnorm: bool) -> bool:
        return batchnorm or not self.batchnorm_only


def _depths(base: TrainConfig, stored: tuple[int, int]) -> tuple[int, int]:
    depths = depth_choices(base.image_size, stored)
    return depths[0], depths[-1]


# The searched parameters, in the order the report lists them and `suggest` samples them. The order is part of
# what a seed reproduces (TPE draws them in turn): it is the order the documented studies were run with.
PARAMS: tuple[Param, ...] = (
    Param("bn_momentum", 0.5, 0.999, log=True, per_unit=1000, complement=True,
          stored_as="one_minus_bn_momentum_permille", batchnorm_only=True, scale="log"),
    Param("dropout", 0.0, 0.6, per_unit=100, stored_as="dropout_percent"),
    Param("batch_size", choices=(8, 16, 32, 64, 128, 256), preset_sets=False, scale="log2", whole=True),
    Param("depth", 1, 5, limit=_depths, whole=True),
)


def names() -> tuple[str, ...]:
    """The searched parameters' public names, in `PARAMS` order."""
    return tuple(param.name for param in PARAMS)


def param(name: str) -> Param:
    """The declaration of the parameter with this public or Optuna name."""
    return next(p for p in PARAMS if name in (p.name, p.optuna_name))


def optuna_name(name: str) -> str:
    """The Optuna parameter behind a public parameter name."""
    return next((p.optuna_name for p in PARAMS if p.name == name), name)


def public_name(stored: str) -> str:
    """The public name of an Optuna parameter."""
    return next((p.name for p in PARAMS if p.optuna_name == stored), stored)


def to_public(stored: str, value: float) -> float:
    """The public value of an Optuna parameter's value (exact: 5 permille -> 0.995, 35 percent -> 0.35)."""
    declared = next((p for p in PARAMS if p.optuna_name == stored), None)
    # Only the stored names are scaled: a study from before the integers stored `dropout` itself.
    return declared.to_public(value) if declared else value


def to_optuna(name: str, value: float) -> float:
    """The Optuna value of a public value; ValueError if the value is off the sampled step."""
    declared = next((p for p in PARAMS if p.name == name), None)
    return declared.to_optuna(value) if declared else value


# The two stored names other code asks for: whether a trial has momentum, and the old studies' dropout.
MOMENTUM_PARAM = param("bn_momentum").optuna_name
DROPOUT_PARAM = param("dropout").optuna_name


def momentum_from(permille: int) -> float:
    """bn_momentum from the sampled `one_minus_bn_momentum_permille`."""
    return param("bn_momentum").to_public(permille)


def public_params(params: dict[str, object]) -> dict[str, object]:
    """A trial's Optuna params under their public names and in public units."""
    return {public_name(stored): to_public(stored, value) for stored, value in params.items()}


def logged_params(config: TrainConfig) -> dict[str, object]:
    """A trial's config as MLflow params: every field, but none of the parameters its model does not have."""
    params = config.as_params()
    for declared in PARAMS:
        if not declared.exists(config.batchnorm):
            del params[declared.name]
    return params


def suggest(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    """The trial's config: `base` (fixed settings) with the searched values filled in.

    A parameter the model does not have (momentum without batchnorm) is not sampled; the config keeps
    `base`'s value, which the model ignores.
    """
    preset = trial.user_attrs.get(PRESET_ATTR)
    if preset is not None:
        # Fixed params were enqueued with the preset's values; batchnorm is not searched.
        base = base.replace(batchnorm=PRESETS[preset].batchnorm)
    return base.replace(**{p.name: p.sample(trial, base) for p in PARAMS if p.exists(base.batchnorm)})


def presets_to_train(study: optuna.Study) -> list[str]:
    """The presets a trial start takes next, in order: those queued (WAITING), then those the study still lacks.

    A study lacks a preset that has no trial finished, queued or running, and none that failed by its own
    error (study.contract.FAILED_BY_ERROR_ATTR): a preset stopped, interrupted or killed, in this command or an
    earlier one, by any process, is trained again, first; one that failed by its own error is not retried
    (it would fail again, and block every rerun), and its run's error tag says why.
    """
    trials = study.get_trials(deepcopy=False)
    queued = [t.user_attrs[PRESET_ATTR] for t in trials
              if t.state == TrialState.WAITING and PRESET_ATTR in t.user_attrs]
    kept = (*FINISHED_STATES, TrialState.WAITING, TrialState.RUNNING)
    present = {t.user_attrs.get(PRESET_ATTR) for t in trials
               if t.state in kept or (t.state == TrialState.FAIL and FAILED_BY_ERROR_ATTR in t.user_attrs)}
    return queued + [name for name in PRESETS if name not in present]


def preset_config(base: TrainConfig, name: str) -> TrainConfig:
    """The seed's preset `name` as a study trains it: its fixed values on `base`."""
    preset = PRESETS[name]
    fixed = {p.name: getattr(preset, p.name) for p in PARAMS if p.preset_sets}
    return base.replace(batchnorm=preset.batchnorm, **fixed)


def optuna_params(config: TrainConfig) -> dict[str, object]:
    """A config's searched values as Optuna stores them (what `enqueue_trial` takes)."""
    return {p.optuna_name: p.to_optuna(getattr(config, p.name)) for p in PARAMS if p.exists(config.batchnorm)}


def enqueue_preset(study: optuna.Study, base: TrainConfig, name: str) -> None:
    """Queue the seed's preset `name` (its fixed values on `base`), marked by the trial's `preset` attribute."""
    study.enqueue_trial(optuna_params(preset_config(base, name)), user_attrs={PRESET_ATTR: name})


def enqueue_next_preset(study: optuna.Study, base: TrainConfig) -> str | None:
    """At a trial start, with the study lock held: queue the next preset the study lacks (`presets_to_train`)
    unless a trial is queued already, which the start then takes; the preset queued, if any.

    Presets are queued one at a time, just before they train, so that an interrupted one trains again
    before the presets after it, and none waits in the queue past `--trials`.
    """
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return None
    name = next(iter(presets_to_train(study)), None)
    if name is not None:
        enqueue_preset(study, base, name)
    return name
