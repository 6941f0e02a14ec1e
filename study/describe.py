"""What optuna-dashboard shows a user about a study: the objective's name, and what the intermediate values are.

The dashboard calls an unnamed objective "Objective 0" and plots each trial's reported values as
"intermediate values" of that objective. With `prune_on=best_momentum` they are not: the pruner is
fed the val accuracy at the best grid momentum, while the objective is the val accuracy at the
trial's own momentum. `describe_study` names the objective and puts that explanation in a study
user attribute, which the dashboard lists on the study's page.
"""

from __future__ import annotations

import warnings

import optuna

from study.contract import PRUNE_ON_METRIC

OBJECTIVE_NAME = "val_accuracy"
# Study user attribute: what a trial's intermediate values are.
INTERMEDIATE_VALUES_ATTR = "intermediate_values"
_INTERMEDIATE_VALUES = {
    "best_momentum": ("val accuracy at the best momentum of the grid after each epoch (what the pruner judges: "
                      "the same weights with settled batchnorm statistics), not the objective; the objective is "
                      "val_accuracy at the trial's own momentum, at the end of training"),
    "own_momentum": ("val accuracy at the trial's own momentum after each epoch (what the pruner judges), the "
                     "objective as it stood at that epoch"),
}


def describe_study(study: optuna.Study, prune_on: str) -> None:
    """Name the objective `val_accuracy` and say in a study user attribute what the intermediate values are."""
    if prune_on not in PRUNE_ON_METRIC:
        raise ValueError(f"prune_on={prune_on!r} is unknown; use one of {', '.join(PRUNE_ON_METRIC)}.")
    with warnings.catch_warnings():
        # Experimental since Optuna 3.2 and still in 5; the warning would print on every run.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([OBJECTIVE_NAME])
    study.set_user_attr(INTERMEDIATE_VALUES_ATTR, _INTERMEDIATE_VALUES[prune_on])
