"""The report's confirmation (`--confirm K`): the answer retrained on fresh seeds, read from the companion study.

Studies are built directly with Optuna on a tmp_path SQLite storage, under the names study.contract gives the
confirmation (the companion study, its user attributes, each training's attributes), independently of the code
that trains them: a search study whose report recommends PreciseBN for trial 6, and confirmation trainings with
numbers chosen so that every mean, interval and paired difference can be worked out by hand (K=3: t(0.975, 2 df)
= 4.302653, so a standard deviation s gives a half-width of 4.302653 · s / √3 = 2.484138 · s).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study import contract, space

GRID = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
HALF_WIDTH_PER_SD = 2.484138  # t(0.975, 2) / √3
TEST_IMAGES, VAL_IMAGES = 400, 400


def _curve(own: float, train: float, settled_val: float, own_test: float, precise_test: float) -> dict:
    """A momentum curve (contract.MOMENTUM_CURVE_ATTR): val `settled_val` at every momentum below 0.99 and 0.3
    lower from 0.99 up (too few steps there); PreciseBN 0.01 above the best val. Test is val − 0.01 except at the
    own momentum (`own_test`) and for PreciseBN (`precise_test`)."""
    momenta = sorted(set(GRID) | {own})
    val = [settled_val - (0.3 if m >= 0.99 else 0.0) for m in momenta]
    test = [own_test if m == own else v - 0.01 for m, v in zip(momenta, val)]
    recalibrated_val = settled_val + 0.01
    return {"own_momentum": own, "momentum": momenta, "val_accuracy": val, "train_eval_accuracy": [train] * len(val),
            "gap": [train - v for v in val], "mode_gap": [0.0] * len(val), "test_accuracy": test,
            "test_images": TEST_IMAGES, "val_images": VAL_IMAGES, "train_eval_images": VAL_IMAGES,
            "test_differs_from_own": [0 if m == own else 10 for m in momenta],
            "recalibrated": {"val_accuracy": recalibrated_val, "train_eval_accuracy": train,
                             "gap": train - recalibrated_val, "mode_gap": 0.0, "test_accuracy": precise_test,
                             "test_differs_from_own": 10}}


def _metrics(train: float, val: float, test: float) -> dict:
    """Final metrics as gaplab.trainer.TrainResult.final_metrics() names them."""
    return {"train_accuracy": train, "train_eval_accuracy": train, "val_accuracy": val, "test_accuracy": test,
            "gap": train - val, "mode_gap": 0.0, "generalization_gap": train - val,
            "val_accuracy_recalibrated": val, "steps": 200.0, "epochs_run": 2.0}


# The search: (preset, batchnorm, bn_momentum, settled val). Stale momenta (≥ 0.99) cost 0.3 of val; trial 6's
# PreciseBN val (0.92) is the best, so the report recommends PreciseBN on trial 6's setting.
SEARCH = [("seed-initial", False, None, 0.70), ("seed-deeper", False, None, 0.74), ("seed-bn", True, 0.99, 0.80),
          ("seed-final", True, 0.8, 0.82), (None, True, 0.995, 0.85), (None, True, 0.9, 0.84),
          (None, True, 0.99, 0.91), (None, True, 0.95, 0.83), (None, True, 0.999, 0.86), (None, True, 0.98, 0.81)]
RECOMMENDED_TRIAL, WITHOUT_BN_TRIAL, STARTING_TRIAL = 6, 1, 2
SETTINGS = {"dataset": "shapes", "image_size": 32, "epochs": 2, "seed": 0, "pruner": "median",
            "prune_on": "best_momentum", "data_dir": ""}


def build_search(root: Path, name: str = "confirm-study") -> dict:
    """The search study: 10 complete trials, 8 of them with batchnorm and held-out momentum curves."""
    root.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{root / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr(contract.SETTINGS_ATTR, SETTINGS)
    for preset, batchnorm, momentum, settled in SEARCH:
        train = 0.95
        val = settled - (0.3 if batchnorm and momentum >= 0.99 else 0.0)
        attrs = {**_metrics(train, val, val - 0.01), contract.BATCHNORM_ATTR: batchnorm}
        values = {"dropout": 0.2, "batch_size": 32, "depth": 3}
        if batchnorm:
            values["bn_momentum"] = momentum
            attrs[contract.BN_MOMENTUM_ATTR] = momentum
            attrs[contract.MOMENTUM_CURVE_ATTR] = _curve(momentum, train, settled, val - 0.01, settled)
        if preset:
            attrs[contract.PRESET_ATTR] = preset
        params = {p.optuna_name: p.to_optuna(values[p.name]) for p in space.PARAMS if p.name in values}
        distributions = {p.optuna_name: p.distribution() for p in space.PARAMS if p.name in values}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, user_attrs=attrs,
                                                  value=val, state=TrialState.COMPLETE))
    return {"storage": storage, "name": name, "root": root}


KEY = "trial-6/precise"
SEEDS = (101, 202, 303)
# Per seed: the recommended arm's held-out accuracy as trained (own momentum 0.99) and with PreciseBN; its val
# with PreciseBN is settled + 0.01. The starting point and the best setting without batchnorm as trained.
RECOMMENDED = {"as_trained": (0.60, 0.62, 0.64), "precise": (0.86, 0.88, 0.87), "settled": (0.87, 0.89, 0.88)}
STARTING = (0.50, 0.56, 0.53)
WITHOUT_BN = (0.70, 0.71, 0.75)


def _training(arm: str, seed: int, confirms: str, source: int, test: float, val: float,
              curve: dict | None = None, state: TrialState = TrialState.COMPLETE):
    attrs = {contract.ARM_ATTR: arm, contract.SEED_ATTR: seed, contract.CONFIRMS_ATTR: confirms,
             contract.SOURCE_TRIAL_ATTR: source}
    if state == TrialState.COMPLETE:
        attrs.update(_metrics(0.95, val, test))
    if curve is not None:
        attrs[contract.MOMENTUM_CURVE_ATTR] = curve
        attrs[contract.BATCHNORM_ATTR] = True
    return optuna.trial.create_trial(params={}, distributions={}, user_attrs=attrs,
                                     value=val if state == TrialState.COMPLETE else None, state=state)


def add_confirmation(info: dict, key: str = KEY, trial: int = RECOMMENDED_TRIAL, k: int = 3,
                     seeds=SEEDS, recommended=RECOMMENDED, starting=STARTING, without_bn=WITHOUT_BN) -> None:
    """The companion study as `--confirm k` leaves it: the three arms on `seeds`, confirming `key`."""
    companion = optuna.create_study(study_name=contract.confirmation_study_name(info["name"]),
                                    storage=info["storage"], direction="maximize")
    companion.set_user_attr(contract.CONFIRM_K_ATTR, k)
    option = key.split("/")[1]
    companion.set_user_attr(contract.RECOMMENDATION_ATTR,
                            {"key": key, "trial": trial, "option": option, "momentum": None})
    for i, seed in enumerate(seeds):
        own_test, settled = recommended["as_trained"][i], recommended["settled"][i]
        curve = _curve(0.99, 0.95, settled, own_test, recommended["precise"][i])
        companion.add_trial(_training(contract.RECOMMENDED_ARM, seed, key, trial, own_test, settled - 0.3, curve))
        companion.add_trial(_training(contract.WITHOUT_BN_ARM, seed, key, WITHOUT_BN_TRIAL, without_bn[i], 0.74))
        companion.add_trial(_training(contract.STARTING_POINT_ARM, seed, key, STARTING_TRIAL, starting[i], 0.5))


def _report(info: dict):
    from mlflow.tracking import MlflowClient

    from study.report import build_report

    study = optuna.load_study(study_name=info["name"], storage=info["storage"])
    return build_report(study, MlflowClient(f"sqlite:///{info['root'] / 'mlflow.db'}"))


def _finding(report, kind: str):
    return [f for f in report.findings if f.kind == kind]


def _t(values) -> tuple[float, float, float]:
    """Mean and 95 % t-interval ends of three values, by hand."""
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    return mean, mean - HALF_WIDTH_PER_SD * sd, mean + HALF_WIDTH_PER_SD * sd


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory) -> dict:
    info = build_search(tmp_path_factory.mktemp("confirmed"))
    add_confirmation(info)
    return info


def test_the_report_recommends_the_trial_the_confirmation_retrains(tmp_path):
    from study.report.confirmation import Recommendation, current_recommendation

    info = build_search(tmp_path)
    study = optuna.load_study(study_name=info["name"], storage=info["storage"])
    recommendation = current_recommendation(study)
    assert recommendation == Recommendation(RECOMMENDED_TRIAL, "precise", None)
    assert recommendation.key == KEY and recommendation.as_attr() == {
        "key": KEY, "trial": 6, "option": "precise", "momentum": None}
