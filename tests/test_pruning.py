"""The pruner decides exactly as when every epoch is reported, with reports only at the epochs it reads."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from study.objective import PruningCallback
from study.pruning import read_epochs

EPOCHS = 6
PRESETS = 4


def _pruners() -> dict[str, optuna.pruners.BasePruner]:
    # As study.session.make_pruner makes them, plus a warm-up that leaves the presets' first epochs unread.
    return {"median": optuna.pruners.MedianPruner(n_startup_trials=6, n_warmup_steps=1),
            "median_warmup_3": optuna.pruners.MedianPruner(n_startup_trials=6, n_warmup_steps=3),
            "hyperband": optuna.pruners.HyperbandPruner(min_resource=1, max_resource=EPOCHS),
            "none": optuna.pruners.NopPruner()}


def _run(pruner: optuna.pruners.BasePruner, every_epoch: bool, trials: int = 40) -> dict[int, int | None]:
    """Trial number -> the epoch it was pruned at (None: never), for a study whose trials report a fixed
    random val accuracy at the best momentum per epoch, through PruningCallback as the objective wires it.

    `every_epoch`: today's reporting (every epoch); otherwise only where `read_epochs` says, and at the
    other epochs the logs lack the best momentum's accuracy and carry a misleading own-momentum one.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="same-name", direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    pruned_at: dict[int, int | None] = {}

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        prunable = trial.number >= PRESETS
        read = (lambda epoch: True) if every_epoch else read_epochs(trial.study.pruner, prunable)
        callback = PruningCallback(trial, prunable=prunable, prune_on="best_momentum", read=read)
        callback.set_model(type("Holder", (), {"stop_training": False})())
        values = np.random.default_rng(trial.number).uniform(0.3, 0.9, EPOCHS).cumsum() / np.arange(1, EPOCHS + 1)
        for epoch, value in enumerate(values, start=1):
            metrics = {"val_accuracy": value - 0.2}
            if read(epoch):
                metrics["val_accuracy_at_best_momentum"] = value
            callback.on_epoch(epoch, metrics)
            if callback.model.stop_training:
                break
        pruned_at[trial.number] = callback.pruned_at
        if callback.pruned_at is not None:
            raise optuna.TrialPruned()
        return float(values[-1])

    study.optimize(objective, n_trials=trials)
    return pruned_at


@pytest.mark.parametrize("name", list(_pruners()))
def test_the_pruner_stops_the_same_trials_at_the_same_epochs_with_reports_only_where_it_reads(name):
    today = _run(_pruners()[name], every_epoch=True)
    reading_only = _run(_pruners()[name], every_epoch=False)
    assert reading_only == today
    if name != "none":
        assert 3 <= sum(epoch is not None for epoch in today.values()) <= 36, "the comparison needs some pruning"


def test_which_epochs_each_pruner_reads():
    pruners = _pruners()
    epochs = range(1, EPOCHS + 1)
    assert [e for e in epochs if read_epochs(pruners["median"], prunable=False)(e)] == list(epochs)
    assert [e for e in epochs if read_epochs(pruners["median_warmup_3"], prunable=False)(e)] == [3, 4, 5, 6]
    assert [e for e in epochs if read_epochs(pruners["median_warmup_3"], prunable=True)(e)] == list(epochs)
    # Hyperband from 1 resource, reduction 3: rungs at 1, 3 (9 is past 6); a preset never asks.
    assert [e for e in epochs if read_epochs(pruners["hyperband"], prunable=True)(e)] == [1, 3]
    assert not any(read_epochs(pruners["hyperband"], prunable=False)(e) for e in epochs)
    assert not any(read_epochs(pruners["none"], prunable=True)(e) for e in epochs)
    halving = optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=2, min_early_stopping_rate=1)
    assert [e for e in range(1, 17) if read_epochs(halving, prunable=True)(e)] == [4, 8, 16]
    assert all(read_epochs(optuna.pruners.ThresholdPruner(lower=0.1), prunable=False)(e) for e in epochs)
