"""The momentum curve as data (gaplab.curve): reading, writing, own and best, without Keras."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gaplab.curve import MomentumCurve, best_index, momentum_step

ROOT = Path(__file__).resolve().parents[1]


def _stored(**changes) -> dict:
    """A curve as momentum_curve.json holds it: train accuracy 0.9, own momentum 0.99."""
    val, train_eval, test = [0.5, 0.8, 0.8, 0.6], [0.55, 0.85, 0.9, 0.7], [0.45, 0.75, 0.7, 0.65]
    stored = {"own_momentum": 0.99, "momentum": [0.0, 0.9, 0.95, 0.99], "val_accuracy": val,
              "train_eval_accuracy": train_eval, "test_accuracy": test,
              "gap": [0.9 - v for v in val], "mode_gap": [0.9 - t for t in train_eval],
              "recalibrated": {"val_accuracy": 0.85, "train_eval_accuracy": 0.88, "gap": 0.9 - 0.85,
                               "mode_gap": 0.9 - 0.88}}
    return {**stored, **changes}


def test_importing_the_curve_module_does_not_import_keras():
    code = "import sys, gaplab.curve; print(sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_stored_curve_reads_back_and_writes_the_same_object():
    curve = MomentumCurve.read(_stored())
    assert curve.train_accuracy == pytest.approx(0.9)
    assert curve.test_accuracy == (0.45, 0.75, 0.7, 0.65)
    written = json.loads(json.dumps(curve.as_dict()))
    assert set(written) == set(_stored())
    for key, value in _stored().items():
        assert written[key] == (pytest.approx(value) if key != "recalibrated" else
                                {k: pytest.approx(v) for k, v in value.items()}), key


def test_own_is_the_runs_momentum_and_best_the_highest_val_accuracy_ties_to_the_larger_momentum():
    curve = MomentumCurve.read(_stored())
    assert curve.own == 3
    assert curve.best == 2 and curve.best_momentum == 0.95 and curve.val_accuracy_at_best_momentum == 0.8
    # Test accuracy never chooses: at 0.9 it is higher, and the best stays on val's tie rule.
    assert curve.test_accuracy[1] > curve.test_accuracy[2]
    assert best_index([0.0, 0.5], [0.7, 0.7]) == 1 and best_index([0.5, 0.0], [0.7, 0.7]) == 0


def test_a_curve_stored_before_test_accuracy_was_measured_reads_without_it():
    old = _stored()
    del old["test_accuracy"]
    curve = MomentumCurve.read(old)
    assert curve.test_accuracy is None and curve.best == 2
    assert "test_accuracy" not in curve.as_dict()


def test_the_number_of_train_eval_images_reads_back_where_recorded():
    curve = MomentumCurve.read(_stored(train_eval_images=256))
    assert curve.train_eval_images == 256
    assert json.loads(json.dumps(curve.as_dict()))["train_eval_images"] == 256
    older = MomentumCurve.read(_stored())
    assert older.train_eval_images is None and "train_eval_images" not in older.as_dict()


def test_precise_bn_on_test_the_split_sizes_and_the_differing_images_read_back_and_are_optional():
    stored = _stored(val_images=40, test_images=60, test_differs_from_own=[9, 3, 2, 0])
    stored["recalibrated"] = {**stored["recalibrated"], "test_accuracy": 0.8, "test_differs_from_own": 7}
    curve = MomentumCurve.read(stored)
    assert (curve.val_images, curve.test_images, curve.recalibrated_test_accuracy) == (40, 60, 0.8)
    assert curve.test_differs_from_own == (9, 3, 2, 0) and curve.recalibrated_test_differs_from_own == 7
    assert MomentumCurve.read(json.loads(json.dumps(curve.as_dict()))) == curve
    older = MomentumCurve.read(_stored())
    assert (older.val_images, older.test_images, older.recalibrated_test_accuracy, older.test_differs_from_own,
            older.recalibrated_test_differs_from_own) == (None,) * 5
    assert not {"val_images", "test_images", "test_differs_from_own"} & set(older.as_dict())
    assert set(older.as_dict()["recalibrated"]) == {"val_accuracy", "train_eval_accuracy", "gap", "mode_gap"}


@pytest.mark.parametrize(("changes", "message"), [
    ({"test_images": 0}, "test_images is 0, not a positive whole number"),
    ({"test_differs_from_own": [1, 2.5, 0, 0]}, "test_differs_from_own is not a list of whole numbers"),
    ({"recalibrated": {"val_accuracy": 0.85, "train_eval_accuracy": 0.88, "gap": 0.05, "mode_gap": 0.02,
                       "test_accuracy": "high"}}, "recalibrated test_accuracy is 'high', not a finite number"),
    ({"train_eval_images": 0}, "train_eval_images is 0, not a positive whole number"),
    ({"train_eval_images": 2.5}, "train_eval_images is 2.5, not a positive whole number"),
    ({"momentum": None}, "momentum is not a list of finite numbers"),
    ({"test_accuracy": [0.1, 0.2, float("nan"), 0.3]}, "test_accuracy is not a list of finite numbers"),
    ({"test_accuracy": [0.1, 0.2, 0.3]}, "its lists are empty or of different lengths"),
    ({"momentum": [0.9, 0.0, 0.95, 0.99]}, "momentum is not sorted"),
    ({"recalibrated": {"val_accuracy": 0.8}}, "recalibrated is not an object of finite numbers"),
    ({"gap": [0.4, 0.1, 0.1, 0.2]}, "gap is not one train accuracy minus the val accuracy at each momentum"),
    ({"mode_gap": [0.0] * 4}, "mode_gap is not one train accuracy minus the train-eval accuracy"),
])
def test_a_broken_curve_is_a_value_error_saying_what_is_wrong(changes, message):
    with pytest.raises(ValueError, match=message):
        MomentumCurve.read(_stored(**changes))


def test_missing_keys_are_named():
    stored = _stored()
    for key in ("own_momentum", "mode_gap", "recalibrated"):
        del stored[key]
    with pytest.raises(ValueError, match="^missing own_momentum, mode_gap, recalibrated$"):
        MomentumCurve.read(stored)
    with pytest.raises(ValueError, match="not an object but list"):
        MomentumCurve.read([])


def test_momentum_steps_are_a_thousand_per_decade_of_one_minus_momentum():
    assert [momentum_step(m) for m in (0.0, 0.5, 0.9, 0.99, 0.999)] == [0, 301, 1000, 2000, 3000]


def test_the_curve_is_logged_as_metrics_at_its_momentum_steps_test_accuracy_where_measured():
    from study.contract import (
        TEST_ACCURACY_AT_MOMENTUM_METRIC,
        TRAIN_EVAL_ACCURACY_AT_MOMENTUM_METRIC,
        VAL_ACCURACY_AT_MOMENTUM_METRIC,
    )
    from study.tracking.runs import momentum_curve_metrics

    def points(curve: MomentumCurve) -> dict[str, dict[int, float]]:
        found: dict[str, dict[int, float]] = {}
        for metric in momentum_curve_metrics(curve):
            found.setdefault(metric.key, {})[metric.step] = metric.value
        return found

    logged = points(MomentumCurve.read(_stored()))
    assert logged[TEST_ACCURACY_AT_MOMENTUM_METRIC] == {0: 0.45, 1000: 0.75, 1301: 0.7, 2000: 0.65}
    assert logged[VAL_ACCURACY_AT_MOMENTUM_METRIC] == {0: 0.5, 1000: 0.8, 1301: 0.8, 2000: 0.6}
    assert logged[TRAIN_EVAL_ACCURACY_AT_MOMENTUM_METRIC][2000] == 0.7
    old = _stored()
    del old["test_accuracy"]
    assert TEST_ACCURACY_AT_MOMENTUM_METRIC not in points(MomentumCurve.read(old))
