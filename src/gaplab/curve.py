"""The momentum curve as data: one trained model's accuracies at each momentum of a grid, read and written.

Keras-free, so the report reads curves with the same class the trainer writes them with
(`gaplab.momentum` measures them; it is where Keras is).

* `MomentumCurve`: val, train-eval and (from this version on) test accuracy per momentum, sorted
  by momentum, with fit's train accuracy and the recalibrated (PreciseBN) point, and how many
  training images train-eval was measured on (`train_eval_images`, where recorded). Newer curves
  also hold PreciseBN's test accuracy, the val and test image counts, and per momentum how many
  test images it classifies differently from the own momentum (what the error of a difference of
  two accuracies on the same images needs); all optional on read, for curves stored before. `read` and
  `as_dict` are the momentum_curve.json format (`study.contract.MOMENTUM_CURVE_ATTR`); `own` and
  `best` are indices into the lists.
* `momentum_step(m)`: round(1000 · log10(1 / (1 − m))), the curve's resolution: momenta with the
  same step are one point (the run's own momentum is kept), so a curve never holds two momenta
  with the same step. 0 → 0, 0.9 → 1000, 0.99 → 2000, 0.999 → 3000.
* `best_index`: the highest val accuracy; among ties, the largest momentum (its statistics
  average the most batches). Val chooses; test accuracy is never used to choose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The lists every stored curve has, one entry per momentum.
LIST_KEYS = ("momentum", "val_accuracy", "train_eval_accuracy", "gap", "mode_gap")
# Lists that curves stored before they were measured lack.
OPTIONAL_LIST_KEYS = ("test_accuracy", "test_differs_from_own")
# Image counts that curves stored before they were recorded lack.
OPTIONAL_COUNT_KEYS = ("train_eval_images", "val_images", "test_images")
RECALIBRATED_KEYS = ("val_accuracy", "train_eval_accuracy", "gap", "mode_gap")
# Stored gaps are train accuracy minus another accuracy, each a float64 written to JSON exactly;
# this is far above float rounding and far below one image of any split.
_GAP_TOLERANCE = 1e-9


def momentum_step(momentum: float) -> int:
    """The momentum's point on the curve: round(1000 · log10(1 / (1 − m))); log axis on 1 − m."""
    return round(-1000.0 * math.log10(1.0 - momentum))


def best_index(momenta: Sequence[float], val_accuracy: Sequence[float]) -> int:
    """Index of the highest val accuracy; ties go to the largest momentum."""
    return max(range(len(momenta)), key=lambda i: (val_accuracy[i], momenta[i]))


@dataclass(frozen=True)
class MomentumCurve:
    """Accuracies of one trained model at each momentum, sorted by momentum: same weights, only the
    BN statistics differ.

    `train_accuracy` is fit's running figure (it does not depend on momentum), so gap and mode gap
    at each momentum are train_accuracy minus val and train-eval accuracy there. `test_accuracy`
    is None for curves stored before it was measured. `train_eval_images`: the size of the fixed
    subset of the training split that train-eval (every point, the own and recalibrated ones
    included) was measured on, and recalibration estimated its statistics from; None for curves
    stored before it was recorded, which measured it on the whole training split.

    `recalibrated_test_accuracy`: test accuracy after PreciseBN re-estimated the statistics at the
    final weights; `val_images`, `test_images`: the sizes of those splits; `test_differs_from_own`:
    per momentum, how many test images it classifies differently from the own momentum (0 at the own
    point), and `recalibrated_test_differs_from_own` the same for PreciseBN. None on older curves.
    """

    own_momentum: float
    momentum: tuple[float, ...]
    val_accuracy: tuple[float, ...]
    train_eval_accuracy: tuple[float, ...]
    train_accuracy: float
    recalibrated_val_accuracy: float
    recalibrated_train_eval_accuracy: float
    test_accuracy: tuple[float, ...] | None = None
    train_eval_images: int | None = None
    val_images: int | None = None
    test_images: int | None = None
    recalibrated_test_accuracy: float | None = None
    test_differs_from_own: tuple[int, ...] | None = None
    recalibrated_test_differs_from_own: int | None = None

    @classmethod
    def read(cls, raw: Any) -> MomentumCurve:
        """The curve stored as momentum_curve.json; ValueError saying what is wrong with it."""
        if not isinstance(raw, dict):
            raise ValueError(f"not an object but {type(raw).__name__}")
        missing = [key for key in ("own_momentum", *LIST_KEYS, "recalibrated") if key not in raw]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        lists = {key: _numbers(raw[key], key) for key in (*LIST_KEYS, *OPTIONAL_LIST_KEYS) if key in raw}
        if len({len(values) for values in lists.values()}) != 1 or not lists["momentum"]:
            raise ValueError("its lists are empty or of different lengths")
        if list(lists["momentum"]) != sorted(lists["momentum"]) or not _is_number(raw["own_momentum"]):
            raise ValueError("momentum is not sorted, or own_momentum is not a number")
        recalibrated = raw["recalibrated"]
        if not isinstance(recalibrated, dict) or not all(_is_number(recalibrated.get(k)) for k in RECALIBRATED_KEYS):
            raise ValueError(f"recalibrated is not an object of finite numbers {', '.join(RECALIBRATED_KEYS)}")
        counts = {key: _count(raw.get(key), key, smallest=1) for key in OPTIONAL_COUNT_KEYS}
        differs = lists.get("test_differs_from_own")
        if differs is not None and not all(d.is_integer() and d >= 0 for d in differs):
            raise ValueError("test_differs_from_own is not a list of whole numbers of at least 0")
        recalibrated_test = recalibrated.get("test_accuracy")
        if recalibrated_test is not None and not _is_number(recalibrated_test):
            raise ValueError(f"recalibrated test_accuracy is {recalibrated_test!r}, not a finite number")
        recalibrated_differs = _count(recalibrated.get("test_differs_from_own"), "recalibrated test_differs_from_own",
                                      smallest=0)
        train_accuracy = lists["val_accuracy"][0] + lists["gap"][0]
        for gap, accuracy, name in (("gap", "val_accuracy", "val"), ("mode_gap", "train_eval_accuracy", "train-eval")):
            if any(abs(train_accuracy - a - g) > _GAP_TOLERANCE for a, g in zip(lists[accuracy], lists[gap])):
                raise ValueError(f"{gap} is not one train accuracy minus the {name} accuracy at each momentum")
        return cls(
            own_momentum=float(raw["own_momentum"]),
            momentum=lists["momentum"],
            val_accuracy=lists["val_accuracy"],
            train_eval_accuracy=lists["train_eval_accuracy"],
            train_accuracy=train_accuracy,
            recalibrated_val_accuracy=float(recalibrated["val_accuracy"]),
            recalibrated_train_eval_accuracy=float(recalibrated["train_eval_accuracy"]),
            test_accuracy=lists.get("test_accuracy"),
            train_eval_images=counts["train_eval_images"],
            val_images=counts["val_images"],
            test_images=counts["test_images"],
            recalibrated_test_accuracy=None if recalibrated_test is None else float(recalibrated_test),
            test_differs_from_own=None if differs is None else tuple(int(d) for d in differs),
            recalibrated_test_differs_from_own=recalibrated_differs,
        )

    def as_dict(self) -> dict[str, object]:
        """The curve as momentum_curve.json holds it (the optional fields only where known)."""
        stored: dict[str, object] = {
            "own_momentum": self.own_momentum,
            "momentum": list(self.momentum),
            "val_accuracy": list(self.val_accuracy),
            "train_eval_accuracy": list(self.train_eval_accuracy),
            "gap": list(self.gap),
            "mode_gap": list(self.mode_gap),
            "recalibrated": {
                "val_accuracy": self.recalibrated_val_accuracy,
                "train_eval_accuracy": self.recalibrated_train_eval_accuracy,
                "gap": self.train_accuracy - self.recalibrated_val_accuracy,
                "mode_gap": self.train_accuracy - self.recalibrated_train_eval_accuracy,
            },
        }
        if self.test_accuracy is not None:
            stored["test_accuracy"] = list(self.test_accuracy)
        if self.test_differs_from_own is not None:
            stored["test_differs_from_own"] = list(self.test_differs_from_own)
        for key in OPTIONAL_COUNT_KEYS:
            if getattr(self, key) is not None:
                stored[key] = getattr(self, key)
        recalibrated = stored["recalibrated"]
        if self.recalibrated_test_accuracy is not None:
            recalibrated["test_accuracy"] = self.recalibrated_test_accuracy
        if self.recalibrated_test_differs_from_own is not None:
            recalibrated["test_differs_from_own"] = self.recalibrated_test_differs_from_own
        return stored

    @property
    def gap(self) -> tuple[float, ...]:
        return tuple(self.train_accuracy - v for v in self.val_accuracy)

    @property
    def mode_gap(self) -> tuple[float, ...]:
        return tuple(self.train_accuracy - t for t in self.train_eval_accuracy)

    @property
    def own(self) -> int:
        """Index of the run's own momentum (the nearest point, should a stored one have been rounded)."""
        return min(range(len(self.momentum)), key=lambda i: abs(self.momentum[i] - self.own_momentum))

    @property
    def best(self) -> int:
        """Index of the best momentum: the highest val accuracy, ties to the largest momentum."""
        return best_index(self.momentum, self.val_accuracy)

    @property
    def best_momentum(self) -> float:
        return self.momentum[self.best]

    @property
    def val_accuracy_at_best_momentum(self) -> float:
        return self.val_accuracy[self.best]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any, key: str, smallest: int) -> int | None:
    """A stored whole number of at least `smallest`, or None where absent."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < smallest):
        raise ValueError(f"{key} is {value!r}, not a {'positive ' if smallest else ''}whole number"
                         + ("" if smallest else " of at least 0"))
    return value


def _numbers(values: Any, key: str) -> tuple[float, ...]:
    if not isinstance(values, list) or not all(_is_number(x) for x in values):
        raise ValueError(f"{key} is not a list of finite numbers")
    return tuple(float(x) for x in values)
