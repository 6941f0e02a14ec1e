"""How to read the study in optuna-dashboard, written into the study: the objective's name, study user
attributes and the dashboard's note.

optuna-dashboard shows what Optuna stores, and some of it reads differently from MLflow and the
report: it calls an unnamed objective "Objective 0"; it plots the reported values as intermediate
values of the objective (with `prune_on=best_momentum` they are the val accuracy at the best grid
momentum, what the pruner judges, while the objective is the val accuracy at the trial's own
momentum), and a pruned trial at its last one; momentum is sampled as its complement in permille;
the contour plot sorts the categorical batch sizes as text; and its importances come from another
evaluator over other trials (study.importance). `describe_study` names the objective, puts each of
these explanations in a study user attribute (the dashboard lists them on the study's page), and
writes them as the study's note, the Markdown the dashboard shows at the top of that page.

The note is stored as optuna-dashboard stores one (`optuna_dashboard.save_note`: study system
attributes), but written here, so that a study run where optuna-dashboard is not installed (it is
an optional extra, and importing it takes seconds) still has it when the dashboard opens it later;
tests/test_internals.py checks that `optuna_dashboard.get_note` reads it back.
"""

from __future__ import annotations

import warnings

import optuna

from study import importance, space
from study.contract import PRUNE_ON_METRIC

OBJECTIVE_NAME = "val_accuracy"
# Study user attributes, each explaining one thing the dashboard shows.
INTERMEDIATE_VALUES_ATTR = "intermediate_values"
MOMENTUM_ATTR = space.MOMENTUM_PARAM
IMPORTANCES_ATTR = "param_importances"
_INTERMEDIATE_VALUES = {
    "best_momentum": ("val accuracy at the best momentum of the grid after each epoch (what the pruner judges: "
                      "the same weights with settled batchnorm statistics), not the objective; the objective is "
                      "val_accuracy at the trial's own momentum, at the end of training. The history plot places a "
                      "pruned trial at its last intermediate value, at or above its own val accuracy: that is the "
                      "trial's user attribute val_accuracy, the number MLflow and the report give"),
    "own_momentum": ("val accuracy at the trial's own momentum after each epoch (what the pruner judges), the "
                     "objective as it stood at that epoch; a pruned trial's is its user attribute val_accuracy"),
}
# optuna-dashboard's note: its version and its text in chunks of at most this many characters
# (optuna_dashboard._note: SYSTEM_ATTR_MAX_LENGTH, note_ver_key, note_str_key_prefix).
NOTE_VERSION_KEY = "dashboard:note_ver"
NOTE_TEXT_KEY = "dashboard:note_str:"
_NOTE_CHUNK = 2045


def momentum_mapping() -> str:
    """What `one_minus_bn_momentum_permille` means, with the values a user reads off the slice plot's axis."""
    examples = ", ".join(f"{permille} is {space.momentum_from(permille):g}" for permille in (1, 10, 50, 100, 500))
    return (f"1000 × (1 − bn_momentum), sampled on a log scale: {examples}. Low values are high momenta. Each "
            "trial's momentum is its user attribute bn_momentum; models without batchnorm (presets) have none")


def importances_text() -> str:
    return (f"The dashboard's importances are {importance.DASHBOARD_EVALUATOR}, Optuna's default, over the complete "
            "trials' val_accuracy: which parameters set the best 10 % of trials apart. The report and the MLflow "
            f"parent run use {importance.EVALUATOR} over every finished trial with batchnorm, pruned ones included, "
            "for val_accuracy and gap: how much of each one's variance a parameter explains. Different questions "
            "over different trials, so they can rank the parameters differently; the report prints both, and "
            f"warns below {importance.MIN_IMPORTANCE_TRIALS} trials")


def note(prune_on: str) -> str:
    """The Markdown optuna-dashboard shows at the top of the study's page."""
    return "\n".join([
        "## Reading this study in optuna-dashboard",
        "",
        "MLflow and the gaplab report (`python -m study.report`) show the same trials; where this page reads "
        "differently:",
        "",
        f"- **Objective**: `{OBJECTIVE_NAME}`, the val accuracy at the trial's own batchnorm momentum, at the end "
        "of training.",
        "- **Intermediate values** (\"Objective Value\" on that chart's axis) are the "
        f"{_INTERMEDIATE_VALUES[prune_on]}.",
        f"- **Momentum** is `{space.MOMENTUM_PARAM}` = {momentum_mapping()}.",
        f"- **Dropout** is `{space.DROPOUT_PARAM}`: 12 is dropout 0.12.",
        "- **Batch size** is categorical: the contour plot sorts its values as text "
        f"({', '.join(sorted(str(b) for b in space.param('batch_size').choices))}).",
        f"- **Hyperparameter importance**: {importances_text()}.",
    ]) + "\n"


def describe_study(study: optuna.Study, prune_on: str) -> None:
    """Name the objective `val_accuracy`, and explain what the dashboard shows in study user attributes and in
    the study's note (rewritten only where its text changed)."""
    if prune_on not in PRUNE_ON_METRIC:
        raise ValueError(f"prune_on={prune_on!r} is unknown; use one of {', '.join(PRUNE_ON_METRIC)}.")
    with warnings.catch_warnings():
        # Experimental since Optuna 3.2 and still in 5; the warning would print on every run.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([OBJECTIVE_NAME])
    attrs = {INTERMEDIATE_VALUES_ATTR: _INTERMEDIATE_VALUES[prune_on], MOMENTUM_ATTR: momentum_mapping(),
             IMPORTANCES_ATTR: importances_text()}
    stored = study.user_attrs
    for key, text in attrs.items():
        if stored.get(key) != text:
            study.set_user_attr(key, text)
    _save_note(study, note(prune_on))


def _save_note(study: optuna.Study, text: str) -> None:
    # Study.set_system_attr is gone from Optuna 5; optuna_dashboard.save_note writes through the storage too.
    storage, study_id = study._storage, study._study_id
    stored = storage.get_study_system_attrs(study_id)
    chunks = [text[i:i + _NOTE_CHUNK] for i in range(0, len(text), _NOTE_CHUNK)]
    old = [key for key in stored if key.startswith(NOTE_TEXT_KEY)]
    if "".join(stored.get(f"{NOTE_TEXT_KEY}{i}", "") for i in range(len(old))) == text:
        return
    storage.set_study_system_attr(study_id, NOTE_VERSION_KEY, int(stored.get(NOTE_VERSION_KEY, 0)) + 1)
    for i, chunk in enumerate(chunks):
        storage.set_study_system_attr(study_id, f"{NOTE_TEXT_KEY}{i}", chunk)
    for i in range(len(chunks), len(old)):
        storage.set_study_system_attr(study_id, f"{NOTE_TEXT_KEY}{i}", "")  # a longer old note's tail
