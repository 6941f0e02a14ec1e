"""Synthetic studies for the report's tests: an Optuna sqlite study and its MLflow parent and trial runs, as
study.run leaves them, built with optuna.trial.create_trial in a given folder without training anything.

The gap is driven by a known parameter (`kind`: "momentum" or "dropout"), so the report's findings can be
checked against the numbers the builder put in. `build_study` builds one; `_report` and `_run_cli` report
on it in this process; `numbers` and `records` read what the report says.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from optuna.trial import TrialState

from study import contract

XSS = "<img src=x onerror=alert(1)>"
CLASSES = ["cat", XSS, "dog|pipe"]
NUMBER = r"[-−+]?\d+(?:\.\d+)?"


def numbers(text: str) -> list[float]:
    """The numbers in a sentence, in order, with their signs (− or + as written)."""
    return [float(found.replace("−", "-")) for found in re.findall(NUMBER, text)]


def records(table) -> list[dict]:
    """A report table's rows as {column name: cell}."""
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


def _distributions():

    from study import space

    return {param.optuna_name: param.distribution() for param in space.PARAMS}


def _specs(kind: str) -> list[dict]:
    """Trial specs: the four presets then 12 searched trials, with the gap set by `kind`'s rule."""
    from gaplab.config import PRESETS

    specs = []
    for name, preset in PRESETS.items():
        specs.append({"preset": name, "batchnorm": preset.batchnorm, "bn_momentum": preset.bn_momentum,
                      "batch_size": 32, "dropout": preset.dropout, "depth": preset.depth})
    if kind == "momentum":
        # Two momentum groups, each with the same spread of dropout, batch size and depth.
        groups = ([0.6, 0.7, 0.8, 0.85, 0.88, 0.75], [0.96, 0.97, 0.98, 0.99, 0.995, 0.998])
        for momenta in groups:
            for i, momentum in enumerate(momenta):
                specs.append({"bn_momentum": momentum, "dropout": [0.05, 0.15, 0.3, 0.45, 0.55, 0.1][i],
                              "batch_size": [16, 64, 128][i % 3], "depth": [2, 3][i % 2], "batchnorm": True})
    else:
        # Dropout spread evenly; momentum assigned across it so the two are unrelated.
        groups = (([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], [0.6, 0.8, 0.96, 0.99, 0.7, 0.97]),
                  ([0.05, 0.15, 0.25, 0.35, 0.45, 0.55], [0.97, 0.7, 0.99, 0.96, 0.8, 0.6]))
        for dropouts, momenta in groups:
            for i, dropout in enumerate(dropouts):
                specs.append({"bn_momentum": momenta[i], "dropout": dropout,
                              "batch_size": [16, 64, 128][i % 3], "depth": [2, 3][i % 2], "batchnorm": True})
    for index, spec in enumerate(specs):
        high_momentum = spec["batchnorm"] and spec["bn_momentum"] >= 0.95
        if kind == "momentum":
            gap = 0.5 if high_momentum else 0.03
            steps = 50 if high_momentum else 400
            mode = gap - 0.02 if high_momentum else 0.0
        else:
            gap = round(max(0.02, 0.5 - 0.9 * spec["dropout"]), 4)
            steps = 1000
            mode = 0.01
        val = round(0.95 - gap - 0.001 * index, 4)
        spec.update(gap=gap, steps=steps, mode_gap=mode, generalization_gap=round(gap - mode, 6), val=val,
                    train=round(val + gap, 6), test=round(val - 0.01, 6),
                    recal=round(val + (0.4 if high_momentum and kind == "momentum" else 0.0), 6))
        spec["state"] = TrialState.COMPLETE
    specs[-1]["state"] = TrialState.PRUNED
    specs[-2]["state"] = TrialState.PRUNED
    return specs


# The momenta every BN layer tracks besides its own (as gaplab's trainer does), for the synthetic curves.
GRID = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


TEST_IMAGES = 379
VAL_IMAGES = 380


def _curve(spec: dict, kind: str, held_out: bool = True) -> dict:
    """A momentum curve in contract.MOMENTUM_CURVE_ATTR's format, equal to the spec's numbers at its own momentum.

    At a momentum whose statistics had too few steps to settle (steps x (1 - m) < 3) the model scores as
    stale statistics make it; elsewhere as its weights allow. In the momentum study stale statistics cost
    0.47 of val accuracy and 0.48 of train-eval accuracy; in the dropout study no trial's own momentum is
    stale, and only momentum 0.999 (horizon 1) is, at a cost of 0.2.
    """
    train, momenta = spec["train"], sorted(set(GRID) | {spec["bn_momentum"]})
    val, train_eval = [], []
    for momentum in momenta:
        stale = spec["steps"] * (1 - momentum) < 3
        if kind == "momentum":
            # Pruned trials had good weights: stale statistics alone got them pruned.
            settled_val = train - 0.03 + (0.02 if spec["state"] == TrialState.PRUNED else 0.0)
            val.append(train - 0.5 if stale else settled_val)
            train_eval.append(train - 0.48 if stale else train)
        else:
            val.append(train - spec["gap"] - (0.2 if stale else 0.0))
            train_eval.append(train - spec["mode_gap"] - (0.2 if stale else 0.0))
    curve = {"own_momentum": spec["bn_momentum"], "momentum": momenta, "val_accuracy": val,
             "train_eval_accuracy": train_eval, "gap": [train - v for v in val],
            "mode_gap": [train - t for t in train_eval],
            "recalibrated": {"val_accuracy": max(val), "train_eval_accuracy": max(train_eval),
                             "gap": train - max(val), "mode_gap": train - max(train_eval)}}
    if held_out:
        # Held-out images score like val, one point lower, as whole counts of TEST_IMAGES images; a momentum
        # classifies differently from the own one as many images as their accuracies differ by, plus 4.
        test = [round((v - 0.01) * TEST_IMAGES) / TEST_IMAGES for v in val]
        own = momenta.index(spec["bn_momentum"])
        curve["test_accuracy"] = test
        curve["test_images"], curve["val_images"] = TEST_IMAGES, VAL_IMAGES
        curve["test_differs_from_own"] = [0 if i == own else round(abs(t - test[own]) * TEST_IMAGES) + 4
                                          for i, t in enumerate(test)]
        # PreciseBN's statistics match the final weights: it scores like the settled momenta.
        recalibrated = round((max(val) - 0.01) * TEST_IMAGES) / TEST_IMAGES
        curve["recalibrated"]["test_accuracy"] = recalibrated
        curve["recalibrated"]["test_differs_from_own"] = round(abs(recalibrated - test[own]) * TEST_IMAGES) + 4
    return curve


def build_study(root: Path, kind: str, study_name: str, class_names=CLASSES, curves: bool = True,
                held_out: bool = True) -> dict:
    """An Optuna sqlite study plus MLflow parent and child runs under `root`, as study.run leaves them."""
    import optuna
    from mlflow.tracking import MlflowClient

    from study import space

    root.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{root / 'optuna.db'}"
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking)
    try:
        experiment = client.create_experiment(study_name, artifact_location=(root / "artifacts").as_uri())
    except Exception:  # noqa: BLE001 - a second study in the same store
        experiment = client.get_experiment_by_name(study_name).experiment_id
    parent = client.create_run(experiment, run_name=study_name).info.run_id
    client.log_param(parent, "seed", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    study.set_user_attr(contract.PARENT_RUN_ID_ATTR, parent)
    study.set_user_attr(contract.TRACKING_URI_ATTR, tracking)
    study.set_user_attr(contract.CLASS_NAMES_ATTR, list(class_names))
    specs = _specs(kind)
    for number, spec in enumerate(specs):
        run = client.create_run(experiment, run_name=f"trial-{number:03d}", tags={MLFLOW_PARENT_RUN_ID: parent})
        run_id = run.info.run_id
        for epoch in range(1, 4):
            client.log_metric(run_id, "train_accuracy", spec["train"] * epoch / 3, step=epoch)
            client.log_metric(run_id, "val_accuracy", spec["val"] * epoch / 3, step=epoch)
        matrix = [[5, 1, 0], [0, 6, 1], [1, 0, 4]]
        client.log_text(run_id, json.dumps({"split": "val", "class_names": list(class_names), "matrix": matrix}),
                        "confusion_matrix.json")
        client.set_terminated(run_id, contract.RUN_STATUS[spec["state"].name])
        attrs = {"train_accuracy": spec["train"], "train_eval_accuracy": spec["train"] - spec["mode_gap"],
                 "val_accuracy": spec["val"], "test_accuracy": spec["test"], "gap": spec["gap"],
                 "mode_gap": spec["mode_gap"], "generalization_gap": spec["generalization_gap"],
                 "val_accuracy_recalibrated": spec["recal"], "steps": float(spec["steps"]), "epochs_run": 3.0,
                 "fit_seconds": 1.0, contract.BN_MOMENTUM_ATTR: spec["bn_momentum"], contract.RUN_ID_ATTR: run_id,
                 contract.BATCHNORM_ATTR: spec["batchnorm"]}
        if spec.get("preset"):
            attrs[contract.PRESET_ATTR] = spec["preset"]
        if curves and spec["batchnorm"]:
            curve = _curve(spec, kind, held_out)
            best = max(range(len(curve["momentum"])), key=lambda i: (curve["val_accuracy"][i], curve["momentum"][i]))
            attrs[contract.MOMENTUM_CURVE_ATTR] = curve
            attrs[contract.BEST_MOMENTUM_METRIC] = curve["momentum"][best]
            attrs[contract.VAL_ACCURACY_AT_BEST_MOMENTUM_METRIC] = curve["val_accuracy"][best]
        # As Optuna stores them (study.space): no momentum without batchnorm, integer permille and percent.
        params = {p.optuna_name: p.to_optuna(spec[p.name]) for p in space.PARAMS if p.exists(spec["batchnorm"])}
        distributions = {param: dist for param, dist in _distributions().items() if param in params}
        complete = spec["state"] == TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, user_attrs=attrs,
            value=spec["val"] if complete else None, intermediate_values={3: spec["val"]}, state=spec["state"]))
    # One failed trial with no metrics, as a crash leaves it.
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, state=TrialState.FAIL))
    client.set_terminated(parent, contract.RUN_STATUS[TrialState.COMPLETE.name])
    return {"storage": storage, "tracking": tracking, "name": study_name, "specs": specs, "parent": parent,
            "root": root}


def _report(info):
    import optuna
    from mlflow.tracking import MlflowClient

    from study.report import build_report

    study = optuna.load_study(study_name=info["name"], storage=info["storage"])
    return build_report(study, MlflowClient(info["tracking"]))


def _run_cli(info, out: Path, *extra: str) -> int:
    from study.report import main

    return main(["--storage", info["storage"], "--tracking_uri", info["tracking"], "--out", str(out), *extra])
