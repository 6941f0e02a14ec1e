"""The seed's phenomenon, reproduced: stale BN statistics open the gap, momentum .8 closes it.

On the built-in dataset at its defaults (the study's defaults too), seed-bn's inference-mode
validation accuracy must sit at least 0.3 below its fit() train accuracy, and seed-final's
difference must be at most 0.1. `python -m gaplab` prints the same table (docs/phenomenon.md).
"""

from __future__ import annotations

import pytest

from gaplab.__main__ import compare_presets
from gaplab.config import TrainConfig
from gaplab.data import generate_shapes, load_image_folder
from tests.helpers import TRASHNET


@pytest.mark.slow
def test_builtin_dataset_shows_the_mode_gap_and_its_closure():
    defaults = TrainConfig()
    rows = {row["preset"]: row for row in compare_presets(
        generate_shapes(), ["seed-bn", "seed-final"], defaults.epochs, defaults.batch_size, seed=0)}
    bn, final = rows["seed-bn"], rows["seed-final"]
    assert bn["train_accuracy"] - bn["val_accuracy"] >= 0.3
    assert bn["mode_gap"] >= 0.3, "the gap should be mostly stale statistics"
    assert bn["val_accuracy_recalibrated"] - bn["val_accuracy"] >= 0.3, "recalibration should recover it"
    assert abs(final["train_accuracy"] - final["val_accuracy"]) <= 0.1


@pytest.mark.trashnet
@pytest.mark.skipif(not TRASHNET.is_dir(), reason="needs ../shared/data/trashnet150 (real photos)")
def test_trashnet_photos_show_the_mode_gap_at_64px(tmp_path):
    data = load_image_folder(TRASHNET, 64, cache_dir=tmp_path / "cache")
    assert data.class_names == ("cardboard", "glass", "metal", "paper", "plastic", "trash")
    assert data.size == 2527
    rows = {row["preset"]: row for row in compare_presets(data, ["seed-bn", "seed-final"], 8, 32, seed=0)}
    bn, final = rows["seed-bn"], rows["seed-final"]
    # Measured on 2 CPU cores with full batches (440 steps), seeds 0 / 1: seed-bn mode gap .07 / .42,
    # recalibration +.13 / +.40, the same weights at their best grid momentum +.15 / +.38 (paired);
    # seed-final mode gap -.02 / .07. The paired gain is the steadiest sign of stale statistics.
    assert bn["mode_gap"] >= 0.05
    assert bn["val_accuracy_recalibrated"] - bn["val_accuracy"] >= 0.08
    assert bn["val_accuracy_at_best_momentum"] - bn["val_accuracy"] >= 0.08
    assert final["mode_gap"] < bn["mode_gap"]
