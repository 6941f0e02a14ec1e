"""Reading a stored study into views: one `TrialView` per trial, its numbers under public names,
and its momentum curve (`gaplab.curve.MomentumCurve`, the format of `contract.MOMENTUM_CURVE_ATTR`).

Also how those numbers are written in sentences and tables (`fmt`, `fmt_param`, `describe`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import median
from typing import Any

from optuna.trial import TrialState

from gaplab.config import PRESETS
from gaplab.curve import MomentumCurve
from study import contract, space


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrialView:
    """One trial's numbers under public names; NaN where absent."""
    number: int
    state: TrialState
    preset: str | None
    batchnorm: bool
    params: dict[str, float]
    attrs: dict[str, Any]
    value: float | None
    distributions: dict[str, Any]

    def get(self, name: str) -> float:
        raw = self.attrs.get(name)
        return float(raw) if _is_number(raw) else math.nan

    @functools.cached_property
    def curve(self) -> MomentumCurve | None:
        """The stored momentum curve; None when absent or unreadable (see `curve_problem`)."""
        try:
            return MomentumCurve.read(self.attrs[contract.MOMENTUM_CURVE_ATTR])
        except (KeyError, ValueError):
            return None

    @property
    def curve_problem(self) -> str | None:
        """Why a stored curve cannot be read; None when there is none or it reads."""
        if contract.MOMENTUM_CURVE_ATTR not in self.attrs:
            return None
        try:
            MomentumCurve.read(self.attrs[contract.MOMENTUM_CURVE_ATTR])
        except ValueError as error:
            return str(error)
        return None

    @property
    def momentum(self) -> float:
        return self.params.get("bn_momentum", math.nan)

    @property
    def horizon(self) -> float:
        """steps x (1 - bn_momentum): how many EMA time constants BN statistics had to settle."""
        return self.get("steps") * (1.0 - self.momentum)

    @property
    def run_id(self) -> str:
        return str(self.attrs.get(contract.RUN_ID_ATTR) or "")


def trial_views(study) -> list[TrialView]:
    views = []
    for trial in study.get_trials(deepcopy=False):
        preset = trial.user_attrs.get(contract.PRESET_ATTR)
        public = space.public_params(trial.params)
        params: dict[str, float] = {name: public[name] for name in space.names() if name in public}
        # The momentum it trained with, where stored, over the one derived from Optuna's complement.
        momentum = trial.user_attrs.get(contract.BN_MOMENTUM_ATTR)
        if momentum is not None:
            params["bn_momentum"] = float(momentum)
        # Studies written before the batchnorm attribute existed: presets are the only BN-less trials.
        inferred = PRESETS[preset].batchnorm if preset in PRESETS else True
        batchnorm = trial.user_attrs.get(contract.BATCHNORM_ATTR, inferred)
        views.append(TrialView(trial.number, trial.state, preset, batchnorm, params,
                               dict(trial.user_attrs), trial.value, dict(trial.distributions)))
    return views


def finished(views: list[TrialView]) -> list[TrialView]:
    """Complete or pruned trials with measured metrics."""
    return [v for v in views if v.state in contract.FINISHED_STATES and math.isfinite(v.get("gap"))]


def complete_by_value(views: list[TrialView]) -> list[TrialView]:
    """Complete trials, best objective value first."""
    return sorted((v for v in views if v.state == TrialState.COMPLETE and v.value is not None), key=lambda v: -v.value)


def finite_median(values) -> float:
    values = [v for v in values if math.isfinite(v)]
    return median(values) if values else math.nan


def fmt(value: float, digits: int = 2) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    text = f"{value:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text  # no "-0.00"


def points(value: float) -> str:
    """An accuracy difference in percentage points, signed, to the 0.1 the noise allows at best."""
    if not math.isfinite(value):
        return "n/a"
    text = f"{value * 100:+.1f}"
    return "0.0" if float(text) == 0 else text


def fmt_param(name: str, value: float) -> str:
    if name in space.names() and space.param(name).whole:
        return str(int(value)) if float(value).is_integer() else f"{value:g}"
    return f"{value:.3g}"


def describe(view: TrialView) -> str:
    """The trial's searched values; momentum only where there is batchnorm for it to act on."""
    return ", ".join(f"{p.name} {fmt_param(p.name, view.params[p.name])}" for p in space.PARAMS
                     if p.name in view.params and p.exists(view.batchnorm))
